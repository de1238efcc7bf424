"""Bounded, streaming decoding of the compressed streams found in initramfs images and kernel payloads.

The Linux kernel recognises a compressed initramfs segment by its first bytes (``lib/decompress.c``
``compressed_formats``) and decodes exactly one stream, then carries on after it.
``decompress_stream`` does the same: it decodes one stream starting at an offset of a ``ByteSource``
and returns the output as a ``ByteSource`` and how many input bytes the stream used.

Memory stays bounded whatever the stream holds: input is read ``INPUT_CHUNK`` bytes at a time,
each decoder call yields at most ``OUTPUT_STEP`` bytes, and the output is kept in memory only up to
a budget (``DecodedOutput``); beyond it, it is spilled to an unlinked temporary file in which
all-zero blocks stay holes, so 1 GiB of zeros costs neither memory nor disk. The total output is
capped (``max_output``): a decompression bomb raises ``LimitExceededError``.

Libraries: zlib, bz2 and lzma from the standard library, ``backports.zstd`` (PEP 784, a decoder
whose output per call can be capped) and ``lz4``. Only glue is ours: the legacy lz4 container (the
kernel's ``lz4 -l`` format) has no library reader.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import tempfile
import zlib

from immutools.errors import CorruptDataError, ImageIOError, LimitExceededError, UnsupportedFeatureError
from immutools.image.source import ByteSource, BytesSource, pread_all

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
OUTPUT_STEP = 8 << 20          # take at most 8 MiB of output per decoder call
# Decoder state we accept. xz/lzma: the dictionary of ``xz -9`` is 64 MiB (65 MiB to decode, xz(1)
# "Memory usage"); zstd: a window of 2^27 (128 MiB), zstd's own default cap for decoding
# (ZSTD_WINDOWLOG_LIMIT_DEFAULT, lib/zstd.h). Larger ones are refused as a limit, not allocated.
LZMA_MEMLIMIT = 128 << 20
ZSTD_WINDOW_LOG_MAX = 27
LZ4_LEGACY_BLOCK = 8 << 20     # uncompressed block size of `lz4 -l` (kernel LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE)
# Decoded bytes kept in memory before the output moves to a temporary file (per output; callers
# decoding several streams pass what is left of their own budget).
MEMORY_BUDGET = 16 << 20
SPARSE_BLOCK = 64 << 10        # all-zero blocks of this size are left as holes in the spill file


def detect_compression(head: bytes | memoryview) -> str | None:
    """Name the compression whose magic starts ``head``, or None."""
    head = bytes(head[:6])
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


class SpillSource(ByteSource):
    """Read side of a spilled output: an unlinked temporary file, closed with this object."""

    def __init__(self, fh, size: int, name: str):
        self._fh = fh
        super().__init__(size)
        self.name = name

    def _read_at(self, offset: int, length: int) -> bytes:
        return pread_all(self._fh.fileno(), offset, length, self.name)

    def close(self) -> None:
        fh, self._fh = getattr(self, "_fh", None), None
        if fh is not None:
            fh.close()
        super().close()


class DecodedOutput:
    """A capped output buffer: memory up to ``memory_budget`` bytes, then a sparse temporary file.

    ``add`` raises ``LimitExceededError`` past ``max_output``; ``source()`` gives the result as a
    ``ByteSource`` (a ``BytesSource`` while it stayed in memory, else a ``SpillSource``)."""

    def __init__(self, kind: str, max_output: int, name: str, memory_budget: int = MEMORY_BUDGET):
        self.kind = kind
        self.max_output = max_output
        self.name = name
        self.memory_budget = max(0, memory_budget)
        self.size = 0
        self._mem = bytearray()
        self._fh = None

    def room(self) -> int:
        return self.max_output - self.size

    @property
    def spilled(self) -> bool:
        return self._fh is not None

    def add(self, data) -> None:
        if not data:
            return
        if self.size + len(data) > self.max_output:
            raise LimitExceededError(f"{self.kind} stream decompresses to more than {self.max_output} bytes")
        if self._fh is None and self.size + len(data) <= self.memory_budget:
            self._mem += data
        else:
            if self._fh is None:
                self._spill()
            self._write(self.size, data)
        self.size += len(data)

    def _spill(self) -> None:
        try:
            self._fh = tempfile.TemporaryFile(prefix="immutools-nested-")
        except OSError as exc:
            raise ImageIOError(f"{self.name}: cannot create a temporary file for decoded data: {exc.strerror}") from None
        if self._mem:
            self._write(0, self._mem)
        self._mem = bytearray()

    def _write(self, offset: int, raw) -> None:
        """Write ``raw`` at ``offset``, leaving all-zero ``SPARSE_BLOCK``s as holes."""
        if not isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw)
        view = memoryview(raw)
        fd = self._fh.fileno()
        pos, end = 0, len(raw)
        while pos < end:
            stop = min(end, pos + SPARSE_BLOCK)
            if raw.count(0, pos, stop) == stop - pos:
                pos = stop
                continue
            run_end = stop                      # extend over the following non-zero blocks
            while run_end < end:
                nxt = min(end, run_end + SPARSE_BLOCK)
                if raw.count(0, run_end, nxt) == nxt - run_end:
                    break
                run_end = nxt
            chunk = view[pos:run_end]
            try:
                while chunk:
                    n = os.pwrite(fd, chunk, offset + pos)
                    chunk = chunk[n:]
                    pos += n
            except OSError as exc:
                raise ImageIOError(f"{self.name}: cannot write decoded data to the temporary file: {exc.strerror}") from None
            pos = run_end

    def source(self) -> ByteSource:
        if self._fh is None:
            return BytesSource(self._mem, name=self.name)
        try:
            os.ftruncate(self._fh.fileno(), self.size)     # trailing holes count towards the size
        except OSError as exc:
            raise ImageIOError(f"{self.name}: cannot size the temporary file: {exc.strerror}") from None
        fh, self._fh = self._fh, None
        return SpillSource(fh, self.size, self.name)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._mem = bytearray()


def decompress_stream(source: ByteSource, offset: int, kind: str, max_output: int, *,
                      name: str | None = None, memory_budget: int = MEMORY_BUDGET) -> tuple[ByteSource, int]:
    """Decode one ``kind`` stream starting at ``offset`` of ``source``.

    Returns (the output as a ``ByteSource``, input bytes consumed). Raises ``CorruptDataError`` for
    a damaged or truncated stream, ``LimitExceededError`` past ``max_output`` (or for a stream that
    needs more decoder memory than we accept) and ``UnsupportedFeatureError`` for formats we cannot
    decode (lzo, the old gzip variant).
    """
    out = DecodedOutput(kind, max_output, name or f"{source.name}@{offset}:{kind}", memory_budget)
    try:
        used = _decode(source, offset, kind, out)
        return out.source(), used
    except BaseException:
        out.discard()
        raise


def decompress_one(buf: memoryview | bytes, offset: int, kind: str, max_output: int) -> tuple[bytes, int]:
    """``decompress_stream`` for a small in-memory input: (output bytes, input bytes consumed).
    The output is held in memory, so only use it with a small ``max_output``."""
    src, used = decompress_stream(BytesSource(buf, name="<buffer>"), offset, kind, max_output, memory_budget=max_output)
    return src.read_at(0, src.size), used


def _decode(source: ByteSource, offset: int, kind: str, sink: DecodedOutput) -> int:
    try:
        if kind == GZIP:
            return _stdlib_stream(source, offset, zlib.decompressobj(wbits=31), sink, zlib_style=True)
        if kind == BZIP2:
            return _stdlib_stream(source, offset, bz2.BZ2Decompressor(), sink)
        if kind == XZ:
            return _stdlib_stream(source, offset, lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT), sink)
        if kind == LZMA:
            return _stdlib_stream(source, offset, lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=LZMA_MEMLIMIT), sink)
        if kind == LZ4_FRAME:
            import lz4.frame

            return _stdlib_stream(source, offset, lz4.frame.LZ4FrameDecompressor(), sink)
        if kind == LZ4_LEGACY:
            return _lz4_legacy(source, offset, sink)
        if kind == ZSTD:
            return _stdlib_stream(source, offset, _zstd_decompressor(), sink)
        raise UnsupportedFeatureError(f"{kind} compression is not supported")
    except (LimitExceededError, UnsupportedFeatureError, CorruptDataError, ImageIOError):
        raise
    except lzma.LZMAError as exc:
        if "memory" in str(exc).lower():
            raise LimitExceededError(f"{kind} stream needs more than {LZMA_MEMLIMIT} bytes of dictionary") from None
        raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
    except (zlib.error, OSError, EOFError, ValueError, RuntimeError) as exc:
        # bz2/lz4 raise OSError/RuntimeError, backports.zstd raises ZstdError (a subclass of Exception).
        raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
    except MemoryError:
        raise LimitExceededError(f"{kind} stream at offset {offset}: the decoder ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - backports.zstd.ZstdError and other library errors
        if type(exc).__name__ == "ZstdError":
            if "window" in str(exc).lower() or "memory" in str(exc).lower():
                raise LimitExceededError(f"{kind} stream at offset {offset} needs a window larger than "
                                         f"2^{ZSTD_WINDOW_LOG_MAX} bytes") from None
            raise CorruptDataError(f"{kind} stream at offset {offset} is corrupt: {exc}") from None
        raise


def _zstd_decompressor():
    from backports.zstd import DecompressionParameter, ZstdDecompressor

    return ZstdDecompressor(options={DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX})


def _stdlib_stream(source: ByteSource, offset: int, dec, sink: DecodedOutput, zlib_style: bool = False) -> int:
    """Drive a decompressor with the zlib/bz2/lzma/lz4.frame/zstd interface, 1 MiB of input at a time.

    Returns the input bytes the stream used (up to its end, ``unused_data`` excluded)."""
    pos = offset
    end = source.size
    while pos < end:
        chunk = source.read_at(pos, min(INPUT_CHUNK, end - pos))
        if not chunk:
            break
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


def _lz4_legacy(source: ByteSource, offset: int, sink: DecodedOutput) -> int:
    """The legacy lz4 container: magic, then blocks of (u32 LE compressed size, data).

    There is no end marker: like the kernel (lib/decompress_unlz4.c, with the 2021 zero-padding
    fix) the stream ends at the end of input, at fewer than 4 bytes left, or at a zero size word.
    A repeated magic starts a concatenated stream and is skipped.
    """
    import lz4.block

    magic = b"\x02\x21\x4c\x18"
    bound = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound
    pos = offset + 4
    end = source.size
    blocks = 0
    while end - pos >= 4:
        word = source.read_at(pos, 4)
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
                out = lz4.block.decompress(source.read_at(pos + 4, size), uncompressed_size=LZ4_LEGACY_BLOCK)
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
