"""Shared machinery of the bulk metadata walks (squashfs, EROFS, btrfs ``walk_table``).

A backend decodes a whole directory *level* at a time: the entries of every directory in the
frontier, their inodes gathered with numpy from bulk-read metadata. ``breadth_first_table`` drives
the levels (depth cap, entry cap, ``exclude``, loop detection by directory key) and assembles the
``EntryTable``; the backend only supplies ``expand(frontier) -> Level``. Breadth-first order puts
every directory's row before its children's, as ``EntryTable`` promises.

numpy is imported here, so backends import this module lazily (inside ``walk_table``), which keeps
``immutools scan``'s import cost unchanged for code paths that never walk a whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from immutools.errors import LimitExceededError
from immutools.fs.table import EntryTable

_COLUMNS = ("mode", "uid", "gid", "size", "inode", "nlink")
_DTYPES = {"mode": np.uint32, "uid": np.uint32, "gid": np.uint32, "size": np.uint64, "inode": np.uint64,
           "nlink": np.uint32}


@dataclass
class Frontier:
    """One directory to expand: its row in the table (-1 for the walk's base), its path, the
    backend's handle on it."""

    row: int
    path: str
    handle: Any


@dataclass
class Level:
    """Entries of the directories of one frontier.

    ``slot[i]`` is the index in the frontier of the directory holding entry ``i``; ``dirs`` lists
    (entry index, handle, key) of the entries that are directories the backend can descend into
    (``key`` detects loops: a directory seen twice is not descended again)."""

    slot: np.ndarray
    names: list[str]
    mode: np.ndarray
    uid: np.ndarray
    gid: np.ndarray
    size: np.ndarray
    inode: np.ndarray
    nlink: np.ndarray
    dirs: list[tuple[int, Any, Any]] = field(default_factory=list)

    @classmethod
    def empty(cls) -> "Level":
        return cls(np.zeros(0, np.int64), [], *(np.zeros(0, _DTYPES[c]) for c in _COLUMNS))

    def __len__(self) -> int:
        return len(self.names)


def gather_le(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Little-endian unsigned integers of ``width`` bytes (1, 2, 4, 8) at byte positions ``pos`` of
    the uint8 array ``buf``. The caller keeps ``pos + width <= len(buf)`` (pad the buffer)."""
    if width == 1:
        return buf[pos].astype(np.uint8)
    idx = pos[:, None] + np.arange(width, dtype=np.int64)
    return np.ascontiguousarray(buf[idx]).view(f"<u{width}").reshape(-1)


PAD = 128


def padded(data: bytes | bytearray, pad: int = PAD) -> np.ndarray:
    """``data`` as a uint8 array with ``pad`` zero bytes after it, so fixed-width gathers near the
    end never index past it (callers still check the real length)."""
    arr = np.zeros(len(data) + pad, dtype=np.uint8)
    arr[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return arr


def joined_padded(pieces: list[bytes], pad: int = PAD) -> tuple[bytes, np.ndarray]:
    """``b"".join(pieces)`` and a uint8 view of it with ``pad`` zero bytes after: one copy."""
    blob = b"".join([*pieces, bytes(pad)])
    return blob, np.frombuffer(blob, dtype=np.uint8)


def read_ranges(source, ranges: list[tuple[int, int]], gap: int = 4096) -> list[bytes]:
    """The bytes of each (offset, length) range of ``source`` (short at its end); ranges at most
    ``gap`` bytes apart are read with one call."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    out: list[bytes] = [b""] * len(ranges)
    k = 0
    while k < len(order):
        lo = ranges[order[k]][0]
        hi = lo + ranges[order[k]][1]
        j = k + 1
        while j < len(order) and ranges[order[j]][0] <= hi + gap:
            hi = max(hi, ranges[order[j]][0] + ranges[order[j]][1])
            j += 1
        data = source.read_at(lo, hi - lo)
        for i in order[k:j]:
            offset, length = ranges[i]
            out[i] = data[offset - lo: offset - lo + length]
        k = j
    return out


def normalize_paths(paths: Sequence[str]) -> set[str]:
    return {"/" + p.strip("/") if p.strip("/") else "/" for p in paths}


def breadth_first_table(fs, path: str, exclude: Sequence[str], root_handle: Any, root_key: Any,
                        expand: Callable[[list[Frontier]], Level]) -> EntryTable:
    """Assemble the ``EntryTable`` of everything below ``root_handle`` (the directory at ``path``),
    one level at a time; bounded by ``fs.limits`` like ``FileSystem.walk_table``."""
    limits = fs.limits
    excluded = normalize_paths(exclude)
    base = "/" + path.strip("/") if path.strip("/") else "/"
    levels: list[tuple[np.ndarray, Level]] = []
    total = 0
    seen = {root_key}
    frontier = [Frontier(-1, base, root_handle)]
    depth = 0
    while frontier:
        level = expand(frontier)
        rows_of_frontier = np.fromiter((f.row for f in frontier), dtype=np.int64, count=len(frontier))
        parent = rows_of_frontier[level.slot] if len(level) else np.zeros(0, np.int64)
        first_row = total
        total += len(level)
        if total > limits.max_walk_entries:
            raise LimitExceededError(f"walk of {path}: more than {limits.max_walk_entries} entries")
        levels.append((parent, level))
        depth += 1
        next_frontier = []
        for index, handle, key in level.dirs:
            slot = int(level.slot[index])
            cpath = f"{frontier[slot].path.rstrip('/')}/{level.names[index]}"
            if cpath in excluded:
                continue
            if key in seen:
                fs.warnings.append(f"{cpath}: directory loop, not descended")
                continue
            seen.add(key)
            if depth > limits.max_walk_depth:
                fs.warnings.append(f"{cpath}: deeper than {limits.max_walk_depth} levels, not descended")
                continue
            next_frontier.append(Frontier(first_row + index, cpath, handle))
        frontier = next_frontier
    names: list[str] = []
    for _parent, level in levels:
        names.extend(level.names)
    columns = {c: np.concatenate([getattr(lv, c) for _p, lv in levels]).astype(_DTYPES[c], copy=False)
               for c in _COLUMNS}
    parent = np.concatenate([p for p, _lv in levels]).astype(np.int64, copy=False)
    return EntryTable(base=base, parent=parent, names=names, warnings=[], **columns)


def empty_table(path: str) -> EntryTable:
    """The table of a walk that starts at something other than a directory."""
    base = "/" + path.strip("/") if path.strip("/") else "/"
    empty = Level.empty()
    return EntryTable(base=base, parent=empty.slot, names=[], mode=empty.mode, uid=empty.uid, gid=empty.gid,
                      size=empty.size, inode=empty.inode, nlink=empty.nlink)
