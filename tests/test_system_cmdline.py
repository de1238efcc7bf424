"""Kernel command line parsing: quoting and key rules on strings, and the root=/mount.usr= mount
helpers compared with what systemd-fstab-generator (the real consumer) makes of the same line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from immutools.system.cmdline import KernelCmdline, parse_dm_create, split_words
from immutools.system.devices import decode_devnode_name, devnode, encode_devnode_name, parse_source

FSTAB_GENERATOR = Path("/usr/lib/systemd/system-generators/systemd-fstab-generator")


# ---- splitting and lookups ----------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("a b  c", ["a", "b", "c"]),
    ("  \tro\n quiet ", ["ro", "quiet"]),
    ('key="a b" x', ["key=a b", "x"]),
    ('"key=a b"', ["key=a b"]),
    ('a"b c"d', ["ab cd"]),
    ("x='q r'", ["x=q r"]),
    ('e=\\"f', ['e=\\"f']),
    ('""', [""]),
    ('dm-mod.create="root,,,ro,0 8 verity 1 a b" -- x', ["dm-mod.create=root,,,ro,0 8 verity 1 a b", "--", "x"]),
    ('unterminated="a b', ["unterminated=a b"]),
])
def test_split_words(text, words):
    assert split_words(text) == words


def test_keys_values_repeats_and_separator():
    c = KernelCmdline('root=LABEL=ROOT rootflags=rw ro console=tty0 console=ttyS0,115200 init_on_alloc=1 '
                      'mount.usr=PARTUUID=a=b -- systemd.log_level=debug ro-flag')
    assert c.get("root") == "LABEL=ROOT"
    assert c.get("mount.usr") == "PARTUUID=a=b"        # '=' inside the value kept
    assert c.get("console") == "ttyS0,115200"          # last wins
    assert c.all("console") == ["tty0", "ttyS0,115200"]
    assert c.get("init-on-alloc") == "1"               # '-' and '_' are the same in keys
    assert c.has("ro") and c.flag("ro") and not c.has("rw")
    assert c.get("systemd.log_level") == "debug"       # systemd reads past '--'
    assert c.get("systemd.log_level", kernel_only=True) is None
    assert [a.key for a in c.init_args] == ["systemd.log_level", "ro-flag"]
    assert c.get("nothing", "dflt") == "dflt"
    assert ("root", "LABEL=ROOT") in c.items()
    assert c.access_flag() == "ro"


def test_evidence_names_key_and_origin():
    c = KernelCmdline("mount.usr=/dev/mapper/usr ro", origin="partition 1 (EFI-SYSTEM): /loader/entries/a.conf")
    ev = c.evidence("mount.usr")
    assert ev["source"] == "kernel command line key mount.usr= from partition 1 (EFI-SYSTEM): /loader/entries/a.conf"
    assert ev["detail"] == "mount.usr=/dev/mapper/usr" and ev["observed"] is True
    assert c.evidence("ro")["source"].startswith("kernel command line flag ro from ")


def test_lsm_lockdown_module_init_helpers():
    c = KernelCmdline("selinux=0 enforcing=1 security=apparmor lsm=landlock,lockdown,yama lockdown=integrity "
                      "module.sig_enforce init=/usr/lib/systemd/systemd -- init=/bogus")
    assert c.lsm_settings() == {"selinux": "0", "enforcing": "1", "security": "apparmor",
                                "lsm": ["landlock", "lockdown", "yama"]}
    assert c.lockdown() == "integrity"
    assert c.module_sig_enforce() is True               # a bare bool parameter is true
    assert c.init() == "/usr/lib/systemd/systemd"       # after '--' it is an init argument
    assert KernelCmdline("module.sig_enforce=0").module_sig_enforce() is False
    assert KernelCmdline("quiet").module_sig_enforce() is None


def test_verity_helpers_flatcar_and_systemd_styles():
    flatcar = KernelCmdline("mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 "
                            "rootflags=rw mount.usrflags=ro root=LABEL=ROOT verity.usrhash=" + "ab" * 32)
    v = flatcar.usr_verity()
    assert v["data"] == "PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132" and v["root_hash"] == "ab" * 32
    assert flatcar.root_verity() is None
    dps = KernelCmdline("usrhash=" + "cd" * 32 + " roothash=" + "ef" * 32 + " systemd.verity_root_data=/dev/sda3")
    assert dps.usr_verity()["root_hash"] == "cd" * 32 and dps.usr_verity()["data"] is None
    assert dps.root_verity() == {"data": "/dev/sda3", "hash": None, "root_hash": "ef" * 32, "options": None,
                                 "keys": ["roothash", "systemd.verity_root_data"]}
    assert set(dps.verity_settings()) == {"usrhash", "roothash", "systemd.verity_root_data"}


def test_dm_mod_create_bottlerocket_table():
    table = ("root,,,ro,0 2097152 verity 1 PARTUUID=aa/PARTNROFF=1 PARTUUID=aa/PARTNROFF=2 4096 4096 262144 1 "
             "sha256 " + "12" * 32 + " " + "34" * 32 + " 2 restart_on_corruption ignore_zero_blocks")
    c = KernelCmdline(f'root=/dev/dm-0 rootwait ro dm-mod.create="{table}" -- systemd.show_status=true')
    (dev,) = c.dm_devices()
    assert (dev.name, dev.uuid, dev.minor, dev.flags, dev.index) == ("root", "", "", "ro", 0)
    (t,) = dev.tables
    assert (t.start, t.length, t.target) == (0, 2097152, "verity")
    assert t.data_device == "PARTUUID=aa/PARTNROFF=1" and t.hash_device == "PARTUUID=aa/PARTNROFF=2"
    assert t.arg_list[8] == "12" * 32
    two = parse_dm_create("a,,,ro,0 8 linear /dev/sda 0,8 8 linear /dev/sdb 0;b,uuid-b,5,rw,0 16 zero")
    assert [d.name for d in two] == ["a", "b"] and [d.index for d in two] == [0, 1]
    assert [t.target for t in two[0].tables] == ["linear", "linear"] and two[1].tables[0].args == ""
    assert two[1].uuid == "uuid-b" and two[1].minor == "5"
    assert parse_dm_create("broken")[0].tables == []


# ---- device specifications -------------------------------------------------------------------------
def test_source_specs():
    assert parse_source("LABEL=ROOT").kind == "label"
    s = parse_source("PARTUUID=abc/PARTNROFF=2")
    assert (s.kind, s.value, s.offset) == ("partuuid", "abc", 2)
    s = parse_source("/dev/disk/by-partlabel/USR\\x2dA")
    assert (s.kind, s.value) == ("partlabel", "USR-A")
    assert parse_source("/dev/mapper/usr").value == "usr"
    assert parse_source("/dev/dm-0").number == 0
    assert parse_source("/dev/nvme0n1p9").number == 9 and parse_source("/dev/vda3").number == 3
    assert parse_source("/dev/mmcblk0p2").number == 2 and parse_source("/dev/xvda12").number == 12
    assert parse_source("/local/var").kind == "path" and parse_source("tmpfs").kind == "other"
    assert parse_source("/dev/cdrom").kind == "devnode"
    name = "a b/ü~#+-.:=@_"
    assert decode_devnode_name(encode_devnode_name(name)) == name


# ---- the mount helpers against systemd-fstab-generator ---------------------------------------------
GENERATOR_CASES = [
    "root=LABEL=ROOT rootflags=rw mount.usrflags=ro mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132",
    "root=/dev/sda1 ro rootflags=noatime rootfstype=ext4 rootflags=discard",
    "root=PARTUUID=abc rw rootflags=rw,x ro mount.usr=LABEL=USR mount.usrflags=noatime",
    "rw mount.usr=X",
    "roothash=" + "ab" * 32,
    "root=/dev/sda1 roothash=abc",
    "mount.usr=/dev/sdb rootfstype=xfs root=/dev/sda mount.usrflags=a mount.usrflags=b",
    "mount.usr=/dev/sdb mount.usrfstype=ext4 rootfstype=xfs root=/dev/sda",
    "root=LABEL=A root=LABEL=B",
    "root=/dev/sda1 -- root=/dev/sdb",
    'root="LABEL=my root" rootflags="a b"',
    "root='LABEL=x y'",
    'root="LABEL=a b"c"d e" rootflags=x"y z"',
    "root=PARTLABEL=a/b#c+d=e@f_g:h.i~j%kü",
    "root=UUID=ABC-def",
    "root=/dev/sda usrhash=abc",
    "root=/dev/sda mount.usr",
    "root=/dev/sda ro rw",
    "root=/dev/sda root_flags=x",
    "root=/dev/sda rootflags=a rootflags= rootflags=b",
    "root=tmpfs",
    "root=/dev/sda rootflags=ro,noatime",
    "root=/dev/sda mount.usr=/dev/sdb mount.usrflags=rw",
    "root=/dev/sda1 -- ro",
    "quiet splash",
]


def _generate(cmdline: str, tmp: Path) -> dict[str, dict[str, str]]:
    out = tmp / "gen"
    out.mkdir()
    env = dict(os.environ, SYSTEMD_IN_INITRD="1", SYSTEMD_FSTAB="/dev/null", SYSTEMD_SYSROOT_FSTAB="/dev/null",
               SYSTEMD_PROC_CMDLINE=cmdline, SYSTEMD_LOG_LEVEL="err")
    subprocess.run([str(FSTAB_GENERATOR), str(out), str(out), str(out)], env=env, capture_output=True, check=True)
    units = {}
    for name in ("sysroot.mount", "sysusr-usr.mount"):
        path = out / name
        if path.exists():
            values = {}
            for line in path.read_text().splitlines():
                key, eq, value = line.partition("=")
                if eq and key in ("What", "Type", "Options"):
                    values[key] = value
            units[name] = values
    return units


@pytest.mark.skipif(not FSTAB_GENERATOR.exists(), reason="systemd-fstab-generator not installed (Debian package systemd)")
@pytest.mark.parametrize("line", GENERATOR_CASES)
def test_mounts_match_systemd_fstab_generator(line, tmp_path):
    generated = _generate(line, tmp_path)
    c = KernelCmdline(line)
    for unit_name, ours in (("sysroot.mount", c.root_mount()), ("sysusr-usr.mount", c.usr_mount())):
        theirs = generated.get(unit_name)
        if ours is None or ours.special in ("gpt-auto", "network"):
            assert theirs is None, f"{unit_name}: generator made {theirs}, we made none"
            continue
        assert theirs is not None, f"{unit_name}: we made {ours}, the generator none"
        assert theirs["What"] == ours.devnode
        assert theirs.get("Type") == ours.fstype
        assert theirs["Options"] == ",".join(ours.options)


def test_devnode_matches_generator_encoding():
    # the same encoding the generator used in the cases above, on its own
    assert devnode("LABEL=my root") == "/dev/disk/by-label/my\\x20root"
    assert devnode("PARTLABEL=a/b~%") == "/dev/disk/by-partlabel/a\\x2fb\\x7e\\x25"
    assert devnode('LABEL="quoted"') == "/dev/disk/by-label/quoted"
    assert devnode("ID=foo") == "ID=foo" and devnode("/dev/sda") == "/dev/sda"


def test_dm_verity_tables_use_the_verity_parser():
    pytest.importorskip("immutools.fs.verity")        # the shared verity table parser
    table = ("root,,,ro,0 2097152 verity 1 PARTUUID=aa/PARTNROFF=1 PARTUUID=aa/PARTNROFF=2 4096 4096 262144 1 "
             "sha256 " + "12" * 32 + " " + "34" * 32 + " 2 restart_on_corruption ignore_zero_blocks")
    (dev,) = KernelCmdline(f'dm-mod.create="{table}"').dm_devices()
    parsed = dev.tables[0].verity
    assert dev.tables[0].verity_error is None
    assert (parsed.root_hash, parsed.salt, parsed.data_blocks) == ("12" * 32, "34" * 32, 262144)
    (broken,) = parse_dm_create("root,,,ro,0 8 verity 1 a")
    assert broken.tables[0].verity is None and broken.tables[0].verity_error
