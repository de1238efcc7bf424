"""The kernel command line, parsed the way systemd and the kernel read it.

Our own parser because there is no library for it: the splitting follows systemd's
``proc_cmdline_parse`` (src/basic/proc-cmdline.c: ``extract_first_word`` with UNQUOTE, RELAX and
RETAIN_ESCAPE): words are separated by whitespace, single and double quotes group and are removed
wherever they appear in a word, a backslash keeps itself and the next character. The kernel's
``next_arg`` (lib/cmdline.c) gives the same result for every command line a boot loader writes
(it differs only on quotes in the middle of a word and on single quotes, which it keeps).
``key=value`` splits at the first ``=``; ``-`` and ``_`` in keys compare equal (kernel
``parameq``, systemd ``proc_cmdline_key_streq``); ``--`` ends the kernel's arguments, what follows
goes to init (systemd still reads it from /proc/cmdline, so ``get`` sees it unless asked for the
kernel's view). Repeated keys: ``get`` returns the last, ``all`` returns every value.

The mount helpers (``root_mount``, ``usr_mount``) reproduce what systemd-fstab-generator (v252)
makes of ``root=``/``rootflags=``/``rootfstype=``/``ro``/``rw``/``mount.usr*``/``usrhash=`` in the
initrd, and are checked against that generator in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.report.model import evidence as make_evidence
from immutools.system.devices import devnode

_WHITESPACE = " \t\n\r"
SEPARATOR = "--"

# Keys that carry dm-verity settings (Flatcar bootengine, systemd-veritysetup-generator, UAPI).
VERITY_KEYS = (
    "verity.usr", "verity.usrhash",
    "roothash", "usrhash",
    "systemd.verity", "rd.systemd.verity",
    "systemd.verity_root_data", "systemd.verity_root_hash", "systemd.verity_root_options",
    "systemd.verity_usr_data", "systemd.verity_usr_hash", "systemd.verity_usr_options",
)
# Linux kstrtobool: the spellings a bool kernel parameter accepts.
_TRUE = {"1", "y", "Y", "yes", "on", "true"}
_FALSE = {"0", "n", "N", "no", "off", "false"}


def split_words(text: str) -> list[str]:
    """Split a command line into words (quotes removed, backslashes kept; see module doc)."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        quote = None
        quoted = False
        while i < n:
            ch = text[i]
            if ch == "\\":
                buf.append(text[i:i + 2])        # RETAIN_ESCAPE: keep the backslash and its char
                i += 2
                continue
            if quote is not None:
                if ch == quote:
                    quote = None
                else:
                    buf.append(ch)
                i += 1
                continue
            if ch in "\"'":
                quote, quoted = ch, True
                i += 1
                continue
            if ch in _WHITESPACE:
                break
            buf.append(ch)
            i += 1
        word = "".join(buf)
        if word or quoted:
            words.append(word)
    return words


def normalize_key(key: str) -> str:
    return key.replace("-", "_")


def parse_bool(value: str | None) -> bool | None:
    """A kernel bool parameter: a bare flag is true; unknown spellings give None."""
    if value is None:
        return True
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


@dataclass(frozen=True)
class CmdlineArg:
    key: str
    value: str | None            # None for a bare flag (``ro``, ``mount.usr``)
    index: int
    after_separator: bool = False  # after ``--``: an argument for init, not for the kernel

    @property
    def text(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


@dataclass
class CmdlineMount:
    """A mount the initrd makes from the command line (systemd-fstab-generator's view)."""

    what: str                   # as written (``LABEL=ROOT``, ``/dev/mapper/usr``)
    devnode: str                # as systemd writes What= (``/dev/disk/by-label/ROOT``)
    fstype: str | None
    options: list[str]
    keys: list[str]             # command-line keys that decided it, for evidence
    special: str | None = None  # "gpt-auto", "network", "tmpfs" when not an ordinary block device


@dataclass
class DmTable:
    start: int | None
    length: int | None
    target: str
    args: str
    text: str
    verity: object | None = None     # immutools.fs.verity's parse of a verity table, when available
    verity_error: str | None = None

    @property
    def arg_list(self) -> list[str]:
        return self.args.split()

    @property
    def data_device(self) -> str | None:
        """For a verity table, its data device (``PARTUUID=.../PARTNROFF=1``, ``/dev/sda3``)."""
        a = self.arg_list
        return a[1] if self.target == "verity" and len(a) > 2 else None

    @property
    def hash_device(self) -> str | None:
        a = self.arg_list
        return a[2] if self.target == "verity" and len(a) > 2 else None


@dataclass
class DmDevice:
    """One device of ``dm-mod.create=`` (Documentation/admin-guide/device-mapper/dm-init.rst)."""

    name: str
    uuid: str
    minor: str
    flags: str                      # "ro" or "rw"
    tables: list[DmTable] = field(default_factory=list)
    index: int = 0                  # creation order: the kernel names it /dev/dm-<index>


def parse_dm_create(value: str) -> list[DmDevice]:
    """Split a ``dm-mod.create`` value into devices and tables. Verity tables are handed to
    ``immutools.fs.verity.parse_dm_verity_table`` when that module is present."""
    try:  # optional: the verity table parser lives with the verity reader
        from immutools.fs.verity import parse_dm_verity_table  # type: ignore
    except ImportError:
        parse_dm_verity_table = None
    devices = []
    for index, chunk in enumerate(c for c in value.split(";") if c.strip()):
        fields = chunk.split(",")
        if len(fields) < 5:
            devices.append(DmDevice(fields[0].strip(), "", "", "", [], index))
            continue
        name, uuid, minor, flags = (f.strip() for f in fields[:4])
        tables = []
        for text in fields[4:]:
            text = text.strip()
            parts = text.split(None, 3)
            start = length = None
            target, args = "", ""
            if len(parts) >= 3:
                try:
                    start, length = int(parts[0]), int(parts[1])
                except ValueError:
                    pass
                target = parts[2]
                args = parts[3] if len(parts) > 3 else ""
            table = DmTable(start, length, target, args, text)
            if target == "verity" and parse_dm_verity_table is not None:
                try:
                    table.verity = parse_dm_verity_table(text)
                except Exception as exc:  # noqa: BLE001 - a damaged table is reported, not fatal
                    table.verity_error = f"{type(exc).__name__}: {exc}"
            tables.append(table)
        devices.append(DmDevice(name, uuid, minor, flags, tables, index))
    return devices


def _add_access(options: list[str], access: str | None) -> None:
    """systemd-fstab-generator: a ``ro``/``rw`` flag is appended; without one, ``ro`` is added
    unless the flags already say ``ro`` or ``rw``."""
    if access:
        options.append(access)
    elif not any(o in ("ro", "rw") for o in options):
        options.append("ro")


class KernelCmdline:
    """A parsed kernel command line. ``origin`` says where it came from (for evidence), e.g.
    ``partition 1 (EFI-SYSTEM): /loader/entries/a.conf``; ``observed`` is False when the line was
    assembled by us (GRUB variables, defaults) rather than read verbatim."""

    def __init__(self, text: str, origin: str | None = None, observed: bool = True):
        self.text = text
        self.origin = origin or "the kernel command line"
        self.observed = observed
        self.args: list[CmdlineArg] = []
        after = False
        for index, word in enumerate(split_words(text)):
            if word == SEPARATOR and not after:
                after = True
                continue
            key, sep, value = word.partition("=")
            self.args.append(CmdlineArg(key, value if sep else None, index, after))

    @classmethod
    def from_words(cls, words: list[str], origin: str | None = None, observed: bool = True) -> "KernelCmdline":
        """From already separated words (a GRUB ``linux`` line): words with spaces get quoted."""
        return cls(" ".join(f'"{w}"' if any(c in w for c in _WHITESPACE) else w for w in words), origin, observed)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"KernelCmdline({self.text!r})"

    # ---- lookups -------------------------------------------------------------------------------
    def _matching(self, key: str, kernel_only: bool = False):
        want = normalize_key(key)
        for arg in self.args:
            if kernel_only and arg.after_separator:
                continue
            if normalize_key(arg.key) == want:
                yield arg

    def get(self, key: str, default: str | None = None, *, kernel_only: bool = False) -> str | None:
        """The value of the last ``key=value`` (bare ``key`` flags are skipped)."""
        value = default
        for arg in self._matching(key, kernel_only):
            if arg.value is not None:
                value = arg.value
        return value

    def all(self, key: str, *, kernel_only: bool = False) -> list[str]:
        return [a.value for a in self._matching(key, kernel_only) if a.value is not None]

    def has(self, key: str, *, kernel_only: bool = False) -> bool:
        """True when ``key`` appears at all, as a bare flag or with a value."""
        return next(self._matching(key, kernel_only), None) is not None

    def flag(self, key: str, *, kernel_only: bool = False) -> bool:
        """True when ``key`` appears as a bare flag (``ro``, ``verity.usr``)."""
        return any(a.value is None for a in self._matching(key, kernel_only))

    def last(self, key: str, *, kernel_only: bool = False) -> CmdlineArg | None:
        found = None
        for arg in self._matching(key, kernel_only):
            found = arg
        return found

    def items(self) -> list[tuple[str, str | None]]:
        return [(a.key, a.value) for a in self.args]

    @property
    def kernel_args(self) -> list[CmdlineArg]:
        return [a for a in self.args if not a.after_separator]

    @property
    def init_args(self) -> list[CmdlineArg]:
        return [a for a in self.args if a.after_separator]

    def evidence(self, key: str, detail: str | None = None) -> dict:
        """Evidence that names the key and where the command line came from."""
        arg = self.last(key)
        if arg is None or arg.value is None:
            source = f"kernel command line flag {key} from {self.origin}"
        else:
            source = f"kernel command line key {key}= from {self.origin}"
        if detail is None and arg is not None:
            detail = arg.text
        return make_evidence(source, detail, self.observed)

    # ---- helpers for the keys collectors read ---------------------------------------------------
    def access_flag(self) -> str | None:
        """``ro`` or ``rw``, whichever bare flag comes last; None when neither is given."""
        found = None
        for arg in self.args:
            if arg.value is None and arg.key in ("ro", "rw"):
                found = arg.key
        return found

    def root_mount(self) -> CmdlineMount | None:
        """The root file system the initrd mounts (systemd-fstab-generator, initrd mode)."""
        what = self.get("root")
        keys = ["root"]
        if what is None:
            if self.get("roothash") is None:
                return None
            what, keys = "/dev/mapper/root", ["roothash"]
        options = [o for v in self.all("rootflags") for o in v.split(",") if o]
        if self.all("rootflags"):
            keys.append("rootflags")
        access = self.access_flag()
        if access:
            keys.append(access)
        fstype = self.get("rootfstype")
        if fstype is not None:
            keys.append("rootfstype")
        special = None
        if what == "gpt-auto":
            special = "gpt-auto"
        elif what == "/dev/nfs" or what.split(":", 1)[0] in ("nfs", "nfs4", "cifs", "iscsi"):
            special = "network"
        elif what == "tmpfs":
            # systemd mounts a tmpfs named "rootfs", always writable
            return CmdlineMount("rootfs", "rootfs", "tmpfs", ["rw", "mode=0755"], keys, "tmpfs")
        _add_access(options, access)
        return CmdlineMount(what, devnode(what), fstype, options, keys, special)

    def usr_mount(self) -> CmdlineMount | None:
        """The /usr file system the initrd mounts from ``mount.usr=`` (or implied by ``usrhash=``)."""
        what = self.get("mount.usr")
        keys = ["mount.usr"]
        if what is None:
            if self.get("usrhash") is None:
                return None
            what, keys = "/dev/mapper/usr", ["usrhash"]
        options = [o for v in self.all("mount.usrflags") for o in v.split(",") if o]
        if options:
            keys.append("mount.usrflags")
        _add_access(options, self.access_flag())
        fstype = self.get("mount.usrfstype")
        if fstype is not None:
            keys.append("mount.usrfstype")
        else:
            fstype = self.get("rootfstype")
            if fstype is not None:
                keys.append("rootfstype")
        return CmdlineMount(what, devnode(what), fstype, options, keys)

    def verity_settings(self) -> dict[str, str | None]:
        """Every verity-related key present, last value wins (a bare flag maps to None)."""
        out: dict[str, str | None] = {}
        for key in VERITY_KEYS:
            arg = self.last(key)
            if arg is not None:
                out[key] = arg.value
        return out

    def usr_verity(self) -> dict | None:
        """/usr verity: Flatcar's ``verity.usr=<data>`` + ``verity.usrhash=``, or systemd's
        ``usrhash=`` + ``systemd.verity_usr_data=``. None when neither is set."""
        data = self.get("verity.usr") or self.get("systemd.verity_usr_data")
        root_hash = self.get("verity.usrhash") or self.get("usrhash")
        if data is None and root_hash is None and not self.flag("verity.usr"):
            return None
        keys = [k for k in ("verity.usr", "systemd.verity_usr_data", "verity.usrhash", "usrhash") if self.has(k)]
        return {"data": data, "hash": self.get("systemd.verity_usr_hash"), "root_hash": root_hash,
                "options": self.get("systemd.verity_usr_options"), "keys": keys}

    def root_verity(self) -> dict | None:
        """Root verity from ``roothash=`` + ``systemd.verity_root_*`` (dm-mod.create: see ``dm_devices``)."""
        root_hash = self.get("roothash")
        data = self.get("systemd.verity_root_data")
        if root_hash is None and data is None:
            return None
        keys = [k for k in ("roothash", "systemd.verity_root_data", "systemd.verity_root_hash") if self.has(k)]
        return {"data": data, "hash": self.get("systemd.verity_root_hash"), "root_hash": root_hash,
                "options": self.get("systemd.verity_root_options"), "keys": keys}

    def dm_devices(self) -> list[DmDevice]:
        """Devices of the last ``dm-mod.create=`` (the kernel keeps only the last value)."""
        value = self.get("dm-mod.create", kernel_only=True)
        return parse_dm_create(value) if value else []

    def lsm_settings(self) -> dict:
        """``selinux=``, ``enforcing=``, ``security=``, ``lsm=`` as given (None when absent)."""
        lsm = self.get("lsm", kernel_only=True)
        return {
            "selinux": self.get("selinux", kernel_only=True),
            "enforcing": self.get("enforcing", kernel_only=True),
            "security": self.get("security", kernel_only=True),
            "lsm": [x for x in lsm.split(",") if x] if lsm is not None else None,
        }

    def lockdown(self) -> str | None:
        return self.get("lockdown", kernel_only=True)

    def module_sig_enforce(self) -> bool | None:
        """``module.sig_enforce``: True/False when given, None when absent."""
        arg = self.last("module.sig_enforce", kernel_only=True)
        return None if arg is None else parse_bool(arg.value)

    def init(self) -> str | None:
        return self.get("init", kernel_only=True)
