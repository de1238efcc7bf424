"""Scanning an image named by an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://`` ...)
without copying it whole: the scan's reads become ranged requests (``fs.cat_file(path, start,
end)``) in aligned blocks kept in a small LRU, so a raw image or a VM container (qcow2, VMDK, VHD,
VHDX) costs the metadata the scan touches, and an xz/zstd image that indexes itself costs the
blocks it decodes. A stream that does not index itself (gzip, bzip2, lz4, one-block xz/zstd) is
read once, in order, through the decompressor into a sparse temporary file -- decompressed whole
as for a local file, but never stored compressed. A VMDK descriptor is refused: its extents would
be further objects the image names.

``immutools.image.open_image`` takes a local path; this module puts the same pieces
(``sniff``, ``open_compressed``, ``open_container``) over a remote byte source. Which store a URL
reaches and with which credentials is fsspec's configuration (environment, ``~/.config/fsspec``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from immutools.errors import ImageIOError, UnsupportedImageError
from immutools.image.source import ByteSource, ReadStats
from immutools.limits import DEFAULT_LIMITS, Limits

BLOCK = 1024 * 1024          # one ranged request fetches this much (aligned)
CACHED_BLOCKS = 64           # 64 MiB of fetched blocks kept per open image


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError:
        from immutools.corpus.dataset import missing_extra

        raise missing_extra("fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ImageIOError(f"{url}: no fsspec filesystem for this URL: {exc}") from None


def url_checksum(url: str) -> str:
    """The store's version token of the object (fsspec ``checksum``: ETag, generation, size, mtime)."""
    fs, path = _filesystem(url)
    try:
        return str(fs.checksum(path))
    except FileNotFoundError:
        raise ImageIOError(f"{url}: no such object") from None
    except OSError as exc:
        raise ImageIOError(f"{url}: cannot stat: {exc}") from None


def glob_urls(pattern: str) -> list[str]:
    fs, path = _filesystem(pattern)
    try:
        found = fs.glob(path)
    except OSError as exc:
        raise ImageIOError(f"{pattern}: cannot list: {exc}") from None
    return sorted(fs.unstrip_protocol(p) for p in found)


class RemoteSource(ByteSource):
    """A remote object read by ranged requests, in aligned blocks with a small LRU."""

    def __init__(self, url: str, stats: ReadStats | None = None):
        self.url = url
        self.fs, self.path = _filesystem(url)
        try:
            size = int(self.fs.size(self.path))
        except FileNotFoundError:
            raise ImageIOError(f"{url}: no such object") from None
        except (OSError, TypeError, ValueError) as exc:
            raise ImageIOError(f"{url}: cannot stat: {exc}") from None
        super().__init__(size, stats)
        self.name = url
        self.requests = 0
        self.fetched = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _block(self, index: int) -> bytes:
        with self._lock:
            data = self._blocks.get(index)
            if data is not None:
                self._blocks.move_to_end(index)
                return data
        start = index * BLOCK
        end = min(self.size, start + BLOCK)
        try:
            data = self.fs.cat_file(self.path, start=start, end=end)
        except OSError as exc:
            raise ImageIOError(f"{self.url}: read error at {start}: {exc}") from None
        if len(data) != end - start:
            raise ImageIOError(f"{self.url}: short read at {start} ({len(data)} of {end - start} bytes)")
        with self._lock:
            self.requests += 1
            self.fetched += len(data)
            self._blocks[index] = data
            while len(self._blocks) > CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return data

    def _read_at(self, offset: int, length: int) -> bytes:
        out = []
        pos, end = offset, min(self.size, offset + length)
        while pos < end:
            index = pos // BLOCK
            block = self._block(index)
            lo = pos - index * BLOCK
            piece = block[lo: lo + (end - pos)]
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def close(self) -> None:
        self._blocks.clear()


def open_url(url: str, limits: Limits = DEFAULT_LIMITS, stats: ReadStats | None = None):
    """An ``OpenedImage`` over the remote object (see the module docstring)."""
    from immutools.image import MIN_DISK_BYTES, OpenedImage
    from immutools.image.access import open_compressed
    from immutools.image.magic import ARCHIVE, COMPRESSED, CONTAINER, HEAD_BYTES, TAIL_BYTES, sniff

    stats = stats or ReadStats()
    src = RemoteSource(url, stats)
    resources: list = [src]
    try:
        if src.size == 0:
            raise UnsupportedImageError(f"{url}: empty object (0 bytes), not a disk image")
        kind, fmt = sniff(src.read_at(0, HEAD_BYTES), src.read_at(max(0, src.size - TAIL_BYTES), TAIL_BYTES))
        base, compression, access, decompressed, warnings = src, None, None, 0, []
        if kind == COMPRESSED:
            opened_c = open_compressed(src, fmt, display=url, limits=limits, progress=False, stats=stats, tmpdir=None,
                                       cache=False)
            base, compression, access = opened_c.source, fmt, opened_c.access
            decompressed, warnings = opened_c.decompressed_bytes, list(opened_c.warnings)
            resources.append(base)
            kind, fmt = sniff(base.read_at(0, HEAD_BYTES), base.read_at(max(0, base.size - TAIL_BYTES), TAIL_BYTES))
            if kind == COMPRESSED:
                raise UnsupportedImageError(f"{url}: {fmt} data inside {compression}: nested compression is not supported")
        if kind == ARCHIVE:
            raise UnsupportedImageError(f"{url}: a {fmt} archive: extract the disk image from it first")
        container, sector_size, source = "raw", None, base
        if kind == CONTAINER:
            if fmt == "vmdk-descriptor":
                raise UnsupportedImageError(f"{url}: a VMDK descriptor names its extents as further files: "
                                            f"not read from a URL")
            from immutools.image.vmdisk import open_container

            opened = open_container(fmt, base, name=url, base_dir="", stats=stats)
            resources.append(opened.source)
            warnings += opened.warnings
            source, container, sector_size = opened.source, opened.container, opened.sector_size
        if source.size < MIN_DISK_BYTES:
            raise UnsupportedImageError(f"{url}: {source.size} bytes is too small to be a disk image")
        return OpenedImage(path=url, source=source, container=container, compression=compression,
                           file_size=src.size, decompressed_bytes=decompressed, warnings=warnings,
                           sector_size=sector_size, access=access, cache="off" if compression else None,
                           _resources=resources)
    except BaseException:
        for res in reversed(resources):
            try:
                res.close()
            except Exception:  # noqa: BLE001
                pass
        raise


def scan_url(url: str, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Scan the image at ``url``; the report's ``image.path`` is the URL."""
    from immutools.disk import DiskImage, PhaseTimer
    from immutools.scan import scan_image
    from immutools.volumes import read_partition_table

    opened = open_url(url, limits)
    try:
        table = read_partition_table(opened.source, limits=limits)
        image = DiskImage(opened, table, limits, PhaseTimer())
    except BaseException:
        opened.close()
        raise
    with image:
        report = scan_image(image)
    report["image"]["path"] = url
    return report
