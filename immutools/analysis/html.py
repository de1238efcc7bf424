"""One self-contained static HTML page comparing images: charts, tables, evidence, provenance.

No external resource of any kind: charts are inline SVG (text kept as text, so it can be
searched and copied; the page's own font stack draws it), the style sheet is inline, there is no
script. Every string that came from a report (and so from an image) is HTML-escaped. Evidence
sits beside each fact in a collapsible ``<details>`` element, and the per-image tables are folded
the same way so the page stays short. No local path appears: inputs are named by file name.

Every Overview cell is filled (a blank says why: "none: package-manager updates have no slots",
"not reported"), and every image's completeness is shown: an incomplete image is marked in the
Overview, has no rank, and its missing facts are listed.
"""

from __future__ import annotations

import html
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import immutools
from immutools.analysis import charts as charts_mod
from immutools.analysis.frames import Frames
from immutools.analysis.loading import is_known as _known, is_yes as _yes
from immutools.analysis.rubric import load_rubric
from immutools.analysis.sensitivity import sensitivity
from immutools.paths import data_dir

_CSS = """
:root { --ink: #1a1a1a; --muted: #555; --rule: #d9d9d9; --bg-alt: #f6f6f6; --accent: #0072B2; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: var(--ink); margin: 0;
       line-height: 1.45; background: white; }
main { max-width: 1300px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 8px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 36px 0 8px; border-bottom: 1px solid var(--rule); padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 22px 0 6px; }
p.lead, p.note { color: var(--muted); margin: 4px 0 10px; max-width: 70em; }
nav { margin: 10px 0 0; font-size: 0.92em; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
figure { margin: 12px 0 20px; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.86em; margin: 8px 0 16px; width: 100%; }
th, td { border-bottom: 1px solid var(--rule); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfbfb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.score { font-weight: 600; }
details summary { cursor: pointer; color: var(--accent); }
details ul { margin: 4px 0 4px 18px; padding: 0; }
details li { margin: 2px 0; }
.inferred { color: var(--muted); font-style: italic; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 0.82em; border: 1px solid #999; }
.tag.replica { background: #fff3cd; border-color: #c9a227; }
.tag.ro { background: #0072B2; color: white; border-color: #0072B2; }
.tag.vol { background: #F0E442; border-color: #b8ad20; }
.tag.pers { background: #D55E00; color: white; border-color: #D55E00; }
pre { background: var(--bg-alt); padding: 10px 12px; white-space: pre-wrap; font-size: 0.86em; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.warn { color: #8a4b00; }
.tag.incomplete { background: #8a1c00; color: white; border-color: #8a1c00; }
.tag.complete { background: #e8f3ea; border-color: #6aa377; }
.tag.unknown { background: #eeeeee; }
.missing { color: #8a1c00; font-weight: 600; }
details.fold { margin: 6px 0; border: 1px solid var(--rule); border-radius: 4px; padding: 4px 10px; }
details.fold > summary { font-weight: 600; }
details.fold[open] > summary { margin-bottom: 4px; }
@media print { nav { display: none; } details { display: block; } h2 { page-break-after: avoid; }
               figure { page-break-inside: avoid; } }
"""


def _e(value) -> str:
    if not _known(value):
        return ""
    return html.escape(str(value), quote=True)


def _evidence_html(evidence, summary: str | None = None) -> str:
    items = [ev for ev in (evidence or []) if isinstance(ev, dict)]
    if not items:
        return '<span class="inferred">no evidence recorded</span>'
    lis = []
    for ev in items:
        text = _e(ev.get("source", "?"))
        if ev.get("detail"):
            text += ": " + _e(ev["detail"])
        if ev.get("observed") is False:
            text = f'<span class="inferred">{text} (inferred from documented behaviour)</span>'
        lis.append(f"<li>{text}</li>")
    label = summary or f"{len(items)} source{'s' if len(items) != 1 else ''}"
    return f"<details><summary>{_e(label)}</summary><ul>{''.join(lis)}</ul></details>"


_ID_ATTR = re.compile(r'\bid="([^"]+)"')


def _inline_svg(svg_text: str, prefix: str) -> str:
    """An SVG document as an inline ``<svg>`` element, ids made unique within the page."""
    start = svg_text.find("<svg")
    svg = svg_text[start:] if start >= 0 else svg_text
    ids = set(_ID_ATTR.findall(svg))
    if ids:
        svg = _ID_ATTR.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
        svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}-{m.group(1)})" if m.group(1) in ids else m.group(0), svg)
        svg = re.sub(r'(xlink:href|href)="#([^"]+)"',
                     lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"' if m.group(2) in ids else m.group(0), svg)
    # Scale with the page: keep the viewBox, drop the fixed size.
    svg = re.sub(r'^<svg([^>]*?)\swidth="[^"]*"', r"<svg\1", svg, count=1)
    svg = re.sub(r'^<svg([^>]*?)\sheight="[^"]*"', r"<svg\1", svg, count=1)
    return svg


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _state_tag(state) -> str:
    cls = {"read-only": "ro", "volatile": "vol", "persistent": "pers"}.get(str(state))
    return f'<span class="tag {cls}">{_e(state)}</span>' if cls else _e(state)


def _human(n) -> str:
    return charts_mod.human_size(n) if _known(n) else ""


def _fold(summary_html: str, body: str, open_: bool = False) -> str:
    """A per-image block folded under its summary line (``<details class="fold">``)."""
    return f'<details class="fold"{" open" if open_ else ""}><summary>{summary_html}</summary>{body}</details>'


def source_label(path) -> str:
    """A file named without the machine's directories: ``data/rubric.yaml`` for files of the
    project's data folder, the file name otherwise."""
    if not isinstance(path, (str, os.PathLike)) or str(path).startswith("<"):
        return str(path)
    p = Path(path)
    try:
        return "data/" + p.resolve().relative_to(data_dir().resolve()).as_posix()
    except (ValueError, OSError):
        return p.name


def _completeness_tag(status) -> str:
    status = str(status) if _known(status) else "not checked"
    cls = {"complete": "complete", "incomplete": "incomplete"}.get(status, "unknown")
    return f'<span class="tag {cls}">{_e(status)}</span>'


def _or(value, why: str) -> str:
    """The value, escaped; or why there is none (in the muted style)."""
    return _e(value) if _known(value) and str(value) != "" else f'<span class="inferred">{_e(why)}</span>'


def _active_slot_cell(img, slots) -> str:
    if _known(img.active_slot):
        return _e(img.active_slot)
    n = int((slots["image"] == img.image).sum())
    if n:
        return f'<span class="inferred">not determined ({n} slot{"s" if n != 1 else ""}, none marked active)</span>'
    if _known(img.update_mechanism) and str(img.update_mechanism) not in ("unknown",):
        return f'<span class="inferred">none: {_e(img.update_mechanism)} updates have no slots</span>'
    return '<span class="inferred">none: no update mechanism found</span>'


def render_report(frames: Frames, rubric=None, title: str = "immutools comparison report") -> str:
    """The HTML page for ``frames`` (all images), as a string."""
    rubric = rubric or frames.rubric or load_rubric()
    frames = frames if frames.rubric is rubric else Frames(frames.reports, frames.warnings, rubric)
    images = frames.images
    scores = frames.scores
    overall = scores[scores["dimension"] == "overall"].set_index("image")["score"]
    ranking = frames.ranking.set_index("image")
    slots = frames.update_slots
    out = []
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_replica = int(images["replica"].fillna(False).sum())
    out.append(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<header><h1>{_e(title)}</h1>
<p class="lead">{len(images)} image{'s' if len(images) != 1 else ''}{f', {n_replica} of them replicas' if n_replica else ''};
generated by immutools {_e(immutools.__version__)} on {now}; scores from <code>{_e(source_label(rubric.source))}</code>.
Higher score = more immutable (0-100).{_incomplete_lead(images)}</p>
<nav><a href="#overview">Overview</a><a href="#completeness">Completeness</a><a href="#spectrum">Spectrum</a><a href="#dimensions">Dimensions</a>
<a href="#partitions">Partitions</a><a href="#surface">Writable surface</a><a href="#updates">Updates</a>
<a href="#provenance">Provenance</a></nav></header>""")
    if n_replica:
        out.append(f'<p class="note"><span class="tag replica">replica</span> {_e(charts_mod.REPLICA_NOTE)}.</p>')

    # --- overview ------------------------------------------------------------------------------
    rows = []
    for r in images.itertuples(index=False):
        rk = ranking.loc[r.image]
        score = overall.get(r.image, math.nan)
        if _yes(rk["ranked"]):
            rank = _e(int(rk["rank"])) + (f' <small class="inferred">({_e(rk["marker"])})</small>' if _known(rk["marker"]) else "")
        else:
            rank = f'<span class="missing">not ranked</span><br><small>{_e(rk["marker"])}</small>'
        comp = _completeness_tag(r.completeness)
        if _known(r.facts_expected) and r.facts_expected:
            comp += f"<br><small>{_e(r.facts_observed)} observed, {_e(r.facts_inferred)} inferred"
            comp += (f', <span class="missing">{_e(r.facts_missing)} missing</span>' if r.facts_missing else "") + "</small>"
        rows.append([
            f"<b>{_e(r.image)}</b>" + (' <span class="tag replica">replica</span>' if _yes(r.replica) else ""),
            _or(r.distribution, "not recognised"), _or(r.os_version, "not reported"), _or(r.arch, "not reported"),
            f"{score:.1f}" if _known(score) else '<span class="inferred">n/a: nothing scored</span>', rank, comp,
            _or(r.update_mechanism, "not reported"), _active_slot_cell(r, slots),
            "yes" if _yes(r.verity) else ("no" if _known(r.verity) else '<span class="inferred">not reported</span>'),
            _or(r.selinux, "not reported"), _e(r.warning_count),
        ])
    out.append('<h2 id="overview">Overview</h2>')
    out.append(_table(["image", "distribution", "version", "arch", "score", "rank", "completeness", "update", "active slot",
                       "dm-verity", "SELinux", "warnings"], rows, numeric={4, 11}))
    out.append('<p class="note">Rank: 1 = most immutable among the ranked images (equal scores share a rank). An image '
               "is ranked only when every rubric dimension was scored and no fact its distribution's documentation "
               "guarantees is missing; the others keep their score for reference, with the reason.</p>")

    # --- completeness --------------------------------------------------------------------------
    out.append('<h2 id="completeness">Completeness: the facts each distribution guarantees</h2>')
    out.append('<p class="note">Each distribution\'s documentation guarantees some facts of every installed system '
               "(mounts, paths, versions). <b>observed</b>: seen in the image; <b>inferred</b>: the documented default, "
               "the image did not say; <b>missing</b>: not found (the image is then incomplete and not ranked).</p>")
    comp_df = frames.completeness
    for r in images.itertuples(index=False):
        sub = comp_df[comp_df["image"] == r.image]
        summary = f"{_e(r.image)}: {_completeness_tag(r.completeness)}"
        if sub.empty:
            body = ('<p class="note">No guaranteed facts to check: '
                    + ("no completeness section in this report (it predates the check)." if r.completeness == "not checked"
                       else "no distribution was recognised.") + "</p>")
        else:
            summary += (f" {_e(r.facts_observed)} observed, {_e(r.facts_inferred)} inferred"
                        + (f', <span class="missing">{_e(r.facts_missing)} missing: {_e(", ".join(r.missing_facts))}</span>'
                           if r.facts_missing else ""))
            frows = [[f"<code>{_e(c.fact)}</code>",
                      f'<span class="missing">{_e(c.status)}</span>' if c.status == "missing" else _e(c.status),
                      _e(c.reason), _e(c.documented_by), _evidence_html(c.evidence)] for c in sub.itertuples(index=False)]
            body = _table(["fact", "status", "reason", "documented by", "evidence"], frows)
        out.append(_fold(summary, body, open_=r.completeness == "incomplete"))

    # --- spectrum + sensitivity ------------------------------------------------------------------
    out.append('<h2 id="spectrum">Immutability spectrum</h2>')
    out.append(_figure(charts_mod.spectrum(frames, rubric=rubric), "c1",
                       "Every image on one 0-100 axis (top), then one row per image (its forms folded), ranked images first "
                       "with their rank; images that cannot be ranked (incomplete, or scored on fewer dimensions) below the "
                       "divider, hollow, with the reason. The score is the weighted mean of the rubric dimensions below; "
                       "weights are in the heatmap's column headers."))
    sens = sensitivity(frames, rubric)
    out.append("<h3>Sensitivity of the ranking to the weights</h3>")
    out.append(f"<pre>{_e(sens.summary)}</pre>")
    srows = []
    for r in sens.table.itertuples(index=False):
        holds = r.reference_holds
        srows.append([_e(r.label), _or(r.family_order, "no reference family present"),
                      ("yes" if holds else "no") if _known(holds) else '<span class="inferred">cannot be checked</span>',
                      _e(r.pairs_flipped), _e(r.max_rank_shift)])
    out.append(_table(["weights", "family order (most mutable first)", "reference order holds", "image pairs reordered",
                       "largest rank shift"], srows, numeric={3, 4}))

    # --- dimensions ----------------------------------------------------------------------------
    out.append('<h2 id="dimensions">Rubric dimensions</h2>')
    out.append(_figure(charts_mod.heatmap(frames, rubric=rubric), "c2",
                       "Each cell: a dimension's score (0-100) for one image; n/a when the report lacks the facts."))
    dim_rows = []
    for d in rubric.dimensions:
        dim_rows.append([f"<b>{_e(d.title)}</b><br><code>{_e(d.id)}</code>", _e(d.question), _e(f"{d.weight:g}"), _e(d.combine)])
    out.append(_table(["dimension", "question", "weight", "rule"], dim_rows, numeric={2}))
    for image in images["image"]:
        sub = scores[scores["image"] == image]
        rows = []
        for s in sub.itertuples(index=False):
            if s.dimension == "overall":
                continue
            score = f"{s.score:.0f}" if _known(s.score) else "n/a"
            trail = "<br>".join(_e(line) for line in str(s.decided_by).splitlines())
            rows.append([_e(s.title), score, f"<small>{trail}</small>", _evidence_html(s.evidence)])
        total = overall.get(image, math.nan)
        summary = f"{_e(image)}: {('%.1f' % total) if _known(total) else 'n/a'}"
        if not _yes(ranking.loc[image, "ranked"]):
            summary += f' <span class="missing">(not ranked: {_e(ranking.loc[image, "marker"])})</span>'
        out.append(_fold(summary, _table(["dimension", "score", "how the rule decided", "evidence"], rows, numeric={1})))

    # --- partitions ----------------------------------------------------------------------------
    out.append('<h2 id="partitions">Partition layouts</h2>')
    out.append(_figure(charts_mod.partitions(frames), "c3",
                       "Partitions to scale: role on the upper strip, run-time state on the lower strip; "
                       "the active update slot outlined."))
    parts = frames.partitions
    for image in images["image"]:
        sub = parts[parts["image"] == image]
        rows = [[_e(p.number), _e(p.label), _e(p.type_name), _e(p.role), _e(p.filesystem), _human(p.start), _human(p.size),
                 _e(p.slot) + (" (active)" if _yes(p.slot_active) else ""),
                 _e(p.mounted_at), _state_tag(p.state), _evidence_html(p.evidence)]
                for p in sub.itertuples(index=False)]
        out.append(_fold(f"{_e(image)}: {len(rows)} partition{'s' if len(rows) != 1 else ''}",
                         _table(["#", "label", "type", "role", "content", "start", "size", "slot", "mounted at",
                                 "run-time state", "evidence"], rows, numeric={0, 5, 6})))

    # --- surface -------------------------------------------------------------------------------
    out.append('<h2 id="surface">Writable surface and modification channels</h2>')
    out.append(_figure(charts_mod.surface(frames), "c4",
                       "What happens to a write under each standard path: read-only, volatile (lost at reboot) or persistent."))
    paths = frames.paths
    surf = frames.surface
    for image in images["image"]:
        sub = paths[paths["image"] == image]
        persistent = int((sub["state"].astype(str) == "persistent").sum())
        rows = [[f"<code>{_e(p.path)}</code>", _state_tag(p.state), f"<code>{_e(p.via)}</code>", _e(p.note),
                 _evidence_html(p.evidence)] for p in sub.itertuples(index=False)]
        body = _table(["path", "state", "decided by mount", "note", "evidence"], rows)
        sub = surf[surf["image"] == image]
        rows = [[_e(s.kind), f"<code>{_e(s.item)}</code>", _e(s.detail), _evidence_html(s.evidence)]
                for s in sub.itertuples(index=False)]
        if rows:
            body += _table(["finding", "item", "detail", "evidence"], rows)
        out.append(_fold(f"{_e(image)}: {len(sub)} finding{'s' if len(sub) != 1 else ''}, {persistent} persistent "
                         f"path{'s' if persistent != 1 else ''}", body))

    # --- updates -------------------------------------------------------------------------------
    out.append('<h2 id="updates">Update mechanisms</h2>')
    out.append(_figure(charts_mod.updates(frames), "c5",
                       "Update slots side by side; the filled box is the slot the boot loader picks next."))
    rows = []
    for img in images.itertuples(index=False):
        sub = slots[slots["image"] == img.image]
        ev = sub["evidence"].iloc[0] if len(sub) else []
        slot_text = "<br>".join(
            f"{_e(s.slot)}: {_e(s.version) or 'empty'} (partitions {_e(s.partitions)})" + (" <b>active</b>" if _yes(s.active) else "")
            for s in sub.itertuples(index=False))
        rows.append([_e(img.image), _or(img.update_mechanism, "not reported"), _or(img.update_agent, "not reported"),
                     _or(img.update_channel, "not reported"), _or(img.update_server, "not reported"),
                     slot_text or '<span class="inferred">no slots</span>', _or(img.update_rollback, "not reported"),
                     _evidence_html(ev)])
    out.append(_table(["image", "mechanism", "agent", "channel", "server", "slots", "rollback", "evidence"], rows))

    # --- provenance ----------------------------------------------------------------------------
    out.append('<h2 id="provenance">Provenance of each image</h2>')
    for entry in frames.reports:
        rep = entry.report
        img = rep.get("image") if isinstance(rep.get("image"), dict) else {}
        prov = img.get("provenance") if isinstance(img.get("provenance"), dict) else None
        facts = [
            ["loaded from", f"<code>{_e(source_label(entry.source))}</code> ({_e(entry.source_kind)})"],
            ["image file", f"<code>{_e(source_label(img.get('path')) if img.get('path') else '')}</code>"],
            ["format", _e(f"{img.get('container')}" + (f", {img.get('compression')}-compressed" if img.get("compression") else ""))],
            ["virtual size", _human(img.get("size"))],
            ["partition table", _e(img.get("table"))],
            ["collector", _e(f"{(rep.get('os') or {}).get('collector')} (confidence {(rep.get('os') or {}).get('confidence')})")],
            ["scanned by", _e(" ".join(str(v) for v in ((rep.get("tool") or {}).get("name"), (rep.get("tool") or {}).get("version")) if v))],
            ["OS identified from", _evidence_html((rep.get("os") or {}).get("evidence"))],
        ]
        if prov:
            facts.append(["replica", '<span class="tag replica">replica</span> ' + _e(prov.get("description"))])
            for key in ("spec", "release", "built_by", "layout_source"):
                if prov.get(key):
                    facts.append([key.replace("_", " "), _e(prov.get(key))])
            lims = prov.get("limitations")
            if isinstance(lims, list) and lims:
                facts.append(["limitations", "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in lims) + "</ul>"])
            facts.append(["provenance record", _evidence_html(prov.get("evidence"))])
        else:
            facts.append(["replica", "no: no replica provenance record in the image"])
        warnings = rep.get("warnings") if isinstance(rep.get("warnings"), list) else []
        facts.append(["warnings", ("<ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in warnings) + "</ul>") if warnings else "none"])
        out.append(_fold(f"{_e(entry.image_id)}" + (' <span class="tag replica">replica</span>' if prov else ""),
                         "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in facts)
                         + "</tbody></table>"))
    if frames.warnings:
        out.append("<h3>Inputs skipped</h3><ul>" + "".join(f'<li class="warn">{_e(_strip_dirs(w, frames))}</li>'
                                                          for w in frames.warnings) + "</ul>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def _incomplete_lead(images) -> str:
    bad = images[images["completeness"] == "incomplete"]
    if bad.empty:
        return ""
    names = ", ".join(str(i) for i in bad["image"])
    return (f' <span class="missing">{len(bad)} image{"s are" if len(bad) != 1 else " is"} INCOMPLETE (guaranteed facts '
            f"missing) and not ranked: {_e(names)}.</span>")


def _strip_dirs(text: str, frames) -> str:
    """A skipped-input warning with the directories of the inputs removed (no local paths)."""
    for entry_dir in {os.path.dirname(str(e.source)) for e in frames.reports} | _warning_dirs(frames.warnings):
        if entry_dir:
            text = text.replace(entry_dir.rstrip("/") + "/", "")
    return text


def _warning_dirs(warnings) -> set[str]:
    out = set()
    for w in warnings:
        m = re.match(r"skipped (/\S+?/)[^/\s]+:", w)
        if m:
            out.add(m.group(1))
    return out


def _figure(chart, prefix: str, caption: str) -> str:
    svg = _inline_svg(chart.svg(), prefix)
    chart.figure.clear()
    return f'<figure role="img" aria-label="{_e(caption)}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def write_report(frames: Frames, path, rubric=None) -> str:
    from immutools.errors import ImageIOError

    text = render_report(frames, rubric)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot write report: {exc.strerror}") from None
    return str(path)
