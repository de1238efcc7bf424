"""Hand-edited copies of a real scan report, for tests of the analysis layer.

Every variant starts from a saved scan of a Flatcar replica (``data/reports``) and changes named
facts the way another system would report them. They exercise the scoring, the sensitivity check
and the charts with several families; they are not claims about those systems.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "data" / "reports"
BASE_NAME = "flatcar-stable-4593-amd64-pristine"


def base_report(name: str = BASE_NAME) -> dict:
    return json.loads((REPORTS / f"{name}.json").read_text())


def renamed(report: dict, spec: str, os_id: str | None = None, version: str | None = None) -> dict:
    r = copy.deepcopy(report)
    prov = r["image"].get("provenance")
    if prov:
        prov["spec"] = spec
    r["image"]["path"] = f"{spec}.img"
    if os_id is not None:
        r["os"]["id"] = os_id
        r["os"]["name"] = os_id.capitalize()
    if version is not None:
        r["os"]["version"] = version
    return r


def set_path_state(r: dict, path: str, state: str) -> dict:
    row = next((p for p in r["paths"] if p["path"] == path), None)
    if row is None:
        row = {"path": path, "state": state, "via": path, "evidence": []}
        r["paths"].append(row)
    row["state"] = state
    return r


def add_package_manager(r: dict, name: str = "dnf") -> dict:
    r["surface"]["package_managers"].append(name)
    r["surface"].setdefault("package_manager_details", []).append(
        {"name": name, "path": f"/usr/bin/{name}",
         "evidence": [{"source": f"partition 3 (USR-A): /bin/{name}", "observed": True, "detail": "package manager binary"}]})
    return r


def drop_login(r: dict) -> dict:
    s = r["surface"]
    s["shells"], s["shell_details"] = [], []
    s["sshd"], s["sshd_binaries"], s["sshd_units"] = False, [], []
    s["setuid"], s["setuid_details"] = [], []
    return r


def variants() -> dict[str, dict]:
    """Synthetic reports of four families, from most to least mutable by construction."""
    base = base_report()

    ostree = renamed(base, "synthetic-ostree", "fedora", "41")
    ostree["update"]["mechanism"] = "ostree-deployments"
    ostree["update"]["rollback"] = "manual: rpm-ostree rollback"
    ostree["integrity"]["verity"] = False
    for m in ostree["mounts"]:
        if m.get("integrity") == "dm-verity":
            m["integrity"] = "none"
    add_package_manager(ostree, "rpm-ostree")
    ostree["distribution"] = {"name": "synthetic", "layered_packages": ["htop"]}
    ostree["mounts"] = [m for m in ostree["mounts"] if m["target"] != "/etc"]
    ostree["surface"]["selinux"] = "enforcing"

    flatcar = copy.deepcopy(base)

    bottle = renamed(base, "synthetic-bottlerocket", "bottlerocket", "1.20.0")
    drop_login(bottle)
    for path in ("/", "/boot"):
        set_path_state(bottle, path, "read-only")
    set_path_state(bottle, "/etc", "volatile")
    bottle["surface"]["selinux"] = "enforcing"
    bottle["surface"]["kernel_modules"]["signature_enforced"] = True
    bottle["distribution"] = {"name": "synthetic"}
    bottle["mounts"] = [m for m in bottle["mounts"] if m["target"] != "/etc"]

    talos = renamed(base, "synthetic-talos", "talos", "1.9.0")
    drop_login(talos)
    for path in ("/", "/boot", "/etc", "/opt", "/home", "/root", "/srv", "/mnt"):
        set_path_state(talos, path, "read-only")
    talos["surface"]["selinux"] = "enforcing"
    talos["surface"]["kernel_modules"]["loadable"] = False
    talos["distribution"] = {"name": "synthetic", "management": "api"}
    talos["mounts"] = [m for m in talos["mounts"] if m["target"] != "/etc"]
    for m in talos["mounts"]:
        if m["target"] == "/usr":
            m["target"] = "/"
    return {"synthetic-ostree": ostree, "flatcar": flatcar, "synthetic-bottlerocket": bottle, "synthetic-talos": talos}
