"""Differential tests of the bulk ext2/3/4 metadata reader (``immutools/fs/ext4_tables.py``).

Images are made with ``mke2fs -d`` from one source tree (hard links, setuid/setgid files, a setuid
file under a directory the walk excludes, a 2,500-entry directory turned into an htree by
``e2fsck -fyD``, a 5 GiB sparse file, uids/gids above 65535 set with ``debugfs sif``, deep nesting,
a fragmented directory with a depth-1 extent tree made with ``debugfs mkdir``), in the variants the
reader has to handle: 128- and 256-byte inodes, inline data, many flex groups with meta_bg and
64-bit descriptors, no group-descriptor checksums, ext3 and ext2 with 1 KiB blocks (block maps).

``walk_table`` must give exactly the (path, mode, uid, gid, size, inode, links) that ``debugfs -R
"ls -p DIR"`` lists for every directory, and the (path, type, mode, uid, gid, size, hard-link
groups) that ``find`` prints on the source tree; ``find_special`` must equal ``find SRC -type f
\\( -perm -4000 -o -perm -2000 \\)``. Then damaged copies: a directory loop, a bad record length, an
entry pointing past the inode count, an extent outside the filesystem, random byte flips -- bounded,
warned, never hanging.
"""

from __future__ import annotations

import inspect
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from immutools.errors import ImmutoolsError
from immutools.fs import open_filesystem
from immutools.fs.base import FileSystem
from immutools.image.source import FileSource
from tests.builders import cached, have, make_sample_tree, run
from tests.fs_helpers import corrupt_copy, data_blocks, deadline

pytestmark = pytest.mark.skipif(not (have("mke2fs") and have("debugfs") and have("e2fsck")), reason="needs e2fsprogs")

TREE_VERSION = 2
BIG_DIR_ENTRIES = 2500
# Owners set after mke2fs with debugfs (no root needed); uids/gids above 65535 use the high 16 bits.
OWNERS = {
    "srv/data/owned": (70000, 80000),
    "srv/data/user-file": (1000, 1000),
    "srv/data": (65536, 131072),
    "srv/big/entry-00007": (4294967294, 7),
}
FRAG_DIRS = 120          # child directories that fragment /frag into > 4 extents (1 KiB blocks)
EXCLUDED = "/excluded"


def make_tree(root: Path) -> None:
    make_sample_tree(root)
    srv = root / "srv"
    big = srv / "big"
    big.mkdir(parents=True)
    for i in range(BIG_DIR_ENTRIES):
        if i % 97 == 0:
            (big / f"entry-{i:05d}").mkdir()
            (big / f"entry-{i:05d}" / "inside").write_text(str(i))
        else:
            (big / f"entry-{i:05d}").write_text(str(i))
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
    (hidden / "plain").write_text("not special\n")
    links = srv / "links"
    links.mkdir()
    os.link(root / "usr" / "bin" / "su", links / "su-again")       # a setuid file under two names
    shared = srv / "shared"
    shared.mkdir()
    shared.chmod(0o2775)                                           # setgid directory: not a file
    (shared / "sgid-and-suid").write_bytes(b"\x7fELF both\n")
    (shared / "sgid-and-suid").chmod(0o6755)
    (srv / "data").mkdir()
    (srv / "data" / "owned").write_text("owned\n")
    (srv / "data" / "user-file").write_text("user\n")
    with open(srv / "sparse.img", "wb") as f:
        f.truncate(5 << 30)                                        # i_size_high in use
    tree = srv / "tree"
    for a in range(25):
        for b in range(12):
            d = tree / f"a{a:02d}" / f"b{b:02d}"
            d.mkdir(parents=True)
            (d / "f").write_text("x")


def source_tree() -> Path:
    return cached("fastext-src", {"v": TREE_VERSION, "entries": BIG_DIR_ENTRIES},
                  lambda p: make_tree(p), suffix="")


VARIANTS = {
    "ext4": {"mkfs": ["-t", "ext4"], "htree": True},
    "ext4-128-inodes": {"mkfs": ["-t", "ext4", "-I", "128"], "htree": True},
    "ext4-inline": {"mkfs": ["-t", "ext4", "-O", "inline_data"]},
    "ext4-flex-meta-bg-64bit": {"mkfs": ["-t", "ext4", "-b", "1024", "-g", "1024", "-G", "4", "-N", "16384",
                                         "-O", "64bit,meta_bg,^resize_inode"], "htree": True},
    "ext4-nocsum": {"mkfs": ["-t", "ext4", "-O", "^metadata_csum,^uninit_bg"]},
    "ext4-1k-fragmented": {"mkfs": ["-t", "ext4", "-b", "1024"], "frag": True},
    "ext3-1k": {"mkfs": ["-t", "ext3", "-b", "1024"], "htree": True},
    "ext2": {"mkfs": ["-t", "ext2", "-I", "128"]},
}


def frag_commands() -> str:
    lines = ["mkdir /frag"]
    lines += [f"mkdir /frag/d{i:03d}-" + "x" * 200 for i in range(FRAG_DIRS)]
    return "\n".join(lines) + "\n"


def build_image(name: str) -> Path:
    spec = VARIANTS[name]
    src = source_tree()

    def build(path: Path) -> None:
        run(["mke2fs", "-q", "-F", "-E", "root_owner=0:0", *spec["mkfs"], "-d", src, path, "96M"])
        cmds = []
        for rel, (uid, gid) in OWNERS.items():
            cmds += [f"sif /{rel} uid {uid}", f"sif /{rel} gid {gid}"]
        script = path.with_name(path.name + ".cmds")
        script.write_text("\n".join(cmds) + "\n" + (frag_commands() if spec.get("frag") else ""))
        run(["debugfs", "-w", "-f", script, path])
        script.unlink()
        if spec.get("htree"):
            # e2fsck -D rebuilds directories, indexing the big one (hash tree).
            proc = subprocess.run(["e2fsck", "-fyD", str(path)], capture_output=True)
            assert proc.returncode in (0, 1), proc.stderr
        proc = subprocess.run(["e2fsck", "-fn", str(path)], capture_output=True)
        assert proc.returncode == 0, proc.stdout

    return cached(f"fastext-{name}", {"v": TREE_VERSION, "variant": spec}, build)


def open_fs(path: Path):
    return open_filesystem(FileSource(path))


# ---- references ------------------------------------------------------------------------------------
def debugfs_listing(image: Path) -> dict[str, tuple]:
    """path -> (mode, uid, gid, size or None for directories, inode) from ``debugfs ls -p`` of every
    directory, breadth first from the root."""
    out: dict[str, tuple] = {}
    frontier = ["/"]
    while frontier:
        script = "".join(f"ls -p {d}\n" for d in frontier)
        proc = subprocess.run(["debugfs", "-f", "-", str(image)], input=script.encode(), capture_output=True, check=True)
        current = None
        nxt = []
        for raw in proc.stdout.split(b"\n"):
            if raw.startswith(b"debugfs: ls -p "):
                current = raw[len(b"debugfs: ls -p "):].decode("utf-8", "surrogateescape")
                continue
            if not raw.startswith(b"/"):
                continue
            _, ino, mode, uid, gid, name, size, _ = raw.split(b"/")
            name = name.decode("utf-8", "surrogateescape")
            if name in (".", "..") or int(ino) == 0:
                continue            # (debugfs also prints the empty records of lost+found's blocks)
            path = ("" if current == "/" else current) + "/" + name
            mode = int(mode, 8)
            # debugfs prints ids with %d: 4294967294 comes out as -2
            out[path] = (mode, int(uid) & 0xFFFFFFFF, int(gid) & 0xFFFFFFFF, int(size) if size else None, int(ino))
            if stat.S_ISDIR(mode):
                nxt.append(path)
        frontier = nxt
    return out


def find_listing(src: Path, *args: str) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size, inode on the source) from GNU find on the source tree."""
    fmt = "%P\\0%#m\\0%y\\0%U\\0%G\\0%s\\0%i\\0"
    out = subprocess.run(["find", str(src), "-mindepth", "1", *args, "-printf", fmt], capture_output=True, check=True).stdout
    fields = out.split(b"\0")[:-1]
    rows = {}
    for i in range(0, len(fields), 7):
        rel, mode, kind, uid, gid, size, ino = fields[i:i + 7]
        rel = rel.decode("utf-8", "surrogateescape")
        uid, gid = OWNERS.get(rel, (int(uid), int(gid)))
        rows["/" + rel] = (kind.decode(), int(mode, 8), uid, gid, int(size), int(ino))
    return rows


def find_special(src: Path, prune: str | None = None) -> list[str]:
    args = ["(", "-path", str(src) + prune, "-prune", ")", "-o"] if prune else []
    out = subprocess.run(["find", str(src), *args, "-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")", "-print"],
                         capture_output=True, text=True, check=True).stdout
    return sorted("/" + line[len(str(src)):].lstrip("/") for line in out.splitlines())


def table_rows(table) -> dict[str, tuple]:
    rows = {}
    for i in range(len(table)):
        rows[table.path(i)] = (int(table.mode[i]), int(table.uid[i]), int(table.gid[i]), int(table.size[i]),
                               int(table.inode[i]), int(table.nlink[i]))
    assert len(rows) == len(table), "a path listed twice"
    return rows


# ---- the differential tests -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param, build_image(request.param)


def test_variant_has_the_structures_it_is_for(variant):
    """The images really hold what the variants claim (else the comparisons prove less)."""
    name, image = variant
    fs = open_fs(image)
    sb = fs._fs.sb
    if VARIANTS[name].get("htree"):
        assert b"Root node dump" in run(["debugfs", "-R", "htree_dump /srv/big", image]).stdout
    if "128" in name or name == "ext2":
        assert fs._inode_size == 128
    if name == "ext4-inline":
        tables = fs._tables()
        tables.load()
        assert any(tables.flags[tables.dir_pos] & 0x10000000), "no inline-data directory"
    if name == "ext4-flex-meta-bg-64bit":
        assert fs._fs.groups_count > 32 and sb.s_feature_incompat & 0x0090 == 0x0090
    if VARIANTS[name].get("frag"):
        depth = struct.unpack_from("<H", bytes(fs._get(fs.stat("/frag").inode).inode.i_block), 6)[0]
        assert depth >= 1, "the fragmented directory should need an extent index block"
    if name.startswith(("ext2", "ext3")):
        assert not fs._fs.sb.s_feature_incompat & 0x40   # block maps, no extents


def test_walk_table_equals_debugfs(variant):
    _name, image = variant
    fs = open_fs(image)
    ours = table_rows(fs.walk_table("/"))
    ref = debugfs_listing(image)
    assert set(ours) == set(ref)
    for path, (mode, uid, gid, size, ino) in ref.items():
        o = ours[path]
        assert (o[0], o[1], o[2], o[4]) == (mode, uid, gid, ino), path
        if size is not None:
            assert o[3] == size, path
    assert not fs.warnings


def test_walk_table_equals_find_on_the_source(variant):
    name, image = variant
    fs = open_fs(image)
    ours = table_rows(fs.walk_table("/"))
    ref = find_listing(source_tree())
    ours = {p: v for p, v in ours.items() if not p.startswith(("/lost+found", "/frag"))}
    assert set(ours) == set(ref)
    groups_ours: dict[int, set] = {}
    groups_ref: dict[int, set] = {}
    for path, (kind, perm, uid, gid, size, src_ino) in ref.items():
        mode, o_uid, o_gid, o_size, o_ino, _nlink = ours[path]
        assert stat.S_IMODE(mode) == perm and (o_uid, o_gid) == (uid, gid), path
        assert {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO}[kind] == stat.S_IFMT(mode)
        if kind != "d":
            assert o_size == size, path
        groups_ours.setdefault(o_ino, set()).add(path)
        groups_ref.setdefault(src_ino, set()).add(path)
    # Hard links: the same groups of names share an inode on both sides.
    assert sorted(map(sorted, groups_ours.values())) == sorted(map(sorted, groups_ref.values()))
    assert ours["/srv/sparse.img"][3] == 5 << 30


def test_find_special_equals_find(variant):
    _name, image = variant
    fs = open_fs(image)
    src = source_tree()
    assert [p for p, _ in fs.find_special("/")] == find_special(src)
    assert [p for p, _ in fs.find_special("/", exclude=(EXCLUDED,))] == find_special(src, EXCLUDED)
    hits = dict(fs.find_special("/srv"))
    assert sorted(hits) == [p for p in find_special(src) if p.startswith("/srv/")]
    st = hits["/srv/links/su-again"]
    assert st.is_setuid and st.nlink == 2 and st.perm == 0o4755


def test_walk_table_equals_the_per_entry_walk(variant):
    """The bulk reader and the per-entry reader (dissect-based) agree, also below a subdirectory
    and with exclusions."""
    _name, image = variant
    fs = open_fs(image)
    for path, exclude in (("/", ()), ("/srv", ("/srv/big", "/srv/deep/level00/level01")), ("/usr/bin", ())):
        assert table_rows(fs.walk_table(path, exclude)) == table_rows(FileSystem.walk_table(fs, path, exclude))
    bulk = fs.find_special("/", exclude=(EXCLUDED,))
    assert [(p, s.mode, s.uid, s.gid, s.inode) for p, s in bulk] == \
        [(p, s.mode, s.uid, s.gid, s.inode) for p, s in FileSystem.find_special(fs, "/", exclude=(EXCLUDED,))]


def test_depth_bound_warns_and_stops(variant):
    from immutools.limits import Limits

    _name, image = variant
    fs = open_filesystem(FileSource(image), limits=Limits(max_walk_depth=10))
    rows = table_rows(fs.walk_table("/"))
    assert "/srv/deep/level00/level01/level02/level03/level04/level05/level06/level07" in rows
    assert not any(p.count("/") > 11 for p in rows)
    assert any("deeper than 10 levels" in w for w in fs.warnings)


# ---- damage ----------------------------------------------------------------------------------------
def damaged(name: str, commands: list[str] | None = None, patch=None) -> Path:
    """A copy of the ext4 variant image, changed with debugfs commands and/or ``patch(path, fs)``."""
    base = build_image("ext4")

    def build(path: Path) -> None:
        subprocess.run(["cp", "--sparse=always", str(base), str(path)], check=True)
        if commands:
            script = path.with_name(path.name + ".cmds")
            script.write_text("\n".join(commands) + "\n")
            run(["debugfs", "-w", "-f", script, path])
            script.unlink()
        if patch:
            patch(path)

    recipe = {"v": TREE_VERSION, "commands": commands, "patch": inspect.getsource(patch) if patch else None}
    return cached(f"fastext-damaged-{name}", recipe, build)


def dir_block_offset(image: Path, path: str) -> int:
    fs = open_fs(image)
    block = int(run(["debugfs", "-R", f"bmap {path} 0", image]).stdout.split()[0])
    return block * fs._fs.block_size


def test_directory_loop_is_not_followed():
    image = damaged("loop", ["ln /srv/deep/level00 /srv/deep/level00/level01/back-up"])
    fs = open_fs(image)
    with deadline(30):
        rows = table_rows(fs.walk_table("/"))
        special = [p for p, _ in fs.find_special("/")]
    assert "/srv/deep/level00/level01/back-up" in rows
    assert not any("/back-up/" in p for p in rows)
    assert any("directory loop" in w for w in fs.warnings)
    assert special == find_special(source_tree())


def _bad_rec_len(path: Path) -> None:
    off = dir_block_offset(path, "/srv/tree/a00")          # one linear block: ., .., b00 ... b11
    with open(path, "r+b") as f:
        f.seek(off)
        block = f.read(64)
        first_len = struct.unpack_from("<H", block, 4)[0]                  # '.'
        second = first_len
        second_len = struct.unpack_from("<H", block, second + 4)[0]       # '..'
        third = second + second_len
        f.seek(off + third + 4)
        f.write(struct.pack("<H", 5))                                     # not a multiple of 4


def test_bad_record_length_skips_the_rest_of_that_block():
    image = damaged("reclen", patch=_bad_rec_len)
    fs = open_fs(image)
    with deadline(30):
        rows = table_rows(fs.walk_table("/"))
    assert any("bad record length" in w for w in fs.warnings)
    assert "/usr/bin/su" in rows and "/srv/big/entry-02499" in rows        # the rest is intact
    assert "/srv/tree/a01/b11/f" in rows
    assert not any(p.startswith("/srv/tree/a00/") for p in rows)          # its first entry was the bad one


def _inode_past_count(path: Path) -> None:
    off = dir_block_offset(path, "/srv/data")
    with open(path, "r+b") as f:
        f.seek(off)
        block = bytearray(f.read(1024))
        pos = 0
        while pos < len(block):
            ino, rec_len, name_len = struct.unpack_from("<IHB", block, pos)
            if bytes(block[pos + 8: pos + 8 + name_len]) == b"owned":
                f.seek(off + pos)
                f.write(struct.pack("<I", 0xFFFFFFF0))
                return
            pos += rec_len
    raise AssertionError("entry not found")


def test_entry_past_the_inode_count_is_skipped():
    image = damaged("inode-range", patch=_inode_past_count)
    fs = open_fs(image)
    rows = table_rows(fs.walk_table("/"))
    assert "/srv/data/owned" not in rows and "/srv/data/user-file" in rows
    assert any("beyond" in w for w in fs.warnings)


def test_extent_outside_the_filesystem_is_skipped():
    # i_block word 5 is the first extent's ee_start_lo (fs/ext4/ext4_extents.h) of a one-block
    # directory; of a directory with an index node it is the index's ei_leaf_lo.
    image = damaged("extent-range", ["sif /srv/tree/a02 block[5] 0x7ffffff0", "sif /var/lib/many block[5] 0x7ffffff0"])
    fs = open_fs(image)
    rows = table_rows(fs.walk_table("/"))
    for d in ("/srv/tree/a02", "/var/lib/many"):
        assert d in rows and not any(p.startswith(d + "/") for p in rows)
    assert any("a02" not in w and "outside the filesystem" in w for w in fs.warnings)
    assert any("extent index points to block" in w for w in fs.warnings)
    assert "/srv/tree/a03/b00/f" in rows


def test_free_inode_referenced_is_read_and_warned():
    image = damaged("free-inode", ["freei /srv/data/owned"])
    fs = open_fs(image)
    rows = table_rows(fs.walk_table("/"))
    assert "/srv/data/owned" in rows
    assert any("marks free" in w for w in fs.warnings)


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_is_bounded(seed, tmp_path):
    """Byte flips over the metadata of the image (inode tables, directories, descriptors): our
    errors or a result, within seconds; never another exception."""
    base = build_image("ext4-flex-meta-bg-64bit")
    blocks = data_blocks(base, 1024, limit=48 << 20)
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


# ---- hostile sizes and `immutools cat` ---------------------------------------------------------------
def hostile_size_image() -> Path:
    """A bare ext4 with /huge claiming 0x7FFFFFFFFFFFFFFF bytes, /sparse claiming 100 GiB (a size
    the block map can hold: holes), /hole a real 1 MiB sparse file and /small with 6 bytes."""

    def build(path: Path) -> None:
        src = path.with_name(path.name + ".src")
        src.mkdir()
        for name in ("huge", "sparse", "small"):
            (src / name).write_text("hello\n")
        with open(src / "hole", "wb") as f:
            f.truncate(1 << 20)
        try:
            run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", src, path, "8M"])
        finally:
            for p in src.iterdir():
                p.unlink()
            src.rmdir()
        run(["debugfs", "-w", "-R", "sif /huge size 0x7FFFFFFFFFFFFFFF", path])
        run(["debugfs", "-w", "-R", f"sif /sparse size {100 << 30}", path])

    return cached("fastext-hostile-size", {"v": 1}, build)


def immutools_cat(*args: str) -> subprocess.CompletedProcess:
    import sys

    from tests.builders import REPO

    return subprocess.run([sys.executable, "-m", "immutools", "cat", *args], capture_output=True, cwd=REPO, timeout=60)


def test_size_beyond_the_block_map_is_refused():
    from immutools.errors import CorruptDataError

    fs = open_fs(hostile_size_image())
    assert fs.stat("/huge").size == 0x7FFFFFFFFFFFFFFF            # listed as it is on disk
    limit = fs.max_file_size(extents=True)
    assert limit == ((1 << 32) - 1) * 1024                          # 2^32 blocks of 1 KiB (no huge_file cap lower)
    with pytest.raises(CorruptDataError, match="beyond the largest this filesystem can address"):
        fs.read("/huge", 0, 16)
    assert fs.read("/sparse", 50 << 30, 4096) == bytes(4096)       # a hole inside a plausible size: zeros
    assert fs.read("/hole") == bytes(1 << 20)
    assert fs.read("/small") == b"hello\n"


def test_cat_refuses_a_hostile_size_and_honours_max_bytes():
    image = str(hostile_size_image())
    with deadline(120):
        huge = immutools_cat(image, "0:/huge", "--max-bytes", str(1 << 63))     # no output limit in the way
        huge_default = immutools_cat(image, "0:/huge")
        sparse = immutools_cat(image, "0:/sparse")
        small = immutools_cat(image, "0:/small")
        capped = immutools_cat(image, "0:/small", "--max-bytes", "5")
        exact = immutools_cat(image, "0:/small", "--max-bytes", "6")
    assert huge.returncode == 3 and huge.stdout == b""
    assert len(huge.stderr.decode().strip().splitlines()) == 1 and "address" in huge.stderr.decode()
    assert huge_default.returncode == 5 and huge_default.stdout == b""
    assert sparse.returncode == 5 and sparse.stdout == b"" and b"--max-bytes" in sparse.stderr
    assert small.returncode == 0 and small.stdout == b"hello\n"
    assert capped.returncode == 5 and capped.stdout == b""
    assert exact.returncode == 0 and exact.stdout == b"hello\n"


# ---- composition: OsTree joins each mount's bulk answer --------------------------------------------
def _composed(tree, path="/", exclude=()):
    """(walk_table rows, find_special paths) and the same from the per-entry composed walk."""
    slow = {p: st for p, st in tree.walk_metadata(path, prune=lambda p: p in exclude)}
    table = tree.walk_table(path, exclude)
    fast = {table.path(i): table.stat(i) for i in range(len(table))}
    assert len(fast) == len(table)

    def key(st):
        return (st.mode, st.uid, st.gid, max(0, st.size), st.nlink or 0)

    special_slow = sorted(p for p, st in slow.items() if st.is_file and (st.is_setuid or st.is_setgid))
    return ({p: key(s) for p, s in fast.items()}, [p for p, _ in tree.find_special(path, exclude)],
            {p: key(s) for p, s in slow.items()}, special_slow)


COMPOSITIONS = {
    # mounts stacked and nested, a mount point inside a listed directory, virtual parents
    "nested": [("/", "ext4", "/"), ("/usr", "ext2", "/usr"), ("/srv/big/entry-00000", "xfs", "/srv"),
               ("/new/deep/mnt", "xfs", "/usr")],
    "no-root-mount": [("/a/b", "ext4", "/srv/tree"), ("/a/c", "xfs", "/usr")],
    "file-under-mount": [("/", "ext4", "/"), ("/tiny.txt/x", "ext2", "/etc")],
    "below-a-symlink": [("/", "ext4", "/"), ("/bin/x", "ext2", "/")],
    "bind-and-stacked": [("/", "ext4", "/"), ("/mnt2", "ext4", "/srv"), ("/usr", "ext2", "/"), ("/usr", "xfs", "/")],
    "same-directory-twice": [("/", "ext4", "/"), ("/m1", "ext2", "/usr"), ("/m0", "ext2", "/usr")],
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_composed_walks_equal_the_per_entry_composed_walk(name):
    from immutools.system.rootview import OsTree
    from tests.test_fast_xfs import build_image as build_xfs

    filesystems = {"ext4": open_fs(build_image("ext4")), "ext2": open_fs(build_image("ext2")),
                   "xfs": open_filesystem(FileSource(build_xfs("v5")))}
    tree = OsTree()
    for target, fs, subdir in COMPOSITIONS[name]:
        tree.mount(target, filesystems[fs], subdir=subdir)
    for path, exclude in (("/", ()), ("/", ("/srv/deep", "/usr/bin", EXCLUDED, "/mnt2")), ("/srv", ())):
        if not tree.exists(path):
            continue
        fast, special, slow, special_slow = _composed(tree, path, exclude)
        assert fast == slow, (path, exclude, sorted(set(fast) ^ set(slow))[:5])
        assert special == special_slow
    if name == "nested":
        special = [p for p, _ in tree.find_special("/")]
        assert "/usr/bin/su" in special and "/srv/links/su-again" in special           # ext4 /, ext2 /usr
        assert any(p.startswith("/srv/big/entry-00000/deep/") for p in special)       # XFS below a file's dir
