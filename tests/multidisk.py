"""One GPT disk with a partition of every kind the foundation must identify, and its other forms.

Built once (cached) with the real tools; used by the scan end-to-end and CLI tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from builders import cached, make_sample_tree, run, sgdisk_layout, write_at

MiB = 1024 * 1024
SECT = 512

# (number, label, type code/GUID, size MiB, content kind). Numbers have a gap (no 7) like Flatcar's.
LAYOUT = [
    (1, "EFI-SYSTEM", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", 64, "vfat"),
    (2, "ROOT", "0fc63daf-8483-4772-8e79-3d69d8477de4", 64, "ext4"),
    (3, "BOOT", "0fc63daf-8483-4772-8e79-3d69d8477de4", 320, "xfs"),
    (4, "USR", "0fc63daf-8483-4772-8e79-3d69d8477de4", 128, "btrfs"),
    (5, "SQUASH", "0fc63daf-8483-4772-8e79-3d69d8477de4", 16, "squashfs"),
    (6, "EROFS", "0fc63daf-8483-4772-8e79-3d69d8477de4", 16, "erofs"),
    (8, "HASH", "0fc63daf-8483-4772-8e79-3d69d8477de4", 8, "dm-verity"),
    (9, "SWAP", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", 16, "swap"),
    (10, "EMPTY", "0fc63daf-8483-4772-8e79-3d69d8477de4", 8, "zero"),
]
DISK_GUID = "11111111-2222-4333-8444-555555555555"
RECIPE = {"layout": LAYOUT, "v": 2}


def _part_uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _attrs(n: int) -> int:
    # Exercise the attribute decoder: A/B-style bits on partition 4, legacy BIOS bootable on 1.
    return {1: 1 << 2, 4: (1 << 56) | (2 << 48) | (1 << 52)}.get(n, 0)


def _build(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = make_sample_tree(tmp / "tree", with_special=False)
        start = 2048
        parts = []
        for number, label, typ, size_mib, _kind in LAYOUT:
            parts.append({"number": number, "start": start, "size": size_mib * MiB // SECT, "type": typ,
                          "label": label, "guid": _part_uuid(number), "attrs": _attrs(number)})
            start += size_mib * MiB // SECT
        total = (start + 2048) * SECT
        sgdisk_layout(out, total, parts, disk_guid=DISK_GUID)
        offsets = {p["number"]: p["start"] * SECT for p in parts}
        images = {}
        for number, label, _typ, size_mib, kind in LAYOUT:
            img = tmp / f"p{number}.img"
            size = size_mib * MiB
            if kind == "vfat":
                with open(img, "wb") as f:
                    f.truncate(size)
                run(["mkfs.vfat", "-F", "32", "-n", label, "-i", "12345678", img])
                run(["mcopy", "-s", "-i", img, tree / "etc", tree / "tiny.txt", "::"])
            elif kind == "ext4":
                run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-U", _part_uuid(100 + number),
                     "-E", "root_owner=0:0", "-d", tree, img, f"{size_mib}M"])
            elif kind == "xfs":
                with open(img, "wb") as f:
                    f.truncate(size)
                run(["mkfs.xfs", "-q", "-f", "-L", label, "-m", f"uuid={_part_uuid(100 + number)}", img])
            elif kind == "btrfs":
                with open(img, "wb") as f:
                    f.truncate(size)
                run(["mkfs.btrfs", "-q", "-f", "-L", label, "-U", _part_uuid(100 + number), "--rootdir", tree, img])
            elif kind == "squashfs":
                run(["mksquashfs", tree, img, "-quiet", "-noappend", "-comp", "xz", "-no-progress"])
            elif kind == "erofs":
                run(["mkfs.erofs", "--quiet", "-zlz4hc", "-T", "1700000000", img, tree])
                images["erofs"] = img
            elif kind == "dm-verity":
                run(["veritysetup", "format", images["erofs"], img,
                     "--salt", "00" * 32, "--uuid", _part_uuid(200 + number)])
            elif kind == "swap":
                with open(img, "wb") as f:
                    f.truncate(size)
                run(["mkswap", "-q", "-L", label, "-U", _part_uuid(100 + number), img])
            elif kind == "zero":
                continue
            write_at(out, offsets[number], img)


def multi_disk() -> Path:
    return cached("multidisk", RECIPE, _build)


def expected_content() -> dict[int, str]:
    return {number: kind for number, _l, _t, _s, kind in LAYOUT}


# Each shipped form: (name, suffix, builder(raw, out)).
def _compress(cmd_prefix):
    def build(raw: Path, out: Path) -> None:
        with open(out, "wb") as f:
            subprocess.run([*cmd_prefix, str(raw)], stdout=f, check=True)
    return build


def _qemu(fmt: str, *opts: str):
    def build(raw: Path, out: Path) -> None:
        run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, raw, out])
    return build


FORMS = {
    "raw": None,
    "gzip": _compress(["gzip", "-1", "-c"]),
    "bzip2": _compress(["bzip2", "-1", "-c"]),
    "xz": _compress(["xz", "-0", "-T2", "-c"]),
    "zstd": _compress(["zstd", "-1", "-q", "-c"]),
    "lz4": _compress(["lz4", "-1", "-q", "-c"]),
    "qcow2": _qemu("qcow2"),
    "qcow2-compressed": _qemu("qcow2", "-c"),
    "vmdk-stream": _qemu("vmdk", "-o", "subformat=streamOptimized"),
    "vhdx": _qemu("vhdx"),
    "vhd": _qemu("vpc", "-o", "subformat=fixed,force_size=on"),
}


def multi_disk_form(form: str) -> Path:
    raw = multi_disk()
    if form == "raw":
        return raw
    return cached(f"multidisk-{form}", {**RECIPE, "form": form, "raw": raw.name, "v": 3}, lambda out: FORMS[form](raw, out), suffix=".bin")
