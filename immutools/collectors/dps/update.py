"""How a DPS image updates itself: systemd-sysupdate transfers (``sysupdate.d``) write the next
version into the free (``_empty``) slot and a new UKI; systemd-repart definitions (``repart.d``)
made the slots. Several slots or any transfer make the mechanism ``ab-partitions``.
"""

from __future__ import annotations

import posixpath

from immutools.errors import ImmutoolsError
from immutools.report.model import Update, UpdateSlot, evidence
from immutools.system.compose import read_keyfile

from .facts import DpsFacts


def list_names(tree, dirs: list[str], suffix: str) -> list[str]:
    """File names ending in ``suffix`` in any of ``dirs`` (sorted, each once)."""
    names = set()
    for d in dirs:
        try:
            names |= {n for n in tree.listdir(d) if n.endswith(suffix)} if tree.exists(d) else set()
        except ImmutoolsError:
            continue
    return sorted(names)


def read_transfers(tree, knowledge: dict) -> tuple[list[dict], str | None]:
    """The effective transfers (an earlier directory overrides a later one by file name) and the
    first URL source they download from."""
    spec = knowledge["update"]
    out, server, seen = [], None, set()
    for d in spec["sysupdate_dirs"]:
        try:
            names = sorted(n for n in tree.listdir(d) if n.endswith(spec["transfer_suffix"])) if tree.exists(d) else []
        except ImmutoolsError:
            continue
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            path = posixpath.join(d, name)
            conf = read_keyfile(tree, path) or {}
            source, target = conf.get("Source", {}), conf.get("Target", {})
            if server is None and source.get("Type", "").startswith("url") and source.get("Path"):
                server = source["Path"]
            out.append({"name": name, "path": tree.source_of(path), "source_type": source.get("Type"),
                        "target_type": target.get("Type"), "target_match": target.get("MatchPattern")})
    return out, server


def update_section(knowledge: dict, facts: DpsFacts) -> tuple[Update, list[dict]]:
    """The update section, and the transfers (for the distribution section)."""
    spec, slots, boot = knowledge["update"], facts.slots, facts.boot
    tree, units = facts.system.tree, facts.system.units
    transfers, server = read_transfers(tree, knowledge)
    timer = units.enablement(spec["timer"]).enabled if units.find(spec["timer"]) else False
    rows = [UpdateSlot(s.name, s.partitions, s.version, s is slots.active,
                       extra={"empty": s.empty, "label": s.data.label, "root_hash": s.root_hash}) for s in slots.slots]
    ev = [evidence(t["path"], "systemd-sysupdate transfer") for t in transfers][:4]
    if slots.choice:
        ev.append(evidence(boot.default["evidence"]["source"] if boot.default and boot.pinned else "partition labels",
                           slots.choice))
    active = slots.active.name if slots.active else None
    return Update(mechanism="ab-partitions" if len(slots.slots) > 1 or transfers else "none",
                  agent=spec["agent"] if transfers else None, server=server,
                  active_slot=active if active in ("A", "B") else None, slots=rows,
                  rollback=spec["rollback"] if transfers else None, evidence=ev,
                  extra={"agent_timer_enabled": timer}), transfers


def repart_definitions(tree, knowledge: dict) -> list[str]:
    spec = knowledge["update"]
    return list_names(tree, spec["repart_dirs"], spec["repart_suffix"])
