"""Staging a spec tree: a directory on the host holding the tree's entries, with the owners and
inode numbers the image tools must see recorded in the build's owner map (the preload reports
them, so an unprivileged build gives the same image as a root build).
"""

from __future__ import annotations

import os
from pathlib import Path

from immutools.replica.context import Build, SpecError
from immutools.replica.kinds import entry_bytes
from immutools.replica.spec import parse_int, parse_mode, render


def stage_tree(build: Build, tree_name: str | None, ctx: dict, where: str, extra_files: dict | None = None) -> Path:
    """Write the tree's entries under a fresh staging directory; record owners for the shim.

    ``extra_files`` are added as given (not template-rendered): the builder's own files such as the
    provenance record."""
    root = build.tmp("tree")
    root.mkdir()
    rendered: list[tuple[str, dict, str]] = []
    if tree_name is not None:
        tree = build.spec.trees.get(tree_name)
        if tree is None:
            raise SpecError(f"{where}.tree: no tree {tree_name!r}")
        for raw_path, raw_entry in tree.items():
            ew = f"{where}: trees.{tree_name}.{raw_path!r}"
            rendered.append((render(str(raw_path), ctx, ew).strip("/"), render(raw_entry, ctx, ew), ew))
    for raw_path, raw_entry in (extra_files or {}).items():
        rendered.append((raw_path.strip("/"), raw_entry, f"{where}: {raw_path!r}"))
    # path -> (mode or None for symlinks, uid, gid); explicit entries override implied parents.
    fixups: dict[Path, tuple[int | None, int, int]] = {root: (0o755, 0, 0)}
    seen: set[str] = set()
    rendered.sort(key=lambda r: r[0])
    for path, entry, ew in rendered:
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise SpecError(f"{ew}: bad path {path!r}")
        if path in seen:
            raise SpecError(f"{ew}: {path!r} listed twice (after rendering)")
        seen.add(path)
        target = root / path
        for parent in reversed(target.parents):
            if parent == root or root not in parent.parents:
                continue
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise SpecError(f"{ew}: parent {parent.relative_to(root)} is not a directory")
            if not parent.exists():
                parent.mkdir()
                fixups[parent] = (0o755, 0, 0)
        uid = parse_int(entry.get("uid", 0), f"{ew}.uid")
        gid = parse_int(entry.get("gid", 0), f"{ew}.gid")
        if "dir" in entry:
            target.mkdir(exist_ok=True)
            fixups[target] = (parse_mode(entry.get("mode", "0755"), f"{ew}.mode"), uid, gid)
        elif "symlink" in entry:
            if target.exists() or target.is_symlink():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            os.symlink(str(entry["symlink"]), target)
            fixups[target] = (None, uid, gid)
        else:
            if target.exists():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            target.write_bytes(entry_bytes(build, entry, ctx, ew))
            fixups[target] = (parse_mode(entry.get("mode", "0644"), f"{ew}.mode"), uid, gid)
    am_root = os.geteuid() == 0
    # Inode numbers the tools see: 256 for the root, then 257... in path order, as a fresh filesystem
    # filled in that order would have them.
    new_ino = {path: 256 + i for i, path in enumerate(sorted(fixups, key=lambda p: p.parts))}
    # Deepest first, so a directory's mode (e.g. 0700) is set after its contents are written.
    for path in sorted(fixups, key=lambda p: -len(p.parts)):
        mode, uid, gid = fixups[path]
        if am_root:
            os.lchown(path, uid, gid)
        if mode is not None:
            os.chmod(path, mode)
        os.utime(path, (build.epoch, build.epoch), follow_symlinks=False)
        st = os.lstat(path)
        build.owners[(st.st_dev, st.st_ino)] = (uid, gid, new_ino[path])
        build.tree_keys.setdefault(root, []).append((st.st_dev, st.st_ino))
    build.flush_owners()
    return root
