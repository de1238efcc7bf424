"""Real Debian 12 systems, built from Debian's packages by the distributions' own image tools
(``tests/realsys``), scanned by immutools and compared field by field with ground truth that
reference tools computed at build time (``sfdisk``, ``blkid``, ``veritysetup``, ``objcopy``,
``findmnt``, ``find``, ``dpkg-query`` on the tree the image was made of).

Each test is one (image, field) pair, so a failure names both. Where the truth is a rule rather
than a file (where systemd mounts the ESP and the DPS partitions), the expectation is the rule of
systemd-gpt-auto-generator(8) (systemd 252) spelled out here from the image's own facts: the
partition table as sfdisk reads it and the tree as ``find`` saw it.

The images take about seven minutes to build on a cold cache (two cores) and are reused after;
the ``.raw.xz`` form is ``slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from realsys import FAST_IMAGES, IMAGES, SLOW_IMAGES, RealSystemUnavailable, real_system
from realsys.tree import tree_tarball
from realsys.truth import first_boot_enabled

from immutools.scan import scan
from immutools.verify import verify_image

pytestmark = pytest.mark.realsys

GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_HOME = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"
GPT_SRV = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
GPT_USR_X86_64 = "8484680c-9521-48c6-9c11-b0720656f69e"
NO_AUTO = 1 << 63
BLKID_TYPES = {"DM_verity_hash": "dm-verity"}          # blkid's name -> the report's

_subjects: dict[str, tuple] = {}


def subject(image: str):
    """(RealSystem, scan report, verify result) of ``image``, built and scanned once per session."""
    if image not in _subjects:
        try:
            rs = real_system(image)
        except RealSystemUnavailable as exc:
            pytest.skip(str(exc))
        _subjects[image] = (rs, scan(str(rs.path), progress=False), verify_image(str(rs.path), progress=False))
    return _subjects[image]


def layout(image: str) -> str:
    spec = IMAGES[image]
    return IMAGES[spec["base"]]["layout"] if "base" in spec else spec["layout"]


def parts_truth(truth: dict) -> dict[int, dict]:
    return {p["number"]: p for p in truth["disk"]["partitions"]}


def parts_report(report: dict) -> dict[int, dict]:
    return {p["number"]: p for p in report["partitions"]}


def mounts(report: dict) -> dict[str, dict]:
    return {m["target"]: m for m in report["mounts"]}


def mount_partition(report: dict, mount: dict) -> int | None:
    """The partition a mount row's source names (PARTUUID=, UUID=), else the one its evidence
    names first (a /dev/mapper verity device is built from a partition the evidence cites)."""
    source = mount.get("source") or ""
    for p in report["partitions"]:
        if source.lower() in (f"partuuid={p['uuid']}".lower(), f"uuid={p.get('filesystem_uuid') or '-'}".lower()):
            return p["number"]
    for ev in mount.get("evidence", []):
        found = re.match(r"partition (\d+)\b", ev.get("source", ""))
        if found:
            return int(found.group(1))
    return None


def blkid_uuid(p: dict) -> str | None:
    return (p["blkid"].get("UUID") or "").lower() or None


# ------------------------------------------------------------------------------------------------
# the fields: name -> (applies to layout, (report, verify, truth) -> (ours, truth's))
# ------------------------------------------------------------------------------------------------
ALL = {"debian-plain", "dps-root", "dps-usr-ab", "mkosi-verity"}
VERITY = {"dps-root", "dps-usr-ab", "mkosi-verity"}
ROOT_TREE = {"debian-plain", "dps-root", "mkosi-verity"}


def _per_partition(key_ours, key_truth):
    def compare(report, _verify, truth):
        return ({n: key_ours(p) for n, p in parts_report(report).items()},
                {n: key_truth(p) for n, p in parts_truth(truth).items()})
    return compare


def _fs_field(report_key, blkid_key, transform=lambda v: v):
    def compare(report, _verify, truth):
        ours, theirs = {}, {}
        rows = parts_report(report)
        for n, p in parts_truth(truth).items():
            kind = p["blkid"].get("TYPE")
            if kind is None or kind == "DM_verity_hash":     # no filesystem: nothing to compare
                continue
            theirs[n] = transform(p["blkid"].get(blkid_key))
            ours[n] = transform(rows.get(n, {}).get(report_key))
        return ours, theirs
    return compare


def _lower(v):
    return v.lower() if isinstance(v, str) else v


def _filesystem_types(report, _verify, truth):
    ours, theirs = {}, {}
    rows = parts_report(report)
    for n, p in parts_truth(truth).items():
        kind = p["blkid"].get("TYPE")
        if kind:
            theirs[n] = BLKID_TYPES.get(kind, kind)
            ours[n] = rows.get(n, {}).get("filesystem")
    return ours, theirs


def _os(key, osrel_key):
    return lambda report, _v, truth: (report["os"].get(key), truth["tree"]["os_release"].get(osrel_key))


def _surface(key, truth_key=None, convert=lambda v: v):
    return lambda report, _v, truth: (report["surface"].get(key), convert(truth["tree"][truth_key or key]))


def _sshd_enabled(report, _verify, truth):
    """An image that boots without /etc/machine-id (a usr-only image: its /etc starts empty) gets
    systemd's first-boot presets: systemctl --root says what they enable."""
    theirs = truth["tree"]["sshd_enabled"]
    if truth["tree"]["scope"] == "/usr" and not theirs:
        theirs = first_boot_enabled(tree_tarball())
    return report["surface"].get("sshd_enabled"), theirs


def _fstab_mounts(report, _verify, truth):
    """Every fstab line (as findmnt parses it) is a mount with that source and type, on the
    partition whose filesystem UUID blkid reads as the source's."""
    by_fs_uuid = {blkid_uuid(p): n for n, p in parts_truth(truth).items() if blkid_uuid(p)}
    ours, theirs = {}, {}
    table = mounts(report)
    for row in truth["tree"]["fstab"]:
        if not row["target"].startswith("/"):
            continue
        want_part = by_fs_uuid.get(row["source"].split("=", 1)[1].lower()) if row["source"].startswith("UUID=") else None
        theirs[row["target"]] = (row["source"], row["fstype"], want_part)
        m = table.get(row["target"])
        ours[row["target"]] = (m["source"], m["fstype"], mount_partition(report, m)) if m else None
    return ours, theirs


def _esp_mountpoint_rule(truth: dict) -> str | None:
    """Where the ESP is mounted, from the image's facts: /etc/fstab's line for it when there is
    one (systemd-fstab-generator); else systemd-gpt-auto-generator(8) (systemd 252): "The ESP is
    mounted to /boot/ ... unless a mount point directory /efi/ exists, in which case it is mounted
    there ... where the /boot/ (or /efi/) mount point is non-empty, no mount units are generated."
    A usr-only image brings no root tree: /efi and /boot do not exist there."""
    parts = parts_truth(truth)
    esp = next(p for p in parts.values() if p["type"] == GPT_ESP)
    for row in truth["tree"]["fstab"] or []:
        if row["source"].lower() in (f"uuid={blkid_uuid(esp)}", f"partuuid={esp['uuid']}"):
            return row["target"]
    efi, boot = truth["tree"].get("efi"), truth["tree"].get("boot")
    target = "/efi" if efi and efi["exists"] else "/boot"
    state = efi if target == "/efi" else boot
    if state and state["exists"] and state["entries"]:
        return None
    return target


def _esp_mountpoint(report, _verify, truth):
    esp = next(p for p in parts_truth(truth).values() if p["type"] == GPT_ESP)
    found = [m["target"] for m in report["mounts"] if mount_partition(report, m) == esp["number"]]
    return (found[0] if found else None), _esp_mountpoint_rule(truth)


def _boot_config_visible(report, _verify, truth):
    """The kernel config Debian installs in /boot stays visible (the ESP is not mounted over a
    populated /boot), so module signature enforcement is decided from CONFIG_MODULE_SIG_FORCE."""
    reason = report["surface"]["kernel_modules"].get("reason") or ""
    return ("CONFIG_MODULE_SIG_FORCE" in reason), truth["tree"]["config"] is not None


def _dps_auto_mounts(report, _verify, truth):
    """gpt-auto-generator for /home, /srv and swap: the first partition of each DPS type on the
    root's disk, unless it has the no-auto attribute (bit 63), its target is in /etc/fstab, or the
    target directory is not empty; swap unless /etc/fstab defines swap."""
    parts = sorted(parts_truth(truth).values(), key=lambda p: p["number"])
    fstab = truth["tree"]["fstab"] or []
    expected = {}
    for type_guid, name, target in ((GPT_HOME, "home", "/home"), (GPT_SRV, "srv", "/srv")):
        part = next((p for p in parts if p["type"] == type_guid), None)
        if part is None:
            continue
        state = truth["tree"][name]
        if part["attr_bits"] & NO_AUTO or any(r["target"] == target for r in fstab) or (state["exists"] and state["entries"]):
            expected[name] = None
        else:
            expected[name] = (target, part["number"])
    swap = next((p for p in parts if p["type"] == GPT_SWAP), None)
    if swap is not None:
        expected["swap"] = None if (swap["attr_bits"] & NO_AUTO or any(r["fstype"] == "swap" for r in fstab)) else swap["number"]
    table = mounts(report)
    ours = {}
    for name, target in (("home", "/home"), ("srv", "/srv")):
        if name in expected:
            m = table.get(target)
            ours[name] = (target, mount_partition(report, m)) if m else None
    if "swap" in expected:
        rows = [g for g in report["distribution"].get("gpt_auto", []) if g["designator"] == "swap"]
        ours["swap"] = rows[0]["partition"] if rows and rows[0]["target"] == "swap" else None
    return ours, expected


def _verity_enabled(report, _verify, truth):
    return report["integrity"]["verity"], bool(truth.get("verity", {}).get("veritysetup_verify"))


def _root_hash(report, _verify, truth):
    return report["integrity"]["root_hash"], truth["verity"]["root_hash"]


def _verity_pairing(report, _verify, truth):
    targets = [t for t in report["integrity"]["targets"] if t.get("root_hash") == truth["verity"]["root_hash"]]
    return ([(t["partition"], t["hash_partition"]) for t in targets],
            [(truth["verity"]["data_partition"], truth["verity"]["hash_partition"])])


def _verity_mount(report, _verify, truth):
    target = "/usr" if layout(truth["image"]) == "dps-usr-ab" else "/"
    m = mounts(report).get(target)
    return ((m["integrity"], m["access"], mount_partition(report, m)) if m else None,
            ("dm-verity", "ro", truth["verity"]["data_partition"]))


def _verify_result(_report, verify, truth):
    rows = [t for t in verify["targets"] if t["status"] == "ok"]
    ours = (verify["status"], verify["ok"], [(t["computed_root"], t["data_block_size"], t["data_blocks"]) for t in rows])
    v = truth["verity"]
    return ours, ("verified", True, [(v["root_hash"], v["data_block_size"], v["data_blocks"])])


def _nothing_to_verify(_report, verify, truth):
    has_verity = any(p["blkid"].get("TYPE") == "DM_verity_hash" for p in truth["disk"]["partitions"])
    return (verify["status"], verify["ok"]), ("verified" if has_verity else "nothing-to-verify", has_verity)


def _verify_exit_code(report, _verify, truth):
    """The CLI says so with its own exit code (7) when there is nothing to verify."""
    proc = subprocess.run([sys.executable, "-m", "immutools", "verify", report["image"]["path"], "--format", "json"],
                          capture_output=True, timeout=600)
    has_verity = any(p["blkid"].get("TYPE") == "DM_verity_hash" for p in truth["disk"]["partitions"])
    return (proc.returncode, json.loads(proc.stdout)["status"]), ((0, "verified") if has_verity else (7, "nothing-to-verify"))


def _uki_cmdline(report, _verify, truth):
    return report["distribution"].get("kernel_cmdline"), truth["uki"]["cmdline"]


def _default_uki(report, _verify, truth):
    return report["distribution"].get("default_uki"), truth["uki"]["path"]


def _signature(report, _verify, truth):
    sig = next((s for s in truth["signatures"] if s["root_hash"] == truth["verity"]["root_hash"]), None)
    ours = report["distribution"]["signature"]
    return ((ours["present"], ours["certificate_fingerprint"]),
            (sig is not None, sig["certificate_fingerprint"] if sig else None))


def _slots(report, _verify, truth):
    """usr-only A/B: slot A is the /usr partition the UKI's usrhash= names (active); slot B is the
    partition labelled _empty."""
    usr = sorted((p for p in truth["disk"]["partitions"] if p["type"] == GPT_USR_X86_64), key=lambda p: p["number"])
    expected = [(p["number"], p["number"] == truth["verity"]["data_partition"], p["name"] == "_empty") for p in usr]
    ours = [(s["partitions"][0], s["active"], s.get("empty", False)) for s in report["update"]["slots"]]
    return ours, expected


def _dpkg_installed(report, _verify, truth):
    return report["distribution"]["dpkg"]["installed"], truth["tree"]["dpkg"]["installed"]


def _package_managers(report, _verify, truth):
    has = truth["tree"]["dpkg"]["has"]
    return ({"apt", "dpkg"} & set(report["surface"]["package_managers"]),
            {name for name in ("apt", "dpkg") if has[name]})


def _kernels(report, _verify, truth):
    return report["distribution"]["kernels"], truth["tree"]["kernels"]


def _disk_guid(report, _verify, truth):
    return report["image"]["disk_guid"], truth["disk"]["disk_guid"]


def _selinux(report, _verify, truth):
    """``selinux=0`` on the boot command line (the UKI's, as objcopy reads it) disables SELinux;
    otherwise a tree with no /etc/selinux/config and no policy has none."""
    words = (truth.get("uki") or {}).get("cmdline", "").split()
    if "selinux=0" in words:
        expected = "disabled"
    else:
        expected = "absent" if not truth["tree"]["selinux_config"] else "configured"
    return report["surface"]["selinux"], expected


def _sig_enforced(report, _verify, truth):
    return report["surface"]["kernel_modules"]["signature_enforced"], truth["tree"]["module_sig_force"]


FIELDS = {
    "disk.guid": (ALL, _disk_guid),
    "partitions.numbers": (ALL, lambda r, _v, t: (sorted(parts_report(r)), sorted(parts_truth(t)))),
    "partitions.start": (ALL, _per_partition(lambda p: p["start"], lambda p: p["start"])),
    "partitions.size": (ALL, _per_partition(lambda p: p["size"], lambda p: p["size"])),
    "partitions.type_guid": (ALL, _per_partition(lambda p: p["type_guid"], lambda p: p["type"])),
    "partitions.uuid": (ALL, _per_partition(lambda p: p["uuid"], lambda p: p["uuid"])),
    "partitions.label": (ALL, _per_partition(lambda p: p["label"] or "", lambda p: p["name"])),
    "partitions.attributes": (ALL, _per_partition(lambda p: int(p["attributes"]["raw"], 16), lambda p: p["attr_bits"])),
    "partitions.filesystem": (ALL, _filesystem_types),
    "partitions.filesystem_uuid": (ALL, _fs_field("filesystem_uuid", "UUID", _lower)),
    "partitions.filesystem_label": (ALL, _fs_field("filesystem_label", "LABEL")),
    "os.id": (ALL, _os("id", "ID")),
    "os.version": (ALL, _os("version", "VERSION_ID")),
    "os.pretty_name": (ALL, _os("pretty_name", "PRETTY_NAME")),
    "os.image_id": ({"dps-root", "dps-usr-ab"}, _os("image_id", "IMAGE_ID")),
    "os.image_version": ({"dps-root", "dps-usr-ab"}, _os("image_version", "IMAGE_VERSION")),
    "os.arch": (ALL, lambda r, _v, t: (r["os"]["arch"], t["tree"]["arch"])),
    "surface.shells": (ALL, _surface("shells")),
    "surface.setuid": (ALL, _surface("setuid")),
    "surface.setgid": (ALL, _surface("setgid")),
    "surface.sshd": (ALL, _surface("sshd")),
    "surface.sshd_enabled": (ALL, _sshd_enabled),
    "surface.init": (ALL, _surface("init")),
    "surface.selinux": (ALL, _selinux),
    "surface.kernel_modules.count": (ALL, lambda r, _v, t: (r["surface"]["kernel_modules"]["count"], t["tree"]["kernel_modules"])),
    "surface.kernel_modules.signature_enforced": (ALL, _sig_enforced),
    "surface.kernel_config_visible": (ROOT_TREE, _boot_config_visible),
    "surface.package_managers": ({"debian-plain"}, _package_managers),
    "mounts.fstab": ({"debian-plain"}, _fstab_mounts),
    "mounts.esp": (ALL, _esp_mountpoint),
    "mounts.gpt_auto": ({"dps-root"}, _dps_auto_mounts),
    "mounts.verity_device": (VERITY, _verity_mount),
    "integrity.verity": (ALL, _verity_enabled),
    "integrity.root_hash": (VERITY, _root_hash),
    "integrity.pairing": (VERITY, _verity_pairing),
    "verify.result": (VERITY, _verify_result),
    "verify.status": (ALL, _nothing_to_verify),
    "verify.exit_code": (ALL, _verify_exit_code),
    "boot.uki_cmdline": (VERITY, _uki_cmdline),
    "boot.default_uki": (VERITY, _default_uki),
    "integrity.signature": ({"dps-root", "dps-usr-ab"}, _signature),
    "update.slots": ({"dps-usr-ab"}, _slots),
    "debian.dpkg_installed": ({"debian-plain"}, _dpkg_installed),
    "debian.kernels": ({"debian-plain"}, _kernels),
}


# Disagreements found by these comparisons in code outside the real-system work; strict, so a
# fix shows up as an unexpected pass.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


def _cases(images, marks=()):
    out = []
    for image in images:
        for field, (applies, _fn) in FIELDS.items():
            if layout(image) not in applies:
                continue
            known = KNOWN_DEFECTS.get((layout(image), field))
            extra = [pytest.mark.xfail(strict=True, reason=known)] if known else []
            out.append(pytest.param(image, field, id=f"{image}:{field}", marks=list(marks) + extra))
    return out


CASES = _cases(FAST_IMAGES) + _cases(SLOW_IMAGES, [pytest.mark.slow])


@pytest.mark.parametrize("image,field", CASES)
def test_field_matches_ground_truth(image, field):
    rs, report, verify = subject(image)
    truth = dict(rs.truth, image=image)
    ours, theirs = FIELDS[field][1](report, verify, truth)
    assert ours == theirs, f"{image} {field}: immutools {ours!r} != ground truth {theirs!r}"


def test_field_count():
    """The number of compared (image, field) pairs: the README and the report quote it."""
    per_image = {image: sum(1 for c in CASES if c.values[0] == image) for image in IMAGES}
    assert sum(per_image.values()) == len(CASES)
    assert all(n >= 25 for n in per_image.values()), per_image


def test_build_cost_is_recorded():
    """Each image records the seconds each build step took (README: cold and warm costs)."""
    for image in FAST_IMAGES:
        rs = subject(image)[0]
        assert rs.build["seconds"] > 0 and rs.build["steps"], (image, rs.build)
