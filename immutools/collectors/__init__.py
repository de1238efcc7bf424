"""Distribution collectors, one module each, behind ``immutools.collectors.base.Collector``.

Modules are imported lazily so a scan only pays for what it runs; the order here breaks ties in
confidence (more specific collectors first, the generic fallback last).
"""

from __future__ import annotations

import importlib

from immutools.collectors.base import Collector, Detection  # noqa: F401

COLLECTOR_MODULES = (
    "immutools.collectors.flatcar:FlatcarCollector",
    "immutools.collectors.ostree:OstreeCollector",
    "immutools.collectors.bottlerocket:BottlerocketCollector",
    "immutools.collectors.talos:TalosCollector",
    "immutools.collectors.cos:CosCollector",
    "immutools.collectors.microos:MicroOsCollector",
    "immutools.collectors.ubuntucore:UbuntuCoreCollector",
    "immutools.collectors.dps:DpsCollector",
    "immutools.collectors.debian:DebianCollector",
    "immutools.collectors.generic:GenericLinuxCollector",
)


def all_collectors() -> list[Collector]:
    out = []
    for target in COLLECTOR_MODULES:
        module_name, cls_name = target.split(":")
        out.append(getattr(importlib.import_module(module_name), cls_name)())
    return out
