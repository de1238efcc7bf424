"""Ubuntu Core 20+ (and the UC16/18 ``writable`` layout): everything is a snap.

``/`` is the read-only squashfs of the base snap (``core24_<rev>.snap``) named in
``ubuntu-data/system-data/var/lib/snapd/modeenv``; ``/writable`` is ubuntu-data; the paths the base
lists in ``/etc/system-image/writable-paths`` are bind-mounted writable from ``/writable`` (or are
tmpfs when marked temporary). Updates install new snap revisions beside the old ones and boot
them in "try" mode; a failed boot falls back to the previous revision. Facts:
``data/distributions/ubuntu-core.yaml`` (citing shared/reference/ostree-and-others.md §7).
"""

from __future__ import annotations

import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import mount_fs, read_key_values, weighted_confidence
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence

_SNAP_FILE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)_(?P<rev>x?\d+)\.snap$")
_MAX_SNAPS = 4096
_MAX_WRITABLE_PATHS = 512


class UbuntuCoreCollector(Collector):
    name = "ubuntu-core"

    def __init__(self):
        self.k = load_distribution("ubuntu-core")

    def _vol(self, image: DiskImage, role: str):
        label = self.k["partitions"][role]
        return image.volume(label=label) or next((v for v in image.volumes if v.identity.label == label), None)

    def _data(self, image: DiskImage):
        vol = self._vol(image, "data") or next((v for v in image.volumes if v.identity.label == self.k["legacy_data_label"]), None)
        return vol, (image.filesystem(vol) if vol is not None else None)

    def _snap_fs(self, image: DiskImage, fs, path: str):
        """The squashfs of a snap file, opened from inside its filesystem."""
        from immutools.fs import open_filesystem

        try:
            return open_filesystem(fs.open_source(path), "squashfs", limits=image.limits)
        except (ImmutoolsError, OSError, ValueError) as exc:
            image.warn(f"{path}: cannot read the snap as squashfs: {exc}")
            return None

    def detect(self, image: DiskImage) -> Detection:
        hits, ev = [], []
        seed = self._vol(image, "seed")
        if seed is not None and seed.type_key == "esp":
            hits.append("seed_label")
            ev.append(evidence(f"{seed.describe()}: GPT entry", "ubuntu-seed (ESP type)"))
        if all(self._vol(image, r) is not None for r in ("boot", "data")):
            hits.append("run_partitions")
        data, fs = self._data(image)
        if fs is not None:
            modeenv = read_key_values(fs, self.k["data"]["modeenv"])
            if modeenv:
                hits.append("modeenv")
                ev.append(evidence(f"{data.describe()}: {self.k['data']['modeenv']}", "snapd modeenv"))
                base = modeenv.get("base")
                if base:
                    bfs = self._snap_fs(image, fs, f"{self.k['data']['snaps']}/{base}")
                    rel = read_key_values(bfs, "/usr/lib/os-release") if bfs is not None else None
                    if rel and rel.get("ID") == self.k["os_release_id"]:
                        hits.append("os_release_id")
                        ev.append(evidence(f"{data.describe()}: {self.k['data']['snaps']}/{base}: /usr/lib/os-release",
                                           f"os-release ID={rel['ID']}"))
        if not hits:
            return Detection(self.name, 0.0)
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev)

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.collectors.generic import arch_from_tree
        from immutools.system.mounts import MountEntry, MountTable, path_rows
        from immutools.system.rootview import OsTree
        from immutools.system.surface import inventory
        from immutools.system.units import UnitSet

        k = self.k
        data, dfs = self._data(image)
        modeenv = read_key_values(dfs, k["data"]["modeenv"]) if dfs is not None else None
        modeenv = modeenv or {}
        mode_ev = evidence(f"{data.describe()}: {k['data']['modeenv']}", "snapd modeenv") if modeenv else None
        snaps = self._revisions(dfs)
        base_file = modeenv.get("base")
        base_fs = self._snap_fs(image, dfs, f"{k['data']['snaps']}/{base_file}") if base_file and dfs is not None else None

        # --- the running tree: base snap at /, ubuntu-data at /writable, writable paths ------------
        tree = OsTree(image.limits)
        if base_fs is not None:
            tree.mount("/", base_fs, label=f"{data.describe()}: {k['data']['snaps']}/{base_file}")
        mount_fs(tree, "/writable", image, data)
        for role in ("seed", "boot", "save"):
            mount_fs(tree, k["run_mounts"][role], image, self._vol(image, role))
        writable = self._writable_paths(tree) if base_fs is not None else []
        table = MountTable()
        base_src = f"/writable{k['data']['snaps']}/{base_file}" if base_file else None
        table.add(MountEntry("/", base_src, "squashfs", ["ro"], observed=False,
                             evidence=[e for e in (mode_ev,) if e] + [evidence(k["source_ref"], "the base snap is mounted as / by snap-bootstrap", False)]))
        if data is not None:
            table.add(MountEntry("/writable", f"LABEL={data.identity.label}", data.fstype, ["rw"], observed=False, volume=data,
                                 evidence=[evidence(f"{data.describe()}", "ubuntu-data"), evidence(k["source_ref"], "mounted at /run/mnt/data and /writable", False)]))
        for role in ("seed", "boot", "save"):
            vol = self._vol(image, role)
            if vol is not None:
                table.add(MountEntry(k["run_mounts"][role], f"LABEL={vol.identity.label}", vol.fstype, ["rw"], observed=False, volume=vol,
                                     evidence=[evidence(vol.describe(), k["partitions"][role]), evidence(k["source_ref"], "mounted by snap-bootstrap", False)]))
        for row in writable:
            if row["kind"] == "temporary":
                table.add(MountEntry(row["path"], "tmpfs", "tmpfs", ["rw"], observed=False, evidence=[row["evidence"]]))
            else:
                src = "/writable" + (k["data"]["user_data"] if row["where"] == "user-data" else k["data"]["system_data"] + row["path"])
                table.add(MountEntry(row["path"], src, None, ["bind", "rw"], observed=False, evidence=[row["evidence"]]))
                sub = "/user-data" if row["where"] == "user-data" else k["data"]["system_data"] + row["path"]
                if dfs is not None and dfs.exists(sub) and dfs.stat(sub).is_dir:
                    mount_fs(tree, row["path"], image, data, subdir=sub)
        if table.get("/run") is None:
            table.add(MountEntry("/run", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=755"], observed=False,
                                 evidence=[evidence("systemd API filesystems", "/run is a tmpfs", False)]))
        units = UnitSet(tree)
        paths = path_rows(table, resolve=lambda p: p)
        surface = inventory(tree, None, units).to_report()

        # --- update: snap revisions, try/fallback ----------------------------------------------------
        boot = self._vol(image, "boot")
        bfs = image.filesystem(boot) if boot is not None else None
        grubenv = self._grubenv(bfs, k["boot"]["grubenv"]) if bfs is not None else {}
        kernel_link = None
        try_kernel = False
        if bfs is not None:
            try:
                kernel_link = bfs.readlink(k["boot"]["kernel"]) if bfs.exists(k["boot"]["kernel"], follow=False) else None
                try_kernel = bfs.exists(k["boot"]["try_kernel"], follow=False)
            except ImmutoolsError:
                pass
        base_name = _SNAP_FILE.match(base_file).group("name") if base_file and _SNAP_FILE.match(base_file) else None
        kernel_file = (modeenv.get("current_kernels") or "").split(",")[0] or None
        kernel_name = _SNAP_FILE.match(kernel_file).group("name") if kernel_file and _SNAP_FILE.match(kernel_file) else None
        slots = []
        for name, current in ((base_name, base_file), (kernel_name, kernel_file)):
            for rev in snaps.get(name, []):
                slots.append({"name": f"{name} r{rev}", "partitions": [data.number] if data else [], "version": rev,
                              "active": f"{name}_{rev}.snap" == current, "priority": None, "tries": None, "successful": None})
        upd_ev = [e for e in (mode_ev,) if e]
        if bfs is not None and grubenv:
            upd_ev.append(evidence(f"{boot.describe()}: {k['boot']['grubenv']}", f"kernel_status={grubenv.get('kernel_status', '')}"))
        update = {
            "mechanism": "snap-revisions", "agent": "snapd", "channel": None, "server": None, "active_slot": None,
            "slots": slots, "atomic": True, "rollback": k["rollback"],
            "try_base": modeenv.get("try_base"), "kernel_status": grubenv.get("kernel_status"), "try_kernel": try_kernel,
            "evidence": upd_ev,
        }
        rel = read_key_values(tree, "/usr/lib/os-release") or read_key_values(tree, "/etc/os-release") or {}
        arch, arch_ev = arch_from_tree(tree)
        os_section = {
            "id": rel.get("ID"), "name": rel.get("NAME"), "version": rel.get("VERSION_ID"), "variant": rel.get("VARIANT_ID"),
            "arch": arch, "pretty_name": rel.get("PRETTY_NAME"), "build_id": rel.get("BUILD_ID"),
            "evidence": ([tree.evidence("/usr/lib/os-release", "os-release of the base snap")] if rel else []) + ([arch_ev] if arch_ev else []),
        }
        distribution = {
            "name": "ubuntu-core",
            "mode": modeenv.get("mode"),
            "base": base_file,
            "kernel": kernel_file,
            "gadget": modeenv.get("gadget"),
            "model": modeenv.get("model"),
            "grade": modeenv.get("grade"),
            "recovery_system": modeenv.get("recovery_system"),
            "kernel_status": grubenv.get("kernel_status"),
            "kernel_efi_link": kernel_link,
            "base_revisions": snaps.get(base_name, []) if base_name else [],
            "kernel_revisions": snaps.get(kernel_name, []) if kernel_name else [],
            "snaps": snaps,
            "writable_paths": [{kk: vv for kk, vv in w.items() if kk != "evidence"} for w in writable],
            "encrypted": any((v.identity.label or "").endswith(k["encrypted_suffix"]) for v in image.volumes) or
                         any(v.fstype == "luks" for v in image.volumes),
        }
        return {"os": os_section, "mounts": table.to_report(), "paths": paths, "update": update,
                "integrity": {"verity": False, "root_hash": None, "hash_location": None, "verified": None, "evidence": []},
                "surface": surface, "distribution": distribution}

    # ------------------------------------------------------------------------------- pieces
    def _revisions(self, fs) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if fs is None:
            return out
        try:
            names = fs.listdir(self.k["data"]["snaps"])[:_MAX_SNAPS]
        except ImmutoolsError:
            return out
        for name in names:
            m = _SNAP_FILE.match(name)
            if m:
                out.setdefault(m.group("name"), []).append(m.group("rev"))
        for revs in out.values():
            revs.sort(key=lambda r: (r.startswith("x"), int(r.lstrip("x"))))
        return out

    def _writable_paths(self, tree) -> list[dict]:
        """``/etc/system-image/writable-paths``: path, where, persistent|synced|temporary, ..."""
        path = self.k["writable_paths"]
        out = []
        try:
            if not tree.exists(path):
                return out
            text = tree.read_text(path, max_bytes=256 * 1024)
        except ImmutoolsError:
            return out
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if len(words) < 3 or not words[0].startswith("/"):
                continue
            out.append({"path": words[0], "where": words[1], "kind": words[2], "line": number,
                        "evidence": tree.evidence(path, f"line {number}: {' '.join(words[:3])}")})
            if len(out) >= _MAX_WRITABLE_PATHS:
                break
        return out

    @staticmethod
    def _grubenv(fs, path: str) -> dict:
        try:
            if not fs.exists(path):
                return {}
            text = fs.read_text(path, max_bytes=64 * 1024)
        except ImmutoolsError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
        return out
