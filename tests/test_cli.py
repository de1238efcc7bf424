"""The CLI as a user meets it: output formats, exit codes, one-line errors without tracebacks,
partial results with warnings, and an import-light `scan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from builders import sha256_file
from multidisk import multi_disk

from immutools.report.model import load_schema

SCHEMA = load_schema()


def immutools(*args, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "immutools", *map(str, args)], capture_output=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stderr.decode())
    return proc


def assert_one_line_error(proc, path_fragment: str, rc: int):
    err = proc.stderr.decode()
    assert proc.returncode == rc, (proc.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert path_fragment in lines[0], err
    assert proc.stdout == b""


def test_scan_json_and_yaml_agree_and_validate():
    disk = multi_disk()
    js = json.loads(immutools("scan", disk, "--format", "json", check_rc=0).stdout)
    ym = yaml.safe_load(immutools("scan", disk, "--format", "yaml", check_rc=0).stdout)
    jsonschema.validate(js, SCHEMA)
    assert js == ym


def test_scan_table_lists_partitions():
    out = immutools("scan", multi_disk(), "--format", "table", check_rc=0).stdout.decode()
    for label in ("EFI-SYSTEM", "ROOT", "BOOT", "USR", "SQUASH", "EROFS", "HASH", "SWAP"):
        assert label in out
    assert "Sample Linux" in out


def test_scan_writes_output_file(tmp_path):
    out = tmp_path / "r.json"
    proc = immutools("scan", multi_disk(), "-o", out, check_rc=0)
    assert proc.stdout == b""
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)


def test_stats_on_stderr_and_in_json():
    proc = immutools("scan", multi_disk(), "--stats", "--format", "json", check_rc=0)
    report = json.loads(proc.stdout)
    assert report["stats"]["bytes_read"] > 0
    assert "peak_rss_bytes" in report["stats"]
    assert "stats:" in proc.stderr.decode()


def test_ls_and_cat_inside_partitions():
    disk = multi_disk()
    listing = immutools("ls", disk, "ROOT:/etc", check_rc=0).stdout.decode()
    assert "os-release" in listing and "hostname" in listing
    text = immutools("cat", disk, "2:/etc/os-release", check_rc=0).stdout.decode()
    assert "ID=sample" in text
    # Symlinks resolve inside the image: escape-link climbs above / and lands on /etc/hostname.
    assert immutools("cat", disk, "2:/escape-link", check_rc=0).stdout == b"sample\n"


@pytest.mark.parametrize(
    "name,content,rc",
    [
        ("empty.img", b"", 3),
        ("tiny.img", b"not a disk", 3),
        ("text.img", b"hello world\n" * 1000, 3),
        ("zero.img", bytes(1 << 20), 3),
        ("trunc.xz", None, 3),
        ("bad.qcow2", b"QFI\xfb" + b"\xff" * 508, 3),
    ],
)
def test_bad_input_one_line_error(tmp_path, name, content, rc):
    path = tmp_path / name
    if content is None:
        raw = tmp_path / "raw"
        raw.write_bytes(os.urandom(1 << 20))
        data = subprocess.run(["xz", "-c", str(raw)], capture_output=True, check=True).stdout
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    before = sha256_file(path)
    proc = immutools("scan", path, "--format", "json")
    assert sha256_file(path) == before
    assert_one_line_error(proc, name, rc)


def test_bare_filesystem_image_without_table(tmp_path):
    """A squashfs (or any filesystem) image with no partition table is scanned as a whole disk."""
    from builders import make_sample_tree, run

    tree = make_sample_tree(tmp_path / "tree", with_special=False)
    sq = tmp_path / "root.sqsh"
    run(["mksquashfs", tree, sq, "-quiet", "-noappend", "-comp", "zstd", "-no-progress"])
    report = json.loads(immutools("scan", sq, "--format", "json", check_rc=0).stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["image"]["table"] == "none"
    assert report["image"]["filesystem"]["type"] == "squashfs"
    assert report["partitions"] == []
    assert report["os"]["id"] == "sample"


def test_missing_file_and_directory(tmp_path):
    assert_one_line_error(immutools("scan", tmp_path / "nope.img"), "nope.img", 4)
    assert_one_line_error(immutools("scan", tmp_path), str(tmp_path), 3)


def test_usage_error_exit_code():
    proc = immutools("scan")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr.decode()


def test_truncated_disk_gives_partial_report_with_warnings(tmp_path):
    """A download cut off half-way: the table (primary GPT) and the early partitions still read."""
    src = multi_disk()
    cut = tmp_path / "cut.img"
    keep = 200 * 1024 * 1024
    with open(src, "rb") as f, open(cut, "wb") as g:
        remaining = keep
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                g.seek(len(chunk), 1)
            else:
                g.write(chunk)
            remaining -= len(chunk)
        g.truncate(keep)
    proc = immutools("scan", cut, "--format", "json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    jsonschema.validate(report, SCHEMA)
    parts = {p["number"]: p for p in report["partitions"]}
    assert parts[1]["filesystem"] == "vfat" and parts[2]["filesystem"] == "ext4"
    assert report["os"]["id"] == "sample"
    assert report["warnings"], "a truncated image must say so"
    assert any("past the end" in w or "backup" in w for w in report["warnings"])


def test_scan_is_import_light():
    code = (
        "import sys; from immutools.cli import main; "
        f"main(['scan', {str(multi_disk())!r}, '--format', 'json']); "
        # numpy serves the vectorised metadata walks (fs/table.py); the analysis stack stays out
        "heavy = [m for m in ('pandas', 'matplotlib', 'nbclient', 'pyarrow', 'duckdb', 'dask', 'rich', 'shtab') if m in sys.modules]; "
        "sys.stderr.write('HEAVY=' + ','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr.decode().strip().endswith("HEAVY="), proc.stderr.decode()


def test_no_write_access_needed(tmp_path):
    """The input can be read-only (chmod 0444) and still scans."""
    disk = multi_disk()
    ro = tmp_path / "ro.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(ro)], check=True)
    ro.chmod(0o444)
    immutools("scan", ro, "--format", "json", check_rc=0)


def test_demo_image_scans():
    from immutools.demo import build_demo_image
    from builders import CACHE

    out = CACHE / "demo" / "demo-disk.img"
    if not out.exists() or not Path(str(out) + ".zst").exists():
        build_demo_image(out)
    for path in (out, Path(str(out) + ".zst")):
        report = json.loads(immutools("scan", path, "--format", "json", check_rc=0).stdout)
        jsonschema.validate(report, SCHEMA)
        assert report["os"]["id"] == "demo"
        assert report["os"]["arch"] == "x86_64"
        assert [p["filesystem"] for p in report["partitions"]] == ["vfat", "ext4"]
