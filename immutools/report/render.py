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


def yes_no(value) -> str:
    """A cell for people: booleans as yes/no, None as blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def terminal_width(stream=None) -> int:
    """Columns to fit: on a terminal its width (``$COLUMNS`` overrides), else 100 (a pipe or a log
    file). A pipe ignores ``$COLUMNS``: GNU readline, loaded by many Python hosts, exports its guess
    (often 80) to every child, which would make piped output depend on the parent process."""
    import shutil
    import sys

    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return max(60, shutil.get_terminal_size((100, 24)).columns) if tty else 100


def _table(headers: list[str], rows: list[list], width: int | None = None) -> str:
    """A plain table that fits ``width``: the widest columns are cut (ending in "~") until it fits."""
    cells = [[yes_no(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    limit = width or terminal_width()
    # A column never gets narrower than 6 (or its header, if shorter): below that a narrow terminal
    # gets a wider table rather than unreadable cells.
    floor = [min(len(h), 6) if rows else len(h) for h in headers]
    # Cut the currently widest column one character at a time: the short, telling ones (#, access)
    # keep their width, long free text (sources, attributes) gives way.
    while sum(widths) + 2 * (len(widths) - 1) > limit:
        i = max(range(len(widths)), key=lambda k: widths[k] - floor[k])
        if widths[i] <= floor[i]:
            break
        widths[i] -= 1

    def fit(text: str, w: int) -> str:
        return text if len(text) <= w else text[: w - 1] + "~"

    line = "  ".join(fit(h, w).ljust(w) for h, w in zip(headers, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(fit(c, w).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


_ACCESS_WORDS = {"ro": "read-only", "rw": None}


def verdict(report: dict) -> str:
    """One line a person can act on: the OS, how /, /usr, /etc and /var are kept, how it updates,
    and whether the report has every fact its distribution's documentation guarantees."""
    osr = report.get("os") or {}
    name = " ".join(str(x) for x in (osr.get("name") or osr.get("id") or "unknown OS", osr.get("version")) if x)
    if osr.get("arch"):
        name += f" ({osr['arch']})"
    mounts = {m["target"]: m for m in report.get("mounts") or []}
    layout = []
    for target in ("/", "/usr", "/etc", "/var"):
        m = mounts.get(target)
        if not m:
            continue
        words = _ACCESS_WORDS.get(m.get("access")) or m.get("persistence") or m.get("access") or "?"
        if m.get("fstype") == "overlay":
            words += " overlay"
        if m.get("integrity") and m["integrity"] != "none":
            words += f" ({m['integrity']})"
        layout.append(f"{target} {words}")
    bits = [f"{name}: " + (", ".join(layout) or "no mount table")]
    upd = report.get("update") or {}
    if upd.get("mechanism") and upd["mechanism"] not in ("unknown", "none"):
        agent = upd.get("agent") or "an unknown agent"
        if upd["mechanism"].startswith("ab"):
            active = f", slot {upd['active_slot']} active" if upd.get("active_slot") else ""
            bits.append(f"A/B via {agent}{active}")
        else:
            bits.append(f"updates: {upd['mechanism']} via {agent}")
    else:
        bits.append("no update mechanism found")
    comp = report.get("completeness") or {}
    if comp.get("status"):
        notes = []
        if comp.get("missing"):
            notes.append(f"{comp['missing']} missing")
        if comp.get("inferred"):
            notes.append(f"{comp['inferred']} fact{'s' if comp['inferred'] != 1 else ''} inferred")
        status = comp["status"] if comp["status"] in ("complete", "incomplete") else f"completeness {comp['status']}"
        bits.append(status + (f" ({', '.join(notes)})" if notes else ""))
    return "; ".join(bits)


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


def render_table(report: dict, width: int | None = None, verbose: bool = False) -> str:
    width = width or terminal_width()
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
        parts.append(_table(["#", "label", "start", "size", "type", "content", "role", "attributes"], rows, width))
    if report.get("mounts"):
        parts.append("")
        rows = [[m["target"], m.get("source"), m.get("fstype"), m.get("access"), m.get("persistence"),
                 m.get("integrity"), "observed" if m.get("observed", True) else "inferred"] for m in report["mounts"]]
        parts.append(_table(["mount", "source", "fstype", "access", "persistence", "integrity", "evidence"], rows, width))
    if report.get("paths"):
        parts.append("")
        rows = [[p["path"], p["state"], p.get("via")] for p in report["paths"]]
        parts.append(_table(["path", "state", "via"], rows, width))
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
                bits = f" priority {slot.get('priority')} tries {slot.get('tries')} successful {yes_no(bool(slot.get('successful')))}"
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
            f"Surface   shells: {', '.join(surf.get('shells') or []) or 'none'}; sshd: {yes_no(surf.get('sshd'))}; "
            f"package managers: {', '.join(surf.get('package_managers') or []) or 'none'}; selinux: {surf.get('selinux')}"
        )
    comp = report.get("completeness")
    if comp and comp.get("facts"):
        parts.append("")
        parts.append(f"Completeness {comp.get('status')}: {comp.get('observed')} observed, {comp.get('inferred')} inferred, "
                     f"{comp.get('missing')} missing of {comp.get('expected')} facts guaranteed by "
                     f"{comp.get('distribution_name') or comp.get('distribution')}'s documentation")
        shown_facts = comp["facts"] if verbose else [f for f in comp["facts"] if f["status"] != "observed"]
        if shown_facts:
            rows = []
            for f in shown_facts:
                ev = "; ".join(e["source"] + (f": {e['detail']}" if e.get("detail") else "") for e in f.get("evidence") or [])
                rows.append([f["fact"], f["status"], f.get("reason") or ev or f.get("documented_by")])
            parts.append(_table(["fact", "status", "reason or evidence"], rows, width))
    if report.get("warnings"):
        parts.append("")
        for w in report["warnings"]:
            parts.append(f"warning: {w}")
    parts.append("")
    parts.append(verdict(report))
    return _wrap_lines(parts, width)


def _wrap_lines(lines: list[str], width: int) -> str:
    """Fold the free-text lines longer than the terminal (tables already fit) under a 10-column indent."""
    import textwrap

    out = []
    for line in "\n".join(lines).split("\n"):
        if len(line) <= width or line.startswith("--"):   # a table's dash line: its table fits already
            out.append(line)
        else:
            out.extend(textwrap.wrap(line, width, subsequent_indent=" " * 10, break_on_hyphens=False))
    return "\n".join(out) + "\n"


def render(report: dict, fmt: str, verbose: bool = False) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(report, default=str)), sort_keys=False, allow_unicode=True)
    return render_table(report, verbose=verbose)
