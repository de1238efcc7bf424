"""XFS over dissect.xfs.

dissect.xfs does the superblock, allocation groups, inodes, extent lists/btrees, shortform
directories and symlinks. We parse block/leaf/node directories ourselves (dissect assumes directory
blocks are filesystem blocks; with ``-b size=1024`` they are 4 KiB and it loses entries), and add
device numbers and extended attributes, which dissect does not parse: shortform (in-inode) and single-leaf-block attribute forks with local values (format from
linux fs/xfs/libxfs/xfs_da_format.h). Larger attribute forks (node/btree, remote values) raise
``UnsupportedFeatureError``.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from typing import Any, Iterator

from immutools.errors import CorruptDataError, NotADirectoryError_, UnsupportedFeatureError
from immutools.fs.base import Stat
from immutools.fs.dissect_common import DissectFileSystem, Ref, read_stream
from immutools.image.source import ByteSource

# xfs_dinode_fmt
FMT_DEV, FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 0, 1, 2, 3
# Attribute flags (xfs_da_format.h XFS_ATTR_*).
ATTR_LOCAL, ATTR_ROOT, ATTR_SECURE, ATTR_PARENT, ATTR_INCOMPLETE = 0x01, 0x02, 0x04, 0x08, 0x80
ATTR_LEAF_MAGIC, ATTR3_LEAF_MAGIC = 0xFBEE, 0x3BEE
ATTR_LEAF_HDR_V4, ATTR_LEAF_HDR_V5 = 32, 80
# Directory data block magics: v5 block/data "XDB3"/"XDD3", v4 "XD2B"/"XD2D".
XDB3, XDD3, XD2B, XD2D = 0x58444233, 0x58444433, 0x58443242, 0x58443244
# A directory's data section ends at 32 GiB (XFS_DIR2_LEAF_OFFSET); di_size counts only that section.
DIR_DATA_MAX = 32 << 30


def _attr_name(flags: int, name: bytes) -> str | None:
    if flags & (ATTR_INCOMPLETE | ATTR_PARENT):
        return None
    prefix = "trusted." if flags & ATTR_ROOT else "security." if flags & ATTR_SECURE else "user."
    return prefix + name.decode("utf-8", errors="surrogateescape")


class XfsFileSystem(DissectFileSystem):
    fstype = "xfs"

    def _open(self, source: ByteSource) -> Any:
        from dissect.xfs import XFS

        self._fs = XFS(source)
        sb = self._fs.sb
        if self._fs.block_size > 65536 or sb.sb_inodesize < 256 and self._fs.version == 5 or sb.sb_inodesize > 2048:
            raise CorruptDataError(f"xfs: implausible block size {self._fs.block_size} / inode size {sb.sb_inodesize}")
        self.label = self._fs.name or None
        self.uuid = str(self._fs.uuid)
        self._bulk = None
        return self._fs.root

    def _make_stat(self, ref: Ref) -> Stat:
        node = ref.node
        ino = node.inode
        mode = ino.di_mode
        rdev = None
        if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
            # xfs_dinode data fork holds a 32-bit sysv-style dev_t (libxfs xfs_inode_buf.c).
            dev = struct.unpack(">I", read_stream(node.datafork(), 0, 4))[0]
            rdev = os.makedev((dev >> 18) & 0x3FFF, dev & 0x3FFFF)
        nlink = ino.di_nlink if ino.di_version > 1 else ino.di_onlink
        return Stat(
            mode=mode,
            size=ino.di_size,
            uid=ino.di_uid,
            gid=ino.di_gid,
            mtime=node.mtime_ns / 1e9,
            nlink=nlink,
            inode=node.inum,
            rdev=rdev,
        )

    def _key(self, ref: Ref) -> Any:
        return ref.node.inum

    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        return self._children_of(ref.node)

    def _children_of(self, node) -> Iterator[tuple[str, Any]]:
        if node.inode.di_format == FMT_LOCAL:
            # Shortform directory inside the inode: dissect reads these correctly.
            for child in node.iterdir():
                if child.filename not in (".", ".."):
                    yield child.filename, child
            return
        if node.inode.di_format not in (FMT_EXTENTS, FMT_BTREE):
            raise CorruptDataError(f"directory in inode format {node.inode.di_format}")
        if node.size > DIR_DATA_MAX:
            raise CorruptDataError(f"directory size {node.size} beyond the 32 GiB data section")
        yield from self._block_dir_entries(node)

    def _block_dir_entries(self, node, only_blocks: list[int] | None = None) -> Iterator[tuple[str, Any]]:
        """Entries of a block/leaf/node directory's data blocks (xfs_da_format.h). dissect walks
        these per filesystem block, which breaks when directory blocks are larger (mkfs.xfs -b
        size=1024 keeps 4 KiB directory blocks). ``only_blocks``: just these directory blocks
        (for the bulk reader, which leaves blocks split across extents to this one)."""
        xfs = self._fs
        fsb = xfs.block_size
        dir_block = fsb << xfs.sb.sb_dirblklog
        per_dir_block = dir_block // fsb
        v5 = xfs.version == 5
        header_size = 64 if v5 else 16
        data_magics = (XDB3, XDD3) if v5 else (XD2B, XD2D)
        block_magic = XDB3 if v5 else XD2B
        data_blocks = (node.size + dir_block - 1) // dir_block
        logical = 0
        mapped: list[tuple[int, int]] = []  # (first logical fs block, physical fs block) of mapped runs
        for physical, count in node.dataruns:
            if physical is not None:
                mapped.append((logical, physical, count))
            logical += count
            if logical >= data_blocks * per_dir_block:
                break
        for first, physical, count in mapped:
            start = -(-first // per_dir_block) * per_dir_block
            for lblock in range(start, min(first + count, data_blocks * per_dir_block), per_dir_block):
                if only_blocks is not None and lblock // per_dir_block not in only_blocks:
                    continue
                if lblock + per_dir_block > first + count:
                    # A directory block split across extents: read it through the run list.
                    block = read_stream(node.open(), lblock * fsb, dir_block)
                else:
                    block = self.source.read_at((physical + lblock - first) * fsb, dir_block)
                if len(block) != dir_block:
                    raise CorruptDataError(f"directory block {lblock} beyond the end of the image")
                magic = struct.unpack_from(">I", block, 0)[0]
                if magic not in data_magics:
                    raise CorruptDataError(f"directory block {lblock} has magic 0x{magic:08x}")
                end = dir_block
                if magic == block_magic:
                    leaf_count = struct.unpack_from(">I", block, dir_block - 8)[0]
                    end = dir_block - 8 - leaf_count * 8
                    if end < header_size:
                        raise CorruptDataError(f"directory block {lblock} claims {leaf_count} leaf entries")
                yield from self._data_entries(block, header_size, end)

    def _data_entries(self, block: bytes, pos: int, end: int) -> Iterator[tuple[str, Any]]:
        from dissect.xfs.c_xfs import FILETYPES

        has_ftype = bool(self._fs._has_ftype)
        while pos + 8 <= end:
            if block[pos : pos + 2] == b"\xff\xff":
                # xfs_dir2_data_unused {be16 freetag; be16 length; ...}
                length = struct.unpack_from(">H", block, pos + 2)[0]
                if length < 8 or length % 8 or pos + length > end:
                    raise CorruptDataError(f"free directory space of {length} bytes at {pos}")
                pos += length
                continue
            # xfs_dir2_data_entry {be64 inumber; u8 namelen; name; [u8 ftype]; be16 tag}, 8-aligned
            inum, namelen = struct.unpack_from(">QB", block, pos)
            size = (8 + 1 + namelen + (1 if has_ftype else 0) + 2 + 7) & ~7
            if namelen == 0 or pos + size > end:
                raise CorruptDataError(f"directory entry at {pos} runs past its block")
            name = block[pos + 9 : pos + 9 + namelen].decode("utf-8", errors="surrogateescape")
            ftype = FILETYPES.get(block[pos + 9 + namelen]) if has_ftype else None
            if name not in (".", ".."):
                yield name, self._fs.get_inode(inum, name, ftype)
            pos += size

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        return read_stream(ref.node.open(), offset, length)

    # ---- whole-tree metadata in bulk (xfs_tables) -------------------------------------------------
    def _tables(self):
        if self._bulk is None:
            from immutools.fs.xfs_tables import XfsTables

            self._bulk = XfsTables(self)
        return self._bulk

    def _start_inode(self, path: str) -> int:
        ref = self._resolve(path, True)
        if not self._stat_node(ref).is_dir:
            raise NotADirectoryError_(f"{path}: not a directory")
        return ref.node.inum

    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()):
        """Bulk version of ``FileSystem.walk_table``: inode chunks from the inode btrees and
        directories decoded with numpy (``xfs_tables``)."""
        start = self._start_inode(path)
        with self.errors(path, "walk"):
            return self._tables().walk_table(path, start, tuple(exclude))

    def find_special(self, path: str = "/", exclude: tuple[str, ...] = (), bits: int | None = None):
        """Bulk version of ``FileSystem.find_special``: modes of the in-use inodes first;
        directories are read only when some inode has the bits."""
        from immutools.fs.table import SPECIAL_BITS

        start = self._start_inode(path)
        with self.errors(path, "walk"):
            return self._tables().find_special(path, start, tuple(exclude), SPECIAL_BITS if bits is None else bits)

    def _link_target(self, ref: Ref) -> str:
        if ref.node.size > 1024:  # XFS_SYMLINK_MAXLEN
            raise CorruptDataError(f"symlink of {ref.node.size} bytes")
        return ref.node.link

    # ---- extended attributes -----------------------------------------------------------------
    def _xattrs(self, ref: Ref) -> dict[str, bytes]:
        node = ref.node
        ino = node.inode
        if not ino.di_forkoff:
            return {}
        if ino.di_aformat == FMT_LOCAL:
            return self._shortform_attrs(node.attrfork().read())
        if ino.di_aformat == FMT_EXTENTS:
            return self._leaf_attrs(node)
        raise UnsupportedFeatureError(f"attribute fork format {ino.di_aformat} (btree) is not read")

    @staticmethod
    def _shortform_attrs(fork: bytes) -> dict[str, bytes]:
        """xfs_attr_sf_hdr {be16 totsize; u8 count; u8 pad} then {u8 namelen, valuelen, flags; name; value}."""
        if len(fork) < 4:
            raise CorruptDataError("shortform attribute header truncated")
        totsize, count = struct.unpack_from(">HB", fork, 0)
        area = fork[: min(totsize, len(fork))]
        out, pos = {}, 4
        for _ in range(count):
            if pos + 3 > len(area):
                raise CorruptDataError("shortform attribute entry truncated")
            namelen, valuelen, flags = area[pos], area[pos + 1], area[pos + 2]
            end = pos + 3 + namelen + valuelen
            if end > len(area):
                raise CorruptDataError("shortform attribute runs past its fork")
            name = _attr_name(flags, area[pos + 3 : pos + 3 + namelen])
            if name is not None:
                out[name] = bytes(area[pos + 3 + namelen : end])
            pos = end
        return out

    def _leaf_attrs(self, node) -> dict[str, bytes]:
        from dissect.xfs.xfs import fsb_to_bb, parse_fsblock

        xfs = self._fs
        nextents = node.attr_extents
        if nextents != 1:
            raise UnsupportedFeatureError(f"attribute fork with {nextents} extents (node format) is not read")
        rec = node.attrfork().read(16)
        if len(rec) != 16:
            raise CorruptDataError("attribute fork extent truncated")
        logical, fsblock, count, _flag = parse_fsblock(rec)
        agnum, blknum = fsb_to_bb(fsblock, xfs.sb.sb_agblklog)
        if agnum >= xfs.sb.sb_agcount or blknum >= xfs.sb.sb_agblocks or logical != 0:
            raise CorruptDataError("attribute fork extent points outside the filesystem")
        block = self.source.read_at((agnum * xfs.sb.sb_agblocks + blknum) * xfs.block_size, xfs.block_size)
        if len(block) != xfs.block_size:
            raise CorruptDataError("attribute leaf block beyond the end of the image")
        magic = struct.unpack_from(">H", block, 8)[0]
        if magic == ATTR3_LEAF_MAGIC:
            hdr = ATTR_LEAF_HDR_V5
            entry_count = struct.unpack_from(">H", block, 56)[0]
        elif magic == ATTR_LEAF_MAGIC:
            hdr = ATTR_LEAF_HDR_V4
            entry_count = struct.unpack_from(">H", block, 12)[0]
        else:
            raise UnsupportedFeatureError(f"attribute block magic 0x{magic:04x} (node format) is not read")
        if hdr + entry_count * 8 > len(block):
            raise CorruptDataError(f"attribute leaf claims {entry_count} entries")
        out = {}
        for i in range(entry_count):
            _hash, nameidx, flags = struct.unpack_from(">IHB", block, hdr + i * 8)
            if not flags & ATTR_LOCAL:
                raise UnsupportedFeatureError("remote attribute values are not read")
            # xfs_attr_leaf_name_local {be16 valuelen; u8 namelen; name; value}
            if nameidx + 3 > len(block):
                raise CorruptDataError("attribute name offset beyond its block")
            valuelen, namelen = struct.unpack_from(">HB", block, nameidx)
            start = nameidx + 3
            end = start + namelen + valuelen
            if end > len(block):
                raise CorruptDataError("attribute value runs past its block")
            name = _attr_name(flags, block[start : start + namelen])
            if name is not None:
                out[name] = bytes(block[start + namelen : end])
        return out
