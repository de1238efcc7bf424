"""Command-line interface: a thin layer over the library.

Kept import-light: ``scan`` never imports pandas or matplotlib, and heavy readers load lazily.
Exit codes are documented in ``immutools.errors`` and the README.
"""

from __future__ import annotations

import argparse
import os
import sys

from immutools import __version__
from immutools.errors import EXIT_LIMIT, EXIT_OK, EXIT_USAGE, ImmutoolsError
from immutools.corpus import commands as corpus_commands

EXIT_INTERNAL = 10


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                   help="never show a decompression progress bar")
    p.add_argument("--progress", dest="progress", action="store_const", const=True,
                   help="always show a decompression progress bar on stderr")
    _add_cache_options(p, default=argparse.SUPPRESS)


def _add_cache_options(p: argparse.ArgumentParser, default) -> None:
    """--cache-dir/--no-cache: accepted before and after the command (a subcommand's SUPPRESS
    default keeps it from resetting a value given before the command)."""
    p.add_argument("--cache-dir", metavar="DIR", default=default,
                   help="decompression cache directory (default: $IMMUTOOLS_CACHE_DIR, else $XDG_CACHE_HOME/immutools)")
    p.add_argument("--no-cache", action="store_true", default=default,
                   help="decompress compressed images into a temporary file instead of the cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immutools",
        description="Measure how immutable an operating system is, offline, from its disk image.",
    )
    parser.add_argument("--version", action="version", version=f"immutools {__version__}")
    _add_cache_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    scan = sub.add_parser("scan", help="scan a disk image and report what is on it")
    scan.add_argument("image", help="disk image: raw, compressed (gz/bz2/xz/zst/lz4), qcow2, vmdk, vhd, vhdx")
    scan.add_argument("--format", "-f", choices=("json", "yaml", "table"), default=None,
                      help="output format (default: table on a terminal, json otherwise)")
    scan.add_argument("--output", "-o", help="write the report to this file instead of stdout")
    scan.add_argument("--stats", action="store_true",
                      help="print time per phase, bytes read and peak memory on stderr (and add them to the report)")
    _add_common(scan)

    ls = sub.add_parser("ls", help="list a directory inside an image's filesystem")
    ls.add_argument("image")
    ls.add_argument("location", nargs="?", default="",
                    help="PARTITION:PATH, e.g. 3:/etc or USR-A:/lib (partition number or label; 0 = whole disk)")
    ls.add_argument("-R", "--recursive", action="store_true", help="walk recursively")
    _add_common(ls)

    ver = sub.add_parser("verify", help="recompute the dm-verity hash trees and compare with the boot chain's root hashes")
    ver.add_argument("image")
    ver.add_argument("--format", "-f", choices=("json", "table"), default=None)
    _add_common(ver)

    cat = sub.add_parser("cat", help="write a file from inside an image to stdout")
    cat.add_argument("image")
    cat.add_argument("location", help="PARTITION:PATH, e.g. 3:/lib/os-release")
    cat.add_argument("--max-bytes", type=int, default=None, metavar="N",
                     help="refuse (exit 5) a file larger than N bytes (default: the 64 MiB file-read limit)")
    _add_common(cat)

    # Analysis commands (immutools.analysis: pandas and matplotlib, imported only when they run).
    cmp = sub.add_parser("compare", help="compare images or saved reports side by side (scores, layout, updates, surface)")
    cmp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_REPORT",
                     help="a saved report (.json, from `scan --format json -o X.json`), an image (scanned), or a folder of either")
    cmp.add_argument("--chart", choices=ANALYSIS_CHARTS, help="also draw this chart (needs --output)")
    cmp.add_argument("--output", "-o", metavar="FILE",
                     help="write the chart to FILE.png, FILE.svg or FILE.pdf (text kept as text; default chart: spectrum)")
    cmp.add_argument("--rubric", metavar="YAML", help="score with this rubric instead of data/rubric.yaml")
    _add_common(cmp)

    rep = sub.add_parser("report", help="write one self-contained HTML page comparing images or saved reports")
    rep.add_argument("inputs", nargs="+", metavar="IMAGE_OR_REPORT",
                     help="a saved report (.json), an image (scanned), or a folder of either")
    rep.add_argument("--output", "-o", metavar="FILE.html", required=True, help="where to write the page")
    rep.add_argument("--rubric", metavar="YAML", help="score with this rubric instead of data/rubric.yaml")
    _add_common(rep)
    corpus_commands.add_subcommands(sub, _add_common)     # scan-many, diff (immutools/corpus/commands.py)
    return parser


ANALYSIS_CHARTS = ("spectrum", "heatmap", "partitions", "surface", "updates")


def _select_volume(image, spec: str):
    from immutools.errors import UnsupportedImageError

    if spec.isdigit():
        vol = image.volume(number=int(spec))
    else:
        vol = image.volume(label=spec)
    if vol is None:
        raise UnsupportedImageError(f"{image.opened.path}: no partition {spec!r}")
    fs = image.filesystem(vol)
    if fs is None:
        raise UnsupportedImageError(f"{image.opened.path}: {vol.describe()} holds {vol.fstype}, not a readable filesystem")
    return vol, fs


def _split_location(image, location: str) -> tuple[str, str]:
    if ":" in location:
        spec, path = location.split(":", 1)
    else:
        spec, path = location, "/"
    if not spec:
        # Default: the only readable filesystem, or the whole disk.
        readable = [v for v in image.volumes if v.identity.mountable]
        if len(readable) != 1:
            from immutools.errors import UnsupportedImageError

            names = ", ".join(f"{v.number}" + (f"={v.label}" if v.label else "") for v in readable) or "none"
            raise UnsupportedImageError(f"{image.opened.path}: say which partition (readable ones: {names})")
        spec = str(readable[0].number)
    return spec, path or "/"


def cmd_scan(args) -> int:
    from immutools.report.render import render
    from immutools.scan import scan

    report = scan(args.image, progress=args.progress, with_stats=args.stats)
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "json")
    text = render(report, fmt)
    if args.stats:
        st = report["stats"]
        size = st["image_size"] or 1
        sys.stderr.write(
            f"stats: wall {st['wall_s']:.3f}s cpu {st['cpu_s']:.3f}s; read {st['bytes_read']} bytes "
            f"({100.0 * st['bytes_read'] / size:.3f}% of {size}) in {st['read_calls']} calls; "
            f"decompressed {st['bytes_decompressed']} bytes (access {st.get('access') or 'direct'}, cache {st.get('cache') or '-'}); "
            f"peak RSS {st['peak_rss_bytes'] // (1024 * 1024)} MiB\n"
        )
        for name, ph in st["phases"].items():
            sys.stderr.write(f"stats:   {name:<24} wall {ph['wall_s']:.4f}s cpu {ph['cpu_s']:.4f}s\n")
    _write_output(text, args.output)
    return EXIT_OK


def _write_output(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise ImmutoolsError(f"{output}: cannot write report: {exc.strerror}") from None


def cmd_ls(args) -> int:
    from immutools.disk import DiskImage, require_image

    require_image(args.image)
    with DiskImage.open(args.image, progress=args.progress) as image:
        spec, path = _split_location(image, args.location)
        _vol, fs = _select_volume(image, spec)
        if args.recursive:
            for entry in fs.walk(path):
                _print_entry(entry.path, entry.stat, entry.link_target)
        else:
            for name, st in fs.scandir(path):
                full = path.rstrip("/") + "/" + name
                target = fs.readlink(full) if st.is_symlink else None
                _print_entry(name, st, target)
        for w in image.warnings + fs.warnings:
            sys.stderr.write(f"immutools: warning: {w}\n")
    return EXIT_OK


def _print_entry(name: str, st, link_target: str | None) -> None:
    import stat as stat_mod

    line = f"{stat_mod.filemode(st.mode)} {st.uid:>5} {st.gid:>5} {st.size:>10} {name}"
    if link_target is not None:
        line += f" -> {link_target}"
    sys.stdout.write(line + "\n")


def cmd_cat(args) -> int:
    from immutools.disk import DiskImage, require_image
    from immutools.errors import LimitExceededError
    from immutools.limits import DEFAULT_LIMITS

    require_image(args.image)
    with DiskImage.open(args.image, progress=args.progress) as image:
        spec, path = _split_location(image, args.location)
        _vol, fs = _select_volume(image, spec)
        st = fs.stat(path)
        # A damaged or hostile size (a sparse file claiming exabytes) must not become an endless
        # stream of zeros: refuse before writing anything.
        limit = args.max_bytes if args.max_bytes is not None else DEFAULT_LIMITS.max_file_read
        if st.size > limit:
            raise LimitExceededError(f"{path}: {st.size} bytes is more than the {limit}-byte output limit (--max-bytes)")
        out = sys.stdout.buffer
        chunk = 1 << 20
        for off in range(0, st.size, chunk):
            out.write(fs.read(path, off, min(chunk, st.size - off), max_bytes=chunk))
        out.flush()
    return EXIT_OK


def cmd_verify(args) -> int:
    import json

    from immutools.errors import EXIT_NOTHING_TO_VERIFY, EXIT_VERIFY_FAILED
    from immutools.verify import verify_image

    result = verify_image(args.image, progress=args.progress)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for row in result["targets"]:
            line = f"slot {row['slot']} (partition {row['partition']}): {row['status']}"
            if row["status"] == "mismatch":
                if row.get("bad_data_blocks"):
                    line += f"; first bad data blocks {row['bad_data_blocks']} ({row['bad_data_count']} in all)"
                if row.get("bad_hash_blocks"):
                    line += f"; bad hash blocks {row['bad_hash_blocks']}"
                if not row.get("bad_data_blocks") and not row.get("bad_hash_blocks"):
                    line += f"; computed root {row['computed_root']} != {row['expected_root']}"
            elif row.get("detail"):
                line += f": {row['detail']}"
            sys.stdout.write(line + "\n")
        if result["status"] == "nothing-to-verify":
            sys.stdout.write(f"{args.image}: nothing to verify: {result['reason']}\n")
        for w in result["warnings"]:
            sys.stderr.write(f"immutools: warning: {w}\n")
    if result["status"] == "failed":
        return EXIT_VERIFY_FAILED
    if result["status"] == "nothing-to-verify":
        if fmt == "json":
            sys.stderr.write(f"immutools: nothing to verify: {result['reason']}\n")
        return EXIT_NOTHING_TO_VERIFY
    return EXIT_OK


def _load_for_analysis(args):
    """Frames of the inputs of ``compare``/``report`` (imports pandas: only called by them)."""
    from immutools.analysis.frames import load
    from immutools.analysis.loading import AnalysisUsageError
    from immutools.analysis.rubric import load_rubric

    rubric = load_rubric(args.rubric) if args.rubric else None
    frames = load(args.inputs, rubric=rubric, progress=args.progress)
    for w in frames.warnings:
        sys.stderr.write(f"immutools: warning: {w}\n")
    if not frames.reports:
        raise AnalysisUsageError("no report or image found in " + ", ".join(args.inputs))
    return frames


def cmd_compare(args) -> int:
    import shutil

    from immutools.analysis.loading import AnalysisUsageError
    from immutools.analysis.sensitivity import sensitivity
    from immutools.analysis.table import render_comparison

    if args.chart and not args.output:
        raise AnalysisUsageError("--chart needs --output FILE.png, FILE.svg or FILE.pdf")
    if args.output and not args.output.lower().endswith((".png", ".svg", ".pdf")):
        raise AnalysisUsageError(f"{args.output}: charts are written as .png, .svg or .pdf")
    frames = _load_for_analysis(args)
    width = shutil.get_terminal_size((120, 40)).columns if sys.stdout.isatty() else 160
    sys.stdout.write(render_comparison(frames, width=max(60, width)))
    sys.stdout.write(sensitivity(frames, frames.rubric).summary + "\n")
    if args.output:
        from immutools.analysis import charts

        path = charts.make(args.chart or "spectrum", frames, rubric=frames.rubric).save(args.output)
        sys.stderr.write(f"immutools: wrote {path}\n")
    return EXIT_OK


def cmd_report(args) -> int:
    from immutools.analysis.html import write_report

    frames = _load_for_analysis(args)
    path = write_report(frames, args.output, rubric=frames.rubric)
    sys.stderr.write(f"immutools: wrote {path}\n")
    return EXIT_OK


COMMANDS = {"scan": cmd_scan, "ls": cmd_ls, "cat": cmd_cat, "verify": cmd_verify, "compare": cmd_compare,
            "report": cmd_report, **corpus_commands.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from immutools.image.cache import configure

    configure(directory=args.cache_dir, enabled=not args.no_cache)
    try:
        return COMMANDS[args.command](args)
    except ImmutoolsError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"immutools: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("immutools: interrupted\n")
        return 130
    except BrokenPipeError:
        # Output piped into `head`: not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except MemoryError:
        sys.stderr.write(f"immutools: error: {getattr(args, 'image', '?')}: out of memory\n")
        return EXIT_LIMIT
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if args.debug:
            raise
        sys.stderr.write(
            f"immutools: internal error while reading {getattr(args, 'image', '?')}: "
            f"{type(exc).__name__}: {exc} (rerun with --debug for a traceback)\n"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
