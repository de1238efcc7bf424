"""systemd unit files read offline from an OS tree: lookup, drop-ins, masking, enablement.

Our own reader because no library parses systemd units outside a running systemd. Rules, from
systemd.unit(5), systemd.syntax(7) and src/shared/conf-parser.c, src/shared/install.c:

* syntax: ``[Section]`` headers, ``Key=Value`` (whitespace around both stripped), ``#``/``;``
  comment lines (also inside a continuation), a line ending in ``\\`` continues on the next with
  the backslash replaced by a space; repeated keys accumulate, an empty assignment resets the list;
* lookup: the first of ``UNIT_PATHS`` holding the name wins (``/etc`` hides ``/usr``); a unit
  file that is empty or a symlink to ``/dev/null`` is *masked*; a symlink to another unit file is an
  alias; ``foo@bar.service`` falls back to the template ``foo@.service``;
* drop-ins: ``*.conf`` in ``<unit>.d/``, ``<template>.d/``, the dash-prefix directories
  (``a-b-.service.d/`` for ``a-b-c.service``) and the top-level ``<type>.d/`` of every unit
  directory; one list sorted by file name, a name in a higher-precedence directory hides the same
  name lower down, a drop-in linked to /dev/null is dropped;
* enablement: a symlink for the unit in some ``<unit>.wants/``, ``.requires/`` or ``.upholds/``
  directory makes the owner pull it in at boot (``enabled`` here, whichever directory it is in);
  ``state`` is what ``systemctl is-enabled`` says for the unit file (which only counts links under
  /etc, so a vendor link in /usr/lib/.../*.wants reads ``disabled`` or ``static`` there);
* presets (``*.preset``, systemd.preset(5): the first matching line wins, no match enables): on a
  *first boot* -- ``/etc/machine-id`` missing or ``uninitialized`` (machine-id(5) "First Boot
  Semantics"; empty or a real ID is not one) -- systemd applies them before loading units
  (src/core/manager.c ``manager_preset_all``, enable-only mode), so a unit whose preset says
  ``enable`` gets its ``[Install]`` WantedBy=/RequiredBy=/UpheldBy= links then: it counts as
  enabled, with the preset line as (inferred) evidence; ``state`` stays what the image holds.

Unit names and paths convert with ``escape_path``/``unescape_path``, identical to
``systemd-escape --path`` (checked in the tests). Every parsed value knows its file and line.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections import deque
from dataclasses import dataclass, field

from immutools.errors import ImmutoolsError
from immutools.report.model import evidence as make_evidence
from immutools.system.rootview import OsTree, as_tree, normalize

UNIT_PATHS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
PRESET_PATHS = ("/etc/systemd/system-preset", "/usr/lib/systemd/system-preset", "/lib/systemd/system-preset")
UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope")
DEPENDENCY_DIRS = (".wants", ".requires", ".upholds")
DEPENDENCY_KEYS = ("Wants", "Requires", "Requisite", "BindsTo", "Upholds")
_MAX_UNIT_BYTES = 1024 * 1024
_MAX_NAME = 255
_PATH_MAX = 4096
_VALID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


# ---------------------------------------------------------------------------------------------
# Escaping (src/basic/unit-name.c: unit_name_escape, unit_name_path_escape and the unescapes)
# ---------------------------------------------------------------------------------------------
def escape(text: str) -> str:
    """``systemd-escape``: '/' -> '-', bytes outside [A-Za-z0-9:_.] and a leading '.' -> ``\\xNN``."""
    out = []
    data = text.encode("utf-8", "surrogateescape")
    for i, byte in enumerate(data):
        ch = chr(byte)
        if ch == "/":
            out.append("-")
        elif (i == 0 and ch == ".") or ch not in _VALID:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _simplify(path: str) -> str:
    """systemd path_simplify: drop empty and '.' components and the trailing slash (keeps '..')."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    lead = "/" if path.startswith("/") else ""
    return lead + "/".join(parts) if parts else (lead or ".")


def _is_normalized(path: str) -> bool:
    if not path or len(path.encode("utf-8", "surrogateescape")) >= _PATH_MAX:
        return False
    if "//" in path:
        return False
    parts = path.split("/")
    if any(p in (".", "..") for p in parts):
        return False
    return all(len(p.encode("utf-8", "surrogateescape")) <= _MAX_NAME for p in parts)


def escape_path(path: str) -> str:
    """``systemd-escape --path``: ``/var/lib/foo`` -> ``var-lib-foo``, ``/`` -> ``-``.
    Raises ValueError for paths with ``..`` components (systemd refuses them too)."""
    simple = _simplify(path)
    if simple in ("/", "."):
        return "-"
    if not _is_normalized(simple):
        raise ValueError(f"{path!r} is not a normalized path")
    return escape(simple.strip("/"))


def unescape(text: str) -> str:
    """``systemd-escape --unescape``: '-' -> '/', ``\\xNN`` -> byte. Raises ValueError on a bad escape."""
    raw = bytearray()
    data = text.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(data):
        c = data[i]
        if c == ord("-"):
            raw.append(ord("/"))
            i += 1
        elif c == ord("\\"):
            if data[i + 1:i + 2] != b"x" or len(data) < i + 4:
                raise ValueError(f"{text!r}: bad escape")
            try:
                value = int(data[i + 2:i + 4], 16)
            except ValueError:
                raise ValueError(f"{text!r}: bad escape") from None
            if value == 0:
                raise ValueError(f"{text!r}: escaped NUL")
            raw.append(value)
            i += 4
        else:
            raw.append(c)
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def unescape_path(text: str) -> str:
    """``systemd-escape --unescape --path``: ``var-lib-foo`` -> ``/var/lib/foo``, ``-`` -> ``/``."""
    if not text:
        raise ValueError("empty name")
    if text == "-":
        return "/"
    inner = unescape(text)
    if inner.startswith("/") or inner.endswith("/"):
        raise ValueError(f"{text!r}: leading or trailing slash")
    path = "/" + inner
    if not _is_normalized(path):
        raise ValueError(f"{text!r}: not a normalized path")
    return path


def mount_unit_name(where: str, suffix: str = ".mount") -> str:
    return escape_path(where) + suffix


def split_name(name: str) -> tuple[str, str | None, str]:
    """``getty@tty1.service`` -> (``getty``, ``tty1``, ``service``); no instance -> None; a
    template ``getty@.service`` has instance ``""``."""
    stem, dot, utype = name.rpartition(".")
    if not dot:
        return name, None, ""
    prefix, at, instance = stem.partition("@")
    return prefix, (instance if at else None), utype


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    section: str
    key: str
    value: str
    path: str
    line: int

    def evidence(self, tree: OsTree | None = None, observed: bool = True) -> dict:
        detail = f"[{self.section}] {self.key}={self.value} (line {self.line})"
        source = tree.source_of(self.path) if tree is not None else self.path
        return make_evidence(source, detail, observed)


def parse_unit_text(text: str, path: str) -> tuple[list[Assignment], list[str]]:
    """(assignments in file order, warnings)."""
    out: list[Assignment] = []
    warnings: list[str] = []
    section = ""
    pending: list[str] = []
    pending_line = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped[:1] in ("#", ";"):
            continue                      # comments are dropped, even inside a continuation
        if not pending:
            pending_line = number
        if raw.rstrip("\r").endswith("\\") and (len(raw) - len(raw.rstrip("\\"))) % 2 == 1:
            pending.append(raw.rstrip("\r")[:-1] + " ")
            continue
        pending.append(raw)
        line = "".join(pending).strip()
        pending = []
        if not line:
            continue
        if line.startswith("["):
            if line.endswith("]") and len(line) > 2:
                section = line[1:-1]
            else:
                warnings.append(f"{path} line {pending_line}: bad section header")
            continue
        key, eq, value = line.partition("=")
        if not eq:
            warnings.append(f"{path} line {pending_line}: not an assignment")
            continue
        if not section:
            warnings.append(f"{path} line {pending_line}: assignment outside a section")
            continue
        out.append(Assignment(section, key.strip(), value.strip(), path, pending_line))
    if pending:
        line = "".join(pending).strip()
        key, eq, value = line.partition("=")
        if eq and section:
            out.append(Assignment(section, key.strip(), value.strip(), path, pending_line))
    return out, warnings


@dataclass
class Unit:
    """A unit as systemd would load it: the fragment plus drop-ins, in order."""

    name: str
    path: str                            # the fragment, as found in the search path
    fragment: str                        # its canonical path (the alias target, if any)
    dropins: list[str]
    assignments: list[Assignment]
    warnings: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        return split_name(self.name)[2]

    def _assigned(self, section: str, key: str) -> list[Assignment]:
        out: list[Assignment] = []
        for a in self.assignments:
            if a.section == section and a.key == key:
                if a.value == "":
                    out = []                 # empty assignment resets the list
                else:
                    out.append(a)
        return out

    def assignments_of(self, section: str, key: str) -> list[Assignment]:
        return self._assigned(section, key)

    def values(self, section: str, key: str) -> list[str]:
        return [a.value for a in self._assigned(section, key)]

    def value(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value (None/default when unset or reset by an empty assignment)."""
        found = self._assigned(section, key)
        return found[-1].value if found else default

    def assignment(self, section: str, key: str) -> Assignment | None:
        found = self._assigned(section, key)
        return found[-1] if found else None

    def list_values(self, section: str, key: str) -> list[str]:
        """Space-separated list settings (``Wants=a b``) flattened."""
        return [w for v in self.values(section, key) for w in v.split()]

    def has_section(self, section: str) -> bool:
        return any(a.section == section for a in self.assignments)

    @property
    def files(self) -> list[str]:
        return [self.fragment] + self.dropins


@dataclass
class MountUnit:
    name: str
    path: str
    what: str | None
    where: str | None
    type: str | None
    options: list[str]
    unit: Unit

    def evidence(self, tree: OsTree | None = None) -> list[dict]:
        out = []
        for key in ("What", "Where", "Type", "Options"):
            a = self.unit.assignment("Mount", key)
            if a is not None:
                out.append(a.evidence(tree))
        return out


@dataclass
class Link:
    """A dependency symlink: ``owner`` (a target) pulls the unit in from ``path``."""

    owner: str
    kind: str                            # wants | requires | upholds
    path: str                            # the symlink (for a preset link: the preset file)
    vendor: bool                         # below /usr or /lib rather than /etc
    preset: "PresetMatch | None" = None  # made by systemd from this preset rule at first boot


@dataclass
class PresetMatch:
    action: str                          # enable | disable
    pattern: str | None
    path: str | None
    line: int | None


@dataclass(frozen=True)
class FirstBoot:
    """Whether the image's next boot is a first boot (machine-id(5) "First Boot Semantics")."""

    first_boot: bool | None              # None: /etc/machine-id unreadable
    path: str
    detail: str


@dataclass
class Enablement:
    name: str
    found: bool
    masked: bool = False
    mask_path: str | None = None
    state: str | None = None             # systemctl is-enabled: enabled/disabled/static/masked/alias/indirect
    links: list[Link] = field(default_factory=list)
    required_by: list[tuple[str, str, str]] = field(default_factory=list)   # (unit, key, file)
    preset: PresetMatch | None = None
    fragment: str | None = None
    reachable: bool | None = None        # pulled in from default.target (None: no default.target)
    first_boot: "FirstBoot | None" = None
    condition_failure: dict | None = None  # a ConditionPath*= that fails in the image: started, then skipped

    @property
    def enabled(self) -> bool:
        """Some unit pulls it in: a dependency symlink (.wants/.requires/.upholds, /etc or vendor)
        or a Wants=/Requires=/... of another unit file. ``reachable`` says whether that chain
        starts at default.target."""
        return self.found and not self.masked and bool(self.links or self.required_by)

    @property
    def wanted_by(self) -> list[str]:
        return sorted({link.owner for link in self.links} | {u for u, _k, _p in self.required_by})

    def evidence(self, tree: OsTree | None = None) -> list[dict]:
        src = (lambda p: tree.source_of(p, follow=False)) if tree is not None else (lambda p: p)
        out = []
        if self.masked and self.mask_path:
            out.append(make_evidence(src(self.mask_path), f"{self.name} is masked"))
        for link in self.links:
            if link.preset is not None:
                why = self.first_boot.detail if self.first_boot is not None else "first boot"
                out.append(make_evidence(src(link.path), f"{link.owner} {link.kind} {self.name} from preset line "
                                         f"{link.preset.line} 'enable {link.preset.pattern or '*'}' at first boot ({why})",
                                         False))
            else:
                out.append(make_evidence(src(link.path), f"{link.owner} {link.kind} {self.name}"))
        for unit, key, path in self.required_by:
            out.append(make_evidence(src(path), f"{unit} {key}={self.name}"))
        if not out and self.fragment:
            out.append(make_evidence(src(self.fragment), f"{self.name}: unit file state {self.state}"))
        if self.condition_failure is not None:
            out.append(self.condition_failure)
        return out


def path_condition_failure(unit: Unit, tree) -> dict | None:
    """Evidence when a unit's ``ConditionPathExists=``/``ConditionPathIsSymbolicLink=``/
    ``ConditionPathIsDirectory=`` fails on ``tree`` (systemd would skip the unit); None when they
    hold or cannot be decided. ``!`` negates; a ``|`` (triggering) condition is not decided here;
    paths under /dev, /proc, /sys and /run are runtime state an image cannot show (systemd.unit(5))."""
    checks = {
        "ConditionPathExists": lambda st: st is not None,
        "ConditionPathIsSymbolicLink": lambda st: st is not None and st.is_symlink,
        "ConditionPathIsDirectory": lambda st: st is not None and st.is_dir,
    }
    for key, test in checks.items():
        for a in unit.assignments_of("Unit", key):
            value = a.value.strip()
            if value.startswith("|"):
                continue
            negate = value.startswith("!")
            path = value.lstrip("!")
            if not path.startswith("/") or path.startswith(("/dev/", "/proc/", "/sys/", "/run/")):
                continue
            try:
                st = tree.lstat(path) if key == "ConditionPathIsSymbolicLink" else tree.stat(path)
            except ImmutoolsError:
                st = None
            if test(st) == negate:
                return a.evidence(tree) | {"detail": f"{key}={value} fails: the unit is skipped"}
    return None


# ---------------------------------------------------------------------------------------------
# The unit set of one OS tree
# ---------------------------------------------------------------------------------------------
@dataclass
class _Found:
    name: str
    path: str                            # path in the search directory
    masked: bool
    fragment: str | None                 # canonical path of the file read
    alias_of: str | None                 # the unit name it links to, when a symlink to another name
    is_link: bool = False


class UnitSet:
    """The unit files of an OS tree (``OsTree`` or any ``FileSystem``)."""

    def __init__(self, fs, paths: tuple[str, ...] = UNIT_PATHS, preset_paths: tuple[str, ...] = PRESET_PATHS):
        self.tree = as_tree(fs)
        self.warnings: list[str] = []
        self.paths = self._existing_dirs(paths)
        self.preset_paths = self._existing_dirs(preset_paths)
        self._found: dict[str, _Found | None] = {}
        self._units: dict[str, Unit | None] = {}
        self._links: dict[str, list[Link]] | None = None
        self._dependents: dict[str, list[tuple[str, str, str]]] | None = None
        self._presets: list[tuple[str, str, str, int]] | None = None
        self._pulled: dict[str, str | None] | None = None
        self._first_boot: FirstBoot | None = None
        self._preset_members: dict[str, list[str]] = {}      # owner -> units linked by first-boot presets
        # Directory listings, read once: a full-size system has hundreds of units and each is looked
        # for in every search directory and every drop-in directory name.
        self._listings: dict[str, list[str]] = {}
        self._entry_sets: dict[str, frozenset[str]] = {}

    def _existing_dirs(self, paths) -> list[str]:
        """Search directories that exist, once each (``/lib`` is often ``/usr/lib``)."""
        out: list[str] = []
        seen: set[str] = set()
        for path in paths:
            try:
                if not self.tree.stat(path).is_dir:
                    continue
                real = self.tree.realpath(path)
            except ImmutoolsError:
                continue
            if real not in seen:
                seen.add(real)
                out.append(path)
        return out

    def _lstat(self, path: str):
        try:
            return self.tree.lstat(path)
        except ImmutoolsError:
            return None

    def _readlink(self, path: str) -> str | None:
        try:
            return self.tree.readlink(path)
        except ImmutoolsError:
            return None

    def _listdir(self, path: str) -> list[str]:
        cached = self._listings.get(path)
        if cached is None:
            parent, base = path.rsplit("/", 1) if path.count("/") > 1 else ("", path)
            if parent in self._entry_sets and base.lstrip("/") not in self._entry_sets[parent]:
                cached = []                  # not in its parent's listing: no such directory
            else:
                try:
                    cached = self.tree.listdir(path)
                except ImmutoolsError:
                    cached = []
            self._listings[path] = cached
        return cached

    def _entries(self, directory: str) -> frozenset[str]:
        """The names in a search directory (for cheap "is it there" checks before a lookup)."""
        names = self._entry_sets.get(directory)
        if names is None:
            names = self._entry_sets[directory] = frozenset(self._listdir(directory))
        return names

    # ---- lookup -------------------------------------------------------------------------------
    def find(self, name: str) -> _Found | None:
        if name in self._found:
            return self._found[name]
        found = self._find_exact(name)
        if found is None:
            prefix, instance, utype = split_name(name)
            if instance:
                found = self._find_exact(f"{prefix}@.{utype}")
        self._found[name] = found
        return found

    def _find_exact(self, name: str) -> _Found | None:
        if "/" in name or not name:
            return None
        for directory in self.paths:
            if name not in self._entries(directory):
                continue
            path = f"{directory}/{name}"
            st = self._lstat(path)
            if st is None:
                continue
            if st.is_symlink:
                target = self._readlink(path)
                if target is not None and normalize(target) == "/dev/null":
                    return _Found(name, path, True, None, None)
                try:
                    real = self.tree.realpath(path)
                    real_st = self.tree.stat(path)
                except ImmutoolsError:
                    self.warnings.append(f"{path}: dangling unit symlink")
                    continue
                if real_st.is_file and real_st.size == 0:
                    return _Found(name, path, True, real, None)
                alias = posixpath.basename(real)
                return _Found(name, path, False, real, alias if alias != name else None, True)
            if st.is_file:
                return _Found(name, path, st.size == 0, path, None)
        return None

    def dropin_dirs(self, name: str) -> list[str]:
        """Drop-in directories for ``name``, highest precedence first."""
        prefix, instance, utype = split_name(name)
        names = [f"{name}.d"]
        if instance:
            names.append(f"{prefix}@.{utype}.d")
        parts = prefix.split("-")
        for n in range(len(parts) - 1, 0, -1):
            names.append("-".join(parts[:n]) + f"-.{utype}.d")
        if utype:
            names.append(f"{utype}.d")
        return [f"{d}/{n}" for d in self.paths for n in names]

    def dropins(self, name: str) -> list[str]:
        chosen: dict[str, str] = {}
        masked: set[str] = set()
        for directory in self.dropin_dirs(name):
            parent, base = directory.rsplit("/", 1)
            if parent in self.paths and base not in self._entries(parent):
                continue
            for entry in self._listdir(directory):
                if not entry.endswith(".conf") or entry in chosen or entry in masked:
                    continue
                path = f"{directory}/{entry}"
                target = self._readlink(path)
                if target is not None and normalize(target) == "/dev/null":
                    masked.add(entry)
                    continue
                chosen[entry] = path
        return [chosen[k] for k in sorted(chosen)]

    def load(self, name: str) -> Unit | None:
        """The unit with drop-ins merged; None when not found or masked."""
        if name in self._units:
            return self._units[name]
        found = self.find(name)
        unit = None
        if found is not None and not found.masked and found.fragment:
            assignments, warnings = self._parse(found.fragment)
            dropins = self.dropins(name)
            if found.alias_of:
                dropins = sorted(set(dropins) | set(self.dropins(found.alias_of)), key=posixpath.basename)
            for path in dropins:
                more, more_warnings = self._parse(path)
                assignments += more
                warnings += more_warnings
            unit = Unit(name, found.path, found.fragment, dropins, assignments, warnings)
        self._units[name] = unit
        return unit

    def _parse(self, path: str) -> tuple[list[Assignment], list[str]]:
        try:
            text = self.tree.read_text(path, max_bytes=_MAX_UNIT_BYTES)
        except ImmutoolsError as exc:
            return [], [f"{path}: unreadable: {exc}"]
        return parse_unit_text(text, path)

    def names(self) -> list[str]:
        """Every unit file name in the search paths (not drop-in or .wants directories)."""
        out: set[str] = set()
        for directory in self.paths:
            for entry in self._listdir(directory):
                if "." in entry and entry.rsplit(".", 1)[1] in UNIT_TYPES:
                    out.add(entry)
        return sorted(out)

    # ---- enablement ---------------------------------------------------------------------------
    def _all_links(self) -> dict[str, list[Link]]:
        if self._links is None:
            links: dict[str, list[Link]] = {}
            for directory in self.paths:
                vendor = not directory.startswith("/etc/")
                for entry in self._listdir(directory):
                    for suffix in DEPENDENCY_DIRS:
                        if not entry.endswith(suffix):
                            continue
                        owner = entry[: -len(suffix)]
                        for member in self._listdir(f"{directory}/{entry}"):
                            links.setdefault(member, []).append(
                                Link(owner, suffix[1:], f"{directory}/{entry}/{member}", vendor))
            self._links = links
            if self.first_boot().first_boot:
                for member, made in self._preset_links(links).items():
                    links.setdefault(member, []).extend(made)
                    for link in made:
                        self._preset_members.setdefault(link.owner, []).append(member)
        return self._links

    # ---- first boot -----------------------------------------------------------------------------
    def first_boot(self) -> FirstBoot:
        """machine-id(5): a missing /etc/machine-id or one reading ``uninitialized`` makes the
        next boot a first boot; an empty file or a machine ID does not."""
        if self._first_boot is None:
            path = "/etc/machine-id"
            try:
                if not self.tree.exists(path):
                    self._first_boot = FirstBoot(True, path, f"{path} is missing")
                else:
                    text = self.tree.read_text(path, max_bytes=4096).strip()
                    if text == "uninitialized":
                        self._first_boot = FirstBoot(True, path, f"{path} reads 'uninitialized'")
                    elif not text:
                        self._first_boot = FirstBoot(False, path, f"{path} is empty (not a first boot)")
                    else:
                        self._first_boot = FirstBoot(False, path, f"{path} holds a machine ID")
            except ImmutoolsError as exc:
                self._first_boot = FirstBoot(None, path, f"{path} unreadable: {exc}")
        return self._first_boot

    def _preset_links(self, links: dict[str, list[Link]]) -> dict[str, list[Link]]:
        """The links ``systemctl preset-all --preset-mode=enable-only`` would make: for each unit
        file with no dependency link yet whose preset is ``enable``, its [Install] WantedBy=,
        RequiredBy= and UpheldBy= (templates only through DefaultInstance=)."""
        out: dict[str, list[Link]] = {}
        keys = (("WantedBy", "wants"), ("RequiredBy", "requires"), ("UpheldBy", "upholds"))
        for name in self.names():
            found = self.find(name)
            if found is None or found.masked or found.alias_of or links.get(name):
                continue
            unit = self.load(name)
            if unit is None or not unit.has_section("Install"):
                continue
            match = self.preset(name)
            if match.action != "enable":
                continue
            member = name
            prefix, instance, utype = split_name(name)
            if instance == "":
                default = unit.value("Install", "DefaultInstance")
                if not default:
                    continue
                member = f"{prefix}@{default}.{utype}"
            made = [Link(owner, kind, match.path or "(no preset file: systemd enables by default)", False, match)
                    for key, kind in keys for owner in unit.list_values("Install", key)]
            if made:
                out[member] = made
        return out

    def _all_dependents(self) -> dict[str, list[tuple[str, str, str]]]:
        """Units named in other units' Wants=/Requires=/... (only units that are pulled in
        themselves count at boot; callers follow ``pulled_in``)."""
        if self._dependents is None:
            deps: dict[str, list[tuple[str, str, str]]] = {}
            for name in self.names():
                unit = self.load(name)
                if unit is None:
                    continue
                for key in DEPENDENCY_KEYS:
                    for a in unit.assignments_of("Unit", key):
                        for member in a.value.split():
                            deps.setdefault(member, []).append((name, key, a.path))
            self._dependents = deps
        return self._dependents

    def links_to(self, name: str) -> list[Link]:
        return list(self._all_links().get(name, []))

    def _config_aliases(self, found: _Found) -> list[str]:
        """Symlinks directly in /etc/systemd/system naming ``found``'s file under another name."""
        out = []
        for directory in self.paths:
            if directory.startswith("/etc/"):
                for entry in self._listdir(directory):
                    path = f"{directory}/{entry}"
                    if entry == found.name or self._readlink(path) is None:
                        continue
                    try:
                        if self.tree.realpath(path) == found.fragment:
                            out.append(path)
                    except ImmutoolsError:
                        continue
        return out

    def unit_file_state(self, name: str) -> str | None:
        """What ``systemctl is-enabled`` says for the unit file (install.c
        ``unit_file_lookup_state``); None when there is none."""
        found = self.find(name)
        if found is None:
            return None
        if found.masked:
            return "masked"
        instance = split_name(name)[1]
        if found.alias_of and not instance:
            return "alias"
        unit = self.load(name)
        if unit is None:
            return None
        install = {k: unit.list_values("Install", k) for k in ("WantedBy", "RequiredBy", "UpheldBy", "Alias", "Also")}
        links = [link for link in self.links_to(name) if link.preset is None]   # what the image holds
        other_names = [posixpath.basename(p) for p in self._config_aliases(found)]
        if any(not link.vendor for link in links) or set(other_names) & set(install["Alias"]):
            return "enabled"
        if instance and links:
            return "static"               # an instance linked in a vendor directory
        if found.is_link and found.path.startswith("/etc/"):
            return "linked"
        if other_names:
            return "indirect"             # in use under another name (default.target -> it)
        if not any(install.values()):
            return "static"
        if not (install["WantedBy"] or install["RequiredBy"] or install["UpheldBy"] or install["Alias"]):
            return "indirect"
        return "disabled"

    def enablement(self, name: str) -> Enablement:
        found = self.find(name)
        if found is None:
            return Enablement(name, False)
        result = Enablement(name, True, found.masked, found.path if found.masked else None,
                            self.unit_file_state(name), fragment=found.fragment)
        if not found.masked:
            result.links = self.links_to(name)
            result.required_by = list(self._all_dependents().get(name, []))
            if self.default_target() is not None:
                if self._pulled is None:
                    self._pulled = self.pulled_in()
                result.reachable = name in self._pulled
        result.preset = self.preset(name)
        if any(link.preset is not None for link in result.links):
            result.first_boot = self.first_boot()
        if result.enabled:
            unit = self.load(name)
            result.condition_failure = path_condition_failure(unit, self.tree) if unit is not None else None
        return result

    def default_target(self) -> str | None:
        """What ``default.target`` is (an alias symlink, usually ``multi-user.target``)."""
        found = self.find("default.target")
        if found is None:
            return None
        return found.alias_of or "default.target"

    def pulled_in(self, start: str | None = None, limit: int = 10_000) -> dict[str, str | None]:
        """Units reachable from ``start`` (default.target) through dependency symlinks and
        Wants=/Requires=/...: {unit: the unit that pulled it in}."""
        start = start or self.default_target() or "default.target"
        parents: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue and len(parents) < limit:
            current = queue.popleft()
            members: list[str] = []
            for directory in self.paths:
                for suffix in DEPENDENCY_DIRS:
                    members += self._listdir(f"{directory}/{current}{suffix}")
            self._all_links()
            members += self._preset_members.get(current, [])
            unit = self.load(current)
            if unit is not None:
                for key in DEPENDENCY_KEYS:
                    members += unit.list_values("Unit", key)
                found = self.find(current)
                if found is not None and found.alias_of and found.alias_of not in parents:
                    members.append(found.alias_of)
            for member in members:
                if member not in parents:
                    found = self.find(member)
                    if found is not None and found.masked:
                        continue
                    parents[member] = current
                    queue.append(member)
        return parents

    # ---- presets ------------------------------------------------------------------------------
    def _preset_rules(self) -> list[tuple[str, str, str, int]]:
        if self._presets is None:
            files: dict[str, str] = {}
            for directory in self.preset_paths:
                for entry in self._listdir(directory):
                    if entry.endswith(".preset") and entry not in files:
                        files[entry] = f"{directory}/{entry}"
            rules = []
            for entry in sorted(files):
                path = files[entry]
                target = self._readlink(path)
                if target is not None and normalize(target) == "/dev/null":
                    continue
                try:
                    text = self.tree.read_text(path, max_bytes=_MAX_UNIT_BYTES)
                except ImmutoolsError as exc:
                    self.warnings.append(f"{path}: unreadable: {exc}")
                    continue
                for number, raw in enumerate(text.splitlines(), 1):
                    words = raw.split()
                    if not words or words[0].startswith(("#", ";")):
                        continue
                    if words[0] in ("enable", "disable") and len(words) >= 2:
                        rules.append((words[0], words[1], path, number))
            self._presets = rules
        return self._presets

    def preset(self, name: str) -> PresetMatch:
        """The first matching preset rule; systemd enables a unit no rule matches."""
        for action, pattern, path, line in self._preset_rules():
            if fnmatch.fnmatchcase(name, pattern):
                return PresetMatch(action, pattern, path, line)
        return PresetMatch("enable", None, None, None)

    # ---- typed views --------------------------------------------------------------------------
    def mount_unit(self, name: str) -> MountUnit | None:
        unit = self.load(name)
        if unit is None:
            return None
        options = [o for v in unit.values("Mount", "Options") for o in v.split(",") if o]
        where = unit.value("Mount", "Where")
        if where is None and name.endswith(".mount"):
            try:
                where = unescape_path(name[: -len(".mount")])
            except ValueError:
                where = None
        return MountUnit(name, unit.fragment, unit.value("Mount", "What"), where, unit.value("Mount", "Type"), options, unit)

    def mount_units(self) -> list[MountUnit]:
        return [m for m in (self.mount_unit(n) for n in self.names() if n.endswith(".mount")) if m is not None]

    def automount_where(self, name: str) -> str | None:
        unit = self.load(name)
        if unit is None:
            return None
        return unit.value("Automount", "Where") or _safe_unescape(name, ".automount")

    def socket_listens(self, name: str) -> dict[str, list[str]]:
        unit = self.load(name)
        if unit is None:
            return {}
        keys = ("ListenStream", "ListenDatagram", "ListenSequentialPacket", "ListenFIFO", "ListenNetlink")
        return {k: unit.values("Socket", k) for k in keys if unit.values("Socket", k)}

    def exec_start(self, name: str) -> list[str]:
        unit = self.load(name)
        return unit.values("Service", "ExecStart") if unit is not None else []


def _safe_unescape(name: str, suffix: str) -> str | None:
    if not name.endswith(suffix):
        return None
    try:
        return unescape_path(name[: -len(suffix)])
    except ValueError:
        return None
