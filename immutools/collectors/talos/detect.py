"""Recognising a Talos disk and finding its parts: partitions by GPT name (Talos never relies on
partition numbers), the deterministic GUIDs of reproducible images, the META key/value store, and
the fingerprints detection weighs (``data/distributions/talos.yaml``: ``gpt``, ``detect``, ``meta``).

``guid_from_label`` is our own code: Talos's ``GUIDFromLabel`` (siderolabs/talos
pkg/makefs/makefs.go) is Go and no Python library computes it.
"""

from __future__ import annotations

import hashlib
import re
import uuid as uuidlib
from dataclasses import dataclass, field

from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.fs.talos_meta import BLOCK, META_SIZE, TAG_NAMES, TalosMeta, read_meta
from immutools.report.model import evidence
from immutools.system.grubcfg import GrubConfig, parse_grub_cfg

MAX_TEXT = 1024 * 1024            # grub.cfg, extensions.yaml, STATE config: small text files
_REQUIRED_HITS = {"meta_exact", "grub_entries", "uki_name"}   # a Talos disk shows one of these


def guid_from_label(label: str) -> str:
    """Talos ``GUIDFromLabel`` (siderolabs/talos pkg/makefs/makefs.go): the version-8 UUID of
    sha256(16 zero bytes || label)."""
    raw = bytearray(hashlib.sha256(bytes(16) + label.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuidlib.UUID(bytes=bytes(raw)))


def read_text(image: DiskImage, fs, path: str, where: str) -> str | None:
    """A small text file of ``fs``; None when absent; a warning when unreadable."""
    try:
        if fs is None or not fs.exists(path):
            return None
        return fs.read_text(path, max_bytes=MAX_TEXT)
    except ImmutoolsError as exc:
        image.warn(f"{where}: {path}: {exc}")
        return None


@dataclass
class GrubText:
    """BOOT's grub.cfg as read at detection: its text and, when it parses, the configuration."""

    text: str | None = None
    config: GrubConfig | None = None
    error: str | None = None                     # why it did not parse


@dataclass
class Layout:
    """The partitions a Talos disk is made of, by GPT name (any may be missing)."""

    volumes: dict[str, Volume]
    esp: Volume | None
    boot: Volume | None
    meta: Volume | None
    state: Volume | None
    ephemeral: Volume | None
    esp_fs: object | None = None                 # FAT, when the ESP is one
    boot_fs: object | None = None                # XFS, when BOOT is one
    grub: GrubText = field(default_factory=GrubText)
    uki_paths: list[str] = field(default_factory=list)

    def label(self, volume: Volume | None) -> str:
        return volume.describe() if volume is not None else "?"


def volumes_by_label(image: DiskImage) -> dict[str, Volume]:
    """Partitions by GPT name; the first of a repeated name wins."""
    out: dict[str, Volume] = {}
    for vol in image.volumes:
        if vol.partition is not None and vol.partition.label and vol.partition.label not in out:
            out[vol.partition.label] = vol
    return out


def uki_paths(image: DiskImage, knowledge: dict, esp_fs, esp: Volume | None) -> list[str]:
    """The ESP files named like Talos UKIs."""
    boot = knowledge["boot"]
    pattern = re.compile(boot["uki_name"])
    base = boot["uki_dir"]
    try:
        if esp_fs is None or not esp_fs.exists(base):
            return []
        names = esp_fs.listdir(base)
    except ImmutoolsError as exc:
        image.warn(f"{esp.describe()}: {base}: {exc}")
        return []
    return [f"{base}/{name}" for name in names if pattern.match(name)]


def read_grub_text(image: DiskImage, knowledge: dict, layout: Layout) -> GrubText:
    path = knowledge["boot"]["grub_cfg"]
    found = GrubText(read_text(image, layout.boot_fs, path, layout.label(layout.boot)) if layout.boot_fs else None)
    if found.text:
        try:
            found.config = parse_grub_cfg(found.text)
        except ImmutoolsError as exc:
            found.error = str(exc)
    return found


def find_layout(image: DiskImage, knowledge: dict) -> Layout:
    labels = knowledge["gpt"]["labels"]
    vols = volumes_by_label(image)
    esp = vols.get(labels["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
    boot = vols.get(labels["boot"])
    meta = vols.get(labels["meta"])
    layout = Layout(vols, esp, boot, meta if meta is not None and meta.partition is not None else None,
                    vols.get(labels["state"]), vols.get(labels["ephemeral"]))
    fstypes = knowledge["gpt"]["filesystems"]
    layout.esp_fs = image.filesystem(esp) if esp is not None and esp.fstype == fstypes["esp"] else None
    layout.boot_fs = image.filesystem(boot) if boot is not None and boot.fstype == fstypes["boot"] else None
    layout.grub = read_grub_text(image, knowledge, layout)
    layout.uki_paths = uki_paths(image, knowledge, layout.esp_fs, esp) if layout.esp_fs is not None else []
    return layout


def fingerprints(image: DiskImage, knowledge: dict, layout: Layout) -> tuple[list[str], list[dict]]:
    """(names of the fingerprints that hit, their evidence)."""
    gpt, labels = knowledge["gpt"], knowledge["gpt"]["labels"]
    hits, ev = [], []
    meta = layout.meta
    if meta is not None and (meta.partition.type_guid or "") == gpt["data_type"] and meta.partition.size == gpt["meta_size"]:
        hits.append("meta_exact")
        ev.append(evidence(f"{meta.describe()}: GPT entry", f"Linux data type, exactly {gpt['meta_size']} bytes "
                           "(Talos metaMatch, siderolabs/talos internal/app/machined/pkg/controllers/block/"
                           "internal/volumes/volumeconfig/types.go)"))
    if meta is not None and meta.fstype == "talos-meta":
        hits.append("meta_adv")
        ev.append(evidence(f"{meta.describe()}: offset {meta.identity.details.get('copy_offset', 0)}",
                           "Talos ADV magics 0x5a4b3c2d/0xa5b4c3d2"))
    others = [lab for lab in labels.values() if lab != labels["meta"] and lab in layout.volumes]
    if len(others) >= 2:
        hits.append("talos_labels")
        ev.append(evidence("GPT partition names", f"Talos partition names {', '.join(others)} "
                           "(siderolabs/talos pkg/machinery/constants/constants.go)"))
    title = re.compile(knowledge["boot"]["entry_title"])
    if layout.grub.config is not None and any(title.match(e.title) for e in layout.grub.config.entries):
        hits.append("grub_entries")
        ev.append(evidence(f"{layout.boot.describe()}: {knowledge['boot']['grub_cfg']}",
                           "menu entries named \"<A|B> - Talos vX.Y.Z\""))
    if layout.uki_paths:
        hits.append("uki_name")
        ev.append(evidence(f"{layout.esp.describe()}: {layout.uki_paths[0]}",
                           "Talos UKI file name (siderolabs/talos bootloader/sdboot/sdboot.go)"))
    if (image.table.disk_guid or "").lower() == guid_from_label(gpt["deterministic_disk_label"]):
        hits.append("deterministic_guids")
        ev.append(evidence("GPT header disk GUID", f"GUIDFromLabel(\"{gpt['deterministic_disk_label']}\") "
                           "(siderolabs/talos pkg/makefs/makefs.go)"))
    return hits, ev


def confidence(knowledge: dict, hits: list[str]) -> float:
    if not _REQUIRED_HITS & set(hits):
        return 0.0
    return weighted_confidence(knowledge["detect"], hits)


# ------------------------------------------------------------------------------------------------
# META
# ------------------------------------------------------------------------------------------------
def meta_tag(knowledge: dict, key: str) -> int:
    """The tag number of a META key the data file names (``meta.upgrade_tag`` ...)."""
    name = knowledge["meta"][key]
    return next(t for t, n in TAG_NAMES.items() if n == name)


def read_meta_store(image: DiskImage, knowledge: dict, vol: Volume | None) -> tuple[TalosMeta | None, list[dict]]:
    """The META key/value store (both ADV copies and the legacy syslinux ADV), with warnings for
    damaged copies; (None, []) when there is no META partition or it cannot be read."""
    if vol is None:
        return None, []
    try:
        meta = read_meta(vol.source)
    except ImmutoolsError as exc:
        image.warn(f"{vol.describe()}: META: {exc}")
        return None, []
    ev = [evidence(f"{vol.describe()}: Talos ADV copies at 0 and {BLOCK} ({knowledge['meta']['source']})",
                   ", ".join(f"copy {c.index} {c.state}" for c in meta.copies))]
    if meta.size != META_SIZE:
        image.warn(f"{vol.describe()}: META is {meta.size} bytes; Talos only uses a META of exactly {META_SIZE} bytes")
    for copy in meta.copies:
        if copy.state in ("bad-checksum", "bad-magic", "damaged") and not meta.all_zero:
            image.warn(f"{vol.describe()}: META copy {copy.index}: {copy.state} ({copy.detail})")
    if meta.copies_agree is False:
        image.warn(f"{vol.describe()}: META copies 1 and 2 hold different keys or values; Talos reads copy 1")
    return meta, ev


def meta_state(meta: TalosMeta | None) -> str | None:
    if meta is None:
        return None
    if meta.all_zero:
        return "empty"
    if meta.selected:
        return "valid"
    return "legacy-only" if meta.tags else "damaged"


def deterministic_guid_checks(image: DiskImage, knowledge: dict, layout: Layout) -> dict[str, bool]:
    """Which GUIDs are ``GUIDFromLabel`` of their label (all of them on images >= 1.13)."""
    gpt = knowledge["gpt"]
    checks = {"disk": (image.table.disk_guid or "").lower() == guid_from_label(gpt["deterministic_disk_label"])}
    for label in gpt["deterministic_partitions"]:
        vol = layout.volumes.get(label)
        if vol is not None and vol.partition is not None:
            checks[label] = (vol.partition.uuid or "").lower() == guid_from_label(label)
    boot_label = gpt["labels"]["boot"]
    if layout.boot is not None and layout.boot.identity.uuid:
        checks[f"{boot_label}_xfs_uuid"] = layout.boot.identity.uuid.lower() == guid_from_label(boot_label)
    return checks
