"""Which A/B slot boots next, decided exactly as GRUB's ``gptprio.next`` decides it.

Our own code: the rule lives in a GRUB patch carried by Flatcar and Bottlerocket
(Flatcar: flatcar/scripts coreos-overlay ``coreos/user-patches/sys-boot/grub/``
``grub-2.12-add-gpt-partition-scheme.patch``; Bottlerocket: bottlerocket-core-kit ``packages/grub``
``0009``/``0041`` gptprio patches), not in any library. The loop walks the partition entries in table
order and keeps a candidate only when

    (tries > 0 or successful) and priority > priority of the current best (starting from 0)

so a priority-0 slot never boots, and on equal priority the *first* entry in the table wins.
When the chosen slot has tries left, GRUB decrements them before booting; we only report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from immutools.volumes.model import Partition


@dataclass
class GptprioChoice:
    partition: Partition | None
    reason: str
    will_decrement_tries: bool = False


def _bits(part: Partition) -> tuple[int, int, bool]:
    attrs = part.attributes or {}
    return int(attrs.get("priority") or 0), int(attrs.get("tries") or 0), bool(attrs.get("successful"))


def gptprio_next(partitions: Iterable[Partition], type_guid: str) -> GptprioChoice:
    """Pick the next boot partition among ``partitions`` of type ``type_guid`` (GRUB's rule)."""
    type_guid = type_guid.lower()
    best: Partition | None = None
    best_priority = 0
    considered = []
    for part in sorted(partitions, key=lambda p: p.number):
        if (part.type_guid or "").lower() != type_guid:
            continue
        priority, tries, successful = _bits(part)
        considered.append(f"{part.label or part.number}: priority {priority}, tries {tries}, successful {int(successful)}")
        if (tries > 0 or successful) and priority > best_priority:
            best, best_priority = part, priority
    if best is None:
        return GptprioChoice(None, "no bootable slot (" + "; ".join(considered or ["no partition of that type"]) + ")")
    _p, tries, _s = _bits(best)
    reason = (
        f"gptprio.next picks {best.label or best.number}: highest priority with tries>0 or successful "
        f"({'; '.join(considered)})"
    )
    return GptprioChoice(best, reason, will_decrement_tries=tries > 0)
