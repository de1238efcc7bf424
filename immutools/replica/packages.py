"""Full-size file trees from Debian packages: a real distribution's names, depths, modes, owners,
symlinks, hard links and setuid/setgid bits, with the file contents emptied.

Why this source: a replica's spec describes the files the collectors read, a few hundred entries;
a real system holds tens of thousands, and every scan walks all of them (setuid inventory, module
count). The shape has to come from a real distribution, reproducibly, on any fresh Debian 12
machine, and must not depend on what the build machine happens to have installed (so its own
``/usr`` is not a source). Debian's archive is reachable from every machine the project builds
on, its packages are signed and versioned, and a package's ``data.tar`` member holds exactly the
metadata dpkg would unpack. Other distributions' package formats (Gentoo binpkgs for Flatcar, RPMs
for Fedora CoreOS, Bottlerocket's and Talos's own builds) have no client in Debian that resolves
and verifies them, so every set is made of Debian packages chosen to match the shape of the
system it stands in for (``data/replica-specs/package-sets/*.yaml`` says which and why).

A set is pinned by name and resolved to versions at build time, against an empty dpkg status
(``apt-get --simulate install`` with ``Dir::State::status`` pointing at an empty file), so the
closure does not depend on the host's installed packages, only on its apt sources (Debian 12,
``deb.debian.org``). The resolved ``name=version`` list is the cache key of the tree
(``Resolution.key``); ``.deb`` files are kept in a download directory and fetched with ``apt-get
download name=version`` (apt checks them against the signed index).

What a tree holds (``extract``), per ``data.tar`` member:

* directories, symlinks and hard links as in the package; names of the merged-``/usr`` form
  (``bin/``, ``sbin/``, ``lib*/`` moved under ``usr/``, as Debian 12 installs them), with the
  top-level ``bin -> usr/bin``... links;
* regular files with their mode (setuid/setgid included) and owner (recorded in ``tree.json``;
  the builder hands owners to the tools through its owner map), and content:
  - kept as shipped for small text files the collectors read: configuration under ``etc/``,
    systemd units and drop-ins, tmpfiles/sysusers/sysctl/modules-load snippets, udev rules, D-Bus
    policy, ``os-release`` (at most ``KEEP_MAX`` bytes);
  - the 64-byte ELF header for ELF files in executable directories (architecture detection
    reads ``e_machine``);
  - empty otherwise (a full-size tree costs metadata, not data).

The extraction is our own code: ``dpkg-deb --fsys-tarfile`` gives the tar stream, Python's
``tarfile`` reads it; no library turns package metadata into a content-stripped tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from immutools.paths import data_dir
from immutools.replica.context import BuildError, SpecError, path_match, which

# Bump when what ``extract`` writes changes: it is part of every tree's cache key.
TREE_FORMAT = 1
KEEP_MAX = 64 * 1024
ELF_HEADER = 64
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
KEEP_PREFIXES = (                     # small non-ELF files here are kept as shipped
    "etc/", "usr/lib/systemd/system/", "usr/lib/systemd/user/", "usr/lib/systemd/network/",
    "usr/lib/systemd/system-preset/", "usr/lib/systemd/system-generators/", "usr/lib/tmpfiles.d/",
    "usr/lib/sysusers.d/", "usr/lib/sysctl.d/", "usr/lib/modules-load.d/", "usr/lib/udev/rules.d/",
    "usr/share/dbus-1/", "usr/lib/os-release", "usr/share/polkit-1/", "usr/lib/environment.d/",
)
EXEC_DIRS = ("usr/bin/", "usr/sbin/", "usr/libexec/", "usr/lib/systemd/")
APT_BASE = ["-q", "-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
            "-o", "Debug::NoLocking=1"]
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) [^\[]*\[([^\]]+)\]\)")


def sets_dir() -> Path:
    return data_dir() / "replica-specs" / "package-sets"


@dataclass(frozen=True)
class PackageSet:
    name: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    drop: tuple[str, ...]
    description: str
    file: Path

    def dropped(self, rel: str) -> bool:
        """Whether ``rel`` (a merged-/usr relative path) or a directory above it matches ``drop``."""
        if not self.drop:
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(path_match(pre, pat) for pat in self.drop for pre in prefixes)


def load_sets(directory: Path | None = None) -> dict[str, PackageSet]:
    """Every package set in ``directory`` (default ``data/replica-specs/package-sets``), by name."""
    out: dict[str, PackageSet] = {}
    for path in sorted((directory or sets_dir()).glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        for name, body in (data.get("sets") or {}).items():
            where = f"{path}: sets.{name}"
            if not isinstance(body, dict) or not isinstance(body.get("packages"), list) or not body["packages"]:
                raise SpecError(f"{where}: needs packages: [name, ...]")
            unknown = set(body) - {"packages", "exclude", "drop", "description"}
            if unknown:
                raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            names = [str(p) for p in body["packages"]] + [str(p) for p in body.get("exclude") or []]
            bad = [n for n in names if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", n)]
            if bad:
                raise SpecError(f"{where}: not Debian package names: {', '.join(bad)}")
            if name in out:
                raise SpecError(f"{where}: set {name!r} also defined in {out[name].file}")
            drop = tuple(str(d).strip("/") for d in body.get("drop") or [])
            if any(not d or ".." in d.split("/") for d in drop):
                raise SpecError(f"{where}.drop: relative paths or patterns inside the tree")
            out[name] = PackageSet(str(name), tuple(map(str, body["packages"])),
                                   tuple(map(str, body.get("exclude") or [])), drop,
                                   str(body.get("description", "")).strip(), path)
    return out


def package_set(name: str) -> PackageSet:
    sets = load_sets()
    if name not in sets:
        raise SpecError(f"package set {name!r}: not defined in {sets_dir()} (known: {', '.join(sorted(sets))})")
    return sets[name]


@dataclass
class Resolution:
    """A package set resolved to exact versions: ``packages`` = [(name, version, arch)], sorted."""

    set: PackageSet
    packages: list[tuple[str, str, str]]

    @property
    def recipe(self) -> dict:
        """What the tree is a function of (the cache key): format, set name and the resolved list."""
        return {"kind": "immutools-package-tree", "format": TREE_FORMAT, "set": self.set.name,
                "drop": list(self.set.drop), "packages": [f"{n}={v}:{a}" for n, v, a in self.packages]}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:16]


def _apt(args: list[str], step: str, cwd: Path | None = None) -> str:
    if which("apt-get") is None:
        raise BuildError(f"{step}: apt-get is not installed (the package trees need Debian's apt)")
    proc = subprocess.run(["apt-get", *APT_BASE, *args], capture_output=True, cwd=cwd,
                          env=dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BuildError(f"{step}: apt-get {' '.join(args[:3])}... failed: {' / '.join(err[-3:])}")
    return proc.stdout.decode(errors="replace")


def resolve(pset: PackageSet, work: Path) -> Resolution:
    """The set's closure with exact versions, as apt would install it on an empty system."""
    work.mkdir(parents=True, exist_ok=True)
    status = work / "empty-dpkg-status"
    status.write_text("")
    out = _apt(["-s", "-o", f"Dir::State::status={status}", "install", *pset.packages], f"package set {pset.name}")
    found: dict[str, tuple[str, str, str]] = {}
    for line in out.splitlines():
        m = _INST.match(line)
        if m:
            found[m.group(1)] = (m.group(1), m.group(2), m.group(3))
    missing = [p for p in pset.packages if p not in found and p.split(":")[0] not in found]
    if missing:
        raise BuildError(f"package set {pset.name}: apt resolved no version for {', '.join(missing)} "
                         "(the package trees need Debian 12 apt sources)")
    excluded = set(pset.exclude)
    return Resolution(pset, sorted(v for k, v in found.items() if k not in excluded))


def deb_name(name: str, version: str, arch: str) -> str:
    """The file name ``apt-get download`` gives (an epoch's colon is written ``%3a``)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def download(res: Resolution, debs: Path) -> dict:
    """Fetch the missing ``.deb`` files into ``debs``; return {downloaded: n, bytes: n, cached: n}."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [(n, v, a) for n, v, a in res.packages if not (debs / deb_name(n, v, a)).exists()]
    fetched = 0
    if missing:
        partial = debs / f".partial-{os.getpid()}"
        partial.mkdir(exist_ok=True)
        extra = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        for i in range(0, len(missing), 200):
            batch = missing[i:i + 200]
            _apt([*extra, "download", *(f"{n}={v}" for n, v, _a in batch)], f"package set {res.set.name}: download",
                 cwd=partial)
        for n, v, a in missing:
            got = partial / deb_name(n, v, a)
            if not got.exists():
                raise BuildError(f"package set {res.set.name}: apt-get download gave no {got.name}")
            fetched += got.stat().st_size
            os.replace(got, debs / got.name)
        partial.rmdir()
    total = sum((debs / deb_name(n, v, a)).stat().st_size for n, v, a in res.packages)
    return {"downloaded": len(missing), "downloaded_bytes": fetched, "cached": len(res.packages) - len(missing),
            "deb_bytes": total}


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------

def canonical(name: str) -> str | None:
    """A tar member name as a relative path of the merged-/usr tree; None for unsafe names."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None if parts else ""
    if parts[0] in MERGED_DIRS:
        parts.insert(0, "usr")
    return "/".join(parts)


@dataclass
class _Tree:
    root: Path
    owners: dict[str, list[int]] = field(default_factory=dict)
    dir_modes: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"dirs": 0, "files": 0, "symlinks": 0, "hardlinks": 0})
    kept: dict[str, int] = field(default_factory=lambda: {"whole": 0, "elf_header": 0, "emptied": 0})
    widened: list[str] = field(default_factory=list)
    shipped_bytes: int = 0
    dropped: int = 0

    def ensure_dir(self, rel: str) -> None:
        if not rel:
            return
        path = self.root / rel
        if path.is_dir() and not path.is_symlink():
            return
        self.ensure_dir(rel.rpartition("/")[0])
        if path.exists() or path.is_symlink():
            raise BuildError(f"{rel}: a directory in one package, a file in another")
        path.mkdir()
        self.dir_modes.setdefault(rel, 0o755)
        self.counts["dirs"] += 1

    def taken(self, rel: str) -> bool:
        path = self.root / rel
        if path.exists() or path.is_symlink():
            self.conflicts.append(rel)
            return True
        return False


def extract(res: Resolution, debs: Path, out: Path) -> dict:
    """Write the set's tree to ``out/root`` and its facts to ``out/tree.json``; return the facts."""
    if which("dpkg-deb") is None:
        raise BuildError("package trees: dpkg-deb is not installed")
    root = out / "root"
    root.mkdir(parents=True)
    tree = _Tree(root)
    am_root = os.geteuid() == 0
    for name, version, arch in res.packages:
        deb = debs / deb_name(name, version, arch)
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    rel = canonical(member.name)
                    if rel and res.set.dropped(rel):
                        tree.dropped += 1
                        continue
                    _add_member(tree, tar, member, am_root, rel)
        except tarfile.TarError as exc:
            raise BuildError(f"{deb.name}: unreadable data.tar: {exc}") from None
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            if proc.wait() != 0:
                raise BuildError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err}")
    # merged /usr: the top-level links Debian 12 creates (usrmerge / debootstrap --merged-usr)
    for d in MERGED_DIRS:
        if (root / "usr" / d).is_dir() and not (root / d).exists():
            os.symlink(f"usr/{d}", root / d)
            tree.counts["symlinks"] += 1
    # Directory modes last and deepest first, so a 0555 directory is filled before it closes.
    for rel in sorted(tree.dir_modes, key=lambda r: -r.count("/")):
        os.chmod(root / rel, tree.dir_modes[rel])
    special = {"setuid": [], "setgid": []}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                rel = "/" + str(path.relative_to(root))
                if st.st_mode & stat.S_ISUID:
                    special["setuid"].append(rel)
                if st.st_mode & stat.S_ISGID:
                    special["setgid"].append(rel)
    facts = {
        "source": "debian-packages",
        "set": res.set.name,
        "set_file": res.set.file.name,
        "key": res.key,
        "format": TREE_FORMAT,
        "packages": {n: v for n, v, _a in res.packages},
        "package_count": len(res.packages),
        "entries": sum(tree.counts.values()),
        "counts": tree.counts,
        "contents": tree.kept,
        "dropped_members": tree.dropped,
        "drop": list(res.set.drop),
        "shipped_bytes": tree.shipped_bytes,
        "setuid": sorted(special["setuid"]),
        "setgid": sorted(special["setgid"]),
        "owners": dict(sorted(tree.owners.items())),
        "conflicts": sorted(set(tree.conflicts)),
        "modes_widened": tree.widened,
    }
    (out / "tree.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    return facts


def _add_member(tree: _Tree, tar: tarfile.TarFile, member: tarfile.TarInfo, am_root: bool, rel: str | None) -> None:
    if not rel:
        return                                          # "./" or an unsafe name
    parent = rel.rpartition("/")[0]
    tree.ensure_dir(parent)
    path = tree.root / rel
    owner = [member.uid, member.gid]
    if member.isdir():
        if path.is_dir() and not path.is_symlink():
            tree.dir_modes.setdefault(rel, member.mode & 0o7777)
        else:
            tree.ensure_dir(rel)
            tree.dir_modes[rel] = member.mode & 0o7777
        if owner != [0, 0]:
            tree.owners.setdefault(rel, owner)
        return
    if tree.taken(rel):
        return
    if member.issym():
        os.symlink(member.linkname, path)
        tree.counts["symlinks"] += 1
    elif member.islnk():
        target = canonical(member.linkname)
        src = tree.root / target if target else None
        if src is None or not src.is_file() or src.is_symlink():
            raise BuildError(f"{rel}: hard link to {member.linkname!r}, which the package did not ship before it")
        os.link(src, path)
        tree.counts["hardlinks"] += 1
        return
    elif member.isreg():
        tree.shipped_bytes += member.size
        f = tar.extractfile(member)
        head = f.read(ELF_HEADER)
        if head[:4] == b"\x7fELF":
            data = head if rel.startswith(EXEC_DIRS) else b""
        elif member.size <= KEEP_MAX and rel.startswith(KEEP_PREFIXES):
            data = head + f.read()
        else:
            data = b""
        tree.kept["whole" if data and data[:4] != b"\x7fELF" else "elf_header" if data else "emptied"] += 1
        path.write_bytes(data)
        mode = member.mode & 0o7777
        if not am_root and not mode & 0o400:
            tree.widened.append(rel)           # the owner must read it to copy it into a staging tree
            mode |= 0o400
        os.chmod(path, mode)
        tree.counts["files"] += 1
    else:
        return                                  # device nodes and FIFOs are not shipped in Debian packages
    if owner != [0, 0]:
        tree.owners[rel] = owner


# ------------------------------------------------------------------------------------------------
# Provider: resolve, download, extract, cache
# ------------------------------------------------------------------------------------------------

@dataclass
class PackageTree:
    """A materialised tree: ``root`` (the directory), ``facts`` (``tree.json``)."""

    root: Path
    facts: dict

    def owner(self, rel: str) -> tuple[int, int]:
        uid, gid = self.facts["owners"].get(rel.strip("/"), (0, 0))
        return int(uid), int(gid)


class DebianPackageTrees:
    """The ``debian-packages`` tree source: ``tree(set_name)`` -> ``PackageTree``.

    ``cache``: where trees and downloads live (default ``<cache_dir>/replica-trees``).
    ``cached``: optional ``cached(name, recipe, build) -> Path`` to store trees somewhere else (the
    tests pass their fixture cache's); by default a directory per resolved key under ``cache``."""

    source = "debian-packages"

    def __init__(self, cache: Path | None = None, cached=None, debs: Path | None = None):
        from immutools.paths import cache_dir

        self.cache = Path(cache) if cache else cache_dir() / "replica-trees"
        self.debs = Path(debs) if debs else self.cache / "debs"
        self._cached = cached
        self._resolved: dict[str, Resolution] = {}
        self.last_download: dict[str, dict] = {}

    def resolution(self, set_name: str) -> Resolution:
        if set_name not in self._resolved:
            self._resolved[set_name] = resolve(package_set(set_name), self.cache / "apt")
        return self._resolved[set_name]

    def recipe(self, set_name: str) -> dict:
        return self.resolution(set_name).recipe

    def _make(self, res: Resolution, out: Path) -> None:
        self.last_download[res.set.name] = download(res, self.debs)
        out.mkdir(parents=True)
        extract(res, self.debs, out)

    def tree(self, set_name: str) -> PackageTree:
        res = self.resolution(set_name)
        if self._cached is not None:
            path = Path(self._cached(f"pkgtree-{set_name}", res.recipe, lambda tmp: self._make(res, tmp)))
        else:
            path = self.cache / f"{set_name}-{res.key}"
            if not (path / "tree.json").exists():
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                if tmp.exists():
                    subprocess.run(["rm", "-rf", str(tmp)], check=True)
                self._make(res, tmp)
                os.replace(tmp, path)
        return PackageTree(path / "root", json.loads((path / "tree.json").read_text()))
