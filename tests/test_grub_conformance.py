"""GRUB script semantics, table-driven, differential against GRUB itself.

Each case is a configuration and what GRUB printed running it: Debian 12's ``grub-emu`` (GRUB
2.06-13; its script engine, grub-core/script/, is the same as GRUB 2.12's) run headless with the
case as its grub.cfg. The recorded lines are checked two ways: our interpreter must print them
(``GrubConfig.output``, or the booted entry's output for menu cases), and, when grub-emu is
installed (Debian package ``grub-emu``, listed in ./run), grub-emu must still print them, so a
recorded line is never our own guess. Syntax cases are checked against ``grub-script-check``
(package grub-common) the same way.

grub-emu quirks the harness handles: its terminal is 80 columns wide unless ``terminfo -g`` widens
it, it prints GRUB's error messages (dropped: they are not script output), it expands tabs on the
terminal (our output is compared with tabs expanded), and ``halt`` ends it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from immutools.system.grubcfg import check_syntax, parse_grub_cfg

HAVE_EMU = shutil.which("grub-emu") is not None
HAVE_CHECK = shutil.which("grub-script-check") is not None
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class GrubEmu:
    """A directory grub-emu uses as its prefix (``-r host -d DIR``), and the same view of it for
    our interpreter: the variables GRUB sets before grub.cfg runs, file tests and a loader that
    read the host paths ``(host)/...`` and ``/...`` name."""

    def __init__(self, files: dict[str, str] | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="grub-emu-")
        self.dir = os.path.join(self._tmp.name, "g")
        os.mkdir(self.dir)
        for name, body in (files or {}).items():
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write(body)

    def __enter__(self) -> "GrubEmu":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def seeds(self) -> dict[str, str]:
        prefix = f"(host){self.dir}"
        return {"root": "host", "prefix": prefix, "cmdpath": prefix, "grub_platform": "emu",
                "grub_cpu": "x86_64", "config_file": f"{prefix}/grub.cfg", "config_directory": prefix}

    @staticmethod
    def _host(path: str) -> str | None:
        if path.startswith("(host)"):
            return path[len("(host)"):] or "/"
        return path if path.startswith("/") else None

    def file_exists(self, op: str, path: str) -> bool | None:
        host = self._host(path)
        if host is None:
            return None
        if not os.path.lexists(host):
            return False
        return {"-e": True, "-f": os.path.isfile(host), "-d": os.path.isdir(host),
                "-s": os.path.getsize(host) > 0}[op]

    def loader(self, path: str) -> str | None:
        host = self._host(path)
        if host is None or not os.path.isfile(host):
            return None
        with open(host) as handle:
            return handle.read()

    def parse(self, text: str, **seeds):
        return parse_grub_cfg(text, env={**self.seeds(), **seeds}, file_exists=self.file_exists, loader=self.loader)

    def run(self, text: str, epilogue: str = "\nhalt\n", timeout: float = 20) -> list[str]:
        """What grub-emu prints running ``text`` as its grub.cfg (error messages and the
        ``Booting`` banners left out)."""
        with open(os.path.join(self.dir, "grub.cfg"), "w") as handle:
            handle.write("terminfo -g 1000x50 console vt100\n" + text + epilogue)
        try:
            raw = subprocess.run(["grub-emu", "-r", "host", "-d", self.dir], stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=timeout, env={**os.environ, "TERM": "dumb"}).stdout
        except subprocess.TimeoutExpired as exc:       # a configuration GRUB never leaves
            raw = (exc.stdout or b"") + b"\n<grub-emu did not stop>"
        lines: list[str] = []
        started = skip_blank = False
        for line in _ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "").split("\n"):
            if not started:
                started = skip_blank = line.startswith("Welcome to GRUB")
                continue
            if skip_blank and line == "":
                skip_blank = False
                continue
            skip_blank = False
            if line.startswith("error: ") or line.strip() == "Press any key to continue...":
                continue
            if re.match(r"^\s*(Booting|Falling back to) `.*'$", line):
                skip_blank = True
                continue
            lines.append(line)
        while lines and lines[-1] == "":
            lines.pop()
        return lines


def _envblk(body: str) -> str:
    """A GRUB environment block (lib/envblk.c): signature, variables, ``#`` up to 1024 bytes."""
    text = "# GRUB Environment Block\n" + body
    return text + "#" * (1024 - len(text))


def boot_output(cfg) -> list[str]:
    """What GRUB prints reading the file and booting the default entry: the file's output, each
    submenu's on the way, the entry's."""
    out = list(cfg.output)
    entry = cfg.default_entry()
    if entry is not None:
        parts = entry.index.split(">")
        for k in range(1, len(parts)):
            out += next(h for h in cfg.submenus if h.index == ">".join(parts[:k])).output
        out += entry.output
    return [line.expandtabs() for line in out]


SCRIPT_CASES = {
    'quoting': (
        r"""
echo 'single $x "dq" \n'  "double \$x \"q\" \\ \a"  un\ esc\"aped\$x "tab	in" x\	y
echo "multi
line" 'also
multi' con"cat"'ena'tion
echo a\
b "c\
d" 'e\
f'
echo "[" "" '' "]"
echo [$empty] ["$empty"]
""",
        None,
        [
            'single $x "dq" \\n double $x "q" \\ \\a un esc"aped$x tab  in x    y',
            'multi',
            'line also',
            'multi concatenation',
            'ab cd e\\',
            'f',
            '[   ]',
            '[] []',
        ],
    ),
    'variables': (
        """
x=value
echo "[$x] [${x}] [${x}s] [$xs] [$unset] [${unset}x]"
echo "[$1] [$#] [$*] [$@] [$0] [${10}]"
echo "[$1abc] [$?]"
false
echo "[$?]"
x_1=a; X=b
echo "[$x_1$X]"
""",
        None,
        [
            '[value] [value] [values] [] [] [x]',
            '[] [] [] [] [] []',
            '[abc] [0]',
            '[1]',
            '[ab]',
        ],
    ),
    'word_splitting': (
        """x=" lead  mid	tab "

function cnt { echo "$#:[$1][$2][$3][$4]"; }
cnt $x
cnt "$x"
cnt pre${x}post
cnt a$x b
cnt $x$x
e=""
cnt $e $e x $e
cnt "$e" $e
cnt '' ""
nl="one
two"
cnt $nl
""",
        None,
        [
            '3:[lead][mid][tab][]',
            '1:[ lead  mid   tab ][][][]',
            '3:[prelead][mid][tabpost][]',
            '4:[alead][mid][tab][b]',
            '5:[lead][mid][tablead][mid]',
            '1:[x][][][]',
            '1:[][][][]',
            '2:[][][][]',
            '2:[one][two][][]',
        ],
    ),
    'command_names': (
        """
function loadefi { echo "loadefi:$#:$1"; }
function go { echo "go:$#:$1"; }
suf=efi
load$suf /vmlinuz
cmd=go
$cmd a
$empty go b
g$empty"o" c
${cmd} "d e"
""",
        None,
        [
            'loadefi:1:/vmlinuz',
            'go:1:a',
            'go:1:b',
            'go:1:c',
            'go:1:d e',
        ],
    ),
    'assignments': (
        """
a=b
echo "1[$a]"
c=d echo not run
echo "2[$c]"
n=name
$n=value
echo "3[$name]"
set e=f=g
echo "4[$e]"
set h
echo "5[$h] $?"
set i=1 j=2
echo "6[$i][$j]"
set k
unset a n
echo "7[$a][$n]"
unset
echo "8 $?"
set root=(hd0,gpt1)
echo "9[$root]"
""",
        None,
        [
            '1[b]',
            '2[d]',
            '3[value]',
            '4[f=g]',
            '5[] 18',
            '6[1][]',
            '7[][name]',
            '8 18',
            '9[hd0,gpt1]',
        ],
    ),
    'gettext': (
        r"""
x=" a  b "
echo $"gt $x \$y ${x}z \\ end"
echo $"n=$# q=\"x\""
""",
        None,
        [
            'gt  a  b  $y  a  b z \\ end',
            'n= q="x"',
        ],
    ),
    'echo': (
        r"""
echo -n no-newline
echo " after"
echo -e 'tab\there\\back\qdrop'
echo -e 'stop\cNOT'
echo -en x
echo -ne y
echo
echo -x -n z
echo -- -n
echo -e -n w
""",
        None,
        [
            'no-newline after',
            'tab     here\\backdrop',
            'stopNOTxy',
            '-x -n z',
            '-n',
            'w',
        ],
    ),
    'test_strings': (
        """
function t { if "$@"; then echo "$*: true"; else echo "$*: false"; fi; }
t test a = a
t test a == b
t test a != b
t test a "<" b
t test b "<=" a
t test b ">" a
t test a ">=" b
t test -n ""
t test -n x
t test -z ""
t test -z x
t test x
t test ""
t test
t [ ]
t [ -n ]
t [ -z ]
t [ a = a
t [ "" ]
t [ = ]
""",
        None,
        [
            'test a = a: true',
            'test a == b: false',
            'test a != b: true',
            'test a < b: true',
            'test b <= a: false',
            'test b > a: true',
            'test a >= b: false',
            'test -n : false',
            'test -n x: true',
            'test -z : true',
            'test -z x: false',
            'test x: true',
            'test : false',
            'test: true',
            '[ ]: true',
            '[ -n ]: true',
            '[ -z ]: true',
            '[ a = a: true',
            '[  ]: false',
            '[ = ]: true',
        ],
    ),
    'test_numbers': (
        """
function t { if "$@"; then echo "$*: true"; else echo "$*: false"; fi; }
t test 10 -gt 9
t test 10 -lt 9
t test 3 -eq 3
t test 3 -ne 3
t test 3 -ge 4
t test 3 -le 4
t test 0x10 -eq 16
t test 010 -eq 8
t test 08 -eq 8
t test -5 -lt 3
t test a -lt b
t test 12abc -eq 12
t test 4294967296 -eq 0
t test 2147483648 -lt 0
t test 99999999999999999999 -eq 4294967295
t test vmlinuz-010 -plt vmlinuz-9
t test vmlinuz-2 -plt vmlinuz-11
t test abc12 -pgt abc9
t test 5 -pgt 40
t test 1.10 -pgt 1.9
t test a -nlt b
t test "" -nlt b
""",
        None,
        [
            'test 10 -gt 9: true',
            'test 10 -lt 9: false',
            'test 3 -eq 3: true',
            'test 3 -ne 3: false',
            'test 3 -ge 4: false',
            'test 3 -le 4: true',
            'test 0x10 -eq 16: true',
            'test 010 -eq 8: true',
            'test 08 -eq 8: true',
            'test -5 -lt 3: true',
            'test a -lt b: false',
            'test 12abc -eq 12: true',
            'test 4294967296 -eq 0: true',
            'test 2147483648 -lt 0: true',
            'test 99999999999999999999 -eq 4294967295: true',
            'test vmlinuz-010 -plt vmlinuz-9: true',
            'test vmlinuz-2 -plt vmlinuz-11: true',
            'test abc12 -pgt abc9: true',
            'test 5 -pgt 40: false',
            'test 1.10 -pgt 1.9: true',
            'test a -nlt b: true',
            'test  -nlt b: false',
        ],
    ),
    'test_logic': (
        """
function t { if "$@"; then echo "$*: true"; else echo "$*: false"; fi; }
t [ a = a -o b = c -a c = d ]
t [ a = b -o a = a ]
t [ a = a -a a = b ]
t [ ! a = b ]
t [ ! ( a = b ) ]
t [ ! ( a = a -o a = b ) ]
t [ ( a = b -o a = a ) -a x ]
t [ ! ! a = a ]
t [ a = b -a ]
t [ -o ]
t [ ! ]
t [ x -a "" ]
t [ "" -o x ]
t ! false
t ! true
""",
        None,
        [
            '[ a = a -o b = c -a c = d ]: true',
            '[ a = b -o a = a ]: true',
            '[ a = a -a a = b ]: false',
            '[ ! a = b ]: true',
            '[ ! ( a = b ) ]: true',
            '[ ! ( a = a -o a = b ) ]: false',
            '[ ( a = b -o a = a ) -a x ]: true',
            '[ ! ! a = a ]: true',
            '[ a = b -a ]: false',
            '[ -o ]: true',
            '[ ! ]: true',
            '[ x -a  ]: false',
            '[  -o x ]: true',
            '! false: true',
            '! true: false',
        ],
    ),
    'test_files': (
        """
function t { label=$1; shift; if "$@"; then echo "$label: true"; else echo "$label: false"; fi; }
t "-e file" [ -e $prefix/present.txt ]
t "-f file" [ -f $prefix/present.txt ]
t "-d file" [ -d $prefix/present.txt ]
t "-s file" [ -s $prefix/present.txt ]
t "-s empty" [ -s $prefix/empty.txt ]
t "-d dir" [ -d $prefix/subdir ]
t "-e missing" [ -e $prefix/missing.txt ]
t "-f dir" [ -f $prefix/subdir ]
t "-d dir/" [ -d $prefix/subdir/ ]
""",
        {'present.txt': 'content\n', 'empty.txt': '', 'subdir/.keep': ''},
        [
            '-e: true',
            '-f: true',
            '-d: false',
            '-s: true',
            '-s: false',
            '-d: true',
            '-e: false',
            '-f: false',
            '-d: true',
        ],
    ),
    'if_elif_else': (
        """
if false; then echo 1; elif false; then echo 2; elif true; then echo 3; else echo 4; fi
if false; then echo a; fi
echo "after empty if: $?"
if true
then
  echo multi-line
fi
if ! false; then echo inverted; fi
if false; then echo x; else if true; then echo nested; fi; fi
if echo cond; false; then echo y; else echo last-status-counts; fi
""",
        None,
        [
            '3',
            'after empty if: 0',
            'multi-line',
            'inverted',
            'nested',
            'cond',
            'last-status-counts',
        ],
    ),
    'functions': (
        """
function show { echo "$#:[$1][$2][$3] all=[$*]"; }
show a "b c" ''
function r7 { return 7; }
r7
echo "r7 -> $?"
function rlast { false; return; }
rlast
echo "rlast -> $?"
function early { echo one; return 0; echo never; }
early
echo "early -> $?"
function shifter { shift; echo "shift: $# [$1]"; shift 2; echo "shift2: $# [$1]"; setparams p q; echo "setparams: $# [$1][$2]"; }
shifter a b c d e
function show { echo redefined; }
show
function outer { inner "$@" x; }
function inner { echo "inner: $#"; }
outer 1 2
return
echo "top-level return -> $?"
function rec { if [ "$1" != xxxx ]; then rec "${1}x"; else echo "deep $1"; fi; }
rec x
""",
        None,
        [
            '3:[a][b c][] all=[a b c ]',
            'r7 -> 7',
            'rlast -> 1',
            'one',
            'early -> 0',
            'shift: 4 [b]',
            'shift2: 2 [d]',
            'setparams: 2 [p][q]',
            'redefined',
            'inner: 3',
            'top-level return -> 18',
            'deep xxxx',
        ],
    ),
    'loops': (
        """
for i in a b "c d" $empty; do echo "for [$i]"; done
for i in 1 2 3 4; do if [ $i = 2 ]; then continue; fi; if [ $i = 4 ]; then break; fi; echo "i=$i"; done
for i in x y; do for j in 1 2; do if [ $j = 2 ]; then break 2; fi; echo "$i$j"; done; done
n=
while [ "$n" != xxx ]; do n=${n}x; echo "while $n"; done
until [ $n = 0 ]; do n=0; echo "until $n"; done
for k in; do echo never; done
echo "loop var after: [$i] [$k]"
""",
        None,
        [
            'for [a]',
            'for [b]',
            'for [c d]',
            'i=1',
            'i=3',
            'x1',
            'while x',
            'while xx',
            'while xxx',
            'until 0',
            'loop var after: [x] []',
        ],
    ),
    'regexp': (
        """
regexp --set=1:a --set=2:b '^([a-z]+)-([0-9]+)$' 'abc-123'
echo "1 $? [$a][$b]"
regexp --set c '([0-9]+)' 'x42y'
echo "2 $? [$c]"
regexp -s 0:d '[[:digit:]]+' 'ab12cd'
echo "3 [$d]"
regexp 'nomatch' 'abc'
echo "4 $? [$a]"
regexp --set=2:a '(x)|(y)' 'x'
echo "5 $? [$a]"
regexp '^/boot/vmlinuz-(.*)$' --set v '/boot/vmlinuz-6.1.0-57'
echo "6 $? [$v]"
regexp -s 0:w 'a.c' 'a
c'
echo "7 $? [$w]"
regexp -s 0:w '(ab|a)(bc|c)' 'abc'
echo "8 [$w]"
regexp -s 0:w 'x*' 'yyy'
echo "9 $? [$w]"
""",
        None,
        [
            '1 0 [abc][123]',
            '2 0 [42]',
            '3 [12]',
            '4 1 [abc]',
            '5 0 []',
            '6 0 [6.1.0-57]',
            '7 0 [a',
            'c]',
            '8 [abc]',
            '9 0 []',
        ],
    ),
    'eval': (
        """
eval 'set e1=1' 'x'
echo "[$e1]"
cmd="echo"
eval $cmd evaluated "$e1"
eval 'function ef { echo "ef $1"; }'
ef arg
""",
        None,
        [
            '[1]',
            'evaluated 1',
            'ef arg',
        ],
    ),
    'source': (
        """
echo before
source $prefix/sourced.cfg
echo "after [$from_source]"
source $prefix/missing.cfg
echo "missing -> $?"
""",
        {'sourced.cfg': 'set from_source=yes\necho "in sourced"\n'},
        [
            'before',
            'in sourced',
            'after [yes]',
            'missing -> 0',
        ],
    ),
    'load_env': (
        """
load_env -f $prefix/grubenv
echo "[$saved_entry] [$next_entry] [$other]"
load_env -f $prefix/grubenv2 saved_entry
echo "[$saved_entry] [$next_entry] [$other]"
""",
        {"grubenv": _envblk("saved_entry=gnulinux-advanced>gnulinux-6.1\nnext_entry=\nother=a\\\\b\n"),
         "grubenv2": _envblk("saved_entry=second\nother=not-read\n")},
        [
            '[gnulinux-advanced>gnulinux-6.1] [] [a\\b]',
            '[second] [] [a\\b]',
        ],
    ),
    'syntax_recovery': (
        """
echo one
echo x; echo y | echo z; echo q
if true || false; then
  echo two
  set v=1
fi
echo "three [$v]"
echo "50$"
echo ${a-b}
echo [[ x ]]
function f { echo hi }
echo four
""",
        None,
        [
            'one',
            'two',
            'three [1]',
            'four',
        ],
    ),
}

BOOT_CASES = {
    'menu_source_option': (
        r"""
set timeout=0
menuentry "From source" --source 'echo "body from --source: $1"; halt'
""",
        None,
        [
            'body from --source: From source',
        ],
    ),
    'menu_unknown_options_are_arguments': (
        """
set timeout=0
menuentry "C" --unknown-option -x { echo "[$1] [$2] [$3] $#"; halt; }
""",
        None,
        [
            '[C] [--unknown-option] [-x] 3',
        ],
    ),
    'nested_submenus': (
        """
set timeout=0
set default="outer>middle>2"
submenu "outer" {
  submenu "middle" {
    menuentry "m0" { echo m0; halt; }
    menuentry "m1" { echo m1; halt; }
    menuentry "m2" { echo "m2 chosen=[$chosen]"; halt; }
  }
}
""",
        None,
        [
            'm2 chosen=[outer>middle>m2]',
        ],
    ),
    'submenu_sets_its_default': (
        """
set timeout=0
set default=1
menuentry "zero" { echo zero; halt; }
submenu "one" {
  set default=second
  menuentry "first" { echo first; halt; }
  menuentry "second" { echo "second default=[$default]"; halt; }
}
""",
        None,
        [
            'second default=[]',
        ],
    ),
    'menu_params': (
        """
set timeout=0
set default=first
menuentry "First" --id first extra1 "extra 2" --class c1 {
  echo "$#:[$1][$2][$3] chosen=[$chosen] default=[$default]"
  halt
}
""",
        None,
        [
            '3:[First][extra1][extra 2] chosen=[first] default=[]',
        ],
    ),
    'submenu_context': (
        """
set timeout=0
notexp=visible
exp1=ex
export exp1 never_set
set default="sub>inner2"
submenu "Sub Menu" --id sub subarg {
  echo "submenu: [$notexp] [$exp1] [$never_set] $# [$1] [$2] chosen=[$chosen] default=[$default]"
  inner=set-in-sub
  menuentry "Inner1" { echo inner1; halt; }
  menuentry "Inner2" --id inner2 {
     echo "inner2: [$inner] [$notexp] [$exp1] $# [$1] chosen=[$chosen] default=[$default]"
     halt
  }
}
""",
        None,
        [
            'submenu: [] [ex] [] 2 [Sub Menu] [subarg] chosen=[sub] default=[inner2]',
            'inner2: [set-in-sub] [] [ex] 1 [Inner2] chosen=[sub>inner2] default=[]',
        ],
    ),
    'default_number_prefix': (
        """
set timeout=0
set default="1>1"
menuentry "zero" { echo zero; halt; }
submenu "one" {
  menuentry "one-a" { echo one-a; halt; }
  menuentry "one-b" { echo one-b; halt; }
}
""",
        None,
        [
            'one-b',
        ],
    ),
    'default_title_with_gt': (
        """
set timeout=0
set default="a>>b"
menuentry "plain" { echo plain; halt; }
menuentry "a>b" { echo "title with >"; halt; }
""",
        None,
        [
            'title with >',
        ],
    ),
    'default_no_match': (
        """
set timeout=0
set default="nothing-like-this"
menuentry "first" { echo first-entry; halt; }
menuentry "second" { echo second-entry; halt; }
""",
        None,
        [
            'first-entry',
        ],
    ),
    'default_id_over_title': (
        """
set timeout=0
set default="shared"
menuentry "other" --id shared { echo by-id; halt; }
menuentry "shared" { echo by-title; halt; }
""",
        None,
        [
            'by-id',
        ],
    ),
    'configfile_context': (
        """
set private=hd0,gpt7
set boot_uuid=abc
export boot_uuid
echo outer
configfile $prefix/inner.cfg
echo not-reached
""",
        {"inner.cfg": 'echo "inner: [$private] [$boot_uuid]"\nset timeout=0\n'
                      'menuentry x { echo "entry: [$private] [$boot_uuid]"; halt; }\n'},
        [
            'outer',
            'inner: [] [abc]',
            'entry: [] [abc]',
        ],
    ),
    'configfile_empty_menu': (
        """
echo outer
configfile $prefix/inner.cfg
echo "back [$inner_var] [$exported_inner]"
set timeout=0
menuentry y { echo outer-entry; halt; }
""",
        {'inner.cfg': 'inner_var=1\nexport exported_inner\necho inner\n'},
        [
            'outer',
            'inner',
            'back [] []',
            'outer-entry',
        ],
    ),
    'entry_flow': (
        """
set timeout=0
function f { echo in-f; return 3; }
menuentry "E" {
  f
  echo "after f: $?"
  for i in 1 2; do echo "loop $i"; done
  halt
  echo never
}
""",
        None,
        [
            'in-f',
            'after f: 3',
            'loop 1',
            'loop 2',
        ],
    ),
}

# (text, whether grub-script-check accepts it)
SYNTAX = [
    ('echo a\n', True),
    ('echo a; echo b\n', True),
    ('echo a;\n', True),
    ('echo a; ;\n', False),
    ('echo a;;\n', False),
    ('echo a | b\n', False),
    ('echo a || b\n', False),
    ('echo a && b\n', False),
    ('echo a > f\n', False),
    ('echo a < f\n', False),
    ('echo a & \n', False),
    ('echo [[ x ]]\n', False),
    ('echo [[x]]\n', True),
    ('echo fi then do done in\n', True),
    ('if true; then echo; fi\n', True),
    ('if true then; echo; fi\n', False),
    ('if true; then\nfi\n', False),
    ('if true; then echo; else\nfi\n', False),
    ('if true; then echo; elif false; then echo; fi\n', True),
    ('if true; then echo; fi echo\n', False),
    ('while false; do echo; done\n', True),
    ('until true; do echo; done\n', True),
    ('for i in a b; do echo; done\n', True),
    ('for i in; do echo; done\n', True),
    ('for 1 in a; do echo; done\n', False),
    ('for i a b; do echo; done\n', False),
    ('function f { echo; }\n', True),
    ('function f { echo }\n', False),
    ('function f\n{\necho\n}\n', True),
    ('function 1f { echo; }\n', False),
    ('function f-g { echo; }\n', False),
    ('menuentry x { echo; }\n', True),
    ('menuentry x { echo }\n', True),
    ('menuentry x { }\n', False),
    ('menuentry x {\n}\n', False),
    ('menuentry x { function f { echo; }; }\n', False),
    ('{ echo; }\n', False),
    ('echo }\n', False),
    ('echo {\n', False),
    ('echo a {b}\n', True),
    ('echo "50$"\n', False),
    ('echo "a $ b"\n', False),
    ('echo a$\n', False),
    ('echo ${foo-bar}\n', False),
    ('echo ${foo\n', False),
    ('echo $"hi $x"\n', True),
    ('echo ${1}${#}${?}$@$*$10\n', True),
    ('echo "unterminated\n', False),
    ("echo 'unterminated\n", False),
    ('echo a\\\n b\n', True),
    ('echo a\\', False),
    ('x=1 echo\n', True),
    ('echo #comment\n', True),
    ('echo a#b\n', True),
    ('# only a comment\n', True),
    ('echo $(x)\n', False),
    ('echo `x`\n', True),
    ('echo a;b\n', True),
    ('if true; then if true; then echo; fi; fi\n', True),
    ('case x in esac\n', False),
    ('select x\n', False),
    ('echo case esac select function\n', True),
    ('then\n', False),
    ('fi\n', False),
    ('done\n', False),
    ('if true; then echo; fi; echo\n', True),
    ('echo "a\nb"\n', True),
    ("echo 'a\nb'\n", True),
    ('echo \\$x\n', True),
    ('!\n', True),
    ('! true\n', True),
]


@pytest.mark.parametrize("name", SCRIPT_CASES)
def test_script_case(name):
    text, files, expected = SCRIPT_CASES[name]
    with GrubEmu(files) as emu:
        cfg = emu.parse(text)
    assert [line.expandtabs() for line in cfg.output] == expected


@pytest.mark.skipif(not HAVE_EMU, reason="grub-emu (Debian package grub-emu) is not installed")
@pytest.mark.parametrize("name", SCRIPT_CASES)
def test_script_case_is_what_grub_emu_prints(name):
    text, files, expected = SCRIPT_CASES[name]
    with GrubEmu(files) as emu:
        assert emu.run(text) == expected


@pytest.mark.parametrize("name", BOOT_CASES)
def test_boot_case(name):
    text, files, expected = BOOT_CASES[name]
    with GrubEmu(files) as emu:
        cfg = emu.parse(text)
    assert boot_output(cfg) == expected


@pytest.mark.skipif(not HAVE_EMU, reason="grub-emu (Debian package grub-emu) is not installed")
@pytest.mark.parametrize("name", BOOT_CASES)
def test_boot_case_is_what_grub_emu_prints(name):
    text, files, expected = BOOT_CASES[name]
    with GrubEmu(files) as emu:
        assert emu.run(text, epilogue="") == expected


@pytest.mark.parametrize("text,accepted", SYNTAX)
def test_syntax(text, accepted):
    assert (check_syntax(text) == []) == accepted


@pytest.mark.skipif(not HAVE_CHECK, reason="grub-script-check (Debian package grub-common) is not installed")
@pytest.mark.parametrize("text,accepted", SYNTAX)
def test_syntax_is_what_grub_script_check_says(text, accepted, tmp_path):
    path = tmp_path / "grub.cfg"
    path.write_text(text)
    result = subprocess.run(["grub-script-check", str(path)], capture_output=True, text=True)
    assert ("Syntax error" not in result.stdout + result.stderr) == accepted


def test_fallback_titles_are_ignored_by_grub():
    """normal/menu.c reads ``fallback`` as numbers only: a title (what Talos writes) does not
    make GRUB try that entry. The interpreter says so."""
    text = ('set timeout=0\nset default="A"\nset fallback="B"\n'
            'menuentry "A" { echo in-A; }\nmenuentry "B" { echo in-B; halt; }\n')
    cfg = parse_grub_cfg(text)
    assert any("fallback 'B' is not an entry number" in w for w in cfg.warnings)
    numeric = parse_grub_cfg(text.replace('fallback="B"', 'fallback="1"'))
    assert not any("fallback" in w for w in numeric.warnings) and numeric.fallback_entries()[0].title == "B"
    if HAVE_EMU:
        with GrubEmu() as emu:
            assert "in-B" not in emu.run(text, epilogue="", timeout=1.5)
            assert emu.run(text.replace('fallback="B"', 'fallback="1"'), epilogue="") == ["in-A", "", "in-B"]
