"""A Linux initramfs (concatenated, possibly compressed cpio archives) as a read-only ``FileSystem``.

Our own parser: no maintained Python library reads the kernel's initramfs buffer format (several
``newc``/``crc`` cpio archives, each segment raw or compressed, zero padding between them) with the
kernel's rules. The rules followed here are the kernel's (``init/initramfs.c``,
``Documentation/driver-api/early-userspace/buffer-format.rst``):

* segments are decoded in sequence; zero bytes between them are skipped; a raw cpio archive must
  start on a 4-byte boundary, anything else non-zero must be a compressed stream
  (``immutools.fs.compressed``); one compressed stream may hold several archives;
* a later entry with the same path replaces the earlier one: a different file type removes the old
  entry first (a non-empty directory cannot be removed, so the new entry is dropped), a regular file
  over a regular file rewrites the same inode, a directory over a directory only updates its
  metadata;
* hard links: non-directory entries with nlink >= 2 sharing (ino, dev major, dev minor, type)
  within one archive are one inode; the data is written by whichever entry carries it (GNU cpio puts
  it on the last name); the link table is reset at each ``TRAILER!!!``;
* names longer than PATH_MAX (4096) and symlink targets longer than PATH_MAX are skipped, as the
  kernel does; names are resolved inside the archive root (``..`` is folded and stops at the root,
  a leading ``/`` is dropped), intermediate symlinks are followed inside the archive.

One deliberate difference: a missing parent directory is created (the kernel would fail to create
the entry), so every entry of a sloppy archive stays visible; such directories are counted in
``implied_dirs``.

A damaged or truncated segment stops the unpacking there, keeps what came before (the kernel does
the same and boots what it unpacked) and adds a warning; ``strict=True`` raises instead.

Memory stays bounded whatever the archive holds: headers are read through a 1 MiB window, a raw
segment's file data stay in the input (an entry records where), and a compressed segment is
decoded by ``compressed.decompress_stream``, in memory up to ``MEMORY_BUDGET`` bytes for the whole
archive and beyond that into a sparse temporary file; file data are read from there on demand.
"""

from __future__ import annotations

import os
import re
import stat as stat_mod
from dataclasses import dataclass, field
from typing import Iterator

from immutools.errors import (
    CorruptDataError,
    FileSystemError,
    LimitExceededError,
    UnsupportedFeatureError,
)
from immutools.fs import compressed
from immutools.fs.base import FileSystem, Stat
from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
ODC_MAGIC = b"070707"           # old portable format: not accepted by the kernel
HEADER_SIZE = 110               # 6-byte magic + 13 fields of 8 hex digits
PATH_MAX = 4096
TRAILER = b"TRAILER!!!"
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")
WINDOW = 1 << 20                # header/name reads come from a window of this many bytes
MEMORY_BUDGET = 32 << 20        # decoded segment bytes kept in memory per archive; the rest is spilled


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(eq=False)
class _Inode:
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdev: int | None = None
    data: "_Data | None" = None              # regular files
    target: str | None = None                # symlinks
    children: dict[str, "_Inode"] | None = None  # directories
    serial: int = 0                          # unique id (cpio inode numbers repeat across archives)
    segment: int | None = None               # index in ``segments`` of the entry that last set it
    implied: bool = False

    @property
    def is_dir(self) -> bool:
        return self.children is not None


@dataclass(frozen=True)
class _Data:
    """A regular file's bytes: ``size`` bytes at ``offset`` of ``source`` (the input or a decoded segment)."""

    source: ByteSource
    offset: int
    size: int

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size:
            return b""
        return self.source.read_at(self.offset + offset, min(length, self.size - offset))


class _Reader:
    """Random reads of small pieces (headers, names) through one ``WINDOW``-sized buffer."""

    def __init__(self, source: ByteSource):
        self.source = source
        self.size = source.size
        self._start = 0
        self._buf = b""

    def read(self, pos: int, n: int) -> bytes:
        if pos < self._start or pos + n > self._start + len(self._buf):
            if n > WINDOW:
                return self.source.read_at(pos, n)
            self._start, self._buf = pos, self.source.read_at(pos, WINDOW)
        rel = pos - self._start
        return self._buf[rel : rel + n]

    def byte(self, pos: int) -> int:
        b = self.read(pos, 1)
        return b[0] if b else 0

    def skip_zeros(self, pos: int, end: int) -> int:
        """The first non-zero offset in [pos, end), else ``end``."""
        while pos < end:
            window = self.read(pos, min(end - pos, WINDOW))
            if not window:
                return end
            stripped = window.lstrip(b"\0")
            if stripped:
                return pos + len(window) - len(stripped)
            pos += len(window)
        return end


@dataclass
class _Header:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int


class _Stop(Exception):
    """A damaged structure: unpacking stops here (kernel behaviour), message says why."""


@dataclass
class _ParseState:
    entries: int = 0
    archives: int = 0
    links: dict = field(default_factory=dict)   # (ino, devmajor, devminor, type) -> _Inode


class CpioArchive(FileSystem):
    """Read-only view of an initramfs. ``segments`` describes each raw or compressed segment."""

    fstype = "cpio"

    def __init__(self, source: ByteSource, limits: Limits = DEFAULT_LIMITS, strict: bool = False):
        super().__init__(limits)
        self.source = source
        self.strict = strict
        self.segments: list[dict] = []
        self.implied_dirs = 0
        self.complete = True              # False when a damaged segment stopped the unpacking
        self._serial = 0
        self._entry_count = 0
        self._decompressed_total = 0
        self._in_memory = 0                # decoded bytes held in memory (the rest is in temporary files)
        self._decoded: list[ByteSource] = []   # decoded segments, closed with the archive
        self._root_inode = self._new_inode(mode=stat_mod.S_IFDIR | 0o755, children={})
        self._unpack()

    @classmethod
    def from_source(cls, source: ByteSource, limits: Limits = DEFAULT_LIMITS, strict: bool = False) -> "CpioArchive":
        return cls(source, limits=limits, strict=strict)

    # ---- unpacking ---------------------------------------------------------------------------
    def _new_inode(self, **kw) -> _Inode:
        self._serial += 1
        return _Inode(serial=self._serial, **kw)

    def _unpack(self) -> None:
        if self.source.size > self.limits.max_nested_bytes:
            raise LimitExceededError(
                f"{self.source.name}: initramfs of {self.source.size} bytes is larger than the "
                f"{self.limits.max_nested_bytes}-byte nested-object limit"
            )
        raw = _Reader(self.source)
        pos = 0
        end = raw.size
        while pos < end:
            first = raw.byte(pos)
            if first == 0:                         # zero padding between segments
                pos = raw.skip_zeros(pos, end)
                continue
            try:
                if first == 0x30 and not pos & 3:  # '0' on a 4-byte boundary: a raw cpio archive
                    pos = self._raw_segment(raw, pos)
                else:
                    pos = self._compressed_segment(raw, pos)
            except LimitExceededError:
                raise
            except _Stop as stop:
                self._damaged(str(stop))
                return
            except UnsupportedFeatureError as exc:
                if self.strict or self._entry_count == 0:
                    raise
                self._damaged(str(exc))
                return
            except CorruptDataError as exc:
                self._damaged(f"{self.source.name}: {exc}")
                return
        if not self.segments:
            raise CorruptDataError(f"{self.source.name}: empty initramfs (only zero bytes)")

    def _damaged(self, message: str) -> None:
        """Stop unpacking here; fatal when nothing was unpacked or in strict mode."""
        self.complete = False
        if self.strict or self._entry_count == 0:
            raise CorruptDataError(message)
        self.warnings.append(message)

    def _raw_segment(self, raw: _Reader, pos: int) -> int:
        """One uncompressed cpio archive in the input, up to and including its TRAILER."""
        state = _ParseState()
        seg_index = len(self.segments)
        seg = {"offset": pos, "compression": "none", "size": 0, "decompressed_size": 0, "entries": 0, "archives": 0}
        self.segments.append(seg)
        try:
            after = self._parse_archive(raw, pos, raw.size, state, seg_index)
        finally:
            seg["entries"] = state.entries
            seg["archives"] = state.archives
        seg["size"] = seg["decompressed_size"] = after - pos
        # The kernel requires whatever follows an archive's zero padding to be 4-byte aligned.
        nxt = raw.skip_zeros(after, raw.size)
        if nxt < raw.size and nxt & 3:
            raise _Stop(f"{self.source.name}: broken padding after the cpio archive at offset {pos} (next data at offset {nxt})")
        return after

    def _compressed_segment(self, raw: _Reader, pos: int) -> int:
        head = raw.read(pos, 6)
        kind = compressed.detect_compression(head)
        if kind is None:
            if head == ODC_MAGIC:
                raise UnsupportedFeatureError(f"{self.source.name}: old (odc) cpio format at offset {pos} is not an initramfs format")
            raise _Stop(f"{self.source.name}: no cpio magic and no known compression at offset {pos}")
        budget = self.limits.max_nested_bytes - self._decompressed_total
        try:
            data, used = compressed.decompress_stream(
                self.source, pos, kind, budget, name=f"{self.source.name}@{pos}:{kind}",
                memory_budget=MEMORY_BUDGET - self._in_memory)
        except LimitExceededError as exc:
            if "decompresses to more than" not in str(exc):
                raise LimitExceededError(f"{self.source.name}: segment at offset {pos}: {exc}") from None
            raise LimitExceededError(
                f"{self.source.name}: initramfs decompresses to more than {self.limits.max_nested_bytes} bytes "
                f"(segment at offset {pos}, {kind})"
            ) from None
        self._decompressed_total += data.size
        if not isinstance(data, compressed.SpillSource):
            self._in_memory += data.size
        self._decoded.append(data)
        self.source.stats.bytes_decompressed += data.size
        state = _ParseState()
        seg_index = len(self.segments)
        seg = {"offset": pos, "compression": kind, "size": used, "decompressed_size": data.size, "entries": 0, "archives": 0}
        self.segments.append(seg)
        try:
            self._parse_stream(_Reader(data), state, seg_index, where=f"{kind} segment at offset {pos}")
        finally:
            seg["entries"] = state.entries
            seg["archives"] = state.archives
        return pos + used

    def _parse_stream(self, buf: _Reader, state: _ParseState, seg_index: int, where: str) -> None:
        """All archives inside one decompressed stream (zero padding allowed between them)."""
        pos, end = 0, buf.size
        while pos < end:
            first = buf.byte(pos)
            if first == 0:
                pos = buf.skip_zeros(pos, end)
                continue
            if pos & 3:
                raise _Stop(f"{self.source.name}: {where}: broken padding at offset {pos} of the decompressed data")
            if first != 0x30:
                raise _Stop(f"{self.source.name}: {where}: junk at offset {pos} of the decompressed data")
            pos = self._parse_archive(buf, pos, end, state, seg_index, where)

    def _parse_archive(self, buf: _Reader, pos: int, end: int, state: _ParseState, seg_index: int, where: str | None = None) -> int:
        """Entries from ``pos`` through the TRAILER; returns the offset after the trailer's padding."""
        where = where or f"raw cpio segment at offset {pos}"
        state.links = {}
        while True:
            if pos + HEADER_SIZE > end:
                raise _Stop(f"{self.source.name}: {where}: truncated cpio header at offset {pos} (archive has no TRAILER!!!)")
            header = buf.read(pos, HEADER_SIZE)
            magic = header[:6]
            if magic not in (NEWC_MAGIC, CRC_MAGIC):
                if magic == ODC_MAGIC:
                    raise UnsupportedFeatureError(f"{self.source.name}: {where}: old (odc) cpio format is not an initramfs format")
                raise _Stop(f"{self.source.name}: {where}: no cpio magic at offset {pos}")
            fields = header[6:HEADER_SIZE]
            if not _HEX_FIELDS.fullmatch(fields):
                raise _Stop(f"{self.source.name}: {where}: cpio header at offset {pos} has non-hex fields")
            hdr = _Header(*(int(fields[i : i + 8], 16) for i in range(0, 104, 8)))
            name_start = pos + HEADER_SIZE
            name_end = name_start + hdr.namesize
            data_start = _align4(name_end)
            data_end = data_start + hdr.filesize
            if data_end > end:
                raise _Stop(
                    f"{self.source.name}: {where}: entry at offset {pos} declares {hdr.namesize}-byte name and "
                    f"{hdr.filesize}-byte data but only {end - name_start} bytes remain"
                )
            next_pos = _align4(data_end)
            if hdr.namesize == 0 or buf.byte(name_end - 1) != 0:
                raise _Stop(f"{self.source.name}: {where}: entry at offset {pos}: name is not NUL-terminated")
            if hdr.namesize > PATH_MAX:
                # Never read: the kernel skips such names, and none can be the trailer.
                self._count_entry(state)
                self.warnings.append(f"{where}: entry at offset {pos}: name longer than {PATH_MAX} bytes skipped (as the kernel does)")
                pos = next_pos
                continue
            # The kernel uses the name as a C string: anything after an inner NUL is ignored.
            name = buf.read(name_start, hdr.namesize - 1).split(b"\0", 1)[0]
            if name == TRAILER:
                state.archives += 1
                return min(next_pos, end)
            self._count_entry(state)
            self._add_entry(name, hdr, buf, data_start, state, seg_index, where)
            pos = next_pos

    def _count_entry(self, state: _ParseState) -> None:
        self._entry_count += 1
        if self._entry_count > self.limits.max_walk_entries:
            raise LimitExceededError(f"{self.source.name}: initramfs has more than {self.limits.max_walk_entries} entries")
        state.entries += 1

    # ---- building the tree -------------------------------------------------------------------
    def _add_entry(self, raw_name: bytes, hdr: _Header, buf: _Reader, data_start: int, state: _ParseState,
                   seg_index: int, where: str) -> None:
        name = os.fsdecode(raw_name) if raw_name else ""
        mode = hdr.mode & 0xFFFFFFFF
        ftype = stat_mod.S_IFMT(mode)
        parts = _normalise(name)
        if not parts:
            # "." (or a name that normalises to the root): metadata for the root directory.
            if ftype == stat_mod.S_IFDIR:
                self._set_meta(self._root_inode, hdr, seg_index)
            else:
                self.warnings.append(f"{where}: non-directory entry {name!r} names the archive root; skipped")
            return
        parent = self._parent_dir(parts[:-1], name, where)
        if parent is None:
            return
        leaf = parts[-1]
        existing = parent.children.get(leaf)

        if ftype == stat_mod.S_IFLNK:
            if hdr.filesize > PATH_MAX:
                self.warnings.append(f"{where}: symlink {name!r}: target longer than {PATH_MAX} bytes skipped")
                return
            target = os.fsdecode(buf.read(data_start, hdr.filesize).split(b"\0", 1)[0])
            if not self._clear(parent, leaf, existing, None, name, where):
                return
            node = self._new_inode(mode=mode, target=target)
            self._set_meta(node, hdr, seg_index)
            parent.children[leaf] = node
            return

        if ftype == stat_mod.S_IFDIR:
            if existing is not None and existing.is_dir:
                self._set_meta(existing, hdr, seg_index)      # mkdir fails (EEXIST), chown/chmod apply
                existing.implied = False
                return
            if not self._clear(parent, leaf, existing, ftype, name, where):
                return
            node = self._new_inode(mode=mode, children={})
            self._set_meta(node, hdr, seg_index)
            parent.children[leaf] = node
            return

        if ftype not in (stat_mod.S_IFREG, stat_mod.S_IFCHR, stat_mod.S_IFBLK, stat_mod.S_IFIFO, stat_mod.S_IFSOCK):
            self.warnings.append(f"{where}: entry {name!r} has unknown file type {ftype:o}; skipped")
            return

        # Hard links (kernel maybe_link): the second and later names join the first one's inode.
        if hdr.nlink >= 2:
            key = (hdr.ino, hdr.devmajor, hdr.devminor, ftype)
            first = state.links.get(key)
            if first is not None:
                if not self._clear(parent, leaf, existing, None, name, where):
                    return
                parent.children[leaf] = first
                if ftype == stat_mod.S_IFREG and hdr.filesize:
                    first.data = _Data(buf.source, data_start, hdr.filesize)
                if ftype == stat_mod.S_IFREG:
                    self._set_meta(first, hdr, seg_index)
                return
        node = None
        if existing is not None and stat_mod.S_IFMT(existing.mode) == ftype:
            node = existing   # same type: regular files are rewritten in place, special files kept
        elif not self._clear(parent, leaf, existing, ftype, name, where):
            return
        if node is None:
            node = self._new_inode(mode=mode)
            if ftype in (stat_mod.S_IFCHR, stat_mod.S_IFBLK):
                node.rdev = os.makedev(hdr.rdevmajor & 0xFFF, hdr.rdevminor & 0xFFFFF)
            parent.children[leaf] = node
        if ftype == stat_mod.S_IFREG:
            node.data = _Data(buf.source, data_start, hdr.filesize)
        self._set_meta(node, hdr, seg_index)
        if hdr.nlink >= 2:
            state.links[(hdr.ino, hdr.devmajor, hdr.devminor, ftype)] = node

    def _set_meta(self, node: _Inode, hdr: _Header, seg_index: int) -> None:
        node.mode = hdr.mode & 0xFFFFFFFF
        node.uid, node.gid, node.mtime, node.nlink, node.ino = hdr.uid, hdr.gid, hdr.mtime, hdr.nlink, hdr.ino
        node.segment = seg_index

    def _clear(self, parent: _Inode, leaf: str, existing: _Inode | None, new_type: int | None, name: str, where: str) -> bool:
        """Kernel ``clean_path``: remove an entry of another type; a non-empty directory stays."""
        if existing is None:
            return True
        if new_type is not None and stat_mod.S_IFMT(existing.mode) == new_type:
            return True
        if existing.is_dir and existing.children:
            self.warnings.append(f"{where}: {name!r} would replace a non-empty directory; skipped (as the kernel does)")
            return False
        del parent.children[leaf]
        return True

    def _parent_dir(self, parts: list[str], name: str, where: str) -> _Inode | None:
        """Walk to the parent directory inside the archive, following symlinks, creating missing ones."""
        stack = [self._root_inode]
        pending = list(reversed(parts))
        hops = 0
        while pending:
            comp = pending.pop()
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            child = cur.children.get(comp)
            if child is None:
                child = self._new_inode(mode=stat_mod.S_IFDIR | 0o755, children={}, implied=True)
                cur.children[comp] = child
                self.implied_dirs += 1
            elif child.target is not None:
                hops += 1
                if hops > self.limits.max_symlink_hops:
                    self.warnings.append(f"{where}: {name!r}: too many symlinks in its path; skipped")
                    return None
                target = child.target
                if target.startswith("/"):
                    stack = [stack[0]]
                pending.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
                continue
            elif not child.is_dir:
                self.warnings.append(f"{where}: {name!r}: a path component is not a directory; skipped")
                return None
            stack.append(child)
        return stack[-1]

    # ---- FileSystem primitives -------------------------------------------------------------
    def _root(self) -> _Inode:
        return self._root_inode

    def _stat_node(self, ref: _Inode) -> Stat:
        if ref.data is not None:
            size = ref.data.size
        elif ref.target is not None:
            size = len(os.fsencode(ref.target))
        else:
            size = 0
        return Stat(mode=ref.mode, size=size, uid=ref.uid, gid=ref.gid, mtime=float(ref.mtime), nlink=ref.nlink,
                    inode=ref.serial, rdev=ref.rdev)

    def _list_node(self, ref: _Inode) -> Iterator[tuple[str, _Inode]]:
        return iter(list((ref.children or {}).items()))

    def _lookup_child(self, ref: _Inode, name: str) -> _Inode | None:
        return (ref.children or {}).get(name)

    def _read_node(self, ref: _Inode, offset: int, length: int) -> bytes:
        return ref.data.read(offset, length) if ref.data is not None else b""

    def _readlink_node(self, ref: _Inode) -> str:
        if ref.target is None:
            raise FileSystemError("not a symbolic link")
        return ref.target

    def _node_key(self, ref: _Inode) -> int:
        return ref.serial

    # ---- extras ------------------------------------------------------------------------------
    def open_source(self, path: str) -> ByteSource:
        """A zero-copy ``ByteSource`` over a regular file's data (e.g. ``/rootfs.sqsh``): a window
        of the input or of the decoded segment that holds it."""
        ref = self._resolve(path, True)
        if ref.data is None or stat_mod.S_IFMT(ref.mode) != stat_mod.S_IFREG:
            raise FileSystemError(f"{path}: not a regular file")
        return ref.data.source.slice(ref.data.offset, ref.data.size, name=f"{self.source.name}:{path}")

    def close(self) -> None:
        """Release the decoded segments (their temporary files)."""
        for src in self._decoded:
            src.close()
        self._decoded.clear()

    def segment_of(self, path: str) -> int | None:
        """Index in ``segments`` of the segment whose entry defines ``path`` (not following a final symlink)."""
        return self._resolve(path, False).segment

    def file_count(self) -> int:
        return self._entry_count


def _normalise(name: str) -> list[str]:
    """Path components inside the archive root: a leading '/' and '.' are dropped, '..' is folded
    lexically and never climbs above the root, so ``../../etc/passwd`` names ``/etc/passwd``."""
    out: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return out
