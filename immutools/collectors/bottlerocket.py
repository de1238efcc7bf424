"""Bottlerocket OS: a dm-verity protected read-only root in A/B partition sets (BOOT, ROOT, HASH)
flipped by GPT attribute bits on BOOT, ``/etc`` a tmpfs rebuilt from the settings API at every boot,
persistent state on a separate data partition (``/local``, with ``/var``, ``/opt``, ``/mnt`` bound
from it) and on PRIVATE (``/var/lib/bottlerocket``); no shell, no sshd, no package manager on the host.

Facts come from ``data/distributions/bottlerocket.yaml`` (which cites shared/reference/bottlerocket.md).
What the image shows is read: GPT types, names, fixed PARTUUIDs and attribute bits (the active set
is chosen with GRUB's patched ``gptprio.next`` rule), the sys-root os-release of each ROOT, grub.cfg
on each BOOT (the dm-verity table, in the ``set dm_verity_root=`` form of v1.12+ or inline in
``dm-mod.create=``), the HASH superblock, PRIVATE's bootconfig and API datastore, the mount and
service units. Mounts set up in code (systemd's /etc tmpfs, prairiedog's /boot, the /local masks)
are added from the documented behaviour, ``observed: false``. The data image of the split plan is
recognised on its own (role ``data-disk``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import read_key_values, weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import STANDARD_PATHS, evidence
from immutools.volumes.gptprio import gptprio_next

_MAX_SMALL_FILE = 1024 * 1024            # os-release, grub.cfg, root.json, datastore values
_MAX_BOOTCONFIG = 64 * 1024              # the kernel takes at most 32 KiB of bootconfig text
_LOCKDOWN_MODES = ("none", "integrity", "confidentiality")    # /sys/kernel/security/lockdown


def _type(vol: Volume) -> str:
    return ((vol.partition.type_guid if vol.partition else None) or "").lower()


@dataclass
class Bank:
    """One partition set: BOOT with ROOT and HASH at PARTNROFF 1 and 2 (bottlerocket.md §2.1/§4.4)."""

    name: str
    boot: Volume
    root: Volume | None
    hash: Volume | None
    triple: str | None = None                     # x86_64-bottlerocket-linux-gnu
    os_release: dict | None = None
    os_ev: dict | None = None
    grub: object | None = None                    # GrubConfig
    entry: object | None = None                   # its default GrubEntry
    cmdline: object | None = None                 # KernelCmdline
    grub_ev: list[dict] = field(default_factory=list)
    grub_form: str | None = None                  # variable | inline
    secure_boot: bool | None = None
    table: object | None = None                   # VerityParams from the dm table
    table_error: str | None = None
    data_volume: Volume | None = None             # what the table's data device names
    hash_volume: Volume | None = None
    superblock: object | None = None
    superblock_error: str | None = None
    mismatches: list[str] = field(default_factory=list)

    def attrs(self) -> dict:
        return (self.boot.partition.attributes if self.boot.partition else {}) or {}

    @property
    def version(self) -> str | None:
        return (self.os_release or {}).get("VERSION_ID")


class BottlerocketCollector(Collector):
    name = "bottlerocket"

    def __init__(self):
        self.k = load_distribution("bottlerocket")
        self.types = self.k["gpt"]["types"]

    # ------------------------------------------------------------------------------- detect
    def banks(self, image: DiskImage) -> list[Bank]:
        """BOOT partitions in table order are sets A and B (signpost state.rs, §2.1); ROOT and HASH
        follow at +1/+2 when their types match."""
        gpt = self.k["gpt"]
        boots = sorted((v for v in image.volumes if _type(v) == self.types["boot"]), key=lambda v: v.number)
        out = []
        for name, boot in zip(gpt["banks"], boots):
            root = image.volume(number=boot.number + gpt["root_offset"])
            hash_ = image.volume(number=boot.number + gpt["hash_offset"])
            out.append(Bank(name, boot,
                            root if root is not None and _type(root) == self.types["root"] else None,
                            hash_ if hash_ is not None and _type(hash_) == self.types["hash"] else None))
        return out

    def detect(self, image: DiskImage) -> Detection:
        gpt = self.k["gpt"]
        hits, ev = [], []
        banks = self.banks(image)
        if banks:
            first = banks[0]
            hits.append("boot_type")
            ev.append(evidence(f"{first.boot.describe()}: GPT entry", f"type {self.types['boot']} (Bottlerocket BOOT)"))
            if any((first.boot.label or "") == f"{p}BOOT-A" for p in gpt["label_prefixes"]):
                hits.append("boot_label")
                ev.append(evidence(f"{first.boot.describe()}: GPT entry", f"name {first.boot.label}"))
            if first.root is not None and first.hash is not None:
                hits.append("root_hash_follow")
                ev.append(evidence(f"{first.root.describe()}, {first.hash.describe()}: GPT entries",
                                   "ROOT and HASH types at BOOT +1 / +2"))
            if any(_type(v) == self.types["private"] for v in image.volumes):
                hits.append("private_type")
            for bank in banks:
                self._read_os_release(image, bank)
                if bank.os_release and bank.os_release.get("ID") == "bottlerocket":
                    hits.append("os_release_id")
                    ev.append(bank.os_ev | {"detail": "os-release ID=bottlerocket"})
                    break
            facts = {"kind": "os-disk", "banks": banks}
        else:
            parts = [v for v in image.volumes if v.partition is not None]
            datas = [v for v in parts if _type(v) == self.types["data"]]
            if not datas or len(datas) != len(parts):
                return Detection(self.name, 0.0)
            hits.append("data_type_only")
            ev.append(evidence(f"{datas[0].describe()}: GPT entry",
                               f"type {self.types['data']} (Bottlerocket DATA) and no other partition"))
            fixed = set(gpt["data_partuuids"].values())
            if any((v.partition.uuid or "") in fixed for v in datas):
                hits.append("data_fixed_partuuid")
                ev.append(evidence(f"{datas[0].describe()}: GPT entry", f"fixed data PARTUUID {datas[0].partition.uuid}"))
            if any(v.label == gpt["data_label"] for v in datas):
                hits.append("data_label")
            facts = {"kind": "data-disk", "data": datas}
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev, facts)

    # ------------------------------------------------------------------------------- pieces
    def _read_os_release(self, image: DiskImage, bank: Bank) -> None:
        """The sys-root os-release of the bank's ROOT; the sys-root directory name gives the arch (§7)."""
        if bank.os_release is not None or bank.root is None:
            return
        fs = image.filesystem(bank.root)
        if fs is None:
            return
        try:
            names = [n for n in fs.listdir("/") if n.endswith(self.k["sys_root_suffix"])]
        except ImmutoolsError as exc:
            image.warn(f"{bank.root.describe()}: cannot list /: {exc}")
            return
        for name in sorted(names):
            path = f"/{name}/{self.k['os_release']}"
            parsed = read_key_values(fs, path)
            if parsed:
                bank.triple, bank.os_release = name, parsed
                bank.os_ev = evidence(f"{bank.root.describe()}: {path}", "os-release")
                return

    def _read_grub(self, image: DiskImage, bank: Bank, private: Volume | None) -> None:
        """Interpret the bank's grub.cfg as GRUB would after ``gptprio.next`` chose this BOOT (§4.4, §4.5)."""
        from immutools.fs.verity import read_superblock
        from immutools.system.grubcfg import fs_file_test, parse_grub_cfg
        from immutools.system.mounts import resolve_source_match

        fs = image.filesystem(bank.boot)
        if fs is None:
            return
        path = self.k["boot"]["grub_cfg"]
        try:
            if not fs.exists(path):
                image.warn(f"{bank.boot.describe()}: {path} not found: kernel command line unknown")
                return
            text = fs.read_text(path, max_bytes=_MAX_SMALL_FILE)
        except ImmutoolsError as exc:
            image.warn(f"{bank.boot.describe()}: {path}: {exc}")
            return
        part = bank.boot.partition
        env = {"boot_uuid": part.uuid or "", "boot_dev": f"hd0,gpt{part.number}"}
        env["root"] = env["boot_dev"]
        env["prefix"] = f"({env['root']})/grub"
        if private is not None:
            env["private"] = f"hd0,gpt{private.number}"
        try:
            cfg = parse_grub_cfg(text, env=env, file_exists=fs_file_test(fs))
        except ImmutoolsError as exc:
            image.warn(f"{bank.boot.describe()}: {path}: {exc}")
            return
        bank.grub = cfg
        entry = cfg.default_entry()
        origin = f"{bank.boot.describe()}: {path}"
        bank.grub_ev.append(evidence(origin, f"grub.cfg with GRUB's variables for this set (boot_uuid={part.uuid})"))
        variable = self.k["boot"]["verity_variable"]
        bank.secure_boot = bool(cfg.variables.get("check_signatures") == "no" or "superusers" in cfg.variables)
        try:
            if fs.exists(self.k["boot"]["grub_cfg_sig"]):
                bank.secure_boot = True
        except ImmutoolsError:
            pass
        if entry is None:
            image.warn(f"{origin}: no default menu entry")
            return
        bank.entry = entry
        bank.cmdline = entry.kernel_cmdline(origin)
        devices = bank.cmdline.dm_devices()
        table = next((t for d in devices for t in d.tables if t.target == "verity"), None)
        if table is None:
            bank.table_error = "no dm-verity table in dm-mod.create"
            return
        bank.grub_form = "variable" if any(a[0] == variable for a in cfg.assignments) else "inline"
        if table.verity is None:
            bank.table_error = table.verity_error or "dm-verity table not parsed"
            image.warn(f"{origin}: dm-verity table: {bank.table_error}")
            return
        bank.table = table.verity
        for device, attr in ((table.data_device, "data_volume"), (table.hash_device, "hash_volume")):
            found = resolve_source_match(device, image) if device else None
            setattr(bank, attr, found.volume if found else None)
        if bank.data_volume is not None and bank.root is not None and bank.data_volume is not bank.root:
            bank.mismatches.append(f"data device {table.data_device} is {bank.data_volume.describe()}, not the set's ROOT")
        if bank.hash_volume is None:
            return
        try:
            bank.superblock = read_superblock(bank.hash_volume.source, 0)
        except ImmutoolsError as exc:
            bank.superblock_error = str(exc)
            image.warn(f"{bank.hash_volume.describe()}: verity superblock: {exc}")
            return
        if bank.superblock is None:
            bank.superblock_error = "no dm-verity superblock at offset 0"
            return
        sb, tb = bank.superblock, bank.table
        for what, a, b in (("hash type", sb.version, tb.version), ("algorithm", sb.algorithm, tb.algorithm),
                           ("data block size", sb.data_block_size, tb.data_block_size),
                           ("hash block size", sb.hash_block_size, tb.hash_block_size),
                           ("data blocks", sb.data_blocks, tb.data_blocks), ("salt", sb.salt, tb.salt),
                           ("hash start block", sb.hash_start_block, tb.hash_start_block)):
            if a != b:
                bank.mismatches.append(f"{what}: superblock {a}, grub.cfg table {b}")

    def _private_fs(self, image: DiskImage, private: Volume | None):
        return image.filesystem(private) if private is not None else None

    def _bootconfig(self, image: DiskImage, private: Volume | None):
        from immutools.system.bootconfig import parse_blob

        fs = self._private_fs(image, private)
        path = self.k["private"]["bootconfig"]
        if fs is None:
            return None, None
        try:
            if not fs.exists(path):
                return None, None
            cfg = parse_blob(fs.read(path, max_bytes=_MAX_BOOTCONFIG))
        except ImmutoolsError as exc:
            image.warn(f"{private.describe()}: {path}: {exc}")
            return None, None
        return cfg, evidence(f"{private.describe()}: {path}", f"bootconfig, {cfg.size} bytes, checksum {cfg.checksum:#x} valid")

    def _setting(self, image: DiskImage, private: Volume | None, key: str):
        """A live setting from the API datastore on PRIVATE (JSON scalar), with evidence; None if absent."""
        fs = self._private_fs(image, private)
        if fs is None:
            return None, None
        path = f"{self.k['private']['datastore']}/{self.k['private']['settings'][key]}"
        try:
            if not fs.exists(path):
                return None, None
            raw = fs.read_text(path, max_bytes=_MAX_SMALL_FILE)
            value = json.loads(raw)
        except (ImmutoolsError, ValueError) as exc:
            image.warn(f"{private.describe()}: {path}: {exc}")
            return None, None
        if isinstance(value, (dict, list)):
            image.warn(f"{private.describe()}: {path}: not a scalar setting")
            return None, None
        return value, evidence(f"{private.describe()}: {path}", f"datastore setting = {raw.strip()}")

    def _lockdown(self, image, private, variant):
        value, ev = self._setting(image, private, "lockdown")
        if value in _LOCKDOWN_MODES:
            return value, [ev], True
        if value is not None:
            image.warn(f"{ev['source']}: lockdown {value!r} is not one of {', '.join(_LOCKDOWN_MODES)}; using the default")
        for rule in self.k["surface"]["lockdown_defaults"]:
            if "default" in rule:
                mode = rule["default"]
            elif variant and variant.endswith(rule.get("variant_suffix", "\0")):
                mode = rule["mode"]
            else:
                continue
            why = f"settings.kernel.lockdown default for variant {variant}" if variant else "settings.kernel.lockdown default"
            return mode, [evidence("bottlerocket.md §5 (BR shared-defaults lockdown-*.toml; set at boot by corndog)", why, False)], False
        return None, [], False

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        if detection.facts.get("kind") == "data-disk":
            return self._collect_data_disk(image, detection)
        return self._collect_os_disk(image, detection)

    def _data_rows(self, image: DiskImage) -> list[dict]:
        ids = self.k["gpt"]["data_partuuids"]
        which = {v: k for k, v in ids.items()}
        rows = []
        for vol in image.volumes:
            if _type(vol) != self.types["data"]:
                continue
            uuid = (vol.partition.uuid or "").lower()
            rows.append({
                "number": vol.number, "label": vol.label, "named": vol.label == self.k["gpt"]["data_label"],
                "uuid": uuid, "which": which.get(uuid, "other"), "filesystem": vol.fstype, "size": vol.partition.size,
                "evidence": [evidence(f"{vol.describe()}: GPT entry",
                                      f"DATA type, PARTUUID {uuid}" + (f" ({which[uuid]})" if uuid in which else "")
                                      + (f", name {vol.label}" if vol.label else ", no name"))],
            })
        return rows

    def _collect_data_disk(self, image: DiskImage, detection: Detection) -> dict:
        rows = self._data_rows(image)
        ev = list(detection.evidence)
        contents = []
        for row in rows:
            vol = image.volume(number=row["number"])
            fs = image.filesystem(vol)
            if fs is None:
                row["note"] = ("no filesystem yet: prepare-local-fs.service makes it at first boot (bottlerocket.md §2.5, §5)"
                               if vol.fstype == "zero" else f"content {vol.fstype}")
                continue
            try:
                names = sorted(fs.listdir("/"))[:64]
            except ImmutoolsError as exc:
                image.warn(f"{vol.describe()}: cannot list /: {exc}")
                continue
            contents += [f"/local/{n}" for n in names if n not in ("lost+found",)]
            ev.append(evidence(f"{vol.describe()}: /", f"{vol.fstype} filesystem holding {', '.join(names) or 'nothing'}"))
        return {
            "os": {"id": self.k["id"], "name": self.k["name"], "version": None, "variant": None, "arch": None,
                   "role": "data-disk", "evidence": ev},
            "mounts": [],
            "paths": [],
            "update": None,
            "integrity": None,
            "surface": None,
            "distribution": {
                "name": self.k["id"],
                "role": "data-disk",
                "plan": "split",
                "data_partitions": rows,
                "contents": contents,
                "mounted_at": "/local, by the OS disk's local.mount once the partition is named "
                              f"{self.k['gpt']['data_label']} (repart-data-preferred.service at first boot)",
                "evidence": ev,
            },
        }

    def _collect_os_disk(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.rootview import OsTree
        from immutools.system.units import UnitSet

        k = self.k
        banks = detection.facts.get("banks") or self.banks(image)
        private = next((v for v in image.volumes if _type(v) == self.types["private"]), None)
        for bank in banks:
            self._read_os_release(image, bank)
            self._read_grub(image, bank, private)

        # --- the active set, exactly as GRUB's gptprio.next picks it (§6) ----------------------------
        choice = gptprio_next([v.partition for v in image.volumes if v.partition], self.types["boot"])
        active = next((b for b in banks if choice.partition is not None and b.boot.number == choice.partition.number), None)
        if active is None:
            image.warn(f"no bootable Bottlerocket partition set: {choice.reason}")
        for bank in banks:
            if bank.grub is None and (bank is active or bank.boot.fstype != "zero"):
                image.warn(f"{bank.boot.describe()}: no readable grub.cfg (content {bank.boot.fstype}): "
                           f"set {bank.name}'s kernel command line and dm-verity table are unknown")
        src = active or next((b for b in banks if b.os_release), banks[0] if banks else None)
        osr = (src.os_release if src else None) or {}
        triple = src.triple if src else None
        arch = self._arch(triple)
        variant = osr.get("VARIANT_ID")
        private_fs = self._private_fs(image, private)

        # --- data partition (§2.1, §5) -----------------------------------------------------------------
        data_rows = self._data_rows(image)
        data_vol, data_ev = self._data_volume(image)

        # --- composed OS tree ----------------------------------------------------------------------
        tree = OsTree(image.limits)
        have_root = False
        if src is not None and src.root is not None and image.filesystem(src.root) is not None:
            tree.mount("/", image.filesystem(src.root), volume=src.root)
            have_root = True
        else:
            image.warn("Bottlerocket ROOT not readable: paths on / are inferred only")
        if have_root:
            self._mount_extra(image, tree, data_vol, private, src)
        units = UnitSet(tree) if have_root else None
        features = read_key_values(tree, k["image_features"]) if have_root else None
        data_fs = (features or {}).get("DATA_PARTITION_FILESYSTEM")

        table, skipped = self._mount_table(image, tree, units, src, triple, data_vol, data_ev, data_fs, private)
        from immutools.system.mounts import path_rows

        wanted = list(STANDARD_PATHS) + list(k["extra_paths"])
        paths = path_rows(table, wanted, resolve=lambda p: tree.lrealpath(p) if have_root and tree.exists(p, follow=False) else p)

        # --- surface -------------------------------------------------------------------------------
        lockdown, lockdown_ev, lockdown_observed = self._lockdown(image, private, variant)
        surface = self._surface(image, tree, units, src, lockdown, lockdown_ev, lockdown_observed) if have_root else None

        # --- update --------------------------------------------------------------------------------
        update = self._update(image, tree if have_root else None, units, banks, active, choice, private, variant, arch)

        # --- integrity -----------------------------------------------------------------------------
        integrity = self._integrity(banks, active)

        # --- os ------------------------------------------------------------------------------------
        os_ev = [e for e in (src.os_ev if src else None,) if e]
        if triple:
            os_ev.append(evidence(f"{src.root.describe()}: /{triple}", f"sys-root directory name gives the architecture {arch}"))
        os_section = {
            "id": osr.get("ID", k["id"]),
            "name": osr.get("NAME"),
            "version": osr.get("VERSION_ID"),
            "variant": variant,
            "arch": arch,
            "pretty_name": osr.get("PRETTY_NAME"),
            "build_id": osr.get("BUILD_ID"),
            "role": "os-disk",
            "evidence": os_ev,
        }

        # --- distribution ----------------------------------------------------------------------------
        bootconfig, bootconfig_ev = self._bootconfig(image, private)
        seed, seed_ev = self._setting(image, private, "seed")
        secure = active.secure_boot if active else None
        private_booted = bool(private is not None and (private.partition.attributes or {}).get("bottlerocket_booted"))
        distribution = {
            "name": k["id"],
            "role": "os-disk",
            "plan": self._plan(data_rows),
            "layout": self._layout(image, data_rows, private),
            "os_image_size_gib": self._image_size_gib(banks),
            "arch_from": triple,
            "root_fstype": src.root.fstype if src and src.root else None,
            "root_fs_size": (src.root.identity.size if src and src.root else None),
            "root_partition_size": (src.root.partition.size if src and src.root else None),
            "active_bank": active.name if active else None,
            "next_boot": {"partition": choice.partition.number if choice.partition else None, "reason": choice.reason,
                          "will_decrement_tries": choice.will_decrement_tries},
            "private_booted": private_booted,
            "private_booted_evidence": [evidence(f"{private.describe()}: GPT entry attributes",
                                                 f"bit 57 (bottlerocket_booted) {'set' if private_booted else 'clear'}: "
                                                 "signpost marks it after the first good boot")] if private else [],
            "grub_form": active.grub_form if active else None,
            "grub_default_entry": active.entry.title if active and active.entry else None,
            "secure_boot": secure,
            "kernel_cmdline": active.cmdline.text if active and active.cmdline else None,
            "lockdown": lockdown,
            "lockdown_observed": lockdown_observed,
            "data_filesystem": data_fs,
            "data_partitions": [{kk: vv for kk, vv in r.items() if kk not in ("evidence", "size", "label")} for r in data_rows],
            "data_partition_details": data_rows,
            "bootconfig": dict(bootconfig.values) if bootconfig else None,
            "bootconfig_kernel_args": bootconfig.kernel_args() if bootconfig else [],
            "bootconfig_evidence": [bootconfig_ev] if bootconfig_ev else [],
            "update_seed": seed,
            "update_seed_evidence": [seed_ev] if seed_ev else [],
            "skipped_mounts": skipped,
            "banks": {b.name: self._bank_row(b) for b in banks},
            "verity": {b.name: self._verity_row(b) for b in banks if b.table is not None},
        }
        if private_fs is not None:
            try:
                user_data = k["private"]["user_data"]
                distribution["user_data"] = private_fs.exists(user_data)
            except ImmutoolsError:
                pass
        return {
            "os": os_section,
            "mounts": table.to_report(),
            "paths": paths,
            "update": update,
            "integrity": integrity,
            "surface": surface,
            "distribution": distribution,
        }

    # ------------------------------------------------------------------------------- helpers
    def _arch(self, triple: str | None) -> str | None:
        if not triple:
            return None
        return self.k["sys_root_arches"].get(triple[: -len(self.k["sys_root_suffix"])])

    def _data_volume(self, image: DiskImage) -> tuple[Volume | None, list[dict]]:
        """The partition local.mount will get: named BOTTLEROCKET-DATA, else the one repart labels at
        first boot (preferred PARTUUID first, then the fallback on the OS disk, §5)."""
        gpt = self.k["gpt"]
        for vol in image.volumes:
            if _type(vol) == self.types["data"] and vol.label == gpt["data_label"]:
                return vol, [evidence(f"{vol.describe()}: GPT entry", f"named {gpt['data_label']}")]
        for which in ("preferred", "fallback"):
            for vol in image.volumes:
                if (vol.partition and (vol.partition.uuid or "").lower() == gpt["data_partuuids"][which]):
                    note = (f"not yet named {gpt['data_label']}: repart-data-{which}.service labels PARTUUID "
                            f"{gpt['data_partuuids'][which]} at first boot")
                    if which == "fallback":
                        note += (" only when no data disk carries the preferred PARTUUID "
                                 f"{gpt['data_partuuids']['preferred']} (split plan: the separate data image)")
                    return vol, [evidence(f"{vol.describe()}: GPT entry", note, False)]
        return None, []

    def _mount_extra(self, image, tree, data_vol, private, active) -> None:
        """DATA at /local with /var, /opt, /mnt bound from it, PRIVATE, the active BOOT at /boot."""
        from immutools.collectors.common import mount_fs

        if data_vol is not None and image.filesystem(data_vol) is not None:
            mount_fs(tree, "/local", image, data_vol)
            fs = image.filesystem(data_vol)
            for sub in ("var", "opt", "mnt"):
                try:
                    if fs.stat(f"/{sub}").is_dir:
                        mount_fs(tree, f"/{sub}", image, data_vol, subdir=f"/{sub}")
                except ImmutoolsError:
                    continue
        mount_fs(tree, "/var/lib/bottlerocket", image, private)
        if active is not None:
            mount_fs(tree, "/boot", image, active.boot)

    def _conditions(self, unit, tree) -> tuple[bool, list[dict]]:
        """ConditionPathExists= of a unit, checked against the image tree (systemd.unit(5))."""
        ok, ev = True, []
        for a in unit.assignments_of("Unit", "ConditionPathExists"):
            path = a.value.strip()
            negate = path.startswith("!")
            path = path.lstrip("!|")
            if not path.startswith("/") or path.startswith(("/dev/", "/proc/", "/sys/", "/run/")):
                continue                 # runtime state we cannot see offline
            try:
                present = tree.exists(path)
            except ImmutoolsError:
                present = False
            holds = present != negate
            ev.append(a.evidence(tree) | {"detail": f"ConditionPathExists={a.value}: {'holds' if holds else 'fails'} in the image"})
            ok = ok and holds
        return ok, ev

    def _mount_table(self, image, tree, units, bank, triple, data_vol, data_ev, data_fs, private):
        from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
        from immutools.system.units import mount_unit_name

        prefix = f"/{triple}/sys-root/usr" if triple else "/usr"
        table = MountTable()
        skipped: list[dict] = []
        handled: set[str] = set()
        cmdline = bank.cmdline if bank else None
        for item in self.k["mount_plan"]:
            if item.get("from") == "cmdline":
                entry = self._root_entry(image, bank)
                if entry is not None:
                    table.add(entry)
                continue
            if "code" in item:
                table.add(self._code_entry(item, tree, units, bank))
                continue
            where = item["where"].format(prefix=prefix)
            name = mount_unit_name(where)
            handled.add(name)
            mu = units.mount_unit(name) if units is not None else None
            if mu is None:
                continue
            en = units.enablement(name)
            if not en.enabled:
                skipped.append({"unit": name, "reason": "present but not pulled in by any target",
                                "evidence": [tree.evidence(mu.path, "mount unit", follow=False)]})
                continue
            ok, cond_ev = self._conditions(mu.unit, tree)
            if not ok:
                skipped.append({"unit": name, "reason": "ConditionPathExists fails in the image", "evidence": cond_ev})
                continue
            entry = MountEntry.from_mount_unit(mu, tree)
            entry.evidence += en.evidence(tree) + cond_ev
            if mu.what:
                found = resolve_source_match(mu.what, image, cmdline)
                if found is not None:
                    entry.volume = found.volume
                    entry.evidence.append(evidence(found.volume.describe(), found.how, found.observed))
                elif item.get("data") and data_vol is not None:
                    entry.volume = data_vol
                    entry.evidence += data_ev
                elif item.get("data"):
                    entry.evidence.append(evidence(f"{mu.what}", "no such partition in this image: the data partition "
                                                   "is on the separate data disk (split plan)", False))
                if entry.fstype in (None, "auto"):
                    vol = entry.volume
                    if vol is not None and vol.fstype not in ("zero", "unknown", "unreadable"):
                        entry.evidence.append(evidence(vol.describe(), f"Type=auto: probed as {vol.fstype}"))
                        entry.fstype = vol.fstype
                    elif item.get("data") and data_fs:
                        entry.evidence.append(tree.evidence(self.k["image_features"], f"DATA_PARTITION_FILESYSTEM={data_fs}: "
                                                            "prepare-local-fs.service makes it at first boot"))
                        entry.fstype = data_fs
            table.add(entry)
        # Mount units the plan does not know, pulled in at boot: keep them (observed).
        if units is not None:
            for mu in units.mount_units():
                if mu.name in handled or not units.enablement(mu.name).enabled:
                    continue
                entry = MountEntry.from_mount_unit(mu, tree)
                entry.evidence += units.enablement(mu.name).evidence(tree)
                table.add(entry)
        return table, skipped

    def _root_entry(self, image, bank):
        """``/`` from the command line: root=/dev/dm-0 built by dm-mod.create over ROOT + HASH (§4.4)."""
        from immutools.system.mounts import MountEntry, resolve_source_match

        if bank is None or bank.cmdline is None:
            if bank is not None and bank.root is not None:
                return MountEntry("/", bank.root.describe(), bank.root.fstype, ["ro"], integrity="dm-verity",
                                  persistence="image", observed=False, volume=bank.root,
                                  evidence=[evidence("bottlerocket.md §4.4", "root=/dev/dm-0 over ROOT+HASH (grub.cfg unreadable)", False)])
            return None
        cmdline = bank.cmdline
        rm = cmdline.root_mount()
        if rm is None:
            return None
        found = resolve_source_match(rm.what, image, cmdline)
        verity = bool(found and found.verity)
        entry = MountEntry.from_cmdline("/", rm, cmdline, integrity="dm-verity" if verity else "none",
                                        persistence="image", volume=found.volume if found else None)
        entry.fstype = rm.fstype or (found.volume.fstype if found else None)
        entry.evidence.append(cmdline.evidence("dm-mod.create", "dm-verity device root over PARTNROFF=1 (ROOT) and PARTNROFF=2 (HASH)"))
        if found is not None:
            entry.evidence.append(evidence(found.volume.describe(), found.how, found.observed))
        return entry

    def _code_entry(self, item, tree, units, bank):
        from immutools.system.mounts import MountEntry

        source = item["source"]
        volume = None
        if source == "active-boot":
            volume = bank.boot if bank else None
            source = f"PARTUUID={volume.partition.uuid}" if volume is not None and volume.partition else None
        ev = [evidence(item["ref"], item["code"], False)]
        if item.get("service") and units is not None:
            found = units.find(item["service"])
            if found is not None:
                ev.append(tree.evidence(found.path, f"{item['service']}: the unit that runs it", follow=False))
        return MountEntry(item["target"], source, item["fstype"], list(item["options"]), observed=False,
                          evidence=ev, volume=volume, persistence=item.get("persistence"))

    def _surface(self, image, tree, units, bank, lockdown, lockdown_ev, lockdown_observed) -> dict:
        from immutools.system.surface import inventory

        s = inventory(tree, bank.cmdline if bank else None, units).to_report()
        ks = self.k["surface"]
        details = dict(s.get("lockdown_details") or {})
        details.update(kernel_config_mode=s.get("lockdown"), mode=lockdown, observed=lockdown_observed,
                       decided_by="settings.kernel.lockdown (corndog writes /sys/kernel/security/lockdown at boot)",
                       evidence=list(details.get("evidence") or []) + lockdown_ev)
        s["lockdown"] = lockdown
        s["lockdown_details"] = details
        km = dict(s.get("kernel_modules") or {})
        if lockdown in ("integrity", "confidentiality"):
            km.update(signature_enforced=True, reason=f"lockdown={lockdown} (set at boot) refuses unsigned modules")
        s["kernel_modules"] = km
        s["evidence"] = list(s.get("evidence") or []) + [e for e in lockdown_ev if e not in s.get("evidence", [])]

        def present(path):
            try:
                return tree.exists(path)
            except ImmutoolsError:
                return False

        api = ks["api"]
        api_row = {"server": api["server"] if present(api["server"]) else None,
                   "client": api["client"] if present(api["client"]) else None,
                   "socket": api["socket"], "evidence": []}
        for path in (api["server"], api["client"]):
            if present(path):
                api_row["evidence"].append(tree.evidence(path, "settings API" if path == api["server"] else "API client"))
        found = units.find(api["unit"]) if units is not None else None
        if found is not None:
            api_row["evidence"].append(tree.evidence(found.path, f"{api['unit']}", follow=False))
        s["api"] = api_row
        hc = {"unit": None, "binary": ks["host_container_binary"] if present(ks["host_container_binary"]) else None,
              "containers": ks["host_containers"], "evidence": [
                  evidence("bottlerocket.md §8 (BR shared-defaults host-containers)",
                           "admin (sshd, superpowered, disabled by default) and control (enabled on AWS variants)", False)]}
        found = units.find(ks["host_container_unit"]) if units is not None else None
        if found is not None:
            hc["unit"] = ks["host_container_unit"]
            hc["evidence"].append(tree.evidence(found.path, "host container unit", follow=False))
        s["host_containers"] = hc
        s["ssh_access"] = "admin host container only (no sshd on the host)" if not s.get("sshd") else "sshd on the host"
        return s

    def _tuf_root(self, tree) -> dict | None:
        path = self.k["update"]["tuf_root"]
        try:
            if tree is None or not tree.exists(path):
                return None
            doc = json.loads(tree.read_text(path, max_bytes=_MAX_SMALL_FILE))
            signed = doc.get("signed") or {}
            roles = signed.get("roles") or {}
            return {"path": path, "version": signed.get("version"), "expires": signed.get("expires"),
                    "keys": len(signed.get("keys") or {}),
                    "root_threshold": (roles.get("root") or {}).get("threshold"),
                    "evidence": [tree.evidence(path, "TUF root updog trusts")]}
        except (ImmutoolsError, ValueError, AttributeError, TypeError) as exc:
            return {"path": path, "error": f"unreadable: {exc}", "evidence": [tree.evidence(path, "TUF root (unreadable)")]}

    def _update(self, image, tree, units, banks, active, choice, private, variant, arch) -> dict:
        ku = self.k["update"]
        ev = [evidence("GPT attribute bits of the BOOT partitions", choice.reason)]
        if tree is not None:
            for path, what in ((ku["binary"], "updog binary"), (ku["config_template"], "updog.toml template, rendered into /etc at boot"),
                               (ku["signpost"], "signpost (GPT attribute flips)")):
                try:
                    if tree.exists(path):
                        ev.append(tree.evidence(path, what))
                except ImmutoolsError:
                    pass
        template = ku["metadata_url_template"]
        url, url_ev = self._setting(image, private, "metadata_base_url")
        if not isinstance(url, str):
            url = template.format(variant=variant, arch=arch) if variant and arch else None
            url_ev = evidence("bottlerocket.md §6 (default settings.updates.metadata-base-url)",
                              f"{template} for variant {variant}, arch {arch}", False)
        ev.append(url_ev)
        targets, targets_ev = self._setting(image, private, "targets_base_url")
        if not isinstance(targets, str):
            targets = ku["targets_url"]
        lock, lock_ev = self._setting(image, private, "version_lock")
        ignore, ignore_ev = self._setting(image, private, "ignore_waves")
        seed, seed_ev = self._setting(image, private, "seed")
        waves = {"seed": seed, "seed_range": ku["seed_range"], "default_schedule": ku["default_waves"],
                 "ignore_waves": ignore if isinstance(ignore, bool) else ku["ignore_waves_default"],
                 "evidence": [e for e in (seed_ev, ignore_ev) if e] or [
                     evidence("bottlerocket.md §6 (CK waves/default-waves.toml)",
                              "seed generated at first boot (bork seed); none in this image yet", False)]}
        if isinstance(seed, int) and not isinstance(seed, bool):
            lo, hi = ku["seed_range"]
            for wave in ku["default_waves"]:
                if seed < wave["percent"] * (hi - lo + 1) / 100:
                    waves["default_wave"] = wave
                    break
        slots = []
        for b in banks:
            attrs = b.attrs()
            priority, tries, successful = attrs.get("priority"), attrs.get("tries"), attrs.get("successful")
            slots.append({
                "name": b.name,
                "partitions": [v.number for v in (b.boot, b.root, b.hash) if v is not None],
                "version": b.version,
                "build_id": (b.os_release or {}).get("BUILD_ID"),
                "active": b is active,
                "priority": priority, "tries": tries, "successful": successful,
                # signpost's own "will boot" test (§6)
                "bootable": bool((priority or 0) > 0 and (tries or 0) > 0 or successful),
            })
        return {
            "mechanism": "ab-partitions",
            "agent": ku["agent"],
            "channel": None,
            "server": url,
            "targets_url": targets,
            "metadata_url_template": template,
            "version_lock": lock if isinstance(lock, str) else ku["version_lock_default"],
            "active_slot": active.name if active else None,
            "slots": slots,
            "tuf_root": self._tuf_root(tree),
            "waves": waves,
            "api": ku["api"],
            "rollback": ku["rollback"],
            "evidence": [e for e in ev + [targets_ev, lock_ev] if e],
        }

    def _integrity(self, banks, active) -> dict:
        ev = []
        targets = []
        for b in banks:
            if b.table is None:
                continue
            t = b.table
            where = f"{b.boot.describe()}: {self.k['boot']['grub_cfg']}"
            ev.append(evidence(where, f"set {b.name}: dm-verity table ({b.grub_form} form): {t.data_blocks} data blocks, "
                                      f"hash start block {t.hash_start_block}, salt {t.salt[:16]}..., root hash {t.root_hash}"))
            if b.superblock is not None:
                ev.append(evidence(f"{b.hash_volume.describe()}: offset 0",
                                   "dm-verity superblock " + ("agrees with the table" if not b.mismatches else
                                                              "disagrees: " + "; ".join(b.mismatches))))
            data_vol = b.data_volume or b.root
            hash_vol = b.hash_volume or b.hash
            if data_vol is None or hash_vol is None:
                continue
            targets.append({
                "slot": b.name, "partition": data_vol.number, "data_offset": 0,
                "hash_partition": hash_vol.number, "hash_offset": t.hash_offset, "superblock": False,
                "root_hash": t.root_hash, "root_hash_source": f"{where} dm-mod.create",
                # the kernel maps the device from the table alone (the superblock is not read)
                "params": {"version": t.version, "algorithm": t.algorithm, "data_block_size": t.data_block_size,
                           "hash_block_size": t.hash_block_size, "data_blocks": t.data_blocks, "salt": t.salt,
                           "root_hash": t.root_hash, "hash_offset": t.hash_offset, "superblock": False},
            })
        table = active.table if active else None
        return {
            "verity": table is not None,
            "root_hash": table.root_hash if table else None,
            "hash_location": f"{active.boot.describe()}: {self.k['boot']['grub_cfg']}" if table else None,
            "verified": None,
            "evidence": ev,
            "targets": targets,
        }

    def _bank_row(self, b: Bank) -> dict:
        return {
            "boot": b.boot.number, "root": b.root.number if b.root else None, "hash": b.hash.number if b.hash else None,
            "version": b.version, "build_id": (b.os_release or {}).get("BUILD_ID"),
            "variant": (b.os_release or {}).get("VARIANT_ID"),
            "root_fstype": b.root.fstype if b.root else None,
            "attributes": b.attrs().get("raw"),
            "grub_form": b.grub_form,
            "kernel_cmdline": b.cmdline.text if b.cmdline else None,
            "evidence": [e for e in [b.os_ev] + b.grub_ev if e],
        }

    def _verity_row(self, b: Bank) -> dict:
        t = b.table
        sb = b.superblock
        return {
            "root_hash": t.root_hash, "salt": t.salt, "data_blocks": t.data_blocks,
            "data_block_size": t.data_block_size, "hash_block_size": t.hash_block_size, "algorithm": t.algorithm,
            "hash_start_block": t.hash_start_block,
            "data_partition": b.data_volume.number if b.data_volume else None,
            "hash_partition": b.hash_volume.number if b.hash_volume else None,
            "data_device": (t.table or {}).get("data_device"), "hash_device": (t.table or {}).get("hash_device"),
            "options": (t.table or {}).get("options"),
            "superblock": ({"version": sb.version, "algorithm": sb.algorithm, "data_blocks": sb.data_blocks,
                            "salt": sb.salt, "uuid": sb.uuid} if sb is not None else None),
            "superblock_error": b.superblock_error,
            "superblock_agrees": (sb is not None and not b.mismatches) if b.hash_volume is not None else None,
            "mismatches": list(b.mismatches),
        }

    def _plan(self, data_rows: list[dict]) -> str:
        """unified: DATA-A with the preferred PARTUUID (or any pre-1.13 data partition) on the OS disk (§2.1, §2.7)."""
        if any(r["which"] == "preferred" for r in data_rows):
            return "unified"
        if any(r["which"] == "fallback" for r in data_rows):
            return "split"
        return "unified" if data_rows else "split"

    def _layout(self, image: DiskImage, data_rows: list[dict], private: Volume | None) -> str:
        """Layout era (§2.7): current (v1.13+, fixed DATA PARTUUIDs), pre-1.13 (EFI-SYSTEM + EFI-BACKUP,
        no fixed DATA), pre-1.3 (no EFI-BACKUP)."""
        if any(r["which"] in ("preferred", "fallback") for r in data_rows):
            return "current"
        if any(_type(v) == self.types["efi_backup"] for v in image.volumes):
            return "pre-1.13"
        return "pre-1.3"

    def _image_size_gib(self, banks: list[Bank]) -> int | None:
        """G from BOOT = 20 x G MiB (§2.3)."""
        if not banks:
            return None
        mib = banks[0].boot.partition.size // (1024 * 1024)
        per = self.k["gpt"]["boot_mib_per_gib"]
        return mib // per if mib and mib % per == 0 else None
