"""Composing a running system from an image: the mechanics every collector shares.

A collector knows *which* partitions and files matter for its distribution; this module knows
*how* to put them together, the same way for all of them:

* reading small files from a volume or a composed tree (``os_release_of``, ``read_key_values``,
  ``read_keyfile``, ``first_key``);
* the OS tree (``mount_fs``, ``resolve_lenient``) and systemd's unit path conditions
  (``unit_path_conditions_fail``, ``add_enabled_mount_units``);
* identity (``find_os_release``, ``find_root``, ``detect_arch``, ``arch_from_tree``);
* a conventionally installed system (``compose_system``: the root, its ``/etc/fstab`` and its
  enabled mount units) and the ``package-manager`` update section;
* ``finish``: the last steps of every collector -- the API filesystems the init system makes,
  the documented defaults of guaranteed mounts the image did not describe (marked inferred, with
  a warning saying why), the path states and the surface inventory.

Nothing here knows a distribution by name; distribution facts come in from the caller (the
collector's ``data/distributions/*.yaml``).
"""

from __future__ import annotations

import configparser
import posixpath
import re
from dataclasses import dataclass, field
from functools import lru_cache

from immutools.disk import DiskImage, Volume
from immutools.elf import elf_arch
from immutools.errors import ImmutoolsError
from immutools.osrelease import OS_RELEASE_PATHS, parse_os_release
from immutools.report.completeness import applicable_mount_defaults
from immutools.report.model import Findings, Update, evidence
from immutools.system.fstab import parse_fstab
from immutools.system.gpt_auto import AutoMount, GptEntry, entries_of, gpt_auto_mounts, root_stays_read_only
from immutools.system.mounts import MountEntry, MountTable, path_states, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.surface import inventory
from immutools.system.units import UnitSet, path_condition_failure
from immutools.volumes.types import lookup_type_entry

# DPS architecture names (as in data/partition_types.yaml) -> the report's arch vocabulary.
_DPS_ARCH = {"x86-64": "x86_64", "arm64": "aarch64", "x86": "i386", "arm": "arm", "riscv64": "riscv64",
             "ppc64": "ppc64", "ppc64-le": "ppc64", "s390x": "s390x"}

# Binaries whose ELF header tells the architecture; relative to a root fs or a /usr fs.
_ARCH_PROBES = ("/usr/bin/env", "/bin/sh", "/usr/bin/bash", "/bin/env", "/sbin/init", "/usr/lib/systemd/systemd",
                "/lib/systemd/systemd", "/init")

# btrfs layouts that keep the root in a subvolume below the top level (Ubuntu/openSUSE "@", Fedora "root")
ROOT_SUBDIRS = ("/", "/@", "/root", "/@root")

_SMALL_FILE = 256 * 1024


# ------------------------------------------------------------------------------------------------
# small files
# ------------------------------------------------------------------------------------------------
def read_key_values(fs, path: str, max_bytes: int = _SMALL_FILE) -> dict[str, str] | None:
    """A ``KEY=value`` file (os-release, update.conf, release) or None if absent/unreadable."""
    try:
        if not fs.exists(path):
            return None
        return parse_os_release(fs.read_text(path, max_bytes=max_bytes))
    except ImmutoolsError:
        return None


def read_text(fs, path: str, max_bytes: int = 4096) -> str | None:
    """A small text file, stripped; None if absent or unreadable."""
    try:
        return fs.read_text(path, max_bytes=max_bytes).strip() if fs.exists(path) else None
    except ImmutoolsError:
        return None


def os_release_of(image: DiskImage, vol: Volume | None, paths=OS_RELEASE_PATHS) -> tuple[dict | None, dict | None]:
    """(parsed os-release, evidence) from the first of ``paths`` present in ``vol``'s filesystem."""
    if vol is None:
        return None, None
    fs = image.filesystem(vol)
    if fs is None:
        return None, None
    for path in paths:
        parsed = read_key_values(fs, path)
        if parsed:
            return parsed, evidence(f"{vol.describe()}: {path}", "os-release")
    return None, None


def first_key(sources: list[tuple[dict | None, str]], key: str) -> tuple[str | None, str | None]:
    """The first source (in precedence order) that sets ``key``: (value, where)."""
    for values, where in sources:
        if values and values.get(key):
            return values[key], where
    return None, None


def read_keyfile(fs, path: str, max_bytes: int = _SMALL_FILE) -> dict[str, dict[str, str]] | None:
    """An INI/GKeyFile (``[group]`` then ``key=value``: ostree's repo config and ``.origin`` files,
    rpm-ostreed.conf, systemd-style configs) as {group: {key: value}}; None if absent/unreadable.
    Keys keep their case; a repeated key keeps its last value (GKeyFile does the same)."""
    try:
        if not fs.exists(path):
            return None
        text = fs.read_text(path, max_bytes=max_bytes)
    except ImmutoolsError:
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       comment_prefixes=("#", ";"), inline_comment_prefixes=None,
                                       default_section="\0no-default")
    parser.optionxform = str  # type: ignore[assignment]
    try:
        parser.read_string(text, source=path)
    except configparser.Error:
        return None
    return {group: dict(parser.items(group)) for group in parser.sections()}


# ------------------------------------------------------------------------------------------------
# the OS tree
# ------------------------------------------------------------------------------------------------
def mount_fs(tree: OsTree, target: str, image: DiskImage, vol: Volume | None, subdir: str = "/") -> bool:
    """Mount ``vol``'s filesystem into ``tree`` if it is readable; report whether it was."""
    if vol is None:
        return False
    fs = image.filesystem(vol)
    if fs is None:
        return False
    try:
        tree.mount(target, fs, subdir=subdir, volume=vol)
    except ImmutoolsError as exc:
        image.warn(f"{vol.describe()}: cannot use {subdir} as {target}: {exc}")
        return False
    return True


def resolve_lenient(fs, path: str, max_hops: int = 40) -> str:
    """``realpath -m`` inside ``fs``: symlinks resolved (bounded), components that do not exist
    kept as written. For deciding where a write to ``path`` would land (``/home`` ->
    ``/var/home`` even before ``/var/home`` exists)."""
    pending = [c for c in path.split("/") if c not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    hops = 0
    while pending:
        comp = pending.pop()
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join(resolved + [comp])
        try:
            st = fs.lstat(candidate)
        except ImmutoolsError:
            st = None
        if st is not None and st.is_symlink and hops < max_hops:
            hops += 1
            try:
                target = fs.readlink(candidate)
            except ImmutoolsError:
                resolved.append(comp)
                continue
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
            continue
        resolved.append(comp)
    return posixpath.normpath("/" + "/".join(resolved))


def lenient_resolver(tree):
    """A ``path_rows`` resolver: where a write to a path would land in ``tree``."""
    return lambda p: resolve_lenient(tree, p)


def existing_resolver(tree):
    """A ``path_rows`` resolver that resolves only paths present in ``tree`` (others as written)."""
    def resolve(p: str) -> str:
        try:
            return tree.lrealpath(p) if tree.exists(p, follow=False) else p
        except ImmutoolsError:
            return p
    return resolve


# systemd's ConditionPath*= checks live with the unit reader; kept here under the name collectors import
unit_path_conditions_fail = path_condition_failure


def add_enabled_mount_units(table: MountTable, units: UnitSet, tree, image: DiskImage | None = None,
                            cmdline=None) -> list[dict]:
    """Add every enabled ``.mount`` unit (or one whose ``.automount`` is enabled) of ``tree`` whose
    target the table does not have yet.

    Units whose ``ConditionPath*=`` fails in the image are skipped and returned (with the
    evidence), so a report can say why a mount is absent. With ``image``, the unit's ``What=`` is
    resolved to a volume, and ``Type=auto`` (or a list) is decided by probing it, as mount(8) does."""
    skipped: list[dict] = []
    for mu in units.mount_units():
        if not mu.where or table.get(mu.where) is not None:
            continue
        en = units.enablement(mu.name)
        auto = units.enablement(mu.name[: -len(".mount")] + ".automount")
        if not (en.enabled or auto.enabled):
            continue
        failed = unit_path_conditions_fail(mu.unit, tree)
        if failed is not None:
            skipped.append({"unit": mu.name, "evidence": [failed]})
            continue
        entry = MountEntry.from_mount_unit(mu, tree)
        entry.evidence += en.evidence(tree) if en.enabled else auto.evidence(tree)
        if image is not None and mu.what:
            src = resolve_source_match(mu.what, image, cmdline)
            if src is not None:
                entry.volume = src.volume
                if entry.fstype in (None, "auto") or "," in (entry.fstype or ""):
                    entry.evidence.append(evidence(src.volume.describe(), f"{src.how}; probed as {src.volume.fstype}"))
                    entry.fstype = src.volume.fstype
        table.add(entry)
    return skipped


# ------------------------------------------------------------------------------------------------
# identity
# ------------------------------------------------------------------------------------------------
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
    """Architecture from partition types first (DPS types are per-arch), then ELF headers of the
    filesystems in ``volumes`` (all readable ones when None)."""
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


@dataclass
class RootCandidate:
    """The filesystem holding an OS root: a volume, the subdirectory of it that is ``/``, and the
    os-release found there."""

    volume: Volume
    subdir: str
    os_release_path: str
    os_release: dict

    def evidence(self, detail: str = "os-release ID/NAME/VERSION_ID") -> dict:
        return evidence(f"{self.volume.describe()}: {self.os_release_path}", detail)


def find_root(image: DiskImage) -> RootCandidate | None:
    """The filesystem holding the OS root: one with os-release below /etc or /usr/lib and,
    preferably, an /etc/fstab. None when there is none."""
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
                found = RootCandidate(vol, sub, full, parsed)
                if has_fstab:
                    return found
                if best is None:
                    best = found
                break
    return best


def explain_missing_version(image: DiskImage, findings: Findings, os_release_where: str | None,
                            hint: str | None = None, warn: bool = False) -> None:
    """When os-release names no version (Debian testing, rolling releases: no VERSION_ID, VERSION
    or IMAGE_VERSION), record why ``os.version`` is empty -- the completeness warning then says
    so -- and, with ``warn`` (a collector without guarantees), warn directly. ``hint``: what else
    the image says about its release (e.g. /etc/debian_version), reported, not used as a version."""
    if findings.os is None or findings.os.version:
        return
    reason = f"{os_release_where or 'os-release'} sets none of VERSION_ID, VERSION, IMAGE_VERSION"
    if hint:
        reason += f" ({hint})"
    findings.explain("os.version", reason)
    if warn:
        image.warn(f"os.version unknown: {reason}")


def identify_arch(image: DiskImage, tree=None, root: Volume | None = None) -> tuple[str | None, dict | None]:
    """The architecture of a conventionally installed system: an arch-specific partition type,
    else a binary in the composed tree, else a binary on the root volume."""
    arch, ev = detect_arch(image, [])
    if arch is None and tree is not None:
        arch, ev = arch_from_tree(tree)
    if arch is None and root is not None:
        arch, ev = detect_arch(image, [root])
    return arch, ev


# ------------------------------------------------------------------------------------------------
# a conventionally installed system
# ------------------------------------------------------------------------------------------------
@dataclass
class SystemView:
    """A composed view of a conventionally installed system: what is mounted where, and why."""

    root: RootCandidate
    tree: OsTree
    table: MountTable
    units: UnitSet | None = None
    fstab: list = field(default_factory=list)      # FstabEntry rows
    fstab_where: str | None = None
    skipped_units: list = field(default_factory=list)
    unresolved: list = field(default_factory=list)
    gpt_auto: list[AutoMount] = field(default_factory=list)

    def gpt_auto_report(self) -> list[dict]:
        """The generator's decisions, for a report's ``distribution`` section."""
        return [gpt_auto_row(d) for d in self.gpt_auto]


def machine_id(tree) -> str | None:
    """/etc/machine-id when it holds an ID (empty or ``uninitialized``: set at first boot, machine-id(5))."""
    text = read_text(tree, "/etc/machine-id") or ""
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


def gpt_auto_decisions(image: DiskImage, tree, fstab_targets: set[str], fstab_has_swap: bool, cmdline=None) -> list[AutoMount]:
    """What systemd-gpt-auto-generator does with this disk, seen from the root ``tree`` before any
    other mount (``immutools.system.gpt_auto``)."""
    return gpt_auto_mounts(entries_of(image), tree, fstab_targets=fstab_targets, fstab_has_swap=fstab_has_swap,
                           machine_id=machine_id(tree), cmdline=cmdline, on_root_disk=True)


def mount_gpt_auto(image: DiskImage, tree, decisions: list[AutoMount]) -> list[AutoMount]:
    """Mount the generator's filesystems into ``tree``; returns the decisions that were placed."""
    by_number = {v.number: v for v in image.volumes}
    return [d for d in decisions
            if d.target and d.target.startswith("/") and mount_fs(tree, d.target, image, by_number.get(d.entry.number))]


def gpt_auto_entry(image: DiskImage, decision: AutoMount) -> MountEntry:
    """The mount table row of one generator mount (``observed: false``: the generator decides at boot)."""
    vol = image.volume(number=decision.entry.number)
    options = list(decision.options) + (["x-systemd.automount"] if decision.automount else [])
    return MountEntry(decision.target, f"PARTUUID={decision.entry.uuid}", decision.entry.fstype, options,
                      observed=False, volume=vol, evidence=list(decision.evidence))


def gpt_auto_row(d: AutoMount) -> dict:
    return {"designator": d.designator, "partition": d.entry.number, "target": d.target, "options": d.options,
            "automount": d.automount, "reason": d.reason, "evidence": d.evidence}


def compose_system(image: DiskImage, root: RootCandidate, cmdline=None) -> SystemView:
    """Mount the root filesystem at /, then every /etc/fstab entry the image can resolve (mount
    points canonicalised through symlinks, parents first), and build the mount table: fstab rows
    (observed), then enabled mount units whose path conditions hold."""
    tree = OsTree(image.limits)
    mount_fs(tree, "/", image, root.volume, subdir=root.subdir)
    rows, where = [], None
    try:
        if tree.exists("/etc/fstab"):
            where = "/etc/fstab"
            rows, warnings = parse_fstab(tree.read_text(where, max_bytes=_SMALL_FILE), where)
            for w in warnings:
                image.warn(f"{tree.source_of(where)}: {w}")
    except ImmutoolsError as exc:
        image.warn(f"/etc/fstab unreadable: {exc}")
    canonical = {id(r): (resolve_lenient(tree, r.target) if r.target.startswith("/") else r.target) for r in rows}
    rows = sorted(rows, key=lambda r: (canonical[id(r)].count("/"), canonical[id(r)]) if canonical[id(r)] != "/" else (-1, "/"))
    view = SystemView(root, tree, MountTable(), None, rows, where)
    # The generator looks at the bare root before anything else is mounted.
    if root.volume.partition is not None:
        view.gpt_auto = gpt_auto_decisions(image, tree, {canonical[id(r)] for r in rows if r.fstype != "swap"},
                                           any(r.fstype == "swap" for r in rows), cmdline)
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
    placed = mount_gpt_auto(image, tree, view.gpt_auto)
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
        # No fstab line for /: ro/rw on the command line decide, else the partition's read-only
        # attribute, else systemd-remount-fs remounts it read-write.
        vol = root.volume
        entry = GptEntry.from_partition(vol.partition, vol.fstype) if vol.partition is not None else None
        stays_ro, access_ev = root_stays_read_only(entry, cmdline)
        table.add(MountEntry("/", vol.describe(), vol.fstype, ["ro" if stays_ro else "rw"], observed=False, volume=vol,
                             evidence=[evidence(vol.describe(), "filesystem holding os-release"), access_ev]))
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
    for decision in placed:
        if table.get(decision.target) is None:
            table.add(gpt_auto_entry(image, decision))
    view.skipped_units = add_enabled_mount_units(table, view.units, tree)
    return view


def package_manager_update(surface: dict | None) -> Update:
    """The update section of a system updated in place by its package manager (none known: unknown)."""
    details = (surface or {}).get("package_manager_details") or []
    with_db = [r for r in details if "database" in r.get("kinds", [])]
    ev = [e for r in with_db for e in r.get("evidence", [])][:6]
    return Update(mechanism="package-manager" if with_db else "unknown", evidence=ev,
                  extra={"atomic": False if with_db else None,
                         "package_managers": [r["name"] for r in with_db]})


# ------------------------------------------------------------------------------------------------
# the last steps of every collector
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def systemd_api_mounts() -> tuple[dict, ...]:
    """The API filesystems systemd mounts itself, from ``data/systemd.yaml``."""
    from immutools.knowledge import load_data

    return tuple(load_data("systemd")["api_filesystems"])


def add_documented_mounts(table: MountTable, documented: list[dict] | tuple[dict, ...]) -> None:
    """Mounts the OS makes in code (the init system's API filesystems, an initrd's overlay), added
    when the image's own configuration did not already name the target; ``observed: false``."""
    for m in documented:
        if table.get(m["target"]) is not None:
            continue
        table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m.get("options", [])), observed=False,
                             persistence=m.get("persistence"),
                             evidence=[evidence(m["source_ref"], m.get("detail", "set up by the OS itself"), False)]))


def add_guaranteed_defaults(image: DiskImage, findings: Findings, knowledge: dict | None, table: MountTable,
                            volumes: dict[str, Volume | None] | None = None) -> None:
    """For each mount the distribution's documentation guarantees but the image did not describe,
    add the documented default (``observed: false``) and warn, naming why it was not seen.
    ``volumes``: the partition the collector knows each target comes from (its filesystem type
    fills a default that names none)."""
    if not knowledge:
        return
    for fact, default, ref in applicable_mount_defaults(knowledge, findings.os.version, findings.os.extra.get("role")):
        target = default["target"]
        if table.get(target) is not None:
            continue
        reason = findings.explanations.get(fact) or "the image does not describe it"
        vol = (volumes or {}).get(target)
        fstype = default.get("fstype") or (vol.fstype if vol is not None else None)
        ev = [evidence(ref, f"documented default, used because {reason}", False)]
        if vol is not None:
            ev.append(evidence(vol.describe(), f"the partition the documented default names ({vol.fstype})"))
        table.add(MountEntry(target, default.get("source"), fstype, list(default.get("options", [])),
                             integrity=default.get("integrity", "none"), persistence=default.get("persistence"),
                             observed=False, volume=vol, evidence=ev))
        findings.explain(fact, reason)
        image.warn(f"{fact}: not found in the image ({reason}); reporting the documented default "
                   f"({' '.join(str(x) for x in (default.get('source'), fstype) if x)}, inferred)")


def finish(image: DiskImage, findings: Findings, knowledge: dict | None, table: MountTable, tree: OsTree | None, *,
           units: UnitSet | None = None, cmdline=None, paths=None, resolve=None, surface: bool = True,
           documented_mounts=None, default_volumes: dict[str, Volume | None] | None = None) -> None:
    """The last steps every collector takes, in this order: the mounts the OS makes in code
    (``documented_mounts``, else the distribution file's ``documented_mounts``, else systemd's API
    filesystems), the documented defaults of guaranteed mounts the image did not describe, the
    path states (``paths``: the rows wanted beyond the standard ones and the mount targets;
    ``resolve``: where a path lands in the tree), and the surface inventory of ``tree``.
    ``default_volumes``: see ``add_guaranteed_defaults``."""
    if documented_mounts is None:
        documented_mounts = (knowledge or {}).get("documented_mounts")
    if documented_mounts is None:
        documented_mounts = systemd_api_mounts()
    add_documented_mounts(table, documented_mounts)
    add_guaranteed_defaults(image, findings, knowledge, table, default_volumes)
    findings.mounts = table
    findings.paths = path_states(table, paths, resolve=resolve or (lambda p: p))
    if surface:
        if tree is not None and tree.visible_mounts():
            findings.surface = inventory(tree, cmdline, units).to_report()
        else:
            findings.explain("surface", "no readable OS tree")
            image.warn("no readable OS tree: the attack surface (shells, sshd, setuid files, SELinux) is unknown")
