"""The ``onnx-eprune`` console script (and ``python -m onnx_eprune``): :func:`onnx_eprune.cli.main`,
loaded inside a handler of its own.

Loading the command line imports numpy and scipy, half a second on an idle machine and
seconds on a cold or busy one; Ctrl-C pressed then would otherwise end in Python's
traceback and a death by SIGINT (or worse, see signals.py) rather than the one interrupt
line of any other moment. This module imports nothing heavy itself.
"""

from __future__ import annotations

import sys

from .errors import INTERRUPTED
from .signals import signals_held


def main() -> int:
    try:
        with signals_held():  # an interrupted extension import can abort the process (signals.py)
            from .cli import main as run
    except KeyboardInterrupt:  # nothing was read or written yet
        if sys.stderr is not None:
            print(INTERRUPTED, file=sys.stderr)
        return 130
    return run()
