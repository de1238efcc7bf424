"""The README's main job: scan the bundled default images and print their reports.

Bundled replicas live under ``data/replicas/`` (see the replica issues). Until they exist, this
builds a small demonstration disk with the real tools (sgdisk, mkfs.vfat + mtools, mke2fs -d),
compresses it with zstd as distributions ship images, and scans both forms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from immutools.paths import cache_dir, data_dir

DEMO_OS_RELEASE = 'NAME="Demo Linux"\nID=demo\nVERSION_ID=1.0\nPRETTY_NAME="Demo Linux 1.0 (built by immutools demo)"\n'


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", LC_ALL="C")
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"immutools demo: {' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")


def build_demo_image(out: Path) -> Path:
    """A 256 MiB sparse GPT disk: ESP (vfat) + Linux root (ext4) with os-release and a shell."""
    for tool in ("sgdisk", "mkfs.vfat", "mcopy", "mke2fs", "zstd"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists():
            raise SystemExit(f"immutools demo: {tool} is missing; run ./run setup")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        disk = tmp / "demo.img"
        with open(disk, "wb") as f:
            f.truncate(256 * 1024 * 1024)
        _run(["sgdisk", "-U", "6a3a0a3e-0000-4000-8000-00000000de70",
              "-n1:2048:+64M", "-t1:ef00", "-c1:EFI-SYSTEM", "-u1:6a3a0a3e-0000-4000-8000-000000000001",
              "-n2:0:0", "-t2:8300", "-c2:ROOT", "-u2:6a3a0a3e-0000-4000-8000-000000000002", str(disk)])
        esp = tmp / "esp.img"
        with open(esp, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        _run(["mkfs.vfat", "-F", "32", "-n", "EFI-SYSTEM", "-i", "0DEC0DE0", str(esp)])
        (tmp / "BOOTX64.EFI").write_bytes(b"MZ demo placeholder\n")
        _run(["mmd", "-i", str(esp), "::EFI", "::EFI/BOOT"])
        _run(["mcopy", "-i", str(esp), str(tmp / "BOOTX64.EFI"), "::EFI/BOOT/BOOTX64.EFI"])
        root = tmp / "root"
        for d in ("etc", "usr/bin", "usr/lib", "var", "home", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/os-release").write_text(DEMO_OS_RELEASE)
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
        (root / "bin").symlink_to("usr/bin")
        # A tiny x86-64 ELF header stands in for a shell binary.
        elf = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\x3e\x00" + b"\0" * 44
        (root / "usr/bin/bash").write_bytes(elf)
        (root / "usr/bin/bash").chmod(0o755)
        (root / "usr/bin/sh").symlink_to("bash")
        rootfs = tmp / "root.img"
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "ROOT", "-U", "6a3a0a3e-0000-4000-8000-0000000000f2",
              "-E", "root_owner=0:0", "-d", str(root), str(rootfs), "190M"])
        for img, off in ((esp, 2048 * 512), (rootfs, (2048 + 64 * 2048) * 512)):
            _run(["dd", f"if={img}", f"of={disk}", "bs=1M", f"seek={off}", "oflag=seek_bytes",
                  "conv=notrunc,sparse", "status=none"])
        os.replace(disk, out)
    _run(["zstd", "-q", "-f", "-19", str(out), "-o", str(out) + ".zst"])
    return out


def default_images() -> list[Path]:
    """The bundled replicas if present, else the demo image (built on first use)."""
    bundled = sorted(
        p for p in (data_dir() / "replicas").glob("*")
        if p.is_file() and not p.name.endswith((".yaml", ".json", ".md", ".txt"))
    )
    if bundled:
        return bundled
    demo = cache_dir() / "demo" / "demo-disk.img"
    if not demo.exists() or not Path(str(demo) + ".zst").exists():
        build_demo_image(demo)
    return [demo, Path(str(demo) + ".zst")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m immutools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--format", "-f", choices=("table", "json", "yaml"), default="table")
    args = parser.parse_args(argv)
    from immutools.cli import main as cli_main

    status = 0
    for image in default_images():
        print(f"==> immutools scan {image}", flush=True)
        rc = cli_main(["scan", str(image), "--format", args.format])
        status = status or rc
        print(flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
