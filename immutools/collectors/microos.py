"""openSUSE MicroOS / SLE Micro / SL Micro: a read-only btrfs snapshot as the root, updated by
transactional-update.

Each update is a new snapper snapshot (``@/.snapshots/<N>/snapshot``) prepared from the running one
and made the btrfs *default* subvolume, which is what boots next; older snapshots stay for rollback.
``/`` is mounted read-only; ``/etc`` is the snapshot's nested writable subvolume; ``/var``, ``/home``,
``/root``, ``/opt``, ``/srv``, ``/usr/local`` are separate writable subvolumes (or partitions).

The default subvolume is read from btrfs when the image has real subvolumes; when the snapshots are
plain directories (our replicas: mkfs.btrfs cannot make subvolumes without a mount) the highest
snapshot number stands in, and the report says so. Facts: ``data/distributions/microos.yaml``
(citing shared/reference/ostree-and-others.md §6).
"""

from __future__ import annotations

import posixpath
import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import read_key_values, weighted_confidence
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence

_SNAP_PATH = re.compile(r"^/?@/\.snapshots/(\d+)/snapshot$")
_MAX_SNAPSHOTS = 4096


class MicroOsCollector(Collector):
    name = "microos"

    def __init__(self):
        self.k = load_distribution("microos")

    # ------------------------------------------------------------------------------- snapshots
    def _snapshots(self, fs) -> tuple[list[dict], bool]:
        """Snapshots as rows {number, subvol, readonly, default}; True when read from subvolume
        metadata, False when found as directories below the top level."""
        rows = []
        subvols = []
        if hasattr(fs, "subvolumes"):
            try:
                subvols = fs.subvolumes()
            except ImmutoolsError:
                subvols = []
        for sv in subvols:
            m = _SNAP_PATH.match(sv.get("path") or "")
            if m:
                rows.append({"number": int(m.group(1)), "subvol": sv["path"].lstrip("/"), "readonly": sv.get("readonly"),
                             "default": bool(sv.get("default")), "id": sv.get("id")})
        if rows:
            return sorted(rows, key=lambda r: r["number"]), True
        base = "/" + self.k["snapshots_dir"]
        try:
            names = fs.listdir(base) if fs.exists(base) else []
        except ImmutoolsError:
            names = []
        for name in names[:_MAX_SNAPSHOTS]:
            if name.isdigit() and fs.exists(f"{base}/{name}/{self.k['snapshot_name']}"):
                rows.append({"number": int(name), "subvol": f"{self.k['snapshots_dir']}/{name}/{self.k['snapshot_name']}",
                             "readonly": None, "default": False, "id": None})
        return sorted(rows, key=lambda r: r["number"]), False

    def _view(self, fs, subvol: str):
        """(filesystem, subdir) showing ``subvol`` (a path from the top level, like ``@/home``)."""
        if hasattr(fs, "open_subvolume_path"):
            try:
                info = fs.subvolumes()
                if any((sv.get("path") or "").strip("/") == subvol.strip("/") for sv in info):
                    return fs.open_subvolume_path(subvol), "/"
            except ImmutoolsError:
                pass
        return fs, "/" + subvol.strip("/")

    def _root_volume(self, image: DiskImage):
        for vol in image.volumes:
            if vol.fstype != "btrfs":
                continue
            fs = image.filesystem(vol)
            if fs is None:
                continue
            snaps, real = self._snapshots(fs)
            if snaps:
                return vol, fs, snaps, real
        return None, None, [], False

    def detect(self, image: DiskImage) -> Detection:
        vol, fs, snaps, real = self._root_volume(image)
        if vol is None:
            return Detection(self.name, 0.0)
        hits = ["snapshots_dir"]
        ev = [evidence(f"{vol.describe()}: {self.k['snapshots_dir']}", f"{len(snaps)} snapper snapshot(s)"
                       + (" (btrfs subvolumes)" if real else " (directories)"))]
        default = self._default(snaps, real)[0]
        sub_fs, sub = self._view(fs, default["subvol"])
        parsed = read_key_values(sub_fs, posixpath.join(sub, "usr/lib/os-release")) or read_key_values(sub_fs, posixpath.join(sub, "etc/os-release"))
        if parsed and (parsed.get("ID") in self.k["os_release_ids"] or "microos" in parsed.get("ID_LIKE", "").split()):
            hits.append("os_release_id")
            ev.append(evidence(f"{vol.describe()}: {default['subvol']}/usr/lib/os-release", f"os-release ID={parsed.get('ID')}"))
        if {v.label for v in image.volumes} & set(self.k["kiwi_partition_names"]):
            hits.append("kiwi_names")
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev, {"root": vol})

    @staticmethod
    def _default(snaps: list[dict], real: bool) -> tuple[dict, str]:
        if real:
            marked = [s for s in snaps if s["default"]]
            if marked:
                return marked[0], "btrfs default subvolume"
        return max(snaps, key=lambda s: s["number"]), "highest snapshot number"

    def _info(self, fs, snap: dict) -> dict:
        """snapper's info.xml beside the snapshot (type, date, description); None values when absent."""
        path = "/" + posixpath.join(posixpath.dirname(snap["subvol"]), self.k["info_file"])
        out = {"type": None, "date": None, "description": None}
        try:
            if fs.exists(path):
                text = fs.read_text(path, max_bytes=64 * 1024)
                for key in out:
                    m = re.search(rf"<{key}>([^<]*)</{key}>", text)
                    out[key] = m.group(1).strip() if m else None
        except ImmutoolsError:
            pass
        return out

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.collectors.common import add_enabled_mount_units, resolve_lenient
        from immutools.collectors.generic import arch_from_tree
        from immutools.system.fstab import parse_fstab
        from immutools.system.mounts import MountEntry, MountTable, path_rows, resolve_source_match
        from immutools.system.rootview import OsTree
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k = self.k
        vol, fs, snaps, real = self._root_volume(image)
        default, default_from = self._default(snaps, real)
        tree = OsTree(image.limits)
        root_fs, root_sub = self._view(fs, default["subvol"])
        tree.mount("/", root_fs, subdir=root_sub, volume=vol)
        rows, fstab_where = [], None
        try:
            if tree.exists("/etc/fstab"):
                fstab_where = "/etc/fstab"
                rows, _w = parse_fstab(tree.read_text(fstab_where, max_bytes=256 * 1024), fstab_where)
        except ImmutoolsError:
            rows = []
        rows = sorted(rows, key=lambda r: (r.target.count("/"), r.target))
        matches = {}
        for row in rows:
            if row.fstype == "swap" or row.target == "/" or not row.target.startswith("/"):
                continue
            match = resolve_source_match(row.source, image, None)
            matches[id(row)] = match
            if match is None:
                continue
            subvol = row.option_value("subvol")
            target_fs = image.filesystem(match.volume)
            if target_fs is None:
                continue
            sub_fs, sub = self._view(target_fs, subvol.strip("/")) if subvol else (target_fs, "/")
            try:
                tree.mount(resolve_lenient(tree, row.target), sub_fs, subdir=sub, volume=match.volume)
            except ImmutoolsError as exc:
                image.warn(f"{match.volume.describe()}: cannot mount {subvol or '/'} at {row.target}: {exc}")
        units = UnitSet(tree)

        table = MountTable()
        snap_ev = evidence(f"{vol.describe()}: {default['subvol']}", f"default snapshot #{default['number']} ({default_from})",
                           observed=real)
        root_row = next((r for r in rows if r.target == "/"), None)
        if root_row is not None:
            entry = MountEntry.from_fstab(root_row, tree)
            entry.volume = vol
            entry.evidence.append(snap_ev)
            table.add(entry)
        else:
            table.add(MountEntry("/", vol.describe(), "btrfs", ["ro"], observed=False, volume=vol, evidence=[snap_ev]))
        etc_dir = tree.exists("/etc")
        table.add(MountEntry("/etc", f"{default['subvol']}/etc", "btrfs", ["rw"], observed=False, volume=vol,
                             evidence=[evidence(f"{vol.describe()}: {default['subvol']}/etc", "the snapshot's /etc", etc_dir),
                                       evidence(k["etc_source"], "nested writable subvolume, synced into the next snapshot", False)]))
        for row in rows:
            if row.target == "/" or row.fstype == "swap" or not row.target.startswith("/"):
                continue
            entry = MountEntry.from_fstab(row, tree)
            match = matches.get(id(row))
            if match is not None:
                entry.volume = match.volume
                entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
            table.add(entry)
        skipped = add_enabled_mount_units(table, units, tree)
        if table.get("/run") is None:
            table.add(MountEntry("/run", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=755"], observed=False,
                                 evidence=[evidence("systemd API filesystems", "/run is a tmpfs", False)]))
        paths = path_rows(table, resolve=lambda p: resolve_lenient(tree, p))
        surface = inventory(tree, None, units).to_report()

        # --- update: transactional-update over snapshots ------------------------------------------
        tu = k["transactional_update"]
        conf = dict(tu["defaults"])
        conf_src = {key: "default" for key in conf}
        for path in reversed(tu["config"]):          # /usr/etc first, /etc overrides
            values = read_key_values(tree, path)
            for key, value in (values or {}).items():
                conf[key] = value
                conf_src[key] = path
        ev = [snap_ev]
        for key in ("REBOOT_METHOD", "UPDATE_METHOD"):
            if conf_src.get(key, "default") != "default":
                ev.append(tree.evidence(conf_src[key], f"{key}={conf[key]}"))
        timer = units.find(tu["timer"])
        if timer is not None:
            ev.append(tree.evidence(timer.path, "transactional-update timer", follow=False))
        slot_rows, snap_rows = [], []
        for s in snaps:
            sfs, ssub = self._view(fs, s["subvol"])
            rel = read_key_values(sfs, posixpath.join(ssub, "usr/lib/os-release")) or {}
            info = self._info(fs, s)
            slot_rows.append({"name": f"#{s['number']}", "partitions": [vol.number], "version": rel.get("VERSION_ID"),
                              "active": s is default, "priority": None, "tries": None, "successful": None})
            snap_rows.append({"number": s["number"], "subvolume": s["subvol"], "version": rel.get("VERSION_ID"),
                              "default": s is default, "readonly": s["readonly"], **info})
        update = {
            "mechanism": "snapshots", "agent": tu["agent"], "channel": None, "server": None, "active_slot": None,
            "slots": slot_rows, "atomic": True, "rollback": tu["rollback"],
            "timer_enabled": units.enablement(tu["timer"]).enabled if timer is not None else False,
            "config": conf, "evidence": ev,
        }
        os_rel = read_key_values(tree, "/usr/lib/os-release") or read_key_values(tree, "/etc/os-release") or {}
        arch, arch_ev = arch_from_tree(tree)
        os_section = {
            "id": os_rel.get("ID"), "name": os_rel.get("NAME"), "version": os_rel.get("VERSION_ID"),
            "variant": os_rel.get("VARIANT_ID"), "arch": arch, "pretty_name": os_rel.get("PRETTY_NAME"),
            "build_id": os_rel.get("BUILD_ID"),
            "evidence": [tree.evidence("/usr/lib/os-release", "os-release of the default snapshot")] + ([arch_ev] if arch_ev else []),
        }
        distribution = {
            "name": os_rel.get("ID"),
            "default_snapshot": default["number"],
            "default_from": default_from,
            "subvolume_metadata": real,
            "snapshots": snap_rows,
            "reboot_method": conf.get("REBOOT_METHOD"),
            "update_method": conf.get("UPDATE_METHOD"),
            "root_partition": vol.number,
            "fstab": [{"source": r.source, "target": r.target, "fstype": r.fstype, "options": r.options} for r in rows],
            "skipped_mount_units": skipped,
        }
        return {"os": os_section, "mounts": table.to_report(), "paths": paths, "update": update,
                "integrity": {"verity": False, "root_hash": None, "hash_location": None, "verified": None, "evidence": []},
                "surface": surface, "distribution": distribution}
