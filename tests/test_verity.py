"""dm-verity: our superblock parsing, tree layout, root hash and verification against veritysetup."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from builders import cached, have, run

from immutools.errors import CorruptDataError, UnsupportedFeatureError
from immutools.fs.verity import (
    VerityParams,
    hash_area_end,
    parse_dm_mod_create,
    parse_dm_verity_table,
    read_superblock,
    tree_layout,
    verify,
)
from immutools.image.source import BytesSource, FileSource

pytestmark = pytest.mark.skipif(not have("veritysetup"), reason="needs veritysetup (cryptsetup-bin)")

VERITY_RECIPE_VERSION = 1
SALT = "5eed" * 8

# name -> how the image is made. "same_file": data then tree in one file (Flatcar's --hash-offset).
CASES = {
    "separate-sb": dict(data_kib=4096 + 60, args=[]),                                 # random salt, superblock
    "no-sb-salt": dict(data_kib=3000, args=["--no-superblock", f"--salt={SALT}", "--data-block-size=1024"]),
    "no-salt": dict(data_kib=2048, args=["--salt=-"]),
    "same-file": dict(data_kib=4096, same_file=True, args=[f"--salt={SALT}"]),
    "same-file-no-sb": dict(data_kib=1024, same_file=True, args=["--no-superblock", f"--salt={SALT}"]),
    "small-blocks": dict(data_kib=1500, args=["--data-block-size=512", "--hash-block-size=512", f"--salt={SALT}"]),
    "chromeos-v0": dict(data_kib=2000, args=["--format=0", "--no-superblock", f"--salt={SALT}", "--hash-block-size=1024",
                                             "--data-block-size=1024"]),
    "sha1-slots": dict(data_kib=1024, args=["--hash=sha1", f"--salt={SALT}"]),
    "sha512": dict(data_kib=1024, args=["--hash=sha512", "--hash-block-size=1024", "--data-block-size=1024"]),
    "one-block": dict(data_kib=4, args=[f"--salt={SALT}"]),
}


def _pattern(kib: int) -> bytes:
    """Deterministic, non-repeating data (every block differs, so a swapped block is visible)."""
    out = bytearray()
    seed = hashlib.sha256(b"verity-data").digest()
    while len(out) < kib * 1024:
        seed = hashlib.sha256(seed).digest()
        out += seed * 16
    return bytes(out[: kib * 1024])


def _opt(args: list[str], name: str, default: str | None = None) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def build_case(out: Path, case: dict) -> None:
    out.mkdir()
    data = _pattern(case["data_kib"])
    data_bs = int(_opt(case["args"], "data-block-size", "4096"))
    cmd = ["veritysetup", "format", *case["args"]]
    if case.get("same_file"):
        # Flatcar: the tree is appended in the same partition right after the filesystem.
        (out / "data.img").write_bytes(data + bytes(1 << 20))
        cmd += [f"--hash-offset={len(data)}", f"--data-blocks={len(data) // data_bs}", out / "data.img", out / "data.img"]
    else:
        (out / "data.img").write_bytes(data)
        (out / "hash.img").write_bytes(b"")
        cmd += [out / "data.img", out / "hash.img"]
    (out / "format.txt").write_bytes(run(cmd).stdout)


def case_fixture(name: str) -> tuple[Path, dict]:
    case = CASES[name]
    path = cached(f"verity-{name}", {"v": VERITY_RECIPE_VERSION, **case}, lambda p: build_case(p, case), suffix="")
    return path, case


def _kv(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def _paths(fx: Path, case: dict) -> tuple[Path, Path]:
    return fx / "data.img", fx / "data.img" if case.get("same_file") else fx / "hash.img"


def params_for(fx: Path, case: dict) -> VerityParams:
    """Our parameters: from the superblock when there is one, else from what was passed to format."""
    data_path, hash_path = _paths(fx, case)
    fmt = _kv((fx / "format.txt").read_text())
    hash_offset = data_path.stat().st_size - (1 << 20) if case.get("same_file") else 0
    if "--no-superblock" in case["args"]:
        assert read_superblock(FileSource(hash_path), hash_offset) is None
        salt = _opt(case["args"], "salt", "")
        params = VerityParams(
            version=int(_opt(case["args"], "format", "1")),
            algorithm=_opt(case["args"], "hash", "sha256"),
            data_block_size=int(_opt(case["args"], "data-block-size", "4096")),
            hash_block_size=int(_opt(case["args"], "hash-block-size", "4096")),
            data_blocks=int(fmt["Data blocks"]),
            salt="" if salt == "-" else salt,
            hash_offset=hash_offset,
        )
    else:
        params = read_superblock(FileSource(hash_path), hash_offset)
        assert params is not None and params.superblock
    params.root_hash = fmt["Root hash"]
    return params


def veritysetup_verify(data: Path, hashdev: Path, params: VerityParams, root: str) -> bool:
    cmd = ["veritysetup", "verify", data, hashdev, root]
    if params.hash_offset:
        cmd.append(f"--hash-offset={params.hash_offset}")
    if not params.superblock:
        cmd += ["--no-superblock", f"--format={params.version}", f"--hash={params.algorithm}",
                f"--data-block-size={params.data_block_size}", f"--hash-block-size={params.hash_block_size}",
                f"--data-blocks={params.data_blocks}", f"--salt={params.salt or '-'}"]
    import subprocess

    return subprocess.run(list(map(str, cmd)), capture_output=True).returncode == 0


@pytest.mark.parametrize("name", list(CASES))
def test_params_layout_and_root_match_veritysetup(name):
    fx, case = case_fixture(name)
    data_path, hash_path = _paths(fx, case)
    params = params_for(fx, case)
    fmt = _kv((fx / "format.txt").read_text())
    # Against `veritysetup format`'s report.
    assert params.version == int(fmt["Hash type"])
    assert params.data_blocks == int(fmt["Data blocks"])
    assert params.data_block_size == int(fmt["Data block size"])
    assert params.hash_block_size == int(fmt["Hash block size"])
    assert params.algorithm == fmt["Hash algorithm"]
    assert (params.salt or "-") == fmt["Salt"]
    layout = tree_layout(params)
    assert sum(lv.blocks for lv in layout) == int(fmt["Hash blocks"])
    if "Hash device size" in fmt:          # (not printed when the tree shares the data file)
        assert hash_area_end(params) == int(fmt["Hash device size"].split()[0])
    else:
        assert hash_area_end(params) <= data_path.stat().st_size
    if params.superblock:
        # Against `veritysetup dump` of the superblock.
        cmd = ["veritysetup", "dump", hash_path]
        if params.hash_offset:
            cmd.append(f"--hash-offset={params.hash_offset}")
        dump = _kv(run(cmd).stdout.decode())
        assert params.uuid == dump["UUID"]
        assert params.salt == dump["Salt"] or (params.salt == "" and dump["Salt"] == "-")
        assert params.data_blocks == int(dump["Data blocks"])
    # Levels are stored top first, each after the previous.
    assert [lv.level for lv in layout] == list(range(len(layout) - 1, -1, -1))
    assert layout == [] or layout[0].blocks == 1
    result = verify(FileSource(data_path), FileSource(hash_path), params)
    assert result.computed_root == fmt["Root hash"]
    assert result.ok and result.root_matches and not result.bad_data_blocks and not result.bad_hash_blocks
    assert veritysetup_verify(data_path, hash_path, params, fmt["Root hash"])


def _corrupt_copy(fx: Path, case: dict, tmp: Path) -> tuple[Path, Path]:
    data_path, hash_path = _paths(fx, case)
    shutil.copy(data_path, tmp / "data.img")
    if case.get("same_file"):
        return tmp / "data.img", tmp / "data.img"
    shutil.copy(hash_path, tmp / "hash.img")
    return tmp / "data.img", tmp / "hash.img"


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("name", ["separate-sb", "same-file", "small-blocks", "chromeos-v0", "sha1-slots"])
def test_flipped_data_block(name, tmp_path):
    fx, case = case_fixture(name)
    params = params_for(fx, case)
    data, hashdev = _corrupt_copy(fx, case, tmp_path)
    victim = params.data_blocks - 3
    _flip(data, victim * params.data_block_size + 77)
    assert not veritysetup_verify(data, hashdev, params, params.root_hash)
    result = verify(FileSource(data), FileSource(hashdev), params)
    assert not result.ok and result.root_matches is False
    assert result.bad_data_blocks == [victim] and result.bad_data_count == 1
    assert result.bad_hash_blocks == []


@pytest.mark.parametrize("name", ["separate-sb", "same-file-no-sb", "small-blocks", "chromeos-v0"])
def test_flipped_hash_block(name, tmp_path):
    fx, case = case_fixture(name)
    params = params_for(fx, case)
    data, hashdev = _corrupt_copy(fx, case, tmp_path)
    layout = tree_layout(params)
    level0 = layout[-1]
    victim = level0.offset // params.hash_block_size + 1          # second block of the lowest level
    _flip(hashdev, victim * params.hash_block_size + 5)
    assert not veritysetup_verify(data, hashdev, params, params.root_hash)
    result = verify(FileSource(data), FileSource(hashdev), params)
    assert not result.ok
    assert result.bad_hash_blocks == [victim]
    assert result.bad_data_blocks == []                          # the data is fine: blame the hash block
    assert result.computed_root == params.root_hash              # recomputed from the intact data


def test_flipped_top_block_and_spare_area(tmp_path):
    fx, case = case_fixture("small-blocks")
    params = params_for(fx, case)
    layout = tree_layout(params)
    data, hashdev = _corrupt_copy(fx, case, tmp_path)
    top = layout[0].offset // params.hash_block_size
    _flip(hashdev, top * params.hash_block_size)
    assert not veritysetup_verify(data, hashdev, params, params.root_hash)
    result = verify(FileSource(data), FileSource(hashdev), params)
    assert not result.ok and result.bad_hash_blocks == [top] and result.bad_data_blocks == []
    # Non-zero bytes in the unused tail of the last lowest-level block: cryptsetup rejects that too.
    data, hashdev = _corrupt_copy(fx, case, tmp_path)
    level0 = layout[-1]
    last = level0.offset // params.hash_block_size + level0.blocks - 1
    _flip(hashdev, (last + 1) * params.hash_block_size - 1)
    assert not veritysetup_verify(data, hashdev, params, params.root_hash)
    result = verify(FileSource(data), FileSource(hashdev), params)
    assert not result.ok and last in result.bad_hash_blocks and result.bad_data_blocks == []


def test_wrong_root_hash_and_unknown_root():
    fx, case = case_fixture("separate-sb")
    data_path, hash_path = _paths(fx, case)
    params = params_for(fx, case)
    good = params.root_hash
    params.root_hash = "00" * 32
    assert not veritysetup_verify(data_path, hash_path, params, params.root_hash)
    result = verify(FileSource(data_path), FileSource(hash_path), params)
    assert not result.ok and result.root_matches is False and result.computed_root == good
    params.root_hash = None                  # a superblock alone: check the tree's consistency
    result = verify(FileSource(data_path), FileSource(hash_path), params)
    assert result.ok and result.root_matches is None and result.computed_root == good


def test_bottlerocket_dm_mod_create_table():
    """The table Bottlerocket's grub.cfg passes (bottlerocket-os/twoliter rpm2img), for a real image."""
    fx, case = case_fixture("separate-sb")
    data_path, hash_path = _paths(fx, case)
    sb = params_for(fx, case)
    table = (f"root,,,ro,0 {sb.data_blocks * 8} verity 1 PARTUUID=$boot_uuid/PARTNROFF=1 "
             f"PARTUUID=$boot_uuid/PARTNROFF=2 4096 4096 {sb.data_blocks} 1 sha256 {sb.root_hash} {sb.salt} "
             f"2 restart_on_corruption ignore_zero_blocks")
    params = parse_dm_verity_table(f'dm-mod.create="{table}"')
    assert params.table["name"] == "root" and params.table["flags"] == "ro" and params.table["dm_uuid"] is None
    assert params.table["options"] == ["restart_on_corruption", "ignore_zero_blocks"]
    assert params.table["hash_device"].endswith("PARTNROFF=2") and params.table["sectors"] == sb.data_blocks * 8
    assert params.hash_start_block == 1 == sb.hash_start_block and not params.superblock
    assert (params.salt, params.root_hash, params.data_blocks) == (sb.salt, sb.root_hash, sb.data_blocks)
    assert tree_layout(params) == tree_layout(sb)
    assert verify(FileSource(data_path), FileSource(hash_path), params).ok
    # The same with the older inline form and a bare table.
    assert parse_dm_verity_table(table.split(",", 4)[4]).root_hash == sb.root_hash
    assert parse_dm_mod_create(f"{table};other,,,ro,0 8 linear /dev/sda 0")[1]["name"] == "other"


def test_chromeos_style_table_and_salt_dash():
    params = parse_dm_verity_table("0 4096 verity 0 /dev/sda3 /dev/sda3 4096 4096 512 513 sha1 "
                                   + "ab" * 20 + " -")
    assert params.version == 0 and params.salt == "" and params.hash_offset == 513 * 4096
    assert params.table["options"] == []


@pytest.mark.parametrize("bad, match", [
    ("0 8 linear /dev/sda 0", "no dm-verity target"),
    ("0 8 verity 1 a b 4096 4096 10", "at least 13"),
    ("0 8 verity 1 a b 4096 4096 ten 1 sha256 " + "00" * 32 + " -", "non-numeric"),
    ("0 8 verity 1 a b 4000 4096 10 1 sha256 " + "00" * 32 + " -", "power of two"),
    ("0 8 verity 1 a b 4096 4096 10 1 sha256 " + "00" * 31 + " -", "root digest has 31 bytes"),
    ("0 8 verity 1 a b 4096 4096 10 1 sha256 " + "00" * 32 + " - 3 restart_on_corruption", "3 optional"),
    ("0 8 verity 1 a b 4096 4096 10 1 nosuchhash " + "00" * 32 + " -", "not available"),
    ("0 8 verity 7 a b 4096 4096 10 1 sha256 " + "00" * 32 + " -", "hash type 7"),
    ("root,,,ro", "fewer than 5"),
])
def test_bad_tables(bad, match):
    with pytest.raises((CorruptDataError, UnsupportedFeatureError), match=match):
        parse_dm_verity_table(bad)


def test_flatcar_layout_from_fact_sheet():
    """flatcar/scripts build_library/disk_util Verity: 260094 data blocks, superblock at 1065345024,
    2049 tree blocks, ends at 1 GiB."""
    params = VerityParams(version=1, algorithm="sha256", data_block_size=4096, hash_block_size=4096,
                          data_blocks=260094, hash_offset=1065345024, superblock=True)
    layout = tree_layout(params)
    assert [lv.blocks for lv in layout] == [1, 16, 2032]
    assert layout[0].offset == 1065345024 + 4096
    assert hash_area_end(params) == 1 << 30


def test_hostile_superblocks_and_truncation():
    fx, case = case_fixture("separate-sb")
    data_path, hash_path = _paths(fx, case)
    raw = bytearray(hash_path.read_bytes())
    assert read_superblock(BytesSource(bytes(4096))) is None
    bad = bytearray(raw)
    bad[64:68] = (3000).to_bytes(4, "little")                  # data block size not a power of two
    with pytest.raises(CorruptDataError, match="power of two"):
        read_superblock(BytesSource(bytes(bad)))
    bad = bytearray(raw)
    bad[8:12] = (2).to_bytes(4, "little")                       # superblock version
    with pytest.raises(UnsupportedFeatureError, match="version 2"):
        read_superblock(BytesSource(bytes(bad)))
    bad = bytearray(raw)
    bad[32:64] = b"whirlpool-9000".ljust(32, b"\0")
    with pytest.raises(UnsupportedFeatureError, match="not available"):
        read_superblock(BytesSource(bytes(bad)))
    bad = bytearray(raw)
    bad[72:80] = (1 << 62).to_bytes(8, "little")               # absurd data block count: no huge allocation
    params = read_superblock(BytesSource(bytes(bad)))
    with pytest.raises(CorruptDataError, match="larger than"):
        verify(FileSource(data_path), BytesSource(bytes(bad)), params)
    params = params_for(fx, case)
    with pytest.raises(CorruptDataError, match="beyond"):
        verify(FileSource(data_path), BytesSource(bytes(raw[: len(raw) - 4096])), params)


def test_root_hash_is_not_faked_by_layout_mismatch():
    """Same data, different salt: a different root, so verification must use the salt."""
    fx, case = case_fixture("no-sb-salt")
    data_path, hash_path = _paths(fx, case)
    params = params_for(fx, case)
    params.salt = "00" + params.salt[2:]
    result = verify(FileSource(data_path), FileSource(hash_path), params)
    assert not result.ok and result.computed_root != params.root_hash
    assert result.bad_data_count == params.data_blocks or result.bad_hash_blocks
    assert re.fullmatch(r"[0-9a-f]{64}", result.computed_root)
