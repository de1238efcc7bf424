"""Filesystem images from staged trees, made by the real tools: ``mkfs.vfat`` + ``mcopy``,
``mke2fs -d`` (+ ``tune2fs``, Flatcar's read-only hack, Bottlerocket's ``resize2fs -M``),
``mkfs.btrfs --rootdir``, ``mkfs.xfs -p`` (protofile), ``mksquashfs`` and ``mkfs.erofs``; and the
``image`` entry kind (a filesystem image as a file inside a tree, e.g. a sysext).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

from immutools.replica.bottlerocket import shrink_ext
from immutools.replica.context import TOOL_PATH, Build, BuildError, SpecError, truncate
from immutools.replica.kinds import register
from immutools.replica.ostree import stage_sysroot_part
from immutools.replica.spec import FS_TYPES, parse_int, parse_size, render, validate_content
from immutools.replica.tree import stage_tree


def _validate_image(img, where, trees, validate_entry) -> None:
    if img.get("type") not in FS_TYPES:
        raise SpecError(f"{where}.image.type: one of {', '.join(FS_TYPES)}")
    validate_content(img, f"{where}.image", trees, None)


@register("image", value=dict, validate=_validate_image)
def image_entry(build, value, entry, ctx, where) -> bytes:
    return make_nested_image(build, value, ctx, where)


def make_nested_image(build: Build, img: dict, ctx: dict, where: str) -> bytes:
    """A filesystem image file inside a tree (e.g. a squashfs sysext)."""
    out = build.tmp("nested.img")
    size = parse_size(img["size"], f"{where}.image.size") if "size" in img else None
    make_filesystem(build, img, ctx, out, size, f"{where}.image")
    data = out.read_bytes()
    out.unlink()
    return data


def make_filesystem(build: Build, content: dict, ctx: dict, out: Path, size: int | None, where: str,
                    extra_files: dict | None = None) -> dict:
    """Make the filesystem ``content`` describes in ``out`` (``size`` bytes if given); return facts."""
    content = render(content, ctx, where)
    ftype = content["type"]
    if "size" in content:
        size = parse_size(content["size"], f"{where}.size")
    staging = None
    if content.get("tree") is not None or extra_files:
        staging = stage_tree(build, content.get("tree"), ctx, where, extra_files)
    if content.get("ostree"):
        staging = stage_sysroot_part(build, content["ostree"], ctx, where, staging, ftype)
    step = f"{where}:{ftype}"
    r = build.runner
    opts = [str(o) for o in content.get("options") or []]
    facts: dict = {"type": ftype}
    if ftype == "vfat":
        if size is None:
            raise SpecError(f"{where}: vfat needs a size")
        truncate(out, size)
        cmd = ["mkfs.vfat", "-F", str(content.get("fat_bits", 32))]
        if content.get("label"):
            cmd += ["-n", content["label"]]
        if content.get("serial"):
            cmd += ["-i", str(content["serial"])]
        r.run(cmd + opts + [out], step)
        if staging is not None:
            for p in staging.rglob("*"):
                if p.is_symlink():
                    raise SpecError(f"{where}: vfat cannot hold the symlink {p.relative_to(staging)}")
            tops = sorted(staging.iterdir())
            if tops:
                r.run(["mcopy", "-s", "-p", "-m", "-Q", "-i", out, *tops, "::/"], step)
        facts.update(label=content.get("label"), serial=content.get("serial"))
    elif ftype in ("ext2", "ext3", "ext4"):
        if size is None:
            raise SpecError(f"{where}: {ftype} needs a size")
        bs = parse_int(content.get("block_size", 4096), f"{where}.block_size")
        truncate(out, size)
        cmd = ["mke2fs", "-q", "-F", "-t", ftype, "-b", bs]
        if "inode_ratio" in content:
            cmd += ["-i", parse_int(content["inode_ratio"], f"{where}.inode_ratio")]
        if "inode_size" in content:
            cmd += ["-I", parse_int(content["inode_size"], f"{where}.inode_size")]
        if "reserved_percent" in content:
            cmd += ["-m", content["reserved_percent"]]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-U", content["uuid"]]
        if content.get("features"):
            cmd += ["-O", ",".join(content["features"]) if isinstance(content["features"], list) else content["features"]]
        ext = ["root_owner=0:0"]
        if content.get("hash_seed"):
            ext.append(f"hash_seed={content['hash_seed']}")
        ext += [str(x) for x in content.get("extended") or []]
        cmd += ["-E", ",".join(ext)]
        if staging is not None:
            cmd += ["-d", staging]
        r.run(cmd + opts + [out, size // bs], step)
        for args in content.get("tune2fs") or []:
            r.run(["tune2fs", *[str(a) for a in args], out], step + ":tune2fs")
        if content.get("shrink"):
            facts.update(shrink_ext(r, out, step))
        if content.get("ro_compat_hack"):
            ext_ro_compat_hack(out)
            facts["ro_compat_hack"] = True
    elif ftype == "btrfs":
        if size is None:
            raise SpecError(f"{where}: btrfs needs a size")
        if not out.exists() or out.stat().st_size < size:
            truncate(out, size)
        cmd = ["mkfs.btrfs", "-q", "-f", "-K", "-b", size]
        if content.get("mixed", False):
            cmd.append("--mixed")
        if content.get("metadata"):
            cmd += ["-m", content["metadata"]]
        if content.get("data"):
            cmd += ["-d", content["data"]]
        if content.get("nodesize"):
            cmd += ["-n", content["nodesize"]]
        if content.get("sectorsize"):
            cmd += ["-s", content["sectorsize"]]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-U", content["uuid"]]
        if staging is not None:
            cmd += ["-r", staging]
        r.run(cmd + opts + [out], step)
        facts["properties_not_set"] = dict(content.get("properties") or {})
    elif ftype == "xfs":
        if size is None:
            raise SpecError(f"{where}: xfs needs a size")
        truncate(out, size)
        cmd = ["mkfs.xfs", "-q", "-f"]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-m", f"uuid={content['uuid']}"]
        sticky: list[tuple[str, int]] = []
        if staging is not None:
            proto = build.tmp("xfs.proto")
            proto.write_text(xfs_protofile(staging, where, build.owners, sticky))
            cmd += ["-p", proto]
        r.run(cmd + opts + [out], step)
        for rel, mode in sticky:
            # protofiles have no sticky bit: set the full mode with xfs_db (expert mode, an image file)
            r.run(["xfs_db", "-x", "-c", f"path /{rel}", "-c", f"write core.mode 0{mode:o}", out], step + ":sticky")
    elif ftype == "squashfs":
        if staging is None:
            staging = stage_tree(build, None, ctx, where)
        if out.exists():
            out.unlink()
        # SOURCE_DATE_EPOCH (set by the runner) fixes the mkfs time and every inode time; mksquashfs
        # refuses -mkfs-time/-all-time when it is set.
        cmd = ["mksquashfs", staging, out, "-noappend", "-no-progress", "-quiet"]
        if content.get("comp"):
            cmd += ["-comp", content["comp"]]
        if content.get("block_size"):
            cmd += ["-b", content["block_size"]]
        r.run(cmd + opts, step)
        if size is not None:
            if out.stat().st_size > size:
                raise BuildError(f"{where}: squashfs is {out.stat().st_size} bytes, more than the {size} available")
    elif ftype == "erofs":
        if staging is None:
            staging = stage_tree(build, None, ctx, where)
        if out.exists():
            out.unlink()
        cmd = ["mkfs.erofs", f"-T{build.epoch}"]
        if content.get("compress"):
            cmd.append(f"-z{content['compress']}")
        if content.get("uuid"):
            cmd.append(f"-U{content['uuid']}")
        r.run(cmd + opts + [out, staging], step)
        if size is not None and out.stat().st_size > size:
            raise BuildError(f"{where}: erofs is {out.stat().st_size} bytes, more than the {size} available")
    else:
        raise SpecError(f"{where}: {ftype!r} is not a filesystem type")
    if staging is not None:
        build.remove_tree(staging)
    facts.update(blkid(build, out, where))
    return facts


def blkid(build: Build, path: Path, where: str) -> dict:
    """What ``blkid -p`` (the reference prober) says about a content file."""
    proc = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                          env=dict(os.environ, PATH=TOOL_PATH))
    out = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            if k in ("TYPE", "LABEL", "UUID", "UUID_SUB", "VERSION", "BLOCK_SIZE", "FSBLOCKSIZE", "FSSIZE"):
                out["blkid_" + k.lower()] = v
    return out


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Raw CRC-32C (Castagnoli, reflected poly 0x82F63B78) without the final inversion, as ext4 uses it."""
    table = _crc32c_table()
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


_CRC_TABLE: list[int] = []


def _crc32c_table() -> list[int]:
    if not _CRC_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    return _CRC_TABLE


EXT_SB = 1024
EXT_RO_COMPAT = EXT_SB + 0x64
EXT_RO_COMPAT_METADATA_CSUM = 0x400
EXT_SB_CHECKSUM = EXT_SB + 0x3FC


def ext_ro_compat_hack(path: Path) -> None:
    """Flatcar's read-only hack (flatcar/scripts build_library/disk_util Tune, ext2 era): top byte of s_feature_ro_compat (byte 0x467) := 0xFF,
    so kernels refuse a read-write mount. Re-checksums the superblock when metadata_csum is on."""
    with open(path, "r+b") as f:
        sb = bytearray(os.pread(f.fileno(), 1024, EXT_SB))
        if sb[0x38:0x3A] != b"\x53\xef":
            raise BuildError(f"{path}: ro_compat_hack: not an ext2/3/4 filesystem")
        ro_compat = struct.unpack_from("<I", sb, 0x64)[0]
        sb[0x67] = 0xFF
        if ro_compat & EXT_RO_COMPAT_METADATA_CSUM:
            struct.pack_into("<I", sb, 0x3FC, crc32c(bytes(sb[:0x3FC])))
        os.pwrite(f.fileno(), bytes(sb), EXT_SB)


def xfs_protofile(staging: Path, where: str, owners: dict | None = None, sticky: list | None = None) -> str:
    """mkfs.xfs -p protofile (xfs_mkfs(8) "proto"): one line per entry, directories closed by ``$``.

    ``owners``: the build's (dev, ino) -> (uid, gid, ino) map (an unprivileged build cannot chown the
    staging tree). ``sticky``: when a list, sticky-bit entries are collected there as (path, full
    st_mode) for the caller to set after mkfs, instead of being refused."""
    lines = ["immutools-replica", "0 0"]

    def mode_str(st: os.stat_result, kind: str, path: Path | None = None) -> str:
        m = st.st_mode
        if m & 0o1000:
            if sticky is None or path is None:
                raise SpecError(f"{where}: xfs protofiles cannot express the sticky bit")
            sticky.append((str(path.relative_to(staging)), m))
        return kind + ("u" if m & 0o4000 else "-") + ("g" if m & 0o2000 else "-") + f"{m & 0o777:03o}"

    def owner(st: os.stat_result, path: Path) -> str:
        known = (owners or {}).get((st.st_dev, st.st_ino))
        if known is not None:
            return f"{known[0]} {known[1]}"
        return f"{st.st_uid} {st.st_gid}"

    def walk(d: Path, depth: int) -> None:
        for child in sorted(d.iterdir(), key=lambda p: p.name):
            if re.search(r"\s", child.name):
                raise SpecError(f"{where}: xfs protofiles cannot hold names with spaces ({child.name!r})")
            st = os.lstat(child)
            pad = " " * depth
            if child.is_symlink():
                lines.append(f"{pad}{child.name} {mode_str(st, 'l')} {owner(st, child)} {os.readlink(child)}")
            elif child.is_dir():
                lines.append(f"{pad}{child.name} {mode_str(st, 'd', child)} {owner(st, child)}")
                walk(child, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{child.name} {mode_str(st, '-')} {owner(st, child)} {child}")

    st = os.stat(staging)
    lines.append(f"{mode_str(st, 'd')} 0 0")
    walk(staging, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"
