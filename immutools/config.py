"""The optional configuration file: defaults for the options people repeat.

``$IMMUTOOLS_CONFIG`` names the file; otherwise ``$XDG_CONFIG_HOME/immutools/config.toml``
(``~/.config/immutools/config.toml``). A missing default file is no error; a missing file named
by ``$IMMUTOOLS_CONFIG``, bad TOML, an unknown key or a value of the wrong kind is a one-line
error with its own exit code (8). Precedence: command-line flags > environment > file > built-in
defaults. Parsed with the standard library's ``tomllib``.

Keys (all optional)::

    cache_dir = "/var/tmp/immutools"   # like --cache-dir; environment: IMMUTOOLS_CACHE_DIR
    rubric = "~/my-rubric.yaml"        # like --rubric (compare, report); environment: IMMUTOOLS_RUBRIC
    format = "json"                    # like --format, for the commands that offer that format;
                                       # environment: IMMUTOOLS_FORMAT
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from immutools.errors import EXIT_CONFIG, ImmutoolsError


FORMATS = ("table", "json", "yaml", "csv")
KEYS = {"cache_dir": str, "rubric": str, "format": str}
ENVIRONMENT = {"cache_dir": "IMMUTOOLS_CACHE_DIR", "rubric": "IMMUTOOLS_RUBRIC", "format": "IMMUTOOLS_FORMAT"}


class ConfigError(ImmutoolsError):
    """The configuration file (or a configuration variable) cannot be used."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class Config:
    cache_dir: str | None = None
    rubric: str | None = None
    format: str | None = None
    path: str | None = None  # the file the values came from, if any


def config_path(environ=os.environ) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (then it must exist)."""
    if environ.get("IMMUTOOLS_CONFIG"):
        return Path(environ["IMMUTOOLS_CONFIG"]).expanduser(), True
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "immutools" / "config.toml", False


def _check_format(value: str, where: str) -> str:
    if value not in FORMATS:
        raise ConfigError(f"{where}: format {value!r} is not one of {', '.join(FORMATS)}")
    return value


def load_file(environ=os.environ) -> Config:
    """Values from the file alone."""
    path, explicit = config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: configuration file not found (named by IMMUTOOLS_CONFIG)") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    import tomllib   # only when there is a file: scan stays import-light without one

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {str(exc).splitlines()[0]}") from None
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if not isinstance(value, KEYS[key]):
            raise ConfigError(f"{path}: {key} must be a string, not {type(value).__name__}")
    if "format" in data:
        _check_format(data["format"], str(path))
    expand = {k: (str(Path(v).expanduser()) if k in ("cache_dir", "rubric") else v) for k, v in data.items()}
    return Config(path=str(path), **expand)


def load(environ=os.environ) -> Config:
    """File values overridden by the environment (flags are applied by the CLI on top)."""
    file = load_file(environ)
    values = {key: getattr(file, key) for key in KEYS}
    for key, var in ENVIRONMENT.items():
        if environ.get(var):
            values[key] = environ[var]
    if values["format"] is not None and environ.get("IMMUTOOLS_FORMAT"):
        _check_format(values["format"], "IMMUTOOLS_FORMAT")
    return Config(path=file.path, **values)
