"""The data image of Bottlerocket's split plan, scanned on its own: one partition of the DATA type
(the preferred fixed PARTUUID, no name until the OS disk's first boot labels it), holding an empty
ext4, zeros (XFS variants: the filesystem is made at first boot) or, once booted, /local's content."""

from __future__ import annotations

from immutools.disk import DiskImage
from immutools.errors import ImmutoolsError
from immutools.report.model import Findings, OsIdentity, evidence
from immutools.system.units import mount_unit_name

from .layout import data_rows

_MAX_LISTED = 64
_FS_HOUSEKEEPING = ("lost+found",)       # made by mkfs, not by the OS


def _contents(image: DiskImage, knowledge: dict, rows: list[dict], ev: list[dict]) -> list[str]:
    """What /local will show: the top-level names of each data filesystem (notes a missing one)."""
    contents = []
    for row in rows:
        vol = image.volume(number=row["number"])
        fs = image.filesystem(vol)
        if fs is None:
            row["note"] = (f"no filesystem yet: {knowledge['data_partition']['makefs_unit']} makes it at first boot "
                           f"({knowledge['data_filesystem_key']} of the OS image)"
                           if vol.fstype == "zero" else f"content {vol.fstype}")
            continue
        try:
            names = sorted(fs.listdir("/"))[:_MAX_LISTED]
        except ImmutoolsError as exc:
            image.warn(f"{vol.describe()}: cannot list /: {exc}")
            continue
        contents += [f"{knowledge['tree']['data']}/{n}" for n in names if n not in _FS_HOUSEKEEPING]
        ev.append(evidence(f"{vol.describe()}: /", f"{vol.fstype} filesystem holding {', '.join(names) or 'nothing'}"))
    return contents


def gather_data_disk(image: DiskImage, knowledge: dict, detection_evidence: list[dict], findings: Findings) -> None:
    """A data image has no OS: an identity (role data-disk), no mounts, paths or update."""
    rows = data_rows(image, knowledge)
    ev = list(detection_evidence)
    contents = _contents(image, knowledge, rows, ev)
    findings.os = OsIdentity(id=knowledge["id"], name=knowledge["name"], evidence=ev, extra={"role": "data-disk"})
    findings.mounts, findings.paths = [], []
    first = knowledge["data_partition"]["repart"][0]["unit"]
    local = knowledge["tree"]["data"]
    findings.distribution = {
        "name": knowledge["id"],
        "role": "data-disk",
        "plan": knowledge["data_image"]["plan"],
        "data_partitions": rows,
        "contents": contents,
        "mounted_at": f"{local}, by the OS disk's {mount_unit_name(local)} once the partition is named "
                      f"{knowledge['gpt']['data_label']} ({first} at first boot)",
        "evidence": ev,
    }
