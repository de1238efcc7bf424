"""Replica specs: load the YAML, resolve ``extends:`` overlays, validate, render templates.

A spec describes one disk image declaratively (see ``data/replica-specs/README.md``): the disk,
its partition table, each partition's content (a filesystem built from a file tree, raw bytes, or
nothing), dm-verity, the shipped forms, the provenance facts and an ``expect:`` section with the
facts a scan of the image should report.

Overlays: ``extends: NAME`` (or a list) loads ``NAME.yaml`` from the same directory first and merges
this file over it. Mappings merge key by key, recursively; any other value (scalars, lists)
replaces the inherited one; ``~`` (null) deletes the inherited key. Partitions, trees and files are
mappings keyed by a name or a path, so an overlay can change one field of one file.

Templates: strings may contain ``{{name}}`` or ``{{dotted.name}}``; names come from ``vars:`` (which
may use each other), partition-level ``vars:``, and, at build time, ``computed.<partition>.…``
values (verity root hashes, salts). ``{{{{`` is not special; there is no escaping because no
supported file needs a literal ``{{``.
"""

from __future__ import annotations

import copy
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from immutools.paths import data_dir
from immutools.replica import kinds
from immutools.replica.context import SpecError

FS_TYPES = ("vfat", "ext2", "ext3", "ext4", "btrfs", "xfs", "squashfs", "erofs")
CONTENT_TYPES = FS_TYPES + ("raw", "zero")
FORMS = ("raw", "bz2", "xz", "zst", "lz4", "gz", "qcow2")
GRAFT_SOURCES = ("debian-packages",)          # immutools.replica.packages
GRAFT_KEYS = {"source", "set", "name", "from", "into", "mountpoint", "exclude", "relocate"}
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")
MAX_EXTENDS_DEPTH = 16
MAX_TEMPLATE_DEPTH = 16
UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30,
         "T": 1 << 40, "TIB": 1 << 40, "S": 512, "SECTORS": 512}

__all__ = ["SpecError", "Spec", "Partition", "load_spec", "list_specs", "render", "references",
           "parse_size", "parse_int", "parse_mode", "parse_guid", "validate_content"]


FULLSIZE = "fullsize"     # full-size variants: not built by default (``list_specs(fullsize=True)``)


def specs_dir() -> Path:
    return data_dir() / "replica-specs"


def spec_path(name_or_path: str | Path) -> Path:
    """A spec name (``flatcar-stable-amd64``, also one of the full-size variants) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise SpecError(f"{p}: no such spec file")
        return p
    for directory in (specs_dir(), specs_dir() / FULLSIZE):
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    raise SpecError(f"{name_or_path}: no spec of that name in {specs_dir()} (try `python -m immutools.replica list`)")


# ------------------------------------------------------------------------------------------------
# Loading and overlays
# ------------------------------------------------------------------------------------------------

def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping")
    return data


def merge(base: Any, over: Any) -> Any:
    """Overlay ``over`` onto ``base``: mappings merge recursively, null deletes, others replace.

    Nulls stay in the result as deletion markers (an overlay's parent chain may not contain the key
    it deletes, but the spec that extends it might); ``strip_nulls`` removes them at the end."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, list[Path]]:
    """The merged mapping of ``path`` and everything it extends, plus the files read (base first)."""
    path = path.resolve()
    if path in _chain:
        raise SpecError(f"{path}: extends itself through {' -> '.join(p.name for p in _chain)}")
    if len(_chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError(f"{path}: extends chain deeper than {MAX_EXTENDS_DEPTH}")
    data = _read_yaml(path)
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError(f"{path}: extends: must be a spec name or a list of names")
    merged: dict = {}
    files: list[Path] = []
    for parent in parents:
        parent_file = parent if parent.endswith((".yaml", ".yml")) else f"{parent}.yaml"
        parent_path = path.parent / parent_file
        if not parent_path.exists() and path.parent.name == FULLSIZE:
            parent_path = path.parent.parent / parent_file     # a full-size variant extends its thin replica
        if not parent_path.exists():
            raise SpecError(f"{path}: extends: {parent!r}: no file {parent_path}")
        parent_data, parent_files = load_raw(parent_path, _chain + (path,))
        parent_data.pop("abstract", None)       # abstractness is not inherited
        parent_data.pop("name", None)
        merged = merge(merged, parent_data)
        files += [f for f in parent_files if f not in files]
    merged = merge(merged, data)
    files.append(path)
    return merged, files


# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------

def lookup(context: dict, dotted: str) -> Any:
    cur: Any = context
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(dotted)
    return cur


def render(value: Any, context: dict, where: str) -> Any:
    """Substitute ``{{name}}`` in every string inside ``value`` (recursively through lists/dicts).

    A string that is exactly one template naming a list or a mapping takes that value itself
    (``setuid: "{{computed.trees.usr.setuid}}"``); scalars are always substituted as text."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole:
            try:
                found = lookup(context, whole.group(1))
            except KeyError:
                found = None
            if isinstance(found, (list, dict)):
                return copy.deepcopy(found)
        return render_str(value, context, where)
    if isinstance(value, list):
        return [render(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {render_str(k, context, where) if isinstance(k, str) else k: render(v, context, f"{where}.{k}")
                for k, v in value.items()}
    return value


def render_str(text: str, context: dict, where: str) -> str:
    for _ in range(MAX_TEMPLATE_DEPTH):
        if "{{" not in text:
            return text

        def sub(m: re.Match) -> str:
            try:
                val = lookup(context, m.group(1))
            except KeyError:
                raise SpecError(f"{where}: unknown template variable {{{{{m.group(1)}}}}}") from None
            if isinstance(val, (dict, list)):
                raise SpecError(f"{where}: template variable {{{{{m.group(1)}}}}} is not a scalar")
            return str(val)

        new = TEMPLATE.sub(sub, text)
        if new == text:
            return text
        text = new
    raise SpecError(f"{where}: template variables nest deeper than {MAX_TEMPLATE_DEPTH} (a cycle?)")


def references(value: Any) -> set[str]:
    """Every template variable named anywhere inside ``value``."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(m.group(1) for m in TEMPLATE.finditer(value))
    elif isinstance(value, list):
        for v in value:
            found |= references(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            found |= references(k) | references(v)
    return found


# ------------------------------------------------------------------------------------------------
# The validated spec
# ------------------------------------------------------------------------------------------------

def parse_size(value: Any, where: str, sector_size: int = 512) -> int:
    """Bytes from an int or a string like ``2 GiB``, ``4096 sectors`` or ``1065345024``."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{where}: negative size {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9][0-9_,]*)\s*([A-Za-z]*)\s*", value)
        if m:
            unit = m.group(2).upper()
            if unit in ("S", "SECTORS"):
                return int(m.group(1).replace("_", "").replace(",", "")) * sector_size
            if unit in UNITS:
                return int(m.group(1).replace("_", "").replace(",", "")) * UNITS[unit]
    raise SpecError(f"{where}: cannot read {value!r} as a size (use bytes, or a number with KiB/MiB/GiB/sectors)")


def parse_int(value: Any, where: str, *, base: int = 0) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""), base)
        except ValueError:
            pass
    raise SpecError(f"{where}: expected an integer, got {value!r}")


def parse_mode(value: Any, where: str) -> int:
    """File modes are octal strings (``"4755"``, ``"0644"``); a plain YAML int is taken as already octal-parsed."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise SpecError(f"{where}: mode {value!r} is not octal") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise SpecError(f"{where}: mode must be an octal string like \"0755\"")
    if not 0 <= mode <= 0o7777:
        raise SpecError(f"{where}: mode {value!r} out of range (write it as an octal string, e.g. \"0755\")")
    return mode


def parse_guid(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a GUID string")
    try:
        return str(uuidlib.UUID(value)).upper()
    except ValueError:
        raise SpecError(f"{where}: {value!r} is not a GUID") from None


@dataclass
class Partition:
    key: str
    number: int
    start: int                 # sector
    sectors: int
    label: str | None = None
    type: str | None = None    # GPT type GUID (upper case)
    guid: str | None = None
    attrs: int = 0
    mbr_type: int | None = None
    bootable: bool = False
    content: dict = field(default_factory=lambda: {"type": "zero"})
    verity: dict | None = None
    vars: dict = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.sectors - 1


@dataclass
class Spec:
    name: str
    path: Path
    files: list[Path]
    data: dict                 # the merged, unrendered mapping
    abstract: bool
    sector_size: int
    size: int                  # bytes
    table: str                 # gpt | mbr | none
    partitions: list[Partition]
    trees: dict
    vars: dict

    @property
    def where(self) -> str:
        if len(self.files) > 1:
            return f"{self.path} (extends {', '.join(f.name for f in self.files[:-1])})"
        return str(self.path)

    def partition(self, key: str) -> Partition:
        for p in self.partitions:
            if p.key == key:
                return p
        raise SpecError(f"{self.where}: no partition {key!r}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def limitations(self) -> list[str]:
        """The spec's limitations as a list (the YAML may key them by name so overlays can drop one)."""
        lim = self.data.get("limitations") or []
        return list(lim.values()) if isinstance(lim, dict) else list(lim)


def load_spec(name_or_path: str | Path) -> Spec:
    path = spec_path(name_or_path)
    data, files = load_raw(path)
    data = strip_nulls(data)
    name = data.get("name") or path.stem
    spec = _validate(name, path, files, data)
    return spec


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(sorted(allowed))})")


TOP_KEYS = {"name", "abstract", "description", "distribution", "release", "layout_source", "limitations",
            "source_date_epoch", "vars", "disk", "partitions", "trees", "provenance_partition", "forms",
            "expect", "raw_suffix", "ostree", "grafts"}
DISK_KEYS = {"size", "sector_size", "table", "disk_guid", "mbr", "mbr_signature"}
PART_KEYS = {"number", "label", "type", "guid", "start", "sectors", "size", "attrs", "mbr_type", "bootable",
             "content", "verity", "vars"}
VERITY_KEYS = {"data_blocks", "data_block_size", "hash_block_size", "hash", "hash_offset", "hash_partition",
               "salt", "uuid", "format", "superblock"}


def _validate(name: str, path: Path, files: list[Path], data: dict) -> Spec:
    where = f"{path}" if len(files) == 1 else f"{path} (extends {', '.join(f.name for f in files[:-1])})"
    _check_keys(data, TOP_KEYS, where)
    abstract = bool(data.get("abstract", False))
    vars_ = data.get("vars") or {}
    if not isinstance(vars_, dict):
        raise SpecError(f"{where}: vars: must be a mapping")
    disk = data.get("disk")
    if abstract:
        # Overlays are partial by design: they are checked as part of the specs that extend them.
        return Spec(name, path, files, data, True, 512, 0, "gpt", [], data.get("trees") or {}, vars_)
    if not isinstance(disk, dict):
        raise SpecError(f"{where}: disk: missing (a mapping with size, table, ...)")
    _check_keys(disk, DISK_KEYS, f"{where}: disk")
    sector_size = parse_int(disk.get("sector_size", 512), f"{where}: disk.sector_size")
    if sector_size not in (512, 4096):
        raise SpecError(f"{where}: disk.sector_size: {sector_size} (512 or 4096)")
    if "size" not in disk:
        raise SpecError(f"{where}: disk.size: missing")
    size = parse_size(disk["size"], f"{where}: disk.size", sector_size)
    if size % sector_size:
        raise SpecError(f"{where}: disk.size: {size} is not a whole number of {sector_size}-byte sectors")
    table = disk.get("table", "gpt")
    if table not in ("gpt", "mbr", "none"):
        raise SpecError(f"{where}: disk.table: {table!r} (gpt, mbr or none)")
    if table == "gpt" and "disk_guid" in disk:
        parse_guid(disk["disk_guid"], f"{where}: disk.disk_guid")
    total_sectors = size // sector_size
    mbr = disk.get("mbr")
    if mbr is not None:
        if not isinstance(mbr, dict) or mbr.get("style") not in ("protective", "cgpt-protective", "cgpt-hybrid"):
            raise SpecError(f"{where}: disk.mbr: expected {{style: protective|cgpt-protective|cgpt-hybrid, partition: KEY}}")

    trees = data.get("trees") or {}
    if not isinstance(trees, dict):
        raise SpecError(f"{where}: trees: must be a mapping of tree name to files")
    for tname, tree in trees.items():
        if not isinstance(tree, dict):
            raise SpecError(f"{where}: trees.{tname}: must be a mapping of path to entry")
        for fpath, entry in tree.items():
            _validate_entry(entry, f"{where}: trees.{tname}.{fpath!r}", trees)

    grafts = data.get("grafts") or {}
    if not isinstance(grafts, dict):
        raise SpecError(f"{where}: grafts: a mapping of tree name to a list of grafts")
    for tname, glist in grafts.items():
        if tname not in trees:
            raise SpecError(f"{where}: grafts.{tname}: no tree {tname!r} under trees:")
        validate_grafts(glist, f"{where}: grafts.{tname}", str(tname))

    parts_raw = data.get("partitions") or {}
    if not isinstance(parts_raw, dict):
        raise SpecError(f"{where}: partitions: must be a mapping of partition name to fields")
    partitions: list[Partition] = []
    first_usable = 34 if sector_size == 512 else 6
    last_usable = total_sectors - first_usable if table == "gpt" else total_sectors - 1
    if table == "mbr":
        first_usable = 1
    for key, p in parts_raw.items():
        pw = f"{where}: partitions.{key}"
        if not isinstance(p, dict):
            raise SpecError(f"{pw}: must be a mapping")
        _check_keys(p, PART_KEYS, pw)
        for req in ("number", "start"):
            if req not in p:
                raise SpecError(f"{pw}.{req}: missing")
        number = parse_int(p["number"], f"{pw}.number")
        start = parse_int(p["start"], f"{pw}.start")
        if "sectors" in p:
            sectors = parse_int(p["sectors"], f"{pw}.sectors")
        elif "size" in p:
            nbytes = parse_size(p["size"], f"{pw}.size", sector_size)
            if nbytes % sector_size:
                raise SpecError(f"{pw}.size: not a whole number of sectors")
            sectors = nbytes // sector_size
        else:
            raise SpecError(f"{pw}: give sectors or size")
        part = Partition(key=str(key), number=number, start=start, sectors=sectors)
        if table == "gpt":
            if not 1 <= number <= 128:
                raise SpecError(f"{pw}.number: {number} outside 1..128")
            if "type" not in p:
                raise SpecError(f"{pw}.type: missing (a GPT type GUID)")
            part.type = parse_guid(p["type"], f"{pw}.type")
            if "guid" in p and TEMPLATE.search(str(p["guid"])):
                part.guid = str(p["guid"])      # a build-time value, e.g. from a verity root hash
            elif "guid" in p:
                part.guid = parse_guid(p["guid"], f"{pw}.guid")
            else:
                raise SpecError(f"{pw}.guid: missing (replicas need fixed unique GUIDs to be reproducible)")
            label = p.get("label", "")
            if not isinstance(label, str) or len(label.encode("utf-16-le")) > 72:
                raise SpecError(f"{pw}.label: must be a string of at most 36 UTF-16 units")
            part.label = label
            part.attrs = parse_int(p.get("attrs", 0), f"{pw}.attrs")
            if not 0 <= part.attrs < 1 << 64:
                raise SpecError(f"{pw}.attrs: does not fit 64 bits")
        elif table == "mbr":
            if not 1 <= number <= 4:
                raise SpecError(f"{pw}.number: {number} (only primary MBR partitions 1..4 are supported)")
            if "mbr_type" not in p:
                raise SpecError(f"{pw}.mbr_type: missing (e.g. 0x83)")
            part.mbr_type = parse_int(p["mbr_type"], f"{pw}.mbr_type")
            part.bootable = bool(p.get("bootable", False))
            part.label = p.get("label")
        if start < first_usable or part.end > last_usable or sectors <= 0:
            raise SpecError(f"{pw}: sectors {start}..{part.end} outside the usable area {first_usable}..{last_usable}")
        content = p.get("content") or {"type": "zero"}
        if not isinstance(content, dict) or content.get("type") not in CONTENT_TYPES:
            raise SpecError(f"{pw}.content.type: {content.get('type') if isinstance(content, dict) else content!r} "
                            f"(one of {', '.join(CONTENT_TYPES)})")
        validate_content(content, f"{pw}.content", trees, sectors * sector_size)
        part.content = content
        if p.get("verity") is not None:
            v = p["verity"]
            if not isinstance(v, dict):
                raise SpecError(f"{pw}.verity: must be a mapping")
            _check_keys(v, VERITY_KEYS, f"{pw}.verity")
            for req in ("salt", "uuid"):
                if req not in v:
                    raise SpecError(f"{pw}.verity.{req}: missing (fixed for reproducible builds)")
            parse_guid(v["uuid"], f"{pw}.verity.uuid")
            if not isinstance(v["salt"], str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})*|-", v["salt"]):
                raise SpecError(f"{pw}.verity.salt: hex string expected")
            if "hash_offset" not in v and "hash_partition" not in v:
                raise SpecError(f"{pw}.verity: give hash_offset (tree inside this partition) or hash_partition")
            part.verity = v
        pv = p.get("vars") or {}
        if not isinstance(pv, dict):
            raise SpecError(f"{pw}.vars: must be a mapping")
        part.vars = pv
        partitions.append(part)

    numbers = [p.number for p in partitions]
    dup = {n for n in numbers if numbers.count(n) > 1}
    if dup:
        raise SpecError(f"{where}: partitions: number(s) {sorted(dup)} used twice")
    ordered = sorted(partitions, key=lambda p: p.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start <= a.end:
            raise SpecError(f"{where}: partitions.{a.key} and partitions.{b.key} overlap")
    keys = {p.key for p in partitions}
    for p in partitions:
        if p.verity and "hash_partition" in p.verity and p.verity["hash_partition"] not in keys:
            raise SpecError(f"{where}: partitions.{p.key}.verity.hash_partition: no partition {p.verity['hash_partition']!r}")
    if mbr is not None and mbr.get("style") == "cgpt-hybrid" and mbr.get("partition") not in keys:
        raise SpecError(f"{where}: disk.mbr.partition: {mbr.get('partition')!r} is not a partition name")
    prov = data.get("provenance_partition")
    if prov is not None and prov not in keys:
        raise SpecError(f"{where}: provenance_partition: no partition {prov!r}")
    forms = data.get("forms", ["raw"])
    if not isinstance(forms, list) or any(f not in FORMS for f in forms):
        raise SpecError(f"{where}: forms: {forms!r} (a list from {', '.join(FORMS)})")
    if not abstract:
        for req in ("distribution", "release", "layout_source"):
            if not data.get(req):
                raise SpecError(f"{where}: {req}: missing (the provenance record needs it)")
    lim = data.get("limitations", [])
    if isinstance(lim, dict):
        lim = list(lim.values())
    if not isinstance(lim, list) or not all(isinstance(x, str) for x in lim):
        raise SpecError(f"{where}: limitations: must be a list of strings or a mapping of name to string")
    return Spec(name, path, files, data, abstract, sector_size, size, table, sorted(partitions, key=lambda p: p.number),
                trees, vars_)


FS_KEYS = {
    "vfat": {"type", "size", "label", "serial", "fat_bits", "tree", "options"},
    "ext2": {"type", "size", "label", "uuid", "hash_seed", "block_size", "inode_ratio", "inode_size", "features",
             "extended", "reserved_percent", "tree", "tune2fs", "ro_compat_hack", "options"},
    "btrfs": {"type", "size", "label", "uuid", "mixed", "metadata", "data", "nodesize", "sectorsize", "tree",
              "properties", "options"},
    "xfs": {"type", "size", "label", "uuid", "tree", "options"},
    "squashfs": {"type", "comp", "block_size", "tree", "options"},
    "erofs": {"type", "compress", "uuid", "tree", "options"},
    "raw": {"type", "compress"},             # + one entry kind (from the registry, at validation)
    "zero": {"type"},
}
FS_KEYS["ext3"] = FS_KEYS["ext4"] = FS_KEYS["ext2"]
for _fs in ("ext2", "xfs", "btrfs"):
    FS_KEYS[_fs].add("ostree")      # a part of an ostree sysroot built by immutools.replica.ostree
FS_KEYS["ext2"].add("shrink")         # resize2fs -M after mkfs (Bottlerocket BOOT/ROOT), shared by ext3/ext4


def validate_grafts(grafts: Any, where: str, tree_name: str) -> None:
    """``grafts.<tree>`` is a list of {set, source, name, from, into, mountpoint, exclude: [...], relocate: {...}};
    ``name`` (default: the tree's name) keys the facts under ``computed.trees``."""
    if not isinstance(grafts, list) or not grafts:
        raise SpecError(f"{where}: a list of {{set: NAME, from: /usr, into: /, ...}}")
    names = set()
    for i, g in enumerate(grafts):
        gw = f"{where}[{i}]"
        if not isinstance(g, dict) or "set" not in g:
            raise SpecError(f"{gw}: needs set: NAME (a package set)")
        _check_keys(g, GRAFT_KEYS, gw)
        if g.get("source", "debian-packages") not in GRAFT_SOURCES:
            raise SpecError(f"{gw}.source: {g['source']!r} (one of {', '.join(GRAFT_SOURCES)})")
        for key in ("from", "into", "mountpoint"):
            if key in g and (not isinstance(g[key], str) or not g[key].startswith("/") or ".." in g[key].split("/")):
                raise SpecError(f"{gw}.{key}: an absolute path inside the tree")
        if not isinstance(g.get("exclude", []), list) or not isinstance(g.get("relocate", {}), dict):
            raise SpecError(f"{gw}: exclude is a list of patterns, relocate a mapping of pattern to path")
        name = str(g.get("name") or tree_name)
        if name in names:
            raise SpecError(f"{gw}.name: {name!r} used twice (give each graft its own name)")
        names.add(name)


def validate_content(content: dict, where: str, trees: dict, part_bytes: int | None) -> None:
    ctype = content["type"]
    allowed = FS_KEYS[ctype] | (set(kinds.kind_names()) if ctype == "raw" else set())
    _check_keys(content, allowed, where)
    if "tree" in content and content["tree"] not in trees:
        raise SpecError(f"{where}.tree: no tree {content['tree']!r} under trees:")
    if "size" in content and part_bytes is not None:
        size = parse_size(content["size"], f"{where}.size")
        if size > part_bytes:
            raise SpecError(f"{where}.size: {size} bytes is larger than the partition ({part_bytes} bytes)")
    if ctype == "xfs":
        size = parse_size(content.get("size", part_bytes or 0), f"{where}.size")
        if size < 300 * 1024 * 1024 and "--unsupported" not in [str(o) for o in content.get("options") or []]:
            raise SpecError(f"{where}: xfs needs at least 300 MiB (mkfs.xfs refuses smaller), got {size} bytes")
    if ctype == "raw":
        names = kinds.kind_names()
        if len([k for k in names if k in content]) != 1:
            raise SpecError(f"{where}: raw content needs exactly one of {', '.join(names)}")
    if "uuid" in content and not TEMPLATE.search(str(content["uuid"])):
        parse_guid(content["uuid"], f"{where}.uuid")


def _validate_entry(entry: Any, where: str, trees: dict) -> None:
    """One tree entry: exactly one registered kind, the common keys, and the kind's own schema."""
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: an entry must be a mapping (text:, symlink:, dir:, elf:, ...)")
    kind = kinds.kind_of(entry, where)
    _check_keys(entry, kinds.ENTRY_COMMON | set(kinds.kind_names()), where)
    if "mode" in entry:
        parse_mode(entry["mode"], f"{where}.mode")
    for k in ("uid", "gid"):
        if k in entry:
            parse_int(entry[k], f"{where}.{k}")
    if entry.get("compress") not in (None, *kinds.COMPRESSIONS):
        raise SpecError(f"{where}.compress: {entry['compress']!r} ({', '.join(kinds.COMPRESSIONS)})")
    kinds.validate_value(kind, entry, where, trees, _validate_entry)


def list_specs(directory: Path | None = None, *, fullsize: bool = False) -> list[Spec]:
    """Every buildable (non-abstract) spec in ``directory`` (default: the packaged specs; with
    ``fullsize``, the full-size variants in ``replica-specs/fullsize/``)."""
    directory = directory or (specs_dir() / FULLSIZE if fullsize else specs_dir())
    out = []
    for path in sorted(directory.glob("*.yaml")):
        spec = load_spec(path)
        if not spec.abstract:
            out.append(spec)
    return out
