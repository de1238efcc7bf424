"""Reading a GRUB configuration offline: GRUB's own script semantics, bounded.

Our own interpreter because no library evaluates grub.cfg. It follows GRUB 2.12's script engine
(grub-core/script/yylex.l, parser.y, execute.c, argv.c; identical in 2.06) and the commands a
configuration uses, and is checked against Debian 12's ``grub-emu`` (GRUB 2.06) and
``grub-script-check`` in tests/test_grub_conformance.py. The manual's chapter is
https://www.gnu.org/software/grub/manual/grub/html_node/Shell_002dlike-scripting.html.

What GRUB only knows at run time is kept apart from what is unset. An unset variable is the empty
string, as in GRUB. ``$root``, ``$prefix``, ``$cmdpath``, ``$grub_platform``, ``$grub_cpu``,
``$config_file`` and ``$config_directory`` (set by GRUB before grub.cfg runs) and every variable
a run-time command sets (``search --set``, ``gptprio.next -u``, ``getenv``, ``read`` ...) are
*unknown at run time*: they show as ``$name`` in results, are listed in ``GrubConfig.unknown``,
and a condition that depends on one is undecidable. The caller seeds what it knows through
``env`` (``grub_platform``, ``usr_uuid`` from the GPT priorities ...); a seeded variable is also
what a run-time command that sets it yields (the caller knows what ``gptprio.next`` picks).

An undecidable ``if`` runs every branch on its own copy of the state and merges them: a variable
the branches leave different becomes unknown, menu entries defined in only some branches are
``conditional``. An undecidable loop condition is merged the same way over zero and one more
iteration. Nothing is dropped silently: whatever is not evaluated (a command not modelled that
could change variables or the menu, an undecidable condition, a file not read, a syntax error, a
default entry without a ``linux`` command) is a warning ``<file>:<line>: ...`` in
``GrubConfig.warnings``. Byte, step and nesting limits raise LimitExceededError naming file and
line (with ``a`` set, ``set a=$a$a$a$a$a$a$a$a`` repeated stops on its sixth line).

Menu entries run, like at boot, after the whole file: with the final variables, their positional
parameters (``$1`` the title, ``$2``... extra arguments: menuentry.c ``setparams_prefix``),
``$chosen`` and the rest of ``$default`` set as normal/menu.c does. A submenu's body runs in a new
context holding only exported variables (normal/context.c). The kernel command line is
``GrubEntry.cmdline``: the ``linux`` arguments joined as lib/cmdline.c
``grub_create_loader_cmdline`` does.

Conformance table (source files are grub-core/ of GRUB 2.12; "not" means not evaluated, with a
warning; the cases are checked in tests/test_grub_conformance.py):

==================================  =========  ====================================================
Construct                           Status     How, and the GRUB source it follows
==================================  =========  ====================================================
words: '..', "..", \\x, $name,       evaluated  script/yylex.l (SPLIT, DQUOTE, SQUOTE, VAR states);
${name}, $1, ${10}, $?, $#, $@, $*             a lone $, ${a-b}, |, &, <, >, ;;, [[ and ]] are
                                               syntax errors
$"..." (gettext)                    partly     untranslated, variables substituted, as
                                               script/execute.c gettext_append with no catalogue
                                               for $lang
unquoted word splitting, empty      evaluated  script/execute.c grub_script_arglist_to_argv,
words                                          script/argv.c: split at space, tab, CR, LF only; an
                                               empty unquoted word disappears, "" stays
file name wildcards (* and ? in     not        kept as written, with a warning (GRUB expands them
words starting with /, ( or *)                 only once the regexp module is loaded:
                                               commands/wildcard.c)
unset variable                      evaluated  the empty string (script/execute.c
                                               grub_script_env_get)
variables in command names          evaluated  the name is looked up after expansion
(linux$suf, $cmd args)                         (script/execute.c grub_script_execute_cmdline); a
                                               name unknown at run time: warning
name=value as a command             evaluated  script/execute.c: only when no command or function
                                               has that name; the rest of the line is ignored
set, unset, export                  evaluated  kern/corecmd.c (first argument only),
                                               normal/context.c; root's write hook drops
                                               parentheses (kern/main.c)
if/elif/else/fi                     evaluated  script/execute.c grub_script_execute_cmdif on $?;
                                               undecidable: both branches merged, warning
[ and test                          evaluated  commands/test.c: = == != < <= > >=, -eq -ne -lt -le
                                               -gt -ge (grub_strtoul base 0, then a C int), -plt
                                               -pgt, -n -z, !, -a, -o, ( ), a bare string, ]
                                               optional, GRUB's left-to-right and/or
-e -f -d -s                         partly     answered by the caller's file_exists callback;
                                               without an answer: undecidable, warning
-nt, -ot (file times)               not        undecidable, warning
true, false, ! prefix               evaluated  commands/true.c, script/execute.c
function, calls, return, $1..,      evaluated  script/parser.y, script/execute.c
shift, setparams                               grub_script_function_call,
                                               grub_script_return/shift/setparams
for, while, until, break, continue  evaluated  script/execute.c; an undecidable loop condition:
                                               zero and one more iteration merged, warning
source, .                           evaluated  commands/configfile.c, same context, through the
                                               caller's loader; a file not read: warning
configfile                          evaluated  a new context of the exported variables; its menu
                                               replaces this one when it has entries (normal/main.c
                                               grub_normal_execute); in a menu entry or not read:
                                               warning
eval                                evaluated  commands/eval.c
regexp, --set [N:]VAR               evaluated  commands/regexp.c; POSIX ERE translated to Python re
                                               (leftmost-longest alternation not modelled: warning
                                               when | is used; patterns that could backtrack
                                               exponentially: not evaluated, warning)
echo -n -e                          evaluated  commands/echo.c; kept in GrubConfig.output and
                                               GrubEntry.output
search, search.fs_uuid,             partly     commands/search_wrap.c, search.c: the variable
search.fs_label, search.file                   (--set's, default root) is unknown at run time
(--set, --no-floppy, --hint*, and              unless seeded, warning
the --part-label, --part-uuid,
--disk-uuid, --root-dev-only of
Flatcar's and Bottlerocket's GRUB)
gptprio.next, gptpriority, getenv,  partly     the variables they set are unknown at run time
smbios, probe, read, tr,                       unless seeded (then $? is 0), warning
net_get_dhcp_option
load_env                            partly     $prefix/grubenv or -f FILE read through the loader
                                               (lib/envblk.c format); not read: warning
menuentry, submenu: --class --id    evaluated  commands/menuentry.c with lib/arg.c's option rules;
--users --unrestricted --hotkey                entries run as normal/menu.c grub_menu_execute_entry
--source, extra arguments                      ($chosen, $default)
default: index, title, id, a>b      evaluated  normal/menu.c get_entry_number: grub_strtoul first,
submenu paths                                  then titles and ids (>> escapes >); no match: entry
                                               0, warning
fallback                            partly     listed as written; a title is not a number, which
                                               GRUB ignores (normal/menu.c): warning
linux*, initrd*                     evaluated  recorded per entry; the command line as
                                               lib/cmdline.c grub_create_loader_cmdline
boot, exit, halt, reboot,           evaluated  end the entry or the configuration
normal_exit
insmod, terminal_output, serial,    partly     run without effect; $? unknown
loadfont, chainloader and other
commands without effect on
variables or the menu
any other command                   not        warning (it could change variables or the menu); $?
                                               unknown
syntax errors                       evaluated  the line group GRUB reads as one unit is dropped
                                               from its first line to the error's line, statements
                                               before the error on that first line included, and
                                               reading resumes on the next line (normal/main.c,
                                               checked with grub-emu)
==================================  =========  ====================================================

Numbers follow 64-bit GRUB (x86_64/arm64 EFI); 32-bit platforms (i386-pc) wrap earlier. Files
lose ``\\r`` and lines starting with ``#`` as normal/main.c ``read_config_file_getline`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from immutools.errors import CorruptDataError, ImmutoolsError, LimitExceededError
from immutools.system.cmdline import KernelCmdline

# ---------------------------------------------------------------------------------------------
# Bounds. GRUB has none (it runs until memory or stack run out); a hostile file must not take us
# there. Byte, step and nesting limits raise LimitExceededError naming file and line; the depth
# limit only stops that call or source (a warning).
# ---------------------------------------------------------------------------------------------
_MAX_CFG_BYTES = 4 * 1024 * 1024      # one configuration file
_MAX_SOURCED_BYTES = 16 * 1024 * 1024  # all files read through the loader, together
_MAX_FILE_READS = 256                  # files read through source/configfile, together (a file that
                                       # reads itself twice doubles the work at every level)
_MAX_VALUE = 256 * 1024               # one expanded argument or variable value (characters)
_MAX_TOTAL = 32 * 1024 * 1024         # characters produced by all expansions together
_MAX_STEPS = 200_000                  # commands executed
_MAX_DEPTH = 16                       # function calls, source, eval, configfile inside each other
_MAX_NESTING = 32                     # blocks inside each other
_MAX_FORKS = 4096                     # undecidable branches evaluated side by side
_MAX_VARIABLES = 4096                 # distinct variables
_MAX_ENTRIES = 4096                   # menu entries

_SPACE = " \t\r\n"                    # grub_isspace (kern/misc.c)
_SPLIT = re.compile(r"[ \t\r\n]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]+")
_KEYWORDS = frozenset({"case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in",
                       "select", "then", "until", "while", "function"})
_LINUX = re.compile(r"^linux(16|efi|32|64)?$")
_INITRD = re.compile(r"^initrd(16|efi|32|64)?$")
_DEFAULT_FILE = "grub.cfg"

# GRUB error numbers that show in ``$?`` (include/grub/err.h)
_ERR_TEST_FAILURE = 1
_ERR_INVALID_COMMAND = 17
_ERR_BAD_ARGUMENT = 18

# Variables GRUB sets before grub.cfg runs (kern/main.c, normal/main.c): known constants ...
_GRUB_DEFAULTS = {
    **{f"feature_{f}": "y" for f in ("chainloader_bpb", "ntldr", "platform_search_hint",
                                      "default_font_path", "all_video_module", "menuentry_id",
                                      "menuentry_options", "200_final", "nativedisk_cmd",
                                      "timeout_style")},
    "color_normal": "light-gray/black", "color_highlight": "black/light-gray", "pager": "",
}
# ... and what depends on the machine and the GRUB build: unknown unless the caller seeds it.
_GRUB_RUNTIME = ("root", "prefix", "cmdpath", "grub_platform", "grub_cpu", "config_file",
                 "config_directory")


# ---------------------------------------------------------------------------------------------
# Values. A value GRUB only knows at run time is a hole; a string with holes in it is a tuple of
# segments (str | _Hole). A plain str is fully known.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Hole:
    name: str                             # the variable GRUB would read: "usr_uuid"

    def __str__(self) -> str:
        return "$" + self.name


def _join(segments) -> str | tuple:
    """Segments (str, _Hole or values) -> a value; adjacent strings merged."""
    out: list = []
    for seg in segments:
        for part in (seg if isinstance(seg, tuple) else (seg,)):
            if isinstance(part, str):
                if not part:
                    continue
                if out and isinstance(out[-1], str):
                    out[-1] += part
                    continue
            out.append(part)
    if not any(isinstance(s, _Hole) for s in out):
        return "".join(out)
    return tuple(out)


def show(value) -> str:
    """A value as text; what GRUB only knows at run time appears as ``$name``."""
    if isinstance(value, str):
        return value
    return "".join(str(s) for s in value)


def _holes(value) -> set[str]:
    return set() if isinstance(value, str) else {s.name for s in value if isinstance(s, _Hole)}


def _vlen(value) -> int:
    return len(value) if isinstance(value, str) else sum(len(str(s)) for s in value)


def _split_value(value) -> list:
    """grub_script_argv_split_append (script/argv.c): words at GRUB white space, leading and
    trailing space dropped. A hole stays one word (what it holds is unknown)."""
    pieces: list[list] = [[]]
    for seg in (value,) if isinstance(value, str) else value:
        if isinstance(seg, _Hole):
            pieces[-1].append(seg)
            continue
        chunks = _SPLIT.split(seg)
        if chunks[0]:
            pieces[-1].append(chunks[0])
        for chunk in chunks[1:]:
            if pieces[-1]:
                pieces.append([])
            if chunk:
                pieces[-1].append(chunk)
    if not pieces[-1]:
        pieces.pop()
    return [_join(p) for p in pieces]


def _strtoull(text: str, base: int = 0) -> tuple[int | None, int]:
    """grub_strtoull (kern/misc.c): (value, or None when no digit was read; index after it).
    Overflow gives 2**64-1 as GRUB's ~0ULL."""
    i, n = 0, len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    if i < n and text[i] == "0":
        if i + 1 < n and text[i + 1] == "x":
            if base in (0, 16):
                base = 16
                i += 2
        elif base == 0 and i + 1 < n and "0" <= text[i + 1] <= "7":
            base = 8
    if base == 0:
        base = 10
    num = None
    while i < n:
        c = text[i]
        digit = int(c, 36) if c.isascii() and c.isalnum() else 99
        if digit >= base:
            break
        num = (num or 0) * base + digit
        if num > 0xFFFFFFFFFFFFFFFF:
            return 0xFFFFFFFFFFFFFFFF, i
        i += 1
    return num, i


def _strtoul(text: str, base: int = 0) -> int:
    return _strtoull(text, base)[0] or 0


def _strtosl(text: str) -> int:
    """test.c grub_strtosl: a sign, grub_strtoul, then a C int (the comparison is on ints)."""
    value = (-_strtoul(text[1:])) if text.startswith("-") else _strtoul(text)
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# ---------------------------------------------------------------------------------------------
# Lexer (script/yylex.l). A word is a list of parts:
#   ("text", s)    unquoted text, escapes already removed (execute.c wildcard_unescape)
#   ("sq", s) ("dq", s)   quoted text (an empty one still makes an argument)
#   ("var", name) ("dqvar", name)   unquoted / double-quoted variable
#   ("gettext", s)  $"..." with its I18NQUOTE escapes applied
# ---------------------------------------------------------------------------------------------
@dataclass
class _Tok:
    kind: str                    # word, nl, ;, {, }, bad, eof
    line: int
    pos: int                     # offset in the text (block bodies are cut from it)
    end: int = 0
    parts: list | None = None
    raw: str = ""                # the word as written
    message: str = ""            # for bad tokens

    @property
    def keyword(self) -> str | None:
        return self.raw if self.kind == "word" and self.raw in _KEYWORDS else None

    @property
    def is_name(self) -> bool:
        return self.kind == "word" and _NAME.fullmatch(self.raw) is not None


class _SyntaxError(Exception):
    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class _TooDeep(Exception):
    def __init__(self, line: int):
        super().__init__(f"blocks nested deeper than {_MAX_NESTING}")
        self.line = line


_WORD_END = set(" \t\n;|&<>{}")


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "\n":
            toks.append(_Tok("nl", line, i, i + 1))
            line += 1
            i += 1
        elif c == ";":
            if text.startswith(";;", i):
                toks.append(_Tok("bad", line, i, i + 2, message="';;'"))
                i += 2
            else:
                toks.append(_Tok(";", line, i, i + 1))
                i += 1
        elif c in "|&<>":
            size = 2 if text.startswith(("||", "&&"), i) else 1
            toks.append(_Tok("bad", line, i, i + size, message=f"{text[i:i + size]!r}"))
            i += size
        elif c in "{}":
            toks.append(_Tok(c, line, i, i + 1))
            i += 1
        elif text.startswith(("[[", "]]"), i) and (i + 2 >= n or text[i + 2] in _WORD_END):
            toks.append(_Tok("bad", line, i, i + 2, message=f"{text[i:i + 2]!r}"))
            i += 2
        else:
            i, line = _lex_word(text, i, line, toks)
    toks.append(_Tok("nl", line, n, n))          # GRUB ends every line with a newline
    toks.append(_Tok("eof", line, n, n))
    return toks


def _lex_word(text: str, i: int, line: int, toks: list[_Tok]) -> tuple[int, int]:
    start, start_line, n = i, line, len(text)
    parts: list = []

    def add(kind: str, s: str) -> None:
        if kind == "text" and parts and parts[-1][0] == "text":
            parts[-1] = ("text", parts[-1][1] + s)
        else:
            parts.append((kind, s))

    def bad(message: str, at: int) -> tuple[int, int]:
        toks.append(_Tok("bad", line, start, at, message=message))
        return at, line

    while i < n and text[i] not in _WORD_END:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                return bad("a backslash at the end of the file", n)
            if text[i + 1] == "\n":          # line continuation (POS_MULTILINE)
                line += 1
            else:
                add("text", text[i + 1])
            i += 2
        elif c == "'":
            close = text.find("'", i + 1)
            if close < 0:
                return bad("unterminated single quote", n)
            add("sq", text[i + 1:close])
            line += text.count("\n", i, close)
            i = close + 1
        elif c == '"':
            i, line, ok = _lex_dquote(text, i + 1, line, add)
            if not ok:
                return bad("unterminated double quote or bad variable in it", i)
        elif c == "$":
            if i + 1 < n and text[i + 1] == '"':
                i, line, ok = _lex_gettext(text, i + 2, line, add)
                if not ok:
                    return bad('unterminated $"', i)
                continue
            name, after = _var_name(text, i + 1)
            if name is None:
                return bad("'$' not followed by a variable name", i + 1)
            add("var", name)
            i = after
        else:
            add("text", c)
            i += 1
    raw = text[start:i]
    toks.append(_Tok("word", start_line, start, i, parts, raw))
    return i, line


def _var_name(text: str, i: int) -> tuple[str | None, int]:
    """After ``$``: NAME, DIGITS, one of ``?#*@``, or the same in braces (yylex.l VAR state)."""
    braced = text.startswith("{", i)
    j = i + 1 if braced else i
    m = _NAME.match(text, j) or _DIGITS.match(text, j)
    if m:
        name, j = m.group(0), m.end()
    elif j < len(text) and text[j] in "?#*@":
        name, j = text[j], j + 1
    else:
        return None, i
    if braced:
        if not text.startswith("}", j):
            return None, i
        j += 1
    return name, j


def _lex_dquote(text: str, i: int, line: int, add) -> tuple[int, int, bool]:
    """Inside ``"..."`` (DQUOTE state): ``\\$ \\\\ \\"`` and backslash-newline are escapes, any
    other backslash stays; ``$`` must start a variable."""
    n = len(text)
    add("dq", "")
    buf: list[str] = []
    while i < n:
        c = text[i]
        if c == '"':
            add("dq", "".join(buf))
            return i + 1, line, True
        if c == "\\" and i + 1 < n and text[i + 1] in '$\\"\n':
            if text[i + 1] == "\n":
                line += 1
            else:
                buf.append(text[i + 1])
            i += 2
        elif c == "$":
            name, after = _var_name(text, i + 1)
            if name is None:                   # yylex.l matched the whole string first
                return _skip_dquote(text, i + 1, line), line, False
            add("dq", "".join(buf))
            buf = []
            add("dqvar", name)
            i = after
        else:
            if c == "\n":
                line += 1
            buf.append(c)
            i += 1
    return n, line, False


def _skip_dquote(text: str, i: int, line: int) -> int:
    """The index after the closing quote of a double-quoted string (or the end)."""
    n = len(text)
    while i < n and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return min(i + 1, n)


def _lex_gettext(text: str, i: int, line: int, add) -> tuple[int, int, bool]:
    """Inside ``$"..."`` (I18NQUOTE state): ``\\\\`` stays two backslashes, ``\\"`` is a quote."""
    n = len(text)
    buf: list[str] = []
    while i < n:
        c = text[i]
        if c == '"':
            add("gettext", "".join(buf))
            return i + 1, line, True
        if c == "\\" and i + 1 < n and text[i + 1] in '\\"\n':
            if text[i + 1] == "\\":
                buf.append("\\\\")
            elif text[i + 1] == '"':
                buf.append('"')
            else:
                line += 1
            i += 2
            continue
        if c == "\n":
            line += 1
        buf.append(c)
        i += 1
    return n, line, False


def _read_lines(text: str) -> tuple[str, list[int]]:
    """What normal/main.c's reader hands the parser: no ``\\r``, no line starting with ``#``.
    Returns the text and, per remaining line, its number in the file."""
    kept, numbers = [], []
    for number, line in enumerate(text.replace("\r", "").split("\n"), 1):
        if line.startswith("#"):
            continue
        kept.append(line)
        numbers.append(number)
    return "\n".join(kept), numbers


# ---------------------------------------------------------------------------------------------
# Parser (script/parser.y)
# ---------------------------------------------------------------------------------------------
@dataclass
class _Cmd:
    words: list                  # _Tok words
    block: "_Block | None"
    line: int


@dataclass
class _Block:
    body: list
    text: str                    # the source between the braces
    line: int


@dataclass
class _If:
    cond: list
    then: list
    orelse: list | None           # commands, or [_If] for elif
    line: int


@dataclass
class _For:
    name: str
    words: list
    body: list
    line: int


@dataclass
class _While:
    cond: list
    body: list
    until: bool
    line: int


@dataclass
class _Func:
    name: str
    body: list
    line: int


@dataclass
class _Bad:
    message: str
    line: int


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _lex(text)
        self.pos = 0
        self.depth = 0

    # -- tokens --
    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def fail(self, tok: _Tok, what: str = ""):
        shown = tok.message or (f"'{tok.raw}'" if tok.kind == "word" else
                                {"nl": "end of line", "eof": "end of file"}.get(tok.kind, f"'{tok.kind}'"))
        raise _SyntaxError(f"syntax error at {shown}" + (f" ({what})" if what else ""), tok.line)

    def newlines(self) -> None:
        while self.peek().kind == "nl":
            self.take()

    def is_delimiter(self) -> bool:
        return self.peek().kind in (";", "nl")

    def delimiters(self) -> bool:
        """delimiters1: one ``;`` or newline, then only newlines. False when there is none."""
        if not self.is_delimiter():
            return False
        self.take()
        self.newlines()
        return True

    def expect_keyword(self, word: str) -> None:
        if self.peek().keyword != word:
            self.fail(self.peek(), f"'{word}' expected")
        self.take()

    # -- grammar --
    def script(self) -> list:
        """The statements of the text, read the way normal/main.c reads a file: one line at a
        time (more lines while a statement is open). A syntax error drops everything parsed
        from that line group, statements before the error on its first line included, and
        parsing resumes on the line after the error (what grub-emu does)."""
        nodes: list = []
        while True:
            self.newlines()
            if self.peek().kind == "eof":
                return nodes
            unit: list = []
            try:
                while True:
                    unit.append(self.statement())
                    tok = self.peek()
                    if tok.kind == ";":
                        self.take()
                        if self.peek().kind in ("nl", "eof"):
                            break
                        continue
                    if tok.kind in ("nl", "eof"):
                        break
                    self.fail(tok, "end of command expected")
                nodes.extend(unit)
            except _SyntaxError as exc:
                dropped = f" ({len(unit)} command(s) before it on the same line dropped too)" if unit else ""
                nodes.append(_Bad(str(exc) + dropped, exc.line))
                while self.peek().kind != "eof" and not (self.peek().kind == "nl" and self.peek().line >= exc.line):
                    self.take()

    def statement(self):
        if self.peek().keyword == "function":
            return self.function()
        return self.command()

    def nested(self, parse):
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _TooDeep(self.peek().line)
        try:
            return parse()
        finally:
            self.depth -= 1

    def command(self):
        tok = self.peek()
        kw = tok.keyword
        if kw == "if":
            return self.nested(self.if_command)
        if kw == "for":
            return self.nested(self.for_command)
        if kw in ("while", "until"):
            return self.nested(self.while_command)
        if tok.kind != "word" or kw is not None:
            self.fail(tok, "a command expected")
        words = [self.take()]
        while self.peek().kind == "word":
            words.append(self.take())
        block = self.nested(self.block) if self.peek().kind == "{" else None
        return _Cmd(words, block, tok.line)

    def commands(self, stops: set) -> tuple[list, bool]:
        """commands1; stops at a keyword in ``stops`` or ``}`` after a delimiter. Returns the
        commands and whether the list ended with delimiters."""
        self.newlines()
        cmds = [self.command()]
        while True:
            if not self.delimiters():
                return cmds, False
            tok = self.peek()
            if tok.kind in ("}", "eof") or tok.keyword in stops:
                return cmds, True
            cmds.append(self.command())

    def need_delimited(self, ended: bool) -> None:
        if not ended:
            self.fail(self.peek(), "';' or newline expected")

    def block(self) -> _Block:
        open_tok = self.take()
        body, _ = self.commands(set())
        if self.peek().kind != "}":
            self.fail(self.peek(), "'}' expected")
        close = self.take()
        return _Block(body, self.text[open_tok.end:close.pos], open_tok.line)

    def if_command(self) -> _If:
        self.take()
        node = self.if_clause()
        self.expect_keyword("fi")
        return node

    def if_clause(self) -> _If:
        line = self.peek().line
        cond, ended = self.commands({"then"})
        self.need_delimited(ended)
        self.expect_keyword("then")
        then, ended = self.commands({"elif", "else", "fi"})
        self.need_delimited(ended)
        kw = self.peek().keyword
        if kw == "else":
            self.take()
            orelse, ended = self.commands({"fi"})
            self.need_delimited(ended)
            return _If(cond, then, orelse, line)
        if kw == "elif":
            self.take()
            return _If(cond, then, [self.nested(self.if_clause)], line)
        return _If(cond, then, None, line)

    def for_command(self) -> _For:
        line = self.take().line
        name = self.peek()
        if not name.is_name or name.keyword:
            self.fail(name, "a variable name expected")
        self.take()
        self.expect_keyword("in")
        words = []
        while self.peek().kind == "word":
            words.append(self.take())
        if not self.delimiters():
            self.fail(self.peek(), "';' or newline expected")
        self.expect_keyword("do")
        body, ended = self.commands({"done"})
        self.need_delimited(ended)
        self.expect_keyword("done")
        return _For(name.raw, words, body, line)

    def while_command(self) -> _While:
        tok = self.take()
        cond, ended = self.commands({"do"})
        self.need_delimited(ended)
        self.expect_keyword("do")
        body, ended = self.commands({"done"})
        self.need_delimited(ended)
        self.expect_keyword("done")
        return _While(cond, body, tok.raw == "until", tok.line)

    def function(self) -> _Func:
        line = self.take().line
        name = self.peek()
        if not name.is_name or name.keyword:
            self.fail(name, "a function name expected")
        self.take()
        self.newlines()
        if self.peek().kind != "{":
            self.fail(self.peek(), "'{' expected")
        self.take()

        def body():
            cmds, ended = self.commands(set())
            self.need_delimited(ended)
            return cmds
        cmds = self.nested(body)
        if self.peek().kind != "}":
            self.fail(self.peek(), "'}' expected")
        self.take()
        return _Func(name.raw, cmds, line)


def _parse(text: str, file: str = _DEFAULT_FILE, numbers: list[int] | None = None, line: int | None = None) -> list:
    """Parse and give every node its line in the file (``line``: all on that line)."""
    try:
        nodes = _Parser(text).script()
    except _TooDeep as exc:
        where = line if line is not None else numbers[min(exc.line, len(numbers)) - 1] if numbers else exc.line
        raise LimitExceededError(f"{file}:{where}: {exc}") from None
    return _remap(nodes, numbers, line)


def check_syntax(text: str) -> list[tuple[int, str]]:
    """The statements GRUB would reject as syntax errors: (line, message). What
    ``grub-script-check`` reports, without running anything."""
    body, numbers = _read_lines(text)
    return [(node.line, node.message) for node in _parse(body, numbers=numbers) if isinstance(node, _Bad)]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class GrubEntry:
    title: str
    id: str | None
    index: str                           # "0", "1", "2>0" (inside submenu 2), GRUB's numbering
    line: int                            # line of the menuentry
    kernel: str | None = None            # first argument of ``linux`` as expanded: "($root)/vmlinuz"
    kernel_device: str | None = None     # "$root", "hd0,gpt3" when the path names a device
    kernel_path: str | None = None       # the path without the device
    cmdline_words: list[str] = field(default_factory=list)
    initrds: list[str] = field(default_factory=list)
    linux_line: int | None = None
    linux_command: str | None = None     # linux, linuxefi, linux16
    options: list[str] = field(default_factory=list)   # menuentry options (--id, --class, ...)
    classes: list[str] = field(default_factory=list)
    unrestricted: bool = False
    submenu: str | None = None           # title of the enclosing submenu
    conditional: bool = False            # defined, or its linux line chosen, by an undecidable condition
    unresolved: list[str] = field(default_factory=list)   # run-time unknowns in linux/initrd
    commands: list[tuple[str, list[str]]] = field(default_factory=list)   # other commands run
    configfiles: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)   # variables set inside the entry
    args: list[str] = field(default_factory=list)      # extra menuentry arguments ($2, $3 ...)
    users: str | None = None             # --users (None: --unrestricted)
    hotkey: str | None = None
    file: str = _DEFAULT_FILE
    output: list[str] = field(default_factory=list)   # what the entry echoes
    ends: str | None = None              # "boot", "reboot", "halt", "exit" when the body ends so
    menu_default: str | None = None      # submenus: the default inside (after their body ran)

    @property
    def cmdline(self) -> str:
        """The command line GRUB passes (lib/cmdline.c grub_create_loader_cmdline): a word with
        a space in double quotes, ``\\``, ``'`` and ``"`` escaped with a backslash."""
        out = []
        for word in self.cmdline_words:
            escaped = re.sub(r"""([\\'"])""", r"\\\1", word)
            out.append(f'"{escaped}"' if " " in word else escaped)
        return " ".join(out)

    @property
    def proc_cmdline(self) -> str:
        """What /proc/cmdline shows: GRUB's linux loaders put ``BOOT_IMAGE=<kernel>`` first."""
        return " ".join(w for w in (f"BOOT_IMAGE={self.kernel}" if self.kernel else "", self.cmdline) if w)

    def kernel_cmdline(self, origin: str | None = None) -> KernelCmdline:
        where = origin or self.file
        return KernelCmdline(self.cmdline, f"{where}: menuentry {self.title!r} line {self.linux_line}",
                             observed=not self.unresolved and not self.conditional)


@dataclass
class GrubConfig:
    entries: list[GrubEntry]
    variables: dict[str, str]            # final values of variables the file set (not the seeds)
    assignments: list[tuple[str, str, int]]   # (name, value, line) in execution order, top level
    unresolved: list[str]                # run-time unknown variables the evaluation read
    warnings: list[str]                  # "<file>:<line>: ..." for everything not evaluated
    configfiles: list[str]               # configfile targets at top level
    sourced: list[str]                   # files read with ``source``
    submenus: list[GrubEntry] = field(default_factory=list)   # submenu headers (no kernel)
    unknown: dict[str, str] = field(default_factory=dict)     # run-time unknown variable -> why
    output: list[str] = field(default_factory=list)           # what the file echoes
    stopped: str | None = None           # "grub.cfg:12: exit" when GRUB never shows the menu
    file: str = _DEFAULT_FILE
    _default: GrubEntry | None = field(default=None, repr=False)

    @property
    def notes(self) -> list[str]:
        """The warnings (the name older callers use)."""
        return self.warnings

    @property
    def default(self) -> str | None:
        return self.variables.get("default")

    @property
    def fallback(self) -> list[str]:
        """Fallback references as written: numbers separated by spaces, or one title/id (Talos
        writes a whole title; GRUB itself reads only numbers, see ``warnings``)."""
        value = self.variables.get("fallback")
        if not value:
            return []
        if self.find_entry(value) is not None and not value.split()[0].isdigit():
            return [value]
        return value.split()

    @property
    def timeout(self) -> str | None:
        return self.variables.get("timeout")

    def _level(self, prefix: str | None) -> list[GrubEntry]:
        """The menu at one level: entries and submenu headers, in GRUB's order."""
        items = [e for e in self.entries + self.submenus
                 if (e.index.rpartition(">")[0] if ">" in e.index else None) == prefix]
        return sorted(items, key=lambda e: int(e.index.rpartition(">")[2]))

    def find_entry(self, ref: str, *, _prefix: str | None = None) -> GrubEntry | None:
        """GRUB's lookup of a ``default`` value (normal/menu.c ``get_entry_number``): a number
        (grub_strtoul, so ``2>0`` is entry 2 then ``0`` inside it), else the first entry whose
        title or id equals the text up to a single ``>`` (``>>`` is a literal ``>``). Unlike
        GRUB this returns None instead of entry 0 when nothing matches."""
        if ref is None:
            return None
        level = self._level(_prefix)
        number, _ = _strtoull(ref)
        chosen = None
        if number is not None:
            chosen = next((e for e in level if int(e.index.rpartition(">")[2]) == number), None)
        else:
            chosen = next((e for e in level if _menuentry_eq(e.title, ref) or
                           (e.id is not None and _menuentry_eq(e.id, ref))), None)
        if chosen is None:
            return None
        rest = _default_rest(ref)
        if any(chosen is h for h in self.submenus):
            if rest is None:
                return chosen
            return self.find_entry(rest, _prefix=chosen.index)
        return chosen

    def default_entry(self) -> GrubEntry | None:
        """The entry GRUB boots without a key press: ``default`` (unset: the first entry;
        matching nothing: the first entry, with a warning), descending into submenus as GRUB
        does. None when the menu is empty or ``default`` is unknown at run time."""
        return self._default

    def fallback_entries(self) -> list[GrubEntry | None]:
        return [self.find_entry(r) for r in self.fallback]


def _menuentry_eq(ident: str, spec: str) -> bool:
    """normal/menu.c menuentry_eq: ``ident`` equals ``spec`` up to a single ``>``."""
    i = j = 0
    while True:
        if j < len(spec) and spec[j] == ">" and not spec.startswith(">>", j):
            return i == len(ident)
        if j < len(spec) and spec[j] == ">":
            j += 1
        a = ident[i] if i < len(ident) else None
        b = spec[j] if j < len(spec) else None
        if a != b:
            return False
        if a is None:
            return True
        i += 1
        j += 1


def _default_rest(ref: str | None) -> str | None:
    """normal/menu.c grub_menu_execute_entry: ``default`` inside a submenu is what follows the
    first single ``>`` (unset when nothing follows)."""
    if ref is None:
        return None
    k = 0
    while k < len(ref):
        if ref.startswith(">>", k):
            k += 2
            continue
        if ref[k] == ">":
            rest = ref[k + 1:]
            return rest or None
        k += 1
    return None


# ---------------------------------------------------------------------------------------------
# Interpreter state
# ---------------------------------------------------------------------------------------------
_UNSET = object()


@dataclass
class _MenuDef:
    """A ``menuentry``/``submenu`` as GRUB registers it (commands/menuentry.c)."""
    kind: str
    title: object                        # value
    ident: object | None
    classes: list
    users: object | None
    hotkey: object | None
    options: list[str]
    args: list                           # positional parameters: title, extra arguments
    body: list                           # parsed block
    line: int
    file: str
    conditional: bool = False


@dataclass
class _Boot:
    """What a menu entry's body loads."""
    linux: tuple | None = None           # (command, [values], line)
    initrds: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    configfiles: list = field(default_factory=list)
    variables: dict = field(default_factory=dict)
    ends: str | None = None
    conditional: bool = False


class _State:
    """Everything a command can change; forked for undecidable branches."""

    __slots__ = ("vars", "exported", "functions", "menu", "out", "tail", "boot", "scope",
                 "function_return", "active_breaks", "is_continue", "active_loops", "stopped", "switched")

    def __init__(self):
        self.vars: dict = {}
        self.exported: set = set()
        self.functions: dict = {}
        self.menu: list[_MenuDef] = []
        self.out: list[str] = []
        self.tail = ""
        self.boot: _Boot | None = None
        self.scope: list | None = None
        self.function_return = False
        self.active_breaks = 0
        self.is_continue = False
        self.active_loops = 0
        self.stopped: str | None = None
        self.switched = None                 # the inner state when configfile replaced the menu

    def fork(self) -> "_State":
        new = _State()
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, (dict, set, list)):
                value = value.copy()
            elif isinstance(value, _Boot):
                value = _Boot(value.linux, list(value.initrds), list(value.commands),
                              list(value.configfiles), dict(value.variables), value.ends, value.conditional)
            setattr(new, name, value)
        return new

    def flow(self) -> tuple:
        return (self.stopped, self.function_return, self.active_breaks, self.is_continue)

    def lines(self) -> list[str]:
        return self.out + ([self.tail] if self.tail else [])


@dataclass
class _Opt:
    long: str | None
    short: str | None
    arg: bool = False
    optional: bool = False               # GRUB_ARG_OPTION_OPTIONAL
    repeat: bool = False


class _OptError(Exception):
    pass


def _parse_options(args: list, opts: list[_Opt], accept_dash: bool = False, at_start: bool = False):
    """lib/arg.c grub_arg_parse over expanded arguments: ({long or short name: [values] or
    [True]}, remaining arguments). Arguments unknown at run time are plain arguments."""
    found: dict[str, list] = {}
    rest: list = []
    i = 0

    def key(opt: _Opt) -> str:
        return opt.long or opt.short

    def record(opt: _Opt, value) -> None:
        if opt.repeat:
            found.setdefault(key(opt), []).append(value)
        else:
            found[key(opt)] = [value]

    while i < len(args):
        arg = args[i]
        text = arg if isinstance(arg, str) else None
        if (rest and at_start) or text is None or not text.startswith("-") or len(text) == 1:
            rest.append(arg)
            i += 1
            continue
        if text[1] != "-":                                  # short options
            letters = text[1:]
            if accept_dash and any(not any(o.short == c for o in opts) for c in letters):
                rest.append(arg)
                i += 1
                continue
            for k, c in enumerate(letters):
                opt = next((o for o in opts if o.short == c), None)
                if opt is None:
                    raise _OptError(f"unknown argument `-{c}'")
                if k < len(letters) - 1:
                    if opt.arg and not opt.optional:
                        raise _OptError(f"missing mandatory option for `{opt.long or c}'")
                    record(opt, True)
                    continue
                value = True
                if opt.arg:
                    if i + 1 < len(args):
                        nxt = args[i + 1]
                        nxt_text = show(nxt)
                        if not opt.optional or len(nxt_text) < 2 or nxt_text[0] != "-":
                            value = nxt
                            i += 1
                    if value is True and not opt.optional:
                        raise _OptError(f"missing mandatory option for `{opt.long or c}'")
                record(opt, value)
            i += 1
            continue
        if text == "--":
            rest.extend(args[i + 1:])
            break
        name, eq, value_text = text[2:].partition("=")
        opt = next((o for o in opts if o.long == name), None)
        value = value_text if eq else True
        if not eq and opt is not None and opt.arg and i + 1 < len(args) and not show(args[i + 1]).startswith("-"):
            value = args[i + 1]
            i += 1
        if opt is None:
            if accept_dash:
                rest.append(arg)
                i += 1
                continue
            raise _OptError(f"unknown argument `{text}'")
        if opt.arg and value is True and not opt.optional:
            raise _OptError(f"missing mandatory option for `{name}'")
        if not opt.arg and eq:
            value = True
        record(opt, value)
        i += 1
    return found, rest


_MENU_OPTS = [_Opt("class", None, True, repeat=True), _Opt("users", None, True), _Opt("hotkey", None, True),
              _Opt("source", None, True), _Opt("id", None, True), _Opt("unrestricted", None)]
_ECHO_OPTS = [_Opt(None, "n"), _Opt(None, "e")]
_SEARCH_OPTS = [_Opt("file", "f"), _Opt("label", "l"), _Opt("fs-uuid", "u"), _Opt("part-label", "L"),
                _Opt("part-uuid", "U"), _Opt("disk-uuid", None), _Opt("set", "s", True, optional=True),
                _Opt("no-floppy", "n"), _Opt("efidisk-only", None), _Opt("root-dev-only", "r"),
                _Opt("hint", "h", True, repeat=True)] + [
                _Opt(f"hint-{p}", None, True, repeat=True) for p in ("ieee1275", "bios", "baremetal", "efi", "arc")]
_REGEXP_OPTS = [_Opt("set", "s", True, repeat=True)]
_LOADENV_OPTS = [_Opt("file", "f", True), _Opt("skip-sig", "s")]
_GPTPRIO_OPTS = [_Opt("set-device", "d", True), _Opt("set-uuid", "u", True)]

# Commands with no effect on variables, the menu or the control flow (their ``$?`` is unknown:
# a module may be missing, a device absent). Names from GRUB 2.12's command.lst and the
# distribution patches the supported systems ship.
_INERT = frozenset("""
insmod rmmod lsmod terminal_input terminal_output terminal serial loadfont lsfonts background_image
background_color clear sleep play ls cat cmp hexdump help date time lspci lsmmap lsacpi lsefi lsefimmap
lsefisystab lssal videoinfo videotest keystatus badram cutmem acpi fakebios drivemap usb nativedisk
parttool password password_pbkdf2 authenticate trust distrust list_trusted verify_detached hello
chainloader devicetree multiboot multiboot2 module module2 kfreebsd kfreebsd_loadenv kfreebsd_module
kfreebsd_module_elf knetbsd knetbsd_module knetbsd_module_elf kopenbsd kopenbsd_ramdisk xnu_kernel
xnu_kernel64 xnu_mkext xnu_kext xnu_kextdir xnu_ramdisk xnu_resume xnu_splash xnu_devprop_load
legacy_kernel legacy_initrd legacy_initrd_nounzip legacy_password legacy_check_password save_env
list_env cryptomount loopback gptsync gptrepair trust_var md5sum sha1sum sha256sum sha512sum hashsum crc
blocklist lsfonts gettext efi_gop efi_uga hdparm tpm2_key_protector_init fdt tpm2_key_protector_clear
appleloader efiemu_loadcore efiemu_prepare efiemu_unload outb outw outl write_byte write_word
write_dword setenv bli_ensure_initialized shim_lock lsdev boottime testspeed dump
""".split())
# The shell's own commands: not listed among an entry's commands.
_SHELL = frozenset({"set", "unset", "export", "true", "false", "test", "[", "return", "break", "continue",
                    "shift", "setparams", "echo", "eval"})
_STOPS = {"exit": "exit", "halt": "halt", "reboot": "reboot", "fwsetup": "fwsetup", "normal_exit": "normal_exit"}


class _Interp:
    def __init__(self, seeds: dict, loader, file_exists, file: str):
        self.seeds = {k: v for k, v in seeds.items() if v is not None}
        self.loader = loader
        self.file_exists = file_exists
        self.file = file                       # the file being executed (warnings name it)
        self.warnings: list[str] = []
        self._seen_warnings: set[str] = set()
        self.unknown: dict[str, str] = {name: "set by GRUB before grub.cfg runs" for name in _GRUB_RUNTIME}
        self.read_unknown: set[str] = set()    # run-time unknowns an expansion read
        self.reads: list[set] = []             # per condition being evaluated
        self.assignments: list[tuple[str, str, int]] = []
        self.assigned: set[str] = set()
        self.sourced: list[str] = []
        self.configfiles: list[str] = []
        self.steps = 0
        self.total = 0
        self.forks = 0
        self.source_bytes = 0
        self.file_reads = 0
        self.parsed: dict[tuple[str, str], list] = {}   # a file read again is not parsed again
        self.depth = 0
        self.line = 0                          # the command being executed
        self.cause = ""                        # the last command whose result is unknown
        self.status_cause = ""                 # the command that left $? unknown
        self.regex_cache: dict = {}

    # ---- messages -----------------------------------------------------------------------------
    def warn(self, line: int | None, message: str, file: str | None = None) -> None:
        text = f"{file or self.file}:{line}: {message}" if line else f"{file or self.file}: {message}"
        if text not in self._seen_warnings:
            self._seen_warnings.add(text)
            self.warnings.append(text)

    def limit(self, line: int, message: str):
        raise LimitExceededError(f"{self.file}:{line}: {message}")

    # ---- variables ----------------------------------------------------------------------------
    def initial_state(self) -> _State:
        st = _State()
        st.vars.update(_GRUB_DEFAULTS)
        st.exported.update(_GRUB_DEFAULTS)
        for name in _GRUB_RUNTIME:
            st.vars[name] = (_Hole(name),)
            st.exported.add(name)
        for name, value in self.seeds.items():      # exported only when GRUB exports it
            st.vars[name] = str(value)
            self.unknown.pop(name, None)
        return st

    def set_var(self, st: _State, name: str, value, line: int, record: bool = True) -> None:
        if name == "root" and show(value).startswith("(") and show(value).endswith(")"):
            value = _join([show(value)[1:-1]]) if isinstance(value, str) else \
                _join([value[0][1:], *value[1:-1], value[-1][:-1]])     # kern/main.c grub_env_write_root
        if name not in st.vars and len(st.vars) >= _MAX_VARIABLES:
            self.limit(line, f"more than {_MAX_VARIABLES} variables")
        st.vars[name] = value
        if isinstance(value, str) and name in self.unknown and name not in _GRUB_RUNTIME:
            self.unknown.pop(name, None)
        if not record or name == "?":
            return
        if st.boot is not None:
            st.boot.variables[name] = show(value)
        else:
            self.assignments.append((name, show(value), line))
            self.assigned.add(name)

    def unknown_var(self, st: _State, name: str, line: int, why: str) -> None:
        self.set_var(st, name, (_Hole(name),), line)
        self.unknown[name] = f"{self.file}:{line}: {why}"

    def set_status(self, st: _State, ret) -> None:
        st.vars["?"] = str(ret) if ret is not None else (_Hole("?"),)
        if ret is None:
            self.status_cause = self.cause

    def note_read(self, value) -> None:
        names = _holes(value)
        if names:
            self.read_unknown |= names
            described = {f"$? of {self.status_cause or 'a command'}" if n == "?" else "$" + n for n in names}
            for reads in self.reads:
                reads |= described

    def depends(self, reads: set, before: str) -> str:
        """What an undecidable condition depends on, for its warning."""
        if reads:
            return "depends on " + ", ".join(sorted(reads))
        if self.cause and self.cause != before:
            return f"depends on {self.cause}"
        return "depends on what GRUB finds at run time"

    # ---- expansion (execute.c grub_script_arglist_to_argv, grub_script_env_get) ---------------
    def env_values(self, name: str, quoted: bool, st: _State) -> list:
        vals: list = [None]

        def nxt() -> None:
            if vals[-1] is not None:
                vals.append(None)

        def app(v) -> None:
            vals[-1] = v if vals[-1] is None else _join([vals[-1], v])

        special = name[0].isdigit() or name in ("#", "*", "@")
        if not special:
            value = st.vars.get(name, "")
            self.note_read(value)
            if value != "":
                if quoted:
                    app(value)
                else:
                    for k, piece in enumerate(_split_value(value)):
                        if k:
                            nxt()
                        app(piece)
        elif st.scope is None:
            pass
        elif name == "#":
            app(str(len(st.scope)))
        elif name in ("*", "@"):
            for i, arg in enumerate(st.scope):
                self.note_read(arg)
                if name == "*" and quoted:
                    if i:
                        app(" ")
                    app(arg)
                    continue
                if i:
                    nxt()
                if quoted:
                    app(arg)
                else:
                    for k, piece in enumerate(_split_value(arg)):
                        if k:
                            nxt()
                        app(piece)
        else:
            num = _strtoul(name, 10)
            if 0 < num <= len(st.scope):
                arg = st.scope[num - 1]
                self.note_read(arg)
                if quoted:
                    if arg != "":
                        app(arg)
                else:
                    for k, piece in enumerate(_split_value(arg)):
                        if k:
                            nxt()
                        app(piece)
        out = []
        for v in vals:
            if v is None:
                break
            out.append(v)
        return out

    def gettext(self, template: str, st: _State):
        """execute.c parse_string with no translation: ``$name`` replaced, ``\\$`` literal."""
        out: list = []
        i, n, escaped = 0, len(template), False
        while i < n:
            c = template[i]
            if c == "\\":
                escaped = not escaped
                if not escaped:
                    out.append("\\")
                i += 1
                continue
            if c == "$" and escaped:
                out.append("$")
                escaped = False
                i += 1
                continue
            if c == "$":
                i += 1
                name = None
                if i < n and template[i] == "{":
                    close = template.find("}", i + 1)
                    if close < 0:
                        break
                    name, i = template[i + 1:close], close + 1
                elif i < n and template[i].isdigit():
                    m = _DIGITS.match(template, i)
                    name, i = m.group(0), m.end()
                elif i < n and (template[i].isalpha() and template[i].isascii() or template[i] == "_"):
                    m = re.compile(r"[A-Za-z0-9_]+").match(template, i)
                    name, i = m.group(0), m.end()
                elif i < n and template[i] in "?#":
                    name, i = template[i], i + 1
                else:
                    out.append("$")
                    continue
                if name == "#" and st.scope is not None:
                    out.append(str(len(st.scope)))
                else:
                    value = st.vars.get(name)
                    if value is not None:
                        self.note_read(value)
                        out.append(value)
                continue
            if escaped:
                out.append("\\")
            escaped = False
            out.append(c)
            i += 1
        return _join(out)

    def expand(self, words: list, st: _State, line: int) -> list:
        args: list = []
        sizes: list[int] = []
        wild: list[bool] = []                  # an unquoted * or ? went into the argument

        def nxt() -> None:
            if not args or args[-1] is not None:
                args.append(None)
                sizes.append(0)
                wild.append(False)

        def app(v) -> None:
            args[-1] = [v] if args[-1] is None else args[-1] + [v] if len(args[-1]) < 32 else [_join(args[-1]), v]
            sizes[-1] += _vlen(v)
            if sizes[-1] > _MAX_VALUE:
                self.limit(line, f"a value longer than {_MAX_VALUE} characters")

        for tok in words:
            nxt()
            for kind, s in tok.parts:
                if kind == "text":
                    if s:
                        app(s)
                        wild[-1] = wild[-1] or "*" in s or "?" in s
                elif kind in ("sq", "dq"):
                    app(s)
                elif kind == "gettext":
                    app(self.gettext(s, st))
                else:
                    for k, v in enumerate(self.env_values(s, kind == "dqvar", st)):
                        if k:
                            nxt()
                        app(v)
                        if kind == "var":
                            text = show(v)
                            wild[-1] = wild[-1] or "*" in text or "?" in text
            if len(args) > _MAX_VALUE:
                self.limit(line, f"a command line expands to more than {_MAX_VALUE} words")
        if args and args[-1] is None:
            args.pop()
            sizes.pop()
        self.total += sum(sizes)
        if self.total > _MAX_TOTAL:
            self.limit(line, f"evaluation produced more than {_MAX_TOTAL} characters")
        out = [_join(a) for a in args]
        for value, wildcard in zip(out, wild):
            if wildcard and show(value).startswith(("/", "(", "*")):
                self.warn(line, f"{show(value)!r} is a file name pattern GRUB expands when its regexp "
                                "module is loaded (commands/wildcard.c): kept as written")
        return out

    # ---- execution (execute.c) ----------------------------------------------------------------
    def run_list(self, nodes: list, st: _State):
        """grub_script_execute_cmdlist: the status of the last command (None: unknown)."""
        ret = 0
        for node in nodes:
            if st.active_breaks or st.stopped or st.switched is not None:
                break
            ret = self.execute(node, st)
            if st.function_return:
                break
        return ret

    def execute(self, node, st: _State):
        """grub_script_execute_cmd: run one command and set ``$?``."""
        if isinstance(node, _Func):
            st.functions[node.name] = node           # parser.y defines it; $? is untouched
            return 0
        if isinstance(node, _Bad):
            self.warn(node.line, f"{node.message}: GRUB skips this statement")
            return 0
        self.line = node.line
        self.steps += 1
        if self.steps > _MAX_STEPS:
            self.limit(node.line, f"more than {_MAX_STEPS} commands evaluated (a loop GRUB would not leave?)")
        if isinstance(node, _Cmd):
            ret = self.command(node, st)
        elif isinstance(node, _If):
            ret = self.run_if(node, st)
        elif isinstance(node, _For):
            ret = self.run_for(node, st)
        else:
            ret = self.run_while(node, st)
        self.set_status(st, ret)
        return ret

    def run_if(self, node: _If, st: _State):
        self.reads.append(set())
        cause_before = self.cause
        try:
            ret = self.run_list(node.cond, st)
            self.set_status(st, ret)
        finally:
            reads = self.reads.pop()
        if st.function_return:
            return ret
        status = st.vars.get("?")
        if isinstance(status, str):
            branch = node.then if status == "0" else node.orelse
            return self.run_list(branch, st) if branch else 0
        what = self.depends(reads, cause_before)
        self.warn(node.line, f"condition not decidable offline ({what}): both branches evaluated, "
                             "what they set differently is unknown")
        return self.fork_and_merge(st, [lambda s: self.run_list(node.then, s),
                                        lambda s: self.run_list(node.orelse, s) if node.orelse else 0],
                                   node.line, what)

    def run_for(self, node: _For, st: _State):
        values = self.expand(node.words, st, node.line)
        st.active_loops += 1
        ret = 0
        for value in values:
            if st.is_continue and st.active_breaks == 1:
                st.active_breaks = 0
            if not st.active_breaks:
                if node.name[0].isdigit():
                    pass                                # grub_script_env_set refuses special names
                else:
                    self.set_var(st, node.name, value, node.line)
                ret = self.run_list(node.body, st)
                if st.function_return or st.stopped or st.switched is not None:
                    break
        if st.active_breaks:
            st.active_breaks -= 1
        st.active_loops -= 1
        return ret

    def run_while(self, node: _While, st: _State):
        st.active_loops += 1
        result = 0
        while True:
            self.reads.append(set())
            try:
                result = self.run_list(node.cond, st)
                self.set_status(st, result)
            finally:
                reads = self.reads.pop()
            if st.function_return or st.stopped:
                break
            if result is None:
                what = self.depends(reads, "")
                self.warn(node.line, f"loop condition not decidable offline ({what}): the loop is "
                                     "evaluated for zero and one more iteration, what they set differently "
                                     "is unknown")

                def once(s: _State):
                    r = self.run_list(node.body, s)
                    if s.active_breaks:                 # this loop's break/continue ends it here
                        s.active_breaks -= 1
                    return r
                result = self.fork_and_merge(st, [lambda s: None, once], node.line, what)
                st.active_loops -= 1
                return result
            if (not result) if node.until else result:
                break
            result = self.run_list(node.body, st)
            if st.function_return or st.stopped or st.switched is not None:
                break
            if st.active_breaks == 1 and st.is_continue:
                st.active_breaks = 0
            if st.active_breaks:
                break
        if st.active_breaks:
            st.active_breaks -= 1
        st.active_loops -= 1
        return result

    # ---- undecidable branches -----------------------------------------------------------------
    def fork_and_merge(self, st: _State, branches: list, line: int, why: str):
        states, rets = [], []
        for run in branches:
            self.forks += 1
            if self.forks > _MAX_FORKS:
                self.limit(line, f"more than {_MAX_FORKS} undecidable branches")
            fork = st.fork()
            rets.append(run(fork))
            states.append(fork)
        alive = [k for k, s in enumerate(states) if s.flow() == st.flow() and s.switched is None]
        if not alive:
            alive = [0]
        if len(alive) < len(states):
            ended = {s.stopped or ("return" if s.function_return else "break/continue" if s.active_breaks
                                   else "configfile" if s.switched is not None else "") for s in states}
            ended.discard("")
            self.warn(line, f"GRUB may stop here ({', '.join(sorted(ended))}) depending on the condition "
                            f"({why}); the evaluation follows the other branch")
        kept = [states[k] for k in alive]
        keep_rets = [rets[k] for k in alive]
        first = kept[0]
        # control flow
        st.stopped, st.function_return, st.active_breaks, st.is_continue = first.flow()
        st.switched = first.switched
        st.active_loops = first.active_loops
        # variables
        names = set().union(*(s.vars.keys() for s in kept))
        for name in names:
            values = [s.vars.get(name, _UNSET) for s in kept]
            if all(v == values[0] for v in values):
                if values[0] is _UNSET:
                    st.vars.pop(name, None)
                else:
                    st.vars[name] = values[0]
            else:
                st.vars[name] = (_Hole(name),)
                if name != "?":
                    self.unknown[name] = (f"{self.file}:{line}: set differently by branches of an undecidable "
                                          f"condition ({why})")
        st.exported = set().union(*(s.exported for s in kept))
        # functions
        for name in set().union(*(s.functions.keys() for s in kept)):
            defs = [s.functions.get(name) for s in kept]
            st.functions[name] = defs[0] if all(d is defs[0] for d in defs) else None
        # menu: what all branches define stays; the rest is conditional
        base = len(st.menu)
        common = base
        while all(len(s.menu) > common for s in kept) and all(s.menu[common] is kept[0].menu[common] for s in kept):
            common += 1
        menu = kept[0].menu[:common]
        for s in kept:
            for d in s.menu[common:]:
                if d not in menu:
                    menu.append(_MenuDef(**{**d.__dict__, "conditional": True}))
        st.menu = menu
        # output
        outs = [s.lines() for s in kept]
        if all(o == outs[0] for o in outs):
            st.out, st.tail = list(kept[0].out), kept[0].tail
        else:
            prefix = 0
            while all(len(o) > prefix and o[prefix] == outs[0][prefix] for o in outs):
                prefix += 1
            st.out, st.tail = outs[0][:prefix] + [f"[output depends on {self.file}:{line}]"], ""
        # what a menu entry loads
        if st.boot is not None:
            boots = [s.boot for s in kept]
            if all(b == boots[0] for b in boots):
                st.boot = boots[0]
            else:
                chosen = next((b for b in boots if b.linux is not None), boots[0])
                if any(b.linux != chosen.linux for b in boots):
                    self.warn(line, f"the linux command depends on the condition ({why}); the first "
                                    "branch that loads a kernel is reported")
                chosen.conditional = True
                st.boot = chosen
        st.scope = kept[0].scope
        return keep_rets[0] if all(r == keep_rets[0] for r in keep_rets) else None

    # ---- commands (execute.c grub_script_execute_cmdline) ------------------------------------
    def command(self, cmd: _Cmd, st: _State):
        argv = self.expand(cmd.words, st, cmd.line)
        if cmd.block is not None:
            argv.append("{" + cmd.block.text + "}")
        if not argv:
            return 0
        invert = False
        if argv[0] == "!":
            if len(argv) < 2:
                return _ERR_BAD_ARGUMENT
            invert, argv = True, argv[1:]
        name, args = argv[0], argv[1:]
        if not isinstance(name, str):
            self.note_read(name)
            self.cause = f"the command {show(name)} (its name is unknown at run time)"
            self.warn(cmd.line, f"command name {show(name)!r} is unknown at run time: not evaluated")
            return None
        ret = self.dispatch(name, args, st, cmd)
        if invert:
            ret = None if ret is None else 0 if ret == _ERR_TEST_FAILURE else 1 if ret == 0 else 0
        return ret

    def dispatch(self, name: str, args: list, st: _State, cmd: _Cmd):
        line = cmd.line
        handler = getattr(self, "cmd_" + name.replace(".", "_").replace("-", "_"), None) \
            if re.fullmatch(r"[A-Za-z0-9_.-]+", name) else None
        if name in ("[", "test"):
            handler = self.cmd_test
        elif name in ("source", "."):
            handler = self.cmd_source
        if handler is not None:
            if name not in _SHELL:
                self.entry_command(name, args, st)
            return handler(name, args, st, cmd)
        if _LINUX.match(name):
            return self.load_linux(name, args, st, line)
        if _INITRD.match(name):
            return self.load_initrd(name, args, st, line)
        if name in _STOPS:
            self.entry_command(name, args, st)
            return self.stop(_STOPS[name], st, line)
        if name in _INERT:
            self.entry_command(name, args, st)
            self.cause = f"{name} (line {line})"
            return None
        if name in st.functions:
            return self.call(name, args, st, line)
        if "=" in name:                               # an assignment, only if nothing else matched
            var, _, value = name.partition("=")
            if var and not (var[0].isdigit() or var in ("#", "*", "@")):
                self.set_var(st, var, value, line)
            return 0
        self.entry_command(name, args, st)
        self.cause = f"{name} (line {line})"
        self.warn(line, f"command {name!r} not evaluated (not modelled; it could change variables or the menu)")
        return None

    def entry_command(self, name: str, args: list, st: _State) -> None:
        if st.boot is not None:
            st.boot.commands.append((name, [show(a) for a in args]))

    def call(self, name: str, args: list, st: _State, line: int):
        """grub_script_function_call: a new scope of positional parameters."""
        func = st.functions[name]
        if func is None:
            self.warn(line, f"function {name!r} is defined differently depending on an undecidable condition: "
                            "not evaluated")
            return None
        if self.depth >= _MAX_DEPTH:
            self.warn(line, f"call of {name!r} nested too deeply (more than {_MAX_DEPTH}): not evaluated")
            return None
        saved_scope, saved_loops = st.scope, st.active_loops
        st.scope, st.active_loops = list(args), 0
        self.depth += 1
        try:
            ret = self.run_list(func.body, st)
        finally:
            self.depth -= 1
        st.function_return = False
        st.active_loops, st.scope = saved_loops, saved_scope
        return ret

    def stop(self, how: str, st: _State, line: int):
        if st.boot is not None:
            st.boot.ends = how
        st.stopped = f"{self.file}:{line}: {how}"
        return 0

    # -- variables --
    def cmd_set(self, name, args, st, cmd):
        if not args:
            for var in sorted(st.vars):
                self.emit(st, f"{var}='{show(st.vars[var])}'\n")
            return 0
        first = args[0]
        if not isinstance(first, str):
            head = first[0] if isinstance(first[0], str) else ""
            if "=" not in head:
                self.warn(cmd.line, f"set {show(first)!r}: the variable name is unknown at run time")
                return None
            var, _, rest = head.partition("=")
            self.set_var(st, var, _join([rest, first[1:]]), cmd.line)
            return 0
        if "=" not in first:
            return _ERR_BAD_ARGUMENT                  # "not an assignment"
        var, _, value = first.partition("=")
        self.set_var(st, var, value, cmd.line)
        return 0

    def cmd_unset(self, name, args, st, cmd):
        if not args:
            return _ERR_BAD_ARGUMENT
        var = show(args[0])
        st.vars.pop(var, None)
        st.exported.discard(var)
        return 0

    def cmd_export(self, name, args, st, cmd):
        if not args:
            return _ERR_BAD_ARGUMENT
        for arg in args:
            var = show(arg)
            if var not in st.vars:
                self.set_var(st, var, "", cmd.line, record=False)
            st.exported.add(var)
        return 0

    # -- control --
    def cmd_true(self, name, args, st, cmd):
        return 0

    def cmd_false(self, name, args, st, cmd):
        return _ERR_TEST_FAILURE

    def cmd_return(self, name, args, st, cmd):
        if st.scope is None or len(args) > 1:
            return _ERR_BAD_ARGUMENT                  # "not in function body"
        if not args:
            st.function_return = True
            status = st.vars.get("?")
            return _strtoul(status, 10) if isinstance(status, str) else None
        if not isinstance(args[0], str):
            st.function_return = True
            return None
        number, end = _strtoull(args[0], 10)
        if number is None:
            return 10                                   # GRUB_ERR_BAD_NUMBER
        if end != len(args[0]):
            return _ERR_BAD_ARGUMENT
        st.function_return = True
        number &= 0xFFFFFFFF
        return number - (1 << 32) if number & 0x80000000 else number

    def cmd_break(self, name, args, st, cmd):
        count = 1
        if len(args) > 1:
            return _ERR_BAD_ARGUMENT
        if args:
            if not isinstance(args[0], str):
                self.warn(cmd.line, f"{name} count unknown at run time: not evaluated")
                return None
            value, end = _strtoull(args[0], 10)
            if value is None:
                return 10
            if end != len(args[0]) or value == 0:
                return _ERR_BAD_ARGUMENT
            count = value
        st.is_continue = name != "break"
        st.active_breaks = min(count, st.active_loops)
        return 0

    cmd_continue = cmd_break

    def cmd_shift(self, name, args, st, cmd):
        if st.scope is None:
            return 0
        if len(args) > 1:
            return _ERR_BAD_ARGUMENT
        count = 1
        if args:
            value, end = _strtoull(show(args[0]), 10)
            if end != len(show(args[0])):
                return _ERR_BAD_ARGUMENT
            count = value or 0
        if count > len(st.scope):
            return _ERR_BAD_ARGUMENT
        st.scope = st.scope[count:]
        return 0

    def cmd_setparams(self, name, args, st, cmd):
        if st.scope is None:
            return _ERR_INVALID_COMMAND
        st.scope = list(args)
        return 0

    # -- output --
    def emit(self, st: _State, text: str) -> None:
        self.total += len(text)
        if self.total > _MAX_TOTAL:
            self.limit(self.line, f"evaluation produced more than {_MAX_TOTAL} characters")
        pieces = (st.tail + text).split("\n")
        st.out.extend(pieces[:-1])
        st.tail = pieces[-1]

    def cmd_echo(self, name, args, st, cmd):
        try:
            opts, words = _parse_options(args, _ECHO_OPTS, accept_dash=True, at_start=True)
        except _OptError:
            return _ERR_BAD_ARGUMENT
        newline = "n" not in opts
        out = []
        for k, word in enumerate(words):
            text = show(word)
            if "e" in opts:
                chars, i = [], 0
                while i < len(text):
                    if text[i] == "\\":
                        i += 1
                        if i >= len(text):
                            break
                        c = text[i]
                        if c == "c":
                            newline = False
                        else:
                            chars.append({"\\": "\\", "a": "\a", "f": "\f", "n": "\n", "r": "\r",
                                          "t": "\t", "v": "\v"}.get(c, ""))
                        i += 1
                        continue
                    chars.append(text[i])
                    i += 1
                text = "".join(chars)
            out.append(text)
        self.emit(st, " ".join(out) + ("\n" if newline else ""))
        return 0

    # -- test (commands/test.c) --
    def cmd_test(self, name, args, st, cmd):
        if args and args[-1] == "]":
            args = args[:-1]
        for a in args:
            self.note_read(a)
        result = _TestParser(args, self, cmd.line).parse()
        if result is None:
            self.cause = "a test GRUB can only decide at run time"
            return None
        return 0 if result else _ERR_TEST_FAILURE

    def file_test(self, op: str, path, line: int) -> bool | None:
        if self.file_exists is None:
            self.warn(line, f"test {op} {show(path)}: no file lookup available offline")
            return None
        try:
            answer = self.file_exists(op, show(path))
        except ImmutoolsError as exc:
            self.warn(line, f"test {op} {show(path)}: {exc}")
            return None
        if answer is None:
            self.warn(line, f"test {op} {show(path)}: cannot be answered offline")
        return answer

    # -- regexp (commands/regexp.c) --
    def cmd_regexp(self, name, args, st, cmd):
        try:
            opts, rest = _parse_options(args, _REGEXP_OPTS)
        except _OptError:
            return _ERR_BAD_ARGUMENT
        if len(rest) != 2:
            return _ERR_BAD_ARGUMENT
        targets = []
        for spec in opts.get("set", []):
            spec = show(spec)
            index, colon, var = spec.partition(":")
            if colon:
                number, end = _strtoull(index, 10)
                if end != len(index):
                    return _ERR_BAD_ARGUMENT
                targets.append((number or 0, var))
            else:
                targets.append((1, spec))
        pattern, subject = rest
        if not (isinstance(pattern, str) and isinstance(subject, str)):
            for _, var in targets:
                self.unknown_var(st, var, cmd.line, "regexp on a value unknown at run time")
            self.cause = f"regexp (line {cmd.line})"
            return None
        compiled = self.regex_cache.get(pattern)
        if compiled is None:
            compiled = _posix_ere(pattern)
            self.regex_cache[pattern] = compiled
        if isinstance(compiled, str):                  # not translatable or refused
            if compiled.startswith("invalid"):
                return _ERR_TEST_FAILURE
            self.warn(cmd.line, f"regexp {pattern!r}: {compiled}: not evaluated")
            for _, var in targets:
                self.unknown_var(st, var, cmd.line, f"regexp {pattern!r} not evaluated")
            self.cause = f"regexp (line {cmd.line})"
            return None
        if "|" in pattern:
            self.warn(cmd.line, f"regexp {pattern!r}: POSIX picks the longest of alternatives, "
                                "Python the first; the groups may differ from GRUB's")
        match = compiled.search(subject)
        if match is None:
            return _ERR_TEST_FAILURE
        for index, var in targets:
            group = match.group(index) if index <= compiled.groups else None
            if group is None:
                st.vars.pop(var, None)
                st.exported.discard(var)
            else:
                self.set_var(st, var, group, cmd.line)
        return 0

    # -- commands that set variables from what only the machine knows --
    def runtime(self, command: str, names: list, st: _State, line: int):
        """Variables ``command`` sets at boot: the caller's seed when it gave one, else unknown."""
        names = [n for n in names if n]
        self.cause = f"{command} (line {line})"
        if not names:
            return None
        seeded = True
        for var in names:
            if var in self.seeds:
                self.set_var(st, var, str(self.seeds[var]), line)
            else:
                seeded = False
                self.unknown_var(st, var, line, f"set by {command} at run time")
                self.warn(line, f"{command} sets ${var} at run time: unknown offline")
        return 0 if seeded else None

    def cmd_search(self, name, args, st, cmd):
        if name != "search":                          # search.fs_uuid ID [VAR [HINTS]]  (search.c)
            if not args:
                return _ERR_BAD_ARGUMENT
            return self.runtime(name, [show(args[1])] if len(args) > 1 else [], st, cmd.line)
        try:
            opts, _ = _parse_options(args, _SEARCH_OPTS)
        except _OptError as exc:
            self.warn(cmd.line, f"search: {exc} (GRUB stops with an error)")
            return _ERR_BAD_ARGUMENT
        var = None
        if "set" in opts:
            value = opts["set"][0]
            var = "root" if value is True else show(value)
        return self.runtime("search", [var] if var else [], st, cmd.line)

    cmd_search_fs_uuid = cmd_search_fs_label = cmd_search_file = cmd_search_part_label = cmd_search
    cmd_search_part_uuid = cmd_search_disk_uuid = cmd_search

    def cmd_gptprio_next(self, name, args, st, cmd):
        """gptprio.next -d VAR -u VAR (Flatcar's and Bottlerocket's GRUB GPT patches)."""
        try:
            opts, _ = _parse_options(args, _GPTPRIO_OPTS)
        except _OptError:
            return _ERR_BAD_ARGUMENT
        names = [show(opts[k][0]) for k in ("set-device", "set-uuid") if k in opts]
        return self.runtime(name, names, st, cmd.line)

    def cmd_gptpriority(self, name, args, st, cmd):
        """gptpriority DISK PARTITION VAR (ChromiumOS GRUB)."""
        return self.runtime(name, [show(args[2])] if len(args) > 2 else [], st, cmd.line)

    def cmd_getenv(self, name, args, st, cmd):
        """getenv ... VAR (EFI variable readers in distribution GRUBs: the variable is last)."""
        return self.runtime(name, [show(args[-1])] if args else [], st, cmd.line)

    def _set_option(self, name, args, st, cmd, letter="s", long="set"):
        names = []
        for k, a in enumerate(args):
            text = show(a)
            if text in (f"-{letter}", f"--{long}") and k + 1 < len(args):
                names.append(show(args[k + 1]))
            elif text.startswith(f"--{long}="):
                names.append(text.split("=", 1)[1])
        return self.runtime(name, names, st, cmd.line)

    cmd_smbios = cmd_probe = cmd_tr = _set_option

    def cmd_read(self, name, args, st, cmd):
        return self.runtime(name, [show(args[0])] if args else [], st, cmd.line)

    def cmd_net_get_dhcp_option(self, name, args, st, cmd):
        return self.runtime(name, [show(args[0])] if args else [], st, cmd.line)

    def cmd_rdmsr(self, name, args, st, cmd):
        return self._set_option(name, args, st, cmd, "v", "set")

    cmd_inb = cmd_inw = cmd_inl = cmd_setpci = cmd_rdmsr

    def cmd_cpuid(self, name, args, st, cmd):
        self.cause = f"cpuid (line {cmd.line})"
        return None

    def cmd_net_bootp(self, name, args, st, cmd):
        self.cause = f"{name} (line {cmd.line})"
        self.warn(cmd.line, f"{name} sets net_* variables at run time: not evaluated")
        return None

    cmd_net_dhcp = cmd_net_bootp6 = cmd_net_bootp

    # -- files --
    def read_file(self, path, line: int, what: str) -> str | None:
        self.file_reads += 1
        if self.file_reads > _MAX_FILE_READS:
            self.limit(line, f"more than {_MAX_FILE_READS} files read through source/configfile")
        if self.loader is None:
            self.warn(line, f"{what} {show(path)}: no file loader available: not followed")
            return None
        try:
            text = self.loader(show(path))
        except ImmutoolsError as exc:
            self.warn(line, f"{what} {show(path)}: {exc}: not followed")
            return None
        if text is None:
            why = "its location is unknown at run time" if _holes(path) else "not found"
            self.warn(line, f"{what} {show(path)}: {why}: not followed")
            return None
        if len(text) > _MAX_CFG_BYTES:
            self.limit(line, f"{what} {show(path)}: more than {_MAX_CFG_BYTES} characters")
        self.source_bytes += len(text)
        if self.source_bytes > _MAX_SOURCED_BYTES:
            self.limit(line, f"more than {_MAX_SOURCED_BYTES} characters read through source/configfile")
        return text

    def run_file(self, text: str, file: str, st: _State):
        program = self.parsed.get((file, text))
        if program is None:
            body, numbers = _read_lines(text)
            program = self.parsed[(file, text)] = _parse(body, file, numbers)
        saved = self.file
        self.file = file
        try:
            for node in program:
                if st.stopped or st.switched is not None:
                    break
                self.execute(node, st)
                st.function_return = False
        except RecursionError:             # blocks inside calls inside sources, all near their bounds
            raise LimitExceededError(f"{file}:{self.line}: blocks, calls and sourced files nested too deep "
                                     "to evaluate") from None
        finally:
            self.file = saved

    def cmd_source(self, name, args, st, cmd):
        if len(args) != 1:
            return _ERR_BAD_ARGUMENT
        if self.depth >= _MAX_DEPTH:
            self.warn(cmd.line, f"source {show(args[0])}: nested too deeply (more than {_MAX_DEPTH}): not followed")
            return 0
        text = self.read_file(args[0], cmd.line, "source")
        if text is None:
            return 0                                    # configfile.c returns 0 either way
        self.sourced.append(show(args[0]))
        self.depth += 1
        try:
            self.run_file(text, show(args[0]), st)
        finally:
            self.depth -= 1
        return 0

    def cmd_configfile(self, name, args, st, cmd):
        if len(args) != 1:
            return _ERR_BAD_ARGUMENT
        path = show(args[0])
        if st.boot is not None:
            st.boot.configfiles.append(path)
            st.boot.ends = "configfile"
            self.warn(cmd.line, f"configfile {path} in a menu entry: the menu it shows is not evaluated")
            return 0
        self.configfiles.append(path)
        if self.depth >= _MAX_DEPTH:
            self.warn(cmd.line, f"configfile {path}: nested too deeply: not followed")
            return 0
        text = self.read_file(args[0], cmd.line, "configfile")
        if text is None:
            return 0
        inner = _State()                                # normal/context.c: exported variables only
        inner.vars = {k: v for k, v in st.vars.items() if k in st.exported}
        inner.exported = set(st.exported)
        inner.functions = st.functions
        inner.scope = st.scope
        inner.out, inner.tail = list(st.out), st.tail
        self.depth += 1
        try:
            self.run_file(text, path, inner)
        finally:
            self.depth -= 1
        st.out, st.tail = inner.out, inner.tail
        if inner.menu or inner.stopped or inner.switched is not None:
            st.switched = inner                         # GRUB shows that menu and boots from it
        return 0

    def cmd_eval(self, name, args, st, cmd):
        if not args:
            return 0
        if any(not isinstance(a, str) for a in args):
            self.warn(cmd.line, "eval of text unknown at run time: not evaluated")
            return None
        if self.depth >= _MAX_DEPTH:
            self.warn(cmd.line, f"eval nested too deeply (more than {_MAX_DEPTH}): not evaluated")
            return None
        program = _parse(" ".join(args), self.file, line=cmd.line)
        self.depth += 1
        try:
            ret = 0
            for node in program:
                if st.stopped or st.switched is not None or st.active_breaks:
                    break
                ret = self.execute(node, st)
                if st.function_return:
                    break
            return ret
        finally:
            self.depth -= 1

    def cmd_load_env(self, name, args, st, cmd):
        try:
            opts, wanted = _parse_options(args, _LOADENV_OPTS)
        except _OptError:
            return _ERR_BAD_ARGUMENT
        path = opts["file"][0] if "file" in opts else _join([st.vars.get("prefix", ""), "/grubenv"])
        text = self.read_file(path, cmd.line, "load_env")
        if text is None:
            self.cause = f"load_env (line {cmd.line})"
            self.warn(cmd.line, "variables load_env would set (saved_entry, next_entry ...) are not known")
            return None
        values = _parse_envblk(text)
        if values is None:
            return 4                                    # GRUB_ERR_BAD_FILE_TYPE: not an environment block
        names = {show(w) for w in wanted}
        for var, value in values.items():
            if not names or var in names:
                self.set_var(st, var, value, cmd.line)
        return 0

    # -- menus (commands/menuentry.c) --
    def cmd_menuentry(self, name, args, st, cmd):
        try:
            opts, rest = _parse_options(args, _MENU_OPTS, accept_dash=True)
        except _OptError:
            return _ERR_BAD_ARGUMENT
        if not rest:
            return _ERR_BAD_ARGUMENT
        if "source" in opts and cmd.block is not None:
            return _ERR_BAD_ARGUMENT                    # "multiple menuentry definitions"
        if cmd.block is not None:
            rest = rest[:-1]
            body = cmd.block.body
        elif "source" in opts:
            body = _parse(show(opts["source"][0]), self.file, line=cmd.line)
        else:
            return _ERR_BAD_ARGUMENT                    # "no menuentry definition"
        if not rest:
            return 27                                   # GRUB_ERR_MENU: "menuentry is missing title"
        if len(st.menu) >= _MAX_ENTRIES:
            self.limit(cmd.line, f"more than {_MAX_ENTRIES} menu entries")
        options = []
        for key, values in opts.items():
            for v in values:
                options.append(f"--{key}" if v is True else f"--{key}={show(v)}")
        users = opts["users"][0] if "users" in opts else None if "unrestricted" in opts else ""
        st.menu.append(_MenuDef(name, rest[0], opts["id"][0] if "id" in opts else None,
                                opts.get("class", []), users, opts["hotkey"][0] if "hotkey" in opts else None,
                                options, list(rest), body, cmd.line, self.file))
        return 0

    cmd_submenu = cmd_menuentry

    # -- what an entry loads --
    def load_linux(self, name: str, args: list, st: _State, line: int):
        if st.boot is None:
            self.warn(line, f"{name} outside a menu entry (GRUB loads it while reading the file): not evaluated")
            return None
        st.boot.linux = (name, list(args), line)
        return 0

    def load_initrd(self, name: str, args: list, st: _State, line: int):
        if st.boot is None:
            self.warn(line, f"{name} outside a menu entry: not evaluated")
            return None
        st.boot.initrds = list(args)
        return 0

    def cmd_boot(self, name, args, st, cmd):
        if st.boot is None:
            self.warn(cmd.line, "boot outside a menu entry: not evaluated")
            return None
        st.boot.ends = "boot"
        st.stopped = f"{self.file}:{cmd.line}: boot"
        return 0


def _remap(nodes: list, numbers: list[int] | None, fixed: int | None = None) -> list:
    """Line numbers of parsed text -> line numbers in the file (``fixed``: all on one line)."""
    def number(line: int) -> int:
        if fixed is not None:
            return fixed
        return numbers[min(max(line, 1), len(numbers)) - 1] if numbers else line

    def walk(items: list) -> None:
        for node in items:
            node.line = number(node.line)
            if isinstance(node, _Cmd):
                if node.block is not None:
                    node.block.line = number(node.block.line)
                    walk(node.block.body)
            elif isinstance(node, _If):
                walk(node.cond)
                walk(node.then)
                walk(node.orelse or [])
            elif isinstance(node, (_For, _Func)):
                walk(node.body)
            elif isinstance(node, _While):
                walk(node.cond)
                walk(node.body)
    walk(nodes)
    return nodes


def _parse_envblk(text: str) -> dict[str, str] | None:
    """lib/envblk.c: ``# GRUB Environment Block`` then ``name=value`` lines (``\\`` escapes),
    ``#`` padding. None when the signature is missing."""
    signature = "# GRUB Environment Block\n"
    if not text.startswith(signature):
        return None
    out: dict[str, str] = {}
    for line in text[len(signature):].split("\n"):
        if not line or line.startswith("#"):
            continue
        name, eq, raw = line.partition("=")
        if not eq:
            break
        out[name] = re.sub(r"\\(.)", r"\1", raw)
    return out


class _TestParser:
    """commands/test.c test_parse over expanded words, with None for "unknown at run time".
    GRUB's evaluation is flat and left to right: ``-a`` is skipped, ``-o`` folds what came
    before into ``or``, ``!`` inverts the next test, ``(`` recurses until ``)``."""

    _FILE_OPS = ("-d", "-e", "-f", "-s")

    def __init__(self, args: list, interp: _Interp, line: int):
        self.args = args
        self.pos = 0
        self.interp = interp
        self.line = line

    @staticmethod
    def _and(a, b):
        if a is False or b is False:
            return False
        return None if a is None or b is None else True

    @staticmethod
    def _or(a, b):
        if a is True or b is True:
            return True
        return None if a is None or b is None else False

    def parse(self):
        state = {"and": True, "or": False, "invert": False}

        def update(value) -> None:
            if value is not None and state["invert"]:
                value = not value
            state["and"] = self._and(state["and"], value)
            state["invert"] = False

        args, n = self.args, len(self.args)
        while self.pos < n:
            i = self.pos
            if i + 2 < n and isinstance(args[i + 1], str):
                op = args[i + 1]
                a, b = args[i], args[i + 2]
                known = isinstance(a, str) and isinstance(b, str)
                if op in ("=", "==", "!=", "<", "<=", ">", ">="):
                    update(self._compare(op, a, b) if known else None)
                    self.pos += 3
                    continue
                if op in ("-eq", "-ge", "-gt", "-le", "-lt", "-ne"):
                    update(self._numbers(op, _strtosl(a), _strtosl(b)) if known else None)
                    self.pos += 3
                    continue
                if op in ("-pgt", "-plt"):
                    update(self._prefixed(op, a, b) if known else None)
                    self.pos += 3
                    continue
                if op.startswith(("-nt", "-ot")):
                    self.interp.warn(self.line, f"test {op}: file times are not read offline")
                    update(None)
                    self.pos += 3
                    continue
            if i + 1 < n and isinstance(args[i], str):
                op, operand = args[i], args[i + 1]
                if op in self._FILE_OPS:
                    update(self.interp.file_test(op, operand, self.line))
                    self.pos += 2
                    continue
                if op in ("-n", "-z"):
                    value = None if not isinstance(operand, str) else (operand != "") == (op == "-n")
                    update(value)
                    self.pos += 2
                    continue
            word = args[i]
            if word == ")":
                self.pos += 1
                return self._or(state["or"], state["and"])
            if word == "(":
                self.pos += 1
                update(self.parse())
                continue
            if word == "!":
                state["invert"] = not state["invert"]
                self.pos += 1
                continue
            if word == "-a":
                self.pos += 1
                continue
            if word == "-o":
                state["or"] = self._or(state["or"], state["and"])
                state["and"] = True
                self.pos += 1
                continue
            update(word != "" if isinstance(word, str) else None)
            self.pos += 1
        return self._or(state["or"], state["and"])

    @staticmethod
    def _compare(op: str, a: str, b: str) -> bool:
        # grub_strcmp compares bytes as unsigned chars
        x, y = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
        return {"=": x == y, "==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]

    @staticmethod
    def _numbers(op: str, x: int, y: int) -> bool:
        return {"-eq": x == y, "-ge": x >= y, "-gt": x > y, "-le": x <= y, "-lt": x < y, "-ne": x != y}[op]

    @staticmethod
    def _prefixed(op: str, a: str, b: str) -> bool:
        """-pgt/-plt: skip the common prefix, back up over digits, compare the numbers."""
        i = 0
        while i < len(a) and i < len(b) and a[i] == b[i]:
            i += 1
        i -= 1
        while i > 0 and a[i].isdigit():
            i -= 1
        i += 1
        i = max(i, 0)
        x, y = _strtoul(a[i:]), _strtoul(b[i:])
        return x > y if op == "-pgt" else x < y


# ---------------------------------------------------------------------------------------------
# POSIX extended regular expressions (GNU regcomp with REG_EXTENDED, as commands/regexp.c uses)
# translated to Python ``re``. Returns a compiled pattern, or a string saying why not.
# ---------------------------------------------------------------------------------------------
_CLASSES = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
            "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
            "xdigit": "0-9A-Fa-f", "cntrl": "\\x00-\\x1f\\x7f", "print": " -~", "graph": "!-~"}
_MAX_PATTERN = 1024


def _posix_ere(pattern: str):
    if len(pattern) > _MAX_PATTERN:
        return f"pattern longer than {_MAX_PATTERN} characters"
    out: list[str] = []
    i, n = 0, len(pattern)
    depth = 0
    quantified_groups: list[bool] = []          # per open group: holds a quantifier or |
    group_starts: list[int] = []
    last_group_risky = False
    last_was_quantifier = False
    while i < n:
        c = pattern[i]
        if c not in "*+?{":
            last_was_quantifier = False
        if c == "\\":
            if i + 1 >= n:
                return "invalid: trailing backslash"
            e = pattern[i + 1]
            mapping = {"w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B",
                       "<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z"}
            if e in mapping:
                out.append(mapping[e])
            elif e.isdigit() and e != "0":
                out.append("\\" + e)
            else:
                out.append(re.escape(e))
            i += 2
            last_group_risky = False
            continue
        if c == "[":
            j = i + 1
            items: list[str] = []
            negate = False
            if j < n and pattern[j] == "^":
                negate, j = True, j + 1
            first = True
            while j < n and (first or pattern[j] != "]"):
                if pattern.startswith("[:", j):
                    close = pattern.find(":]", j + 2)
                    if close < 0 or pattern[j + 2:close] not in _CLASSES:
                        return "invalid: bad character class"
                    items.append(_CLASSES[pattern[j + 2:close]])
                    j = close + 2
                elif pattern.startswith(("[.", "[="), j):
                    return "collating elements and equivalence classes are not supported"
                else:
                    ch = pattern[j]
                    if ch == "-" and items and j + 1 < n and pattern[j + 1] != "]":
                        items.append("-")
                    else:
                        items.append(re.escape(ch) if ch != "-" else r"\-")
                    j += 1
                first = False
            if j >= n:
                return "invalid: unterminated bracket expression"
            out.append("[" + ("^" if negate else "") + "".join(items) + "]")
            i = j + 1
            last_group_risky = False
            continue
        if c == "(":
            depth += 1
            quantified_groups.append(False)
            group_starts.append(len(out))
            out.append("(")
            i += 1
            continue
        if c == ")":
            if not depth:
                return "invalid: unmatched parenthesis"
            depth -= 1
            risky = quantified_groups.pop()
            group_starts.pop()
            out.append(")")
            if quantified_groups and risky:
                quantified_groups[-1] = True
            last_group_risky = risky
            i += 1
            continue
        if c in "*+?{":
            if c == "{":
                m = re.match(r"\{(\d*)(,?)(\d*)\}", pattern[i:])
                if not m or not (m.group(1) or m.group(3)):
                    out.append(r"\{")
                    i += 1
                    continue
                if any(int(x) > 255 for x in (m.group(1), m.group(3)) if x):
                    return "invalid: repetition count too large"
                token, size = m.group(0), len(m.group(0))
            else:
                token, size = c, 1
            if not out or out[-1] in ("(", "|", "(?:^)"):
                out.append(re.escape(c))                # GNU: a quantifier with nothing before it is literal
                i += 1
                continue
            if last_was_quantifier:
                return "consecutive quantifiers are not supported"
            if last_group_risky:
                return "a quantified group holding a quantifier could backtrack exponentially"
            out.append(token)
            if quantified_groups:
                quantified_groups[-1] = True
            i += size
            last_group_risky = False
            last_was_quantifier = True
            continue
        if c == "|":
            if quantified_groups:
                quantified_groups[-1] = True
            out.append("|")
            i += 1
            last_group_risky = False
            continue
        if c == "^":
            out.append(r"(?:^)")
        elif c == "$":
            out.append(r"(?:\Z)")
        elif c == ".":
            out.append(".")
        else:
            out.append(re.escape(c))
        i += 1
        last_group_risky = False
    if depth:
        return "invalid: unmatched parenthesis"
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        return f"invalid: {exc}"


# ---------------------------------------------------------------------------------------------
# The menu as GRUB shows it, and the configuration as a whole
# ---------------------------------------------------------------------------------------------
def _split_device(path: str) -> tuple[str | None, str]:
    """``(hd0,gpt3)/boot/vmlinuz`` -> (``hd0,gpt3``, ``/boot/vmlinuz``); ``/vmlinuz`` -> (None, ...)."""
    if path.startswith("("):
        close = path.find(")")
        if close != -1:
            return path[1:close], path[close + 1:] or "/"
    return None, path


class _MenuBuilder:
    """Runs each entry's body as normal/menu.c grub_menu_execute_entry would when it is booted."""

    def __init__(self, interp: _Interp):
        self.interp = interp
        self.entries: list[GrubEntry] = []
        self.holders: list[GrubEntry] = []
        self.levels: dict[str | None, list[GrubEntry]] = {}
        self.defaults: dict[str, object] = {}          # submenu index -> its `default` value

    def build(self, defs: list[_MenuDef], ctx: _State, prefix: str | None, submenu: str | None,
              conditional: bool, depth: int = 0) -> None:
        level = self.levels.setdefault(prefix, [])
        for pos, d in enumerate(defs):
            index = f"{prefix}>{pos}" if prefix is not None else str(pos)
            title = show(d.title)
            ident = show(d.ident) if d.ident is not None else None
            chosen_before = ctx.vars.get("chosen")
            chosen = (show(chosen_before) + ">" if chosen_before is not None else "") + \
                (ident if ident is not None else title).replace(">", ">>")
            default_inside = _default_rest(show(ctx.vars["default"])) if "default" in ctx.vars else None
            common = dict(options=list(d.options), classes=[show(c) for c in d.classes],
                          unrestricted=d.users is None, submenu=submenu, conditional=d.conditional or conditional,
                          args=[show(a) for a in d.args[1:]], users=None if d.users is None else show(d.users),
                          hotkey=None if d.hotkey is None else show(d.hotkey), file=d.file)
            if d.kind == "submenu":
                sub = _State()                               # normal/context.c: exported variables only
                sub.vars = {k: v for k, v in ctx.vars.items() if k in ctx.exported}
                sub.exported = set(ctx.exported)
                sub.functions = dict(ctx.functions)
                self._prepare(sub, d, chosen, default_inside)
                self._run(d, sub)
                holder = GrubEntry(title, ident, index, d.line, **common)
                holder.menu_default = show(sub.vars["default"]) if "default" in sub.vars else None
                holder.output = sub.lines()
                self.defaults[index] = sub.vars.get("default")
                self.holders.append(holder)
                level.append(holder)
                if depth >= _MAX_NESTING:
                    self.interp.limit(d.line, f"submenus nested deeper than {_MAX_NESTING}")
                self.build(sub.menu, sub, index, title, common["conditional"], depth + 1)
                continue
            est = ctx.fork()
            est.menu, est.boot = [], _Boot()
            est.stopped, est.switched, est.function_return = None, None, False
            est.active_breaks, est.active_loops, est.is_continue = 0, 0, False
            est.out, est.tail = [], ""
            self._prepare(est, d, chosen, default_inside)
            self._run(d, est)
            entry = GrubEntry(title, ident, index, d.line, **common)
            self._fill(entry, est.boot)
            entry.output = est.lines()
            self.entries.append(entry)
            level.append(entry)

    def _prepare(self, st: _State, d: _MenuDef, chosen: str, default_inside: str | None) -> None:
        st.vars["chosen"] = chosen
        st.exported.add("chosen")
        if default_inside is None:
            st.vars.pop("default", None)
        else:
            st.vars["default"] = default_inside
        st.scope = list(d.args)                          # setparams_prefix: $1 is the title

    def _run(self, d: _MenuDef, st: _State) -> None:
        saved = self.interp.file
        self.interp.file = d.file
        try:
            self.interp.run_list(d.body, st)
        finally:
            self.interp.file = saved

    @staticmethod
    def _fill(entry: GrubEntry, boot: _Boot) -> None:
        unresolved: set[str] = set()
        if boot.linux is not None:
            command, args, line = boot.linux
            entry.linux_command, entry.linux_line = command, line
            if args:
                entry.kernel = show(args[0])
                entry.kernel_device, entry.kernel_path = _split_device(entry.kernel)
            entry.cmdline_words = [show(a) for a in args[1:]]
            for a in args:
                unresolved |= _holes(a)
        entry.initrds = [show(a) for a in boot.initrds]
        for a in boot.initrds:
            unresolved |= _holes(a)
        entry.unresolved = sorted(unresolved)
        entry.commands = list(boot.commands)
        entry.configfiles = list(boot.configfiles)
        entry.variables = dict(boot.variables)
        entry.ends = boot.ends
        entry.conditional = entry.conditional or boot.conditional

    def default(self, value, prefix: str | None, file: str) -> GrubEntry | None:
        """normal/menu.c run_menu: get_entry_number, out of range -> entry 0; a submenu is
        entered with the rest of ``default``."""
        level = self.levels.get(prefix, [])
        if not level:
            return None
        where = "the submenu's default" if prefix is not None else "default"
        if value is None:
            chosen = level[0]
        elif not isinstance(value, str):
            self.interp.warn(None, f"{where} {show(value)!r} is unknown at run time: the entry GRUB boots is "
                                   "not known", file)
            return None
        else:
            number, _ = _strtoull(value)
            if number is None:
                chosen = next((e for e in level if _menuentry_eq(e.title, value) or
                               _menuentry_eq(e.id if e.id is not None else e.title, value)), None)
            else:
                chosen = level[number] if number < len(level) else None
            if chosen is None:
                self.interp.warn(None, f"{where} {value!r} matches no menu entry: GRUB boots the first one", file)
                chosen = level[0]
        if any(chosen is h for h in self.holders):
            return self.default(self.defaults.get(chosen.index), chosen.index, file)
        return chosen


def parse_grub_cfg(
    text: str,
    env: dict[str, str] | None = None,
    loader: Callable[[str], str | None] | None = None,
    file_exists: Callable[[str, str], bool | None] | None = None,
    name: str = _DEFAULT_FILE,
    unknown: Iterable[str] = (),
) -> GrubConfig:
    """Evaluate a grub.cfg as GRUB would at boot. ``env`` seeds what GRUB knows at run time
    (``grub_platform``, ``root``, variables ``gptprio.next``/``search`` set ...); ``unknown``
    names variables set before the file runs whose value the caller cannot tell (they show as
    ``$name``, where an unset variable would be empty); ``loader(path)`` returns the text of a
    file named by ``source``/``configfile``/``load_env`` (None: absent); ``file_exists(op, path)``
    answers ``-f -e -d -s`` (None: unknown). Paths reach both callbacks as expanded, run-time
    unknowns included (``($root)/x``). ``name`` is used in warnings."""
    if len(text) > _MAX_CFG_BYTES:
        raise LimitExceededError(f"{name}: {len(text)} characters is more than {_MAX_CFG_BYTES}")
    interp = _Interp(env or {}, loader, file_exists, name)
    st = interp.initial_state()
    for var in unknown:
        if var not in interp.seeds:
            st.vars[var] = (_Hole(var),)
            interp.unknown[var] = "set before grub.cfg runs; not known offline"
    try:
        interp.run_file(text, name, st)
        final = st
        while final.switched is not None:
            final = final.switched
        if final.stopped:
            interp.warn(None, f"the configuration ends at {final.stopped} before GRUB shows the menu")
        builder = _MenuBuilder(interp)
        builder.build(final.menu, final, None, None, False)
        default = builder.default(final.vars.get("default"), None, name)
    except RecursionError:                 # in the menu's bodies (run_file converts the rest)
        raise LimitExceededError(f"{name}: blocks, calls and sourced files nested too deep to evaluate") from None
    if default is not None and default.kernel is None:
        interp.warn(default.line, f"the default entry {default.title!r} runs no linux command", default.file)
    fallback = final.vars.get("fallback")
    if isinstance(fallback, str) and fallback.strip() and _strtoull(fallback)[0] is None:
        interp.warn(None, f"fallback {fallback!r} is not an entry number: GRUB ignores it "
                       "(normal/menu.c reads fallback entries as numbers only)")
    interp.read_unknown.discard("?")
    variables = {k: show(final.vars[k]) for k in interp.assigned if k in final.vars and k != "?"}
    used = set(interp.read_unknown).union(*(e.unresolved for e in builder.entries))
    used |= {k for k in interp.assigned if isinstance(final.vars.get(k), tuple)}
    unknown = {k: why for k, why in interp.unknown.items() if k in used}
    config = GrubConfig(
        entries=sorted(builder.entries, key=lambda e: [int(x) for x in e.index.split(">")]),
        variables=variables,
        assignments=interp.assignments,
        unresolved=sorted(interp.read_unknown),
        warnings=interp.warnings,
        configfiles=interp.configfiles,
        sourced=interp.sourced,
        submenus=builder.holders,
        unknown=unknown,
        output=final.lines(),
        stopped=final.stopped,
        file=name,
    )
    config._default = default
    return config


# ---------------------------------------------------------------------------------------------
# Reading configurations out of filesystems
# ---------------------------------------------------------------------------------------------
def strip_device(path: str) -> str:
    """``($root)/flatcar/grub.cfg`` or ``(hd0,gpt1)/x`` -> ``/flatcar/grub.cfg``, ``/x``."""
    return _split_device(path)[1]


def fs_loader(fs, max_bytes: int = _MAX_CFG_BYTES) -> Callable[[str], str | None]:
    """A ``loader`` for ``parse_grub_cfg`` reading files from ``fs`` (any device prefix is
    taken to mean ``fs``; None when the file is missing, unreadable or its path unknown)."""
    def load(path: str) -> str | None:
        inner = strip_device(path)
        if "$" in inner:
            return None
        try:
            return fs.read_text(inner, max_bytes=max_bytes)
        except ImmutoolsError:
            return None
    return load


def fs_file_test(fs) -> Callable[[str, str], bool | None]:
    """A ``file_exists`` for ``parse_grub_cfg`` answering ``-f/-e/-d/-s`` from ``fs``."""
    def test(op: str, path: str) -> bool | None:
        inner = strip_device(path).rstrip("/") or "/"      # test.c drops trailing slashes
        if "$" in inner:
            return None
        try:
            st = fs.stat(inner)
        except ImmutoolsError:
            return False
        return {"-f": st.is_file, "-d": st.is_dir, "-e": True, "-s": st.size > 0}.get(op)
    return test


def grub_cfg_from_tar(data: bytes, member: str = "grub.cfg", max_bytes: int = _MAX_CFG_BYTES) -> str | None:
    """The text of ``member`` in a tar archive (Flatcar ships ``flatcar/grub/grub.cfg.tar``).
    None when it is not there; CorruptDataError when the archive is damaged."""
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile() and info.name.lstrip("./") == member.lstrip("./"):
                    if info.size > max_bytes:
                        raise LimitExceededError(f"{member} in tar: {info.size} bytes is more than {max_bytes}")
                    handle = tar.extractfile(info)
                    return handle.read(max_bytes).decode("utf-8", "replace") if handle else None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptDataError(f"grub.cfg tar archive: {exc}") from exc
    return None
