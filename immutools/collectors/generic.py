"""Fallback for any Linux image, and the shared view of a conventionally installed system.

The OS identity comes from the os-release of the filesystem holding the root; the architecture
from an architecture-specific partition type or a binary's ELF header. The root is composed with
its /etc/fstab mounts and enabled mount units (``compose_system``), which gives the mount table,
the path states and the surface inventory; a package database makes the update mechanism
``package-manager``. Distribution collectors for package-managed systems reuse these pieces."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from immutools.collectors.base import Collector, Detection
from immutools.disk import DiskImage
from immutools.elf import elf_arch
from immutools.errors import ImmutoolsError
from immutools.osrelease import OS_RELEASE_PATHS, parse_os_release
from immutools.report.model import evidence
from immutools.volumes.types import lookup_type_entry

# DPS architecture names (as in data/partition_types.yaml) -> the report's arch vocabulary.
_DPS_ARCH = {"x86-64": "x86_64", "arm64": "aarch64", "x86": "i386", "arm": "arm", "riscv64": "riscv64",
             "ppc64": "ppc64", "ppc64-le": "ppc64", "s390x": "s390x"}

# Binaries whose ELF header tells the architecture; relative to a root fs or a /usr fs.
_ARCH_PROBES = ("/usr/bin/env", "/bin/sh", "/usr/bin/bash", "/bin/env", "/sbin/init", "/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/init")


def find_os_release(image: DiskImage):
    """Yield (volume, path, parsed) for every os-release file found, in partition order."""
    for vol, fs in image.filesystems():
        for path in OS_RELEASE_PATHS:
            try:
                if not fs.exists(path):
                    continue
                text = fs.read_text(path, max_bytes=64 * 1024)
            except ImmutoolsError as exc:
                image.warn(f"{vol.describe()}: {path}: unreadable: {exc}")
                continue
            parsed = parse_os_release(text)
            if parsed:
                yield vol, path, parsed
                break


def detect_arch(image: DiskImage, volumes=None) -> tuple[str | None, dict | None]:
    """Architecture from partition types first (DPS types are per-arch), then ELF headers."""
    for vol in image.volumes:
        part = vol.partition
        entry = lookup_type_entry(part.type_guid) if part and part.type_guid else None
        arch = _DPS_ARCH.get(entry.arch) if entry is not None and entry.arch else None
        if arch:
            return arch, evidence(f"{vol.describe()}: partition type {part.type_guid}", f"architecture-specific type {part.type_name}")
    for vol, fs in image.filesystems():
        if volumes is not None and vol not in volumes:
            continue
        for path in _ARCH_PROBES:
            try:
                if fs.exists(path) and fs.stat(path).is_file:
                    arch = elf_arch(fs.read(path, 0, 64))
                    if arch:
                        return arch, evidence(f"{vol.describe()}: {path}", "ELF header e_machine")
            except ImmutoolsError:
                continue
    return None, None


def arch_from_tree(tree) -> tuple[str | None, dict | None]:
    """Architecture from the ELF header of a well-known binary in a composed OS tree."""
    for path in _ARCH_PROBES:
        try:
            if tree.exists(path) and tree.stat(path).is_file:
                arch = elf_arch(tree.read(path, 0, 64))
                if arch:
                    return arch, tree.evidence(path, "ELF header e_machine")
        except ImmutoolsError:
            continue
    return None, None


# ------------------------------------------------------------------------------------------------
# A traditional (mutable) Linux system: one root filesystem, /etc/fstab, units. Shared by the
# generic fallback and the collectors of package-managed distributions (Debian, ...).
# ------------------------------------------------------------------------------------------------

# btrfs layouts that keep the root in a subvolume below the top level (Ubuntu/openSUSE "@", Fedora "root")
ROOT_SUBDIRS = ("/", "/@", "/root", "/@root")
DOCUMENTED_RUN = {"target": "/run", "source": "tmpfs", "fstype": "tmpfs", "options": ["nosuid", "nodev", "mode=755"],
                  "source_ref": "systemd API filesystems (mount-setup.c): /run is a tmpfs"}


@dataclass
class SystemView:
    """A composed view of a conventionally installed system: what is mounted where, and why."""

    root_volume: object
    root_subdir: str
    tree: object                                   # immutools.system.rootview.OsTree
    table: object                                  # immutools.system.mounts.MountTable
    units: object                                  # immutools.system.units.UnitSet
    fstab: list = field(default_factory=list)      # FstabEntry rows
    fstab_where: str | None = None
    skipped_units: list = field(default_factory=list)
    unresolved: list = field(default_factory=list)


def find_root(image: DiskImage):
    """(volume, subdir, os-release path, parsed) of the filesystem holding the OS root: one with
    os-release below /etc or /usr/lib and, preferably, an /etc/fstab. None when there is none."""
    best = None
    for vol, fs in image.filesystems():
        subdirs = ROOT_SUBDIRS if vol.fstype == "btrfs" else ("/",)
        for sub in subdirs:
            for path in OS_RELEASE_PATHS[:2]:
                full = posixpath.join(sub, path.lstrip("/"))
                try:
                    if not fs.exists(full):
                        continue
                    parsed = parse_os_release(fs.read_text(full, max_bytes=64 * 1024))
                    has_fstab = fs.exists(posixpath.join(sub, "etc/fstab"))
                except ImmutoolsError as exc:
                    image.warn(f"{vol.describe()}: {full}: unreadable: {exc}")
                    continue
                if not parsed:
                    continue
                if has_fstab:
                    return vol, sub, full, parsed
                if best is None:
                    best = (vol, sub, full, parsed)
                break
    return best


def compose_system(image: DiskImage, root_vol, subdir: str = "/", cmdline=None) -> SystemView:
    """Mount the root filesystem at /, then every /etc/fstab entry the image can resolve (mount
    points canonicalised through symlinks, parents first), and build the mount table: fstab rows
    (observed), enabled mount units whose path conditions hold, and /run (documented)."""
    from immutools.collectors.common import mount_fs, resolve_lenient, unit_path_conditions_fail
    from immutools.system.fstab import parse_fstab
    from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
    from immutools.system.rootview import OsTree
    from immutools.system.units import UnitSet

    tree = OsTree(image.limits)
    mount_fs(tree, "/", image, root_vol, subdir=subdir)
    rows, where = [], None
    try:
        if tree.exists("/etc/fstab"):
            where = "/etc/fstab"
            rows, warnings = parse_fstab(tree.read_text(where, max_bytes=256 * 1024), where)
            for w in warnings:
                image.warn(f"{tree.source_of(where)}: {w}")
    except ImmutoolsError as exc:
        image.warn(f"/etc/fstab unreadable: {exc}")
    canonical = {id(r): (resolve_lenient(tree, r.target) if r.target.startswith("/") else r.target) for r in rows}
    rows = sorted(rows, key=lambda r: (canonical[id(r)].count("/"), canonical[id(r)]) if canonical[id(r)] != "/" else (-1, "/"))
    view = SystemView(root_vol, subdir, tree, MountTable(), None, rows, where)
    matches = {}
    for row in rows:
        if row.fstype == "swap" or not row.target.startswith("/"):
            continue
        match = resolve_source_match(row.source, image, cmdline)
        matches[id(row)] = match
        if match is None:
            view.unresolved.append(f"{row.source} ({row.target})")
            continue
        if canonical[id(row)] == "/":
            continue
        subvol = row.option_value("subvol")
        mount_fs(tree, canonical[id(row)], image, match.volume, subdir="/" + subvol.strip("/") if subvol else "/")
    view.units = UnitSet(tree)
    table = view.table
    root_row = next((r for r in rows if canonical[id(r)] == "/"), None)
    if root_row is not None:
        entry = MountEntry.from_fstab(root_row, tree)
        match = matches.get(id(root_row))
        if match is not None:
            entry.volume = match.volume
            entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
        table.add(entry)
    else:
        # No fstab line for /: the kernel command line (root=, rw/ro) decides; systemd remounts rw
        # by default (systemd-remount-fs); the volume is the one holding the OS.
        table.add(MountEntry("/", root_vol.describe(), root_vol.fstype, ["rw"], observed=False, volume=root_vol,
                             evidence=[evidence(root_vol.describe(), "filesystem holding os-release"),
                                       evidence("kernel root= and systemd-remount-fs", "root mounted read-write (no fstab line)", False)]))
    for row in rows:
        if row.fstype == "swap" or not row.target.startswith("/") or canonical[id(row)] == "/":
            continue
        entry = MountEntry.from_fstab(row, tree)
        if canonical[id(row)] != entry.target:
            entry.evidence.append(evidence(f"{row.target} is a symbolic link", f"mounted at {canonical[id(row)]}"))
            entry.target = canonical[id(row)]
        match = matches.get(id(row))
        if match is not None:
            entry.volume = match.volume
            entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
        table.add(entry)
    for mu in view.units.mount_units():
        if not mu.where or table.get(mu.where) is not None:
            continue
        en = view.units.enablement(mu.name)
        if not en.enabled:
            continue
        failed = unit_path_conditions_fail(mu.unit, tree)
        if failed is not None:
            view.skipped_units.append({"unit": mu.name, "evidence": [failed]})
            continue
        entry = MountEntry.from_mount_unit(mu, tree)
        entry.evidence += en.evidence(tree)
        table.add(entry)
    if table.get("/run") is None:
        m = DOCUMENTED_RUN
        table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m["options"]), observed=False,
                             evidence=[evidence(m["source_ref"], "set up by systemd itself", False)]))
    return view


def system_paths(view: SystemView) -> list[dict]:
    from immutools.collectors.common import resolve_lenient
    from immutools.system.mounts import path_rows

    return path_rows(view.table, resolve=lambda p: resolve_lenient(view.tree, p))


def os_section_from(parsed: dict | None, where: dict | None) -> dict:
    parsed = parsed or {}
    return {
        "id": parsed.get("ID"),
        "name": parsed.get("NAME") or parsed.get("PRETTY_NAME"),
        "version": parsed.get("VERSION_ID") or parsed.get("VERSION"),
        "variant": parsed.get("VARIANT_ID"),
        "pretty_name": parsed.get("PRETTY_NAME"),
        "build_id": parsed.get("BUILD_ID"),
        "id_like": parsed.get("ID_LIKE"),
        "evidence": [where] if where else [],
    }


def package_manager_update(surface: dict) -> dict:
    """The update section of a system updated in place by its package manager (none known: unknown)."""
    details = surface.get("package_manager_details") or []
    with_db = [r for r in details if "database" in r.get("kinds", [])]
    ev = [e for r in with_db for e in r.get("evidence", [])][:6]
    return {
        "mechanism": "package-manager" if with_db else "unknown",
        "agent": None, "channel": None, "server": None, "active_slot": None, "slots": [],
        "atomic": False if with_db else None,
        "rollback": None,
        "package_managers": [r["name"] for r in with_db],
        "evidence": ev,
    }


class GenericLinuxCollector(Collector):
    """Any Linux: os-release, /etc/fstab mounts, units, the surface inventory; the update mechanism
    is the package manager when its database is present. Runs when no specific collector matches."""

    name = "generic"

    def detect(self, image: DiskImage) -> Detection:
        found = find_root(image)
        if found is None:
            return Detection(self.name, 0.0)
        vol, sub, path, parsed = found
        return Detection(
            self.name,
            0.1,
            [evidence(f"{vol.describe()}: {path}", "os-release found; no specific collector matched")],
            {"root": found},
        )

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.surface import inventory

        found = detection.facts.get("root") or find_root(image)
        if found is None:
            return {}
        vol, sub, path, parsed = found
        os_section = os_section_from(parsed, evidence(f"{vol.describe()}: {path}", "os-release ID/NAME/VERSION_ID"))
        try:
            view = compose_system(image, vol, sub)
        except ImmutoolsError as exc:
            image.warn(f"{vol.describe()}: cannot compose the system tree: {exc}")
            view = None
        arch, arch_ev = detect_arch(image, [])
        if arch is None and view is not None:
            arch, arch_ev = arch_from_tree(view.tree)
        if arch is None:
            arch, arch_ev = detect_arch(image, [vol])
        os_section["arch"] = arch
        if arch_ev:
            os_section["evidence"].append(arch_ev)
        if view is None:
            return {"os": os_section}
        surface = inventory(view.tree, None, view.units).to_report()
        return {
            "os": os_section,
            "mounts": view.table.to_report(),
            "paths": system_paths(view),
            "update": package_manager_update(surface),
            "surface": surface,
            "distribution": {
                "name": os_section["id"], "root": {"partition": vol.number, "fstype": vol.fstype, "subdir": sub},
                "fstab": view.fstab_where, "fstab_unresolved": view.unresolved,
                "skipped_mount_units": view.skipped_units,
            },
        }
