"""Filesystems and nested containers behind one read interface (``immutools.fs.base.FileSystem``).

``identify(source)`` names what a partition holds from its magic bytes; ``open_filesystem(source,
fstype)`` returns a ``FileSystem`` for the readable ones. Backends: dissect.extfs / xfs / btrfs /
fat / squashfs (adapters in this package) and our own EROFS reader (``erofs.py``).
"""

from __future__ import annotations

import importlib

from immutools.errors import UnsupportedImageError
from immutools.fs.base import FileSystem, Stat, WalkEntry  # noqa: F401
from immutools.fs.probe import FILESYSTEM_TYPES, FsIdentity, identify  # noqa: F401
from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits

# fstype -> "module:Class"; imported lazily so `scan` only pays for the readers it uses.
_BACKENDS = {
    "ext2": "immutools.fs.extfs:ExtFileSystem",
    "ext3": "immutools.fs.extfs:ExtFileSystem",
    "ext4": "immutools.fs.extfs:ExtFileSystem",
    "xfs": "immutools.fs.xfs:XfsFileSystem",
    "btrfs": "immutools.fs.btrfs:BtrfsFileSystem",
    "vfat": "immutools.fs.fat:FatFileSystem",
    "squashfs": "immutools.fs.squashfs:SquashFileSystem",
    "erofs": "immutools.fs.erofs:ErofsFileSystem",
}


def open_filesystem(source: ByteSource, fstype: str | None = None, limits: Limits = DEFAULT_LIMITS) -> FileSystem:
    """Open ``source`` as a filesystem. ``fstype`` defaults to what ``identify`` says."""
    if fstype is None:
        fstype = identify(source).fstype
    target = _BACKENDS.get(fstype)
    if target is None:
        raise UnsupportedImageError(f"{source.name}: no filesystem reader for {fstype!r}")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(source, limits=limits)
