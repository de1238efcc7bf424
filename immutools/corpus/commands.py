"""The ``scan-many`` and ``diff`` subcommands: their arguments and handlers.

Import-light (argparse only): ``immutools/cli.py`` imports this module to build its parser, so
nothing here may pull in pandas, pyarrow, duckdb or dask until a handler runs.
"""

from __future__ import annotations

import sys

DIFF_IGNORED = (
    "evidence and its wording, warnings, the tool version and timing; absolute paths (only file names "
    "are compared); ids and digests that every build draws anew: partition and filesystem UUIDs, the "
    "disk GUID, dm-verity root hashes and salts, hash-tree offsets, filesystem sizes, the image file's "
    "size and content digest; UUIDs and 64-hex digests inside compared text are masked")


def add_subcommands(sub, add_common) -> None:
    """Add ``scan-many`` and ``diff`` to the ``immutools`` parser's subcommands."""
    many = sub.add_parser(
        "scan-many", help="scan many images into a Parquet + DuckDB dataset (parallel, resumable)",
        description="Scan images, folders, globs, fsspec URLs or manifests into DIR: raw JSON reports, one Parquet "
                    "dataset per frame (partitioned by distribution), a failures table and DIR/immutools.duckdb with "
                    "a view per table. An image already in DIR (same content digest, same immutools version) is not "
                    "scanned again; an image that fails is a row of the failures table and never stops the run. "
                    "With no INPUT, only the tables are rebuilt from DIR's reports.",
        epilog="Manifests: a .csv with a header row, or a .yaml list (or a mapping with images:), each row naming "
               "the image by path (relative to the manifest), url or spec (a replica spec, built when needed) "
               "plus free label columns (release_date, channel, ...) kept as columns of the images table. "
               "Exit codes: 0 every input scanned (or already there), 1 some inputs failed (see the failures "
               "table), others as for scan.")
    many.add_argument("inputs", nargs="*", metavar="INPUT",
                      help="an image, a saved report (.json), a folder (searched recursively), a glob, a URL, or a manifest")
    many.add_argument("--out", "-o", required=True, metavar="DIR", help="the dataset folder (created; reused to resume)")
    many.add_argument("--engine", choices=("pool", "dask"), default="pool",
                      help="pool: processes on this machine (default); dask: a Dask distributed cluster")
    many.add_argument("--scheduler", metavar="ADDRESS",
                      help="with --engine dask: the scheduler's address (tcp://host:8786); default: a local cluster")
    many.add_argument("--workers", "-j", type=int, metavar="N",
                      help="worker processes (default: the CPUs available)")
    many.add_argument("--rescan", action="store_true", help="scan every input again, even if the dataset has it")
    many.add_argument("--prune", action="store_true", help="drop from the dataset the images these inputs do not name")
    many.add_argument("--rubric", metavar="YAML", help="score with this rubric instead of data/rubric.yaml")
    many.add_argument("--replica-dir", metavar="DIR",
                      help="where manifest rows naming a replica spec are built (default: .cache/replicas)")
    add_common(many)

    diff = sub.add_parser(
        "diff", help="what changed between two images or saved reports (exit 1 when they differ)",
        description="Compare two scans, typically consecutive releases: partition table, mounts and path states, "
                    "update configuration, integrity, surface (shells, sshd, setuid/setgid files, package managers, "
                    "enabled SSH units, kernel module policy, executables on PATH), completeness and scores.",
        epilog=f"Ignored, because it always differs and means nothing: {DIFF_IGNORED}. Exit codes: 0 nothing to "
               f"report, 1 differences found (like diff(1)), others as for scan.")
    diff.add_argument("a", metavar="A", help="an image or a saved report (.json), or DATASET:IMAGE_ID")
    diff.add_argument("b", metavar="B", help="an image or a saved report (.json), or DATASET:IMAGE_ID")
    diff.add_argument("--format", "-f", choices=("table", "json"), default="table")
    diff.add_argument("--rubric", metavar="YAML", help="score with this rubric instead of data/rubric.yaml")
    add_common(diff)


def cmd_scan_many(args) -> int:
    from immutools.corpus.run import scan_many

    rubric = None
    if args.rubric:
        from immutools.analysis.rubric import load_rubric

        rubric = load_rubric(args.rubric)
    if args.scheduler and args.engine != "dask":
        from immutools.corpus.inputs import InputError

        raise InputError("--scheduler needs --engine dask")
    cache = (getattr(args, "cache_dir", None), not getattr(args, "no_cache", False))
    summary = scan_many(args.inputs, args.out, engine=args.engine, workers=args.workers, scheduler=args.scheduler,
                        rescan=args.rescan, prune=args.prune, progress=args.progress, rubric=rubric,
                        replica_dir=args.replica_dir, cache=cache)
    for line in summary.skipped_files:
        sys.stderr.write(f"immutools: skipped {line}\n")
    sys.stderr.write(f"immutools: {summary.line()}\n")
    if summary.failed:
        sys.stderr.write(f"immutools: {summary.failed} input(s) failed: see the failures table "
                         f"(duckdb {summary.out}/immutools.duckdb \"select * from failures\")\n")
        return 1
    return 0


def cmd_diff(args) -> int:
    from immutools.corpus.diff import diff_sources, render_json, render_table

    rubric = None
    if args.rubric:
        from immutools.analysis.rubric import load_rubric

        rubric = load_rubric(args.rubric)
    result = diff_sources(args.a, args.b, rubric=rubric, progress=args.progress)
    if args.format == "json":
        sys.stdout.write(render_json(result))
    else:
        sys.stdout.write(render_table(result))
    return 1 if result.changes else 0


COMMANDS = {"scan-many": cmd_scan_many, "diff": cmd_diff}
__all__ = ["add_subcommands", "COMMANDS"]
