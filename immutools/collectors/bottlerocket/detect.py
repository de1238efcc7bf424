"""Recognising a Bottlerocket disk from its partition table: an OS disk by its BOOT partitions (with
ROOT and HASH after them and the sys-root os-release), the split plan's data image by a table that
holds only DATA partitions. Each fingerprint's weight is in the data file's ``detect``."""

from __future__ import annotations

from immutools.disk import DiskImage
from immutools.report.model import evidence

from .layout import Bank, part_type, read_os_release


def detect_os_disk(image: DiskImage, knowledge: dict, banks: list[Bank]) -> tuple[list[str], list[dict]]:
    """(fingerprints, evidence) of an OS disk whose partition sets are ``banks`` (not empty)."""
    gpt = knowledge["gpt"]
    types = gpt["types"]
    first = banks[0]
    hits = ["boot_type"]
    ev = [evidence(f"{first.boot.describe()}: GPT entry", f"type {types['boot']} (Bottlerocket BOOT)")]
    if any((first.boot.label or "") == f"{p}BOOT-A" for p in gpt["label_prefixes"]):
        hits.append("boot_label")
        ev.append(evidence(f"{first.boot.describe()}: GPT entry", f"name {first.boot.label}"))
    if first.root is not None and first.hash is not None:
        hits.append("root_hash_follow")
        ev.append(evidence(f"{first.root.describe()}, {first.hash.describe()}: GPT entries",
                           "ROOT and HASH types at BOOT +1 / +2"))
    if any(part_type(v) == types["private"] for v in image.volumes):
        hits.append("private_type")
    for bank in banks:
        read_os_release(image, knowledge, bank)
        if bank.os_release and bank.os_release.get("ID") == knowledge["id"]:
            hits.append("os_release_id")
            ev.append(bank.os_ev | {"detail": f"os-release ID={knowledge['id']}"})
            break
    return hits, ev


def detect_data_disk(image: DiskImage, knowledge: dict) -> tuple[list[str], list[dict], dict] | None:
    """(fingerprints, evidence, facts) when every partition has the DATA type; None otherwise."""
    gpt = knowledge["gpt"]
    parts = [v for v in image.volumes if v.partition is not None]
    datas = [v for v in parts if part_type(v) == gpt["types"]["data"]]
    if not datas or len(datas) != len(parts):
        return None
    hits = ["data_type_only"]
    ev = [evidence(f"{datas[0].describe()}: GPT entry",
                   f"type {gpt['types']['data']} (Bottlerocket DATA) and no other partition")]
    fixed = set(gpt["data_partuuids"].values())
    if any((v.partition.uuid or "") in fixed for v in datas):
        hits.append("data_fixed_partuuid")
        ev.append(evidence(f"{datas[0].describe()}: GPT entry", f"fixed data PARTUUID {datas[0].partition.uuid}"))
    if any(v.label == gpt["data_label"] for v in datas):
        hits.append("data_label")
    return hits, ev, {"kind": "data-disk", "data": datas}
