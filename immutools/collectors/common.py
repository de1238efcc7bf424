"""What collectors share that is about collecting, not about the system: detection confidence
from weighted fingerprints. (System mechanics live in ``immutools.system.compose``.)"""

from __future__ import annotations


def weighted_confidence(weights: dict[str, float], hits: list[str]) -> float:
    return round(min(1.0, sum(weights.get(h, 0.0) for h in hits)), 3)
