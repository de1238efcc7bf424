"""``OsTree``: the namespace a running system would see, composed from several filesystems.

Flatcar's running system is ROOT (ext4) at ``/``, the USR-A btrfs at ``/usr``, OEM at ``/oem``,
the ESP at ``/boot``; Bottlerocket's ``/`` is a *subdirectory* of its root filesystem. ``OsTree``
stacks ``FileSystem``s at mount points (a later mount on the same target hides the earlier one,
like a real mount stack) and is itself a read-only ``FileSystem``: the base class' path walking,
symlink bounds and ``walk`` work unchanged, lookups cross mount points, and symlinks resolve in the
composed namespace (an absolute ``/bin -> usr/bin`` on ROOT lands in the USR filesystem; ``..`` at
a mount's root goes to the parent mount, never into the hidden part of a subdirectory mount).

Mount targets are taken as canonical paths (the kernel canonicalises them at mount time); a target
whose parent directories are missing in the filesystem below gets virtual directories so it stays
reachable. ``which_mount``/``locate``/``evidence`` say which filesystem (and partition) a path
comes from.
"""

from __future__ import annotations

import posixpath
import stat as stat_mod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from immutools.errors import FileSystemError, IsADirectoryError_, LimitExceededError, NotADirectoryError_
from immutools.fs.base import FileSystem, Stat
from immutools.limits import Limits
from immutools.report.model import evidence as make_evidence

if TYPE_CHECKING:
    from immutools.fs.table import EntryTable


def normalize(path: str) -> str:
    """An absolute, normalised path ('.' and '//' removed, '..' applied lexically)."""
    path = posixpath.normpath("/" + path.lstrip("/"))
    return "/" if path in ("/", "//") else path


def is_within(path: str, base: str) -> bool:
    """``path`` equals ``base`` or lies below it, by whole components (``/usrx`` is not in ``/usr``)."""
    return base == "/" or path == base or path.startswith(base + "/")


@dataclass(eq=False)
class Mount:
    target: str
    fs: FileSystem
    subdir: str = "/"
    volume: Any = None                 # immutools.disk.Volume, for evidence
    label: str | None = None           # how to name it when there is no volume
    index: int = 0
    root_ref: Any = field(default=None, repr=False)

    def describe(self) -> str:
        if self.volume is not None and hasattr(self.volume, "describe"):
            return self.volume.describe()
        if self.label:
            return self.label
        return f"{self.fs.fstype} filesystem mounted at {self.target}"

    def inner_path(self, path: str) -> str:
        """The path inside this mount's filesystem for composed ``path`` (below the target)."""
        rel = path[len(self.target):].lstrip("/") if self.target != "/" else path.lstrip("/")
        return normalize(posixpath.join(self.subdir, rel)) if rel else self.subdir


class _Ref:
    """A node of the composed namespace: the mount it belongs to (None for a virtual directory),
    the backend's ref, the composed path and the path inside that filesystem."""

    __slots__ = ("mount", "inner", "path", "inner_path", "stat")

    def __init__(self, mount: Mount | None, inner: Any, path: str, inner_path: str | None):
        self.mount = mount
        self.inner = inner
        self.path = path
        self.inner_path = inner_path
        self.stat: Stat | None = None

    def __repr__(self) -> str:
        return f"<OsTree ref {self.path}>"


_VIRTUAL_DIR = Stat(mode=stat_mod.S_IFDIR | 0o755, size=0, nlink=2)


def _join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else f"{parent}/{name}"


class OsTree(FileSystem):
    """A read-only composition of filesystems at mount points."""

    fstype = "composed"

    def __init__(self, limits: Limits | None = None):
        super().__init__(limits or Limits())
        self.mounts: list[Mount] = []
        self._top: dict[str, Mount] = {}          # target -> visible mount
        self._ancestors: set[str] = set()         # strict ancestors of mount targets
        self._children: dict[str, set[str]] = {}  # path -> names of mount/virtual children

    @classmethod
    def single(cls, fs: FileSystem, volume: Any = None, label: str | None = None, subdir: str = "/") -> "OsTree":
        tree = cls(fs.limits)
        tree.mount("/", fs, subdir=subdir, volume=volume, label=label)
        return tree

    # ---- building -----------------------------------------------------------------------------
    def mount(self, target: str, fs: FileSystem, subdir: str = "/", volume: Any = None, label: str | None = None) -> Mount:
        """Mount ``fs`` (or its directory ``subdir``) at ``target``; later mounts on the same
        target hide earlier ones."""
        target = normalize(target)
        subdir = normalize(subdir)
        root_ref = fs._resolve(subdir, True)
        if not fs._stat_node(root_ref).is_dir:
            raise NotADirectoryError_(f"{subdir}: not a directory, cannot be mounted at {target}")
        mount = Mount(target, fs, subdir, volume, label, len(self.mounts), root_ref)
        self.mounts.append(mount)
        self._top[target] = mount
        self._rebuild_index()
        return mount

    def _rebuild_index(self) -> None:
        self._ancestors = set()
        self._children = {}
        for target in self._top:
            if target == "/":
                continue
            parts = target.strip("/").split("/")
            parent = "/"
            for part in parts:
                self._children.setdefault(parent, set()).add(part)
                child = _join(parent, part)
                if child != target:
                    self._ancestors.add(child)
                parent = child
            self._ancestors.add("/")

    def visible_mounts(self) -> list[Mount]:
        """Mounts not hidden by a later mount on the same target, in mount order."""
        return [m for m in self.mounts if self._top.get(m.target) is m]

    # ---- refs ---------------------------------------------------------------------------------
    def _mount_root(self, mount: Mount) -> _Ref:
        return _Ref(mount, mount.root_ref, mount.target, mount.subdir)

    def _virtual(self, path: str) -> _Ref:
        return _Ref(None, None, path, None)

    def _root(self) -> _Ref:
        mount = self._top.get("/")
        return self._mount_root(mount) if mount is not None else self._virtual("/")

    def _stat_node(self, ref: _Ref) -> Stat:
        if ref.stat is None:
            ref.stat = _VIRTUAL_DIR if ref.mount is None else ref.mount.fs._stat_node(ref.inner)
        return ref.stat

    def _wrap(self, parent: _Ref, name: str, inner: Any) -> _Ref:
        path = _join(parent.path, name)
        ref = _Ref(parent.mount, inner, path, _join(parent.inner_path, name))
        if path in self._ancestors:
            st = self._stat_node(ref)
            if not st.is_dir and not st.is_symlink:
                return self._virtual(path)     # a file where a mount needs a directory
        return ref

    def _list_node(self, ref: _Ref) -> Iterator[tuple[str, _Ref]]:
        seen: set[str] = set()
        if ref.mount is not None:
            for name, inner in ref.mount.fs._list_node(ref.inner):
                seen.add(name)
                path = _join(ref.path, name)
                mount = self._top.get(path)
                yield name, (self._mount_root(mount) if mount is not None else self._wrap(ref, name, inner))
        for name in sorted(self._children.get(ref.path, ())):
            if name in seen:
                continue
            path = _join(ref.path, name)
            mount = self._top.get(path)
            yield name, (self._mount_root(mount) if mount is not None else self._virtual(path))

    def _lookup_child(self, ref: _Ref, name: str) -> _Ref | None:
        path = _join(ref.path, name)
        mount = self._top.get(path)
        if mount is not None:
            return self._mount_root(mount)
        if ref.mount is not None:
            inner = ref.mount.fs._lookup_child(ref.inner, name)
            if inner is not None:
                return self._wrap(ref, name, inner)
        if path in self._ancestors:
            return self._virtual(path)
        return None

    def _read_node(self, ref: _Ref, offset: int, length: int) -> bytes:
        if ref.mount is None:
            raise IsADirectoryError_(f"{ref.path}: is a directory")
        return ref.mount.fs._read_node(ref.inner, offset, length)

    def _readlink_node(self, ref: _Ref) -> str:
        if ref.mount is None:
            raise FileSystemError(f"{ref.path}: not a symbolic link")
        return ref.mount.fs._readlink_node(ref.inner)

    def _xattrs_node(self, ref: _Ref) -> dict[str, bytes]:
        return {} if ref.mount is None else ref.mount.fs._xattrs_node(ref.inner)

    def _node_key(self, ref: _Ref) -> Any:
        if ref.mount is None:
            return ("virtual", ref.path)
        key = ref.mount.fs._node_key(ref.inner)
        return None if key is None else (id(ref.mount.fs), key)

    # ---- queries ------------------------------------------------------------------------------
    def realpath(self, path: str) -> str:
        """The canonical composed path of ``path`` (all symlinks resolved); raises if missing."""
        return self._resolve(path, True).path

    def lrealpath(self, path: str) -> str:
        """Like ``realpath`` but the last component is not followed."""
        return self._resolve(path, False).path

    def node_identity(self, path: str, follow: bool = True) -> Any:
        """A key equal for two paths naming the same file (same filesystem and inode)."""
        return self.stat_identity(path, follow)[1]

    def stat_identity(self, path: str, follow: bool = True) -> tuple[Stat, Any]:
        """``stat`` and ``node_identity`` of ``path`` with one lookup."""
        ref = self._resolve(path, follow)
        key = self._node_key(ref)
        return self._stat_node(ref), (key if key is not None and key[1] is not None else ("path", ref.path))

    def scandir_identities(self, path: str) -> list[tuple[str, Stat, Any]]:
        """(name, lstat, ``node_identity`` of the entry itself) for each entry of directory
        ``path``, sorted by name: one listing, no path lookup per entry."""
        ref = self._resolve(path, True)
        if not self._stat_node(ref).is_dir:
            raise NotADirectoryError_(f"{path}: not a directory")
        out = []
        for name, child in self._list_node(ref):
            key = self._node_key(child)
            out.append((name, self._stat_node(child), key if key is not None and key[1] is not None else ("path", child.path)))
            if len(out) > self.limits.max_dir_entries:
                raise LimitExceededError(f"{path}: more than {self.limits.max_dir_entries} entries")
        out.sort(key=lambda t: t[0])
        return out

    def mount_of(self, path: str) -> Mount | None:
        """The visible mount covering composed ``path`` by longest prefix (no symlink resolution)."""
        path = normalize(path)
        best = None
        for target, mount in self._top.items():
            if is_within(path, target) and (best is None or len(target) > len(best.target)):
                best = mount
        return best

    def locate(self, path: str, follow: bool = True) -> tuple[Mount | None, str, str]:
        """(mount, path inside its filesystem, canonical composed path). Missing paths fall back
        to the longest-prefix mount of the path as written."""
        try:
            ref = self._resolve(path, follow)
        except FileSystemError:
            mount = self.mount_of(path)
            norm = normalize(path)
            return mount, (mount.inner_path(norm) if mount else norm), norm
        if ref.mount is None:
            mount = self.mount_of(ref.path)
            return mount, (mount.inner_path(ref.path) if mount else ref.path), ref.path
        return ref.mount, ref.inner_path, ref.path

    def which_mount(self, path: str, follow: bool = True) -> Mount | None:
        return self.locate(path, follow)[0]

    def source_of(self, path: str, follow: bool = True) -> str:
        """``partition 3 (USR-A): /lib/os-release`` for composed ``/usr/lib/os-release``."""
        mount, inner, _ = self.locate(path, follow)
        return f"{mount.describe()}: {inner}" if mount else normalize(path)

    def evidence(self, path: str, detail: str | None = None, observed: bool = True, follow: bool = True) -> dict:
        return make_evidence(self.source_of(path, follow), detail, observed)

    def walk_metadata(
        self, path: str = "/", prune: Callable[[str], bool] | None = None, max_depth: int | None = None,
    ) -> Iterator[tuple[str, Stat]]:
        """Every entry below ``path`` as (path, Stat), depth first, without reading file contents
        or link targets. ``prune(dir_path)`` True skips a directory's contents. Bounded like
        ``walk``: depth, entry count, loops (a directory seen twice is not descended again)."""
        depth_cap = self.limits.max_walk_depth if max_depth is None else max_depth
        start = self._resolve(path, True)
        base = "" if start.path == "/" else start.path
        seen: set = set()
        count = 0
        stack: list[tuple[str, _Ref, int]] = [(base, start, 0)]
        while stack:
            dpath, dref, depth = stack.pop()
            key = self._node_key(dref)
            if key is not None:
                if key in seen:
                    self.warnings.append(f"{dpath or '/'}: directory already visited (a loop or a bind mount), not descended")
                    continue
                seen.add(key)
            subdirs = []
            for name, child in self._list_node(dref):
                if "/" in name or name in ("", ".", ".."):
                    continue
                cpath = f"{dpath}/{name}"
                st = self._stat_node(child)
                count += 1
                if count > self.limits.max_walk_entries:
                    raise LimitExceededError(f"walk of {path}: more than {self.limits.max_walk_entries} entries")
                yield cpath, st
                if st.is_dir and not (prune and prune(cpath)):
                    if depth + 1 > depth_cap:
                        self.warnings.append(f"{cpath}: deeper than {depth_cap} levels, not descended")
                    else:
                        subdirs.append((cpath, child, depth + 1))
            stack.extend(reversed(subdirs))


    # ---- whole-tree metadata: each mount's bulk answer, composed -------------------------------
    def _segments(self, path: str, exclude: tuple[str, ...]) -> tuple[_Ref, list["_Segment"]]:
        """The filesystems a walk of ``path`` crosses: the start's own mount from ``path`` down,
        and every visible mount below it that the walk reaches (through directories, not
        symlinks, not through ``exclude``); each with the directories it must not descend
        (``exclude`` and the mount points of the mounts on top of it), in its own paths."""
        start = self._resolve(path, True)
        base = start.path
        excluded = [normalize(p) for p in exclude]

        def is_excluded(p: str) -> bool:
            return any(is_within(p, e) for e in excluded)

        below = sorted((m for m in self.visible_mounts() if m.target != base and is_within(m.target, base)
                        and not any(is_within(m.target, e) and m.target != e for e in excluded)
                        and self._reachable(base, m.target)),
                       key=lambda m: (m.target.count("/"), m.target))
        segments: list[_Segment] = []
        if start.mount is not None:
            segments.append(_Segment(start.mount, base, start.inner_path))
        # A mount on an excluded directory is still listed (with its root's metadata), not walked.
        segments += [_Segment(m, m.target, m.subdir, skip=m.target in excluded) for m in below]
        targets = [m.target for m in self.visible_mounts() if m.target != base and is_within(m.target, base)]
        for seg in segments:
            hidden = [p for p in excluded + targets if p != seg.root and is_within(p, seg.root)]
            seg.exclude = tuple(sorted({seg.mount.inner_path(p) if seg.root == seg.mount.target
                                        else normalize(posixpath.join(seg.inner, posixpath.relpath(p, seg.root)))
                                        for p in hidden}))
        # One filesystem mounted twice, one mount's root inside the other's part (a bind mount:
        # Bottlerocket's /var inside /local, Ubuntu Core's /etc/ssh inside /writable): each
        # directory is walked once, under whichever path a depth-first walk (``walk_metadata``)
        # meets first; the other place lists the directory without descending it.
        for seg in segments:
            if seg.skip:
                continue
            for other in segments:
                if other is seg or other.skip or other.mount.fs is not seg.mount.fs:
                    continue
                if not is_within(other.inner, seg.inner) or any(is_within(other.inner, e) for e in seg.exclude):
                    continue
                inside = seg.outer(other.inner)          # where seg's walk meets other's root directory
                if other.inner == seg.inner:             # the very same directory mounted twice
                    first, later = (seg, other) if self._dfs_before(seg.root, other.root) else (other, seg)
                    self.warnings.append(f"{later.root}: directory already visited at {first.root} (a bind mount), not descended")
                    later.skip = True
                    if later is seg:
                        break
                    continue
                if self._dfs_before(inside, other.root):
                    self.warnings.append(f"{other.root}: directory already visited at {inside} (a bind mount), not descended")
                    other.skip = True
                else:
                    seg.exclude = tuple(sorted(set(seg.exclude) | {other.inner}))
        return start, segments

    def _dfs_before(self, first: str, second: str) -> bool:
        """Whether a depth-first walk in listing order (``walk_metadata``) reaches composed path
        ``first`` before ``second``."""
        a, b = [c for c in first.split("/") if c], [c for c in second.split("/") if c]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        if k == len(a) or k == len(b):
            return len(a) <= len(b)
        parent = "/" + "/".join(a[:k]) if k else "/"
        try:
            names = [name for name, _ref in self._list_node(self._resolve(parent, False))]
        except FileSystemError:
            return True
        pos_a = names.index(a[k]) if a[k] in names else len(names)
        pos_b = names.index(b[k]) if b[k] in names else len(names)
        return pos_a <= pos_b

    def _reachable(self, base: str, target: str) -> bool:
        """Whether a walk from ``base`` reaches ``target``: every directory between is a
        directory (or a virtual one), not a symlink."""
        parts = target[len(base):].strip("/").split("/") if base != "/" else target.strip("/").split("/")
        cur = base
        for part in parts[:-1]:
            cur = _join(cur, part)
            try:
                ref = self._resolve(cur, False)
            except FileSystemError:
                return False
            if not self._stat_node(ref).is_dir:
                return False
        return True

    def find_special(self, path: str = "/", exclude: tuple[str, ...] = (), bits: int | None = None) -> list[tuple[str, Stat]]:
        """Regular files with any of ``bits`` (default setuid/setgid) below ``path`` in the
        composed namespace, sorted by path: each mount's own (bulk) ``find_special``, paths
        mapped into the tree; directories hidden by a mount on top and ``exclude`` are skipped."""
        _start, segments = self._segments(path, exclude)
        out: list[tuple[str, Stat]] = []
        for seg in segments:
            if seg.skip:
                continue
            for inner, st in seg.mount.fs.find_special(seg.inner, seg.exclude, bits):
                out.append((seg.outer(inner), st))
        out.sort(key=lambda t: t[0])
        return out

    def walk_table(self, path: str = "/", exclude: tuple[str, ...] = ()) -> "EntryTable":
        """Metadata of every entry below ``path`` in the composed namespace as one
        ``EntryTable``: each mount's own (bulk) ``walk_table``, joined at its mount point (whose
        row carries the mount's root metadata, as a lookup would), with virtual directories where
        a mount point's parents are missing below."""
        import numpy as np

        from immutools.fs.table import EntryTable

        start, segments = self._segments(path, exclude)
        base = start.path
        names: list[str] = []
        count = 0
        owner: dict[str, tuple[int, int]] = {}          # composed dir -> (segment table index, local row)
        rows: dict[str, int] = {base: -1}               # composed path -> global row (spine only)
        patches: dict[int, Stat] = {}                   # global row -> replacement metadata
        virtual: list[tuple[int, str, Stat]] = []       # pending virtual rows (parent, name, stat)
        chunks: list[tuple[int, Any, Any]] = []         # (global offset, EntryTable or virtual rows, global parents)

        def find_row(p: str) -> int:
            """The global row of composed ``p`` (an ancestor or mount point), creating virtual
            directories where nothing lists it."""
            if p in rows:
                return rows[p]
            parent = posixpath.dirname(p)
            prow = find_row(parent)
            name = posixpath.basename(p)
            found = None
            if parent in owner:
                ti, local = owner[parent]
                offset, table, _gp = chunks[ti]
                cand = np.flatnonzero(table.parent == local)
                found = next((int(i) for i in cand if table.names[i] == name), None)
                if found is not None:
                    found += offset
                    st = table.stat(found - offset)
                    if not st.is_dir and not st.is_symlink:
                        patches[found] = _VIRTUAL_DIR         # a file where a mount needs a directory
                    else:
                        owner[p] = (ti, found - offset)
            if found is None:
                nonlocal count
                found = count
                count += 1
                chunks.append((found, [(prow, name, _VIRTUAL_DIR)], None))
            rows[p] = found
            return found

        for seg in segments:
            if seg.root != base:
                target_row = find_row(seg.root)
                patches[target_row] = seg.mount.fs._stat_node(seg.mount.root_ref)
            else:
                target_row = -1
            if seg.skip:
                continue
            table = seg.mount.fs.walk_table(seg.inner, seg.exclude)
            offset = count
            chunks.append((offset, table, np.where(table.parent < 0, target_row, table.parent + offset)))
            owner[seg.root] = (len(chunks) - 1, -1)
            count += len(table)
            if count > self.limits.max_walk_entries:
                raise LimitExceededError(f"walk of {path}: more than {self.limits.max_walk_entries} entries")
        # Assemble (chunks are in row order).
        cols = {k: [] for k in ("parent", "mode", "uid", "gid", "size", "inode", "nlink")}
        warnings: list[str] = []
        for _offset, chunk, global_parent in chunks:
            if isinstance(chunk, list):
                for prow, name, st in chunk:
                    names.append(name)
                    for k, v in (("parent", prow), ("mode", st.mode), ("uid", st.uid), ("gid", st.gid),
                                 ("size", st.size), ("inode", st.inode or 0), ("nlink", st.nlink)):
                        cols[k].append(np.asarray([v]))
                continue
            names.extend(chunk.names)
            cols["parent"].append(global_parent)
            for k in ("mode", "uid", "gid", "size", "inode", "nlink"):
                cols[k].append(getattr(chunk, k))
            warnings += chunk.warnings
        dtypes = {"parent": np.int64, "mode": np.uint32, "uid": np.uint32, "gid": np.uint32, "size": np.uint64,
                  "inode": np.uint64, "nlink": np.uint32}
        out = {k: (np.concatenate([np.asarray(c).astype(dtypes[k]) for c in v]) if v else np.zeros(0, dtypes[k]))
               for k, v in cols.items()}
        for row, st in patches.items():
            out["mode"][row], out["uid"][row], out["gid"][row] = st.mode, st.uid, st.gid
            out["size"][row], out["inode"][row], out["nlink"][row] = max(0, st.size), st.inode or 0, st.nlink or 0
        return EntryTable(base=base, parent=out["parent"], names=names, mode=out["mode"], uid=out["uid"],
                          gid=out["gid"], size=out["size"], inode=out["inode"], nlink=out["nlink"], warnings=warnings)


@dataclass(eq=False)
class _Segment:
    """One mount's share of a composed walk: composed ``root``, the same directory as ``inner``
    inside the mount's filesystem, and the inner directories not to descend."""

    mount: Mount
    root: str
    inner: str
    exclude: tuple[str, ...] = ()
    skip: bool = False

    def outer(self, inner_path: str) -> str:
        rel = inner_path[len(self.inner):].lstrip("/") if self.inner != "/" else inner_path.lstrip("/")
        return normalize(posixpath.join(self.root, rel)) if rel else self.root


def as_tree(fs: FileSystem, volume: Any = None, label: str | None = None) -> OsTree:
    """``fs`` itself when it is an ``OsTree``, else a tree with ``fs`` at ``/``."""
    return fs if isinstance(fs, OsTree) else OsTree.single(fs, volume=volume, label=label)
