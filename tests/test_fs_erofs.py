"""Differential tests for our EROFS reader (immutools/fs/erofs.py).

Images are built with the real ``mkfs.erofs`` (erofs-utils 1.5, Debian 12) from
``builders.make_sample_tree`` plus xattrs (``setfattr``), a file capability (``setcap``), a socket,
device nodes (as root) and files of assorted sizes, in every layout 1.5 can write. Each image is
compared against:

* ``fsck.erofs --extract`` (erofs-utils' own decoder): the file list, types, sizes, permission bits,
  uid/gid (as root), mtimes, symlink targets, device numbers and every file's sha256;
* ``dump.erofs`` for the bits extraction loses (setuid/setgid modes, link counts);
* the Linux kernel through a read-only loop mount (root only): full modes, nlink, inode numbers,
  nanosecond mtimes, rdev, sizes, contents and all xattrs;
* the source tree for the xattrs we set.

Features 1.5 cannot write (fragments, chunk holes, long xattr prefixes, other algorithms, unknown
incompat bits) are tested on hand-patched images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from builders import ENV, SAMPLE_RECIPE_VERSION, SOURCE_DATE_EPOCH, cached, have, make_sample_tree, run
from immutools.errors import (
    CorruptDataError,
    ImmutoolsError,
    LimitExceededError,
    NotFoundError,
    UnsupportedFeatureError,
    UnsupportedImageError,
)
from immutools.fs import identify, open_filesystem
from immutools.fs import erofs as erofs_mod
from immutools.fs.erofs import ErofsFileSystem, _lz4_decode_partial
from immutools.image.source import BytesSource, FileSource

pytestmark = pytest.mark.skipif(
    not (have("mkfs.erofs") and have("fsck.erofs") and have("dump.erofs")),
    reason="erofs-utils (mkfs.erofs, fsck.erofs, dump.erofs) not installed",
)

IS_ROOT = os.geteuid() == 0
EXTRAS_VERSION = 3
T = str(SOURCE_DATE_EPOCH)

# name -> mkfs.erofs arguments. Every layout erofs-utils 1.5 can write. 1.5 has no block-size option
# (4 KiB only), so other block sizes cannot be built here.
VARIANTS = {
    "plain": ["-T", T],  # FLAT_INLINE tails, compact inodes
    "noinline": ["-T", T, "-Enoinline_data"],  # FLAT_PLAIN
    "chunk": ["-T", T, "--chunksize=8192"],  # CHUNK_BASED, 4-byte block map
    "chunk-indexes": ["-T", T, "--chunksize=8192", "-Eforce-chunk-indexes"],  # 8-byte chunk indexes
    "lz4": ["-T", T, "-zlz4"],  # COMPRESSED_COMPACT, 0PADDING
    "lz4hc": ["-T", T, "-zlz4hc"],
    "bottlerocket": ["-zlz4hc,12", "-C262144"],  # exactly Bottlerocket's compression flags
    "ztailpacking": ["-T", T, "-zlz4hc", "-Eztailpacking"],
    "legacy-lz4": ["-T", T, "-zlz4", "-Elegacy-compress"],  # COMPRESSED_FULL without 0PADDING
    "legacy-bigpcluster": ["-T", T, "-zlz4hc", "-C65536", "-Elegacy-compress"],  # FULL with CBLKCNT
    "extended": ["-T", T, "-zlz4hc", "-Eforce-inode-extended"],
    # SOURCE_DATE_EPOCH makes 1.5 clamp newer mtimes and keep older ones, with extended inodes
    "mtime": ["-zlz4"],
    # Bottlerocket's full imghelper option set: SELinux labels from file_contexts, all-root, fixed time.
    "bottlerocket-replica": ["--file-contexts={fc}", "--all-root", "-T", T, "-zlz4hc,12", "-C262144"],
}
SDE_VARIANTS = {"mtime"}
LARGE_VARIANTS = {
    "large-bottlerocket": ["-zlz4hc,12", "-C262144"],
    "large-ztailpacking": ["-T", T, "-zlz4hc,12", "-C262144", "-Eztailpacking"],
    "large-legacy": ["-T", T, "-zlz4", "-Elegacy-compress"],
    "large-chunk": ["-T", T, "--chunksize=65536"],
}

FILE_CONTEXTS = (
    "/.* system_u:object_r:os_t:s0\n"
    "/etc(/.*)? system_u:object_r:etc_t:s0\n"
    "/usr/bin/.* system_u:object_r:bin_t:s0\n"
)

# The xattrs set on the source tree (path -> {name: value}); setcap adds security.capability.
USER_XATTRS = {
    "/etc/os-release": {"user.comment": b"hello xattr", "user.k2": b"v2"},
    "/etc": {"user.dir": b"yes"},
    "/multi.bin": {"user.big": bytes(range(256)) * 8},
    # used by four inodes (tiny.txt/hardlink.txt share one): mkfs makes it a shared xattr
    "/tiny.txt": {"user.shared": b"same"},
    "/etc/hostname": {"user.shared": b"same"},
    "/empty": {"user.shared": b"same"},
    "/block.bin": {"user.shared": b"same"},
}
TEXT_SIZES = (1, 100, 4095, 4096, 4097, 5000, 8191, 12288, 20000, 65537, 131149, 262144 + 77)
MIXED_SIZE = 5 * 1024 * 1024 + 1234
MTIMES_NS = {"/tiny.txt": 1_600_000_000_123_456_789, "/etc/os-release": 1_650_000_000_987_654_321}


# ---- building the source trees and images ---------------------------------------------------------
def _text(n: int, seed: int) -> bytes:
    r = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"erofs", b"cluster", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += r.choice(words) + b" "
    return bytes(out[:n])


def _mixed_bytes(size: int = MIXED_SIZE, seed: int = 42) -> bytes:
    """Alternating runs of random (incompressible) and repetitive (compressible) data."""
    r = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        if r.random() < 0.5:
            out += r.randbytes(r.randint(1000, 200_000))
        else:
            out += (b"compressible text %d " % r.randint(0, 1000)) * r.randint(100, 10_000)
    return bytes(out[:size])


def _set_xattr(path: Path, name: str, value: bytes) -> bool:
    try:
        if have("setfattr"):
            run(["setfattr", "-h", "-n", name, "-v", "0x" + value.hex(), path])
        else:
            os.setxattr(path, name, value, follow_symlinks=False)
        return True
    except (RuntimeError, OSError):
        return False


def _add_extras(root: Path) -> None:
    sizes = root / "var" / "lib" / "sizes"
    sizes.mkdir(parents=True)
    for n in TEXT_SIZES:
        (sizes / f"text-{n}").write_bytes(_text(n, seed=n))
    # 16 identical 8 KiB chunks and a tail: mkfs deduplicates chunks in --chunksize images
    (root / "repeated.bin").write_bytes(bytes(range(256)) * 32 * 16 + b"tail")
    os.mknod(root / "sock", stat.S_IFSOCK | 0o755)  # unprivileged mknod may create sockets
    if IS_ROOT:
        os.mknod(root / "cdev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(root / "bdev", stat.S_IFBLK | 0o640, os.makedev(259, 300000))  # minor > 255
    for rel, ns in MTIMES_NS.items():
        if (root / rel.lstrip("/")).exists():
            os.utime(root / rel.lstrip("/"), ns=(ns, ns))


def _xattr_manifest(root: Path) -> dict:
    """The xattrs actually present on the source tree (the filesystem may refuse some)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([] if dirpath != str(root) else [""]):
            p = Path(dirpath, name) if name else Path(dirpath)
            rel = "/" + str(p.relative_to(root)) if p != root else "/"
            try:
                names = os.listxattr(p, follow_symlinks=False)
            except OSError:
                continue
            attrs = {n: os.getxattr(p, n, follow_symlinks=False).hex() for n in names}
            if attrs:
                out[rel] = attrs
    return out


def _mkfs_version() -> str:
    proc = subprocess.run(["mkfs.erofs"], capture_output=True, text=True)  # prints its version first
    match = re.search(r"mkfs\.erofs (\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def _mkfs_env(name: str) -> dict:
    """mkfs.erofs 1.5 turns SOURCE_DATE_EPOCH into forced extended inodes and mtime clamping, which
    would hide compact inodes; only the "mtime" variant keeps it."""
    if name in SDE_VARIANTS:
        return dict(ENV)
    return {k: v for k, v in ENV.items() if k != "SOURCE_DATE_EPOCH"}


def _build(name: str, args: list[str], large: bool) -> Path:
    recipe = {
        "env_sde": name in SDE_VARIANTS,
        "variant": name,
        "args": args,
        "large": large,
        "sample": SAMPLE_RECIPE_VERSION,
        "extras": EXTRAS_VERSION,
        "root": IS_ROOT,
        "setcap": have("setcap"),
        "mkfs": _mkfs_version(),
        "contexts": FILE_CONTEXTS,
    }

    def build(out: Path) -> None:
        out.mkdir(parents=True)
        tree = out / "tree"
        if large:
            tree.mkdir()
            (tree / "mixed.bin").write_bytes(_mixed_bytes())
            (tree / "zeros.bin").write_bytes(bytes(1024 * 1024 + 7))
            _add_extras(tree)
        else:
            make_sample_tree(tree)
            _add_extras(tree)
            for rel, attrs in USER_XATTRS.items():
                for key, value in attrs.items():
                    _set_xattr(tree / rel.lstrip("/"), key, value)
            if have("setcap"):
                with contextlib.suppress(RuntimeError):  # needs CAP_SETFCAP
                    run(["setcap", "cap_net_raw,cap_net_admin+ep", tree / "usr" / "bin" / "bash"])
        (out / "source-xattrs.json").write_text(json.dumps(_xattr_manifest(tree), sort_keys=True))
        fc = out / "file_contexts"
        fc.write_text(FILE_CONTEXTS)
        real_args = [a.format(fc=fc) for a in args]
        run(["mkfs.erofs", "--quiet", *real_args, out / "image.img", tree], env=_mkfs_env(name))
        shutil.rmtree(tree)

    return cached(f"erofs-{name}", recipe, build, suffix="")


_IMAGES: dict[str, Path] = {}


def image_dir(name: str) -> Path:
    if name not in _IMAGES:
        large = name in LARGE_VARIANTS
        args = LARGE_VARIANTS[name] if large else VARIANTS[name]
        _IMAGES[name] = _build(name, args, large)
    return _IMAGES[name]


def image(name: str) -> Path:
    return image_dir(name) / "image.img"


def open_fs(path: Path) -> ErofsFileSystem:
    return ErofsFileSystem(FileSource(path))


# ---- references ----------------------------------------------------------------------------------
_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _host_manifest(top: Path, *, full: bool) -> dict:
    """Walk an extracted or mounted tree. ``full`` adds what only the kernel preserves."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            kind = _TYPES[stat.S_IFMT(st.st_mode)]
            entry = {"type": kind, "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
            if kind == "file":
                entry["size"] = st.st_size
                entry["sha256"] = _sha(p.read_bytes())
            elif kind == "symlink":
                entry["size"] = st.st_size
                entry["target"] = os.readlink(p)
            elif kind in ("char", "block"):
                entry["rdev"] = st.st_rdev
            if full:
                entry.update(mode=st.st_mode, nlink=st.st_nlink, ino=st.st_ino, size=st.st_size,
                             mtime_f=st.st_mtime_ns / 1e9)
                entry["xattrs"] = {
                    n: os.getxattr(p, n, follow_symlinks=False).hex() for n in os.listxattr(p, follow_symlinks=False)
                }
            else:
                # fsck.erofs --extract applies chmod before chown, so setuid/setgid bits are lost.
                entry["perm"] = stat.S_IMODE(st.st_mode) & 0o777
            rel = "/" + str(p.relative_to(top))
            out[rel] = entry
    return out


def _our_manifest(fs: ErofsFileSystem, *, full: bool) -> dict:
    out = {}
    for e in fs.walk("/"):
        st = e.stat
        entry = {"type": st.type, "uid": st.uid, "gid": st.gid, "mtime": int(st.mtime)}
        if st.is_file:
            entry["size"] = st.size
            entry["sha256"] = _sha(fs.read(e.path))
        elif st.is_symlink:
            entry["size"] = st.size
            entry["target"] = e.link_target
        elif st.type in ("char", "block"):
            entry["rdev"] = st.rdev
        if full:
            entry.update(mode=st.mode, nlink=st.nlink, ino=st.inode, mtime_f=st.mtime, size=st.size)
            entry["xattrs"] = {k: v.hex() for k, v in fs.xattrs(e.path).items()}
        else:
            entry["perm"] = st.perm & 0o777
        out[e.path] = entry
    return out


_FSCK: dict[str, dict] = {}


def fsck_manifest(name: str) -> dict:
    if name not in _FSCK:
        with tempfile.TemporaryDirectory(prefix="erofs-fsck-") as tmp:
            dest = Path(tmp, "x")
            # as root: owners and modes; otherwise at least the modes (not the umask)
            keep = "--preserve" if IS_ROOT else "--preserve-perms"
            run(["fsck.erofs", f"--extract={dest}", keep, image(name)])
            _FSCK[name] = _host_manifest(dest, full=False)
    return _FSCK[name]


@contextlib.contextmanager
def kernel_mount(path: Path):
    if not IS_ROOT:
        pytest.skip("kernel comparison needs root for a loop mount")
    if "erofs" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "erofs"], capture_output=True)
        if "erofs" not in Path("/proc/filesystems").read_text():
            pytest.skip("the running kernel has no EROFS support")
    mnt = tempfile.mkdtemp(prefix="erofs-mnt-")
    proc = subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(path), mnt], capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"loop mount not possible here: {proc.stderr.strip()}")
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        os.rmdir(mnt)


def _diff(ours: dict, ref: dict) -> list[str]:
    """Differences between two manifests; float mtimes (``mtime_f``) compare to a microsecond."""
    problems = []
    for path in sorted(set(ours) | set(ref)):
        a, b = dict(ours.get(path) or {}), dict(ref.get(path) or {})
        ta, tb = a.pop("mtime_f", None), b.pop("mtime_f", None)
        if a != b or (ta is None) != (tb is None) or (ta is not None and abs(ta - tb) > 1e-6):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"{path}: differs in {keys or ['mtime']}: ours={ours.get(path)} ref={ref.get(path)}")
    return problems


def _dump(img: Path, path: str) -> dict:
    text = run(["dump.erofs", f"--path={path}", img]).stdout.decode()
    m = {
        "size": int(re.search(r"Size: (\d+)", text).group(1)),
        "nid": int(re.search(r"NID: (\d+)", text).group(1)),
        "nlink": int(re.search(r"Links: (\d+)", text).group(1)),
        "layout": int(re.search(r"Layout: (\d+)", text).group(1)),
        "uid": int(re.search(r"Uid: (\d+)", text).group(1)),
        "gid": int(re.search(r"Gid: (\d+)", text).group(1)),
        "perm": int(re.search(r"Access: (\d+)/", text).group(1), 8),
    }
    return m


ALL_VARIANTS = list(VARIANTS) + list(LARGE_VARIANTS)


# ---- differential tests ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_matches_fsck_extract(variant):
    fs = open_fs(image(variant))
    ours = _our_manifest(fs, full=False)
    ref = fsck_manifest(variant)
    if not IS_ROOT:  # fsck extracts as the calling user then
        for m in (ours, ref):
            for entry in m.values():
                entry.pop("uid"), entry.pop("gid")
    assert len(ours) > 10
    assert _diff(ours, ref) == []
    assert fs.warnings == []


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_matches_kernel_mount(variant):
    img = image(variant)
    fs = open_fs(img)
    ours = _our_manifest(fs, full=True)
    with kernel_mount(img) as mnt:
        ref = _host_manifest(mnt, full=True)
        for entry in ref.values():  # directory sizes are filesystem specific: the kernel reports i_size
            assert "size" in entry
    assert _diff(ours, ref) == []


@pytest.mark.parametrize("variant", ["plain", "lz4hc", "legacy-lz4", "extended", "chunk", "bottlerocket-replica"])
def test_inodes_match_dump_erofs(variant):
    """dump.erofs gives nid, link count, owner, size, layout and permission bits (it prints the
    mode without setuid/setgid/sticky; the kernel comparison covers those)."""
    img = image(variant)
    fs = open_fs(img)
    for path in ("/usr/bin/su", "/usr/bin/wall", "/tmp", "/tiny.txt", "/etc", "/usr/share/doc/big.txt", "/fifo"):
        ref = _dump(img, path)
        st = fs.lstat(path)
        assert (st.perm & 0o777, st.nlink, st.uid, st.gid, st.inode) == (
            ref["perm"], ref["nlink"], ref["uid"], ref["gid"], ref["nid"]
        ), path
        if not st.is_dir:
            assert st.size == ref["size"]
        assert fs._inode(st.inode).datalayout == ref["layout"]
    # the modes make_sample_tree gave them
    assert fs.stat("/usr/bin/su").perm == 0o4755 and fs.stat("/usr/bin/wall").perm == 0o2755
    assert fs.stat("/tmp").perm == 0o1777


@pytest.mark.parametrize(
    "variant", ["plain", "lz4", "chunk-indexes", "legacy-bigpcluster", "extended", "bottlerocket-replica"]
)
def test_xattrs_match_source_tree(variant):
    source = json.loads((image_dir(variant) / "source-xattrs.json").read_text())
    if not source:
        pytest.skip("the fixture filesystem did not accept xattrs")
    fs = open_fs(image(variant))
    for path, attrs in source.items():
        got = {k: v.hex() for k, v in fs.xattrs(path).items()}
        if variant == "bottlerocket-replica":
            got.pop("security.selinux")
        assert got == attrs, path
    if "/usr/bin/bash" in source:
        cap = fs.xattrs("/usr/bin/bash")["security.capability"]
        # vfs_cap_data v2: magic 0x02000000 | effective; permitted low word has NET_ADMIN(12), NET_RAW(13)
        magic, permitted = struct.unpack_from("<II", cap)
        assert magic >> 24 == 2 and permitted == (1 << 12) | (1 << 13)
    assert fs.xattrs("/var/lib/sizes/text-1") == {} or variant == "bottlerocket-replica"


def test_selinux_labels_from_file_contexts():
    fs = open_fs(image("bottlerocket-replica"))
    assert fs.xattrs("/etc/hostname")["security.selinux"].rstrip(b"\0") == b"system_u:object_r:etc_t:s0"
    assert fs.xattrs("/usr/bin/bash")["security.selinux"].rstrip(b"\0") == b"system_u:object_r:bin_t:s0"
    assert fs.xattrs("/var/lib/sizes/text-100")["security.selinux"].rstrip(b"\0") == b"system_u:object_r:os_t:s0"
    # --all-root: every inode is owned by root
    assert {(e.stat.uid, e.stat.gid) for e in fs.walk("/")} == {(0, 0)}


def _layout_census(fs: ErofsFileSystem) -> dict:
    # "layouts" of regular files; counts of extended inodes, ztailpacking/FULL-index inodes,
    # big (multi-block) pclusters and chunk-index inodes
    census = {"layouts": set(), "extended": 0, "ztail": 0, "full": 0, "big": 0, "chunk_indexes": 0}
    for e in fs.walk("/"):
        ino = fs._inode(e.stat.inode)
        if e.stat.is_file:
            census["layouts"].add(ino.datalayout)
        census["extended"] += ino.isize == 64
        if ino.datalayout in (erofs_mod.COMPRESSED_FULL, erofs_mod.COMPRESSED_COMPACT):
            z = fs._zinfo(ino)
            census["ztail"] += bool(z.idata_size)
            census["full"] += not z.compact
            pos = 0
            while pos < ino.size:
                ext = fs._map_extent(ino, z, pos)
                census["big"] += ext.plen > fs.block_size and ext.pa != z.tail_pos
                pos = ext.la + ext.llen
        if ino.datalayout == erofs_mod.CHUNK_BASED:
            census["chunk_indexes"] += bool(ino.i_u & erofs_mod.CHUNK_FORMAT_INDEXES)
    return census


@pytest.mark.parametrize(
    "variant, check",
    [
        ("plain", lambda c, fs: erofs_mod.FLAT_INLINE in c["layouts"] and not fs.feature_incompat),
        ("noinline", lambda c, fs: erofs_mod.FLAT_INLINE not in c["layouts"] and erofs_mod.FLAT_PLAIN in c["layouts"]),
        ("chunk", lambda c, fs: erofs_mod.CHUNK_BASED in c["layouts"] and c["chunk_indexes"] == 0),
        ("chunk-indexes", lambda c, fs: c["chunk_indexes"] > 0),
        ("lz4", lambda c, fs: erofs_mod.COMPRESSED_COMPACT in c["layouts"] and fs.zero_padding and not c["big"]),
        ("bottlerocket", lambda c, fs: c["big"] > 0 and fs.feature_incompat & erofs_mod.INCOMPAT_COMPR_CFGS),
        ("ztailpacking", lambda c, fs: c["ztail"] > 3 and fs.feature_incompat & erofs_mod.INCOMPAT_ZTAILPACKING),
        ("large-ztailpacking", lambda c, fs: c["ztail"] > 3 and c["big"] > 0),
        ("legacy-lz4", lambda c, fs: c["full"] > 3 and not fs.zero_padding),
        ("legacy-bigpcluster", lambda c, fs: c["full"] > 3 and c["big"] > 0 and fs.zero_padding),
        ("extended", lambda c, fs: c["extended"] > 100),
        ("mtime", lambda c, fs: c["extended"] > 100),
    ],
)
def test_fixture_exercises_layout(variant, check):
    """Guard against a fixture silently not using the layout its test is meant to cover."""
    fs = open_fs(image(variant))
    assert check(_layout_census(fs), fs)


def test_mtimes_with_nanoseconds():
    fs = open_fs(image("mtime"))
    for path, ns in MTIMES_NS.items():  # Stat.mtime is a float: microsecond precision
        assert abs(fs.stat(path).mtime - ns / 1e9) < 1e-6
    assert fs._inode(fs.stat("/tiny.txt").inode).mtime_nsec == MTIMES_NS["/tiny.txt"] % 10**9
    fixed = open_fs(image("plain"))
    assert {int(e.stat.mtime) for e in fixed.walk("/")} == {SOURCE_DATE_EPOCH}


def test_special_files():
    fs = open_fs(image("plain"))
    assert fs.lstat("/fifo").type == "fifo"
    assert fs.lstat("/sock").type == "socket"
    assert fs.readlink("/long-link") == "x" * 200 + "/" + "y" * 200
    assert fs.read("/bin/sh") == fs.read("/usr/bin/bash")  # symlinks resolved inside the image
    assert fs.read_text("/escape-link") == "sample\n"  # ../../.. cannot climb out of the root
    if IS_ROOT:
        assert fs.lstat("/cdev").rdev == os.makedev(1, 3)
        assert fs.lstat("/bdev").rdev == os.makedev(259, 300000)
    assert fs.stat("/tiny.txt").nlink == 2 and fs.stat("/tiny.txt").inode == fs.stat("/hardlink.txt").inode


def test_open_via_registry_and_inside_a_partition(tmp_path):
    img = image("lz4")
    data = img.read_bytes()
    disk = tmp_path / "disk.img"
    offset = 1024 * 1024
    with open(disk, "wb") as f:
        f.write(b"\xaa" * offset + data + b"\x55" * 8192)
    source = FileSource(disk).slice(offset, len(data))
    assert identify(source).fstype == "erofs"
    fs = open_filesystem(source, "erofs")
    assert isinstance(fs, ErofsFileSystem) and fs.fstype == "erofs"
    assert fs.uuid and fs.label is None
    assert _sha(fs.read("/usr/share/doc/big.txt")) == fsck_manifest("lz4")["/usr/share/doc/big.txt"]["sha256"]
    assert source.parent.stats.bytes_decompressed >= 300 * 1024


def test_lookup_is_binary_search():
    fs = open_fs(image("plain"))
    many = fs._resolve("/var/lib/many", True)
    ino = fs._inode(many)
    nblocks = fs._dir_block_count(ino)
    assert nblocks >= 3, "the fixture should have a multi-block directory"
    names = fs.listdir("/var/lib/many")
    assert len(names) == 300
    parsed = []
    original = fs._dir_block

    def counting(inode, blk):
        parsed.append(blk)
        return original(inode, blk)

    fs._dir_block = counting  # instrument block parsing to prove lookups do not scan every block
    for name in names:
        fs._dirblock_cache = erofs_mod._LRU(1)
        parsed.clear()
        child = fs._lookup_child(many, name)
        assert child is not None and fs._stat_node(child).is_file
        assert len(parsed) <= nblocks.bit_length() + 1
    for missing in ("", "!", "entry-0000", "entry-0150-with-a-longish-namf", "zzz", "entry-0299-with-a-longish-name0"):
        assert fs._lookup_child(many, missing) is None
    assert fs.read_text("/var/lib/many/entry-0123-with-a-longish-name") == "123"
    with pytest.raises(NotFoundError):
        fs.stat("/var/lib/many/nope")
    # the root directory also has '.', '..', names that sort before '.', spaces and UTF-8
    for name in fs.listdir("/"):
        assert fs.exists("/" + name, follow=False)


# ---- large file, laziness, caching -----------------------------------------------------------------
@pytest.mark.parametrize("variant", list(LARGE_VARIANTS))
def test_large_file_random_ranges(variant):
    fs = open_fs(image(variant))
    expected = _mixed_bytes()
    size = fs.stat("/mixed.bin").size
    assert size == len(expected)
    r = random.Random(7)
    ranges = [(0, 1), (size - 1, 1), (size - 10, 100), (size, 10), (12345, 0), (4095, 2), (262143, 3)]
    ranges += [(r.randrange(size), r.choice([1, 100, 4096, 70000, 300000])) for _ in range(120)]
    for offset, length in ranges:
        assert fs.read("/mixed.bin", offset, length) == expected[offset : offset + length], (offset, length)
    assert fs.read("/zeros.bin") == bytes(1024 * 1024 + 7)
    assert fs._pcluster_cache.bytes <= erofs_mod._PCLUSTER_CACHE_BYTES


def test_open_and_list_read_metadata_only():
    img = image("large-bottlerocket")
    source = FileSource(img)
    fs = ErofsFileSystem(source)
    entries = list(fs.walk("/"))
    for e in entries:
        fs.xattrs(e.path)
    assert len(entries) > 15
    assert fs.pclusters_decoded == 0
    assert source.stats.bytes_decompressed == 0
    assert source.stats.bytes_read < 64 * 1024 < img.stat().st_size // 40


def test_range_read_decodes_only_covering_pclusters():
    img = image("large-bottlerocket")
    source = FileSource(img)
    fs = ErofsFileSystem(source)
    fs.stat("/mixed.bin")
    before = source.stats.bytes_read
    data = fs.read("/mixed.bin", 3 * 1024 * 1024, 4096)
    assert data == _mixed_bytes()[3 * 1024 * 1024 : 3 * 1024 * 1024 + 4096]
    assert 1 <= fs.pclusters_decoded <= 2
    assert source.stats.bytes_read - before <= 2 * 262144 + 16 * 4096
    decoded = fs.pclusters_decoded
    fs.read("/mixed.bin", 3 * 1024 * 1024 + 100, 100)  # same pcluster: served from the cache
    assert fs.pclusters_decoded == decoded


# ---- LZ4 decoding: which library and why -----------------------------------------------------------
def test_lz4_libraries_on_pclusters_needing_partial_decoding():
    """Without 0PADDING (``-E legacy-compress -zlz4``) a pcluster's stream often decodes past its
    extent (the next extent starts again at an lcluster boundary), so only a prefix is wanted: the
    kernel uses LZ4_decompress_safe_partial. python-lz4 and dissect.util's lz4 (native and Python)
    both reject that; our partial decoder produces what fsck.erofs extracts."""
    import lz4.block
    from dissect.util.compression import lz4_native, lz4_python

    fs = open_fs(image("large-legacy"))
    ino = fs._inode(fs._resolve("/mixed.bin", True))
    z = fs._zinfo(ino)
    expected = _mixed_bytes()
    libraries = {
        "python-lz4": lambda b, n: lz4.block.decompress(b, uncompressed_size=n),
        "dissect-python": lambda b, n: lz4_python.decompress(b, n),
    }
    if lz4_native is not None:
        libraries["dissect-native"] = lambda b, n: lz4_native.decompress(b, n)
    failures = {name: 0 for name in libraries}
    checked = 0
    pos = 0
    while pos < ino.size:
        ext = fs._map_extent(ino, z, pos)
        pos = ext.la + ext.llen
        if ext.kind != erofs_mod.COMPRESSION_LZ4:
            continue
        stream = fs._read(ext.pa, ext.plen, "test").lstrip(b"\0")
        ours = _lz4_decode_partial(stream, ext.llen)
        assert ours == expected[ext.la : ext.la + ext.llen]
        checked += 1
        for name, fn in libraries.items():
            try:
                ok = fn(stream, ext.llen) == ours
            except Exception:  # noqa: BLE001 - recording which library copes
                ok = False
            failures[name] += not ok
    assert checked >= 5
    assert all(count > 0 for count in failures.values()), failures


def test_partial_decoder_against_python_lz4():
    import lz4.block

    r = random.Random(3)
    for trial in range(40):
        payload = b"".join(
            r.randbytes(r.randint(0, 300)) if r.random() < 0.4 else bytes([r.randrange(256)]) * r.randint(1, 2000)
            for _ in range(r.randint(1, 30))
        ) or b"x"
        block = lz4.block.compress(payload, store_size=False, mode="high_compression" if trial % 2 else "default")
        assert _lz4_decode_partial(block, len(payload)) == payload
        cut = r.randint(1, len(payload))
        assert _lz4_decode_partial(block + b"\0" * 17, cut) == payload[:cut]  # prefix, trailing junk ignored
        assert _lz4_decode_partial(block, len(payload) + 1) is None  # stream too short
    assert _lz4_decode_partial(b"\x1f\x41\x05\x00", 10) is None  # offset beyond output
    assert _lz4_decode_partial(b"\x0f\x00\x00", 10) is None  # zero offset


# ---- damaged and hand-patched images -----------------------------------------------------------------
def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / f"{name}.img"
    shutil.copyfile(image(name), dst)
    return dst


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read_everything(fs: ErofsFileSystem) -> None:
    for e in fs.walk("/"):
        fs.xattrs(e.path)
        if e.stat.is_file:
            fs.read(e.path)


def _fix_checksum(path: Path) -> None:
    from dissect.util.hash.crc32c import crc32c

    data = bytearray(path.read_bytes()[1024:4096])
    data[4:8] = b"\0\0\0\0"
    _patch(path, 1028, struct.pack("<I", crc32c(bytes(data)) ^ 0xFFFFFFFF))


def test_truncated_images(tmp_path):
    img = _copy("lz4", tmp_path)
    data = img.read_bytes()
    with pytest.raises(UnsupportedImageError):
        ErofsFileSystem(BytesSource(data[:1100]))
    with pytest.raises(UnsupportedImageError):
        ErofsFileSystem(BytesSource(b""))
    fs = ErofsFileSystem(BytesSource(data[: len(data) // 2]))
    assert any("truncated" in w for w in fs.warnings)
    with pytest.raises(CorruptDataError):
        _read_everything(fs)


def test_bad_magic(tmp_path):
    img = _copy("plain", tmp_path)
    _patch(img, 1024, b"\xe2\xe1\xf5\xe1")
    with pytest.raises(UnsupportedImageError, match="not an EROFS"):
        open_fs(img)


@pytest.mark.parametrize(
    "bits, label", [(0x80000000, "0x80000000"), (0x80, "48bit"), (0x100, "metabox"), (0x200, "0x200")]
)
def test_unknown_incompat_feature_is_refused(tmp_path, bits, label):
    img = _copy("lz4", tmp_path)
    (incompat,) = struct.unpack_from("<I", img.read_bytes(), 1024 + 0x50)
    _patch(img, 1024 + 0x50, struct.pack("<I", incompat | bits))
    _fix_checksum(img)  # as a newer mkfs would write it
    with pytest.raises(UnsupportedFeatureError, match=f"unsupported EROFS feature {label}"):
        open_fs(img)
    proc = subprocess.run(["fsck.erofs", img], capture_output=True)
    assert proc.returncode != 0  # erofs-utils 1.5 refuses these too


def test_checksum_mismatch_is_a_warning(tmp_path):
    img = _copy("plain", tmp_path)
    _patch(img, 1024 + 0x40, b"renamed-volume!!")  # volume_name: harmless but covered by the crc
    fs = open_fs(img)
    assert any("checksum mismatch" in w for w in fs.warnings)
    assert fs.label == "renamed-volume!!"  # erofs-utils 1.5 has no option to set a volume name
    assert fs.read_text("/etc/hostname") == "sample\n"
    assert open_fs(image("plain")).warnings == []


def test_blocksize_out_of_range(tmp_path):
    img = _copy("plain", tmp_path)
    _patch(img, 1024 + 12, bytes([20]))
    with pytest.raises(CorruptDataError, match="block size"):
        open_fs(img)


def test_corrupted_inode_mode(tmp_path):
    img = _copy("plain", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/etc/os-release", True))
    _patch(img, ino.pos + 4, struct.pack("<H", 0o170644))  # no such file type
    fs = open_fs(img)
    with pytest.raises(CorruptDataError, match="bogus mode"):
        fs.stat("/etc/os-release")
    with pytest.raises(CorruptDataError):
        _read_everything(fs)


def test_corrupted_inode_data_address(tmp_path):
    img = _copy("noinline", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    assert ino.datalayout == erofs_mod.FLAT_PLAIN
    _patch(img, ino.pos + 16, struct.pack("<I", 0x7FFFFFF0))  # i_u.startblk_lo far past the end
    with pytest.raises(CorruptDataError, match="beyond the end"):
        open_fs(img).read("/usr/share/doc/big.txt")


def test_corrupted_inode_format(tmp_path):
    img = _copy("plain", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/tiny.txt", True))
    _patch(img, ino.pos, struct.pack("<H", 0x0E))  # data layout 7 does not exist
    with pytest.raises(UnsupportedFeatureError, match="data layout 7"):
        open_fs(img).read("/tiny.txt")


def test_corrupted_dirent_nameoff(tmp_path):
    img = _copy("plain", tmp_path)
    fs = open_fs(img)
    etc = fs._inode(fs._resolve("/etc", True))
    assert etc.datalayout == erofs_mod.FLAT_INLINE and etc.size < fs.block_size
    dir_pos = etc.meta_end  # the whole directory is the inline tail
    (nameoff,) = struct.unpack_from("<H", img.read_bytes(), dir_pos + 12 + 8)
    _patch(img, dir_pos + 12 + 8, struct.pack("<H", nameoff + 3))
    _fix_checksum(img)  # the directory may share block 0 with the superblock
    fs = open_fs(img)
    with pytest.raises(CorruptDataError, match="nameoff"):
        fs.listdir("/etc")
    with pytest.raises(CorruptDataError):
        fs.read("/etc/os-release")
    fsck = subprocess.run(["fsck.erofs", "--extract=" + str(tmp_path / "x"), img], capture_output=True, text=True)
    assert "bogus dirent" in fsck.stderr or fsck.returncode != 0
    _patch(img, dir_pos + 8, struct.pack("<H", 5))  # de[0].nameoff smaller than one dirent
    with pytest.raises(CorruptDataError, match="first nameoff"):
        open_fs(img).listdir("/etc")


def test_corrupted_compression_index(tmp_path):
    img = _copy("bottlerocket", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    z = fs._zinfo(ino)
    assert z.compact
    # Turn every index entry into a NONHEAD with a huge lookback distance (type 2, lo 0x7ff).
    _patch(img, z.index_base, (b"\xff\xa7" * 64)[: min(128, (z.lcluster_count + 8) * 2)])
    with pytest.raises(CorruptDataError):
        open_fs(img).read("/usr/share/doc/big.txt")


FUZZ_VARIANTS = {
    "fuzz-ztail": ["-T", T, "-zlz4hc", "-C16384", "-Eztailpacking"],
    "fuzz-legacy": ["-T", T, "-zlz4", "-Elegacy-compress"],
    "fuzz-chunk": ["-T", T, "--chunksize=4096", "-Eforce-chunk-indexes"],
    "fuzz-extended": ["-T", T, "-Eforce-inode-extended"],
}


def _fuzz_image(name: str) -> Path:
    """A small tree (so a full read is quick) with every kind of metadata."""
    recipe = {"variant": name, "args": FUZZ_VARIANTS[name], "mkfs": _mkfs_version(), "v": 1}

    def build(out: Path) -> None:
        tree = out.with_name(out.name + "-tree")
        (tree / "d" / "e").mkdir(parents=True)
        for i, n in enumerate((10, 5000, 9000, 40000)):
            (tree / "d" / f"t{i}").write_bytes(_text(n, seed=i))
            _set_xattr(tree / "d" / f"t{i}", "user.n", str(i).encode() * 30)
            _set_xattr(tree / "d" / f"t{i}", "user.shared", b"x")
        (tree / "d" / "e" / "link").symlink_to("../t1")
        for i in range(60):
            (tree / "d" / "e" / f"name-{i:03d}-padding-padding").write_bytes(b"z" * i)
        run(["mkfs.erofs", "--quiet", *FUZZ_VARIANTS[name], out, tree], env=_mkfs_env(name))
        shutil.rmtree(tree)

    return cached(f"erofs-{name}", recipe, build)


def test_random_corruption_raises_only_our_errors():
    """Flip bytes in the metadata of small images: reading everything either works or raises one
    of our errors, never a raw IndexError/struct.error/MemoryError."""
    r = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for name in FUZZ_VARIANTS:
        data = _fuzz_image(name).read_bytes()
        fs = ErofsFileSystem(BytesSource(data))
        meta_end = max(fs._inode(e.stat.inode).meta_end for e in fs.walk("/")) + 4096
        for _ in range(60):
            buf = bytearray(data)
            for _ in range(r.randint(1, 6)):
                buf[r.randrange(1024, min(len(buf), meta_end))] = r.randrange(256)
            try:
                _read_everything(ErofsFileSystem(BytesSource(bytes(buf))))
                outcomes["ok"] += 1
            except ImmutoolsError:
                outcomes["error"] += 1
    assert outcomes["error"] > 20  # the mutations do hit structures we check


def test_chunk_hole_reads_as_zeros(tmp_path):
    """1.5 never writes chunk holes; patch one into the block map. The kernel reads zeros there
    (fsck.erofs 1.5 --extract writes a stale buffer for the hole instead, so it is not the
    reference here)."""
    img = _copy("chunk", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    assert ino.datalayout == erofs_mod.CHUNK_BASED and not ino.i_u & erofs_mod.CHUNK_FORMAT_INDEXES
    table = (ino.meta_end + 3) // 4 * 4
    _patch(img, table + 4 * 2, b"\xff\xff\xff\xff")  # the third 8 KiB chunk becomes a hole
    original = open_fs(image("chunk")).read("/usr/share/doc/big.txt")
    got = open_fs(img).read("/usr/share/doc/big.txt")
    assert got == original[:16384] + bytes(8192) + original[24576:]
    assert open_fs(img).read("/usr/share/doc/big.txt", 16000, 1000) == original[16000:16384] + bytes(616)
    if IS_ROOT:
        with kernel_mount(img) as mnt:
            assert (mnt / "usr/share/doc/big.txt").read_bytes() == got


def test_chunk_on_extra_device_is_unsupported(tmp_path):
    tree = make_sample_tree(tmp_path / "tree", with_special=False)
    blob, img = tmp_path / "blob.img", tmp_path / "main.img"
    run(["mkfs.erofs", "--quiet", "-T", T, "--chunksize=8192", f"--blobdev={blob}", img, tree])
    fs = open_fs(img)
    assert fs.extra_devices == 1
    assert "etc" in fs.listdir("/")  # metadata is on the primary device
    assert fs.readlink("/bin") == "usr/bin"
    with pytest.raises(UnsupportedFeatureError, match="extra devices"):
        fs.read("/etc/os-release")


def test_fragments_are_refused_per_file(tmp_path):
    """erofs-utils 1.5 cannot write fragments; mark one compressed inode as a fragment file."""
    img = _copy("lz4", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    hpos = (ino.meta_end + 7) // 8 * 8
    (incompat,) = struct.unpack_from("<I", img.read_bytes(), 1024 + 0x50)
    _patch(img, 1024 + 0x50, struct.pack("<I", incompat | erofs_mod.INCOMPAT_FRAGMENTS))
    _patch(img, hpos + 7, bytes([0x80]))  # h_clusterbits bit 7: the whole file is in the packed inode
    fs = open_fs(img)
    with pytest.raises(UnsupportedFeatureError, match="unsupported EROFS feature fragments"):
        fs.read("/usr/share/doc/big.txt")
    assert fs.read_text("/etc/hostname") == "sample\n"  # everything else still reads
    advise = struct.unpack_from("<H", image("lz4").read_bytes(), hpos + 4)[0] | erofs_mod.ADVISE_FRAGMENT_PCLUSTER
    _patch(img, hpos + 4, struct.pack("<H", advise) + image("lz4").read_bytes()[hpos + 6 : hpos + 8])
    with pytest.raises(UnsupportedFeatureError, match="fragments"):
        open_fs(img).read("/usr/share/doc/big.txt")


def test_other_compression_algorithms_are_refused(tmp_path):
    img = _copy("lz4", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    hpos = (ino.meta_end + 7) // 8 * 8
    _patch(img, hpos + 6, bytes([3]))  # h_algorithmtype: ZSTD
    with pytest.raises(CorruptDataError, match="does not list"):  # the superblock only has LZ4
        open_fs(img).read("/usr/share/doc/big.txt")
    (incompat,) = struct.unpack_from("<I", img.read_bytes(), 1024 + 0x50)
    _patch(img, 1024 + 0x50, struct.pack("<IH", incompat | erofs_mod.INCOMPAT_COMPR_CFGS, 0b1001))
    with pytest.raises(UnsupportedFeatureError, match="compression algorithm zstd"):
        open_fs(img).read("/usr/share/doc/big.txt")


def test_long_xattr_name_prefix(tmp_path):
    """Long name prefixes (XATTR_PREFIXES, erofs-utils >= 1.6) patched into a 1.5 image: the
    entry user.comment on /etc/os-release is re-pointed at long prefix 0 = 'user.' + 'x.'."""
    img = _copy("plain", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/etc/os-release", True))
    body = img.read_bytes()[ino.pos + ino.isize : ino.meta_end]
    entry = body.index(b"comment") - 4
    assert body[entry + 1] == 1  # name index user.
    _patch(img, ino.pos + ino.isize + entry + 1, bytes([0x80]))
    table = img.stat().st_size
    with open(img, "ab") as f:  # the prefix table: {u16 len, u8 base_index, infix}
        f.write(struct.pack("<HB", 3, 1) + b"x." + bytes(4096 - 5))
    sb = img.read_bytes()[1024:1152]
    compat, incompat = struct.unpack_from("<I", sb, 8)[0], struct.unpack_from("<I", sb, 0x50)[0]
    _patch(img, 1024 + 8, struct.pack("<I", compat | erofs_mod.COMPAT_PLAIN_XATTR_PFX))
    _patch(img, 1024 + 0x50, struct.pack("<I", incompat | erofs_mod.INCOMPAT_XATTR_PREFIXES))
    _patch(img, 1024 + 0x5B, struct.pack("<BI", 1, table // 4))
    fs = open_fs(img)
    assert fs.xattrs("/etc/os-release") == {"user.x.comment": b"hello xattr", "user.k2": b"v2"}
    _patch(img, 1024 + 0x5B, struct.pack("<B", 0))  # no prefixes declared: the entry is bogus
    with pytest.raises(CorruptDataError, match="long name prefix"):
        open_fs(img).xattrs("/etc/os-release")


def test_interlaced_uncompressed_pclusters(tmp_path):
    """INTERLACED_PCLUSTER (erofs-utils >= 1.6) stores an uncompressed block rotated by the extent's
    offset in its block. Rewrite every uncompressed pcluster of a 1.5 file that way, set the advise
    bit, and check we (and the kernel) still read the original bytes."""
    img = _copy("large-bottlerocket", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/mixed.bin", True))
    z = fs._zinfo(ino)
    bs = fs.block_size
    rotated = 0
    pos = 0
    while pos < ino.size:
        ext = fs._map_extent(ino, z, pos)
        pos = ext.la + ext.llen
        if ext.kind != erofs_mod._KIND_SHIFTED:
            continue
        assert ext.plen == bs
        data = fs._read(ext.pa, ext.llen, "test")
        skip = ext.la % bs
        right = min(bs - skip, ext.llen)
        block = bytearray(bs)
        block[skip : skip + right] = data[:right]
        block[: ext.llen - right] = data[right:]
        _patch(img, ext.pa, bytes(block))
        rotated += skip != 0
    assert rotated > 10
    hpos = (ino.meta_end + 7) // 8 * 8
    (advise,) = struct.unpack_from("<H", img.read_bytes(), hpos + 4)
    _patch(img, hpos + 4, struct.pack("<H", advise | erofs_mod.ADVISE_INTERLACED_PCLUSTER))
    assert _sha(open_fs(img).read("/mixed.bin")) == _sha(_mixed_bytes())
    if IS_ROOT:
        with kernel_mount(img) as mnt:
            assert _sha((mnt / "mixed.bin").read_bytes()) == _sha(_mixed_bytes())


def test_partial_reference_extents(tmp_path):
    """Deduplicated extents (erofs-utils >= 1.6) carry PARTIAL_REF and are decoded with partial
    semantics; mark the HEADs of a FULL-index 1.5 file that way: same bytes, partial decoder used."""
    img = _copy("legacy-bigpcluster", tmp_path)
    fs = open_fs(img)
    ino = fs._inode(fs._resolve("/usr/share/doc/big.txt", True))
    z = fs._zinfo(ino)
    assert not z.compact and fs.zero_padding
    heads = 0
    for lcn in range(z.lcluster_count):
        pos = z.index_base + lcn * 8
        (advise,) = struct.unpack_from("<H", img.read_bytes(), pos)
        if advise & 3 != erofs_mod.LCLUSTER_NONHEAD:
            _patch(img, pos, struct.pack("<H", advise | erofs_mod.LI_PARTIAL_REF))
            heads += 1
    assert heads >= 1
    fs = open_fs(img)
    assert fs._map_extent(ino, fs._zinfo(ino), 0).partial_ref
    expected = fsck_manifest("legacy-bigpcluster")["/usr/share/doc/big.txt"]["sha256"]
    assert _sha(fs.read("/usr/share/doc/big.txt")) == expected


def test_oversized_extent_is_limited(tmp_path, monkeypatch):
    monkeypatch.setattr(erofs_mod, "PCLUSTER_MAX_DSIZE", 64 * 1024)
    fs = open_fs(image("large-bottlerocket"))
    with pytest.raises(LimitExceededError):
        fs.read("/zeros.bin")
