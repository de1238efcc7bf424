"""The running system of an ostree deployment: the tree and the mount table ostree-prepare-root
and the ostree system generator set up (https://github.com/ostreedev/ostree man/ostree-prepare-root.xml,
docs/var.md, docs/composefs.md): the default deployment is ``/`` (an immutable directory, or a
composefs overlay), its ``/usr`` bound read-only, its ``/etc`` writable, the stateroot's ``/var``
bound writable, the physical root at ``/sysroot`` (remounted read-only when configured).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.compose import add_enabled_mount_units, mount_fs, read_keyfile, resolve_lenient
from immutools.system.fstab import parse_fstab
from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

from .sysroot import Sysroot, truthy

_COMPOSEFS_ON = ("yes", "true", "1", "signed", "verity", "maybe")
_COMPOSEFS_REQUIRED = ("yes", "true", "1", "signed", "verity")


@dataclass
class Running:
    """The composed tree of the default deployment and what it is made of."""

    tree: OsTree
    dep_path: str | None
    stateroot: str | None
    var_dir: str | None
    cmdline: object | None                 # KernelCmdline of the default entry
    composefs: dict = field(default_factory=dict)
    readonly: bool | None = None
    fstab: list = field(default_factory=list)
    canonical: dict = field(default_factory=dict)      # id(fstab row) -> canonical target
    units: UnitSet | None = None
    skipped_units: list = field(default_factory=list)

    @property
    def fstab_targets(self) -> set[str]:
        return set(self.canonical.values())


def _fstab(tree: OsTree) -> list:
    try:
        if not tree.exists("/etc/fstab"):
            return []
        rows, _warnings = parse_fstab(tree.read_text("/etc/fstab", max_bytes=256 * 1024), "/etc/fstab")
        return rows
    except ImmutoolsError:
        return []


def composefs_state(knowledge: dict, tree: OsTree, phys: OsTree, dep_path: str) -> dict:
    """Whether the deployment boots through composefs (prepare-root.conf + the ``.ostree.cfs`` image)."""
    conf, where = None, None
    for path in knowledge["sysroot"]["prepare_root_conf"]:
        conf = read_keyfile(tree, path)
        if conf is not None:
            where = path
            break
    enabled = ((conf or {}).get("composefs") or {}).get("enabled")
    image = posixpath.join(dep_path, knowledge["sysroot"]["composefs_image"])
    present = phys.exists(image)
    value = (enabled or "").strip().lower()
    ev = []
    if where:
        ev.append(tree.evidence(where, f"[composefs] enabled={enabled}"))
    if present:
        ev.append(phys.evidence(image, "composefs image of the deployment"))
    elif value in _COMPOSEFS_REQUIRED:
        ev.append(evidence(f"{dep_path}/{knowledge['sysroot']['composefs_image']}",
                           "composefs enabled but the deployment has no composefs image", True))
    return {"configured": enabled, "image_present": present, "active": present and value in _COMPOSEFS_ON,
            "verity": value in ("signed", "verity"), "config_file": where,
            "prepare_root_sysroot_readonly": truthy(((conf or {}).get("sysroot") or {}).get("readonly")),
            "evidence": ev}


def compose_running(image: DiskImage, knowledge: dict, sysroot: Sysroot) -> Running:
    """Mount the default deployment at /, /sysroot, the stateroot's /var, /boot and fstab's mounts."""
    default = sysroot.default
    vol, sub = sysroot.volume, sysroot.subdir
    tree = OsTree(image.limits)
    dep_path = default["path"] if default else None
    if dep_path:
        mount_fs(tree, "/", image, vol, subdir=posixpath.join(sub, dep_path.lstrip("/")))
    mount_fs(tree, "/sysroot", image, vol, subdir=sub)
    stateroot = default["stateroot"] if default else None
    running = Running(tree, dep_path, stateroot, f"/ostree/deploy/{stateroot}/var" if stateroot else None,
                      default["cmdline"] if default else None)
    running.composefs = composefs_state(knowledge, tree, sysroot.tree, dep_path) if dep_path else {}
    running.readonly = truthy(sysroot.sysroot_config.get("readonly"))
    if running.readonly is None:
        running.readonly = running.composefs.get("prepare_root_sysroot_readonly")
    # systemd canonicalises mount points through symlinks (/home -> /var/home on ostree) and mounts
    # parents first
    rows = _fstab(tree)
    running.canonical = {id(row): resolve_lenient(tree, row.target) for row in rows}
    rows.sort(key=lambda row: (running.canonical[id(row)].count("/"), running.canonical[id(row)]))
    running.fstab = rows
    if running.var_dir and "/var" not in running.fstab_targets and sysroot.tree.exists(running.var_dir):
        mount_fs(tree, "/var", image, vol, subdir=posixpath.join(sub, running.var_dir.lstrip("/")))
    if sysroot.boot_volume is not None:
        mount_fs(tree, "/boot", image, sysroot.boot_volume)
    elif sysroot.tree.exists("/boot"):
        mount_fs(tree, "/boot", image, vol, subdir=posixpath.join(sub, "boot"))
    for row in rows:
        if row.target in ("/", "none") or row.fstype == "swap":
            continue
        match = resolve_source_match(row.source, image, running.cmdline)
        if match is None:
            continue
        subvol = row.option_value("subvol")
        mount_fs(tree, running.canonical[id(row)], image, match.volume, subdir="/" + subvol.strip("/") if subvol else "/")
    running.units = UnitSet(tree)
    return running


def _physical_source(sysroot: Sysroot) -> tuple[str, list[str]]:
    vol = sysroot.volume
    if vol.identity.label:
        source = f"LABEL={vol.identity.label}"
    elif vol.partition is not None and vol.partition.uuid:
        source = f"PARTUUID={vol.partition.uuid}"
    else:
        source = vol.describe()
    return source, ([f"subvol={sysroot.subdir.strip('/')}"] if sysroot.subdir != "/" else [])


def _deployment_mounts(table: MountTable, ref: str, sysroot: Sysroot, running: Running) -> None:
    vol, dep_path, composefs = sysroot.volume, running.dep_path, running.composefs
    root_ev = [evidence(f"{vol.describe()}: {dep_path}", "default deployment (highest-numbered boot entry)"),
               evidence(ref, "ostree-prepare-root: the deployment becomes /; ostree sets the immutable flag on its top directory", False)]
    if composefs.get("active"):
        table.add(MountEntry("/", "composefs", "overlay", ["ro"], access="ro", persistence="image",
                             integrity="composefs" + ("+fs-verity" if composefs.get("verity") else ""),
                             observed=False, kind="overlay", evidence=root_ev + composefs["evidence"]))
    else:
        table.add(MountEntry("/", f"/sysroot{dep_path}", vol.fstype, ["bind"], access="ro", kind="bind",
                             persistence="persistent", observed=False, evidence=root_ev + composefs.get("evidence", [])))
    table.add(MountEntry("/usr", f"/sysroot{dep_path}/usr", vol.fstype, ["bind", "ro"], observed=False,
                         evidence=[evidence(ref, "read-only bind mount of the deployment's /usr", False)]))
    table.add(MountEntry("/etc", f"/sysroot{dep_path}/etc", vol.fstype, ["bind", "rw"], observed=False,
                         evidence=[sysroot.tree.evidence(f"{dep_path}/etc", "the deployment's own /etc (3-way merged at each update)"),
                                   evidence(ref, "writable bind mount", False)]))


def mount_table(image: DiskImage, knowledge: dict, sysroot: Sysroot, running: Running, variant: dict) -> MountTable:
    """The mounts in mount order (man/ostree-prepare-root.xml; the FCOS boot-mount generator)."""
    ref = knowledge["sysroot"]["source_ref"]
    vol = sysroot.volume
    table = MountTable()
    phys_src, phys_opts = _physical_source(sysroot)
    table.add(MountEntry("/sysroot", phys_src, vol.fstype, ["rw"] + phys_opts, observed=False, volume=vol,
                         evidence=[evidence(f"{vol.describe()}", "physical root (holds /ostree)"),
                                   evidence(ref, "mounted by the initrd at /sysroot", False)]))
    if running.dep_path:
        _deployment_mounts(table, ref, sysroot, running)
    if running.var_dir and "/var" not in running.fstab_targets:
        table.add(MountEntry("/var", f"/sysroot{running.var_dir}", vol.fstype, ["bind", "rw"], observed=False,
                             evidence=[sysroot.tree.evidence(running.var_dir, "the stateroot's /var, shared by all its deployments"),
                                       evidence(ref, "ostree-system-generator var.mount", False)]))
    if running.readonly:
        conf = sysroot.sysroot_config
        repo_ev = sysroot.tree.evidence(knowledge["sysroot"]["repo_config"], f"[sysroot] readonly={conf.get('readonly')}") \
            if "readonly" in conf else None
        table.add(MountEntry("/sysroot", phys_src, vol.fstype, ["ro"] + phys_opts, observed=False, volume=vol,
                             evidence=[e for e in (repo_ev,) if e] + [evidence(ref, "remounted read-only after the binds", False)]))
    boot_conf = variant.get("boot_mount")
    if sysroot.boot_volume is not None and "/boot" not in running.fstab_targets and boot_conf:
        table.add(MountEntry("/boot", boot_conf["source"], boot_conf["fstype"], list(boot_conf["options"]), observed=False,
                             volume=sysroot.boot_volume,
                             evidence=[evidence(sysroot.boot_volume.describe(), "boot filesystem"),
                                       evidence(boot_conf["source_ref"], "mounted by a generator", False)]))
    for row in running.fstab:
        if row.target == "/" or row.fstype == "swap":
            continue
        entry = MountEntry.from_fstab(row, running.tree)
        canonical = running.canonical[id(row)]
        if canonical != entry.target:
            entry.evidence.append(evidence(f"{row.target} is a symbolic link", f"mounted at {canonical}"))
            entry.target = canonical
        match = resolve_source_match(row.source, image, running.cmdline)
        if match is not None:
            entry.volume = match.volume
            entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
        table.add(entry)
    running.skipped_units = add_enabled_mount_units(table, running.units, running.tree)
    return table
