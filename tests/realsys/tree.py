"""One Debian 12 root tree from Debian's own packages (``mmdebstrap``), shared by every real-system image.

The tree is built once per archive state (``mirror.mirror_state``) and kept in the fixture cache as
the tarball mmdebstrap writes (owners, modes, xattrs and file capabilities preserved); each image
unpacks its own copy and lays it out with its distribution's tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from builders import ENV, cached, run
from realsys.mirror import SUITE, mirror_state

# What a small real server needs: systemd as init, a kernel (the cloud flavour is the smallest
# Debian kernel with modules and a config in /boot), its initramfs, an SSH server, sudo (setuid),
# and systemd-boot (bootctl, the UKI stub linuxx64.efi.stub).
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "linux-image-cloud-amd64", "initramfs-tools", "zstd",
            "openssh-server", "sudo", "systemd-boot")
VARIANT = "minbase"
# Documentation and translations are not what the tests look at; leaving them out makes every
# filesystem built from the tree smaller and faster to build (dpkg path filters, dpkg.cfg(5)).
DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/info/*")
TREE_RECIPE_VERSION = 1


def tool_version(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"


def tree_recipe() -> dict:
    return {"version": TREE_RECIPE_VERSION, "archive": mirror_state(), "variant": VARIANT, "packages": PACKAGES,
            "dpkg": DPKG_OPTIONS, "mmdebstrap": tool_version(["mmdebstrap", "--version"])}


def tree_tarball() -> Path:
    """The cached ``mmdebstrap`` tarball of the shared Debian tree."""
    recipe = tree_recipe()

    def build(out: Path) -> None:
        mode = "root" if os.geteuid() == 0 else "unshare"
        cmd = ["mmdebstrap", f"--mode={mode}", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES)]
        cmd += [f"--dpkgopt={o}" for o in DPKG_OPTIONS]
        cmd += ["--format=tar", SUITE, str(out), recipe["archive"]["mirror"]]
        run(cmd, env=dict(ENV, TMPDIR=str(out.parent)))

    return cached("realsys-debian12-tree", recipe, build, suffix=".tar")


def unpack(tarball: Path, dest: Path) -> Path:
    """Unpack the tree with its owners, modes, xattrs and capabilities (needs root)."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C", dest])
    return dest


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
