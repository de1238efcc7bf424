"""``immutools scan-many``: the bundled replicas into a Parquet + DuckDB dataset, on the process pool
and on a Dask ``LocalCluster`` (the same dataset), resumed without rescanning, failures as rows,
and the dataset read back by DuckDB, ``immutools.frames.load``, ``compare`` and ``report``.

The images are the bundled replicas (``data/replicas/bundle.yaml``): small, already built, scanned
in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import immutools
from immutools.corpus.dataset import FRAME_TABLES, read_table
from immutools.corpus.run import scan_many

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

REPO = Path(immutools.__file__).resolve().parent.parent
REPLICAS = REPO / "data" / "replicas"
BUNDLE = REPLICAS / "bundle.yaml"
# Three distributions for the engine comparison (the brief: 3-5 images).
TRIO = ("flatcar-stable-4593-amd64-pristine.qcow2", "bottlerocket-aws-k8s-1.31-x86_64-pristine.img.lz4",
        "talos-v1.13.0-amd64-metal.raw.zst")
TRIO_DISTRIBUTIONS = {"flatcar-container-linux", "bottlerocket-os", "talos"}


def exploding_scanner(path):
    """The scanner of a run that must not scan (module level: the pool pickles it by name)."""
    raise AssertionError(f"{path} was scanned again")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "immutools", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _manifest(tmp_path: Path) -> Path:
    """A CSV manifest of the trio with label columns, as a corpus study would write it."""
    path = tmp_path / "trio.csv"
    rows = ["path,release_date,channel"]
    for name, date, channel in zip(TRIO, ("2025-10-01", "2025-11-04", "2026-01-20"), ("stable", "-", "-")):
        rows.append(f"{REPLICAS / name},{date},{channel}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _tables(root: Path) -> dict:
    """Every table, rows in a stable order, with the per-run timing column dropped."""
    out = {}
    for name in FRAME_TABLES + ("failures", "inputs"):
        df = read_table(root, name)
        df = df.drop(columns=[c for c in ("seconds",) if c in df.columns])
        df = df.astype(str).sort_values(list(df.columns)).reset_index(drop=True)
        out[name] = df
    return out


@pytest.fixture(scope="module")
def pool_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    summary = scan_many([str(_manifest(tmp)), str(tmp / "missing.img")], tmp / "ds", engine="pool", workers=2,
                        progress=False)
    return tmp / "ds", summary


def test_pool_dataset_has_every_table_partitioned_by_distribution(pool_dataset):
    root, summary = pool_dataset
    assert (summary.scanned, summary.failed, summary.reused) == (3, 1, 0)
    for frame in FRAME_TABLES:
        parts = {p.name for p in (root / "tables" / frame).iterdir() if p.is_dir()}
        if frame in ("images", "partitions", "mounts", "paths", "scores"):
            assert parts == {f"distribution_id={d}" for d in TRIO_DISTRIBUTIONS}, frame
    assert len(list((root / "reports").glob("*.json"))) == 3
    con = duckdb.connect(str(root / "immutools.duckdb"), read_only=True)
    try:
        images = con.execute("select image, distribution_id, release_date, channel from images order by image").fetchall()
        assert {r[1] for r in images} == TRIO_DISTRIBUTIONS
        assert {r[2] for r in images} == {"2025-10-01", "2025-11-04", "2026-01-20"}
        # The mounts frame agrees with the raw reports it was built from.
        for report_file in (root / "reports").glob("*.json"):
            report = json.loads(report_file.read_text())
            digest = report_file.stem
            n = con.execute("select count(*) from mounts m join images i using (image) where i.digest = ?",
                            [digest]).fetchone()[0]
            assert n == len(report["mounts"])
        evidence = con.execute("select evidence from mounts where evidence is not null limit 20").fetchall()
    finally:
        con.close()
    for (text,) in evidence:
        items = json.loads(text)            # JSON text, not a Python repr
        assert isinstance(items, list) and all("source" in e for e in items)


def test_a_failure_is_a_row_and_does_not_stop_the_run(pool_dataset):
    root, _ = pool_dataset
    failures = read_table(root, "failures")
    assert list(failures["image"]) == ["missing.img"]
    assert "no such file" in failures["error"][0]
    assert int(failures["exit_code"][0]) not in (0, 1)
    inputs = read_table(root, "inputs")
    assert sorted(inputs["status"]) == ["failed", "scanned", "scanned", "scanned"]


def test_dask_local_cluster_builds_the_same_dataset(pool_dataset, tmp_path):
    distributed = pytest.importorskip("distributed")
    import logging

    root, _ = pool_dataset
    # A cluster reached by its scheduler address, as --engine dask --scheduler ADDRESS does; the
    # same inputs as the pool run (the same manifest file), into another folder.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        summary = scan_many([str(root.parent / "trio.csv"), str(root.parent / "missing.img")], tmp_path / "ds",
                            engine="dask", scheduler=cluster.scheduler_address, progress=False)
    assert (summary.scanned, summary.failed) == (3, 1)
    pool_tables, dask_tables = _tables(root), _tables(tmp_path / "ds")
    for name, frame in pool_tables.items():
        assert frame.equals(dask_tables[name]), name
    pool_reports = {p.name: p.read_bytes() for p in (root / "reports").iterdir()}
    dask_reports = {p.name: p.read_bytes() for p in (tmp_path / "ds" / "reports").iterdir()}
    assert pool_reports == dask_reports


def test_a_second_run_resumes_without_rescanning(pool_dataset, tmp_path):
    root, _ = pool_dataset
    copy = tmp_path / "moved"
    shutil.copytree(root, copy)                 # also: a moved dataset is re-pointed
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "reports").iterdir()}

    summary = scan_many([str(root.parent / "trio.csv")], copy, engine="pool", workers=1, progress=False,
                        scanner=exploding_scanner)
    assert (summary.scanned, summary.reused, summary.failed) == (0, 3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "reports").iterdir()} == before
    assert len(read_table(copy, "images")) == 3
    # Reports of another immutools version are not reused: those images are scanned again.
    index = json.loads((copy / "index.json").read_text())
    index["entries"][0]["tool_version"] = "0.0.0-older"
    (copy / "index.json").write_text(json.dumps(index))
    summary = scan_many([str(root.parent / "trio.csv")], copy, engine="pool", workers=1, progress=False,
                        scanner=exploding_scanner)
    assert (summary.reused, summary.failed) == (2, 1)
    # --rescan does scan again (here: into the scanner's failure, recorded as rows, not raised).
    summary = scan_many([str(root.parent / "trio.csv")], copy, engine="pool", workers=1, progress=False, rescan=True,
                        scanner=exploding_scanner)
    assert summary.failed == 3


def test_frames_load_and_compare_and_report_accept_the_dataset(pool_dataset, tmp_path):
    from immutools import frames

    root, _ = pool_dataset
    loaded = frames.load(str(root))
    assert len(loaded.images) == 3
    assert any("could not be scanned" in w for w in loaded.warnings)
    # The same images as the dataset's own images table (whose frames come from the same reports).
    assert sorted(loaded.images["image"].astype(str)) == sorted(read_table(root, "images")["image"])
    compare = _cli("compare", root)
    assert compare.returncode == 0, compare.stderr
    for name in ("flatcar", "bottlerocket", "talos"):
        assert name in compare.stdout.lower()
    html = tmp_path / "report.html"
    report = _cli("report", root, "-o", html)
    assert report.returncode == 0, report.stderr
    assert html.stat().st_size > 0


def test_cli_over_the_bundle_exits_1_on_a_failure_and_0_when_resumed(tmp_path):
    out = tmp_path / "ds"
    first = _cli("scan-many", BUNDLE, tmp_path / "nope.qcow2", "--out", out, "-j", "2", "--no-progress")
    assert first.returncode == 1, first.stderr
    assert "5 scanned" in first.stderr and "1 failed" in first.stderr
    second = _cli("scan-many", BUNDLE, "--out", out, "-j", "2", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "0 scanned, 5 already in the dataset" in second.stderr
    con = duckdb.connect(str(out / "immutools.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from images").fetchone()[0] == 5
    finally:
        con.close()
