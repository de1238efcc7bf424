"""The replica builder, checked with the reference tools on what it builds.

sfdisk/fdisk read the tables, blkid -p identifies each partition, debugfs/mtools/btrfs restore/
unsquashfs/fsck.erofs read the files, veritysetup verify checks the verity pairs with the recorded
root hashes. The expected values come from the spec (small custom spec) or from the published
layout in flatcar/scripts build_library/disk_layout.json (stable-4593.2.0) (full-size Flatcar replica), never from the builder's output.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from builders import have, run, sfdisk_json, sha256_file
from replicas import build_replica, replica_manifest

from immutools.replica import builder as rb
from immutools.replica.spec import SpecError, list_specs, load_spec

TOOLS = ["sgdisk", "sfdisk", "fdisk", "blkid", "mkfs.vfat", "mcopy", "mtype", "mdir", "mke2fs", "debugfs",
         "mkfs.btrfs", "btrfs", "mksquashfs", "unsquashfs", "mkfs.erofs", "fsck.erofs", "mkfs.xfs",
         "veritysetup"]
pytestmark = pytest.mark.skipif(not all(have(t) for t in TOOLS),
                                reason=f"needs {', '.join(t for t in TOOLS if not have(t))}")

# ------------------------------------------------------------------------------------------------
# A small spec exercising every content type: GPT with gaps, attribute bits, disk GUID, cgpt hybrid
# MBR, vfat/ext4/ext2(+ro hack)/btrfs/xfs/squashfs/erofs/raw/zero, verity appended (Flatcar style)
# and in a separate partition (Bottlerocket style), a derived file carrying a root hash.
# ------------------------------------------------------------------------------------------------

SMALL_SPEC = """
distribution: testos
release: "test-{{version}}"
layout_source: "tests/test_replica_builder.py (synthetic)"
raw_suffix: .img
source_date_epoch: 1700000000
limitations: {synthetic: "synthetic test layout"}
vars: {version: "1.2.3", arch: x86_64, kver: 6.6.1-test}
disk:
  size: 1 GiB
  disk_guid: 11111111-0000-4000-8000-000000000001
  mbr: {style: cgpt-hybrid, partition: esp}
partitions:
  esp:
    number: 1
    label: EFI-SYSTEM
    type: C12A7328-F81F-11D2-BA4B-00A0C93EC93B
    guid: 11111111-0000-4000-8000-0000000000e1
    start: 2048
    size: 40 MiB
    attrs: 0x4
    content: {type: vfat, options: [-s, 1], label: EFI-SYSTEM, serial: "1234ABCD", tree: esp}
  usr:
    number: 3
    label: USR-A
    type: 5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6
    guid: 7130C94A-213A-4E5A-8E26-6CCE9662F132
    start: 83968
    size: 24 MiB
    attrs: 0x0101000000000000
    content: {type: btrfs, size: 20 MiB, mixed: true, metadata: single, data: single,
              uuid: 22222222-0000-4000-8000-000000000001, tree: usr, properties: {compression: zstd}}
    verity: {data_blocks: 5120, hash_offset: 20971520, salt: "00112233445566778899aabbccddeeff",
             uuid: 33333333-0000-4000-8000-000000000001}
  legacy:
    number: 5
    label: LEGACY-USR
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-0000000000e5
    start: 133120
    size: 8 MiB
    content: {type: ext2, block_size: 4096, inode_ratio: 4096, inode_size: 256,
              uuid: 44444444-0000-4000-8000-000000000005, tree: small, tune2fs: [[-e, remount-ro]],
              ro_compat_hack: true}
  root:
    number: 9
    label: ROOT
    type: 3884DD41-8582-4404-B9A8-E9B84F2DF50E
    guid: 11111111-0000-4000-8000-0000000000f9
    start: 151552
    size: 20 MiB
    content: {type: ext4, label: ROOT, uuid: 44444444-0000-4000-8000-000000000001, block_size: 4096,
              inode_ratio: 4096, inode_size: 256, tree: root, tune2fs: [[-e, remount-ro]]}
  sq:
    number: 10
    label: SQUASH
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-0000000000fa
    start: 192512
    size: 4 MiB
    content: {type: squashfs, comp: xz, tree: small}
    verity: {hash_partition: sq_hash, salt: "aabbccdd", uuid: 33333333-0000-4000-8000-00000000000a}
  sq_hash:
    number: 11
    label: SQUASH-HASH
    type: 2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5
    guid: 11111111-0000-4000-8000-0000000000fb
    start: 200704
    size: 1 MiB
  ero:
    number: 12
    label: EROFS
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-0000000000fc
    start: 202752
    size: 4 MiB
    content: {type: erofs, compress: lz4hc, uuid: 55555555-0000-4000-8000-00000000000c, tree: small}
  blob:
    number: 13
    label: RAW
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-0000000000fd
    start: 210944
    size: 1 MiB
    content: {type: raw, hex: "deadbeef00ff"}
  xfsdata:
    number: 14
    label: XFS
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-0000000000fe
    start: 215040
    size: 320 MiB
    content: {type: xfs, label: XFSDATA, uuid: 66666666-0000-4000-8000-00000000000e, tree: small}
  gap:
    number: 20
    label: EMPTY
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-000000000014
    start: 870400
    size: 1 MiB
    attrs: 0x1000000000000001
trees:
  esp:
    EFI/boot/bootx64.efi: {pe: {arch: "{{arch}}"}}
    flatcar/vmlinuz-a: {kernel: {arch: "{{arch}}", version: "{{kver}}", inject: {64: "{{computed.usr.verity.root_hash}}"}}}
    flatcar/first_boot: {text: "first boot\\n"}
    flatcar/grub/grub.cfg.tar: {tar: {grub.cfg: {text: "set default=flatcar\\n"}}}
  usr:
    lib/os-release: {text: "ID=test\\nVERSION_ID={{version}}\\n"}
    bin/bash: {elf: {arch: "{{arch}}", type: dyn, interp: /lib64/ld-linux-x86-64.so.2}, mode: "0755"}
    bin/sudo: {elf: {arch: "{{arch}}"}, mode: "4755"}
    share/x/os-release: {symlink: ../../lib/os-release}
    share/sysext/a.raw: {image: {type: squashfs, tree: ext}}
    "lib/modules/{{kver}}/kernel/a.ko.xz": {elf: {arch: "{{arch}}", type: rel, modinfo: {license: GPL}, signed: true}, compress: xz}
  ext:
    usr/lib/extension-release.d/extension-release.a: {text: "ID=test\\nVERSION_ID={{version}}\\n"}
  small:
    hello.txt: {text: "hello {{version}}\\n"}
    sub/dir/tool: {elf: {arch: aarch64}, mode: "0755"}
    link: {symlink: hello.txt}
  root:
    etc/hostname: {text: "node\\n"}
    home/core: {dir: true, mode: "0700", uid: 500, gid: 500}
    home/core/.bashrc: {text: "# hi\\n", uid: 500, gid: 500, mode: "0640"}
    tmp: {dir: true, mode: "1777"}
expect:
  root_hash: "{{computed.usr.verity.root_hash}}"
  version: "{{version}}"
"""

SECTOR = 512

# A 128 MiB cut of the same features for the tests that build twice or convert whole images.
TINY_SPEC = """
distribution: testos
release: "tiny-1"
layout_source: "tests/test_replica_builder.py (synthetic)"
vars: {arch: aarch64}
disk: {size: 128 MiB, disk_guid: 11111111-0000-4000-8000-0000000000aa}
partitions:
  esp: {number: 1, label: EFI-SYSTEM, type: C12A7328-F81F-11D2-BA4B-00A0C93EC93B,
        guid: 11111111-0000-4000-8000-0000000000a1, start: 2048, size: 40 MiB,
        content: {type: vfat, options: [-s, 1], label: EFI-SYSTEM, serial: "0000AAAA", tree: esp}}
  usr: {number: 3, label: USR-A, type: 5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6,
        guid: 7130C94A-213A-4E5A-8E26-6CCE9662F132, start: 83968, size: 24 MiB,
        content: {type: btrfs, size: 20 MiB, mixed: true, tree: usr},
        verity: {hash_offset: 20971520, data_blocks: 5120, salt: "01", uuid: 33333333-0000-4000-8000-0000000000a3}}
  root: {number: 9, label: ROOT, type: 3884DD41-8582-4404-B9A8-E9B84F2DF50E,
         guid: 11111111-0000-4000-8000-0000000000a9, start: 135168, size: 20 MiB,
         content: {type: ext4, label: ROOT, tree: usr}}
  sq: {number: 10, label: SQ, type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4,
       guid: 11111111-0000-4000-8000-0000000000aa, start: 176128, size: 4 MiB, content: {type: squashfs, tree: usr}}
  ero: {number: 11, label: ERO, type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4,
        guid: 11111111-0000-4000-8000-0000000000ab, start: 184320, size: 4 MiB, content: {type: erofs, tree: usr}}
trees:
  esp:
    EFI/boot/bootaa64.efi: {pe: {arch: "{{arch}}"}}
    flatcar/vmlinuz-a: {kernel: {arch: "{{arch}}", inject: {512: "{{computed.usr.verity.root_hash}}"}}}
  usr:
    lib/os-release: {text: "ID=tiny\\n"}
    bin/bash: {elf: {arch: "{{arch}}"}, mode: "0755"}
    bin/su: {elf: {arch: "{{arch}}"}, mode: "4755"}
    home/core: {dir: true, uid: 500, gid: 500, mode: "0700"}
    sysext.raw: {image: {type: squashfs, tree: ext}}
  ext:
    usr/lib/extension-release.d/extension-release.x: {text: "ID=tiny\\n"}
"""


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "replica-test-small.yaml"
    path.write_text(SMALL_SPEC)
    return path


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "replica-test-tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="module")
def small(small_spec):
    return build_replica(small_spec), replica_manifest(small_spec), load_spec(small_spec)


def extract(image: Path, part: dict, out: Path) -> Path:
    """Copy one partition out of the (sparse) image, keeping holes."""
    with open(image, "rb") as src, open(out, "wb") as dst:
        dst.truncate(part["size"])
        start, end = part["offset"], part["offset"] + part["size"]
        pos = start
        while pos < end:
            try:
                data = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(src.fileno(), data, os.SEEK_HOLE), end)
            while data < hole:
                n = min(1 << 20, hole - data)
                os.pwrite(dst.fileno(), os.pread(src.fileno(), n, data), data - start)
                data += n
            pos = hole
    return out


def attrs_from_sfdisk(text: str | None) -> int:
    """sfdisk's attribute string (``RequiredPartition LegacyBIOSBootable GUID:48,56``) as a 64-bit value."""
    names = {"RequiredPartition": 0, "NoBlockIOProtocol": 1, "LegacyBIOSBootable": 2}
    value = 0
    for word in (text or "").split():
        if word in names:
            value |= 1 << names[word]
        elif word.startswith("GUID:"):
            for bit in word[5:].split(","):
                value |= 1 << int(bit)
    return value


def probe(cmd: list[str], env: dict | None = None) -> str:
    """Run a reference tool whose non-zero exit means "nothing found"."""
    return subprocess.run(cmd, capture_output=True, env=env).stdout.decode()


def blkid_at(image: Path, part: dict) -> dict:
    out = probe(["blkid", "-p", "-o", "export", "-O", str(part["offset"]), "-S", str(part["size"]), str(image)])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mtype(image: Path, part: dict, path: str) -> bytes:
    return run(["mtype", "-i", f"{image}@@{part['offset']}", f"::{path}"],
               env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout


def mdir_names(image: Path, part: dict, path: str) -> set[str]:
    out = probe(["mdir", "-b", "-i", f"{image}@@{part['offset']}", f"::{path}"], dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}


def by_key(manifest: dict) -> dict[str, dict]:
    return {p["key"]: p for p in manifest["partitions"]}


# ------------------------------------------------------------------------------------------------
# Small spec: tables, filesystems, files, verity, sparseness, reproducibility
# ------------------------------------------------------------------------------------------------

def test_small_gpt_matches_spec(small):
    image, manifest, spec = small
    table = sfdisk_json(image)["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].upper() == "11111111-0000-4000-8000-000000000001"
    total = spec.size // SECTOR
    assert table["firstlba"] == 34 and table["lastlba"] == total - 34
    got = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert sorted(got) == sorted(p.number for p in spec.partitions)        # gaps kept: no 2, 4, 6-8, 15-19
    for p in spec.partitions:
        row = got[p.number]
        assert row["start"] == p.start and row["size"] == p.sectors, p.key
        assert row["type"].upper() == p.type and row["uuid"].upper() == p.guid, p.key
        assert row.get("name", "") == p.label, p.key
        assert attrs_from_sfdisk(row.get("attrs")) == p.attrs, p.key
    # backup GPT header at the last LBA
    with open(image, "rb") as f:
        f.seek((total - 1) * SECTOR)
        assert f.read(8) == b"EFI PART"


def test_small_hybrid_mbr_like_cgpt(small):
    image, manifest, spec = small
    esp = spec.partition("esp")
    # fdisk reads the MBR as a dos table: the bootable 0x0C entry over the ESP, then 0xEE 1..start-1.
    out = run(["fdisk", "-l", "-t", "dos", str(image)]).stdout.decode()
    rows = [line.split() for line in out.splitlines() if line.startswith(str(image))]
    assert rows[0][1] == "*" and rows[0][2:5] == [str(esp.start), str(esp.end), str(esp.sectors)] and rows[0][6] == "c"
    assert rows[1][1:4] == ["1", str(esp.start - 1), str(esp.start - 1)] and rows[1][5] == "ee"
    with open(image, "rb") as f:
        mbr = f.read(512)
    assert mbr[510:512] == b"\x55\xaa"
    # CHS as cgpt computes it (255 heads, 63 sectors): LBA 2048 -> C0 H32 S33
    assert mbr[446:450] == bytes([0x80, 32, 33, 0])


def test_small_blkid_per_partition(small):
    image, manifest, spec = small
    parts = by_key(manifest)
    expect = {
        "esp": {"TYPE": "vfat", "LABEL": "EFI-SYSTEM", "UUID": "1234-ABCD", "VERSION": "FAT32"},
        "usr": {"TYPE": "btrfs", "UUID": "22222222-0000-4000-8000-000000000001"},
        # blkid calls an ext2 with unknown ro_compat bits (the Flatcar hack) "ext4" with SEC_TYPE=ext2
        "legacy": {"TYPE": "ext4", "SEC_TYPE": "ext2", "UUID": "44444444-0000-4000-8000-000000000005"},
        "root": {"TYPE": "ext4", "LABEL": "ROOT", "UUID": "44444444-0000-4000-8000-000000000001"},
        "sq": {"TYPE": "squashfs"},
        "sq_hash": {"TYPE": "DM_verity_hash", "UUID": "33333333-0000-4000-8000-00000000000a"},
        "ero": {"TYPE": "erofs", "UUID": "55555555-0000-4000-8000-00000000000c"},
        "xfsdata": {"TYPE": "xfs", "LABEL": "XFSDATA", "UUID": "66666666-0000-4000-8000-00000000000e"},
    }
    for key, want in expect.items():
        got = blkid_at(image, parts[key])
        for k, v in want.items():
            assert got.get(k) == v, (key, k, got)
    assert "LABEL" not in blkid_at(image, parts["usr"])       # USR-A btrfs has no label
    assert blkid_at(image, parts["gap"]) == {}                # zero partition: nothing there


def test_small_vfat_files_and_derived_kernel(small, tmp_path):
    image, manifest, spec = small
    esp = by_key(manifest)["esp"]
    assert mdir_names(image, esp, "/flatcar") >= {"vmlinuz-a", "first_boot", "grub"}
    kernel = mtype(image, esp, "/flatcar/vmlinuz-a")
    root_hash = manifest["computed"]["usr"]["verity"]["root_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", root_hash)
    assert kernel[64:128].decode() == root_hash
    assert kernel[0x202:0x206] == b"HdrS" and kernel[:2] == b"MZ"
    version_at = 0x200 + struct.unpack_from("<H", kernel, 0x20E)[0]
    assert kernel[version_at:].split(b"\0")[0].startswith(b"6.6.1-test ")
    efi = mtype(image, esp, "/EFI/boot/bootx64.efi")
    pe = struct.unpack_from("<I", efi, 0x3C)[0]
    assert efi[pe:pe + 4] == b"PE\0\0" and struct.unpack_from("<H", efi, pe + 4)[0] == 0x8664
    tar = tmp_path / "grub.cfg.tar"
    tar.write_bytes(mtype(image, esp, "/flatcar/grub/grub.cfg.tar"))
    assert run(["tar", "-xOf", str(tar), "grub.cfg"]).stdout == b"set default=flatcar\n"
    record = json.loads(mtype(image, esp, "/immutools-replica.json"))
    assert record["replica"] is True and record["not_a_vendor_image"] is True
    assert record["spec"] == "replica-test-small" and record["release"] == "test-1.2.3"
    assert any("compression=zstd" in x for x in record["limitations"])
    assert manifest["provenance"] == record


def test_small_ext_files_owners_modes(small, tmp_path):
    image, manifest, spec = small
    root = extract(image, by_key(manifest)["root"], tmp_path / "root.img")
    stat = run(["debugfs", "-R", "stat /home/core/.bashrc", str(root)]).stdout.decode()
    assert re.search(r"User:\s+500\s+Group:\s+500", stat) and re.search(r"Mode:\s+0640", stat)
    stat = run(["debugfs", "-R", "stat /home/core", str(root)]).stdout.decode()
    assert re.search(r"Mode:\s+0700", stat)
    stat = run(["debugfs", "-R", "stat /tmp", str(root)]).stdout.decode()
    assert re.search(r"Mode:\s+01777", stat)
    assert run(["debugfs", "-R", "cat /etc/hostname", str(root)]).stdout == b"node\n"
    assert "Remount read-only" in run(["dumpe2fs", "-h", str(root)]).stdout.decode()
    legacy = extract(image, by_key(manifest)["legacy"], tmp_path / "legacy.img")
    assert legacy.read_bytes()[0x467] == 0xFF                 # Flatcar read-only hack
    assert run(["debugfs", "-R", "cat /hello.txt", str(legacy)]).stdout == b"hello 1.2.3\n"


def test_small_btrfs_files_and_verity(small, tmp_path):
    image, manifest, spec = small
    usr = extract(image, by_key(manifest)["usr"], tmp_path / "usr.img")
    vfacts = manifest["computed"]["usr"]["verity"]
    run(["veritysetup", "verify", f"--hash-offset={vfacts['hash_offset']}", str(usr), str(usr), vfacts["root_hash"]])
    assert usr.read_bytes()[vfacts["hash_offset"]:vfacts["hash_offset"] + 8] == b"verity\0\0"
    out = tmp_path / "restore"
    out.mkdir()
    run(["btrfs", "restore", "-S", "-m", str(usr), str(out)])
    assert (out / "lib/os-release").read_text() == "ID=test\nVERSION_ID=1.2.3\n"
    assert (out / "bin/sudo").stat().st_mode & 0o7777 == 0o4755
    assert os.readlink(out / "share/x/os-release") == "../../lib/os-release"
    bash = (out / "bin/bash").read_bytes()
    assert bash[:4] == b"\x7fELF" and struct.unpack_from("<H", bash, 18)[0] == 0x3E
    ko = __import__("lzma").decompress(next(out.glob("lib/modules/*/kernel/a.ko.xz")).read_bytes())
    assert ko.endswith(b"~Module signature appended~\n") and b"license=GPL\0" in ko
    sysext = out / "share/sysext/a.raw"
    listing = run(["unsquashfs", "-lln", str(sysext)]).stdout.decode()
    assert "usr/lib/extension-release.d/extension-release.a" in listing
    # corrupting one data byte must make the verification fail
    with open(usr, "r+b") as f:
        f.seek(0x10040)
        magic = f.read(8)
        assert magic == b"_BHRfS_M"
        f.seek(0x10040)
        f.write(b"X")
    bad = subprocess.run(["veritysetup", "verify", f"--hash-offset={vfacts['hash_offset']}", str(usr), str(usr),
                          vfacts["root_hash"]], capture_output=True)
    assert bad.returncode != 0


def test_small_separate_hash_partition_squashfs_erofs_xfs(small, tmp_path):
    image, manifest, spec = small
    parts = by_key(manifest)
    data = extract(image, parts["sq"], tmp_path / "sq.img")
    hashp = extract(image, parts["sq_hash"], tmp_path / "sq_hash.img")
    v = manifest["computed"]["sq"]["verity"]
    assert v["hash_partition"] == "sq_hash"
    run(["veritysetup", "verify", str(data), str(hashp), v["root_hash"]])
    listing = run(["unsquashfs", "-lln", str(data)]).stdout.decode()
    assert re.search(r"-rwxr-xr-x 0/0 .* squashfs-root/sub/dir/tool", listing)
    ero = extract(image, parts["ero"], tmp_path / "ero.img")
    outdir = tmp_path / "ero"
    run(["fsck.erofs", f"--extract={outdir}", str(ero)])
    assert (outdir / "hello.txt").read_text() == "hello 1.2.3\n"
    blob = extract(image, parts["blob"], tmp_path / "blob.img")
    assert blob.read_bytes()[:6] == bytes.fromhex("deadbeef00ff")


def test_small_sparse_and_manifest(small):
    image, manifest, spec = small
    assert image.stat().st_size == spec.size == manifest["disk"]["size"]
    assert rb.allocated_bytes(image) < spec.size // 20       # mostly holes
    assert manifest["sha256"] == sha256_file(image)
    assert manifest["expect"] == {"root_hash": manifest["computed"]["usr"]["verity"]["root_hash"], "version": "1.2.3"}
    assert manifest["disk"]["backup_header_lba"] == spec.size // SECTOR - 1


def test_reproducible(tiny_spec, tmp_path):
    if rb.shim_path() is None:
        pytest.skip("no C compiler for the reproducibility preload")
    a = rb.build(tiny_spec, tmp_path / "a")
    b = rb.build(tiny_spec, tmp_path / "b")
    assert a["sha256"] == b["sha256"]
    assert sha256_file(tmp_path / "a" / a["image"]) == sha256_file(tmp_path / "b" / b["image"])


def test_forms_decompress_to_the_raw_image(tiny_spec, tmp_path):
    raw = build_replica(tiny_spec)
    want = sha256_file(raw)
    assert replica_manifest(tiny_spec)["sha256"] == want
    bz2 = build_replica(tiny_spec, "bz2")
    assert bz2.name.endswith(".img.bz2")
    out = tmp_path / "x.img"
    with open(out, "wb") as f:
        subprocess.run(["bzip2", "-dc", str(bz2)], stdout=f, check=True)
    assert sha256_file(out) == want
    qcow = build_replica(tiny_spec, "qcow2")
    info = json.loads(run(["qemu-img", "info", "--output=json", str(qcow)]).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == raw.stat().st_size
    assert info["format-specific"]["data"]["compat"] == "0.10"
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow)])


def test_mbr_table_spec(tmp_path):
    spec = tmp_path / "mbr.yaml"
    spec.write_text("""
distribution: testos
release: "1"
layout_source: synthetic
disk: {size: 64 MiB, table: mbr, mbr_signature: 0x12345678}
partitions:
  boot: {number: 1, mbr_type: 0x0c, bootable: true, start: 2048, size: 16 MiB,
         content: {type: vfat, fat_bits: 16, label: BOOT, serial: "0000BEEF", tree: t}}
  root: {number: 3, mbr_type: 0x83, start: 34816, size: 20 MiB, content: {type: ext4, label: root, tree: t}}
trees:
  t: {hello: {text: "hi\\n"}}
""")
    m = rb.build(spec, tmp_path / "out")
    table = sfdisk_json(tmp_path / "out" / m["image"])["partitiontable"]
    assert table["label"] == "dos" and table["id"] == "0x12345678"
    rows = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert rows[1]["start"] == 2048 and rows[1]["size"] == 32768 and rows[1]["type"] == "c" and rows[1].get("bootable")
    assert rows[3]["start"] == 34816 and rows[3]["type"] == "83" and not rows[3].get("bootable")


# ------------------------------------------------------------------------------------------------
# Spec loading: overlays and errors
# ------------------------------------------------------------------------------------------------

def test_overlay_null_deletes_through_a_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("abstract: true\ntrees: {t: {x: {text: a}, y: {symlink: x}}}\nvars: {v: 1}\n")
    (tmp_path / "b.yaml").write_text("abstract: true\nextends: a\ntrees: {t: {y: {symlink: ~, dir: true}}}\n")
    (tmp_path / "c.yaml").write_text("abstract: true\ntrees: {t: {x: ~}}\nvars: {w: 2}\n")
    (tmp_path / "d.yaml").write_text("extends: [b, c]\nabstract: true\n")
    spec = load_spec(tmp_path / "d.yaml")
    assert spec.trees == {"t": {"y": {"dir": True}}}
    assert spec.vars == {"v": 1, "w": 2}


@pytest.mark.parametrize("patch, message", [
    (("size: 40 MiB\n    attrs: 0x4", "size: 40 MiB\n    attrs: 0x4\n    colour: red"), r"partitions\.esp: unknown key\(s\) colour"),
    (("guid: 11111111-0000-4000-8000-0000000000e1", "guid: not-a-guid"), r"partitions\.esp\.guid: 'not-a-guid' is not a GUID"),
    (("start: 133120", "start: 100000"), r"partitions\.(usr|legacy) and partitions\.(usr|legacy) overlap"),
    (("{{kver}}/kernel", "{{nope}}/kernel"), r"unknown template variable \{\{nope\}\}"),
    (("tree: small}\n    verity", "tree: missing}\n    verity"), r"partitions\.sq\.content\.tree: no tree 'missing'"),
    (("mode: \"4755\"", "mode: \"9999\""), r"trees\.usr\.'bin/sudo'\.mode: mode '9999' is not octal"),
])
def test_spec_errors_name_file_and_key(tmp_path, patch, message):
    old, new = patch
    assert old in SMALL_SPEC
    path = tmp_path / "broken.yaml"
    path.write_text(SMALL_SPEC.replace(old, new, 1))
    with pytest.raises(SpecError) as err:
        spec = load_spec(path)
        rb.build(spec, tmp_path / "out")
    assert str(path) in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def _replica_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in it, functions included; imports only
    for type annotations, under ``if TYPE_CHECKING:``, do not count)."""
    import ast

    pkg = Path(rb.__file__).resolve().parent
    graph: dict[str, set[str]] = {}
    for path in sorted(pkg.glob("*.py")):
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("immutools.replica"):
                sub = node.module.split(".")[2:]
                deps |= {sub[0]} if sub else {a.name for a in node.names if (pkg / f"{a.name}.py").exists()}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("immutools.replica.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def test_replica_package_has_no_import_cycles():
    graph = _replica_imports()
    assert graph["context"] == set(), "context.py is the leaf every other module may import"
    assert graph["kinds"] <= {"context"}
    # nothing imports the orchestration back (only the command line uses it)
    assert [m for m, deps in graph.items() if "builder" in deps] == ["__main__"]
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import cycle: {' -> '.join(path + (mod,))}"
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, path + (mod,))
        done.add(mod)

    for mod in graph:
        visit(mod, ())


def test_entry_kinds_come_from_the_registry(tmp_path):
    """Every entry kind the spec validator accepts has a maker (or is structural), and a kind a
    module registers is accepted and built without the builder knowing it."""
    from immutools.replica import kinds

    names = kinds.kind_names()
    assert {"text", "symlink", "dir", "elf", "tar", "image", "uki", "bootconfig", "cpio", "padded"} <= set(names)
    assert [n for n, k in kinds.registry().items() if k.make is None] == ["symlink", "dir"]

    @kinds.register("test_reversed", value=str)
    def _reversed(build, value, entry, ctx, where):
        return value[::-1].encode()

    try:
        spec_text = SMALL_SPEC.replace("  small:\n", "  small:\n    rev.txt: {test_reversed: \"olleh\"}\n", 1)
        assert spec_text != SMALL_SPEC
        path = tmp_path / "kinds.yaml"
        path.write_text(spec_text.replace('{test_reversed: "olleh"}', "{test_reversed: [1]}"))
        with pytest.raises(SpecError, match=r"'rev\.txt'\.test_reversed: expected a str"):
            load_spec(path)
        path.write_text(spec_text)
        spec = load_spec(path)
        m = rb.build(spec, tmp_path / "out", compute_sha256=False)
        legacy = next(p for p in m["partitions"] if p["key"] == "legacy")
        image = tmp_path / "out" / m["image"]
        part = tmp_path / "legacy.img"
        run(["dd", f"if={image}", f"of={part}", "bs=512", f"skip={legacy['start']}", f"count={legacy['sectors']}",
             "status=none"])
        assert run(["debugfs", "-R", "cat /rev.txt", str(part)]).stdout == b"hello"
    finally:
        kinds._KINDS.pop("test_reversed")
        kinds._ordered = None


@pytest.mark.parametrize("grafts, message", [
    ("{missing: [{set: debian-root}]}", r"grafts\.missing: no tree 'missing'"),
    ("{small: [{set: debian-root, colour: red}]}", r"grafts\.small\[0\]: unknown key\(s\) colour"),
    ("{small: [{from: /usr}]}", r"grafts\.small\[0\]: needs set"),
    ("{small: [{set: a}, {set: b}]}", r"grafts\.small\[1\]\.name: 'small' used twice"),
    ("{small: [{set: a, into: usr}]}", r"grafts\.small\[0\]\.into: an absolute path"),
    ("{small: [{set: a, source: rpm}]}", r"grafts\.small\[0\]\.source: 'rpm'"),
])
def test_graft_spec_errors(tmp_path, grafts, message):
    """Grafts are checked when the spec loads, before anything is downloaded."""
    path = tmp_path / "grafts.yaml"
    path.write_text(SMALL_SPEC + f"grafts: {grafts}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_whole_value_templates_keep_lists():
    from immutools.replica.spec import render

    ctx = {"computed": {"trees": {"usr": {"setuid": ["/usr/bin/su"], "entries": 3}}}}
    assert render({"a": "{{computed.trees.usr.setuid}}"}, ctx, "w") == {"a": ["/usr/bin/su"]}
    assert render("{{computed.trees.usr.entries}}", ctx, "w") == "3"              # scalars stay text
    assert render("x {{computed.trees.usr.entries}}", ctx, "w") == "x 3"
    with pytest.raises(SpecError, match="not a scalar"):
        render("x {{computed.trees.usr.setuid}}", ctx, "w")


def test_path_patterns_stop_at_slashes():
    from immutools.replica.context import path_match

    assert path_match("usr/lib/modules/6.1.0-9-amd64", "usr/lib/modules/*")
    assert not path_match("usr/lib/modules/6.1.0-9-amd64/kernel", "usr/lib/modules/*")
    assert path_match("boot/vmlinuz-6.1", "boot/*") and not path_match("boot", "boot/*")


def test_cli_list_and_build(small_spec, tmp_path):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "immutools.replica", "list"], capture_output=True, env=env)
    assert out.returncode == 0
    names = {line.split()[0] for line in out.stdout.decode().splitlines()}
    assert "flatcar-stable-4593-amd64-pristine" in names and "flatcar-base" not in names
    bad = subprocess.run([sys.executable, "-m", "immutools.replica", "build", "no-such-spec", "--out", str(tmp_path)],
                         capture_output=True, env=env)
    assert bad.returncode == 2 and b"no-such-spec" in bad.stderr


# ------------------------------------------------------------------------------------------------
# Flatcar: the full-size current amd64 pristine replica against flatcar/scripts disk_layout.json (not the spec)
# ------------------------------------------------------------------------------------------------

# flatcar/scripts disk_layout.json + the disk_util algorithm: number, label, type GUID, unique GUID (None = random per build), start, sectors
FLATCAR_CURRENT = [
    (1, "EFI-SYSTEM", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", None, 4096, 2097152),
    (2, "BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649", None, 2101248, 4096),
    (3, "USR-A", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "7130C94A-213A-4E5A-8E26-6CCE9662F132", 2105344, 4194304),
    (4, "USR-B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "E03DD35C-7C2D-4A47-B3FE-27F15780A57C", 6299648, 4194304),
    (6, "OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", None, 10493952, 2097152),
    (7, "OEM-CONFIG", "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0", None, 12591104, 131072),
    (9, "ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E", None, 12722176, 3653632),
]
# disk_layout.json before commit 07cc8512ef (pre-4487 and LTS-4081)
FLATCAR_PRE4487 = {1: (4096, 262144), 2: (266240, 4096), 3: (270336, 2097152), 4: (2367488, 2097152),
                   6: (4464640, 262144), 7: (4726784, 131072), 9: (4857856, 4427776)}

FLATCAR_SPECS = [s.name for s in list_specs() if s.name.startswith("flatcar-")]
# veritysetup verify reads the whole 1 GiB data area (about 5 s here). By default it runs for the
# amd64 variants (one per release and state: each a different filesystem/hash pair; arm64 differs
# only in the ESP, checked separately); IMMUTOOLS_FULL_REPLICA_CHECKS=1 verifies every variant.
VERIFY_ALL = os.environ.get("IMMUTOOLS_FULL_REPLICA_CHECKS") == "1"


@pytest.mark.slow
def test_flatcar_current_amd64_pristine_full_size(tmp_path):
    name = "flatcar-stable-4593-amd64-pristine"
    image = build_replica(name)
    manifest = replica_manifest(name)
    assert image.stat().st_size == 8_455_716_864                      # disk_layout.json
    assert rb.allocated_bytes(image) < 64 * 2**20                      # sparse
    table = sfdisk_json(image)["partitiontable"]
    assert table["id"] == "00000000-0000-0000-0000-000000000001"       # disk_util cgpt create -g
    assert table["firstlba"] == 34 and table["lastlba"] == 16_515_038
    with open(image, "rb") as f:
        f.seek(512)
        header = f.read(92)
        assert header[:8] == b"EFI PART"
        assert struct.unpack_from("<Q", header, 32)[0] == 16_515_071   # backup header LBA
        f.seek(16_515_071 * 512)
        assert f.read(8) == b"EFI PART"
        f.seek(446)
        mbr = f.read(66)
    # seismograph cgpt_common.c UpdatePMBR: protective entry with cgpt's CHS 00 02 00 .. FF FF FF, LBA 1 .. total-1
    assert mbr[:16] == bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + struct.pack("<II", 1, 16_515_071)
    assert mbr[16:64] == bytes(48) and mbr[64:66] == b"\x55\xaa"
    rows = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert sorted(rows) == [1, 2, 3, 4, 6, 7, 9]                       # 5 and 8 not created
    for number, label, ptype, guid, start, sectors in FLATCAR_CURRENT:
        row = rows[number]
        assert (row["name"], row["type"], row["start"], row["size"]) == (label, ptype, start, sectors)
        if guid:
            assert row["uuid"] == guid
    assert attrs_from_sfdisk(rows[3].get("attrs")) == 0x0101000000000000   # disk_util WritePartitionTable
    assert attrs_from_sfdisk(rows[4].get("attrs")) == 0
    assert attrs_from_sfdisk(rows[1].get("attrs")) == 0                    # no legacy bit since 4459
    parts = by_key(manifest)
    got = {k: blkid_at(image, parts[k]) for k in ("esp", "usr_a", "usr_b", "oem", "root")}
    assert got["esp"]["TYPE"] == "vfat" and got["esp"]["LABEL"] == "EFI-SYSTEM" and got["esp"]["VERSION"] == "FAT32"
    assert got["usr_a"]["TYPE"] == "btrfs" and "LABEL" not in got["usr_a"]
    assert got["usr_b"] == {}
    assert got["oem"]["TYPE"] == "btrfs" and got["oem"]["LABEL"] == "OEM"
    assert got["root"]["TYPE"] == "ext4" and got["root"]["LABEL"] == "ROOT"
    # verity appended inside USR-A (disk_util Verity): superblock at 0x3F7FE000, tree ends at exactly 1 GiB
    usr = extract(image, parts["usr_a"], tmp_path / "usr_a.img")
    v = manifest["computed"]["usr_a"]["verity"]
    assert (v["data_blocks"], v["hash_blocks"], v["hash_offset"]) == (260094, 2049, 1_065_345_024)
    with open(usr, "rb") as f:
        f.seek(0x3F7FE000)
        sb = f.read(512)
        assert sb[:8] == b"verity\0\0" and struct.unpack_from("<I", sb, 8)[0] == 1
        assert sb[0x20:0x26] == b"sha256"                         # algorithm field
        tree_end = 0x3F7FE000 + 4096 + 4096 * 2049                      # superblock block + 2049 hash blocks
        assert tree_end == 1 << 30
        f.seek(tree_end - 4096)
        assert f.read(4096) != bytes(4096)                              # the top hash block is written
    run(["veritysetup", "verify", "--hash-offset=1065345024", str(usr), str(usr), v["root_hash"]])
    # scripts build_image_util.sh verity_offset: 64 hex characters at offset 64 of flatcar/vmlinuz-a
    kernel = mtype(image, parts["esp"], "/flatcar/vmlinuz-a")
    assert kernel[64:128].decode() == v["root_hash"] and kernel[0x202:0x206] == b"HdrS"
    assert {"vmlinuz-a", "first_boot", "grub"} <= mdir_names(image, parts["esp"], "/flatcar")
    assert "vmlinuz-b" not in mdir_names(image, parts["esp"], "/flatcar")
    tar = tmp_path / "grub.cfg.tar"
    tar.write_bytes(mtype(image, parts["esp"], "/flatcar/grub/grub.cfg.tar"))
    cfg = run(["tar", "-xOf", str(tar), "grub.cfg"]).stdout.decode()
    assert "gptprio.next" in cfg and "7130c94a-213a-4e5a-8e26-6cce9662f132" in cfg
    # /usr content at the filesystem root (disk_util)
    out = tmp_path / "usr"
    out.mkdir()
    run(["btrfs", "restore", "-S", "-m", str(usr), str(out)])           # -m: modes, owners, times
    osr = (out / "lib/os-release").read_text()
    assert "ID=flatcar\n" in osr and "VERSION_ID=4593.2.0\n" in osr and 'FLATCAR_BOARD="amd64-usr"' in osr
    assert (out / "share/flatcar/update.conf").read_text() == \
        "SERVER=https://public.update.flatcar-linux.net/v1/update/\nGROUP=stable\n"
    assert oct((out / "bin/sudo").stat().st_mode & 0o7777) == "0o4755"
    assert os.readlink(out / "lib/systemd/system/sockets.target.wants/sshd.socket") == "../sshd.socket"
    for sysext in ("containerd-flatcar", "docker-flatcar"):
        listing = run(["unsquashfs", "-lln", str(out / f"share/flatcar/sysext/{sysext}.raw")]).stdout.decode()
        assert f"extension-release.{sysext}" in listing
    # ROOT: only boot, usr, oem and lost+found (build_image_util.sh finish_image)
    root = extract(image, parts["root"], tmp_path / "root.img")
    ls = run(["debugfs", "-R", "ls -p /", str(root)]).stdout.decode()
    names = {line.split("/")[5] for line in ls.splitlines() if line.count("/") >= 6} - {".", ".."}
    assert names == {"boot", "usr", "oem", "lost+found"}
    assert manifest["provenance"]["replica"] and "4593.2.0" in manifest["provenance"]["release"]


def usr_fstype(blkid: dict) -> str:
    # blkid reports Flatcar's ro-hacked ext2 /usr as TYPE=ext4 SEC_TYPE=ext2 (unknown ro_compat bits)
    return blkid.get("SEC_TYPE") if blkid.get("SEC_TYPE") == "ext2" else blkid.get("TYPE")


def _decode_prio(attrs: int) -> tuple[int, int, bool]:
    return (attrs >> 48) & 0xF, (attrs >> 52) & 0xF, bool(attrs >> 56 & 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", FLATCAR_SPECS)
def test_flatcar_variants_match_their_expect(name, tmp_path):
    """Every Flatcar replica, checked against its own expect: section with the reference tools."""
    image = build_replica(name)
    manifest = replica_manifest(name)
    expect = manifest["expect"]
    fl = expect["flatcar"]
    parts = by_key(manifest)
    table = sfdisk_json(image)["partitiontable"]
    assert table["id"].lower() == fl["disk_guid"]
    rows = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    layout = FLATCAR_PRE4487 if fl["layout"] == "pre-4487" else {n: (s, c) for n, _l, _t, _g, s, c in FLATCAR_CURRENT}
    for number, (start, sectors) in layout.items():
        assert (rows[number]["start"], rows[number]["size"]) == (start, sectors), number
    size = 4_756_340_736 if fl["layout"] == "pre-4487" else 8_455_716_864     # disk_layout.json before / since 07cc8512ef
    assert image.stat().st_size == size
    for slot in expect["update"]["slots"]:
        (number,) = slot["partitions"]
        prio, tries, ok = _decode_prio(attrs_from_sfdisk(rows[number].get("attrs")))
        assert (prio, tries, ok) == (slot["priority"], slot["tries"], slot["successful"]), slot
    legacy = bool(attrs_from_sfdisk(rows[1].get("attrs")) & 4)
    assert legacy == fl["esp_legacy_bootable"]
    with open(image, "rb") as f:
        mbr = f.read(512)
    assert (mbr[446 + 4], mbr[462 + 4]) == ((0x0C, 0xEE) if fl["mbr"] == "hybrid" else (0xEE, 0))
    esp = parts["esp"]
    flatcar_dir = mdir_names(image, esp, "/flatcar")
    assert ("first_boot" in flatcar_dir) == fl["first_boot_flag"]
    assert ("vmlinuz-b" in flatcar_dir) == fl["vmlinuz_b"]
    off = 64 if fl["board"] == "amd64-usr" else 512
    efi = mdir_names(image, esp, "/EFI/boot")
    assert efi == ({"bootx64.efi", "grubx64.efi", "mmx64.efi"} if off == 64 else {"bootaa64.efi", "grubaa64.efi", "mmaa64.efi"})
    active = expect["update"]["active_slot"]
    kernel = mtype(image, esp, f"/flatcar/vmlinuz-{active.lower()}")
    assert kernel[off:off + 64].decode() == expect["integrity"]["root_hash"]
    assert (kernel[0x202:0x206] == b"HdrS") if off == 64 else (kernel[0x38:0x3C] == b"ARM\x64")
    # The active slot's /usr: verity verifies and os-release names the expected version and board.
    slot_key = "usr_a" if active == "A" else "usr_b"
    usr = extract(image, parts[slot_key], tmp_path / "usr.img")
    # (the full-size test already verifies the current amd64 pristine USR-A)
    if VERIFY_ALL or (fl["board"] == "amd64-usr" and name != "flatcar-stable-4593-amd64-pristine"):
        run(["veritysetup", "verify", "--hash-offset=1065345024", str(usr), str(usr),
             expect["integrity"]["root_hash"]])
    with open(usr, "rb") as f:                                          # verity superblock (disk_util Verity)
        f.seek(1_065_345_024)
        assert f.read(8) == b"verity\0\0"
    assert usr_fstype(blkid_at(image, parts[slot_key])) == fl["usr_fstype"]
    if fl["usr_fstype"] == "btrfs":
        out = tmp_path / "usr"
        out.mkdir()
        run(["btrfs", "restore", "-S", "--path-regex", "^/(|lib(|/os-release))$", str(usr), str(out)])
        osr = (out / "lib/os-release").read_text()
    else:
        with open(usr, "rb") as f:
            f.seek(0x467)
            assert f.read(1) == b"\xff"                                 # Flatcar ro_compat hack (disk_util Tune)
        osr = run(["debugfs", "-R", "cat /lib/os-release", str(usr)]).stdout.decode()
    assert f"VERSION_ID={expect['os']['version']}\n" in osr and f'FLATCAR_BOARD="{fl["board"]}"' in osr
    if not fl["pristine"]:
        assert usr_fstype(blkid_at(image, parts["usr_a"])) == fl["usr_fstype"]
    else:
        assert blkid_at(image, parts["usr_b"]) == {}
