#!/usr/bin/env python3
"""immutools benchmark: immutools against the reference tools, on the same full-size inputs, side by
side in one run, as ratios (this machine's absolute times mean little; the ratios travel).

    .venv/bin/python bench/run.py [--runs 3] [--quick] [--out bench/results.md] [--only SECTIONS]

Inputs are the full-size replicas (``data/replica-specs/fullsize/``: each family's published layout
with a real distribution's package tree grafted in) and the package trees themselves, built through
the tests' fixture cache (``tests/replicas.py``, ``tests/fullsize.py``); the first run downloads
the package sets and builds everything (minutes), later runs reuse it.

Sections (``--only`` takes their names):

* ``debian``: ``immutools scan`` of the full-size Debian image vs ``e2fsck -fn`` on its root
  filesystem (every inode and directory block read by C code) and vs ``virt-inspector`` (libguestfs
  forced to TCG, as on machines without nested KVM); peak RSS of the scan;
* ``walk``: a full metadata walk (``fs.walk_table('/')``) of the same package tree in ext4, XFS,
  btrfs, squashfs and EROFS images vs the C tool that reads the same metadata (``e2fsck -fn``,
  ``xfs_repair -n``, ``btrfs check --readonly``, ``unsquashfs -lln``, ``fsck.erofs``);
* ``replicas``: ``immutools scan`` of every full-size replica: wall, CPU, bytes read, peak RSS;
* ``compressed``: the first scan of a compressed image (empty decompression cache) vs the
  decompressor alone (``bzip2 -dc`` of a Flatcar ``.bin.bz2``, ``xz -dc`` of a multi-block
  ``.raw.xz``), and the second scan (cache warm);
* a table of every target with its measured ratio, "met" or "not met"; a target not met carries
  the top entries of a cProfile run of the immutools side.

``--quick`` (smoke test, a few minutes warm): one run each, the small Talos package tree for the
walks, thin replicas for the compressed forms, no virt-inspector. Medians of ``--runs`` runs
otherwise. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
PY = sys.executable
WORK = REPO / ".cache" / "bench"
SECTIONS = ("debian", "walk", "replicas", "compressed")

WALKER = ("import sys; from immutools.image.source import FileSource; from immutools.fs import open_filesystem; "
          "fs = open_filesystem(FileSource(sys.argv[1])); "
          "t = fs.walk_table('/') if hasattr(fs, 'walk_table') else list(fs.walk('/')); print(len(t))")


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

def measure(cmd: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> dict:
    """Run ``cmd`` once: wall, user+sys CPU and peak RSS of the child (wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024,
            "rc": os.waitstatus_to_exitcode(status), "stderr": err}


def median_of(cmd: list[str], runs: int, env: dict | None = None, ok_codes=(0,), before=None) -> dict:
    samples = []
    for _ in range(runs):
        if before:
            before()
        samples.append(measure(cmd, env))
    bad = [s for s in samples if s["rc"] not in ok_codes]
    if bad:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed ({bad[0]['rc']}): {bad[0]['stderr'][-800:]}")
    return {k: statistics.median(s[k] for s in samples) for k in ("wall", "cpu", "rss")} | {"runs": runs}


def shell(cmd: str) -> list[str]:
    return ["bash", "-c", cmd]


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 0.1 else f"{x * 1000:.0f} ms"


def mib(n: float) -> str:
    return f"{n / 1048576:.0f} MiB"


def immutools(*args) -> list[str]:
    return [PY, "-m", "immutools", *map(str, args)]


def profile_top(argv: list[str], env: dict | None = None, top: int = 12) -> str:
    """cProfile of ``python -m immutools ARGV`` (or ``python -c CODE ARGS`` when argv[0] == "-c"):
    the entries with the most own time, as a markdown code block."""
    out = WORK / "profile.out"
    if argv[0] == "-c":     # cProfile runs a script or a module, not -c: write the snippet to a file
        script = WORK / "profile_snippet.py"
        script.write_text(argv[1])
        cmd = [PY, "-m", "cProfile", "-o", str(out), str(script), *argv[2:]]
    else:
        cmd = [PY, "-m", "cProfile", "-o", str(out), "-m", "immutools", *argv]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if not out.exists():
        return "(profile failed)"
    buf = io.StringIO()
    pstats.Stats(str(out), stream=buf).sort_stats("tottime").print_stats(top)
    out.unlink()
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "```\n" + "\n".join(ln.replace(str(REPO) + "/", "") for ln in lines[start:start + top + 1]) + "\n```"


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def extract_partition(image: Path, number: int, out: Path) -> Path:
    """One partition of a GPT image as a sparse file (for the fsck tools), cached in .cache/bench."""
    if out.exists() and out.stat().st_mtime >= image.stat().st_mtime:
        return out
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, check=True).stdout)
    part = next(p for p in table["partitiontable"]["partitions"] if p["node"].endswith(str(number)))
    tmp = out.with_suffix(".tmp")
    subprocess.run(["dd", f"if={image}", f"of={tmp}", "bs=1M", f"skip={part['start'] * 512}",
                    f"count={part['size'] * 512}", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"],
                   check=True)
    os.replace(tmp, out)
    return out


def xfs_protofile(tree: Path, out: Path) -> int:
    """mkfs.xfs -p protofile of ``tree``; returns how many names it had to leave out (protofiles
    cannot hold names with white space)."""
    left_out = 0
    lines = ["bench", "0 0", "d--755 0 0"]

    def mode(st, kind):
        m = st.st_mode
        return kind + ("u" if m & 0o4000 else "-") + ("g" if m & 0o2000 else "-") + f"{m & 0o777:03o}"

    def walk(d: Path, depth: int) -> None:
        nonlocal left_out
        for child in sorted(d.iterdir(), key=lambda p: p.name):
            if any(c.isspace() for c in child.name):
                left_out += 1 + (sum(1 for _ in child.rglob("*")) if child.is_dir() and not child.is_symlink() else 0)
                continue
            st = os.lstat(child)
            pad = " " * depth
            if child.is_symlink():
                lines.append(f"{pad}{child.name} {mode(st, 'l')} {st.st_uid} {st.st_gid} {os.readlink(child)}")
            elif child.is_dir():
                lines.append(f"{pad}{child.name} {mode(st, 'd')} {st.st_uid} {st.st_gid}")
                walk(child, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{child.name} {mode(st, '-')} {st.st_uid} {st.st_gid} {child}")

    walk(tree, 1)
    lines.append("$")
    out.write_text("\n".join(lines) + "\n")
    return left_out


def walk_images(set_name: str, tree: Path, key: str) -> dict[str, tuple[Path, str, str]]:
    """The package tree in each filesystem (made once, cached by the tree's key): kind -> (image,
    reference command, note)."""
    d = WORK / f"walk-{set_name}-{key}"
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", E2FSPROGS_FAKE_TIME="1700000000")
    images: dict[str, tuple[Path, str, str]] = {}

    def make(name: str, cmd: list[str], pre=None) -> Path:
        img = d / name
        if not img.exists():
            tmp = d / (name + ".tmp")
            tmp.unlink(missing_ok=True)
            if pre:
                pre(tmp)
            subprocess.run([c.replace("{out}", str(tmp)) for c in cmd], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.replace(tmp, img)
        return img

    def sized(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.truncate(2 << 30)

    ext = make("tree.ext4", ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), "{out}", "2G"])
    images["ext4"] = (ext, f"e2fsck -fn {ext}", "")
    proto = d / "tree.xfs.proto"
    left_out = xfs_protofile(tree, proto)
    xfs = make("tree.xfs", ["mkfs.xfs", "-q", "-f", "-p", str(proto), "{out}"], pre=sized)
    images["xfs"] = (xfs, f"xfs_repair -n -f {xfs}", f"{left_out} names with white space left out (protofile)" if left_out else "")
    btr = make("tree.btrfs", ["mkfs.btrfs", "-q", "-f", "--rootdir", str(tree), "{out}"], pre=sized)
    images["btrfs"] = (btr, f"btrfs check --readonly {btr}", "")
    sq = make("tree.sqsh", ["mksquashfs", str(tree), "{out}", "-quiet", "-no-progress", "-comp", "zstd", "-noappend"])
    images["squashfs"] = (sq, f"unsquashfs -lln {sq}", "")
    ero = make("tree.erofs", ["mkfs.erofs", "--quiet", "-zlz4hc", "{out}", str(tree)])
    images["erofs"] = (ero, f"fsck.erofs {ero}", "")
    return images


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.sections: list[str] = []
        self.targets: list[dict] = []
        WORK.mkdir(parents=True, exist_ok=True)

    def target(self, what: str, measured: str, ratio: float, goal: str, met: bool, profile: list[str] | None = None,
               env: dict | None = None) -> None:
        row = {"what": what, "measured": measured, "ratio": ratio, "goal": goal, "met": met}
        if not met and profile:
            row["profile"] = profile_top(profile, env)
            row["profile_cmd"] = " ".join(map(shlex.quote, profile))
        self.targets.append(row)

    # ---- full-size Debian ---------------------------------------------------------------------
    def debian(self) -> None:
        from replicas import build_replica

        name = "debian-12-amd64-genericcloud-fullsize"
        image = build_replica(name)
        root = extract_partition(image, 1, WORK / "debian-fullsize-root.ext4")
        stats = json.loads(subprocess.run(immutools("scan", image, "--stats", "--format", "json"),
                                          capture_output=True, check=True).stdout)["stats"]
        scan = median_of(immutools("scan", image, "--format", "json", "-o", "/dev/null"), self.runs)
        ref = median_of(["e2fsck", "-fn", str(root)], self.runs, ok_codes=(0, 4))
        entries = json.loads((image.parent / (image.name + ".manifest.json")).read_text())["computed"]["trees"]["root"]["entries"]
        start = median_of([PY, "-c", "import immutools.scan, immutools.collectors"], self.runs)
        rows = ["| command | wall | CPU | peak RSS |", "|---|---|---|---|",
                f"| `immutools scan IMAGE --format json -o /dev/null` | {fmt_s(scan['wall'])} | {fmt_s(scan['cpu'])} | {mib(scan['rss'])} |",
                f"| `e2fsck -fn ROOT.ext4` (partition 1 of the same image) | {fmt_s(ref['wall'])} | {fmt_s(ref['cpu'])} | {mib(ref['rss'])} |",
                f"| (fixed cost, included above: `python -c 'import immutools.scan, immutools.collectors'`) | "
                f"{fmt_s(start['wall'])} | {fmt_s(start['cpu'])} | {mib(start['rss'])} |"]
        ratio = scan["wall"] / ref["wall"]
        self.target("Debian full-size scan vs `e2fsck -fn` on its root", f"{fmt_s(scan['wall'])} vs {fmt_s(ref['wall'])}",
                    ratio, "at most 3x", ratio <= 3, ["scan", str(image), "--format", "json", "-o", "/dev/null"])
        self.target("Debian full-size scan peak RSS", mib(scan["rss"]), scan["rss"] / 300e6, "under 300 MB",
                    scan["rss"] < 300e6)
        vi = self.virt_inspector(image)
        if vi is not None:
            rows.append(f"| `virt-inspector --no-applications -a IMAGE` (TCG, one run) | {fmt_s(vi['wall'])} | "
                        f"{fmt_s(vi['cpu'])} | {mib(vi['rss'])} |")
            speedup = vi["wall"] / scan["wall"]
            failed = " (virt-inspector failed: its time to failure, a lower bound)" if vi["rc"] != 0 else ""
            self.target("Debian full-size scan vs virt-inspector", f"{fmt_s(scan['wall'])} vs {fmt_s(vi['wall'])}{failed}",
                        speedup, "at least 10x faster", speedup >= 10,
                        ["scan", str(image), "--format", "json", "-o", "/dev/null"])
            rows.append(f"\nvirt-inspector found: {vi['found']}.")
        else:
            rows.append("\nvirt-inspector: not run (" + ("--quick" if self.quick else "`virt-inspector` (Debian "
                        "libguestfs-tools) is not installed") + ").")
        self.sections.append(
            f"## Full-size Debian: scan vs e2fsck and virt-inspector\n\n`{name}`: {mib(stats['image_size'])} disk, "
            f"root filesystem with {entries:,} entries (package set debian-root); the scan read "
            f"{stats['bytes_read']:,} bytes ({100 * stats['bytes_read'] / stats['image_size']:.2f} % of the image).\n\n"
            + "\n".join(rows))

    def virt_inspector(self, image: Path) -> dict | None:
        """libguestfs boots an appliance VM; forced to TCG (software emulation), as on machines
        where KVM is not available to it."""
        tool = shutil.which("virt-inspector")
        if self.quick or tool is None:
            return None
        env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
        xml = WORK / "virt-inspector.xml"
        with open(xml, "wb") as f:
            m = measure([tool, "--no-applications", "-a", str(image)], env=env, stdout=f)
        if m["rc"] != 0:
            errors = [ln.strip() for ln in m["stderr"].splitlines() if "error" in ln]
            return dict(m, found=f"nothing: it failed (rc {m['rc']}): `{' / '.join(errors)[-300:]}` (its debug log maps "
                        "only the fstab's `UUID=` ESP line, not the `PARTUUID=` root line, and the mount of /boot/efi "
                        "fails; the thin Debian replica fails the same way)")
        names = [ln.split(">")[1].split("<")[0] for ln in xml.read_text(errors="replace").splitlines()
                 if "<product_name>" in ln]
        return dict(m, found=", ".join(names) or "no operating system")

    # ---- metadata walks ------------------------------------------------------------------------
    def walks(self) -> None:
        from fullsize import package_tree

        set_name = "talos-rootfs" if self.quick else "debian-root"
        tree = package_tree(set_name)
        images = walk_images(set_name, tree.root, tree.facts["key"])
        rows = ["| filesystem | entries walked | reference tool | immutools `walk_table('/')` | ratio | note |",
                "|---|---|---|---|---|---|"]
        start = median_of([PY, "-c", "import immutools.image.source, immutools.fs"], self.runs)
        for kind, (img, ref_cmd, note) in images.items():
            ok = (0, 4) if kind == "ext4" else (0,)
            ref = median_of(shell(ref_cmd + " > /dev/null 2>&1"), self.runs, ok_codes=ok)
            walker = [PY, "-c", WALKER, str(img)]
            count = subprocess.run(walker, capture_output=True, text=True)
            if count.returncode != 0:
                rows.append(f"| {kind} | - | {fmt_s(ref['wall'])} (`{ref_cmd.split()[0]}`) | failed: "
                            f"`{count.stderr.strip().splitlines()[-1][:150] if count.stderr.strip() else count.returncode}` | - | {note} |")
                self.target(f"walk of {kind} vs `{ref_cmd.split()[0]}`", "failed", float("inf"), "at most 3x", False)
                continue
            w = median_of(walker, self.runs)
            ratio = w["wall"] / ref["wall"]
            rows.append(f"| {kind} | {int(count.stdout.split()[-1]):,} | {fmt_s(ref['wall'])} (`{ref_cmd.split()[0]}`) | "
                        f"{fmt_s(w['wall'])} | {ratio:.2f}x | {note} |")
            self.target(f"walk of {kind} ({set_name}) vs `{' '.join(ref_cmd.split()[:-1])}`",
                        f"{fmt_s(w['wall'])} vs {fmt_s(ref['wall'])}", ratio, "at most 3x", ratio <= 3,
                        ["-c", WALKER, str(img)])
        self.sections.append(
            f"## Full metadata walk of one package tree in five filesystems\n\nThe package set `{set_name}` "
            f"({tree.facts['entries']:,} entries, {tree.facts['package_count']} packages) made into each filesystem "
            "with its own mkfs (`mke2fs -d`, `mkfs.xfs -p`, `mkfs.btrfs --rootdir`, `mksquashfs -comp zstd`, "
            "`mkfs.erofs -zlz4hc`). immutools: `open_filesystem(...).walk_table('/')` (every entry's metadata; "
            f"`fs.walk` where a backend has no table walk) in a fresh process. Command: `python -c \"{WALKER}\" IMAGE`. "
            f"The fixed cost of a fresh process (interpreter start and imports) is {fmt_s(start['wall'])} of each immutools "
            "time.\n\n" + "\n".join(rows))

    # ---- every full-size replica ------------------------------------------------------------------
    def replicas(self) -> None:
        from replicas import build_replica

        from immutools.replica.spec import list_specs

        names = [s.name for s in list_specs(fullsize=True)]
        if self.quick:
            names = [n for n in names if n.startswith(("debian", "talos"))]
        rows = ["| replica | disk | entries (grafted trees) | wall | CPU | bytes read | of disk | peak RSS |",
                "|---|---|---|---|---|---|---|---|"]
        for name in names:
            path = build_replica(name)
            manifest = json.loads((path.parent / (path.name + ".manifest.json")).read_text())
            entries = ", ".join(f"{k} {t['entries']:,}" for k, t in manifest["computed"]["trees"].items())
            stats = json.loads(subprocess.run(immutools("scan", path, "--stats", "--format", "json"),
                                              capture_output=True, check=True).stdout)["stats"]
            m = median_of(immutools("scan", path, "--format", "json", "-o", "/dev/null"), self.runs)
            rows.append(f"| {name} | {mib(stats['image_size'])} | {entries} | {fmt_s(m['wall'])} | {fmt_s(m['cpu'])} | "
                        f"{stats['bytes_read']:,} | {100 * stats['bytes_read'] / stats['image_size']:.2f} % | {mib(m['rss'])} |")
            self.target(f"scan of {name}: peak RSS", mib(m["rss"]), m["rss"] / 300e6, "under 300 MB", m["rss"] < 300e6)
        self.sections.append("## Scan of every full-size replica\n\nCommand: `immutools scan IMAGE --format json -o /dev/null` "
                             "(bytes read from `--stats`).\n\n" + "\n".join(rows))

    # ---- compressed forms ----------------------------------------------------------------------
    def compressed(self) -> None:
        from replicas import build_replica

        if self.quick:
            cases = [("talos-v1.9.5-amd64-metal", "xz", "xz -dc")]
        else:
            cases = [("flatcar-stable-4593-amd64-fullsize", "bz2", "bzip2 -dc"),
                     ("talos-v1.13.0-amd64-metal-fullsize", "xz", "xz -dc")]
        cache = WORK / "decompression-cache"
        env = dict(os.environ, IMMUTOOLS_CACHE_DIR=str(cache))

        def empty_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)

        rows = ["| image | form (file size) | decompressor alone | first scan (cache empty) | ratio | second scan |",
                "|---|---|---|---|---|---|"]
        for name, form, dec in cases:
            path = build_replica(name, form)
            blocks = ""
            if form == "xz":
                info = subprocess.run(["xz", "--robot", "-l", str(path)], capture_output=True, text=True).stdout
                totals = next((ln.split("\t") for ln in info.splitlines() if ln.startswith("totals")), None)
                blocks = f", {totals[2]} xz blocks" if totals else ""
            d = median_of(shell(f"{dec} {shlex.quote(str(path))} > /dev/null"), self.runs)
            scan_cmd = immutools("scan", path, "--no-progress", "--format", "json", "-o", "/dev/null")
            first = median_of(scan_cmd, self.runs, env=env, before=empty_cache)
            second = median_of(scan_cmd, self.runs, env=env)          # the cache the last first scan filled
            ratio = first["wall"] / d["wall"]
            rows.append(f"| {name} | {form} ({mib(path.stat().st_size)}{blocks}) | {fmt_s(d['wall'])} (`{dec}`) | "
                        f"{fmt_s(first['wall'])} | {ratio:.2f}x | {fmt_s(second['wall'])} |")
            self.target(f"first scan of {form} ({name}) vs `{dec}`", f"{fmt_s(first['wall'])} vs {fmt_s(d['wall'])}",
                        ratio, "at most 0.3x", ratio <= 0.3, ["scan", str(path), "--no-progress", "--format", "json",
                                                              "-o", "/dev/null"], env=dict(env, IMMUTOOLS_CACHE_DIR=str(WORK / "profile-cache")))
            shutil.rmtree(WORK / "profile-cache", ignore_errors=True)
            self.target(f"second scan of {form} ({name})", fmt_s(second["wall"]), second["wall"] / 2.0, "under 2 s",
                        second["wall"] < 2.0, ["scan", str(path), "--no-progress", "--format", "json", "-o", "/dev/null"],
                        env=env)
        self.sections.append(
            "## Compressed forms: first and second scan vs the decompressor alone\n\nCommand: "
            "`IMMUTOOLS_CACHE_DIR=DIR immutools scan IMAGE --no-progress --format json -o /dev/null`; the first scan starts "
            "from an empty cache directory, the second reuses what the first left there. The `.raw.xz` is what "
            "the replica builder ships (`xz -T0 -6`: multi-threaded, so several blocks).\n\n" + "\n".join(rows))

    # ---- output --------------------------------------------------------------------------------
    def targets_section(self) -> str:
        rows = ["| target | goal | measured | ratio | |", "|---|---|---|---|---|"]
        for t in self.targets:
            rows.append(f"| {t['what']} | {t['goal']} | {t['measured']} | {t['ratio']:.2f} | "
                        f"{'met' if t['met'] else '**not met**'} |")
        text = "## Targets\n\nRatios: immutools / reference (lower is better) except for virt-inspector " \
               "(reference / immutools); RSS as a fraction of the bound.\n\n" + "\n".join(rows)
        for t in self.targets:
            if not t["met"] and t.get("profile"):
                text += f"\n\n### Not met: {t['what']}\n\nProfile (`python -m cProfile` of `{t['profile_cmd']}`), " \
                        f"the functions with the most own time:\n\n{t['profile']}"
        return text

    def write(self, out: Path, only: set[str]) -> None:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        head = [
            "# immutools benchmark results", "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{' '.join(['bench/run.py', *sys.argv[1:]])}`; "
            f"medians of {self.runs} run(s); sections: {', '.join(s for s in SECTIONS if s in only)}.", "",
            f"Machine: {os.cpu_count()} CPUs ({cpu}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.platform()}. All numbers of one table were measured "
            "side by side in this run.", "",
        ]
        out.write_text("\n".join(head) + "\n" + self.targets_section() + "\n\n" + "\n\n".join(self.sections) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: small inputs, one run each, no virt-inspector")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results.md")
    ap.add_argument("--only", help=f"comma-separated sections ({','.join(SECTIONS)})")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    # Measure what an installed immutools costs: pip compiles an installed package's modules to
    # bytecode, an editable checkout (and PYTHONDONTWRITEBYTECODE=1) would recompile every module on
    # every run (0.25-0.4 s of a full-size scan).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "immutools")], check=True,
                   stdout=subprocess.DEVNULL)
    b = Bench(runs, args.quick)
    steps = {"debian": b.debian, "walk": b.walks, "replicas": b.replicas, "compressed": b.compressed}
    for key in SECTIONS:
        if key in only:
            t0 = time.perf_counter()
            steps[key]()
            print(f"bench: {key} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    b.write(args.out, only)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
