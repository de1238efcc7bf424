"""Derived replica variants: a cached replica copied and changed with the tools a user would use.

A variant is a copy (``cp --sparse=always``) of a cached replica (``tests/replicas.py``) with a few
edits made by real tools at the partition offsets ``sfdisk --json`` gives:

* ``FatPut`` / ``FatDelete``: ``mcopy -o`` / ``mdel`` (mtools) on a FAT filesystem (an ESP);
* ``ExtPut`` / ``ExtSymlink`` / ``ExtMkdir`` / ``ExtRemove``: ``debugfs -w`` on an ext2/3/4
  filesystem addressed as ``image?offset=N`` (e2fsprogs' unix I/O manager), checked afterwards
  with ``e2fsck -fn`` so a variant is never a damaged filesystem by accident;
* ``RawWrite``: bytes written at an offset inside a partition (``dd conv=notrunc``);
* ``GptAttrs``: a GPT entry's attribute bits set with ``sfdisk --part-attrs``;
* ``BtrfsRebuild``: a btrfs partition made again by ``mkfs.btrfs --rootdir`` from a tree, with the
  distribution's mkfs options, checked with ``btrfs check --readonly`` and written with ``dd``.

``tar_bytes`` makes a tar archive with GNU tar (Flatcar keeps its grub.cfg in
``flatcar/grub/grub.cfg.tar`` on the ESP). Variants are cached in the fixture cache
(``tests/builders.cached``) keyed by the base replica's recipe and the edits, file contents included.
Texts the variants write live in ``data/replica-specs/variant-files/`` (``variant_file``), each
with its upstream source named in a header comment.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from builders import ENV, REPO, SOURCE_DATE_EPOCH, cached, run
from replicas import build_replica, replica_manifest, replica_recipe

VARIANT_RECIPE_VERSION = 1
VARIANT_FILES = REPO / "data" / "replica-specs" / "variant-files"


def variant_file(name: str) -> bytes:
    """A file of ``data/replica-specs/variant-files``."""
    return (VARIANT_FILES / name).read_bytes()


def partitions(image: Path) -> dict[int, dict]:
    """{partition number: sfdisk's entry (start and size in sectors)} of a GPT or MBR image."""
    table = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    out = {}
    for part in table.get("partitions", []):
        number = int(part["node"][len(table["device"]):].lstrip("p"))
        out[number] = dict(part, offset=part["start"] * sector, bytes=part["size"] * sector)
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# edits
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FatPut:
    """Write ``data`` to ``path`` on the FAT filesystem of ``partition`` (replacing a file there)."""

    partition: int
    path: str
    data: bytes

    def recipe(self) -> dict:
        return {"edit": "fat-put", "partition": self.partition, "path": self.path, "sha256": _digest(self.data)}


@dataclass(frozen=True)
class FatDelete:
    partition: int
    path: str

    def recipe(self) -> dict:
        return {"edit": "fat-delete", "partition": self.partition, "path": self.path}


@dataclass(frozen=True)
class ExtPut:
    """Write a regular file into an ext2/3/4 filesystem (replacing whatever is at ``path``)."""

    partition: int
    path: str
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    def recipe(self) -> dict:
        return {"edit": "ext-put", "partition": self.partition, "path": self.path, "sha256": _digest(self.data),
                "mode": self.mode, "uid": self.uid, "gid": self.gid}


@dataclass(frozen=True)
class ExtSymlink:
    partition: int
    path: str
    target: str

    def recipe(self) -> dict:
        return {"edit": "ext-symlink", "partition": self.partition, "path": self.path, "target": self.target}


@dataclass(frozen=True)
class ExtMkdir:
    partition: int
    path: str
    mode: int = 0o755

    def recipe(self) -> dict:
        return {"edit": "ext-mkdir", "partition": self.partition, "path": self.path, "mode": self.mode}


@dataclass(frozen=True)
class ExtRemove:
    """Unlink a file or symlink (``debugfs rm``) or an empty directory (``rmdir``)."""

    partition: int
    path: str
    directory: bool = False

    def recipe(self) -> dict:
        return {"edit": "ext-remove", "partition": self.partition, "path": self.path, "directory": self.directory}


@dataclass(frozen=True)
class RawWrite:
    partition: int
    offset: int
    data: bytes

    def recipe(self) -> dict:
        return {"edit": "raw", "partition": self.partition, "offset": self.offset, "sha256": _digest(self.data)}


@dataclass(frozen=True)
class BtrfsRebuild:
    """Replace the btrfs filesystem of ``partition`` with one made by ``mkfs.btrfs --rootdir`` from
    ``files`` (path -> bytes) with the options the distribution uses (spec: the partition's
    ``content``), the size of the whole partition; checked with ``btrfs check --readonly``."""

    partition: int
    files: tuple[tuple[str, bytes], ...]
    label: str | None = None
    uuid: str | None = None
    mixed: bool = False
    metadata: str | None = None
    data: str | None = None

    def recipe(self) -> dict:
        return {"edit": "btrfs-rebuild", "partition": self.partition, "label": self.label, "uuid": self.uuid,
                "mixed": self.mixed, "metadata": self.metadata, "data": self.data,
                "files": {path: _digest(data) for path, data in self.files}}


@dataclass(frozen=True)
class GptAttrs:
    """Set a GPT entry's attribute bits with ``sfdisk --part-attrs`` (e.g. ``"GUID:49,56"``:
    ChromeOS/gptprio priority 2, successful)."""

    partition: int
    attrs: str

    def recipe(self) -> dict:
        return {"edit": "gpt-attrs", "partition": self.partition, "attrs": self.attrs}


Edit = FatPut | FatDelete | ExtPut | ExtSymlink | ExtMkdir | ExtRemove | RawWrite | BtrfsRebuild | GptAttrs
_EXT_EDITS = (ExtPut, ExtSymlink, ExtMkdir, ExtRemove)


def _fat_parents(image_at: str, path: str) -> None:
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        sub = "::" + "/".join(parts[:i])
        probe = subprocess.run(["mdir", "-i", image_at, sub], capture_output=True, env=ENV)
        if probe.returncode != 0:
            run(["mmd", "-i", image_at, sub])


def _apply_fat(image: Path, part: dict, edit, work: Path) -> None:
    at = f"{image}@@{part['offset']}"
    if isinstance(edit, FatDelete):
        run(["mdel", "-i", at, "::" + edit.path.lstrip("/")])
        return
    src = work / f"fat-{_digest(edit.data)[:12]}"
    src.write_bytes(edit.data)
    _fat_parents(at, edit.path)
    run(["mcopy", "-o", "-m", "-i", at, str(src), "::" + edit.path.lstrip("/")])


def _debugfs(target: str, requests: Sequence[str], write: bool = False) -> list[tuple[str, list[str]]]:
    """Run debugfs requests on ``target``: [(request, the lines it printed)]. Unbuffered, with
    stderr in the same stream, so each error line follows the request that caused it."""
    with tempfile.NamedTemporaryFile("w", suffix=".cmd") as script:
        script.write("\n".join(requests) + "\n")
        script.flush()
        proc = subprocess.run(["stdbuf", "-o0", "debugfs", *(["-w"] if write else []), "-f", script.name, target],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"debugfs on {target} failed ({proc.returncode}): {proc.stdout.decode(errors='replace')}")
    out: list[tuple[str, list[str]]] = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("debugfs: "):
            out.append((line[len("debugfs: "):], []))
        elif out and line.strip() and not line.startswith("Allocated inode"):
            out[-1][1].append(line)
    return out


def _existing(target: str, paths: Sequence[str]) -> set[str]:
    """Which of ``paths`` exist in the filesystem (one read-only debugfs run)."""
    if not paths:
        return set()
    answers = _debugfs(target, [f"stat {p}" for p in paths])
    return {req[len("stat "):] for req, lines in answers if lines and lines[0].startswith("Inode:")}


def _debugfs_commands(edits: Sequence, work: Path, existing: set[str]) -> list[str]:
    """debugfs requests for the ext edits of one partition, in order: missing parent directories
    first (``mkdir`` only where nothing exists: debugfs 1.47.0's mkdir of an existing name leaves
    an orphaned directory inode behind), an existing entry at a path removed before writing it."""
    lines: list[str] = []
    present = set(existing)
    for n, e in enumerate(edits):
        if isinstance(e, (ExtPut, ExtSymlink, ExtMkdir)):
            parts = e.path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                parent = "/" + "/".join(parts[:i])
                if parent not in present:
                    lines.append(f"mkdir {parent}")
                    present.add(parent)
        if isinstance(e, ExtRemove):
            lines.append(f"{'rmdir' if e.directory else 'rm'} {e.path}")
            present.discard(e.path)
        elif isinstance(e, ExtMkdir):
            lines += [f"mkdir {e.path}", f"sif {e.path} mode 0{0o040000 | e.mode:o}"]
        elif isinstance(e, ExtSymlink):
            if e.path in present:
                lines.append(f"rm {e.path}")
            lines.append(f"symlink {e.path} {e.target}")
        elif isinstance(e, ExtPut):
            src = work / f"ext-{n}"
            src.write_bytes(e.data)
            if e.path in present:
                lines.append(f"rm {e.path}")
            lines += [f"write {src} {e.path}", f"sif {e.path} mode 0{0o100000 | e.mode:o}",
                      f"sif {e.path} uid {e.uid}", f"sif {e.path} gid {e.gid}"]
        if not isinstance(e, ExtRemove):
            present.add(e.path)
            for field in ("mtime", "ctime", "atime"):
                lines.append(f"sif {e.path} {field} @{SOURCE_DATE_EPOCH}")
    return lines


def _apply_ext(image: Path, part: dict, edits: Sequence, work: Path) -> None:
    target = f"{image}?offset={part['offset']}"
    candidates = sorted({"/" + "/".join(e.path.strip("/").split("/")[:i])
                         for e in edits for i in range(1, e.path.strip("/").count("/") + 2)})
    requests = _debugfs_commands(edits, work, _existing(target, candidates))
    errors = [f"{req}: {'; '.join(lines)}" for req, lines in _debugfs(target, requests, write=True) if lines]
    if errors:
        raise RuntimeError(f"debugfs on {target}: " + " | ".join(errors))
    run(["e2fsck", "-fn", target])           # the edits left a clean filesystem


def _apply_raw(image: Path, part: dict, edit: RawWrite, work: Path) -> None:
    if edit.offset + len(edit.data) > part["bytes"]:
        raise ValueError(f"raw write past the end of partition {edit.partition}")
    src = work / "raw.bin"
    src.write_bytes(edit.data)
    run(["dd", f"if={src}", f"of={image}", "bs=1", f"seek={part['offset'] + edit.offset}", "conv=notrunc", "status=none"])


def _apply_btrfs(image: Path, part: dict, edit: BtrfsRebuild, work: Path) -> None:
    tree = work / f"btrfs-{edit.partition}"
    for path, data in edit.files:
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    tree.mkdir(exist_ok=True)
    out = work / f"btrfs-{edit.partition}.img"
    with open(out, "wb") as f:
        f.truncate(part["bytes"])
    cmd = ["mkfs.btrfs", "-q", "-f", "-K", "-b", str(part["bytes"])]
    if edit.mixed:
        cmd.append("--mixed")
    for flag, value in (("-m", edit.metadata), ("-d", edit.data), ("-L", edit.label), ("-U", edit.uuid)):
        if value:
            cmd += [flag, value]
    run(cmd + ["-r", str(tree), str(out)])
    run(["btrfs", "check", "--readonly", str(out)])
    # the old filesystem's blocks go first (a hole), so nothing of it is left where the new one has zeros
    run(["fallocate", "--punch-hole", "--offset", str(part["offset"]), "--length", str(part["bytes"]), str(image)])
    run(["dd", f"if={out}", f"of={image}", "bs=1M", f"seek={part['offset']}", "oflag=seek_bytes",
         "conv=notrunc,sparse", "status=none"])


def apply_edits(image: Path, edits: Sequence[Edit]) -> None:
    """Apply ``edits`` to ``image`` in order (consecutive ext edits of a partition in one debugfs run)."""
    table = partitions(image)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        i = 0
        while i < len(edits):
            edit = edits[i]
            part = table[edit.partition]
            if isinstance(edit, _EXT_EDITS):
                j = i
                while j < len(edits) and isinstance(edits[j], _EXT_EDITS) and edits[j].partition == edit.partition:
                    j += 1
                _apply_ext(image, part, edits[i:j], work)
                i = j
                continue
            if isinstance(edit, (FatPut, FatDelete)):
                _apply_fat(image, part, edit, work)
            elif isinstance(edit, RawWrite):
                _apply_raw(image, part, edit, work)
            elif isinstance(edit, BtrfsRebuild):
                _apply_btrfs(image, part, edit, work)
            elif isinstance(edit, GptAttrs):
                run(["sfdisk", "--quiet", "--part-attrs", str(image), str(edit.partition), edit.attrs])
            else:
                raise TypeError(f"unknown edit {edit!r}")
            i += 1


def derive(name: str, base: str, edits: Sequence[Edit]) -> Path:
    """The cached variant ``name``: replica ``base`` with ``edits`` applied (the image keeps the
    base's file name, so its form is recognised the same way)."""
    recipe = {"kind": "immutools-variant", "version": VARIANT_RECIPE_VERSION, "base": replica_recipe(base),
              "edits": [e.recipe() for e in edits]}
    source = build_replica(base)

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        try:
            out = tmp / source.name
            run(["cp", "--sparse=always", str(source), str(out)])
            apply_edits(out, edits)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)       # no half-made variant left in the cache
            raise

    try:
        directory = cached(f"variant-{name}", recipe, build, suffix="")
    except OSError as exc:                       # another test process finished the same variant first
        if exc.filename2 and Path(exc.filename2).is_dir():
            directory = Path(exc.filename2)
        else:
            raise
    return directory / source.name


def base_manifest(base: str) -> dict:
    """The base replica's manifest (its ``expect:`` with computed values)."""
    return replica_manifest(base)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar archive of ``members`` made by GNU tar, reproducibly (owner root, fixed mtime, sorted)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "members"
        for name, data in members.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out = Path(tmp) / "out.tar"
        run(["tar", "--format=ustar", "--owner=0", "--group=0", "--numeric-owner", f"--mtime=@{SOURCE_DATE_EPOCH}",
             "--sort=name", "-cf", str(out), "-C", str(root), *sorted(members)])
        return out.read_bytes()
