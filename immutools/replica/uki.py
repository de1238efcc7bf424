"""Unified Kernel Images for replicas, made the classic way: ``objcopy --add-section`` onto the real
systemd-stub of the build host (Debian package ``systemd-boot-efi``).

Entry kind ``uki:`` (registered in ``immutools.replica.kinds``)::

    uki:
      stub: /usr/lib/systemd/boot/efi/linuxx64.efi.stub     # default: the x86-64 stub
      sections:                                            # in order; each value is a file entry
        .osrel: {text: "ID=..."}
        .cmdline: {text: "usrhash={{computed.usr_a.verity.root_hash}} ..."}
        .uname: {text: "6.12.9"}
        .linux: {kernel: {arch: x86_64, version: 6.12.9}}
        .initrd: {text: "..."}

Section VMAs follow the recipe in the systemd-stub documentation: after the stub's last section,
each section page-aligned after the previous one (``--change-section-vma``). The result is what
``objdump -h`` and ``ukify inspect`` read as a UKI.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from immutools.replica.context import BuildError, SpecError, which
from immutools.replica.kinds import entry_bytes, register

DEFAULT_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
UKI_SECTIONS = (".osrel", ".cmdline", ".uname", ".linux", ".initrd", ".splash", ".dtb", ".sbat", ".pcrpkey", ".pcrsig")
_PAGE = 0x1000


def _stub_end(stub: Path, where: str) -> int:
    """The first page after the stub's sections (their virtual extent), read with pefile."""
    import pefile

    try:
        pe = pefile.PE(str(stub), fast_load=True)
    except pefile.PEFormatError as exc:
        raise SpecError(f"{where}.stub: {stub}: not a PE image: {exc}") from None
    end = max((s.VirtualAddress + max(s.Misc_VirtualSize, s.SizeOfRawData) for s in pe.sections), default=0)
    pe.close()
    return (end + _PAGE - 1) // _PAGE * _PAGE


@register("uki")
def uki_entry(build, value, entry, ctx, where) -> bytes:
    return uki_bytes(build, value, ctx, f"{where}.uki")


def uki_bytes(build, spec: dict, ctx: dict, where: str) -> bytes:
    if not isinstance(spec, dict) or not isinstance(spec.get("sections"), dict) or not spec["sections"]:
        raise SpecError(f"{where}: {{stub: PATH, sections: {{.osrel: <entry>, .linux: <entry>, ...}}}}")
    stub = Path(str(spec.get("stub") or DEFAULT_STUB))
    if not stub.exists():
        raise BuildError(f"{where}: {stub} is missing (Debian package systemd-boot-efi)")
    if which("objcopy") is None:
        raise BuildError(f"{where}: objcopy is not installed (binutils)")
    vma = _stub_end(stub, where)
    cmd = ["objcopy"]
    files = []
    for name, entry in spec["sections"].items():
        if name not in UKI_SECTIONS:
            raise SpecError(f"{where}.sections: {name!r} is not a UKI section ({', '.join(UKI_SECTIONS)})")
        data = entry_bytes(build, entry, ctx, f"{where}.sections.{name}")
        path = build.tmp(f"uki{name}")
        path.write_bytes(data)
        files.append(path)
        cmd += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
        vma = (vma + max(len(data), 1) + _PAGE - 1) // _PAGE * _PAGE
    out = build.tmp("uki.efi")
    cmd += [str(stub), str(out)]
    build.runner.log.append(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, env=build.runner.env(f"{where}:objcopy"))
    if proc.returncode != 0:
        raise BuildError(f"{where}: {' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")
    data = out.read_bytes()
    for path in files + [out]:
        path.unlink()
    return data
