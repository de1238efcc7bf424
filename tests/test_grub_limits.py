"""Hostile grub.cfg files: every bound ends the evaluation with a limit message naming file and
line (LimitExceededError) or a warning, never a memory blow-up, a hang or a traceback."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from immutools.errors import ImmutoolsError, LimitExceededError
from immutools.system.grubcfg import parse_grub_cfg

DOUBLING = "set a=$a$a$a$a$a$a$a$a\n" * 64 + "menuentry x { linux /k $a }\n"
DOUBLING_BRACED = "set b=${b}${b}${b}${b}${b}${b}${b}${b}\n" * 64 + "menuentry x { linux /k $b }\n"


def test_doubling_unset_variable_is_empty_as_in_grub():
    """The 64-line doubling file alone: ``$a`` is unset, GRUB expands it to nothing, so ``a``
    stays empty (the old interpreter expanded it to ``$a`` and grew to gigabytes)."""
    for text, var in ((DOUBLING, "a"), (DOUBLING_BRACED, "b")):
        cfg = parse_grub_cfg(text)
        assert cfg.variables[var] == "" and cfg.entries[0].cmdline_words == []


@pytest.mark.parametrize("text,var", [(DOUBLING, "a"), (DOUBLING_BRACED, "b")])
def test_doubling_a_set_variable_stops_at_the_value_limit(text, var):
    # a value of one character grows eightfold per line: 8**6 characters (plus "a=") on line 7
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:7: a value longer than 262144 characters$"):
        parse_grub_cfg(f"set {var}=x\n" + text)
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:6: "):
        parse_grub_cfg(text, env={var: "x"})            # seeded by the caller instead
    with pytest.raises(LimitExceededError, match=r"^/oem/grub\.cfg:7: "):
        parse_grub_cfg(f"set {var}=x\n" + text, name="/oem/grub.cfg")


def test_doubling_a_run_time_unknown_is_bounded_too():
    """``$a`` unknown at run time (set by ``search``) doubles as ``$a$a...``: same limit."""
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:7: a value longer than"):
        parse_grub_cfg("search --set a --file /x\n" + DOUBLING)


def test_doubling_under_a_small_address_space():
    """The limit message comes before memory runs out: the doubling file evaluated in a process
    whose address space is capped at 256 MiB (the unbounded expansion needs gigabytes)."""
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
        from immutools.errors import LimitExceededError
        from immutools.system.grubcfg import parse_grub_cfg
        text = sys.stdin.read()
        try:
            parse_grub_cfg(text)
        except LimitExceededError as exc:
            print("limit:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], input="set a=x\n" + DOUBLING,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "limit: grub.cfg:7: a value longer than 262144 characters"


def test_total_output_is_bounded():
    """Each value stays below the per-value limit; together they pass the total."""
    many = "set a=" + "x" * 250_000 + "\nfor i in " + " ".join(map(str, range(200))) + "; do echo $a; done\n"
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:2: evaluation produced more than 33554432 characters$"):
        parse_grub_cfg(many)


def test_endless_loops_hit_the_step_limit():
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:2: more than 200000 commands evaluated"):
        parse_grub_cfg("set x=1\nwhile true; do\n  set x=2\ndone\n")
    with pytest.raises(LimitExceededError, match=r"more than 200000 commands"):
        parse_grub_cfg("function f { for i in 1 2 3 4 5 6 7 8 9 10; do f; done; }\nf\n")


def test_recursion_is_a_warning_not_a_crash():
    cfg = parse_grub_cfg("function f { f; }\nf\nmenuentry x { linux /k }\n")
    assert any(w.startswith("grub.cfg:1: call of 'f' nested too deeply") for w in cfg.warnings)
    assert cfg.entries[0].kernel == "/k"
    loop = parse_grub_cfg("source /self\nset after=1\n", loader=lambda p: "source /self\n")
    assert any("source /self: nested too deeply" in w for w in loop.warnings) and loop.variables["after"] == "1"


def test_reading_through_the_loader_is_bounded():
    big = "# padding\n" * 300_000 + "set x=1\n"          # 3 MB per file, below the per-file limit
    with pytest.raises(LimitExceededError, match=r"more than 16777216 characters read"):
        parse_grub_cfg("for i in 1 2 3 4 5 6 7 8; do source /big; done\n", loader=lambda p: big)


def test_counts_are_bounded():
    entries = "".join(f"menuentry e{i} {{ linux /k }}\n" for i in range(4097))
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:4097: more than 4096 menu entries$"):
        parse_grub_cfg(entries)
    variables = "for i in " + " ".join(str(k) for k in range(5000)) + "; do set v$i=1; done\n"
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:1: more than 4096 variables$"):
        parse_grub_cfg(variables)
    forks = "for i in " + " ".join(str(k) for k in range(3000)) + "; do if [ -f /x$i ]; then y=$i; fi; done\n"
    with pytest.raises(LimitExceededError, match=r"more than 4096 undecidable branches"):
        parse_grub_cfg(forks)


def test_nesting_limit_names_the_line():
    deep = "menuentry x {\n" * 40 + "linux /k\n" + "}\n" * 40
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:33: blocks nested deeper than 32$"):
        parse_grub_cfg(deep)
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:2: blocks nested deeper than 32$"):
        parse_grub_cfg("echo\neval '" + "if true; then " * 40 + "echo; " + "fi; " * 40 + "'\n")


def test_backtracking_patterns_are_refused():
    cfg = parse_grub_cfg("regexp --set v '(a+)+$' " + "a" * 40 + "b\necho \"[$v] $?\"\n")
    assert any("could backtrack exponentially: not evaluated" in w for w in cfg.warnings)
    assert cfg.output == ["[$v] $?"] and "v" in cfg.unknown


def test_random_text_never_escapes_as_a_traceback():
    rng = random.Random(20240611)
    alphabet = list("abc${}\"'\\;\n #=[]-()|&<>!*?") + [
        "menuentry ", "submenu ", "if ", "then ", "elif ", "else ", "fi ", "for ", "in ", "do ", "done ",
        "while ", "function ", "set ", "linux ", "source ", "eval ", "regexp ", "test ", "return ", "break "]
    for _ in range(400):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 160)))
        try:
            parse_grub_cfg(junk, loader=lambda p: junk, file_exists=lambda op, p: None)
        except ImmutoolsError:
            pass


def test_nesting_through_calls_and_sources_is_a_limit_with_a_line():
    nested = "function f { " + "if true; then " * 31 + "f; " + "fi; " * 31 + "}\nf\n"
    with pytest.raises(LimitExceededError, match=r"^grub\.cfg:1: blocks, calls and sourced files nested too deep"):
        parse_grub_cfg(nested)
    sourced = "if true; then " * 30 + "source /s; " + "fi; " * 30 + "\n"
    with pytest.raises(LimitExceededError, match=r"^/s:1: blocks, calls and sourced files nested too deep"):
        parse_grub_cfg(sourced, loader=lambda p: sourced)


def test_a_file_that_reads_itself_twice_stops_at_the_file_limit():
    """Found by the grub fuzz target (``configfile`` of itself in undecidable branches, 25 s): a
    grub.cfg that reads itself twice doubles the work at every level (2**16 file runs under the
    nesting bound alone). The number of files read through source/configfile is bounded, and a file
    read again is not parsed again."""
    text = "set x=1\nsource /grub.cfg\nsource /grub.cfg\nmenuentry x { linux /k }\n"
    reads = []

    def loader(path):
        reads.append(path)
        return text

    with pytest.raises(LimitExceededError, match=r"^/grub\.cfg:[23]: more than 256 files read through source/configfile$"):
        parse_grub_cfg(text, name="/grub.cfg", loader=loader)
    assert len(reads) == 256
