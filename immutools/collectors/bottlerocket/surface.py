"""Bottlerocket's additions to the shared surface inventory: the lockdown mode corndog sets at boot
(and what it means for kernel modules), the settings API, and host containers (the only way in:
no shell, no sshd on the host)."""

from __future__ import annotations

from immutools.errors import ImmutoolsError
from immutools.report.model import evidence

from .mounts import System
from .private import Lockdown


def _present(system: System, path: str) -> bool:
    try:
        return system.tree.exists(path)
    except ImmutoolsError:
        return False


def _lockdown(knowledge: dict, surface: dict, lockdown: Lockdown) -> None:
    conf = knowledge["lockdown"]
    details = dict(surface.get("lockdown_details") or {})
    details.update(kernel_config_mode=surface.get("lockdown"), mode=lockdown.mode, observed=lockdown.observed,
                   decided_by=conf["decided_by"],
                   evidence=list(details.get("evidence") or []) + lockdown.evidence)
    surface["lockdown"] = lockdown.mode
    surface["lockdown_details"] = details
    modules = dict(surface.get("kernel_modules") or {})
    if lockdown.mode in conf["refuses_unsigned_modules"]:
        modules.update(signature_enforced=True, reason=f"lockdown={lockdown.mode} (set at boot) refuses unsigned modules")
    surface["kernel_modules"] = modules
    surface["evidence"] = list(surface.get("evidence") or []) + [
        e for e in lockdown.evidence if e not in surface.get("evidence", [])]


def _api(knowledge: dict, system: System) -> dict:
    api = knowledge["surface"]["api"]
    row = {"server": api["server"] if _present(system, api["server"]) else None,
           "client": api["client"] if _present(system, api["client"]) else None,
           "socket": api["socket"], "evidence": []}
    for path, what in ((api["server"], "settings API"), (api["client"], "API client")):
        if _present(system, path):
            row["evidence"].append(system.tree.evidence(path, what))
    found = system.units.find(api["unit"])
    if found is not None:
        row["evidence"].append(system.tree.evidence(found.path, api["unit"], follow=False))
    return row


def _host_containers(knowledge: dict, system: System) -> dict:
    ks = knowledge["surface"]
    binary = ks["host_container_binary"]
    row = {"unit": None, "binary": binary if _present(system, binary) else None,
           "containers": {name: dict(c) for name, c in ks["host_containers"].items()},
           "evidence": [evidence(ks["host_containers_source"],
                                 "admin (sshd, superpowered, disabled by default) and control (enabled on AWS variants)",
                                 False)]}
    found = system.units.find(ks["host_container_unit"])
    if found is not None:
        row["unit"] = ks["host_container_unit"]
        row["evidence"].append(system.tree.evidence(found.path, "host container unit", follow=False))
    return row


def extend_surface(knowledge: dict, surface: dict, system: System, lockdown: Lockdown) -> None:
    """Add Bottlerocket's rows to the inventory ``finish`` made of the OS tree."""
    _lockdown(knowledge, surface, lockdown)
    surface["api"] = _api(knowledge, system)
    surface["host_containers"] = _host_containers(knowledge, system)
    via = " or ".join(name for name, c in knowledge["surface"]["host_containers"].items() if c["ssh"])
    surface["ssh_access"] = "sshd on the host" if surface.get("sshd") else f"{via} host container only (no sshd on the host)"
