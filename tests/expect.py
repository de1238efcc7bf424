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


def assert_matches_manifest(report: dict, manifest: dict) -> None:
    """The report says what the replica's spec says it holds. The distribution-specific part of
    ``expect`` (keyed by the distribution name) is compared with ``report["distribution"]``."""
    expect = dict(manifest["expect"])
    dist = manifest["provenance"].get("distribution")
    specific = expect.pop(dist, None) if dist else None
    for slot in (expect.get("update") or {}).get("slots", []):
        slot.setdefault("version", None)
    subset(expect, report)
    if specific is not None:
        subset(specific, report.get("distribution"), "distribution")
