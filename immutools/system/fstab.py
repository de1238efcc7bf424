"""/etc/fstab parsing with line numbers for evidence.

Our own parser (fstab(5) is six whitespace-separated fields; libmount has no Python binding we
can rely on): ``#`` comment lines and blank lines skipped; octal escapes ``\\040`` (space),
``\\011`` (tab), ``\\012``, ``\\134`` decoded in every field (libmount ``unmangle``); missing
``freq``/``passno`` default to 0; options split at commas outside double quotes (so
``context="a,b"`` stays one option). Checked against ``findmnt --tab-file`` in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from immutools.system.devices import SourceSpec, parse_source

_OCTAL = re.compile(r"\\([0-7]{3})")


def unmangle(text: str) -> str:
    r"""Decode ``\NNN`` octal escapes (bytes, then UTF-8)."""
    if "\\" not in text:
        return text
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)) if int(m.group(1), 8) < 256 else m.group(0), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def split_options(text: str) -> list[str]:
    """Split a mount option string at commas outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            if cur:
                out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


@dataclass
class FstabEntry:
    source: str
    target: str
    fstype: str
    options: list[str]
    freq: int = 0
    passno: int = 0
    line: int = 0
    path: str | None = None
    spec: SourceSpec | None = field(default=None, repr=False)

    @property
    def effective_options(self) -> list[str]:
        return self.options or ["defaults"]

    @property
    def read_only(self) -> bool:
        """True when the last of ``ro``/``rw`` in the options is ``ro`` (``defaults`` means rw)."""
        access = None
        for opt in self.options:
            if opt in ("ro", "rw"):
                access = opt
        return access == "ro"

    @property
    def noauto(self) -> bool:
        return "noauto" in self.options

    def option_value(self, name: str) -> str | None:
        value = None
        for opt in self.options:
            key, eq, val = opt.partition("=")
            if key == name and eq:
                value = val
        return value


def parse_fstab(text: str, path: str | None = None) -> tuple[list[FstabEntry], list[str]]:
    """(entries, warnings). A line with fewer than three fields, or a freq/passno that is not a
    number, is skipped with a warning (as libmount does). No options means ``defaults``."""
    entries: list[FstabEntry] = []
    warnings: list[str] = []
    where = path or "fstab"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 3:
            warnings.append(f"{where} line {number}: fewer than 3 fields, ignored")
            continue
        fields = [unmangle(f) for f in fields]
        options = split_options(fields[3]) if len(fields) > 3 else []
        numbers = []
        for text_value in fields[4:6]:
            if not text_value.isdigit():
                break
            numbers.append(int(text_value))
        else:
            numbers += [0] * (2 - len(numbers))
        if len(numbers) != 2:
            # libmount refuses the whole line
            warnings.append(f"{where} line {number}: freq/passno is not a number, line ignored")
            continue
        entries.append(FstabEntry(fields[0], fields[1], fields[2], options, numbers[0], numbers[1], number, path,
                                  parse_source(fields[0])))
    return entries, warnings
