"""Where the project's data and caches live, for a source checkout and an installed wheel alike."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir() -> Path:
    """``data/`` at the top of a checkout, or the copy packaged as ``immutools/_data``."""
    override = os.environ.get("IMMUTOOLS_DATA")
    if override:
        return Path(override)
    packaged = _PKG / "_data"
    if packaged.is_dir():
        return packaged
    return _PKG.parent / "data"


def cache_dir() -> Path:
    override = os.environ.get("IMMUTOOLS_CACHE")
    if override:
        return Path(override)
    checkout = _PKG.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "immutools"


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader (another process of a scan-many run, a second scan sharing the cache) never sees half a
    file; the temporary file is removed if anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
