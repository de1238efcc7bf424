"""FAT12/16/32 (vfat, long file names) over dissect.fat.

FAT has no owners, permission bits, symlinks or device nodes. We synthesise what a Linux reader
would reasonably see: uid/gid 0, directories 0755, files 0644 (FAT has no execute bit; the kernel's
vfat driver shows 0755 for files too unless ``showexec``, we prefer not to call every file
executable), and files carrying the DOS read-only attribute 0444. ``fat_attributes(path)`` gives the
raw attributes (read-only, hidden, system, archive). Timestamps are DOS local time, read as UTC.

dissect follows cluster chains without a bound, so a chain that loops would never end; every chain
is walked once here with a bound (the number of clusters the FAT can hold) before dissect uses it.
"""

from __future__ import annotations

import calendar
import stat as stat_mod
from typing import Any, Iterator

from immutools.errors import CorruptDataError
from immutools.fs.base import Stat
from immutools.fs.dissect_common import DissectFileSystem, Ref, read_stream

DIR_MODE = stat_mod.S_IFDIR | 0o755
FILE_MODE = stat_mod.S_IFREG | 0o644
READ_ONLY_FILE_MODE = stat_mod.S_IFREG | 0o444
NT_LOWER_BASE, NT_LOWER_EXT = 0x08, 0x10   # DIR_NTRes case bits (Windows NT, honoured by Linux vfat)


class FatFileSystem(DissectFileSystem):
    fstype = "vfat"

    def _open(self, source) -> Any:
        from dissect.fat import FATFS

        self._fs = FATFS(source)
        self.fat_type = self._fs.type.name  # FAT12 / FAT16 / FAT32
        self.label = self._fs.volume_label or None
        self._checked_chains: set[int] = set()
        return self._fs.root

    def _check_chain(self, node) -> None:
        """Walk ``node``'s cluster chain once, bounded, so dissect's unbounded walk is safe."""
        start = node.cluster
        if not start or start in self._checked_chains:
            return
        fat = self._fs.fat
        if start < 2 or start >= fat.entry_count:
            raise CorruptDataError(f"first cluster {start} outside the FAT")
        steps = 0
        for _cluster in fat.chain(start):
            steps += 1
            if steps > fat.entry_count:
                raise CorruptDataError(f"cluster chain from {start} loops")
        self._checked_chains.add(start)

    def _make_stat(self, ref: Ref) -> Stat:
        node = ref.node
        self._check_chain(node)
        if node.is_directory():
            mode = DIR_MODE
        elif node.is_readonly():
            mode = READ_ONLY_FILE_MODE
        else:
            mode = FILE_MODE
        try:
            mtime = float(calendar.timegm(node.mtime.timetuple()))
        except (ValueError, OverflowError, TypeError):
            mtime = None  # an impossible DOS date is not worth failing a stat for
        return Stat(mode=mode, size=node.size, mtime=mtime, nlink=1, inode=node.cluster or None)

    def _key(self, ref: Ref) -> Any:
        # Directories are identified by their first cluster; the FAT12/16 root has none.
        return ref.node.cluster if ref.node is not self._fs.root else "root"

    def _children(self, ref: Ref) -> Iterator[tuple[str, Any]]:
        node = ref.node
        self._check_chain(node)
        for child in node.iterdir():
            if child.is_volume_id() and not child.is_directory():
                continue  # the volume label entry
            yield self._display_name(child), child

    @staticmethod
    def _display_name(child) -> str:
        """The name as Linux shows it. A short name alone may carry the Windows NT case bits
        (DIR_NTRes 0x08: base in lower case, 0x10: extension), which dissect ignores."""
        if child.ldirents:
            return child.name
        nt_flags = child.dirent.DIR_NTRes
        base, dot, ext = child.short_name.partition(".")
        if nt_flags & NT_LOWER_BASE:
            base = base.lower()
        if nt_flags & NT_LOWER_EXT:
            ext = ext.lower()
        return base + dot + ext

    def _lookup_child(self, ref: Ref, name: str) -> Ref | None:
        # FAT names are case-insensitive, as under a vfat mount.
        found = super()._lookup_child(ref, name)
        if found is not None:
            return found
        folded = name.casefold()
        for child_name, child in self._listings.get(self._node_key(ref), {}).items():
            if child_name.casefold() == folded:
                return child
        return None

    def _read_file(self, ref: Ref, offset: int, length: int) -> bytes:
        self._check_chain(ref.node)
        return read_stream(ref.node.open(), offset, length)

    def _link_target(self, ref: Ref) -> str:
        raise CorruptDataError("FAT has no symbolic links")

    def fat_attributes(self, path: str) -> dict[str, bool]:
        """The DOS attributes of ``path``."""
        ref = self._resolve(path, False)
        node = ref.node
        with self.errors(ref.path, "attributes"):
            return {
                "read_only": node.is_readonly(),
                "hidden": node.is_hidden(),
                "system": node.is_system(),
                "archive": node.is_archive(),
                "directory": node.is_directory(),
            }
