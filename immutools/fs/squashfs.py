"""squashfs 4.0 over dissect.squashfs.

dissect.squashfs does the superblock, metadata blocks, inodes, directories, fragments and file
blocks. We add:

* file reading (block lists and fragment tails), see ``_read_file``;
* our own decompressors, bounded by the block size (a crafted block cannot inflate past it), and
  not needing ``backports.zstd``: dissect picks its codec while opening, so it is opened on a view of
  the image whose superblock names gzip (which it can always set up), then handed ours;
* extended attributes, which dissect does not parse (format: squashfs-tools squashfs_fs.h and
  linux fs/squashfs/xattr.c: an id table of (ref, count, size) pointing into an xattr metadata area
  of (type, name, value) records; out-of-line values hold a reference instead of the value);
* device numbers (linux new_decode_dev), hard link counts for the short inode types;
* whole-tree metadata (``walk_table``, and ``find_special`` over it) from the inode and directory
  tables decoded in bulk (``squashfs_tables.py``), not one dissect object per entry.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Iterator

from immutools.errors import CorruptDataError, UnsupportedFeatureError
from immutools.fs.base import Stat
from immutools.fs.dissect_common import DissectFileSystem, Ref, decompress
from immutools.image.source import ByteSource

SQUASHFS_MAGIC = b"hsqs"
COMPRESSION_OFFSET = 20
CODECS = {1: "zlib", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
GZIP_ID = 1
METADATA_SIZE = 8192
INVALID = 0xFFFFFFFFFFFFFFFF
NO_XATTR = 0xFFFFFFFF
NO_FRAGMENT = 0xFFFFFFFF
DATA_UNCOMPRESSED_BIT = 1 << 24   # SQUASHFS_COMPRESSED_BIT_BLOCK
XATTR_PREFIXES = {0: "user.", 1: "trusted.", 2: "security."}
XATTR_VALUE_OOL = 0x100
XATTR_SIZE_MAX = 65536           # linux XATTR_SIZE_MAX
MAX_XATTRS_PER_INODE = 65536


class _GzipNamedView:
    """Read-only file view of the image whose superblock compression field reads as gzip."""

    def __init__(self, source: ByteSource):
        self._source = source
        self._pos = 0
        self.size = source.size

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self._pos)
        data = bytearray(self._source.read_at(self._pos, n))
        lo, hi = COMPRESSION_OFFSET, COMPRESSION_OFFSET + 2
        if self._pos < hi and self._pos + len(data) > lo:
            patched = bytearray(self._source.read_at(0, hi))
            patched[lo:hi] = struct.pack("<H", GZIP_ID)
            for i in range(max(lo, self._pos), min(hi, self._pos + len(data))):
                data[i - self._pos] = patched[i]
        self._pos += len(data)
        return bytes(data)


class _BoundedCodec:
    """Stands in for dissect's compression object: ``decompress(data, expected)``."""

    def __init__(self, codec: str, block_size: int):
        self.codec = codec
        # Metadata blocks hold 8 KiB, data blocks one block; nothing inflates past the larger.
        self.max_out = max(block_size, METADATA_SIZE)

    def decompress(self, data: bytes, expected: int) -> bytes:
        return decompress(self.codec, data, self.max_out, what="squashfs block")


def _decode_dev(dev: int) -> int:
    """linux include/linux/kdev_t.h new_decode_dev."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


class SquashFileSystem(DissectFileSystem):
    fstype = "squashfs"

    def _open(self, source: ByteSource) -> Any:
        from dissect.squashfs import SquashFS

        head = source.read_at(0, 96)
        if len(head) < 96 or head[:4] != SQUASHFS_MAGIC:
            raise CorruptDataError("squashfs: no superblock")
        comp_id = struct.unpack_from("<H", head, COMPRESSION_OFFSET)[0]
        codec = CODECS.get(comp_id)
        if codec is None:
            raise UnsupportedFeatureError(f"squashfs: unknown compression id {comp_id}")
        self.compression = codec
        fs = SquashFS(_GzipNamedView(source))
        fs.fh = source
        if fs.block_size & (fs.block_size - 1) or not 4096 <= fs.block_size <= 1 << 20 or 1 << fs.block_log != fs.block_size:
            raise CorruptDataError(f"squashfs: invalid block size {fs.block_size}")
        fs._compression = _BoundedCodec(codec, fs.block_size)
        self._fs = fs
        self._xattr_table = None
        return fs.root

    # ---- inodes ------------------------------------------------------------------------------
    def _make_stat(self, ref: Ref) -> Stat:
        node = ref.node
        from dissect.squashfs.c_squashfs import TYPE_MAP

        hdr = node.header
        if not 1 <= hdr.inode_type < len(TYPE_MAP):
            raise CorruptDataError(f"unknown inode type {hdr.inode_type}")
        # dissect takes the type from the directory entry; the kernel takes it from the inode.
        if TYPE_MAP[hdr.inode_type] != node.type:
            raise CorruptDataError("inode type disagrees with its directory entry")
        mode = (hdr.mode & 0o7777) | node.type
        size = node.size or 0
        rdev = _decode_dev(hdr.rdev) if node.is_device() else None
        nlink = getattr(hdr, "nlink", 1)
        return Stat(
            mode=mode,
            size=size,
            uid=node.uid,
            gid=node.gid,
            mtime=float(hdr.mtime),
            nlink=nlink,
            inode=hdr.inode_number,
            rdev=rdev,
        )

    def _key(self, ref: Ref) -> Any:
        return (ref.node.block, ref.node.offset)

    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        for child in ref.node.iterdir():
            yield child.name, child

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        """File data: full blocks from the block list, the tail from a fragment (squashfs_fs.h).

        Ours, because dissect 1.12's file stream re-reads the fragment once per tail-length of the
        requested range (a 3-byte tail read as a 128 KiB chunk: 40,000 copies), and reads the whole
        block list up front, however large a damaged size claims the file is."""
        fs = self._fs
        hdr = ref.node.header
        bs = fs.block_size
        file_size = hdr.file_size
        has_fragment = hdr.fragment != NO_FRAGMENT
        full_blocks = file_size // bs if has_fragment else -(-file_size // bs)
        end = offset + length
        out = bytearray()
        for index in range(offset // bs, -(-end // bs)):
            block_start = index * bs
            want = min(bs, file_size - block_start)
            if index < full_blocks:
                sizes, positions = self._block_list(ref, index + 1)
                stored = sizes[index] & ~DATA_UNCOMPRESSED_BIT
                if stored == 0:
                    data = bytes(want)  # a sparse block
                else:
                    if stored > bs:
                        raise CorruptDataError(f"data block {index} claims {stored} bytes on disk")
                    _next, data = fs._read_block(positions[index], sizes[index])
            else:
                data = self._fragment_tail(hdr, file_size - block_start)
            if len(data) < want:
                raise CorruptDataError(f"data block {index} holds {len(data)} of {want} bytes")
            lo = max(offset, block_start) - block_start
            hi = min(end, block_start + want) - block_start
            out += data[lo:hi]
        return bytes(out)

    def _block_list(self, ref: Ref, count: int) -> tuple[list[int], list[int]]:
        """The first ``count`` block sizes of a file and their disk positions (read incrementally)."""
        sizes, positions, cursor = ref.extra if ref.extra else ([], [], None)
        if len(sizes) < count:
            node = ref.node
            block, offset = cursor if cursor else (node.data_block, node.data_offset)
            more = count - len(sizes)
            block, offset, raw = self._fs._read_metadata(block, offset, more * 4)
            if len(raw) != more * 4:
                raise CorruptDataError("block list runs past the end of the image")
            position = positions[-1] + (sizes[-1] & ~DATA_UNCOMPRESSED_BIT) if sizes else node.header.start_block
            for size in struct.unpack(f"<{more}I", raw):
                sizes.append(size)
                positions.append(position)
                position += size & ~DATA_UNCOMPRESSED_BIT
            ref.extra = (sizes, positions, (block, offset))
        return sizes, positions

    def _fragment_tail(self, hdr, tail: int) -> bytes:
        fs = self._fs
        if hdr.fragment >= fs.sb.fragments:
            raise CorruptDataError(f"fragment {hdr.fragment} beyond {fs.sb.fragments} fragments")
        entry = fs._lookup_fragment(hdr.fragment)
        if entry.size & ~DATA_UNCOMPRESSED_BIT > fs.block_size:
            raise CorruptDataError(f"fragment block claims {entry.size & ~DATA_UNCOMPRESSED_BIT} bytes")
        _next, data = fs._read_block(entry.start_block, entry.size)
        return data[hdr.offset : hdr.offset + tail]

    def _link_target(self, ref: Ref) -> str:
        if ref.node.header.symlink_size > 4096:
            raise CorruptDataError(f"symlink of {ref.node.header.symlink_size} bytes")
        return ref.node.link

    # ---- extended attributes -----------------------------------------------------------------
    def _xattr_ids(self) -> tuple[int, int, list[int]]:
        """(xattr_table_start, number of ids, metadata block pointers of the id table)."""
        if self._xattr_table is None:
            fs = self._fs
            start = fs.sb.xattr_id_table_start
            if start == INVALID:
                self._xattr_table = (0, 0, [])
            else:
                head = self.source.read_at(start, 16)
                if len(head) != 16:
                    raise CorruptDataError("xattr id table beyond the end of the image")
                kv_start, ids = struct.unpack_from("<QI", head, 0)
                blocks = (ids * 16 + METADATA_SIZE - 1) // METADATA_SIZE
                raw = self.source.read_at(start + 16, blocks * 8)
                if len(raw) != blocks * 8:
                    raise CorruptDataError("xattr id table beyond the end of the image")
                self._xattr_table = (kv_start, ids, list(struct.unpack(f"<{blocks}Q", raw)))
        return self._xattr_table

    def _xattrs(self, ref: Ref) -> dict[str, bytes]:
        index = getattr(ref.node.header, "xattr", NO_XATTR)
        if index == NO_XATTR:
            return {}
        kv_start, ids, pointers = self._xattr_ids()
        if index >= ids:
            raise CorruptDataError(f"xattr index {index} beyond {ids} ids")
        fs = self._fs
        block, offset = divmod(index * 16, METADATA_SIZE)
        _, _, entry = fs._read_metadata(pointers[block], offset, 16)
        xref, count, _size = struct.unpack("<QII", entry)
        if count > MAX_XATTRS_PER_INODE:
            raise CorruptDataError(f"{count} xattrs on one inode")
        blk, off = kv_start + (xref >> 16), xref & 0xFFFF
        out = {}
        for _ in range(count):
            blk, off, head = fs._read_metadata(blk, off, 4)
            xtype, name_size = struct.unpack("<HH", head)
            blk, off, name = fs._read_metadata(blk, off, name_size)
            blk, off, vhead = fs._read_metadata(blk, off, 4)
            vsize = struct.unpack("<I", vhead)[0]
            if xtype & XATTR_VALUE_OOL:
                if vsize != 8:
                    raise CorruptDataError("out-of-line xattr reference has the wrong size")
                blk, off, vref_raw = fs._read_metadata(blk, off, 8)
                vref = struct.unpack("<Q", vref_raw)[0]
                vblk, voff, vhead = fs._read_metadata(kv_start + (vref >> 16), vref & 0xFFFF, 4)
                vsize = struct.unpack("<I", vhead)[0]
                if vsize > XATTR_SIZE_MAX:
                    raise CorruptDataError(f"xattr value of {vsize} bytes")
                _, _, value = fs._read_metadata(vblk, voff, vsize)
            else:
                if vsize > XATTR_SIZE_MAX:
                    raise CorruptDataError(f"xattr value of {vsize} bytes")
                blk, off, value = fs._read_metadata(blk, off, vsize)
            prefix = XATTR_PREFIXES.get(xtype & 0xFF)
            if prefix is None:
                raise CorruptDataError(f"unknown xattr type {xtype}")
            if len(value) != vsize or len(name) != name_size:
                raise CorruptDataError("xattr runs past the end of the image")
            out[prefix + name.decode("utf-8", errors="surrogateescape")] = bytes(value)
        return out

    # ---- whole-tree metadata -----------------------------------------------------------------
    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()):
        """Bulk-decoded inode and directory tables (``squashfs_tables.py``) instead of one dissect
        object per entry."""
        from immutools.fs.squashfs_tables import SquashTables

        start = self._resolve(path, True)
        with self.errors(path, "walk"):
            if getattr(self, "_tables", None) is None:
                self._tables = SquashTables(self)
            return self._tables.walk_table(path, exclude, start)
