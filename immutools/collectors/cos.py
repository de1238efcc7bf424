"""Google Container-Optimized OS: a ChromiumOS-style disk with A/B kernel + rootfs pairs.

KERN-A/ROOT-A and KERN-B/ROOT-B are chosen by the GPT priority/tries/successful bits on the kernel
partitions (the same rule as GRUB's gptprio); GRUB on partition 12 reads the priorities and boots
the matching "verified image" entry, whose command line builds the dm-verity root device. The
root filesystem is read-only; ``/etc`` is a tmpfs; ``/home`` and ``/var`` come from the stateful
partition (noexec). Facts: ``data/distributions/cos.yaml`` (citing shared/reference/ostree-and-others.md
§5); the runtime mounts are documented behaviour (``observed: false``).
"""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import mount_fs, os_release_of, read_key_values, slot_row, weighted_confidence
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence
from immutools.volumes.gptprio import gptprio_next

_OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


class CosCollector(Collector):
    name = "cos"

    def __init__(self):
        self.k = load_distribution("cos")

    def _slot_vols(self, image: DiskImage, slot: str):
        spec = self.k["gpt"]["slots"][slot]
        kern = image.volume(number=spec["kernel"])
        root = image.volume(number=spec["root"])
        if kern is None or kern.partition is None or kern.partition.type_guid != self.k["gpt"]["kernel_type"]:
            kern = image.volume(label=spec["kernel_label"])
        if root is None or root.partition is None or root.partition.type_guid != self.k["gpt"]["rootfs_type"]:
            root = image.volume(label=spec["root_label"])
        return kern, root

    def detect(self, image: DiskImage) -> Detection:
        gpt = self.k["gpt"]
        hits, ev = [], []
        kern_a, root_a = self._slot_vols(image, "A")
        if kern_a is not None and root_a is not None and kern_a.label == "KERN-A" and root_a.label == "ROOT-A":
            hits.append("kern_root_labels")
            ev.append(evidence(f"{kern_a.describe()} / {root_a.describe()}: GPT entries", "KERN-A / ROOT-A"))
        types = {(v.partition.type_guid if v.partition else None) for v in image.volumes}
        if gpt["kernel_type"] in types and gpt["rootfs_type"] in types:
            hits.append("chromeos_types")
        if image.volume(label=gpt["labels"]["state"]) is not None and image.volume(label=gpt["labels"]["oem"]) is not None:
            hits.append("state_oem_labels")
        if not hits:
            return Detection(self.name, 0.0)
        for slot in ("A", "B"):
            parsed, where = os_release_of(image, self._slot_vols(image, slot)[1], _OS_RELEASE)
            if parsed and parsed.get("ID") == "cos":
                hits.append("os_release_id")
                ev.append(where | {"detail": "os-release ID=cos"})
                break
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev)

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.mounts import MountEntry, MountTable, path_rows, resolve_source_match
        from immutools.system.rootview import OsTree
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k, gpt = self.k, self.k["gpt"]
        slots = {s: self._slot_vols(image, s) for s in ("A", "B")}
        info = {s: os_release_of(image, slots[s][1], _OS_RELEASE) for s in slots}
        choice = gptprio_next([v.partition for v in image.volumes if v.partition], gpt["kernel_type"])
        active = next((s for s, (kern, _root) in slots.items() if kern is not None and choice.partition is not None
                       and kern.number == choice.partition.number), None)
        esp = image.volume(label=gpt["labels"]["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        grub, entries, grub_default = self._grub(image, esp, slots)
        cmdline = grub_default.kernel_cmdline(f"{esp.describe()}: {k['esp']['grub_cfg']}") if grub_default else None

        # --- verity: each slot's verified entry carries its table ------------------------------------
        verity = {}
        for s in slots:
            entry = entries.get(s)
            if entry is None:
                continue
            line = entry.kernel_cmdline(f"{esp.describe()}: {k['esp']['grub_cfg']}")
            for dev in line.dm_devices():
                for table in dev.tables:
                    if table.verity is not None:
                        verity[s] = {"params": table.verity, "cmdline": line}
        targets = []
        for s, v in verity.items():
            p = v["params"]
            root_vol = slots[s][1]
            hash_offset = (p.hash_offset if getattr(p, "hash_offset", None) is not None else 0)
            targets.append(self._target(image, s, root_vol, p, hash_offset))

        # --- the running tree -------------------------------------------------------------------------
        root_vol = slots[active][1] if active else None
        state = image.volume(label=gpt["labels"]["state"])
        oem = image.volume(label=gpt["labels"]["oem"])
        tree = OsTree(image.limits)
        mount_fs(tree, "/", image, root_vol)
        mount_fs(tree, "/usr/share/oem", image, oem)
        mount_fs(tree, "/mnt/stateful_partition", image, state)
        state_fs = image.filesystem(state) if state is not None else None
        for sub in ("home", "var"):
            if state_fs is not None and state_fs.exists("/" + sub):
                mount_fs(tree, "/" + sub, image, state, subdir="/" + sub)
        units = UnitSet(tree)

        table = MountTable()
        if cmdline is not None:
            rm = cmdline.root_mount()
            if rm is not None:
                src = resolve_source_match(rm.what, image, cmdline)
                entry = MountEntry.from_cmdline("/", rm, cmdline, volume=src.volume if src else None,
                                                integrity="dm-verity" if src is not None and src.verity else "none",
                                                persistence="image")
                entry.fstype = rm.fstype or (src.volume.fstype if src else None)
                if src is not None:
                    entry.evidence.append(evidence(src.volume.describe(), src.how, src.observed))
                table.add(entry)
        if table.get("/") is None and root_vol is not None:
            table.add(MountEntry("/", root_vol.describe(), root_vol.fstype, ["ro"], integrity="dm-verity", persistence="image",
                                 observed=False, volume=root_vol, evidence=[evidence(k["mounts_source"], "root is read-only, dm-verity checked", False)]))
        for m in k["mounts"]:
            vol = {"state": state, "oem": oem}.get(m.get("role"))
            ev = [evidence(k["mounts_source"], "set up by the OS at boot", False)]
            if vol is not None:
                ev.insert(0, evidence(vol.describe(), f"GPT partition name {vol.label}"))
            table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m["options"]), observed=False, volume=vol, evidence=ev))
        paths = path_rows(table, resolve=lambda p: p)
        surface = inventory(tree, cmdline, units).to_report()

        # --- update ------------------------------------------------------------------------------------
        lsb = read_key_values(tree, "/etc/lsb-release") or {}
        upd_ev = [evidence("GPT attribute bits of KERN-A/KERN-B", choice.reason)]
        unit = units.find(k["update"]["unit"])
        if unit is not None:
            upd_ev.append(tree.evidence(unit.path, "update_engine unit", follow=False))
        slot_rows = []
        for s, (kern, root) in slots.items():
            row = slot_row(s, kern, (info[s][0] or {}).get("BUILD_ID"), s == active)
            row["partitions"] = [v.number for v in (kern, root) if v is not None]
            slot_rows.append(row)
        update = {
            "mechanism": "ab-partitions", "agent": k["update"]["agent"],
            "channel": lsb.get("CHROMEOS_RELEASE_TRACK"), "server": None,
            "active_slot": active, "slots": slot_rows, "rollback": k["update"]["rollback"], "evidence": upd_ev,
        }
        active_hash = targets[[t["slot"] for t in targets].index(active)]["root_hash"] if active in [t["slot"] for t in targets] else None
        integrity = {
            "verity": bool(verity), "root_hash": active_hash,
            "hash_location": f"ESP {k['esp']['grub_cfg']} menuentry {grub_default.title!r} dm-mod.create" if grub_default and active_hash else None,
            "verified": None, "evidence": [cmdline.evidence("dm-mod.create")] if cmdline is not None and cmdline.has("dm-mod.create") else [],
            "targets": targets,
        }
        active_os = info[active][0] if active else None
        from immutools.collectors.generic import arch_from_tree

        arch, arch_ev = arch_from_tree(tree)
        os_section = {
            "id": (active_os or {}).get("ID"), "name": (active_os or {}).get("NAME"),
            "version": (active_os or {}).get("VERSION_ID"), "variant": None, "arch": arch,
            "pretty_name": (active_os or {}).get("PRETTY_NAME"), "build_id": (active_os or {}).get("BUILD_ID"),
            "evidence": [e for e in ((info[active][1] if active else None), arch_ev) if e],
        }
        kernel = None
        if grub_default is not None and grub_default.kernel_path and esp is not None:
            try:
                from immutools.fs.pe import kernel_info

                kernel = kernel_info(image.filesystem(esp).open_source(grub_default.kernel_path)).version
            except ImmutoolsError as exc:
                image.warn(f"{esp.describe()}: {grub_default.kernel_path}: {exc}")
        distribution = {
            "name": "cos",
            "milestone": (active_os or {}).get("VERSION_ID"),
            "grub_default_entry": grub_default.title if grub_default else None,
            "grub_entries": [e.title for e in (grub.entries if grub else [])],
            "cros_efi": bool(cmdline is not None and cmdline.has(k["esp"]["efi_marker"])),
            "kernel": kernel,
            "kernel_cmdline": cmdline.text if cmdline else None,
            "release_track": lsb.get("CHROMEOS_RELEASE_TRACK"),
            "slot_builds": {s: (info[s][0] or {}).get("BUILD_ID") for s in slots},
        }
        return {"os": os_section, "mounts": table.to_report(), "paths": paths, "update": update,
                "integrity": integrity, "surface": surface, "distribution": distribution}

    def _grub(self, image: DiskImage, esp, slots):
        """Interpret the ESP grub.cfg with GRUB's view of the kernel priorities (what ``gptpriority``
        returns) seeded as variables; return the config, each slot's verified entry and the default."""
        from immutools.system.grubcfg import parse_grub_cfg

        fs = image.filesystem(esp) if esp is not None else None
        path = self.k["esp"]["grub_cfg"]
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
        entries = {}
        for e in cfg.entries:
            for s in slots:
                if e.title == f"verified image {s}":
                    entries[s] = e
        return cfg, entries, cfg.default_entry()

    @staticmethod
    def _target(image: DiskImage, slot: str, root_vol, params, _offset) -> dict:
        """The verity target of a slot: data and hash tree share the ROOT partition; the table's
        hash start points past the superblock veritysetup wrote (when there is one)."""
        from immutools.fs.verity import read_superblock

        hash_start = params.hash_offset
        row = {"slot": slot, "partition": root_vol.number if root_vol else None, "data_offset": 0,
               "hash_partition": root_vol.number if root_vol else None, "root_hash": params.root_hash,
               "root_hash_source": f"grub.cfg 'verified image {slot}' dm-mod.create"}
        sb_at = hash_start - params.hash_block_size
        try:
            sb = read_superblock(root_vol.source, sb_at) if root_vol is not None and sb_at >= 0 else None
        except ImmutoolsError:
            sb = None
        if sb is not None:
            row.update(hash_offset=sb_at, superblock=True)
        else:
            row.update(hash_offset=hash_start, superblock=False,
                       params={"version": params.version, "algorithm": params.algorithm,
                               "data_block_size": params.data_block_size, "hash_block_size": params.hash_block_size,
                               "data_blocks": params.data_blocks, "salt": params.salt, "hash_offset": hash_start,
                               "superblock": False})
        return row
