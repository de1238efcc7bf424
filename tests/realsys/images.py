"""Build (or take from the fixture cache) a real-system image and its ground truth.

Each image is a directory in the fixture cache: ``disk.raw`` (or ``disk.qcow2``/``disk.raw.xz``),
``truth.json`` (``truth.py``, computed while the unpacked tree still exists) and ``build.json``
(seconds per build step). The key is the archive state and package list (``tree.tree_recipe``),
the layout, the recipe versions below and the versions of the tools that made it, so a warm run
only reads the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from builders import CACHE, cached
from realsys import layouts, truth
from realsys.tree import remove_tree, tree_recipe, tree_tarball, unpack

# Bump when what a layout builds (LAYOUT) or what the ground truth measures (TRUTH) changes.
LAYOUT_RECIPE_VERSION = 1
TRUTH_RECIPE_VERSION = 1

DPS_SIG_TYPES = {"root": "41092b05-9fc8-4523-994f-2def0408b176", "usr": "e7bb33fb-06cf-4e81-8273-e543b413e2e2"}

# name -> how it is made. ``base``+``form``: the same disk in another container.
IMAGES = {
    "debian-plain": {"layout": "debian-plain", "scope": "/"},
    "debian-plain-qcow2": {"base": "debian-plain", "form": "qcow2"},
    "debian-plain-xz": {"base": "debian-plain", "form": "xz", "slow": True},
    "dps-root": {"layout": "dps-root", "scope": "/"},
    "dps-usr-ab": {"layout": "dps-usr-ab", "scope": "/usr"},
    "mkosi-verity": {"layout": "mkosi-verity", "scope": "/"},
}
FAST_IMAGES = [n for n, spec in IMAGES.items() if not spec.get("slow")]
SLOW_IMAGES = [n for n, spec in IMAGES.items() if spec.get("slow")]


class RealSystemUnavailable(Exception):
    """The fixture cannot be built here (not root, no archive); the message says why."""


@dataclass
class RealSystem:
    name: str
    path: Path
    truth: dict
    build: dict


TOOL_PACKAGES = ("systemd", "systemd-boot-efi", "squashfs-tools", "cryptsetup-bin", "e2fsprogs", "dosfstools", "mtools",
                 "fdisk", "gdisk", "binutils", "qemu-utils", "util-linux")


def _tools() -> dict:
    """The Debian package versions of the tools that lay the images out."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *TOOL_PACKAGES], capture_output=True, text=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def _recipe(name: str) -> dict:
    spec = IMAGES[name]
    if "base" in spec:
        return {"base": _recipe(spec["base"]), "form": spec["form"]}
    return {"tree": tree_recipe(), "layout": spec["layout"], "layout_version": LAYOUT_RECIPE_VERSION,
            "truth_version": TRUTH_RECIPE_VERSION, "tools": _tools()}


def _build_layout(name: str, out: Path) -> None:
    spec = IMAGES[name]
    started = time.monotonic()
    tarball = tree_tarball()
    tree_seconds = round(time.monotonic() - started, 1)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=f"realsys-{name}-", dir=CACHE))
    try:
        timer = layouts.Timer()
        tree = unpack(tarball, work / "tree")
        timer.step("unpack tree")
        disk = out / "disk.raw"
        info = layouts.LAYOUTS[spec["layout"]](tree, work, disk, timer)
        facts = {"image": name, "layout": info, "tree": truth.tree_truth(tree, spec["scope"])}
        remove_tree(tree)
        facts["disk"] = truth.disk_truth(disk)
        if info.get("root_hash"):
            role = info["verity_role"]
            facts["verity"] = truth.verity_truth(disk, facts["disk"], info["root_hash"], work)
            facts["signatures"] = truth.signature_truth(disk, facts["disk"], DPS_SIG_TYPES[role])
            facts["uki"] = truth.uki_truth(disk, facts["disk"], 1, info["uki"], work)
        timer.step("ground truth")
        (out / "truth.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
        (out / "build.json").write_text(json.dumps({"steps": timer.steps, "tree_seconds_if_cold": tree_seconds,
                                                    "seconds": round(time.monotonic() - started, 1)}, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_form(name: str, out: Path) -> None:
    spec = IMAGES[name]
    base = real_system(spec["base"])
    started = time.monotonic()
    out.mkdir(parents=True)
    if spec["form"] == "qcow2":
        layouts.convert_qcow2(base.path, out / "disk.qcow2")
    elif spec["form"] == "xz":
        layouts.compress_xz(base.path, out / "disk.raw.xz")
    else:
        raise ValueError(spec["form"])
    shutil.copy(base.path.parent / "truth.json", out / "truth.json")
    (out / "build.json").write_text(json.dumps({"steps": {spec["form"]: round(time.monotonic() - started, 1)},
                                                "seconds": round(time.monotonic() - started, 1)}, indent=1) + "\n")


def real_system(name: str) -> RealSystem:
    """The image ``name`` (see ``IMAGES``), built on first use."""
    if os.geteuid() != 0:
        raise RealSystemUnavailable("the real-system fixtures unpack a Debian tree with its owners and chroot into it "
                                    "for bootctl/kernel-install: run the tests as root")
    for tool in ("mmdebstrap", "systemd-repart", "veritysetup", "mksquashfs", "mkfs.fat", "mcopy", "objcopy", "sgdisk", "unshare"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists():
            raise RealSystemUnavailable(f"{tool} is not installed (./run setup installs it)")
    from realsys.mirror import MirrorUnavailable

    try:
        recipe = _recipe(name)
    except MirrorUnavailable as exc:
        raise RealSystemUnavailable(f"the Debian archive is not reachable and no earlier state is cached: {exc}") from exc
    spec = IMAGES[name]
    builder = _build_form if "base" in spec else _build_layout

    def build(out: Path) -> None:
        try:
            builder(name, out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)      # no half-built entry left in the cache
            raise

    directory = cached(f"realsys-{name}", recipe, build, suffix="")
    disk = next(p for p in directory.iterdir() if p.name.startswith("disk."))
    return RealSystem(name, disk, json.loads((directory / "truth.json").read_text()),
                      json.loads((directory / "build.json").read_text()))
