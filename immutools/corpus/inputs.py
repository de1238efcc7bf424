"""What ``scan-many`` scans: image files, folders, globs, URLs and manifests, expanded in a stable order.

An input item on the command line is, in this order of precedence:

* a **manifest**: an existing ``.csv``, ``.yaml`` or ``.yml`` file. Each row names one image by
  ``path`` (relative to the manifest's folder), ``url`` (any fsspec URL) or ``spec`` (a replica spec
  of ``data/replica-specs``, built when scanned -- or, when the manifest's folder holds that replica
  already built (its ``.manifest.json`` names the spec and form, as in ``data/replicas/``), that
  file; ``form`` picks the form, default raw), and
  every other column is a **label** kept with the image (``release_date``, ``channel``, ...). A YAML
  manifest is a list of such mappings, or a mapping with ``images:`` (that list) and optionally
  ``labels:`` (defaults for every row).
* a **folder**: every file under it that is recognisably a disk image (by its bytes: a compressed
  stream, a VM container, a partition table or a filesystem superblock) or a saved scan report
  (``.json``), recursively, in name order; other files are listed as skipped, never failed.
* a **URL** (``scheme://...``): read through fsspec; a glob in it is expanded by its filesystem.
* a **glob** (``*``, ``?``, ``[``, ``**``): expanded recursively, in name order.
* anything else is a **file** named explicitly: it is always scanned (a missing file is a failure
  row, not an error that stops the run).

Labels are text: YAML dates become ISO dates, numbers their literal form, lists and mappings JSON.
"""

from __future__ import annotations

import csv
import datetime as _dt
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from immutools.errors import EXIT_USAGE, ImageIOError, ImmutoolsError

MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")
LOCATION_KEYS = ("path", "url", "spec")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB = re.compile(r"[*?\[]")
# Bounds: a manifest is a text file, not a data dump.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# Saved reports are tens of KiB; a .json file larger than this in a folder is not one.
MAX_REPORT_SNIFF = 64 * 1024 * 1024


class InputError(ImmutoolsError):
    """A manifest or input item that cannot be understood (exit 2)."""

    exit_code = EXIT_USAGE


@dataclass
class Input:
    """One image to scan and what the user said about it."""

    location: str              # absolute path, URL, or "spec:NAME[@FORM]"
    kind: str                  # "file" | "report" | "url" | "spec"
    labels: dict = field(default_factory=dict)
    origin: str = "argument"   # the manifest, folder or glob that named it

    @property
    def name(self) -> str:
        """A short name for messages and failure rows: the file or spec name."""
        if self.kind == "spec":
            return self.location[len("spec:"):]
        return os.path.basename(self.location.rstrip("/")) or self.location

    def to_dict(self) -> dict:
        return {"location": self.location, "kind": self.kind, "labels": dict(self.labels), "origin": self.origin}


@dataclass
class Expansion:
    inputs: list[Input] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)    # "path: why" for files in folders that are not images

    def add(self, item: Input) -> None:
        self.inputs.append(item)


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def spec_location(name: str, form: str | None = None) -> str:
    return f"spec:{name}" + (f"@{form}" if form and form != "raw" else "")


def parse_spec_location(location: str) -> tuple[str, str]:
    """``spec:NAME[@FORM]`` -> (name, form)."""
    body = location[len("spec:"):]
    name, _, form = body.partition("@")
    return name, form or "raw"


def label_text(value) -> str | None:
    """A label value as text (None: no value)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, sort_keys=True, default=str)


def expand(items, *, follow_folders: bool = True) -> Expansion:
    """Expand command-line items (see the module docstring) into ``Input``s, in a stable order.

    The same location named twice is kept once (its first labels win, later labels are added).
    """
    out = Expansion()
    for item in items:
        item = os.fspath(item)
        _expand_item(item, out, origin="argument", labels={})
    return _dedupe(out)


def _dedupe(exp: Expansion) -> Expansion:
    seen: dict[str, Input] = {}
    kept: list[Input] = []
    for inp in exp.inputs:
        if inp.location in seen:
            first = seen[inp.location]
            for key, value in inp.labels.items():
                first.labels.setdefault(key, value)
            continue
        seen[inp.location] = inp
        kept.append(inp)
    exp.inputs = kept
    return exp


def _expand_item(item: str, out: Expansion, *, origin: str, labels: dict) -> None:
    if is_url(item):
        _expand_url(item, out, origin=origin, labels=labels)
        return
    if item.startswith("spec:"):
        out.add(Input(item, "spec", dict(labels), origin))
        return
    path = Path(item)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        read_manifest(path, out)
    elif path.is_dir():
        _expand_folder(path, out, labels=labels)
    elif not path.exists() and _GLOB.search(item):
        matches = sorted(glob.glob(item, recursive=True))
        for match in matches:
            mpath = Path(match)
            if mpath.is_dir():
                _expand_folder(mpath, out, labels=labels)
            elif mpath.is_file():
                out.add(_file_input(mpath, dict(labels), origin=item))
        if not matches:
            out.skipped.append(f"{item}: the pattern matches nothing")
    else:
        # Named explicitly: always scanned; a missing file becomes a failure row.
        out.add(_file_input(path, dict(labels), origin=origin))


def _file_input(path: Path, labels: dict, origin: str) -> Input:
    kind = "report" if path.suffix.lower() == ".json" else "file"
    return Input(os.path.abspath(path), kind, labels, origin)


def _expand_folder(folder: Path, out: Expansion, *, labels: dict) -> None:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            why = not_an_image(path)
            if why is None:
                out.add(_file_input(path, dict(labels), origin=str(folder)))
            else:
                out.skipped.append(f"{path}: {why}")


# Filesystem superblock magics a bare filesystem image starts with (offset, bytes); each is the
# one the kernel checks: ext2/3/4 s_magic 0xEF53 at 1024+56, squashfs "hsqs", XFS "XFSB",
# EROFS 0xE0F5E1E2 at 1024, btrfs "_BHRfS_M" at 64 KiB + 64.
_FS_MAGICS = ((1080, b"\x53\xef"), (0, b"hsqs"), (0, b"XFSB"), (1024, b"\xe2\xe1\xf5\xe0"), (65600, b"_BHRfS_M"))


def not_an_image(path: Path) -> str | None:
    """None if a file in a folder should be scanned, else why it is skipped.

    Decided by its bytes, as ``immutools scan`` recognises images: a saved scan report, a compressed
    stream, a VM container, an MBR/GPT, or a filesystem superblock. A file skipped here can still be
    scanned by naming it explicitly.
    """
    from immutools.image.magic import ARCHIVE, COMPRESSED, CONTAINER, HEAD_BYTES, TAIL_BYTES, sniff

    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".json":
            return None if _is_saved_report(path, size) else "a .json file that is not a scan report"
        if size < 512:
            return "too small to be a disk image"
        with open(path, "rb") as f:
            head = f.read(max(HEAD_BYTES, 65608))
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read(TAIL_BYTES)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    kind, fmt = sniff(head[:HEAD_BYTES], tail)
    if kind in (COMPRESSED, CONTAINER):
        return None
    if kind == ARCHIVE:
        return f"a {fmt} archive, not a disk image"
    if head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART":
        return None
    if any(head[off:off + len(magic)] == magic for off, magic in _FS_MAGICS):
        return None
    return "not recognised as a disk image (name it explicitly to scan it anyway)"


def _is_saved_report(path: Path, size: int) -> bool:
    if size > MAX_REPORT_SNIFF:
        return False
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("schema_version"), int) and isinstance(obj.get("image"), dict)


# ------------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------------

def read_manifest(path: Path, out: Expansion | None = None) -> Expansion:
    """Read a CSV or YAML manifest into ``out`` (see the module docstring)."""
    out = out if out is not None else Expansion()
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot read manifest: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: a manifest must be UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        rows, defaults = _csv_rows(path, text), {}
    else:
        rows, defaults = _yaml_rows(path, text)
    for number, row in rows:
        _manifest_row(path, number, row, defaults, out)
    return out


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not set(LOCATION_KEYS) & {f.strip() for f in reader.fieldnames if f}:
        raise InputError(f"{path}: a CSV manifest needs a header row with a path, url or spec column")
    rows = []
    for number, row in enumerate(reader, start=2):
        rows.append((number, {(k or "").strip(): (v.strip() if isinstance(v, str) else v)
                              for k, v in row.items() if k}))
    return rows


def _yaml_rows(path: Path, text: str) -> tuple[list[tuple[int, dict]], dict]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    defaults: dict = {}
    if isinstance(data, dict):
        defaults = data.get("labels") or {}
        if not isinstance(defaults, dict):
            raise InputError(f"{path}: labels: must be a mapping")
        data = data.get("images")
    if not isinstance(data, list):
        raise InputError(f"{path}: a YAML manifest is a list of images, or a mapping with an images: list")
    rows = []
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(f"{path}: image {number}: must be a mapping with path, url or spec")
        rows.append((number, row))
    return rows, defaults


def _manifest_row(path: Path, number: int, row: dict, defaults: dict, out: Expansion) -> None:
    where = f"{path}: {'line' if path.suffix.lower() == '.csv' else 'image'} {number}"
    given = [k for k in LOCATION_KEYS if row.get(k) not in (None, "")]
    if len(given) != 1:
        raise InputError(f"{where}: name the image by exactly one of path, url or spec (found {', '.join(given) or 'none'})")
    key = given[0]
    value = str(row[key])
    merged = dict(defaults)
    merged.update({k: v for k, v in row.items() if k not in LOCATION_KEYS and k != "form"})
    labels = {}
    for name, raw in merged.items():
        text = label_text(raw)
        if text:            # an empty cell is no label (a row may blank a default)
            labels[str(name)] = text
    origin = str(path)
    if key == "spec":
        form = str(row.get("form") or "raw")
        built = prebuilt_replica(path.parent, value, form)
        if built is not None:
            out.add(_file_input(built, labels, origin))
        else:
            out.add(Input(spec_location(value, form), "spec", labels, origin))
    elif key == "url" or is_url(value):
        _expand_url(value, out, origin=origin, labels=labels)
    else:
        target = Path(value) if os.path.isabs(value) else path.parent / value
        if _GLOB.search(value) and not target.exists():
            _expand_item(str(target), out, origin=origin, labels=labels)
        elif target.is_dir():
            _expand_folder(target, out, labels=labels)
        else:
            out.add(_file_input(target, labels, origin))


def prebuilt_replica(folder: Path, spec: str, form: str) -> Path | None:
    """A replica already built beside the manifest: an image whose ``<image>.manifest.json`` (written
    by the replica builder) names this spec and form -- as ``data/replicas/`` holds the bundled
    images of ``bundle.yaml``. Such a row is scanned from that file instead of being built."""
    for manifest in sorted(folder.glob("*.manifest.json")):
        try:
            if manifest.stat().st_size > MAX_REPORT_SNIFF:
                continue
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("spec") != spec or not isinstance(data.get("forms"), dict):
            continue
        name = data["forms"].get(form)
        if isinstance(name, str) and "/" not in name and (folder / name).is_file():
            return folder / name
    return None


def _expand_url(url: str, out: Expansion, *, origin: str, labels: dict) -> None:
    if url.startswith("file://"):
        _expand_item(url[len("file://"):], out, origin=origin, labels=labels)
        return
    if _GLOB.search(url.split("://", 1)[1]):
        from immutools.corpus.remote import glob_urls

        matches = glob_urls(url)
        for match in matches:
            out.add(Input(match, "url", dict(labels), origin))
        if not matches:
            out.skipped.append(f"{url}: the pattern matches nothing")
        return
    out.add(Input(url, "url", dict(labels), origin))
