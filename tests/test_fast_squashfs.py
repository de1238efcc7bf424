"""Differential tests of the bulk squashfs walk (immutools/fs/squashfs_tables.py).

Images are made by the real ``mksquashfs`` from one source tree (tests/fast_walk_helpers.py) with
every compressor this mksquashfs has, ``-all-root`` and owners kept, fragments on and off,
uncompressed metadata, no export table, and xattrs dropped; as root the tree gives every one of
the 14 inode types (xattrs on links and special files make their extended forms, the 1500-entry
directory an extended directory with an index). ``walk_table`` must agree with:

* ``unsquashfs -lln`` (path, full mode, uid/gid, size; directory sizes too);
* the source tree (``os.lstat``: mode, uid/gid, size and link count of every non-directory);
* the per-entry walk over dissect.squashfs (every column, inode numbers and link counts included);

and ``find_special`` with ``find SRC -type f ( -perm -4000 -o -perm -2000 )``. Damaged copies end
with warnings or one of our errors, within seconds.
"""

from __future__ import annotations

import stat
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
    region_blocks,
    source_tree,
    table_rows,
    tree_rows,
)
from test_fs_dissect import squash_supports, unsquashfs_listing

pytestmark = pytest.mark.skipif(not (have("mksquashfs") and have("unsquashfs")), reason="squashfs-tools missing")

CODECS = ["gzip", "xz", "zstd", "lz4", "lzo"]
VARIANTS = {
    "default": (),
    "all-root": ("-all-root",),
    "no-fragments": ("-no-fragments",),
    "plain-metadata": ("-noI", "-noD", "-no-exports"),
    "no-xattrs": ("-no-xattrs", "-always-use-fragments"),
}


def build(codec: str, extra: tuple[str, ...]) -> Path:
    tree = source_tree()

    def make(out: Path) -> None:
        run(["mksquashfs", tree, out, "-noappend", "-quiet", "-no-progress", "-comp", codec, *extra])

    return cached(f"fastwalk-squashfs-{codec}", {"tree": str(tree), "extra": extra, "v": 1}, make, suffix=".sqsh")


@pytest.fixture(scope="module", params=[(c, "default") for c in CODECS] + [("zstd", v) for v in VARIANTS if v != "default"],
                ids=lambda p: f"{p[0]}-{p[1]}")
def image(request):
    codec, variant = request.param
    if not squash_supports(codec):
        pytest.skip(f"this mksquashfs cannot write {codec}")
    return codec, variant, build(codec, VARIANTS[variant])


def test_walk_table_matches_unsquashfs(image):
    _codec, _variant, path = image
    fs = open_image(path)
    table = fs.walk_table("/")
    assert_parents_first(table)
    ours = {p: (mode, uid, gid, size) for p, (mode, uid, gid, size, _n) in table_rows(table, dir_size=True).items()}
    theirs = {}
    for p, rec in unsquashfs_listing(path).items():
        theirs[p] = (int(rec["mode"], 8), rec["uid"], rec["gid"], rec.get("size", 0))
    assert ours == theirs
    assert fs.warnings == []


def test_walk_table_matches_source_tree(image):
    _codec, variant, path = image
    table = open_image(path).walk_table("/")
    assert table_rows(table) == tree_rows(source_tree(), all_root=variant == "all-root")
    wide = [i for i in range(len(table)) if table.path(i).startswith("/wide/")]
    assert len(wide) == WIDE_DIR_ENTRIES


def test_walk_table_matches_per_entry_walk(image):
    _codec, _variant, path = image
    fs = open_image(path)
    assert full_rows(fs.walk_table("/")) == full_rows(generic_table(fs, "/"))
    # a subtree, and excluded directories (listed, not descended)
    assert full_rows(fs.walk_table("/usr")) == full_rows(generic_table(fs, "/usr"))
    exclude = ("/wide", "/srv/shared", "/deep/d0/d1")
    assert full_rows(fs.walk_table("/", exclude)) == full_rows(generic_table(fs, "/", exclude))
    # through a symlink (/bin -> usr/bin), as the per-entry walk resolves it
    assert full_rows(fs.walk_table("/bin")) == full_rows(generic_table(fs, "/bin"))
    assert len(fs.walk_table("/tiny.txt")) == 0


def test_find_special_matches_find(image):
    _codec, _variant, path = image
    fs = open_image(path)
    tree = source_tree()
    found = fs.find_special("/")
    assert [p for p, _st in found] == find_special_reference(tree)
    for p, st in found:
        assert st.mode == (Path(tree, p.lstrip("/")).lstat().st_mode)
    assert [p for p, _ in fs.find_special("/", exclude=("/srv",))] == find_special_reference(tree, prune=("/srv",))
    setuid_only = [p for p, _ in fs.find_special("/", bits=stat.S_ISUID)]
    assert setuid_only == sorted(p for p in find_special_reference(tree)
                                 if Path(tree, p.lstrip("/")).lstat().st_mode & stat.S_ISUID)


def test_owners_need_root():
    if not IS_ROOT:
        pytest.skip("owners other than the caller need root to create")
    table = open_image(build("zstd", ())).walk_table("/")
    rows = table_rows(table)
    assert rows["/home/user/notes"][1:3] == (70000, 70001)
    assert stat.S_ISCHR(rows["/srv/null"][0]) and stat.S_ISSOCK(rows["/srv/socket"][0])


def test_depth_and_entry_limits():
    check_limits(build("zstd", ()))


# ---- damage ---------------------------------------------------------------------------------------

def _metadata_region(path: Path) -> tuple[int, int]:
    sb = path.read_bytes()[:96]
    inode_start, dir_start, frag_start = struct.unpack_from("<QQQ", sb, 64)
    return inode_start, min(frag_start, path.stat().st_size) - inode_start


def test_byte_flips_in_metadata_stay_bounded(tmp_path):
    for variant in ("default", "plain-metadata"):
        path = build("zstd", VARIANTS[variant])
        outcomes = damaged_walks(path, tmp_path, region_blocks(*_metadata_region(path)), range(6))
        # The flips land in the tables: most copies must show it (a warning or an error).
        assert sum(o != "no warning" for o in outcomes) >= 3, outcomes


def test_directory_loop_is_not_followed(tmp_path):
    """A directory entry patched to point at the root directory's inode: listed once, not descended."""
    src = tmp_path / "tree"
    (src / "a" / "inner").mkdir(parents=True)
    (src / "a" / "inner" / "file").write_text("x")
    (src / "b").mkdir()
    img = tmp_path / "loop.sqsh"
    run(["mksquashfs", src, img, "-noappend", "-quiet", "-no-progress", "-noI", "-noD", "-no-exports"])
    data = bytearray(img.read_bytes())
    root_ref = struct.unpack_from("<Q", data, 32)[0]
    dir_start = struct.unpack_from("<Q", data, 72)[0]
    # Root listing: header, then entries {offset, inode delta, type, size - 1, name}; "a" is a dir.
    needle = struct.pack("<HH", 1, 0) + b"a"
    at = data.index(needle, dir_start) - 4
    # A tree this small has one inode block: the entry's header and the root inode share it.
    assert root_ref >> 16 == 0
    struct.pack_into("<H", data, at, root_ref & 0xFFFF)
    img.write_bytes(bytes(data))
    fs = open_image(img)
    table = fs.walk_table("/")
    names = sorted(table.path(i) for i in range(len(table)))
    assert names == ["/a", "/b"]
    assert any("loop" in w for w in fs.warnings)

