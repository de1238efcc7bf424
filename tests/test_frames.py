"""Frames: tidy tables from scan reports.

Compared against: the replica builder's manifest (partition offsets/sizes/labels as written by
sgdisk, the spec's expected update slots and OS facts) for frames built from live scans; the
report JSON itself for saved reports; and a fresh scan of each bundled replica for the saved
reports in data/reports (they must be up to date).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from incomplete_reports import as_form, incomplete
from replicas import build_replica, replica_manifest
from report_variants import REPORTS, base_report

from immutools import frames
from immutools.analysis.loading import ReportLoadError, bundled_image_for, normalize_for_saving, replica_form
from immutools.report.model import STANDARD_PATHS

REPO = Path(__file__).resolve().parent.parent
LIVE = ("flatcar-stable-4593-amd64-updated", "flatcar-stable-3227-arm64-pristine")
FRAME_NAMES = ("images", "partitions", "mounts", "paths", "surface", "update_slots", "completeness", "scores", "ranking")
# Columns that say where a report was loaded from, not what is in it.
WHERE_FROM = {"source", "source_kind", "image_path"}


@pytest.fixture(scope="module")
def bundled():
    return frames.load()


@pytest.fixture(scope="module")
def live():
    return frames.load([str(build_replica(name)) for name in LIVE])


def test_bundled_reports_exist_and_load(bundled):
    files = sorted(REPORTS.glob("*.json"))
    assert files, "data/reports is empty"
    assert len(bundled.reports) == len(files)
    assert list(bundled.images["image"]) == [json.loads(p.read_text())["image"]["provenance"]["spec"] for p in files]
    assert bundled.warnings == []


def test_every_frame_has_documented_columns(bundled):
    """docs/frames.md lists each frame's columns; the frames have exactly those, in that order."""
    doc = (REPO / "docs" / "frames.md").read_text()
    for name in FRAME_NAMES:
        section = re.search(rf"^## {name}\n(.*?)(?=^#)", doc, re.M | re.S)
        assert section, f"docs/frames.md has no section for {name}"
        documented = re.findall(r"^\| `([a-z_]+)` \|", section.group(1), re.M)
        assert documented == list(getattr(bundled, name).columns), name
        func = getattr(frames, f"{name}_frame")
        for col in documented:
            assert f"``{col}``" in func.__doc__, f"{name}_frame docstring does not mention {col}"


def test_frames_match_the_report_json(bundled):
    """Row counts and values come straight from the reports."""
    by_id = {e.image_id: e.report for e in bundled.reports}
    for image, report in by_id.items():
        parts = bundled.partitions[bundled.partitions["image"] == image]
        assert list(parts["number"]) == [p["number"] for p in report["partitions"]]
        assert list(parts["size"]) == [p["size"] for p in report["partitions"]]
        mounts = bundled.mounts[bundled.mounts["image"] == image]
        assert list(mounts["target"]) == [m["target"] for m in report["mounts"]]
        assert list(mounts["access"].astype(str)) == [m["access"] for m in report["mounts"]]
        paths = bundled.paths[bundled.paths["image"] == image]
        assert dict(zip(paths["path"], paths["state"].astype(str))) == {p["path"]: p["state"] for p in report["paths"]}
        slots = bundled.update_slots[bundled.update_slots["image"] == image]
        assert list(slots["slot"]) == [s["name"] for s in report["update"]["slots"]]
        surf = bundled.surface[bundled.surface["image"] == image]
        assert sorted(surf[surf["kind"] == "shell"]["item"]) == sorted(report["surface"]["shells"])
        assert sorted(surf[surf["kind"] == "setuid"]["item"]) == sorted(report["surface"]["setuid"])
        assert (surf["kind"] == "sshd").any() == report["surface"]["sshd"]
        assert sorted(surf[surf["kind"] == "package_manager"]["item"]) == sorted(report["surface"]["package_managers"])
        img = bundled.images.set_index("image").loc[image]
        assert img["os_version"] == report["os"]["version"]
        assert img["partition_count"] == len(report["partitions"])


def test_live_scans_match_the_replica_manifest(live):
    """Frames of freshly scanned replicas against what the builder wrote (its manifest)."""
    for name in LIVE:
        man = replica_manifest(name)
        parts = live.partitions[live.partitions["image"] == name].set_index("number")
        assert sorted(parts.index) == sorted(p["number"] for p in man["partitions"])
        for p in man["partitions"]:
            row = parts.loc[p["number"]]
            assert row["start"] == p["offset"] and row["size"] == p["size"] and row["label"] == p["label"], p["number"]
            assert row["end"] == p["offset"] + p["size"]
        expect = man["expect"]
        img = live.images.set_index("image").loc[name]
        assert img["os_version"] == expect["os"]["version"] and img["arch"] == expect["os"]["arch"]
        assert img["active_slot"] == expect["update"]["active_slot"]
        assert bool(img["replica"]) is True and img["replica_spec"] == name
        slots = live.update_slots[live.update_slots["image"] == name]
        got = [{"name": s.slot, "version": None if pd.isna(s.version) else s.version, "active": bool(s.active),
                "priority": int(s.priority), "tries": int(s.tries), "successful": bool(s.successful)}
               for s in slots.itertuples()]
        want = [{k: s.get(k) for k in ("name", "version", "active", "priority", "tries", "successful")}
                for s in expect["update"]["slots"]]
        assert got == want
        # The active slot's partition is mounted read-only at /usr; the other slot is on standby.
        for s in expect["update"]["slots"]:
            (number,) = s["partitions"]
            state = parts.loc[number, "state"]
            assert state == ("read-only" if s["active"] else "standby slot"), (name, number, state)
            assert bool(parts.loc[number, "slot_active"]) == s["active"]


_HASH64 = re.compile(r"\b[0-9a-f]{64}\b")


def _mask_build_hashes(report: dict) -> dict:
    """Replace 64-hex digests (verity root hashes, ...) with a placeholder: a btrfs /usr rebuilt in
    another directory differs in a few ids (mkfs.btrfs), so its root hash does too, while every
    fact a scan derives stays the same. The root hashes themselves are checked against each
    replica's manifest in the collector tests."""
    return json.loads(_HASH64.sub("<sha256>", json.dumps(report)))


def test_live_and_saved_reports_give_the_same_frames(live):
    saved = frames.load([str(REPORTS / f"{name}.json") for name in LIVE])
    for name in FRAME_NAMES:
        a, b = getattr(live, name), getattr(saved, name)
        cols = [c for c in a.columns if c not in WHERE_FROM and c != "root_hash"]   # see _mask_build_hashes
        pd.testing.assert_frame_equal(a[cols], b[cols], check_dtype=True, obj=name)
    assert set(live.images["source_kind"]) == {"image"} and set(saved.images["source_kind"]) == {"report"}


@pytest.mark.parametrize("path", sorted(REPORTS.glob("*.json")), ids=lambda p: p.stem)
def test_saved_report_is_up_to_date(path):
    """A bundled report equals a fresh scan of its image: the bundled image in data/replicas when
    there is one, else the replica rebuilt from its spec in the same form (skipped, with the
    reason, when neither is available)."""
    from immutools.replica.spec import load_spec
    from immutools.scan import scan

    saved = json.loads(path.read_text())
    image = bundled_image_for(saved)
    if image is None:
        prov = (saved["image"] or {}).get("provenance") or {}
        spec = prov.get("spec")
        if not prov.get("replica") or not spec:
            pytest.skip(f"{path.name}: not a replica and its image is not bundled: nothing to rescan")
        try:
            load_spec(spec)
        except Exception as exc:  # noqa: BLE001 - the spec is gone or renamed
            pytest.skip(f"{path.name}: replica spec {spec!r} not in data/replica-specs ({exc})")
        image = build_replica(spec, replica_form(saved))
    fresh = _mask_build_hashes(normalize_for_saving(scan(str(image), progress=False)))
    saved = _mask_build_hashes(saved)
    assert fresh == saved, (f"{path} is out of date with a scan of {image}: run "
                            f"`python -m immutools.frames refresh-reports --existing` "
                            f"(sections that differ: {[k for k in fresh if fresh.get(k) != saved.get(k)]})")


def test_refresh_reports_command_writes_what_scan_reports(tmp_path):
    image = build_replica(LIVE[0])
    proc = subprocess.run([sys.executable, "-m", "immutools.frames", "refresh-reports", str(image), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / f"{LIVE[0]}.json"
    report = json.loads(written.read_text())
    scanned = json.loads(subprocess.run([sys.executable, "-m", "immutools", "scan", str(image), "--format", "json"],
                                        capture_output=True, text=True, check=True).stdout)
    assert report["image"]["path"] == image.name            # machine-independent
    assert "cache" not in report["image"]                   # what this machine's cache did: not saved
    scanned["image"]["path"] = image.name
    scanned["image"].pop("cache", None)
    assert report == scanned


def test_loading_saved_reports_imports_no_parser():
    code = (
        "import sys\n"
        "from immutools import frames\n"
        "f = frames.load()\n"
        "sizes = [len(getattr(f, n)) for n in " + repr(FRAME_NAMES) + "]\n"
        "assert all(sizes), sizes\n"
        "frames.sensitivity(f)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('dissect') or m in ('immutools.scan', 'immutools.disk'))\n"
        "print('LOADED=' + ','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED=", proc.stdout


def test_categoricals_keep_the_schema_vocabulary_and_new_values():
    report = base_report()
    report["paths"][0]["state"] = "write-once"            # a value a future schema might add
    f = frames.frames_from([report])
    state = f.paths["state"]
    assert isinstance(state.dtype, pd.CategoricalDtype)
    assert list(state.cat.categories[:3]) == ["read-only", "volatile", "persistent"]
    assert "write-once" in list(state) and not state.isna().any()
    assert isinstance(f.mounts["access"].dtype, pd.CategoricalDtype)
    assert list(f.mounts["access"].cat.categories) == ["ro", "rw"]
    assert list(f.partitions["state"].cat.categories) == list(frames.RUNTIME_STATES)
    assert list(f.scores["dimension"].cat.categories)[-1] == "overall"
    assert list(f.images["image"].cat.categories) == [report["image"]["provenance"]["spec"]]


def test_damaged_and_minimal_reports_still_give_frames():
    minimal = {"schema_version": 1, "image": {}}
    hostile = copy.deepcopy(base_report())
    hostile["partitions"] = [None, 3, {"number": "x", "start": -1, "size": None, "attributes": "nope"}]
    hostile["mounts"] = [1, {"target": "/", "source": 7, "options": "ro", "evidence": "none"}]
    hostile["paths"] = "not a list"
    hostile["surface"] = {"shells": None, "shell_details": [None], "setuid_details": "x", "kernel_modules": []}
    hostile["update"] = {"slots": [None, {"name": "A", "partitions": ["p", 3]}]}
    hostile["integrity"] = {"targets": [None]}
    f = frames.frames_from([minimal, hostile])
    for name in FRAME_NAMES:
        df = getattr(f, name)
        assert list(df.columns)       # every frame builds
    assert len(f.images) == 2
    assert f.paths[f.paths["image"] == f.images["image"][0]].empty
    scores = f.scores
    overall = scores[scores["dimension"] == "overall"]
    assert len(overall) == 2
    # The minimal report has no facts at all: nothing can be scored, and it says so.
    minimal_row = overall[overall["image"] == f.images["image"][0]].iloc[0]
    assert pd.isna(minimal_row["score"]) and minimal_row["weight"] == 0


def test_folder_loading_skips_what_is_not_a_report_or_image(tmp_path):
    for name in LIVE:
        (tmp_path / f"{name}.json").write_text((REPORTS / f"{name}.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": "x", "partitions": []}))
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / ".hidden.json").write_text("{")
    f = frames.load(tmp_path)
    assert sorted(f.images["image"]) == sorted(LIVE)
    assert len(f.warnings) == 2 and any("manifest.json" in w for w in f.warnings) and any("notes.txt" in w for w in f.warnings)
    with pytest.raises(ReportLoadError):
        frames.load(tmp_path / "manifest.json")       # named explicitly: must load


def test_image_ids_are_unique():
    report = base_report()
    f = frames.frames_from([report, report, copy.deepcopy(report)])
    spec = report["image"]["provenance"]["spec"]
    assert list(f.images["image"]) == [spec, f"{spec}#2", f"{spec}#3"]
    # The same image in other forms is told apart by its form, not by a number.
    first = frames.frames_from([report]).images["form"].iloc[0]
    f = frames.frames_from([report, as_form(report, "raw", "lz4"), as_form(report, "raw", None), report])
    assert first != "raw" and list(f.images["image"]) == [spec, f"{spec} [lz4]", f"{spec} [raw]", f"{spec}#2"]
    assert set(f.images["base_image"]) == {spec}
    assert list(f.images["form"].astype(str)) == [first, "lz4", "raw", first]
    vendor = copy.deepcopy(report)
    vendor["image"]["provenance"] = None
    vendor["image"]["path"] = "/somewhere/flatcar_production_image.bin.bz2"
    assert list(frames.frames_from([vendor]).images["image"]) == ["flatcar_production_image"]
    assert bool(frames.frames_from([vendor]).images["replica"].iloc[0]) is False


def test_mount_to_partition_resolution():
    report = base_report()
    parts = report["partitions"]
    by_label = {p["label"]: p["number"] for p in parts}
    esp = next(p for p in parts if p["label"] == "EFI-SYSTEM")
    root = next(p for p in parts if p["label"] == "ROOT")
    cases = {
        "LABEL=ROOT": root["number"],
        f"UUID={root['filesystem_uuid'].upper()}": root["number"],
        f"PARTUUID={esp['uuid']}": esp["number"],
        "PARTLABEL=USR-B": by_label["USR-B"],
        "/dev/disk/by-label/EFI-SYSTEM": esp["number"],
        f"/dev/disk/by-partuuid/{esp['uuid']}": esp["number"],
        "LABEL=NO-SUCH": None,
        "/dev/sda9": None,
    }
    for source, want in cases.items():
        number, how = frames.mount_partition({"source": source, "evidence": []}, parts)
        assert number == want, source
        assert (how == "source") == (want is not None)
    # Evidence naming one partition wins over the source spec.
    assert frames.mount_partition({"source": "LABEL=ROOT", "evidence": [{"source": "partition 4 (USR-B)"}]}, parts) == (4, "evidence")
    assert frames.mount_partition({"partition": 6, "source": "LABEL=ROOT"}, parts) == (6, "report")


def test_standard_paths_flag(bundled):
    std = bundled.paths[bundled.paths["standard"]]
    assert set(std["path"]) == set(STANDARD_PATHS)
    other = bundled.paths[~bundled.paths["standard"]]
    targets = set(bundled.mounts["target"])
    for row in other.itertuples():
        # Other rows are mount targets (or a path whose symlink leads to one).
        assert row.path in targets or row.resolved in targets, (row.image, row.path)


def test_refresh_existing_rescans_bundled_images_and_keeps_others(tmp_path):
    bundled_images = sorted(p for p in (REPO / "data" / "replicas").glob("*") if p.suffix in (".qcow2", ".bin", ".img", ".raw")
                            ) if (REPO / "data" / "replicas").is_dir() else []
    if not bundled_images:
        pytest.skip("no bundled image in data/replicas")
    image = bundled_images[0]
    stale = base_report()
    stale["image"]["path"] = image.name
    stale["os"]["version"] = "stale"
    (tmp_path / "a.json").write_text(json.dumps(stale))
    vendor = base_report()
    vendor["image"]["provenance"] = None
    vendor["image"]["path"] = "vendor-image.raw"
    (tmp_path / "vendor-image.json").write_text(json.dumps(vendor))
    log = []
    frames.refresh_reports(out_dir=tmp_path, existing=True, log=log.append)
    fresh = json.loads((tmp_path / f"{frames.load([image]).images['image'][0]}.json").read_text())
    assert fresh["image"]["path"] == image.name and fresh["os"]["version"] != "stale"
    assert json.loads((tmp_path / "vendor-image.json").read_text()) == vendor
    assert any("vendor-image.json: kept" in line for line in log)


# ------------------------------------------------------------------------------------------------
# module structure: no import cycle, no private names across modules
# ------------------------------------------------------------------------------------------------

ANALYSIS = REPO / "immutools" / "analysis"


def _imports(path: Path):
    """(module imported, names imported from it, attribute names used on it) of every import in a
    file, at any depth (function-level imports included)."""
    import ast

    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                found.append((a.name, []))
                aliases[a.asname or a.name] = a.name
    attrs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attrs.append((aliases[node.value.id], node.attr))
    return found, attrs


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_analysis_modules_import_no_private_name_of_another_module():
    problems = []
    for path in sorted(ANALYSIS.glob("*.py")) + [REPO / "immutools" / "frames.py", REPO / "immutools" / "cli.py"]:
        found, attrs = _imports(path)
        for module, names in found:
            if module.startswith("immutools"):
                problems += [f"{path.name}: from {module} import {n}" for n in names if _private(n)]
        problems += [f"{path.name}: {mod}.{attr}" for mod, attr in attrs
                     if mod.startswith("immutools") and _private(attr)]
    assert problems == []


def test_analysis_modules_form_no_import_cycle():
    graph = {}
    for path in sorted(ANALYSIS.glob("*.py")):
        name = f"immutools.analysis.{path.stem}"
        found, _attrs = _imports(path)
        deps = set()
        for module, names in found:
            if module.startswith("immutools.analysis."):
                deps.add(module)
            elif module == "immutools.analysis":
                deps |= {f"immutools.analysis.{n}" for n in names}
        graph[name] = deps - {name}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)
    assert graph["immutools.analysis.loading"] == set()          # the bottom of the layer
    assert "immutools.analysis.frames" not in graph["immutools.analysis.rubric"]
    assert "immutools.analysis.frames" not in graph["immutools.analysis.sensitivity"]


@pytest.mark.parametrize("module", sorted(p.stem for p in ANALYSIS.glob("*.py")))
def test_each_analysis_module_imports_alone_in_a_fresh_interpreter(module):
    code = f"import immutools.analysis.{module} as m; print(m.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"immutools.analysis.{module}"


# ------------------------------------------------------------------------------------------------
# completeness
# ------------------------------------------------------------------------------------------------

def test_images_frame_carries_each_reports_completeness(bundled):
    by_id = {e.image_id: e.report for e in bundled.reports}
    for row in bundled.images.itertuples():
        section = by_id[row.image].get("completeness")
        if section is None:
            assert row.completeness == "not checked" and row.facts_expected == 0
            continue
        facts = section["facts"]
        assert row.completeness == section["status"]
        assert (row.facts_expected, row.facts_observed, row.facts_inferred, row.facts_missing) == (
            len(facts), sum(f["status"] == "observed" for f in facts), sum(f["status"] == "inferred" for f in facts),
            sum(f["status"] == "missing" for f in facts))
        assert row.missing_facts == [f["fact"] for f in facts if f["status"] == "missing"]
        rows = bundled.completeness[bundled.completeness["image"] == row.image]
        assert list(rows["fact"]) == [f["fact"] for f in facts]
        assert list(rows["status"].astype(str)) == [f["status"] for f in facts]
    assert isinstance(bundled.images["completeness"].dtype, pd.CategoricalDtype)


def test_an_incomplete_report_is_marked_and_not_ranked():
    """The issue's case: a Flatcar mount table without / and /usr, the completeness section
    re-evaluated by the real check against data/distributions/flatcar.yaml."""
    good = base_report()
    bad = incomplete(good, ("/", "/usr"), spec="flatcar-built-elsewhere")
    f = frames.frames_from([good, bad])
    img = f.images.set_index("image").loc["flatcar-built-elsewhere"]
    assert img["completeness"] == "incomplete" and img["facts_missing"] == 2
    assert img["missing_facts"] == ["mount /", "mount /usr"]
    assert "INCOMPLETE: 2 facts missing" in img["label"] and "INCOMPLETE" in img["chart_label"]
    missing = f.completeness[(f.completeness["image"] == "flatcar-built-elsewhere") & (f.completeness["status"] == "missing")]
    assert list(missing["fact"]) == ["mount /", "mount /usr"] and missing["reason"].notna().all()
    ranking = f.ranking.set_index("image")
    assert bool(ranking.loc[good["image"]["provenance"]["spec"], "ranked"]) is True
    assert ranking.loc[good["image"]["provenance"]["spec"], "rank"] == 1
    assert bool(ranking.loc["flatcar-built-elsewhere", "ranked"]) is False
    assert pd.isna(ranking.loc["flatcar-built-elsewhere", "rank"])
    assert "mount /, mount /usr" in ranking.loc["flatcar-built-elsewhere", "note"]
    # A report claiming "complete" while listing a missing fact is still incomplete.
    liar = copy.deepcopy(bad)
    liar["completeness"]["status"] = "complete"
    liar["image"]["provenance"]["spec"] = "liar"
    assert frames.frames_from([liar]).images["completeness"].iloc[0] == "incomplete"


def test_fewer_dimensions_means_not_ranked():
    report = base_report()
    report["surface"] = None
    f = frames.frames_from([report, base_report("talos-v1.9.5-amd64-metal")])
    r = f.ranking.set_index("image").loc[report["image"]["provenance"]["spec"]]
    assert not r["ranked"] and r["dimensions_scored"] < r["dimensions_total"] and r["coverage"] < 1
    assert r["marker"] == f"{r['dimensions_scored']}/{r['dimensions_total']} dimensions"
    overall = f.scores[(f.scores["dimension"] == "overall")].set_index("image")["score"]
    assert r["score"] == overall[report["image"]["provenance"]["spec"]]      # the score is kept, only unranked


def test_reports_before_the_completeness_check_say_not_checked():
    old = base_report()
    old.pop("completeness", None)
    f = frames.frames_from([old])
    assert f.images["completeness"].iloc[0] == "not checked"
    assert f.completeness.empty
    r = f.ranking.iloc[0]
    assert bool(r["ranked"]) and r["marker"] == "completeness not checked"


def test_every_bundled_default_image_has_a_saved_report():
    """The demo (data/replicas/bundle.yaml) and the notebooks (data/reports) show the same images."""
    import yaml

    bundle = yaml.safe_load((REPO / "data" / "replicas" / "bundle.yaml").read_text())
    for item in bundle["images"]:
        path = REPORTS / f"{item['spec']}.json"
        assert path.exists(), f"no saved report for bundled image {item['spec']}: refresh-reports"
        report = json.loads(path.read_text())
        assert report["image"]["provenance"]["spec"] == item["spec"]
        assert frames.load([path]).images["form"].iloc[0] == item["form"]
