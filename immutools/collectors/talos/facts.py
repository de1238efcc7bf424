"""What the collector learned about a Talos disk, step by step, in one place: the sections of the
report are built from it (``mounts``, ``surface``, ``update``, ``report``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.fs.talos_meta import TalosMeta

from .boot import Boot
from .detect import Layout
from .rootfs import Initramfs, System
from .versions import Version


@dataclass
class TalosFacts:
    layout: Layout
    meta: TalosMeta | None
    meta_evidence: list[dict]
    boot: Boot
    initramfs: Initramfs
    system: System
    version: Version
    arch: str | None = None
    arch_evidence: dict | None = None
    mount_checks: list[dict] = field(default_factory=list)
    executables: list[str] = field(default_factory=list)       # on PATH in the composed tree

    @property
    def version_key(self) -> tuple[int, int] | None:
        return self.version.key

    @property
    def cmdline(self):
        return self.boot.cmdline
