"""Charts: every kind renders to PNG and SVG, names every image with its version, marks replicas,
uses the colour-blind-safe palette, and draws what the frames say (active slots, every partition).

Compared against: the frames the charts are drawn from (which partitions, which slot is active,
which images are replicas), and the pixels / SVG text of the rendered files.
"""

from __future__ import annotations

import copy
import itertools
import xml.etree.ElementTree as ET

import numpy as np
from matplotlib.text import Text
import pytest
from PIL import Image

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


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_chart_renders_png_and_svg(kind, bundled, tmp_path):
    chart = charts.make(kind, bundled)
    png = chart.save(tmp_path / f"{kind}.png")
    svg = chart.save(tmp_path / f"{kind}.svg")
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 800 and img.height > 300
    px = pixels(png)
    non_white = int((px != 255).any(axis=1).sum())
    assert non_white / len(px) > 0.03, "chart is (nearly) blank"
    assert len(np.unique(packed(px))) > 30
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "<text" not in open(svg).read()              # fonts drawn as paths: self-contained
    # Every image is named with its OS version, and marked as a replica.
    text = "\n".join(t.get_text() for t in chart.figure.findobj(Text))
    for row in bundled.images.itertuples():
        assert row.image in text, (kind, row.image)
        assert row.os_version in text, (kind, row.os_version)
    assert "replica" in text


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


def test_partition_map_marks_active_slots_and_labels_every_partition(bundled):
    fig = charts.partitions(bundled).figure
    ax = fig.axes[0]
    parts = bundled.partitions
    # One outline around each active slot (its partitions when they are not side by side).
    want_outlines, want_marks = 0, []
    for image, group in parts.sort_values(["image", "start"]).groupby("image", observed=True):
        active = [i for i, flag in enumerate(group["slot_active"].fillna(False)) if flag]
        if active:
            contiguous = active == list(range(active[0], active[-1] + 1))
            want_outlines += 1 if contiguous else len(active)
            want_marks.append(f"▲ active slot {charts._short(group['slot'].iloc[active[0]], 40)}")
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


def test_states_use_the_okabe_ito_colours(bundled, tmp_path):
    path = charts.surface(bundled).save(tmp_path / "surface.png")
    seen = colours_in(path)
    states = {s for s in bundled.paths[bundled.paths["standard"]]["state"].astype(str)}
    for state in ("read-only", "volatile", "persistent"):
        colour = hex_rgb(charts.STATE_STYLE[state][0])
        assert (colour in seen) == (state in states), state
    assert set(charts.STATE_STYLE[s][0] for s in ("read-only", "volatile", "persistent")) <= set(charts.OKABE_ITO.values())


def test_spectrum_shows_each_family_with_its_own_marker(mixed):
    fig = charts.spectrum(mixed).figure
    legend = fig.axes[0].get_legend()
    names = [t.get_text() for t in legend.get_texts()]
    assert names == ["rpm-ostree", "Flatcar", "Bottlerocket", "Talos"]
    markers = {h.get_marker() for h in legend.legend_handles}
    assert len(markers) == 4
    # The rows are ordered most immutable first.
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    overall = mixed.scores[mixed.scores["dimension"] == "overall"].sort_values("score", ascending=False)
    assert [lbl.split(" (")[0] for lbl in labels] == list(overall["image"])


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
    with pytest.raises(AnalysisUsageError):
        charts.spectrum(frames.frames_from([]))
