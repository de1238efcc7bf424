"""Image access: compressed raw images and VM disk containers, made with the real tools.

Reference for every format: the raw disk image we built (sgdisk + mke2fs -d + mkfs.vfat), and for
containers also ``qemu-img convert -f FMT -O raw`` of the container (VHD rounds its size up to a
CHS geometry, so there the reference is qemu's conversion and the original is a prefix).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

from builders import cached, have, make_sample_tree, run, sgdisk_layout, sha256_file, write_at
from immutools.errors import (
    CorruptDataError,
    ImageIOError,
    ImmutoolsError,
    LimitExceededError,
    UnsupportedFeatureError,
    UnsupportedImageError,
)
from immutools.image import OpenedImage, open_image, sniff
from immutools.image.progress import Progress
from immutools.image.source import ReadStats
from immutools.limits import Limits

MiB = 1024 * 1024
DISK_SIZE = 64 * MiB
P1_START = 2048  # sectors
P1_SECTORS = 24 * MiB // 512
P2_START = P1_START + P1_SECTORS
P2_SECTORS = 8 * MiB // 512

# ------------------------------------------------------------------------------------------------
# Fixtures (cached on disk by recipe)
# ------------------------------------------------------------------------------------------------


def _build_base(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = make_sample_tree(tmp / "tree")
        ext4 = tmp / "p1.ext4"
        run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-U", "6b9a54a0-5f7e-4c0b-9a55-0c6f1c1e2d31",
             "-E", "root_owner=0:0", "-d", tree, ext4, f"{P1_SECTORS // 8}"])
        vfat = tmp / "p2.vfat"
        with open(vfat, "wb") as f:
            f.truncate(P2_SECTORS * 512)
        run(["mkfs.vfat", "-i", "12345678", "-n", "ESP", vfat])
        run(["mcopy", "-i", vfat, tree / "usr" / "share" / "doc" / "big.txt", "::big.txt"])
        sgdisk_layout(path, DISK_SIZE, [
            {"number": 1, "start": P1_START, "size": P1_SECTORS, "type": "8300", "label": "root",
             "guid": "0fc63daf-8483-4772-8e79-3d69d8477de4"},
            {"number": 2, "start": P2_START, "size": P2_SECTORS, "type": "ef00", "label": "esp",
             "guid": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"},
        ], disk_guid="5a1e0000-0000-4000-8000-000000000001")
        write_at(path, P1_START * 512, ext4)
        write_at(path, P2_START * 512, vfat)


@lru_cache(None)
def base_image() -> Path:
    return cached("image-base", {"v": 1, "size": DISK_SIZE, "p1": P1_SECTORS, "p2": P2_SECTORS}, _build_base)


@lru_cache(None)
def base_sha() -> str:
    return sha256_file(base_image())


def _pipe(cmd: list, src: Path, dst) -> None:
    with open(src, "rb") as fin:
        proc = subprocess.run(list(map(str, cmd)), stdin=fin, stdout=dst, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.decode(errors='replace')}")


def _compress_whole(cmd: list):
    def build(path: Path) -> None:
        with open(path, "wb") as out:
            _pipe(cmd, base_image(), out)

    return build


def _compress_split(cmd: list, parts: int = 2):
    """Compress the image in ``parts`` pieces and concatenate the outputs (multi-member input)."""

    def build(path: Path) -> None:
        data = base_image().read_bytes()
        step = -(-len(data) // parts)
        with tempfile.TemporaryDirectory() as tmp, open(path, "wb") as out:
            for i in range(parts):
                piece = Path(tmp, f"piece{i}")
                piece.write_bytes(data[i * step : (i + 1) * step])
                _pipe(cmd, piece, out)

    return build


# name -> (codec, tool needed, build)
COMPRESSED = {
    "gzip": ("gzip", "gzip", _compress_whole(["gzip", "-c", "-n"])),
    "gzip-members": ("gzip", "gzip", _compress_split(["gzip", "-c", "-n"], 3)),
    "pigz": ("gzip", "pigz", _compress_whole(["pigz", "-c", "-n", "-p", "2"])),
    "bzip2": ("bzip2", "bzip2", _compress_whole(["bzip2", "-c"])),
    "bzip2-streams": ("bzip2", "bzip2", _compress_split(["bzip2", "-c"], 2)),
    "pbzip2": ("bzip2", "pbzip2", _compress_whole(["pbzip2", "-c", "-p2"])),
    "xz": ("xz", "xz", _compress_whole(["xz", "-c", "-T1"])),
    "xz-mt": ("xz", "xz", _compress_whole(["xz", "-c", "-T2", "--block-size=4MiB"])),
    "xz-streams": ("xz", "xz", _compress_split(["xz", "-c", "-T1"], 2)),
    "zstd": ("zstd", "zstd", _compress_whole(["zstd", "-c", "-q"])),
    "zstd-frames": ("zstd", "zstd", _compress_split(["zstd", "-c", "-q"], 3)),
    "pzstd": ("zstd", "pzstd", _compress_whole(["pzstd", "-c", "-q", "-p", "2"])),
    "lz4": ("lz4", "lz4", _compress_whole(["lz4", "-c", "-q"])),
    "lz4-frames": ("lz4", "lz4", _compress_split(["lz4", "-c", "-q"], 2)),
    "lz4-legacy": ("lz4", "lz4", _compress_whole(["lz4", "-c", "-q", "-l"])),
}


def compressed_image(name: str) -> Path:
    codec, tool, build = COMPRESSED[name]
    if not have(tool):
        pytest.skip(f"{tool} not installed")
    return cached(f"image-{name}", {"base": base_image().name, "variant": name}, build, suffix=".bin")


# name -> (qemu format, qemu -o options or None, extra convert flags)
CONTAINERS = {
    "qcow2": ("qcow2", None, []),
    "qcow2-compressed": ("qcow2", None, ["-c"]),
    "qcow2-zstd": ("qcow2", "compression_type=zstd", ["-c"]),
    "qcow2-v2": ("qcow2", "compat=0.10", []),
    "qcow2-extl2": ("qcow2", "extended_l2=on", []),
    "qcow2-2m-clusters": ("qcow2", "cluster_size=2M", []),
    "vmdk-sparse": ("vmdk", None, []),
    "vmdk-stream": ("vmdk", "subformat=streamOptimized", []),
    "vmdk-flat": ("vmdk", "subformat=monolithicFlat", []),
    "vmdk-2gb-sparse": ("vmdk", "subformat=twoGbMaxExtentSparse", []),
    "vmdk-2gb-flat": ("vmdk", "subformat=twoGbMaxExtentFlat", []),
    "vhd-fixed": ("vpc", "subformat=fixed", []),
    "vhd-dynamic": ("vpc", "subformat=dynamic", []),
    "vhdx-dynamic": ("vhdx", "subformat=dynamic", []),
    "vhdx-fixed": ("vhdx", "subformat=fixed", []),
    "vhdx-1m-blocks": ("vhdx", "block_size=1M", []),
}
CONTAINER_NAME = {"qcow2": "qcow2", "vmdk": "vmdk", "vpc": "vhd", "vhdx": "vhdx"}


def container_dir(name: str) -> Path:
    """A directory holding ``disk`` (the container; descriptor formats put their extents beside it)."""
    fmt, options, flags = CONTAINERS[name]

    def build(path: Path) -> None:
        path.mkdir()
        cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *flags]
        if options:
            cmd += ["-o", options]
        run(cmd + [base_image(), path / "disk"])

    return cached(f"image-{name}", {"base": base_image().name, "variant": CONTAINERS[name]}, build, suffix=".d")


def reference_sha(name: str) -> str:
    """sha256 of qemu-img's own raw conversion of the container."""
    fmt = CONTAINERS[name][0]
    disk = container_dir(name) / "disk"

    def build(path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "ref.raw")
            run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", disk, out])
            path.write_text(f"{sha256_file(out)} {out.stat().st_size}\n")

    return cached(f"image-{name}-ref", {"container": container_dir(name).name}, build, suffix=".sha256").read_text().split()[0]


def source_sha(source, chunk: int = 4 * MiB) -> str:
    h = hashlib.sha256()
    off = 0
    while off < source.size:
        data = source.read_at(off, chunk)
        assert data, f"short read at {off}"
        h.update(data)
        off += len(data)
    return h.hexdigest()


def prefix_sha(source, length: int) -> str:
    h = hashlib.sha256()
    off = 0
    while off < length:
        data = source.read_at(off, min(4 * MiB, length - off))
        h.update(data)
        off += len(data)
    return h.hexdigest()


def open_fds_for(path: Path) -> dict[int, int]:
    """fd -> open flags (from /proc/self/fdinfo) for every open descriptor of ``path``."""
    target = os.path.realpath(path)
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                for line in Path(f"/proc/self/fdinfo/{name}").read_text().splitlines():
                    if line.startswith("flags:"):
                        found[int(name)] = int(line.split()[1], 8)
        except OSError:
            continue
    return found


@pytest.fixture
def tmpdir_empty(tmp_path):
    d = tmp_path / "tmp"
    d.mkdir()
    yield d
    assert list(d.iterdir()) == [], "temporary files left behind"


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------------------------------
# Raw and compressed raw images
# ------------------------------------------------------------------------------------------------


def test_raw_image_reads_as_is():
    path = base_image()
    before = sha256_file(path)
    stats = ReadStats()
    with open_image(path, stats=stats) as img:
        assert (img.container, img.compression, img.decompressed_bytes) == ("raw", None, 0)
        assert img.file_size == DISK_SIZE == img.source.size
        fds = open_fds_for(path)
        assert fds and all(flags & os.O_ACCMODE == os.O_RDONLY for flags in fds.values())
        assert source_sha(img.source) == before
    assert stats.bytes_read >= DISK_SIZE
    assert open_fds_for(path) == {}
    assert sha256_file(path) == before


@pytest.mark.parametrize("name", list(COMPRESSED))
def test_compressed_image_equals_raw(name, tmpdir_empty):
    path = compressed_image(name)
    codec = COMPRESSED[name][0]
    before = sha256_file(path)
    stats = ReadStats()
    img = open_image(path, stats=stats, tmpdir=str(tmpdir_empty), progress=False, cache=False, random_access=False)
    try:
        assert (img.container, img.compression, img.access, img.cache) == ("raw", codec, "decompressed", "off")
        assert img.decompressed_bytes == DISK_SIZE == img.source.size
        assert img.file_size == path.stat().st_size
        assert stats.bytes_decompressed == DISK_SIZE
        assert img.warnings == []
        # The decompressed copy is sparse, and already anonymous (no name left in tmpdir).
        st = os.fstat(img.source.fileno())
        assert st.st_size == DISK_SIZE
        assert st.st_blocks * 512 < DISK_SIZE // 4, f"temp file not sparse: {st.st_blocks * 512} bytes allocated"
        assert list(tmpdir_empty.iterdir()) == []
        assert all(flags & os.O_ACCMODE == os.O_RDONLY for flags in open_fds_for(path).values())
        assert source_sha(img.source) == base_sha()
    finally:
        img.close()
    assert img.source.closed
    img.close()  # idempotent
    assert sha256_file(path) == before


def test_decompressed_temp_file_released_when_forgotten(tmpdir_empty):
    img = open_image(compressed_image("zstd"), tmpdir=str(tmpdir_empty), progress=False, cache=False)
    fd = img.source.fileno()
    assert os.fstat(fd).st_size == DISK_SIZE
    del img
    gc.collect()
    with pytest.raises(OSError) as err:
        os.fstat(fd)
    assert err.value.errno == errno.EBADF


def test_empty_gpt_disk_allocates_only_its_headers(tmp_path, tmpdir_empty):
    # A 256 MiB disk holding only a GPT compresses to a few KiB; the decompressed copy must cost
    # data blocks only for the two GPT copies (64 KiB sparse granularity each).
    disk = tmp_path / "empty.raw"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    run(["sgdisk", "-o", disk])
    path = tmp_path / "empty.zst"
    with open(path, "wb") as out:
        _pipe(["zstd", "-q", "-c", "-1"], disk, out)
    assert path.stat().st_size < 64 * 1024
    with open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert img.source.size == 256 * MiB
        assert os.fstat(img.source.fileno()).st_blocks * 512 <= 2 * 64 * 1024
        assert img.source.read_at(100 * MiB, 4096) == bytes(4096)
        assert source_sha(img.source) == sha256_file(disk)


def test_compressed_qcow2(tmp_path, tmpdir_empty):
    disk = container_dir("qcow2") / "disk"
    path = tmp_path / "disk.qcow2.xz"
    with open(path, "wb") as out:
        _pipe(["xz", "-c", "-T1", "-0"], disk, out)
    with open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert (img.container, img.compression) == ("qcow2", "xz")
        assert img.decompressed_bytes == disk.stat().st_size
        assert img.source.size == DISK_SIZE
        assert source_sha(img.source) == base_sha()


def test_lz4_with_leading_skippable_frame(tmp_path, tmpdir_empty):
    # lz4 frame format: a skippable frame (magic 0x184D2A5?, u32 size, payload) may precede a frame.
    path = tmp_path / "skip.lz4"
    path.write_bytes(struct.pack("<II", 0x184D2A53, 7) + b"comment" + compressed_image("lz4").read_bytes())
    assert sniff(path.read_bytes()[:4096]) == ("compressed", "lz4")
    with open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert img.compression == "lz4"
        assert source_sha(img.source) == base_sha()


def test_trailing_data_is_a_warning(tmp_path, tmpdir_empty):
    gz = tmp_path / "zeros-after.gz"
    gz.write_bytes(compressed_image("gzip").read_bytes() + bytes(1000))
    with open_image(gz, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert source_sha(img.source) == base_sha()
        assert len(img.warnings) == 1 and "1000 trailing zero bytes" in img.warnings[0]
    xz = tmp_path / "garbage-after.xz"
    xz.write_bytes(compressed_image("xz").read_bytes() + b"this is not xz")
    with open_image(xz, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert source_sha(img.source) == base_sha()
        assert len(img.warnings) == 1 and "14 bytes of trailing data" in img.warnings[0]
    padded = tmp_path / "padded.xz"  # xz stream padding: null bytes in multiples of four
    padded.write_bytes(compressed_image("xz").read_bytes() + bytes(8) + compressed_image("xz").read_bytes())
    with open_image(padded, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
        assert img.source.size == 2 * DISK_SIZE
        assert img.warnings == []


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz", "xz-mt", "zstd", "lz4", "lz4-legacy"])
def test_truncated_stream(name, tmp_path, tmpdir_empty):
    data = compressed_image(name).read_bytes()
    path = tmp_path / f"truncated-{name}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptDataError) as err:
        open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False)
    msg = _one_line(err.value)
    codec = COMPRESSED[name][0]
    assert str(path) in msg and f"truncated {codec} stream" in msg, msg


def _damaged_copy(name: str, tmp_path: Path) -> Path:
    data = bytearray(compressed_image(name).read_bytes())
    middle = len(data) // 2  # well past the headers, inside compressed payload
    for i in range(middle, middle + 64):
        data[i] ^= 0x5A
    path = tmp_path / f"corrupt-{name}"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz", "zstd", "lz4"])
def test_corrupt_stream(name, tmp_path, tmpdir_empty):
    path = _damaged_copy(name, tmp_path)
    with pytest.raises(CorruptDataError) as err:
        open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False)
    msg = _one_line(err.value)
    assert str(path) in msg and f"corrupt {COMPRESSED[name][0]} data" in msg, msg


def test_corrupt_lz4_legacy_has_no_checksum(tmp_path, tmpdir_empty):
    """The legacy lz4 frame has no checksums: damage is caught only if a block stops decoding."""
    path = _damaged_copy("lz4-legacy", tmp_path)
    try:
        with open_image(path, tmpdir=str(tmpdir_empty), progress=False, cache=False) as img:
            assert source_sha(img.source) != base_sha()
    except CorruptDataError as err:
        assert str(path) in _one_line(err)


def test_decompression_bomb_is_bounded(tmpdir_empty):
    limits = Limits(max_decompressed_bytes=16 * MiB)
    with pytest.raises(LimitExceededError) as err:
        open_image(compressed_image("xz"), limits=limits, tmpdir=str(tmpdir_empty), progress=False, cache=False)
    msg = _one_line(err.value)
    assert "max_decompressed_bytes" in msg and str(16 * MiB) in msg


def test_decoder_memory_is_bounded(tmp_path, tmpdir_empty, monkeypatch):
    # zstd --long=31 on a pipe keeps a 2 GiB window; the zstd CLI refuses it without --memory too.
    long_zst = tmp_path / "long.zst"
    with open(long_zst, "wb") as out:
        subprocess.run(["zstd", "-q", "-c", "--long=31"], input=base_image().read_bytes()[: 4 * MiB], stdout=out, check=True)
    with pytest.raises(LimitExceededError, match="decoder memory"):
        open_image(long_zst, tmpdir=str(tmpdir_empty), progress=False, cache=False)
    # xz: the default preset needs ~9 MiB to decode; lower our cap below that.
    from immutools.image import compressed

    monkeypatch.setattr(compressed, "XZ_MEMLIMIT", 1 * MiB)
    with pytest.raises(LimitExceededError, match="decoder memory"):
        open_image(compressed_image("xz"), tmpdir=str(tmpdir_empty), progress=False, cache=False)


def test_nested_compression_and_archives_are_refused(tmp_path, tmpdir_empty):
    nested = tmp_path / "nested.gz"
    with open(nested, "wb") as out:
        _pipe(["gzip", "-c", "-1"], compressed_image("xz"), out)
    with pytest.raises(UnsupportedImageError, match="nested compression"):
        open_image(nested, tmpdir=str(tmpdir_empty), progress=False, cache=False)
    tar = tmp_path / "disk.tar"
    shutil.copy(base_image(), tmp_path / "disk.raw")
    run(["tar", "-cf", tar, "-C", tmp_path, "disk.raw"])
    with pytest.raises(UnsupportedImageError, match="tar archive"):
        open_image(tar)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_temp_disk_full_fails_cleanly(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small])
    try:
        with pytest.raises(ImageIOError) as err:
            open_image(compressed_image("gzip"), tmpdir=str(small), progress=False, cache=False)
        msg = _one_line(err.value)
        assert str(small) in msg and ("no space" in msg or "free" in msg), msg
        assert list(small.iterdir()) == []
        assert os.statvfs(small).f_bfree == os.statvfs(small).f_blocks  # all space released
    finally:
        run(["umount", small])


def test_progress_line(capfd, tmpdir_empty):
    with open_image(compressed_image("bzip2"), tmpdir=str(tmpdir_empty), progress=True, cache=False):
        pass
    err = capfd.readouterr().err
    assert "decompressing" in err and "%" in err and "/s" in err
    assert err.endswith("\r") and err.rstrip("\r").split("\r")[-1].strip() == ""  # line cleared
    with open_image(compressed_image("bzip2"), tmpdir=str(tmpdir_empty), progress=False, cache=False):
        pass
    assert capfd.readouterr().err == ""


def test_progress_rate_limit_and_delay():
    now = [0.0]
    out = io.StringIO()
    bar = Progress("x", 1000, enabled=True, stream=out, clock=lambda: now[0])
    for i in range(100):  # 100 updates within 50 ms: one redraw
        now[0] = i * 0.0005
        bar.update(i, i)
    assert bar.draws == 1
    now[0] = 0.5
    bar.update(500, 5_000_000)
    assert bar.draws == 2 and "50.0%" in out.getvalue() and "ETA 0:00" in out.getvalue()
    bar.close()
    assert out.getvalue().endswith("\r")
    # Automatic mode on a terminal: silent for the first second, then drawn.
    master, slave = os.openpty()
    with open(slave, "w", closefd=True) as tty:
        now[0] = 0.0
        auto = Progress("slow", 1000, enabled=None, stream=tty, clock=lambda: now[0])
        now[0] = 0.9
        auto.update(100, 100)
        assert auto.draws == 0
        now[0] = 1.2
        auto.update(200, 200)
        assert auto.draws == 1
        auto.close()
    shown = os.read(master, 4096).decode()
    os.close(master)
    assert "slow" in shown and "20.0%" in shown
    # Automatic mode stays silent on a non-terminal stream.
    quiet = io.StringIO()
    auto = Progress("x", 1000, enabled=None, stream=quiet, clock=lambda: now[0])
    now[0] = 10.0
    auto.update(10, 10)
    auto.close()
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------------
# VM disk containers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_container_equals_qemu_conversion(name):
    directory = container_dir(name)
    disk = directory / "disk"
    files_before = {p.name: sha256_file(p) for p in directory.iterdir()}
    stats = ReadStats()
    with open_image(disk, stats=stats) as img:
        assert img.container == CONTAINER_NAME[CONTAINERS[name][0]]
        assert img.compression is None
        for p in directory.iterdir():  # the container and any extent files, all read-only
            assert all(flags & os.O_ACCMODE == os.O_RDONLY for flags in open_fds_for(p).values())
        assert source_sha(img.source) == reference_sha(name)
        assert prefix_sha(img.source, DISK_SIZE) == base_sha()
        assert img.source.size >= DISK_SIZE
    assert {p.name: sha256_file(p) for p in directory.iterdir()} == files_before
    for p in directory.iterdir():
        assert open_fds_for(p) == {}


@pytest.mark.parametrize("name", ["qcow2", "qcow2-compressed", "vmdk-sparse", "vhd-dynamic", "vhdx-1m-blocks"])
def test_container_random_reads(name):
    """Reads at odd offsets and across cluster/grain/block boundaries match the raw image."""
    raw = base_image().read_bytes()
    with open_image(container_dir(name) / "disk") as img:
        src = img.source
        for boundary in range(MiB, DISK_SIZE, MiB):
            for start, length in ((boundary - 4096, 8192), (boundary - 3 * 4096 - 7, MiB + 13), (boundary - 1, 2)):
                assert src.read_at(start, length) == raw[start : start + length], (boundary, start, length)
        assert src.read_at(DISK_SIZE - 100, 100) == raw[-100:]


@pytest.mark.parametrize("extended_l2", ["on", "off"])
def test_qcow2_partial_and_zero_clusters(extended_l2, tmp_path):
    """Subclusters written, zeroed and left unallocated inside one cluster (qemu-io), vs qemu-img."""
    disk = tmp_path / "sub.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"extended_l2={extended_l2},cluster_size=64k", disk, "8M"])
    ops = [
        "write -P 0xab 0 64k",  # a full cluster
        "write -P 0x11 68k 2k",  # one 2 KiB subcluster in the next cluster
        "write -P 0x22 72k 6k",  # three more, after a gap
        "write -z 74k 2k",  # a zeroed subcluster inside allocated ones
        "write -P 0x33 126k 2k",  # the last subcluster of the cluster
        "write -P 0x44 1M 3k",  # a partial subcluster: rounds to two
        "write -z 2M 64k",  # a zero cluster
        "write -P 0x55 2M 2k",  # then data in its first subcluster
        "write -P 0x66 3M 192k",
        "write -z 3M 64k",  # zeroing an allocated cluster (ZERO_ALLOC)
        "discard 3136k 64k",
    ]
    for op in ops:
        run(["qemu-io", "-f", "qcow2", "-c", op, disk])
    ref = tmp_path / "ref.raw"
    run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", disk, ref])
    expected = ref.read_bytes()
    assert expected[68 * 1024] == 0x11 and expected[74 * 1024] == 0
    with open_image(disk) as img:
        src = img.source
        assert src.read_at(0, src.size) == expected
        for start in range(0, 3 * MiB, 1536):  # odd-sized reads at every alignment
            assert src.read_at(start, 5000) == expected[start : start + 5000], start


def test_qcow2_open_reads_little():
    disk = container_dir("qcow2") / "disk"
    stats = ReadStats()
    with open_image(disk, stats=stats) as img:
        after_open = stats.bytes_read
        assert after_open < 256 * 1024, after_open
        raw_block = base_image().read_bytes()[P1_START * 512 + 8 * MiB : P1_START * 512 + 8 * MiB + 4096]
        assert img.source.read_at(P1_START * 512 + 8 * MiB, 4096) == raw_block
        assert stats.bytes_read - after_open < 256 * 1024
        assert stats.bytes_read < disk.stat().st_size // 4


def test_vhdx_reads_across_block_boundaries():
    """Pins a dissect.hypervisor bug we work around (VHDX.read_sectors crossing a block)."""
    from dissect.hypervisor.disk.vhdx import VHDX

    raw = base_image().read_bytes()
    disk = container_dir("vhdx-1m-blocks") / "disk"
    with open(disk, "rb") as fh:
        lib = VHDX(fh)
        block = lib.block_size
        wrong = 0
        for b in range(1, DISK_SIZE // block):
            start = b * block - 16384  # aligned, so the library passes one read across the boundary
            lib.seek(start)
            wrong += lib.read(65536) != raw[start : start + 65536]
    assert wrong > 0, "dissect VHDX block-boundary bug fixed upstream: _VhdxBlocks can go"
    with open_image(disk) as img:
        for b in range(1, DISK_SIZE // block):
            start = b * block - 16384
            assert img.source.read_at(start, 65536) == raw[start : start + 65536]


def test_dissect_qcow2_extended_l2_bug_still_present():
    """dissect counts 0 contiguous subclusters in an unallocated extended-L2 cluster.

    qemu's qcow2_get_subcluster_range_type gives 32 here (ctz32(0) is 32, and it counts trailing
    ones for allocated ranges); dissect's ctz(0) is 0 and it passes the L2 entry as the bitmap, so
    ``QCow2Stream._yield_runs`` makes no progress and loops forever on such images.
    """
    from dissect.hypervisor.disk import qcow2 as q
    from dissect.hypervisor.disk.c_qcow2 import UNALLOCATED_SUBCLUSTER_TYPES, ZERO_SUBCLUSTER_TYPES

    with open(container_dir("qcow2-extl2") / "disk", "rb") as fh:
        image = q.QCow2(fh)
        assert image.has_subclusters
        offset = 40 * MiB  # outside both partitions: never written
        l2 = image.l2_table(image.l1_table[q.offset_to_l1_index(image, offset)] & 0x00FFFFFFFFFFFE00)
        index = q.offset_to_l2_index(image, offset)
        sc_type = q.get_subcluster_type(image, l2.entry(index), l2.bitmap(index), 0)
        assert sc_type in UNALLOCATED_SUBCLUSTER_TYPES + ZERO_SUBCLUSTER_TYPES
        count = q.count_contiguous_subclusters(image, 1, 0, l2, index)
    assert count == 0, "dissect extended-L2 bug fixed upstream: _subcluster_stream can go"


def test_vmdk_descriptor_with_split_and_zero_extents(tmp_path):
    """A hand-written descriptor: two FLAT extents into one file at different offsets, then ZERO."""
    flat_dir = container_dir("vmdk-flat")
    raw = base_image().read_bytes()
    d = tmp_path / "vm"
    d.mkdir()
    flat_name = next(p.name for p in flat_dir.iterdir() if p.name != "disk")
    shutil.copy(flat_dir / flat_name, d / "data.bin")
    first = 40_000
    second = DISK_SIZE // 512 - first
    (d / "disk.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"
        f"RW {first} FLAT \"data.bin\" 0\nRW {second} FLAT \"data.bin\" {first}\nRW 2048 ZERO\n\n"
        "ddb.virtualHWVersion = \"4\"\n"
    )
    with open_image(d / "disk.vmdk") as img:
        assert img.container == "vmdk"
        assert img.source.size == DISK_SIZE + 2048 * 512
        assert prefix_sha(img.source, DISK_SIZE) == base_sha()
        assert img.source.read_at(DISK_SIZE, 2048 * 512) == bytes(2048 * 512)
        assert img.source.read_at(first * 512 - 10, 20) == raw[first * 512 - 10 : first * 512 + 10]


@pytest.mark.parametrize("extent", ["../outside-flat.vmdk", "/etc/passwd", "sub/../../x", "C:\\\\disk-flat.vmdk", "link-out"])
def test_vmdk_extent_outside_directory_refused(extent, tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    (tmp_path / "outside-flat.vmdk").write_bytes(bytes(MiB))
    (d / "link-out").symlink_to(tmp_path / "outside-flat.vmdk")
    (d / "disk.vmdk").write_text(
        f"# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{extent}\" 0\n"
    )
    with pytest.raises(UnsupportedFeatureError) as err:
        open_image(d / "disk.vmdk")
    msg = _one_line(err.value)
    assert "refused" in msg
    assert open_fds_for(tmp_path / "outside-flat.vmdk") == {}


def test_vmdk_missing_extent_and_unknown_extent_line(tmp_path):
    (tmp_path / "a.vmdk").write_text('# Disk DescriptorFile\nparentCID=ffffffff\nRW 2048 FLAT "nothere.bin" 0\n')
    with pytest.raises(UnsupportedImageError, match="not found"):
        open_image(tmp_path / "a.vmdk")
    (tmp_path / "b.vmdk").write_text('# Disk DescriptorFile\nparentCID=ffffffff\nRW 2048 VMFSRDM "dev.bin" 0\n')
    with pytest.raises(UnsupportedFeatureError, match="VMFSRDM"):
        open_image(tmp_path / "b.vmdk")
    (tmp_path / "c.vmdk").write_text('# Disk DescriptorFile\nparentCID=ffffffff\nRW lots FLAT "x.bin" 0\n')
    with pytest.raises(UnsupportedFeatureError, match="not understood"):
        open_image(tmp_path / "c.vmdk")


def test_differencing_images_refused(tmp_path):
    base_q = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", base_q, "64M"])
    child_q = tmp_path / "child.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", child_q])
    with pytest.raises(UnsupportedFeatureError) as err:
        open_image(child_q)
    assert "backing file 'base.qcow2'" in _one_line(err.value)
    assert open_fds_for(base_q) == {}

    base_v = tmp_path / "base.vmdk"
    run(["qemu-img", "create", "-q", "-f", "vmdk", base_v, "64M"])
    child_v = tmp_path / "child.vmdk"
    run(["qemu-img", "create", "-q", "-f", "vmdk", "-b", str(base_v), "-F", "vmdk", child_v])
    with pytest.raises(UnsupportedFeatureError) as err:
        open_image(child_v)
    assert "parent disk" in _one_line(err.value) and "base.vmdk" in str(err.value)
    assert open_fds_for(base_v) == {}


def test_differencing_vhd_and_vhdx_refused(tmp_path):
    # qemu-img cannot create these; mark real images as differencing the way the specs define it.
    dyn = container_dir("vhd-dynamic") / "disk"
    size = dyn.stat().st_size
    parent = "parent disk.vhd".encode("utf-16-be")
    path = _patched(tmp_path, dyn, "diff.vhd", {size - 512 + 60: struct.pack(">I", 4), 512 + 64: parent})
    with pytest.raises(UnsupportedFeatureError) as err:
        open_image(path)
    assert "differencing VHD" in _one_line(err.value) and "parent disk.vhd" in str(err.value)

    from dissect.hypervisor.disk.c_vhdx import FILE_PARAMETERS_GUID, METADATA_REGION_GUID
    from dissect.hypervisor.disk.vhdx import RegionTable

    disk = container_dir("vhdx-dynamic") / "disk"
    with open(disk, "rb") as fh:
        meta = RegionTable(fh, 3 * 65536).get(METADATA_REGION_GUID).file_offset
    data = disk.read_bytes()
    (count,) = struct.unpack_from("<H", data, meta + 10)
    for i in range(count):  # metadata table entries: item id (16), offset (4), length (4), flags (4), reserved
        entry = meta + 32 + 32 * i
        if data[entry : entry + 16] == FILE_PARAMETERS_GUID.bytes_le:
            (item_offset,) = struct.unpack_from("<I", data, entry + 16)
            flags_at = meta + item_offset + 4
            break
    else:
        raise AssertionError("no file parameters item")
    path = _patched(tmp_path, disk, "diff.vhdx", {flags_at: struct.pack("<I", data[flags_at] | 2)})
    with pytest.raises(UnsupportedFeatureError, match="differencing VHDX"):
        open_image(path)


def _patched(tmp_path: Path, src: Path, name: str, patches: dict[int, bytes]) -> Path:
    data = bytearray(src.read_bytes())
    for offset, value in patches.items():
        data[offset : offset + len(value)] = value
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    "patches, error, text",
    [
        ({4: struct.pack(">I", 7)}, UnsupportedImageError, "version 7"),
        ({20: struct.pack(">I", 40)}, CorruptDataError, "cluster_bits 40"),
        ({36: struct.pack(">I", 0xFFFFFFF0)}, CorruptDataError, "L1 table"),
        ({36: struct.pack(">I", 0)}, CorruptDataError, "too small"),
        ({40: struct.pack(">Q", 1 << 50)}, CorruptDataError, "L1 table offset"),
        ({32: struct.pack(">I", 1)}, UnsupportedFeatureError, "encrypted"),
        ({72: struct.pack(">Q", 1 << 40)}, UnsupportedFeatureError, "unknown incompatible"),
        ({72: struct.pack(">Q", 1 << 2)}, UnsupportedFeatureError, "external data file"),
    ],
)
def test_corrupt_qcow2_header(patches, error, text, tmp_path):
    path = _patched(tmp_path, container_dir("qcow2") / "disk", "bad.qcow2", patches)
    with pytest.raises(error) as err:
        open_image(path)
    msg = _one_line(err.value)
    assert text in msg and str(path) in msg, msg


def test_corrupt_qcow2_tables_fail_at_read(tmp_path):
    disk = container_dir("qcow2") / "disk"
    data = disk.read_bytes()
    (l1_offset,) = struct.unpack_from(">Q", data, 40)
    (l2_offset,) = struct.unpack_from(">Q", data, l1_offset)
    l2_offset &= 0x00FFFFFFFFFFFE00
    # Point the first L2 table beyond the end of the file.
    path = _patched(tmp_path, disk, "badl1.qcow2", {l1_offset: struct.pack(">Q", (1 << 63) | (1 << 40))})
    with open_image(path) as img:
        with pytest.raises(CorruptDataError) as err:
            img.source.read_at(P1_START * 512, 4096)
        assert str(path) in _one_line(err.value)
    # A truncated qcow2 (a partial download): mapped clusters past the end of the file.
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(data[: len(data) // 2])
    with open_image(cut) as img:
        with pytest.raises(CorruptDataError) as err:
            source_sha(img.source)
        assert str(cut) in _one_line(err.value)


def test_vmdk_hostile_header(tmp_path):
    disk = container_dir("vmdk-sparse") / "disk"
    for patch, text in (
        ({20: struct.pack("<Q", 3)}, "grain size 3"),
        ({12: struct.pack("<Q", 1 << 60)}, "grain directory larger than the file"),
        ({44: struct.pack("<I", 0)}, "grain table entry count 0"),
        ({4: struct.pack("<I", 9)}, "version 9"),
    ):
        path = _patched(tmp_path, disk, "bad.vmdk", patch)
        with pytest.raises(ImmutoolsError) as err:
            open_image(path)
        assert text in _one_line(err.value)


def test_vhd_hostile_and_truncated(tmp_path):
    dyn = container_dir("vhd-dynamic") / "disk"
    data = dyn.read_bytes()
    # Footer copy at offset 0 survives losing the final footer (a truncated download).
    cut = tmp_path / "cut.vhd"
    cut.write_bytes(data[:-512])
    with open_image(cut) as img:
        assert img.container == "vhd"
        assert any("copy at offset 0" in w for w in img.warnings)
        assert source_sha(img.source) == reference_sha("vhd-dynamic")
    fixed = container_dir("vhd-fixed") / "disk"
    fdata = bytearray(fixed.read_bytes())
    footer = len(fdata) - 512
    fdata[footer + 48 : footer + 56] = struct.pack(">Q", 1 << 40)  # current size beyond the data
    bad = tmp_path / "big.vhd"
    bad.write_bytes(bytes(fdata))
    with pytest.raises(CorruptDataError, match="fixed VHD claims"):
        open_image(bad)
    # Block size 0 in the dynamic header ("cxsparse" at offset 512, block size at +32).
    path = _patched(tmp_path, dyn, "bs0.vhd", {512 + 32: struct.pack(">I", 0)})
    with pytest.raises(CorruptDataError, match="block size 0"):
        open_image(path)


def _vhd_with_footer(tmp_path: Path, name: str, creator: bytes, current_size: int) -> Path:
    """The dynamic VHD fixture with a different creator and size, footer copies and checksum fixed."""
    data = bytearray((container_dir("vhd-dynamic") / "disk").read_bytes())
    footer = bytearray(data[-512:])
    footer[28:32] = creator
    footer[48:56] = struct.pack(">Q", current_size)
    footer[64:68] = bytes(4)
    footer[64:68] = struct.pack(">I", ~sum(footer[:85]) & 0xFFFFFFFF)
    data[-512:] = footer
    data[:512] = footer
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("creator", [b"vpc ", b"win "])
def test_vhd_size_by_creator_matches_qemu(creator, tmp_path):
    """Virtual PC sizes by CHS geometry, Hyper-V by current_size; compare with qemu-img."""
    block_table_covers = 33 * 2 * MiB  # the fixture's 33-entry block table, 2 MiB blocks
    path = _vhd_with_footer(tmp_path, "sized.vhd", creator, block_table_covers)
    ref = tmp_path / "ref.raw"
    run(["qemu-img", "convert", "-q", "-f", "vpc", "-O", "raw", path, ref])
    expected_size = ref.stat().st_size
    assert (expected_size == block_table_covers) == (creator == b"win ")
    with open_image(path) as img:
        assert img.source.size == expected_size
        assert source_sha(img.source) == sha256_file(ref)
        assert img.warnings == ([] if creator == b"win " else [img.warnings[0]])


def test_vhdx_hostile_region_table(tmp_path):
    disk = container_dir("vhdx-dynamic") / "disk"
    path = _patched(tmp_path, disk, "bad.vhdx", {3 * 65536 + 8: struct.pack("<I", 0xFFFFFFFF)})
    with pytest.raises(CorruptDataError, match="region table claims"):
        open_image(path)
    path = _patched(tmp_path, disk, "bad2.vhdx", {3 * 65536: b"XXXX", 4 * 65536: b"XXXX"})
    with pytest.raises(CorruptDataError):
        open_image(path)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedImageError, match="empty"):
        open_image(empty)
    small = tmp_path / "small.img"
    small.write_bytes(os.urandom(100))
    with pytest.raises(UnsupportedImageError, match="too small to be a disk image"):
        open_image(small)
    with pytest.raises(UnsupportedImageError, match="directory"):
        open_image(tmp_path)
    with pytest.raises(ImageIOError, match="cannot open"):
        open_image(tmp_path / "missing.img")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedImageError, match="not a regular file"):
        open_image(fifo)
    tiny_xz = tmp_path / "tiny.xz"
    with open(tiny_xz, "wb") as out:
        subprocess.run(["xz", "-c"], input=b"x" * 100, stdout=out, check=True)
    with pytest.raises(UnsupportedImageError, match="decompressed data of 100 bytes is too small"):
        open_image(tiny_xz, tmpdir=str(tmp_path))
    for p in (empty, small):
        with pytest.raises(ImmutoolsError) as err:
            open_image(p)
        _one_line(err.value)


def test_sniff_magic():
    assert sniff(b"\x1f\x8b\x08\x00") == ("compressed", "gzip")
    assert sniff(b"BZh91AY&SY") == ("compressed", "bzip2")
    assert sniff(b"BZh") == ("raw", "raw")
    assert sniff(b"\xfd7zXZ\x00\x00") == ("compressed", "xz")
    assert sniff(b"\x28\xb5\x2f\xfd") == ("compressed", "zstd")
    assert sniff(struct.pack("<II", 0x184D2A50, 4) + b"abcd" + b"\x28\xb5\x2f\xfd") == ("compressed", "zstd")
    assert sniff(struct.pack("<II", 0x184D2A50, 0) + b"\x04\x22\x4d\x18") == ("compressed", "lz4")
    assert sniff(b"\x02\x21\x4c\x18") == ("compressed", "lz4")
    assert sniff(b"QFI\xfb\x00\x00\x00\x03") == ("container", "qcow2")
    assert sniff(b"QFI\xfb\x00\x00\x00\x01") == ("archive", "qcow1")
    assert sniff(b"KDMV") == ("container", "vmdk")
    assert sniff(b"# Disk DescriptorFile\n") == ("container", "vmdk-descriptor")
    assert sniff(b"vhdxfile") == ("container", "vhdx")
    assert sniff(bytes(4096), bytes(1) + b"conectix" + bytes(503)) == ("container", "vhd")
    assert sniff(bytes(4096), b"conectix" + bytes(504)) == ("container", "vhd")
    assert sniff(bytes(4096), bytes(512)) == ("raw", "raw")
    for name in ("gzip", "bzip2", "xz", "zstd", "lz4", "lz4-legacy", "pzstd"):
        head = compressed_image(name).read_bytes()[:4096]
        assert sniff(head) == ("compressed", COMPRESSED[name][0]), name


def test_opened_image_is_a_context_manager():
    img = open_image(base_image())
    assert isinstance(img, OpenedImage)
    with img as same:
        assert same is img
    assert img.source.closed
    img.close()


# ------------------------------------------------------------------------------------------------
# VMDK descriptors with hostile extent numbers: refused, exit 3, one line
# ------------------------------------------------------------------------------------------------


def _vmdk_cli(d: Path, extent_line: str) -> subprocess.CompletedProcess:
    import sys

    (d / "disk.vmdk").write_text(
        f"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{extent_line}\n"
    )
    return subprocess.run([sys.executable, "-m", "immutools", "scan", str(d / "disk.vmdk")], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    "extent_line, reason",
    [
        ('RW 2048 FLAT "x-flat.vmdk" -5', "offset '-5': not a sector number"),
        ('RW 2048 FLAT "x-flat.vmdk" 0x10', "offset '0x10': not a sector number"),
        ('RW 2048 FLAT "x-flat.vmdk" 99999999999', "lies beyond its 1048576-byte file"),
        ('RW 2048 FLAT "x-flat.vmdk" 1024', "the descriptor needs 1572864"),  # offset + size past the end
        ('RW 4096 FLAT "x-flat.vmdk" 0', "the descriptor needs 2097152"),  # size larger than the file
        ('RW 0 FLAT "x-flat.vmdk" 0', "not a positive sector count"),
        ('RW 2048 FLAT "../outside-flat.vmdk" 0', "leaves the descriptor's directory; refused"),
        ('RW 2048 FLAT "link-out" 0', "resolves outside"),
    ],
)
def test_vmdk_hostile_extent_numbers_exit_3(extent_line, reason, tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    (d / "x-flat.vmdk").write_bytes(bytes(MiB))
    (tmp_path / "outside-flat.vmdk").write_bytes(bytes(MiB))
    (d / "link-out").symlink_to(tmp_path / "outside-flat.vmdk")
    proc = _vmdk_cli(d, extent_line)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr
    assert len(lines) == 1 and str(d / "disk.vmdk") in lines[0] and reason in lines[0], lines


def test_vmdk_valid_offset_still_reads(tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    data = os.urandom(MiB)
    (d / "x-flat.vmdk").write_bytes(data)
    (d / "disk.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
        'RW 1024 FLAT "x-flat.vmdk" 1024\n'
    )
    with open_image(d / "disk.vmdk") as img:
        assert img.source.size == 512 * 1024
        assert img.source.read_at(0, 512 * 1024) == data[512 * 1024 :]
