"""The running system of a DPS image: the root (and /usr) tree, what systemd-gpt-auto-generator
adds to it, and the mount table.

The root is the DPS root partition (a usr-only image: the first usable one, if systemd-repart
has made it; the /usr slot comes from the active slot), mounted through ``/dev/mapper/root`` when
the boot chain's root hash pairs it with its verity partition. Everything else (ESP on ``/efi`` or
``/boot``, XBOOTLDR, /home, /srv, /var, /var/tmp, swap) is the generator's decision, taken on the
root tree before those mounts (``immutools.system.compose.gpt_auto_decisions``). No row is
observed: systemd decides them at boot from the partition table.
"""

from __future__ import annotations

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.compose import (
    add_enabled_mount_units, gpt_auto_decisions, gpt_auto_entry, mount_fs, mount_gpt_auto, resolve_lenient,
)
from immutools.system.fstab import parse_fstab
from immutools.system.gpt_auto import SRC_DPS, SRC_GPT_AUTO, SRC_VERITY, GptEntry, root_stays_read_only
from immutools.system.mounts import MountEntry, MountTable
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

from .detect import DpsPartition, Layout, role_spec
from .facts import DpsFacts, System
from .slots import Slots

_FSTAB = "/etc/fstab"
_FSTAB_MAX_BYTES = 256 * 1024


def _root_partition(layout: Layout, slots: Slots) -> DpsPartition | None:
    """A usr-only image's first usable root partition; a root image's active slot."""
    if layout.role == "usr":
        return next((p for p in layout.of_role("root") if p.arch and not p.no_auto and not p.empty), None)
    return slots.active.data if slots.active else None


def fstab_targets(image: DiskImage, tree) -> tuple[set[str], bool]:
    """Mount points /etc/fstab names (canonical), and whether it defines swap: the generator
    leaves those to systemd-fstab-generator."""
    try:
        if not tree.exists(_FSTAB):
            return set(), False
        rows, _warnings = parse_fstab(tree.read_text(_FSTAB, max_bytes=_FSTAB_MAX_BYTES), _FSTAB)
    except ImmutoolsError as exc:
        image.warn(f"{_FSTAB} unreadable: {exc}")
        return set(), False
    targets = {resolve_lenient(tree, r.target) for r in rows if r.fstype != "swap" and r.target.startswith("/")}
    return targets, any(r.fstype == "swap" for r in rows)


def compose_system(image: DiskImage, facts: DpsFacts) -> System:
    """Mount the root and the active /usr, then the generator's partitions."""
    layout, slots = facts.layout, facts.slots
    system = System(OsTree(image.limits), _root_partition(layout, slots))
    if system.root is not None:
        system.have_root = mount_fs(system.tree, "/", image, system.root.volume)
    if layout.role == "usr" and slots.active is not None:
        mount_fs(system.tree, "/usr", image, slots.active.data.volume)
    targets, swap = fstab_targets(image, system.tree) if system.have_root else (set(), False)
    system.decisions = gpt_auto_decisions(image, system.tree, targets, swap, facts.boot.cmdline)
    system.placed = mount_gpt_auto(image, system.tree, system.decisions)
    system.units = UnitSet(system.tree)
    return system


_NO_ROOT = "no root partition: nothing persistent to mount at / (systemd-repart creates one at first boot)"
_VERITY_ROOT = "roothash= sets up /dev/mapper/root; the initrd mounts it read-only"
_GPT_AUTO_ROOT = "root found by type on the boot disk (root=gpt-auto)"


def _root_entry(knowledge: dict, facts: DpsFacts) -> MountEntry:
    root, slots, cmdline = facts.system.root, facts.slots, facts.boot.cmdline
    if root is None:
        return MountEntry("/", "tmpfs", "tmpfs", ["rw"], observed=False, evidence=[evidence(SRC_DPS, _NO_ROOT, False)])
    vol = root.volume
    ev = [evidence(f"{vol.describe()}: GPT entry", f"DPS type {root.key}")]
    if facts.layout.role == "root" and slots.verity_on:
        ev += slots.active.evidence + [evidence(SRC_VERITY, _VERITY_ROOT, False)]
        return MountEntry("/", role_spec(knowledge, "root")["device_mapper"], vol.fstype, ["ro"],
                          integrity="dm-verity", persistence="image", observed=False, volume=vol, evidence=ev)
    stays_ro, access_ev = root_stays_read_only(GptEntry.from_partition(vol.partition, vol.fstype), cmdline)
    ev += [evidence(SRC_GPT_AUTO, _GPT_AUTO_ROOT, False), access_ev]
    if cmdline is not None and cmdline.has("root"):
        ev.append(cmdline.evidence("root"))
    return MountEntry("/", f"PARTUUID={vol.partition.uuid}", vol.fstype, ["ro" if stays_ro else "rw"],
                      observed=False, volume=vol, evidence=ev)


def _usr_entry(knowledge: dict, facts: DpsFacts) -> MountEntry:
    slots = facts.slots
    data = slots.active.data
    vol = data.volume
    source = role_spec(knowledge, "usr")["device_mapper"] if slots.verity_on else f"PARTUUID={vol.partition.uuid}"
    ev = [evidence(f"{vol.describe()}: GPT entry", f"DPS type {data.key}")] + slots.active.evidence
    return MountEntry("/usr", source, vol.fstype, ["ro"], integrity="dm-verity" if slots.verity_on else "none",
                      persistence="image", observed=False, volume=vol, evidence=ev)


def mount_table(image: DiskImage, knowledge: dict, facts: DpsFacts) -> MountTable:
    """/ and /usr, the generator's mounts, then the enabled mount units (``finish`` adds the API
    filesystems)."""
    system = facts.system
    table = MountTable()
    table.add(_root_entry(knowledge, facts))
    if facts.layout.role == "usr" and facts.slots.active is not None:
        table.add(_usr_entry(knowledge, facts))
    for decision in system.placed:
        table.add(gpt_auto_entry(image, decision))
    system.skipped_units = add_enabled_mount_units(table, system.units, system.tree)
    return table
