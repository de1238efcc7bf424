"""Run one fuzz target under atheris (libFuzzer):

    .venv/bin/python fuzz/harness.py TARGET [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python fuzz/harness.py TARGET --replay FILE...     # run inputs once, no fuzzing
    .venv/bin/python fuzz/harness.py TARGET --lines DIR|FILE...  # line coverage of the target's modules

immutools, dissect and pefile are instrumented for coverage as they are imported: the target's
modules are imported, then every seed is run once inside the instrumentation hook so that modules
the target imports lazily are instrumented too. A crash is whatever leaves ``Target.run``: an
exception that is not an ``ImmutoolsError`` (the targets catch those), an input that opens a file
outside the places a scan may open (an audit hook watches every ``open`` while an input runs: the
Python installation, this checkout's code and data, our own temporary files), a libFuzzer timeout
(``-timeout``) or RSS limit (``-rss_limit_mb``).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INSTRUMENTED = ["immutools", "dissect", "pefile"]


class HostFileOpened(Exception):
    """An input made the parser open a host file (a path out of the image)."""


class OpenGuard:
    """``sys.addaudithook`` callback: records ``open`` events outside the allowed places while armed."""

    def __init__(self):
        tmp = os.path.realpath(tempfile.gettempdir())
        self.tmp = tmp
        self.allowed = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
                             | {str(REPO / "immutools") + os.sep, str(REPO / "data") + os.sep})
        self.armed = False
        self.violations: list[str] = []

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        if real.startswith(self.allowed) or real in ("/dev/null", "/dev/urandom"):
            return True
        if real == self.tmp:                                   # TemporaryFile: O_TMPFILE in the temp dir
            return True
        name = os.path.basename(real)
        return os.path.dirname(real) == self.tmp and name.startswith(("immutools-nested-", "immutools-fuzz-empty-"))

    def __call__(self, event: str, args) -> None:
        if not self.armed or event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not self.allows(str(path)):
            self.violations.append(str(path))


def load(name: str, seeds: list[bytes], instrument: bool = True):
    """Import the target (under instrumentation) and run the seeds once inside the hook."""
    import contextlib

    if instrument:
        import atheris

        hook = atheris.instrument_imports(include=INSTRUMENTED)
    else:
        hook = contextlib.nullcontext()
    with hook:
        from fuzz import targets

        target = targets.TARGETS[name]
        for module in target.modules:
            importlib.import_module(module)
        for seed in seeds:
            try:
                target.run(seed)
            except Exception:  # noqa: BLE001 - libFuzzer runs the seeds again and reports them
                pass
    return target


def make_test_one(target, guard: OpenGuard):
    def test_one(data: bytes) -> None:
        guard.armed = True
        try:
            target.run(data)
        finally:
            guard.armed = False
        if guard.violations:
            opened, guard.violations[:] = list(guard.violations), []
            raise HostFileOpened(f"the input made {target.name} open {opened[:3]}")
    return test_one


def line_coverage(target, inputs: list[bytes]) -> dict[str, list[int]]:
    """Lines of the target's own modules run by ``inputs``: {module: [covered, executable]}."""
    import types

    wanted = {}
    for name in target.modules:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            wanted[os.path.realpath(path)] = name
    hit: dict[str, set[int]] = {p: set() for p in wanted}

    def tracer(frame, event, arg):
        path = os.path.realpath(frame.f_code.co_filename)
        if path not in hit:
            return None
        hit[path].add(frame.f_lineno)

        def local(frame, event, arg):
            if event == "line":
                hit[path].add(frame.f_lineno)
            return local
        return local

    sys.settrace(tracer)
    try:
        for data in inputs:
            try:
                target.run(data)
            except Exception:  # noqa: BLE001 - coverage only
                pass
    finally:
        sys.settrace(None)

    def executable(code: types.CodeType) -> set[int]:
        lines = {ln for _s, _e, ln in code.co_lines() if ln is not None}
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                lines |= executable(const)
        return lines

    out = {}
    for path, name in wanted.items():
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        lines = executable(code) - {code.co_firstlineno}
        out[name] = [len(hit[path] & lines), len(lines)]
    return out


def _seed_files(dirs: list[str]) -> list[bytes]:
    out = []
    for d in dirs:
        p = Path(d)
        if p.is_dir():
            out += [f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()][:200]
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    name, rest = argv[1], argv[2:]
    guard = OpenGuard()
    if rest and rest[0] == "--lines":
        import json

        target = load(name, [], instrument=False)
        files = [f for d in rest[1:] for f in (sorted(Path(d).iterdir()) if Path(d).is_dir() else [Path(d)])]
        print(json.dumps(line_coverage(target, [f.read_bytes() for f in files[:2000]])))
        return 0
    if rest and rest[0] == "--replay":
        files = rest[1:]
        target = load(name, [], instrument=False)      # replaying needs no atheris
        sys.addaudithook(guard)
        test_one = make_test_one(target, guard)
        for f in files:
            test_one(Path(f).read_bytes())
            print(f"{f}: ok")
        return 0
    import atheris

    target = load(name, _seed_files([a for a in rest if not a.startswith("-")]))
    sys.addaudithook(guard)
    atheris.Setup([argv[0], *rest], make_test_one(target, guard))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
