"""Getting scan reports: saved JSON reports, images to scan, folders of either, or report dicts.

Loading a saved report reads JSON only: no image access, and none of the parsing libraries
(``dissect.*``) is imported. Images are scanned through ``immutools.scan``, imported only then.

Every loaded report gets a short, unique **image id** used as the key of every frame: the replica
spec name for replicas (``report["image"]["provenance"]["spec"]``), otherwise the image file name
without its container/compression suffixes (the **base id**). The same image loaded in several
forms (``x.img`` and ``x.img.lz4``) gets its form added (``x [lz4]``); only a report repeated in the
same form gets ``#2``, ``#3``...

This module is the bottom of the analysis layer: it imports no other analysis module, and the
helpers the others share (``entries``, ``as_dict``, ``as_list``, ``is_known``, ``is_yes``) are public
here.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from immutools.errors import EXIT_USAGE, ImmutoolsError, ImageIOError
from immutools.paths import data_dir

# Saved reports are small (tens of KiB); a bound keeps a stray huge file from filling memory.
MAX_REPORT_BYTES = 64 * 1024 * 1024
_IMAGE_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".qcow2", ".vmdk", ".vhdx", ".vhd", ".raw", ".img", ".bin")


class ReportLoadError(ImmutoolsError):
    """A file given as a saved report is not one (bad JSON, not an immutools report)."""


class AnalysisUsageError(ImmutoolsError):
    """A bad request to the analysis layer (unknown chart, empty input, bad rubric)."""

    exit_code = EXIT_USAGE


@dataclass
class LoadedReport:
    """One report and where it came from."""

    image_id: str
    report: dict
    source: str                 # the path given (a .json report or an image), or "<dict>"
    source_kind: str            # "report" (saved JSON), "image" (scanned now) or "dict"
    base_id: str = ""           # the image id before forms and repeats were told apart

    def __post_init__(self):
        if not self.base_id:
            self.base_id = self.image_id

    @property
    def replica(self) -> bool:
        return bool(as_dict(as_dict(self.report.get("image")).get("provenance")).get("replica"))

    @property
    def form(self) -> str:
        """The form the image was read in: raw, qcow2, lz4, zst, xz, bz2, gz, vmdk, ..."""
        return image_form(self.report)


@dataclass
class LoadResult:
    reports: list[LoadedReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # files in folders that were skipped, and why


def bundled_reports_dir() -> Path:
    """``data/reports``: saved scans of the bundled replica images."""
    return data_dir() / "reports"


def as_dict(value) -> dict:
    """``value`` if it is a dict, else ``{}``: reports come from images, so no field is trusted."""
    return value if isinstance(value, dict) else {}


def as_list(value) -> list:
    """``value`` if it is a list, else ``[]``."""
    return value if isinstance(value, list) else []


def is_known(value) -> bool:
    """Not None/NaN/NA (pandas hands missing values over in several forms)."""
    if value is None:
        return False
    try:
        return not bool(value != value)
    except TypeError:      # pandas.NA refuses bool()
        return False


def is_yes(value) -> bool:
    """A known, true value (``pandas.NA`` and NaN are not yes)."""
    return is_known(value) and bool(value)


def entries(reports) -> list[LoadedReport]:
    """The ``LoadedReport``s of anything the analysis functions accept: a ``Frames`` or a
    ``LoadResult`` (their ``reports``), or a list of ``LoadedReport``s, report dicts or paths
    (paths to saved reports only: nothing is scanned here)."""
    inner = getattr(reports, "reports", None)
    if isinstance(inner, list) and all(isinstance(r, LoadedReport) for r in inner):
        return inner
    reports = list(reports)
    if all(isinstance(r, LoadedReport) for r in reports):
        return reports
    return load_reports(reports, scan_images=False).reports


def is_report(obj) -> bool:
    """Does ``obj`` look like an ``immutools scan`` report (enough to build frames from)?"""
    return isinstance(obj, dict) and isinstance(obj.get("schema_version"), int) and isinstance(obj.get("image"), dict)


def read_report(path: str | os.PathLike) -> dict:
    """Read one saved report (``immutools scan --format json -o X.json``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot read report: {exc.strerror}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise ReportLoadError(f"{path}: larger than {MAX_REPORT_BYTES} bytes: not a saved report")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReportLoadError(f"{path}: not valid JSON: {exc}") from None
    if not is_report(obj):
        raise ReportLoadError(f"{path}: JSON but not an immutools scan report (no schema_version/image)")
    return obj


class _ImageProgress:
    """"image 3/23: name" on stderr before each image is scanned, when more than one will be: the
    overall progress of ``compare``/``report`` over a folder (the per-image bar is decompression's).
    ``progress``: True always, None when stderr is a terminal, False never."""

    def __init__(self, total: int, progress: bool | None):
        self.total, self.done = total, 0
        on = progress if progress is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.on = bool(on) and total > 1

    def scan(self, path: Path, progress: bool | None) -> dict:
        self.done += 1
        if self.on:
            print(f"immutools: image {self.done}/{self.total}: {path.name}", file=sys.stderr, flush=True)
        return scan_report(path, progress)


def _images_to_scan(sources) -> int:
    """How many images ``load_reports`` will scan (files that are not reports; folders not recursive)."""
    count = 0
    for item in sources:
        if not isinstance(item, (str, os.PathLike)):
            continue
        path = Path(item)
        if path.is_dir() and not (path / "immutools-dataset.json").is_file():
            try:
                names = os.listdir(path)
            except OSError:
                continue
            count += sum(1 for n in names if not n.startswith(".") and (path / n).is_file()
                         and not _looks_like_json(path / n))
        elif path.is_file() and not _looks_like_json(path):
            count += 1
    return count


def scan_report(path: str | os.PathLike, progress: bool | None = False) -> dict:
    """Scan an image now (imports the parsing stack)."""
    from immutools.scan import scan

    return scan(str(path), progress=progress)


def base_image_id(report: dict, source: str | None = None) -> str:
    image = as_dict(report.get("image"))
    prov = as_dict(image.get("provenance"))
    spec = prov.get("spec")
    if prov.get("replica") and isinstance(spec, str) and spec:
        return spec
    path = image.get("path") if isinstance(image.get("path"), str) else (source or "")
    name = os.path.basename(path) or "image"
    # Strip container and compression suffixes (``x.raw.xz`` -> ``x``), keeping at least one char.
    changed = True
    while changed:
        changed = False
        for suffix in _IMAGE_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


def assign_ids(loaded: list[LoadedReport]) -> None:
    """Unique image ids: a base id loaded in several forms gets ``[form]`` on every copy but the
    first form's; the same id in the same form again gets ``#2``, ``#3``..."""
    forms: dict[str, list[str]] = {}
    for entry in loaded:
        forms.setdefault(entry.base_id, [])
        if entry.form not in forms[entry.base_id]:
            forms[entry.base_id].append(entry.form)
    seen: dict[str, int] = {}
    for entry in loaded:
        first_form = forms[entry.base_id][0]
        name = entry.base_id if entry.form == first_form else f"{entry.base_id} [{entry.form}]"
        seen[name] = seen.get(name, 0) + 1
        entry.image_id = name if seen[name] == 1 else f"{name}#{seen[name]}"


def _looks_like_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def load_reports(sources=None, *, scan_images: bool = True, progress: bool | None = False) -> LoadResult:
    """Load reports from ``sources``.

    ``sources``: ``None`` (the bundled reports in ``data/reports``), or one item or a list of items,
    each a report ``dict``, a ``LoadedReport``, a path to a saved ``.json`` report, a path to an
    image (scanned), a ``scan-many`` dataset folder (its reports), or a folder (its ``*.json``
    reports and images, not recursive; files that are neither are skipped and listed in ``warnings``). A file named explicitly must load.
    """
    result = LoadResult()
    if sources is None:
        folder = bundled_reports_dir()
        if not folder.is_dir():
            raise AnalysisUsageError(f"{folder}: no bundled reports (run `python -m immutools.frames refresh-reports`)")
        sources = [folder]
    if isinstance(sources, (str, os.PathLike, dict, LoadedReport)):
        sources = [sources]
    sources = list(sources)
    counter = _ImageProgress(_images_to_scan(sources) if scan_images else 0, progress)
    for item in sources:
        if isinstance(item, LoadedReport):
            result.reports.append(LoadedReport(item.base_id, item.report, item.source, item.source_kind))
        elif isinstance(item, dict):
            if not is_report(item):
                raise ReportLoadError("a dict given as a report has no schema_version/image")
            result.reports.append(LoadedReport(base_image_id(item), item, "<dict>", "dict"))
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if path.is_dir() and (path / "immutools-dataset.json").is_file():
                # A scan-many dataset: its reports, not a scan of its files (corpus imported only here).
                from immutools.corpus.dataset import load_reports as load_dataset

                loaded = load_dataset(path)
                result.reports.extend(loaded.reports)
                result.warnings.extend(loaded.warnings)
            elif path.is_dir():
                _load_folder(path, result, scan_images, progress, counter)
            else:
                result.reports.append(_load_path(path, scan_images, progress, counter))
        else:
            raise AnalysisUsageError(f"cannot load a report from a {type(item).__name__}")
    assign_ids(result.reports)
    return result


def _load_path(path: Path, scan_images: bool, progress=False, counter: _ImageProgress | None = None) -> LoadedReport:
    if _looks_like_json(path):
        report = read_report(path)
        return LoadedReport(base_image_id(report, str(path)), report, str(path), "report")
    if not path.exists():
        raise ImageIOError(f"{path}: no such file")
    if not scan_images:
        raise AnalysisUsageError(f"{path}: not a .json report and scanning images is off")
    report = (counter or _ImageProgress(1, False)).scan(path, progress)
    return LoadedReport(base_image_id(report, str(path)), report, str(path), "image")


def _load_folder(folder: Path, result: LoadResult, scan_images: bool, progress=False,
                 counter: _ImageProgress | None = None) -> None:
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise ImageIOError(f"{folder}: cannot list folder: {exc.strerror}") from None
    for name in names:
        path = folder / name
        if name.startswith(".") or not path.is_file():
            continue
        if _looks_like_json(path):
            try:
                report = read_report(path)
            except ReportLoadError as exc:
                result.warnings.append(f"skipped {path}: {exc}")
                continue
            result.reports.append(LoadedReport(base_image_id(report, str(path)), report, str(path), "report"))
        elif scan_images:
            try:
                report = (counter or _ImageProgress(1, False)).scan(path, progress)
            except ImmutoolsError as exc:
                # A folder may hold manifests, checksums, notes: skip what is not an image.
                result.warnings.append(f"skipped {path}: {exc}")
                continue
            result.reports.append(LoadedReport(base_image_id(report, str(path)), report, str(path), "image"))


# ------------------------------------------------------------------------------------------------
# Saved reports: what `refresh-reports` writes and the freshness test compares.
# ------------------------------------------------------------------------------------------------

def normalize_for_saving(report: dict) -> dict:
    """A copy fit for ``data/reports``: the image path reduced to its file name (machine-independent),
    timing statistics and what this machine's decompression cache did (``image.cache``: hit,
    stored, ...; it says nothing of the image) dropped. Everything else is the scan as it came."""
    out = json.loads(json.dumps(report))
    image = as_dict(out.get("image"))
    if isinstance(image.get("path"), str):
        image["path"] = os.path.basename(image["path"])
    image.pop("cache", None)
    out.pop("stats", None)
    return out


def dumps_report(report: dict) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False) + "\n"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


def saved_report_name(report: dict, source: str | None = None) -> str:
    return _SAFE_NAME.sub("_", base_image_id(report, source)).strip("._") or "image"


# A saved report's image form (container, compression) -> the replica builder's form name.
_FORM_OF = {("raw", None): "raw", ("raw", "bzip2"): "bz2", ("raw", "xz"): "xz", ("raw", "zstd"): "zst",
            ("raw", "lz4"): "lz4", ("raw", "gzip"): "gz", ("qcow2", None): "qcow2"}
_COMPRESSION_SHORT = {"bzip2": "bz2", "zstd": "zst", "gzip": "gz"}


def replica_form(report: dict) -> str:
    """The replica builder form (raw, bz2, qcow2, ...) a saved report's image was scanned in."""
    image = as_dict(report.get("image"))
    return _FORM_OF.get((image.get("container"), image.get("compression")), "raw")


def image_form(report: dict) -> str:
    """The form an image was read in, as its file suffix names it: ``raw``, ``qcow2``, ``lz4``,
    ``qcow2+xz`` (a container and a compression), ... (``raw`` when the report does not say)."""
    image = as_dict(report.get("image"))
    container = image.get("container") if isinstance(image.get("container"), str) else "raw"
    compression = image.get("compression") if isinstance(image.get("compression"), str) else None
    if compression is None:
        return container
    short = _COMPRESSION_SHORT.get(compression, compression)
    return short if container == "raw" else f"{container}+{short}"


def bundled_image_for(report: dict) -> Path | None:
    """The bundled image (``data/replicas/<file name>``) a saved report was made from, if present."""
    name = as_dict(report.get("image")).get("path")
    if not isinstance(name, str) or not name:
        return None
    candidate = data_dir() / "replicas" / os.path.basename(name)
    return candidate if candidate.is_file() else None


def _write(report: dict, source: str, out: Path, log) -> Path:
    report = normalize_for_saving(report)
    target = out / (saved_report_name(report, source) + ".json")
    try:
        target.write_text(dumps_report(report), encoding="utf-8")
    except OSError as exc:
        raise ImageIOError(f"{target}: cannot write report: {exc.strerror}") from None
    if log is not None:
        log(f"{source} -> {target}")
    return target


def _scan_replica(spec: str, form: str, work: Path) -> tuple[dict, str]:
    """Build replica ``spec`` in ``form`` under ``work`` (a temporary folder) and scan it."""
    from immutools.replica.builder import build

    manifest = build(spec, work, ["raw"] if form == "raw" else ["raw", form], compute_sha256=False)
    image = work / manifest["forms"].get(form, manifest["image"])
    return scan_report(image), str(image)


def refresh_reports(images: list[str] = (), out_dir: str | os.PathLike | None = None, log=None, *,
                    replicas: list[str] = (), existing: bool = False) -> list[Path]:
    """Scan images and write ``<out_dir>/<image id>.json`` (default ``data/reports``).

    ``images``: image files to scan. ``replicas``: replica spec names (``all`` for every
    buildable spec) to build in a temporary folder and scan. ``existing``: rescan what every
    report already in ``out_dir`` was made from: its bundled image in ``data/replicas`` if there
    is one, else its replica spec (built in the same form); reports of other images are kept as
    they are (and logged).
    """
    import tempfile

    out = Path(out_dir) if out_dir is not None else bundled_reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images:
        written.append(_write(scan_report(image), str(image), out, log))
    jobs: list[tuple[str, str]] = []
    if replicas:
        from immutools.replica.spec import list_specs

        names = [s.name for s in list_specs()] if list(replicas) == ["all"] else list(replicas)
        jobs += [(name, "raw") for name in names]
    if existing:
        for path in sorted(out.glob("*.json")):
            try:
                saved = read_report(path)
            except ImmutoolsError as exc:
                if log is not None:
                    log(f"{path}: kept: {exc}")
                continue
            bundled = bundled_image_for(saved)
            prov = as_dict(as_dict(saved.get("image")).get("provenance"))
            if bundled is not None:
                written.append(_write(scan_report(bundled), str(bundled), out, log))
            elif prov.get("replica") and isinstance(prov.get("spec"), str):
                jobs.append((prov["spec"], replica_form(saved)))
            elif log is not None:
                log(f"{path}: kept: no bundled image and no replica spec to rebuild it from")
    for spec, form in jobs:
        with tempfile.TemporaryDirectory(prefix="immutools-refresh-") as work:
            report, image = _scan_replica(spec, form, Path(work))
            written.append(_write(report, image, out, log))
    return written
