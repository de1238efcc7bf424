"""A/B attribute bits and GRUB's gptprio.next rule on images whose bits were set by `cgpt`, the
ChromeOS tool Flatcar's build and update scripts use (flatcar/scripts build_library/disk_util,
flatcar/update_engine flatcar-postinst)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from builders import run

from immutools.image.source import FileSource
from immutools.volumes import read_partition_table
from immutools.volumes.gptprio import gptprio_next

pytestmark = pytest.mark.skipif(shutil.which("cgpt") is None, reason="cgpt (Debian package cgpt) not installed")

KERNEL = "fe3a2a5d-4f32-41a7-b725-accc3285a309"   # ChromeOS kernel: the type `cgpt prioritize` ranks
USR = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6"      # Flatcar USR (flatcar/seismograph cgpt_common.c)


@pytest.fixture
def disk(tmp_path):
    img = tmp_path / "ab.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    run(["sgdisk", f"-n1:2048:+8M", f"-t1:{KERNEL}", "-c1:KERN-A",
         "-n2:0:+8M", f"-t2:{KERNEL}", "-c2:KERN-B",
         "-n3:0:+8M", f"-t3:{USR}", "-c3:USR-A", "-n4:0:+8M", f"-t4:{USR}", "-c4:USR-B", img])
    return img


def cgpt_bits(img, n):
    out = {}
    for flag, key in (("-P", "priority"), ("-T", "tries"), ("-S", "successful")):
        out[key] = int(subprocess.run(["cgpt", "show", "-i", str(n), flag, str(img)], capture_output=True, check=True, text=True).stdout)
    out["successful"] = bool(out["successful"])
    return out


def table(img):
    with FileSource(img) as src:
        return read_partition_table(src)


def ours(img, n):
    part = next(p for p in table(img).partitions if p.number == n)
    return {k: part.attributes[k] for k in ("priority", "tries", "successful")}


def pick(img, type_guid):
    choice = gptprio_next(table(img).partitions, type_guid)
    return choice.partition.number if choice.partition else None


def test_update_flow_matches_cgpt(disk):
    # Pristine: A good (flatcar disk_util: cgpt add -S1 -P1), B empty.
    run(["cgpt", "add", "-i", "1", "-S1", "-T0", "-P1", disk])
    for n in (1, 2):
        assert ours(disk, n) == cgpt_bits(disk, n)
    assert pick(disk, KERNEL) == 1
    # flatcar-postinst on the new slot: cgpt add -S0 -T1, cgpt prioritize.
    run(["cgpt", "add", "-i", "2", "-S0", "-T1", disk])
    run(["cgpt", "prioritize", "-i", "2", disk])
    for n in (1, 2):
        assert ours(disk, n) == cgpt_bits(disk, n)
    assert ours(disk, 2) == {"priority": 2, "tries": 1, "successful": False}
    choice = gptprio_next(table(disk).partitions, KERNEL)
    assert choice.partition.number == 2 and choice.will_decrement_tries
    # GRUB decremented tries and the boot failed (never marked good): B is skipped, A boots.
    run(["cgpt", "add", "-i", "2", "-T0", disk])
    assert ours(disk, 2) == cgpt_bits(disk, 2)
    assert pick(disk, KERNEL) == 1
    # A good boot of B instead (flatcar-setgoodroot: cgpt add -S1 -T0; prioritize).
    run(["cgpt", "add", "-i", "2", "-S1", "-T0", disk])
    run(["cgpt", "prioritize", "-i", "2", disk])
    assert ours(disk, 2) == cgpt_bits(disk, 2) == {"priority": 2, "tries": 0, "successful": True}
    assert pick(disk, KERNEL) == 2


def test_rule_edges_on_real_tables(disk):
    # Equal priority: the first entry in table order wins (strict '>' in GRUB's loop).
    run(["cgpt", "add", "-i", "3", "-S1", "-T0", "-P3", disk])
    run(["cgpt", "add", "-i", "4", "-S1", "-T0", "-P3", disk])
    assert pick(disk, USR) == 3
    # Priority 0 never boots, even when successful.
    run(["cgpt", "add", "-i", "3", "-P0", disk])
    assert pick(disk, USR) == 4
    # Neither tries nor successful: not bootable; nothing left.
    run(["cgpt", "add", "-i", "4", "-S0", "-T0", disk])
    assert pick(disk, USR) is None
    # Types are kept apart: kernel partitions are not USR candidates.
    run(["cgpt", "add", "-i", "1", "-S1", "-P9", disk])
    assert pick(disk, USR) is None
    for n in (1, 2, 3, 4):
        assert ours(disk, n) == cgpt_bits(disk, n)
