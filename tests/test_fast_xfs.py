"""Differential tests of the bulk XFS metadata reader (``immutools/fs/xfs_tables.py``).

Images are made with ``mkfs.xfs -p protofile`` (the way to populate XFS without mounting) from one
source tree: short-form directories, a 200-entry block/leaf directory, a 3,000-entry directory
whose data blocks interleave with its files' data (node format, and with small inodes a B+tree data
fork), setuid/setgid files (one under a directory the walk excludes), uids/gids above 65535, deep
nesting, symlinks, device nodes, fifos. Variants: v5 (sparse inode chunks), v5 with 1 KiB blocks
(4 KiB directory blocks), ``-n size=8192`` and ``-n size=65536`` directory blocks, 1 KiB inodes,
v4 with and without ``ftype`` (v4 needs no kernel support to be made or read here).

``walk_table`` must give exactly what ``xfs_db`` lists (``ls`` of every directory, ``print core.*``
of every inode) and what ``find`` prints on the source tree; ``find_special`` must equal ``find
SRC -type f \\( -perm -4000 -o -perm -2000 \\)``. Then damaged copies: bounded, warned, never
hanging.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from immutools.errors import ImmutoolsError
from immutools.fs import open_filesystem
from immutools.fs.base import FileSystem
from immutools.image.source import FileSource
from tests.builders import cached, have, run
from tests.fs_helpers import corrupt_copy, data_blocks, deadline, xfs_protofile
from tests.test_fs_dissect import xfs_db_listing

pytestmark = pytest.mark.skipif(not (have("mkfs.xfs") and have("xfs_db")), reason="needs xfsprogs")

TREE_VERSION = 1
OWNERS = {"srv/data/owned": (70000, 80000), "srv/data": (65536, 131072), "usr/bin/user-tool": (1000, 1000)}
DEVICES = {"null": ("c", 1, 3), "loop0": ("b", 7, 0)}
EXCLUDED = "/excluded"

VARIANTS = {
    "v5": [],
    "v5-1k-blocks": ["-b", "size=1024"],
    "v5-dirblock-8k": ["-n", "size=8192"],
    "v5-dirblock-64k": ["-n", "size=65536"],
    "v5-1k-inodes": ["-i", "size=1024"],
    "v5-no-sparse": ["-i", "sparse=0"],
    "v4": ["-m", "crc=0"],
    "v4-no-ftype": ["-m", "crc=0", "-n", "ftype=0"],
}


def make_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=sample\n")
    bin_ = root / "usr" / "bin"
    bin_.mkdir(parents=True)
    for name, mode in (("su", 0o4755), ("wall", 0o2755), ("both", 0o6711), ("bash", 0o755), ("user-tool", 0o755)):
        (bin_ / name).write_bytes(b"\x7fELF " + name.encode() + b"\n")
        (bin_ / name).chmod(mode)
    (bin_ / "sh").symlink_to("bash")
    (root / "bin").symlink_to("usr/bin")
    (root / "dangling").symlink_to("does/not/exist")
    os.mkfifo(root / "fifo")
    (root / "ünïcødé-名前").write_text("utf8\n")
    srv = root / "srv"
    block = srv / "block-dir"
    block.mkdir(parents=True)
    for i in range(200):
        (block / f"entry-{i:04d}-with-a-longish-name").write_text(str(i))
    big = srv / "big"
    big.mkdir()
    for i in range(3000):
        if i % 101 == 0:
            (big / f"e{i:05d}").mkdir()
            (big / f"e{i:05d}" / "inside").write_text(str(i))
        else:
            (big / f"e{i:05d}").write_text(str(i))
    cur = srv / "deep"
    for i in range(40):
        cur = cur / f"level{i:02d}"
    cur.mkdir(parents=True)
    (cur / "bottom-suid").write_bytes(b"\x7fELF deep\n")
    (cur / "bottom-suid").chmod(0o4711)
    hidden = root / EXCLUDED.lstrip("/") / "inner"
    hidden.mkdir(parents=True)
    (hidden / "hidden-suid").write_bytes(b"\x7fELF hidden\n")
    (hidden / "hidden-suid").chmod(0o4755)
    shared = srv / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    (srv / "data").mkdir()
    (srv / "data" / "owned").write_text("owned\n")
    for a in range(20):
        for b in range(6):
            d = srv / "tree" / f"a{a:02d}" / f"b{b:02d}"
            d.mkdir(parents=True)
            (d / "f").write_text("x")


def source_tree() -> Path:
    return cached("fastxfs-src", {"v": TREE_VERSION}, lambda p: make_tree(p), suffix="")


def build_image(name: str) -> Path:
    src = source_tree()

    def build(path: Path) -> None:
        text, skipped = xfs_protofile(src, OWNERS, DEVICES)
        assert not skipped
        proto = path.with_name(path.name + ".proto")
        proto.write_text(text)
        with open(path, "wb") as f:
            f.truncate(320 << 20)
        try:
            run(["mkfs.xfs", "-q", "-f", *VARIANTS[name], "-p", proto, path])
        finally:
            proto.unlink()

    return cached(f"fastxfs-{name}", {"v": TREE_VERSION, "variant": VARIANTS[name], "own": OWNERS, "dev": DEVICES}, build)


def open_fs(path: Path):
    return open_filesystem(FileSource(path))


def table_rows(table) -> dict[str, tuple]:
    rows = {}
    for i in range(len(table)):
        rows[table.path(i)] = (int(table.mode[i]), int(table.uid[i]), int(table.gid[i]), int(table.size[i]),
                               int(table.inode[i]), int(table.nlink[i]))
    assert len(rows) == len(table), "a path listed twice"
    return rows


def find_listing(src: Path) -> dict[str, tuple]:
    """path -> (type, permissions, uid, gid, size) from GNU find on the source tree, with the owners
    the protofile gives (0:0 unless OWNERS says otherwise)."""
    out = subprocess.run(["find", str(src), "-mindepth", "1", "-printf", "%P\\0%#m\\0%y\\0%s\\0"],
                         capture_output=True, check=True).stdout
    fields = out.split(b"\0")[:-1]
    rows = {}
    for i in range(0, len(fields), 4):
        rel, mode, kind, size = fields[i:i + 4]
        rel = rel.decode("utf-8", "surrogateescape")
        rows["/" + rel] = (kind.decode(), int(mode, 8), *OWNERS.get(rel, (0, 0)), int(size))
    for name, (kind, _major, _minor) in DEVICES.items():
        rows["/" + name] = (kind, 0o666, 0, 0, 0)
    return rows


def find_special(src: Path, prune: str | None = None) -> list[str]:
    args = ["(", "-path", str(src) + prune, "-prune", ")", "-o"] if prune else []
    out = subprocess.run(["find", str(src), *args, "-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")", "-print"],
                         capture_output=True, text=True, check=True).stdout
    return sorted("/" + line[len(str(src)):].lstrip("/") for line in out.splitlines())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param, build_image(request.param)


def test_variant_has_the_structures_it_is_for(variant):
    name, image = variant
    fs = open_fs(image)
    tables = fs._tables()
    tables.load()
    formats = set(tables.dir_rec["format"].tolist())
    assert {1, 2} <= formats                                    # short-form and extent-list directories
    assert (fs._fs.version == 4) == name.startswith("v4")
    if name == "v5-1k-blocks":
        assert tables.dirblk == 4096 and tables.bs == 1024
    if name.startswith("v5-dirblock"):
        assert tables.dirblk == int(VARIANTS[name][1].split("=")[1])
    if name == "v4-no-ftype":
        assert not tables.has_ftype
    if name == "v5":
        assert tables.sparse
    if name in ("v5", "v4", "v5-no-sparse", "v4-no-ftype"):
        assert 3 in formats, "the big directory should have a B+tree data fork"


def test_walk_table_equals_xfs_db(variant):
    _name, image = variant
    fs = open_fs(image)
    ours = table_rows(fs.walk_table("/"))
    src = source_tree()
    dirs = ["/"] + [p for p, row in find_listing(src).items() if row[0] == "d"]
    ref = xfs_db_listing(image, dirs)
    assert set(ours) == set(ref)
    for path, t in ref.items():
        assert ours[path] == (t["mode"], t["uid"], t["gid"], t["size"], t["inode"], t["nlinkv2"]), path
    assert not fs.warnings


def test_walk_table_equals_find_on_the_source(variant):
    _name, image = variant
    fs = open_fs(image)
    ours = table_rows(fs.walk_table("/"))
    ref = find_listing(source_tree())
    assert set(ours) == set(ref)
    kinds = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO, "c": stat.S_IFCHR, "b": stat.S_IFBLK}
    for path, (kind, perm, uid, gid, size) in ref.items():
        mode, o_uid, o_gid, o_size, _ino, _nlink = ours[path]
        assert (stat.S_IFMT(mode), stat.S_IMODE(mode), o_uid, o_gid) == (kinds[kind], perm, uid, gid), path
        if kind != "d":
            assert o_size == size, path


def test_find_special_equals_find(variant):
    _name, image = variant
    fs = open_fs(image)
    src = source_tree()
    assert [p for p, _ in fs.find_special("/")] == find_special(src)
    assert [p for p, _ in fs.find_special("/", exclude=(EXCLUDED,))] == find_special(src, EXCLUDED)
    assert [p for p, _ in fs.find_special("/usr")] == [p for p in find_special(src) if p.startswith("/usr/")]


def test_walk_table_equals_the_per_entry_walk(variant):
    _name, image = variant
    fs = open_fs(image)
    for path, exclude in (("/", ()), ("/srv", ("/srv/big", "/srv/deep/level00/level01")), ("/srv/big", ())):
        assert table_rows(fs.walk_table(path, exclude)) == table_rows(FileSystem.walk_table(fs, path, exclude))


# ---- damage ----------------------------------------------------------------------------------------
def test_directory_block_with_bad_magic_is_skipped(tmp_path):
    image = build_image("v5")
    fs = open_fs(image)
    tables = fs._tables()
    tables.load()
    # The first data block of the 200-entry directory: overwrite its magic.
    ino = fs.stat("/srv/block-dir").inode
    node = fs._fs.get_inode(ino)
    physical = next(p for p, _count in node.dataruns if p is not None)
    copy = tmp_path / "bad-magic.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    with open(copy, "r+b") as f:
        f.seek(physical * tables.bs)
        f.write(b"JUNK")
    fs = open_fs(copy)
    with deadline(30):
        rows = table_rows(fs.walk_table("/"))
    assert "/srv/block-dir" in rows and "/srv/big/e02999" in rows
    inside = [p for p in rows if p.startswith("/srv/block-dir/")]
    assert 0 < len(inside) < 200                      # that block's entries are gone, the next blocks' kept
    assert "/srv/block-dir/entry-0000-with-a-longish-name" not in inside
    assert any("magic" in w for w in fs.warnings)


def test_directory_loop_is_not_followed(tmp_path):
    """A short-form entry rewritten to point at an ancestor directory."""
    image = build_image("v5")
    fs = open_fs(image)
    target = fs.stat("/srv/tree").inode
    child = fs.stat("/srv/tree/a00/b00").inode
    tables = fs._tables()
    offset = int(tables._byte_offsets(np.asarray([fs.stat("/srv/tree/a00").inode]))[0])
    copy = tmp_path / "loop.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    with open(copy, "r+b") as f:
        f.seek(offset)
        raw = bytearray(f.read(tables.isz))
        # short-form entries use 4-byte inode numbers here: replace b00's with /srv/tree's
        at = raw.find(child.to_bytes(4, "big"), 176)
        assert at > 0
        raw[at:at + 4] = target.to_bytes(4, "big")
        if fs._fs.version == 5:
            raw[100:104] = b"\0\0\0\0"       # (the CRC: we do not check it)
        f.seek(offset)
        f.write(raw)
    fs = open_fs(copy)
    with deadline(30):
        rows = table_rows(fs.walk_table("/"))
        special = [p for p, _ in fs.find_special("/")]
    assert "/srv/tree/a00/b00" in rows and not any(p.startswith("/srv/tree/a00/b00/") for p in rows)
    assert any("directory loop" in w for w in fs.warnings)
    assert special == find_special(source_tree())


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_is_bounded(seed, tmp_path):
    base = build_image("v5-1k-blocks")
    blocks = data_blocks(base, 1024, limit=64 << 20)
    copy = tmp_path / "damaged.img"
    corrupt_copy(base, copy, seed, flips=300, blocks=blocks, block=1024)
    with deadline(60):
        try:
            fs = open_fs(copy)
        except ImmutoolsError:
            return
        for call in (lambda: fs.walk_table("/"), lambda: fs.find_special("/"), lambda: fs.walk_table("/srv")):
            try:
                call()
            except ImmutoolsError:
                pass
