"""The boot chain of a Bottlerocket OS disk: which partition set GRUB's patched ``gptprio.next``
boots, and what each set's ``grub.cfg`` makes of it -- the kernel command line and the dm-verity
table of its root (in the ``set dm_verity_root=`` form of v1.12+ or inline in ``dm-mod.create=``),
checked against the HASH partition's superblock."""

from __future__ import annotations

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.fs.verity import read_superblock
from immutools.report.model import evidence
from immutools.system.grubcfg import fs_file_test, parse_grub_cfg
from immutools.system.mounts import resolve_source_match
from immutools.volumes.gptprio import gptprio_next

from .layout import Bank, OsDisk, read_os_release

_MAX_GRUB_CFG = 1024 * 1024


def grub_env(image: DiskImage, knowledge: dict, bank: Bank) -> dict[str, str]:
    """The variables GRUB's embedded config sets before ``configfile /grub/grub.cfg`` when
    ``gptprio.next`` chose this set's BOOT (the data file's ``boot.grub_env`` templates)."""
    part = bank.boot.partition
    private = image.volume(label=knowledge["gpt"]["private_label"])
    values = {"boot_partuuid": part.uuid or "", "boot": part.number,
              "private": private.number if private is not None else None}
    env = {}
    for name, template in knowledge["boot"]["grub_env"].items():
        if "{private}" in template and values["private"] is None:
            continue                     # search --set private found nothing: the variable stays unset
        env[name] = template.format(**values)
    return env


def _secure_boot(knowledge: dict, variables: dict) -> bool:
    """Whether grub.cfg opens with the Secure Boot variants' variables."""
    for name, value in knowledge["boot"]["secure_boot_variables"].items():
        if name in variables and (value is None or variables[name] == value):
            return True
    return False


def _compare_superblock(bank: Bank) -> None:
    """The HASH superblock's parameters against the table grub.cfg gives the kernel."""
    sb, tb = bank.superblock, bank.table
    for what, a, b in (("hash type", sb.version, tb.version), ("algorithm", sb.algorithm, tb.algorithm),
                       ("data block size", sb.data_block_size, tb.data_block_size),
                       ("hash block size", sb.hash_block_size, tb.hash_block_size),
                       ("data blocks", sb.data_blocks, tb.data_blocks), ("salt", sb.salt, tb.salt),
                       ("hash start block", sb.hash_start_block, tb.hash_start_block)):
        if a != b:
            bank.mismatches.append(f"{what}: superblock {a}, grub.cfg table {b}")


def _read_superblock(image: DiskImage, bank: Bank) -> None:
    try:
        bank.superblock = read_superblock(bank.hash_volume.source, 0)
    except ImmutoolsError as exc:
        bank.superblock_error = str(exc)
        image.warn(f"{bank.hash_volume.describe()}: verity superblock: {exc}")
        return
    if bank.superblock is None:
        bank.superblock_error = "no dm-verity superblock at offset 0"
        return
    _compare_superblock(bank)


def _verity_table(image: DiskImage, knowledge: dict, bank: Bank, origin: str) -> None:
    """The dm-verity table of the command line's ``dm-mod.create``, its devices and superblock."""
    table = next((t for d in bank.cmdline.dm_devices() for t in d.tables if t.target == "verity"), None)
    if table is None:
        bank.table_error = "no dm-verity table in dm-mod.create"
        return
    variable = knowledge["boot"]["verity_variable"]
    bank.grub_form = "variable" if any(a[0] == variable for a in bank.grub.assignments) else "inline"
    if table.verity is None:
        bank.table_error = table.verity_error or "dm-verity table not parsed"
        image.warn(f"{origin}: dm-verity table: {bank.table_error}")
        return
    bank.table = table.verity
    for device, attr in ((table.data_device, "data_volume"), (table.hash_device, "hash_volume")):
        found = resolve_source_match(device, image) if device else None
        setattr(bank, attr, found.volume if found else None)
    if bank.data_volume is not None and bank.root is not None and bank.data_volume is not bank.root:
        bank.mismatches.append(f"data device {table.data_device} is {bank.data_volume.describe()}, not the set's ROOT")
    if bank.hash_volume is not None:
        _read_superblock(image, bank)


def _grub_text(image: DiskImage, path: str, bank: Bank, fs) -> str | None:
    where = f"{bank.boot.describe()}: {path}"
    try:
        if not fs.exists(path):
            bank.cmdline_problem = f"{where} not found"
            image.warn(f"{where} not found: kernel command line unknown")
            return None
        return fs.read_text(path, max_bytes=_MAX_GRUB_CFG)
    except ImmutoolsError as exc:
        bank.cmdline_problem = f"{where}: {exc}"
        image.warn(f"{where}: {exc}")
        return None


def read_grub(image: DiskImage, knowledge: dict, bank: Bank) -> None:
    """Interpret the bank's grub.cfg as GRUB would after ``gptprio.next`` chose this BOOT."""
    fs = image.filesystem(bank.boot)
    if fs is None:
        bank.cmdline_problem = f"{bank.boot.describe()} holds no readable filesystem (content {bank.boot.fstype})"
        return
    path = knowledge["boot"]["grub_cfg"]
    text = _grub_text(image, path, bank, fs)
    if text is None:
        return
    origin = f"{bank.boot.describe()}: {path}"
    env = grub_env(image, knowledge, bank)
    try:
        cfg = parse_grub_cfg(text, env=env, file_exists=fs_file_test(fs))
    except ImmutoolsError as exc:
        bank.cmdline_problem = f"{origin}: {exc}"
        image.warn(f"{origin}: {exc}")
        return
    bank.grub = cfg
    for warning in cfg.warnings:
        image.warn(f"{origin}: {warning}")
    bank.grub_ev.append(evidence(origin, f"grub.cfg with GRUB's variables for this set (boot_uuid={env.get('boot_uuid')})"))
    bank.secure_boot = _secure_boot(knowledge, cfg.variables)
    try:
        if fs.exists(knowledge["boot"]["grub_cfg_sig"]):
            bank.secure_boot = True
    except ImmutoolsError:
        pass
    bank.entry = cfg.default_entry()
    if bank.entry is None:
        bank.cmdline_problem = f"{origin}: no default menu entry"
        image.warn(f"{origin}: no default menu entry")
        return
    bank.cmdline = bank.entry.kernel_cmdline(origin)
    _verity_table(image, knowledge, bank, origin)


def read_boot(image: DiskImage, knowledge: dict, disk: OsDisk) -> None:
    """Each set's os-release and grub.cfg; the set GRUB boots next (``disk.active``) and the set
    whose files describe the OS (``disk.source``)."""
    for bank in disk.banks:
        read_os_release(image, knowledge, bank)
        read_grub(image, knowledge, bank)
    disk.choice = gptprio_next([v.partition for v in image.volumes if v.partition], knowledge["gpt"]["types"]["boot"])
    chosen = disk.choice.partition
    disk.active = next((b for b in disk.banks if chosen is not None and b.boot.number == chosen.number), None)
    if disk.active is None:
        image.warn(f"no bootable Bottlerocket partition set: {disk.choice.reason}")
    for bank in disk.banks:
        if bank.grub is None and (bank is disk.active or bank.boot.fstype != "zero"):
            image.warn(f"{bank.boot.describe()}: no readable grub.cfg (content {bank.boot.fstype}): "
                       f"set {bank.name}'s kernel command line and dm-verity table are unknown")
    disk.source = disk.active or next((b for b in disk.banks if b.os_release), disk.banks[0] if disk.banks else None)
