"""Never a silent gap: the completeness contract on every replica, documented fallbacks with a
warning on damaged images, and unrecognised content explained.

Damaged images are copies of replicas changed with real tools (mtools on the ESP, a zeroed
superblock magic at the offset ``sfdisk --json`` gives), so what is tested is what a user with a
damaged or unusual image meets.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from builders import run
from replicas import build_replica

from immutools.knowledge import load_distribution
from immutools.replica.spec import list_specs
from immutools.report.completeness import applies, evaluate, guaranteed_facts, version_tuple
from immutools.report.model import load_schema
from immutools.scan import scan

CONCRETE_SPECS = sorted(s.name for s in list_specs() if not s.abstract)


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


def _partition(image: Path, number: int) -> dict:
    table = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    return next(p for p in table["partitions"] if p["node"].endswith(str(number)))


@pytest.mark.parametrize("name", CONCRETE_SPECS)
def test_every_replica_is_complete(name):
    """Every guaranteed fact of a healthy replica is in its report, observed or (where the OS sets it
    up in code) inferred; the report validates against the schema with the completeness section."""
    report = scan(str(build_replica(name)), progress=False)
    jsonschema.validate(report, load_schema())
    completeness = report["completeness"]
    missing = [f for f in completeness["facts"] if f["status"] == "missing"]
    assert not missing, missing
    if report["os"].get("collector") not in (None, "generic"):
        assert completeness["status"] == "complete"
        assert completeness["expected"] > 0
    for fact in completeness["facts"]:
        if fact["status"] == "inferred":
            assert fact["reason"], fact
            assert any(fact["fact"] in w for w in report["warnings"]), (fact, report["warnings"])


def test_flatcar_without_grub_cfg_falls_back_to_documented_defaults(tmp_path):
    """grub.cfg.tar removed from the ESP (mdel): / and /usr come from the documented defaults,
    marked inferred, with warnings naming the reason -- not a mount table without them."""
    image = _copy(build_replica("flatcar-stable-4593-amd64-pristine"), tmp_path / "flatcar.bin")
    esp = _partition(image, 1)
    run(["mdel", "-i", f"{image}@@{esp['start'] * 512}", "::flatcar/grub/grub.cfg.tar"])
    report = scan(str(image), progress=False)
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/"]["observed"] is False and mounts["/"]["source"] == "LABEL=ROOT"
    assert mounts["/"]["fstype"] == "ext4"                       # from the ROOT partition itself
    assert mounts["/usr"]["observed"] is False and mounts["/usr"]["integrity"] == "dm-verity"
    assert mounts["/usr"]["access"] == "ro"
    states = {p["path"]: p["state"] for p in report["paths"]}
    assert states["/usr"] == "read-only" and states["/var"] == "persistent"
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert facts["mount /"]["status"] == "inferred"
    assert "grub.cfg.tar not found" in facts["mount /"]["reason"]
    assert any("mount /usr: not found in the image" in w and "grub.cfg.tar not found" in w for w in report["warnings"])


def test_damaged_root_superblock_is_explained(tmp_path):
    """A Debian image whose root ext4 magic is zeroed: no OS, and warnings saying what was looked
    for and where -- never 'OS unknown' with no word."""
    image = _copy(build_replica("debian-12-amd64-genericcloud"), tmp_path / "debian.raw")
    root = _partition(image, 1)
    with open(image, "r+b") as f:
        f.seek(root["start"] * 512 + 1024 + 0x38)        # s_magic (linux fs/ext4/ext4.h)
        f.write(b"\0\0")
    report = scan(str(image), progress=False)
    assert report["os"]["id"] is None
    assert any(w.startswith("partition 1:") and "no known signature" in w for w in report["warnings"])
    assert any("no collector recognised an operating system" in w for w in report["warnings"])
    assert report["completeness"]["status"] == "unknown"


def test_guarantee_versions_and_defaults():
    flatcar = load_distribution("flatcar")
    assert version_tuple("v1.9.5") == (1, 9, 5) and version_tuple("4593.2.0") == (4593, 2, 0)
    assert version_tuple(None) is None and version_tuple("rolling") is None
    etc = next(f for f in flatcar["guarantees"]["facts"] if f["fact"] == "mount /etc")
    assert applies(etc, "3602.2.0") and applies(etc, "4628.0.0") and not applies(etc, "3227.2.4")
    assert not applies(etc, None)                 # a release-bound fact cannot be claimed blind
    names = [f["fact"] for f in guaranteed_facts(flatcar, "3227.2.4")]
    assert "mount /etc" not in names and "mount /usr" in names


def test_evaluate_on_a_saved_report():
    """The contract works on saved reports too (no image needed)."""
    report = {"os": {"version": "4593.2.0", "evidence": []}, "mounts": [
        {"target": "/", "observed": True, "evidence": []},
        {"target": "/usr", "observed": False, "evidence": [{"source": "x", "observed": False, "detail": "doc"}]}],
        "paths": [], "update": {"active_slot": "A", "evidence": []}, "integrity": {"root_hash": None}}
    result = evaluate(report, load_distribution("flatcar"), {"integrity.root_hash": "kernel unreadable"})
    status = {f.fact: f.status for f in result.facts}
    assert status["mount /"] == "observed" and status["mount /usr"] == "inferred"
    assert status["mount /tmp"] == "missing" and status["path /var"] == "missing"
    assert next(f for f in result.facts if f.fact == "integrity.root_hash").reason == "kernel unreadable"
    assert result.status == "incomplete"
