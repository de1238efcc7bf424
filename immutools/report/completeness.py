"""The completeness contract: which facts a distribution's documentation guarantees, and whether a
report has each one -- ``observed`` in the image, ``inferred`` from the documented behaviour, or
``missing`` -- with the reason.

Each ``data/distributions/<id>.yaml`` declares, under ``guarantees``, the facts its documentation
says every installed system has::

    guarantees:
      documented_by: https://...               # the default reference for the facts below
      facts:
        - fact: mount /usr                     # a row of the mount table with this target
          versions: {from: "3535"}             # only for these releases (os.version), optional
          default: {target: /usr, source: /dev/mapper/usr, fstype: btrfs, options: [ro], ...}
          documented_by: https://...           # overrides the default reference
        - fact: path /var                      # a row of the path table
        - fact: os.version                     # a report value, by dotted path (os, update,
        - fact: integrity.root_hash            #   integrity, surface): present and not empty
      roles:                                   # images of another os.role (a separate data disk)
        data-disk: {documented_by: ..., facts: [...]}

A mount fact with a ``default`` is filled by ``immutools.system.compose.finish`` when the image
did not describe it (then it is ``inferred`` and a warning says why). ``evaluate`` works on the
serialised report, so it applies to saved reports as well as to live scans.
"""

from __future__ import annotations

import re

from immutools.report.model import Completeness, FactStatus

_VERSION_NUMBERS = re.compile(r"\d+")


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    """``v1.9.5`` -> (1, 9, 5); ``4593.2.0`` -> (4593, 2, 0); None when it has no number."""
    if not version:
        return None
    numbers = _VERSION_NUMBERS.findall(str(version))
    return tuple(int(n) for n in numbers[:4]) if numbers else None


def applies(fact: dict, version: str | None) -> bool:
    """Whether a guarantee covers a release. A fact limited to some releases does not apply when
    the release is unknown: nothing can be claimed for it."""
    span = fact.get("versions")
    if not span:
        return True
    have = version_tuple(version)
    if have is None:
        return False
    lo, hi = version_tuple(str(span.get("from"))) if span.get("from") else None, \
        version_tuple(str(span.get("until"))) if span.get("until") else None
    if lo is not None and have[:len(lo)] < lo:
        return False
    if hi is not None and have[:len(hi)] > hi:
        return False
    return True


def guaranteed_facts(knowledge: dict | None, version: str | None, role: str | None = None) -> list[dict]:
    """The facts guaranteed for ``version``. An image of another role than an installed system
    (``os.role``, e.g. Bottlerocket's separate data image) uses the block of that role in
    ``guarantees.roles`` when there is one."""
    block = (knowledge or {}).get("guarantees") or {}
    if role and role in (block.get("roles") or {}):
        block = block["roles"][role]
    default_ref = block.get("documented_by")
    out = []
    for fact in block.get("facts", []):
        if applies(fact, version):
            out.append(fact | {"documented_by": fact.get("documented_by", default_ref)})
    return out


def applicable_mount_defaults(knowledge: dict | None, version: str | None, role: str | None = None) -> list[tuple[str, dict, str]]:
    """(fact name, default mount, reference) of every guaranteed mount with a documented default."""
    return [(f["fact"], f["default"], f["documented_by"]) for f in guaranteed_facts(knowledge, version, role)
            if f["fact"].startswith("mount ") and f.get("default")]


def _value(report: dict, dotted: str):
    node = report
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _mount_status(report: dict, target: str) -> tuple[str, list[dict]]:
    row = next((m for m in report.get("mounts") or [] if m.get("target") == target), None)
    if row is None:
        return "missing", []
    return ("observed" if row.get("observed", True) else "inferred"), list(row.get("evidence") or [])[:3]


def _path_status(report: dict, path: str) -> tuple[str, list[dict]]:
    row = next((p for p in report.get("paths") or [] if p.get("path") == path), None)
    if row is None:
        return "missing", []
    via = next((m for m in report.get("mounts") or [] if m.get("target") == row.get("via")), None)
    observed = via is not None and via.get("observed", True)
    return ("observed" if observed else "inferred"), list(row.get("evidence") or [])[:3]


def _reason(status: str, fact: str, explanations: dict, report: dict) -> str | None:
    if status == "observed":
        return None
    if fact in explanations:
        return explanations[fact]
    if status == "inferred":
        row = None
        if fact.startswith("mount "):
            row = next((m for m in report.get("mounts") or [] if m.get("target") == fact[6:]), None)
        elif fact.startswith("path "):
            prow = next((p for p in report.get("paths") or [] if p.get("path") == fact[5:]), None)
            row = next((m for m in report.get("mounts") or [] if prow and m.get("target") == prow.get("via")), None)
        detail = next((e.get("detail") for e in (row or {}).get("evidence", []) if not e.get("observed", True)), None)
        return detail or "set up by the OS at run time, not described in the image"
    return "not found in the image"


def evaluate(report: dict, knowledge: dict | None, explanations: dict | None = None) -> Completeness:
    """Each guaranteed fact of ``knowledge`` (a distribution file) checked against ``report``."""
    explanations = explanations or {}
    version = (report.get("os") or {}).get("version")
    role = (report.get("os") or {}).get("role")
    result = Completeness(knowledge.get("id") if knowledge else None,
                          distribution_name=knowledge.get("name") if knowledge else None)
    for fact in guaranteed_facts(knowledge, version, role):
        name = fact["fact"]
        if name.startswith("mount "):
            status, ev = _mount_status(report, name[len("mount "):])
        elif name.startswith("path "):
            status, ev = _path_status(report, name[len("path "):])
        else:
            value = _value(report, name)
            status = "observed" if value not in (None, "", [], {}, False) else "missing"
            section = report.get(name.split(".", 1)[0])
            ev = list(section.get("evidence") or [])[:2] if isinstance(section, dict) and status == "observed" else []
        result.facts.append(FactStatus(name, status, _reason(status, name, explanations, report),
                                       fact.get("documented_by"), ev))
    return result


def warnings_for(completeness: Completeness) -> list[str]:
    """A warning per missing fact, and one naming every inferred fact with its reason."""
    out = [f"completeness: {f.fact} is missing: {f.reason}" for f in completeness.facts if f.status == "missing"]
    inferred = [f for f in completeness.facts if f.status == "inferred"]
    if inferred:
        out.append(f"completeness: {len(inferred)} of {len(completeness.facts)} guaranteed facts are inferred from the "
                   "documented behaviour, not seen in the image: "
                   + "; ".join(f"{f.fact} ({f.reason})" for f in inferred))
    return out
