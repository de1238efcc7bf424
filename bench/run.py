#!/usr/bin/env python3
"""immutools benchmark: immutools against the reference tools, on the same inputs, in the same run.

    .venv/bin/python bench/run.py [--runs 5] [--quick] [--out bench/results.md]

Builds full-size replicas with the project's replica builder (cached under .cache/), then measures:

* ``scan`` of each raw full-size replica: wall and CPU time, bytes read as a fraction of the image,
  peak RSS (of the child process, from wait4);
* ``scan`` of each compressed form vs the decompressor alone to /dev/null;
* ``verify`` vs ``veritysetup verify`` on the same verity pair (throughput ratio);
* a full file walk of large squashfs, ext4 and EROFS trees vs ``unsquashfs -lln``,
  ``e2fsck -fn`` (debugfs has no recursive listing; e2fsck reads every inode and directory) and
  ``fsck.erofs`` (erofs-utils 1.5 has no recursive lister; fsck walks every inode);
* ``virt-inspector`` when libguestfs can run here.

Medians of ``--runs`` runs; every command is written into the results. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
PY = sys.executable


def measure(cmd: list[str], stdout=subprocess.DEVNULL) -> dict:
    """Run ``cmd`` once; wall, user+sys CPU and peak RSS of the child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024, "rc": rc, "stderr": err}


def median_of(cmd: list[str], runs: int, stdout=subprocess.DEVNULL, ok_codes=(0,)) -> dict:
    samples = [measure(cmd, stdout) for _ in range(runs)]
    bad = [s for s in samples if s["rc"] not in ok_codes]
    if bad:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({bad[0]['rc']}): {bad[0]['stderr'][-500:]}")
    return {k: statistics.median(s[k] for s in samples) for k in ("wall", "cpu", "rss")} | {"runs": runs}


def shell(cmd: str) -> list[str]:
    return ["bash", "-c", cmd]


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 0.1 else f"{x * 1000:.0f} ms"


def mib(n: float) -> str:
    return f"{n / 1048576:.0f} MiB"


class Bench:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.sections: list[str] = []
        self.work = REPO / ".cache" / "bench"
        self.work.mkdir(parents=True, exist_ok=True)

    def immutools(self, *args) -> list[str]:
        return [PY, "-m", "immutools", *map(str, args)]

    # ------------------------------------------------------------------------------------------
    def replicas(self) -> list[tuple[str, Path]]:
        from replicas import build_replica

        names = ["flatcar-stable-4593-amd64-pristine", "flatcar-lts-4081-amd64-updated"]
        for extra in ("bottlerocket-aws-k8s-x86_64-pristine", "talos-1.9-metal-amd64", "fcos-42-x86_64"):
            if (REPO / "data" / "replica-specs" / f"{extra}.yaml").exists():
                names.append(extra)
        return [(n, build_replica(n)) for n in names]

    def raw_scans(self, images) -> None:
        rows = ["| image | size | wall | CPU | bytes read | of image | peak RSS |", "|---|---|---|---|---|---|---|"]
        for name, path in images:
            stats = json.loads(subprocess.run(self.immutools("scan", path, "--stats", "--format", "json"),
                                              capture_output=True, check=True).stdout)["stats"]
            m = median_of(self.immutools("scan", path, "--format", "json", "-o", "/dev/null"), self.runs)
            frac = stats["bytes_read"] / stats["image_size"]
            rows.append(f"| {name} | {mib(stats['image_size'])} | {fmt_s(m['wall'])} | {fmt_s(m['cpu'])} | "
                        f"{stats['bytes_read']:,} | {100 * frac:.3f} % | {mib(m['rss'])} |")
        self.sections.append("## Scan of raw full-size replicas\n\nCommand: `immutools scan IMAGE --format json -o /dev/null`"
                             " (bytes read from `--stats`). Targets: under 1 % of the image read, under 300 MB RSS.\n\n"
                             + "\n".join(rows))

    def compressed_scans(self, images) -> None:
        from replicas import build_replica

        codecs = [("bz2", "bzip2 -dc"), ("xz", "xz -dc"), ("zst", "zstd -dc"), ("lz4", "lz4 -dc")]
        name = images[0][0]
        rows = ["| form | file size | decompressor alone | immutools scan | ratio |", "|---|---|---|---|---|"]
        for form, dec in codecs:
            try:
                path = build_replica(name, form)
            except Exception as exc:  # noqa: BLE001 - a form the builder lacks is reported, not fatal
                rows.append(f"| {form} | - | - | - | not built: {exc} |")
                continue
            d = median_of(shell(f"{dec} {shlex.quote(str(path))} > /dev/null"), self.runs)
            s = median_of(self.immutools("scan", path, "--no-progress", "--format", "json", "-o", "/dev/null"), self.runs)
            rows.append(f"| {form} | {mib(path.stat().st_size)} | {fmt_s(d['wall'])} (`{dec}`) | {fmt_s(s['wall'])} | "
                        f"{s['wall'] / d['wall']:.2f}x |")
        self.sections.append(f"## Scan of compressed forms vs the decompressor alone ({name})\n\nTarget: within 1.2x.\n\n"
                             + "\n".join(rows))

    def verify(self, images) -> None:
        name, path = images[0]
        part = self.work / "usr-a.img"
        start, length = 2105344 * 512, 1 << 30           # flatcar.md §1.2, USR-A
        if not part.exists():
            subprocess.run(["dd", f"if={path}", f"of={part}", "bs=1M", f"skip={start}", f"count={length}",
                            "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"], check=True)
        result = json.loads(subprocess.run(self.immutools("verify", path, "--format", "json"), capture_output=True).stdout)
        root = result["targets"][0]["expected_root"]
        data_bytes = 260094 * 4096
        ours = median_of(self.immutools("verify", path, "--format", "json"), self.runs, stdout=subprocess.DEVNULL)
        ref = median_of(["veritysetup", "verify", "--hash-offset=1065345024", str(part), str(part), root], self.runs)
        t_ours, t_ref = data_bytes / ours["wall"], data_bytes / ref["wall"]
        self.sections.append(
            f"## verify vs veritysetup verify ({name}, USR-A: {data_bytes:,} data bytes)\n\n"
            f"| tool | wall | throughput |\n|---|---|---|\n"
            f"| `immutools verify IMAGE` (whole scan + hashing) | {fmt_s(ours['wall'])} | {t_ours / 1e6:.0f} MB/s |\n"
            f"| `veritysetup verify --hash-offset=1065345024 PART PART ROOT` | {fmt_s(ref['wall'])} | {t_ref / 1e6:.0f} MB/s |\n\n"
            f"Ratio (immutools / veritysetup throughput): **{t_ours / t_ref:.2f}x** (target at least 0.8x)."
        )

    def walks(self) -> None:
        src = Path("/usr/share") if not self.quick else Path("/usr/share/doc")
        tree_entries = sum(len(d) + len(f) for _r, d, f in os.walk(src))
        images = {}
        sq = self.work / "walk.sqsh"
        if not sq.exists():
            subprocess.run(["mksquashfs", str(src), str(sq), "-quiet", "-no-progress", "-comp", "zstd"], check=True)
        images["squashfs"] = (sq, f"unsquashfs -lln {sq}")
        ext = self.work / "walk.ext4"
        if not ext.exists():
            subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(src), str(ext), "4G"], check=True)
        # debugfs has no recursive listing; e2fsck -fn reads every inode and directory (a full walk).
        images["ext4"] = (ext, f"e2fsck -fn {ext}")
        ero = self.work / "walk.erofs"
        if not ero.exists():
            subprocess.run(["mkfs.erofs", "--quiet", "-zlz4hc", str(ero), str(src)], check=True)
        images["erofs"] = (ero, f"fsck.erofs {ero}")
        rows = ["| filesystem | entries | reference tool | immutools walk | ratio |", "|---|---|---|---|---|"]
        walker = [PY, "-c", "import sys; from immutools.image.source import FileSource; from immutools.fs import open_filesystem; "
                  "fs = open_filesystem(FileSource(sys.argv[1])); n = sum(1 for _ in fs.walk('/')); print(n)"]
        for kind, (img, ref_cmd) in images.items():
            r = median_of(shell(ref_cmd + " > /dev/null 2>&1"), self.runs)
            w = median_of(walker + [str(img)], self.runs)
            rows.append(f"| {kind} | {tree_entries:,} | {fmt_s(r['wall'])} (`{ref_cmd.split()[0]}`) | {fmt_s(w['wall'])} | "
                        f"{w['wall'] / r['wall']:.2f}x |")
        self.sections.append(f"## Full metadata walk of {src} ({tree_entries:,} entries)\n\nimmutools: "
                             "`fs.walk('/')` over the whole tree (stat of every entry). Target: within 3x of the C tools.\n\n"
                             + "\n".join(rows))

    def virt_inspector(self, images) -> None:
        """libguestfs boots an appliance VM; KVM fails on this kind of machine (nested MSR error), so
        it is forced to TCG (software emulation) -- slower, but it runs."""
        tool = shutil.which("virt-inspector")
        if tool is None:
            self.sections.append("## virt-inspector\n\nNot run: `virt-inspector` (Debian `libguestfs-tools`) is not installed here.")
            return
        env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
        rows = ["| image | virt-inspector wall | operating systems it found | immutools scan wall | immutools found |",
                "|---|---|---|---|---|"]
        for name, path in images[:1]:
            t0 = time.perf_counter()
            proc = subprocess.run([tool, "--no-applications", "-a", str(path)], capture_output=True, env=env)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append(f"| {name} | failed (rc {proc.returncode}) | `{proc.stderr.decode(errors='replace').strip()[-200:]}` | - | - |")
                continue
            found = proc.stdout.decode(errors="replace").count("<operatingsystem>")
            s = median_of(self.immutools("scan", path, "--format", "json", "-o", "/dev/null"), self.runs)
            report = json.loads(subprocess.run(self.immutools("scan", path, "--format", "json"), capture_output=True).stdout)
            rows.append(f"| {name} | {fmt_s(wall)} | {found} | {fmt_s(s['wall'])} | "
                        f"{report['os'].get('name')} {report['os'].get('version')} |")
        self.sections.append("## virt-inspector\n\nCommand: `LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg "
                             "virt-inspector --no-applications -a IMAGE` (one run: it boots a VM under software emulation).\n\n"
                             + "\n".join(rows))

    def write_update(self, out: Path) -> None:
        """Replace only the sections this run measured in an existing results file."""
        text = out.read_text()
        head, *old = text.split("\n## ")
        old_sections = {sec.split("\n", 1)[0].split(" (")[0]: "## " + sec.rstrip("\n") for sec in old}
        for sec in self.sections:
            old_sections[sec[3:].split("\n", 1)[0].split(" (")[0]] = sec
        note = f"\n(Sections re-measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{' '.join(sys.argv)}`.)\n"
        out.write_text(head.rstrip("\n") + "\n" + note + "\n" + "\n\n".join(old_sections.values()) + "\n")

    def write(self, out: Path) -> None:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        head = [
            "# immutools benchmark results", "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{' '.join(sys.argv)}`; medians of "
            f"{self.runs} runs.", "",
            f"Machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.platform()}.", "",
        ]
        out.write_text("\n".join(head) + "\n" + "\n\n".join(self.sections) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller walk tree, for a smoke run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results.md")
    ap.add_argument("--only", help="comma-separated sections to re-measure (raw,compressed,verify,walk,virt); "
                                   "they replace the same sections in an existing --out")
    args = ap.parse_args()
    b = Bench(args.runs, args.quick)
    only = set(args.only.split(",")) if args.only else {"raw", "compressed", "verify", "walk", "virt"}
    images = b.replicas()
    steps = [("raw", b.raw_scans), ("compressed", b.compressed_scans), ("verify", b.verify),
             ("walk", lambda _images: b.walks()), ("virt", b.virt_inspector)]
    for key, step in steps:
        if key in only:
            step(images)
    if args.only and args.out.exists():
        b.write_update(args.out)
    else:
        b.write(args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
