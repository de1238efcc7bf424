"""What every part of the replica builder shares: the two error types, tool lookup, the tool
runner (reproducible environment), and the state of one build.

A leaf module: it imports nothing from ``immutools.replica`` except the version string, so the
modules that make contents (``files``, ``filesystems``, ``tree``, ``bootassets``, ``uki``,
``bottlerocket``, ``ostree``) and the orchestration in ``builder`` can all import it without
cycles.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from immutools.paths import cache_dir

if TYPE_CHECKING:
    from immutools.replica.spec import Spec

TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SpecError(ValueError):
    """A spec is wrong; the message names the spec file and the key."""


class BuildError(RuntimeError):
    """A tool failed or the spec asked for something the tools cannot make."""


def which(tool: str) -> str | None:
    return shutil.which(tool, path=TOOL_PATH + ":" + os.environ.get("PATH", ""))


def path_match(rel: str, pattern: str) -> bool:
    """Whether relative path ``rel`` matches ``pattern`` component by component (``*`` does not
    cross ``/``, unlike ``fnmatch``): ``usr/lib/modules/*`` matches the version directories only."""
    parts, pats = rel.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats))


def truncate(path: Path, size: int) -> None:
    """Create (or empty) ``path`` as a sparse file of ``size`` bytes."""
    with open(path, "wb") as f:
        f.truncate(size)


def shim_path() -> Path | None:
    """Compile (once, cached by source hash) the reproducibility preload; None without a C compiler."""
    src = Path(__file__).with_name("reproshim.c")
    cc = which("cc") or which("gcc")
    if cc is None or not src.exists():
        return None
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "replica-shim" / f"reproshim-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src), "-ldl", "-lpthread"], capture_output=True)
    if proc.returncode != 0:
        return None
    os.replace(tmp, out)
    return out


@dataclass
class Runner:
    """Runs the image tools with a fixed clock, locale and PATH, under the preload when there is one."""

    epoch: int
    seed: str
    shim: Path | None
    owners_file: Path | None = None
    log: list[str] = field(default_factory=list)

    def env(self, step: str) -> dict:
        env = dict(os.environ)
        env.update(
            SOURCE_DATE_EPOCH=str(self.epoch), E2FSPROGS_FAKE_TIME=str(self.epoch), LC_ALL="C", TZ="UTC",
            MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0", PATH=TOOL_PATH + ":" + env.get("PATH", ""),
        )
        if self.shim:
            env["LD_PRELOAD"] = str(self.shim)
            env["IMMUTOOLS_SHIM_EPOCH"] = str(self.epoch)
            env["IMMUTOOLS_SHIM_SEED"] = f"{self.seed}/{step}"
            if self.owners_file:
                env["IMMUTOOLS_SHIM_OWNERS"] = str(self.owners_file)
        return env

    def run(self, cmd: list, step: str, *, stdin=None, stdout=None, input: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [str(c) for c in cmd]
        if which(cmd[0]) is None:
            raise BuildError(f"{step}: {cmd[0]} is not installed")
        self.log.append(" ".join(cmd))
        proc = subprocess.run(cmd, env=self.env(step), stdin=stdin, input=input,
                              stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=cwd)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise BuildError(f"{step}: {' '.join(cmd)} failed ({proc.returncode}): {err}")
        return proc


@dataclass
class Build:
    """The state of one build: the spec, scratch space, the runner, computed values and the owner
    map the preload reads (``(dev, ino)`` of each staged entry -> uid, gid, inode number)."""

    spec: "Spec"
    out_dir: Path
    work: Path
    runner: Runner
    epoch: int
    context: dict
    computed: dict = field(default_factory=dict)
    limitations: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    owners: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)   # (dev, ino) -> uid, gid, ino
    tree_keys: dict[Path, list[tuple[int, int]]] = field(default_factory=dict)
    counter: int = 0
    trees: object | None = None          # the provider of grafted trees (``immutools.replica.tree.TreeProvider``)
    grafts: dict = field(default_factory=dict)   # facts of every grafted tree, by partition/graft

    def tmp(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{self.counter:03d}-{stem}"

    def limit(self, text: str) -> None:
        if text not in self.limitations:
            self.limitations.append(text)

    def ctx(self, extra: dict | None = None) -> dict:
        c = dict(self.context)
        c["computed"] = self.computed
        if extra:
            c.update(extra)
        return c

    def flush_owners(self) -> None:
        if self.runner.owners_file:
            with open(self.runner.owners_file, "w") as f:
                f.writelines(f"{dev} {ino} {uid} {gid} {new_ino}\n"
                             for (dev, ino), (uid, gid, new_ino) in self.owners.items())

    def remove_tree(self, root: Path) -> None:
        """Delete a staging tree and forget its owners (its inode numbers will be reused)."""
        for key in self.tree_keys.pop(root, []):
            self.owners.pop(key, None)
        shutil.rmtree(root)
        self.flush_owners()
