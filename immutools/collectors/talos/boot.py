"""How a Talos disk boots: GRUB slots A/B on BOOT (XFS) and/or UKIs under systemd-boot on the ESP,
which entry boots next, its kernel command line and kernel.

GRUB keeps the default in grub.cfg itself (``set default=``/``set fallback=``), never in grubenv;
systemd-boot's default (``LoaderEntryDefault``) is an EFI variable an image does not hold, so among
several UKIs the META ``Upgrade`` tag (the previous UKI while an upgrade is unconfirmed) or
systemd-boot's own order decides (siderolabs/talos internal/app/machined/pkg/runtime/v1alpha1/
bootloader/{grub,sdboot}; ``data/distributions/talos.yaml`` ``boot``).
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import struct
from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.fs.pe import UnifiedKernelImage, kernel_info
from immutools.fs.talos_meta import TalosMeta
from immutools.report.model import evidence
from immutools.system.cmdline import KernelCmdline
from immutools.system.grubcfg import GrubConfig, GrubEntry
from immutools.system.sdboot import version_compare

from .detect import Layout, meta_tag

# PE/COFF machine types (Microsoft PE format specification, "Machine Types").
_PE_ARCH = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i386"}


@dataclass
class GrubMenu:
    """BOOT's grub.cfg: the entries (as report rows) and which boots by default or as fallback."""

    config: GrubConfig
    path: str
    entries: list[dict]
    default: GrubEntry | None
    fallback: GrubEntry | None
    evidence: dict


@dataclass
class Active:
    """The entry that boots next and how that was decided."""

    grub_entry: GrubEntry | None = None
    grub_label: str | None = None                # A or B
    uki: dict | None = None
    decided_by: list[str] = field(default_factory=list)
    previous: str | None = None                  # META Upgrade: the entry a failed boot reverts to
    path: str | None = None                      # "uki" or "grub": where the OS tree is read from


@dataclass
class Boot:
    grub: GrubMenu | None
    ukis: list[dict]
    bootloader: str | None
    active: Active
    cmdline: KernelCmdline | None = None
    kernel: dict = field(default_factory=dict)
    problem: str | None = None                   # why no entry is known to boot


# ------------------------------------------------------------------------------------------------
# GRUB
# ------------------------------------------------------------------------------------------------
def _present(fs, path: str | None) -> bool | None:
    try:
        return fs.exists(path.split(")", 1)[-1])
    except ImmutoolsError:
        return None


def _grub_row(knowledge: dict, layout: Layout, entry: GrubEntry) -> dict:
    m = re.match(knowledge["boot"]["entry_title"], entry.title)
    row = {"title": entry.title, "label": m.group("label") if m else None, "version": m.group("version") if m else None,
           "kernel": entry.kernel_path or entry.kernel, "initrd": (entry.initrds[0] if entry.initrds else None),
           "cmdline": entry.cmdline, "reset": entry.title == knowledge["boot"]["reset_title"], "entry": entry}
    for key in ("kernel", "initrd"):
        if row[key]:
            row[f"{key}_present"] = _present(layout.boot_fs, row[key])
    return row


def grub_menu(image: DiskImage, knowledge: dict, layout: Layout) -> tuple[GrubMenu | None, str | None]:
    """(the menu, None) or (None, why there is none)."""
    path = knowledge["boot"]["grub_cfg"]
    if layout.boot is None:
        return None, f"no {knowledge['gpt']['labels']['boot']} partition"
    where = f"{layout.boot.describe()}: {path}"
    if layout.boot_fs is None:
        return None, f"{layout.boot.describe()} is not a readable XFS filesystem ({layout.boot.fstype})"
    found = layout.grub
    if found.error is not None:
        image.warn(f"{where}: {found.error}")
        return None, f"{where}: {found.error}"
    if found.config is None:
        return None, f"{where} {'is empty' if found.text is not None else 'not found or unreadable'}"
    cfg = found.config
    for warning in cfg.warnings:
        image.warn(f"{where}: {warning}")
    fallback = [e for e in cfg.fallback_entries() if e is not None]
    detail = f"set default={cfg.default!r}" + (f", set fallback={cfg.variables.get('fallback')!r}" if cfg.variables.get("fallback") else "")
    menu = GrubMenu(cfg, path, [_grub_row(knowledge, layout, e) for e in cfg.entries], cfg.default_entry(),
                    fallback[0] if fallback else None, evidence(where, detail))
    if menu.default is not None:
        return menu, None
    return menu, f"{where} {'has no default menu entry GRUB would boot' if cfg.entries else 'holds no menu entry'}"


# ------------------------------------------------------------------------------------------------
# UKIs
# ------------------------------------------------------------------------------------------------
def _pe_arch(head: bytes) -> str | None:
    lfanew = struct.unpack_from("<I", head, 0x3C)[0] if len(head) >= 0x40 else 0
    machine = struct.unpack_from("<H", head, lfanew + 4)[0] if lfanew + 6 <= len(head) else None
    return _PE_ARCH.get(machine)


def _uki_row(image: DiskImage, knowledge: dict, layout: Layout, path: str) -> dict | None:
    try:
        src = layout.esp_fs.open_source(path)
        uki = UnifiedKernelImage(src, image.limits)
        head = src.read_at(0, 0x400)
    except ImmutoolsError as exc:
        image.warn(f"{layout.esp.describe()}: {path}: not a readable UKI: {exc}")
        return None
    if not uki.is_uki:
        image.warn(f"{layout.esp.describe()}: {path}: PE image without a .linux section")
        return None
    name = posixpath.basename(path)
    return {
        "name": name, "path": path, "uki": uki, "source": src,
        "version": re.match(knowledge["boot"]["uki_name"], name).group("version"),
        "osrel_version": uki.osrel.get("VERSION_ID"),
        "osrel": uki.osrel or None,
        "cmdline": uki.cmdline,
        "uname": uki.uname,
        "signed": uki.signed,
        "signature_size": uki.signature_size,
        "pcrsig": uki.has_pcrsig or any(".pcrsig" in p.sections for p in uki.profiles),
        "pcrpkey": uki.has_pcrpkey,
        "profiles": [p.info for p in uki.profiles],
        "sections": [s.name for s in uki.section_list],
        "arch": _pe_arch(head),
    }


def read_ukis(image: DiskImage, knowledge: dict, layout: Layout) -> list[dict]:
    """The readable UKIs, in systemd-boot's menu order for type #2 entries (newest version first)."""
    if layout.esp_fs is None:
        return []
    rows = [row for row in (_uki_row(image, knowledge, layout, p) for p in layout.uki_paths) if row is not None]
    rows.sort(key=functools.cmp_to_key(lambda a, b: -version_compare(a["name"], b["name"])))
    return rows


def _no_uki_reason(knowledge: dict, layout: Layout) -> str:
    boot = knowledge["boot"]
    if layout.esp is None:
        return "no EFI system partition"
    if layout.esp_fs is None:
        return f"{layout.esp.describe()} is not a readable FAT filesystem ({layout.esp.fstype})"
    return f"no readable UKI named like Talos-<version>.efi in {layout.esp.describe()}: {boot['uki_dir']}"


# ------------------------------------------------------------------------------------------------
# the entry that boots
# ------------------------------------------------------------------------------------------------
def choose_active(knowledge: dict, grub: GrubMenu | None, ukis: list[dict], meta: TalosMeta | None) -> Active:
    previous = meta.value_text(meta_tag(knowledge, "upgrade_tag")) if meta is not None else None
    act = Active(previous=previous)
    if grub is not None and grub.default is not None:
        m = re.match(knowledge["boot"]["entry_title"], grub.default.title)
        act.grub_entry = grub.default
        act.grub_label = m.group("label") if m else None
        act.decided_by.append(f"grub.cfg set default={grub.config.default!r}")
    if len(ukis) == 1:
        act.uki = ukis[0]
        act.decided_by.append(f"the only UKI, {ukis[0]['name']}")
    elif ukis:
        named_previous = [u for u in ukis if u["name"] == previous]
        rest = [u for u in ukis if u["name"] != previous]
        if named_previous and len(rest) == 1:
            act.uki = rest[0]
            act.decided_by.append(f"META Upgrade names {previous} as the previous UKI, so {rest[0]['name']} is the new default "
                                  "(LoaderEntryDefault is an EFI variable, not on disk)")
        else:
            act.uki = ukis[0]
            act.decided_by.append(f"{ukis[0]['name']}: first in systemd-boot's order (newest version); "
                                  "LoaderEntryDefault is an EFI variable and cannot be read offline")
    # The OS tree is read through the UKI (UEFI) on sd-boot and dual-boot disks.
    act.path = "uki" if act.uki is not None else ("grub" if act.grub_entry is not None else None)
    return act


def boot_cmdline(knowledge: dict, layout: Layout, active: Active) -> KernelCmdline | None:
    """The booted entry's kernel command line: the UKI's ``.cmdline``, else the GRUB entry's linux line."""
    if active.uki is not None and active.uki["cmdline"] is not None:
        return KernelCmdline(active.uki["cmdline"], f"{layout.esp.describe()}: {active.uki['path']} .cmdline")
    if active.grub_entry is not None:
        e = active.grub_entry
        origin = f"{layout.boot.describe()}: {knowledge['boot']['grub_cfg']} menuentry {e.title!r} line {e.linux_line}"
        return KernelCmdline.from_words(e.cmdline_words, origin, observed=not e.unresolved)
    return None


def booted_kernel(image: DiskImage, layout: Layout, active: Active) -> dict:
    """Version and format of the booted entry's kernel."""
    try:
        if active.path == "uki":
            info = kernel_info(active.uki["source"], image.limits)
            where = f"{layout.esp.describe()}: {active.uki['path']}"
        elif active.path == "grub" and active.grub_entry.kernel_path:
            path = active.grub_entry.kernel_path
            info = kernel_info(layout.boot_fs.open_source(path), image.limits)
            where = f"{layout.boot.describe()}: {path}"
        else:
            return {}
    except ImmutoolsError as exc:
        image.warn(f"kernel image: {exc}")
        return {}
    return {"version": info.version, "format": info.format, "details": info.details,
            "evidence": evidence(where, f"{info.format} header")}


def read_boot(image: DiskImage, knowledge: dict, layout: Layout, meta: TalosMeta | None) -> Boot:
    grub, grub_problem = grub_menu(image, knowledge, layout)
    ukis = read_ukis(image, knowledge, layout)
    bootloader = "dual-boot" if grub and ukis else ("grub" if grub else ("sd-boot" if ukis else None))
    boot = Boot(grub, ukis, bootloader, choose_active(knowledge, grub, ukis, meta))
    if boot.active.path is None:
        boot.problem = f"no boot entry could be followed: {grub_problem}; {_no_uki_reason(knowledge, layout)}"
    boot.cmdline = boot_cmdline(knowledge, layout, boot.active)
    return boot


def kspp(knowledge: dict, cmdline: KernelCmdline | None) -> dict:
    """The KSPP arguments machined requires, and what the command line has."""
    required = knowledge["kernel"]["kspp_required"]
    present: dict = {}
    ok = cmdline is not None
    for key, want in required.items():
        arg = cmdline.last(key) if cmdline is not None else None
        # a bare flag is taken as the empty value Talos writes (`slab_nomerge=`)
        got = None if arg is None else (arg.value if arg.value is not None else "")
        present[key] = got
        ok = ok and got == want
    return {"required": dict(required), "present": present, "satisfied": ok if cmdline is not None else None,
            "source": knowledge["kernel"]["kspp_source"]}


def _digest(src) -> str:
    h = hashlib.sha256()
    pos = 0
    while pos < src.size:
        chunk = src.read_at(pos, min(4 << 20, src.size - pos))
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def grub_matches_uki(image: DiskImage, layout: Layout, boot: Boot) -> bool | None:
    """Dual-boot images: GRUB slot A boots the UKI's own ``.initrd`` (siderolabs/talos
    internal/app/machined/pkg/runtime/v1alpha1/bootloader/dual/dual.go)."""
    entry = boot.active.grub_entry
    uki = boot.active.uki or boot.ukis[0]
    fs = image.filesystem(layout.boot) if layout.boot is not None else None
    if fs is None or not entry.initrds:
        return None
    try:
        initrd = fs.open_source(entry.initrds[0].split(")", 1)[-1])
        packed = uki["uki"].initrd
        if packed is None:
            return None
        if initrd.size != packed.size or initrd.size > image.limits.max_nested_bytes:
            return False
        return _digest(initrd) == _digest(packed)
    except ImmutoolsError:
        return None
