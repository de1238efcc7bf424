"""Manifest rows that name a replica spec (``spec: flatcar-stable-3227-amd64-pristine``): the image
is built by the replica builder (``immutools.replica.builder.build``) the first time a worker needs
it, into ``REPLICA_DIR/<spec>-<digest>/``, and reused after that. The directory name carries the
spec digest (``immutools.corpus.digest.spec_digest``: spec content, builder version, form), so an
edited spec is built again. Builds need the image-building tools (``./run setup`` installs them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from immutools.errors import ImmutoolsError


class ReplicaBuildError(ImmutoolsError):
    """A spec named in a manifest could not be built (exit 3, a failure row)."""


def default_replica_dir() -> Path:
    from immutools.paths import cache_dir

    return cache_dir() / "replicas"


def replica_image(name: str, form: str = "raw", replica_dir: str | os.PathLike | None = None) -> Path:
    """Path of the built replica ``name`` in ``form``, building it if needed."""
    from immutools.corpus.digest import spec_digest
    from immutools.replica.builder import build

    root = Path(replica_dir) if replica_dir else default_replica_dir()
    target = root / f"{name}-{form}-{spec_digest(name, form)[:16]}"
    found = _image_in(target, form)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        try:
            manifest = build(name, work, ["raw"] if form == "raw" else ["raw", form], compute_sha256=False)
        except (ValueError, RuntimeError, OSError) as exc:     # SpecError, BuildError, a missing tool
            raise ReplicaBuildError(f"spec:{name}: the replica could not be built: {str(exc).splitlines()[0]}") from None
        (work / "form").write_text(manifest["forms"].get(form, manifest["image"]) + "\n")
        if form != "raw":
            (work / manifest["image"]).unlink(missing_ok=True)
        try:
            os.rename(work, target)
        except OSError:
            if _image_in(target, form) is None:      # not a concurrent build that finished first
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    found = _image_in(target, form)
    if found is None:
        raise ReplicaBuildError(f"spec:{name}: the build left no {form} image in {target}")
    return found


def _image_in(directory: Path, form: str) -> Path | None:
    marker = directory / "form"
    try:
        name = marker.read_text().strip()
    except OSError:
        return None
    path = directory / name
    return path if name and path.is_file() else None
