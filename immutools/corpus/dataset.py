"""The dataset directory ``scan-many`` writes, and reading it back.

Layout (``DIR``)::

    immutools-dataset.json        what this folder is (format, tool version, where it was published)
    index.json                    every input ever given: location, labels, digest, status, error
    reports/<digest>.json         the raw scan report of each image (the source of truth)
    tables/<frame>/distribution_id=<id>/part-0.parquet
                                  one Parquet dataset per frame of docs/frames.md (images, partitions,
                                  mounts, paths, surface, update_slots, completeness, scores, ranking),
                                  hive-partitioned by distribution
    tables/failures.parquet       one row per input that could not be scanned (error, exit code)
    tables/inputs.parquet         one row per input: location, status, digest, image id, labels
    immutools.duckdb              a view per table over the Parquet files

Columns are those of ``docs/frames.md``, plus ``distribution_id`` (the partition key: the
distribution's name as a slug, ``unknown`` when none was recognised) on every frame and, on
``images``, ``digest`` and the manifest's labels (a label whose name is already a column gets a
``label_`` prefix). Categoricals are stored as text, nullable integers and booleans as nullable
Parquet types, ``evidence`` (and any other column of structured values) as JSON text, and lists of
strings (``missing_facts``, ``warnings``) as Parquet lists.

The reports are the source of truth: the tables are rebuilt from them at the end of every run
(frames need the whole set: image ids and ranks are relative), written beside the old ones and
swapped in. The DuckDB views name the Parquet files by absolute path (DuckDB resolves a relative
path against the process's working directory, not the database file); a dataset that has moved is
re-pointed when it is next loaded, or by ``immutools scan-many --out DIR`` with no inputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import immutools
from immutools.errors import EXIT_USAGE, ImageIOError, ImmutoolsError
from immutools.paths import write_atomic

FORMAT = 1
MARKER = "immutools-dataset.json"
INDEX = "index.json"
DATABASE = "immutools.duckdb"
FRAME_TABLES = ("images", "partitions", "mounts", "paths", "surface", "update_slots", "completeness", "scores",
                "ranking")
EXTRA_TABLES = ("failures", "inputs")
TABLES = FRAME_TABLES + EXTRA_TABLES
PARTITION = "distribution_id"
# Columns that always hold structured values (lists of dicts) and so are stored as JSON text.
JSON_COLUMNS = ("evidence",)


class DatasetError(ImmutoolsError):
    """A folder that is not (or cannot become) a scan-many dataset."""

    exit_code = EXIT_USAGE


def missing_extra(module: str) -> ImmutoolsError:
    err = DatasetError(f"no module named {module}: scan-many and datasets need the corpus extra "
                       f"(pip install 'immutools[corpus]')")
    return err


def is_dataset(path) -> bool:
    return (Path(path) / MARKER).is_file()


def slug(text) -> str:
    from immutools.analysis.loading import is_known

    if not is_known(text) or not str(text).strip():
        return "unknown"
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


class Dataset:
    """A dataset directory (see the module docstring)."""

    def __init__(self, root: Path, index: dict):
        self.root = root
        self.index = index
        self._by_location = {e["location"]: e for e in self.entries}

    @property
    def entries(self) -> list[dict]:
        return self.index["entries"]

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root, create: bool = False) -> "Dataset":
        root = Path(root).absolute()
        if is_dataset(root):
            return cls(root, _read_index(root))
        if not create:
            raise DatasetError(f"{root}: not a scan-many dataset (no {MARKER})")
        try:
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise DatasetError(f"{root}: exists and is not an empty folder or a scan-many dataset: not written to")
            root.mkdir(parents=True, exist_ok=True)
            (root / "reports").mkdir(exist_ok=True)
            ds = cls(root, {"format": FORMAT, "entries": []})
            ds.save_index()
            write_atomic(root / MARKER, json.dumps(
                {"format": FORMAT, "kind": "immutools scan-many dataset", "created_by": f"immutools {immutools.__version__}"},
                indent=1) + "\n")
        except OSError as exc:
            raise ImageIOError(f"{root}: cannot create the dataset: {exc.strerror}") from None
        return ds

    def save_index(self) -> None:
        try:
            write_atomic(self.root / INDEX, json.dumps(self.index, indent=1, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise ImageIOError(f"{self.root / INDEX}: cannot write: {exc.strerror}") from None

    # -- a run ------------------------------------------------------------------------------------
    def begin(self, inputs, prune: bool = False) -> None:
        """Note this run's inputs: new locations are appended (in input order), known ones get this
        run's labels; with ``prune`` the entries this run does not name are dropped."""
        named = set()
        for inp in inputs:
            named.add(inp.location)
            entry = self._by_location.get(inp.location)
            if entry is None:
                entry = {"location": inp.location, "kind": inp.kind, "origin": inp.origin, "labels": {},
                         "digest": None, "status": "pending", "tool_version": None, "error": None,
                         "exit_code": None, "seconds": None}
                self.entries.append(entry)
                self._by_location[inp.location] = entry
            entry.update(kind=inp.kind, origin=inp.origin, labels=dict(inp.labels))
        if prune:
            self.index["entries"] = [e for e in self.entries if e["location"] in named]
            self._by_location = {e["location"]: e for e in self.entries}
        self.save_index()

    def report_path(self, digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16,64}", digest or ""):
            raise DatasetError(f"{self.root}: bad digest {digest!r} in the index")
        return self.root / "reports" / f"{digest}.json"

    def known_digests(self) -> frozenset:
        """Digests scanned by this tool version whose report is present."""
        return frozenset(e["digest"] for e in self.entries
                         if e["status"] == "scanned" and e["tool_version"] == immutools.__version__
                         and e["digest"] and self.report_path(e["digest"]).is_file())

    def record(self, result: dict) -> None:
        entry = self._by_location[result["location"]]
        status = result["status"]
        if status == "scanned":
            path = self.report_path(result["digest"])
            try:
                write_atomic(path, json.dumps(result["report"], indent=1, ensure_ascii=False) + "\n")
            except OSError as exc:
                raise ImageIOError(f"{path}: cannot write: {exc.strerror}") from None
            entry.update(digest=result["digest"], status="scanned", tool_version=immutools.__version__, error=None,
                         exit_code=None, seconds=result.get("seconds"))
        elif status == "reused":
            if entry["digest"] != result["digest"] or entry["status"] != "scanned":
                entry.update(digest=result["digest"], status="scanned", tool_version=immutools.__version__,
                             error=None, exit_code=None, seconds=None)
        else:
            entry.update(digest=result.get("digest"), status="failed", tool_version=immutools.__version__,
                         error=result.get("error"), exit_code=result.get("exit_code"), seconds=result.get("seconds"))

    # -- reading ----------------------------------------------------------------------------------
    def loaded_reports(self):
        """(LoadedReport, entry) of every scanned image, once per digest, in index order."""
        from immutools.analysis.loading import LoadedReport, base_image_id, read_report

        seen, out = set(), []
        for entry in self.entries:
            digest = entry.get("digest")
            if entry["status"] != "scanned" or not digest or digest in seen:
                continue
            path = self.report_path(digest)
            if not path.is_file():
                continue
            seen.add(digest)
            report = read_report(path)
            kind = "report" if entry["kind"] == "report" else "image"
            out.append((LoadedReport(base_image_id(report, entry["location"]), report, entry["location"], kind), entry))
        return out

    def frames(self, rubric=None, pairs=None):
        """``Frames`` of the dataset's reports, ``images`` with ``digest`` and the labels."""
        from immutools.analysis.frames import frames_from

        pairs = self.loaded_reports() if pairs is None else pairs
        frames = frames_from([lr for lr, _ in pairs], rubric=rubric)
        images = frames.images.copy()
        images["digest"] = [e["digest"] for _, e in pairs]
        _add_labels(images, [e["labels"] for _, e in pairs])
        frames.images = images      # replaces the cached frame on this instance
        return frames

    # -- publishing -------------------------------------------------------------------------------
    def publish(self, rubric=None) -> None:
        """Rebuild the Parquet tables and the DuckDB views from the reports (see the module docstring)."""
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise missing_extra("pyarrow") from None
        self._drop_orphans()
        pairs = self.loaded_reports()
        frames = self.frames(rubric, pairs)
        image_of = {e["digest"]: lr.image_id for lr, (_, e) in zip(frames.reports, pairs)}
        dist_of = {str(img): slug(dist) for img, dist in zip(frames.images["image"], frames.images["distribution"])}
        work = Path(tempfile.mkdtemp(prefix=".tables-", dir=self.root))
        try:
            for name in FRAME_TABLES:
                df = getattr(frames, name)
                parts = [dist_of.get(str(img), "unknown") for img in df["image"]]
                _write_partitioned(df, parts, work / name)
            _write_table(self._failures_frame(), work / "failures.parquet")
            _write_table(self._inputs_frame(image_of), work / "inputs.parquet")
            old = self.root / "tables"
            if old.exists():
                retired = self.root / f".tables-old-{os.getpid()}"
                os.rename(old, retired)
                os.rename(work, old)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(work, old)
        except OSError as exc:
            raise ImageIOError(f"{self.root}: cannot write the tables: {exc.strerror}") from None
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        write_database(self.root)

    def _drop_orphans(self) -> None:
        """Remove reports no entry points to any more (a file replaced by another content, or pruned)."""
        wanted = {f"{e['digest']}.json" for e in self.entries if e.get("digest")}
        for path in (self.root / "reports").glob("*.json"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)

    def _failures_frame(self):
        import pandas as pd

        from immutools.corpus.inputs import Input

        rows = [{"image": Input(e["location"], e["kind"]).name, "location": e["location"], "kind": e["kind"],
                 "error": e["error"], "exit_code": e["exit_code"], "digest": e["digest"],
                 "tool_version": e["tool_version"]}
                for e in self.entries if e["status"] == "failed"]
        df = pd.DataFrame(rows, columns=["image", "location", "kind", "error", "exit_code", "digest", "tool_version"])
        df["exit_code"] = df["exit_code"].astype("Int64")
        _add_labels(df, [e["labels"] for e in self.entries if e["status"] == "failed"])
        return df

    def _inputs_frame(self, image_of: dict):
        import pandas as pd

        rows = [{"position": i, "location": e["location"], "kind": e["kind"], "origin": e["origin"],
                 "status": e["status"], "digest": e["digest"],
                 "image": image_of.get(e["digest"]) if e["status"] == "scanned" else None,
                 "report": f"reports/{e['digest']}.json" if e["status"] == "scanned" else None,
                 "error": e["error"], "exit_code": e["exit_code"], "tool_version": e["tool_version"],
                 "seconds": e["seconds"]}
                for i, e in enumerate(self.entries)]
        df = pd.DataFrame(rows, columns=["position", "location", "kind", "origin", "status", "digest", "image", "report",
                                         "error", "exit_code", "tool_version", "seconds"])
        df["exit_code"] = df["exit_code"].astype("Int64")
        df["seconds"] = df["seconds"].astype("Float64")
        _add_labels(df, [e["labels"] for e in self.entries])
        return df


def _read_index(root: Path) -> dict:
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root}: unreadable dataset index: {exc}") from None
    if marker.get("format") != FORMAT or not isinstance(index, dict) or not isinstance(index.get("entries"), list):
        raise DatasetError(f"{root}: a dataset of another format ({marker.get('format')!r}; this tool reads {FORMAT})")
    return index


def _add_labels(df, labels: list[dict]) -> None:
    """Label columns (text, in first-seen order); a label named like a column gets ``label_``."""
    names: list[str] = []
    for row in labels:
        for key in row:
            if key not in names:
                names.append(key)
    existing = set(df.columns)
    for key in names:
        column = f"label_{key}" if key in existing else key
        df[column] = [row.get(key) for row in labels] if len(df) else []
        df[column] = df[column].astype(object)


# ------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------

def to_arrow(df):
    """A pyarrow Table of a frame: categoricals as text, nullable numbers and booleans as such,
    ``evidence`` and other structured values as JSON text, lists of strings as lists."""
    import pandas as pd
    import pyarrow as pa

    arrays, names = [], []
    for name in df.columns:
        series = df[name]
        names.append(str(name))
        if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(series.dtype) \
                or series.dtype == object:
            arrays.append(_object_array(str(name), list(series.astype(object))))
        else:
            arrays.append(pa.Array.from_pandas(series))
    return pa.Table.from_arrays(arrays, names=names)


def _missing(value) -> bool:
    from immutools.analysis.loading import is_known

    return not isinstance(value, (list, dict)) and not is_known(value)


def _object_array(name: str, values: list):
    import pyarrow as pa

    present = [v for v in values if not _missing(v)]
    if name not in JSON_COLUMNS:
        if all(isinstance(v, str) for v in present):
            return pa.array([None if _missing(v) else v for v in values], type=pa.string())
        if all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in present):
            return pa.array([None if _missing(v) else v for v in values], type=pa.list_(pa.string()))
    return pa.array([None if _missing(v) else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
                     for v in values], type=pa.string())


def _write_table(df, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(to_arrow(df), path)


def _write_partitioned(df, parts: list[str], folder: Path) -> None:
    """One file per distribution: ``folder/distribution_id=<id>/part-0.parquet`` (rows in frame order);
    an empty frame still gets one empty file, so every table has a schema to query."""
    import pyarrow.parquet as pq

    table = to_arrow(df.reset_index(drop=True))
    order: list[str] = []
    for p in parts:
        if p not in order:
            order.append(p)
    for part in order or ["unknown"]:
        rows = [i for i, p in enumerate(parts) if p == part]
        target = folder / f"{PARTITION}={part}"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(rows) if order else table, target / "part-0.parquet")


# ------------------------------------------------------------------------------------------------
# DuckDB
# ------------------------------------------------------------------------------------------------

def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_database(root) -> Path:
    """(Re)write ``immutools.duckdb``: a view per table over the Parquet files, by absolute path."""
    try:
        import duckdb
    except ImportError:
        raise missing_extra("duckdb") from None
    root = Path(root).absolute()
    target = root / DATABASE
    tmp = root / f".{DATABASE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tables = root / "tables"
    try:
        con = duckdb.connect(str(tmp))
        try:
            for name in FRAME_TABLES:
                pattern = str(tables / name / f"{PARTITION}=*" / "*.parquet")
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_string(pattern)}, "
                            f"hive_partitioning = true, union_by_name = true)")
            for name in EXTRA_TABLES:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_string(str(tables / (name + '.parquet')))})")
            con.execute("CREATE TABLE immutools_dataset AS SELECT ? AS root, ? AS format, ? AS tool_version",
                        [str(root), FORMAT, immutools.__version__])
        finally:
            con.close()
        os.replace(tmp, target)
    except (OSError, duckdb.Error) as exc:
        tmp.unlink(missing_ok=True)
        raise ImageIOError(f"{target}: cannot write the database: {exc}") from None
    return target


def database_root(root) -> str | None:
    """The folder the database's views point into (None: unreadable)."""
    import duckdb

    try:
        con = duckdb.connect(str(Path(root) / DATABASE), read_only=True)
        try:
            return con.execute("SELECT root FROM immutools_dataset").fetchone()[0]
        finally:
            con.close()
    except (duckdb.Error, TypeError):
        return None


def ensure_database(root) -> None:
    """Re-point the views if the dataset has moved (or the database is missing)."""
    root = Path(root).absolute()
    if (root / "tables").is_dir() and database_root(root) != str(root):
        write_database(root)


# ------------------------------------------------------------------------------------------------
# Reading a dataset back
# ------------------------------------------------------------------------------------------------

def load_reports(root):
    """The dataset's reports as an ``immutools.analysis.loading.LoadResult`` (what ``frames.load``,
    ``compare`` and ``report`` take), in the dataset's order; each ``source`` is the image's
    location as given to ``scan-many``."""
    from immutools.analysis.loading import LoadResult

    ds = Dataset.open(root)
    result = LoadResult([lr for lr, _ in ds.loaded_reports()], [])
    failed = sum(e["status"] == "failed" for e in ds.entries)
    if failed:
        result.warnings.append(f"{ds.root}: {failed} input(s) could not be scanned: see its failures table")
    return result


def load_frames(root, rubric=None):
    """``Frames`` of a dataset, with ``images.digest`` and the manifest's labels as columns."""
    return Dataset.open(root).frames(rubric)


def read_table(root, name: str):
    """One table of the dataset as a pandas DataFrame, read from its Parquet files through DuckDB
    (the database is re-pointed first if the dataset has moved)."""
    import duckdb

    if name not in TABLES:
        raise DatasetError(f"no table {name!r} (one of {', '.join(TABLES)})")
    root = Path(root).absolute()
    if not is_dataset(root):
        raise DatasetError(f"{root}: not a scan-many dataset (no {MARKER})")
    ensure_database(root)
    con = duckdb.connect(str(root / DATABASE), read_only=True)
    try:
        return con.execute(f"SELECT * FROM {name}").fetchdf()
    finally:
        con.close()
