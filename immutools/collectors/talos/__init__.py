"""Talos Linux: the OS runs from a squashfs held in RAM; no shell, no SSH, no systemd; A/B boot
entries (GRUB slots or UKIs) instead of A/B partitions.

The root filesystem is three containers deep and the collector follows them all (``rootfs``):
BOOT (XFS) ``/<slot>/initramfs.xz`` or the ESP's ``EFI/Linux/Talos-<v>.efi`` ``.initrd`` -> a
multi-segment (xz or zstd) cpio -> ``/rootfs.sqsh`` (plus one squashfs per system extension).

Facts come from ``data/distributions/talos.yaml`` (upstream sources cited there). Observed: GPT
names and sizes, the META key/value store (``detect``), grub.cfg and UKI sections (``boot``), the
initramfs segments, the squashfs content, STATE/EPHEMERAL content. What Talos sets up in code (its
whole mount table, SELinux mode rules, kernel configuration) is reported from the documented
behaviour with ``observed: false`` and the upstream source named, then checked against what the
image shows (``mounts``, ``surface``). The release comes from several sources (``versions``);
upgrades write the other boot entry (``update``); the rest is the ``distribution`` section
(``report``).
"""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.disk import DiskImage
from immutools.report.model import Findings, Integrity, OsIdentity, evidence
from immutools.system.compose import existing_resolver, finish

from .boot import booted_kernel, read_boot
from .detect import confidence, find_layout, fingerprints, guid_from_label, read_meta_store
from .facts import TalosFacts
from .mounts import mount_table
from .report import distribution_section
from .rootfs import compose_system, open_initramfs
from .surface import extend_surface
from .update import update_section
from .versions import architecture, choose_version

__all__ = ["TalosCollector", "guid_from_label"]


class TalosCollector(Collector):
    name = "talos"
    distribution = "talos"

    def detect(self, image: DiskImage) -> Detection:
        layout = find_layout(image, self.knowledge)
        hits, ev = fingerprints(image, self.knowledge, layout)
        score = confidence(self.knowledge, hits)
        if not score:
            return Detection(self.name, 0.0)
        return Detection(self.name, score, ev, {"layout": layout})

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        knowledge = self.knowledge
        layout = detection.facts.get("layout") or find_layout(image, knowledge)
        meta, meta_evidence = read_meta_store(image, knowledge, layout.meta)
        boot = read_boot(image, knowledge, layout, meta)
        initramfs = open_initramfs(image, knowledge, layout, boot)
        system = compose_system(image, knowledge, layout, initramfs)
        facts = TalosFacts(layout, meta, meta_evidence, boot, initramfs, system, choose_version(knowledge, boot, system))
        facts.arch, facts.arch_evidence = architecture(boot, system)
        findings.os = self._os(image, facts)
        findings.integrity = self._integrity(facts)

        # Talos has no systemd: its own mount table carries the pseudo filesystems.
        finish(image, findings, knowledge, mount_table(knowledge, facts), system.tree, cmdline=boot.cmdline,
               resolve=existing_resolver(system.tree), documented_mounts=[])
        if findings.surface is not None:
            facts.executables = extend_surface(findings.surface, knowledge, facts)
        findings.update = update_section(image, knowledge, facts)
        boot.kernel = booted_kernel(image, layout, boot.active)
        findings.distribution = distribution_section(image, knowledge, facts, findings)
        self._explain_gaps(findings, facts)

    # ------------------------------------------------------------------------------- sections
    def _os(self, image: DiskImage, facts: TalosFacts) -> OsIdentity:
        version = facts.version
        disagree = version.disagreement()
        if disagree:
            image.warn(f"Talos version sources disagree: {', '.join(disagree)}")
        os_release = facts.system.os_release or {}
        pretty = os_release.get("PRETTY_NAME") or (
            self.knowledge["rootfs"]["pretty_name"].format(version=version.value) if version.value else None)
        return OsIdentity(id=os_release.get("ID", self.knowledge["id"]), name=os_release.get("NAME", self.knowledge["name"]),
                          version=version.value, variant=None, arch=facts.arch, pretty_name=pretty, build_id=None,
                          evidence=[e for e in version.evidence + [facts.arch_evidence] if e])

    def _integrity(self, facts: TalosFacts) -> Integrity:
        """No dm-verity: the root is a squashfs inside the initramfs, covered by the UKI signature
        on SecureBoot systems (presence of the Authenticode table only: nothing is verified offline)."""
        ukis, cmdline = facts.boot.ukis, facts.cmdline
        signed = [u for u in ukis if u["signed"]]
        all_signed = bool(ukis) and len(signed) == len(ukis)
        integrity = Integrity.none(
            evidence(self.knowledge["initramfs"]["source"], "no dm-verity: the root is a squashfs inside the initramfs, "
                     "covered by the UKI signature on SecureBoot systems", False),
            *[evidence(f"{facts.layout.esp.describe()}: {u['path']}",
                       f"Authenticode certificate table ({u['signature_size']} bytes; not verified)") for u in signed])
        # the rubric's optional `integrity.signed`: every UKI carries an Authenticode certificate table
        integrity.extra = {"signed": all_signed,
                           "secure_boot": {"uki_signed": all_signed,
                                           "pcr_signature": bool(ukis) and all(u["pcrsig"] for u in ukis),
                                           "lockdown": cmdline.lockdown() if cmdline is not None else None}}
        return integrity

    @staticmethod
    def _explain_gaps(findings: Findings, facts: TalosFacts) -> None:
        """Why a guaranteed fact is missing: the first failure along boot entry -> initramfs ->
        root squashfs -> machined (each step keeps its reason)."""
        root_reason = facts.system.problem
        if findings.os.version is None:
            findings.explain("os.version", root_reason or
                             "no boot entry title, UKI name, os-release or machined string names a Talos release")
        if findings.os.arch is None:
            findings.explain("os.arch", root_reason or "machined's ELF machine is unknown and the booted entry is not a UKI")
        if findings.update is not None and findings.update.extra.get("active_entry") is None:
            findings.explain("update.active_entry", facts.boot.problem)
        if not facts.system.machined:
            findings.explain("surface.init", root_reason)
