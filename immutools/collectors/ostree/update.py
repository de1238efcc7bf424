"""How an ostree system updates: the agent (Zincati on Fedora CoreOS, rpm-ostreed elsewhere), its
configuration, the deployments as slots, and the packages rpm-ostree layers over the image
(https://github.com/coreos/zincati docs/usage/configuration.md; https://github.com/coreos/rpm-ostree
docs/administrator-handbook.md, src/daemon/rpm-ostreed.conf, rust/src/origin.rs).
"""

from __future__ import annotations

import tomllib

from immutools.errors import ImmutoolsError
from immutools.report.model import Update, UpdateSlot
from immutools.system.compose import read_keyfile
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet

from .sysroot import Sysroot


def zincati_config(knowledge: dict, tree: OsTree) -> tuple[dict, dict]:
    """Zincati's merged TOML configuration and, per dotted key, the file that set it: drop-ins
    merged by file name, a later directory overriding the same name."""
    by_name: dict[str, str] = {}
    for d in knowledge["zincati"]["config_dirs"]:
        try:
            names = tree.listdir(d)
        except ImmutoolsError:
            continue
        for name in names:
            if name.endswith(".toml"):
                by_name[name] = f"{d}/{name}"
    merged: dict = {}
    sources: dict[str, str] = {}

    def merge(dst, src, prefix, where):
        for key, value in src.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                merge(dst.setdefault(key, {}), value, dotted + ".", where)
            else:
                dst[key] = value
                sources[dotted] = where

    for name in sorted(by_name):
        path = by_name[name]
        try:
            data = tomllib.loads(tree.read_text(path, max_bytes=64 * 1024))
        except (ImmutoolsError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        merge(merged, data, "", path)
    return merged, sources


def layering(knowledge: dict, default: dict | None, surface: dict) -> dict:
    """The rpm packages rpm-ostree layers over the image, from the default deployment's origin."""
    lay = knowledge["layering"]
    origin = (default or {}).get("origin") or {}
    packages = origin.get("packages", {})

    def split(value):
        return [p for p in (value or "").split(";") if p.strip()]

    requested, local = split(packages.get("requested")), split(packages.get("requested-local"))
    managers = set(surface.get("package_managers") or [])
    return {
        "tool": lay["tool"],
        "package_manager": lay["package_manager"],
        "mode": "layered over the image",
        "layered_packages": requested + local,
        "layered_local_packages": local,
        "overrides_removed": split(origin.get("overrides", {}).get("remove")),
        "package_manager_present": lay["package_manager"] in managers,
        "tool_present": lay["tool"] in managers,
        "note": lay["note"],
        "evidence": [ev for ev in (default or {}).get("evidence", []) if "origin" in (ev.get("detail") or "")],
    }


def _remote_url(knowledge: dict, tree: OsTree, remote: str) -> str | None:
    for d in knowledge["remotes_dirs"]:
        try:
            names = tree.listdir(d)
        except ImmutoolsError:
            continue
        for name in sorted(names):
            group = (read_keyfile(tree, f"{d}/{name}") or {}).get(f'remote "{remote}"')
            if group and group.get("url"):
                return group["url"]
    return None


def _agent(knowledge: dict, tree: OsTree, units: UnitSet, evidence_out: list) -> tuple[str, dict, str | None]:
    """(agent, its configuration, its server) -- Zincati when its unit exists, else rpm-ostreed."""
    zk, rk = knowledge["zincati"], knowledge["rpm_ostreed"]
    conf = read_keyfile(tree, rk["config"]) or {}
    policy = conf.get("Daemon", {}).get("AutomaticUpdatePolicy")
    rpm_ostreed = {
        "automatic_update_policy": policy or rk["default_policy"],
        "policy_source": rk["config"] if policy else "default (rpm-ostreed.conf commented)",
        "timer_enabled": units.enablement(rk["timer"]).enabled if units.find(rk["timer"]) else False,
    }
    zunit = units.find(zk["unit"])
    if zunit is None:
        if tree.exists(rk["config"]):
            evidence_out.append(tree.evidence(rk["config"], f"AutomaticUpdatePolicy={rpm_ostreed['automatic_update_policy']}"))
        return "rpm-ostreed", {"agent": "rpm-ostreed", **rpm_ostreed}, None
    merged, sources = zincati_config(knowledge, tree)
    updates = merged.get("updates", {})
    config = {
        "agent": "zincati",
        "enabled": updates.get("enabled"),
        "strategy": updates.get("strategy"),
        "fleet_lock_url": (updates.get("fleet_lock") or {}).get("base_url"),
        "allow_downgrade": updates.get("allow_downgrade"),
        "group": (merged.get("identity") or {}).get("group"),
        "cincinnati": (merged.get("cincinnati") or {}).get("base_url"),
        "sources": sources,
        "unit_enabled": units.enablement(zk["unit"]).enabled,
        "rpm_ostreed": rpm_ostreed,
    }
    evidence_out.append(tree.evidence(zunit.path, "Zincati update agent unit", follow=False))
    for key in ("updates.strategy", "updates.enabled", "cincinnati.base_url"):
        if key in sources:
            evidence_out.append(tree.evidence(sources[key], f"{key} (last drop-in wins)"))
    return "zincati", config, config["cincinnati"] or zk["default_server"]


def update_section(knowledge: dict, sysroot: Sysroot, tree: OsTree, units: UnitSet, variant: dict) -> tuple[Update, dict]:
    """The update section and the agent's configuration."""
    ev: list[dict] = []
    agent, agent_conf, server = _agent(knowledge, tree, units, ev)
    default = sysroot.default
    origin = (default or {}).get("origin", {}).get("origin", {})
    refspec = origin.get("refspec") or origin.get("baserefspec")
    image_ref = origin.get("container-image-reference")
    channel = remote = None
    if refspec:
        remote, _, ref = refspec.rpartition(":")
        # Fedora CoreOS refs end in the stream name (fedora/x86_64/coreos/stable)
        channel = ref.rsplit("/", 1)[-1] if variant.get("channel_from_ref_tail") else ref
    elif image_ref:
        tail = image_ref.rsplit("/", 1)[-1]
        channel = tail.split(":", 1)[1] if ":" in tail else None
    if remote and server is None:
        server = _remote_url(knowledge, tree, remote)
    if image_ref and server is None and "docker://" in image_ref:
        server = image_ref.split("docker://", 1)[-1].split("/", 1)[0]
    if default:
        ev.append(next((e for e in default["evidence"] if "origin" in (e.get("detail") or "")), default["evidence"][0]))
    slots = [UpdateSlot(f"{d['index']}: {d['stateroot']} {d['checksum'][:12]}.{d['serial']}", [sysroot.volume.number],
                        d["version"], d["default"],
                        extra={"checksum": d["checksum"], "serial": d["serial"], "pinned": d["pinned"], "rollback": d["rollback"]})
             for d in sysroot.deployments]
    update = Update(mechanism="ostree-deployments", agent=agent, channel=channel, server=server, slots=slots,
                    rollback=knowledge["rollback"], evidence=ev,
                    extra={"refspec": refspec, "container_image_reference": image_ref,
                           "default_deployment": default["checksum"] if default else None,
                           "atomic": True, "staged_deployments": knowledge["staged_deployments"]})
    return update, agent_conf
