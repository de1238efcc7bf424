"""``scan_many``: scan many images into one dataset, on a local process pool or a Dask cluster.

Work is one task per image: compute the image's content digest (``immutools.corpus.digest``), and
unless an image of that digest was already scanned by this tool version, scan it. A task never
raises: an image that cannot be read, a missing file, even a bug in a collector, comes back as a
failure (message and the exit code ``immutools scan`` would have ended with) and is recorded as a
row of the ``failures`` table; the run goes on. The parent process writes each result into the
dataset as it arrives (so an interrupted run keeps what it finished and the next run resumes), shows
one overall progress line, and at the end publishes the frames (``immutools.corpus.dataset``).

Engines:

* ``pool`` (default): a ``ProcessPoolExecutor`` of ``workers`` processes (default: the CPUs this
  process may run on). At most twice as many tasks as workers are in flight; if a worker process
  dies (a crash in a C decoder, the OOM killer), the pool is replaced and the tasks that were in
  flight are run again one at a time in a pool of their own, so the one that kills its worker is
  recorded as a failure (exit code 10) and the others finish.
* ``dask``: the same tasks submitted to a Dask distributed scheduler (``--scheduler ADDRESS``), or to
  a ``LocalCluster`` started for the run. Workers must see the inputs at the same paths (shared
  storage) or read them as fsspec URLs; reports travel back to the client, which alone writes the
  dataset. A task whose worker dies is a failure row.

Both engines feed the same recording code, and the dataset does not depend on the order results
arrive in (rows follow the input order), so the two engines produce identical datasets.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from immutools.errors import EXIT_INTERNAL, EXIT_LIMIT, ImmutoolsError

ENGINES = ("pool", "dask")


@dataclass(frozen=True)
class Known:
    """Digests already in the dataset for this tool version (sent once to every worker)."""

    digests: frozenset = frozenset()


@dataclass
class Task:
    position: int
    location: str
    kind: str
    cache: tuple                   # (directory or None, enabled): the decompression cache settings
    replica_dir: str | None = None


@dataclass
class RunSummary:
    out: str
    inputs: int = 0
    scanned: int = 0
    reused: int = 0                # already in the dataset (same digest and tool version): not scanned again
    failed: int = 0
    skipped_files: list[str] = field(default_factory=list)   # files in folders that are not images
    seconds: float = 0.0
    engine: str = "pool"
    workers: int = 0

    def line(self) -> str:
        return (f"{self.inputs} images: {self.scanned} scanned, {self.reused} already in the dataset, "
                f"{self.failed} failed; {len(self.skipped_files)} files skipped; {self.seconds:.1f}s "
                f"({self.engine}, {self.workers} workers) -> {self.out}")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------
# The task (runs in a worker process)
# ------------------------------------------------------------------------------------------------

def default_scanner(path: str) -> dict:
    from immutools.scan import scan

    return scan(path, progress=False)


def run_task(task: Task, known: Known, scanner=None) -> dict:
    """Digest, then scan unless known. Never raises: failures come back as results."""
    from immutools.image.cache import configure

    started = time.monotonic()
    configure(directory=task.cache[0], enabled=task.cache[1])
    result = {"position": task.position, "location": task.location, "digest": None, "status": "failed",
              "report": None, "error": None, "exit_code": None, "seconds": 0.0}
    try:
        result.update(_digest_and_scan(task, known, scanner or default_scanner))
    except ImmutoolsError as exc:
        result.update(error=str(exc), exit_code=exc.exit_code)
    except MemoryError:
        result.update(error=f"{task.location}: out of memory", exit_code=EXIT_LIMIT)
    except RecursionError:
        result.update(error=f"{task.location}: recursion limit reached", exit_code=EXIT_LIMIT)
    except Exception as exc:  # noqa: BLE001 - a bug on one image must not stop a thousand-image run
        result.update(error=f"internal error while reading {task.location}: {type(exc).__name__}: {exc}",
                      exit_code=EXIT_INTERNAL)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _digest_and_scan(task: Task, known: Known, scanner) -> dict:
    from immutools.corpus import digest as dg
    from immutools.corpus.inputs import parse_spec_location
    from immutools.disk import require_image

    if task.kind == "spec":
        name, form = parse_spec_location(task.location)
        try:
            digest = dg.spec_digest(name, form)
        except (ValueError, RuntimeError) as exc:       # the replica builder's SpecError
            raise _UsageFailure(f"{task.location}: {exc}") from None
        if digest in known.digests:
            return {"digest": digest, "status": "reused"}
        from immutools.corpus.replicas import replica_image

        path = replica_image(name, form, task.replica_dir)
        return {"digest": digest, "status": "scanned", "report": clean_report(scanner(str(path)))}
    if task.kind == "url":
        from immutools.corpus.remote import scan_url

        digest = dg.url_digest(task.location)
        if digest in known.digests:
            return {"digest": digest, "status": "reused"}
        return {"digest": digest, "status": "scanned", "report": clean_report(scan_url(task.location))}
    if task.kind == "report":
        from immutools.analysis.loading import read_report

        digest = dg.report_digest(task.location)
        if digest in known.digests:
            return {"digest": digest, "status": "reused"}
        return {"digest": digest, "status": "scanned", "report": read_report(task.location)}
    require_image(task.location)
    digest = dg.file_digest(task.location)
    if digest in known.digests:
        return {"digest": digest, "status": "reused"}
    return {"digest": digest, "status": "scanned", "report": clean_report(scanner(task.location))}


class _UsageFailure(ImmutoolsError):
    exit_code = 2


def clean_report(report: dict) -> dict:
    """The report as the dataset keeps it: what this machine's decompression cache did
    (``image.cache``) and timing statistics say nothing about the image and would make two runs
    differ; everything else, the full image path included, is kept."""
    # Through JSON: the report as saved (library int subclasses such as dissect's uint64 become
    # plain ints, which also makes the result picklable across processes).
    report = json.loads(json.dumps(report, default=str))
    image = report.get("image")
    if isinstance(image, dict):
        image.pop("cache", None)
    report.pop("stats", None)
    return report


def crash_result(task: Task, why: str) -> dict:
    return {"position": task.position, "location": task.location, "digest": None, "status": "failed",
            "report": None, "error": f"internal error while reading {task.location}: {why}",
            "exit_code": EXIT_INTERNAL, "seconds": 0.0}


# ------------------------------------------------------------------------------------------------
# Engines: each yields one result per task, in completion order
# ------------------------------------------------------------------------------------------------

_WORKER_KNOWN = Known()


def _init_worker(known: Known) -> None:
    global _WORKER_KNOWN
    _WORKER_KNOWN = known


def _pool_task(task: Task, scanner) -> dict:
    return run_task(task, _WORKER_KNOWN, scanner)


def pool_results(tasks: list[Task], known: Known, workers: int, scanner=None):
    import concurrent.futures as cf
    from concurrent.futures.process import BrokenProcessPool

    pending = list(tasks)
    window = max(2, 2 * workers)
    while pending:
        suspects: list[Task] = []
        with cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(known,)) as pool:
            inflight: dict = {}
            while pending or inflight:
                while pending and len(inflight) < window:
                    task = pending.pop(0)
                    inflight[pool.submit(_pool_task, task, scanner)] = task
                done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
                broken = False
                for fut in sorted(done, key=lambda f: inflight[f].position):
                    task = inflight.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(task)
                if broken:
                    suspects.extend(inflight.values())
                    break
        # A worker died: run each task that was in flight alone, so only the culprit fails.
        for task in sorted(suspects, key=lambda t: t.position):
            with cf.ProcessPoolExecutor(max_workers=1, initializer=_init_worker, initargs=(known,)) as solo:
                try:
                    yield solo.submit(_pool_task, task, scanner).result()
                except BrokenProcessPool:
                    yield crash_result(task, "the worker process died while scanning it")


def dask_results(tasks: list[Task], known: Known, workers: int, scheduler: str | None = None, scanner=None):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        from immutools.corpus.dataset import missing_extra

        raise missing_extra("dask.distributed") from None
    cluster = None
    if scheduler:
        client = Client(scheduler, set_as_default=False)
    else:
        import logging

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False)
    try:
        known_future = client.scatter(known, broadcast=True, hash=False)
        by_future = {}
        for task in tasks:
            fut = client.submit(run_task, task, known_future, scanner, key=f"immutools-scan-{task.position}-{os.getpid()}-{time.time_ns()}",
                                pure=False)
            by_future[fut] = task
        for fut in as_completed(list(by_future), loop=client.loop):
            task = by_future.pop(fut)
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker) is this image's failure
                result = crash_result(task, f"the Dask task failed: {type(exc).__name__}: {exc}")
            fut.release()
            yield result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------------
# One overall progress line
# ------------------------------------------------------------------------------------------------

class RunProgress:
    """``scan-many: [#####.....] 12/23 images (3 already in the dataset, 1 failed) 0:42, ~1:10 left``.

    ``enabled``: None shows it on a terminal only, True always (a line per image when stderr is not
    a terminal), False never."""

    def __init__(self, total: int, enabled: bool | None, stream=None):
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = tty if enabled is None else enabled
        self.tty = tty
        self.total = total
        self.done = self.reused = self.failed = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, status: str, location: str) -> None:
        self.done += 1
        self.reused += status == "reused"
        self.failed += status == "failed"
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and now - self._drawn < 0.1 and self.done < self.total:
            return
        self._drawn = now
        elapsed = now - self.started
        scanned = self.done - self.reused
        left = (elapsed / scanned) * (self.total - self.done) if scanned and self.done < self.total else 0.0
        width = 20
        filled = int(width * self.done / max(1, self.total))
        line = (f"scan-many: [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images "
                f"({self.reused} already in the dataset, {self.failed} failed) {_clock(elapsed)}"
                + (f", ~{_clock(left)} left" if left else ""))
        if self.tty:
            self.stream.write("\r" + line[:200] + "\x1b[K")
        else:
            self.stream.write(f"{line} {os.path.basename(location)}: {status}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def scan_many(items, out, *, engine: str = "pool", workers: int | None = None, scheduler: str | None = None,
              rescan: bool = False, progress: bool | None = None, rubric=None, replica_dir: str | None = None,
              prune: bool = False, cache: tuple = (None, True), scanner=None, log=None) -> RunSummary:
    """Scan ``items`` (see ``immutools.corpus.inputs``) into the dataset directory ``out``.

    ``rescan``: scan every image even if the dataset has it. ``prune``: drop from the dataset the
    images this run's inputs do not name. ``rubric``: a ``Rubric`` for the scores frames.
    ``cache``: (directory or None, enabled) of the decompression cache the workers use (None: their
    environment's default). ``scanner``: the function scanning one image path (default
    ``immutools.scan.scan``).
    With no items, the dataset's tables are only rebuilt from its reports (after a rubric change,
    or after moving the folder).
    """
    from immutools.corpus.dataset import Dataset
    from immutools.corpus.inputs import expand

    if engine not in ENGINES:
        from immutools.corpus.inputs import InputError

        raise InputError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    started = time.monotonic()
    workers = workers or default_workers()
    expansion = expand(items)
    dataset = Dataset.open(out, create=True)
    summary = RunSummary(out=str(dataset.root), inputs=len(expansion.inputs), skipped_files=expansion.skipped,
                         engine=engine, workers=workers)
    dataset.begin(expansion.inputs, prune=prune)
    known = Known(frozenset() if rescan else dataset.known_digests())
    tasks = [Task(i, inp.location, inp.kind, cache, replica_dir) for i, inp in enumerate(expansion.inputs)]
    bar = RunProgress(len(tasks), progress)
    try:
        if tasks:
            results = (pool_results(tasks, known, workers, scanner) if engine == "pool"
                       else dask_results(tasks, known, workers, scheduler, scanner))
            for result in results:
                dataset.record(result)
                bar.update(result["status"], result["location"])
                summary.scanned += result["status"] == "scanned"
                summary.reused += result["status"] == "reused"
                summary.failed += result["status"] == "failed"
    finally:
        bar.close()
        dataset.save_index()
    dataset.publish(rubric=rubric)
    summary.seconds = time.monotonic() - started
    if log is not None:
        log(summary.line())
    return summary
