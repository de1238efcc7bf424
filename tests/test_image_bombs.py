"""Decompression bombs are refused in seconds, whatever the codec; sparse disk images still open.

Every bomb is built here with the real compressors and scanned by the CLI in a subprocess: the exit
code must be 5 and the one-line message must name the file and the reason. The subprocess timeout
(120 s) only keeps a regression from hanging the suite; it is not a timing assertion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builders import run
from immutools.image import open_image
from immutools.image.guard import declared_size

MiB = 1024 * 1024
BOMB_TIMEOUT = 120


def _compress(cmd: list[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def _zeros_member(cmd: list[str], size: int = 256 * MiB) -> bytes:
    return _compress(cmd, bytes(size))


def _scan(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "immutools", "scan", "--no-cache", str(path), *extra],
                          capture_output=True, timeout=BOMB_TIMEOUT, text=True)


def _assert_refused(proc: subprocess.CompletedProcess, path: Path, reason: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 5, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "decompression bomb" in lines[0] and reason in lines[0], lines[0]


@pytest.fixture(scope="module")
def bzip2_zero_stream() -> bytes:
    return _zeros_member(["bzip2", "-c", "-9"])


def test_bzip2_1200_stream_bomb(tmp_path, bzip2_zero_stream):
    """The campaign's bomb: 1,200 concatenated bzip2 streams of 256 MiB of zeros (300 GiB)."""
    path = tmp_path / "bomb.bin.bz2"
    path.write_bytes(bzip2_zero_stream * 1200)
    assert path.stat().st_size < 300 * 1024
    _assert_refused(_scan(path), path, "all zeros")


@pytest.mark.parametrize(
    "codec, cmd, copies",
    [
        ("gzip", ["gzip", "-c", "-9", "-n"], 256),  # 64 GiB from ~66 MB
        ("lz4", ["lz4", "-c", "-q", "-9"], 64),  # 16 GiB (lz4 tops out near 255:1)
        ("zstd", ["zstd", "-c", "-q", "-19"], 1200),  # frames with content sizes: refused from the index
        ("xz", ["xz", "-c", "-T1", "-0"], 1200),  # one block per stream: refused from the index
    ],
)
def test_concatenated_zero_bombs(codec, cmd, copies, tmp_path):
    path = tmp_path / f"bomb.{codec}"
    with open(path, "wb") as out:
        member = _zeros_member(cmd)
        for _ in range(copies):
            out.write(member)
    _assert_refused(_scan(path), path, "zeros")


def test_single_stream_zero_bombs(tmp_path):
    """One stream, no index to consult: the guard stops the decoder after 64 MiB of zeros."""
    for codec, cmd in (("zstd", ["zstd", "-c", "-q", "-1", "--no-content-size"]), ("xz", ["xz", "-c", "-T1", "-0"])):
        path = tmp_path / f"one.{codec}"
        path.write_bytes(_compress(cmd, bytes(512 * MiB)))
        _assert_refused(_scan(path), path, "all zeros")


def _gpt_disk(tmp_path: Path, size: int) -> Path:
    disk = tmp_path / "gpt.raw"
    with open(disk, "wb") as f:
        f.truncate(size)
    run(["sgdisk", "-o", "-n", "1:2048:+8M", disk])
    return disk


def test_bomb_behind_a_real_gpt_stops_at_the_declared_size(tmp_path):
    """A genuine 64 MiB GPT disk followed by 4 GiB more of zeros: refused once the output passes the
    size the GPT declares (plus slack), not after 4 GiB."""
    disk = _gpt_disk(tmp_path, 64 * MiB)
    assert declared_size(disk.read_bytes()[: MiB])[0] == 64 * MiB
    path = tmp_path / "gpt-bomb.gz"
    with open(path, "wb") as out:
        out.write(_compress(["gzip", "-c", "-n"], disk.read_bytes()))
        member = _zeros_member(["gzip", "-c", "-9", "-n"])
        for _ in range(16):
            out.write(member)
    _assert_refused(_scan(path), path, "its GPT (backup header at LBA 131071) declares a 64.0 MiB disk")


def test_sparse_disk_declaring_its_size_opens(tmp_path):
    """A GPT disk alone (512 MiB, nearly all zeros: hundreds to thousands to one) is no bomb."""
    disk = _gpt_disk(tmp_path, 512 * MiB)
    for cmd in (["bzip2", "-c", "-9"], ["gzip", "-c", "-n"], ["zstd", "-c", "-q"], ["lz4", "-c", "-q"], ["xz", "-c", "-T1", "-1"]):
        path = tmp_path / ("disk." + cmd[0])
        with open(disk, "rb") as fin, open(path, "wb") as out:
            subprocess.run(cmd, stdin=fin, stdout=out, check=True)
        assert disk.stat().st_size // path.stat().st_size > 200
        with open_image(path, cache=False, progress=False) as img:
            assert img.source.size == 512 * MiB
            assert img.source.read_at(512, 8) == b"EFI PART"


def test_pbzip2_zero_streams_are_decoded_once(tmp_path):
    """pbzip2 writes one stream per 900 kB: the repeated all-zero streams of a sparse disk are
    recognised by their bytes and not decoded again; the output is still exactly the disk."""
    disk = _gpt_disk(tmp_path, 512 * MiB)
    with open(disk, "r+b") as f:
        f.seek(300 * MiB)
        f.write(b"data in the middle" * 1000)
    path = tmp_path / "disk.bz2"
    with open(disk, "rb") as fin, open(path, "wb") as out:
        subprocess.run(["pbzip2", "-c", "-9", "-p2"], stdin=fin, stdout=out, check=True)
    with open_image(path, cache=False, progress=False) as img:
        assert img.source.size == disk.stat().st_size
        for offset in (0, 512, 300 * MiB - 7, 300 * MiB + 5000, 512 * MiB - 4096):
            with open(disk, "rb") as f:
                f.seek(offset)
                assert img.source.read_at(offset, 20000) == f.read(20000), offset


def test_member_count_limit(tmp_path):
    from immutools.errors import LimitExceededError
    from immutools.limits import Limits

    disk = _gpt_disk(tmp_path, 16 * MiB)
    path = tmp_path / "many.bz2"
    data = disk.read_bytes()
    with open(path, "wb") as out:
        for i in range(0, len(data), MiB):
            out.write(_compress(["bzip2", "-c", "-1"], data[i : i + MiB]))
    with pytest.raises(LimitExceededError, match="max_compressed_members"):
        open_image(path, cache=False, progress=False, limits=Limits(max_compressed_members=8))


def _sized(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("kind", ["gpt", "mbr", "ext4", "xfs", "btrfs", "vfat", "squashfs", "erofs", "qcow2", "iso9660"])
def test_declared_size_agrees_with_the_tools(kind, tmp_path):
    """The size the bomb guard reads from a head is the size the making tool gave the disk."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_bytes(b"x" * 100_000)
    if kind == "gpt":
        path = _gpt_disk(tmp_path, 96 * MiB)
        expected = 96 * MiB
    elif kind == "mbr":
        path = _sized(tmp_path, "mbr.raw", 96 * MiB)
        subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\n2048,40960,83\n43008,20480,83\n", text=True,
                       check=True, capture_output=True)
        expected = (43008 + 20480) * 512  # the end of the last partition
    elif kind == "ext4":
        path = _sized(tmp_path, "fs.ext4", 40 * MiB)
        run(["mke2fs", "-q", "-t", "ext4", "-d", tree, path])
        expected = 40 * MiB
    elif kind == "xfs":
        path = _sized(tmp_path, "fs.xfs", 320 * MiB)
        run(["mkfs.xfs", "-q", path])
        expected = 320 * MiB
    elif kind == "btrfs":
        path = _sized(tmp_path, "fs.btrfs", 128 * MiB)
        run(["mkfs.btrfs", "-q", path])
        expected = 128 * MiB
    elif kind == "vfat":
        path = _sized(tmp_path, "fs.vfat", 48 * MiB)
        run(["mkfs.vfat", path])
        expected = 48 * MiB
    elif kind == "squashfs":
        path = tmp_path / "fs.sqfs"
        run(["mksquashfs", tree, path, "-quiet", "-noappend", "-no-progress"])
        expected = int(run(["unsquashfs", "-s", path]).stdout.decode().split("Filesystem size ")[1].split(" bytes")[0])
    elif kind == "erofs":
        path = tmp_path / "fs.erofs"
        run(["mkfs.erofs", path, tree])
        expected = path.stat().st_size
    elif kind == "qcow2":
        path = tmp_path / "disk.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", path, "5G"])
        expected = 5 * 1024 * MiB
    else:
        if not any(Path(d, "xorriso").exists() for d in ("/usr/bin", "/bin")) and not any(
                Path(d, "genisoimage").exists() for d in ("/usr/bin", "/bin")):
            pytest.skip("no ISO 9660 maker installed")
        path = tmp_path / "disk.iso"
        tool = "xorriso" if Path("/usr/bin/xorriso").exists() else "genisoimage"
        if tool == "xorriso":
            run(["xorriso", "-as", "mkisofs", "-quiet", "-o", path, tree])
        else:
            run(["genisoimage", "-quiet", "-o", path, tree])
        expected = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(MiB)
    size, what = declared_size(head)
    assert size == expected, (kind, size, expected, what)


def test_protective_mbr_saying_2tib_does_not_widen_the_gpt_bound(tmp_path):
    disk = _gpt_disk(tmp_path, 64 * MiB)
    head = bytearray(disk.read_bytes()[:MiB])
    assert head[446 + 4] == 0xEE
    head[446 + 12 : 446 + 16] = b"\xff\xff\xff\xff"  # what some tools write for any disk size
    assert declared_size(bytes(head)) == (64 * MiB, "its GPT (backup header at LBA 131071)")


def test_non_zero_fill_bomb_without_declared_size(tmp_path):
    """A bomb of repeated 0xFF bytes has no zero runs and no disk structure: it is bounded by
    max_undeclared_bytes (the test lowers it to keep the input small)."""
    path = tmp_path / "ff.zst"
    path.write_bytes(_compress(["zstd", "-c", "-q", "-1"], b"\xff" * (300 * MiB)))
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from immutools.limits import Limits; from immutools.image import open_image\n"
         "from immutools.errors import LimitExceededError\n"
         "try:\n open_image(sys.argv[1], cache=False, progress=False, limits=Limits(max_undeclared_bytes=256 << 20))\n"
         "except LimitExceededError as e:\n print(e); sys.exit(5)\n", str(path)],
        capture_output=True, text=True, timeout=BOMB_TIMEOUT)
    assert proc.returncode == 5, proc.stderr
    assert "declares no disk size" in proc.stdout and "max_undeclared_bytes" in proc.stdout
