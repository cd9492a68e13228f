"""Progress of a long benchmark run, on one rewritten stderr line.

Shown when stderr is a terminal (or when asked with `--progress`), and only once the run has
lasted `after` seconds, so quick runs print nothing extra. The bench modules call it between
measurements with a short label of what comes next.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(
        self, enabled: bool | None = None, stream: TextIO | None = None, after: float = 2.0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.after = after
        self.start = time.monotonic()
        self._shown = 0  # length of the line on screen

    def __call__(self, label: str) -> None:
        """Starting `label` (e.g. "map 100k x 4KiB: batch, round 2/3")."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if elapsed < self.after:
            return
        line = f"[{elapsed:6.1f}s] {label}"[:99]
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def done(self) -> None:
        """Clears the line, so the tables that follow start on a clean one."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def quiet(label: str) -> None:
    """A progress callback that shows nothing (the default of the bench modules)."""
