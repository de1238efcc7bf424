"""The decompression cache: hit, miss, content keys, eviction, concurrent writers, damaged entries,
``--no-cache``/``--cache-dir``. Every test uses its own cache directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builders import sha256_file
from immutools.image import open_image
from immutools.image.cache import DecompressionCache, default_directory, parse_size
from immutools.image.source import ReadStats
from test_image import DISK_SIZE, MiB, base_image, base_sha, compressed_image, source_sha


def _entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "v1").glob("*.img"))


def test_miss_then_hit(tmp_path):
    path = compressed_image("zstd")
    stats = ReadStats()
    with open_image(path, cache=tmp_path, stats=stats, progress=False) as img:
        assert (img.access, img.cache) == ("decompressed", "stored")
        assert source_sha(img.source) == base_sha()
    assert stats.bytes_decompressed == DISK_SIZE
    (entry,) = _entries(tmp_path)
    assert entry.stat().st_size == DISK_SIZE
    assert entry.stat().st_blocks * 512 < DISK_SIZE // 4, "cache entry is not sparse"
    assert (tmp_path.stat().st_mode & 0o777) == 0o700
    stats = ReadStats()
    with open_image(path, cache=tmp_path, stats=stats, progress=False) as img:
        assert (img.access, img.cache, img.decompressed_bytes) == ("decompressed", "hit", 0)
        assert source_sha(img.source) == base_sha()
    assert stats.bytes_decompressed == 0
    assert stats.bytes_read < path.stat().st_size + 64 * MiB + MiB  # no second pass over the input


def test_content_addressed_copy_hits(tmp_path):
    """A copy elsewhere (new inode, new times) misses the pre-key, is hashed, and hits by content."""
    cache = tmp_path / "cache"
    with open_image(compressed_image("bzip2"), cache=cache, progress=False) as img:
        assert img.cache == "stored"
    copy = tmp_path / "copy.bz2"
    copy.write_bytes(compressed_image("bzip2").read_bytes())
    with open_image(copy, cache=cache, progress=False) as img:
        assert img.cache == "hit"
        assert source_sha(img.source) == base_sha()
    assert len(_entries(cache)) == 1


def test_file_rewritten_in_place_with_old_mtime_is_not_served_stale(tmp_path):
    """Same inode, same size, mtime set back: the ctime still changes, the pre-key misses and the
    content digest decides."""
    cache = tmp_path / "cache"
    a = compressed_image("gzip").read_bytes()
    b = compressed_image("gzip-members").read_bytes()  # same disk, other bytes
    other_disk = bytearray(base_image().read_bytes())
    other_disk[4096:4100] = b"XXXX"
    c = subprocess.run(["gzip", "-c", "-n", "-1"], input=bytes(other_disk), capture_output=True, check=True).stdout
    size = max(len(a), len(b), len(c)) + 4
    path = tmp_path / "disk.gz"
    path.write_bytes(a + bytes(size - len(a)))
    with open_image(path, cache=cache, progress=False) as img:
        assert img.cache == "stored"
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(c + bytes(size - len(c)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    with open_image(path, cache=cache, progress=False) as img:
        assert img.cache == "stored"
        assert img.source.read_at(4096, 4) == b"XXXX"
    assert len(_entries(cache)) == 2


def test_eviction_is_least_recently_used(tmp_path):
    cache_dir = tmp_path / "cache"
    names = ["gzip", "xz", "lz4"]
    sizes = {}
    for name in names:  # measure what each entry costs on disk
        probe = DecompressionCache(str(tmp_path / f"probe-{name}"))
        with open_image(compressed_image(name), cache=probe, progress=False, random_access=False):
            pass
        sizes[name] = sum(p.stat().st_blocks * 512 for p in _entries(tmp_path / f"probe-{name}"))
    limit = sizes["gzip"] + sizes["xz"] + sizes["lz4"] // 2  # room for two entries, not three
    cache = DecompressionCache(str(cache_dir), max_total=limit)
    for name in ("gzip", "xz"):
        with open_image(compressed_image(name), cache=cache, progress=False, random_access=False) as img:
            assert img.cache == "stored"
    with open_image(compressed_image("gzip"), cache=cache, progress=False) as img:  # gzip used last
        assert img.cache == "hit"
    with open_image(compressed_image("lz4"), cache=cache, progress=False) as img:
        assert img.cache == "stored"
    states = {}
    for name in names:
        with open_image(compressed_image(name), cache=DecompressionCache(str(cache_dir), max_total=10**12),
                        progress=False, random_access=False) as img:
            states[name] = img.cache
    assert states == {"gzip": "hit", "xz": "stored", "lz4": "hit"}


def test_entry_too_large_is_not_kept(tmp_path):
    cache = DecompressionCache(str(tmp_path), max_total=1)
    with open_image(compressed_image("zstd"), cache=cache, progress=False) as img:
        assert img.cache == "not-stored"
        assert source_sha(img.source) == base_sha()
    assert _entries(tmp_path) == []
    assert [p for p in (tmp_path / "v1").iterdir() if ".tmp" in p.name] == []


@pytest.mark.parametrize("damage", ["truncate", "overwrite-head", "overwrite-tail", "bad-metadata", "no-metadata"])
def test_damaged_entry_is_discarded_and_rebuilt(damage, tmp_path):
    path = compressed_image("lz4")
    with open_image(path, cache=tmp_path, progress=False) as img:
        assert img.cache == "stored"
    (entry,) = _entries(tmp_path)
    meta = entry.with_suffix(".json")
    if damage == "truncate":
        os.truncate(entry, DISK_SIZE // 2)
    elif damage == "overwrite-head":
        with open(entry, "r+b") as f:
            f.write(b"\xff" * 512)
    elif damage == "overwrite-tail":
        with open(entry, "r+b") as f:
            f.seek(DISK_SIZE - 512)
            f.write(b"\xff" * 512)
    elif damage == "bad-metadata":
        meta.write_text("{not json")
    else:
        meta.unlink()
    with open_image(path, cache=tmp_path, progress=False) as img:
        assert img.cache == "stored"
        assert source_sha(img.source) == base_sha()
    with open_image(path, cache=tmp_path, progress=False) as img:
        assert img.cache == "hit"


def test_concurrent_writers_share_one_entry(tmp_path):
    """Four processes open the same image at once: one decompresses, the others wait for it and
    read the finished entry; nothing half-written is ever read."""
    path = compressed_image("bzip2-streams")
    code = textwrap.dedent(
        f"""
        import hashlib, sys
        from immutools.image import open_image
        with open_image({str(path)!r}, cache={str(tmp_path)!r}, progress=False) as img:
            h = hashlib.sha256()
            off = 0
            while off < img.source.size:
                data = img.source.read_at(off, 4 << 20)
                h.update(data)
                off += len(data)
            print(img.cache, h.hexdigest())
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(out.split())
    assert all(digest == base_sha() for _state, digest in results)
    assert sorted(state for state, _digest in results) == ["hit", "hit", "hit", "stored"]
    assert len(_entries(tmp_path)) == 1
    assert [p for p in (tmp_path / "v1").iterdir() if ".tmp" in p.name] == []


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "immutools", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_cache_options(tmp_path):
    path = compressed_image("xz")
    env = dict(os.environ, IMMUTOOLS_CACHE_DIR=str(tmp_path / "env-cache"))
    proc = _cli("scan", "--no-cache", path, "-f", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "env-cache").exists()
    proc = _cli("--no-cache", "ls", path, "1:/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "env-cache").exists()
    proc = _cli("scan", path, "-f", "json", env=env)
    assert proc.returncode == 0 and len(_entries(tmp_path / "env-cache")) == 1
    proc = _cli("--cache-dir", tmp_path / "opt-cache", "cat", path, "2:/big.txt", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(_entries(tmp_path / "opt-cache")) == 1
    proc = _cli("verify", path, "--cache-dir", tmp_path / "verify-cache", env=env)
    assert "no dm-verity" in proc.stderr, proc.stderr  # the image has none; it was opened through the cache
    assert len(_entries(tmp_path / "verify-cache")) == 1


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("IMMUTOOLS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_directory() == str(tmp_path / "xdg" / "immutools")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == str(tmp_path / "home" / ".cache" / "immutools")
    monkeypatch.setenv("IMMUTOOLS_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_directory() == str(tmp_path / "explicit")
    assert parse_size("20G") == 20 * 1024**3 and parse_size("512MiB") == 512 * MiB and parse_size("1000") == 1000
    monkeypatch.setenv("IMMUTOOLS_CACHE_MAX", "3M")
    assert DecompressionCache(str(tmp_path / "c")).max_bytes() == 3 * MiB


def test_tests_do_not_use_the_user_cache():
    assert os.environ["IMMUTOOLS_CACHE_DIR"] != default_directory.__globals__["os"].path.join(
        os.path.expanduser("~"), ".cache", "immutools")
    assert "decompression-cache" in os.environ["IMMUTOOLS_CACHE_DIR"]


def test_metadata_records_what_it_holds(tmp_path):
    path = compressed_image("gzip")
    with open_image(path, cache=tmp_path, progress=False):
        pass
    (entry,) = _entries(tmp_path)
    meta = json.loads(entry.with_suffix(".json").read_text())
    assert meta["codec"] == "gzip" and meta["size"] == DISK_SIZE and meta["compressed_size"] == path.stat().st_size
    assert sha256_file(entry) == base_sha()


def test_random_access_keeps_decoded_blocks_for_the_next_scan(tmp_path):
    path = tmp_path / "disk.xz"
    path.write_bytes(subprocess.run(["xz", "-c", "-T2", "--block-size=4MiB"], input=base_image().read_bytes(),
                                    capture_output=True, check=True).stdout)
    reads = [(0, 4096), (17 * MiB + 3, 70000), (DISK_SIZE - 512, 512)]
    raw = base_image().read_bytes()
    with open_image(path, cache=tmp_path / "cache", progress=False) as img:
        assert (img.access, img.cache) == ("random", "blocks")
        assert all(img.source.read_at(o, n) == raw[o : o + n] for o, n in reads)
        first_decoded = img.source.blocks_decoded
    assert first_decoded >= 3
    stats = ReadStats()
    with open_image(path, cache=tmp_path / "cache", progress=False, stats=stats) as img:
        assert all(img.source.read_at(o, n) == raw[o : o + n] for o, n in reads)
        assert img.source.blocks_decoded == 0 and img.source.blocks_from_cache >= 3
    assert stats.bytes_decompressed == 0
    # A truncated block file is not trusted: that block is decoded again, and the result is right.
    block_dir = next((tmp_path / "cache" / "v1").glob("*.d"))
    victim = block_dir / "4"  # the block holding 17 MiB
    os.truncate(victim, 1000)
    with open_image(path, cache=tmp_path / "cache", progress=False) as img:
        assert img.source.read_at(17 * MiB + 3, 70000) == raw[17 * MiB + 3 : 17 * MiB + 3 + 70000]
        assert img.source.blocks_decoded == 1
    assert victim.stat().st_size == 4 * MiB
    # Block entries are evicted like the others.
    assert DecompressionCache(str(tmp_path / "cache"), max_total=0).evict() != []
    assert list((tmp_path / "cache" / "v1").glob("*.d")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_cache_filesystem_full_fails_cleanly(tmp_path):
    from builders import run
    from immutools.errors import ImageIOError

    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", small])
    try:
        with pytest.raises(ImageIOError) as err:
            open_image(compressed_image("gzip"), cache=small, progress=False)
        msg = str(err.value)
        assert "\n" not in msg and str(small) in msg and "--cache-dir" in msg, msg
        assert _entries(small) == []
        assert [p for p in (small / "v1").iterdir() if ".tmp" in p.name] == []
        used = os.statvfs(small).f_blocks - os.statvfs(small).f_bfree
        assert used * os.statvfs(small).f_frsize < 256 * 1024  # the partial data was released
    finally:
        run(["umount", small])


def test_cache_directory_others_can_write_is_not_used(tmp_path):
    cache = tmp_path / "shared"
    with open_image(compressed_image("zstd"), cache=cache, progress=False) as img:
        assert img.cache == "stored"
    os.chmod(cache, 0o777)
    with open_image(compressed_image("zstd"), cache=cache, progress=False) as img:
        assert img.cache == "off"
        assert any("is not private" in w and "not used" in w for w in img.warnings), img.warnings
        assert source_sha(img.source) == base_sha()
    os.chmod(cache, 0o700)
    with open_image(compressed_image("zstd"), cache=cache, progress=False) as img:
        assert img.cache == "hit"
