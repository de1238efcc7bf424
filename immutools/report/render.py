"""Human-readable renderings of a report (the ``table`` format) and the JSON/YAML writers."""

from __future__ import annotations

import json


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def _attr_summary(attrs: dict) -> str:
    if not attrs:
        return ""
    bits = []
    for name in ("required", "no_block_io", "legacy_bios_bootable", "read_only", "grow_fs", "no_auto", "bottlerocket_booted"):
        if attrs.get(name):
            bits.append(name)
    if attrs.get("ab_semantics") or attrs.get("priority") or attrs.get("tries") or attrs.get("successful"):
        bits.append(f"prio={attrs.get('priority')} tries={attrs.get('tries')} ok={int(bool(attrs.get('successful')))}")
    return ",".join(bits)


def render_table(report: dict) -> str:
    img = report.get("image") or {}
    osr = report.get("os") or {}
    parts = []
    parts.append(f"Image     {img.get('path')}")
    comp = f", {img['compression']}-compressed" if img.get("compression") else ""
    parts.append(
        f"Format    {img.get('container')}{comp}, {human_size(img.get('size'))} virtual, "
        f"{img.get('table')} table, {img.get('sector_size')}-byte sectors"
    )
    if img.get("disk_guid"):
        parts.append(f"Disk GUID {img['disk_guid']}")
    os_line = " ".join(str(x) for x in (osr.get("name") or osr.get("id"), osr.get("version"), osr.get("variant")) if x)
    parts.append(f"OS        {os_line or 'unknown'}" + (f" ({osr['arch']})" if osr.get("arch") else ""))
    shown = set()
    for ev in osr.get("evidence") or []:
        line = f"          from {ev['source']}" + (f": {ev['detail']}" if ev.get("detail") else "") + ("" if ev.get("observed", True) else " (inferred)")
        if line not in shown:
            shown.add(line)
            parts.append(line)
    prov = img.get("provenance")
    if prov and prov.get("replica"):
        parts.append(f"Replica   {prov.get('spec')}: built by {prov.get('built_by')} from published layouts "
                     f"(release {prov.get('release')}), not a vendor image")
    if img.get("filesystem"):
        fs = img["filesystem"]
        parts.append(f"Content   whole-disk {fs['type']} filesystem" + (f" '{fs['label']}'" if fs.get("label") else ""))
    if report.get("partitions"):
        parts.append("")
        rows = []
        for p in report["partitions"]:
            rows.append([
                p["number"], p.get("label") or "", human_size(p["start"]), human_size(p["size"]),
                p.get("type_name") or p.get("type_guid") or p.get("mbr_type"), p.get("filesystem"), p.get("role") or "",
                _attr_summary(p.get("attributes") or {}),
            ])
        parts.append(_table(["#", "label", "start", "size", "type", "content", "role", "attributes"], rows))
    if report.get("mounts"):
        parts.append("")
        rows = [[m["target"], m.get("source"), m.get("fstype"), m.get("access"), m.get("persistence"),
                 m.get("integrity"), "" if m.get("observed", True) else "inferred"] for m in report["mounts"]]
        parts.append(_table(["mount", "source", "fstype", "access", "persistence", "integrity", ""], rows))
    if report.get("paths"):
        parts.append("")
        rows = [[p["path"], p["state"], p.get("via")] for p in report["paths"]]
        parts.append(_table(["path", "state", "via"], rows))
    upd = report.get("update")
    if upd:
        parts.append("")
        chan = f", channel {upd['channel']}" if upd.get("channel") else ""
        parts.append(f"Update    {upd.get('mechanism')} via {upd.get('agent') or '-'}{chan}; active slot {upd.get('active_slot') or '-'}")
        if upd.get("server"):
            parts.append(f"          server {upd['server']}")
        for slot in upd.get("slots") or []:
            mark = "*" if slot.get("active") else " "
            bits = ""
            if slot.get("priority") is not None:
                bits = f" priority {slot.get('priority')} tries {slot.get('tries')} successful {int(bool(slot.get('successful')))}"
            parts.append(f"        {mark} slot {slot['name']}: partitions {slot.get('partitions')} version {slot.get('version') or '-'}{bits}")
    integ = report.get("integrity")
    if integ:
        if integ.get("verity"):
            where = f" (from {integ['hash_location']})" if integ.get("hash_location") else ""
            parts.append(f"Integrity dm-verity, root hash {integ.get('root_hash') or 'unknown'}{where}")
        else:
            parts.append("Integrity no dm-verity")
    surf = report.get("surface")
    if surf:
        parts.append(
            f"Surface   shells: {', '.join(surf.get('shells') or []) or 'none'}; sshd: {surf.get('sshd')}; "
            f"package managers: {', '.join(surf.get('package_managers') or []) or 'none'}; selinux: {surf.get('selinux')}"
        )
    if report.get("warnings"):
        parts.append("")
        for w in report["warnings"]:
            parts.append(f"warning: {w}")
    return "\n".join(parts) + "\n"


def render(report: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(report, default=str)), sort_keys=False, allow_unicode=True)
    return render_table(report)
