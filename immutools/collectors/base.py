"""The collector interface every distribution module implements.

A collector knows one distribution family. The scan asks every collector to ``detect`` the image
(cheap: partition labels, type GUIDs, a file or two), picks the most confident one, and lets it
``collect`` the report sections. Shared logic (os-release, unit files, command lines, mount
resolution, the surface inventory) lives outside the collectors, in the shared layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage


@dataclass
class Detection:
    collector: str
    confidence: float                    # 0.0 (not this) .. 1.0 (certain)
    evidence: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)   # what detect already learned, for collect to reuse


class Collector:
    name: str = "base"

    def detect(self, image: DiskImage) -> Detection:
        raise NotImplementedError

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        """Return report sections (``os``, ``mounts``, ``paths``, ``update``, ``integrity``,
        ``surface``, ...) to merge into the report."""
        raise NotImplementedError
