"""How Bottlerocket updates itself: updog (a TUF client) writes the inactive partition set and
signpost flips the GPT priority bits GRUB's ``gptprio.next`` reads; the server URLs, version lock
and waves come from the live settings on PRIVATE, else from the documented defaults."""

from __future__ import annotations

import json

from immutools.errors import ImmutoolsError
from immutools.report.model import Update, UpdateSlot, evidence

from .layout import Bank, OsDisk
from .mounts import System
from .private import PrivateStore

_MAX_TUF_ROOT = 1024 * 1024


def tuf_root(knowledge: dict, system: System) -> dict | None:
    """The TUF root updog trusts, summarised (version, expiry, keys, root threshold)."""
    tree = system.tree if system.have_root else None
    path = knowledge["update"]["tuf_root"]
    try:
        if tree is None or not tree.exists(path):
            return None
        doc = json.loads(tree.read_text(path, max_bytes=_MAX_TUF_ROOT))
        signed = doc.get("signed") or {}
        roles = signed.get("roles") or {}
        return {"path": path, "version": signed.get("version"), "expires": signed.get("expires"),
                "keys": len(signed.get("keys") or {}),
                "root_threshold": (roles.get("root") or {}).get("threshold"),
                "evidence": [tree.evidence(path, "TUF root updog trusts")]}
    except (ImmutoolsError, ValueError, AttributeError, TypeError) as exc:
        return {"path": path, "error": f"unreadable: {exc}", "evidence": [tree.evidence(path, "TUF root (unreadable)")]}


def waves(knowledge: dict, store: PrivateStore) -> dict:
    """The host's wave seed and the default schedule it falls in."""
    ku = knowledge["update"]
    ignore, ignore_ev = store.setting("ignore_waves")
    seed, seed_ev = store.setting("seed")
    schedule = [dict(w) for w in ku["default_waves"]]
    out = {"seed": seed, "seed_range": list(ku["seed_range"]), "default_schedule": schedule,
           "ignore_waves": ignore if isinstance(ignore, bool) else ku["ignore_waves_default"],
           "evidence": [e for e in (seed_ev, ignore_ev) if e] or [
               evidence(ku["waves_source"], "seed generated at first boot (bork seed); none in this image yet", False)]}
    if isinstance(seed, int) and not isinstance(seed, bool):
        lo, hi = ku["seed_range"]
        out["default_wave"] = next((w for w in schedule if seed < w["percent"] * (hi - lo + 1) / 100), None)
        if out["default_wave"] is None:
            del out["default_wave"]
    return out


def _agent_evidence(knowledge: dict, system: System) -> list[dict]:
    """The updater's files and units in the image."""
    ku = knowledge["update"]
    if not system.have_root:
        return []
    tree, ev = system.tree, []
    for path, what in ((ku["binary"], "updog binary"),
                       (ku["config_template"], f"updog.toml template, rendered into {ku['config']} at boot"),
                       (ku["signpost"], "signpost (GPT attribute flips)")):
        try:
            if tree.exists(path):
                ev.append(tree.evidence(path, what))
        except ImmutoolsError:
            pass
    return ev


def _slot(bank: Bank, active: bool) -> UpdateSlot:
    attrs = bank.attrs()
    priority, tries, successful = attrs.get("priority"), attrs.get("tries"), attrs.get("successful")
    return UpdateSlot.from_attributes(
        bank.name, [v.number for v in (bank.boot, bank.root, bank.hash) if v is not None], attrs, bank.version, active,
        build_id=bank.build_id,
        # signpost's own "will boot" test
        bootable=bool((priority or 0) > 0 and (tries or 0) > 0 or successful))


def update_section(knowledge: dict, disk: OsDisk, system: System, store: PrivateStore, arch: str | None) -> Update:
    ku = knowledge["update"]
    ev = [evidence("GPT attribute bits of the BOOT partitions", disk.choice.reason)] + _agent_evidence(knowledge, system)
    template = ku["metadata_url_template"]
    variant = disk.variant
    url, url_ev = store.setting("metadata_base_url")
    if not isinstance(url, str):
        url = template.format(variant=variant, arch=arch) if variant and arch else None
        url_ev = evidence(ku["urls_source"], f"{template} for variant {variant}, arch {arch}", False)
    ev.append(url_ev)
    targets, targets_ev = store.setting("targets_base_url")
    if not isinstance(targets, str):
        targets = ku["targets_url"]
    lock, lock_ev = store.setting("version_lock")
    return Update(
        mechanism="ab-partitions", agent=ku["agent"], channel=None, server=url,
        active_slot=disk.active.name if disk.active else None,
        slots=[_slot(b, b is disk.active) for b in disk.banks],
        rollback=ku["rollback"],
        evidence=[e for e in ev + [targets_ev, lock_ev] if e],
        extra={"targets_url": targets, "metadata_url_template": template,
               "version_lock": lock if isinstance(lock, str) else ku["version_lock_default"],
               "tuf_root": tuf_root(knowledge, system), "waves": waves(knowledge, store), "api": list(ku["api"])})
