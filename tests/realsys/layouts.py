"""The real-system images: the shared Debian tree (``tree.py``) laid out by the distributions' own tools.

* ``debian-plain``: what a Debian installer leaves on a UEFI disk -- ``sgdisk`` GPT with an ESP
  (systemd-boot installed by ``bootctl``, a Type #1 entry written by ``kernel-install``), an ext4
  root made by ``mke2fs -d``, a swap partition and an ext4 ``/home``, mounted by an ``/etc/fstab``
  that names every filesystem by UUID (partman's types: 0fc63daf for root and /home, 0657fd6d
  for swap). Also shipped as qcow2 (``qemu-img convert``) and as ``.raw.xz``.
* ``dps-root``: ``systemd-repart`` (252) builds a Discoverable Partitions Specification image from
  definitions: root (squashfs, ``Verity=data``), root-verity, a signed root-verity-sig, DPS swap and
  /home partitions and a /srv partition flagged no-auto; the ESP carries systemd-boot and a UKI
  whose ``.cmdline`` has ``roothash=``.
* ``dps-usr-ab``: ``systemd-repart`` builds a usr-only A/B image: /usr (squashfs) + usr-verity + a
  signed usr-verity-sig for slot A, and ``_empty`` usr/usr-verity/usr-verity-sig partitions for
  slot B (what systemd-sysupdate fills next); the UKI has ``usrhash=``.
* ``mkosi-verity``: the layout mkosi 14 (Debian 12) writes for ``Format=gpt_squashfs``,
  ``Verity=yes``, ``Bootable=yes`` with unified kernel images. mkosi 14 does not run on a machine
  without partition-scanning loop devices and a vfat driver (it re-reads the partition table of a
  loop device and mounts the ESP), so the image is built here with the tools mkosi itself calls,
  in its order and with its arguments (mkosi v14 ``mkosi/__init__.py``, ``mkosi/backend.py``):
  ``sfdisk`` with mkosi's table script (grain 4096, first LBA 40, ESP "ESP System Partition"
  256 MiB, root and verity both named ``<ImageId>_<ImageVersion>``, GUID attribute 60 on both),
  ``mkfs.fat -nEFI -F32``, ``bootctl install``, ``mksquashfs <root> <out> -noappend``,
  ``veritysetup format`` (4 KiB blocks), the root partition's UUID set to the first 128 bits of
  the root hash and the verity partition's to the last 128 bits, no signature partition, and a UKI
  assembled by ``objcopy`` over systemd-boot's ``linuxx64.efi.stub`` with ``roothash=`` appended
  to ``/etc/kernel/cmdline`` (mkosi's default "rhgb selinux=0 audit=0"). The tree gets what mkosi
  14 adds for a bootable image: an (after the build, empty) ``/efi`` mount point, ``/boot`` (mode
  0700) holding the Debian kernel, initrd and config plus the ``efi``, ``loader`` and machine-id
  compatibility links, ``/etc/kernel/{cmdline,entry-token,install.conf}``, and an
  ``uninitialized`` machine-id. Differences from a real mkosi 14 build: the initrd is Debian's
  initramfs-tools one (mkosi 14 runs dracut), the Type #1 entries ``kernel-install`` would add
  next to the UKI are left out, and the disk GUID, verity salt and FAT serial are fixed so that
  the image is reproducible.

Every step runs on image files (no loop device, no mount of the image). Unpacking the tree with
its owners and ``chroot``-ing into it for ``bootctl``/``kernel-install`` need root; the ESP is
staged on a tmpfs in a private mount namespace (``unshare --mount``) because ``bootctl`` insists on
the root of a filesystem, then copied into a FAT image with ``mcopy``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from builders import ENV, run, sgdisk_layout, write_at

MIB = 1 << 20
SECTOR = 512
# A fixed namespace keeps every UUID of every image reproducible.
_NS = uuid.UUID("5b0e9b1c-8f0e-4a4e-9d55-3c6f0e8a1d27")
EFI_STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"


def fixed_uuid(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


def fat_serial(name: str) -> str:
    return uuid.uuid5(_NS, name).hex[:8].upper()


def machine_id(name: str) -> str:
    return uuid.uuid5(_NS, "machine-id:" + name).hex


# ------------------------------------------------------------------------------------------------
# pieces every layout uses
# ------------------------------------------------------------------------------------------------
def kernel_of(tree: Path) -> dict:
    """The Debian kernel the tree installed: version and its files in /boot."""
    names = sorted(p.name for p in (tree / "boot").glob("vmlinuz-*"))
    if len(names) != 1:
        raise RuntimeError(f"{tree}/boot: expected one kernel, found {names}")
    kver = names[0][len("vmlinuz-"):]
    return {"version": kver, "vmlinuz": tree / "boot" / f"vmlinuz-{kver}", "initrd": tree / "boot" / f"initrd.img-{kver}",
            "config": tree / "boot" / f"config-{kver}"}


def in_private_mounts(script: str) -> None:
    """Run a shell script in its own mount namespace: tmpfs mounts made there vanish with it."""
    run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script])


def stage_esp(tree: Path, mountpoint: str, staging: Path, *, kernel_install: dict | None = None) -> None:
    """``bootctl install`` (from the tree, in a chroot) onto a tmpfs at ``mountpoint`` inside the
    tree, optionally ``kernel-install add``; the result is copied to ``staging``."""
    target = tree / mountpoint.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    staging.mkdir(parents=True, exist_ok=True)
    t, m = shlex.quote(str(tree)), shlex.quote(mountpoint)
    lines = [
        f"mount -t tmpfs -o mode=0755 esp-staging {shlex.quote(str(target))}",
        f"mount -t proc proc {t}/proc",
        f"chroot {t} env SYSTEMD_RELAX_ESP_CHECKS=1 bootctl install --no-variables --esp-path={m}",
    ]
    if kernel_install:
        k = kernel_install
        lines.append(f"chroot {t} env BOOT_ROOT={m} MACHINE_ID={k['machine_id']} kernel-install add "
                     f"{k['version']} /boot/vmlinuz-{k['version']} /boot/initrd.img-{k['version']}")
    lines.append(f"cp -a {shlex.quote(str(target))}/. {shlex.quote(str(staging))}/")
    in_private_mounts("\n".join(lines))


def vfat_image(staging: Path, out: Path, size: int, *, serial: str, label: str, fat_args: tuple = ("-F", "32")) -> Path:
    """``mkfs.fat -C`` a FAT image of ``size`` bytes and ``mcopy`` the staged ESP into it."""
    run(["mkfs.fat", *fat_args, "-i", serial, "-n", label, "-C", out, str(size // 1024)])
    entries = sorted(p.name for p in staging.iterdir())
    if entries:
        run(["mcopy", "-s", "-p", "-m", "-Q", "-i", out, *[staging / e for e in entries], "::/"],
            env=dict(ENV, MTOOLS_SKIP_CHECK="1"))
    return out


def make_uki(tree: Path, out: Path, cmdline: str, work: Path, *, stub: Path | None = None, linux: Path | None = None,
             initrd: Path | None = None) -> Path:
    """A unified kernel image the way mkosi 14 makes one: ``objcopy`` adds ``.osrel``,
    ``.cmdline``, ``.linux`` and ``.initrd`` to systemd-boot's EFI stub (VMAs as mkosi sets them).
    By default the stub, kernel and initrd are the tree's own."""
    if linux is None or initrd is None:
        kernel = kernel_of(tree)
        linux, initrd = linux or kernel["vmlinuz"], initrd or kernel["initrd"]
    cmdline_file = work / "uki-cmdline"
    cmdline_file.write_text(cmdline)
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["objcopy",
         "--add-section", f".osrel={tree / 'usr/lib/os-release'}", "--change-section-vma", ".osrel=0x20000",
         "--add-section", f".cmdline={cmdline_file}", "--change-section-vma", ".cmdline=0x30000",
         "--add-section", f".linux={linux}", "--change-section-vma", ".linux=0x2000000",
         "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x3000000",
         stub or tree / EFI_STUB, out])
    return out


def add_image_identity(tree: Path, image_id: str, version: str) -> None:
    """``IMAGE_ID=``/``IMAGE_VERSION=`` in os-release (os-release(5)), as image builders add them."""
    osrel = tree / "usr/lib/os-release"
    text = osrel.read_text()
    osrel.write_text(text.rstrip("\n") + f"\nIMAGE_ID={image_id}\nIMAGE_VERSION={version}\n")


def sparse_copy(src: Path, dst: Path) -> None:
    run(["cp", "--sparse=always", src, dst])


def partitions_of(image: Path) -> list[dict]:
    """``sfdisk --json`` partitions with byte offsets (start, size) and numbers."""
    table = json.loads(run(["sfdisk", "--json", image]).stdout)["partitiontable"]
    sector = table.get("sectorsize", SECTOR)
    out = []
    for p in table["partitions"]:
        number = int(p["node"][len(str(image)):])
        out.append({"number": number, "start": p["start"] * sector, "size": p["size"] * sector, "type": p["type"].lower(),
                    "uuid": p.get("uuid", "").lower(), "name": p.get("name", ""), "attrs": p.get("attrs", "")})
    return out


class Timer:
    def __init__(self):
        self.steps: dict[str, float] = {}
        self._t = time.monotonic()

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round(now - self._t, 1)
        self._t = now


# ------------------------------------------------------------------------------------------------
# debian-plain: sgdisk + mke2fs -d, fstab by UUID, systemd-boot Type #1 entry
# ------------------------------------------------------------------------------------------------
PLAIN = {
    "esp": {"number": 1, "size": 128 * MIB, "type": "ef00", "label": "EFI System Partition"},
    "root": {"number": 2, "size": 1536 * MIB, "type": "8300", "label": ""},
    "swap": {"number": 3, "size": 64 * MIB, "type": "8200", "label": ""},
    "home": {"number": 4, "size": 64 * MIB, "type": "8300", "label": ""},
}


def build_plain(tree: Path, work: Path, out: Path, timer: Timer) -> dict:
    name = "debian-plain"
    ids = {k: fixed_uuid(f"{name}:{k}:fs") for k in ("root", "home", "swap")}
    ids["esp"] = fat_serial(f"{name}:esp")
    esp_uuid = f"{ids['esp'][:4]}-{ids['esp'][4:]}"
    mid = machine_id(name)
    (tree / "etc/machine-id").write_text(mid + "\n")
    (tree / "etc/hostname").write_text("debian-plain\n")
    (tree / "etc/fstab").write_text(
        "# /etc/fstab: static file system information.\n"
        "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
        f"UUID={ids['root']} /               ext4    errors=remount-ro 0       1\n"
        f"UUID={esp_uuid}  /boot/efi       vfat    umask=0077      0       1\n"
        f"UUID={ids['home']} /home           ext4    defaults        0       2\n"
        f"UUID={ids['swap']} none            swap    sw              0       0\n")
    (tree / "etc/kernel").mkdir(exist_ok=True)
    (tree / "etc/kernel/cmdline").write_text(f"root=UUID={ids['root']} ro quiet\n")
    kernel = kernel_of(tree)
    staging = work / "esp"
    stage_esp(tree, "/boot/efi", staging, kernel_install={"version": kernel["version"], "machine_id": mid})
    timer.step("esp staging (bootctl, kernel-install)")

    esp = vfat_image(staging, work / "esp.img", PLAIN["esp"]["size"], serial=ids["esp"], label="")
    root = work / "root.img"
    run(["mke2fs", "-q", "-t", "ext4", "-U", ids["root"], "-E", "root_owner=0:0", "-d", tree, root,
         f"{PLAIN['root']['size'] // 1024}k"])
    home = work / "home.img"
    run(["mke2fs", "-q", "-t", "ext4", "-U", ids["home"], "-d", tree / "home", home, f"{PLAIN['home']['size'] // 1024}k"])
    swap = work / "swap.img"
    with open(swap, "wb") as f:
        f.truncate(PLAIN["swap"]["size"])
    run(["mkswap", "-U", ids["swap"], swap])
    timer.step("filesystems (mke2fs -d, mkfs.fat + mcopy, mkswap)")

    parts, start = [], 2048
    for key in ("esp", "root", "swap", "home"):
        spec = PLAIN[key]
        sectors = spec["size"] // SECTOR
        parts.append({"number": spec["number"], "start": start, "size": sectors, "type": spec["type"],
                      "label": spec["label"], "guid": fixed_uuid(f"{name}:{key}:part")})
        start += sectors
    disk_size = (start + 2048) * SECTOR
    sgdisk_layout(out, disk_size, parts, disk_guid=fixed_uuid(f"{name}:disk"))
    payload = {"esp": esp, "root": root, "swap": swap, "home": home}
    for key, p in zip(("esp", "root", "swap", "home"), parts):
        write_at(out, p["start"] * SECTOR, payload[key])
    timer.step("disk (sgdisk, dd)")
    return {"kernel": kernel["version"], "machine_id": mid, "fs_ids": ids}


# ------------------------------------------------------------------------------------------------
# systemd-repart images
# ------------------------------------------------------------------------------------------------
def _write_definitions(directory: Path, definitions: dict[str, dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for fname, settings in definitions.items():
        lines = ["[Partition]"]
        for key, value in settings.items():
            for v in (value if isinstance(value, list) else [value]):
                lines.append(f"{key}={v}")
        (directory / fname).write_text("\n".join(lines) + "\n")


def signing_key(work: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the verity signature partition (systemd-repart --private-key/--certificate)."""
    key, cert = work / "verity.key", work / "verity.crt"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "36500",
         "-subj", "/CN=immutools real-system fixture"])
    return key, cert


def repart(definitions: Path, image: Path, work: Path, seed: str) -> list[dict]:
    key, cert = signing_key(work)
    proc = run(["systemd-repart", "--empty=create", "--size=auto", f"--definitions={definitions}", "--dry-run=no",
                f"--private-key={key}", f"--certificate={cert}", f"--seed={seed}", "--json=short", "--no-pager", image])
    return json.loads(proc.stdout)


def fill_esp(image: Path, number: int, esp_image: Path) -> None:
    part = next(p for p in partitions_of(image) if p["number"] == number)
    if os.path.getsize(esp_image) > part["size"]:
        raise RuntimeError(f"{esp_image} does not fit partition {number}")
    write_at(image, part["start"], esp_image)


ESP_SIZE_REPART = 128 * MIB
SLOT_SIZE = 256 * MIB                  # squashfs of the whole Debian tree: about 100 MiB
VERITY_SIZE = 24 * MIB                 # repart 252 hashes 512-byte blocks: 32 bytes per block, plus upper levels


def build_dps_root(tree: Path, work: Path, out: Path, timer: Timer) -> dict:
    name = "dps-root"
    image_id, version = "debian-dps", "1"
    add_image_identity(tree, image_id, version)
    (tree / "etc/hostname").write_text("debian-dps\n")
    (tree / "etc/machine-id").write_text("")           # first boot initialises it (machine-id(5))
    staging = work / "esp"
    stage_esp(tree, "/mnt", staging)
    timer.step("esp staging (bootctl)")
    label = f"{image_id}_{version}"
    defs = {
        "00-esp.conf": {"Type": "esp", "SizeMinBytes": ESP_SIZE_REPART, "SizeMaxBytes": ESP_SIZE_REPART},
        # repart 252 cannot size a squashfs partition from its content (Minimize= came in 253)
        "10-root.conf": {"Type": "root", "Label": label, "Format": "squashfs", "CopyFiles": f"{tree}:/",
                         "Verity": "data", "VerityMatchKey": "root", "ReadOnly": "yes",
                         "SizeMinBytes": SLOT_SIZE, "SizeMaxBytes": SLOT_SIZE},
        "11-root-verity.conf": {"Type": "root-verity", "Label": f"{label}_verity", "Verity": "hash", "VerityMatchKey": "root",
                                "SizeMinBytes": VERITY_SIZE, "SizeMaxBytes": VERITY_SIZE},
        "12-root-verity-sig.conf": {"Type": "root-verity-sig", "Label": f"{label}_verity_sig", "Verity": "signature",
                                    "VerityMatchKey": "root"},
        "20-swap.conf": {"Type": "swap", "Format": "swap", "SizeMinBytes": 64 * MIB, "SizeMaxBytes": 64 * MIB},
        "30-home.conf": {"Type": "home", "Format": "ext4", "SizeMinBytes": 64 * MIB, "SizeMaxBytes": 64 * MIB},
        "40-srv.conf": {"Type": "srv", "Format": "ext4", "NoAuto": "yes", "SizeMinBytes": 64 * MIB, "SizeMaxBytes": 64 * MIB},
    }
    _write_definitions(work / "repart.d", defs)
    made = repart(work / "repart.d", out, work, fixed_uuid(f"{name}:seed"))
    timer.step("systemd-repart (squashfs root, verity, signature, swap, ext4)")
    root_hash = next(p["roothash"] for p in made if p.get("roothash"))
    cmdline = f"quiet roothash={root_hash}"
    make_uki(tree, staging / "EFI/Linux" / f"{image_id}_{version}.efi", cmdline, work)
    esp = vfat_image(staging, work / "esp.img", ESP_SIZE_REPART, serial=fat_serial(f"{name}:esp"), label="ESP")
    fill_esp(out, 1, esp)
    timer.step("UKI + ESP")
    return {"repart": made, "root_hash": root_hash, "uki_cmdline": cmdline, "uki": f"EFI/Linux/{image_id}_{version}.efi",
            "verity_role": "root", "image_id": image_id, "image_version": version, "kernel": kernel_of(tree)["version"]}


USR_SLOT_SIZE = SLOT_SIZE
USR_VERITY_SIZE = VERITY_SIZE


def build_dps_usr_ab(tree: Path, work: Path, out: Path, timer: Timer) -> dict:
    name = "dps-usr-ab"
    image_id, version = "debian-usr", "1"
    add_image_identity(tree, image_id, version)
    staging = work / "esp"
    stage_esp(tree, "/mnt", staging)
    timer.step("esp staging (bootctl)")
    label = f"{image_id}_{version}"
    fixed = lambda size: {"SizeMinBytes": size, "SizeMaxBytes": size}  # noqa: E731
    defs = {
        "00-esp.conf": {"Type": "esp", **fixed(ESP_SIZE_REPART)},
        "10-usr-verity-sig-a.conf": {"Type": "usr-verity-sig", "Label": f"{label}_verity_sig", "Verity": "signature",
                                     "VerityMatchKey": "usr"},
        "11-usr-verity-a.conf": {"Type": "usr-verity", "Label": f"{label}_verity", "Verity": "hash", "VerityMatchKey": "usr",
                                 **fixed(USR_VERITY_SIZE)},
        "12-usr-a.conf": {"Type": "usr", "Label": label, "Format": "squashfs", "CopyFiles": f"{tree / 'usr'}:/",
                          "Verity": "data", "VerityMatchKey": "usr", "ReadOnly": "yes", **fixed(USR_SLOT_SIZE)},
        # slot B: what systemd-sysupdate writes the next version into (sysupdate.d(5): "_empty" labels)
        "20-usr-verity-sig-b.conf": {"Type": "usr-verity-sig", "Label": "_empty", "SizeMinBytes": 16384, "SizeMaxBytes": 16384},
        "21-usr-verity-b.conf": {"Type": "usr-verity", "Label": "_empty", **fixed(USR_VERITY_SIZE)},
        "22-usr-b.conf": {"Type": "usr", "Label": "_empty", **fixed(USR_SLOT_SIZE)},
    }
    _write_definitions(work / "repart.d", defs)
    made = repart(work / "repart.d", out, work, fixed_uuid(f"{name}:seed"))
    timer.step("systemd-repart (squashfs /usr, verity, signature, empty B slot)")
    usr_hash = next(p["roothash"] for p in made if p.get("roothash"))
    cmdline = f"quiet usrhash={usr_hash}"
    make_uki(tree, staging / "EFI/Linux" / f"{image_id}_{version}.efi", cmdline, work)
    esp = vfat_image(staging, work / "esp.img", ESP_SIZE_REPART, serial=fat_serial(f"{name}:esp"), label="ESP")
    fill_esp(out, 1, esp)
    timer.step("UKI + ESP")
    return {"repart": made, "root_hash": usr_hash, "uki_cmdline": cmdline, "uki": f"EFI/Linux/{image_id}_{version}.efi",
            "verity_role": "usr", "image_id": image_id, "image_version": version, "kernel": kernel_of(tree)["version"]}


# ------------------------------------------------------------------------------------------------
# mkosi 14: Format=gpt_squashfs, Verity=yes, Bootable=yes, unified kernel images
# ------------------------------------------------------------------------------------------------
MKOSI_ESP_SIZE = 256 * MIB             # mkosi v14: esp_size defaults to 256 MiB when bootable
MKOSI_GRAIN = 4096                     # mkosi v14 backend.PartitionTable.grain
MKOSI_CMDLINE = "rhgb selinux=0 audit=0"   # mkosi v14 --kernel-command-line default
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
GPT_ROOT_X86_64_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"


def _roundup(n: int, grain: int) -> int:
    return (n + grain - 1) // grain * grain


def mkosi_tree_changes(tree: Path, mid: str, cmdline: str = MKOSI_CMDLINE) -> None:
    """What mkosi 14 adds to a bootable tree with an ESP and no XBOOTLDR (``prepare_tree``,
    ``reset_machine_id``): /boot (0700) with compatibility links into /efi, /etc/kernel/*."""
    boot = tree / "boot"
    boot.mkdir(exist_ok=True)
    boot.chmod(0o700)
    for link, target in (("efi", "../efi"), ("loader", "../efi/loader"), (mid, f"../efi/{mid}")):
        (boot / link).symlink_to(target)
    (tree / "efi").mkdir(exist_ok=True)
    kernel_dir = tree / "etc/kernel"
    kernel_dir.mkdir(exist_ok=True)
    (kernel_dir / "cmdline").write_text(cmdline + "\n")
    (kernel_dir / "entry-token").write_text(mid + "\n")
    (kernel_dir / "install.conf").write_text("layout=bls\n")


def mkosi_esp_skeleton(staging: Path, mid: str) -> None:
    for d in ("EFI", "EFI/BOOT", "EFI/systemd", "loader", "EFI/Linux", "loader/entries", mid):
        (staging / d).mkdir(parents=True, exist_ok=True)
        (staging / d).chmod(0o700)


def mkosi_disk(out: Path, esp: Path, root: Path, verity: Path, root_hash: str, label: str, disk_guid: str) -> list[dict]:
    """mkosi 14's table script fed to ``sfdisk`` (backend.PartitionTable.sfdisk_spec), then the blobs."""
    sector = SECTOR
    footer = (1 + -(-128 * 128 // sector)) * sector
    first = _roundup(sector + footer, MKOSI_GRAIN)
    blobs = [(esp, _roundup(MKOSI_ESP_SIZE, MKOSI_GRAIN), GPT_ESP, "ESP System Partition", False, None),
             (root, _roundup(os.path.getsize(root), MKOSI_GRAIN), GPT_ROOT_X86_64, label, True, str(uuid.UUID(root_hash[:32]))),
             (verity, _roundup(os.path.getsize(verity), MKOSI_GRAIN), GPT_ROOT_X86_64_VERITY, label, True,
              str(uuid.UUID(root_hash[-32:])))]
    lines = ["label: gpt", f"label-id: {disk_guid}", f"grain: {MKOSI_GRAIN}", f"first-lba: {first // sector}"]
    for _blob, size, type_uuid, description, read_only, part_uuid in blobs:
        desc = [f"size={size // sector}", f"type={type_uuid}", f'attrs={"GUID:60" if read_only else ""}', f'name="{description}"']
        if part_uuid:
            desc.append(f"uuid={part_uuid}")
        lines.append(", ".join(desc))
    disk_size = _roundup(first + sum(b[1] for b in blobs) + footer, MKOSI_GRAIN)
    with open(out, "wb") as f:
        f.truncate(disk_size)
    run(["sfdisk", "--color=never", "--no-reread", "--no-tell-kernel", out], input="\n".join(lines).encode())
    parts = partitions_of(out)
    for part, blob in zip(parts, blobs):
        write_at(out, part["start"], blob[0])
    return parts


def veritysetup_format(data: Path, hash_file: Path, *, salt: str, verity_uuid: str) -> str:
    """``veritysetup format`` (defaults: 4 KiB blocks, sha256) -> the root hash it prints."""
    proc = run(["veritysetup", "format", f"--salt={salt}", f"--uuid={verity_uuid}", data, hash_file])
    for line in proc.stdout.decode().splitlines():
        if line.startswith("Root hash:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("veritysetup format printed no root hash")


def build_mkosi(tree: Path, work: Path, out: Path, timer: Timer, *, image_id: str = "debian-mkosi", version: str = "1") -> dict:
    name = f"mkosi:{image_id}_{version}"
    mid = machine_id(name)
    (tree / "etc/machine-id").write_text(mid + "\n")
    mkosi_tree_changes(tree, mid)
    staging = work / "esp"
    mkosi_esp_skeleton(staging, mid)
    stage_esp_into = work / "esp-bootctl"
    stage_esp(tree, "/efi", stage_esp_into)
    run(["cp", "-a", f"{stage_esp_into}/.", f"{staging}/"])
    (tree / "etc/machine-id").write_text("uninitialized\n")      # mkosi v14 reset_machine_id
    timer.step("esp staging (bootctl)")
    root = work / "root.squashfs"
    run(["mksquashfs", tree, root, "-noappend"])
    timer.step("mksquashfs")
    verity = work / "root.verity"
    root_hash = veritysetup_format(root, verity, salt=uuid.uuid5(_NS, name + ":salt").hex * 2,
                                   verity_uuid=fixed_uuid(name + ":verity"))
    timer.step("veritysetup format")
    cmdline = f"{MKOSI_CMDLINE} roothash={root_hash}"
    label = f"{image_id}_{version}"
    make_uki(tree, staging / "EFI/Linux" / f"{label}.efi", cmdline, work)
    esp = vfat_image(staging, work / "esp.img", MKOSI_ESP_SIZE, serial=fat_serial(name + ":esp"), label="EFI")
    parts = mkosi_disk(out, esp, root, verity, root_hash, label, fixed_uuid(name + ":disk"))
    timer.step("UKI + ESP + sfdisk")
    return {"root_hash": root_hash, "uki_cmdline": cmdline, "uki": f"EFI/Linux/{label}.efi", "verity_role": "root",
            "label": label, "partitions": parts, "kernel": kernel_of(tree)["version"], "machine_id": mid}


LAYOUTS = {"debian-plain": build_plain, "dps-root": build_dps_root, "dps-usr-ab": build_dps_usr_ab, "mkosi-verity": build_mkosi}


def convert_qcow2(raw: Path, out: Path) -> None:
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])


def compress_xz(raw: Path, out: Path) -> None:
    with open(out, "wb") as f:
        subprocess.run(["xz", "-6", "-T2", "-c", str(raw)], stdout=f, check=True, env=ENV)
