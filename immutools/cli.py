"""Command-line interface: a thin layer over the library.

Kept import-light: ``scan`` never imports pandas or matplotlib, and heavy readers load lazily.
Exit codes are documented in ``immutools.errors`` and the README.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from immutools import __version__
from immutools.errors import EXIT_INTERNAL, EXIT_LIMIT, EXIT_OK, EXIT_USAGE, ImageIOError, ImmutoolsError
from immutools.corpus import commands as corpus_commands



class UsageError(ImmutoolsError):
    """A mistake in the command line that argparse cannot see (a partition that does not exist)."""

    exit_code = EXIT_USAGE


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="also show a traceback on errors (the exit code stays the documented one)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress and no chatter on stderr: only errors and the requested output")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print warnings on stderr and evidence details in tables")
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
                    help="PARTITION:PATH, e.g. 3:/etc or USR-A:/lib (partition number or label; 0 = the whole-disk "
                         "filesystem of an image without a partition table)")
    ls.add_argument("-R", "--recursive", action="store_true", help="walk recursively")
    ls.add_argument("--format", "-f", choices=("table", "json", "csv"), default=None,
                    help="output format (default: table; json is a list of entries)")
    _add_common(ls)

    ver = sub.add_parser("verify", help="recompute the dm-verity hash trees and compare with the boot chain's root hashes")
    ver.add_argument("image")
    ver.add_argument("--format", "-f", choices=("json", "table"), default=None,
                     help="output format (default: table on a terminal, json otherwise)")
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
    cmp.add_argument("--format", "-f", choices=("table", "json", "csv"), default=None,
                     help="table (default), or the comparison as JSON records or CSV rows")
    _add_common(cmp)

    rep = sub.add_parser("report", help="write one self-contained HTML page comparing images or saved reports")
    rep.add_argument("inputs", nargs="+", metavar="IMAGE_OR_REPORT",
                     help="a saved report (.json), an image (scanned), or a folder of either")
    rep.add_argument("--output", "-o", metavar="FILE.html", required=True, help="where to write the page")
    rep.add_argument("--rubric", metavar="YAML", help="score with this rubric instead of data/rubric.yaml")
    _add_common(rep)
    corpus_commands.add_subcommands(sub, _add_common)     # scan-many, diff (immutools/corpus/commands.py)

    comp = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh), generated from this parser")
    comp.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    _add_common(comp)
    return parser


ANALYSIS_CHARTS = ("spectrum", "heatmap", "partitions", "surface", "updates")


def _select_volume(image, spec: str):
    from immutools.errors import UnsupportedImageError

    if spec.isdigit():
        vol = image.volume(number=int(spec))
    else:
        vol = image.volume(label=spec)
    if vol is None:
        names = _readable_names(image)
        if spec == "0":
            raise UsageError(f"{image.opened.path}: partition 0 is the whole-disk filesystem of an image without a "
                             f"partition table; this one has a table: name a partition (readable ones: {names})")
        raise UsageError(f"{image.opened.path}: no partition {spec!r} (readable ones: {names})")
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
            raise UsageError(f"{image.opened.path}: say which partition, e.g. 2:/etc (readable ones: {_readable_names(image)})")
        spec = str(readable[0].number)
    return spec, path or "/"


def _readable_names(image) -> str:
    readable = [v for v in image.volumes if v.identity.mountable]
    return ", ".join(f"{v.number}" + (f"={v.label}" if v.label else "") for v in readable) or "none"


def _warn(args, message: str) -> None:
    """A warning on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"immutools: warning: {message}\n")


def _note(args, message: str) -> None:
    """Chatter (``wrote FILE``) on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"immutools: {message}\n")


def cmd_scan(args) -> int:
    from immutools.report.render import render
    from immutools.scan import scan

    report = scan(args.image, progress=args.progress, with_stats=args.stats)
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "json")
    text = render(report, fmt, verbose=args.verbose)
    if args.verbose and fmt != "table":
        for w in report.get("warnings") or []:
            _warn(args, w)
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
        raise ImageIOError(f"{output}: cannot write report: {exc.strerror}") from None


def cmd_ls(args) -> int:
    from immutools.disk import DiskImage, require_image

    require_image(args.image)
    with DiskImage.open(args.image, progress=args.progress) as image:
        spec, path = _split_location(image, args.location)
        _vol, fs = _select_volume(image, spec)
        if args.recursive:
            entries = ((entry.path, entry.stat, entry.link_target) for entry in fs.walk(path))
        else:
            entries = ((name, st, fs.readlink(path.rstrip("/") + "/" + name) if st.is_symlink else None)
                       for name, st in fs.scandir(path))
        _print_entries(entries, args.format or "table")
        for w in image.warnings + fs.warnings:
            _warn(args, w)
    return EXIT_OK


LS_FIELDS = ("mode", "uid", "gid", "size", "name", "link_target")


def _print_entries(entries, fmt: str) -> None:
    """``ls`` output: ``ls -l``-like lines, a JSON list, or CSV rows (header first)."""
    import stat as stat_mod

    if fmt == "table":
        for name, st, link_target in entries:
            line = f"{stat_mod.filemode(st.mode)} {st.uid:>5} {st.gid:>5} {st.size:>10} {name}"
            if link_target is not None:
                line += f" -> {link_target}"
            sys.stdout.write(line + "\n")
        return
    records = [dict(zip(LS_FIELDS, (stat_mod.filemode(st.mode), st.uid, st.gid, st.size, name, link_target)))
               for name, st, link_target in entries]
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=LS_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


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
            _warn(args, w)
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

    if args.rubric and not os.path.isfile(args.rubric):
        # A file that is not there is an I/O problem (exit 4), like a missing image.
        raise ImageIOError(f"{args.rubric}: cannot read rubric: no such file")
    rubric = load_rubric(args.rubric) if args.rubric else None
    frames = load(args.inputs, rubric=rubric, progress=args.progress)
    for w in frames.warnings:
        _warn(args, w)
    if not frames.reports:
        raise AnalysisUsageError("no report or image found in " + ", ".join(args.inputs))
    return frames


def cmd_compare(args) -> int:
    import textwrap

    from immutools.analysis.loading import AnalysisUsageError
    from immutools.analysis.sensitivity import sensitivity
    from immutools.analysis.table import render_comparison, render_comparison_data
    from immutools.report.render import terminal_width

    if args.chart and not args.output:
        raise AnalysisUsageError("--chart needs --output FILE.png, FILE.svg or FILE.pdf")
    if args.output and not args.output.lower().endswith((".png", ".svg", ".pdf")):
        raise AnalysisUsageError(f"{args.output}: charts are written as .png, .svg or .pdf")
    frames = _load_for_analysis(args)
    if args.format in ("json", "csv"):
        sys.stdout.write(render_comparison_data(frames, args.format))
    else:
        width = max(60, terminal_width())
        sys.stdout.write(render_comparison(frames, width=width))
        summary = sensitivity(frames, frames.rubric).summary
        sys.stdout.write("\n".join(textwrap.fill(para, width) for para in summary.split("\n")) + "\n")
    if args.output:
        from immutools.analysis import charts

        path = charts.make(args.chart or "spectrum", frames, rubric=frames.rubric).save(args.output)
        _note(args, f"wrote {path}")
    return EXIT_OK


def cmd_report(args) -> int:
    from immutools.analysis.html import write_report

    frames = _load_for_analysis(args)
    path = write_report(frames, args.output, rubric=frames.rubric)
    _note(args, f"wrote {path}")
    return EXIT_OK


def cmd_completion(args) -> int:
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _roff(text: str) -> str:
    """Escape text for a man page line (backslashes, leading dots and quotes, hyphens as minus)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return ("\\&" + text) if text[:1] in (".", "'") else text


def man_page(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/immutools.1, written from the parser so the options and the page cannot drift."""
    parser = parser or build_parser()
    out = [f'.TH IMMUTOOLS 1 "" "immutools {__version__}" "User Commands"', ".SH NAME",
           "immutools \\- " + _roff(parser.description or ""), ".SH SYNOPSIS",
           ".B immutools", "[\\fB\\-\\-cache\\-dir\\fR \\fIDIR\\fR] [\\fB\\-\\-no\\-cache\\fR] \\fICOMMAND\\fR ...",
           ".SH COMMANDS"]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subs._choices_actions}
    for name, sp in subs.choices.items():
        out += [".SS " + _roff(f"immutools {name}"), _roff(helps.get(name) or ""), ".PP",
                _roff(" ".join(sp.format_usage().split()[1:]))]
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                flag = ", ".join(action.option_strings)
                if action.nargs != 0:
                    flag += " " + (action.metavar or (("{" + ",".join(action.choices) + "}") if action.choices
                                                      else action.dest.upper()))
            else:
                flag = action.metavar or action.dest.upper()
            out += [".TP", "\\fB" + _roff(flag) + "\\fR", _roff(action.help or "")]
    out += [".SH CONFIGURATION", _roff("Optional TOML file $IMMUTOOLS_CONFIG, else $XDG_CONFIG_HOME/immutools/config.toml, "
                                       "with the keys cache_dir, rubric and format. Precedence: flags > environment "
                                       "(IMMUTOOLS_CACHE_DIR, IMMUTOOLS_RUBRIC, IMMUTOOLS_FORMAT) > file > defaults."),
            ".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [".SH SEE ALSO", _roff("The README of the immutools repository: formats, the report schema, the threat model.")]
    return "\n".join(out) + "\n"


# The man page's exit-status section (the README table is the reference; tests keep both in step).
EXIT_CODES = (
    (0, "success; a partly readable image still exits 0 and lists what it could not read under warnings"),
    (2, "usage error"),
    (3, "the input is not a readable or supported disk image"),
    (4, "I/O error: missing image or rubric file, read error, cannot write the output"),
    (5, "a safety limit was hit (decompressed size, entries, recursion)"),
    (6, "verification failed (immutools verify)"),
    (7, "nothing to verify (immutools verify)"),
    (8, "the configuration file cannot be used"),
    (10, "internal error (a bug)"),
)


COMMANDS = {"scan": cmd_scan, "completion": cmd_completion, "ls": cmd_ls, "cat": cmd_cat, "verify": cmd_verify, "compare": cmd_compare,
            "report": cmd_report, **corpus_commands.COMMANDS}


# The formats each command offers: a configured ``format`` applies only where the command has it.
FORMATS = {"scan": ("json", "yaml", "table"), "ls": ("table", "json", "csv"), "verify": ("json", "table"),
           "compare": ("table", "json", "csv")}


def _apply_config(args) -> None:
    """Fill what the command line left unset from the environment and the config file
    (immutools.config: flags > environment > file > defaults)."""
    from immutools import config

    conf = config.load()
    if getattr(args, "cache_dir", None) is None and conf.cache_dir:
        args.cache_dir = conf.cache_dir
    if hasattr(args, "rubric") and args.rubric is None and conf.rubric:
        args.rubric = conf.rubric
    if getattr(args, "format", "unset") is None and conf.format in FORMATS.get(args.command, ()):
        args.format = conf.format


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from immutools.image.cache import configure

    try:
        _apply_config(args)
    except ImmutoolsError as exc:
        sys.stderr.write(f"immutools: error: {exc}\n")
        return exc.exit_code
    if getattr(args, "quiet", False):
        args.progress = False
    configure(directory=args.cache_dir, enabled=not args.no_cache)
    try:
        return COMMANDS[args.command](args)
    except ImmutoolsError as exc:
        if args.debug:
            traceback.print_exc()
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
            traceback.print_exc()
        sys.stderr.write(
            f"immutools: internal error while reading {getattr(args, 'image', '?')}: "
            f"{type(exc).__name__}: {exc} (rerun with --debug for a traceback)\n"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    if sys.argv[1:] == ["--man"]:    # regenerate docs/immutools.1: python -m immutools.cli --man > docs/immutools.1
        sys.stdout.write(man_page())
        sys.exit(EXIT_OK)
    sys.exit(main())
