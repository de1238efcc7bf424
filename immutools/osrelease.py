"""os-release parsing (freedesktop os-release(5) syntax: KEY=value, shell-style quoting)."""

from __future__ import annotations

import shlex


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release text. Unquoted, single- and double-quoted values with backslash escapes.

    Lines that are not KEY=value are ignored, like systemd does.
    """
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if not key.replace("_", "").isalnum() or not key[:1].isalpha():
            continue
        value = value.strip()
        try:
            parts = shlex.split(value, posix=True)
            out[key] = " ".join(parts) if parts else ""
        except ValueError:
            out[key] = value.strip("\"'")
    return out


# Places os-release lives, relative to a filesystem's root, in the order systemd reads them. A
# partition that *is* /usr (Flatcar USR-A, DPS usr) has it at /lib/os-release.
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release", "/lib/os-release")
