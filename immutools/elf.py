"""Minimal ELF header reading: which architecture a binary was built for."""

from __future__ import annotations

import struct

# e_machine values (ELF gABI / linux include/uapi/linux/elf-em.h).
_MACHINES = {
    0x3E: "x86_64",
    0xB7: "aarch64",
    0x03: "i386",
    0x28: "arm",
    0xF3: "riscv64",
    0x15: "ppc64",
    0x16: "s390x",
}


def elf_arch(head: bytes) -> str | None:
    """Architecture name from the first 64 bytes of an ELF file, or None if not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    machine = struct.unpack_from(endian + "H", head, 18)[0]
    name = _MACHINES.get(machine)
    if name in ("riscv64", "ppc64") and head[4] != 2:
        return None
    return name
