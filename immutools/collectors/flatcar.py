"""Flatcar Container Linux: read-only, verity-protected ``/usr`` in A/B partitions; ``/``, ``/etc``
(an overlay in 3535-4627), ``/var`` writable on ROOT; update_engine flips the slots.

Facts come from ``data/distributions/flatcar.yaml`` (which cites shared/reference/flatcar.md).
What the image shows is read (GPT bits, grub.cfg, the kernel's embedded root hash, the verity
superblock, os-release, update.conf, units); what Flatcar sets up in code (the /etc overlay in the
initrd, API filesystems) is added from the documented behaviour, marked ``observed: false``.
"""

from __future__ import annotations

import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import (
    first_key, mount_fs, os_release_of, read_key_values, slot_row, weighted_confidence,
)
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence
from immutools.volumes.gptprio import gptprio_next

_HEX64 = re.compile(rb"^[0-9a-f]{64}$")
_BOARD_ARCH = {"amd64-usr": "x86_64", "arm64-usr": "aarch64"}


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return None


class FlatcarCollector(Collector):
    name = "flatcar"

    def __init__(self):
        self.k = load_distribution("flatcar")

    # ------------------------------------------------------------------------------- detect
    def _slot_volume(self, image: DiskImage, slot: str) -> Volume | None:
        spec = self.k["gpt"]["slots"][slot]
        vol = image.volume(number=spec["number"])
        if vol is not None and vol.partition is not None and (vol.partition.type_guid or "") == self.k["gpt"]["usr_type"]:
            return vol
        # A re-partitioned disk may have moved it: fall back to the label.
        vol = image.volume(label=spec["label"])
        return vol if vol is not None and vol.partition and vol.partition.type_guid == self.k["gpt"]["usr_type"] else None

    def detect(self, image: DiskImage) -> Detection:
        gpt = self.k["gpt"]
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
        facts = {"usr": {"A": usr_a, "B": usr_b}}
        for slot in ("A", "B"):
            parsed, where = os_release_of(image, facts["usr"][slot], ("/lib/os-release", "/share/flatcar/os-release"))
            if parsed and parsed.get("ID") == "flatcar":
                hits.append("os_release_id")
                ev.append(where | {"detail": "os-release ID=flatcar"})
                break
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev, facts)

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.mounts import MountEntry, MountTable, path_rows, resolve_source_match
        from immutools.system.rootview import OsTree
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k, gpt = self.k, self.k["gpt"]
        usr = detection.facts.get("usr") or {s: self._slot_volume(image, s) for s in ("A", "B")}
        labels = gpt["labels"]
        esp = image.volume(label=labels["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        root = image.volume(label=labels["root"]) or next(
            (v for v in image.volumes if v.partition and v.partition.type_guid == gpt["root_type"]), None)
        oem = image.volume(label=labels["oem"])
        esp_fs = image.filesystem(esp) if esp is not None else None

        # --- slots: versions, active slot by GRUB's rule -------------------------------------------
        slot_info = {}
        for slot in ("A", "B"):
            vol = usr[slot]
            parsed, where = os_release_of(image, vol, ("/lib/os-release", "/share/flatcar/os-release"))
            slot_info[slot] = {"vol": vol, "os_release": parsed, "evidence": where}
        choice = gptprio_next([v.partition for v in image.volumes if v.partition], gpt["usr_type"])
        active = next((s for s in ("A", "B") if usr[s] is not None and choice.partition is not None
                       and usr[s].number == choice.partition.number), None)
        active_vol = usr.get(active) if active else None
        active_os = slot_info[active]["os_release"] if active else None

        # --- arch / board -----------------------------------------------------------------------
        board = (active_os or {}).get("FLATCAR_BOARD") or next(
            (i["os_release"].get("FLATCAR_BOARD") for i in slot_info.values() if i["os_release"]), None)
        arch = _BOARD_ARCH.get(board)
        arch_ev = slot_info[active]["evidence"] if (active and arch) else None
        if arch is None:
            from immutools.collectors.generic import detect_arch

            arch, arch_ev = detect_arch(image, [v for v in (active_vol,) if v is not None])

        # --- ESP: grub.cfg, kernels, first-boot flag ----------------------------------------------
        kernel_path = None
        if active:
            kernel_path = "/" + gpt["slots"][active]["kernel"]
        root_hash, hash_ev, kernel_version = None, None, None
        if esp_fs is not None and kernel_path and arch in k["verity"]["roothash_offset_in_kernel"]:
            off = k["verity"]["roothash_offset_in_kernel"][arch]
            try:
                if esp_fs.exists(kernel_path):
                    raw = esp_fs.read(kernel_path, off, 64)
                    if _HEX64.match(raw):
                        root_hash = raw.decode()
                        hash_ev = evidence(f"{esp.describe()}: {kernel_path}", f"64 hex characters at offset {off} (GRUB appends verity.usrhash=)")
                    from immutools.fs.pe import kernel_info

                    kernel_version = kernel_info(esp_fs.open_source(kernel_path)).version
            except ImmutoolsError as exc:
                image.warn(f"{esp.describe()}: {kernel_path}: {exc}")
        first_boot = None
        if esp_fs is not None:
            first_boot = next((f for f in k["esp"]["first_boot_flags"] if esp_fs.exists("/" + f)), None)
        grub, grub_entry, cmdline = self._grub(image, esp, esp_fs, choice, arch, first_boot, root_hash)

        # --- verity superblock inside the active USR partition -----------------------------------
        verity_slots = {}
        for slot in ("A", "B"):
            vol = usr[slot]
            if vol is None or vol.fstype in ("zero", "unreadable"):
                continue
            from immutools.fs.verity import read_superblock

            try:
                params = read_superblock(vol.source, k["verity"]["hash_offset"])
            except ImmutoolsError as exc:
                image.warn(f"{vol.describe()}: verity superblock: {exc}")
                params = None
            if params is not None:
                verity_slots[slot] = {
                    "hash_offset": k["verity"]["hash_offset"], "data_blocks": params.data_blocks,
                    "data_block_size": params.data_block_size, "hash_block_size": params.hash_block_size,
                    "algorithm": params.algorithm, "salt": params.salt,
                    "evidence": [evidence(f"{vol.describe()}: offset {k['verity']['hash_offset']}", "dm-verity superblock")],
                }
        if active and root_hash and active in verity_slots:
            verity_slots[active]["root_hash"] = root_hash
        # Every slot's own kernel carries its hash; report them all.
        if esp_fs is not None and arch in k["verity"]["roothash_offset_in_kernel"]:
            off = k["verity"]["roothash_offset_in_kernel"][arch]
            for slot in ("A", "B"):
                path = "/" + gpt["slots"][slot]["kernel"]
                if slot in verity_slots and "root_hash" not in verity_slots[slot] and esp_fs.exists(path):
                    raw = esp_fs.read(path, off, 64)
                    if _HEX64.match(raw):
                        verity_slots[slot]["root_hash"] = raw.decode()

        # --- composed OS tree: ROOT at /, active USR at /usr, OEM, ESP at /boot ------------------
        tree = OsTree(image.limits)
        have_root = mount_fs(tree, "/", image, root)
        if not have_root:
            image.warn("Flatcar ROOT partition not readable: paths on / are inferred only")
        mount_fs(tree, "/usr", image, active_vol)
        units = UnitSet(tree)
        oem_unit = next((u for u in ("oem.mount", "usr-share-oem.mount") if units.find(u)), None)
        oem_target = "/usr/share/oem" if oem_unit == "usr-share-oem.mount" else "/oem"
        mount_fs(tree, oem_target, image, oem)
        mount_fs(tree, "/boot", image, esp)

        # --- /etc era ----------------------------------------------------------------------------
        version = (active_os or {}).get("VERSION_ID") or (active_os or {}).get("VERSION")
        etc_era, etc_ev = self._etc_era(tree, version)

        # --- mounts, in mount order ----------------------------------------------------------------
        table = MountTable()
        if cmdline is not None:
            rm = cmdline.root_mount()
            if rm is not None:
                src = resolve_source_match(rm.what, image, cmdline)
                fstype = rm.fstype or (src.volume.fstype if src else None)
                entry = MountEntry.from_cmdline("/", rm, cmdline, volume=src.volume if src else None)
                entry.fstype = fstype
                if src is not None:
                    entry.evidence.append(evidence(src.volume.describe(), src.how, src.observed))
                table.add(entry)
            um = cmdline.usr_mount()
            if um is not None:
                src = resolve_source_match(um.what, image, cmdline)
                verity = bool(cmdline.usr_verity())
                fstype = um.fstype or (src.volume.fstype if src else None)
                entry = MountEntry.from_cmdline("/usr", um, cmdline, integrity="dm-verity" if verity else "none",
                                                persistence="image", volume=src.volume if src else None)
                entry.fstype = fstype
                if src is not None:
                    entry.evidence.append(evidence(f"{src.volume.describe()}", src.how, src.observed))
                table.add(entry)
        if etc_era == "overlay":
            era = next(e for e in k["etc_eras"] if e["era"] == "overlay")
            table.add(MountEntry("/etc", "overlay", "overlay", list(era["options"]), lower=[era["lower"]],
                                 upper=era["upper"], work=era["work"], observed=False,
                                 evidence=[evidence(era["source"], "overlay set up by the initrd", False)] + etc_ev))
        elif etc_era == "confext":
            era = next(e for e in k["etc_eras"] if e["era"] == "confext")
            table.add(MountEntry("/etc", era["image"], "overlay", ["upperdir=/etc"], upper="/etc", lower=[era["image"]],
                                 observed=False, evidence=[evidence(era["source"], "systemd-confext merge, mutable", False)] + etc_ev))
        for mu in units.mount_units():
            if not mu.where:
                continue
            en = units.enablement(mu.name)
            auto = units.enablement(mu.name[: -len(".mount")] + ".automount")
            if not (en.enabled or auto.enabled):
                continue
            entry = MountEntry.from_mount_unit(mu, tree)
            entry.evidence += en.evidence(tree) if en.enabled else auto.evidence(tree)
            if mu.what:
                src = resolve_source_match(mu.what, image, cmdline)
                if src is not None:
                    entry.volume = src.volume
                    if entry.fstype in (None, "auto") or "," in (entry.fstype or ""):
                        # Type=auto (or a list) is decided by probing at mount time: we probed too.
                        entry.evidence.append(evidence(src.volume.describe(), f"{src.how}; probed as {src.volume.fstype}"))
                        entry.fstype = src.volume.fstype
            table.add(entry)
        for m in k.get("documented_mounts", []):
            if table.get(m["target"]) is None:
                table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m["options"]), observed=False,
                                     evidence=[evidence(m["source_ref"], "set up by systemd itself", False)]))

        paths = path_rows(table, resolve=lambda p: tree.lrealpath(p) if tree.exists(p, follow=False) else p)

        # --- surface -------------------------------------------------------------------------------
        surface = inventory(tree, cmdline, units)
        surface_report = surface.to_report()

        # --- update ----------------------------------------------------------------------------------
        conf_sources = [(read_key_values(tree, p), p) for p in k["update"]["config_files"]]
        group, group_where = first_key(conf_sources, "GROUP")
        server, server_where = first_key(conf_sources, "SERVER")
        upd_ev = []
        if group_where:
            upd_ev.append(tree.evidence(group_where, "GROUP (channel), first match wins"))
        if server_where:
            upd_ev.append(tree.evidence(server_where, "SERVER"))
        else:
            server = k["update"]["default_server"]
            upd_ev.append(evidence("flatcar.md §4.1 (update_engine omaha_request_params.cc)", "default server", False))
        if group is None:
            group = k["update"]["default_group"]
            upd_ev.append(evidence("flatcar.md §4.1", "default channel when none is configured", False))
        agent_unit = units.find("update-engine.service")
        if agent_unit is not None:
            upd_ev.append(tree.evidence(agent_unit.path, "update_engine unit", follow=False))
        upd_ev.append(evidence("GPT attribute bits of USR-A/USR-B", choice.reason))
        slots = [slot_row(s, usr[s], (slot_info[s]["os_release"] or {}).get("VERSION_ID"), s == active) for s in ("A", "B")]
        update = {
            "mechanism": "ab-partitions",
            "agent": k["update"]["agent"],
            "channel": group,
            "server": server,
            "active_slot": active,
            "slots": slots,
            "reboot_manager": k["update"]["reboot_manager"],
            "rollback": "automatic: a slot that never reaches flatcar-setgoodroot keeps successful=0 and GRUB falls back",
            "evidence": upd_ev,
        }

        integrity = {
            "verity": bool(cmdline and cmdline.usr_verity()) or bool(verity_slots),
            "root_hash": root_hash,
            "hash_location": f"ESP {gpt['slots'][active]['kernel']} offset {k['verity']['roothash_offset_in_kernel'].get(arch)}" if root_hash else None,
            "verified": None,
            "evidence": [e for e in (hash_ev,) if e] + [ev for s in verity_slots.values() for ev in s["evidence"]],
            "targets": self._verity_targets(usr, verity_slots),
        }

        os_section = {
            "id": (active_os or {}).get("ID", "flatcar"),
            "name": (active_os or {}).get("NAME"),
            "version": version,
            "variant": None,
            "arch": arch,
            "pretty_name": (active_os or {}).get("PRETTY_NAME"),
            "build_id": (active_os or {}).get("BUILD_ID"),
            "evidence": [e for e in (slot_info[active]["evidence"] if active else None, arch_ev) if e],
        }

        sysexts = self._sysexts(tree)
        mbr = image.table.details.get("mbr")
        esp_attrs = (esp.partition.attributes if esp is not None and esp.partition else {}) or {}
        usr_fstype = active_vol.fstype if active_vol is not None else None
        usr_ident = active_vol.identity if active_vol is not None else None
        disk_guid = image.table.disk_guid
        distribution = {
            "name": "flatcar",
            "board": board,
            "channel": group,
            "pristine": bool(disk_guid == gpt["pristine_disk_guid"] and first_boot),
            "disk_guid": disk_guid,
            "first_boot_flag": first_boot is not None,
            "ignition_first_boot": first_boot is not None,
            "vmlinuz_b": bool(esp_fs is not None and esp_fs.exists("/" + gpt["slots"]["B"]["kernel"])),
            "mbr": mbr,
            "esp_legacy_bootable": bool(esp_attrs.get("legacy_bios_bootable")),
            "layout": self._layout(usr["A"]),
            "usr_fstype": usr_fstype,
            "usr_ro_compat_hack": bool(usr_ident and usr_ident.details.get("read_only_hack")),
            "etc_era": etc_era,
            "oem_mountpoint": oem_target if oem is not None else None,
            "oem_fstype": oem.fstype if oem is not None else None,
            "oem_release": read_key_values(tree, k["oem_release"]) if oem is not None else None,
            "sysexts": sorted({s["name"] for s in sysexts}),
            "sysext_images": sysexts,
            "selinux": surface_report.get("selinux"),
            "kernel": kernel_version,
            "console": " ".join(f"console={v}" for v in cmdline.all("console")) if cmdline else None,
            "kernel_cmdline": cmdline.text if cmdline else None,
            "grub_default_entry": grub_entry.title if grub_entry else None,
            "extra_kernel_options": (grub.variables.get("extra_options") or None) if grub else None,
            "verity": {f"usr_{s.lower()}": {kk: vv for kk, vv in v.items() if kk != "evidence"} for s, v in verity_slots.items()},
        }
        return {
            "os": os_section,
            "mounts": table.to_report(),
            "paths": paths,
            "update": update,
            "integrity": integrity,
            "surface": surface_report,
            "distribution": distribution,
        }

    # ------------------------------------------------------------------------------- pieces
    def _grub(self, image, esp, esp_fs, choice, arch, first_boot, root_hash):
        """The default entry's kernel command line, as GRUB would build it from grub.cfg.tar."""
        from immutools.system.cmdline import KernelCmdline
        from immutools.system.grubcfg import grub_cfg_from_tar, parse_grub_cfg

        if esp_fs is None:
            return None, None, None
        tar_path = "/" + self.k["esp"]["grub_cfg_tar"]
        try:
            if not esp_fs.exists(tar_path):
                image.warn(f"{esp.describe()}: {tar_path} not found: kernel command line unknown")
                return None, None, None
            text = grub_cfg_from_tar(esp_fs.read(tar_path))
        except ImmutoolsError as exc:
            image.warn(f"{esp.describe()}: {tar_path}: {exc}")
            return None, None, None
        if not text:
            return None, None, None
        env = {"grub_platform": "efi", "grub_cpu": {"x86_64": "x86_64", "aarch64": "arm64"}.get(arch, "")}
        if choice.partition is not None:
            env["usr_uuid"] = choice.partition.uuid
            env["usr_device"] = f"hd0,gpt{choice.partition.number}"

        def file_exists(op, path):
            p = path.split(")", 1)[-1] if path.startswith("(") else path
            try:
                return esp_fs.exists(p)
            except ImmutoolsError:
                return None

        try:
            cfg = parse_grub_cfg(text, env=env, file_exists=file_exists)
        except ImmutoolsError as exc:
            image.warn(f"{esp.describe()}: {tar_path}: grub.cfg: {exc}")
            return None, None, None
        entry = cfg.default_entry()
        if entry is None:
            return cfg, None, None
        words = list(entry.cmdline_words)
        origin = f"{esp.describe()}: {tar_path} grub.cfg, menuentry {entry.title!r}"
        if root_hash:
            # The patched GRUB appends the hash it read from the kernel image (flatcar.md §2.3).
            words.append(f"verity.usrhash={root_hash}")
        cmdline = KernelCmdline.from_words(words, origin, observed=not entry.unresolved)
        return cfg, entry, cmdline

    def _etc_era(self, tree, version):
        eras = self.k["etc_eras"]
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

    @staticmethod
    def _layout(usr_a: Volume | None) -> str | None:
        # §1.2 vs §1.3: USR partitions of 2 GiB since 4487/4593, 1 GiB before.
        if usr_a is None or usr_a.partition is None:
            return None
        return "current" if usr_a.partition.size >= 2 * 1024**3 else "pre-4487"

    def _sysexts(self, tree) -> list[dict]:
        out = []
        for d in self.k["sysext_dirs"]:
            try:
                if not tree.exists(d):
                    continue
                for name in tree.listdir(d):
                    if name.endswith(".raw"):
                        full = f"{d}/{name}"
                        base = name[:-4]
                        out.append({"name": base, "path": full, "evidence": [tree.evidence(full, "sysext image", follow=False)]})
            except ImmutoolsError:
                continue
        return out

    def _verity_targets(self, usr, verity_slots) -> list[dict]:
        """What ``immutools verify`` checks: data and hash tree share the USR partition."""
        out = []
        for slot, info in verity_slots.items():
            vol = usr[slot]
            out.append({
                "slot": slot, "partition": vol.number, "data_offset": 0,
                "hash_partition": vol.number, "hash_offset": info["hash_offset"], "superblock": True,
                "root_hash": info.get("root_hash"),
                "root_hash_source": f"ESP {self.k['gpt']['slots'][slot]['kernel']}",
            })
        return out
