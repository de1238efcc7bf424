"""dm-verity metadata: superblock, hash-tree layout, dm tables, and offline verification.

Our own code: there is no Python library that reads or checks dm-verity offline (cryptsetup's
libcryptsetup needs the C library and, for most operations, device-mapper; ``veritysetup verify``
is the reference our tests compare against). The format facts come from:

* the kernel's ``Documentation/admin-guide/device-mapper/verity.rst`` (table syntax, hash tree);
* cryptsetup ``lib/verity/verity.c`` (the 512-byte superblock; the tree starts at the first hash
  block after the superblock: ``ceil((hash_offset + 512) / hash_block_size)``, or at
  ``hash_offset / hash_block_size`` without one) and ``lib/verity/verity_hash.c`` (tree layout and
  digests).

Tree layout (as cryptsetup computes it): ``hash_per_block`` is ``hash_block_size / digest_size``
rounded down to a power of two; the number of levels is the smallest L with
``(data_blocks - 1) >> (L * log2(hash_per_block)) == 0``; level ``i`` (0 = the one holding data-block
digests) has ``ceil(data_blocks / hash_per_block**(i+1))`` blocks; levels are stored from the top
down, so the top level comes first. Each digest is ``H(salt || block)`` for format version 1 and
``H(block || salt)`` for version 0 (Chrome OS). In version 1 every digest takes a slot of the next
power of two bytes, in version 0 digests are packed; the rest of a hash block is zero. The root hash
is the digest of the single top-level block (of data block 0 when there is only one data block).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError, UnsupportedFeatureError
from immutools.image.source import ByteSource

SUPERBLOCK_SIZE = 512
MAX_LEVELS = 63                 # cryptsetup VERITY_MAX_LEVELS
READ_CHUNK = 1 << 20            # hash data 1 MiB at a time


@dataclass
class VerityParams:
    """What dm-verity needs to map (and we need to check) a device.

    ``version`` is the dm-verity format / hash type: 1 normal, 0 Chrome OS. ``salt`` is hex ("" for
    none). ``hash_offset`` is the byte offset on the hash device of the superblock when
    ``superblock`` is true, else of the first tree block. ``root_hash`` is hex or None when unknown
    (a superblock does not store it).
    """

    version: int
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: str = ""
    root_hash: str | None = None
    hash_offset: int = 0
    superblock: bool = False
    uuid: str | None = None
    table: dict | None = None           # dm table fields when parsed from a table

    @property
    def hash_start_block(self) -> int:
        """First tree block on the hash device, in hash-block units (the dm table's hash_start)."""
        if self.superblock:
            return -(-(self.hash_offset + SUPERBLOCK_SIZE) // self.hash_block_size)
        return self.hash_offset // self.hash_block_size

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.data_block_size

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("version", "algorithm", "data_block_size", "hash_block_size", "data_blocks",
                                             "salt", "root_hash", "hash_offset", "superblock", "uuid")}
        out["hash_start_block"] = self.hash_start_block
        if self.table:
            out["table"] = self.table
        return out


@dataclass
class TreeLevel:
    level: int          # 0 holds the data blocks' digests; the highest is the single top block
    offset: int         # byte offset on the hash device
    blocks: int


@dataclass
class VerifyResult:
    ok: bool
    computed_root: str                      # root hash recomputed from the data
    expected_root: str | None
    root_matches: bool | None               # None when no root hash was given
    bad_data_blocks: list[int] = field(default_factory=list)   # first N, data-block numbers
    bad_hash_blocks: list[int] = field(default_factory=list)   # first N, hash-device block numbers
    bad_data_count: int = 0
    bad_hash_count: int = 0
    data_blocks: int = 0
    levels: list[TreeLevel] = field(default_factory=list)


# ---- parameters -----------------------------------------------------------------------------

def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_params(p: VerityParams) -> None:
    for what, size in (("data block size", p.data_block_size), ("hash block size", p.hash_block_size)):
        if not _is_pow2(size) or not 512 <= size <= (1 << 30):
            raise CorruptDataError(f"dm-verity {what} {size} is not a power of two between 512 bytes and 1 GiB")
    if p.version not in (0, 1):
        raise UnsupportedFeatureError(f"dm-verity hash type {p.version} is not supported (0 or 1)")
    if p.data_blocks <= 0:
        raise CorruptDataError(f"dm-verity data block count {p.data_blocks} is not positive")
    if p.hash_offset < 0:
        raise CorruptDataError("dm-verity hash offset is negative")
    try:
        bytes.fromhex(p.salt)
    except ValueError:
        raise CorruptDataError(f"dm-verity salt {p.salt!r} is not hex") from None
    _digest_size(p.algorithm)


def _digest_size(algorithm: str) -> int:
    try:
        return hashlib.new(algorithm).digest_size
    except (ValueError, TypeError):
        raise UnsupportedFeatureError(f"dm-verity hash algorithm {algorithm!r} is not available") from None


def read_superblock(source: ByteSource, offset: int = 0) -> VerityParams | None:
    """The verity superblock at ``offset`` of the hash device, or None when there is none."""
    from immutools.fs.probe import parse_verity_superblock

    raw = source.read_at(offset, SUPERBLOCK_SIZE)
    sb = parse_verity_superblock(raw)
    if sb is None:
        if raw[:8] == b"verity\0\0":
            # The magic is there but the header is not (e.g. a salt longer than the 256 bytes it can hold).
            raise CorruptDataError(f"{source.name}: dm-verity superblock at offset {offset} is damaged "
                                   f"(salt size {int.from_bytes(raw[80:82], 'little')})")
        return None
    if sb["version"] != 1:
        raise UnsupportedFeatureError(f"{source.name}: dm-verity superblock version {sb['version']} at offset {offset} (only 1 exists)")
    params = VerityParams(
        version=sb["hash_type"],
        algorithm=(sb["algorithm"] or "").lower(),
        data_block_size=sb["data_block_size"],
        hash_block_size=sb["hash_block_size"],
        data_blocks=sb["data_blocks"],
        salt=sb["salt"],
        hash_offset=offset,
        superblock=True,
        uuid=sb["uuid"],
    )
    try:
        _check_params(params)
    except (CorruptDataError, UnsupportedFeatureError) as exc:
        raise type(exc)(f"{source.name}: superblock at offset {offset}: {exc}") from None
    return params


def superblock_offset_before(table: VerityParams) -> int | None:
    """Where ``veritysetup format`` put the superblock for a table's hash start: the hash block
    before the tree (cryptsetup lib/verity/verity.c: the tree starts at the first hash block after
    the 512-byte superblock). None when the tree starts at block 0 (no room for one)."""
    offset = table.hash_start_block * table.hash_block_size - table.hash_block_size
    return offset if offset >= 0 else None


def contradictions(superblock: VerityParams, table: VerityParams) -> list[str]:
    """The fields in which a hash device's superblock disagrees with the dm table the kernel is
    given (the kernel maps the device from the table alone; ``veritysetup format`` writes both from
    one parameter set, so any difference means one of them was changed)."""
    out = []
    for what, a, b in (("hash type", superblock.version, table.version),
                       ("algorithm", superblock.algorithm, table.algorithm),
                       ("data block size", superblock.data_block_size, table.data_block_size),
                       ("hash block size", superblock.hash_block_size, table.hash_block_size),
                       ("data blocks", superblock.data_blocks, table.data_blocks),
                       ("salt", superblock.salt, table.salt),
                       ("hash start block", superblock.hash_start_block, table.hash_start_block)):
        if a != b:
            out.append(f"{what}: superblock {a}, table {b}")
    return out


def tree_layout(params: VerityParams) -> list[TreeLevel]:
    """Hash-tree levels in on-disk order (top level first), like cryptsetup's ``hash_levels``."""
    _check_params(params)
    digest_size = _digest_size(params.algorithm)
    ratio = params.hash_block_size // digest_size
    bits = ratio.bit_length() - 1 if ratio else 0      # log2 rounded down
    if bits < 1:
        raise CorruptDataError(f"dm-verity hash block size {params.hash_block_size} holds fewer than 2 {params.algorithm} digests")
    levels = 0
    while bits * levels < 64 and (params.data_blocks - 1) >> (bits * levels):
        levels += 1
    if levels > MAX_LEVELS:
        raise CorruptDataError(f"dm-verity tree would need {levels} levels")
    position = params.hash_start_block
    out = []
    for i in range(levels - 1, -1, -1):
        shift = (i + 1) * bits
        blocks = (params.data_blocks + (1 << shift) - 1) >> shift
        out.append(TreeLevel(i, position * params.hash_block_size, blocks))
        position += blocks
    return out


def hash_area_end(params: VerityParams) -> int:
    """Byte offset on the hash device just after the tree."""
    layout = tree_layout(params)
    if not layout:
        return params.hash_start_block * params.hash_block_size
    last = layout[-1]
    return last.offset + last.blocks * params.hash_block_size


# ---- dm tables ------------------------------------------------------------------------------

_TABLE_START = re.compile(r"^\s*\d+\s+\d+\s+\w")


def parse_dm_mod_create(text: str) -> list[dict]:
    """Split a ``dm-mod.create=`` value into devices: [{name, uuid, minor, flags, tables: [str]}].

    Syntax (Documentation/admin-guide/device-mapper/dm-init.rst):
    ``<name>,<uuid>,<minor>,<flags>,<table>[,<table>+][;<name>,...]``.
    """
    value = text.strip()
    if value.startswith("dm-mod.create="):
        value = value[len("dm-mod.create="):]
    value = value.strip().strip('"').strip("'")
    devices = []
    for dev in value.split(";"):
        if not dev.strip():
            continue
        fields = dev.split(",")
        if len(fields) < 5:
            raise CorruptDataError(f"dm-mod.create device {dev.strip()[:60]!r} has fewer than 5 comma-separated fields")
        name, uuid, minor, flags = (f.strip() for f in fields[:4])
        devices.append({"name": name, "uuid": uuid or None, "minor": minor or None, "flags": flags or None,
                        "tables": [t.strip() for t in fields[4:] if t.strip()]})
    return devices


def parse_dm_verity_table(text: str) -> VerityParams:
    """Parameters from a dm-verity table, bare or inside a ``dm-mod.create`` value.

    Table: ``<start> <sectors> verity <version> <data_dev> <hash_dev> <data_block_size>
    <hash_block_size> <num_data_blocks> <hash_start_block> <algorithm> <root_digest> <salt>
    [<#opt_params> <opt_params>...]``; a salt of ``-`` means none.
    """
    text = text.strip()
    device: dict = {}
    candidates: list[str]
    if _TABLE_START.match(text.strip('"')):
        candidates = [text.strip('"')]
    else:
        candidates = []
        for dev in parse_dm_mod_create(text):
            for table in dev["tables"]:
                candidates.append(table)
                device.setdefault(table, dev)
    for table in candidates:
        tokens = table.split()
        if len(tokens) >= 3 and tokens[2] == "verity":
            return _verity_from_tokens(tokens, device.get(table))
    raise CorruptDataError("no dm-verity target in the table")


def _verity_from_tokens(tokens: list[str], device: dict | None) -> VerityParams:
    if len(tokens) < 13:
        raise CorruptDataError(f"dm-verity table has {len(tokens)} fields, needs at least 13")
    try:
        start, sectors = int(tokens[0]), int(tokens[1])
        version = int(tokens[3])
        data_bs, hash_bs = int(tokens[6]), int(tokens[7])
        data_blocks, hash_start = int(tokens[8]), int(tokens[9])
    except ValueError:
        raise CorruptDataError(f"dm-verity table has a non-numeric field: {' '.join(tokens[:10])}") from None
    algorithm, digest, salt = tokens[10].lower(), tokens[11].lower(), tokens[12]
    options: list[str] = []
    if len(tokens) > 13:
        try:
            count = int(tokens[13])
        except ValueError:
            raise CorruptDataError(f"dm-verity table: optional argument count {tokens[13]!r} is not a number") from None
        options = tokens[14 : 14 + count]
        if len(options) != count or len(tokens) > 14 + count:
            raise CorruptDataError(f"dm-verity table: {count} optional arguments declared, {len(tokens) - 14} present")
    if not re.fullmatch(r"[0-9a-f]+", digest):
        raise CorruptDataError(f"dm-verity table: root digest {digest[:80]!r} is not hex")
    params = VerityParams(
        version=version,
        algorithm=algorithm,
        data_block_size=data_bs,
        hash_block_size=hash_bs,
        data_blocks=data_blocks,
        salt="" if salt == "-" else salt.lower(),
        root_hash=digest,
        hash_offset=hash_start * hash_bs,
        superblock=False,
        table={
            "start_sector": start,
            "sectors": sectors,
            "data_device": tokens[4],
            "hash_device": tokens[5],
            "hash_start_block": hash_start,
            "options": options,
            **({"name": device["name"], "dm_uuid": device["uuid"], "minor": device["minor"], "flags": device["flags"]}
               if device else {}),
        },
    )
    _check_params(params)
    if len(digest) != 2 * _digest_size(algorithm):
        raise CorruptDataError(f"dm-verity table: root digest has {len(digest) // 2} bytes, {algorithm} makes {_digest_size(algorithm)}")
    return params


# ---- verification ---------------------------------------------------------------------------

class _Hasher:
    """Salted block digests for one parameter set."""

    def __init__(self, params: VerityParams):
        self.salt = bytes.fromhex(params.salt)
        self.version = params.version
        self.algorithm = params.algorithm
        self.base = hashlib.new(params.algorithm)
        if self.version == 1:
            self.base.update(self.salt)
        self.size = self.base.digest_size

    def __call__(self, block) -> bytes:
        h = self.base.copy()
        h.update(block)
        if self.version == 0:
            h.update(self.salt)
        return h.digest()


class _TreeBuilder:
    """Builds the tree bottom-up from a stream of level-0 digests, keeping one partial block per
    level, the way ``veritysetup format`` writes it; yields the root."""

    def __init__(self, hasher: _Hasher, levels: int, hash_block_size: int, per_block: int, slot: int):
        self.hasher = hasher
        self.levels = levels
        self.hbs = hash_block_size
        self.per_block = per_block
        self.pad = bytes(slot - hasher.size)
        self.partial = [bytearray() for _ in range(levels)]
        self.counts = [0] * levels
        self.top: bytes | None = None

    def push(self, level: int, digest: bytes) -> None:
        buf = self.partial[level]
        buf += digest
        buf += self.pad
        self.counts[level] += 1
        if self.counts[level] == self.per_block:
            self._close(level)

    def _close(self, level: int) -> None:
        buf = self.partial[level]
        block = bytes(buf) + bytes(self.hbs - len(buf))
        self.partial[level] = bytearray()
        self.counts[level] = 0
        digest = self.hasher(block)
        if level + 1 < self.levels:
            self.push(level + 1, digest)
        else:
            self.top = digest

    def finish(self) -> bytes:
        for level in range(self.levels):
            if self.counts[level]:
                self._close(level)
        assert self.top is not None
        return self.top


def verify(data_source: ByteSource, hash_source: ByteSource, params: VerityParams, first_bad_limit: int = 10) -> VerifyResult:
    """Check a data area against its hash tree (what ``veritysetup verify`` does), offline.

    The root is recomputed from the data (``computed_root``). Separately every stored tree block is
    checked against the digest its parent stores, so a damaged block is named: a data block whose
    digest differs from the one stored in an intact hash block is a bad data block; a hash block
    whose digest differs from its intact parent's entry (or the top block against the root hash),
    or whose unused bytes are not zero, is a bad hash block (numbered in hash-block units from the
    start of the hash device). Entries under a damaged hash block are not blamed on their children.
    """
    layout = tree_layout(params)
    hasher = _Hasher(params)
    dsize = hasher.size
    dbs, hbs = params.data_block_size, params.hash_block_size
    per_block = 1 << ((hbs // dsize).bit_length() - 1)
    slot = 1 << (dsize - 1).bit_length() if params.version == 1 else dsize
    if params.data_size > data_source.size:
        raise CorruptDataError(f"{data_source.name}: data area of {params.data_size} bytes is larger than the {data_source.size}-byte device")
    tree_end = hash_area_end(params)
    if tree_end > hash_source.size:
        raise CorruptDataError(f"{hash_source.name}: hash tree ends at byte {tree_end}, beyond the {hash_source.size}-byte device")

    by_level = {lv.level: lv for lv in layout}
    nlevels = len(layout)
    builder = _TreeBuilder(hasher, nlevels, hbs, per_block, slot) if nlevels else None

    # mismatches[i]: child index -> parent hash-block index (within level i) for entries stored in level i
    data_mismatch: dict[int, list[int]] = {}      # level-0 block index -> mismatching data blocks
    data_mismatch_count: dict[int, int] = {}
    child_mismatch: list[set[int]] = [set() for _ in range(nlevels)]   # per level i: level i-1 blocks that mismatch
    bad_padding: list[set[int]] = [set() for _ in range(nlevels)]      # per level: blocks with non-zero spare bytes

    def check_padding(level: int, index: int, block: bytes, entries: int) -> None:
        if slot > dsize:
            for e in range(entries):
                if any(block[e * slot + dsize : (e + 1) * slot]):
                    bad_padding[level].add(index)
                    return
        if any(block[entries * slot :]):
            bad_padding[level].add(index)

    # Level 0: data blocks against the stored level-0 digests, and the builder.
    computed_root: bytes
    if nlevels == 0:
        computed_root = hasher(data_source.read_exact(0, dbs))
    else:
        level0 = by_level[0]
        group = max(1, (READ_CHUNK // dbs) // per_block) * per_block   # whole hash blocks per read
        first = 0
        while first < params.data_blocks:
            count = min(group, params.data_blocks - first)
            data = memoryview(data_source.read_exact(first * dbs, count * dbs))
            hb_first = first // per_block
            hb_count = -(-count // per_block)
            stored = hash_source.read_exact(level0.offset + hb_first * hbs, hb_count * hbs)
            for j in range(count):
                digest = hasher(data[j * dbs : (j + 1) * dbs])
                builder.push(0, digest)
                k, e = divmod(j, per_block)
                pos = k * hbs + e * slot
                if stored[pos : pos + dsize] != digest:
                    hb = hb_first + k
                    lst = data_mismatch.setdefault(hb, [])
                    if len(lst) < first_bad_limit:
                        lst.append(first + j)
                    data_mismatch_count[hb] = data_mismatch_count.get(hb, 0) + 1
            for k in range(hb_count):
                entries = min(per_block, params.data_blocks - (hb_first + k) * per_block)
                check_padding(0, hb_first + k, stored[k * hbs : (k + 1) * hbs], entries)
            first += count
        computed_root = builder.finish()

        # Upper levels: stored level i-1 blocks against the entries stored in level i.
        for i in range(1, nlevels):
            child, parent = by_level[i - 1], by_level[i]
            group_blocks = max(1, READ_CHUNK // hbs // per_block) * per_block
            first = 0
            while first < child.blocks:
                count = min(group_blocks, child.blocks - first)
                blocks = hash_source.read_exact(child.offset + first * hbs, count * hbs)
                pb_first = first // per_block
                pb_count = -(-count // per_block)
                stored = hash_source.read_exact(parent.offset + pb_first * hbs, pb_count * hbs)
                for j in range(count):
                    digest = hasher(blocks[j * hbs : (j + 1) * hbs])
                    k, e = divmod(j, per_block)
                    pos = k * hbs + e * slot
                    if stored[pos : pos + dsize] != digest:
                        child_mismatch[i].add(first + j)
                for k in range(pb_count):
                    entries = min(per_block, child.blocks - (pb_first + k) * per_block)
                    check_padding(i, pb_first + k, stored[k * hbs : (k + 1) * hbs], entries)
                first += count

    # Attribute damage top-down: a block is bad if its parent is intact and disagrees with it.
    expected = params.root_hash.lower() if params.root_hash else None
    bad: list[set[int]] = [set() for _ in range(nlevels)]
    if nlevels:
        top = by_level[nlevels - 1]
        top_block = hash_source.read_exact(top.offset, hbs)
        stored_top_digest = hasher(top_block)
        if (expected is not None and stored_top_digest.hex() != expected) or 0 in bad_padding[nlevels - 1]:
            bad[nlevels - 1].add(0)
        for i in range(nlevels - 1, 0, -1):
            for idx in child_mismatch[i]:
                if idx // per_block not in bad[i]:
                    bad[i - 1].add(idx)
            bad[i - 1] |= bad_padding[i - 1]
    bad_data: list[int] = []
    bad_data_count = 0
    for hb in sorted(data_mismatch):
        if nlevels and hb in bad[0]:
            continue
        bad_data.extend(data_mismatch[hb])
        bad_data_count += data_mismatch_count[hb]
    if nlevels == 0 and expected is not None and computed_root.hex() != expected:
        bad_data, bad_data_count = [0], 1
    bad_hash_abs = sorted(by_level[i].offset // hbs + idx for i in range(nlevels) for idx in bad[i])

    root_matches = None if expected is None else computed_root.hex() == expected
    ok = root_matches is not False and not bad_data_count and not bad_hash_abs and not any(child_mismatch) and not data_mismatch
    return VerifyResult(
        ok=ok,
        computed_root=computed_root.hex(),
        expected_root=expected,
        root_matches=root_matches,
        bad_data_blocks=sorted(bad_data)[:first_bad_limit],
        bad_hash_blocks=bad_hash_abs[:first_bad_limit],
        bad_data_count=bad_data_count,
        bad_hash_count=len(bad_hash_abs),
        data_blocks=params.data_blocks,
        levels=layout,
    )
