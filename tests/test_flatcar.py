"""Flatcar end to end: every Flatcar replica, scanned, reports what its spec says it holds.

The expected answers come from each replica's manifest (the spec's ``expect:`` section with the
values computed at build time, such as verity root hashes), not from this file.
"""

from __future__ import annotations

import jsonschema
import pytest

from builders import sha256_file
from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest

from immutools.report.model import load_schema
from immutools.scan import scan

SCHEMA = load_schema()
SPECS = [f"flatcar-{rel}-{arch}-{state}" for rel in ("stable-4593", "lts-4081", "stable-3227")
         for arch in ("amd64", "arm64") for state in ("pristine", "updated")]


@pytest.fixture(scope="module", params=SPECS)
def scanned(request):
    name = request.param
    path = build_replica(name)
    before = sha256_file(path) if name.endswith("4593-amd64-pristine") else None
    report = scan(str(path), progress=False)
    if before:
        assert sha256_file(path) == before, "scan changed its input"
    return name, report, replica_manifest(name)


def test_matches_spec(scanned):
    name, report, manifest = scanned
    jsonschema.validate(report, SCHEMA)
    assert_matches_manifest(report, manifest)
    assert report["os"]["collector"] == "flatcar"
    assert report["image"]["provenance"]["replica"] is True
    assert report["image"]["provenance"]["spec"] == name


def test_mounts_and_paths(scanned):
    name, report, manifest = scanned
    mounts = {m["target"]: m for m in report["mounts"]}
    paths = {p["path"]: p for p in report["paths"]}
    # / on ROOT by label, persistent; /usr read-only through dm-verity.
    assert mounts["/"]["source"] == "LABEL=ROOT" and mounts["/"]["persistence"] == "persistent"
    assert mounts["/usr"]["integrity"] == "dm-verity" and mounts["/usr"]["access"] == "ro"
    assert mounts["/usr"]["fstype"] == manifest["expect"]["flatcar"]["usr_fstype"]
    assert paths["/usr"]["state"] == "read-only"
    for p in ("/", "/etc", "/var", "/home", "/opt", "/root", "/srv"):
        assert paths[p]["state"] == "persistent", (p, paths[p])
    for p in ("/tmp", "/media", "/run"):
        assert paths[p]["state"] == "volatile", (p, paths[p])
    if manifest["expect"]["flatcar"]["etc_era"] == "overlay":
        etc = mounts["/etc"]
        assert etc["fstype"] == "overlay" and etc["observed"] is False
        assert "lowerdir=/usr/share/flatcar/etc" in etc["options"]
    oem = manifest["expect"]["flatcar"]["oem_mountpoint"]
    assert mounts[oem]["fstype"] == manifest["expect"]["flatcar"]["oem_fstype"]
    # Every row says where it came from; inferred rows say so.
    for row in report["mounts"] + report["paths"]:
        assert row["evidence"], row
    assert all(m["observed"] is False for m in report["mounts"] if m["target"] in ("/run",))


def test_surface(scanned):
    _name, report, _manifest = scanned
    s = report["surface"]
    assert any(p.endswith("/bash") for p in s["shells"])
    assert s["sshd"] is True and s["sshd_enabled"] is True
    assert any(u.get("unit") == "sshd.socket" and u.get("enabled") for u in s["sshd_units"]), s["sshd_units"]
    assert s["package_managers"] == []
    assert s["selinux"] == "permissive"
    assert s["init"] == "systemd"
    assert s["kernel_modules"]["count"] > 0
    assert s["setuid"], "Flatcar ships setuid binaries (sudo, su)"


def test_kernel_command_line(scanned):
    _name, report, manifest = scanned
    line = report["distribution"]["kernel_cmdline"]
    active = report["update"]["active_slot"]
    uuid = {"A": "7130c94a-213a-4e5a-8e26-6cce9662f132", "B": "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"}[active]
    assert f"verity.usr=PARTUUID={uuid}" in line
    assert "mount.usr=/dev/mapper/usr" in line and "root=LABEL=ROOT" in line
    assert f"verity.usrhash={manifest['expect']['integrity']['root_hash']}" in line
    assert ("flatcar.first_boot=detected" in line) == manifest["expect"]["flatcar"]["first_boot_flag"]
    # every word is a kernel argument: no GRUB device name left behind by `search --set` (hd0,gpt6)
    assert not [w for w in line.split() if w.startswith(("hd", "(hd"))], line


@pytest.mark.parametrize("name,form,container,compression", [
    ("flatcar-lts-4081-amd64-pristine", "bz2", "raw", "bzip2"),          # flatcar_production_image.bin.bz2
    ("flatcar-stable-4593-amd64-updated", "qcow2", "qcow2", None),       # flatcar_production_qemu_uefi_image.img
])
def test_shipped_forms_report_the_same(name, form, container, compression):
    """The shipped forms (.bin.bz2, qcow2 -c compat=0.10; flatcar/scripts
    build_library/vm_image_util.sh) give the raw image's report."""
    raw = scan(str(build_replica(name)), progress=False)
    shipped_path = build_replica(name, form)
    before = sha256_file(shipped_path)
    shipped = scan(str(shipped_path), progress=False)
    assert sha256_file(shipped_path) == before
    assert shipped["image"]["container"] == container and shipped["image"]["compression"] == compression
    for key in ("os", "partitions", "mounts", "paths", "update", "integrity", "surface", "distribution"):
        assert shipped[key] == raw[key], key
