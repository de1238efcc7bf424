"""Discoverable Partitions Specification images (systemd-repart / mkosi, usr-only A/B like ParticleOS).

Recognition is generic: partitions are classified by their type GUID, which the DPS defines per
role and architecture (``immutools.volumes.types.lookup_type_entry`` gives role and arch). For the
main role (``usr`` when present, else ``root``) every data partition is a slot; its dm-verity hash
partition and verity signature partition are paired to it by label (``Name_Version``,
``..._verity``, ``..._verity_sig``) or, per the DPS, by partition UUID (first / last 128 bits of
the root hash). ``_empty`` labels mark slots systemd-repart created for the next update. The
signature partition's JSON gives the root hash; the default UKI in ``/EFI/Linux`` (systemd-boot's
order) pins its ``/usr`` with ``usrhash=``/``roothash=``, which decides the active slot.

Facts come from ``data/distributions/dps.yaml`` (which cites shared/reference/ostree-and-others.md).
"""

from __future__ import annotations

import json
import posixpath
import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import mount_fs, read_key_values, add_enabled_mount_units, weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence
from immutools.volumes.types import lookup_type_entry

_HEX = re.compile(r"^[0-9a-f]{32,128}$")
_COUNTER = re.compile(r"^(?P<stem>.+?)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?(?P<ext>\.efi)$", re.I)
_MAX_UKIS = 64


def _bit(attrs: dict, raw_bit: int) -> bool:
    raw = attrs.get("raw") if attrs else None
    try:
        return bool(int(raw, 16) >> raw_bit & 1) if raw else False
    except (TypeError, ValueError):
        return False


def _slot_name(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else str(i)


class DpsCollector(Collector):
    name = "dps"

    def __init__(self):
        self.k = load_distribution("dps")

    # ------------------------------------------------------------------------------- classify
    def _classify(self, image: DiskImage) -> list[dict]:
        out = []
        for vol in image.volumes:
            part = vol.partition
            entry = lookup_type_entry(part.type_guid) if part is not None and part.type_guid else None
            if entry is None:
                continue
            attrs = part.attributes or {}
            flags = self.k["flags"]
            out.append({"vol": vol, "role": entry.role, "key": entry.key, "arch": entry.arch, "label": part.label or "",
                        "uuid": (part.uuid or "").lower(), "no_auto": _bit(attrs, flags["no_auto"]),
                        "read_only": _bit(attrs, flags["read_only"]), "grow": _bit(attrs, flags["grow_file_system"])})
        return out

    def _main_role(self, rows: list[dict]) -> str | None:
        roles = {r["role"] for r in rows if r["arch"]}
        for role in self.k["data_roles"]:
            if role in roles and (f"{role}-verity" in roles or role == "usr"):
                return role
        return "root" if "root" in roles else None

    def _signature(self, vol: Volume) -> tuple[dict | None, str | None]:
        try:
            raw = vol.source.read_at(0, min(self.k["signature_max_bytes"], vol.source.size))
        except ImmutoolsError as exc:
            return None, f"unreadable: {exc}"
        text = raw.rstrip(b"\0")
        if not text.startswith(b"{"):
            return None, "no JSON object"
        try:
            data = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return None, f"not JSON: {exc}"
        if not isinstance(data, dict) or not isinstance(data.get("rootHash"), str) or not _HEX.match(data["rootHash"]):
            return None, "no lower-case hex rootHash"
        return data, None

    def detect(self, image: DiskImage) -> Detection:
        rows = self._classify(image)
        role = self._main_role(rows)
        if role is None:
            return Detection(self.name, 0.0)
        hits, ev = ["dps_types"], []
        data = [r for r in rows if r["role"] == role and r["arch"]]
        ev.append(evidence(f"{data[0]['vol'].describe()}: GPT entry", f"DPS type {data[0]['key']}"))
        if any(r["role"] == f"{role}-verity" for r in rows):
            hits.append("verity_pair")
        for r in rows:
            if r["role"] == f"{role}-verity-sig" and r["label"] != self.k["empty_label"]:
                sig, _problem = self._signature(r["vol"])
                if sig is not None:
                    hits.append("signature_json")
                    ev.append(evidence(f"{r['vol'].describe()}: JSON", "verity signature (rootHash, signature)"))
                    break
        if any(r["label"] == self.k["empty_label"] for r in rows):
            hits.append("empty_slot")
        for r in data:
            if r["label"] == self.k["empty_label"]:
                continue
            parsed, where = self._os_release(image, r["vol"], role)
            if parsed and parsed.get("IMAGE_ID"):
                hits.append("image_id")
                ev.append(where | {"detail": f"os-release IMAGE_ID={parsed['IMAGE_ID']}"})
                break
        esp = next((v for v in image.volumes if v.type_key == "esp"), None)
        fs = image.filesystem(esp) if esp is not None else None
        try:
            if fs is not None and any(n.lower().endswith(".efi") for n in fs.listdir("/EFI/Linux")):
                hits.append("uki")
        except ImmutoolsError:
            pass
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev, {"role": role})

    def _os_release(self, image: DiskImage, vol: Volume, role: str):
        fs = image.filesystem(vol)
        if fs is None:
            return None, None
        paths = ("/lib/os-release",) if role == "usr" else ("/etc/os-release", "/usr/lib/os-release")
        for path in paths:
            parsed = read_key_values(fs, path)
            if parsed:
                return parsed, evidence(f"{vol.describe()}: {path}", "os-release")
        return None, None

    # ------------------------------------------------------------------------------- slots
    def _slots(self, image: DiskImage, rows: list[dict], role: str) -> list[dict]:
        k = self.k
        data = sorted((r for r in rows if r["role"] == role and r["arch"]), key=lambda r: r["vol"].number)
        verity = [r for r in rows if r["role"] == f"{role}-verity"]
        sigs = [r for r in rows if r["role"] == f"{role}-verity-sig"]
        used: set[int] = set()
        slots = []
        for i, d in enumerate(data):
            empty = d["label"] == k["empty_label"]
            pending = any(d["label"].startswith(p) for p in k["pending_label_prefixes"])
            slot = {"name": _slot_name(i), "data": d, "verity": None, "sig": None, "empty": empty, "pending": pending,
                    "signature": None, "signature_problem": None, "root_hash": None, "pairing": None, "evidence": []}
            if not empty:
                label = d["label"]
                slot["verity"] = next((v for v in verity if v["label"] == label + k["verity_label_suffix"]
                                       and v["vol"].number not in used), None)
                slot["sig"] = next((s for s in sigs if s["label"] == label + k["signature_label_suffix"]
                                    and s["vol"].number not in used), None)
                if slot["sig"] is None:
                    # DPS pairing: the signature's root hash names the data partition by its UUID
                    for s in sigs:
                        if s["vol"].number in used or s["label"] == k["empty_label"]:
                            continue
                        sig, _ = self._signature(s["vol"])
                        if sig and self._uuid(sig["rootHash"], first=True) == d["uuid"]:
                            slot["sig"] = s
                            break
                if slot["sig"] is not None:
                    sig, problem = self._signature(slot["sig"]["vol"])
                    slot["signature"], slot["signature_problem"] = sig, problem
                    if sig:
                        slot["root_hash"] = sig["rootHash"]
                        slot["evidence"].append(evidence(f"{slot['sig']['vol'].describe()}: JSON rootHash", sig["rootHash"]))
                if slot["verity"] is None and slot["root_hash"]:
                    last = self._uuid(slot["root_hash"], first=False)
                    slot["verity"] = next((v for v in verity if v["uuid"] == last and v["vol"].number not in used), None)
                if slot["root_hash"]:
                    ok_data = self._uuid(slot["root_hash"], first=True) == d["uuid"]
                    ok_hash = slot["verity"] is not None and self._uuid(slot["root_hash"], first=False) == slot["verity"]["uuid"]
                    slot["pairing"] = ok_data and ok_hash
                    slot["evidence"].append(evidence(
                        f"{d['vol'].describe()} / {slot['verity']['vol'].describe() if slot['verity'] else 'no verity partition'}",
                        "partition UUIDs are the first/last 128 bits of the root hash" if slot["pairing"]
                        else "partition UUIDs do not match the root hash halves"))
            for key in ("verity", "sig"):
                if slot[key] is not None:
                    used.add(slot[key]["vol"].number)
            slots.append(slot)
        # empty slots take the remaining empty verity/signature partitions in order
        spare_v = [v for v in verity if v["vol"].number not in used and v["label"] == k["empty_label"]]
        spare_s = [s for s in sigs if s["vol"].number not in used and s["label"] == k["empty_label"]]
        for slot in slots:
            if slot["empty"]:
                slot["verity"] = spare_v.pop(0) if spare_v else None
                slot["sig"] = spare_s.pop(0) if spare_s else None
        for slot in slots:
            d = slot["data"]
            slot["version"] = None if slot["empty"] else self._label_version(d["label"])
        return slots

    @staticmethod
    def _uuid(root_hash: str, first: bool) -> str | None:
        import uuid

        if len(root_hash) < 64:
            return None
        half = root_hash[:32] if first else root_hash[-32:]
        return str(uuid.UUID(half))

    @staticmethod
    def _label_version(label: str, image_id: str | None = None) -> str | None:
        """§2.3: ``Name_Version`` (the underscore separates the version)."""
        if image_id and label.startswith(image_id + "_"):
            return label[len(image_id) + 1:] or None
        name, sep, version = label.rpartition("_")
        return version if sep and name else None

    # ------------------------------------------------------------------------------- UKIs
    def _ukis(self, image: DiskImage) -> tuple[list[dict], object, Volume | None]:
        """Type #2 entries (UKIs in /EFI/Linux) of the ESP and XBOOTLDR, in systemd-boot's order."""
        from immutools.fs.pe import UnifiedKernelImage
        from immutools.system.cmdline import KernelCmdline
        from immutools.system.sdboot import LoaderEntry, read_loader, select_default, sort_entries

        esp = next((v for v in image.volumes if v.type_key == "esp"), None)
        xbootldr = next((v for v in image.volumes if v.type_key == "xbootldr"), None)
        entries, rows, conf = [], {}, None
        for vol in (esp, xbootldr):
            fs = image.filesystem(vol) if vol is not None else None
            if fs is None:
                continue
            if vol is esp:
                loader = read_loader(fs, "/")
                conf = loader.conf if loader else None
            for d in self.k["uki_dirs"]:
                try:
                    names = fs.listdir(d) if fs.exists(d) else []
                except ImmutoolsError:
                    continue
                for name in names[:_MAX_UKIS]:
                    m = _COUNTER.match(name)
                    if not m:
                        continue
                    path = f"{d}/{name}"
                    try:
                        uki = UnifiedKernelImage(fs.open_source(path), image.limits)
                        osrel = uki.section_text(".osrel")
                        cmdline = uki.section_text(".cmdline")
                        uname = uki.section_text(".uname")
                    except ImmutoolsError as exc:
                        image.warn(f"{vol.describe()}: {path}: not a readable UKI: {exc}")
                        continue
                    from immutools.osrelease import parse_os_release

                    rel = parse_os_release(osrel or "")
                    entry = LoaderEntry(id=m.group("stem") + m.group("ext"), path=path,
                                        title=rel.get("PRETTY_NAME"),
                                        version=rel.get("IMAGE_VERSION") or rel.get("VERSION_ID"),
                                        sort_key=rel.get("IMAGE_ID") or rel.get("ID"),
                                        tries_left=int(m.group("left")) if m.group("left") else None,
                                        tries_done=int(m.group("done")) if m.group("done") else None)
                    entries.append(entry)
                    rows[id(entry)] = {
                        "path": path.lstrip("/"), "volume": vol.number, "os_release": rel,
                        "cmdline": KernelCmdline((cmdline or "").strip(), f"{vol.describe()}: {path} .cmdline"),
                        "uname": (uname or "").strip() or None, "tries_left": entry.tries_left,
                        "evidence": evidence(f"{vol.describe()}: {path}", "unified kernel image"),
                    }
        ordered = sort_entries(entries)
        default, how = select_default(ordered, conf) if ordered else (None, "no UKIs")
        out = []
        for e in ordered:
            row = dict(rows[id(e)])
            row["default"] = e is default
            out.append(row)
        return out, how, esp

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.mounts import MountEntry, MountTable, path_rows
        from immutools.system.rootview import OsTree
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k = self.k
        rows = self._classify(image)
        role = detection.facts.get("role") or self._main_role(rows)
        slots = self._slots(image, rows, role)
        ukis, default_how, esp = self._ukis(image)
        default_uki = next((u for u in ukis if u["default"]), None)
        cmdline = default_uki["cmdline"] if default_uki else None
        hash_key = "usrhash" if role == "usr" else "roothash"
        pinned = cmdline.get(hash_key) if cmdline else None

        # --- identity ------------------------------------------------------------------------------
        image_id = None
        for slot in slots:
            if not slot["empty"]:
                parsed, _ = self._os_release(image, slot["data"]["vol"], role)
                if parsed and parsed.get("IMAGE_ID"):
                    image_id = parsed["IMAGE_ID"]
                    break
        for slot in slots:
            if not slot["empty"]:
                slot["version"] = self._label_version(slot["data"]["label"], image_id)

        # --- the active slot: the one the default UKI pins, else the highest version --------------
        from immutools.system.sdboot import version_compare

        active = None
        how = None
        if pinned:
            active = next((s for s in slots if s["root_hash"] == pinned), None)
            if active is None:
                active = next((s for s in slots if not s["empty"] and s["data"]["uuid"] == self._uuid(pinned, True)), None)
            how = f"default UKI {default_uki['path']} pins it with {hash_key}=" if active else None
        if active is None:
            candidates = [s for s in slots if not s["empty"] and not s["pending"] and not s["data"]["no_auto"]]
            for s in candidates:
                if active is None or version_compare(s["version"], active["version"]) > 0:
                    active = s
            how = "highest version among the labels (DPS: strverscmp order)" if active else None
        parsed, os_ev = (self._os_release(image, active["data"]["vol"], role) if active else (None, None))

        # --- the running tree ------------------------------------------------------------------------
        tree = OsTree(image.limits)
        root_row = next((r for r in rows if r["role"] == "root" and r["arch"] and not r["no_auto"]
                         and r["label"] != k["empty_label"]), None) if role == "usr" else (active["data"] if active else None)
        root_vol = root_row["vol"] if root_row else None
        have_root = mount_fs(tree, "/", image, root_vol) if root_vol is not None else False
        if role == "usr" and active is not None:
            mount_fs(tree, "/usr", image, active["data"]["vol"])
        xbootldr = next((v for v in image.volumes if v.type_key == "xbootldr"), None)
        esp_target = "/boot" if xbootldr is None and have_root and tree.exists("/boot") else "/efi"
        if xbootldr is not None:
            mount_fs(tree, "/boot", image, xbootldr)
        if esp is not None:
            mount_fs(tree, esp_target, image, esp)
        extra = []
        for r in rows:
            target = k["mount_targets"].get(r["role"])
            if target and not r["no_auto"] and r["label"] != k["empty_label"] and all(e["role"] != r["role"] for e in extra):
                if mount_fs(tree, target, image, r["vol"]):
                    extra.append(r | {"target": target})
        units = UnitSet(tree)

        # --- mounts --------------------------------------------------------------------------------
        ref = k["source_ref"]
        table = MountTable()
        if root_vol is not None:
            ro = root_row["read_only"]
            table.add(MountEntry("/", f"PARTUUID={root_vol.partition.uuid}", root_vol.fstype, ["ro" if ro else "rw"],
                                 observed=False, volume=root_vol,
                                 evidence=[evidence(f"{root_vol.describe()}: GPT entry", f"DPS type {root_row['key']}"),
                                           evidence(ref, "root found by type on the boot disk (root=dissect / gpt-auto)", False)]
                                 + ([cmdline.evidence("root")] if cmdline and cmdline.has("root") else [])))
        else:
            table.add(MountEntry("/", "tmpfs", "tmpfs", ["rw"], observed=False,
                                 evidence=[evidence(ref, "no root partition: nothing persistent to mount at / (systemd-repart creates one at first boot)", False)]))
        if role == "usr" and active is not None:
            vol = active["data"]["vol"]
            ev = [evidence(f"{vol.describe()}: GPT entry", f"DPS type {active['data']['key']}")] + active["evidence"]
            if pinned:
                ev.append(cmdline.evidence(hash_key))
            table.add(MountEntry("/usr", "/dev/mapper/usr", vol.fstype, ["ro"], integrity="dm-verity" if active["verity"] else "none",
                                 persistence="image", observed=False, volume=vol, evidence=ev))
        if xbootldr is not None:
            table.add(MountEntry("/boot", f"PARTUUID={xbootldr.partition.uuid}", xbootldr.fstype, ["rw", "umask=0077"], observed=False,
                                 volume=xbootldr, evidence=[evidence(f"{xbootldr.describe()}: GPT entry", "XBOOTLDR"), evidence(ref, "auto-mounted", False)]))
        if esp is not None:
            table.add(MountEntry(esp_target, f"PARTUUID={esp.partition.uuid}", esp.fstype, ["rw", "umask=0077"], observed=False,
                                 volume=esp, evidence=[evidence(f"{esp.describe()}: GPT entry", "ESP"),
                                                       evidence(ref, f"auto-mounted at {esp_target}", False)]))
        for r in extra:
            vol = r["vol"]
            table.add(MountEntry(r["target"], f"PARTUUID={vol.partition.uuid}", vol.fstype, ["ro" if r["read_only"] else "rw"],
                                 observed=False, volume=vol,
                                 evidence=[evidence(f"{vol.describe()}: GPT entry", f"DPS type {r['key']}"), evidence(ref, "auto-mounted by type", False)]))
        skipped = add_enabled_mount_units(table, units, tree)
        if table.get("/run") is None:
            table.add(MountEntry("/run", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=755"], observed=False,
                                 evidence=[evidence("systemd API filesystems", "/run is a tmpfs", False)]))

        from immutools.collectors.common import resolve_lenient

        paths = path_rows(table, resolve=lambda p: resolve_lenient(tree, p))
        surface = inventory(tree, cmdline, units).to_report()

        # --- update ----------------------------------------------------------------------------------
        transfers, server = self._transfers(tree)
        repart = self._list_confs(tree, k["repart_dirs"], ".conf")
        timer = units.enablement(k["sysupdate_timer"]).enabled if units.find(k["sysupdate_timer"]) else False
        slot_rows = []
        for s in slots:
            parts = [s["data"]["vol"].number] + [s[x]["vol"].number for x in ("verity", "sig") if s[x] is not None]
            slot_rows.append({"name": s["name"], "partitions": parts, "version": s["version"], "active": s is active,
                              "priority": None, "tries": None, "successful": None, "empty": s["empty"],
                              "label": s["data"]["label"], "root_hash": s["root_hash"]})
        upd_ev = [evidence(t["path"], "systemd-sysupdate transfer") for t in transfers][:4]
        if how:
            upd_ev.append(evidence(default_uki["evidence"]["source"] if default_uki else "partition labels", how))
        update = {
            "mechanism": "ab-partitions" if len(slots) > 1 or transfers else "none",
            "agent": "systemd-sysupdate" if transfers else None,
            "channel": None,
            "server": server,
            "active_slot": active["name"] if active and active["name"] in ("A", "B") else None,
            "slots": slot_rows,
            "agent_timer_enabled": timer,
            "rollback": "automatic: boot counting on the UKIs (TriesLeft) falls back to the older UKI, which pins the older /usr by its root hash" if transfers else None,
            "evidence": upd_ev,
        }

        # --- integrity -------------------------------------------------------------------------------
        targets = []
        for s in slots:
            if s["empty"] or s["verity"] is None:
                continue
            targets.append({"slot": s["name"], "partition": s["data"]["vol"].number, "data_offset": 0,
                            "hash_partition": s["verity"]["vol"].number, "hash_offset": 0, "superblock": True,
                            "root_hash": s["root_hash"] or (pinned if s is active else None),
                            "root_hash_source": (f"verity signature partition {s['sig']['vol'].number} (rootHash)" if s["root_hash"]
                                                 else f"UKI {default_uki['path']} {hash_key}=" if s is active and pinned else None)})
        root_hash = (active or {}).get("root_hash") or pinned
        sig = (active or {}).get("signature")
        integrity = {
            "verity": any(s["verity"] is not None for s in slots if not s["empty"]),
            "root_hash": root_hash,
            "hash_location": (f"verity signature partition {active['sig']['vol'].number} rootHash"
                              + (f"; UKI {default_uki['path']} {hash_key}=" if pinned else "")) if active and active["sig"] else
                             (f"UKI {default_uki['path']} {hash_key}=" if pinned else None),
            "verified": None,
            "signature": {"present": sig is not None, "certificate_fingerprint": (sig or {}).get("certificateFingerprint"),
                          "checked": False, "note": "the PKCS#7 signature is not checked offline (the kernel keyring decides at boot)"},
            "evidence": (active or {}).get("evidence", []) + ([cmdline.evidence(hash_key)] if pinned else []),
            "targets": targets,
        }

        from immutools.collectors.generic import arch_from_tree

        arch_key = (active or {}).get("data", {}).get("arch") if active else None
        arch = {"x86-64": "x86_64", "arm64": "aarch64", "x86": "i386", "arm": "arm", "riscv64": "riscv64",
                "ppc64": "ppc64", "ppc64-le": "ppc64", "s390x": "s390x"}.get(arch_key)
        arch_ev = evidence(f"{active['data']['vol'].describe()}: GPT entry", f"architecture-specific type {active['data']['key']}") if arch else None
        if arch is None:
            arch, arch_ev = arch_from_tree(tree)
        os_section = {
            "id": (parsed or {}).get("ID"), "name": (parsed or {}).get("NAME"),
            "version": (parsed or {}).get("VERSION_ID") or (parsed or {}).get("VERSION"),
            "variant": (parsed or {}).get("VARIANT_ID"), "arch": arch,
            "pretty_name": (parsed or {}).get("PRETTY_NAME"), "build_id": (parsed or {}).get("BUILD_ID"),
            "image_id": (parsed or {}).get("IMAGE_ID"), "image_version": (parsed or {}).get("IMAGE_VERSION"),
            "evidence": [e for e in (os_ev, arch_ev) if e],
        }
        distribution = {
            "name": "dps",
            "image_id": (parsed or {}).get("IMAGE_ID"),
            "image_version": (parsed or {}).get("IMAGE_VERSION"),
            "main_role": role,
            "verity_pairing": all(s["pairing"] for s in slots if not s["empty"] and s["root_hash"]) if any(s["root_hash"] for s in slots) else None,
            "signature": {"present": sig is not None, "certificate_fingerprint": (sig or {}).get("certificateFingerprint"),
                          "root_hash_matches_uki": (sig["rootHash"] == pinned) if sig and pinned else None,
                          "problem": (active or {}).get("signature_problem")},
            "default_uki": default_uki["path"] if default_uki else None,
            "default_uki_choice": default_how,
            "ukis": [{kk: vv for kk, vv in u.items() if kk not in ("cmdline", "os_release")}
                     | {"cmdline": u["cmdline"].text, "image_version": u["os_release"].get("IMAGE_VERSION")} for u in ukis],
            "kernel_cmdline": cmdline.text if cmdline else None,
            "active_slot_choice": how,
            "esp_mountpoint": esp_target if esp is not None else None,
            "partitions": [{"number": r["vol"].number, "designator": r["key"], "label": r["label"], "uuid": r["uuid"],
                            "empty": r["label"] == k["empty_label"], "no_auto": r["no_auto"], "read_only": r["read_only"],
                            "grow_file_system": r["grow"]} for r in rows],
            "sysupdate_transfers": [t["name"] for t in transfers],
            "repart_definitions": repart,
            "skipped_mount_units": skipped,
        }
        return {"os": os_section, "mounts": table.to_report(), "paths": paths, "update": update,
                "integrity": integrity, "surface": surface, "distribution": distribution}

    # ------------------------------------------------------------------------------- pieces
    def _list_confs(self, tree, dirs, suffix: str) -> list[str]:
        names = set()
        for d in dirs:
            try:
                names |= {n for n in tree.listdir(d) if n.endswith(suffix)} if tree.exists(d) else set()
            except ImmutoolsError:
                continue
        return sorted(names)

    def _transfers(self, tree) -> tuple[list[dict], str | None]:
        from immutools.collectors.common import read_keyfile

        out, server = [], None
        for d in self.k["sysupdate_dirs"]:
            try:
                names = sorted(n for n in tree.listdir(d) if n.endswith(".transfer")) if tree.exists(d) else []
            except ImmutoolsError:
                continue
            for name in names:
                path = posixpath.join(d, name)
                conf = read_keyfile(tree, path) or {}
                src = conf.get("Source", {})
                if server is None and src.get("Type", "").startswith("url") and src.get("Path"):
                    server = src["Path"]
                out.append({"name": name, "path": tree.source_of(path), "source_type": src.get("Type"),
                            "target_type": conf.get("Target", {}).get("Type"),
                            "target_match": conf.get("Target", {}).get("MatchPattern")})
        seen, unique = set(), []
        for t in out:                       # /etc overrides /usr/lib by name
            if t["name"] not in seen:
                seen.add(t["name"])
                unique.append(t)
        return unique, server
