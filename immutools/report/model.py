"""The scan report: plain JSON-able dicts, one builder per section, and the schema version.

The JSON form is a public interface (``report.schema.json`` beside this file); field names only
ever get added, never renamed. Every fact row carries ``evidence`` (where it came from) and, where
it can be inferred rather than seen, ``observed``.
"""

from __future__ import annotations

import json
from importlib import resources

SCHEMA_VERSION = 1

PERSISTENCE = ("image", "persistent", "volatile")
PATH_STATES = ("read-only", "volatile", "persistent")

# The standard top-level paths every report states (plus every mount target).
STANDARD_PATHS = ("/", "/etc", "/usr", "/var", "/opt", "/home", "/root", "/srv", "/tmp", "/boot", "/run", "/mnt", "/media")


def evidence(source: str, detail: str | None = None, observed: bool = True) -> dict:
    """One piece of evidence: ``source`` says where (``partition 3 (USR-A): /lib/os-release``)."""
    ev = {"source": source, "observed": observed}
    if detail:
        ev["detail"] = detail
    return ev


def empty_report() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": None,
        "image": None,
        "os": {"id": None, "name": None, "version": None, "variant": None, "arch": None, "evidence": []},
        "partitions": [],
        "mounts": [],
        "paths": [],
        "update": None,
        "integrity": None,
        "surface": None,
        "warnings": [],
    }


def load_schema() -> dict:
    return json.loads(resources.files("immutools.report").joinpath("report.schema.json").read_text())
