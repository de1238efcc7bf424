"""Run a command and measure its own peak RSS, not its parent's.

Linux carries a process's peak RSS across ``fork`` and ``exec`` (``exec_mmap`` folds the old
address space's high-water mark into ``signal->maxrss``), so a child started from a pytest process
that has grown to 1 GB reports ``ru_maxrss`` of at least 1 GB, whatever the child itself did. CI
runs the whole suite in one pytest process, so a bound on a child's RSS measured that way fails
there and passes in a small local run. The child is therefore started by a small launcher (a fresh
interpreter of about 10 MB), which forks the real command and reads its peak RSS with ``wait4``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# argv: address-space limit (0: none), report path, command...
_LAUNCHER = r"""
import os, resource, sys
limit, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_pid, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


@dataclass
class Measured:
    code: int | None          # None when the timeout killed it; negative: killed by that signal
    stdout: bytes
    stderr: bytes
    max_rss_kib: int
    wall_s: float
    timed_out: bool


def run_measured(argv: list[str], *, timeout: float, address_space: int = 0, cwd=None,
                 env: dict | None = None) -> Measured:
    """Run ``argv`` in its own session under an optional RLIMIT_AS; kill the session at ``timeout``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(address_space), report.name, *argv],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=True)
        timed_out = False
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        fields = report.read().split()
        code, rss = (int(fields[0]), int(fields[1])) if len(fields) == 2 else (None, 0)
        out.seek(0)
        err.seek(0)
        return Measured(None if timed_out else code, out.read(), err.read(), rss, wall, timed_out)
