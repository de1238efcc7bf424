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
