"""Progress on stderr: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import IO


class Progress:
    def __init__(self, prefix: str, stream: IO[str] | None = None, width: int = 30) -> None:
        self._prefix = prefix
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._last = ""

    def __call__(self, message: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self._tty:
            filled = round(self._width * fraction)
            bar = "#" * filled + "-" * (self._width - filled)
            end = "\n" if fraction >= 1.0 else ""
            text = f"\r\x1b[2K{self._prefix} [{bar}] {fraction:4.0%} {message}{end}"
            self._stream.write(text)
        elif message != self._last:
            # Logs get one line per step, not a redraw per tick.
            self._stream.write(f"{self._prefix}: {message} ({fraction:.0%})\n")
        self._stream.flush()
        self._last = message

    def finish(self) -> None:
        """End a bar left mid-line (a run that stopped early) so later output starts clean."""
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()
            self._last = ""


def silent(message: str, fraction: float) -> None:
    """A progress callback that reports nothing."""
