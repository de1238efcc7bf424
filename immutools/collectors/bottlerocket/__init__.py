"""Bottlerocket OS: a dm-verity protected read-only root in A/B partition sets (BOOT, ROOT, HASH)
flipped by GPT attribute bits on BOOT, ``/etc`` a tmpfs rebuilt from the settings API at every boot,
persistent state on a separate data partition (``/local``, with ``/var``, ``/opt``, ``/mnt`` bound
from it) and on PRIVATE (``/var/lib/bottlerocket``); no shell, no sshd, no package manager on the host.

Facts come from ``data/distributions/bottlerocket.yaml`` (upstream sources cited there). What the
image shows is read: GPT types, names, fixed PARTUUIDs and attribute bits (``layout``), the set
GRUB's patched ``gptprio.next`` boots and each set's grub.cfg with its dm-verity table checked
against the HASH superblock (``boot``), PRIVATE's bootconfig and API datastore (``private``), the
mount and service units (``mounts``), the updater (``update``). Mounts set up in code (systemd's
/etc tmpfs, prairiedog's /boot, the /local masks) are added from the documented behaviour,
``observed: false``; when grub.cfg cannot be evaluated, ``/`` is the documented default (inferred,
with a warning). The data image of the split plan is recognised on its own (``data_disk``).
"""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage
from immutools.report.model import STANDARD_PATHS, Findings
from immutools.system.compose import existing_resolver, finish

from .boot import read_boot
from .data_disk import gather_data_disk
from .detect import detect_data_disk, detect_os_disk
from .layout import find_banks, read_os_disk
from .mounts import MountPlan, compose_system
from .private import PrivateStore, read_lockdown
from .report import Settings, distribution_section, integrity_section, os_identity
from .surface import extend_surface
from .update import update_section

_SURFACE_FACTS = ("surface.selinux", "surface.init")


class BottlerocketCollector(Collector):
    name = "bottlerocket"
    distribution = "bottlerocket"

    def detect(self, image: DiskImage) -> Detection:
        banks = find_banks(image, self.knowledge)
        if banks:
            hits, ev = detect_os_disk(image, self.knowledge, banks)
            facts = {"kind": "os-disk", "banks": banks}
        else:
            found = detect_data_disk(image, self.knowledge)
            if found is None:
                return Detection(self.name, 0.0)
            hits, ev, facts = found
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev, facts)

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        if detection.facts.get("kind") == "data-disk":
            gather_data_disk(image, self.knowledge, detection.evidence, findings)
            return
        knowledge = self.knowledge
        disk = read_os_disk(image, knowledge, detection.facts.get("banks") or find_banks(image, knowledge))
        read_boot(image, knowledge, disk)
        findings.os = os_identity(image, knowledge, disk, findings)
        findings.integrity = integrity_section(knowledge, disk, findings)

        system = compose_system(image, knowledge, disk)
        store = PrivateStore(image, knowledge, disk.private)
        lockdown = read_lockdown(store, knowledge, disk.variant)
        table = MountPlan(image, knowledge, disk, system, findings).table()
        finish(image, findings, knowledge, table, system.tree, units=system.units,
               cmdline=disk.source.cmdline if disk.source else None,
               paths=list(STANDARD_PATHS) + list(knowledge["extra_paths"]), resolve=existing_resolver(system.tree),
               documented_mounts=[],            # the mount plan has systemd's own mounts, as Bottlerocket patches them
               default_volumes={"/": disk.source.root if disk.source else None})
        if findings.surface is not None:
            extend_surface(knowledge, findings.surface, system, lockdown)
        else:
            for fact in _SURFACE_FACTS:
                findings.explain(fact, f"no readable OS tree: {system.root_problem}")

        findings.update = update_section(knowledge, disk, system, store, findings.os.arch)
        if disk.active is None:
            findings.explain("update.active_slot", f"no bootable partition set: {disk.choice.reason}")
        findings.distribution = distribution_section(knowledge, disk, system, Settings.read(store, lockdown))
