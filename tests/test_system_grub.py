"""GRUB configuration reading on configurations written here after the shapes Flatcar
(flatcar/scripts build_library/grub.cfg), Bottlerocket (twoliter rpm2img) and Talos (talos
bootloader/grub/encode.go) generate, plus the offline-evaluation rules: what is unknown at run
time, undecidable branches, warnings and limits. The distributions' own files are in
test_grub_templates.py; GRUB's semantics against grub-emu in test_grub_conformance.py."""

from __future__ import annotations

import random
import tarfile
import tempfile
from pathlib import Path

import pytest

from builders import cached, have, run
from immutools.errors import CorruptDataError, LimitExceededError
from immutools.fs import open_filesystem
from immutools.image.source import FileSource
from immutools.system.grubcfg import fs_file_test, fs_loader, grub_cfg_from_tar, parse_grub_cfg

USR_A = "7130c94a-213a-4e5a-8e26-6cce9662f132"

# Flatcar: a template with @@MOUNTUSR@@ already replaced, gptprio picking the slot, kernels on the ESP.
FLATCAR = r"""
# main configuration
set prefix=($root)/flatcar/grub
set default="flatcar"
set fallback="0 0 0"
set timeout=1
set linux_root="root=LABEL=ROOT"
set linux_console=""
set first_boot=""
set oem_id=""
set linux_append=""

search --no-floppy --set oem --part-label OEM --hint "$root"
if [ -n "$oem" -a -f "($oem)/grub.cfg" ]; then
    source "($oem)/grub.cfg"
fi

if [ -f "($root)/flatcar/first_boot" ]; then
    set first_boot="flatcar.first_boot=detected"
fi

set oem=""
if [ -n "$oem_id" ]; then
    set oem="flatcar.oem.id=$oem_id"
fi

if [ -z "$linux_console" ]; then
    if [ "$grub_platform" = pc ]; then
        set linux_console="console=ttyS0,115200n8 console=tty0"
    elif [ "$grub_platform" = efi ]; then
        if [ "$grub_cpu" = arm64 ]; then
            set linux_console="console=ttyAMA0,115200n8 console=tty0"
        else
            set linux_console="console=ttyS0,115200n8 console=tty0"
        fi
    elif [ "$grub_platform" = xen ]; then
        set linux_console="console=hvc0"
    fi
fi

set suf=""
set linux_cmdline="rootflags=rw mount.usrflags=ro consoleblank=0 $linux_root $linux_console $first_boot $oem $linux_append"

function pick_usr {
    gptprio.next -d usr_device -u usr_uuid
    if [ $? -ne 0 -o -z "$usr_uuid" ]; then
        echo "cannot read the GPT"
    fi
    set usr_args="mount.usr=/dev/mapper/usr verity.usr=PARTUUID=$usr_uuid"
    if [ "$usr_uuid" = "7130c94a-213a-4e5a-8e26-6cce9662f132" ]; then
        set usr_kernel="/flatcar/vmlinuz-a"
    else
        set usr_kernel="/flatcar/vmlinuz-b"
    fi
}

menuentry "Flatcar default" --id=flatcar --unrestricted {
    pick_usr
    linux$suf $usr_kernel $usr_args $linux_cmdline
}

menuentry "Flatcar USR-A" --id=flatcar-a {
   linux$suf /flatcar/vmlinuz-a mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-A $linux_cmdline
}

menuentry "Flatcar USR-B" --id=flatcar-b {
   linux$suf /flatcar/vmlinuz-b mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-B $linux_cmdline
}
"""

OEM_CFG = 'set oem_id="qemu"\nset linux_append="flatcar.autologin"\n'


def test_flatcar_unknown_slot_stays_visible():
    cfg = parse_grub_cfg(FLATCAR)
    assert cfg.default == "flatcar" and cfg.fallback == ["0", "0", "0"] and cfg.timeout == "1"
    assert [e.id for e in cfg.entries] == ["flatcar", "flatcar-a", "flatcar-b"]
    default = cfg.default_entry()
    assert default.title == "Flatcar default" and default.unrestricted
    # gptprio.next runs at boot: the slot and the GUID are not known offline, and say so
    assert default.kernel == "$usr_kernel" and "usr_uuid" in default.unresolved
    assert "verity.usr=PARTUUID=$usr_uuid" in default.cmdline_words
    assert ("gptprio.next", ["-d", "usr_device", "-u", "usr_uuid"]) in default.commands
    assert any("usr_uuid" in n for n in cfg.notes)
    assert not default.kernel_cmdline().observed
    a = cfg.find_entry("flatcar-a")
    assert a.kernel_path == "/flatcar/vmlinuz-a" and a.linux_command == "linux"
    # the console depends on $grub_platform, first_boot on a file test nobody can answer here:
    # both unknown at run time, so the line is not "observed"
    assert a.unresolved == ["first_boot", "linux_console"] and "$linux_console" in a.cmdline_words
    line = a.kernel_cmdline()
    assert line.get("verity.usr") == "PARTLABEL=USR-A" and line.get("root") == "LABEL=ROOT"
    assert line.get("mount.usrflags") == "ro" and line.get("console") is None
    assert not line.observed
    assert "grub_platform" in cfg.unresolved and "grub_platform" in cfg.unknown


def test_flatcar_with_boot_facts_seeded():
    files = {"($root)/flatcar/first_boot": True}

    def exists(op, path):
        return files.get(path, False)

    def loader(path):
        return OEM_CFG if path == "(hd0,gpt6)/grub.cfg" else None

    cfg = parse_grub_cfg(FLATCAR, env={"usr_uuid": USR_A, "grub_platform": "efi", "grub_cpu": "x86_64",
                                       "oem": "hd0,gpt6"}, file_exists=lambda op, p: exists(op, p) or p == "(hd0,gpt6)/grub.cfg",
                         loader=loader)
    default = cfg.default_entry()
    assert default.kernel == "/flatcar/vmlinuz-a" and default.unresolved == []
    line = default.kernel_cmdline("partition 1 (EFI-SYSTEM): /flatcar/grub/grub.cfg.tar")
    assert line.get("verity.usr") == f"PARTUUID={USR_A}"
    assert line.all("console") == ["ttyS0,115200n8", "tty0"]
    assert line.get("flatcar.first_boot") == "detected" and line.get("flatcar.oem.id") == "qemu"
    assert line.has("flatcar.autologin")
    assert cfg.sourced == ["(hd0,gpt6)/grub.cfg"]
    assert cfg.variables["oem_id"] == "qemu"
    assert ("linux_root", "root=LABEL=ROOT", 7) in cfg.assignments
    # the other GUID picks the B kernel
    other = parse_grub_cfg(FLATCAR, env={"usr_uuid": "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"}).default_entry()
    assert other.kernel == "/flatcar/vmlinuz-b"


BOTTLEROCKET = """set default="0"
set timeout="0"
set dm_verity_root="root,,,ro,0 2097152 verity 1 PARTUUID=$boot_uuid/PARTNROFF=1 PARTUUID=$boot_uuid/PARTNROFF=2 \\
 4096 4096 262144 1 sha256 {hash} {salt} 2 restart_on_corruption ignore_zero_blocks"

menuentry "Bottlerocket OS 1.26.1" --unrestricted {{
   linux ($root)/vmlinuz console=tty0 console=ttyS0,115200n8 net.ifnames=0 quiet bootconfig \\
       root=/dev/dm-0 rootwait ro raid=noautodetect random.trust_cpu=on selinux=1 enforcing=1 \\
       dm-mod.create="$dm_verity_root" -- systemd.log_target=journal-or-kmsg systemd.log_color=0 systemd.show_status=true
   initrd ($private)/bootconfig.data
   boot
}}
""".format(hash="ab" * 32, salt="cd" * 32)


def test_bottlerocket_dm_verity_variable():
    cfg = parse_grub_cfg(BOTTLEROCKET, env={"boot_uuid": "6b636168-7420-6568-2070-6c616e657421", "private": "hd0,gpt7"})
    (entry,) = cfg.entries
    assert entry.title == "Bottlerocket OS 1.26.1" and entry.index == "0"
    assert entry.kernel_device == "$root" and entry.kernel_path == "/vmlinuz"   # $root: set by GRUB, not seeded
    assert entry.initrds == ["(hd0,gpt7)/bootconfig.data"]
    # the quoted variable stays one word, and is quoted again on the kernel command line
    dm_word = next(w for w in entry.cmdline_words if w.startswith("dm-mod.create="))
    assert " verity 1 PARTUUID=6b636168-7420-6568-2070-6c616e657421/PARTNROFF=1 " in dm_word
    assert '"dm-mod.create=root,,,ro,0 2097152 verity' in entry.cmdline
    line = entry.kernel_cmdline()
    assert line.get("root") == "/dev/dm-0" and line.flag("ro") and line.get("enforcing") == "1"
    (dev,) = line.dm_devices()
    assert dev.tables[0].data_device == "PARTUUID=6b636168-7420-6568-2070-6c616e657421/PARTNROFF=1"
    assert dev.tables[0].arg_list[8] == "ab" * 32 and dev.tables[0].arg_list[-1] == "ignore_zero_blocks"
    assert [a.key for a in line.init_args] == ["systemd.log_target", "systemd.log_color", "systemd.show_status"]
    assert cfg.default_entry() is entry
    # a GUID the caller cannot tell stays $boot_uuid and the line is not "observed" ...
    unknown = parse_grub_cfg(BOTTLEROCKET, unknown=["boot_uuid"]).entries[0]
    assert "PARTUUID=$boot_uuid/PARTNROFF=1" in unknown.cmdline and not unknown.kernel_cmdline().observed
    # ... while an unset variable is empty, as in GRUB ($private too: "()")
    unset = parse_grub_cfg(BOTTLEROCKET).entries[0]
    assert "PARTUUID=/PARTNROFF=1" in unset.cmdline and unset.initrds == ["()/bootconfig.data"]


TALOS = r"""set default="A - Talos v1.9.0"
set fallback="B - Talos v1.8.3"
set timeout=3

insmod all_video

terminal_input console
terminal_output console

menuentry "A - Talos v1.9.0" {
  set gfxmode=auto
  set gfxpayload=text
  linux /A/vmlinuz talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge= pti=on consoleblank=0 printk.devkmsg=on selinux=1 talos.config=https://cfg.example/x?a=1\&b=2
  initrd /A/initramfs.xz
}
menuentry "B - Talos v1.8.3" {
  set gfxmode=auto
  set gfxpayload=text
  linux /B/vmlinuz talos.platform=metal console=tty0
  initrd /B/initramfs.xz
}
menuentry "Reset Talos installation and return to maintenance mode" {
  set gfxmode=auto
  set gfxpayload=text
  linux /A/vmlinuz talos.platform=metal console=tty0 talos.experimental.wipe=system:EPHEMERAL,STATE
  initrd /A/initramfs.xz
}
"""


def test_talos_default_by_title_and_escapes():
    cfg = parse_grub_cfg(TALOS)
    assert [e.title.split(" ")[0] for e in cfg.entries] == ["A", "B", "Reset"]
    default = cfg.default_entry()
    assert default.title == "A - Talos v1.9.0" and default.initrds == ["/A/initramfs.xz"]
    assert default.variables == {"gfxmode": "auto", "gfxpayload": "text"}
    line = default.kernel_cmdline()
    assert line.get("talos.config") == "https://cfg.example/x?a=1&b=2"       # \& unescaped by GRUB
    assert line.get("slab_nomerge") == "" and line.get("selinux") == "1"
    assert default.proc_cmdline.startswith("BOOT_IMAGE=/A/vmlinuz talos.platform=metal ")
    assert [e.title for e in cfg.fallback_entries()] == ["B - Talos v1.8.3"]
    assert cfg.find_entry("2").title.startswith("Reset")
    assert cfg.find_entry("no such entry") is None
    assert cfg.unresolved == [] and cfg.warnings == [
        "grub.cfg: fallback 'B - Talos v1.8.3' is not an entry number: GRUB ignores it "
        "(normal/menu.c reads fallback entries as numbers only)"]


def test_language_corners():
    text = r"""
set a="x  y"
set empty=""
b=plain
set single='$a kept'
menuentry 'One' --class os --id one {
  linux /k $a "$a" $empty "$empty" ${b}tail '$a' pre\ fix $single
}
submenu "More" --id more {
  menuentry "Inner" --id inner { linux /inner x=1 }
  menuentry "Inner2" { linux /inner2 }
}
menuentry "After" { linux /after }
if true; then set t=1; else set t=2; fi
if false; then set f=1; elif [ "$a" != "x  y" ]; then set f=2; else set f=3; fi
if [ ( 1 -lt 2 ) -a ! -z "$a" ]; then set g=ok; fi
for i in 1 2 3; do set loop=$i; done
set default="more>inner"
"""
    cfg = parse_grub_cfg(text)
    one = cfg.entries[0]
    assert one.id == "one" and one.classes == ["os"]
    assert one.cmdline_words == ["x", "y", "x  y", "", "plaintail", "$a", "pre fix", "$a", "kept"]
    assert [e.index for e in cfg.entries] == ["0", "1>0", "1>1", "2"]
    assert cfg.entries[1].submenu == "More"
    assert cfg.variables["t"] == "1" and cfg.variables["f"] == "3" and cfg.variables["g"] == "ok"
    assert cfg.variables["loop"] == "3" and cfg.variables["i"] == "3"      # loops run
    assert cfg.default_entry().title == "Inner"
    assert cfg.find_entry("1>1").title == "Inner2"
    assert cfg.find_entry("2").title == "After"
    assert [s.title for s in cfg.submenus] == ["More"]


def test_undecidable_branches_keep_entries_but_not_variables():
    text = """set x=before
if [ -f /flag ]; then
  set x=inside
  menuentry "Maybe" { linux /maybe }
fi
menuentry "Always" { linux /always }
"""
    cfg = parse_grub_cfg(text)
    # both branches run on their own copies; x differs between them, so it is unknown
    assert cfg.variables["x"] == "$x" and cfg.unknown["x"].startswith("grub.cfg:2: set differently")
    assert cfg.warnings[0].startswith("grub.cfg:2: test -f /flag: no file lookup available offline")
    assert cfg.warnings[1].startswith("grub.cfg:2: condition not decidable offline")
    assert [(e.title, e.conditional) for e in cfg.entries] == [("Maybe", True), ("Always", False)]
    assert not cfg.entries[0].kernel_cmdline().observed
    decided = parse_grub_cfg(text, file_exists=lambda op, p: op == "-f" and p == "/flag")
    assert decided.variables["x"] == "inside" and not decided.entries[0].conditional and decided.warnings == []
    # the same value in both branches is known
    same = parse_grub_cfg("if [ -f /flag ]; then y=1; else y=1; fi\n")
    assert same.variables["y"] == "1" and "y" not in same.unknown


def test_hostile_input_is_bounded():
    # (``function f { f }`` is a syntax error for GRUB: a function body needs ``;`` before ``}``)
    recursive = "function f { f; }\nmenuentry x { f\n linux /k }\n"
    cfg = parse_grub_cfg(recursive)
    assert cfg.entries[0].kernel == "/k" and any("nested too deeply" in n for n in cfg.warnings)
    self_source = parse_grub_cfg("source /again\n", loader=lambda p: "source /again\n")
    assert any("nested too deeply" in n for n in self_source.notes)
    rng = random.Random(1234)
    alphabet = list("abc${}\"'\\;\n #=[]-()") + ["menuentry ", "if ", "then ", "fi ", "function ", "set ", "linux "]
    for _ in range(300):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 120)))
        parse_grub_cfg(junk)          # never raises
    # a block never closed is a syntax error for GRUB: no entry, and a warning saying so
    unbalanced = parse_grub_cfg('menuentry "open" {\n linux /k a\n')
    assert unbalanced.entries == [] and unbalanced.warnings[0].startswith("grub.cfg:3: syntax error at end of file")


def test_nesting_is_bounded():
    deep = "if true; then\n" * 40 + "set x=1\n" + "fi\n" * 40
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:33: blocks nested deeper than 32$"):
        parse_grub_cfg(deep)
    ok = "if true; then\n" * 10 + "set x=1\n" + "fi\n" * 10
    assert parse_grub_cfg(ok).variables["x"] == "1"


def _flatcar_esp() -> Path:
    """A FAT ESP laid out like Flatcar's: grub.cfg inside a tar, the first-boot flag file."""
    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            grub = root / "flatcar" / "grub"
            grub.mkdir(parents=True)
            (root / "cfg").mkdir()
            (root / "cfg" / "grub.cfg").write_text(FLATCAR)
            run(["tar", "-C", str(root / "cfg"), "-cf", str(grub / "grub.cfg.tar"), "grub.cfg"])
            (root / "flatcar" / "first_boot").write_text("first boot flag\n")
            (root / "oem").mkdir()
            (root / "oem" / "grub.cfg").write_text(OEM_CFG)
            run(["mkfs.vfat", "-C", "-n", "EFI-SYSTEM", str(out), "4096"])
            run(["mcopy", "-s", "-i", str(out), str(root / "flatcar"), str(root / "oem"), "::/"])

    return cached("grub-flatcar-esp", {"v": 1, "cfg": FLATCAR, "oem": OEM_CFG}, build)


@pytest.mark.skipif(not (have("mkfs.vfat") and have("mcopy") and have("tar")), reason="mkfs.vfat, mcopy or tar missing")
def test_reading_from_a_real_esp():
    esp = open_filesystem(FileSource(str(_flatcar_esp())), "vfat")
    text = grub_cfg_from_tar(esp.read("/flatcar/grub/grub.cfg.tar"))
    assert text == FLATCAR
    assert grub_cfg_from_tar(esp.read("/flatcar/grub/grub.cfg.tar"), member="other.cfg") is None
    with pytest.raises(CorruptDataError):
        grub_cfg_from_tar(b"not a tar archive" * 40)
    exists = fs_file_test(esp)
    assert exists("-f", "($root)/flatcar/first_boot") is True and exists("-f", "($root)/coreos/first_boot") is False
    assert exists("-d", "(hd0,gpt1)/flatcar") is True and exists("-f", "($x)/$y") is None
    # the OEM partition is stood in for by the ESP's /oem directory
    cfg = parse_grub_cfg(text, env={"oem": "hd0,gpt6", "usr_uuid": USR_A},
                         file_exists=lambda op, p: exists(op, p.replace("(hd0,gpt6)/", "/oem/")),
                         loader=lambda p: fs_loader(esp)(p.replace("(hd0,gpt6)/", "/oem/")))
    line = cfg.default_entry().kernel_cmdline("partition 1 (EFI-SYSTEM): /flatcar/grub/grub.cfg.tar")
    assert line.get("flatcar.first_boot") == "detected" and line.get("flatcar.oem.id") == "qemu"
    assert fs_loader(esp)("($root)/missing.cfg") is None


def test_tar_member_size_is_bounded(tmp_path):
    big = tmp_path / "grub.cfg"
    big.write_text("set x=1\n" * 1000)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(big, arcname="grub.cfg")
    assert grub_cfg_from_tar(archive.read_bytes()).startswith("set x=1")
    with pytest.raises(Exception, match="more than"):
        grub_cfg_from_tar(archive.read_bytes(), max_bytes=100)


# ---------------------------------------------------------------------------------------------
# Offline evaluation: run-time unknowns, seeds, merges, warnings
# ---------------------------------------------------------------------------------------------
def test_unset_is_empty_but_run_time_values_are_unknown():
    text = 'menuentry x {\n  linux$suf /k a=$unset b=$root c=$usr_uuid\n}\n'
    entry = parse_grub_cfg(text).entries[0]
    # $suf and $unset are unset (empty, as in GRUB); $root is set by GRUB before the file runs
    assert entry.linux_command == "linux" and entry.cmdline_words == ["a=", "b=$root", "c="]
    assert entry.unresolved == ["root"]
    # the caller can say a variable exists at run time with a value it cannot tell
    marked = parse_grub_cfg(text, unknown=["usr_uuid"]).entries[0]
    assert marked.cmdline_words[2] == "c=$usr_uuid" and marked.unresolved == ["root", "usr_uuid"]
    seeded = parse_grub_cfg(text, env={"root": "hd0,gpt1", "suf": "efi"}).entries[0]
    assert seeded.linux_command == "linuxefi" and seeded.cmdline_words[1] == "b=hd0,gpt1"   # the file sets nothing


def test_run_time_commands_take_the_seed_or_become_unknown():
    text = ("gptprio.next -d dev -u uuid\n"
            "if [ $? -ne 0 ]; then echo failed; fi\n"
            "search --no-floppy --fs-uuid --set=boot 1234\n"
            'echo "[$uuid] [$boot]"\n')
    cfg = parse_grub_cfg(text, env={"dev": "hd0,gpt3", "uuid": "abc"})
    # the caller knows what gptprio.next picks, so it succeeded; search's answer is unknown
    assert cfg.output == ["[abc] [$boot]"] and cfg.unknown["boot"] == "grub.cfg:3: set by search at run time"
    assert cfg.warnings == ["grub.cfg:3: search sets $boot at run time: unknown offline"]
    blind = parse_grub_cfg(text)
    # "failed" is printed in one branch only: the output says where it forks
    assert blind.output == ["[output depends on grub.cfg:2]", "[$uuid] [$boot]"]
    assert any(w.startswith("grub.cfg:2: condition not decidable offline (depends on $? of gptprio.next (line 1))")
               for w in blind.warnings)


def test_default_entry_rules_and_warnings():
    menu = 'menuentry a { linux /a }\nmenuentry b --id bee { linux /b }\nmenuentry c { echo no kernel }\n'
    assert parse_grub_cfg(menu).default_entry().title == "a"                       # unset: the first
    assert parse_grub_cfg("set default=bee\n" + menu).default_entry().title == "b"  # by id
    assert parse_grub_cfg("set default=1\n" + menu).default_entry().title == "b"    # by number
    missing = parse_grub_cfg("set default=zzz\n" + menu)
    assert missing.default_entry().title == "a" and missing.warnings == [
        "grub.cfg: default 'zzz' matches no menu entry: GRUB boots the first one"]
    no_kernel = parse_grub_cfg("set default=c\n" + menu)
    assert no_kernel.default_entry().title == "c" and no_kernel.default_entry().output == ["no kernel"]
    assert no_kernel.warnings == ["grub.cfg:4: the default entry 'c' runs no linux command"]
    unknown = parse_grub_cfg("search --set default --file /x\n" + menu)
    assert unknown.default_entry() is None
    assert "grub.cfg: default '$default' is unknown at run time: the entry GRUB boots is not known" in unknown.warnings
    assert parse_grub_cfg("").default_entry() is None and parse_grub_cfg("").warnings == []


def test_undecidable_loop_merges_zero_and_one_more_iteration():
    cfg = parse_grub_cfg("n=a\nwhile [ -f /x$n ]; do n=${n}a; done\nk=1\n")
    assert cfg.variables["n"] == "$n" and cfg.variables["k"] == "1"
    assert cfg.warnings[-1].startswith("grub.cfg:2: loop condition not decidable offline")


def test_warnings_name_file_and_line_of_sourced_files():
    files = {"/a.cfg": "set x=1\nfrobnicate --all\nsource /b.cfg\n", "/b.cfg": "\n\nif [ -e $root/z ]; then y=1; fi\n"}
    cfg = parse_grub_cfg("source /a.cfg\n", loader=files.get, name="/boot/grub/grub.cfg")
    assert cfg.sourced == ["/a.cfg", "/b.cfg"] and cfg.variables["x"] == "1"
    assert cfg.warnings == [
        "/a.cfg:2: command 'frobnicate' not evaluated (not modelled; it could change variables or the menu)",
        "/b.cfg:3: test -e $root/z: no file lookup available offline",
        "/b.cfg:3: condition not decidable offline (depends on $root): both branches evaluated, what they set "
        "differently is unknown"]
    gone = parse_grub_cfg("source /nowhere.cfg\nconfigfile /other.cfg\n", loader=files.get)
    assert gone.warnings == ["grub.cfg:1: source /nowhere.cfg: not found: not followed",
                             "grub.cfg:2: configfile /other.cfg: not found: not followed"]


def test_loader_command_line_is_built_as_grub_does():
    entry = parse_grub_cfg('menuentry x { linux /k a "b c" \'q"uote\' back\\\\slash "it\'s" }\n').entries[0]
    assert entry.cmdline_words == ["a", "b c", 'q"uote', "back\\slash", "it's"]
    # lib/cmdline.c: quotes around words with a space, a backslash before \ ' and "
    assert entry.cmdline == 'a "b c" q\\"uote back\\\\slash it\\\'s'
    assert entry.proc_cmdline.startswith("BOOT_IMAGE=/k a ")


def test_entry_body_runs_with_the_final_variables_and_its_own_parameters():
    text = ('set v=early\nmenuentry "T" --id t extra {\n  linux /k v=$v one=$1 two=$2 n=$# chosen=$chosen\n}\n'
            "set v=late\n")
    entry = parse_grub_cfg(text).entries[0]
    assert entry.cmdline_words == ["v=late", "one=T", "two=extra", "n=2", "chosen=t"]
    assert entry.args == ["extra"] and entry.users == "" and not entry.unrestricted


@pytest.mark.parametrize("command,var", [
    ("search --no-floppy --fs-uuid --set=root --hint-bios=hd0,gpt1 --hint-efi=hd0,gpt1 1234", "root"),
    ("search -s dev -f /boot/vmlinuz", "dev"),
    ("search --set --label BOOT", "root"),                    # --set without a name sets root
    ("search --no-floppy --set oem --part-label OEM --hint $root", "oem"),          # Flatcar's GRUB
    ("search --no-floppy --root-dev-only --set private --part-label BOTTLEROCKET-PRIVATE", "private"),
    ("search.fs_uuid 1234 found hd0,gpt1", "found"),
    ("search.fs_label BOOT found", "found"),
    ("search.file /grub/grub.cfg found", "found"),
])
def test_search_variants(command, var):
    cfg = parse_grub_cfg(command + "\n")
    assert cfg.variables[var] == f"${var}" and cfg.unknown[var] == f"grub.cfg:1: set by {command.split()[0]} at run time"
    seeded = parse_grub_cfg(command + '\necho "$? $' + var + '"\n', env={var: "hd0,gpt9"})
    assert seeded.output == ["0 hd0,gpt9"] and seeded.warnings == []


def test_search_without_a_variable_or_with_a_bad_option():
    cfg = parse_grub_cfg('search --file /x\necho "[$root]"\nsearch --bogus x\necho "$?"\n', env={"root": "hd0,gpt1"})
    assert cfg.output == ["[hd0,gpt1]", "18"]
    assert cfg.warnings == ["grub.cfg:3: search: unknown argument `--bogus' (GRUB stops with an error)"]


def test_menuentry_options():
    text = ('menuentry "A" --class os --class linux --users alice,bob --hotkey=a --id=a-id extra {\n  linux /a\n}\n'
            'menuentry "B" --unrestricted -- --not-an-option {\n  linux /b\n}\n'
            'submenu "S" --id s { menuentry "C" --unknown-option { linux /c; } }\n')
    a, b, c = parse_grub_cfg(text).entries
    assert (a.classes, a.users, a.hotkey, a.id, a.args, a.unrestricted) == (["os", "linux"], "alice,bob", "a", "a-id", ["extra"], False)
    assert (b.unrestricted, b.args, b.users) == (True, ["--not-an-option"], None)
    # ACCEPT_DASH (commands/menuentry.c): an unknown option is an argument like any other
    assert (c.title, c.args, c.index, c.submenu) == ("C", ["--unknown-option"], "2>0", "S")
