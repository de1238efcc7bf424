"""Variation suite, Fedora CoreOS / ostree: the partition-type eras (the CoreOS-specific root type
of FCOS 40 vs the DPS types of FCOS 43, replicas), a first boot still pending (Ignition's flag file on
/boot), and a default boot entry that names no deployment.

Derived variants change the /boot ext4 of the FCOS 43 replica with ``debugfs -w`` (tests/variants.py).
Boot entry format: ostreedev/ostree src/libostree/ostree-sysroot-deploy.c (``ostree=/ostree/boot.N/
<stateroot>/<bootcsum>/<serial>``) and the Boot Loader Specification; the flag: coreos/fedora-coreos-config
overlay.d/05core (35coreos-ignition: /boot/ignition.firstboot, removed after Ignition ran).
"""

from __future__ import annotations

import pytest

from replicas import build_replica, replica_manifest
from variants import ExtPut, derive

from immutools.scan import scan

FCOS43 = "fcos-stable-43-amd64-updated"
BOOT = 3                                       # coreos-assembler's boot partition (label boot)
ENTRIES = "/loader.0/entries"                  # /boot/loader -> loader.0 (bootversion 0)


def _entry_without_ostree_karg() -> bytes:
    """ostree-2.conf (the default: the highest number) as the replica has it, minus ``ostree=``."""
    manifest = replica_manifest(FCOS43)
    deployments = manifest["expect"]["ostree"]["deployments"]
    newest = next(d for d in deployments if d["default"])
    return (f"title Fedora CoreOS {newest['version']} (ostree:0)\nversion 2\n"
            "options rw $ignition_firstboot mitigations=auto,nosmt ignition.platform.id=qemu console=tty0 "
            "console=ttyS0,115200n8\n"
            f"linux /ostree/fedora-coreos-x/vmlinuz-{newest['kernel']}\n").encode()


_reports: dict[str, dict] = {}


def report_of(name: str) -> dict:
    if name not in _reports:
        if name == "default-entry-without-ostree":
            path = derive(f"fcos-{name}", FCOS43, [ExtPut(BOOT, f"{ENTRIES}/ostree-2.conf", _entry_without_ostree_karg())])
        elif name == "first-boot-pending":
            path = derive(f"fcos-{name}", FCOS43, [ExtPut(BOOT, "/ignition.firstboot", b"")])
        else:
            path = build_replica(name)
        _reports[name] = scan(str(path), progress=False)
    return _reports[name]


@pytest.mark.parametrize("name, kinds", [("fcos-stable-40-amd64-updated", "legacy"), (FCOS43, "dps")])
def test_partition_type_eras(name, kinds):
    """FCOS 40 types its root with the CoreOS type, FCOS 43 with the DPS root type: both give the
    same composed system (the default deployment at /, its /usr, the stateroot's /var)."""
    report = report_of(name)
    dist = report["distribution"]
    assert dist["partition_types"] == kinds
    default = replica_manifest(name)["expect"]["ostree"]["deployments"][0]
    mounts = {m["target"]: m for m in report["mounts"]}
    assert default["checksum"] in mounts["/"]["source"] and mounts["/usr"]["access"] == "ro"
    assert mounts["/var"]["source"] == "/sysroot/ostree/deploy/fedora-coreos/var"
    assert report["completeness"]["status"] == "complete"


def test_first_boot_pending():
    """/boot/ignition.firstboot present: Ignition runs at the next boot (the first-boot flag), the
    disk GUID is not the pristine one, so the image is not pristine."""
    report = report_of("first-boot-pending")
    dist = report["distribution"]
    assert dist["first_boot_flag"] is True and dist["pristine"] is False
    assert report_of(FCOS43)["distribution"]["first_boot_flag"] is False


def test_default_entry_without_deployment_is_explained():
    """The default (highest-numbered) entry lost its ``ostree=`` argument: nothing is guessed from
    the rollback entry; every fact of the running deployment is missing with the one reason, which
    names the entry and the rollback still on disk."""
    report = report_of("default-entry-without-ostree")
    dist = report["distribution"]
    assert dist["default_deployment"] is None and dist["rollback_deployment"] is not None
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    for fact in ("mount /", "mount /usr", "os.version", "update.default_deployment", "surface.init"):
        assert facts[fact]["status"] == "missing", facts[fact]
        assert "ostree-2.conf has no ostree= kernel argument" in facts[fact]["reason"]
        assert "(the rollback)" in facts[fact]["reason"]
    assert facts["os.arch"]["status"] == "observed"           # from the DPS root partition type
    assert report["completeness"]["status"] == "incomplete"
