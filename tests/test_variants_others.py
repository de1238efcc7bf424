"""Variation suite, the other families where a variant is cheap:

* Container-Optimized OS rolled back to its previous slot (the kernel partitions' GPT priorities
  swapped with ``sfdisk --part-attrs``, as ``cgpt prioritize`` leaves them after a rollback:
  GoogleCloudPlatform/cos-customizer src/pkg/provisioner and the ChromiumOS attribute bits of vboot
  firmware/include/gpt.h: priority bits 48-51, successful bit 56);
* Ubuntu Core with a base snap refresh waiting to be tried, and with a try that did not finish
  (snapd boot/modeenv.go ``try_base``/``base_status``, boot/bootstate20.go: "try" boots the try
  base, "trying" falls back to ``base=``), written into ubuntu-data's modeenv with ``debugfs -w``.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from builders import ENV
from replicas import build_replica, replica_manifest
from variants import ExtPut, GptAttrs, derive, partitions

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


UC = "ubuntu-core-24-amd64-installed"
UC_DATA = 5                                 # canonical/pc-gadget gadget-amd64.yaml: ubuntu-data
MODEENV = "/system-data/var/lib/snapd/modeenv"
SNAPS = "/system-data/var/lib/snapd/snaps"


def _ext_file(image: Path, part: int, path: str) -> bytes:
    """A file of an ext4 partition, read with ``debugfs dump``."""
    offset = partitions(image)[part]["offset"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "f"
        subprocess.run(["debugfs", "-R", f"dump {path} {out}", f"{image}?offset={offset}"], check=True,
                       capture_output=True, env=ENV)
        return out.read_bytes()


def _uc_variant(status: str) -> dict:
    """The replica's modeenv plus try_base=core24_512.snap (a copy of the current base snap file
    under the new revision's name) and base_status=<status>."""
    image = build_replica(UC)
    modeenv = _ext_file(image, UC_DATA, MODEENV).decode()
    base = next(line.split("=", 1)[1] for line in modeenv.splitlines() if line.startswith("base="))
    snap = _ext_file(image, UC_DATA, f"{SNAPS}/{base}")
    edits = [ExtPut(UC_DATA, f"{SNAPS}/core24_512.snap", snap),
             ExtPut(UC_DATA, MODEENV, (modeenv + f"try_base=core24_512.snap\nbase_status={status}\n").encode())]
    return {"base": base, "report": scan(str(derive(f"uc-base-{status}", UC, edits)), progress=False)}


@pytest.mark.parametrize("status, boots", [("try", "core24_512.snap"), ("trying", None)])
def test_ubuntu_core_base_refresh(status, boots):
    variant = _uc_variant(status)
    report, base = variant["report"], variant["base"]
    expected = boots or base                              # "trying": the try failed, back to base=
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["source"] == f"/writable{SNAPS}/{expected}"
    assert any(f"base_status={status}" in e["detail"] for e in root["evidence"])
    assert report["distribution"]["base"] == expected
    assert report["update"]["base_status"] == status and report["update"]["try_base"] == "core24_512.snap"
    active = [s["name"] for s in report["update"]["slots"] if s["active"] and s["name"].startswith("core24")]
    assert active == [f"core24 r{expected[len('core24_'):-len('.snap')]}"]
