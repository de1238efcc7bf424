"""Variation suite, Talos: the boot paths of its history -- GRUB with the version only in the entry
title (<= 1.9, os-release empty in the image), systemd-boot with the OS only inside a UKI (1.10 arm64,
1.12 Secure Boot with two UKIs), both at once (1.13 dual-boot) -- and the usr-merged rootfs (>= 1.10:
/usr/bin/init). The replicas exist (data/replica-specs/talos-*.yaml, from siderolabs/talos at the
tags named there); this file pins, per era, where each fact comes from and that / and /var (Talos
mounts them in code) are never silently absent. One derived variant: the sd-boot ESP without
loader/loader.conf (mdel): systemd-boot then boots the newest entry with its built-in defaults
(systemd/systemd src/boot/boot.c: menu timeout 0 unless set, the default the first entry of its sorted menu), so
the facts stay the same."""

from __future__ import annotations

import pytest

from replicas import build_replica, replica_manifest
from variants import FatDelete, derive

from immutools.scan import scan

ERAS = ["talos-v1.7.6-amd64-metal", "talos-v1.9.5-amd64-upgraded", "talos-v1.10.4-arm64-metal",
        "talos-v1.12.2-amd64-secureboot-upgraded", "talos-v1.13.0-amd64-metal"]
ESP = 1                                      # siderolabs/talos partition order: EFI first

_reports: dict[str, dict] = {}


def report_of(name: str) -> dict:
    if name not in _reports:
        path = (derive("talos-sdboot-no-loader-conf", "talos-v1.10.4-arm64-metal", [FatDelete(ESP, "loader/loader.conf")])
                if name == "sdboot-no-loader-conf" else build_replica(name))
        _reports[name] = scan(str(path), progress=False)
    return _reports[name]


@pytest.mark.parametrize("name", ERAS)
def test_boot_path_of_each_era(name):
    """The version comes from where that era keeps it (GRUB entry title while os-release is an
    empty placeholder; the UKI's os-release otherwise), the bootloader kind is recognised, and the
    init binary is where the rootfs layout of the era puts it."""
    expect = replica_manifest(name)["expect"]["talos"]
    report = report_of(name)
    dist = report["distribution"]
    assert report["os"]["version"] == expect["version"]
    assert dist["version_source"] == expect["version_source"]
    assert dist["bootloader"] == expect["bootloader"]
    assert dist["os_release_filled"] is expect["os_release_filled"]
    assert dist["machined"] == expect["machined"]
    assert (expect["version_source"] == "grub-entry") == (not expect["os_release_filled"])


@pytest.mark.parametrize("name", ERAS + ["sdboot-no-loader-conf"])
def test_code_mounts_are_inferred_and_said_so(name):
    """Talos mounts / (the squashfs from the initramfs, under an overlay when system extensions are
    installed) and /var (EPHEMERAL) in code: the rows are there, marked inferred, and a warning
    names them."""
    report = report_of(name)
    mounts = {m["target"]: m for m in report["mounts"]}
    for target in ("/", "/var"):
        assert target in mounts and mounts[target]["observed"] is False
        assert any(f"mount {target} " in w or f"mount {target} (" in w for w in report["warnings"]), report["warnings"]
    # with system extensions / is their overlay over the squashfs (siderolabs/talos@ad8823176 internal/app/init/main.go)
    assert mounts["/"]["access"] == "ro"
    assert mounts["/"]["fstype"] == ("overlay" if report["distribution"].get("extensions") else "squashfs")


def test_sdboot_without_loader_conf():
    base, variant = report_of("talos-v1.10.4-arm64-metal"), report_of("sdboot-no-loader-conf")
    for key in ("version_source", "bootloader", "ukis", "kernel_cmdline"):
        assert variant["distribution"][key] == base["distribution"][key], key
    assert variant["os"]["version"] == base["os"]["version"] == "v1.10.4"
    assert variant["completeness"]["status"] == base["completeness"]["status"]
