"""Coverage-guided fuzzing (atheris) of every parser entry point we own or wrap (``fuzz/``).

* The short CI campaign: each target starts from its seeds (made with the real tools, or read
  out of the replicas) and runs a few thousand executions; any crash -- an exception that is not
  an ``ImmutoolsError``, a host file opened, a hang, a memory blow-up -- fails the test and names
  the input. Long campaigns: ``.venv/bin/python fuzz/run.py --seconds 120``.
* Every input a campaign found a crash with is kept under ``tests/data/fuzz/<target>/`` and
  replayed here (without atheris): it must now run clean. Inputs whose bug is in a file another
  part of the project owns are listed in ``tests/data/fuzz/xfail.json`` with that file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fuzz.targets import TARGETS, encode_sparse  # noqa: E402

SAVED = REPO / "tests" / "data" / "fuzz"
XFAIL = json.loads((SAVED / "xfail.json").read_text()) if (SAVED / "xfail.json").exists() else {}
CI_RUNS = 2500          # executions per target in the CI campaign
CI_SECONDS = 8          # and at most this long per target (whichever comes first)


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.fuzz
@pytest.mark.skipif(not _have_atheris(), reason="atheris is not installed (pip install -e '.[fuzz]')")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ci_fuzz_campaign(target, tmp_path):
    from fuzz.run import fuzz_target, report

    result = fuzz_target(target, CI_SECONDS, CI_RUNS, timeout=20, rss_mb=1024, corpus_root=tmp_path, fresh=True,
                         log_dir=tmp_path / "logs")
    assert result.executions > 0, f"{target}: the harness ran nothing (see {tmp_path / 'logs'})"
    assert not result.crashes, report([result]) + "\n" + "\n\n".join(c.traceback for c in result.crashes)


def _saved_inputs() -> list:
    out = []
    for d in sorted(p for p in SAVED.iterdir() if p.is_dir()) if SAVED.exists() else []:
        for f in sorted(d.iterdir()):
            key = f"{d.name}/{f.name}"
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[key])] if key in XFAIL else []
            out.append(pytest.param(d.name, f, id=key, marks=marks))
    return out


@pytest.mark.parametrize("target,path", _saved_inputs())
def test_saved_crash_input_runs_clean(target, path):
    """Replay in a child (a hang is bounded by a generous timeout, not timed)."""
    proc = subprocess.run([sys.executable, str(REPO / "fuzz" / "harness.py"), target, "--replay", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- regressions for what the campaigns found, pinned on their mechanism -------------------------
def test_talos_meta_claiming_terabytes_reads_one_mebibyte():
    """A META partition of 16 GiB of zeros was read to its end (the all-zero check): a partition
    claiming terabytes hung the scan. Talos uses the first MiB and the syslinux ADV at the end."""
    from fuzz.targets import decode_sparse
    from immutools.fs.talos_meta import META_SIZE, read_meta

    src = decode_sparse(encode_sparse(size=16 << 30, chunks=[]))
    meta = read_meta(src)
    assert meta.all_zero and meta.selected is None
    assert src.stats.bytes_read <= META_SIZE + 4096
