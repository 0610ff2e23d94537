"""Ctrl-C and SIGTERM held back over a few steps that must not be cut half-way.

Among them the first import of a compiled extension (numpy, scipy, onnx, onnxruntime,
matplotlib, Pillow): an interrupt raised inside its initialisation can abort the whole
process (onnx's C++ module ends in ``std::terminate``) or leave the import failed for the
rest of the run ("ImportError: initialization failed"), which reads as a missing package.
Held, the interrupt arrives as soon as the import is done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends (it must be short), then raise the
    first that came. Python's handlers are swapped, not the signal mask: a signal sent to
    the process reaches whichever thread does not mask it (onnxruntime's and BLAS's).
    Outside the main thread, where handlers cannot be set and no signal is raised, the
    block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: came.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if came:
            signal.raise_signal(came[0])


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler that raises :class:`~onnx_eprune.errors.Terminated`, so that a
    terminated run unwinds through the clean-up of an interrupted one."""
    from .errors import Terminated

    raise Terminated
