"""btrfs over dissect.btrfs.

dissect.btrfs does the superblock, chunk mapping, B-trees, subvolumes, inodes and directories. We
read file data ourselves from the EXTENT_DATA items (layout from linux fs/btrfs/ctree.h
btrfs_file_extent_item), because dissect's extent stream needs ``backports.zstd`` for zstd (Flatcar's
/usr is zstd-compressed) and inflates compressed extents without any bound. Ours caps every
compressed extent at btrfs's own 128 KiB limit.

Subvolumes appear as directories, as they do under a mount; inode numbers restart in each
subvolume, so node keys are (subvolume id, inode). The filesystem root is the *default* subvolume
(what a mount without ``subvol=`` shows). ``subvolume_info(path)`` and ``subvolumes()`` report ids,
paths and the read-only flag.

Whole-tree metadata (``walk_table``, ``find_special``) reads each FS tree's leaves in bulk
(``btrfs_tables.py``) instead of a B-tree search per entry.

dissect.btrfs follows B-tree child pointers without checking that levels go down; a crafted pointer
loop would spin forever. ``_install_tree_checks`` adds that check (and a sane item count) to its
cursor, the one place all tree descents go through.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from collections import OrderedDict
from typing import Any, Iterator

from immutools.errors import CorruptDataError, NotFoundError, UnsupportedFeatureError
from immutools.fs.base import Stat
from immutools.fs.dissect_common import DissectFileSystem, Ref, decompress

# fs/btrfs/ctree.h and uapi/linux/btrfs_tree.h
EXTENT_DATA_KEY = 108
FILE_EXTENT_INLINE, FILE_EXTENT_REG, FILE_EXTENT_PREALLOC = 0, 1, 2
COMPRESS_CODECS = {1: "zlib", 2: "lzo", 3: "zstd"}
MAX_COMPRESSED = 128 * 1024        # BTRFS_MAX_COMPRESSED: both sides of a compressed extent
FILE_EXTENT_HEADER = 21            # generation, ram_bytes, compression, encryption, other_encoding, type
ROOT_SUBVOL_RDONLY = 1 << 0        # btrfs_root_item.flags
XATTR_ITEM_KEY = 24
MAX_TREE_LEVEL = 8                 # BTRFS_MAX_LEVEL
FS_TREE_OBJECTID = 5
EMPTY_SUBVOL_DIR_OBJECTID = 2
INODE_ITEM_KEY = 1
DIR_INDEX_KEY = 96
ROOT_ITEM_KEY = 132
ROOT_REF_KEY = 156


class EmptySubvolumeDir:
    """The placeholder directory a snapshot shows where its source had a nested subvolume."""

    def __init__(self, parent_id: int, subvolume_id: int):
        self.parent_id = parent_id
        self.subvolume_id = subvolume_id


def _install_tree_checks() -> None:
    from dissect.btrfs import tree
    from dissect.btrfs.c_btrfs import c_btrfs
    from dissect.btrfs.exceptions import Error

    if getattr(tree.Cursor.push, "_immutools_checked", False):
        return
    unchecked_push = tree.Cursor.push
    header_size = len(c_btrfs.btrfs_header)
    entry_size = min(len(c_btrfs.btrfs_item), len(c_btrfs.btrfs_key_ptr))

    def push(self, address: int, initial_index: int = 0) -> None:
        parent = self._header
        unchecked_push(self, address, initial_index)
        header = self._header
        max_items = (self.btree.btrfs.node_size - header_size) // entry_size
        if header.level >= MAX_TREE_LEVEL or (parent is not None and header.level != parent.level - 1):
            raise Error(f"tree node at {address:#x} has level {header.level} under a level "
                        f"{None if parent is None else parent.level} node (loop or damage)")
        if not 0 < header.nritems <= max_items:
            raise Error(f"tree node at {address:#x} has {header.nritems} items")

    push._immutools_checked = True
    tree.Cursor.push = push


class BtrfsFileSystem(DissectFileSystem):
    fstype = "btrfs"

    def _open(self, source) -> Any:
        from dissect.btrfs import Btrfs
        from dissect.btrfs.c_btrfs import c_btrfs

        _install_tree_checks()
        self._c = c_btrfs
        self._fs = Btrfs(source)
        sector = self._fs.sector_size
        if sector < 512 or sector > 65536 or sector & (sector - 1) or self._fs.node_size > 65536:
            raise CorruptDataError(f"btrfs: implausible sector size {sector} / node size {self._fs.node_size}")
        self.label = self._fs.label or None
        self.uuid = str(self._fs.uuid)
        self.default_subvolume_id = self._fs.default_subvolume.objectid
        self._extent_cache: OrderedDict[tuple, bytes] = OrderedDict()
        return self._fs.root

    # ---- inodes ------------------------------------------------------------------------------
    def _make_stat(self, ref: Ref) -> Stat:
        node = ref.node
        if isinstance(node, EmptySubvolumeDir):
            return Stat(mode=stat_mod.S_IFDIR | 0o755, size=0, nlink=1, inode=EMPTY_SUBVOL_DIR_OBJECTID)
        ino = node.inode
        mode = ino.mode
        rdev = None
        if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
            # The kernel stores its internal dev_t (MKDEV: 12-bit major above a 20-bit minor).
            rdev = os.makedev((ino.rdev >> 20) & 0xFFF, ino.rdev & 0xFFFFF)
        return Stat(
            mode=mode,
            size=ino.size,
            uid=ino.uid,
            gid=ino.gid,
            mtime=ino.mtime.sec + ino.mtime.nsec / 1e9,
            nlink=ino.nlink,
            inode=node.inum,
            rdev=rdev,
        )

    def _key(self, ref: Ref) -> Any:
        if isinstance(ref.node, EmptySubvolumeDir):
            return ("empty", ref.node.parent_id, ref.node.subvolume_id)
        return (ref.node.subvolume.objectid, ref.node.inum)

    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        node = ref.node
        if isinstance(node, EmptySubvolumeDir):
            return
        c = self._c
        cursor = node.subvolume.tree.cursor()
        # DIR_INDEX items, one entry each, in creation order; 0 and 1 would be "." and "..".
        for _item, data in cursor.iter(node.inum, DIR_INDEX_KEY, 2, ignore_offset=True):
            dir_item = c.btrfs_dir_item(data)
            name = dir_item.name.decode("utf-8", errors="surrogateescape")
            location = dir_item.location
            if location.type == ROOT_ITEM_KEY:
                if self._has_root_ref(node.subvolume.objectid, location.objectid):
                    yield name, self._fs.open_subvolume(location.objectid, node).root
                else:
                    # A snapshot keeps the entry of a subvolume nested in its source but not the
                    # subvolume; the kernel shows an empty directory there (inode.c new_simple_dir).
                    yield name, EmptySubvolumeDir(node.subvolume.objectid, location.objectid)
            elif location.type == INODE_ITEM_KEY:
                yield name, node.subvolume.inode(location.objectid, dir_item.type, node)
            else:
                raise CorruptDataError(f"directory entry {name!r} points to key type {location.type}")

    def _has_root_ref(self, parent_id: int, child_id: int) -> bool:
        try:
            self._fs._root_tree.find(parent_id, ROOT_REF_KEY, child_id)
        except KeyError:
            return False
        return True

    def _link_target(self, ref: Ref) -> str:
        size = self._stat_node(ref).size
        if size > 4096:
            raise CorruptDataError(f"symlink of {size} bytes")
        return self._read_file(ref, 0, size).decode("utf-8", errors="surrogateescape")

    # ---- file data ---------------------------------------------------------------------------
    def _extents(self, ref: Ref) -> list[tuple[int, int, Any]]:
        """(file offset, length, item data) of each EXTENT_DATA item, in file order."""
        if ref.extra is not None:
            return ref.extra
        node = ref.node
        size = self._stat_node(ref).size
        sector = self._fs.sector_size
        # Extents cover disjoint ranges of at least a sector: more items than that is damage.
        max_items = size // sector + 2
        out = []
        cursor = node.subvolume.tree.cursor()
        for item, data in cursor.iter(node.inum, EXTENT_DATA_KEY, 0, ignore_offset=True):
            if len(out) >= max_items:
                raise CorruptDataError(f"more than {max_items} extents for {size} bytes")
            data = bytes(data)
            if len(data) < FILE_EXTENT_HEADER:
                raise CorruptDataError("file extent item too short")
            ram_bytes, compression, encryption, other, etype = struct.unpack_from("<QBBHB", data, 8)
            if encryption or other:
                raise UnsupportedFeatureError("encrypted or encoded file extents")
            if compression and compression not in COMPRESS_CODECS:
                raise UnsupportedFeatureError(f"btrfs compression type {compression}")
            if etype == FILE_EXTENT_INLINE:
                length = ram_bytes
            elif etype in (FILE_EXTENT_REG, FILE_EXTENT_PREALLOC):
                if len(data) < FILE_EXTENT_HEADER + 32:
                    raise CorruptDataError("file extent item too short")
                length = struct.unpack_from("<Q", data, FILE_EXTENT_HEADER + 24)[0]
            else:
                raise CorruptDataError(f"file extent type {etype}")
            out.append((item.key.offset, length, data))
        ref.extra = out
        return out

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        end = offset + length
        out = bytearray()
        pos = offset
        for file_off, ext_len, data in self._extents(ref):
            if file_off + ext_len <= pos:
                continue
            if file_off >= end:
                break
            if file_off > pos:
                out += bytes(file_off - pos)  # a hole (no-holes feature: no item for it)
                pos = file_off
            take = min(end, file_off + ext_len) - pos
            out += self._extent_bytes(data, pos - file_off, take)
            pos += take
        if pos < end:
            out += bytes(end - pos)  # trailing hole
        return bytes(out)

    def _extent_bytes(self, data: bytes, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` within one file extent item's range."""
        ram_bytes, compression, _enc, _other, etype = struct.unpack_from("<QBBHB", data, 8)
        codec = COMPRESS_CODECS.get(compression)
        if etype == FILE_EXTENT_INLINE:
            payload = data[FILE_EXTENT_HEADER:]
            if codec:
                payload = self._inflate(codec, payload, min(ram_bytes, self._fs.node_size))
            piece = payload[start : start + length]
        else:
            disk_bytenr, disk_num_bytes, extent_offset, _num = struct.unpack_from("<QQQQ", data, FILE_EXTENT_HEADER)
            if etype == FILE_EXTENT_PREALLOC or disk_bytenr == 0:
                return bytes(length)
            if not codec:
                piece = self._read_logical(disk_bytenr + extent_offset + start, length)
            else:
                if disk_num_bytes > MAX_COMPRESSED or ram_bytes > MAX_COMPRESSED:
                    raise CorruptDataError(
                        f"compressed extent of {disk_num_bytes} -> {ram_bytes} bytes exceeds btrfs's 128 KiB"
                    )
                key = (disk_bytenr, disk_num_bytes, compression)
                plain = self._extent_cache.get(key)
                if plain is None:
                    raw = self._read_logical(disk_bytenr, disk_num_bytes)
                    plain = self._inflate(codec, raw, ram_bytes)
                    self._extent_cache[key] = plain
                    while len(self._extent_cache) > 16:
                        self._extent_cache.popitem(last=False)
                piece = plain[extent_offset + start : extent_offset + start + length]
        if len(piece) < length:
            # Compressed data may legitimately end before the extent's tail (zero-filled page).
            piece = piece + bytes(length - len(piece))
        return piece

    def _read_logical(self, address: int, length: int) -> bytes:
        stream = self._fs._logical_fh
        stream.seek(address)
        data = stream.read(length)
        if len(data) != length:
            raise CorruptDataError(f"extent at logical {address:#x} is outside the mapped chunks")
        return data

    def _inflate(self, codec: str, payload: bytes, ram_bytes: int) -> bytes:
        if codec != "lzo":
            return decompress(codec, payload, ram_bytes, what="btrfs extent")
        return self._inflate_lzo(payload, ram_bytes)

    def _inflate_lzo(self, payload: bytes, ram_bytes: int) -> bytes:
        """btrfs's LZO framing (fs/btrfs/lzo.c): le32 total length, then (le32 length, LZO1X data)
        segments of at most one sector each; a segment header never straddles a sector boundary."""
        sector = self._fs.sector_size
        if len(payload) < 4:
            raise CorruptDataError("lzo extent header truncated")
        total = struct.unpack_from("<I", payload, 0)[0]
        if total > len(payload) or total < 4:
            raise CorruptDataError(f"lzo extent claims {total} bytes in a {len(payload)}-byte extent")
        out = bytearray()
        pos = 4
        while pos < total and len(out) < ram_bytes:
            if sector - pos % sector < 4:
                pos += sector - pos % sector
                if pos >= total:
                    break
            seg_len = struct.unpack_from("<I", payload, pos)[0] if pos + 4 <= total else None
            if seg_len is None or pos + 4 + seg_len > total:
                raise CorruptDataError("lzo segment runs past its extent")
            pos += 4
            out += decompress("lzo", payload[pos : pos + seg_len], min(sector, ram_bytes - len(out)) or 1,
                              what="btrfs lzo segment")
            pos += seg_len
        return bytes(out[:ram_bytes])

    # ---- extended attributes -----------------------------------------------------------------
    def _xattrs(self, ref: Ref) -> dict[str, bytes]:
        node = ref.node
        out = {}
        cursor = node.subvolume.tree.cursor()
        for _item, data in cursor.iter(node.inum, XATTR_ITEM_KEY, 0, ignore_offset=True):
            data = bytes(data)
            # One item holds every xattr whose name hashes alike: a run of btrfs_dir_item
            # {disk_key location (17); le64 transid; le16 data_len; le16 name_len; u8 type} + name + data.
            pos = 0
            while pos + 30 <= len(data):
                data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
                end = pos + 30 + name_len + data_len
                if end > len(data):
                    raise CorruptDataError("xattr item runs past its leaf")
                name = data[pos + 30 : pos + 30 + name_len].decode("utf-8", errors="surrogateescape")
                out[name] = data[pos + 30 + name_len : end]
                pos = end
            if len(out) > 65536:
                raise CorruptDataError("more than 65536 xattrs on one inode")
        return out

    # ---- whole-tree metadata -----------------------------------------------------------------
    def _tables(self):
        from immutools.fs.btrfs_tables import BtrfsTables

        if getattr(self, "_bulk_tables", None) is None:
            self._bulk_tables = BtrfsTables(self)
        return self._bulk_tables

    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()):
        """FS tree leaves decoded in bulk (``btrfs_tables.py``) instead of a B-tree search per entry."""
        start = self._resolve(path, True)
        with self.errors(path, "walk"):
            return self._tables().walk_table(path, exclude, start)

    def find_special(self, path: str = "/", exclude: tuple[str, ...] = (), bits: int | None = None):
        """From the INODE_ITEMs' mode bits first, names only for the hits (``btrfs_tables.py``).
        Below a path other than the root, the answer of ``walk_table``."""
        if path.strip("/"):
            return super().find_special(path, exclude, bits)
        node = self._root_ref.node
        with self.errors(path, "find special files"):
            found = self._tables().find_special(node.subvolume.objectid, exclude, bits)
        return found if found is not None else super().find_special(path, exclude, bits)

    # ---- subvolumes --------------------------------------------------------------------------
    def _subvolume_record(self, subvol) -> dict:
        root_item = subvol.tree.root_item
        return {
            "id": subvol.objectid,
            "path": subvol.path,
            "uuid": str(subvol.uuid),
            "readonly": bool(root_item.flags & ROOT_SUBVOL_RDONLY),
            "generation": root_item.generation,
            "default": subvol.objectid == self.default_subvolume_id,
        }

    def subvolume_info(self, path: str) -> dict | None:
        """The subvolume whose root ``path`` is ({id, path, uuid, readonly, generation, default}),
        or None when ``path`` is an ordinary directory."""
        ref = self._resolve(path, True)
        with self.errors(ref.path, "subvolume info"):
            if isinstance(ref.node, EmptySubvolumeDir):
                return None
            subvol = ref.node.subvolume
            if ref.node.inum != subvol.tree.root_item.root_dirid:
                return None
            return self._subvolume_record(subvol)

    def containing_subvolume(self, path: str) -> dict:
        """The subvolume that holds ``path``."""
        ref = self._resolve(path, False)
        with self.errors(ref.path, "subvolume info"):
            if isinstance(ref.node, EmptySubvolumeDir):
                return self._subvolume_record(self._fs.open_subvolume(ref.node.parent_id))
            return self._subvolume_record(ref.node.subvolume)

    def subvolumes(self) -> list[dict]:
        """Every subvolume (the top-level FS tree included), with paths from the top level."""
        out = []
        with self.errors("/", "list subvolumes"):
            for subvol in self._fs.subvolumes():
                out.append(self._subvolume_record(subvol))
                if len(out) > self.limits.max_dir_entries:
                    raise CorruptDataError("btrfs: subvolume list does not end")
        return out

    def open_subvolume_path(self, subvol_path: str) -> "BtrfsFileSystem":
        """A view of this filesystem rooted at another subvolume (like ``mount -o subvol=``)."""
        with self.errors(subvol_path, "open subvolume"):
            name = subvol_path.strip("/")
            subvol = self._fs.find_subvolume(name) if name else self._fs.fs_tree
        if subvol is None:
            raise NotFoundError(f"btrfs: no subvolume {subvol_path!r}")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._listings = OrderedDict()
        view._root_ref = Ref(subvol.root, "/")
        view.warnings = []
        view._bulk_tables = None
        return view
