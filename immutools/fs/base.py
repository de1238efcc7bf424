"""The one small read interface every filesystem reader offers.

A ``FileSystem`` is read-only and path based. Paths are absolute POSIX paths *inside the image*;
symlinks are resolved inside the image's own root (an absolute target restarts at the image root,
``..`` never climbs above it), so no lookup can leave the image.

Backends implement the primitives (``_root``, ``_lookup_child``, ``_stat_node``, ``_list_node``,
``_read_node``, ``_readlink_node``); path walking, symlink resolution, bounds and the walk live here
once.
"""

from __future__ import annotations

import posixpath
import stat as stat_mod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from immutools.errors import (
    FileSystemError,
    IsADirectoryError_,
    LimitExceededError,
    NotADirectoryError_,
    NotFoundError,
)
from immutools.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from immutools.fs.table import EntryTable

# File types, named like `find -type` / dirent types.
REG, DIR, LNK, CHR, BLK, FIFO, SOCK, UNKNOWN = "file", "dir", "symlink", "char", "block", "fifo", "socket", "unknown"

_MODE_TO_TYPE = {
    stat_mod.S_IFREG: REG,
    stat_mod.S_IFDIR: DIR,
    stat_mod.S_IFLNK: LNK,
    stat_mod.S_IFCHR: CHR,
    stat_mod.S_IFBLK: BLK,
    stat_mod.S_IFIFO: FIFO,
    stat_mod.S_IFSOCK: SOCK,
}


def type_from_mode(mode: int) -> str:
    return _MODE_TO_TYPE.get(stat_mod.S_IFMT(mode), UNKNOWN)


@dataclass
class Stat:
    """What ``stat`` returns. ``mode`` includes the type bits (S_IFMT)."""

    mode: int
    size: int
    uid: int = 0
    gid: int = 0
    mtime: float | None = None
    nlink: int = 1
    inode: int | None = None
    rdev: int | None = None

    @property
    def type(self) -> str:
        return type_from_mode(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat_mod.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat_mod.S_ISLNK(self.mode)

    @property
    def perm(self) -> int:
        return stat_mod.S_IMODE(self.mode)

    @property
    def is_setuid(self) -> bool:
        return bool(self.mode & stat_mod.S_ISUID)

    @property
    def is_setgid(self) -> bool:
        return bool(self.mode & stat_mod.S_ISGID)


@dataclass
class WalkEntry:
    path: str
    stat: Stat
    link_target: str | None = None


@dataclass
class _Node:
    """Backend handle plus cached stat; backends put whatever they need in ``ref``."""

    ref: Any
    stat: Stat
    extra: dict = field(default_factory=dict)


class FileSystem:
    """Base class. ``fstype`` is the short name used in reports (ext4, xfs, btrfs, vfat, ...)."""

    fstype: str = "unknown"

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits
        self.warnings: list[str] = []

    # ---- primitives for backends -----------------------------------------------------------
    def _root(self) -> Any:
        raise NotImplementedError

    def _stat_node(self, ref: Any) -> Stat:
        raise NotImplementedError

    def _list_node(self, ref: Any) -> Iterator[tuple[str, Any]]:
        """Yield (name, child_ref) for a directory, without '.' and '..'."""
        raise NotImplementedError

    def _lookup_child(self, ref: Any, name: str) -> Any | None:
        """Return the child ref or None. Default: linear scan of ``_list_node``."""
        for child_name, child in self._list_node(ref):
            if child_name == name:
                return child
        return None

    def _read_node(self, ref: Any, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _readlink_node(self, ref: Any) -> str:
        raise NotImplementedError

    def _xattrs_node(self, ref: Any) -> dict[str, bytes]:
        return {}

    def _node_key(self, ref: Any) -> Any:
        """A key unique per directory object, for loop detection in ``walk``. Backends where inode
        numbers repeat (btrfs subvolumes) override this."""
        return self._stat_node(ref).inode

    # ---- path resolution ---------------------------------------------------------------------
    def _resolve(self, path: str, follow_final: bool) -> Any:
        if not path.startswith("/"):
            path = "/" + path
        hops = 0
        # A stack of path components still to visit; resolution restarts from the root on an
        # absolute symlink and never goes above it on "..".
        pending = [c for c in path.split("/") if c not in ("", ".")]
        pending.reverse()
        stack: list[Any] = [self._root()]
        while pending:
            comp = pending.pop()
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if not self._stat_node(cur).is_dir:
                raise NotADirectoryError_(f"{path}: not a directory")
            child = self._lookup_child(cur, comp)
            if child is None:
                raise NotFoundError(f"{path}: no such file or directory")
            st = self._stat_node(child)
            if st.is_symlink and (pending or follow_final):
                hops += 1
                if hops > self.limits.max_symlink_hops:
                    raise LimitExceededError(f"{path}: too many levels of symbolic links")
                target = self._readlink_node(child)
                parts = [c for c in target.split("/") if c not in ("", ".")]
                if target.startswith("/"):
                    stack = [stack[0]]
                pending.extend(reversed(parts))
                continue
            stack.append(child)
        return stack[-1]

    # ---- public interface --------------------------------------------------------------------
    def exists(self, path: str, follow: bool = True) -> bool:
        try:
            self._resolve(path, follow)
            return True
        except FileSystemError:
            return False

    def stat(self, path: str, follow: bool = True) -> Stat:
        return self._stat_node(self._resolve(path, follow))

    def lstat(self, path: str) -> Stat:
        return self.stat(path, follow=False)

    def listdir(self, path: str = "/") -> list[str]:
        ref = self._resolve(path, True)
        if not self._stat_node(ref).is_dir:
            raise NotADirectoryError_(f"{path}: not a directory")
        names = []
        for name, _child in self._list_node(ref):
            names.append(name)
            if len(names) > self.limits.max_dir_entries:
                raise LimitExceededError(f"{path}: more than {self.limits.max_dir_entries} entries")
        return sorted(names)

    def scandir(self, path: str = "/") -> list[tuple[str, Stat]]:
        ref = self._resolve(path, True)
        if not self._stat_node(ref).is_dir:
            raise NotADirectoryError_(f"{path}: not a directory")
        out = []
        for name, child in self._list_node(ref):
            out.append((name, self._stat_node(child)))
            if len(out) > self.limits.max_dir_entries:
                raise LimitExceededError(f"{path}: more than {self.limits.max_dir_entries} entries")
        out.sort(key=lambda t: t[0])
        return out

    def readlink(self, path: str) -> str:
        ref = self._resolve(path, False)
        if not self._stat_node(ref).is_symlink:
            raise FileSystemError(f"{path}: not a symbolic link")
        return self._readlink_node(ref)

    def read(self, path: str, offset: int = 0, length: int | None = None, max_bytes: int | None = None) -> bytes:
        """Read a regular file (following symlinks inside the image)."""
        ref = self._resolve(path, True)
        st = self._stat_node(ref)
        if st.is_dir:
            raise IsADirectoryError_(f"{path}: is a directory")
        if not st.is_file:
            raise FileSystemError(f"{path}: not a regular file")
        cap = max_bytes if max_bytes is not None else self.limits.max_file_read
        if length is None:
            length = max(0, st.size - offset)
        if length > cap:
            raise LimitExceededError(f"{path}: {length} bytes is more than the {cap}-byte read limit")
        return self._read_node(ref, offset, length)

    def open_source(self, path: str):
        """A lazy ``ByteSource`` over a regular file (a kernel, a nested image): reads go through
        ``read`` in the ranges asked for, so a large file is never loaded whole."""
        from immutools.image.source import ByteSource

        ref = self._resolve(path, True)
        st = self._stat_node(ref)
        if not st.is_file:
            raise FileSystemError(f"{path}: not a regular file")
        fs = self

        class _FileInFs(ByteSource):
            def _read_at(self, offset: int, length: int) -> bytes:
                return fs._read_node(ref, offset, length)

        src = _FileInFs(st.size)
        src.name = path
        return src

    def read_text(self, path: str, max_bytes: int | None = None) -> str:
        return self.read(path, max_bytes=max_bytes).decode("utf-8", errors="replace")

    def xattrs(self, path: str, follow: bool = False) -> dict[str, bytes]:
        return self._xattrs_node(self._resolve(path, follow))

    def walk(self, path: str = "/", max_depth: int | None = None) -> Iterator[WalkEntry]:
        """Depth-first walk (not following symlinks), yielding every entry below ``path``.

        Bounded by ``limits.max_walk_depth`` and ``limits.max_walk_entries``; a directory seen twice
        (by inode, a loop in a damaged image) is not descended again.
        """
        depth_cap = self.limits.max_walk_depth if max_depth is None else max_depth
        root_ref = self._resolve(path, True)
        base = "/" + path.strip("/") if path.strip("/") else ""
        seen: set = set()
        count = 0
        stack: list[tuple[str, Any, int]] = [(base, root_ref, 0)]
        while stack:
            dpath, dref, depth = stack.pop()
            key = self._node_key(dref)
            if key is not None:
                if key in seen:
                    self.warnings.append(f"{dpath or '/'}: directory loop, not descended")
                    continue
                seen.add(key)
            children = sorted(self._list_node(dref), key=lambda t: t[0], reverse=True)
            subdirs = []
            for name, child in reversed(children):
                if "/" in name or name in ("", ".", ".."):
                    self.warnings.append(f"{dpath}/{name!r}: invalid name in directory, skipped")
                    continue
                cst = self._stat_node(child)
                cpath = f"{dpath}/{name}"
                link = None
                if cst.is_symlink:
                    try:
                        link = self._readlink_node(child)
                    except Exception as exc:  # noqa: BLE001 - damaged link, keep walking
                        self.warnings.append(f"{cpath}: unreadable symlink ({exc})")
                count += 1
                if count > self.limits.max_walk_entries:
                    raise LimitExceededError(f"walk of {path}: more than {self.limits.max_walk_entries} entries")
                yield WalkEntry(cpath, cst, link)
                if cst.is_dir:
                    if depth + 1 > depth_cap:
                        self.warnings.append(f"{cpath}: deeper than {depth_cap} levels, not descended")
                    else:
                        subdirs.append((cpath, child, depth + 1))
            stack.extend(reversed(subdirs))

    # ---- whole-tree metadata (the fast paths) -------------------------------------------------
    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()) -> "EntryTable":
        """Metadata of every entry below ``path`` as columns (``immutools.fs.table.EntryTable``),
        without reading file contents or link targets; directories in ``exclude`` (absolute
        paths inside this filesystem) are listed but not descended.

        This generic version walks the per-entry primitives; backends that can decode inode
        tables and directory blocks in bulk override it. Bounded like ``walk``."""
        from immutools.fs.table import EntryTable

        depth_cap = self.limits.max_walk_depth
        excluded = {"/" + p.strip("/") if p.strip("/") else "/" for p in exclude}
        start = self._resolve(path, True)
        base = "/" + path.strip("/") if path.strip("/") else "/"
        parent: list[int] = []
        names: list[str] = []
        stats: list[Stat] = []
        seen: set = set()
        stack: list[tuple[int, str, Any, int]] = [(-1, base, start, 0)]
        while stack:
            row, dpath, dref, depth = stack.pop()
            key = self._node_key(dref)
            if key is not None:
                if key in seen:
                    self.warnings.append(f"{dpath}: directory loop, not descended")
                    continue
                seen.add(key)
            subdirs = []
            for name, child in self._list_node(dref):
                if "/" in name or name in ("", ".", ".."):
                    self.warnings.append(f"{dpath}/{name!r}: invalid name in directory, skipped")
                    continue
                st = self._stat_node(child)
                parent.append(row)
                names.append(name)
                stats.append(st)
                if len(names) > self.limits.max_walk_entries:
                    raise LimitExceededError(f"walk of {path}: more than {self.limits.max_walk_entries} entries")
                if st.is_dir:
                    cpath = f"{dpath.rstrip('/')}/{name}"
                    if cpath in excluded:
                        continue
                    if depth + 1 > depth_cap:
                        self.warnings.append(f"{cpath}: deeper than {depth_cap} levels, not descended")
                    else:
                        subdirs.append((len(names) - 1, cpath, child, depth + 1))
            stack.extend(reversed(subdirs))
        return EntryTable.from_rows(base, parent, names, stats)

    def find_special(self, path: str = "/", exclude: tuple[str, ...] = (), bits: int | None = None) -> list[tuple[str, Stat]]:
        """Regular files below ``path`` whose mode has any of ``bits`` (default: setuid and setgid),
        as (path, Stat), sorted by path; ``exclude`` as in ``walk_table``.

        The answer of a full walk. Backends that can read mode bits straight from their inode
        tables override this: look at the modes first, resolve names only for the hits."""
        from immutools.fs.table import SPECIAL_BITS

        table = self.walk_table(path, exclude)
        rows = table.rows_with_bits(SPECIAL_BITS if bits is None else bits)
        return sorted((table.path(int(i)), table.stat(int(i))) for i in rows)

    def close(self) -> None:
        pass
