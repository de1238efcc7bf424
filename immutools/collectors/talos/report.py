"""The Talos part of the report (``distribution``): the layout, the boot path, the initramfs and
its extensions, META, the kernel and its command line, what the release's era predicts against
what the image shows (``eras`` in ``data/distributions/talos.yaml``), and the STATE files."""

from __future__ import annotations

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.fs.talos_meta import tag_name

from .boot import grub_matches_uki, kspp
from .detect import deterministic_guid_checks, meta_state
from .facts import TalosFacts
from .versions import era_value

_MIB = 1024 * 1024
_UNFORMATTED = ("zero", "unknown", "unreadable")


def disk_state(facts: TalosFacts) -> str:
    """``installed`` once STATE or EPHEMERAL holds a filesystem (machined made them), else ``image``."""
    formatted = [v for v in (facts.layout.state, facts.layout.ephemeral) if v is not None and v.fstype not in _UNFORMATTED]
    return "installed" if formatted else "image"


def state_files(image: DiskImage, knowledge: dict, facts: TalosFacts) -> list[str] | None:
    """Which of Talos's STATE files (machine config, identities) the partition holds."""
    state = facts.layout.state
    state_fs = image.filesystem(state) if state is not None else None
    if state_fs is None:
        return None
    out = []
    for name in knowledge["state"]["files"]:
        try:
            if state_fs.exists("/" + name):
                out.append(name)
        except ImmutoolsError as exc:
            image.warn(f"{state.describe()}: /{name}: {exc}")
    return out


def era_checks(knowledge: dict, facts: TalosFacts, guids: dict, signed: bool) -> list[dict]:
    """What the release's era predicts against what the image shows. Informational: an upgraded
    install keeps its old partitions and bootloader."""
    eras, layout, details = knowledge["eras"], facts.layout, facts.initramfs.details
    out = []

    def add(name, observed):
        expected = era_value(eras[name], facts.version_key)
        if expected is not None and observed is not None:
            out.append({"check": name, "expected": expected, "observed": observed, "ok": expected == observed})

    segments = details.get("segments") or []
    add("initramfs_compression", segments[0]["compression"] if segments else None)
    add("squashfs_compression", details.get("rootfs_compression"))
    add("os_release_filled", facts.system.os_release_filled)
    bootloader = facts.boot.bootloader
    if layout.boot is not None and layout.boot.partition is not None:
        add("boot_partition_mib", layout.boot.partition.size // _MIB)
    if layout.esp is not None and layout.esp.partition is not None and bootloader in ("sd-boot", "dual-boot"):
        add("uki_esp_mib", layout.esp.partition.size // _MIB)
    if disk_state(facts) == "image":
        add("deterministic_guids", guids["disk"])
        by_arch = f"image_bootloader_{facts.system.machined.get('arch')}"
        if by_arch in eras and not signed:          # SecureBoot images are sd-boot only
            add(by_arch, bootloader)
    return out


def _layout_rows(knowledge: dict, facts: TalosFacts) -> dict:
    gpt, vols = knowledge["gpt"], facts.layout.volumes
    meta, bios = vols.get(gpt["labels"]["meta"]), vols.get(gpt["labels"]["bios"])
    return {
        "layout": {label: {"number": v.number, "size_mib": round(v.partition.size / _MIB, 3), "content": v.fstype}
                   for label, v in vols.items() if v.partition is not None},
        "meta_size_ok": (meta.partition.size == gpt["meta_size"]) if meta else None,
        "bios_legacy_bootable": bool((bios.partition.attributes or {}).get("legacy_bios_bootable")) if bios else False,
    }


def _kernel_rows(knowledge: dict, facts: TalosFacts, surface: dict) -> dict:
    cmdline, kernel = facts.cmdline, facts.boot.kernel
    checks = kspp(knowledge, cmdline)
    modules = surface.get("kernel_modules", {})
    return {
        "kernel": kernel.get("version"),
        "kernel_format": kernel.get("format"),
        "kernel_cmdline": cmdline.text if cmdline is not None else None,
        "kernel_cmdline_source": cmdline.origin if cmdline is not None else None,
        "kspp": checks,
        "kspp_satisfied": checks["satisfied"],
        "module_sig_enforce": modules.get("signature_enforced"),
        "module_sig_enforce_by": modules.get("enforced_by"),
        "selinux": surface.get("selinux"),
        "lockdown": surface.get("lockdown"),
    }


def _initramfs_rows(facts: TalosFacts) -> dict:
    details = facts.initramfs.details
    extensions = facts.initramfs.extensions
    return {
        "os_release_filled": facts.system.os_release_filled,
        "initramfs": dict(details),
        "initramfs_compression": [s["compression"] for s in details.get("segments") or []],
        "rootfs_compression": details.get("rootfs_compression"),
        "extensions": [e["name"] for e in extensions],
        "extension_layers": extensions,
        # the report's generic names for system extensions merged at boot
        "sysexts": [e["name"] for e in extensions],
        "sysext_images": [{"name": e["name"], "path": f"{facts.initramfs.where}: /{e['image']}", "evidence": e["evidence"]}
                          for e in extensions],
    }


def _meta_rows(knowledge: dict, facts: TalosFacts) -> dict:
    meta, upgrade = facts.meta, knowledge["meta"]["upgrade_tag"]
    return {
        "meta": meta.to_dict() if meta is not None else None,
        "meta_state": meta_state(meta),
        "meta_tags": {tag_name(t): meta.value_text(t) for t in sorted(meta.tags)} if meta is not None else {},
        "meta_evidence": facts.meta_evidence,
        "upgrade_pending": meta is not None and any(tag_name(t) == upgrade for t in meta.tags),
    }


def _boot_rows(image: DiskImage, facts: TalosFacts) -> dict:
    boot = facts.boot
    active, grub, ukis = boot.active, boot.grub, boot.ukis
    return {
        "grub_default": active.grub_entry.title if active.grub_entry is not None else None,
        "grub_fallback": grub.fallback.title if grub and grub.fallback is not None else None,
        "grub_entries": [{k: v for k, v in e.items() if k != "entry"} for e in grub.entries] if grub else [],
        "ukis": [u["name"] for u in ukis],
        "uki_details": [{k: v for k, v in u.items() if k not in ("uki", "source")} for u in ukis],
        "uki_signed": bool(ukis) and all(u["signed"] for u in ukis),
        "active": {"path": active.path, "decided_by": active.decided_by},
        "grub_slot_matches_uki": grub_matches_uki(image, facts.layout, boot)
        if grub is not None and ukis and active.grub_entry is not None else None,
    }


def _machined_rows(facts: TalosFacts) -> dict:
    machined, version = facts.system.machined, facts.version.value
    tags = machined.get("tags") or []
    return {
        "machined": machined.get("path"),
        "machined_tag": tags[0] if len(tags) == 1 else (version if version in tags else None),
        "machined_tags": tags,
    }


def distribution_section(image: DiskImage, knowledge: dict, facts: TalosFacts, findings) -> dict:
    """``findings`` holds the finished sections (surface, integrity, update) this one repeats."""
    surface = findings.surface or {}
    guids = deterministic_guid_checks(image, knowledge, facts.layout)
    signed = bool(facts.boot.ukis) and all(u["signed"] for u in facts.boot.ukis)
    cmdline, gpt = facts.cmdline, knowledge["gpt"]
    out = {
        "name": knowledge["id"],
        "version": facts.version.value,
        "version_source": facts.version.source,
        "version_candidates": facts.version.candidates,
        "platform": cmdline.get("talos.platform") if cmdline is not None else None,
        "bootloader": facts.boot.bootloader,
        "disk_state": disk_state(facts),
    }
    out |= _layout_rows(knowledge, facts)
    out |= _kernel_rows(knowledge, facts, surface)
    out |= _initramfs_rows(facts)
    out["management"] = knowledge["surface"]["management"]
    out |= _meta_rows(knowledge, facts)
    out |= _boot_rows(image, facts)
    out |= {"deterministic_guids": guids["disk"], "deterministic_guid_checks": guids}
    out |= _machined_rows(facts)
    out |= {
        "executables": facts.executables,
        "install_image": findings.update.server if findings.update is not None else None,
        "mount_checks": facts.mount_checks,
        "era_checks": era_checks(knowledge, facts, guids, signed),
        "user_volumes": [{"name": label, "number": v.number, "kind": kind, "content": v.fstype}
                         for label, v in facts.layout.volumes.items()
                         for prefix, kind in gpt["user_volume_prefixes"].items() if label.startswith(prefix)],
        "gpt_first_usable_lba": image.table.details.get("first_usable_lba"),
        "gpt_first_usable_lba_talos": image.table.details.get("first_usable_lba") == gpt["first_usable_lba"],
        "state_files": state_files(image, knowledge, facts),
        "secure_boot": (findings.integrity.extra.get("secure_boot") if findings.integrity is not None else None),
    }
    return out
