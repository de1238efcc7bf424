"""rpm-ostree systems end to end: Fedora CoreOS (both partition-type eras) and Silverblue replicas,
built with the real ostree CLI, scanned offline.

Expected answers come from each replica's manifest: the spec's ``expect:`` section, and what the
ostree tool itself reported at build time (``ostree admin status``: deployment order, checksums,
versions, pins; the entry file names it wrote). As root, ``ostree admin status`` also runs on the
loop-mounted image itself (read-only), the strongest comparison: the reference tool reading the
very bytes we read.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest

from builders import have, run
from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest

from immutools.report.model import load_schema
from immutools.scan import scan

SCHEMA = load_schema()
SPECS = ["fcos-stable-40-amd64-updated", "fcos-stable-43-amd64-updated", "silverblue-40-amd64-updated"]
SYSROOT = {"fcos": "fcos", "silverblue": "silverblue"}

pytestmark = pytest.mark.skipif(not have("ostree"), reason="needs the ostree CLI (Debian package ostree)")


@pytest.fixture(scope="module", params=SPECS)
def scanned(request):
    name = request.param
    path = build_replica(name)
    st = os.stat(path)
    report = scan(str(path), progress=False)
    after = os.stat(path)
    # the input is never written (a write would move mtime/ctime; hashing 10 GiB would cost 30 s)
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return name, path, report, replica_manifest(name)


def _tool_view(manifest: dict) -> dict:
    (facts,) = manifest["computed"]["ostree"].values()
    return facts


def test_matches_spec(scanned):
    name, _path, report, manifest = scanned
    jsonschema.validate(report, SCHEMA)
    expect = dict(manifest["expect"])
    specific = expect.pop("ostree")
    assert_matches_manifest(report, {"expect": expect, "provenance": {}})
    from expect import subset

    subset(specific, report["distribution"], "distribution")
    assert report["os"]["collector"] == "ostree"
    assert report["image"]["provenance"]["spec"] == name


def test_deployments_match_what_ostree_wrote(scanned):
    """Order, checksums, serials, versions and pins equal `ostree admin status` at build time."""
    _name, _path, report, manifest = scanned
    tool = _tool_view(manifest)
    ours = report["distribution"]["deployments"]
    theirs = [tool["deployments"][f"d{i}"] for i in range(tool["deployment_count"])]
    assert [(d["stateroot"], d["checksum"], d["serial"], d["version"], d["pinned"]) for d in ours] == \
        [(d["stateroot"], d["checksum"], d["serial"], d["version"], d["pinned"]) for d in theirs]
    assert sorted(report["distribution"]["boot_entries"]) == tool["entries"]
    assert report["distribution"]["bootversion"] == tool["bootversion"]
    # the update section lists the same deployments as slots, the default one active
    slots = report["update"]["slots"]
    assert [s["checksum"] for s in slots] == [d["checksum"] for d in theirs]
    assert [s["active"] for s in slots] == [True] + [False] * (len(slots) - 1)
    # the deployed commits are commits the build made (the repository holds both)
    commits = {c["checksum"] for c in tool["commits"].values()}
    assert {d["checksum"] for d in ours} <= commits


def test_mounts_and_paths(scanned):
    _name, _path, report, manifest = scanned
    mounts = {m["target"]: m for m in report["mounts"]}
    paths = {p["path"]: p for p in report["paths"]}
    assert mounts["/usr"]["access"] == "ro" and "bind" in mounts["/usr"]["options"]
    assert paths["/usr"]["state"] == "read-only"
    assert paths["/"]["state"] == "read-only"              # the immutable deployment root
    assert paths["/etc"]["state"] == "persistent"
    assert paths["/var"]["state"] == "persistent"
    for p in ("/home", "/root", "/opt", "/srv", "/mnt"):   # symlinks into /var (rpm-ostree strict layout)
        assert paths[p]["state"] == "persistent", (p, paths[p])
        assert paths[p]["resolved"].startswith("/var/"), paths[p]
    assert paths["/run"]["state"] == "volatile"
    expect = manifest["expect"]["ostree"]
    sysroot = mounts["/sysroot"]
    readonly = bool(expect.get("sysroot_readonly"))      # Silverblue: not set (the spec's null is dropped)
    assert (sysroot["access"] == "ro") == readonly
    assert report["distribution"]["sysroot_readonly"] == (True if readonly else None)
    if readonly:
        assert paths["/sysroot"]["state"] == "read-only"
        assert paths["/tmp"]["state"] == "volatile"
        assert mounts["/boot"]["access"] == "ro" and mounts["/boot"]["observed"] is False
    else:
        # old Silverblue: /tmp -> sysroot/tmp, so tmp.mount's ConditionPathIsSymbolicLink=!/tmp fails
        assert paths["/tmp"]["resolved"] == "/sysroot/tmp" and paths["/tmp"]["state"] == "persistent"
        assert "/tmp" not in mounts
        assert [u["unit"] for u in report["distribution"]["skipped_mount_units"]] == ["tmp.mount"]
        assert mounts["/var"]["fstype"] == "btrfs" and "subvol=var" in mounts["/var"]["options"]
        assert mounts["/var/home"]["observed"] is True and paths["/home"]["via"] == "/var/home"
    for row in report["mounts"] + report["paths"]:
        assert row["evidence"], row


def test_etc_is_merged_state(scanned):
    """The default deployment's /etc holds the local changes the 3-way merge carries forward."""
    _name, _path, report, _manifest = scanned
    changes = report["distribution"]["etc_changes"]
    assert "/machine-id" in changes["added"]
    assert "/hostname" in changes["modified"]


def test_rpm_is_layered_over_the_image(scanned):
    _name, _path, report, manifest = scanned
    layering = report["update"]["package_layering"]
    assert layering["mode"] == "layered over the image"
    assert layering["layered_packages"] == manifest["expect"]["ostree"]["layered_packages"]
    assert layering["package_manager_present"] and layering["tool_present"]
    rows = {r["name"]: r for r in report["surface"]["package_manager_details"]}
    assert rows["rpm"]["mode"].startswith("layered over the image")
    assert report["surface"]["setuid"] and all(not p.startswith("/sysroot") for p in report["surface"]["setuid"])


def test_update_agent_configuration(scanned):
    """Zincati (FCOS): merged drop-ins, the last one setting a key wins; rpm-ostreed (Silverblue):
    AutomaticUpdatePolicy from /etc/rpm-ostreed.conf and the timer's enablement."""
    name, _path, report, manifest = scanned
    conf = report["distribution"]["update_agent_config"]
    if not name.startswith("fcos"):
        assert conf["agent"] == "rpm-ostreed" and conf["policy_source"] == "/etc/rpm-ostreed.conf"
        assert conf["automatic_update_policy"] == "stage" and conf["timer_enabled"] is True
        return
    assert conf["strategy"] == manifest["expect"]["ostree"]["zincati_strategy"]
    where = conf["sources"]["updates.strategy"]
    assert where.startswith("/etc/") == (conf["strategy"] == "fleet_lock")


@contextlib.contextmanager
def _mounted_sysroot(image: Path, root: dict, boot: dict, subvol: str | None):
    """The image's physical root at <tmp>/sysroot and its boot filesystem at .../boot, both through
    read-only loop devices over the partitions' byte ranges (no partition scanning needed)."""
    tmp = Path(tempfile.mkdtemp(prefix="immutools-ostree-"))
    loops: list[str] = []
    mounted: list[Path] = []
    try:
        def loop(part: dict) -> str:
            dev = run(["losetup", "--find", "--show", "--read-only", "--offset", str(part["start"]),
                       "--sizelimit", str(part["size"]), image]).stdout.decode().strip()
            loops.append(dev)
            return dev

        top = tmp / "top"
        top.mkdir()
        opts = "ro,norecovery" if root["filesystem"] == "xfs" else "ro"
        run(["mount", "-t", root["filesystem"], "-o", opts, loop(root), top])
        mounted.append(top)
        sysroot = top / subvol if subvol else top
        run(["mount", "-t", boot["filesystem"], "-o", "ro", loop(boot), sysroot / "boot"])
        mounted.append(sysroot / "boot")
        yield sysroot
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], capture_output=True)
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)


def _parse_status(text: str) -> list[tuple]:
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:\* )?(\S+) ([0-9a-f]{64})\.(\d+)", line)
        if m:
            rows.append([m.group(1), m.group(2), int(m.group(3)), None, False])
        elif rows and line.strip().startswith("Version:"):
            rows[-1][3] = line.split(":", 1)[1].strip()
        elif rows and line.strip() == "Pinned: yes":
            rows[-1][4] = True
    return [tuple(r) for r in rows]


@pytest.mark.skipif(os.geteuid() != 0, reason="loop-mounting the image needs root")
def test_ostree_admin_status_on_the_image(scanned):
    """`ostree admin status` on the loop-mounted replica lists what we read offline."""
    _name, path, report, _manifest = scanned
    dist = report["distribution"]
    sub = dist["physical_root"]["subdir"].strip("/") or None
    parts = {p["number"]: p for p in report["partitions"]}
    with _mounted_sysroot(path, parts[dist["physical_root"]["partition"]], parts[dist["boot_partition"]], sub) as sysroot:
        status = run(["ostree", "admin", "status", f"--sysroot={sysroot}"]).stdout.decode()
    ours = [(d["stateroot"], d["checksum"], d["serial"], d["version"], d["pinned"]) for d in dist["deployments"]]
    assert _parse_status(status) == ours, status
