"""The slots of a DPS image and the one that boots.

Every data partition of the main role is a slot, with its verity and signature partitions. A
slot's root hash is its signature partition's ``rootHash``, else the hash the default UKI pins
when that names this partition; the hash pairs the data and verity partitions by partition UUID
(first / last 128 bits), as systemd-veritysetup-generator does
(``immutools.system.gpt_auto.pair_by_root_hash``). The labels (``Name_Version``, ``..._verity``,
``..._verity_sig``) only tie partitions when no hash is known (mkosi gives root and verity the same
label and writes no signature partition). ``_empty`` labels mark slots systemd-repart made for the
next update. The active slot is the one the default UKI pins; without a pin, the highest label
version (DPS "Suggested Mode of Operation": ``strverscmp()`` order) among usable slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.report.model import evidence
from immutools.system.gpt_auto import entries_of, pair_by_root_hash, root_hash_uuids
from immutools.system.sdboot import version_compare

from .boot import Boot
from .detect import DpsPartition, Layout, read_signature, slot_os_release


@dataclass
class Slot:
    name: str
    data: DpsPartition
    pending: bool = False                     # PRT#/PND#: being written by the updater
    verity: DpsPartition | None = None
    sig: DpsPartition | None = None           # the verity signature partition
    signature: dict | None = None             # its JSON
    signature_problem: str | None = None
    root_hash: str | None = None
    root_hash_source: str | None = None
    pairing: bool | None = None               # the hash pairs exactly this data partition and its verity
    pairing_problems: list[str] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    version: str | None = None

    @property
    def empty(self) -> bool:
        return self.data.empty

    @property
    def partitions(self) -> list[int]:
        return [self.data.number] + [p.number for p in (self.verity, self.sig) if p is not None]


@dataclass
class Slots:
    """The slots and the active one, with how it was chosen and its os-release."""

    slots: list[Slot]
    active: Slot | None = None
    choice: str | None = None
    image_id: str | None = None
    os_release: dict | None = None
    os_evidence: dict | None = None

    @property
    def verity_on(self) -> bool:
        """The active slot is mounted through dm-verity: a root hash pairs it with its verity partition."""
        active = self.active
        return bool(active and active.verity is not None and active.root_hash and active.pairing)


def slot_name(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else str(index)


def label_version(label: str, image_id: str | None = None) -> str | None:
    """DPS "Partition Names": ``Name_Version``, the underscore separating the version."""
    if image_id and label.startswith(image_id + "_"):
        return label[len(image_id) + 1:] or None
    name, sep, version = label.rpartition("_")
    return version if sep and name else None


class _Pairing:
    """Assigns verity and signature partitions to slots, each at most once."""

    def __init__(self, image: DiskImage, knowledge: dict, layout: Layout, boot: Boot):
        self.knowledge, self.layout, self.boot = knowledge, layout, boot
        self.entries = entries_of(image)
        self.by_number = {p.number: p for p in layout.partitions}
        self.used: set[int] = set()

    def free(self, part: DpsPartition) -> bool:
        return part.number not in self.used

    def take(self, slot: Slot) -> None:
        self.used |= {p.number for p in (slot.verity, slot.sig) if p is not None}

    def signature_of(self, data: DpsPartition) -> DpsPartition | None:
        """By label (``Name_Version_verity_sig``), else the signature whose root hash names the
        data partition by its UUID (DPS "Verity")."""
        label = data.label + self.knowledge["signature_label_suffix"]
        sigs = self.layout.signatures
        found = next((s for s in sigs if s.label == label and self.free(s)), None)
        if found is not None:
            return found
        for s in sigs:
            if not self.free(s) or s.empty:
                continue
            sig, _problem = read_signature(self.knowledge, s.volume)
            if sig and (root_hash_uuids(sig["rootHash"]) or ("",))[0] == data.uuid:
                return s
        return None

    def root_hash(self, slot: Slot) -> dict | None:
        """Set the slot's root hash from its signature, else from the default UKI's pin;
        returns the evidence of where it came from."""
        source = None
        if slot.sig is not None:
            slot.signature, slot.signature_problem = read_signature(self.knowledge, slot.sig.volume)
            if slot.signature:
                slot.root_hash = slot.signature["rootHash"]
                slot.root_hash_source = f"verity signature partition {slot.sig.number} (rootHash)"
                source = evidence(f"{slot.sig.describe()}: JSON rootHash", slot.root_hash)
        boot = self.boot
        pinned_uuids = root_hash_uuids(boot.pinned)
        if slot.root_hash is None and boot.pinned and pinned_uuids and pinned_uuids[0] == slot.data.uuid:
            slot.root_hash = boot.pinned_hash
            source = boot.pinned_evidence
            slot.root_hash_source = source["source"] if source else "the kernel command line"
        return source

    def pair(self, slot: Slot, source: dict | None) -> None:
        """The verity partition the root hash names by UUID, as systemd pairs them."""
        boot, role = self.boot, self.layout.role
        explicit = boot.pinned and slot.root_hash == boot.pinned_hash
        pair = pair_by_root_hash(self.entries, slot.root_hash, role, source,
                                 data_device=boot.data_device if explicit else None,
                                 hash_device=boot.hash_device if explicit else None)
        slot.evidence += pair.evidence
        slot.pairing_problems = pair.problems
        hash_part = self.by_number.get(pair.hash.number) if pair.hash is not None else None
        if hash_part is not None and self.free(hash_part) and hash_part.role == self.layout.companions["verity"]:
            slot.verity = hash_part
        slot.pairing = pair.paired and pair.data is not None and pair.data.number == slot.data.number

    def verity_by_label(self, data: DpsPartition) -> DpsPartition | None:
        """No root hash anywhere: the ``Name_Version`` labels are all that ties them."""
        label = data.label + self.knowledge["verity_label_suffix"]
        return next((v for v in self.layout.verity if v.label == label and self.free(v)), None)

    def fill(self, slot: Slot) -> None:
        slot.sig = self.signature_of(slot.data)
        source = self.root_hash(slot)
        if slot.root_hash:
            self.pair(slot, source)
        if slot.verity is None and not slot.root_hash:
            slot.verity = self.verity_by_label(slot.data)

    def give_spares(self, slots: list[Slot]) -> None:
        """Empty slots take the remaining empty verity and signature partitions in order."""
        spare_verity = [v for v in self.layout.verity if self.free(v) and v.empty]
        spare_sigs = [s for s in self.layout.signatures if self.free(s) and s.empty]
        for slot in slots:
            if slot.empty:
                slot.verity = spare_verity.pop(0) if spare_verity else None
                slot.sig = spare_sigs.pop(0) if spare_sigs else None


def find_slots(image: DiskImage, knowledge: dict, layout: Layout, boot: Boot) -> list[Slot]:
    """The main role's slots, each with its verity and signature partitions and root hash."""
    pairing = _Pairing(image, knowledge, layout, boot)
    slots = []
    for index, data in enumerate(layout.data):
        slot = Slot(slot_name(index), data,
                    pending=any(data.label.startswith(p) for p in knowledge["pending_label_prefixes"]))
        if not slot.empty:
            pairing.fill(slot)
        pairing.take(slot)
        slots.append(slot)
    pairing.give_spares(slots)
    return slots


def choose_active(image: DiskImage, knowledge: dict, layout: Layout, boot: Boot) -> Slots:
    """The slots, the image's IMAGE_ID (it names the labels' version part), and the active slot:
    the one the default UKI pins, else the highest label version among usable slots."""
    found = Slots(find_slots(image, knowledge, layout, boot))
    for slot in found.slots:
        if not slot.empty:
            parsed, _where = slot_os_release(image, knowledge, slot.data.volume, layout.role)
            if parsed and parsed.get("IMAGE_ID"):
                found.image_id = parsed["IMAGE_ID"]
                break
    for slot in found.slots:
        if not slot.empty:
            slot.version = label_version(slot.data.label, found.image_id)
    if boot.pinned:
        found.active = next((s for s in found.slots if s.root_hash and s.root_hash == boot.pinned_hash), None)
        if found.active is not None:
            found.choice = (f"default UKI {boot.default['path']} pins it with {boot.hash_key}= "
                            "(its first 128 bits are the partition UUID)")
    if found.active is None:
        for slot in found.slots:
            if slot.empty or slot.pending or slot.data.no_auto:
                continue
            if found.active is None or version_compare(slot.version, found.active.version) > 0:
                found.active = slot
        found.choice = "highest version among the labels (DPS: strverscmp order)" if found.active else None
    if found.active is not None:
        found.os_release, found.os_evidence = slot_os_release(image, knowledge, found.active.data.volume, layout.role)
    return found
