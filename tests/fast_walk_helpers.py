"""Shared parts of the fast-walk differential tests (tests/test_fast_*.py): one source tree with
every kind of entry the bulk decoders distinguish, its reference rows from ``os.lstat`` and ``find``,
the rows ``walk_table`` gives, and the damage guard."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

from builders import SAMPLE_RECIPE_VERSION, cached, make_sample_tree
from fs_helpers import corrupt_copy, deadline
from immutools.errors import ImmutoolsError
from immutools.fs import open_filesystem
from immutools.fs.base import FileSystem
from immutools.image.source import FileSource

IS_ROOT = os.geteuid() == 0
TREE_VERSION = 3
# Owners given to files when the tests run as root (ids above 65535 need squashfs' 32-bit id table
# and EROFS' extended inodes).
OWNERS = {"usr/bin/su": (0, 5), "etc/hostname": (1001, 1002), "home/user/notes": (70000, 70001),
          "home/user": (1000, 1000), "srv/setgid-tool": (12, 34)}
WIDE_DIR_ENTRIES = 1500     # > 256 per squashfs directory header, listings past 8 KiB and 64 KiB


def build_tree(root: Path) -> Path:
    """``make_sample_tree`` plus: a directory of 1500 long names, owners (as root), a sparse file,
    a setuid hard link pair, a setgid directory, an empty directory, xattrs, device nodes and a
    socket (as root)."""
    make_sample_tree(root)
    wide = root / "wide"
    wide.mkdir()
    for n in range(WIDE_DIR_ENTRIES):
        (wide / f"a-rather-long-file-name-to-fill-directory-blocks-{n:05d}").write_bytes(b"x" * (n % 7))
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / "notes").write_text("notes\n")
    (root / "srv").mkdir()
    tool = root / "srv" / "setgid-tool"
    tool.write_bytes(b"\x7fELF setgid tool\n")
    tool.chmod(0o2711)
    both = root / "srv" / "both-bits"
    both.write_bytes(b"\x7fELF both\n")
    both.chmod(0o6755)
    os.link(both, root / "srv" / "both-bits-link")
    sgid_dir = root / "srv" / "shared"
    sgid_dir.mkdir()
    sgid_dir.chmod(0o2775)
    (root / "srv" / "empty-dir").mkdir()
    with open(root / "srv" / "sparse", "wb") as f:
        f.truncate(5 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(b"data in the middle")
    os.setxattr(root / "srv" / "setgid-tool", "user.note", b"xattr on a setgid file")
    os.setxattr(root / "srv" / "shared", "user.note", b"xattr on a directory")
    if IS_ROOT:
        for rel, (uid, gid) in OWNERS.items():
            mode = os.lstat(root / rel).st_mode
            os.lchown(root / rel, uid, gid)
            os.chmod(root / rel, stat.S_IMODE(mode))  # chown clears setuid/setgid
        os.mknod(root / "srv" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "srv" / "disk", 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(root / "srv" / "socket"))
        sock.close()
        # trusted.* xattrs (root only; user.* is refused on links and special files) give squashfs
        # the extended symlink, device and ipc inode types.
        for rel in ("usr/bin/sh", "srv/null", "srv/disk", "srv/socket", "fifo"):
            os.setxattr(root / rel, "trusted.note", b"extended inode", follow_symlinks=False)
    return root


def source_tree() -> Path:
    return cached("fastwalk-tree", {"v": TREE_VERSION, "sample": SAMPLE_RECIPE_VERSION, "root": IS_ROOT},
                  build_tree, suffix="")


def tree_rows(root: Path, all_root: bool = False, dir_nlink: bool = False) -> dict[str, tuple]:
    """(mode, uid, gid, size or None for directories, nlink or None for directories) per path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st = os.lstat(full)
            is_dir = stat.S_ISDIR(st.st_mode)
            uid, gid = (0, 0) if all_root else (st.st_uid, st.st_gid)
            out["/" + str(full.relative_to(root))] = (
                st.st_mode, uid, gid, None if is_dir else st.st_size,
                st.st_nlink if (dir_nlink or not is_dir) else None)
    return out


def table_rows(table, dir_size: bool = False, dir_nlink: bool = False) -> dict[str, tuple]:
    out = {}
    for i in range(len(table)):
        mode = int(table.mode[i])
        is_dir = stat.S_ISDIR(mode)
        out[table.path(i)] = (mode, int(table.uid[i]), int(table.gid[i]),
                              int(table.size[i]) if (dir_size or not is_dir) else None,
                              int(table.nlink[i]) if (dir_nlink or not is_dir) else None)
    assert len(out) == len(table), "two rows with the same path"
    return out


def full_rows(table) -> set[tuple]:
    """Every column, with the inode number: for comparing with the per-entry (generic) walk."""
    return {(table.path(i), int(table.mode[i]), int(table.uid[i]), int(table.gid[i]), int(table.size[i]),
             int(table.inode[i]), int(table.nlink[i])) for i in range(len(table))}


def generic_table(fs, path: str = "/", exclude: tuple[str, ...] = ()):
    """The per-entry implementation in fs/base.py, the fast path's second reference."""
    return FileSystem.walk_table(fs, path, exclude)


def find_special_reference(root: Path, prune: tuple[str, ...] = ()) -> list[str]:
    """``find ROOT -type f ( -perm -4000 -o -perm -2000 )`` as image paths, sorted."""
    cmd = ["find", str(root)]
    for p in prune:
        cmd += ["-path", str(root) + p, "-prune", "-o"]
    cmd += ["-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")", "-print"]
    lines = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape").splitlines()
    return sorted("/" + os.path.relpath(line, root) for line in lines)


def assert_parents_first(table) -> None:
    assert all(int(table.parent[i]) < i for i in range(len(table)))


def open_image(path: Path):
    return open_filesystem(FileSource(path))


def region_blocks(start: int, length: int) -> list[int]:
    return list(range(start - start % 512, start + length, 512))


def damaged_walks(image: Path, work: Path, blocks: list[int], seeds: range, flips: int = 30) -> list[str]:
    """Flip bytes inside the 512-byte ``blocks`` (offsets) of copies of ``image``; every open,
    walk_table and find_special must end within seconds with a table or one of our errors. Returns
    what happened per seed (warnings seen or the error), for the caller to check damage showed."""
    outcomes = []
    for seed in seeds:
        copy = work / f"damaged-{seed}{image.suffix}"
        corrupt_copy(image, copy, seed, flips=flips, blocks=blocks, block=512)
        with deadline(60):
            try:
                fs = open_image(copy)
                table = fs.walk_table("/")
                fs.find_special("/")
                assert_parents_first(table)
                outcomes.append("; ".join(fs.warnings) or "no warning")
            except ImmutoolsError as exc:
                assert "\n" not in str(exc)
                outcomes.append(f"error: {exc}")
        copy.unlink()
    return outcomes


def check_limits(image: Path) -> None:
    """The walk's bounds act like the per-entry walk's: a depth cap stops descent (with a
    warning) at the same place, an entry cap raises."""
    import dataclasses

    import pytest

    from immutools.errors import LimitExceededError
    from immutools.limits import DEFAULT_LIMITS

    shallow = dataclasses.replace(DEFAULT_LIMITS, max_walk_depth=3)
    fast_fs = open_filesystem(FileSource(image), limits=shallow)
    slow_fs = open_filesystem(FileSource(image), limits=shallow)
    assert full_rows(fast_fs.walk_table("/")) == full_rows(generic_table(slow_fs, "/"))
    assert any("deeper than 3 levels" in w for w in fast_fs.warnings)
    few = dataclasses.replace(DEFAULT_LIMITS, max_walk_entries=100)
    with pytest.raises(LimitExceededError):
        open_filesystem(FileSource(image), limits=few).walk_table("/")
