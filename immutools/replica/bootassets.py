"""Replica file kinds for boot chains: initramfs cpio archives, UKIs, EFI zboot kernels, Talos META.

Each kind registers its maker and schema in ``immutools.replica.kinds``:

* ``cpio: [{tree: NAME, compress: none|xz|zstd, command: [...], vars: {...}}, ...]`` - an initramfs: one
  ``newc`` archive per segment, made by GNU cpio from the staged tree exactly as Talos does
  (``find . | LC_ALL=C sort | cpio -H newc --create --reproducible -R +0:+0``) and compressed with
  the real tool; segments are concatenated (siderolabs/talos@v1.7.0, @v1.8.0 Dockerfile: ``xz -C crc32 -0 -e`` up to 1.7,
  ``zstd -T0 -18`` from 1.8; extension segments ``-T 0`` xz / ``zstd -T0 -18``,
  talos@HEAD:pkg/imager/extensions/rebuild.go). ``command`` overrides the compressor; ``vars``
  override template variables for the segment's tree and what it nests.
* ``pe_sections: {arch, sections: [{name: .osrel, <entry>}, ...], signed: bool}`` - a PE32+ EFI
  application (a UKI when the sections are ``.linux``, ``.initrd``, ...) holding the sections in the given order (names may repeat: ``.profile``,
  ``.cmdline``), the layout ``objcopy --add-section`` and ukify produce: headers, a small ``.text``
  stand-in for the systemd-stub code, then one section per entry at 4 KiB-aligned RVAs and 512-byte
  aligned file offsets. ``signed`` appends a stand-in Authenticode certificate table (data directory
  4) so the image reads as signed; the signature is not a real one.
* ``zboot: {compress: zstd|gzip, kernel: {...}}`` - an arm64 EFI zboot image (MZ + ``zimg``, payload
  offset/size at 8/12, compression name at 24, drivers/firmware/efi/libstub/zboot-header.S) around
  a compressed ``kernel:`` stand-in.
* ``talos_meta: {tags: {TAG: value}, copies: [1, 2], corrupt: [N], legacy: {TAG: value}, size}`` -
  a Talos META partition: the 256 KiB ADV block written twice at offset 0 (siderolabs/talos@v1.12.0 internal/pkg/meta/internal/adv/talos/talos.go), optional
  damage to a copy, optional syslinux ADV in the last 1 KiB.
* ``padded: {size, seed, head: <entry>}`` - ``head``'s bytes followed by deterministic
  pseudo-random filler up to ``size`` (stand-in binaries of a plausible size that do not compress
  away).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

from immutools.replica.context import SpecError
from immutools.replica.files import kernel_stub
from immutools.replica.kinds import entry_bytes, register
from immutools.replica.spec import parse_int, parse_size
from immutools.replica.tree import stage_tree

CPIO_COMPRESSORS = {
    "xz": ["xz", "-C", "crc32", "-0", "-e", "-z", "-c"],
    "zstd": ["zstd", "-T0", "-18", "-c", "--quiet"],
    "gzip": ["gzip", "-n", "-9", "-c"],
}
PE_MACHINES = {"x86_64": 0x8664, "amd64": 0x8664, "aarch64": 0xAA64, "arm64": 0xAA64}
FILE_ALIGN = 0x200
SECTION_ALIGN = 0x1000
DATA_SECTION = 0x40000040          # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
CODE_SECTION = 0x60000020          # IMAGE_SCN_CNT_CODE | MEM_EXECUTE | MEM_READ
ADV_BLOCK = 256 * 1024


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ------------------------------------------------------------------------------------------------
# The kinds: schema checks and makers
# ------------------------------------------------------------------------------------------------

def _validate_cpio(value, where, trees, validate_entry) -> None:
    if not value:
        raise SpecError(f"{where}.cpio: a list of segments ({{tree: NAME, compress: ...}})")
    for i, seg in enumerate(value):
        sw = f"{where}.cpio[{i}]"
        if not isinstance(seg, dict) or "tree" not in seg:
            raise SpecError(f"{sw}: needs tree: NAME")
        if seg["tree"] not in trees:
            raise SpecError(f"{sw}.tree: no tree {seg['tree']!r} under trees:")
        unknown = set(seg) - {"tree", "compress", "command", "vars"}
        if unknown:
            raise SpecError(f"{sw}: unknown key(s) {', '.join(sorted(unknown))}")
        if seg.get("compress", "none") not in ("none", *CPIO_COMPRESSORS):
            raise SpecError(f"{sw}.compress: none, {', '.join(CPIO_COMPRESSORS)}")


@register("cpio", value=list, validate=_validate_cpio)
def cpio_entry(build, value, entry, ctx, where) -> bytes:
    return b"".join(cpio_segment(build, seg, ctx, f"{where}.cpio[{i}]") for i, seg in enumerate(value))


def _validate_pe_sections(value, where, trees, validate_entry) -> None:
    arch = value.get("arch")
    if arch not in PE_MACHINES and "{{" not in str(arch):      # templates are checked when built
        raise SpecError(f"{where}.pe_sections.arch: one of {', '.join(PE_MACHINES)}")
    sections = value.get("sections")
    if not isinstance(sections, list) or not sections:
        raise SpecError(f"{where}.pe_sections.sections: a list of {{name: .osrel, <entry>}}")
    for i, sec in enumerate(sections):
        sw = f"{where}.pe_sections.sections[{i}]"
        if not isinstance(sec, dict) or not str(sec.get("name", "")).startswith("."):
            raise SpecError(f"{sw}.name: a section name such as .osrel")
        if len(str(sec["name"]).encode()) > 8:
            raise SpecError(f"{sw}.name: PE section names have at most 8 bytes")
        validate_entry({k: v for k, v in sec.items() if k != "name"}, sw, trees)


@register("pe_sections", value=dict, validate=_validate_pe_sections)
def pe_sections_entry(build, value, entry, ctx, where) -> bytes:
    return make_uki(build, value, ctx, where)


def _validate_zboot(value, where, trees, validate_entry) -> None:
    if not isinstance(value.get("kernel"), dict):
        raise SpecError(f"{where}.zboot: needs kernel: {{arch, version, ...}}")
    if value.get("compress", "zstd") not in ("zstd", "gzip"):
        raise SpecError(f"{where}.zboot.compress: zstd or gzip")


@register("zboot", value=dict, validate=_validate_zboot)
def zboot_entry(build, value, entry, ctx, where) -> bytes:
    return make_zboot(value, where)


def _validate_talos_meta(value, where, trees, validate_entry) -> None:
    for key in ("tags", "legacy"):
        for tag in (value.get(key) or {}):
            if not 0 < parse_int(tag, f"{where}.talos_meta.{key}") < 1 << 32:
                raise SpecError(f"{where}.talos_meta.{key}: tag {tag!r} out of range")


@register("talos_meta", value=dict, keys=("tags", "copies", "corrupt", "legacy", "size"), validate=_validate_talos_meta)
def talos_meta_entry(build, value, entry, ctx, where) -> bytes:
    return make_talos_meta(value, where)


def _validate_padded(value, where, trees, validate_entry) -> None:
    if not isinstance(value.get("head"), dict):
        raise SpecError(f"{where}.padded: needs size and head: <entry>")
    validate_entry(value["head"], f"{where}.padded.head", trees)


@register("padded", value=dict, required=("size", "head"), validate=_validate_padded)
def padded_entry(build, value, entry, ctx, where) -> bytes:
    head = entry_bytes(build, value["head"], ctx, f"{where}.padded.head")
    size = parse_size(value["size"], f"{where}.padded.size")
    if size < len(head):
        raise SpecError(f"{where}.padded.size: {size} is smaller than the head ({len(head)} bytes)")
    return head + pseudo_random(str(value.get("seed", where)), size - len(head))


def pseudo_random(seed: str, size: int) -> bytes:
    """Deterministic incompressible bytes: SHA-256 in counter mode over ``seed``."""
    out = bytearray()
    counter = 0
    key = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        out += hashlib.sha256(key + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def cpio_segment(build, seg: dict, ctx: dict, where: str) -> bytes:
    """One initramfs segment: GNU cpio over the staged tree, then the real compressor."""
    # ``vars`` override template variables for this segment's tree and everything it nests (the
    # previous release in slot A of an upgraded disk).
    ctx = dict(ctx, **{str(k): v for k, v in (seg.get("vars") or {}).items()})
    staging: Path = stage_tree(build, seg["tree"], ctx, where)
    try:
        names = sorted(("." + ("/" + str(p.relative_to(staging)) if p != staging else "")).encode()
                       for p in [staging, *staging.rglob("*")])
        listing = b"\n".join(names) + b"\n"
        archive = build.runner.run(["cpio", "-H", "newc", "--create", "--reproducible", "--quiet", "-R", "+0:+0"],
                                   f"{where}:cpio", input=listing, cwd=staging).stdout
    finally:
        build.remove_tree(staging)
    how = seg.get("compress", "none")
    if how == "none":
        return archive
    cmd = [str(c) for c in seg.get("command") or CPIO_COMPRESSORS[how]]
    return build.runner.run(cmd, f"{where}:{how}", input=archive).stdout


def make_zboot(value: dict, where: str) -> bytes:
    inner = kernel_stub(value["kernel"], f"{where}.zboot.kernel")
    how = value.get("compress", "zstd")
    if how == "zstd":
        import zstandard

        payload = zstandard.ZstdCompressor(level=19).compress(inner)
    else:
        payload = gzip.compress(inner, mtime=0)
    head = bytearray(0x200)
    head[0:2] = b"MZ"
    head[4:8] = b"zimg"
    struct.pack_into("<II", head, 8, len(head), len(payload))
    name = how.encode()
    head[24:24 + len(name)] = name
    struct.pack_into("<I", head, 0x3C, 0x40)                 # PE header of the zboot decompressor
    head[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<H", head, 0x44, 0xAA64)
    return bytes(head) + payload


def make_uki(build, value: dict, ctx: dict, where: str) -> bytes:
    """A PE32+ image with the UKI sections in order (see the module docstring)."""
    if value["arch"] not in PE_MACHINES:
        raise SpecError(f"{where}.pe_sections.arch: {value['arch']!r} (one of {', '.join(PE_MACHINES)})")
    machine = PE_MACHINES[value["arch"]]
    stub_code = b"immutools replica stand-in: systemd-stub code section\n".ljust(FILE_ALIGN, b"\0")
    sections: list[tuple[str, bytes, int]] = [(".text", stub_code, CODE_SECTION)]
    for i, sec in enumerate(value["sections"]):
        body = {k: v for k, v in sec.items() if k != "name"}
        sections.append((str(sec["name"]), entry_bytes(build, body, ctx, f"{where}.pe_sections.sections[{i}]"), DATA_SECTION))
    nsec = len(sections)
    e_lfanew = 0x80
    opt_size = 0xF0
    headers = _align(e_lfanew + 4 + 20 + opt_size + 40 * nsec, FILE_ALIGN)
    rva = _align(headers, SECTION_ALIGN)
    offset = headers
    table = bytearray()
    body = bytearray()
    for name, data, flags in sections:
        raw = _align(len(data), FILE_ALIGN)
        table += struct.pack("<8sIIIIIIHHI", name.encode(), len(data), rva, raw, offset, 0, 0, 0, 0, flags)
        body += data + bytes(raw - len(data))
        offset += raw
        rva = _align(rva + max(len(data), 1), SECTION_ALIGN)
    size_of_image = rva
    cert = b""
    if value.get("signed"):
        blob = b"0\x82" + b"immutools replica stand-in Authenticode signature (not a real signature)".ljust(256, b"\0")
        cert = struct.pack("<IHH", 8 + len(blob), 0x0200, 0x0002) + blob      # WIN_CERTIFICATE, PKCS#7
        cert += bytes(_align(len(cert), 8) - len(cert))
    file_size = headers + len(body)
    dos = bytearray(e_lfanew)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, e_lfanew)
    dos[0x40:0x40 + 39] = b"This program cannot be run in DOS mode."
    coff = struct.pack("<HHIIIHH", machine, nsec, 0, 0, 0, opt_size, 0x0206)
    opt = bytearray(opt_size)
    struct.pack_into("<HBBIII", opt, 0, 0x20B, 2, 40, FILE_ALIGN, len(body) - FILE_ALIGN, 0)
    struct.pack_into("<II", opt, 16, SECTION_ALIGN, SECTION_ALIGN)          # entry point, BaseOfCode
    struct.pack_into("<QII", opt, 24, 0, SECTION_ALIGN, FILE_ALIGN)         # ImageBase, alignments
    struct.pack_into("<HHHHHHI", opt, 40, 0, 0, 0, 0, 0, 0, 0)              # versions, Win32VersionValue
    struct.pack_into("<IIIHH", opt, 56, size_of_image, headers, 0, 10, 0)   # SizeOfImage, headers, checksum, EFI app
    struct.pack_into("<QQQQII", opt, 72, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    if cert:
        struct.pack_into("<II", opt, 112 + 8 * 4, file_size, len(cert))     # data directory 4: certificate table
    out = bytes(dos) + b"PE\0\0" + coff + bytes(opt) + bytes(table)
    out += bytes(headers - len(out))
    return out + bytes(body) + cert


def adv_block(tags: list[tuple[int, bytes]]) -> bytes:
    """One Talos ADV copy (siderolabs/talos@v1.12.0 .../adv/talos/talos.go): BE magic1, (tag, size, value)*, sha256, magic2."""
    buf = bytearray(ADV_BLOCK)
    buf[0:4] = (0x5A4B3C2D).to_bytes(4, "big")
    buf[-4:] = (0xA5B4C3D2).to_bytes(4, "big")
    pos = 4
    for tag, value in tags:
        if pos + 8 + len(value) > ADV_BLOCK - 36:
            raise SpecError("talos_meta: tags do not fit one 256 KiB ADV block")
        buf[pos:pos + 8] = tag.to_bytes(4, "big") + len(value).to_bytes(4, "big")
        buf[pos + 8:pos + 8 + len(value)] = value
        pos += 8 + len(value)
    buf[-36:-4] = hashlib.sha256(bytes(buf)).digest()
    return bytes(buf)


def syslinux_adv(tags: list[tuple[int, bytes]]) -> bytes:
    """One 512-byte syslinux ADV copy: LE magic 0x5a2d2fa5, checksum word, tag/len/value, magic3."""
    buf = bytearray(512)
    buf[0:4] = (0x5A2D2FA5).to_bytes(4, "little")
    buf[508:512] = (0xDD28BF64).to_bytes(4, "little")
    i = 8
    for tag, value in tags:
        if len(value) > 255 or i + 2 + len(value) > 506:
            raise SpecError("talos_meta.legacy: tags do not fit the 512-byte syslinux ADV")
        buf[i], buf[i + 1] = tag, len(value)
        buf[i + 2:i + 2 + len(value)] = value
        i += 2 + len(value)
    total = sum(int.from_bytes(buf[j:j + 4], "little") for j in range(8, 508, 4))
    buf[4:8] = ((0xA3041767 - total) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(buf)


def _tag_list(mapping: dict | None, where: str) -> list[tuple[int, bytes]]:
    return [(parse_int(k, where), str(v).encode()) for k, v in (mapping or {}).items()]


def make_talos_meta(value: dict, where: str) -> bytes:
    size = parse_size(value.get("size", "1 MiB"), f"{where}.talos_meta.size")
    if size < 2 * ADV_BLOCK + 1024:
        raise SpecError(f"{where}.talos_meta.size: at least {2 * ADV_BLOCK + 1024} bytes")
    out = bytearray(size)
    tags = _tag_list(value.get("tags"), f"{where}.talos_meta.tags")
    block = adv_block(tags)
    for copy in value.get("copies", [1, 2]):
        n = parse_int(copy, f"{where}.talos_meta.copies")
        if n not in (1, 2):
            raise SpecError(f"{where}.talos_meta.copies: 1 and/or 2")
        out[(n - 1) * ADV_BLOCK:n * ADV_BLOCK] = block
    for copy in value.get("corrupt", []):
        n = parse_int(copy, f"{where}.talos_meta.corrupt")
        out[(n - 1) * ADV_BLOCK + 16] ^= 0xFF          # inside the first record: checksum no longer matches
    if value.get("legacy"):
        adv = syslinux_adv(_tag_list(value["legacy"], f"{where}.talos_meta.legacy"))
        out[size - 1024:size] = adv + adv
    return bytes(out)
