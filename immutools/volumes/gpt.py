"""GPT: header and entry-array validation, backup fallback, 512/4096-byte sectors, hybrid MBRs.

The header and entry layouts are parsed with dissect.volume's structure definitions (``c_gpt``).
Its table reader, ``dissect.volume.disk.schemes.gpt.GPT`` (3.18), is not used, because:
  * partition sizes come out as ``(last_lba - first_lba) * sector_size``, one sector short (the
    last LBA is inclusive; tests/test_volumes.py pins this);
  * it checks neither the header CRC32 nor the entry-array CRC32 and never reads the backup header;
  * it reads with the sector size it is given (no 4096-byte probe) and finds the header through the
    MBR's 0xEE entry, so a GPT without a protective MBR is not read at all;
  * it trusts the entry count and entry size (2^32 entries means 2^32 reads) and treats an entry
    as unused when its first LBA is 0, where the UEFI spec says an all-zero type GUID.
So the validation and fallback below are ours. Format facts: UEFI spec §5.3.2 (header: signature
"EFI PART", header CRC32 over HeaderSize bytes with the CRC field zeroed, MyLBA, AlternateLBA,
entry array CRC32 over NumberOfPartitionEntries * SizeOfPartitionEntry bytes; SizeOfPartitionEntry
is 128 * 2^n) and §5.3.3 (entries: type GUID, unique GUID, first and last LBA inclusive,
attributes, 36 UTF-16LE name units). GUIDs are stored mixed-endian (``uuid.UUID(bytes_le=...)``).
"""

from __future__ import annotations

import uuid as uuid_mod
import zlib
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError, LimitExceededError
from immutools.image.source import ByteSource
from immutools.limits import Limits
from immutools.volumes.attributes import decode_attributes
from immutools.volumes.checks import check_extents, check_overlaps, describe
from immutools.volumes.mbr import GPT_PROTECTIVE, MAX_32BIT_LBA, MbrSector, classify_for_gpt
from immutools.volumes.model import Partition, PartitionTable
from immutools.volumes.types import lookup_label_role, lookup_type_entry

SECTOR_SIZES = (512, 4096)          # probed in this order (the DDI spec recommends this probe)
SIGNATURE = b"EFI PART"
HEADER_MIN_SIZE = 92                # the defined fields end at byte 92
REVISION_1_0 = 0x00010000
ENTRY_STRUCT_SIZE = 128             # the fields we read; larger entries carry padding
ENTRY_MAX_SIZE = 4096               # our bound; real tables use 128
_CRC_FIELD = slice(16, 20)


@dataclass
class GptHeader:
    lba: int
    sector_size: int
    revision: int = 0
    header_size: int = 0
    current_lba: int = 0
    backup_lba: int = 0
    first_usable_lba: int = 0
    last_usable_lba: int = 0
    disk_guid: str = ""
    entries_lba: int = 0
    entry_count: int = 0
    entry_size: int = 0
    entries_crc: int = 0
    header_crc_ok: bool | None = None
    entries_crc_ok: bool | None = None
    entries: bytes | None = None
    problems: list[str] = field(default_factory=list)
    limit_hit: bool = False

    @property
    def usable(self) -> bool:
        return not self.problems

    def status(self) -> dict:
        return {
            "lba": self.lba,
            "status": "ok" if self.usable else "damaged",
            "header_crc_ok": self.header_crc_ok,
            "entries_crc_ok": self.entries_crc_ok,
            "problems": list(self.problems),
        }


def _c_gpt():
    from dissect.volume.disk.schemes.gpt import c_gpt  # heavy import, only when reading a table

    return c_gpt


def read_header(source: ByteSource, lba: int, sector_size: int, limits: Limits) -> GptHeader | None:
    """Read and validate the GPT header at ``lba``; None when the signature is absent.

    A header with a signature but failing a check comes back with ``problems`` filled in; its entry
    array is read (and CRC-checked) only when the header itself checks out.
    """
    sector = source.read_at(lba * sector_size, sector_size)
    if len(sector) < sector_size or sector[:8] != SIGNATURE:
        return None
    try:
        raw = _c_gpt().GPT_HEADER(sector[:512])
    except (EOFError, ValueError) as exc:
        raise CorruptDataError(f"GPT header at LBA {lba}: cannot parse: {exc}") from None
    header = GptHeader(
        lba=lba,
        sector_size=sector_size,
        revision=raw.revision,
        header_size=raw.header_size,
        current_lba=raw.current_lba,
        backup_lba=raw.backup_lba,
        first_usable_lba=raw.first_usable_lba,
        last_usable_lba=raw.last_usable_lba,
        disk_guid=str(uuid_mod.UUID(bytes_le=bytes(raw.guid))),
        entries_lba=raw.lba_partition_array,
        entry_count=raw.partition_table_count,
        entry_size=raw.partition_entry_size,
        entries_crc=raw.partition_table_crc,
    )
    problems = header.problems
    if not HEADER_MIN_SIZE <= raw.header_size <= sector_size:
        problems.append(f"header size {raw.header_size} is outside {HEADER_MIN_SIZE}..{sector_size}")
        return header
    covered = bytearray(sector[: raw.header_size])
    covered[_CRC_FIELD] = b"\0\0\0\0"
    computed = zlib.crc32(covered)
    header.header_crc_ok = computed == raw.crc32
    if not header.header_crc_ok:
        problems.append(f"header CRC32 mismatch (stored 0x{raw.crc32:08x}, computed 0x{computed:08x})")
        return header  # nothing else in it can be trusted
    if raw.current_lba != lba:
        problems.append(f"header says it is at LBA {raw.current_lba} but was found at LBA {lba}")
    if raw.first_usable_lba > raw.last_usable_lba:
        problems.append(f"first usable LBA {raw.first_usable_lba} is after last usable LBA {raw.last_usable_lba}")
    size = raw.partition_entry_size
    if size < ENTRY_STRUCT_SIZE or size > ENTRY_MAX_SIZE or size % ENTRY_STRUCT_SIZE:
        problems.append(f"partition entry size {size} is not a multiple of 128 in 128..{ENTRY_MAX_SIZE}")
    if raw.partition_table_count > limits.max_partitions:
        problems.append(
            f"partition entry count {raw.partition_table_count} exceeds the limit of {limits.max_partitions}"
        )
        header.limit_hit = True
    if problems:
        return header
    array_bytes = raw.partition_table_count * size
    array_sectors = -(-array_bytes // sector_size)
    first, after = raw.lba_partition_array, raw.lba_partition_array + array_sectors
    if first == 0 or first <= lba < after:
        problems.append(f"partition entry array at LBA {first} overlaps the MBR or this header")
        return header
    if first * sector_size + array_bytes > source.size:
        problems.append(
            f"partition entry array at LBA {first} ({array_bytes} bytes) extends beyond the end of the image"
        )
        return header
    entries = source.read_exact(first * sector_size, array_bytes)
    computed = zlib.crc32(entries)
    header.entries_crc_ok = computed == raw.partition_table_crc
    if not header.entries_crc_ok:
        problems.append(
            f"partition entry array CRC32 mismatch (stored 0x{raw.partition_table_crc:08x}, "
            f"computed 0x{computed:08x})"
        )
        return header
    header.entries = entries
    return header


def _decode_name(raw: bytes) -> str | None:
    # 36 UTF-16LE code units, NUL-terminated when shorter.
    units = bytes(raw)
    for i in range(0, len(units) - 1, 2):
        if units[i] == 0 and units[i + 1] == 0:
            units = units[:i]
            break
    name = units.decode("utf-16-le", errors="replace")
    return name or None


def _partitions(header: GptHeader, warnings: list[str]) -> list[Partition]:
    c_gpt = _c_gpt()
    ss = header.sector_size
    parts: list[Partition] = []
    assert header.entries is not None
    for index in range(header.entry_count):
        raw_entry = header.entries[index * header.entry_size : index * header.entry_size + ENTRY_STRUCT_SIZE]
        if not any(raw_entry[:16]):  # all-zero type GUID: unused entry
            continue
        try:
            entry = c_gpt.GPT_PARTITION(raw_entry)
        except (EOFError, ValueError) as exc:
            raise CorruptDataError(f"GPT entry {index + 1}: cannot parse: {exc}") from None
        number = index + 1
        type_guid = str(uuid_mod.UUID(bytes_le=bytes(entry.type_guid)))
        label = _decode_name(entry.name)
        if entry.last_lba < entry.first_lba:
            warnings.append(
                f"GPT entry {number}: last LBA {entry.last_lba} is before first LBA {entry.first_lba}; skipped"
            )
            continue
        ptype = lookup_type_entry(type_guid)
        part = Partition(
            number=number,
            start=entry.first_lba * ss,
            size=(entry.last_lba - entry.first_lba + 1) * ss,  # last LBA is inclusive
            first_lba=entry.first_lba,
            last_lba=entry.last_lba,
            type_guid=type_guid,
            type_name=ptype.name if ptype else None,
            type_key=ptype.key if ptype else None,
            role=ptype.role if ptype else None,
            uuid=str(uuid_mod.UUID(bytes_le=bytes(entry.partition_guid))),
            label=label,
            label_role=lookup_label_role(label),
            attributes=decode_attributes(entry.attribute_flags, ab_semantics=bool(ptype and ptype.ab)),
        )
        if entry.first_lba < header.first_usable_lba or entry.last_lba > header.last_usable_lba:
            warnings.append(
                f"{describe(part)} (LBA {entry.first_lba}-{entry.last_lba}) lies outside the usable area "
                f"{header.first_usable_lba}-{header.last_usable_lba}"
            )
        parts.append(part)
    return parts


def gpt_signature_present(source: ByteSource) -> bool:
    return any(source.read_at(ss, 8) == SIGNATURE for ss in SECTOR_SIZES)


def _backup_candidates(source: ByteSource, ss: int, damaged: GptHeader | None, mbr: MbrSector | None) -> list[int]:
    last = source.size // ss - 1
    lbas = [last]
    if damaged is not None and damaged.sector_size == ss and damaged.backup_lba:
        lbas.append(damaged.backup_lba)   # only a place to look; the header found there is checked
    if mbr is not None:
        for entry in mbr.protective_entries:
            if entry.start_lba == 1 and entry.sectors != MAX_32BIT_LBA:
                lbas.append(entry.start_lba + entry.sectors - 1)
    return list(dict.fromkeys(lba for lba in lbas if 1 < lba <= last))


def _check_backup(source: ByteSource, primary: GptHeader, limits: Limits, warnings: list[str],
                  details: dict) -> None:
    ss = primary.sector_size
    last = source.size // ss - 1
    alt = primary.backup_lba
    if alt > last:
        short = (alt - last) * ss
        warnings.append(
            f"the backup GPT header should be at LBA {alt} but the image ends at LBA {last} "
            f"({short} bytes short): the image looks truncated"
        )
        details["backup"] = {"lba": alt, "status": "beyond-end"}
        details["image_state"] = "truncated"
        return
    if alt <= 1:
        warnings.append(f"the primary GPT header points to a backup at LBA {alt}; no backup checked")
        details["backup"] = {"lba": alt, "status": "missing"}
        return
    backup = read_header(source, alt, ss, limits)
    if backup is None:
        warnings.append(f"no backup GPT header at LBA {alt}")
        details["backup"] = {"lba": alt, "status": "missing"}
    elif not backup.usable:
        warnings.append(f"the backup GPT header at LBA {alt} is damaged: {'; '.join(backup.problems)}")
        details["backup"] = backup.status()
    else:
        details["backup"] = backup.status()
        differences = [
            name for name, a, b in (
                ("disk GUID", primary.disk_guid, backup.disk_guid),
                ("entry count", primary.entry_count, backup.entry_count),
                ("entry size", primary.entry_size, backup.entry_size),
                ("entry array", primary.entries, backup.entries),
                ("usable area", (primary.first_usable_lba, primary.last_usable_lba),
                 (backup.first_usable_lba, backup.last_usable_lba)),
            ) if a != b
        ]
        if differences:
            warnings.append(f"the backup GPT differs from the primary: {', '.join(differences)}")
            details["backup"]["differs"] = differences
    if alt < last:
        warnings.append(
            f"the backup GPT header is at LBA {alt} but the image's last LBA is {last}: the image was "
            f"grown without moving the backup GPT"
        )
        details["image_state"] = "grown"


def read_gpt(source: ByteSource, mbr: MbrSector | None, limits: Limits, search_backup: bool) -> PartitionTable | None:
    """Read the GPT; None when there is no GPT header at LBA 1 (and, with ``search_backup``, none at
    the end of the image either). Raises when headers exist but none is usable."""
    warnings: list[str] = []
    details: dict = {"image_state": "ok"}
    primaries = [h for ss in SECTOR_SIZES if (h := read_header(source, 1, ss, limits)) is not None]
    usable_primaries = [h for h in primaries if h.usable]
    if len(usable_primaries) > 1:
        warnings.append("valid GPT headers for both 512- and 4096-byte sectors; using 512")
    if usable_primaries:
        used = usable_primaries[0]
        details["header_used"] = "primary"
        details["primary"] = used.status()
        _check_backup(source, used, limits, warnings, details)
    else:
        if not primaries and not search_backup:
            return None
        damaged = primaries[0] if primaries else None
        order = [damaged.sector_size] if damaged else []
        order += [ss for ss in SECTOR_SIZES if ss not in order]
        used = None
        tried: list[GptHeader] = []
        for ss in order:
            for lba in _backup_candidates(source, ss, damaged, mbr):
                header = read_header(source, lba, ss, limits)
                if header is None:
                    continue
                tried.append(header)
                if header.usable:
                    used = header
                    break
            if used:
                break
        if used is None:
            if not primaries and not (mbr is not None and mbr.protective_entries):
                return None  # a stray or damaged header at the end alone does not make a GPT disk
            reasons = [f"primary at LBA 1 ({h.sector_size}-byte sectors): {'; '.join(h.problems)}" for h in primaries]
            reasons += [f"backup at LBA {h.lba}: {'; '.join(h.problems)}" for h in tried]
            if not primaries:
                reasons.insert(0, "the MBR has a protective 0xEE entry but there is no primary header at LBA 1")
            if not tried:
                reasons.append("no backup header found")
            error = LimitExceededError if any(h.limit_hit for h in primaries + tried) else CorruptDataError
            raise error("GPT unreadable: " + " | ".join(reasons))
        details["header_used"] = "backup"
        details["backup"] = used.status()
        if damaged is not None:
            details["primary"] = damaged.status()
            warnings.append(
                f"the primary GPT header is damaged ({'; '.join(damaged.problems)}); "
                f"using the backup header at LBA {used.lba}"
            )
        else:
            details["primary"] = {"lba": 1, "status": "missing"}
            warnings.append(f"no primary GPT header at LBA 1; using the backup header at LBA {used.lba}")
        last = source.size // used.sector_size - 1
        if used.lba < last:
            warnings.append(
                f"the backup GPT header is at LBA {used.lba} but the image's last LBA is {last}: the image "
                f"was grown without moving the backup GPT"
            )
            details["image_state"] = "grown"

    ss = used.sector_size
    disk_sectors = source.size // ss
    if used.revision != REVISION_1_0:
        warnings.append(f"GPT revision 0x{used.revision:08x} (expected 0x{REVISION_1_0:08x})")
    mbr_kind = classify_for_gpt(mbr, disk_sectors, warnings)
    partitions = _partitions(used, warnings)
    if check_extents(partitions, source.size, warnings):
        details["image_state"] = "truncated"
    check_overlaps(partitions, warnings)
    if used.last_usable_lba >= disk_sectors and details["image_state"] != "truncated":
        warnings.append(
            f"the GPT's last usable LBA {used.last_usable_lba} is beyond the image's {disk_sectors} sectors"
        )
    mbr_entries = [e.as_dict() for e in mbr.used] if mbr is not None else []
    if mbr_kind == "hybrid":
        _check_hybrid(mbr, partitions, warnings)
    details.update(
        {
            "mbr": mbr_kind,
            "mbr_disk_signature": f"0x{mbr.disk_signature:08x}" if mbr is not None else None,
            "mbr_partitions": mbr_entries,
            "revision": f"{used.revision >> 16}.{used.revision & 0xFFFF}",
            "first_usable_lba": used.first_usable_lba,
            "last_usable_lba": used.last_usable_lba,
            "entries_lba": used.entries_lba,
            "entry_count": used.entry_count,
            "entry_size": used.entry_size,
            "backup_lba": used.backup_lba if details["header_used"] == "primary" else used.lba,
            "disk_sectors": disk_sectors,
        }
    )
    return PartitionTable(
        scheme="gpt",
        sector_size=ss,
        disk_guid=used.disk_guid,
        partitions=partitions,
        warnings=warnings,
        details=details,
    )


def _check_hybrid(mbr: MbrSector, partitions: list[Partition], warnings: list[str]) -> None:
    """A hybrid MBR entry should mirror one GPT partition exactly; say so when one does not."""
    spans = {(p.first_lba, p.last_lba) for p in partitions}
    for entry in mbr.used:
        if entry.type == GPT_PROTECTIVE:
            continue
        if (entry.start_lba, entry.start_lba + entry.sectors - 1) not in spans:
            warnings.append(
                f"hybrid MBR entry {entry.slot} (type 0x{entry.type:02x}, LBA {entry.start_lba}, "
                f"{entry.sectors} sectors) matches no GPT partition"
            )
