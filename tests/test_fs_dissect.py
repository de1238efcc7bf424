"""Differential tests of the dissect-based filesystem backends (ext2/3/4, XFS, btrfs, squashfs, vfat).

Every image is built from ``make_sample_tree`` with the real tools and read back two ways: by our
reader and by the reference tool for that filesystem (debugfs, xfs_db, unsquashfs, mtools, and as
root a read-only kernel loop mount). Then damaged copies: truncated, flipped superblock bytes, random
metadata damage, targeted loops. Only our own errors may come out, and nothing may hang.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from immutools.errors import CorruptDataError, ImmutoolsError, UnsupportedFeatureError
from immutools.fs import open_filesystem
from immutools.fs.probe import EXT_RO_COMPAT_FLATCAR_RO as FLATCAR_RO_BITS, identify
from immutools.image.source import FileSource
from tests.builders import ENV, SAMPLE_RECIPE_VERSION, cached, have, make_sample_tree, run
from tests.fs_helpers import (
    IS_ROOT,
    assert_same_tree,
    corrupt_copy,
    data_blocks,
    deadline,
    exercise,
    kernel_supports,
    loop_mount,
    summarize_ours,
    summarize_tree,
    xfs_protofile,
)

needs_root = pytest.mark.skipif(not IS_ROOT, reason="loop mounts need root")
UTF8_ENV = dict(ENV, LC_ALL="C.UTF-8")


def need(*tools: str) -> None:
    missing = [t for t in tools if not have(t)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def open_image(path: Path):
    return open_filesystem(FileSource(path))


def sample_tree(root: Path, xattrs: bool = True) -> Path:
    make_sample_tree(root)
    if xattrs:
        # user.* xattrs work on the host's /tmp without root; one large enough to need a block.
        os.setxattr(root / "etc" / "os-release", "user.comment", b"sample value")
        os.setxattr(root / "usr" / "bin" / "bash", "user.mime_type", b"application/x-executable")
        os.setxattr(root / "usr" / "share" / "doc" / "big.txt", "user.big", b"v" * 900)
    return root


# ================================================================================================
# ext2 / ext3 / ext4
# ================================================================================================

EXT_VARIANTS = {
    "ext4-4k-csum": {"mkfs": ["-t", "ext4", "-b", "4096", "-O", "metadata_csum"]},
    "ext4-1k-nocsum": {"mkfs": ["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"]},
    "ext3-1k": {"mkfs": ["-t", "ext3", "-b", "1024"]},
    "ext2-4k": {"mkfs": ["-t", "ext2", "-b", "4096"]},
    "ext2-128-inodes": {"mkfs": ["-t", "ext2", "-b", "1024", "-I", "128"]},
    "ext4-meta-bg": {"mkfs": ["-t", "ext4", "-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"]},
    "ext4-inline-data": {"mkfs": ["-t", "ext4", "-O", "inline_data,metadata_csum"]},
    # Flatcar's /usr: ext2, read-only hack bit; and the same bit next to metadata_csum.
    "ext2-flatcar-ro": {"mkfs": ["-t", "ext2", "-b", "4096", "-I", "128"], "ro_hack": True},
    "ext4-csum-ro-hack": {"mkfs": ["-t", "ext4", "-O", "metadata_csum"], "ro_hack": True},
}
EXT_DEVICES = {"dev-null": ("c", 1, 3), "dev-loop9": ("b", 7, 9), "dev-big": ("c", 300, 70000)}
EXT_OWNERS = {"/etc/hostname": (1001, 1002), "/tiny.txt": (70000, 80000)}


def _debugfs(image: Path, commands: list[str], write: bool = False) -> str:
    cmd_file = image.with_name(image.name + ".debugfs")
    cmd_file.write_text("\n".join(commands) + "\n")
    try:
        proc = run(["debugfs"] + (["-w"] if write else []) + ["-f", str(cmd_file), str(image)], env=UTF8_ENV)
    finally:
        cmd_file.unlink()
    return proc.stdout.decode("utf-8", errors="surrogateescape")


def build_ext(variant: str) -> Path:
    spec = EXT_VARIANTS[variant]

    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"))
        try:
            run(["mke2fs", "-q", "-F", "-L", variant[:16], "-E", "root_owner=0:0"] + spec["mkfs"]
                + ["-d", tree, out, "16M"])
        finally:
            shutil.rmtree(tree)
        cmds = []
        for name, (kind, major, minor) in EXT_DEVICES.items():
            # debugfs mknod takes majors/minors below 256 only; larger ones go in by hand in the
            # new encoding (linux new_encode_dev) in i_block[1].
            encoded = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
            cmds += [f"mknod {name} {kind} 1 1", f"sif {name} mode 0{0o20000 if kind == 'c' else 0o60000:o}",
                     f"sif {name} mode {(stat.S_IFCHR if kind == 'c' else stat.S_IFBLK) | 0o640:#o}",
                     f"sif {name} block[0] 0", f"sif {name} block[1] {encoded}"]
        for path, (uid, gid) in EXT_OWNERS.items():
            cmds += [f"sif {path} uid {uid}", f"sif {path} gid {gid}"]
        if spec.get("ro_hack"):
            ro_compat = identify(FileSource(out)).details["feature_ro_compat"]
            # debugfs rewrites the superblock checksum when metadata_csum is on.
            cmds.append(f"ssv feature_ro_compat {ro_compat | FLATCAR_RO_BITS:#x}")
        _debugfs(out, cmds, write=True)

    return cached(f"ext-{variant}", {"v": SAMPLE_RECIPE_VERSION, "variant": spec, "dev": EXT_DEVICES,
                                     "own": EXT_OWNERS, "ro_bits": FLATCAR_RO_BITS, "x": 3}, build)


def debugfs_listing(image: Path, dirs: list[str]) -> dict[str, tuple]:
    """path -> (inode, mode, uid, gid, size or None) from ``ls -l -p`` of every directory."""
    out = {}
    text = _debugfs(image, [f'ls -l -p "{d}"' for d in dirs])
    current = None
    for line in text.splitlines():
        if line.startswith("debugfs: ls -l -p "):
            current = line[len("debugfs: ls -l -p ") :].strip('"').rstrip("/")
            continue
        if current is None or not line.startswith("/"):
            continue
        fields = line[1:-1].split("/")
        ino, mode, uid, gid, name, size = fields[0], fields[1], fields[2], fields[3], "/".join(fields[4:-1]), fields[-1]
        if name in (".", "..", ""):
            continue
        out[f"{current}/{name}"] = (int(ino), int(mode, 8), int(uid), int(gid), int(size) if size else None)
    return out


@pytest.fixture(scope="module", params=sorted(EXT_VARIANTS))
def ext_image(request):
    need("mke2fs", "debugfs")
    return request.param, build_ext(request.param)


def test_ext_type_and_superblock(ext_image):
    variant, image = ext_image
    fs = open_image(image)
    blkid_like = identify(FileSource(image))
    assert fs.fstype == blkid_like.fstype == variant.split("-")[0]
    assert fs.read_only_hack == bool(EXT_VARIANTS[variant].get("ro_hack"))


def test_ext_matches_debugfs_listing(ext_image):
    _variant, image = ext_image
    fs = open_image(image)
    ours = {e.path: e for e in fs.walk()}
    dirs = ["/"] + [p for p, e in ours.items() if e.stat.is_dir]
    theirs = debugfs_listing(image, dirs)
    theirs = {p if not p.startswith("//") else p[1:]: v for p, v in theirs.items()}
    assert set(ours) == set(theirs)
    for path, entry in ours.items():
        st = entry.stat
        ino, mode, uid, gid, size = theirs[path]
        assert (st.inode, st.mode, st.uid, st.gid) == (ino, mode, uid, gid), path
        if size is not None and not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            assert st.size == size, path
    assert fs.stat("/tiny.txt").uid == 70000 and fs.stat("/tiny.txt").gid == 80000
    assert fs.stat("/dev-big").rdev == os.makedev(300, 70000)


def test_ext_matches_debugfs_rdump(ext_image, tmp_path):
    """Contents, link targets and types against debugfs's own extraction of the whole tree."""
    variant, image = ext_image
    out = tmp_path / "rdump"
    out.mkdir()
    run(["debugfs", "-R", f"rdump / {out}", image], env=UTF8_ENV)
    fs = open_image(image)
    if "inline_data" in EXT_VARIANTS[variant]["mkfs"][-1]:
        # debugfs 1.47.0 dumps all 60 bytes of i_block for an inline-data file; cut its files to the
        # sizes debugfs itself lists (the kernel-mount test checks these files in full).
        dirs = ["/"] + [e.path for e in fs.walk() if e.stat.is_dir]
        for path, (_ino, mode, _uid, _gid, size) in debugfs_listing(image, dirs).items():
            if stat.S_ISREG(mode):
                os.truncate(out / path.lstrip("/"), size)
    theirs = summarize_tree(out, mtime=False, nlink=False)
    # rdump writes regular files, directories and symlinks only, owned by whoever runs it.
    ours = {p: r for p, r in summarize_ours(fs, mtime=False, nlink=False).items()
            if int(r["mode"], 8) & 0o170000 in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)}
    strip = ("uid", "gid", "mode")
    assert_same_tree({p: {k: v for k, v in r.items() if k not in strip} for p, r in ours.items()},
                     {p: {k: v for k, v in r.items() if k not in strip} for p, r in theirs.items()}, "rdump")


def test_ext_xattrs_match_debugfs(ext_image):
    _variant, image = ext_image
    fs = open_image(image)
    for path in ("/etc/os-release", "/usr/bin/bash", "/usr/share/doc/big.txt", "/etc/hostname"):
        text = _debugfs(image, [f"ea_list {path}"])
        theirs = {}
        # "  name (size) = "value"", or just "  name (size)" for long values.
        for m in re.finditer(r'^\s+(\S+) \((\d+)\)(?: = "(.*)")?$', text, re.M):
            theirs[m.group(1)] = m.group(3).encode() if m.group(3) is not None else int(m.group(2))
        ours = {k: (v if k in theirs and isinstance(theirs[k], bytes) else len(v)) for k, v in fs.xattrs(path).items()
                if k != "system.data"}
        assert ours == {k: v for k, v in theirs.items() if k != "system.data"}, path
    assert fs.xattrs("/usr/share/doc/big.txt")["user.big"] == b"v" * 900


@needs_root
def test_ext_matches_kernel_mount(ext_image):
    _variant, image = ext_image
    fs = open_image(image)
    opts = "ro,noload" if fs.identity.details["has_journal"] else "ro"
    with loop_mount(image, opts) as mnt:
        theirs = summarize_tree(mnt, dir_size=True)
        xattrs_theirs = {p: {n: os.getxattr(mnt / p.lstrip("/"), n, follow_symlinks=False)
                             for n in os.listxattr(mnt / p.lstrip("/"), follow_symlinks=False)}
                         for p in ("/etc/os-release", "/usr/share/doc/big.txt")}
    assert_same_tree(summarize_ours(fs, dir_size=True), theirs, "kernel ext mount")
    for path, expected in xattrs_theirs.items():
        assert {k: v for k, v in fs.xattrs(path).items() if k.startswith("user.")} == expected


def test_ext_flatcar_read_only_hack_opens():
    """The top ro_compat byte must not stop us (dissect.extfs ignores ro_compat), and blkid's view
    of the type differs on purpose: it calls it ext4 (unknown feature), we keep ext2 (SEC_TYPE)."""
    image = build_ext("ext2-flatcar-ro")
    ident = identify(FileSource(image))
    assert ident.fstype == "ext2" and ident.details["read_only_hack"]
    assert ident.details["feature_ro_compat"] & FLATCAR_RO_BITS == FLATCAR_RO_BITS
    fs = open_image(image)
    assert fs.read_text("/etc/os-release").startswith('NAME="Sample Linux"')
    if have("blkid"):
        blkid = dict(line.split("=", 1) for line in run(["blkid", "-p", "-o", "export", image]).stdout.decode().split())
        assert blkid["TYPE"] == "ext4" and blkid["SEC_TYPE"] == "ext2"


def test_ext_opening_is_lazy():
    image = build_ext("ext4-4k-csum")
    src = FileSource(image)
    fs = open_filesystem(src)
    opened = src.stats.bytes_read
    fs.read("/etc/os-release")
    assert opened < 64 * 1024, f"open read {opened} bytes"
    assert src.stats.bytes_read - opened < 256 * 1024


# ================================================================================================
# XFS
# ================================================================================================

XFS_OWNERS = {"etc/hostname": (1001, 1002), "tiny.txt": (70000, 80000)}
XFS_DEVICES = {"dev-null": ("c", 1, 3), "dev-loop9": ("b", 7, 9)}
XFS_VARIANTS = {"xfs-v5": [], "xfs-1k-blocks": ["-b", "size=1024"], "xfs-v4-no-ftype": ["-m", "crc=0", "-n", "ftype=0"]}


def build_xfs(variant: str) -> Path:
    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"), xattrs=False)
        proto = out.with_name(out.name + ".proto")
        try:
            text, _skipped = xfs_protofile(tree, XFS_OWNERS, XFS_DEVICES)
            proto.write_text(text)
            with open(out, "wb") as f:
                f.truncate(320 << 20)
            run(["mkfs.xfs", "-q", "-f", "-L", "xfslab", *XFS_VARIANTS[variant], "-p", proto, out])
        finally:
            shutil.rmtree(tree)
            proto.unlink(missing_ok=True)

    return cached(f"xfs-{variant}", {"v": SAMPLE_RECIPE_VERSION, "variant": XFS_VARIANTS[variant],
                                     "own": XFS_OWNERS, "dev": XFS_DEVICES, "x": 1}, build)


@pytest.fixture(scope="module", params=sorted(XFS_VARIANTS))
def xfs_image(request):
    need("mkfs.xfs", "xfs_db")
    return build_xfs(request.param)


def xfs_db_listing(image: Path, dirs: list[str]) -> dict[str, dict]:
    """path -> {inode, mode, uid, gid, size, nlink} from xfs_db ``ls`` and inode ``print``."""
    args = []
    for d in dirs:
        args += ["-c", f"echo @@dir {d}", "-c", f"ls {d}"]
    text = run(["xfs_db", "-r", *args, image], env=UTF8_ENV).stdout.decode("utf-8", errors="surrogateescape")
    entries: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@dir "):
            current = line[6:].strip().rstrip("/")
            continue
        m = re.match(r"^\d+\s+(\d+)\s+\S+\s+0x[0-9a-f]+\s+\d+\s+(.*?) \((?:good|bad|corrupt)\)$", line)
        if m and m.group(2) not in (".", ".."):
            entries[f"{current}/{m.group(2)}"] = int(m.group(1))
    args = []
    for path, ino in entries.items():
        args += ["-c", f"echo @@ino {path}", "-c", f"inode {ino}",
                 "-c", "print core.mode core.uid core.gid core.size core.nlinkv2"]
    text = run(["xfs_db", "-r", *args, image], env=UTF8_ENV).stdout.decode("utf-8", errors="surrogateescape")
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("@@ino "):
            current = line[6:].strip()
            out[current] = {"inode": entries[current]}
            continue
        m = re.match(r"^core\.(\w+) = (\S+)", line)
        if m:
            out[current][m.group(1)] = int(m.group(2), 8 if m.group(1) == "mode" else 10)
    return out


def test_xfs_matches_xfs_db(xfs_image):
    fs = open_image(xfs_image)
    assert fs.fstype == "xfs" and fs.label == "xfslab"
    ours = {e.path: e.stat for e in fs.walk()}
    theirs = xfs_db_listing(xfs_image, ["/"] + [p for p, st in ours.items() if st.is_dir])
    assert set(ours) == set(theirs)
    for path, st in ours.items():
        t = theirs[path]
        assert (st.inode, st.mode, st.uid, st.gid, st.size, st.nlink) == (
            t["inode"], t["mode"], t["uid"], t["gid"], t["size"], t["nlinkv2"]), path
    assert fs.stat("/tiny.txt").uid == 70000
    assert fs.stat("/usr/bin/su").is_setuid and fs.stat("/usr/bin/wall").is_setgid
    assert fs.readlink("/usr/bin/sh") == "bash"
    # mkfs.xfs 6.1 writes a protofile's remote (out-of-inode) symlink without the v5 block header;
    # the kernel refuses it (EUCLEAN) and so do we. Kernel-written remote links: test below.
    if fs._fs.version == 5:
        with pytest.raises(CorruptDataError, match="xfs: /long-link: readlink"):
            fs.readlink("/long-link")
    else:  # v4 remote symlinks have no header
        assert fs.readlink("/long-link") == "x" * 200 + "/" + "y" * 200


@needs_root
def test_xfs_matches_kernel_mount(xfs_image):
    fs = open_image(xfs_image)
    if fs._fs.version == 4:
        try:
            with loop_mount(xfs_image, "ro,norecovery"):
                pass
        except RuntimeError:
            pytest.skip("this kernel has no XFS v4 support (CONFIG_XFS_SUPPORT_V4)")
    with loop_mount(xfs_image, "ro,norecovery") as mnt:
        theirs = summarize_tree(mnt, dir_size=True)
    assert_same_tree(summarize_ours(fs, dir_size=True), theirs, "kernel xfs mount")


@needs_root
def test_xfs_kernel_written_xattrs_and_remote_symlink(tmp_path):
    """Shortform (a few small) and leaf (many) attribute forks, written by the kernel."""
    need("mkfs.xfs")
    image = tmp_path / "xattr.xfs"
    shutil.copy(build_xfs("xfs-v5"), image)
    values = {"few": {"user.a": b"1", "trusted.t": b"root-only", "security.s": b"label"},
              "many": {f"user.k{i:03d}": f"value-{i}".encode() * 3 for i in range(60)}}
    long_target = "x" * 200 + "/" + "y" * 700
    with loop_mount(image, "rw") as mnt:
        os.symlink(long_target, mnt / "kernel-long-link")
        for name, attrs in values.items():
            target = mnt / f"xattr-{name}"
            target.write_bytes(b"x")
            for key, value in attrs.items():
                os.setxattr(target, key, value)
    fs = open_image(image)
    for name, attrs in values.items():
        assert fs.xattrs(f"/xattr-{name}") == attrs
    assert fs.readlink("/kernel-long-link") == long_target


# ================================================================================================
# btrfs
# ================================================================================================


def build_btrfs_rootdir() -> Path:
    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"))
        try:
            with open(out, "wb") as f:
                f.truncate(160 << 20)
            run(["mkfs.btrfs", "-q", "-f", "-L", "btrlab", "--rootdir", tree, out])
        finally:
            shutil.rmtree(tree)

    return cached("btrfs-rootdir", {"v": SAMPLE_RECIPE_VERSION, "x": 1}, build)


def _write_holey(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"A" * 5000)
        f.seek(1 << 20)
        f.write(b"B" * 70000)
        f.truncate(3 << 20)  # trailing hole


def build_btrfs_subvolumes() -> Path:
    """Kernel-written: compressed extents (zstd mount default, zlib and lzo by property), nested and
    read-only subvolumes, a snapshot, holes, a preallocated range, device nodes, and a default
    subvolume other than the top level. Needs root (btrfs-progs 6.2 mkfs has no --compress or
    --subvol)."""

    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"))
        try:
            with open(out, "wb") as f:
                f.truncate(300 << 20)
            run(["mkfs.btrfs", "-q", "-f", "-L", "subvols", out])
            with loop_mount(out, "rw,compress-force=zstd") as mnt:
                for sub, codec in (("zstd", None), ("zlib", "zlib"), ("lzo", "lzo")):
                    run(["btrfs", "-q", "subvolume", "create", mnt / sub])
                    if codec:
                        run(["btrfs", "property", "set", mnt / sub, "compression", codec])
                    run(["btrfs", "-q", "subvolume", "create", mnt / sub / "nested"])
                    run(["cp", "-a", f"{tree}/.", mnt / sub])
                    (mnt / sub / "nested" / "inner.txt").write_text(f"inside {sub}\n" * 500)
                    _write_holey(mnt / sub / "holey.bin")
                    with open(mnt / sub / "prealloc.bin", "wb") as f:
                        f.write(b"head")
                        os.posix_fallocate(f.fileno(), 0, 1 << 20)
                    os.mknod(mnt / sub / "dev-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
                    os.mknod(mnt / sub / "dev-big", stat.S_IFBLK | 0o660, os.makedev(300, 70000))
                run(["btrfs", "-q", "subvolume", "snapshot", "-r", mnt / "zstd", mnt / "snap-ro"])
                (mnt / "top.txt").write_text("top level\n")
                subprocess.run(["sync"])
                subvol_id = int(run(["btrfs", "inspect-internal", "rootid", mnt / "zlib"]).stdout)
                run(["btrfs", "subvolume", "set-default", str(subvol_id), mnt])
        finally:
            shutil.rmtree(tree)

    return cached("btrfs-subvols", {"v": SAMPLE_RECIPE_VERSION, "x": 3}, build)


def build_btrfs_flatcar_usr() -> Path:
    """Like Flatcar's /usr: files copied in under compress-force=zstd, then the top-level subvolume
    made read-only (build_library disk_util: btrfs property set -ts <mnt> ro true)."""

    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"))
        try:
            with open(out, "wb") as f:
                f.truncate(200 << 20)
            run(["mkfs.btrfs", "-q", "-f", "-L", "USR-A", out])
            with loop_mount(out, "rw,compress-force=zstd") as mnt:
                run(["cp", "-a", f"{tree}/.", mnt])
                subprocess.run(["sync"])
                run(["btrfs", "property", "set", "-ts", mnt, "ro", "true"])
        finally:
            shutil.rmtree(tree)

    return cached("btrfs-flatcar-usr", {"v": SAMPLE_RECIPE_VERSION, "x": 1}, build)


def test_btrfs_rootdir_reads(tmp_path):
    need("mkfs.btrfs")
    image = build_btrfs_rootdir()
    fs = open_image(image)
    assert fs.fstype == "btrfs" and fs.label == "btrlab"
    assert fs.subvolume_info("/")["id"] == 5 and not fs.subvolume_info("/")["readonly"]
    assert fs.subvolume_info("/etc") is None
    assert fs.readlink("/long-link") == "x" * 200 + "/" + "y" * 200
    assert fs.xattrs("/etc/os-release") == {"user.comment": b"sample value"}
    big = fs.read("/usr/share/doc/big.txt")
    assert len(big) == 300 * 1024 and big.startswith(b"line 00000000")


@needs_root
def test_btrfs_rootdir_matches_kernel_mount():
    need("mkfs.btrfs")
    image = build_btrfs_rootdir()
    fs = open_image(image)
    with loop_mount(image) as mnt:
        theirs = summarize_tree(mnt, dir_size=True)
    assert_same_tree(summarize_ours(fs, dir_size=True), theirs, "kernel btrfs mount")


def _btrfs_walk_without_inodes(fs, path="/"):
    return summarize_ours(fs, path, dir_size=True)


@needs_root
def test_btrfs_subvolumes_compression_match_kernel_mount():
    need("mkfs.btrfs", "btrfs")
    image = build_btrfs_subvolumes()
    fs = open_image(image)
    top = fs.open_subvolume_path("/")
    # Default subvolume = zlib: that is what a plain mount shows, and what our root is.
    assert fs.subvolume_info("/")["path"] == "zlib" and fs.subvolume_info("/")["default"]
    with loop_mount(image) as mnt:
        default_theirs = summarize_tree(mnt, dir_size=True)
    assert_same_tree(_btrfs_walk_without_inodes(fs), default_theirs, "btrfs default subvolume")
    with loop_mount(image, "ro,subvolid=5") as mnt:
        top_theirs = summarize_tree(mnt, dir_size=True)
    # The snapshot's placeholder for zstd/nested (not part of the snapshot): an empty directory,
    # which the kernel makes up with the current time.
    top_theirs["/snap-ro/nested"].pop("mtime")
    assert_same_tree(_btrfs_walk_without_inodes(top), top_theirs, "btrfs top level")
    assert top.listdir("/snap-ro/nested") == [] and top.subvolume_info("/snap-ro/nested") is None

    info = {s["path"]: s for s in fs.subvolumes()}
    assert set(info) == {"", "zstd", "zlib", "lzo", "zstd/nested", "zlib/nested", "lzo/nested", "snap-ro"}
    assert info["snap-ro"]["readonly"] and not info["zstd"]["readonly"]
    assert top.subvolume_info("/snap-ro")["readonly"]
    assert top.subvolume_info("/zstd/nested")["path"] == "zstd/nested"
    # inode numbers repeat across subvolumes; keys do not.
    a, b = top._resolve("/zstd/etc", True), top._resolve("/lzo/etc", True)
    assert top.stat("/zstd/etc").inode == top.stat("/lzo/etc").inode
    assert top._node_key(a) != top._node_key(b)

    # The extents really are compressed with each codec, and holes / prealloc read as zeros.
    for sub, codec in (("zstd", 3), ("zlib", 1), ("lzo", 2)):
        ref = top._resolve(f"/{sub}/usr/share/doc/big.txt", True)
        codecs = {struct.unpack_from("<QBBHB", d, 8)[1] for _o, _l, d in top._extents(ref)}
        assert codecs == {codec}, (sub, codecs)
        holey = top.read(f"/{sub}/holey.bin")
        assert holey == b"A" * 5000 + bytes((1 << 20) - 5000) + b"B" * 70000 + bytes((3 << 20) - (1 << 20) - 70000)
        assert top.read(f"/{sub}/prealloc.bin") == b"head" + bytes((1 << 20) - 4)
        assert top.stat(f"/{sub}/dev-big").rdev == os.makedev(300, 70000)
        # tiny files live inline in the tree.
        inline = top._resolve(f"/{sub}/tiny.txt", True)
        assert [struct.unpack_from("<QBBHB", d, 8)[4] for _o, _l, d in top._extents(inline)] == [0]


@needs_root
def test_btrfs_flatcar_usr_zstd_read_only():
    need("mkfs.btrfs", "btrfs")
    image = build_btrfs_flatcar_usr()
    fs = open_image(image)
    assert fs.label == "USR-A"
    assert fs.subvolume_info("/") == {**fs.subvolume_info("/"), "id": 5, "readonly": True, "default": True}
    ref = fs._resolve("/usr/share/doc/big.txt", True)
    assert {struct.unpack_from("<QBBHB", d, 8)[1] for _o, _l, d in fs._extents(ref)} == {3}
    with loop_mount(image) as mnt:
        theirs = summarize_tree(mnt, dir_size=True)
    assert_same_tree(summarize_ours(fs, dir_size=True), theirs, "flatcar-like btrfs /usr")


# ================================================================================================
# squashfs
# ================================================================================================

SQUASH_CODECS = ["gzip", "xz", "zstd", "lz4", "lzo", "lzma"]
SQUASH_PSEUDO = [
    "dev d 755 0 0",
    "dev/null c 666 0 0 1 3",
    "dev/big b 660 0 6 300 70000",
    "etc/hostname m 640 1001 1002",
]


def squash_supports(codec: str) -> bool:
    text = subprocess.run(["mksquashfs", "-help"], capture_output=True).stderr.decode(errors="replace")
    text += subprocess.run(["mksquashfs", "-help"], capture_output=True).stdout.decode(errors="replace")
    return re.search(rf"^\s+{codec}\b", text, re.M) is not None


def build_squashfs(codec: str, extra: tuple[str, ...] = ()) -> Path:
    def build(out: Path) -> None:
        tree = sample_tree(out.with_name(out.name + ".tree"))
        try:
            args = ["mksquashfs", tree, out, "-noappend", "-quiet", "-comp", codec, *extra]
            for line in SQUASH_PSEUDO:
                args += ["-p", line]
            run(args)
        finally:
            shutil.rmtree(tree)

    return cached(f"squashfs-{codec}", {"v": SAMPLE_RECIPE_VERSION, "extra": extra, "pseudo": SQUASH_PSEUDO,
                                         "x": 1}, build)


_MODE_CHARS = {"-": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
               "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}


def parse_ls_mode(text: str) -> int:
    mode = _MODE_CHARS[text[0]]
    for i, (bit, special, special_char) in enumerate(
        [(0o400, 0, ""), (0o200, 0, ""), (0o100, stat.S_ISUID, "s"),
         (0o040, 0, ""), (0o020, 0, ""), (0o010, stat.S_ISGID, "s"),
         (0o004, 0, ""), (0o002, 0, ""), (0o001, stat.S_ISVTX, "t")]
    ):
        c = text[1 + i]
        if c not in "-S" and c != special_char.upper():
            mode |= bit
        if special and c.lower() == special_char:
            mode |= special
    return mode


def unsquashfs_listing(image: Path) -> dict[str, dict]:
    text = run(["unsquashfs", "-lln", "-d", "", image], env=dict(UTF8_ENV, TZ="UTC")).stdout.decode(
        "utf-8", errors="surrogateescape")
    out = {}
    pattern = re.compile(r"^(\S{10}) (\d+)/(\d+)\s+(\d+,\s*\d+|\d+) (\d{4}-\d\d-\d\d \d\d:\d\d) (.*)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        mode = parse_ls_mode(m.group(1))
        path, link = m.group(6), None
        if stat.S_ISLNK(mode):
            path, link = path.split(" -> ", 1)
        if path in ("", "/"):
            continue
        rec = {"mode": oct(mode), "uid": int(m.group(2)), "gid": int(m.group(3)), "mtime": m.group(5)}
        if "," in m.group(4):
            # unsquashfs 4.5.1 splits the stored 32-bit value as major = raw >> 8, minor = raw & 0xff;
            # squashfs stores linux's new_encode_dev(), which the kernel decodes (checked against a
            # kernel mount below). Rebuild the raw value and decode it the kernel's way.
            raw = (int(m.group(4).split(",")[0]) << 8) | int(m.group(4).split(",")[1])
            rec["rdev"] = ((raw & 0xFFF00) >> 8, (raw & 0xFF) | ((raw >> 12) & 0xFFF00))
        else:
            rec["size"] = int(m.group(4))
        if link is not None:
            rec["link"] = link
        out["/" + path.lstrip("/")] = rec
    return out


@pytest.fixture(scope="module", params=SQUASH_CODECS)
def squash_image(request):
    need("mksquashfs", "unsquashfs")
    if not squash_supports(request.param):
        pytest.skip(f"this mksquashfs cannot write {request.param}")
    return request.param, build_squashfs(request.param)


def test_squashfs_matches_unsquashfs_listing(squash_image):
    codec, image = squash_image
    fs = open_image(image)
    assert fs.compression == {"gzip": "zlib"}.get(codec, codec)
    ours = {}
    for e in fs.walk():
        st = e.stat
        rec = {"mode": oct(st.mode), "uid": st.uid, "gid": st.gid,
               "mtime": time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.mtime))}
        if st.rdev is not None:
            rec["rdev"] = (os.major(st.rdev), os.minor(st.rdev))
        else:
            rec["size"] = st.size
        if e.link_target is not None:
            rec["link"] = e.link_target
        ours[e.path] = rec
    assert_same_tree(ours, unsquashfs_listing(image), f"unsquashfs -lln ({codec})")
    assert fs.stat("/etc/hostname").uid == 1001 and fs.stat("/etc/hostname").perm == 0o640
    assert fs.stat("/tiny.txt").nlink == 2 and fs.stat("/tiny.txt").inode == fs.stat("/hardlink.txt").inode


def test_squashfs_contents_match_unsquashfs(squash_image, tmp_path):
    codec, image = squash_image
    fs = open_image(image)
    out = tmp_path / "x"
    # -no-xattrs: security.*/trusted.* restore needs root; xattrs are compared on their own below.
    proc = subprocess.run(["unsquashfs", "-no-xattrs", "-d", out, image], capture_output=True, env=UTF8_ENV)
    assert out.is_dir(), proc.stderr
    theirs = summarize_tree(out, mtime=False, nlink=False)
    ours = summarize_ours(fs, mtime=False, nlink=False)
    keep = (stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR)
    pick = lambda d: {p: {k: v for k, v in r.items() if k in ("size", "sha256", "link")}  # noqa: E731
                      for p, r in d.items() if int(r["mode"], 8) & 0o170000 in keep}
    assert_same_tree(pick(ours), pick(theirs), f"unsquashfs extraction ({codec})")
    for path in ("/etc/os-release", "/usr/share/doc/big.txt", "/multi.bin"):
        cat = run(["unsquashfs", "-cat", image, path.lstrip("/")]).stdout
        assert fs.read(path) == cat


def test_squashfs_xattrs_match_unsquashfs(squash_image, tmp_path):
    codec, image = squash_image
    fs = open_image(image)
    out = tmp_path / "x"
    subprocess.run(["unsquashfs", "-d", out, image, "etc", "usr"], capture_output=True, env=UTF8_ENV)
    for rel in ("etc/os-release", "usr/bin/bash", "usr/share/doc/big.txt", "etc/hostname"):
        expected = {n: os.getxattr(out / rel, n) for n in os.listxattr(out / rel)}
        assert fs.xattrs("/" + rel) == expected, rel
    assert fs.xattrs("/usr/share/doc/big.txt")["user.big"] == b"v" * 900


def test_squashfs_without_fragments_and_with_all_fragments():
    need("mksquashfs")
    for extra in (("-no-fragments",), ("-always-use-fragments",), ("-b", "4096")):
        fs = open_image(build_squashfs("gzip", extra))
        reference = open_image(build_squashfs("gzip"))
        assert summarize_ours(fs, mtime=False) == summarize_ours(reference, mtime=False), extra


@needs_root
def test_squashfs_matches_kernel_mount(squash_image):
    codec, image = squash_image
    if not kernel_supports("squashfs"):
        pytest.skip("kernel has no squashfs")
    if codec == "lzma":
        pytest.skip("the Linux squashfs driver reads xz, never legacy lzma")
    fs = open_image(image)
    try:
        mount = loop_mount(image)
        mnt = mount.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"kernel cannot mount {codec} squashfs: {exc}")
    try:
        theirs = summarize_tree(mnt, dir_size=True)
    finally:
        mount.__exit__(None, None, None)
    assert_same_tree(summarize_ours(fs, dir_size=True), theirs, f"kernel squashfs mount ({codec})")


# ================================================================================================
# vfat
# ================================================================================================

FAT_VARIANTS = {"fat12": ("12", "4M"), "fat16": ("16", "24M"), "fat32": ("32", "64M")}


def fat_tree(root: Path) -> Path:
    """The sample tree without what FAT cannot hold (symlinks, FIFOs, hard links)."""
    full = sample_tree(root.with_name(root.name + ".full"), xattrs=False)
    shutil.copytree(full, root, symlinks=True, ignore=lambda d, names: [
        n for n in names if os.path.islink(os.path.join(d, n)) or not (
            os.path.isdir(os.path.join(d, n)) or os.path.isfile(os.path.join(d, n))) or n == "hardlink.txt"])
    shutil.rmtree(full)
    (root / "UPPER.TXT").write_text("upper\n")
    (root / "MixedCase.Txt").write_text("mixed\n")
    (root / "readonly.txt").write_text("read only\n")
    return root


def build_fat(variant: str) -> Path:
    bits, size = FAT_VARIANTS[variant]

    def build(out: Path) -> None:
        tree = fat_tree(out.with_name(out.name + ".tree"))
        try:
            run(["mkfs.vfat", "-C", "-F", bits, "-n", variant.upper(), "-i", "12345678", out,
                 str(int(size[:-1]) * 1024)])
            env = dict(UTF8_ENV, MTOOLS_SKIP_CHECK="1")
            run(["mcopy", "-s", "-i", out, *sorted(tree.iterdir()), "::/"], env=env)
            run(["mattrib", "-i", out, "+r", "::/readonly.txt"], env=env)
            run(["mattrib", "-i", out, "+h", "+s", "::/tiny.txt"], env=env)
        finally:
            shutil.rmtree(tree)

    return cached(f"fat-{variant}", {"v": SAMPLE_RECIPE_VERSION, "variant": FAT_VARIANTS[variant], "x": 2}, build)


@pytest.fixture(scope="module", params=sorted(FAT_VARIANTS))
def fat_image(request):
    need("mkfs.vfat", "mcopy", "mdir", "mtype", "mattrib")
    return request.param, build_fat(request.param)


def _mtools(args: list, image: Path) -> str:
    env = dict(UTF8_ENV, MTOOLS_SKIP_CHECK="1")
    return run([args[0], "-i", image, *args[1:]], env=env).stdout.decode("utf-8", errors="surrogateescape")


def test_fat_matches_mtools(fat_image, tmp_path):
    variant, image = fat_image
    fs = open_image(image)
    assert fs.fat_type == variant.upper() and fs.label == variant.upper()
    ours = {e.path: e.stat for e in fs.walk()}
    # mdir -/ -b: every path, directories with a trailing slash, long names where there are some.
    listed = [line for line in _mtools(["mdir", "-/", "-b", "-a", "::/"], image).splitlines() if line.startswith("::/")]
    theirs = {line[2:].rstrip("/"): line.endswith("/") for line in listed}
    assert set(ours) == set(theirs)
    # Contents: mcopy's extraction of everything, and mtype for a few files.
    out = tmp_path / "x"
    out.mkdir()
    run(["mcopy", "-s", "-n", "-i", image, "::/*", out], env=dict(UTF8_ENV, MTOOLS_SKIP_CHECK="1"))
    for path, st in ours.items():
        assert st.is_dir == theirs[path], path
        assert st.perm == (0o755 if st.is_dir else 0o444 if path == "/readonly.txt" else 0o644)
        if not st.is_dir:
            data = fs.read(path)
            assert data == (out / path.lstrip("/")).read_bytes(), path
            assert len(data) == st.size
    for path in ("/etc/os-release", "/usr/share/doc/big.txt", "/ünïcødé-名前"):
        mtype = run(["mtype", "-i", image, "::" + path], env=dict(UTF8_ENV, MTOOLS_SKIP_CHECK="1")).stdout
        assert fs.read(path) == mtype
    # mdir's long listing gives sizes and the 8.3 names; compare sizes of the top level.
    assert fs.read("/usr/share/doc/big.txt").startswith(b"line 00000000")
    assert "/ünïcødé-名前" in ours and "/MixedCase.Txt" in ours and "/UPPER.TXT" in ours


def test_fat_attributes_match_mattrib(fat_image):
    _variant, image = fat_image
    fs = open_image(image)
    text = _mtools(["mattrib", "-/", "::/"], image)
    for line in text.splitlines():
        m = re.match(r"^(.{10})\s*(::/.*)$", line)
        if not m or m.group(2) == "::/":
            continue
        flags, path = m.group(1), m.group(2)[2:]
        attrs = fs.fat_attributes(path)
        assert attrs["read_only"] == ("R" in flags) and attrs["hidden"] == ("H" in flags), path
        assert attrs["system"] == ("S" in flags) and attrs["archive"] == ("A" in flags), path
    assert fs.fat_attributes("/readonly.txt")["read_only"]
    # FAT lookups are case-insensitive, as under a vfat mount.
    assert fs.read("/ETC/OS-RELEASE") == fs.read("/etc/os-release")


@needs_root
def test_fat_matches_kernel_mount(fat_image):
    if not kernel_supports("vfat"):
        pytest.skip("this kernel has no vfat driver")
    _variant, image = fat_image
    fs = open_image(image)
    with loop_mount(image, "ro,fmask=0133,dmask=0022") as mnt:
        theirs = summarize_tree(mnt, mtime=False, nlink=False)
    ours = summarize_ours(fs, mtime=False, nlink=False)
    drop = lambda d: {p: {k: v for k, v in r.items() if k != "mode"} for p, r in d.items()}  # noqa: E731
    assert_same_tree(drop(ours), drop(theirs), "kernel vfat mount")


# ================================================================================================
# Hostile input: truncated, damaged superblocks, random metadata damage, targeted loops.
# ================================================================================================

HOSTILE_IMAGES = {
    "ext4": lambda: build_ext("ext4-4k-csum"),
    "ext2": lambda: build_ext("ext2-128-inodes"),
    "xfs": lambda: build_xfs("xfs-v5"),
    "btrfs": build_btrfs_rootdir,
    "squashfs-xz": lambda: build_squashfs("xz"),
    "squashfs-zstd": lambda: build_squashfs("zstd"),
    "vfat": lambda: build_fat("fat16"),
}
HOSTILE_TOOLS = {"ext4": "mke2fs", "ext2": "mke2fs", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs",
                 "squashfs-xz": "mksquashfs", "squashfs-zstd": "mksquashfs", "vfat": "mkfs.vfat"}


def _fstype_of(kind: str) -> str:
    return {"ext4": "ext4", "ext2": "ext2"}.get(kind, kind.split("-")[0])


def _open_and_exercise(path: Path, fstype: str) -> list[str]:
    with deadline(60):
        try:
            fs = open_filesystem(FileSource(path), fstype)
        except ImmutoolsError as exc:
            return [str(exc)]
        _seen, errors = exercise(fs)
        return errors


def _assert_one_line(messages: list[str], fstype: str) -> None:
    for msg in messages:
        assert "\n" not in msg and len(msg) < 400, msg


@pytest.fixture(scope="module", params=sorted(HOSTILE_IMAGES))
def hostile_base(request):
    need(HOSTILE_TOOLS[request.param])
    return request.param, HOSTILE_IMAGES[request.param]()


def test_truncated_images_give_our_errors(hostile_base, tmp_path):
    kind, image = hostile_base
    fstype = _fstype_of(kind)
    used = max(data_blocks(image)[-1] + 4096, 1 << 16)
    for fraction in (0.02, 0.2, 0.5, 0.9):
        cut = tmp_path / f"cut-{fraction}"
        subprocess.run(["cp", "--sparse=always", image, cut], check=True)
        os.truncate(cut, int(used * fraction))
        _assert_one_line(_open_and_exercise(cut, fstype), fstype)


def test_flipped_superblock_bytes_give_our_errors(hostile_base, tmp_path):
    kind, image = hostile_base
    fstype = _fstype_of(kind)
    sb_offset = {"ext4": 1024, "ext2": 1024, "btrfs": 0x10000}.get(kind, 0)
    for seed in range(8):
        bad = tmp_path / f"sb-{seed}"
        corrupt_copy(image, bad, seed, flips=6, blocks=[sb_offset], block=256)
        errors = _open_and_exercise(bad, fstype)
        _assert_one_line(errors, fstype)


def test_random_metadata_damage_gives_our_errors(hostile_base, tmp_path):
    kind, image = hostile_base
    fstype = _fstype_of(kind)
    blocks = data_blocks(image)
    all_errors = []
    for seed in range(10):
        bad = tmp_path / f"rnd-{seed}"
        corrupt_copy(image, bad, 1000 + seed, flips=60, blocks=blocks)
        all_errors += _open_and_exercise(bad, fstype)
    _assert_one_line(all_errors, fstype)
    assert all_errors, "60 random byte changes in metadata went unnoticed 10 times"
    # Every message says which filesystem (and, past the open, which path) it is about.
    assert all(m.startswith(f"{fstype}: ") for m in all_errors), [m for m in all_errors if not m.startswith(fstype)]


def test_opening_and_listing_read_only_metadata(hostile_base):
    """Lazy: opening reads a superblock's worth (btrfs: its chunk and root trees, in 64 KiB reads)."""
    kind, image = hostile_base
    src = FileSource(image)
    fs = open_filesystem(src, _fstype_of(kind))
    opened = src.stats.bytes_read
    fs.listdir("/")
    assert opened < 512 * 1024 and src.stats.bytes_read - opened < 256 * 1024, (opened, src.stats.bytes_read)


def test_ext_corrupt_directory_block_and_inode(tmp_path):
    need("mke2fs", "debugfs")
    image = build_ext("ext4-1k-nocsum")
    fs = open_image(image)
    ino = fs.stat("/var/lib/many").inode
    blocks = [int(b) for b in _debugfs(image, ["blocks /var/lib/many"]).split()[-1:][0:1]]
    bad = tmp_path / "dirblock"
    shutil.copy(image, bad)
    with open(bad, "r+b") as f:
        f.seek(blocks[0] * 1024)
        f.write(b"\xff" * 1024)  # rec_len 0xffff runs past the block
    fs = open_image(bad)
    with pytest.raises(CorruptDataError, match=r"ext4: /var/lib/many: list directory: .*bad length"):
        fs.listdir("/var/lib/many")
    # An inode whose extent header is garbage: reading it is our error, other files still read.
    bad2 = tmp_path / "inode"
    shutil.copy(image, bad2)
    file_ino = fs.stat("/usr/share/doc/big.txt").inode
    loc = _debugfs(image, [f"imap <{file_ino}>"])
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", loc)
    with open(bad2, "r+b") as f:
        f.seek(int(m.group(1)) * 1024 + int(m.group(2), 16) + 40)  # i_block
        f.write(b"\x0a\xf3\x01\x00\x04\x00\x05\x00" + b"\xff" * 40)  # depth 5 index -> nowhere
    fs2 = open_image(bad2)
    with pytest.raises(CorruptDataError, match="ext4: /usr/share/doc/big.txt: read"):
        fs2.read("/usr/share/doc/big.txt")
    assert fs2.read_text("/etc/os-release").startswith("NAME=")
    assert ino


def test_fat_cluster_chain_loop_is_detected(tmp_path):
    need("mkfs.vfat", "mcopy")
    image = build_fat("fat16")
    fs = open_image(image)
    node = fs._resolve("/usr/share/doc/big.txt", True).node
    first = node.cluster
    bad = tmp_path / "loop.img"
    shutil.copy(image, bad)
    fat_offset = fs._fs.bpb.BPB_RsvdSecCnt * fs._fs.sector_size
    with open(bad, "r+b") as f:
        # cluster first+3 -> first: a cycle in the chain (FAT16: 2 bytes per entry)
        f.seek(fat_offset + (first + 3) * 2)
        f.write(struct.pack("<H", first))
    fs = open_image(bad)
    with deadline(30), pytest.raises(CorruptDataError, match="vfat: /usr/share/doc/big.txt: .*loops"):
        fs.read("/usr/share/doc/big.txt")


def test_btrfs_tree_pointer_loop_is_detected(tmp_path):
    """A node pointing at itself would make dissect's cursor descend forever."""
    need("mkfs.btrfs")
    image = build_btrfs_rootdir()
    fs = open_image(image)
    tree = fs._fs.fs_tree.tree
    root_addr = tree.root_offset
    node, header = tree._read_node(root_addr)
    assert header.level > 0, "the sample tree should need an internal node"
    bad = tmp_path / "loop.img"
    shutil.copy(image, bad)
    chunk_stream = fs._fs._logical_fh
    from bisect import bisect_right

    chunk = chunk_stream.chunks[bisect_right(chunk_stream._chunk_offsets, root_addr) - 1]
    with open(bad, "r+b") as f:
        for stripe in chunk.stripes:  # metadata is DUP: patch both copies
            physical = stripe.offset + (root_addr - chunk.offset)
            # btrfs_key_ptr[0].blockptr sits after the 101-byte header and the 17-byte key.
            f.seek(physical + 101 + 17)
            f.write(struct.pack("<Q", root_addr))
    with deadline(30):
        errors = _open_and_exercise(bad, "btrfs")
    assert errors and all(e.startswith("btrfs: ") and "loop or damage" in e for e in errors), errors


def test_squashfs_decompression_bomb_is_bounded(tmp_path):
    """A data block that inflates past the block size is damage, not 1 GiB of memory."""
    from immutools.fs.dissect_common import decompress
    import zlib

    bomb = zlib.compress(bytes(64 << 20))
    with pytest.raises(CorruptDataError, match="inflates past"):
        decompress("zlib", bomb, 1 << 20)
    import zstandard

    zbomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    with pytest.raises(CorruptDataError, match="inflates past"):
        decompress("zstd", zbomb, 1 << 20)
    import lzma

    with pytest.raises(CorruptDataError, match="inflates past"):
        decompress("xz", lzma.compress(bytes(8 << 20)), 1 << 20)


def test_wrong_type_is_our_error():
    need("mksquashfs")
    image = build_squashfs("gzip")
    for fstype in ("ext4", "xfs", "btrfs", "vfat"):
        with pytest.raises(ImmutoolsError):
            open_filesystem(FileSource(image), fstype)


def test_unknown_squashfs_compressor_is_unsupported(tmp_path):
    need("mksquashfs")
    bad = tmp_path / "comp.img"
    shutil.copy(build_squashfs("gzip"), bad)
    with open(bad, "r+b") as f:
        f.seek(20)
        f.write(struct.pack("<H", 9))
    with pytest.raises(UnsupportedFeatureError, match="compression id 9"):
        open_image(bad)
