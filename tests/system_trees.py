"""Miniature OS trees for the shared system layer's tests (units, OsTree, surface).

Each tree is two directories, ``root/`` (made into an ext4 image with ``mke2fs -d``) and ``usr/``
(a squashfs with ``mksquashfs``, or a btrfs with ``mkfs.btrfs --rootdir``), the way Flatcar splits
ROOT and USR. ``composed(...)`` copies both into one directory for reference tools that need the
running system's view (``systemctl --root``). Everything is cached by recipe (builders.cached).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from builders import cached, run
from immutools.fs import open_filesystem
from immutools.image.source import FileSource
from immutools.system.rootview import OsTree

RECIPE_VERSION = 6


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _elf(name: str) -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\0" * 57 + f"fake {name}\n".encode()


KERNEL_CONFIG_SIG_OFF = "CONFIG_MODULES=y\nCONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_SECURITY_LOCKDOWN_LSM=y\n"
KERNEL_CONFIG_SIG_ON = "CONFIG_MODULES=y\nCONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n"
KERNEL_CONFIG_NO_MODULES = "# CONFIG_MODULES is not set\nCONFIG_EROFS_FS=y\n"

U = "lib/systemd/system"     # inside the usr tree


def make_full(base: Path) -> None:
    """A general-purpose systemd system: shells, sshd socket-enabled, rpm + dpkg, SELinux
    enforcing with a policy, setuid/setgid files, modules, units of every kind."""
    root, usr = base / "root", base / "usr"
    # ---- ROOT ----
    for d in ("usr", "proc", "sys", "dev", "run", "tmp", "home", "root", "boot", "srv", "mnt", "media", "opt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _link(root / "bin", "usr/bin")
    _link(root / "sbin", "usr/sbin")
    _link(root / "lib", "usr/lib")
    _link(root / "lib64", "usr/lib")
    es = root / "etc/systemd/system"
    _link(es / "multi-user.target.wants/en.service", "/usr/lib/systemd/system/en.service")
    _link(es / "sockets.target.wants/sshd.socket", "/usr/lib/systemd/system/sshd.socket")
    _link(es / "multi-user.target.wants/masked.service", "/usr/lib/systemd/system/masked.service")
    _link(es / "masked.service", "/dev/null")
    _write(es / "empty.service", "")
    _link(es / "alias1.service", "/usr/lib/systemd/system/en.service")
    _link(es / "default.target", "/usr/lib/systemd/system/multi-user.target")
    _write(es / "en.service.d/10-o.conf", "[Service]\nExecStart=\nExecStart=/usr/bin/en --etc\n")
    _write(es / "override.service", "[Unit]\nDescription=from etc\n[Service]\nExecStart=/usr/bin/etc-version\n")
    _link(es / "vend.service.d/50-masked.conf", "/dev/null")
    _write(root / "etc/selinux/config", "# SELinux\nSELINUX=enforcing\nSELINUXTYPE=targeted\n")
    _write(root / "etc/selinux/targeted/policy/policy.33", b"\x8c\xff\x7c\xf9fake policy")
    _write(root / "etc/fstab", "LABEL=ROOT / ext4 defaults 0 1\n")
    _write(root / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    _write(root / "var/lib/dpkg/status", "Package: base-files\nStatus: install ok installed\n")
    _write(root / "var/lib/rpm/rpmdb.sqlite", b"SQLite format 3\0")
    _write(root / "opt/tool/setuid-tool", _elf("setuid-tool"), 0o4755)
    _write(root / "var/tmp/sgid-tool", _elf("sgid-tool"), 0o2711)
    _write(root / "var/tmp/sgid-dir/keep", "x")
    (root / "var/tmp/sgid-dir").chmod(0o2775)             # setgid directory: not a finding
    _write(root / "proc/fake-suid", _elf("pruned"), 0o4755)    # pseudo trees are skipped
    _write(root / "boot/config-6.1.0", KERNEL_CONFIG_SIG_OFF)
    # ---- USR ----
    for name in ("bash", "dash", "busybox", "rpm", "dnf", "flatpak", "coreutils"):
        _write(usr / "bin" / name, _elf(name), 0o755)
    _link(usr / "bin/sh", "bash")
    _link(usr / "bin/ash", "busybox")
    _link(usr / "bin/ls", "coreutils")
    _link(usr / "bin/cat", "/usr/bin/coreutils")
    _link(usr / "bin/dangling", "nowhere")
    os.link(usr / "bin/coreutils", usr / "bin/hardlinked-coreutils")
    _write(usr / "bin/zsh", _elf("zsh"), 0o644)           # not executable: not a shell on PATH
    _write(usr / "bin/README", "not a program\n", 0o644)
    _write(usr / "bin/su", _elf("su"), 0o4755)
    _write(usr / "bin/wall", _elf("wall"), 0o2755)
    _write(usr / "sbin/sshd", _elf("sshd"), 0o755)
    _write(usr / "lib/systemd/systemd", _elf("systemd"), 0o755)
    _link(usr / "sbin/init", "../lib/systemd/systemd")
    _write(usr / "lib/os-release", "ID=minios\nVERSION_ID=1\n")
    mods = usr / "lib/modules/6.1.0"
    for name in ("kernel/drivers/a.ko", "kernel/drivers/b.ko.xz", "kernel/fs/c.ko.zst", "kernel/net/d.ko.gz"):
        _write(mods / name, b"\x7fELF mod")
    _write(mods / "modules.dep", "")
    _write(mods / "kernel/notamodule.ko.txt", "x")
    _write(usr / "share/selinux/targeted/base.pp", b"pp")
    _write(usr / "share/factory/etc/selinux/config", "SELINUX=permissive\nSELINUXTYPE=fortified\n")
    u = usr / U
    _write(u / "en.service", "[Unit]\nDescription=enabled\n[Service]\nExecStart=/usr/bin/en\n"
                             "[Install]\nWantedBy=multi-user.target\nAlias=alias1.service\n")
    _write(u / "en.service.d/10-o.conf", "[Service]\nUser=shadowed\n")
    _write(u / "en.service.d/20-v.conf", "[Service]\nNice=5\n")
    _write(u / "service.d/05-top.conf", "[Service]\nEnvironment=TOP=1\n")
    _write(u / "a-b-c.service", "[Service]\nExecStart=/usr/bin/abc\n")
    _write(u / "a-.service.d/10-prefix.conf", "[Service]\nEnvironment=PREFIX=a\n")
    _write(u / "a-b-.service.d/20-prefix.conf", "[Service]\nEnvironment=PREFIX=ab\n")
    _write(u / "static.service", "[Service]\nExecStart=/usr/bin/static\n")
    _write(u / "dis.service", "[Service]\nExecStart=/usr/bin/dis\n[Install]\nWantedBy=multi-user.target\n")
    _write(u / "ind.service", "[Service]\nExecStart=/usr/bin/ind\n[Install]\nAlso=sshd.socket\n")
    _write(u / "masked.service", "[Service]\nExecStart=/usr/bin/masked\n[Install]\nWantedBy=multi-user.target\n")
    _write(u / "override.service", "[Service]\nExecStart=/usr/bin/usr-version\n")
    _write(u / "vend.service", "[Service]\nExecStart=/usr/bin/vend\n[Install]\nWantedBy=multi-user.target\n")
    _write(u / "vend.service.d/50-masked.conf", "[Service]\nNice=19\n")
    _link(u / "multi-user.target.wants/vend.service", "../vend.service")
    _write(u / "sshd.socket", "[Unit]\nDescription=SSH socket\n[Socket]\nListenStream=22\nListenStream=[::]:2222\n"
                              "Accept=yes\n[Install]\nWantedBy=sockets.target\n")
    _write(u / "sshd@.service", "[Service]\nExecStart=-/usr/sbin/sshd -i\nStandardInput=socket\n")
    _write(u / "sshd.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n")
    _write(u / "multi-user.target", "[Unit]\nDescription=Multi-User\nRequires=basic.target\n")
    _write(u / "basic.target", "[Unit]\nWants=sockets.target timers.target\n")
    _write(u / "sockets.target", "[Unit]\nDescription=Sockets\n")
    _write(u / "getty@.service", "[Service]\nExecStart=-/sbin/agetty %I\n[Install]\nWantedBy=getty.target\n")
    _link(u / "getty.target.wants/getty@tty1.service", "../getty@.service")
    _write(u / "getty.target", "[Unit]\nDescription=Gettys\n")
    _write(u / "var-lib-foo.mount", "[Unit]\nDescription=foo\n[Mount]\nWhat=/dev/disk/by-label/DATA\n"
                                    "Where=/var/lib/foo\nType=ext4\nOptions=noatime,nodev\n")
    _write(u / "tmp.mount", "[Mount]\nWhat=tmpfs\nWhere=/tmp\nType=tmpfs\nOptions=mode=1777,strictatime\nOptions=nosuid\n")
    _write(u / "boot.automount", "[Automount]\nWhere=/boot\nTimeoutIdleSec=30\n")
    _write(u / "cont.service", "[Service]\n# comment\nExecStart=/usr/bin/cont \\\n  --one \\\n# inside\n  --two\n"
                               "Environment=A=1\nEnvironment=\nEnvironment=B=2\n; other comment\n"
                               "[Install]\nWantedBy=multi-user.target\n")
    _write(usr / "lib/systemd/system-preset/90-default.preset", "# presets\nenable sshd.socket\ndisable *\n")


def make_bare(base: Path) -> None:
    """No shells, no package managers, no SELinux, no init; sshd present but not enabled, its
    socket linked but masked; modules cannot be loaded at all. A configured system (it has a
    machine ID), so systemd's first-boot presets do not apply (machine-id(5))."""
    root, usr = base / "root", base / "usr"
    for d in ("usr", "etc", "var", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    es = root / "etc/systemd/system"
    _link(es / "sockets.target.wants/sshd.socket", "/usr/lib/systemd/system/sshd.socket")
    _link(es / "sshd.socket", "/dev/null")
    _write(root / "etc/selinux/README", "no config here\n")
    _write(root / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    _write(usr / "bin/agent", _elf("agent"), 0o755)
    _write(usr / "bin/notashell-sh", _elf("x"), 0o755)
    _write(usr / "sbin/sshd", _elf("sshd"), 0o755)
    _write(usr / "boot/config", KERNEL_CONFIG_NO_MODULES)
    u = usr / U
    _write(u / "sshd.socket", "[Socket]\nListenStream=22\n[Install]\nWantedBy=sockets.target\n")
    _write(u / "sshd.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n")
    _write(u / "sockets.target", "[Unit]\nDescription=Sockets\n")


TREES = {"full": make_full, "bare": make_bare}


def tree_dirs(name: str) -> Path:
    """The cached source directories (``root/`` and ``usr/``) of tree ``name``."""
    def build(out: Path) -> None:
        out.mkdir()
        (out / "root").mkdir()
        (out / "usr").mkdir()
        TREES[name](out)

    return cached(f"system-tree-{name}", {"v": RECIPE_VERSION, "tree": name}, build, suffix="")


def root_image(name: str) -> Path:
    src = tree_dirs(name)

    def build(out: Path) -> None:
        run(["mke2fs", "-q", "-t", "ext4", "-L", "ROOT", "-d", str(src / "root"), "-E", "root_owner=0:0",
             str(out), "16M"])

    return cached(f"system-root-{name}", {"v": RECIPE_VERSION, "tree": name, "fs": "ext4"}, build)


def usr_image(name: str, fstype: str = "squashfs") -> Path:
    src = tree_dirs(name)

    def build(out: Path) -> None:
        if fstype == "squashfs":
            run(["mksquashfs", str(src / "usr"), str(out), "-noappend", "-no-progress", "-quiet", "-comp", "gzip"])
        elif fstype == "btrfs":
            with open(out, "wb") as f:
                f.truncate(128 * 1024 * 1024)
            run(["mkfs.btrfs", "-q", "-L", "USR-A", "--rootdir", str(src / "usr"), str(out)])
        else:
            raise ValueError(fstype)

    return cached(f"system-usr-{name}", {"v": RECIPE_VERSION, "tree": name, "fs": fstype}, build)


def open_fs(path: Path, fstype: str):
    return open_filesystem(FileSource(str(path)), fstype)


def os_tree(name: str, usr_fstype: str = "squashfs", usr_name: str | None = None) -> OsTree:
    """ROOT ext4 of tree ``name`` at /, the usr image (of ``usr_name``, default the same) at /usr."""
    tree = OsTree()
    tree.mount("/", open_fs(root_image(name), "ext4"), label="ROOT (ext4)")
    tree.mount("/usr", open_fs(usr_image(usr_name or name, usr_fstype), usr_fstype), label=f"USR ({usr_fstype})")
    return tree


def composed(name: str, dest: Path) -> Path:
    """Both directories merged into ``dest``: the running system's tree, for reference tools."""
    src = tree_dirs(name)
    shutil.copytree(src / "root", dest, symlinks=True)
    shutil.copytree(src / "usr", dest / "usr", symlinks=True, dirs_exist_ok=True)
    # masks link to /dev/null; tools running with --root resolve it inside the tree
    (dest / "dev").mkdir(exist_ok=True)
    (dest / "dev" / "null").touch()
    return dest
