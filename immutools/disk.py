"""An opened disk image with its partition table and lazily opened filesystems.

``DiskImage`` is what collectors and the scan work on: one object that owns the byte source, the
partition table, each volume's identified content and (on demand, cached) its ``FileSystem``.
Problems with one partition become warnings; the rest of the image stays usable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from immutools.errors import ImageIOError, ImmutoolsError, LimitExceededError, UnsupportedImageError
from immutools.fs.base import FileSystem
from immutools.fs.probe import FILESYSTEM_TYPES, PROBED_SIGNATURES, FsIdentity, identify
from immutools.image.source import ByteSource, ReadStats, SliceSource
from immutools.limits import DEFAULT_LIMITS, Limits
from immutools.volumes import lookup_type
from immutools.volumes.model import Partition, PartitionTable


# Partition roles (data/partition_types.yaml) whose partitions hold a filesystem.
FILESYSTEM_ROLES = {"data", "root", "usr", "home", "srv", "var", "tmp", "esp", "boot"}


@dataclass
class Volume:
    """A partition (or the whole disk when there is no partition table) and what it holds."""

    number: int                      # partition number; 0 = the whole disk as one filesystem
    source: ByteSource
    identity: FsIdentity
    partition: Partition | None = None

    @property
    def label(self) -> str | None:
        return self.partition.label if self.partition else self.identity.label

    @property
    def type_key(self) -> str | None:
        return self.partition.type_key if self.partition else None

    @property
    def fstype(self) -> str:
        return self.identity.fstype

    def describe(self) -> str:
        """Short human reference used in evidence strings: ``partition 3 (USR-A)``."""
        if self.partition is None:
            return "whole disk"
        return f"partition {self.number}" + (f" ({self.label})" if self.label else "")


@dataclass
class PhaseTimer:
    """Wall/CPU time per named phase, for ``scan --stats``."""

    phases: dict[str, dict] = field(default_factory=dict)

    def measure(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.w0, self_inner.c0 = time.perf_counter(), time.process_time()

            def __exit__(self_inner, *exc):
                entry = timer.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
                entry["wall_s"] += time.perf_counter() - self_inner.w0
                entry["cpu_s"] += time.process_time() - self_inner.c0
                return False

        return _Ctx()


class DiskImage:
    def __init__(self, opened, table: PartitionTable, limits: Limits = DEFAULT_LIMITS, timer: PhaseTimer | None = None):
        self.opened = opened
        self.source: ByteSource = opened.source
        self.table = table
        self.limits = limits
        self.timer = timer or PhaseTimer()
        self.warnings: list[str] = list(opened.warnings) + list(table.warnings)
        self._fs_cache: dict[int, FileSystem | None] = {}
        self.volumes: list[Volume] = []
        with self.timer.measure("identify"):
            self._identify_volumes()

    # ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, limits: Limits = DEFAULT_LIMITS, progress: bool | None = None,
             stats: ReadStats | None = None, timer: PhaseTimer | None = None) -> "DiskImage":
        from immutools.image import open_image
        from immutools.volumes import read_partition_table

        timer = timer or PhaseTimer()
        with timer.measure("open"):
            opened = open_image(path, limits=limits, progress=progress, stats=stats)
        try:
            with timer.measure("partition_table"):
                table = read_partition_table(opened.source, limits=limits)
            return cls(opened, table, limits, timer)
        except BaseException:
            opened.close()
            raise

    def close(self) -> None:
        for fs in self._fs_cache.values():
            if fs is not None:
                try:
                    fs.close()
                except Exception:  # noqa: BLE001 - closing must not mask the real result
                    pass
        self._fs_cache.clear()
        self.opened.close()

    def __enter__(self) -> "DiskImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    # ---------------------------------------------------------------------------------------
    def _identify_volumes(self) -> None:
        disk = self.source
        if self.table.scheme == "none":
            ident = self._safe_identify(disk, "whole disk")
            if ident.fstype in ("zero", "unknown", "unreadable"):
                what = "it is all zero" if ident.fstype == "zero" else "no partition table and no known filesystem"
                if ident.details.get("rejected"):
                    what += f" ({'; '.join(ident.details['rejected'])})"
                raise UnsupportedImageError(f"{disk.name}: not a disk image: {what}")
            volume = Volume(0, disk, ident)
            self.volumes.append(volume)
            if ident.mountable:
                # The filesystem is the whole image: if it cannot be opened, nothing is readable.
                try:
                    self._fs_cache[0] = self._open_filesystem(volume)
                except LimitExceededError:
                    raise
                except (ImmutoolsError, OSError, ValueError, EOFError) as exc:
                    raise UnsupportedImageError(f"{disk.name}: not a readable disk image: "
                                                f"{ident.fstype} superblock, but {_reason(exc)}") from None
            return
        for part in self.table.partitions:
            src = SliceSource(disk, part.start, part.size, name=f"{disk.name}#p{part.number}")
            label = f"partition {part.number}" + (f" ({part.label})" if part.label else "")
            if src.available < part.size:
                self.warn(
                    f"{label}: ends {part.size - src.available} bytes past the end of the image "
                    "(truncated image?); reading what is there"
                )
            ident = self._safe_identify(src, label) if src.available > 0 else FsIdentity("unreadable")
            self.volumes.append(Volume(part.number, src, ident, part))
            self._explain_unrecognised(label, part, ident)

    def _explain_unrecognised(self, label: str, part: Partition, ident: FsIdentity) -> None:
        """A partition whose type promises a filesystem but whose content none of the probes
        recognised is a warning: a damaged superblock must not pass as an empty result."""
        if ident.fstype != "unknown":
            return
        if ident.details.get("rejected"):
            self.warn(f"{label}: {'; '.join(ident.details['rejected'])}: not read")
            return
        _key, name, role = lookup_type(part.type_guid if part.type_guid else part.mbr_type) \
            if (part.type_guid or part.mbr_type is not None) else (None, None, None)
        if role not in FILESYSTEM_ROLES:
            return
        self.warn(f"{label}: its type ({name}) says it holds a filesystem, but no known signature was found "
                  f"(looked for {', '.join(PROBED_SIGNATURES)} at their superblock offsets): damaged or unsupported content")

    def _safe_identify(self, src: ByteSource, label: str) -> FsIdentity:
        try:
            return identify(src)
        except ImmutoolsError as exc:
            self.warn(f"{label}: cannot identify content: {exc}")
            return FsIdentity("unreadable")

    # ---------------------------------------------------------------------------------------
    def volume(self, number: int | None = None, label: str | None = None, type_key: str | None = None) -> Volume | None:
        for vol in self.volumes:
            if number is not None and vol.number != number:
                continue
            if label is not None and vol.label != label:
                continue
            if type_key is not None and vol.type_key != type_key:
                continue
            return vol
        return None

    def filesystem(self, volume: Volume) -> FileSystem | None:
        """The volume's filesystem, opened once; None (with a warning) if it cannot be read."""
        if volume.number in self._fs_cache:
            return self._fs_cache[volume.number]
        fs = None
        if volume.fstype in FILESYSTEM_TYPES:
            try:
                fs = self._open_filesystem(volume)
            except (ImmutoolsError, OSError, ValueError, EOFError) as exc:
                self.warn(f"{volume.describe()}: cannot read {volume.fstype} filesystem: {_reason(exc)}")
        self._fs_cache[volume.number] = fs
        return fs

    def _open_filesystem(self, volume: Volume) -> FileSystem:
        from immutools.fs import open_filesystem

        with self.timer.measure(f"fs:{volume.fstype}"):
            return open_filesystem(volume.source, volume.fstype, limits=self.limits)

    def filesystem_warnings(self) -> list[str]:
        """What the opened filesystems met while reading (damaged directories, loops, ...)."""
        return [w for fs in self._fs_cache.values() if fs is not None for w in fs.warnings]

    def filesystems(self):
        """Yield (volume, FileSystem) for every readable filesystem, in partition order."""
        for vol in self.volumes:
            fs = self.filesystem(vol)
            if fs is not None:
                yield vol, fs


def _reason(exc: BaseException) -> str:
    """One line for a reader's error: ours carry their message, a library's gets its type named."""
    return str(exc) if isinstance(exc, ImmutoolsError) else f"{type(exc).__name__}: {exc}"


def require_image(path: str) -> None:
    """Fail early, in one line, for a path that is not a file we can open."""
    import os

    if not os.path.exists(path):
        raise ImageIOError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UnsupportedImageError(f"{path}: is a directory, not a disk image")
