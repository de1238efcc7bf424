"""Variation suite, Flatcar: the grub.cfg forms of its release history, OEM grub.cfg files, a
masked sshd.socket, and the layout eras the replicas did not cover (spec variants).

Derived variants are Flatcar replicas changed with real tools (``tests/variants.py``): the ESP's
``flatcar/grub/grub.cfg.tar`` replaced with ``mcopy`` (the tar made by GNU tar), the OEM btrfs made
again by ``mkfs.btrfs --rootdir`` with Flatcar's options, ``debugfs -w`` on ROOT. The grub.cfg texts
(``data/replica-specs/variant-files/flatcar``) follow flatcar/scripts ``build_library/grub.cfg`` at
the tags their headers name; the OEM files follow coreos-overlay ``common-oem-files``. The expected
command line is the one that template builds: ``gptprio`` picks the slot, then
``mount.usr=/dev/mapper/usr verity.usr=PARTUUID=<slot> rootflags=rw mount.usrflags=ro consoleblank=0
root=LABEL=ROOT <console> <first_boot> <randomize_disk_guid> <extra_options> <oem> <linux_append>``
(empty variables vanish), and the patched GRUB appends ``verity.usrhash=`` from the kernel image.
Every variant must give / and /usr -- observed from that line, or inferred with a warning saying why.
"""

from __future__ import annotations

import pytest

from expect import assert_matches_manifest
from replicas import build_replica, replica_manifest
from variants import BtrfsRebuild, ExtSymlink, FatPut, derive, tar_bytes, variant_file

from immutools.scan import scan

PRISTINE = "flatcar-stable-4593-amd64-pristine"
ESP, OEM, ROOT = 1, 6, 9                 # flatcar/scripts build_library/disk_layout.json partition numbers
GRUB_TAR = "flatcar/grub/grub.cfg.tar"   # scripts build_library/grub_install.sh
# the OEM filesystem as scripts build_library/disk_util FormatBtrfs makes it (flatcar-base.yaml OEM content)
OEM_BTRFS = dict(label="OEM", uuid="6B1E4F0A-3C2D-4E5F-8A9B-0C1D2E3F4A06", mixed=True, metadata="single", data="single")
USR_A_GUID = "7130c94a-213a-4e5a-8e26-6cce9662f132"      # disk_layout.json fixed USR-A/USR-B GUIDs
USR_B_GUID = "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"


def grub_cfg(form: str) -> FatPut:
    return FatPut(ESP, GRUB_TAR, tar_bytes({"grub.cfg": variant_file(f"flatcar/grub.cfg-{form}")}))


def oem_partition(oem_id: str) -> BtrfsRebuild:
    return BtrfsRebuild(OEM, (("grub.cfg", variant_file(f"flatcar/oem-{oem_id}-grub.cfg")),
                              ("oem-release", variant_file(f"flatcar/oem-{oem_id}-release"))), **OEM_BTRFS)


VARIANTS = {
    # grub.cfg forms (variant name: (base replica, edits))
    "grub-4593": (PRISTINE, [grub_cfg("stable-4593")]),
    "grub-4593-updated": ("flatcar-stable-4593-amd64-updated", [grub_cfg("stable-4593")]),
    "grub-4593-arm64": ("flatcar-stable-4593-arm64-pristine", [grub_cfg("stable-4593")]),
    "grub-3227": ("flatcar-stable-3227-amd64-pristine", [grub_cfg("stable-3227")]),
    # OEM images: the OEM partition's grub.cfg is sourced by the ESP's
    "oem-qemu": (PRISTINE, [grub_cfg("stable-4593"), oem_partition("qemu")]),
    "oem-gce": (PRISTINE, [grub_cfg("stable-4593"), oem_partition("gce")]),
    "oem-qemu-replica-grub": (PRISTINE, [oem_partition("qemu")]),
    # sshd
    "sshd-masked": ("flatcar-stable-4593-amd64-updated",
                    [ExtSymlink(ROOT, "/etc/systemd/system/sshd.socket", "/dev/null")]),
}

_reports: dict[str, dict] = {}


def report_of(name: str) -> dict:
    if name not in _reports:
        base, edits = VARIANTS[name]
        _reports[name] = scan(str(derive(f"flatcar-{name}", base, edits)), progress=False)
    return _reports[name]


def expected_words(base: str, slot_guid: str, console: str, first_boot: bool, extra: str = "",
                   oem: str = "") -> list[str]:
    """The default entry's command line the template builds, with the hash GRUB appends."""
    root_hash = replica_manifest(base)["expect"]["integrity"]["root_hash"]
    line = (f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={slot_guid} rootflags=rw mount.usrflags=ro consoleblank=0 "
            f"root=LABEL=ROOT {console} {'flatcar.first_boot=detected' if first_boot else ''} {extra} {oem} "
            f"verity.usrhash={root_hash}")
    return line.split()


def assert_never_silent(report: dict) -> None:
    """/ and /usr are in the mount table; when not read from the boot configuration, they are
    marked inferred and a warning names them and the reason."""
    mounts = {m["target"]: m for m in report["mounts"]}
    for target in ("/", "/usr"):
        assert target in mounts, (target, report["warnings"])
        if not mounts[target]["observed"]:
            assert any(f"mount {target}" in w for w in report["warnings"]), (target, report["warnings"])


def assert_cmdline_mounts(report: dict, words: list[str]) -> None:
    """/ and /usr observed from the grub.cfg's default entry, which passes exactly ``words``."""
    dist = report["distribution"]
    assert dist["grub_default_entry"] == "Flatcar default"
    assert dist["kernel_cmdline"].split() == words
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/"]["observed"] is True and mounts["/"]["source"] == "LABEL=ROOT"
    assert mounts["/usr"]["observed"] is True and mounts["/usr"]["integrity"] == "dm-verity"
    assert mounts["/usr"]["access"] == "ro"
    facts = {f["fact"]: f["status"] for f in report["completeness"]["facts"]}
    assert facts["mount /"] == facts["mount /usr"] == facts["integrity.root_hash"] == "observed"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_never_silent(name):
    assert_never_silent(report_of(name))


# ------------------------------------------------------------------------------------------------
# grub.cfg forms
# ------------------------------------------------------------------------------------------------
def test_grub_cfg_4593_form():
    """stable-4593.2.0's template: gptprio in a function, the kernel loaded by ``linux$suf``."""
    report = report_of("grub-4593")
    assert_cmdline_mounts(report, expected_words(PRISTINE, USR_A_GUID, "console=ttyS0,115200n8 console=tty0", True))
    assert report["update"]["active_slot"] == "A"


def test_grub_cfg_4593_form_after_an_update():
    """The same template on a machine running USR-B: gptprio.next picks USR-B, so vmlinuz-b and
    PARTUUID=<USR-B>; no first boot any more."""
    report = report_of("grub-4593-updated")
    assert_cmdline_mounts(report, expected_words("flatcar-stable-4593-amd64-updated", USR_B_GUID,
                                                 "console=ttyS0,115200n8 console=tty0", False))
    assert report["update"]["active_slot"] == "B"


def test_grub_cfg_4593_form_arm64():
    """arm64 at stable-4593: console=ttyAMA0,115200n8 alone (console=tty0 came with alpha-4694)
    and acpi=force."""
    report = report_of("grub-4593-arm64")
    assert_cmdline_mounts(report, expected_words("flatcar-stable-4593-arm64-pristine", USR_A_GUID,
                                                 "console=ttyAMA0,115200n8", True, extra="acpi=force"))
    assert report["distribution"]["extra_kernel_options"] == "acpi=force"


def test_grub_cfg_3227_form():
    """stable-3227's template (in use up to stable-3602): Secure Boot read from EFI variables
    (unknown offline: the OEM hook stays undecided) and ``linuxefi`` on x86 EFI."""
    report = report_of("grub-3227")
    assert_cmdline_mounts(report, expected_words("flatcar-stable-3227-amd64-pristine", USR_A_GUID,
                                                 "console=ttyS0,115200n8 console=tty0", True))
    assert report["os"]["version"] == "3227.2.3"


# ------------------------------------------------------------------------------------------------
# OEM grub.cfg
# ------------------------------------------------------------------------------------------------
def test_oem_grub_cfg_sets_oem_id_and_linux_append():
    """A qemu image: (OEM)/grub.cfg sets oem_id=qemu and linux_append=flatcar.autologin, which
    end the command line (flatcar.oem.id= is what Ignition reads its platform from)."""
    report = report_of("oem-qemu")
    assert_cmdline_mounts(report, expected_words(PRISTINE, USR_A_GUID, "console=ttyS0,115200n8 console=tty0", True,
                                                 oem="flatcar.oem.id=qemu flatcar.autologin"))
    dist = report["distribution"]
    assert dist["oem_grub_cfg"]["sourced"] is True
    assert dist["oem_release"]["ID"] == "qemu" and dist["oem_release"]["NAME"] == "QEMU"
    assert not any("was not evaluated" in w for w in report["warnings"])


def test_oem_grub_cfg_sets_the_console():
    """A GCE image: the OEM sets linux_console, so the template keeps it (serial only, no tty0)."""
    report = report_of("oem-gce")
    assert_cmdline_mounts(report, expected_words(PRISTINE, USR_A_GUID, "console=ttyS0,115200n8", True,
                                                 oem="flatcar.oem.id=gce"))
    assert report["distribution"]["console"] == "console=ttyS0,115200n8"


def test_oem_grub_cfg_through_search():
    """The replica's own grub.cfg clears $oem and finds the OEM partition with `search --set oem
    --part-label OEM`; the interpreter resolves the label against the partition table, so the OEM
    grub.cfg is sourced and nothing is reported as not evaluated."""
    report = report_of("oem-qemu-replica-grub")
    assert "flatcar.oem.id=qemu" in report["distribution"]["kernel_cmdline"].split()
    assert report["distribution"]["oem_grub_cfg"]["sourced"] is True
    assert not any("was not evaluated" in w for w in report["warnings"]), report["warnings"]


# ------------------------------------------------------------------------------------------------
# sshd
# ------------------------------------------------------------------------------------------------
def test_masked_sshd_socket():
    """Flatcar enables sshd.socket with a vendor link in sockets.target.wants; ``systemctl mask
    sshd.socket`` (a /dev/null link in /etc on ROOT) turns SSH off."""
    report = report_of("sshd-masked")
    row = next(u for u in report["surface"]["sshd_units"] if u["unit"] == "sshd.socket")
    assert row["masked"] is True and row["enabled"] is False
    assert report["surface"]["sshd_enabled"] is False
    assert report["surface"]["sshd"] is True                 # the binary is still there


# ------------------------------------------------------------------------------------------------
# layout eras the replicas did not cover (spec variants: data/replica-specs/variant-flatcar-*.yaml)
# ------------------------------------------------------------------------------------------------
ERA_SPECS = ["variant-flatcar-stable-3602-amd64-pristine", "variant-flatcar-alpha-4628-arm64-pristine"]




def era_report(name: str) -> dict:
    if name not in _reports:
        _reports[name] = scan(str(build_replica(name)), progress=False)
    return _reports[name]


@pytest.mark.parametrize("name", ERA_SPECS)
def test_era_matches_spec(name):
    report = era_report(name)
    assert_matches_manifest(report, replica_manifest(name))
    assert_never_silent(report)


def test_era_3602_ext2_usr_with_etc_overlay():
    """stable-3602: ext2 /usr (ro_compat hack) already under the /etc overlay, OEM at
    /usr/share/oem, booted by the Secure Boot / linuxefi grub.cfg."""
    name = "variant-flatcar-stable-3602-amd64-pristine"
    report = era_report(name)
    assert_cmdline_mounts(report, expected_words(name, USR_A_GUID, "console=ttyS0,115200n8 console=tty0", True))
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/usr"]["fstype"] == "ext2"
    etc = mounts["/etc"]
    assert etc["fstype"] == "overlay" and "lowerdir=/usr/share/flatcar/etc" in etc["options"] and etc["observed"] is False
    assert mounts["/usr/share/oem"]["fstype"] == "btrfs"


def test_era_4628_confext():
    """alpha-4628 arm64: /etc is the confext merge over ROOT's /etc (inferred, with the image as
    evidence), quoted os-release values read as usual."""
    name = "variant-flatcar-alpha-4628-arm64-pristine"
    report = era_report(name)
    assert_cmdline_mounts(report, expected_words(name, USR_A_GUID, "console=ttyAMA0,115200n8", True, extra="acpi=force"))
    etc = next(m for m in report["mounts"] if m["target"] == "/etc")
    assert etc["source"] == "/usr/lib/confexts/00-flatcar-default.raw" and etc["observed"] is False
    assert any("00-flatcar-default.raw" in e["source"] for e in etc["evidence"])
    assert report["os"]["version"] == "4628.0.0" and report["update"]["channel"] == "alpha"
    states = {p["path"]: p["state"] for p in report["paths"]}
    assert states["/etc"] == "persistent" and states["/usr"] == "read-only"
