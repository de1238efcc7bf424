"""``identify()`` against util-linux ``blkid -p -o export`` on the same images: type, label, uuid.

blkid names some types differently (crypto_LUKS, DM_verity_hash) and knows nothing of talos META;
for Flatcar's read-only ext2 it says ext4 (unknown ro_compat bits) with SEC_TYPE=ext2, where we say
ext2 on purpose (see probe_ext). erofs-utils 1.5 cannot set a label, so erofs compares type and uuid.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from immutools.fs.probe import EXT_RO_COMPAT_FLATCAR_RO, identify
from immutools.image.source import FileSource
from tests.builders import cached, have, make_sample_tree, run

BLKID_TYPES = {"crypto_LUKS": "luks", "DM_verity_hash": "dm-verity"}
KEY = b"0123456789abcdef" * 4


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _tree(out: Path) -> Path:
    return make_sample_tree(out.with_name(out.name + ".tree"))


def _rm_tree(out: Path) -> None:
    subprocess.run(["rm", "-rf", str(out.with_name(out.name + ".tree"))], check=True)


def _keyfile(out: Path) -> Path:
    key = out.with_name(out.name + ".key")
    key.write_bytes(KEY)
    return key


def _luks(version: int, label: str | None):
    def build(out: Path) -> None:
        _sparse(out, 20 << 20)
        key = _keyfile(out)
        try:
            args = ["cryptsetup", "luksFormat", "-q", "--type", f"luks{version}", "--key-file", key,
                    "--pbkdf-force-iterations", "1000"]
            if version == 2:
                args += ["--pbkdf", "pbkdf2"]
            if label:
                args += ["--label", label]
            run(args + [out])
        finally:
            key.unlink()
    return build


def _verity(out: Path) -> None:
    data = out.with_name(out.name + ".data")
    _sparse(data, 4 << 20)
    try:
        _sparse(out, 0)
        run(["veritysetup", "format", data, out])
    finally:
        data.unlink()


def _mkfs(cmd: list, size: int, tree: bool = False):
    def build(out: Path) -> None:
        _sparse(out, size)
        args = [a if a != "{tree}" else _tree(out) for a in cmd]
        try:
            run([*args, out])
        finally:
            if tree:
                _rm_tree(out)
    return build


def _squashfs(out: Path) -> None:
    try:
        run(["mksquashfs", _tree(out), out, "-noappend", "-quiet"])
    finally:
        _rm_tree(out)


def _erofs(out: Path) -> None:
    try:
        run(["mkfs.erofs", "-U", "6a3c56fb-3a8e-4f0c-9a1e-2f2b0b8ad0e4", out, _tree(out)])
    finally:
        _rm_tree(out)


def _swap(out: Path) -> None:
    _sparse(out, 16 << 20)
    run(["mkswap", "-L", "swaplab", "-U", "2f1d6a52-5a55-4d4e-a0a8-9d3f7b0e6c11", out])


def _ext2_read_only_hack(out: Path) -> None:
    _sparse(out, 8 << 20)
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-L", "USR-A", out])
    ro_compat = identify(FileSource(out)).details["feature_ro_compat"]
    run(["debugfs", "-w", "-R", f"ssv feature_ro_compat {ro_compat | EXT_RO_COMPAT_FLATCAR_RO:#x}", out])


CASES = {
    # name: (tool, builder)
    "ext2": ("mke2fs", _mkfs(["mke2fs", "-q", "-F", "-t", "ext2", "-L", "lab-ext2"], 8 << 20)),
    "ext3": ("mke2fs", _mkfs(["mke2fs", "-q", "-F", "-t", "ext3", "-L", "lab-ext3"], 8 << 20)),
    "ext4": ("mke2fs", _mkfs(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "lab-ext4", "-O", "metadata_csum"], 16 << 20)),
    "ext4-64bit-4k": ("mke2fs", _mkfs(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "64bit", "-L", "big"], 64 << 20)),
    "ext2-flatcar-ro": ("debugfs", _ext2_read_only_hack),
    "xfs": ("mkfs.xfs", _mkfs(["mkfs.xfs", "-q", "-f", "-L", "xfslab"], 320 << 20)),
    "btrfs": ("mkfs.btrfs", _mkfs(["mkfs.btrfs", "-q", "-f", "-L", "btrlab"], 128 << 20)),
    "vfat12": ("mkfs.vfat", _mkfs(["mkfs.vfat", "-F", "12", "-n", "FAT12LAB"], 2 << 20)),
    "vfat16": ("mkfs.vfat", _mkfs(["mkfs.vfat", "-F", "16", "-n", "FAT16LAB"], 32 << 20)),
    "vfat32": ("mkfs.vfat", _mkfs(["mkfs.vfat", "-F", "32", "-n", "FAT32LAB"], 64 << 20)),
    "vfat-nolabel": ("mkfs.vfat", _mkfs(["mkfs.vfat"], 8 << 20)),
    "squashfs": ("mksquashfs", _squashfs),
    "erofs": ("mkfs.erofs", _erofs),
    "swap": ("mkswap", _swap),
    "luks1": ("cryptsetup", _luks(1, None)),
    "luks2": ("cryptsetup", _luks(2, "cryptlab")),
    "verity": ("veritysetup", _verity),
    "zero": ("truncate", lambda out: _sparse(out, 4 << 20)),
}


def blkid(path: Path) -> dict[str, str]:
    """``blkid -p -o export``; {} when it finds nothing (exit 2)."""
    proc = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True)
    if proc.returncode == 2:
        return {}
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    tool, build = CASES[request.param]
    for needed in (tool, "blkid"):
        if not have(needed):
            pytest.skip(f"missing tool: {needed}")
    return request.param, cached(f"probe-{request.param}", {"case": request.param, "v": 1, "ro_bits": EXT_RO_COMPAT_FLATCAR_RO}, build)


def test_identify_matches_blkid(case):
    name, image = case
    ours = identify(FileSource(image))
    theirs = blkid(image)
    if not theirs:
        assert name == "zero" and ours.fstype == "zero"
        return
    expected_type = BLKID_TYPES.get(theirs["TYPE"], theirs["TYPE"])
    if name == "ext2-flatcar-ro":
        # blkid: an unknown ro_compat bit makes it "ext4" (SEC_TYPE ext2); we keep ext2 and flag it.
        assert theirs["TYPE"] == "ext4" and theirs["SEC_TYPE"] == "ext2"
        expected_type = "ext2"
        assert ours.details["read_only_hack"]
    assert ours.fstype == expected_type
    assert ours.label == theirs.get("LABEL")
    assert (ours.uuid or "").lower() == theirs.get("UUID", "").lower()
    if "VERSION" in theirs:
        if ours.fstype == "vfat":
            assert ours.details["fat"] == theirs["VERSION"]
        elif ours.fstype in ("luks", "squashfs"):
            assert str(ours.details["version"]) == theirs["VERSION"]
        elif ours.fstype == "dm-verity":
            assert str(ours.details["version"]) == theirs["VERSION"]


def test_identify_sizes_are_plausible(case):
    name, image = case
    ours = identify(FileSource(image))
    if ours.size is not None and name != "zero":
        assert 0 < ours.size <= os.path.getsize(image) or ours.fstype == "squashfs"


def test_verity_superblock_matches_veritysetup_dump():
    if not have("veritysetup"):
        pytest.skip("missing tool: veritysetup")
    image = cached("probe-verity", {"case": "verity", "v": 1}, _verity)
    dump = run(["veritysetup", "dump", image]).stdout.decode()
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in dump.splitlines() if ":" in line)}
    sb = identify(FileSource(image)).details
    assert sb["uuid"] == fields["UUID"]
    assert sb["hash_type"] == int(fields["Hash type"])
    assert sb["data_blocks"] == int(fields["Data blocks"])
    assert sb["data_block_size"] == int(fields["Data block size"])
    assert sb["hash_block_size"] == int(fields["Hash block size"])
    assert sb["algorithm"] == fields["Hash algorithm"]
    assert sb["salt"] == fields["Salt"]


def test_truncated_and_tiny_inputs_do_not_crash(tmp_path):
    for size in (0, 1, 511, 1024, 4096, 65536 + 100):
        path = tmp_path / f"tiny-{size}"
        path.write_bytes(b"\xff" * size)
        ident = identify(FileSource(path))
        assert ident.fstype in ("zero", "unknown", "unreadable")


@pytest.mark.parametrize("magic", [b"LUKS\xba\xbe", b"XFSB", b"hsqs", b"\xeb\x58\x90"])
def test_a_magic_cut_short_is_not_a_filesystem(magic, tmp_path):
    """Found by fuzzing (fs-ext4, fs-btrfs targets): a partition of 6 or 7 bytes holding the LUKS
    magic made the LUKS probe read past its end (struct.error). Every magic followed by too few
    bytes for its header is rejected and said so."""
    for extra in range(0, 3):
        path = tmp_path / f"cut-{extra}"
        path.write_bytes(magic + b"\x00" * extra)
        ident = identify(FileSource(path))
        assert ident.fstype == "unknown", ident


# ---- a magic number alone is not a filesystem ----------------------------------------------------
# The reference for "is this superblock mountable" is each filesystem's own checker on the same
# bytes; identify() must agree with it on the real image, on a copy with one geometry field broken,
# and on a block of zeros carrying only the magic number.

REFERENCE_CHECK = {
    "ext4": ["dumpe2fs", "-h"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "squashfs": ["unsquashfs", "-l"],
    "erofs": ["dump.erofs"],
    "vfat32": ["fsck.fat", "-n"],
    "verity": ["veritysetup", "dump"],
    "luks1": ["cryptsetup", "luksDump"],
    "luks2": ["cryptsetup", "luksDump"],
}
# (offset of the magic, the magic) for the magic-only files
MAGIC_AT = {
    "ext4": (1024 + 0x38, struct.pack("<H", 0xEF53)),
    "xfs": (0, b"XFSB"),
    "btrfs": (0x10040, b"_BHRfS_M"),
    "squashfs": (0, b"hsqs"),
    "erofs": (1024, struct.pack("<I", 0xE0F5E1E2)),
    "vfat32": (0, b"\xeb\x58\x90"),
    "verity": (0, b"verity\0\0"),
    "luks1": (0, b"LUKS\xba\xbe\x00\x01"),
    "luks2": (0, b"LUKS\xba\xbe\x00\x02"),
}
# One broken field each: (what, offset, struct format, value) -- the superblock fields the kernel
# checks before mounting (see immutools/fs/probe.py).
BROKEN_FIELDS = {
    "ext4": [("log block size", 1024 + 0x18, "<I", 7), ("blocks per group", 1024 + 0x20, "<I", 0),
             ("inodes per group", 1024 + 0x28, "<I", 0), ("inode size", 1024 + 0x58, "<H", 100),
             ("first data block", 1024 + 0x14, "<I", 1 << 30), ("block count", 1024 + 4, "<I", 0),
             ("inode count", 1024, "<I", 0)],
    "xfs": [("block size", 4, ">I", 3000), ("sector size", 102, ">H", 100), ("AG count", 88, ">I", 0),
            ("AG blocks", 84, ">I", 0), ("version", 100, ">H", 0x34B1), ("data blocks", 8, ">Q", 0)],
    "btrfs": [("superblock bytenr", 0x10030, "<Q", 0), ("sector size", 0x10090, "<I", 1000),
              ("node size", 0x10094, "<I", 1000), ("total bytes", 0x10070, "<Q", 0)],
    "squashfs": [("block size", 12, "<I", 3000), ("block log", 22, "<H", 5), ("major version", 28, "<H", 7),
                 ("bytes used", 40, "<Q", 0), ("inode count", 4, "<I", 0)],
    "erofs": [("block size bits 30", 1024 + 0x0C, "<B", 30), ("block size bits 5", 1024 + 0x0C, "<B", 5)],
    "vfat32": [("reserved sectors", 14, "<H", 0), ("FAT count", 16, "<B", 0), ("FAT32 FAT size", 36, "<I", 0),
               ("total sectors", 32, "<I", 10)],
}
FSTYPE_OF = {"vfat32": "vfat", "verity": "dm-verity", "luks1": "luks", "luks2": "luks"}


def _reference_accepts(kind: str, path: Path) -> bool:
    return subprocess.run(REFERENCE_CHECK[kind] + [str(path)], capture_output=True, timeout=300).returncode == 0


def _case_image(name: str) -> Path:
    tool, build = CASES[name]
    for needed in (tool, REFERENCE_CHECK[name][0]):
        if not have(needed):
            pytest.skip(f"missing tool: {needed}")
    return cached(f"probe-{name}", {"case": name, "v": 1, "ro_bits": EXT_RO_COMPAT_FLATCAR_RO}, build)


def _scan_exit(path: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "immutools", "scan", str(path), "--format", "json"],
                          capture_output=True, timeout=120)
    return proc.returncode, proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("kind", sorted(REFERENCE_CHECK))
def test_magic_alone_is_not_a_filesystem(kind, tmp_path):
    real = _case_image(kind)
    assert _reference_accepts(kind, real)
    assert identify(FileSource(real)).fstype == FSTYPE_OF.get(kind, kind)
    offset, magic = MAGIC_AT[kind]
    fake = tmp_path / f"{kind}-magic-only.img"
    blob = bytearray(0x11000)
    blob[offset : offset + len(magic)] = magic
    if kind == "vfat32":                         # the boot-sector signature and the FAT32 tag too
        blob[510:512] = b"\x55\xaa"
        blob[82:87] = b"FAT32"
        struct.pack_into("<HB", blob, 11, 512, 1)
    fake.write_bytes(bytes(blob))
    assert not _reference_accepts(kind, fake)
    ident = identify(FileSource(fake))
    assert ident.fstype == "unknown" and ident.details["rejected"], ident
    # A whole image that is nothing but a magic number is not a readable disk image: exit 3, one line.
    code, err = _scan_exit(fake)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "magic, but" in err


@pytest.mark.parametrize("kind,field", [(k, f[0]) for k, fields in sorted(BROKEN_FIELDS.items()) for f in fields])
def test_broken_geometry_field_agrees_with_reference_checker(kind, field, tmp_path):
    real = _case_image(kind)
    _what, offset, fmt, value = next(f for f in BROKEN_FIELDS[kind] if f[0] == field)
    broken = tmp_path / f"{kind}.img"
    subprocess.run(["cp", "--sparse=always", str(real), str(broken)], check=True)
    with open(broken, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    assert not _reference_accepts(kind, broken), f"{REFERENCE_CHECK[kind][0]} accepts a broken {field}"
    ident = identify(FileSource(broken))
    assert ident.fstype == "unknown" and ident.details["rejected"], ident


def test_plausible_superblock_that_cannot_be_read_is_exit_3(tmp_path):
    """A whole-disk ext4 whose superblock is fine but whose inode table is cut off: nothing is
    readable, so the scan fails (exit 3) instead of reporting an empty success."""
    real = _case_image("ext4")
    cut = tmp_path / "cut.img"
    cut.write_bytes(FileSource(real).read_at(0, 4096))
    assert identify(FileSource(cut)).fstype == "ext4"
    code, err = _scan_exit(cut)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "not a readable disk image" in err, err
