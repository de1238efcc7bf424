"""Bottlerocket end to end: every Bottlerocket replica, scanned, reports what its spec says it holds,
and what the reference tools read from the same image.

Expected answers come from each replica's manifest (the spec's ``expect:`` section with values
computed at build time, e.g. verity root hashes), and from the tools: ``sfdisk --json`` (partition
table and attribute bits), ``debugfs``/``fsck.erofs --extract`` (os-release and grub.cfg as the
filesystem tools read them), ``veritysetup dump``/``verify`` (the HASH superblock and the tree).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest

from builders import have, run, sfdisk_json
from replicas import build_replica, replica_manifest
from expect import subset

from immutools.errors import CorruptDataError
from immutools.report.model import load_schema
from immutools.scan import scan
from immutools.system.bootconfig import parse_blob, parse_text

TOOLS = ("sgdisk", "sfdisk", "mke2fs", "resize2fs", "dumpe2fs", "debugfs", "mkfs.vfat", "mcopy", "mkfs.erofs",
         "fsck.erofs", "mkfs.xfs", "mksquashfs", "veritysetup", "lz4")
pytestmark = pytest.mark.skipif(not all(have(t) for t in TOOLS),
                                reason=f"needs {', '.join(t for t in TOOLS if not have(t))}")

SCHEMA = load_schema()
OS_SPECS = [
    "bottlerocket-aws-k8s-1.31-x86_64-pristine",
    "bottlerocket-aws-k8s-1.31-x86_64-updated",
    "bottlerocket-aws-k8s-1.33-aarch64-pristine",
    "bottlerocket-aws-k8s-1.31-nvidia-x86_64-pristine",
    "bottlerocket-metal-k8s-1.31-x86_64-booted",
    "bottlerocket-aws-k8s-1.21-aarch64-1.11-updated",
]
DATA_SPECS = ["bottlerocket-aws-k8s-1.31-x86_64-data", "bottlerocket-aws-k8s-1.31-x86_64-data-booted"]
MAIN = OS_SPECS[0]
BOOT_TYPE = "6b636168-7420-6568-2070-6c616e657421"
BLOCK = 4096


def _partition_file(image, part: dict, out, limit: int | None = None):
    """Copy one partition (an sfdisk row), or its first ``limit`` bytes, out of the image for the tools."""
    size = part["size"] * 512 if limit is None else min(limit, part["size"] * 512)
    run(["dd", f"if={image}", f"of={out}", "bs=1M", f"skip={part['start'] * 512}", f"count={size}",
         "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
    return out


def _parts(image) -> dict[int, dict]:
    table = sfdisk_json(image)["partitiontable"]
    return {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}


def _sparse_digest(path) -> str:
    """sha256 over the data extents (offset, length, bytes) and the size: holes read as zeros, so this
    pins the whole content of a sparse replica without reading gigabytes of zeros."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        pos = 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            h.update(f"{start}:{end}".encode())
            f.seek(start)
            remaining = end - start
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                h.update(chunk)
                remaining -= len(chunk)
            pos = end
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _scanned(name: str):
    """(image path, report, manifest) of a replica, scanned once per test session (read-only use)."""
    path = build_replica(name)
    return path, scan(str(path), progress=False), replica_manifest(name)


@pytest.fixture(scope="module", params=OS_SPECS + DATA_SPECS)
def scanned(request):
    return (request.param, *_scanned(request.param))


@pytest.fixture(scope="module", params=OS_SPECS)
def os_scanned(request):
    return (request.param, *_scanned(request.param))


def test_scan_leaves_the_input_alone():
    path = build_replica(MAIN)
    before = _sparse_digest(path)
    scan(str(path), progress=False)
    assert _sparse_digest(path) == before


# ---------------------------------------------------------------------------------------------
# The spec's expected facts, the schema, the partition table against sfdisk
# ---------------------------------------------------------------------------------------------
def _beyond_inferred_note(warnings: list[str]) -> list[str]:
    """The warnings other than the one naming the guaranteed facts Bottlerocket sets up in code
    (/etc, a tmpfs systemd mounts): on a healthy OS disk that one is expected, and names /etc."""
    note = [w for w in warnings if w.startswith("completeness: ") and "are inferred from the documented" in w]
    assert len(note) <= 1 and all("mount /etc (" in w for w in note), note
    return [w for w in warnings if w not in note]


def test_matches_spec(scanned):
    name, _path, report, manifest = scanned
    jsonschema.validate(report, SCHEMA)
    expect = dict(manifest["expect"])
    distribution = expect.pop("bottlerocket")
    subset(expect, report)
    subset(distribution, report["distribution"], "distribution")
    assert report["os"]["collector"] == "bottlerocket"
    assert _beyond_inferred_note(report["warnings"]) == []
    assert report["os"]["evidence"], "the identity must say where it came from"
    if report["image"]["provenance"] is not None:
        assert report["image"]["provenance"]["spec"] == name
    else:
        assert name == "bottlerocket-aws-k8s-1.31-x86_64-data"      # no filesystem to carry it


def test_partitions_match_sfdisk(scanned):
    """Numbers, starts, sizes, type and unique GUIDs, names and attribute bits as sfdisk reads them."""
    _name, path, report, _manifest = scanned
    ref = _parts(path)
    rows = {p["number"]: p for p in report["partitions"]}
    assert sorted(rows) == sorted(ref)
    for n, p in ref.items():
        row = rows[n]
        assert row["start"] == p["start"] * 512 and row["size"] == p["size"] * 512
        assert row["type_guid"] == p["type"].lower() and row["uuid"] == p["uuid"].lower()
        assert (row["label"] or "") == p.get("name", "")
        bits = {int(b) for b in re.findall(r"\d+", p.get("attrs", "").replace("GUID:", ""))}
        raw = int(row["attributes"]["raw"], 16)
        assert {b for b in range(64) if raw >> b & 1} == bits, (n, p.get("attrs"))
        assert row["attributes"]["bottlerocket_booted"] == (57 in bits)


# ---------------------------------------------------------------------------------------------
# OS disks: identity, active set, verity, grub.cfg — against the filesystem and verity tools
# ---------------------------------------------------------------------------------------------
def _read_from_root(path, tmp_path, part, fstype, inner, size) -> str:
    img = _partition_file(path, part, tmp_path / "root.img", size)
    if fstype == "ext4":
        text = run(["debugfs", "-R", f"cat {inner}", str(img)]).stdout.decode()
    else:
        out = tmp_path / "root-tree"
        run(["fsck.erofs", f"--extract={out}", "--no-preserve", str(img)])
        text = (out / inner.lstrip("/")).read_text()
    img.unlink()
    return text


def _active_sfdisk(ref: dict[int, dict]) -> int | None:
    """GRUB's gptprio.next rule (bottlerocket-core-kit packages/grub gptprio patches) applied to the
    bits as sfdisk prints them."""
    best, best_prio = None, 0
    for n in sorted(ref):
        p = ref[n]
        if p["type"].lower() != BOOT_TYPE:
            continue
        bits = {int(b) for b in re.findall(r"\d+", p.get("attrs", "").replace("GUID:", ""))}
        prio = sum(1 << i for i in range(4) if 48 + i in bits)
        tries = sum(1 << i for i in range(4) if 52 + i in bits)
        if (tries > 0 or 56 in bits) and prio > best_prio:
            best, best_prio = n, prio
    return best


def test_identity_and_active_set_against_tools(os_scanned, tmp_path):
    name, path, report, manifest = os_scanned
    ref = _parts(path)
    boot = _active_sfdisk(ref)
    slot = report["update"]["active_slot"]
    assert [s for s in report["update"]["slots"] if s["active"]][0]["partitions"][0] == boot
    root = ref[boot + 1]
    triple = report["distribution"]["arch_from"]
    assert triple == f"{report['os']['arch']}-bottlerocket-linux-gnu"
    fstype = report["distribution"]["root_fstype"]
    sizes = {s: v["data_blocks"] * BLOCK for s, v in report["distribution"]["verity"].items()}
    text = _read_from_root(path, tmp_path, root, fstype, f"/{triple}/sys-root/usr/lib/os-release", sizes[slot])
    osr = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert report["os"]["version"] == osr["VERSION_ID"]
    assert report["os"]["variant"] == osr["VARIANT_ID"]
    assert report["os"]["build_id"] == osr["BUILD_ID"]
    assert report["os"]["evidence"][-1]["source"].endswith(f"/{triple}")
    # twoliter rpm2img shrinks ROOT (resize2fs -M): the verity data area is the filesystem, not the partition
    dist = report["distribution"]
    assert dist["root_fs_size"] == sizes[slot] < dist["root_partition_size"] == root["size"] * 512
    if fstype == "ext4":
        img = _partition_file(path, root, tmp_path / "fs.img", sizes[slot])
        head = run(["dumpe2fs", "-h", str(img)]).stdout.decode()
        assert int(re.search(r"^Block count:\s*(\d+)", head, re.M).group(1)) * BLOCK == sizes[slot]
        assert "has_journal" not in re.search(r"^Filesystem features:(.*)$", head, re.M).group(1)
    # per-slot versions: the inactive set's os-release too, when it has one
    for s in report["update"]["slots"]:
        if s["version"] is not None and not s["active"]:
            other = _read_from_root(path, tmp_path, ref[s["partitions"][1]], fstype,
                                    f"/{triple}/sys-root/usr/lib/os-release", sizes[s["name"]])
            assert f"VERSION_ID={s['version']}\n" in other
    assert slot in ("A", "B") and report["distribution"]["active_bank"] == slot


def test_verity_against_grub_cfg_and_veritysetup(os_scanned, tmp_path):
    _name, path, report, manifest = os_scanned
    ref = _parts(path)
    for slot, row in report["distribution"]["verity"].items():
        bank = report["distribution"]["banks"][slot]
        # the table as debugfs reads grub.cfg from the set's BOOT
        boot = _partition_file(path, ref[bank["boot"]], tmp_path / "boot.img")
        cfg = run(["debugfs", "-R", "cat /grub/grub.cfg", str(boot)]).stdout.decode()
        boot.unlink()
        m = re.search(r"verity 1 PARTUUID=\$boot_uuid/PARTNROFF=1 PARTUUID=\$boot_uuid/PARTNROFF=2 "
                      r"(\d+) (\d+) (\d+) (\d+) sha256 ([0-9a-f]{64}) ([0-9a-f]{64})", cfg)
        assert m, cfg
        assert [int(m.group(3)), int(m.group(4)), m.group(5), m.group(6)] == \
            [row["data_blocks"], row["hash_start_block"], row["root_hash"], row["salt"]]
        assert row["hash_partition"] == bank["hash"] and row["data_partition"] == bank["root"]
        # the HASH superblock as veritysetup dumps it
        hash_img = _partition_file(path, ref[bank["hash"]], tmp_path / "hash.img")
        dump = run(["veritysetup", "dump", str(hash_img)]).stdout.decode()
        fields = dict(re.findall(r"^([A-Za-z ]+):\s*(\S+)", dump, re.M))
        sb = row["superblock"]
        assert int(fields["Data blocks"]) == sb["data_blocks"] and fields["Salt"] == sb["salt"]
        assert fields["UUID"] == sb["uuid"] and fields["Hash algorithm"] == sb["algorithm"]
        assert row["superblock_agrees"] is True
        # and the tree verifies with the table's root hash
        root_img = _partition_file(path, ref[bank["root"]], tmp_path / "root.img", row["data_blocks"] * BLOCK)
        run(["veritysetup", "verify", str(root_img), str(hash_img), row["root_hash"]])
        root_img.unlink()
        hash_img.unlink()
    active = report["update"]["active_slot"]
    assert report["integrity"]["root_hash"] == report["distribution"]["verity"][active]["root_hash"]
    words = report["distribution"]["kernel_cmdline"]
    boot_uuid = ref[report["distribution"]["banks"][active]["boot"]]["uuid"].lower()
    assert f"PARTUUID={boot_uuid}/PARTNROFF=1 PARTUUID={boot_uuid}/PARTNROFF=2" in words
    assert "root=/dev/dm-0" in words and "selinux=1 enforcing=1" in words


# ---------------------------------------------------------------------------------------------
# Mounts, paths, surface, update
# ---------------------------------------------------------------------------------------------
def test_mounts_and_paths(os_scanned):
    _name, _path, report, manifest = os_scanned
    mounts = {m["target"]: m for m in report["mounts"]}
    paths = {p["path"]: p for p in report["paths"]}
    root = mounts["/"]
    assert root["integrity"] == "dm-verity" and root["access"] == "ro" and root["source"] == "/dev/dm-0"
    assert root["fstype"] == manifest["expect"]["bottlerocket"]["root_fstype"]
    for p in ("/", "/usr", "/home", "/root", "/srv", "/boot", "/media"):
        assert paths[p]["state"] == "read-only", (p, paths[p])
    for p in ("/etc", "/tmp", "/run", "/etc/cni", "/root/.aws"):
        assert paths[p]["state"] == "volatile", (p, paths[p])
    for p in ("/var", "/opt", "/mnt", "/local", "/var/lib/bottlerocket", "/lib/modules", "/opt/cni"):
        assert paths[p]["state"] == "persistent", (p, paths[p])
    assert paths["/var"]["chain"] == ["/var", "/local"]                 # bound from the data partition
    assert paths["/lib/modules"]["via"].endswith("/sys-root/usr/lib/modules")
    assert mounts["/local"]["source"] == "/dev/disk/by-partlabel/BOTTLEROCKET-DATA"
    assert mounts["/local"]["fstype"] == manifest["expect"]["bottlerocket"]["data_filesystem"]
    assert mounts["/var/lib/bottlerocket"]["source"] == "/dev/disk/by-partlabel/BOTTLEROCKET-PRIVATE"
    assert mounts["/opt/cni"]["kind"] == "overlay" and mounts["/opt/cni"]["lower"] == ["/usr/libexec/cni"]
    # mount units: observed, with the unit file named; code: observed false, with the source named
    for target in ("/tmp", "/local", "/var", "/opt", "/mnt", "/var/lib/bottlerocket", "/etc/cni", "/root/.aws", "/opt/cni",
                   paths["/lib/modules"]["via"]):
        m = mounts[target]
        assert m["observed"] is True
        assert any(".mount" in e["source"] and e.get("detail", "").startswith("[Mount]") for e in m["evidence"]), m
    for target in ("/etc", "/boot", "/local/var", "/local/opt", "/local/mnt"):
        m = mounts[target]
        # the evidence names the upstream file that makes the mount (bottlerocket-core-kit units, systemd patches)
        assert m["observed"] is False and m["evidence"][0]["observed"] is False
        assert m["evidence"][0]["source"].startswith("bottlerocket-os/bottlerocket-core-kit v3.1.1 packages/")
    assert mounts["/etc"]["fstype"] == "tmpfs" and "context=system_u:object_r:etc_t:s0" in mounts["/etc"]["options"]
    assert any(e["source"].endswith("prepare-boot.service") for e in mounts["/boot"]["evidence"])
    assert mounts["/boot"]["source"] == "PARTUUID=" + [p for p in report["partitions"]
                                                      if p["number"] == report["distribution"]["next_boot"]["partition"]][0]["uuid"]
    # mount order: the /var bind is made before /local/var is masked
    order = [m["target"] for m in report["mounts"]]
    assert order.index("/var") < order.index("/local/var") < order.index("/var/lib/bottlerocket")
    for row in report["mounts"] + report["paths"]:
        assert row["evidence"], row


def test_licenses_mount_follows_its_condition(os_scanned):
    _name, _path, report, _manifest = os_scanned
    targets = {m["target"] for m in report["mounts"]}
    erofs = report["distribution"]["root_fstype"] == "erofs"
    licenses = f"/{report['distribution']['arch_from']}/sys-root/usr/share/licenses"
    assert (licenses in targets) == (not erofs)
    skipped = [s["unit"] for s in report["distribution"]["skipped_mounts"]]
    assert any(u.endswith("share-licenses.mount") for u in skipped) == erofs


def test_surface(os_scanned):
    _name, _path, report, manifest = os_scanned
    s = report["surface"]
    assert s["shells"] == [] and s["sshd"] is False and s["package_managers"] == [] and s["setuid"] == []
    assert s["selinux"] == "enforcing" and s["selinux_policy"]["policy_type"] == "fortified"
    assert s["selinux_policy"]["decided_by"] == "kernel command line enforcing=1"
    assert s["init"] == "systemd"
    expect = manifest["expect"]["bottlerocket"]
    assert s["lockdown"] == expect["lockdown"] == report["distribution"]["lockdown"]
    assert s["lockdown_details"]["observed"] == expect["lockdown_observed"]
    assert s["kernel_modules"]["count"] == 3
    assert s["kernel_modules"]["signature_enforced"] is (expect["lockdown"] == "integrity")
    assert s["api"]["server"] == "/usr/bin/apiserver" and s["api"]["client"] == "/usr/bin/apiclient"
    assert s["host_containers"]["unit"] == "host-containers@.service"
    assert s["host_containers"]["containers"]["admin"]["ssh"] is True


def test_update(os_scanned):
    _name, _path, report, manifest = os_scanned
    u = report["update"]
    variant, arch = report["os"]["variant"], report["os"]["arch"]
    assert u["agent"] == "updog" and u["mechanism"] == "ab-partitions"
    assert u["server"] == f"https://updates.bottlerocket.aws/2020-07-07/{variant}/{arch}/"
    assert u["metadata_url_template"] == "https://updates.bottlerocket.aws/2020-07-07/{variant}/{arch}/"
    assert u["tuf_root"]["path"] == "/usr/share/updog/root.json" and u["tuf_root"]["version"] == 1
    assert u["tuf_root"]["evidence"][0]["source"].endswith("/sys-root/usr/share/updog/root.json")
    seed = manifest["expect"]["bottlerocket"].get("update_seed")
    assert u["waves"]["seed"] == (int(seed) if seed else None)
    assert [w["percent"] for w in u["waves"]["default_schedule"]] == [1, 5, 15, 40, 60, 90, 100]
    if seed:
        assert u["waves"]["default_wave"] == {"after": "5 days", "percent": 90}   # 1234 / 2048 = 60.3 %
    assert any("gptprio.next picks" in e.get("detail", "") for e in u["evidence"])


# ---------------------------------------------------------------------------------------------
# The data image alone; the shipped .img.lz4 form
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATA_SPECS)
def test_data_disk(name):
    _path, report, _manifest = _scanned(name)
    assert report["os"]["id"] == "bottlerocket" and report["os"]["role"] == "data-disk"
    assert report["distribution"]["role"] == "data-disk"
    assert report["mounts"] == [] and report["paths"] == [] and report["update"] is None and report["surface"] is None
    ev = report["os"]["evidence"]
    assert any("Bottlerocket DATA" in e.get("detail", "") for e in ev)
    assert any("fixed data PARTUUID 5b94e8df-28b8-485c-9d19-362263b5944c" in e.get("detail", "") for e in ev)
    if name.endswith("booted"):
        assert {"/local/var", "/local/opt", "/local/mnt"} <= set(report["distribution"]["contents"])
    else:
        assert report["distribution"]["data_partitions"][0]["note"].startswith("no filesystem yet")


@pytest.mark.parametrize("name", [MAIN, "bottlerocket-aws-k8s-1.31-x86_64-data"])
def test_shipped_lz4_form(name):
    _path, raw, _manifest = _scanned(name)
    lz4 = scan(str(build_replica(name, "lz4")), progress=False)
    assert lz4["image"]["compression"] == "lz4" and lz4["image"]["size"] == raw["image"]["size"]
    for key in ("os", "partitions", "mounts", "paths", "update", "integrity", "distribution"):
        assert lz4[key] == raw[key], key
    assert lz4["warnings"] == raw["warnings"] and _beyond_inferred_note(raw["warnings"]) == []


# ---------------------------------------------------------------------------------------------
# immutools verify against veritysetup verify: intact, one data block flipped, one hash block flipped
# ---------------------------------------------------------------------------------------------
def _verify(path):
    proc = subprocess.run([sys.executable, "-m", "immutools", "verify", str(path), "--format", "json"],
                          capture_output=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout)


def _veritysetup_ok(path, tmp_path, slot_row, ref) -> bool:
    bank = slot_row
    root = _partition_file(path, ref[bank["root"]], tmp_path / "vroot.img", bank["data_blocks"] * BLOCK)
    hash_img = _partition_file(path, ref[bank["hash"]], tmp_path / "vhash.img")
    proc = subprocess.run(["veritysetup", "verify", str(root), str(hash_img), bank["root_hash"]], capture_output=True)
    root.unlink()
    hash_img.unlink()
    return proc.returncode == 0


def _flip(image, offset):
    with open(image, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture(params=[MAIN, "bottlerocket-aws-k8s-1.31-x86_64-updated"])
def verity_copy(request, tmp_path):
    src, report, _manifest = _scanned(request.param)
    dst = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst, _parts(dst), _verity_rows(report)


def _verity_rows(report) -> dict:
    banks = report["distribution"]["banks"]
    return {s: dict(banks[s], root_hash=v["root_hash"], data_blocks=v["data_blocks"])
            for s, v in report["distribution"]["verity"].items()}


@pytest.mark.parametrize("name", [MAIN, "bottlerocket-aws-k8s-1.31-x86_64-updated", "bottlerocket-aws-k8s-1.33-aarch64-pristine",
                                  "bottlerocket-aws-k8s-1.21-aarch64-1.11-updated"])
def test_verify_intact(name, tmp_path):
    path, report, _manifest = _scanned(name)
    ref, rows = _parts(path), _verity_rows(report)
    rc, result = _verify(path)
    assert rc == 0 and result["ok"] and result["collector"] == "bottlerocket"
    assert sorted(r["slot"] for r in result["targets"]) == sorted(rows)
    for r in result["targets"]:
        assert r["status"] == "ok" and r["computed_root"] == rows[r["slot"]]["root_hash"]
        assert r["data_blocks"] == rows[r["slot"]]["data_blocks"]
        assert _veritysetup_ok(path, tmp_path, rows[r["slot"]], ref)


def test_verify_flipped_data_block(verity_copy, tmp_path):
    path, ref, rows = verity_copy
    slot = sorted(rows)[-1]
    bad = rows[slot]["data_blocks"] // 2
    _flip(path, ref[rows[slot]["root"]]["start"] * 512 + bad * BLOCK + 100)
    rc, result = _verify(path)
    assert rc == 6 and not result["ok"]
    by_slot = {r["slot"]: r for r in result["targets"]}
    assert by_slot[slot]["status"] == "mismatch" and by_slot[slot]["bad_data_blocks"] == [bad]
    assert by_slot[slot]["bad_data_count"] == 1
    assert not _veritysetup_ok(path, tmp_path, rows[slot], ref)
    for other in set(rows) - {slot}:
        assert by_slot[other]["status"] == "ok" and _veritysetup_ok(path, tmp_path, rows[other], ref)


def test_verify_flipped_hash_block(verity_copy, tmp_path):
    path, ref, rows = verity_copy
    slot = sorted(rows)[0]
    # HASH: superblock in block 0, the top level at block 1, level 0 after it
    _flip(path, ref[rows[slot]["hash"]]["start"] * 512 + 2 * BLOCK + 40)
    rc, result = _verify(path)
    assert rc == 6
    row = {r["slot"]: r for r in result["targets"]}[slot]
    assert row["status"] == "mismatch" and row["bad_hash_blocks"] and not row["bad_data_blocks"]
    assert not _veritysetup_ok(path, tmp_path, rows[slot], ref)


def test_verify_uses_the_table_not_the_superblock(tmp_path):
    """The kernel maps root from the grub.cfg table alone; a destroyed HASH superblock is reported
    (superblock_agrees false) but the tree still verifies, as veritysetup --no-superblock agrees."""
    path = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(MAIN)), str(path)], check=True)
    ref = _parts(path)
    with open(path, "r+b") as f:
        f.seek(ref[5]["start"] * 512)
        f.write(bytes(512))
    report = scan(str(path), progress=False)
    row = report["distribution"]["verity"]["A"]
    assert row["superblock"] is None and row["superblock_agrees"] is False
    assert row["superblock_error"] == "no dm-verity superblock at offset 0"
    rc, result = _verify(path)
    assert rc == 0 and result["targets"][0]["status"] == "ok"
    root = _partition_file(path, ref[4], tmp_path / "r.img", row["data_blocks"] * BLOCK)
    hash_img = _partition_file(path, ref[5], tmp_path / "h.img")
    run(["veritysetup", "verify", "--no-superblock", "--hash-offset=4096", f"--data-blocks={row['data_blocks']}",
         f"--salt={row['salt']}", str(root), str(hash_img), row["root_hash"]])


def test_superblock_disagreement_is_named(tmp_path):
    path = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(MAIN)), str(path)], check=True)
    ref = _parts(path)
    _flip(path, ref[5]["start"] * 512 + 88)              # first salt byte of the superblock (cryptsetup verity.c)
    row = scan(str(path), progress=False)["distribution"]["verity"]["A"]
    assert row["superblock_agrees"] is False and any(m.startswith("salt:") for m in row["mismatches"])


# ---------------------------------------------------------------------------------------------
# The active set under other GPT attribute states, set with sgdisk as signpost would
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_attrs, b_attrs, active, decrement", [
    ("0101000000000000", "0002000000000000", "A", False),  # B failed: tries used up, never successful -> A
    ("0101000000000000", "0012000000000000", "B", True),   # staged update: B priority 2, tries 1 -> B
    ("0101000000000000", "0101000000000000", "A", False),  # a tie: the lower-numbered set wins
    ("0000000000000000", "0100000000000000", None, False), # priority 0 never boots
])
def test_gptprio_states(tmp_path, a_attrs, b_attrs, active, decrement):
    path = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica("bottlerocket-aws-k8s-1.31-x86_64-updated")), str(path)],
                   check=True)
    run(["sgdisk", f"-A3:=:{a_attrs}", f"-A8:=:{b_attrs}", str(path)])
    ref = _parts(path)
    report = scan(str(path), progress=False)
    boot = _active_sfdisk(ref)
    assert report["update"]["active_slot"] == active
    assert report["distribution"]["next_boot"]["partition"] == boot
    assert report["distribution"]["next_boot"]["will_decrement_tries"] is decrement
    if active is None:
        assert any("no bootable Bottlerocket partition set" in w for w in report["warnings"])
        assert report["integrity"]["verity"] is False
    else:
        assert report["os"]["version"] == {"A": "1.26.1", "B": "1.27.1"}[active]


# ---------------------------------------------------------------------------------------------
# bootconfig (PRIVATE's "initrd"): the kernel's documented format
# ---------------------------------------------------------------------------------------------
def test_bootconfig_in_the_image(os_scanned, tmp_path):
    _name, path, report, _manifest = os_scanned
    ref = _parts(path)
    private = _partition_file(path, ref[12], tmp_path / "private.img")
    blob = run(["debugfs", "-R", "cat /bootconfig.data", str(private)]).stdout
    assert blob.endswith(b"#BOOTCONFIG\n") and len(blob) % 4 == 0
    assert parse_blob(blob).values == report["distribution"]["bootconfig"]


def test_bootconfig_syntax():
    # Documentation/admin-guide/bootconfig.rst examples
    cfg = parse_text('feature.option.foo = 1\nfeature.option.bar = 2\n')
    assert cfg.values == {"feature.option.foo": "1", "feature.option.bar": "2"}
    cfg = parse_text('feature.option {\n  foo = 1\n  bar = 2\n}\n')
    assert cfg.values == {"feature.option.foo": "1", "feature.option.bar": "2"}
    cfg = parse_text('feature.options = "foo", "bar"\nfoo = bar; baz = "a # b" # comment\nx += 1\nx += 2\ny = 1\ny := 3\n')
    assert cfg.values["feature.options"] == ["foo", "bar"] and cfg.values["baz"] == "a # b"
    assert cfg.values["x"] == ["1", "2"] and cfg.values["y"] == "3"
    cfg = parse_text("kernel {\n module_blacklist = i8042\n}\ninit {\n systemd.log_level = debug\n}\n")
    assert cfg.kernel_args() == ["module_blacklist=i8042"] and cfg.init_args() == ["systemd.log_level=debug"]
    for bad in ("a = 1 }", "a {", "a = \"x", "{ = 1", "a b"):
        with pytest.raises(CorruptDataError):
            parse_text(bad)


def test_bootconfig_blob_damage():
    from immutools.replica.bottlerocket import bootconfig_bytes

    blob = bootconfig_bytes("kernel.module_blacklist = i8042\n")
    assert parse_blob(blob + b"\0\0").values == {"kernel.module_blacklist": "i8042"}   # GRUB's 4-byte alignment
    damaged = bytearray(blob)
    damaged[3] ^= 0x01
    with pytest.raises(CorruptDataError, match="checksum"):
        parse_blob(bytes(damaged))
    with pytest.raises(CorruptDataError, match="size"):
        parse_blob(b"\xff\xff\x00\x00" + bytes(4) + b"#BOOTCONFIG\n")
    with pytest.raises(CorruptDataError, match="magic"):
        parse_blob(b"kernel {}\n")


# ---------------------------------------------------------------------------------------------
# Damage and look-alikes: warnings, never exceptions; no false claims
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("partition, what", [(3, "BOOT-A"), (4, "ROOT-A"), (12, "PRIVATE")])
def test_damaged_partition_degrades_to_warnings(tmp_path, partition, what):
    path = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(MAIN)), str(path)], check=True)
    ref = _parts(path)
    with open(path, "r+b") as f:                 # random bytes over the ext4 superblock (byte 1024)
        f.seek(ref[partition]["start"] * 512 + 1024)
        f.write(hashlib.sha256(what.encode()).digest() * 32)
    report = scan(str(path), progress=False)
    jsonschema.validate(report, SCHEMA)
    assert report["os"]["collector"] == "bottlerocket" and report["update"]["active_slot"] == "A"
    if what == "BOOT-A":
        assert report["integrity"]["verity"] is False and report["distribution"]["verity"] == {}
        assert any("no readable grub.cfg" in w for w in report["warnings"])
        assert report["os"]["version"] == "1.26.1"
    elif what == "ROOT-A":
        assert report["os"]["version"] is None and report["surface"] is None
        assert any("ROOT not readable" in w for w in report["warnings"])
        assert report["integrity"]["root_hash"] == _scanned(MAIN)[1]["integrity"]["root_hash"]
    else:
        assert report["distribution"]["bootconfig"] is None
        assert report["distribution"]["lockdown_observed"] is False
        assert {p["path"]: p["state"] for p in report["paths"]}["/var/lib/bottlerocket"] == "persistent"


def _debugfs_names(image, part: dict, directory: str) -> set[str]:
    """Names in a directory of the ext4 filesystem of one partition, as debugfs lists them."""
    out = run(["debugfs", "-R", f"ls -p {directory}", f"{image}?offset={part['start'] * 512}"]).stdout.decode()
    return {line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6}


def test_grub_cfg_removed_gives_the_documented_root_and_says_why(tmp_path):
    """grub.cfg deleted from BOOT-A with ``debugfs -w``: / is the documented default (root=/dev/dm-0
    ro, dm-verity over ROOT and HASH), inferred; the root hash, which only grub.cfg holds, is
    missing; the completeness section and the warnings name the reason. What the image still shows
    stays observed."""
    path = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(build_replica(MAIN)), str(path)], check=True)
    boot = _parts(path)[3]
    assert "grub.cfg" in _debugfs_names(path, boot, "/grub")
    run(["debugfs", "-w", "-R", "rm /grub/grub.cfg", f"{path}?offset={boot['start'] * 512}"])
    assert _debugfs_names(path, boot, "/grub") & {"grub.cfg", "grub.cfg.sig"} == {"grub.cfg.sig"}
    report = scan(str(path), progress=False)
    jsonschema.validate(report, SCHEMA)
    root = {m["target"]: m for m in report["mounts"]}["/"]
    assert root["observed"] is False and root["source"] == "/dev/dm-0" and root["integrity"] == "dm-verity"
    assert root["access"] == "ro" and root["fstype"] == "ext4"          # the type of ROOT-A itself
    assert any(e["source"] == "partition 4 (BOTTLEROCKET-ROOT-A)" for e in root["evidence"])
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert report["completeness"]["status"] == "incomplete"
    assert facts["mount /"]["status"] == "inferred"
    assert "partition 3 (BOTTLEROCKET-BOOT-A): /grub/grub.cfg not found" in facts["mount /"]["reason"]
    assert facts["integrity.root_hash"]["status"] == "missing"
    assert "/grub/grub.cfg not found" in facts["integrity.root_hash"]["reason"]
    assert any(w.startswith("mount /: not found in the image") and "grub.cfg not found" in w for w in report["warnings"])
    assert any(w.startswith("completeness: integrity.root_hash is missing") and "grub.cfg not found" in w
               for w in report["warnings"])
    for fact in ("os.version", "os.arch", "mount /var", "mount /tmp", "update.active_slot"):
        assert facts[fact]["status"] == "observed", facts[fact]


def test_completeness_of_every_replica(scanned):
    """Every fact the data file guarantees is observed on a healthy replica -- but /etc, the tmpfs
    systemd makes in code, which is inferred with its reason; a data image is checked against the
    data image's guarantees, not the OS disk's."""
    from immutools.knowledge import load_distribution

    _name, _path, report, _manifest = scanned
    knowledge = load_distribution("bottlerocket")
    block = knowledge["guarantees"]["roles"]["data-disk"] if report["os"]["role"] == "data-disk" else knowledge["guarantees"]
    completeness = report["completeness"]
    assert completeness["distribution"] == "bottlerocket" and completeness["status"] == "complete"
    assert [f["fact"] for f in completeness["facts"]] == [f["fact"] for f in block["facts"]]
    in_code = {"mount /etc"}
    assert all(f["status"] == "observed" and f["evidence"] for f in completeness["facts"] if f["fact"] not in in_code), \
        completeness["facts"]
    assert all(f["status"] == "inferred" and f["reason"] for f in completeness["facts"] if f["fact"] in in_code)


def test_look_alikes_are_not_claimed(tmp_path):
    from builders import sgdisk_layout

    data_type = "626f7474-6c65-6474-6861-726d61726b73"
    path = tmp_path / "mixed.img"
    sgdisk_layout(path, 64 << 20, [{"number": 1, "start": 2048, "size": 4096, "type": data_type},
                                   {"number": 2, "start": 8192, "size": 4096, "type": "8300"}])
    report = scan(str(path), progress=False)
    assert all(c["collector"] != "bottlerocket" for c in report["os"].get("candidates", []))
    # the same partition alone is a Bottlerocket data disk
    alone = tmp_path / "alone.img"
    sgdisk_layout(alone, 64 << 20, [{"number": 1, "start": 2048, "size": 4096, "type": data_type}])
    report = scan(str(alone), progress=False)
    assert report["os"]["collector"] == "bottlerocket" and report["os"]["role"] == "data-disk"
    assert report["os"]["confidence"] == 0.5          # type only: no fixed PARTUUID, no name
