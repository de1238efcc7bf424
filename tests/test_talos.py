"""Talos Linux end to end: every Talos replica, raw and compressed, scanned, reports what its spec
says it holds; the nested containers (XFS/FAT -> UKI -> cpio segments -> squashfs) read by our
layers are compared with the reference tools (mtools, objdump/objcopy, xz/zstd, GNU cpio,
unsquashfs, a kernel overlay mount when root); the META decoder is checked on hand-built blocks
and damaged copies; hostile inputs (a nested object over the limit, a damaged initramfs, a damaged
META copy) end in warnings, never in a crash.

The expected answers come from each replica's manifest (the spec's ``expect:`` section), not from
this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import jsonschema
import pytest

from builders import have, run
from replicas import build_replica, replica_manifest

from immutools.collectors.talos import guid_from_label
from immutools.disk import DiskImage
from immutools.fs import open_filesystem
from immutools.fs.cpio import CpioArchive
from immutools.fs.pe import UnifiedKernelImage, read_pe_section_list
from immutools.fs.talos_meta import BLOCK, decode_block, read_meta
from immutools.image.source import BytesSource, FileSource
from immutools.limits import Limits
from immutools.replica.bootassets import adv_block, syslinux_adv
from immutools.replica.builder import data_extents
from immutools.report.model import load_schema
from immutools.scan import scan

SCHEMA = load_schema()
SPECS = [
    "talos-v1.7.6-amd64-metal",
    "talos-v1.9.5-amd64-metal",
    "talos-v1.9.5-amd64-installed",
    "talos-v1.9.5-amd64-upgraded",
    "talos-v1.10.4-arm64-metal",
    "talos-v1.12.2-amd64-secureboot-upgraded",
    "talos-v1.13.0-amd64-metal",
]
COMPRESSED = [("talos-v1.7.6-amd64-metal", "xz"), ("talos-v1.9.5-amd64-metal", "zst")]
IS_ROOT = os.geteuid() == 0


def _subset(expected, actual, where="report"):
    """Every key of ``expected`` has the same value in ``actual`` (lists element by element);
    ``present`` as an expected META value only asks for the key."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            if value == "present":
                assert key in actual, f"{where}: {key} missing from {sorted(actual)}"
                continue
            _subset(value, actual.get(key), f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _subset(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"


def _check_report(name: str, report: dict, manifest: dict) -> None:
    jsonschema.validate(report, SCHEMA)
    expect = dict(manifest["expect"])
    talos = expect.pop("talos")
    if not talos.get("meta_tags"):
        assert report["distribution"]["meta_tags"] == {}, report["distribution"]["meta_tags"]
    _subset(expect, report)
    _subset(talos, report["distribution"], "distribution")
    assert report["os"]["collector"] == "talos"
    assert report["image"]["provenance"]["spec"] == name
    # Talos mounts everything in code: the guaranteed mount rows are inferred, and one warning says
    # so. Talos' GRUB template names its fallback entry by title, which upstream GRUB's
    # normal/menu.c does not read (numbers only): that is a fact about the image, said once.
    # Nothing else may warn on a healthy replica.
    inferred = [w for w in report["warnings"] if w.startswith("completeness: ") and "are inferred from the documented" in w]
    fallback = [w for w in report["warnings"] if "grub.cfg: fallback '" in w and "is not an entry number" in w]
    assert len(fallback) <= 1, fallback
    assert [w for w in report["warnings"] if w not in inferred + fallback] == [], report["warnings"]
    assert len(inferred) == 1 and all(f"mount {t} (" in inferred[0] for t in ("/", "/var", "/tmp")), inferred
    assert report["completeness"]["status"] == "complete" and report["completeness"]["missing"] == 0


def _sparse_digest(path: Path) -> str:
    """sha256 over the data extents (offset, bytes) and the size: any write to the image shows."""
    from immutools.replica.builder import data_extents

    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        for start, length in data_extents(f.fileno(), size):
            h.update(f"{start}:{length}".encode())
            h.update(os.pread(f.fileno(), length, start))
    return h.hexdigest()


@pytest.fixture(scope="module", params=SPECS)
def scanned(request):
    name = request.param
    path = build_replica(name)
    before = _sparse_digest(path) if name == "talos-v1.9.5-amd64-upgraded" else None
    report = scan(str(path), progress=False)
    if before:
        assert _sparse_digest(path) == before, "scan changed its input"
    return name, report, replica_manifest(name)


def test_matches_spec(scanned):
    name, report, manifest = scanned
    _check_report(name, report, manifest)
    # GUIDFromLabel for the disk, EFI/BIOS/BOOT/META and the BOOT XFS uuid: all or nothing
    # (siderolabs/talos pkg/makefs/makefs.go, images >= 1.13)
    checks = report["distribution"]["deterministic_guid_checks"]
    assert set(checks.values()) == {manifest["expect"]["talos"]["deterministic_guids"]}, checks
    # what each release's era predicts (compressions, os-release, sizes, bootloader) holds
    eras = report["distribution"]["era_checks"]
    assert len(eras) >= 4 and all(c["ok"] for c in eras), eras
    # the partitions the report names are the ones the builder wrote
    layout = report["distribution"]["layout"]
    assert {p["label"]: (p["number"], p["size"]) for p in manifest["partitions"]} == \
        {label: (row["number"], round(row["size_mib"] * 1024 * 1024)) for label, row in layout.items()}


@pytest.mark.parametrize("name, form", COMPRESSED)
def test_compressed_forms(name, form):
    report = scan(str(build_replica(name, form)), progress=False)
    _check_report(name, report, replica_manifest(name))
    assert report["image"]["compression"] == {"xz": "xz", "zst": "zstd"}[form]


def test_version_evidence_names_its_source(scanned):
    _name, report, manifest = scanned
    d = report["distribution"]
    source = manifest["expect"]["talos"]["version_source"]
    ev = [e for e in report["os"]["evidence"] if f"(from {source})" in e.get("detail", "")]
    assert ev and ev[0]["observed"] is True, report["os"]["evidence"]
    # every source that names a version agrees with the answer (the booted entry's sources)
    for cand in d["version_candidates"]:
        if cand["source"] != "grub-entry" or cand.get("active", True):
            assert cand["value"] == d["version"], cand
    # machined's embedded tag is found on every replica and is the booted version
    assert d["machined_tag"] == d["version"]
    if not d["os_release_filled"]:
        assert source in ("grub-entry", "uki-name", "uki-osrel", "machined-strings")


def test_mounts_and_paths(scanned):
    _name, report, manifest = scanned
    mounts = {m["target"]: m for m in report["mounts"]}
    paths = {p["path"]: p for p in report["paths"]}
    version = tuple(int(x) for x in manifest["expect"]["talos"]["version"].lstrip("v").split(".")[:2])
    assert mounts["/"]["access"] == "ro" and mounts["/"]["observed"] is False
    assert mounts["/"]["fstype"] == ("overlay" if manifest["expect"]["talos"]["extensions"] else "squashfs")
    for target in ("/run", "/system", "/tmp"):
        assert mounts[target]["fstype"] == "tmpfs" and paths[target]["state"] == "volatile"
    assert mounts["/var"]["source"] == "/dev/disk/by-partlabel/EPHEMERAL" and paths["/var"]["state"] == "persistent"
    assert ("/system/state" in mounts) == (version <= (1, 11))         # detached mount from 1.12
    for p in ("/", "/etc", "/usr", "/boot", "/root"):
        assert paths[p]["state"] == "read-only", (p, paths[p])
    for overlay in ("/etc/cni", "/etc/kubernetes", "/usr/libexec/kubernetes", "/opt"):
        m = mounts[overlay]
        name = overlay.strip("/").replace("/", "-")
        assert m["upper"] == f"/var/system/overlays/{name}-diff" and m["lower"] == [overlay]
        assert paths[overlay]["state"] == "persistent" and paths[overlay]["chain"] == [overlay, "/var"]
    assert paths["/etc/hosts"]["state"] == "volatile" and mounts["/etc/hosts"]["source"] == "/system/etc/hosts"
    assert ("/etc/os-release" in mounts) == (version <= (1, 9))
    # every Talos-in-code mount says so, names its upstream source, and was checked
    for m in report["mounts"]:
        assert m["observed"] is False and any(e["observed"] is False and "talos" in e["source"] for e in m["evidence"]), m
    checks = report["distribution"]["mount_checks"]
    squashfs_checks = [c for c in checks if "squashfs" in c["check"] or "initramfs" in c["check"]]
    assert squashfs_checks and all(c["ok"] for c in squashfs_checks), squashfs_checks
    installed = manifest["expect"]["talos"]["disk_state"] == "installed"
    assert all(c["ok"] == installed for c in checks if "partition present" in c["check"]), checks
    if installed:
        assert any("upper directory present on EPHEMERAL" in c["check"] and c["ok"] for c in checks)


def test_surface(scanned):
    _name, report, manifest = scanned
    s = report["surface"]
    assert s["shells"] == [] and s["sshd"] is False and s["package_managers"] == []
    assert s["init"] == "machined" and s["init_details"]["path"] == manifest["expect"]["talos"]["machined"]
    assert s["kernel_modules"]["count"] == 3 and s["kernel_modules"]["signature_enforced"] is True
    assert {"init", "dashboard", "poweroff", "reboot", "shutdown"} <= set(s["talos_roles"])
    executables = report["distribution"]["executables"]
    assert {"containerd", "runc", "init"} <= set(executables) and not {"sh", "bash", "ssh", "sshd"} & set(executables)
    if manifest["expect"]["talos"]["extensions"]:
        assert {"iscsid", "iscsiadm", "fstrim"} <= set(executables)        # through the extension layers


def test_kernel_command_line(scanned):
    _name, report, manifest = scanned
    d = report["distribution"]
    assert d["kspp"]["present"] == {"slab_nomerge": "", "pti": "on"}
    line = d["kernel_cmdline"]
    assert line.startswith(f"talos.platform={manifest['expect']['talos']['platform']} ")
    assert ("selinux=1" in line) == (d["selinux"] != "disabled")
    assert ("module.sig_enforce=1" in line) == (d["module_sig_enforce_by"] == "cmdline")
    assert ("lockdown=confidentiality" in line) == (d["lockdown"] == "confidentiality")


def test_meta_partition_matches_builder(scanned):
    name, report, manifest = scanned
    meta = report["distribution"]["meta"]
    part = next(p for p in manifest["partitions"] if p["label"] == "META")
    assert part["size"] == 1048576 and meta["exact_size"] is True
    if manifest["expect"]["talos"]["meta_state"] == "empty":
        assert meta["all_zero"] and meta["selected_copy"] is None
    else:
        assert meta["selected_copy"] == 1 and meta["copies_identical"] is True and meta["copies_agree"] is True
        assert [c["state"] for c in meta["copies"]] == ["valid", "valid"]


def test_guid_from_label_vectors():
    # the test vectors of siderolabs/talos@ad8823176 pkg/makefs/makefs_test.go
    assert guid_from_label("talos-image-disk") == "d92d45b3-cde9-8760-be9f-a2a71fac8d11"
    assert guid_from_label("EFI") == "bca5174b-0118-8a6a-af0b-2c6e1585acae"
    assert guid_from_label("META") == "cf04f137-101e-8ec6-9627-fa3f51cdabb8"
    assert guid_from_label("EPHEMERAL") == "c5e02400-0e5e-80bc-99ec-53b3e45ad6c4"


# ---- nested containers against the reference tools ---------------------------------------------

def _unsquashfs_listing(path: Path) -> dict[str, tuple[str, int | None, str | None]]:
    out = {}
    for line in run(["unsquashfs", "-lln", "-d", "", path]).stdout.decode().splitlines():
        m = re.match(r"^(\S{10}) \S+\s+(\d+) \S+ \S+ (.*)$", line)
        if not m or not m.group(3):
            continue
        name, target = m.group(3), None
        if m.group(1)[0] == "l":
            name, target = name.split(" -> ", 1)
        out[name] = (m.group(1), int(m.group(2)) if m.group(1)[0] == "-" else None, target)
    return out


def _our_listing(fs) -> dict[str, tuple[str, int | None, str | None]]:
    out = {}
    for entry in fs.walk("/"):
        st = entry.stat
        kind = "d" if st.is_dir else ("l" if st.is_symlink else "-")
        import stat as stat_mod

        perms = stat_mod.filemode(st.mode)
        out[entry.path] = (perms, st.size if kind == "-" else None, fs.readlink(entry.path) if kind == "l" else None)
    return out


def _cpio_reference(segment: bytes, compression: str, tmp: Path) -> tuple[list[str], bytes]:
    """GNU cpio's names for one segment (decompressed by the real tool) and the archive bytes."""
    tool = {"zstd": ["zstd", "-dc", "-q"], "xz": ["xz", "-dc"], "none": ["cat"]}[compression]
    data = subprocess.run(tool, input=segment, capture_output=True, check=True).stdout
    names = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout.decode().split()
    return names, data


def _check_initramfs_against_tools(initramfs: bytes, tmp: Path, expect_segments: list[str]) -> CpioArchive:
    arc = CpioArchive.from_source(BytesSource(initramfs, name="initramfs"))
    assert [s["compression"] for s in arc.segments] == expect_segments
    for seg in arc.segments:
        raw = initramfs[seg["offset"]:seg["offset"] + seg["size"]]
        names, data = _cpio_reference(raw, seg["compression"], tmp)
        ours = {n for n in names if n != "."}
        assert seg["decompressed_size"] == len(data)
        for n in ours:
            assert arc.exists("/" + n), n
        # each file's bytes as GNU cpio extracts them
        for n in ours:
            if arc.stat("/" + n).is_file:
                ref = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", n], input=data, capture_output=True, check=True).stdout
                assert arc.read("/" + n, max_bytes=1 << 30) == ref, n
    return arc


def _check_squashfs_against_unsquashfs(arc: CpioArchive, path: str, tmp: Path) -> None:
    blob = arc.read(path, max_bytes=1 << 30)
    file = tmp / path.strip("/")
    file.write_bytes(blob)
    fs = open_filesystem(arc.open_source(path))
    assert _our_listing(fs) == _unsquashfs_listing(file)


@pytest.mark.skipif(not (have("mcopy") and have("objdump") and have("unsquashfs") and have("cpio")), reason="needs mtools, binutils, squashfs-tools, cpio")
def test_uki_initrd_cpio_squashfs_against_tools(tmp_path):
    """UKI on the ESP -> .initrd (two zstd segments) -> rootfs.sqsh and extension squashfs."""
    name = "talos-v1.13.0-amd64-metal"
    path = build_replica(name)
    manifest = replica_manifest(name)
    esp = next(p for p in manifest["partitions"] if p["label"] == "EFI")
    uki_name = f"/EFI/Linux/Talos-{manifest['expect']['talos']['version']}.efi"
    ref = tmp_path / "ref.efi"
    run(["mcopy", "-n", "-i", f"{path}@@{esp['offset']}", f"::{uki_name}", ref])
    with DiskImage.open(str(path), progress=False) as image:
        fs = image.filesystem(image.volume(label="EFI"))
        ours = fs.read(uki_name, max_bytes=1 << 30)
    assert ours == ref.read_bytes()
    src = FileSource(ref)
    objdump = []
    for line in run(["objdump", "-h", ref]).stdout.decode().splitlines():
        m = re.match(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+2\*\*\d+", line)
        if m:
            objdump.append((m.group(1), int(m.group(3), 16), int(m.group(2), 16)))
    assert [(s.name, s.offset, s.size) for s in read_pe_section_list(src)] == objdump
    uki = UnifiedKernelImage(src)
    initrd = uki.initrd.read_at(0, uki.initrd.size)
    run(["objcopy", "-O", "binary", "--only-section=.initrd", ref, tmp_path / "initrd"])
    assert initrd == (tmp_path / "initrd").read_bytes()
    arc = _check_initramfs_against_tools(initrd, tmp_path, ["zstd", "zstd"])
    _check_squashfs_against_unsquashfs(arc, "/rootfs.sqsh", tmp_path)
    for layer in [n for n in arc.listdir("/") if n.endswith(".sqsh") and n != "rootfs.sqsh"]:
        _check_squashfs_against_unsquashfs(arc, "/" + layer, tmp_path)
    # dual-boot: GRUB slot A boots the same initramfs as the UKI (siderolabs/talos
    # internal/app/machined/pkg/runtime/v1alpha1/bootloader/dual/dual.go)
    with DiskImage.open(str(path), progress=False) as image:
        boot = image.filesystem(image.volume(label="BOOT"))
        assert boot.read("/A/initramfs.xz", max_bytes=1 << 30) == initrd


@pytest.mark.skipif(not (have("xz") and have("cpio") and have("unsquashfs")), reason="needs xz, cpio, squashfs-tools")
def test_grub_xz_initramfs_against_tools(tmp_path):
    """BOOT (XFS) -> /A/initramfs.xz (one xz segment, 1.7) -> rootfs.sqsh (xz)."""
    path = build_replica("talos-v1.7.6-amd64-metal")
    with DiskImage.open(str(path), progress=False) as image:
        vol = image.volume(label="BOOT")
        initramfs = image.filesystem(vol).read("/A/initramfs.xz", max_bytes=1 << 30)
        offset = vol.partition.start
    if IS_ROOT and have("mount"):
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        run(["mount", "-o", f"ro,loop,offset={offset}", path, mnt])
        try:
            assert (mnt / "A" / "initramfs.xz").read_bytes() == initramfs
        finally:
            run(["umount", mnt])
    arc = _check_initramfs_against_tools(initramfs, tmp_path, ["xz"])
    _check_squashfs_against_unsquashfs(arc, "/rootfs.sqsh", tmp_path)
    assert open_filesystem(arc.open_source("/rootfs.sqsh")).read("/etc/os-release") == b""


@pytest.mark.skipif(not IS_ROOT or not have("mount"), reason="an overlayfs reference needs root (loop and overlay mounts)")
def test_extension_union_matches_kernel_overlay(tmp_path):
    """Our union of extension layers over the rootfs equals a read-only kernel overlay of them."""
    from immutools.fs.layered import LayeredFileSystem

    path = build_replica("talos-v1.9.5-amd64-upgraded")
    with DiskImage.open(str(path), progress=False) as image:
        initramfs = image.filesystem(image.volume(label="BOOT")).read("/B/initramfs.xz", max_bytes=1 << 30)
    arc = CpioArchive.from_source(BytesSource(initramfs))
    layers = sorted(n for n in arc.listdir("/") if n.endswith(".sqsh") and n != "rootfs.sqsh") + ["rootfs.sqsh"]
    mounts = []
    try:
        for n in layers:
            (tmp_path / n).write_bytes(arc.read("/" + n, max_bytes=1 << 30))
            mp = tmp_path / f"m-{n}"
            mp.mkdir()
            run(["mount", "-t", "squashfs", "-o", "ro,loop", tmp_path / n, mp])
            mounts.append(mp)
        union = tmp_path / "union"
        union.mkdir()
        run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(str(m) for m in mounts), union])
        mounts.append(union)
        ref = {}
        for root, dirs, files in os.walk(union):
            for n in dirs + files:
                p = Path(root, n)
                rel = "/" + str(p.relative_to(union))
                st = p.lstat()
                ref[rel] = (oct(st.st_mode), st.st_size if p.is_file() and not p.is_symlink() else None,
                            os.readlink(p) if p.is_symlink() else None)
        fs = LayeredFileSystem([open_filesystem(arc.open_source("/" + n)) for n in layers])
        ours = {}
        for e in fs.walk("/"):
            ours[e.path] = (oct(e.stat.mode), e.stat.size if e.stat.is_file else None,
                            fs.readlink(e.path) if e.stat.is_symlink else None)
        assert ours == ref
    finally:
        for mp in reversed(mounts):
            subprocess.run(["umount", mp], capture_output=True)


# ---- META decoder ------------------------------------------------------------------------------

def _meta_bytes(first: bytes, second: bytes, tail: bytes = b"") -> BytesSource:
    data = bytearray(1 << 20)
    data[:BLOCK] = first
    data[BLOCK:2 * BLOCK] = second
    if tail:
        data[-len(tail):] = tail
    return BytesSource(bytes(data), name="META")


def test_meta_decoder_tags_checksum_and_copies():
    block = adv_block([(6, b"A"), (17, b"dual-boot"), (0x10A, b"net")])
    meta = read_meta(_meta_bytes(block, block))
    assert meta.selected == 1 and meta.copies_identical and meta.copies_agree
    assert meta.tags == {6: b"A", 17: b"dual-boot", 10: b"net"}          # 0x10a is kept as a byte: tag 10
    assert any("read as 10" in n for n in meta.copies[0].notes)
    info = meta.to_dict()
    assert [t["name"] for t in info["tags"]] == ["Upgrade", "MetalNetworkPlatformConfig", "DiskImageBootloader"]
    # a damaged first copy: Talos falls back to the second
    bad = bytearray(block)
    bad[20] ^= 1
    meta = read_meta(_meta_bytes(bytes(bad), block))
    assert meta.copies[0].state == "bad-checksum" and meta.selected == 2 and meta.tags[6] == b"A"
    assert meta.copies_identical is None
    # two valid copies that disagree: copy 1 wins, the disagreement is reported
    other = adv_block([(6, b"B")])
    meta = read_meta(_meta_bytes(block, other))
    assert meta.selected == 1 and meta.copies_agree is False and meta.tags[6] == b"A"
    # a record running past the data area rejects the copy, as talos.go does
    broken = bytearray(BLOCK)
    broken[0:4] = (0x5A4B3C2D).to_bytes(4, "big")
    broken[-4:] = (0xA5B4C3D2).to_bytes(4, "big")
    broken[4:12] = struct.pack(">II", 6, BLOCK)
    broken[-36:-4] = hashlib.sha256(bytes(broken)).digest()
    assert decode_block(bytes(broken)).state == "damaged"
    # bad magics, an all-zero partition
    assert decode_block(bytes(BLOCK - 1) + b"\1").state == "bad-magic"
    empty = read_meta(_meta_bytes(bytes(BLOCK), bytes(BLOCK)))
    assert empty.all_zero and empty.selected is None and empty.tags == {}


def test_meta_legacy_syslinux_fallback():
    legacy = syslinux_adv([(7, b"ghcr.io/siderolabs/installer:v1.9.5"), (6, b"B")])
    modern = adv_block([(6, b"A")])
    meta = read_meta(_meta_bytes(modern, modern, legacy + legacy))
    assert meta.legacy.state == "valid"
    assert meta.tags[6] == b"A" and meta.tag_source[6] == "talos copy 1"       # the Talos ADV wins
    assert meta.tags[7] == b"ghcr.io/siderolabs/installer:v1.9.5" and meta.tag_source[7] == "syslinux ADV"
    broken = bytearray(legacy)
    broken[10] ^= 0xFF
    meta = read_meta(_meta_bytes(bytes(BLOCK), bytes(BLOCK), bytes(broken) + bytes(broken)))
    assert meta.legacy.state == "bad-checksum" and meta.selected is None
    with pytest.raises(Exception):
        read_meta(BytesSource(bytes(1000)))


# ---- hostile inputs ------------------------------------------------------------------------------

def _sparse_copy(src: Path, dst: Path) -> None:
    run(["cp", "--sparse=always", src, dst])


def _find_in_data_extents(path: Path, needle: bytes) -> int | None:
    """Offset of ``needle`` in a sparse image, reading only its data extents."""
    from immutools.replica.builder import data_extents

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for start, length in data_extents(f.fileno(), size):
            chunk = os.pread(f.fileno(), length, start)
            at = chunk.find(needle)
            if at >= 0:
                return start + at
    return None


def test_nested_size_limit_is_a_warning(tmp_path):
    path = build_replica("talos-v1.9.5-amd64-metal")
    small = Limits(max_nested_bytes=1 << 20)
    with DiskImage.open(str(path), limits=small, progress=False) as image:
        from immutools.scan import scan_image

        report = scan_image(image)
    assert report["os"]["version"] == "v1.9.5" and report["distribution"]["version_source"] == "grub-entry"
    assert any("nested-object limit" in w for w in report["warnings"]), report["warnings"]
    assert report["surface"] is None
    jsonschema.validate(report, SCHEMA)


def test_damaged_initramfs_and_meta_copy(tmp_path):
    """Flip bytes inside the zstd segment on BOOT and inside META copy 1 of a copy of a replica."""
    src = build_replica("talos-v1.9.5-amd64-upgraded")
    path = tmp_path / "damaged.raw"
    _sparse_copy(src, path)
    with DiskImage.open(str(path), progress=False) as image:
        boot = image.filesystem(image.volume(label="BOOT"))
        head = boot.read("/B/initramfs.xz", 0, 4096)
        meta_start = image.volume(label="META").partition.start
    at = _find_in_data_extents(path, head)
    assert at is not None, "initramfs bytes not found contiguous in the image"
    with open(path, "r+b") as f:
        f.seek(at + 2048)
        f.write(bytes(4096))                              # zero a run inside the compressed frame
        f.seek(meta_start + 100)
        f.write(b"\xff\xff")                              # META copy 1 no longer matches its checksum
    report = scan(str(path), progress=False)
    jsonschema.validate(report, SCHEMA)
    assert report["os"]["version"] == "v1.9.5"            # still known from the boot entry
    d = report["distribution"]
    assert d["meta"]["selected_copy"] == 2 and d["meta_tags"] == {"Upgrade": "A"}
    assert any("META copy 1: bad-checksum" in w for w in report["warnings"]), report["warnings"]
    assert any("initramfs" in w or "rootfs.sqsh" in w for w in report["warnings"]), report["warnings"]


def test_version_from_machined_strings(tmp_path):
    """Custom GRUB entry titles (no "Talos vX.Y.Z") and an empty os-release: the version then
    comes from the tag machined embeds, and the evidence says so."""
    src = build_replica("talos-v1.9.5-amd64-metal")
    path = tmp_path / "retitled.raw"
    _sparse_copy(src, path)
    needle = b'menuentry "A - Talos v1.9.5"'
    at = _find_in_data_extents(path, needle)
    assert at is not None
    with open(path, "r+b") as f:
        f.seek(0)
        cfg_block = os.pread(f.fileno(), 4096, at - at % 4096)
        new = cfg_block.replace(b"A - Talos v1.9.5", b"A - Custom Linux")     # same length, every occurrence
        assert new != cfg_block
        os.pwrite(f.fileno(), new, at - at % 4096)
    report = scan(str(path), progress=False)
    jsonschema.validate(report, SCHEMA)
    d = report["distribution"]
    assert d["grub_default"] == "A - Custom Linux"
    assert report["os"]["version"] == "v1.9.5" and d["version_source"] == "machined-strings"
    ev = [e for e in report["os"]["evidence"] if "(from machined-strings)" in e.get("detail", "")]
    assert ev and ev[0]["source"].endswith("/sbin/init"), report["os"]["evidence"]


# ---- a damaged boot configuration: missing facts with the reason, never a silent gap ------------

def _gpt_partition(image: Path, label: str) -> tuple[int, int]:
    """(byte offset, byte size) of the partition named ``label``, as sfdisk reads the GPT."""
    table = json.loads(run(["sfdisk", "--json", image]).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p.get("name") == label)
    sector = table.get("sectorsize", 512)
    return part["start"] * sector, part["size"] * sector


def _zero_xfs_file(image: Path, label: str, path: str, tmp: Path) -> None:
    """Zero the data blocks of ``path`` in the XFS partition ``label``, located by xfs_db on a
    sparse copy of the partition."""
    start, size = _gpt_partition(image, label)
    part = tmp / f"{label}.xfs"
    with open(image, "rb") as src, open(part, "wb") as dst:
        dst.truncate(size)
        for at, length in data_extents(src.fileno(), os.fstat(src.fileno()).st_size):
            lo, hi = max(at, start), min(at + length, start + size)
            if lo < hi:
                os.pwrite(dst.fileno(), os.pread(src.fileno(), hi - lo, lo), lo - start)
    bmap = run(["xfs_db", "-r", "-c", f"path {path}", "-c", "bmap", part]).stdout.decode()
    extents = re.findall(r"startblock (\d+) \(\d+/\d+\) count (\d+)", bmap)
    assert extents, bmap
    block_size = int(re.search(r"blocksize = (\d+)", run(["xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize", part]).stdout.decode()).group(1))
    with open(image, "r+b") as f:
        for fsb, count in extents:
            conv = run(["xfs_db", "-r", "-c", f"convert fsb {fsb} byte", part]).stdout.decode()
            offset = int(re.search(r"\((\d+)\)", conv).group(1))
            os.pwrite(f.fileno(), bytes(int(count) * block_size), start + offset)


@pytest.mark.parametrize("name, damage, named", [
    ("talos-v1.9.5-amd64-metal", "grub.cfg zeroed", "/grub/grub.cfg"),
    ("talos-v1.10.4-arm64-metal", "UKI deleted", "/EFI/Linux"),
])
def test_damaged_boot_configuration_is_explained(tmp_path, name, damage, named):
    """A copy of a replica whose boot configuration is gone (BOOT:/grub/grub.cfg zeroed where xfs_db
    says it lies, or the only UKI deleted from the ESP with mdel): still Talos, the documented
    mount table still stands, and the facts only the boot path leads to (version, architecture,
    booted entry, init) are missing with warnings naming the damaged file."""
    tools = ("xfs_db",) if damage == "grub.cfg zeroed" else ("mdel",)
    if not all(have(t) for t in tools + ("sfdisk",)):
        pytest.skip(f"needs {', '.join(tools)} and sfdisk")
    path = tmp_path / "damaged.raw"
    _sparse_copy(build_replica(name), path)
    if damage == "grub.cfg zeroed":
        _zero_xfs_file(path, "BOOT", "/grub/grub.cfg", tmp_path)
    else:
        start, _size = _gpt_partition(path, "EFI")
        uki = f"/EFI/Linux/Talos-{replica_manifest(name)['expect']['talos']['version']}.efi"
        run(["mdel", "-i", f"{path}@@{start}", f"::{uki}"])
    report = scan(str(path), progress=False)
    jsonschema.validate(report, SCHEMA)
    assert report["os"]["collector"] == "talos" and report["os"]["version"] is None
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/"]["observed"] is False and mounts["/var"]["source"] == "/dev/disk/by-partlabel/EPHEMERAL"
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert report["completeness"]["status"] == "incomplete"
    for fact in ("os.version", "os.arch", "update.active_entry", "surface.init"):
        assert facts[fact]["status"] == "missing" and named in facts[fact]["reason"], facts[fact]
        assert any(w.startswith(f"completeness: {fact} is missing: ") and named in w for w in report["warnings"]), report["warnings"]

