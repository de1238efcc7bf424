"""Helpers for the filesystem differential tests: tree summaries (ours, a mounted or extracted
tree), loop mounts, an XFS protofile generator, seeded corruption and a hang guard."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

from immutools.errors import ImmutoolsError

IS_ROOT = os.geteuid() == 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(mode: int, size: int, uid: int, gid: int, nlink: int, link: str | None, rdev: int | None,
            mtime: float | None, digest: str | None) -> dict:
    rec = {"mode": oct(mode), "uid": uid, "gid": gid, "nlink": nlink}
    if not stat.S_ISDIR(mode):
        rec["size"] = size
    if link is not None:
        rec["link"] = link
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        rec["rdev"] = (os.major(rdev), os.minor(rdev))
    if digest is not None:
        rec["sha256"] = digest
    if mtime is not None:
        rec["mtime"] = int(mtime)
    return rec


def summarize_ours(fs, path: str = "/", contents: bool = True, mtime: bool = True, nlink: bool = True,
                   dir_size: bool = False) -> dict[str, dict]:
    out = {}
    for entry in fs.walk(path):
        st = entry.stat
        digest = sha256(fs.read(entry.path)) if contents and st.is_file else None
        rec = _record(st.mode, st.size, st.uid, st.gid, st.nlink if nlink else 0, entry.link_target, st.rdev,
                      st.mtime if mtime else None, digest)
        if dir_size and st.is_dir:
            rec["size"] = st.size
        out[entry.path[len(path.rstrip("/")):] if path != "/" else entry.path] = rec
    return out


def summarize_tree(root: Path, contents: bool = True, mtime: bool = True, nlink: bool = True,
                   dir_size: bool = False, skip_mounts: bool = False) -> dict[str, dict]:
    """The same summary for a directory tree on the host (a loop mount, an extraction)."""
    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            link = None
            if stat.S_ISLNK(st.st_mode):
                try:
                    link = os.readlink(full)
                except OSError:
                    link = None  # the kernel refuses a damaged link (EUCLEAN); so does our walk
            digest = None
            if contents and stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = sha256(f.read())
            rec = _record(st.st_mode, st.st_size, st.st_uid, st.st_gid, st.st_nlink if nlink else 0, link,
                          st.st_rdev, st.st_mtime if mtime else None, digest)
            if dir_size and stat.S_ISDIR(st.st_mode):
                rec["size"] = st.st_size
            out["/" + os.path.relpath(full, root)] = rec
    return out


def assert_same_tree(ours: dict, theirs: dict, what: str) -> None:
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    assert not missing and not extra, f"{what}: missing {missing[:10]}, extra {extra[:10]}"
    diffs = [(p, ours[p], theirs[p]) for p in sorted(ours) if ours[p] != theirs[p]]
    assert not diffs, f"{what}: {len(diffs)} entries differ, e.g. " + "; ".join(
        f"{p}: ours {o} vs {t}" for p, o, t in diffs[:5]
    )


@contextlib.contextmanager
def loop_mount(image: Path, opts: str = "ro", fstype: str | None = None):
    """Mount ``image`` read-only on a temporary directory; always unmounts."""
    mnt = tempfile.mkdtemp(prefix="immutools-mnt-")
    cmd = ["mount", "-o", f"loop,{opts}"] + (["-t", fstype] if fstype else []) + [str(image), mnt]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        os.rmdir(mnt)
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace')}")
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        os.rmdir(mnt)


def kernel_supports(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1] == fstype for line in f if line.strip()):
                return True
    except OSError:
        return False
    return subprocess.run(["modprobe", "-q", fstype], capture_output=True).returncode == 0 if IS_ROOT else False


# ------------------------------------------------------------------------------------------------
# XFS protofile (mkfs.xfs -p): the only way to populate XFS at mkfs time without root.
# Format (xfsprogs mkfs/proto.c): a boot-image line, "inodes blocks", the root's mode, then one line
# per entry "name mode uid gid [source file | major minor | link target]", directories closed by "$".
# Mode is a type (- d l p c b), a setuid (u/-) and setgid (g/-) flag and three octal digits; there
# is no sticky bit and names cannot contain white space, so such names are left out (returned).
# ------------------------------------------------------------------------------------------------


def _proto_mode(st: os.stat_result) -> str:
    kind = {stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFCHR: "c", stat.S_IFBLK: "b"}[stat.S_IFMT(st.st_mode)]
    return (kind + ("u" if st.st_mode & stat.S_ISUID else "-") + ("g" if st.st_mode & stat.S_ISGID else "-")
            + f"{st.st_mode & 0o777:03o}")


def xfs_protofile(root: Path, owners: dict[str, tuple[int, int]] | None = None,
                  devices: dict[str, tuple[str, int, int]] | None = None) -> tuple[str, list[str]]:
    """Protofile text for ``root`` and the relative paths it had to leave out.

    ``owners`` maps relative paths to (uid, gid) (default 0:0); ``devices`` adds device nodes at the
    top level: name -> ("c" or "b", major, minor).
    """
    owners = owners or {}
    skipped: list[str] = []
    lines = ["/dev/null", "0 0", f"{_proto_mode(os.lstat(root))} 0 0"]

    def emit(directory: Path, depth: int) -> None:
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            rel = str(entry.relative_to(root))
            if any(c.isspace() for c in entry.name):
                skipped.append(rel)
                continue
            st = os.lstat(entry)
            uid, gid = owners.get(rel, (0, 0))
            head = f"{'  ' * depth}{entry.name} {_proto_mode(st)} {uid} {gid}"
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"{head} {os.readlink(entry)}")
            elif stat.S_ISDIR(st.st_mode):
                lines.append(head)
                emit(entry, depth + 1)
                lines.append(f"{'  ' * depth}$")
            elif stat.S_ISREG(st.st_mode):
                lines.append(f"{head} {entry.resolve()}")
            elif stat.S_ISFIFO(st.st_mode):
                lines.append(head)
            else:
                skipped.append(rel)

    emit(root, 1)
    for name, (kind, major, minor) in (devices or {}).items():
        lines.append(f"  {name} {kind}--666 0 0 {major} {minor}")
    lines.append("$")
    return "\n".join(lines) + "\n", skipped


# ------------------------------------------------------------------------------------------------
# Hostile input
# ------------------------------------------------------------------------------------------------


def data_blocks(path: Path, block: int = 4096, limit: int | None = None) -> list[int]:
    """Offsets of non-zero ``block``-sized blocks (skipping holes), the places worth corrupting."""
    offsets = []
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        end = size if limit is None else min(size, limit)
        pos = 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = end
            for off in range(pos - pos % block, min(hole, end), block):
                if any(os.pread(fd, block, off)):
                    offsets.append(off)
            pos = max(hole, pos + block)
    return offsets


def corrupt_copy(src: Path, dst: Path, seed: int, flips: int = 40, blocks: list[int] | None = None,
                 block: int = 4096) -> None:
    """Copy ``src`` to ``dst`` (sparse) and overwrite ``flips`` random bytes inside non-zero blocks."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    rng = random.Random(seed)
    blocks = blocks if blocks is not None else data_blocks(src, block)
    with open(dst, "r+b") as f:
        for _ in range(flips):
            off = rng.choice(blocks) + rng.randrange(block)
            f.seek(off)
            f.write(bytes([rng.randrange(256)]))


class Hang(BaseException):
    """BaseException, so no ``except Exception`` on the way (ours or a library's) can swallow it."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def _alarm(_sig, _frame):
        raise Hang(f"still running after {seconds}s (a loop on damaged input?)")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def exercise(fs, max_read: int = 1 << 20) -> tuple[int, list[str]]:
    """Walk everything and read every file, link and xattr; our errors are collected, anything
    else propagates. Returns (entries seen, error messages)."""
    errors: list[str] = []
    seen = 0
    try:
        for entry in fs.walk():
            seen += 1
            try:
                if entry.stat.is_file:
                    fs.read(entry.path, length=min(entry.stat.size, max_read))
                fs.xattrs(entry.path)
            except ImmutoolsError as exc:
                errors.append(str(exc))
    except ImmutoolsError as exc:
        errors.append(str(exc))
    return seen, errors
