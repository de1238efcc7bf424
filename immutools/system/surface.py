"""The attack-surface inventory of an OS tree: what an intruder would find to work with.

From an ``OsTree`` (and, when known, the kernel command line) this lists, each with evidence
(path and partition) and whether it was seen or inferred:

* shells on the default PATH (symlinks followed; one row per real file, with every name for it);
* an SSH server binary and whether a unit starts it at boot (which unit, pulled in by what);
* package managers by binary or database, app managers (flatpak) separately;
* setuid and setgid regular files (from each filesystem's inode tables, names resolved only for
  the hits: no file contents are read; /proc, /sys, /dev are skipped);
* the SELinux mode: /etc/selinux/config, whether a policy is installed, and kernel command-line
  overrides (``selinux=0``, ``enforcing=``, ``security=``, ``lsm=``), with the trail that decided;
* the init system (``init=`` on the command line wins, else the kernel's /sbin/init search);
* kernel modules (count) and whether signatures are enforced (``module.sig_enforce``,
  ``CONFIG_MODULE_SIG_FORCE``, lockdown, or no loadable modules at all), and the lockdown mode;
* how many executables the default PATH offers.

Runtime /etc content that only exists as defaults in the image (``/usr/etc`` on ostree,
``/usr/share/factory/etc``, Flatcar's ``/usr/share/flatcar/etc``) is consulted when /etc lacks a
file, and the evidence says so.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import stat
from dataclasses import dataclass, field

from immutools.errors import ImmutoolsError, LimitExceededError
from immutools.report.model import evidence as make_evidence
from immutools.system.rootview import OsTree, as_tree
from immutools.system.units import UnitSet

DEFAULT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
SHELL_NAMES = ("sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "fish", "tcsh", "csh", "busybox")
SSHD_NAMES = ("sshd", "dropbear")
SSHD_EXTRA_PATHS = ("/usr/libexec/openssh/sshd", "/usr/lib/openssh/sshd", "/usr/libexec/sshd")
SSHD_UNITS = ("sshd.service", "ssh.service", "sshd.socket", "ssh.socket", "dropbear.service", "dropbear.socket")
PACKAGE_MANAGER_BINARIES = ("rpm", "dnf", "yum", "microdnf", "apt", "apt-get", "dpkg", "apk", "pacman", "emerge",
                            "zypper", "rpm-ostree", "snap")
APP_MANAGER_BINARIES = ("flatpak",)
PACKAGE_DATABASES = (
    ("dpkg", "/var/lib/dpkg/status", "dpkg status database"),
    ("rpm", "/var/lib/rpm", "rpm database"),
    ("rpm", "/usr/lib/sysimage/rpm", "rpm database"),
    ("rpm", "/usr/share/rpm", "rpm database"),
    ("apk", "/lib/apk/db/installed", "apk installed database"),
    ("pacman", "/var/lib/pacman/local", "pacman local database"),
    ("emerge", "/var/db/pkg", "portage package database"),
)
PSEUDO_TREES = ("/proc", "/sys", "/dev")
MODULE_DIRS = ("/usr/lib/modules", "/lib/modules")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
KERNEL_CONFIG_FILES = ("/usr/boot/config", "/boot/config", "/proc/config", "/usr/lib/kernel/config")
KERNEL_CONFIG_GLOBS = (("/boot", "config-"), ("/usr/lib/modules", "*/config"), ("/lib/modules", "*/config"))
ETC_DEFAULTS = ("/usr/etc", "/usr/share/factory/etc", "/usr/share/flatcar/etc")
INIT_CANDIDATES = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")   # the kernel's order (init/main.c)
# Merged-/usr systems (Flatcar, Fedora, ...) create the top-level /sbin, /bin links at first boot
# (tmpfiles); in a pristine image only the /usr side exists, so look there after the kernel's list.
USR_MERGED_INIT = ("/usr/sbin/init", "/usr/lib/systemd/systemd")
LOCKDOWN_MODES = ("none", "integrity", "confidentiality")
_MAX_CONFIG_BYTES = 4 * 1024 * 1024
_X_BITS = 0o111


@dataclass
class Surface:
    shells: list[dict] = field(default_factory=list)
    sshd_binaries: list[dict] = field(default_factory=list)
    sshd_enabled: bool | None = None
    sshd_units: list[dict] = field(default_factory=list)
    package_managers: list[dict] = field(default_factory=list)
    app_managers: list[dict] = field(default_factory=list)
    setuid: list[dict] = field(default_factory=list)
    setgid: list[dict] = field(default_factory=list)
    selinux: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    kernel_modules: dict = field(default_factory=dict)
    lockdown: dict = field(default_factory=dict)
    path_executables: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def evidence(self) -> list[dict]:
        out: list[dict] = []

        def add(items):
            for ev in items:
                if ev not in out:
                    out.append(ev)

        for group in (self.shells, self.sshd_binaries, self.sshd_units, self.package_managers, self.app_managers):
            for row in group:
                add(row.get("evidence", []))
        add(self.selinux.get("trail", []))
        add(self.init.get("evidence", []))
        add(self.kernel_modules.get("evidence", []))
        add(self.lockdown.get("evidence", []))
        return out

    def to_report(self) -> dict:
        return {
            "shells": [s["path"] for s in self.shells],
            "sshd": bool(self.sshd_binaries),
            "package_managers": [p["name"] for p in self.package_managers],
            "setuid": [s["path"] for s in self.setuid],
            "selinux": self.selinux.get("mode"),
            "init": self.init.get("name"),
            "kernel_modules": {
                "count": self.kernel_modules.get("count"),
                "signature_enforced": self.kernel_modules.get("signature_enforced"),
                "loadable": self.kernel_modules.get("loadable"),
                "reason": self.kernel_modules.get("reason"),
            },
            "evidence": self.evidence,
            # richer detail (the schema allows extra keys)
            "shell_details": self.shells,
            "sshd_binaries": self.sshd_binaries,
            "sshd_enabled": self.sshd_enabled,
            "sshd_units": self.sshd_units,
            "package_manager_details": self.package_managers,
            "app_managers": [a["name"] for a in self.app_managers],
            "setuid_details": self.setuid,
            "setgid": [s["path"] for s in self.setgid],
            "setgid_details": self.setgid,
            "selinux_policy": {k: v for k, v in self.selinux.items() if k != "trail"},
            "selinux_trail": self.selinux.get("trail", []),
            "init_details": self.init,
            "lockdown": self.lockdown.get("mode"),
            "lockdown_details": self.lockdown,
            "path_executables": self.path_executables,
            "warnings": self.warnings,
        }


class _Inventory:
    def __init__(self, tree: OsTree, cmdline=None, units: UnitSet | None = None, etc_defaults=ETC_DEFAULTS,
                 skip_trees=PSEUDO_TREES):
        self.tree = tree
        self.cmdline = cmdline
        self.units = units
        self.etc_defaults = etc_defaults
        self.skip_trees = tuple(skip_trees)
        self.warnings: list[str] = []
        self._real_dirs: list[str] | None = None

    # ---- small helpers ------------------------------------------------------------------------
    def lstat(self, path):
        try:
            return self.tree.lstat(path)
        except ImmutoolsError:
            return None

    def stat(self, path):
        try:
            return self.tree.stat(path)
        except ImmutoolsError:
            return None

    def realpath(self, path) -> str | None:
        try:
            return self.tree.realpath(path)
        except ImmutoolsError:
            return None

    def listdir(self, path) -> list[str]:
        try:
            return self.tree.listdir(path)
        except ImmutoolsError:
            return []

    def read_text(self, path, limit=_MAX_CONFIG_BYTES) -> str | None:
        try:
            data = self.tree.read(path, max_bytes=limit)
        except ImmutoolsError as exc:
            self.warnings.append(f"{path}: unreadable: {exc}")
            return None
        if path.endswith(".gz"):
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                    data = gz.read(limit + 1)
            except (OSError, EOFError) as exc:
                self.warnings.append(f"{path}: bad gzip data: {exc}")
                return None
            if len(data) > limit:
                self.warnings.append(f"{path}: more than {limit} bytes uncompressed, ignored")
                return None
        return data.decode("utf-8", "replace")

    def ev(self, path, detail=None, observed=True, follow=True) -> dict:
        return self.tree.evidence(path, detail, observed, follow)

    def path_dirs(self) -> list[str]:
        """The default PATH directories that exist, once each (``/bin`` is often ``/usr/bin``)."""
        if self._real_dirs is None:
            out, seen = [], set()
            for d in DEFAULT_PATH:
                st = self.stat(d)
                real = self.realpath(d) if st is not None and st.is_dir else None
                if real and real not in seen:
                    seen.add(real)
                    out.append(d)
            self._real_dirs = out
        return self._real_dirs

    def find_binaries(self, names) -> dict[str, dict]:
        """Regular executable files named ``names`` on the PATH: {real path: {names, stat}}."""
        found: dict[str, dict] = {}
        for d in DEFAULT_PATH:
            for name in names:
                path = f"{d}/{name}"
                if self.lstat(path) is None:
                    continue
                st = self.stat(path)
                if st is None or not st.is_file:
                    continue
                real = self.realpath(path)
                if real is None:
                    continue
                try:
                    link = self.tree.lrealpath(path)
                except ImmutoolsError:
                    link = None
                row = found.setdefault(real, {"path": real, "names": [], "stat": st})
                if link and link not in row["names"]:
                    row["names"].append(link)
        return found

    def etc_file(self, rel: str) -> tuple[str | None, bool]:
        """(path, is_default) of ``/etc/<rel>``, or of its shipped default when /etc lacks it."""
        path = f"/etc/{rel}"
        st = self.stat(path)
        if st is not None and st.is_file:
            return path, False
        for base in self.etc_defaults:
            candidate = f"{base}/{rel}"
            st = self.stat(candidate)
            if st is not None and st.is_file:
                return candidate, True
        return None, False

    # ---- sections -----------------------------------------------------------------------------
    def shells(self) -> list[dict]:
        rows = []
        for real, row in sorted(self.find_binaries(SHELL_NAMES).items()):
            st = row["stat"]
            executable = bool(st.perm & _X_BITS)
            if not executable:
                self.warnings.append(f"{real}: shell without execute permission, not counted")
                continue
            evidence = [self.ev(real, f"shell ({', '.join(sorted(row['names']))}); mode {st.perm:04o}")]
            for name in sorted(row["names"]):
                if name != real:
                    evidence.append(self.ev(name, f"symlink to {real}", follow=False))
            rows.append({"path": real, "names": sorted(row["names"]), "mode": f"{st.perm:04o}", "evidence": evidence})
        return rows

    def sshd(self) -> tuple[list[dict], list[dict], bool | None]:
        binaries = []
        found = self.find_binaries(SSHD_NAMES)
        for extra in SSHD_EXTRA_PATHS:
            st = self.stat(extra)
            real = self.realpath(extra) if st is not None and st.is_file else None
            if real and real not in found:
                found[real] = {"path": real, "names": [extra], "stat": st}
        for real, row in sorted(found.items()):
            binaries.append({"path": real, "names": sorted(row["names"]), "name": posixpath.basename(real),
                             "evidence": [self.ev(real, "SSH server binary")]})
        units_rows = []
        enabled = None
        if self.units is not None and self.units.paths:
            enabled = False
            for name in SSHD_UNITS:
                state = self.units.enablement(name)
                if not state.found:
                    continue
                preset = state.preset
                row = {
                    "unit": name,
                    "state": state.state,
                    "enabled": state.enabled,
                    "masked": state.masked,
                    "wanted_by": state.wanted_by,
                    "reachable_from_default_target": state.reachable,
                    "preset": preset.action if preset else None,
                    "evidence": state.evidence(self.tree),
                }
                if preset and preset.path:
                    row["evidence"].append(self.ev(preset.path, f"preset line {preset.line}: {preset.action} {preset.pattern}", observed=False))
                units_rows.append(row)
                # starts at boot: pulled in, (when default.target is known) by a chain that starts
                # there -- a unit only a rescue target requires does not run -- and not skipped by a
                # ConditionPath*= that fails in the image (sshd_not_to_be_run)
                enabled = enabled or (state.enabled and state.reachable is not False and state.condition_failure is None)
        return binaries, units_rows, enabled

    def package_managers(self) -> tuple[list[dict], list[dict]]:
        rows: dict[str, dict] = {}
        for real, row in sorted(self.find_binaries(PACKAGE_MANAGER_BINARIES).items()):
            names = {posixpath.basename(n) for n in row["names"]} & set(PACKAGE_MANAGER_BINARIES)
            for name in sorted(names or {posixpath.basename(real)}):
                entry = rows.setdefault(name, {"name": name, "kinds": [], "paths": [], "evidence": []})
                if "binary" not in entry["kinds"]:
                    entry["kinds"].append("binary")
                entry["paths"].append(real)
                entry["evidence"].append(self.ev(real, f"{name} binary"))
        seen_db: set[str] = set()
        for name, path, what in PACKAGE_DATABASES:
            st = self.stat(path)
            if st is None:
                continue
            if st.is_dir and not self.listdir(path):
                continue
            real = self.realpath(path)
            if real in seen_db:
                continue
            seen_db.add(real)
            entry = rows.setdefault(name, {"name": name, "kinds": [], "paths": [], "evidence": []})
            if "database" not in entry["kinds"]:
                entry["kinds"].append("database")
            entry["paths"].append(real)
            entry["evidence"].append(self.ev(path, what))
        apps = []
        for real, row in sorted(self.find_binaries(APP_MANAGER_BINARIES).items()):
            apps.append({"name": posixpath.basename(real), "paths": [real], "evidence": [self.ev(real, "app manager binary")]})
        return [rows[k] for k in sorted(rows)], apps

    def special_bits(self) -> tuple[list[dict], list[dict]]:
        """Setuid and setgid regular files, sorted by path: each filesystem answers from its
        inode tables (``OsTree.find_special``), names are resolved only for the hits."""
        setuid, setgid = [], []
        try:
            for path, st in self.tree.find_special("/", exclude=self.skip_trees):
                row = {"path": path, "mode": f"{st.perm:04o}", "uid": st.uid, "gid": st.gid}
                if st.is_setuid:
                    setuid.append(row)
                if st.is_setgid:
                    setgid.append(dict(row))
        except LimitExceededError as exc:
            self.warnings.append(f"setuid walk stopped: {exc}")
        except ImmutoolsError as exc:
            self.warnings.append(f"setuid walk stopped: {exc}")
        for row in setuid + setgid:
            row["evidence"] = [self.ev(row["path"], f"mode {row['mode']} uid {row['uid']} gid {row['gid']}", follow=False)]
        return setuid, setgid

    def selinux(self) -> dict:
        trail: list[dict] = []
        config_path, config_default = self.etc_file("selinux/config")
        config: dict[str, str] = {}
        if config_path:
            text = self.read_text(config_path, 64 * 1024) or ""
            for number, raw in enumerate(text.splitlines(), 1):
                line = raw.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, _, value = line.partition("=")
                config[key.strip()] = value.strip().strip("\"'")
                if key.strip() in ("SELINUX", "SELINUXTYPE"):
                    config[f"{key.strip()}_line"] = str(number)
        policy_type = config.get("SELINUXTYPE")
        policy_paths = self._selinux_policies(policy_type)
        result = {
            "mode": None,
            "config": config_path,
            "config_is_default": config_default,
            "config_mode": config.get("SELINUX"),
            "policy_type": policy_type,
            "policy_present": bool(policy_paths),
            "policy_paths": policy_paths,
            "decided_by": None,
        }

        def decide(mode: str, by: str, ev: dict) -> dict:
            trail.append(ev)
            result.update(mode=mode, decided_by=by, trail=trail)
            return result

        lsm = self.cmdline.lsm_settings() if self.cmdline is not None else {}
        if self.cmdline is not None:
            if _kernel_int(lsm.get("selinux")) == 0:
                return decide("disabled", "kernel command line selinux=0", self.cmdline.evidence("selinux", "selinux=0 disables SELinux"))
            if lsm.get("security") and lsm["security"] != "selinux":
                return decide("disabled", f"kernel command line security={lsm['security']}",
                              self.cmdline.evidence("security", f"major LSM is {lsm['security']}, not selinux"))
            if lsm.get("lsm") is not None and "selinux" not in lsm["lsm"]:
                return decide("disabled", "kernel command line lsm= without selinux",
                              self.cmdline.evidence("lsm", "selinux is not in the LSM list"))
        if config_path:
            trail.append(self.ev(config_path, f"SELINUX={config.get('SELINUX')} SELINUXTYPE={policy_type}"
                                 + (" (default /etc content)" if config_default else ""), observed=not config_default))
        for path in policy_paths[:3]:
            trail.append(self.ev(path, "SELinux policy"))
        if not config_path and not policy_paths:
            result.update(mode="absent", decided_by="no /etc/selinux/config and no policy", trail=trail)
            return result
        config_mode = (config.get("SELINUX") or "").lower() or None
        if config_mode == "disabled":
            result.update(mode="disabled", decided_by=f"{config_path} SELINUX=disabled", trail=trail)
            return result
        enforcing = _kernel_int(lsm.get("enforcing")) if self.cmdline is not None else None
        if enforcing is not None:
            mode = "enforcing" if enforcing else "permissive"
            if not policy_paths:
                trail.append(make_evidence("SELinux policy", "no policy found in the image; loading would fail", False))
            return decide(mode, f"kernel command line enforcing={enforcing}", self.cmdline.evidence("enforcing"))
        if config_mode in ("enforcing", "permissive"):
            if not policy_paths:
                trail.append(make_evidence("SELinux policy", "no policy found in the image; loading would fail", False))
            result.update(mode=config_mode, decided_by=f"{config_path} SELINUX={config_mode}", trail=trail)
            return result
        trail.append(make_evidence("SELinux mode", "policy present but no SELINUX= setting: the kernel starts permissive unless enforcing=1", False))
        result.update(mode="permissive", decided_by="policy present without a mode setting (inferred)", trail=trail)
        return result

    def _selinux_policies(self, policy_type: str | None) -> list[str]:
        found: list[str] = []
        bases = ["/etc/selinux"] + [f"{b}/selinux" for b in self.etc_defaults]
        for base in bases:
            types = [policy_type] if policy_type else self.listdir(base)
            for t in types:
                pdir = f"{base}/{t}/policy"
                for name in self.listdir(pdir):
                    if name.startswith("policy."):
                        found.append(f"{pdir}/{name}")
        share = "/usr/share/selinux"
        st = self.stat(share)
        if st is not None and st.is_dir and self.listdir(share):
            found.append(share)
        unique = []
        for p in found:
            if p not in unique:
                unique.append(p)
        return unique

    def init(self) -> dict:
        if self.cmdline is not None and self.cmdline.init():
            path = self.cmdline.init()
            real = self.realpath(path)
            name = posixpath.basename(real or path)
            ev = [self.cmdline.evidence("init")]
            if real:
                ev.append(self.ev(real, f"init= names {path}"))
            return {"name": _init_name(name), "path": path, "target": real, "decided_by": "kernel command line init=",
                    "evidence": ev}
        kernel_order = [c for c in INIT_CANDIDATES if c != "/bin/sh"]
        for candidate in kernel_order + list(USR_MERGED_INIT) + ["/bin/sh"]:
            if self.lstat(candidate) is None:
                continue
            st = self.stat(candidate)
            real = self.realpath(candidate)
            if st is None or not st.is_file or real is None:
                continue
            name = _init_name(posixpath.basename(real))
            ev = [self.ev(candidate, f"-> {real}" if real != candidate else "init binary", follow=False)]
            if real != candidate:
                ev.append(self.ev(real, "init binary"))
            decided = (f"first of {', '.join(kernel_order)} (the kernel's order), then the merged-/usr "
                       f"{', '.join(USR_MERGED_INIT)}, then /bin/sh")
            return {"name": name, "path": candidate, "target": real, "decided_by": decided,
                    "evidence": ev}
        return {"name": None, "path": None, "target": None, "decided_by": "no init found", "evidence": []}

    def kernel_configs(self) -> list[tuple[str, dict[str, str]]]:
        paths = list(KERNEL_CONFIG_FILES)
        for base, pattern in KERNEL_CONFIG_GLOBS:
            if pattern.startswith("*/"):
                for version in self.listdir(base):
                    paths.append(f"{base}/{version}/{pattern[2:]}")
            else:
                paths += [f"{base}/{n}" for n in self.listdir(base) if n.startswith(pattern)]
        out, seen = [], set()
        for path in paths:
            st = self.stat(path)
            if st is None or not st.is_file:
                continue
            real = self.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            text = self.read_text(path)
            if text is None:
                continue
            values: dict[str, str] = {}
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    values[line[2:-len(" is not set")]] = "n"
                elif line.startswith("CONFIG_") and "=" in line:
                    key, _, value = line.partition("=")
                    values[key] = value.strip('"')
            if "CONFIG_MODULES" in values or any(k.startswith("CONFIG_MODULE") for k in values) or len(values) > 50:
                out.append((path, values))
        return out

    def modules_and_lockdown(self) -> tuple[dict, dict]:
        count = 0
        dirs = []
        seen: set[str] = set()
        for base in MODULE_DIRS:
            st = self.stat(base)
            real = self.realpath(base) if st is not None and st.is_dir else None
            if not real or real in seen:
                continue
            seen.add(real)
            dirs.append(base)
            try:
                table = self.tree.walk_table(base)
                regular = (table.file_type() == stat.S_IFREG).nonzero()[0]
                count += sum(1 for i in regular.tolist() if table.names[i].endswith(MODULE_SUFFIXES))
            except ImmutoolsError as exc:
                self.warnings.append(f"module count under {base} stopped: {exc}")
        configs = self.kernel_configs()
        evidence: list[dict] = []
        for base in dirs:
            evidence.append(self.ev(base, f"{count} kernel module files"))

        # lockdown
        lockdown = {"mode": None, "decided_by": None, "evidence": []}
        cmd_lockdown = self.cmdline.lockdown() if self.cmdline is not None else None
        lsm_list = self.cmdline.lsm_settings().get("lsm") if self.cmdline is not None else None
        if cmd_lockdown in LOCKDOWN_MODES:
            lockdown.update(mode=cmd_lockdown, decided_by="kernel command line lockdown=",
                            evidence=[self.cmdline.evidence("lockdown")])
            if lsm_list is not None and "lockdown" not in lsm_list:
                lockdown["note"] = "lsm= does not list lockdown: the setting may have no effect"
        else:
            for path, values in configs:
                if values.get("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY") == "y":
                    mode = "confidentiality"
                elif values.get("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY") == "y":
                    mode = "integrity"
                elif values.get("CONFIG_SECURITY_LOCKDOWN_LSM") == "y":
                    mode = "none"
                else:
                    continue
                lockdown.update(mode=mode, decided_by=f"kernel config {path}",
                                evidence=[self.ev(path, f"lockdown {mode} from CONFIG_LOCK_DOWN_KERNEL_FORCE_*")])
                break

        enforced: bool | None = None
        loadable: bool | None = None
        reason = None
        sig_cmd = self.cmdline.module_sig_enforce() if self.cmdline is not None else None
        no_modules = [p for p, v in configs if v.get("CONFIG_MODULES") == "n"]
        forced = [p for p, v in configs if v.get("CONFIG_MODULE_SIG_FORCE") == "y"]
        if configs:
            loadable = not no_modules
        if no_modules:
            enforced, reason = True, f"CONFIG_MODULES is not set ({no_modules[0]}): no module can be loaded"
            evidence.append(self.ev(no_modules[0], "# CONFIG_MODULES is not set"))
        elif sig_cmd is True:
            enforced, reason = True, "module.sig_enforce=1 on the kernel command line"
            evidence.append(self.cmdline.evidence("module.sig_enforce"))
        elif configs and len(forced) == len(configs):
            enforced, reason = True, "CONFIG_MODULE_SIG_FORCE=y"
            evidence += [self.ev(p, "CONFIG_MODULE_SIG_FORCE=y") for p in forced]
        elif lockdown["mode"] in ("integrity", "confidentiality"):
            enforced, reason = True, f"lockdown={lockdown['mode']} refuses unsigned modules"
            evidence += lockdown["evidence"]
        elif configs:
            enforced = False
            reason = "CONFIG_MODULE_SIG_FORCE is not set" + (" and module.sig_enforce is off" if sig_cmd is False else
                                                            " and module.sig_enforce=1 is not on the command line")
            evidence += [self.ev(p, f"CONFIG_MODULE_SIG_FORCE={v.get('CONFIG_MODULE_SIG_FORCE', 'unset')}")
                         for p, v in configs if p not in forced]
        elif sig_cmd is False:
            reason = "module.sig_enforce=0, but the kernel config is not in the image"
        else:
            reason = "no kernel config in the image and no module.sig_enforce on the command line"
        modules = {"count": count if dirs else 0, "signature_enforced": enforced, "loadable": loadable,
                   "reason": reason, "dirs": dirs, "configs": [p for p, _ in configs], "evidence": evidence}
        return modules, lockdown

    def path_executables(self) -> dict:
        seen: set = set()
        dirs = self.path_dirs()
        for d in dirs:
            try:
                entries = self.tree.scandir_identities(d)
            except ImmutoolsError as exc:
                self.warnings.append(f"{d}: unreadable: {exc}")
                continue
            for name, st, identity in entries:
                if st.is_symlink:
                    # Only links need resolving (anywhere in the tree); the others are known.
                    try:
                        st, identity = self.tree.stat_identity(f"{d}/{name}")
                    except ImmutoolsError:
                        continue
                if not st.is_file or not st.perm & _X_BITS:
                    continue
                seen.add(identity)
        return {"count": len(seen), "dirs": dirs,
                "evidence": [self.ev(d, "default PATH directory") for d in dirs]}


def _kernel_int(value: str | None) -> int | None:
    """An integer kernel parameter as the kernel reads it (``kstrtoint`` base 0); None if not one."""
    if value is None:
        return None
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


def _init_name(basename: str) -> str:
    return {"systemd": "systemd", "busybox": "busybox", "openrc-init": "openrc", "runit-init": "runit",
            "runit": "runit", "s6-svscan": "s6", "dinit": "dinit", "machined": "machined"}.get(basename, basename)


def inventory(tree, cmdline=None, units: UnitSet | None = None, etc_defaults=ETC_DEFAULTS,
              walk_setuid: bool = True, skip_trees=PSEUDO_TREES) -> Surface:
    """The attack-surface inventory of ``tree`` (an ``OsTree`` or any ``FileSystem``).
    ``cmdline``: the ``KernelCmdline`` the system boots with, when known. ``walk_setuid=False``
    skips the whole-tree metadata walk (setuid/setgid then stay empty, with a warning);
    ``skip_trees``: directories the walk does not enter (pseudo filesystems by default)."""
    tree = as_tree(tree)
    units = units if units is not None else UnitSet(tree)
    inv = _Inventory(tree, cmdline, units, etc_defaults, skip_trees)
    surface = Surface()
    surface.shells = inv.shells()
    surface.sshd_binaries, surface.sshd_units, surface.sshd_enabled = inv.sshd()
    surface.package_managers, surface.app_managers = inv.package_managers()
    if walk_setuid:
        surface.setuid, surface.setgid = inv.special_bits()
    else:
        inv.warnings.append("setuid/setgid walk skipped")
    surface.selinux = inv.selinux()
    surface.init = inv.init()
    surface.kernel_modules, surface.lockdown = inv.modules_and_lockdown()
    surface.path_executables = inv.path_executables()
    surface.warnings = inv.warnings + units.warnings
    return surface
