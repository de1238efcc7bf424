"""Which Talos release an image is, and what a release implies.

Talos has no version file before 1.10 (``/etc/os-release`` is an empty placeholder machined fills
at boot), so the release comes from several places, each kept as a candidate with its evidence:
os-release, the booted GRUB entry's title, the UKI's file name and ``.osrel`` section, and the tag
machined embeds. Version-dependent facts (``eras`` and the ``from``/``until`` bounds in
``data/distributions/talos.yaml``) compare releases as (major, minor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from immutools.report.model import evidence

# Which candidate wins: os-release where filled, then the entry that boots (the UKI on UEFI
# disks, else GRUB), machined's embedded tag as the last resort.
_ORDER_UKI = ("os-release", "uki-osrel", "uki-name", "grub-entry", "machined-strings")
_ORDER_GRUB = ("os-release", "grub-entry", "uki-name", "uki-osrel", "machined-strings")
# The sources that name the booted release (a GRUB entry that does not boot does not count).
_BOOTED_SOURCES = ("os-release", "grub-entry", "uki-name", "uki-osrel")


def version_key(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of ``v1.9.5``; None when it is not a Talos tag."""
    m = re.match(r"^v?(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def in_era(entry: dict, version: tuple[int, int] | None) -> bool:
    """Whether ``entry``'s ``from``/``until`` bounds cover ``version`` (an unknown release is in every era)."""
    if version is None:
        return True
    lo = version_key(str(entry.get("from", "0.0")))
    hi = version_key(str(entry.get("until", "999.999")))
    return lo <= version <= hi


def era_value(rules: list[dict], version: tuple[int, int] | None, default=None):
    """The ``value`` of the first ``{from, until, value}`` rule covering ``version``."""
    if version is None:
        return default
    for rule in rules:
        if in_era(rule, version):
            return rule["value"]
    return default


@dataclass
class Version:
    """The release, where it came from, and every source that named one."""

    value: str | None = None
    source: str | None = None
    evidence: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int] | None:
        return version_key(self.value)

    def disagreement(self) -> list[str]:
        """The different versions the booted entry's sources name (one is expected)."""
        if self.value is None:
            return []
        named = {c["value"] for c in self.candidates if c["source"] in _BOOTED_SOURCES and c.get("active", True)}
        return sorted(named) if len(named) > 1 else []


def version_candidates(knowledge: dict, boot, system) -> list[dict]:
    """Every source that names a release: (source, value, evidence[, active])."""
    cands: list[dict] = []
    os_release = system.os_release
    if os_release and os_release.get("VERSION_ID"):
        cands.append({"source": "os-release", "value": os_release["VERSION_ID"], "evidence": system.os_release_evidence})
    active = boot.active
    if active.grub_entry is not None:
        m = re.match(knowledge["boot"]["entry_title"], active.grub_entry.title)
        if m:
            cands.append({"source": "grub-entry", "value": m.group("version"),
                          "evidence": evidence(boot.grub.evidence["source"], f"default menu entry {active.grub_entry.title!r}"),
                          "active": active.path == "grub"})
    if active.uki is not None:
        uki = active.uki
        cands.append({"source": "uki-name", "value": uki["version"],
                      "evidence": evidence(uki["path"], "UKI file name Talos-<version>.efi")})
        if uki["osrel_version"]:
            cands.append({"source": "uki-osrel", "value": uki["osrel_version"],
                          "evidence": evidence(f"{uki['path']} .osrel", "VERSION_ID")})
    tags = system.machined.get("tags") or []
    known = {c["value"] for c in cands}
    if len(tags) == 1 or known & set(tags):
        value = tags[0] if len(tags) == 1 else sorted(known & set(tags))[0]
        cands.append({"source": "machined-strings", "value": value,
                      "evidence": evidence(system.machined["evidence"]["source"], f"version string {value} embedded in machined")})
    return cands


def choose_version(knowledge: dict, boot, system) -> Version:
    cands = version_candidates(knowledge, boot, system)
    order = _ORDER_UKI if boot.active.path == "uki" else _ORDER_GRUB
    for source in order:
        chosen = next((c for c in cands if c["source"] == source), None)
        if chosen is not None:
            detail = f"{chosen['evidence'].get('detail', '')}: Talos version {chosen['value']} (from {source})".lstrip(": ")
            return Version(chosen["value"], source, [dict(chosen["evidence"], detail=detail)], [dict(c) for c in cands])
    return Version(candidates=cands)


def architecture(boot, system) -> tuple[str | None, dict | None]:
    """machined's ELF machine, else the booted UKI's PE machine."""
    machined = system.machined
    if machined.get("arch"):
        return machined["arch"], evidence(machined["evidence"]["source"], "ELF header e_machine of machined")
    uki = boot.active.uki
    if uki is not None and uki["arch"]:
        return uki["arch"], evidence(uki["path"], "PE machine of the UKI")
    return None, None
