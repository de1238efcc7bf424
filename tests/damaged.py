"""A corpus of damaged and hostile images derived from the replicas, and the rules every scan of
one must keep.

Each ``Case`` makes one damaged file from a cached replica (``tests/replicas.py``) or from nothing:
truncation at every structure boundary (MBR, GPT header, GPT entries, each partition's start, its
superblock, its middle, the backup GPT), broken primary and backup GPT, overlapping and out-of-range
partitions, corrupted superblocks, ext4 inode tables, directory and symlink loops and links out of
the image (made with ``debugfs -w`` on ext4 copies), MBR extended-partition loops, decompression
bombs of every codec (the whole image, and nested: a UKI's ``.initrd`` and ``.linux``), VM
containers with hostile headers, random and empty files. Replicas are sparse (a few MiB allocated),
so a damaged copy costs milliseconds; what is expensive (bombs) is cached with ``builders.cached``.

``run_cli`` runs ``immutools`` in a child process with an address-space backstop
(``RLIMIT_AS``) and returns its exit code, output and peak RSS (``os.wait4``); ``check`` applies the
rules: a documented exit code with one line on stderr and no traceback, or a report (exit 0) that
lists warnings; within a generous timeout; under ``MAX_RSS_MB``; the input unchanged (size, times
and a digest of its data extents); and no byte of a host file the image points at in the output.

``python tests/damaged.py list [GROUP]`` lists the cases; ``python tests/damaged.py run GROUP``
scans them and prints one line per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import cached, run  # noqa: E402
from measured import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED_EXITS = {"scan": {0, 3, 4, 5}, "verify": {0, 3, 4, 5, 6, 7}, "ls": {0, 3, 4, 5}}
MAX_RSS_MB = 300                      # the bound a scan keeps whatever the image holds
# RLIMIT_AS backstop for the child: 4 GiB, because rapidgzip reserves more than 2 GiB of address
# space for its thread pool and dies of SIGSEGV when that fails (test_hostile_damaged pins it).
ADDRESS_SPACE = 4 << 30
TIMEOUT = 300                         # seconds: generous, a hang, not a speed test
SECTOR = 512
BOMB_BYTES = 2 << 30                  # what each bomb expands to

# Where each filesystem keeps the superblock (offset, length) inside its partition, by blkid TYPE.
SUPERBLOCKS = {
    "ext2": (1024, 1024), "ext3": (1024, 1024), "ext4": (1024, 1024), "xfs": (0, 512), "btrfs": (65536, 4096),
    "squashfs": (0, 96), "erofs": (1024, 128), "vfat": (0, 512), "DM_verity_hash": (0, 512),
    "crypto_LUKS": (0, 4096), "iso9660": (32768, 2048),
}


# ------------------------------------------------------------------------------------------------
# running the CLI and checking the rules
# ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    max_rss_mb: float
    wall_s: float
    timed_out: bool = False


def run_cli(args: list[str], timeout: float = TIMEOUT, env: dict | None = None,
            address_space: int = ADDRESS_SPACE) -> Outcome:
    """``python -m immutools ARGS`` in a child; its own peak RSS (see ``tests/measured.py``)."""
    m = run_measured([sys.executable, "-m", "immutools", *args], timeout=timeout, address_space=address_space,
                     cwd=REPO, env=dict(os.environ, **(env or {})))
    return Outcome(m.code, m.stdout.decode(errors="replace"), m.stderr.decode(errors="replace"),
                   m.max_rss_kib / 1024, m.wall_s, m.timed_out)


def file_state(path: Path) -> tuple:
    """Size, modification/change times and a digest of the data extents (SEEK_DATA/SEEK_HOLE, so a
    sparse 10 GiB replica is hashed in milliseconds)."""
    st = os.stat(path)
    if not os.path.isfile(path):
        return st.st_mode, st.st_mtime_ns, st.st_ctime_ns
    h = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < st.st_size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            h.update(struct.pack("<QQ", start, end))
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            pos = end
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, h.hexdigest()


@dataclass
class Case:
    """One damaged input: ``make(path)`` writes it. ``codes``: the exit codes this input may give
    (a subset of the documented ones); ``warn``: an exit-0 report must list warnings."""

    name: str
    make: Callable[[Path], None]
    command: str = "scan"
    codes: frozenset | None = None
    warn: bool = True
    secret: bytes | None = None          # host content the image points at: must never be output
    max_rss_mb: float = MAX_RSS_MB
    note: str = ""


def check(case: Case, outcome: Outcome, before: tuple, after: tuple) -> list[str]:
    """The rules; returns what was broken (empty when the case passes)."""
    problems = []
    allowed = case.codes if case.codes is not None else DOCUMENTED_EXITS[case.command]
    if outcome.timed_out:
        return [f"no result within {TIMEOUT} s (a hang)"]
    if outcome.code not in allowed:
        problems.append(f"exit {outcome.code}, expected one of {sorted(allowed)}: {outcome.stderr.strip()[:400]}")
    if "Traceback" in outcome.stderr or "Traceback" in outcome.stdout:
        problems.append("traceback in the output")
    verdict = case.command == "verify" and outcome.code in (0, 6, 7)     # a result, not an error
    if verdict:
        try:
            result = json.loads(outcome.stdout)
            expected = {0: "verified", 6: "failed", 7: "nothing-to-verify"}[outcome.code]
            if result.get("status") != expected:
                problems.append(f"verify exit {outcome.code} with status {result.get('status')!r}")
        except ValueError:
            problems.append(f"verify exit {outcome.code} without a JSON result")
    elif outcome.code not in (0, None):
        lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr for exit {outcome.code}, expected 1: {outcome.stderr[:400]!r}")
    elif outcome.code == 0 and case.command == "scan":
        try:
            report = json.loads(outcome.stdout)
        except ValueError:
            problems.append("exit 0 without a JSON report")
        else:
            if case.warn and not report.get("warnings"):
                problems.append("exit 0 and no warning for a damaged image")
    if outcome.max_rss_mb > case.max_rss_mb:
        problems.append(f"peak RSS {outcome.max_rss_mb:.0f} MB > {case.max_rss_mb} MB")
    if before != after:
        problems.append("the input changed")
    if case.secret and (case.secret.decode() in outcome.stdout or case.secret.decode() in outcome.stderr):
        problems.append("host file content in the output")
    return problems


def run_case(case: Case, workdir: Path) -> tuple[Case, Outcome | None, list[str]]:
    path = workdir / (case.name.replace("/", "__") + ".img")
    try:
        case.make(path)
    except Exception as exc:  # noqa: BLE001 - a case that cannot be made is a test failure, said once
        return case, None, [f"cannot make the case: {type(exc).__name__}: {exc}"]
    try:
        before = file_state(path)
        args = [case.command, str(path)] + (["--format", "json"] if case.command in ("scan", "verify") else [])
        outcome = run_cli(["--no-cache", *args])
        after = file_state(path)
        return case, outcome, check(case, outcome, before, after)
    finally:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_cases(cases: list[Case], workdir: Path, jobs: int = 2) -> list[tuple[Case, Outcome | None, list[str]]]:
    """Make and scan every case (``jobs`` at a time: the machine is shared)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda c: run_case(c, workdir), cases))


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
def sparse_copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def partitions(image: Path) -> list[dict]:
    """The reference partition table (``sfdisk --json``) with blkid's TYPE for each partition."""
    table = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    out = []
    for p in table.get("partitions", []):
        start, size = p["start"] * SECTOR, p["size"] * SECTOR
        probe = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(start), "-S", str(size), str(image)],
                               capture_output=True, text=True)
        kv = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        number = int("".join(ch for ch in p["node"][len(p["node"].rstrip("0123456789")):]))
        out.append({"number": number, "start": start, "size": size, "name": p.get("name"), "type": kv.get("TYPE")})
    return out


def replica(name: str, form: str = "raw") -> Path:
    from replicas import build_replica

    return build_replica(name, form)


class Gpt:
    """Edit a GPT (UEFI 2.10 §5.3) in place, keeping or breaking its CRCs on purpose."""

    def __init__(self, path: Path):
        self.path = path
        self.size = os.path.getsize(path)

    def _header(self, lba: int) -> bytearray:
        with open(self.path, "rb") as f:
            f.seek(lba * SECTOR)
            return bytearray(f.read(SECTOR))

    def headers(self) -> list[tuple[int, bytearray]]:
        primary = self._header(1)
        backup_lba = struct.unpack_from("<Q", primary, 32)[0]
        return [(1, primary), (backup_lba, self._header(backup_lba))]

    def edit_entry(self, index: int, first: int | None = None, last: int | None = None) -> None:
        """Change entry ``index`` in both copies, with every CRC recomputed (a well-formed lie)."""
        for lba, hdr in self.headers():
            entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
            with open(self.path, "r+b") as f:
                f.seek(entries_lba * SECTOR)
                entries = bytearray(f.read(count * esize))
                if first is not None:
                    struct.pack_into("<Q", entries, index * esize + 32, first)
                if last is not None:
                    struct.pack_into("<Q", entries, index * esize + 40, last)
                f.seek(entries_lba * SECTOR)
                f.write(entries)
            struct.pack_into("<I", hdr, 88, zlib.crc32(entries))
            self.write_header(lba, hdr)

    def write_header(self, lba: int, hdr: bytearray, fix_crc: bool = True) -> None:
        if fix_crc:
            size = struct.unpack_from("<I", hdr, 12)[0]
            struct.pack_into("<I", hdr, 16, 0)
            struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[: min(size, SECTOR)])))
        write_at(self.path, lba * SECTOR, bytes(hdr))

    def used_entries(self) -> list[int]:
        _lba, hdr = self.headers()[0]
        entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
        with open(self.path, "rb") as f:
            f.seek(entries_lba * SECTOR)
            data = f.read(count * esize)
        return [i for i in range(count) if any(data[i * esize : i * esize + 16])]


def _derived(base: Callable[[], Path], *edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        sparse_copy(base(), path)
        for edit in edits:
            edit(path)
    return make


def _truncate_to(n: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        os.truncate(path, n)
    return edit


def _overwrite(offset: int, data: bytes) -> Callable[[Path], None]:
    return lambda path: write_at(path, offset, data)


def _random_bytes(seed: str, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------------------------------------
# case families
# ------------------------------------------------------------------------------------------------
def truncations(spec: str, every_partition: bool = True) -> list[Case]:
    """Cut the image at each structure boundary the reference tools name."""
    base = lambda: replica(spec)  # noqa: E731
    image = base()
    size = os.path.getsize(image)
    points = {"empty": 0, "one-byte": 1, "mbr-boot-code": 440, "mbr-only": 512, "gpt-header-half": 512 + 46,
              "gpt-header-only": 1024, "gpt-entries-half": 1024 + 8192, "gpt-entries-only": 34 * SECTOR,
              "no-backup-gpt": size - SECTOR, "half": size // 2}
    for p in partitions(image) if every_partition else partitions(image)[:3]:
        tag = f"p{p['number']}"
        points[f"{tag}-start"] = p["start"]
        if p["type"] in SUPERBLOCKS:
            off, length = SUPERBLOCKS[p["type"]]
            points[f"{tag}-in-{p['type']}-superblock"] = p["start"] + off + length // 2
        points[f"{tag}-middle"] = p["start"] + p["size"] // 2
    cases = []
    for what, n in sorted(points.items(), key=lambda kv: kv[1]):
        if 0 <= n < size:
            cases.append(Case(f"{spec}/truncate/{what}@{n}", _derived(base, _truncate_to(n))))
    return cases


def gpt_damage(spec: str) -> list[Case]:
    base = lambda: replica(spec)  # noqa: E731
    image = base()
    size = os.path.getsize(image)
    used = Gpt(image).used_entries()
    a, b = used[0], used[min(1, len(used) - 1)]
    last_lba = size // SECTOR - 1

    def break_primary_header(path):
        write_at(path, SECTOR + 56, b"\xff" * 16)                      # disk GUID changed, CRC kept

    def break_primary_entries(path):
        lba = struct.unpack_from("<Q", Gpt(path).headers()[0][1], 72)[0]
        write_at(path, lba * SECTOR + 56, b"\xa5" * 8)                  # an entry's name, entries CRC kept

    def zero_backup(path):
        write_at(path, Gpt(path).headers()[1][0] * SECTOR, bytes(SECTOR))

    def zero_both(path):
        backup = Gpt(path).headers()[1][0]
        write_at(path, SECTOR, bytes(SECTOR))
        write_at(path, backup * SECTOR, bytes(SECTOR))

    def header_field(offset, fmt, value):
        def edit(path):
            g = Gpt(path)
            for lba, hdr in g.headers():
                struct.pack_into(fmt, hdr, offset, value)
                g.write_header(lba, hdr)
        return edit

    def overlap(path):
        g = Gpt(path)
        first_a = _entry_range(g, a)[0]
        g.edit_entry(b, first=first_a)

    def beyond_end(path):
        Gpt(path).edit_entry(a, last=last_lba + (1 << 30))

    def reversed_range(path):
        first, last = _entry_range(Gpt(path), a)
        Gpt(path).edit_entry(a, first=last, last=first)

    def over_table(path):
        Gpt(path).edit_entry(a, first=1)

    def backup_points_to_itself_loop(path):
        # The primary's alternate LBA pointing at the primary; the backup broken.
        zero_backup(path)
        g = Gpt(path)
        lba, hdr = g.headers()[0]
        struct.pack_into("<Q", hdr, 32, 1)
        g.write_header(lba, hdr)

    edits = {
        "primary-header-crc": break_primary_header,
        "primary-entries-crc": break_primary_entries,
        "backup-zeroed": zero_backup,
        "both-headers-zeroed": zero_both,
        "protective-mbr-zeroed": _overwrite(446, bytes(66)),
        "entry-count-2^31": header_field(80, "<I", 1 << 31),
        "entry-size-0": header_field(84, "<I", 0),
        "entry-size-7": header_field(84, "<I", 7),
        "entries-lba-beyond-end": header_field(72, "<Q", last_lba + 100),
        "header-size-huge": header_field(12, "<I", 1 << 30),
        # (needs two partitions: a one-partition table, such as a Bottlerocket data disk, has nothing to overlap)
        **({"overlapping-partitions": overlap} if len(used) > 1 else {}),
        "partition-beyond-end": beyond_end,
        "partition-first-after-last": reversed_range,
        "partition-over-the-table": over_table,
        "alternate-lba-loop": backup_points_to_itself_loop,
    }
    return [Case(f"{spec}/gpt/{what}", _derived(base, edit)) for what, edit in edits.items()]


def _entry_range(g: Gpt, index: int) -> tuple[int, int]:
    _lba, hdr = g.headers()[0]
    entries_lba, _count, esize = struct.unpack_from("<QII", hdr, 72)
    with open(g.path, "rb") as f:
        f.seek(entries_lba * SECTOR + index * esize + 32)
        return struct.unpack("<QQ", f.read(16))


# Distributions whose boot chain gives the kernel the whole dm-verity table (the superblock on the
# hash device is not read at boot; immutools/verify.py): a wiped superblock there still verifies.
TABLE_SOURCED = ("bottlerocket", "cos")


def superblock_damage(spec: str) -> list[Case]:
    """Zero, or fill with random bytes, each partition's superblock (the magic kept, the fields
    random: a third case). A dm-verity hash partition is also checked with ``verify``, which must
    fail where the superblock gives the parameters, and accept a wiped one where the table does."""
    base = lambda: replica(spec)  # noqa: E731
    cases = []
    for p in partitions(base()):
        if p["type"] not in SUPERBLOCKS:
            continue
        off, length = SUPERBLOCKS[p["type"]]
        at = p["start"] + off
        tag = f"p{p['number']}-{p['type']}"
        edits = {"zeroed": _overwrite(at, bytes(length)), "random": _overwrite(at, _random_bytes(f"{spec}{tag}", length))}
        if p["type"] not in ("ext2", "ext3", "ext4"):       # ext keeps its magic at 0x38: "random" covers it
            edits["fields-random"] = _overwrite(at + 8, _random_bytes(f"{spec}{tag}f", min(length, 512) - 8))
        verity = p["type"] == "DM_verity_hash"
        for what, edit in edits.items():
            cases.append(Case(f"{spec}/superblock/{tag}-{what}", _derived(base, edit), warn=not verity))
            if verity:
                table = spec.startswith(TABLE_SOURCED)
                codes = {0} if table and what != "fields-random" else {6}
                cases.append(Case(f"{spec}/superblock/{tag}-{what}/verify", _derived(base, edit), command="verify",
                                  codes=frozenset(codes)))
    return cases


def _debugfs(offset: int, commands: list[str]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            run(["debugfs", "-w", "-f", script.name, f"{path}?offset={offset}"])
    return edit


def _ext_group0_inode_table(path: Path, offset: int) -> tuple[int, int]:
    """(first block of group 0's inode table, block size) from ``dumpe2fs``."""
    out = run(["dumpe2fs", f"{path}?offset={offset}"]).stdout.decode()
    block_size = int(next(ln.split(":")[1] for ln in out.splitlines() if ln.startswith("Block size:")))
    line = next(ln for ln in out.splitlines() if "Inode table at" in ln)
    first = int(line.split("Inode table at")[1].split("-")[0].strip())
    return first, block_size


def host_marker() -> tuple[Path, bytes]:
    """A file on the host that damaged images point at; its content must never show up."""
    secret = hashlib.sha256(b"immutools-hostile" + str(os.getpid()).encode()).hexdigest().encode()
    path = Path(tempfile.gettempdir()) / f"immutools-host-marker-{os.getpid()}"
    if not path.exists():
        path.write_bytes(b"ID=host-secret-" + secret + b"\n")
    return path, secret


def ext4_damage(spec: str, fs_root: str = "/") -> list[Case]:
    """Loops, escapes and broken metadata in the ext4 root of ``spec`` (``debugfs -w`` on copies)."""
    base = lambda: replica(spec)  # noqa: E731
    root = next(p for p in partitions(base()) if p["type"] == "ext4" and p["size"] > 64 << 20)
    off = root["start"]
    marker, secret = host_marker()
    etc = fs_root.rstrip("/") + "/etc"
    # os-release is read from /etc, then /usr/lib (os-release(5)): both are replaced
    osr = [f"{etc}/os-release", fs_root.rstrip("/") + "/usr/lib/os-release"]
    rm = [f"rm {p}" for p in osr]

    def each(fmt: str) -> list[str]:
        return [fmt.format(p=p) for p in osr]

    cases = [
        Case(f"{spec}/ext4/dir-hardlink-loop", _derived(base, _debugfs(off, [f"link {etc} {etc}/loop", f"link / {etc}/up"]))),
        Case(f"{spec}/ext4/symlink-self-loop", _derived(base, _debugfs(off, rm + each("symlink {p} {p}")))),
        Case(f"{spec}/ext4/symlink-mutual-loop",
             _derived(base, _debugfs(off, rm + each("symlink {p} {p}.b") + each("symlink {p}.b {p}")))),
        Case(f"{spec}/ext4/symlink-to-host-absolute", _derived(base, _debugfs(off, rm + each(f"symlink {{p}} {marker}"))),
             secret=secret, warn=False),
        Case(f"{spec}/ext4/symlink-to-host-dotdot",
             _derived(base, _debugfs(off, rm + each(f"symlink {{p}} {'../' * 12}{str(marker).lstrip('/')}"))),
             secret=secret, warn=False),
        Case(f"{spec}/ext4/os-release-claims-exabytes", _derived(base, _debugfs(off, [f"sif {osr[1]} size 0x1000000000000000"]))),
        Case(f"{spec}/ext4/etc-not-a-directory", _derived(base, _debugfs(off, [f"sif {etc} mode 0100644"])), warn=False),
        Case(f"{spec}/ext4/directories-300-deep",
             _derived(base, _debugfs(off, [f"mkdir {etc}/deep" + "/d" * i for i in range(300)])), warn=False),
        Case(f"{spec}/ext4/root-inode-cleared", _derived(base, _debugfs(off, ["clri <2>"]))),
        Case(f"{spec}/ext4/etc-directory-block-garbage", _derived(base, _etc_block_garbage(off, etc))),
        Case(f"{spec}/ext4/inode-table-random", _derived(base, _inode_table_random(off))),
    ]
    return cases


def _etc_block_garbage(offset: int, etc: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        out = run(["debugfs", "-R", f"blocks {etc}", f"{path}?offset={offset}"]).stdout.decode().split()
        _first, block_size = _ext_group0_inode_table(path, offset)
        block = int(out[0])
        write_at(path, offset + block * block_size, _random_bytes("etc-block", block_size))
    return edit


def _inode_table_random(offset: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        first, block_size = _ext_group0_inode_table(path, offset)
        write_at(path, offset + first * block_size, _random_bytes("inode-table", 4 * block_size))
    return edit


def mbr_loops() -> list[Case]:
    """MBR disks made by hand: an extended partition whose EBR points at itself, a chain longer than
    any limit, a logical partition out of range."""
    def disk(ebr_links: Callable[[int], list[tuple[int, int, int, int]]], size: int = 64 << 20):
        def make(path: Path) -> None:
            with open(path, "wb") as f:
                f.truncate(size)
            mbr = bytearray(SECTOR)
            ext_start = 2048
            struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\0\0", 0x05, b"\0\0\0", ext_start, size // SECTOR - ext_start)
            mbr[510:512] = b"\x55\xaa"
            write_at(path, 0, bytes(mbr))
            for lba, entries in _ebrs(ext_start, ebr_links):
                write_at(path, lba * SECTOR, entries)
        return make

    def _ebrs(ext_start, links):
        for lba, (l_start, l_size, next_rel, next_size) in links(ext_start):
            e = bytearray(SECTOR)
            struct.pack_into("<B3sB3sII", e, 446, 0, b"\0\0\0", 0x83, b"\0\0\0", l_start, l_size)
            if next_rel is not None:
                struct.pack_into("<B3sB3sII", e, 462, 0, b"\0\0\0", 0x05, b"\0\0\0", next_rel, next_size)
            e[510:512] = b"\x55\xaa"
            yield lba, bytes(e)

    self_loop = lambda ext: [(ext, (63, 1000, 0, 2000))]                                         # noqa: E731
    two_loop = lambda ext: [(ext, (63, 100, 200, 300)), (ext + 200, (63, 100, 0, 300))]           # noqa: E731
    long_chain = lambda ext: [(ext + 8 * i, (4, 2, 8 * (i + 1), 8)) for i in range(1000)]          # noqa: E731
    out_of_range = lambda ext: [(ext, (1 << 31, 1 << 31, None, None))]                            # noqa: E731
    return [Case(f"mbr/{name}", disk(links)) for name, links in
            (("ebr-self-loop", self_loop), ("ebr-two-loop", two_loop), ("ebr-chain-1000", long_chain),
             ("logical-out-of-range", out_of_range))]


def random_files() -> list[Case]:
    def blob(data: bytes) -> Callable[[Path], None]:
        return lambda path: path.write_bytes(data)

    def magic_only(offset: int, magic: bytes, size: int = 0x11000) -> Callable[[Path], None]:
        def make(path: Path) -> None:
            b = bytearray(size)
            b[offset : offset + len(magic)] = magic
            path.write_bytes(bytes(b))
        return make

    def sparse(size: int) -> Callable[[Path], None]:
        def make(path: Path) -> None:
            with open(path, "wb") as f:
                f.truncate(size)
        return make

    gpt_sig = bytearray(_random_bytes("gpt-sig", 1 << 20))
    gpt_sig[512:520] = b"EFI PART"
    bad_image = 3
    cases = [
        Case("files/empty", blob(b""), codes=frozenset({bad_image})),
        Case("files/one-byte", blob(b"\x00"), codes=frozenset({bad_image})),
        Case("files/sector-of-ff", blob(b"\xff" * 512), codes=frozenset({bad_image})),
        Case("files/random-4k", blob(_random_bytes("r4k", 4096)), codes=frozenset({bad_image})),
        Case("files/random-1m", blob(_random_bytes("r1m", 1 << 20)), codes=frozenset({bad_image})),
        Case("files/random-with-gpt-signature", blob(bytes(gpt_sig))),
        Case("files/sparse-zeros-8g", sparse(8 << 30), codes=frozenset({bad_image})),
        Case("files/directory", lambda path: path.mkdir(), codes=frozenset({bad_image})),
    ]
    magics = {"ext4": (1024 + 0x38, struct.pack("<H", 0xEF53)), "erofs": (1024, struct.pack("<I", 0xE0F5E1E2)),
              "xfs": (0, b"XFSB"), "btrfs": (0x10040, b"_BHRfS_M"), "squashfs": (0, b"hsqs"),
              "verity": (0, b"verity\0\0"), "luks": (0, b"LUKS\xba\xbe"), "qcow2": (0, b"QFI\xfb"),
              "vhdx": (0, b"vhdxfile"), "vmdk": (0, b"KDMV"), "xz": (0, b"\xfd7zXZ\0"), "zstd": (0, b"\x28\xb5\x2f\xfd")}
    for name, (off, magic) in magics.items():
        cases.append(Case(f"files/magic-only-{name}", magic_only(off, magic), codes=frozenset({3, 4, 5})))
    return cases


# -- bombs ---------------------------------------------------------------------------------------
COMPRESSORS = {
    "gzip": ["gzip", "-1", "-n", "-c"],
    "bzip2": ["bzip2", "-1", "-c"],
    "xz": ["xz", "-0", "-T1", "--check=crc32", "-c"],
    "zstd": ["zstd", "-q", "-1", "-c"],
    "zstd-long27": ["zstd", "-q", "-19", "--long=27", "-c"],
    "lz4": ["lz4", "-q", "-c"],
    "lz4-legacy": ["lz4", "-q", "-l", "-c"],
    "lzma": ["lzma", "-0", "-c"],
}


def compressed_zeros(codec: str, size: int = BOMB_BYTES, head: bytes = b"") -> Path:
    """``head`` then ``size`` zero bytes, compressed with the real tool (cached)."""
    def build(out: Path) -> None:
        with open(out, "wb") as f:
            proc = subprocess.Popen(COMPRESSORS[codec], stdin=subprocess.PIPE, stdout=f)
            proc.stdin.write(head)
            zero = bytes(1 << 20)
            for _ in range(size // len(zero)):
                proc.stdin.write(zero)
            proc.stdin.close()
            if proc.wait() != 0:
                raise RuntimeError(f"{codec} failed")
    return cached(f"bomb-{codec}", {"v": 1, "codec": codec, "size": size, "head": hashlib.sha256(head).hexdigest()},
                  build, suffix=".bin")


def disk_bombs(codecs=("gzip", "bzip2", "xz", "zstd", "lz4"), size: int = 256 << 20, with_head: bool = False) -> list[Case]:
    """A whole image that is a compressed stream of zeros (``with_head``: behind 1 MiB of random
    bytes, so the leading-zeros rule does not apply and only the output bound stops it)."""
    head = _random_bytes("bomb-head", 1 << 20) if with_head else b""
    tag = "head+zeros" if with_head else "zeros"
    out = []
    for codec in codecs:
        src = compressed_zeros(codec, size, head)
        out.append(Case(f"bombs/disk-{codec}-{tag}-{size >> 20}m", lambda path, src=src: shutil.copyfile(src, path),
                        codes=frozenset({3, 5})))
    return out


UKI_SPEC = "talos-v1.12.2-amd64-secureboot-upgraded"     # the booted entry is a UKI on the ESP
UKI_PATH = "::EFI/Linux/Talos-v1.12.2.efi"


def _esp_offset(image: Path) -> int:
    return next(p for p in partitions(image) if p["type"] == "vfat")["start"]


def uki_with_section(section: str, payload: Path) -> Callable[[Path], None]:
    """The Talos replica with its booted UKI's ``section`` replaced by ``payload`` (objcopy), put
    back on the ESP with mtools."""
    def make(path: Path) -> None:
        base = replica(UKI_SPEC)
        sparse_copy(base, path)
        at = f"{path}@@{_esp_offset(path)}"
        with tempfile.TemporaryDirectory() as tmp:
            uki, new = Path(tmp) / "uki.efi", Path(tmp) / "new.efi"
            run(["mcopy", "-n", "-i", at, UKI_PATH, str(uki)])
            run(["objcopy", "--update-section", f"{section}={payload}", str(uki), str(new)])
            run(["mcopy", "-o", "-i", at, str(new), UKI_PATH])
    return make


def cpio_with_zero_file(codec: str, size: int) -> Path:
    """A newc cpio holding one ``size``-byte file of zeros, compressed (cached)."""
    def build(out: Path) -> None:
        name = b"zeros\0"
        hdr = b"070701" + b"".join(f"{v:08X}".encode() for v in
                                     (1, 0o100644, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name), 0))
        pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
        trailer_name = b"TRAILER!!!\0"
        trailer = b"070701" + b"".join(f"{v:08X}".encode() for v in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer_name), 0))
        with open(out, "wb") as f:
            proc = subprocess.Popen(COMPRESSORS[codec], stdin=subprocess.PIPE, stdout=f)
            proc.stdin.write(hdr + name + pad(110 + len(name)))
            zero = bytes(1 << 20)
            for _ in range(size // len(zero)):
                proc.stdin.write(zero)
            proc.stdin.write(pad(size) + trailer + trailer_name + pad(110 + len(trailer_name)))
            proc.stdin.close()
            if proc.wait() != 0:
                raise RuntimeError(f"{codec} failed")
    return cached(f"cpio-zerofile-{codec}", {"v": 1, "codec": codec, "size": size}, build, suffix=".bin")


def nested_bombs(codecs=("xz", "zstd-long27", "gzip", "lz4-legacy", "bzip2", "lzma")) -> list[Case]:
    """A UKI's ``.initrd`` that expands to 2 GiB of zeros (each codec), one whose cpio holds a
    900 MiB file of zeros (under the nested limit: unpacked to a sparse temporary file), and a
    ``.linux`` kernel that is a gzip bomb."""
    replica(UKI_SPEC)
    out = [Case(f"nested/uki-initrd-{codec}-2g-zeros", uki_with_section(".initrd", compressed_zeros(codec)),
                codes=frozenset({0}), warn=True) for codec in codecs]
    out.append(Case("nested/uki-initrd-xz-cpio-900m-file", uki_with_section(".initrd", cpio_with_zero_file("xz", 900 << 20)),
                    codes=frozenset({0}), warn=True))
    out.append(Case("nested/uki-linux-gzip-2g-zeros", uki_with_section(".linux", compressed_zeros("gzip")),
                    codes=frozenset({0}), warn=False))
    return out


def vm_containers(spec: str = "flatcar-stable-4593-amd64-pristine") -> list[Case]:
    """The qcow2 form cut at its header, L1 table and middle; a qcow2 whose backing file is a host
    file; a VHD footer alone."""
    marker, secret = host_marker()
    qcow_image = replica(spec, "qcow2")
    qcow = lambda: qcow_image  # noqa: E731

    def l1_offset(path: Path) -> int:
        with open(path, "rb") as f:
            return struct.unpack(">Q", f.read(48)[40:48])[0]

    def cut_at(fn):
        def make(path: Path) -> None:
            sparse_copy(qcow(), path)
            os.truncate(path, fn(path))
        return make

    def backing_host(path: Path) -> None:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(marker), str(path), "1M"])

    def backing_relative(path: Path) -> None:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "../" * 10 + str(marker).lstrip("/"),
             str(path), "1M"])

    return [
        Case(f"{spec}/qcow2/cut-in-header", cut_at(lambda p: 48), codes=frozenset({3})),
        Case(f"{spec}/qcow2/cut-at-l1", cut_at(l1_offset), codes=frozenset({0, 3})),
        Case(f"{spec}/qcow2/cut-half", cut_at(lambda p: os.path.getsize(p) // 2), codes=frozenset({0, 3})),
        Case("qcow2/backing-file-on-host", backing_host, secret=secret, codes=frozenset({3, 4})),
        Case("qcow2/backing-file-dotdot", backing_relative, secret=secret, codes=frozenset({3, 4})),
    ]


# ------------------------------------------------------------------------------------------------
# groups: the default run (a few minutes) and the larger slow set
# ------------------------------------------------------------------------------------------------
FLATCAR = "flatcar-stable-4593-amd64-pristine"
BOTTLEROCKET = "bottlerocket-aws-k8s-1.31-x86_64-pristine"
TALOS = "talos-v1.9.5-amd64-metal"
DEBIAN = "debian-12-amd64-genericcloud"
DPS = "dps-particleos-amd64-booted"

GROUPS: dict[str, Callable[[], list[Case]]] = {
    "flatcar-truncations": lambda: truncations(FLATCAR),
    "flatcar-gpt": lambda: gpt_damage(FLATCAR),
    "flatcar-superblocks": lambda: superblock_damage(FLATCAR),
    "talos-truncations": lambda: truncations(TALOS),
    "bottlerocket-superblocks": lambda: superblock_damage(BOTTLEROCKET),
    "debian-ext4": lambda: ext4_damage(DEBIAN),
    "mbr-loops": mbr_loops,
    "files": random_files,
    "disk-bombs": disk_bombs,
    "nested-bombs": nested_bombs,
    "vm-containers": vm_containers,
}
# Every family's replica, every boundary and damage kind; bombs with a random head and 2 GiB.
SLOW_SPECS = [BOTTLEROCKET, TALOS, DEBIAN, DPS, "cos-113-amd64-updated", "fcos-stable-43-amd64-updated",
              "flatcar-stable-3227-amd64-updated", "flatcar-lts-4081-arm64-pristine", "talos-v1.12.2-amd64-secureboot-upgraded",
              "talos-v1.13.0-amd64-metal", "silverblue-40-amd64-updated", "microos-20241001-x86_64-kvm",
              "ubuntu-core-24-amd64-installed", "bottlerocket-aws-k8s-1.31-x86_64-data-booted"]
SLOW_GROUPS: dict[str, Callable[[], list[Case]]] = {
    **{f"{spec}-all": (lambda spec=spec: truncations(spec) + gpt_damage(spec) + superblock_damage(spec))
       for spec in SLOW_SPECS},
    "disk-bombs-head": lambda: disk_bombs(size=BOMB_BYTES, with_head=True),
}


def cases_of(group: str) -> list[Case]:
    return (GROUPS.get(group) or SLOW_GROUPS[group])()


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("list", "run"):
        print(__doc__)
        return 2
    groups = argv[1:] or list(GROUPS)
    if argv[0] == "list":
        for g in groups:
            for c in cases_of(g):
                print(f"{g}\t{c.name}")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="immutools-damaged-") as tmp:
        for g in groups:
            for case, outcome, problems in run_cases(cases_of(g), Path(tmp)):
                status = "FAIL " + "; ".join(problems) if problems else "ok"
                extra = f"exit {outcome.code} rss {outcome.max_rss_mb:.0f}MB {outcome.wall_s:.1f}s" if outcome else ""
                print(f"{case.name}\t{extra}\t{status}", flush=True)
                failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
