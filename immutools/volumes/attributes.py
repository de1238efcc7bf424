"""Decode the 64-bit GPT partition attribute field.

Our own code: no library decodes the type-specific bits (48-63) the image-based OSes use.

Bit meanings (upstream sources; docs/sources.md lists the commits read):
  0 required, 1 no_block_io, 2 legacy_bios_bootable     UEFI spec §5.3.3; Flatcar's cgpt -B1
                                                         (flatcar/scripts build_library/disk_util)
  48-51 priority, 52-55 tries, 56 successful            ChromeOS cgptlib (coreboot/vboot and
                                                         flatcar/seismograph src/firmware/lib/
                                                         cgptlib/include/cgptlib_internal.h), used
                                                         by Flatcar, Bottlerocket (twoliter
                                                         rpm2img, core-kit grub gptprio patch) and
                                                         COS (cos-customizer disk_layout.go)
  57 bottlerocket_booted                                 Bottlerocket PRIVATE "boot has ever
                                                         succeeded" (bottlerocket-core-kit
                                                         sources/updater/signpost)
  59 grow_fs, 60 read_only, 63 no_auto                   Discoverable Partitions Specification,
                                                         "Partition Attribute Flags"

Bits 48-63 are type-specific, so the A/B fields are always decoded but ``ab_semantics`` says
whether the partition type (``ab: true`` in data/partition_types.yaml) gives them that meaning.
"""

from __future__ import annotations

_NAMED_FLAGS = {
    0: "required",
    1: "no_block_io",
    2: "legacy_bios_bootable",
    56: "successful",
    57: "bottlerocket_booted",
    59: "grow_fs",
    60: "read_only",
    63: "no_auto",
}
_PRIORITY_SHIFT = 48
_TRIES_SHIFT = 52
_NIBBLE = 0xF
_NAMED_BITS = set(_NAMED_FLAGS) | set(range(_PRIORITY_SHIFT, _TRIES_SHIFT + 4))


def decode_attributes(value: int, ab_semantics: bool = False) -> dict:
    """64-bit attribute field -> dict of named flags, the A/B fields and any other set bits."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"attribute value {value!r} is not a 64-bit unsigned integer")
    out: dict = {"raw": f"0x{value:016x}"}
    for bit, name in _NAMED_FLAGS.items():
        out[name] = bool(value >> bit & 1)
    out["priority"] = value >> _PRIORITY_SHIFT & _NIBBLE
    out["tries"] = value >> _TRIES_SHIFT & _NIBBLE
    out["ab_semantics"] = bool(ab_semantics)
    out["other_bits"] = [bit for bit in range(64) if value >> bit & 1 and bit not in _NAMED_BITS]
    return out

