"""The attack-surface inventory on real images: what we planted is found (and what we did not is
not), negative trees and command-line overrides change the answer, and the metadata parts
(shells, setuid/setgid, PATH executables, module count) agree with GNU find / stat and the
kernel's own path resolution on the same images loop-mounted (root only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest

from builders import have, run
from immutools.report.model import load_schema
from immutools.system.cmdline import KernelCmdline
from immutools.system.surface import DEFAULT_PATH, SHELL_NAMES, inventory
from system_trees import os_tree, root_image, usr_image

needs_images = pytest.mark.skipif(not (have("mke2fs") and have("mksquashfs")), reason="mke2fs or mksquashfs missing")


@pytest.fixture(scope="module")
def full():
    return os_tree("full")


@pytest.fixture(scope="module")
def full_surface(full):
    return inventory(full)


def _validate(report: dict) -> None:
    schema = load_schema()
    jsonschema.validate(report, {"$defs": schema["$defs"], **schema["properties"]["surface"]})


@needs_images
def test_full_tree_inventory(full_surface):
    s = full_surface
    r = s.to_report()
    _validate(r)
    assert r["shells"] == ["/usr/bin/bash", "/usr/bin/busybox", "/usr/bin/dash"]
    bash = next(x for x in s.shells if x["path"] == "/usr/bin/bash")
    assert bash["names"] == ["/usr/bin/bash", "/usr/bin/sh"]           # /bin/sh is /usr/bin/sh via /bin -> usr/bin
    assert bash["evidence"][0]["source"] == "USR (squashfs): /bin/bash"
    assert next(x for x in s.shells if x["path"] == "/usr/bin/busybox")["names"] == ["/usr/bin/ash", "/usr/bin/busybox"]
    assert any("zsh" in w for w in s.warnings)                        # present but not executable
    assert r["sshd"] is True and r["sshd_enabled"] is True
    sock = next(u for u in s.sshd_units if u["unit"] == "sshd.socket")
    assert sock["enabled"] and sock["wanted_by"] == ["sockets.target"] and sock["state"] == "enabled"
    assert sock["preset"] == "enable" and sock["reachable_from_default_target"] is True
    svc = next(u for u in s.sshd_units if u["unit"] == "sshd.service")
    assert not svc["enabled"] and svc["state"] == "disabled"
    assert r["package_managers"] == ["dnf", "dpkg", "rpm"]
    pm = {p["name"]: p for p in s.package_managers}
    assert pm["rpm"]["kinds"] == ["binary", "database"] and pm["dpkg"]["kinds"] == ["database"]
    assert pm["dpkg"]["evidence"][0]["source"] == "ROOT (ext4): /var/lib/dpkg/status"
    assert r["app_managers"] == ["flatpak"]
    assert r["setuid"] == ["/opt/tool/setuid-tool", "/usr/bin/su"]    # /proc is not walked
    assert r["setgid"] == ["/usr/bin/wall", "/var/tmp/sgid-tool"]     # a setgid directory is not listed
    assert next(x for x in s.setuid if x["path"] == "/usr/bin/su")["mode"] == "4755"
    assert r["selinux"] == "enforcing"
    sel = r["selinux_policy"]
    assert sel["config"] == "/etc/selinux/config" and not sel["config_is_default"] and sel["policy_type"] == "targeted"
    assert "/etc/selinux/targeted/policy/policy.33" in sel["policy_paths"]
    assert r["selinux_trail"][0]["detail"] == "SELINUX=enforcing SELINUXTYPE=targeted"
    assert r["init"] == "systemd" and s.init["path"] == "/sbin/init" and s.init["target"] == "/usr/lib/systemd/systemd"
    assert r["kernel_modules"]["count"] == 4 and r["kernel_modules"]["signature_enforced"] is False
    assert s.kernel_modules["configs"] == ["/boot/config-6.1.0"] and r["kernel_modules"]["loadable"] is True
    assert r["lockdown"] == "none"
    assert r["path_executables"]["count"] == 11
    sources = {e["source"] for e in r["evidence"]}
    assert "ROOT (ext4): /etc/selinux/config" in sources and "USR (squashfs): /bin/bash" in sources


@needs_images
def test_bare_tree_negative_cases():
    s = inventory(os_tree("bare"))
    r = s.to_report()
    _validate(r)
    assert r["shells"] == [] and r["package_managers"] == [] and r["setuid"] == [] and r["app_managers"] == []
    assert r["sshd"] is True and r["sshd_enabled"] is False            # binary, but nothing starts it
    sock = next(u for u in s.sshd_units if u["unit"] == "sshd.socket")
    assert sock["masked"] and not sock["enabled"] and sock["state"] == "masked"
    assert sock["evidence"][0]["detail"] == "sshd.socket is masked"
    assert sock["reachable_from_default_target"] is None                   # no default.target in this tree
    assert r["selinux"] == "absent"
    assert r["init"] is None
    assert r["kernel_modules"] == {"count": 0, "signature_enforced": True, "loadable": False,
                                   "reason": "CONFIG_MODULES is not set (/usr/boot/config): no module can be loaded"}
    assert r["path_executables"]["count"] == 3


@needs_images
def test_shipped_etc_defaults_are_used_and_marked():
    # bare ROOT (no /etc/selinux/config) with the full /usr: the factory default decides
    s = inventory(os_tree("bare", usr_name="full"))
    sel = s.selinux
    assert sel["mode"] == "permissive" and sel["config_is_default"]
    assert sel["config"] == "/usr/share/factory/etc/selinux/config" and sel["policy_type"] == "fortified"
    assert sel["trail"][0]["observed"] is False and "default /etc content" in sel["trail"][0]["detail"]
    assert inventory(os_tree("bare", usr_name="full"), etc_defaults=()).selinux["mode"] == "permissive"
    no_config = inventory(os_tree("bare", usr_name="full"), etc_defaults=()).selinux
    assert no_config["config"] is None and "inferred" in no_config["decided_by"]


@needs_images
@pytest.mark.parametrize("line, selinux, decided", [
    ("selinux=0", "disabled", "kernel command line selinux=0"),
    ("selinux=1 enforcing=0", "permissive", "kernel command line enforcing=0"),
    ("enforcing=1", "enforcing", "kernel command line enforcing=1"),
    ("security=apparmor", "disabled", "kernel command line security=apparmor"),
    ("lsm=landlock,lockdown,yama", "disabled", "kernel command line lsm= without selinux"),
    ("lsm=lockdown,selinux", "enforcing", "/etc/selinux/config SELINUX=enforcing"),
    ("-- selinux=0", "enforcing", "/etc/selinux/config SELINUX=enforcing"),     # an init argument, not the kernel's
])
def test_selinux_command_line_overrides(full, line, selinux, decided):
    s = inventory(full, KernelCmdline(line, origin="test cmdline"))
    assert s.selinux["mode"] == selinux and s.selinux["decided_by"] == decided
    if "command line" in decided:
        assert s.selinux["trail"][-1]["source"].endswith("from test cmdline")


@needs_images
def test_module_lockdown_and_init_overrides(full):
    s = inventory(full, KernelCmdline("module.sig_enforce=1"))
    assert s.kernel_modules["signature_enforced"] is True and "module.sig_enforce=1" in s.kernel_modules["reason"]
    s = inventory(full, KernelCmdline("lockdown=integrity"))
    assert s.lockdown["mode"] == "integrity" and s.kernel_modules["signature_enforced"] is True
    s = inventory(full, KernelCmdline("lockdown=confidentiality lsm=yama"))
    assert s.lockdown["mode"] == "confidentiality" and "no effect" in s.lockdown["note"]
    s = inventory(full, KernelCmdline("module.sig_enforce=0 lockdown=bogus"))
    assert s.kernel_modules["signature_enforced"] is False and s.lockdown["mode"] == "none"
    s = inventory(full, walk_setuid=False)
    assert s.setuid == [] and "setuid/setgid walk skipped" in s.warnings
    s = inventory(full, skip_trees=("/proc", "/opt"))
    assert [x["path"] for x in s.setuid] == ["/usr/bin/su"]
    s = inventory(full, KernelCmdline("init=/bin/busybox"))
    assert s.init["name"] == "busybox" and s.init["target"] == "/usr/bin/busybox"
    assert s.init["decided_by"] == "kernel command line init="


# ---- metadata differential against the kernel and GNU find ----------------------------------------
_CHILD = r"""
import json, os, sys
dirs, names = json.loads(sys.stdin.read())
os.chroot(sys.argv[1]); os.chdir("/")
shells = {}
for d in dirs:
    for n in names:
        p = d + "/" + n
        if not os.path.lexists(p) or not os.path.isfile(p):
            continue
        real = os.path.realpath(p)
        if os.stat(real).st_mode & 0o111:
            shells.setdefault(real, set()).add(os.path.join(os.path.realpath(d), n))
print(json.dumps({k: sorted(v) for k, v in shells.items()}))
"""


@needs_images
@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and chroot need root")
@pytest.mark.parametrize("name", ["full", "bare"])
def test_metadata_matches_kernel_and_find(name):
    ours = inventory(os_tree(name)).to_report()
    with tempfile.TemporaryDirectory(prefix="surface-ref-") as tmp:
        mnt = Path(tmp)
        run(["mount", "-o", "loop,ro", "-t", "ext4", str(root_image(name)), str(mnt)])
        try:
            run(["mount", "-o", "loop,ro", "-t", "squashfs", str(usr_image(name)), str(mnt / "usr")])
            try:
                shells = json.loads(subprocess.run([sys.executable, "-c", _CHILD, str(mnt)], check=True, text=True,
                                                   input=json.dumps([list(DEFAULT_PATH), list(SHELL_NAMES)]),
                                                   capture_output=True).stdout)

                def find(*args: str) -> list[str]:
                    out = subprocess.run(["find", str(mnt), *args], capture_output=True, text=True, check=True).stdout
                    return sorted("/" + line[len(str(mnt)):].lstrip("/") for line in out.splitlines())

                prune = ["(", "-path", f"{mnt}/proc", "-o", "-path", f"{mnt}/sys", "-o", "-path", f"{mnt}/dev", ")", "-prune", "-o"]
                setuid = find(*prune, "-type", "f", "-perm", "-4000", "-print")
                setgid = find(*prune, "-type", "f", "-perm", "-2000", "-print")
                modules = [p for p in find("-path", f"{mnt}/usr/lib/modules/*", "-type", "f") if
                           p.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz"))]
                path_dirs = [str(mnt) + d for d in DEFAULT_PATH if os.path.isdir(str(mnt) + d)]
                stat_out = subprocess.run(["find", "-L", *path_dirs, "-maxdepth", "1", "-type", "f", "-perm", "/111",
                                           "-exec", "stat", "-L", "-c", "%d:%i", "{}", "+"],
                                          capture_output=True, text=True).stdout
                executables = set(stat_out.split())
            finally:
                run(["umount", str(mnt / "usr")])
        finally:
            run(["umount", str(mnt)])
    assert ours["shells"] == sorted(shells)
    assert {d["path"]: d["names"] for d in ours["shell_details"]} == shells
    assert ours["setuid"] == setuid and ours["setgid"] == setgid
    assert ours["kernel_modules"]["count"] == len(modules)
    assert ours["path_executables"]["count"] == len(executables)
