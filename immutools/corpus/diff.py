"""``immutools diff A B``: what changed between two scans, typically consecutive releases.

Both sides go through the frames (``immutools.analysis.frames``), so a difference is stated in the
columns of ``docs/frames.md`` and a dataset, two saved reports or two images all compare the same
way. Sections and the rows they key on:

* ``image``: container, compression, table, sector size, virtual size, partition count;
* ``os``: os-release identity, distribution, collector, init, SELinux mode;
* ``partitions``: by partition number (label, type, role, filesystem, size, start, run-time state,
  slot, mount points, GPT A/B bits);
* ``mounts``: by mount target (source, filesystem, kind, access, persistence, integrity, options,
  overlay layers, observed or inferred); ``paths``: by path (state, the mount that decides it);
* ``update``: mechanism, agent, channel, server, rollback, reboot manager, boot loader, active slot, and each slot
  (partitions, installed version, GPT bits);
* ``integrity``: dm-verity on or off, where the root hash comes from, signing, Secure Boot, and each
  verity target (slot, data and hash partitions, superblock);
* ``surface``: by (kind, item): shells, sshd, SSH units, package and app managers, setuid and setgid
  files, system extensions, SELinux, lockdown, kernel module policy, init; plus the executables on
  the default PATH (count and directories);
* ``completeness``: the status and each guaranteed fact's status; ``score``: each rubric dimension and
  the overall score.

What always differs between two builds and means nothing is left out (``IGNORED``): evidence, its
wording and warnings, tool version and timings, absolute paths, and ids and digests each build draws
anew (partition and filesystem UUIDs, disk GUID, root hashes, salts, hash offsets, filesystem
sizes, the file's size and digest); UUIDs and 64-hex digests inside compared text are masked.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from immutools.corpus.commands import DIFF_IGNORED as IGNORED
from immutools.errors import EXIT_USAGE, ImmutoolsError

SECTIONS = ("image", "os", "partitions", "mounts", "paths", "update", "integrity", "surface", "completeness", "score")

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HASH = re.compile(r"\b[0-9a-fA-F]{64}\b")

IMAGE_FIELDS = ("container", "compression", "table", "sector_size", "size", "partition_count")
OS_FIELDS = ("os_id", "os_name", "os_version", "os_variant", "arch", "distribution", "collector", "init", "selinux")
UPDATE_FIELDS = ("update_mechanism", "update_agent", "update_channel", "update_server", "update_rollback",
                 "update_reboot_manager", "active_slot")
PARTITION_FIELDS = ("label", "type_key", "type_name", "mbr_type", "role", "filesystem", "filesystem_label", "size",
                    "start", "state", "slot", "mounted_at", "priority", "tries", "successful")
MOUNT_FIELDS = ("source", "fstype", "kind", "access", "persistence", "integrity", "options", "lower", "upper", "work",
                "observed", "partition")
PATH_FIELDS = ("state", "via", "chain", "resolved")
SLOT_FIELDS = ("partitions", "version", "active", "priority", "tries", "successful")
SURFACE_FIELDS = ("detail", "observed")
TARGET_FIELDS = ("partition", "hash_partition", "superblock", "root_hash_source")


class DiffUsageError(ImmutoolsError):
    exit_code = EXIT_USAGE


@dataclass
class Change:
    section: str
    item: str          # the row: "partition 3", "/usr", "slot B", "setuid /usr/bin/su"
    field: str         # the column that changed ("" for a row added or removed)
    change: str        # "added" | "removed" | "changed"
    a: object = None
    b: object = None


@dataclass
class DiffResult:
    a: dict
    b: dict
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for ch in self.changes:
            out[ch.section] = out.get(ch.section, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "equal": not self.changes, "counts": self.counts(),
                "differences": [asdict(c) for c in self.changes], "ignored": IGNORED}


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------

def mask(text: str) -> str:
    return _HASH.sub("<digest>", _UUID.sub("<uuid>", text))


def norm(value):
    """A comparable, JSON-friendly value: missing -> None, numbers as numbers, text masked."""
    from immutools.analysis.loading import is_known

    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in sorted(value.items())}
    if not is_known(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str):    # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return round(value, 1) if value != int(value) else int(value)
    if isinstance(value, int):
        return value
    return mask(str(value))


def _rows(df, image, key, fields) -> dict:
    """{key: {field: value}} of one image's rows; a key seen again gets ``#2``."""
    out: dict = {}
    sub = df[df["image"].astype(str) == image]
    for rec in sub.to_dict("records"):
        k = key(rec)
        base, n = k, 2
        while k in out:
            k = f"{base} #{n}"
            n += 1
        out[k] = {f: norm(rec.get(f)) for f in fields}
    return out


def _compare_rows(section: str, a: dict, b: dict, changes: list[Change]) -> None:
    for key in list(a) + [k for k in b if k not in a]:
        if key not in b:
            changes.append(Change(section, key, "", "removed", a[key], None))
        elif key not in a:
            changes.append(Change(section, key, "", "added", None, b[key]))
        else:
            for f in a[key]:
                if a[key][f] != b[key].get(f):
                    changes.append(Change(section, key, f, "changed", a[key][f], b[key].get(f)))


def _compare_fields(section: str, item: str, a: dict, b: dict, changes: list[Change]) -> None:
    for f in a:
        if a[f] != b.get(f):
            changes.append(Change(section, item, f, "changed", a[f], b.get(f)))


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------

def diff_frames(frames, a_id: str, b_id: str) -> DiffResult:
    """The differences between images ``a_id`` and ``b_id`` of ``frames`` (see the module docstring)."""
    from immutools.analysis.loading import as_dict, as_list

    reports = {lr.image_id: lr for lr in frames.reports}
    for image_id in (a_id, b_id):
        if image_id not in reports:
            raise DiffUsageError(f"no image {image_id!r} (images: {', '.join(reports)})")
    images = frames.images.set_index(frames.images["image"].astype(str))
    changes: list[Change] = []

    def image_fields(fields, image_id):
        row = images.loc[image_id]
        return {f: norm(row.get(f)) for f in fields}

    _compare_fields("image", "disk", image_fields(IMAGE_FIELDS, a_id), image_fields(IMAGE_FIELDS, b_id), changes)
    _compare_fields("os", "os", image_fields(OS_FIELDS, a_id), image_fields(OS_FIELDS, b_id), changes)

    def part_key(rec):
        return f"partition {norm(rec.get('number'))}"

    _compare_rows("partitions", _rows(frames.partitions, a_id, part_key, PARTITION_FIELDS),
                  _rows(frames.partitions, b_id, part_key, PARTITION_FIELDS), changes)
    _compare_rows("mounts", _rows(frames.mounts, a_id, lambda r: str(r["target"]), MOUNT_FIELDS),
                  _rows(frames.mounts, b_id, lambda r: str(r["target"]), MOUNT_FIELDS), changes)
    _compare_rows("paths", _rows(frames.paths, a_id, lambda r: str(r["path"]), PATH_FIELDS),
                  _rows(frames.paths, b_id, lambda r: str(r["path"]), PATH_FIELDS), changes)

    def update_fields(image_id):
        # The boot loader is not a frames column; Talos' GRUB -> GRUB + systemd-boot move shows here.
        report = reports[image_id].report
        loader = as_dict(report.get("update")).get("bootloader") or as_dict(report.get("distribution")).get("bootloader")
        return dict(image_fields(UPDATE_FIELDS, image_id), bootloader=norm(loader))

    _compare_fields("update", "update", update_fields(a_id), update_fields(b_id), changes)
    _compare_rows("update", _rows(frames.update_slots, a_id, lambda r: f"slot {r['slot']}", SLOT_FIELDS),
                  _rows(frames.update_slots, b_id, lambda r: f"slot {r['slot']}", SLOT_FIELDS), changes)

    def integrity(image_id):
        section = as_dict(reports[image_id].report.get("integrity"))
        boot = as_dict(section.get("secure_boot"))
        top = {"verity": norm(section.get("verity")), "root hash from": norm(section.get("hash_location")),
               "signed": norm(section.get("signed")), "uki signed": norm(boot.get("uki_signed")),
               "pcr signature": norm(boot.get("pcr_signature")), "lockdown": norm(boot.get("lockdown"))}
        targets = {}
        for t in as_list(section.get("targets")):
            t = as_dict(t)
            targets[f"verity target {norm(t.get('slot'))} (partition {norm(t.get('partition'))})"] = \
                {f: norm(t.get(f)) for f in TARGET_FIELDS}
        return top, targets

    (ia, ta), (ib, tb) = integrity(a_id), integrity(b_id)
    _compare_fields("integrity", "integrity", ia, ib, changes)
    _compare_rows("integrity", ta, tb, changes)

    def surface_key(rec):
        return f"{rec['kind']} {rec['item']}"

    _compare_rows("surface", _rows(frames.surface, a_id, surface_key, SURFACE_FIELDS),
                  _rows(frames.surface, b_id, surface_key, SURFACE_FIELDS), changes)

    def executables(image_id):
        pe = as_dict(as_dict(reports[image_id].report.get("surface")).get("path_executables"))
        return {"count": norm(pe.get("count")), "dirs": norm(pe.get("dirs"))}

    _compare_fields("surface", "executables on PATH", executables(a_id), executables(b_id), changes)

    comp_fields = ("completeness", "facts_expected", "facts_observed", "facts_inferred", "facts_missing")
    _compare_fields("completeness", "completeness", image_fields(comp_fields, a_id), image_fields(comp_fields, b_id),
                    changes)
    _compare_rows("completeness", _rows(frames.completeness, a_id, lambda r: f"fact {r['fact']}", ("status",)),
                  _rows(frames.completeness, b_id, lambda r: f"fact {r['fact']}", ("status",)), changes)
    _compare_rows("score", _rows(frames.scores, a_id, lambda r: str(r["dimension"]), ("score",)),
                  _rows(frames.scores, b_id, lambda r: str(r["dimension"]), ("score",)), changes)

    def side(image_id):
        row = images.loc[image_id]
        return {"image": image_id, "source": reports[image_id].source, "label": norm(row.get("label")),
                "version": norm(row.get("os_version"))}

    return DiffResult(side(a_id), side(b_id), changes)


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------

def _load_one(source: str, progress):
    """A LoadedReport of a saved report, an image (scanned now) or ``DATASET:IMAGE_ID``."""
    from immutools.analysis.loading import LoadedReport, base_image_id, read_report, scan_report
    from immutools.corpus.dataset import Dataset, is_dataset

    head, sep, tail = source.rpartition(":")
    if sep and head and is_dataset(head):
        ds = Dataset.open(head)
        frames = ds.frames(pairs=ds.loaded_reports())
        for lr in frames.reports:
            if lr.image_id == tail:
                return LoadedReport(lr.base_id, lr.report, f"{head}:{tail}", "report")
        raise DiffUsageError(f"{source}: no image {tail!r} in the dataset")
    path = Path(source)
    if path.is_dir():
        raise DiffUsageError(f"{source}: a folder; name an image, a saved report, or DATASET:IMAGE_ID")
    if path.suffix.lower() == ".json":
        report = read_report(path)
        return LoadedReport(base_image_id(report, source), report, source, "report")
    report = scan_report(path, progress)
    return LoadedReport(base_image_id(report, source), report, source, "image")


def diff_reports(a, b, rubric=None) -> DiffResult:
    """Differences between two report dicts (or ``LoadedReport``s)."""
    from immutools.analysis.frames import frames_from

    frames = frames_from([a, b], rubric=rubric)
    return diff_frames(frames, frames.reports[0].image_id, frames.reports[1].image_id)


def diff_sources(a: str, b: str, rubric=None, progress=None) -> DiffResult:
    return diff_reports(_load_one(a, progress), _load_one(b, progress), rubric=rubric)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------

def render_json(result: DiffResult) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"


def _cell(value, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else ", ".join(map(str, value))
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(result: DiffResult, width: int = 40) -> str:
    lines = [f"A: {result.a['image']} ({result.a['source']})", f"B: {result.b['image']} ({result.b['source']})"]
    if not result.changes:
        lines.append("no differences")
        return "\n".join(lines) + "\n"
    rows = [("section", "item", "field", "A", "B")]
    for ch in result.changes:
        a = "(absent)" if ch.change == "added" else _cell(ch.a if ch.field else None, width)
        b = "(absent)" if ch.change == "removed" else _cell(ch.b if ch.field else None, width)
        if not ch.field:
            a, b = ("present" if ch.change == "removed" else "(absent)"), ("present" if ch.change == "added" else "(absent)")
        rows.append((ch.section, _cell(ch.item, 44), ch.field or ch.change, a, b))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
    lines.append(f"{len(result.changes)} differences ({counts}); ignored: evidence, ids and digests each build "
                 f"draws anew (see immutools diff --help)")
    return "\n".join(lines) + "\n"
