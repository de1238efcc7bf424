"""Corpus studies: scan many images into one dataset, compare two scans, follow releases.

* ``inputs``: what to scan -- image files, folders, globs, URLs (fsspec) and manifests (CSV or YAML
  with a ``path``/``url``/``spec`` column and free label columns such as ``release_date``).
* ``digest``: the content digest that keys every image (reusing the decompression cache's digest
  memo, so a file is hashed once however often it is scanned).
* ``run``: ``scan_many`` -- the scan tasks, run on a local process pool or on a Dask distributed
  cluster, resumable, one overall progress line, failures recorded and never fatal.
* ``dataset``: the dataset directory -- raw JSON reports, one Parquet dataset per frame (partitioned
  by distribution), ``failures``, ``inputs``, and ``immutools.duckdb`` with a view per table; and
  ``load_reports(dir)`` to read it back into ``immutools.frames``.
* ``diff``: what changed between two images or saved reports.
* ``remote``: reading an fsspec URL with ranged requests.

The Parquet/DuckDB/Dask parts need the ``corpus`` extra (pyarrow, duckdb, dask[distributed],
fsspec) and pandas (the ``analysis`` extra); they are imported only by the commands that use them.
"""
