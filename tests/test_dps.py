"""Discoverable Partitions Specification images: the ParticleOS-style usr-only A/B replica.

Compared with reference tools on the same image:
* ``systemd-dissect --json=short`` (which partition it picks for each designator, its type,
  filesystem, label, UUID, read-only and grow flags) - as root only, it needs loop devices;
* ``veritysetup verify`` on the extracted usr and usr-verity partitions with the root hash from
  the signature partition (the hash tree we say protects /usr really does);
* ``objcopy`` for the UKI's ``.cmdline``/``.osrel`` sections;
and ``immutools verify`` must pass on the image and fail once a data block of /usr is changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest

from builders import have, run
from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest

from immutools.report.model import load_schema
from immutools.scan import scan
from immutools.verify import verify_image

SCHEMA = load_schema()
SPEC = "dps-particleos-amd64-booted"


@pytest.fixture(scope="module")
def dps():
    path = build_replica(SPEC)
    return path, scan(str(path), progress=False), replica_manifest(SPEC)


def _part(report, number):
    return next(p for p in report["partitions"] if p["number"] == number)


def _extract(image, part, dest):
    from test_others import extract_sparse

    return extract_sparse(image, part["start"], part["size"], dest)


def test_matches_spec(dps):
    _path, report, manifest = dps
    jsonschema.validate(report, SCHEMA)
    assert_matches_manifest(report, manifest)
    assert report["os"]["collector"] == "dps"
    assert report["os"]["image_id"] == "ParticleOS"


def test_slots_types_and_flags(dps):
    _path, report, manifest = dps
    parts = {p["number"]: p for p in report["distribution"]["partitions"]}
    assert parts[4]["designator"] == "usr-x86-64" and parts[3]["designator"] == "usr-x86-64-verity"
    assert parts[2]["designator"] == "usr-x86-64-verity-sig" and parts[8]["designator"] == "root-x86-64"
    assert [n for n, p in parts.items() if p["empty"]] == [5, 6, 7]
    assert parts[6]["no_auto"] and parts[7]["no_auto"] and not parts[5]["no_auto"]
    assert parts[4]["read_only"] and parts[8]["grow_file_system"]
    root_hash = manifest["computed"]["usr_a"]["verity"]["root_hash"]
    # DPS pairing: data UUID = first 128 bits, verity UUID = last 128 bits of the root hash
    assert parts[4]["uuid"].replace("-", "") == root_hash[:32]
    assert parts[3]["uuid"].replace("-", "") == root_hash[32:]
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/usr"]["integrity"] == "dm-verity" and mounts["/usr"]["fstype"] == "erofs"
    paths = {p["path"]: p for p in report["paths"]}
    assert paths["/usr"]["state"] == "read-only"
    for p in ("/", "/etc", "/var", "/home"):
        assert paths[p]["state"] == "persistent", p
    assert paths["/tmp"]["state"] == "volatile"


def test_verify_checks_usr_against_the_signed_root_hash(dps, tmp_path):
    path, report, manifest = dps
    result = verify_image(str(path), progress=False)
    assert result["ok"] and [t["status"] for t in result["targets"]] == ["ok"]
    assert result["targets"][0]["expected_root"] == manifest["computed"]["usr_a"]["verity"]["root_hash"]
    # a changed byte in /usr's data must be caught
    bad = tmp_path / "bad.raw"
    subprocess.run(["cp", "--sparse=always", str(path), str(bad)], check=True)
    usr = _part(report, 4)
    with open(bad, "r+b") as f:
        f.seek(usr["start"] + 4096 + 17)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = verify_image(str(bad), progress=False)
    assert not result["ok"] and result["targets"][0]["status"] == "mismatch"
    assert result["targets"][0]["bad_data_blocks"] == [1]


@pytest.mark.skipif(not have("veritysetup"), reason="needs veritysetup")
def test_veritysetup_accepts_the_signature_root_hash(dps, tmp_path):
    path, report, _manifest = dps
    data = _extract(path, _part(report, 4), tmp_path / "usr.img")
    hashdev = _extract(path, _part(report, 3), tmp_path / "usr-verity.img")
    run(["veritysetup", "verify", data, hashdev, report["integrity"]["root_hash"]])
    sig = _extract(path, _part(report, 2), tmp_path / "sig.bin").read_bytes().rstrip(b"\0")
    assert json.loads(sig)["rootHash"] == report["integrity"]["root_hash"]


@pytest.mark.skipif(not have("objcopy"), reason="needs binutils")
def test_uki_sections_match_objcopy(dps, tmp_path):
    path, report, _manifest = dps
    uki_row = report["distribution"]["ukis"][0]
    esp = _extract(path, _part(report, 1), tmp_path / "esp.img")
    uki = tmp_path / "uki.efi"
    with open(uki, "wb") as f:
        f.write(subprocess.run(["mtype", "-i", str(esp), "::/" + uki_row["path"]], capture_output=True, check=True,
                               env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout)
    out = tmp_path / "cmdline"
    run(["objcopy", "-O", "binary", "--only-section=.cmdline", uki, out])
    assert out.read_text().strip() == uki_row["cmdline"]
    assert f"usrhash={report['integrity']['root_hash']}" in uki_row["cmdline"]


def _dissect(path):
    if shutil.which("systemd-dissect") is None:
        pytest.skip("systemd-dissect missing (Debian package systemd-container)")
    if os.geteuid() != 0:
        pytest.skip("systemd-dissect needs loop devices (root)")
    proc = subprocess.run(["systemd-dissect", "--json=short", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"systemd-dissect could not run here: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return json.loads(proc.stdout)


def test_systemd_dissect_agrees(dps):
    """systemd-dissect picks the same partitions for root, usr, usr-verity, usr-verity-sig, home and
    the ESP that we report, with the same types, filesystems, labels, UUIDs and flags."""
    path, report, _manifest = dps
    theirs = _dissect(path)
    ours = {p["number"]: p for p in report["distribution"]["partitions"]}
    rows = {p["number"]: p for p in report["partitions"]}
    picked = {}
    for m in theirs["mounts"]:
        n = m["partno"]
        picked[m["designator"]] = n
        designator = ours[n]["designator"]
        arch = m["architecture"]
        assert designator == (f"{m['designator'].replace('-', '-' + arch + '-', 1)}" if arch and "-" in m["designator"]
                              else f"{m['designator']}-{arch}" if arch else m["designator"]), (m, designator)
        assert m["partition_uuid"] == ours[n]["uuid"] and m["partition_label"] == ours[n]["label"]
        fs = {"DM_verity_hash": "dm-verity", "verity_hash_signature": "raw"}.get(m["fstype"], m["fstype"])
        if fs != "raw":
            assert rows[n]["filesystem"] == fs, (n, rows[n]["filesystem"], fs)
        assert m["growfs"] == ours[n]["grow_file_system"]
    active = next(s for s in report["update"]["slots"] if s["active"])
    for designator, ours_n in zip(("usr", "usr-verity", "usr-verity-sig"), active["partitions"]):
        theirs_n = picked[designator]
        if theirs_n != ours_n:
            # systemd 252 (Debian 12) picks the highest label in version order and does not skip
            # "_empty" slots there ("_" sorts after letters); slot B's signature partition carries no
            # no-auto flag (ParticleOS sets NoAuto only on verity and usr). Newer systemd ignores
            # "_empty" labels, as sysupdate expects.
            assert ours[theirs_n]["empty"] and designator == "usr-verity-sig", (designator, theirs_n, ours_n)
    mounts = {m["target"]: m for m in report["mounts"]}
    assert f"PARTUUID={rows[picked['root']]['uuid']}" == mounts["/"]["source"]
    assert f"PARTUUID={rows[picked['home']]['uuid']}" == mounts["/home"]["source"]
    assert theirs["osRelease"] and "IMAGE_ID=ParticleOS" in theirs["osRelease"]
    assert report["os"]["image_version"] in " ".join(theirs["osRelease"])


# ------------------------------------------------------------------------------------------------
# systemd's rules on small mkosi-style images (sgdisk): verity paired by root-hash UUIDs only, and
# where systemd-gpt-auto-generator (252) puts the ESP. The same two rules are pinned on the real
# mkosi-layout Debian image in tests/test_real_systems.py.
# ------------------------------------------------------------------------------------------------
from realsys.layouts import make_uki, vfat_image, veritysetup_format  # noqa: E402

from builders import cached, sgdisk_layout, write_at  # noqa: E402

EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
GPT_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
GPT_ROOT_X86_64_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
KVER = "6.1.0-test-amd64"
SMALL_RECIPE = 2
MiB = 1 << 20


def _small_tree(root: Path, *, efi: bool, boot_files: bool) -> Path:
    (root / "usr/lib/modules" / KVER / "kernel").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    for name in ("a.ko", "b.ko"):
        (root / "usr/lib/modules" / KVER / "kernel" / name).write_bytes(b"\x7fELF module")
    (root / "boot").mkdir()
    if efi:
        (root / "efi").mkdir()
    if boot_files:
        (root / "boot" / f"config-{KVER}").write_text("CONFIG_MODULES=y\nCONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n")
        (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"MZ not really a kernel")
    return root


def small_mkosi_image(*, efi: bool = True, boot_files: bool = True, xbootldr: bool = False, verity: bool = True,
                      pair_uuids: bool = True) -> Path:
    """ESP (FAT16, systemd-boot stub UKI with ``roothash=``), root squashfs and root-verity, laid
    out the way mkosi 14 does (same label on root and verity, attribute 60, no signature
    partition, UUIDs = the root hash's halves; ``pair_uuids=False`` breaks that), with sgdisk."""
    recipe = {"v": SMALL_RECIPE, "efi": efi, "boot": boot_files, "xbootldr": xbootldr, "verity": verity, "pair": pair_uuids}

    def build(out: Path) -> None:
        import shutil
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="small-mkosi-"))
        try:
            tree = _small_tree(work / "tree", efi=efi, boot_files=boot_files)
            root = work / "root.squashfs"
            run(["mksquashfs", tree, root, "-noappend", "-quiet", "-all-root"])
            parts = [{"number": 1, "start": 2048, "size": 32 * 2048, "type": "ef00", "label": "ESP System Partition",
                      "guid": "8f1b9d6e-2f7a-4c3b-9a61-0c5d4e3f2a10"}]
            start = 2048 + 32 * 2048
            size = -(-root.stat().st_size // MiB) * 2048          # sgdisk aligns starts to 1 MiB
            cmdline = "rhgb selinux=0 audit=0"
            if verity:
                hash_file = work / "root.verity"
                root_hash = veritysetup_format(root, hash_file, salt="ab" * 32, verity_uuid="0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0")
                cmdline += f" roothash={root_hash}"
                data_uuid = str(uuid.UUID(root_hash[:32])) if pair_uuids else "11111111-2222-4333-8444-555555555555"
                hash_uuid = str(uuid.UUID(root_hash[-32:])) if pair_uuids else "66666666-7777-4888-9999-aaaaaaaaaaaa"
            else:
                data_uuid = "11111111-2222-4333-8444-555555555555"
            parts.append({"number": 2, "start": start, "size": size, "type": GPT_ROOT_X86_64, "label": "debian-mkosi_1",
                          "guid": data_uuid, "attrs": 1 << 60})
            start += size
            if verity:
                hsize = -(-hash_file.stat().st_size // MiB) * 2048
                parts.append({"number": 3, "start": start, "size": hsize, "type": GPT_ROOT_X86_64_VERITY,
                              "label": "debian-mkosi_1", "guid": hash_uuid, "attrs": 1 << 60})
                start += hsize
            if xbootldr:
                parts.append({"number": 4, "start": start, "size": 16 * 2048, "type": "ea00", "label": "XBOOTLDR",
                              "guid": "3c2b1a09-8f7e-4d6c-9b5a-493827161504"})
                start += 16 * 2048
            esp_dir = work / "esp"
            (esp_dir / "EFI/Linux").mkdir(parents=True)
            (esp_dir / "loader").mkdir()
            (esp_dir / "loader/loader.conf").write_text("#timeout 3\n")
            (work / "linux").write_bytes(b"MZ not really a kernel")
            (work / "initrd").write_bytes(b"070701 not really an initrd")
            make_uki(tree, esp_dir / "EFI/Linux/debian-mkosi_1.efi", cmdline, work, stub=EFI_STUB,
                     linux=work / "linux", initrd=work / "initrd")
            esp = vfat_image(esp_dir, work / "esp.img", 32 * MiB, serial="1A2B3C4D", label="EFI", fat_args=("-F", "16"))
            sgdisk_layout(out, (start + 2048) * 512, parts, disk_guid="5d4c3b2a-1908-4f7e-8d6c-5b4a39281706")
            write_at(out, 2048 * 512, esp)
            write_at(out, parts[1]["start"] * 512, root)
            if verity:
                write_at(out, parts[2]["start"] * 512, hash_file)
            if xbootldr:
                xb = vfat_image(esp_dir / "EFI", work / "xbootldr.img", 16 * MiB, serial="5E6F7A8B", label="XBOOTLDR",
                                fat_args=("-F", "12"))
                write_at(out, parts[-1]["start"] * 512, xb)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return cached("small-mkosi", recipe, build)


def _needs_tools():
    missing = [t for t in ("mksquashfs", "veritysetup", "sgdisk", "mkfs.fat", "mcopy", "objcopy") if not have(t)]
    if missing or not EFI_STUB.exists():
        pytest.skip(f"needs {', '.join(missing) or EFI_STUB}")


def _esp_target(report):
    esp = next(p for p in report["partitions"] if p["type_key"] == "esp")
    return next((m["target"] for m in report["mounts"] if m["source"] == f"PARTUUID={esp['uuid']}"), None)


def test_mkosi_verity_is_paired_by_root_hash_uuids():
    """Root and verity carry the same label and there is no signature partition: the UKI's
    roothash= pairs them by partition UUID (first/last 128 bits), as systemd does."""
    _needs_tools()
    path = small_mkosi_image()
    report = scan(str(path), progress=False)
    root_hash = report["distribution"]["kernel_cmdline"].split("roothash=")[1].split()[0]
    assert report["integrity"]["verity"] and report["integrity"]["root_hash"] == root_hash
    [target] = report["integrity"]["targets"]
    assert (target["partition"], target["hash_partition"], target["root_hash"]) == (2, 3, root_hash)
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["integrity"] == "dm-verity" and root["access"] == "ro"
    assert report["distribution"]["verity_pairing"] is True
    result = verify_image(str(path), progress=False)
    assert result["ok"] and result["status"] == "verified" and result["targets"][0]["computed_root"] == root_hash


def test_unpaired_verity_is_nothing_to_verify(tmp_path):
    """UUIDs that are not the root hash's halves pair nothing: verity is off, and ``verify`` says
    there is nothing it can check (exit code 7), naming the orphaned hash partition."""
    _needs_tools()
    path = small_mkosi_image(pair_uuids=False)
    report = scan(str(path), progress=False)
    assert report["integrity"]["verity"] is False and report["integrity"]["targets"] == []
    assert next(m for m in report["mounts"] if m["target"] == "/")["integrity"] == "none"
    proc = subprocess.run([sys.executable, "-m", "immutools", "verify", str(path), "--format", "table"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc
    assert "nothing to verify" in proc.stdout and "partition 3" in proc.stdout
    result = verify_image(str(path), progress=False)
    assert result["status"] == "nothing-to-verify" and result["ok"] is False


def test_no_verity_is_nothing_to_verify():
    _needs_tools()
    path = small_mkosi_image(verity=False)
    proc = subprocess.run([sys.executable, "-m", "immutools", "verify", str(path), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7
    result = json.loads(proc.stdout)
    assert result["status"] == "nothing-to-verify" and not result["ok"]
    assert result["reason"] == "no dm-verity protected filesystem in the image"


@pytest.mark.parametrize("efi,boot_files,xbootldr,esp_at,xbootldr_at,sig_enforced", [
    (True, True, False, "/efi", None, False),      # /efi exists: the ESP goes there, /boot/config-* stays visible
    (False, True, False, None, None, False),       # no /efi and /boot populated: nothing is mounted over it
    (False, False, False, "/boot", None, None),    # no /efi, empty /boot: the ESP is /boot
    (False, False, True, "/efi", "/boot", None),   # XBOOTLDR takes /boot, the ESP goes to /efi
])
def test_esp_mount_point_follows_gpt_auto_generator(efi, boot_files, xbootldr, esp_at, xbootldr_at, sig_enforced):
    _needs_tools()
    report = scan(str(small_mkosi_image(efi=efi, boot_files=boot_files, xbootldr=xbootldr)), progress=False)
    assert _esp_target(report) == esp_at
    assert report["distribution"]["esp_mountpoint"] == esp_at
    if xbootldr:
        xb = next(p for p in report["partitions"] if p["type_key"] == "xbootldr")
        assert next((m["target"] for m in report["mounts"] if m["source"] == f"PARTUUID={xb['uuid']}"), None) == xbootldr_at
    assert report["surface"]["kernel_modules"]["signature_enforced"] is sig_enforced


@pytest.mark.skipif(not have("systemd-id128"), reason="needs systemd-id128")
def test_var_partition_uuid_agrees_with_systemd_id128():
    """The /var partition binding: our HMAC against ``systemd-id128 --app-specific`` on this machine."""
    from immutools.system.gpt_auto import GPT_VAR, var_partition_uuid

    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    if len(machine_id) != 32:
        pytest.skip("this machine has no machine ID")
    theirs = run(["systemd-id128", "machine-id", f"--app-specific={GPT_VAR}", "--uuid"]).stdout.decode().strip()
    assert var_partition_uuid(machine_id) == theirs


# ------------------------------------------------------------------------------------------------
# never a silent gap: a damaged boot chain leaves the root hash missing, with the reason
# ------------------------------------------------------------------------------------------------
def _sfdisk_partition(image: Path, number: int) -> tuple[int, int]:
    """(start, size) in bytes of partition ``number`` as ``sfdisk --json`` reads it."""
    table = json.loads(run(["sfdisk", "--json", image]).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p["node"].endswith(str(number)))
    return part["start"] * 512, part["size"] * 512


def _damage_uki(image: Path, uki: str, how: str, tmp_path: Path) -> None:
    """Delete the ESP's only UKI with mdel, or overwrite it with bytes no PE reader accepts (mcopy)."""
    start, _size = _sfdisk_partition(image, 1)
    target = f"{image}@@{start}"
    if how == "deleted":
        run(["mdel", "-i", target, f"::{uki}"])
    else:
        junk = tmp_path / "junk.efi"
        junk.write_bytes(b"MZ" + b"\xa5" * 4094)
        run(["mcopy", "-o", "-i", target, junk, f"::{uki}"])


@pytest.mark.parametrize("subject, uki_damage, zero_signature", [
    ("particleos", "deleted", True),       # usr-verity: no UKI to pin usrhash=, signature partition zeroed
    ("particleos", "corrupted", True),
    ("particleos", "deleted", False),      # the signature partition alone still gives the hash
    ("mkosi", "deleted", False),           # root-verity, no signature partition: roothash= was the only source
])
def test_damaged_boot_chain_is_explained(tmp_path, subject, uki_damage, zero_signature):
    """A copy of a DPS image whose default UKI is deleted (mdel) or made unreadable (mcopy), and
    whose verity signature partition is zeroed where sfdisk says it lies: the root hash of the
    image's verity-protected partition is missing -- never a silent gap -- and the completeness
    warning names the UKI directory and the signature problem; the mount it would protect is
    reported as the generator mounts it, inferred, with the same reason."""
    if not all(have(t) for t in ("sfdisk", "mdel", "mcopy")):
        pytest.skip("needs sfdisk and mtools")
    if subject == "particleos":
        source, target, uki = build_replica(SPEC), "/usr", None
    else:
        _needs_tools()
        source, target, uki = small_mkosi_image(), "/", "EFI/Linux/debian-mkosi_1.efi"
    image = tmp_path / "damaged.raw"
    subprocess.run(["cp", "--sparse=always", str(source), str(image)], check=True)
    healthy = scan(str(image), progress=False)
    assert healthy["completeness"]["status"] == "complete", healthy["completeness"]
    uki = uki or healthy["distribution"]["default_uki"]
    _damage_uki(image, uki, uki_damage, tmp_path)
    if zero_signature:
        start, size = _sfdisk_partition(image, 2)
        with open(image, "r+b") as f:
            os.pwrite(f.fileno(), bytes(size), start)

    report = scan(str(image), progress=False)
    jsonschema.validate(report, SCHEMA)
    assert report["os"]["collector"] == "dps" and report["os"]["role"] == healthy["os"]["role"]
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert facts["update.active_slot"]["status"] == "observed" and report["update"]["active_slot"] == "A"
    if uki_damage == "corrupted":
        assert any(f"/{uki}: not a readable UKI" in w for w in report["warnings"]), report["warnings"]
    if subject == "particleos" and not zero_signature:
        # DPS "Verity" mode 2: the signature partition pins the same hash without the UKI
        assert report["integrity"]["root_hash"] == healthy["integrity"]["root_hash"]
        assert facts["integrity.root_hash"]["status"] == "observed"
        assert report["completeness"]["status"] == "complete"
        return
    assert report["integrity"]["root_hash"] is None and report["integrity"]["verity"] is False
    assert report["completeness"]["status"] == "incomplete"
    missing = facts["integrity.root_hash"]
    assert missing["status"] == "missing" and "/EFI/Linux" in missing["reason"], missing
    named = "no JSON object" if zero_signature else "no verity signature partition"
    assert named in missing["reason"], missing
    assert any(w.startswith("completeness: integrity.root_hash is missing: ") and "/EFI/Linux" in w and named in w
               for w in report["warnings"]), report["warnings"]
    mount = next(m for m in report["mounts"] if m["target"] == target)
    assert mount["observed"] is False and mount["integrity"] == "none" and mount["access"] == "ro"
    assert facts[f"mount {target}"]["status"] == "inferred"
    assert "whether dm-verity protects it is unknown" in facts[f"mount {target}"]["reason"]
    assert any(f"mount {target} (no root hash for {target}:" in w for w in report["warnings"]), report["warnings"]
