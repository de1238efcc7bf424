"""The notebooks run top to bottom in a real Jupyter kernel (nbclient, the python3 kernel of this
interpreter's environment), on the bundled reports and on a folder given through the one
parameter at the top; committed notebooks carry no outputs (no hidden state)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from incomplete_reports import incomplete
from replicas import build_replica
from report_variants import REPORTS, base_report

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01-immutability-spectrum", "02-partition-layouts", "03-writable-surface", "04-update-mechanisms")


def read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def execute(nb, timeout=600):
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    env_before = os.environ.get("PYDEVD_DISABLE_FILE_VALIDATION")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"     # quiet debugpy warning in the kernel
    try:
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("PYDEVD_DISABLE_FILE_VALIDATION", None)
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def images_shown(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_python3_kernel_is_this_environment():
    """The notebooks must run with this venv's packages: a python3 kernelspec elsewhere (e.g. a
    user-level one pointing at another interpreter) would shadow it."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    # jupyter_client runs a spec whose argv[0] is "python"/"python3" with sys.executable itself.
    assert spec.argv[0] in ("python", "python3", f"python3.{sys.version_info[1]}", sys.executable), (
        f"the python3 kernel runs {spec.argv[0]} (from {spec.resource_dir}), not {sys.executable}")


# Notebooks with their own parameters, executed by their own test file.
RUN_ELSEWHERE = {"05-release-history": "tests/test_release_history.py"}


def test_notebooks_exist_and_are_committed_clean():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted((*NAMES, *RUN_ELSEWHERE))
    for name in RUN_ELSEWHERE:
        nb = read(name)
        nbformat.validate(nb)
        assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code"), name
    for name in NAMES:
        nb = read(name)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit without outputs"
        first = code[0]
        assert "parameters" in first.metadata.get("tags", []), name
        assert re.search(r"^SOURCES = None$", first.source, re.M), name
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3, f"{name}: needs narrative cells"
        assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_bundled_reports(name):
    nb = execute(read(name))
    text = outputs_text(nb)
    n_reports = len(list(REPORTS.glob("*.json")))
    assert f"{n_reports} images" in text
    assert images_shown(nb) >= 1, "the notebook's chart did not display"
    # Every notebook shows each image's completeness.
    n_incomplete = sum(json.loads(p.read_text()).get("completeness", {}).get("status") == "incomplete"
                       for p in REPORTS.glob("*.json"))
    assert f"{n_incomplete} incomplete (facts their distribution guarantees are missing)" in text
    assert "completeness" in text and "facts_missing" in text


def _with_parameter(nb, value):
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f"SOURCES = {value!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    return nb


def test_notebooks_mark_an_incomplete_image_and_do_not_rank_it(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "good.json").write_text((REPORTS / "flatcar-stable-4593-amd64-updated.json").read_text())
    (folder / "bad.json").write_text(json.dumps(incomplete(base_report(), ("/", "/usr"), spec="flatcar-built-elsewhere")))
    nb = execute(_with_parameter(read(NAMES[0]), str(folder)))
    text = outputs_text(nb)
    assert "2 images; 2 of them replicas; 1 incomplete" in text
    assert "INCOMPLETE flatcar-built-elsewhere: missing mount /, mount /usr" in text
    assert "incomplete: 2 facts missing" in text                  # the ranking frame's marker
    assert "Not ranked, so left out of every ranking above (1)" in text


def test_analysis_extra_is_pinned_and_opens_the_notebooks(tmp_path):
    """The `analysis` extra names what running and opening the notebooks needs (JupyterLab,
    nbconvert, the kernel), requirements.lock pins each, and the real tools run: nbconvert executes
    a notebook to a file with its chart, and JupyterLab answers its version."""
    import subprocess
    import sys
    import tomllib

    root = NOTEBOOKS.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["analysis"]
    pins = {re.split(r"==", line)[0].lower().replace("_", "-")
            for line in (root / "requirements.lock").read_text().splitlines() if "==" in line and not line.startswith("#")}
    for req in extra:
        name = re.split(r"[<>=!~ \[]", req)[0].lower().replace("_", "-")
        assert name in pins, f"{name} (analysis extra) is not pinned in requirements.lock"
    assert {"jupyterlab", "nbconvert"} <= {re.split(r"[<>=!~ \[]", r)[0].lower() for r in extra}
    proc = subprocess.run([sys.executable, "-m", "jupyterlab", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and re.match(r"^\d+\.\d+", proc.stdout.strip()), proc.stderr[-1000:]
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           "--output-dir", str(tmp_path), str(NOTEBOOKS / f"{NAMES[0]}.ipynb")],
                          capture_output=True, text=True, timeout=600, cwd=NOTEBOOKS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    executed = nbformat.read(tmp_path / f"{NAMES[0]}.ipynb", as_version=4)
    assert images_shown(executed) >= 2


def test_notebook_runs_on_a_folder_given_as_parameter(tmp_path):
    folder = tmp_path / "my images"
    folder.mkdir()
    for spec in ("flatcar-stable-4593-amd64-pristine", "flatcar-stable-3227-arm64-updated"):
        (folder / f"{spec}.json").write_text((REPORTS / f"{spec}.json").read_text())
    (folder / "flatcar-lts-4081-amd64-updated.bin").symlink_to(build_replica("flatcar-lts-4081-amd64-updated"))
    (folder / "manifest.json").write_text(json.dumps({"not": "a report"}))
    nb = read(NAMES[0])
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f"SOURCES = {str(folder)!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    nb = execute(nb)
    text = outputs_text(nb)
    assert "3 images; 3 of them replicas" in text
    assert "skipped:" in text and "manifest.json" in text
    assert "flatcar-lts-4081-amd64-updated" in text
