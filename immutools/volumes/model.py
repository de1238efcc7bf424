"""The partition-table model shared by the GPT and MBR readers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Partition:
    number: int                      # GPT entry index (1-based, gaps kept); MBR: 1-4 primary, 5+ logical
    start: int                       # byte offset in the disk
    size: int                        # bytes, computed from first/last LBA (inclusive)
    first_lba: int
    last_lba: int
    type_guid: str | None = None     # GPT: lower-case GUID string
    mbr_type: int | None = None      # MBR: system id byte
    type_name: str | None = None     # from data/partition_types.yaml
    type_key: str | None = None      # stable short key from the same table (e.g. "flatcar-usr")
    uuid: str | None = None          # GPT unique partition GUID (lower case); MBR: "<disksig>-NN"
    label: str | None = None         # GPT name (UTF-16LE decoded)
    attributes: dict = field(default_factory=dict)  # decoded attribute bits, see attributes.py
    bootable: bool | None = None     # MBR active flag
    logical: bool = False            # MBR logical partition inside an extended one
    role: str | None = None          # role hint of the type (data/partition_types.yaml), e.g. "usr"
    label_role: str | None = None    # role hint of a well-known GPT name (e.g. Talos "META" -> meta)


@dataclass
class PartitionTable:
    scheme: str                      # "gpt" | "mbr" | "none"
    sector_size: int
    disk_guid: str | None = None
    partitions: list[Partition] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Header facts: which GPT header was used, CRC state, MBR kind (protective/hybrid/plain),
    # first/last usable LBA, entry count and size, disk signature for MBR.
    details: dict = field(default_factory=dict)
