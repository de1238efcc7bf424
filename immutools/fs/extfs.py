"""ext2/ext3/ext4 over dissect.extfs.

dissect.extfs does the superblock, group descriptors, inode tables, extent trees and indirect
blocks. We add what it lacks or gets wrong (each pinned by a test in tests/test_fs_dissect.py):

* inodes are parsed from exactly ``s_inode_size`` bytes: dissect's inode struct assumes 256-byte
  inodes, so on a 128-byte-inode filesystem (old ext2/ext3, Flatcar's /usr) its in-inode xattr area
  is the *next* inode;
* file blocks are mapped here, only for the range being read (extent trees: fs/ext4/ext4_extents.h;
  block pointers: fs/ext4/indirect.c). dissect builds the whole run list from ``i_size`` up front
  (a damaged size on an indirect-mapped file means millions of entries), follows extent indexes
  without checking depth or loops, and misplaces unwritten extents that follow a hole;
* directories are parsed here, record by record with bounds (dissect skips the last inode number
  and trusts ``rec_len``), including inline-data directories;
* inline-data files longer than the 60 bytes of ``i_block`` continue in the ``system.data`` xattr;
* extended attributes are parsed here (in-inode and block; format from linux fs/ext4/xattr.h);
* ``meta_bg`` group descriptors (linux fs/ext4/super.c descriptor_loc) live in each meta group's
  first block, not after the superblock;
* the Flatcar read-only hack (top byte of ``ro_compat`` set, probe.EXT_RO_COMPAT_FLATCAR_RO) is
  reported (``read_only_hack``), not refused: read-only access needs no ro_compat feature, and
  dissect.extfs does not look at ro_compat. Unknown *incompat* bits are refused.
"""

from __future__ import annotations

import bisect
import os
import stat as stat_mod
import struct
from collections import namedtuple
from functools import lru_cache
from typing import Any, Iterator

from immutools.errors import CorruptDataError, LimitExceededError, NotADirectoryError_, UnsupportedFeatureError
from immutools.fs.base import Stat
from immutools.fs.dissect_common import DissectFileSystem, Ref, child_path
from immutools.fs.probe import probe_ext
from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits

# Feature bits, linux fs/ext4/ext4.h.
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_JOURNAL_DEV = 0x0008
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000
READABLE_INCOMPAT = (
    INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG | INCOMPAT_EA_INODE | INCOMPAT_CSUM_SEED | INCOMPAT_LARGEDIR | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT | INCOMPAT_CASEFOLD
)
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_HUGE_FILE = 0x0008
COMPAT_SPARSE_SUPER2 = 0x0200

# Inode flags.
EXT4_ENCRYPT_FL = 0x00000800
EXT4_EXTENTS_FL = 0x00080000
EXTENT_MAGIC = 0xF30A
EXTENT_MAX_DEPTH = 5             # EXT4_MAX_EXTENT_DEPTH
EXTENT_INIT_MAX = 32768          # EXT_INIT_MAX_LEN: longer means unwritten
EXT4_INLINE_DATA_FL = 0x10000000

ROOT_INO = 2
_NAME_CACHE_DIRS = 256        # directories whose name -> inode maps are kept for lookups
INLINE_IBLOCK = 60            # bytes of i_block
XATTR_MAGIC = 0xEA020000
# xattr name index -> prefix (fs/ext4/xattr.c ext4_xattr_handler_map).
XATTR_PREFIXES = {
    1: "user.",
    2: "system.posix_acl_access",
    3: "system.posix_acl_default",
    4: "trusted.",
    6: "security.",
    7: "system.",
    8: "system.richacl",
}
XATTR_SYSTEM_INDEX = 7
# Directory entry file_type -> S_IFMT (fs/ext4/ext4.h EXT4_FT_*).
DIRENT_TYPES = {
    1: stat_mod.S_IFREG, 2: stat_mod.S_IFDIR, 3: stat_mod.S_IFCHR, 4: stat_mod.S_IFBLK,
    5: stat_mod.S_IFIFO, 6: stat_mod.S_IFSOCK, 7: stat_mod.S_IFLNK,
}


# struct ext4_inode up to i_projid (linux fs/ext4/ext4.h), named as in dissect.extfs's c_ext.
_INODE_STRUCT = struct.Struct("<HHIIIIIHHIII60sIIIIHHHHHHHHIIIIIII")
_Inode = namedtuple("_Inode", (
    "i_mode i_uid i_size_lo i_atime i_ctime i_mtime i_dtime i_gid i_links_count i_blocks_lo i_flags i_reserved_1 "
    "i_block i_generation i_file_acl_lo i_size_high i_obso_faddr i_blocks_high i_file_acl_high i_uid_high i_gid_high "
    "i_checksum_lo i_reserved i_extra_isize i_checksum_hi i_ctime_extra i_mtime_extra i_atime_extra i_crtime "
    "i_crtime_extra i_version_hi i_projid i_extra"))


def _decode_dev(i_block: bytes) -> int:
    """Device number from i_block (fs/ext4/inode.c: old encoding in word 0, new in word 1)."""
    old, new = struct.unpack_from("<II", i_block, 0)
    if old:
        return os.makedev((old >> 8) & 0xFF, old & 0xFF)
    return os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))


class ExtFileSystem(DissectFileSystem):
    fstype = "ext4"

    def __init__(self, source: ByteSource, limits: Limits = DEFAULT_LIMITS):
        ident = probe_ext(source.read_at(1024, 1024))
        if ident is None:
            raise CorruptDataError(f"{source.name}: no ext2/3/4 superblock")
        self.fstype = ident.fstype
        self.identity = ident
        self.read_only_hack = ident.details["read_only_hack"]
        super().__init__(source, limits)

    # ---- open ----------------------------------------------------------------------------------
    def _open(self, source: ByteSource) -> Any:
        from dissect.extfs import ExtFS
        from dissect.extfs.c_ext import c_ext

        incompat = self.identity.details["feature_incompat"]
        unknown = incompat & ~READABLE_INCOMPAT
        if unknown:
            raise UnsupportedFeatureError(f"{self.fstype}: unsupported incompat features 0x{unknown:x}")
        if incompat & INCOMPAT_RECOVER:
            self.warnings.append(f"{self.fstype}: journal needs recovery; the last writes may be missing")
        if incompat & INCOMPAT_ENCRYPT:
            self.warnings.append(f"{self.fstype}: uses fscrypt; encrypted files cannot be read")

        self._c = c_ext
        fs = ExtFS(source)
        self._fs = fs
        sb = fs.sb
        self._inode_size = sb.s_inode_size if sb.s_rev_level else 128
        if self._inode_size < 128 or self._inode_size > fs.block_size or self._inode_size & (self._inode_size - 1):
            raise CorruptDataError(f"{self.fstype}: invalid inode size {self._inode_size}")
        self._has_filetype = bool(incompat & INCOMPAT_FILETYPE)
        self._largedir = bool(incompat & INCOMPAT_LARGEDIR)
        if incompat & INCOMPAT_META_BG:
            fs._read_group_desc = lru_cache(256)(self._read_meta_bg_group_desc)
        self._inode_struct = lru_cache(4096)(self._parse_inode)
        self._extent_cache: dict[int, list] = {}
        self._pointer_cache: dict[int, tuple] = {}
        self._bulk = None
        self._names: dict[int, dict[str, tuple[int, int]]] = {}
        return self._get(ROOT_INO)

    def _read_meta_bg_group_desc(self, group: int):
        """Group descriptor with meta_bg (fs/ext4/super.c descriptor_loc)."""
        fs, sb = self._fs, self._fs.sb
        if group >= fs.groups_count:
            raise CorruptDataError(f"{self.fstype}: group {group} beyond {fs.groups_count} groups")
        per_block = fs.block_size // fs._group_desc_size
        meta_group = group // per_block
        if meta_group < sb.s_first_meta_bg:
            offset = fs.groups_offset + group * fs._group_desc_size
        else:
            first = meta_group * per_block
            block = sb.s_first_data_block + first * sb.s_blocks_per_group
            if self._group_has_super(first):
                block += 1
            offset = block * fs.block_size + (group % per_block) * fs._group_desc_size
        fs.fh.seek(offset)
        return fs._group_desc_struct(fs.fh)

    def _group_has_super(self, group: int) -> bool:
        sb = self._fs.sb
        if group == 0:
            return True
        if sb.s_feature_compat & COMPAT_SPARSE_SUPER2:
            return group in tuple(sb.s_backup_bgs)
        if group <= 1 or not sb.s_feature_ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    # ---- inodes ------------------------------------------------------------------------------
    def _raw_inode(self, inum: int) -> bytes:
        fs = self._fs
        if inum < 1 or inum > fs.sb.s_inodes_count:
            raise CorruptDataError(f"inode number {inum} out of range 1-{fs.sb.s_inodes_count}")
        group, index = divmod(inum - 1, fs.sb.s_inodes_per_group)
        desc = fs._read_group_desc(group)
        table = desc.bg_inode_table_lo
        if fs._group_desc_struct is self._c.ext4_group_desc:
            table |= desc.bg_inode_table_hi << 32
        if table == 0 or table > fs.last_block:
            raise CorruptDataError(f"inode table of group {group} at invalid block {table}")
        raw = self.source.read_at(table * fs.block_size + index * self._inode_size, self._inode_size)
        if len(raw) != self._inode_size:
            raise CorruptDataError(f"inode {inum} lies beyond the end of the image")
        return raw

    def _parse_inode(self, inum: int):
        raw = self._raw_inode(inum)
        extra_isize = struct.unpack_from("<H", raw, 128)[0] if len(raw) > 128 else 0
        if 128 + extra_isize > len(raw) or extra_isize % 4:
            raise CorruptDataError(f"inode {inum}: bad i_extra_isize {extra_isize}")
        # The fixed fields (zero past a 128-byte inode), with the names of dissect's ext4_inode
        # struct, which dissect's INode reads; one struct.unpack instead of a cstruct parse (the
        # per-entry path parses thousands of inodes per scan). We parse xattrs ourselves, so
        # i_extra stays empty.
        return _Inode._make(_INODE_STRUCT.unpack(raw[:160].ljust(160, b"\0")) + (b"",)), raw, extra_isize

    def _get(self, inum: int, name: str | None = None, ftype: int | None = None):
        node = self._fs.get_inode(inum, name, ftype)
        if "inode" not in node.__dict__:
            # dissect reads a fixed 256-byte struct; we hand it ours, parsed from s_inode_size bytes.
            node.__dict__["inode"] = self._inode_struct(inum)[0]
        return node

    def _make_stat(self, ref: Ref) -> Stat:
        node = ref.node
        ino = node.inode
        mode = ino.i_mode
        size = ino.i_size_lo
        if stat_mod.S_ISREG(mode) or self._largedir:
            size |= ino.i_size_high << 32
        rdev = _decode_dev(ino.i_block) if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode) else None
        return Stat(
            mode=mode,
            size=size,
            uid=ino.i_uid | (ino.i_uid_high << 16),
            gid=ino.i_gid | (ino.i_gid_high << 16),
            mtime=node.mtime_ns / 1e9,
            nlink=ino.i_links_count,
            inode=node.inum,
            rdev=rdev,
        )

    def _key(self, ref: Ref) -> Any:
        return ref.node.inum

    # ---- whole-tree metadata in bulk (ext4_tables) ------------------------------------------------
    def _tables(self):
        if self._bulk is None:
            from immutools.fs.ext4_tables import Ext4Tables

            with self.errors("/", "read inode tables"):
                self._bulk = Ext4Tables(self)
        return self._bulk

    def _start_inode(self, path: str) -> int:
        ref = self._resolve(path, True)
        if not self._stat_node(ref).is_dir:
            raise NotADirectoryError_(f"{path}: not a directory")
        return ref.node.inum

    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()):
        """Bulk version of ``FileSystem.walk_table``: inode tables and directory blocks decoded
        with numpy (``ext4_tables``)."""
        start = self._start_inode(path)
        with self.errors(path, "walk"):
            return self._tables().walk_table(path, start, tuple(exclude))

    def find_special(self, path: str = "/", exclude: tuple[str, ...] = (), bits: int | None = None):
        """Bulk version of ``FileSystem.find_special``: the inode tables' modes first; directories
        are read only when some in-use inode has the bits."""
        from immutools.fs.table import SPECIAL_BITS

        start = self._start_inode(path)
        with self.errors(path, "walk"):
            return self._tables().find_special(path, start, tuple(exclude), SPECIAL_BITS if bits is None else bits)

    def _block_runs(self, inum: int, i_block: bytes, extents: bool, nblocks: int) -> list[tuple[int, int, int | None]]:
        """(logical, count, physical or None) covering the first ``nblocks`` blocks of an inode,
        for the bulk directory reader (deep extent trees, indirect maps)."""
        if extents:
            runs = []
            for first, count, physical in self._extent_runs_of(i_block):
                end = min(first + count, nblocks)
                if first >= end:
                    continue
                if physical is not None and physical + (end - first) > self._fs.block_count:
                    raise CorruptDataError(f"extent at block {physical} beyond the filesystem")
                runs.append((first, end - first, physical))
            return runs
        words = struct.unpack("<15I", i_block)
        runs: list[tuple[int, int, int | None]] = []
        for logical in range(nblocks):
            physical = self._indirect_block_of(words, logical)
            if physical is not None and physical >= self._fs.block_count:
                raise CorruptDataError(f"block {physical} beyond the filesystem")
            if runs and physical is not None and runs[-1][2] is not None and runs[-1][0] + runs[-1][1] == logical \
                    and runs[-1][2] + runs[-1][1] == physical:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, runs[-1][2])
            elif physical is not None:
                runs.append((logical, 1, physical))
        return runs

    def max_file_size(self, extents: bool) -> int:
        """The largest i_size the block addressing can hold (fs/ext4/super.c ext4_max_size and
        ext4_max_bitmap_size): 2^32 logical blocks with extents; 12 direct + single, double and
        triple indirect blocks without; without ``huge_file`` also i_blocks' 2^32 sectors."""
        bs = self._fs.block_size
        if extents:
            limit = ((1 << 32) - 1) * bs
        else:
            per = bs // 4
            limit = (12 + per + per**2 + per**3) * bs
        if not self._fs.sb.s_feature_ro_compat & RO_COMPAT_HUGE_FILE:
            limit = min(limit, ((1 << 32) - 1) * 512)
        return limit

    # ---- directories -------------------------------------------------------------------------
    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        for name, inum, ftype in self._dirents(ref):
            yield name, self._get(inum, name, DIRENT_TYPES.get(ftype))

    def _dirents(self, ref: Ref) -> Iterator[tuple[str, int, int]]:
        """(name, inode number, dirent file type) of a directory, without '.' and '..'."""
        node = ref.node
        if node.inode.i_flags & EXT4_INLINE_DATA_FL:
            # Inline directory: i_block = parent inode number + entries; more in system.data.
            yield from self._parse_dirents(bytes(node.inode.i_block)[4:])
            extra = self._inline_overflow(node)
            if extra:
                yield from self._parse_dirents(extra)
            return
        size = self._stat_node(ref).size
        bs = self._fs.block_size
        for off in range(0, size, bs):
            yield from self._parse_dirents(self._read_mapped(node, off, min(bs, size - off)))

    def _parse_dirents(self, block: bytes) -> Iterator[tuple[str, int, int]]:
        """Linear directory records (fs/ext4/ext4.h ext4_dir_entry_2); hash-tree index blocks
        look like one empty record, so a linear scan sees every name."""
        pos, end = 0, len(block)
        max_inode = self._fs.sb.s_inodes_count
        while pos + 8 <= end:
            inum, rec_len = struct.unpack_from("<IH", block, pos)
            if self._has_filetype:
                name_len, ftype = block[pos + 6], block[pos + 7]
            else:
                name_len, ftype = struct.unpack_from("<H", block, pos + 6)[0] & 0xFF, 0
            if rec_len < 8 or rec_len % 4 or pos + rec_len > end or 8 + name_len > rec_len:
                raise CorruptDataError(f"directory record at offset {pos} has bad length {rec_len}")
            if inum:
                if inum > max_inode:
                    raise CorruptDataError(f"directory entry points to inode {inum} beyond {max_inode}")
                name = block[pos + 8 : pos + 8 + name_len].decode("utf-8", errors="surrogateescape")
                if name not in (".", ".."):
                    yield name, inum, ftype
            pos += rec_len

    def _lookup_child(self, ref: Ref, name: str) -> Ref | None:
        """One name in a directory: the directory's names are parsed once (name -> inode number,
        kept for the last directories looked in) and only the found child's inode is read, where
        a full listing would read every child's inode (a /usr/bin lookup: thousands)."""
        key = ref.node.inum
        names = self._names.get(key)
        if names is None:
            names = {}
            with self.errors(ref.path, "list directory"):
                for child, inum, ftype in self._dirents(ref):
                    names[child] = (inum, ftype)
                    if len(names) > self.limits.max_dir_entries:
                        raise LimitExceededError(
                            f"{self.fstype}: {ref.path}: more than {self.limits.max_dir_entries} directory entries")
            self._names[key] = names
            while len(self._names) > _NAME_CACHE_DIRS:
                self._names.pop(next(iter(self._names)))
        hit = names.get(name)
        if hit is None:
            return None
        with self.errors(ref.path, "lookup"):
            node = self._get(hit[0], name, DIRENT_TYPES.get(hit[1]))
        return Ref(node, child_path(ref.path, name))

    # ---- file data ---------------------------------------------------------------------------
    def _inline_overflow(self, node) -> bytes:
        return self._xattr_list(node.inum).get("system.data", b"")

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        node = ref.node
        flags = node.inode.i_flags
        if flags & EXT4_ENCRYPT_FL:
            raise UnsupportedFeatureError("file content is encrypted (fscrypt)")
        size = self._stat_node(ref).size
        limit = self.max_file_size(bool(flags & EXT4_EXTENTS_FL))
        if size > limit and not flags & EXT4_INLINE_DATA_FL:
            # A size no block map of this filesystem can reach is damage (or a trap: reading it
            # would produce zeros without end); holes inside a plausible size still read as zeros.
            raise CorruptDataError(f"file size {size} is beyond the largest this filesystem can address ({limit})")
        if flags & EXT4_INLINE_DATA_FL:
            data = bytes(node.inode.i_block) + self._inline_overflow(node)
            return data[offset : offset + length]
        return self._read_mapped(node, offset, length)

    def _link_target(self, ref: Ref) -> str:
        node = ref.node
        size = self._stat_node(ref).size
        if size > 4096:
            raise CorruptDataError(f"symlink of {size} bytes")
        flags = node.inode.i_flags
        if flags & EXT4_ENCRYPT_FL:
            raise UnsupportedFeatureError("symlink target is encrypted (fscrypt)")
        if flags & EXT4_INLINE_DATA_FL:
            raw = (bytes(node.inode.i_block) + self._inline_overflow(node))[:size]
        elif size < INLINE_IBLOCK and node.inode.i_blocks_lo == self._xattr_block_sectors(node):
            # Fast symlink: the target sits in i_block (fs/ext4/inode.c ext4_inode_is_fast_symlink).
            raw = bytes(node.inode.i_block)[:size]
        else:
            raw = self._read_mapped(node, 0, size)
        if len(raw) != size:
            raise CorruptDataError("symlink target is truncated")
        return raw.decode("utf-8", errors="surrogateescape")

    def _xattr_block_sectors(self, node) -> int:
        return (self._fs.block_size // 512) if node.inode.i_file_acl_lo or node.inode.i_file_acl_high else 0

    # ---- block mapping -----------------------------------------------------------------------
    # dissect builds a file's whole run list up front from i_size: a damaged size on an
    # indirect-mapped file means millions of entries, and it follows extent-tree pointers without
    # checking depth. So we map blocks ourselves, only for the range being read.

    def _read_mapped(self, node, offset: int, length: int) -> bytes:
        bs = self._fs.block_size
        out = bytearray()
        pos, end = offset, offset + length
        runs = self._extent_runs(node) if node.inode.i_flags & EXT4_EXTENTS_FL else None
        while pos < end:
            logical, within = divmod(pos, bs)
            if runs is not None:
                physical, count = self._extent_lookup(runs, logical)
            else:
                physical, count = self._indirect_lookup(node, logical, (end - pos + within + bs - 1) // bs)
            take = min(end - pos, count * bs - within)
            if physical is None:
                out += bytes(take)
            else:
                if physical + count > self._fs.block_count:
                    raise CorruptDataError(f"data block {physical} beyond the filesystem")
                data = self.source.read_at(physical * bs + within, take)
                if len(data) != take:
                    raise CorruptDataError(f"data block {physical} beyond the end of the image")
                out += data
            pos += take
        return bytes(out)

    def _extent_runs(self, node) -> list[tuple[int, int, int | None]]:
        """All (logical block, count, physical block or None for unwritten) of a file's extent
        tree, cached for the last files read."""
        cached = self._extent_cache.get(node.inum)
        if cached is not None:
            return cached
        runs = self._extent_runs_of(bytes(node.inode.i_block))
        self._extent_cache[node.inum] = runs
        while len(self._extent_cache) > 256:
            self._extent_cache.pop(next(iter(self._extent_cache)))
        return runs

    def _extent_runs_of(self, i_block: bytes) -> list[tuple[int, int, int | None]]:
        """The runs of the extent tree rooted in ``i_block`` (fs/ext4/ext4_extents.h), depth
        checked at every level, no block visited twice."""
        runs: list[tuple[int, int, int | None]] = []
        visited: set[int] = set()
        max_runs = self._fs.block_count + 1

        def walk(area: bytes, expect_depth: int | None) -> None:
            magic, entries, _max, depth = struct.unpack_from("<HHHH", area, 0)
            if magic != EXTENT_MAGIC:
                raise CorruptDataError("bad extent header magic")
            if depth > EXTENT_MAX_DEPTH or (expect_depth is not None and depth != expect_depth):
                raise CorruptDataError(f"extent tree depth {depth} where {expect_depth} was expected")
            if 12 + entries * 12 > len(area):
                raise CorruptDataError(f"extent node claims {entries} entries")
            for i in range(entries):
                off = 12 + i * 12
                if depth == 0:
                    first, count, start_hi, start_lo = struct.unpack_from("<IHHI", area, off)
                    uninit = count > EXTENT_INIT_MAX
                    if uninit:
                        count -= EXTENT_INIT_MAX
                    runs.append((first, count, None if uninit else (start_hi << 32) | start_lo))
                    if len(runs) > max_runs:
                        raise CorruptDataError("more extents than blocks")
                else:
                    _first, leaf_lo, leaf_hi = struct.unpack_from("<IIH", area, off)
                    child = (leaf_hi << 32) | leaf_lo
                    if child in visited or child == 0 or child > self._fs.last_block:
                        raise CorruptDataError(f"extent index points to block {child} (loop or damage)")
                    visited.add(child)
                    block = self.source.read_at(child * self._fs.block_size, self._fs.block_size)
                    if len(block) != self._fs.block_size:
                        raise CorruptDataError(f"extent block {child} beyond the end of the image")
                    walk(block, depth - 1)

        walk(i_block, None)
        runs.sort()
        return runs

    @staticmethod
    def _extent_lookup(runs, logical: int) -> tuple[int | None, int]:
        """(physical block or None, blocks until the mapping changes) at ``logical``."""
        i = bisect.bisect_right(runs, (logical, 1 << 64)) - 1
        if i >= 0:
            first, count, physical = runs[i]
            if logical < first + count:
                return (None if physical is None else physical + logical - first), first + count - logical
        following = runs[i + 1][0] if i + 1 < len(runs) else logical + (1 << 32)
        return None, following - logical  # a hole

    def _indirect_lookup(self, node, logical: int, want: int) -> tuple[int | None, int]:
        """Classic direct/indirect/double/triple block map (fs/ext4/indirect.c); returns the
        physical block at ``logical`` and how many following blocks continue it contiguously."""
        physical = self._indirect_block(node, logical)
        count = 1
        while count < want and count < 1024:
            nxt = self._indirect_block(node, logical + count)
            if (physical is None) != (nxt is None) or (physical is not None and nxt != physical + count):
                break
            count += 1
        return physical, count

    def _indirect_block(self, node, logical: int) -> int | None:
        return self._indirect_block_of(struct.unpack("<15I", bytes(node.inode.i_block)), logical)

    def _indirect_block_of(self, i_block: tuple[int, ...], logical: int) -> int | None:
        per = self._fs.block_size // 4
        if logical < 12:
            ptr = i_block[logical]
            return ptr or None
        logical -= 12
        for level, slot in ((1, 12), (2, 13), (3, 14)):
            span = per**level
            if logical < span:
                ptr = i_block[slot]
                for depth in range(level - 1, -1, -1):
                    if not ptr:
                        return None
                    index = (logical // per**depth) % per
                    ptr = self._pointer_block(ptr)[index]
                return ptr or None
            logical -= span
        raise CorruptDataError("file offset beyond what block pointers can map")

    def _pointer_block(self, block: int) -> tuple[int, ...]:
        cached = self._pointer_cache.get(block)
        if cached is None:
            if block > self._fs.last_block:
                raise CorruptDataError(f"indirect block {block} beyond the filesystem")
            data = self.source.read_at(block * self._fs.block_size, self._fs.block_size)
            if len(data) != self._fs.block_size:
                raise CorruptDataError(f"indirect block {block} beyond the end of the image")
            cached = struct.unpack(f"<{len(data) // 4}I", data)
            self._pointer_cache[block] = cached
            while len(self._pointer_cache) > 64:
                self._pointer_cache.pop(next(iter(self._pointer_cache)))
        return cached

    # ---- extended attributes -----------------------------------------------------------------
    def _xattrs(self, ref: Ref) -> dict[str, bytes]:
        return dict(self._xattr_list(ref.node.inum))

    def _xattr_list(self, inum: int) -> dict[str, bytes]:
        ino, raw, extra_isize = self._inode_struct(inum)
        out: dict[str, bytes] = {}
        if len(raw) > 128:
            start = 128 + extra_isize
            if start + 4 <= len(raw) and struct.unpack_from("<I", raw, start)[0] == XATTR_MAGIC:
                body = raw[start + 4 :]
                self._parse_xattr_entries(body, 0, body, out)
        block = ino.i_file_acl_lo | (ino.i_file_acl_high << 32)
        if block:
            fs = self._fs
            if block > fs.last_block:
                raise CorruptDataError(f"xattr block {block} beyond the filesystem")
            data = self.source.read_at(block * fs.block_size, fs.block_size)
            if len(data) != fs.block_size or struct.unpack_from("<I", data, 0)[0] != XATTR_MAGIC:
                raise CorruptDataError(f"xattr block {block} has no xattr header")
            self._parse_xattr_entries(data, 32, data, out)
        return out

    def _parse_xattr_entries(self, area: bytes, pos: int, values: bytes, out: dict[str, bytes]) -> None:
        """ext4_xattr_entry records (fs/ext4/xattr.h) until a zero word; values are offsets into
        ``values`` (the block, or the in-inode area after its magic)."""
        while pos + 16 <= len(area) and struct.unpack_from("<I", area, pos)[0] != 0:
            name_len, index, value_offs, value_inum, value_size = struct.unpack_from("<BBHII", area, pos)
            name = area[pos + 16 : pos + 16 + name_len]
            if len(name) != name_len:
                raise CorruptDataError("xattr name runs past its area")
            if value_inum:
                if value_size > self.limits.max_file_read:
                    raise CorruptDataError(f"xattr value of {value_size} bytes")
                value = self._read_mapped(self._get(value_inum), 0, value_size)
            else:
                value = values[value_offs : value_offs + value_size]
            if len(value) != value_size:
                raise CorruptDataError("xattr value runs past its area")
            prefix = XATTR_PREFIXES.get(index)
            if prefix is None:
                prefix = f"unknown{index}."
            full = prefix if index in (2, 3, 8) else prefix + name.decode("utf-8", errors="surrogateescape")
            out[full] = bytes(value)
            pos += (16 + name_len + 3) & ~3
