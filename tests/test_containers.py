"""Nested containers: initramfs cpio archives (differential against GNU cpio and the compressors)
and PE/UKI images (differential against objdump / file on a real systemd-stub UKI and a Debian
kernel)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat as stat_mod
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from builders import cached, have, make_sample_tree, run

from immutools.errors import CorruptDataError, LimitExceededError, UnsupportedFeatureError
from immutools.fs import open_filesystem
from immutools.fs.cpio import CpioArchive
from immutools.image.source import BytesSource, FileSource, SliceSource
from immutools.limits import Limits

IS_ROOT = os.geteuid() == 0

# compression name (as we report it) -> (compress command, decompress command)
COMPRESSORS = {
    "gzip": (["gzip", "-n", "-9", "-c"], ["gzip", "-dc"]),
    "xz": (["xz", "--check=crc32", "-c"], ["xz", "-dc"]),
    "zstd": (["zstd", "-q", "-19", "-c"], ["zstd", "-q", "-dc"]),
    "lz4-legacy": (["lz4", "-l", "-q", "-c"], ["lz4", "-q", "-dc"]),
    "lz4": (["lz4", "-q", "-c"], ["lz4", "-q", "-dc"]),
    "bzip2": (["bzip2", "-c"], ["bzip2", "-dc"]),
    "lzma": (["lzma", "-c"], ["lzma", "-dc"]),
}
CPIO_RECIPE_VERSION = 1


def _cpio_create(tree: Path, out: Path, fmt: str = "newc") -> None:
    """`find . | sort | cpio -o` the way Talos and initramfs-tools build archives."""
    names = run(["find", "."], cwd=tree).stdout.splitlines()
    names.sort()
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", fmt, "--reproducible"], cwd=tree, input=b"\n".join(names) + b"\n",
        capture_output=True, check=True,
    )
    out.write_bytes(proc.stdout)


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "none":
        return data
    return subprocess.run(COMPRESSORS[kind][0], input=data, capture_output=True, check=True).stdout


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "none":
        return data
    return subprocess.run(COMPRESSORS[kind][1], input=data, capture_output=True, check=True).stdout


def _build_squash_tree(root: Path) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text('NAME="Layer"\nID=layer\nVERSION_ID=9\n')
    (root / "usr" / "bin").mkdir()
    (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF tool\n" * 500)
    (root / "usr" / "sbin").symlink_to("bin")


def build_initramfs(out: Path, main_comp: str, ext_comp: str) -> None:
    """A Talos-like initramfs: raw early (microcode) cpio, compressed main archive, compressed
    extension segment holding a squashfs and overriding one file of the main archive.

    ``out`` becomes a directory with the segment files, the concatenation ``initramfs.img`` and the
    trees they were made from.
    """
    out.mkdir()
    early = out / "early-tree"
    (early / "kernel" / "x86" / "microcode").mkdir(parents=True)
    (early / "kernel" / "x86" / "microcode" / "GenuineIntel.bin").write_bytes(hashlib.sha256(b"ucode").digest() * 300)
    main = make_sample_tree(out / "main-tree")
    if IS_ROOT:
        os.mknod(main / "null-dev", stat_mod.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(main / "blk-dev", stat_mod.S_IFBLK | 0o660, os.makedev(7, 1))
    ext = out / "ext-tree"
    ext.mkdir()
    (ext / "extensions.yaml").write_text("layers:\n  - image: 000.layer.sqsh\n    metadata: {name: layer}\n")
    sq_tree = out / "squash-tree"
    sq_tree.mkdir()
    _build_squash_tree(sq_tree)
    run(["mksquashfs", sq_tree, ext / "rootfs.sqsh", "-all-root", "-noappend", "-comp", "xz", "-no-progress", "-quiet"])
    (ext / "etc").mkdir()
    (ext / "etc" / "hostname").write_text("overridden-by-extension\n")   # later segment wins
    (ext / "empty").symlink_to("tiny.txt")                              # type change: file -> symlink
    parts = []
    for name, tree, comp in (("early", early, "none"), ("main", main, main_comp), ("ext", ext, ext_comp)):
        _cpio_create(tree, out / f"{name}.cpio")
        blob = _compress(comp, (out / f"{name}.cpio").read_bytes())
        (out / f"{name}.seg").write_bytes(blob)
        parts.append((name, comp, blob))
    image = bytearray()
    offsets = {}
    for i, (name, comp, blob) in enumerate(parts):
        offsets[name] = len(image)
        image += blob
        if i == 1 and comp != "lz4-legacy":
            image += b"\0" * 7     # zero padding between compressed segments, as the kernel allows
    (out / "offsets").write_text(" ".join(f"{n}={o}:{c}" for (n, c, _), o in zip(parts, offsets.values())))
    (out / "initramfs.img").write_bytes(bytes(image))


def initramfs_fixture(main_comp: str, ext_comp: str = "zstd") -> Path:
    recipe = {"v": CPIO_RECIPE_VERSION, "main": main_comp, "ext": ext_comp, "root": IS_ROOT,
              "tree": __import__("builders").SAMPLE_RECIPE_VERSION}
    return cached(f"initramfs-{main_comp}-{ext_comp}", recipe, lambda p: build_initramfs(p, main_comp, ext_comp), suffix="")


# ---- reference side: GNU cpio on each (tool-)decompressed segment ------------------------------

_LONG_LINE = re.compile(
    r"^(?P<perm>\S{10})\s+(?P<nlink>\d+)\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+(?P<size>\d+|\d+,\s*\d+)\s+"
    r"(?P<date>\w{3}\s+\d+\s+(?:\d\d:\d\d|\d{4}))\s(?P<name>.*)$"
)


def reference_listing(segments: list[bytes]) -> dict[str, dict]:
    """Union of `cpio -itvn` over the decompressed segments, later segments winning."""
    out: dict[str, dict] = {}
    for data in segments:
        names = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
        long = subprocess.run(["cpio", "-itvn", "--quiet"], input=data, capture_output=True, check=True).stdout
        name_list = [n.decode("utf-8", "surrogateescape") for n in names.splitlines()]
        long_lines = long.decode("utf-8", "surrogateescape").splitlines()
        assert len(name_list) == len(long_lines)
        for name, line in zip(name_list, long_lines):
            m = _LONG_LINE.match(line)
            assert m, line
            path = "/" + name.lstrip("./") if name not in (".", "./") else "/"
            out[os.path.normpath(path)] = {"perm": m["perm"], "nlink": int(m["nlink"]), "uid": int(m["uid"]),
                                           "gid": int(m["gid"]), "size": m["size"]}
    return out


def extract_reference(segments: list[bytes], dest: Path) -> None:
    """Extract the segments in order with `cpio -idmu`, as the kernel unpacks them."""
    dest.mkdir()
    for data in segments:
        subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], cwd=dest, input=data,
                       capture_output=True, check=True)


def _segments_of(fixture: Path, main_comp: str, ext_comp: str) -> list[bytes]:
    return [
        (fixture / "early.seg").read_bytes(),
        _decompress(main_comp, (fixture / "main.seg").read_bytes()),
        _decompress(ext_comp, (fixture / "ext.seg").read_bytes()),
    ]


def _perm_string(mode: int) -> str:
    return stat_mod.filemode(mode)


MAIN_KINDS = ["gzip", "xz", "zstd", "lz4-legacy", "lz4", "bzip2", "lzma"]


@pytest.mark.parametrize("main_comp", MAIN_KINDS)
def test_initramfs_listing_matches_cpio(main_comp):
    ext_comp = "xz" if main_comp == "zstd" else "zstd"
    fx = initramfs_fixture(main_comp, ext_comp)
    arc = CpioArchive.from_source(FileSource(fx / "initramfs.img"))
    assert arc.complete and not arc.warnings, arc.warnings

    # Segments: where each one starts, its compression, how many entries `cpio -t` lists in it.
    decoded = _segments_of(fx, main_comp, ext_comp)
    starts = dict(item.split("=") for item in (fx / "offsets").read_text().split())
    assert [s["compression"] for s in arc.segments] == ["none", main_comp, ext_comp]
    assert [s["offset"] for s in arc.segments] == [int(starts[n].split(":")[0]) for n in ("early", "main", "ext")]
    for seg, data in zip(arc.segments, decoded):
        listed = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
        assert seg["entries"] == len(listed.splitlines())
        assert seg["decompressed_size"] <= len(data)
    assert arc.segments[1]["size"] == (fx / "main.seg").stat().st_size

    ref = reference_listing(decoded)
    ours = {"/": arc.lstat("/")}
    ours.update({e.path: e.stat for e in arc.walk()})
    assert set(ours) == set(ref)
    for path, r in ref.items():
        st = ours[path]
        assert _perm_string(st.mode) == r["perm"], path
        assert (st.uid, st.gid) == (r["uid"], r["gid"]), path
        if "," in r["size"]:
            major, minor = (int(x) for x in r["size"].split(","))
            assert (os.major(st.rdev), os.minor(st.rdev)) == (major, minor), path
        elif not st.is_dir and r["nlink"] == 1:
            # (a hard link's header size is 0 except on the name carrying the data: the
            # extraction test checks those)
            assert st.size == int(r["size"]), path
    # The extension segment overrode these.
    assert arc.read_text("/etc/hostname") == "overridden-by-extension\n"
    assert arc.readlink("/empty") == "tiny.txt"
    assert arc.segment_of("/etc/hostname") == 2 and arc.segment_of("/etc/os-release") == 1
    assert arc.segment_of("/kernel/x86/microcode/GenuineIntel.bin") == 0


@pytest.mark.parametrize("main_comp", ["xz", "lz4-legacy"])
def test_initramfs_contents_match_cpio_extraction(main_comp, tmp_path):
    fx = initramfs_fixture(main_comp)
    decoded = _segments_of(fx, main_comp, "zstd")
    ref_root = tmp_path / "ref"
    extract_reference(decoded, ref_root)
    arc = CpioArchive.from_source(FileSource(fx / "initramfs.img"))
    seen_ino: dict[int, int] = {}
    count = 0
    for entry in arc.walk():
        rel = entry.path.lstrip("/")
        st_ref = os.lstat(ref_root / rel)
        st = entry.stat
        count += 1
        assert stat_mod.S_IFMT(st.mode) == stat_mod.S_IFMT(st_ref.st_mode), entry.path
        assert stat_mod.S_IMODE(st.mode) == stat_mod.S_IMODE(st_ref.st_mode), entry.path
        if st.is_file:
            assert arc.read(entry.path) == (ref_root / rel).read_bytes(), entry.path
            assert int(st.mtime) == int(st_ref.st_mtime), entry.path
            # Hard links: same inode in the extraction <=> same inode for us.
            if st_ref.st_ino in seen_ino:
                assert seen_ino[st_ref.st_ino] == st.inode, entry.path
            seen_ino.setdefault(st_ref.st_ino, st.inode)
        elif st.is_symlink:
            assert entry.link_target == os.readlink(ref_root / rel)
        elif stat_mod.S_ISCHR(st.mode) or stat_mod.S_ISBLK(st.mode):
            assert st.rdev == st_ref.st_rdev
    assert count == sum(1 for _ in ref_root.rglob("*"))
    assert arc.stat("/hardlink.txt").inode == arc.stat("/tiny.txt").inode
    # `cpio -i --to-stdout` on one member, the way a user would pull the squashfs out.
    sq = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "rootfs.sqsh"], input=decoded[2],
                        capture_output=True, check=True).stdout
    assert arc.read("/rootfs.sqsh") == sq


def test_squashfs_inside_initramfs_opens():
    fx = initramfs_fixture("zstd", "xz")
    arc = CpioArchive.from_source(FileSource(fx / "initramfs.img"))
    original = (fx / "ext-tree" / "rootfs.sqsh").read_bytes()
    src = arc.open_source("/rootfs.sqsh")
    assert src.size == len(original)
    assert hashlib.sha256(src.read_at(0, src.size)).hexdigest() == hashlib.sha256(original).hexdigest()
    # The view is zero-copy: a window of the decoded segment, not a copy of the file.
    assert isinstance(src, SliceSource) and src.parent.size >= src.offset + src.size
    fs = open_filesystem(src)
    assert fs.fstype == "squashfs"
    tree = fx / "squash-tree"
    assert fs.read_text("/usr/lib/os-release") == (tree / "usr" / "lib" / "os-release").read_text()
    assert fs.read("/usr/bin/tool") == (tree / "usr" / "bin" / "tool").read_bytes()
    assert fs.readlink("/usr/sbin") == "bin"


def test_crc_format_and_raw_concatenation(tmp_path):
    """`-H crc` archives, and two raw archives back to back (cpio pads to 512 bytes)."""
    tree = make_sample_tree(tmp_path / "t", with_special=False, big_file_kib=20)
    _cpio_create(tree, tmp_path / "a.cpio", fmt="crc")
    extra = tmp_path / "x"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "extra.conf").write_text("extra\n")
    _cpio_create(extra, tmp_path / "b.cpio")
    blob = (tmp_path / "a.cpio").read_bytes() + (tmp_path / "b.cpio").read_bytes()
    assert (tmp_path / "a.cpio").read_bytes()[:6] == b"070702"
    arc = CpioArchive.from_source(BytesSource(blob))
    assert [s["compression"] for s in arc.segments] == ["none", "none"]
    ref = reference_listing([(tmp_path / "a.cpio").read_bytes(), (tmp_path / "b.cpio").read_bytes()])
    assert {e.path for e in arc.walk()} | {"/"} == set(ref)
    assert arc.read_text("/etc/extra.conf") == "extra\n"
    assert arc.read("/multi.bin") == (tree / "multi.bin").read_bytes()


def test_debian_initrd_matches_lsinitramfs():
    """A real initramfs-tools image (zstd, possibly with an early microcode segment)."""
    images = sorted(Path("/boot").glob("initrd.img-*"))
    if not images or not have("lsinitramfs"):
        pytest.skip("no Debian initrd: apt-get install linux-image-cloud-amd64 (initramfs-tools)")
    image = images[-1]
    arc = CpioArchive.from_source(FileSource(image))
    assert arc.complete and not arc.warnings
    names = run(["lsinitramfs", image]).stdout.decode("utf-8", "surrogateescape").splitlines()
    ref = {"/" if n == "." else "/" + n for n in names if n}
    ours = {e.path for e in arc.walk()} | {"/"}
    assert ours - {p for p in ours if _is_implied(arc, p)} == ref - {""}
    assert arc.read("/conf/arch.conf").startswith(b"DPKG_ARCH=")
    assert "/init" in ours


def _is_implied(arc: CpioArchive, path: str) -> bool:
    return arc._resolve(path, False).implied


# ---- hostile input ------------------------------------------------------------------------------

def newc(name: str | bytes, mode: int, data: bytes = b"", *, ino: int = 1, nlink: int = 1, filesize: int | None = None,
         namesize: int | None = None) -> bytes:
    """One newc entry, written by hand for inputs GNU cpio refuses to produce."""
    raw_name = name.encode() if isinstance(name, str) else name
    fields = [ino, mode, 0, 0, nlink, 1700000000, len(data) if filesize is None else filesize, 0, 0, 0, 0,
              len(raw_name) + 1 if namesize is None else namesize, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + raw_name + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def trailer() -> bytes:
    return newc("TRAILER!!!", 0)


def test_hostile_names_stay_inside():
    blob = (newc("../../etc/passwd", 0o100644, b"root:x:0:0\n") + newc("/abs/file", 0o100600, b"abs\n")
            + newc("a/../../../b", 0o100644, b"b\n") + newc("./.", 0o40700)
            + newc(b"c\0/../../../etc/shadow", 0o100644, b"c\n") + trailer())
    arc = CpioArchive.from_source(BytesSource(blob))
    assert arc.read_text("/etc/passwd") == "root:x:0:0\n"
    assert arc.read_text("/abs/file") == "abs\n"
    assert arc.read_text("/b") == "b\n"
    assert arc.stat("/").perm == 0o700            # "." sets the root's metadata
    assert arc.read_text("/c") == "c\n"             # the name ends at its first NUL, as in the kernel
    assert {e.path for e in arc.walk()} == {"/etc", "/etc/passwd", "/abs", "/abs/file", "/b", "/c"}
    assert arc.implied_dirs == 2


def test_symlinked_parent_is_followed_inside_archive():
    blob = (newc("usr", 0o40755) + newc("usr/lib", 0o40755) + newc("lib", 0o120777, b"/usr/lib")
            + newc("lib/modules.dep", 0o100644, b"dep\n") + newc("up", 0o120777, b"../../../..")
            + newc("up/escaped", 0o100644, b"x") + trailer())
    arc = CpioArchive.from_source(BytesSource(blob))
    assert arc.listdir("/usr/lib") == ["modules.dep"]
    assert arc.read_text("/lib/modules.dep") == "dep\n"
    assert arc.read("/escaped") == b"x"           # a symlink cannot lead out of the archive root


def test_truncated_segment_keeps_earlier_ones():
    fx = initramfs_fixture("xz")
    image = (fx / "initramfs.img").read_bytes()
    ext_offset = int(dict(i.split("=") for i in (fx / "offsets").read_text().split())["ext"].split(":")[0])
    cut = image[: ext_offset + (len(image) - ext_offset) // 2]
    arc = CpioArchive.from_source(BytesSource(cut))
    assert not arc.complete
    assert any("truncated" in w for w in arc.warnings), arc.warnings
    assert arc.read_text("/etc/hostname") == "sample\n"     # the override never arrived
    assert not arc.exists("/rootfs.sqsh")
    with pytest.raises(CorruptDataError, match="truncated"):
        CpioArchive.from_source(BytesSource(cut), strict=True)
    # A raw archive cut in the middle of an entry's data.
    raw = (fx / "early.seg").read_bytes()
    cut_at = raw.index(b"GenuineIntel.bin") + 100
    arc = CpioArchive.from_source(BytesSource(raw[:cut_at]))
    assert not arc.complete and any("remain" in w for w in arc.warnings)
    assert arc.stat("/kernel/x86/microcode").is_dir and not arc.exists("/kernel/x86/microcode/GenuineIntel.bin")
    with pytest.raises(CorruptDataError, match="remain"):
        CpioArchive.from_source(BytesSource(raw[:cut_at]), strict=True)
    with pytest.raises(CorruptDataError, match="truncated cpio header"):
        CpioArchive.from_source(BytesSource(raw[:60]))


def test_bad_magic_and_unsupported_formats(tmp_path):
    with pytest.raises(CorruptDataError, match="no cpio magic"):
        CpioArchive.from_source(BytesSource(b"this is not an initramfs" + b"\0" * 100))
    with pytest.raises(CorruptDataError, match="empty"):
        CpioArchive.from_source(BytesSource(b"\0" * 4096))
    tree = tmp_path / "t"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "x").write_text("x")
    _cpio_create(tree, tmp_path / "odc.cpio", fmt="odc")
    with pytest.raises(UnsupportedFeatureError, match="odc"):
        CpioArchive.from_source(FileSource(tmp_path / "odc.cpio"))
    # Misaligned raw archive after padding: the kernel calls this "broken padding".
    good = newc("a", 0o100644, b"a") + trailer()
    arc = CpioArchive.from_source(BytesSource(good + b"\0" * 3 + good))
    assert not arc.complete and any("broken padding" in w for w in arc.warnings)
    # A header with non-hex digits.
    bad = bytearray(good)
    bad[10] = ord("Z")
    with pytest.raises(CorruptDataError, match="non-hex"):
        CpioArchive.from_source(BytesSource(bytes(bad)))


def test_huge_declared_size_and_long_names():
    blob = newc("small", 0o100644, b"ok") + newc("huge", 0o100644, b"tiny", filesize=0xFFFFFFFF) + trailer()
    arc = CpioArchive.from_source(BytesSource(blob))
    assert arc.read("/small") == b"ok" and not arc.exists("/huge")
    assert any("4294967295-byte data" in w for w in arc.warnings)
    with pytest.raises(CorruptDataError):
        CpioArchive.from_source(BytesSource(blob), strict=True)
    long_name = "d/" + "n" * 5000
    arc = CpioArchive.from_source(BytesSource(newc(long_name, 0o100644, b"x") + newc("after", 0o100644, b"y") + trailer()))
    assert arc.read("/after") == b"y" and arc.listdir("/") == ["after"]
    assert any("longer than 4096" in w for w in arc.warnings)


@pytest.mark.parametrize("kind", ["zstd", "gzip", "xz", "lz4-legacy"])
def test_decompression_bomb_hits_limit(kind):
    size = 24 << 20

    def build(path: Path) -> None:
        path.write_bytes(_compress(kind, newc("zeros", 0o100644, b"\0" * size) + trailer()))

    blob = cached(f"cpio-bomb-{kind}", {"v": 1, "kind": kind, "size": size}, build, suffix=".bin").read_bytes()
    assert len(blob) < (1 << 20)
    with pytest.raises(LimitExceededError, match="more than"):
        CpioArchive.from_source(BytesSource(blob), limits=Limits(max_nested_bytes=4 << 20))
    # With room it unpacks.
    arc = CpioArchive.from_source(BytesSource(blob), limits=Limits(max_nested_bytes=32 << 20))
    assert arc.stat("/zeros").size == size


def test_entry_count_limit():
    blob = b"".join(newc(f"f{i}", 0o100644, b"") for i in range(50)) + trailer()
    with pytest.raises(LimitExceededError, match="entries"):
        CpioArchive.from_source(BytesSource(blob), limits=Limits(max_walk_entries=20))


def test_hard_links_data_on_last_and_reset_at_trailer():
    a1 = newc("a", 0o100644, b"", ino=7, nlink=2)
    a2 = newc("b", 0o100644, b"shared", ino=7, nlink=2)
    # Same inode number in the next archive is a different file (the link table is per archive).
    c = newc("c", 0o100644, b"other", ino=7, nlink=2)
    arc = CpioArchive.from_source(BytesSource(a1 + a2 + trailer() + c + trailer()))
    assert arc.read("/a") == b"shared" and arc.read("/b") == b"shared"
    assert arc.stat("/a").inode == arc.stat("/b").inode != arc.stat("/c").inode
    assert arc.read("/c") == b"other"


def test_override_rules():
    first = newc("d", 0o40755) + newc("d/x", 0o100644, b"x") + newc("f", 0o100644, b"old") + newc("e", 0o40755) + trailer()
    second = (newc("d", 0o100644, b"file over non-empty dir") + newc("f", 0o100600, b"new")
              + newc("e", 0o120777, b"f") + trailer())
    arc = CpioArchive.from_source(BytesSource(first + second))
    assert arc.stat("/d").is_dir and arc.read("/d/x") == b"x"          # rmdir of a non-empty dir fails
    assert arc.read("/f") == b"new" and arc.stat("/f").perm == 0o600
    assert arc.readlink("/e") == "f"                                   # empty dir replaced by a symlink
    assert any("non-empty directory" in w for w in arc.warnings)


# ---- PE / UKI -----------------------------------------------------------------------------------

from immutools.errors import UnsupportedImageError  # noqa: E402
from immutools.fs.pe import UnifiedKernelImage, is_pe, kernel_info, read_pe_section_list, read_pe_sections  # noqa: E402

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
UKI_RECIPE_VERSION = 1
OSREL = 'NAME="Talos"\nID=talos\nVERSION_ID=v1.9.0\nPRETTY_NAME="Talos (v1.9.0)"\nHOME_URL="https://www.talos.dev/"\n'
CMDLINE = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge= pti=on selinux=1\n"


def debian_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def _need_stub():
    if not STUB.exists() or not have("objcopy") or not have("objdump"):
        pytest.skip("needs systemd-boot-efi (linuxx64.efi.stub) and binutils")


def build_uki(out: Path, linux: Path, initrd: Path, profiles: bool) -> None:
    """The classic objcopy recipe from the systemd docs (sections at fixed VMAs after the stub)."""
    work = Path(tempfile.mkdtemp())
    try:
        (work / "osrel").write_text(OSREL)
        (work / "cmdline").write_text(CMDLINE)
        (work / "uname").write_text(kernel_info(FileSource(linux)).version or "unknown")
        # Presence is what we report; the key and signature contents are placeholders.
        (work / "pcrpkey").write_text("-----BEGIN PUBLIC KEY-----\nplaceholder\n-----END PUBLIC KEY-----\n")
        (work / "pcrsig").write_text('{"sha256":[{"pcrs":[11],"pkfp":"00","pol":"00","sig":"00"}]}')
        sections = [(".osrel", work / "osrel", 0x20000), (".cmdline", work / "cmdline", 0x30000),
                    (".uname", work / "uname", 0x40000), (".pcrpkey", work / "pcrpkey", 0x50000),
                    (".pcrsig", work / "pcrsig", 0x60000), (".linux", linux, 0x2000000), (".initrd", initrd, 0x6000000)]
        if profiles:
            # objcopy refuses duplicate names when adding, so add under unique names and rename.
            (work / "p1").write_text("ID=main\n")
            (work / "p2").write_text("ID=reset-maintenance\nTITLE=Reset to maintenance mode\n")
            (work / "c2").write_text(CMDLINE.strip() + " talos.experimental.wipe=system:EPHEMERAL,STATE\n")
            sections += [(".profil1", work / "p1", 0x7000000), (".profil2", work / "p2", 0x7010000),
                         (".cmdlin2", work / "c2", 0x7020000)]
        cmd = ["objcopy"]
        for name, path, vma in sections:
            cmd += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
        run(cmd + [STUB, work / "uki.efi"])
        if profiles:
            run(["objcopy", "--rename-section", ".profil1=.profile", "--rename-section", ".profil2=.profile",
                 "--rename-section", ".cmdlin2=.cmdline", work / "uki.efi", out])
        else:
            shutil.move(work / "uki.efi", out)
    finally:
        shutil.rmtree(work)


def uki_fixture(profiles: bool = False) -> tuple[Path, Path, Path]:
    _need_stub()
    linux = debian_kernel() or STUB     # without a kernel, the stub itself stands in as the payload
    initrd_dir = initramfs_fixture("zstd", "xz")
    initrd = initrd_dir / "initramfs.img"
    recipe = {"v": UKI_RECIPE_VERSION, "stub": STUB.stat().st_size, "linux": str(linux), "linux_size": linux.stat().st_size,
              "initrd": str(initrd), "profiles": profiles}
    path = cached(f"uki-{'multi' if profiles else 'single'}", recipe, lambda p: build_uki(p, linux, initrd, profiles), suffix=".efi")
    return path, linux, initrd


_OBJDUMP_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+2\*\*\d+")


def objdump_sections(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for line in run(["objdump", "-h", path]).stdout.decode().splitlines():
        m = _OBJDUMP_LINE.match(line)
        if m:
            out.append((m[2], int(m[6], 16), int(m[3], 16)))   # name, file offset, size
    return out


def objcopy_section(path: Path, name: str, tmp: Path) -> bytes:
    dest = tmp / f"section{name}"
    run(["objcopy", "-O", "binary", f"--only-section={name}", path, dest])
    return dest.read_bytes()


def test_uki_sections_match_objdump(tmp_path):
    uki_path, linux, initrd = uki_fixture()
    src = FileSource(uki_path)
    assert is_pe(src.read_at(0, 4096))
    ours = [(s.name, s.offset, s.size) for s in read_pe_section_list(src)]
    assert ours == objdump_sections(uki_path)
    uki = UnifiedKernelImage(src)
    assert uki.is_uki and not uki.signed
    assert read_pe_sections(src) == uki.sections
    # Section payloads equal what objcopy extracts.
    for name in (".osrel", ".cmdline", ".uname", ".sbat", ".initrd"):
        off, size = uki.sections[name]
        assert src.read_at(off, size) == objcopy_section(uki_path, name, tmp_path), name
    assert uki.osrel["ID"] == "talos" and uki.osrel["PRETTY_NAME"] == "Talos (v1.9.0)"
    assert uki.osrel["HOME_URL"] == "https://www.talos.dev/"
    assert uki.cmdline == CMDLINE.strip()
    assert uki.sbat.startswith("sbat,1,") and "systemd" in uki.sbat
    assert uki.has_pcrpkey and uki.has_pcrsig and not uki.has_splash
    # .linux / .initrd are zero-copy slices of the image with the original bytes.
    assert uki.linux.parent is src and uki.linux.size == linux.stat().st_size
    assert hashlib.sha256(uki.linux.read_at(0, uki.linux.size)).digest() == hashlib.sha256(linux.read_bytes()).digest()
    assert uki.initrd.read_at(0, uki.initrd.size) == initrd.read_bytes()
    # Nested all the way: UKI -> initrd -> cpio -> squashfs.
    arc = CpioArchive.from_source(uki.initrd)
    fs = open_filesystem(arc.open_source("/rootfs.sqsh"))
    assert fs.read_text("/usr/lib/os-release").startswith('NAME="Layer"')


def test_uki_kernel_version_matches_file():
    uki_path, linux, _ = uki_fixture()
    if linux == STUB or not have("file"):
        pytest.skip("needs a Debian kernel in /boot (apt-get install linux-image-cloud-amd64) and file")
    # `file` reads the same boot-protocol header: "... bzImage, version 6.1.0-... (builder) #1 SMP ..."
    described = run(["file", "-b", linux]).stdout.decode()
    m = re.search(r"version (\S+) ", described)
    assert m
    info = kernel_info(FileSource(linux))
    assert info.format == "bzImage" and info.version == m[1]
    assert described.split("version ", 1)[1].startswith(info.version_string.split(" (")[0])
    assert info.details["efi_stub"] is True
    uki_info = kernel_info(FileSource(uki_path))
    assert uki_info.format == "uki" and uki_info.version == info.version
    assert UnifiedKernelImage(FileSource(uki_path)).uname == info.version


def test_signed_debian_kernel_is_pe_not_uki():
    kernel = debian_kernel()
    if kernel is None or not have("objdump"):
        pytest.skip("no Debian kernel in /boot: apt-get install linux-image-cloud-amd64")
    src = FileSource(kernel)
    assert [(s.name, s.offset, s.size) for s in read_pe_section_list(src)] == objdump_sections(kernel)
    img = UnifiedKernelImage(src)
    assert not img.is_uki and img.signed and img.signature_size > 0
    # The Authenticode table is what `sbverify --list` / osslsigncode would read; check its header
    # (WIN_CERTIFICATE: dwLength, wRevision 0x0200, wCertificateType 2 = PKCS#7).
    import pefile
    sec = pefile.PE(str(kernel), fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    length, revision, ctype = struct.unpack("<IHH", src.read_at(sec.VirtualAddress, 8))
    assert (revision, ctype) == (0x200, 2) and length <= img.signature_size


def test_multi_profile_uki():
    uki_path, _, _ = uki_fixture(profiles=True)
    names = [s[0] for s in objdump_sections(uki_path)]
    assert names.count(".profile") == 2 and names.count(".cmdline") == 2
    uki = UnifiedKernelImage(FileSource(uki_path))
    assert uki.cmdline == CMDLINE.strip()          # the base section, not the profile's override
    assert [p.info.get("ID") for p in uki.profiles] == ["main", "reset-maintenance"]
    assert uki.profiles[0].sections == {}
    off, size = uki.profiles[1].sections[".cmdline"]
    assert FileSource(uki_path).read_at(off, size).decode().endswith("wipe=system:EPHEMERAL,STATE\n")


def test_hostile_pe(tmp_path):
    uki_path, _, _ = uki_fixture()
    data = uki_path.read_bytes()
    cut = BytesSource(data[: len(data) // 2])        # .linux runs past the end
    with pytest.raises(CorruptDataError, match=r"\.linux|\.initrd"):
        UnifiedKernelImage(cut)
    with pytest.raises(UnsupportedImageError, match="MZ"):
        UnifiedKernelImage(BytesSource(b"\0" * 4096))
    bad = bytearray(data[:4096])
    struct.pack_into("<I", bad, 0x3C, 0x7FFFFFF0)      # e_lfanew far beyond the file
    with pytest.raises(UnsupportedImageError, match="PE signature"):
        read_pe_sections(BytesSource(bytes(bad)))
    bad = bytearray(data)
    e_lfanew = struct.unpack_from("<I", bad, 0x3C)[0]
    struct.pack_into("<H", bad, e_lfanew + 6, 60000)   # NumberOfSections
    with pytest.raises(CorruptDataError, match="sections"):
        read_pe_sections(BytesSource(bytes(bad)))
    assert kernel_info(BytesSource(b"\0" * 4096)).format == "unknown"
    assert kernel_info(BytesSource(data[:4096])).format == "unknown"   # PE whose sections are missing


def _arm64_image(banner: bytes) -> bytes:
    """An arm64 Image header (Documentation/arch/arm64/booting.rst) with a kernel banner further in.

    Built by hand: no arm64 kernel is installable on an amd64 Debian without adding a foreign
    architecture, and the header is 64 documented bytes."""
    head = bytearray(64)
    head[0:4] = b"MZ\x00\x91"                            # `ccmp`-style branch and EFI MZ magic
    struct.pack_into("<QQQ", head, 8, 0, 0x2000000, 0x0A)  # text_offset, image_size, flags (LE, 4K)
    head[0x38:0x3C] = b"ARM\x64"
    body = bytearray(3 << 20)
    body[2 << 20 : (2 << 20) + len(banner)] = banner
    return bytes(head) + bytes(body)


def test_kernel_info_arm64_image_zboot_and_gzip():
    banner = b"Linux version 6.12.5-talos (@buildkitsandbox) (gcc (GCC) 14.2.0) #1 SMP\n\0"
    image = _arm64_image(banner)
    info = kernel_info(BytesSource(image))
    assert info.format == "arm64-image" and info.version == "6.12.5-talos"
    assert info.details["image_size"] == 0x2000000
    gz = _compress("gzip", image)
    info = kernel_info(BytesSource(gz))
    assert info.format == "arm64-image" and info.version == "6.12.5-talos" and info.details["compression"] == "gzip"
    # EFI zboot: MZ, "zimg", payload offset and size, compression name (zboot-header.S).
    payload = _compress("zstd", image)
    zboot = bytearray(0x400)
    zboot[0:2] = b"MZ"
    zboot[4:8] = b"zimg"
    struct.pack_into("<II", zboot, 8, 0x400, len(payload))
    zboot[24:30] = b"zstd22"
    info = kernel_info(BytesSource(bytes(zboot) + payload))
    assert info.format == "efi-zboot" and info.version == "6.12.5-talos"
    assert info.details["compression"] == "zstd22" and info.details["inner"] == "arm64-image"
    # A zboot whose payload is a bomb against a small limit: no version, no exception.
    assert kernel_info(BytesSource(bytes(zboot) + payload), Limits(max_nested_bytes=1 << 20)).version is None


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_decompress_one_stops_at_stream_end(kind):
    """Each tool's stream decodes to the input, and exactly the stream's bytes are consumed."""
    from immutools.fs.compressed import decompress_one, detect_compression

    payload = hashlib.sha256(kind.encode()).digest() * 2000 + bytes(300000)
    stream = _compress(kind, payload)
    after = b"\0" * 8 if kind == "lz4-legacy" else b"\x28\xb5\x2f\xfdMORE"   # lz4 -l has no end marker
    buf = b"0707" + stream + after
    assert detect_compression(buf[4:]) == kind
    out, used = decompress_one(buf, 4, kind, 1 << 20)
    assert bytes(out) == payload and used == len(stream)
    with pytest.raises(CorruptDataError):
        decompress_one(buf[: 4 + len(stream) // 2], 4, kind, 1 << 20)
