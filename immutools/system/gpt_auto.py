"""systemd's rules for what a GPT disk means to the running system, as systemd 252 applies them.

Debian 12 ships systemd 252; the rules below are read from its sources (tag v252 of
systemd/systemd-stable) and man pages, and from the Discoverable Partitions Specification
(https://uapi-group.org/specifications/specs/discoverable_partitions_specification/):

* **dm-verity pairing by root hash** (``src/veritysetup/veritysetup-generator.c``,
  ``determine_device()``; DPS "Partition Names" / verity sections): a root hash from ``roothash=``
  or ``usrhash=`` (a UKI's ``.cmdline`` or the kernel command line) names its data device
  ``/dev/disk/by-partuuid/<first 128 bits of the hash>`` and its hash device
  ``/dev/disk/by-partuuid/<last 128 bits>`` unless ``systemd.verity_{root,usr}_{data,hash}=``
  name them. Partition labels play no part: mkosi gives the root and its verity partition the
  same label and writes no signature partition. A verity signature partition's JSON carries
  the same hash as ``rootHash`` and pairs the same way.
* **systemd-gpt-auto-generator(8)** (``src/gpt-auto-generator/gpt-auto-generator.c`` over
  ``src/shared/dissect-image.c``): on the disk that holds the root (or, when the root is not a
  single block device, /usr), the first partition of each DPS type (ESP, XBOOTLDR, /home, /srv,
  /var, /var/tmp, swap) in table order is used, except those with the no-auto attribute (bit 63;
  for the ESP, bit 1 "no block-IO protocol" instead); read-only (bit 60) mounts ``ro``; grow-fs
  (bit 59) adds ``x-systemd.growfs``; a /var partition only counts when its UUID is the
  machine-id-keyed HMAC of the /var type (``sd_id128_get_machine_app_specific``). The ESP goes
  to ``/efi`` when that path exists (or when there is an XBOOTLDR partition), else ``/boot``;
  XBOOTLDR goes to ``/boot``. Nothing is mounted over a non-empty directory (``path_is_busy``),
  a target that ``/etc/fstab`` names keeps fstab's mount (the fstab generator's units override
  the generator's, systemd.generator(7)), and any swap line in fstab turns automatic swap off.
  ``systemd.gpt_auto=0``/``rd.systemd.gpt_auto=0`` disables the generator.

Everything here is a pure function of the partition table (``GptEntry`` rows), the composed root
tree (``exists``/``stat``/``listdir`` of ``immutools.fs.base.FileSystem``), the fstab targets and
the kernel command line; each decision carries evidence rows citing the rule. Our own code: no
library implements systemd's generator rules offline.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid as uuid_mod
from dataclasses import dataclass, field

from immutools.errors import ImmutoolsError
from immutools.report.model import evidence

SYSTEMD_VERSION = "252"
DPS_URL = "https://uapi-group.org/specifications/specs/discoverable_partitions_specification/"
SRC_GPT_AUTO = f"systemd-gpt-auto-generator(8), systemd {SYSTEMD_VERSION} src/gpt-auto-generator/gpt-auto-generator.c"
SRC_DISSECT = f"systemd {SYSTEMD_VERSION} src/shared/dissect-image.c"
SRC_VERITY = f"systemd-veritysetup-generator(8), systemd {SYSTEMD_VERSION} src/veritysetup/veritysetup-generator.c"
SRC_DPS = f"Discoverable Partitions Specification ({DPS_URL})"
SRC_GENERATOR_ORDER = "systemd.generator(7): units in the normal generator directory (fstab) override the late one (gpt-auto)"

# GPT partition attribute bits (DPS "Partition Attribute Flags"; UEFI for bit 1)
FLAG_NO_BLOCK_IO_PROTOCOL = 1 << 1
FLAG_GROWFS = 1 << 59
FLAG_READ_ONLY = 1 << 60
FLAG_NO_AUTO = 1 << 63

# The /var type UUID: the key of the machine-id binding (SD_GPT_VAR).
GPT_VAR = "4d21b016-b534-45c2-a9fb-5c16e091fd2d"

# Where the generator mounts each designator (systemd-gpt-auto-generator(8) table); ESP/XBOOTLDR
# are decided by esp_mount()/xbootldr_mount().
MOUNT_TARGETS = {"home": "/home", "srv": "/srv", "var": "/var", "tmp": "/var/tmp"}
ESP_OPTIONS_VFAT = ["umask=0077", "noexec", "nosuid", "nodev"]    # esp_or_xbootldr_options()


# ------------------------------------------------------------------------------------------------
# the partition table as the rules see it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GptEntry:
    """One GPT entry: number, type, unique UUID (lower case), label, the 64-bit attribute field,
    and the DPS designator of the type (``role`` as in data/partition_types.yaml: ``root``,
    ``root-verity``, ``usr-verity-sig``, ``esp``, ``home`` ...; ``arch`` for per-architecture types)."""

    number: int
    type_guid: str
    uuid: str
    label: str = ""
    flags: int = 0
    role: str | None = None
    arch: str | None = None
    key: str | None = None
    fstype: str | None = None

    @classmethod
    def from_partition(cls, part, fstype: str | None = None) -> "GptEntry":
        """From ``immutools.volumes.model.Partition`` (attributes["raw"] is the hex field)."""
        from immutools.volumes.types import lookup_type_entry

        raw = (part.attributes or {}).get("raw")
        try:
            flags = int(raw, 16) if isinstance(raw, str) else int(raw or 0)
        except ValueError:
            flags = 0
        entry = lookup_type_entry(part.type_guid) if part.type_guid else None
        return cls(part.number, (part.type_guid or "").lower(), (part.uuid or "").lower(), part.label or "", flags,
                   entry.role if entry else None, entry.arch if entry else None, entry.key if entry else None, fstype)

    @property
    def no_auto(self) -> bool:
        return bool(self.flags & FLAG_NO_AUTO)

    @property
    def read_only(self) -> bool:
        return bool(self.flags & FLAG_READ_ONLY)

    @property
    def growfs(self) -> bool:
        return bool(self.flags & FLAG_GROWFS)

    def describe(self) -> str:
        return f"partition {self.number}" + (f" ({self.label})" if self.label else "")

    def gpt_evidence(self, detail: str) -> dict:
        return evidence(f"{self.describe()}: GPT entry", detail)


def entries_of(image) -> list[GptEntry]:
    """The GPT entries of an opened ``immutools.disk.DiskImage`` (empty for MBR/no table)."""
    if image.table is None or image.table.scheme != "gpt":
        return []
    return [GptEntry.from_partition(v.partition, v.fstype) for v in image.volumes if v.partition is not None]


# ------------------------------------------------------------------------------------------------
# verity pairing by root hash
# ------------------------------------------------------------------------------------------------
def root_hash_uuids(root_hash: str | None) -> tuple[str, str] | None:
    """(data partition UUID, hash partition UUID) a root hash names: its first and last 128 bits
    as UUID strings (``SD_ID128_TO_UUID_STRING`` of the raw bytes). None when the hash is not hex
    or shorter than 128 bits, or a half is all zeros (veritysetup-generator / dissect-image refuse those)."""
    if not root_hash:
        return None
    try:
        raw = bytes.fromhex(root_hash.strip())
    except ValueError:
        return None
    if len(raw) < 16:
        return None
    first, last = raw[:16], raw[-16:]
    if not any(first) or not any(last):
        return None
    return str(uuid_mod.UUID(bytes=first)), str(uuid_mod.UUID(bytes=last))


def _device_entry(entries: list[GptEntry], spec: str | None) -> GptEntry | None:
    """An explicit ``systemd.verity_*_data=``/``_hash=`` device among the table's partitions."""
    if not spec:
        return None
    for prefix, attr in (("PARTUUID=", "uuid"), ("/dev/disk/by-partuuid/", "uuid"), ("PARTLABEL=", "label"),
                         ("/dev/disk/by-partlabel/", "label")):
        if spec.startswith(prefix):
            want = spec[len(prefix):]
            return next((e for e in entries if (getattr(e, attr).lower() == want.lower() if attr == "uuid"
                                                 else getattr(e, attr) == want)), None)
    return None


@dataclass
class VerityPair:
    """What a root hash pairs: the data and hash partitions it names, how, and what is wrong."""

    designator: str                     # "root" or "usr"
    root_hash: str
    hash_source: dict                   # evidence: where the root hash came from
    data: GptEntry | None = None
    hash: GptEntry | None = None
    evidence: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return self.data is not None and self.hash is not None and not self.problems


def pair_by_root_hash(entries: list[GptEntry], root_hash: str, designator: str, hash_source: dict, *,
                      data_device: str | None = None, hash_device: str | None = None) -> VerityPair:
    """The data and hash partitions ``root_hash`` names (see the module docstring).
    ``data_device``/``hash_device``: ``systemd.verity_<designator>_data=``/``_hash=`` when set."""
    pair = VerityPair(designator, root_hash.lower(), hash_source, evidence=[hash_source])
    halves = root_hash_uuids(root_hash)
    if halves is None:
        pair.problems.append(f"{designator} hash {root_hash!r} is not a hex string of at least 128 bits")
        return pair
    rule = (f"{SRC_VERITY} determine_device(); {SRC_DPS}: the data partition's UUID is the first 128 bits "
            f"of the root hash, the verity partition's the last 128 bits")
    for slot, want, spec, role in (("data", halves[0], data_device, designator),
                                   ("hash", halves[1], hash_device, f"{designator}-verity")):
        if spec:
            found = _device_entry(entries, spec)
            how = f"systemd.verity_{designator}_{slot}={spec}"
        else:
            found = next((e for e in entries if e.uuid == want), None)
            how = f"/dev/disk/by-partuuid/{want}"
        if found is None:
            pair.problems.append(f"no partition is {how} (the {slot} device of the {designator} hash)")
            continue
        setattr(pair, slot, found)
        pair.evidence.append(found.gpt_evidence(f"{slot} device {how} (partition UUID {found.uuid})"))
        if found.role != role:
            pair.problems.append(f"{found.describe()} is the {slot} device by UUID but its type is "
                                 f"{found.key or found.type_guid}, not a {role} type")
    pair.evidence.append(evidence(rule, "pairing by partition UUID; labels are not used", False))
    return pair


def cmdline_verity(cmdline, designator: str) -> tuple[str | None, str | None, str | None]:
    """(root hash, explicit data device, explicit hash device) for ``root`` or ``usr`` from a
    ``KernelCmdline`` (veritysetup-generator's keys: ``roothash=``/``usrhash=``,
    ``systemd.verity_root_data=`` ...)."""
    if cmdline is None:
        return None, None, None
    key = "roothash" if designator == "root" else "usrhash"
    return (cmdline.get(key), cmdline.get(f"systemd.verity_{designator}_data"),
            cmdline.get(f"systemd.verity_{designator}_hash"))


# ------------------------------------------------------------------------------------------------
# systemd-gpt-auto-generator
# ------------------------------------------------------------------------------------------------
def var_partition_uuid(machine_id: str) -> str | None:
    """The UUID a /var partition must carry on the machine ``machine_id``: HMAC-SHA256 keyed by
    the machine ID over the /var type UUID, first 128 bits made a v4 UUID
    (``sd_id128_get_machine_app_specific``, src/libsystemd/sd-id128/sd-id128.c)."""
    try:
        key = bytes.fromhex(machine_id.strip())
    except ValueError:
        return None
    if len(key) != 16 or not any(key):
        return None
    digest = bytearray(hmac.new(key, uuid_mod.UUID(GPT_VAR).bytes, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid_mod.UUID(bytes=bytes(digest)))


@dataclass
class Found:
    """A partition the dissection picked for a designator, or one it passed over (``skipped``)."""

    designator: str
    entry: GptEntry
    evidence: list[dict] = field(default_factory=list)


def dissect(entries: list[GptEntry], machine_id: str | None = None) -> tuple[dict[str, Found], list[Found]]:
    """What ``dissect_image()`` (as the generator calls it: GPT only, no verity) keeps per
    designator of the auto-mounted kinds, and what it passes over, with the reason.

    For these kinds the first partition in table order wins; no-auto excludes one (for the ESP
    the no-block-IO-protocol bit does instead); a /var partition must carry the machine's UUID."""
    picked: dict[str, Found] = {}
    skipped: list[Found] = []
    var_uuid = var_partition_uuid(machine_id) if machine_id else None
    for e in sorted(entries, key=lambda x: x.number):
        role = e.role
        if role not in ("esp", "boot", "home", "srv", "var", "tmp", "swap") or (role == "boot" and e.key != "xbootldr"):
            continue
        designator = "xbootldr" if role == "boot" else role
        if designator == "esp":
            if e.flags & FLAG_NO_BLOCK_IO_PROTOCOL:
                skipped.append(Found(designator, e, [e.gpt_evidence(f"no-block-IO-protocol attribute (bit 1): not auto-mounted ({SRC_DISSECT})")]))
                continue
        elif e.no_auto:
            skipped.append(Found(designator, e, [e.gpt_evidence(f"no-auto attribute (bit 63): not auto-mounted ({SRC_DISSECT}; {SRC_DPS})")]))
            continue
        if designator == "var" and e.uuid != var_uuid:
            why = ("no machine ID in the image to derive it from (machine-id(5): set at first boot)" if var_uuid is None
                   else f"the machine ID's /var UUID is {var_uuid}")
            skipped.append(Found(designator, e, [e.gpt_evidence(
                f"/var partition UUID {e.uuid} is not the machine-bound one ({why}); dissect-image ignores it "
                f"({SRC_DISSECT}, sd_id128_get_machine_app_specific)")]))
            continue
        if designator in picked:
            skipped.append(Found(designator, e, [e.gpt_evidence(
                f"a second {designator} partition: the first in table order ({picked[designator].entry.describe()}) wins ({SRC_DISSECT})")]))
            continue
        picked[designator] = Found(designator, e, [e.gpt_evidence(f"DPS type {e.key or e.type_guid}")])
    return picked, skipped


def dir_state(tree, path: str) -> str:
    """``missing``, ``empty``, ``populated`` or ``not-a-directory`` for ``path`` in ``tree`` (symlinks
    followed, hidden entries count: ``dir_is_empty(..., ignore_hidden_or_backup=false)``)."""
    if tree is None:
        return "missing"
    try:
        if not tree.exists(path):
            return "missing"
        if not tree.stat(path).is_dir:
            return "not-a-directory"
        return "populated" if tree.listdir(path) else "empty"
    except ImmutoolsError:
        return "missing"


@dataclass
class AutoMount:
    """One decision of the generator: ``target`` (a path, ``swap``, or None = not mounted)."""

    designator: str
    entry: GptEntry
    target: str | None
    options: list[str] = field(default_factory=list)
    automount: bool = False
    reason: str = ""
    evidence: list[dict] = field(default_factory=list)

    @property
    def mounted(self) -> bool:
        return self.target is not None


def _busy(tree, where: str, mountpoints: set[str]) -> tuple[bool, str]:
    """``path_is_busy()``: a directory with entries that is not already a mount point."""
    if where in mountpoints:
        return False, f"{where} is already a mount point"
    state = dir_state(tree, where)
    if state == "populated":
        return True, f"{where} is a non-empty directory in the root filesystem: nothing is mounted over it"
    if state == "not-a-directory":
        return True, f"{where} is not a directory: the generator cannot check it and mounts nothing there"
    return False, f"{where} is {'missing (it is created on mount)' if state == 'missing' else 'an empty directory'}"


def esp_target(tree, has_xbootldr: bool) -> tuple[str, str]:
    """Where the generator would put the ESP, before the fstab and busy checks:
    ``/efi`` when it exists (``access("/efi", F_OK)``, symlinks followed) or when there is an
    XBOOTLDR partition, else ``/boot``. Returns (target, why)."""
    efi = dir_state(tree, "/efi")
    if efi != "missing":
        return "/efi", "/efi exists in the root filesystem"
    if has_xbootldr:
        return "/efi", "/efi does not exist, but an XBOOTLDR partition takes /boot"
    return "/boot", "/efi does not exist and there is no XBOOTLDR partition"


def _disabled_by(cmdline) -> tuple[str, dict] | None:
    """``systemd.gpt_auto=0`` / ``rd.systemd.gpt_auto=0`` (``parse_proc_cmdline_item``; a bare key means on)."""
    if cmdline is None:
        return None
    from immutools.system.cmdline import parse_bool

    for key in ("systemd.gpt_auto", "rd.systemd.gpt_auto"):
        arg = cmdline.last(key)
        if arg is not None and arg.value is not None and parse_bool(arg.value) is False:
            return f"{key}={arg.value} disables the generator", cmdline.evidence(key)
    return None


def gpt_auto_mounts(entries: list[GptEntry], tree, *, fstab_targets: set[str] | frozenset = frozenset(),
                    fstab_has_swap: bool = False, machine_id: str | None = None, cmdline=None,
                    on_root_disk: bool = True, mountpoints: set[str] | frozenset = frozenset()) -> list[AutoMount]:
    """Every decision the generator takes for the auto-mountable partitions of this disk.

    ``tree``: the root filesystem as the running system sees it before the generator's mounts
    (None when there is none); ``fstab_targets``: mount points /etc/fstab names; ``on_root_disk``:
    this disk holds the root (or /usr when the root is not a block device; the generator looks at
    no other disk); ``mountpoints``: targets already mounted otherwise (API filesystems, fstab)."""
    out: list[AutoMount] = []
    picked, skipped = dissect(entries, machine_id)
    for f in skipped:
        out.append(AutoMount(f.designator, f.entry, None, reason=f.evidence[-1]["detail"], evidence=f.evidence))
    off = _disabled_by(cmdline)
    if off is not None or not on_root_disk:
        reason, why = off or ("not on the disk holding the root (or /usr)",
                              evidence(SRC_GPT_AUTO, "only the disk of the root (or /usr) is searched", False))
        for f in picked.values():
            out.append(AutoMount(f.designator, f.entry, None, reason=reason, evidence=f.evidence + [why]))
        return out
    rule = evidence(SRC_GPT_AUTO, None, False)
    mounted = set(mountpoints)

    def decide(f: Found, where: str, options: list[str], why: str, automount: bool = False, check_fstab: bool = True) -> None:
        e = f.entry
        ev = list(f.evidence)
        if check_fstab and where in fstab_targets:
            out.append(AutoMount(f.designator, e, None, reason=f"/etc/fstab mounts {where}",
                                 evidence=ev + [evidence("/etc/fstab", f"names {where}"),
                                                evidence(SRC_GENERATOR_ORDER, f"fstab's {where} wins", False)]))
            return
        busy, how = _busy(tree, where, mounted)
        if busy:
            out.append(AutoMount(f.designator, e, None, reason=how, evidence=ev + [evidence(SRC_GPT_AUTO, f"path_is_busy({where}): {how}", False)]))
            return
        mounted.add(where)
        out.append(AutoMount(f.designator, e, where, options, automount, reason=f"{why}; {how}",
                             evidence=ev + [rule | {"detail": f"{f.designator} on {where}: {why}; {how}"}]))

    # swap: add_partition_swap()
    if "swap" in picked:
        f = picked["swap"]
        if fstab_has_swap:
            out.append(AutoMount("swap", f.entry, None, reason="/etc/fstab defines swap: automatic swap is off",
                                 evidence=f.evidence + [evidence(SRC_GPT_AUTO, "fstab_has_fstype(\"swap\") disables the swap partition", False)]))
        else:
            out.append(AutoMount("swap", f.entry, "swap", reason="swap partition on the root disk",
                                 evidence=f.evidence + [rule | {"detail": "swap enabled (swap.target wants it)"}]))
    # XBOOTLDR: add_partition_xbootldr() -> /boot
    if "xbootldr" in picked:
        f = picked["xbootldr"]
        opts = (ESP_OPTIONS_VFAT if f.entry.fstype in (None, "vfat") else ["noexec", "nosuid", "nodev"]) + ["rw"]
        decide(f, "/boot", opts, "XBOOTLDR goes to /boot", automount=True)
    # ESP: add_partition_esp()
    if "esp" in picked:
        f = picked["esp"]
        where, why = esp_target(tree, "xbootldr" in picked)
        opts = (ESP_OPTIONS_VFAT if f.entry.fstype in (None, "vfat") else ["noexec", "nosuid", "nodev"]) + ["rw"]
        before = len(out)
        decide(f, where, opts, why, automount=True)
        if out[before].mounted:
            out[before].evidence.append(evidence(
                "LoaderDevicePartUUID (EFI variable, set by the boot loader at boot)",
                "on an EFI boot the ESP is only mounted if it is the one the loader booted from; offline, this disk's ESP is assumed", False))
    # /home, /srv, /var, /var/tmp: add_partition_mount()
    for designator in ("home", "srv", "var", "tmp"):
        if designator in picked:
            f = picked[designator]
            opts = ["rw" if not f.entry.read_only else "ro"] + (["x-systemd.growfs"] if f.entry.growfs else [])
            why = f"DPS {designator} partition" + (" (read-only attribute, bit 60)" if f.entry.read_only else "") + \
                  (" (grow-file-system attribute, bit 59)" if f.entry.growfs else "")
            decide(f, MOUNT_TARGETS[designator], opts, why)
    return out


def root_stays_read_only(root: GptEntry | None, cmdline) -> tuple[bool | None, dict]:
    """Whether / stays read-only after boot on a gpt-auto root: ``ro``/``rw`` on the command line
    decide; else the root partition's read-only attribute keeps it ``ro``; else
    systemd-remount-fs remounts it ``rw`` (``add_partition_root_rw``)."""
    access = cmdline.access_flag() if cmdline is not None else None
    if access is not None:
        return access == "ro", cmdline.evidence(access)
    if root is None:
        return None, evidence(SRC_GPT_AUTO, "no root partition", False)
    if root.read_only:
        return True, root.gpt_evidence("read-only attribute (bit 60): the root stays read-only")
    return False, evidence(SRC_GPT_AUTO, "no ro/rw on the command line and no read-only attribute: systemd-remount-fs remounts / read-write", False)
