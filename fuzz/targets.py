"""Fuzz targets: each parser entry point immutools owns or wraps, driven the way a scan drives it.

A target is ``run(data)``: it feeds one input to the parser and exercises what a scan would do with
the result (walk, stat, read a few files, follow the table). The rule it checks: an input may only
raise ``immutools.errors.ImmutoolsError``; any other exception, a hang, a memory blow-up, or an
attempt to open a host file outside the allowed places (the audit hook in ``harness.py``) is a
crash.

Inputs that are disk or filesystem images use the **sparse encoding** (``decode_sparse``): a
virtual size and a list of (offset, bytes) chunks, zeros elsewhere. Real images are mostly zeros
(a 16 MiB XFS holds a few hundred KiB of metadata, a GPT's backup sits at the end of the disk), so
the seeds stay small and the mutations land on metadata. Text targets take UTF-8 text; the units
and GRUB targets take a small tree of files (``decode_tree``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from immutools.errors import ImmutoolsError
from immutools.image.source import ByteSource, BytesSource
from immutools.limits import Limits

SPARSE_MAGIC = b"SPRS"
MAX_VIRTUAL = 16 << 30          # virtual size a sparse input may declare
MAX_CHUNKS = 4096
TREE_SEPARATOR = b"\n\x00--\x00\n"


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    modules: list[str]                       # imported under instrumentation (coverage)
    what: str                                # what it exercises (for the report)
    max_len: int = 1 << 16
    instrument: list[str] = field(default_factory=lambda: ["immutools"])


# ---- input encodings ------------------------------------------------------------------------------
def decode_sparse(data: bytes) -> ByteSource:
    """A ``ByteSource`` of the declared size holding the chunks (zeros elsewhere); raw bytes when
    the input does not start with the sparse magic."""
    if not data.startswith(SPARSE_MAGIC) or len(data) < 12:
        return BytesSource(data, name="fuzz")
    size = min(struct.unpack_from("<Q", data, 4)[0], MAX_VIRTUAL)
    chunks = []
    pos = 12
    while pos + 6 <= len(data) and len(chunks) < MAX_CHUNKS:
        offset, length = struct.unpack_from("<IH", data, pos)
        offset *= 512
        pos += 6
        body = data[pos : pos + length]
        pos += length
        if offset < size and body:
            chunks.append((offset, body[: size - offset]))
    return ChunkSource(size, chunks)


def encode_sparse(image: bytes | None = None, size: int | None = None, chunks=None, granule: int = 4096) -> bytes:
    """The sparse encoding of ``image`` (all-zero ``granule``s dropped) or of explicit
    (offset, bytes) chunks of a ``size``-byte image; offsets are multiples of 512."""
    if chunks is None:
        chunks = []
        for off in range(0, len(image), granule):
            block = image[off : off + granule]
            if any(block):
                if chunks and chunks[-1][0] + len(chunks[-1][1]) == off:
                    chunks[-1] = (chunks[-1][0], chunks[-1][1] + block)
                else:
                    chunks.append((off, block))
        size = len(image)
    out = bytearray(SPARSE_MAGIC + struct.pack("<Q", size))
    for off, body in chunks:
        assert off % 512 == 0
        for i in range(0, len(body), 0xF000):
            piece = body[i : i + 0xF000]
            out += struct.pack("<IH", (off + i) // 512, len(piece)) + piece
    return bytes(out)


class ChunkSource(ByteSource):
    """A virtual image: the chunks where they are, zeros everywhere else."""

    def __init__(self, size: int, chunks: list[tuple[int, bytes]]):
        super().__init__(size)
        self.name = "fuzz"
        self.chunks = sorted(chunks, key=lambda c: c[0])

    def _read_at(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        end = offset + length
        for start, body in self.chunks:
            if start >= end:
                break
            stop = start + len(body)
            if stop <= offset:
                continue
            lo, hi = max(start, offset), min(stop, end)
            out[lo - offset : hi - offset] = body[lo - start : hi - start]
        return bytes(out)


def decode_tree(data: bytes) -> dict[str, object]:
    """Files of a small tree: ``path\\ncontent`` records joined by ``TREE_SEPARATOR``; a path ending
    in ``@`` is a symlink whose content is the target."""
    from immutools.fs.memory import File, Symlink

    entries: dict[str, object] = {}
    for record in data.split(TREE_SEPARATOR)[:256]:
        path, _, body = record.partition(b"\n")
        name = path.decode("utf-8", "replace").strip()
        if not name.startswith("/") or len(name) > 512:
            continue
        if name.endswith("@"):
            entries[name[:-1]] = Symlink(body.decode("utf-8", "replace"))
        else:
            entries[name] = File(body)
    return entries


def encode_tree(files: dict[str, bytes | str]) -> bytes:
    parts = []
    for path, body in files.items():
        parts.append(path.encode() + b"\n" + (body.encode() if isinstance(body, str) else body))
    return TREE_SEPARATOR.join(parts)


def _memory_fs(data: bytes):
    from immutools.fs.memory import MemoryFileSystem

    fs = MemoryFileSystem(limits=SMALL_LIMITS)
    for path, entry in decode_tree(data).items():
        try:
            fs.add(path, entry)
        except ImmutoolsError:
            pass
    return fs


# Smaller than a scan's: a fuzz input is tiny, and each execution must stay fast.
SMALL_LIMITS = Limits(max_file_read=1 << 20, max_nested_bytes=8 << 20, max_walk_entries=5000, max_dir_entries=5000,
                      max_undeclared_bytes=64 << 20, max_leading_zeros=8 << 20)


# ---- what a scan does with a filesystem -----------------------------------------------------------
def exercise_fs(fs, max_entries: int = 300, max_reads: int = 8) -> None:
    """Walk, stat, list, readlink, read a few files and xattrs, as a scan would."""
    reads = 0
    try:
        for n, entry in enumerate(fs.walk("/")):
            if n >= max_entries:
                break
            st = entry.stat
            try:
                if st.is_file and reads < max_reads:
                    reads += 1
                    fs.read(entry.path, 0, min(st.size, 4096), max_bytes=1 << 16)
                    if st.size > 8192:
                        fs.read(entry.path, st.size - 4096, 4096, max_bytes=1 << 16)
                elif st.is_dir and n < 20:
                    fs.listdir(entry.path)
                elif st.is_symlink:
                    fs.readlink(entry.path)
                    fs.exists(entry.path)           # follows the link inside the image
                if n < 20:
                    fs.xattrs(entry.path)
            except ImmutoolsError:
                pass
    except ImmutoolsError:
        pass
    for path in ("/etc/os-release", "/usr/lib/os-release", "/etc/../../etc/passwd", "/lib/os-release"):
        try:
            if fs.exists(path):
                fs.read_text(path, max_bytes=1 << 16)
        except ImmutoolsError:
            pass


def _guarded(body: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        try:
            body(data)
        except ImmutoolsError:
            pass
    return run


# ---- the targets -----------------------------------------------------------------------------------
def _run_volumes(data: bytes) -> None:
    from immutools.fs.probe import identify
    from immutools.image.source import SliceSource
    from immutools.volumes import read_partition_table

    src = decode_sparse(data)
    table = read_partition_table(src, SMALL_LIMITS)
    for part in table.partitions[:32]:
        try:
            identify(SliceSource(src, part.start, part.size))
        except ImmutoolsError:
            pass
        _ = (part.type_key, part.label, part.attributes)


def _fs_runner(fstype: str) -> Callable[[bytes], None]:
    def body(data: bytes) -> None:
        from immutools.fs import identify, open_filesystem

        src = decode_sparse(data)
        identify(src)
        fs = open_filesystem(src, fstype, limits=SMALL_LIMITS)
        try:
            exercise_fs(fs)
        finally:
            fs.close()
    return body


def _run_cpio(data: bytes) -> None:
    from immutools.fs.cpio import CpioArchive
    from immutools.image.source import BytesSource

    arc = CpioArchive.from_source(BytesSource(data, name="fuzz"), limits=SMALL_LIMITS)
    try:
        exercise_fs(arc)
        for path in ("/rootfs.sqsh", "/init"):
            if arc.exists(path):
                src = arc.open_source(path)
                src.read_at(0, 4096)
                arc.segment_of(path)
    finally:
        arc.close()


def _run_pe(data: bytes) -> None:
    from immutools.fs.pe import UnifiedKernelImage, kernel_info, read_pe_section_list
    from immutools.image.source import BytesSource

    src = BytesSource(data, name="fuzz")
    kernel_info(src, SMALL_LIMITS)
    try:
        read_pe_section_list(src)
        uki = UnifiedKernelImage(src, SMALL_LIMITS)
        uki.summary()
        for section in (uki.initrd, uki.linux):
            if section is not None:
                section.read_at(0, 64)
    except ImmutoolsError:
        pass


def _run_talos_meta(data: bytes) -> None:
    from immutools.fs.talos_meta import read_meta

    meta = read_meta(decode_sparse(data))
    meta.to_dict()
    for tag in list(meta.tags)[:16]:
        meta.value_text(tag)


def _run_verity(data: bytes) -> None:
    from immutools.fs.verity import hash_area_end, read_superblock, tree_layout, verify
    from immutools.image.source import BytesSource

    hashdev = BytesSource(data, name="fuzz")
    params = read_superblock(hashdev, 0)
    if params is None:
        return
    tree_layout(params)
    hash_area_end(params)
    if params.data_size <= 1 << 20:
        params.root_hash = "00" * 32
        try:
            verify(BytesSource(bytes(params.data_size), name="data"), hashdev, params)
        except ImmutoolsError:
            pass


def _run_dm_table(data: bytes) -> None:
    from immutools.fs.verity import parse_dm_mod_create, parse_dm_verity_table, tree_layout
    from immutools.system.cmdline import KernelCmdline

    text = data.decode("utf-8", "replace")
    try:
        parse_dm_mod_create(text)
    except ImmutoolsError:
        pass
    try:
        tree_layout(parse_dm_verity_table(text))
    except ImmutoolsError:
        pass
    cmdline = KernelCmdline(text, "fuzz")
    for dev in cmdline.dm_devices():
        _ = [t.verity for t in dev.tables]
    cmdline.root_mount()
    cmdline.usr_mount()
    cmdline.usr_verity()
    cmdline.root_verity()


def _run_grub(data: bytes) -> None:
    from immutools.system.grubcfg import fs_file_test, fs_loader, parse_grub_cfg

    fs = _memory_fs(data)
    text = fs.read_text("/grub.cfg", max_bytes=1 << 20) if fs.exists("/grub.cfg") else data.decode("utf-8", "replace")
    cfg = parse_grub_cfg(text, env={"root": "hd0,gpt1", "prefix": "/grub"}, loader=fs_loader(fs), file_exists=fs_file_test(fs))
    for entry in cfg.entries[:16]:
        cmdline = entry.kernel_cmdline("fuzz")
        cmdline.dm_devices()
        cmdline.root_mount()
        _ = entry.proc_cmdline
    cfg.default_entry()


def _run_units(data: bytes) -> None:
    from immutools.system.units import UnitSet, parse_unit_text

    fs = _memory_fs(data)
    units = UnitSet(fs)
    names = units.names()[:64]
    for name in names:
        unit = units.load(name)
        if unit is not None:
            unit.values("Unit", "Wants")
            unit.list_values("Install", "WantedBy")
        units.enablement(name)
        units.exec_start(name)
        units.preset(name)
    units.default_target()
    units.pulled_in(limit=2000)
    units.mount_units()
    parse_unit_text(data.decode("utf-8", "replace"), "/fuzz.service")


def _run_os_release(data: bytes) -> None:
    from immutools.osrelease import parse_os_release

    parse_os_release(data.decode("utf-8", "replace"))


_EMPTY_DIR = None


def _run_vmdisk(data: bytes) -> None:
    import tempfile

    from immutools.image.magic import CONTAINER, sniff
    from immutools.image.source import ReadStats
    from immutools.image.vmdisk import open_container
    from immutools.volumes import read_partition_table

    global _EMPTY_DIR
    if _EMPTY_DIR is None:
        _EMPTY_DIR = tempfile.mkdtemp(prefix="immutools-fuzz-empty-")
    src = decode_sparse(data)
    kind, fmt = sniff(src.read_at(0, 4096), src.read_at(max(0, src.size - 512), 512))
    if kind != CONTAINER:
        return
    opened = open_container(fmt, src, name="fuzz", base_dir=_EMPTY_DIR, stats=ReadStats())
    try:
        disk = opened.source
        for off in (0, 512, 1 << 20, max(0, disk.size - 4096)):
            disk.read_at(off, 4096)
        read_partition_table(disk, SMALL_LIMITS)
    finally:
        opened.source.close()


_FS_MODULES = {
    "ext4": ["immutools.fs.extfs", "dissect.extfs"],
    "xfs": ["immutools.fs.xfs", "dissect.xfs"],
    "btrfs": ["immutools.fs.btrfs", "dissect.btrfs"],
    "vfat": ["immutools.fs.fat", "dissect.fat"],
    "squashfs": ["immutools.fs.squashfs", "dissect.squashfs"],
}

TARGETS: dict[str, Target] = {
    "volumes": Target("volumes", _guarded(_run_volumes), ["immutools.volumes", "immutools.volumes.gpt",
                      "immutools.volumes.mbr", "immutools.fs.probe"], "GPT/MBR tables, then identify() on each partition",
                      max_len=1 << 17),
    "erofs": Target("erofs", _guarded(_fs_runner("erofs")), ["immutools.fs.erofs", "immutools.fs.erofs_tables"],
                    "our EROFS reader: open, walk, stat, read, readlink, xattrs", max_len=1 << 17),
    "cpio": Target("cpio", _guarded(_run_cpio), ["immutools.fs.cpio", "immutools.fs.compressed"],
                   "initramfs: segments of every codec, cpio entries, the tree", max_len=1 << 17),
    "pe": Target("pe", _guarded(_run_pe), ["immutools.fs.pe", "immutools.fs.compressed", "pefile"],
                 "PE/UKI sections, kernel version from bzImage/arm64/zboot/compressed kernels", max_len=1 << 17,
                 instrument=["immutools", "pefile"]),
    "talos-meta": Target("talos-meta", _guarded(_run_talos_meta), ["immutools.fs.talos_meta"],
                         "Talos META: both ADV copies and the syslinux ADV", max_len=1 << 17),
    "verity": Target("verity", _guarded(_run_verity), ["immutools.fs.verity", "immutools.fs.probe"],
                     "dm-verity superblock, tree layout, offline verification", max_len=1 << 16),
    "dm-table": Target("dm-table", _guarded(_run_dm_table), ["immutools.fs.verity", "immutools.system.cmdline"],
                       "dm-mod.create= values and dm-verity tables", max_len=1 << 13),
    "grub": Target("grub", _guarded(_run_grub), ["immutools.system.grubcfg", "immutools.system.cmdline",
                   "immutools.fs.memory"], "grub.cfg interpretation (source/configfile from a tree, menus, tests)",
                   max_len=1 << 15),
    "units": Target("units", _guarded(_run_units), ["immutools.system.units", "immutools.fs.memory"],
                    "systemd unit files, drop-ins, wants/requires links, presets", max_len=1 << 15),
    "os-release": Target("os-release", _guarded(_run_os_release), ["immutools.osrelease"],
                         "os-release(5) parsing", max_len=1 << 12),
    "vmdisk": Target("vmdisk", _guarded(_run_vmdisk), ["immutools.image.vmdisk", "immutools.image.magic",
                     "immutools.volumes", "dissect.hypervisor"], "qcow2, VMDK, VHD, VHDX headers and tables, reads",
                     max_len=1 << 17, instrument=["immutools", "dissect"]),
    **{f"fs-{t}": Target(f"fs-{t}", _guarded(_fs_runner(t)), mods, f"dissect.{t.replace('vfat', 'fat')} through "
                         "open_filesystem: open, walk, stat, read, readlink, xattrs", max_len=1 << 17,
                         instrument=["immutools", "dissect"])
       for t, mods in _FS_MODULES.items()},
}
