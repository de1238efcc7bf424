"""``immutools diff``: the layout changes between consecutive releases, as their replicas show them.

Each pair is two replicas of consecutive releases whose published layout changed (the replica specs
cite the upstream change); the test asserts the change is reported and that what did not change is
not. The replicas are the cached fixtures other tests build (``tests/replicas.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from replicas import build_replica

from immutools.analysis.loading import scan_report
from immutools.corpus.diff import diff_reports, render_table

_REPORTS: dict[str, dict] = {}


def report_of(spec: str) -> dict:
    if spec not in _REPORTS:
        _REPORTS[spec] = scan_report(build_replica(spec))
    return _REPORTS[spec]


def changes(a: str, b: str) -> dict:
    """(section, item, field) -> (A value, B value) of the diff of two replicas."""
    result = diff_reports(report_of(a), report_of(b))
    return {(c.section, c.item, c.field): (c.a, c.b) for c in result.changes}


def test_flatcar_3227_to_3602_etc_becomes_an_overlay_and_usr_stays_ext2():
    # flatcar/scripts: the /etc overlay (lowerdir /usr/share/flatcar/etc) arrived in 3510 (stable
    # 3602); /usr stayed ext2 with the ro_compat hack until 3794 (see the 3602 spec's citations).
    diff = changes("flatcar-stable-3227-amd64-pristine", "variant-flatcar-stable-3602-amd64-pristine")
    added = diff[("mounts", "/etc", "")]
    assert added[0] is None and added[1]["fstype"] == "overlay"
    assert "/usr/share/flatcar/etc" in added[1]["lower"]
    assert diff[("os", "os", "os_version")] == ("3227.2.3", "3602.2.0")
    assert not any(k[0] == "mounts" and k[1] == "/usr" for k in diff), "the /usr mount did not change"


def test_flatcar_3602_to_4081_usr_moves_from_ext2_to_btrfs():
    diff = changes("variant-flatcar-stable-3602-amd64-pristine", "flatcar-lts-4081-amd64-pristine")
    assert diff[("mounts", "/usr", "fstype")] == ("ext2", "btrfs")
    usr_partitions = {k: v for k, v in diff.items() if k[0] == "partitions" and k[2] == "filesystem"}
    assert ("ext2", "btrfs") in usr_partitions.values(), usr_partitions


def test_flatcar_4593_to_4628_etc_overlay_becomes_a_confext():
    diff = changes("flatcar-stable-4593-amd64-pristine", "history-flatcar-alpha-4628-amd64-pristine")
    source = diff[("mounts", "/etc", "source")]
    assert source[0] == "overlay" and source[1].endswith(".raw") and "/usr/lib/confexts/" in source[1]
    assert diff[("mounts", "/etc", "work")][1] is None
    assert ("mounts", "/usr", "fstype") not in diff


def test_bottlerocket_root_moves_from_ext4_to_erofs():
    diff = changes("bottlerocket-aws-k8s-1.31-x86_64-pristine", "history-bottlerocket-aws-k8s-1.33-x86_64-pristine")
    assert diff[("mounts", "/", "fstype")] == ("ext4", "erofs")
    assert diff[("os", "os", "os_version")] == ("1.26.1", "1.39.0")
    assert not any(k[0] == "integrity" for k in diff), "dm-verity over the root is unchanged"


def test_talos_grub_to_systemd_boot():
    diff = changes("talos-v1.9.5-amd64-metal", "talos-v1.13.0-amd64-metal")
    assert diff[("update", "update", "bootloader")] == ("grub", "dual-boot")
    uki_slots = [v[1] for k, v in diff.items() if k[0] == "update" and k[1].startswith("slot Talos-") and k[2] == ""]
    assert uki_slots and uki_slots[0]["partitions"] == "1"
    # Surface: the UKI's initrd carries system extensions, and module signing is now observed on the
    # UKI's command line rather than inferred.
    assert any(k[0] == "surface" and k[1].startswith("sysext ") and v[0] is None for k, v in diff.items())
    assert "sig_enforce" in diff[("surface", "kernel_modules 3 modules", "detail")][1]
    before, after = diff[("surface", "executables on PATH", "count")]
    assert before != after


def test_bottlerocket_1_0_to_1_26_partition_plan_changes():
    diff = changes("variant-bottlerocket-aws-k8s-1.17-x86_64-1.0-pristine", "bottlerocket-aws-k8s-1.31-x86_64-pristine")
    assert diff[("partitions", "partition 7", "label")] == ("BOTTLEROCKET-ROOT-B", "EFI-BACKUP")
    added = diff[("partitions", "partition 12", "")]
    assert added[0] is None and added[1]["label"] == "BOTTLEROCKET-PRIVATE"
    assert diff[("mounts", "/local", "fstype")] == ("ext4", "xfs")
    assert diff[("os", "os", "os_version")] == ("1.0.0", "1.26.1")


def test_a_report_against_itself_has_nothing_to_report():
    report = report_of("talos-v1.9.5-amd64-metal")
    result = diff_reports(report, json.loads(json.dumps(report)))
    assert result.changes == []
    assert "no differences" in render_table(result)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "immutools", "diff", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_exit_codes_and_json(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report_of("flatcar-stable-4593-amd64-pristine")))
    b.write_text(json.dumps(report_of("history-flatcar-alpha-4628-amd64-pristine")))
    same = _cli(a, a)
    assert same.returncode == 0, same.stderr
    assert "no differences" in same.stdout
    differ = _cli(a, b, "--format", "json")
    assert differ.returncode == 1, differ.stderr
    doc = json.loads(differ.stdout)
    assert doc["equal"] is False and doc["counts"]["mounts"] >= 1
    assert {"section": "mounts", "item": "/etc", "field": "source"}.items() <= next(
        d for d in doc["differences"] if d["item"] == "/etc" and d["field"] == "source").items()
    table = _cli(a, b)
    assert table.returncode == 1 and "/usr/lib/confexts/00-flatcar-default.raw" in table.stdout
    missing = _cli(a, tmp_path / "nope.json")
    assert missing.returncode not in (0, 1) and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", ["variant-flatcar-stable-3602-amd64-pristine"])
def test_scanning_an_image_directly_equals_its_saved_report(tmp_path, spec):
    # diff A B with A an image and B its report: the scan is the same, so nothing to report.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report_of(spec)))
    proc = _cli(build_replica(spec), saved)
    assert proc.returncode == 0, proc.stdout + proc.stderr
