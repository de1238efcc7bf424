"""squashfs inode and directory tables decoded in bulk, for whole-tree metadata walks.

Our own code because dissect.squashfs decodes one inode and one directory entry at a time, each a
cstruct object plus an ``INode`` (25x ``unsquashfs -lln`` on a 55k-entry tree). Here:

* the inode table and the directory table (runs of 8 KiB metadata blocks, each behind a 2-byte
  header whose bit 15 says "stored uncompressed") are read with one ``read_at`` and decompressed
  block by block into two buffers, with the map from a block's on-disk position (relative to the
  table start, what inode references and directory headers hold) to its offset in the buffer;
* a directory listing is parsed with a tight loop over the buffer (headers of up to 256 entries,
  then ``offset, inode delta, type, size-1, name``);
* the inodes of a whole directory level are decoded at once with numpy gathers of their fields at
  the positions the directory entries point to; the id table gives uid/gid.

Layouts: squashfs-tools ``squashfs_fs.h`` (squashfs_base_inode_header, squashfs_dir_inode_header,
squashfs_ldir_inode_header, squashfs_reg_inode_header, squashfs_lreg_inode_header, ...,
squashfs_dir_header, squashfs_dir_entry) and linux ``fs/squashfs/squashfs_fs.h``; table order and
bounds as in linux ``fs/squashfs/super.c`` (inode table, directory table, fragment table, export
table, id table, xattr table). Damage stays local: a directory or inode that does not decode is
skipped with a warning; a broken metadata block ends its table there (later references warn).
"""

from __future__ import annotations

import stat as stat_mod
import struct
from typing import TYPE_CHECKING

import numpy as np

from immutools.errors import CorruptDataError, LimitExceededError
from immutools.fs.bulk import Frontier, Level, breadth_first_table, empty_table, gather_le, padded
from immutools.fs.dissect_common import decompress
from immutools.fs.table import EntryTable

if TYPE_CHECKING:
    from immutools.fs.squashfs import SquashFileSystem

METADATA_SIZE = 8192
METADATA_UNCOMPRESSED = 0x8000
DIR_COUNT_MAX = 256          # SQUASHFS_DIR_COUNT: entries under one directory header
DIR_HEADER = struct.Struct("<III")      # count - 1, start_block, inode_number
MAX_WARNINGS_PER_LEVEL = 5

# Inode type -> S_IFMT (1..7 basic, 8..14 extended of the same kinds).
_IFMT_BY_TYPE = np.array([0, stat_mod.S_IFDIR, stat_mod.S_IFREG, stat_mod.S_IFLNK, stat_mod.S_IFBLK,
                          stat_mod.S_IFCHR, stat_mod.S_IFIFO, stat_mod.S_IFSOCK] + [0] * 8, dtype=np.uint32)
_IFMT_BY_TYPE[8:15] = _IFMT_BY_TYPE[1:8]
# Bytes each inode type needs before its variable part (block list, symlink target, dir index).
_INODE_LEN = np.array([0, 32, 32, 24, 24, 24, 20, 20, 40, 56, 24, 28, 28, 24, 24, 0], dtype=np.int64)
DIR, REG, SYMLINK, LDIR, LREG, LSYMLINK = 1, 2, 3, 8, 9, 10


class MetadataTable:
    """A run of metadata blocks decompressed into one buffer.

    ``data`` holds the blocks back to back (an inode or a listing that crosses a block boundary is
    contiguous there); ``offset_of(block)`` maps a block's position relative to the table start to
    its offset in ``data``."""

    def __init__(self, raw: bytes, codec: str, what: str, warnings: list[str], max_bytes: int):
        out = bytearray()
        starts: dict[int, int] = {}
        pos = 0
        while pos + 2 <= len(raw):
            (head,) = struct.unpack_from("<H", raw, pos)
            size = head & ~METADATA_UNCOMPRESSED
            if not 0 < size <= METADATA_SIZE or pos + 2 + size > len(raw):
                warnings.append(f"squashfs: {what}: metadata block at +{pos} is damaged (size {size}); table ends there")
                break
            payload = raw[pos + 2: pos + 2 + size]
            if not head & METADATA_UNCOMPRESSED:
                try:
                    payload = decompress(codec, payload, METADATA_SIZE, what=f"{what} metadata block")
                except CorruptDataError as exc:
                    # The next block's header is still where the size says: keep going, with zeros
                    # (inode type 0, no entries) where this block's contents would be.
                    warnings.append(f"squashfs: {what}: metadata block at +{pos}: {exc}")
                    payload = bytes(METADATA_SIZE)
            starts[pos] = len(out)
            out += payload
            if len(out) > max_bytes:
                raise LimitExceededError(f"squashfs: {what} inflates past {max_bytes} bytes")
            pos += 2 + size
        self.starts = starts
        self.length = len(out)
        self.data = bytes(out)
        self.array = padded(self.data)

    def offsets_of(self, blocks: np.ndarray) -> np.ndarray:
        """Buffer offsets of the blocks at ``blocks`` (relative positions); -1 where no block starts."""
        keys = np.fromiter(self.starts.keys(), dtype=np.int64, count=len(self.starts))
        vals = np.fromiter(self.starts.values(), dtype=np.int64, count=len(self.starts))
        if not len(keys):
            return np.full(len(blocks), -1, dtype=np.int64)
        idx = np.clip(np.searchsorted(keys, blocks), 0, len(keys) - 1)
        return np.where(keys[idx] == blocks, vals[idx], -1)


class SquashTables:
    """The decoded inode table, directory table and id table of one squashfs image."""

    def __init__(self, fs: "SquashFileSystem"):
        self.fs = fs
        sb = fs._fs.sb
        source = fs.source
        self.warnings = fs.warnings
        codec = fs.compression
        inode_start, dir_start = sb.inode_table_start, sb.directory_table_start
        dir_end = self._directory_table_end(sb)
        if not inode_start <= dir_start <= dir_end <= source.size:
            raise CorruptDataError(f"squashfs: inode/directory tables at {inode_start}..{dir_start}..{dir_end} "
                                   f"do not fit the {source.size}-byte image")
        if dir_end - inode_start > fs.limits.max_nested_bytes:
            raise LimitExceededError(f"squashfs: metadata tables of {dir_end - inode_start} bytes")
        raw = source.read_at(inode_start, dir_end - inode_start)
        cap = fs.limits.max_nested_bytes
        self.inodes = MetadataTable(raw[: dir_start - inode_start], codec, "inode table", self.warnings, cap)
        self.dirs = MetadataTable(raw[dir_start - inode_start:], codec, "directory table", self.warnings, cap)
        self.ids = self._id_table(sb, codec)

    # ---- tables -------------------------------------------------------------------------------
    def _u64_at(self, offset: int) -> int | None:
        if not 0 <= offset < self.fs.source.size:   # absent tables hold -1 (SQUASHFS_INVALID_BLK)
            return None
        raw = self.fs.source.read_at(offset, 8)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else None

    def _directory_table_end(self, sb) -> int:
        """Where the directory table ends: the first block of whichever table follows it (linux
        super.c bounds each table by the next one's start the same way)."""
        ends = [sb.bytes_used]
        if sb.fragments:
            ends.append(self._u64_at(sb.fragment_table_start))
        ends.append(self._u64_at(sb.lookup_table_start))
        ends.append(self._u64_at(sb.id_table_start))
        ends.append(self._u64_at(sb.xattr_id_table_start))
        after = [e for e in ends if e is not None and e > sb.directory_table_start]
        return min(min(after) if after else sb.bytes_used, self.fs.source.size)

    def _id_table(self, sb, codec: str) -> np.ndarray:
        count = sb.no_ids
        blocks = -(-count * 4 // METADATA_SIZE)
        index = self.fs.source.read_at(sb.id_table_start, blocks * 8)
        if len(index) != blocks * 8:
            raise CorruptDataError("squashfs: id table index beyond the end of the image")
        out = bytearray()
        for pointer in struct.unpack(f"<{blocks}Q", index):
            head = self.fs.source.read_at(pointer, 2)
            stored = struct.unpack("<H", head)[0] & ~METADATA_UNCOMPRESSED if len(head) == 2 else 0
            out += MetadataTable(self.fs.source.read_at(pointer, 2 + stored), codec, "id table", self.warnings,
                                 METADATA_SIZE).data
        if len(out) < count * 4:
            raise CorruptDataError(f"squashfs: id table holds {len(out) // 4} of {count} ids")
        return np.frombuffer(bytes(out[: count * 4]), dtype="<u4").astype(np.uint32)

    # ---- inodes -------------------------------------------------------------------------------
    def decode_inodes(self, refs_block: np.ndarray, refs_offset: np.ndarray) -> dict[str, np.ndarray]:
        """Decode the inodes at inode references (block relative to the inode table, offset) in
        bulk. ``ok`` marks the ones that decoded; ``pos`` is each inode's buffer offset (its key)."""
        table = self.inodes
        buf = table.array
        base = table.offsets_of(refs_block.astype(np.int64))
        pos = base + refs_offset.astype(np.int64)
        ok = (base >= 0) & (pos + 16 <= table.length)
        p = np.where(ok, pos, 0)
        itype = gather_le(buf, p, 2)
        itype_c = np.minimum(itype, 15).astype(np.int64)
        ok &= (itype >= 1) & (itype <= 14)
        ok &= p + _INODE_LEN[itype_c] <= table.length
        p = np.where(ok, p, 0)
        perm = gather_le(buf, p + 2, 2)
        uid_index = gather_le(buf, p + 4, 2)
        gid_index = gather_le(buf, p + 6, 2)
        ok &= (uid_index < len(self.ids)) & (gid_index < len(self.ids))
        number = gather_le(buf, p + 12, 4)
        at16 = gather_le(buf, p + 16, 4)
        at20 = gather_le(buf, p + 20, 4)
        at24 = gather_le(buf, p + 24, 4)
        at28 = gather_le(buf, p + 28, 4)
        at34 = gather_le(buf, p + 34, 2)
        at40 = gather_le(buf, p + 40, 4)
        at24_64 = gather_le(buf, p + 24, 8)
        t = itype
        size = np.zeros(len(p), dtype=np.uint64)
        size = np.where(t == DIR, at24 & 0xFFFF, size)          # dir: u16 file_size at 24
        size = np.where(t == LDIR, at20, size)                  # ldir: u32 file_size at 20
        size = np.where(t == REG, at28, size)                   # reg: u32 file_size at 28
        size = np.where(t == LREG, at24_64, size)               # lreg: u64 file_size at 24
        size = np.where((t == SYMLINK) | (t == LSYMLINK), at20, size)  # symlink_size at 20
        nlink = np.where(t == REG, 1, np.where(t == LREG, at40, np.where(t == DIR, at20, at16)))
        ids = self.ids
        uid = ids[np.where(ok, uid_index, 0)] if len(ids) else np.zeros(len(p), np.uint32)
        gid = ids[np.where(ok, gid_index, 0)] if len(ids) else np.zeros(len(p), np.uint32)
        return {
            "ok": ok,
            "pos": pos,
            "type": itype,
            "mode": (perm & 0o7777).astype(np.uint32) | _IFMT_BY_TYPE[itype_c],
            "uid": uid,
            "gid": gid,
            "size": size.astype(np.uint64),
            "nlink": nlink.astype(np.uint32),
            "inode": number.astype(np.uint64),
            # directories: where their listing starts (block relative to the directory table,
            # offset in it) and its length (file_size counts 3 bytes for "." and "..").
            "dir_block": np.where(t == DIR, at16, at24).astype(np.int64),
            "dir_offset": np.where(t == DIR, at24 >> 16, at34).astype(np.int64),
        }

    # ---- directories --------------------------------------------------------------------------
    def _entry_positions(self, handle: tuple[int, int, int], positions: list[int], blocks: list[int]) -> int:
        """Append where each entry of one directory starts in the directory buffer, and the inode
        block its header names; returns how many. Only the walk from entry to entry is done here
        (it is sequential: each entry's length is in it); the fields are gathered per level."""
        block, offset, file_size = handle
        if file_size <= 3:
            return 0
        start = self.dirs.starts.get(block)
        if start is None:
            raise CorruptDataError(f"listing at directory block {block} is not in the directory table")
        data = self.dirs.data
        pos = start + offset
        end = pos + file_size - 3
        if end > len(data):
            raise CorruptDataError(f"listing of {file_size} bytes runs past the directory table")
        header = DIR_HEADER.unpack_from
        added = 0
        append = positions.append
        try:
            while pos + 12 <= end:
                count, start_block, _number = header(data, pos)
                pos += 12
                count += 1
                if count > DIR_COUNT_MAX:
                    raise CorruptDataError(f"directory header claims {count} entries")
                blocks.extend([start_block] * count)
                for _ in range(count):
                    append(pos)
                    pos += 9 + (data[pos + 6] | data[pos + 7] << 8)   # 8-byte entry, size - 1, name
                added += count
                if pos > end:
                    raise CorruptDataError("directory entry runs past the listing")
        except IndexError:
            raise CorruptDataError("directory entry runs past the directory table") from None
        if pos != end:
            raise CorruptDataError("directory listing does not end where its size says")
        return added

    def expand(self, frontier: list[Frontier]) -> Level:
        positions: list[int] = []
        blocks: list[int] = []
        slots: list[int] = []
        for slot, item in enumerate(frontier):
            mark = len(positions)
            try:
                added = self._entry_positions(item.handle, positions, blocks)
            except CorruptDataError as exc:
                self.warnings.append(f"squashfs: {item.path}: {exc}; directory skipped")
                del positions[mark:], blocks[mark:]
                continue
            slots.extend([slot] * added)
            if len(positions) > self.fs.limits.max_walk_entries:
                raise LimitExceededError(f"squashfs walk: more than {self.fs.limits.max_walk_entries} entries")
        if not positions:
            return Level.empty()
        pos = np.asarray(positions, dtype=np.int64)
        dbuf = self.dirs.array
        offsets = gather_le(dbuf, pos, 2)
        types = gather_le(dbuf, pos + 4, 2)
        name_len = gather_le(dbuf, pos + 6, 2).astype(np.int64) + 1
        data = self.dirs.data
        names = [data[p: p + n].decode("utf-8", "surrogateescape")
                 for p, n in zip((pos + 8).tolist(), name_len.tolist())]
        ino = self.decode_inodes(np.asarray(blocks, dtype=np.int64), offsets.astype(np.int64))
        ok = ino["ok"]
        entry_type = types.astype(np.int64)
        # The kernel takes the type from the inode; an entry whose inode disagrees is damage.
        basic_type = np.where(ino["type"] > 7, ino["type"].astype(np.int64) - 7, ino["type"].astype(np.int64))
        agrees = basic_type == entry_type
        good = ok & agrees
        bad_names = [i for i, n in enumerate(names) if not n or "/" in n or n in (".", "..")]
        if bad_names:
            good[bad_names] = False
        if not good.all():
            bad = np.flatnonzero(~good)
            for i in bad[:MAX_WARNINGS_PER_LEVEL]:
                why = "inode type disagrees with its directory entry" if ok[i] else "inode does not decode"
                if i in bad_names:
                    why = "invalid name"
                self.warnings.append(f"squashfs: {frontier[slots[i]].path.rstrip('/')}/{names[i]!r}: {why}, skipped")
            if len(bad) > MAX_WARNINGS_PER_LEVEL:
                self.warnings.append(f"squashfs: {len(bad) - MAX_WARNINGS_PER_LEVEL} more damaged entries skipped")
        keep = np.flatnonzero(good)
        all_good = len(keep) == len(names)
        slot_arr = np.asarray(slots, dtype=np.int64)
        pick = (lambda a: a) if all_good else (lambda a: a[keep])
        kept_names = names if all_good else [names[i] for i in keep]
        level = Level(slot=pick(slot_arr), names=kept_names, mode=pick(ino["mode"]), uid=pick(ino["uid"]),
                      gid=pick(ino["gid"]), size=pick(ino["size"]), inode=pick(ino["inode"]),
                      nlink=pick(ino["nlink"]))
        is_dir = (level.mode & np.uint32(stat_mod.S_IFMT(0o170000))) == stat_mod.S_IFDIR
        dir_rows = np.flatnonzero(is_dir)
        src = dir_rows if all_good else keep[dir_rows]
        dblock, doff, dsize, dpos = ino["dir_block"][src], ino["dir_offset"][src], ino["size"][src], ino["pos"][src]
        level.dirs = [(int(r), (int(b), int(o), int(s)), int(k))
                      for r, b, o, s, k in zip(dir_rows, dblock, doff, dsize, dpos)]
        return level

    def walk_table(self, path: str, exclude, start_ref) -> EntryTable:
        node = start_ref.node
        ino = self.decode_inodes(np.asarray([node.block], np.int64), np.asarray([node.offset], np.int64))
        if not ino["ok"][0]:
            raise CorruptDataError(f"squashfs: {path}: inode does not decode")
        if ino["type"][0] not in (DIR, LDIR):
            return empty_table(path)
        handle = (int(ino["dir_block"][0]), int(ino["dir_offset"][0]), int(ino["size"][0]))
        return breadth_first_table(self.fs, path, exclude, handle, int(ino["pos"][0]), self.expand)

