"""Differential tests of the bulk EROFS walk (immutools/fs/erofs_tables.py).

Images are made by the real ``mkfs.erofs`` (erofs-utils 1.5 here) from one source tree
(tests/fast_walk_helpers.py) in the layouts that matter for metadata: inline tails and plain
blocks (multi-block directories), LZ4 and LZ4HC with and without ztailpacking, legacy
compression, chunked files, forced extended inodes, ``--all-root`` and xattrs off (``-x -1``) or on
(compact inodes with an xattr area). ``walk_table`` must agree with:

* the source tree (``os.lstat``: full mode, uid/gid, size and link count of every non-directory);
* ``dump.erofs -S`` (entries per file type, total size of regular files) and ``dump.erofs --path``
  (nid, link count, owner, size, permission bits) for a sample of entries;
* the per-entry walk (every column, nids and link counts included);

and ``find_special`` with ``find SRC -type f ( -perm -4000 -o -perm -2000 )``. Damaged copies end
with warnings or one of our errors, within seconds.
"""

from __future__ import annotations

import re
import stat
from collections import Counter
from pathlib import Path

import pytest

from builders import SOURCE_DATE_EPOCH, cached, have, run
from fast_walk_helpers import (
    check_limits,
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

pytestmark = pytest.mark.skipif(not (have("mkfs.erofs") and have("dump.erofs")), reason="erofs-utils missing")

T = str(SOURCE_DATE_EPOCH)
VARIANTS = {
    "plain": ["-T", T],
    "noinline": ["-T", T, "-Enoinline_data"],
    "lz4": ["-T", T, "-zlz4"],
    "lz4hc": ["-T", T, "-zlz4hc"],
    "ztailpacking": ["-T", T, "-zlz4hc", "-Eztailpacking"],
    "legacy": ["-T", T, "-zlz4", "-Elegacy-compress"],
    "chunk": ["-T", T, "--chunksize=8192"],
    "extended": ["-T", T, "-zlz4hc", "-Eforce-inode-extended"],
    "all-root": ["-T", T, "-zlz4hc", "--all-root"],
    "no-xattrs": ["-T", T, "-x", "-1"],
}
DUMP_PATHS = ("/usr/bin/su", "/srv/both-bits-link", "/srv/shared", "/wide", "/home/user/notes", "/hardlink.txt",
              "/srv/sparse", "/fifo", "/deep/d0/d1/d2")


def build(variant: str) -> Path:
    tree = source_tree()

    def make(out: Path) -> None:
        run(["mkfs.erofs", "--quiet", *VARIANTS[variant], out, tree])

    return cached(f"fastwalk-erofs-{variant}", {"tree": str(tree), "args": VARIANTS[variant], "v": 1}, make,
                  suffix=".erofs")


@pytest.fixture(scope="module", params=list(VARIANTS))
def image(request):
    return request.param, build(request.param)


def test_walk_table_matches_source_tree(image):
    variant, path = image
    fs = open_image(path)
    table = fs.walk_table("/")
    assert_parents_first(table)
    assert table_rows(table) == tree_rows(source_tree(), all_root=variant == "all-root")
    assert sum(table.path(i).startswith("/wide/") for i in range(len(table))) == WIDE_DIR_ENTRIES
    assert fs.warnings == []


def _dump_stats(path: Path) -> dict[str, int]:
    text = run(["dump.erofs", "-S", path]).stdout.decode()
    out = {k: int(v) for k, v in re.findall(r"Filesystem (\w[\w ]*?) (?:file )?count:\s+(\d+)", text)}
    out["total original size"] = int(re.search(r"total original file size:\s+(\d+)", text).group(1))
    return out


def test_walk_table_matches_dump_erofs(image):
    _variant, path = image
    fs = open_image(path)
    table = fs.walk_table("/")
    kinds = Counter(stat.S_IFMT(int(m)) for m in table.mode)
    stats = _dump_stats(path)
    # dump.erofs counts the root directory too, and every directory entry (hard links twice).
    assert stats["total"] == len(table) + 1
    assert stats["directory"] == kinds[stat.S_IFDIR] + 1
    assert (stats["regular"], stats["symlink"], stats["char dev"], stats["block dev"], stats["FIFO"], stats["SOCK"]) == (
        kinds[stat.S_IFREG], kinds[stat.S_IFLNK], kinds[stat.S_IFCHR], kinds[stat.S_IFBLK], kinds[stat.S_IFIFO],
        kinds[stat.S_IFSOCK])
    regular = [i for i in range(len(table)) if stat.S_ISREG(int(table.mode[i]))]
    assert stats["total original size"] == sum(int(table.size[i]) for i in regular)
    rows = {table.path(i): i for i in range(len(table))}
    for p in DUMP_PATHS:
        text = run(["dump.erofs", f"--path={p}", path]).stdout.decode()
        ref = {k: int(re.search(rf"{k}: (\d+)", text).group(1)) for k in ("NID", "Links", "Uid", "Gid", "Size")}
        perm = int(re.search(r"Access: (\d+)/", text).group(1), 8)
        i = rows[p]
        ours = {"NID": int(table.inode[i]), "Links": int(table.nlink[i]), "Uid": int(table.uid[i]),
                "Gid": int(table.gid[i]), "Size": int(table.size[i])}
        assert ours == ref, p
        assert int(table.mode[i]) & 0o777 == perm, p


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


def test_depth_and_entry_limits():
    check_limits(build("lz4hc"))


# ---- damage ---------------------------------------------------------------------------------------

def _inode_blocks(path: Path) -> list[int]:
    """The 512-byte blocks holding the image's inodes (and the inline directories after them)."""
    fs = open_image(path)
    table = fs.walk_table("/")
    positions = {fs.meta_base + int(n) * 32 for n in table.inode} | {fs.meta_base + fs.root_nid * 32}
    return sorted({p - p % 512 for p in positions})


@pytest.mark.parametrize("variant", ["plain", "lz4hc"])
def test_byte_flips_in_inodes_stay_bounded(variant, tmp_path):
    path = build(variant)
    outcomes = damaged_walks(path, tmp_path, _inode_blocks(path), range(6), flips=60)
    assert sum(o != "no warning" for o in outcomes) >= 3, outcomes


def test_directory_loop_is_not_followed(tmp_path):
    """A root directory entry patched to point at the root inode: listed once, not descended."""
    src = tmp_path / "tree"
    (src / "a" / "inner").mkdir(parents=True)
    (src / "a" / "inner" / "file").write_text("x")
    (src / "b").mkdir()
    img = tmp_path / "loop.erofs"
    run(["mkfs.erofs", "--quiet", "-T", T, img, src])
    fs = open_image(img)
    root = fs._inode(fs.root_nid)
    assert root.datalayout == 2 and root.size < fs.block_size  # FLAT_INLINE: dirents right after the inode
    entries = fs._dir_block(root, 0)
    index = [name for name, _nid, _t in entries].index(b"a")
    data = bytearray(img.read_bytes())
    data[root.meta_end + 12 * index: root.meta_end + 12 * index + 8] = fs.root_nid.to_bytes(8, "little")
    img.write_bytes(bytes(data))
    fs = open_image(img)
    table = fs.walk_table("/")
    assert sorted(table.path(i) for i in range(len(table))) == ["/a", "/b"]
    assert any("loop" in w for w in fs.warnings)
