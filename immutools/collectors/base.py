"""The collector interface every distribution module implements.

A collector knows one distribution family. The scan asks every collector to ``detect`` the image
(cheap: partition labels, type GUIDs, a file or two), picks the most confident one, and lets it
``gather`` what it knows into one ``Findings`` (``immutools.report.model``), section by section.
Shared mechanics (composing the OS tree, os-release, units, command lines, mount resolution, path
states, the surface inventory) live in the system layer (``immutools.system.compose``), and the
distribution's facts in ``data/distributions/<distribution>.yaml`` (``self.knowledge``).

Adding a distribution: one collector (a module, or a package split by concern), one data file,
one replica spec -- see the README's Layout section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import Findings


@dataclass
class Detection:
    collector: str
    confidence: float                    # 0.0 (not this) .. 1.0 (certain)
    evidence: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)   # what detect already learned, for gather to reuse


class Collector:
    name: str = "base"
    distribution: str | None = None      # the data file this collector reads, if any

    def __init__(self) -> None:
        self.knowledge: dict | None = load_distribution(self.distribution) if self.distribution else None

    def detect(self, image: DiskImage) -> Detection:
        raise NotImplementedError

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        """Fill ``findings`` (os, mounts, paths, update, integrity, surface, distribution). Fill
        each section as soon as it is known: if a later step fails, the scan keeps what is there."""
        raise NotImplementedError

    def run(self, image: DiskImage, detection: Detection) -> Findings:
        """``gather`` into a fresh ``Findings``; a failure part-way keeps the finished sections and
        becomes a warning."""
        findings = Findings()
        try:
            self.gather(image, detection, findings)
        except ImmutoolsError as exc:
            done = ", ".join(s for s in Findings.SECTIONS if getattr(findings, s) is not None) or "none"
            image.warn(f"collector {self.name} stopped: {exc} (sections kept: {done})")
        return findings

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        """The report sections, serialised (what ``verify`` and tests read)."""
        return self.run(image, detection).to_sections()
