"""Random-access byte sources: the one interface everything above image access reads through.

A ``ByteSource`` is a read-only, seekable, file-like object (``read``, ``seek``, ``tell``) with a
known ``size`` and an explicit ``read_at(offset, length)``. The dissect parsers take any file-like
object, so a ``ByteSource`` (or a ``SliceSource`` of one partition) can be handed straight to them.

All reads are counted in a shared ``ReadStats`` so ``scan --stats`` can report how many bytes a scan
really touched.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field

from immutools.errors import ImageIOError


@dataclass
class ReadStats:
    """Bytes and calls that reached the underlying input (after any cache)."""

    bytes_read: int = 0
    read_calls: int = 0
    bytes_decompressed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
            self.read_calls += 1


class ByteSource(io.RawIOBase):
    """Abstract read-only random-access source. Subclasses implement ``_read_at`` and ``size``."""

    name: str = "<source>"

    def __init__(self, size: int, stats: ReadStats | None = None):
        super().__init__()
        if size < 0:
            raise ValueError("negative size")
        self.size = size
        self.stats = stats if stats is not None else ReadStats()
        self._pos = 0

    # -- the explicit interface -------------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``; short only at the end of the source."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if offset >= self.size or length == 0:
            return b""
        length = min(length, self.size - offset)
        data = self._read_at(offset, length)
        self.stats.add(len(data))
        return data

    def read_exact(self, offset: int, length: int) -> bytes:
        """Like ``read_at`` but raises ``ImageIOError`` when fewer bytes are available."""
        data = self.read_at(offset, length)
        if len(data) != length:
            raise ImageIOError(
                f"{self.name}: truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def _read_at(self, offset: int, length: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def slice(self, offset: int, size: int, name: str | None = None) -> "SliceSource":
        return SliceSource(self, offset, size, name=name)

    # -- file-like interface for libraries ----------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} size={self.size}>"


def pread_all(fd: int, offset: int, length: int, name: str) -> bytes:
    """``length`` bytes at ``offset`` of ``fd`` (short only at end of file), retrying short reads."""
    out = []
    while length > 0:
        try:
            chunk = os.pread(fd, length, offset)
        except OSError as exc:
            raise ImageIOError(f"{name}: read error at offset {offset}: {exc.strerror}") from None
        if not chunk:
            break
        out.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(out)


class FileSource(ByteSource):
    """A regular file (or block device) opened read-only. Uses ``os.pread``: no shared offset."""

    def __init__(self, path: str | os.PathLike, stats: ReadStats | None = None):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise ImageIOError(f"{self.path}: cannot open: {exc.strerror}") from None
        try:
            size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            os.close(self._fd)
            raise ImageIOError(f"{self.path}: cannot determine size: {exc.strerror}") from None
        super().__init__(size, stats)
        self.name = self.path

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("closed")
        return self._fd

    def _read_at(self, offset: int, length: int) -> bytes:
        return pread_all(self._fd, offset, length, self.path)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
        super().close()


class BytesSource(ByteSource):
    """An in-memory buffer (a file extracted from an archive, a decompressed initramfs segment)."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<memory>", stats: ReadStats | None = None):
        self._data = memoryview(data)
        super().__init__(len(self._data), stats)
        self.name = name

    def _read_at(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])


class SliceSource(ByteSource):
    """A window [offset, offset+size) of a parent source, e.g. one partition.

    Reads beyond the parent's end come back short, so a partition that claims more space than the
    image has (a truncated download) reads as truncated instead of failing at open.
    """

    def __init__(self, parent: ByteSource, offset: int, size: int, name: str | None = None):
        if offset < 0 or size < 0:
            raise ValueError("negative slice")
        self.parent = parent
        self.offset = offset
        # Stats are counted once, at the bottom source.
        super().__init__(size, ReadStats())
        self.stats = _NullStats()
        self.name = name or f"{parent.name}[{offset}:+{size}]"

    @property
    def available(self) -> int:
        """How many bytes of this slice actually exist in the parent."""
        return max(0, min(self.size, self.parent.size - self.offset))

    def _read_at(self, offset: int, length: int) -> bytes:
        return self.parent.read_at(self.offset + offset, length)


class _NullStats(ReadStats):
    def add(self, n: int) -> None:  # slices do not double count
        pass


class FileObjSource(ByteSource):
    """Adapter for a seekable file-like object from a library (e.g. a dissect.hypervisor disk)."""

    def __init__(self, fh, size: int, name: str, stats: ReadStats | None = None):
        self._fh = fh
        self._lock = threading.Lock()
        super().__init__(size, stats)
        self.name = name

    def _read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            self._fh.seek(offset)
            out = []
            while length > 0:
                chunk = self._fh.read(length)
                if not chunk:
                    break
                out.append(chunk)
                length -= len(chunk)
            return b"".join(out)
