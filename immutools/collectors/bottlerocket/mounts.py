"""The running Bottlerocket system: its OS tree (the set's ROOT at /, DATA at /local with /var,
/opt and /mnt bound from it, PRIVATE, the set's BOOT) and its mount table in mount order, from the
data file's ``mount_plan``: ``/`` from the kernel command line, the mount units the image has
(observed), the mounts program code makes (systemd's /etc tmpfs, prairiedog's /boot, the /local
masks; ``observed: false``), then any other enabled mount unit."""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, evidence
from immutools.system.compose import add_enabled_mount_units, mount_fs, read_key_values, unit_path_conditions_fail
from immutools.system.mounts import MountEntry, MountTable, resolve_source_match
from immutools.system.rootview import OsTree
from immutools.system.units import UnitSet, mount_unit_name

from .layout import OsDisk

_NO_CONTENT = ("zero", "unknown", "unreadable")       # volume fstypes that name no filesystem
_PATH_CONDITIONS = ("ConditionPathExists", "ConditionPathIsSymbolicLink", "ConditionPathIsDirectory")
_RUNTIME_PATHS = ("/dev/", "/proc/", "/sys/", "/run/")  # state an image cannot show (systemd.unit(5))
_ENV_REF = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_MOUNT_OPTS_WITH_VALUE = ("-o", "-t", "-O", "-L", "-U", "--options", "--types", "--source", "--target")


def _exec_mount(argv: list[str]) -> tuple[str, str, str | None, list[str]] | None:
    """(source, target, type, options) of an ``ExecStart=`` that runs ``mount [opts] SOURCE TARGET``
    (mount(8)); None for anything else (a bind of a directory is returned too)."""
    if not argv or posixpath.basename(argv[0]) != "mount":
        return None
    positional, fstype, options = [], None, []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in _MOUNT_OPTS_WITH_VALUE and i + 1 < len(argv):
            if arg in ("-o", "--options"):
                options += [o for o in argv[i + 1].split(",") if o]
            elif arg in ("-t", "--types"):
                fstype = argv[i + 1]
            i += 2
            continue
        if arg.startswith("-"):
            if arg in ("--bind", "-B"):
                options.append("bind")
            i += 1
            continue
        positional.append(arg)
        i += 1
    return (positional[-2], positional[-1], fstype, options) if len(positional) >= 2 else None


def _conditions_holding(unit, tree) -> list[dict]:
    """Evidence for each path condition of a unit the image decides, once
    ``unit_path_conditions_fail`` found none failing (it reports failures only)."""
    out = []
    for key in _PATH_CONDITIONS:
        for a in unit.assignments_of("Unit", key):
            value = a.value.strip()
            path = value.lstrip("!")
            if value.startswith("|") or not path.startswith("/") or path.startswith(_RUNTIME_PATHS):
                continue
            out.append(a.evidence(tree) | {"detail": f"{key}={value}: holds in the image"})
    return out


@dataclass
class System:
    """The composed OS tree and what it says about the running system."""

    tree: OsTree
    units: UnitSet | None = None                 # None when ROOT is unreadable
    root_problem: str | None = None              # why ROOT is not in the tree
    prefix: str = "/usr"                         # /<arch>-bottlerocket-linux-gnu/sys-root/usr
    data_fs: str | None = None                   # DATA_PARTITION_FILESYSTEM
    skipped_mounts: list[dict] = field(default_factory=list)

    @property
    def have_root(self) -> bool:
        return self.units is not None


def _mount_partitions(image: DiskImage, knowledge: dict, disk: OsDisk, tree: OsTree) -> None:
    """DATA at /local with its directories bound at /var, /opt, /mnt; PRIVATE; the set's BOOT."""
    where = knowledge["tree"]
    data = disk.data_volume
    if mount_fs(tree, where["data"], image, data):
        fs = image.filesystem(data)
        for sub in where["data_binds"]:
            try:
                if fs.stat(f"/{sub}").is_dir:
                    mount_fs(tree, f"/{sub}", image, data, subdir=f"/{sub}")
            except ImmutoolsError:
                continue
    mount_fs(tree, where["private"], image, disk.private)
    if disk.source is not None:
        mount_fs(tree, where["boot"], image, disk.source.boot)


def compose_system(image: DiskImage, knowledge: dict, disk: OsDisk) -> System:
    """The OS tree of the set whose files describe the OS (``disk.source``)."""
    system = System(OsTree(image.limits))
    bank = disk.source
    root = bank.root if bank is not None else None
    if not mount_fs(system.tree, "/", image, root):
        system.root_problem = (f"{root.describe()} is not readable (content {root.fstype})" if root is not None
                               else "no ROOT partition follows the BOOT partition")
        image.warn("Bottlerocket ROOT not readable: paths on / are inferred only")
        return system
    _mount_partitions(image, knowledge, disk, system.tree)
    system.units = UnitSet(system.tree)
    if disk.triple:
        system.prefix = f"/{disk.triple}/{knowledge['sys_root']['usr']}"
    features = read_key_values(system.tree, knowledge["image_features"]) or {}
    system.data_fs = features.get(knowledge["data_filesystem_key"])
    return system


class MountPlan:
    """Builds the mount table from the data file's ``mount_plan``; records in ``findings`` why a
    planned mount is absent."""

    def __init__(self, image: DiskImage, knowledge: dict, disk: OsDisk, system: System, findings: Findings):
        self.image, self.knowledge, self.disk, self.system, self.findings = image, knowledge, disk, system, findings
        self.cmdline = disk.source.cmdline if disk.source is not None else None

    def table(self) -> MountTable:
        table = MountTable()
        for item in self.knowledge["mount_plan"]:
            if item.get("from") == "cmdline":
                entry = self.root_entry()
            elif "code" in item:
                entry = self.code_entry(item)
            else:
                entry = self.unit_entry(item)
            if entry is not None:
                table.add(entry)
        # Mount units the plan does not know, pulled in at boot: keep them (observed).
        if self.system.units is not None:
            known = {s["unit"] for s in self.system.skipped_mounts}
            for skipped in add_enabled_mount_units(table, self.system.units, self.system.tree, self.image, self.cmdline):
                if skipped["unit"] not in known:
                    self.system.skipped_mounts.append(dict(skipped, reason=skipped["evidence"][0]["detail"]))
        return table

    def root_entry(self) -> MountEntry | None:
        """``/`` from the command line: root=/dev/dm-0, the dm-verity device dm-mod.create builds over
        the set's ROOT and HASH. Without a command line, ``finish`` adds the documented default."""
        bank = self.disk.source
        if bank is None or bank.cmdline is None:
            problem = bank.cmdline_problem if bank is not None else None
            self.findings.explain("mount /", "the boot configuration could not be evaluated: "
                                  + (problem or "no Bottlerocket partition set"))
            return None
        cmdline = bank.cmdline
        rm = cmdline.root_mount()
        if rm is None:
            self.findings.explain("mount /", f"the kernel command line of set {bank.name} names no root device")
            return None
        found = resolve_source_match(rm.what, self.image, cmdline)
        entry = MountEntry.from_cmdline("/", rm, cmdline, integrity="dm-verity" if found and found.verity else "none",
                                        persistence="image", volume=found.volume if found else None)
        entry.fstype = rm.fstype or (found.volume.fstype if found else None)
        gpt = self.knowledge["gpt"]
        entry.evidence.append(cmdline.evidence("dm-mod.create", f"dm-verity device root over PARTNROFF={gpt['root_offset']} "
                                                                f"(ROOT) and PARTNROFF={gpt['hash_offset']} (HASH)"))
        if found is not None:
            entry.evidence.append(evidence(found.volume.describe(), found.how, found.observed))
        return entry

    def code_entry(self, item: dict) -> MountEntry | None:
        """A mount program code makes (``observed: false``), with the unit that runs it; none when
        the image has no such unit (older releases did not make it: e.g. v1.0 has no /local masks)."""
        source, volume = item["source"], None
        if source == "active-boot":
            volume = self.disk.source.boot if self.disk.source is not None else None
            source = f"PARTUUID={volume.partition.uuid}" if volume is not None and volume.partition else None
        ev = [evidence(item["ref"], item["code"], False)]
        units = self.system.units
        if item.get("service") and units is not None:
            found = units.find(item["service"])
            if found is None or found.masked:
                self.findings.explain(f"mount {item['target']}", f"{item['service']}, which makes it, is not in the image")
                return None
            ev.append(self.system.tree.evidence(found.path, f"{item['service']}: the unit that runs it", follow=False))
        return MountEntry(item["target"], source, item["fstype"], list(item["options"]), observed=False,
                          evidence=ev, volume=volume, persistence=item.get("persistence"))

    def _skip(self, fact: str, row: dict) -> None:
        self.system.skipped_mounts.append(row)
        self.findings.explain(fact, f"{row['unit']}: {row['reason']}")

    def unit_entry(self, item: dict) -> MountEntry | None:
        """The mount unit for the item's path, when the image has it, enabled, with conditions that hold."""
        where = item["where"].format(prefix=self.system.prefix)
        fact = f"mount {where}"
        units, tree = self.system.units, self.system.tree
        if units is None:
            self.findings.explain(fact, f"its mount unit is unknown: {self.system.root_problem}")
            return None
        name = mount_unit_name(where)
        mu = units.mount_unit(name)
        if mu is None:
            entry = self.service_entry(item, where)
            if entry is None:
                self.findings.explain(fact, f"{name} not found in the image, nor a service that mounts {where}")
            return entry
        enablement = units.enablement(name)
        if not enablement.enabled:
            self._skip(fact, {"unit": name, "reason": "present but not pulled in by any target",
                              "evidence": [tree.evidence(mu.path, "mount unit", follow=False)]})
            return None
        failed = unit_path_conditions_fail(mu.unit, tree)
        if failed is not None:
            self._skip(fact, {"unit": name, "reason": failed["detail"], "evidence": [failed]})
            return None
        entry = MountEntry.from_mount_unit(mu, tree)
        entry.evidence += enablement.evidence(tree) + _conditions_holding(mu.unit, tree)
        if mu.what:
            self._resolve_source(item, mu, entry)
        return entry

    def service_entry(self, item: dict, where: str) -> MountEntry | None:
        """A mount an enabled service makes with ``ExecStart=mount ... SOURCE <where>`` (before
        v1.5.0 /local came from prepare-local.service this way, with no local.mount): observed
        in the unit file, ``${VAR}`` expanded from its Environment=."""
        units, tree = self.system.units, self.system.tree
        for name in units.names():
            if not name.endswith(".service"):
                continue
            state = units.enablement(name)
            unit = units.load(name) if state.enabled else None
            if unit is None:
                continue
            env = {}
            for line in unit.values("Service", "Environment"):
                try:
                    env.update(w.split("=", 1) for w in shlex.split(line) if "=" in w)
                except ValueError:
                    continue
            for a in unit.assignments_of("Service", "ExecStart"):
                command = _ENV_REF.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), a.value.lstrip("-@:+!"))
                try:
                    found = _exec_mount(shlex.split(command))
                except ValueError:
                    continue
                if found is None or posixpath.normpath(found[1]) != where:
                    continue
                source, _target, fstype, options = found
                entry = MountEntry(where, source, fstype or "auto", options,
                                   evidence=[a.evidence(tree) | {"detail": f"{name} runs mount {source} {where}"}]
                                   + state.evidence(tree))
                self._resolve_source(item, source, entry)
                return entry
        return None

    def _resolve_source(self, item: dict, what, entry: MountEntry) -> None:
        """The partition a unit's What= (or a mount command's source) names; Type=auto decided by
        probing it (or, for DATA, by the filesystem prepare-local-fs.service will make)."""
        if not isinstance(what, str):
            what = what.what
        found = resolve_source_match(what, self.image, self.cmdline)
        if found is not None:
            entry.volume = found.volume
            entry.evidence.append(evidence(found.volume.describe(), found.how, found.observed))
        elif item.get("data") and self.disk.data_volume is not None:
            entry.volume = self.disk.data_volume
            entry.evidence += self.disk.data_evidence
        elif item.get("data"):
            entry.evidence.append(evidence(f"{what}", "no such partition in this image: the data partition "
                                                         "is on the separate data disk (split plan)", False))
        if entry.fstype not in (None, "auto"):
            return
        vol = entry.volume
        if vol is not None and vol.fstype not in _NO_CONTENT:
            entry.evidence.append(evidence(vol.describe(), f"Type=auto: probed as {vol.fstype}"))
            entry.fstype = vol.fstype
        elif item.get("data") and self.system.data_fs:
            makefs = self.knowledge["data_partition"]["makefs_unit"]
            key = self.knowledge["data_filesystem_key"]
            entry.evidence.append(self.system.tree.evidence(
                self.knowledge["image_features"], f"{key}={self.system.data_fs}: {makefs} makes it at first boot"))
            entry.fstype = self.system.data_fs
