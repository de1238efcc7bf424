"""The registry of file entry kinds: one place that says which kinds a tree entry may be, what
each accepts, and which function makes its bytes.

An entry in a spec tree is a mapping with exactly one kind key (``text:``, ``elf:``, ``cpio:``...)
plus the common keys (``mode``, ``uid``, ``gid``, ``compress``). A module that adds a kind
registers it with ``@register(...)`` on the function that makes the bytes::

    @register("bootconfig")
    def bootconfig_entry(build, value, entry, ctx, where) -> bytes: ...

``register`` records the schema: ``value`` (the type the kind's value must have: ``dict``,
``list``, ``str`` ... or None for any), ``keys`` (the keys a mapping value may have) and
``required`` (the keys it must have), and an optional ``validate(value, where, trees,
validate_entry)`` for checks beyond that. ``immutools.replica.spec`` validates entries from this
registry; ``entry_bytes`` dispatches through it. Structural kinds (``dir``, ``symlink``) register
with ``make=None``: they are placed by the tree stager, not written as bytes.

This module imports only ``context``. The modules holding the built-in kinds import it to
register; ``registry()`` imports them (``BUILTIN_KIND_MODULES``) on first use, so nothing here
imports back from them.
"""

from __future__ import annotations

import gzip
import importlib
import lzma
from dataclasses import dataclass, field
from typing import Any, Callable

from immutools.replica.context import SpecError

# Modules whose import registers the built-in kinds, in the order their kinds are listed.
BUILTIN_KIND_MODULES = ("files", "filesystems", "uki", "bottlerocket", "bootassets")
ENTRY_COMMON = frozenset({"mode", "uid", "gid", "compress"})
COMPRESSIONS = ("xz", "gzip", "zstd")


@dataclass(frozen=True)
class EntryKind:
    name: str
    make: Callable[..., bytes] | None          # (build, value, entry, ctx, where) -> bytes; None: structural
    value: type | tuple[type, ...] | None = None
    keys: frozenset[str] | None = None         # allowed keys of a mapping value (None: not checked)
    required: frozenset[str] = field(default_factory=frozenset)
    validate: Callable[..., None] | None = None
    module: str = ""


_KINDS: dict[str, EntryKind] = {}
_ordered: dict[str, EntryKind] | None = None
_loaded = False


def register(name: str, *, value: type | tuple[type, ...] | None = None, keys=None, required=(),
             validate: Callable[..., None] | None = None, structural: bool = False):
    """Decorator: register ``name`` with the decorated function as its maker (see the module docstring)."""

    def deco(fn):
        global _ordered
        if name in _KINDS and _KINDS[name].module != fn.__module__:
            raise RuntimeError(f"entry kind {name!r} registered twice ({_KINDS[name].module}, {fn.__module__})")
        _KINDS[name] = EntryKind(name=name, make=None if structural else fn, value=value,
                                 keys=frozenset(keys) if keys is not None else None,
                                 required=frozenset(required), validate=validate, module=fn.__module__)
        _ordered = None
        return fn

    return deco


def registry() -> dict[str, EntryKind]:
    """Every registered kind, by name (the built-in modules are imported on the first call), in a
    stable order: built-in modules in ``BUILTIN_KIND_MODULES`` order, then others, each in
    registration order (whatever order the modules happened to be imported in)."""
    global _loaded, _ordered
    if not _loaded:
        _loaded = True
        for mod in BUILTIN_KIND_MODULES:
            importlib.import_module(f"immutools.replica.{mod}")
    if _ordered is None:
        rank = {f"immutools.replica.{m}": i for i, m in enumerate(BUILTIN_KIND_MODULES)}
        order = sorted(enumerate(_KINDS.values()), key=lambda ik: (rank.get(ik[1].module, len(rank)), ik[0]))
        _ordered = {k.name: k for _i, k in order}
    return _ordered


def kind_names() -> tuple[str, ...]:
    return tuple(registry())


def kind_of(entry: dict, where: str) -> EntryKind:
    """The one kind an entry has; SpecError when it has none or several."""
    kinds = [k for k in registry() if k in entry]
    if len(kinds) != 1:
        hint = " (an overlay changing an entry's kind must drop the inherited one, e.g. `symlink: ~`)" if kinds else ""
        raise SpecError(f"{where}: give exactly one of {', '.join(registry())} (found {kinds or 'none'}){hint}")
    return registry()[kinds[0]]


def validate_value(kind: EntryKind, entry: dict, where: str, trees: dict, validate_entry: Callable) -> None:
    """The schema checks a kind registered, on ``entry[kind.name]``."""
    value = entry[kind.name]
    kw = f"{where}.{kind.name}"
    if kind.value is not None and not isinstance(value, kind.value):
        names = kind.value.__name__ if isinstance(kind.value, type) else " or ".join(t.__name__ for t in kind.value)
        raise SpecError(f"{kw}: expected a {names}" + (f" with {', '.join(sorted(kind.required))}" if kind.required else ""))
    if isinstance(value, dict):
        missing = sorted(kind.required - set(value))
        if missing:
            raise SpecError(f"{kw}: needs {', '.join(missing)}")
        if kind.keys is not None:
            unknown = sorted(set(map(str, value)) - kind.keys)
            if unknown:
                raise SpecError(f"{kw}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(kind.keys))})")
    if kind.validate is not None:
        kind.validate(value, where, trees, validate_entry)


def compress_bytes(data: bytes, how: str | None) -> bytes:
    if not how:
        return data
    if how == "xz":
        # Kernel modules use xz with CRC32 checks (the kernel's decompressor lacks CRC64).
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data)
    raise SpecError(f"compress: {how!r}")


def entry_bytes(build: Any, entry: dict, ctx: dict, where: str) -> bytes:
    """The content of a regular-file entry (already rendered), compressed when it says so."""
    kind = kind_of(entry, where)
    if kind.make is None:
        raise SpecError(f"{where}: not a regular file entry")
    return compress_bytes(kind.make(build, entry[kind.name], entry, ctx, where), entry.get("compress"))
