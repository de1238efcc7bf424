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

import hashlib
import json
import os
import re
import struct
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from immutools.replica import BUILDER_VERSION
from immutools.replica.context import TOOL_PATH, Build, BuildError, Runner, SpecError, shim_path, truncate, which
from immutools.replica.filesystems import make_filesystem
from immutools.replica.kinds import entry_bytes
from immutools.replica.spec import FS_TYPES, Partition, Spec, load_spec, parse_guid, parse_int, references, render

__all__ = ["build", "convert", "image_name", "base_context", "allocated_bytes", "data_extents", "sparse_sha256",
           "BuildError", "SpecError", "shim_path", "which"]

PROVENANCE_FILE = "immutools-replica.json"
DEFAULT_EPOCH = 1700000000
CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)


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
                # flatcar/seismograph src/cgpt/cgpt_common.c UpdatePMBR: cgpt's protective entry, CHS 00 02 00 .. FF FF FF (seismograph ae67cf2+).
                end = min(total - 1, 0xFFFFFFFF)
                write_mbr(f.fileno(), [mbr_entry(0, 0xEE, 1, end, b"\x00\x02\x00", b"\xff\xff\xff")])
                facts["mbr"] = "protective (cgpt)"
            elif mbr["style"] == "cgpt-hybrid":
                # flatcar/seismograph src/cgpt/cgpt_common.c UpdatePMBR: entry 0 bootable 0x0C over the partition,
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
          keep_raw: bool = True, compute_sha256: bool = True, trees=None) -> dict:
    """Build the replica; return its manifest (also written as ``<image>.manifest.json``).

    ``trees``: where grafted full-size trees come from (``packages.DebianPackageTrees``; default:
    one caching under the project cache)."""
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
        b = Build(spec=spec, out_dir=out_dir, work=work, runner=runner, epoch=epoch, context=base_context(spec),
                  trees=trees)
        b.limitations.extend(render(spec.limitations, b.ctx(), f"{spec.where}: limitations"))
        for text in graft_limitations(spec):
            b.limit(text)
        if shim is None:
            b.limit("built without the reproducibility preload (no C compiler): filesystem UUIDs and times "
                    "other than those the spec fixes vary between builds")
        for text in btrfs_property_limitations(spec):
            b.limit(text)
        raw = out_dir / image_name(spec)
        tmp_raw = work / "disk.raw"
        truncate(tmp_raw, spec.size)

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
                    truncate(hash_file, 0)
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


def spec_grafts(spec: Spec) -> list[dict]:
    """Every graft the spec declares (``grafts: {TREE: [...]}``), unrendered."""
    return [g for glist in (spec.data.get("grafts") or {}).values() for g in glist]


def graft_limitations(spec: Spec) -> list[str]:
    """Known before any partition is built, so the provenance record (written early) says it."""
    sets = sorted({str(g["set"]) for g in spec_grafts(spec)})
    if not sets:
        return []
    return [f"full-size file tree grafted from Debian 12 package metadata (package set{'s' if len(sets) > 1 else ''} "
            f"{', '.join(sets)}): real names, modes, owners and links of those packages, file contents emptied "
            "(small configuration and unit files and ELF headers of executables kept); the packages stand in for "
            "the distribution's own, the versions are in the manifest (computed.trees)"]


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
        # flatcar/scripts build_library/vm_image_util.sh: qemu-img convert -O qcow2 -c -o compat=0.10 (the Flatcar QEMU image form).
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
