"""Flatcar Container Linux: read-only, verity-protected ``/usr`` in A/B partitions; ``/``, ``/etc``
(an overlay in 3535-4627, a confext merge since 4628), ``/var`` writable on ROOT; update_engine
flips the slots.

Facts come from ``data/distributions/flatcar.yaml`` (upstream sources cited there). What the image
shows is read: GPT bits, grub.cfg (GRUB's own rules, ``immutools.system.grubcfg``), the kernel's
embedded root hash, the verity superblock, os-release, update.conf, units. What Flatcar sets up in
code (the /etc overlay in the initrd, API filesystems) is added from the documented behaviour,
marked ``observed: false``. When the boot configuration cannot be evaluated, ``/`` and ``/usr``
fall back to the documented defaults (``guarantees`` in the data file), inferred, with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.fs.pe import kernel_info
from immutools.fs.verity import read_superblock
from immutools.report.model import Findings, Integrity, OsIdentity, Update, UpdateSlot, evidence
from immutools.system.cmdline import KernelCmdline
from immutools.system.compose import (
    add_enabled_mount_units, detect_arch, existing_resolver, finish, first_key, mount_fs, os_release_of,
    read_key_values,
)
from immutools.system.grubcfg import grub_cfg_from_tar, parse_grub_cfg
from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet
from immutools.volumes.gptprio import gptprio_next

_HEX64 = re.compile(rb"^[0-9a-f]{64}$")
_SLOTS = ("A", "B")
# The OEM hook of flatcar/scripts build_library/grub.cfg: `search --set oem --part-label OEM`, then
# `source "($oem)/grub.cfg"` (it may set oem_id, linux_append, linux_console) unless Secure Boot is on.
_OEM_GRUB_CFG = "/grub.cfg"
_GRUB_DEVICE = re.compile(r"hd\d+,(?:gpt|msdos)?(\d+)")


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return None


@dataclass
class Layout:
    """The partitions a Flatcar disk is made of (any may be missing on a damaged image)."""

    usr: dict[str, Volume | None]
    esp: Volume | None
    root: Volume | None
    oem: Volume | None


@dataclass
class Boot:
    """What the ESP says about the next boot: the slot GRUB picks, its kernel, the command line."""

    active: str | None = None
    choice: object | None = None                    # GptPrioChoice
    slot_os: dict[str, dict | None] = field(default_factory=dict)
    slot_os_evidence: dict[str, dict | None] = field(default_factory=dict)
    arch: str | None = None
    board: str | None = None
    arch_evidence: dict | None = None
    root_hashes: dict[str, str] = field(default_factory=dict)   # slot -> hash from its kernel
    hash_evidence: dict | None = None
    kernel_version: str | None = None
    first_boot: str | None = None
    grub: object | None = None                      # GrubConfig
    entry: object | None = None                     # its default GrubEntry
    cmdline: KernelCmdline | None = None
    cmdline_problem: str | None = None              # why there is no command line
    oem_grub_cfg: dict | None = None                # the OEM partition's grub.cfg: where, and whether it was sourced

    @property
    def active_os(self) -> dict:
        return (self.slot_os.get(self.active) if self.active else None) or {}


class FlatcarCollector(Collector):
    name = "flatcar"
    distribution = "flatcar"

    # ------------------------------------------------------------------------------- detect
    def _slot_volume(self, image: DiskImage, slot: str) -> Volume | None:
        gpt = self.knowledge["gpt"]
        spec = gpt["slots"][slot]
        vol = image.volume(number=spec["number"])
        if vol is not None and vol.partition is not None and (vol.partition.type_guid or "") == gpt["usr_type"]:
            return vol
        # A re-partitioned disk may have moved it: fall back to the label.
        vol = image.volume(label=spec["label"])
        return vol if vol is not None and vol.partition and vol.partition.type_guid == gpt["usr_type"] else None

    def detect(self, image: DiskImage) -> Detection:
        gpt = self.knowledge["gpt"]
        hits, ev = [], []
        usr_a, usr_b = self._slot_volume(image, "A"), self._slot_volume(image, "B")
        if usr_a is not None and usr_a.label == gpt["slots"]["A"]["label"]:
            hits.append("usr_a_label_and_type")
            ev.append(evidence(f"{usr_a.describe()}: GPT entry", f"label USR-A, type {gpt['usr_type']} (Flatcar USR)"))
        if usr_a is not None and (usr_a.partition.uuid or "") == gpt["slots"]["A"]["uuid"]:
            hits.append("usr_a_fixed_uuid")
            ev.append(evidence(f"{usr_a.describe()}: GPT entry", f"fixed USR-A partition GUID {gpt['slots']['A']['uuid']}"))
        if usr_b is not None and (usr_b.partition.uuid or "") == gpt["slots"]["B"]["uuid"]:
            hits.append("usr_b_fixed_uuid")
            ev.append(evidence(f"{usr_b.describe()}: GPT entry", f"fixed USR-B partition GUID {gpt['slots']['B']['uuid']}"))
        if any(v.partition and v.partition.type_guid == gpt["root_type"] for v in image.volumes):
            hits.append("root_resize_type")
        if any(v.partition and v.partition.type_guid == gpt["reserved_type"] for v in image.volumes):
            hits.append("oem_config_type")
        if not hits:
            return Detection(self.name, 0.0)
        usr = {"A": usr_a, "B": usr_b}
        for slot in _SLOTS:
            parsed, where = os_release_of(image, usr[slot], self.knowledge["os_release_paths"])
            if parsed and parsed.get("ID") == "flatcar":
                hits.append("os_release_id")
                ev.append(where | {"detail": "os-release ID=flatcar"})
                break
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev, {"usr": usr})

    # ------------------------------------------------------------------------------- gather
    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        layout = self._layout(image, detection)
        boot = self._boot(image, layout)
        findings.os = self._os(boot)
        verity = self._verity_slots(image, layout, boot)
        findings.integrity = self._integrity(layout, boot, verity)

        tree = OsTree(image.limits)
        if not mount_fs(tree, "/", image, layout.root):
            image.warn("Flatcar ROOT partition not readable: paths on / are inferred only")
        mount_fs(tree, "/usr", image, layout.usr.get(boot.active) if boot.active else None)
        units = UnitSet(tree)
        oem_target = self._oem_target(units)
        mount_fs(tree, oem_target, image, layout.oem)
        mount_fs(tree, "/boot", image, layout.esp)
        etc_era, etc_evidence = self._etc_era(tree, findings.os.version)

        table = self._mounts(image, findings, layout, boot, tree, units, etc_era, etc_evidence)
        finish(image, findings, self.knowledge, table, tree, units=units, cmdline=boot.cmdline,
               resolve=existing_resolver(tree),
               default_volumes={"/": layout.root, "/usr": layout.usr.get(boot.active) if boot.active else None})
        findings.update = self._update(layout, boot, tree, units)
        findings.distribution = self._distribution(image, layout, boot, tree, findings, verity, etc_era, oem_target)

    # ------------------------------------------------------------------------------- pieces
    def _layout(self, image: DiskImage, detection: Detection) -> Layout:
        labels = self.knowledge["gpt"]["labels"]
        usr = detection.facts.get("usr") or {s: self._slot_volume(image, s) for s in _SLOTS}
        esp = image.volume(label=labels["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        root = image.volume(label=labels["root"]) or next(
            (v for v in image.volumes if v.partition and v.partition.type_guid == self.knowledge["gpt"]["root_type"]), None)
        return Layout(usr, esp, root, image.volume(label=labels["oem"]))

    def _boot(self, image: DiskImage, layout: Layout) -> Boot:
        """The active slot by GRUB's gptprio rule, its os-release, kernel and command line."""
        k, gpt = self.knowledge, self.knowledge["gpt"]
        boot = Boot()
        for slot in _SLOTS:
            boot.slot_os[slot], boot.slot_os_evidence[slot] = os_release_of(image, layout.usr[slot], k["os_release_paths"])
        boot.choice = gptprio_next([v.partition for v in image.volumes if v.partition], gpt["usr_type"])
        chosen = boot.choice.partition
        boot.active = next((s for s in _SLOTS if layout.usr[s] is not None and chosen is not None
                            and layout.usr[s].number == chosen.number), None)
        boot.board = boot.active_os.get("FLATCAR_BOARD") or next(
            (osr.get("FLATCAR_BOARD") for osr in boot.slot_os.values() if osr), None)
        boot.arch = k["board_arch"].get(boot.board)
        if boot.arch is not None and boot.active:
            boot.arch_evidence = boot.slot_os_evidence[boot.active]
        if boot.arch is None:
            active_vol = layout.usr.get(boot.active) if boot.active else None
            boot.arch, boot.arch_evidence = detect_arch(image, [v for v in (active_vol,) if v is not None])

        esp_fs = image.filesystem(layout.esp) if layout.esp is not None else None
        if esp_fs is None:
            boot.cmdline_problem = "the ESP is missing or unreadable"
            return boot
        offset = k["verity"]["roothash_offset_in_kernel"].get(boot.arch)
        for slot in _SLOTS:
            path = "/" + gpt["slots"][slot]["kernel"]
            try:
                if offset is None or not esp_fs.exists(path):
                    continue
                raw = esp_fs.read(path, offset, 64)
                if _HEX64.match(raw):
                    boot.root_hashes[slot] = raw.decode()
                if slot == boot.active:
                    if slot in boot.root_hashes:
                        boot.hash_evidence = evidence(f"{layout.esp.describe()}: {path}",
                                                      f"64 hex characters at offset {offset} (GRUB appends verity.usrhash=)")
                    boot.kernel_version = kernel_info(esp_fs.open_source(path)).version
            except ImmutoolsError as exc:
                image.warn(f"{layout.esp.describe()}: {path}: {exc}")
        boot.first_boot = next((f for f in k["esp"]["first_boot_flags"] if esp_fs.exists("/" + f)), None)
        self._grub(image, layout, esp_fs, boot)
        return boot

    def _grub(self, image: DiskImage, layout: Layout, esp_fs, boot: Boot) -> None:
        """The default entry's kernel command line, as GRUB builds it from grub.cfg.tar."""
        tar_path = "/" + self.knowledge["esp"]["grub_cfg_tar"]
        where = f"{layout.esp.describe()}: {tar_path}"
        try:
            if not esp_fs.exists(tar_path):
                boot.cmdline_problem = f"{where} not found"
                return
            text = grub_cfg_from_tar(esp_fs.read(tar_path))
        except ImmutoolsError as exc:
            boot.cmdline_problem = f"{where}: {exc}"
            return
        if not text:
            boot.cmdline_problem = f"{where} holds no grub.cfg"
            return
        env = {"grub_platform": "efi", "grub_cpu": self.knowledge["grub_cpu"].get(boot.arch, "")}
        if boot.choice.partition is not None:
            env["usr_uuid"] = boot.choice.partition.uuid
            env["usr_device"] = f"hd0,gpt{boot.choice.partition.number}"
        # What GRUB knows at run time: $root is the ESP (load.cfg: search.fs_uuid <ESP serial> root),
        # $oem the partition labelled OEM (the template's `search --set oem --part-label OEM`).
        if layout.esp is not None:
            env["root"] = f"hd0,gpt{layout.esp.number}"
        if layout.oem is not None:
            env["oem"] = f"hd0,gpt{layout.oem.number}"

        def locate(path):
            """(filesystem, path inside it) for a GRUB path: ``(hd0,gptN)/x`` on partition N,
            a bare path on the ESP ($root); None when the device is not known."""
            fs, inner = esp_fs, path
            if path.startswith("("):
                device, _, inner = path[1:].partition(")")
                m = _GRUB_DEVICE.fullmatch(device)
                vol = image.volume(number=int(m.group(1))) if m else None
                fs = image.filesystem(vol) if vol is not None else None
            return (fs, inner or "/") if fs is not None and "$" not in inner else None

        def file_exists(op, path):
            found = locate(path)
            try:
                return None if found is None else found[0].exists(found[1])
            except ImmutoolsError:
                return None

        def loader(path):
            found = locate(path)
            try:
                return None if found is None else found[0].read_text(found[1], max_bytes=1024 * 1024)
            except ImmutoolsError:
                return None

        try:
            boot.grub = parse_grub_cfg(text, env=env, loader=loader, file_exists=file_exists)
        except ImmutoolsError as exc:
            boot.cmdline_problem = f"{where}: grub.cfg: {exc}"
            return
        for warning in getattr(boot.grub, "warnings", []):
            image.warn(f"{where}: {warning}")
        self._check_oem_grub_cfg(image, layout, boot)
        boot.entry = boot.grub.default_entry()
        if boot.entry is None:
            boot.cmdline_problem = f"{where}: grub.cfg has no default menu entry GRUB would boot"
            return
        words = list(boot.entry.cmdline_words)
        if not words:
            boot.cmdline_problem = (f"{where}: the default entry {boot.entry.title!r} runs no linux command "
                                    "the interpreter could evaluate")
            return
        if boot.active in boot.root_hashes:
            # The patched GRUB appends the hash it read from the kernel image (flatcar/scripts
            # sdk_container/.../sys-boot/grub/files/grub-2.12-add-verity-hash.patch).
            words.append(f"verity.usrhash={boot.root_hashes[boot.active]}")
        origin = f"{where} grub.cfg, menuentry {boot.entry.title!r}"
        boot.cmdline = KernelCmdline.from_words(words, origin, observed=not boot.entry.unresolved)

    def _check_oem_grub_cfg(self, image: DiskImage, layout: Layout, boot: Boot) -> None:
        """An OEM partition with a grub.cfg that the evaluation did not source: its settings
        (oem_id, linux_append, linux_console) are missing from the command line -- say so."""
        oem_fs = image.filesystem(layout.oem) if layout.oem is not None else None
        try:
            present = oem_fs is not None and oem_fs.exists(_OEM_GRUB_CFG)
        except ImmutoolsError:
            present = False
        if not present:
            return
        sourced = [p for p in getattr(boot.grub, "sourced", []) if p.split(")", 1)[-1] == _OEM_GRUB_CFG]
        boot.oem_grub_cfg = {"path": f"{layout.oem.describe()}: {_OEM_GRUB_CFG}", "sourced": bool(sourced)}
        if not sourced:
            image.warn(f"{layout.oem.describe()}: {_OEM_GRUB_CFG} was not evaluated (the ESP grub.cfg sources it "
                       "at boot unless Secure Boot is on): the OEM's oem_id, linux_append and linux_console are "
                       "missing from the kernel command line")

    def _os(self, boot: Boot) -> OsIdentity:
        active_os = boot.active_os
        ident = OsIdentity.from_os_release(active_os, boot.slot_os_evidence.get(boot.active) if boot.active else None)
        ident.id = active_os.get("ID", "flatcar")
        ident.name = active_os.get("NAME")
        ident.variant = None
        ident.arch = boot.arch
        ident.add_evidence(boot.arch_evidence)
        return ident

    def _verity_slots(self, image: DiskImage, layout: Layout, boot: Boot) -> dict[str, dict]:
        """The dm-verity superblock at the fixed hash offset of each USR partition."""
        hash_offset = self.knowledge["verity"]["hash_offset"]
        out = {}
        for slot in _SLOTS:
            vol = layout.usr[slot]
            if vol is None or vol.fstype in ("zero", "unreadable"):
                continue
            try:
                params = read_superblock(vol.source, hash_offset)
            except ImmutoolsError as exc:
                image.warn(f"{vol.describe()}: verity superblock: {exc}")
                continue
            if params is None:
                continue
            out[slot] = {
                "hash_offset": hash_offset, "data_blocks": params.data_blocks,
                "data_block_size": params.data_block_size, "hash_block_size": params.hash_block_size,
                "algorithm": params.algorithm, "salt": params.salt,
                "evidence": [evidence(f"{vol.describe()}: offset {hash_offset}", "dm-verity superblock")],
            }
            if slot in boot.root_hashes:
                out[slot]["root_hash"] = boot.root_hashes[slot]
        return out

    def _integrity(self, layout: Layout, boot: Boot, verity: dict[str, dict]) -> Integrity:
        gpt = self.knowledge["gpt"]
        root_hash = boot.root_hashes.get(boot.active) if boot.active else None
        offset = self.knowledge["verity"]["roothash_offset_in_kernel"].get(boot.arch)
        targets = [{
            "slot": slot, "partition": layout.usr[slot].number, "data_offset": 0,
            "hash_partition": layout.usr[slot].number, "hash_offset": info["hash_offset"], "superblock": True,
            "root_hash": info.get("root_hash"), "root_hash_source": f"ESP {gpt['slots'][slot]['kernel']}",
        } for slot, info in verity.items()]
        return Integrity(
            verity=bool(boot.cmdline and boot.cmdline.usr_verity()) or bool(verity),
            root_hash=root_hash,
            hash_location=f"ESP {gpt['slots'][boot.active]['kernel']} offset {offset}" if root_hash else None,
            evidence=[e for e in (boot.hash_evidence,) if e] + [ev for s in verity.values() for ev in s["evidence"]],
            targets=targets,
        )

    def _oem_target(self, units: UnitSet) -> str:
        """OEM on /oem (its ``oem.mount``), or on /usr/share/oem in releases that shipped
        ``usr-share-oem.mount``."""
        for unit, target in self.knowledge["oem_mount_units"].items():
            if units.find(unit):
                return target
        return self.knowledge["oem_mount_units"]["oem.mount"]

    def _etc_era(self, tree: OsTree, version: str | None) -> tuple[str, list[dict]]:
        eras = self.knowledge["etc_eras"]
        confext = next(e for e in eras if e["era"] == "confext")
        overlay = next(e for e in eras if e["era"] == "overlay")
        if tree.exists(confext["image"]):
            return "confext", [tree.evidence(confext["image"], "default confext image present")]
        if tree.exists(overlay["lower"]):
            return "overlay", [tree.evidence(overlay["lower"], "overlay lower directory present")]
        major = _major(version)
        for era in eras:
            if major is not None and era.get("from_major", 0) <= major <= era.get("until_major", 10**9):
                return era["era"], [evidence(era["source"], f"by release number {version}", False)]
        return "plain", []

    def _cmdline_mount(self, image: DiskImage, boot: Boot, target: str) -> MountEntry | None:
        cmdline = boot.cmdline
        mount = cmdline.root_mount() if target == "/" else cmdline.usr_mount()
        if mount is None:
            return None
        src = resolve_source_match(mount.what, image, cmdline)
        if target == "/usr":
            entry = MountEntry.from_cmdline("/usr", mount, cmdline, persistence="image",
                                            integrity="dm-verity" if cmdline.usr_verity() else "none",
                                            volume=src.volume if src else None)
        else:
            entry = MountEntry.from_cmdline("/", mount, cmdline, volume=src.volume if src else None)
        entry.fstype = mount.fstype or (src.volume.fstype if src else None)
        if src is not None:
            entry.evidence.append(evidence(src.volume.describe(), src.how, src.observed))
        return entry

    def _mounts(self, image: DiskImage, findings: Findings, layout: Layout, boot: Boot, tree: OsTree,
                units: UnitSet, etc_era: str, etc_evidence: list[dict]) -> MountTable:
        """The mounts in mount order: / and /usr from the command line, /etc by era, then the
        enabled mount units (finish adds the API filesystems and any documented fallback)."""
        table = MountTable()
        for target in ("/", "/usr"):
            entry = self._cmdline_mount(image, boot, target) if boot.cmdline is not None else None
            if entry is not None:
                table.add(entry)
            else:
                problem = boot.cmdline_problem or f"the kernel command line names no {target} mount"
                findings.explain(f"mount {target}", f"the boot configuration could not be evaluated: {problem}")
        era = next((e for e in self.knowledge["etc_eras"] if e["era"] == etc_era), None)
        if etc_era == "overlay":
            table.add(MountEntry("/etc", "overlay", "overlay", list(era["options"]), lower=[era["lower"]],
                                 upper=era["upper"], work=era["work"], observed=False,
                                 evidence=[evidence(era["source"], "overlay set up by the initrd", False)] + etc_evidence))
        elif etc_era == "confext":
            table.add(MountEntry("/etc", era["image"], "overlay", ["upperdir=/etc"], upper="/etc", lower=[era["image"]],
                                 observed=False,
                                 evidence=[evidence(era["source"], "systemd-confext merge, mutable", False)] + etc_evidence))
        add_enabled_mount_units(table, units, tree, image, boot.cmdline)
        return table

    def _update(self, layout: Layout, boot: Boot, tree: OsTree, units: UnitSet) -> Update:
        ku = self.knowledge["update"]
        conf_sources = [(read_key_values(tree, p), p) for p in ku["config_files"]]
        group, group_where = first_key(conf_sources, "GROUP")
        server, server_where = first_key(conf_sources, "SERVER")
        ev = []
        if group_where:
            ev.append(tree.evidence(group_where, "GROUP (channel), first match wins"))
        if server_where:
            ev.append(tree.evidence(server_where, "SERVER"))
        else:
            server = ku["default_server"]
            ev.append(evidence(ku["defaults_source"], "default server", False))
        if group is None:
            group = ku["default_group"]
            ev.append(evidence(ku["defaults_source"], "default channel when none is configured", False))
        agent_unit = units.find(ku["unit"])
        if agent_unit is not None:
            ev.append(tree.evidence(agent_unit.path, "update_engine unit", follow=False))
        ev.append(evidence("GPT attribute bits of USR-A/USR-B", boot.choice.reason))
        slots = []
        for slot in _SLOTS:
            vol = layout.usr[slot]
            slots.append(UpdateSlot.from_attributes(
                slot, [vol.number] if vol is not None else [],
                vol.partition.attributes if vol is not None and vol.partition else None,
                (boot.slot_os.get(slot) or {}).get("VERSION_ID"), slot == boot.active))
        return Update(mechanism="ab-partitions", agent=ku["agent"], channel=group, server=server,
                      active_slot=boot.active, slots=slots, rollback=ku["rollback"], evidence=ev,
                      extra={"reboot_manager": ku["reboot_manager"]})

    def _sysexts(self, tree: OsTree) -> list[dict]:
        out = []
        for d in self.knowledge["sysext_dirs"]:
            try:
                if not tree.exists(d):
                    continue
                for name in tree.listdir(d):
                    if name.endswith(".raw"):
                        full = f"{d}/{name}"
                        out.append({"name": name[:-4], "path": full,
                                    "evidence": [tree.evidence(full, "sysext image", follow=False)]})
            except ImmutoolsError:
                continue
        return out

    def _distribution(self, image: DiskImage, layout: Layout, boot: Boot, tree: OsTree, findings: Findings,
                      verity: dict[str, dict], etc_era: str, oem_target: str) -> dict:
        gpt = self.knowledge["gpt"]
        active_vol = layout.usr.get(boot.active) if boot.active else None
        esp_fs = image.filesystem(layout.esp) if layout.esp is not None else None
        esp_attrs = (layout.esp.partition.attributes if layout.esp is not None and layout.esp.partition else {}) or {}
        usr_a = layout.usr["A"]
        sysexts = self._sysexts(tree)
        disk_guid = image.table.disk_guid
        cmdline = boot.cmdline
        return {
            "name": "flatcar",
            "board": boot.board,
            "channel": findings.update.channel if findings.update else None,
            "pristine": bool(disk_guid == gpt["pristine_disk_guid"] and boot.first_boot),
            "disk_guid": disk_guid,
            "first_boot_flag": boot.first_boot is not None,
            "ignition_first_boot": boot.first_boot is not None,
            "vmlinuz_b": bool(esp_fs is not None and esp_fs.exists("/" + gpt["slots"]["B"]["kernel"])),
            "mbr": image.table.details.get("mbr"),
            "esp_legacy_bootable": bool(esp_attrs.get("legacy_bios_bootable")),
            # USR partitions of 2 GiB since alpha-4487 / stable-4593, 1 GiB before (disk_layout.json)
            "layout": None if usr_a is None or usr_a.partition is None else
            ("current" if usr_a.partition.size >= self.knowledge["current_layout_min_usr_bytes"] else "pre-4487"),
            "usr_fstype": active_vol.fstype if active_vol is not None else None,
            "usr_ro_compat_hack": bool(active_vol is not None and active_vol.identity.details.get("read_only_hack")),
            "etc_era": etc_era,
            "oem_mountpoint": oem_target if layout.oem is not None else None,
            "oem_fstype": layout.oem.fstype if layout.oem is not None else None,
            "oem_release": read_key_values(tree, self.knowledge["oem_release"]) if layout.oem is not None else None,
            "sysexts": sorted({s["name"] for s in sysexts}),
            "sysext_images": sysexts,
            "selinux": (findings.surface or {}).get("selinux"),
            "kernel": boot.kernel_version,
            "console": " ".join(f"console={v}" for v in cmdline.all("console")) if cmdline else None,
            "kernel_cmdline": cmdline.text if cmdline else None,
            "grub_default_entry": boot.entry.title if boot.entry else None,
            "oem_grub_cfg": boot.oem_grub_cfg,
            "extra_kernel_options": (boot.grub.variables.get("extra_options") or None) if boot.grub else None,
            "verity": {f"usr_{s.lower()}": {kk: vv for kk, vv in v.items() if kk != "evidence"} for s, v in verity.items()},
        }
