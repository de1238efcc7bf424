"""A one-line progress display on stderr for long operations (decompressing an image).

No third-party dependency: a carriage return redraws the line; at the end the line is blanked so
the next output starts on a clean line. In automatic mode the line only appears when the
operation has already taken more than a second and the stream is a terminal, so quick runs and
redirected output stay silent.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

SHOW_AFTER_SECONDS = 1.0
MIN_REDRAW_INTERVAL = 0.1  # at most ~10 redraws per second


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of consuming ``total`` input bytes while producing output.

    ``enabled``: True forces the display (no delay, even if the stream is not a TTY), False
    disables it, None shows it on a TTY once the operation runs longer than a second.
    """

    def __init__(
        self,
        label: str,
        total: int,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.total = max(0, total)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            self.active = bool(isatty and isatty())
            self.delay = SHOW_AFTER_SECONDS
        else:
            self.active = enabled
            self.delay = 0.0
        self.start = clock()
        self._last_draw = None  # time of the last redraw
        self._width = 0  # length of the line on screen, to blank it
        self.draws = 0

    def update(self, consumed: int, produced: int) -> None:
        """Report ``consumed`` input bytes and ``produced`` output bytes so far."""
        if not self.active:
            return
        now = self.clock()
        elapsed = now - self.start
        if elapsed < self.delay:
            return
        if self._last_draw is not None and now - self._last_draw < MIN_REDRAW_INTERVAL:
            return
        self._last_draw = now
        self._draw(self.render(consumed, produced, elapsed))

    def render(self, consumed: int, produced: int, elapsed: float) -> str:
        parts = [self.label]
        if self.total:
            fraction = min(1.0, consumed / self.total)
            parts.append(f"read {fraction * 100:5.1f}% of {_fmt_bytes(self.total)} compressed, wrote {_fmt_bytes(produced)}")
        else:
            fraction = 0.0
        rate = produced / elapsed if elapsed > 0 else 0.0
        parts.append(f"{_fmt_bytes(rate)}/s")
        if 0 < fraction < 1 and elapsed > 0:
            parts.append(f"ETA {_fmt_eta(elapsed * (1 - fraction) / fraction)}")
        return "  ".join(parts)

    def _draw(self, line: str) -> None:
        pad = max(0, self._width - len(line))
        try:
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break the work
            self.active = False
            return
        self._width = len(line)
        self.draws += 1

    def close(self) -> None:
        """Blank the line if anything was drawn. Safe to call more than once."""
        if self._width:
            try:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._width = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
