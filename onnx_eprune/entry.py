"""The ``onnx-eprune`` console script (and ``python -m onnx_eprune``): :func:`onnx_eprune.cli.main`,
loaded inside a handler of its own.

Loading the command line imports numpy and scipy, half a second on an idle machine and
seconds on a cold or busy one; Ctrl-C pressed then would otherwise end in Python's
traceback and a death by SIGINT (or worse, see signals.py) rather than the one interrupt
line of any other moment. This module imports nothing heavy itself.
"""

from __future__ import annotations

import signal
import sys

from .errors import stopped
from .signals import raise_terminated, signals_held


def main() -> int:
    # SIGTERM unwinds as Ctrl-C does also where the command line's own handler is not set:
    # while it loads, and in the moment after it returns
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with signals_held():  # an interrupted extension import can abort the process (signals.py)
            from .cli import main as run
        return run()
    except KeyboardInterrupt as exc:  # nothing was read or written yet, or the run is over
        from .files import outputs_committed

        status, line = stopped(exc, outputs_committed())
        if sys.stderr is not None:
            print(line, file=sys.stderr)
        return status
    finally:
        # the run is over (its outputs written or undone): a signal now must not kill the
        # process on its way out, which would report a death by SIGINT for a run that ended
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
