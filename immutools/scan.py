"""``scan``: open an image, read its table and filesystems, let the best collector fill the report."""

from __future__ import annotations

import os
import resource
import time

import immutools
from immutools.collectors import all_collectors
from immutools.disk import DiskImage, PhaseTimer, require_image
from immutools.errors import ImmutoolsError
from immutools.image.source import ReadStats
from immutools.limits import DEFAULT_LIMITS, Limits
from immutools.report.completeness import evaluate, warnings_for
from immutools.report.model import empty_report, evidence

def image_section(image: DiskImage) -> dict:
    opened, table = image.opened, image.table
    section = {
        "path": os.path.abspath(opened.path),
        "container": opened.container,
        "compression": opened.compression,
        "size": image.source.size,
        "file_size": opened.file_size,
        "sector_size": table.sector_size,
        "table": table.scheme,
        "disk_guid": table.disk_guid,
        "table_details": table.details,
        "filesystem": None,
        # how a compressed image was read: "random" (only the blocks a read touches are inflated) or
        # "decompressed" (whole, once); and what the decompression cache did (immutools/image/cache.py)
        "access": getattr(opened, "access", None),
        "cache": getattr(opened, "cache", None),
    }
    whole = image.volume(number=0)
    if whole is not None:
        section["filesystem"] = identity_dict(whole.identity)
    return section


def identity_dict(ident) -> dict:
    return {"type": ident.fstype, "label": ident.label, "uuid": ident.uuid, "size": ident.size, "details": ident.details}


def partition_rows(image: DiskImage) -> list[dict]:
    rows = []
    header = image.table.details.get("header_used", "primary")
    for vol in image.volumes:
        part = vol.partition
        if part is None:
            continue
        ident = vol.identity
        where = (
            f"GPT entry {part.number} ({header} header)" if image.table.scheme == "gpt" else f"MBR entry {part.number}"
        )
        rows.append(
            {
                "number": part.number,
                "label": part.label,
                "type_guid": part.type_guid,
                "mbr_type": (f"0x{part.mbr_type:02x}" if part.mbr_type is not None else None),
                "type_name": part.type_name,
                "type_key": part.type_key,
                "uuid": part.uuid,
                "start": part.start,
                "size": part.size,
                "first_lba": part.first_lba,
                "last_lba": part.last_lba,
                "filesystem": ident.fstype,
                "filesystem_label": ident.label,
                "filesystem_uuid": ident.uuid,
                "filesystem_size": ident.size,
                "filesystem_details": ident.details,
                "role": _role(part, ident),
                "attributes": part.attributes,
                "bootable": part.bootable,
                "evidence": [evidence(where, "partition table"), evidence(f"{vol.describe()}: superblock", f"content identified as {ident.fstype}")],
            }
        )
    return rows


def _role(part, ident) -> str | None:
    from immutools.volumes import lookup_type

    if part.type_guid or part.mbr_type is not None:
        _key, _name, role = lookup_type(part.type_guid if part.type_guid else part.mbr_type)
        if role:
            return role
    if ident.fstype == "dm-verity":
        return "verity"
    if ident.fstype == "swap":
        return "swap"
    return None


REPLICA_MARKER = "/immutools-replica.json"


def find_provenance(image: DiskImage) -> dict | None:
    """The provenance record replicas carry (``/immutools-replica.json`` at a filesystem root).

    Its presence is how reports, frames and charts know an input is a replica built from a
    published layout rather than a vendor image.
    """
    import json

    for vol, fs in image.filesystems():
        try:
            if not fs.exists(REPLICA_MARKER, follow=False):
                continue
            record = json.loads(fs.read_text(REPLICA_MARKER, max_bytes=256 * 1024))
        except (ImmutoolsError, ValueError) as exc:
            image.warn(f"{vol.describe()}: {REPLICA_MARKER}: unreadable provenance record: {exc}")
            continue
        if isinstance(record, dict):
            record = dict(record)
            record["evidence"] = [evidence(f"{vol.describe()}: {REPLICA_MARKER}", "replica provenance record")]
            return record
    return None


def choose_collector(image: DiskImage):
    """Run every collector's detect; return (collector, detection, all detections)."""
    results = []
    for collector in all_collectors():
        with image.timer.measure(f"detect:{collector.name}"):
            try:
                det = collector.detect(image)
            except ImmutoolsError as exc:
                image.warn(f"collector {collector.name}: detection failed: {exc}")
                continue
        results.append((collector, det))
    results = [r for r in results if r[1].confidence > 0]
    if not results:
        return None, None, []
    # Stable: first-listed collector wins a tie.
    best = max(results, key=lambda r: r[1].confidence)
    return best[0], best[1], [r[1] for r in results]


def scan_image(image: DiskImage) -> dict:
    report = empty_report()
    report["tool"] = {"name": "immutools", "version": immutools.__version__}
    report["image"] = image_section(image)
    report["partitions"] = partition_rows(image)
    with image.timer.measure("provenance"):
        report["image"]["provenance"] = find_provenance(image)
    collector, detection, detections = choose_collector(image)
    findings = None
    if collector is None:
        image.warn("no collector recognised an operating system: looked for each distribution's partition "
                   f"layout and for an os-release file in {len(list(image.filesystems()))} readable filesystem(s)")
    else:
        with image.timer.measure(f"collect:{collector.name}"):
            findings = collector.run(image, detection)
        report.update(findings.to_sections())
        os_section = report["os"]
        os_section["collector"] = collector.name
        os_section["confidence"] = detection.confidence
        merged, seen = [], set()
        for ev in list(detection.evidence) + list(os_section.get("evidence") or []):
            key = (ev.get("source"), ev.get("detail"))
            if key not in seen:
                seen.add(key)
                merged.append(ev)
        os_section["evidence"] = merged
        os_section["candidates"] = [
            {"collector": d.collector, "confidence": d.confidence} for d in sorted(detections, key=lambda d: -d.confidence)
        ]
    completeness = evaluate(report, collector.knowledge if collector is not None else None,
                            findings.explanations if findings is not None else None)
    for line in warnings_for(completeness):
        image.warn(line)
    report["completeness"] = completeness.to_report()
    for warning in image.filesystem_warnings():
        image.warn(warning)
    report["warnings"] = list(image.warnings)
    return report


def _peak_rss_kib() -> int:
    """This process's own peak RSS. ``ru_maxrss`` also counts the parent's footprint at fork/exec
    (Linux folds it into the process's high-water mark), so a scan started from a large process would
    report that; ``VmHWM`` belongs to this address space alone."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def scan(path: str, limits: Limits = DEFAULT_LIMITS, progress: bool | None = None, with_stats: bool = False) -> dict:
    """Scan the image at ``path`` and return the report dict."""
    require_image(path)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    timer = PhaseTimer()
    stats = ReadStats()
    with DiskImage.open(path, limits=limits, progress=progress, stats=stats, timer=timer) as image:
        report = scan_image(image)
        decompressed = image.opened.decompressed_bytes
    if with_stats:
        peak_kib = _peak_rss_kib()
        report["stats"] = {
            "wall_s": round(time.perf_counter() - wall0, 4),
            "cpu_s": round(time.process_time() - cpu0, 4),
            "phases": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in timer.phases.items()},
            "bytes_read": stats.bytes_read,
            "read_calls": stats.read_calls,
            "bytes_decompressed": decompressed or stats.bytes_decompressed,
            "image_size": report["image"]["size"],
            "access": report["image"].get("access"),
            "cache": report["image"].get("cache"),
            "peak_rss_bytes": peak_kib * 1024,
        }
    return report
