"""Discoverable Partitions Specification images (systemd-repart / mkosi, usr-only A/B like ParticleOS).

Recognition is generic: partitions are classified by their type GUID, which the DPS defines per
role and architecture (``immutools.volumes.types.lookup_type_entry`` gives role and arch). For the
main role (``usr`` when present, else ``root``) every data partition is a slot. A slot's root hash
comes from its verity signature partition's JSON (``rootHash``) or from the boot chain: the default
UKI in ``/EFI/Linux`` (systemd-boot's order) carries ``roothash=``/``usrhash=`` in its ``.cmdline``.
The hash pairs the data and verity partitions by partition UUID (first / last 128 bits), as
systemd-veritysetup-generator does (``immutools.system.gpt_auto.pair_by_root_hash``); the labels
(``Name_Version``, ``..._verity``, ``..._verity_sig``) only tie partitions when no hash is known
(mkosi gives root and verity the same label and writes no signature partition). ``_empty`` labels
mark slots systemd-repart created for the next update; the hash the default UKI pins decides the
active slot.

What the running system mounts besides root and /usr (ESP on ``/efi`` or ``/boot``, XBOOTLDR,
/home, /srv, /var, /var/tmp, swap) is systemd-gpt-auto-generator's decision, applied by
``immutools.system.gpt_auto.gpt_auto_mounts`` to the root tree before those mounts.

Facts come from ``data/distributions/dps.yaml``.
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
from immutools.system.gpt_auto import (
    SRC_DPS, SRC_GPT_AUTO, SRC_VERITY, GptEntry, cmdline_verity, entries_of, gpt_auto_mounts, pair_by_root_hash,
    root_hash_uuids, root_stays_read_only,
)
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
    def _slots(self, image: DiskImage, rows: list[dict], role: str, entries: list[GptEntry],
               boot_hash: tuple[str | None, dict | None, str | None, str | None]) -> list[dict]:
        """Slots of the main role: each data partition with its verity and signature partitions.

        ``boot_hash``: (root hash, its evidence, explicit data device, explicit hash device) the
        default UKI's command line gives for ``role``. A slot's root hash is its signature
        partition's ``rootHash``, else the boot chain's hash when that names this partition; the
        hash then pairs the verity partition by UUID exactly as systemd does
        (``gpt_auto.pair_by_root_hash``), labels only when no hash is known."""
        k = self.k
        pinned, pinned_ev, data_dev, hash_dev = boot_hash
        pinned_uuids = root_hash_uuids(pinned)
        data = sorted((r for r in rows if r["role"] == role and r["arch"]), key=lambda r: r["vol"].number)
        verity = [r for r in rows if r["role"] == f"{role}-verity"]
        sigs = [r for r in rows if r["role"] == f"{role}-verity-sig"]
        by_number = {r["vol"].number: r for r in rows}
        used: set[int] = set()
        slots = []
        for i, d in enumerate(data):
            empty = d["label"] == k["empty_label"]
            pending = any(d["label"].startswith(p) for p in k["pending_label_prefixes"])
            slot = {"name": _slot_name(i), "data": d, "verity": None, "sig": None, "empty": empty, "pending": pending,
                    "signature": None, "signature_problem": None, "root_hash": None, "root_hash_source": None,
                    "pairing": None, "pairing_problems": [], "evidence": []}
            if not empty:
                label = d["label"]
                slot["sig"] = next((s for s in sigs if s["label"] == label + k["signature_label_suffix"]
                                    and s["vol"].number not in used), None)
                if slot["sig"] is None:
                    # DPS: the signature's root hash names the data partition by its UUID
                    for s in sigs:
                        if s["vol"].number in used or s["label"] == k["empty_label"]:
                            continue
                        sig, _ = self._signature(s["vol"])
                        if sig and (root_hash_uuids(sig["rootHash"]) or ("",))[0] == d["uuid"]:
                            slot["sig"] = s
                            break
                hash_source = None
                if slot["sig"] is not None:
                    sig, problem = self._signature(slot["sig"]["vol"])
                    slot["signature"], slot["signature_problem"] = sig, problem
                    if sig:
                        slot["root_hash"] = sig["rootHash"]
                        slot["root_hash_source"] = f"verity signature partition {slot['sig']['vol'].number} (rootHash)"
                        hash_source = evidence(f"{slot['sig']['vol'].describe()}: JSON rootHash", sig["rootHash"])
                if slot["root_hash"] is None and pinned and pinned_uuids and pinned_uuids[0] == d["uuid"]:
                    slot["root_hash"] = pinned.lower()
                    slot["root_hash_source"] = pinned_ev["source"] if pinned_ev else "the kernel command line"
                    hash_source = pinned_ev
                if slot["root_hash"]:
                    explicit = (data_dev, hash_dev) if pinned and slot["root_hash"] == pinned.lower() else (None, None)
                    pair = pair_by_root_hash(entries, slot["root_hash"], role, hash_source,
                                             data_device=explicit[0], hash_device=explicit[1])
                    slot["evidence"] += pair.evidence
                    slot["pairing_problems"] = pair.problems
                    if pair.hash is not None and pair.hash.number not in used and by_number.get(pair.hash.number, {}).get("role") == f"{role}-verity":
                        slot["verity"] = by_number[pair.hash.number]
                    slot["pairing"] = pair.paired and pair.data is not None and pair.data.number == d["vol"].number
                if slot["verity"] is None and not slot["root_hash"]:
                    # no root hash anywhere: the Name_Version labels are all that ties them
                    slot["verity"] = next((v for v in verity if v["label"] == label + k["verity_label_suffix"]
                                           and v["vol"].number not in used), None)
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
        from immutools.collectors.common import resolve_lenient
        from immutools.system.mounts import MountEntry, MountTable, path_rows
        from immutools.system.rootview import OsTree
        from immutools.system.sdboot import version_compare
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k = self.k
        rows = self._classify(image)
        entries = entries_of(image)
        role = detection.facts.get("role") or self._main_role(rows)
        ukis, default_how, esp = self._ukis(image)
        default_uki = next((u for u in ukis if u["default"]), None)
        cmdline = default_uki["cmdline"] if default_uki else None
        hash_key = "usrhash" if role == "usr" else "roothash"
        pinned, data_dev, hash_dev = cmdline_verity(cmdline, role)
        pinned_ev = cmdline.evidence(hash_key) if pinned else None
        slots = self._slots(image, rows, role, entries, (pinned, pinned_ev, data_dev, hash_dev))

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
        active = None
        how = None
        if pinned:
            active = next((s for s in slots if s["root_hash"] and s["root_hash"] == pinned.lower()), None)
            how = f"default UKI {default_uki['path']} pins it with {hash_key}= (its first 128 bits are the partition UUID)" if active else None
        if active is None:
            candidates = [s for s in slots if not s["empty"] and not s["pending"] and not s["data"]["no_auto"]]
            for s in candidates:
                if active is None or version_compare(s["version"], active["version"]) > 0:
                    active = s
            how = "highest version among the labels (DPS: strverscmp order)" if active else None
        parsed, os_ev = (self._os_release(image, active["data"]["vol"], role) if active else (None, None))
        verity_on = bool(active and active["verity"] is not None and active["root_hash"] and active["pairing"])

        # --- the running tree: root (and /usr), then what systemd-gpt-auto-generator adds ----------
        tree = OsTree(image.limits)
        root_row = next((r for r in rows if r["role"] == "root" and r["arch"] and not r["no_auto"]
                         and r["label"] != k["empty_label"]), None) if role == "usr" else (active["data"] if active else None)
        root_vol = root_row["vol"] if root_row else None
        have_root = mount_fs(tree, "/", image, root_vol) if root_vol is not None else False
        if role == "usr" and active is not None:
            mount_fs(tree, "/usr", image, active["data"]["vol"])
        fstab_targets, fstab_swap = self._fstab_targets(image, tree) if have_root else (set(), False)
        machine_id = self._machine_id(tree) if have_root else None
        decisions = gpt_auto_mounts(entries, tree, fstab_targets=fstab_targets, fstab_has_swap=fstab_swap,
                                    machine_id=machine_id, cmdline=cmdline, on_root_disk=True)
        by_number = {v.number: v for v in image.volumes}
        placed = []
        for d in decisions:
            if d.target and d.target.startswith("/") and mount_fs(tree, d.target, image, by_number.get(d.entry.number)):
                placed.append(d)
        esp_decision = next((d for d in decisions if d.designator == "esp"), None)
        units = UnitSet(tree)

        # --- mounts --------------------------------------------------------------------------------
        table = MountTable()
        if root_vol is not None:
            vol = root_vol
            ev = [evidence(f"{vol.describe()}: GPT entry", f"DPS type {root_row['key']}")]
            if role == "root" and verity_on:
                ev += active["evidence"]
                table.add(MountEntry("/", "/dev/mapper/root", vol.fstype, ["ro"], integrity="dm-verity", persistence="image",
                                     observed=False, volume=vol,
                                     evidence=ev + [evidence(SRC_VERITY, "roothash= sets up /dev/mapper/root; the initrd mounts it read-only", False)]))
            else:
                stays_ro, access_ev = root_stays_read_only(GptEntry.from_partition(vol.partition, vol.fstype), cmdline)
                table.add(MountEntry("/", f"PARTUUID={vol.partition.uuid}", vol.fstype, ["ro" if stays_ro else "rw"],
                                     observed=False, volume=vol,
                                     evidence=ev + [evidence(SRC_GPT_AUTO, "root found by type on the boot disk (root=gpt-auto)", False),
                                                    access_ev]
                                     + ([cmdline.evidence("root")] if cmdline and cmdline.has("root") else [])))
        else:
            table.add(MountEntry("/", "tmpfs", "tmpfs", ["rw"], observed=False,
                                 evidence=[evidence(SRC_DPS, "no root partition: nothing persistent to mount at / (systemd-repart creates one at first boot)", False)]))
        if role == "usr" and active is not None:
            vol = active["data"]["vol"]
            ev = [evidence(f"{vol.describe()}: GPT entry", f"DPS type {active['data']['key']}")] + active["evidence"]
            table.add(MountEntry("/usr", "/dev/mapper/usr" if verity_on else f"PARTUUID={vol.partition.uuid}", vol.fstype, ["ro"],
                                 integrity="dm-verity" if verity_on else "none", persistence="image", observed=False,
                                 volume=vol, evidence=ev))
        for d in placed:
            vol = by_number[d.entry.number]
            options = list(d.options) + (["x-systemd.automount"] if d.automount else [])
            table.add(MountEntry(d.target, f"PARTUUID={vol.partition.uuid}", vol.fstype, options, observed=False,
                                 volume=vol, evidence=d.evidence))
        skipped = add_enabled_mount_units(table, units, tree)
        if table.get("/run") is None:
            table.add(MountEntry("/run", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=755"], observed=False,
                                 evidence=[evidence("systemd API filesystems", "/run is a tmpfs", False)]))

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
            upd_ev.append(evidence(default_uki["evidence"]["source"] if default_uki and pinned else "partition labels", how))
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
                            "root_hash": s["root_hash"], "root_hash_source": s["root_hash_source"]})
        root_hash = (active or {}).get("root_hash") or (pinned.lower() if pinned else None)
        sig = (active or {}).get("signature")
        hash_location = "; ".join(x for x in (
            f"verity signature partition {active['sig']['vol'].number} rootHash" if active and active["sig"] and sig else None,
            f"UKI {default_uki['path']} {hash_key}=" if pinned else None) if x) or None
        integrity = {
            "verity": any(s["verity"] is not None and s["root_hash"] for s in slots if not s["empty"]),
            "root_hash": root_hash,
            "hash_location": hash_location,
            "verified": None,
            "signature": {"present": sig is not None, "certificate_fingerprint": (sig or {}).get("certificateFingerprint"),
                          "checked": False, "note": "the PKCS#7 signature is not checked offline (the kernel keyring decides at boot)"},
            "evidence": (active or {}).get("evidence", []) or ([pinned_ev] if pinned_ev else []),
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
            "verity_pairing_problems": [p for s in slots for p in s["pairing_problems"]],
            "signature": {"present": sig is not None, "certificate_fingerprint": (sig or {}).get("certificateFingerprint"),
                          "root_hash_matches_uki": (sig["rootHash"] == pinned.lower()) if sig and pinned else None,
                          "problem": (active or {}).get("signature_problem")},
            "default_uki": default_uki["path"] if default_uki else None,
            "default_uki_choice": default_how,
            "ukis": [{kk: vv for kk, vv in u.items() if kk not in ("cmdline", "os_release")}
                     | {"cmdline": u["cmdline"].text, "image_version": u["os_release"].get("IMAGE_VERSION")} for u in ukis],
            "kernel_cmdline": cmdline.text if cmdline else None,
            "active_slot_choice": how,
            "esp_mountpoint": esp_decision.target if esp_decision else None,
            "esp_mount_reason": esp_decision.reason if esp_decision else None,
            "gpt_auto": [{"designator": d.designator, "partition": d.entry.number, "target": d.target,
                          "options": d.options, "reason": d.reason, "evidence": d.evidence} for d in decisions],
            "partitions": [{"number": r["vol"].number, "designator": r["key"], "label": r["label"], "uuid": r["uuid"],
                            "empty": r["label"] == k["empty_label"], "no_auto": r["no_auto"], "read_only": r["read_only"],
                            "grow_file_system": r["grow"]} for r in rows],
            "sysupdate_transfers": [t["name"] for t in transfers],
            "repart_definitions": repart,
            "skipped_mount_units": skipped,
        }
        return {"os": os_section, "mounts": table.to_report(), "paths": paths, "update": update,
                "integrity": integrity, "surface": surface, "distribution": distribution}

    @staticmethod
    def _fstab_targets(image: DiskImage, tree) -> tuple[set[str], bool]:
        """Mount points /etc/fstab names (canonical), and whether it defines swap: the generator
        leaves those to systemd-fstab-generator."""
        from immutools.collectors.common import resolve_lenient
        from immutools.system.fstab import parse_fstab

        try:
            if not tree.exists("/etc/fstab"):
                return set(), False
            rows, _warnings = parse_fstab(tree.read_text("/etc/fstab", max_bytes=256 * 1024), "/etc/fstab")
        except ImmutoolsError as exc:
            image.warn(f"/etc/fstab unreadable: {exc}")
            return set(), False
        targets = {resolve_lenient(tree, r.target) for r in rows if r.fstype != "swap" and r.target.startswith("/")}
        return targets, any(r.fstype == "swap" for r in rows)

    @staticmethod
    def _machine_id(tree) -> str | None:
        """/etc/machine-id when it holds an ID (empty or ``uninitialized``: set at first boot, machine-id(5))."""
        try:
            text = tree.read_text("/etc/machine-id", max_bytes=4096).strip() if tree.exists("/etc/machine-id") else ""
        except ImmutoolsError:
            return None
        return text if re.fullmatch(r"[0-9a-f]{32}", text) else None

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
