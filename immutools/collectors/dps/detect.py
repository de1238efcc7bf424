"""Recognising a DPS image and classifying its partitions.

Recognition is generic: partitions are classified by their type GUID, which the DPS defines per
role and architecture (``immutools.volumes.types.lookup_type_entry`` gives role and arch). The
image's main role is ``usr`` when a /usr partition is there (a usr-only image), else ``root``.
Fingerprints (``data/distributions/dps.yaml``: ``detect``): the DPS types, a verity partition for
the main role, a verity signature partition holding the DPS JSON, an ``IMAGE_ID`` in os-release,
UKIs in the ESP's ``/EFI/Linux``, ``_empty`` slots.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.compose import os_release_of
from immutools.volumes.types import lookup_type_entry


@dataclass(frozen=True)
class DpsPartition:
    """A partition of a DPS type: its designator (``key``, e.g. ``usr-x86-64-verity``), role
    (``usr-verity``), architecture, GPT label and unique UUID, and the DPS attribute flags."""

    volume: Volume
    role: str
    key: str
    arch: str | None
    label: str
    uuid: str
    no_auto: bool
    read_only: bool
    grow_file_system: bool
    empty: bool                  # labelled _empty: a free slot for the next update

    @property
    def number(self) -> int:
        return self.volume.number

    def describe(self) -> str:
        return self.volume.describe()


@dataclass
class Layout:
    """The DPS partitions of the disk and the role the OS comes in (``usr`` or ``root``)."""

    partitions: list[DpsPartition]
    role: str | None
    companions: dict[str, str]           # "verity", "signature" -> the main role's partitions of that kind

    def of_role(self, role: str) -> list[DpsPartition]:
        return [p for p in self.partitions if p.role == role]

    @property
    def data(self) -> list[DpsPartition]:
        """The main role's data partitions (the slots), in table order."""
        return sorted((p for p in self.partitions if p.role == self.role and p.arch), key=lambda p: p.number)

    @property
    def verity(self) -> list[DpsPartition]:
        return self.of_role(self.companions["verity"])

    @property
    def signatures(self) -> list[DpsPartition]:
        return self.of_role(self.companions["signature"])

    @property
    def has_verity(self) -> bool:
        """A verity partition of the main role holds a version (not only free ``_empty`` ones):
        the OS is meant to be mounted through dm-verity (DPS "Verity")."""
        return any(not p.empty for p in self.verity)

    @property
    def kind(self) -> str | None:
        """What the image is (the report's ``os.role``): the main role, ``-verity`` when it has verity."""
        if self.role is None:
            return None
        return self.companions["verity"] if self.has_verity else self.role


def _bit(attrs: dict, bit: int) -> bool:
    raw = attrs.get("raw") if attrs else None
    try:
        return bool(int(raw, 16) >> bit & 1) if raw else False
    except (TypeError, ValueError):
        return False


def classify(image: DiskImage, knowledge: dict) -> list[DpsPartition]:
    """Every partition whose type the DPS defines, in table order."""
    flags = knowledge["flags"]
    out = []
    for vol in image.volumes:
        part = vol.partition
        entry = lookup_type_entry(part.type_guid) if part is not None and part.type_guid else None
        if entry is None:
            continue
        attrs = part.attributes or {}
        label = part.label or ""
        out.append(DpsPartition(vol, entry.role, entry.key, entry.arch, label, (part.uuid or "").lower(),
                                _bit(attrs, flags["no_auto"]), _bit(attrs, flags["read_only"]),
                                _bit(attrs, flags["grow_file_system"]), label == knowledge["empty_label"]))
    return out


def role_spec(knowledge: dict, role: str) -> dict:
    """The data file's record of a DPS role (``usr`` or ``root``)."""
    return next(r for r in knowledge["data_roles"] if r["role"] == role)


def main_role(knowledge: dict, partitions: list[DpsPartition]) -> str | None:
    """``usr`` when a /usr partition is there; ``root`` when a root partition with its verity
    partition is, else any root partition; None when neither."""
    roles = {p.role for p in partitions if p.arch}
    for spec in knowledge["data_roles"]:
        verity = spec["role"] + knowledge["verity_role_suffix"]
        if spec["role"] in roles and (not spec["needs_verity"] or verity in roles):
            return spec["role"]
    return next((spec["role"] for spec in knowledge["data_roles"] if spec["role"] in roles), None)


def find_layout(image: DiskImage, knowledge: dict) -> Layout:
    partitions = classify(image, knowledge)
    role = main_role(knowledge, partitions)
    companions = {"verity": (role or "") + knowledge["verity_role_suffix"],
             "signature": (role or "") + knowledge["signature_role_suffix"]}
    return Layout(partitions, role, companions)


@lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def read_signature(knowledge: dict, vol: Volume) -> tuple[dict | None, str | None]:
    """The verity signature partition's JSON (DPS "Verity"), or None and why not."""
    spec = knowledge["signature"]
    try:
        raw = vol.source.read_at(0, min(spec["max_bytes"], vol.source.size))
    except ImmutoolsError as exc:
        return None, f"unreadable: {exc}"
    text = raw.rstrip(b"\0")
    if not text.startswith(b"{"):
        return None, "no JSON object"
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON: {exc}"
    root_hash = data.get("rootHash") if isinstance(data, dict) else None
    if not isinstance(root_hash, str) or not _compiled(spec["root_hash_pattern"]).match(root_hash):
        return None, "no lower-case hex rootHash"
    return data, None


def slot_os_release(image: DiskImage, knowledge: dict, vol: Volume, role: str) -> tuple[dict | None, dict | None]:
    """os-release of a data partition (a /usr partition holds it at /lib/os-release)."""
    return os_release_of(image, vol, role_spec(knowledge, role)["os_release_paths"])


def uki_name_pattern(knowledge: dict) -> re.Pattern:
    return _compiled(knowledge["uki_name_pattern"])


def fingerprints(image: DiskImage, knowledge: dict, layout: Layout) -> tuple[list[str], list[dict]]:
    """The detection fingerprints that hit, with evidence."""
    data = layout.data
    hits, ev = ["dps_types"], [evidence(f"{data[0].describe()}: GPT entry", f"DPS type {data[0].key}")]
    if layout.verity:
        hits.append("verity_pair")
    for part in layout.signatures:
        if not part.empty and read_signature(knowledge, part.volume)[0] is not None:
            hits.append("signature_json")
            ev.append(evidence(f"{part.describe()}: JSON", "verity signature (rootHash, signature)"))
            break
    if any(p.empty for p in layout.partitions):
        hits.append("empty_slot")
    for part in data:
        if part.empty:
            continue
        parsed, where = slot_os_release(image, knowledge, part.volume, layout.role)
        if parsed and parsed.get("IMAGE_ID"):
            hits.append("image_id")
            ev.append(where | {"detail": f"os-release IMAGE_ID={parsed['IMAGE_ID']}"})
            break
    esp = image.volume(type_key="esp")
    fs = image.filesystem(esp) if esp is not None else None
    pattern = uki_name_pattern(knowledge)
    try:
        if fs is not None and any(pattern.match(n) for d in knowledge["uki_dirs"] for n in fs.listdir(d)):
            hits.append("uki")
    except ImmutoolsError:
        pass
    return hits, ev


def confidence(knowledge: dict, hits: list[str]) -> float:
    return weighted_confidence(knowledge["detect"], hits)
