"""Recognise what an input file is from its first (and last) bytes, never from its name.

``sniff(head, tail)`` answers ``(kind, name)``:

* ``("compressed", codec)`` — a whole-file compressed stream: gzip, bzip2, xz, zstd, lz4;
* ``("container", format)`` — a virtual-disk container: qcow2, vmdk, vmdk-descriptor, vhd, vhdx;
* ``("archive", format)`` — something we recognise but do not open (tar, zip, qcow v1);
* ``("raw", "raw")`` — anything else: the bytes are the disk.

Magic numbers and where they come from:

* gzip ``1f 8b 08`` (RFC 1952 §2.3.1: ID1, ID2, CM=deflate)
* bzip2 ``"BZh" '1'..'9'`` followed by the block magic (pi) or the end-of-stream magic (sqrt pi)
* xz ``fd 37 7a 58 5a 00`` (xz file format 1.1.0, §2.1.1.1)
* zstd ``28 b5 2f fd`` (RFC 8878 §3.1.1); skippable frames ``5?  2a 4d 18`` (§3.1.2), which
  pzstd writes first, and which lz4 frames may also start with (lz4 Frame format, "Skippable frames")
* lz4 frame ``04 22 4d 18``; lz4 legacy frame ``02 21 4c 18`` (written by ``lz4 -l`` and the Linux
  kernel's initramfs/zImage lz4)
* qcow ``"QFI" fb`` then a big-endian version (qemu docs/interop/qcow2.txt)
* VMDK sparse extent ``"KDMV"`` (VMware Virtual Disk Format 5.0, SparseExtentHeader); a text
  descriptor starts ``# Disk DescriptorFile``
* VHDX ``"vhdxfile"`` at offset 0 ([MS-VHDX] 2.2.1)
* VHD ``"conectix"`` in the 512-byte footer at the end of the file; dynamic disks also keep a
  copy at offset 0; Virtual PC before 2004 wrote a 511-byte footer (VHD spec, Appendix "Hard Disk
  Footer Format")
"""

from __future__ import annotations

import struct

# How many bytes callers should pass: enough for every head magic, including a pzstd skippable
# frame followed by the real frame magic, and the tar "ustar" marker at offset 257.
HEAD_BYTES = 4096
TAIL_BYTES = 512

COMPRESSED = "compressed"
CONTAINER = "container"
ARCHIVE = "archive"
RAW = "raw"

GZIP_MAGIC = b"\x1f\x8b\x08"
BZIP2_MAGIC = b"BZh"
BZIP2_BLOCK_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
QCOW_MAGIC = b"QFI\xfb"
VMDK_SPARSE_MAGIC = b"KDMV"
VMDK_DESCRIPTOR_MAGIC = b"# Disk DescriptorFile"
VHDX_MAGIC = b"vhdxfile"
VHD_COOKIE = b"conectix"


def is_skippable_frame(data: bytes, pos: int = 0) -> bool:
    """zstd/lz4 skippable frame: little-endian magic 0x184D2A50..0x184D2A5F."""
    return len(data) >= pos + 4 and data[pos + 1 : pos + 4] == b"\x2a\x4d\x18" and data[pos] & 0xF0 == 0x50


def is_bzip2_stream(data: bytes, pos: int = 0) -> bool:
    if data[pos : pos + 3] != BZIP2_MAGIC or len(data) < pos + 4 or not (0x31 <= data[pos + 3] <= 0x39):
        return False
    block = data[pos + 4 : pos + 10]
    # With a short buffer we cannot see the block magic; "BZh" plus a level digit is enough then.
    return len(block) < 6 or block in BZIP2_BLOCK_MAGICS


def _frame_codec_after_skippable(head: bytes) -> str:
    """Skip skippable frames at the start to see whether a zstd or an lz4 frame follows."""
    pos = 0
    for _ in range(16):
        if not is_skippable_frame(head, pos):
            break
        if len(head) < pos + 8:
            return "zstd"
        (size,) = struct.unpack_from("<I", head, pos + 4)
        pos += 8 + size
        if pos + 4 > len(head):
            return "zstd"
    nxt = head[pos : pos + 4]
    if nxt in (LZ4_FRAME_MAGIC, LZ4_LEGACY_MAGIC):
        return "lz4"
    return "zstd"


def sniff(head: bytes, tail: bytes = b"") -> tuple[str, str]:
    """Classify an input from its first bytes (``HEAD_BYTES`` of them) and last 512 bytes.

    ``tail`` is only needed to recognise a fixed VHD, whose only signature is its footer.
    """
    if head.startswith(GZIP_MAGIC):
        return COMPRESSED, "gzip"
    if is_bzip2_stream(head):
        return COMPRESSED, "bzip2"
    if head.startswith(XZ_MAGIC):
        return COMPRESSED, "xz"
    if head.startswith(ZSTD_MAGIC):
        return COMPRESSED, "zstd"
    if head.startswith((LZ4_FRAME_MAGIC, LZ4_LEGACY_MAGIC)):
        return COMPRESSED, "lz4"
    if is_skippable_frame(head):
        return COMPRESSED, _frame_codec_after_skippable(head)
    if head.startswith(QCOW_MAGIC):
        if len(head) >= 8 and struct.unpack_from(">I", head, 4)[0] == 1:
            return ARCHIVE, "qcow1"
        return CONTAINER, "qcow2"
    if head.startswith(VMDK_SPARSE_MAGIC):
        return CONTAINER, "vmdk"
    if head.startswith(VMDK_DESCRIPTOR_MAGIC):
        return CONTAINER, "vmdk-descriptor"
    if head.startswith(VHDX_MAGIC):
        return CONTAINER, "vhdx"
    if head.startswith(VHD_COOKIE) or vhd_footer_offset(tail) is not None:
        return CONTAINER, "vhd"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ARCHIVE, "tar"
    if head.startswith(b"PK\x03\x04"):
        return ARCHIVE, "zip"
    return RAW, "raw"


def vhd_footer_offset(tail: bytes) -> int | None:
    """Position of the VHD footer cookie in ``tail`` (the file's last bytes), or None."""
    if len(tail) >= 512 and tail[-512:-504] == VHD_COOKIE:
        return len(tail) - 512
    if len(tail) >= 511 and tail[-511:-503] == VHD_COOKIE:
        return len(tail) - 511
    return None
