"""What collectors share that is about collecting, not about the system: detection confidence
from weighted fingerprints. (System mechanics live in ``immutools.system.compose``.)"""

from __future__ import annotations

from immutools.disk import Volume

# Collectors not yet moved to the shared composition import these mechanics from here; new code
# imports them from immutools.system.compose.
from immutools.system.compose import (  # noqa: F401
    add_enabled_mount_units, first_key, mount_fs, os_release_of, read_key_values, read_keyfile, resolve_lenient,
    unit_path_conditions_fail,
)


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
