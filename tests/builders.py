"""Builders for test images, made with the real tools (sgdisk, mke2fs -d, mksquashfs, ...).

Everything built here is cached under ``$IMMUTOOLS_FIXTURE_CACHE`` (default ``.cache/fixtures`` in
the checkout) keyed by a hash of the recipe, so repeated test runs do not rebuild images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IMMUTOOLS_FIXTURE_CACHE", REPO / ".cache" / "fixtures"))

# Fixed timestamps and ids keep the images reproducible.
SOURCE_DATE_EPOCH = 1700000000
ENV = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), LC_ALL="C", TZ="UTC")


def run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """Run a tool, raising with its stderr on failure."""
    kw.setdefault("env", ENV)
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or any(
        Path(d, tool).exists() for d in ("/usr/sbin", "/sbin")
    )


def cached(name: str, recipe: dict, build: Callable[[Path], None], suffix: str = ".img") -> Path:
    """Return the cached artifact for ``recipe``, building it with ``build(path)`` if missing."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-{key}{suffix}"
    if path.exists():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    if tmp.exists():
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()
    build(tmp)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# A standard sample tree: every filesystem differential test lists the same variety of entries.
# ------------------------------------------------------------------------------------------------

SAMPLE_RECIPE_VERSION = 3


def make_sample_tree(root: Path, *, with_special: bool = True, big_file_kib: int = 300) -> Path:
    """Populate ``root`` with a tree that exercises directory and file reading.

    Regular files of many sizes (empty, tiny, one block, several blocks, a larger one with a
    pattern), nested directories, a directory with many entries (multi-block directories), symlinks
    (relative, absolute, dangling, long targets), setuid/setgid/sticky modes, a hard link, and names
    with spaces and UTF-8.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text(
        'NAME="Sample Linux"\nID=sample\nVERSION_ID=1.2.3\nPRETTY_NAME="Sample Linux 1.2.3"\n'
    )
    (root / "etc" / "hostname").write_text("sample\n")
    (root / "empty").write_bytes(b"")
    (root / "tiny.txt").write_text("hi\n")
    (root / "block.bin").write_bytes(bytes(range(256)) * 16)  # exactly 4096
    (root / "multi.bin").write_bytes(b"".join(i.to_bytes(4, "little") for i in range(10_000)))
    big = bytearray()
    i = 0
    while len(big) < big_file_kib * 1024:
        big += f"line {i:08d} of a larger file with some repetition\n".encode()
        i += 1
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "big.txt").write_bytes(bytes(big[: big_file_kib * 1024]))
    (root / "usr" / "bin").mkdir(parents=True)
    sh = root / "usr" / "bin" / "bash"
    sh.write_bytes(b"\x7fELF" + b"\0" * 60 + b"fake bash\n")
    sh.chmod(0o755)
    su = root / "usr" / "bin" / "su"
    su.write_bytes(b"\x7fELF fake su\n")
    su.chmod(0o4755)
    wall = root / "usr" / "bin" / "wall"
    wall.write_bytes(b"\x7fELF fake wall\n")
    wall.chmod(0o2755)
    (root / "usr" / "bin" / "sh").symlink_to("bash")
    (root / "bin").symlink_to("usr/bin")
    (root / "abs-link").symlink_to("/etc/os-release")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "long-link").symlink_to("x" * 200 + "/" + "y" * 200)
    (root / "escape-link").symlink_to("../../../../etc/hostname")
    many = root / "var" / "lib" / "many"
    many.mkdir(parents=True)
    for n in range(300):
        (many / f"entry-{n:04d}-with-a-longish-name").write_text(str(n))
    deep = root / "deep"
    cur = deep
    for n in range(12):
        cur = cur / f"d{n}"
    cur.mkdir(parents=True)
    (cur / "leaf").write_text("deep\n")
    tmp = root / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    (root / "name with spaces").write_text("spaces\n")
    (root / "ünïcødé-名前").write_text("utf8\n")
    os.link(root / "tiny.txt", root / "hardlink.txt")
    if with_special:
        os.mkfifo(root / "fifo")
    return root


def sgdisk_layout(path: Path, size: int, parts: list[dict], sector_size: int = 512, disk_guid: str | None = None) -> None:
    """Create ``path`` (sparse) of ``size`` bytes with a GPT from ``parts``.

    Each part: {number, start (sector), end (sector, inclusive) or size (sectors), type (GUID or
    sgdisk code), label, guid, attrs (int)}.
    """
    with open(path, "wb") as f:
        f.truncate(size)
    cmd = ["sgdisk"]
    if sector_size != 512:
        raise ValueError("sgdisk only writes 512-byte sector tables on image files; see tests for 4Kn")
    if disk_guid:
        cmd += ["-U", disk_guid]
    for p in parts:
        n = p["number"]
        end = p.get("end") or (p["start"] + p["size"] - 1)
        cmd += [f"-n{n}:{p['start']}:{end}", f"-t{n}:{p['type']}"]
        if p.get("label"):
            cmd += [f"-c{n}:{p['label']}"]
        if p.get("guid"):
            cmd += [f"-u{n}:{p['guid']}"]
        if p.get("attrs"):
            cmd += [f"-A{n}:=:{p['attrs']:016x}"]
    cmd.append(str(path))
    run(cmd)


def write_at(image: Path, offset: int, payload: Path) -> None:
    """Copy a filesystem image into the disk image at ``offset`` without truncating, keeping holes."""
    run(["dd", f"if={payload}", f"of={image}", "bs=1M", f"seek={offset}", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"])


def sfdisk_json(image: Path) -> dict:
    """``sfdisk --json`` of an image (util-linux 2.38 has no --sector-size; see test_volumes for 4K)."""
    return json.loads(run(["sfdisk", "--json", str(image)]).stdout)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
