"""``verify``: recompute each verity-protected OS filesystem's hash tree and compare it with the
root hash the boot chain would use. Which partitions and which root hash is the collector's
knowledge (``integrity.targets`` in its report); the hashing is ``immutools.fs.verity.verify``.

The result's ``status`` says what happened as a whole: ``verified`` (every target checked and
matched), ``failed`` (a mismatch or an unreadable target), or ``nothing-to-verify`` (no target, or a
target the boot chain names no root hash for: a verity hash partition nobody pairs is not a
verified one); ``ok`` is true only for ``verified``."""

from __future__ import annotations

import dataclasses

from immutools.disk import DiskImage, PhaseTimer, require_image
from immutools.errors import ImmutoolsError
from immutools.fs.verity import VerityParams, read_superblock, verify
from immutools.limits import DEFAULT_LIMITS, Limits


def _params_for(image: DiskImage, target: dict) -> tuple[VerityParams | None, str | None]:
    hash_vol = image.volume(number=target["hash_partition"])
    if hash_vol is None:
        return None, f"hash partition {target['hash_partition']} not found"
    if target.get("params"):
        p = dict(target["params"])
        params = VerityParams(**{k: p[k] for k in p if k in {f.name for f in dataclasses.fields(VerityParams)}})
    else:
        params = read_superblock(hash_vol.source, target["hash_offset"])
        if params is None:
            return None, f"{hash_vol.describe()}: no dm-verity superblock at offset {target['hash_offset']}"
    if target.get("root_hash"):
        params.root_hash = target["root_hash"]
    return params, None


def verify_image(path: str, limits: Limits = DEFAULT_LIMITS, progress: bool | None = None) -> dict:
    """Verify every verity target the image's collector names. Returns a result dict."""
    from immutools.scan import choose_collector

    require_image(path)
    results = []
    with DiskImage.open(path, limits=limits, progress=progress, timer=PhaseTimer()) as image:
        collector, detection, _ = choose_collector(image)
        sections = collector.collect(image, detection) if collector is not None else {}
        integrity = sections.get("integrity") or {}
        targets = integrity.get("targets") or []
        for target in targets:
            row = {"slot": target.get("slot"), "partition": target.get("partition"),
                   "root_hash_source": target.get("root_hash_source")}
            try:
                params, problem = _params_for(image, target)
                if params is None:
                    row.update(status="error", detail=problem)
                elif not params.root_hash:
                    row.update(status="no-root-hash", detail="the boot chain names no root hash for this slot")
                else:
                    data_vol = image.volume(number=target["partition"])
                    hash_vol = image.volume(number=target["hash_partition"])
                    data = data_vol.source.slice(target.get("data_offset", 0), params.data_size, name=f"{data_vol.describe()} data")
                    result = verify(data, hash_vol.source, params)
                    row.update(
                        status="ok" if result.ok else "mismatch",
                        expected_root=params.root_hash, computed_root=result.computed_root,
                        bad_data_blocks=result.bad_data_blocks, bad_data_count=result.bad_data_count,
                        bad_hash_blocks=result.bad_hash_blocks, bad_hash_count=result.bad_hash_count,
                        data_blocks=params.data_blocks, data_block_size=params.data_block_size,
                    )
            except ImmutoolsError as exc:
                row.update(status="error", detail=str(exc))
            results.append(row)
        orphans = [v.describe() for v in image.volumes
                   if v.fstype == "dm-verity" and all(t.get("hash_partition") != v.number for t in targets)]
        warnings = list(image.warnings)
    if any(r["status"] in ("mismatch", "error") for r in results):
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
        "verity": bool(targets),
        "targets": results,
        "status": status,
        "reason": reason,
        "ok": status == "verified",
        "warnings": warnings,
    }
