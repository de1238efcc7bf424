"""Variation suite, Debian and other conventionally installed systems: os-release forms and the
ways an SSH server is (or is not) started at boot.

Each variant is the Debian 12 genericcloud replica changed with ``debugfs -w`` on its root ext4
(``tests/variants.py``); the files written are in ``data/replica-specs/variant-files`` with their
upstream sources. Every variant must yield the facts its sources say, or a warning naming why not.
"""

from __future__ import annotations

import pytest

from variants import ExtPut, ExtRemove, ExtSymlink, derive, variant_file

from immutools.scan import scan

BASE = "debian-12-amd64-genericcloud"
ROOT = 1                                     # the root ext4 (debian-cloud-images partition.GRUB_CLOUD_AMD64)
UNITS = "/etc/systemd/system"
VENDOR_UNITS = "/usr/lib/systemd/system"
# ``systemctl disable ssh`` removes the [Install] links: the WantedBy= link and the Alias= link
# (systemd src/shared/install.c unit_file_disable)
DISABLE_SSH = [ExtRemove(ROOT, f"{UNITS}/multi-user.target.wants/ssh.service"), ExtRemove(ROOT, f"{UNITS}/sshd.service")]
# Debian's real unit (with ConditionPathExists=!/etc/ssh/sshd_not_to_be_run) instead of the replica's short one
REAL_SSH_SERVICE = ExtPut(ROOT, f"{VENDOR_UNITS}/ssh.service", variant_file("debian/ssh.service"))
MACHINE_ID = b"4c1f0e2d9a8b47c6b5a4f3e2d1c0b9a8\n"
# The image as debian-cloud-images leaves it: /etc/machine-id emptied (config_space/bookworm/scripts/
# LAST/10-cleanup, ``empty_files``), so its first boot is not a "first boot" (machine-id(5)) and
# presets are not applied. The base replica has no /etc/machine-id at all.
AS_SHIPPED = [ExtPut(ROOT, "/etc/machine-id", b"", mode=0o444)]
PRESET = ExtPut(ROOT, "/usr/lib/systemd/system-preset/90-appliance.preset", variant_file("systemd/90-appliance.preset"))

VARIANTS = {
    # os-release
    "os-release-usr-lib-only": [ExtRemove(ROOT, "/etc/os-release")],
    "os-release-testing": [ExtPut(ROOT, "/usr/lib/os-release", variant_file("debian/os-release-testing")),
                           ExtPut(ROOT, "/etc/debian_version", b"trixie/sid\n")],
    "os-release-mkosi": [ExtPut(ROOT, "/usr/lib/os-release", variant_file("debian/os-release-testing-mkosi")),
                         ExtPut(ROOT, "/etc/debian_version", b"trixie/sid\n")],
    "os-release-no-name": [ExtPut(ROOT, "/usr/lib/os-release", variant_file("debian/os-release-no-name"))],
    "os-release-arch": [ExtPut(ROOT, "/usr/lib/os-release", variant_file("arch/os-release"))],
    "os-release-arch-mkosi": [ExtPut(ROOT, "/usr/lib/os-release", variant_file("arch/os-release-mkosi"))],
    # how sshd is started
    "ssh-install-only": [*AS_SHIPPED, REAL_SSH_SERVICE, *DISABLE_SSH],
    "ssh-masked": [*AS_SHIPPED, REAL_SSH_SERVICE, ExtSymlink(ROOT, f"{UNITS}/ssh.service", "/dev/null")],
    "ssh-socket": [*AS_SHIPPED, REAL_SSH_SERVICE, *DISABLE_SSH,
                   ExtPut(ROOT, f"{VENDOR_UNITS}/ssh.socket", variant_file("debian/ssh.socket")),
                   ExtSymlink(ROOT, f"{UNITS}/sockets.target.wants/ssh.socket", f"{VENDOR_UNITS}/ssh.socket")],
    "ssh-vendor-wants": [*AS_SHIPPED, REAL_SSH_SERVICE, *DISABLE_SSH,
                         ExtSymlink(ROOT, f"{VENDOR_UNITS}/multi-user.target.wants/ssh.service", "../ssh.service")],
    "ssh-not-to-be-run": [*AS_SHIPPED, REAL_SSH_SERVICE, ExtPut(ROOT, "/etc/ssh/sshd_not_to_be_run", b"")],
    # presets: first boot by "uninitialized" (machine-id(5) rule 3) or a missing file (rule 2)
    "ssh-preset-first-boot": [REAL_SSH_SERVICE, *DISABLE_SSH, PRESET,
                              ExtPut(ROOT, "/etc/machine-id", b"uninitialized\n", mode=0o444)],
    "ssh-preset-booted": [REAL_SSH_SERVICE, *DISABLE_SSH, PRESET, ExtPut(ROOT, "/etc/machine-id", MACHINE_ID, mode=0o444)],
    "ssh-preset-shipped": [*AS_SHIPPED, REAL_SSH_SERVICE, *DISABLE_SSH, PRESET],
    "ssh-preset-disabled": [REAL_SSH_SERVICE, *DISABLE_SSH,
                            ExtPut(ROOT, "/usr/lib/systemd/system-preset/99-default.preset",
                                   variant_file("systemd/99-default-disable.preset"))],
    "ssh-no-preset-first-boot": [REAL_SSH_SERVICE, *DISABLE_SSH],
}

_reports: dict[str, dict] = {}


def report_of(name: str) -> dict:
    if name not in _reports:
        _reports[name] = scan(str(derive(f"debian-{name}", BASE, VARIANTS[name])), progress=False)
    return _reports[name]


def _warned(report: dict, *needles: str) -> bool:
    return any(all(n in w for n in needles) for w in report["warnings"])


def _unit(report: dict, name: str) -> dict:
    return next(u for u in report["surface"]["sshd_units"] if u["unit"] == name)


def _root_is_mounted(report: dict) -> None:
    """What every variant keeps: / from the fstab line, observed."""
    root = next(m for m in report["mounts"] if m["target"] == "/")
    assert root["observed"] is True and root["source"].startswith("PARTUUID=")


# ------------------------------------------------------------------------------------------------
# os-release
# ------------------------------------------------------------------------------------------------
def test_os_release_only_in_usr_lib():
    """os-release(5): /etc/os-release first, else /usr/lib/os-release. Without the /etc link the
    identity comes, unchanged, from /usr/lib/os-release."""
    report = report_of("os-release-usr-lib-only")
    assert report["os"]["collector"] == "debian"
    assert (report["os"]["id"], report["os"]["name"], report["os"]["version"]) == ("debian", "Debian GNU/Linux", "12")
    assert any("/usr/lib/os-release" in e["source"] for e in report["os"]["evidence"])
    assert not any("/etc/os-release" in e["source"] for e in report["os"]["evidence"])
    assert report["completeness"]["status"] == "complete"
    _root_is_mounted(report)


def test_os_release_without_version_warns():
    """Debian testing ships no VERSION_ID and no VERSION: the version is not invented (not even
    from /etc/debian_version's "trixie/sid"); the report says it is missing and why."""
    report = report_of("os-release-testing")
    assert report["os"]["collector"] == "debian" and report["os"]["id"] == "debian"
    assert report["os"]["version"] is None
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert facts["os.version"]["status"] == "missing"
    assert "VERSION_ID" in facts["os.version"]["reason"] and "trixie/sid" in facts["os.version"]["reason"]
    assert _warned(report, "completeness: os.version is missing", "VERSION_ID")
    assert report["distribution"]["debian_version"] == "trixie/sid"
    _root_is_mounted(report)


def test_image_version_is_the_version_when_nothing_else_is():
    """An mkosi image of Debian testing: IMAGE_VERSION is the version (OsIdentity.from_os_release),
    said to come from IMAGE_VERSION; nothing is missing."""
    report = report_of("os-release-mkosi")
    assert report["os"]["version"] == "2025.07.1"
    assert report["os"]["version_source"] == "IMAGE_VERSION"
    facts = {f["fact"]: f for f in report["completeness"]["facts"]}
    assert facts["os.version"]["status"] == "observed"
    assert not _warned(report, "os.version")


def test_os_release_without_name():
    """NAME= and PRETTY_NAME= are optional: the distribution is still recognised by ID and the
    name is left empty rather than made up."""
    report = report_of("os-release-no-name")
    assert report["os"]["collector"] == "debian"
    assert (report["os"]["id"], report["os"]["version"]) == ("debian", "12")
    assert report["os"]["name"] is None and report["os"]["pretty_name"] is None
    assert report["completeness"]["status"] == "complete"


def test_generic_collector_image_version():
    """A system no collector knows (Arch Linux, rolling, built by mkosi): the generic collector
    takes IMAGE_VERSION as the version, and BUILD_ID is kept."""
    report = report_of("os-release-arch-mkosi")
    assert report["os"]["collector"] == "generic" and report["os"]["id"] == "arch"
    assert report["os"]["version"] == "42.3" and report["os"]["version_source"] == "IMAGE_VERSION"
    assert report["os"]["build_id"] == "rolling"
    _root_is_mounted(report)


def test_generic_collector_rolling_release_warns():
    """Arch Linux without IMAGE_VERSION has no version at all: the generic collector (no
    guarantees to fall back on) warns and names BUILD_ID=rolling."""
    report = report_of("os-release-arch")
    assert report["os"]["collector"] == "generic" and report["os"]["version"] is None
    assert _warned(report, "os.version unknown", "VERSION_ID", "BUILD_ID=rolling")


# ------------------------------------------------------------------------------------------------
# SSH at boot
# ------------------------------------------------------------------------------------------------
def test_base_replica_starts_sshd():
    """The base: ssh.service enabled by its /etc/systemd/system/multi-user.target.wants link."""
    report = scan(str(derive("debian-base", BASE, [])), progress=False)
    row = _unit(report, "ssh.service")
    assert row["enabled"] is True and row["state"] == "enabled"
    assert report["surface"]["sshd_enabled"] is True


def test_installed_but_not_enabled():
    """[Install] WantedBy= alone enables nothing: after ``systemctl disable ssh`` the unit is
    'disabled' and sshd does not start, though the binary is there."""
    report = report_of("ssh-install-only")
    row = _unit(report, "ssh.service")
    assert row["state"] == "disabled" and row["enabled"] is False and row["wanted_by"] == []
    assert report["surface"]["sshd"] is True
    assert report["surface"]["sshd_enabled"] is False


def test_masked_unit_is_not_started():
    """``systemctl mask ssh`` (/etc/systemd/system/ssh.service -> /dev/null) wins over the still
    present multi-user.target.wants link."""
    report = report_of("ssh-masked")
    row = _unit(report, "ssh.service")
    assert row["masked"] is True and row["state"] == "masked" and row["enabled"] is False
    assert any("masked" in e["detail"] for e in row["evidence"])
    assert report["surface"]["sshd_enabled"] is False


def test_socket_activation_counts_as_started():
    """ssh.service disabled, ssh.socket enabled in sockets.target.wants: port 22 is open at boot
    and a connection starts sshd (systemd.socket(5)), so the SSH server is enabled."""
    report = report_of("ssh-socket")
    assert _unit(report, "ssh.service")["enabled"] is False
    sock = _unit(report, "ssh.socket")
    assert sock["enabled"] is True and sock["state"] == "enabled" and sock["wanted_by"] == ["sockets.target"]
    assert report["surface"]["sshd_enabled"] is True


def test_vendor_wants_link_enables():
    """A link in /usr/lib/systemd/system/multi-user.target.wants (how Flatcar enables sshd.socket)
    pulls the unit in although ``systemctl is-enabled`` counts only links under /etc."""
    report = report_of("ssh-vendor-wants")
    row = _unit(report, "ssh.service")
    assert row["enabled"] is True and row["wanted_by"] == ["multi-user.target"]
    assert any("/usr/lib/systemd/system/multi-user.target.wants/ssh.service" in e["source"] for e in row["evidence"])
    assert report["surface"]["sshd_enabled"] is True


def test_sshd_not_to_be_run_is_shown():
    """Debian's switch: with /etc/ssh/sshd_not_to_be_run, ssh.service is enabled but its
    ConditionPathExists=! fails at boot; the unit's evidence says so."""
    report = report_of("ssh-not-to-be-run")
    row = _unit(report, "ssh.service")
    assert row["enabled"] is True
    assert any("ConditionPathExists=!/etc/ssh/sshd_not_to_be_run fails" in e["detail"] for e in row["evidence"])


def test_sshd_not_to_be_run_is_not_started():
    """... so sshd does not run: the SSH server is not enabled."""
    assert report_of("ssh-not-to-be-run")["surface"]["sshd_enabled"] is False


def test_preset_enables_on_first_boot():
    """No links, a preset 'enable ssh.service', and /etc/machine-id 'uninitialized': systemd's first boot
    applies the presets (enable-only) before loading units, so sshd starts -- inferred, with the
    preset line and the machine-id state as evidence."""
    report = report_of("ssh-preset-first-boot")
    row = _unit(report, "ssh.service")
    assert row["state"] == "disabled" and row["preset"] == "enable"
    assert row["enabled"] is True and row["wanted_by"] == ["multi-user.target"]
    preset_ev = [e for e in row["evidence"] if "90-appliance.preset" in e["source"]]
    assert preset_ev and all(e["observed"] is False for e in preset_ev)
    assert any("first boot" in e["detail"] and "uninitialized" in e["detail"] for e in row["evidence"])
    assert report["surface"]["sshd_enabled"] is True


@pytest.mark.parametrize("name", ["ssh-preset-booted", "ssh-preset-shipped"])
def test_preset_does_nothing_without_first_boot(name):
    """The same preset on a system that has booted (a machine ID in /etc/machine-id) or that
    ships an empty /etc/machine-id (machine-id(5): not a first boot): presets are not applied,
    ssh.service stays disabled."""
    report = report_of(name)
    row = _unit(report, "ssh.service")
    assert row["preset"] == "enable" and row["enabled"] is False
    assert report["surface"]["sshd_enabled"] is False


def test_no_preset_file_enables_everything_on_first_boot():
    """No preset file at all and a first boot (no /etc/machine-id): systemd.preset(5) enables
    what no rule matches, so the disabled ssh.service is enabled at first boot -- why
    distributions booting with an empty /etc ship 'disable *'."""
    report = report_of("ssh-no-preset-first-boot")
    row = _unit(report, "ssh.service")
    assert row["preset"] == "enable" and row["enabled"] is True
    assert any("no preset file" in e["source"] and "/etc/machine-id is missing" in e["detail"] for e in row["evidence"])
    assert report["surface"]["sshd_enabled"] is True


def test_disable_all_preset_on_first_boot():
    """First boot with only 'disable *' (what distributions booting with an empty /etc ship):
    nothing is enabled by presets."""
    report = report_of("ssh-preset-disabled")
    row = _unit(report, "ssh.service")
    assert row["preset"] == "disable" and row["enabled"] is False
    assert report["surface"]["sshd_enabled"] is False
