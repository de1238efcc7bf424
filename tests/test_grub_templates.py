"""The grub.cfg files distributions ship, across releases, read as GRUB reads them.

The files under tests/data/grub/ are the upstream templates (each cites its repository, path and
tag in its header): Flatcar's build_library/grub.cfg at three releases and two OEM files,
Bottlerocket's rpm2img output and its GRUB image's embedded efi.cfg, Talos' encoder output and
fixtures, Debian 12's grub-mkconfig output. Each is checked for what the distribution's boot
needs, and, when grub-emu is installed, against grub-emu booting the default entry: stand-ins for
``linux``/``initrd`` print their arguments, which must equal the entry we report.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from builders import cached, have, run
from test_grub_conformance import HAVE_EMU, GrubEmu, boot_output

from immutools.fs import open_filesystem
from immutools.image.source import FileSource
from immutools.system.grubcfg import fs_file_test, fs_loader, grub_cfg_from_tar, parse_grub_cfg

DATA = Path(__file__).parent / "data" / "grub"
USR_A = "7130c94a-213a-4e5a-8e26-6cce9662f132"          # Flatcar's USR-A partition GUID (grub.cfg compares it)
USR_B = "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
FLATCAR = ["flatcar-stable-3602.2.0.cfg", "flatcar-stable-4081.2.0.cfg", "flatcar-alpha-4628.0.0.cfg"]
BOOT_UUID = "6b636168-7420-6568-2070-6c616e657421"


def text(name: str) -> str:
    return (DATA / name).read_text()


def flatcar_seeds(arch: str = "x86_64", uuid: str = USR_A) -> dict[str, str]:
    """What the Flatcar collector knows: an EFI GRUB for the CPU, and gptprio.next's answer."""
    return {"grub_platform": "efi", "grub_cpu": arch, "usr_uuid": uuid, "usr_device": "hd0,gpt3"}


def esp_files(present: set[str]):
    """file_exists for the ESP GRUB's ``$root`` names (other devices: unknown)."""
    def exists(op: str, path: str):
        if path.startswith("($root)") or path.startswith("/"):
            return path.removeprefix("($root)") in present
        return None
    return exists


# ---------------------------------------------------------------------------------------------
# Flatcar
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FLATCAR)
def test_flatcar_default_entry_mounts_usr_with_verity(name):
    cfg = parse_grub_cfg(text(name), env=flatcar_seeds(), file_exists=esp_files({"/flatcar/first_boot"}))
    entry = cfg.default_entry()
    assert entry.id == "flatcar" and entry.title == "Flatcar default" and entry.unrestricted
    assert entry.kernel == "/flatcar/vmlinuz-a" and entry.unresolved == [] and not entry.conditional
    assert entry.cmdline.startswith(f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={USR_A} rootflags=rw "
                                    "mount.usrflags=ro consoleblank=0 root=LABEL=ROOT ")
    line = entry.kernel_cmdline()
    assert line.observed and line.get("root") == "LABEL=ROOT" and line.get("mount.usr") == "/dev/mapper/usr"
    assert line.all("console") == ["ttyS0,115200n8", "tty0"] and line.get("flatcar.first_boot") == "detected"
    # 3602 picks linuxefi under EFI on x86 (suf=efi); later templates keep suf empty
    assert entry.linux_command == ("linuxefi" if "3602" in name else "linux")
    # the B slot's GUID selects the B kernel
    other = parse_grub_cfg(text(name), env=flatcar_seeds(uuid=USR_B)).default_entry()
    assert other.kernel == "/flatcar/vmlinuz-b" and f"verity.usr=PARTUUID={USR_B}" in other.cmdline_words
    assert [e.id for e in cfg.entries] == ["flatcar", "flatcar-a", "flatcar-b"]
    assert cfg.find_entry("flatcar-b").cmdline_words[:2] == ["mount.usr=/dev/mapper/usr", "verity.usr=PARTLABEL=USR-B"]
    assert cfg.fallback == (["0", "0", "0"] if "4628" in name else [])


@pytest.mark.parametrize("name", FLATCAR)
def test_flatcar_unknowns_stay_visible(name):
    """Without the collector's seeds GRUB's platform, CPU and gptprio.next's choice are unknown:
    the kernel and the console are ``$name``, listed and warned, never an empty result."""
    cfg = parse_grub_cfg(text(name))
    entry = cfg.default_entry()
    assert {"grub_platform", "grub_cpu", "usr_uuid"} <= set(cfg.unknown)
    assert any("gptprio.next sets $usr_uuid at run time" in w for w in cfg.warnings)
    if "3602" in name:
        # linux$suf: suf is "" or "efi" depending on $grub_platform: the command is unknown
        assert entry.kernel is None
        assert any("command name 'linux$suf' is unknown at run time" in w for w in cfg.warnings)
        assert any("the default entry 'Flatcar default' runs no linux command" in w for w in cfg.warnings)
    else:
        assert entry.kernel == "$gptprio_kernel" and "verity.usr=PARTUUID=$usr_uuid" in entry.cmdline_words
        assert {"usr_uuid", "linux_console", "gptprio_kernel"} <= set(entry.unresolved)
        assert "root=LABEL=ROOT" in entry.cmdline_words and not entry.kernel_cmdline().observed


def test_flatcar_arm64_console_and_acpi():
    cfg = parse_grub_cfg(text("flatcar-alpha-4628.0.0.cfg"), env=flatcar_seeds("arm64"), file_exists=esp_files(set()))
    line = cfg.default_entry().kernel_cmdline()
    assert line.all("console") == ["ttyAMA0,115200n8"] and line.get("acpi") == "force"
    assert line.get("flatcar.first_boot") is None
    old = parse_grub_cfg(text("flatcar-stable-3602.2.0.cfg"), env=flatcar_seeds("arm64"), file_exists=esp_files(set()))
    entry = old.default_entry()
    assert entry.linux_command == "linux" and entry.kernel_cmdline().all("console") == ["ttyAMA0,115200n8"]


def test_flatcar_oem_grub_cfg_sets_oem_id_and_append():
    """The OEM partition's grub.cfg, sourced when ``search`` finds it: seeded as the collector
    would (the OEM partition's GRUB name), read through the loader."""
    files = {"(hd0,gpt6)/grub.cfg": text("flatcar-oem-qemu-4628.0.0.cfg")}
    cfg = parse_grub_cfg(text("flatcar-alpha-4628.0.0.cfg"), env={**flatcar_seeds(), "oem": "hd0,gpt6"},
                         file_exists=lambda op, p: p in files or esp_files(set())(op, p), loader=files.get)
    line = cfg.default_entry().kernel_cmdline()
    assert cfg.sourced == ["(hd0,gpt6)/grub.cfg"] and cfg.variables["oem_id"] == "qemu"
    assert line.get("flatcar.oem.id") == "qemu" and line.has("flatcar.autologin")
    assert cfg.warnings == []
    # not seeded: search's result is unknown, the OEM file cannot be located and that is said
    unseeded = parse_grub_cfg(text("flatcar-alpha-4628.0.0.cfg"), env=flatcar_seeds(), loader=files.get)
    assert any("search sets $oem at run time" in w for w in unseeded.warnings)
    assert any("source ($oem)/grub.cfg: its location is unknown at run time" in w for w in unseeded.warnings)


def test_flatcar_packet_oem_file_is_a_syntax_error_for_grub():
    """The packet OEM fragment guards its settings with ``[ .. ] || [ .. ]``; GRUB has no ``||``
    (script/yylex.l): the ``if`` line is dropped and the ``set`` lines in it run unconditionally,
    as grub-emu shows (tests/test_grub_conformance.py syntax_recovery)."""
    oem = text("flatcar-oem-packet-4628.0.0.cfg")
    cfg = parse_grub_cfg(oem, env={"grub_cpu": "arm64"})
    assert cfg.variables["linux_console"] == "console=tty0 console=ttyS1,115200n8"
    assert any(re.match(r"grub\.cfg:\d+: syntax error at '\|\|'", w) for w in cfg.warnings)
    if HAVE_EMU:
        with GrubEmu() as emu:
            shown = emu.run(oem + '\necho "[$oem_id] [$gfxpayload] [$linux_console]"\n')
        assert shown == ["[packet] [1024x768x8,1024x768] [console=tty0 console=ttyS1,115200n8]"]


def _flatcar_esp(name: str) -> Path:
    """A FAT ESP laid out like Flatcar's: the template in flatcar/grub/grub.cfg.tar, first_boot."""
    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "cfg").mkdir()
            (root / "cfg" / "grub.cfg").write_text(text(name))
            grub = root / "flatcar" / "grub"
            grub.mkdir(parents=True)
            run(["tar", "-C", str(root / "cfg"), "-cf", str(grub / "grub.cfg.tar"), "grub.cfg"])
            (root / "flatcar" / "first_boot").write_text("")
            run(["mkfs.vfat", "-C", "-n", "EFI-SYSTEM", str(out), "4096"])
            run(["mcopy", "-s", "-i", str(out), str(root / "flatcar"), "::/"])
    return cached(f"grub-esp-{name}", {"v": 1, "cfg": text(name)}, build)


@pytest.mark.skipif(not (have("mkfs.vfat") and have("mcopy") and have("tar")), reason="mkfs.vfat, mcopy or tar missing")
def test_flatcar_template_read_from_a_real_esp():
    esp = open_filesystem(FileSource(str(_flatcar_esp("flatcar-alpha-4628.0.0.cfg"))), "vfat")
    cfg_text = grub_cfg_from_tar(esp.read("/flatcar/grub/grub.cfg.tar"))
    assert cfg_text == text("flatcar-alpha-4628.0.0.cfg")
    cfg = parse_grub_cfg(cfg_text, env=flatcar_seeds(), file_exists=fs_file_test(esp), loader=fs_loader(esp))
    line = cfg.default_entry().kernel_cmdline()
    assert line.get("flatcar.first_boot") == "detected" and line.get("verity.usr") == f"PARTUUID={USR_A}"


# ---------------------------------------------------------------------------------------------
# Bottlerocket
# ---------------------------------------------------------------------------------------------
BR_SEEDS = {"boot_uuid": BOOT_UUID, "root": "hd0,gpt3", "prefix": "(hd0,gpt3)/grub", "private": "hd0,gpt7"}


@pytest.mark.parametrize("name", ["bottlerocket-1.26.1-aws-k8s-1.31.cfg", "bottlerocket-1.26.1-aws-k8s-1.31-secureboot.cfg"])
def test_bottlerocket_grub_cfg(name):
    cfg = parse_grub_cfg(text(name), env=BR_SEEDS)
    (entry,) = cfg.entries
    assert entry.title == "Bottlerocket OS 1.26.1" and entry.unrestricted and cfg.default_entry() is entry
    assert entry.kernel == "(hd0,gpt3)/vmlinuz" and entry.initrds == ["(hd0,gpt7)/bootconfig.data"]
    line = entry.kernel_cmdline()
    assert line.observed and line.get("root") == "/dev/dm-0" and line.get("enforcing") == "1"
    (dev,) = line.dm_devices()
    assert dev.tables[0].data_device == f"PARTUUID={BOOT_UUID}/PARTNROFF=1"
    assert dev.tables[0].arg_list[-1] == "ignore_zero_blocks"
    assert [a.key for a in line.init_args] == ["systemd.log_target", "systemd.log_color", "systemd.show_status"]
    assert line.get("netdog.default-interface") == "eth0:dhcp4,dhcp6?"
    assert entry.ends == "boot"                        # the Secure Boot fallback lines run only if boot fails
    assert ("superusers" in cfg.variables) == ("secureboot" in name)
    assert cfg.warnings == []


def test_bottlerocket_embedded_config_loads_the_boot_partition_grub_cfg():
    """efi.cfg runs gptprio.next, exports boot_uuid and runs ``configfile /grub/grub.cfg``:
    that file's menu is the one GRUB shows, in a context holding only exported variables
    (normal/context.c) -- so ``$private``, which efi.cfg does not export, is empty there."""
    files = {"/grub/grub.cfg": text("bottlerocket-1.26.1-aws-k8s-1.31.cfg")}
    cfg = parse_grub_cfg(text("bottlerocket-core-kit-3.1.1-efi.cfg"), loader=files.get, name="efi.cfg",
                         env={"boot_dev": "hd0,gpt3", "boot_uuid": BOOT_UUID, "private": "hd0,gpt7"})
    (entry,) = cfg.entries
    assert cfg.configfiles == ["/grub/grub.cfg"] and entry.file == "/grub/grub.cfg"
    assert entry.kernel == "(hd0,gpt3)/vmlinuz" and entry.initrds == ["()/bootconfig.data"]
    assert f"PARTUUID={BOOT_UUID}/PARTNROFF=1" in entry.cmdline
    assert cfg.output == [] and cfg.stopped is None      # the "boot failed" lines are not reached
    missing = parse_grub_cfg(text("bottlerocket-core-kit-3.1.1-efi.cfg"), loader=lambda p: None, name="efi.cfg")
    assert missing.entries == [] and missing.stopped == "efi.cfg:16: reboot"
    assert any("configfile /grub/grub.cfg: not found" in w for w in missing.warnings)
    assert missing.output[0] == "boot failed (device ($boot_dev), uuid $boot_uuid)"


# ---------------------------------------------------------------------------------------------
# Talos
# ---------------------------------------------------------------------------------------------
def test_talos_upgraded_default_fallback_and_escapes():
    cfg = parse_grub_cfg(text("talos-1.9.0-upgraded.cfg"))
    assert [e.title for e in cfg.entries] == ["A - Talos v1.9.0", "B - Talos v1.8.3",
                                              "Reset Talos installation and return to maintenance mode"]
    default = cfg.default_entry()
    assert default.title == "A - Talos v1.9.0" and default.initrds == ["/A/initramfs.xz"]
    assert default.variables == {"gfxmode": "auto", "gfxpayload": "text"}
    line = default.kernel_cmdline()
    assert line.get("talos.config") == "https://metadata.example/config?id=7&token=abc"   # Quote's \& undone
    assert line.flag("slab_nomerge") and line.get("ima_hash") == "sha512"
    assert [e.title for e in cfg.fallback_entries()] == ["B - Talos v1.8.3"]
    # ... which GRUB itself does not use: fallback is read as numbers only
    assert cfg.warnings == ["grub.cfg: fallback 'B - Talos v1.8.3' is not an entry number: GRUB ignores it "
                            "(normal/menu.c reads fallback entries as numbers only)"]
    assert cfg.find_entry("2").cmdline_words[-1] == "talos.experimental.wipe=system:EPHEMERAL,STATE"
    assert cfg.unresolved == [] and cfg.unknown == {}


@pytest.mark.parametrize("name,default", [("talos-1.9.0-grub_parse_test.cfg", "A - v1"),
                                          ("talos-1.9.0-grub_write_test.cfg", "A - Test v0.0.1")])
def test_talos_fixtures(name, default):
    cfg = parse_grub_cfg(text(name))
    entry = cfg.default_entry()
    assert entry.title == default and entry.cmdline_words == ["cmdline", "A"] and entry.kernel == "/A/vmlinuz"
    assert cfg.entries[-1].title.startswith("Reset Talos")


# ---------------------------------------------------------------------------------------------
# Debian (grub-mkconfig)
# ---------------------------------------------------------------------------------------------
DEBIAN_ID = "7c2e9a4b-1d3f-4a5b-8c6d-7e8f9a0b1c2d"


def test_debian_menu_with_submenu():
    cfg = parse_grub_cfg(text("debian-12-grub-mkconfig.cfg"), env={"root": "hd0,gpt1", "prefix": "(hd0,gpt1)/boot/grub"},
                         file_exists=lambda op, p: False)
    assert [(e.index, e.title) for e in cfg.entries] == [
        ("0", "Debian GNU/Linux"),
        ("1>0", "Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64"),
        ("1>1", "Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64 (recovery mode)"),
        ("1>2", "Debian GNU/Linux, with Linux 6.1.0-18-cloud-amd64"),
        ("1>3", "Debian GNU/Linux, with Linux 6.1.0-18-cloud-amd64 (recovery mode)")]
    (holder,) = cfg.submenus
    assert holder.title == "Advanced options for Debian GNU/Linux" and holder.id == f"gnulinux-advanced-{DEBIAN_ID}"
    # $menuentry_id_option is exported, so ids work inside the submenu too
    assert cfg.entries[3].id == f"gnulinux-6.1.0-18-cloud-amd64-advanced-{DEBIAN_ID}"
    assert cfg.entries[3].classes == ["debian", "gnu-linux", "gnu", "os"]
    default = cfg.default_entry()
    assert default.index == "0" and default.kernel == "/boot/vmlinuz-6.1.0-57-cloud-amd64"
    assert default.cmdline == "root=/dev/vda1 ro console=tty0 console=ttyS0,115200 quiet"
    assert default.output == ["Loading Linux 6.1.0-57-cloud-amd64 ...", "Loading initial ramdisk ..."]
    assert ("search", ["--no-floppy", "--fs-uuid", "--set=root", "--hint-bios=hd0,gpt1", "--hint-efi=hd0,gpt1",
                       "--hint-baremetal=ahci0,gpt1", DEBIAN_ID]) in default.commands
    assert cfg.find_entry(f"gnulinux-advanced-{DEBIAN_ID}>gnulinux-6.1.0-18-cloud-amd64-recovery-{DEBIAN_ID}").index == "1>3"
    assert cfg.find_entry("1>1").cmdline_words[2] == "single"


def test_debian_next_entry_from_grubenv():
    """grub-reboot writes next_entry into grubenv; the header loads it and boots that entry."""
    env_block = ("# GRUB Environment Block\n"
                 f"next_entry=gnulinux-advanced-{DEBIAN_ID}>gnulinux-6.1.0-18-cloud-amd64-advanced-{DEBIAN_ID}\n")
    env_block += "#" * (1024 - len(env_block))
    files = {"(hd0,gpt1)/boot/grub/grubenv": env_block}
    cfg = parse_grub_cfg(text("debian-12-grub-mkconfig.cfg"), env={"root": "hd0,gpt1", "prefix": "(hd0,gpt1)/boot/grub"},
                         file_exists=lambda op, p: p in files, loader=files.get)
    assert cfg.default_entry().index == "1>2"
    assert ("save_env", ["next_entry"]) not in cfg.default_entry().commands
    # without a way to read /boot/grub the header's grubenv test is undecidable, and says so
    blind = parse_grub_cfg(text("debian-12-grub-mkconfig.cfg"))
    assert any(w.startswith("grub.cfg:11: condition not decidable offline (depends on $prefix)") for w in blind.warnings)


# ---------------------------------------------------------------------------------------------
# Against grub-emu: the default entry's linux and initrd arguments, and what it prints
# ---------------------------------------------------------------------------------------------
_STAND_INS = ('function linux { echo "KERNEL[$1]"; shift; for a in "$@"; do echo "ARG[$a]"; done; %s}\n'
              'function initrd { for a in "$@"; do echo "INITRD[$a]"; done; %s}\n')
_LOADED = re.compile(r"^(KERNEL|ARG|INITRD)\[(.*)\]$")


@pytest.mark.skipif(not HAVE_EMU, reason="grub-emu (Debian package grub-emu) is not installed")
@pytest.mark.parametrize("name", FLATCAR + ["bottlerocket-1.26.1-aws-k8s-1.31.cfg",
                                            "bottlerocket-1.26.1-aws-k8s-1.31-secureboot.cfg",
                                            "talos-1.9.0-upgraded.cfg", "talos-1.9.0-grub_parse_test.cfg",
                                            "debian-12-grub-mkconfig.cfg"])
def test_template_against_grub_emu(name):
    """grub-emu has no ``linux``/``initrd`` commands, so functions of those names stand in and
    print their arguments; our interpreter keeps GRUB's rule that a command wins over a function
    and reports the arguments of the real command. Test-only edits to the text grub-emu runs:
    Flatcar's ``gptprio.next`` (a Flatcar GRUB patch) becomes the assignments our side is seeded
    with, ``boot`` becomes ``halt``, ``terminal_output gfxterm`` is dropped (no display here),
    ``timeout=0`` is appended, and the stand-in for the entry's last loader command halts."""
    cfg_text = text(name)
    seeds = {"usr_uuid": USR_A, "usr_device": "hd0,gpt3"} if name.startswith("flatcar") else {}
    emu_text = cfg_text.replace("gptprio.next -d usr_device -u usr_uuid", f"usr_device=hd0,gpt3; usr_uuid={USR_A}")
    emu_text = re.sub(r"(?m)^(\s*)boot\s*$", r"\1halt", emu_text)
    emu_text = re.sub(r"(?m)^terminal_output gfxterm$", "", emu_text)
    with GrubEmu() as emu:
        cfg = emu.parse(cfg_text, **seeds)
        last = ("", "halt; ") if cfg.default_entry().initrds else ("halt; ", "")
        shown = emu.run(_STAND_INS % last + emu_text, epilogue="\nset timeout=0\n")
    entry = cfg.default_entry()
    assert entry.kernel is not None
    ours = [f"KERNEL[{entry.kernel}]"] + [f"ARG[{w}]" for w in entry.cmdline_words] + [f"INITRD[{i}]" for i in entry.initrds]
    assert [line for line in shown if _LOADED.match(line)] == ours
    assert [line for line in shown if not _LOADED.match(line)] == boot_output(cfg)
