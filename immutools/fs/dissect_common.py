"""Glue shared by the filesystem backends built on the dissect.* libraries (ext, xfs, btrfs, fat,
squashfs): node handles, turning library exceptions into ours, bounded decompression.

Every call into a dissect library happens inside ``library_errors``: whatever the library raises on
damaged data (its own ``Error``, ``EOFError``, ``KeyError``, ``struct.error``, ``zlib.error`` ...)
becomes a ``CorruptDataError`` (or ``UnsupportedFeatureError`` for ``NotImplementedError``) with one
line naming the filesystem and the path. Libraries read lazily, so opening a filesystem costs a
superblock, and listing a directory costs that directory's metadata.
"""

from __future__ import annotations

import contextlib
import lzma
import posixpath
import zlib
from collections import OrderedDict
from typing import Any, Iterator

from immutools.errors import (
    CorruptDataError,
    ImmutoolsError,
    LimitExceededError,
    UnsupportedFeatureError,
)
from immutools.fs.base import FileSystem, Stat
from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits

# Linux PATH_MAX: no valid symlink target is longer (a longer one is damage, and would only cost memory).
MAX_LINK_TARGET = 4096
# Directory listings kept for repeated path lookups (``/usr/lib/...`` resolves ``/usr`` each time).
_LISTING_CACHE_DIRS = 32


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def library_errors(fstype: str, path: str, action: str) -> Iterator[None]:
    """Turn any exception from a parsing library into one of ours, naming fs, path and action."""
    prefix = f"{fstype}: {path}: {action}: "
    try:
        yield
    except (CorruptDataError, UnsupportedFeatureError, LimitExceededError) as exc:
        # Raised by our own checks inside the adapter: add where it happened, once.
        if str(exc).startswith(f"{fstype}:"):
            raise
        raise type(exc)(_one_line(prefix + str(exc))) from exc
    except ImmutoolsError:
        raise
    except NotImplementedError as exc:
        raise UnsupportedFeatureError(_one_line(f"{prefix}unsupported: {exc}")) from exc
    except RecursionError as exc:
        raise CorruptDataError(f"{prefix}structure nests too deeply (a loop?)") from exc
    except MemoryError as exc:
        raise LimitExceededError(f"{prefix}out of memory on a damaged size") from exc
    except Exception as exc:  # noqa: BLE001 - libraries raise anything on damaged input
        detail = str(exc) or "damaged structure"
        raise CorruptDataError(_one_line(f"{prefix}{type(exc).__name__}: {detail}")) from exc


class Ref:
    """Our handle on one library node: the node, the path it was reached by (for messages), a
    cached ``Stat`` and backend-specific scratch data."""

    __slots__ = ("node", "path", "stat", "extra")

    def __init__(self, node: Any, path: str, extra: Any = None):
        self.node = node
        self.path = path
        self.stat: Stat | None = None
        self.extra = extra

    def __repr__(self) -> str:
        return f"<Ref {self.path}>"


def child_path(parent: str, name: str) -> str:
    return posixpath.join(parent, name) if parent != "/" else "/" + name


class DissectFileSystem(FileSystem):
    """Base for the dissect adapters. Subclasses implement the hooks below; this class adds the
    error wrapping, the stat cache, per-directory bounds and a small lookup cache."""

    def __init__(self, source: ByteSource, limits: Limits = DEFAULT_LIMITS):
        super().__init__(limits)
        self.source = source
        self._listings: OrderedDict[Any, dict[str, Ref]] = OrderedDict()
        with self.errors("/", "open"):
            root_node = self._open(source)
        self._root_ref = Ref(root_node, "/")
        # Fail at open, not at the first lookup, when the root itself is unreadable.
        self._stat_node(self._root_ref)
        if not self._root_ref.stat.is_dir:
            raise CorruptDataError(f"{self.fstype}: root is not a directory")

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _open(self, source: ByteSource) -> Any:
        """Open the library on ``source``; return the root node."""
        raise NotImplementedError

    def _make_stat(self, ref: Ref) -> Stat:
        raise NotImplementedError

    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        """Yield (name, library node) of a directory, without '.' and '..'."""
        raise NotImplementedError

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _link_target(self, ref: Ref) -> str:
        raise NotImplementedError

    def _xattrs(self, ref: Ref) -> dict[str, bytes]:
        return {}

    def _key(self, ref: Ref) -> Any:
        return self._stat_node(ref).inode

    # ---- the base-class primitives -----------------------------------------------------------
    def errors(self, path: str, action: str):
        return library_errors(self.fstype, path, action)

    def _root(self) -> Ref:
        return self._root_ref

    def _stat_node(self, ref: Ref) -> Stat:
        if ref.stat is None:
            with self.errors(ref.path, "stat"):
                ref.stat = self._make_stat(ref)
        return ref.stat

    def _list_node(self, ref: Ref) -> Iterator[tuple[str, Ref]]:
        count = 0
        with self.errors(ref.path, "list directory"):
            for name, node in self._children(ref):
                if name in (".", ".."):
                    continue
                count += 1
                if count > self.limits.max_dir_entries:
                    raise LimitExceededError(
                        f"{self.fstype}: {ref.path}: more than {self.limits.max_dir_entries} directory entries"
                    )
                yield name, Ref(node, child_path(ref.path, name))

    def _lookup_child(self, ref: Ref, name: str) -> Ref | None:
        key = self._node_key(ref)
        listing = self._listings.get(key) if key is not None else None
        if listing is None:
            listing = dict(self._list_node(ref))
            if key is not None:
                self._listings[key] = listing
                while len(self._listings) > _LISTING_CACHE_DIRS:
                    self._listings.popitem(last=False)
        else:
            self._listings.move_to_end(key)
        return listing.get(name)

    def _read_node(self, ref: Ref, offset: int, length: int) -> bytes:
        size = self._stat_node(ref).size
        if offset >= size or length <= 0:
            return b""
        length = min(length, size - offset)
        with self.errors(ref.path, "read"):
            data = self._read_file(ref, offset, length)
        if len(data) != length:
            raise CorruptDataError(
                f"{self.fstype}: {ref.path}: read: got {len(data)} of {length} bytes at offset {offset} (truncated data)"
            )
        return data

    def _readlink_node(self, ref: Ref) -> str:
        with self.errors(ref.path, "readlink"):
            target = self._link_target(ref)
        if len(target) > MAX_LINK_TARGET or "\0" in target:
            raise CorruptDataError(f"{self.fstype}: {ref.path}: symlink target is not a valid path")
        if not target:
            raise CorruptDataError(f"{self.fstype}: {ref.path}: empty symlink target")
        return target

    def _xattrs_node(self, ref: Ref) -> dict[str, bytes]:
        with self.errors(ref.path, "read xattrs"):
            return self._xattrs(ref)

    def _node_key(self, ref: Ref) -> Any:
        with self.errors(ref.path, "stat"):
            return self._key(ref)


def read_stream(stream, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset`` from a library stream (seek + read)."""
    stream.seek(offset)
    return stream.read(length)


# ------------------------------------------------------------------------------------------------
# Bounded decompression. The formats here compress fixed-size blocks (squashfs data/metadata blocks,
# btrfs extents of at most 128 KiB), so anything that inflates past the block size is damage; we
# stop there instead of letting a crafted block inflate to gigabytes.
# ------------------------------------------------------------------------------------------------


def decompress(codec: str, data: bytes, max_out: int, what: str = "block") -> bytes:
    """Decompress ``data`` with ``codec`` (zlib, lzma, xz, zstd, lz4, lzo), at most ``max_out`` bytes."""
    try:
        if codec == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, max_out)
            overflow = bool(d.unconsumed_tail) and bool(d.decompress(d.unconsumed_tail, 1))
        elif codec in ("lzma", "xz"):
            d = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)
            out = d.decompress(data, max_out)
            overflow = not d.eof and not d.needs_input and bool(d.decompress(b"", 1))
        elif codec == "zstd":
            import zstandard

            # A stream reader never allocates what the frame header claims; it just stops. One
            # frame per block: btrfs pads the frame to a sector with zeros, which are no frame.
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
                out = reader.read(max_out + 1)
            overflow = len(out) > max_out
        elif codec == "lz4":
            import lz4.block

            # Raw LZ4 blocks without a size header: the output buffer is the bound.
            try:
                out = lz4.block.decompress(data, uncompressed_size=max_out)
                overflow = False
            except lz4.block.LZ4BlockError:
                raise CorruptDataError(f"lz4 {what} is damaged or inflates past {max_out} bytes") from None
        elif codec == "lzo":
            from dissect.util.compression import lzo

            out = lzo.decompress(data, False, max_out)
            overflow = len(out) > max_out
        else:
            raise UnsupportedFeatureError(f"{codec} compression is not supported")
    except ImmutoolsError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib.error, LZMAError, ZstdError, lzo errors ...
        raise CorruptDataError(_one_line(f"{codec} {what} is damaged: {type(exc).__name__}: {exc}")) from exc
    if overflow:
        raise CorruptDataError(f"{codec} {what} inflates past {max_out} bytes")
    return bytes(out)
