"""Whole-file compressed disk images, decompressed once into a sparse file.

The codecs (gzip, bzip2, xz, zstd, lz4) are stream formats; partition and filesystem readers seek
all over a disk. Where the format indexes itself (multi-block xz, multi-frame zstd) the image is
read at random instead (``immutools.image.seekable``, chosen by ``immutools.image.access``);
everything else is decompressed once here, into the decompression cache
(``immutools.image.cache``) or an anonymous temporary file. Disk images are mostly zeros: the
writer stores only non-zero 64 KiB blocks and seeks over zero ones, so the file costs disk space
only for the data actually in the image.

The temporary file is unlinked as soon as it is created (where the OS allows), so it disappears
when its descriptor is closed — on ``close()``, on an error, at interpreter exit, and even if the
process is killed. Where unlinking an open file is impossible it is removed on close and by a
``weakref.finalize`` hook at exit.

Streams are decoded the way the command-line tools do: concatenated members/streams/frames
(pigz, pbzip2, ``cat a.xz b.xz``, multi-frame zstd, pzstd's skippable frames), xz stream padding,
and lz4's legacy frame format (``lz4 -l``; lz4 doc/lz4_Frame_format.md, "Legacy frame"), which
python-lz4 does not read, so we parse its framing here: a 4-byte magic, then blocks of
<little-endian 32-bit compressed size><lz4 block> each decoding to at most 8 MiB. gzip goes through
rapidgzip's parallel decoder and bzip2 through our block-parallel one
(``immutools.image.bzip2blocks``) when they take the file; a member (or bzip2 block) whose exact
compressed bytes already decoded to zeros is not decoded again.

Every decoder is driven with a bounded output size per call, so a small hostile input cannot make
one call allocate gigabytes; the output is watched by the bomb guard (``immutools.image.guard``:
the disk's declared size, zero runs, member count) and bounded by
``Limits.max_decompressed_bytes``. zstd uses ``backports.zstd`` (the PEP 784 backport;
``compression.zstd`` from Python 3.14), whose decoder has the same bounded
``decompress(data, max_length)`` API as bz2/lzma — python-zstandard's streaming APIs either return
unbounded output per call or silently accept truncated frames.
"""

from __future__ import annotations

import bz2
import errno
import lzma
import os
import struct
import sys
import tempfile
import weakref
import zlib

from immutools.errors import CorruptDataError, ImageIOError, ImmutoolsError, LimitExceededError, UnsupportedFeatureError
from immutools.image import magic
from immutools.image.guard import ExpansionGuard
from immutools.image.progress import Progress
from immutools.image.source import ByteSource, ReadStats, pread_all
from immutools.limits import DEFAULT_LIMITS, Limits

CODECS = ("gzip", "bzip2", "xz", "zstd", "lz4")

SPARSE_BLOCK = 64 * 1024
INPUT_CHUNK = 1024 * 1024
OUTPUT_CHUNK = 4 * 1024 * 1024  # largest output one decoder call may produce
FLUSH_AT = 4 * 1024 * 1024
FREE_SPACE_CHECK_EVERY = 64 * 1024 * 1024
XZ_MEMLIMIT = 1024**3  # xz -9e needs ~65 MiB; refuse streams whose dictionary needs over 1 GiB
_ZERO_BLOCK = bytes(SPARSE_BLOCK)

LZ4_LEGACY_BLOCK = 8 * 1024 * 1024
LZ4_LEGACY_MAX_COMPRESSED = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_COMPRESSBOUND
_LZ4_LEGACY_MAGIC_INT = struct.unpack("<I", magic.LZ4_LEGACY_MAGIC)[0]


def _fmt_size(n: int) -> str:
    return f"{n} bytes" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Decoders: one object per member/stream/frame, all with the bz2/lzma decompressor interface:
# decompress(data, max_length), eof, needs_input, unused_data.
# ---------------------------------------------------------------------------------------------


class _GzipMember:
    """zlib with a gzip wrapper (RFC 1952; zlib checks the CRC-32 and length trailer)."""

    def __init__(self):
        self._z = zlib.decompressobj(wbits=31)
        self._more = False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._z.unconsumed_tail:
            data = self._z.unconsumed_tail + data
        out = self._z.decompress(data, max_length)
        self._more = bool(self._z.unconsumed_tail) or len(out) >= max_length
        return out

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def needs_input(self) -> bool:
        return not self._more and not self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data


class _Lz4Legacy:
    """lz4 legacy frame: magic, then (u32 size, block) pairs until the input ends.

    Like the lz4 CLI, a size that cannot be a legacy block ends the frame and is read as the magic
    of whatever frame follows; a repeated legacy magic starts a new legacy frame.
    """

    ends_at_input_end = True

    def __init__(self):
        import lz4.block

        self._block = lz4.block
        self._buf = bytearray()
        self._started = False
        self.eof = False
        self.unused_data = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        self._buf += data
        if not self._started:
            if len(self._buf) < 4:
                return b""
            del self._buf[:4]
            self._started = True
        while len(self._buf) >= 4:
            (size,) = struct.unpack_from("<I", self._buf, 0)
            if size == _LZ4_LEGACY_MAGIC_INT or size == 0:
                del self._buf[:4]
                continue
            if size > LZ4_LEGACY_MAX_COMPRESSED:
                self.eof = True
                self.unused_data = bytes(self._buf)
                self._buf = bytearray()
                return b""
            if len(self._buf) < 4 + size:
                return b""
            block = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            return self._block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        return b""

    @property
    def needs_input(self) -> bool:
        if self.eof:
            return False
        if len(self._buf) < 4:
            return True
        (size,) = struct.unpack_from("<I", self._buf, 0)
        return size <= LZ4_LEGACY_MAX_COMPRESSED and size not in (0, _LZ4_LEGACY_MAGIC_INT) and len(self._buf) < 4 + size

    @property
    def clean_end(self) -> bool:
        return self._started and not self._buf


def _zstd_module():
    if sys.version_info >= (3, 14):
        from compression import zstd  # novermin
    else:
        try:
            from backports import zstd
        except ImportError:
            raise UnsupportedFeatureError("zstd-compressed images need the backports.zstd package") from None
    return zstd


def _member_decoder(codec: str, head: bytes):
    """A fresh decoder if ``head`` starts a member of ``codec``, else None."""
    if codec == "gzip" and head.startswith(magic.GZIP_MAGIC):
        return _GzipMember()
    if codec == "bzip2" and magic.is_bzip2_stream(head):
        return bz2.BZ2Decompressor()
    if codec == "xz" and head.startswith(magic.XZ_MAGIC):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    if codec == "zstd" and (head.startswith(magic.ZSTD_MAGIC) or magic.is_skippable_frame(head)):
        return _zstd_module().ZstdDecompressor()
    if codec == "lz4":
        if head.startswith(magic.LZ4_LEGACY_MAGIC):
            return _Lz4Legacy()
        if head.startswith(magic.LZ4_FRAME_MAGIC) or magic.is_skippable_frame(head):
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor()
    return None


# ---------------------------------------------------------------------------------------------
# Sparse writer
# ---------------------------------------------------------------------------------------------


class _SparseWriter:
    """Appends decompressed bytes to ``fd``, seeking over all-zero 64 KiB blocks."""

    def __init__(self, fd: int, limit: int, display: str, codec: str, tmp_dir: str,
                 hint: str = "set TMPDIR to a larger directory"):
        self.hint = hint
        self.fd = fd
        self.limit = limit
        self.display = display
        self.codec = codec
        self.tmp_dir = tmp_dir
        self.size = 0  # bytes flushed (written or skipped)
        self.allocated = 0  # non-zero bytes actually written
        self._pending = bytearray()
        self._next_space_check = 0
        st = self._statvfs()
        total = st.f_blocks * st.f_frsize
        # Leave some room for everyone else: never fill the temporary filesystem to the last block.
        self.reserve = min(256 * 1024**2, total // 20)
        self._check_space()

    @property
    def produced(self) -> int:
        return self.size + len(self._pending)

    def _statvfs(self):
        try:
            return os.fstatvfs(self.fd)
        except OSError as exc:  # pragma: no cover - statvfs on an open fd does not fail in practice
            raise ImageIOError(f"{self.tmp_dir}: cannot check free space: {exc.strerror}") from None

    def _check_space(self) -> None:
        st = self._statvfs()
        free = st.f_bavail * st.f_frsize
        if free < self.reserve:
            raise ImageIOError(
                f"{self.display}: only {_fmt_size(free)} free in {self.tmp_dir} after writing "
                f"{_fmt_size(self.allocated)} of decompressed data; {self.hint}"
            )
        self._next_space_check = self.allocated + FREE_SPACE_CHECK_EVERY

    def _check_limit(self, n: int) -> None:
        if self.produced + n > self.limit:
            raise LimitExceededError(
                f"{self.display}: {self.codec} data decompresses to more than {self.limit} bytes "
                f"(limit max_decompressed_bytes)"
            )

    def write(self, data: bytes, all_zero: bool = False) -> None:
        """Append ``data``; ``all_zero`` says the caller already knows it is all zeros."""
        self._check_limit(len(data))
        if all_zero and not self._pending and len(data) % SPARSE_BLOCK == 0:
            self.size += len(data)  # a hole: nothing to copy or write
            return
        self._pending += data
        if len(self._pending) >= FLUSH_AT:
            self._flush(final=False)

    def zeros(self, n: int) -> None:
        """Append ``n`` zero bytes without materialising them (a hole where block-aligned)."""
        self._check_limit(n)
        if self._pending:
            head = min(n, (-len(self._pending)) % SPARSE_BLOCK)
            self._pending += bytes(head)
            n -= head
            if self._pending and len(self._pending) % SPARSE_BLOCK == 0:
                self._flush(final=False)
        if self._pending:  # still unaligned: n was small
            self._pending += bytes(n)
            return
        whole = n - n % SPARSE_BLOCK
        self.size += whole
        if n - whole:
            self._pending += bytes(n - whole)

    def _flush(self, final: bool) -> None:
        buf = self._pending
        end = len(buf) if final else len(buf) - len(buf) % SPARSE_BLOCK
        view = memoryview(buf)
        try:
            run_start = None
            for pos in range(0, end, SPARSE_BLOCK):
                stop = min(pos + SPARSE_BLOCK, end)
                is_zero = buf.startswith(_ZERO_BLOCK, pos) if stop - pos == SPARSE_BLOCK else buf.count(0, pos, stop) == stop - pos
                if is_zero:
                    if run_start is not None:
                        self._pwrite(view[run_start:pos], self.size + run_start)
                        run_start = None
                elif run_start is None:
                    run_start = pos
            if run_start is not None:
                self._pwrite(view[run_start:end], self.size + run_start)
        finally:
            view.release()
        del buf[:end]
        self.size += end
        if self.allocated >= self._next_space_check:
            self._check_space()

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while len(data):
            try:
                written = os.pwrite(self.fd, data, offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ImageIOError(
                        f"{self.display}: no space left in {self.tmp_dir} after writing "
                        f"{_fmt_size(self.allocated)} of decompressed data; {self.hint}"
                    ) from None
                raise ImageIOError(f"{self.display}: writing the decompressed copy in {self.tmp_dir} failed: {exc.strerror}") from None
            data = data[written:]
            offset += written
            self.allocated += written

    def finish(self) -> int:
        self._flush(final=True)
        try:
            os.ftruncate(self.fd, self.size)
        except OSError as exc:
            raise ImageIOError(f"{self.display}: cannot size the decompressed copy in {self.tmp_dir}: {exc.strerror}") from None
        return self.size


# ---------------------------------------------------------------------------------------------
# The decompressed image
# ---------------------------------------------------------------------------------------------


def _release_temp(state: dict) -> None:
    fd, path = state.get("fd"), state.get("path")
    state["fd"] = state["path"] = None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


class DecompressedSource(ByteSource):
    """Random access to a decompressed file (temporary or a cache entry); closing it frees a
    temporary file's disk space."""

    def __init__(self, fd: int, size: int, name: str, stats: ReadStats | None, path: str | None):
        super().__init__(size, stats)
        self.name = name
        self._state = {"fd": fd, "path": path}
        # Runs on close(), on garbage collection, or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _release_temp, self._state)

    def fileno(self) -> int:
        fd = self._state["fd"]
        if fd is None:
            raise ValueError("closed")
        return fd

    def _read_at(self, offset: int, length: int) -> bytes:
        fd = self._state["fd"]
        if fd is None:
            raise ImageIOError(f"{self.name}: read after close")
        return pread_all(fd, offset, length, self.name)

    def close(self) -> None:
        self._finalizer()
        super().close()


def open_temp(directory: str) -> tuple[int, str | None]:
    """An anonymous file in ``directory``: (fd, path to remove on close or None if already unlinked)."""
    try:
        fd, path = tempfile.mkstemp(prefix="immutools-", suffix=".decompressed", dir=directory)
    except OSError as exc:
        raise ImageIOError(f"cannot create a temporary file in {directory}: {exc.strerror}") from None
    try:
        os.unlink(path)
        path = None
    except OSError:  # e.g. Windows: cannot unlink an open file; removed on close instead
        pass
    return fd, path


def decompress_to_temp(
    src: ByteSource,
    codec: str,
    *,
    display: str,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool | None = None,
    stats: ReadStats | None = None,
    tmpdir: str | None = None,
) -> tuple[DecompressedSource, list[str]]:
    """Decompress all of ``src`` (compressed with ``codec``) into an anonymous sparse temp file."""
    if codec not in CODECS:
        raise UnsupportedFeatureError(f"{display}: unknown compression {codec}")
    directory = tmpdir or tempfile.gettempdir()
    fd, path = open_temp(directory)
    state = {"fd": fd, "path": path}
    try:
        size, warnings = decompress_into(
            src, codec, fd, display=display, directory=directory, limits=limits, progress=progress, stats=stats
        )
        source = DecompressedSource(fd, size, f"{display} ({codec}-decompressed)", stats, path)
    except BaseException:
        _release_temp(state)
        raise
    return source, warnings


def decompress_into(
    src: ByteSource,
    codec: str,
    fd: int,
    *,
    display: str,
    directory: str,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool | None = None,
    stats: ReadStats | None = None,
    hint: str = "set TMPDIR to a larger directory",
) -> tuple[int, list[str]]:
    """Decompress all of ``src`` into the empty file ``fd`` (sparse), guarded against bombs.

    Returns (decompressed size, warnings). gzip goes through rapidgzip's parallel decoder when it
    is installed and the input decodes cleanly with it, bzip2 through our block-parallel decoder
    (``immutools.image.bzip2blocks``); anything they reject is decoded again by the sequential
    standard-library path, which gives the precise error or warning.
    """
    if codec not in CODECS:
        raise UnsupportedFeatureError(f"{display}: unknown compression {codec}")
    bar = Progress(f"decompressing {os.path.basename(display)} ({codec})", src.size, progress)
    writer = None
    try:
        if codec == "gzip" and getattr(src, "path", None):
            writer = _SparseWriter(fd, limits.max_decompressed_bytes, display, codec, directory, hint)
            guard = ExpansionGuard(display, codec, limits)
            if _decode_rapidgzip(src, writer, guard, bar):
                guard.finish()
                return writer.finish(), []
            _reset(fd)
        if codec == "bzip2":
            from immutools.image.bzip2blocks import decode_blocks

            writer = _SparseWriter(fd, limits.max_decompressed_bytes, display, codec, directory, hint)
            guard = ExpansionGuard(display, codec, limits)
            if decode_blocks(src, writer, guard, bar):
                guard.finish()
                return writer.finish(), []
            _reset(fd)
        writer = _SparseWriter(fd, limits.max_decompressed_bytes, display, codec, directory, hint)
        guard = ExpansionGuard(display, codec, limits)
        warnings = _decode(src, codec, writer, guard, display, bar)
        guard.finish()
        return writer.finish(), warnings
    finally:
        bar.close()
        if stats is not None and writer is not None:
            stats.bytes_decompressed += writer.produced


def _reset(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        raise ImageIOError(f"cannot reset the decompressed copy: {exc.strerror}") from None


# rapidgzip decodes ahead in chunks of this much compressed input; deflate expands at most 1032:1,
# so a chunk holds at most ~264 MiB of output (its default, 4 MiB, held 2.9 GiB on an 8 GiB
# Flatcar image of zeros).
RAPIDGZIP_CHUNK = 256 * 1024


def _decode_rapidgzip(src: ByteSource, writer: "_SparseWriter", guard: ExpansionGuard, bar: Progress) -> bool:
    """Parallel gzip decoding; False when rapidgzip is missing or did not consume the input cleanly."""
    try:
        import rapidgzip
    except ImportError:
        return False
    try:
        reader = rapidgzip.RapidgzipFile(src.path, parallelization=max(1, min(os.cpu_count() or 1, 4)),
                                         chunk_size=RAPIDGZIP_CHUNK)
    except Exception:
        return False
    try:
        while True:
            try:
                out = reader.read(OUTPUT_CHUNK)
            except Exception:
                return False
            if not out:
                break
            guard.data(out)
            writer.write(out, all_zero=guard.last_was_zero)
            bar.update(min(src.size, reader.tell_compressed() // 8), writer.produced)
        # A truncated file reads short without an error: accept only if every input bit was used.
        complete = reader.tell_compressed() == src.size * 8
    finally:
        reader.close()
    if complete:
        src.stats.add(src.size)  # rapidgzip read the file itself
    return complete


# Identical compressed members decode to identical output: pbzip2 writes one bzip2 stream per
# 900 kB of input, so the zero-filled stretches of a disk image are thousands of byte-identical
# streams. An all-zero member seen once is not decoded again (the comparison is of the member's
# complete compressed bytes, so it is exact).
MEMO_MAX_MEMBER = 64 * 1024
MEMO_MAX_ENTRIES = 64
MEMO_KEY = 16


def _decode(src: ByteSource, codec: str, writer: "_SparseWriter", guard: ExpansionGuard, display: str,
            bar: Progress) -> list[str]:
    """Feed every member of the input through its decoder into ``writer``; return warnings."""
    warnings: list[str] = []
    in_pos = 0
    members = 0
    pending = b""
    input_done = False
    memo: dict[bytes, list[tuple[bytes, int]]] = {}
    memo_count = 0

    def read_more() -> bytes:
        nonlocal in_pos, input_done
        if input_done:
            return b""
        data = src.read_at(in_pos, INPUT_CHUNK)
        in_pos += len(data)
        if not data:
            input_done = True
        return data

    def fail(exc: Exception) -> ImmutoolsError:
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        lowered = text.lower()
        if "memory usage limit" in lowered or "too much memory" in lowered or ("window" in lowered and "large" in lowered):
            return LimitExceededError(f"{display}: {codec} stream needs more decoder memory than allowed: {text}")
        return CorruptDataError(
            f"{display}: corrupt {codec} data (within the first {in_pos} compressed bytes, "
            f"{writer.produced} bytes decompressed): {text}"
        )

    def repeated_member() -> int | None:
        """Output size of a known all-zero member that ``pending`` starts with, else None."""
        nonlocal pending
        candidates = memo.get(bytes(pending[:MEMO_KEY]))
        if not candidates:
            return None
        for member, out_len in candidates:
            while len(pending) < len(member) and not input_done:
                pending += read_more()
            if pending.startswith(member):
                pending = pending[len(member):]
                return out_len
        return None

    while True:
        # Between members: look at the next bytes.
        while len(pending) < MEMO_KEY and not input_done:
            pending += read_more()
        if not pending:
            break
        if pending[0] == 0:
            stripped = pending.lstrip(b"\0")
            zeros = len(pending) - len(stripped)
            while not stripped and not input_done:
                more = read_more()
                stripped = more.lstrip(b"\0")
                zeros += len(more) - len(stripped)
            if not stripped:
                if codec != "xz" or zeros % 4:
                    warnings.append(f"{display}: {zeros} trailing zero bytes after the {codec} data ignored")
                break
            pending = stripped
            if codec != "xz":
                warnings.append(f"{display}: {zeros} zero bytes between {codec} streams ignored")
            continue
        repeated = repeated_member() if memo else None
        if repeated is not None:
            guard.member()
            guard.zeros(repeated)
            writer.zeros(repeated)
            members += 1
            bar.update(in_pos, writer.produced)
            continue
        decoder = _member_decoder(codec, pending)
        if decoder is None:
            if members == 0:
                raise CorruptDataError(f"{display}: not a {codec} stream")
            trailing = src.size - in_pos + len(pending)
            warnings.append(f"{display}: {trailing} bytes of trailing data after the {codec} data ignored")
            break
        guard.member()
        memoisable = not getattr(decoder, "ends_at_input_end", False)
        member_bytes = bytearray()  # the first MEMO_MAX_MEMBER + 1 bytes fed to this member
        member_fed = 0
        member_out = 0
        member_zero = True
        feed, pending = pending, b""
        while True:
            if memoisable and feed:
                if len(member_bytes) <= MEMO_MAX_MEMBER:
                    member_bytes += feed[: MEMO_MAX_MEMBER + 1 - len(member_bytes)]
                member_fed += len(feed)
            try:
                out = decoder.decompress(feed, OUTPUT_CHUNK)
            except ImmutoolsError:
                raise
            except Exception as exc:  # each codec library has its own error type
                raise fail(exc) from None
            feed = b""
            if out:
                guard.data(out)
                zero = guard.last_was_zero
                member_zero = member_zero and zero
                member_out += len(out)
                writer.write(out, all_zero=zero)
            bar.update(in_pos, writer.produced)
            if decoder.eof:
                pending = decoder.unused_data or b""
                members += 1
                member_len = member_fed - len(pending)
                if (memoisable and member_zero and member_out and MEMO_KEY <= member_len <= MEMO_MAX_MEMBER
                        and memo_count < MEMO_MAX_ENTRIES):
                    member = bytes(member_bytes[:member_len])
                    memo.setdefault(member[:MEMO_KEY], []).append((member, member_out))
                    memo_count += 1
                break
            if decoder.needs_input:
                feed = read_more()
                if not feed:
                    if getattr(decoder, "ends_at_input_end", False) and decoder.clean_end:
                        members += 1
                        break
                    raise CorruptDataError(
                        f"{display}: truncated {codec} stream: the input ends after {in_pos} bytes "
                        f"({writer.produced} bytes decompressed)"
                    )
    if members == 0:
        raise CorruptDataError(f"{display}: no {codec} data found")
    return warnings
