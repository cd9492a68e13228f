"""Undo a multi-step setup in reverse when a later step fails.

    with Unwind("attaching 0000:00:03.0 through IOMMUFD") as undo:
        fd = open_device(); undo.push("close the device fd", fd.close)
        bind(fd)                                   # raises: fd.close() runs, then re-raise

Each step pushes how to undo itself once it has succeeded, so a failure undoes exactly the
steps before it, newest first. Undo actions that fail are logged and the rest still run;
the original exception propagates with a note naming what was being done and what was
undone. Leaving the block normally forgets the undo actions (the setup is kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("fastmap.vfio")


class Unwind:
    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, description: str, undo: Callable[[], object]) -> None:
        """Register how to undo the step that just succeeded."""
        self._steps.append((description, undo))

    def __enter__(self) -> Unwind:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        steps, self._steps = self._steps, []
        if exc is None:
            return
        undone = []
        for description, undo in reversed(steps):
            try:
                undo()
            except Exception as e:
                log.error("%s: undo step %r failed: %s", self.what, description, e)
                undone.append(f"{description} (FAILED: {e})")
            else:
                undone.append(description)
        summary = "; ".join(undone) if undone else "nothing to undo"
        exc.add_note(f"while {self.what}; undone: {summary}")
