"""EROFS inodes and directory blocks decoded in bulk, for whole-tree metadata walks.

Part of our own EROFS reader (``erofs.py`` says why there is no library). The per-entry path builds
an ``_Inode`` and a ``Stat`` for every entry; here a whole directory level is decoded at once:

* each directory's blocks are read through the reader's own data path (inline tails, multi-block
  and compressed directories alike) and their ``erofs_dirent`` arrays (le64 nid, le16 nameoff,
  u8 file_type, u8 reserved; ``nameoff[0] / 12`` entries, names back to back after them, the last
  one ended by a NUL or the block end) are read as numpy records;
* the inodes of all entries of the level (at ``meta_blkaddr * block_size + nid * 32``) are
  gathered from their metadata blocks, read in merged runs, and decoded with numpy: compact 32-byte
  ``erofs_inode_compact`` and extended 64-byte ``erofs_inode_extended``, chosen per inode by bit 0
  of ``i_format`` (an extended inode may cross a block boundary; the next block is read with it).

Layouts: linux ``fs/erofs/erofs_fs.h`` (also erofs-utils ``include/erofs_fs.h``). Damage stays
local: a directory whose blocks do not parse, or an entry whose inode does not decode, is skipped
with a warning, as the per-entry path would refuse the same data.
"""

from __future__ import annotations

import stat as stat_mod
from typing import TYPE_CHECKING

import numpy as np

from immutools.errors import ImmutoolsError, LimitExceededError
from immutools.fs.bulk import Frontier, Level, breadth_first_table, empty_table, gather_le, joined_padded, read_ranges
from immutools.fs.table import EntryTable

if TYPE_CHECKING:
    from immutools.fs.erofs import ErofsFileSystem

DIRENT = np.dtype([("nid", "<u8"), ("nameoff", "<u2"), ("file_type", "u1"), ("reserved", "u1")])
I_ALL_BITS = 0x1F
I_VERSION_EXTENDED = 0x1
I_NLINK_1_BIT = 0x10
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
NULL_ADDR32 = 0xFFFFFFFF
MAX_WARNINGS_PER_LEVEL = 5
READ_GAP = 4096              # bytes: read through gaps this small between wanted inodes
READ_BATCH = 8 << 20         # bytes of inode runs gathered at a time
# erofs_inode_compact / erofs_inode_extended fields: name -> (offset, width)
INODE_FIELDS = {"format": (0, 2), "xattr_count": (2, 2), "mode": (4, 2), "nb": (6, 2), "size32": (8, 4),
                "size64": (8, 8), "i_u": (16, 4), "uid16": (24, 2), "gid16": (26, 2), "uid32": (24, 4),
                "gid32": (28, 4), "nlink32": (44, 4)}
# By S_IFMT >> 12: the valid file types, and those that carry no data.
_TYPE_OK = np.zeros(16, dtype=bool)
_TYPE_OK[[t >> 12 for t in (stat_mod.S_IFREG, stat_mod.S_IFDIR, stat_mod.S_IFLNK, stat_mod.S_IFCHR, stat_mod.S_IFBLK,
                            stat_mod.S_IFIFO, stat_mod.S_IFSOCK)]] = True
_TYPE_SPECIAL = np.zeros(16, dtype=bool)
_TYPE_SPECIAL[[t >> 12 for t in (stat_mod.S_IFCHR, stat_mod.S_IFBLK, stat_mod.S_IFIFO, stat_mod.S_IFSOCK)]] = True


class ErofsTables:
    def __init__(self, fs: "ErofsFileSystem"):
        self.fs = fs
        self.warnings = fs.warnings
        self.directory_bytes = 0     # read so far: all directories together stay within a bound

    # ---- inodes -------------------------------------------------------------------------------
    def _inode_fields(self, pos: np.ndarray, fields: dict[str, tuple[int, int]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The little-endian ``fields`` (name -> (offset, width)) of the inodes at ``pos``, and
        whether each inode's first 32 bytes exist in the image.

        Inodes are read in runs (inodes at most READ_GAP bytes apart share one read: the bytes they
        occupy and the small gaps, not whole blocks), and gathered a batch of runs at a time so
        memory stays near READ_BATCH whatever the level's size. Bytes past the image end read 0."""
        fs = self.fs
        size = fs.source.size
        out = {name: np.zeros(len(pos), dtype=f"<u{width}") for name, (_off, width) in fields.items()}
        present = (pos >= 0) & (pos + 32 <= size)
        order = np.argsort(pos, kind="stable")
        order = order[present[order]]
        if not len(order):
            return out, present
        spos = pos[order]
        breaks = np.flatnonzero(np.diff(spos) > READ_GAP + 64) + 1
        bounds = np.concatenate([[0], breaks, [len(spos)]])
        starts = spos[bounds[:-1]]
        ends = np.minimum(spos[bounds[1:] - 1] + 64, size)
        read = fs.source.read_at
        first_run, pieces, held = 0, [], 0
        for run, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist())):
            pieces.append(read(lo, hi - lo).ljust(hi - lo, b"\0"))
            held += hi - lo
            if held < READ_BATCH and run + 1 < len(starts):
                continue
            _blob, joined = joined_padded(pieces)
            a, b = int(bounds[first_run]), int(bounds[run + 1])
            run_at = np.concatenate([[0], np.cumsum(ends[first_run: run + 1] - starts[first_run: run + 1])[:-1]])
            run_of = np.repeat(np.arange(run + 1 - first_run), np.diff(bounds[first_run: run + 2]))
            local = run_at[run_of] + (spos[a:b] - starts[first_run + run_of])
            for name, (offset, width) in fields.items():
                out[name][order[a:b]] = gather_le(joined, local + offset, width)
            first_run, pieces, held = run + 1, [], 0
        return out, present

    def decode_inodes(self, nids: np.ndarray) -> dict[str, np.ndarray]:
        fs = self.fs
        size = fs.source.size
        pos = fs.meta_base + nids.astype(np.int64) * 32
        ok = (nids < (1 << 58)) & (pos >= 0)
        pos = np.where(ok, pos, 0)
        f, present = self._inode_fields(pos, INODE_FIELDS)
        ok &= present
        ifmt, icount, mode, i_nb = f["format"], f["xattr_count"], f["mode"].astype(np.uint32), f["nb"]
        extended = (ifmt & I_VERSION_EXTENDED) != 0
        # An extended inode's second half lies in the next block when it crosses one; the buffer
        # holds that block right after (both were wanted), unless the image ends first.
        ok &= ~extended | (pos + 64 <= size)
        ok &= (ifmt & np.uint16(0xFFFF & ~I_ALL_BITS)) == 0
        ok &= ((ifmt >> 1) & 7) <= CHUNK_BASED
        ifmt_type = mode & np.uint32(0o170000)
        ok &= _TYPE_OK[mode >> 12]
        c_size, e_size = f["size32"].astype(np.uint64), f["size64"]
        c_uid, c_gid = f["uid16"].astype(np.uint32), f["gid16"].astype(np.uint32)
        e_uid, e_gid, e_nlink = f["uid32"], f["gid32"], f["nlink32"]
        is_dir = ifmt_type == stat_mod.S_IFDIR
        c_nlink = np.where(~is_dir & ((ifmt & I_NLINK_1_BIT) != 0), 1, i_nb).astype(np.uint32)
        fsize = np.where(extended, e_size, c_size)
        # Device, fifo and socket inodes carry no data (the reader refuses a size there).
        ok &= ~(_TYPE_SPECIAL[mode >> 12] & (fsize != 0))
        xattr_isize = np.where(icount == 0, 0, 12 + 4 * (icount.astype(np.int64) - 1))
        ok &= pos + np.where(extended, 64, 32) + xattr_isize <= size
        return {
            "ok": ok,
            "mode": mode,
            "uid": np.where(extended, e_uid, c_uid).astype(np.uint32),
            "gid": np.where(extended, e_gid, c_gid).astype(np.uint32),
            "size": fsize.astype(np.uint64),
            "nlink": np.where(extended, e_nlink, c_nlink).astype(np.uint32),
            "inode": nids.astype(np.uint64),
            # where a directory's blocks are: data layout, i_u (startblk) and the end of the inode
            # and its xattrs (an inline tail follows there)
            "layout": ((ifmt >> 1) & 7).astype(np.int64),
            "startblk": f["i_u"].astype(np.int64),
            "meta_end": pos + np.where(extended, 64, 32) + xattr_isize,
        }

    # ---- directories --------------------------------------------------------------------------
    def _directory_contents(self, frontier: list[Frontier]) -> list[bytes | ImmutoolsError]:
        """Every frontier directory's contents (or the error reading it). FLAT_PLAIN and
        FLAT_INLINE (the usual layouts) are read here, the byte ranges of all directories merged
        into few reads; anything else through the reader's own data path."""
        fs = self.fs
        bs = fs.block_size
        # (offset, length, directory index, part) of each range to read; a FLAT_INLINE directory
        # has its full blocks at startblk and its tail after the inode and its xattrs.
        ranges: list[tuple[int, int, int, int]] = []
        slow: set[int] = set()
        sizes = []
        for k, item in enumerate(frontier):
            _nid, layout, size, startblk, meta_end = item.handle
            if size > fs.limits.max_file_read:
                raise LimitExceededError(f"erofs: {item.path}: directory of {size} bytes")
            self.directory_bytes += size
            if self.directory_bytes > fs.limits.max_nested_bytes:
                raise LimitExceededError(f"erofs: directories hold more than {fs.limits.max_nested_bytes} bytes")
            sizes.append(size)
            if layout == FLAT_INLINE and size:
                body = (size + bs - 1) // bs * bs - bs
                tail = size - body
                if meta_end % bs + tail > bs:  # damaged: let the reader say so
                    slow.add(k)
                    continue
                if body:
                    ranges.append((startblk * bs, body, k, 0))
                ranges.append((meta_end, tail, k, 1))
            elif layout == FLAT_PLAIN and size and startblk != NULL_ADDR32:
                ranges.append((startblk * bs, size, k, 0))
            elif size:
                slow.add(k)
        parts: dict[tuple[int, int], bytes] = {}
        for (offset, length, k, part), data in zip(ranges, read_ranges(fs.source, [(o, n) for o, n, _k, _p in ranges])):
            parts[(k, part)] = data
        out: list[bytes | ImmutoolsError] = []
        for k, item in enumerate(frontier):
            data = parts.get((k, 0), b"") + parts.get((k, 1), b"")
            if k in slow or len(data) != sizes[k]:
                try:
                    nid = item.handle[0]
                    data = fs._read_data(fs._inode(nid), 0, sizes[k])
                except LimitExceededError:
                    raise
                except ImmutoolsError as exc:
                    data = exc
            out.append(data)
        return out

    def _listings(self, frontier: list[Frontier]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """Names, nids and frontier slots of the entries of every directory in ``frontier``
        (without "." and ".."), their dirent blocks decoded together."""
        fs = self.fs
        bs = fs.block_size
        chunks: list[bytes] = []
        chunk_slot: list[int] = []
        for slot, (item, data) in enumerate(zip(frontier, self._directory_contents(frontier))):
            if isinstance(data, ImmutoolsError):
                self.warnings.append(f"erofs: {item.path}: directory unreadable ({data}); skipped")
                continue
            for start in range(0, len(data), bs):
                chunks.append(data[start: start + bs])
                chunk_slot.append(slot)
        if not chunks:
            return [], np.zeros(0, np.uint64), np.zeros(0, np.int64)
        blob, buf = joined_padded(chunks)
        lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        block_slot = np.asarray(chunk_slot, dtype=np.int64)
        first = gather_le(buf, starts + 8, 2).astype(np.int64)
        bad_block = (lengths < 12) | (first < 12) | (first >= lengths) | (first % 12 != 0)
        counts = np.where(bad_block, 0, first // 12)
        total = int(counts.sum())
        block_of = np.repeat(np.arange(len(chunks)), counts)
        index_in_block = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        dpos = starts[block_of] + 12 * index_in_block
        nids = gather_le(buf, dpos, 8)
        name_start = starts[block_of] + gather_le(buf, dpos + 8, 2).astype(np.int64)
        name_end = np.empty_like(name_start)
        name_end[:-1] = name_start[1:]
        # The last name of a block ends at a NUL or at the block's end.
        last = np.cumsum(counts)[counts > 0] - 1
        block_end = starts + lengths
        for i in last.tolist():
            b = int(block_of[i])
            nul = blob.find(b"\0", int(name_start[i]), int(block_end[b]))
            name_end[i] = nul if nul >= 0 else block_end[b]
        name_len = name_end - name_start
        bad_entry = (name_len < 1) | (name_len > 255) | (name_end > block_end[block_of])
        heads = np.cumsum(counts)[counts > 0] - counts[counts > 0]
        bad_entry[heads] |= name_start[heads] - starts[block_of[heads]] != first[block_of[heads]]
        if bad_entry.any():
            bad_block[block_of[bad_entry]] = True
        bad_slots = set(block_slot[bad_block].tolist())
        for slot in sorted(bad_slots)[:MAX_WARNINGS_PER_LEVEL]:
            self.warnings.append(f"erofs: {frontier[slot].path}: directory block does not parse; directory skipped")
        if len(bad_slots) > MAX_WARNINGS_PER_LEVEL:
            self.warnings.append(f"erofs: {len(bad_slots) - MAX_WARNINGS_PER_LEVEL} more damaged directories skipped")
        entry_slot = block_slot[block_of]
        keep = np.ones(total, dtype=bool)
        if bad_slots:
            keep &= ~np.isin(entry_slot, np.fromiter(bad_slots, dtype=np.int64))
        # "." and "..": sorted like any name, so look at the one- and two-byte names only.
        for i in np.flatnonzero(keep & (name_len <= 2)).tolist():
            if blob[int(name_start[i]): int(name_end[i])] in (b".", b".."):
                keep[i] = False
        sel = np.flatnonzero(keep)
        names = [blob[a:b] for a, b in zip(name_start[sel].tolist(), name_end[sel].tolist())]
        return names, nids[sel], entry_slot[sel]

    def expand(self, frontier: list[Frontier]) -> Level:
        names_raw, nids, slots = self._listings(frontier)
        if len(names_raw) > self.fs.limits.max_walk_entries:
            raise LimitExceededError(f"erofs walk: more than {self.fs.limits.max_walk_entries} entries")
        if not names_raw:
            return Level.empty()
        names = [n.decode("utf-8", "surrogateescape") for n in names_raw]
        ino = self.decode_inodes(nids)
        good = ino["ok"].copy()
        bad_names = [i for i, n in enumerate(names) if "/" in n]
        if bad_names:
            good[bad_names] = False
        if not good.all():
            bad = np.flatnonzero(~good)
            for i in bad[:MAX_WARNINGS_PER_LEVEL]:
                why = "invalid name" if i in bad_names else f"inode (nid {int(nids[i])}) does not decode"
                self.warnings.append(f"erofs: {frontier[int(slots[i])].path.rstrip('/')}/{names[i]!r}: {why}, skipped")
            if len(bad) > MAX_WARNINGS_PER_LEVEL:
                self.warnings.append(f"erofs: {len(bad) - MAX_WARNINGS_PER_LEVEL} more damaged entries skipped")
        keep = np.flatnonzero(good)
        all_good = len(keep) == len(names)
        pick = (lambda a: a) if all_good else (lambda a: a[keep])
        level = Level(slot=pick(slots), names=names if all_good else [names[i] for i in keep],
                      mode=pick(ino["mode"]), uid=pick(ino["uid"]), gid=pick(ino["gid"]), size=pick(ino["size"]),
                      inode=pick(ino["inode"]), nlink=pick(ino["nlink"]))
        dir_rows = np.flatnonzero((level.mode & np.uint32(0o170000)) == stat_mod.S_IFDIR)
        src = dir_rows if all_good else keep[dir_rows]
        level.dirs = [(int(r), (int(n), int(lay), int(sz), int(blk), int(end)), int(n)) for r, n, lay, sz, blk, end in zip(
            dir_rows, level.inode[dir_rows], ino["layout"][src], ino["size"][src], ino["startblk"][src],
            ino["meta_end"][src])]
        return level

    def walk_table(self, path: str, exclude, start_nid: int) -> EntryTable:
        root = self.fs._inode(start_nid)
        if not stat_mod.S_ISDIR(root.mode):
            return empty_table(path)
        handle = (start_nid, root.datalayout, root.size, root.i_u, root.meta_end)
        return breadth_first_table(self.fs, path, exclude, handle, start_nid, self.expand)
