"""Public name of the frames API: ``from immutools import frames; f = frames.load(...)``.

Everything lives in ``immutools.analysis.frames`` (tables), ``immutools.analysis.loading``
(reports from files, folders and images), ``immutools.analysis.rubric`` (the score),
``immutools.analysis.ranking`` (which images may be ranked) and ``immutools.analysis.sensitivity``
(how the ranking depends on the weights).

Run as a module to regenerate the bundled reports::

    python -m immutools.frames refresh-reports IMAGE... [--out data/reports]
    python -m immutools.frames refresh-reports --replica SPEC [--replica SPEC...]   # or --replica all
    python -m immutools.frames refresh-reports --existing     # rescan what every saved report came from
"""

from __future__ import annotations

import sys

from immutools.analysis.frames import *  # noqa: F401,F403
from immutools.analysis.frames import __all__ as _frames_all
from immutools.analysis.loading import (  # noqa: F401
    LoadedReport, LoadResult, ReportLoadError, bundled_reports_dir, load_reports, normalize_for_saving, read_report,
    refresh_reports,
)
from immutools.analysis.rubric import Rubric, RubricError, load_rubric  # noqa: F401
from immutools.analysis.sensitivity import Sensitivity, sensitivity  # noqa: F401

__all__ = list(_frames_all) + [
    "LoadedReport", "LoadResult", "ReportLoadError", "bundled_reports_dir", "load_reports", "normalize_for_saving",
    "read_report", "refresh_reports", "Rubric", "RubricError", "load_rubric", "Sensitivity", "sensitivity",
]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from immutools.errors import ImmutoolsError

    parser = argparse.ArgumentParser(prog="python -m immutools.frames")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ref = sub.add_parser("refresh-reports", help="scan images and write data/reports/<image id>.json")
    ref.add_argument("images", nargs="*", metavar="IMAGE", help="image files to scan")
    ref.add_argument("--replica", action="append", default=[], metavar="SPEC",
                     help="build this replica spec (repeatable; 'all' for every spec) in a temporary folder and scan it")
    ref.add_argument("--existing", action="store_true",
                     help="rescan what each report already in the output folder was made from (bundled image or replica spec)")
    ref.add_argument("--out", default=None, help="output folder (default: data/reports)")
    args = parser.parse_args(argv)
    if args.command != "refresh-reports" or not (args.images or args.replica or args.existing):
        parser.print_help(sys.stderr)
        return 2
    try:
        refresh_reports(args.images, args.out, log=lambda line: sys.stderr.write(line + "\n"),
                        replicas=args.replica, existing=args.existing)
    except ImmutoolsError as exc:
        sys.stderr.write(f"immutools: error: {exc}\n")
        return exc.exit_code
    except (ValueError, RuntimeError) as exc:     # the replica builder's SpecError / BuildError
        sys.stderr.write(f"immutools: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
