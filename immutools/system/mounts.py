"""The mount-table model and the rules that turn it into read-only / volatile / persistent paths.

Collectors build a ``MountTable`` of what the running system would mount (each row with its
evidence); ``path_states`` then states, for the standard top-level paths and every mount target,
whether writes there are impossible (``read-only``), lost at reboot (``volatile``) or kept
(``persistent``), decided by the mount covering the path (longest prefix by whole components):

* a mount with the ``ro`` option (or ``access == "ro"``) is read-only;
* tmpfs / ramfs / devtmpfs are volatile;
* dm-verity, squashfs, erofs, iso9660 (read-only by design) are read-only;
* an overlay with no upper directory is read-only; with one, it is what its upper directory lies
  on (persistent on a persistent mount, volatile on a tmpfs);
* a bind mount is what its source path is.

Bind sources and overlay upper directories resolve the way the kernel does, at mount time: through
the mounts made *before* (so add mounts in mount order: Bottlerocket's ``/var`` bind of
``/local/var`` keeps the data partition even though ``/local/var`` is masked by a later bind).
When no earlier mount covers the source, the final table is used instead; resolution is bounded
and a cycle falls back to what the path would be without the binds involved.

* any other writable mount: its ``persistence`` (``image``/``persistent`` content that is writable
  keeps writes: persistent; ``volatile``: volatile).

``resolve_source`` maps ``LABEL=``/``PARTLABEL=``/``UUID=``/``PARTUUID=``, ``/dev/disk/by-*``,
``/dev/mapper/usr``/``root`` and ``/dev/dm-N`` (through the command line's verity settings and
``dm-mod.create``) and kernel partition names to a ``Volume`` of a ``DiskImage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.report.model import STANDARD_PATHS
from immutools.report.model import evidence as make_evidence
from immutools.system.devices import SourceSpec, parse_source
from immutools.system.rootview import is_within, normalize

VOLATILE_TYPES = {"tmpfs", "ramfs", "devtmpfs"}
READ_ONLY_TYPES = {"squashfs", "erofs", "iso9660", "cramfs", "romfs", "udf"}
OVERLAY_TYPES = {"overlay", "overlayfs"}
PSEUDO_TYPES = {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs", "bpf",
                "efivarfs", "pstore", "mqueue", "hugetlbfs", "configfs", "fusectl", "binfmt_misc"}
_MAX_RESOLVE = 32


def _kind_for(fstype: str | None, options: list[str]) -> str:
    if "bind" in options or "rbind" in options:
        return "bind"
    if fstype in VOLATILE_TYPES:
        return "tmpfs"
    if fstype in OVERLAY_TYPES:
        return "overlay"
    if fstype in ("squashfs", "erofs"):
        return fstype
    if fstype in PSEUDO_TYPES:
        return "pseudo"
    return "block"


def access_from_options(options: list[str], fstype: str | None = None) -> str:
    access = "rw"
    for opt in options:
        if opt in ("ro", "rw"):
            access = opt
    if fstype in READ_ONLY_TYPES:
        access = "ro"
    return access


@dataclass
class MountEntry:
    """One row of the mount table. ``access``/``persistence``/``kind`` are derived from
    ``fstype``/``options`` when not given."""

    target: str
    source: str | None
    fstype: str | None
    options: list[str] = field(default_factory=list)
    access: str | None = None            # ro | rw
    persistence: str | None = None       # image | persistent | volatile
    integrity: str | None = "none"       # dm-verity | none | fs-verity | ...
    evidence: list[dict] = field(default_factory=list)
    observed: bool = True
    lower: list[str] | None = None       # overlay lower dirs
    upper: str | None = None             # overlay upper dir
    work: str | None = None
    kind: str | None = None              # block | tmpfs | overlay | bind | squashfs | erofs | pseudo
    volume: object | None = field(default=None, repr=False)   # immutools.disk.Volume when known

    def __post_init__(self) -> None:
        self.target = normalize(self.target)
        self.options = list(self.options)
        if self.kind is None:
            self.kind = _kind_for(self.fstype, self.options)
        if self.kind == "overlay" and self.upper is None and self.lower is None:
            self._overlay_from_options()
        if self.access is None:
            self.access = access_from_options(self.options, self.fstype)
        if self.persistence is None:
            if self.kind == "tmpfs":
                self.persistence = "volatile"
            elif self.kind in ("squashfs", "erofs") or self.integrity == "dm-verity":
                self.persistence = "image"
            else:
                self.persistence = "persistent"

    # ---- constructors from the places mounts are described ---------------------------------------
    @classmethod
    def from_fstab(cls, entry, tree=None, observed: bool = True, **fields) -> "MountEntry":
        """From an ``immutools.system.fstab.FstabEntry``; evidence names the file and line."""
        where = entry.path or "fstab"
        source = tree.source_of(where) if tree is not None and entry.path else where
        detail = f"line {entry.line}: {entry.source} {entry.target} {entry.fstype} {','.join(entry.options) or 'defaults'}"
        return cls(entry.target, entry.source, entry.fstype, list(entry.options),
                   evidence=[make_evidence(source, detail, observed)], observed=observed, **fields)

    @classmethod
    def from_mount_unit(cls, unit, tree=None, observed: bool = True, **fields) -> "MountEntry":
        """From an ``immutools.system.units.MountUnit``; evidence names What=/Where=/... lines."""
        return cls(unit.where or "/", unit.what, unit.type, list(unit.options),
                   evidence=unit.evidence(tree), observed=observed, **fields)

    @classmethod
    def from_cmdline(cls, target: str, mount, cmdline, **fields) -> "MountEntry":
        """From ``KernelCmdline.root_mount()``/``usr_mount()`` (a ``CmdlineMount``)."""
        evidence = [cmdline.evidence(key) for key in mount.keys if cmdline.has(key)]
        fields.setdefault("observed", cmdline.observed)
        return cls(target, mount.what, mount.fstype, list(mount.options), evidence=evidence, **fields)

    def _overlay_from_options(self) -> None:
        for opt in self.options:
            key, eq, value = opt.partition("=")
            if not eq:
                continue
            if key == "lowerdir":
                self.lower = [v for v in value.split(":") if v]
            elif key == "upperdir":
                self.upper = value
            elif key == "workdir":
                self.work = value

    def to_report(self) -> dict:
        row = {
            "target": self.target,
            "source": self.source,
            "fstype": self.fstype,
            "options": list(self.options),
            "access": self.access,
            "persistence": self.persistence,
            "integrity": self.integrity,
            "evidence": list(self.evidence),
            "observed": self.observed,
            "kind": self.kind,
        }
        if self.kind == "overlay":
            row.update(lower=self.lower, upper=self.upper, work=self.work)
        return row


class MountTable:
    """A mount stack: ``add`` in mount order; a later mount on the same target hides the earlier."""

    def __init__(self, entries: list[MountEntry] | None = None):
        self._all: list[MountEntry] = []
        for entry in entries or []:
            self.add(entry)

    def add(self, entry: MountEntry) -> MountEntry:
        """Add a mount made after all the ones already added."""
        self._all.append(entry)
        return entry

    def position(self, entry: MountEntry) -> int:
        for n, e in enumerate(self._all):
            if e is entry:
                return n
        return len(self._all)

    def stack(self, target: str) -> list[MountEntry]:
        """Every mount made on ``target``, earliest first."""
        target = normalize(target)
        return [e for e in self._all if e.target == target]

    def entries(self) -> list[MountEntry]:
        """The visible mounts (top of each target's stack), in the order they were mounted."""
        top: dict[str, MountEntry] = {}
        for entry in self._all:
            top[entry.target] = entry
        return [e for e in self._all if top[e.target] is e]

    def __iter__(self):
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def get(self, target: str) -> MountEntry | None:
        found = self.stack(target)
        return found[-1] if found else None

    def lookup(self, path: str, exclude: set | None = None, before: int | None = None) -> MountEntry | None:
        """The visible mount covering ``path``: the longest target that is ``path`` or one of its
        parent directories (whole components: ``/usrx`` is not under ``/usr``). ``before``: as the
        table stood before the mount at that position was made."""
        path = normalize(path)
        best = None
        pool = self._all[:before] if before is not None else self._all
        top: dict[str, MountEntry] = {}
        for entry in pool:
            if not (exclude and id(entry) in exclude):
                top[entry.target] = entry
        for entry in top.values():
            if exclude and id(entry) in exclude:
                continue
            if is_within(path, entry.target) and (best is None or len(entry.target) > len(best.target)):
                best = entry
        return best

    def to_report(self) -> list[dict]:
        return [e.to_report() for e in self.entries()]


@dataclass
class PathState:
    path: str
    state: str                            # read-only | volatile | persistent
    via: str | None                       # the mount covering the path
    evidence: list[dict]
    chain: list[str] = field(default_factory=list)    # mounts consulted, covering one first
    note: str | None = None
    resolved: str | None = None           # the path after symlinks, when it differs

    def to_report(self) -> dict:
        row = {"path": self.path, "state": self.state, "via": self.via, "evidence": list(self.evidence)}
        if len(self.chain) > 1:
            row["chain"] = list(self.chain)
        if self.note:
            row["note"] = self.note
        if self.resolved and self.resolved != self.path:
            row["resolved"] = self.resolved
        return row


def mount_state(table: MountTable, entry: MountEntry) -> tuple[str, list[MountEntry], str | None]:
    """(state, mounts consulted in order, note) for one mount."""
    return _state(table, entry, [], set())


def _state(table: MountTable, entry: MountEntry, chain: list[MountEntry], excluded: set) -> tuple[str, list[MountEntry], str | None]:
    chain = chain + [entry]
    if len(chain) > _MAX_RESOLVE:
        return "persistent", chain, "mount resolution too deep; assumed persistent"
    if entry.access == "ro":
        return "read-only", chain, None
    if entry.kind == "tmpfs" or entry.fstype in VOLATILE_TYPES:
        return "volatile", chain, None
    if entry.integrity == "dm-verity" or entry.fstype in READ_ONLY_TYPES:
        return "read-only", chain, None
    if entry.kind == "overlay":
        if not entry.upper:
            return "read-only", chain, None
        return _follow(table, entry.upper, chain, excluded, "overlay upper dir")
    if entry.kind == "bind" and entry.source:
        return _follow(table, entry.source, chain, excluded, "bind source")
    if entry.persistence == "volatile":
        return "volatile", chain, None
    return "persistent", chain, None


def _follow(table: MountTable, path: str, chain: list[MountEntry], excluded: set, what: str):
    current = chain[-1]
    # at mount time: what the source was on before this mount was made; else the final table
    target = table.lookup(path, exclude=excluded, before=table.position(current))
    if target is None:
        target = table.lookup(path, exclude=excluded | {id(current)})
    if target is None:
        return "persistent", chain, f"{what} {path} is on no known mount; assumed persistent"
    if any(target is m for m in chain):
        # A cycle: resolve as if the mounts in the cycle were not there.
        names = " -> ".join([m.target for m in chain] + [target.target])
        excluded = excluded | {id(m) for m in chain if m.kind in ("bind", "overlay")}
        fallback = table.lookup(path, exclude=excluded)
        if fallback is None:
            return "persistent", chain, f"bind/overlay cycle {names}; assumed persistent"
        state, sub, _ = _state(table, fallback, [], excluded)
        return state, chain + sub, f"bind/overlay cycle {names}; resolved without it"
    return _state(table, target, chain, excluded)


def path_states(table: MountTable, paths: list[str] | tuple[str, ...] | None = None, resolve=None) -> list[PathState]:
    """States for ``paths`` (default: the standard top-level paths) plus every mount target.
    ``resolve(path)`` may map a path through symlinks (``OsTree.realpath``) before the lookup.
    Paths on no mount are left out."""
    wanted: list[str] = []
    for p in list(paths if paths is not None else STANDARD_PATHS):
        p = normalize(p)
        if p not in wanted:
            wanted.append(p)
    for target in sorted((e.target for e in table.entries()), key=lambda t: (t.count("/"), t)):
        if target not in wanted:
            wanted.append(target)
    rows: list[PathState] = []
    for path in wanted:
        resolved = path
        if resolve is not None:
            try:
                resolved = normalize(resolve(path))
            except Exception:  # noqa: BLE001 - a path missing in the image is looked up as written
                resolved = path
        entry = table.lookup(resolved)
        if entry is None:
            continue
        state, chain, note = mount_state(table, entry)
        evidence: list[dict] = []
        for m in chain:
            for ev in m.evidence:
                if ev not in evidence:
                    evidence.append(ev)
        if not evidence:
            evidence.append(make_evidence(f"mount table: {entry.target}", f"{entry.fstype or '?'} from {entry.source or '?'}", entry.observed))
        rows.append(PathState(path, state, entry.target, evidence, [m.target for m in chain], note,
                              resolved if resolved != path else None))
    return rows


def path_rows(table: MountTable, paths=None, resolve=None) -> list[dict]:
    """``path_states`` as the report's ``paths`` rows."""
    return [row.to_report() for row in path_states(table, paths, resolve)]


# ---------------------------------------------------------------------------------------------
# Source resolution
# ---------------------------------------------------------------------------------------------
@dataclass
class SourceMatch:
    volume: object                        # immutools.disk.Volume
    spec: SourceSpec
    how: str                              # "filesystem label ROOT", "GPT partition name USR-A", ...
    verity: bool = False                  # reached through a dm-verity device
    observed: bool = True                 # False when inferred (kernel device names)


def _match_tag(spec: SourceSpec, image) -> tuple[object, str] | None:
    value = spec.value
    for vol in image.volumes:
        part = getattr(vol, "partition", None)
        ident = getattr(vol, "identity", None)
        if spec.kind == "label" and ident is not None and ident.label is not None and ident.label == value:
            return vol, f"filesystem label {value}"
        if spec.kind == "uuid" and ident is not None and ident.uuid and ident.uuid.lower() == value.lower():
            return vol, f"filesystem UUID {value}"
        if spec.kind == "partlabel" and part is not None and part.label == value:
            return vol, f"GPT partition name {value}"
        if spec.kind == "partuuid" and part is not None and part.uuid and part.uuid.lower() == value.lower():
            if spec.offset:
                target = image.volume(number=part.number + spec.offset) if hasattr(image, "volume") else None
                if target is None:
                    return None
                return target, f"partition {part.number}{spec.offset:+d} from PARTUUID {value}"
            return vol, f"GPT partition GUID {value}"
    return None


def resolve_source_match(spec: str, image, cmdline=None, _depth: int = 0) -> SourceMatch | None:
    """Which volume ``spec`` names, and how we know; None when it names none we can see.
    ``/dev/mapper/usr``/``root`` and ``/dev/dm-N`` need the kernel command line (``cmdline``) that
    says what the verity device is built from."""
    if _depth > 4:
        return None
    parsed = parse_source(spec)
    if parsed.is_tag:
        found = _match_tag(parsed, image)
        return SourceMatch(found[0], parsed, found[1]) if found else None
    if parsed.kind == "partition":
        vol = image.volume(number=parsed.number)
        if vol is None:
            return None
        return SourceMatch(vol, parsed, f"kernel device name {spec} (partition {parsed.number})", observed=False)
    if cmdline is None:
        return None
    data = None
    if parsed.kind == "mapper" and parsed.value == "usr":
        verity = cmdline.usr_verity()
        data = verity and verity.get("data")
    elif parsed.kind == "mapper" and parsed.value == "root":
        verity = cmdline.root_verity()
        data = verity and verity.get("data")
    if parsed.kind in ("mapper", "dm") and data is None:
        for dev in cmdline.dm_devices():
            if (parsed.kind == "dm" and dev.index == parsed.number) or (parsed.kind == "mapper" and dev.name == parsed.value):
                for table in dev.tables:
                    if table.target == "verity" and table.data_device:
                        data = table.data_device
                        break
    if not data:
        return None
    inner = resolve_source_match(data, image, cmdline, _depth + 1)
    if inner is None:
        return None
    return SourceMatch(inner.volume, parsed, f"dm-verity device {spec} over {data} ({inner.how})", True, inner.observed)


def resolve_source(spec: str, image, cmdline=None):
    """The ``Volume`` that ``spec`` names, or None. See ``resolve_source_match``."""
    found = resolve_source_match(spec, image, cmdline)
    return found.volume if found else None
