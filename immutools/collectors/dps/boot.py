"""What the boot chain of a DPS image says: the Type #2 entries (UKIs in ``/EFI/Linux`` of the ESP
and XBOOTLDR, BLS) in systemd-boot's menu order, the default one (``loader.conf``'s ``default``
pattern, ``immutools.system.sdboot``), its ``.cmdline``, and the root hash it pins for the main
role (``roothash=``/``usrhash=``, with ``systemd.verity_<role>_data=``/``_hash=`` when set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.fs.pe import UnifiedKernelImage
from immutools.osrelease import parse_os_release
from immutools.report.model import evidence
from immutools.system.cmdline import KernelCmdline
from immutools.system.gpt_auto import cmdline_verity
from immutools.system.sdboot import LoaderEntry, read_loader, select_default, sort_entries

from .detect import Layout, role_spec, uki_name_pattern

MAX_UKIS = 64                    # per directory: a bound on what a hostile ESP makes us parse


@dataclass
class Boot:
    """The UKIs (report rows, menu order), the default one and why, its command line, and the
    root hash it pins for the main role. ``problem`` says why there is no pinned hash."""

    ukis: list[dict] = field(default_factory=list)
    default: dict | None = None
    choice: str | None = None                  # how the default was chosen
    cmdline: KernelCmdline | None = None
    hash_key: str | None = None                # roothash or usrhash
    pinned: str | None = None                  # the root hash the default UKI pins
    pinned_evidence: dict | None = None
    data_device: str | None = None             # systemd.verity_<role>_data=
    hash_device: str | None = None             # systemd.verity_<role>_hash=
    problem: str | None = None

    @property
    def pinned_hash(self) -> str | None:
        return self.pinned.lower() if self.pinned else None


def _boot_partitions(image: DiskImage) -> tuple[Volume | None, Volume | None]:
    return image.volume(type_key="esp"), image.volume(type_key="xbootldr")


def _read_uki(image: DiskImage, fs, vol: Volume, path: str, match) -> tuple[LoaderEntry, dict] | None:
    """One UKI as a loader entry (for systemd-boot's ordering) and its report row."""
    try:
        uki = UnifiedKernelImage(fs.open_source(path), image.limits)
        osrel, cmdline, uname = uki.section_text(".osrel"), uki.section_text(".cmdline"), uki.section_text(".uname")
    except ImmutoolsError as exc:
        image.warn(f"{vol.describe()}: {path}: not a readable UKI: {exc}")
        return None
    rel = parse_os_release(osrel or "")
    entry = LoaderEntry(id=match.group("stem") + match.group("ext"), path=path, title=rel.get("PRETTY_NAME"),
                        version=rel.get("IMAGE_VERSION") or rel.get("VERSION_ID"),
                        sort_key=rel.get("IMAGE_ID") or rel.get("ID"),
                        tries_left=int(match.group("left")) if match.group("left") else None,
                        tries_done=int(match.group("done")) if match.group("done") else None)
    row = {"path": path.lstrip("/"), "volume": vol.number, "os_release": rel,
           "cmdline": KernelCmdline((cmdline or "").strip(), f"{vol.describe()}: {path} .cmdline"),
           "uname": (uname or "").strip() or None, "tries_left": entry.tries_left,
           "evidence": evidence(f"{vol.describe()}: {path}", "unified kernel image")}
    return entry, row


def _ukis_of(image: DiskImage, knowledge: dict, vol: Volume, fs) -> list[tuple[LoaderEntry, dict]]:
    pattern = uki_name_pattern(knowledge)
    found = []
    for d in knowledge["uki_dirs"]:
        try:
            names = fs.listdir(d) if fs.exists(d) else []
        except ImmutoolsError:
            continue
        for name in names[:MAX_UKIS]:
            match = pattern.match(name)
            uki = _read_uki(image, fs, vol, f"{d}/{name}", match) if match else None
            if uki is not None:
                found.append(uki)
    return found


def read_boot(image: DiskImage, knowledge: dict, layout: Layout) -> Boot:
    """The UKIs of the ESP and XBOOTLDR in systemd-boot's order, and what the default one pins."""
    boot = Boot()
    esp, xbootldr = _boot_partitions(image)
    found, conf, looked = [], None, []
    for vol in (esp, xbootldr):
        fs = image.filesystem(vol) if vol is not None else None
        if fs is None:
            continue
        looked.append(vol.describe())
        if vol is esp:
            loader = read_loader(fs, "/")
            conf = loader.conf if loader else None
        found += _ukis_of(image, knowledge, vol, fs)
    rows = {id(entry): row for entry, row in found}
    ordered = sort_entries([entry for entry, _row in found])
    default, boot.choice = select_default(ordered, conf) if ordered else (None, "no UKIs")
    for entry in ordered:
        boot.ukis.append(dict(rows[id(entry)], default=entry is default))
    boot.default = next((u for u in boot.ukis if u["default"]), None)
    if boot.default is None:
        where = " or ".join(looked) if looked else "no readable ESP or XBOOTLDR partition"
        boot.problem = f"no readable unified kernel image in {', '.join(knowledge['uki_dirs'])} ({where})"
        return boot
    boot.cmdline = boot.default["cmdline"]
    if layout.role is None:
        return boot
    boot.hash_key = role_spec(knowledge, layout.role)["cmdline_key"]
    boot.pinned, boot.data_device, boot.hash_device = cmdline_verity(boot.cmdline, layout.role)
    if boot.pinned:
        boot.pinned_evidence = boot.cmdline.evidence(boot.hash_key)
    else:
        boot.problem = f"the default UKI {boot.default['path']} sets no {boot.hash_key}= on its command line"
    return boot
