"""Which images may be ranked against each other, and why the others are not.

An overall score is a weighted mean of the rubric dimensions that could be scored. Two images
scored on different sets of dimensions, or one of them missing facts its distribution's
documentation guarantees (the report's ``completeness`` section), are not comparable on that
number: ranking them silently would compare unlike things. So an image is **ranked** only when
every rubric dimension was scored and its completeness is not ``incomplete``; every other image
keeps its score but gets no rank, and a ``note`` (long) and a ``marker`` (short, for charts) say
why. Images whose completeness could not be checked (``unknown``: no distribution recognised, or
a report from before the completeness section, ``not checked``) are ranked, and their marker says
so.

Ranks are competition ranks over images, not files (1 = most immutable; equal scores share a rank,
the next rank skips; one image read in several forms, raw and lz4, counts once).
Pure Python: the ``ranking`` frame (``immutools.analysis.frames``) and the charts build on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from immutools.analysis.loading import as_dict, as_list

# Completeness status values: the report schema's, plus "not checked" for reports from before the
# completeness section existed.
COMPLETENESS_STATES = ("complete", "incomplete", "unknown", "not checked")
# Two overall scores closer than this are equal (for ties in a rank).
TIE = 1e-9


@dataclass
class Completeness:
    """The ``completeness`` section of one report, summarised."""

    status: str                               # one of COMPLETENESS_STATES
    distribution: str | None = None           # the distribution whose guarantees were checked
    distribution_name: str | None = None
    expected: int = 0
    observed: int = 0
    inferred: int = 0
    missing: int = 0
    missing_facts: list[str] = field(default_factory=list)
    inferred_facts: list[str] = field(default_factory=list)
    facts: list[dict] = field(default_factory=list)   # the section's fact rows as they are

    @property
    def text(self) -> str:
        """One line: ``complete: 11 of 11 guaranteed facts observed`` and the like."""
        if self.status == "not checked":
            return "not checked (the report predates the completeness section)"
        if self.status == "unknown":
            return "unknown (no distribution recognised: no guaranteed facts to check)"
        bits = [f"{self.observed} of {self.expected} guaranteed facts observed"]
        if self.inferred:
            bits.append(f"{self.inferred} inferred from documented defaults")
        if self.missing:
            bits.append(f"{self.missing} missing ({', '.join(self.missing_facts)})")
        return f"{self.status}: " + ", ".join(bits)


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def completeness_of(report: dict) -> Completeness:
    """The completeness summary of a report (``not checked`` when it has no such section).

    The counts are recomputed from the fact rows when there are any, so a hand-edited report
    cannot claim ``complete`` with a missing fact."""
    section = report.get("completeness")
    if not isinstance(section, dict):
        return Completeness("not checked")
    facts = [f for f in as_list(section.get("facts")) if isinstance(f, dict)]
    status = section.get("status") if section.get("status") in COMPLETENESS_STATES else "unknown"
    out = Completeness(status, section.get("distribution") if isinstance(section.get("distribution"), str) else None,
                       section.get("distribution_name") if isinstance(section.get("distribution_name"), str) else None,
                       facts=facts)
    if facts:
        by = {s: [str(f.get("fact")) for f in facts if f.get("status") == s] for s in ("observed", "inferred", "missing")}
        out.expected, out.observed, out.inferred, out.missing = (len(facts), len(by["observed"]), len(by["inferred"]),
                                                                 len(by["missing"]))
        out.missing_facts, out.inferred_facts = by["missing"], by["inferred"]
    else:
        out.expected, out.observed = _count(section.get("expected")), _count(section.get("observed"))
        out.inferred, out.missing = _count(section.get("inferred")), _count(section.get("missing"))
    if out.missing and out.status != "incomplete":
        out.status = "incomplete"         # the schema's rule: incomplete when anything is missing
    return out


@dataclass
class Standing:
    """One image's overall score and whether it may be ranked."""

    image: str
    score: float                          # NaN when no dimension could be scored
    dimensions_scored: int
    dimensions_total: int
    coverage: float                       # share of the rubric's total weight that was scored
    completeness: Completeness
    ranked: bool = False
    rank: int | None = None
    note: str = ""                        # why it is not ranked, or what to know about its rank
    marker: str = ""                      # the same, short, for charts and tables
    base: str = ""                        # the image id without its form (forms of one image rank once)

    @property
    def rank_text(self) -> str:
        """``3`` / ``3 (completeness unknown)`` / ``not ranked: ...``."""
        if self.ranked:
            return f"{self.rank}" + (f" ({self.marker})" if self.marker else "")
        return f"not ranked: {self.marker}"


def standing(image: str, score_result, report: dict, base: str | None = None) -> Standing:
    """The standing of one image from its ``rubric.ScoreResult`` and its report."""
    dims = score_result.dimensions
    scored = [d for d in dims if not math.isnan(d.score)]
    comp = completeness_of(report)
    st = Standing(image, score_result.overall, len(scored), len(dims), score_result.coverage, comp, base=base or image)
    reasons, short = [], []
    if math.isnan(score_result.overall):
        reasons.append("no rubric dimension could be scored")
        short.append("not scored")
    elif len(scored) < len(dims):
        unscored = [d.id for d in dims if math.isnan(d.score)]
        reasons.append(f"scored on {len(scored)} of {len(dims)} rubric dimensions "
                       f"({100 * score_result.coverage:.0f}% of the weight; not scored: {', '.join(unscored)})")
        short.append(f"{len(scored)}/{len(dims)} dimensions")
    if comp.status == "incomplete":
        reasons.append(f"incomplete: {comp.missing} guaranteed fact{'s' if comp.missing != 1 else ''} missing "
                       f"({', '.join(comp.missing_facts) or 'see the report'})")
        short.append(f"incomplete: {comp.missing} fact{'s' if comp.missing != 1 else ''} missing")
    st.ranked = not reasons
    if st.ranked and comp.status in ("unknown", "not checked"):
        st.note = f"ranked; completeness {comp.text}"
        st.marker = "completeness unknown" if comp.status == "unknown" else "completeness not checked"
    else:
        st.note = "; ".join(reasons)
        st.marker = "; ".join(short)
    return st


def assign_ranks(standings: list[Standing]) -> list[Standing]:
    """Competition ranks among the ranked standings, most immutable first (in place)."""
    ranked = [s for s in standings if s.ranked]
    for s in ranked:
        s.rank = 1 + len({o.base for o in ranked if o.score > s.score + TIE})
    return standings


def standings(loaded, rubric) -> list[Standing]:
    """The standing of every loaded report (``LoadedReport``s) under ``rubric``, ranks assigned."""
    return assign_ranks([standing(e.image_id, rubric.score(e.report), e.report, e.base_id) for e in loaded])


def distribution_name(report: dict) -> str | None:
    """The distribution's name as it spells itself: the completeness section's
    ``distribution_name`` (from ``data/distributions/<id>.yaml``), else os-release ``NAME``."""
    name = as_dict(report.get("completeness")).get("distribution_name")
    if isinstance(name, str) and name:
        return name
    name = as_dict(report.get("os")).get("name")
    return name if isinstance(name, str) and name else None
