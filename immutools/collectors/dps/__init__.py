"""Discoverable Partitions Specification images (systemd-repart / mkosi, usr-only A/B like ParticleOS).

Nothing here knows a distribution by name: an image is recognised by its partition types, which
the DPS defines per role and architecture (``detect``). The OS comes in a /usr partition (a
usr-only image) or a root partition; each data partition of that role is a slot, paired with its
verity and signature partitions by root hash as systemd does (``slots``). The default UKI in
``/EFI/Linux`` (systemd-boot's order) gives the command line and the root hash it pins
(``boot``), which decides the active slot. What the running system mounts is systemd's decision
at boot (``mounts``: the root, /usr, and systemd-gpt-auto-generator's ESP, XBOOTLDR, /home, /srv,
/var, /var/tmp, swap). systemd-sysupdate transfers make it an A/B system (``update``); the rest is
the ``distribution`` section (``report``).

Facts come from ``data/distributions/dps.yaml`` (upstream sources cited there), including which
facts every DPS image of each kind (``os.role``: root, root-verity, usr, usr-verity) guarantees;
when one cannot be determined, ``report.explain_gaps`` records why.
"""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.disk import DiskImage
from immutools.report.model import Findings
from immutools.system.compose import finish, lenient_resolver

from .boot import read_boot
from .detect import confidence, find_layout, fingerprints
from .facts import DpsFacts
from .mounts import compose_system, mount_table
from .report import architecture, distribution_section, explain_gaps, integrity_section, os_identity
from .slots import choose_active
from .update import repart_definitions, update_section

__all__ = ["DpsCollector"]


class DpsCollector(Collector):
    name = "dps"
    distribution = "dps"

    def detect(self, image: DiskImage) -> Detection:
        layout = find_layout(image, self.knowledge)
        if layout.role is None:
            return Detection(self.name, 0.0)
        hits, ev = fingerprints(image, self.knowledge, layout)
        return Detection(self.name, confidence(self.knowledge, hits), ev, {"layout": layout})

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        knowledge = self.knowledge
        layout = detection.facts.get("layout") or find_layout(image, knowledge)
        if layout.role is None:
            return
        boot = read_boot(image, knowledge, layout)
        facts = DpsFacts(layout, boot, choose_active(image, knowledge, layout, boot))
        facts.system = compose_system(image, facts)
        facts.arch, facts.arch_evidence = architecture(knowledge, facts)
        findings.os = os_identity(facts)
        findings.integrity = integrity_section(facts)

        tree = facts.system.tree
        finish(image, findings, knowledge, mount_table(image, knowledge, facts), tree, units=facts.system.units,
               cmdline=boot.cmdline, resolve=lenient_resolver(tree))
        findings.update, transfers = update_section(knowledge, facts)
        findings.distribution = distribution_section(knowledge, facts, transfers, repart_definitions(tree, knowledge))
        explain_gaps(findings, knowledge, facts)
