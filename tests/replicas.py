"""Cached replica images for tests: ``build_replica(name, form)`` and ``replica_manifest(name)``.

A replica is built once per (spec content, builder source) and kept in the fixture cache
(``tests/builders.cached``), so any test can scan e.g. ``flatcar-stable-4593-amd64-pristine``
cheaply after the first run. ``name`` is a spec name from ``data/replica-specs`` (the full-size
variants in ``data/replica-specs/fullsize/`` included) or a path to a YAML spec. A spec that grafts
full-size package trees is also keyed by their resolved package versions (``tests/fullsize.py``).
The manifest (``<image>.manifest.json``) carries the spec's ``expect:`` section with the
computed values (verity root hashes, salts) filled in: use it as the expected answer of a scan.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from builders import cached
from fullsize import tree_provider, tree_recipes

from immutools.replica import BUILDER_VERSION
from immutools.replica import builder as replica_builder
from immutools.replica.spec import load_spec

_BUILDER_DIR = Path(replica_builder.__file__).resolve().parent


def _sources_digest() -> str:
    """The builder's own code is part of the cache key, so a builder change rebuilds the replicas."""
    h = hashlib.sha256()
    # every module of the package (content kinds live in modules the builder dispatches to), except
    # the package-tree source: what it makes is keyed by its own recipe (tree_recipes)
    for name in sorted({"reproshim.c", *(p.name for p in _BUILDER_DIR.glob("*.py"))} - {"packages.py"}):
        h.update(name.encode() + b"\0" + (_BUILDER_DIR / name).read_bytes())
    return h.hexdigest()


def replica_recipe(name: str | Path) -> dict:
    spec = load_spec(name)
    recipe = {
        "kind": "immutools-replica",
        "builder_version": BUILDER_VERSION,
        "builder_sources": _sources_digest(),
        "spec": spec.name,
        # The merged spec content (all extended files), not the paths: the same spec anywhere hits the cache.
        "spec_content": json.dumps(spec.data, sort_keys=True, default=str),
    }
    copies = _copied_files(spec)
    if copies:
        recipe["copied_files"] = copies
    if spec.data.get("grafts"):
        recipe["package_trees"] = tree_recipes(spec)
    return recipe


def _copied_files(spec) -> dict:
    """Digests of the files ``copy:`` entries read (variant files, host EFI binaries): the spec names
    them by path only, so a changed file would otherwise hit the old cache entry. Resolved as
    ``immutools/replica/files.py: copy_entry`` resolves them."""
    found: dict[str, str] = {}
    bases = [spec.path.parent, *(f.parent for f in reversed(spec.files))]

    def visit(node) -> None:
        if isinstance(node, dict):
            value = node.get("copy")
            if isinstance(value, (str, Path)):
                src = Path(str(value))
                if not src.is_absolute():
                    src = next((b / src for b in bases if (b / src).exists()), bases[0] / src)
                try:
                    found[str(value)] = hashlib.sha256(src.read_bytes()).hexdigest()
                except OSError:
                    found[str(value)] = "unreadable"
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(spec.data)
    return dict(sorted(found.items()))


def _cached_dir(name: str, recipe: dict, build) -> Path:
    """``cached`` for a directory, tolerating another test process finishing the same build first
    (``os.replace`` onto an existing non-empty directory fails; then the other build is used)."""
    try:
        return cached(name, recipe, build, suffix="")
    except OSError as exc:
        if exc.filename and exc.filename2 and Path(exc.filename2).is_dir():
            shutil.rmtree(exc.filename, ignore_errors=True)
            return Path(exc.filename2)
        raise


def replica_dir(name: str | Path) -> Path:
    """The cached build directory (raw image + manifest) of a spec."""
    spec = load_spec(name)
    trees = tree_provider() if spec.data.get("grafts") else None
    return _cached_dir(f"replica-{spec.name}", replica_recipe(name),
                       lambda tmp: replica_builder.build(spec, tmp, ["raw"], trees=trees))


def build_replica(name: str | Path, form: str = "raw") -> Path:
    """Path of the cached replica image in ``form`` (raw, bz2, xz, zst, lz4, gz, qcow2)."""
    spec = load_spec(name)
    raw = replica_dir(name) / replica_builder.image_name(spec)
    if form == "raw":
        return raw

    def make(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        link = tmp / raw.name
        link.symlink_to(raw)
        out = replica_builder.convert(link, form)
        link.unlink()
        assert out.parent == tmp

    out_dir = _cached_dir(f"replica-{spec.name}-{form}", dict(replica_recipe(name), form=form), make)
    files = [p for p in out_dir.iterdir() if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def replica_manifest(name: str | Path) -> dict:
    spec = load_spec(name)
    path = replica_dir(name) / (replica_builder.image_name(spec) + ".manifest.json")
    return json.loads(path.read_text())
