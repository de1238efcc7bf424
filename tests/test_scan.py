"""End to end: `scan` on every shipped form of a real multi-filesystem disk agrees with sfdisk
on the raw form, identifies every partition's content, validates against the JSON schema, and
never changes a byte of its input."""

from __future__ import annotations

import re

import jsonschema
import pytest

from builders import sfdisk_json, sha256_file
from multidisk import DISK_GUID, FORMS, expected_content, multi_disk, multi_disk_form

from immutools.report.model import load_schema
from immutools.scan import scan

SCHEMA = load_schema()

EXPECTED_CONTAINER = {
    "qcow2": "qcow2", "qcow2-compressed": "qcow2", "vmdk-stream": "vmdk", "vhdx": "vhdx", "vhd": "vhd",
}
EXPECTED_COMPRESSION = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "zstd": "zstd", "lz4": "lz4"}


@pytest.fixture(scope="module")
def sfdisk_reference():
    return sfdisk_json(multi_disk())["partitiontable"]


def _sfdisk_attr_bits(text: str | None) -> int:
    """sfdisk prints attributes as 'RequiredPartition LegacyBIOSBootable GUID:48,49,56'."""
    value = 0
    for word in (text or "").split():
        if word == "RequiredPartition":
            value |= 1
        elif word == "NoBlockIOProtocol":
            value |= 2
        elif word == "LegacyBIOSBootable":
            value |= 4
        elif word.startswith("GUID:"):
            for bit in word[5:].split(","):
                value |= 1 << int(bit)
    return value


@pytest.mark.parametrize("form", list(FORMS))
def test_scan_every_form_matches_sfdisk(form, sfdisk_reference):
    path = multi_disk_form(form)
    before = sha256_file(path)
    report = scan(str(path), progress=False)
    assert sha256_file(path) == before, "scan changed its input"
    jsonschema.validate(report, SCHEMA)

    img = report["image"]
    assert img["container"] == EXPECTED_CONTAINER.get(form, "raw")
    assert img["compression"] == EXPECTED_COMPRESSION.get(form)
    assert img["table"] == "gpt"
    assert img["sector_size"] == sfdisk_reference["sectorsize"]
    assert img["disk_guid"] == sfdisk_reference["id"].lower() == DISK_GUID
    assert img["size"] == multi_disk().stat().st_size

    ref = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in sfdisk_reference["partitions"]}
    got = {p["number"]: p for p in report["partitions"]}
    assert sorted(got) == sorted(ref)
    ss = sfdisk_reference["sectorsize"]
    for n, r in ref.items():
        p = got[n]
        assert p["start"] == r["start"] * ss
        assert p["size"] == r["size"] * ss
        assert p["type_guid"] == r["type"].lower()
        assert p["uuid"] == r["uuid"].lower()
        assert p["label"] == r.get("name")
        assert int(p["attributes"]["raw"], 16) == _sfdisk_attr_bits(r.get("attrs"))

    for n, kind in expected_content().items():
        assert got[n]["filesystem"] == kind, (n, got[n]["filesystem"])
    # The ext4 root's os-release was found and named as evidence.
    assert report["os"]["id"] == "sample"
    assert report["os"]["version"] == "1.2.3"
    assert any("os-release" in ev["source"] for ev in report["os"]["evidence"])


def test_scan_reports_attribute_bits():
    report = scan(str(multi_disk()), progress=False)
    parts = {p["number"]: p for p in report["partitions"]}
    assert parts[1]["attributes"]["legacy_bios_bootable"] is True
    a4 = parts[4]["attributes"]
    assert (a4["priority"], a4["tries"], a4["successful"]) == (2, 1, True)
    assert parts[2]["attributes"]["priority"] == 0


def test_scan_reads_metadata_not_whole_partitions():
    report = scan(str(multi_disk()), progress=False, with_stats=True)
    st = report["stats"]
    # Reading metadata only: a small fraction of the (mostly empty, but 600+ MiB) disk.
    assert st["bytes_read"] < 0.02 * st["image_size"], st
    jsonschema.validate(report, SCHEMA)
