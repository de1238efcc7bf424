"""The content digest that keys every image of a dataset: an image already scanned (same digest,
same tool version) is not scanned again, wherever the file lies and whatever it is called.

* A local file: SHA-256 of its bytes, exactly the digest the decompression cache keys its entries
  with (``immutools.image.cache.content_digest``, first 40 hex digits), remembered through the
  cache's pre-key memo (device, inode, size, mtime, ctime -> digest; ``immutools.image.access``). A
  compressed image read at random (multi-block xz, multi-frame zstd) therefore shares the memo with
  the scan itself, and an unchanged file is hashed once however many runs name it. Without a usable
  cache (``--no-cache``) the file is hashed each run.
* A saved report (``.json``): SHA-256 of the file.
* A replica spec: SHA-256 of the merged spec content, the builder version and the form (a build is
  byte-for-byte reproducible, so the spec names the bytes).
* A URL: the remote store's own version token (fsspec ``checksum``: ETag/generation/size/mtime), so
  that deciding to skip never downloads the object.
"""

from __future__ import annotations

import hashlib
import json
import os

from immutools.errors import ImageIOError

DIGEST_CHARS = 40


def file_digest(path: str) -> str:
    """Content digest of a local file (see the module docstring)."""
    from immutools.image.access import _digest
    from immutools.image.cache import content_digest, default_cache
    from immutools.image.magic import COMPRESSED, HEAD_BYTES, sniff
    from immutools.image.source import FileSource, ReadStats

    stats = ReadStats()
    try:
        src = FileSource(path, stats)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        head = src.read_at(0, HEAD_BYTES)
        kind, fmt = sniff(head, src.read_at(max(0, src.size - 512), 512))
        # The codec in the memo's pre-key is the one the scan uses for compressed input, so the
        # scan of a random-access image finds this digest instead of hashing the file again.
        codec = fmt if kind == COMPRESSED else "file"
        store = default_cache()
        digest = _digest(store, src, codec, stats) if store is not None else None
        if digest is None:
            digest = content_digest(src.fileno())[:DIGEST_CHARS]
        return digest
    except OSError as exc:
        raise ImageIOError(f"{path}: read error: {exc.strerror}") from None
    finally:
        src.close()


def report_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot read: {exc.strerror}") from None
    return h.hexdigest()[:DIGEST_CHARS]


def spec_digest(name: str, form: str) -> str:
    from immutools.replica import BUILDER_VERSION
    from immutools.replica.spec import load_spec

    spec = load_spec(name)
    payload = json.dumps({"spec": spec.data, "builder": BUILDER_VERSION, "form": form}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:DIGEST_CHARS]


def url_digest(url: str) -> str:
    from immutools.corpus.remote import url_checksum

    return hashlib.sha256(f"{url_checksum(url)}".encode()).hexdigest()[:DIGEST_CHARS]


def stat_identity(path: str) -> dict | None:
    """What a later run compares to know a file is unchanged without reading it (None: no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}
