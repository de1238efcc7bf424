"""Google Container-Optimized OS: a ChromiumOS-style disk with A/B kernel + rootfs pairs.

KERN-A/ROOT-A and KERN-B/ROOT-B are chosen by the GPT priority/tries/successful bits on the kernel
partitions (the same rule as GRUB's gptprio); GRUB on partition 12 reads the priorities and boots
the matching "verified image" entry, whose command line builds the dm-verity root device. The
root filesystem is read-only; ``/etc`` is a tmpfs; ``/home`` and ``/var`` come from the stateful
partition (noexec). Facts: ``data/distributions/cos.yaml`` (upstream sources cited there); the
runtime mounts are documented behaviour (``observed: false``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.fs.pe import kernel_info
from immutools.fs.verity import read_superblock
from immutools.report.model import Findings, Integrity, OsIdentity, Update, UpdateSlot, evidence
from immutools.system.compose import arch_from_tree, finish, mount_fs, os_release_of, read_key_values
from immutools.system.grubcfg import parse_grub_cfg
from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet
from immutools.volumes.gptprio import gptprio_next

_SLOTS = ("A", "B")


@dataclass
class Boot:
    """The slot the priorities pick, each slot's os-release, and what GRUB on the ESP boots."""

    slots: dict                                   # slot -> (kernel volume, root volume)
    os: dict                                      # slot -> (os-release, evidence)
    choice: object                                # GptPrioChoice
    active: str | None
    esp: Volume | None
    grub: object | None = None
    entries: dict = field(default_factory=dict)   # slot -> its verified GrubEntry
    default: object | None = None                 # the default GrubEntry
    cmdline: object | None = None

    @property
    def active_os(self) -> dict:
        return (self.os[self.active][0] if self.active else None) or {}


class CosCollector(Collector):
    name = "cos"
    distribution = "cos"

    def _slot_vols(self, image: DiskImage, slot: str):
        gpt = self.knowledge["gpt"]
        spec = gpt["slots"][slot]
        kern = image.volume(number=spec["kernel"])
        root = image.volume(number=spec["root"])
        if kern is None or kern.partition is None or kern.partition.type_guid != gpt["kernel_type"]:
            kern = image.volume(label=spec["kernel_label"])
        if root is None or root.partition is None or root.partition.type_guid != gpt["rootfs_type"]:
            root = image.volume(label=spec["root_label"])
        return kern, root

    def detect(self, image: DiskImage) -> Detection:
        gpt = self.knowledge["gpt"]
        hits, ev = [], []
        kern_a, root_a = self._slot_vols(image, "A")
        spec_a = gpt["slots"]["A"]
        if kern_a is not None and root_a is not None and kern_a.label == spec_a["kernel_label"] and root_a.label == spec_a["root_label"]:
            hits.append("kern_root_labels")
            ev.append(evidence(f"{kern_a.describe()} / {root_a.describe()}: GPT entries", f"{kern_a.label} / {root_a.label}"))
        types = {(v.partition.type_guid if v.partition else None) for v in image.volumes}
        if gpt["kernel_type"] in types and gpt["rootfs_type"] in types:
            hits.append("chromeos_types")
        if image.volume(label=gpt["labels"]["state"]) is not None and image.volume(label=gpt["labels"]["oem"]) is not None:
            hits.append("state_oem_labels")
        if not hits:
            return Detection(self.name, 0.0)
        for slot in _SLOTS:
            parsed, where = os_release_of(image, self._slot_vols(image, slot)[1], self.knowledge["os_release_paths"])
            if parsed and parsed.get("ID") == "cos":
                hits.append("os_release_id")
                ev.append(where | {"detail": "os-release ID=cos"})
                break
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev)

    # ------------------------------------------------------------------------------- gather
    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        boot = self._boot(image)
        findings.integrity = self._integrity(image, boot)
        tree, state, oem = self._tree(image, boot)
        units = UnitSet(tree)
        findings.os = self._os(boot, tree)
        table = self._mount_table(image, boot, state, oem, findings)
        finish(image, findings, self.knowledge, table, tree, units=units, cmdline=boot.cmdline,
               documented_mounts=[], resolve=lambda p: p)
        findings.update = self._update(boot, tree, units)
        findings.distribution = self._distribution(image, boot, tree)

    def _boot(self, image: DiskImage) -> Boot:
        gpt = self.knowledge["gpt"]
        slots = {s: self._slot_vols(image, s) for s in _SLOTS}
        choice = gptprio_next([v.partition for v in image.volumes if v.partition], gpt["kernel_type"])
        active = next((s for s, (kern, _root) in slots.items() if kern is not None and choice.partition is not None
                       and kern.number == choice.partition.number), None)
        esp = image.volume(label=gpt["labels"]["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        boot = Boot(slots, {s: os_release_of(image, slots[s][1], self.knowledge["os_release_paths"]) for s in slots},
                    choice, active, esp)
        boot.grub, boot.entries, boot.default = self._grub(image, esp, slots)
        if boot.default is not None:
            boot.cmdline = boot.default.kernel_cmdline(f"{esp.describe()}: {self.knowledge['esp']['grub_cfg']}")
        return boot

    def _integrity(self, image: DiskImage, boot: Boot) -> Integrity:
        """Each slot's verified entry carries its dm-verity table (dm-mod.create)."""
        where = f"{boot.esp.describe()}: {self.knowledge['esp']['grub_cfg']}" if boot.esp is not None else None
        targets = []
        for s, entry in boot.entries.items():
            for dev in entry.kernel_cmdline(where).dm_devices():
                for table in dev.tables:
                    if table.verity is not None:
                        targets.append(self._target(s, boot.slots[s][1], table.verity))
        active = next((t for t in targets if t["slot"] == boot.active), None)
        cmdline = boot.cmdline
        return Integrity(
            verity=bool(targets), root_hash=active["root_hash"] if active else None,
            hash_location=f"ESP {self.knowledge['esp']['grub_cfg']} menuentry {boot.default.title!r} dm-mod.create"
            if boot.default is not None and active else None,
            evidence=[cmdline.evidence("dm-mod.create")] if cmdline is not None and cmdline.has("dm-mod.create") else [],
            targets=targets)

    def _tree(self, image: DiskImage, boot: Boot):
        labels = self.knowledge["gpt"]["labels"]
        root_vol = boot.slots[boot.active][1] if boot.active else None
        state, oem = image.volume(label=labels["state"]), image.volume(label=labels["oem"])
        tree = OsTree(image.limits)
        mount_fs(tree, "/", image, root_vol)
        for m in self.knowledge["mounts"]["partitions"]:
            mount_fs(tree, m["target"], image, state if m["role"] == "state" else oem)
        state_fs = image.filesystem(state) if state is not None else None
        for sub in self.knowledge["mounts"]["state_binds"]:
            if state_fs is not None and state_fs.exists("/" + sub):
                mount_fs(tree, "/" + sub, image, state, subdir="/" + sub)
        return tree, state, oem

    def _os(self, boot: Boot, tree: OsTree) -> OsIdentity:
        active_os = boot.active_os
        ident = OsIdentity.from_os_release(active_os, boot.os[boot.active][1] if boot.active else None)
        ident.name, ident.variant, ident.version = active_os.get("NAME"), None, active_os.get("VERSION_ID")
        ident.arch, arch_ev = arch_from_tree(tree)
        ident.add_evidence(arch_ev)
        return ident

    def _mount_table(self, image: DiskImage, boot: Boot, state, oem, findings: Findings) -> MountTable:
        ref = self.knowledge["mounts_source"]
        table = MountTable()
        cmdline = boot.cmdline
        rm = cmdline.root_mount() if cmdline is not None else None
        if rm is not None:
            src = resolve_source_match(rm.what, image, cmdline)
            entry = MountEntry.from_cmdline("/", rm, cmdline, volume=src.volume if src else None,
                                            integrity="dm-verity" if src is not None and src.verity else "none",
                                            persistence="image")
            entry.fstype = rm.fstype or (src.volume.fstype if src else None)
            if src is not None:
                entry.evidence.append(evidence(src.volume.describe(), src.how, src.observed))
            table.add(entry)
        else:
            findings.explain("mount /", "no default GRUB entry with a root= command line on the ESP")
        root_vol = boot.slots[boot.active][1] if boot.active else None
        if table.get("/") is None and root_vol is not None:
            table.add(MountEntry("/", root_vol.describe(), root_vol.fstype, ["ro"], integrity="dm-verity", persistence="image",
                                 observed=False, volume=root_vol,
                                 evidence=[evidence(ref, "root is read-only, dm-verity checked", False)]))
        for m in self.knowledge["mounts"]["runtime"]:
            vol = {"state": state, "oem": oem}.get(m.get("role"))
            ev = [evidence(ref, "set up by the OS at boot", False)]
            if vol is not None:
                ev.insert(0, evidence(vol.describe(), f"GPT partition name {vol.label}"))
            table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m["options"]), observed=False, volume=vol, evidence=ev))
        return table

    def _update(self, boot: Boot, tree: OsTree, units: UnitSet) -> Update:
        ku = self.knowledge["update"]
        lsb = read_key_values(tree, ku["lsb_release"]) or {}
        ev = [evidence("GPT attribute bits of KERN-A/KERN-B", boot.choice.reason)]
        unit = units.find(ku["unit"])
        if unit is not None:
            ev.append(tree.evidence(unit.path, "update_engine unit", follow=False))
        slots = []
        for s, (kern, root) in boot.slots.items():
            slots.append(UpdateSlot.from_attributes(
                s, [v.number for v in (kern, root) if v is not None],
                kern.partition.attributes if kern is not None and kern.partition else None,
                (boot.os[s][0] or {}).get("BUILD_ID"), s == boot.active))
        return Update(mechanism="ab-partitions", agent=ku["agent"], channel=lsb.get(ku["track_key"]),
                      active_slot=boot.active, slots=slots, rollback=ku["rollback"], evidence=ev)

    def _distribution(self, image: DiskImage, boot: Boot, tree: OsTree) -> dict:
        kernel = None
        default = boot.default
        if default is not None and default.kernel_path and boot.esp is not None:
            try:
                kernel = kernel_info(image.filesystem(boot.esp).open_source(default.kernel_path)).version
            except ImmutoolsError as exc:
                image.warn(f"{boot.esp.describe()}: {default.kernel_path}: {exc}")
        lsb = read_key_values(tree, self.knowledge["update"]["lsb_release"]) or {}
        cmdline = boot.cmdline
        return {
            "name": "cos",
            "milestone": boot.active_os.get("VERSION_ID"),
            "grub_default_entry": default.title if default else None,
            "grub_entries": [e.title for e in (boot.grub.entries if boot.grub else [])],
            "cros_efi": bool(cmdline is not None and cmdline.has(self.knowledge["esp"]["efi_marker"])),
            "kernel": kernel,
            "kernel_cmdline": cmdline.text if cmdline else None,
            "release_track": lsb.get(self.knowledge["update"]["track_key"]),
            "slot_builds": {s: (boot.os[s][0] or {}).get("BUILD_ID") for s in boot.slots},
        }

    def _grub(self, image: DiskImage, esp, slots):
        """Interpret the ESP grub.cfg with GRUB's view of the kernel priorities (what ``gptpriority``
        returns) seeded as variables; return the config, each slot's verified entry and the default."""
        fs = image.filesystem(esp) if esp is not None else None
        path = self.knowledge["esp"]["grub_cfg"]
        if fs is None:
            return None, {}, None
        try:
            if not fs.exists(path):
                return None, {}, None
            text = fs.read_text(path, max_bytes=1 << 20)
        except ImmutoolsError as exc:
            image.warn(f"{esp.describe()}: {path}: {exc}")
            return None, {}, None
        env = {"grub_platform": "efi", "grubdisk": "hd0"}
        for s, (kern, _root) in slots.items():
            attrs = (kern.partition.attributes if kern is not None and kern.partition else {}) or {}
            env[f"prio{s}"] = str(attrs.get("priority") or 0)
        try:
            cfg = parse_grub_cfg(text, env=env)
        except ImmutoolsError as exc:
            image.warn(f"{esp.describe()}: {path}: {exc}")
            return None, {}, None
        for warning in getattr(cfg, "warnings", []):
            image.warn(f"{esp.describe()}: {path}: {warning}")
        entries = {}
        for e in cfg.entries:
            for s in slots:
                if e.title == self.knowledge["esp"]["verified_entry"].format(slot=s):
                    entries[s] = e
        return cfg, entries, cfg.default_entry()

    def _target(self, slot: str, root_vol, params) -> dict:
        """The verity target of a slot: data and hash tree share the ROOT partition; the table's
        hash start points past the superblock veritysetup wrote (when there is one)."""
        hash_start = params.hash_offset
        row = {"slot": slot, "partition": root_vol.number if root_vol else None, "data_offset": 0,
               "hash_partition": root_vol.number if root_vol else None, "root_hash": params.root_hash,
               "root_hash_source": f"grub.cfg '{self.knowledge['esp']['verified_entry'].format(slot=slot)}' dm-mod.create"}
        # The kernel maps the device from the dm-mod.create table alone; a superblock veritysetup
        # wrote before the tree is reported (and cross-checked by verify), never used instead.
        sb_at = hash_start - params.hash_block_size
        try:
            sb = read_superblock(root_vol.source, sb_at) if root_vol is not None and sb_at >= 0 else None
        except ImmutoolsError:
            sb = None
        row.update(hash_offset=hash_start, superblock=sb is not None,
                   params={"version": params.version, "algorithm": params.algorithm,
                           "data_block_size": params.data_block_size, "hash_block_size": params.hash_block_size,
                           "data_blocks": params.data_blocks, "salt": params.salt, "hash_offset": hash_start,
                           "superblock": False})
        return row
