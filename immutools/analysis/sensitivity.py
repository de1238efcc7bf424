"""How much the ranking depends on the rubric's weights.

``sensitivity(...)`` multiplies each dimension weight by each of the rubric's factors (x0.5, x1.5)
in turn and reports how the ranking of the images, and the order of the reference families (the
article's ordering), change. It states what it finds; it never adjusts anything to fit.

Only **ranked** images take part (``immutools.analysis.ranking``: every dimension scored, and no
guaranteed fact missing): an image scored on fewer dimensions, or missing facts, is listed in
``excluded`` and named in the summary instead of being ranked silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from immutools.analysis.loading import AnalysisUsageError, LoadedReport, entries
from immutools.analysis.ranking import standings
from immutools.analysis.rubric import Rubric, combine_overall, load_rubric


def change_label(rubric: Rubric, dimension: str, factor: float) -> str:
    """A weight change in words: ``Read-only scope of the OS: weight x0.5 (20 -> 10)``."""
    if dimension == "baseline":
        return "the rubric's weights (baseline)"
    dim = next((d for d in rubric.dimensions if d.id == dimension), None)
    if dim is None:
        return f"{dimension}: weight x{factor:g}"
    return f"{dim.title}: weight x{factor:g} ({dim.weight:g} -> {dim.weight * factor:g})"


@dataclass
class Sensitivity:
    """What moving each weight does. ``table``: one row per weight change (and the baseline)."""

    table: object                       # pandas DataFrame
    baseline: dict                      # image id -> overall score
    families: dict                      # image id -> reference family (or None)
    reference: list[str]                # reference family order, most mutable first
    present_families: list[str]         # reference families present in the data, reference order
    reference_checkable: bool
    reference_holds_at_baseline: bool | None
    reference_robust: bool | None       # holds at baseline and under every change
    ranking_robust: bool                # no pair of images swaps order under any change
    summary: str
    excluded: dict = field(default_factory=dict)   # image id -> why it is left out of every ranking


def _ranking(scores: dict[str, float]) -> list[str]:
    return sorted((i for i in scores if not math.isnan(scores[i])), key=lambda i: (scores[i], i))


def _flipped_pairs(base: dict, new: dict) -> list[tuple[str, str]]:
    ids = [i for i in base if not math.isnan(base[i]) and not math.isnan(new.get(i, math.nan))]
    out = []
    for n, a in enumerate(ids):
        for b in ids[n + 1:]:
            d0, d1 = base[a] - base[b], new[a] - new[b]
            # A strict order that reverses, or becomes a tie, or a tie that splits, all count.
            if (d0 > 1e-9 and d1 <= 1e-9) or (d0 < -1e-9 and d1 >= -1e-9) or (abs(d0) <= 1e-9 and abs(d1) > 1e-9):
                out.append((a, b))
    return out


def _family_scores(scores: dict, families: dict) -> dict[str, float]:
    import statistics

    groups: dict[str, list[float]] = {}
    for image, fam in families.items():
        if fam is not None and not math.isnan(scores.get(image, math.nan)):
            groups.setdefault(fam, []).append(scores[image])
    return {fam: statistics.median(vals) for fam, vals in groups.items()}


def _reference_holds(fam_scores: dict, order: list[str]) -> bool | None:
    present = [f for f in order if f in fam_scores]
    if len(present) < 2:
        return None
    return all(fam_scores[a] < fam_scores[b] - 1e-9 for a, b in zip(present, present[1:]))


def sensitivity(reports, rubric: Rubric | None = None) -> Sensitivity:
    """Move each dimension weight by each of the rubric's factors; report what changes.

    ``reports``: anything ``frames`` accepts (``Frames``, ``LoadedReport``s, report dicts).
    The reference families come from the rubric's ``reference_order`` (matched on report fields);
    a family's score is the median of its images' overall scores.
    """
    import pandas as pd

    rubric = rubric if rubric is not None else load_rubric()
    loaded: list[LoadedReport] = entries(reports)
    if not loaded:
        raise AnalysisUsageError("sensitivity needs at least one report")
    excluded = {s.image: s.note for s in standings(loaded, rubric) if not s.ranked}
    kept = [e for e in loaded if e.image_id not in excluded]
    dims = {e.image_id: rubric.score_dimensions(e.report) for e in kept}
    families = {e.image_id: rubric.family_of(e.report) for e in kept}
    reference = [f.name for f in rubric.families]
    base_w = rubric.weights

    def overall(weights):
        return {i: combine_overall(ds, weights).overall for i, ds in dims.items()}

    base = overall(base_w)
    base_rank = _ranking(base)
    base_fam = _family_scores(base, families)
    present = [f for f in reference if f in base_fam]
    rows = []

    def row(dimension, factor, scores):
        ranking = _ranking(scores)
        fam = _family_scores(scores, families)
        flipped = _flipped_pairs(base, scores)
        shift = max((abs(ranking.index(i) - base_rank.index(i)) for i in ranking if i in base_rank), default=0)
        fam_order = sorted(fam, key=lambda f: (fam[f], f))
        return {
            "dimension": dimension, "factor": factor,
            "weight": base_w.get(dimension, math.nan) * factor if dimension in base_w else math.nan,
            "change": "baseline" if dimension == "baseline" else f"{dimension} x{factor:g}",
            "label": change_label(rubric, dimension, factor),
            "ranking": ranking, "family_order": " < ".join(fam_order) or None,
            "family_scores": {f: round(s, 2) for f, s in fam.items()},
            "reference_holds": _reference_holds(fam, reference),
            "pairs_flipped": len(flipped), "flipped": flipped, "max_rank_shift": shift,
        }

    rows.append(row("baseline", 1.0, base))
    for d in rubric.dimensions:
        for factor in rubric.factors:
            rows.append(row(d.id, factor, overall(dict(base_w, **{d.id: d.weight * factor}))))
    table = pd.DataFrame(rows)
    table["reference_holds"] = table["reference_holds"].astype("boolean")
    changes = table.iloc[1:]
    ranking_robust = bool((changes["pairs_flipped"] == 0).all())
    checkable = len(present) >= 2
    holds0 = rows[0]["reference_holds"]
    robust = None
    if checkable:
        robust = bool(holds0) and bool(changes["reference_holds"].fillna(False).all())

    lines = []
    ref_text = " < ".join(reference) if reference else "(none)"
    if not reference:
        lines.append("No reference ordering in the rubric.")
    elif not checkable:
        seen = ", ".join(present) or "none"
        lines.append(f"Reference ordering ({ref_text}, most mutable first): cannot be checked on this data: "
                     f"reference families present: {seen}; at least two are needed.")
    elif holds0 is False:
        wrong = [f"{a} {base_fam[a]:.1f} is not below {b} {base_fam[b]:.1f}"
                 for a, b in zip(present, present[1:]) if not base_fam[a] < base_fam[b] - 1e-9]
        rescued = [r["label"] for r in rows[1:] if r["reference_holds"] is True]
        lines.append(f"Reference ordering ({ref_text}) does NOT hold on this data at the rubric's weights: "
                     f"computed family order {rows[0]['family_order']} "
                     f"(median scores {', '.join(f'{f} {s:.1f}' for f, s in sorted(base_fam.items(), key=lambda x: x[1]))}); "
                     f"out of order: {'; '.join(wrong)}. It holds under {len(rescued)} of {len(rows) - 1} weight changes"
                     + (f" ({'; '.join(rescued)})." if rescued else "."))
    else:
        broken = [r["label"] for r in rows[1:] if r["reference_holds"] is not True]
        restricted = " < ".join(present)
        if not broken:
            lines.append(f"Reference ordering of the families present ({restricted}) holds at the rubric's weights "
                         f"and under all {len(rows) - 1} weight changes (each weight x{', x'.join(f'{f:g}' for f in rubric.factors)}).")
        else:
            lines.append(f"Reference ordering of the families present ({restricted}) holds at the rubric's weights "
                         f"but breaks under {len(broken)} of {len(rows) - 1} weight changes: {'; '.join(broken)}.")
    n_images = len([i for i in base if not math.isnan(base[i])])
    if ranking_robust:
        lines.append(f"Ranking of the {n_images} images: unchanged under every weight change.")
    else:
        moved = changes[changes["pairs_flipped"] > 0]
        worst = moved.sort_values("pairs_flipped", ascending=False).iloc[0]
        lines.append(f"Ranking of the {n_images} images: changes under {len(moved)} of {len(changes)} weight changes; "
                     f"most under {worst['label']} ({worst['pairs_flipped']} image pairs change order, "
                     f"largest shift {worst['max_rank_shift']} places).")
    if excluded:
        lines.append(f"Not ranked, so left out of every ranking above ({len(excluded)}): "
                     + "; ".join(f"{image}: {why}" for image, why in excluded.items()) + ".")
    return Sensitivity(table, base, families, reference, present, checkable, holds0, robust, ranking_robust,
                       "\n".join(lines), excluded)
