"""Staging a spec tree: a directory on the host holding the tree's entries, with the owners and
inode numbers the image tools must see recorded in the build's owner map (the preload reports
them, so an unprivileged build gives the same image as a root build).

Grafts: the spec's top-level ``grafts: {TREE: [{set: NAME, ...}]}`` puts a full-size tree from a
tree source (``immutools.replica.packages``: Debian package metadata, file contents emptied) into
every staging of spec tree ``TREE`` (a partition's filesystem, a nested image, an ostree commit),
before the tree's own entries, which are written over it (a spec file replaces the grafted one at
the same path). What the staged tree then holds (entry count, setuid and setgid files as OS paths)
is recorded as ``computed.trees.<name>`` for the spec's ``expect:``.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from immutools.replica.context import Build, SpecError, path_match
from immutools.replica.kinds import entry_bytes
from immutools.replica.packages import DebianPackageTrees
from immutools.replica.spec import GRAFT_SOURCES, parse_int, parse_mode, render


def stage_tree(build: Build, tree_name: str | None, ctx: dict, where: str, extra_files: dict | None = None) -> Path:
    """Write the tree's entries under a fresh staging directory; record owners for the shim.

    ``extra_files`` are added as given (not template-rendered): the builder's own files such as the
    provenance record. The spec's ``grafts`` for this tree go in first (see the module docstring)."""
    root = build.tmp("tree")
    root.mkdir()
    grafts = (build.spec.data.get("grafts") or {}).get(tree_name) if tree_name is not None else None
    # path -> (mode or None for symlinks, uid, gid); explicit entries override implied parents.
    fixups: dict[Path, tuple[int | None, int, int]] = {root: (0o755, 0, 0)}
    grafted: set[Path] = set()
    gw = f"{where}: grafts.{tree_name}"
    graft_facts = [graft_into(build, root, g, ctx, f"{gw}[{i}]", fixups, grafted, tree_name)
                   for i, g in enumerate(render(grafts or [], ctx, gw))]
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
        if target in grafted and (target.is_symlink() or ("dir" not in entry and target.exists())):
            # the spec's own entry replaces the grafted one (a grafted directory: with its contents)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            grafted.discard(target)
        if "dir" in entry:
            target.mkdir(exist_ok=True)
            fixups[target] = (parse_mode(entry.get("mode", "0755"), f"{ew}.mode"), uid, gid)
        elif "symlink" in entry:
            if target.exists() or target.is_symlink():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            os.symlink(str(entry["symlink"]), target)
            fixups[target] = (None, uid, gid)
        else:
            if target.exists() or target.is_symlink():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            target.write_bytes(entry_bytes(build, entry, ctx, ew))
            fixups[target] = (parse_mode(entry.get("mode", "0644"), f"{ew}.mode"), uid, gid)
    am_root = os.geteuid() == 0
    # Inode numbers the tools see: 256 for the root, then 257... in path order, as a fresh filesystem
    # filled in that order would have them.
    new_ino = {path: 256 + i for i, path in enumerate(sorted(fixups, key=lambda p: p.parts))}
    special: dict[str, list[str]] = {"setuid": [], "setgid": []}
    # Deepest first, so a directory's mode (e.g. 0700) is set after its contents are written.
    for path in sorted(fixups, key=lambda p: -len(p.parts)):
        mode, uid, gid = fixups[path]
        if grafts and not os.path.lexists(path):
            continue                    # a grafted entry a spec entry replaced with its subtree
        if am_root:
            os.lchown(path, uid, gid)
        if mode is not None:
            os.chmod(path, mode)
        os.utime(path, (build.epoch, build.epoch), follow_symlinks=False)
        st = os.lstat(path)
        build.owners[(st.st_dev, st.st_ino)] = (uid, gid, new_ino[path])
        build.tree_keys.setdefault(root, []).append((st.st_dev, st.st_ino))
        if graft_facts and stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            rel = str(path.relative_to(root))
            for bit, key in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")):
                if st.st_mode & bit:
                    special[key].append(rel)
    build.flush_owners()
    if graft_facts:
        entries = sum(1 for p in fixups if p != root and os.path.lexists(p))
        for facts in graft_facts:
            base = facts["mountpoint"].rstrip("/")
            facts.update(entries=entries, **{key: sorted(f"{base}/{rel}" for rel in rels) for key, rels in special.items()},
                         setuid_count=len(special["setuid"]), setgid_count=len(special["setgid"]))
            build.computed.setdefault("trees", {})[facts["name"]] = facts
    return root


def _real_dirs(root: Path, path: Path, fixups: dict, where: str) -> None:
    """Make ``path`` (inside ``root``) a chain of real directories: missing ones are created (root's,
    0755), a symlink or a file on the way is an error (nothing is ever written through a link)."""
    cur = root
    for part in path.relative_to(root).parts:
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            raise SpecError(f"{where}: /{cur.relative_to(root)} is not a directory")
        if not cur.exists():
            cur.mkdir()
            fixups[cur] = (0o755, 0, 0)


def _matches(rel: str, patterns) -> bool:
    return any(path_match(rel, pat) for pat in patterns)


def graft_into(build: Build, root: Path, spec: dict, ctx: dict, where: str, fixups: dict, grafted: set,
               default_name: str) -> dict:
    """Copy the part ``from`` of a tree source's tree to ``into`` inside ``root`` (hard links kept,
    ``exclude`` patterns and their subtrees skipped, ``relocate`` renaming directories); record
    modes and owners in ``fixups``. Returns the graft's facts (completed by ``stage_tree``)."""
    source = spec.get("source", "debian-packages")
    if source not in GRAFT_SOURCES:
        raise SpecError(f"{where}.source: {source!r} (one of {', '.join(GRAFT_SOURCES)})")
    if build.trees is None:
        build.trees = DebianPackageTrees()
    ptree = build.trees.tree(str(spec["set"]))
    frm = str(spec.get("from", "/")).strip("/")
    into = str(spec.get("into", "/")).strip("/")
    exclude = [str(p).strip("/") for p in spec.get("exclude") or []]
    relocate = {str(k).strip("/"): str(v).strip("/") for k, v in (spec.get("relocate") or {}).items()}
    for rel in [frm, into, *relocate.values()]:
        if ".." in rel.split("/"):
            raise SpecError(f"{where}: {rel!r} leaves the tree")
    src_base = ptree.root / frm if frm else ptree.root
    if not src_base.is_dir() or src_base.is_symlink():
        raise SpecError(f"{where}.from: /{frm} is not a directory of package set {spec['set']!r}")
    dest_base = root / into if into else root
    _real_dirs(root, dest_base, fixups, f"{where}.into")
    # package-tree relative path of a directory -> its staging path (relocations change it)
    dest_of: dict[str, Path] = {frm: dest_base}
    first_link: dict[tuple[int, int], Path] = {}
    count = skipped = 0
    for dirpath, dirnames, filenames in os.walk(src_base):
        drel = os.path.relpath(dirpath, ptree.root)
        drel = "" if drel == "." else drel
        ddest = dest_of[drel]
        dirnames.sort()
        keep_dirs = []
        for name in sorted(dirnames + filenames):
            rel = f"{drel}/{name}" if drel else name
            if _matches(rel, exclude):
                continue
            src = Path(dirpath) / name
            target = next((t for pat, t in relocate.items() if path_match(rel, pat)), None)
            if target is not None:
                if not (target == frm or target.startswith(frm + "/") or not frm):
                    raise SpecError(f"{where}.relocate: {target!r} is outside from: /{frm}")
                dest = dest_base / os.path.relpath(target, frm or ".")
                _real_dirs(root, dest.parent, fixups, where)
            else:
                dest = ddest / name
            st = os.lstat(src)
            uid, gid = ptree.owner(rel)
            if stat.S_ISDIR(st.st_mode):
                if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                    skipped += 1
                    continue
                dest.mkdir(exist_ok=True)
                dest_of[rel] = dest
                keep_dirs.append(name)
                fixups.setdefault(dest, (st.st_mode & 0o7777, uid, gid))
            elif os.path.lexists(dest):
                skipped += 1                     # an earlier graft has this path
                continue
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dest)
                fixups[dest] = (None, uid, gid)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in first_link:
                    os.link(first_link[key], dest)
                else:
                    shutil.copyfile(src, dest)
                    first_link[key] = dest
                fixups[dest] = (st.st_mode & 0o7777, uid, gid)
            else:
                continue
            grafted.add(dest)
            count += 1
        dirnames[:] = [d for d in dirnames if d in keep_dirs]
    facts = ptree.facts
    name = str(spec.get("name") or default_name)
    return {"name": name, "source": source, "set": facts["set"], "key": facts["key"], "from": "/" + frm,
            "into": "/" + into, "mountpoint": str(spec.get("mountpoint", "/")), "packages": facts["package_count"],
            "package_versions": facts["packages"], "grafted_entries": count, "skipped_entries": skipped}
