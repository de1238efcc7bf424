"""`immutools verify` against `veritysetup verify` on a Flatcar replica: intact, one flipped data
block, one flipped hash block. Both tools must agree; ours also names the bad block."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builders import run
from replicas import build_replica, replica_manifest

SPEC = "flatcar-stable-4593-amd64-pristine"
USR_A_START = 2105344 * 512          # flatcar/scripts build_library/disk_layout.json
HASH_OFFSET = 1065345024             # flatcar/scripts build_library/disk_util Verity
BLOCK = 4096


def immutools_verify(path):
    proc = subprocess.run([sys.executable, "-m", "immutools", "verify", str(path), "--format", "json"],
                          capture_output=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout)


def veritysetup_verify(image, tmp_path, root_hash) -> bool:
    part = tmp_path / "usr-a.img"
    run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={USR_A_START}", "iflag=skip_bytes",
         f"count={1 << 30}", "iflag=count_bytes,skip_bytes", "conv=sparse", "status=none"])
    proc = subprocess.run(["veritysetup", "verify", f"--hash-offset={HASH_OFFSET}", str(part), str(part), root_hash],
                          capture_output=True)
    part.unlink()
    return proc.returncode == 0


def flip(image, offset):
    with open(image, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "copy.bin"
    subprocess.run(["cp", "--sparse=always", str(build_replica(SPEC)), str(dst)], check=True)
    return dst


def test_intact_agrees(copy, tmp_path):
    root = replica_manifest(SPEC)["expect"]["integrity"]["root_hash"]
    rc, result = immutools_verify(copy)
    assert rc == 0 and result["ok"]
    [row] = result["targets"]
    assert row["slot"] == "A" and row["status"] == "ok" and row["computed_root"] == root
    assert veritysetup_verify(copy, tmp_path, root)


def test_flipped_data_block(copy, tmp_path):
    root = replica_manifest(SPEC)["expect"]["integrity"]["root_hash"]
    bad = 16                                              # the btrfs superblock's block (64 KiB)
    flip(copy, USR_A_START + bad * BLOCK + 100)
    rc, result = immutools_verify(copy)
    assert rc == 6 and not result["ok"]
    [row] = result["targets"]
    assert row["status"] == "mismatch" and row["bad_data_blocks"] == [bad] and row["bad_data_count"] == 1
    assert not veritysetup_verify(copy, tmp_path, root)


def test_flipped_hash_block(copy, tmp_path):
    root = replica_manifest(SPEC)["expect"]["integrity"]["root_hash"]
    # The superblock takes the first 4 KiB; the tree's top block follows, then level 1, then level 0.
    target = HASH_OFFSET + BLOCK + 20 * BLOCK + 8
    flip(copy, USR_A_START + target)
    rc, result = immutools_verify(copy)
    assert rc == 6
    [row] = result["targets"]
    assert row["status"] == "mismatch" and row["bad_hash_blocks"] and not row["bad_data_blocks"]
    assert not veritysetup_verify(copy, tmp_path, root)
