"""What Talos adds to the shared surface inventory: its init (the initramfs ``/init``, then
machined as PID 1), its own SELinux rules (``selinux=1`` enables, ``enforcing=1`` enforces; the
policy is in the init binary, ``/etc/selinux`` is not read), module-signature enforcement and
lockdown as the release's kernel configuration sets them, machined's roles and the API ports.
Sources: ``data/distributions/talos.yaml`` (``surface``, ``kernel``, ``eras``).
"""

from __future__ import annotations

import posixpath

from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.rootview import OsTree
from immutools.system.surface import DEFAULT_PATH

from .facts import TalosFacts
from .versions import era_value


def executables(tree: OsTree, path_dirs=DEFAULT_PATH) -> list[str]:
    """The executable names on ``path_dirs`` (a shell's PATH), symlinks followed."""
    names: set[str] = set()
    seen_dirs: set[str] = set()
    for d in path_dirs:
        try:
            if not tree.exists(d) or not tree.stat(d).is_dir:
                continue
            real = tree.realpath(d)
            if real in seen_dirs:
                continue
            seen_dirs.add(real)
            for name, st in tree.scandir(d):
                if st.is_symlink:
                    try:
                        st = tree.stat(f"{d}/{name}")
                    except ImmutoolsError:
                        continue
                if st.is_file and st.perm & 0o111:
                    names.add(name)
        except ImmutoolsError:
            continue
    return sorted(names)


def role_present(tree: OsTree, role: str, machined: dict) -> bool:
    """Whether machined answers to ``role`` (argv[0]): the init roles, or a link to it beside it."""
    if not machined:
        return False
    d = posixpath.dirname(machined["path"])
    try:
        return role in ("init", "machined") or (tree.exists(f"{d}/{role}")
                                                and tree.realpath(f"{d}/{role}") == tree.realpath(machined["path"]))
    except ImmutoolsError:
        return False


def _init(surface: dict, knowledge: dict, facts: TalosFacts) -> None:
    """The kernel runs the initramfs /init, which execs machined after switch_root."""
    machined = facts.system.machined
    if not machined:
        return
    ks = knowledge["surface"]
    init_ev = [evidence(f"{facts.initramfs.where}: {knowledge['initramfs']['init']}",
                        "the kernel's init: mounts the rootfs and switch_roots"),
               machined["evidence"],
               evidence(ks["source"], "PID 1 is machined; no systemd, no shell", False)]
    generic = surface.get("init_details")
    surface["init"] = ks["init"]
    surface["init_details"] = {"name": ks["init"], "path": machined["path"], "target": machined["path"],
                               "decided_by": "Talos: initramfs /init execs machined after switch_root "
                                             f"({knowledge['initramfs']['root_mount']['source']})",
                               "evidence": init_ev, "generic": generic}
    surface["evidence"] += [e for e in init_ev if e not in surface["evidence"]]


def _selinux(surface: dict, knowledge: dict, cmdline) -> None:
    trail = [evidence(knowledge["kernel"]["selinux_source"],
                      "selinux=1 enables SELinux, enforcing=1 makes it enforcing; default disabled", False)]
    if cmdline is not None and cmdline.get("selinux") == "1":
        mode = "enforcing" if cmdline.get("enforcing") == "1" else "permissive"
        trail.append(cmdline.evidence("selinux"))
        if cmdline.has("enforcing"):
            trail.append(cmdline.evidence("enforcing"))
    else:
        mode = "disabled"
        if cmdline is not None:
            trail.append(evidence(cmdline.origin, "no selinux=1: SELinux stays disabled"))
    generic_mode = surface.get("selinux")
    surface["selinux"] = mode
    surface["selinux_policy"] = dict(surface.get("selinux_policy") or {}, mode=mode, decided_by="Talos SELinux rules",
                                     generic_mode=generic_mode)
    surface["selinux_trail"] = trail


def _module_signatures(surface: dict, knowledge: dict, facts: TalosFacts) -> None:
    """module.sig_enforce on the command line, else the kernel configuration of the release."""
    modules = dict(surface.get("kernel_modules") or {})
    enforced = facts.cmdline.module_sig_enforce() if facts.cmdline is not None else None
    forced_by_config = era_value(knowledge["eras"]["module_sig_force_config"], facts.version_key, False)
    if enforced is None and forced_by_config:
        modules.update(signature_enforced=True, enforced_by="kernel-config",
                       reason="CONFIG_MODULE_SIG_FORCE=y in the Talos kernel of this release (not in the image)")
        surface["evidence"].append(evidence(knowledge["kernel"]["module_sig_source"], "CONFIG_MODULE_SIG_FORCE=y up to 1.11", False))
    elif enforced is not None:
        modules["enforced_by"] = "cmdline"
    surface["kernel_modules"] = modules


def _lockdown(surface: dict, knowledge: dict) -> None:
    """The lockdown LSM is built in but not forced: only the command line sets a mode."""
    if surface.get("lockdown"):
        return
    surface["lockdown"] = "none"
    surface["lockdown_details"] = {"mode": "none", "decided_by": "Talos kernel config (not in the image)",
                                   "evidence": [evidence(knowledge["kernel"]["lockdown_source"], "CONFIG_LOCK_DOWN_KERNEL_FORCE_NONE=y", False)]}


def extend_surface(surface: dict, knowledge: dict, facts: TalosFacts) -> list[str]:
    """Talos's rules over the shared inventory ``surface`` (changed in place); returns the
    executables on PATH (for the distribution section)."""
    tree, machined = facts.system.tree, facts.system.machined
    _init(surface, knowledge, facts)
    _selinux(surface, knowledge, facts.cmdline)
    _module_signatures(surface, knowledge, facts)
    _lockdown(surface, knowledge)
    surface["talos_roles"] = [r for r in knowledge["surface"]["roles"] if role_present(tree, r, machined)]
    surface["api_ports"] = dict(knowledge["surface"]["ports"])
    return executables(tree)
