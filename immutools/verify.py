"""``verify``: recompute each verity-protected OS filesystem's hash tree and compare it with the
root hash the boot chain would use. Which partitions and which root hash is the collector's
knowledge (``integrity.targets`` in its report); the hashing is ``immutools.fs.verity.verify``.

**Where the parameters come from**, per target (``params_source`` in each row), as the
distribution's boot chain opens the device:

* ``superblock`` -- Flatcar (its initrd runs ``veritysetup open --hash-offset=<off> ... <roothash>``,
  flatcar/bootengine ``dracut/10verity-generator/verity-generator``) and systemd DPS/repart images
  (``systemd-veritysetup`` reads the superblock of the verity partition; systemd
  ``src/veritysetup/veritysetup.c``): block sizes, counts, algorithm and salt are the superblock's,
  only the root hash comes from the boot chain. A patched superblock changes what is hashed, so it
  shows as a root-hash mismatch (or, for a field no kernel accepts, an unreadable target).
* ``table`` -- Bottlerocket and Container-Optimized OS: GRUB gives the kernel a complete dm-verity
  table (``dm-mod.create=``), and the kernel maps the device from the table alone (Linux
  ``Documentation/admin-guide/device-mapper/verity.rst``, ``dm-init.rst``); the superblock on the hash
  device is never read at boot. The data are checked with the table's parameters. The superblock
  ``veritysetup format`` wrote in the hash block before the tree must still agree with the table:
  a contradiction (or a superblock whose magic is there but whose fields no tool accepts) means the
  hash device or the table was changed after the build, and the target is ``inconsistent`` --
  a failure, even when the data match the table's root hash. A hash device without a superblock
  there is accepted (``superblock.state: absent``): the kernel does not need one.

The result's ``status`` says what happened as a whole: ``verified`` (every target checked and
matched), ``failed`` (a mismatch, an inconsistent superblock or an unreadable target), or
``nothing-to-verify`` (no target, or a target the boot chain names no root hash for: a verity hash
partition nobody pairs is not a verified one); ``ok`` is true only for ``verified``."""

from __future__ import annotations

import dataclasses

from immutools.disk import DiskImage, PhaseTimer, require_image
from immutools.errors import ImmutoolsError
from immutools.fs.verity import VerityParams, contradictions, read_superblock, superblock_offset_before, verify
from immutools.limits import DEFAULT_LIMITS, Limits

_PARAM_FIELDS = {f.name for f in dataclasses.fields(VerityParams)}
# Row statuses, worst first: the first one any target has decides ``failed``.
_FAILING = ("error", "mismatch", "inconsistent")


def _table_superblock(hash_vol, table: VerityParams) -> dict:
    """The superblock a table-driven target's hash device carries before its tree, against the table."""
    offset = superblock_offset_before(table)
    if offset is None:
        return {"state": "absent", "offset": None, "contradictions": []}
    try:
        sb = read_superblock(hash_vol.source, offset)
    except ImmutoolsError as exc:
        return {"state": "unreadable", "offset": offset, "contradictions": [str(exc)]}
    if sb is None:
        return {"state": "absent", "offset": offset, "contradictions": []}
    found = contradictions(sb, table)
    return {"state": "disagrees" if found else "agrees", "offset": offset, "contradictions": found}


def _params_for(image: DiskImage, target: dict) -> tuple[VerityParams | None, dict | None, str | None]:
    """(parameters to check with, the superblock's state, problem)."""
    hash_vol = image.volume(number=target["hash_partition"])
    if hash_vol is None:
        return None, None, f"hash partition {target['hash_partition']} not found"
    if target.get("params"):
        p = dict(target["params"])
        params = VerityParams(**{k: p[k] for k in p if k in _PARAM_FIELDS})
        superblock = dict(_table_superblock(hash_vol, params), params_source="table")
    else:
        params = read_superblock(hash_vol.source, target["hash_offset"])
        if params is None:
            return None, None, f"{hash_vol.describe()}: no dm-verity superblock at offset {target['hash_offset']}"
        superblock = {"state": "source", "offset": target["hash_offset"], "contradictions": [], "params_source": "superblock"}
    if target.get("root_hash"):
        params.root_hash = target["root_hash"]
    return params, superblock, None


def _check_target(image: DiskImage, target: dict) -> dict:
    row = {"slot": target.get("slot"), "partition": target.get("partition"),
           "root_hash_source": target.get("root_hash_source")}
    try:
        params, superblock, problem = _params_for(image, target)
        if params is None:
            row.update(status="error", detail=problem)
            return row
        row["params_source"] = superblock.pop("params_source")
        row["superblock"] = superblock
        if not params.root_hash:
            row.update(status="no-root-hash", detail="the boot chain names no root hash for this slot")
            return row
        data_vol = image.volume(number=target["partition"])
        hash_vol = image.volume(number=target["hash_partition"])
        if data_vol is None:
            row.update(status="error", detail=f"data partition {target['partition']} not found")
            return row
        data = data_vol.source.slice(target.get("data_offset", 0), params.data_size, name=f"{data_vol.describe()} data")
        result = verify(data, hash_vol.source, params)
        row.update(
            status="ok" if result.ok else "mismatch",
            expected_root=params.root_hash, computed_root=result.computed_root,
            bad_data_blocks=result.bad_data_blocks, bad_data_count=result.bad_data_count,
            bad_hash_blocks=result.bad_hash_blocks, bad_hash_count=result.bad_hash_count,
            data_blocks=params.data_blocks, data_block_size=params.data_block_size,
        )
        if superblock["contradictions"] and result.ok:
            row.update(status="inconsistent",
                       detail=(f"the data match the table's root hash, but the dm-verity superblock of "
                               f"{hash_vol.describe()} at offset {superblock['offset']} contradicts the boot "
                               f"chain's table: {'; '.join(superblock['contradictions'])}"))
    except ImmutoolsError as exc:
        row.update(status="error", detail=str(exc))
    return row


def verify_image(path: str, limits: Limits = DEFAULT_LIMITS, progress: bool | None = None) -> dict:
    """Verify every verity target the image's collector names. Returns a result dict."""
    from immutools.scan import choose_collector

    require_image(path)
    with DiskImage.open(path, limits=limits, progress=progress, timer=PhaseTimer()) as image:
        collector, detection, _ = choose_collector(image)
        sections = collector.collect(image, detection) if collector is not None else {}
        integrity = sections.get("integrity") or {}
        targets = integrity.get("targets") or []
        results = [_check_target(image, target) for target in targets]
        pinned = (integrity.get("root_hash") or "").lower() if integrity.get("verity") else ""
        if pinned and all((t.get("root_hash") or "").lower() != pinned for t in targets):
            # The collector says the boot chain opens verity with this root hash, yet no target
            # carries it: a device we cannot even describe (e.g. its superblock is unreadable) is
            # one the kernel cannot open either. (A root hash nothing on the disk pairs with, which
            # the collector reports as verity off, stays "nothing to verify".)
            why = [w for w in image.warnings if "verity" in w.lower()]
            results.append({"slot": None, "partition": None, "root_hash_source": integrity.get("hash_location"),
                            "status": "error", "expected_root": pinned,
                            "detail": "the boot chain pins this root hash, but no dm-verity device for it could be read"
                                      + (f": {'; '.join(why)}" if why else "")})
        orphans = [v.describe() for v in image.volumes
                   if v.fstype == "dm-verity" and all(t.get("hash_partition") != v.number for t in targets)]
        warnings = list(image.warnings)
    if any(r["status"] in _FAILING for r in results):
        status, reason = "failed", None
    elif not results or any(r["status"] != "ok" for r in results):
        status = "nothing-to-verify"
        unpaired = [f"slot {r['slot']} (partition {r['partition']})" for r in results if r["status"] == "no-root-hash"]
        if unpaired:
            reason = f"no root hash for {', '.join(unpaired)}: the boot chain names none, so nothing can be checked against it"
        elif orphans:
            reason = (f"dm-verity hash data in {', '.join(orphans)}, but no data partition and root hash could be paired "
                      "with it (no signature partition, no roothash=/usrhash= naming it)")
        else:
            reason = "no dm-verity protected filesystem in the image"
    else:
        status, reason = "verified", None
    return {
        "path": path,
        "collector": collector.name if collector else None,
        "verity": bool(targets) or bool(pinned),
        "targets": results,
        "status": status,
        "reason": reason,
        "ok": status == "verified",
        "warnings": warnings,
    }
