"""Talos Linux: the OS runs from a squashfs held in RAM; no shell, no SSH, no systemd; A/B boot
entries (GRUB slots or UKIs) instead of A/B partitions.

The root filesystem is three containers deep and this collector follows them all, bounded by
``Limits.max_nested_bytes``: BOOT (XFS) ``/<slot>/initramfs.xz`` or the ESP's
``EFI/Linux/Talos-<v>.efi`` ``.initrd`` -> a multi-segment (xz or zstd) cpio -> ``/rootfs.sqsh``
(plus one squashfs per system extension, combined like Talos's read-only overlay).

Facts come from ``data/distributions/talos.yaml`` (which cites shared/reference/talos.md).
Observed: GPT names and sizes, the META key/value store (``immutools.fs.talos_meta``), grub.cfg,
UKI sections, the initramfs segments, the squashfs content, STATE/EPHEMERAL content. What Talos
sets up in code (its mount table, SELinux mode rules, kernel config) is reported from the
documented behaviour with ``observed: false`` and the upstream source named, then checked against
what the image shows (placeholder files and directories in the squashfs, the partitions).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import struct
import uuid as uuidlib

from immutools.collectors.base import Collector, Detection
from immutools.collectors.common import weighted_confidence
from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.knowledge import load_distribution
from immutools.osrelease import parse_os_release
from immutools.report.model import evidence

_PE_ARCH = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i386"}
_MAX_TEXT = 1024 * 1024            # grub.cfg, extensions.yaml, STATE config: small text files
_STRINGS_CAP = 256 * 1024 * 1024   # how much of machined a version-strings scan may read
_MAX_LAYERS = 256                  # extension layers read from extensions.yaml


def guid_from_label(label: str) -> str:
    """Talos ``GUIDFromLabel`` (talos.md §1.5): UUIDv8 of sha256(16 zero bytes || label)."""
    raw = bytearray(hashlib.sha256(bytes(16) + label.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuidlib.UUID(bytes=bytes(raw)))


def version_key(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of ``v1.9.5``; None when it is not a Talos tag."""
    m = re.match(r"^v?(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def era_value(rules: list[dict], version: tuple[int, int] | None, default=None):
    """The value of the first ``{from, until, value}`` rule covering ``version``."""
    if version is None:
        return default
    for rule in rules:
        lo = version_key(str(rule.get("from", "0.0")))
        hi = version_key(str(rule.get("until", "999.999")))
        if lo <= version <= hi:
            return rule["value"]
    return default


def in_era(entry: dict, version: tuple[int, int] | None) -> bool:
    if version is None:
        return True
    lo = version_key(str(entry.get("from", "0.0")))
    hi = version_key(str(entry.get("until", "999.999")))
    return lo <= version <= hi


class TalosCollector(Collector):
    name = "talos"

    def __init__(self):
        self.k = load_distribution("talos")

    # ------------------------------------------------------------------------------- helpers
    def _by_label(self, image: DiskImage) -> dict[str, Volume]:
        """Talos partitions by GPT name (never by number: §1.4, numbers move)."""
        out: dict[str, Volume] = {}
        for vol in image.volumes:
            if vol.partition is not None and vol.partition.label and vol.partition.label not in out:
                out[vol.partition.label] = vol
        return out

    def _meta_volume(self, vols: dict[str, Volume]) -> Volume | None:
        vol = vols.get(self.k["gpt"]["labels"]["meta"])
        if vol is None or vol.partition is None:
            return None
        return vol

    def _fs(self, image: DiskImage, vol: Volume | None):
        return image.filesystem(vol) if vol is not None else None

    def _read_text(self, image: DiskImage, fs, path: str, where: str) -> str | None:
        try:
            if fs is None or not fs.exists(path):
                return None
            return fs.read_text(path, max_bytes=_MAX_TEXT)
        except ImmutoolsError as exc:
            image.warn(f"{where}: {path}: {exc}")
            return None

    def _uki_paths(self, image: DiskImage, esp, esp_vol) -> list[str]:
        rx = re.compile(self.k["boot"]["uki_name"])
        base = self.k["boot"]["uki_dir"]
        try:
            if esp is None or not esp.exists(base):
                return []
            names = esp.listdir(base)
        except ImmutoolsError as exc:
            image.warn(f"{esp_vol.describe()}: {base}: {exc}")
            return []
        return [f"{base}/{n}" for n in names if rx.match(n)]

    # ------------------------------------------------------------------------------- detect
    def detect(self, image: DiskImage) -> Detection:
        g = self.k["gpt"]
        vols = self._by_label(image)
        hits, ev = [], []
        meta = self._meta_volume(vols)
        if meta is not None and (meta.partition.type_guid or "") == g["data_type"] and meta.partition.size == g["meta_size"]:
            hits.append("meta_exact")
            ev.append(evidence(f"{meta.describe()}: GPT entry", f"Linux data type, exactly {g['meta_size']} bytes (Talos metaMatch, talos.md §1.1)"))
        if meta is not None and meta.fstype == "talos-meta":
            hits.append("meta_adv")
            ev.append(evidence(f"{meta.describe()}: offset {meta.identity.details.get('copy_offset', 0)}", "Talos ADV magics 0x5a4b3c2d/0xa5b4c3d2"))
        others = [lab for lab in g["labels"].values() if lab != g["labels"]["meta"] and lab in vols]
        if len(others) >= 2:
            hits.append("talos_labels")
            ev.append(evidence("GPT partition names", f"Talos partition names {', '.join(others)} (talos.md §1.1)"))
        boot = vols.get(g["labels"]["boot"])
        boot_fs = self._fs(image, boot) if boot is not None and boot.fstype == "xfs" else None
        text = self._read_text(image, boot_fs, self.k["boot"]["grub_cfg"], boot.describe()) if boot_fs else None
        if text and re.search(r'menuentry "[AB] - Talos v', text):
            hits.append("grub_entries")
            ev.append(evidence(f"{boot.describe()}: {self.k['boot']['grub_cfg']}", "menu entries named \"<A|B> - Talos vX.Y.Z\""))
        esp = vols.get(g["labels"]["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        esp_fs = self._fs(image, esp) if esp is not None and esp.fstype == "vfat" else None
        ukis = self._uki_paths(image, esp_fs, esp) if esp_fs is not None else []
        if ukis:
            hits.append("uki_name")
            ev.append(evidence(f"{esp.describe()}: {ukis[0]}", "Talos UKI file name (talos.md §2.2)"))
        if (image.table.disk_guid or "").lower() == guid_from_label(g["deterministic_disk_label"]):
            hits.append("deterministic_guids")
            ev.append(evidence("GPT header disk GUID", "GUIDFromLabel(\"talos-image-disk\") (talos.md §1.5)"))
        if not hits or not ({"meta_exact", "grub_entries", "uki_name"} & set(hits)):
            return Detection(self.name, 0.0)
        return Detection(self.name, weighted_confidence(self.k["detect"], hits), ev,
                         {"vols": vols, "grub_text": text, "ukis": ukis})

    # ------------------------------------------------------------------------------- collect
    def collect(self, image: DiskImage, detection: Detection) -> dict:
        from immutools.system.cmdline import KernelCmdline
        from immutools.system.rootview import OsTree

        k, g = self.k, self.k["gpt"]
        labels = g["labels"]
        vols = detection.facts.get("vols") or self._by_label(image)
        esp = vols.get(labels["esp"]) or next((v for v in image.volumes if v.type_key == "esp"), None)
        boot = vols.get(labels["boot"])
        meta_vol = self._meta_volume(vols)
        state_vol, eph_vol = vols.get(labels["state"]), vols.get(labels["ephemeral"])
        esp_fs = self._fs(image, esp) if esp is not None and esp.fstype == "vfat" else None
        boot_fs = self._fs(image, boot) if boot is not None and boot.fstype == "xfs" else None

        meta, meta_ev = self._meta(image, meta_vol)
        grub = self._grub(image, boot, boot_fs, detection.facts.get("grub_text"))
        ukis = self._ukis(image, esp, esp_fs, detection.facts.get("ukis"))
        bootloader = "dual-boot" if grub and ukis else ("grub" if grub else ("sd-boot" if ukis else None))
        active = self._active(grub, ukis, meta, bootloader)

        # --- kernel command line of the active entry -------------------------------------------
        cmdline = None
        if active.get("uki") is not None and active["uki"]["cmdline"] is not None:
            u = active["uki"]
            cmdline = KernelCmdline(u["cmdline"], f"{esp.describe()}: {u['path']} .cmdline")
        elif active.get("grub_entry") is not None:
            e = active["grub_entry"]
            cmdline = KernelCmdline.from_words(
                e.cmdline_words, f"{boot.describe()}: {k['boot']['grub_cfg']} menuentry {e.title!r} line {e.linux_line}",
                observed=not e.unresolved)

        # --- initramfs -> rootfs.sqsh (+ extensions) ---------------------------------------------
        initrd = self._open_initramfs(image, active, boot, boot_fs, esp)
        root_fs, root_label = initrd.get("root_fs"), initrd.get("label")
        tree = OsTree(image.limits)
        if root_fs is not None:
            try:
                tree.mount("/", root_fs, label=root_label)
            except ImmutoolsError as exc:
                image.warn(f"{root_label}: cannot use as /: {exc}")
                root_fs = None
        eph_fs = self._fs(image, eph_vol) if eph_vol is not None else None
        if root_fs is not None and eph_fs is not None:
            try:
                tree.mount("/var", eph_fs, volume=eph_vol)
            except ImmutoolsError as exc:
                image.warn(f"{eph_vol.describe()}: cannot use as /var: {exc}")

        # --- os-release and the version ------------------------------------------------------------
        os_rel, os_rel_ev, os_rel_filled = None, None, None
        if root_fs is not None:
            path = k["rootfs"]["os_release"]
            try:
                if tree.exists(path):
                    text = tree.read_text(path, max_bytes=64 * 1024)
                    os_rel_filled = bool(text.strip())
                    os_rel = parse_os_release(text) if os_rel_filled else None
                    os_rel_ev = tree.evidence(path, "os-release" if os_rel_filled else "empty placeholder (machined writes /system/etc/os-release at boot, talos.md §5)")
            except ImmutoolsError as exc:
                image.warn(f"{root_label}: {path}: {exc}")
        machined = self._machined(image, tree) if root_fs is not None else {}
        version, version_source, version_ev, candidates = self._version(os_rel, os_rel_ev, active, machined, grub, ukis)
        vkey = version_key(version)
        if version is not None:
            others = {c["value"] for c in candidates if c["source"] in ("os-release", "grub-entry", "uki-name", "uki-osrel")
                      and c.get("active", True)}
            if len(others) > 1:
                image.warn(f"Talos version sources disagree: {', '.join(sorted(others))}")

        arch, arch_ev = self._arch(image, machined, active, tree)

        # --- mounts and paths --------------------------------------------------------------------
        table, checks = self._mounts(image, tree, vkey, initrd, vols)
        from immutools.system.mounts import path_rows

        paths = path_rows(table, resolve=lambda p: tree.lrealpath(p) if tree.exists(p, follow=False) else p)

        # --- surface -------------------------------------------------------------------------------
        surface_report, executables = self._surface(image, tree, cmdline, vkey, machined, initrd) if root_fs is not None else (None, [])

        # --- update -----------------------------------------------------------------------------------
        state_fs = self._fs(image, state_vol) if state_vol is not None else None
        install_image, install_ev = self._install_image(image, state_vol, state_fs, meta, version)
        update = self._update(grub, ukis, active, meta, boot, esp, install_image, install_ev, bootloader)

        # --- integrity ----------------------------------------------------------------------------------
        signed = [u for u in ukis if u["signed"]]
        integrity = {
            "verity": False,
            "root_hash": None,
            "hash_location": None,
            "verified": None,
            "evidence": [evidence(k["initramfs"]["source"], "no dm-verity: the root is a squashfs inside the initramfs, "
                                  "covered by the UKI signature on SecureBoot systems", False)]
                        + [evidence(f"{esp.describe()}: {u['path']}", f"Authenticode certificate table ({u['signature_size']} bytes; not verified)")
                           for u in signed],
            "targets": [],
            # the rubric's optional `integrity.signed`: every UKI carries an Authenticode certificate
            # table (presence only; the signature is not verified offline)
            "signed": bool(ukis) and len(signed) == len(ukis),
            "secure_boot": {
                "uki_signed": bool(ukis) and len(signed) == len(ukis),
                "pcr_signature": bool(ukis) and all(u["pcrsig"] for u in ukis),
                "lockdown": cmdline.lockdown() if cmdline is not None else None,
            },
        }

        os_section = {
            "id": (os_rel or {}).get("ID", k["id"]),
            "name": (os_rel or {}).get("NAME", k["name"]),
            "version": version,
            "variant": None,
            "arch": arch,
            "pretty_name": (os_rel or {}).get("PRETTY_NAME") or (f"Talos ({version})" if version else None),
            "build_id": None,
            "evidence": [e for e in version_ev + [arch_ev] if e],
        }

        kernel = self._kernel_info(image, active, boot, boot_fs, esp)
        kspp = self._kspp(cmdline)
        state_files = self._state_files(image, state_vol, state_fs)
        distribution = self._distribution(
            image, vols, meta, meta_ev, grub, ukis, active, bootloader, cmdline, kspp, kernel, version,
            version_source, candidates, os_rel_filled, initrd, machined, surface_report, install_image,
            executables, checks, state_vol, eph_vol, vkey, integrity, state_files)
        return {
            "os": os_section,
            "mounts": table.to_report(),
            "paths": paths,
            "update": update,
            "integrity": integrity,
            "surface": surface_report,
            "distribution": distribution,
        }

    # ------------------------------------------------------------------------------- META
    def _meta(self, image: DiskImage, vol: Volume | None):
        from immutools.fs.talos_meta import META_SIZE, read_meta

        if vol is None:
            return None, []
        try:
            meta = read_meta(vol.source)
        except ImmutoolsError as exc:
            image.warn(f"{vol.describe()}: META: {exc}")
            return None, []
        ev = [evidence(f"{vol.describe()}: Talos ADV copies at 0 and 262144",
                       ", ".join(f"copy {c.index} {c.state}" for c in meta.copies))]
        if meta.size != META_SIZE:
            image.warn(f"{vol.describe()}: META is {meta.size} bytes; Talos only uses a META of exactly {META_SIZE} bytes")
        for c in meta.copies:
            if c.state in ("bad-checksum", "bad-magic", "damaged") and not meta.all_zero:
                image.warn(f"{vol.describe()}: META copy {c.index}: {c.state} ({c.detail})")
        if meta.copies_agree is False:
            image.warn(f"{vol.describe()}: META copies 1 and 2 hold different keys or values; Talos reads copy 1")
        return meta, ev

    # ------------------------------------------------------------------------------- GRUB
    def _grub(self, image: DiskImage, boot, boot_fs, text):
        from immutools.system.grubcfg import parse_grub_cfg

        path = self.k["boot"]["grub_cfg"]
        if boot_fs is None:
            return None
        if text is None:
            text = self._read_text(image, boot_fs, path, boot.describe())
        if not text:
            return None
        try:
            cfg = parse_grub_cfg(text)
        except ImmutoolsError as exc:
            image.warn(f"{boot.describe()}: {path}: {exc}")
            return None
        rx = re.compile(self.k["boot"]["entry_title"])
        entries = []
        for e in cfg.entries:
            m = rx.match(e.title)
            row = {"title": e.title, "label": m.group("label") if m else None, "version": m.group("version") if m else None,
                   "kernel": e.kernel_path or e.kernel, "initrd": (e.initrds[0] if e.initrds else None),
                   "cmdline": e.cmdline, "reset": e.title == self.k["boot"]["reset_title"], "entry": e}
            for key in ("kernel", "initrd"):
                p = row[key]
                if p:
                    try:
                        row[f"{key}_present"] = boot_fs.exists(p.split(")", 1)[-1])
                    except ImmutoolsError:
                        row[f"{key}_present"] = None
            entries.append(row)
        default = cfg.default_entry()
        fallback = [e for e in cfg.fallback_entries() if e is not None]
        return {"config": cfg, "path": path, "entries": entries, "default": default,
                "fallback": fallback[0] if fallback else None,
                "evidence": evidence(f"{boot.describe()}: {path}", f"set default={cfg.default!r}"
                                     + (f", set fallback={cfg.variables.get('fallback')!r}" if cfg.variables.get("fallback") else ""))}

    # ------------------------------------------------------------------------------- UKIs
    def _ukis(self, image: DiskImage, esp, esp_fs, paths):
        from immutools.fs.pe import UnifiedKernelImage
        from immutools.system.sdboot import version_compare

        if esp_fs is None:
            return []
        paths = paths if paths is not None else self._uki_paths(image, esp_fs, esp)
        rx = re.compile(self.k["boot"]["uki_name"])
        out = []
        for path in paths:
            name = posixpath.basename(path)
            try:
                src = esp_fs.open_source(path)
                uki = UnifiedKernelImage(src, image.limits)
                head = src.read_at(0, 0x400)
            except ImmutoolsError as exc:
                image.warn(f"{esp.describe()}: {path}: not a readable UKI: {exc}")
                continue
            if not uki.is_uki:
                image.warn(f"{esp.describe()}: {path}: PE image without a .linux section")
                continue
            lfanew = struct.unpack_from("<I", head, 0x3C)[0] if len(head) >= 0x40 else 0
            machine = struct.unpack_from("<H", head, lfanew + 4)[0] if lfanew + 6 <= len(head) else None
            pcrsig = uki.has_pcrsig or any(".pcrsig" in p.sections for p in uki.profiles)
            out.append({
                "name": name, "path": path, "uki": uki, "source": src,
                "version": rx.match(name).group("version"),
                "osrel_version": uki.osrel.get("VERSION_ID"),
                "osrel": uki.osrel or None,
                "cmdline": uki.cmdline,
                "uname": uki.uname,
                "signed": uki.signed,
                "signature_size": uki.signature_size,
                "pcrsig": pcrsig,
                "pcrpkey": uki.has_pcrpkey,
                "profiles": [p.info for p in uki.profiles],
                "sections": [s.name for s in uki.section_list],
                "arch": _PE_ARCH.get(machine),
            })
        # systemd-boot's menu order for type #2 entries: newest version first (sdboot.version_compare)
        import functools

        out.sort(key=functools.cmp_to_key(lambda a, b: -version_compare(a["name"], b["name"])))
        return out

    # ------------------------------------------------------------------------------- active entry
    def _active(self, grub, ukis, meta, bootloader) -> dict:
        from immutools.fs.talos_meta import TAG_NAMES

        upgrade_tag = next(t for t, n in TAG_NAMES.items() if n == "Upgrade")
        previous = meta.value_text(upgrade_tag) if meta is not None else None
        act: dict = {"grub_entry": None, "grub_label": None, "uki": None, "decided_by": [], "previous": previous}
        if grub is not None and grub["default"] is not None:
            e = grub["default"]
            m = re.match(self.k["boot"]["entry_title"], e.title)
            act["grub_entry"] = e
            act["grub_label"] = m.group("label") if m else None
            act["decided_by"].append(f"grub.cfg set default={grub['config'].default!r}")
        if ukis:
            if len(ukis) == 1:
                act["uki"] = ukis[0]
                act["decided_by"].append(f"the only UKI, {ukis[0]['name']}")
            else:
                named_previous = [u for u in ukis if u["name"] == previous]
                rest = [u for u in ukis if u["name"] != previous]
                if named_previous and len(rest) == 1:
                    act["uki"] = rest[0]
                    act["decided_by"].append(f"META Upgrade names {previous} as the previous UKI, so {rest[0]['name']} is the new default "
                                             "(LoaderEntryDefault is an EFI variable, not on disk)")
                else:
                    act["uki"] = ukis[0]
                    act["decided_by"].append(f"{ukis[0]['name']}: first in systemd-boot's order (newest version); "
                                             "LoaderEntryDefault is an EFI variable and cannot be read offline")
        # Which boot path the OS tree is read from: the UKI (UEFI) on sd-boot and dual-boot disks.
        act["path"] = "uki" if act["uki"] is not None else ("grub" if act["grub_entry"] is not None else None)
        return act

    # ------------------------------------------------------------------------------- initramfs
    def _open_initramfs(self, image: DiskImage, active, boot, boot_fs, esp) -> dict:
        from immutools.fs import open_filesystem
        from immutools.fs.cpio import CpioArchive
        from immutools.fs.probe import identify

        out: dict = {"segments": [], "extensions": [], "root_fs": None}
        ik = self.k["initramfs"]
        if active.get("path") == "uki":
            u = active["uki"]
            src = u["uki"].initrd
            where = f"{esp.describe()}: {u['path']} .initrd"
        elif active.get("path") == "grub":
            e = active["grub_entry"]
            if not e.initrds:
                image.warn(f"{boot.describe()}: menuentry {e.title!r} has no initrd")
                return out
            path = e.initrds[0].split(")", 1)[-1]
            try:
                src = boot_fs.open_source(path)
            except ImmutoolsError as exc:
                image.warn(f"{boot.describe()}: {path}: {exc}")
                return out
            where = f"{boot.describe()}: {path}"
        else:
            return out
        if src is None:
            image.warn(f"{where}: missing")
            return out
        out.update(where=where, size=src.size)
        limits = image.limits
        if src.size > limits.max_nested_bytes:
            image.warn(f"{where}: {src.size} bytes is more than the {limits.max_nested_bytes}-byte nested-object limit; not unpacked")
            return out
        try:
            arc = CpioArchive.from_source(src, limits=limits)
        except ImmutoolsError as exc:
            image.warn(f"{where}: initramfs: {exc}")
            return out
        for w in arc.warnings:
            image.warn(f"{where}: {w}")
        out["archive"] = arc
        out["segments"] = [dict(s) for s in arc.segments]
        rootfs = ik["rootfs"]
        try:
            sq_src = arc.open_source(rootfs)
            ident = identify(sq_src)
            if ident.fstype != "squashfs":
                image.warn(f"{where}: {rootfs} is {ident.fstype}, not squashfs")
                return out
            root = open_filesystem(sq_src, "squashfs", limits=limits)
        except ImmutoolsError as exc:
            image.warn(f"{where}: {rootfs}: {exc}")
            return out
        out.update(rootfs_size=sq_src.size, rootfs_compression=ident.details.get("compression"),
                   rootfs_segment=arc.segment_of(rootfs))
        label = f"{where} -> {rootfs}"
        layers, names = [], []
        cfg_path = ik["extensions_config"]
        if arc.exists(cfg_path):
            import yaml

            try:
                cfg = yaml.safe_load(arc.read_text(cfg_path, max_bytes=_MAX_TEXT)) or {}
            except (ImmutoolsError, yaml.YAMLError) as exc:
                image.warn(f"{where}: {cfg_path}: {exc}")
                cfg = {}
            listed = cfg.get("layers") if isinstance(cfg, dict) else None
            listed = listed if isinstance(listed, list) else []
            if len(listed) > _MAX_LAYERS:
                image.warn(f"{where}: {cfg_path}: {len(listed)} layers; only the first {_MAX_LAYERS} are read")
            for n, layer in enumerate(listed[:_MAX_LAYERS]):
                if not isinstance(layer, dict) or not isinstance(layer.get("image"), str):
                    image.warn(f"{where}: {cfg_path}: layer {n} has no image name")
                    continue
                md = layer.get("metadata") if isinstance(layer.get("metadata"), dict) else {}
                row = {"name": md.get("name"), "version": str(md.get("version")) if md.get("version") is not None else None,
                       "author": md.get("author"), "image": layer["image"],
                       "compatibility": ((md.get("compatibility") or {}).get("talos") or {}).get("version")
                       if isinstance(md.get("compatibility"), dict) else None,
                       "segment": arc.segment_of(cfg_path),
                       "evidence": [evidence(f"{where}: {cfg_path}", f"layer {n}: {layer['image']}")]}
                img_path = "/" + layer["image"].lstrip("/")
                try:
                    lsrc = arc.open_source(img_path)
                    layers.append(open_filesystem(lsrc, "squashfs", limits=limits))
                    names.append(f"{where} -> {img_path}")
                    row["present"] = True
                    row["size"] = lsrc.size
                except ImmutoolsError as exc:
                    image.warn(f"{where}: extension image {img_path}: {exc}")
                    row["present"] = False
                out["extensions"].append(row)
        if layers:
            from immutools.fs.layered import LayeredFileSystem

            # init mounts every extension squashfs and the rootfs as lower layers of one read-only
            # overlay (talos.md §2.6 step 2); extension files cannot shadow rootfs files (validate.go),
            # so the layer order only matters for damaged inputs: extensions are taken as upper.
            root = LayeredFileSystem(layers + [root], names + [label], limits=limits)
            label = f"{label} + {len(layers)} extension layer(s) (read-only overlay)"
        out.update(root_fs=root, label=label)
        return out

    # ------------------------------------------------------------------------------- machined
    def _machined(self, image: DiskImage, tree) -> dict:
        from immutools.elf import elf_arch

        for path in self.k["rootfs"]["machined"]:
            try:
                if not tree.exists(path, follow=False):
                    continue
                st = tree.lstat(path)
                if not st.is_file:
                    continue       # /sbin/init is a path into /usr/bin on usr-merged releases
                head = tree.read(path, 0, 64)
            except ImmutoolsError:
                continue
            info = {"path": path, "size": st.size, "arch": elf_arch(head), "evidence": tree.evidence(path, "machined (PID 1)", follow=False)}
            info["tags"] = self._strings(image, tree, path, st.size)
            return info
        return {}

    def _strings(self, image: DiskImage, tree, path: str, size: int) -> list[str]:
        """Talos tags embedded in machined (gendata's go:embed'd tag, talos.md §5): version-shaped
        strings not inside Go build-info dependency lines (those are tab-separated)."""
        rx = re.compile(rb"(?<![\w.\-/\t])" + self.k["version_pattern"].encode() + rb"(?![\w.])")
        found: dict[str, int] = {}
        step, pos, end = 4 << 20, 0, min(size, _STRINGS_CAP)
        try:
            while pos < end:
                chunk = tree.read(path, pos, min(step + 64, end - pos), max_bytes=step + 64)
                for m in rx.finditer(chunk):
                    if m.start() < step or pos + step >= end:
                        found[m.group(0).decode()] = found.get(m.group(0).decode(), 0) + 1
                pos += step
        except ImmutoolsError as exc:
            image.warn(f"{path}: strings scan stopped: {exc}")
        return sorted(found)

    # ------------------------------------------------------------------------------- version
    def _version(self, os_rel, os_rel_ev, active, machined, grub, ukis):
        cands: list[dict] = []
        if os_rel and os_rel.get("VERSION_ID"):
            cands.append({"source": "os-release", "value": os_rel["VERSION_ID"], "evidence": os_rel_ev})
        if active.get("grub_entry") is not None:
            m = re.match(self.k["boot"]["entry_title"], active["grub_entry"].title)
            if m:
                cands.append({"source": "grub-entry", "value": m.group("version"),
                              "evidence": evidence(grub["evidence"]["source"], f"default menu entry {active['grub_entry'].title!r}"),
                              "active": active["path"] == "grub"})
        if active.get("uki") is not None:
            u = active["uki"]
            cands.append({"source": "uki-name", "value": u["version"], "evidence": evidence(u["path"], "UKI file name Talos-<version>.efi")})
            if u["osrel_version"]:
                cands.append({"source": "uki-osrel", "value": u["osrel_version"], "evidence": evidence(f"{u['path']} .osrel", "VERSION_ID")})
        tags = machined.get("tags") or []
        known = {c["value"] for c in cands}
        if len(tags) == 1 or known & set(tags):
            value = tags[0] if len(tags) == 1 else sorted(known & set(tags))[0]
            cands.append({"source": "machined-strings", "value": value,
                          "evidence": evidence(machined["evidence"]["source"], f"version string {value} embedded in machined")})
        # os-release where filled; otherwise the boot entry that is booted; machined as the last resort
        order = ["os-release", "uki-osrel", "uki-name", "grub-entry", "machined-strings"] if active.get("path") == "uki" else \
                ["os-release", "grub-entry", "uki-name", "uki-osrel", "machined-strings"]
        for source in order:
            chosen = next((c for c in cands if c["source"] == source), None)
            if chosen is not None:
                ev = dict(chosen["evidence"], detail=f"{chosen['evidence'].get('detail', '')}: Talos version {chosen['value']} (from {source})".lstrip(": "))
                return chosen["value"], source, [ev], [{k: v for k, v in c.items()} for c in cands]
        return None, None, [], cands

    # ------------------------------------------------------------------------------- arch
    def _arch(self, image: DiskImage, machined, active, tree):
        if machined.get("arch"):
            return machined["arch"], evidence(machined["evidence"]["source"], "ELF header e_machine of machined")
        u = active.get("uki")
        if u is not None and u["arch"]:
            return u["arch"], evidence(u["path"], "PE machine of the UKI")
        return None, None

    # ------------------------------------------------------------------------------- mounts
    def _mounts(self, image: DiskImage, tree, vkey, initrd, vols):
        from immutools.system.mounts import MountEntry, MountTable

        k = self.k
        table = MountTable()
        checks: list[dict] = []
        have_root = initrd.get("root_fs") is not None

        def check(target: str, what: str, ok: bool | None) -> None:
            checks.append({"target": target, "check": what, "ok": ok})

        # / : rootfs.sqsh (or the overlay of extension layers over it), read-only
        root_ev = [evidence(k["initramfs"]["source"] + "; talos@HEAD:internal/app/init/main.go, internal/pkg/mount/switchroot/switchroot.go",
                            "/init mounts rootfs.sqsh from the initramfs (in RAM) read-only and switch_roots into it", False)]
        if have_root:
            root_ev.append(evidence(initrd["label"], f"squashfs ({initrd.get('rootfs_compression')}), {initrd.get('rootfs_size')} bytes"))
            check("/", "rootfs.sqsh found in the initramfs", True)
        else:
            check("/", "rootfs.sqsh found in the initramfs", False)
        if initrd.get("extensions"):
            lowers = [f"/layers/layer{i}" for i in range(len(initrd["extensions"]))] + ["/layers/root"]
            table.add(MountEntry("/", "overlay", "overlay", ["ro", "nosuid", "nodev", "lowerdir=" + ":".join(lowers)],
                                 persistence="image", observed=False, evidence=root_ev))
        else:
            table.add(MountEntry("/", "/rootfs.sqsh (loop)", "squashfs", ["ro", "nosuid", "nodev"], observed=False, evidence=root_ev))

        for m in k["mounts"]:
            if not in_era(m, vkey):
                continue
            ref = evidence(m["ref"], "set up by Talos in code", False)
            evs = [ref]
            vol = None
            source = m.get("source")
            if m.get("volume"):
                label = k["gpt"]["labels"][m["volume"]]
                vol = vols.get(label)
                source = f"/dev/disk/by-partlabel/{label}"
                if vol is None:
                    if m.get("optional"):
                        continue
                    evs.append(evidence(f"GPT partition {label}", "not on this disk yet: machined creates it at first boot (talos.md §1.4)", False))
                    check(m["target"], f"{label} partition present", False)
                else:
                    evs.append(evidence(f"{vol.describe()}: GPT entry", f"partition {label}, content {vol.fstype}"))
                    check(m["target"], f"{label} partition present ({vol.fstype})", vol.fstype in ("xfs", "ext4", "luks"))
            if have_root and not m.get("volume"):
                ok = tree.exists(m["target"])
                evs.append(tree.evidence(m["target"], "mount point present in the squashfs" if ok else "mount point missing in the squashfs"))
                check(m["target"], "mount point present in the squashfs", ok)
            entry = MountEntry(m["target"], source, m["fstype"], list(m.get("options") or []),
                               persistence=m.get("persistence"), observed=False, evidence=evs, volume=vol)
            table.add(entry)

        ov = k["overlays"]
        if in_era(ov, vkey):
            for path in ov["paths"]:
                name = path.strip("/").replace("/", "-")
                upper, work = f"{ov['upper_dir']}/{name}-diff", f"{ov['upper_dir']}/{name}-workdir"
                evs = [evidence(ov["ref"], "overlay set up by machined", False)]
                if have_root:
                    ok = tree.exists(path)
                    evs.append(tree.evidence(path, "overlay lower directory present in the squashfs" if ok else "overlay lower directory missing"))
                    check(path, "lower directory present in the squashfs", ok)
                    if tree.which_mount(upper) is not None and tree.which_mount(upper).target == "/var":
                        up = tree.exists(upper)
                        evs.append(tree.evidence(upper, "upper directory present on EPHEMERAL" if up else "upper directory not created yet"))
                        check(path, "upper directory present on EPHEMERAL", up)
                table.add(MountEntry(path, "overlay", "overlay",
                                     [f"lowerdir={path}", f"upperdir={upper}", f"workdir={work}"] + list(ov["options"]),
                                     observed=False, evidence=evs))

        bf = k["bound_files"]
        for b in bf["files"]:
            if not in_era(b, vkey):
                continue
            target = b["target"]
            evs = [evidence(bf["ref"], "generated under /system/etc and bind-mounted", False)]
            if have_root:
                try:
                    st = tree.stat(target) if tree.exists(target) else None
                except ImmutoolsError:
                    st = None
                ok = st is not None and st.is_file
                evs.append(tree.evidence(target, f"placeholder file present ({st.size} bytes)" if ok else "placeholder missing"))
                check(target, "placeholder file present in the squashfs", ok)
            table.add(MountEntry(target, f"{bf['source_dir']}/{posixpath.basename(target)}", None, ["bind"],
                                 persistence="volatile", observed=False, evidence=evs))
        return table, checks

    # ------------------------------------------------------------------------------- surface
    def _surface(self, image: DiskImage, tree, cmdline, vkey, machined, initrd):
        from immutools.system.surface import inventory

        k = self.k
        surface = inventory(tree, cmdline)
        rep = surface.to_report()
        # init: the kernel runs the initramfs /init, which execs machined after switch_root (§2.6)
        if machined:
            init_ev = [evidence(f"{initrd.get('where')}: {k['initramfs']['init']}", "the kernel's init: mounts the rootfs and switch_roots"),
                       machined["evidence"],
                       evidence(k["surface"]["source"], "PID 1 is machined; no systemd, no shell", False)]
            rep["init"] = k["surface"]["init"]
            rep["init_details"] = {"name": k["surface"]["init"], "path": machined["path"], "target": machined["path"],
                                   "decided_by": "Talos: initramfs /init execs machined after switch_root (talos.md §2.6)",
                                   "evidence": init_ev, "generic": surface.init}
            rep["evidence"] += [e for e in init_ev if e not in rep["evidence"]]
        # SELinux: Talos ignores /etc/selinux; selinux=1 enables it (policy embedded in init), enforcing=1 enforces
        sel_trail = [evidence(k["kernel"]["selinux_source"], "selinux=1 enables SELinux, enforcing=1 makes it enforcing; default disabled", False)]
        if cmdline is not None and cmdline.get("selinux") == "1":
            mode = "enforcing" if cmdline.get("enforcing") == "1" else "permissive"
            sel_trail.append(cmdline.evidence("selinux"))
            if cmdline.has("enforcing"):
                sel_trail.append(cmdline.evidence("enforcing"))
        else:
            mode = "disabled"
            if cmdline is not None:
                sel_trail.append(evidence(cmdline.origin, "no selinux=1: SELinux stays disabled"))
        rep["selinux"] = mode
        rep["selinux_policy"] = dict(rep.get("selinux_policy") or {}, mode=mode, decided_by="Talos SELinux rules", generic_mode=surface.selinux.get("mode"))
        rep["selinux_trail"] = sel_trail
        # module signatures: module.sig_enforce on the command line, else the kernel config of the release
        km = dict(rep.get("kernel_modules") or {})
        sig = cmdline.module_sig_enforce() if cmdline is not None else None
        if sig is None and era_value(k["eras"]["module_sig_force_config"], vkey, False):
            km.update(signature_enforced=True, reason="CONFIG_MODULE_SIG_FORCE=y in the Talos kernel of this release (not in the image)",
                      enforced_by="kernel-config")
            rep["evidence"].append(evidence(k["kernel"]["module_sig_source"], "CONFIG_MODULE_SIG_FORCE=y up to 1.11", False))
        elif sig is not None:
            km["enforced_by"] = "cmdline"
        rep["kernel_modules"] = km
        # lockdown: the LSM is built in but not forced; only the command line sets a mode
        if not rep.get("lockdown"):
            rep["lockdown"] = "none"
            rep["lockdown_details"] = {"mode": "none", "decided_by": "Talos kernel config (not in the image)",
                                       "evidence": [evidence(k["kernel"]["lockdown_source"], "CONFIG_LOCK_DOWN_KERNEL_FORCE_NONE=y", False)]}
        executables = self._executables(tree)
        rep["talos_roles"] = [r for r in k["surface"]["roles"] if self._role_present(tree, r, machined)]
        rep["api_ports"] = dict(k["surface"]["ports"])
        return rep, executables

    def _role_present(self, tree, role: str, machined) -> bool:
        if not machined:
            return False
        d = posixpath.dirname(machined["path"])
        try:
            return role in ("init", "machined") or (tree.exists(f"{d}/{role}") and tree.realpath(f"{d}/{role}") == tree.realpath(machined["path"]))
        except ImmutoolsError:
            return False

    def _executables(self, tree) -> list[str]:
        from immutools.system.surface import DEFAULT_PATH

        names: set[str] = set()
        seen_dirs: set[str] = set()
        for d in DEFAULT_PATH:
            try:
                if not tree.exists(d) or not tree.stat(d).is_dir:
                    continue
                real = tree.realpath(d)
                if real in seen_dirs:
                    continue
                seen_dirs.add(real)
                for name, st in tree.scandir(d):
                    if st.is_symlink:
                        try:
                            st = tree.stat(f"{d}/{name}")
                        except ImmutoolsError:
                            continue
                    if st.is_file and st.perm & 0o111:
                        names.add(name)
            except ImmutoolsError:
                continue
        return sorted(names)

    # ------------------------------------------------------------------------------- update
    def _install_image(self, image: DiskImage, state_vol, state_fs, meta, version):
        """Which installer image an upgrade would use: STATE config.yaml machine.install.image."""
        import yaml

        from immutools.fs.talos_meta import TAG_NAMES

        staged = next(t for t, n in TAG_NAMES.items() if n == "StagedUpgradeImageRef")
        if meta is not None and meta.value_text(staged):
            return meta.value_text(staged), evidence(f"META tag {staged}", "StagedUpgradeImageRef (applied at next boot)")
        if state_fs is not None:
            text = self._read_text(image, state_fs, "/config.yaml", state_vol.describe())
            if text:
                try:
                    docs = list(yaml.safe_load_all(text))
                except yaml.YAMLError as exc:
                    image.warn(f"{state_vol.describe()}: /config.yaml: {exc}")
                    docs = []
                for doc in docs:
                    img = ((doc or {}).get("machine") or {}).get("install", {}).get("image") if isinstance(doc, dict) else None
                    if isinstance(img, str):
                        return img, evidence(f"{state_vol.describe()}: /config.yaml", "machine.install.image")
        if version:
            return f"{self.k['update']['installer_image']}:{version}", evidence(self.k["update"]["source"], "default installer image for this release", False)
        return None, None

    def _update(self, grub, ukis, active, meta, boot, esp, install_image, install_ev, bootloader) -> dict:
        from immutools.fs.talos_meta import TAG_NAMES

        u = self.k["update"]
        slots, ev = [], [evidence(u["source"], "upgrades: machined runs the installer image, which writes the other boot entry", False)]
        if grub is not None:
            for row in grub["entries"]:
                if row["label"] is None:
                    continue
                slots.append({"name": row["label"], "partitions": [boot.number], "version": row["version"],
                              "active": active.get("grub_entry") is row["entry"],
                              "priority": None, "tries": None, "successful": None,
                              "title": row["title"], "kernel": row["kernel"], "initrd": row["initrd"],
                              "fallback": grub["fallback"] is row["entry"]})
            ev.append(grub["evidence"])
        for uk in ukis:
            slots.append({"name": uk["name"], "partitions": [esp.number], "version": uk["version"],
                          "active": active.get("uki") is uk, "priority": None, "tries": None, "successful": None,
                          "path": uk["path"]})
            ev.append(evidence(f"{esp.describe()}: {uk['path']}", "UKI (systemd-boot type #2 entry)"))
        upgrade_tag = next(t for t, n in TAG_NAMES.items() if n == "Upgrade")
        previous = meta.value_text(upgrade_tag) if meta is not None else None
        if previous is not None:
            ev.append(evidence(f"META tag {upgrade_tag} (Upgrade)", f"{previous!r}: upgrade not yet confirmed healthy; a failed boot reverts to it"))
        if install_ev:
            ev.append(install_ev)
        return {
            "mechanism": u["mechanism"],
            "agent": u["agent"],
            "channel": None,
            "server": install_image,
            "active_slot": active.get("grub_label") if active.get("grub_entry") is not None else None,
            "active_entry": active["uki"]["name"] if active.get("uki") is not None else
                            (active["grub_entry"].title if active.get("grub_entry") is not None else None),
            "slots": slots,
            "bootloader": bootloader,
            "decided_by": active.get("decided_by"),
            "pending_upgrade": {"fallback": previous} if previous is not None else None,
            "rollback": u["rollback"],
            "evidence": ev,
        }

    # ------------------------------------------------------------------------------- kernel
    def _kernel_info(self, image: DiskImage, active, boot, boot_fs, esp) -> dict:
        from immutools.fs.pe import kernel_info

        try:
            if active.get("path") == "uki":
                info = kernel_info(active["uki"]["source"], image.limits)
                where = f"{esp.describe()}: {active['uki']['path']}"
            elif active.get("path") == "grub" and active["grub_entry"].kernel_path:
                path = active["grub_entry"].kernel_path
                info = kernel_info(boot_fs.open_source(path), image.limits)
                where = f"{boot.describe()}: {path}"
            else:
                return {}
        except ImmutoolsError as exc:
            image.warn(f"kernel image: {exc}")
            return {}
        return {"version": info.version, "format": info.format, "details": info.details, "evidence": evidence(where, f"{info.format} header")}

    def _kspp(self, cmdline) -> dict:
        req = self.k["kernel"]["kspp_required"]
        present: dict = {}
        ok = cmdline is not None
        for key, want in req.items():
            arg = cmdline.last(key) if cmdline is not None else None
            # a bare flag is taken as the empty value Talos writes (`slab_nomerge=`)
            got = None if arg is None else (arg.value if arg.value is not None else "")
            present[key] = got
            ok = ok and got == want
        return {"required": dict(req), "present": present, "satisfied": ok if cmdline is not None else None,
                "source": self.k["kernel"]["kspp_source"]}

    # ------------------------------------------------------------------------------- the distribution section
    def _distribution(self, image, vols, meta, meta_ev, grub, ukis, active, bootloader, cmdline, kspp, kernel, version,
                      version_source, candidates, os_rel_filled, initrd, machined, surface, install_image,
                      executables, checks, state_vol, eph_vol, vkey, integrity, state_files=None) -> dict:
        from immutools.fs.talos_meta import tag_name

        g = self.k["gpt"]
        disk_guid = (image.table.disk_guid or "").lower()
        det = {"disk": disk_guid == guid_from_label(g["deterministic_disk_label"])}
        for label in g["deterministic_partitions"]:
            vol = vols.get(label)
            if vol is not None and vol.partition is not None:
                det[label] = (vol.partition.uuid or "").lower() == guid_from_label(label)
        boot = vols.get(g["labels"]["boot"])
        if boot is not None and boot.identity.uuid:
            det["BOOT_xfs_uuid"] = boot.identity.uuid.lower() == guid_from_label("BOOT")
        formatted = [v for v in (state_vol, eph_vol) if v is not None and v.fstype not in ("zero", "unknown", "unreadable")]
        disk_state = "installed" if formatted else "image"
        meta_state = None
        if meta is not None:
            meta_state = "empty" if meta.all_zero else ("valid" if meta.selected else
                                                        ("legacy-only" if meta.tags else "damaged"))
        meta_tags = {tag_name(t): meta.value_text(t) for t in sorted(meta.tags)} if meta is not None else {}
        uki_rows = [{k: v for k, v in u.items() if k not in ("uki", "source")} for u in ukis]
        grub_rows = [{k: v for k, v in e.items() if k != "entry"} for e in grub["entries"]] if grub else []
        grub_matches_uki = None
        if grub is not None and ukis and active.get("grub_entry") is not None:
            grub_matches_uki = self._grub_matches_uki(image, active, ukis)
        mib = 1024 * 1024
        layout = {label: {"number": v.number, "size_mib": round(v.partition.size / mib, 3), "content": v.fstype}
                  for label, v in vols.items() if v.partition is not None}
        segments = initrd.get("segments") or []
        return {
            "name": "talos",
            "version": version,
            "version_source": version_source,
            "version_candidates": candidates,
            "platform": cmdline.get("talos.platform") if cmdline is not None else None,
            "bootloader": bootloader,
            "disk_state": disk_state,
            "layout": layout,
            "meta_size_ok": (vols.get(g["labels"]["meta"]).partition.size == g["meta_size"]) if vols.get(g["labels"]["meta"]) else None,
            "bios_legacy_bootable": bool(((vols.get(g["labels"]["bios"]).partition.attributes or {}).get("legacy_bios_bootable"))
                                         if vols.get(g["labels"]["bios"]) else False),
            "kernel": kernel.get("version"),
            "kernel_format": kernel.get("format"),
            "kernel_cmdline": cmdline.text if cmdline is not None else None,
            "kernel_cmdline_source": cmdline.origin if cmdline is not None else None,
            "kspp": kspp,
            "kspp_satisfied": kspp["satisfied"],
            "module_sig_enforce": (surface or {}).get("kernel_modules", {}).get("signature_enforced"),
            "module_sig_enforce_by": (surface or {}).get("kernel_modules", {}).get("enforced_by"),
            "selinux": (surface or {}).get("selinux"),
            "lockdown": (surface or {}).get("lockdown"),
            "os_release_filled": os_rel_filled,
            "initramfs": {k: v for k, v in initrd.items() if k not in ("archive", "root_fs")},
            "initramfs_compression": [s["compression"] for s in segments],
            "rootfs_compression": initrd.get("rootfs_compression"),
            "extensions": [e["name"] for e in initrd.get("extensions") or []],
            "extension_layers": initrd.get("extensions") or [],
            # the report's generic names for system extensions merged at boot, and how it is managed
            "sysexts": [e["name"] for e in initrd.get("extensions") or []],
            "sysext_images": [{"name": e["name"], "path": f"{initrd.get('where')}: /{e['image']}", "evidence": e["evidence"]}
                              for e in initrd.get("extensions") or []],
            "management": "api",
            "meta": meta.to_dict() if meta is not None else None,
            "meta_state": meta_state,
            "meta_tags": meta_tags,
            "meta_evidence": meta_ev,
            "upgrade_pending": meta is not None and any(tag_name(t) == "Upgrade" for t in meta.tags),
            "grub_default": active["grub_entry"].title if active.get("grub_entry") is not None else None,
            "grub_fallback": grub["fallback"].title if grub and grub["fallback"] is not None else None,
            "grub_entries": grub_rows,
            "ukis": [u["name"] for u in ukis],
            "uki_details": uki_rows,
            "uki_signed": bool(ukis) and all(u["signed"] for u in ukis),
            "active": {"path": active.get("path"), "decided_by": active.get("decided_by")},
            "grub_slot_matches_uki": grub_matches_uki,
            "deterministic_guids": det["disk"],
            "deterministic_guid_checks": det,
            "machined": machined.get("path"),
            "machined_tag": (machined.get("tags") or [None])[0] if len(machined.get("tags") or []) == 1 else
                            (version if version in (machined.get("tags") or []) else None),
            "machined_tags": machined.get("tags") or [],
            "executables": executables,
            "install_image": install_image,
            "mount_checks": checks,
            "era_checks": self._era_checks(vkey, machined.get("arch"), disk_state, bootloader, initrd, os_rel_filled,
                                           vols, det, bool(ukis) and all(u["signed"] for u in ukis)),
            "user_volumes": [{"name": label, "number": v.number, "kind": kind, "content": v.fstype}
                             for label, v in vols.items()
                             for prefix, kind in g["user_volume_prefixes"].items() if label.startswith(prefix)],
            "gpt_first_usable_lba": image.table.details.get("first_usable_lba"),
            "gpt_first_usable_lba_talos": image.table.details.get("first_usable_lba") == g["first_usable_lba"],
            "state_files": state_files,
            "secure_boot": integrity["secure_boot"],
        }

    def _state_files(self, image: DiskImage, state_vol, state_fs) -> list[str] | None:
        """Which of Talos's STATE files (machine config, identities) the partition holds."""
        if state_fs is None:
            return None
        out = []
        for name in self.k["state_files"]:
            try:
                if state_fs.exists("/" + name):
                    out.append(name)
            except ImmutoolsError as exc:
                image.warn(f"{state_vol.describe()}: /{name}: {exc}")
        return out

    def _era_checks(self, vkey, arch, disk_state, bootloader, initrd, os_rel_filled, vols, det, signed) -> list[dict]:
        """What the release's era predicts (talos.yaml ``eras``) against what the image shows.
        Informational: an upgraded install keeps its old partitions and bootloader (§8)."""
        eras, labels = self.k["eras"], self.k["gpt"]["labels"]
        mib = 1024 * 1024
        out = []

        def add(name, observed):
            expected = era_value(eras[name], vkey)
            if expected is not None and observed is not None:
                out.append({"check": name, "expected": expected, "observed": observed, "ok": expected == observed})

        segments = initrd.get("segments") or []
        add("initramfs_compression", segments[0]["compression"] if segments else None)
        add("squashfs_compression", initrd.get("rootfs_compression"))
        add("os_release_filled", os_rel_filled)
        boot, esp = vols.get(labels["boot"]), vols.get(labels["esp"])
        if boot is not None and boot.partition is not None:
            add("boot_partition_mib", boot.partition.size // mib)
        if esp is not None and esp.partition is not None and bootloader in ("sd-boot", "dual-boot"):
            add("uki_esp_mib", esp.partition.size // mib)
        if disk_state == "image":
            add("deterministic_guids", det["disk"])
            if arch in ("x86_64", "aarch64") and not signed:     # SecureBoot images are sd-boot only
                add(f"image_bootloader_{arch}", bootloader)
        return out

    def _grub_matches_uki(self, image, active, ukis) -> bool | None:
        """Dual-boot images: GRUB slot A carries the UKI's .linux/.initrd (talos.md §2.3)."""
        e = active["grub_entry"]
        u = active["uki"] or ukis[0]
        boot = self._by_label(image).get(self.k["gpt"]["labels"]["boot"])
        fs = image.filesystem(boot) if boot is not None else None
        if fs is None or not e.initrds:
            return None
        try:
            initrd = fs.open_source(e.initrds[0].split(")", 1)[-1])
            uk = u["uki"].initrd
            if uk is None:
                return None
            if initrd.size != uk.size or initrd.size > image.limits.max_nested_bytes:
                return False
            return _digest(initrd) == _digest(uk)
        except ImmutoolsError:
            return None


def _digest(src) -> str:
    h = hashlib.sha256()
    pos = 0
    while pos < src.size:
        chunk = src.read_at(pos, min(4 << 20, src.size - pos))
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()

