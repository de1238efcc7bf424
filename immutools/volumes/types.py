"""Partition type table: GPT type GUIDs and MBR system ids -> stable key, human name, role hint.

The table lives in ``data/partition_types.yaml`` (installed as ``immutools/_data``); every entry
names the source its GUID was taken from. ``load_partition_types()`` validates the file once and
caches it, so a typo (duplicate GUID, upper-case GUID, unknown role) fails loudly at first use.
"""

from __future__ import annotations

import functools
import re
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path

from immutools.knowledge import load_yaml_file

# Role hints a type (or a well-known partition name) may carry. Documented in data/README.md.
ROLES = frozenset(
    {
        "esp", "bios-boot", "bootloader", "boot", "root", "usr", "root-verity", "usr-verity",
        "root-verity-sig", "usr-verity-sig", "data", "swap", "reserved", "home", "srv", "var", "tmp",
        "lvm", "raid", "encrypted", "oem", "private", "kernel", "firmware", "recovery", "hibernate",
        "meta", "state", "ephemeral", "extended", "gpt-protective", "empty", "other",
    }
)

_GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DATA_FILE = "partition_types.yaml"


@dataclass(frozen=True)
class PartitionType:
    key: str
    name: str
    role: str
    ab: bool = False              # ChromeOS-style priority/tries/successful bits apply
    arch: str | None = None
    source: str = ""


@dataclass(frozen=True)
class PartitionTypes:
    gpt: dict[str, PartitionType]          # lower-case GUID -> type
    mbr: dict[int, PartitionType]          # system id -> type
    labels: dict[str, str]                 # exact GPT partition name -> role hint


def _data_path() -> Path:
    from immutools.paths import data_dir

    path = data_dir() / _DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: partition type table not found")
    return path


def _check_common(entry: dict, where: str) -> None:
    for field in ("key", "name", "role", "source"):
        if not entry.get(field) or not isinstance(entry[field], str):
            raise ValueError(f"{where}: missing or non-string '{field}'")
    if entry["role"] not in ROLES:
        raise ValueError(f"{where}: unknown role {entry['role']!r}")


@functools.lru_cache(maxsize=1)
def load_partition_types() -> PartitionTypes:
    """Load and validate the type table (cached)."""
    raw = load_yaml_file(_data_path())
    gpt: dict[str, PartitionType] = {}
    mbr: dict[int, PartitionType] = {}
    keys: set[str] = set()

    def add_key(key: str, where: str) -> None:
        if key in keys:
            raise ValueError(f"{where}: duplicate key {key!r}")
        keys.add(key)

    for i, entry in enumerate(raw.get("gpt") or []):
        where = f"{_DATA_FILE} gpt[{i}]"
        _check_common(entry, where)
        guid = entry.get("guid")
        if not isinstance(guid, str) or not _GUID_RE.match(guid):
            raise ValueError(f"{where}: GUID {guid!r} is not a lower-case GUID string")
        if guid in gpt:
            raise ValueError(f"{where}: duplicate GUID {guid}")
        add_key(entry["key"], where)
        gpt[guid] = PartitionType(entry["key"], entry["name"], entry["role"], bool(entry.get("ab", False)),
                                  entry.get("arch"), entry["source"])
    for i, entry in enumerate(raw.get("mbr") or []):
        where = f"{_DATA_FILE} mbr[{i}]"
        _check_common(entry, where)
        ident = entry.get("id")
        if not isinstance(ident, str) or not re.fullmatch(r"0x[0-9a-f]{2}", ident):
            raise ValueError(f"{where}: id {ident!r} must be a string like '0x83'")
        value = int(ident, 16)
        if value in mbr:
            raise ValueError(f"{where}: duplicate MBR id {ident}")
        add_key(entry["key"], where)
        mbr[value] = PartitionType(entry["key"], entry["name"], entry["role"], False, None, entry["source"])
    labels: dict[str, str] = {}
    for i, entry in enumerate(raw.get("labels") or []):
        where = f"{_DATA_FILE} labels[{i}]"
        label, role = entry.get("label"), entry.get("role")
        if not isinstance(label, str) or role not in ROLES or not entry.get("source"):
            raise ValueError(f"{where}: needs label, a known role and a source")
        if label in labels:
            raise ValueError(f"{where}: duplicate label {label!r}")
        labels[label] = role
    return PartitionTypes(gpt=gpt, mbr=mbr, labels=labels)


def normalize_guid(value: str) -> str | None:
    """``'{C12A7328-F81F-...}'`` or any case -> canonical lower-case form; None if not a GUID."""
    try:
        return str(uuid_mod.UUID(value.strip().strip("{}")))
    except (ValueError, AttributeError):
        return None


def lookup_type_entry(guid_or_mbr_id: str | int) -> PartitionType | None:
    types = load_partition_types()
    if isinstance(guid_or_mbr_id, int):
        return types.mbr.get(guid_or_mbr_id)
    text = str(guid_or_mbr_id).strip().lower()
    if re.fullmatch(r"0x[0-9a-f]{1,2}", text):
        return types.mbr.get(int(text, 16))
    guid = normalize_guid(text)
    return types.gpt.get(guid) if guid else None


def lookup_type(guid_or_mbr_id: str | int) -> tuple[str | None, str | None, str | None]:
    """Type GUID (any case, braces allowed), MBR id (int or ``"0x83"``) -> (key, name, role_hint).

    Unknown types give ``(None, None, None)``.
    """
    entry = lookup_type_entry(guid_or_mbr_id)
    if entry is None:
        return (None, None, None)
    return (entry.key, entry.name, entry.role)


def lookup_label_role(label: str | None) -> str | None:
    """Role hint for a well-known GPT partition name (exact match), e.g. Talos ``META`` -> meta."""
    if not label:
        return None
    return load_partition_types().labels.get(label)


def has_ab_semantics(type_guid: str | None) -> bool:
    entry = lookup_type_entry(type_guid) if type_guid else None
    return bool(entry and entry.ab)
