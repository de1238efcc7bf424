"""ostree / rpm-ostree systems: Fedora CoreOS, Fedora Atomic desktops (Silverblue, Kinoite, ...).

The physical root holds a repository and deployments (``sysroot``); at boot, ostree-prepare-root
makes the default deployment ``/``, binds its ``/usr`` read-only, its ``/etc`` (kept across updates
by a 3-way merge) and the stateroot's ``/var`` writable, and leaves the physical root at
``/sysroot`` (``running``). rpm-ostree layers rpm packages over the image by composing a new
deployment; Zincati or rpm-ostreed decide when (``update``).

Facts come from ``data/distributions/ostree.yaml`` (upstream sources cited there). What the image
shows is read (entries, symlinks, origin files, repo config, os-release, units, Zincati/rpm-ostreed
configuration); what ostree-prepare-root does in code (the bind mounts, the read-only remount) is
added from the documented behaviour, marked ``observed: false``.
"""

from __future__ import annotations

import json
import posixpath
import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, Integrity, OsIdentity, evidence
from immutools.system.compose import arch_from_tree, detect_arch, finish, lenient_resolver, read_key_values
from immutools.system.surface import PSEUDO_TREES, inventory

from .running import Running, compose_running, mount_table
from .sysroot import Sysroot, etc_changes, open_sysroot, public_deployment, unreferenced_deployments
from .update import layering, update_section

_OS_RELEASE = ("/usr/lib/os-release", "/etc/os-release")


class OstreeCollector(Collector):
    name = "ostree"
    distribution = "ostree"

    # ------------------------------------------------------------------------------- detect
    def _physical_roots(self, image: DiskImage):
        """Yield (volume, filesystem, subdir) for every filesystem holding /ostree/deploy."""
        conf = self.knowledge["physical_root"]
        deploy = self.knowledge["sysroot"]["deploy_dir"]
        for vol in image.volumes:
            if vol.fstype not in conf["fstypes"]:
                continue
            fs = image.filesystem(vol)
            if fs is None:
                continue
            candidates = ["/"] + (["/" + d for d in conf["btrfs_subdirs"]] if vol.fstype == "btrfs" else [])
            for sub in candidates:
                try:
                    if fs.stat(posixpath.join(sub, deploy.lstrip("/"))).is_dir:
                        yield vol, fs, sub
                        break
                except ImmutoolsError:
                    continue

    def _boot_volume(self, image: DiskImage, phys: Volume) -> Volume | None:
        """A separate /boot: a filesystem whose root has ``loader`` and ``ostree``."""
        for vol in image.volumes:
            if vol is phys or vol.fstype not in self.knowledge["boot_fstypes"]:
                continue
            fs = image.filesystem(vol)
            if fs is None:
                continue
            try:
                if fs.exists("/loader", follow=False) and fs.exists("/ostree"):
                    return vol
            except ImmutoolsError:
                continue
        return None

    def detect(self, image: DiskImage) -> Detection:
        found = next(self._physical_roots(image), None)
        if found is None:
            return Detection(self.name, 0.0)
        vol, fs, sub = found
        hits = ["ostree_deploy_dir"]
        ev = [evidence(f"{vol.describe()}: {posixpath.join(sub, 'ostree/deploy')}", "ostree deployments directory")]
        repo_conf = posixpath.join(sub, self.knowledge["sysroot"]["repo_config"].lstrip("/"))
        if fs.exists(repo_conf):
            hits.append("repo_config")
            ev.append(evidence(f"{vol.describe()}: {repo_conf}", "ostree repository config"))
        boot = self._boot_volume(image, vol)
        boot_fs = image.filesystem(boot) if boot is not None else fs
        boot_base = "/" if boot is not None else posixpath.join(sub, "boot")
        try:
            names = boot_fs.listdir(posixpath.join(boot_base, "loader/entries"))
        except ImmutoolsError:
            names = []
        entry_re = re.compile(self.knowledge["sysroot"]["entry_pattern"])
        if any(entry_re.match(n) for n in names):
            hits.append("boot_entries")
            ev.append(evidence(f"{(boot or vol).describe()}: {posixpath.join(boot_base, 'loader/entries')}", "ostree boot loader entries"))
        labels = {v.label for v in image.volumes}
        if set(self.knowledge["variants"]["coreos"]["partition_names"]) <= labels:
            hits.append("fcos_partition_names")
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev,
                         {"physical": (vol, sub), "boot": boot})

    # ------------------------------------------------------------------------------- gather
    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        phys_vol, sub = detection.facts.get("physical") or (None, "/")
        if phys_vol is None:
            return
        sysroot = open_sysroot(image, self.knowledge, phys_vol, sub, detection.facts.get("boot"))
        running = compose_running(image, self.knowledge, sysroot)
        findings.os = self._os(image, sysroot, running)
        variant = self.knowledge["variants"].get(findings.os.variant or "", {})
        findings.integrity = self._integrity(running)
        table = mount_table(image, self.knowledge, sysroot, running, variant)
        if running.dep_path is None:
            reason = self._no_default_reason(sysroot)
            # everything read from the running deployment is unknown for that one reason
            for fact in ("mount /", "mount /usr", "mount /etc", "mount /var", "path /home", "os.id", "os.version",
                         "update.default_deployment", "surface.init"):
                findings.explain(fact, reason)
        # /sysroot shows every deployment and the repository's objects again: the running one is at /
        finish(image, findings, self.knowledge, table, running.tree, units=running.units, cmdline=running.cmdline,
               resolve=lenient_resolver(running.tree), surface=False)
        findings.surface = self._surface(running)
        lay = layering(self.knowledge, sysroot.default, findings.surface)
        findings.update, agent_conf = update_section(self.knowledge, sysroot, running.tree, running.units, variant)
        findings.update.extra["package_layering"] = lay
        findings.distribution = self._distribution(image, sysroot, running, variant, lay, agent_conf)
        findings.distribution["name"] = variant.get("name") or findings.os.id or "ostree"

    # ------------------------------------------------------------------------------- pieces
    @staticmethod
    def _no_default_reason(sysroot: Sysroot) -> str:
        """Why no deployment is the running one: the default (highest-numbered) entry names none,
        or there is no entry at all."""
        if not sysroot.entries:
            return "no ostree boot loader entry found"
        first = sysroot.entries[0]
        if first["ostree_karg"] is None:
            why = "has no ostree= kernel argument"
        else:
            why = f"has ostree={first['ostree_karg']}, which leads to no deployment"
        rollback = sysroot.rollback
        tail = (f"; the next entry names deployment {rollback['checksum'][:12]}.{rollback['serial']} (the rollback)"
                if rollback else "")
        return (f"the default boot entry {first['where']} {why}: ostree-prepare-root finds no root to boot "
                f"(ostree-prepare-root.service){tail}")

    def _os(self, image: DiskImage, sysroot: Sysroot, running: Running) -> OsIdentity:
        os_release, os_ev = None, None
        if running.dep_path:
            for path in _OS_RELEASE:
                os_release = read_key_values(running.tree, path)
                if os_release:
                    os_ev = running.tree.evidence(path, "os-release of the default deployment")
                    break
        ident = OsIdentity.from_os_release(os_release, os_ev)
        ident.name = (os_release or {}).get("NAME")
        ident.version = (sysroot.default or {}).get("version") or (os_release or {}).get("VERSION_ID")
        ident.extra.pop("version_source", None)
        arch, arch_ev = detect_arch(image, [])          # DPS root types are per architecture
        if arch is None:
            arch, arch_ev = arch_from_tree(running.tree)
        ident.arch = arch
        ident.add_evidence(arch_ev)
        return ident

    @staticmethod
    def _integrity(running: Running) -> Integrity:
        integrity = Integrity.none()
        if running.dep_path:
            integrity.extra["composefs"] = {k: v for k, v in running.composefs.items() if k != "evidence"}
            integrity.evidence = list(running.composefs.get("evidence", []))
        return integrity

    def _surface(self, running: Running) -> dict:
        surface = inventory(running.tree, running.cmdline, running.units,
                            skip_trees=PSEUDO_TREES + (self.knowledge["sysroot"]["physical_mount"],)).to_report()
        lay = self.knowledge["layering"]
        for row in surface.get("package_manager_details", []):
            if row.get("name") in (lay["package_manager"], lay["tool"]):
                row["mode"] = "layered over the image (rpm-ostree)"
        return surface

    def _distribution(self, image: DiskImage, sysroot: Sysroot, running: Running, variant: dict, lay: dict,
                      agent_conf: dict) -> dict:
        default, rollback = sysroot.default, sysroot.rollback
        out = {
            "name": None,                        # set by the caller: the variant, else the os-release ID
            "stateroot": running.stateroot,
            "physical_root": {"partition": sysroot.volume.number, "fstype": sysroot.volume.fstype, "subdir": sysroot.subdir},
            "boot_partition": sysroot.boot_volume.number if sysroot.boot_volume is not None else None,
            "sysroot_readonly": running.readonly,
            "repo_mode": sysroot.repo_config.get("core", {}).get("mode"),
            "repo_sysroot_config": sysroot.sysroot_config,
            "bls_naming": sysroot.loader.get("naming"),
            "bootversion": sysroot.loader.get("bootversion"),
            "boot_entries": [e["file"] for e in sysroot.entries],
            "deployments": [public_deployment(d) for d in sysroot.deployments],
            "default_deployment": public_deployment(default) if default else None,
            "rollback_deployment": public_deployment(rollback) if rollback else None,
            "unreferenced_deployments": unreferenced_deployments(self.knowledge, sysroot),
            "etc_changes": etc_changes(sysroot.tree, running.dep_path) if running.dep_path else None,
            "layered_packages": lay["layered_packages"],
            "kernel_cmdline": running.cmdline.text if running.cmdline else None,
            "update_agent_config": agent_conf,
            "skipped_mount_units": running.skipped_units,
        }
        if agent_conf.get("agent") == "zincati":
            out["zincati_strategy"] = agent_conf.get("strategy")
            out["zincati_enabled"] = agent_conf.get("enabled")
        if variant is self.knowledge["variants"]["coreos"]:
            out.update(self._coreos_facts(image, sysroot))
        return out

    def _coreos_facts(self, image: DiskImage, sysroot: Sysroot) -> dict:
        """Fedora CoreOS: partition-type era, the first-boot flag, the pristine disk GUID, the aleph file."""
        coreos = self.knowledge["variants"]["coreos"]
        labels = coreos["labels"]
        kinds = []
        for vol, role in ((image.volume(label=labels["boot"]), "boot"), (image.volume(label=labels["root"]), "root")):
            if vol is None or vol.partition is None:
                continue
            if vol.partition.type_guid == coreos["legacy_type"]:
                kinds.append("legacy")
            elif role == "boot" and vol.partition.type_guid == coreos["xbootldr_type"]:
                kinds.append("dps")
            elif role == "root" and vol.partition.type_key and vol.partition.type_key.startswith("root-"):
                kinds.append("dps")
            else:
                kinds.append("other")
        first_boot = sysroot.boot_tree.exists(posixpath.join(sysroot.boot_base, coreos["first_boot_flag"]))
        aleph = None
        for path in coreos["aleph_files"]:
            try:
                if sysroot.tree.exists(path):
                    aleph = {"path": path, "resolved": sysroot.tree.realpath(path),
                             "content": json.loads(sysroot.tree.read_text(path, max_bytes=64 * 1024))}
                    break
            except (ImmutoolsError, ValueError):
                continue
        return {
            "partition_types": kinds[0] if kinds and len(set(kinds)) == 1 else ("mixed" if kinds else None),
            "first_boot_flag": first_boot,
            "disk_guid": image.table.disk_guid,
            "pristine": image.table.disk_guid == coreos["pristine_disk_guid"] and first_boot,
            "aleph": aleph,
        }
