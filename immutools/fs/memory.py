"""A filesystem held in memory, built from a mapping of paths: for testing the rules of the
system layer and the collectors (unit conditions, /etc eras, the surface inventory, detection)
without building a disk image, and for composing small synthetic trees in notebooks.

    fs = MemoryFileSystem({
        "/etc/os-release": "ID=flatcar\\nVERSION_ID=4593.2.0\\n",
        "/usr/bin/bash": File(b"\\x7fELF...", mode=0o755),
        "/bin": Symlink("usr/bin"),
        "/var/empty": Dir(mode=0o700),
    })

It behaves like every other backend (symlink resolution inside the tree, bounds, ``walk``,
``walk_table``): it implements the same primitives as the disk readers. Parent directories are
created as needed (mode 0755, root-owned).
"""

from __future__ import annotations

import stat as stat_mod
from dataclasses import dataclass, field
from typing import Iterator

from immutools.errors import FileSystemError
from immutools.fs.base import FileSystem, Stat
from immutools.limits import DEFAULT_LIMITS, Limits


@dataclass
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Inode:
    number: int
    stat: Stat
    data: bytes = b""
    target: str | None = None
    children: dict[str, "_Inode"] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


class MemoryFileSystem(FileSystem):
    fstype = "memory"

    def __init__(self, entries: dict[str, str | bytes | File | Symlink | Dir] | None = None,
                 limits: Limits = DEFAULT_LIMITS):
        super().__init__(limits)
        self._next = 1
        self._top = self._new_dir(Dir())
        for path, entry in (entries or {}).items():
            self.add(path, entry)

    # ---- building -------------------------------------------------------------------------------
    def _new_dir(self, spec: Dir) -> _Inode:
        node = _Inode(self._next, Stat(stat_mod.S_IFDIR | spec.mode, 0, spec.uid, spec.gid, nlink=2, inode=self._next),
                      children={}, xattrs=dict(spec.xattrs))
        self._next += 1
        return node

    def add(self, path: str, entry: str | bytes | File | Symlink | Dir) -> None:
        """Add (or replace) ``path``; parent directories are made as needed."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise FileSystemError("cannot replace the root directory")
        parent = self._top
        for name in parts[:-1]:
            child = parent.children.get(name)
            if child is None:
                child = parent.children[name] = self._new_dir(Dir())
            if child.children is None:
                raise FileSystemError(f"{path}: {name} is not a directory")
            parent = child
        if isinstance(entry, (str, bytes)):
            entry = File(entry.encode() if isinstance(entry, str) else entry)
        number = self._next
        if isinstance(entry, Dir):
            node = self._new_dir(entry)
        elif isinstance(entry, Symlink):
            node = _Inode(number, Stat(stat_mod.S_IFLNK | 0o777, len(entry.target), entry.uid, entry.gid, inode=number),
                          target=entry.target)
            self._next += 1
        else:
            node = _Inode(number, Stat(stat_mod.S_IFREG | entry.mode, len(entry.data), entry.uid, entry.gid, inode=number),
                          data=entry.data)
            self._next += 1
        parent.children[parts[-1]] = node

    # ---- primitives ------------------------------------------------------------------------------
    def _root(self) -> _Inode:
        return self._top

    def _stat_node(self, ref: _Inode) -> Stat:
        return ref.stat

    def _list_node(self, ref: _Inode) -> Iterator[tuple[str, _Inode]]:
        return iter(list((ref.children or {}).items()))

    def _lookup_child(self, ref: _Inode, name: str) -> _Inode | None:
        return (ref.children or {}).get(name)

    def _read_node(self, ref: _Inode, offset: int, length: int) -> bytes:
        return ref.data[offset:offset + length]

    def _readlink_node(self, ref: _Inode) -> str:
        if ref.target is None:
            raise FileSystemError("not a symbolic link")
        return ref.target

    def _xattrs_node(self, ref: _Inode) -> dict[str, bytes]:
        return dict(ref.xattrs)
