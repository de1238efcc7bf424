"""The mutable end of the spectrum and the fallback for unknown systems.

* The Debian 12 genericcloud replica must read as a traditional system: every path persistent, a
  package manager (dpkg + apt) present, update mechanism ``package-manager``, no atomicity.
* An image no specific collector knows (a synthetic Alpine-style MBR disk, tests/specs/) still gets
  a generic report: os-release identity, /etc/fstab mounts resolved to partitions, the surface.

Expected values come from the specs' ``expect:`` sections; mount sources are checked against the
partition table blkid and sfdisk read (reference tools on the same image).
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from builders import run, sfdisk_json
from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest

from immutools.report.model import load_schema
from immutools.scan import scan

SCHEMA = load_schema()
GENERIC_SPEC = Path(__file__).parent / "specs" / "generic-alpine-like-mbr.yaml"


@pytest.fixture(scope="module")
def debian():
    path = build_replica("debian-12-amd64-genericcloud")
    return path, scan(str(path), progress=False), replica_manifest("debian-12-amd64-genericcloud")


@pytest.fixture(scope="module")
def generic():
    path = build_replica(GENERIC_SPEC)
    return path, scan(str(path), progress=False), replica_manifest(GENERIC_SPEC)


def test_debian_matches_spec(debian):
    _path, report, manifest = debian
    jsonschema.validate(report, SCHEMA)
    assert_matches_manifest(report, manifest)
    assert report["os"]["collector"] == "debian"


def test_debian_is_mutable_everywhere(debian):
    _path, report, _manifest = debian
    paths = {p["path"]: p for p in report["paths"]}
    for p in ("/", "/etc", "/usr", "/var", "/home", "/opt", "/root", "/srv", "/tmp", "/boot", "/boot/efi"):
        assert paths[p]["state"] == "persistent", (p, paths[p])
    assert paths["/run"]["state"] == "volatile"
    assert all(m["access"] == "rw" for m in report["mounts"])
    update = report["update"]
    assert update["mechanism"] == "package-manager" and update["atomic"] is False
    assert "dpkg" in update["package_managers"]
    assert {"apt", "dpkg"} <= set(report["surface"]["package_managers"])
    assert report["surface"]["sshd"] and report["surface"]["sshd_enabled"]


def test_debian_mounts_resolve_to_the_partitions_blkid_sees(debian):
    """fstab's PARTUUID= and UUID= lines land on the partitions sfdisk and blkid name that way."""
    path, report, _manifest = debian
    table = sfdisk_json(path)["partitiontable"]
    by_uuid = {p["uuid"].lower(): int(re.search(r"(\d+)$", p["node"]).group(1)) for p in table["partitions"]}
    mounts = {m["target"]: m for m in report["mounts"]}
    root_src = mounts["/"]["source"]
    assert root_src.startswith("PARTUUID=")
    parts = {p["number"]: p for p in report["partitions"]}
    root_part = next(n for n, p in parts.items() if (p["uuid"] or "").lower() == root_src.split("=", 1)[1].lower())
    assert root_part == 1 and by_uuid[root_src.split("=", 1)[1].lower()] == 1
    esp = parts[15]
    esp_uuid = run(["blkid", "-p", "-o", "value", "-s", "UUID", "--offset", str(esp["start"]), str(path)]).stdout.decode().strip()
    assert mounts["/boot/efi"]["source"] == f"UUID={esp_uuid}"
    assert any("partition 15" in e["source"] for e in mounts["/boot/efi"]["evidence"])
    assert [p["number"] for p in report["partitions"]] == [1, 14, 15]


def test_generic_fallback_reports_an_unknown_linux(generic):
    _path, report, manifest = generic
    jsonschema.validate(report, SCHEMA)
    assert_matches_manifest(report, manifest)
    assert report["os"]["collector"] == "generic"
    assert report["os"]["id"] == "alpine" and report["os"]["name"] == "Alpine Linux"
    mounts = {m["target"]: m for m in report["mounts"]}
    assert set(mounts) >= {"/", "/boot", "/tmp", "/run"}
    assert mounts["/tmp"]["fstype"] == "tmpfs" and mounts["/tmp"]["observed"] is True
    assert any("partition 1" in e["source"] for e in mounts["/boot"]["evidence"])
    assert any("partition 3" in e["source"] for e in mounts["/"]["evidence"])
    paths = {p["path"]: p for p in report["paths"]}
    assert paths["/tmp"]["state"] == "volatile" and paths["/etc"]["state"] == "persistent"
    surface = report["surface"]
    assert "apk" in surface["package_managers"]
    assert surface["init"] == "busybox"
    assert "/bin/bbsuid" in surface["setuid"]
    assert report["update"]["package_managers"] == ["apk"]
    assert report["distribution"]["root"]["partition"] == 3
