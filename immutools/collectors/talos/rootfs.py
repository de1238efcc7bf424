"""The Talos root filesystem, three containers deep: the booted entry's initramfs (BOOT
``/<slot>/initramfs.xz`` or the UKI's ``.initrd``) -> a multi-segment (xz or zstd) cpio ->
``/rootfs.sqsh``, plus one squashfs per system extension, combined like Talos's read-only overlay;
then the running system's tree (the root, EPHEMERAL at ``/var``), its os-release and machined.

Every nested object is bounded by ``Limits.max_nested_bytes``; what could not be opened is kept
as ``problem`` (a reason the report can give) and warned about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from immutools.disk import DiskImage
from immutools.elf import elf_arch
from immutools.errors import ImmutoolsError
from immutools.fs import open_filesystem
from immutools.fs.cpio import CpioArchive
from immutools.fs.layered import LayeredFileSystem
from immutools.fs.probe import identify
from immutools.osrelease import parse_os_release
from immutools.report.model import evidence
from immutools.system.rootview import OsTree

from .boot import Boot
from .detect import MAX_TEXT, Layout

_MAX_LAYERS = 256                  # extension layers read from extensions.yaml
_STRINGS_CAP = 256 * 1024 * 1024   # how much of machined a version-strings scan may read
_STRINGS_STEP = 4 << 20


@dataclass
class Initramfs:
    """What the booted entry's initramfs holds. ``details`` is what the report shows."""

    details: dict = field(default_factory=lambda: {"segments": [], "extensions": []})
    archive: CpioArchive | None = None
    root_fs: object | None = None                # the squashfs, or the overlay of extensions over it
    problem: str | None = None                   # why there is no root filesystem

    @property
    def where(self) -> str | None:
        return self.details.get("where")

    @property
    def extensions(self) -> list[dict]:
        return self.details.get("extensions") or []

    def fail(self, image: DiskImage, reason: str) -> "Initramfs":
        image.warn(reason)
        self.problem = reason
        return self


def _initramfs_source(image: DiskImage, layout: Layout, boot: Boot, found: Initramfs):
    """(the initramfs bytes, where they are) of the booted entry; (None, None) with ``found.problem`` set."""
    active = boot.active
    if active.path == "uki":
        return active.uki["uki"].initrd, f"{layout.esp.describe()}: {active.uki['path']} .initrd"
    if active.path != "grub":
        found.problem = boot.problem
        return None, None
    entry = active.grub_entry
    if not entry.initrds:
        found.fail(image, f"{layout.boot.describe()}: menuentry {entry.title!r} has no initrd")
        return None, None
    path = entry.initrds[0].split(")", 1)[-1]
    try:
        return layout.boot_fs.open_source(path), f"{layout.boot.describe()}: {path}"
    except ImmutoolsError as exc:
        found.fail(image, f"{layout.boot.describe()}: {path}: {exc}")
        return None, None


def _extension_row(arc: CpioArchive, where: str, cfg_path: str, n: int, layer: dict) -> dict:
    md = layer.get("metadata") if isinstance(layer.get("metadata"), dict) else {}
    compatibility = md.get("compatibility")
    return {"name": md.get("name"), "version": str(md.get("version")) if md.get("version") is not None else None,
            "author": md.get("author"), "image": layer["image"],
            "compatibility": ((compatibility or {}).get("talos") or {}).get("version") if isinstance(compatibility, dict) else None,
            "segment": arc.segment_of(cfg_path),
            "evidence": [evidence(f"{where}: {cfg_path}", f"layer {n}: {layer['image']}")]}


def _listed_layers(image: DiskImage, arc: CpioArchive, where: str, cfg_path: str) -> list:
    try:
        cfg = yaml.safe_load(arc.read_text(cfg_path, max_bytes=MAX_TEXT)) or {}
    except (ImmutoolsError, yaml.YAMLError) as exc:
        image.warn(f"{where}: {cfg_path}: {exc}")
        cfg = {}
    listed = cfg.get("layers") if isinstance(cfg, dict) else None
    listed = listed if isinstance(listed, list) else []
    if len(listed) > _MAX_LAYERS:
        image.warn(f"{where}: {cfg_path}: {len(listed)} layers; only the first {_MAX_LAYERS} are read")
    return listed[:_MAX_LAYERS]


def _open_extensions(image: DiskImage, knowledge: dict, found: Initramfs) -> tuple[list, list[str]]:
    """The extension squashfs layers ``/extensions.yaml`` lists (rows into ``found.details``)."""
    arc, where = found.archive, found.where
    cfg_path = knowledge["initramfs"]["extensions_config"]
    layers, names = [], []
    if not arc.exists(cfg_path):
        return layers, names
    for n, layer in enumerate(_listed_layers(image, arc, where, cfg_path)):
        if not isinstance(layer, dict) or not isinstance(layer.get("image"), str):
            image.warn(f"{where}: {cfg_path}: layer {n} has no image name")
            continue
        row = _extension_row(arc, where, cfg_path, n, layer)
        img_path = "/" + layer["image"].lstrip("/")
        try:
            src = arc.open_source(img_path)
            layers.append(open_filesystem(src, "squashfs", limits=image.limits))
            names.append(f"{where} -> {img_path}")
            row["present"] = True
            row["size"] = src.size
        except ImmutoolsError as exc:
            image.warn(f"{where}: extension image {img_path}: {exc}")
            row["present"] = False
        found.details["extensions"].append(row)
    return layers, names


def _open_rootfs(image: DiskImage, knowledge: dict, found: Initramfs):
    """The rootfs squashfs in the archive, or None with ``found.problem`` set."""
    rootfs, where = knowledge["initramfs"]["rootfs"], found.where
    try:
        src = found.archive.open_source(rootfs)
        ident = identify(src)
        if ident.fstype != "squashfs":
            found.fail(image, f"{where}: {rootfs} is {ident.fstype}, not squashfs")
            return None
        root = open_filesystem(src, "squashfs", limits=image.limits)
    except ImmutoolsError as exc:
        found.fail(image, f"{where}: {rootfs}: {exc}")
        return None
    found.details.update(rootfs_size=src.size, rootfs_compression=ident.details.get("compression"),
                         rootfs_segment=found.archive.segment_of(rootfs))
    return root


def open_initramfs(image: DiskImage, knowledge: dict, layout: Layout, boot: Boot) -> Initramfs:
    found = Initramfs()
    src, where = _initramfs_source(image, layout, boot, found)
    if where is None:
        return found
    if src is None:
        return found.fail(image, f"{where}: missing")
    found.details.update(where=where, size=src.size)
    limits = image.limits
    if src.size > limits.max_nested_bytes:
        return found.fail(image, f"{where}: {src.size} bytes is more than the {limits.max_nested_bytes}-byte "
                                 "nested-object limit; not unpacked")
    try:
        arc = CpioArchive.from_source(src, limits=limits)
    except ImmutoolsError as exc:
        return found.fail(image, f"{where}: initramfs: {exc}")
    for w in arc.warnings:
        image.warn(f"{where}: {w}")
    found.archive = arc
    found.details["segments"] = [dict(s) for s in arc.segments]
    root = _open_rootfs(image, knowledge, found)
    if root is None:
        return found
    label = f"{where} -> {knowledge['initramfs']['rootfs']}"
    layers, names = _open_extensions(image, knowledge, found)
    if layers:
        # init mounts every extension squashfs and the rootfs as lower layers of one read-only
        # overlay (siderolabs/talos internal/app/init/main.go); extension files cannot shadow rootfs
        # files (pkg/extensions/validate.go), so the layer order only matters for damaged inputs:
        # extensions are taken as upper.
        root = LayeredFileSystem(layers + [root], names + [label], limits=limits)
        label = f"{label} + {len(layers)} extension layer(s) (read-only overlay)"
    found.root_fs = root
    found.details["label"] = label
    return found


# ------------------------------------------------------------------------------------------------
# the running system's tree
# ------------------------------------------------------------------------------------------------
@dataclass
class System:
    """The composed tree (the root at /, EPHEMERAL at /var) and what it says about itself."""

    tree: OsTree
    root_label: str | None = None
    has_root: bool = False
    os_release: dict | None = None
    os_release_evidence: dict | None = None
    os_release_filled: bool | None = None
    machined: dict = field(default_factory=dict)
    problem: str | None = None                   # why there is no root (or no machined)


def _read_os_release(image: DiskImage, knowledge: dict, system: System) -> None:
    path = knowledge["rootfs"]["os_release"]
    tree = system.tree
    try:
        if not tree.exists(path):
            return
        text = tree.read_text(path, max_bytes=64 * 1024)
    except ImmutoolsError as exc:
        image.warn(f"{system.root_label}: {path}: {exc}")
        return
    system.os_release_filled = bool(text.strip())
    system.os_release = parse_os_release(text) if system.os_release_filled else None
    system.os_release_evidence = tree.evidence(
        path, "os-release" if system.os_release_filled else
        "empty placeholder (machined writes /system/etc/os-release at boot, siderolabs/talos@v1.9.0 "
        "internal/app/machined/pkg/startup/os_release.go)")


def _machined_tags(image: DiskImage, tree: OsTree, path: str, size: int, pattern: str) -> list[str]:
    """Talos tags embedded in machined (pkg/machinery/gendata, go:embed): version-shaped strings
    not inside Go build-info dependency lines (those are tab-separated)."""
    rx = re.compile(rb"(?<![\w.\-/\t])" + pattern.encode() + rb"(?![\w.])")
    found: dict[str, int] = {}
    pos, end = 0, min(size, _STRINGS_CAP)
    try:
        while pos < end:
            chunk = tree.read(path, pos, min(_STRINGS_STEP + 64, end - pos), max_bytes=_STRINGS_STEP + 64)
            for m in rx.finditer(chunk):
                # the 64-byte overlap is read twice: count a match there once, in the later chunk
                if m.start() < _STRINGS_STEP or pos + _STRINGS_STEP >= end:
                    found[m.group(0).decode()] = found.get(m.group(0).decode(), 0) + 1
            pos += _STRINGS_STEP
    except ImmutoolsError as exc:
        image.warn(f"{path}: strings scan stopped: {exc}")
    return sorted(found)


def _find_machined(image: DiskImage, knowledge: dict, tree: OsTree) -> dict:
    for path in knowledge["rootfs"]["machined"]:
        try:
            if not tree.exists(path, follow=False):
                continue
            st = tree.lstat(path)
            if not st.is_file:
                continue       # /sbin/init is a path into /usr/bin on usr-merged releases
            head = tree.read(path, 0, 64)
        except ImmutoolsError:
            continue
        info = {"path": path, "size": st.size, "arch": elf_arch(head),
                "evidence": tree.evidence(path, "machined (PID 1)", follow=False)}
        info["tags"] = _machined_tags(image, tree, path, st.size, knowledge["rootfs"]["version_pattern"])
        return info
    return {}


def ephemeral_mountpoint(knowledge: dict) -> str:
    """Where EPHEMERAL is mounted (``/var``)."""
    return next(m["target"] for m in knowledge["mounts"] if m.get("volume") == "ephemeral")


def compose_system(image: DiskImage, knowledge: dict, layout: Layout, initramfs: Initramfs) -> System:
    system = System(OsTree(image.limits), initramfs.details.get("label"))
    if initramfs.root_fs is None:
        system.problem = initramfs.problem or "the root filesystem was not found"
        return system
    try:
        system.tree.mount("/", initramfs.root_fs, label=system.root_label)
    except ImmutoolsError as exc:
        image.warn(f"{system.root_label}: cannot use as /: {exc}")
        system.problem = f"{system.root_label}: cannot use as /: {exc}"
        return system
    system.has_root = True
    ephemeral_fs = image.filesystem(layout.ephemeral) if layout.ephemeral is not None else None
    if ephemeral_fs is not None:
        try:
            system.tree.mount(ephemeral_mountpoint(knowledge), ephemeral_fs, volume=layout.ephemeral)
        except ImmutoolsError as exc:
            image.warn(f"{layout.ephemeral.describe()}: cannot use as {ephemeral_mountpoint(knowledge)}: {exc}")
    _read_os_release(image, knowledge, system)
    system.machined = _find_machined(image, knowledge, system.tree)
    if not system.machined:
        system.problem = f"none of {', '.join(knowledge['rootfs']['machined'])} is a file in {system.root_label}"
    return system
