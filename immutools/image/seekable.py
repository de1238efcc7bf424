"""Random access inside compressed images whose format indexes itself: decode only what is read.

* xz (xz file format 1.2.0, https://tukaani.org/xz/xz-file-format.txt): every stream ends with an
  index listing each block's unpadded and uncompressed size (§4), found from the stream footer's
  Backward Size (§2.1.2); ``xz -T0`` and ``--block-size`` write many blocks. A block is decoded by
  wrapping it, alone, into a one-block stream (the original stream header, the block, a one-record
  index and a footer) that liblzma decodes with ``FORMAT_XZ``: it checks the block's own integrity
  check (CRC64/SHA-256) and that the block decodes to exactly the size the index declares.
* zstd (RFC 8878): frames are independent; a file of several frames that each state their content
  size (pzstd, ``cat a.zst b.zst``) is walked frame by frame from the block headers (§3.1.1.2), and
  the seekable format (zstd contrib/seekable_format/zstd_seekable_compression_format.md) gives the
  frame sizes in a seek table in a trailing skippable frame.

One block or one frame offers nothing to skip: those files (and every other codec) are decompressed
whole instead (``immutools.image.access``). We parse these indexes ourselves because no maintained
Python library reads them with bounded memory (python-xz is unmaintained; indexed_zstd needs the
seekable format); decoding itself is liblzma's and libzstd's.

Bounds: every declared size is checked against the file (offsets inside it, sizes that add up),
the total against the bomb guard before anything is decoded, each block against
``Limits.max_random_access_block``, and a block must decode to exactly its declared size (decoder
output is capped one byte past it). Decoded blocks are kept in a small LRU (all-zero blocks cost
nothing).
"""

from __future__ import annotations

import bisect
import lzma
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from immutools.errors import CorruptDataError, ImmutoolsError, LimitExceededError
from immutools.image import magic
from immutools.image.guard import HEAD_WINDOW, ExpansionGuard, is_zero
from immutools.image.source import ByteSource, FileSource, ReadStats
from immutools.limits import Limits

MAX_INDEX_BYTES = 16 * 1024 * 1024  # an xz index of this size lists millions of blocks
MAX_BLOCKS = 1_000_000  # 256 GiB in 256 KiB blocks; more is refused as an index (decoded whole)
MAX_WALK_HEADERS = 1_000_000  # zstd block headers read to find frame ends
LRU_BYTES = 128 * 1024 * 1024
XZ_MEMLIMIT = 1024**3


@dataclass(frozen=True, slots=True)
class Block:
    offset: int  # in the decompressed image
    size: int  # decompressed bytes
    coffset: int  # in the compressed file
    csize: int  # compressed bytes


class _NotIndexed(Exception):
    """The file offers no usable index: decompress it whole instead."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """xz multibyte integer (§1.2): at most 9 bytes, 63 bits."""
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise _NotIndexed("truncated integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise _NotIndexed("non-minimal integer")
            return value, pos
    raise _NotIndexed("integer too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# xz
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _XzBlock:
    header: bytes  # the stream header of the stream this block belongs to (12 bytes)
    unpadded: int


def _xz_index(src: ByteSource) -> tuple[list[Block], list[_XzBlock]]:
    blocks: list[Block] = []
    extra: list[_XzBlock] = []
    streams = []  # (stream start, [(unpadded, uncompressed)], header)
    end = src.size
    while end > 0:
        # Stream padding: zero bytes in multiples of four between or after streams (§2.2).
        while end >= 4 and src.read_at(end - 4, 4) == b"\0\0\0\0":
            end -= 4
        if end == 0:
            break
        if end < 24:
            raise _NotIndexed("too short")
        footer = src.read_exact(end - 12, 12)
        if footer[10:12] != b"YZ" or zlib.crc32(footer[4:10]) != struct.unpack_from("<I", footer)[0]:
            raise _NotIndexed("no stream footer")
        index_size = (struct.unpack_from("<I", footer, 4)[0] + 1) * 4
        if index_size > MAX_INDEX_BYTES or index_size > end - 24:
            raise _NotIndexed("index size out of range")
        index_at = end - 12 - index_size
        index = src.read_exact(index_at, index_size)
        if index[0] != 0 or zlib.crc32(index[:-4]) != struct.unpack_from("<I", index, index_size - 4)[0]:
            raise _NotIndexed("index damaged")
        count, pos = _varint(index, 1)
        if count > MAX_BLOCKS or len(blocks) + count > MAX_BLOCKS:
            raise _NotIndexed("too many blocks")
        records = []
        for _ in range(count):
            unpadded, pos = _varint(index, pos)
            usize, pos = _varint(index, pos)
            if unpadded < 5 or unpadded > src.size:
                raise _NotIndexed("block size out of range")
            records.append((unpadded, usize))
        blocks_bytes = sum((u + 3) & ~3 for u, _ in records)
        start = index_at - blocks_bytes - 12
        if start < 0:
            raise _NotIndexed("blocks do not fit")
        header = src.read_exact(start, 12)
        if header[:6] != magic.XZ_MAGIC or header[6:8] != footer[8:10] or zlib.crc32(header[6:8]) != struct.unpack_from("<I", header, 8)[0]:
            raise _NotIndexed("stream header does not match its footer")
        streams.append((start, records, header))
        end = start
    if end != 0:
        raise _NotIndexed("data before the first stream")
    offset = 0
    for start, records, header in reversed(streams):
        coff = start + 12
        for unpadded, usize in records:
            blocks.append(Block(offset, usize, coff, unpadded))
            extra.append(_XzBlock(header, unpadded))
            offset += usize
            coff += (unpadded + 3) & ~3
    return blocks, extra


def _xz_decoder(src: ByteSource, blocks: list[Block], extra: list[_XzBlock], display: str) -> Callable[[int], bytes]:
    def decode(i: int) -> bytes:
        block, info = blocks[i], extra[i]
        data = src.read_exact(block.coffset, (info.unpadded + 3) & ~3)
        index = b"\0" + _encode_varint(1) + _encode_varint(info.unpadded) + _encode_varint(block.size)
        index += b"\0" * (-len(index) % 4)
        index += struct.pack("<I", zlib.crc32(index))
        backward = struct.pack("<I", len(index) // 4 - 1) + info.header[6:8]
        footer = struct.pack("<I", zlib.crc32(backward)) + backward + b"YZ"
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        try:
            out = dec.decompress(info.header + data + index + footer, max_length=block.size + 1)
            if not dec.eof and len(out) <= block.size:
                out += dec.decompress(b"", max_length=block.size + 1 - len(out))
        except lzma.LZMAError as exc:
            text = str(exc).strip()
            if "memory" in text.lower():
                raise LimitExceededError(f"{display}: xz block {i + 1} needs more decoder memory than allowed: {text}") from None
            raise CorruptDataError(f"{display}: corrupt xz block {i + 1} (compressed offset {block.coffset}): {text}") from None
        if len(out) != block.size or not dec.eof:
            raise CorruptDataError(
                f"{display}: xz block {i + 1} (compressed offset {block.coffset}) decodes to "
                f"{'more than' if len(out) > block.size else len(out)} bytes, its index says {block.size}"
            )
        return out

    return decode


# ---------------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------------

_ZSTD_SEEKABLE_MAGIC = 0x8F92EAB1
_ZSTD_SEEK_TABLE_FRAME = 0x184D2A5E


def _zstd_frame_header(head: bytes) -> tuple[int, int | None, bool]:
    """(header size, content size or None, has checksum) of a zstd frame header (RFC 8878 §3.1.1.1)."""
    if len(head) < 6:
        raise _NotIndexed("truncated frame header")
    fhd = head[4]
    fcs_flag, single_segment, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:
        raise _NotIndexed("reserved bit set")
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    fcs_len = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if len(head) < pos + fcs_len:
        raise _NotIndexed("truncated frame header")
    if fcs_len == 0:
        return pos, None, bool(checksum)
    size = int.from_bytes(head[pos : pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    return pos + fcs_len, size, bool(checksum)


def _zstd_walk(src: ByteSource, limits: Limits) -> list[Block]:
    """Frames with their content sizes, by walking block headers; skippable frames are skipped."""
    blocks: list[Block] = []
    pos = 0
    offset = 0
    walked = 0
    while pos < src.size:
        head = src.read_at(pos, 18)
        if magic.is_skippable_frame(head):
            if len(head) < 8:
                raise _NotIndexed("truncated skippable frame")
            pos += 8 + struct.unpack_from("<I", head, 4)[0]
            continue
        if head[:4] != magic.ZSTD_MAGIC:
            raise _NotIndexed("not a frame")  # trailing data and the like: the sequential path reports it
        header_size, content_size, checksum = _zstd_frame_header(head)
        if content_size is None:
            raise _NotIndexed("a frame without content size")
        bpos = pos + header_size
        while True:
            walked += 1
            if walked > MAX_WALK_HEADERS:
                raise _NotIndexed("too many blocks to walk")
            bh = src.read_at(bpos, 3)
            if len(bh) < 3:
                raise _NotIndexed("truncated frame")
            value = int.from_bytes(bh, "little")
            last, btype, bsize = value & 1, (value >> 1) & 3, value >> 3
            if btype == 3:
                raise _NotIndexed("reserved block type")
            bpos += 3 + (1 if btype == 1 else bsize)
            if bpos > src.size:
                raise _NotIndexed("block past the end")
            if last:
                break
        end = bpos + (4 if checksum else 0)
        if end > src.size:
            raise _NotIndexed("frame past the end")
        if content_size:
            blocks.append(Block(offset, content_size, pos, end - pos))
            offset += content_size
        pos = end
        if len(blocks) > MAX_BLOCKS:
            raise _NotIndexed("too many frames")
    return blocks


def _zstd_seek_table(src: ByteSource) -> list[Block] | None:
    if src.size < 17:
        return None
    tail = src.read_exact(src.size - 9, 9)
    frames, descriptor, seek_magic = struct.unpack("<IBI", tail)
    if seek_magic != _ZSTD_SEEKABLE_MAGIC or descriptor & 0x7C:
        return None
    entry = 12 if descriptor & 0x80 else 8
    table_size = frames * entry + 9
    if frames == 0 or frames > MAX_BLOCKS or table_size + 8 > src.size:
        raise _NotIndexed("seek table out of range")
    frame_at = src.size - table_size - 8
    head = src.read_exact(frame_at, 8)
    if struct.unpack("<II", head) != (_ZSTD_SEEK_TABLE_FRAME, table_size):
        raise _NotIndexed("seek table frame damaged")
    table = src.read_exact(frame_at + 8, frames * entry)
    blocks = []
    coff = offset = 0
    for i in range(frames):
        csize, dsize = struct.unpack_from("<II", table, i * entry)
        if dsize:
            blocks.append(Block(offset, dsize, coff, csize))
        coff += csize
        offset += dsize
    if coff != frame_at:
        raise _NotIndexed("seek table does not cover the file")
    return blocks


def _zstd_decoder(src: ByteSource, blocks: list[Block], display: str) -> Callable[[int], bytes]:
    from immutools.image.compressed import _zstd_module

    zstd = _zstd_module()

    def decode(i: int) -> bytes:
        block = blocks[i]
        data = src.read_exact(block.coffset, block.csize)
        dec = zstd.ZstdDecompressor()
        try:
            out = dec.decompress(data, max_length=block.size + 1)
        except zstd.ZstdError as exc:
            text = str(exc).strip()
            if "window" in text.lower() or "memory" in text.lower():
                raise LimitExceededError(f"{display}: zstd frame {i + 1} needs more decoder memory than allowed: {text}") from None
            raise CorruptDataError(f"{display}: corrupt zstd frame {i + 1} (compressed offset {block.coffset}): {text}") from None
        if len(out) != block.size or not dec.eof:
            raise CorruptDataError(
                f"{display}: zstd frame {i + 1} (compressed offset {block.coffset}) decodes to "
                f"{'more than' if len(out) > block.size else len(out)} bytes, it declares {block.size}"
            )
        return out

    return decode


# ---------------------------------------------------------------------------------------------
# The random-access source
# ---------------------------------------------------------------------------------------------


class IndexedSource(ByteSource):
    """The decompressed image over the compressed file: blocks decoded when a read touches them."""

    def __init__(self, blocks: list[Block], decode: Callable[[int], bytes], name: str, stats: ReadStats,
                 codec: str):
        size = blocks[-1].offset + blocks[-1].size if blocks else 0
        super().__init__(size, stats)
        self.name = name
        self.codec = codec
        self.blocks = blocks
        self._starts = [b.offset for b in blocks]
        self._decode = decode
        self._lru: OrderedDict[int, bytes | None] = OrderedDict()  # None: an all-zero block
        self._lru_bytes = 0
        self._budget = max(LRU_BYTES, max(b.size for b in blocks))
        self._lock = threading.Lock()
        self.blocks_decoded = 0
        self.blocks_from_cache = 0  # reads served by the decompression cache's block files
        self.store = None  # immutools.image.cache.BlockStore, set by the caller

    def _block(self, i: int) -> bytes | None:
        with self._lock:
            if i in self._lru:
                self._lru.move_to_end(i)
                return self._lru[i]
            data = self._decode(i)
            self.blocks_decoded += 1
            self.stats.bytes_decompressed += len(data)
            if self.store is not None:
                self.store.write(i, data)
            kept: bytes | None = None if is_zero(data) else data
            self._lru[i] = kept
            if kept is not None:
                self._lru_bytes += len(kept)
                while self._lru_bytes > self._budget and len(self._lru) > 1:
                    _old, dropped = self._lru.popitem(last=False)
                    if dropped is not None:
                        self._lru_bytes -= len(dropped)
            return kept

    def _read_at(self, offset: int, length: int) -> bytes:
        out = []
        i = bisect.bisect_right(self._starts, offset) - 1
        while length > 0 and 0 <= i < len(self.blocks):
            block = self.blocks[i]
            within = offset - block.offset
            take = min(length, block.size - within)
            kept = None
            if self.store is not None and i not in self._lru:
                kept = self.store.read(i, block.size, within, take)  # decoded by an earlier scan
            if kept is not None:
                self.blocks_from_cache += 1
                out.append(kept)
            else:
                data = self._block(i)
                out.append(bytes(take) if data is None else data[within : within + take])
            offset += take
            length -= take
            i += 1
        return b"".join(out)

    def read_at(self, offset: int, length: int) -> bytes:
        # Reads of the decompressed image are not reads of the input: the compressed bytes a block
        # decode reads are counted by the file source underneath.
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if offset >= self.size or length == 0:
            return b""
        return self._read_at(offset, min(length, self.size - offset))


def open_seekable(src: FileSource, codec: str, *, display: str, limits: Limits, stats: ReadStats,
                  store_for: Callable[[IndexedSource], object] | None = None) -> IndexedSource | None:
    """An ``IndexedSource`` if the file indexes itself in blocks we may decode one by one, else None.

    ``store_for(source)`` may give a ``BlockStore`` (decoded blocks kept between scans) before the
    first block is read. The bomb guard checks the declared total and the head before returning."""
    try:
        if codec == "xz":
            blocks, extra = _xz_index(src)
            decode_factory = lambda: _xz_decoder(src, blocks, extra, display)  # noqa: E731
        elif codec == "zstd":
            blocks = _zstd_seek_table(src)
            if blocks is None:
                blocks = _zstd_walk(src, limits)
            decode_factory = lambda: _zstd_decoder(src, blocks, display)  # noqa: E731
        else:
            return None
    except _NotIndexed:
        return None
    except ImmutoolsError:
        return None  # a short read or the like: the sequential path reports it precisely
    if len(blocks) < 2 or max(b.size for b in blocks) > limits.max_random_access_block:
        return None
    source = IndexedSource(blocks, decode_factory(), f"{display} ({codec}, random access)", stats, codec)
    if store_for is not None:
        source.store = store_for(source)
    guard = ExpansionGuard(display, codec, limits)
    if len(blocks) > limits.max_compressed_members:
        guard.members = len(blocks) - 1
        guard.member()
    guard.check_total(source.size, source.read_at(0, HEAD_WINDOW))
    return source
