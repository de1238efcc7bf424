"""The release history: the bundled manifest ``data/history.yaml`` and notebook 05, which scans it
with ``scan-many`` and charts each series. The notebook runs here on the cached replica fixtures
(``tests/replicas.py``): the manifest's spec rows are rewritten to the fixtures' image paths, with
the same labels, so nothing is built twice."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from replicas import build_replica

import immutools

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
from test_notebooks import execute, outputs_text  # noqa: E402  (the same kernel set-up as notebooks 01-04)
pytest.importorskip("duckdb")

REPO = Path(immutools.__file__).resolve().parent.parent
HISTORY = REPO / "data" / "history.yaml"
NOTEBOOK = REPO / "notebooks" / "05-release-history.ipynb"


def history_rows() -> list[dict]:
    return yaml.safe_load(HISTORY.read_text())["images"]


def test_history_names_known_specs_with_dated_cited_releases():
    listed = subprocess.run([sys.executable, "-m", "immutools.replica", "list"], capture_output=True, text=True,
                            check=True, timeout=300).stdout
    specs = {line.split()[0] for line in listed.splitlines() if line.strip()}
    rows = history_rows()
    by_series: dict[str, list[dict]] = {}
    for row in rows:
        assert row["spec"] in specs, row["spec"]
        date.fromisoformat(row["release_date"])
        assert re.match(r"https://(github\.com|www\.flatcar\.org)/", row["release_notes"]), row
        assert row["change"].strip()
        by_series.setdefault(row["series"], []).append(row)
    assert set(by_series) == {"flatcar", "bottlerocket", "talos"}
    for series, members in by_series.items():
        assert [m["step"] for m in members] == list(range(1, len(members) + 1)), series
    # The release named in the manifest is the release the spec builds (its `replica list` line).
    for row in rows:
        line = next(line for line in listed.splitlines() if line.split()[:1] == [row["spec"]])
        number = re.sub(r"^(stable-|lts-|alpha-|beta-|v(?=1\.[0-9]+\.[0-9]+$))", "", row["release"].split()[0])
        assert number in line, (row["spec"], row["release"])


def _fixture_manifest(tmp_path: Path) -> Path:
    """data/history.yaml with each spec row replaced by the cached fixture image of that spec."""
    rows = []
    for row in history_rows():
        row = dict(row)
        row["path"] = str(build_replica(row.pop("spec")))
        rows.append(row)
    path = tmp_path / "history.yaml"
    path.write_text(yaml.safe_dump({"images": rows}, sort_keys=False))
    return path


def test_notebook_is_committed_clean_with_parameters():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert re.search(r'^HISTORY = "../data/history.yaml"', code[0].source, re.M)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_notebook_05_runs_and_shows_the_documented_changes(tmp_path):
    manifest = _fixture_manifest(tmp_path)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f"HISTORY = {str(manifest)!r}\nOUT = {str(tmp_path / 'ds')!r}\nWORKERS = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    text = outputs_text(execute(nb, timeout=900))
    n = len(history_rows())
    assert f"{n} images: {n} scanned" in text
    assert f"{n} images in the dataset" in text
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 1
    layout = re.sub(r"\s+", " ", text)
    # The documented steps, as the diff table under the chart shows them.
    assert re.search(r"flatcar stable-3602\.2\.0 -> lts-4081\.3\.0 mounts /usr fstype ext2 btrfs", layout)
    assert re.search(r"flatcar stable-3227\.2\.3 -> stable-3602\.2\.0 mounts /etc added \(absent\) present", layout)
    assert re.search(r"flatcar stable-4593\.2\.0 -> alpha-4628\.0\.0 mounts /etc source overlay "
                     r"/usr/lib/confexts/00-flatcar-default\.raw", layout)
    assert re.search(r"bottlerocket v1\.26\.1 \(aws-k8s-1\.31\) -> v1\.39\.0 \(aws-k8s-1\.33\) mounts / fstype ext4 erofs",
                     layout)
    assert re.search(r"talos v1\.9\.5 -> v1\.13\.0 update update bootloader grub dual-boot", layout)
    # The dataset the notebook wrote is a scan-many dataset that DuckDB reads.
    import duckdb

    con = duckdb.connect(str(tmp_path / "ds" / "immutools.duckdb"), read_only=True)
    try:
        got = con.execute("select series, count(*) from images group by series order by series").fetchall()
    finally:
        con.close()
    assert got == [("bottlerocket", 3), ("flatcar", 5), ("talos", 3)]
