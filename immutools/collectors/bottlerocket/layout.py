"""What a Bottlerocket disk's partition table says: the A/B partition sets (BOOT with ROOT and HASH
at fixed offsets after it), PRIVATE, the data partitions and, from those alone, the partition plan,
the layout era and the image size. Facts from ``data/distributions/bottlerocket.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.compose import read_key_values
from immutools.volumes.gptprio import GptprioChoice

_MIB = 1024 * 1024


def part_type(vol: Volume) -> str:
    """The partition's type GUID, lower case ("" when the volume is no partition)."""
    return ((vol.partition.type_guid if vol.partition else None) or "").lower()


@dataclass
class Bank:
    """One partition set: BOOT with ROOT and HASH at PARTNROFF 1 and 2, and what its files say."""

    name: str
    boot: Volume
    root: Volume | None
    hash: Volume | None
    triple: str | None = None                     # x86_64-bottlerocket-linux-gnu
    os_release: dict | None = None
    os_ev: dict | None = None
    grub: object | None = None                    # GrubConfig
    entry: object | None = None                   # its default GrubEntry
    cmdline: object | None = None                 # KernelCmdline
    cmdline_problem: str | None = None            # why there is no command line
    grub_ev: list[dict] = field(default_factory=list)
    grub_form: str | None = None                  # variable | inline
    secure_boot: bool | None = None
    table: object | None = None                   # VerityParams from the dm table
    table_error: str | None = None
    data_volume: Volume | None = None             # what the table's data device names
    hash_volume: Volume | None = None
    superblock: object | None = None
    superblock_error: str | None = None
    mismatches: list[str] = field(default_factory=list)

    def attrs(self) -> dict:
        return (self.boot.partition.attributes if self.boot.partition else {}) or {}

    @property
    def version(self) -> str | None:
        return (self.os_release or {}).get("VERSION_ID")

    @property
    def build_id(self) -> str | None:
        return (self.os_release or {}).get("BUILD_ID")


@dataclass
class OsDisk:
    """Everything known about a Bottlerocket OS disk: its partitions, then (``boot.read_boot``) the
    set GRUB boots next and the set whose files describe the OS."""

    banks: list[Bank]
    private: Volume | None
    data_rows: list[dict]
    data_volume: Volume | None                    # the partition local.mount will get
    data_evidence: list[dict]
    plan: str
    era: str
    size_gib: int | None
    choice: GptprioChoice | None = None
    active: Bank | None = None
    source: Bank | None = None                    # the active set, else the first with an os-release

    @property
    def os_release(self) -> dict:
        return (self.source.os_release if self.source else None) or {}

    @property
    def triple(self) -> str | None:
        return self.source.triple if self.source else None

    @property
    def variant(self) -> str | None:
        return self.os_release.get("VARIANT_ID")


def find_banks(image: DiskImage, knowledge: dict) -> list[Bank]:
    """BOOT partitions in table order are sets A and B (signpost's rule); ROOT and HASH follow at
    the data file's offsets when their types match."""
    gpt = knowledge["gpt"]
    types = gpt["types"]
    boots = sorted((v for v in image.volumes if part_type(v) == types["boot"]), key=lambda v: v.number)
    out = []
    for name, boot in zip(gpt["banks"], boots):
        root = image.volume(number=boot.number + gpt["root_offset"])
        hash_ = image.volume(number=boot.number + gpt["hash_offset"])
        out.append(Bank(name, boot,
                        root if root is not None and part_type(root) == types["root"] else None,
                        hash_ if hash_ is not None and part_type(hash_) == types["hash"] else None))
    return out


def read_os_release(image: DiskImage, knowledge: dict, bank: Bank) -> None:
    """The sys-root os-release of the bank's ROOT; the sys-root directory name gives the arch."""
    if bank.os_release is not None or bank.root is None:
        return
    fs = image.filesystem(bank.root)
    if fs is None:
        return
    sys_root = knowledge["sys_root"]
    try:
        names = [n for n in fs.listdir("/") if n.endswith(sys_root["suffix"])]
    except ImmutoolsError as exc:
        image.warn(f"{bank.root.describe()}: cannot list /: {exc}")
        return
    for name in sorted(names):
        path = f"/{name}/{sys_root['usr']}/{knowledge['os_release']}"
        parsed = read_key_values(fs, path)
        if parsed:
            bank.triple, bank.os_release = name, parsed
            bank.os_ev = evidence(f"{bank.root.describe()}: {path}", "os-release")
            return


def arch_of(knowledge: dict, triple: str | None) -> str | None:
    """x86_64-bottlerocket-linux-gnu -> x86_64."""
    suffix = knowledge["sys_root"]["suffix"]
    if not triple or not triple.endswith(suffix):
        return None
    return knowledge["sys_root"]["arches"].get(triple[: -len(suffix)])


def data_rows(image: DiskImage, knowledge: dict) -> list[dict]:
    """Every partition of the DATA type, with which fixed PARTUUID (if any) it carries."""
    gpt = knowledge["gpt"]
    which = {uuid: name for name, uuid in gpt["data_partuuids"].items()}
    rows = []
    for vol in image.volumes:
        if part_type(vol) != gpt["types"]["data"]:
            continue
        uuid = (vol.partition.uuid or "").lower()
        rows.append({
            "number": vol.number, "label": vol.label, "named": vol.label == gpt["data_label"],
            "uuid": uuid, "which": which.get(uuid, "other"), "filesystem": vol.fstype, "size": vol.partition.size,
            "evidence": [evidence(f"{vol.describe()}: GPT entry",
                                  f"DATA type, PARTUUID {uuid}" + (f" ({which[uuid]})" if uuid in which else "")
                                  + (f", name {vol.label}" if vol.label else ", no name"))],
        })
    return rows


def data_volume(image: DiskImage, knowledge: dict) -> tuple[Volume | None, list[dict]]:
    """The partition local.mount will get: named BOTTLEROCKET-DATA, else the one repart labels at
    first boot (the repart units in the data file's order: preferred PARTUUID, then the fallback)."""
    gpt = knowledge["gpt"]
    label = gpt["data_label"]
    for vol in image.volumes:
        if part_type(vol) == gpt["types"]["data"] and vol.label == label:
            return vol, [evidence(f"{vol.describe()}: GPT entry", f"named {label}")]
    for repart in knowledge["data_partition"]["repart"]:
        uuid = gpt["data_partuuids"][repart["partuuid"]]
        for vol in image.volumes:
            if vol.partition and (vol.partition.uuid or "").lower() == uuid:
                note = f"not yet named {label}: {repart['unit']} labels PARTUUID {uuid} at first boot"
                if repart.get("only_when"):
                    note += " only when " + repart["only_when"].format(**gpt["data_partuuids"])
                return vol, [evidence(f"{vol.describe()}: GPT entry", note, False)]
    return None, []


def partition_plan(knowledge: dict, rows: list[dict]) -> str | None:
    """unified or split, from the DATA partitions on this disk (the data file's ``plans``)."""
    for rule in knowledge["data_partition"]["plans"]:
        if "data" not in rule or any(r["which"] == rule["data"] for r in rows):
            return rule["plan"]
    return None


def layout_era(image: DiskImage, knowledge: dict, rows: list[dict]) -> str | None:
    """The newest layout era whose marker the disk shows (the data file's ``layout_eras``)."""
    markers = {
        "fixed_data_partuuid": any(r["which"] in knowledge["gpt"]["data_partuuids"] for r in rows),
        "efi_backup": any(part_type(v) == knowledge["gpt"]["types"]["efi_backup"] for v in image.volumes),
    }
    for era in knowledge["layout_eras"]:
        if "marker" not in era or markers[era["marker"]]:
            return era["era"]
    return None


def image_size_gib(knowledge: dict, banks: list[Bank]) -> int | None:
    """G from BOOT = boot_mib_per_gib x G MiB (partyplanner)."""
    if not banks:
        return None
    mib = banks[0].boot.partition.size // _MIB
    per = knowledge["gpt"]["boot_mib_per_gib"]
    return mib // per if mib and mib % per == 0 else None


def read_os_disk(image: DiskImage, knowledge: dict, banks: list[Bank]) -> OsDisk:
    """The partition-table facts of an OS disk (the boot state is read by ``boot.read_boot``)."""
    private = next((v for v in image.volumes if part_type(v) == knowledge["gpt"]["types"]["private"]), None)
    rows = data_rows(image, knowledge)
    data_vol, data_ev = data_volume(image, knowledge)
    return OsDisk(banks, private, rows, data_vol, data_ev, partition_plan(knowledge, rows),
                  layout_era(image, knowledge, rows), image_size_gib(knowledge, banks))
