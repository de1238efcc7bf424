"""Fuzzing campaigns over every target (``fuzz/targets.py``) with atheris/libFuzzer.

    .venv/bin/python fuzz/run.py                          # every target, 60 s each
    .venv/bin/python fuzz/run.py --seconds 120 cpio pe    # some targets, longer
    .venv/bin/python fuzz/run.py --runs 3000 --seconds 8  # the short CI campaign
    .venv/bin/python fuzz/run.py --save                   # copy new crash inputs to tests/data/fuzz/
    .venv/bin/python fuzz/run.py --lines                  # and line coverage of each target's modules

Each target runs in its own process (``fuzz/harness.py``) on its seeds (``fuzz/seeds.py``, made
with the real tools) and a corpus kept in ``.cache/fuzz/corpus/<target>`` between campaigns. A
crash (an exception that is not an ``ImmutoolsError``, a host file opened, a hang past
``--timeout`` seconds, RSS past ``--rss-mb``) stops libFuzzer; the campaign records it and
restarts the target for the rest of its time. Crashes are told apart by their signature: the
exception type and the innermost frame in immutools or a library, or "timeout"/"out of memory".

The report (printed, and with ``--json FILE`` written as JSON) gives per target: executions,
libFuzzer's coverage (``cov``: instrumented edges reached, in every instrumented module; ``ft``:
features), corpus size, peak RSS, each unique crash with the input that shows it, and with
``--lines`` the lines of the target's own modules its corpus runs (measured after the campaign by
replaying the corpus under ``sys.settrace``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fuzz.targets import TARGETS  # noqa: E402

CACHE = Path(os.environ.get("IMMUTOOLS_FUZZ_DIR", REPO / ".cache" / "fuzz"))
SAVED = REPO / "tests" / "data" / "fuzz"
_STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


@dataclass
class Crash:
    signature: str
    kind: str                 # exception | timeout | oom | host-file | exit
    message: str
    input: str | None         # artifact path
    traceback: str = ""


@dataclass
class TargetResult:
    target: str
    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    peak_rss_mb: int = 0
    seconds: float = 0.0
    restarts: int = 0
    crashes: list[Crash] = field(default_factory=list)
    lines: dict = field(default_factory=dict)     # module -> [lines run by the corpus, executable lines]

    @property
    def unique_crashes(self) -> int:
        return len({c.signature for c in self.crashes})


def _signature(log: str) -> Crash | None:
    """What the crash in a libFuzzer/atheris log is, or None when the run ended normally."""
    artifact = None
    m = re.search(r"Test unit written to (\S+)", log)
    if m:
        artifact = m.group(1)
    if "=== Uncaught Python exception: ===" in log:
        tail = log.split("=== Uncaught Python exception: ===", 1)[1]
        lines = tail.strip().splitlines()
        message = lines[0].strip() if lines else "?"
        tb_lines = []
        for line in lines[1:]:
            if line.startswith("==") or line.startswith("SUMMARY"):
                break
            tb_lines.append(line)
        frames = [f for f in (_FRAME.match(line) for line in tb_lines) if f]
        inner = next((f for f in reversed(frames) if "/fuzz/" not in f.group(1)), frames[-1] if frames else None)
        where = f"{_short(inner.group(1))}:{inner.group(2)} in {inner.group(3)}" if inner else "?"
        exc_type = message.split(":", 1)[0]
        kind = "host-file" if exc_type == "HostFileOpened" else "exception"
        return Crash(f"{exc_type} at {where}", kind, message, artifact, "\n".join(tb_lines))
    if "ERROR: libFuzzer: timeout" in log:
        return Crash("timeout", "timeout", "an input ran past the timeout", artifact)
    if "out-of-memory" in log or "ERROR: libFuzzer: out-of-memory" in log:
        return Crash("out of memory", "oom", "RSS past the limit", artifact)
    if "ERROR: libFuzzer" in log or "deadly signal" in log:
        first = next((line for line in log.splitlines() if "ERROR: libFuzzer" in line or "deadly signal" in line), "?")
        return Crash(first.strip(), "exit", first.strip(), artifact)
    return None


def _short(path: str) -> str:
    for marker in ("/site-packages/", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _update_stats(result: TargetResult, log: str) -> int:
    """Fold one libFuzzer run's numbers into ``result``; returns its executions."""
    executions = None
    last_line = 0
    for line in log.splitlines():
        m = _STATS.match(line)
        if m:
            result.cov = max(result.cov, int(m.group(2)))
            result.ft = max(result.ft, int(m.group(3)))
            result.corpus = int(m.group(4))
        m = re.match(r"^#(\d+)\s", line)
        if m:
            last_line = int(m.group(1))
        if line.startswith("stat::number_of_executed_units:"):
            executions = int(line.split(":")[-1])
        if line.startswith("stat::peak_rss_mb:"):
            result.peak_rss_mb = max(result.peak_rss_mb, int(line.split(":")[-1]))
    m = re.findall(r"rss: (\d+)Mb", log)
    if m:
        result.peak_rss_mb = max(result.peak_rss_mb, max(map(int, m)))
    executions = executions if executions is not None else last_line
    result.executions += executions
    return executions


def fuzz_target(name: str, seconds: float, runs: int | None, timeout: int, rss_mb: int,
                corpus_root: Path, fresh: bool = False, log_dir: Path | None = None) -> TargetResult:
    from fuzz.seeds import seed_dir

    seeds = seed_dir(name)
    corpus = corpus_root / "corpus" / name
    artifacts = corpus_root / "crashes" / name
    if fresh and corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    largest = max((p.stat().st_size for p in seeds.iterdir()), default=4096)
    max_len = max(TARGETS[name].max_len, int(largest * 1.25))
    result = TargetResult(name)
    deadline = time.monotonic() + seconds
    runs_left = runs
    while True:
        left = deadline - time.monotonic()
        if left < 1 or (runs_left is not None and runs_left <= 0):
            break
        args = [sys.executable, str(REPO / "fuzz" / "harness.py"), name, f"-max_total_time={int(max(1, left))}",
                f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}", f"-max_len={max_len}", "-print_final_stats=1",
                f"-artifact_prefix={artifacts}/", str(corpus), str(seeds)]
        if runs_left is not None:
            args.insert(3, f"-runs={runs_left}")
        t0 = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", cwd=REPO,
                              timeout=left + timeout + 120)
        result.seconds += time.monotonic() - t0
        log = proc.stdout + proc.stderr
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{name}-{result.restarts}.log").write_text(log)
        crash = _signature(log) if proc.returncode != 0 else None
        done = _update_stats(result, log)
        if crash is None:
            if proc.returncode != 0:
                result.crashes.append(Crash(f"harness exit {proc.returncode}", "exit", log[-400:], None))
            break
        result.crashes.append(crash)
        result.restarts += 1
        if runs_left is not None:
            runs_left -= max(1, done)
        if result.restarts > 50:
            break
    return result


def corpus_lines(name: str, corpus_root: Path) -> dict:
    """Line coverage of the target's own modules by its final corpus and seeds (``harness --lines``)."""
    from fuzz.seeds import seed_dir

    proc = subprocess.run([sys.executable, str(REPO / "fuzz" / "harness.py"), name, "--lines",
                           str(corpus_root / "corpus" / name), str(seed_dir(name))],
                          capture_output=True, text=True, cwd=REPO, timeout=3600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def save_crashes(results: list[TargetResult]) -> list[Path]:
    """Copy each unique crash's input to ``tests/data/fuzz/<target>/`` (the regression tests replay them)."""
    saved = []
    for r in results:
        seen = set()
        for c in r.crashes:
            if c.signature in seen or not c.input or not Path(c.input).exists():
                continue
            seen.add(c.signature)
            dest = SAVED / r.target / Path(c.input).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(c.input, dest)
            saved.append(dest)
    return saved


def report(results: list[TargetResult]) -> str:
    lines = [f"{'target':<12} {'executions':>11} {'cov':>6} {'ft':>7} {'corpus':>7} {'rss MB':>7} {'seconds':>8}  "
             f"unique crashes  lines of the target's modules"]
    for r in results:
        covered = ", ".join(f"{m.rsplit('.', 1)[-1]} {c}/{t} ({100 * c // max(t, 1)}%)" for m, (c, t) in r.lines.items())
        lines.append(f"{r.target:<12} {r.executions:>11} {r.cov:>6} {r.ft:>7} {r.corpus:>7} {r.peak_rss_mb:>7} "
                     f"{r.seconds:>8.0f}  {r.unique_crashes:>14}  {covered}")
        for sig in sorted({c.signature for c in r.crashes}):
            example = next(c for c in r.crashes if c.signature == sig)
            lines.append(f"    - {sig}: {example.message[:160]} ({example.input})")
    total = sum(r.executions for r in results)
    lines.append(f"{'total':<12} {total:>11}  unique crashes: {sum(r.unique_crashes for r in results)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help=f"targets (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--seconds", type=float, default=60, help="time per target")
    ap.add_argument("--runs", type=int, default=None, help="at most this many executions per target")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take before it is a hang")
    ap.add_argument("--rss-mb", type=int, default=1024, help="RSS beyond which an input is a memory blow-up")
    ap.add_argument("--dir", type=Path, default=CACHE, help="where corpora, crashes and logs are kept")
    ap.add_argument("--fresh", action="store_true", help="start from the seeds, not the kept corpus")
    ap.add_argument("--save", action="store_true", help="copy unique crash inputs to tests/data/fuzz/")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--lines", action="store_true", help="also measure line coverage of each target's modules by its corpus")
    args = ap.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    results = []
    for name in names:
        r = fuzz_target(name, args.seconds, args.runs, args.timeout, args.rss_mb, args.dir, args.fresh,
                        log_dir=args.dir / "logs")
        if args.lines:
            r.lines = corpus_lines(name, args.dir)
        results.append(r)
        print(report([r]).splitlines()[1], flush=True)
    print(report(results))
    if args.save:
        for p in save_crashes(results):
            print(f"saved {p.relative_to(REPO)}")
    if args.json:
        args.json.write_text(json.dumps([dict(asdict(r), unique_crashes=r.unique_crashes) for r in results], indent=2))
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
