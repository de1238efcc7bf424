"""The Talos mount table. Talos sets every mount up in code (init, machined): nothing in the image
describes them, so each row comes from ``data/distributions/talos.yaml`` (``mounts``,
``overlays``, ``bound_files``, ``initramfs.root_mount``) with ``observed: false`` and its upstream
source, and is then checked against what the image shows -- the mount point or placeholder in the
squashfs, the partition that backs it. The checks go to ``distribution.mount_checks``.
"""

from __future__ import annotations

import posixpath

from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.mounts import MountEntry, MountTable

from .facts import TalosFacts
from .rootfs import ephemeral_mountpoint
from .versions import in_era


class _Checks(list):
    def add(self, target: str, what: str, ok: bool | None) -> None:
        self.append({"target": target, "check": what, "ok": ok})


def _root_mount(knowledge: dict, facts: TalosFacts, checks: _Checks) -> MountEntry:
    """/ : rootfs.sqsh, or the read-only overlay of the extension layers over it."""
    ik, initramfs = knowledge["initramfs"], facts.initramfs
    rootfs_name = posixpath.basename(ik["rootfs"])
    ev = [evidence(f"{ik['source']}; {ik['root_mount']['source']}",
                   f"/init mounts {rootfs_name} from the initramfs (in RAM) read-only and switch_roots into it", False)]
    found = initramfs.root_fs is not None
    if found:
        ev.append(evidence(initramfs.details["label"], f"squashfs ({initramfs.details.get('rootfs_compression')}), "
                                                       f"{initramfs.details.get('rootfs_size')} bytes"))
    checks.add("/", f"{rootfs_name} found in the initramfs", found)
    options = list(ik["root_mount"]["options"])
    if initramfs.extensions:
        layer_dir = ik["root_mount"]["layer_dir"]
        lowers = [f"{layer_dir}/layer{i}" for i in range(len(initramfs.extensions))] + [f"{layer_dir}/root"]
        return MountEntry("/", "overlay", "overlay", options + ["lowerdir=" + ":".join(lowers)],
                          persistence="image", observed=False, evidence=ev)
    return MountEntry("/", f"{ik['rootfs']} (loop)", "squashfs", options, observed=False, evidence=ev)


def _volume_mount(knowledge: dict, facts: TalosFacts, mount: dict, checks: _Checks) -> tuple[list[dict], object, str] | None:
    """(evidence, volume, source) of a mount backed by a Talos partition; None when an optional
    partition is absent (the mount is then not made)."""
    label = knowledge["gpt"]["labels"][mount["volume"]]
    vol = facts.layout.volumes.get(label)
    source = knowledge["volume_source"].format(label=label)
    if vol is None:
        if mount.get("optional"):
            return None
        checks.add(mount["target"], f"{label} partition present", False)
        return [evidence(f"GPT partition {label}", f"not on this disk yet: machined creates it at first boot "
                                                   f"({knowledge['volume_created_by']})", False)], None, source
    checks.add(mount["target"], f"{label} partition present ({vol.fstype})", vol.fstype in knowledge["volume_fstypes"])
    return [evidence(f"{vol.describe()}: GPT entry", f"partition {label}, content {vol.fstype}")], vol, source


def _code_mounts(knowledge: dict, facts: TalosFacts, table: MountTable, checks: _Checks) -> None:
    """The pseudo filesystems, tmpfs and partitions Talos mounts, in its order."""
    tree, have_root = facts.system.tree, facts.initramfs.root_fs is not None
    for mount in knowledge["mounts"]:
        if not in_era(mount, facts.version_key):
            continue
        evs = [evidence(mount["ref"], "set up by Talos in code", False)]
        vol, source = None, mount.get("source")
        if mount.get("volume"):
            backed = _volume_mount(knowledge, facts, mount, checks)
            if backed is None:
                continue
            more, vol, source = backed
            evs += more
        elif have_root:
            ok = tree.exists(mount["target"])
            evs.append(tree.evidence(mount["target"], f"mount point {'present' if ok else 'missing'} in the squashfs"))
            checks.add(mount["target"], "mount point present in the squashfs", ok)
        table.add(MountEntry(mount["target"], source, mount["fstype"], list(mount.get("options") or []),
                             persistence=mount.get("persistence"), observed=False, evidence=evs, volume=vol))


def _overlay_mounts(knowledge: dict, facts: TalosFacts, table: MountTable, checks: _Checks) -> None:
    """Directories of the squashfs made writable by an overlay whose upper layer is on /var."""
    ov = knowledge["overlays"]
    if not in_era(ov, facts.version_key):
        return
    tree, have_root = facts.system.tree, facts.initramfs.root_fs is not None
    for path in ov["paths"]:
        name = path.strip("/").replace("/", "-")
        upper, work = f"{ov['upper_dir']}/{name}-diff", f"{ov['upper_dir']}/{name}-workdir"
        evs = [evidence(ov["ref"], "overlay set up by machined", False)]
        if have_root:
            ok = tree.exists(path)
            evs.append(tree.evidence(path, "overlay lower directory present in the squashfs" if ok else "overlay lower directory missing"))
            checks.add(path, "lower directory present in the squashfs", ok)
            holder = tree.which_mount(upper)
            if holder is not None and holder.target == ephemeral_mountpoint(knowledge):
                up = tree.exists(upper)
                evs.append(tree.evidence(upper, "upper directory present on EPHEMERAL" if up else "upper directory not created yet"))
                checks.add(path, "upper directory present on EPHEMERAL", up)
        options = [f"lowerdir={path}", f"upperdir={upper}", f"workdir={work}"] + list(ov["options"])
        table.add(MountEntry(path, "overlay", "overlay", options, observed=False, evidence=evs))


def _bound_files(knowledge: dict, facts: TalosFacts, table: MountTable, checks: _Checks) -> None:
    """Files generated under /system/etc and bind-mounted over placeholders in the squashfs."""
    bound = knowledge["bound_files"]
    tree, have_root = facts.system.tree, facts.initramfs.root_fs is not None
    for row in bound["files"]:
        if not in_era(row, facts.version_key):
            continue
        target = row["target"]
        evs = [evidence(bound["ref"], f"generated under {bound['source_dir']} and bind-mounted", False)]
        if have_root:
            try:
                st = tree.stat(target) if tree.exists(target) else None
            except ImmutoolsError:
                st = None
            ok = st is not None and st.is_file
            evs.append(tree.evidence(target, f"placeholder file present ({st.size} bytes)" if ok else "placeholder missing"))
            checks.add(target, "placeholder file present in the squashfs", ok)
        table.add(MountEntry(target, f"{bound['source_dir']}/{posixpath.basename(target)}", None, ["bind"],
                             persistence="volatile", observed=False, evidence=evs))


def mount_table(knowledge: dict, facts: TalosFacts) -> MountTable:
    """The mounts in Talos's order; the checks against the image land in ``facts.mount_checks``."""
    table, checks = MountTable(), _Checks()
    table.add(_root_mount(knowledge, facts, checks))
    _code_mounts(knowledge, facts, table, checks)
    _overlay_mounts(knowledge, facts, table, checks)
    _bound_files(knowledge, facts, table, checks)
    facts.mount_checks = list(checks)
    return table
