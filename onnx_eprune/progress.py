"""A small progress bar with an ETA, drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import threading
import time


# the bar now on the screen, if any: an error line must not be written after it
_shown: "Progress | None" = None


def end_line() -> None:
    """Erase a bar left on the screen (an interrupt as it was drawn: its task's ``with``
    block never began, so its exit did not erase it)."""
    if _shown is not None:
        _erase(_shown)


def _erase(progress: "Progress") -> None:
    """Erase ``progress``'s line, which then shows no bar."""
    global _shown
    progress.stream.write("\r\x1b[2K")
    progress.stream.flush()
    _shown = None


class Progress:
    """``with progress.task("calibrate", total) as t: t.advance()`` draws one line."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def task(self, label: str, total: int) -> "_Task":
        return _Task(self, label, total)


class _Task:
    def __init__(self, progress: Progress, label: str, total: int):
        self.progress, self.label, self.total = progress, label, max(total, 1)
        self.done = 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()  # groups are solved on worker threads

    def __enter__(self) -> "_Task":
        self._draw()
        return self

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done = min(self.total, self.done + n)
            self._draw()

    def __exit__(self, *exc) -> None:
        if self.progress.enabled:
            _erase(self.progress)

    def _draw(self) -> None:
        if not self.progress.enabled:
            return
        elapsed = time.perf_counter() - self.start
        frac = self.done / self.total
        eta = f"{elapsed / frac - elapsed:5.1f}s left" if frac > 0 else "        "
        bar = "#" * int(24 * frac)
        global _shown
        _shown = self.progress
        self.progress.stream.write(f"\r{self.label:<14} [{bar:<24}] {self.done}/{self.total} {eta}")
        self.progress.stream.flush()
