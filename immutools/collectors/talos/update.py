"""How Talos updates: A/B boot entries (GRUB slots on BOOT, UKIs on the ESP), written by the
installer image machined runs; META ``Upgrade`` names the entry a failed boot reverts to until the
new one is confirmed healthy (``data/distributions/talos.yaml`` ``update``, ``meta``, ``state``).
"""

from __future__ import annotations

import yaml

from immutools.disk import DiskImage
from immutools.report.model import Update, UpdateSlot, evidence

from .detect import meta_tag, read_text
from .facts import TalosFacts


def _configured_image(image: DiskImage, knowledge: dict, facts: TalosFacts) -> tuple[str | None, dict | None]:
    """The installer image the machine configuration on STATE names, if any."""
    state = facts.layout.state
    state_fs = image.filesystem(state) if state is not None else None
    path = knowledge["state"]["config"]
    text = read_text(image, state_fs, path, state.describe()) if state_fs is not None else None
    if not text:
        return None, None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        image.warn(f"{state.describe()}: {path}: {exc}")
        return None, None
    keys = knowledge["state"]["install_image_key"]
    for doc in docs:
        node = doc
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str):
            return node, evidence(f"{state.describe()}: {path}", ".".join(keys))
    return None, None


def install_image(image: DiskImage, knowledge: dict, facts: TalosFacts) -> tuple[str | None, dict | None]:
    """Which installer image an upgrade would use: a staged one in META, else the machine
    configuration's, else the release's default."""
    meta = facts.meta
    staged = meta_tag(knowledge, "staged_image_tag")
    if meta is not None and meta.value_text(staged):
        return meta.value_text(staged), evidence(f"META tag {staged}", f"{knowledge['meta']['staged_image_tag']} (applied at next boot)")
    configured, where = _configured_image(image, knowledge, facts)
    if configured is not None:
        return configured, where
    if facts.version.value:
        u = knowledge["update"]
        return f"{u['installer_image']}:{facts.version.value}", evidence(u["source"], "default installer image for this release", False)
    return None, None


def _slots(facts: TalosFacts) -> tuple[list[UpdateSlot], list[dict]]:
    """One slot per GRUB A/B entry and per UKI, and the evidence for them."""
    boot, layout = facts.boot, facts.layout
    slots, ev = [], []
    if boot.grub is not None:
        for row in boot.grub.entries:
            if row["label"] is None:
                continue
            slots.append(UpdateSlot(row["label"], [layout.boot.number], row["version"], boot.active.grub_entry is row["entry"],
                                    extra={"title": row["title"], "kernel": row["kernel"], "initrd": row["initrd"],
                                           "fallback": boot.grub.fallback is row["entry"]}))
        ev.append(boot.grub.evidence)
    for uki in boot.ukis:
        slots.append(UpdateSlot(uki["name"], [layout.esp.number], uki["version"], boot.active.uki is uki,
                                extra={"path": uki["path"]}))
        ev.append(evidence(f"{layout.esp.describe()}: {uki['path']}", "UKI (systemd-boot type #2 entry)"))
    return slots, ev


def update_section(image: DiskImage, knowledge: dict, facts: TalosFacts) -> Update:
    u, boot, active = knowledge["update"], facts.boot, facts.boot.active
    ev = [evidence(u["source"], "upgrades: machined runs the installer image, which writes the other boot entry", False)]
    slots, slot_ev = _slots(facts)
    ev += slot_ev
    upgrade_tag = meta_tag(knowledge, "upgrade_tag")
    previous = facts.meta.value_text(upgrade_tag) if facts.meta is not None else None
    if previous is not None:
        ev.append(evidence(f"META tag {upgrade_tag} ({knowledge['meta']['upgrade_tag']})",
                           f"{previous!r}: upgrade not yet confirmed healthy; a failed boot reverts to it"))
    server, server_ev = install_image(image, knowledge, facts)
    if server_ev:
        ev.append(server_ev)
    active_entry = active.uki["name"] if active.uki is not None else (active.grub_entry.title if active.grub_entry is not None else None)
    return Update(mechanism=u["mechanism"], agent=u["agent"], channel=None, server=server,
                  active_slot=active.grub_label if active.grub_entry is not None else None,
                  slots=slots, rollback=u["rollback"], evidence=ev,
                  extra={"active_entry": active_entry, "bootloader": boot.bootloader, "decided_by": active.decided_by,
                         "pending_upgrade": {"fallback": previous} if previous is not None else None})
