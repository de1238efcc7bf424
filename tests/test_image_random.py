"""Random access inside compressed images, checked against the reference decompressors.

Each codec path must equal ``xz -dc`` / ``zstd -dc`` / ``gzip -dc`` / ``bzip2 -dc`` byte for byte:
on the whole image and on sampled ranges (random offsets, block boundaries, the last bytes).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from builders import have
from immutools.errors import CorruptDataError
from immutools.image import open_image
from immutools.image.seekable import _encode_varint, _varint
from immutools.image.source import ReadStats
from test_image import DISK_SIZE, MiB, base_image, source_sha


def _reference(cmd: list[str], path: Path) -> bytes:
    return subprocess.run([*cmd, str(path)], capture_output=True, check=True).stdout


def _compress(cmd: list[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def _check_against(img, reference: bytes, boundaries=()) -> None:
    assert img.source.size == len(reference)
    assert source_sha(img.source) == hashlib.sha256(reference).hexdigest()
    rng = random.Random(1234)
    offsets = [0, len(reference) - 1, len(reference) - 4096] + [rng.randrange(len(reference)) for _ in range(64)]
    for b in boundaries:
        offsets += [max(0, b - 3), b]
    for off in offsets:
        length = rng.choice([1, 511, 4096, 65537, 3 * MiB])
        assert img.source.read_at(off, length) == reference[off : off + length], (off, length)


@pytest.fixture(scope="module")
def xz_multiblock(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xz") / "disk.xz"
    path.write_bytes(_compress(["xz", "-c", "-T2", "--block-size=3MiB"], base_image().read_bytes()))
    return path


def test_xz_multiblock_is_random_access(xz_multiblock):
    reference = _reference(["xz", "-dc"], xz_multiblock)
    stats = ReadStats()
    with open_image(xz_multiblock, stats=stats, progress=False, cache=False) as img:
        assert (img.access, img.compression) == ("random", "xz")
        blocks = img.source.blocks
        assert len(blocks) == -(-DISK_SIZE // (3 * MiB))
        opened_with = img.source.blocks_decoded
        assert opened_with <= 2  # the head (bomb guard, format sniffing) and the tail (a VHD footer?)
        _check_against(img, reference, [b.offset for b in blocks])
    assert stats.bytes_decompressed <= len(blocks) * 3 * MiB


def test_xz_random_access_decodes_only_what_is_read(xz_multiblock):
    with open_image(xz_multiblock, progress=False, cache=False) as img:
        before = img.source.blocks_decoded
        img.source.read_at(40 * MiB + 5, 100)
        img.source.read_at(40 * MiB + 5000, 100)
        assert img.source.blocks_decoded == before + 1


def test_xz_concatenated_streams(tmp_path):
    data = base_image().read_bytes()
    path = tmp_path / "streams.xz"
    path.write_bytes(b"".join(_compress(["xz", "-c", "-T1", "-1"], data[i : i + 16 * MiB]) for i in range(0, len(data), 16 * MiB))
                     + bytes(8))  # stream padding
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "random" and len(img.source.blocks) == 4
        _check_against(img, _reference(["xz", "-dc"], path), [16 * MiB, 32 * MiB, 48 * MiB])


def test_single_block_xz_is_decompressed_whole(tmp_path):
    path = tmp_path / "one.xz"
    path.write_bytes(_compress(["xz", "-c", "-T1", "-1"], base_image().read_bytes()))
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "decompressed"
        _check_against(img, _reference(["xz", "-dc"], path))


def _rewrite_xz_index(path: Path, out: Path, block: int, new_size: int) -> None:
    """Copy of a one-stream xz file whose index declares ``new_size`` for ``block`` (CRCs fixed)."""
    data = bytearray(path.read_bytes())
    footer = data[-12:]
    index_size = (struct.unpack_from("<I", footer, 4)[0] + 1) * 4
    index_at = len(data) - 12 - index_size
    index = bytes(data[index_at : index_at + index_size])
    count, pos = _varint(index, 1)
    records = []
    for _ in range(count):
        unpadded, pos = _varint(index, pos)
        usize, pos = _varint(index, pos)
        records.append((unpadded, usize))
    records[block] = (records[block][0], new_size)
    new = b"\0" + _encode_varint(count) + b"".join(_encode_varint(u) + _encode_varint(s) for u, s in records)
    new += bytes(-len(new) % 4)
    new += struct.pack("<I", zlib.crc32(new))
    backward = struct.pack("<I", len(new) // 4 - 1) + bytes(footer[8:10])
    out.write_bytes(bytes(data[:index_at]) + new + struct.pack("<I", zlib.crc32(backward)) + backward + b"YZ")


def test_xz_block_larger_than_declared_is_an_error(xz_multiblock, tmp_path):
    bad = tmp_path / "lying.xz"
    _rewrite_xz_index(xz_multiblock, bad, block=5, new_size=3 * MiB - 4096)
    with open_image(bad, progress=False, cache=False) as img:
        assert img.access == "random"
        assert img.source.read_at(0, 4096) == base_image().read_bytes()[:4096]
        with pytest.raises(CorruptDataError) as err:
            img.source.read_at(5 * 3 * MiB + 10, 10)
    msg = str(err.value)
    assert "\n" not in msg and "xz block 6" in msg and "decodes to more than" in msg


def test_xz_corrupt_block_is_an_error(xz_multiblock, tmp_path):
    with open_image(xz_multiblock, progress=False, cache=False) as img:
        target = img.source.blocks[7]
    data = bytearray(xz_multiblock.read_bytes())
    data[target.coffset + target.csize // 2] ^= 0x55
    bad = tmp_path / "corrupt.xz"
    bad.write_bytes(bytes(data))
    with open_image(bad, progress=False, cache=False) as img:
        img.source.read_at(0, 100)
        with pytest.raises(CorruptDataError, match="corrupt xz block 8"):
            img.source.read_at(target.offset, 100)


@pytest.mark.skipif(not have("pzstd"), reason="pzstd not installed")
def test_pzstd_frames_without_content_size_are_decompressed_whole(tmp_path):
    """pzstd's frames do not state their decompressed size (its skippable frames hold only the
    compressed size): nothing to seek by, so the file is decompressed whole."""
    path = tmp_path / "disk.zst"
    path.write_bytes(_compress(["pzstd", "-c", "-q", "-p", "2", "-3"], base_image().read_bytes()))
    with open_image(path, progress=False, cache=False) as img:
        assert (img.access, img.compression) == ("decompressed", "zstd")
        _check_against(img, _reference(["zstd", "-dc"], path))


def test_zstd_concatenated_frames(tmp_path):
    data = base_image().read_bytes()
    path = tmp_path / "frames.zst"
    frames = []
    for i in range(0, len(data), 5 * MiB):
        piece = tmp_path / "piece"  # from a file, zstd writes the frame content size (from a pipe it cannot)
        piece.write_bytes(data[i : i + 5 * MiB])
        frames.append(_reference(["zstd", "-c", "-q", "-1"], piece))
    path.write_bytes(b"".join(frames))
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "random" and len(img.source.blocks) == -(-DISK_SIZE // (5 * MiB))
        _check_against(img, _reference(["zstd", "-dc"], path), [b.offset for b in img.source.blocks])


def test_zstd_seekable_format(tmp_path):
    """Frames without content sizes, found through the seek table of the seekable format (zstd
    contrib/seekable_format): a skippable frame 0x184D2A5E holding (compressed, decompressed) sizes
    and the footer (frame count, descriptor, magic 0x8F92EAB1)."""
    data = base_image().read_bytes()
    frames = [_compress(["zstd", "-c", "-q", "-1", "--no-content-size"], data[i : i + 4 * MiB])
              for i in range(0, len(data), 4 * MiB)]
    table = b"".join(struct.pack("<II", len(f), 4 * MiB) for f in frames)
    table += struct.pack("<IBI", len(frames), 0, 0x8F92EAB1)
    path = tmp_path / "seekable.zst"
    path.write_bytes(b"".join(frames) + struct.pack("<II", 0x184D2A5E, len(table)) + table)
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "random" and len(img.source.blocks) == len(frames)
        _check_against(img, _reference(["zstd", "-dc"], path), [b.offset for b in img.source.blocks])


def test_single_frame_zstd_is_decompressed_whole(tmp_path):
    path = tmp_path / "one.zst"
    path.write_bytes(_compress(["zstd", "-c", "-q", "-1"], base_image().read_bytes()))
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "decompressed"
        _check_against(img, _reference(["zstd", "-dc"], path))


@pytest.mark.parametrize("cmd", [["gzip", "-c", "-n", "-6"], ["pigz", "-c", "-n", "-p", "2"]])
def test_gzip_parallel_decoding_equals_gzip(cmd, tmp_path):
    if not have(cmd[0]):
        pytest.skip(f"{cmd[0]} not installed")
    path = tmp_path / "disk.gz"
    path.write_bytes(_compress(cmd, base_image().read_bytes()))
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "decompressed" and not img.warnings
        _check_against(img, _reference(["gzip", "-dc"], path))


def test_gzip_parallel_path_falls_back_on_trailing_garbage(tmp_path):
    """rapidgzip rejects trailing garbage; the standard-library pass then decodes it and warns."""
    path = tmp_path / "trailing.gz"
    path.write_bytes(_compress(["gzip", "-c", "-n"], base_image().read_bytes()) + b"garbage!")
    with open_image(path, progress=False, cache=False) as img:
        assert img.warnings and "trailing data" in img.warnings[0]
        assert source_sha(img.source) == hashlib.sha256(base_image().read_bytes()).hexdigest()


def test_gzip_truncated_is_an_error(tmp_path):
    """rapidgzip reads a truncated file short without an error; we notice the unread input."""
    full = _compress(["gzip", "-c", "-n"], base_image().read_bytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) - 100])
    with pytest.raises(CorruptDataError, match="truncated gzip stream"):
        open_image(path, progress=False, cache=False)


@pytest.mark.parametrize("cmd", [["bzip2", "-c", "-9"], ["pbzip2", "-c", "-p2"], ["lbzip2", "-c", "-n", "2"]])
def test_bzip2_equals_bzip2(cmd, tmp_path):
    if not have(cmd[0]):
        pytest.skip(f"{cmd[0]} not installed")
    path = tmp_path / "disk.bz2"
    path.write_bytes(_compress(cmd, base_image().read_bytes()))
    with open_image(path, progress=False, cache=False) as img:
        assert img.access == "decompressed" and not img.warnings
        _check_against(img, _reference(["bzip2", "-dc"], path))


@pytest.mark.parametrize("cmd", [["lbzip2", "-c", "-n", "2", "-9"], ["pbzip2", "-c", "-p2", "-9"], ["bzip2", "-c", "-1"]])
def test_bzip2_block_decoder_takes_the_file_and_equals_bzip2(cmd, tmp_path, monkeypatch):
    """The block-parallel decoder handles the file itself (no fallback), decodes each distinct
    all-zero block once, and its output equals ``bzip2 -dc``."""
    if not have(cmd[0]):
        pytest.skip(f"{cmd[0]} not installed")
    from immutools.image import bzip2blocks
    from immutools.image.compressed import _SparseWriter
    from immutools.image.guard import ExpansionGuard
    from immutools.image.progress import Progress
    from immutools.image.source import FileSource
    from immutools.limits import DEFAULT_LIMITS

    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:  # a 264 MiB GPT disk, data at 100 MiB, zeros elsewhere
        f.truncate(264 * MiB)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+200M", str(disk)], check=True, capture_output=True)
    with open(disk, "r+b") as f:
        f.seek(100 * MiB)
        f.write(random.Random(5).randbytes(3 * MiB))
    path = tmp_path / "disk.bz2"
    with open(disk, "rb") as fin, open(path, "wb") as out:
        subprocess.run(cmd, stdin=fin, stdout=out, check=True)
    decoded = []
    real = bzip2blocks._decode_one
    monkeypatch.setattr(bzip2blocks, "_decode_one", lambda wrapped: decoded.append(len(wrapped)) or real(wrapped))
    out_path = tmp_path / "out.raw"
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = _SparseWriter(fd, DEFAULT_LIMITS.max_decompressed_bytes, str(path), "bzip2", str(tmp_path))
        src = FileSource(path)
        assert bzip2blocks.decode_blocks(src, writer, ExpansionGuard(str(path), "bzip2", DEFAULT_LIMITS),
                                         Progress("x", src.size, False))
        writer.finish()
        src.close()
    finally:
        os.close(fd)
    reference = _reference(["bzip2", "-dc"], path)
    assert hashlib.sha256(out_path.read_bytes()).hexdigest() == hashlib.sha256(reference).hexdigest()
    blocks = len(bzip2blocks._magic_positions(FileSource(path)))
    assert len(decoded) < blocks // 2, (len(decoded), blocks)  # the zero blocks were decoded once


def test_bzip2_magic_search_matches_bit_offsets(tmp_path):
    """Every block magic found lies where a block starts: the first right after 'BZh9', and the
    stream's end magic is followed by the combined CRC and padding to the end of the file."""
    from immutools.image import bzip2blocks
    from immutools.image.source import FileSource

    path = tmp_path / "two-blocks.bz2"
    path.write_bytes(_compress(["bzip2", "-c", "-1"], os.urandom(150_000)))
    found = bzip2blocks._magic_positions(FileSource(path))
    assert found[0] == (32, bzip2blocks.BLOCK_MAGIC)
    assert [m for _pos, m in found] == [bzip2blocks.BLOCK_MAGIC, bzip2blocks.BLOCK_MAGIC, bzip2blocks.END_MAGIC]
    assert (found[-1][0] + 80 + 7) // 8 == path.stat().st_size


def test_bzip2_file_of_block_magics_is_refused_as_corrupt(tmp_path):
    """Hostile input for the block search: nothing but block magics. The block plan fails, the
    sequential decoder reports the damage; nothing hangs or exhausts memory."""
    path = tmp_path / "magics.bz2"
    path.write_bytes(b"BZh9" + (0x314159265359).to_bytes(6, "big") * 400_000)
    with pytest.raises(CorruptDataError) as err:
        open_image(path, progress=False, cache=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
