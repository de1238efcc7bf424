"""Charts of scan reports (matplotlib with the Agg canvas; PNG, SVG and PDF).

Every chart function takes a ``Frames`` (``immutools.frames.load(...)``) or anything ``load``
accepts, and returns a ``Chart``: ``chart.save("x.png" | "x.svg" | "x.pdf")``, ``chart.svg()``,
``chart.pdf()``, ``chart.png()`` (bytes), ``chart.figure`` (the matplotlib Figure), and it shows
itself in a notebook. SVG and PDF keep text as text (``svg.fonttype: none``, TrueType fonts
embedded in the PDF), so a writer can edit a label in Inkscape or Illustrator and search the PDF;
``chart.svg(text_as_paths=True)`` draws glyphs as paths for a viewer without the font.

Images that cannot be ranked (``immutools.analysis.ranking``: a guaranteed fact missing, or a
score over fewer rubric dimensions) are never drawn as if they were: their chart label says
``INCOMPLETE: n facts missing``, the spectrum puts them below the ranked images with hollow,
hatched markers and the reason, the heatmap hatches their overall cell, and every chart's
footnote names them.

* ``spectrum``   - every image on one 0-100 axis (the overall score), then one row per image
                   release (the forms of one image folded), ranked images first with their rank.
* ``heatmap``    - images x rubric dimensions, the score in each cell.
* ``partitions`` - one bar per image, partitions to scale: role on top, run-time state below,
                   the active update slot outlined; tiny partitions get call-outs.
* ``surface``    - standard paths x images: read-only / volatile / persistent.
* ``updates``    - update slots side by side (version, A/B bits, active marker), agent, rollback.

Design: colour-blind-safe palettes (Okabe-Ito for states and families, Paul Tol's "light"
scheme for partition roles), every colour also carried by text or shape so print in grey works,
image names with OS version on every chart, "replica" on images built from published layouts
(``report["image"]["provenance"]["replica"]``) and a footnote saying what that means. Text from
reports is drawn literally (mathtext off), so ``$`` in a name is just a character.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass

# No pyplot and no global backend switch (that would change a notebook's own backend): every
# figure gets its own Agg canvas, so no display is ever needed.
import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from immutools.analysis.frames import Frames, load
from immutools.analysis.loading import AnalysisUsageError, is_known, is_yes
from immutools.analysis.rubric import load_rubric

CHART_KINDS = ("spectrum", "heatmap", "partitions", "surface", "updates")

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
# Paul Tol's "light" qualitative scheme (also colour-blind safe), for partition roles: lighter than
# Okabe-Ito so the two strips of a partition bar never read as one legend.
TOL_LIGHT = ["#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00"]
# More roles than Tol's light scheme has colours: then colours from Tol's muted and vibrant schemes
# (also colour-blind safe), each distinct from the light ones; text on the darker ones is white.
ROLE_COLOURS = TOL_LIGHT + ["#CC6677", "#AA4499", "#4477AA", "#DDAA33", "#EE3377", "#117733", "#882255", "#332288"]
GREY = "#DDDDDD"

STATE_STYLE = {   # path and partition states: colour, short text, text colour
    "read-only": (OKABE_ITO["blue"], "RO", "white"),
    "volatile": (OKABE_ITO["yellow"], "vol", "black"),
    "persistent": (OKABE_ITO["vermillion"], "PERS", "white"),
    "standby slot": (OKABE_ITO["sky_blue"], "standby", "black"),
    "verity hash": (OKABE_ITO["reddish_purple"], "hash", "black"),
    "not mounted": (GREY, "-", "black"),
}
ROLE_ORDER = ["esp", "boot", "bios-boot", "usr", "root", "usr-verity", "root-verity", "data", "oem", "var", "state",
              "ephemeral", "meta", "private", "reserved", "swap", "home"]
FAMILY_COLOURS = [OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black")]
FAMILY_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "h"]
REPLICA_NOTE = ("replica = a disk image built by immutools from the distribution's published layout "
                "(small stand-ins for file contents), not a vendor image")

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "svg.fonttype": "none",        # text stays text: editable and searchable (the viewer supplies the font)
    "pdf.fonttype": 42,            # TrueType embedded: text stays selectable and editable in the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "immutools",   # reproducible SVG ids
    "text.parse_math": False,      # names from images may contain '$'
    "text.usetex": False,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


CHART_FORMATS = ("png", "svg", "pdf")
# Reproducible files: no creation date in SVG or PDF metadata.
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": None}


@dataclass
class Chart:
    kind: str
    figure: Figure

    def save(self, path) -> str:
        path = str(path)
        fmt = path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if fmt not in CHART_FORMATS:
            raise AnalysisUsageError(f"{path}: charts are written as .png, .svg or .pdf")
        with mpl.rc_context(RC):
            self.figure.savefig(path, format=fmt, bbox_inches="tight", facecolor="white", metadata=_METADATA[fmt])
        return path

    def png(self, dpi: int = 150) -> bytes:
        buf = io.BytesIO()
        with mpl.rc_context(RC):
            self.figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        return buf.getvalue()

    def pdf(self) -> bytes:
        """The chart as a one-page PDF, text kept as text (TrueType fonts embedded)."""
        buf = io.BytesIO()
        with mpl.rc_context(RC):
            self.figure.savefig(buf, format="pdf", bbox_inches="tight", facecolor="white", metadata=_METADATA["pdf"])
        return buf.getvalue()

    def svg(self, text_as_paths: bool = False) -> str:
        """The chart as SVG text. Text is kept as ``<text>`` elements (editable, searchable; the
        viewer supplies the font, DejaVu Sans); ``text_as_paths=True`` draws the glyphs as paths
        instead (self-contained, not editable)."""
        buf = io.StringIO()
        with mpl.rc_context(dict(RC, **({"svg.fonttype": "path"} if text_as_paths else {}))):
            self.figure.savefig(buf, format="svg", bbox_inches="tight", facecolor="white", metadata=_METADATA["svg"])
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png(dpi=100)


def _styled(func):
    """Build the chart inside the house style (fonts, no mathtext, no top/right spines)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper


def make(kind: str, data, rubric=None) -> Chart:
    """Build the chart named ``kind`` (one of ``CHART_KINDS``)."""
    funcs = {"spectrum": spectrum, "heatmap": heatmap, "partitions": partitions, "surface": surface, "updates": updates}
    if kind not in funcs:
        raise AnalysisUsageError(f"unknown chart {kind!r}: choose from {', '.join(CHART_KINDS)}")
    if kind in ("spectrum", "heatmap"):
        return funcs[kind](data, rubric=rubric)
    return funcs[kind](data)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _frames(data, rubric=None):
    if isinstance(data, Frames):
        if rubric is not None and data.rubric is not rubric:
            return Frames(data.reports, data.warnings, rubric)
        return data
    return load(data, rubric=rubric)


def _new_figure(width: float, height: float) -> Figure:
    with mpl.rc_context(RC):
        fig = Figure(figsize=(width, height), layout=None)
        FigureCanvasAgg(fig)
    return fig


def _footnote(fig: Figure, frames, extra: str | None = None) -> None:
    notes = []
    if extra:
        notes.append(extra)
    if bool(frames.images["replica"].fillna(False).any()):
        notes.append(REPLICA_NOTE)
    incomplete = frames.images[frames.images["completeness"] == "incomplete"]
    if len(incomplete):
        notes.append("INCOMPLETE = the report lacks facts its distribution's documentation guarantees: "
                     + "; ".join(f"{r.image}: {', '.join(r.missing_facts)} missing" for r in incomplete.itertuples())
                     + ". Such an image is not ranked.")
    if notes:
        fig.text(0.01, 0.0, "\n".join(textwrap.fill(n, 150) for n in notes), ha="left", va="top", fontsize=8,
                 color="#333333")


def _image_rows(frames) -> list[dict]:
    df = frames.images
    return [dict(zip(df.columns, row)) for row in df.itertuples(index=False)]


def _families(frames, rubric=None) -> dict[str, str]:
    """image id -> family name: the rubric's reference family, else the distribution's name."""
    names = dict(zip(frames.images["image"], frames.images["distribution"]))
    rubric = rubric or frames.rubric or load_rubric()
    out = {}
    for entry in frames.reports:
        fam = rubric.family_of(entry.report)
        if fam is None:
            fam = str(names.get(entry.image_id) or "unknown")
        out[entry.image_id] = fam
    return out


def _family_styles(families: dict[str, str], rubric=None) -> dict[str, tuple[str, str]]:
    rubric = rubric or load_rubric()
    order = [f.name for f in rubric.families]
    names = sorted(set(families.values()), key=lambda f: (order.index(f) if f in order else len(order), f))
    return {name: (FAMILY_COLOURS[i % len(FAMILY_COLOURS)], FAMILY_MARKERS[i % len(FAMILY_MARKERS)])
            for i, name in enumerate(names)}


def human_size(n) -> str:
    """Bytes as ``512 MiB``, ``2.1 GiB``; ``?`` when unknown."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") or n >= 100 else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return str(n)


def _text_width(fig: Figure, ax, text: str, fontsize: float) -> float:
    """Width of ``text`` in data units of ``ax``'s x axis."""
    renderer = fig.canvas.get_renderer()
    t = ax.text(0, 0, text, fontsize=fontsize)
    bbox = t.get_window_extent(renderer=renderer)
    t.remove()
    inv = ax.transData.inverted()
    x0 = inv.transform((bbox.x0, bbox.y0))[0]
    x1 = inv.transform((bbox.x1, bbox.y0))[0]
    return abs(x1 - x0)


_known, _yes = is_known, is_yes


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _require_images(frames) -> None:
    if frames.images.empty:
        raise AnalysisUsageError("no reports to chart")


# ------------------------------------------------------------------------------------------------
# spectrum
# ------------------------------------------------------------------------------------------------

def spectrum_rows(frames) -> list[dict]:
    """The spectrum's rows: one per image release, the forms of one image folded into one row.

    Images sharing a ``base_image`` (the same image read as raw, qcow2, lz4, ...) and the same
    score and standing become one row listing their forms; a form that scores differently keeps
    its own row. Ranked rows first (by rank, then name), then the rows that are not ranked.
    Each row: ``images`` (ids), ``base``, ``forms``, ``score``, ``ranked``, ``rank``, ``marker``,
    ``label`` (image, forms), ``detail`` (distribution, version, arch, replica, incomplete)."""
    ranking = frames.ranking.set_index("image")
    info = frames.images.set_index("image")
    groups: dict[tuple, dict] = {}
    for image in frames.images["image"]:
        r, i = ranking.loc[image], info.loc[image]
        score = float(r["score"])
        key = (i["base_image"], round(score, 6) if not math.isnan(score) else None, bool(r["ranked"]), r["marker"])
        row = groups.setdefault(key, {
            "images": [], "base": i["base_image"], "forms": [], "score": score, "ranked": bool(r["ranked"]),
            "rank": int(r["rank"]) if _known(r["rank"]) else None, "marker": r["marker"] if _known(r["marker"]) else "",
            "note": r["note"] if _known(r["note"]) else "",
            "detail": " ".join(str(x) for x in (i["distribution"], i["os_version"], i["arch"]) if _known(x))
                      + (" · replica" if _yes(i["replica"]) else "")
                      + (f" · INCOMPLETE: {i['facts_missing']} fact{'s' if i['facts_missing'] != 1 else ''} missing"
                         if i["completeness"] == "incomplete" else ""),
        })
        row["images"].append(image)
        if i["form"] not in row["forms"]:
            row["forms"].append(str(i["form"]))
    rows = list(groups.values())
    for row in rows:
        forms = row["forms"]
        row["label"] = row["base"] + ("" if forms == ["raw"] else f" [{', '.join(forms)}]")
    ranked = sorted((r for r in rows if r["ranked"]), key=lambda r: (r["rank"], r["label"]))
    others = sorted((r for r in rows if not r["ranked"]),
                    key=lambda r: (math.isnan(r["score"]), -(r["score"] if not math.isnan(r["score"]) else 0), r["label"]))
    return ranked + others


def _family_label(name: str, members: list[str]) -> str:
    """Legend text: the distributions' own names; the rubric's family name added when it differs."""
    names = list(dict.fromkeys(members))
    text = " / ".join(names)
    return text if name.lower() in text.lower() else f"{text} ({name})"


@_styled
def spectrum(data, rubric=None) -> Chart:
    """Every image on one 0-100 axis (top strip), then one row per image release, ranked first.

    The strip and the rows share one x axis (same position, same scale: a score sits at the
    same horizontal place in both). Ranked images are drawn solid, with their rank; images
    that are not ranked (incomplete, or scored on fewer dimensions) are drawn hollow and
    hatched below a divider, with the reason, and never get a rank. Forms of one image (raw,
    qcow2, lz4...) are one row naming the forms. The legend names each family as its
    distributions spell themselves."""
    frames = _frames(data, rubric)
    _require_images(frames)
    rows = spectrum_rows(frames)
    families = _families(frames, rubric)
    styles = _family_styles(families, rubric or frames.rubric)
    dist = dict(zip(frames.images["image"], frames.images["distribution"]))
    n_ranked = sum(r["ranked"] for r in rows)
    n_others = len(rows) - n_ranked
    row_h, strip_in, top_in, bottom_in = 0.36, 0.75, 0.75, 0.7
    gap_rows = 1.2 if (n_others and n_ranked) else 0.0          # room for the "not ranked" divider
    body_in = row_h * (len(rows) + gap_rows)
    fig_h = top_in + strip_in + 0.35 + body_in + bottom_in
    fig = _new_figure(12, fig_h)
    left, width = 0.40, 0.44
    strip = fig.add_axes((left, 1 - (top_in + strip_in) / fig_h, width, strip_in / fig_h))
    rowax = fig.add_axes((left, bottom_in / fig_h, width, body_in / fig_h), sharex=strip)

    # --- the strip: all images on one axis --------------------------------------------------
    strip.set_xlim(-2, 102)
    strip.set_ylim(-1, 1)
    strip.axhline(0, color="#555555", lw=1.2, zorder=1)
    for spine in ("left", "top", "right"):
        strip.spines[spine].set_visible(False)
    strip.set_yticks([])
    strip.tick_params(axis="x", labelsize=8, labelbottom=True)
    strip.set_title("Immutability spectrum: overall score of every image on one axis", loc="left", pad=14)
    strip.text(0, 0.5, "← more mutable", ha="left", va="bottom", fontsize=8.5, color="#333333")
    strip.text(100, 0.5, "more immutable →", ha="right", va="bottom", fontsize=8.5, color="#333333")
    for r in rows:
        if math.isnan(r["score"]):
            continue
        colour, marker = styles[families[r["images"][0]]]
        if r["ranked"]:
            strip.scatter([r["score"]], [0], s=90, marker=marker, facecolor=colour, edgecolor="black", linewidth=0.6,
                          zorder=3, alpha=0.85)
        else:
            strip.scatter([r["score"]], [0], s=90, marker=marker, facecolor="white", edgecolor=colour, linewidth=1.4,
                          hatch="////", zorder=3)

    # --- one row per image release --------------------------------------------------------------
    y_of = {}
    y = 0.0
    for k, r in enumerate(rows):
        if k == n_ranked and n_ranked and n_others:
            y += gap_rows
        y_of[k] = y
        y += 1
    total = max(y, 1)
    rowax.set_ylim(total - 0.5, -0.5)
    rowax.set_xticks(range(0, 101, 10))
    strip.set_xticks(range(0, 101, 10))
    rowax.grid(axis="x", color="#E5E5E5", lw=0.8)
    rowax.set_axisbelow(True)
    for k, r in enumerate(rows):
        yy, s = y_of[k], r["score"]
        colour, marker = styles[families[r["images"][0]]]
        if math.isnan(s):
            rowax.text(1, yy, "not scored: no rubric dimension could be scored", va="center", fontsize=8.5, color="#555555")
            continue
        if r["ranked"]:
            rowax.plot([0, s], [yy, yy], color=colour, lw=1.4, alpha=0.6, zorder=2)
            rowax.scatter([s], [yy], s=60, marker=marker, facecolor=colour, edgecolor="black", linewidth=0.6, zorder=3)
            note = f"{s:.1f}   rank {r['rank']}" + (f" ({r['marker']})" if r["marker"] else "")
            rowax.text(s + 1.5, yy, note, va="center", fontsize=8.5)
        else:
            rowax.plot([0, s], [yy, yy], color=colour, lw=1.2, alpha=0.5, linestyle=(0, (2, 2)), zorder=2)
            rowax.scatter([s], [yy], s=60, marker=marker, facecolor="white", edgecolor=colour, linewidth=1.4,
                          hatch="////", zorder=3)
            # The reason goes where there is room: right of the marker, or left of it near 100.
            text = f"{s:.1f}   not ranked: {r['marker']}"
            right = s < 55
            rowax.text(s + 1.5 if right else s - 1.5, yy, text, va="center", ha="left" if right else "right",
                       fontsize=8.5, color="#8a1c00", fontstyle="italic",
                       bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85})
    if n_ranked and n_others:
        yd = y_of[n_ranked] - gap_rows / 2 - 0.25
        rowax.axhline(yd, color="#8a1c00", lw=0.9, linestyle=(0, (4, 2)))
        rowax.text(-1, yd + 0.15, "NOT RANKED: incomplete, or scored on fewer rubric dimensions (score shown for "
                   "reference only)", va="top", ha="left", fontsize=8.5, color="#8a1c00", fontweight="bold")
    rowax.set_yticks([y_of[k] for k in range(len(rows))])
    rowax.set_yticklabels([f"{r['label']}\n{r['detail']}" for r in rows], fontsize=8)
    for k, tick in enumerate(rowax.get_yticklabels()):
        if not rows[k]["ranked"]:
            tick.set_color("#8a1c00")
    rowax.tick_params(axis="y", length=0)
    rowax.set_xlabel("overall score (0 = mutable, 100 = immutable): weighted mean of the rubric dimensions")
    members: dict[str, list[str]] = {}
    for image, fam in families.items():
        members.setdefault(fam, []).append(str(dist.get(image) or fam))
    handles = [Line2D([], [], marker=m, linestyle="", markerfacecolor=c, markeredgecolor="black", markersize=8,
                      label=_family_label(name, members.get(name, [name]))) for name, (c, m) in styles.items()]
    if n_others:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="#555555",
                              markersize=8, label="hollow = not ranked"))
    strip.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.25), frameon=False, title="distribution",
                 fontsize=8.5, alignment="left")
    _footnote(fig, frames, "Scores from the rubric (data/rubric.yaml); see the heatmap for each dimension and the scores "
                           "frame for the evidence. Rank: 1 = most immutable among the ranked images; equal scores share "
                           "a rank. Forms of one image (raw, qcow2, lz4, ...) share a row.")
    return Chart("spectrum", fig)


# ------------------------------------------------------------------------------------------------
# heatmap
# ------------------------------------------------------------------------------------------------

@_styled
def heatmap(data, rubric=None) -> Chart:
    """Images (rows) x rubric dimensions (columns) plus the overall score; value in each cell."""
    frames = _frames(data, rubric)
    _require_images(frames)
    scores = frames.scores
    dims = [d for d in scores["dimension"].cat.categories if d != "overall"]
    titles = scores.drop_duplicates("dimension").set_index("dimension")["title"].to_dict()
    weights = scores[scores["dimension"] != "overall"].drop_duplicates("dimension").set_index("dimension")["weight"].to_dict()
    table = scores.pivot_table(index="image", columns="dimension", values="score", observed=False, dropna=False, aggfunc="first")
    rows = _image_rows(frames)
    ranked = dict(zip(frames.ranking["image"], frames.ranking["ranked"].fillna(False).astype(bool)))
    cols = dims + ["overall"]
    n, m = len(rows), len(cols)
    top_in, bottom_in, cell_h = 1.25, 0.95, 0.46
    fig_h = top_in + bottom_in + cell_h * n
    fig = _new_figure(2.9 + 1.05 * m, fig_h)
    ax = fig.add_axes((0.30, bottom_in / fig_h, 0.66, cell_h * n / fig_h))
    cmap = mpl.colormaps["cividis"]
    for i, r in enumerate(rows):
        for j, d in enumerate(cols):
            value = table.loc[r["image"], d] if d in table.columns else math.nan
            x = j + (0.25 if d == "overall" else 0)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                ax.add_patch(Rectangle((x, i), 1, 1, facecolor="white", edgecolor="#BBBBBB", hatch="///", lw=0.5))
                ax.text(x + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8.5, color="#333333")
                continue
            colour = cmap(value / 100)
            ax.add_patch(Rectangle((x, i), 1, 1, facecolor=colour, edgecolor="white", lw=1.5))
            lum = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
            if d == "overall" and not ranked.get(r["image"], True):
                # Not ranked: the overall number is shown faded behind a hatch, with the reason's tag.
                ax.add_patch(Rectangle((x, i), 1, 1, facecolor="white", alpha=0.55, edgecolor="none"))
                ax.add_patch(Rectangle((x, i), 1, 1, facecolor="none", edgecolor="#8a1c00", hatch="////", lw=1.2))
                ax.text(x + 0.5, i + 0.5, f"{value:.0f}\nnot ranked", ha="center", va="center", fontsize=7.5,
                        color="#8a1c00", fontweight="bold", linespacing=1.0)
                continue
            ax.text(x + 0.5, i + 0.5, f"{value:.0f}", ha="center", va="center", fontsize=9.5,
                    fontweight="bold" if d == "overall" else "normal", color="black" if lum > 0.5 else "white")
    ax.set_xlim(0, m + 0.25)
    ax.set_ylim(n, 0)
    ax.set_xticks([j + 0.5 + (0.25 if d == "overall" else 0) for j, d in enumerate(cols)])
    ax.set_xticklabels([textwrap.fill(titles.get(d, d), 14) + (f"\n(weight {weights[d]:g})" if d in weights else "")
                        for d in cols], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(n)])
    ax.set_yticklabels([r["chart_label"] for r in rows], fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.set_title("Rubric dimensions per image (0 = mutable, 100 = immutable)", loc="left", pad=58)
    sm = ScalarMappable(norm=Normalize(0, 100), cmap=cmap)
    cax = fig.add_axes((0.30, 0.5 / fig_h, 0.3, 0.14 / fig_h))
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("score (cividis scale); hatched n/a = the report lacks the facts; "
                 "hatched overall = not ranked (incomplete or scored on fewer dimensions)", fontsize=8)
    cb.ax.tick_params(labelsize=8)
    _footnote(fig, frames, None)
    return Chart("heatmap", fig)


# ------------------------------------------------------------------------------------------------
# partitions
# ------------------------------------------------------------------------------------------------

ROLE_HATCHES = ("", "...", "xxx")
PAGE_WIDTH_IN = 10.0


def _role_styles(roles) -> dict[str, tuple[str, str]]:
    """role -> (colour, hatch): a distinct colour per role present (``ROLE_COLOURS``, in
    ``ROLE_ORDER``); only past 16 roles do colours repeat, and then hatched."""
    ordered = [r for r in ROLE_ORDER if r in roles] + sorted(r for r in roles if r not in ROLE_ORDER)
    out, i = {}, 0
    for role in ordered:
        if role in ("unknown", "empty"):
            out[role] = (GREY, "")
            continue
        out[role] = (ROLE_COLOURS[i % len(ROLE_COLOURS)], ROLE_HATCHES[(i // len(ROLE_COLOURS)) % len(ROLE_HATCHES)])
        i += 1
    return out


def _place_callouts(callouts, widths, axis_max, gap):
    """Stack call-out labels above a bar so that no two overlap and leaders stay clear of labels.

    A label starts at its partition and runs right; near the right edge it ends at its partition
    instead. Right-running labels are placed from right to left and left-running ones from left
    to right, each on the lowest level where it fits, so a label further from its group's edge
    sits higher and its vertical leader passes beside the labels below it. Returns
    [(cx, x, level, text, align)].
    """
    levels: list[list[tuple[float, float]]] = []      # per level: (x0, x1) of its labels
    items = [(cx, text, width) for (cx, text), width in zip(callouts, widths)]
    leftward = sorted((i for i in items if i[0] + i[2] > axis_max), key=lambda i: i[0])
    rightward = sorted((i for i in items if i[0] + i[2] <= axis_max), key=lambda i: -i[0])
    placed = []
    for cx, text, width in leftward + rightward:
        align = "right" if (cx, text, width) in leftward else "left"
        x = max(0.0, cx - width) if align == "right" else cx
        span = (x - gap / 2, x + width + gap / 2)
        level = 0
        while level < len(levels) and not all(span[1] <= a or span[0] >= b for a, b in levels[level]):
            level += 1
        if level == len(levels):
            levels.append([])
        levels[level].append(span)
        placed.append((cx, x, level, text, align))
    return placed


@_styled
def partitions(data, scale: str = "auto") -> Chart:
    """One bar per image, partitions to scale.

    Upper strip: the partition's role (from its type); lower strip: its run-time state (the
    ``state`` column of the partitions frame). The partitions of the active update slot are
    outlined in black and the slot is named below the bar. Partitions too narrow for a label get a
    call-out above the bar (on as many levels as needed); partitions under 0.4 % of the axis are
    drawn 0.4 % wide so they stay visible. ``scale``: ``absolute`` (one GiB axis for all
    images), ``relative`` (each disk 0-100 %), or ``auto`` (absolute unless the largest disk is
    over 4x the smallest).
    """
    frames = _frames(data)
    _require_images(frames)
    rows = _image_rows(frames)
    parts = frames.partitions
    sizes = {r["image"]: (int(r["size"]) if _known(r["size"]) else 0) for r in rows}
    for img, grp in parts.groupby("image", observed=True):
        if len(grp) and grp["end"].notna().any():
            sizes[img] = max(int(sizes.get(img) or 0), int(grp["end"].max()))
    known = [v for v in sizes.values() if v]
    if scale == "auto":
        scale = "absolute" if known and max(known) <= 4 * min(known) else "relative"
    if scale not in ("absolute", "relative"):
        raise AnalysisUsageError("scale must be absolute, relative or auto")
    gib = 1024 ** 3
    axis_max = (max(known) / gib if known else 1) if scale == "absolute" else 100.0
    roles = sorted({str(r) for r in parts["role"].dropna().unique()} | ({"unknown"} if parts["role"].isna().any() else set()))
    role_style = _role_styles(roles)
    # Page-sized: 10 in wide (the text width of a landscape A4/Letter page); rows as low as the
    # 7-point labels allow, so five images fit one page and twenty a portrait page or two.
    label_fs = 7
    bar_h, role_h, state_h, level_h = 0.40, 0.26, 0.14, 0.15
    width_in, left = PAGE_WIDTH_IN, 0.22
    fig = _new_figure(width_in, 4)
    measure_ax = fig.add_axes((left, 0.1, 0.78, 0.8))
    measure_ax.set_xlim(0, axis_max * 1.001)

    def text_w(text):
        return _text_width(fig, measure_ax, text, label_fs)

    min_w = axis_max * 0.004
    gap = axis_max * 0.015
    layout = []
    for r in rows:
        grp = parts[parts["image"] == r["image"]].sort_values("start")
        disk = sizes.get(r["image"]) or 1
        unit = (1 / gib) if scale == "absolute" else (100.0 / disk)
        segs, callouts = [], []
        for p in grp.itertuples(index=False):
            if not _known(p.start) or not _known(p.size):
                continue
            x, w = float(p.start) * unit, max(float(p.size) * unit, min_w)
            name = f"{p.number} {p.label}" if _known(p.label) else f"{p.number}"
            full = f"{name}: {human_size(p.size)}"
            if text_w(full) < w * 0.95:
                inline = full
            elif text_w(name) < w * 0.95:
                inline = name
            elif text_w(str(p.number)) < w * 0.9:
                inline = str(p.number)
                callouts.append((x + w / 2, full))
            else:
                inline = None
                callouts.append((x + w / 2, full))
            segs.append((p, x, w, inline))
        placed = _place_callouts(callouts, [text_w(t) for _c, t in callouts], axis_max, gap)
        n_levels = 1 + max((p[2] for p in placed), default=-1)
        layout.append((r, grp, disk, unit, segs, callouts, placed, n_levels))
    measure_ax.remove()

    heights = [0.12 + level_h * n_levels + bar_h + 0.3 for *_rest, n_levels in layout]
    body = sum(heights)
    top_in, bottom_in = 0.45, 1.95
    fig_h = top_in + body + bottom_in
    fig.set_size_inches(width_in, fig_h)
    ax = fig.add_axes((left, bottom_in / fig_h, 0.78, body / fig_h))
    ax.set_xlim(0, axis_max * 1.001)
    ax.set_ylim(body, 0)
    ticks, y_cursor = [], 0.0
    for (r, grp, disk, unit, segs, callouts, placed, n_levels), height in zip(layout, heights):
        y0 = y_cursor + 0.12 + level_h * n_levels      # top of the bar
        ticks.append(y0 + bar_h / 2)
        ax.add_patch(Rectangle((0, y0), disk * unit, bar_h, facecolor="none", edgecolor="#999999", lw=0.6, zorder=1))
        covered = 0.0
        for p, x, w, _inline in segs:
            if x - covered > min_w / 4:
                ax.add_patch(Rectangle((covered, y0), x - covered, bar_h, facecolor="white", edgecolor="#999999",
                                       hatch="....", lw=0.6, zorder=1))
            covered = max(covered, x + w)
        if disk * unit - covered > min_w / 4:
            ax.add_patch(Rectangle((covered, y0), disk * unit - covered, bar_h, facecolor="white", edgecolor="#999999",
                                   hatch="....", lw=0.6, zorder=1))
        slot_spans: dict = {}
        for p, x, w, inline in segs:
            role = str(p.role) if _known(p.role) else "unknown"
            state = str(p.state)
            r_colour, r_hatch = role_style.get(role, (GREY, ""))
            s_colour = STATE_STYLE.get(state, (GREY, state, "black"))[0]
            ax.add_patch(Rectangle((x, y0), w, role_h, facecolor=r_colour, edgecolor="white", lw=0.8, zorder=2,
                                   hatch=r_hatch or None))
            ax.add_patch(Rectangle((x, y0 + role_h), w, state_h, facecolor=s_colour, edgecolor="white", lw=0.8, zorder=2,
                                   hatch="////" if state == "standby slot" else None))
            if _known(p.slot):
                lo, hi, active = slot_spans.get(str(p.slot), (x, x + w, _yes(p.slot_active)))
                slot_spans[str(p.slot)] = (min(lo, x), max(hi, x + w), active)
            if inline:
                ax.text(x + w / 2, y0 + role_h / 2, inline, ha="center", va="center", fontsize=label_fs, zorder=5,
                        clip_on=True, color="white" if _luminance(r_colour) < 0.35 else "black")
        for slot, (lo, hi, active) in slot_spans.items():
            if active:
                members = [(x, w) for p, x, w, _i in segs if _known(p.slot) and str(p.slot) == slot]
                # true extents here: a tiny neighbour drawn at the minimum width does not split a slot
                others = [(x, float(p.size) * unit) for p, x, _w, _i in segs if not (_known(p.slot) and str(p.slot) == slot)]
                contiguous = not any(x < hi - 1e-9 and x + w > lo + 1e-9 for x, w in others)
                for x, w in ([(lo, hi - lo)] if contiguous else members):
                    ax.add_patch(Rectangle((x, y0), w, bar_h, facecolor="none", edgecolor="black", lw=2.2, zorder=4))
                ax.text((lo + hi) / 2, y0 + bar_h + 0.03, f"▲ active slot {slot}", ha="center", va="top",
                        fontsize=7, fontweight="bold", zorder=5)
            else:
                ax.text((lo + hi) / 2, y0 + bar_h + 0.03, f"slot {slot}", ha="center", va="top",
                        fontsize=7, color="#333333", zorder=5)
        for cx, x, level, text, align in placed:
            ly = y0 - 0.05 - level_h * level
            ax.plot([cx, cx], [y0, ly], color="#444444", lw=0.7, zorder=6, solid_capstyle="butt")
            ax.text(cx if align == "right" else x, ly, text, fontsize=label_fs, ha=align, va="bottom", zorder=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4, "alpha": 0.9})
        ax.text(disk * unit + axis_max * 0.003, y0 + bar_h / 2, human_size(disk), va="center", fontsize=7, color="#333333",
                clip_on=False)
        y_cursor += height
    ax.set_yticks(ticks)
    ax.set_yticklabels([lay[0]["chart_label"] for lay in layout], fontsize=7.5)
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    ax.set_xlabel("disk offset (GiB, all images on one scale)" if scale == "absolute" else "disk offset (% of each disk)")
    ax.set_title("Partition layouts: role (upper strip) and run-time state (lower strip)", loc="left", pad=10)
    role_handles = [Patch(facecolor=c, edgecolor="#777777", hatch=h or None, label=role) for role, (c, h) in role_style.items()]
    states_seen = [st for st in STATE_STYLE if st in set(parts["state"].dropna().astype(str))]
    state_handles = [Patch(facecolor=STATE_STYLE[st][0], edgecolor="#777777", hatch="////" if st == "standby slot" else None,
                           label=st) for st in states_seen]
    state_handles.append(Patch(facecolor="none", edgecolor="black", lw=2.2, label="active update slot"))
    state_handles.append(Patch(facecolor="white", edgecolor="#999999", hatch="....", label="unpartitioned"))
    leg1 = fig.legend(handles=role_handles, title="role (partition type)", loc="upper left",
                      bbox_to_anchor=(left, 1.5 / fig_h), ncol=min(len(role_handles), 8), frameon=False, fontsize=8)
    fig.legend(handles=state_handles, title="run-time state", loc="upper left",
               bbox_to_anchor=(left, 0.75 / fig_h), ncol=min(len(state_handles), 8), frameon=False, fontsize=8)
    fig.add_artist(leg1)
    _footnote(fig, frames, "Sizes to scale; partitions under 0.4 % of the axis are drawn 0.4 % wide. "
                           "Run-time state from the report's mounts: read-only, volatile or persistent where mounted; "
                           "standby = the inactive update slot; verity hash = a separate hash-tree partition.")
    return Chart("partitions", fig)


# ------------------------------------------------------------------------------------------------
# writable surface
# ------------------------------------------------------------------------------------------------

@_styled
def surface(data) -> Chart:
    """Standard paths (columns) x images (rows), coloured by what a write there does."""
    from immutools.report.model import STANDARD_PATHS

    frames = _frames(data)
    _require_images(frames)
    rows = _image_rows(frames)
    paths = frames.paths
    cols = list(STANDARD_PATHS)
    state = {(p.image, p.path): str(p.state) for p in paths.itertuples(index=False) if _known(p.state)}
    n, m = len(rows), len(cols)
    fig_h = 1.9 + 0.46 * n
    fig = _new_figure(3.6 + 0.72 * m, fig_h)
    ax = fig.add_axes((0.26, 1.0 / fig_h, 0.72, 1 - 1.75 / fig_h))
    for i, r in enumerate(rows):
        for j, path in enumerate(cols):
            st = state.get((r["image"], path))
            colour, text, fg = STATE_STYLE.get(st, ("white", "?", "black"))
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", lw=1.5,
                                   hatch="xx" if st is None else None))
            ax.text(j + 0.5, i + 0.5, text if st else "n/a", ha="center", va="center", fontsize=8, color=fg,
                    fontweight="bold" if st == "persistent" else "normal")
    ax.set_xlim(0, m)
    ax.set_ylim(n, 0)
    ax.set_xticks([j + 0.5 for j in range(m)])
    ax.set_xticklabels(cols, fontsize=9, fontfamily="DejaVu Sans Mono")
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(n)])
    ax.set_yticklabels([r["chart_label"] for r in rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Writable surface: what happens to a write under each standard path", loc="left", pad=26)
    handles = [Patch(facecolor=STATE_STYLE[s][0], edgecolor="#777777", label=f"{STATE_STYLE[s][1]} = {s}")
               for s in ("read-only", "volatile", "persistent")]
    handles.append(Patch(facecolor="white", edgecolor="#777777", hatch="xx", label="n/a = not in the report"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.26, 0.8 / fig_h), ncol=4, frameon=False, fontsize=8.5)
    _footnote(fig, frames, "read-only: writes fail; volatile: kept in memory until reboot; persistent: survive a reboot. "
                           "From the report's paths section (each path resolved through the mount table).")
    return Chart("surface", fig)


# ------------------------------------------------------------------------------------------------
# update mechanisms
# ------------------------------------------------------------------------------------------------

@_styled
def updates(data) -> Chart:
    """One row per image: its update slots side by side, then mechanism, agent and rollback.

    Nothing is cut short: long slot names, versions and rollback descriptions wrap, the slot
    boxes are as wide as their widest line, and each row is as tall as its longest text."""
    frames = _frames(data)
    _require_images(frames)
    rows = _image_rows(frames)
    slots = frames.update_slots
    line_in = 0.15                                   # one 8-point line, in inches (= data units here)
    fig = _new_figure(10, 4)
    probe = fig.add_axes((0, 0, 1, 1))
    probe.set_xlim(0, 10)

    def width(text, size=8, weight="normal") -> float:
        renderer = fig.canvas.get_renderer()
        t = probe.text(0, 0, text, fontsize=size, fontweight=weight)
        w = t.get_window_extent(renderer=renderer).width / fig.dpi
        t.remove()
        return w

    per_image = []
    for r in rows:
        grp = slots[slots["image"] == r["image"]]
        boxes = []
        for s in grp.itertuples(index=False):
            active = _yes(s.active)
            head = textwrap.fill(f"{'▶ ' if active else ''}slot {s.slot}", 30, break_long_words=True)
            version = textwrap.fill(str(s.version) if _known(s.version) else "empty / unknown", 30, break_long_words=True)
            bits = [f"part {s.partitions}"] if _known(s.partitions) else []
            if _known(s.priority):
                bits.append(f"prio {s.priority}")
            if _known(s.tries):
                bits.append(f"tries {s.tries}")
            if _known(s.successful):
                bits.append("ok" if s.successful else "not ok")
            detail = textwrap.fill(", ".join(bits), 30, break_long_words=True)
            boxes.append((s, active, head, version, detail))
        mech = " · ".join(str(v) for v in (r["update_mechanism"], r["update_agent"], r["update_channel"])
                          if _known(v)) or "unknown"
        extra = []
        if _known(r["update_reboot_manager"]):
            extra.append(f"reboots: {r['update_reboot_manager']}")
        if _known(r["active_slot"]):
            extra.append(f"active slot: {r['active_slot']}")
        mech_text = textwrap.fill(mech, 38, break_long_words=True, break_on_hyphens=False)
        extra_text = textwrap.fill(" · ".join(extra), 44, break_long_words=True)
        rollback = textwrap.fill(str(r["update_rollback"]) if _known(r["update_rollback"]) else "not reported", 54,
                                 break_on_hyphens=False, break_long_words=True)
        per_image.append((r, boxes, mech_text, extra_text, rollback))

    slot_w = max([1.5] + [max(width(h, 8, "bold"), width(v), width(d, 7)) + 0.2
                          for _r, boxes, *_x in per_image for _s, _a, h, v, d in boxes])
    mech_w = max([2.4] + [max(width(m), width(e, 7.5)) + 0.25 for _r, _b, m, e, _rb in per_image])
    max_slots = max([len(boxes) for _r, boxes, *_x in per_image] + [1])
    gap = 0.12
    text_x = max_slots * (slot_w + gap) + 0.15
    roll_x = text_x + mech_w
    roll_w = max([2.5] + [width(rb, 7.5) + 0.1 for *_x, rb in per_image])
    width_units = roll_x + roll_w
    label_w = max([1.5] + [width(r["chart_label"]) + 0.25 for r, *_x in per_image])

    def lines(text) -> int:
        return text.count("\n") + 1 if text else 0

    heights = []
    for _r, boxes, mech_text, extra_text, rollback in per_image:
        box_lines = max([lines(h) + lines(v) + lines(d) for _s, _a, h, v, d in boxes] + [3])
        heights.append(max(0.95, line_in * max(box_lines, lines(mech_text) + lines(extra_text) + 0.5,
                                               lines(rollback)) + 0.35))
    probe.remove()
    top_in, bottom_in = 0.75, 0.6
    body = sum(heights)
    fig_w = label_w + width_units + 0.3
    fig_h = top_in + bottom_in + body
    fig.set_size_inches(fig_w, fig_h)
    ax = fig.add_axes((label_w / fig_w, bottom_in / fig_h, width_units / fig_w, body / fig_h))
    ax.set_xlim(0, width_units)
    ax.set_ylim(body, 0)
    ax.axis("off")
    header_y = -0.02
    ax.text(0, header_y, "update slots (active outlined)", fontsize=8.5, fontweight="bold", va="bottom")
    ax.text(text_x, header_y, "mechanism · agent · channel", fontsize=8.5, fontweight="bold", va="bottom")
    ax.text(roll_x, header_y, "rollback", fontsize=8.5, fontweight="bold", va="bottom")
    y = 0.0
    for i, ((r, boxes, mech_text, extra_text, rollback), row_h) in enumerate(zip(per_image, heights)):
        top, h = y + 0.1, row_h - 0.2
        ax.text(-0.15, top + h / 2, r["chart_label"], ha="right", va="center", fontsize=8)
        if not boxes:
            ax.text(0.05, top + h / 2, "no update slots reported", va="center", fontsize=8, color="#555555")
        for k, (s, active, head, version, detail) in enumerate(boxes):
            x = k * (slot_w + gap)
            face, fg = (OKABE_ITO["blue"], "white") if active else ("white", "black")
            ax.add_patch(Rectangle((x, top), slot_w, h, facecolor=face, edgecolor="black", lw=2.2 if active else 0.8,
                                   linestyle="-" if active else (0, (3, 2))))
            ty = top + 0.08
            for text, size, weight in ((head, 8, "bold"), (version, 8, "normal"), (detail, 7, "normal")):
                ax.text(x + 0.1, ty, text, fontsize=size, fontweight=weight, color=fg, va="top", linespacing=1.15)
                ty += line_in * lines(text) + 0.04
        ax.text(text_x, top + 0.05, mech_text, fontsize=8, va="top", linespacing=1.15)
        ax.text(text_x, top + 0.05 + line_in * lines(mech_text) + 0.08, extra_text, fontsize=7.5, va="top",
                color="#333333", linespacing=1.15)
        ax.text(roll_x, top + 0.05, rollback, fontsize=7.5, va="top", linespacing=1.15)
        y += row_h
        if i < len(per_image) - 1:
            ax.axhline(y, color="#E0E0E0", lw=0.8)
    fig.text(0.01, 1 - 0.12 / fig_h, "Update mechanisms: slots, the active one, the agent and how a bad update is rolled back",
             fontsize=12, fontweight="bold", va="top")
    _footnote(fig, frames, "Filled box with ▶ = the slot the boot loader picks next (active); dashed = the other slot. "
                           "part = partitions of the slot; prio/tries/ok = the GPT A/B attribute bits (priority, tries, successful) "
                           "where the mechanism has them. Same facts as a table: the update_slots frame, or the HTML report.")
    return Chart("updates", fig)
