"""The report sections of a DPS image built from what the collector learned (``DpsFacts``): the
OS identity, the integrity section (dm-verity targets ``immutools verify`` checks), the
``distribution`` section, and why a guaranteed fact could not be determined.
"""

from __future__ import annotations

from immutools.report.completeness import guaranteed_facts
from immutools.report.model import Findings, Integrity, OsIdentity, evidence
from immutools.system.compose import arch_from_tree, gpt_auto_row

from .detect import role_spec
from .facts import DpsFacts

_SIGNATURE_NOTE = "the PKCS#7 signature is not checked offline (the kernel keyring decides at boot)"


def architecture(knowledge: dict, facts: DpsFacts) -> tuple[str | None, dict | None]:
    """From the active slot's per-architecture DPS type, else an ELF header in the composed tree."""
    active = facts.slots.active
    if active is None:
        return arch_from_tree(facts.system.tree)
    arch = next((a["report"] for a in knowledge["architectures"] if a["dps"] == active.data.arch), None)
    if arch is not None:
        return arch, evidence(f"{active.data.describe()}: GPT entry", f"architecture-specific type {active.data.key}")
    return arch_from_tree(facts.system.tree)


def os_identity(facts: DpsFacts) -> OsIdentity:
    """os-release of the active slot; os.role says what kind of DPS image this is (the
    ``guarantees.roles`` of data/distributions/dps.yaml)."""
    parsed = facts.slots.os_release or {}
    ident = OsIdentity.from_os_release(parsed, facts.slots.os_evidence, image_id=parsed.get("IMAGE_ID"),
                                       image_version=parsed.get("IMAGE_VERSION"), role=facts.layout.kind)
    ident.arch = facts.arch
    ident.add_evidence(facts.arch_evidence)
    return ident


def _signature_summary(facts: DpsFacts) -> dict:
    sig = facts.slots.active.signature if facts.slots.active else None
    return {"present": sig is not None, "certificate_fingerprint": (sig or {}).get("certificateFingerprint")}


def integrity_section(facts: DpsFacts) -> Integrity:
    slots, boot = facts.slots, facts.boot
    active = slots.active
    targets = [{"slot": s.name, "partition": s.data.number, "data_offset": 0, "hash_partition": s.verity.number,
                "hash_offset": 0, "superblock": True, "root_hash": s.root_hash, "root_hash_source": s.root_hash_source}
               for s in slots.slots if not s.empty and s.verity is not None]
    sig = active.signature if active else None
    hash_location = "; ".join(x for x in (
        f"verity signature partition {active.sig.number} rootHash" if active and active.sig and sig else None,
        f"UKI {boot.default['path']} {boot.hash_key}=" if boot.pinned else None) if x) or None
    return Integrity(
        verity=any(s.verity is not None and s.root_hash for s in slots.slots if not s.empty),
        root_hash=(active.root_hash if active else None) or boot.pinned_hash,
        hash_location=hash_location,
        evidence=(active.evidence if active else []) or ([boot.pinned_evidence] if boot.pinned_evidence else []),
        targets=targets,
        extra={"signature": _signature_summary(facts) | {"checked": False, "note": _SIGNATURE_NOTE}})


def _verity_pairing(facts: DpsFacts) -> bool | None:
    slots = [s for s in facts.slots.slots if not s.empty and s.root_hash]
    return all(s.pairing for s in slots) if any(s.root_hash for s in facts.slots.slots) else None


def _uki_row(uki: dict) -> dict:
    return ({k: v for k, v in uki.items() if k not in ("cmdline", "os_release")}
            | {"cmdline": uki["cmdline"].text, "image_version": uki["os_release"].get("IMAGE_VERSION")})


def _partition_row(part) -> dict:
    return {"number": part.number, "designator": part.key, "label": part.label, "uuid": part.uuid, "empty": part.empty,
            "no_auto": part.no_auto, "read_only": part.read_only, "grow_file_system": part.grow_file_system}


def distribution_section(knowledge: dict, facts: DpsFacts, transfers: list[dict], repart: list[str]) -> dict:
    slots, boot, system = facts.slots, facts.boot, facts.system
    parsed = slots.os_release or {}
    sig = slots.active.signature if slots.active else None
    esp = system.esp_decision
    return {
        "name": knowledge["id"],
        "image_id": parsed.get("IMAGE_ID"),
        "image_version": parsed.get("IMAGE_VERSION"),
        "main_role": facts.layout.role,
        "verity_pairing": _verity_pairing(facts),
        "verity_pairing_problems": [p for s in slots.slots for p in s.pairing_problems],
        "signature": _signature_summary(facts) | {
            "root_hash_matches_uki": (sig["rootHash"] == boot.pinned_hash) if sig and boot.pinned else None,
            "problem": slots.active.signature_problem if slots.active else None},
        "default_uki": boot.default["path"] if boot.default else None,
        "default_uki_choice": boot.choice,
        "ukis": [_uki_row(u) for u in boot.ukis],
        "kernel_cmdline": boot.cmdline.text if boot.cmdline else None,
        "active_slot_choice": slots.choice,
        "esp_mountpoint": esp.target if esp else None,
        "esp_mount_reason": esp.reason if esp else None,
        "gpt_auto": [gpt_auto_row(d) for d in system.decisions],
        "partitions": [_partition_row(p) for p in facts.layout.partitions],
        "sysupdate_transfers": [t["name"] for t in transfers],
        "repart_definitions": repart,
        "skipped_mount_units": system.skipped_units,
    }


# ------------------------------------------------------------------------------------------------
# why a guaranteed fact is missing or inferred
# ------------------------------------------------------------------------------------------------
def _no_root_hash(facts: DpsFacts) -> str:
    """Why no root hash is known for the main role: the boot chain's problem and the signature's."""
    active, boot = facts.slots.active, facts.boot
    if active is None:
        sig = "no slot is usable to read a verity signature partition from"
    elif active.sig is None:
        sig = f"no verity signature partition belongs to {active.data.describe()}"
    else:
        sig = f"{active.sig.describe()}: {active.signature_problem or 'no rootHash'}"
    target = "/" if facts.layout.role == "root" else "/usr"
    return f"no root hash for {target}: {boot.problem or 'the boot chain pins none'}, and {sig}"


def _no_active_slot(knowledge: dict, facts: DpsFacts) -> str:
    prefixes = "/".join(knowledge["pending_label_prefixes"])
    return (f"no usable {facts.layout.role} partition: each is free ({knowledge['empty_label']}), pending ({prefixes}) "
            f"or has the no-auto flag (DPS bit {knowledge['flags']['no_auto']}), and "
            f"{facts.boot.problem or 'the default UKI pins none of them'}")


def _explain_main_mount(findings: Findings, knowledge: dict, facts: DpsFacts) -> None:
    """/ of a root image or /usr of a usr-only image: how systemd sets it up, or why its
    protection is unknown."""
    layout, slots = facts.layout, facts.slots
    target = "/" if layout.role == "root" else "/usr"
    active = slots.active
    if active is None:
        # a usr-only image lacks /usr; a root image's / is then no DPS root partition at all
        findings.explain(f"mount {target}", _no_active_slot(knowledge, facts))
        return
    where = active.data.describe()
    if slots.verity_on:
        findings.explain(f"mount {target}", (
            f"set up at boot by systemd-veritysetup-generator: the root hash ({active.root_hash_source}) names {where} "
            f"and its verity partition by partition UUID; mapped as "
            f"{role_spec(knowledge, layout.role)['device_mapper']} and mounted read-only"))
    elif active.root_hash:
        findings.explain(f"mount {target}", (
            f"the root hash ({active.root_hash_source}) pairs no verity partition with {where} "
            f"({'; '.join(active.pairing_problems) or 'its verity partition is taken'}): {target} is reported as "
            "mounted from the partition without dm-verity, as systemd does with a hash it cannot pair"))
    elif layout.has_verity:
        findings.explain(f"mount {target}", (
            f"{_no_root_hash(facts)}; {target} is reported as mounted from {where} without dm-verity, as systemd "
            "does when no root hash is given, so whether dm-verity protects it is unknown"))
    elif target == "/usr":
        findings.explain("mount /usr", f"mounted by systemd at boot from the active slot's /usr partition {where}; "
                                       "no fstab line names it")


def _explain_paths(findings: Findings, knowledge: dict) -> None:
    """A guaranteed path on an explained mount carries that mount's reason."""
    guaranteed = guaranteed_facts(knowledge, findings.os.version, findings.os.extra.get("role"))
    wanted = {f["fact"][len("path "):] for f in guaranteed if f["fact"].startswith("path ")}
    for row in findings.paths or []:
        reason = findings.explanations.get(f"mount {row.via}") if row.path in wanted else None
        if reason:
            findings.explain(f"path {row.path}", f"on {row.via}, inferred as mount {row.via} says")


def explain_gaps(findings: Findings, knowledge: dict, facts: DpsFacts) -> None:
    """Why a guaranteed fact is missing, or how systemd sets up an inferred one."""
    layout, slots = facts.layout, facts.slots
    if slots.active is None:
        findings.explain("update.active_slot", _no_active_slot(knowledge, facts))
    elif findings.update is not None and findings.update.active_slot is None:
        findings.explain("update.active_slot", f"slot {slots.active.name} ({slots.active.data.describe()}) is active; "
                                               "the report's active_slot names only slots A and B")
    if findings.os.arch is None:
        findings.explain("os.arch", "no active slot whose DPS type names the architecture, and no ELF binary in the "
                                    "composed tree")
    if layout.has_verity and findings.integrity is not None and findings.integrity.root_hash is None:
        findings.explain("integrity.root_hash", _no_root_hash(facts))
    _explain_main_mount(findings, knowledge, facts)
    _explain_paths(findings, knowledge)
