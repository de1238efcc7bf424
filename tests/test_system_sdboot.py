"""systemd-boot entries and loader.conf: parsed from a real FAT image with our reader, compared
with ``bootctl list`` on the same image (loop-mounted, needs root) and ``systemd-analyze
compare-versions`` for the version order."""

from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from builders import cached, have, run
from immutools.fs import open_filesystem
from immutools.image.source import FileSource
from immutools.system.sdboot import parse_entry, parse_loader_conf, read_loader, select_default, version_compare

VERSION_PAIRS = [
    ("1.2", "1.10"), ("1.10", "1.2"), ("1.0", "1.0"), ("1.0~rc1", "1.0"), ("1.0", "1.0.1"), ("1.0-1", "1.0.1"),
    ("1.0^post", "1.0"), ("1.0a", "1.0"), ("1.0a", "1.0b"), ("abc", "abcde"), ("0010", "10"), ("6.1.0", "6.10.0"),
    ("fedora-6.1.0.conf", "fedora-6.10.0.conf"), ("a", "1"), ("1_2", "1.2"), ("", "1"), ("~", "~~"),
    ("5.14.0-362.el9.x86_64", "5.14.0-70.el9.x86_64"), ("ostree-2-fcos.conf", "ostree-1-fcos.conf"),
    ("1.0-", "1.0"), ("1..2", "1.2"), ("x.y", "x-y"),
]


@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze not installed (Debian package systemd)")
def test_version_compare_matches_systemd():
    rng = random.Random(7)
    pairs = list(VERSION_PAIRS)
    alphabet = "0123456789ab.-~^_"
    for _ in range(80):
        pairs.append(("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8))),
                      "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8)))))
    codes = {0: 0, 11: 1, 12: -1}
    for a, b in pairs:
        if not a or not b:
            continue                 # the tool refuses empty arguments
        proc = subprocess.run(["systemd-analyze", "compare-versions", "--", a, b], capture_output=True)
        assert proc.returncode in codes, proc.stderr
        assert version_compare(a, b) == codes[proc.returncode], (a, b)
    assert version_compare("", "1") == -1 and version_compare("1", "") == 1


def test_parse_entry_and_conf():
    e = parse_entry("# comment\ntitle  Fedora Linux 40\nversion 6.8.5\nmachine-id 0123\nsort-key fedora\n"
                    "linux /vmlinuz\ninitrd /a.img\ninitrd /b.img\noptions root=UUID=x ro\noptions quiet\n"
                    "architecture x64\nunknown-key v\n", "fedora+2-1.conf", "/loader/entries/fedora+2-1.conf")
    assert (e.id, e.tries_left, e.tries_done) == ("fedora.conf", 2, 1)
    assert e.title == "Fedora Linux 40" and e.machine_id == "0123" and e.sort_key == "fedora"
    assert e.initrd == ["/a.img", "/b.img"] and e.options == "root=UUID=x ro quiet"
    assert e.kernel_cmdline().get("root") == "UUID=x" and e.lines["options"] == 10
    assert e.extra == {"unknown-key": "v"} and e.architecture == "x64"
    c = parse_loader_conf("timeout 10\n# x\ndefault @saved\nconsole-mode max\nsecure-boot-enroll manual\n")
    assert (c.timeout, c.default, c.console_mode, c.secure_boot_enroll) == ("10", "@saved", "max", "manual")
    entry, how = select_default([e], c)
    assert entry is e and "EFI variable" in how
    assert select_default([], None) == (None, "no entries")


# Scenarios: (loader.conf or None, {file name: content}).
SCENARIOS = {
    "glob": ("default fedora-*\ntimeout 3\n", {
        "fedora-6.1.0.conf": "title Fedora A\nversion 6.1.0\nlinux /k/a\noptions root=LABEL=x ro\noptions quiet\n",
        "fedora-6.10.0+3-1.conf": "title Fedora B\nversion 6.10.0\nlinux /k/b\noptions root=LABEL=y\n",
        "zzz.conf": "title Other\nsort-key aaa\nversion 1\nlinux /k/c\n",
    }),
    "nodefault": (None, {
        "a-1.conf": "title A1\nlinux /k/a\n",
        "a-2.conf": "title A2\nlinux /k/b\n",
        "b.conf": "title B\nsort-key b\nversion 2\nlinux /k/c\n",
        "c.conf": "title C\nsort-key b\nversion 10\nlinux /k/c\n",
    }),
    "bootcount": ("default *\n", {
        "os-new+0-3.conf": "title New (bad)\nversion 2\nlinux /k/a\n",
        "os-old.conf": "title Old\nversion 1\nlinux /k/b\n",
        "os-mid+2.conf": "title Mid\nversion 1\nlinux /k/c\n",
    }),
    "ostree": ("timeout 5\n", {
        "ostree-1-fedora-coreos.conf": "title Fedora CoreOS 39 (ostree:1)\nversion 1\noptions ostree=/ostree/boot.1/fedora-coreos/x/1 rw\nlinux /k/a\n",
        "ostree-2-fedora-coreos.conf": "title Fedora CoreOS 40 (ostree:0)\nversion 2\noptions ostree=/ostree/boot.1/fedora-coreos/y/0 rw\nlinux /k/b\n",
    }),
    "nomatch": ("default nothing-*\n", {"x.conf": "title X\nlinux /k/a\n", "y.conf": "title Y\nlinux /k/b\n"}),
}


def _esp_image(name: str) -> Path:
    conf, entries = SCENARIOS[name]

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "loader" / "entries").mkdir(parents=True)
            (root / "k").mkdir()
            for kernel in ("a", "b", "c"):
                (root / "k" / kernel).write_bytes(b"kernel")
            if conf is not None:
                (root / "loader" / "loader.conf").write_text(conf)
            for fname, text in entries.items():
                (root / "loader" / "entries" / fname).write_text(text)
            run(["mkfs.vfat", "-C", "-n", "ESP", str(out), "8192"])
            run(["mcopy", "-s", "-i", str(out), str(root / "loader"), str(root / "k"), "::/"])

    return cached(f"sdboot-{name}", {"v": 1, "conf": conf, "entries": entries}, build)


def _bootctl_list(image: Path) -> list[dict]:
    """``bootctl list`` over the image's files (copied out with mtools, another FAT reader: this
    kernel may lack vfat), bind-mounted so bootctl accepts the directory as an ESP."""
    with tempfile.TemporaryDirectory(prefix="esp-") as tmp:
        mnt = Path(tmp)
        run(["mcopy", "-s", "-n", "-i", str(image), "::/loader", "::/k", str(mnt)])
        run(["mount", "--bind", str(mnt), str(mnt)])
        try:
            env = dict(os.environ, SYSTEMD_RELAX_ESP_CHECKS="1")
            out = subprocess.run(["bootctl", f"--esp-path={mnt}", "--no-pager", "list"], env=env,
                                 capture_output=True, text=True, check=True).stdout
        finally:
            run(["umount", str(mnt)])
    rows = []
    for block in out.strip().split("\n\n"):
        row = {}
        for line in block.splitlines():
            key, _, value = line.strip().partition(": ")
            row[key] = value
        if "id" in row:
            row["default"] = "(default)" in row.get("title", "")
            row["title"] = re.sub(r" \((default|not reported/new|selected|reported/absent)\)", "", row["title"])
            rows.append(row)
    return rows


@pytest.mark.skipif(not (have("bootctl") and have("mkfs.vfat") and have("mcopy")),
                    reason="bootctl (Debian systemd-boot), mkfs.vfat or mcopy missing")
@pytest.mark.skipif(os.geteuid() != 0, reason="bootctl needs the ESP to be a mount point (bind mount: root)")
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_entries_and_default_match_bootctl(scenario):
    image = _esp_image(scenario)
    fs = open_filesystem(FileSource(str(image)), "vfat")
    config = read_loader(fs)
    theirs = _bootctl_list(image)
    assert [e.id for e in config.entries] == [r["id"] for r in theirs]
    for ours, row in zip(config.entries, theirs):
        assert ours.title == row["title"]
        assert ours.version == row.get("version")
        assert ours.options == row.get("options", "")
        assert ours.linux == row.get("linux")
        tries = None
        if ours.tries_left is not None:
            tries = f"{ours.tries_left} left" + (f"; {ours.tries_done} done" if ours.tries_done is not None else "")
        assert tries == row.get("tries")
        assert ours.path == "/loader/entries/" + row["source"].rsplit("/", 1)[1]
    default, _how = config.default_entry()
    expected = [r["id"] for r in theirs if r["default"]]
    assert [default.id] == expected


def test_read_loader_absent_and_damaged(tmp_path):
    # a FAT image without loader/ gives None; an unreadable entry becomes a warning, not a crash
    image = tmp_path / "empty.img"
    run(["mkfs.vfat", "-C", str(image), "2048"])
    fs = open_filesystem(FileSource(str(image)), "vfat")
    assert read_loader(fs) is None
