"""Variation suite, the other families where a variant is cheap: Container-Optimized OS rolled back
to its previous slot (the kernel partitions' GPT priorities swapped with ``sfdisk --part-attrs``,
as ``cgpt prioritize`` leaves them after a rollback: GoogleCloudPlatform/cos-customizer
src/pkg/provisioner and the ChromiumOS attribute bits of vboot firmware/include/gpt.h: priority
bits 48-51, successful bit 56)."""

from __future__ import annotations

from replicas import replica_manifest
from variants import GptAttrs, derive

from immutools.scan import scan

COS = "cos-113-amd64-updated"
KERN_A, KERN_B = 2, 4                      # ChromiumOS legacy_disk_layout.json partition numbers


def test_cos_rolled_back_to_slot_a():
    """KERN-A priority 2, KERN-B priority 1 (both successful): GRUB's gptpriority comparison and
    the GPT priority rule both pick A, so the ESP grub.cfg's 'verified image A' entry and ROOT-A's
    verity root hash and os-release are the running system."""
    path = derive("cos-rolled-back", COS, [GptAttrs(KERN_A, "GUID:49,56"), GptAttrs(KERN_B, "GUID:48,56")])
    report = scan(str(path), progress=False)
    manifest = replica_manifest(COS)
    assert report["update"]["active_slot"] == "A"
    assert report["distribution"]["grub_default_entry"] == "verified image A"
    assert report["integrity"]["root_hash"] == manifest["computed"]["root_a"]["verity"]["root_hash"]
    assert report["os"]["build_id"] == "18244.151.14"          # spec var build_a, ROOT-A's os-release
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["observed"] is True and root["integrity"] == "dm-verity"
    slots = {s["name"]: s for s in report["update"]["slots"]}
    assert slots["A"]["priority"] == 2 and slots["B"]["priority"] == 1
    assert report["completeness"]["status"] == "complete"
