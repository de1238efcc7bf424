"""Helpers several collectors share: reading os-release from a volume, key=value files, A/B slot
rows, confidence from weighted fingerprints. Distribution-specific facts stay in the collectors'
YAML under ``data/distributions``; only mechanics live here."""

from __future__ import annotations

from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.osrelease import OS_RELEASE_PATHS, parse_os_release
from immutools.report.model import evidence


def read_key_values(fs, path: str, max_bytes: int = 256 * 1024) -> dict[str, str] | None:
    """A ``KEY=value`` file (os-release, update.conf, release) or None if absent/unreadable."""
    try:
        if not fs.exists(path):
            return None
        return parse_os_release(fs.read_text(path, max_bytes=max_bytes))
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


def weighted_confidence(weights: dict[str, float], hits: list[str]) -> float:
    return round(min(1.0, sum(weights.get(h, 0.0) for h in hits)), 3)


def slot_row(name: str, vol: Volume | None, version: str | None, active: bool) -> dict:
    attrs = (vol.partition.attributes if vol is not None and vol.partition is not None else {}) or {}
    return {
        "name": name,
        "partitions": [vol.number] if vol is not None else [],
        "version": version,
        "active": active,
        "priority": attrs.get("priority"),
        "tries": attrs.get("tries"),
        "successful": attrs.get("successful"),
    }


def mount_fs(tree, target: str, image: DiskImage, vol: Volume | None, subdir: str = "/") -> bool:
    """Mount ``vol``'s filesystem into an ``OsTree`` if it is readable; report whether it was."""
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


def read_keyfile(fs, path: str, max_bytes: int = 256 * 1024) -> dict[str, dict[str, str]] | None:
    """An INI/GKeyFile (``[group]`` then ``key=value``: ostree's repo config and ``.origin`` files,
    rpm-ostreed.conf, systemd-style configs) as {group: {key: value}}; None if absent/unreadable.
    Keys keep their case; a repeated key keeps its last value (GKeyFile does the same)."""
    import configparser

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


def resolve_lenient(fs, path: str, max_hops: int = 40) -> str:
    """``realpath -m`` inside ``fs``: symlinks resolved (bounded), components that do not exist
    kept as written. For deciding where a write to ``path`` would land (``/home`` ->
    ``/var/home`` even before ``/var/home`` exists)."""
    import posixpath

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


def unit_path_conditions_fail(unit, tree) -> dict | None:
    """Evidence when a unit's ``ConditionPathExists=``/``ConditionPathIsSymbolicLink=``/
    ``ConditionPathIsDirectory=`` fails on ``tree`` (systemd would skip the unit); None when they
    hold or cannot be decided. ``!`` negates; a ``|`` (triggering) condition is not decided here."""
    checks = {
        "ConditionPathExists": lambda st: st is not None,
        "ConditionPathIsSymbolicLink": lambda st: st is not None and st.is_symlink,
        "ConditionPathIsDirectory": lambda st: st is not None and st.is_dir,
    }
    for key, test in checks.items():
        for a in unit.assignments_of("Unit", key):
            value = a.value
            if value.startswith("|"):
                continue
            negate = value.startswith("!")
            path = value.lstrip("!")
            if not path.startswith("/"):
                continue
            try:
                st = tree.lstat(path) if key == "ConditionPathIsSymbolicLink" else tree.stat(path)
            except ImmutoolsError:
                st = None
            if test(st) == negate:
                return a.evidence(tree) | {"detail": f"{key}={value} fails: the unit is skipped"}
    return None


def add_enabled_mount_units(table, units, tree) -> list[dict]:
    """Add every enabled ``.mount`` unit of ``tree`` whose target the table does not have yet.

    Units whose ``ConditionPath*=`` fails in the image are skipped and returned (with the
    evidence), so a report can say why a mount is absent."""
    from immutools.system.mounts import MountEntry

    skipped: list[dict] = []
    for mu in units.mount_units():
        if not mu.where or table.get(mu.where) is not None:
            continue
        en = units.enablement(mu.name)
        if not en.enabled:
            continue
        failed = unit_path_conditions_fail(mu.unit, tree)
        if failed is not None:
            skipped.append({"unit": mu.name, "evidence": [failed]})
            continue
        entry = MountEntry.from_mount_unit(mu, tree)
        entry.evidence += en.evidence(tree)
        table.add(entry)
    return skipped
