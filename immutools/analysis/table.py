"""The side-by-side comparison table ``immutools compare`` prints: one column per image.

Rows are facts (OS, completeness, scores per rubric dimension, rank, layout, update, paths,
surface); columns are images, split into blocks that fit the terminal width, each block repeating
the fact names. An image that cannot be ranked (a guaranteed fact missing, or fewer rubric
dimensions scored) shows ``not ranked`` and the reason in the rank row, ``INCOMPLETE`` in its
completeness row, and is listed under the table: its overall score is never presented as if it
were comparable.
"""

from __future__ import annotations

import math
import re
import textwrap

from immutools.analysis.frames import Frames
from immutools.analysis.loading import is_known as _known, is_yes as _yes

KEY_PATHS = ("/", "/etc", "/usr", "/var", "/opt", "/home", "/boot")
_STATE_SHORT = {"read-only": "ro", "volatile": "volatile", "persistent": "persistent"}


def _fmt(value) -> str:
    if not _known(value):
        return "-"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()      # numpy scalars -> Python
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def comparison_rows(frames: Frames) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(image ids, [(fact, [value per image])]) with sections marked by a fact starting with '#'."""
    images = frames.images
    ids = [str(i) for i in images["image"]]
    by_id = {str(r.image): r for r in images.itertuples(index=False)}
    rows: list[tuple[str, list[str]]] = []

    def add(fact, values):
        rows.append((fact, [_fmt(v) for v in values]))

    rows.append(("# image", []))
    add("OS", [" ".join(x for x in (by_id[i].os_id, by_id[i].os_version) if _known(x)) or None for i in ids])
    add("arch", [by_id[i].arch for i in ids])
    add("replica", [_yes(by_id[i].replica) for i in ids])
    add("collector", [by_id[i].collector for i in ids])
    add("partition table", [f"{by_id[i].table}, {by_id[i].partition_count} partitions" for i in ids])
    add("completeness", [_completeness_cell(by_id[i]) for i in ids])
    add("facts missing", [", ".join(by_id[i].missing_facts) or "none" if by_id[i].completeness != "not checked" else None
                          for i in ids])

    scores = frames.scores
    rows.append(("# immutability score (0-100, higher = more immutable)", []))
    for dim in scores["dimension"].cat.categories:
        sub = scores[scores["dimension"] == dim].set_index("image")
        title = sub["title"].iloc[0] if len(sub) else dim
        label = "OVERALL" if dim == "overall" else title
        add(label, [sub["score"].get(i, math.nan) for i in ids])
    ranking = frames.ranking.set_index("image")
    add("RANK (1 = most immutable)", [str(int(ranking.loc[i, "rank"])) if _yes(ranking.loc[i, "ranked"])
                                      else "not ranked (below)" for i in ids])

    rows.append(("# update", []))
    add("mechanism", [by_id[i].update_mechanism for i in ids])
    add("agent", [by_id[i].update_agent for i in ids])
    add("channel", [by_id[i].update_channel for i in ids])
    slots = frames.update_slots
    slot_text = []
    for i in ids:
        sub = slots[slots["image"] == i]
        slot_text.append(" ".join(f"{s.slot}{'*' if _yes(s.active) else ''}={_fmt(s.version)}" for s in sub.itertuples(index=False)) or None)
    add("slots (* active)", slot_text)
    add("rollback", [(str(by_id[i].update_rollback).split(":")[0] if _known(by_id[i].update_rollback) else None) for i in ids])
    add("dm-verity", [by_id[i].verity for i in ids])

    rows.append(("# paths: what a write does", []))
    paths = frames.paths
    state = {(str(p.image), p.path): _STATE_SHORT.get(str(p.state), str(p.state)) for p in paths.itertuples(index=False)
             if _known(p.state)}
    for path in KEY_PATHS:
        add(path, [state.get((i, path)) for i in ids])

    rows.append(("# surface", []))
    surf = frames.surface
    counts = surf.groupby(["image", "kind"], observed=False).size()

    def count(i, kind):
        try:
            return int(counts.loc[(i, kind)])
        except KeyError:
            return 0

    add("shells", [count(i, "shell") for i in ids])
    add("SSH server", [count(i, "sshd") > 0 for i in ids])
    add("package managers", [", ".join(surf[(surf["image"] == i) & (surf["kind"] == "package_manager")]["item"].astype(str)) or "none" for i in ids])
    add("setuid files", [count(i, "setuid") for i in ids])
    add("system extensions", [count(i, "sysext") for i in ids])
    add("SELinux", [by_id[i].selinux for i in ids])
    add("warnings", [by_id[i].warning_count for i in ids])
    return ids, rows


def _completeness_cell(row) -> str:
    status = str(row.completeness)
    if status in ("complete", "incomplete"):
        text = f"{status.upper() if status == 'incomplete' else status} {row.facts_observed}+{row.facts_inferred}/{row.facts_expected}"
        return text
    return status


def render_comparison(frames: Frames, width: int = 120) -> str:
    ids, rows = comparison_rows(frames)
    fact_w = min(max(len(f) for f, _v in rows if not f.startswith("#")), 34)
    col_w = []
    for n, _i in enumerate(ids):
        vals = [len(v[n]) for f, v in rows if not f.startswith("#")] + [len(ids[n])]
        col_w.append(max(12, min(30, max(vals))))
    fact_w, col_w = _fit_one_block(fact_w, col_w, width)
    blocks, block, used = [], [], fact_w
    for n in range(len(ids)):
        need = col_w[n] + 2
        if block and used + need > width:
            blocks.append(block)
            block, used = [], fact_w
        block.append(n)
        used += need
    if block:
        blocks.append(block)
    out = []
    for block in blocks:
        headers = [_wrap_name(ids[n], col_w[n]) for n in block]
        depth = max(len(h) for h in headers)
        for line in range(depth):
            cells = [(h[line] if line < len(h) else "").ljust(col_w[n]) for h, n in zip(headers, block)]
            out.append(" " * fact_w + "  " + "  ".join(cells).rstrip())
        out.append("-" * min(width, fact_w + sum(col_w[n] + 2 for n in block)))
        for fact, values in rows:
            if fact.startswith("#"):
                out.append(fact[2:].upper() if fact.startswith("# ") else fact)
                continue
            cells = [_clip(values[n], col_w[n]).ljust(col_w[n]) for n in block]
            out.append(_clip(fact, fact_w).ljust(fact_w) + "  " + "  ".join(cells).rstrip())
        out.append("")
    notes = ["completeness: observed+inferred/expected facts the distribution's documentation guarantees "
             "(inferred = documented default, not seen in the image)."]
    ranking = frames.ranking
    for r in ranking[~ranking["ranked"].fillna(False).astype(bool)].itertuples(index=False):
        notes.append(f"NOT RANKED: {r.image}: {r.note}")
    for note in notes:   # free text folds at the width like the table's blocks
        out.extend(textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False))
    out.append("")
    return "\n".join(out)


def comparison_records(frames: Frames) -> list[dict]:
    """The comparison as tidy records (image, section, fact, value): what ``compare --format
    json|csv`` prints, the same cells as the table without its layout."""
    ids, rows = comparison_rows(frames)
    records, section = [], ""
    for fact, values in rows:
        if fact.startswith("#"):
            section = fact.lstrip("# ")
            continue
        for image, value in zip(ids, values):
            records.append({"image": image, "section": section, "fact": fact, "value": value})
    return records


def render_comparison_data(frames: Frames, fmt: str) -> str:
    """``json`` (a list of records) or ``csv`` (a header row, then one row per record)."""
    records = comparison_records(frames)
    if fmt == "json":
        import json

        return json.dumps(records, indent=2) + "\n"
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "section", "fact", "value"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _fit_one_block(fact_w: int, col_w: list[int], width: int) -> tuple[int, list[int]]:
    """Prefer one block over several: narrow the fact column (to 24) and the image columns (to 20,
    which keeps "not ranked (below)" and a two-slot cell whole) when that puts every image side by
    side within the width; otherwise keep the widths and let the images split into blocks."""
    if fact_w + sum(w + 2 for w in col_w) <= width or not col_w:
        return fact_w, col_w
    fit = (width - min(fact_w, 24)) // len(col_w) - 2
    if fit < 20:
        return fact_w, col_w
    col_w = [min(w, fit) for w in col_w]
    return min(fact_w, width - sum(w + 2 for w in col_w)), col_w


def _wrap_name(name: str, width: int) -> list[str]:
    """Wrap an image id at hyphens (``flatcar-lts-4081-amd64-`` / ``pristine``), hard-cut if need be."""
    parts = re.findall(r"[^-]+-?|-", name) or [""]
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        while len(part) > width:
            lines.append(part[:width])
            part = part[width:]
        line += part
    if line:
        lines.append(line)
    return lines


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
