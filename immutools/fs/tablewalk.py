"""The breadth-first engine behind the bulk ``walk_table`` / ``find_special`` of inode-table
filesystems (ext2/3/4, XFS).

A backend answers one question per tree level: *the entries of these directories* (``Level``:
numpy columns, names decoded only on request). This module turns the levels into an
``EntryTable`` with the semantics of the generic walk in ``fs/base.py``: directories in
``exclude`` are listed but not descended, a directory seen twice (a loop in a damaged image) is
not descended again, the depth and entry bounds of ``Limits`` hold, invalid names are skipped with
a warning.

Going level by level (rather than depth first, entry by entry) is what lets a backend read the
directory blocks of a whole level in one sorted pass and decode them with numpy. From a
filesystem's root, and for ``find_special``, every directory is read in one pass instead
(``BulkTables.all_entries``) and the levels are answered from that index; ``find_special`` keeps
only the entries naming a directory or a hit, so only those names are ever decoded.

``BulkTables`` (inode columns, bounded warnings, the two queries) and ``read_batches`` (sorted,
merged, batched reads) are what a backend builds on; squashfs/EROFS/btrfs could use them too.
"""

from __future__ import annotations

import stat as stat_mod
from dataclasses import dataclass
from typing import Callable

import numpy as np

from immutools.errors import LimitExceededError
from immutools.fs.table import SPECIAL_BITS, EntryTable
from immutools.limits import Limits

S_IFMT = 0o170000
READ_CHUNK = 16 << 20         # bytes per read of inode tables / directory blocks
MERGE_GAP = 16 << 10          # read across gaps up to this size rather than issuing another read
MAX_WARNINGS = 50             # per filesystem; then one line saying more were not listed
MAX_MISSING_INODES = 4096     # inodes outside the tables read one by one, per level


def read_batches(source, offsets: np.ndarray, item_len: int, warn: Callable[[str], None] | None = None,
                 gap: int = MERGE_GAP, chunk: int = READ_CHUNK):
    """Read many equal-sized items at byte ``offsets`` (sorted ascending): nearby items share one
    read (across gaps up to ``gap``), reads are joined into buffers of about ``chunk`` bytes.
    Yields (buffer, item indices, item offsets in the buffer); items past the end of the source
    are left out (and warned)."""
    n = len(offsets)
    if n == 0:
        return
    offsets = np.asarray(offsets, np.int64)
    ends = offsets + item_len
    run_end = np.maximum.accumulate(ends)
    brk = np.ones(n, bool)
    brk[1:] = offsets[1:] > run_end[:-1] + gap
    # a run also ends where it would grow past a chunk
    group = np.cumsum(brk) - 1
    piece = (offsets - offsets[brk][group]) // chunk
    brk[1:] |= piece[1:] != piece[:-1]
    first = np.flatnonzero(brk)
    last = np.append(first[1:], n)
    run_start = offsets[first]
    run_len = np.maximum.reduceat(ends, first) - run_start
    count = last - first
    batch = (np.cumsum(run_len) - run_len) // chunk
    cuts = np.flatnonzero(np.diff(batch)) + 1
    for r0, r1 in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(first)]]).tolist()):
        starts = run_start[r0:r1].tolist()
        lens = run_len[r0:r1].tolist()
        pieces = [source.read_at(s, ln) for s, ln in zip(starts, lens)]
        got = np.fromiter((len(p) for p in pieces), np.int64, count=len(pieces))
        base = np.cumsum(got) - got
        items = np.arange(first[r0], last[r1 - 1])
        run_of = np.repeat(np.arange(r1 - r0), count[r0:r1])
        rel = offsets[items] - run_start[r0:r1][run_of]
        ok = rel + item_len <= got[run_of]
        if not ok.all():
            if warn is not None:
                warn(f"data at byte {int(offsets[items[~ok][0]])} lies beyond the end of the image")
            items, rel, run_of = items[ok], rel[ok], run_of[ok]
        if len(items):
            yield (pieces[0] if len(pieces) == 1 else b"".join(pieces)), items, rel + base[run_of]


@dataclass
class Level:
    """The entries of one batch of directories, grouped by directory in listing order.

    ``owner[i]`` is the index (into the directories asked for) of the directory holding entry
    ``i``; ``key`` is the child's inode number; the other columns are the child's metadata.
    ``name_blob`` holds the raw names separated by ``/`` (a byte no valid name contains) at
    ``name_start``/``name_len``: names become ``str`` only for the entries a caller needs."""

    owner: np.ndarray       # int64
    key: np.ndarray         # int64 inode numbers
    mode: np.ndarray        # uint32
    uid: np.ndarray         # uint32
    gid: np.ndarray         # uint32
    size: np.ndarray        # uint64
    nlink: np.ndarray       # uint32
    name_blob: bytes
    name_start: np.ndarray  # int64 offsets into name_blob
    name_len: np.ndarray    # int64

    def __len__(self) -> int:
        return len(self.key)

    def names(self, rows: np.ndarray | None = None) -> list[str]:
        """Decoded names of ``rows`` (all when None), UTF-8 with surrogate escapes like the
        per-entry readers."""
        if rows is None:
            if not len(self.key):
                return []
            if self._contiguous():
                return self.name_blob.decode("utf-8", "surrogateescape").split("/")
            rows = np.arange(len(self.key))
        if not len(rows):
            return []
        blob = gather_names(self.name_blob, self.name_start[rows], self.name_len[rows])
        return blob.decode("utf-8", "surrogateescape").split("/")

    def _contiguous(self) -> bool:
        """True when name_blob is exactly the names in row order, '/'-separated."""
        n = len(self.key)
        return (len(self.name_blob) == int(self.name_len.sum()) + n - 1
                and n > 0 and int(self.name_start[0]) == 0)


def empty_level() -> Level:
    z64 = np.zeros(0, np.int64)
    z32 = np.zeros(0, np.uint32)
    return Level(z64, z64, z32, z32, z32, np.zeros(0, np.uint64), z32, b"", z64, z64)


def concat_levels(parts: list[Level]) -> Level:
    """One ``Level`` from several (names re-based into one blob)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_level()
    if len(parts) == 1:
        return parts[0]
    blobs, starts, base = [], [], 0
    for p in parts:
        blobs.append(p.name_blob)
        starts.append(p.name_start + base)
        base += len(p.name_blob) + 1
    return Level(
        owner=np.concatenate([p.owner for p in parts]), key=np.concatenate([p.key for p in parts]),
        mode=np.concatenate([p.mode for p in parts]), uid=np.concatenate([p.uid for p in parts]),
        gid=np.concatenate([p.gid for p in parts]), size=np.concatenate([p.size for p in parts]),
        nlink=np.concatenate([p.nlink for p in parts]), name_blob=b"/".join(blobs),
        name_start=np.concatenate(starts), name_len=np.concatenate([p.name_len for p in parts]),
    )


def gather_names(buf: bytes, start: np.ndarray, length: np.ndarray) -> bytes:
    """The byte ranges ``buf[start:start+length]`` joined with ``/``. (Slicing in a list
    comprehension beats a numpy gather here: names are short and the join is one C call.)"""
    return b"/".join([buf[s: s + n] for s, n in zip(start.tolist(), length.tolist())])


def names_valid(blob: bytes, name_start: np.ndarray, name_len: np.ndarray) -> np.ndarray:
    """Mask of names that are neither empty nor contain '/' (the walk skips those with a warning)."""
    ok = name_len > 0
    arr = np.frombuffer(blob, np.uint8)
    slash = np.flatnonzero(arr == ord("/"))
    if len(slash) and len(name_start):
        starts = name_start.astype(np.int64)
        first = np.searchsorted(slash, starts, side="left")
        inside = first < len(slash)
        inside[inside] = slash[first[inside]] < starts[inside] + name_len.astype(np.int64)[inside]
        ok &= ~inside
    return ok


ExpandFn = Callable[[np.ndarray], Level]


def walk_levels(
    expand: ExpandFn,
    *,
    base: str,
    start_key: int,
    exclude: tuple[str, ...],
    limits: Limits,
    warn: Callable[[str], None],
    special_bits: int | None = None,
) -> tuple[EntryTable, np.ndarray]:
    """Walk breadth first from the directory ``start_key`` (whose path is ``base``).

    Returns the table and the rows of interest: with ``special_bits`` None every row (names all
    decoded); otherwise only regular files whose mode has any of ``special_bits``, and only their
    names and their directories' names are decoded (the other names are left empty: such a table
    is for building the paths of those rows only)."""
    depth_cap = limits.max_walk_depth
    base = "/" + base.strip("/") if base.strip("/") else "/"
    excluded = set()
    for p in exclude:
        norm = "/" + p.strip("/") if p.strip("/") else "/"
        rel = norm[len(base):] if base != "/" and (norm + "/").startswith(base + "/") else norm if base == "/" else None
        if rel is None:
            continue
        comps = tuple(c for c in rel.split("/") if c)
        if comps:
            excluded.add(comps)
    prefixes: dict[tuple[str, ...], int] = {(): -1}       # component tuples -> row (ancestors of excluded)
    wanted_prefixes = {e[:i] for e in excluded for i in range(1, len(e) + 1)}

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("parent", "mode", "uid", "gid", "size", "key", "nlink")}
    names: list[str] = []
    hits: list[np.ndarray] = []
    seen: set[int] = {int(start_key)}
    frontier_keys = np.asarray([start_key], np.int64)
    frontier_rows = np.asarray([-1], np.int64)
    frontier_paths: list[tuple[str, ...]] | None = [()]   # component tuples, only while excluded prefixes need them
    total = 0
    depth = 0
    while frontier_keys.size:
        level = expand(frontier_keys)
        n = len(level)
        if n == 0:
            break
        ok = names_valid(level.name_blob, level.name_start, level.name_len)
        if not ok.all():
            for i in np.flatnonzero(~ok)[:20]:
                raw = level.name_blob[int(level.name_start[i]): int(level.name_start[i] + level.name_len[i])]
                warn(f"{raw!r}: invalid name in directory inode {int(frontier_keys[level.owner[i]])}, skipped")
            keep = np.flatnonzero(ok)
            level = _take(level, keep)
            n = len(level)
        if total + n > limits.max_walk_entries:
            raise LimitExceededError(f"walk of {base}: more than {limits.max_walk_entries} entries")
        rows = np.arange(total, total + n, dtype=np.int64)
        parent = frontier_rows[level.owner]
        ftype = level.mode & np.uint32(S_IFMT)
        is_dir = ftype == np.uint32(stat_mod.S_IFDIR)

        if special_bits is None:
            level_names = level.names()
            hit_rows = rows
        else:
            hit = (ftype == np.uint32(stat_mod.S_IFREG)) & ((level.mode & np.uint32(special_bits)) != 0)
            need = np.flatnonzero(is_dir | hit)
            level_names = [""] * n
            for i, name in zip(need.tolist(), level.names(need)):
                level_names[i] = name
            hit_rows = rows[hit]
        names.extend(level_names)
        for key, arr in (("parent", parent), ("mode", level.mode), ("uid", level.uid), ("gid", level.gid),
                         ("size", level.size), ("key", level.key), ("nlink", level.nlink)):
            cols[key].append(arr)
        hits.append(hit_rows)

        # Which directories go on to the next level.
        descend = is_dir.copy()
        next_paths: dict[int, tuple[str, ...]] = {}
        if excluded and frontier_paths is not None:
            for i in np.flatnonzero(is_dir).tolist():
                comps = frontier_paths[int(level.owner[i])] + (level_names[i],)
                if comps in excluded:
                    descend[i] = False
                elif comps in wanted_prefixes:
                    prefixes[comps] = int(rows[i])
                next_paths[i] = comps
        if depth + 1 > depth_cap:
            for i in np.flatnonzero(descend)[:20].tolist():
                warn(f"{_row_path(base, names, cols, int(rows[i]))}: deeper than {depth_cap} levels, not descended")
            descend[:] = False
        idx = np.flatnonzero(descend)
        keys = level.key[idx]
        fresh = np.ones(len(idx), bool)
        loops = 0
        for j, k in enumerate(keys.tolist()):
            if k in seen:
                fresh[j] = False
                loops += 1
                if loops <= 20:
                    warn(f"{_row_path(base, names, cols, int(rows[idx[j]]))}: directory loop, not descended")
            else:
                seen.add(k)
        idx = idx[fresh]
        frontier_keys = level.key[idx].astype(np.int64)
        frontier_rows = rows[idx]
        if excluded and frontier_paths is not None:
            frontier_paths = [next_paths[i] for i in idx.tolist()]
            if not any(len(e) > depth + 1 for e in excluded):
                frontier_paths = None
        else:
            frontier_paths = None
        total += n
        depth += 1

    def cat(key, dtype):
        return np.concatenate(cols[key]).astype(dtype, copy=False) if cols[key] else np.zeros(0, dtype)

    table = EntryTable(
        base=base, parent=cat("parent", np.int64), names=names, mode=cat("mode", np.uint32),
        uid=cat("uid", np.uint32), gid=cat("gid", np.uint32), size=cat("size", np.uint64),
        inode=cat("key", np.uint64), nlink=cat("nlink", np.uint32),
    )
    return table, (np.concatenate(hits) if hits else np.zeros(0, np.int64))


def _take(level: Level, idx: np.ndarray) -> Level:
    return Level(level.owner[idx], level.key[idx], level.mode[idx], level.uid[idx], level.gid[idx], level.size[idx],
                 level.nlink[idx], level.name_blob, level.name_start[idx], level.name_len[idx])


def _row_path(base: str, names: list[str], cols: dict, row: int) -> str:
    """The path of ``row`` while the table is still being built (for warnings)."""
    parent = np.concatenate(cols["parent"]) if cols["parent"] else np.zeros(0, np.int64)
    parts = []
    while 0 <= row < len(parent) and len(parts) < 4096:
        parts.append(names[row] or "?")
        row = int(parent[row])
    rel = "/".join(reversed(parts))
    return f"{base.rstrip('/')}/{rel}"


def special_from_table(table: EntryTable, rows: np.ndarray, bits: int | None) -> list:
    """(path, Stat) of ``rows`` whose mode has any of ``bits``, sorted by path."""
    bits = SPECIAL_BITS if bits is None else bits
    rows = [int(r) for r in rows if int(table.mode[r]) & bits
            and stat_mod.S_ISREG(int(table.mode[r]))]
    return sorted((table.path(r), table.stat(r)) for r in rows)


class BulkTables:
    """What the bulk readers share: the inode columns (sorted inode numbers and their metadata),
    bounded warnings into the filesystem's list, and the two queries over ``walk_levels``.

    Subclasses implement ``_load`` (fill the columns with ``_set_columns`` or directly),
    ``expand`` (one tree level, see ``Level``) and ``_read_missing`` (inodes a directory names
    that the tables did not hold)."""

    ino: np.ndarray
    mode: np.ndarray
    uid: np.ndarray
    gid: np.ndarray
    size: np.ndarray
    nlink: np.ndarray

    def __init__(self, fs):
        self.fs = fs
        self.source = fs.source
        self.warnings = fs.warnings
        self._warned = 0
        self._loaded = False

    def warn(self, text: str) -> None:
        self._warned += 1
        if self._warned <= MAX_WARNINGS:
            self.warnings.append(f"{self.fs.fstype}: {text}")
        elif self._warned == MAX_WARNINGS + 1:
            self.warnings.append(f"{self.fs.fstype}: more damage not listed")

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:
        raise NotImplementedError

    def expand(self, dir_keys: np.ndarray) -> Level:
        raise NotImplementedError

    def _read_missing(self, missing: np.ndarray) -> None:
        raise NotImplementedError

    def positions(self, inos: np.ndarray) -> np.ndarray:
        """Column positions of ``inos`` (-1 where not loaded)."""
        if not len(self.ino):
            return np.full(len(inos), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ino, inos), len(self.ino) - 1)
        return np.where(self.ino[pos] == inos, pos, -1)

    def ensure(self, inos: np.ndarray) -> np.ndarray:
        """Positions of ``inos``, reading the missing ones one by one (damage: bounded);
        -1 for inodes that cannot be read."""
        pos = self.positions(inos)
        missing = np.unique(inos[pos < 0])
        if not len(missing):
            return pos
        if len(missing) > MAX_MISSING_INODES:
            self.warn(f"{len(missing) - MAX_MISSING_INODES} more directory entries point to inodes outside the inode tables; skipped")
            missing = missing[:MAX_MISSING_INODES]
        self._read_missing(missing)
        return self.positions(inos)

    def with_children(self, level: Level) -> Level:
        """Fill a level's metadata columns from the inode columns; entries whose inode cannot be
        read are dropped (warned in ``ensure``)."""
        if not len(level):
            return level
        pos = self.ensure(level.key)
        ok = pos >= 0
        if not ok.all():
            idx = np.flatnonzero(ok)
            level = Level(level.owner[idx], level.key[idx], level.mode, level.uid, level.gid, level.size, level.nlink,
                          level.name_blob, level.name_start[idx], level.name_len[idx])
            pos = pos[idx]
        level.mode = self.mode[pos]
        level.uid = self.uid[pos]
        level.gid = self.gid[pos]
        level.size = self.size[pos]
        level.nlink = self.nlink[pos]
        return level

    def walk_table(self, path: str, start: int, exclude: tuple[str, ...]) -> EntryTable:
        self.load()
        first = len(self.warnings)
        # From the root every directory is read anyway: one pass over all of them (fewer,
        # larger reads, one lock-step chain walk) beats a pass per tree level.
        expand = self._index_expand(self.all_entries()) if start == self.root_key() else self.expand
        table, _rows = walk_levels(expand, base=path, start_key=start, exclude=exclude,
                                   limits=self.fs.limits, warn=self.warn)
        table.warnings = self.warnings[first:]
        return table

    def find_special(self, path: str, start: int, exclude: tuple[str, ...], bits: int) -> list:
        """Modes first: without an in-use inode that has the bits nothing else is read. Else one
        pass over all directory blocks keeps only the entries naming a directory or a hit (their
        names alone are decoded), and the breadth-first walk runs over that small index: paths,
        exclusions, loops and depth exactly as a full walk would see them."""
        self.load()
        ftype = self.mode & np.uint32(S_IFMT)
        hit = (ftype == stat_mod.S_IFREG) & ((self.mode & np.uint32(bits)) != 0)
        if not np.any(hit):
            return []
        wanted = hit | (ftype == stat_mod.S_IFDIR)

        def keep(inos: np.ndarray) -> np.ndarray:
            pos = self.positions(inos)
            return (pos < 0) | wanted[np.maximum(pos, 0)]     # unknown inodes: let ``ensure`` judge

        index = self.all_entries(keep)
        table, rows = walk_levels(self._index_expand(index), base=path, start_key=start, exclude=exclude,
                                  limits=self.fs.limits, warn=self.warn, special_bits=bits)
        return special_from_table(table, rows, bits)

    # ---- one pass over every directory -------------------------------------------------------------
    _keep_child: Callable[[np.ndarray], np.ndarray] | None = None

    def root_key(self) -> int:
        raise NotImplementedError

    def keep_mask(self, inos: np.ndarray) -> np.ndarray | None:
        """For backends while decoding entries: which to keep (None: all)."""
        return None if self._keep_child is None else self._keep_child(inos)

    def all_entries(self, keep: Callable[[np.ndarray], np.ndarray] | None = None) -> Level:
        """The entries of every in-use directory (``keep``: only entries whose child inode it
        accepts), ``owner`` being the directory's inode number, sorted by it."""
        dirs = self.ino[self.dir_pos]
        self._keep_child = keep
        try:
            level = self.expand(dirs)
        finally:
            self._keep_child = None
        order = np.argsort(level.owner, kind="stable")
        level = _take(level, order)
        level.owner = dirs[level.owner]
        return level

    @staticmethod
    def _index_expand(index: Level) -> ExpandFn:
        """An ``expand`` that answers from an ``all_entries`` index instead of reading."""
        owners = index.owner

        def expand(dir_keys: np.ndarray) -> Level:
            lo = np.searchsorted(owners, dir_keys, side="left")
            hi = np.searchsorted(owners, dir_keys, side="right")
            counts = hi - lo
            total = int(counts.sum())
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            idx = starts + np.arange(total)
            level = _take(index, idx)
            level.owner = np.repeat(np.arange(len(dir_keys)), counts)
            return level

        return expand
