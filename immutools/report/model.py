"""The scan report: typed sections that collectors fill, serialised once into JSON-able dicts.

The JSON form is a public interface (``report.schema.json`` beside this file); field names only
ever get added, never renamed. Every fact row carries ``evidence`` (where it came from) and, where
it can be inferred rather than seen, ``observed``.

A collector fills one ``Findings`` incrementally (``os``, ``mounts``, ``paths``, ``update``,
``integrity``, ``surface``, ``distribution``); the scan serialises whatever is there, so a collector
that stops half-way still leaves the sections it finished. ``tests/test_report_model.py`` checks
these dataclasses against the schema, field by field.

This module sits below the system layer (``immutools.system`` imports ``evidence`` from here), so
it imports nothing from it: the mount table and the surface inventory are held as objects that
know how to serialise themselves (``to_report()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Protocol

SCHEMA_VERSION = 1

PERSISTENCE = ("image", "persistent", "volatile")
PATH_STATES = ("read-only", "volatile", "persistent")
FACT_STATES = ("observed", "inferred", "missing")

# The standard top-level paths every report states (plus every mount target).
STANDARD_PATHS = ("/", "/etc", "/usr", "/var", "/opt", "/home", "/root", "/srv", "/tmp", "/boot", "/run", "/mnt", "/media")


def evidence(source: str, detail: str | None = None, observed: bool = True) -> dict:
    """One piece of evidence: ``source`` says where (``partition 3 (USR-A): /lib/os-release``)."""
    ev = {"source": source, "observed": observed}
    if detail:
        ev["detail"] = detail
    return ev


class Reportable(Protocol):
    def to_report(self) -> Any: ...


def _serialise(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "to_report"):
        return value.to_report()
    if isinstance(value, list):
        return [_serialise(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# os
# ------------------------------------------------------------------------------------------------
@dataclass
class OsIdentity:
    """``report["os"]``: what the image is. ``extra`` holds collector-specific keys (``role``, ...)."""

    id: str | None = None
    name: str | None = None
    version: str | None = None
    variant: str | None = None
    arch: str | None = None
    pretty_name: str | None = None
    build_id: str | None = None
    evidence: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_os_release(cls, parsed: dict | None, where: dict | None = None, **extra) -> "OsIdentity":
        """From a parsed os-release. A version comes from ``VERSION_ID``, else ``VERSION``, else
        ``IMAGE_VERSION`` (images built by mkosi/systemd-repart often carry only that; os-release(5))."""
        parsed = parsed or {}
        version = parsed.get("VERSION_ID") or parsed.get("VERSION") or parsed.get("IMAGE_VERSION")
        ident = cls(
            id=parsed.get("ID"),
            name=parsed.get("NAME") or parsed.get("PRETTY_NAME"),
            version=version,
            variant=parsed.get("VARIANT_ID"),
            pretty_name=parsed.get("PRETTY_NAME"),
            build_id=parsed.get("BUILD_ID"),
            evidence=[where] if where else [],
            extra=dict(extra),
        )
        if version and not (parsed.get("VERSION_ID") or parsed.get("VERSION")):
            ident.extra["version_source"] = "IMAGE_VERSION"
        return ident

    def add_evidence(self, *items: dict | None) -> None:
        for ev in items:
            if ev and ev not in self.evidence:
                self.evidence.append(ev)

    def to_report(self) -> dict:
        row = {
            "id": self.id, "name": self.name, "version": self.version, "variant": self.variant, "arch": self.arch,
            "pretty_name": self.pretty_name, "build_id": self.build_id, "evidence": list(self.evidence),
        }
        row.update(self.extra)
        return row


# ------------------------------------------------------------------------------------------------
# update
# ------------------------------------------------------------------------------------------------
@dataclass
class UpdateSlot:
    """One A/B slot (a partition set, a boot entry, a deployment)."""

    name: str
    partitions: list = field(default_factory=list)
    version: str | None = None
    active: bool = False
    priority: int | None = None
    tries: int | None = None
    successful: bool | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_attributes(cls, name: str, partitions: list, attributes: dict | None, version: str | None,
                        active: bool, **extra) -> "UpdateSlot":
        """A slot whose state is a partition's GPT priority/tries/successful bits."""
        attrs = attributes or {}
        return cls(name, list(partitions), version, active, attrs.get("priority"), attrs.get("tries"),
                   attrs.get("successful"), dict(extra))

    def to_report(self) -> dict:
        row = {"name": self.name, "partitions": list(self.partitions), "version": self.version, "active": self.active,
               "priority": self.priority, "tries": self.tries, "successful": self.successful}
        row.update(self.extra)
        return row


@dataclass
class Update:
    """``report["update"]``: how the system changes itself."""

    mechanism: str = "unknown"
    agent: str | None = None
    channel: str | None = None
    server: str | None = None
    active_slot: str | None = None
    slots: list[UpdateSlot | dict] = field(default_factory=list)
    rollback: str | None = None
    evidence: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_report(self) -> dict:
        row = {"mechanism": self.mechanism, "agent": self.agent, "channel": self.channel, "server": self.server,
               "active_slot": self.active_slot, "slots": [_serialise(s) for s in self.slots],
               "rollback": self.rollback, "evidence": list(self.evidence)}
        row.update(self.extra)
        return row


# ------------------------------------------------------------------------------------------------
# integrity
# ------------------------------------------------------------------------------------------------
@dataclass
class Integrity:
    """``report["integrity"]``: what protects the OS content (dm-verity, signatures). ``targets``
    are what ``immutools verify`` checks (data/hash partitions, offsets, the expected root hash)."""

    verity: bool = False
    root_hash: str | None = None
    hash_location: str | None = None
    verified: bool | None = None
    evidence: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def none(cls, *why: dict) -> "Integrity":
        """No block-level integrity protection (a plain writable filesystem holds the OS)."""
        return cls(evidence=[ev for ev in why if ev])

    def to_report(self) -> dict:
        row = {"verity": self.verity, "root_hash": self.root_hash, "hash_location": self.hash_location,
               "verified": self.verified, "evidence": list(self.evidence), "targets": list(self.targets)}
        row.update(self.extra)
        return row


# ------------------------------------------------------------------------------------------------
# completeness: the facts the distribution's documentation guarantees, and how each was found
# ------------------------------------------------------------------------------------------------
@dataclass
class FactStatus:
    fact: str                     # "mount /usr", "path /var", "os.version", "integrity.root_hash" ...
    status: str                   # observed | inferred | missing
    reason: str | None = None
    documented_by: str | None = None
    evidence: list[dict] = field(default_factory=list)

    def to_report(self) -> dict:
        return {"fact": self.fact, "status": self.status, "reason": self.reason,
                "documented_by": self.documented_by, "evidence": list(self.evidence)}


@dataclass
class Completeness:
    """``report["completeness"]``: each guaranteed fact ``observed`` (seen in the image),
    ``inferred`` (the documented default, because the image did not say) or ``missing``."""

    distribution: str | None
    facts: list[FactStatus] = field(default_factory=list)
    distribution_name: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for f in self.facts if f.status == status)

    @property
    def status(self) -> str:
        if self.distribution is None:
            return "unknown"
        if self.count("missing"):
            return "incomplete"
        return "complete"

    def to_report(self) -> dict:
        return {
            "status": self.status,
            "distribution": self.distribution,
            "distribution_name": self.distribution_name,
            "expected": len(self.facts),
            "observed": self.count("observed"),
            "inferred": self.count("inferred"),
            "missing": self.count("missing"),
            "facts": [f.to_report() for f in self.facts],
        }


# ------------------------------------------------------------------------------------------------
# everything a collector found
# ------------------------------------------------------------------------------------------------
@dataclass
class Findings:
    """What a collector learned about an image, filled section by section.

    ``mounts`` is an ``immutools.system.mounts.MountTable`` (or a list of rows), ``paths`` a list
    of ``PathState`` rows, ``surface`` the inventory's report (``Surface.to_report()`` plus the
    collector's additions). ``explanations`` say why a guaranteed fact could not be seen (keyed by
    the fact's name), for the completeness section.
    """

    os: OsIdentity = field(default_factory=OsIdentity)
    mounts: Reportable | list | None = None
    paths: list | None = None
    update: Update | None = None
    integrity: Integrity | None = None
    surface: Reportable | dict | None = None
    distribution: dict | None = None
    explanations: dict[str, str] = field(default_factory=dict)

    SECTIONS = ("os", "mounts", "paths", "update", "integrity", "surface", "distribution")

    def explain(self, fact: str, reason: str) -> None:
        """Record why ``fact`` is missing or inferred (first reason wins: it is the cause)."""
        self.explanations.setdefault(fact, reason)

    def to_sections(self) -> dict:
        """The report sections this collector produced (absent ones are left out)."""
        out = {}
        for name in self.SECTIONS:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = _serialise(value)
        return out


def model_fields(cls) -> list[str]:
    """Serialised field names of a section dataclass (``extra`` merges into the row)."""
    return [f.name for f in fields(cls) if f.name != "extra"]


def empty_report() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": None,
        "image": None,
        "os": OsIdentity().to_report(),
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
