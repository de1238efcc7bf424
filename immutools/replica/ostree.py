"""ostree sysroots for replicas, made by the real ``ostree`` CLI (Debian package ``ostree``).

A spec's top-level ``ostree:`` maps a sysroot name to a recipe; partitions take a part of the
result with ``content: {type: xfs, ostree: {sysroot: NAME, part: root}}`` (``part``: ``root`` =
the physical root without the contents of ``boot/``, ``boot`` = the contents of ``boot/`` for a
separate /boot partition, ``all`` = everything; optional ``prefix:`` puts the physical root in a
subdirectory, e.g. ``root`` for a btrfs whose ``root`` subvolume holds it).

Recipe (ostreedev/ostree docs/deployment.md, man/ostree-admin-init-fs.xml; checked with Debian 12's ostree 2022.7)::

    stateroot: fedora-coreos
    repo_config: {sysroot.readonly: "true", sysroot.bootloader: none}   # `ostree config set`
    bls_naming: 1          # 1: ostree-<n>-<stateroot>.conf (what ostree < 2024.5 writes; the
                           # Debian CLI is 2022.7); 2: the files renamed to ostree-<n>.conf, as
                           # ostree >= 2024.5 names them (recorded as a limitation)
    steps:                 # run in order
      - commit: {ref: R, tree: TREE, version: V, metadata: {key: value}, vars: {..}}
      - deploy: {ref: R, kargs: [..], origin: "keyfile text", merge: false, retain: true}
                           # --origin-file when given; merge: false = --no-merge (see below)
      - pin: INDEX                                             # ostree admin pin
      - files: {tree: TREE, into: var | etc, vars: {..}}       # spec files into the stateroot's
                                                               # /var or the default deployment's /etc
    physical_root_files:   # text/symlink entries at the top of the physical root, written last;
                           # templates may use {{ostree.commits.c0.checksum}} etc. (the facts below)

``merge: false``: with a merge deployment and ``/etc/selinux/config`` present, ostree refreshes the
SELinux policy by running ``semodule`` in the new deployment under ``bwrap``, which a stand-in tree
cannot do; ``--no-merge`` skips the ``/etc`` merge and the refresh (give the kernel arguments again,
and add user ``/etc`` changes with a ``files`` step).

The tool runs unprivileged on a staging directory: ``OSTREE_SYSROOT_DEBUG=mutable-deployments``
(no immutable flag) and the builder's preload with ``IMMUTOOLS_SHIM_UNPRIVILEGED`` (chown is a
no-op, FIFREEZE refused so the host filesystem is never frozen). Owners in the image are root for
everything ostree wrote and the spec's owners for files added by ``files`` steps. What the tool
reports afterwards (``ostree admin status``, commit checksums, entry file names) is recorded under
``computed.ostree.<name>`` for tests to compare a scan with.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from immutools.replica.context import BuildError, SpecError, which
from immutools.replica.spec import render
from immutools.replica.tree import stage_tree

PARTS = ("root", "boot", "all")
RECIPE_KEYS = {"stateroot", "repo_config", "bls_naming", "steps", "physical_root_files"}
_STATUS_LINE = re.compile(r"^\s*(?:\* )?(\S+) ([0-9a-f]{64})\.(\d+)(?: \((\w+)\))?\s*$")
_COMMIT_LINE = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_NAME = re.compile(r"^ostree-(\d+)(?:-(.+))?\.conf$")


class _Sysroot:
    def __init__(self, path: Path):
        self.path = path
        self.owners: dict[str, tuple[int, int]] = {}     # path relative to the sysroot -> uid, gid
        self.facts: dict = {}


def _ostree(build, args: list, step: str) -> subprocess.CompletedProcess:
    """Run the ostree CLI through the builder's runner environment plus the unprivileged switches."""
    if which("ostree") is None:
        raise BuildError(f"{step}: ostree is not installed (Debian package ostree)")
    runner = build.runner
    if runner.shim is None and os.geteuid() != 0:
        raise BuildError(f"{step}: an unprivileged ostree deploy needs the builder's preload (a C compiler)")
    if runner.shim is None:
        raise BuildError(f"{step}: ostree deploy as root without the builder's preload would freeze the host "
                         "filesystem (FIFREEZE); install a C compiler")
    cmd = ["ostree", *[str(a) for a in args]]
    env = runner.env(step)
    env.update(OSTREE_SYSROOT_DEBUG="mutable-deployments,no-xattrs", IMMUTOOLS_SHIM_UNPRIVILEGED="1",
               HOME=str(build.work))
    # ostree notices its own changes by directory mtimes: keep the real clock for it (the commit
    # timestamp is given explicitly; the mkfs tools later stamp every inode with the epoch).
    env.pop("IMMUTOOLS_SHIM_EPOCH", None)
    runner.log.append(" ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise BuildError(f"{step}: {' '.join(cmd)} failed ({proc.returncode}): {err}")
    return proc


def _copy_into(src: Path, dst: Path) -> None:
    """``cp -a`` (hard links, modes, symlinks kept) of the contents of ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", f"{src}/.", str(dst)], capture_output=True)
    if proc.returncode != 0:
        raise BuildError(f"cp -a {src} {dst}: {proc.stderr.decode(errors='replace').strip()}")


def _tree_owners(build, staging: Path) -> dict[str, tuple[int, int]]:
    """Owners the builder recorded for a staged spec tree, by relative path."""
    out = {}
    for path in [staging, *staging.rglob("*")]:
        st = os.lstat(path)
        known = build.owners.get((st.st_dev, st.st_ino))
        if known is not None:
            out[str(path.relative_to(staging))] = (known[0], known[1])
    return out


def _staged_tree(build, tree: str, ctx: dict, where: str) -> tuple[Path, dict]:
    staging = stage_tree(build, tree, ctx, where)
    return staging, _tree_owners(build, staging)


def _parse_status(text: str) -> list[dict]:
    """``ostree admin status`` (2022.7 text form) -> one dict per deployment, in list order."""
    rows: list[dict] = []
    for line in text.splitlines():
        m = _STATUS_LINE.match(line)
        if m:
            rows.append({"index": len(rows), "stateroot": m.group(1), "checksum": m.group(2),
                         "serial": int(m.group(3)), "marker": m.group(4), "version": None,
                         "pinned": False, "refspec": None})
            continue
        if not rows:
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "Version":
            rows[-1]["version"] = value
        elif key == "Pinned":
            rows[-1]["pinned"] = value == "yes"
        elif key == "origin refspec":
            rows[-1]["refspec"] = value
    return rows


def build_sysroot(build, name: str, ctx: dict) -> _Sysroot:
    """Make (once per build) the sysroot the spec's ``ostree.<name>`` recipe describes."""
    cache = build.__dict__.setdefault("_ostree_sysroots", {})
    if name in cache:
        return cache[name]
    where = f"{build.spec.where}: ostree.{name}"
    recipes = build.spec.data.get("ostree") or {}
    if name not in recipes or not isinstance(recipes[name], dict):
        raise SpecError(f"{where}: no such ostree sysroot recipe")
    late_files = recipes[name].get("physical_root_files") or {}
    recipe = render({k: v for k, v in recipes[name].items() if k != "physical_root_files"}, ctx, where)
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(RECIPE_KEYS))})")
    stateroot = str(recipe.get("stateroot") or "")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stateroot):
        raise SpecError(f"{where}.stateroot: a plain name is required")
    sysroot = _Sysroot(build.tmp(f"ostree-{name}"))
    root = sysroot.path
    root.mkdir()
    repo = root / "ostree" / "repo"
    step = f"ostree.{name}"
    _ostree(build, ["admin", "init-fs", "--modern", root], step)
    for key, value in (recipe.get("repo_config") or {}).items():
        _ostree(build, ["config", f"--repo={repo}", "set", key, value], step)
    _ostree(build, ["admin", "os-init", stateroot, f"--sysroot={root}"], step)
    commits: list[dict] = []
    for i, raw_step in enumerate(recipe.get("steps") or []):
        sw = f"{where}.steps[{i}]"
        if not isinstance(raw_step, dict) or len(raw_step) != 1:
            raise SpecError(f"{sw}: one of commit:, deploy:, pin:, files:")
        kind, arg = next(iter(raw_step.items()))
        if kind == "commit":
            staging, _owners = _staged_tree(build, arg["tree"], dict(ctx, **(arg.get("vars") or {})), sw)
            cmd = ["commit", f"--repo={repo}", f"--branch={arg['ref']}", f"--tree=dir={staging}",
                   f"--timestamp=@{build.epoch}", "--subject", str(arg.get("subject") or arg.get("version") or arg["ref"])]
            if arg.get("version"):
                cmd.append(f"--add-metadata-string=version={arg['version']}")
            for key, value in (arg.get("metadata") or {}).items():
                cmd.append(f"--add-metadata-string={key}={value}")
            out = _ostree(build, cmd, f"{step}:commit").stdout.decode().strip()
            if not _COMMIT_LINE.match(out):
                raise SpecError(f"{sw}: ostree commit printed {out!r}, not a checksum")
            commits.append({"ref": arg["ref"], "checksum": out, "version": arg.get("version")})
            build.remove_tree(staging)
        elif kind == "deploy":
            cmd = ["admin", "deploy", f"--sysroot={root}", f"--os={stateroot}"]
            if arg.get("merge", True) is False:
                cmd.append("--no-merge")
            if arg.get("retain", True):
                cmd.append("--retain")          # keep earlier deployments (none is booted here)
            # Later deployments inherit the kernel arguments of the current one (ostree's merge).
            for karg in arg.get("kargs") or []:
                cmd.append(f"--karg-append={karg}")
            if arg.get("origin"):
                origin = build.tmp("origin")
                origin.write_text(str(arg["origin"]))
                cmd.append(f"--origin-file={origin}")
            _ostree(build, cmd + [arg["ref"]], f"{step}:deploy")
        elif kind == "pin":
            _ostree(build, ["admin", "pin", f"--sysroot={root}", str(int(arg))], f"{step}:pin")
        elif kind == "files":
            staging, owners = _staged_tree(build, arg["tree"], dict(ctx, **(arg.get("vars") or {})), sw)
            into = arg.get("into")
            if into == "var":
                rel = Path("ostree/deploy") / stateroot / "var"
            elif into == "etc":
                rel = _default_deployment(root, stateroot) / "etc"
            else:
                raise SpecError(f"{sw}.into: var or etc")
            _copy_into(staging, root / rel)
            for path, owner in owners.items():
                if path != ".":
                    sysroot.owners[str(rel / path)] = owner
            build.remove_tree(staging)
        else:
            raise SpecError(f"{sw}: unknown step {kind!r} (commit, deploy, pin, files)")
    status = _ostree(build, ["admin", "status", f"--sysroot={root}"], f"{step}:status").stdout.decode()
    entries_dir = root / "boot" / "loader" / "entries"
    naming = int(recipe.get("bls_naming", 1))
    if naming == 2:
        for entry in sorted(entries_dir.iterdir()):
            m = _ENTRY_NAME.match(entry.name)
            if m and m.group(2):
                entry.rename(entry.with_name(f"ostree-{m.group(1)}.conf"))
        build.limit("ostree: boot entries renamed to ostree-<n>.conf as ostree >= 2024.5 names them "
                    "(the Debian ostree 2022.7 CLI writes ostree-<n>-<stateroot>.conf)")
    elif naming != 1:
        raise SpecError(f"{where}.bls_naming: 1 or 2")
    deployments = _parse_status(status)
    late_ctx = dict(ctx, ostree={"commits": {f"c{i}": c for i, c in enumerate(commits)}, "stateroot": stateroot})
    for rel, entry in render(late_files, late_ctx, f"{where}.physical_root_files").items():
        target = root / str(rel).strip("/")
        if "/" in str(rel).strip("/") or target.exists() or target.is_symlink():
            raise SpecError(f"{where}.physical_root_files.{rel}: a new name at the top of the physical root")
        if "symlink" in entry:
            os.symlink(str(entry["symlink"]), target)
        elif "text" in entry:
            target.write_text(str(entry["text"]))
        else:
            raise SpecError(f"{where}.physical_root_files.{rel}: text: or symlink:")
    sysroot.facts = {
        "stateroot": stateroot,
        "commits": {f"c{i}": c for i, c in enumerate(commits)},
        "deployments": {f"d{d['index']}": d for d in deployments},
        "deployment_count": len(deployments),
        "bootversion": os.readlink(root / "boot" / "loader").rsplit(".", 1)[-1],
        "entries": sorted(p.name for p in entries_dir.iterdir()),
        "status": status,
    }
    build.computed.setdefault("ostree", {})[name] = sysroot.facts
    build.limit("ostree: deployments made with OSTREE_SYSROOT_DEBUG=mutable-deployments (no immutable flag on "
                "deployment roots) and without SELinux labels")
    cache[name] = sysroot
    return sysroot


def _default_deployment(root: Path, stateroot: str) -> Path:
    """The deployment the ``loader`` entries make default (highest-numbered entry), relative to root."""
    entries = root / "boot" / "loader" / "entries"
    best = None
    for entry in entries.iterdir():
        m = _ENTRY_NAME.match(entry.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), entry)
    if best is None:
        raise SpecError("ostree files into etc: no deployment yet")
    options = next((ln for ln in best[1].read_text().splitlines() if ln.startswith("options ")), "")
    ostree_arg = next((w.split("=", 1)[1] for w in options.split() if w.startswith("ostree=")), None)
    target = (root / ostree_arg.lstrip("/")).resolve()
    return target.relative_to(root.resolve())


def stage_sysroot_part(build, spec: dict, ctx: dict, where: str, staging: Path | None, fstype: str) -> Path:
    """Put the requested part of an ostree sysroot into a partition's staging directory and record
    owners and inode numbers for every entry (root unless a spec tree said otherwise)."""
    if not isinstance(spec, dict) or "sysroot" not in spec:
        raise SpecError(f"{where}.ostree: {{sysroot: NAME, part: root|boot|all, prefix: DIR}}")
    part = spec.get("part", "all")
    if part not in PARTS:
        raise SpecError(f"{where}.ostree.part: one of {', '.join(PARTS)}")
    sysroot = build_sysroot(build, str(spec["sysroot"]), ctx)
    if staging is None:
        staging = build.tmp("tree")
        staging.mkdir()
    owners = _tree_owners(build, staging)
    prefix = Path(str(spec.get("prefix") or "."))
    if prefix.is_absolute() or ".." in prefix.parts:
        raise SpecError(f"{where}.ostree.prefix: a relative directory")
    dest = staging / prefix
    src = sysroot.path
    if part == "boot":
        _copy_into(src / "boot", dest)
        mapping = {k[len("boot/"):]: v for k, v in sysroot.owners.items() if k.startswith("boot/")}
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            if part == "root" and child.name == "boot":
                (dest / "boot").mkdir(exist_ok=True)
                continue
            if child.is_dir() and not child.is_symlink():
                _copy_into(child, dest / child.name)
            else:
                subprocess.run(["cp", "-a", str(child), str(dest / child.name)], check=True)
        mapping = dict(sysroot.owners)
    for rel, owner in mapping.items():
        owners.setdefault(str(prefix / rel) if str(prefix) != "." else rel, owner)
    _register(build, staging, owners)
    return staging


def _register(build, staging: Path, owners: dict[str, tuple[int, int]]) -> None:
    """Owners and stable inode numbers (path order, as ``stage_tree`` does) for the whole staging tree."""
    paths = sorted([staging, *staging.rglob("*")], key=lambda p: p.parts)
    keys = build.tree_keys.setdefault(staging, [])
    seen: dict[tuple[int, int], int] = {}
    am_root = os.geteuid() == 0
    for path in paths:
        st = os.lstat(path)
        key = (st.st_dev, st.st_ino)
        rel = "." if path == staging else str(path.relative_to(staging))
        uid, gid = owners.get(rel, (0, 0))
        if key not in seen:
            seen[key] = 256 + len(seen)
        if am_root and (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
            if not path.is_symlink():
                os.chmod(path, st.st_mode & 0o7777)     # chown clears setuid/setgid
        if not path.is_symlink():
            os.utime(path, (build.epoch, build.epoch))
        build.owners[key] = (uid, gid, seen[key])
        keys.append(key)
    build.flush_owners()
