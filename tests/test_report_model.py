"""The typed report model and the JSON Schema describe the same contract: every field the model
serialises is a property the schema documents, and every key the schema requires is produced."""

from __future__ import annotations

import pytest

from immutools.report.model import (
    Completeness, FactStatus, Findings, Integrity, OsIdentity, Update, UpdateSlot, load_schema, model_fields,
)

SCHEMA = load_schema()


def _section(*path: str) -> dict:
    node = SCHEMA["properties"]
    for i, key in enumerate(path):
        node = node[key]
        if i + 1 < len(path):
            node = node.get("properties") or node["items"]["properties"]
    return node


CASES = [
    (OsIdentity, OsIdentity(), ("os",)),
    (Update, Update(), ("update",)),
    (UpdateSlot, UpdateSlot("A"), ("update", "slots")),
    (Integrity, Integrity.none(), ("integrity",)),
    (Completeness, Completeness("flatcar"), ("completeness",)),
    (FactStatus, FactStatus("mount /", "observed"), ("completeness", "facts")),
]


@pytest.mark.parametrize("cls,instance,path", CASES, ids=[c[0].__name__ for c in CASES])
def test_model_and_schema_agree(cls, instance, path):
    section = _section(*path)
    if section.get("type") == "array":
        section = section["items"]
    props, required = section["properties"], section.get("required", [])
    row = instance.to_report()
    assert set(required) <= set(row), f"{cls.__name__} lacks schema-required keys {set(required) - set(row)}"
    if cls is not Completeness:                      # its counts are derived properties, not fields
        undocumented = set(model_fields(cls)) - set(props)
        assert not undocumented, f"{cls.__name__} serialises {undocumented}, which the schema does not document"
    for key in row:
        assert key in props, f"{cls.__name__}.to_report() key {key!r} is not in the schema"


def test_findings_sections_are_report_sections():
    assert set(Findings.SECTIONS) - {"distribution"} <= set(SCHEMA["properties"])
    assert "completeness" in SCHEMA["properties"]


def test_extra_keys_merge_and_absent_sections_stay_absent():
    findings = Findings()
    findings.os = OsIdentity(id="x", extra={"role": "os-disk"})
    sections = findings.to_sections()
    assert sections == {"os": findings.os.to_report()} and sections["os"]["role"] == "os-disk"
    assert Integrity.none().to_report()["verity"] is False
