"""openSUSE MicroOS / SLE Micro / SL Micro: a read-only btrfs snapshot as the root, updated by
transactional-update.

Each update is a new snapper snapshot (``@/.snapshots/<N>/snapshot``) prepared from the running one
and made the btrfs *default* subvolume, which is what boots next; older snapshots stay for rollback.
``/`` is mounted read-only; ``/etc`` is the snapshot's nested writable subvolume; ``/var``, ``/home``,
``/root``, ``/opt``, ``/srv``, ``/usr/local`` are separate writable subvolumes (or partitions).

The default subvolume is read from btrfs when the image has real subvolumes; when the snapshots are
plain directories (our replicas: mkfs.btrfs cannot make subvolumes without a mount) the highest
snapshot number stands in, and the report says so. Facts: ``data/distributions/microos.yaml``
(upstream sources cited there).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, Integrity, OsIdentity, Update, UpdateSlot, evidence
from immutools.system.compose import (
    add_enabled_mount_units, arch_from_tree, finish, lenient_resolver, read_key_values, resolve_lenient,
)
from immutools.system.fstab import parse_fstab
from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

_SNAP_PATH = re.compile(r"^/?@/\.snapshots/(\d+)/snapshot$")
_MAX_SNAPSHOTS = 4096
_OS_RELEASE = ("usr/lib/os-release", "etc/os-release")


@dataclass
class Root:
    """The btrfs filesystem holding the snapshots, and the one that boots."""

    volume: Volume
    fs: object
    snapshots: list[dict]
    real: bool                    # snapshots read from subvolume metadata (not plain directories)
    default: dict
    default_from: str

    def evidence(self) -> dict:
        return evidence(f"{self.volume.describe()}: {self.default['subvol']}",
                        f"default snapshot #{self.default['number']} ({self.default_from})", observed=self.real)


class MicroOsCollector(Collector):
    name = "microos"
    distribution = "microos"

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
        base = "/" + self.knowledge["snapshots_dir"]
        try:
            names = fs.listdir(base) if fs.exists(base) else []
        except ImmutoolsError:
            names = []
        for name in names[:_MAX_SNAPSHOTS]:
            if name.isdigit() and fs.exists(f"{base}/{name}/{self.knowledge['snapshot_name']}"):
                rows.append({"number": int(name), "subvol": f"{self.knowledge['snapshots_dir']}/{name}/{self.knowledge['snapshot_name']}",
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
        ev = [evidence(f"{vol.describe()}: {self.knowledge['snapshots_dir']}", f"{len(snaps)} snapper snapshot(s)"
                       + (" (btrfs subvolumes)" if real else " (directories)"))]
        default = self._default(snaps, real)[0]
        sub_fs, sub = self._view(fs, default["subvol"])
        parsed = read_key_values(sub_fs, posixpath.join(sub, "usr/lib/os-release")) or read_key_values(sub_fs, posixpath.join(sub, "etc/os-release"))
        if parsed and (parsed.get("ID") in self.knowledge["os_release_ids"] or "microos" in parsed.get("ID_LIKE", "").split()):
            hits.append("os_release_id")
            ev.append(evidence(f"{vol.describe()}: {default['subvol']}/usr/lib/os-release", f"os-release ID={parsed.get('ID')}"))
        if {v.label for v in image.volumes} & set(self.knowledge["kiwi_partition_names"]):
            hits.append("kiwi_names")
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev, {"root": vol})

    @staticmethod
    def _default(snaps: list[dict], real: bool) -> tuple[dict, str]:
        if real:
            marked = [s for s in snaps if s["default"]]
            if marked:
                return marked[0], "btrfs default subvolume"
        return max(snaps, key=lambda s: s["number"]), "highest snapshot number"

    def _info(self, fs, snap: dict) -> dict:
        """snapper's info.xml beside the snapshot (type, date, description); None values when absent."""
        path = "/" + posixpath.join(posixpath.dirname(snap["subvol"]), self.knowledge["info_file"])
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

    def _root(self, image: DiskImage) -> Root | None:
        vol, fs, snaps, real = self._root_volume(image)
        if vol is None:
            return None
        default, default_from = self._default(snaps, real)
        return Root(vol, fs, snaps, real, default, default_from)

    # ------------------------------------------------------------------------------- gather
    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        root = self._root(image)
        if root is None:
            return
        tree = OsTree(image.limits)
        root_fs, root_sub = self._view(root.fs, root.default["subvol"])
        tree.mount("/", root_fs, subdir=root_sub, volume=root.volume)
        findings.os = self._os(tree)
        findings.integrity = Integrity.none()
        fstab = self._fstab(image, tree)
        units = UnitSet(tree)
        table, skipped = self._mount_table(image, root, tree, units, fstab)
        finish(image, findings, self.knowledge, table, tree, units=units, resolve=lenient_resolver(tree))
        conf = self._config(tree)
        findings.update = self._update(root, tree, units, conf)
        findings.distribution = {
            "name": findings.os.id,
            "default_snapshot": root.default["number"],
            "default_from": root.default_from,
            "subvolume_metadata": root.real,
            "snapshots": [self._snapshot_row(root, s) for s in root.snapshots],
            "reboot_method": conf["values"].get("REBOOT_METHOD"),
            "update_method": conf["values"].get("UPDATE_METHOD"),
            "root_partition": root.volume.number,
            "fstab": [{"source": r.source, "target": r.target, "fstype": r.fstype, "options": r.options} for r, _m in fstab],
            "skipped_mount_units": skipped,
        }

    def _os(self, tree: OsTree) -> OsIdentity:
        for rel in _OS_RELEASE:
            parsed = read_key_values(tree, "/" + rel)
            if parsed:
                ident = OsIdentity.from_os_release(parsed, tree.evidence("/" + rel, "os-release of the default snapshot"))
                ident.name = parsed.get("NAME")
                break
        else:
            ident = OsIdentity()
        arch, arch_ev = arch_from_tree(tree)
        ident.arch = arch
        ident.add_evidence(arch_ev)
        return ident

    def _fstab(self, image: DiskImage, tree: OsTree) -> list[tuple]:
        """/etc/fstab rows (parents first) with their resolved sources; what resolves is mounted."""
        try:
            rows = parse_fstab(tree.read_text("/etc/fstab", max_bytes=256 * 1024), "/etc/fstab")[0] \
                if tree.exists("/etc/fstab") else []
        except ImmutoolsError:
            rows = []
        out = []
        for row in sorted(rows, key=lambda r: (r.target.count("/"), r.target)):
            if row.fstype == "swap" or row.target == "/" or not row.target.startswith("/"):
                out.append((row, None))
                continue
            match = resolve_source_match(row.source, image, None)
            out.append((row, match))
            target_fs = image.filesystem(match.volume) if match is not None else None
            if target_fs is None:
                continue
            subvol = row.option_value("subvol")
            sub_fs, sub = self._view(target_fs, subvol.strip("/")) if subvol else (target_fs, "/")
            try:
                tree.mount(resolve_lenient(tree, row.target), sub_fs, subdir=sub, volume=match.volume)
            except ImmutoolsError as exc:
                image.warn(f"{match.volume.describe()}: cannot mount {subvol or '/'} at {row.target}: {exc}")
        return out

    def _mount_table(self, image: DiskImage, root: Root, tree: OsTree, units: UnitSet, fstab: list[tuple]):
        table = MountTable()
        snap_ev = root.evidence()
        root_row = next((r for r, _m in fstab if r.target == "/"), None)
        if root_row is not None:
            entry = MountEntry.from_fstab(root_row, tree)
            entry.volume = root.volume
            entry.evidence.append(snap_ev)
            table.add(entry)
        else:
            table.add(MountEntry("/", root.volume.describe(), "btrfs", ["ro"], observed=False, volume=root.volume,
                                 evidence=[snap_ev]))
        table.add(MountEntry("/etc", f"{root.default['subvol']}/etc", "btrfs", ["rw"], observed=False, volume=root.volume,
                             evidence=[evidence(f"{root.volume.describe()}: {root.default['subvol']}/etc", "the snapshot's /etc",
                                                tree.exists("/etc")),
                                       evidence(self.knowledge["etc_source"],
                                                "nested writable subvolume, synced into the next snapshot", False)]))
        for row, match in fstab:
            if row.target == "/" or row.fstype == "swap" or not row.target.startswith("/"):
                continue
            entry = MountEntry.from_fstab(row, tree)
            if match is not None:
                entry.volume = match.volume
                entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
            table.add(entry)
        return table, add_enabled_mount_units(table, units, tree)

    def _config(self, tree: OsTree) -> dict:
        """transactional-update.conf: the distribution's defaults, /usr/etc, then /etc overriding."""
        tu = self.knowledge["transactional_update"]
        values = dict(tu["defaults"])
        sources = {key: "default" for key in values}
        for path in reversed(tu["config"]):
            for key, value in (read_key_values(tree, path) or {}).items():
                values[key] = value
                sources[key] = path
        return {"values": values, "sources": sources}

    def _update(self, root: Root, tree: OsTree, units: UnitSet, conf: dict) -> Update:
        tu = self.knowledge["transactional_update"]
        ev = [root.evidence()]
        for key in ("REBOOT_METHOD", "UPDATE_METHOD"):
            if conf["sources"].get(key, "default") != "default":
                ev.append(tree.evidence(conf["sources"][key], f"{key}={conf['values'][key]}"))
        timer = units.find(tu["timer"])
        if timer is not None:
            ev.append(tree.evidence(timer.path, "transactional-update timer", follow=False))
        slots = [UpdateSlot(f"#{s['number']}", [root.volume.number], self._snapshot_version(root, s), s is root.default)
                 for s in root.snapshots]
        return Update(mechanism="snapshots", agent=tu["agent"], slots=slots, rollback=tu["rollback"], evidence=ev,
                      extra={"atomic": True,
                             "timer_enabled": units.enablement(tu["timer"]).enabled if timer is not None else False,
                             "config": conf["values"]})

    def _snapshot_version(self, root: Root, snap: dict) -> str | None:
        sfs, ssub = self._view(root.fs, snap["subvol"])
        return (read_key_values(sfs, posixpath.join(ssub, _OS_RELEASE[0])) or {}).get("VERSION_ID")

    def _snapshot_row(self, root: Root, snap: dict) -> dict:
        return {"number": snap["number"], "subvolume": snap["subvol"], "version": self._snapshot_version(root, snap),
                "default": snap is root.default, "readonly": snap["readonly"], **self._info(root.fs, snap)}
