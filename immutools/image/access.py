"""How a compressed image is read: at random over the compressed file, or decompressed once.

* ``random``: the format indexes itself — an xz file of several blocks (its index lists every
  block's offsets and sizes), a zstd file of several frames that state their content size, or the
  zstd seekable format (its seek table) — so only the blocks a read touches are decoded
  (``immutools.image.seekable``). A first scan of such a file is faster than decompressing it.
* ``decompressed``: every other stream (one xz block, one zstd frame, gzip, bzip2, lz4) is
  decompressed once, guarded against bombs (``immutools.image.guard``), into the decompression
  cache (``immutools.image.cache``), or into an anonymous temporary file without a cache.

``open_compressed`` answers a ``CompressedAccess``: the virtual disk source, the path taken
(``access``), what the cache did (``cache``: ``hit``, ``stored``, ``not-stored`` (too large for
it), ``blocks`` (random access keeping decoded blocks in the cache for the next scan), ``off``),
and warnings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from immutools.errors import ImageIOError
from immutools.image.cache import DecompressionCache, PendingEntry, content_digest, default_cache
from immutools.image.source import ByteSource, FileSource, ReadStats
from immutools.limits import Limits


@dataclass
class CompressedAccess:
    source: ByteSource
    access: str  # "random" | "decompressed"
    cache: str  # "hit" | "stored" | "not-stored" | "off"
    decompressed_bytes: int  # decompressed by this open: 0 on a cache hit and for random access
    warnings: list[str] = field(default_factory=list)


def resolve_cache(cache) -> DecompressionCache | None:
    """``None``: the process default (CLI options, environment); ``False``: none; a path or a cache."""
    if cache is None:
        return default_cache()
    if cache is False:
        return None
    if isinstance(cache, DecompressionCache):
        return cache
    return DecompressionCache(os.fspath(cache))


def open_compressed(
    src: FileSource,
    codec: str,
    *,
    display: str,
    limits: Limits,
    progress: bool | None,
    stats: ReadStats,
    tmpdir: str | None,
    cache=None,
    random_access: bool = True,
) -> CompressedAccess:
    if random_access:
        from immutools.image.seekable import open_seekable

        store = resolve_cache(cache)

        def store_for(source):
            if store is None:
                return None
            try:
                store.check_private()
            except ImageIOError:
                return None
            digest = _digest(store, src, codec, stats)
            return store.block_store(digest, codec, source.size) if digest else None

        seekable = open_seekable(src, codec, display=display, limits=limits, stats=stats, store_for=store_for)
        if seekable is not None:
            return CompressedAccess(seekable, "random", "blocks" if seekable.store is not None else "off", 0, [])
    store = resolve_cache(cache)
    if store is None:
        return _to_temp(src, codec, display, limits, progress, stats, tmpdir, cache_state="off")
    try:
        return _through_cache(store, src, codec, display, limits, progress, stats, tmpdir)
    except _CacheUnusable as exc:
        access = _to_temp(src, codec, display, limits, progress, stats, tmpdir, cache_state="off")
        access.warnings.insert(0, f"{display}: decompression cache not used: {exc}")
        return access


class _CacheUnusable(Exception):
    pass


def _digest(store: DecompressionCache, src: FileSource, codec: str, stats: ReadStats) -> str | None:
    """Content digest of the compressed file, remembered under its pre-key (None if unreadable)."""
    try:
        st = os.fstat(src.fileno())
        prekey = "d-" + store.prekey(st, codec)  # "d-": holds a content digest, not an entry key
        known = store.known_key(prekey)
        if known is not None:
            return known
        digest = content_digest(src.fileno())[:40]
        stats.add(src.size)
        store._ensure_dirs()
        store._write_atomic(store._prekey_path(prekey), digest.encode())
        return digest
    except (OSError, ImageIOError):
        return None


def _to_temp(src, codec, display, limits, progress, stats, tmpdir, cache_state) -> CompressedAccess:
    from immutools.image.compressed import decompress_to_temp

    base, warnings = decompress_to_temp(
        src, codec, display=display, limits=limits, progress=progress, stats=stats, tmpdir=tmpdir
    )
    return CompressedAccess(base, "decompressed", cache_state, base.size, warnings)


def _through_cache(store: DecompressionCache, src: FileSource, codec: str, display: str, limits: Limits,
                   progress, stats: ReadStats, tmpdir) -> CompressedAccess:
    from immutools.image.compressed import DecompressedSource, decompress_into

    name = f"{display} ({codec}-decompressed)"
    try:
        st = os.fstat(src.fileno())
    except OSError as exc:
        raise ImageIOError(f"{display}: cannot stat: {exc.strerror}") from None
    try:
        store.check_private()
    except ImageIOError as exc:
        raise _CacheUnusable(str(exc)) from None
    prekey = store.prekey(st, codec)
    key = store.known_key(prekey)
    if key is not None:
        hit = store.lookup(key)
        if hit is not None:
            return CompressedAccess(DecompressedSource(hit.fd, hit.size, name, stats, None), "decompressed", "hit",
                                    0, [])
    try:
        key = store.key_for(content_digest(src.fileno()), codec)
    except OSError as exc:
        raise ImageIOError(f"{display}: read error: {exc.strerror}") from None
    stats.add(src.size)  # the hashing pass
    try:
        began = store.begin(key, codec, src.size, prekey)
    except ImageIOError as exc:
        raise _CacheUnusable(str(exc)) from None
    if not isinstance(began, PendingEntry):
        return CompressedAccess(DecompressedSource(began.fd, began.size, name, stats, None), "decompressed", "hit",
                                0, [])
    pending = began
    try:
        size, warnings = decompress_into(
            src, codec, pending.fd, display=display, directory=store.root, limits=limits, progress=progress,
            stats=stats, hint="use --cache-dir for a larger directory, or --no-cache",
        )
    except BaseException:
        os.close(pending.fd)
        pending.release()
        raise
    kept = pending.commit(size)
    if kept:
        store.evict(keep=key)
    return CompressedAccess(DecompressedSource(pending.fd, size, name, stats, None), "decompressed",
                            "stored" if kept else "not-stored", size, warnings)
