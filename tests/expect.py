"""Comparing a scan report with a replica manifest's ``expect`` section."""

from __future__ import annotations


def subset(expected, actual, where="report"):
    """Every key of ``expected`` has the same value in ``actual`` (lists of mappings element-wise)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            subset(value, actual.get(key), f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            subset(e, a, f"{where}[{i}]")
    elif isinstance(expected, str) and isinstance(actual, int) and not isinstance(actual, bool):
        # Spec templates render computed numbers ("{{computed...}}") as text.
        assert str(actual) == expected, f"{where}: expected {expected!r}, got {actual!r}"
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"


REPORT_SECTIONS = {"schema_version", "tool", "image", "os", "partitions", "mounts", "paths", "update",
                   "integrity", "surface", "distribution", "warnings"}


def assert_matches_manifest(report: dict, manifest: dict) -> None:
    """The report says what the replica's spec says it holds. A key of ``expect`` that is not a
    report section (``flatcar:``, ``ostree:``, ``debian:`` ...) is the distribution-specific part and
    is compared with ``report["distribution"]``."""
    expect = dict(manifest["expect"])
    specific = {k: expect.pop(k) for k in list(expect) if k not in REPORT_SECTIONS}
    for slot in (expect.get("update") or {}).get("slots", []):
        slot.setdefault("version", None)
    subset(expect, report)
    for key, part in specific.items():
        subset(part, report.get("distribution"), f"distribution ({key})")
