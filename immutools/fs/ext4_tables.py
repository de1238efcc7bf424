"""Bulk metadata of ext2/ext3/ext4: inode tables and directory blocks decoded with numpy.

The per-entry reader (``extfs.py`` over dissect.extfs) parses one inode at a time through
dissect.cstruct; on a full-size system that is 25-65x slower than ``e2fsck``. Here the same
structures (linux fs/ext4/ext4.h, documented in the kernel's Documentation/filesystems/ext4/) are
read in bulk:

* group descriptors (32- or 64-byte, ``meta_bg`` placement as in fs/ext4/super.c
  ``descriptor_loc``) as one numpy record array;
* inode bitmaps, honouring ``EXT4_BG_INODE_UNINIT`` and ``bg_itable_unused`` when the group
  descriptors are checksummed (``gdt_csum``/``metadata_csum``, as fs/ext4/ialloc.c does), so
  never-initialised inode table blocks are not read as inodes;
* inode tables, read in sorted, coalesced runs (a ``flex_bg`` packs the tables of 16 groups back to
  back) and decoded with a structured dtype of ``s_inode_size`` bytes (128-byte inodes included):
  mode, uid/gid with their high 16 bits, size lo/hi, links, flags, ``i_block`` of directories;
* directory blocks of a whole tree level at once: depth-0 extent trees decoded vectorised, deeper
  extent trees and indirect maps followed in Python (rare for directories), inline-data
  directories parsed from ``i_block`` and the ``system.data`` xattr; the linear record chains of
  all blocks are followed together, one record per block per numpy step. Hash-tree (htree)
  interior blocks hold one empty record spanning the block and the root's index hides inside the
  ``..`` record, so a linear pass sees every name exactly once, as e2fsck's pass 2 does.

Damage is bounded and reported: a bad record length ends that block (the kernel's
``ext4_readdir`` skips to the next block the same way), out-of-range blocks and inodes are
skipped, loops and depth are handled by ``tablewalk.walk_levels``. No maintained library decodes
ext4 metadata in bulk, so this is our own code; dissect.extfs still opens the filesystem.

Sources: torvalds/linux v6.6 fs/ext4/ext4.h (struct ext4_inode, ext4_group_desc,
ext4_dir_entry_2, ext4_rec_len_from_disk), fs/ext4/ext4_extents.h, fs/ext4/dir.c (ext4_readdir,
__ext4_check_dir_entry), fs/ext4/super.c (descriptor_loc); https://docs.kernel.org/filesystems/ext4/
"""

from __future__ import annotations

import stat as stat_mod
import struct
from typing import TYPE_CHECKING

import numpy as np

from immutools.errors import CorruptDataError, ImmutoolsError, LimitExceededError
from immutools.fs.tablewalk import BulkTables, Level, concat_levels, empty_level, gather_names, read_batches

if TYPE_CHECKING:
    from immutools.fs.extfs import ExtFileSystem

# fs/ext4/ext4.h
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_METADATA_CSUM = 0x0400
INCOMPAT_64BIT = 0x0080
INCOMPAT_META_BG = 0x0010
BG_INODE_UNINIT = 0x0001
EXTENTS_FL = 0x00080000
INLINE_DATA_FL = 0x10000000
EXTENT_MAGIC = 0xF30A
EXTENT_INIT_MAX = 32768


def inode_dtype(inode_size: int) -> np.dtype:
    """The fields we need of ``struct ext4_inode`` (fs/ext4/ext4.h), over ``inode_size`` bytes."""
    fields = [
        ("mode", "<u2", 0x00), ("uid_lo", "<u2", 0x02), ("size_lo", "<u4", 0x04), ("gid_lo", "<u2", 0x18),
        ("links", "<u2", 0x1A), ("flags", "<u4", 0x20), ("block", ("<u4", (15,)), 0x28),
        ("acl_lo", "<u4", 0x68), ("size_hi", "<u4", 0x6C), ("acl_hi", "<u2", 0x76), ("uid_hi", "<u2", 0x78),
        ("gid_hi", "<u2", 0x7A),
    ]
    return np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                     "offsets": [f[2] for f in fields], "itemsize": inode_size})


def desc_dtype(desc_size: int) -> np.dtype:
    """``struct ext4_group_desc`` fields we need (32-byte, or 64-byte with the _hi halves)."""
    fields = [("bitmap_lo", "<u4", 0x04), ("table_lo", "<u4", 0x08), ("flags", "<u2", 0x12),
              ("unused_lo", "<u2", 0x1C)]
    if desc_size >= 64:
        fields += [("bitmap_hi", "<u4", 0x24), ("table_hi", "<u4", 0x28), ("unused_hi", "<u2", 0x32)]
    return np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                     "offsets": [f[2] for f in fields], "itemsize": desc_size})


class Ext4Tables(BulkTables):
    """Bulk metadata of one ``ExtFileSystem`` (built on first use and kept: a scan asks for the
    setuid inventory and then for the module directories)."""

    def __init__(self, extfs: "ExtFileSystem"):
        super().__init__(extfs)
        self.extfs = extfs
        fs = extfs._fs
        sb = fs.sb
        self.sb = sb
        self.bs = fs.block_size
        self.block_count = fs.block_count
        self.inodes_count = sb.s_inodes_count
        self.ipg = sb.s_inodes_per_group
        self.isz = extfs._inode_size
        self.groups = fs.groups_count
        self.largedir = extfs._largedir
        self.csum = bool(sb.s_feature_ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM))
        self.dtype = inode_dtype(self.isz)
        self.packed = np.dtype([(name, self.dtype.fields[name][0]) for name in self.dtype.names])

    # ---- group descriptors -----------------------------------------------------------------------
    def descriptors(self) -> np.ndarray:
        sb = self.sb
        incompat = sb.s_feature_incompat
        desc_size = sb.s_desc_size if incompat & INCOMPAT_64BIT else 32
        if desc_size < 32 or desc_size > 1024 or desc_size & (desc_size - 1) or (incompat & INCOMPAT_64BIT and desc_size < 64):
            raise CorruptDataError(f"{self.extfs.fstype}: invalid group descriptor size {desc_size}")
        per_block = self.bs // desc_size
        nblocks = -(-self.groups // per_block)
        first_meta = sb.s_first_meta_bg if incompat & INCOMPAT_META_BG else nblocks
        if self.groups > 1 << 32 or nblocks * self.bs > 1 << 30:
            raise CorruptDataError(f"{self.extfs.fstype}: {self.groups} block groups is implausible")
        chunks = []
        plain = min(first_meta, nblocks)
        if plain:
            # fs/ext4/super.c descriptor_loc: right after the superblock's block.
            chunks.append(self._read_exact((sb.s_first_data_block + 1) * self.bs, plain * self.bs, "group descriptors"))
        for nr in range(plain, nblocks):
            group = nr * per_block
            block = sb.s_first_data_block + group * sb.s_blocks_per_group + (1 if self.extfs._group_has_super(group) else 0)
            chunks.append(self._read_exact(block * self.bs, self.bs, "meta_bg group descriptors"))
        raw = np.frombuffer(b"".join(chunks), desc_dtype(desc_size), count=self.groups)
        out = np.zeros(self.groups, [("bitmap", "<u8"), ("table", "<u8"), ("flags", "<u2"), ("unused", "<u4")])
        out["bitmap"] = raw["bitmap_lo"]
        out["table"] = raw["table_lo"]
        out["unused"] = raw["unused_lo"]
        out["flags"] = raw["flags"]
        if desc_size >= 64:
            out["bitmap"] |= raw["bitmap_hi"].astype(np.uint64) << np.uint64(32)
            out["table"] |= raw["table_hi"].astype(np.uint64) << np.uint64(32)
            out["unused"] |= raw["unused_hi"].astype(np.uint32) << np.uint32(16)
        return out

    def _read_exact(self, offset: int, length: int, what: str) -> bytes:
        data = self.source.read_at(offset, length)
        if len(data) != length:
            raise CorruptDataError(f"{self.extfs.fstype}: {what} at byte {offset} lie beyond the end of the image")
        return data

    # ---- inode tables ----------------------------------------------------------------------------
    def root_key(self) -> int:
        return 2                     # EXT4_ROOT_INO

    def _load(self) -> None:
        """Decode every in-use inode (by the inode bitmaps) into columns."""
        desc = self.descriptors()
        ipg = self.ipg
        limit = np.full(self.groups, ipg, np.int64)
        # The last group may hold fewer inodes than a full one would (s_inodes_count rules).
        last_inodes = self.inodes_count - (self.groups - 1) * ipg
        if last_inodes <= 0:
            raise CorruptDataError(f"{self.extfs.fstype}: {self.inodes_count} inodes for {self.groups} groups of {ipg}")
        limit[-1] = min(ipg, last_inodes)
        if self.csum:
            limit = np.minimum(limit, np.maximum(ipg - desc["unused"].astype(np.int64), 0))
            limit[(desc["flags"] & BG_INODE_UNINIT) != 0] = 0
        bad = (desc["table"] == 0) | (desc["table"] + np.uint64(-(-ipg * self.isz // self.bs)) > np.uint64(self.block_count))
        bad |= desc["bitmap"] >= np.uint64(self.block_count)
        for g in np.flatnonzero(bad & (limit > 0))[:10].tolist():
            self.warn(f"group {g}: inode table or bitmap outside the filesystem, its inodes are read one by one")
        limit[bad] = 0

        # Inode bitmaps: one block per group, contiguous under flex_bg; read in coalesced runs.
        groups = np.flatnonzero(limit > 0)
        used_inos: list[np.ndarray] = []
        bitmap_bytes = -(-ipg // 8)
        order = groups[np.argsort(desc["bitmap"][groups], kind="stable")]
        offs = desc["bitmap"][order].astype(np.int64) * self.bs
        for data, idx, rel in read_batches(self.source, offs, bitmap_bytes, self.warn):
            buf = np.frombuffer(data, np.uint8)
            for i, at in zip(idx.tolist(), rel.tolist()):
                g = int(order[i])
                bits = np.unpackbits(buf[at: at + bitmap_bytes], bitorder="little")[: int(limit[g])]
                used_inos.append(np.flatnonzero(bits).astype(np.int64) + g * ipg + 1)
        inos = np.sort(np.concatenate(used_inos)) if used_inos else np.zeros(0, np.int64)
        cap = 2 * self.extfs.limits.max_walk_entries
        if len(inos) > cap:
            raise LimitExceededError(f"{self.extfs.fstype}: {len(inos)} inodes in use, more than the {cap} a walk reads")

        # Inode tables: the byte range of each group from its first to its last in-use inode.
        grp = (inos - 1) // ipg
        idx = (inos - 1) % ipg
        byte = desc["table"][grp].astype(np.int64) * self.bs + idx * self.isz
        recs = np.zeros(len(inos), self.packed)
        order = np.argsort(byte, kind="stable")
        for data, sel, rel in read_batches(self.source, byte[order], self.isz, self.warn):
            # Inodes of one buffer lie at multiples of the inode size from its start (tables are
            # block aligned, reads start at an inode); copy field by field (a whole record per
            # inode would be mostly unused bytes).
            table = np.frombuffer(data, self.dtype, count=len(data) // self.isz)
            src, dst = rel // self.isz, order[sel]
            for name in self.dtype.names:
                recs[name][dst] = table[name][src]
        self._set_columns(inos, recs)

    def _set_columns(self, inos: np.ndarray, recs: np.ndarray) -> None:
        mode = recs["mode"].astype(np.uint32)
        size = recs["size_lo"].astype(np.uint64)
        hi_ok = (mode & 0o170000) == stat_mod.S_IFREG if not self.largedir else np.ones(len(mode), bool)
        size[hi_ok] |= recs["size_hi"][hi_ok].astype(np.uint64) << np.uint64(32)
        self.ino = inos.astype(np.int64)
        self.mode = mode
        self.uid = recs["uid_lo"].astype(np.uint32) | (recs["uid_hi"].astype(np.uint32) << np.uint32(16))
        self.gid = recs["gid_lo"].astype(np.uint32) | (recs["gid_hi"].astype(np.uint32) << np.uint32(16))
        self.size = size
        self.nlink = recs["links"].astype(np.uint32)
        self.flags = recs["flags"]
        dirs = np.flatnonzero((mode & 0o170000) == stat_mod.S_IFDIR)
        self.dir_pos = dirs
        self.dir_block = np.ascontiguousarray(recs["block"][dirs])
        self._recs_dirs_acl = (recs["acl_lo"][dirs].astype(np.uint64) | (recs["acl_hi"][dirs].astype(np.uint64) << np.uint64(32)))

    def _read_missing(self, missing: np.ndarray) -> None:
        """Read one by one the few inodes a damaged directory points to outside the in-use ones
        (a referenced but free inode: the per-entry reader would read it too)."""
        extra_inos, extra_recs = [], []
        for ino in missing.tolist():
            if ino < 1 or ino > self.inodes_count:
                self.warn(f"directory entry points to inode {ino}, beyond {self.inodes_count}")
                continue
            try:
                raw = self.extfs._raw_inode(ino)
            except ImmutoolsError as exc:
                self.warn(f"inode {ino}: {exc}")
                continue
            self.warn(f"directory entry points to inode {ino}, which the inode bitmap marks free")
            extra_inos.append(ino)
            extra_recs.append(np.frombuffer(raw, self.dtype, count=1).astype(self.packed))
        if extra_inos:
            # Rebuild the columns with the extra inodes merged in (damage only: rare and small).
            all_inos = np.concatenate([self.ino, np.asarray(extra_inos, np.int64)])
            recs = np.zeros(len(all_inos), self.packed)
            recs[: len(self.ino)] = self._as_records()
            recs[len(self.ino):] = np.concatenate(extra_recs)
            order = np.argsort(all_inos, kind="stable")
            self._set_columns(all_inos[order], recs[order])

    def _as_records(self) -> np.ndarray:
        recs = np.zeros(len(self.ino), self.packed)
        recs["mode"] = self.mode
        recs["uid_lo"] = self.uid & 0xFFFF
        recs["uid_hi"] = self.uid >> 16
        recs["gid_lo"] = self.gid & 0xFFFF
        recs["gid_hi"] = self.gid >> 16
        recs["size_lo"] = self.size & np.uint64(0xFFFFFFFF)
        recs["size_hi"] = self.size >> np.uint64(32)
        recs["links"] = self.nlink
        recs["flags"] = self.flags
        recs["block"][self.dir_pos] = self.dir_block
        recs["acl_lo"][self.dir_pos] = self._recs_dirs_acl & np.uint64(0xFFFFFFFF)
        recs["acl_hi"][self.dir_pos] = self._recs_dirs_acl >> np.uint64(32)
        return recs

    # ---- directories -----------------------------------------------------------------------------
    def expand(self, dir_inos: np.ndarray) -> Level:
        """The entries of the directories ``dir_inos`` (one tree level)."""
        pos = self.ensure(dir_inos)
        owners = np.flatnonzero(pos >= 0)
        dpos = np.searchsorted(self.dir_pos, pos[owners])
        is_dir = (dpos < len(self.dir_pos)) & (self.dir_pos[np.minimum(dpos, len(self.dir_pos) - 1)] == pos[owners]) if len(self.dir_pos) else np.zeros(len(owners), bool)
        owners, dpos = owners[is_dir], dpos[is_dir]
        size = self.size[pos[owners]].copy()
        if not self.largedir:
            size &= np.uint64(0xFFFFFFFF)
        flags = self.flags[pos[owners]]
        iblock = self.dir_block[dpos]
        max_blocks = max(1, self.extfs.limits.max_dir_entries * 64 // self.bs)
        nblocks = ((size + np.uint64(self.bs - 1)) // np.uint64(self.bs)).astype(np.int64)
        for i in np.flatnonzero(nblocks > max_blocks)[:10].tolist():
            self.warn(f"directory inode {int(dir_inos[owners[i]])}: size {int(size[i])} is implausible, read up to {max_blocks} blocks")
        nblocks = np.minimum(nblocks, max_blocks)

        inline = (flags & INLINE_DATA_FL) != 0
        extents = ((flags & EXTENTS_FL) != 0) & ~inline
        header = iblock[:, 0]
        depth0 = extents & ((header & 0xFFFF) == EXTENT_MAGIC) & ((header >> 16) <= 4) & ((iblock[:, 1] >> 16) == 0)
        direct = ~inline & ~extents & (nblocks <= 12)
        python = ~inline & ~depth0 & ~direct

        owner_l, logical_l, phys_l = [], [], []
        # Depth-0 extent trees: up to four extents in i_block, decoded for all directories at once.
        sel = np.flatnonzero(depth0)
        if len(sel):
            entries = (header[sel] >> 16).astype(np.int64)
            for k in range(4):
                has = entries > k
                s = sel[has]
                first = iblock[s, 3 + 3 * k].astype(np.int64)
                word = iblock[s, 4 + 3 * k]
                length = (word & 0xFFFF).astype(np.int64)
                start = ((word >> 16).astype(np.int64) << 32) | iblock[s, 5 + 3 * k].astype(np.int64)
                unwritten = length > EXTENT_INIT_MAX
                out = (start + np.where(unwritten, length - EXTENT_INIT_MAX, length) > self.block_count) | (start == 0)
                for i in np.flatnonzero(out & ~unwritten)[:10].tolist():
                    self.warn(f"directory inode {int(dir_inos[owners[s[i]]])}: extent at block {int(start[i])} outside the filesystem")
                good = ~unwritten & ~out
                s, first, length, start = s[good], first[good], length[good], start[good]
                take = np.clip(np.minimum(first + length, nblocks[s]) - first, 0, None)
                self._expand_runs(s, first, start, take, owner_l, logical_l, phys_l)
        # Indirect maps of small directories: the twelve direct pointers.
        sel = np.flatnonzero(direct)
        if len(sel):
            k = np.arange(12)
            mask = k[None, :] < nblocks[sel][:, None]
            ptr = iblock[sel, :12].astype(np.int64)
            mask &= ptr != 0
            out = mask & (ptr >= self.block_count)
            for i, j in zip(*np.nonzero(out)):
                self.warn(f"directory inode {int(dir_inos[owners[sel[i]]])}: block {int(ptr[i, j])} outside the filesystem")
            mask &= ~out
            rows, cols = np.nonzero(mask)
            owner_l.append(sel[rows])
            logical_l.append(cols.astype(np.int64))
            phys_l.append(ptr[rows, cols])
        # Deeper extent trees and larger indirect maps: per directory, in Python.
        unmapped = np.zeros(len(owners), bool)
        for i in np.flatnonzero(python).tolist():
            ino = int(dir_inos[owners[i]])
            try:
                runs = self.extfs._block_runs(ino, iblock[i].tobytes(), bool(extents[i]), int(nblocks[i]))
            except ImmutoolsError as exc:
                self.warn(f"directory inode {ino}: {exc}")
                unmapped[i] = True
                continue
            for first, count, physical in runs:
                if physical is None:
                    continue
                owner_l.append(np.full(count, i, np.int64))
                logical_l.append(np.arange(first, first + count, dtype=np.int64))
                phys_l.append(np.arange(physical, physical + count, dtype=np.int64))

        levels = []
        if owner_l:
            blk_owner = np.concatenate(owner_l)
            blk_logical = np.concatenate(logical_l)
            blk_phys = np.concatenate(phys_l)
            counted = np.bincount(blk_owner, minlength=len(owners))
            for i in np.flatnonzero((counted < nblocks) & ~inline & ~unmapped)[:10].tolist():
                self.warn(f"directory inode {int(dir_inos[owners[i]])}: {int(nblocks[i] - counted[i])} of {int(nblocks[i])} blocks are holes, skipped")
            levels.append(self._parse_blocks(blk_owner, blk_logical, blk_phys, owners, dir_inos))
        for i in np.flatnonzero(inline).tolist():
            levels.append(self._inline_entries(int(dir_inos[owners[i]]), int(owners[i]), iblock[i].tobytes()))
        return self.with_children(concat_levels(levels))

    @staticmethod
    def _expand_runs(dir_index, first, start, count, owner_l, logical_l, phys_l) -> None:
        """Append one (directory, logical, physical) row per block of the runs."""
        total = int(count.sum())
        if total == 0:
            return
        rep = np.repeat(np.arange(len(count)), count)
        within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        owner_l.append(dir_index[rep])
        logical_l.append(first[rep] + within)
        phys_l.append(start[rep] + within)

    def _parse_blocks(self, blk_owner, blk_logical, blk_phys, owners, dir_inos) -> Level:
        """Read the blocks (sorted, coalesced into few reads) and follow the record chains of all
        of them together, one joined buffer of a few MiB at a time."""
        bs = self.bs
        order = np.argsort(blk_phys, kind="stable")
        blk_owner, blk_logical, blk_phys = blk_owner[order], blk_logical[order], blk_phys[order]
        parts = [self._chains(data, rel, blk_owner[sel], blk_logical[sel], owners, dir_inos)
                 for data, sel, rel in read_batches(self.source, blk_phys * bs, bs, self.warn)]
        return concat_levels(parts)

    def _chains(self, data: bytes, block_start: np.ndarray, owner: np.ndarray, logical: np.ndarray,
                owners: np.ndarray, dir_inos: np.ndarray) -> Level:
        """Follow the ext4_dir_entry_2 chain of every block in ``data`` (starting at byte offsets
        ``block_start``) in lock step; checks as fs/ext4/dir.c __ext4_check_dir_entry."""
        bs = self.bs
        words = np.frombuffer(data, "<u4", count=len(data) // 4)
        pos = block_start // 4                          # word index of the current record
        base = block_start // 4
        blk = np.arange(len(block_start))
        rec_pos, rec_blk = [], []
        for _step in range(bs // 8 + 1):
            if not len(pos):
                break
            w1 = words[pos + 1]
            rec = (w1 & 0xFFFF).astype(np.int64)
            if bs >= 65536:
                # ext4_rec_len_from_disk: 65535 or 0 means a whole 64 KiB block.
                rec = np.where((rec == 65535) | (rec == 0), 65536, (rec & 65532) | ((rec & 3) << 16))
            name_len = ((w1 >> 16) & 0xFF).astype(np.int64)
            off = (pos - base[blk]) * 4
            ok = (rec >= 8) & (rec % 4 == 0) & (off + rec <= bs) & (8 + name_len <= rec)
            if not ok.all():
                for b in blk[~ok][:5].tolist():
                    self.warn(f"directory inode {int(dir_inos[owners[owner[b]]])} block {int(logical[b])}: "
                              f"bad record length at offset {int(off[~ok][0])}, rest of the block skipped")
                pos, blk, rec = pos[ok], blk[ok], rec[ok]
                off = off[ok]
            rec_pos.append(pos)
            rec_blk.append(blk)
            nxt = pos + rec // 4
            more = off + rec + 8 <= bs
            pos, blk = nxt[more], blk[more]
        if not rec_pos:
            return empty_level()
        pos = np.concatenate(rec_pos)
        blk = np.concatenate(rec_blk)
        ino = words[pos].astype(np.int64)
        name_len = ((words[pos + 1] >> 16) & 0xFF).astype(np.int64)
        name_start = pos * 4 + 8
        buf = np.frombuffer(data, np.uint8)
        first = buf[np.minimum(name_start, len(buf) - 1)]
        second = buf[np.minimum(name_start + 1, len(buf) - 1)]
        dots = ((name_len == 1) & (first == 0x2E)) | ((name_len == 2) & (first == 0x2E) & (second == 0x2E))
        keep = (ino != 0) & ~dots
        big = keep & (ino > self.inodes_count)
        for i in np.flatnonzero(big)[:5].tolist():
            self.warn(f"directory inode {int(dir_inos[owners[owner[blk[i]]]])}: entry points to inode {int(ino[i])} beyond {self.inodes_count}")
        keep &= ~big
        wanted = self.keep_mask(ino)
        if wanted is not None:
            keep &= wanted
        sel = np.flatnonzero(keep)
        # Listing order: by directory, then logical block, then offset in the block.
        order = np.lexsort((pos[sel], logical[blk[sel]], owner[blk[sel]]))
        sel = sel[order]
        blob = gather_names(data, name_start[sel], name_len[sel])
        lens = name_len[sel]
        starts = np.cumsum(lens + 1) - (lens + 1)
        z = np.zeros(len(sel), np.uint32)
        return Level(owner=owners[owner[blk[sel]]].astype(np.int64), key=ino[sel], mode=z, uid=z, gid=z,
                     size=np.zeros(len(sel), np.uint64), nlink=z, name_blob=blob, name_start=starts, name_len=lens)

    def _inline_entries(self, ino: int, owner: int, iblock: bytes) -> Level:
        """Entries of an inline-data directory: i_block after its 4-byte parent inode, then the
        system.data xattr (fs/ext4/inline.c)."""
        try:
            areas = [iblock[4:], self.extfs._xattr_list(ino).get("system.data", b"")]
        except ImmutoolsError as exc:
            self.warn(f"directory inode {ino}: {exc}")
            areas = [iblock[4:]]
        keys, names = [], []
        for area in areas:
            pos = 0
            while pos + 8 <= len(area):
                child, rec, name_len = struct.unpack_from("<IHB", area, pos)
                if rec < 8 or rec % 4 or pos + rec > len(area) or 8 + name_len > rec:
                    self.warn(f"inline directory inode {ino}: bad record length at offset {pos}")
                    break
                name = area[pos + 8: pos + 8 + name_len]
                if child and name not in (b".", b".."):
                    if child > self.inodes_count:
                        self.warn(f"inline directory inode {ino}: entry points to inode {child}")
                    else:
                        keys.append(child)
                        names.append(name)
                pos += rec
        wanted = self.keep_mask(np.asarray(keys, np.int64))
        if wanted is not None:
            keys = [k for k, w in zip(keys, wanted) if w]
            names = [n for n, w in zip(names, wanted) if w]
        lens = np.asarray([len(n) for n in names], np.int64)
        z = np.zeros(len(keys), np.uint32)
        return Level(owner=np.full(len(keys), owner, np.int64), key=np.asarray(keys, np.int64), mode=z, uid=z, gid=z,
                     size=np.zeros(len(keys), np.uint64), nlink=z, name_blob=b"/".join(names),
                     name_start=np.cumsum(lens + 1) - (lens + 1), name_len=lens)
