"""`immutools verify` against `veritysetup verify` on a Flatcar replica: intact, one flipped data
block, one flipped hash block. Both tools must agree; ours also names the bad block."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from builders import run, sfdisk_json
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


# ---- a patched dm-verity superblock (the superblock against the boot chain) -------------------------
# Superblock fields (cryptsetup lib/verity/verity.c struct verity_sb): version u32 @8, hash_type u32
# @12, algorithm char[32] @32, data_block_size u32 @64, hash_block_size u32 @68, data_blocks u64 @72,
# salt_size u16 @80, salt @88.
SB_PATCHES = {
    "version": (8, struct.pack("<I", 2)),
    "hash type": (12, struct.pack("<I", 0)),
    "algorithm": (32, b"sha1".ljust(32, b"\0")),
    "data block size": (64, struct.pack("<I", 512)),
    "hash block size": (68, struct.pack("<I", 1024)),
    "data blocks": (72, None),                 # one fewer than the real count (filled in per image)
    "salt": (88, None),                        # first salt byte flipped
    "salt size": (80, struct.pack("<H", 16)),
}


def _patch_superblock(image, sb_offset: int, field: str) -> None:
    offset, value = SB_PATCHES[field]
    with open(image, "r+b") as f:
        if field == "data blocks":
            f.seek(sb_offset + 72)
            value = struct.pack("<Q", struct.unpack("<Q", f.read(8))[0] - 1)
        elif field == "salt":
            f.seek(sb_offset + 88)
            value = bytes([f.read(1)[0] ^ 0xFF])
        f.seek(sb_offset + offset)
        f.write(value)


def _partition(image, number: int) -> tuple[int, int]:
    part = next(p for p in sfdisk_json(image)["partitiontable"]["partitions"] if p["node"].endswith(str(number)))
    return part["start"] * 512, part["size"] * 512


def _extract(image, start: int, size: int, out) -> None:
    run(["dd", f"if={image}", f"of={out}", "bs=1M", f"skip={start}", f"count={size}", "iflag=skip_bytes,count_bytes",
         "conv=sparse", "status=none"])


@pytest.mark.parametrize("field", sorted(SB_PATCHES))
def test_superblock_sourced_patch_fails(copy, tmp_path, field):
    """Flatcar opens /usr with `veritysetup open --hash-offset` (the superblock gives every parameter
    but the root hash): a patched superblock changes what is hashed, and verify fails like
    `veritysetup verify` does."""
    root = replica_manifest(SPEC)["expect"]["integrity"]["root_hash"]
    _patch_superblock(copy, USR_A_START + HASH_OFFSET, field)
    rc, result = immutools_verify(copy)
    assert rc == 6 and result["status"] == "failed", result
    [row] = result["targets"]
    assert row["status"] in ("mismatch", "error"), row
    if row["slot"] is None:
        # The collector could not even read the superblock (e.g. version 2): the root hash the
        # boot chain pins is checked by no target, which is a failure, not "nothing to verify".
        assert row["expected_root"] == root and "superblock" in row["detail"]
    else:
        assert row["params_source"] == "superblock"
    assert not veritysetup_verify(copy, tmp_path, root)


BR_SPEC = "bottlerocket-aws-k8s-1.31-x86_64-pristine"
BR_ROOT_A, BR_HASH_A = 4, 5


@pytest.fixture(scope="module")
def br_root_a(tmp_path_factory):
    image = build_replica(BR_SPEC)
    out = tmp_path_factory.mktemp("br") / "root-a.img"
    _extract(image, *_partition(image, BR_ROOT_A), out)
    return out


def _veritysetup_table_verify(data, hashdev, params: dict, root: str, superblock: bool) -> bool:
    """`veritysetup verify` with the table's parameters (--no-superblock: what the kernel maps), or
    with the superblock found before the tree (what `veritysetup format` wrote)."""
    if superblock:
        args = [f"--hash-offset={params['hash_offset'] - params['hash_block_size']}"]
    else:
        args = ["--no-superblock", f"--hash-offset={params['hash_offset']}", f"--hash={params['algorithm']}",
                f"--data-block-size={params['data_block_size']}", f"--hash-block-size={params['hash_block_size']}",
                f"--data-blocks={params['data_blocks']}", f"--salt={params['salt'] or '-'}",
                f"--format={params['version']}"]
    proc = subprocess.run(["veritysetup", "verify", *args, str(data), str(hashdev), root], capture_output=True)
    return proc.returncode == 0


@pytest.mark.parametrize("field", sorted(SB_PATCHES))
def test_table_sourced_superblock_contradiction_fails(br_root_a, tmp_path, field):
    """Bottlerocket gives the kernel the whole dm table in grub.cfg; the kernel never reads the HASH
    superblock. verify checks the data with the table (and they still match: `veritysetup verify
    --no-superblock` with the table agrees), but a superblock that contradicts the table is a failure
    (`veritysetup verify` through the superblock fails too): status `inconsistent`, exit 6."""
    copy = tmp_path / "br.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(BR_SPEC)), str(copy)], check=True)
    hash_start, hash_size = _partition(copy, BR_HASH_A)
    _patch_superblock(copy, hash_start, field)
    rc, result = immutools_verify(copy)
    assert rc == 6 and result["status"] == "failed", result
    [row] = result["targets"]
    assert row["params_source"] == "table" and row["status"] == "inconsistent", row
    assert row["computed_root"] == row["expected_root"]
    assert row["superblock"]["state"] in ("disagrees", "unreadable") and row["superblock"]["contradictions"]
    if row["superblock"]["state"] == "disagrees":
        assert any(c.startswith(field) or (field == "salt size" and c.startswith("salt"))
                   for c in row["superblock"]["contradictions"]), row["superblock"]
    # The reference: the table verifies, the superblock path does not.
    hashdev = tmp_path / "hash-a.img"
    _extract(copy, hash_start, hash_size, hashdev)
    scan = json.loads(subprocess.run([sys.executable, "-m", "immutools", "scan", str(copy), "--format", "json"],
                                     capture_output=True, check=True).stdout)
    [target] = [t for t in scan["integrity"]["targets"] if t["slot"] == "A"]
    params = target["params"]
    assert _veritysetup_table_verify(br_root_a, hashdev, params, row["expected_root"], superblock=False)
    assert not _veritysetup_table_verify(br_root_a, hashdev, params, row["expected_root"], superblock=True)


def test_table_sourced_intact_superblock_agrees(br_root_a, tmp_path):
    rc, result = immutools_verify(build_replica(BR_SPEC))
    assert rc == 0 and result["status"] == "verified"
    [row] = result["targets"]
    assert row["params_source"] == "table" and row["superblock"] == {"state": "agrees", "offset": 0, "contradictions": []}


def test_table_sourced_missing_superblock_is_accepted(tmp_path):
    """The kernel does not need the superblock: a hash device without one still verifies (the
    table alone decides), and the row says the superblock is absent."""
    copy = tmp_path / "br.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(BR_SPEC)), str(copy)], check=True)
    hash_start, _ = _partition(copy, BR_HASH_A)
    with open(copy, "r+b") as f:
        f.seek(hash_start)
        f.write(bytes(512))
    rc, result = immutools_verify(copy)
    assert rc == 0 and result["status"] == "verified", result
    assert result["targets"][0]["superblock"]["state"] == "absent"


COS_SPEC = "cos-113-amd64-updated"


def test_cos_is_checked_through_its_table(tmp_path):
    copy = tmp_path / "cos.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(COS_SPEC)), str(copy)], check=True)
    rc, result = immutools_verify(copy)
    assert rc == 0
    assert all(row["params_source"] == "table" for row in result["targets"]), result["targets"]
