"""btrfs filesystem trees read leaf by leaf in bulk, for whole-tree metadata walks.

Our own code because dissect.btrfs reaches every inode through a cursor descent and a cstruct
object per item (a B-tree search per directory entry). Here each subvolume's FS tree is read once,
node by node from its root (``btrfs_header``: nritems le32 at 96, level u8 at 100, 101 bytes;
internal nodes hold ``btrfs_key_ptr`` {disk key, le64 blockptr, le64 generation} of 33 bytes, leaves
``btrfs_item`` {disk key, le32 offset, le32 size} of 25 bytes with data offsets counted from the
end of the header), and the item headers of a batch of leaves are decoded together with numpy:

* INODE_ITEM (type 1): ``btrfs_inode_item`` size le64 at 16, nlink le32 at 40, uid at 44, gid at
  48, mode at 52;
* DIR_INDEX (type 96): ``btrfs_dir_item`` {location disk key (objectid, type, offset), transid,
  data_len le16 at 25, name_len le16 at 27, type u8 at 29, name at 30}: key objectid is the
  directory, location the child (an INODE_ITEM, or a ROOT_ITEM for a subvolume);
* INODE_REF (type 12) / INODE_EXTREF (13), only for ``find_special``'s hits: names and parents.

Layouts: linux ``include/uapi/linux/btrfs_tree.h``. The chunk map and the root tree stay
dissect.btrfs's (``_read_node`` maps logical addresses). Every node read is checked (its own
address in the header, levels going down by one, item counts and offsets inside the node, each
node visited once), so a damaged tree ends with a warning instead of a loop.

Subvolumes look as they do under a mount and under ``BtrfsFileSystem.walk``: a DIR_INDEX entry
pointing at a ROOT_ITEM with a ROOT_REF is that subvolume's root directory (its tree read in turn);
without a ROOT_REF (a snapshot of a parent that had a nested subvolume) it is an empty directory.
"""

from __future__ import annotations

import stat as stat_mod
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from immutools.errors import CorruptDataError, ImmutoolsError, LimitExceededError
from immutools.fs.bulk import (
    Frontier,
    Level,
    breadth_first_table,
    empty_table,
    gather_le,
    joined_padded,
    normalize_paths,
)
from immutools.fs.table import SPECIAL_BITS, EntryTable

if TYPE_CHECKING:
    from immutools.fs.base import Stat
    from immutools.fs.btrfs import BtrfsFileSystem

HEADER_SIZE = 101
KEY_PTR_SIZE = 33
ITEM_SIZE = 25
MAX_LEVEL = 8
INODE_ITEM, INODE_REF, INODE_EXTREF, DIR_INDEX, ROOT_ITEM = 1, 12, 13, 96, 132
ROOT_BACKREF, ROOT_REF = 144, 156
INODE_ITEM_SIZE = 160
DIR_ITEM_HEAD = 30
EMPTY_SUBVOL_DIR_OBJECTID = 2
LEAF_BATCH = 1024            # leaves decoded together (16 MiB at the default 16 KiB node size)
MAX_WARNINGS_PER_LEVEL = 5


@dataclass
class TreeColumns:
    """What a walk needs from one FS tree, in key order."""

    ino_obj: np.ndarray      # INODE_ITEM objectids (sorted)
    mode: np.ndarray
    uid: np.ndarray
    gid: np.ndarray
    size: np.ndarray
    nlink: np.ndarray
    dir_parent: np.ndarray   # DIR_INDEX key objectids (sorted)
    dir_child: np.ndarray    # location objectid
    dir_ctype: np.ndarray    # location key type
    dir_names: list[bytes] | None


class BtrfsTables:
    def __init__(self, fs: "BtrfsFileSystem"):
        self.fs = fs
        self.btrfs = fs._fs
        self.node_size = self.btrfs.node_size
        self.warnings = fs.warnings
        self._columns: dict[tuple[int, bool], TreeColumns] = {}

    # ---- reading a tree -----------------------------------------------------------------------
    def _chunk_map(self):
        """Per chunk (sorted by logical offset): start, end, physical start of the first stripe
        and its device, for SINGLE and DUP chunks (first copy) on a device we read directly;
        other profiles go through dissect's stream."""
        if getattr(self, "_chunks", None) is None:
            from dissect.btrfs.c_btrfs import BTRFS_BLOCK_GROUP, BTRFS_BLOCK_GROUP_PROFILE_MASK

            direct = (0, int(BTRFS_BLOCK_GROUP.DUP))
            rows = []
            for chunk in self.btrfs._logical_fh.chunks:
                stripe = chunk.stripes[0]
                if (int(chunk.type) & int(BTRFS_BLOCK_GROUP_PROFILE_MASK)) in direct and stripe.fh is not None \
                        and hasattr(stripe.fh, "read_at"):
                    rows.append((chunk.offset, chunk.offset + chunk.length, stripe.offset, stripe.fh))
            self._chunks = (np.asarray([r[0] for r in rows], dtype=np.int64),
                            np.asarray([r[1] for r in rows], dtype=np.int64),
                            np.asarray([r[2] for r in rows], dtype=np.int64), [r[3] for r in rows])
        return self._chunks

    def _read_nodes(self, addresses: list[int]) -> list[bytes | None]:
        """The nodes at ``addresses`` (None where unreadable); nodes next to each other on disk
        are read with one call."""
        ns = self.node_size
        out: list[bytes | None] = [None] * len(addresses)
        lo, hi, phys0, devices = self._chunk_map()
        addr = np.asarray(addresses, dtype=np.int64)
        i = np.searchsorted(lo, addr, side="right") - 1
        ic = np.clip(i, 0, max(len(lo) - 1, 0))
        direct = (i >= 0) & (addr + ns <= hi[ic]) if len(lo) else np.zeros(len(addr), bool)
        phys = np.where(direct, phys0[ic] + addr - lo[ic], -1) if len(lo) else addr
        runs: list[tuple[object, int, list[int]]] = []   # (device, physical start, indexes)
        for k, (ok, p, c) in enumerate(zip(direct.tolist(), phys.tolist(), ic.tolist())):
            if not ok:
                try:
                    out[k] = self.btrfs._read_node(addresses[k])
                except Exception:  # noqa: BLE001 - dissect raises anything on an unmapped address
                    out[k] = None
                continue
            dev = devices[c]
            if runs and runs[-1][0] is dev and runs[-1][1] + ns * len(runs[-1][2]) == p:
                runs[-1][2].append(k)
            else:
                runs.append((dev, p, [k]))
        for dev, start, members in runs:
            data = dev.read_at(start, ns * len(members))
            for j, k in enumerate(members):
                out[k] = data[j * ns: (j + 1) * ns]
        return out

    def _leaves(self, subvol_id: int):
        """Yield batches of leaves (lists of node bytes) of a subvolume's FS tree, in key order."""
        tree = self.btrfs.open_subvolume(subvol_id).tree
        root_item = tree.root_item
        ns = self.node_size
        max_items = (ns - HEADER_SIZE) // ITEM_SIZE
        stack: list[tuple[int, int | None, bytes | None]] = [(root_item.bytenr, None, None)]
        visited: set[int] = set()
        batch: list[bytes] = []
        while stack:
            address, want_level, node = stack.pop()
            if address in visited:
                self.warnings.append(f"btrfs: subvolume {subvol_id}: tree node {address:#x} referenced twice; skipped")
                continue
            visited.add(address)
            if len(visited) * ns > self.fs.source.size * 2:
                raise CorruptDataError(f"btrfs: subvolume {subvol_id}: tree has more nodes than the image holds")
            if node is None:
                node = self._read_nodes([address])[0]
            if node is None or len(node) != ns:
                self.warnings.append(f"btrfs: subvolume {subvol_id}: tree node {address:#x} unreadable; skipped")
                continue
            bytenr, = struct.unpack_from("<Q", node, 48)
            nritems, level = struct.unpack_from("<IB", node, 96)
            problem = None
            if bytenr != address:
                problem = f"header says {bytenr:#x}"
            elif level >= MAX_LEVEL or (want_level is not None and level != want_level):
                problem = f"level {level} where {want_level} belongs"
            elif not 0 < nritems <= (max_items if level == 0 else (ns - HEADER_SIZE) // KEY_PTR_SIZE):
                problem = f"{nritems} items"
            if problem:
                self.warnings.append(f"btrfs: subvolume {subvol_id}: tree node {address:#x} is damaged ({problem}); skipped")
                continue
            if level == 0:
                batch.append(node)
                if len(batch) >= LEAF_BATCH:
                    yield batch
                    batch = []
                continue
            pointers = list(struct.unpack_from("<" + "17xQ8x" * nritems, node, HEADER_SIZE))
            children = self._read_nodes(pointers)
            stack.extend((p, level - 1, child) for p, child in zip(reversed(pointers), reversed(children)))
        if batch:
            yield batch

    def columns(self, subvol_id: int, names: bool) -> TreeColumns:
        """The inode and directory-index columns of one subvolume (cached per subvolume)."""
        key = (subvol_id, names)
        cached = self._columns.get(key) or self._columns.get((subvol_id, True))
        if cached is not None:
            return cached
        parts: dict[str, list] = {k: [] for k in ("ino_obj", "mode", "uid", "gid", "size", "nlink",
                                                  "dir_parent", "dir_child", "dir_ctype")}
        dir_names: list[bytes] = []
        ns = self.node_size
        max_items = (ns - HEADER_SIZE) // ITEM_SIZE
        for batch in self._leaves(subvol_id):
            blob, buf = joined_padded(batch)
            leaves = buf[: len(batch) * ns].reshape(len(batch), ns)
            counts = leaves[:, 96:100].copy().view("<u4").reshape(-1).astype(np.int64)
            # Item headers are fixed 25-byte records after each leaf's header: one strided view.
            items = leaves[:, HEADER_SIZE: HEADER_SIZE + max_items * ITEM_SIZE].reshape(len(batch), max_items, ITEM_SIZE)
            used = np.arange(max_items)[None, :] < counts[:, None]
            records = items[used]                                   # (items in the batch, 25)
            leaf_of = np.repeat(np.arange(len(batch), dtype=np.int64), counts)
            objectid = records[:, 0:8].copy().view("<u8").reshape(-1)
            itype = records[:, 8]
            doff = records[:, 17:21].copy().view("<u4").reshape(-1).astype(np.int64)
            dsize = records[:, 21:25].copy().view("<u4").reshape(-1).astype(np.int64)
            dpos = leaf_of * ns + HEADER_SIZE + doff
            inside = (HEADER_SIZE + doff + dsize <= ns) & (doff >= 0)
            # INODE_ITEMs
            sel = np.flatnonzero((itype == INODE_ITEM) & inside & (dsize >= INODE_ITEM_SIZE))
            p = dpos[sel]
            parts["ino_obj"].append(objectid[sel])
            parts["size"].append(gather_le(buf, p + 16, 8))
            parts["nlink"].append(gather_le(buf, p + 40, 4))
            parts["uid"].append(gather_le(buf, p + 44, 4))
            parts["gid"].append(gather_le(buf, p + 48, 4))
            parts["mode"].append(gather_le(buf, p + 52, 4))
            # DIR_INDEX items (one entry each; index 0 and 1 are never used for real entries)
            sel = np.flatnonzero((itype == DIR_INDEX) & inside & (dsize >= DIR_ITEM_HEAD))
            p = dpos[sel]
            name_len = gather_le(buf, p + 27, 2).astype(np.int64)
            fits = DIR_ITEM_HEAD + name_len <= dsize[sel]
            if not fits.all():
                self.warnings.append(f"btrfs: subvolume {subvol_id}: {int((~fits).sum())} directory entries overrun their items; skipped")
                sel, p, name_len = sel[fits], p[fits], name_len[fits]
            parts["dir_parent"].append(objectid[sel])
            parts["dir_child"].append(gather_le(buf, p, 8))
            parts["dir_ctype"].append(buf[p + 8].astype(np.uint8))
            if names:
                starts = (p + DIR_ITEM_HEAD).tolist()
                dir_names.extend([blob[a: a + n] for a, n in zip(starts, name_len.tolist())])
            bad = int((~inside).sum())
            if bad:
                self.warnings.append(f"btrfs: subvolume {subvol_id}: {bad} items point outside their leaf; skipped")

        def cat(k, dtype):
            return np.concatenate(parts[k]).astype(dtype, copy=False) if parts[k] else np.zeros(0, dtype)

        cols = TreeColumns(
            ino_obj=cat("ino_obj", np.uint64), mode=cat("mode", np.uint32), uid=cat("uid", np.uint32),
            gid=cat("gid", np.uint32), size=cat("size", np.uint64), nlink=cat("nlink", np.uint32),
            dir_parent=cat("dir_parent", np.uint64), dir_child=cat("dir_child", np.uint64),
            dir_ctype=cat("dir_ctype", np.uint8), dir_names=dir_names if names else None,
        )
        if np.any(np.diff(cols.ino_obj.astype(np.int64)) < 0) or np.any(np.diff(cols.dir_parent.astype(np.int64)) < 0):
            # Keys out of order: a damaged tree. Sort so lookups still work; warn once.
            self.warnings.append(f"btrfs: subvolume {subvol_id}: tree keys out of order (damaged tree)")
            o = np.argsort(cols.ino_obj, kind="stable")
            for f in ("ino_obj", "mode", "uid", "gid", "size", "nlink"):
                setattr(cols, f, getattr(cols, f)[o])
            o = np.argsort(cols.dir_parent, kind="stable")
            for f in ("dir_parent", "dir_child", "dir_ctype"):
                setattr(cols, f, getattr(cols, f)[o])
            if cols.dir_names is not None:
                cols.dir_names = [cols.dir_names[i] for i in o]
        self._columns[key] = cols
        return cols

    def _has_root_ref(self, parent_id: int, child_id: int) -> bool:
        return self.fs._has_root_ref(parent_id, child_id)

    # ---- walk_table ---------------------------------------------------------------------------
    def expand(self, frontier: list[Frontier]) -> Level:
        by_subvol: dict[int, list[tuple[int, int]]] = {}
        for slot, item in enumerate(frontier):
            subvol_id, dir_obj = item.handle
            by_subvol.setdefault(subvol_id, []).append((slot, dir_obj))
        levels = []
        for subvol_id, dirs in by_subvol.items():
            try:
                levels.append(self._expand_subvol(frontier, subvol_id, dirs))
            except LimitExceededError:
                raise
            except ImmutoolsError as exc:
                self.warnings.append(f"btrfs: subvolume {subvol_id}: {exc}; not listed")
        levels = [lv for lv in levels if len(lv)]
        if not levels:
            return Level.empty()
        if len(levels) == 1:
            return levels[0]
        offset = 0
        dirs_all = []
        for lv in levels:
            dirs_all.extend((i + offset, h, k) for i, h, k in lv.dirs)
            offset += len(lv)
        names: list[str] = []
        for lv in levels:
            names.extend(lv.names)
        merged = Level(np.concatenate([lv.slot for lv in levels]), names,
                       *(np.concatenate([getattr(lv, c) for lv in levels])
                         for c in ("mode", "uid", "gid", "size", "inode", "nlink")))
        merged.dirs = dirs_all
        return merged

    def _expand_subvol(self, frontier: list[Frontier], subvol_id: int, dirs: list[tuple[int, int]]) -> Level:
        cols = self.columns(subvol_id, names=True)
        parents = np.asarray([d for _s, d in dirs], dtype=np.uint64)
        lo = np.searchsorted(cols.dir_parent, parents, side="left")
        hi = np.searchsorted(cols.dir_parent, parents, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total > self.fs.limits.max_walk_entries:
            raise LimitExceededError(f"btrfs walk: more than {self.fs.limits.max_walk_entries} entries")
        rows = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(total)
        slot = np.repeat(np.asarray([s for s, _d in dirs], dtype=np.int64), counts)
        child = cols.dir_child[rows]
        ctype = cols.dir_ctype[rows]
        names = [cols.dir_names[i].decode("utf-8", "surrogateescape") for i in rows.tolist()]
        # Inode attributes of the ordinary children, from this tree's INODE_ITEMs.
        at = np.clip(np.searchsorted(cols.ino_obj, child), 0, max(len(cols.ino_obj) - 1, 0))
        found = (len(cols.ino_obj) > 0) & (cols.ino_obj[at] == child) if len(cols.ino_obj) else np.zeros(total, bool)
        is_inode = ctype == INODE_ITEM
        mode = np.where(found, cols.mode[at] if len(cols.ino_obj) else 0, 0).astype(np.uint32)
        uid = np.where(found, cols.uid[at] if len(cols.ino_obj) else 0, 0).astype(np.uint32)
        gid = np.where(found, cols.gid[at] if len(cols.ino_obj) else 0, 0).astype(np.uint32)
        size = np.where(found, cols.size[at] if len(cols.ino_obj) else 0, 0).astype(np.uint64)
        nlink = np.where(found, cols.nlink[at] if len(cols.ino_obj) else 0, 0).astype(np.uint32)
        inode = child.astype(np.uint64)
        good = is_inode & found
        handles: dict[int, tuple[int, int]] = {}
        # Subvolume entries: the nested subvolume's root directory, or an empty directory.
        for i in np.flatnonzero(ctype == ROOT_ITEM).tolist():
            child_id = int(child[i])
            try:
                if self._has_root_ref(subvol_id, child_id):
                    sub_tree = self.btrfs.open_subvolume(child_id).tree
                    root_dirid = int(sub_tree.root_item.root_dirid)
                    sub = self.columns(child_id, names=True)
                    j = int(np.searchsorted(sub.ino_obj, root_dirid))
                    if j >= len(sub.ino_obj) or int(sub.ino_obj[j]) != root_dirid:
                        raise CorruptDataError(f"root directory {root_dirid} has no inode item")
                    mode[i], uid[i], gid[i] = sub.mode[j], sub.uid[j], sub.gid[j]
                    size[i], nlink[i], inode[i] = sub.size[j], sub.nlink[j], root_dirid
                    handles[i] = (child_id, root_dirid)
                else:
                    mode[i], uid[i], gid[i] = stat_mod.S_IFDIR | 0o755, 0, 0
                    size[i], nlink[i], inode[i] = 0, 1, EMPTY_SUBVOL_DIR_OBJECTID
                good[i] = True
            except ImmutoolsError as exc:
                self.warnings.append(f"btrfs: subvolume {child_id}: {exc}; not listed")
            except Exception as exc:  # noqa: BLE001 - dissect raises anything on a damaged root tree
                self.warnings.append(f"btrfs: subvolume {child_id}: unreadable ({type(exc).__name__}); not listed")
        bad_names = [i for i, n in enumerate(names) if not n or "/" in n or n in (".", "..")]
        if bad_names:
            good[bad_names] = False
        if not good.all():
            bad = np.flatnonzero(~good)
            for i in bad[:MAX_WARNINGS_PER_LEVEL].tolist():
                why = "invalid name" if i in bad_names else "no inode item (or an unknown entry type)"
                self.warnings.append(f"btrfs: {frontier[int(slot[i])].path.rstrip('/')}/{names[i]!r}: {why}, skipped")
            if len(bad) > MAX_WARNINGS_PER_LEVEL:
                self.warnings.append(f"btrfs: {len(bad) - MAX_WARNINGS_PER_LEVEL} more damaged entries skipped")
        keep = np.flatnonzero(good)
        level = Level(slot=slot[keep], names=[names[i] for i in keep.tolist()], mode=mode[keep], uid=uid[keep],
                      gid=gid[keep], size=size[keep], inode=inode[keep], nlink=nlink[keep])
        is_dir = (level.mode & np.uint32(0o170000)) == stat_mod.S_IFDIR
        dirs_out = []
        for new_i in np.flatnonzero(is_dir).tolist():
            old_i = int(keep[new_i])
            if ctype[old_i] == INODE_ITEM:
                handle = (subvol_id, int(child[old_i]))
            elif old_i in handles:
                handle = handles[old_i]
            else:
                continue  # an empty placeholder directory
            dirs_out.append((new_i, handle, handle))
        level.dirs = dirs_out
        return level

    def walk_table(self, path: str, exclude, start_ref) -> EntryTable:
        from immutools.fs.btrfs import EmptySubvolumeDir

        node = start_ref.node
        if isinstance(node, EmptySubvolumeDir) or not self.fs._stat_node(start_ref).is_dir:
            return empty_table(path)
        handle = (node.subvolume.objectid, node.inum)
        return breadth_first_table(self.fs, path, exclude, handle, handle, self.expand)

    # ---- find_special -------------------------------------------------------------------------
    def _names_of(self, subvol_id: int, objectid: int) -> list[tuple[int, str]]:
        """(parent directory, name) of every link to an inode: INODE_REF and INODE_EXTREF items."""
        tree = self.btrfs.open_subvolume(subvol_id).tree
        out = []
        cursor = tree.cursor()
        for item, data in cursor.iter(objectid, INODE_REF, 0, ignore_offset=True):
            data = bytes(data)
            pos = 0
            while pos + 10 <= len(data) and len(out) < 65536:
                (name_len,) = struct.unpack_from("<H", data, pos + 8)
                out.append((item.key.offset, data[pos + 10: pos + 10 + name_len].decode("utf-8", "surrogateescape")))
                pos += 10 + name_len
        cursor = tree.cursor()
        for _item, data in cursor.iter(objectid, INODE_EXTREF, 0, ignore_offset=True):
            data = bytes(data)
            pos = 0
            while pos + 18 <= len(data) and len(out) < 65536:
                parent, _index, name_len = struct.unpack_from("<QQH", data, pos)
                out.append((parent, data[pos + 18: pos + 18 + name_len].decode("utf-8", "surrogateescape")))
                pos += 18 + name_len
        return out

    def _dir_path(self, subvol_id: int, objectid: int, root_subvol: int, cache: dict) -> str | None:
        """The path of a directory in the view rooted at ``root_subvol`` ("" for its root), or None
        when it is not reachable from there."""
        key = (subvol_id, objectid)
        if key in cache:
            return cache[key]
        parts: list[str] = []
        sid, obj = subvol_id, objectid
        result: str | None = None
        for _ in range(4096):
            tree = self.btrfs.open_subvolume(sid).tree
            if obj == tree.root_item.root_dirid:
                if sid == root_subvol:
                    result = "/".join(reversed(parts))
                    break
                # Up through the ROOT_BACKREF: (child, 144, parent) -> {dirid, sequence, name}.
                try:
                    item, data = self.btrfs._root_tree.find(sid, ROOT_BACKREF)
                except KeyError:
                    break
                data = bytes(data)
                dirid, _seq, name_len = struct.unpack_from("<QQH", data, 0)
                parts.append(data[18: 18 + name_len].decode("utf-8", "surrogateescape"))
                sid, obj = item.key.offset, dirid
                continue
            links = self._names_of(sid, obj)
            if not links:
                break
            parent, name = links[0]
            parts.append(name)
            obj = parent
        cache[key] = result
        return result

    def _view_subvolumes(self, root_subvol: int) -> list[int]:
        """The subvolumes under the view's root (itself included), through ROOT_REF items."""
        out = [root_subvol]
        cursor = self.btrfs._root_tree.cursor()
        for parent in out:
            for item, _data in cursor.iter(parent, ROOT_REF, 0, ignore_offset=True):
                if item.key.offset not in out and len(out) < 65536:
                    out.append(item.key.offset)
            cursor.reset()
        return out

    def find_special(self, root_subvol: int, exclude, bits: int | None) -> list[tuple[str, "Stat"]] | None:
        """Mode bits from every INODE_ITEM first; names (INODE_REF chains) only for the hits.

        INODE_REFs are back references: what the kernel (and ``walk_table``) follows are the
        DIR_INDEX entries. So each hit's paths are checked: every one must resolve through the
        directory entries to that inode, and there must be as many as DIR_INDEX entries name the
        inode. When not (damage, or a crafted image whose back references lie), None: the caller
        then answers from the full walk."""
        from immutools.fs.base import Stat

        bits = SPECIAL_BITS if bits is None else bits
        # As in walk_table: an excluded directory is listed but not descended (the root always is).
        excluded = [e + "/" for e in normalize_paths(exclude) if e != "/"]
        out: list[tuple[str, Stat]] = []
        cache: dict = {}
        for subvol_id in self._view_subvolumes(root_subvol):
            cols = self.columns(subvol_id, names=False)
            hits = np.flatnonzero(((cols.mode & np.uint32(0o170000)) == stat_mod.S_IFREG)
                                  & ((cols.mode & np.uint32(bits)) != 0))
            if not len(hits):
                continue
            entries_to = np.sort(cols.dir_child[cols.dir_ctype == INODE_ITEM])
            for i in hits.tolist():
                obj = int(cols.ino_obj[i])
                st = Stat(mode=int(cols.mode[i]), size=int(cols.size[i]), uid=int(cols.uid[i]),
                          gid=int(cols.gid[i]), nlink=int(cols.nlink[i]), inode=obj)
                expected = int(np.searchsorted(entries_to, obj, "right") - np.searchsorted(entries_to, obj, "left"))
                links = self._names_of(subvol_id, obj)
                if len(links) != expected:
                    return None
                for parent, name in links:
                    where = self._dir_path(subvol_id, parent, root_subvol, cache)
                    if where is None:
                        return None
                    full = f"/{where}/{name}" if where else f"/{name}"
                    if not self._resolves_to(full, subvol_id, obj):
                        return None
                    if any(full.startswith(e) for e in excluded):
                        continue
                    out.append((full, st))
        return sorted(out, key=lambda t: t[0])

    def _resolves_to(self, path: str, subvol_id: int, objectid: int) -> bool:
        """Whether ``path`` names that inode when looked up through the directory entries."""
        try:
            node = self.fs._resolve(path, False).node
        except ImmutoolsError:
            return False
        subvolume = getattr(node, "subvolume", None)
        return subvolume is not None and subvolume.objectid == subvol_id and node.inum == objectid
