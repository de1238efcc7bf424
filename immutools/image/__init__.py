"""Image access: turn an input file into one random-access virtual disk.

``open_image(path)`` recognises the input by its bytes (never by its name): a raw disk, a
whole-file compressed raw disk (gzip, bzip2, xz, zstd, lz4 — read at random where the format
indexes itself, else decompressed once into the decompression cache or a sparse temporary file:
``immutools.image.access``), a virtual-disk container (qcow2, VMDK, VHD, VHDX), or a compressed
container (``.qcow2.xz``). The input is only ever opened read-only.

Read accounting (``ReadStats``): ``bytes_read`` counts bytes read from files — the input file
(for compressed input this includes the one full pass of decompression, or of hashing it for the
cache key), VMDK extent files and the decompressed file; ``bytes_decompressed`` counts decompressed
output (0 on a cache hit; only the blocks decoded, for random access). ``OpenedImage.access`` and
``OpenedImage.cache`` say which path a compressed image took.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass, field

from immutools.errors import ImageIOError, UnsupportedImageError
from immutools.image.magic import ARCHIVE, COMPRESSED, CONTAINER, HEAD_BYTES, TAIL_BYTES, sniff
from immutools.image.source import ByteSource, FileSource, ReadStats
from immutools.limits import DEFAULT_LIMITS, Limits

__all__ = ["OpenedImage", "open_image", "sniff", "MIN_DISK_BYTES"]

MIN_DISK_BYTES = 512

_ARCHIVE_HINTS = {
    "tar": "a tar archive: extract the disk image from it first",
    "zip": "a zip archive: extract the disk image from it first",
    "qcow1": "a qcow version 1 image: convert it first (qemu-img convert -O qcow2)",
}


@dataclass
class OpenedImage:
    path: str
    source: ByteSource  # the virtual disk, random access
    container: str  # "raw" | "qcow2" | "vmdk" | "vhd" | "vhdx"
    compression: str | None  # None | "gzip" | "bzip2" | "xz" | "zstd" | "lz4"
    file_size: int  # bytes of the input file on disk
    decompressed_bytes: int  # decompressed by this open: 0 for uncompressed input, a cache hit, random access
    warnings: list[str] = field(default_factory=list)
    # Logical sector size the container declares (VHDX may say 4096); None when it says nothing.
    sector_size: int | None = None
    # Compressed input: "random" (blocks decoded as reads touch them) or "decompressed" (whole);
    # None for uncompressed input. cache: "hit" | "stored" | "not-stored" | "off" | None.
    access: str | None = None
    cache: str | None = None
    _resources: list = field(default_factory=list, repr=False, compare=False)

    def close(self) -> None:
        """Close the virtual disk and the input; removes any temporary file. Idempotent."""
        resources, self._resources = self._resources, []
        first_error = None
        for res in reversed(resources):
            try:
                res.close()
            except Exception as exc:  # close everything even if one part fails
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> "OpenedImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _head_tail(src: ByteSource) -> tuple[bytes, bytes]:
    head = src.read_at(0, HEAD_BYTES)
    tail = src.read_at(max(0, src.size - TAIL_BYTES), TAIL_BYTES)
    return head, tail


def open_image(
    path,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool | None = None,
    stats: ReadStats | None = None,
    tmpdir: str | None = None,
    cache=None,
    random_access: bool = True,
) -> OpenedImage:
    """Open ``path`` as a virtual disk. See the module docstring for what is recognised.

    ``progress``: None shows a progress line on a terminal when decompression takes over a
    second; True forces it; False disables it. ``tmpdir``: where a compressed image is
    decompressed when it is not cached (default ``$TMPDIR``). ``cache``: None uses the process
    default (``immutools.image.cache.configure``, ``$IMMUTOOLS_CACHE_DIR``), False none, or a
    directory. ``random_access``: False always decompresses whole.
    """
    path = os.fspath(path)
    stats = stats if stats is not None else ReadStats()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot open: {exc.strerror}") from None
    if stat_mod.S_ISDIR(st.st_mode):
        raise UnsupportedImageError(f"{path}: is a directory, not a disk image")
    if not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISBLK(st.st_mode)):
        # Opening a FIFO or a terminal would block or consume it.
        raise UnsupportedImageError(f"{path}: not a regular file or block device")
    src = FileSource(path, stats)
    resources: list = [src]
    try:
        file_size = src.size
        if file_size == 0:
            raise UnsupportedImageError(f"{path}: empty file (0 bytes), not a disk image")
        head, tail = _head_tail(src)
        kind, fmt = sniff(head, tail)
        compression = None
        decompressed_bytes = 0
        warnings: list[str] = []
        base: ByteSource = src
        access = cache_state = None
        if kind == COMPRESSED:
            from immutools.image.access import open_compressed

            opened_c = open_compressed(
                src, fmt, display=path, limits=limits, progress=progress, stats=stats, tmpdir=tmpdir, cache=cache,
                random_access=random_access,
            )
            base = opened_c.source
            resources.append(base)
            warnings += opened_c.warnings
            compression = fmt
            decompressed_bytes = opened_c.decompressed_bytes
            access, cache_state = opened_c.access, opened_c.cache
            if base.size == 0:
                raise UnsupportedImageError(f"{path}: {fmt} data decompresses to an empty file")
            head, tail = _head_tail(base)
            kind, fmt = sniff(head, tail)
            if kind == COMPRESSED:
                raise UnsupportedImageError(
                    f"{path}: {fmt} data inside {compression}: nested compression is not supported; "
                    f"decompress the outer layer first"
                )
        if kind == ARCHIVE:
            inside = f" ({compression}-compressed)" if compression else ""
            raise UnsupportedImageError(f"{path}{inside}: {_ARCHIVE_HINTS.get(fmt, fmt)}")
        container = "raw"
        sector_size = None
        if kind == CONTAINER:
            from immutools.image.vmdisk import open_container

            opened = open_container(
                fmt, base, name=path, base_dir=os.path.dirname(os.path.abspath(path)), stats=stats
            )
            resources.append(opened.source)
            warnings += opened.warnings
            source, container, sector_size = opened.source, opened.container, opened.sector_size
        else:
            source = base
        if source.size < MIN_DISK_BYTES:
            what = "virtual disk" if kind == CONTAINER else ("decompressed data" if compression else "file")
            raise UnsupportedImageError(
                f"{path}: {what} of {source.size} bytes is too small to be a disk image (under {MIN_DISK_BYTES} bytes)"
            )
        return OpenedImage(
            path=path,
            source=source,
            container=container,
            compression=compression,
            file_size=file_size,
            decompressed_bytes=decompressed_bytes,
            warnings=warnings,
            sector_size=sector_size,
            access=access,
            cache=cache_state,
            _resources=resources,
        )
    except BaseException:
        for res in reversed(resources):
            try:
                res.close()
            except Exception:
                pass
        raise
