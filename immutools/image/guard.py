"""Decompression-bomb guard: what tells a sparse disk image from a bomb, whatever the codec.

The expansion ratio alone cannot: an 8 GiB Flatcar ``.bin.bz2`` is mostly zeros and expands about
1000:1, as much as a bomb. What a disk image has and a bomb lacks is a layout that declares its own
size in its first bytes — the GPT header's backup-header location, the MBR's partition extents,
the virtual size a container header states, a filesystem superblock's block count — and nothing of
the disk lies beyond that size. So the guard watches the decompressed stream as it is produced:

* once the first ``HEAD_WINDOW`` bytes are out, the largest size any structure in them declares
  (plus slack for alignment padding) becomes the bound: output past it is refused;
* when nothing in the head declares a size: a stream whose first ``max_leading_zeros`` bytes are
  all zero has no disk structure at its start (every partition table, container header and
  filesystem superblock we read lies in the first MiB) and is refused there; any other stream
  may produce at most ``max_undeclared_bytes`` (a bomb of repeated non-zero bytes is bounded too).
  A VHDX head is exempt (its size lies in a metadata region, beyond this check): it gets only the
  absolute bound;
* the absolute ``max_decompressed_bytes`` and the count of concatenated members/streams/frames
  (``max_compressed_members``) bound everything else.

A random-access index (xz, zstd) declares the total up front: ``check_total`` applies the same
bound before anything is decoded. Refusals are ``LimitExceededError`` (exit 5), one line naming the
file and the reason.

Where each declared size comes from: GPT header fields (UEFI 2.10 §5.3.2, AlternateLBA at byte
32); MBR partition entries (start LBA at +8, sector count at +12 of each 16-byte entry at 446);
FAT BPB total sectors (offsets 19 and 32); ext2/3/4 ``s_blocks_count`` (Linux
Documentation/filesystems/ext4/super.rst); squashfs ``bytes_used`` (squashfs-tools
squashfs_fs.h); XFS ``sb_dblocks`` (xfs_format.h); btrfs ``total_bytes`` (btrfs
ctree.h/on-disk format docs); EROFS ``blocks`` (erofs_fs.h); ISO 9660 volume space size (ECMA-119
§8.4.8); qcow2 ``size`` (qemu docs/interop/qcow2.txt); VMDK ``capacity`` (VMware Virtual Disk
Format 5.0); VHD footer ``Current Size`` (VHD spec, Hard Disk Footer Format).
"""

from __future__ import annotations

import struct

from immutools.errors import LimitExceededError
from immutools.limits import Limits

HEAD_WINDOW = 1024 * 1024
# A declared size plus this much: images are padded to MiB or to the compressor's block size, and a
# container file carries metadata (tables, footers) beside its virtual size.
MIN_SLACK = 64 * 1024 * 1024
SLACK_FRACTION = 8  # + 1/8 of the declared size

_ZERO_PIECE = bytes(4 * 1024 * 1024)


def is_zero(buf) -> bool:
    """True if ``buf`` (bytes-like) holds only zero bytes. memcmp speed."""
    n = len(buf)
    pos = 0
    piece = len(_ZERO_PIECE)
    view = memoryview(buf)
    try:
        while pos < n:
            step = min(piece, n - pos)
            if not _ZERO_PIECE.startswith(view[pos : pos + step]):
                return False
            pos += step
        return True
    finally:
        view.release()


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def declared_size(head: bytes) -> tuple[int, str] | None:
    """The largest size that a structure in the first bytes of a disk declares, and what said so."""
    found: list[tuple[int, str]] = []

    def u16(fmt_end: str, off: int) -> int:
        return struct.unpack_from(fmt_end + "H", head, off)[0]

    def u32(fmt_end: str, off: int) -> int:
        return struct.unpack_from(fmt_end + "I", head, off)[0]

    def u64(fmt_end: str, off: int) -> int:
        return struct.unpack_from(fmt_end + "Q", head, off)[0]

    def has(off: int, magic: bytes) -> bool:
        return head[off : off + len(magic)] == magic

    for sector in (512, 4096):
        if len(head) >= sector + 92 and has(sector, b"EFI PART"):
            my_lba, alternate = u64("<", sector + 24), u64("<", sector + 32)
            if my_lba == 1:
                found.append(((max(alternate, my_lba) + 1) * sector, f"its GPT (backup header at LBA {alternate})"))
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        if head[0] in (0xEB, 0xE9) and u16("<", 11) in (512, 1024, 2048, 4096):
            sectors = u16("<", 19) or u32("<", 32)
            if sectors:
                found.append((sectors * u16("<", 11), "its FAT boot sector"))
        ends = []
        for i in range(4):
            entry = head[446 + 16 * i : 462 + 16 * i]
            status, ptype = entry[0], entry[4]
            start, count = struct.unpack_from("<II", entry, 8)
            # A GPT's protective entry (0xEE) may say 0xFFFFFFFF sectors whatever the disk: the GPT decides.
            if status in (0, 0x80) and ptype and start and count and not (ptype == 0xEE and found):
                ends.append((start + count) * 512)
        if ends:
            found.append((max(ends), "its MBR partition table"))
    if len(head) >= 2048 and u16("<", 1024 + 56) == 0xEF53:
        log_block = u32("<", 1024 + 24)
        if log_block <= 6:
            blocks = u32("<", 1024 + 4)
            if u32("<", 1024 + 0x60) & 0x80 and len(head) >= 1024 + 0x154:  # INCOMPAT_64BIT
                blocks |= u32("<", 1024 + 0x150) << 32
            found.append((blocks << (10 + log_block), "its ext superblock"))
    if len(head) >= 48 and has(0, b"hsqs"):
        found.append((u64("<", 40), "its squashfs superblock"))
    if len(head) >= 16 and has(0, b"XFSB"):
        found.append((u32(">", 4) * u64(">", 8), "its XFS superblock"))
    if len(head) >= 65536 + 0x78 and has(65536 + 64, b"_BHRfS_M"):
        found.append((u64("<", 65536 + 0x70), "its btrfs superblock"))
    if len(head) >= 1024 + 0x28 and u32("<", 1024) == 0xE0F5E1E2:
        bits = head[1024 + 0x0C]
        if 9 <= bits <= 16:
            found.append((u32("<", 1024 + 0x24) << bits, "its EROFS superblock"))
    if len(head) >= 32768 + 130 and has(32769, b"CD001"):
        found.append((u32("<", 32768 + 80) * u16("<", 32768 + 128), "its ISO 9660 volume descriptor"))
    if len(head) >= 32 and has(0, b"QFI\xfb"):
        found.append((u64(">", 24), "its qcow2 header"))
    if len(head) >= 20 and has(0, b"KDMV"):
        found.append((u64("<", 12) * 512, "its VMDK header"))
    if len(head) >= 56 and has(0, b"conectix"):
        found.append((u64(">", 48), "its VHD footer"))
    found = [f for f in found if f[0] > 0]
    if not found:
        return None
    return max(found, key=lambda f: f[0])  # on a tie the first found


class ExpansionGuard:
    """Watches decompressed output in order; raises ``LimitExceededError`` on a bomb."""

    def __init__(self, display: str, codec: str, limits: Limits):
        self.display = display
        self.codec = codec
        self.limits = limits
        self.produced = 0
        self.members = 0
        self._head = bytearray()
        self._head_done = False
        self.declared: tuple[int, str] | None = None
        self.bound: int | None = None
        self._seen_nonzero = False
        self._exempt = False
        self.last_was_zero = False  # whether the last chunk given to data() was all zeros

    # -- what the decoders call ---------------------------------------------------------------
    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_compressed_members:
            self._refuse(
                f"more than {self.limits.max_compressed_members} concatenated {self.codec} streams/frames "
                f"(limit max_compressed_members)"
            )

    def data(self, chunk) -> None:
        """``chunk`` is the next piece of output."""
        n = len(chunk)
        if not n:
            return
        if not self._head_done:
            self._head += chunk[: HEAD_WINDOW - len(self._head)]
            if len(self._head) >= HEAD_WINDOW:
                self._settle_head()
        self.last_was_zero = is_zero(chunk)
        self._advance(n, nonzero=not self.last_was_zero)

    def zeros(self, n: int) -> None:
        """``n`` zero bytes of output that were never materialised (a repeated all-zero member)."""
        if n <= 0:
            return
        if not self._head_done:
            take = min(n, HEAD_WINDOW - len(self._head))
            self._head += bytes(take)
            if len(self._head) >= HEAD_WINDOW:
                self._settle_head()
        self._advance(n, nonzero=False)

    def finish(self) -> None:
        """The stream ended (a small image never fills the head window)."""
        if not self._head_done:
            self._settle_head()

    def check_total(self, total: int, head: bytes) -> None:
        """Random access: the index declares ``total`` bytes; ``head`` is the first bytes of output."""
        self._head = bytearray(head[:HEAD_WINDOW])
        self._settle_head()
        self.produced = 0
        if self.bound is not None and total > self.bound:
            self._refuse_past_bound(total)
        if self.bound is None and is_zero(self._head) and total >= self.limits.max_leading_zeros:
            self._refuse(
                f"its index declares {_fmt(total)} and the first {_fmt(len(self._head))} are all zeros, "
                f"with no disk structure"
            )
        if self.bound is None and not self._exempt and total > self.limits.max_undeclared_bytes:
            self._refuse(
                f"its index declares {_fmt(total)} and its first MiB declares no disk size "
                f"(limit max_undeclared_bytes)"
            )
        if total > self.limits.max_decompressed_bytes:
            self._refuse_absolute(total)

    # -- internals ------------------------------------------------------------------------------
    def _settle_head(self) -> None:
        self._head_done = True
        self._exempt = bytes(self._head[:8]) == b"vhdxfile"
        self.declared = declared_size(bytes(self._head))
        if self.declared is not None:
            size = self.declared[0]
            self.bound = size + max(MIN_SLACK, size // SLACK_FRACTION)
        self._head = bytearray()

    def _advance(self, n: int, nonzero: bool) -> None:
        self.produced += n
        if self.produced > self.limits.max_decompressed_bytes:
            self._refuse_absolute(self.produced)
        if nonzero:
            self._seen_nonzero = True
        if self.bound is not None:
            if self.produced > self.bound:
                self._refuse_past_bound(self.produced)
            return
        if not self._seen_nonzero and self.produced >= self.limits.max_leading_zeros:
            self._refuse(
                f"its first {_fmt(self.produced)} of output are all zeros, with no disk structure "
                f"(limit max_leading_zeros)"
            )
        if self._head_done and not self._exempt and self.produced > self.limits.max_undeclared_bytes:
            self._refuse(
                f"it decompresses past {_fmt(self.limits.max_undeclared_bytes)} and its first MiB declares no "
                f"disk size (no partition table, container header or filesystem superblock; limit max_undeclared_bytes)"
            )

    def _refuse_absolute(self, total: int) -> None:
        raise LimitExceededError(
            f"{self.display}: {self.codec} data decompresses to more than {self.limits.max_decompressed_bytes} "
            f"bytes (limit max_decompressed_bytes)"
        )

    def _refuse_past_bound(self, total: int) -> None:
        size, what = self.declared
        self._refuse(
            f"it decompresses past {_fmt(total - 1)} while {what} declares a {_fmt(size)} disk"
        )

    def _refuse(self, reason: str) -> None:
        raise LimitExceededError(f"{self.display}: refused as a decompression bomb ({self.codec}): {reason}")
