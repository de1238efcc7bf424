"""Container-Optimized OS, openSUSE MicroOS and Ubuntu Core replicas: recognised by their partition
fingerprints, with the OS identity, the A/B or snapshot mechanism and the read-only scope.

Reference tools on the same images: sfdisk (attribute bits), veritysetup (the COS root hash the
GRUB entry names really verifies ROOT-B), debugfs + unsquashfs (the Ubuntu Core base snap's
os-release), and, as root, btrfs-progs on a btrfs with real subvolumes and a default subvolume
that is *not* the newest snapshot (a rollback), which the MicroOS collector must follow.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest

from builders import cached, have, run, sfdisk_json
from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest

from immutools.report.model import load_schema
from immutools.scan import scan
from immutools.verify import verify_image

SCHEMA = load_schema()
SPECS = {"cos": "cos-113-amd64-updated", "microos": "microos-20241001-x86_64-kvm",
         "ubuntu-core": "ubuntu-core-24-amd64-installed"}


def extract_sparse(image: Path, start: int, size: int, dest: Path) -> Path:
    """Copy bytes [start, start+size) of a sparse image into ``dest``, holes kept (SEEK_DATA)."""
    with open(image, "rb") as f, open(dest, "wb") as g:
        g.truncate(size)
        pos, end = start, start + size
        while pos < end:
            try:
                data = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(f.fileno(), data, os.SEEK_HOLE), end)
            f.seek(data)
            g.seek(data - start)
            remaining = hole - data
            while remaining:
                chunk = f.read(min(remaining, 1 << 22))
                if not chunk:
                    break
                g.write(chunk)
                remaining -= len(chunk)
            pos = hole
    return dest


@functools.lru_cache(maxsize=None)
def _scanned(collector: str):
    name = SPECS[collector]
    path = build_replica(name)
    return collector, path, scan(str(path), progress=False), replica_manifest(name)


@pytest.fixture(scope="module", params=sorted(SPECS))
def scanned(request):
    return _scanned(request.param)


def test_matches_spec(scanned):
    collector, _path, report, manifest = scanned
    jsonschema.validate(report, SCHEMA)
    assert_matches_manifest(report, manifest)
    assert report["os"]["collector"] == collector
    assert report["os"]["confidence"] >= 0.9
    for row in report["mounts"] + report["paths"]:
        assert row["evidence"], row


def test_read_only_scope(scanned):
    collector, _path, report, _manifest = scanned
    paths = {p["path"]: p["state"] for p in report["paths"]}
    assert paths["/"] == "read-only" and paths["/usr"] == "read-only"
    expected = {
        "cos": {"/etc": "volatile", "/var": "persistent", "/home": "persistent", "/tmp": "volatile",
                "/usr/share/oem": "read-only", "/var/lib/docker": "persistent"},
        "microos": {"/etc": "persistent", "/var": "persistent", "/home": "persistent", "/root": "persistent",
                    "/opt": "persistent", "/usr/local": "persistent", "/tmp": "volatile", "/boot/writable": "persistent"},
        "ubuntu-core": {"/etc": "read-only", "/etc/ssh": "persistent", "/var/lib": "persistent", "/home": "persistent",
                        "/tmp": "volatile", "/writable": "persistent", "/var/cache": "volatile"},
    }[collector]
    for p, state in expected.items():
        assert paths[p] == state, (p, paths[p], state)


def test_cos_slots_follow_the_attribute_bits():
    _collector, path, report, _manifest = _scanned("cos")
    table = sfdisk_json(path)["partitiontable"]
    attrs = {int(re.search(r"(\d+)$", p["node"]).group(1)): p.get("attrs", "") for p in table["partitions"]}
    for slot in report["update"]["slots"]:
        kern = slot["partitions"][0]
        # sfdisk prints "GUID:48,56" style bit lists for the attribute field
        bits = {int(b) for b in re.findall(r"\d+", attrs[kern].split("GUID:", 1)[-1])} if "GUID:" in attrs[kern] else set()
        priority = sum(1 << (b - 48) for b in bits if 48 <= b <= 51)
        assert priority == slot["priority"] and (56 in bits) == slot["successful"], (slot, attrs[kern])
    assert report["distribution"]["grub_default_entry"] == "verified image B"
    result = verify_image(str(path), progress=False)
    assert result["ok"] and {t["slot"]: t["status"] for t in result["targets"]} == {"A": "ok", "B": "ok"}


@pytest.mark.skipif(not have("veritysetup"), reason="needs veritysetup")
def test_cos_root_hash_verifies_with_veritysetup(tmp_path):
    _collector, path, report, _manifest = _scanned("cos")
    target = next(t for t in report["integrity"]["targets"] if t["slot"] == "B")
    part = next(p for p in report["partitions"] if p["number"] == target["partition"])
    root = extract_sparse(path, part["start"], part["size"], tmp_path / "root-b.img")
    # As the kernel maps it: the dm-mod.create table's parameters, no superblock read.
    p = target["params"]
    run(["veritysetup", "verify", "--no-superblock", f"--format={p['version']}", f"--hash={p['algorithm']}",
         f"--data-block-size={p['data_block_size']}", f"--hash-block-size={p['hash_block_size']}",
         f"--data-blocks={p['data_blocks']}", f"--salt={p['salt'] or '-'}", f"--hash-offset={p['hash_offset']}",
         root, root, report["integrity"]["root_hash"]])
    assert target["superblock"] is True        # veritysetup format's superblock sits before the tree


@pytest.mark.skipif(not (have("debugfs") and have("unsquashfs")), reason="needs debugfs and unsquashfs")
def test_ubuntu_core_base_snap_os_release(tmp_path):
    _collector, path, report, _manifest = _scanned("ubuntu-core")
    data = next(p for p in report["partitions"] if p["label"] == "ubuntu-data")
    img = extract_sparse(path, data["start"], data["size"], tmp_path / "data.img")
    snap = tmp_path / "base.snap"
    run(["debugfs", "-R", f"dump /system-data/var/lib/snapd/snaps/{report['distribution']['base']} {snap}", img])
    text = run(["unsquashfs", "-cat", snap, "usr/lib/os-release"]).stdout.decode()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert report["os"]["id"] == fields["ID"] and report["os"]["version"] == fields["VERSION_ID"].strip('"')
    assert report["distribution"]["kernel_efi_link"].startswith(report["distribution"]["kernel"])


# ------------------------------------------------------------------------------------------------
# MicroOS with real btrfs subvolumes (root only: subvolumes need a mounted filesystem)
# ------------------------------------------------------------------------------------------------

MICROOS_SUBVOL_RECIPE = 1
OS_RELEASE = 'NAME="openSUSE MicroOS"\nID="opensuse-microos"\nID_LIKE="suse opensuse microos"\nVERSION_ID="{v}"\n'
FSTAB = ("UUID={u} / btrfs ro 0 0\nUUID={u} /.snapshots btrfs subvol=/@/.snapshots 0 0\n"
         "UUID={u} /home btrfs subvol=/@/home 0 0\nUUID={u} /var btrfs subvol=/@/var 0 0\n")


def _build_subvolume_btrfs(out: Path) -> None:
    """@ with @/.snapshots/{1,2}/snapshot (read-only, each with os-release), @/home, @/var; the
    default subvolume set back to snapshot 1 (as `transactional-update rollback 1` leaves it)."""
    uuid = "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d"
    with open(out, "wb") as f:
        f.truncate(512 * 1024 * 1024)
    run(["mkfs.btrfs", "-q", "-f", "-U", uuid, "-L", "ROOT", out])
    mnt = Path(tempfile.mkdtemp(prefix="immutools-microos-"))
    loop = run(["losetup", "--find", "--show", out]).stdout.decode().strip()
    try:
        run(["mount", loop, mnt])
        try:
            run(["btrfs", "subvolume", "create", mnt / "@"])
            for sub in ("@/.snapshots", "@/home", "@/var"):
                run(["btrfs", "subvolume", "create", mnt / sub])
            for n, version in ((1, "20240925"), (2, "20241001")):
                (mnt / f"@/.snapshots/{n}").mkdir()
                snap = mnt / f"@/.snapshots/{n}/snapshot"
                run(["btrfs", "subvolume", "create", snap])
                (snap / "usr/lib").mkdir(parents=True)
                (snap / "usr/lib/os-release").write_text(OS_RELEASE.format(v=version))
                (snap / "etc").mkdir()
                (snap / "etc/fstab").write_text(FSTAB.format(u=uuid))
                for d in ("home", "var", ".snapshots"):
                    (snap / d).mkdir()
                (mnt / f"@/.snapshots/{n}/info.xml").write_text(f"<snapshot><type>single</type><num>{n}</num></snapshot>\n")
                run(["btrfs", "property", "set", "-ts", snap, "ro", "true"])
            (mnt / "@/home/tux").mkdir()
            subvol_id = run(["btrfs", "subvolume", "show", mnt / "@/.snapshots/1/snapshot"]).stdout.decode()
            sid = re.search(r"Subvolume ID:\s*(\d+)", subvol_id).group(1)
            run(["btrfs", "subvolume", "set-default", sid, mnt])
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        os.rmdir(mnt)


@pytest.mark.skipif(os.geteuid() != 0, reason="making btrfs subvolumes needs a mount (root)")
@pytest.mark.skipif(not have("btrfs"), reason="needs btrfs-progs")
def test_microos_follows_the_btrfs_default_subvolume():
    image = cached("microos-subvolumes", {"v": MICROOS_SUBVOL_RECIPE}, _build_subvolume_btrfs)
    report = scan(str(image), progress=False)
    jsonschema.validate(report, SCHEMA)
    assert report["os"]["collector"] == "microos"
    dist = report["distribution"]
    assert dist["subvolume_metadata"] is True and dist["default_from"] == "btrfs default subvolume"
    assert dist["default_snapshot"] == 1                  # rolled back: not the newest snapshot
    assert report["os"]["version"] == "20240925"
    snaps = {s["number"]: s for s in dist["snapshots"]}
    assert snaps[1]["readonly"] is True and snaps[2]["readonly"] is True
    assert [s["active"] for s in report["update"]["slots"]] == [True, False]
    paths = {p["path"]: p["state"] for p in report["paths"]}
    assert paths["/"] == "read-only" and paths["/home"] == "persistent" and paths["/var"] == "persistent"
    # the reference tool agrees about the default subvolume (read-only loop device, nothing written)
    loop = run(["losetup", "--find", "--show", "--read-only", image]).stdout.decode().strip()
    mnt = Path(tempfile.mkdtemp(prefix="immutools-microos-ro-"))
    try:
        run(["mount", "-o", "ro,subvolid=5", loop, mnt])
        try:
            text = run(["btrfs", "subvolume", "get-default", mnt]).stdout.decode()
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        os.rmdir(mnt)
    assert text.strip().endswith("path @/.snapshots/1/snapshot"), text
