"""Debian (and Debian-like, apt-managed) systems: the mutable baseline of the comparison.

One read-write root filesystem holds /usr, /etc, /var and /home; updates are in-place ``apt``/``dpkg``
transactions (optionally unattended-upgrades) with no atomic switch and no rollback. Facts come
from ``data/distributions/debian.yaml``; the mount table, paths and surface come from the shared
view of a conventionally installed system (``immutools.system.compose.compose_system``).
"""

from __future__ import annotations

import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, Integrity, OsIdentity, evidence
from immutools.system.compose import (
    RootCandidate, compose_system, explain_missing_version, finish, find_root, identify_arch, lenient_resolver,
    package_manager_update, read_key_values, read_text,
)

_MAX_STATUS_BYTES = 64 * 1024 * 1024
_MAX_SOURCE_FILES = 64


class DebianCollector(Collector):
    name = "debian"
    distribution = "debian"

    def _is_debian(self, parsed: dict) -> bool:
        ident = parsed.get("ID", "")
        like = parsed.get("ID_LIKE", "").split()
        return ident in self.knowledge["os_release_ids"] or ("debian" in like and ident != "ubuntu-core")

    def _cloud_layout(self, image: DiskImage) -> bool:
        layout = self.knowledge["cloud_layout"]
        for role in ("bios", "esp", "root"):
            vol = image.volume(number=layout[role]["number"])
            if vol is None or vol.partition is None or vol.partition.type_guid != layout[role]["type"]:
                return False
        return True

    def detect(self, image: DiskImage) -> Detection:
        root = find_root(image)
        if root is None or not self._is_debian(root.os_release):
            return Detection(self.name, 0.0)
        fs = image.filesystem(root.volume)
        hits, ev = ["os_release_id"], [root.evidence(f"os-release ID={root.os_release.get('ID')}")]
        for key, rel in (("dpkg_status", self.knowledge["dpkg_status"]), ("debian_version", self.knowledge["debian_version"])):
            full = root.subdir.rstrip("/") + rel
            try:
                if fs.exists(full):
                    hits.append(key)
                    ev.append(evidence(f"{root.volume.describe()}: {full}", f"{rel} present"))
            except ImmutoolsError:
                continue
        if self._cloud_layout(image):
            layout = self.knowledge["cloud_layout"]
            hits.append("cloud_layout")
            numbers = ", ".join(f"{role} {layout[role]['number']}" for role in ("bios", "esp", "root"))
            ev.append(evidence(f"GPT entries {numbers}", "Debian cloud image layout (debian-cloud-images partition.GRUB_CLOUD_AMD64)"))
        return Detection(self.name, weighted_confidence(self.knowledge["detect"], hits), ev, {"root": root})

    def gather(self, image: DiskImage, detection: Detection, findings: Findings) -> None:
        root: RootCandidate = detection.facts.get("root") or find_root(image)
        findings.os = OsIdentity.from_os_release(root.os_release, root.evidence(), id_like=root.os_release.get("ID_LIKE"))
        view = compose_system(image, root)
        tree = view.tree
        debian_version = read_text(tree, self.knowledge["debian_version"])
        explain_missing_version(image, findings, f"{root.volume.describe()}: {root.os_release_path}",
                                f"{self.knowledge['debian_version']} says {debian_version!r}" if debian_version else None)
        arch, arch_ev = identify_arch(image, tree)
        findings.os.arch = arch
        findings.os.add_evidence(arch_ev)
        findings.integrity = Integrity.none()
        finish(image, findings, self.knowledge, view.table, tree, units=view.units, resolve=lenient_resolver(tree))
        update = package_manager_update(findings.surface)
        apt = self._apt(tree, view.units)
        update.agent, update.channel, update.server = apt["agent"], apt["channel"], apt["server"]
        update.rollback = self.knowledge["rollback"]
        update.evidence += apt["evidence"]
        update.extra["apt"] = {k: v for k, v in apt.items() if k != "evidence"}
        findings.update = update
        persistent_paths = set(self.knowledge["everything_persistent_paths"])
        findings.distribution = {
            "name": "debian" if root.os_release.get("ID") == "debian" else root.os_release.get("ID"),
            "debian_version": debian_version,
            "cloud_release": read_key_values(tree, self.knowledge["cloud_release"]),
            "layout": "debian-cloud" if self._cloud_layout(image) else None,
            "root": {"partition": root.volume.number, "fstype": root.volume.fstype, "subdir": root.subdir},
            "fstab": [{"source": r.source, "target": r.target, "fstype": r.fstype, "options": r.options} for r in view.fstab],
            "fstab_unresolved": view.unresolved,
            "dpkg": self._dpkg(tree),
            "kernels": self._kernels(tree),
            "everything_persistent": all(p.state == "persistent" for p in findings.paths if p.path in persistent_paths),
            "skipped_mount_units": view.skipped_units,
            "gpt_auto": view.gpt_auto_report(),
        }

    # ------------------------------------------------------------------------------- pieces
    def _dpkg(self, tree) -> dict | None:
        """Installed packages in the dpkg status database (stanzas whose Status ends in ``installed``)."""
        path = self.knowledge["dpkg_status"]
        try:
            if not tree.exists(path):
                return None
            text = tree.read_text(path, max_bytes=_MAX_STATUS_BYTES)
        except ImmutoolsError:
            return None
        installed = []
        for stanza in re.split(r"\n\s*\n", text):
            name = re.search(r"^Package:\s*(\S+)", stanza, re.M)
            status = re.search(r"^Status:\s*(.+)$", stanza, re.M)
            if name and status and status.group(1).split()[-1] == "installed":
                installed.append(name.group(1))
        return {"installed": len(installed), "packages": sorted(installed)[:2000],
                "evidence": [tree.evidence(path, "dpkg status database")]}

    @staticmethod
    def _kernels(tree) -> list[str]:
        try:
            return sorted(n[len("vmlinuz-"):] for n in tree.listdir("/boot") if n.startswith("vmlinuz-"))
        except ImmutoolsError:
            return []

    def _sources(self, tree) -> list[dict]:
        """apt sources: one-line ``deb [opts] URI suite components`` and deb822 ``.sources`` stanzas."""
        out: list[dict] = []
        files: list[str] = []
        for path in self.knowledge["apt"]["sources"]:
            try:
                if not tree.exists(path):
                    continue
                if tree.stat(path).is_dir:
                    files += [f"{path}/{n}" for n in sorted(tree.listdir(path)) if n.endswith((".list", ".sources"))]
                else:
                    files.append(path)
            except ImmutoolsError:
                continue
        for path in files[:_MAX_SOURCE_FILES]:
            try:
                text = tree.read_text(path, max_bytes=256 * 1024)
            except ImmutoolsError:
                continue
            if path.endswith(".sources"):
                for stanza in re.split(r"\n\s*\n", text):
                    fields = {}
                    for line in stanza.splitlines():
                        if line.startswith("#") or ":" not in line:
                            continue
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                    if "deb" in fields.get("types", "").split() and fields.get("uris"):
                        for uri in fields["uris"].split():
                            out.append({"uri": uri, "suites": fields.get("suites", "").split(),
                                        "components": fields.get("components", "").split(), "file": path})
            else:
                for line in text.splitlines():
                    words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                    if len(words) >= 3 and words[0] == "deb":
                        out.append({"uri": words[1], "suites": [words[2]], "components": words[3:], "file": path})
        return out

    def _apt(self, tree, units) -> dict:
        apt = self.knowledge["apt"]
        ev: list[dict] = []
        sources = self._sources(tree)
        server = None
        for src in sources:
            uri = src["uri"]
            if uri.startswith("mirror+file:"):
                # apt's mirror method: the file lists the mirrors, first one first
                listed = read_text(tree, "/" + uri[len("mirror+file:"):].lstrip("/"))
                uri = (listed or "").split()[0] if listed else uri
            server = server or uri
            ev.append(tree.evidence(src["file"], f"apt source {src['uri']} {' '.join(src['suites'])}"))
        suites = [s for src in sources for s in src["suites"]]
        channel = suites[0] if suites else None
        unattended = None
        try:
            names = sorted(tree.listdir(apt["periodic_dir"])) if tree.exists(apt["periodic_dir"]) else []
        except ImmutoolsError:
            names = []
        for name in names:
            path = f"{apt['periodic_dir']}/{name}"
            text = read_text(tree, path) or ""
            m = re.search(re.escape(apt["unattended_key"]) + r'\s+"(\d+)"', text)
            if m:
                unattended = m.group(1) != "0"
                ev.append(tree.evidence(path, f'{apt["unattended_key"]} "{m.group(1)}"'))
        installed = tree.exists(apt["agent_binary"])
        timer = units.enablement(apt["timer"]).enabled if units.find(apt["timer"]) else False
        agent = apt["agent"] if installed and unattended else "apt"
        return {"agent": agent, "channel": channel, "server": server, "suites": suites, "sources": sources,
                "unattended_upgrades": {"installed": installed, "enabled": bool(unattended), "timer_enabled": timer},
                "evidence": ev}
