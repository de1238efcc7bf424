"""systemd unit files: syntax on strings, escaping against ``systemd-escape``, and lookup,
drop-ins, masking and enablement read from real images (ext4 ROOT + squashfs /usr) compared
with ``systemctl --root`` and ``systemd-analyze --root cat-config`` on the same tree."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from builders import have
from immutools.system.units import (
    UnitSet,
    escape,
    escape_path,
    mount_unit_name,
    parse_unit_text,
    split_name,
    unescape,
    unescape_path,
)
from system_trees import composed, os_tree

needs_images = pytest.mark.skipif(not (have("mke2fs") and have("mksquashfs")), reason="mke2fs or mksquashfs missing")


# ---- syntax ---------------------------------------------------------------------------------------
def test_parse_syntax():
    text = ("# comment\n; other\n[Unit]\nDescription = spaced  value \nAfter=a.service\nAfter=b.service\n"
            "[Service]\nExecStart=/bin/x \\\n  --flag \\\n# comment inside\n  --last\nEnvironment=A=1\n"
            "Environment=\nEnvironment=B=2\nnot an assignment\n[Broken\nExecStop=/bin/y \\\n")
    assignments, warnings = parse_unit_text(text, "/x.service")
    got = [(a.section, a.key, a.value, a.line) for a in assignments]
    assert got[0] == ("Unit", "Description", "spaced  value", 4)
    assert ("Service", "ExecStart", "/bin/x    --flag    --last", 8) in got
    assert ("Service", "Environment", "", 13) in got
    assert got[-1][:3] == ("Service", "ExecStop", "/bin/y")
    assert len(warnings) == 2 and "line 15" in warnings[0] and "line 16" in warnings[1]
    assert split_name("getty@tty1.service") == ("getty", "tty1", "service")
    assert split_name("getty@.service") == ("getty", "", "service")
    assert split_name("sshd.socket") == ("sshd", None, "socket")


# ---- escaping against systemd-escape ------------------------------------------------------------
ESCAPE_PATHS = ["/", "/root/.aws", "//a//b/", "/a b/ü-x", "/.x/.y", "/a\\b", "/var/lib/kernel-devel/.overlay/lower",
                "/x86_64-bottlerocket-linux-gnu/sys-root/usr/lib/modules", "/a:b_c.d", "/tab\there", "/./a/.", "/ä/€/🙂",
                "/with%percent", "/-lead", "/trail-"]


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-escape", *args], capture_output=True, text=True)


@pytest.mark.skipif(not have("systemd-escape"), reason="systemd-escape not installed (Debian package systemd)")
def test_escape_path_matches_systemd_escape():
    rng = random.Random(42)
    paths = list(ESCAPE_PATHS)
    alphabet = "abc/.-_:\\ é\t~"
    for _ in range(60):
        paths.append("/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 14))))
    escaped = []
    for path in paths:
        proc = _tool("--path", "--", path)
        if proc.returncode != 0:
            with pytest.raises(ValueError):
                escape_path(path)
            continue
        ours = escape_path(path)
        assert ours == proc.stdout.rstrip("\n"), path
        escaped.append(ours)
    for name in escaped:
        assert unescape_path(name) == _tool("--unescape", "--path", "--", name).stdout.rstrip("\n"), name
    for text in ("a/b c", ".hidden", "ü", "x-y"):
        assert escape(text) == _tool("--", text).stdout.rstrip("\n")
        assert unescape(escape(text)) == _tool("--unescape", "--", escape(text)).stdout.rstrip("\n")


@pytest.mark.skipif(not have("systemd-escape"), reason="systemd-escape not installed (Debian package systemd)")
def test_unescape_path_refusals_match_systemd_escape():
    for name in ["root-.aws", "a\\x2db", "-", "a--b", "-a", "a-", "x\\x2f", "\\xzz", "a\\x2", "a\\x2Fb", "\\x2e",
                 "a\\x2e\\x2e-b", "..", "a-..-b", "a\\x2d\\x2d", "var-lib-foo"]:
        proc = _tool("--unescape", "--path", "--", name)
        if proc.returncode != 0:
            with pytest.raises(ValueError):
                unescape_path(name)
        else:
            assert unescape_path(name) == proc.stdout.rstrip("\n"), name
    with pytest.raises(ValueError):
        unescape_path("")
    with pytest.raises(ValueError):
        unescape_path("a\\x00b")                      # systemd truncates at NUL; we refuse
    assert mount_unit_name("/root/.aws") == "root-.aws.mount"


# ---- the unit set of a real image -----------------------------------------------------------------
UNITS = ["en.service", "alias1.service", "sshd.socket", "masked.service", "empty.service", "static.service",
         "dis.service", "ind.service", "vend.service", "override.service", "getty@tty1.service", "getty@.service",
         "cont.service", "a-b-c.service", "var-lib-foo.mount", "tmp.mount", "boot.automount", "sshd@.service",
         "sshd.service", "default.target", "multi-user.target", "sockets.target", "getty@tty2.service"]


@pytest.fixture(scope="module")
def full_tree():
    return os_tree("full")


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory):
    return composed("full", tmp_path_factory.mktemp("composed") / "root")


@needs_images
@pytest.mark.skipif(not have("systemctl"), reason="systemctl not installed (Debian package systemd)")
def test_unit_file_state_matches_systemctl(full_tree, reference_root):
    units = UnitSet(full_tree)
    for name in UNITS + ["nope.service"]:
        proc = subprocess.run(["systemctl", f"--root={reference_root}", "is-enabled", name], capture_output=True, text=True)
        theirs = proc.stdout.strip() or None
        if proc.returncode != 0 and theirs in (None, ""):
            theirs = None                             # no such unit file
        assert units.unit_file_state(name) == theirs, name


@needs_images
@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze not installed (Debian package systemd)")
def test_fragment_and_dropins_match_cat_config(full_tree, reference_root):
    units = UnitSet(full_tree)
    for name in UNITS:
        unit = units.load(name)
        if unit is None or units.find(name).alias_of or split_name(name)[1]:
            continue                                  # cat-config follows neither aliases nor templates
        proc = subprocess.run(["systemd-analyze", f"--root={reference_root}", "cat-config", f"systemd/system/{name}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            continue                                  # templates/instances: not config files
        files = [line[2:].strip()[len(str(reference_root)):] for line in proc.stdout.splitlines() if line.startswith("# /")]
        # cat-config prints a drop-in masked by a /dev/null link too (empty); systemd does not load it
        files = [f for f in files if not (reference_root / f.lstrip("/")).is_symlink()
                 or Path("/", *(reference_root / f.lstrip("/")).readlink().parts[1:]) != Path("/dev/null")]
        # cat-config knows the unit's own .d directory only (not service.d or dash prefixes)
        own = [p for p in unit.dropins if p.rsplit("/", 2)[-2] == f"{name}.d"]
        assert [unit.path] + own == files, name


@needs_images
def test_lookup_dropins_masking_enablement(full_tree):
    units = UnitSet(full_tree)
    assert units.paths == ["/etc/systemd/system", "/usr/lib/systemd/system"]   # /lib is /usr/lib
    en = units.load("en.service")
    assert en.fragment == "/usr/lib/systemd/system/en.service"
    assert en.dropins == ["/usr/lib/systemd/system/service.d/05-top.conf",
                          "/etc/systemd/system/en.service.d/10-o.conf",      # hides the /usr one
                          "/usr/lib/systemd/system/en.service.d/20-v.conf"]
    assert en.values("Service", "ExecStart") == ["/usr/bin/en --etc"]          # reset, then the /etc value
    assert en.value("Service", "User") is None and en.value("Service", "Nice") == "5"
    a = en.assignment("Service", "ExecStart")
    assert (a.path, a.line) == ("/etc/systemd/system/en.service.d/10-o.conf", 3)
    assert a.evidence(full_tree)["source"] == "ROOT (ext4): /etc/systemd/system/en.service.d/10-o.conf"
    assert units.load("a-b-c.service").list_values("Service", "Environment") == ["TOP=1", "PREFIX=a", "PREFIX=ab"]
    assert units.load("vend.service").value("Service", "Nice") is None          # drop-in masked by /etc
    assert units.load("override.service").value("Service", "ExecStart") == "/usr/bin/etc-version"
    assert units.load("alias1.service").fragment == en.fragment
    assert units.load("masked.service") is None and units.load("empty.service") is None
    assert units.load("getty@tty1.service").fragment.endswith("/getty@.service")

    states = {n: units.enablement(n) for n in ("en.service", "sshd.socket", "masked.service", "vend.service",
                                              "dis.service", "getty@tty1.service", "sshd.service", "nope.service")}
    assert states["en.service"].enabled and states["en.service"].wanted_by == ["multi-user.target"]
    assert states["sshd.socket"].enabled and states["sshd.socket"].wanted_by == ["sockets.target"]
    assert not states["masked.service"].enabled and states["masked.service"].masked          # linked, but masked
    assert states["masked.service"].mask_path == "/etc/systemd/system/masked.service"
    assert states["vend.service"].enabled and states["vend.service"].links[0].vendor       # vendor-enabled
    assert not states["dis.service"].enabled and not states["sshd.service"].enabled
    assert states["getty@tty1.service"].enabled and not states["getty@tty1.service"].reachable   # getty.target is not pulled in
    assert states["sshd.socket"].reachable and states["en.service"].reachable
    assert not states["nope.service"].found and not states["nope.service"].enabled
    ev = states["sshd.socket"].evidence(full_tree)
    assert ev[0]["source"] == "ROOT (ext4): /etc/systemd/system/sockets.target.wants/sshd.socket"
    assert ev[0]["detail"] == "sockets.target wants sshd.socket"

    assert units.default_target() == "multi-user.target"
    pulled = units.pulled_in()
    assert {"multi-user.target", "basic.target", "sockets.target", "sshd.socket", "en.service", "vend.service"} <= set(pulled)
    assert "masked.service" not in pulled and "dis.service" not in pulled
    assert pulled["sshd.socket"] == "sockets.target" and pulled["sockets.target"] == "basic.target"


@needs_images
@pytest.mark.skipif(not have("systemctl"), reason="systemctl not installed (Debian package systemd)")
def test_presets_match_systemctl_preset_all(full_tree, tmp_path):
    units = UnitSet(full_tree)
    assert units.preset("sshd.socket").action == "enable" and units.preset("sshd.socket").line == 2
    assert units.preset("en.service").action == "disable"
    copy = composed("full", tmp_path / "root")
    subprocess.run(["systemctl", f"--root={copy}", "preset-all"], capture_output=True, check=True)
    for name in ("en.service", "sshd.socket", "dis.service", "vend.service", "cont.service", "sshd.service"):
        state = subprocess.run(["systemctl", f"--root={copy}", "is-enabled", name], capture_output=True, text=True).stdout.strip()
        assert (state == "enabled") == (units.preset(name).action == "enable"), name


@needs_images
def test_typed_views(full_tree):
    units = UnitSet(full_tree)
    m = units.mount_unit("var-lib-foo.mount")
    assert (m.what, m.where, m.type, m.options) == ("/dev/disk/by-label/DATA", "/var/lib/foo", "ext4", ["noatime", "nodev"])
    assert [e["detail"].split(" (")[0] for e in m.evidence(full_tree)] == [
        "[Mount] What=/dev/disk/by-label/DATA", "[Mount] Where=/var/lib/foo", "[Mount] Type=ext4", "[Mount] Options=noatime,nodev"]
    tmp = units.mount_unit("tmp.mount")
    assert tmp.options == ["mode=1777", "strictatime", "nosuid"]
    assert {u.name for u in units.mount_units()} == {"var-lib-foo.mount", "tmp.mount"}
    assert units.automount_where("boot.automount") == "/boot"
    assert units.socket_listens("sshd.socket") == {"ListenStream": ["22", "[::]:2222"]}
    assert units.exec_start("sshd@tty.service") == ["-/usr/sbin/sshd -i"]
    assert units.exec_start("nope.service") == [] and units.mount_unit("nope.mount") is None
    assert "sshd.socket" in units.names() and "service.d" not in units.names()


def test_unit_set_on_a_tree_without_systemd(tmp_path):
    from immutools.system.rootview import OsTree
    empty = OsTree()
    units = UnitSet(empty)
    assert units.paths == [] and units.find("x.service") is None and units.pulled_in() == {"default.target": None}
