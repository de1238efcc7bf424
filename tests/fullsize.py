"""Full-size package trees for tests, kept in the fixture cache.

The tree source is ``immutools.replica.packages`` (Debian 12 package metadata, contents emptied;
the module docstring says why). Here it stores what it makes in the tests' fixture cache: the
``.deb`` downloads in ``<cache>/debian-debs/`` (kept across runs, named by version) and each tree
as ``cached("pkgtree-<set>", recipe, ...)``, keyed by the set's resolved package versions, so a new
Debian point release makes a new tree and an unchanged archive reuses the old one.

    package_tree("talos-rootfs")      # -> PackageTree(root=<dir>, facts=<tree.json>)
    tree_provider()                   # what tests/replicas.py hands the builder for specs with grafts
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from builders import CACHE, cached

from immutools.replica.packages import DebianPackageTrees, PackageTree


def missing_tools() -> list[str]:
    """What the package trees need from the host (Debian's apt and dpkg)."""
    return [t for t in ("apt-get", "apt-cache", "dpkg-deb") if shutil.which(t) is None]


def _cached_dir(name: str, recipe: dict, build) -> Path:
    """``cached`` for a directory, tolerating another test process finishing the same build first."""
    try:
        return cached(name, recipe, build, suffix="")
    except OSError as exc:
        if exc.filename and exc.filename2 and Path(exc.filename2).is_dir():
            shutil.rmtree(exc.filename, ignore_errors=True)
            return Path(exc.filename2)
        raise


@lru_cache(maxsize=1)
def tree_provider() -> DebianPackageTrees:
    return DebianPackageTrees(cache=CACHE / "package-trees", cached=_cached_dir, debs=CACHE / "debian-debs")


def package_tree(set_name: str) -> PackageTree:
    return tree_provider().tree(set_name)


def tree_recipes(spec) -> dict:
    """{set: recipe} of every package set a spec grafts (resolved now: versions are part of the key)."""
    sets = sorted({str(g["set"]) for glist in (spec.data.get("grafts") or {}).values() for g in glist})
    return {s: tree_provider().recipe(s) for s in sets}
