"""The report sections of a Bottlerocket OS disk built from the facts the other modules read:
identity, integrity (the dm-verity table of each set, the target ``immutools verify`` checks) and
the distribution section (partition sets, plan, layout era, boot state, PRIVATE's settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from immutools.disk import DiskImage
from immutools.report.model import Findings, Integrity, OsIdentity, evidence

from .layout import Bank, OsDisk, arch_of
from .mounts import System
from .private import Lockdown, PrivateStore


@dataclass
class Settings:
    """What PRIVATE said, for the distribution section."""

    lockdown: Lockdown
    bootconfig: object | None = None             # BootConfig
    bootconfig_evidence: list[dict] = field(default_factory=list)
    seed: object | None = None
    seed_evidence: list[dict] = field(default_factory=list)
    user_data: bool | None = None

    @classmethod
    def read(cls, store: PrivateStore, lockdown: Lockdown) -> "Settings":
        bootconfig, bootconfig_ev = store.bootconfig()
        seed, seed_ev = store.setting("seed")
        return cls(lockdown, bootconfig, [bootconfig_ev] if bootconfig_ev else [], seed, [seed_ev] if seed_ev else [],
                   store.has_user_data())


def os_identity(image: DiskImage, knowledge: dict, disk: OsDisk, findings: Findings) -> OsIdentity:
    """From the source set's sys-root os-release; the sys-root directory name gives the arch."""
    osr, bank = disk.os_release, disk.source
    ident = OsIdentity.from_os_release(osr, bank.os_ev if bank else None, role="os-disk")
    ident.id = osr.get("ID", knowledge["id"])
    ident.name = osr.get("NAME")
    ident.version = osr.get("VERSION_ID")
    ident.arch = arch_of(knowledge, disk.triple)
    if disk.triple:
        ident.add_evidence(evidence(f"{bank.root.describe()}: /{disk.triple}",
                                    f"sys-root directory name gives the architecture {ident.arch}"))
    elif bank is not None:
        sys_root = knowledge["sys_root"]
        if bank.root is None:
            reason = f"set {bank.name} has no ROOT partition"
        elif image.filesystem(bank.root) is None:
            reason = f"{bank.root.describe()} is not readable (content {bank.root.fstype})"
        else:
            reason = f"{bank.root.describe()}: no os-release under /<arch>{sys_root['suffix']}/{sys_root['usr']}"
        for fact in ("os.version", "os.variant", "os.arch"):
            findings.explain(fact, reason)
    return ident


def _target(knowledge: dict, bank: Bank) -> dict | None:
    """What ``immutools verify`` checks for a set: data/hash partitions and the table's parameters."""
    data_vol, hash_vol, t = bank.data_volume or bank.root, bank.hash_volume or bank.hash, bank.table
    if data_vol is None or hash_vol is None:
        return None
    where = f"{bank.boot.describe()}: {knowledge['boot']['grub_cfg']}"
    return {
        "slot": bank.name, "partition": data_vol.number, "data_offset": 0,
        "hash_partition": hash_vol.number, "hash_offset": t.hash_offset, "superblock": False,
        "root_hash": t.root_hash, "root_hash_source": f"{where} dm-mod.create",
        # the kernel maps the device from the table alone (the superblock is not read)
        "params": {"version": t.version, "algorithm": t.algorithm, "data_block_size": t.data_block_size,
                   "hash_block_size": t.hash_block_size, "data_blocks": t.data_blocks, "salt": t.salt,
                   "root_hash": t.root_hash, "hash_offset": t.hash_offset, "superblock": False},
    }


def _explain_root_hash(disk: OsDisk, findings: Findings) -> None:
    active = disk.active
    if active is None:
        reason = f"no bootable partition set ({disk.choice.reason})"
    else:
        reason = active.table_error or active.cmdline_problem or "grub.cfg gives the kernel no dm-verity table"
        reason = f"set {active.name}: {reason}"
    findings.explain("integrity.root_hash", f"the root hash is only in the booted set's grub.cfg: {reason}")


def integrity_section(knowledge: dict, disk: OsDisk, findings: Findings) -> Integrity:
    ev, targets = [], []
    grub_cfg = knowledge["boot"]["grub_cfg"]
    for b in disk.banks:
        if b.table is None:
            continue
        t = b.table
        ev.append(evidence(f"{b.boot.describe()}: {grub_cfg}",
                           f"set {b.name}: dm-verity table ({b.grub_form} form): {t.data_blocks} data blocks, "
                           f"hash start block {t.hash_start_block}, salt {t.salt[:16]}..., root hash {t.root_hash}"))
        if b.superblock is not None:
            ev.append(evidence(f"{b.hash_volume.describe()}: offset 0",
                               "dm-verity superblock " + ("agrees with the table" if not b.mismatches else
                                                          "disagrees: " + "; ".join(b.mismatches))))
        target = _target(knowledge, b)
        if target is not None:
            targets.append(target)
    table = disk.active.table if disk.active else None
    if table is None:
        _explain_root_hash(disk, findings)
    return Integrity(verity=table is not None, root_hash=table.root_hash if table else None,
                     hash_location=f"{disk.active.boot.describe()}: {grub_cfg}" if table else None,
                     verified=None, evidence=ev, targets=targets)


def _bank_row(b: Bank) -> dict:
    return {
        "boot": b.boot.number, "root": b.root.number if b.root else None, "hash": b.hash.number if b.hash else None,
        "version": b.version, "build_id": b.build_id,
        "variant": (b.os_release or {}).get("VARIANT_ID"),
        "root_fstype": b.root.fstype if b.root else None,
        "attributes": b.attrs().get("raw"),
        "grub_form": b.grub_form,
        "kernel_cmdline": b.cmdline.text if b.cmdline else None,
        "evidence": [e for e in [b.os_ev] + b.grub_ev if e],
    }


def _verity_row(b: Bank) -> dict:
    t, sb = b.table, b.superblock
    return {
        "root_hash": t.root_hash, "salt": t.salt, "data_blocks": t.data_blocks,
        "data_block_size": t.data_block_size, "hash_block_size": t.hash_block_size, "algorithm": t.algorithm,
        "hash_start_block": t.hash_start_block,
        "data_partition": b.data_volume.number if b.data_volume else None,
        "hash_partition": b.hash_volume.number if b.hash_volume else None,
        "data_device": (t.table or {}).get("data_device"), "hash_device": (t.table or {}).get("hash_device"),
        "options": (t.table or {}).get("options"),
        "superblock": ({"version": sb.version, "algorithm": sb.algorithm, "data_blocks": sb.data_blocks,
                        "salt": sb.salt, "uuid": sb.uuid} if sb is not None else None),
        "superblock_error": b.superblock_error,
        "superblock_agrees": (sb is not None and not b.mismatches) if b.hash_volume is not None else None,
        "mismatches": list(b.mismatches),
    }


def _private_booted(knowledge: dict, disk: OsDisk) -> tuple[bool, list[dict]]:
    """PRIVATE's "boot has ever succeeded" attribute bit (signpost sets it after the first good boot)."""
    if disk.private is None:
        return False, []
    flag = knowledge["gpt"]["private_booted"]
    booted = bool((disk.private.partition.attributes or {}).get(flag["attribute"]))
    return booted, [evidence(f"{disk.private.describe()}: GPT entry attributes",
                             f"bit {flag['bit']} ({flag['attribute']}) {'set' if booted else 'clear'}: "
                             "signpost marks it after the first good boot")]


def distribution_section(knowledge: dict, disk: OsDisk, system: System, settings: Settings) -> dict:
    src, active, choice = disk.source, disk.active, disk.choice
    booted, booted_ev = _private_booted(knowledge, disk)
    bootconfig = settings.bootconfig
    row = {
        "name": knowledge["id"],
        "role": "os-disk",
        "plan": disk.plan,
        "layout": disk.era,
        "os_image_size_gib": disk.size_gib,
        "arch_from": disk.triple,
        "root_fstype": src.root.fstype if src and src.root else None,
        "root_fs_size": src.root.identity.size if src and src.root else None,
        "root_partition_size": src.root.partition.size if src and src.root else None,
        "active_bank": active.name if active else None,
        "next_boot": {"partition": choice.partition.number if choice.partition else None, "reason": choice.reason,
                      "will_decrement_tries": choice.will_decrement_tries},
        "private_booted": booted,
        "private_booted_evidence": booted_ev,
        "grub_form": active.grub_form if active else None,
        "grub_default_entry": active.entry.title if active and active.entry else None,
        "secure_boot": active.secure_boot if active else None,
        "kernel_cmdline": active.cmdline.text if active and active.cmdline else None,
        "lockdown": settings.lockdown.mode,
        "lockdown_observed": settings.lockdown.observed,
        "data_filesystem": system.data_fs,
        "data_partitions": [{k: v for k, v in r.items() if k not in ("evidence", "size", "label")} for r in disk.data_rows],
        "data_partition_details": disk.data_rows,
        "bootconfig": dict(bootconfig.values) if bootconfig else None,
        "bootconfig_kernel_args": bootconfig.kernel_args() if bootconfig else [],
        "bootconfig_evidence": settings.bootconfig_evidence,
        "update_seed": settings.seed,
        "update_seed_evidence": settings.seed_evidence,
        "skipped_mounts": system.skipped_mounts,
        "banks": {b.name: _bank_row(b) for b in disk.banks},
        "verity": {b.name: _verity_row(b) for b in disk.banks if b.table is not None},
    }
    if settings.user_data is not None:
        row["user_data"] = settings.user_data
    return row
