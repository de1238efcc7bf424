"""Seed corpora for the fuzz targets, made with the real tools (and taken from the replicas).

Each target's seeds are built once and cached with ``tests/builders.cached`` (keyed by
``SEEDS_VERSION`` and the target): small filesystems made by ``mke2fs -d``, ``mkfs.xfs`` (with a
protofile), ``mkfs.btrfs --rootdir``, ``mkfs.vfat`` + ``mcopy``, ``mksquashfs`` and ``mkfs.erofs``
from one small tree; cpio archives by GNU ``cpio`` in every codec the kernel accepts; UKIs by
``objcopy`` on systemd's EFI stub; dm-verity hash devices by ``veritysetup format``; VM containers
by ``qemu-img convert``; GPT and MBR tables by ``sgdisk``/``sfdisk`` and the replicas' own tables;
grub.cfg files, unit files and os-release files read out of the replicas.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from builders import ENV, cached, run  # noqa: E402

from fuzz.targets import TARGETS, encode_sparse, encode_tree  # noqa: E402

SEEDS_VERSION = 1
REPLICAS = ["flatcar-stable-4593-amd64-pristine", "bottlerocket-aws-k8s-1.31-x86_64-pristine", "talos-v1.9.5-amd64-metal",
            "debian-12-amd64-genericcloud", "dps-particleos-amd64-booted", "cos-113-amd64-updated",
            "fcos-stable-43-amd64-updated", "talos-v1.12.2-amd64-secureboot-upgraded"]


def _tree(root: Path) -> Path:
    """A small tree with every entry kind a reader meets (seeds must stay small): files of a few
    sizes, nested directories, a directory of 40 entries, relative/absolute/dangling symlinks, a
    setuid file, names with spaces and UTF-8."""
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('NAME="Seed Linux"\nID=seed\nVERSION_ID=1\n')
    (root / "etc" / "hostname").write_text("seed\n")
    (root / "empty").write_bytes(b"")
    (root / "usr" / "bin" / "tool").write_bytes(hashlib.sha256(b"tool").digest() * 400)
    (root / "usr" / "bin" / "su").write_bytes(b"\x7fELF" + bytes(100))
    os.chmod(root / "usr" / "bin" / "su", 0o4755)
    (root / "usr" / "lib" / "systemd" / "system" / "sshd.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "dangling").symlink_to("nowhere/at/all")
    many = root / "many"
    many.mkdir()
    for i in range(40):
        (many / f"entry-{i:02d}-with-a-longer-name").write_text(str(i))
    (root / "a b" / "c").mkdir(parents=True)
    (root / "a b" / "c" / "\u00fcnicode \u2713").write_text("utf-8 name\n")
    return root


def _sparse_file(path: Path) -> bytes:
    return encode_sparse(path.read_bytes(), granule=1024)


def _sparse_ranges(path: Path, skip: list[tuple[int, int]] = ()) -> bytes:
    """Sparse encoding of the data extents of a (sparse) file, minus ``skip`` ranges."""
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    for start, length in skip:
        data[start : start + length] = bytes(min(length, size - start))
    return encode_sparse(bytes(data), granule=1024)


# ---- filesystems -----------------------------------------------------------------------------------
def _fs_ext4(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for name, args in (("ext2", ["-t", "ext2", "-b", "1024"]), ("ext4", ["-t", "ext4", "-b", "1024", "-O", "metadata_csum"]),
                       ("ext4-inline", ["-t", "ext4", "-b", "1024", "-I", "256", "-O", "inline_data"]),
                       ("ext4-4k", ["-t", "ext4", "-b", "4096", "-O", "^has_journal"])):
        img = out / f"{name}.img"
        run(["mke2fs", "-q", "-F", "-N", "128", "-O", "^resize_inode", "-E", "root_owner=0:0", "-d", tree, *args, img,
             "1M" if "4k" not in name else "4M"])
        seeds.append(_sparse_file(img))
    return seeds


def _protofile(tree: Path) -> str:
    """An mkfs.xfs protofile (xfsprogs mkfs/proto.c format) for ``tree``."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir()):
            if any(c.isspace() for c in str(p)):
                continue                      # the protofile is whitespace-separated
            st = p.lstat()
            name = p.name
            perm = f"{st.st_mode & 0o777:03o}"
            if p.is_symlink():
                lines.append(f"{'  ' * depth}{name} l--{perm} 0 0 {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{'  ' * depth}{name} d--{perm} 0 0")
                walk(p, depth + 1)
                lines.append(f"{'  ' * depth}$")
            elif p.is_file():
                lines.append(f"{'  ' * depth}{name} ---{perm} 0 0 {p}")
    walk(tree, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def _fs_xfs(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    proto = out / "proto"
    proto.write_text(_protofile(tree))
    env = dict(ENV, TEST_DIR="/tmp", TEST_DEV="fuzz", QA_CHECK_FS="1")   # xfsprogs: allow a filesystem under 300 MB
    for name, args in (("v5", []), ("v4", ["-m", "crc=0", "-n", "ftype=0"]), ("v5-dirblk8k", ["-i", "sparse=0", "-n", "size=8192"])):
        img = out / f"xfs-{name}.img"
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        run(["mkfs.xfs", "-q", "-f", "-d", "agcount=1", *args, "-p", proto, img], env=env)
        log = run(["xfs_db", "-r", "-c", "sb 0", "-c", "p logstart logblocks blocksize", img]).stdout.decode()
        vals = dict(line.split(" = ") for line in log.splitlines())
        bs = int(vals["blocksize"])
        seeds.append(_sparse_ranges(img, [(int(vals["logstart"]) * bs, int(vals["logblocks"]) * bs)]))
    return seeds


def _fs_btrfs(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for name, args in (("mixed", ["--mixed"]), ("default", []), ("zstd", ["--compress", "zstd"] if _supports("mkfs.btrfs", "--compress") else [])):
        img = out / f"btrfs-{name}.img"
        with open(img, "wb") as f:
            f.truncate(128 << 20 if name != "mixed" else 16 << 20)
        run(["mkfs.btrfs", "-q", "-f", *args, "--rootdir", tree, img])
        seeds.append(_sparse_file(img))
    return seeds


def _supports(tool: str, option: str) -> bool:
    return option in subprocess.run([tool, "--help"], capture_output=True, text=True).stdout + \
        subprocess.run([tool, "--help"], capture_output=True, text=True).stderr


def _fs_vfat(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for bits, size in ((12, 1 << 20), (16, 16 << 20), (32, 40 << 20)):
        img = out / f"fat{bits}.img"
        with open(img, "wb") as f:
            f.truncate(size)
        run(["mkfs.vfat", "-F", str(bits), "-n", f"FAT{bits}", img])
        for p in sorted(tree.rglob("*")):
            rel = p.relative_to(tree)
            if p.is_symlink():
                continue
            if p.is_dir():
                run(["mmd", "-i", img, f"::{rel}"])
            elif p.is_file():
                run(["mcopy", "-i", img, p, f"::{rel}"])
        seeds.append(_sparse_file(img))
    return seeds


def _fs_squashfs(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for comp, extra in (("gzip", []), ("xz", []), ("zstd", []), ("lz4", []), ("gzip", ["-noI", "-noD"]),
                        ("xz", ["-no-fragments"])):
        img = out / f"sq-{comp}-{len(extra)}.img"
        run(["mksquashfs", tree, img, "-noappend", "-quiet", "-no-progress", "-all-root", "-comp", comp, *extra])
        seeds.append(img.read_bytes())
    return seeds


def _fs_erofs(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for name, args in (("plain", []), ("lz4", ["-zlz4"]), ("lz4hc-tail", ["-zlz4hc", "-Eztailpacking"]),
                       ("chunk", ["--chunksize=4096"]), ("noinline", ["-Enoinline_data"])):
        img = out / f"erofs-{name}.img"
        run(["mkfs.erofs", "--quiet", "-T0", "--all-root", *args, img, tree])
        seeds.append(_sparse_file(img))
    return seeds


# ---- containers ----------------------------------------------------------------------------------
COMPRESS = {"gzip": ["gzip", "-n", "-9", "-c"], "xz": ["xz", "--check=crc32", "-c"], "zstd": ["zstd", "-q", "-c"],
            "lz4-legacy": ["lz4", "-l", "-q", "-c"], "bzip2": ["bzip2", "-c"], "lzma": ["lzma", "-c"]}


def _cpio(tree: Path) -> bytes:
    names = sorted(run(["find", "."], cwd=tree).stdout.splitlines())
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"], cwd=tree,
                          input=b"\n".join(names) + b"\n", capture_output=True, check=True).stdout


def _compress(kind: str, data: bytes) -> bytes:
    return subprocess.run(COMPRESS[kind], input=data, capture_output=True, check=True).stdout


def _cpio_seeds(out: Path, tree: Path) -> list[bytes]:
    small = out / "small"
    (small / "etc").mkdir(parents=True)
    (small / "etc" / "os-release").write_text("ID=talos\nVERSION_ID=v1.9.5\n")
    (small / "init").write_bytes(b"\x7fELF" + bytes(60))
    (small / "lib").symlink_to("usr/lib")
    raw = _cpio(small)
    full = _cpio(tree)
    seeds = [raw, full[: 1 << 16]]
    for kind in COMPRESS:
        seeds.append(_compress(kind, raw))
    seeds.append(raw + bytes(8) + _compress("zstd", raw) + bytes(4) + _compress("xz", raw))
    squash = out / "rootfs.sqsh"
    run(["mksquashfs", small, squash, "-noappend", "-quiet", "-no-progress", "-all-root", "-comp", "xz"])
    shutil.copy(squash, small / "rootfs.sqsh")
    seeds.append(_compress("zstd", _cpio(small)))
    return seeds


def _bzimage(version: str = "6.1.0-fuzz") -> bytes:
    """A bzImage boot header (Documentation/arch/x86/boot.rst): HdrS, protocol, kernel_version."""
    head = bytearray(0x1000)
    head[0:2] = b"MZ"
    head[0x1F1] = 4
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x020F)
    struct.pack_into("<H", head, 0x20E, 0x400 - 0x200)
    text = f"{version} (fuzz@seed) #1 SMP".encode()
    head[0x400 : 0x400 + len(text)] = text
    return bytes(head)


def _pe_seeds(out: Path, tree: Path) -> list[bytes]:
    stub = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    seeds = [_bzimage(), _compress("gzip", _bzimage())]
    arm = bytearray(0x2000)
    arm[0:4] = b"MZ\x00\x91"
    struct.pack_into("<QQQ", arm, 8, 0, 0x2000, 0x0A)
    arm[0x38:0x3C] = b"ARM\x64"
    arm[0x1000:0x1020] = b"Linux version 6.12.5-fuzz (x) #1\n"
    seeds.append(bytes(arm))
    payload = _compress("gzip", bytes(arm))
    zboot = bytearray(0x400)
    zboot[0:2] = b"MZ"
    zboot[4:8] = b"zimg"
    struct.pack_into("<II", zboot, 8, 0x400, len(payload))
    zboot[24:28] = b"gzip"
    seeds.append(bytes(zboot) + payload)
    if stub.exists():
        parts = {".osrel": b"ID=fuzz\nVERSION_ID=1\n", ".cmdline": b"root=PARTLABEL=root ro roothash=" + b"ab" * 32,
                 ".uname": b"6.1.0-fuzz", ".initrd": _compress("gzip", _cpio_seeds_small(out)), ".linux": _bzimage()}
        vma = 0x100000
        args = []
        for name, body in parts.items():
            f = out / f"sec{name}"
            f.write_bytes(body)
            args += ["--add-section", f"{name}={f}", "--change-section-vma", f"{name}={vma:#x}"]
            vma += (len(body) + 0xFFFF) & ~0xFFFF
        uki = out / "uki.efi"
        run(["objcopy", *args, stub, uki])
        seeds.append(uki.read_bytes())
        prof = out / "profile"
        prof.write_bytes(b"ID=main\n")
        uki2 = out / "uki-profile.efi"
        run(["objcopy", "--add-section", f".profile={prof}", "--change-section-vma", f".profile={vma:#x}", uki, uki2])
        seeds.append(uki2.read_bytes())
    return seeds


def _cpio_seeds_small(out: Path) -> bytes:
    d = out / "initrd-tree"
    (d / "etc").mkdir(parents=True, exist_ok=True)
    (d / "etc" / "initrd-release").write_text("ID=fuzz\n")
    return _cpio(d)


def _talos_meta_seeds(out: Path, tree: Path) -> list[bytes]:
    from immutools.replica.bootassets import make_talos_meta

    seeds = []
    for value in ({"tags": {"6": "upgrade-v1.9.5", "17": "sd-boot"}},
                  {"tags": {"10": "{}", "16": "token"}, "copies": [1]},
                  {"tags": {"6": "x"}, "corrupt": [1], "legacy": {"6": "legacy"}}):
        seeds.append(encode_sparse(make_talos_meta(value, "fuzz seed")))
    return seeds


def _verity_seeds(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for name, blocks, args in (("sha256", 8, []), ("one-block", 1, []), ("small-blocks", 16, ["--data-block-size=512", "--hash-block-size=512"]),
                               ("sha1", 8, ["--hash=sha1"]), ("chromeos", 8, ["--format=0"]), ("nosalt", 8, ["--salt=-"])):
        data, hashdev = out / f"{name}.data", out / f"{name}.hash"
        bs = 512 if "small" in name else 4096
        data.write_bytes(hashlib.sha256(name.encode()).digest() * (blocks * bs // 32))
        hashdev.write_bytes(b"")
        run(["veritysetup", "format", *args, data, hashdev])
        seeds.append(hashdev.read_bytes())
    return seeds


# ---- text from the replicas -------------------------------------------------------------------------
def _replica_files(patterns: tuple[str, ...], limit: int = 40, max_bytes: int = 1 << 16) -> list[tuple[str, bytes, str]]:
    """(path, content, replica) of files whose path ends with one of ``patterns``, in the replicas'
    readable filesystems (read with immutools itself: the seeds only need to be real content)."""
    from replicas import build_replica

    from immutools.disk import DiskImage
    from immutools.errors import ImmutoolsError

    found = []
    for spec in REPLICAS:
        try:
            path = build_replica(spec)
        except Exception:  # noqa: BLE001 - a replica that cannot be built here gives no seeds
            continue
        with DiskImage.open(path, progress=False) as image:
            for vol, fs in image.filesystems():
                try:
                    for entry in fs.walk("/"):
                        if entry.stat.is_file and entry.path.endswith(patterns) and entry.stat.size <= max_bytes:
                            found.append((entry.path, fs.read(entry.path, max_bytes=max_bytes), spec))
                            if len(found) >= limit * len(REPLICAS):
                                break
                except ImmutoolsError:
                    continue
    return found


def _grub_seeds(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for path, body, _spec in _replica_files(("grub.cfg",)):
        seeds.append(encode_tree({"/grub.cfg": body, "/grub/grubenv": b"# GRUB Environment Block\nsaved_entry=0\n"}))
    return seeds or [encode_tree({"/grub.cfg": "set default=0\nmenuentry 'x' { linux /vmlinuz root=/dev/sda1 ro }\n"})]


def _dm_table_seeds(out: Path, tree: Path) -> list[bytes]:
    seeds = []
    for _path, body, _spec in _replica_files(("grub.cfg",)):
        for line in body.decode("utf-8", "replace").splitlines():
            if "dm-mod.create" in line or "verity" in line:
                seeds.append(line.strip().encode())
    seeds.append(b'dm-mod.create="root,,,ro,0 1638400 verity 1 /dev/sda3 /dev/sda4 4096 4096 204800 1 sha256 '
                 + b"ab" * 32 + b" " + b"cd" * 32 + b' 1 ignore_zero_blocks"')
    return seeds


def _units_seeds(out: Path, tree: Path) -> list[bytes]:
    files = _replica_files((".service", ".target", ".mount", ".socket", ".timer", ".preset", ".conf", ".automount"), limit=60)
    seeds = []
    by_spec: dict[str, dict[str, bytes]] = {}
    for path, body, spec in files:
        if "/systemd/" in path:
            by_spec.setdefault(spec, {})[path] = body
    for spec, tree_files in by_spec.items():
        items = sorted(tree_files.items())
        for i in range(0, len(items), 12):
            chunk = dict(items[i : i + 12])
            first = next((p for p in chunk if p.endswith(".service")), None)
            if first:
                name = first.rsplit("/", 1)[1]
                chunk[f"/etc/systemd/system/multi-user.target.wants/{name}@"] = first.encode()
            chunk["/etc/systemd/system/default.target@"] = b"/usr/lib/systemd/system/multi-user.target"
            seeds.append(encode_tree(chunk))
    return seeds


def _os_release_seeds(out: Path, tree: Path) -> list[bytes]:
    return sorted({body for _p, body, _s in _replica_files(("os-release", "initrd-release"))})


def _volumes_seeds(out: Path, tree: Path) -> list[bytes]:
    from replicas import build_replica

    seeds = []
    for spec in REPLICAS:
        try:
            img = build_replica(spec)
        except Exception:  # noqa: BLE001
            continue
        size = img.stat().st_size
        with open(img, "rb") as f:
            head = f.read(64 << 10)
            f.seek(size - (64 << 10))
            tail = f.read()
        seeds.append(encode_sparse(size=size, chunks=[(0, head), (size - len(tail), tail)]))
    mbr = out / "mbr.img"
    with open(mbr, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(mbr)], input="label: dos\n,8M,L\n,8M,82\n,,E\n,8M,L\n,8M,L\n,,L\n",
                   text=True, check=True, capture_output=True)
    seeds.append(_sparse_file(mbr))
    hybrid = out / "hybrid.img"
    with open(hybrid, "wb") as f:
        f.truncate(32 << 20)
    run(["sgdisk", "-n", "1:2048:+4M", "-t", "1:ef00", "-n", "2:0:+8M", "-t", "2:8300", "-c", "2:root", "-A", "2:set:2",
         "-h", "1:EE", hybrid])
    seeds.append(_sparse_file(hybrid))
    return seeds


def _vmdisk_seeds(out: Path, tree: Path) -> list[bytes]:
    raw = out / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
    run(["sgdisk", "-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300", raw])
    with open(raw, "r+b") as f:
        f.seek(2 << 20)
        f.write(hashlib.sha256(b"data").digest() * 512)
    seeds = []
    for name, args in (("qcow2", ["-O", "qcow2", "-o", "cluster_size=4096"]), ("qcow2-c", ["-c", "-O", "qcow2", "-o", "cluster_size=4096"]),
                       ("qcow2-64k", ["-O", "qcow2"]),
                       ("vmdk", ["-O", "vmdk"]), ("vmdk-stream", ["-O", "vmdk", "-o", "subformat=streamOptimized"]),
                       ("vhd", ["-O", "vpc"]), ("vhd-fixed", ["-O", "vpc", "-o", "subformat=fixed"]), ("vhdx", ["-O", "vhdx"])):
        img = out / f"{name}.img"
        run(["qemu-img", "convert", "-q", *args, raw, img])
        seeds.append(_sparse_file(img))
    return seeds


BUILDERS = {
    "volumes": _volumes_seeds, "erofs": _fs_erofs, "cpio": _cpio_seeds, "pe": _pe_seeds, "talos-meta": _talos_meta_seeds,
    "verity": _verity_seeds, "dm-table": _dm_table_seeds, "grub": _grub_seeds, "units": _units_seeds,
    "os-release": _os_release_seeds, "vmdisk": _vmdisk_seeds, "fs-ext4": _fs_ext4, "fs-xfs": _fs_xfs,
    "fs-btrfs": _fs_btrfs, "fs-vfat": _fs_vfat, "fs-squashfs": _fs_squashfs,
}
assert set(BUILDERS) == set(TARGETS), set(BUILDERS) ^ set(TARGETS)


def seed_dir(target: str) -> Path:
    """The cached directory of ``target``'s seeds (one file each), built on first use."""
    def build(out: Path) -> None:
        out.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="immutools-seeds-") as tmp:
            work = Path(tmp)
            tree = _tree(work / "tree")
            for i, seed in enumerate(BUILDERS[target](work, tree)):
                (out / f"seed-{i:03d}").write_bytes(seed)

    return cached(f"fuzz-seeds-{target}", {"v": SEEDS_VERSION, "target": target}, build, suffix="")


if __name__ == "__main__":
    for name in sys.argv[1:] or list(BUILDERS):
        d = seed_dir(name)
        sizes = [p.stat().st_size for p in d.iterdir()]
        print(f"{name}: {len(sizes)} seeds, largest {max(sizes, default=0)} bytes, {d}")
