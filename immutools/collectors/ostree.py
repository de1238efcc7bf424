"""ostree / rpm-ostree systems: Fedora CoreOS, Fedora Atomic desktops (Silverblue, Kinoite, ...).

The physical root holds a repository (``/ostree/repo``) and deployments
(``/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>``), each a checkout of a commit; boot
loader entries (``/boot/loader/entries/ostree-<n>[-<stateroot>].conf``) name them through the
``ostree=`` kernel argument, and the highest-numbered entry is the default. At boot,
ostree-prepare-root makes the default deployment ``/``, bind-mounts its ``/usr`` read-only, its
``/etc`` (kept across updates by a 3-way merge) and the stateroot's ``/var`` writable, and leaves
the physical root at ``/sysroot`` (read-only when the repository says ``sysroot.readonly``).
rpm-ostree layers rpm packages over the image by composing a new deployment; the ``.origin`` file
lists them.

Facts come from ``data/distributions/ostree.yaml`` (which cites shared/reference/ostree-and-others.md).
What the image shows is read (entries, symlinks, origin files, repo config, os-release, units,
Zincati/rpm-ostreed configuration); what ostree-prepare-root does in code (the bind mounts, the
read-only remount) is added from the documented behaviour, marked ``observed: false``.
"""

from __future__ import annotations

import posixpath
import re

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import (
    mount_fs, read_key_values, read_keyfile, resolve_lenient, add_enabled_mount_units, weighted_confidence,
)
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.report.model import evidence

_DEPLOY_NAME = re.compile(r"^(?P<csum>[0-9a-f]{64})\.(?P<serial>\d+)$")
_OSTREE_KARG = re.compile(r"^/ostree/boot\.(?P<bootversion>[01])/(?P<stateroot>[^/]+)/(?P<bootcsum>[0-9a-f]{64})/(?P<serial>\d+)$")
_MAX_DEPLOYMENTS = 256
_MAX_ENTRIES = 256


def _truthy(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


class OstreeCollector(Collector):
    name = "ostree"

    def __init__(self):
        self.k = load_distribution("ostree")
        self._entry_re = re.compile(self.k["sysroot"]["entry_pattern"])

    # ------------------------------------------------------------------------------- detect
    def _physical_roots(self, image: DiskImage):
        """Yield (volume, filesystem, subdir) for every filesystem holding /ostree/deploy."""
        conf = self.k["physical_root"]
        deploy = self.k["sysroot"]["deploy_dir"]
        for vol in image.volumes:
            if vol.fstype not in conf["fstypes"]:
                continue
            fs = image.filesystem(vol)
            if fs is None:
                continue
            candidates = ["/"]
            if vol.fstype == "btrfs":
                candidates += ["/" + d for d in conf["btrfs_subdirs"]]
            for sub in candidates:
                try:
                    if fs.stat(posixpath.join(sub, deploy.lstrip("/"))).is_dir:
                        yield vol, fs, sub
                        break
                except ImmutoolsError:
                    continue

    def _boot_volume(self, image: DiskImage, phys: Volume) -> Volume | None:
        """A separate /boot: a filesystem whose root has ``loader`` and ``ostree`` (§3.1)."""
        for vol in image.volumes:
            if vol is phys or vol.fstype not in ("ext4", "ext3", "ext2", "xfs", "vfat", "btrfs"):
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
        repo_conf = posixpath.join(sub, self.k["sysroot"]["repo_config"].lstrip("/"))
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
        if any(self._entry_re.match(n) for n in names):
            hits.append("boot_entries")
            ev.append(evidence(f"{(boot or vol).describe()}: {posixpath.join(boot_base, 'loader/entries')}", "ostree boot loader entries"))
        labels = {v.label for v in image.volumes}
        if set(self.k["variants"]["coreos"]["partition_names"]) <= labels:
            hits.append("fcos_partition_names")
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev,
                         {"physical": (vol, sub), "boot": boot})

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.mounts import MountEntry, MountTable, path_rows
        from immutools.system.rootview import OsTree
        from immutools.system.units import UnitSet

        k = self.k
        phys_vol, sub = detection.facts.get("physical") or (None, "/")
        if phys_vol is None:
            return {}
        phys_fs = image.filesystem(phys_vol)
        phys = OsTree(image.limits)
        phys.mount("/", phys_fs, subdir=sub, volume=phys_vol)
        boot_vol = detection.facts.get("boot")
        boot_fs = image.filesystem(boot_vol) if boot_vol is not None else None
        if boot_fs is not None:
            boot_tree = OsTree(image.limits)
            boot_tree.mount("/", boot_fs, volume=boot_vol)
            boot_base = "/"
        else:
            boot_tree, boot_base = phys, "/boot"

        repo_conf = read_keyfile(phys, k["sysroot"]["repo_config"]) or {}
        sysroot_conf = repo_conf.get("sysroot", {})
        readonly = _truthy(sysroot_conf.get("readonly"))

        entries, loader_info = self._entries(boot_tree, boot_base, boot_vol or phys_vol, image)
        deployments = self._deployments(image, phys, phys_vol, entries)
        default = next((d for d in deployments if d["default"]), None)
        rollback = next((d for d in deployments if d["rollback"]), None)

        # --- the running system: the default deployment at / --------------------------------------
        tree = OsTree(image.limits)
        dep_path = default["path"] if default else None
        if dep_path:
            mount_fs(tree, "/", image, phys_vol, subdir=posixpath.join(sub, dep_path.lstrip("/")))
        mount_fs(tree, "/sysroot", image, phys_vol, subdir=sub)
        stateroot = default["stateroot"] if default else None
        var_dir = f"/ostree/deploy/{stateroot}/var" if stateroot else None
        os_release, os_ev = self._os_release(tree) if dep_path else (None, None)
        composefs = self._composefs(tree, phys, dep_path) if dep_path else {}
        if readonly is None:
            readonly = composefs.get("prepare_root_sysroot_readonly")
        variant_id = (os_release or {}).get("VARIANT_ID")
        variant = k["variants"].get(variant_id or "", {})
        fstab_rows = self._fstab(tree)
        # systemd canonicalises mount points through symlinks (/home -> /var/home on ostree) and
        # mounts parents first
        canonical = {id(row): resolve_lenient(tree, row.target) for row in fstab_rows}
        fstab_rows.sort(key=lambda row: (canonical[id(row)].count("/"), canonical[id(row)]))
        fstab_targets = set(canonical.values())
        if var_dir and "/var" not in fstab_targets and phys.exists(var_dir):
            mount_fs(tree, "/var", image, phys_vol, subdir=posixpath.join(sub, var_dir.lstrip("/")))
        if boot_fs is not None:
            mount_fs(tree, "/boot", image, boot_vol)
        elif phys.exists("/boot"):
            mount_fs(tree, "/boot", image, phys_vol, subdir=posixpath.join(sub, "boot"))
        from immutools.system.mounts import resolve_source_match

        cmdline = default["cmdline"] if default else None
        for row in fstab_rows:
            if row.target in ("/", "none") or row.fstype == "swap":
                continue
            match = resolve_source_match(row.source, image, cmdline)
            if match is None:
                continue
            subvol = row.option_value("subvol")
            subdir = "/" + subvol.strip("/") if subvol else "/"
            mount_fs(tree, canonical[id(row)], image, match.volume, subdir=subdir)
        units = UnitSet(tree)

        # --- mounts, in mount order (§3.3) ---------------------------------------------------------
        table = MountTable()
        ref = k["sysroot"]["source_ref"]
        if phys_vol.identity.label:
            phys_src = f"LABEL={phys_vol.identity.label}"
        elif phys_vol.partition is not None and phys_vol.partition.uuid:
            phys_src = f"PARTUUID={phys_vol.partition.uuid}"
        else:
            phys_src = phys_vol.describe()
        phys_opts = [f"subvol={sub.strip('/')}"] if sub != "/" else []
        repo_ev = phys.evidence(k["sysroot"]["repo_config"], f"[sysroot] readonly={sysroot_conf.get('readonly')}") if "readonly" in sysroot_conf else None
        table.add(MountEntry("/sysroot", phys_src, phys_vol.fstype, ["rw"] + phys_opts, observed=False, volume=phys_vol,
                             evidence=[evidence(f"{phys_vol.describe()}", "physical root (holds /ostree)"),
                                       evidence(ref, "mounted by the initrd at /sysroot", False)]))
        if dep_path:
            root_ev = [evidence(f"{phys_vol.describe()}: {dep_path}", "default deployment (highest-numbered boot entry)"),
                       evidence(ref, "ostree-prepare-root: the deployment becomes /; ostree sets the immutable flag on its top directory", False)]
            if composefs.get("active"):
                table.add(MountEntry("/", "composefs", "overlay", ["ro"], access="ro", persistence="image",
                                     integrity="composefs" + ("+fs-verity" if composefs.get("verity") else ""),
                                     observed=False, kind="overlay", evidence=root_ev + composefs["evidence"]))
            else:
                table.add(MountEntry("/", f"/sysroot{dep_path}", phys_vol.fstype, ["bind"], access="ro", kind="bind",
                                     persistence="persistent", observed=False, evidence=root_ev + composefs.get("evidence", [])))
            table.add(MountEntry("/usr", f"/sysroot{dep_path}/usr", phys_vol.fstype, ["bind", "ro"], observed=False,
                                 evidence=[evidence(ref, "read-only bind mount of the deployment's /usr", False)]))
            table.add(MountEntry("/etc", f"/sysroot{dep_path}/etc", phys_vol.fstype, ["bind", "rw"], observed=False,
                                 evidence=[phys.evidence(f"{dep_path}/etc", "the deployment's own /etc (3-way merged at each update)"),
                                           evidence(ref, "writable bind mount", False)]))
        if var_dir and "/var" not in fstab_targets:
            table.add(MountEntry("/var", f"/sysroot{var_dir}", phys_vol.fstype, ["bind", "rw"], observed=False,
                                 evidence=[phys.evidence(var_dir, "the stateroot's /var, shared by all its deployments"),
                                           evidence(ref, "ostree-system-generator var.mount", False)]))
        if readonly:
            table.add(MountEntry("/sysroot", phys_src, phys_vol.fstype, ["ro"] + phys_opts, observed=False, volume=phys_vol,
                                 evidence=[e for e in (repo_ev,) if e] + [evidence(ref, "remounted read-only after the binds", False)]))
        boot_conf = variant.get("boot_mount")
        if boot_vol is not None and "/boot" not in fstab_targets and boot_conf:
            table.add(MountEntry("/boot", boot_conf["source"], boot_conf["fstype"], list(boot_conf["options"]), observed=False,
                                 volume=boot_vol, evidence=[evidence(boot_vol.describe(), "boot filesystem"),
                                                            evidence(boot_conf["source_ref"], "mounted by a generator", False)]))
        for row in fstab_rows:
            if row.target == "/" or row.fstype == "swap":
                continue
            entry = MountEntry.from_fstab(row, tree)
            if canonical[id(row)] != entry.target:
                entry.evidence.append(evidence(f"{row.target} is a symbolic link", f"mounted at {canonical[id(row)]}"))
                entry.target = canonical[id(row)]
            match = resolve_source_match(row.source, image, cmdline)
            if match is not None:
                entry.volume = match.volume
                entry.evidence.append(evidence(match.volume.describe(), match.how, match.observed))
            table.add(entry)
        skipped_units = add_enabled_mount_units(table, units, tree)
        for m in k.get("documented_mounts", []):
            if table.get(m["target"]) is None:
                table.add(MountEntry(m["target"], m["source"], m["fstype"], list(m["options"]), observed=False,
                                     evidence=[evidence(m["source_ref"], "set up by systemd itself", False)]))

        def resolve(p):
            return resolve_lenient(tree, p)

        paths = path_rows(table, resolve=resolve)

        # --- surface --------------------------------------------------------------------------------
        from immutools.system.surface import inventory

        from immutools.system.surface import PSEUDO_TREES

        # /sysroot shows every deployment and the repository's objects again: the running one is at /
        surface = inventory(tree, cmdline, units, skip_trees=PSEUDO_TREES + ("/sysroot",)).to_report()
        layering = self._layering(default, surface)
        for row in surface.get("package_manager_details", []):
            if row.get("name") in (k["layering"]["package_manager"], k["layering"]["tool"]):
                row["mode"] = "layered over the image (rpm-ostree)"

        # --- update -----------------------------------------------------------------------------------
        update, agent_conf = self._update(tree, units, variant, deployments, default, phys_vol, loader_info)
        update["package_layering"] = layering

        os_section = {
            "id": (os_release or {}).get("ID"),
            "name": (os_release or {}).get("NAME"),
            "version": (default or {}).get("version") or (os_release or {}).get("VERSION_ID"),
            "variant": variant_id,
            "arch": None,
            "pretty_name": (os_release or {}).get("PRETTY_NAME"),
            "build_id": (os_release or {}).get("BUILD_ID"),
            "evidence": [e for e in (os_ev,) if e],
        }
        from immutools.collectors.generic import arch_from_tree, detect_arch

        arch, arch_ev = detect_arch(image, [])          # DPS root types are per architecture
        if arch is None:
            arch, arch_ev = arch_from_tree(tree)
        os_section["arch"] = arch
        if arch_ev:
            os_section["evidence"].append(arch_ev)

        integrity = {"verity": False, "root_hash": None, "hash_location": None, "verified": None, "evidence": []}
        if dep_path:
            integrity["composefs"] = {kk: vv for kk, vv in composefs.items() if kk != "evidence"}
            integrity["evidence"] = composefs.get("evidence", [])

        distribution = {
            "name": variant.get("name") or (os_release or {}).get("ID") or "ostree",
            "stateroot": stateroot,
            "physical_root": {"partition": phys_vol.number, "fstype": phys_vol.fstype, "subdir": sub},
            "boot_partition": boot_vol.number if boot_vol is not None else None,
            "sysroot_readonly": readonly,
            "repo_mode": repo_conf.get("core", {}).get("mode"),
            "repo_sysroot_config": sysroot_conf,
            "bls_naming": loader_info.get("naming"),
            "bootversion": loader_info.get("bootversion"),
            "boot_entries": [e["file"] for e in entries],
            "deployments": [self._public(d) for d in deployments],
            "default_deployment": self._public(default) if default else None,
            "rollback_deployment": self._public(rollback) if rollback else None,
            "unreferenced_deployments": self._unreferenced(phys, deployments),
            "etc_changes": self._etc_changes(phys, dep_path) if dep_path else None,
            "layered_packages": layering["layered_packages"],
            "kernel_cmdline": cmdline.text if cmdline else None,
            "update_agent_config": agent_conf,
            "skipped_mount_units": skipped_units,
        }
        distribution.update(self._variant_facts(image, variant, phys, boot_tree, boot_base, boot_vol, agent_conf))
        return {
            "os": os_section,
            "mounts": table.to_report(),
            "paths": paths,
            "update": update,
            "integrity": integrity,
            "surface": surface,
            "distribution": distribution,
        }

    # ------------------------------------------------------------------------------- pieces
    def _entries(self, boot_tree, boot_base: str, vol: Volume, image: DiskImage) -> tuple[list[dict], dict]:
        """ostree's boot loader entries, highest number (the default) first (§3.1)."""
        from immutools.system.cmdline import KernelCmdline
        from immutools.system.sdboot import read_loader

        info: dict = {"bootversion": None, "naming": None}
        loader = posixpath.join(boot_base, "loader")
        try:
            target = boot_tree.readlink(loader)
            m = re.fullmatch(r"loader\.([01])", target.strip("/").split("/")[-1])
            info["bootversion"] = m.group(1) if m else None
            info["loader_link"] = target
        except ImmutoolsError:
            pass
        config = read_loader(boot_tree, boot_base)
        if config is None:
            return [], info
        for w in config.warnings:
            image.warn(f"{vol.describe()}: {w}")
        out = []
        kinds = set()
        for entry in config.entries[:_MAX_ENTRIES]:
            name = posixpath.basename(entry.path)
            m = self._entry_re.match(name)
            if not m:
                continue
            kinds.add("old" if m.group("stateroot") else "new")
            where = f"{vol.describe()}: {posixpath.join(boot_base, 'loader', 'entries', name)}"
            cmdline = KernelCmdline(entry.options, where)
            karg = cmdline.get("ostree")
            km = _OSTREE_KARG.match(karg or "")
            kver = None
            if entry.linux:
                base = posixpath.basename(entry.linux)
                kver = base[len("vmlinuz-"):] if base.startswith("vmlinuz-") else None
            out.append({
                "file": name, "n": int(m.group("n")), "stateroot_in_name": m.group("stateroot"),
                "title": entry.title, "version_key": entry.version, "linux": entry.linux, "initrd": entry.initrd,
                "kernel": kver, "cmdline": cmdline, "ostree_karg": karg, "karg_parts": km.groupdict() if km else None,
                "tries_left": entry.tries_left, "where": where,
            })
        out.sort(key=lambda e: -e["n"])
        naming = self.k["sysroot"]["naming"]
        info["naming"] = naming["old"] if kinds == {"old"} else naming["new"] if kinds == {"new"} else ("mixed" if kinds else None)
        return out, info

    def _deployments(self, image: DiskImage, phys, phys_vol: Volume, entries: list[dict]) -> list[dict]:
        out: list[dict] = []
        for index, entry in enumerate(entries):
            if entry["ostree_karg"] is None:
                image.warn(f"{entry['where']}: no ostree= kernel argument")
                continue
            try:
                path = phys.realpath(entry["ostree_karg"])
            except ImmutoolsError as exc:
                image.warn(f"{entry['where']}: ostree={entry['ostree_karg']} does not resolve on {phys_vol.describe()}: {exc}")
                continue
            parts = path.strip("/").split("/")
            m = _DEPLOY_NAME.match(parts[-1]) if len(parts) == 5 and parts[:2] == ["ostree", "deploy"] and parts[3] == "deploy" else None
            if m is None:
                image.warn(f"{entry['where']}: ostree={entry['ostree_karg']} leads to {path}, not a deployment directory")
                continue
            stateroot = parts[2]
            origin = read_keyfile(phys, path + ".origin") or {}
            os_rel = None
            for rel in ("/usr/lib/os-release", "/etc/os-release"):
                os_rel = read_key_values(phys, path + rel)
                if os_rel:
                    break
            version = (os_rel or {}).get("OSTREE_VERSION")
            version_from = "os-release OSTREE_VERSION" if version else None
            if not version and entry["title"]:
                tm = re.search(r" (\S+) \(ostree(?::[^:)]+)?:\d+\)$", entry["title"])
                if tm:
                    version, version_from = tm.group(1), "boot entry title"
            ev = [evidence(entry["where"], f"ostree={entry['ostree_karg']}"),
                  phys.evidence(entry["ostree_karg"], f"resolves to {path}")]
            if origin:
                ev.append(phys.evidence(path + ".origin", "origin keyfile"))
            out.append({
                "index": index, "stateroot": stateroot, "checksum": m.group("csum"), "serial": int(m.group("serial")),
                "path": path, "version": version, "version_source": version_from,
                "default": index == 0, "rollback": index == 1, "staged": False,
                "pinned": _truthy(origin.get("libostree-transient", {}).get("pinned")) is True,
                "origin": origin, "kernel": entry["kernel"], "boot_entry": entry["file"], "entry_number": entry["n"],
                "title": entry["title"], "bootcsum": (entry["karg_parts"] or {}).get("bootcsum"),
                "cmdline": entry["cmdline"], "evidence": ev,
            })
        return out

    def _unreferenced(self, phys, deployments: list[dict]) -> list[dict]:
        """Deployment directories no boot entry names: a staged deployment (finalized at shutdown;
        its state lives in /run) or a leftover the next cleanup removes (§3.4)."""
        seen = {d["path"] for d in deployments}
        out = []
        deploy = self.k["sysroot"]["deploy_dir"]
        try:
            roots = phys.listdir(deploy)[:_MAX_DEPLOYMENTS]
        except ImmutoolsError:
            return out
        for stateroot in roots:
            base = f"{deploy}/{stateroot}/deploy"
            try:
                names = phys.listdir(base)[:_MAX_DEPLOYMENTS]
            except ImmutoolsError:
                continue
            for name in names:
                m = _DEPLOY_NAME.match(name)
                path = f"{base}/{name}"
                if m and path not in seen:
                    out.append({"stateroot": stateroot, "checksum": m.group("csum"), "serial": int(m.group("serial")),
                                "path": path, "evidence": [phys.evidence(path, "deployment directory with no boot entry")]})
        return out

    @staticmethod
    def _os_release(tree):
        for path in ("/usr/lib/os-release", "/etc/os-release"):
            parsed = read_key_values(tree, path)
            if parsed:
                return parsed, tree.evidence(path, "os-release of the default deployment")
        return None, None

    @staticmethod
    def _fstab(tree):
        from immutools.system.fstab import parse_fstab

        try:
            if not tree.exists("/etc/fstab"):
                return []
            rows, _warnings = parse_fstab(tree.read_text("/etc/fstab", max_bytes=256 * 1024), "/etc/fstab")
            return rows
        except ImmutoolsError:
            return []

    def _composefs(self, tree, phys, dep_path: str) -> dict:
        conf, where = None, None
        for path in self.k["sysroot"]["prepare_root_conf"]:
            conf = read_keyfile(tree, path)
            if conf is not None:
                where = path
                break
        enabled = ((conf or {}).get("composefs") or {}).get("enabled")
        image = posixpath.join(dep_path, self.k["sysroot"]["composefs_image"])
        present = phys.exists(image)
        value = (enabled or "").strip().lower()
        active = present and value in ("yes", "true", "1", "signed", "verity", "maybe")
        ev = []
        if where:
            ev.append(tree.evidence(where, f"[composefs] enabled={enabled}"))
        if present:
            ev.append(phys.evidence(image, "composefs image of the deployment"))
        elif value in ("yes", "true", "1", "signed", "verity"):
            ev.append(evidence(f"{dep_path}/.ostree.cfs", "composefs enabled but the deployment has no .ostree.cfs", True))
        sysroot_ro = ((conf or {}).get("sysroot") or {}).get("readonly")
        return {"configured": enabled, "image_present": present, "active": active,
                "verity": value in ("signed", "verity"), "config_file": where,
                "prepare_root_sysroot_readonly": _truthy(sysroot_ro), "evidence": ev}

    def _layering(self, default: dict | None, surface: dict) -> dict:
        lay = self.k["layering"]
        origin = (default or {}).get("origin") or {}
        packages = origin.get("packages", {})

        def split(value):
            return [p for p in (value or "").split(";") if p.strip()]

        requested = split(packages.get("requested"))
        local = split(packages.get("requested-local"))
        removed = split(origin.get("overrides", {}).get("remove"))
        managers = set(surface.get("package_managers") or [])
        return {
            "tool": lay["tool"],
            "package_manager": lay["package_manager"],
            "mode": "layered over the image",
            "layered_packages": requested + local,
            "layered_local_packages": local,
            "overrides_removed": removed,
            "package_manager_present": lay["package_manager"] in managers,
            "tool_present": lay["tool"] in managers,
            "note": lay["note"],
            "evidence": [ev for ev in (default or {}).get("evidence", []) if "origin" in (ev.get("detail") or "")],
        }

    def _zincati(self, tree) -> tuple[dict, dict]:
        """Zincati's merged TOML configuration and, per dotted key, the file that set it (§3.5)."""
        import tomllib

        by_name: dict[str, str] = {}
        for d in self.k["zincati"]["config_dirs"]:
            try:
                names = tree.listdir(d)
            except ImmutoolsError:
                continue
            for name in names:
                if name.endswith(".toml"):
                    by_name[name] = f"{d}/{name}"      # a later directory overrides the same name
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

    def _update(self, tree, units, variant: dict, deployments: list[dict], default: dict | None,
                phys_vol: Volume, loader_info: dict) -> tuple[dict, dict]:
        k = self.k
        ev: list[dict] = []
        agent_conf: dict = {}
        zunit = units.find(k["zincati"]["unit"])
        server = channel = None
        if zunit is not None:
            agent = "zincati"
            merged, sources = self._zincati(tree)
            updates = merged.get("updates", {})
            agent_conf = {
                "agent": "zincati",
                "enabled": updates.get("enabled"),
                "strategy": updates.get("strategy"),
                "fleet_lock_url": (updates.get("fleet_lock") or {}).get("base_url"),
                "allow_downgrade": updates.get("allow_downgrade"),
                "group": (merged.get("identity") or {}).get("group"),
                "cincinnati": (merged.get("cincinnati") or {}).get("base_url"),
                "sources": sources,
                "unit_enabled": units.enablement(k["zincati"]["unit"]).enabled,
            }
            server = agent_conf["cincinnati"] or k["zincati"]["default_server"]
            ev.append(tree.evidence(zunit.path, "Zincati update agent unit", follow=False))
            for key in ("updates.strategy", "updates.enabled", "cincinnati.base_url"):
                if key in sources:
                    ev.append(tree.evidence(sources[key], f"{key} (last drop-in wins)"))
        else:
            agent = "rpm-ostreed"
        conf = read_keyfile(tree, k["rpm_ostreed"]["config"]) or {}
        policy = conf.get("Daemon", {}).get("AutomaticUpdatePolicy")
        rpm_ostreed = {
            "automatic_update_policy": policy or k["rpm_ostreed"]["default_policy"],
            "policy_source": k["rpm_ostreed"]["config"] if policy else "default (rpm-ostreed.conf commented)",
            "timer_enabled": units.enablement(k["rpm_ostreed"]["timer"]).enabled if units.find(k["rpm_ostreed"]["timer"]) else False,
        }
        if agent == "rpm-ostreed":
            agent_conf = {"agent": "rpm-ostreed", **rpm_ostreed}
            if tree.exists(k["rpm_ostreed"]["config"]):
                ev.append(tree.evidence(k["rpm_ostreed"]["config"], f"AutomaticUpdatePolicy={rpm_ostreed['automatic_update_policy']}"))
        else:
            agent_conf["rpm_ostreed"] = rpm_ostreed
        origin = (default or {}).get("origin", {}).get("origin", {})
        refspec = origin.get("refspec") or origin.get("baserefspec")
        image_ref = origin.get("container-image-reference")
        remote = None
        if refspec:
            remote, _, ref = refspec.rpartition(":")
            if variant.get("name") == "fedora-coreos":
                channel = ref.rsplit("/", 1)[-1]
            else:
                channel = ref
        elif image_ref:
            tail = image_ref.rsplit("/", 1)[-1]
            channel = tail.split(":", 1)[1] if ":" in tail else None
        if remote and server is None:
            server = self._remote_url(tree, remote)
        if image_ref and server is None:
            server = image_ref.split("docker://", 1)[-1].split("/", 1)[0] if "docker://" in image_ref else None
        if default:
            ev.append(next((e for e in default["evidence"] if "origin" in (e.get("detail") or "")), default["evidence"][0]))
        slots = []
        for d in deployments:
            slots.append({
                "name": f"{d['index']}: {d['stateroot']} {d['checksum'][:12]}.{d['serial']}",
                "partitions": [phys_vol.number], "version": d["version"], "active": d["default"],
                "priority": None, "tries": None, "successful": None,
                "checksum": d["checksum"], "serial": d["serial"], "pinned": d["pinned"], "rollback": d["rollback"],
            })
        update = {
            "mechanism": "ostree-deployments",
            "agent": agent,
            "channel": channel,
            "server": server,
            "active_slot": None,
            "slots": slots,
            "refspec": refspec,
            "container_image_reference": image_ref,
            "default_deployment": default["checksum"] if default else None,
            "rollback": ("boot the previous entry, or `rpm-ostree rollback` / `ostree admin set-default`; "
                         "the previous deployment is kept (pinned ones are never pruned)"),
            "atomic": True,
            "staged_deployments": "not visible offline: staging state lives in /run; unreferenced deployment directories are listed",
            "evidence": ev,
        }
        return update, agent_conf

    def _remote_url(self, tree, remote: str) -> str | None:
        for d in self.k["remotes_dirs"]:
            try:
                names = tree.listdir(d)
            except ImmutoolsError:
                continue
            for name in sorted(names):
                conf = read_keyfile(tree, f"{d}/{name}") or {}
                group = conf.get(f'remote "{remote}"')
                if group and group.get("url"):
                    return group["url"]
        return None

    @staticmethod
    def _public(d: dict) -> dict:
        """A deployment row for the report (no parsed objects)."""
        origin = d.get("origin") or {}
        packages = origin.get("packages", {})
        return {
            "index": d["index"], "stateroot": d["stateroot"], "checksum": d["checksum"], "serial": d["serial"],
            "version": d["version"], "version_source": d["version_source"], "default": d["default"],
            "rollback": d["rollback"], "pinned": d["pinned"], "staged": d["staged"], "kernel": d["kernel"],
            "boot_entry": d["boot_entry"], "title": d["title"], "path": d["path"],
            "refspec": origin.get("origin", {}).get("refspec") or origin.get("origin", {}).get("baserefspec"),
            "container_image_reference": origin.get("origin", {}).get("container-image-reference"),
            "layered_packages": [p for p in (packages.get("requested") or "").split(";") if p.strip()],
            "kernel_cmdline": d["cmdline"].text if d.get("cmdline") is not None else None,
            "evidence": d["evidence"],
        }

    def _etc_changes(self, phys, dep_path: str, limit: int = 5000) -> dict:
        """What the deployment's /etc holds beyond its defaults in /usr/etc: the local state the
        3-way merge carries to the next deployment (§3.1)."""
        added, modified = [], []
        count = 0
        etc, defaults = f"{dep_path}/etc", f"{dep_path}/usr/etc"
        try:
            for entry in phys.walk(etc):
                count += 1
                if count > limit:
                    break
                rel = entry.path[len(etc):]
                if entry.stat.is_dir:
                    continue
                other = defaults + rel
                try:
                    ost = phys.lstat(other)
                except ImmutoolsError:
                    added.append(rel)
                    continue
                if entry.stat.is_symlink or ost.is_symlink:
                    if not (entry.stat.is_symlink and ost.is_symlink and phys.readlink(entry.path) == phys.readlink(other)):
                        modified.append(rel)
                elif entry.stat.size != ost.size or phys.read(entry.path, max_bytes=1 << 20) != phys.read(other, max_bytes=1 << 20):
                    modified.append(rel)
        except ImmutoolsError:
            pass
        return {"added": sorted(added), "modified": sorted(modified)}

    def _variant_facts(self, image: DiskImage, variant: dict, phys, boot_tree, boot_base: str,
                       boot_vol: Volume | None, agent_conf: dict) -> dict:
        out: dict = {}
        if agent_conf.get("agent") == "zincati":
            out["zincati_strategy"] = agent_conf.get("strategy")
            out["zincati_enabled"] = agent_conf.get("enabled")
        if variant.get("name") != "fedora-coreos":
            return out
        coreos = self.k["variants"]["coreos"]
        root = image.volume(label="root")
        boot = image.volume(label="boot")
        kinds = []
        for vol, dps_role in ((boot, "boot"), (root, "root")):
            if vol is None or vol.partition is None:
                continue
            if vol.partition.type_guid == coreos["legacy_type"]:
                kinds.append("legacy")
            elif dps_role == "boot" and vol.partition.type_guid == coreos["xbootldr_type"]:
                kinds.append("dps")
            elif dps_role == "root" and vol.partition.type_key and vol.partition.type_key.startswith("root-"):
                kinds.append("dps")
            else:
                kinds.append("other")
        out["partition_types"] = kinds[0] if kinds and len(set(kinds)) == 1 else ("mixed" if kinds else None)
        flag = posixpath.join(boot_base, coreos["first_boot_flag"])
        first_boot = boot_tree.exists(flag)
        out["first_boot_flag"] = first_boot
        out["disk_guid"] = image.table.disk_guid
        out["pristine"] = bool(first_boot and image.table.disk_guid == coreos["pristine_disk_guid"])
        aleph = None
        for path in coreos["aleph_files"]:
            try:
                if phys.exists(path):
                    import json

                    aleph = {"path": path, "resolved": phys.realpath(path),
                             "content": json.loads(phys.read_text(path, max_bytes=64 * 1024))}
                    break
            except (ImmutoolsError, ValueError):
                continue
        out["aleph"] = aleph
        return out
