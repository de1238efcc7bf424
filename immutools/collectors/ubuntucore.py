"""Ubuntu Core 20+ (and the UC16/18 ``writable`` layout): everything is a snap.

``/`` is the read-only squashfs of the base snap (``core24_<rev>.snap``) named in
``ubuntu-data/system-data/var/lib/snapd/modeenv``; ``/writable`` is ubuntu-data; the paths the base
lists in ``/etc/system-image/writable-paths`` are bind-mounted writable from ``/writable`` (or are
tmpfs when marked temporary). Updates install new snap revisions beside the old ones and boot
them in "try" mode; a failed boot falls back to the previous revision. Facts:
``data/distributions/ubuntu-core.yaml`` (upstream sources cited there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.fs import open_filesystem
from immutools.report.model import Findings, Integrity, OsIdentity, Update, UpdateSlot, evidence
from immutools.system.compose import arch_from_tree, finish, mount_fs, read_key_values
from immutools.system.mounts import MountEntry, MountTable
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

_SNAP_FILE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)_(?P<rev>x?\d+)\.snap$")
_MAX_SNAPS = 4096
_MAX_WRITABLE_PATHS = 512
_OS_RELEASE = ("/usr/lib/os-release", "/etc/os-release")


def _snap_name(file: str | None) -> str | None:
    m = _SNAP_FILE.match(file or "")
    return m.group("name") if m else None


@dataclass
class Data:
    """ubuntu-data: snapd's modeenv and the snap revisions it holds."""

    volume: Volume | None
    fs: object | None
    modeenv: dict = field(default_factory=dict)
    modeenv_evidence: dict | None = None
    snaps: dict = field(default_factory=dict)           # snap name -> revisions

    booted_base: str | None = None                      # the base snap-bootstrap mounts at the next boot
    base_note: dict | None = None                       # why, when it is not modeenv's base=

    @property
    def base(self) -> str | None:
        return self.booted_base or self.modeenv.get("base")

    @property
    def kernel(self) -> str | None:
        return (self.modeenv.get("current_kernels") or "").split(",")[0] or None


class UbuntuCoreCollector(Collector):
    name = "ubuntu-core"
    distribution = "ubuntu-core"

    def _vol(self, image: DiskImage, role: str):
        label = self.knowledge["partitions"][role]
        return image.volume(label=label) or next((v for v in image.volumes if v.identity.label == label), None)

    def _data(self, image: DiskImage):
        vol = self._vol(image, "data") or next(
            (v for v in image.volumes if v.identity.label == self.knowledge["legacy_data_label"]), None)
        return vol, (image.filesystem(vol) if vol is not None else None)

    def _snap_fs(self, image: DiskImage, fs, path: str):
        """The squashfs of a snap file, opened from inside its filesystem."""
        try:
            return open_filesystem(fs.open_source(path), "squashfs", limits=image.limits)
        except (ImmutoolsError, OSError, ValueError) as exc:
            image.warn(f"{path}: cannot read the snap as squashfs: {exc}")
            return None

    def detect(self, image: DiskImage) -> Detection:
        k = self.knowledge
        hits, ev = [], []
        seed = self._vol(image, "seed")
        if seed is not None and seed.type_key == "esp":
            hits.append("seed_label")
            ev.append(evidence(f"{seed.describe()}: GPT entry", f"{k['partitions']['seed']} (ESP type)"))
        if all(self._vol(image, r) is not None for r in ("boot", "data")):
            hits.append("run_partitions")
        data, fs = self._data(image)
        if fs is not None:
            modeenv = read_key_values(fs, k["data"]["modeenv"])
            if modeenv:
                hits.append("modeenv")
                ev.append(evidence(f"{data.describe()}: {k['data']['modeenv']}", "snapd modeenv"))
                base = modeenv.get("base")
                if base:
                    bfs = self._snap_fs(image, fs, f"{k['data']['snaps']}/{base}")
                    rel = read_key_values(bfs, _OS_RELEASE[0]) if bfs is not None else None
                    if rel and rel.get("ID") == k["os_release_id"]:
                        hits.append("os_release_id")
                        ev.append(evidence(f"{data.describe()}: {k['data']['snaps']}/{base}: {_OS_RELEASE[0]}",
                                           f"os-release ID={rel['ID']}"))
        if not hits:
            return Detection(self.name, 0.0)
        return Detection(self.name, weighted_confidence(k["detect"], hits), ev)

    # ------------------------------------------------------------------------------- gather
    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        k = self.knowledge
        vol, dfs = self._data(image)
        data = Data(vol, dfs)
        if dfs is not None:
            data.modeenv = read_key_values(dfs, k["data"]["modeenv"]) or {}
            data.snaps = self._revisions(dfs)
        if data.modeenv:
            data.modeenv_evidence = evidence(f"{vol.describe()}: {k['data']['modeenv']}", "snapd modeenv")
            self._select_base(image, data)
        else:
            findings.explain("mount /", f"no snapd modeenv ({k['data']['modeenv']}) names the base snap")
        base_fs = self._snap_fs(image, dfs, f"{k['data']['snaps']}/{data.base}") if data.base and dfs is not None else None
        tree = OsTree(image.limits)
        if base_fs is not None:
            tree.mount("/", base_fs, label=f"{vol.describe()}: {k['data']['snaps']}/{data.base}")
        mount_fs(tree, "/writable", image, vol)
        for role in ("seed", "boot", "save"):
            mount_fs(tree, k["run_mounts"][role], image, self._vol(image, role))
        findings.os = self._os(tree)
        findings.integrity = Integrity.none()
        writable = self._writable_paths(tree) if base_fs is not None else []
        table = self._mount_table(image, data, tree, writable)
        units = UnitSet(tree)
        finish(image, findings, k, table, tree, units=units, resolve=lambda p: p)
        findings.update, boot_state = self._update(image, data)
        findings.distribution = {
            "name": "ubuntu-core",
            "mode": data.modeenv.get("mode"),
            "base": data.base,
            "kernel": data.kernel,
            "gadget": data.modeenv.get("gadget"),
            "model": data.modeenv.get("model"),
            "grade": data.modeenv.get("grade"),
            "recovery_system": data.modeenv.get("recovery_system"),
            "kernel_status": boot_state["grubenv"].get("kernel_status"),
            "kernel_efi_link": boot_state["kernel_link"],
            "base_revisions": data.snaps.get(_snap_name(data.base), []) if _snap_name(data.base) else [],
            "kernel_revisions": data.snaps.get(_snap_name(data.kernel), []) if _snap_name(data.kernel) else [],
            "snaps": data.snaps,
            "writable_paths": [{kk: vv for kk, vv in w.items() if kk != "evidence"} for w in writable],
            "encrypted": any((v.identity.label or "").endswith(k["encrypted_suffix"]) for v in image.volumes) or
                         any(v.fstype == "luks" for v in image.volumes),
        }

    def _os(self, tree: OsTree) -> OsIdentity:
        for path in _OS_RELEASE:
            rel = read_key_values(tree, path)
            if rel:
                ident = OsIdentity.from_os_release(rel, tree.evidence(path, "os-release of the base snap"))
                ident.name = rel.get("NAME")
                break
        else:
            ident = OsIdentity()
        ident.arch, arch_ev = arch_from_tree(tree)
        ident.add_evidence(arch_ev)
        return ident

    def _mount_table(self, image: DiskImage, data: Data, tree: OsTree, writable: list[dict]) -> MountTable:
        """snap-bootstrap's mounts: the base snap at /, the run partitions, /writable, then the
        writable paths (binds from system-data, or tmpfs when temporary)."""
        k = self.knowledge
        ref = k["source_ref"]
        table = MountTable()
        base_src = f"/writable{k['data']['snaps']}/{data.base}" if data.base else None
        table.add(MountEntry("/", base_src, "squashfs", ["ro"], observed=False,
                             evidence=[e for e in (data.modeenv_evidence, data.base_note) if e]
                             + [evidence(ref, "the base snap is mounted as / by snap-bootstrap", False)]))
        vol = data.volume
        if vol is not None:
            table.add(MountEntry("/writable", f"LABEL={vol.identity.label}", vol.fstype, ["rw"], observed=False, volume=vol,
                                 evidence=[evidence(f"{vol.describe()}", k["partitions"]["data"]),
                                           evidence(ref, f"mounted at {k['run_mounts']['data']} and /writable", False)]))
        for role in ("seed", "boot", "save"):
            rvol = self._vol(image, role)
            if rvol is not None:
                table.add(MountEntry(k["run_mounts"][role], f"LABEL={rvol.identity.label}", rvol.fstype, ["rw"], observed=False,
                                     volume=rvol, evidence=[evidence(rvol.describe(), k["partitions"][role]),
                                                            evidence(ref, "mounted by snap-bootstrap", False)]))
        for row in writable:
            if row["kind"] == "temporary":
                table.add(MountEntry(row["path"], "tmpfs", "tmpfs", ["rw"], observed=False, evidence=[row["evidence"]]))
                continue
            sub = k["data"]["user_data"] if row["where"] == "user-data" else k["data"]["system_data"] + row["path"]
            table.add(MountEntry(row["path"], "/writable" + sub, None, ["bind", "rw"], observed=False, evidence=[row["evidence"]]))
            if data.fs is not None and data.fs.exists(sub) and data.fs.stat(sub).is_dir:
                mount_fs(tree, row["path"], image, vol, subdir=sub)
        return table

    def _update(self, image: DiskImage, data: Data) -> tuple[Update, dict]:
        """Snap revisions as slots; the try/fallback state from grubenv and the EFI kernel links."""
        k = self.knowledge
        boot = self._vol(image, "boot")
        bfs = image.filesystem(boot) if boot is not None else None
        state = {"grubenv": self._grubenv(bfs, k["boot"]["grubenv"]) if bfs is not None else {},
                 "kernel_link": None, "try_kernel": False}
        if bfs is not None:
            try:
                if bfs.exists(k["boot"]["kernel"], follow=False):
                    state["kernel_link"] = bfs.readlink(k["boot"]["kernel"])
                state["try_kernel"] = bfs.exists(k["boot"]["try_kernel"], follow=False)
            except ImmutoolsError:
                pass
        slots = []
        for current in (data.base, data.kernel):
            name = _snap_name(current)
            for rev in data.snaps.get(name, []):
                slots.append(UpdateSlot(f"{name} r{rev}", [data.volume.number] if data.volume else [], rev,
                                        f"{name}_{rev}.snap" == current))
        ev = [e for e in (data.modeenv_evidence,) if e]
        if bfs is not None and state["grubenv"]:
            ev.append(evidence(f"{boot.describe()}: {k['boot']['grubenv']}", f"kernel_status={state['grubenv'].get('kernel_status', '')}"))
        update = Update(mechanism="snap-revisions", agent="snapd", slots=slots, rollback=k["rollback"], evidence=ev,
                        extra={"atomic": True, "try_base": data.modeenv.get("try_base"),
                               "base_status": data.modeenv.get("base_status") or None,
                               "kernel_status": state["grubenv"].get("kernel_status"), "try_kernel": state["try_kernel"]})
        return update, state

    # ------------------------------------------------------------------------------- pieces
    def _select_base(self, image: DiskImage, data: Data) -> None:
        """The base snap-bootstrap mounts (snapd boot/bootstate20.go, bootState20Base
        selectAndCommitSnapInitramfsMount; boot/modeenv.go keys try_base, base_status): with
        base_status=try it boots try_base (and writes "trying"); "trying" means that try never
        finished, so it falls back to base=."""
        status, trying = data.modeenv.get("base_status", ""), data.modeenv.get("try_base")
        where = f"{data.volume.describe()}: {self.knowledge['data']['modeenv']}"
        if status == "try" and trying:
            path = f"{self.knowledge['data']['snaps']}/{trying}"
            try:
                present = data.fs is not None and data.fs.exists(path)
            except ImmutoolsError:
                present = False
            if present:
                data.booted_base = trying
                data.base_note = evidence(where, f"base_status=try: the next boot tries {trying} (base={data.modeenv.get('base')} "
                                                 "stays the fallback)", False)
            else:
                data.base_note = evidence(where, f"base_status=try but {path} is missing: snap-bootstrap falls back to "
                                                 f"base={data.modeenv.get('base')}", False)
                image.warn(f"{where}: try_base={trying} is not in {self.knowledge['data']['snaps']}: the try falls back "
                           f"to base={data.modeenv.get('base')}")
        elif status == "trying" and trying:
            data.base_note = evidence(where, f"base_status=trying: the try of {trying} did not finish, snap-bootstrap "
                                             f"falls back to base={data.modeenv.get('base')}", False)

    def _revisions(self, fs) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if fs is None:
            return out
        try:
            names = fs.listdir(self.knowledge["data"]["snaps"])[:_MAX_SNAPS]
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
        path = self.knowledge["writable_paths"]
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
