"""Variation suite, unit enablement rules that need no disk (the in-memory filesystem): first-boot
presets (machine-id(5) "First Boot Semantics", systemd src/core/manager.c manager_preset_all in
enable-only mode, systemd.preset(5)), and a failing ConditionPathExists= shown on an enabled unit.
The same rules end to end on disk images: tests/test_variants_debian.py."""

from __future__ import annotations

import pytest

from immutools.fs.memory import File, MemoryFileSystem, Symlink
from immutools.system.units import UnitSet

UNITS = "/usr/lib/systemd/system"
BASE = {
    "/usr/lib/os-release": "ID=sample\nVERSION_ID=1\n",
    f"{UNITS}/multi-user.target": "[Unit]\nDescription=Multi-User\n",
    f"{UNITS}/default.target": Symlink("multi-user.target"),
    f"{UNITS}/sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n",
    f"{UNITS}/getty@.service": "[Service]\nExecStart=/sbin/agetty %I\n[Install]\nWantedBy=multi-user.target\n"
                               "DefaultInstance=tty1\n",
    f"{UNITS}/serial@.service": "[Service]\nExecStart=/sbin/agetty %I\n[Install]\nWantedBy=multi-user.target\n",
    f"{UNITS}/static.service": "[Service]\nExecStart=/bin/true\n",
}


def _units(extra: dict) -> UnitSet:
    return UnitSet(MemoryFileSystem(BASE | extra))


@pytest.mark.parametrize("machine_id, first", [
    (None, True),                                   # missing: first boot
    ("uninitialized\n", True),                      # systemd's marker: first boot
    ("", False),                                    # empty: not a first boot (machine-id(5) rule 4)
    ("0123456789abcdef0123456789abcdef\n", False),  # a machine ID
])
def test_first_boot_from_machine_id(machine_id, first):
    units = _units({"/etc/machine-id": File(machine_id.encode())} if machine_id is not None else {})
    assert units.first_boot().first_boot is first
    assert units.enablement("sshd.service").enabled is first         # no preset file: systemd enables
    assert units.unit_file_state("sshd.service") == "disabled"       # the image holds no link either way


def test_preset_rules_first_match_wins_and_templates():
    units = _units({"/usr/lib/systemd/system-preset/50-site.preset":
                    "disable serial@.service\nenable getty@.service\nenable sshd.service\ndisable *\n"})
    sshd = units.enablement("sshd.service")
    assert sshd.enabled and sshd.reachable is True                   # pulled in from default.target
    assert sshd.links[0].preset.line == 3 and sshd.links[0].owner == "multi-user.target"
    assert "at first boot" in sshd.evidence()[0]["detail"] and sshd.evidence()[0]["observed"] is False
    # a template is enabled through its DefaultInstance=, one without it cannot be
    assert units.enablement("getty@tty1.service").enabled
    assert not units.enablement("serial@ttyS0.service").enabled
    assert not units.enablement("static.service").enabled          # no [Install]: presets do nothing


def test_preset_does_not_override_mask_or_disable():
    units = _units({"/etc/systemd/system/sshd.service": Symlink("/dev/null"),
                    "/usr/lib/systemd/system-preset/99-default.preset": "disable *\n"})
    assert units.enablement("sshd.service").masked and not units.enablement("sshd.service").enabled
    assert not units.enablement("getty@tty1.service").enabled


def test_failing_condition_is_evidence_of_an_enabled_unit():
    units = _units({f"{UNITS}/sshd.service": "[Unit]\nConditionPathExists=!/etc/ssh/sshd_not_to_be_run\n"
                                             "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n",
                    "/etc/systemd/system/multi-user.target.wants/sshd.service": Symlink(f"{UNITS}/sshd.service"),
                    "/etc/ssh/sshd_not_to_be_run": "",
                    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n"})
    state = units.enablement("sshd.service")
    assert state.enabled and state.condition_failure is not None
    assert "ConditionPathExists=!/etc/ssh/sshd_not_to_be_run fails" in state.condition_failure["detail"]
    assert state.condition_failure in state.evidence()
