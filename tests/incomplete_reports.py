"""Reports that must not be ranked, made from real saved scans by the real completeness check.

``incomplete(report, targets)`` drops mount rows (as an independently built Flatcar image did:
a mount table without ``/`` and ``/usr``) and re-evaluates the completeness section with
``immutools.report.completeness.evaluate`` against the distribution's own guarantees
(``data/distributions/<id>.yaml``), exactly as a scan does. ``as_form`` relabels a report as read
from another container/compression (the same image in another form).
"""

from __future__ import annotations

import copy

from immutools.knowledge import load_distribution
from immutools.report.completeness import evaluate, warnings_for


def incomplete(report: dict, targets=("/", "/usr"), spec: str | None = None) -> dict:
    r = copy.deepcopy(report)
    r["mounts"] = [m for m in r["mounts"] if m.get("target") not in targets]
    knowledge = load_distribution(r["completeness"]["distribution"])
    comp = evaluate(r, knowledge)
    r["completeness"] = comp.to_report()
    r["warnings"] = [w for w in r.get("warnings", []) if not w.startswith("completeness:")] + warnings_for(comp)
    if spec:
        r["image"]["provenance"]["spec"] = spec
    assert r["completeness"]["status"] == "incomplete", r["completeness"]
    return r


def as_form(report: dict, container: str = "raw", compression: str | None = "lz4") -> dict:
    r = copy.deepcopy(report)
    r["image"]["container"], r["image"]["compression"] = container, compression
    return r
