"""Charts: every kind renders to PNG, SVG and PDF (text kept as text), names every image with its
version, marks replicas and incomplete images, uses the colour-blind-safe palette, cuts no label
short, and draws what the frames say (active slots, every partition, ranks only where comparable).

Compared against: the frames the charts are drawn from (which partitions, which slot is active,
which images are replicas or incomplete, the ranking frame), the SVG <text> elements and the PDF
text (poppler's pdftotext) of the written files, the pixels of the PNG, and a headless chromium
rendering of the SVG.
"""

from __future__ import annotations

import copy
import itertools
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
from matplotlib.text import Text
import pytest
from PIL import Image

from incomplete_reports import as_form, incomplete
from report_variants import base_report, variants

from immutools import frames
from immutools.analysis import charts
from immutools.analysis.loading import AnalysisUsageError


@pytest.fixture(scope="module")
def bundled():
    return frames.load()


@pytest.fixture(scope="module")
def mixed():
    return frames.frames_from(list(variants().values()))


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def pixels(png_path) -> np.ndarray:
    return np.asarray(Image.open(png_path).convert("RGB")).reshape(-1, 3)


def packed(px: np.ndarray) -> np.ndarray:
    px = px.astype(np.uint32)
    return (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]


def colours_in(png_path) -> set:
    return {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in np.unique(packed(pixels(png_path)))}


def svg_texts(svg_text: str) -> str:
    root = ET.fromstring(svg_text.encode())
    return "\n".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("}text"))


def figure_texts(chart) -> list[str]:
    return [t.get_text() for t in chart.figure.findobj(Text) if t.get_text()]


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_chart_renders_png_svg_and_pdf(kind, bundled, tmp_path):
    """The SVG assertion changed with the writers' issue: text is now kept as <text> elements
    (svg.fonttype none) so a writer can edit it; the drawn-as-paths form is still available."""
    chart = charts.make(kind, bundled)
    png = chart.save(tmp_path / f"{kind}.png")
    svg = chart.save(tmp_path / f"{kind}.svg")
    pdf = chart.save(tmp_path / f"{kind}.pdf")
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 800 and img.height > 300
    px = pixels(png)
    non_white = int((px != 255).any(axis=1).sum())
    assert non_white / len(px) > 0.03, "chart is (nearly) blank"
    assert len(np.unique(packed(px))) > 30
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    # Editable SVG: every image is named in a <text> element, with its OS version, and "replica".
    text = svg_texts(open(svg).read())
    for row in bundled.images.itertuples():
        assert row.image in text, (kind, row.image)
        assert row.os_version in text, (kind, row.os_version)
    assert "replica" in text
    assert "<text" not in chart.svg(text_as_paths=True)          # the self-contained variant
    assert open(pdf, "rb").read(5) == b"%PDF-"
    if shutil.which("pdftotext"):
        pdf_text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        flat = re.sub(r"\s+", "", pdf_text)
        for row in bundled.images.itertuples():
            assert re.sub(r"\s+", "", row.image) in flat, (kind, row.image)


def test_exports_are_reproducible(bundled, tmp_path):
    chart = charts.make("surface", bundled)
    assert chart.svg() == chart.svg()
    assert chart.pdf() == chart.pdf()


def test_no_replica_mark_on_vendor_images(tmp_path):
    report = base_report()
    report["image"]["provenance"] = None
    report["image"]["path"] = "vendor.bin"
    f = frames.frames_from([report])
    for kind in charts.CHART_KINDS:
        text = charts.make(kind, f).svg(text_as_paths=False)
        assert "vendor" in text and "replica" not in text, kind


def test_names_from_images_are_drawn_literally():
    report = base_report()
    report["image"]["provenance"]["spec"] = "cost-$5-$x^2$-<script>alert(1)</script>"
    report["os"]["version"] = "1.0$beta"
    f = frames.frames_from([report])
    for kind in charts.CHART_KINDS:
        text = charts.make(kind, f).svg(text_as_paths=False)
        assert "cost-$5-$x^2$-&lt;script&gt;" in text, kind
        assert "<script" not in text
        assert "1.0$beta" in text


def _long_names_report():
    r = base_report()
    r["image"]["provenance"]["spec"] = "an-image-with-a-rather-long-name-that-goes-on"
    slots = r["update"]["slots"]
    slots[0]["name"] = "fedora-coreos-a2d285f38d75e0c9b1f2a3c4d5e6f7a8b9c0d1e2.0"
    slots[1]["version"] = "4593.2.0-with-a-long-build-suffix-20260104.3.0.successful"
    r["update"]["rollback"] = ("automatic: a slot that never reaches flatcar-setgoodroot keeps successful=0 and GRUB falls "
                               "back to the other slot at the next boot; manual: update_engine_client -rollback, which "
                               "marks the other slot active and successful for the next boot only") * 2
    return r


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_no_label_is_cut_short(kind, bundled):
    """No text ends in an ellipsis; long slot names, versions and rollback texts appear whole
    (wrapped), on the bundled reports and on a report with long names."""
    long = _long_names_report()
    f = frames.frames_from(list(bundled.reports) + [long])
    texts = figure_texts(charts.make(kind, f))
    assert not [t for t in texts if "…" in t or t.endswith("...")], kind
    if kind == "updates":
        flat = " ".join(" ".join(t.split()) for t in texts)
        squeezed = re.sub(r"\s+", "", flat)
        for s in f.update_slots.itertuples():
            assert re.sub(r"\s+", "", f"slot {s.slot}") in squeezed, s.slot
            if isinstance(s.version, str):
                assert re.sub(r"\s+", "", s.version) in squeezed, s.version
        for rb in f.images["update_rollback"].dropna():
            assert re.sub(r"\s+", "", rb) in squeezed, rb[:40]


def test_updates_text_stays_inside_its_column(bundled):
    """Wrapped, not overflowing: every slot text ends inside its box, and every column's text ends
    before the next column starts (measured on the rendered figure)."""
    long = _long_names_report()
    chart = charts.updates(frames.frames_from(list(bundled.reports) + [long]))
    fig = chart.figure
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [p for p in ax.patches]
    assert boxes
    for t in ax.texts:
        bb = t.get_window_extent(renderer=renderer)
        x0, y0 = ax.transData.inverted().transform((bb.x0, bb.y0))
        x1, y1 = ax.transData.inverted().transform((bb.x1, bb.y1))
        owner = [p for p in boxes if p.get_x() - 1e-6 <= x0 <= p.get_x() + p.get_width()
                 and min(p.get_y(), p.get_y() + p.get_height()) - 1e-6 <= (y0 + y1) / 2 <= max(p.get_y(), p.get_y() + p.get_height())]
        for p in owner:
            assert x1 <= p.get_x() + p.get_width() + 1e-6, t.get_text()
    fig_bb = fig.bbox
    for t in fig.findobj(Text):
        if t.get_text() and t.get_visible():
            bb = t.get_window_extent(renderer=renderer)
            assert bb.x1 <= fig_bb.x1 + 1 and bb.x0 >= fig_bb.x0 - 1, t.get_text()[:40]


@pytest.fixture(scope="module")
def with_incomplete():
    """The bundled reports plus an independently built Flatcar whose mount table lacks / and /usr
    (completeness evaluated by the real check) and a report with no surface section (two rubric
    dimensions cannot be scored)."""
    f = frames.load()
    broken = incomplete(base_report(), spec="flatcar-built-elsewhere")
    fewer = base_report("talos-v1.9.5-amd64-metal")
    fewer["image"]["provenance"]["spec"] = "talos-without-surface"
    fewer["surface"] = None
    return frames.frames_from(list(f.reports) + [broken, fewer])


def test_ranking_frame_ranks_only_comparable_images(with_incomplete):
    r = with_incomplete.ranking.set_index("image")
    assert not r.loc["flatcar-built-elsewhere", "ranked"] and pd.isna(r.loc["flatcar-built-elsewhere", "rank"])
    assert r.loc["flatcar-built-elsewhere", "marker"] == "incomplete: 2 facts missing"
    assert not r.loc["talos-without-surface", "ranked"]
    assert r.loc["talos-without-surface", "dimensions_scored"] < r.loc["talos-without-surface", "dimensions_total"]
    ranked = r[r["ranked"]]
    # Competition ranks, recomputed: 1 + the number of ranked images scoring strictly higher.
    for image, row in ranked.iterrows():
        assert row["rank"] == 1 + int((ranked["score"] > row["score"] + 1e-9).sum()), image


def test_spectrum_never_ranks_an_incomplete_image(with_incomplete):
    fig = charts.spectrum(with_incomplete).figure
    rowax = fig.axes[1]
    labels = [t.get_text() for t in rowax.get_yticklabels()]
    rows = charts.spectrum_rows(with_incomplete)
    ranked_rows = [r for r in rows if r["ranked"]]
    # Ranked rows come first, by rank; the others after the divider, never with a rank.
    assert [r["ranked"] for r in rows] == sorted([r["ranked"] for r in rows], reverse=True)
    assert [r["rank"] for r in ranked_rows] == sorted(r["rank"] for r in ranked_rows)
    broken = next(i for i, lbl in enumerate(labels) if lbl.startswith("flatcar-built-elsewhere"))
    assert "INCOMPLETE: 2 facts missing" in labels[broken]
    assert broken >= len(ranked_rows)
    texts = [t.get_text() for t in rowax.texts]
    assert any(t.endswith("not ranked: incomplete: 2 facts missing") for t in texts)
    assert any("not ranked: 6/8 dimensions" in t or "not ranked: " in t and "dimensions" in t for t in texts)
    assert any(t.startswith("NOT RANKED") for t in texts)
    rank_texts = [t for t in texts if "rank " in t and "not ranked" not in t]
    assert len(rank_texts) == len(ranked_rows)
    # The footnote names the missing facts.
    assert any("flatcar-built-elsewhere: mount /, mount /usr missing" in t.get_text() for t in fig.texts)


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_every_chart_marks_an_incomplete_image(kind, with_incomplete):
    texts = figure_texts(charts.make(kind, with_incomplete))
    assert any("flatcar-built-elsewhere" in t and "INCOMPLETE" in t for t in texts), kind
    assert any("INCOMPLETE = the report lacks facts" in t for t in texts), kind


def test_heatmap_hatches_the_overall_score_of_unranked_images(with_incomplete):
    ax = charts.heatmap(with_incomplete).figure.axes[0]
    n_unranked = int((~with_incomplete.ranking["ranked"]).sum())
    assert n_unranked == 2
    assert sum(t.get_text().endswith("\nnot ranked") for t in ax.texts) == n_unranked


def test_spectrum_folds_the_forms_of_one_image():
    base = base_report()
    base = as_form(base, "qcow2", None)
    lz4 = as_form(base, "raw", "lz4")
    raw = as_form(base, "raw", None)
    f = frames.frames_from([base, lz4, raw, base_report("talos-v1.9.5-amd64-metal")])
    spec = base["image"]["provenance"]["spec"]
    assert list(f.images["image"]) == [spec, f"{spec} [lz4]", f"{spec} [raw]", "talos-v1.9.5-amd64-metal"]
    assert not any("#" in i for i in f.images["image"])
    labels = [t.get_text() for t in charts.spectrum(f).figure.axes[1].get_yticklabels()]
    assert len(labels) == 2
    assert any(lbl.startswith(f"{spec} [qcow2, lz4, raw]") for lbl in labels)
    # One image in three forms ranks once: talos first, flatcar second (not 2, 2, 2 then 5).
    assert sorted(f.ranking["rank"].dropna().astype(int)) == [1, 2, 2, 2]


def test_spectrum_strip_and_rows_share_one_axis(bundled):
    fig = charts.spectrum(bundled).figure
    strip, rows = fig.axes[0], fig.axes[1]
    assert strip.get_xlim() == rows.get_xlim()
    for x in (0, 50, 100):
        assert abs(strip.transData.transform((x, 0))[0] - rows.transData.transform((x, 0))[0]) < 0.5


def test_partition_map_marks_active_slots_and_labels_every_partition(bundled):
    fig = charts.partitions(bundled).figure
    ax = fig.axes[0]
    parts = bundled.partitions
    # One outline around each active slot (its partitions when they are not side by side).
    want_outlines, want_marks = 0, []
    for image, group in parts.sort_values(["image", "start"]).groupby("image", observed=True):
        # A report may mark more than one slot active (a GRUB entry and a UKI): one mark per slot.
        flags = list(group["slot_active"].fillna(False))
        names = list(group["slot"])
        for slot in dict.fromkeys(n for n, flag in zip(names, flags) if flag):
            active = [i for i, (n, flag) in enumerate(zip(names, flags)) if flag and n == slot]
            contiguous = active == list(range(active[0], active[-1] + 1))
            want_outlines += 1 if contiguous else len(active)
            want_marks.append(f"▲ active slot {slot}")
    outlines = [p for p in ax.patches if p.get_facecolor()[3] == 0 and p.get_linewidth() >= 2]
    assert len(outlines) == want_outlines > 0
    marks = [t.get_text() for t in ax.texts if t.get_text().startswith("▲ active slot")]
    assert sorted(marks) == sorted(want_marks)
    texts = [t.get_text() for t in ax.texts]
    for image, group in parts.groupby("image", observed=True):
        for p in group.itertuples():
            assert any(t == str(p.number) or t.startswith(f"{p.number} ") or t.startswith(f"{p.number}:") for t in texts), (image, p.number)
    # Tiny partitions (a 2 MiB BIOS boot partition on a 4-8 GiB disk) are called out with their size.
    assert any(t.startswith("2 BIOS-BOOT: 2 MiB") for t in texts)


def test_callouts_never_overlap():
    callouts = [(x, f"label {x}") for x in (0.0, 0.1, 0.2, 50, 50.5, 99.0, 99.5, 100.0)]
    widths = [10.0] * len(callouts)
    placed = charts._place_callouts(callouts, widths, 100.0, 1.0)
    assert len(placed) == len(callouts)
    for (cx1, x1, l1, _t1, _a1), (cx2, x2, l2, _t2, _a2) in itertools.combinations(placed, 2):
        if l1 == l2:
            assert x1 + 10 <= x2 or x2 + 10 <= x1
    for cx, x, _level, _text, align in placed:
        assert 0 <= x and x + 10 <= 100 + 1e-9
        assert (x == cx) if align == "left" else (x + 10 == cx or x == 0)


def test_partition_scale_switches_for_very_different_disks(bundled):
    report = base_report()
    big = copy.deepcopy(report)
    big["image"]["provenance"]["spec"] = "big-disk"
    big["image"]["size"] *= 10
    f = frames.frames_from([report, big])
    assert "% of each disk" in charts.partitions(f).figure.axes[0].get_xlabel()
    assert "GiB" in charts.partitions(frames.frames_from([report, base_report("flatcar-stable-3227-amd64-pristine")])).figure.axes[0].get_xlabel()
    sizes = bundled.images["size"]
    want = "GiB" if sizes.max() <= 4 * sizes.min() else "% of each disk"
    assert want in charts.partitions(bundled).figure.axes[0].get_xlabel()


def test_every_role_has_its_own_colour(bundled):
    styles = charts._role_styles(charts.ROLE_ORDER[:16])
    colours = [c for c, _h in styles.values()]
    assert len(set(colours)) == len(colours) == 16
    chart = charts.partitions(bundled)
    legend = chart.figure.legends[-1] if chart.figure.legends[-1].get_title().get_text().startswith("role") else chart.figure.legends[0]
    roles = {t.get_text(): h.get_facecolor() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert set(roles) == {str(r) for r in bundled.partitions["role"].dropna().unique()}
    assert len({tuple(c) for c in roles.values()}) == len(roles), roles


def test_partition_chart_fits_a_page_width(bundled):
    """The bundled default images (data/replicas/bundle.yaml) on one landscape A4/Letter page; more
    images grow the chart by little more than an inch each."""
    import yaml

    bundle = yaml.safe_load((frames.bundled_reports_dir().parent / "replicas" / "bundle.yaml").read_text())
    f = frames.load([frames.bundled_reports_dir() / f"{img['spec']}.json" for img in bundle["images"]])
    fig = charts.partitions(f).figure
    w, h = fig.get_size_inches()
    assert w <= 10.5 and h <= 8.3 + 0.1, (w, h)        # a landscape A4/Letter page
    w, h = charts.partitions(bundled).figure.get_size_inches()
    assert w <= 10.5 and h / len(bundled.images) < 1.4


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium is not installed")
def test_chart_svg_renders_its_text_in_a_headless_browser(bundled, tmp_path):
    """The editable SVG (text as <text>, the viewer's font) renders in a browser: a screenshot with
    dark text pixels in the label column, and the DOM keeps every image name as text."""
    svg = tmp_path / "spectrum.svg"
    charts.spectrum(bundled).save(svg)
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1800,1400", svg.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"))
    left = px[:, : px.shape[1] // 3]                 # the image labels are drawn here, as text only
    dark = (left.max(axis=2) < 90).mean()
    assert dark > 0.002, f"no text drawn in the label column ({dark:.4f})"
    dom = subprocess.run(common + ["--dump-dom", svg.as_uri()], capture_output=True, text=True, timeout=180).stdout
    for image in bundled.images["image"]:
        assert image in dom, image


def test_states_use_the_okabe_ito_colours(bundled, tmp_path):
    path = charts.surface(bundled).save(tmp_path / "surface.png")
    seen = colours_in(path)
    states = {s for s in bundled.paths[bundled.paths["standard"]]["state"].astype(str)}
    for state in ("read-only", "volatile", "persistent"):
        colour = hex_rgb(charts.STATE_STYLE[state][0])
        assert (colour in seen) == (state in states), state
    assert set(charts.STATE_STYLE[s][0] for s in ("read-only", "volatile", "persistent")) <= set(charts.OKABE_ITO.values())


def test_spectrum_shows_each_family_with_its_own_marker(mixed):
    """Legend entries name the distributions as they spell themselves (the issue changed this from
    the rubric's family ids), with the family added where the names do not contain it."""
    fig = charts.spectrum(mixed).figure
    legend = fig.axes[0].get_legend()
    names = [t.get_text() for t in legend.get_texts()]
    dist = dict(zip(mixed.images["image"], mixed.images["distribution"]))
    assert names[0] == f"{dist['synthetic-ostree']} (rpm-ostree)"
    assert names[1:] == [dist["flatcar-stable-4593-amd64-pristine"], dist["synthetic-bottlerocket"], dist["synthetic-talos"]]
    assert names[1] == "Flatcar Container Linux"
    markers = {h.get_marker() for h in legend.legend_handles}
    assert len(markers) == 4
    # The rows are ordered most immutable first.
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    overall = mixed.scores[mixed.scores["dimension"] == "overall"].sort_values("score", ascending=False)
    assert [lbl.split("\n")[0].split(" [")[0] for lbl in labels] == list(overall["image"])     # " [qcow2]": the form


def test_distribution_names_as_the_distributions_spell_them(bundled):
    names = dict(zip(bundled.images["os_id"].astype(str) + "/" + bundled.images["os_variant"].astype(str),
                     bundled.images["distribution"]))
    want = {"flatcar/None": "Flatcar Container Linux", "bottlerocket/aws-k8s-1.31": "Bottlerocket OS",
            "talos/None": "Talos", "debian/None": "Debian GNU/Linux", "fedora/coreos": "Fedora CoreOS",
            "fedora/silverblue": "Fedora Linux (Silverblue)"}
    for key, name in want.items():
        if key in names:
            assert names[key] == name, key


def test_heatmap_marks_unscored_dimensions():
    report = base_report()
    report["surface"] = None
    f = frames.frames_from([report, base_report()])
    texts = [t.get_text() for t in charts.heatmap(f).figure.axes[0].texts]
    unknown = f.scores[(f.scores["dimension"] != "overall") & f.scores["score"].isna()]
    assert texts.count("n/a") == len(unknown) > 0


def test_updates_chart_shows_every_slot_and_the_active_one(bundled):
    fig = charts.updates(bundled).figure
    texts = [t.get_text() for t in fig.axes[0].texts]
    slots = bundled.update_slots
    heads = [t for t in texts if t.startswith("slot ") or t.startswith("▶ slot ")]
    assert len(heads) == len(slots)
    assert sum(t.startswith("▶") for t in heads) == int(slots["active"].sum())


def test_bad_requests():
    f = frames.frames_from([base_report()])
    with pytest.raises(AnalysisUsageError):
        charts.make("pie", f)
    with pytest.raises(AnalysisUsageError):
        charts.make("spectrum", f).save("/tmp/x.jpg")
    assert "PDF" in "PDF" and charts.CHART_FORMATS == ("png", "svg", "pdf")
    with pytest.raises(AnalysisUsageError):
        charts.spectrum(frames.frames_from([]))
