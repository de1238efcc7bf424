"""PE images on an ESP: Unified Kernel Images (systemd-stub + sections) and kernel image headers.

PE headers and the section table are parsed by ``pefile`` (``fast_load=True``: no directories
beyond what we ask for); we validate every section against the real file size and wrap pefile's
errors. Section semantics follow the UKI specification (uapi-group.org "Unified Kernel Image"):
``.linux``, ``.initrd``, ``.cmdline``, ``.osrel``, ``.uname``, ``.sbat``, ``.splash``, ``.dtb``,
``.pcrsig``, ``.pcrpkey`` and, since systemd 257, ``.profile`` sections that start per-profile
groups overriding the base sections.

A section's payload is ``VirtualSize`` bytes at ``PointerToRawData`` when ``VirtualSize`` is set
and not larger than ``SizeOfRawData`` (objcopy/ukify pad the raw data to the file alignment),
else ``SizeOfRawData``: the same numbers ``objdump -h`` prints.

``kernel_info`` reads version strings from kernel images without running anything:

* x86 bzImage: boot protocol header ``HdrS`` at 0x202, protocol version at 0x206, and
  ``kernel_version`` at 0x20E, a pointer (minus 0x200) to the uname string (Linux
  Documentation/arch/x86/boot.rst);
* arm64 ``Image``: magic ``ARM\\x64`` at 0x38 (Documentation/arch/arm64/booting.rst); the version is
  the ``Linux version ...`` banner in the image;
* EFI zboot (``MZ`` + ``zimg`` at 4, payload offset/size at 8/12, compression name at 24;
  drivers/firmware/efi/libstub/zboot-header.S) and gzip-compressed images: decompressed with the
  bounded decoders of ``immutools.fs.compressed`` and then read as above;
* a UKI: its ``.uname`` section, else its ``.linux``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError, ImmutoolsError, UnsupportedImageError
from immutools.image.source import ByteSource
from immutools.limits import DEFAULT_LIMITS, Limits

MAX_SECTIONS = 1024          # PE allows 65535; real UKIs have ~15 (more with profiles)
MAX_HEADER_BYTES = 1 << 20
TEXT_SECTION_CAP = 1 << 20   # .osrel/.cmdline/.uname/.sbat/.profile are small text
BANNER = b"Linux version "

UKI_TEXT_SECTIONS = (".osrel", ".cmdline", ".uname", ".sbat", ".profile")


def is_pe(head: bytes) -> bool:
    """True when ``head`` (at least 64 bytes, more is better) starts an MZ/PE image."""
    if len(head) < 64 or head[:2] != b"MZ":
        return False
    e_lfanew = struct.unpack_from("<I", head, 0x3C)[0]
    if e_lfanew + 4 <= len(head):
        return head[e_lfanew : e_lfanew + 4] == b"PE\0\0"
    return True   # header further in than we were given: MZ is all we can check


@dataclass
class PeSection:
    name: str
    offset: int          # file offset of the data
    size: int            # payload size (see module docstring)
    virtual_address: int
    virtual_size: int
    raw_size: int


def _header_extent(source: ByteSource) -> int:
    """How many bytes the MZ/PE headers and section table take (before pefile sees them)."""
    head = source.read_at(0, 0x40)
    if len(head) < 0x40 or head[:2] != b"MZ":
        raise UnsupportedImageError(f"{source.name}: not a PE image (no MZ header)")
    e_lfanew = struct.unpack_from("<I", head, 0x3C)[0]
    pe_head = source.read_at(e_lfanew, 24)
    if len(pe_head) < 24 or pe_head[:4] != b"PE\0\0":
        raise UnsupportedImageError(f"{source.name}: not a PE image (no PE signature at {e_lfanew:#x})")
    nsections, = struct.unpack_from("<H", pe_head, 6)
    opt_size, = struct.unpack_from("<H", pe_head, 20)
    if nsections > MAX_SECTIONS:
        raise CorruptDataError(f"{source.name}: PE header declares {nsections} sections")
    extent = e_lfanew + 24 + opt_size + 40 * nsections
    if extent > min(source.size, MAX_HEADER_BYTES):
        raise CorruptDataError(f"{source.name}: PE section table ends at {extent}, beyond the file or header limit")
    return max(extent, 0x400)


def _parse(source: ByteSource):
    import pefile

    extent = _header_extent(source)
    data = source.read_at(0, min(source.size, extent))
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise CorruptDataError(f"{source.name}: bad PE image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pefile raises assorted errors on garbage
        raise CorruptDataError(f"{source.name}: bad PE image: {type(exc).__name__}: {exc}") from None
    return pe


def read_pe_section_list(source: ByteSource, pe=None) -> list[PeSection]:
    """All sections in table order, checked against the file size."""
    pe = pe if pe is not None else _parse(source)
    out = []
    for sec in pe.sections:
        name = sec.Name.rstrip(b"\0").decode("ascii", errors="replace")
        raw_size, vsize, offset = sec.SizeOfRawData, sec.Misc_VirtualSize, sec.PointerToRawData
        size = vsize if 0 < vsize <= raw_size else raw_size
        if size and offset + size > source.size:
            raise CorruptDataError(
                f"{source.name}: PE section {name!r} ({size} bytes at offset {offset}) extends beyond the "
                f"{source.size}-byte file"
            )
        out.append(PeSection(name, offset, size, sec.VirtualAddress, vsize, raw_size))
    return out


def read_pe_sections(source: ByteSource) -> dict[str, tuple[int, int]]:
    """{name: (file offset, size)}; for a repeated name the first one (the UKI base section) wins."""
    out: dict[str, tuple[int, int]] = {}
    for sec in read_pe_section_list(source):
        out.setdefault(sec.name, (sec.offset, sec.size))
    return out


def _signature_size(source: ByteSource, pe) -> int:
    """Size of the Authenticode certificate table (data directory 4), 0 when unsigned."""
    try:
        entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    except (AttributeError, IndexError):
        return 0
    # The security directory holds a file offset, not an RVA.
    if entry.Size and entry.VirtualAddress + entry.Size <= source.size:
        return entry.Size
    return 0


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass
class UkiProfile:
    """One ``.profile`` group of a multi-profile UKI (systemd >= 257)."""

    info: dict[str, str]
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)


class UnifiedKernelImage:
    """A PE image read as a UKI. Works on any PE: ``is_uki`` says whether it has a ``.linux``."""

    def __init__(self, source: ByteSource, limits: Limits = DEFAULT_LIMITS):
        from immutools.osrelease import parse_os_release

        self.source = source
        self.limits = limits
        pe = _parse(source)
        self.section_list = read_pe_section_list(source, pe)
        self.sections: dict[str, tuple[int, int]] = {}
        self.profiles: list[UkiProfile] = []
        current: dict[str, tuple[int, int]] = self.sections
        for sec in self.section_list:
            if sec.name == ".profile":
                prof = UkiProfile(info=parse_os_release(self._read_text_at(sec.offset, sec.size, sec.name)))
                self.profiles.append(prof)
                current = prof.sections
                continue
            current.setdefault(sec.name, (sec.offset, sec.size))
        self.is_uki = ".linux" in self.sections
        self.osrel: dict[str, str] = parse_os_release(self.section_text(".osrel") or "")
        cmdline = self.section_text(".cmdline")
        self.cmdline: str | None = cmdline.strip() if cmdline is not None else None
        uname = self.section_text(".uname")
        self.uname: str | None = uname.strip() if uname is not None else None
        self.sbat: str | None = self.section_text(".sbat")
        self.has_pcrsig = ".pcrsig" in self.sections
        self.has_pcrpkey = ".pcrpkey" in self.sections
        self.has_splash = ".splash" in self.sections
        self.signature_size = _signature_size(source, pe)
        self.signed = self.signature_size > 0

    def _read_text_at(self, offset: int, size: int, name: str) -> str:
        if size > TEXT_SECTION_CAP:
            raise CorruptDataError(f"{self.source.name}: UKI section {name} is {size} bytes, too large for text")
        return _text(self.source.read_exact(offset, size))

    def section_text(self, name: str) -> str | None:
        where = self.sections.get(name)
        if where is None:
            return None
        return self._read_text_at(where[0], where[1], name)

    def section_source(self, name: str) -> ByteSource | None:
        """A zero-copy slice of the image for a section's payload."""
        where = self.sections.get(name)
        if where is None:
            return None
        return self.source.slice(where[0], where[1], name=f"{self.source.name}:{name}")

    @property
    def linux(self) -> ByteSource | None:
        return self.section_source(".linux")

    @property
    def initrd(self) -> ByteSource | None:
        return self.section_source(".initrd")

    def summary(self) -> dict:
        return {
            "is_uki": self.is_uki,
            "sections": [s.name for s in self.section_list],
            "os_release": {k: self.osrel[k] for k in ("ID", "NAME", "VERSION_ID", "PRETTY_NAME") if k in self.osrel},
            "cmdline": self.cmdline,
            "uname": self.uname,
            "signed": self.signed,
            "pcrsig": self.has_pcrsig,
            "pcrpkey": self.has_pcrpkey,
            "profiles": [p.info for p in self.profiles],
        }


# ---- kernel images ---------------------------------------------------------------------------

@dataclass
class KernelInfo:
    format: str                      # bzImage | arm64-image | efi-zboot | uki | compressed | unknown
    version: str | None = None       # `uname -r`, e.g. "6.1.0-56-cloud-amd64"
    version_string: str | None = None  # the full banner / kernel_version string
    details: dict = field(default_factory=dict)


def _version_from_banner(text: str) -> str | None:
    return text.split()[0] if text.split() else None


def _find_banner(source: ByteSource, limit: int) -> str | None:
    """Scan for ``Linux version `` in the first ``limit`` bytes, 4 MiB at a time."""
    step = 4 << 20
    pos = 0
    end = min(source.size, limit)
    while pos < end:
        chunk = source.read_at(pos, min(step + 256, end - pos))
        idx = chunk.find(BANNER)
        if idx >= 0:
            tail = chunk[idx + len(BANNER) : idx + len(BANNER) + 256]
            if len(tail) < 256:
                tail = source.read_at(pos + idx + len(BANNER), 256)
            return _text(tail.split(b"\n", 1)[0])
        pos += step
    return None


def kernel_info(source: ByteSource, limits: Limits = DEFAULT_LIMITS, _depth: int = 0) -> KernelInfo:
    """Kernel format and version string from a kernel image (or a UKI). Never raises on unknown data."""
    head = source.read_at(0, 0x400)
    if len(head) >= 0x210 and head[0x202:0x206] == b"HdrS":
        protocol, = struct.unpack_from("<H", head, 0x206)
        ptr, = struct.unpack_from("<H", head, 0x20E)
        details = {"boot_protocol": f"{protocol >> 8}.{protocol & 0xFF}", "efi_stub": head[:2] == b"MZ",
                   "setup_sects": head[0x1F1]}
        text = None
        if ptr:
            text = _text(source.read_at(ptr + 0x200, 256)) or None
        return KernelInfo("bzImage", _version_from_banner(text) if text else None, text, details)
    if len(head) >= 0x40 and head[0x38:0x3C] == b"ARM\x64":
        text_offset, image_size, flags = struct.unpack_from("<QQQ", head, 8)
        details = {"text_offset": text_offset, "image_size": image_size, "flags": flags, "efi_stub": head[:2] == b"MZ"}
        banner = _find_banner(source, limits.max_nested_bytes)
        return KernelInfo("arm64-image", _version_from_banner(banner) if banner else None, banner, details)
    if _depth >= 2:
        return KernelInfo("unknown")
    if head[:2] == b"MZ" and head[4:8] == b"zimg":
        offset, size = struct.unpack_from("<II", head, 8)
        comp = _text(head[24:56])
        inner = _decompressed_payload(source, offset, size, limits)
        info = kernel_info(inner, limits, _depth + 1) if inner is not None else KernelInfo("unknown")
        return KernelInfo("efi-zboot", info.version, info.version_string,
                          {"compression": comp, "payload_offset": offset, "payload_size": size, "inner": info.format})
    if is_pe(head):
        try:
            uki = UnifiedKernelImage(source, limits)
        except ImmutoolsError:
            return KernelInfo("unknown", details={"pe": True})
        if uki.is_uki:
            inner = kernel_info(uki.linux, limits, _depth + 1)
            version = uki.uname or inner.version
            return KernelInfo("uki", version, inner.version_string,
                              {"linux_format": inner.format, "uname_section": uki.uname is not None})
        return KernelInfo("unknown", details={"pe": True})
    from immutools.fs.compressed import detect_compression

    if detect_compression(head) is not None:
        inner = _decompressed_payload(source, 0, source.size, limits)
        if inner is not None:
            info = kernel_info(inner, limits, _depth + 1)
            return KernelInfo(info.format, info.version, info.version_string,
                              dict(info.details, compression=detect_compression(head)))
    return KernelInfo("unknown")


def _decompressed_payload(source: ByteSource, offset: int, size: int, limits: Limits) -> ByteSource | None:
    """The decoded payload at ``offset`` (streamed: memory up to a small budget, then a sparse
    temporary file), or None when it is not a stream we decode or it breaks a limit."""
    from immutools.fs.compressed import decompress_stream, detect_compression

    if offset >= source.size or size <= 0 or size > limits.max_nested_bytes:
        return None
    payload = source.slice(offset, min(size, source.size - offset), name=f"{source.name}:payload")
    kind = detect_compression(payload.read_at(0, 6))
    if kind is None:
        return None
    try:
        out, _used = decompress_stream(payload, 0, kind, limits.max_nested_bytes, name=f"{source.name}:payload")
    except ImmutoolsError:
        return None
    source.stats.bytes_decompressed += out.size
    return out
