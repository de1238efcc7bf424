"""Identify what a partition holds, from its superblock (a few KiB of reads per partition).

Order matters: formats that keep their magic at offset 0 are checked before ones that keep it
further in, and a dm-verity superblock (``verity\\0\\0`` at 0) is reported as such even though a
hash tree follows it.

A magic number alone is not a filesystem: each filesystem probe also checks the superblock's
geometry the way the kernel does before it mounts (block sizes, counts, the fields a reader divides
by), so a block of zeros carrying only a magic number is ``unknown``, with the reason in
``details["rejected"]``. The checks, per filesystem, follow ``fs/ext4/super.c`` (``ext4_fill_super``),
``fs/xfs/libxfs/xfs_sb.c`` (``xfs_validate_sb_common``), ``fs/btrfs/disk-io.c``
(``btrfs_validate_super``), ``fs/squashfs/super.c`` (``squashfs_fill_super``), ``fs/erofs/super.c``
(``erofs_read_superblock``) and ``fs/fat/inode.c`` (``fat_read_bpb``) of Linux 6.1.
"""

from __future__ import annotations

import struct
import uuid as uuid_mod
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError
from immutools.image.source import ByteSource

# ext2/3/4 feature bits (linux fs/ext4/ext4.h).
EXT_COMPAT_HAS_JOURNAL = 0x0004
EXT_INCOMPAT_64BIT = 0x0080
# Flatcar/CoreOS "read-only" hack: the top byte of s_feature_ro_compat is set to 0xFF on the ext2
# /usr image so any kernel refuses to mount it read-write (flatcar/scripts
# build_library/disk_util Tune, the ext2 era before 3794).
EXT_RO_COMPAT_FLATCAR_RO = 0xFF000000

TALOS_META_MAGIC1 = 0x5A4B3C2D   # siderolabs/talos v1.12.0 internal/pkg/meta/internal/adv/talos/talos.go
TALOS_META_MAGIC2 = 0xA5B4C3D2
TALOS_ADV_BLOCK = 256 * 1024
SYSLINUX_ADV_MAGIC1 = 0x5A2D2FA5

EROFS_MAGIC = 0xE0F5E1E2         # kernel fs/erofs/erofs_fs.h EROFS_SUPER_MAGIC_V1


@dataclass
class FsIdentity:
    fstype: str                      # ext2|ext3|ext4|xfs|btrfs|vfat|squashfs|erofs|dm-verity|
                                     # talos-meta|luks|swap|iso9660|zero|unknown|unreadable
    label: str | None = None
    uuid: str | None = None
    size: int | None = None          # filesystem size in bytes where the superblock says
    details: dict = field(default_factory=dict)

    @property
    def mountable(self) -> bool:
        return self.fstype in FILESYSTEM_TYPES


FILESYSTEM_TYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "squashfs", "erofs"}
# What ``identify`` looks for, in order (for messages that say what was looked for).
PROBED_SIGNATURES = ("dm-verity", "LUKS", "squashfs", "XFS", "EROFS", "ext2/3/4", "btrfs", "FAT", "Talos META",
                     "swap", "ISO 9660")


def _cstr(b: bytes) -> str | None:
    s = b.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    return s or None


def _uuid(b: bytes) -> str | None:
    if not any(b):
        return None
    return str(uuid_mod.UUID(bytes=bytes(b)))


class Implausible(CorruptDataError):
    """A magic number whose superblock no kernel would mount (the message says which field)."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise Implausible(what)


def ext_superblock_problem(sb: bytes) -> str | None:
    """Why an ext2/3/4 superblock with the right magic is not mountable, or None."""
    try:
        _check_ext(sb)
    except Implausible as exc:
        return str(exc)
    return None


def _check_ext(sb: bytes) -> None:
    inodes, blocks_lo, _r, _free_lo, _free_inodes, first_data, log_bs = struct.unpack_from("<7I", sb, 0)
    blocks_per_group, = struct.unpack_from("<I", sb, 0x20)
    inodes_per_group, = struct.unpack_from("<I", sb, 0x28)
    rev_level, = struct.unpack_from("<I", sb, 0x4C)
    inode_size, = struct.unpack_from("<H", sb, 0x58)
    incompat, = struct.unpack_from("<I", sb, 0x60)
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & EXT_INCOMPAT_64BIT else 0
    blocks = blocks_lo | (blocks_hi << 32)
    _require(log_bs <= 6, f"block size 2^{10 + log_bs} is larger than 64 KiB")
    block_size = 1024 << log_bs
    _require(blocks > 0, "block count 0")
    _require(inodes > 0, "inode count 0")
    _require(0 < blocks_per_group <= 8 * block_size, f"{blocks_per_group} blocks per group")
    _require(0 < inodes_per_group <= 8 * block_size, f"{inodes_per_group} inodes per group")
    _require(first_data < blocks, f"first data block {first_data} is beyond the {blocks}-block filesystem")
    if rev_level >= 1:
        _require(_pow2(inode_size) and 128 <= inode_size <= block_size, f"inode size {inode_size}")


def probe_ext(sb: bytes) -> FsIdentity | None:
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        return None
    _check_ext(sb)
    (inodes, blocks_lo, _r, _free_lo, _free_inodes, _first, log_bs) = struct.unpack_from("<7I", sb, 0)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & EXT_INCOMPAT_64BIT else 0
    block_size = 1024 << log_bs
    blocks = blocks_lo | (blocks_hi << 32)
    # blkid's rule (libblkid ext.c): ext4 when it uses features ext3 lacks, ext3 with a journal.
    # The Flatcar read-only hack bit is not a feature and must not turn ext2 into "ext4".
    ext3_incompat = 0x0002 | 0x0004 | 0x0010      # FILETYPE | RECOVER | META_BG
    ext3_ro_compat = 0x0001 | 0x0002 | 0x0004     # SPARSE_SUPER | LARGE_FILE | BTREE_DIR
    if incompat & ~ext3_incompat or ro_compat & ~ext3_ro_compat & ~EXT_RO_COMPAT_FLATCAR_RO:
        fstype = "ext4"
    elif compat & EXT_COMPAT_HAS_JOURNAL:
        fstype = "ext3"
    else:
        fstype = "ext2"
    details = {
        "block_size": block_size,
        "blocks": blocks,
        "inodes": inodes,
        "feature_compat": compat,
        "feature_incompat": incompat,
        "feature_ro_compat": ro_compat,
        "has_journal": bool(compat & EXT_COMPAT_HAS_JOURNAL),
        "read_only_hack": (ro_compat & EXT_RO_COMPAT_FLATCAR_RO) == EXT_RO_COMPAT_FLATCAR_RO,
    }
    return FsIdentity(
        fstype,
        label=_cstr(sb[0x78:0x88]),
        uuid=_uuid(sb[0x68:0x78]),
        size=blocks * block_size,
        details=details,
    )


def probe_xfs(b0: bytes) -> FsIdentity | None:
    if b0[:4] != b"XFSB":
        return None
    _require(len(b0) >= 128, "superblock cut short")
    blocksize, dblocks = struct.unpack_from(">IQ", b0, 4)
    agblocks, agcount = struct.unpack_from(">II", b0, 84)
    version, sectsize = struct.unpack_from(">HH", b0, 100)
    blocklog, sectlog = b0[120], b0[121]
    _require(version & 0xF in (4, 5), f"version {version & 0xF} (4 or 5 exist)")
    _require(_pow2(blocksize) and 512 <= blocksize <= 65536 and blocksize == 1 << blocklog,
             f"block size {blocksize} (log {blocklog})")
    _require(_pow2(sectsize) and 512 <= sectsize <= 32768 and sectsize == 1 << sectlog,
             f"sector size {sectsize} (log {sectlog})")
    _require(dblocks > 0 and agcount > 0 and agblocks > 0, f"{dblocks} blocks in {agcount} groups of {agblocks}")
    return FsIdentity(
        "xfs",
        label=_cstr(b0[108:120]),
        uuid=_uuid(b0[32:48]),
        size=blocksize * dblocks,
        details={"block_size": blocksize, "blocks": dblocks, "version": struct.unpack_from(">H", b0, 100)[0] & 0xF},
    )


def probe_btrfs(sb: bytes) -> FsIdentity | None:
    if sb[0x40:0x48] != b"_BHRfS_M":
        return None
    _require(len(sb) >= 0x12B + 256, "superblock cut short")
    total_bytes = struct.unpack_from("<Q", sb, 0x70)[0]
    sectorsize, nodesize = struct.unpack_from("<II", sb, 0x90)
    bytenr, = struct.unpack_from("<Q", sb, 0x30)
    _require(bytenr == 0x10000, f"the superblock says it is at byte {bytenr}, not 65536")
    _require(_pow2(sectorsize) and 4096 <= sectorsize <= 65536, f"sector size {sectorsize}")
    _require(_pow2(nodesize) and sectorsize <= nodesize <= 65536, f"node size {nodesize}")
    _require(total_bytes > 0, "total size 0")
    incompat = struct.unpack_from("<Q", sb, 0xB0)[0]
    return FsIdentity(
        "btrfs",
        label=_cstr(sb[0x12B:0x12B + 256]),
        uuid=_uuid(sb[0x20:0x30]),
        size=total_bytes,
        details={"sector_size": sectorsize, "node_size": nodesize, "feature_incompat": incompat},
    )


def probe_squashfs(b0: bytes) -> FsIdentity | None:
    if b0[:4] != b"hsqs":
        return None
    _require(len(b0) >= 96, "superblock cut short")
    (inodes, mkfs_time, block_size, frags, compression, block_log, flags, no_ids, major, minor) = struct.unpack_from(
        "<IIIIHHHHHH", b0, 4
    )
    bytes_used = struct.unpack_from("<Q", b0, 40)[0]
    _require(1 <= major <= 4, f"version {major}.{minor}")
    if major == 4:
        _require(_pow2(block_size) and 4096 <= block_size <= 1 << 20 and block_size == 1 << block_log,
                 f"block size {block_size} (log {block_log})")
        _require(bytes_used >= 96 and inodes > 0, f"{bytes_used} bytes used, {inodes} inodes")
    comp = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}.get(compression, f"unknown-{compression}")
    return FsIdentity(
        "squashfs",
        size=bytes_used,
        details={"version": f"{major}.{minor}", "compression": comp, "block_size": block_size, "inodes": inodes, "mkfs_time": mkfs_time},
    )


def probe_erofs(sb: bytes) -> FsIdentity | None:
    if len(sb) < 128 or struct.unpack_from("<I", sb, 0)[0] != EROFS_MAGIC:
        return None
    blkszbits = sb[0x0C]
    blocks = struct.unpack_from("<I", sb, 0x24)[0]
    incompat = struct.unpack_from("<I", sb, 0x50)[0]
    _require(9 <= blkszbits <= 16, f"block size 2^{blkszbits}")
    return FsIdentity(
        "erofs",
        label=_cstr(sb[0x40:0x50]),
        uuid=_uuid(sb[0x30:0x40]),
        size=blocks << blkszbits,
        details={"block_size": 1 << blkszbits, "feature_incompat": incompat,
                 "feature_compat": struct.unpack_from("<I", sb, 0x08)[0]},
    )


def probe_vfat(b0: bytes) -> FsIdentity | None:
    if len(b0) < 512 or b0[510:512] != b"\x55\xaa":
        return None
    bps = struct.unpack_from("<H", b0, 11)[0]
    spc = b0[13]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        return None
    if b0[0] not in (0xEB, 0xE9):
        return None
    if b0[82:87] == b"FAT32":
        label, serial, kind = b0[71:82], b0[67:71], "FAT32"
    elif b0[54:59] in (b"FAT12", b"FAT16", b"FAT  "):
        label, serial, kind = b0[43:54], b0[39:43], b0[54:59].decode().strip()
    else:
        return None
    total = struct.unpack_from("<H", b0, 19)[0] or struct.unpack_from("<I", b0, 32)[0]
    reserved, fats = struct.unpack_from("<H", b0, 14)[0], b0[16]
    fat_sectors = struct.unpack_from("<H", b0, 22)[0] or (struct.unpack_from("<I", b0, 36)[0] if kind == "FAT32" else 0)
    _require(reserved > 0 and fats > 0, f"{reserved} reserved sectors, {fats} FATs")
    _require(fat_sectors > 0 and total > reserved + fats * fat_sectors,
             f"{total} sectors cannot hold {reserved} reserved and {fats} FATs of {fat_sectors}")
    vol_id = struct.unpack_from("<I", serial)[0]
    lab = label.decode("ascii", errors="replace").strip()
    return FsIdentity(
        "vfat",
        label=None if lab in ("", "NO NAME") else lab,
        uuid=f"{vol_id >> 16:04X}-{vol_id & 0xFFFF:04X}",
        size=total * bps,
        details={"fat": kind, "sector_size": bps, "cluster_size": bps * spc},
    )


def parse_verity_superblock(b: bytes) -> dict | None:
    """dm-verity superblock as written by ``veritysetup format`` (cryptsetup lib/verity/verity.c)."""
    if len(b) < 512 or b[:8] != b"verity\0\0":
        return None
    version, hash_type = struct.unpack_from("<II", b, 8)
    algorithm = _cstr(b[32:64])
    data_block_size, hash_block_size, data_blocks, salt_size = struct.unpack_from("<IIQH", b, 64)
    if salt_size > 256:
        return None
    salt = b[88:88 + salt_size]
    return {
        "version": version,
        "hash_type": hash_type,
        "uuid": _uuid(b[16:32]),
        "algorithm": algorithm,
        "data_block_size": data_block_size,
        "hash_block_size": hash_block_size,
        "data_blocks": data_blocks,
        "salt": salt.hex(),
    }


def probe_verity(b0: bytes) -> FsIdentity | None:
    sb = parse_verity_superblock(b0)
    if sb is None:
        return None
    # cryptsetup lib/verity/verity.c VERITY_read_sb: version 1, hash type 0 or 1, sane block sizes.
    _require(sb["version"] == 1 and sb["hash_type"] in (0, 1), f"version {sb['version']}, hash type {sb['hash_type']}")
    for what in ("data_block_size", "hash_block_size"):
        _require(_pow2(sb[what]) and 512 <= sb[what] <= 1 << 30, f"{what.replace('_', ' ')} {sb[what]}")
    _require(sb["data_blocks"] > 0 and bool(sb["algorithm"]), f"{sb['data_blocks']} data blocks, algorithm {sb['algorithm']!r}")
    return FsIdentity("dm-verity", uuid=sb["uuid"], details=sb)


def probe_talos_meta(source: ByteSource) -> FsIdentity | None:
    for off in (0, TALOS_ADV_BLOCK):
        head = source.read_at(off, 4)
        if len(head) == 4 and struct.unpack(">I", head)[0] == TALOS_META_MAGIC1:
            tail = source.read_at(off + TALOS_ADV_BLOCK - 4, 4)
            if len(tail) == 4 and struct.unpack(">I", tail)[0] == TALOS_META_MAGIC2:
                return FsIdentity("talos-meta", details={"copy_offset": off})
    return None


def probe_luks(b0: bytes) -> FsIdentity | None:
    if b0[:6] != b"LUKS\xba\xbe":
        return None
    version = struct.unpack_from(">H", b0, 6)[0]
    # cryptsetup's header checks (lib/luks1/keymanager.c LUKS_read_phdr, lib/luks2/luks2_disk_metadata.c):
    # LUKS1 has a payload offset and a key size, LUKS2 a header size that is a power of two from 16 KiB.
    _require(version in (1, 2), f"version {version}")
    if version == 1:
        payload, key_bytes = struct.unpack_from(">II", b0, 104)
        _require(payload > 0 and 0 < key_bytes <= 512 and bool(_cstr(b0[8:40])),
                 f"payload offset {payload}, key size {key_bytes}")
        uid = _cstr(b0[168:208])
        label = None
    else:
        hdr_size = struct.unpack_from(">Q", b0, 8)[0]
        _require(_pow2(hdr_size) and 16384 <= hdr_size <= 4 << 20, f"header size {hdr_size}")
        label = _cstr(b0[24:72])
        uid = _cstr(b0[168:208])
    return FsIdentity("luks", label=label, uuid=uid, details={"version": version})


def probe_swap(source: ByteSource) -> FsIdentity | None:
    for page in (4096, 8192, 16384, 65536):
        sig = source.read_at(page - 10, 10)
        if sig in (b"SWAPSPACE2", b"SWAP-SPACE"):
            hdr = source.read_at(1024, 1024)
            return FsIdentity("swap", label=_cstr(hdr[28:44]), uuid=_uuid(hdr[12:28]), details={"page_size": page})
    return None


_PROBE_NAMES = {"probe_verity": "dm-verity", "probe_luks": "LUKS", "probe_squashfs": "squashfs", "probe_xfs": "XFS", "probe_erofs": "EROFS", "probe_ext": "ext2/3/4",
                "probe_btrfs": "btrfs", "probe_vfat": "FAT"}


def identify(source: ByteSource) -> FsIdentity:
    """Identify the content of ``source`` (a partition). Reads at most ~70 KiB.

    A filesystem magic whose superblock fails the geometry checks does not identify anything; when
    nothing else does, the result is ``unknown`` with ``details["rejected"]`` saying what was seen."""
    if source.size == 0:
        return FsIdentity("zero", details={"empty": True})
    b0 = source.read_at(0, 4096)
    if not b0:
        return FsIdentity("unreadable")
    rejected: list[str] = []

    def attempt(probe, data) -> FsIdentity | None:
        try:
            return probe(data)
        except Implausible as exc:
            rejected.append(f"{_PROBE_NAMES.get(probe.__name__, probe.__name__)} magic, but {exc}")
            return None
        except struct.error:             # the magic is there, the header after it is cut short
            rejected.append(f"{_PROBE_NAMES.get(probe.__name__, probe.__name__)} magic, but the header is truncated")
            return None

    for probe in (probe_verity, probe_luks, probe_squashfs, probe_xfs):
        ident = attempt(probe, b0)
        if ident:
            return ident
    sb = source.read_at(1024, 1024)
    for probe in (probe_erofs, probe_ext):
        ident = attempt(probe, sb)
        if ident:
            return ident
    ident = attempt(probe_btrfs, source.read_at(0x10000, 4096))
    if ident:
        return ident
    ident = attempt(probe_vfat, b0)
    if ident:
        return ident
    for probe_src in (probe_talos_meta, probe_swap):
        ident = probe_src(source)
        if ident:
            return ident
    if source.read_at(0x8001, 5) == b"CD001":
        return FsIdentity("iso9660")
    if rejected:
        return FsIdentity("unknown", details={"rejected": rejected})
    if _looks_zero(source):
        return FsIdentity("zero")
    return FsIdentity("unknown")


def _looks_zero(source: ByteSource) -> bool:
    """All-zero at the places any superblock would be (start, 64 KiB, middle, end): metadata-cheap."""
    probes = [(0, 65536 + 4096)]
    if source.size > 1 << 20:
        probes += [(source.size // 2, 4096), (max(0, source.size - 65536), 65536)]
    for off, n in probes:
        if any(source.read_at(off, n)):
            return False
    return True
