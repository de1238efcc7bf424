"""Differential tests of the bulk btrfs walk (immutools/fs/btrfs_tables.py).

Images are made by the real ``mkfs.btrfs --rootdir`` (btrfs-progs 6.2 here: no ``--subvol``) from
one source tree (tests/fast_walk_helpers.py) with the default 16 KiB nodes, 4 KiB and 64 KiB nodes,
and ``--mixed``; subvolumes (nested, a snapshot, a default subvolume other than the top level) come
from the kernel-written image of tests/test_fs_dissect.py (needs root and a btrfs driver).
``walk_table`` must agree with:

* the source tree (``os.lstat``: full mode, uid/gid, size and link count of every non-directory);
* ``btrfs inspect-internal dump-tree -t fs`` (every INODE_ITEM: mode, uid, gid, size, link count);
* the per-entry walk over dissect.btrfs (every column), also across subvolumes;

and ``find_special`` (INODE_ITEMs first, INODE_REF names for the hits) with ``find SRC -type f (
-perm -4000 -o -perm -2000 )`` and with the per-entry answer across subvolumes. Damaged copies end
with warnings or one of our errors, within seconds.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from builders import cached, have, run
from fast_walk_helpers import (
    check_limits,
    IS_ROOT,
    WIDE_DIR_ENTRIES,
    assert_parents_first,
    damaged_walks,
    find_special_reference,
    full_rows,
    generic_table,
    open_image,
    source_tree,
    table_rows,
    tree_rows,
)
from fs_helpers import data_blocks, kernel_supports
from immutools.fs.base import FileSystem

pytestmark = pytest.mark.skipif(not (have("mkfs.btrfs") and have("btrfs")), reason="btrfs-progs missing")

VARIANTS = {
    "default": [],
    "node4k": ["--nodesize", "4096"],
    "node64k": ["--nodesize", "65536"],
    "mixed": ["--mixed"],
}


def build(variant: str) -> Path:
    tree = source_tree()

    def make(out: Path) -> None:
        with open(out, "wb") as f:
            f.truncate(256 << 20)
        run(["mkfs.btrfs", "-q", "-f", *VARIANTS[variant], "--rootdir", tree, out])

    return cached(f"fastwalk-btrfs-{variant}", {"tree": str(tree), "args": VARIANTS[variant], "v": 1}, make,
                  suffix=".btrfs")


@pytest.fixture(scope="module", params=list(VARIANTS))
def image(request):
    return request.param, build(request.param)


def test_walk_table_matches_source_tree(image):
    _variant, path = image
    fs = open_image(path)
    table = fs.walk_table("/")
    assert_parents_first(table)
    assert table_rows(table) == tree_rows(source_tree())
    assert sum(table.path(i).startswith("/wide/") for i in range(len(table))) == WIDE_DIR_ENTRIES
    assert fs.warnings == []


def dump_tree_inodes(path: Path) -> dict[int, tuple]:
    """objectid -> (mode, uid, gid, size, nlink) of every INODE_ITEM in the FS tree."""
    text = run(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", path]).stdout.decode()
    pattern = re.compile(r"key \((\d+) INODE_ITEM 0\) itemoff \d+ itemsize \d+\n"
                         r"\s+generation \d+ transid \d+ size (\d+) nbytes \d+\n"
                         r"\s+block group \d+ mode (\d+) links (\d+) uid (\d+) gid (\d+)")
    return {int(m[1]): (int(m[3], 8), int(m[5]), int(m[6]), int(m[2]), int(m[4])) for m in pattern.finditer(text)}


def test_walk_table_matches_dump_tree(image):
    _variant, path = image
    table = open_image(path).walk_table("/")
    ours = {int(table.inode[i]): (int(table.mode[i]), int(table.uid[i]), int(table.gid[i]), int(table.size[i]),
                                  int(table.nlink[i])) for i in range(len(table))}
    theirs = dump_tree_inodes(path)
    theirs.pop(256)  # the root directory has no row
    assert ours == theirs


def test_walk_table_matches_per_entry_walk(image):
    _variant, path = image
    fs = open_image(path)
    assert full_rows(fs.walk_table("/")) == full_rows(generic_table(fs, "/"))
    assert full_rows(fs.walk_table("/usr")) == full_rows(generic_table(fs, "/usr"))
    exclude = ("/wide", "/srv/shared", "/deep/d0/d1")
    assert full_rows(fs.walk_table("/", exclude)) == full_rows(generic_table(fs, "/", exclude))
    assert full_rows(fs.walk_table("/bin")) == full_rows(generic_table(fs, "/bin"))
    assert len(fs.walk_table("/tiny.txt")) == 0


def test_find_special_matches_find(image):
    _variant, path = image
    fs = open_image(path)
    tree = source_tree()
    found = fs.find_special("/")
    assert [p for p, _st in found] == find_special_reference(tree)
    for p, st in found:
        assert st.mode == Path(tree, p.lstrip("/")).lstat().st_mode
    assert [p for p, _ in fs.find_special("/", exclude=("/srv",))] == find_special_reference(tree, prune=("/srv",))
    # below a subdirectory (the walk's answer)
    assert [p for p, _ in fs.find_special("/usr")] == [p for p in find_special_reference(tree) if p.startswith("/usr/")]


@pytest.mark.slow
def test_subvolumes_match_per_entry_walk():
    if not (IS_ROOT and kernel_supports("btrfs")):
        pytest.skip("the subvolume image is written by the kernel: needs root and a btrfs driver")
    from test_fs_dissect import build_btrfs_subvolumes

    fs = open_image(build_btrfs_subvolumes())
    top = fs.open_subvolume_path("/")
    for view in (fs, top):
        table = view.walk_table("/")
        assert_parents_first(table)
        assert full_rows(table) == full_rows(generic_table(view, "/"))
        assert view.find_special("/") == FileSystem.find_special(view, "/")
        assert view.find_special("/", exclude=("/nested",)) == FileSystem.find_special(view, "/", exclude=("/nested",))
    # The top level shows the subvolumes, nested ones and the snapshot's empty placeholder.
    paths = {top.walk_table("/").path(i) for i in range(len(top.walk_table("/")))}
    assert {"/zstd/nested/inner.txt", "/zlib/nested/inner.txt", "/snap-ro/usr/bin/su", "/snap-ro/nested"} <= paths
    specials = [p for p, _ in top.find_special("/")]
    assert "/zstd/usr/bin/su" in specials and "/snap-ro/usr/bin/su" in specials


def test_depth_and_entry_limits():
    check_limits(build("default"))


# ---- damage ---------------------------------------------------------------------------------------

def _tree_node_blocks(path: Path) -> list[int]:
    """512-byte blocks of every tree node (a header carrying the filesystem's fsid at byte 32)."""
    blocks = []
    with open(path, "rb") as f:
        fsid = os.pread(f.fileno(), 16, 0x10000 + 0x20)
        for off in data_blocks(path):
            if off != 0x10000 and os.pread(f.fileno(), 16, off + 32) == fsid:
                blocks.extend(range(off, off + 4096, 512))
    return blocks


def test_byte_flips_in_tree_nodes_stay_bounded(tmp_path):
    path = build("default")
    outcomes = damaged_walks(path, tmp_path, _tree_node_blocks(path), range(6), flips=60)
    assert sum(o != "no warning" for o in outcomes) >= 3, outcomes


def test_directory_loop_is_not_followed(tmp_path):
    """Directory entries of "a" patched to point at the root directory (inode 256): listed once,
    not descended."""
    src = tmp_path / "tree"
    (src / "a" / "inner").mkdir(parents=True)
    (src / "a" / "inner" / "file").write_text("x")
    (src / "b").mkdir()
    img = tmp_path / "loop.btrfs"
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    run(["mkfs.btrfs", "-q", "-f", "--rootdir", src, img])
    data = bytearray(img.read_bytes())
    # btrfs_dir_item of "a": location key (objectid, type, offset), transid, data_len 0,
    # name_len 1, type BTRFS_FT_DIR (2), the name. Both the DIR_ITEM and the DIR_INDEX copy (and
    # their DUP mirrors) are patched.
    needle = struct.pack("<HHB", 0, 1, 2) + b"a"
    hits = [m.start() for m in re.finditer(re.escape(needle), data)]
    assert hits
    for at in hits:
        struct.pack_into("<Q", data, at - 25, 256)
    img.write_bytes(bytes(data))
    fs = open_image(img)
    table = fs.walk_table("/")
    assert sorted(table.path(i) for i in range(len(table))) == ["/a", "/b"]
    assert any("loop" in w for w in fs.warnings)


def test_find_special_does_not_trust_lying_back_references(tmp_path):
    """The INODE_REF of /usr/bin/su renamed to "sx": the name it gives resolves to nothing, so the
    answer comes from the directory entries (the full walk), and still names /usr/bin/su."""
    src = tmp_path / "tree"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "su").write_bytes(b"\x7fELF su\n")
    (src / "usr" / "bin" / "su").chmod(0o4755)
    (src / "usr" / "bin" / "wall").write_bytes(b"\x7fELF wall\n")
    (src / "usr" / "bin" / "wall").chmod(0o2755)
    img = tmp_path / "lying.btrfs"
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    run(["mkfs.btrfs", "-q", "-f", "--rootdir", src, img])
    assert [p for p, _ in open_image(img).find_special("/")] == ["/usr/bin/su", "/usr/bin/wall"]
    data = bytearray(img.read_bytes())
    hits = [m.start() for m in re.finditer(re.escape(struct.pack("<H", 2) + b"su"), data)]
    assert hits  # the INODE_REF (and its DUP mirror): name_len then the name, nothing between
    for at in hits:
        data[at + 3] = ord("x")
    img.write_bytes(bytes(data))
    fs = open_image(img)
    assert fs._tables().find_special(fs._root_ref.node.subvolume.objectid, (), None) is None
    assert [p for p, _ in fs.find_special("/")] == find_special_reference(src) == ["/usr/bin/su", "/usr/bin/wall"]
