"""Which Debian archive state the real-system fixtures are built from.

The fixture cache is keyed by the suite's signed ``InRelease`` file (its SHA-256 and ``Date:``):
it names every package version the build can install, so a new Debian point release rebuilds the
fixtures and an unchanged archive reuses them. The last state seen is remembered beside the cache,
so a run without network reuses the fixtures it already has instead of failing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import urllib.error
import urllib.request

from builders import CACHE

MIRROR = os.environ.get("IMMUTOOLS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"                      # Debian 12: systemd 252, mkosi 14, mmdebstrap 1.3.5
_FETCH_TIMEOUT = 15


class MirrorUnavailable(Exception):
    """Neither the archive nor a remembered archive state is available."""


def _state_file():
    return CACHE / f"realsys-mirror-{SUITE}.json"


@functools.lru_cache(maxsize=None)
def mirror_state() -> dict:
    """``{"mirror", "suite", "inrelease_sha256", "date", "version"}`` of the archive right now (or,
    offline, the last one seen)."""
    url = f"{MIRROR}/dists/{SUITE}/InRelease"
    remembered = _state_file()
    try:
        with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:
            body = response.read(4 << 20)
    except (urllib.error.URLError, OSError) as exc:
        if remembered.exists():
            return json.loads(remembered.read_text())
        raise MirrorUnavailable(f"{url}: {exc}") from exc
    text = body.decode("utf-8", errors="replace")
    date = re.search(r"^Date:\s*(.+)$", text, re.M)
    version = re.search(r"^Version:\s*(.+)$", text, re.M)
    state = {"mirror": MIRROR, "suite": SUITE, "inrelease_sha256": hashlib.sha256(body).hexdigest(),
             "date": date.group(1).strip() if date else None, "version": version.group(1).strip() if version else None}
    CACHE.mkdir(parents=True, exist_ok=True)
    remembered.write_text(json.dumps(state, indent=1) + "\n")
    return state
