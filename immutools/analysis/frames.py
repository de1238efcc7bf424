"""Scan reports as tidy pandas DataFrames: one row per observation, stable column names.

    from immutools import frames
    f = frames.load()                      # the bundled replica reports (data/reports/*.json)
    f = frames.load(["a.json", "disk.raw", "folder/"])
    f.images, f.partitions, f.mounts, f.paths, f.surface, f.update_slots, f.completeness, f.scores, f.ranking

Every frame starts with the ``image`` column (the image id, a categorical in load order) and is
documented column by column in its builder's docstring and in ``docs/frames.md``. Columns whose
values come from a fixed vocabulary (the report schema's enums, the rubric's dimensions) are
categoricals whose categories are that vocabulary, plus any value a newer report adds; open
vocabularies (filesystem types, roles) are categoricals of the values seen. ``evidence`` columns
hold the report's evidence lists (dicts with ``source``, ``detail``, ``observed``), and
``evidence_text`` the same as one readable string.

Completeness: ``images`` says per image whether the report has every fact its distribution's
documentation guarantees (``completeness``, ``facts_missing``...), ``completeness`` lists each
fact, and ``ranking`` gives the overall score a rank only where the image is comparable (every
rubric dimension scored, nothing missing; see ``immutools.analysis.ranking``).

Building frames from saved reports reads JSON only: no image is opened, no ``dissect`` module is
imported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from immutools.analysis.loading import LoadedReport, LoadResult, as_dict, as_list, entries, load_reports
from immutools.analysis.ranking import COMPLETENESS_STATES, completeness_of, distribution_name, standings
from immutools.analysis.rubric import load_rubric
from immutools.report.model import STANDARD_PATHS, load_schema

__all__ = [
    "Frames", "load", "frames_from", "images_frame", "partitions_frame", "mounts_frame", "paths_frame",
    "surface_frame", "update_slots_frame", "completeness_frame", "scores_frame", "ranking_frame", "evidence_text", "mount_partition", "partition_states",
    "surface_findings", "image_label", "display_name", "RUNTIME_STATES", "SURFACE_KINDS",
]

# Run-time state of a partition, most telling first (see partitions_frame).
RUNTIME_STATES = ("read-only", "volatile", "persistent", "standby slot", "verity hash", "not mounted")
# Kinds of surface findings (see surface_frame).
SURFACE_KINDS = ("shell", "sshd", "ssh_unit", "package_manager", "app_manager", "setuid", "setgid",
                 "sysext", "selinux", "lockdown", "kernel_modules", "init")


@dataclass
class Frames:
    """All frames of a set of reports, built on first access. ``reports`` keeps the inputs."""

    reports: list[LoadedReport]
    warnings: list[str] = field(default_factory=list)
    rubric: object = None       # a Rubric, or None for data/rubric.yaml

    @cached_property
    def images(self) -> pd.DataFrame:
        return images_frame(self.reports)

    @cached_property
    def partitions(self) -> pd.DataFrame:
        return partitions_frame(self.reports)

    @cached_property
    def mounts(self) -> pd.DataFrame:
        return mounts_frame(self.reports)

    @cached_property
    def paths(self) -> pd.DataFrame:
        return paths_frame(self.reports)

    @cached_property
    def surface(self) -> pd.DataFrame:
        return surface_frame(self.reports)

    @cached_property
    def update_slots(self) -> pd.DataFrame:
        return update_slots_frame(self.reports)

    @cached_property
    def completeness(self) -> pd.DataFrame:
        return completeness_frame(self.reports)

    @cached_property
    def scores(self) -> pd.DataFrame:
        return scores_frame(self.reports, self.rubric)

    @cached_property
    def ranking(self) -> pd.DataFrame:
        return ranking_frame(self.reports, self.rubric)

    @property
    def names(self) -> tuple[str, ...]:
        return ("images", "partitions", "mounts", "paths", "surface", "update_slots", "completeness", "scores", "ranking")

    def all(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in self.names}


def load(sources=None, *, rubric=None, scan_images: bool = True, progress: bool | None = False) -> Frames:
    """Load reports (see ``immutools.analysis.loading.load_reports``) and return their ``Frames``.

    ``sources``: ``None`` for the bundled replica reports (``data/reports``), or paths to saved
    ``.json`` reports, images (scanned now) or folders of either, or report dicts.
    ``rubric``: a ``Rubric`` for the ``scores`` frame (default ``data/rubric.yaml``).
    """
    result = load_reports(sources, scan_images=scan_images, progress=progress)
    return Frames(result.reports, result.warnings, rubric)


def frames_from(reports, rubric=None) -> Frames:
    """``Frames`` of already loaded reports (``LoadedReport``s, report dicts, or a ``LoadResult``)."""
    if isinstance(reports, LoadResult):
        return Frames(reports.reports, reports.warnings, rubric)
    return Frames(load_reports(list(reports), scan_images=False).reports, [], rubric)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def evidence_text(evidence) -> str:
    """An evidence list as one line per item: ``source: detail`` (+ `` (inferred)``)."""
    lines = []
    for ev in as_list(evidence):
        if not isinstance(ev, dict):
            continue
        line = str(ev.get("source", "?"))
        if ev.get("detail"):
            line += f": {ev['detail']}"
        if ev.get("observed") is False:
            line += " (inferred)"
        lines.append(line)
    return "\n".join(lines)


def _str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value):
    return value if isinstance(value, bool) else None


_SCHEMA_ENUMS: dict[str, list] | None = None


def _schema_enum(*path: str) -> list:
    """An enum of the report schema (e.g. ``("paths", "state")``), the vocabulary of a column."""
    global _SCHEMA_ENUMS
    if _SCHEMA_ENUMS is None:
        _SCHEMA_ENUMS = {}
    key = "/".join(path)
    if key not in _SCHEMA_ENUMS:
        node = load_schema()
        for part in path:
            node = node.get("properties", {}).get(part) or node.get("items", {}).get("properties", {}).get(part) or {}
        _SCHEMA_ENUMS[key] = [v for v in node.get("enum", []) if v is not None]
    return _SCHEMA_ENUMS[key]


def _categorical(series: pd.Series, vocabulary=None) -> pd.Series:
    """A categorical with ``vocabulary`` first, then any other value seen (never silently NaN)."""
    seen = [v for v in pd.unique(series.dropna())]
    cats = list(vocabulary or [])
    extra = sorted((v for v in seen if v not in cats), key=str)
    return series.astype(pd.CategoricalDtype(cats + extra))


def _finish(rows: list[dict], columns: list[str], loaded: list[LoadedReport], categoricals: dict) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    df["image"] = df["image"].astype(pd.CategoricalDtype([e.image_id for e in loaded]))
    for col, vocab in categoricals.items():
        df[col] = _categorical(df[col].astype(object).where(df[col].notna(), None), vocab)
    return df.reset_index(drop=True)


def _bool_col(df: pd.DataFrame, *cols: str) -> None:
    for col in cols:
        df[col] = df[col].astype("boolean")


def _whole(value):
    # Integer columns holding missing values arrive as floats: keep whole numbers, drop the rest.
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and value.is_integer():
        return int(value)
    return None


def _int_col(df: pd.DataFrame, *cols: str) -> None:
    for col in cols:
        df[col] = pd.array([_whole(v) for v in df[col].astype(object)], dtype="Int64")


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------

IMAGE_COLUMNS = [
    "image", "base_image", "form", "label", "chart_label", "os_id", "os_name", "os_pretty_name", "os_version",
    "os_variant", "arch", "distribution", "collector", "confidence", "completeness", "facts_expected",
    "facts_observed", "facts_inferred", "facts_missing", "missing_facts", "replica", "replica_spec", "replica_release", "replica_description",
    "container", "compression", "table", "sector_size", "size", "file_size", "disk_guid", "partition_count",
    "update_mechanism", "update_agent", "update_channel", "update_server", "update_rollback", "update_reboot_manager",
    "active_slot", "verity", "root_hash", "selinux", "init", "warning_count", "warnings",
    "schema_version", "tool_version", "image_path", "source", "source_kind",
]


def image_label(entry: LoadedReport) -> tuple[str, str]:
    """(one-line label, two-line chart label): the image id, the distribution's name, version, arch,
    ``replica``, and ``INCOMPLETE: n facts missing`` when the report lacks guaranteed facts."""
    report = entry.report
    os_ = as_dict(report.get("os"))
    known = os_.get("id") or os_.get("name") or os_.get("pretty_name")
    bits = [str(x) for x in (display_name(report) if known else None, os_.get("version"), os_.get("arch")) if x]
    second = " ".join(bits) or "unknown OS"
    if entry.replica:
        second += " · replica"
    comp = completeness_of(report)
    if comp.status == "incomplete":
        second += f" · INCOMPLETE: {comp.missing} fact{'s' if comp.missing != 1 else ''} missing"
    return f"{entry.image_id} ({second})", f"{entry.image_id}\n{second}"


_VERSIONISH = re.compile(r"\s*\([^)]*\d[^)]*\)|\s*\(\s*\)")


def display_name(report: dict) -> str:
    """The distribution's name as it spells itself, without the version: ``Flatcar Container
    Linux``, ``Fedora CoreOS``, ``Fedora Linux (Silverblue)``, ``Bottlerocket OS``, ``Talos``.

    The name of the recognised distribution (``data/distributions``) when the report's OS is that
    distribution and has no variant; otherwise os-release ``PRETTY_NAME`` without the version (and
    without a parenthesised part holding digits: codenames with versions, variant strings);
    otherwise ``NAME`` or the OS id."""
    os_ = as_dict(report.get("os"))
    comp = as_dict(report.get("completeness"))
    os_id, name = os_.get("id"), os_.get("name")
    if comp.get("distribution") == os_id and isinstance(comp.get("distribution_name"), str) and not os_.get("variant"):
        return comp["distribution_name"]
    pretty, version = os_.get("pretty_name"), os_.get("version")
    if isinstance(pretty, str) and isinstance(name, str) and name and pretty.split()[:1] == name.split()[:1]:
        if isinstance(version, str) and version:
            pretty = pretty.replace(version, "")
        pretty = " ".join(_VERSIONISH.sub("", pretty).split())
        if pretty:
            return pretty
    if isinstance(name, str) and name:
        return name
    return distribution_name(report) or (str(os_id) if os_id else "unknown OS")


def images_frame(reports) -> pd.DataFrame:
    """One row per image.

    Columns: ``image`` (id), ``label`` (one line: id, distribution, version, arch, "replica",
    "INCOMPLETE: n facts missing"),
    ``chart_label`` (the same on two lines), ``base_image`` (the id without the form or repeat
    suffix: the same image in several forms shares it), ``form`` (raw, qcow2, lz4, ...),
    ``os_id``, ``os_name``, ``os_pretty_name``, ``os_version``, ``os_variant``, ``arch``
    (categorical, schema vocabulary), ``distribution`` (the distribution's name as it spells
    itself, no version), ``collector``, ``confidence`` (0-1), ``completeness`` (categorical:
    complete / incomplete / unknown, or ``not checked`` for reports without the section),
    ``facts_expected``, ``facts_observed``, ``facts_inferred``, ``facts_missing`` (counts of the
    facts the distribution's documentation guarantees), ``missing_facts`` (list of the missing
    ones), ``replica`` (bool: the image carries a replica provenance record),
    ``replica_spec``, ``replica_release``, ``replica_description``, ``container``,
    ``compression``, ``table`` (categoricals), ``sector_size``, ``size`` (virtual disk bytes),
    ``file_size``, ``disk_guid``, ``partition_count``, ``update_mechanism`` (categorical),
    ``update_agent``, ``update_channel``, ``update_server``, ``update_rollback`` (text),
    ``update_reboot_manager``, ``active_slot``, ``verity`` (bool), ``root_hash``, ``selinux``
    (categorical), ``init``, ``warning_count``, ``warnings`` (list), ``schema_version``,
    ``tool_version``, ``image_path`` (as recorded in the report), ``source`` (the file loaded:
    a .json report or the image), ``source_kind`` (report / image / dict).
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        r = e.report
        img, os_ = as_dict(r.get("image")), as_dict(r.get("os"))
        prov = as_dict(img.get("provenance"))
        upd, integ, surf = as_dict(r.get("update")), as_dict(r.get("integrity")), as_dict(r.get("surface"))
        label, chart_label = image_label(e)
        warnings = [str(w) for w in as_list(r.get("warnings"))]
        comp = completeness_of(r)
        rows.append({
            "image": e.image_id, "base_image": e.base_id, "form": e.form, "label": label, "chart_label": chart_label,
            "os_id": _str(os_.get("id")), "os_name": _str(os_.get("name")), "os_pretty_name": _str(os_.get("pretty_name")),
            "os_version": _str(os_.get("version")), "os_variant": _str(os_.get("variant")), "arch": _str(os_.get("arch")),
            "distribution": display_name(r), "collector": _str(os_.get("collector")),
            "confidence": os_.get("confidence") if isinstance(os_.get("confidence"), (int, float)) else None,
            "completeness": comp.status, "facts_expected": comp.expected, "facts_observed": comp.observed,
            "facts_inferred": comp.inferred, "facts_missing": comp.missing, "missing_facts": comp.missing_facts,
            "replica": e.replica, "replica_spec": _str(prov.get("spec")), "replica_release": _str(prov.get("release")),
            "replica_description": _str(prov.get("description")),
            "container": _str(img.get("container")), "compression": _str(img.get("compression")), "table": _str(img.get("table")),
            "sector_size": _int(img.get("sector_size")), "size": _int(img.get("size")), "file_size": _int(img.get("file_size")),
            "disk_guid": _str(img.get("disk_guid")), "partition_count": len(as_list(r.get("partitions"))),
            "update_mechanism": _str(upd.get("mechanism")), "update_agent": _str(upd.get("agent")),
            "update_channel": _str(upd.get("channel")), "update_server": _str(upd.get("server")),
            "update_rollback": _str(upd.get("rollback")), "update_reboot_manager": _str(upd.get("reboot_manager")),
            "active_slot": _str(upd.get("active_slot")),
            "verity": _bool(integ.get("verity")), "root_hash": _str(integ.get("root_hash")),
            "selinux": _str(surf.get("selinux")), "init": _str(surf.get("init")),
            "warning_count": len(warnings), "warnings": warnings,
            "schema_version": _int(r.get("schema_version")), "tool_version": _str(as_dict(r.get("tool")).get("version")),
            "image_path": _str(img.get("path")), "source": e.source, "source_kind": e.source_kind,
        })
    df = _finish(rows, IMAGE_COLUMNS, loaded, {
        "arch": _schema_enum("os", "arch"), "container": _schema_enum("image", "container"),
        "compression": _schema_enum("image", "compression"), "table": _schema_enum("image", "table"),
        "update_mechanism": _schema_enum("update", "mechanism"), "selinux": _schema_enum("surface", "selinux"),
        "source_kind": ["report", "image", "dict"], "collector": None, "completeness": COMPLETENESS_STATES,
        "form": None,
    })
    _bool_col(df, "replica", "verity")
    _int_col(df, "sector_size", "size", "file_size", "schema_version", "facts_expected", "facts_observed",
             "facts_inferred", "facts_missing")
    df["confidence"] = df["confidence"].astype("Float64")
    return df


# ------------------------------------------------------------------------------------------------
# partitions
# ------------------------------------------------------------------------------------------------

PARTITION_COLUMNS = [
    "image", "number", "label", "type_name", "type_key", "type_guid", "mbr_type", "uuid", "role", "filesystem",
    "filesystem_label", "filesystem_uuid", "filesystem_size", "start", "size", "end", "disk_share",
    "slot", "slot_active", "mounted_at", "state", "priority", "tries", "successful", "evidence", "evidence_text",
]

_PARTITION_EVIDENCE = re.compile(r"^partition (\d+)(?: \(.*\))?$")
_SPEC_PREFIX = {"LABEL": "fs_label", "UUID": "fs_uuid", "PARTUUID": "uuid", "PARTLABEL": "label"}
_BY_DIR = {"by-label": "fs_label", "by-uuid": "fs_uuid", "by-partuuid": "uuid", "by-partlabel": "label"}


def mount_partition(mount: dict, partitions: list[dict]) -> tuple[int | None, str | None]:
    """The partition number a mount row uses, and how that was found.

    A ``partition`` field on the row wins (newer reports); else evidence naming exactly one
    partition (``partition 9 (ROOT)``, as the scan writes when it resolved the source); else the
    source spec (``LABEL=``, ``UUID=``, ``PARTUUID=``, ``PARTLABEL=``, ``/dev/disk/by-*/``) matched
    against the partition table.
    """
    number = _int(mount.get("partition"))
    if number is not None:
        return number, "report"
    for ev in as_list(mount.get("evidence")):
        m = _PARTITION_EVIDENCE.match(str(as_dict(ev).get("source", "")))
        if m:
            return int(m.group(1)), "evidence"
    source = mount.get("source")
    if not isinstance(source, str):
        return None, None
    key = value = None
    if "=" in source and source.split("=", 1)[0] in _SPEC_PREFIX:
        prefix, value = source.split("=", 1)
        key = _SPEC_PREFIX[prefix]
    else:
        m = re.match(r"^/dev/disk/(by-[a-z]+)/(.+)$", source)
        if m and m.group(1) in _BY_DIR:
            key, value = _BY_DIR[m.group(1)], m.group(2)
    if key is None:
        return None, None
    value = value.strip('"')
    for p in partitions:
        have = {"fs_label": p.get("filesystem_label"), "fs_uuid": p.get("filesystem_uuid"),
                "uuid": p.get("uuid"), "label": p.get("label")}[key]
        if isinstance(have, str) and (have == value or (key in ("uuid", "fs_uuid") and have.lower() == value.lower())):
            return _int(p.get("number")), "source"
    return None, None


def _slot_membership(report: dict) -> dict:
    """partition number -> (slot name, active) from ``update.slots``; an active slot wins."""
    out: dict = {}
    for slot in as_list(as_dict(report.get("update")).get("slots")):
        slot = as_dict(slot)
        for part in as_list(slot.get("partitions")):
            number = part if _int(part) is not None else None
            if number is None:
                continue
            active = bool(slot.get("active"))
            if number not in out or (active and not out[number][1]):
                out[number] = (str(slot.get("name")), active)
    return out


def partition_states(report: dict) -> dict:
    """partition number -> (run-time state, mount targets) for one report (see partitions_frame)."""
    parts = [as_dict(p) for p in as_list(report.get("partitions"))]
    mounted: dict = {}
    for m in as_list(report.get("mounts")):
        m = as_dict(m)
        number, _how = mount_partition(m, parts)
        if number is None:
            continue
        if m.get("access") == "ro" or m.get("persistence") == "image":
            state = "read-only"
        elif m.get("persistence") == "volatile":
            state = "volatile"
        else:
            state = "persistent"
        mounted.setdefault(number, []).append((state, str(m.get("target"))))
    slots = _slot_membership(report)
    hashes = set()
    for t in as_list(as_dict(report.get("integrity")).get("targets")):
        t = as_dict(t)
        if _int(t.get("hash_partition")) is not None and t.get("hash_partition") != t.get("partition"):
            hashes.add(t["hash_partition"])
    out = {}
    for p in parts:
        number = _int(p.get("number"))
        if number in mounted:
            states = [s for s, _t in mounted[number]]
            # A partition mounted writable anywhere is writable.
            state = next(s for s in ("persistent", "volatile", "read-only") if s in states)
            out[number] = (state, [t for _s, t in mounted[number]])
        elif number in slots and not slots[number][1]:
            out[number] = ("standby slot", [])
        elif number in hashes:
            out[number] = ("verity hash", [])
        else:
            out[number] = ("not mounted", [])
    return out


def partitions_frame(reports) -> pd.DataFrame:
    """One row per partition table entry.

    Columns: ``image``, ``number``, ``label`` (GPT name), ``type_name``, ``type_key`` (stable
    short id, e.g. ``esp``, ``flatcar-usr``), ``type_guid``, ``mbr_type``, ``uuid`` (partition
    GUID), ``role`` (categorical: esp, usr, root, ...), ``filesystem`` (categorical: what the
    content was identified as), ``filesystem_label``, ``filesystem_uuid``, ``filesystem_size``,
    ``start``, ``size``, ``end`` (bytes; end = start + size), ``disk_share`` (size / disk size),
    ``slot`` (update slot name holding the partition, from ``update.slots``), ``slot_active``
    (bool), ``mounted_at`` (mount targets, comma-separated), ``state`` (run-time state,
    categorical, one of ``RUNTIME_STATES``: ``read-only``/``volatile``/``persistent`` when a mount
    uses it (the most writable use wins), ``standby slot`` for the inactive update slot,
    ``verity hash`` for a separate hash partition, ``not mounted`` otherwise), ``priority``,
    ``tries``, ``successful`` (GPT A/B attribute bits), ``evidence``, ``evidence_text``.
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        r = e.report
        disk = _int(as_dict(r.get("image")).get("size")) or 0
        slots = _slot_membership(r)
        states = partition_states(r)
        for p in as_list(r.get("partitions")):
            p = as_dict(p)
            number = _int(p.get("number"))
            start, size = _int(p.get("start")), _int(p.get("size"))
            attrs = as_dict(p.get("attributes"))
            state, targets = states.get(number, ("not mounted", []))
            slot = slots.get(number)
            rows.append({
                "image": e.image_id, "number": number, "label": _str(p.get("label")), "type_name": _str(p.get("type_name")),
                "type_key": _str(p.get("type_key")), "type_guid": _str(p.get("type_guid")), "mbr_type": _str(p.get("mbr_type")),
                "uuid": _str(p.get("uuid")), "role": _str(p.get("role")), "filesystem": _str(p.get("filesystem")),
                "filesystem_label": _str(p.get("filesystem_label")), "filesystem_uuid": _str(p.get("filesystem_uuid")),
                "filesystem_size": _int(p.get("filesystem_size")), "start": start, "size": size,
                "end": (start + size) if start is not None and size is not None else None,
                "disk_share": (size / disk) if size is not None and disk else None,
                "slot": slot[0] if slot else None, "slot_active": slot[1] if slot else None,
                "mounted_at": ", ".join(targets) or None, "state": state,
                "priority": _int(attrs.get("priority")) if attrs.get("ab_semantics", True) else None,
                "tries": _int(attrs.get("tries")) if attrs.get("ab_semantics", True) else None,
                "successful": _bool(attrs.get("successful")) if attrs.get("ab_semantics", True) else None,
                "evidence": as_list(p.get("evidence")), "evidence_text": evidence_text(p.get("evidence")),
            })
    df = _finish(rows, PARTITION_COLUMNS, loaded, {"role": None, "filesystem": None, "state": RUNTIME_STATES})
    _int_col(df, "number", "filesystem_size", "start", "size", "end", "priority", "tries")
    _bool_col(df, "slot_active", "successful")
    df["disk_share"] = df["disk_share"].astype("Float64")
    return df


# ------------------------------------------------------------------------------------------------
# mounts and paths
# ------------------------------------------------------------------------------------------------

MOUNT_COLUMNS = [
    "image", "target", "source", "fstype", "kind", "access", "persistence", "integrity", "observed", "options",
    "lower", "upper", "work", "partition", "partition_found_by", "evidence", "evidence_text",
]


def mounts_frame(reports) -> pd.DataFrame:
    """One row per mount in the report's mount table (mount order).

    Columns: ``image``, ``target``, ``source``, ``fstype`` (categorical), ``kind`` (categorical:
    block, overlay, tmpfs, bind, ...), ``access`` (ro/rw), ``persistence`` (image / persistent /
    volatile), ``integrity`` (e.g. ``dm-verity``, ``none``), ``observed`` (bool: seen in the image,
    not inferred from documentation), ``options`` (comma-separated), ``lower`` (overlay lower
    dirs, ``:``-separated), ``upper``, ``work``, ``partition`` (number of the partition mounted,
    when known), ``partition_found_by`` (report / evidence / source), ``evidence``,
    ``evidence_text``.
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        parts = [as_dict(p) for p in as_list(e.report.get("partitions"))]
        for m in as_list(e.report.get("mounts")):
            m = as_dict(m)
            number, how = mount_partition(m, parts)
            rows.append({
                "image": e.image_id, "target": _str(m.get("target")), "source": _str(m.get("source")),
                "fstype": _str(m.get("fstype")), "kind": _str(m.get("kind")), "access": _str(m.get("access")),
                "persistence": _str(m.get("persistence")), "integrity": _str(m.get("integrity")),
                "observed": _bool(m.get("observed")),
                "options": ",".join(str(o) for o in as_list(m.get("options"))),
                "lower": ":".join(str(x) for x in as_list(m.get("lower"))) or None,
                "upper": _str(m.get("upper")), "work": _str(m.get("work")),
                "partition": number, "partition_found_by": how,
                "evidence": as_list(m.get("evidence")), "evidence_text": evidence_text(m.get("evidence")),
            })
    df = _finish(rows, MOUNT_COLUMNS, loaded, {
        "fstype": None, "kind": None, "access": _schema_enum("mounts", "access"),
        "persistence": _schema_enum("mounts", "persistence"), "integrity": None,
        "partition_found_by": ["report", "evidence", "source"],
    })
    _bool_col(df, "observed")
    _int_col(df, "partition")
    return df


PATH_COLUMNS = ["image", "path", "standard", "state", "via", "chain", "resolved", "note", "evidence", "evidence_text"]


def paths_frame(reports) -> pd.DataFrame:
    """One row per path the report states (the standard top-level paths plus every mount target).

    Columns: ``image``, ``path``, ``standard`` (bool: one of the standard paths every report
    lists, ``STANDARD_PATHS``), ``state`` (categorical: read-only / volatile / persistent: what
    happens to a write there), ``via`` (the mount that decides), ``chain`` (mounts consulted,
    ``" <- "``-separated, when more than one), ``resolved`` (the path after symlinks, when it
    differs), ``note``, ``evidence``, ``evidence_text``.
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        for p in as_list(e.report.get("paths")):
            p = as_dict(p)
            rows.append({
                "image": e.image_id, "path": _str(p.get("path")), "standard": p.get("path") in STANDARD_PATHS,
                "state": _str(p.get("state")), "via": _str(p.get("via")),
                "chain": " <- ".join(str(c) for c in as_list(p.get("chain"))) or None,
                "resolved": _str(p.get("resolved")), "note": _str(p.get("note")),
                "evidence": as_list(p.get("evidence")), "evidence_text": evidence_text(p.get("evidence")),
            })
    df = _finish(rows, PATH_COLUMNS, loaded, {"state": _schema_enum("paths", "state")})
    _bool_col(df, "standard")
    return df


# ------------------------------------------------------------------------------------------------
# surface
# ------------------------------------------------------------------------------------------------

SURFACE_COLUMNS = ["image", "kind", "item", "detail", "observed", "evidence", "evidence_text"]


def _observed(evidence) -> bool | None:
    evs = [as_dict(ev) for ev in as_list(evidence)]
    if not evs:
        return None
    return any(ev.get("observed") is not False for ev in evs)


def surface_findings(report: dict) -> list[dict]:
    """The surface rows of one report (see surface_frame)."""
    s = as_dict(report.get("surface"))
    if not s:
        return []
    out = []

    def add(kind, item, detail=None, evidence=None):
        ev = as_list(evidence)
        out.append({"kind": kind, "item": _str(item), "detail": detail, "observed": _observed(ev), "evidence": ev})

    detailed = as_list(s.get("shell_details"))
    for row in detailed or [{"path": p} for p in as_list(s.get("shells"))]:
        row = as_dict(row)
        names = [n for n in as_list(row.get("names")) if n != row.get("path")]
        add("shell", row.get("path"), ("also " + ", ".join(map(str, names))) if names else None, row.get("evidence"))
    binaries = as_list(s.get("sshd_binaries"))
    for row in binaries:
        row = as_dict(row)
        add("sshd", row.get("path"), "SSH server binary", row.get("evidence"))
    if not binaries and s.get("sshd") is True:
        add("sshd", "sshd", "SSH server present", [])
    for row in as_list(s.get("sshd_units")):
        row = as_dict(row)
        bits = []
        if row.get("enabled") is not None:
            bits.append("enabled" if row.get("enabled") else "not enabled")
        if row.get("masked"):
            bits.append("masked")
        if row.get("wanted_by"):
            bits.append("wanted by " + ", ".join(map(str, as_list(row.get("wanted_by")))))
        add("ssh_unit", row.get("unit"), "; ".join(bits) or None, row.get("evidence"))
    detailed = as_list(s.get("package_manager_details"))
    for row in detailed or [{"name": n} for n in as_list(s.get("package_managers"))]:
        row = as_dict(row)
        via = row.get("path") or row.get("via") or row.get("database")
        add("package_manager", row.get("name"), _str(via), row.get("evidence"))
    for name in as_list(s.get("app_managers")):
        add("app_manager", name)
    for kind in ("setuid", "setgid"):
        detailed = as_list(s.get(f"{kind}_details"))
        for row in detailed or [{"path": p} for p in as_list(s.get(kind))]:
            row = as_dict(row)
            detail = " ".join(f"{k} {row[k]}" for k in ("mode", "uid", "gid") if row.get(k) is not None) or None
            add(kind, row.get("path"), detail, row.get("evidence"))
    dist = as_dict(report.get("distribution"))
    images = {str(as_dict(x).get("name")): as_dict(x) for x in as_list(dist.get("sysext_images"))}
    for name in as_list(dist.get("sysexts")):
        img = images.get(str(name), {})
        add("sysext", name, _str(img.get("path")), img.get("evidence"))
    if "selinux" in s:
        policy = as_dict(s.get("selinux_policy"))
        detail = policy.get("decided_by")
        add("selinux", s.get("selinux") or "unknown", _str(detail), s.get("selinux_trail"))
    lock = as_dict(s.get("lockdown_details"))
    if s.get("lockdown"):
        add("lockdown", s.get("lockdown"), _str(lock.get("decided_by")), lock.get("evidence"))
    km = as_dict(s.get("kernel_modules"))
    if km:
        count = km.get("count")
        enforced = km.get("signature_enforced")
        detail = "; ".join(x for x in (
            None if km.get("loadable") is None else ("loadable" if km.get("loadable") else "not loadable"),
            None if enforced is None else ("signatures enforced" if enforced else "signatures not enforced"),
            _str(km.get("reason")),
        ) if x)
        add("kernel_modules", f"{count} modules" if count is not None else "modules", detail or None, [])
    init = as_dict(s.get("init_details"))
    if s.get("init") or init.get("name"):
        add("init", s.get("init") or init.get("name"), _str(init.get("decided_by")), init.get("evidence"))
    return out


def surface_frame(reports) -> pd.DataFrame:
    """One row per surface finding: what an intruder or an operator finds to change the system with.

    Columns: ``image``, ``kind`` (categorical, ``SURFACE_KINDS``: ``shell`` (a shell binary on
    the default PATH), ``sshd`` (an SSH server binary), ``ssh_unit`` (a unit that starts it),
    ``package_manager``, ``app_manager`` (flatpak...), ``setuid``, ``setgid`` (files),
    ``sysext`` (system extension images, from the optional ``distribution.sysexts``),
    ``selinux`` (one row: the mode), ``lockdown`` (kernel lockdown mode, when set),
    ``kernel_modules`` (one row: count, loadable, signature enforcement), ``init``), ``item``
    (path, name or mode), ``detail``, ``observed`` (bool: any of its evidence was seen in the
    image), ``evidence``, ``evidence_text``. Absence is not a row: an image without a package
    manager has no ``package_manager`` row (count rows per kind to compare).
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        for f in surface_findings(e.report):
            rows.append({"image": e.image_id, **f, "evidence_text": evidence_text(f["evidence"])})
    df = _finish(rows, SURFACE_COLUMNS, loaded, {"kind": SURFACE_KINDS})
    _bool_col(df, "observed")
    return df


# ------------------------------------------------------------------------------------------------
# update slots
# ------------------------------------------------------------------------------------------------

SLOT_COLUMNS = [
    "image", "mechanism", "agent", "active_slot", "slot", "partitions", "version", "active", "priority", "tries",
    "successful", "evidence", "evidence_text",
]


def update_slots_frame(reports) -> pd.DataFrame:
    """One row per update slot (``update.slots``); images without slots have no rows.

    Columns: ``image``, ``mechanism`` (categorical, schema vocabulary: ab-partitions,
    ab-boot-entries, ostree-deployments, ...), ``agent`` (the update agent), ``active_slot``
    (the image's active slot name), ``slot`` (this slot's name), ``partitions`` (partition
    numbers or names, comma-separated), ``version`` (OS version installed in the slot),
    ``active`` (bool), ``priority``, ``tries``, ``successful`` (A/B attribute bits, where the
    mechanism has them), ``evidence`` / ``evidence_text`` (the update section's evidence).
    Per-image update facts (channel, server, rollback method) are in ``images``.
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        upd = as_dict(e.report.get("update"))
        ev = as_list(upd.get("evidence"))
        for slot in as_list(upd.get("slots")):
            slot = as_dict(slot)
            rows.append({
                "image": e.image_id, "mechanism": _str(upd.get("mechanism")), "agent": _str(upd.get("agent")),
                "active_slot": _str(upd.get("active_slot")), "slot": _str(slot.get("name")),
                "partitions": ",".join(str(p) for p in as_list(slot.get("partitions"))) or None,
                "version": _str(slot.get("version")), "active": _bool(slot.get("active")),
                "priority": _int(slot.get("priority")), "tries": _int(slot.get("tries")),
                "successful": _bool(slot.get("successful")), "evidence": ev, "evidence_text": evidence_text(ev),
            })
    df = _finish(rows, SLOT_COLUMNS, loaded, {"mechanism": _schema_enum("update", "mechanism")})
    _bool_col(df, "active", "successful")
    _int_col(df, "priority", "tries")
    return df


# ------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------

def scores_frame(reports, rubric=None) -> pd.DataFrame:
    """One row per (image, rubric dimension), plus one ``overall`` row per image.

    Columns: ``image``, ``dimension`` (categorical: the rubric's dimension ids in rubric order,
    then ``overall``), ``title``, ``weight`` (the dimension's weight; for ``overall`` the sum of
    the weights of the dimensions that could be scored), ``score`` (0-100, higher = more
    immutable; NaN when the report lacks the facts), ``contribution`` (weight x score / total
    weight of scored dimensions: the points this dimension adds to the overall score),
    ``decided_by`` (how the rule reached the score, one line per check), ``value`` (the report
    values the rule read), ``evidence`` (copied from the report rows the rule used),
    ``evidence_text``. See ``data/rubric.yaml`` and ``immutools.analysis.rubric``.
    """
    loaded = entries(reports)
    rubric = rubric if rubric is not None else load_rubric()
    rows = []
    for e in loaded:
        result = rubric.score(e.report)
        for d in result.dimensions:
            rows.append({
                "image": e.image_id, "dimension": d.id, "title": d.title, "weight": d.weight, "score": d.score,
                "contribution": d.contribution, "decided_by": "\n".join(d.trail), "value": d.value_text,
                "evidence": d.evidence, "evidence_text": evidence_text(d.evidence),
            })
        rows.append({
            "image": e.image_id, "dimension": "overall", "title": "Overall immutability score",
            "weight": result.scored_weight, "score": result.overall, "contribution": result.overall,
            "decided_by": result.summary, "value": None, "evidence": [], "evidence_text": "",
        })
    columns = ["image", "dimension", "title", "weight", "score", "contribution", "decided_by", "value", "evidence",
               "evidence_text"]
    df = _finish(rows, columns, loaded, {"dimension": [d.id for d in rubric.dimensions] + ["overall"]})
    for col in ("weight", "score", "contribution"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


# ------------------------------------------------------------------------------------------------
# completeness and ranking
# ------------------------------------------------------------------------------------------------

COMPLETENESS_COLUMNS = ["image", "fact", "status", "reason", "documented_by", "evidence", "evidence_text"]


def completeness_frame(reports) -> pd.DataFrame:
    """One row per fact the image's distribution guarantees (the report's ``completeness.facts``).

    Columns: ``image``, ``fact`` (``mount /usr``, ``path /var``, ``os.version``, ...),
    ``status`` (categorical: observed / inferred / missing: seen in the image, taken from the
    documented default because the image did not say, or not found), ``reason`` (why it is
    inferred or missing), ``documented_by`` (the documentation that guarantees it), ``evidence``,
    ``evidence_text``. Images whose report has no completeness section have no rows
    (``images.completeness`` is then ``not checked``).
    """
    loaded = entries(reports)
    rows = []
    for e in loaded:
        for fact in completeness_of(e.report).facts:
            rows.append({
                "image": e.image_id, "fact": _str(fact.get("fact")), "status": _str(fact.get("status")),
                "reason": _str(fact.get("reason")), "documented_by": _str(fact.get("documented_by")),
                "evidence": as_list(fact.get("evidence")), "evidence_text": evidence_text(fact.get("evidence")),
            })
    return _finish(rows, COMPLETENESS_COLUMNS, loaded, {"status": ["observed", "inferred", "missing"]})


RANKING_COLUMNS = ["image", "score", "ranked", "rank", "dimensions_scored", "dimensions_total", "coverage",
                   "completeness", "facts_missing", "marker", "note"]


def ranking_frame(reports, rubric=None) -> pd.DataFrame:
    """One row per image: its overall score and, where it is comparable, its rank.

    Columns: ``image``, ``score`` (overall, 0-100; NaN when nothing could be scored), ``ranked``
    (bool: every rubric dimension scored and no guaranteed fact missing), ``rank`` (1 = most
    immutable among the ranked images; equal scores share a rank; NA when not ranked),
    ``dimensions_scored``, ``dimensions_total``, ``coverage`` (share of the rubric's weight
    that was scored, 0-1), ``completeness`` (as in ``images``), ``facts_missing``, ``marker``
    (short: ``incomplete: 2 facts missing``, ``7/8 dimensions``, ``completeness unknown``),
    ``note`` (the full reason). Rows in load order; sort by ``rank`` for the ranking.
    See ``immutools.analysis.ranking``.
    """
    loaded = entries(reports)
    rubric = rubric if rubric is not None else load_rubric()
    rows = [{
        "image": s.image, "score": s.score, "ranked": s.ranked, "rank": s.rank, "dimensions_scored": s.dimensions_scored,
        "dimensions_total": s.dimensions_total, "coverage": s.coverage, "completeness": s.completeness.status,
        "facts_missing": s.completeness.missing, "marker": s.marker or None, "note": s.note or None,
    } for s in standings(loaded, rubric)]
    df = _finish(rows, RANKING_COLUMNS, loaded, {"completeness": COMPLETENESS_STATES})
    _bool_col(df, "ranked")
    _int_col(df, "rank", "dimensions_scored", "dimensions_total", "facts_missing")
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    df["coverage"] = pd.to_numeric(df["coverage"], errors="coerce").astype("float64")
    return df
