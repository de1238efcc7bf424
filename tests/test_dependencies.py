"""The lock files agree with pyproject.toml: every declared dependency is pinned (at a version its
specifier allows), every pin carries a hash, a package has one version in every lock, the CLI lock
holds exactly the core dependencies and what they need (no test, notebook or build packages), and
the packages installed in this venv are the pinned versions. No network: the closure of
dependencies is read from the installed packages' metadata."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FULL_LOCK = ROOT / "requirements.lock"   # what ./run test installs
CLI_LOCK = ROOT / "requirements" / "cli.lock"  # what ./run demo installs
LOCKS = {
    # lock file -> the pyproject extras it holds on top of the core dependencies
    FULL_LOCK: ("test", "analysis", "corpus", "fuzz"),
    CLI_LOCK: (),
    ROOT / "requirements" / "analysis.lock": ("analysis",),
    ROOT / "requirements" / "corpus.lock": ("corpus",),
}
BUILD_LOCK = ROOT / "requirements" / "build.lock"
# Packages a CLI user must never receive (tests, notebooks, fuzzing, corpus studies, the build backend).
NOT_FOR_CLI = {"pytest", "jsonschema", "ipykernel", "ipython", "jupyterlab", "jupyter-client", "nbconvert",
               "nbclient", "pandas", "matplotlib", "atheris", "pyarrow", "duckdb", "dask", "distributed",
               "hatchling", "editables"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile lock (a requirement with its `\\` continuations)."""
    entries: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1] += " " + stripped
        else:
            entries.append(stripped)
    pins = {}
    for entry in entries:
        text = entry.replace("\\", " ")
        req = Requirement(HASH.sub("", text).strip())
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {req} is not pinned with =="
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = (specs[0].version, HASH.findall(text))
    return pins


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("lock", [*LOCKS, BUILD_LOCK], ids=lambda p: p.name)
def test_every_pin_carries_a_hash(lock):
    pins = parse_lock(lock)
    assert pins
    for name, (version, hashes) in pins.items():
        assert hashes, f"{lock.name}: {name}=={version} has no --hash"


@pytest.mark.parametrize("lock", list(LOCKS), ids=lambda p: p.name)
def test_every_declared_dependency_is_pinned_at_an_allowed_version(lock):
    pins = parse_lock(lock)
    for req in declared(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not pinned in {lock.name}"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"{lock.name} pins {name}=={pins[name][0]}, outside pyproject.toml's {req}"
        for extra in req.extras:  # dask[distributed] -> distributed's packages are pinned too
            for sub in importlib.metadata.requires(req.name) or []:
                sub = Requirement(sub)
                if sub.marker and sub.marker.evaluate({"extra": extra}) and not sub.marker.evaluate({"extra": ""}):
                    assert canonicalize_name(sub.name) in pins, f"{sub} ({req}) is not pinned in {lock.name}"


def test_build_backend_is_pinned():
    pins = parse_lock(BUILD_LOCK)
    for req in map(Requirement, PYPROJECT["build-system"]["requires"]):
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name][0]), f"{req} ([build-system]) not pinned in build.lock"


def test_a_package_has_one_version_in_every_lock():
    seen: dict[str, tuple[str, str]] = {}
    for lock in [*LOCKS, BUILD_LOCK]:
        for name, (version, _) in parse_lock(lock).items():
            first = seen.setdefault(name, (version, lock.name))
            assert first[0] == version, f"{name}: {first[0]} in {first[1]}, {version} in {lock.name}"


def test_cli_lock_has_no_test_notebook_or_build_packages():
    leaked = NOT_FOR_CLI & set(parse_lock(CLI_LOCK))
    assert not leaked, f"requirements/cli.lock pins {sorted(leaked)}"


def closure(roots: list[Requirement]) -> set[str]:
    """Names of the roots and everything they require on this Python, from installed metadata."""
    env = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    names: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots if not r.marker or r.marker.evaluate(env | {"extra": ""})]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in names:
            continue
        names.add((name, extras))
        for sub in map(Requirement, importlib.metadata.requires(req.name) or []):
            if sub.marker is None or any(sub.marker.evaluate(env | {"extra": e}) for e in {"", *extras}):
                todo.append((sub, frozenset(sub.extras)))
    return {name for name, _ in names}


@pytest.mark.parametrize("lock", list(LOCKS), ids=lambda p: p.name)
def test_lock_holds_exactly_what_the_declared_dependencies_need(lock):
    """Nothing missing (pip check would fail after `--no-deps`) and nothing extra (a CLI user would
    install packages nobody asked for)."""
    needed = closure(declared(LOCKS[lock]))
    pinned = set(parse_lock(lock))
    assert needed - pinned == set(), f"{lock.name} lacks {sorted(needed - pinned)}"
    assert pinned - needed == set(), f"{lock.name} pins what nothing needs: {sorted(pinned - needed)}"


def test_this_venv_has_the_pinned_versions():
    """./run test installed requirements.lock; a package at another version means the lock and the
    environment the tests ran in disagree."""
    for name, (version, _) in parse_lock(FULL_LOCK).items():
        installed = importlib.metadata.version(name)
        assert SpecifierSet(f"=={version}").contains(installed, prereleases=True), \
            f"{name} {installed} installed, {version} pinned"
