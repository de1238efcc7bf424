"""Linux boot configuration ("bootconfig", extra boot config): the blob and its key/value tree.

Our own reader because no library parses it (the kernel's lib/bootconfig.c and tools/bootconfig are
C; Debian does not package the tool). Format, from the kernel's
Documentation/admin-guide/bootconfig.rst and include/linux/bootconfig.h:

* appended to an initrd (Bottlerocket passes a file holding only the config as its "initrd" in
  the grub.cfg bottlerocket-os/twoliter's rpm2img writes):
  ``[text][NUL padding][le32 size][le32 checksum]["#BOOTCONFIG\\n"]``; ``size`` counts text plus
  padding, ``checksum`` is the byte sum of that area; the kernel also accepts the magic up to 3 bytes
  before the end (GRUB may align the initrd to 4 bytes); at most 32767 bytes;
* text: ``key.word = value`` or ``key { word = value }``; ``#`` comments; statements end at a
  newline, ``;`` or ``}``; a value is a comma-separated list of words or quoted strings; ``+=`` appends,
  ``:=`` overrides; a key alone (``key`` or ``key {}``) has no value;
* ``kernel.*`` keys are added to the kernel command line, ``init.*`` keys to init's arguments when
  the command line holds ``bootconfig``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from immutools.errors import CorruptDataError

MAGIC = b"#BOOTCONFIG\n"
MAX_DATA = 32767                    # XBC_DATA_MAX
MAX_NODES = 1024                    # XBC_NODE_MAX
MAX_DEPTH = 16                      # XBC_DEPTH_MAX
_KEY_WORD = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class BootConfig:
    values: dict[str, str | list[str]] = field(default_factory=dict)   # leaf key -> value (list for arrays)
    keys: list[str] = field(default_factory=list)                     # every key named, in order
    size: int = 0
    checksum: int = 0

    def kernel_args(self) -> list[str]:
        """``kernel.*`` as command-line words (the kernel's ``xbc_snprint_cmdline``)."""
        return self._args("kernel.")

    def init_args(self) -> list[str]:
        return self._args("init.")

    def _args(self, prefix: str) -> list[str]:
        out = []
        for key, value in self.values.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            vals = value if isinstance(value, list) else [value]
            out.append(name + "=" + ",".join(f'"{v}"' if " " in v else v for v in vals))
        return out


def read_blob(data: bytes) -> tuple[str, int, int]:
    """(text, size, checksum) of a bootconfig appended at the end of ``data``."""
    end = len(data)
    found = None
    for back in range(4):
        at = end - back - len(MAGIC)
        if at >= 8 and data[at:at + len(MAGIC)] == MAGIC:
            found = at
            break
    if found is None:
        raise CorruptDataError("bootconfig: no #BOOTCONFIG magic at the end of the file")
    size, checksum = struct.unpack_from("<II", data, found - 8)
    if size == 0 or size > MAX_DATA:
        raise CorruptDataError(f"bootconfig: size {size} outside 1..{MAX_DATA}")
    start = found - 8 - size
    if start < 0:
        raise CorruptDataError(f"bootconfig: size {size} is larger than the {found - 8} bytes before the footer")
    body = data[start:found - 8]
    if sum(body) & 0xFFFFFFFF != checksum:
        raise CorruptDataError(f"bootconfig: checksum {sum(body) & 0xFFFFFFFF:#x} does not match the stored {checksum:#x}")
    text = body.split(b"\0", 1)[0]
    try:
        return text.decode("utf-8"), size, checksum
    except UnicodeDecodeError:
        raise CorruptDataError("bootconfig: text is not UTF-8") from None


def parse_blob(data: bytes) -> BootConfig:
    text, size, checksum = read_blob(data)
    cfg = parse_text(text)
    cfg.size, cfg.checksum = size, checksum
    return cfg


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.cfg = BootConfig()

    def error(self, what: str) -> CorruptDataError:
        line = self.text.count("\n", 0, self.pos) + 1
        return CorruptDataError(f"bootconfig: {what} at line {line}")

    def skip_space(self, newlines: bool = True) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "#":
                nl = self.text.find("\n", self.pos)
                self.pos = len(self.text) if nl < 0 else nl
            elif ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            else:
                return

    def key(self) -> list[str]:
        words = []
        while True:
            m = _KEY_WORD.match(self.text, self.pos)
            if not m:
                raise self.error("expected a key word")
            words.append(m.group(0))
            self.pos = m.end()
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return words

    def value_item(self) -> str:
        self.skip_space(newlines=False)
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            item = self.text[self.pos + 1:end]
            self.pos = end + 1
            return item
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",;\n#}":
            self.pos += 1
        return self.text[start:self.pos].strip()

    def values(self) -> list[str]:
        items = [self.value_item()]
        while True:
            self.skip_space(newlines=False)
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1
                self.skip_space()            # an array may continue on the next line
                items.append(self.value_item())
                continue
            return items

    def assign(self, key: str, op: str, items: list[str]) -> None:
        values = self.cfg.values
        old = values.get(key)
        if op == "+=" and old is not None:
            merged = (old if isinstance(old, list) else [old]) + items
            values[key] = merged
        else:
            values[key] = items if len(items) > 1 else items[0]
        if len(values) > MAX_NODES:
            raise self.error(f"more than {MAX_NODES} keys")

    def block(self, prefix: list[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.error(f"braces nested deeper than {MAX_DEPTH}")
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                if depth:
                    raise self.error("missing }")
                return
            ch = self.text[self.pos]
            if ch == "}":
                if not depth:
                    raise self.error("unexpected }")
                self.pos += 1
                return
            if ch == ";":
                self.pos += 1
                continue
            words = prefix + self.key()
            name = ".".join(words)
            if name not in self.cfg.keys:
                self.cfg.keys.append(name)
            self.skip_space(newlines=False)
            rest = self.text[self.pos:self.pos + 2]
            if rest.startswith("{"):
                self.pos += 1
                self.block(words, depth + 1)
            elif rest in ("+=", ":="):
                self.pos += 2
                self.assign(name, rest, self.values())
            elif rest.startswith("="):
                self.pos += 1
                self.assign(name, "=", self.values())
            # else: a key without a value
            self.skip_space(newlines=False)
            if self.pos < len(self.text) and self.text[self.pos] not in "\n;}":
                raise self.error(f"unexpected {self.text[self.pos]!r} after {name}")


def parse_text(text: str) -> BootConfig:
    if len(text) > MAX_DATA:
        raise CorruptDataError(f"bootconfig: {len(text)} characters is more than {MAX_DATA}")
    parser = _Parser(text)
    parser.block([], 0)
    return parser.cfg
