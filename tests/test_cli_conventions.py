"""The command line's conventions: the README's exit-code table (one test per row, read from the
README so table and code cannot drift), --debug keeping the code, terminal tables (headers, yes/no,
width), the verdict line, -q/-v, --format on ls/verify/compare, shell completion, the man page
generated from the parser, and the configuration file's precedence."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builders import make_sample_tree, run
from multidisk import multi_disk

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "data" / "reports"
FLATCAR_REPORT = REPORTS / "flatcar-stable-4593-amd64-pristine.json"


def immutools(*args, env: dict | None = None, cwd=None):
    """Run the CLI as a user does, in a clean environment: no COLUMNS, no config of this machine."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("COLUMNS", "IMMUTOOLS_CONFIG", "IMMUTOOLS_FORMAT", "IMMUTOOLS_RUBRIC", "IMMUTOOLS_CACHE_DIR")}
    base["XDG_CONFIG_HOME"] = "/nonexistent-immutools-config"
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "immutools", *map(str, args)], capture_output=True,
                          timeout=600, env=base, cwd=cwd)


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M)
    codes = {int(code): meaning for code, meaning in rows}
    assert len(codes) == len(rows), "a code appears twice in the README table"
    return codes


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _verity_mismatch(tmp_path):
    from replicas import build_replica

    # Flatcar replica: USR-A starts at sector 2105344 (flatcar/scripts build_library/disk_layout.json);
    # one flipped byte in its btrfs superblock block breaks the dm-verity tree.
    copy = tmp_path / "flatcar.bin"
    subprocess.run(["cp", "--sparse=always", str(build_replica("flatcar-stable-4593-amd64-pristine")), str(copy)],
                   check=True)
    _flip_byte(copy, 2105344 * 512 + 16 * 4096 + 100)
    return [("verify", copy, "--format", "json")]


# One or more command lines per README row (a callable receives tmp_path and returns them).
SCENARIOS = {
    0: lambda t: [("scan", multi_disk(), "--format", "json"), ("ls", multi_disk(), "ROOT:/etc")],
    2: lambda t: [("ls", multi_disk()), ("ls", multi_disk(), "42:/"), ("ls", multi_disk(), "0:/"),
                  ("cat", multi_disk(), "/etc/hostname"), ("scan",), ("scan", multi_disk(), "--format", "nope")],
    3: lambda t: [("scan", _write(t / "tiny.img", b"not a disk"))],
    4: lambda t: [("scan", multi_disk(), "-o", "/nonexistent/dir/x.json"), ("scan", multi_disk(), "-o", "/proc/nope/x.json"),
                  ("scan", t / "missing.img"), ("compare", FLATCAR_REPORT, "--rubric", t / "missing.yaml")],
    5: lambda t: [("cat", multi_disk(), "2:/etc/os-release", "--max-bytes", "4")],
    6: _verity_mismatch,
    7: lambda t: [("verify", multi_disk(), "--format", "json")],
    8: lambda t: [("scan", multi_disk(), {"IMMUTOOLS_CONFIG": str(t / "absent.toml")}),
                  ("scan", multi_disk(), {"IMMUTOOLS_CONFIG": str(_write(t / "bad.toml", b"format = [\n"))}),
                  ("ls", multi_disk(), "2:/", {"IMMUTOOLS_FORMAT": "xml"})],
    10: None,   # a bug: checked in-process (_check_internal_error)
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _split_env(argv):
    env = {}
    args = []
    for a in argv:
        if isinstance(a, dict):
            env.update(a)
        else:
            args.append(a)
    return args, env


def test_readme_table_matches_scenarios_and_man_page():
    from immutools.cli import EXIT_CODES

    codes = readme_exit_codes()
    assert set(codes) == set(SCENARIOS), "every README row needs a scenario here, and only those"
    assert {code for code, _m in EXIT_CODES} == set(codes), "the man page lists the README's codes"


@pytest.mark.parametrize("code", sorted(readme_exit_codes()))
def test_exit_code_row(code, tmp_path, capsys):
    scenarios = SCENARIOS[code]
    if scenarios is None:
        _check_internal_error(capsys)
        return
    for argv in scenarios(tmp_path):
        args, env = _split_env(argv)
        proc = immutools(*args, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == code, (args, proc.returncode, err)
        assert "Traceback" not in err, err
        if code in (3, 4, 5, 8) or (code == 2 and args[0] in ("ls", "cat") and len(args) > 2):
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("immutools: error: "), err
        if code != 0 and code not in (6, 7):
            assert proc.stdout == b""
        if code not in (0, 6, 7) and args[1:] and "--format" not in args:
            # --debug adds the traceback and never changes the code.
            dbg = immutools(*args, "--debug", env=env)
            assert dbg.returncode == code, (args, dbg.stderr.decode())
            if code != 8 and not (code == 2 and len(args) < 2):
                assert "Traceback" in dbg.stderr.decode(), dbg.stderr.decode()


def _check_internal_error(capsys):
    """The last line of defence: an unexpected exception is one line and exit 10; with --debug the
    traceback too, and still 10. (A command that raises stands in for a bug: in-process, since no
    input may trigger one.)"""
    from immutools import cli

    def buggy(args):
        raise RuntimeError("boom")

    saved = cli.COMMANDS["ls"]
    cli.COMMANDS["ls"] = buggy
    try:
        assert cli.main(["ls", "x.img", "1:/"]) == 10
        err = capsys.readouterr().err
        assert "internal error" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert cli.main(["ls", "x.img", "1:/", "--debug"]) == 10
        assert "Traceback" in capsys.readouterr().err
    finally:
        cli.COMMANDS["ls"] = saved


def test_ls_zero_is_the_whole_disk_filesystem(tmp_path):
    """The help's promise: 0 names the whole-disk filesystem of an image without a partition table."""
    tree = make_sample_tree(tmp_path / "tree", with_special=False)
    sq = tmp_path / "root.sqsh"
    run(["mksquashfs", tree, sq, "-quiet", "-noappend", "-no-progress"])
    listing = immutools("ls", sq, "0:/etc", "--format", "json")
    assert listing.returncode == 0, listing.stderr.decode()
    assert sorted(e["name"] for e in json.loads(listing.stdout)) == sorted(os.listdir(tree / "etc"))


# --- terminal tables ------------------------------------------------------------------------

def _tables(text: str):
    """(header line, dash line) pairs of the plain tables in a rendering."""
    lines = text.splitlines()
    return [(lines[i - 1], line) for i, line in enumerate(lines) if i and re.fullmatch(r"-+( +-+)*", line)]


def _check_table_text(text: str, width: int):
    assert max(len(line) for line in text.splitlines()) <= width
    assert not re.search(r"\b(True|False)\b", text), "booleans print yes/no"
    tables = _tables(text)
    assert tables
    for header, dashes in tables:
        # Every column has a header: a header cell starts where each dash run starts.
        starts = [m.start() for m in re.finditer(r"-+", dashes)]
        for s in starts:
            assert header[s:s + 1].strip(), (header, dashes)


def immutools_on_terminal(*args, columns: int, env: dict | None = None) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal of ``columns`` columns, as a person sees it."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "IMMUTOOLS_CONFIG")}
    base["XDG_CONFIG_HOME"] = "/nonexistent-immutools-config"
    proc = subprocess.Popen([sys.executable, "-m", "immutools", *map(str, args)], stdout=slave,
                            stderr=subprocess.DEVNULL, env={**base, **(env or {})})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:      # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.parametrize("columns,env,expect", [(80, {}, 80), (132, {}, 132), (132, {"COLUMNS": "70"}, 70)])
def test_scan_table_fits_the_terminal(columns, env, expect):
    """On a terminal: a table by default, as wide as the terminal ($COLUMNS wins), headers on
    every column, yes/no for booleans."""
    rc, text = immutools_on_terminal("scan", multi_disk(), columns=columns, env=env)
    assert rc == 0
    _check_table_text(text, expect)
    assert max(len(line) for line in text.splitlines()) > min(expect, 100) - 20   # the width is used


def test_piped_tables_are_100_columns():
    """Not a terminal: 100 columns, whatever $COLUMNS a parent process exported."""
    proc = immutools("scan", multi_disk(), "--format", "table", env={"COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    _check_table_text(text, 100)
    assert max(len(line) for line in text.splitlines()) > 60


def test_saved_report_tables_and_verdict():
    """On a Flatcar report: the mount table's last column is named, completeness is shown, and the
    verdict line is built from the report's own facts."""
    from immutools.report.render import render_table

    report = json.loads(FLATCAR_REPORT.read_text())
    text = render_table(report, width=100)
    _check_table_text(text, 100)
    mount_header = next(h for h, _d in _tables(text) if h.startswith("mount"))
    assert mount_header.split()[-1] == "evidence"
    comp = report["completeness"]
    assert f"Completeness {comp['status']}: {comp['observed']} observed, {comp['inferred']} inferred" in text
    verdict = _last_paragraph(text)
    osr, upd = report["os"], report["update"]
    assert verdict.startswith(f"{osr['name']} {osr['version']} ({osr['arch']}): / persistent, /usr read-only (dm-verity)")
    assert f"A/B via {upd['agent']}, slot {upd['active_slot']} active" in verdict
    n = comp["inferred"]
    assert verdict.endswith(f"{comp['status']} ({n} fact{'s' if n != 1 else ''} inferred)")


def test_scan_table_ends_with_the_verdict():
    from immutools.report.render import verdict

    report = json.loads(immutools("scan", multi_disk(), "--format", "json").stdout)
    table = immutools("scan", multi_disk(), "--format", "table").stdout.decode()
    assert _last_paragraph(table) == verdict(report)
    assert verdict(report).startswith(f"{report['os']['name']} {report['os']['version']}")


def _last_paragraph(text: str) -> str:
    """The verdict: the last paragraph, its folded lines joined again."""
    return " ".join(line.strip() for line in text.rstrip("\n").split("\n\n")[-1].splitlines())


# --- -q / -v --------------------------------------------------------------------------------

def test_quiet_silences_progress_and_chatter(tmp_path):
    demo = Path(str(_demo_image()) + ".zst")
    loud = immutools("scan", demo, "--format", "json", "--progress", "--no-cache")
    assert loud.returncode == 0 and "decompressing" in loud.stderr.decode()
    quiet = immutools("scan", demo, "--format", "json", "--progress", "--no-cache", "-q")
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == loud.stdout
    svg = tmp_path / "s.svg"
    assert "wrote" in immutools("compare", FLATCAR_REPORT, "-o", svg).stderr.decode()
    proc = immutools("compare", FLATCAR_REPORT, "-o", svg, "-q")
    assert proc.returncode == 0 and proc.stderr == b"" and svg.exists()


def test_verbose_prints_warnings_and_every_fact(tmp_path):
    report = json.loads(FLATCAR_REPORT.read_text())
    from immutools.report.render import render_table

    terse, verbose = render_table(report, width=100), render_table(report, width=100, verbose=True)
    for fact in report["completeness"]["facts"]:
        assert fact["fact"] in verbose
    assert len(verbose.splitlines()) > len(terse.splitlines())
    # Warnings go to stderr with -v (JSON on stdout stays clean).
    cut = tmp_path / "cut.img"
    with open(multi_disk(), "rb") as f, open(cut, "wb") as g:
        g.write(f.read(64 << 20))
    plain = immutools("scan", cut, "--format", "json")
    loud = immutools("scan", cut, "--format", "json", "-v")
    assert plain.returncode == loud.returncode == 0
    warnings = json.loads(loud.stdout)["warnings"]
    assert warnings and all(f"immutools: warning: {w}" in loud.stderr.decode() for w in warnings)
    assert "warning" not in plain.stderr.decode()


def _demo_image() -> Path:
    from builders import CACHE
    from immutools.demo import build_demo_image

    out = CACHE / "demo" / "demo-disk.img"
    if not out.exists() or not Path(str(out) + ".zst").exists():
        build_demo_image(out)
    return out


# --- --format on ls, verify, compare ---------------------------------------------------------

def test_ls_formats_agree_with_debugfs(tmp_path):
    disk = multi_disk()
    table = immutools("ls", disk, "ROOT:/etc").stdout.decode().splitlines()
    as_json = json.loads(immutools("ls", disk, "ROOT:/etc", "--format", "json").stdout)
    as_csv = list(csv.DictReader(io.StringIO(immutools("ls", disk, "ROOT:/etc", "--format", "csv").stdout.decode())))
    assert [e["name"] for e in as_json] == [r["name"] for r in as_csv] == [line.split()[4] for line in table]
    assert [str(e["size"]) for e in as_json] == [r["size"] for r in as_csv]
    # The reference: debugfs on the ROOT partition (2) names the same entries.
    parts = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout)
    p = parts["partitiontable"]["partitions"][1]
    ext4 = tmp_path / "root.ext4"
    run(["dd", f"if={disk}", f"of={ext4}", "bs=512", f"skip={p['start']}", f"count={p['size']}", "status=none"])
    out = subprocess.run(["debugfs", "-R", "ls -p /etc", str(ext4)], capture_output=True, text=True).stdout
    names = {line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6} - {".", ".."}
    assert names == {e["name"] for e in as_json}


def test_verify_formats():
    disk = multi_disk()
    js = immutools("verify", disk, "--format", "json")
    tb = immutools("verify", disk, "--format", "table")
    assert js.returncode == tb.returncode == 7
    result = json.loads(js.stdout)
    assert result["status"] == "nothing-to-verify"
    assert result["reason"] in tb.stdout.decode()


def test_compare_json_and_csv_are_the_table_cells():
    reports = [REPORTS / "flatcar-stable-4593-amd64-pristine.json", REPORTS / "talos-v1.13.0-amd64-metal.json"]
    js = immutools("compare", *reports, "--format", "json")
    assert js.returncode == 0, js.stderr.decode()
    records = json.loads(js.stdout)
    rows = list(csv.DictReader(io.StringIO(immutools("compare", *reports, "--format", "csv").stdout.decode())))
    assert rows == [{k: str(v) for k, v in r.items()} for r in records]
    images = {r["image"] for r in records}
    assert len(images) == 2
    for path in reports:
        report = json.loads(path.read_text())
        os_cell = next(r["value"] for r in records if r["fact"] == "OS" and report["os"]["version"] in r["value"])
        assert os_cell.startswith(report["os"]["id"])
    rc, table = immutools_on_terminal("compare", *reports, columns=90)
    assert rc == 0 and max(len(line) for line in table.splitlines()) <= 90
    assert "OVERALL" in table


# --- completion and man page ----------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_names_every_command(shell, tmp_path):
    from immutools.cli import COMMANDS

    proc = immutools("completion", shell)
    assert proc.returncode == 0, proc.stderr.decode()
    script = proc.stdout.decode()
    for name in COMMANDS:
        assert name in script
    assert "--format" in script
    if shell == "bash":
        path = tmp_path / "c.bash"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_man_page_is_regenerated_identically():
    proc = subprocess.run([sys.executable, "-m", "immutools.cli", "--man"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "37"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "docs" / "immutools.1").read_text(), \
        "regenerate: python -m immutools.cli --man > docs/immutools.1"
    man = subprocess.run(["man", "-l", "-"], input=proc.stdout, capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "100"})
    if man.returncode == 0:    # man-db present: the page renders and lists the options
        assert "--cache-dir" in man.stdout and "EXIT STATUS" in man.stdout


# --- configuration file -------------------------------------------------------------------------

def test_config_precedence(tmp_path):
    """flags > environment > file > defaults, for format and cache_dir."""
    disk = multi_disk()
    conf = tmp_path / "config.toml"
    file_cache, env_cache, flag_cache = tmp_path / "file-cache", tmp_path / "env-cache", tmp_path / "flag-cache"
    conf.write_text(f'format = "json"\ncache_dir = "{file_cache}"\n')
    env = {"IMMUTOOLS_CONFIG": str(conf)}
    # file > default: ls prints JSON
    json.loads(immutools("ls", disk, "2:/etc", env=env).stdout)
    # environment > file
    out = immutools("ls", disk, "2:/etc", env={**env, "IMMUTOOLS_FORMAT": "csv"}).stdout.decode()
    assert out.startswith("mode,uid,gid,size,name")
    # flag > environment
    out = immutools("ls", disk, "2:/etc", "--format", "table", env={**env, "IMMUTOOLS_FORMAT": "csv"}).stdout.decode()
    assert out.startswith("-") and "hostname" in out
    # XDG_CONFIG_HOME is the default place
    (tmp_path / "xdg" / "immutools").mkdir(parents=True)
    (tmp_path / "xdg" / "immutools" / "config.toml").write_text('format = "csv"\n')
    out = immutools("ls", disk, "2:/etc", env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).stdout.decode()
    assert out.startswith("mode,uid")
    # cache_dir: the decompression cache of a compressed image lands where the winner says
    demo = Path(str(_demo_image()) + ".zst")
    assert immutools("scan", demo, env=env).returncode == 0
    assert any(file_cache.iterdir())
    assert immutools("scan", demo, env={**env, "IMMUTOOLS_CACHE_DIR": str(env_cache)}).returncode == 0
    assert any(env_cache.iterdir())
    assert immutools("scan", demo, "--cache-dir", flag_cache, env={**env, "IMMUTOOLS_CACHE_DIR": str(env_cache)}).returncode == 0
    assert any(flag_cache.iterdir())


@pytest.mark.parametrize("content,fragment", [
    ("format = [\n", "not valid TOML"),
    ('colour = "red"\n', "unknown key 'colour'"),
    ('format = "xml"\n', "format 'xml'"),
    ("cache_dir = 3\n", "must be a string"),
])
def test_bad_config_is_one_line_exit_8(tmp_path, content, fragment):
    conf = tmp_path / "config.toml"
    conf.write_text(content)
    proc = immutools("ls", multi_disk(), "2:/", env={"IMMUTOOLS_CONFIG": str(conf)})
    err = proc.stderr.decode()
    assert proc.returncode == 8, err
    assert err.count("\n") == 1 and str(conf) in err and fragment in err


def test_rubric_from_config_is_used(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text(f'rubric = "{tmp_path / "absent-rubric.yaml"}"\n')
    proc = immutools("compare", FLATCAR_REPORT, env={"IMMUTOOLS_CONFIG": str(conf)})
    assert proc.returncode == 4 and "absent-rubric.yaml" in proc.stderr.decode()
    # a flag wins over the file
    flag = immutools("compare", FLATCAR_REPORT, "--rubric", ROOT / "data" / "rubric.yaml", "--format", "json",
                     env={"IMMUTOOLS_CONFIG": str(conf)})
    assert flag.returncode == 0, flag.stderr.decode()


def test_compare_over_a_folder_shows_overall_progress(tmp_path):
    """compare/report over a folder of images say which image of how many is being scanned (the
    per-image bar is decompression's); a saved report in the folder is not counted; -q says nothing."""
    bundled = Path(__file__).resolve().parent.parent / "data" / "replicas"
    for name in ("debian-12-amd64-genericcloud.qcow2", "fcos-stable-43-amd64-updated.qcow2"):
        (tmp_path / name).symlink_to(bundled / name)
    (tmp_path / "flatcar.json").symlink_to(FLATCAR_REPORT)
    loud = immutools("compare", tmp_path, "--format", "json", "--progress", "--no-cache")
    lines = [ln for ln in loud.stderr.decode().splitlines() if ln.startswith("immutools: image ")]
    assert loud.returncode == 0, loud.stderr
    assert lines == ["immutools: image 1/2: debian-12-amd64-genericcloud.qcow2",
                     "immutools: image 2/2: fcos-stable-43-amd64-updated.qcow2"], loud.stderr
    assert len(json.loads(loud.stdout)) > 0
    quiet = immutools("compare", tmp_path, "--format", "json", "--progress", "--no-cache", "-q")
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == loud.stdout
