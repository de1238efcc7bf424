"""Reading a GRUB configuration offline: variables, menu entries, their ``linux`` lines.

Our own small interpreter because no library reads grub.cfg: it follows the GRUB script language
(grub-core/script/yylex.l and execute.c) far enough for the configurations image-based systems
generate (Flatcar's template, Bottlerocket's rpm2img output, Talos' ``grub.cfg``):

* words with ``'single'`` (literal) and ``"double"`` quotes (``$var`` expanded, ``\\`` escapes ``$"\\``
  and newline), unquoted ``\\x`` escapes, ``$var`` / ``${var}``; an unquoted variable is split into
  several words, a quoted one stays one word (execute.c ``grub_script_env_get``);
* ``set a=b`` and ``a=b``, ``unset``, ``if/elif/else/fi`` with ``[``/``test`` conditions
  (``= == != -z -n -eq ... -a -o ! ( )``), ``function`` definitions and calls (``$1`` ...),
  ``menuentry``/``submenu`` blocks, ``source`` (followed through an optional loader),
  ``configfile`` (recorded); ``for``/``while`` bodies are not run.

What cannot be known offline is kept visible instead of guessed: a variable never set (``$root``,
``$usr_uuid`` from ``gptprio.next``) expands to its own ``$name`` and is listed in ``unresolved``;
a condition that depends on one (or on a file test with no ``file_exists`` callback, or on
``$?``) is *undecidable*: none of its branches change variables, menu entries defined inside them
are kept but marked ``conditional``, and a note says so. Callers may seed ``env`` with what they
know (``grub_platform``, ``grub_cpu``, ``usr_uuid`` from the GPT priorities).

Menu entries run, like at boot, after the whole file: with the final variables, each in its own
copy of them. The kernel command line an entry passes is ``GrubEntry.cmdline_words`` joined the
way GRUB's ``grub_create_loader_cmdline`` does (words containing spaces are double-quoted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from immutools.errors import CorruptDataError, ImmutoolsError, LimitExceededError
from immutools.system.cmdline import KernelCmdline

_MAX_DEPTH = 8                       # nesting of source / function calls
_MAX_NESTING = 32                    # if/menuentry/function blocks inside each other
_MAX_STEPS = 200_000                 # commands executed in total: a hostile file cannot loop us
_MAX_CFG_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9_]+")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_LINUX = re.compile(r"^linux(16|efi|32|64)?$")
_INITRD = re.compile(r"^initrd(16|efi|32|64)?$")
_KEYWORDS = {"if", "then", "elif", "else", "fi", "for", "in", "while", "until", "do", "done", "function", "menuentry", "submenu"}


# ---------------------------------------------------------------------------------------------
# Lexer: words made of literal and variable parts; separators; braces.
# ---------------------------------------------------------------------------------------------
@dataclass
class _Word:
    parts: list                  # ("lit", text, quoted) | ("var", name, quoted)
    line: int

    def keyword(self) -> str | None:
        if len(self.parts) == 1 and self.parts[0][0] == "lit" and not self.parts[0][2]:
            return self.parts[0][1] if self.parts[0][1] in _KEYWORDS else None
        return None

    def literal(self) -> str:
        return "".join(p[1] if p[0] == "lit" else "${" + p[1] + "}" for p in self.parts)


_SEP, _LBRACE, _RBRACE, _EOF = "sep", "{", "}", "eof"


def _lex(text: str) -> list:
    tokens: list = []
    parts: list = []
    line = 1
    word_line = 1
    i, n = 0, len(text)

    def lit(s: str, quoted: bool) -> None:
        if parts and parts[-1][0] == "lit" and parts[-1][2] == quoted:
            parts[-1] = ("lit", parts[-1][1] + s, quoted)
        else:
            parts.append(("lit", s, quoted))

    def end_word() -> None:
        nonlocal parts
        if parts:
            tokens.append(_Word(parts, word_line))
            parts = []

    def read_var(j: int, quoted: bool) -> int:
        """At text[j] == '$': append a variable part, return the index after it."""
        if j + 1 < n and text[j + 1] == "{":
            close = text.find("}", j + 2)
            if close != -1:
                parts.append(("var", text[j + 2:close], quoted))
                return close + 1
        m = _NAME.match(text, j + 1)
        if m:
            parts.append(("var", m.group(0), quoted))
            return m.end()
        if j + 1 < n and text[j + 1] in "?#@*":
            parts.append(("var", text[j + 1], quoted))
            return j + 2
        lit("$", quoted)
        return j + 1

    while i < n:
        ch = text[i]
        if not parts:
            word_line = line
        if ch in " \t\r":
            end_word()
            i += 1
        elif ch == "\n" or ch == ";":
            end_word()
            tokens.append((_SEP, line))
            if ch == "\n":
                line += 1
            i += 1
        elif ch == "#" and not parts:
            while i < n and text[i] != "\n":
                i += 1
        elif ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                line += 1
            elif i + 1 < n:
                lit(text[i + 1], True)
            i += 2
        elif ch == "'":
            close = text.find("'", i + 1)
            close = n if close == -1 else close
            lit(text[i + 1:close], True)
            line += text.count("\n", i, close)
            i = close + 1
        elif ch == '"':
            i += 1
            lit("", True)                 # "" is still a (quoted, empty) word
            while i < n and text[i] != '"':
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in '$"\\\n':
                    if text[i + 1] == "\n":
                        line += 1
                    else:
                        lit(text[i + 1], True)
                    i += 2
                elif c == "$":
                    i = read_var(i, True)
                else:
                    if c == "\n":
                        line += 1
                    lit(c, True)
                    i += 1
            i += 1
        elif ch == "$":
            i = read_var(i, False)
        elif ch in "{}":
            end_word()
            tokens.append((_LBRACE if ch == "{" else _RBRACE, line))
            i += 1
        else:
            lit(ch, False)
            i += 1
    end_word()
    tokens.append((_EOF, line))
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser: a small tree of commands and blocks.
# ---------------------------------------------------------------------------------------------
@dataclass
class _Cmd:
    words: list
    line: int


@dataclass
class _If:
    branches: list               # [(cond nodes, body nodes)]
    orelse: list
    line: int


@dataclass
class _Loop:
    line: int


@dataclass
class _Func:
    name: str
    body: list
    line: int


@dataclass
class _Menu:
    kind: str                    # menuentry | submenu
    words: list
    body: list
    line: int


class _Parser:
    def __init__(self, tokens: list):
        self.toks = tokens
        self.pos = 0
        self.nesting = 0

    def peek(self):
        return self.toks[self.pos]

    def advance(self):
        tok = self.toks[self.pos]
        if self.pos < len(self.toks) - 1:
            self.pos += 1
        return tok

    @staticmethod
    def kind(tok) -> str:
        return "word" if isinstance(tok, _Word) else tok[0]

    def kw(self) -> str | None:
        tok = self.peek()
        return tok.keyword() if isinstance(tok, _Word) else None

    def skip_seps(self) -> None:
        while self.kind(self.peek()) == _SEP:
            self.advance()

    def parse_program(self) -> list:
        nodes = []
        while True:
            nodes += self.parse_list(set())
            if self.kind(self.peek()) == _EOF:
                return nodes
            self.advance()           # a stray '}' or keyword at top level: skip it

    def parse_list(self, stop: set) -> list:
        nodes = []
        while True:
            self.skip_seps()
            tok = self.peek()
            if self.kind(tok) in (_EOF, _RBRACE):
                return nodes
            kw = self.kw()
            if kw in stop or kw in ("then", "elif", "else", "fi", "do", "done"):
                return nodes
            before = self.pos
            nodes.append(self.parse_statement())
            if self.pos == before:   # never stall on unexpected input
                self.advance()

    def expect(self, keyword: str) -> None:
        if self.kw() == keyword:
            self.advance()

    def parse_block(self) -> list:
        if self.kind(self.peek()) != _LBRACE:
            return []
        self.advance()
        body = self.parse_list(set())
        if self.kind(self.peek()) == _RBRACE:
            self.advance()
        return body

    def read_words(self) -> list:
        words = []
        while isinstance(self.peek(), _Word):
            words.append(self.advance())
        return words

    def parse_statement(self):
        self.nesting += 1
        try:
            if self.nesting > _MAX_NESTING:
                raise CorruptDataError(f"grub.cfg: blocks nested deeper than {_MAX_NESTING} levels")
            return self._statement()
        finally:
            self.nesting -= 1

    def _statement(self):
        tok = self.peek()
        line = tok.line if isinstance(tok, _Word) else tok[1]
        kw = self.kw()
        if kw == "if":
            self.advance()
            branches = []
            cond = self.parse_list({"then"})
            self.expect("then")
            branches.append((cond, self.parse_list({"elif", "else", "fi"})))
            orelse: list = []
            while True:
                kw = self.kw()
                if kw == "elif":
                    self.advance()
                    cond = self.parse_list({"then"})
                    self.expect("then")
                    branches.append((cond, self.parse_list({"elif", "else", "fi"})))
                elif kw == "else":
                    self.advance()
                    orelse = self.parse_list({"fi"})
                else:
                    self.expect("fi")
                    break
            return _If(branches, orelse, line)
        if kw in ("for", "while", "until"):
            self.advance()
            while self.kind(self.peek()) != _EOF and self.kw() != "do":
                self.advance()
            self.expect("do")
            self.parse_list({"done"})
            self.expect("done")
            return _Loop(line)
        if kw == "function":
            self.advance()
            name_tok = self.peek()
            name = name_tok.literal() if isinstance(name_tok, _Word) else ""
            if isinstance(name_tok, _Word):
                self.advance()
            self.skip_seps()
            return _Func(name, self.parse_block(), line)
        if kw in ("menuentry", "submenu"):
            self.advance()
            words = self.read_words()
            return _Menu(kw, words, self.parse_block(), line)
        words = self.read_words()
        if self.kind(self.peek()) == _LBRACE:      # a block where none belongs: parse and drop it
            self.parse_block()
        return _Cmd(words, line)


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
    conditional: bool = False            # defined inside an undecidable condition
    unresolved: list[str] = field(default_factory=list)
    commands: list[tuple[str, list[str]]] = field(default_factory=list)   # other commands run
    configfiles: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)   # variables set inside the entry

    @property
    def cmdline(self) -> str:
        return " ".join(f'"{w}"' if " " in w else w for w in self.cmdline_words)

    @property
    def proc_cmdline(self) -> str:
        """What /proc/cmdline shows: GRUB's linux loaders put ``BOOT_IMAGE=<kernel>`` first."""
        return " ".join(w for w in (f"BOOT_IMAGE={self.kernel}" if self.kernel else "", self.cmdline) if w)

    def kernel_cmdline(self, origin: str | None = None) -> KernelCmdline:
        where = origin or "grub.cfg"
        return KernelCmdline.from_words(
            self.cmdline_words, f"{where}: menuentry {self.title!r} line {self.linux_line}",
            observed=not self.unresolved and not self.conditional,
        )


@dataclass
class GrubConfig:
    entries: list[GrubEntry]
    variables: dict[str, str]            # final values of variables the file set (not the seeds)
    assignments: list[tuple[str, str, int]]   # (name, value, line) in execution order
    unresolved: list[str]
    notes: list[str]
    configfiles: list[str]               # top-level configfile targets
    sourced: list[str]                   # files pulled in with ``source``
    submenus: list[GrubEntry] = field(default_factory=list)   # submenu headers (no kernel)

    @property
    def default(self) -> str | None:
        return self.variables.get("default")

    @property
    def fallback(self) -> list[str]:
        """Fallback references: numbers separated by spaces, or one title/id (Talos writes a
        whole title, spaces included)."""
        value = self.variables.get("fallback")
        if not value:
            return []
        if self.find_entry(value) is not None and not value.split()[0].isdigit():
            return [value]
        return value.split()

    @property
    def timeout(self) -> str | None:
        return self.variables.get("timeout")

    def find_entry(self, ref: str) -> GrubEntry | None:
        """GRUB's lookup of ``default``/``fallback`` values: an index, an id or a title, with ``>``
        between submenu levels (grub-core/normal/menu.c ``get_entry_number``)."""
        ref = ref.strip()
        if not ref:
            return None
        levels = ref.split(">")
        scope = [e for e in self.entries if e.submenu is None]
        prefix = ""
        for depth, level in enumerate(levels):
            last = depth == len(levels) - 1
            if last:
                candidates = scope
            else:
                # submenus are positions in the menu too; match their title/index
                candidates = self._submenus(prefix)
            chosen = None
            if level.isdigit():
                chosen = next((e for e in candidates if e.index.split(">")[-1] == level), None)
            if chosen is None:
                chosen = next((e for e in candidates if e.id == level), None)
            if chosen is None:
                chosen = next((e for e in candidates if e.title == level), None)
            if chosen is None:
                return None
            if last:
                return chosen
            prefix = chosen.index
            scope = [e for e in self.entries if e.index.startswith(prefix + ">") and e.index.count(">") == depth + 1]
        return None

    def _submenus(self, prefix: str) -> list[GrubEntry]:
        return [e for e in self.submenus if (e.index.rsplit(">", 1)[0] if ">" in e.index else "") == prefix]

    def default_entry(self) -> GrubEntry | None:
        """The entry booted by default: ``default`` (unset means the first entry)."""
        ref = self.default
        if ref is None or ref == "":
            return next((e for e in self.entries if e.submenu is None), None)
        return self.find_entry(ref)

    def fallback_entries(self) -> list[GrubEntry | None]:
        return [self.find_entry(r) for r in self.fallback]


# ---------------------------------------------------------------------------------------------
# Interpreter
# ---------------------------------------------------------------------------------------------
class _Unknown(Exception):
    """A condition cannot be decided offline."""


@dataclass
class _Ctx:
    """Where command effects go: the top level or one menu entry."""

    entry: GrubEntry | None = None
    speculative: bool = False
    positional: list[str] = field(default_factory=list)
    collect_menus: bool = True           # menuentry definitions here belong to the menu being built

    def derive(self, **changes) -> "_Ctx":
        values = {"entry": self.entry, "speculative": self.speculative, "positional": self.positional,
                  "collect_menus": self.collect_menus}
        values.update(changes)
        if self.speculative:
            values["speculative"] = True
        return _Ctx(**values)


class _Interp:
    def __init__(self, env: dict[str, str], loader, file_exists):
        self.env = dict(env)
        self.seeded = set(env)
        self.loader = loader
        self.file_exists = file_exists
        self.unresolved: set[str] = set()
        self.notes: list[str] = []
        self.assignments: list[tuple[str, str, int]] = []
        self.functions: dict[str, _Func] = {}
        self.menus: list[tuple[_Menu, bool]] = []   # (definition, conditional)
        self.configfiles: list[str] = []
        self.sourced: list[str] = []
        self.steps = 0
        self.depth = 0

    # ---- expansion ----------------------------------------------------------------------------
    def expand(self, word: _Word, env: dict, ctx: _Ctx, missing: set) -> list[str]:
        fields = [""]
        nonempty = False
        split_next = False
        for kind, text, quoted in word.parts:
            if kind == "lit":
                if split_next and text:
                    fields.append("")
                    split_next = False
                fields[-1] += text
                nonempty = nonempty or quoted or bool(text)
                continue
            value = self.lookup(text, env, ctx, missing)
            if value is None:                       # unknown: keep it visible as written
                if split_next:
                    fields.append("")
                    split_next = False
                fields[-1] += "$" + text if _NAME.fullmatch(text) else "${" + text + "}"
                nonempty = True
                continue
            if quoted:
                if split_next:
                    fields.append("")
                    split_next = False
                fields[-1] += value
                nonempty = True
                continue
            pieces = value.split()
            if not pieces:
                continue
            if split_next or (value[:1].isspace() and fields[-1]):
                fields.append("")
            fields[-1] += pieces[0]
            for piece in pieces[1:]:
                fields.append(piece)
            nonempty = True
            split_next = value[-1:].isspace()
        if not nonempty:
            return []
        return fields

    def lookup(self, name: str, env: dict, ctx: _Ctx, missing: set) -> str | None:
        if name.isdigit():
            idx = int(name) - 1
            if name == "0":
                return "grub"
            return ctx.positional[idx] if 0 <= idx < len(ctx.positional) else ""
        if name == "#":
            return str(len(ctx.positional))
        if name in ("@", "*"):
            return " ".join(ctx.positional)
        if name in env:
            return env[name]
        missing.add(name)
        return None

    def words(self, cmd: _Cmd, env: dict, ctx: _Ctx, missing: set) -> list[str]:
        out: list[str] = []
        for w in cmd.words:
            out += self.expand(w, env, ctx, missing)
        return out

    # ---- execution ----------------------------------------------------------------------------
    def run(self, nodes: list, env: dict, ctx: _Ctx) -> bool | None:
        """Run nodes; return the status of the last command (True = success, None = unknown)."""
        status: bool | None = True
        for node in nodes:
            self.steps += 1
            if self.steps > _MAX_STEPS:
                self.notes.append(f"stopped after {_MAX_STEPS} commands")
                return None
            if isinstance(node, _Cmd):
                status = self.command(node, env, ctx)
            elif isinstance(node, _If):
                status = self.run_if(node, env, ctx)
            elif isinstance(node, _Func):
                self.functions[node.name] = node
                status = True
            elif isinstance(node, _Menu):
                if ctx.collect_menus:
                    self.menus.append((node, ctx.speculative))
                status = True
            elif isinstance(node, _Loop):
                self.notes.append(f"line {node.line}: loop body not evaluated")
                status = None
        return status

    def run_if(self, node: _If, env: dict, ctx: _Ctx) -> bool | None:
        undecided = False
        for cond, body in node.branches:
            missing: set = set()
            if undecided:
                status = self.run(cond, env, ctx.derive(speculative=True))
            else:
                status = self.condition(cond, env, ctx, missing)
            if undecided or status is None:
                if not undecided:
                    what = f" (depends on {', '.join('$' + m for m in sorted(missing))})" if missing else ""
                    self.notes.append(f"line {node.line}: condition not decidable offline{what}; its branches are not applied")
                undecided = True
                self.run(body, env, ctx.derive(speculative=True))
                continue
            if status:
                return self.run(body, env, ctx)
        if undecided:
            self.run(node.orelse, env, ctx.derive(speculative=True))
            return None
        return self.run(node.orelse, env, ctx)

    def condition(self, nodes: list, env: dict, ctx: _Ctx, missing: set) -> bool | None:
        status: bool | None = True
        for node in nodes:
            if isinstance(node, _Cmd):
                words = self.words(node, env, ctx, missing)
                if not words:
                    continue
                name = words[0]
                if name in ("[", "test"):
                    args = words[1:]
                    if name == "[":
                        if not args or args[-1] != "]":
                            return None
                        args = args[:-1]
                    try:
                        status = _TestEval(args, self.file_exists, bool(missing)).evaluate()
                    except _Unknown:
                        return None
                elif name == "true":
                    status = True
                elif name == "false":
                    status = False
                else:
                    self.command(node, env, ctx)
                    status = None
            else:
                status = self.run([node], env, ctx)
        return status

    def assign(self, name: str, value: str, line: int, env: dict, ctx: _Ctx) -> None:
        if ctx.speculative:
            return
        env[name] = value
        if ctx.entry is None:
            self.assignments.append((name, value, line))
        else:
            ctx.entry.variables[name] = value

    def command(self, cmd: _Cmd, env: dict, ctx: _Ctx) -> bool | None:
        missing: set = set()
        words = self.words(cmd, env, ctx, missing)
        self.unresolved |= missing
        if ctx.entry is not None:
            ctx.entry.unresolved = sorted(set(ctx.entry.unresolved) | missing)
        if not words:
            return True
        name, args = words[0], words[1:]
        m = _ASSIGN.match(name)
        if m and cmd.words and cmd.words[0].parts and cmd.words[0].parts[0][0] == "lit":
            self.assign(m.group(1), m.group(2), cmd.line, env, ctx)
            return True
        if name == "set":
            for arg in args:
                m = _ASSIGN.match(arg)
                if m:
                    self.assign(m.group(1), m.group(2), cmd.line, env, ctx)
            return True
        if name == "unset":
            if not ctx.speculative:
                for arg in args:
                    env.pop(arg, None)
            return True
        if name in ("source", "."):
            return self.source(args[0] if args else "", env, ctx)
        if name == "configfile":
            target = args[0] if args else ""
            (ctx.entry.configfiles if ctx.entry is not None else self.configfiles).append(target)
            return None
        entry = ctx.entry
        if entry is not None and not ctx.speculative and _LINUX.match(name):
            entry.linux_command = name
            entry.linux_line = cmd.line
            if args:
                entry.kernel = args[0]
                entry.kernel_device, entry.kernel_path = _split_device(args[0])
            entry.cmdline_words = args[1:]
            return True
        if entry is not None and not ctx.speculative and _INITRD.match(name):
            entry.initrds += args
            return True
        if name in self.functions:
            if self.depth >= _MAX_DEPTH:
                self.notes.append(f"line {cmd.line}: call of {name} nested too deeply")
                return None
            self.depth += 1
            try:
                return self.run(self.functions[name].body, env, ctx.derive(positional=args))
            finally:
                self.depth -= 1
        if name in ("true", "[", "test"):
            return True if name == "true" else None
        if name == "false":
            return False
        if entry is not None:
            entry.commands.append((name, args))
        return None

    def source(self, path: str, env: dict, ctx: _Ctx) -> bool | None:
        if self.loader is None or ctx.speculative:
            self.notes.append(f"source {path}: not followed")
            return None
        if self.depth >= _MAX_DEPTH:
            self.notes.append(f"source {path}: nested too deeply")
            return None
        text = self.loader(path)
        if text is None:
            self.notes.append(f"source {path}: not found")
            return False
        self.sourced.append(path)
        self.depth += 1
        try:
            program = _Parser(_lex(text[:_MAX_CFG_BYTES])).parse_program()
            return self.run(program, env, ctx)
        except CorruptDataError as exc:
            self.notes.append(f"source {path}: {exc}")
            return None
        finally:
            self.depth -= 1


def _split_device(path: str) -> tuple[str | None, str]:
    """``(hd0,gpt3)/boot/vmlinuz`` -> (``hd0,gpt3``, ``/boot/vmlinuz``); ``/vmlinuz`` -> (None, ...)."""
    if path.startswith("("):
        close = path.find(")")
        if close != -1:
            return path[1:close], path[close + 1:] or "/"
    return None, path


class _TestEval:
    """GRUB ``test``/``[`` (grub-core/commands/test.c) over already expanded words."""

    _BINARY = {"=", "==", "!=", "<", ">", "<=", ">=", "-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-pgt", "-plt", "-nt", "-ot"}

    def __init__(self, args: list[str], file_exists, has_unknown: bool = False):
        self.args = args
        self.pos = 0
        self.file_exists = file_exists
        self.has_unknown = has_unknown      # some word holds an unexpanded ``$name``

    def known(self, *operands: str) -> bool:
        return not (self.has_unknown and any("$" in o for o in operands))

    def evaluate(self) -> bool | None:
        if not self.args:
            return False
        result = self.or_expr()
        if self.pos != len(self.args):
            raise _Unknown()
        return result

    def peek(self):
        return self.args[self.pos] if self.pos < len(self.args) else None

    def or_expr(self):
        left = self.and_expr()
        while self.peek() == "-o":
            self.pos += 1
            right = self.and_expr()
            left = True if (left is True or right is True) else (None if None in (left, right) else False)
        return left

    def and_expr(self):
        left = self.not_expr()
        while self.peek() == "-a":
            self.pos += 1
            right = self.not_expr()
            left = False if (left is False or right is False) else (None if None in (left, right) else True)
        return left

    def not_expr(self):
        if self.peek() == "!":
            self.pos += 1
            value = self.not_expr()
            return None if value is None else not value
        return self.primary()

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise _Unknown()
        if tok == "(":
            self.pos += 1
            value = self.or_expr()
            if self.peek() == ")":
                self.pos += 1
            return value
        nxt = self.args[self.pos + 1] if self.pos + 1 < len(self.args) else None
        if nxt in self._BINARY and self.pos + 2 < len(self.args):
            a, op, b = tok, nxt, self.args[self.pos + 2]
            self.pos += 3
            return self.binary(a, op, b) if self.known(a, b) else None
        if tok in ("-n", "-z") and nxt is not None:
            self.pos += 2
            if not self.known(nxt):
                return None
            return (nxt != "") if tok == "-n" else (nxt == "")
        if tok in ("-d", "-e", "-f", "-s") and nxt is not None:
            self.pos += 2
            # the callback sees the path as expanded, unknown variables included: ``($root)/x``
            return None if self.file_exists is None else self.file_exists(tok, nxt)
        self.pos += 1
        return (tok != "") if self.known(tok) else None

    @staticmethod
    def binary(a: str, op: str, b: str):
        if op in ("=", "=="):
            return a == b
        if op == "!=":
            return a != b
        if op in ("<", ">", "<=", ">="):
            return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        if op in ("-nt", "-ot"):
            return None
        try:
            if op in ("-pgt", "-plt"):        # compare the numbers after a common prefix
                x = int(re.sub(r"^\D*", "", a) or "0")
                y = int(re.sub(r"^\D*", "", b) or "0")
                return x > y if op == "-pgt" else x < y
            x, y = int(a), int(b)
        except ValueError:
            return None
        return {"-eq": x == y, "-ne": x != y, "-lt": x < y, "-le": x <= y, "-gt": x > y, "-ge": x >= y}[op]


def _menu_meta(words: list[str]) -> tuple[str, str | None, list[str], list[str], bool]:
    title = None
    ident = None
    classes: list[str] = []
    options: list[str] = []
    unrestricted = False
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            options.append(w)
            key, eq, value = w.partition("=")
            if key in ("--id", "--class", "--users", "--hotkey", "--source") and not eq and i + 1 < len(words):
                value = words[i + 1]
                options.append(value)
                i += 1
            if key == "--id":
                ident = value
            elif key == "--class":
                classes.append(value)
            elif key == "--unrestricted":
                unrestricted = True
        elif title is None:
            title = w
        i += 1
    return title or "", ident, classes, options, unrestricted


def parse_grub_cfg(
    text: str,
    env: dict[str, str] | None = None,
    loader: Callable[[str], str | None] | None = None,
    file_exists: Callable[[str, str], bool | None] | None = None,
) -> GrubConfig:
    """Interpret a grub.cfg. ``env`` seeds variables GRUB would know at boot; ``loader(path)``
    returns the text of a ``source``d file (None if absent); ``file_exists(op, path)`` answers
    ``-f``/``-e``/``-d``/``-s`` tests (None: unknown)."""
    if len(text) > _MAX_CFG_BYTES:
        raise LimitExceededError(f"grub.cfg: {len(text)} characters is more than {_MAX_CFG_BYTES}")
    interp = _Interp(env or {}, loader, file_exists)
    program = _Parser(_lex(text)).parse_program()
    top = _Ctx()
    try:
        interp.run(program, interp.env, top)
    except RecursionError as exc:       # the bounds above keep us far from it; belt and braces
        raise CorruptDataError("grub.cfg: nesting too deep to evaluate") from exc
    entries: list[GrubEntry] = []
    menus_seen: list[GrubEntry] = []
    position = 0
    for menu, conditional in interp.menus:
        missing: set = set()
        words = []
        for w in menu.words:
            words += interp.expand(w, interp.env, top, missing)
        title, ident, classes, options, unrestricted = _menu_meta(words)
        index = str(position)
        position += 1
        if menu.kind == "submenu":
            holder = GrubEntry(title, ident, index, menu.line, options=options, classes=classes,
                               unrestricted=unrestricted, conditional=conditional)
            menus_seen.append(holder)
            entries += _run_submenu(interp, menu, holder)
            continue
        entry = GrubEntry(title, ident, index, menu.line, options=options, classes=classes,
                          unrestricted=unrestricted, conditional=conditional, unresolved=sorted(missing))
        interp.run(menu.body, dict(interp.env), _Ctx(entry, collect_menus=False))
        entries.append(entry)
    variables = {k: v for k, v in interp.env.items() if k not in interp.seeded or any(a[0] == k for a in interp.assignments)}
    config = GrubConfig(
        entries=entries,
        variables=variables,
        assignments=interp.assignments,
        unresolved=sorted(interp.unresolved - set(interp.env)),
        notes=interp.notes,
        configfiles=interp.configfiles,
        sourced=interp.sourced,
    )
    config.submenus = menus_seen
    return config


def _run_submenu(interp: _Interp, menu: _Menu, holder: GrubEntry) -> list[GrubEntry]:
    """Run a submenu body to collect its entries (numbered ``<submenu index>>n``)."""
    before = len(interp.menus)
    env = dict(interp.env)
    interp.run(menu.body, env, _Ctx(GrubEntry(holder.title, None, holder.index, menu.line)))
    nested = interp.menus[before:]
    del interp.menus[before:]
    out = []
    for n, (sub, conditional) in enumerate(nested):
        missing: set = set()
        words = []
        for w in sub.words:
            words += interp.expand(w, env, _Ctx(), missing)
        title, ident, classes, options, unrestricted = _menu_meta(words)
        if sub.kind == "submenu":
            continue                        # deeper nesting: not used by the systems we read
        entry = GrubEntry(title, ident, f"{holder.index}>{n}", sub.line, options=options, classes=classes,
                          unrestricted=unrestricted, submenu=holder.title,
                          conditional=conditional or holder.conditional, unresolved=sorted(missing))
        interp.run(sub.body, dict(env), _Ctx(entry, collect_menus=False))
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# Reading configurations out of filesystems
# ---------------------------------------------------------------------------------------------
def strip_device(path: str) -> str:
    """``($root)/flatcar/grub.cfg`` or ``(hd0,gpt1)/x`` -> ``/flatcar/grub.cfg``, ``/x``."""
    return _split_device(path)[1]


def fs_loader(fs, max_bytes: int = _MAX_CFG_BYTES) -> Callable[[str], str | None]:
    """A ``loader`` for ``parse_grub_cfg`` reading ``source``d files from ``fs`` (any device
    prefix is taken to mean ``fs``; None when the file is missing or unreadable)."""
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
        inner = strip_device(path)
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
