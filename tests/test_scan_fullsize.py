"""A whole scan of a Debian image whose root holds a full-size tree, against GNU find.

The image is the Debian 12 genericcloud replica with its ext4 root rebuilt (``debugfs rdump`` of
the replica's root, a large tree grafted in, ``mke2fs -d`` with the same UUID, spliced back at the
same offset): the scan must report exactly the setuid and setgid files ``find`` sees in that tree
(/proc, /sys, /dev pruned) and the number of kernel module files under /usr/lib/modules, and stay
under 300 MB of memory. The tree here is generated (about 70,000 entries, deterministic: the test
must not depend on what the build machine has installed).

Run as a script, the same builder measures instead (medians, side by side in one run)::

    .venv/bin/python -m tests.test_scan_fullsize --source /usr --runs 3

grafts the host's /usr (file contents cut to 512 bytes) into the image and compares
``walk_table``/``find_special`` (ext4 and XFS) and a whole ``immutools scan`` with ``e2fsck -fn`` and
``xfs_repair -n`` on the same filesystems.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.builders import REPO, cached, have, run
from tests.measured import run_measured

ROOT_PARTITION = 1
PSEUDO = ("proc", "sys", "dev")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
KERNEL = "6.1.0-25-cloud-amd64"
KEEP_BYTES = 512                 # of each file copied from a host tree (ELF headers survive)
GENERATED_VERSION = 2


# ---- trees -----------------------------------------------------------------------------------------
def generated_tree(root: Path, seed: int = 1) -> None:
    """A /usr of a Debian-like shape: per-package doc directories, shared libraries with their
    version symlinks, binaries (some setuid/setgid), locales, a kernel's module tree, python
    packages; about 70,000 entries."""
    rng = random.Random(seed)
    usr = root / "usr"

    def write(path: Path, data: bytes = b"x", mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)

    for i in range(5000):
        doc = usr / "share" / "doc" / f"pkg{i:04d}"
        write(doc / "copyright", b"c")
        write(doc / "changelog.Debian.gz", b"\x1f\x8b")
        if i % 3 == 0:
            (doc / "examples").mkdir()
            write(doc / "examples" / "example.conf")
    lib = usr / "lib" / "x86_64-linux-gnu"
    for i in range(6000):
        name = f"lib{i:04d}.so"
        write(lib / f"{name}.1.2.3", b"\x7fELF\x02\x01\x01" + bytes(57), 0o644)
        (lib / f"{name}.1").symlink_to(f"{name}.1.2.3")
        if i % 2 == 0:
            (lib / name).symlink_to(f"{name}.1")
    for i in range(2500):
        mode = 0o755
        if i % 150 == 7:
            mode = 0o4755
        elif i % 150 == 11:
            mode = 0o2755
        elif i % 400 == 13:
            mode = 0o6755
        write(usr / ("sbin" if i % 5 == 0 else "bin") / f"tool{i:04d}", b"\x7fELF\x02\x01\x01" + bytes(57), mode)
    write(usr / "lib" / "dbus-1.0" / "dbus-daemon-launch-helper", b"\x7fELF", 0o4754)
    for lang in range(150):
        for n in range(80):
            write(usr / "share" / "locale" / f"l{lang:03d}" / "LC_MESSAGES" / f"dom{n:02d}.mo")
    modules = usr / "lib" / "modules" / KERNEL
    for i in range(4000):
        sub = f"kernel/drivers/d{i % 97:02d}/s{i % 7}"
        suffix = MODULE_SUFFIXES[i % 4] if i % 10 else ".ko.xz"
        write(modules / sub / f"mod{i:04d}{suffix}")
    for name in ("modules.dep", "modules.alias", "modules.order"):
        write(modules / name)
    write(modules / "kernel" / "README.txt")
    for pkg in range(1000):
        base = usr / "lib" / "python3" / "dist-packages" / f"pkg{pkg:03d}"
        for m in range(rng.randrange(4, 16)):
            write(base / f"mod{m}.py", b"pass\n")
        (base / "__pycache__").mkdir()
        write(base / "__pycache__" / "mod0.cpython-311.pyc", b"\x00")


def copy_host_tree(src: Path, dst: Path) -> None:
    """``src`` copied with its names, modes, owners, symlinks and hard links, each file cut to its
    first ``KEEP_BYTES`` bytes; names that are not valid UTF-8 or sockets are left out."""
    seen: dict[tuple[int, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            s = os.path.join(dirpath, name)
            t = target_dir / name
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), t)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    os.link(seen[key], t)
                    continue
                with open(s, "rb") as f:
                    t.write_bytes(f.read(KEEP_BYTES))
                seen[key] = t
            else:
                continue
            os.lchown(t, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(t, stat.S_IMODE(st.st_mode))
        for d in dirnames:
            sd = os.path.join(dirpath, d)
            if not os.path.islink(sd):
                st = os.lstat(sd)
                (target_dir / d).mkdir(exist_ok=True)
                os.chown(target_dir / d, st.st_uid, st.st_gid)
                os.chmod(target_dir / d, stat.S_IMODE(st.st_mode))


# ---- the image -------------------------------------------------------------------------------------
def root_partition(disk: Path) -> tuple[int, int]:
    table = json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p["node"].endswith(str(ROOT_PARTITION)) and p["start"] > 8192)
    return part["start"] * table["sectorsize"], part["size"] * table["sectorsize"]


def build_fullsize_debian(out_dir: Path, graft: Path, keep_root_fs: bool = False) -> tuple[Path, Path]:
    """(disk image, its root tree) under ``out_dir``: the Debian replica with ``graft`` merged into
    its root filesystem (the replica's own files win); ``keep_root_fs`` keeps the root filesystem
    image (``root.ext4``) too."""
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))    # tests/replicas.py imports "builders"
    from tests.replicas import build_replica

    thin = build_replica("debian-12-amd64-genericcloud")
    offset, size = root_partition(thin)
    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / "thin-root.ext4"
    run(["dd", f"if={thin}", f"of={part}", "bs=1M", f"skip={offset}", f"count={size}", "iflag=skip_bytes,count_bytes",
         "conv=sparse", "status=none"])
    uuid = run(["tune2fs", "-l", part]).stdout.decode()
    uuid = next(line.split()[-1] for line in uuid.splitlines() if line.startswith("Filesystem UUID"))
    tree = out_dir / "root"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    run(["debugfs", "-R", f"rdump / {tree}", part])
    part.unlink()
    run(["cp", "-a", "-n", f"{graft}/.", str(tree)])
    new_part = out_dir / "root.ext4"
    entries = sum(len(d) + len(f) for _r, d, f in os.walk(tree))
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", uuid, "-N", str(entries * 2 + 10000), "-d", tree, new_part,
         str(size // 1024) + "k"])
    disk = out_dir / "debian-fullsize.raw"
    run(["cp", "--sparse=always", thin, disk])
    run(["dd", f"if={new_part}", f"of={disk}", "bs=1M", f"seek={offset}", "oflag=seek_bytes", "conv=notrunc,sparse",
         "status=none"])
    if not keep_root_fs:
        new_part.unlink()
    return disk, tree


def generated_image() -> tuple[Path, Path]:
    def build(path: Path) -> None:
        graft = path / "graft"
        generated_tree(graft)
        build_fullsize_debian(path, graft)
        shutil.rmtree(graft)

    out = cached("fullsize-debian", {"v": GENERATED_VERSION}, build, suffix="")
    return out / "debian-fullsize.raw", out / "root"


# ---- references ------------------------------------------------------------------------------------
def find_special(tree: Path, perm: str) -> list[str]:
    prune = []
    for p in PSEUDO:
        prune += ["-path", str(tree / p), "-o"]
    out = subprocess.run(["find", str(tree), "(", *prune[:-1], ")", "-prune", "-o", "-type", "f", "-perm", perm, "-print"],
                         capture_output=True, text=True, check=True).stdout
    return sorted("/" + line[len(str(tree)):].lstrip("/") for line in out.splitlines())


def module_count(tree: Path) -> int:
    out = subprocess.run(["find", str(tree / "usr" / "lib" / "modules"), "-type", "f"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.endswith(MODULE_SUFFIXES))


def scan_json(image: Path) -> tuple[dict, int]:
    """The scan report and the peak RSS (KiB) of the process that made it."""
    proc = run_measured([sys.executable, "-c", "import json, sys; from immutools.scan import scan; "
                         "print(json.dumps(scan(sys.argv[1])))", str(image)], timeout=600, cwd=REPO)
    assert proc.code == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout), proc.max_rss_kib


@pytest.mark.slow
@pytest.mark.skipif(not (have("mke2fs") and have("debugfs") and have("sfdisk")), reason="needs e2fsprogs, sfdisk")
def test_fullsize_scan_matches_find():
    image, tree = generated_image()
    report, rss_kib = scan_json(image)
    assert report["os"]["id"] == "debian"
    surface = report["surface"]
    assert surface["setuid"] == find_special(tree, "-4000")
    assert surface["setgid"] == find_special(tree, "-2000")
    assert len(surface["setuid"]) > 10
    assert surface["kernel_modules"]["count"] == module_count(tree) >= 4000       # (the replica has its own too)
    assert rss_kib < 300 * 1024


@pytest.mark.slow
@pytest.mark.skipif(not (have("mke2fs") and have("debugfs") and have("sfdisk")), reason="needs e2fsprogs, sfdisk")
def test_fullsize_root_bulk_equals_per_entry():
    """On the full-size root, the bulk ext4 walk and the per-entry walk agree entry for entry."""
    from immutools.fs import open_filesystem
    from immutools.fs.base import FileSystem
    from immutools.image.source import FileSource

    image, _tree = generated_image()
    offset, size = root_partition(image)
    fs = open_filesystem(FileSource(image).slice(offset, size))
    bulk = fs.walk_table("/")
    slow = FileSystem.walk_table(fs, "/")
    assert len(bulk) > 50_000

    def rows(t):
        return sorted((t.path(i), int(t.mode[i]), int(t.uid[i]), int(t.gid[i]), int(t.size[i]), int(t.inode[i]))
                      for i in range(len(t)))

    assert rows(bulk) == rows(slow)


# ---- measurement (not a test) ------------------------------------------------------------------------
def _child(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of one run of ``cmd``, by GNU
    time. CPU time is the steadier number on a shared machine; both are reported."""
    with tempfile.NamedTemporaryFile() as out:
        subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", out.name, *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, cwd=REPO)
        wall, user, system, rss = Path(out.name).read_text().split()[-4:]
        return float(wall), float(user) + float(system), int(rss)


WALK_SNIPPET = (
    "import sys, time; t0 = time.perf_counter(); "
    "from immutools.image.source import FileSource; from immutools.fs import open_filesystem; "
    "src = FileSource(sys.argv[1]); off, size = int(sys.argv[3]), int(sys.argv[4]); "
    "src = src.slice(off, size) if size else src; fs = open_filesystem(src); t1 = time.perf_counter(); "
    "c1 = time.process_time(); n = len(fs.walk_table('/')) if sys.argv[2] == 'table' else len(fs.find_special('/')); "
    "c2 = time.process_time(); print(f'{n} {t1 - t0:.4f} {c2 - c1:.4f}', file=sys.stderr)"
)


def measure(source: Path, runs: int, work: Path) -> str:
    """Build (once) and measure; returns a Markdown report."""
    py = sys.executable
    graft = work / "graft"
    if not (work / "debian-fullsize.raw").exists():
        if not (work / "graft.done").exists():
            if graft.exists():
                shutil.rmtree(graft)
            copy_host_tree(source, graft / source.relative_to(source.anchor))
            (work / "graft.done").write_text(str(source))
        build_fullsize_debian(work, graft, keep_root_fs=True)
    image = work / "debian-fullsize.raw"
    tree = work / "root"
    offset, size = root_partition(image)
    root_fs = work / "root.ext4"
    xfs = work / "root.xfs"
    if not xfs.exists() and have("mkfs.xfs"):
        from tests.fs_helpers import xfs_protofile

        text, _skipped = xfs_protofile(tree)
        proto = work / "root.proto"
        proto.write_text(text)
        with open(xfs, "wb") as f:
            f.truncate(8 << 30)
        run(["mkfs.xfs", "-q", "-f", "-p", proto, xfs])
    entries = sum(len(d) + len(f) for _r, d, f in os.walk(tree))

    def median(cmd):
        samples = [_child(cmd) for _ in range(runs)]
        return (statistics.median(x[0] for x in samples), statistics.median(x[1] for x in samples),
                max(x[2] for x in samples))

    def walk(kind, img, off=0, sz=0):
        """(in-process CPU of the walk alone, rows, whole process wall/cpu/rss)."""
        inner = []
        for _ in range(runs):
            proc = subprocess.run([py, "-c", WALK_SNIPPET, str(img), kind, str(off), str(sz)], capture_output=True,
                                  text=True, cwd=REPO)
            n, _t_open, t_walk = proc.stderr.split()[-3:]
            inner.append((float(t_walk), int(n)))
        whole = median([py, "-c", WALK_SNIPPET, str(img), kind, str(off), str(sz)])
        return statistics.median(x[0] for x in inner), inner[0][1], whole

    rows = [("ext4", "e2fsck -fn", median(["e2fsck", "-fn", str(root_fs)]),
             walk("table", image, offset, size), walk("special", image, offset, size))]
    if xfs.exists():
        rows.append(("xfs", "xfs_repair -n", median(["xfs_repair", "-n", str(xfs)]), walk("table", xfs), walk("special", xfs)))
    scan = median([py, "-m", "immutools", "scan", str(image), "--format", "json", "-o", "/dev/null"])
    e2 = rows[0][2]
    lines = [f"Tree: {source} grafted into the Debian replica's root ({entries:,} entries in the root); medians of {runs} "
             "runs; wall / CPU (user+system) of whole processes, measured with GNU time, side by side.", "",
             "| filesystem | reference (wall / CPU) | walk_table: walk alone, whole process (wall / CPU) | ratio wall / CPU | "
             "find_special: walk alone, whole process | ratio wall / CPU | peak RSS |", "|---|---|---|---|---|---|---|"]
    for fs_name, ref_name, ref, table, special in rows:
        lines.append(
            f"| {fs_name} | `{ref_name}` {ref[0]:.2f} s / {ref[1]:.2f} s | {table[0]:.2f} s, {table[2][0]:.2f} s / "
            f"{table[2][1]:.2f} s ({table[1]:,} rows) | {table[2][0] / ref[0]:.2f}x / {table[2][1] / ref[1]:.2f}x | "
            f"{special[0]:.2f} s, {special[2][0]:.2f} s / {special[2][1]:.2f} s ({special[1]} hits) | "
            f"{special[2][0] / ref[0]:.2f}x / {special[2][1] / ref[1]:.2f}x | {max(table[2][2], special[2][2]) / 1024:.0f} MiB |")
    lines += ["", f"Whole `immutools scan IMAGE --format json -o /dev/null`: {scan[0]:.2f} s wall / {scan[1]:.2f} s CPU, "
              f"peak RSS {scan[2] / 1024:.0f} MiB: {scan[0] / e2[0]:.2f}x / {scan[1] / e2[1]:.2f}x `e2fsck -fn` on its root "
              f"({e2[0]:.2f} s / {e2[1]:.2f} s)."]
    return "\n".join(lines)


def measure_images(images: list[Path], runs: int) -> str:
    """Bare ext4/XFS images (e.g. the bench's ``walk.ext4``): walks vs ``e2fsck -fn`` / ``xfs_repair -n``."""
    from immutools.fs.probe import identify
    from immutools.image.source import FileSource

    py = sys.executable
    lines = ["| image | reference (wall / CPU) | walk_table whole process (wall / CPU) | ratio | find_special whole process | ratio | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for img in images:
        kind = identify(FileSource(img)).fstype
        ref_cmd = ["xfs_repair", "-n", str(img)] if kind == "xfs" else ["e2fsck", "-fn", str(img)]
        samples = {name: [_child(cmd) for _ in range(runs)] for name, cmd in (
            ("ref", ref_cmd), ("table", [py, "-c", WALK_SNIPPET, str(img), "table", "0", "0"]),
            ("special", [py, "-c", WALK_SNIPPET, str(img), "special", "0", "0"]))}
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), max(x[2] for x in v))
               for k, v in samples.items()}
        ref, table, special = med["ref"], med["table"], med["special"]
        alone = {}
        for what in ("table", "special"):
            cpu = []
            for _ in range(runs):
                err = subprocess.run([py, "-c", WALK_SNIPPET, str(img), what, "0", "0"], capture_output=True, text=True,
                                     cwd=REPO).stderr.split()
                cpu.append(float(err[-1]))
                alone[what + "_rows"] = int(err[-3])
            alone[what] = statistics.median(cpu)
        lines.append(f"| {img.name} ({kind}, {alone['table_rows']:,} entries) | `{' '.join(ref_cmd[:2])}` {ref[0]:.2f} s / "
                     f"{ref[1]:.2f} s | {table[0]:.2f} s / {table[1]:.2f} s (walk alone {alone['table']:.2f} s CPU) | "
                     f"{table[0] / ref[0]:.2f}x / {table[1] / ref[1]:.2f}x | {special[0]:.2f} s / {special[1]:.2f} s "
                     f"(alone {alone['special']:.2f} s, {alone['special_rows']} hits) | {special[0] / ref[0]:.2f}x / "
                     f"{special[1] / ref[1]:.2f}x | {max(table[2], special[2]) / 1024:.0f} MiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="measure the bulk walks and a whole scan on a full-size Debian image")
    ap.add_argument("--source", type=Path, default=Path("/usr"), help="host tree to graft (default /usr)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "fastwalk" / "fullsize")
    ap.add_argument("--images", type=Path, nargs="*", help="instead: bare ext4/XFS images to walk")
    args = ap.parse_args()
    if args.images:
        print(measure_images(args.images, args.runs))
    else:
        print(measure(args.source.resolve(), args.runs, args.work))
