"""What the collector learned about a DPS disk, step by step, in one place: the report's sections
are built from it (``mounts``, ``update``, ``report``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.system.gpt_auto import AutoMount
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

from .boot import Boot
from .detect import DpsPartition, Layout
from .slots import Slots


@dataclass
class System:
    """The composed tree and how it came about (``mounts.compose_system``)."""

    tree: OsTree
    root: DpsPartition | None = None          # the partition mounted at /
    have_root: bool = False
    decisions: list[AutoMount] = field(default_factory=list)
    placed: list[AutoMount] = field(default_factory=list)
    units: UnitSet | None = None
    skipped_units: list[dict] = field(default_factory=list)

    @property
    def esp_decision(self) -> AutoMount | None:
        return next((d for d in self.decisions if d.designator == "esp"), None)


@dataclass
class DpsFacts:
    layout: Layout
    boot: Boot
    slots: Slots
    system: System | None = None
    arch: str | None = None
    arch_evidence: dict | None = None
