"""File entry kinds whose bytes are made here, from the spec alone: ``text``, ``hex``, ``zeros``,
``copy`` (a file next to the spec), ``elf`` / ``kernel`` / ``pe`` (small stand-ins with the headers a
prober reads), ``tar`` (a deterministic archive of member entries), and the structural kinds
``dir`` and ``symlink`` (placed by the tree stager). Registered in ``immutools.replica.kinds``.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import tarfile
from pathlib import Path

from immutools.replica.context import SpecError
from immutools.replica.kinds import entry_bytes, register
from immutools.replica.spec import parse_int, parse_mode, parse_size


# ------------------------------------------------------------------------------------------------
# Structural kinds and plain bytes
# ------------------------------------------------------------------------------------------------

@register("text")
def text_entry(build, value, entry, ctx, where) -> bytes:
    return str(value).encode()


@register("symlink", structural=True)
def _symlink_entry(build, value, entry, ctx, where) -> bytes:    # placed by the tree stager
    raise SpecError(f"{where}: not a regular file entry")


@register("dir", structural=True)
def _dir_entry(build, value, entry, ctx, where) -> bytes:        # placed by the tree stager
    raise SpecError(f"{where}: not a regular file entry")


def _validate_elf(value, where, trees, validate_entry) -> None:
    if "arch" not in value:
        raise SpecError(f"{where}.elf: needs arch (x86_64, aarch64, ...)")


@register("elf", value=dict, validate=_validate_elf)
def elf_entry(build, value, entry, ctx, where) -> bytes:
    return elf_stub(value, f"{where}.elf")


@register("pe", value=dict)
def pe_entry(build, value, entry, ctx, where) -> bytes:
    return pe_stub(value, f"{where}.pe")


@register("kernel", value=dict, required=("arch",))
def kernel_entry(build, value, entry, ctx, where) -> bytes:
    return kernel_stub(value, f"{where}.kernel")


@register("hex")
def hex_entry(build, value, entry, ctx, where) -> bytes:
    try:
        return bytes.fromhex(re.sub(r"\s+", "", str(value)))
    except ValueError:
        raise SpecError(f"{where}.hex: not hex") from None


@register("zeros")
def zeros_entry(build, value, entry, ctx, where) -> bytes:
    return bytes(parse_size(value, f"{where}.zeros"))


def _validate_tar(members, where, trees, validate_entry) -> None:
    for mpath, m in members.items():
        validate_entry(m, f"{where}.tar.{mpath!r}", trees)


@register("tar", value=dict, validate=_validate_tar)
def tar_entry(build, value, entry, ctx, where) -> bytes:
    return make_tar(build, value, ctx, where)


@register("copy")
def copy_entry(build, value, entry, ctx, where) -> bytes:
    src = Path(str(value))
    if not src.is_absolute():
        # relative to the spec file, or to a file it extends (a full-size variant in fullsize/
        # inherits its thin replica's copies)
        bases = [build.spec.path.parent, *(f.parent for f in reversed(build.spec.files))]
        src = next((b / src for b in bases if (b / src).exists()), bases[0] / src)
    try:
        return src.read_bytes()
    except OSError as exc:
        raise SpecError(f"{where}.copy: {src}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------------------
# Stand-in binaries
# ------------------------------------------------------------------------------------------------

ELF_MACHINES = {  # arch -> (e_machine, ELF class 1=32/2=64, data 1=LE/2=BE)
    "x86_64": (0x3E, 2, 1), "amd64": (0x3E, 2, 1), "aarch64": (0xB7, 2, 1), "arm64": (0xB7, 2, 1),
    "i386": (0x03, 1, 1), "arm": (0x28, 1, 1), "riscv64": (0xF3, 2, 1), "ppc64le": (0x15, 2, 1),
    "ppc64": (0x15, 2, 2), "s390x": (0x16, 2, 2),
}
ELF_TYPES = {"rel": 1, "exec": 2, "dyn": 3}


def elf_stub(spec: dict, where: str) -> bytes:
    """A small ELF file: a valid header for the arch (so arch detection works), optional PT_INTERP,
    a note naming it a stand-in, optional kernel-module ``modinfo`` strings and signature trailer."""
    arch = spec["arch"]
    if arch not in ELF_MACHINES:
        raise SpecError(f"{where}.arch: {arch!r} (one of {', '.join(ELF_MACHINES)})")
    machine, cls, data = ELF_MACHINES[arch]
    etype = ELF_TYPES.get(spec.get("type", "exec"))
    if etype is None:
        raise SpecError(f"{where}.type: {spec.get('type')!r} (rel, exec or dyn)")
    e = "<" if data == 1 else ">"
    interp = spec.get("interp")
    body = bytearray()
    if cls == 2:
        ehsize, phentsize = 64, 56
    else:
        ehsize, phentsize = 52, 32
    phnum = 1 if interp else 0
    phoff = ehsize if phnum else 0
    interp_off = ehsize + phnum * phentsize
    ident = b"\x7fELF" + bytes([cls, data, 1, 0]) + bytes(8)
    if cls == 2:
        header = ident + struct.pack(e + "HHIQQQIHHHHHH", etype, machine, 1, 0x401000 if etype == 2 else 0,
                                     phoff, 0, 0, ehsize, phentsize, phnum, 64, 0, 0)
    else:
        header = ident + struct.pack(e + "HHIIIIIHHHHHH", etype, machine, 1, 0x8048000 if etype == 2 else 0,
                                     phoff, 0, 0, ehsize, phentsize, phnum, 40, 0, 0)
    body += header
    if interp:
        ib = interp.encode() + b"\0"
        if cls == 2:
            body += struct.pack(e + "IIQQQQQQ", 3, 4, interp_off, interp_off, interp_off, len(ib), len(ib), 1)
        else:
            body += struct.pack(e + "IIIIIIII", 3, interp_off, interp_off, interp_off, len(ib), len(ib), 4, 1)
        body += ib
    note = spec.get("note")
    body += f"\nimmutools replica stand-in{': ' + note if note else ''}\n".encode()
    modinfo = spec.get("modinfo") or {}
    for k, v in modinfo.items():
        body += f"{k}={v}\0".encode()
    if spec.get("signed"):
        # Kernel module signature trailer (include/linux/module_signature.h): signature bytes,
        # struct module_signature {algo, hash, id_type=2 (PKCS#7), signer_len, key_id_len, pad[3], be32 sig_len},
        # then the magic string.
        sig = hashlib.sha256(bytes(body)).digest()
        body += sig + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(sig)) + b"~Module signature appended~\n"
    return bytes(body)


def kernel_stub(spec: dict, where: str) -> bytes:
    """A stand-in kernel with the boot header a prober reads: x86 bzImage (``MZ``, ``HdrS`` at 0x202,
    kernel_version string) or arm64 Image (``ARM\\x64`` at 0x38), plus ``inject`` texts at given offsets."""
    arch = spec["arch"]
    version = str(spec.get("version", "0.0.0"))
    size = parse_int(spec.get("size", 65536), f"{where}.size")
    if size < 4096:
        raise SpecError(f"{where}.size: at least 4096")
    buf = bytearray(size)
    banner = f"Linux version {version} ({spec.get('builder', 'builder@replica')}) #1 SMP".encode()
    if arch in ("x86_64", "amd64", "i386"):
        buf[0:2] = b"MZ"                                   # EFI stub PE/COFF header
        struct.pack_into("<I", buf, 0x3C, 0x80)            # e_lfanew: PE header after the 64-byte gap at 0x40
        buf[0x80:0x84] = b"PE\0\0"
        struct.pack_into("<H", buf, 0x84, 0x8664)
        setup_sects = 3
        buf[0x1F1] = setup_sects
        struct.pack_into("<H", buf, 0x1FE, 0xAA55)        # boot_flag
        buf[0x202:0x206] = b"HdrS"                         # Documentation/arch/x86/boot.rst
        struct.pack_into("<H", buf, 0x206, 0x020F)        # boot protocol 2.15
        buf[0x211] = 0x01                                  # loadflags: LOADED_HIGH
        vstr = f"{version} ({spec.get('builder', 'builder@replica')}) #1 SMP".encode() + b"\0"
        struct.pack_into("<H", buf, 0x20E, 0x400 - 0x200)  # kernel_version: offset from 0x200
        buf[0x400:0x400 + len(vstr)] = vstr
        payload_at = (setup_sects + 1) * 512
    elif arch in ("aarch64", "arm64"):
        # Documentation/arch/arm64/booting.rst image header; code0 doubles as "MZ" for the EFI stub.
        struct.pack_into("<IIQQQQQQ", buf, 0, 0x91005A4D, 0x14000000, 0, size, 0x0A, 0, 0, 0)
        buf[0x38:0x3C] = b"ARM\x64"
        struct.pack_into("<I", buf, 0x3C, 0x40)
        buf[0x40:0x44] = b"PE\0\0"
        struct.pack_into("<H", buf, 0x44, 0xAA64)
        payload_at = 0x400
    else:
        raise SpecError(f"{where}.arch: {arch!r} (x86_64 or aarch64)")
    buf[payload_at:payload_at + len(banner)] = banner
    note = b"\nimmutools replica stand-in kernel\n"
    buf[payload_at + len(banner) + 1:payload_at + len(banner) + 1 + len(note)] = note
    for off, text in (spec.get("inject") or {}).items():
        off = parse_int(off, f"{where}.inject")
        data = str(text).encode()
        if off < 0 or off + len(data) > size:
            raise SpecError(f"{where}.inject: {off}+{len(data)} outside the {size}-byte file")
        buf[off:off + len(data)] = data
    return bytes(buf)


PE_MACHINES = {"x86_64": 0x8664, "amd64": 0x8664, "aarch64": 0xAA64, "arm64": 0xAA64, "i386": 0x14C,
               "riscv64": 0x5064}
PE_SUBSYSTEMS = {"efi_application": 10, "efi_boot_service_driver": 11, "efi_runtime_driver": 12, "console": 3}


def pe_stub(spec: dict, where: str) -> bytes:
    """A small PE32+ image header (MZ, PE signature, COFF machine, optional header with the subsystem),
    so EFI binaries on a replica ESP identify by architecture."""
    arch = spec.get("arch")
    if arch not in PE_MACHINES:
        raise SpecError(f"{where}.arch: {arch!r} (one of {', '.join(PE_MACHINES)})")
    subsystem = PE_SUBSYSTEMS.get(spec.get("subsystem", "efi_application"))
    if subsystem is None:
        raise SpecError(f"{where}.subsystem: one of {', '.join(PE_SUBSYSTEMS)}")
    buf = bytearray(0x200)
    buf[0:2] = b"MZ"
    struct.pack_into("<I", buf, 0x3C, 0x80)
    buf[0x80:0x84] = b"PE\0\0"
    # COFF header: machine, 0 sections, timestamp 0, no symbols, optional header size 0xF0, characteristics
    struct.pack_into("<HHIIIHH", buf, 0x84, PE_MACHINES[arch], 0, 0, 0, 0, 0xF0, 0x0206)
    opt = 0x98
    struct.pack_into("<H", buf, opt, 0x20B)                   # PE32+ magic
    struct.pack_into("<H", buf, opt + 68, subsystem)          # Subsystem
    note = f"immutools replica stand-in{': ' + spec['note'] if spec.get('note') else ''}\n".encode()
    return bytes(buf) + note


def make_tar(build, members: dict, ctx: dict, where: str) -> bytes:
    """A deterministic tar (GNU format, root-owned, SOURCE_DATE_EPOCH times) of ``members``."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for mpath, m in members.items():
            mw = f"{where}.tar.{mpath!r}"
            info = tarfile.TarInfo(str(mpath).strip("/"))
            info.mtime = build.epoch
            info.uid = parse_int(m.get("uid", 0), mw)
            info.gid = parse_int(m.get("gid", 0), mw)
            info.uname = info.gname = "root" if info.uid == 0 else ""
            if "symlink" in m:
                info.type = tarfile.SYMTYPE
                info.linkname = str(m["symlink"])
                info.mode = 0o777
                tar.addfile(info)
            elif "dir" in m:
                info.type = tarfile.DIRTYPE
                info.mode = parse_mode(m.get("mode", "0755"), mw)
                tar.addfile(info)
            else:
                data = entry_bytes(build, m, ctx, mw)
                info.size = len(data)
                info.mode = parse_mode(m.get("mode", "0644"), mw)
                tar.addfile(info, io.BytesIO(data))
    return bio.getvalue()
