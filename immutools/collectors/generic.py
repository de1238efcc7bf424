"""Fallback for any Linux image: the OS identity from the first os-release found, and the
architecture from a binary's ELF header or an architecture-specific partition type."""

from __future__ import annotations

from immutools.collectors.base import Collector, Detection
from immutools.disk import DiskImage
from immutools.elf import elf_arch
from immutools.errors import ImmutoolsError
from immutools.osrelease import OS_RELEASE_PATHS, parse_os_release
from immutools.report.model import evidence
from immutools.volumes.types import lookup_type_entry

# DPS architecture names (as in data/partition_types.yaml) -> the report's arch vocabulary.
_DPS_ARCH = {"x86-64": "x86_64", "arm64": "aarch64", "x86": "i386", "arm": "arm", "riscv64": "riscv64",
             "ppc64": "ppc64", "ppc64-le": "ppc64", "s390x": "s390x"}

# Binaries whose ELF header tells the architecture; relative to a root fs or a /usr fs.
_ARCH_PROBES = ("/usr/bin/env", "/bin/sh", "/usr/bin/bash", "/bin/env", "/sbin/init", "/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/init")


def find_os_release(image: DiskImage):
    """Yield (volume, path, parsed) for every os-release file found, in partition order."""
    for vol, fs in image.filesystems():
        for path in OS_RELEASE_PATHS:
            try:
                if not fs.exists(path):
                    continue
                text = fs.read_text(path, max_bytes=64 * 1024)
            except ImmutoolsError as exc:
                image.warn(f"{vol.describe()}: {path}: unreadable: {exc}")
                continue
            parsed = parse_os_release(text)
            if parsed:
                yield vol, path, parsed
                break


def detect_arch(image: DiskImage, volumes=None) -> tuple[str | None, dict | None]:
    """Architecture from partition types first (DPS types are per-arch), then ELF headers."""
    for vol in image.volumes:
        part = vol.partition
        entry = lookup_type_entry(part.type_guid) if part and part.type_guid else None
        arch = _DPS_ARCH.get(entry.arch) if entry is not None and entry.arch else None
        if arch:
            return arch, evidence(f"{vol.describe()}: partition type {part.type_guid}", f"architecture-specific type {part.type_name}")
    for vol, fs in image.filesystems():
        if volumes is not None and vol not in volumes:
            continue
        for path in _ARCH_PROBES:
            try:
                if fs.exists(path) and fs.stat(path).is_file:
                    arch = elf_arch(fs.read(path, 0, 64))
                    if arch:
                        return arch, evidence(f"{vol.describe()}: {path}", "ELF header e_machine")
            except ImmutoolsError:
                continue
    return None, None


class GenericLinuxCollector(Collector):
    name = "generic"

    def detect(self, image: DiskImage) -> Detection:
        found = next(find_os_release(image), None)
        if found is None:
            return Detection(self.name, 0.0)
        vol, path, parsed = found
        return Detection(
            self.name,
            0.1,
            [evidence(f"{vol.describe()}: {path}", "os-release found; no specific collector matched")],
            {"os_release": (vol, path, parsed)},
        )

    def collect(self, image: DiskImage, detection: Detection) -> dict:
        os_section = {"id": None, "name": None, "version": None, "variant": None, "arch": None, "evidence": []}
        found = detection.facts.get("os_release")
        volumes = None
        if found:
            vol, path, parsed = found
            os_section.update(
                id=parsed.get("ID"),
                name=parsed.get("NAME") or parsed.get("PRETTY_NAME"),
                version=parsed.get("VERSION_ID") or parsed.get("VERSION"),
                variant=parsed.get("VARIANT_ID"),
                pretty_name=parsed.get("PRETTY_NAME"),
                build_id=parsed.get("BUILD_ID"),
            )
            os_section["evidence"].append(evidence(f"{vol.describe()}: {path}", "os-release ID/NAME/VERSION_ID"))
            volumes = [vol]
        arch, arch_ev = detect_arch(image, volumes)
        if arch is None and volumes is not None:
            arch, arch_ev = detect_arch(image)
        os_section["arch"] = arch
        if arch_ev:
            os_section["evidence"].append(arch_ev)
        return {"os": os_section}
