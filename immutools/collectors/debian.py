"""Debian (and Debian-like, apt-managed) systems: the mutable baseline of the comparison.

One read-write root filesystem holds /usr, /etc, /var and /home; updates are in-place ``apt``/``dpkg``
transactions (optionally unattended-upgrades) with no atomic switch and no rollback. Facts come
from ``data/distributions/debian.yaml`` (citing shared/reference/ostree-and-others.md §8); the mount
table, paths and surface come from the shared view of a conventional system
(``immutools.collectors.generic.compose_system``).
"""

from __future__ import annotations

import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.collectors.generic import (
    arch_from_tree, compose_system, detect_arch, find_root, os_section_from, package_manager_update, system_paths,
)
from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence

_MAX_STATUS_BYTES = 64 * 1024 * 1024
_MAX_SOURCE_FILES = 64


class DebianCollector(Collector):
    name = "debian"

    def __init__(self):
        self.k = load_distribution("debian")

    def _is_debian(self, parsed: dict) -> bool:
        ident = parsed.get("ID", "")
        like = parsed.get("ID_LIKE", "").split()
        return ident in self.k["os_release_ids"] or ("debian" in like and ident != "ubuntu-core")

    def _cloud_layout(self, image: DiskImage) -> bool:
        lay = self.k["cloud_layout"]
        for role in ("esp", "root"):
            vol = image.volume(number=lay[role]["number"])
            if vol is None or vol.partition is None or vol.partition.type_guid != lay[role]["type"]:
                return False
        return True

    def detect(self, image: DiskImage) -> Detection:
        found = find_root(image)
        if found is None:
            return Detection(self.name, 0.0)
        vol, sub, path, parsed = found
        if not self._is_debian(parsed):
            return Detection(self.name, 0.0)
        fs = image.filesystem(vol)
        hits, ev = ["os_release_id"], [evidence(f"{vol.describe()}: {path}", f"os-release ID={parsed.get('ID')}")]
        for key, rel in (("dpkg_status", self.k["dpkg_status"]), ("debian_version", "/etc/debian_version")):
            full = sub.rstrip("/") + rel
            try:
                if fs.exists(full):
                    hits.append(key)
                    ev.append(evidence(f"{vol.describe()}: {full}", f"{rel} present"))
            except ImmutoolsError:
                continue
        if self._cloud_layout(image):
            hits.append("cloud_layout")
            ev.append(evidence("GPT entries 14, 15, 1", "Debian cloud image layout (BIOS boot 14, ESP 15, root 1)"))
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev, {"root": found})

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.surface import inventory

        vol, sub, path, parsed = detection.facts.get("root") or find_root(image)
        os_section = os_section_from(parsed, evidence(f"{vol.describe()}: {path}", "os-release ID/NAME/VERSION_ID"))
        view = compose_system(image, vol, sub)
        tree = view.tree
        arch, arch_ev = detect_arch(image, [])
        if arch is None:
            arch, arch_ev = arch_from_tree(tree)
        os_section["arch"] = arch
        if arch_ev:
            os_section["evidence"].append(arch_ev)
        surface = inventory(tree, None, view.units).to_report()
        update = package_manager_update(surface)
        apt = self._apt(tree, view.units)
        update.update(agent=apt["agent"], channel=apt["channel"], server=apt["server"],
                      rollback="none: apt/dpkg change files in place; there is no previous version to boot")
        update["evidence"] = update["evidence"] + apt["evidence"]
        update["apt"] = {k: v for k, v in apt.items() if k != "evidence"}
        paths = system_paths(view)
        debian_version = self._text(tree, "/etc/debian_version")
        distribution = {
            "name": "debian" if parsed.get("ID") == "debian" else parsed.get("ID"),
            "debian_version": debian_version,
            "cloud_release": self._key_values(tree, self.k["cloud_release"]),
            "layout": "debian-cloud" if self._cloud_layout(image) else None,
            "root": {"partition": vol.number, "fstype": vol.fstype, "subdir": sub},
            "fstab": [{"source": r.source, "target": r.target, "fstype": r.fstype, "options": r.options} for r in view.fstab],
            "fstab_unresolved": view.unresolved,
            "dpkg": self._dpkg(tree),
            "kernels": self._kernels(tree),
            "everything_persistent": all(p["state"] == "persistent" for p in paths
                                         if p["path"] in ("/", "/etc", "/usr", "/var", "/home", "/opt", "/root", "/srv")),
            "skipped_mount_units": view.skipped_units,
        }
        return {
            "os": os_section,
            "mounts": view.table.to_report(),
            "paths": paths,
            "update": update,
            "integrity": {"verity": False, "root_hash": None, "hash_location": None, "verified": None, "evidence": []},
            "surface": surface,
            "distribution": distribution,
        }

    # ------------------------------------------------------------------------------- pieces
    @staticmethod
    def _text(tree, path: str) -> str | None:
        try:
            return tree.read_text(path, max_bytes=4096).strip() if tree.exists(path) else None
        except ImmutoolsError:
            return None

    @staticmethod
    def _key_values(tree, path: str) -> dict | None:
        from immutools.collectors.common import read_key_values

        return read_key_values(tree, path)

    def _dpkg(self, tree) -> dict | None:
        """Installed packages in the dpkg status database (stanzas whose Status ends in ``installed``)."""
        path = self.k["dpkg_status"]
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
        for path in self.k["apt"]["sources"]:
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
        apt = self.k["apt"]
        ev: list[dict] = []
        sources = self._sources(tree)
        server = None
        for src in sources:
            uri = src["uri"]
            if uri.startswith("mirror+file:"):
                # apt's mirror method: the file lists the mirrors, first one first
                listed = self._text(tree, "/" + uri[len("mirror+file:"):].lstrip("/"))
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
            text = self._text(tree, path) or ""
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
