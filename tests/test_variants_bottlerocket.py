"""Variation suite, Bottlerocket: the three grub.cfg forms of its history (v1.0-v1.7 inline with one
verity option, v1.8-v1.11 inline with bootconfig, v1.12+ the dm_verity_root variable with the Secure
Boot preamble), the three layout eras (pre-1.3 without EFI partitions, pre-1.13, current), /local
mounted by a service before local.mount existed, and a BOOT partition without its grub.cfg.

The v1.0 image is a spec variant (data/replica-specs/variant-bottlerocket-aws-k8s-1.17-x86_64-1.0-
pristine.yaml, from bottlerocket-os/bottlerocket tools/rpm2img and packages/release at tag v1.0.0);
the others are the replicas of the later eras, and one derived variant (``debugfs -w`` on BOOT-A).
"""

from __future__ import annotations

import pytest

from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest
from variants import ExtRemove, derive

from immutools.scan import scan

V1_0 = "variant-bottlerocket-aws-k8s-1.17-x86_64-1.0-pristine"
# (replica, grub.cfg form, layout era, active bank, its verity optional arguments)
FORMS = [
    (V1_0, "inline", "pre-1.3", "A", ["restart_on_corruption"]),
    ("bottlerocket-aws-k8s-1.21-aarch64-1.11-updated", "inline", "pre-1.13", "B",
     ["restart_on_corruption", "ignore_zero_blocks"]),
    ("bottlerocket-aws-k8s-1.31-x86_64-pristine", "variable", "current", "A",
     ["restart_on_corruption", "ignore_zero_blocks"]),
]
PRISTINE = "bottlerocket-aws-k8s-1.31-x86_64-pristine"
BOOT_A = 3                                   # twoliter partyplanner numbering (two banks)

_reports: dict[str, dict] = {}


def report_of(name: str) -> dict:
    if name not in _reports:
        _reports[name] = scan(str(build_replica(name)), progress=False)
    return _reports[name]


@pytest.mark.parametrize("name, form, era, bank, options", FORMS, ids=[f[0] for f in FORMS])
def test_grub_cfg_forms_and_layout_eras(name, form, era, bank, options):
    """Each form gives / from its dm-mod.create table: the root hash, salt and data blocks the
    build computed (veritysetup format), the hash partition right after ROOT, the table's
    optional arguments of that era; the layout era is recognised from the partitions."""
    report = report_of(name)
    computed = replica_manifest(name)["computed"][f"root_{bank.lower()}"]["verity"]
    dist = report["distribution"]
    assert dist["grub_form"] == form and dist["layout"] == era
    verity = dist["verity"][bank]
    assert verity["root_hash"] == computed["root_hash"] == report["integrity"]["root_hash"]
    assert verity["salt"] == computed["salt"] and verity["data_blocks"] == computed["data_blocks"]
    assert verity["options"] == options and verity["superblock_agrees"] is True
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["observed"] is True and root["integrity"] == "dm-verity" and root["access"] == "ro"
    assert report["update"]["active_slot"] == bank


def test_v1_0_matches_spec():
    report = report_of(V1_0)
    assert_matches_manifest(report, replica_manifest(V1_0))
    assert report["completeness"]["status"] == "complete"


def test_v1_0_layout_without_efi_partitions():
    """v1.0 x86_64 boots BIOS only: ten partitions, no EFI-SYSTEM/EFI-BACKUP; the sets are
    partitions 2-4 and 6-8 (found by type GUID, not by number)."""
    report = report_of(V1_0)
    labels = [p.get("label") for p in report["partitions"]]
    assert len(labels) == 10 and "EFI-SYSTEM" not in labels and "EFI-BACKUP" not in labels
    slots = {s["name"]: s["partitions"] for s in report["update"]["slots"]}
    assert slots == {"A": [2, 3, 4], "B": [6, 7, 8]}


def test_v1_0_local_mounted_by_a_service():
    """Before local.mount (v1.5.0), prepare-local.service ran ``mount ... BOTTLEROCKET-DATA /local``:
    /local is read from that ExecStart (observed, its Environment= expanded); /var and /opt bind
    into it; the later /local masks and /boot mount, whose services v1.0 lacks, are not reported."""
    report = report_of(V1_0)
    mounts = {m["target"]: m for m in report["mounts"]}
    local = mounts["/local"]
    assert local["observed"] is True and local["source"] == "/dev/disk/by-partlabel/BOTTLEROCKET-DATA"
    assert "fscontext=system_u:object_r:local_t:s0" in local["options"]
    assert any("prepare-local.service runs mount" in e["detail"] for e in local["evidence"])
    assert mounts["/var"]["source"] == "/local/var" and mounts["/opt"]["source"] == "/local/opt"
    for absent in ("/local/var", "/local/opt", "/local/mnt", "/boot", "/mnt"):
        assert absent not in mounts, absent
    states = {p["path"]: p["state"] for p in report["paths"]}
    assert states["/var"] == "persistent" and states["/"] == "read-only"


def test_boot_partition_without_grub_cfg():
    """BOOT-A without /grub/grub.cfg (debugfs rm): / is the documented default, inferred, and the
    root hash is missing -- both with warnings that name grub.cfg."""
    report = scan(str(derive("bottlerocket-no-grub-cfg", PRISTINE, [ExtRemove(BOOT_A, "/grub/grub.cfg")])), progress=False)
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["observed"] is False and root["source"] == "/dev/dm-0" and root["integrity"] == "dm-verity"
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert facts["mount /"]["status"] == "inferred" and "grub.cfg" in facts["mount /"]["reason"]
    assert facts["integrity.root_hash"]["status"] == "missing"
    assert report["integrity"]["root_hash"] is None
    assert any("mount /" in w and "grub.cfg" in w for w in report["warnings"]), report["warnings"]
    assert report["completeness"]["status"] == "incomplete"
