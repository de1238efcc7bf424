"""Bounded decoding of the compressed streams found in initramfs images and kernel payloads.

The Linux kernel recognises a compressed initramfs segment by its first bytes (``lib/decompress.c``
``compressed_formats``) and decodes exactly one stream, then carries on after it. ``decompress_one``
does the same: it decodes one stream starting at an offset, returns the output and how many input
bytes the stream used, and never produces more than ``max_output`` bytes (a decompression bomb
raises ``LimitExceededError`` instead of filling memory).

Libraries: zlib, bz2 and lzma from the standard library, ``zstandard`` and ``lz4``. Only glue is
ours: the legacy lz4 container (the kernel's ``lz4 -l`` format) has no library reader, and zstd
frames are walked block by block (RFC 8878 §3.1) so the output bound is known before decoding,
since ``zstandard``'s streaming decoder cannot cap its output.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from immutools.errors import CorruptDataError, LimitExceededError, UnsupportedFeatureError

# Magic numbers, in the order of the kernel's table (lib/decompress.c).
GZIP, BZIP2, LZMA, XZ, LZO, LZ4_LEGACY, LZ4_FRAME, ZSTD = "gzip", "bzip2", "lzma", "xz", "lzo", "lz4-legacy", "lz4", "zstd"
_MAGICS = [
    (b"\x1f\x8b", GZIP),
    (b"\x1f\x9e", "gzip-old"),          # recognised by the kernel, not decodable by zlib
    (b"BZh", BZIP2),
    (b"\x5d\x00\x00", LZMA),
    (b"\xfd7zXZ\x00", XZ),
    (b"\x89LZ", LZO),
    (b"\x02\x21\x4c\x18", LZ4_LEGACY),
    (b"\x04\x22\x4d\x18", LZ4_FRAME),   # lz4 frame format: not accepted by the kernel for initramfs
    (b"\x28\xb5\x2f\xfd", ZSTD),
]

INPUT_CHUNK = 1 << 20          # feed decoders 1 MiB of input at a time
OUTPUT_STEP = 16 << 20         # ask for at most 16 MiB of output per call
LZMA_MEMLIMIT = 512 << 20      # xz/lzma dictionary memory we accept
LZ4_LEGACY_BLOCK = 8 << 20     # uncompressed block size of `lz4 -l` (kernel LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE)
ZSTD_MAX_BLOCK = 128 << 10     # RFC 8878 Block_Maximum_Size


def detect_compression(head: bytes | memoryview) -> str | None:
    """Name the compression whose magic starts ``head``, or None."""
    head = bytes(head[:6])
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


class _Sink:
    """Output buffer with a hard cap."""

    def __init__(self, kind: str, max_output: int):
        self.kind = kind
        self.max_output = max_output
        self.out = bytearray()

    def room(self) -> int:
        return self.max_output - len(self.out)

    def add(self, data: bytes) -> None:
        if len(self.out) + len(data) > self.max_output:
            raise LimitExceededError(f"{self.kind} stream decompresses to more than {self.max_output} bytes")
        self.out += data


def decompress_one(buf: memoryview | bytes, offset: int, kind: str, max_output: int) -> tuple[bytearray, int]:
    """Decode one ``kind`` stream starting at ``buf[offset]``.

    Returns (output, input bytes consumed). Raises ``CorruptDataError`` for a damaged or truncated
    stream, ``LimitExceededError`` past ``max_output`` and ``UnsupportedFeatureError`` for formats we
    cannot decode (lzo, the old gzip variant).
    """
    buf = memoryview(buf)
    sink = _Sink(kind, max_output)
    try:
        if kind == GZIP:
            used = _stdlib_stream(buf, offset, zlib.decompressobj(wbits=31), sink, zlib_style=True)
        elif kind == BZIP2:
            used = _stdlib_stream(buf, offset, bz2.BZ2Decompressor(), sink)
        elif kind == XZ:
            used = _stdlib_stream(buf, offset, lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT), sink)
        elif kind == LZMA:
            used = _stdlib_stream(buf, offset, lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=LZMA_MEMLIMIT), sink)
        elif kind == LZ4_FRAME:
            import lz4.frame

            used = _stdlib_stream(buf, offset, lz4.frame.LZ4FrameDecompressor(), sink)
        elif kind == LZ4_LEGACY:
            used = _lz4_legacy(buf, offset, sink)
        elif kind == ZSTD:
            used = _zstd(buf, offset, sink)
        else:
            raise UnsupportedFeatureError(f"{kind} compression is not supported")
    except (LimitExceededError, UnsupportedFeatureError, CorruptDataError):
        raise
    except lzma.LZMAError as exc:
        if "memory" in str(exc).lower():
            raise LimitExceededError(f"{kind} stream needs more than {LZMA_MEMLIMIT} bytes of dictionary") from None
        raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
    except (zlib.error, OSError, EOFError, ValueError, RuntimeError, MemoryError) as exc:
        # bz2/lz4 raise OSError/RuntimeError, zstandard raises ZstdError (a subclass of Exception).
        raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zstandard.ZstdError and other library errors
        if type(exc).__name__ == "ZstdError":
            raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
        raise
    return sink.out, used


def _stdlib_stream(buf: memoryview, offset: int, dec, sink: _Sink, zlib_style: bool = False) -> int:
    """Drive a decompressor with the zlib/bz2/lzma/lz4.frame interface, input 1 MiB at a time."""
    pos = offset
    end = len(buf)
    while pos < end:
        chunk = buf[pos : min(end, pos + INPUT_CHUNK)]
        chunk_end = pos + len(chunk)
        data = chunk
        while True:
            step = max(1, min(OUTPUT_STEP, sink.room() + 1))
            out = dec.decompress(data, step)
            sink.add(out)
            if dec.eof:
                return chunk_end - len(dec.unused_data) - offset
            if zlib_style:
                data = dec.unconsumed_tail
                # A full output step may leave output pending inside zlib: ask again.
                if not data and len(out) < step:
                    break
            else:
                data = b""
                if dec.needs_input:
                    break
        pos = chunk_end
    raise CorruptDataError(f"{sink.kind} stream at offset {offset} is truncated (no end of stream)")


def _lz4_legacy(buf: memoryview, offset: int, sink: _Sink) -> int:
    """The legacy lz4 container: magic, then blocks of (u32 LE compressed size, data).

    There is no end marker: like the kernel (lib/decompress_unlz4.c, with the 2021 zero-padding
    fix) the stream ends at the end of input, at fewer than 4 bytes left, or at a zero size word.
    A repeated magic starts a concatenated stream and is skipped.
    """
    import lz4.block

    magic = b"\x02\x21\x4c\x18"
    bound = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound
    pos = offset + 4
    end = len(buf)
    blocks = 0
    while end - pos >= 4:
        word = bytes(buf[pos : pos + 4])
        if word == magic:
            pos += 4
            continue
        size = struct.unpack("<I", word)[0]
        if size == 0:
            break
        try:
            if size > bound:
                raise CorruptDataError(f"lz4 legacy block at offset {pos} declares {size} bytes (more than a block can hold)")
            if pos + 4 + size > end:
                raise CorruptDataError(f"lz4 legacy block at offset {pos} is truncated")
            try:
                out = lz4.block.decompress(bytes(buf[pos + 4 : pos + 4 + size]), uncompressed_size=LZ4_LEGACY_BLOCK)
            except lz4.block.LZ4BlockError as exc:
                raise CorruptDataError(f"lz4 legacy block at offset {pos} is corrupt: {exc}") from None
        except CorruptDataError:
            if not blocks:
                raise
            # The format has no end marker: what follows the last good block is not ours. The
            # kernel would fail on it after unpacking the blocks before; the caller reports it.
            break
        sink.add(out)
        blocks += 1
        pos += 4 + size
    return pos - offset


def _zstd_frame_blocks(buf: memoryview, offset: int) -> list[tuple[int, int]]:
    """Walk one zstd frame's headers (RFC 8878 §3.1.1).

    Returns [(input end, decoded size upper bound)] per block; the last entry's end is the frame end
    (checksum included).
    """
    end = len(buf)
    if end - offset < 6:
        raise CorruptDataError(f"zstd frame at offset {offset} is truncated")
    fhd = buf[offset + 4]
    fcs_flag, single_segment, checksum_flag, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:
        raise CorruptDataError(f"zstd frame at offset {offset}: reserved header bit set")
    pos = offset + 5 + (0 if single_segment else 1)
    pos += (0, 1, 2, 4)[dict_flag]
    pos += (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    blocks: list[tuple[int, int]] = []
    while True:
        if pos + 3 > end:
            raise CorruptDataError(f"zstd frame at offset {offset} is truncated")
        header = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        pos += 3
        if btype == 0:        # raw block
            pos += bsize
            decoded = bsize
        elif btype == 1:      # RLE block: one byte repeated bsize times
            pos += 1
            decoded = bsize
        elif btype == 2:      # compressed block
            pos += bsize
            decoded = ZSTD_MAX_BLOCK
        else:
            raise CorruptDataError(f"zstd frame at offset {offset}: reserved block type")
        if bsize > ZSTD_MAX_BLOCK:
            raise CorruptDataError(f"zstd frame at offset {offset}: block larger than 128 KiB")
        if pos > end:
            raise CorruptDataError(f"zstd frame at offset {offset} is truncated")
        blocks.append((pos, decoded))
        if last:
            break
    if checksum_flag:
        pos += 4
        if pos > end:
            raise CorruptDataError(f"zstd frame at offset {offset} is truncated (checksum)")
        blocks[-1] = (pos, blocks[-1][1])
    return blocks


def _zstd(buf: memoryview, offset: int, sink: _Sink) -> int:
    import zstandard

    blocks = _zstd_frame_blocks(buf, offset)
    dec = zstandard.ZstdDecompressor().decompressobj()
    # Feed whole blocks, at most OUTPUT_STEP of decoded bound per call, so one call's output is
    # bounded even for a frame of tiny RLE blocks (a bomb); the sink enforces the total cap.
    pos = offset
    i = 0
    while i < len(blocks):
        piece_bound = 0
        piece_end = pos
        while i < len(blocks) and (piece_bound == 0 or piece_bound + blocks[i][1] <= OUTPUT_STEP):
            piece_end, decoded = blocks[i]
            piece_bound += decoded
            i += 1
        sink.add(dec.decompress(bytes(buf[pos:piece_end])))
        pos = piece_end
    return pos - offset
