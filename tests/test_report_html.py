"""`immutools report` (one self-contained HTML page) and `immutools compare` (terminal table, charts).

Compared against: a real headless browser (Debian's chromium) that must load the page from disk
with the network off, render it (screenshot, checked for the page's own colours) and return the
DOM with every section; the frames for what the terminal table must show.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incomplete_reports import incomplete
from replicas import build_replica
from report_variants import REPO, REPORTS, base_report

from immutools import frames

SOME = ("flatcar-stable-4593-amd64-pristine", "flatcar-stable-4593-amd64-updated", "flatcar-stable-3227-arm64-pristine")
EVIL = "<script>alert('x')</script>"
BROKEN = "flatcar-built-elsewhere"


def cli(capsys, *args, check_rc=0):
    """Run the CLI in this process (same code path as the console script, without the import cost)."""
    from immutools.cli import main

    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:        # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == check_rc, err
    return out, err


def immutools(*args, check_rc=0, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "immutools", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.refs = [], [], []
        self.fold_depth, self.section = 0, None
        self.rows_unfolded = 0                  # table rows outside any folded per-image block
        self.tables = []                        # (section, folded, [rows of cell texts])
        self._cell, self._row = None, None
        self._closing_folds: list[bool] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        for key, value in attrs.items():
            if key == "id":
                self.ids.append(value)
            if key in ("src", "href", "xlink:href", "action", "data"):
                self.refs.append(value)
        if tag == "h2":
            self.section = attrs.get("id")
        elif tag == "details" and attrs.get("class") == "fold":
            self.fold_depth += 1
        elif tag == "table":
            self.tables.append((self.section, self.fold_depth > 0, []))
        elif tag == "tr":
            self._row = []
            if self.fold_depth == 0:
                self.rows_unfolded += 1
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "details":
            if self._closing_folds and self._closing_folds.pop(0):
                self.fold_depth -= 1
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self.tables:
                self.tables[-1][2].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> _Collect:
    """Parse the page, knowing which </details> closes a per-image fold (evidence <details> nest
    inside folds, and end tags carry no attributes): pair them up from the text first."""
    parser = _Collect()
    opened, closing = [], []
    for m in re.finditer(r'<details( class="fold")?[^>]*>|</details>', text):
        if m.group(0).startswith("</"):
            closing.append(opened.pop())
        else:
            opened.append(bool(m.group(1)))
    assert not opened, "unbalanced <details>"
    parser._closing_folds = closing
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    evil = base_report()
    evil["image"]["provenance"]["spec"] = "evil-name"
    evil["os"]["name"] = EVIL
    evil["warnings"] = [EVIL]
    (tmp / "evil.json").write_text(json.dumps(evil))
    (tmp / "broken.json").write_text(json.dumps(incomplete(base_report(), ("/", "/usr"), spec=BROKEN)))
    out = tmp / "report.html"
    proc = immutools("report", *[REPORTS / f"{n}.json" for n in SOME], tmp / "evil.json", tmp / "broken.json",
                     "--output", out)
    assert str(out) in proc.stderr
    return out


def test_page_is_self_contained(page):
    text = page.read_text()
    parser = _Collect()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    local = [r for r in parser.refs if not (r.startswith("#") or r.startswith("data:image/"))]
    assert not local, local[:5]
    assert not re.search(r"url\((?!#)", text), "external url() in the page"
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids (inline SVGs must not clash)"
    assert parser.tags.count("svg") == 5


def test_page_has_every_image_fact_evidence_and_provenance(page):
    text = page.read_text()
    f = frames.load([REPORTS / f"{n}.json" for n in SOME])
    for image in SOME + ("evil-name", BROKEN):
        assert text.count(image) >= 5, image
    for section in ("overview", "spectrum", "dimensions", "partitions", "surface", "updates", "provenance"):
        assert f'id="{section}"' in text
    # Evidence beside each fact: one <details> per score row with evidence, per partition, path, mount.
    with_evidence = int((f.scores["evidence"].map(len) > 0).sum())
    assert text.count("<details>") >= with_evidence + len(f.partitions) + len(f.paths)
    # Provenance of each image: the replica record and its limitations.
    for entry in f.reports:
        for lim in entry.report["image"]["provenance"].get("limitations") or []:
            assert lim.replace("'", "&#x27;").replace("`", "`") in text or lim in text
    assert "Sensitivity of the ranking" in text


def test_no_local_path_anywhere_in_the_page(page):
    """The header names the rubric as data/rubric.yaml, inputs by file name: a page sent to a
    colleague carries no directory of the machine that made it."""
    text = page.read_text()
    header = text[text.index("<header>"): text.index("</header>")]
    assert "<code>data/rubric.yaml</code>" in header
    for local in (str(REPO), str(page.parent), "/tmp/", "/work/", "/home/", "/root/"):
        assert local not in text, local


def test_sensitivity_table_speaks_in_words(page):
    parser = parse(page.read_text())
    rows = next(rows for section, _f, rows in parser.tables if section == "spectrum" and rows and "weight" in rows[1][0])
    labels = [r[0] for r in rows if r]              # the header row has <th>, no <td>
    assert labels[0] == "the rubric's weights (baseline)"
    assert "Read-only scope of the OS: weight x0.5 (20 -> 10)" in labels
    assert not [lbl for lbl in labels if re.fullmatch(r"[a-z_]+ x[0-9.]+", lbl)], labels


def test_per_image_tables_are_folded(page):
    text = page.read_text()
    parser = parse(text)
    n_images = len(SOME) + 2
    # Completeness, dimensions, partitions, surface and provenance: one fold per image each.
    assert text.count('<details class="fold"') >= 5 * n_images
    for section in ("dimensions", "partitions", "surface", "provenance"):
        per_image = [folded for sec, folded, rows in parser.tables if sec == section]
        assert per_image.count(True) >= n_images and per_image.count(False) <= 1, section
    # What stays open: the overview, the rubric's dimensions, the sensitivity and update tables.
    assert parser.rows_unfolded < 3 * n_images + 40, parser.rows_unfolded


def test_every_overview_cell_is_filled_and_completeness_is_shown(page):
    parser = parse(page.read_text())
    overview = next(rows for sec, folded, rows in parser.tables if sec == "overview" and not folded)
    assert len(overview) == len(SOME) + 2 + 1          # header row has no <td>
    body = [r for r in overview if r]
    for row in body:
        assert all(cell for cell in row), row
    broken = next(r for r in body if r[0].startswith(BROKEN))
    assert "not ranked" in broken[5] and "incomplete: 2 facts missing" in broken[5]
    assert "incomplete" in broken[6] and "2 missing" in broken[6]
    ranks = [r[5] for r in body if not r[0].startswith(BROKEN) and "not ranked" not in r[5]]
    assert ranks and all(re.match(r"^\d+", r) for r in ranks)
    text = page.read_text()
    assert "1 image is INCOMPLETE" in text and "mount /, mount /usr" in text
    assert 'id="completeness"' in text


def test_strings_from_images_are_escaped(page):
    text = page.read_text()
    assert EVIL not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium is not installed")
def test_page_renders_in_a_headless_browser(page, tmp_path):
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 2000)
    px = np.asarray(img).reshape(-1, 3)
    non_white = float((px != 255).any(axis=1).mean())
    assert non_white > 0.05, f"screenshot nearly blank ({non_white:.3f})"
    colours = {tuple(c) for c in np.unique(px[:: 7], axis=0)}
    assert (0x00, 0x72, 0xB2) in colours, "the page's accent colour (header rule) is not on screen"
    assert len(colours) > 50
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert "immutools comparison report" in dom
    assert dom.count("<svg") == 5 and 'id="provenance"' in dom


def test_compare_prints_a_side_by_side_table(tmp_path):
    image = build_replica(SOME[0])
    out = immutools("compare", image, REPORTS / f"{SOME[1]}.json", REPORTS / f"{SOME[2]}.json").stdout
    f = frames.load([REPORTS / f"{n}.json" for n in SOME])
    lines = out.splitlines()
    header = " ".join(lines[:4])
    for name in SOME:
        assert name.split("-")[0] in header
    overall = next(line for line in lines if line.startswith("OVERALL"))
    want = f.scores[f.scores["dimension"] == "overall"].set_index("image")["score"]
    assert overall.split()[1:] == [f"{want[n]:.1f}" for n in SOME]
    rank = next(line for line in lines if line.startswith("RANK"))
    ranks = f.ranking.set_index("image")["rank"]
    assert rank.split()[-3:] == [str(int(ranks[n])) for n in SOME]
    assert next(line for line in lines if line.startswith("completeness"))
    slots = next(line for line in lines if line.startswith("slots (* active)"))
    assert "B*=4593.2.5" in slots and "A*=4593.2.0" in slots
    assert "Reference ordering" in out


def test_compare_writes_charts_and_refuses_bad_requests(tmp_path, capsys):
    reports = [REPORTS / f"{n}.json" for n in SOME[:2]]
    for chart, suffix in (("heatmap", "svg"), ("updates", "png")):
        target = tmp_path / f"{chart}.{suffix}"
        cli(capsys, "compare", *reports, "--chart", chart, "--output", target)
        assert target.stat().st_size > 10_000
    assert Image.open(tmp_path / "updates.png").format == "PNG"
    cli(capsys, "compare", *reports, "--output", tmp_path / "default.svg")
    assert (tmp_path / "default.svg").read_text().lstrip().startswith("<?xml")
    assert "<text" in (tmp_path / "default.svg").read_text()              # editable text
    cli(capsys, "compare", *reports, "--chart", "partitions", "--output", tmp_path / "parts.pdf")
    assert (tmp_path / "parts.pdf").read_bytes()[:5] == b"%PDF-"
    assert "needs --output" in cli(capsys, "compare", *reports, "--chart", "spectrum", check_rc=2)[1]
    cli(capsys, "compare", *reports, "--output", tmp_path / "x.gif", check_rc=2)
    (tmp_path / "bad.json").write_text("{not json")
    assert "not valid JSON" in cli(capsys, "compare", tmp_path / "bad.json", check_rc=3)[1]
    cli(capsys, "report", reports[0], check_rc=2)                          # --output is required
    cli(capsys, "compare", tmp_path / "missing.json", check_rc=4)


def test_analysis_commands_keep_the_cli_import_light():
    code = ("import sys; from immutools.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_custom_rubric_on_the_command_line(tmp_path, capsys):
    import yaml

    from immutools.analysis.rubric import rubric_path

    data = yaml.safe_load(rubric_path().read_text())
    data["dimensions"] = {"updates": data["dimensions"]["updates"]}
    path = tmp_path / "only-updates.yaml"
    path.write_text(yaml.safe_dump(data))
    out, _err = cli(capsys, "compare", REPORTS / f"{SOME[0]}.json", "--rubric", path)
    assert "Update atomicity and rollback" in out and "Read-only scope" not in out
    assert "OVERALL" in out and "100.0" in next(line for line in out.splitlines() if line.startswith("OVERALL"))
    (tmp_path / "bad.yaml").write_text("dimensions: {x: {weight: -1, checks: []}}\n")
    assert "weight" in cli(capsys, "compare", REPORTS / f"{SOME[0]}.json", "--rubric", tmp_path / "bad.yaml", check_rc=2)[1]


def test_report_lists_skipped_inputs(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{SOME[0]}.json").write_text((REPORTS / f"{SOME[0]}.json").read_text())
    (folder / "README").write_text("notes\n")
    out = tmp_path / "r.html"
    _out, err = cli(capsys, "report", folder, "-o", out)
    assert "skipped" in err and "README" in err
    text = Path(out).read_text()
    assert "Inputs skipped" in text and "README" in text
    assert str(tmp_path) not in text                      # named by file name, not by local path


def test_compare_marks_an_incomplete_image(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(incomplete(base_report(), ("/", "/usr"), spec=BROKEN)))
    out, _err = cli(capsys, "compare", REPORTS / f"{SOME[0]}.json", broken)
    lines = out.splitlines()
    comp = next(line for line in lines if line.startswith("completeness "))
    assert "INCOMPLETE" in comp and comp.split()[1] == "complete"
    assert "not ranked" in next(line for line in lines if line.startswith("RANK"))
    assert f"NOT RANKED: {BROKEN}: incomplete: 2 guaranteed facts missing (mount /, mount /usr)" in out
    assert "Not ranked, so left out of every ranking above (1)" in out
