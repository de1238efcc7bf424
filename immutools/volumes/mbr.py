"""MBR: the sector-0 table (plain, protective or hybrid) and extended/logical partitions.

The sector layout is parsed with dissect.volume's ``c_mbr`` structure definition. The partition walk
is ours, because ``dissect.volume.disk.schemes.mbr.MBR`` (3.18) is unusable for hostile or even
ordinary images here:
  * logical partitions are numbered from the extended entry's slot (2, 3, ...), colliding with the
    primary numbers, instead of 5, 6, ... as Linux, fdisk and blkid number them;
  * the EBR chain is followed by recursion with no loop detection and no bound, so an EBR that
    links to itself recurses until Python's RecursionError;
  * it rejects a sector whose bytes 3-11 contain "FAT"/"MSWIN" without checking the entries.
Format facts: the four 16-byte entries at byte 446, signature 0x55AA at 510, disk signature at 440
(UEFI spec §5.2.1); an EBR's data entry is relative to the EBR, its link entry relative to the start
of the primary extended partition (the Linux kernel's block/partitions/msdos.c does the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from immutools.errors import CorruptDataError
from immutools.image.source import ByteSource
from immutools.limits import Limits
from immutools.volumes.checks import check_extents, check_overlaps
from immutools.volumes.model import Partition, PartitionTable
from immutools.volumes.types import lookup_type_entry

MBR_SECTOR = 512
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
GPT_PROTECTIVE = 0xEE
BOOT_SIGNATURE = 0xAA55
MAX_32BIT_LBA = 0xFFFFFFFF


@dataclass(frozen=True)
class MbrEntry:
    slot: int            # 1-4 in the sector
    boot_flag: int       # 0x80 active, 0x00 inactive
    type: int
    start_lba: int
    sectors: int

    @property
    def used(self) -> bool:
        # Linux and libfdisk treat an entry as used when its size is non-zero, whatever its type.
        return self.sectors != 0

    def as_dict(self) -> dict:
        return {"slot": self.slot, "type": f"0x{self.type:02x}", "start_lba": self.start_lba,
                "sectors": self.sectors, "bootable": self.boot_flag == 0x80}


@dataclass(frozen=True)
class MbrSector:
    disk_signature: int
    entries: tuple[MbrEntry, ...]    # all four, used or not
    valid_flags: bool                # every boot flag is 0x00 or 0x80

    @property
    def used(self) -> list[MbrEntry]:
        return [e for e in self.entries if e.used]

    @property
    def protective_entries(self) -> list[MbrEntry]:
        return [e for e in self.used if e.type == GPT_PROTECTIVE]


def parse_mbr_sector(sector: bytes) -> MbrSector | None:
    """Parse a 512-byte MBR/EBR sector; None without the 0x55AA signature."""
    if len(sector) < MBR_SECTOR:
        return None
    from dissect.volume.disk.schemes.mbr import c_mbr  # heavy import, only when reading a table

    try:
        raw = c_mbr.mbr_s(sector[:MBR_SECTOR])
    except EOFError as exc:  # cannot happen with 512 bytes; keep library errors out of callers
        raise CorruptDataError(f"MBR: cannot parse sector: {exc}") from None
    if raw.bootsig != BOOT_SIGNATURE:
        return None
    entries = tuple(
        MbrEntry(i + 1, p.bootable, p.type, p.sector_ofs, p.sector_size) for i, p in enumerate(raw.part)
    )
    return MbrSector(raw.vol_no, entries, all(e.boot_flag in (0x00, 0x80) for e in entries))


def looks_like_boot_sector(sector: bytes) -> bool:
    """True when sector 0 is a filesystem boot sector (a whole-disk FAT/NTFS/exFAT), not an MBR.

    Same idea as libblkid's check: an x86 jump, then a filesystem name where the BPB keeps it.
    """
    if len(sector) < MBR_SECTOR or sector[0] not in (0xEB, 0xE9):
        return False
    return (
        sector[3:11] in (b"NTFS    ", b"EXFAT   ")
        or sector[0x36:0x3B] in (b"FAT12", b"FAT16")
        or sector[0x52:0x57] == b"FAT32"
    )


def classify_for_gpt(mbr: MbrSector | None, disk_sectors: int, warnings: list[str]) -> str:
    """MBR kind on a GPT disk: protective, hybrid, none (no signature) or invalid; warns on oddities."""
    if mbr is None:
        warnings.append("no valid MBR in sector 0: the GPT has no protective MBR")
        return "none"
    protective = mbr.protective_entries
    others = [e for e in mbr.used if e.type != GPT_PROTECTIVE]
    if not protective:
        warnings.append("the MBR in sector 0 has no protective 0xEE entry")
        return "invalid"
    pmbr = protective[0]
    if pmbr.start_lba != 1:
        warnings.append(f"the protective MBR entry starts at LBA {pmbr.start_lba}, not 1")
        return "invalid"
    if len(protective) > 1:
        warnings.append(f"the MBR has {len(protective)} protective 0xEE entries")
    if not others:
        expected = min(disk_sectors - 1, MAX_32BIT_LBA)
        if pmbr.sectors != expected:
            warnings.append(
                f"protective MBR covers {pmbr.sectors} sectors but the image has {disk_sectors} "
                f"(expected {expected})"
            )
        return "protective"
    return "hybrid"


def _make_partition(number: int, entry: MbrEntry, start_lba: int, disk_signature: int,
                    logical: bool = False) -> Partition:
    ptype = lookup_type_entry(entry.type)
    return Partition(
        number=number,
        start=start_lba * MBR_SECTOR,
        size=entry.sectors * MBR_SECTOR,
        first_lba=start_lba,
        last_lba=start_lba + entry.sectors - 1,
        mbr_type=entry.type,
        type_name=ptype.name if ptype else None,
        type_key=ptype.key if ptype else None,
        role=ptype.role if ptype else None,
        uuid=f"{disk_signature:08x}-{number:02x}",  # blkid's PARTUUID form for MBR disks
        bootable=entry.boot_flag == 0x80,
        logical=logical,
    )


def read_mbr_table(source: ByteSource, mbr: MbrSector, limits: Limits) -> PartitionTable:
    """Build the table of a plain MBR disk, following the first extended partition's EBR chain."""
    warnings: list[str] = []
    partitions: list[Partition] = []
    extended: list[Partition] = []
    for entry in mbr.entries:
        if not entry.used:
            continue
        if entry.start_lba == 0:
            warnings.append(f"MBR entry {entry.slot} starts at LBA 0 (over the MBR itself)")
        part = _make_partition(entry.slot, entry, entry.start_lba, mbr.disk_signature)
        partitions.append(part)
        if entry.type in EXTENDED_TYPES:
            extended.append(part)
    if len(extended) > 1:
        warnings.append(f"{len(extended)} extended partitions in the MBR; only the first is followed")
    if extended:
        partitions.extend(_read_logical(source, extended[0], mbr.disk_signature, limits, warnings))
    primaries_and_logicals = [p for p in partitions if p.mbr_type not in EXTENDED_TYPES or p.logical]
    truncated = check_extents(primaries_and_logicals, source.size, warnings)
    check_overlaps(primaries_and_logicals, warnings)
    return PartitionTable(
        scheme="mbr",
        sector_size=MBR_SECTOR,
        partitions=partitions,
        warnings=warnings,
        details={
            "mbr": "plain",
            "mbr_disk_signature": f"0x{mbr.disk_signature:08x}",
            "disk_sectors": source.size // MBR_SECTOR,
            "image_state": "truncated" if truncated else "ok",
        },
    )


def _read_logical(source: ByteSource, extended: Partition, disk_signature: int, limits: Limits,
                  warnings: list[str]) -> list[Partition]:
    """Walk the EBR chain: bounded by limits.max_ebr_chain, loops detected by EBR position."""
    logical: list[Partition] = []
    ext_start = extended.first_lba
    ebr_lba = ext_start
    seen: set[int] = set()
    number = 5  # Linux, fdisk and blkid number logical partitions from 5
    for _ in range(limits.max_ebr_chain):
        if ebr_lba in seen:
            warnings.append(f"EBR chain loops back to LBA {ebr_lba}; stopped following it")
            return logical
        seen.add(ebr_lba)
        if not extended.first_lba <= ebr_lba <= extended.last_lba:
            warnings.append(f"EBR at LBA {ebr_lba} lies outside the extended partition; stopped")
            return logical
        sector = source.read_at(ebr_lba * MBR_SECTOR, MBR_SECTOR)
        if len(sector) < MBR_SECTOR:
            warnings.append(f"EBR at LBA {ebr_lba} is beyond the end of the image: the image looks truncated")
            return logical
        ebr = parse_mbr_sector(sector)
        if ebr is None:
            warnings.append(f"EBR at LBA {ebr_lba} has no 0x55AA signature; logical partitions end there")
            return logical
        # Only the first two entries of an EBR are meaningful: one data entry, one link.
        data = next((e for e in ebr.entries[:2] if e.used and e.type not in EXTENDED_TYPES), None)
        link = next((e for e in ebr.entries[:2] if e.used and e.type in EXTENDED_TYPES), None)
        if any(e.used for e in ebr.entries[2:]):
            warnings.append(f"EBR at LBA {ebr_lba} uses entries 3-4; ignored")
        if data is not None:
            logical.append(_make_partition(number, data, ebr_lba + data.start_lba, disk_signature, logical=True))
            number += 1
        if link is None:
            return logical
        ebr_lba = ext_start + link.start_lba
    warnings.append(f"EBR chain longer than the limit of {limits.max_ebr_chain}; stopped following it")
    return logical
