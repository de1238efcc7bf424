"""Any Linux image no specific collector recognises: the OS identity from the os-release of the
filesystem holding the root, the root composed with its /etc/fstab mounts and enabled mount units
(``immutools.system.compose``), the path states and surface inventory; a package database makes
the update mechanism ``package-manager``."""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, Integrity, OsIdentity
from immutools.system.compose import (
    compose_system, explain_missing_version, finish, find_root, identify_arch, lenient_resolver, package_manager_update,
)


class GenericLinuxCollector(Collector):
    """Runs when no specific collector matches (lowest confidence)."""

    name = "generic"

    def detect(self, image: DiskImage) -> Detection:
        root = find_root(image)
        if root is None:
            return Detection(self.name, 0.0)
        return Detection(self.name, 0.1, [root.evidence("os-release found; no specific collector matched")], {"root": root})

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        root = detection.facts.get("root") or find_root(image)
        if root is None:
            return
        findings.os = OsIdentity.from_os_release(root.os_release, root.evidence(), id_like=root.os_release.get("ID_LIKE"))
        explain_missing_version(image, findings, f"{root.volume.describe()}: {root.os_release_path}",
                                f"BUILD_ID={root.os_release['BUILD_ID']}" if root.os_release.get("BUILD_ID") else None,
                                warn=True)
        try:
            view = compose_system(image, root)
        except ImmutoolsError as exc:
            image.warn(f"{root.volume.describe()}: cannot compose the system tree: {exc}")
            view = None
        arch, arch_ev = identify_arch(image, view.tree if view else None, root.volume)
        findings.os.arch = arch
        findings.os.add_evidence(arch_ev)
        if view is None:
            return
        findings.integrity = Integrity.none()
        finish(image, findings, self.knowledge, view.table, view.tree, units=view.units,
               resolve=lenient_resolver(view.tree))
        findings.update = package_manager_update(findings.surface)
        findings.distribution = {
            "name": findings.os.id,
            "root": {"partition": root.volume.number, "fstype": root.volume.fstype, "subdir": root.subdir},
            "fstab": view.fstab_where, "fstab_unresolved": view.unresolved,
            "skipped_mount_units": view.skipped_units,
            "gpt_auto": view.gpt_auto_report(),
        }
