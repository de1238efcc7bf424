"""The immutability rubric (data/rubric.yaml) and its sensitivity check.

Compared against: hand-edited copies of a real scan report (each edit must move the named
dimension, and the overall score, in the right direction), an independent re-computation of the
weighted scores and rank changes for the sensitivity table, and the report rows the evidence was
copied from.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics

import pandas as pd
import pytest
import yaml

from incomplete_reports import incomplete
from report_variants import add_package_manager, base_report, drop_login, set_path_state, variants

from immutools import frames
from immutools.analysis.rubric import Rubric, RubricError, load_rubric, resolve, rubric_path
from immutools.analysis.sensitivity import sensitivity

GENERIC_SECTIONS = {"os", "mounts", "paths", "surface", "update", "integrity"}


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


def score(report, rubric):
    return rubric.score(report)


def dim(report, rubric, name):
    return rubric.score(report).by_id(name).score


def all_checks(checks):
    for c in checks:
        yield c
        yield from all_checks(c.alternatives)


# ------------------------------------------------------------------------------------------------
# the file itself
# ------------------------------------------------------------------------------------------------

def test_rubric_reads_only_generic_fields_and_named_optional_ones(rubric):
    """No rule keys on a distribution: only generic sections, plus optional distribution fields
    that are labelled as optional in the check."""
    for d in rubric.dimensions:
        for check in all_checks(d.checks):
            for field in check.fields + check.evidence:
                top = field.split(".")[0].split("[")[0]
                assert top in GENERIC_SECTIONS | {"distribution"}, (d.id, field)
                assert field not in ("os.id", "os.name", "distribution.name", "os.collector"), (d.id, field)
                if top == "distribution" and field in check.fields:
                    assert "optional field" in check.label, (d.id, field)
            for key, _points in check.table:
                assert key not in ("flatcar", "bottlerocket", "talos", "fedora"), (d.id, key)


def test_weights_and_dimensions(rubric):
    ids = [d.id for d in rubric.dimensions]
    for needed in ("readonly_scope", "integrity", "persistent_surface", "etc_handling", "modification_channels",
                   "management", "updates", "mac"):
        assert needed in ids
    assert all(d.weight > 0 for d in rubric.dimensions)
    assert rubric.factors == [0.5, 1.5]
    assert [f.name for f in rubric.families] == ["rpm-ostree", "Flatcar", "Bottlerocket", "Talos"]


def test_every_score_is_in_range_and_explained(rubric):
    for entry in frames.load().reports:
        result = rubric.score(entry.report)
        assert 0 <= result.overall <= 100
        for d in result.dimensions:
            assert math.isnan(d.score) or 0 <= d.score <= 100
            assert d.trail, d.id
        assert math.isclose(sum(d.contribution for d in result.dimensions if not math.isnan(d.score)), result.overall)


def test_evidence_is_copied_from_the_rows_used(rubric):
    report = base_report()
    result = rubric.score(report)
    etc = result.by_id("etc_handling")
    etc_mount = next(m for m in report["mounts"] if m["target"] == "/etc")
    assert etc.evidence and all(ev in etc_mount["evidence"] for ev in etc.evidence)
    scope = result.by_id("readonly_scope")
    rows = [p for p in report["paths"] if p["path"] in ("/usr", "/", "/opt", "/boot")]
    assert scope.evidence and all(any(ev in r["evidence"] for r in rows) for ev in scope.evidence)
    channels = result.by_id("modification_channels")
    shell_ev = report["surface"]["shell_details"][0]["evidence"][0]
    assert shell_ev in channels.evidence


# ------------------------------------------------------------------------------------------------
# direction: edits of a real report move the right dimension the right way
# ------------------------------------------------------------------------------------------------

def test_adding_a_package_manager_lowers_the_score(rubric):
    before = base_report()
    after = add_package_manager(copy.deepcopy(before))
    assert dim(after, rubric, "modification_channels") < dim(before, rubric, "modification_channels")
    assert score(after, rubric).overall < score(before, rubric).overall


def test_volatile_etc_raises_the_etc_dimension(rubric):
    before = base_report()
    after = set_path_state(copy.deepcopy(before), "/etc", "volatile")
    assert dim(after, rubric, "etc_handling") > dim(before, rubric, "etc_handling")
    assert dim(after, rubric, "persistent_surface") > dim(before, rubric, "persistent_surface")
    assert score(after, rubric).overall > score(before, rubric).overall


def test_plain_persistent_etc_scores_below_an_overlay(rubric):
    overlay = base_report()
    plain = copy.deepcopy(overlay)
    plain["mounts"] = [m for m in plain["mounts"] if m["target"] != "/etc"]
    assert dim(plain, rubric, "etc_handling") < dim(overlay, rubric, "etc_handling")


def test_no_login_raises_management_and_channels(rubric):
    before = base_report()
    after = drop_login(copy.deepcopy(before))
    assert dim(after, rubric, "management") > dim(before, rubric, "management")
    assert dim(after, rubric, "modification_channels") > dim(before, rubric, "modification_channels")


def test_read_only_root_raises_scope(rubric):
    before = base_report()
    after = set_path_state(copy.deepcopy(before), "/", "read-only")
    assert dim(after, rubric, "readonly_scope") > dim(before, rubric, "readonly_scope")


def test_losing_verity_lowers_integrity(rubric):
    before = base_report()
    after = copy.deepcopy(before)
    after["integrity"]["verity"] = False
    for m in after["mounts"]:
        m["integrity"] = "none"
    assert dim(after, rubric, "integrity") == 0 < dim(before, rubric, "integrity")


def test_enforcing_selinux_and_enforced_module_signatures(rubric):
    before = base_report()
    after = copy.deepcopy(before)
    after["surface"]["selinux"] = "enforcing"
    after["surface"]["kernel_modules"]["signature_enforced"] = True
    assert dim(after, rubric, "mac") > dim(before, rubric, "mac")
    assert dim(after, rubric, "modification_channels") > dim(before, rubric, "modification_channels")


def test_package_manager_updates_score_below_ab_updates(rubric):
    before = base_report()
    after = copy.deepcopy(before)
    after["update"]["mechanism"] = "package-manager"
    after["update"]["rollback"] = "none"
    after["update"]["slots"] = []
    assert dim(after, rubric, "updates") < dim(before, rubric, "updates")


def test_missing_facts_are_not_scored_and_the_weights_renormalise(rubric):
    report = base_report()
    report["surface"] = None
    result = rubric.score(report)
    for name in ("mac", "management"):
        assert math.isnan(result.by_id(name).score), name
    known = [d for d in result.dimensions if not math.isnan(d.score)]
    want = sum(d.score * d.weight for d in known) / sum(d.weight for d in known)
    assert math.isclose(result.overall, want)
    assert result.coverage < 1


# ------------------------------------------------------------------------------------------------
# the rule language
# ------------------------------------------------------------------------------------------------

def rubric_of(checks, combine="mean", otherwise=None):
    spec = {"weight": 1, "combine": combine, "checks": checks}
    if otherwise is not None:
        spec["otherwise"] = otherwise
    return Rubric({"dimensions": {"d": spec}})


def one(r, report):
    return r.score(report).by_id("d")


def test_count_bands_and_ranges():
    r = rubric_of([{"field": "xs", "measure": "count", "points": {0: 100, "1-2": 50, "3+": 0}}])
    assert [one(r, {"xs": list(range(n))}).score for n in (0, 1, 2, 3, 9)] == [100, 50, 50, 0, 0]
    assert math.isnan(one(r, {}).score)          # missing field: the check does not apply


def test_booleans_are_not_numbers():
    numeric = rubric_of([{"field": "x", "points": {1: 10}}])
    boolean = rubric_of([{"field": "x", "points": {True: 100}}])
    assert one(numeric, {"x": 1}).score == 10
    assert math.isnan(one(numeric, {"x": True}).score)        # True == 1 in Python, not here
    assert one(boolean, {"x": True}).score == 100
    assert math.isnan(one(boolean, {"x": 1}).score)
    assert math.isnan(one(boolean, {"x": "true"}).score)


def test_first_cascade_unknown_and_otherwise():
    checks = [{"field": "a", "points": {"x": 10, None: "unknown"}}, {"field": "b", "points": {"y": 70}}]
    r = rubric_of(checks, combine="first", otherwise=100)
    assert one(r, {"a": "x", "b": "y"}).score == 10
    assert math.isnan(one(r, {"b": "y"}).score)      # a is missing -> unknown decides
    assert one(r, {"a": "z", "b": "y"}).score == 70
    assert one(r, {"a": "z", "b": "z"}).score == 100  # nothing applies -> otherwise


def test_nested_first_and_min_and_word():
    r = rubric_of([{"first": [{"field": "k.loadable", "points": {False: 100}},
                              {"field": "k.signed", "points": {True: 80, False: 0}}]},
                   {"field": "note", "measure": "word", "points": {"automatic": 100, "manual": 40}}], combine="min")
    assert one(r, {"k": {"loadable": False}, "note": "Automatic: falls back"}).score == 100
    assert one(r, {"k": {"loadable": True, "signed": True}, "note": "manual, via a command"}).score == 40


def test_list_selectors():
    report = {"paths": [{"path": "/", "state": "persistent", "evidence": [{"source": "a", "observed": True}]},
                        {"path": "/etc", "state": "volatile", "evidence": [{"source": "b", "observed": True}]}]}
    res = resolve(report, "paths[path=/etc].state")
    assert res.value == "volatile" and res.holders[0]["path"] == "/etc"
    assert resolve(report, "paths[*].state").value == ["persistent", "volatile"]
    assert not resolve(report, "paths[path=/nope].state").found
    r = rubric_of([{"fields": ["paths[path=/].state", "paths[path=/etc].state"], "points": {"persistent": 0, "volatile": 100}}])
    d = one(r, report)
    assert d.score == 50 and {ev["source"] for ev in d.evidence} == {"a", "b"}


@pytest.mark.parametrize("spec, message", [
    ({"dimensions": {"d": {"checks": [{"field": "x", "points": {1: 1}}]}}}, "weight"),
    ({"dimensions": {"d": {"weight": 1, "checks": [{"field": "x", "measure": "sum", "points": {1: 1}}]}}}, "measure"),
    ({"dimensions": {"d": {"weight": 1, "checks": [{"field": "x..y", "points": {1: 1}}]}}}, "field path"),
    ({"dimensions": {"d": {"weight": 1, "checks": [{"field": "x", "points": {1: 120}}]}}}, "0 to 100"),
    ({"dimensions": {"d": {"weight": 1, "checks": [{"field": "x", "measure": "count", "points": {"many": 1}}]}}}, "count table key"),
    ({"dimensions": {"d": {"weight": 1, "combine": "max", "checks": [{"field": "x", "points": {1: 1}}]}}}, "combine"),
    ({"dimensions": {"d": {"weight": 1, "checks": [{"field": "x", "points": {1: 1}, "code": "x"}]}}}, "unknown keys"),
    ({"dimensions": {}}, "dimensions"),
])
def test_bad_rubrics_are_refused_with_a_reason(spec, message):
    with pytest.raises(RubricError, match=message):
        Rubric(spec, "test.yaml")


def test_rubric_file_round_trip(tmp_path):
    data = yaml.safe_load(rubric_path().read_text())
    data["dimensions"]["mac"]["weight"] = 50
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    mine = load_rubric(path)
    assert mine.weights["mac"] == 50 and load_rubric().weights["mac"] != 50
    (tmp_path / "broken.yaml").write_text("dimensions: [\n")
    with pytest.raises(RubricError, match="not valid YAML"):
        load_rubric(tmp_path / "broken.yaml")


# ------------------------------------------------------------------------------------------------
# sensitivity
# ------------------------------------------------------------------------------------------------

def independent_overall(dim_scores: dict, weights: dict) -> float:
    known = {d: s for d, s in dim_scores.items() if not math.isnan(s)}
    return sum(s * weights[d] for d, s in known.items()) / sum(weights[d] for d in known)


def check_sensitivity_against_recomputation(reports, rubric):
    """Recompute every row of the sensitivity table from the scores frame, independently."""
    f = frames.frames_from(reports, rubric=rubric)
    sens = sensitivity(f, rubric)
    sc = f.scores[f.scores["dimension"] != "overall"]
    # Only comparable images take part: every dimension scored and no guaranteed fact missing.
    comparable = {e.image_id for e in f.reports
                  if not sc[sc["image"] == e.image_id]["score"].isna().any()
                  and (e.report.get("completeness") or {}).get("status") != "incomplete"}
    assert set(sens.excluded) == {e.image_id for e in f.reports} - comparable
    per_image = {img: dict(zip(g["dimension"].astype(str), g["score"])) for img, g in sc.groupby("image", observed=True)
                 if img in comparable}
    fam = {e.image_id: rubric.family_of(e.report) for e in f.reports}
    base_w = rubric.weights
    base = {i: independent_overall(s, base_w) for i, s in per_image.items()}
    order = [x.name for x in rubric.families]
    assert len(sens.table) == 1 + len(rubric.dimensions) * len(rubric.factors)
    for row in sens.table.itertuples():
        w = dict(base_w)
        if row.dimension != "baseline":
            w[row.dimension] = base_w[row.dimension] * row.factor
        new = {i: independent_overall(s, w) for i, s in per_image.items()}
        flips = sum(1 for a, b in itertools.combinations(new, 2)
                    if (base[a] - base[b]) * (new[a] - new[b]) < 0
                    or (abs(base[a] - base[b]) < 1e-9) != (abs(new[a] - new[b]) < 1e-9))
        assert row.pairs_flipped == flips, row.change
        medians = {}
        for img, s in new.items():
            if fam[img]:
                medians.setdefault(fam[img], []).append(s)
        medians = {k: statistics.median(v) for k, v in medians.items()}
        present = [x for x in order if x in medians]
        holds = None if len(present) < 2 else all(medians[a] < medians[b] for a, b in zip(present, present[1:]))
        got = None if pd.isna(row.reference_holds) else bool(row.reference_holds)
        assert got == holds, row.change
    return sens


def test_sensitivity_on_the_bundled_reports(rubric):
    f = frames.load()
    sens = check_sensitivity_against_recomputation(f.reports, rubric)
    present = {rubric.family_of(e.report) for e in f.reports} - {None}
    assert sens.reference_checkable == (len(present) >= 2)
    if not sens.reference_checkable:
        assert "cannot be checked" in sens.summary
    elif sens.reference_robust:
        assert "holds at the rubric's weights and under all" in sens.summary
    else:
        assert "does NOT hold" in sens.summary or "breaks under" in sens.summary


def test_sensitivity_with_four_families(rubric):
    reports = list(variants().values())
    sens = check_sensitivity_against_recomputation(reports, rubric)
    assert sens.reference_checkable
    assert sens.present_families == ["rpm-ostree", "Flatcar", "Bottlerocket", "Talos"]
    holds_everywhere = bool(sens.table["reference_holds"].all())
    assert sens.reference_robust == holds_everywhere
    assert ("under all 16 weight changes" in sens.summary) == holds_everywhere


def test_sensitivity_reports_a_ranking_that_breaks(rubric):
    """Two images that each win on a different dimension: moving one weight reorders them, and
    the output must say so (the test recomputes which changes do)."""
    a = base_report()
    a = set_path_state(a, "/etc", "volatile")                  # better /etc handling
    a["image"]["provenance"]["spec"] = "edited-a"
    b = base_report()
    b["surface"]["selinux"] = "enforcing"                      # better MAC
    b["surface"]["kernel_modules"]["signature_enforced"] = True
    b["image"]["provenance"]["spec"] = "edited-b"
    ra, rb = rubric.score(a), rubric.score(b)
    assert (ra.overall > rb.overall) != (ra.by_id("mac").score > rb.by_id("mac").score)   # they trade off
    # Pick a weighting where the order is a knife edge: scale the MAC weight until one step flips it.
    weights = dict(rubric.weights)
    gap = ra.overall - rb.overall
    for factor in (1.5, 2, 3, 4, 6, 8):
        w = dict(weights, mac=weights["mac"] * factor)
        if (independent_overall({d.id: d.score for d in ra.dimensions}, w)
                - independent_overall({d.id: d.score for d in rb.dimensions}, w)) * gap < 0:
            break
    edge = rubric.with_weights({"mac": weights["mac"] * factor / 1.5})
    sens = check_sensitivity_against_recomputation([a, b], edge)
    assert not sens.ranking_robust
    assert "changes under" in sens.summary
    assert sens.table.set_index("change").loc["mac x1.5", "pairs_flipped"] == 1


def test_sensitivity_says_when_the_reference_order_fails(rubric):
    """Swap which synthetic image claims to be Talos and which Bottlerocket: the reference order
    then fails on the data, and the output must say so (not hide or fix it)."""
    v = variants()
    v["synthetic-bottlerocket"]["os"]["id"], v["synthetic-talos"]["os"]["id"] = "talos", "bottlerocket"
    sens = check_sensitivity_against_recomputation(list(v.values()), rubric)
    assert sens.reference_holds_at_baseline is False and sens.reference_robust is False
    assert "does NOT hold" in sens.summary and "out of order: Bottlerocket" in sens.summary


def test_sensitivity_leaves_out_images_that_cannot_be_ranked(rubric):
    """An incomplete image and one scored on fewer dimensions take no part in the rankings the
    sensitivity check compares, and the summary names them with the reason."""
    v = variants()
    broken = incomplete(v["flatcar"], ("/", "/usr"), spec="flatcar-built-elsewhere")
    fewer = copy.deepcopy(v["synthetic-talos"])
    fewer["image"]["provenance"]["spec"] = "talos-without-surface"
    fewer["surface"] = None
    sens = check_sensitivity_against_recomputation(list(v.values()) + [broken, fewer], rubric)
    assert set(sens.excluded) == {"flatcar-built-elsewhere", "talos-without-surface"}
    assert "flatcar-built-elsewhere" not in sens.baseline and "talos-without-surface" not in sens.baseline
    assert all("flatcar-built-elsewhere" not in r for r in sens.table["ranking"])
    assert "Not ranked, so left out of every ranking above (2)" in sens.summary
    assert "incomplete: 2 guaranteed facts missing (mount /, mount /usr)" in sens.summary
    assert "scored on" in sens.summary and "not scored: " in sens.summary


def test_sensitivity_table_labels_each_change_in_words(rubric):
    sens = sensitivity(list(variants().values()), rubric)
    labels = dict(zip(sens.table["change"], sens.table["label"]))
    assert labels["baseline"] == "the rubric's weights (baseline)"
    for d in rubric.dimensions:
        for factor in rubric.factors:
            assert labels[f"{d.id} x{factor:g}"] == f"{d.title}: weight x{factor:g} ({d.weight:g} -> {d.weight * factor:g})"
