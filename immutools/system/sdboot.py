"""systemd-boot configuration: ``loader/loader.conf`` and Boot Loader Specification type #1
entries (``loader/entries/*.conf``).

Our own parser because the format is small and no library reads it: one ``key value`` per line,
``#`` comments, ``options`` repeated and joined with spaces, ``initrd`` repeatable (UAPI Boot
Loader Specification). Boot counting suffixes (``name+LEFT[-DONE].conf``) are split off the entry
id. The default entry follows systemd-boot (src/boot/efi/boot.c): entries sorted by
``config_entry_compare`` (entries with no tries left last; entries with ``sort-key`` first, by
sort-key, machine-id, then version newest first; then by id newest first using the UAPI version
comparison), then the first whose id matches the ``default`` glob of loader.conf, else the first.
EFI variables (``LoaderEntryDefault``, ``@saved``) do not exist offline and are reported as such.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field
from functools import cmp_to_key

from immutools.errors import ImmutoolsError
from immutools.system.cmdline import KernelCmdline

_COUNTER = re.compile(r"^(?P<stem>.*?)\+(?P<left>\d+)(?:-(?P<done>\d+))?(?P<ext>\.conf)$")
_MAX_ENTRIES = 1024
_MAX_CONF_BYTES = 256 * 1024


def _cmp(a, b) -> int:
    return (a > b) - (a < b)


def _valid_version_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "~-^.")


def version_compare(a: str | None, b: str | None) -> int:
    """UAPI version comparison (systemd ``strverscmp_improved``): -1, 0 or 1."""
    if not a or not b:
        return _cmp(a or "", b or "")
    i = j = 0
    la, lb = len(a), len(b)
    # every second pass consumes at least one character; the cap is only a guard
    for _ in range(2 * (la + lb) + 4):
        while i < la and not _valid_version_char(a[i]):
            i += 1
        while j < lb and not _valid_version_char(b[j]):
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":                 # pre-release: older
            r = _cmp(ca != "~", cb != "~")
            if r:
                return r
            i, j = i + 1, j + 1
            ca = a[i] if i < la else ""
            cb = b[j] if j < lb else ""
        if not ca or not cb:                        # more segments: newer
            return _cmp(ca, cb)
        for sep in "-^.":
            if ca == sep or cb == sep:
                r = _cmp(ca != sep, cb != sep)
                if r:
                    return r
                i, j = i + 1, j + 1
                ca = a[i] if i < la else ""
                cb = b[j] if j < lb else ""
        if ca.isdigit() and ca.isascii() or cb.isdigit() and cb.isascii():
            ea = i
            while ea < la and a[ea].isascii() and a[ea].isdigit():
                ea += 1
            eb = j
            while eb < lb and b[eb].isascii() and b[eb].isdigit():
                eb += 1
            r = _cmp(ea != i, eb != j)              # numeric is newer than alphabetic
            if r:
                return r
            while i < ea and a[i] == "0":
                i += 1
            while j < eb and b[j] == "0":
                j += 1
            r = _cmp(ea - i, eb - j) or _cmp(a[i:ea], b[j:eb])
            if r:
                return r
        else:
            ea = i
            while ea < la and a[ea].isascii() and a[ea].isalpha():
                ea += 1
            eb = j
            while eb < lb and b[eb].isascii() and b[eb].isalpha():
                eb += 1
            n = min(ea - i, eb - j)
            r = _cmp(a[i:i + n], b[j:j + n]) or _cmp(ea - i, eb - j)
            if r:
                return r
        i, j = ea, eb
    return _cmp(a, b)


@dataclass
class LoaderEntry:
    id: str                              # file name, boot counter removed ("fedora.conf")
    path: str                            # where it was read (for evidence)
    title: str | None = None
    version: str | None = None
    machine_id: str | None = None
    sort_key: str | None = None
    linux: str | None = None
    initrd: list[str] = field(default_factory=list)
    efi: str | None = None
    options: str = ""
    devicetree: str | None = None
    architecture: str | None = None
    tries_left: int | None = None
    tries_done: int | None = None
    lines: dict[str, int] = field(default_factory=dict)    # key -> line of its last occurrence
    extra: dict[str, str] = field(default_factory=dict)

    def kernel_cmdline(self, origin: str | None = None) -> KernelCmdline:
        return KernelCmdline(self.options, origin or self.path)


@dataclass
class LoaderConf:
    path: str | None = None
    default: str | None = None
    timeout: str | None = None
    editor: str | None = None
    console_mode: str | None = None
    auto_entries: str | None = None
    secure_boot_enroll: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _lines(text: str):
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            value = rest + " " + value
        yield number, key, value.strip()


def parse_entry(text: str, filename: str, path: str | None = None) -> LoaderEntry:
    """Parse one type #1 entry; ``filename`` gives the id and the boot counters."""
    ident = filename
    left = done = None
    m = _COUNTER.match(filename)
    if m:
        ident = m.group("stem") + m.group("ext")
        left = int(m.group("left"))
        done = int(m.group("done")) if m.group("done") is not None else None
    entry = LoaderEntry(id=ident, path=path or filename, tries_left=left, tries_done=done)
    options: list[str] = []
    for number, key, value in _lines(text):
        entry.lines[key] = number
        if key == "options":
            options.append(value)
        elif key == "initrd":
            entry.initrd.append(value)
        elif key in ("title", "version", "linux", "efi", "devicetree", "architecture"):
            setattr(entry, key, value)
        elif key == "machine-id":
            entry.machine_id = value
        elif key == "sort-key":
            entry.sort_key = value
        else:
            entry.extra[key] = value
    entry.options = " ".join(options)
    return entry


def parse_loader_conf(text: str, path: str | None = None) -> LoaderConf:
    conf = LoaderConf(path=path)
    for number, key, value in _lines(text):
        conf.values[key] = value
        conf.lines[key] = number
        attr = key.replace("-", "_")
        if attr in ("default", "timeout", "editor", "console_mode", "auto_entries", "secure_boot_enroll"):
            setattr(conf, attr, value)
    return conf


def _entry_compare(a: LoaderEntry, b: LoaderEntry) -> int:
    r = _cmp(a.tries_left == 0, b.tries_left == 0)
    if r:
        return r
    r = _cmp(a.sort_key is None, b.sort_key is None)
    if r:
        return r
    if a.sort_key is not None and b.sort_key is not None:
        r = _cmp(a.sort_key, b.sort_key) or _cmp(a.machine_id or "", b.machine_id or "")
        if r:
            return r
        r = -version_compare(a.version, b.version)
        if r:
            return r
    r = -version_compare(a.id, b.id)
    if r:
        return r
    if a.tries_left is None or b.tries_left is None:
        return 0
    return -_cmp(a.tries_left, b.tries_left) or _cmp(a.tries_done or 0, b.tries_done or 0)


def sort_entries(entries: list[LoaderEntry]) -> list[LoaderEntry]:
    """Menu order as systemd-boot shows it."""
    return sorted(entries, key=cmp_to_key(_entry_compare))


def select_default(entries: list[LoaderEntry], conf: LoaderConf | None = None) -> tuple[LoaderEntry | None, str]:
    """(default entry, how it was chosen). ``@saved`` and EFI variables are not known offline."""
    ordered = sort_entries(entries)
    if not ordered:
        return None, "no entries"
    pattern = conf.default if conf else None
    if pattern and not pattern.startswith("@"):
        for entry in ordered:
            if fnmatch.fnmatchcase(entry.id.lower(), pattern.lower()):
                return entry, f"first entry matching default pattern {pattern!r}"
        return ordered[0], f"no entry matches default pattern {pattern!r}; first entry in menu order"
    if pattern:
        return ordered[0], f"default {pattern} depends on an EFI variable; first entry in menu order"
    return ordered[0], "first entry in menu order (no default in loader.conf)"


@dataclass
class LoaderConfig:
    conf: LoaderConf | None
    entries: list[LoaderEntry]           # in menu order
    warnings: list[str] = field(default_factory=list)

    def default_entry(self) -> tuple[LoaderEntry | None, str]:
        return select_default(self.entries, self.conf)


def read_loader(fs, base: str = "/") -> LoaderConfig | None:
    """Read ``<base>/loader/loader.conf`` and ``<base>/loader/entries/*.conf`` from a
    ``FileSystem`` (an ESP or XBOOTLDR). None when neither exists."""
    conf = None
    warnings: list[str] = []
    conf_path = posixpath.join(base, "loader/loader.conf")
    entries_dir = posixpath.join(base, "loader/entries")
    try:
        if fs.exists(conf_path):
            conf = parse_loader_conf(fs.read_text(conf_path, max_bytes=_MAX_CONF_BYTES), conf_path)
    except ImmutoolsError as exc:
        warnings.append(f"{conf_path}: unreadable: {exc}")
    entries: list[LoaderEntry] = []
    try:
        names = fs.listdir(entries_dir) if fs.exists(entries_dir) else []
    except ImmutoolsError as exc:
        warnings.append(f"{entries_dir}: unreadable: {exc}")
        names = []
    for name in names:
        if not name.endswith(".conf") or name.startswith("."):
            continue
        if len(entries) >= _MAX_ENTRIES:
            warnings.append(f"{entries_dir}: more than {_MAX_ENTRIES} entries; the rest ignored")
            break
        path = posixpath.join(entries_dir, name)
        try:
            if not fs.stat(path).is_file:
                continue
            entries.append(parse_entry(fs.read_text(path, max_bytes=_MAX_CONF_BYTES), name, path))
        except ImmutoolsError as exc:
            warnings.append(f"{path}: unreadable: {exc}")
    if conf is None and not entries:
        return None
    return LoaderConfig(conf, sort_entries(entries), warnings)
