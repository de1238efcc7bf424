"""Partition tables: GPT (512/4096-byte sectors, CRC checks, backup fallback) and MBR.

``read_partition_table(source)`` returns a ``PartitionTable``; see ``model.py``. Which table wins
follows Linux and libfdisk: a GPT is read when sector 0 holds a protective or hybrid MBR (0xEE
entry) or no MBR at all; a plain MBR wins over a stray GPT header. A disk with neither gives
``scheme="none"`` (a whole-disk filesystem, a zeroed or garbage image). Damage is reported in
``warnings`` whenever a usable table remains; an exception (``CorruptDataError`` or, when a bound
in ``Limits`` was hit, ``LimitExceededError``) only when the image claims a GPT and none can be read.

Type lookups: ``load_partition_types()``, ``lookup_type()`` (data/partition_types.yaml).
"""

from __future__ import annotations

from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits
from immutools.volumes.attributes import decode_attributes
from immutools.volumes.model import Partition, PartitionTable
from immutools.volumes.types import load_partition_types, lookup_label_role, lookup_type

__all__ = [
    "Partition",
    "PartitionTable",
    "decode_attributes",
    "load_partition_types",
    "lookup_label_role",
    "lookup_type",
    "read_partition_table",
]

_SECTOR0 = 512


def _no_table(reason: str, warnings: list[str], details: dict | None = None) -> PartitionTable:
    return PartitionTable(scheme="none", sector_size=_SECTOR0, warnings=warnings,
                          details={"mbr": "none", "reason": reason, **(details or {})})


def read_partition_table(source: ByteSource, limits: Limits = DEFAULT_LIMITS) -> PartitionTable:
    """Read the partition table of a disk image (never writes; bounded by ``limits``)."""
    from immutools.volumes import gpt, mbr as mbr_mod

    warnings: list[str] = []
    if source.size < _SECTOR0:
        return _no_table("image smaller than one sector", warnings)
    sector0 = source.read_exact(0, _SECTOR0)
    mbr = mbr_mod.parse_mbr_sector(sector0)
    sector0_kind = "mbr" if mbr is not None else "none"
    if mbr is not None and mbr_mod.looks_like_boot_sector(sector0):
        mbr, sector0_kind = None, "filesystem boot sector"
    elif mbr is not None and not mbr.valid_flags:
        flags = ", ".join(f"0x{e.boot_flag:02x}" for e in mbr.entries)
        warnings.append(f"sector 0 ends with 0x55AA but its boot flags ({flags}) are not an MBR's")
        mbr, sector0_kind = None, "invalid"

    plain_mbr = mbr is not None and bool(mbr.used) and not mbr.protective_entries
    if plain_mbr:
        table = mbr_mod.read_mbr_table(source, mbr, limits)
        if gpt.gpt_signature_present(source):
            table.warnings.insert(
                0, "a GPT header is present but the MBR has no protective 0xEE entry; "
                   "reading the MBR, as Linux and fdisk do"
            )
        return table

    table = gpt.read_gpt(source, mbr, limits, search_backup=True)
    if table is not None:
        table.warnings[:0] = warnings
        return table
    if mbr is not None and mbr.protective_entries:
        from immutools.errors import CorruptDataError

        raise CorruptDataError(
            "the MBR has a GPT protective (0xEE) entry but no GPT header was found at LBA 1 "
            "(512- or 4096-byte sectors) or at the end of the image"
        )
    if mbr is not None:
        # A valid MBR signature with four empty entries: an empty DOS label (as sfdisk shows it).
        return mbr_mod.read_mbr_table(source, mbr, limits)
    reason = {"none": "no MBR signature and no GPT header",
              "filesystem boot sector": "sector 0 is a filesystem boot sector (whole-disk filesystem)",
              "invalid": "sector 0 is not an MBR and there is no GPT header"}[sector0_kind]
    return _no_table(reason, warnings)
