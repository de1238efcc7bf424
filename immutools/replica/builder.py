"""Build a replica disk image from a spec, with the real Debian tools, unprivileged, without mounts.

Order of work (content that depends on computed values comes last):

1. every partition's content is made in its own sparse temporary file, in dependency order: data
   filesystems first, then dm-verity (root hash captured), then partitions whose files use
   ``{{computed.…}}`` values (e.g. the ESP's ``flatcar/vmlinuz-a`` carrying the USR-A root hash);
2. the disk: a sparse file of the exact size, the GPT written by ``sgdisk`` (exact numbers, starts,
   sizes, type and unique GUIDs, labels, attribute bits, disk GUID), an MBR written here when the
   spec asks for cgpt's protective/hybrid bytes or a plain MBR table;
3. partition contents copied in at their offsets, holes kept;
4. the shipped forms (bz2, qcow2, …) and ``<image>.manifest.json``.

Reproducibility: every tool runs with ``SOURCE_DATE_EPOCH``/``E2FSPROGS_FAKE_TIME`` and, when a C
compiler is present, the ``reproshim.c`` preload (fixed clock, fixed stat times, deterministic
UUIDs, owners from the spec). Two builds of one spec are then byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from immutools.paths import cache_dir
from immutools.replica import BUILDER_VERSION
from immutools.replica.bootassets import EXTRA_ENTRY_KINDS
from immutools.replica.spec import (
    FS_TYPES,
    Partition,
    Spec,
    SpecError,
    load_spec,
    parse_guid,
    parse_int,
    parse_mode,
    parse_size,
    references,
    render,
)

PROVENANCE_FILE = "immutools-replica.json"
DEFAULT_EPOCH = 1700000000
CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(RuntimeError):
    """A tool failed or the spec asked for something the tools cannot make."""


# ------------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------------

def which(tool: str) -> str | None:
    return shutil.which(tool, path=TOOL_PATH + ":" + os.environ.get("PATH", ""))


def shim_path() -> Path | None:
    """Compile (once, cached by source hash) the reproducibility preload; None without a C compiler."""
    src = Path(__file__).with_name("reproshim.c")
    cc = which("cc") or which("gcc")
    if cc is None or not src.exists():
        return None
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "replica-shim" / f"reproshim-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src), "-ldl", "-lpthread"], capture_output=True)
    if proc.returncode != 0:
        return None
    os.replace(tmp, out)
    return out


@dataclass
class Runner:
    epoch: int
    seed: str
    shim: Path | None
    owners_file: Path | None = None
    log: list[str] = field(default_factory=list)

    def env(self, step: str) -> dict:
        env = dict(os.environ)
        env.update(
            SOURCE_DATE_EPOCH=str(self.epoch), E2FSPROGS_FAKE_TIME=str(self.epoch), LC_ALL="C", TZ="UTC",
            MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0", PATH=TOOL_PATH + ":" + env.get("PATH", ""),
        )
        if self.shim:
            env["LD_PRELOAD"] = str(self.shim)
            env["IMMUTOOLS_SHIM_EPOCH"] = str(self.epoch)
            env["IMMUTOOLS_SHIM_SEED"] = f"{self.seed}/{step}"
            if self.owners_file:
                env["IMMUTOOLS_SHIM_OWNERS"] = str(self.owners_file)
        return env

    def run(self, cmd: list, step: str, *, stdin=None, stdout=None, input: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [str(c) for c in cmd]
        if which(cmd[0]) is None:
            raise BuildError(f"{step}: {cmd[0]} is not installed")
        self.log.append(" ".join(cmd))
        proc = subprocess.run(cmd, env=self.env(step), stdin=stdin, input=input,
                              stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=cwd)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise BuildError(f"{step}: {' '.join(cmd)} failed ({proc.returncode}): {err}")
        return proc


# ------------------------------------------------------------------------------------------------
# Sparse file helpers
# ------------------------------------------------------------------------------------------------

def data_extents(fd: int, size: int):
    """(offset, length) of the data regions of a file, by SEEK_DATA/SEEK_HOLE (whole file if unsupported)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, size)
        if end > start:
            yield start, end - start
        pos = end


def sparse_copy(src: Path, dst_fd: int, offset: int, limit: int | None = None) -> int:
    """Copy ``src`` into ``dst_fd`` at ``offset``; holes and all-zero chunks are skipped. Returns bytes written."""
    written = 0
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None:
            size = min(size, limit)
        for start, length in list(data_extents(f.fileno(), size)):
            pos = start
            while pos < start + length:
                n = min(CHUNK, start + length - pos)
                chunk = os.pread(f.fileno(), n, pos)
                if chunk != ZERO_CHUNK[: len(chunk)]:
                    os.pwrite(dst_fd, chunk, offset + pos)
                    written += len(chunk)
                pos += n
    return written


def sparse_stream(path: Path):
    """Yield the file's bytes in order, making holes from memory instead of reading them."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        for start, length in list(data_extents(f.fileno(), size)) + [(size, 0)]:
            while pos < start:
                n = min(CHUNK, start - pos)
                yield ZERO_CHUNK[:n]
                pos += n
            while pos < start + length:
                n = min(CHUNK, start + length - pos)
                yield os.pread(f.fileno(), n, pos)
                pos += n


def sparse_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for chunk in sparse_stream(path):
        h.update(chunk)
    return h.hexdigest()


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# ------------------------------------------------------------------------------------------------
# Generated file contents
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


def compress_bytes(data: bytes, how: str | None) -> bytes:
    if not how:
        return data
    if how == "xz":
        # Kernel modules use xz with CRC32 checks (the kernel's decompressor lacks CRC64).
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data)
    raise SpecError(f"compress: {how!r}")


# ------------------------------------------------------------------------------------------------
# Build state
# ------------------------------------------------------------------------------------------------

@dataclass
class Build:
    spec: Spec
    out_dir: Path
    work: Path
    runner: Runner
    epoch: int
    context: dict
    computed: dict = field(default_factory=dict)
    limitations: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    owners: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)   # (dev, ino) -> uid, gid, ino
    tree_keys: dict[Path, list[tuple[int, int]]] = field(default_factory=dict)
    counter: int = 0

    def tmp(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{self.counter:03d}-{stem}"

    def limit(self, text: str) -> None:
        if text not in self.limitations:
            self.limitations.append(text)

    def ctx(self, extra: dict | None = None) -> dict:
        c = dict(self.context)
        c["computed"] = self.computed
        if extra:
            c.update(extra)
        return c

    def flush_owners(self) -> None:
        if self.runner.owners_file:
            with open(self.runner.owners_file, "w") as f:
                for (dev, ino), (uid, gid, new_ino) in self.owners.items():
                    f.write(f"{dev} {ino} {uid} {gid} {new_ino}\n")

    def remove_tree(self, root: Path) -> None:
        """Delete a staging tree and forget its owners (its inode numbers will be reused)."""
        for key in self.tree_keys.pop(root, []):
            self.owners.pop(key, None)
        shutil.rmtree(root)
        self.flush_owners()


# ------------------------------------------------------------------------------------------------
# Staging a file tree
# ------------------------------------------------------------------------------------------------

def entry_bytes(build: Build, entry: dict, ctx: dict, where: str) -> bytes:
    """The content of a regular-file entry (already rendered)."""
    if "text" in entry:
        data = str(entry["text"]).encode()
    elif "hex" in entry:
        try:
            data = bytes.fromhex(re.sub(r"\s+", "", str(entry["hex"])))
        except ValueError:
            raise SpecError(f"{where}.hex: not hex") from None
    elif "zeros" in entry:
        data = bytes(parse_size(entry["zeros"], f"{where}.zeros"))
    elif "elf" in entry:
        data = elf_stub(entry["elf"], f"{where}.elf")
    elif "kernel" in entry:
        data = kernel_stub(entry["kernel"], f"{where}.kernel")
    elif "pe" in entry:
        data = pe_stub(entry["pe"], f"{where}.pe")
    elif "tar" in entry:
        data = make_tar(build, entry["tar"], ctx, where)
    elif "image" in entry:
        data = make_nested_image(build, entry["image"], ctx, where)
    elif "uki" in entry:
        from immutools.replica.uki import uki_bytes

        data = uki_bytes(build, entry["uki"], ctx, f"{where}.uki")
    elif "bootconfig" in entry:
        from immutools.replica.bottlerocket import bootconfig_bytes

        data = bootconfig_bytes(str(entry["bootconfig"]))
    elif any(kind in entry for kind in EXTRA_ENTRY_KINDS):
        from immutools.replica.bootassets import extra_entry_bytes

        data = extra_entry_bytes(build, entry, ctx, where)
    elif "copy" in entry:
        src = Path(str(entry["copy"]))
        if not src.is_absolute():
            src = build.spec.path.parent / src
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise SpecError(f"{where}.copy: {src}: {exc.strerror}") from None
    else:
        raise SpecError(f"{where}: not a regular file entry")
    return compress_bytes(data, entry.get("compress"))


def make_tar(build: Build, members: dict, ctx: dict, where: str) -> bytes:
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


def make_nested_image(build: Build, img: dict, ctx: dict, where: str) -> bytes:
    """A filesystem image file inside a tree (e.g. a squashfs sysext)."""
    out = build.tmp("nested.img")
    size = parse_size(img["size"], f"{where}.image.size") if "size" in img else None
    make_filesystem(build, img, ctx, out, size, f"{where}.image")
    data = out.read_bytes()
    out.unlink()
    return data


def stage_tree(build: Build, tree_name: str | None, ctx: dict, where: str, extra_files: dict | None = None) -> Path:
    """Write the tree's entries under a fresh staging directory; record owners for the shim.

    ``extra_files`` are added as given (not template-rendered): the builder's own files such as the
    provenance record."""
    root = build.tmp("tree")
    root.mkdir()
    rendered: list[tuple[str, dict, str]] = []
    if tree_name is not None:
        tree = build.spec.trees.get(tree_name)
        if tree is None:
            raise SpecError(f"{where}.tree: no tree {tree_name!r}")
        for raw_path, raw_entry in tree.items():
            ew = f"{where}: trees.{tree_name}.{raw_path!r}"
            rendered.append((render(str(raw_path), ctx, ew).strip("/"), render(raw_entry, ctx, ew), ew))
    for raw_path, raw_entry in (extra_files or {}).items():
        rendered.append((raw_path.strip("/"), raw_entry, f"{where}: {raw_path!r}"))
    # path -> (mode or None for symlinks, uid, gid); explicit entries override implied parents.
    fixups: dict[Path, tuple[int | None, int, int]] = {root: (0o755, 0, 0)}
    seen: set[str] = set()
    rendered.sort(key=lambda r: r[0])
    for path, entry, ew in rendered:
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise SpecError(f"{ew}: bad path {path!r}")
        if path in seen:
            raise SpecError(f"{ew}: {path!r} listed twice (after rendering)")
        seen.add(path)
        target = root / path
        for parent in reversed(target.parents):
            if parent == root or root not in parent.parents:
                continue
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise SpecError(f"{ew}: parent {parent.relative_to(root)} is not a directory")
            if not parent.exists():
                parent.mkdir()
                fixups[parent] = (0o755, 0, 0)
        uid = parse_int(entry.get("uid", 0), f"{ew}.uid")
        gid = parse_int(entry.get("gid", 0), f"{ew}.gid")
        if "dir" in entry:
            target.mkdir(exist_ok=True)
            fixups[target] = (parse_mode(entry.get("mode", "0755"), f"{ew}.mode"), uid, gid)
        elif "symlink" in entry:
            if target.exists() or target.is_symlink():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            os.symlink(str(entry["symlink"]), target)
            fixups[target] = (None, uid, gid)
        else:
            if target.exists():
                raise SpecError(f"{ew}: {path!r} already exists (as an implied directory?)")
            target.write_bytes(entry_bytes(build, entry, ctx, ew))
            fixups[target] = (parse_mode(entry.get("mode", "0644"), f"{ew}.mode"), uid, gid)
    am_root = os.geteuid() == 0
    # Inode numbers the tools see: 256 for the root, then 257... in path order, as a fresh filesystem
    # filled in that order would have them.
    new_ino = {path: 256 + i for i, path in enumerate(sorted(fixups, key=lambda p: p.parts))}
    # Deepest first, so a directory's mode (e.g. 0700) is set after its contents are written.
    for path in sorted(fixups, key=lambda p: -len(p.parts)):
        mode, uid, gid = fixups[path]
        if am_root:
            os.lchown(path, uid, gid)
        if mode is not None:
            os.chmod(path, mode)
        os.utime(path, (build.epoch, build.epoch), follow_symlinks=False)
        st = os.lstat(path)
        build.owners[(st.st_dev, st.st_ino)] = (uid, gid, new_ino[path])
        build.tree_keys.setdefault(root, []).append((st.st_dev, st.st_ino))
    build.flush_owners()
    return root


# ------------------------------------------------------------------------------------------------
# Filesystems
# ------------------------------------------------------------------------------------------------

def _truncate(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def make_filesystem(build: Build, content: dict, ctx: dict, out: Path, size: int | None, where: str,
                    extra_files: dict | None = None) -> dict:
    """Make the filesystem ``content`` describes in ``out`` (``size`` bytes if given); return facts."""
    content = render(content, ctx, where)
    ftype = content["type"]
    if "size" in content:
        size = parse_size(content["size"], f"{where}.size")
    staging = None
    if content.get("tree") is not None or extra_files:
        staging = stage_tree(build, content.get("tree"), ctx, where, extra_files)
    if content.get("ostree"):
        from immutools.replica.ostree import stage_sysroot_part

        staging = stage_sysroot_part(build, content["ostree"], ctx, where, staging, ftype)
    step = f"{where}:{ftype}"
    r = build.runner
    opts = [str(o) for o in content.get("options") or []]
    facts: dict = {"type": ftype}
    if ftype == "vfat":
        if size is None:
            raise SpecError(f"{where}: vfat needs a size")
        _truncate(out, size)
        cmd = ["mkfs.vfat", "-F", str(content.get("fat_bits", 32))]
        if content.get("label"):
            cmd += ["-n", content["label"]]
        if content.get("serial"):
            cmd += ["-i", str(content["serial"])]
        r.run(cmd + opts + [out], step)
        if staging is not None:
            for p in staging.rglob("*"):
                if p.is_symlink():
                    raise SpecError(f"{where}: vfat cannot hold the symlink {p.relative_to(staging)}")
            tops = sorted(staging.iterdir())
            if tops:
                r.run(["mcopy", "-s", "-p", "-m", "-Q", "-i", out, *tops, "::/"], step)
        facts.update(label=content.get("label"), serial=content.get("serial"))
    elif ftype in ("ext2", "ext3", "ext4"):
        if size is None:
            raise SpecError(f"{where}: {ftype} needs a size")
        bs = parse_int(content.get("block_size", 4096), f"{where}.block_size")
        _truncate(out, size)
        cmd = ["mke2fs", "-q", "-F", "-t", ftype, "-b", bs]
        if "inode_ratio" in content:
            cmd += ["-i", parse_int(content["inode_ratio"], f"{where}.inode_ratio")]
        if "inode_size" in content:
            cmd += ["-I", parse_int(content["inode_size"], f"{where}.inode_size")]
        if "reserved_percent" in content:
            cmd += ["-m", content["reserved_percent"]]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-U", content["uuid"]]
        if content.get("features"):
            cmd += ["-O", ",".join(content["features"]) if isinstance(content["features"], list) else content["features"]]
        ext = ["root_owner=0:0"]
        if content.get("hash_seed"):
            ext.append(f"hash_seed={content['hash_seed']}")
        ext += [str(x) for x in content.get("extended") or []]
        cmd += ["-E", ",".join(ext)]
        if staging is not None:
            cmd += ["-d", staging]
        r.run(cmd + opts + [out, size // bs], step)
        for args in content.get("tune2fs") or []:
            r.run(["tune2fs", *[str(a) for a in args], out], step + ":tune2fs")
        if content.get("shrink"):
            from immutools.replica.bottlerocket import shrink_ext

            facts.update(shrink_ext(r, out, step))
        if content.get("ro_compat_hack"):
            ext_ro_compat_hack(out)
            facts["ro_compat_hack"] = True
    elif ftype == "btrfs":
        if size is None:
            raise SpecError(f"{where}: btrfs needs a size")
        if not out.exists() or out.stat().st_size < size:
            _truncate(out, size)
        cmd = ["mkfs.btrfs", "-q", "-f", "-K", "-b", size]
        if content.get("mixed", False):
            cmd.append("--mixed")
        if content.get("metadata"):
            cmd += ["-m", content["metadata"]]
        if content.get("data"):
            cmd += ["-d", content["data"]]
        if content.get("nodesize"):
            cmd += ["-n", content["nodesize"]]
        if content.get("sectorsize"):
            cmd += ["-s", content["sectorsize"]]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-U", content["uuid"]]
        if staging is not None:
            cmd += ["-r", staging]
        r.run(cmd + opts + [out], step)
        facts["properties_not_set"] = dict(content.get("properties") or {})
    elif ftype == "xfs":
        if size is None:
            raise SpecError(f"{where}: xfs needs a size")
        _truncate(out, size)
        cmd = ["mkfs.xfs", "-q", "-f"]
        if content.get("label"):
            cmd += ["-L", content["label"]]
        if content.get("uuid"):
            cmd += ["-m", f"uuid={content['uuid']}"]
        sticky: list[tuple[str, int]] = []
        if staging is not None:
            proto = build.tmp("xfs.proto")
            proto.write_text(xfs_protofile(staging, where, build.owners, sticky))
            cmd += ["-p", proto]
        r.run(cmd + opts + [out], step)
        for rel, mode in sticky:
            # protofiles have no sticky bit: set the full mode with xfs_db (expert mode, an image file)
            r.run(["xfs_db", "-x", "-c", f"path /{rel}", "-c", f"write core.mode 0{mode:o}", out], step + ":sticky")
    elif ftype == "squashfs":
        if staging is None:
            staging = stage_tree(build, None, ctx, where)
        if out.exists():
            out.unlink()
        # SOURCE_DATE_EPOCH (set by the runner) fixes the mkfs time and every inode time; mksquashfs
        # refuses -mkfs-time/-all-time when it is set.
        cmd = ["mksquashfs", staging, out, "-noappend", "-no-progress", "-quiet"]
        if content.get("comp"):
            cmd += ["-comp", content["comp"]]
        if content.get("block_size"):
            cmd += ["-b", content["block_size"]]
        r.run(cmd + opts, step)
        if size is not None:
            if out.stat().st_size > size:
                raise BuildError(f"{where}: squashfs is {out.stat().st_size} bytes, more than the {size} available")
    elif ftype == "erofs":
        if staging is None:
            staging = stage_tree(build, None, ctx, where)
        if out.exists():
            out.unlink()
        cmd = ["mkfs.erofs", f"-T{build.epoch}"]
        if content.get("compress"):
            cmd.append(f"-z{content['compress']}")
        if content.get("uuid"):
            cmd.append(f"-U{content['uuid']}")
        r.run(cmd + opts + [out, staging], step)
        if size is not None and out.stat().st_size > size:
            raise BuildError(f"{where}: erofs is {out.stat().st_size} bytes, more than the {size} available")
    else:
        raise SpecError(f"{where}: {ftype!r} is not a filesystem type")
    if staging is not None:
        build.remove_tree(staging)
    facts.update(blkid(build, out, where))
    return facts


def blkid(build: Build, path: Path, where: str) -> dict:
    """What ``blkid -p`` (the reference prober) says about a content file."""
    proc = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                          env=dict(os.environ, PATH=TOOL_PATH))
    out = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            if k in ("TYPE", "LABEL", "UUID", "UUID_SUB", "VERSION", "BLOCK_SIZE", "FSBLOCKSIZE", "FSSIZE"):
                out["blkid_" + k.lower()] = v
    return out


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Raw CRC-32C (Castagnoli, reflected poly 0x82F63B78) without the final inversion, as ext4 uses it."""
    table = _crc32c_table()
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


_CRC_TABLE: list[int] = []


def _crc32c_table() -> list[int]:
    if not _CRC_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    return _CRC_TABLE


EXT_SB = 1024
EXT_RO_COMPAT = EXT_SB + 0x64
EXT_RO_COMPAT_METADATA_CSUM = 0x400
EXT_SB_CHECKSUM = EXT_SB + 0x3FC


def ext_ro_compat_hack(path: Path) -> None:
    """Flatcar's read-only hack (flatcar.md §1.7): top byte of s_feature_ro_compat (byte 0x467) := 0xFF,
    so kernels refuse a read-write mount. Re-checksums the superblock when metadata_csum is on."""
    with open(path, "r+b") as f:
        sb = bytearray(os.pread(f.fileno(), 1024, EXT_SB))
        if sb[0x38:0x3A] != b"\x53\xef":
            raise BuildError(f"{path}: ro_compat_hack: not an ext2/3/4 filesystem")
        ro_compat = struct.unpack_from("<I", sb, 0x64)[0]
        sb[0x67] = 0xFF
        if ro_compat & EXT_RO_COMPAT_METADATA_CSUM:
            struct.pack_into("<I", sb, 0x3FC, crc32c(bytes(sb[:0x3FC])))
        os.pwrite(f.fileno(), bytes(sb), EXT_SB)


def xfs_protofile(staging: Path, where: str, owners: dict | None = None, sticky: list | None = None) -> str:
    """mkfs.xfs -p protofile (xfs_mkfs(8) "proto"): one line per entry, directories closed by ``$``.

    ``owners``: the build's (dev, ino) -> (uid, gid, ino) map (an unprivileged build cannot chown the
    staging tree). ``sticky``: when a list, sticky-bit entries are collected there as (path, full
    st_mode) for the caller to set after mkfs, instead of being refused."""
    lines = ["immutools-replica", "0 0"]

    def mode_str(st: os.stat_result, kind: str, path: Path | None = None) -> str:
        m = st.st_mode
        if m & 0o1000:
            if sticky is None or path is None:
                raise SpecError(f"{where}: xfs protofiles cannot express the sticky bit")
            sticky.append((str(path.relative_to(staging)), m))
        return kind + ("u" if m & 0o4000 else "-") + ("g" if m & 0o2000 else "-") + f"{m & 0o777:03o}"

    def owner(st: os.stat_result, path: Path) -> str:
        known = (owners or {}).get((st.st_dev, st.st_ino))
        if known is not None:
            return f"{known[0]} {known[1]}"
        return f"{st.st_uid} {st.st_gid}"

    def walk(d: Path, depth: int) -> None:
        for child in sorted(d.iterdir(), key=lambda p: p.name):
            if re.search(r"\s", child.name):
                raise SpecError(f"{where}: xfs protofiles cannot hold names with spaces ({child.name!r})")
            st = os.lstat(child)
            pad = " " * depth
            if child.is_symlink():
                lines.append(f"{pad}{child.name} {mode_str(st, 'l')} {owner(st, child)} {os.readlink(child)}")
            elif child.is_dir():
                lines.append(f"{pad}{child.name} {mode_str(st, 'd', child)} {owner(st, child)}")
                walk(child, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{child.name} {mode_str(st, '-')} {owner(st, child)} {child}")

    st = os.stat(staging)
    lines.append(f"{mode_str(st, 'd')} 0 0")
    walk(staging, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Verity
# ------------------------------------------------------------------------------------------------

def make_verity(build: Build, part: Partition, data_file: Path, hash_file: Path, where: str) -> dict:
    v = render(part.verity, build.ctx(part.vars), f"{where}.verity")
    dbs = parse_int(v.get("data_block_size", 4096), f"{where}.verity.data_block_size")
    hbs = parse_int(v.get("hash_block_size", 4096), f"{where}.verity.hash_block_size")
    cmd = ["veritysetup", "format", f"--hash={v.get('hash', 'sha256')}", f"--data-block-size={dbs}",
           f"--hash-block-size={hbs}", f"--salt={v['salt']}", f"--uuid={v['uuid']}"]
    if "data_blocks" in v:
        cmd.append(f"--data-blocks={parse_int(v['data_blocks'], f'{where}.verity.data_blocks')}")
    hash_offset = parse_int(v.get("hash_offset", 0), f"{where}.verity.hash_offset")
    if hash_offset:
        cmd.append(f"--hash-offset={hash_offset}")
    if "format" in v:
        cmd.append(f"--format={parse_int(v['format'], f'{where}.verity.format')}")
    if v.get("superblock") is False:
        cmd.append("--no-superblock")
    proc = build.runner.run(cmd + [data_file, hash_file], f"{where}:verity")
    text = proc.stdout.decode(errors="replace")
    m = re.search(r"Root hash:\s*([0-9a-f]+)", text)
    if not m:
        raise BuildError(f"{where}: veritysetup printed no root hash:\n{text}")
    facts = {"root_hash": m.group(1), "salt": v["salt"].lower(), "uuid": str(uuidlib.UUID(v["uuid"])),
             # DPS: the data partition's GUID is the first 128 bits of the root hash, the hash partition's the last
             "data_partition_uuid": str(uuidlib.UUID(m.group(1)[:32])) if len(m.group(1)) >= 64 else None,
             "hash_partition_uuid": str(uuidlib.UUID(m.group(1)[-32:])) if len(m.group(1)) >= 64 else None,
             "hash_algorithm": v.get("hash", "sha256"), "data_block_size": dbs, "hash_block_size": hbs,
             "hash_offset": hash_offset, "superblock": v.get("superblock", True) is not False}
    for key, rx in (("data_blocks", r"Data blocks:\s*(\d+)"), ("hash_blocks", r"Hash blocks:\s*(\d+)")):
        mm = re.search(rx, text)
        if mm:
            facts[key] = int(mm.group(1))
    if "data_blocks" in facts:
        facts["data_sectors"] = facts["data_blocks"] * dbs // 512     # the dm table's length (Bottlerocket grub.cfg)
    if "hash_partition" in v:
        facts["hash_partition"] = v["hash_partition"]
    return facts


# ------------------------------------------------------------------------------------------------
# Partition tables
# ------------------------------------------------------------------------------------------------

MBR_CYL, MBR_HDS, MBR_SEC = 1024, 255, 63


def chs(lba: int) -> bytes:
    """CHS triple for an LBA with the 255-head/63-sector geometry cgpt (and gptfdisk) use; saturates."""
    if lba == 0:
        cyl = hds = sec = 0
    elif lba > MBR_CYL * MBR_HDS * MBR_SEC:
        cyl, hds, sec = MBR_CYL - 1, MBR_HDS - 1, MBR_SEC
    else:
        cyl, rem = divmod(lba, MBR_HDS * MBR_SEC)
        hds, sec = divmod(rem, MBR_SEC)
        sec += 1
    return bytes([hds, ((cyl >> 2) & 0xC0) | sec, cyl & 0xFF])


def mbr_entry(status: int, ptype: int, first: int, last: int, chs_first: bytes | None = None,
              chs_last: bytes | None = None) -> bytes:
    first32 = min(first, 0xFFFFFFFF)
    count = min(last - first + 1, 0xFFFFFFFF)
    return (bytes([status]) + (chs_first if chs_first is not None else chs(first)) + bytes([ptype])
            + (chs_last if chs_last is not None else chs(last)) + struct.pack("<II", first32, count))


def write_mbr(fd: int, entries: list[bytes], signature: int = 0, keep_bootcode: bool = False) -> None:
    sector = bytearray(os.pread(fd, 512, 0)) if keep_bootcode else bytearray(512)
    if len(sector) < 512:
        sector = bytearray(512)
    struct.pack_into("<I", sector, 440, signature)
    sector[444:446] = b"\0\0"
    for i in range(4):
        sector[446 + 16 * i:462 + 16 * i] = entries[i] if i < len(entries) else bytes(16)
    sector[510:512] = b"\x55\xaa"
    os.pwrite(fd, bytes(sector), 0)


def write_gpt(build: Build, image: Path) -> dict:
    spec = build.spec
    disk = spec.data["disk"]
    cmd = ["sgdisk", "-a", "1"]
    disk_guid = None
    if "disk_guid" in disk:
        disk_guid = parse_guid(render(disk["disk_guid"], build.ctx(), "disk.disk_guid"), "disk.disk_guid")
        cmd += ["-U", disk_guid]
    for p in spec.partitions:
        n = p.number
        guid = parse_guid(render(p.guid, build.ctx(), f"partitions.{p.key}.guid"), f"partitions.{p.key}.guid")
        cmd += [f"-n{n}:{p.start}:{p.end}", f"-t{n}:{p.type}", f"-u{n}:{guid}"]
        if p.label:
            cmd += [f"-c{n}:{render(p.label, build.ctx(), f'partitions.{p.key}.label')}"]
        if p.attrs:
            cmd += [f"-A{n}:=:{p.attrs:016x}"]
    build.runner.run(cmd + [image], "gpt")
    mbr = disk.get("mbr")
    facts = {"table": "gpt", "disk_guid": disk_guid, "mbr": "protective (sgdisk)"}
    total = spec.size // spec.sector_size
    if mbr:
        with open(image, "r+b") as f:
            if mbr["style"] == "cgpt-protective":
                # flatcar.md §1.1: cgpt's protective entry, CHS 00 02 00 .. FF FF FF (seismograph ae67cf2+).
                end = min(total - 1, 0xFFFFFFFF)
                write_mbr(f.fileno(), [mbr_entry(0, 0xEE, 1, end, b"\x00\x02\x00", b"\xff\xff\xff")])
                facts["mbr"] = "protective (cgpt)"
            elif mbr["style"] == "cgpt-hybrid":
                # flatcar.md §1.1 / SG cgpt_common.c UpdatePMBR: entry 0 bootable 0x0C over the partition,
                # entry 1 0xEE from LBA 1 to its start - 1; both with computed CHS.
                part = spec.partition(mbr["partition"])
                write_mbr(f.fileno(), [mbr_entry(0x80, 0x0C, part.start, part.end),
                                       mbr_entry(0x00, 0xEE, 1, part.start - 1)])
                facts["mbr"] = f"hybrid (cgpt): 0x0C bootable over partition {part.number}, 0xEE LBA 1..{part.start - 1}"
            else:
                facts["mbr"] = "protective (sgdisk)"
    return facts


def write_mbr_table(build: Build, image: Path) -> dict:
    spec = build.spec
    sig = parse_int(spec.data["disk"].get("mbr_signature", 0), "disk.mbr_signature")
    entries = [bytes(16)] * 4
    for p in spec.partitions:
        entries[p.number - 1] = mbr_entry(0x80 if p.bootable else 0, p.mbr_type, p.start, p.end)
    with open(image, "r+b") as f:
        write_mbr(f.fileno(), entries, sig)
    return {"table": "mbr", "disk_signature": f"0x{sig:08x}"}


# ------------------------------------------------------------------------------------------------
# The build
# ------------------------------------------------------------------------------------------------

def tree_refs(spec: Spec, value: Any, seen: set[str] | None = None) -> set[str]:
    """Template names used by ``value`` and by every tree it points to (``tree:`` keys), recursively."""
    seen = seen if seen is not None else set()
    refs = references(value)
    for tname in _tree_names(value):
        if tname in seen or tname not in spec.trees:
            continue
        seen.add(tname)
        refs |= tree_refs(spec, spec.trees[tname], seen)
    return refs


def _tree_names(value: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "tree" and isinstance(v, str):
                out.add(v)
            else:
                out |= _tree_names(v)
    elif isinstance(value, list):
        for v in value:
            out |= _tree_names(v)
    return out


def build_order(spec: Spec) -> list[Partition]:
    """Partitions in an order where ``{{computed.X…}}`` users come after X (verity before the ESP)."""
    keys = {p.key for p in spec.partitions}
    deps: dict[str, set[str]] = {}
    prov = provenance_partition(spec)
    for p in spec.partitions:
        refs = tree_refs(spec, {"content": p.content, "vars": p.vars})
        if p.key == prov:
            refs |= references(spec.limitations)
        need = set()
        for r in refs:
            if r.startswith("computed."):
                target = r.split(".")[1]
                if target not in keys:
                    raise SpecError(f"{spec.where}: partitions.{p.key}: {{{{{r}}}}} names no partition")
                need.add(target)
        need.discard(p.key)
        deps[p.key] = need
    # Separate verity hash partitions are written by their data partition.
    ordered: list[Partition] = []
    done: set[str] = set()
    pending = list(spec.partitions)
    while pending:
        ready = [p for p in pending if deps[p.key] <= done]
        if not ready:
            raise SpecError(f"{spec.where}: partitions {', '.join(p.key for p in pending)} depend on each other's computed values")
        for p in ready:
            ordered.append(p)
            done.add(p.key)
            pending.remove(p)
    return ordered


def provenance_partition(spec: Spec) -> str | None:
    if spec.data.get("provenance_partition"):
        return spec.data["provenance_partition"]
    for kinds in (("vfat",), ("ext4", "ext3", "ext2")):
        for p in spec.partitions:
            if p.content.get("type") in kinds:
                return p.key
    return None


def provenance_record(spec: Spec, limitations: list[str]) -> dict:
    ctx = base_context(spec)
    facts = {k: render(spec.data.get(k), ctx, f"{spec.where}: {k}") for k in
             ("distribution", "release", "layout_source", "description")}
    return {
        "replica": True,
        "not_a_vendor_image": True,
        "built_by": f"immutools replica builder {BUILDER_VERSION}",
        "spec": spec.name,
        **facts,
        "limitations": limitations,
    }


def base_context(spec: Spec) -> dict:
    ctx: dict = {}
    ctx.update(spec.vars)
    ctx.update(spec=spec.name, distribution=spec.data.get("distribution"))
    ctx["release"] = render(spec.data.get("release"), ctx, f"{spec.where}: release")
    return ctx


def image_name(spec: Spec) -> str:
    return spec.name + str(spec.data.get("raw_suffix", ".img"))


def build(spec_ref: str | Path | Spec, out_dir: Path, forms: list[str] | None = None, *,
          keep_raw: bool = True, compute_sha256: bool = True) -> dict:
    """Build the replica; return its manifest (also written as ``<image>.manifest.json``)."""
    spec = spec_ref if isinstance(spec_ref, Spec) else load_spec(spec_ref)
    if spec.abstract:
        raise SpecError(f"{spec.where}: abstract spec (a base for others); build one that extends it")
    forms = forms or list(spec.data.get("forms", ["raw"]))
    for form in forms:
        if form not in FORM_COMMANDS and form != "raw":
            raise SpecError(f"--forms: unknown form {form!r} (one of raw, {', '.join(FORM_COMMANDS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    epoch = parse_int(spec.data.get("source_date_epoch", os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)),
                      "source_date_epoch")
    shim = shim_path()
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=out_dir) as work_s:
        work = Path(work_s)
        runner = Runner(epoch=epoch, seed=spec.name, shim=shim, owners_file=work / "owners.txt")
        b = Build(spec=spec, out_dir=out_dir, work=work, runner=runner, epoch=epoch, context=base_context(spec))
        b.limitations.extend(render(spec.limitations, b.ctx(), f"{spec.where}: limitations"))
        if shim is None:
            b.limit("built without the reproducibility preload (no C compiler): filesystem UUIDs and times "
                    "other than those the spec fixes vary between builds")
        for text in btrfs_property_limitations(spec):
            b.limit(text)
        raw = out_dir / image_name(spec)
        tmp_raw = work / "disk.raw"
        _truncate(tmp_raw, spec.size)

        # 1. partition contents, in dependency order.
        prov_key = provenance_partition(spec)
        part_files: dict[str, Path] = {}
        part_facts: dict[str, dict] = {}
        hash_owner: dict[str, str] = {}
        for p in spec.partitions:
            if p.verity and "hash_partition" in p.verity:
                hash_owner[p.verity["hash_partition"]] = p.key
        for p in build_order(spec):
            t0 = time.monotonic()
            where = f"{spec.where}: partitions.{p.key}"
            pbytes = p.sectors * spec.sector_size
            ctype = p.content.get("type", "zero")
            pctx = b.ctx(render(p.vars, b.ctx(), f"{where}.vars"))
            facts: dict = {"content": ctype}
            content_file = part_files.get(p.key)
            if ctype in FS_TYPES:
                content_file = b.tmp(f"part{p.number}.img")
                extra = None
                if p.key == prov_key:
                    record = json.dumps(provenance_record(spec, b.limitations), indent=2, sort_keys=True) + "\n"
                    extra = {PROVENANCE_FILE: {"text": record, "mode": "0644"}}
                facts.update(make_filesystem(b, p.content, pctx, content_file, pbytes, where, extra))
            elif ctype == "raw":
                content_file = b.tmp(f"part{p.number}.raw")
                entry = render(p.content, pctx, f"{where}.content")
                data = entry_bytes(b, entry, pctx, f"{where}.content")
                if len(data) > pbytes:
                    raise SpecError(f"{where}.content: {len(data)} bytes do not fit the partition ({pbytes})")
                content_file.write_bytes(data)
            if p.verity:
                if content_file is None:
                    raise SpecError(f"{where}.verity: the partition has no content to protect")
                if content_file.stat().st_size < pbytes and "hash_offset" in p.verity:
                    with open(content_file, "r+b") as f:
                        f.truncate(pbytes)
                if "hash_partition" in p.verity:
                    hp = spec.partition(p.verity["hash_partition"])
                    hash_file = b.tmp(f"part{hp.number}.hash")
                    _truncate(hash_file, 0)
                    vfacts = make_verity(b, p, content_file, hash_file, where)
                    if hash_file.stat().st_size > hp.sectors * spec.sector_size:
                        raise BuildError(f"{where}.verity: hash tree ({hash_file.stat().st_size} bytes) does not fit "
                                         f"partition {hp.key}")
                    part_files[hp.key] = hash_file
                    part_facts.setdefault(hp.key, {})["verity_hash_of"] = p.key
                else:
                    vfacts = make_verity(b, p, content_file, content_file, where)
                    if content_file.stat().st_size > pbytes:
                        raise BuildError(f"{where}.verity: filesystem + hash tree ({content_file.stat().st_size} "
                                         f"bytes) exceed the partition ({pbytes})")
                facts["verity"] = vfacts
                b.computed.setdefault(p.key, {})["verity"] = vfacts
            b.computed.setdefault(p.key, {})["fs"] = {k: v for k, v in facts.items() if k != "verity"}
            if content_file is not None:
                part_files[p.key] = content_file
            facts["seconds"] = round(time.monotonic() - t0, 3)
            part_facts.setdefault(p.key, {}).update(facts)
            b.timings[f"partition {p.key}"] = facts["seconds"]

        # 2. the disk and its table.
        t0 = time.monotonic()
        if spec.table == "gpt":
            table_facts = write_gpt(b, tmp_raw)
        elif spec.table == "mbr":
            table_facts = write_mbr_table(b, tmp_raw)
        else:
            table_facts = {"table": "none"}
        # 3. contents at their offsets.
        with open(tmp_raw, "r+b") as f:
            for p in spec.partitions:
                src = part_files.get(p.key)
                if src is None:
                    continue
                pbytes = p.sectors * spec.sector_size
                if src.stat().st_size > pbytes:
                    raise BuildError(f"{spec.where}: partitions.{p.key}: content is {src.stat().st_size} bytes, "
                                     f"more than the partition ({pbytes})")
                sparse_copy(src, f.fileno(), p.start * spec.sector_size)
                src.unlink()
        b.timings["assemble"] = round(time.monotonic() - t0, 3)
        os.replace(tmp_raw, raw)

    manifest = {
        "spec": spec.name,
        "spec_files": [str(f) for f in spec.files],
        "builder_version": BUILDER_VERSION,
        "image": raw.name,
        "provenance": provenance_record(spec, b.limitations),
        "source_date_epoch": epoch,
        "reproducible": shim is not None,
        "disk": {"size": spec.size, "sector_size": spec.sector_size, "sectors": spec.size // spec.sector_size,
                 **table_facts},
        "partitions": [],
        "computed": b.computed,
    }
    if spec.table == "gpt":
        total = spec.size // spec.sector_size
        fu = 34 if spec.sector_size == 512 else 6
        manifest["disk"].update(first_usable_lba=fu, last_usable_lba=total - fu, backup_header_lba=total - 1)
    for p in spec.partitions:
        row = {"key": p.key, "number": p.number, "label": render(p.label, b.ctx(), p.key), "start": p.start, "sectors": p.sectors,
               "offset": p.start * spec.sector_size, "size": p.sectors * spec.sector_size}
        if spec.table == "gpt":
            row.update(type=p.type, guid=parse_guid(render(p.guid, b.ctx(), p.key), p.key), attrs=f"0x{p.attrs:016x}")
        else:
            row.update(mbr_type=f"0x{p.mbr_type:02x}", bootable=p.bootable)
        row.update(part_facts.get(p.key, {}))
        manifest["partitions"].append(row)
    manifest["expect"] = render(spec.data.get("expect", {}), b.ctx(), f"{spec.where}: expect")
    t0 = time.monotonic()
    if compute_sha256:
        manifest["sha256"] = sparse_sha256(raw)
        b.timings["sha256"] = round(time.monotonic() - t0, 3)
    manifest["allocated_bytes"] = allocated_bytes(raw)
    manifest["forms"] = {"raw": raw.name}
    for form in forms:
        if form == "raw":
            continue
        t0 = time.monotonic()
        path = make_form(b.runner, raw, form)
        manifest["forms"][form] = path.name
        b.timings[f"form {form}"] = round(time.monotonic() - t0, 3)
    if "raw" not in forms and not keep_raw:
        raw.unlink()
        manifest["forms"].pop("raw")
    b.timings["total"] = round(time.monotonic() - started, 3)
    manifest["timings"] = b.timings
    manifest["tool_log"] = runner.log
    (out_dir / (raw.name + ".manifest.json")).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def btrfs_property_limitations(spec: Spec) -> list[str]:
    """btrfs properties (compression, read-only subvolume) need a mounted filesystem to set: say so."""
    out = []
    for p in spec.partitions:
        for prop, value in (p.content.get("properties") or {}).items():
            out.append(f"partition {p.number} ({p.label or p.key}): btrfs property {prop}={value} not set: "
                       "`btrfs property set` needs a mounted filesystem, which a rootless replica build cannot have")
    return out


# name suffix, command (input path, output path)
FORM_COMMANDS = {
    "bz2": ".bz2",
    "xz": ".xz",
    "zst": ".zst",
    "lz4": ".lz4",
    "gz": ".gz",
    "qcow2": ".qcow2",
}


def convert(raw: Path, form: str, epoch: int = DEFAULT_EPOCH) -> Path:
    """Make one shipped form (bz2, xz, zst, lz4, gz, qcow2) of an existing raw replica, beside it."""
    return make_form(Runner(epoch=epoch, seed=raw.name, shim=None), Path(raw), form)


def make_form(runner: Runner, raw: Path, form: str) -> Path:
    """One shipped form of the raw image. Streams holes from memory into the compressors."""
    if form == "qcow2":
        out = raw.with_name(raw.name.rsplit(".", 1)[0] + ".qcow2") if "." in raw.name else raw.with_suffix(".qcow2")
        # flatcar.md §1.5: qemu-img convert -O qcow2 -c -o compat=0.10 (the Flatcar QEMU image form).
        runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compat=0.10", raw, out], "qcow2")
        return out
    out = raw.with_name(raw.name + FORM_COMMANDS[form])
    if form == "bz2":
        nproc = str(os.cpu_count() or 1)
        cmd = ["pbzip2", "-c", "-9", f"-p{nproc}"] if which("pbzip2") else ["bzip2", "-c", "-9"]
    elif form == "xz":
        cmd = ["xz", "-c", "-T0", "-6"]
    elif form == "zst":
        cmd = ["zstd", "-c", "-q", "-T0", "-19"]
    elif form == "lz4":
        cmd = ["lz4", "-c", "-q", "-9"]
    elif form == "gz":
        cmd = ["gzip", "-c", "-n", "-9"]
    else:
        raise SpecError(f"unknown form {form!r}")
    if which(cmd[0]) is None:
        raise BuildError(f"form {form}: {cmd[0]} is not installed")
    runner.log.append(" ".join(cmd) + f" < {raw.name} > {out.name}")
    with open(out, "wb") as dst:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=dst, stderr=subprocess.PIPE,
                                env=dict(os.environ, PATH=TOOL_PATH + ":" + os.environ.get("PATH", "")))
        try:
            for chunk in sparse_stream(raw):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise BuildError(f"form {form}: {' '.join(cmd)} failed: {err.decode(errors='replace')}")
    return out
