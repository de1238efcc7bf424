"""The ostree sysroot on disk: the physical root, its boot loader entries and the deployments they
name (https://github.com/ostreedev/ostree docs/deployment.md, src/libostree/ostree-sysroot.c).

The physical root holds ``/ostree/repo`` and ``/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>``;
BLS entries (``/boot/loader/entries/ostree-<n>[-<stateroot>].conf``) name deployments through the
``ostree=`` kernel argument, and the highest-numbered entry is the default.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.cmdline import KernelCmdline
from immutools.system.compose import read_key_values, read_keyfile
from immutools.system.rootview import OsTree
from immutools.system.sdboot import read_loader

_DEPLOY_NAME = re.compile(r"^(?P<csum>[0-9a-f]{64})\.(?P<serial>\d+)$")
_OSTREE_KARG = re.compile(r"^/ostree/boot\.(?P<bootversion>[01])/(?P<stateroot>[^/]+)/(?P<bootcsum>[0-9a-f]{64})/(?P<serial>\d+)$")
_TITLE_VERSION = re.compile(r" (\S+) \(ostree(?::[^:)]+)?:\d+\)$")
_MAX_DEPLOYMENTS = 256
_MAX_ENTRIES = 256
_DEPLOYMENT_OS_RELEASE = ("/usr/lib/os-release", "/etc/os-release")


def truthy(value: str | None) -> bool | None:
    """A GKeyFile boolean (``true``/``1``/``yes``/``on``); None when unset."""
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Sysroot:
    """Where the ostree system lives on the disk and what its boot entries say."""

    volume: Volume                        # the physical root
    subdir: str                           # of it (a btrfs subvolume on Silverblue)
    tree: OsTree                          # the physical root alone
    boot_volume: Volume | None            # a separate /boot, when there is one
    boot_tree: OsTree                     # where loader/ lives
    boot_base: str                        # "/" on a separate /boot, else "/boot"
    repo_config: dict = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    loader: dict = field(default_factory=dict)
    deployments: list[dict] = field(default_factory=list)

    @property
    def default(self) -> dict | None:
        return next((d for d in self.deployments if d["default"]), None)

    @property
    def rollback(self) -> dict | None:
        return next((d for d in self.deployments if d["rollback"]), None)

    @property
    def sysroot_config(self) -> dict:
        return self.repo_config.get("sysroot", {})


def open_sysroot(image: DiskImage, knowledge: dict, physical: Volume, subdir: str, boot: Volume | None) -> Sysroot:
    phys = OsTree(image.limits)
    phys.mount("/", image.filesystem(physical), subdir=subdir, volume=physical)
    boot_fs = image.filesystem(boot) if boot is not None else None
    if boot_fs is not None:
        boot_tree = OsTree(image.limits)
        boot_tree.mount("/", boot_fs, volume=boot)
        boot_base = "/"
    else:
        boot, boot_tree, boot_base = None, phys, "/boot"
    sysroot = Sysroot(physical, subdir, phys, boot, boot_tree, boot_base,
                      read_keyfile(phys, knowledge["sysroot"]["repo_config"]) or {})
    read_entries(image, knowledge, sysroot)
    read_deployments(image, sysroot)
    return sysroot


def read_entries(image: DiskImage, knowledge: dict, sysroot: Sysroot) -> None:
    """ostree's boot loader entries, highest number (the default) first."""
    entry_re = re.compile(knowledge["sysroot"]["entry_pattern"])
    where_vol = sysroot.boot_volume or sysroot.volume
    info: dict = {"bootversion": None, "naming": None}
    sysroot.loader = info
    loader = posixpath.join(sysroot.boot_base, "loader")
    try:
        target = sysroot.boot_tree.readlink(loader)
        m = re.fullmatch(r"loader\.([01])", target.strip("/").split("/")[-1])
        info["bootversion"] = m.group(1) if m else None
        info["loader_link"] = target
    except ImmutoolsError:
        pass
    config = read_loader(sysroot.boot_tree, sysroot.boot_base)
    if config is None:
        return
    for w in config.warnings:
        image.warn(f"{where_vol.describe()}: {w}")
    kinds = set()
    for entry in config.entries[:_MAX_ENTRIES]:
        name = posixpath.basename(entry.path)
        m = entry_re.match(name)
        if not m:
            continue
        kinds.add("old" if m.group("stateroot") else "new")
        where = f"{where_vol.describe()}: {posixpath.join(sysroot.boot_base, 'loader', 'entries', name)}"
        cmdline = KernelCmdline(entry.options, where)
        karg = cmdline.get("ostree")
        km = _OSTREE_KARG.match(karg or "")
        base = posixpath.basename(entry.linux) if entry.linux else ""
        sysroot.entries.append({
            "file": name, "n": int(m.group("n")), "stateroot_in_name": m.group("stateroot"),
            "title": entry.title, "version_key": entry.version, "linux": entry.linux, "initrd": entry.initrd,
            "kernel": base[len("vmlinuz-"):] if base.startswith("vmlinuz-") else None,
            "cmdline": cmdline, "ostree_karg": karg, "karg_parts": km.groupdict() if km else None,
            "tries_left": entry.tries_left, "where": where,
        })
    sysroot.entries.sort(key=lambda e: -e["n"])
    naming = knowledge["sysroot"]["naming"]
    info["naming"] = naming["old"] if kinds == {"old"} else naming["new"] if kinds == {"new"} else ("mixed" if kinds else None)


def _deployment_version(phys: OsTree, path: str, title: str | None) -> tuple[str | None, str | None]:
    os_rel = next((r for r in (read_key_values(phys, path + rel) for rel in _DEPLOYMENT_OS_RELEASE) if r), None)
    version = (os_rel or {}).get("OSTREE_VERSION")
    if version:
        return version, "os-release OSTREE_VERSION"
    tm = _TITLE_VERSION.search(title or "")
    return (tm.group(1), "boot entry title") if tm else (None, None)


def read_deployments(image: DiskImage, sysroot: Sysroot) -> None:
    """The deployment each entry's ``ostree=`` argument leads to; the first is the default, the
    second the rollback (ostree-sysroot.c: deployments are listed in boot-entry order)."""
    phys = sysroot.tree
    for index, entry in enumerate(sysroot.entries):
        if entry["ostree_karg"] is None:
            image.warn(f"{entry['where']}: no ostree= kernel argument")
            continue
        try:
            path = phys.realpath(entry["ostree_karg"])
        except ImmutoolsError as exc:
            image.warn(f"{entry['where']}: ostree={entry['ostree_karg']} does not resolve on {sysroot.volume.describe()}: {exc}")
            continue
        parts = path.strip("/").split("/")
        m = _DEPLOY_NAME.match(parts[-1]) if len(parts) == 5 and parts[:2] == ["ostree", "deploy"] and parts[3] == "deploy" else None
        if m is None:
            image.warn(f"{entry['where']}: ostree={entry['ostree_karg']} leads to {path}, not a deployment directory")
            continue
        origin = read_keyfile(phys, path + ".origin") or {}
        version, version_from = _deployment_version(phys, path, entry["title"])
        ev = [evidence(entry["where"], f"ostree={entry['ostree_karg']}"),
              phys.evidence(entry["ostree_karg"], f"resolves to {path}")]
        if origin:
            ev.append(phys.evidence(path + ".origin", "origin keyfile"))
        sysroot.deployments.append({
            "index": index, "stateroot": parts[2], "checksum": m.group("csum"), "serial": int(m.group("serial")),
            "path": path, "version": version, "version_source": version_from,
            "default": index == 0, "rollback": index == 1, "staged": False,
            "pinned": truthy(origin.get("libostree-transient", {}).get("pinned")) is True,
            "origin": origin, "kernel": entry["kernel"], "boot_entry": entry["file"], "entry_number": entry["n"],
            "title": entry["title"], "bootcsum": (entry["karg_parts"] or {}).get("bootcsum"),
            "cmdline": entry["cmdline"], "evidence": ev,
        })


def unreferenced_deployments(knowledge: dict, sysroot: Sysroot) -> list[dict]:
    """Deployment directories no boot entry names: a staged deployment (finalized at shutdown; its
    state lives in /run) or a leftover the next cleanup removes (ostree docs/deployment.md)."""
    seen = {d["path"] for d in sysroot.deployments}
    out = []
    deploy = knowledge["sysroot"]["deploy_dir"]
    phys = sysroot.tree
    try:
        roots = phys.listdir(deploy)[:_MAX_DEPLOYMENTS]
    except ImmutoolsError:
        return out
    for stateroot in roots:
        base = f"{deploy}/{stateroot}/deploy"
        try:
            names = phys.listdir(base)[:_MAX_DEPLOYMENTS]
        except ImmutoolsError:
            continue
        for name in names:
            m = _DEPLOY_NAME.match(name)
            path = f"{base}/{name}"
            if m and path not in seen:
                out.append({"stateroot": stateroot, "checksum": m.group("csum"), "serial": int(m.group("serial")),
                            "path": path, "evidence": [phys.evidence(path, "deployment directory with no boot entry")]})
    return out


def public_deployment(d: dict) -> dict:
    """A deployment row for the report (no parsed objects)."""
    origin = d.get("origin") or {}
    packages = origin.get("packages", {})
    return {
        "index": d["index"], "stateroot": d["stateroot"], "checksum": d["checksum"], "serial": d["serial"],
        "version": d["version"], "version_source": d["version_source"], "default": d["default"],
        "rollback": d["rollback"], "pinned": d["pinned"], "staged": d["staged"], "kernel": d["kernel"],
        "boot_entry": d["boot_entry"], "title": d["title"], "path": d["path"],
        "refspec": origin.get("origin", {}).get("refspec") or origin.get("origin", {}).get("baserefspec"),
        "container_image_reference": origin.get("origin", {}).get("container-image-reference"),
        "layered_packages": [p for p in (packages.get("requested") or "").split(";") if p.strip()],
        "kernel_cmdline": d["cmdline"].text if d.get("cmdline") is not None else None,
        "evidence": d["evidence"],
    }


def etc_changes(phys: OsTree, dep_path: str, limit: int = 5000) -> dict:
    """What the deployment's /etc holds beyond its defaults in /usr/etc: the local state the 3-way
    merge carries to the next deployment (ostree docs/deployment.md, "/etc")."""
    added, modified = [], []
    count = 0
    etc, defaults = f"{dep_path}/etc", f"{dep_path}/usr/etc"
    try:
        for entry in phys.walk(etc):
            count += 1
            if count > limit:
                break
            rel = entry.path[len(etc):]
            if entry.stat.is_dir:
                continue
            other = defaults + rel
            try:
                ost = phys.lstat(other)
            except ImmutoolsError:
                added.append(rel)
                continue
            if entry.stat.is_symlink or ost.is_symlink:
                if not (entry.stat.is_symlink and ost.is_symlink and phys.readlink(entry.path) == phys.readlink(other)):
                    modified.append(rel)
            elif entry.stat.size != ost.size or phys.read(entry.path, max_bytes=1 << 20) != phys.read(other, max_bytes=1 << 20):
                modified.append(rel)
    except ImmutoolsError:
        pass
    return {"added": sorted(added), "modified": sorted(modified)}
