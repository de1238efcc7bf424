"""The decompression cache: a compressed image is decompressed once, then read from here.

``compare``, ``report`` and ``scan-many`` scan the same ``.bin.bz2``/``.raw.xz`` files again and
again; each scan used to decompress the whole image again. An entry is the sparse decompressed
image (holes kept), so an 8 GiB Flatcar image costs only the disk space of its data.

Where: ``--cache-dir``, else ``$IMMUTOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/immutools``, else
``~/.cache/immutools`` (created 0700). ``--no-cache`` turns it off. Size: at most
``$IMMUTOOLS_CACHE_MAX`` (bytes, or with a K/M/G/T suffix), by default 20 GiB or half of the
free space of its filesystem (plus what the cache holds), whichever is smaller; the least recently
used entries are evicted first. An image too large for that is decompressed as before into an
anonymous file that is gone when the scan ends.

Keys. An entry is named by a content digest: SHA-256 of the whole compressed file, with the codec
and the cache format version. Hashing a compressed file costs one read of it (a fraction of a
second for a Flatcar image), so a fast pre-key skips it: (device, inode, size, mtime, ctime) of the
input names a small file holding the content digest of what that file held. Rewriting a file in
place changes its mtime and ctime (ctime cannot be set back without root), replacing it by rename
changes the inode: either way the pre-key misses and the file is hashed again.

Trust. An entry is used only when its metadata parses, its size is the recorded decompressed size
and a digest of its first and last 64 KiB (where partition tables live) matches the recorded one;
anything else — a truncated or overwritten entry, a half-written one — is discarded and rebuilt.
A cache directory that another user owns or that group/others may write is not used at all
(whoever writes an entry decides what a later scan reads): the image is decompressed into a
temporary file instead, with a warning.

Atomicity. One writer per key holds an exclusive ``flock`` on ``<key>.lock`` while it decompresses
(a second process scanning the same image waits, then uses the finished entry); the data is written
to a temporary name (``O_TMPFILE`` where the filesystem has it, so a killed writer leaves nothing)
and linked into place, then the metadata is written and renamed into place: an entry without
metadata does not exist. Readers keep their descriptor, so eviction never pulls data from under a
running scan.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass

from immutools.errors import ImageIOError
from immutools.paths import write_atomic

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 20 * 1024**3
EDGE_BYTES = 64 * 1024
HASH_CHUNK = 4 * 1024 * 1024
STALE_TEMP_SECONDS = 24 * 3600

_ENV_DIR = "IMMUTOOLS_CACHE_DIR"
_ENV_MAX = "IMMUTOOLS_CACHE_MAX"

# Process-wide choice made by the CLI's --cache-dir / --no-cache (None = environment default).
_configured: dict = {"enabled": True, "directory": None}


def configure(directory: str | None = None, enabled: bool = True) -> None:
    """Set the cache every ``open_image`` of this process uses by default."""
    _configured["enabled"] = enabled
    _configured["directory"] = directory


def default_directory() -> str:
    env = os.environ.get(_ENV_DIR)
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "immutools")


def default_cache() -> "DecompressionCache | None":
    if not _configured["enabled"]:
        return None
    return DecompressionCache(_configured["directory"] or default_directory())


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())


def _edge_digest(fd: int, size: int) -> str:
    h = hashlib.sha256()
    h.update(os.pread(fd, EDGE_BYTES, 0))
    if size > EDGE_BYTES:
        h.update(os.pread(fd, EDGE_BYTES, max(EDGE_BYTES, size - EDGE_BYTES)))
    return h.hexdigest()


def content_digest(fd: int) -> str:
    """SHA-256 of a whole file, read with pread (no shared offset)."""
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, HASH_CHUNK, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)


_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_linkat_fn: list = []


def _linkat():
    """libc ``linkat``: ``os.link`` calls link(2), which cannot name an O_TMPFILE file through
    /proc/self/fd (it links the magic symlink itself and fails with EXDEV)."""
    if not _linkat_fn:
        fn = None
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).linkat
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        except (OSError, AttributeError, ImportError):
            fn = None
        _linkat_fn.append(fn)
    return _linkat_fn[0]


def _link_fd(fd: int, path: str) -> None:
    import ctypes

    if _linkat()(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


@dataclass
class CacheHit:
    fd: int  # open read-only descriptor of the entry's data
    size: int
    key: str


class PendingEntry:
    """A cache entry being written: a temporary file, linked into place by ``commit``."""

    def __init__(self, cache: "DecompressionCache", key: str, lock_fd: int, codec: str, compressed_size: int,
                 prekey: str):
        self.cache = cache
        self.key = key
        self._lock_fd = lock_fd
        self.codec = codec
        self.compressed_size = compressed_size
        self.prekey = prekey
        self.fd, self._temp_path = cache._new_temp(key)

    def commit(self, size: int) -> bool:
        """Make the written data the entry for ``key``; False if it was not kept (too large)."""
        try:
            st = os.fstat(self.fd)
            allocated = st.st_blocks * 512
            if allocated > self.cache.max_bytes(extra=allocated):
                return False
            data_path = self.cache._path(self.key, ".img")
            self.cache._remove_entry(self.key)
            if self._temp_path is None:  # O_TMPFILE: give the anonymous file its name
                _link_fd(self.fd, data_path)
            else:
                os.replace(self._temp_path, data_path)
                self._temp_path = None
            meta = {
                "version": FORMAT_VERSION,
                "codec": self.codec,
                "compressed_size": self.compressed_size,
                "size": size,
                "edges": _edge_digest(self.fd, size),
                "created": time.time(),
            }
            self.cache._write_atomic(self._meta_path(), json.dumps(meta).encode())
            self.cache._write_atomic(self.cache._prekey_path(self.prekey), self.key.encode())
            return True
        except OSError:
            self.cache._remove_entry(self.key)
            return False
        finally:
            self.release()

    def _meta_path(self) -> str:
        return self.cache._path(self.key, ".json")

    def release(self) -> None:
        """Drop the lock and any temporary name (the descriptor stays open for the caller)."""
        if self._temp_path is not None:
            try:
                os.unlink(self._temp_path)
            except OSError:
                pass
            self._temp_path = None
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)  # closing releases the flock
            finally:
                self._lock_fd = None


class DecompressionCache:
    def __init__(self, directory: str, max_total: int | None = None):
        self.root = os.path.abspath(directory)
        self.dir = os.path.join(self.root, f"v{FORMAT_VERSION}")
        self._max_total = max_total

    # -- paths ------------------------------------------------------------------------------------
    def _path(self, key: str, suffix: str) -> str:
        return os.path.join(self.dir, key + suffix)

    def _prekey_path(self, prekey: str) -> str:
        return os.path.join(self.dir, "prekeys", prekey)

    def _ensure_dirs(self) -> None:
        try:
            for path in (self.root, self.dir, os.path.join(self.dir, "prekeys")):
                os.makedirs(path, mode=0o700, exist_ok=True)  # each level: makedirs' mode is the leaf's
        except OSError as exc:
            raise ImageIOError(f"cache directory {self.root}: cannot create: {exc.strerror}") from None
        self.check_private()

    def check_private(self) -> None:
        """Refuse a cache directory someone else could write: whoever can write an entry decides
        what a later scan reads as the image (like ssh with ~/.ssh)."""
        for path in (self.root, self.dir):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ImageIOError(f"cache directory {path}: {exc.strerror}") from None
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise ImageIOError(
                    f"cache directory {path} is not private (owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}): "
                    f"not used"
                )

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def prekey(st: os.stat_result, codec: str) -> str:
        raw = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{codec}:{FORMAT_VERSION}"
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    @staticmethod
    def key_for(digest: str, codec: str) -> str:
        return hashlib.sha256(f"{digest}:{codec}:{FORMAT_VERSION}".encode()).hexdigest()[:40]

    def known_key(self, prekey: str) -> str | None:
        try:
            with open(self._prekey_path(prekey), "rb") as f:
                text = f.read(100).decode("ascii", "replace").strip()
        except OSError:
            return None
        return text if re.fullmatch(r"[0-9a-f]{40}", text) else None

    # -- lookup -----------------------------------------------------------------------------------
    def lookup(self, key: str) -> CacheHit | None:
        """The entry for ``key`` if present and intact; a damaged one is removed."""
        try:
            with open(self._path(key, ".json"), "rb") as f:
                meta = json.loads(f.read(64 * 1024))
            fd = os.open(self._path(key, ".img"), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (OSError, ValueError):
            return None
        try:
            size = meta.get("size") if isinstance(meta, dict) else None
            intact = (
                isinstance(size, int)
                and meta.get("version") == FORMAT_VERSION
                and os.fstat(fd).st_size == size
                and meta.get("edges") == _edge_digest(fd, size)
            )
        except OSError:
            intact = False
        if not intact:
            os.close(fd)
            self._discard_damaged(key)
            return None
        try:
            os.utime(self._path(key, ".json"))  # last use, for LRU eviction
        except OSError:
            pass
        return CacheHit(fd, size, key)

    def _discard_damaged(self, key: str) -> None:
        lock_fd = self._try_lock(key)
        if lock_fd is None:  # someone is rebuilding it right now
            return
        try:
            self._remove_entry(key)
        finally:
            os.close(lock_fd)

    # -- writing ----------------------------------------------------------------------------------
    def _lock_path(self, key: str) -> str:
        return self._path(key, ".lock")

    def _open_lock(self, key: str) -> int:
        return os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)

    def _try_lock(self, key: str) -> int | None:
        try:
            fd = self._open_lock(key)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def begin(self, key: str, codec: str, compressed_size: int, prekey: str) -> "CacheHit | PendingEntry":
        """Wait for the key's lock; then either the entry another process just finished, or a
        ``PendingEntry`` to fill (the caller owns the lock until ``commit``/``release``)."""
        self._ensure_dirs()
        try:
            lock_fd = self._open_lock(key)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise ImageIOError(f"cache directory {self.root}: cannot lock an entry: {exc.strerror}") from None
        try:
            hit = self.lookup(key)
            if hit is not None:
                os.close(lock_fd)
                self._write_atomic(self._prekey_path(prekey), key.encode())
                return hit
            return PendingEntry(self, key, lock_fd, codec, compressed_size, prekey)
        except BaseException:
            os.close(lock_fd)
            raise

    def _new_temp(self, key: str) -> tuple[int, str | None]:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if hasattr(os, "O_TMPFILE") and _linkat() is not None:
            try:
                return os.open(self.dir, flags | os.O_TMPFILE, 0o600), None
            except OSError:
                pass  # filesystem without O_TMPFILE: a named temporary file, removed on failure
        try:
            fd, path = tempfile.mkstemp(prefix=f"{key}.tmp-{os.getpid()}-", dir=self.dir)
        except OSError as exc:
            raise ImageIOError(f"cache directory {self.root}: cannot create a file: {exc.strerror}") from None
        return fd, path

    def _write_atomic(self, path: str, data: bytes) -> None:
        write_atomic(path, data)

    def _remove_entry(self, key: str) -> None:
        for suffix in (".json", ".img"):  # metadata first: without it the entry does not exist
            try:
                os.unlink(self._path(key, suffix))
            except FileNotFoundError:
                pass
        blocks = self._path(key, ".d")
        if os.path.isdir(blocks):
            import shutil

            shutil.rmtree(blocks, ignore_errors=True)

    # -- decoded blocks of random-access images ----------------------------------------------------
    def block_store(self, digest: str, codec: str, size: int) -> "BlockStore | None":
        """Where decoded blocks of a random-access image are kept between scans (None: unusable)."""
        key = self.key_for(digest, f"{codec}-blocks")
        try:
            self._ensure_dirs()
            os.makedirs(self._path(key, ".d"), mode=0o700, exist_ok=True)
            meta_path = self._path(key, ".json")
            if os.path.exists(meta_path):
                os.utime(meta_path)  # last use
            else:
                meta = {"version": FORMAT_VERSION, "kind": "blocks", "codec": codec, "size": size, "created": time.time()}
                self._write_atomic(meta_path, json.dumps(meta).encode())
        except (OSError, ImageIOError):
            return None
        return BlockStore(self, key)

    # -- size bound and eviction --------------------------------------------------------------------
    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, allocated bytes, key) of every complete entry."""
        out = []
        try:
            names = os.listdir(self.dir)
        except OSError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            key = name[:-5]
            try:
                used = os.stat(os.path.join(self.dir, name)).st_mtime
                if os.path.isdir(self._path(key, ".d")):
                    blocks = self._path(key, ".d")
                    allocated = sum(os.stat(os.path.join(blocks, f)).st_blocks * 512 for f in os.listdir(blocks))
                else:
                    allocated = os.stat(self._path(key, ".img")).st_blocks * 512
            except OSError:
                continue
            out.append((used, allocated, key))
        return out

    def usage(self) -> int:
        return sum(allocated for _used, allocated, _key in self.entries())

    def max_bytes(self, extra: int = 0) -> int:
        """The size bound: explicit, ``$IMMUTOOLS_CACHE_MAX``, or min(20 GiB, half the free space
        plus what the cache already holds). ``extra``: bytes already written but not yet counted."""
        if self._max_total is not None:
            return self._max_total
        env = os.environ.get(_ENV_MAX)
        if env:
            try:
                return parse_size(env)
            except ValueError:
                pass
        try:
            st = os.statvfs(self.dir)
            free = st.f_bavail * st.f_frsize + extra
        except OSError:
            return DEFAULT_MAX_BYTES
        return min(DEFAULT_MAX_BYTES, (free + self.usage()) // 2)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the total fits; returns the evicted keys."""
        entries = sorted(self.entries())
        total = sum(a for _u, a, _k in entries)
        limit = self.max_bytes()
        evicted = []
        for _used, allocated, key in entries:
            if total <= limit:
                break
            if key == keep:
                continue
            lock_fd = self._try_lock(key)
            if lock_fd is None:
                continue
            try:
                self._remove_entry(key)
            finally:
                os.close(lock_fd)
            total -= allocated
            evicted.append(key)
        self._sweep(evicted)
        return evicted

    def _sweep(self, evicted: list[str]) -> None:
        """Remove stale temporary files (left by a killed writer without O_TMPFILE) and dangling pre-keys."""
        now = time.time()
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.dir, name)
            if ".tmp-" in name:
                try:
                    if now - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(path)
                except OSError:
                    pass
        # Lock files stay (empty): unlinking one another process waits on would let two writers in.
        prekeys = os.path.join(self.dir, "prekeys")
        try:
            for name in os.listdir(prekeys):
                if name.startswith("d-"):
                    continue  # a file's content digest (random-access images), valid without an entry
                key = self.known_key(name)
                if key is None or not os.path.exists(self._path(key, ".json")):
                    try:
                        os.unlink(os.path.join(prekeys, name))
                    except OSError:
                        pass
        except OSError:
            pass


class BlockStore:
    """Decoded blocks of one random-access image, one file per block (``<key>.d/<index>``), each
    written under a temporary name and renamed into place; a block file is used only if its size
    is the block's declared size. Best effort: a failure to keep a block only costs a decode."""

    def __init__(self, cache: DecompressionCache, key: str):
        self.cache = cache
        self.key = key
        self.dir = cache._path(key, ".d")

    def read(self, index: int, size: int, offset: int, length: int) -> bytes | None:
        try:
            fd = os.open(os.path.join(self.dir, str(index)), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != size:
                return None
            data = os.pread(fd, length, offset)
            return data if len(data) == length else None
        except OSError:
            return None
        finally:
            os.close(fd)

    def write(self, index: int, data: bytes) -> None:
        """Keep a decoded block (sparse: its all-zero 64 KiB pieces are holes)."""
        from immutools.image.guard import is_zero

        try:
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{index}-", dir=self.dir)
        except OSError:
            return
        try:
            view = memoryview(data)
            step = 64 * 1024
            for pos in range(0, len(data), step):
                piece = view[pos : pos + step]
                if not is_zero(piece):
                    os.pwrite(fd, piece, pos)
            os.ftruncate(fd, len(data))
            os.close(fd)
            fd = None
            os.replace(tmp, os.path.join(self.dir, str(index)))
        except OSError:
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
