"""The immutability spectrum: a transparent score computed from ``data/rubric.yaml``.

The rubric names report fields and maps their values to points through tables (the rule
language is documented at the top of the YAML file and in ``docs/frames.md``). This module
only interprets that language: it holds no knowledge of any distribution. Every dimension
score keeps a trail (which check read which value and what it gave) and the evidence copied
from the report rows it read.

The weight-sensitivity analysis lives in ``immutools.analysis.sensitivity``; this module knows
nothing of frames or of other images.

Pure Python (PyYAML for the file).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from immutools.analysis.loading import AnalysisUsageError, as_dict, as_list
from immutools.paths import data_dir

UNKNOWN = "unknown"
MEASURES = ("value", "count", "word")
COMBINES = ("mean", "min", "first")


class RubricError(AnalysisUsageError):
    """The rubric file is malformed (the message names the dimension and check)."""


# ------------------------------------------------------------------------------------------------
# field paths
# ------------------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)(?:\[(\*|[A-Za-z_][A-Za-z0-9_-]*=[^\]]*)\])?")


def parse_field(path: str) -> list[tuple[str, str | None]]:
    """``paths[path=/etc].state`` -> [("paths", "path=/etc"), ("state", None)]."""
    if not isinstance(path, str) or not path:
        raise RubricError(f"field path must be a non-empty string, not {path!r}")
    out, pos = [], 0
    while True:
        m = _SEGMENT.match(path, pos)
        if m is None:
            raise RubricError(f"bad field path {path!r} at character {pos}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos == len(path):
            return out
        if path[pos] != ".":
            raise RubricError(f"bad field path {path!r} at character {pos}")
        pos += 1


@dataclass
class Resolved:
    value: object                       # the value (a list when the path has [*])
    found: bool                         # False when some key along the path is missing
    holders: list[dict]                 # innermost objects carrying `evidence` along the path(s)


def resolve(report: dict, path: str) -> Resolved:
    """Follow a field path into a report (see the rubric file header for the syntax)."""
    return _resolve([(report, None)], parse_field(path), star=False)


def _resolve(nodes, segments, star: bool) -> Resolved:
    # nodes: list of (node, holder) pairs
    for name, selector in segments:
        nxt = []
        for node, holder in nodes:
            if not isinstance(node, dict) or name not in node:
                continue
            if isinstance(node.get("evidence"), list):
                holder = node
            child = node[name]
            if selector is None:
                nxt.append((child, holder))
            elif selector == "*":
                star = True
                nxt.extend((item, item if isinstance(as_dict(item).get("evidence"), list) else holder)
                           for item in as_list(child))
            else:
                key, want = selector.split("=", 1)
                match = next((item for item in as_list(child) if isinstance(item, dict) and _str(item.get(key)) == want), None)
                if match is not None:
                    nxt.append((match, match if isinstance(match.get("evidence"), list) else holder))
        nodes = nxt
        if not nodes:
            return Resolved([] if star else None, False, [])
    nodes = [(n, n if isinstance(n, dict) and isinstance(n.get("evidence"), list) else h) for n, h in nodes]
    holders = [h for _n, h in nodes if h is not None]
    if star:
        return Resolved([n for n, _h in nodes], True, holders)
    return Resolved(nodes[0][0], True, holders[:1])


def _str(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "null" if value is None else str(value)


# ------------------------------------------------------------------------------------------------
# the rubric model
# ------------------------------------------------------------------------------------------------

@dataclass
class Band:
    """A ``count`` table key: exact number, ``a-b`` or ``n+``."""

    low: float
    high: float
    text: str

    def __contains__(self, n) -> bool:
        return self.low <= n <= self.high


def _parse_band(key, where: str) -> Band:
    if isinstance(key, bool) or key is None:
        raise RubricError(f"{where}: count table key {key!r} is not a number or range")
    if isinstance(key, (int, float)):
        return Band(key, key, str(key))
    text = str(key).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*\+", text)
    if m:
        return Band(float(m.group(1)), math.inf, text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)", text)
    if m and float(m.group(1)) <= float(m.group(2)):
        return Band(float(m.group(1)), float(m.group(2)), text)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return Band(float(text), float(text), text)
    raise RubricError(f"{where}: count table key {key!r} is not a number, a range a-b or n+")


def _parse_points(value, where: str):
    if value == UNKNOWN:
        return UNKNOWN
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise RubricError(f"{where}: points must be a number from 0 to 100 or `unknown`, not {value!r}")
    return float(value)


@dataclass
class Check:
    label: str
    fields: list[str] = field(default_factory=list)
    measure: str = "value"
    table: list[tuple[object, object]] = field(default_factory=list)   # (key or Band, points)
    weight: float = 1.0
    evidence: list[str] = field(default_factory=list)
    alternatives: list["Check"] = field(default_factory=list)


@dataclass
class Dimension:
    id: str
    title: str
    question: str
    weight: float
    combine: str
    checks: list[Check]
    otherwise: object = UNKNOWN


@dataclass
class Family:
    name: str
    match: dict


@dataclass
class CheckOutcome:
    applies: bool
    points: object                      # float, UNKNOWN, or None when not applying
    trail: str
    values: list[str]
    evidence: list[dict]


@dataclass
class DimensionScore:
    id: str
    title: str
    weight: float
    score: float                        # NaN when unknown
    trail: list[str]
    values: list[str]
    evidence: list[dict]
    contribution: float = math.nan

    @property
    def value_text(self) -> str:
        return "; ".join(self.values)


@dataclass
class ScoreResult:
    dimensions: list[DimensionScore]
    overall: float
    scored_weight: float
    total_weight: float

    @property
    def coverage(self) -> float:
        return self.scored_weight / self.total_weight if self.total_weight else 0.0

    @property
    def summary(self) -> str:
        known = [d for d in self.dimensions if not math.isnan(d.score)]
        missing = [d.id for d in self.dimensions if math.isnan(d.score)]
        text = (f"weighted mean of {len(known)} of {len(self.dimensions)} dimensions "
                f"({100 * self.coverage:.0f}% of the total weight)")
        if missing:
            text += "; not scored (facts missing): " + ", ".join(missing)
        return text

    def by_id(self, dim_id: str) -> DimensionScore:
        return next(d for d in self.dimensions if d.id == dim_id)


class Rubric:
    def __init__(self, data: dict, source: str = "<dict>"):
        self.source = source
        self.data = data
        if not isinstance(data, dict):
            raise RubricError(f"{source}: the rubric must be a mapping")
        dims = data.get("dimensions")
        if not isinstance(dims, dict) or not dims:
            raise RubricError(f"{source}: `dimensions` must be a non-empty mapping")
        self.dimensions = [self._dimension(k, v) for k, v in dims.items()]
        ref = as_dict(data.get("reference_order"))
        self.reference_source = str(ref.get("source", ""))
        self.families = []
        for n, fam in enumerate(as_list(ref.get("families"))):
            if not isinstance(fam, dict) or not isinstance(fam.get("name"), str) or not isinstance(fam.get("match"), dict):
                raise RubricError(f"{source}: reference_order.families[{n}] needs a name and a match mapping")
            for path in fam["match"]:
                parse_field(path)
            self.families.append(Family(fam["name"], dict(fam["match"])))
        factors = as_dict(data.get("sensitivity")).get("factors", [0.5, 1.5])
        if not isinstance(factors, list) or not all(isinstance(f, (int, float)) and f > 0 for f in factors):
            raise RubricError(f"{source}: sensitivity.factors must be a list of positive numbers")
        self.factors = [float(f) for f in factors]

    # -- parsing ------------------------------------------------------------------------------
    def _dimension(self, dim_id, spec) -> Dimension:
        where = f"{self.source}: dimension {dim_id}"
        if not isinstance(spec, dict):
            raise RubricError(f"{where}: must be a mapping")
        weight = spec.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise RubricError(f"{where}: weight must be a number >= 0")
        combine = spec.get("combine", "mean")
        if combine not in COMBINES:
            raise RubricError(f"{where}: combine must be one of {', '.join(COMBINES)}")
        checks = as_list(spec.get("checks"))
        if not checks:
            raise RubricError(f"{where}: needs at least one check")
        otherwise = spec.get("otherwise", UNKNOWN)
        otherwise = _parse_points(otherwise, f"{where}: otherwise")
        unknown_keys = set(spec) - {"title", "question", "weight", "combine", "checks", "otherwise"}
        if unknown_keys:
            raise RubricError(f"{where}: unknown keys {sorted(unknown_keys)}")
        return Dimension(str(dim_id), str(spec.get("title", dim_id)), str(spec.get("question", "")), float(weight),
                         combine, [self._check(c, f"{where}, check {n + 1}") for n, c in enumerate(checks)], otherwise)

    def _check(self, spec, where: str) -> Check:
        if not isinstance(spec, dict):
            raise RubricError(f"{where}: must be a mapping")
        unknown_keys = set(spec) - {"label", "field", "fields", "measure", "points", "weight", "evidence", "first"}
        if unknown_keys:
            raise RubricError(f"{where}: unknown keys {sorted(unknown_keys)}")
        label = str(spec.get("label") or spec.get("field") or "check")
        weight = spec.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise RubricError(f"{where}: weight must be a number >= 0")
        evidence = as_list(spec.get("evidence")) if "evidence" in spec else []
        if "evidence" in spec and not isinstance(spec["evidence"], list):
            raise RubricError(f"{where}: evidence must be a list of field paths")
        for path in evidence:
            parse_field(path)
        if "first" in spec:
            if any(k in spec for k in ("field", "fields", "points", "measure")):
                raise RubricError(f"{where}: a `first` check has no field/points of its own")
            alts = as_list(spec["first"])
            if not alts:
                raise RubricError(f"{where}: `first` needs a list of checks")
            return Check(label, weight=float(weight), evidence=evidence,
                         alternatives=[self._check(a, f"{where}, alternative {n + 1}") for n, a in enumerate(alts)])
        if ("field" in spec) == ("fields" in spec):
            raise RubricError(f"{where}: give exactly one of `field` or `fields`")
        fields = [spec["field"]] if "field" in spec else as_list(spec["fields"])
        if not fields:
            raise RubricError(f"{where}: `fields` is empty")
        for path in fields:
            parse_field(path)
        measure = spec.get("measure", "value")
        if measure not in MEASURES:
            raise RubricError(f"{where}: measure must be one of {', '.join(MEASURES)}")
        points = spec.get("points")
        if not isinstance(points, dict) or not points:
            raise RubricError(f"{where}: points must be a non-empty table")
        table = []
        for key, pts in points.items():
            key = _parse_band(key, where) if measure == "count" and key is not None else key
            table.append((key, _parse_points(pts, f"{where}: points for {key!r}")))
        return Check(label, [str(f) for f in fields], measure, table, float(weight), evidence)

    # -- scoring ------------------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        return {d.id: d.weight for d in self.dimensions}

    def score(self, report: dict) -> ScoreResult:
        return combine_overall(self.score_dimensions(report), self.weights)

    def score_dimensions(self, report: dict) -> list[DimensionScore]:
        """Each dimension's score for ``report`` (no overall: see ``combine_overall``)."""
        return [self._score_dimension(d, report) for d in self.dimensions]

    def _score_dimension(self, dim: Dimension, report: dict) -> DimensionScore:
        outcomes = []
        decided = None
        for check in dim.checks:
            out = self._run_check(check, report)
            outcomes.append(out)
            if dim.combine == "first" and out.applies:
                decided = out
                break
        trail, values, evidence = [], [], []
        for out in outcomes:
            trail.append(out.trail)
            values.extend(v for v in out.values if v not in values)
        used = [o for o in outcomes if o.applies]
        numeric = [(o, c) for o, c in zip(outcomes, dim.checks) if o.applies and o.points != UNKNOWN]
        if dim.combine == "first":
            score = decided.points if decided is not None else dim.otherwise
            used = [decided] if decided is not None else []
        elif dim.combine == "min":
            score = min((o.points for o, _c in numeric), default=dim.otherwise)
        else:
            total = sum(c.weight for _o, c in numeric)
            score = (sum(o.points * c.weight for o, c in numeric) / total) if total else dim.otherwise
        if decided is None and dim.combine == "first" and score != UNKNOWN:
            trail.append(f"no check applies: otherwise {score:g}")
        elif not used and score == UNKNOWN:
            trail.append("no check applies: not scored")
        for o in used:
            for ev in o.evidence:
                if ev not in evidence:
                    evidence.append(ev)
        score = math.nan if score == UNKNOWN else float(score)
        return DimensionScore(dim.id, dim.title, dim.weight, score, trail, values, evidence)

    def _run_check(self, check: Check, report: dict) -> CheckOutcome:
        if check.alternatives:
            tried = []
            for alt in check.alternatives:
                out = self._run_check(alt, report)
                tried.append(out)
                if out.applies:
                    ev = _collect_evidence(report, check.evidence) or out.evidence
                    return CheckOutcome(True, out.points, f"{check.label}: {out.trail}", out.values, ev)
            return CheckOutcome(False, None, f"{check.label}: " + "; ".join(t.trail for t in tried),
                                [v for t in tried for v in t.values], [])
        results, values, holders = [], [], []
        for path in check.fields:
            res = resolve(report, path)
            value = _measure(res, check.measure)
            shown = _show(value)
            values.append(f"{path}={shown}")
            key, points = _lookup(check, value)
            results.append((path, shown, key, points))
            if points is not None:
                holders.extend(res.holders)
        applying = [r for r in results if r[3] is not None]
        if len(check.fields) == 1:
            path, shown, key, points = results[0]
            if points is None:
                return CheckOutcome(False, None, f"{check.label}: {path} = {shown}: not in the table, does not apply", values, [])
            trail = f"{check.label}: {path} = {shown} -> {_show_points(points)}"
        else:
            if not applying:
                return CheckOutcome(False, None, f"{check.label}: none of {len(results)} fields in the table", values, [])
            numeric = [r[3] for r in applying if r[3] != UNKNOWN]
            points = (sum(numeric) / len(numeric)) if numeric else UNKNOWN
            parts = ", ".join(f"{p.split('[', 1)[-1].split(']')[0] if '[' in p else p}={s}" for p, s, _k, _pt in results)
            trail = f"{check.label}: mean of {len(numeric)} fields ({parts}) -> {_show_points(points)}"
        evidence = _collect_evidence(report, check.evidence) if check.evidence else []
        if not evidence:
            evidence = _holder_evidence(holders)
        return CheckOutcome(True, points, trail, values, evidence)

    # -- families (for the reference ordering only) -------------------------------------------
    def family_of(self, report: dict) -> str | None:
        for fam in self.families:
            if all(_matches(resolve(report, path), want) for path, want in fam.match.items()):
                return fam.name
        return None

    def with_weights(self, weights: dict[str, float]) -> "Rubric":
        data = dict(self.data)
        data["dimensions"] = {k: dict(v, weight=weights.get(k, v["weight"])) for k, v in self.data["dimensions"].items()}
        return Rubric(data, self.source)


def _matches(res: Resolved, want) -> bool:
    return res.found and _str(res.value) == _str(want)


def _measure(res: Resolved, measure: str):
    value = res.value if res.found else None
    if measure == "count":
        if isinstance(value, (list, dict)):
            return len(value)
        return None
    if measure == "word":
        if not isinstance(value, str):
            return None
        m = re.match(r"\s*([A-Za-z0-9_-]+)", value)
        return m.group(1).lower() if m else None
    if isinstance(value, (list, dict)):
        return value            # never in a table: the check does not apply
    return value


def _same(key, value) -> bool:
    # YAML `true`/`1`: bool and int must not match each other (True == 1 in Python).
    if isinstance(key, bool) or isinstance(value, bool):
        return isinstance(key, bool) and isinstance(value, bool) and key == value
    if key is None or value is None:
        return key is None and value is None
    if isinstance(key, (int, float)) and isinstance(value, (int, float)):
        return key == value
    return isinstance(key, str) and isinstance(value, str) and key == value


def _lookup(check: Check, value):
    for key, points in check.table:
        if isinstance(key, Band):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value in key:
                return key.text, points
        elif _same(key, value):
            return key, points
    return None, None


def _show(value) -> str:
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return _str(value)


def _show_points(points) -> str:
    return UNKNOWN if points == UNKNOWN else f"{points:g}"


def _holder_evidence(holders: list[dict]) -> list[dict]:
    out = []
    for h in holders:
        for ev in as_list(h.get("evidence")):
            if isinstance(ev, dict) and ev not in out:
                out.append(ev)
    return out


def _collect_evidence(report: dict, paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        res = resolve(report, path)
        if not res.found:
            continue
        items = res.value if isinstance(res.value, list) else [res.value]
        for item in items:
            for ev in (item if isinstance(item, list) else [item]):
                if isinstance(ev, dict) and "source" in ev and ev not in out:
                    out.append(ev)
    return out


def combine_overall(dims: list[DimensionScore], weights: dict[str, float]) -> ScoreResult:
    """The overall score: the weighted mean of the dimensions that could be scored."""
    total = sum(weights.get(d.id, d.weight) for d in dims)
    scored = [(d, weights.get(d.id, d.weight)) for d in dims if not math.isnan(d.score)]
    scored_weight = sum(w for _d, w in scored)
    overall = sum(d.score * w for d, w in scored) / scored_weight if scored_weight else math.nan
    for d in dims:
        w = weights.get(d.id, d.weight)
        d.contribution = (d.score * w / scored_weight) if scored_weight and not math.isnan(d.score) else math.nan
    return ScoreResult(dims, overall, scored_weight, total)


def rubric_path() -> Path:
    return data_dir() / "rubric.yaml"


def load_rubric(path: str | Path | None = None) -> Rubric:
    """Load and validate a rubric file (default ``data/rubric.yaml``)."""
    import yaml

    path = Path(path) if path is not None else rubric_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RubricError(f"{path}: cannot read rubric: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RubricError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return Rubric(data, str(path))
