"""Talos Linux META partition: the key/value store ("ADV") Talos keeps in a 1 MiB raw partition.

Our own decoder: the format is Talos's own and no library reads it outside the Talos Go tree.
Layout (siderolabs/talos@v1.12.0 internal/pkg/meta/internal/adv/talos/talos.go,
…/adv/syslinux/syslinux.go; reading order in internal/pkg/meta/meta.go):

* **Talos ADV**: a 256 KiB block written twice back to back at offset 0. Big-endian:
  ``u32 magic1 0x5a4b3c2d``, then records ``u32 tag, u32 size, value`` packed until tag 0 or until
  fewer than 8 bytes remain; the last 36 bytes are the SHA-256 of the whole block computed with
  that checksum field zeroed, then ``u32 magic2 0xa5b4c3d2``. Talos reads copy 1 and, only if it
  fails its magics or checksum, copy 2. A tag is stored as u32 but kept as a byte (``Tag uint8``),
  so 0x106 means tag 6; a later record with the same tag replaces the earlier one.
* **Legacy syslinux ADV**: the last 1024 bytes of the partition are two 512-byte copies,
  little-endian ``magic1 0x5a2d2fa5``, a checksum word making the words of bytes 8..507 sum to
  ``0xa3041767``, ``magic3 0xdd28bf64`` at byte 508; data = 1-byte tag, 1-byte length, value.
  Talos consults it only for tags the Talos ADV lacks, and only its first copy.

Everything is bounded by the block sizes (at most the first MiB and the last KiB are read, whatever
size the partition claims); a damaged copy is reported, never raised.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError
from immutools.image.source import ByteSource

META_SIZE = 1024 * 1024                 # Talos only accepts a META partition of exactly 1 MiB
BLOCK = 256 * 1024                      # talos.go Length
CHECKSUM_FIELD = 36                     # sha256 + magic2 at the end of a block
MAGIC1 = 0x5A4B3C2D
MAGIC2 = 0xA5B4C3D2
SYSLINUX_SIZE = 512                     # syslinux.go AdvSize, two copies at the end of the partition
SYSLINUX_MAGIC1 = 0x5A2D2FA5
SYSLINUX_MAGIC2 = 0xA3041767            # the checksum target
SYSLINUX_MAGIC3 = 0xDD28BF64

# Known tags (pkg/machinery/meta/constants.go; 0 ends the list, 1-5 reserved in adv.go).
TAG_NAMES = {
    6: "Upgrade",
    7: "StagedUpgradeImageRef",
    8: "StagedUpgradeInstallOptions",
    9: "StateEncryptionConfig",
    10: "MetalNetworkPlatformConfig",
    11: "DownloadURLCode",
    12: "UserReserved1",
    13: "UserReserved2",
    14: "UserReserved3",
    15: "UUIDOverride",
    16: "UniqueMachineToken",
    17: "DiskImageBootloader",
    18: "StagedWipeSelectors",
}
RESERVED_TAGS = {1, 2, 3, 4, 5}


def tag_name(tag: int) -> str:
    if tag in TAG_NAMES:
        return TAG_NAMES[tag]
    return "Reserved" if tag in RESERVED_TAGS else f"unknown-{tag}"


@dataclass
class AdvCopy:
    """One copy of the Talos ADV block (or one syslinux copy)."""

    index: int                          # 1 or 2
    offset: int                         # byte offset in the partition
    state: str                          # valid | empty | bad-magic | bad-checksum | damaged | truncated
    detail: str | None = None
    checksum: str | None = None         # hex as stored
    tags: dict[int, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.state == "valid"

    def to_dict(self) -> dict:
        return {"copy": self.index, "offset": self.offset, "state": self.state, "detail": self.detail,
                "checksum": self.checksum, "tags": sorted(self.tags), "notes": list(self.notes)}


@dataclass
class TalosMeta:
    size: int
    copies: list[AdvCopy]
    legacy: AdvCopy | None
    selected: int | None                # which Talos copy Talos itself would use (1, 2) or None
    tags: dict[int, bytes]              # what Talos reads: the selected copy, then legacy for missing tags
    tag_source: dict[int, str]          # tag -> "talos copy 1" | "talos copy 2" | "syslinux ADV"
    copies_identical: bool | None       # both Talos copies valid and byte-identical
    copies_agree: bool | None           # both valid and with the same tags and values
    all_zero: bool = False

    @property
    def empty(self) -> bool:
        return not self.tags

    def value_text(self, tag: int) -> str | None:
        raw = self.tags.get(tag)
        return None if raw is None else raw.decode("utf-8", "replace")

    def to_dict(self, max_value: int = 4096) -> dict:
        return {
            "size": self.size,
            "exact_size": self.size == META_SIZE,
            "all_zero": self.all_zero,
            "format": "talos-adv" if any(c.state != "empty" for c in self.copies) else ("syslinux-adv" if self.legacy and self.legacy.valid else None),
            "selected_copy": self.selected,
            "copies": [c.to_dict() for c in self.copies],
            "copies_identical": self.copies_identical,
            "copies_agree": self.copies_agree,
            "legacy": self.legacy.to_dict() if self.legacy else None,
            "tags": [
                {"tag": t, "name": tag_name(t), "source": self.tag_source.get(t),
                 "value": _printable(v, max_value), "size": len(v)}
                for t, v in sorted(self.tags.items())
            ],
        }


def _printable(value: bytes, cap: int) -> str:
    text = value[:cap].decode("utf-8", "replace")
    return text + ("…" if len(value) > cap else "")


def decode_block(block: bytes, index: int = 1, offset: int = 0) -> AdvCopy:
    """Decode one 256 KiB Talos ADV block."""
    if len(block) < BLOCK:
        return AdvCopy(index, offset, "truncated", f"{len(block)} of {BLOCK} bytes present")
    if not any(block):
        return AdvCopy(index, offset, "empty", "all zero (no ADV written yet)")
    magic1, = struct.unpack_from(">I", block, 0)
    magic2, = struct.unpack_from(">I", block, BLOCK - 4)
    if magic1 != MAGIC1 or magic2 != MAGIC2:
        return AdvCopy(index, offset, "bad-magic", f"magic1 {magic1:#010x}, magic2 {magic2:#010x}")
    stored = block[BLOCK - CHECKSUM_FIELD:BLOCK - 4]
    digest = hashlib.sha256(block[:BLOCK - CHECKSUM_FIELD] + bytes(32) + block[BLOCK - 4:]).digest()
    copy = AdvCopy(index, offset, "valid", checksum=stored.hex())
    if digest != stored:
        copy.state, copy.detail = "bad-checksum", f"stored {stored.hex()[:16]}…, computed {digest.hex()[:16]}…"
        return copy
    data = memoryview(block)[4:BLOCK - CHECKSUM_FIELD]
    pos = 0
    while len(data) - pos >= 8:
        tag, size = struct.unpack_from(">II", data, pos)
        if tag == 0:
            break
        if size > len(data) - pos - 8:
            # talos.go rejects the copy: value goes beyond the end of the buffer
            copy.state, copy.detail = "damaged", f"tag {tag} at offset {4 + pos} declares {size} bytes past the block"
            copy.tags = {}
            return copy
        key = tag & 0xFF
        if key != tag:
            copy.notes.append(f"tag {tag} stored as u32, read as {key} (Talos keeps one byte)")
        if key in copy.tags:
            copy.notes.append(f"tag {key} appears twice; the later value wins")
        copy.tags[key] = bytes(data[pos + 8:pos + 8 + size])
        pos += 8 + size
    return copy


def decode_syslinux(block: bytes, index: int = 1, offset: int = 0) -> AdvCopy:
    """Decode one 512-byte syslinux ADV copy (tags as Talos's ``ReadTagBytes`` walks them)."""
    if len(block) < SYSLINUX_SIZE:
        return AdvCopy(index, offset, "truncated", f"{len(block)} of {SYSLINUX_SIZE} bytes present")
    if not any(block):
        return AdvCopy(index, offset, "empty", "all zero")
    head, csum = struct.unpack_from("<II", block, 0)
    tail, = struct.unpack_from("<I", block, SYSLINUX_SIZE - 4)
    if head != SYSLINUX_MAGIC1 or tail != SYSLINUX_MAGIC3:
        return AdvCopy(index, offset, "bad-magic", f"magic1 {head:#010x}, magic3 {tail:#010x}")
    total = sum(struct.unpack_from(f"<{(SYSLINUX_SIZE - 12) // 4}I", block, 8)) + csum
    copy = AdvCopy(index, offset, "valid", checksum=f"{csum:08x}")
    if total & 0xFFFFFFFF != SYSLINUX_MAGIC2:
        copy.state, copy.detail = "bad-checksum", "words do not sum to 0xa3041767"
    i = 8
    while i < SYSLINUX_SIZE - 4 - 2:
        tag, size = block[i], block[i + 1]
        if tag == 0:
            break
        if i + 2 + size > SYSLINUX_SIZE - 4:
            copy.notes.append(f"tag {tag} at offset {i} runs past the data area")
            break
        copy.tags.setdefault(tag, bytes(block[i + 2:i + 2 + size]))   # ReadTag returns the first match
        i += 2 + size
    return copy


def read_meta(source: ByteSource) -> TalosMeta:
    """Decode a META partition. Raises CorruptDataError only when the partition is too small to
    hold even one ADV block; everything else is reported in the result."""
    size = source.size
    if size < BLOCK:
        raise CorruptDataError(f"{source.name}: {size} bytes is too small for a Talos META partition")
    first = source.read_at(0, BLOCK)
    second = source.read_at(BLOCK, BLOCK) if size >= 2 * BLOCK else b""
    copies = [decode_block(first, 1, 0), decode_block(second, 2, BLOCK)]
    legacy = None
    if size >= 2 * SYSLINUX_SIZE:
        tail = source.read_at(size - 2 * SYSLINUX_SIZE, 2 * SYSLINUX_SIZE)
        legacy = decode_syslinux(tail[:SYSLINUX_SIZE], 1, size - 2 * SYSLINUX_SIZE)
    selected = next((c.index for c in copies if c.valid), None)
    tags: dict[int, bytes] = {}
    source_of: dict[int, str] = {}
    if selected is not None:
        for t, v in copies[selected - 1].tags.items():
            tags[t], source_of[t] = v, f"talos copy {selected}"
    # meta.go ReadTag: the Talos ADV first, then the syslinux one. Only a valid legacy copy counts:
    # Talos does not verify it, but an invalid one on a fresh disk is just zeros.
    if legacy is not None and legacy.state in ("valid", "bad-checksum"):
        for t, v in legacy.tags.items():
            if t not in tags:
                tags[t], source_of[t] = v, "syslinux ADV"
    identical = agree = None
    if copies[0].valid and copies[1].valid:
        identical = first == second
        agree = copies[0].tags == copies[1].tags
    all_zero = not any(first) and not any(second) and (legacy is None or legacy.state == "empty")
    if all_zero and size > 2 * BLOCK:
        # Talos only uses the first META_SIZE bytes (and the legacy ADV at the end, read above): a
        # partition that claims terabytes must not be read to the end.
        all_zero = _all_zero(source, 2 * BLOCK, min(size, META_SIZE))
    return TalosMeta(size, copies, legacy, selected, tags, source_of, identical, agree, all_zero)


def _all_zero(source: ByteSource, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        chunk = source.read_at(pos, min(BLOCK, end - pos))
        if not chunk or any(chunk):
            return False
        pos += len(chunk)
    return True

