"""Exceptions that the command line turns into one-line messages and exit codes."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class EPruneError(Exception):
    """A runtime failure the user can act on (exit status 1)."""

    exit_code = 1


class UsageError(EPruneError):
    """The command or its arguments are wrong (exit status 2)."""

    exit_code = 2


class TooManyImages(UsageError):
    """A folder holds more images than memory does, decoded: ``count`` images (those asked
    for) would take ``needed`` bytes, against ``available``; the command line names its
    option that reads fewer."""

    def __init__(self, directory, count: int, needed: int, available: int):
        self.directory, self.count, self.needed, self.available = directory, count, needed, available
        super().__init__(self.described("the limit argument"))

    def described(self, option: str) -> str:
        return (f"the {self.count} images of {self.directory} take {self.needed / 2**30:.1f} GiB decoded, more than the "
                f"{self.available / 2**30:.1f} GiB of memory available; read fewer with {option}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt so that both unwind through the
    same clean-up (exit status 143 rather than 130)."""


INTERRUPTED = "onnx-eprune: error: interrupted; no partial output was left and the input is untouched"
"""The one line a run stopped by Ctrl-C ends with (exit status 130)."""

TERMINATED = "onnx-eprune: error: terminated (SIGTERM); no partial output was left and the input is untouched"
"""The one line a run stopped by SIGTERM ends with (exit status 143)."""


def stopped(exc: KeyboardInterrupt, committed: bool) -> tuple[int, str]:
    """The exit status and the one line of a run that Ctrl-C or SIGTERM (``exc``) stopped:
    130 or 143 with :data:`INTERRUPTED` or :data:`TERMINATED`, or, where its outputs were
    already in place (``committed``: it was printing its summary, or returning), 0 and a
    line that says they hold its complete results."""
    terminated = isinstance(exc, Terminated)
    if committed:
        return 0, (f"onnx-eprune: {'terminated' if terminated else 'interrupted'} after the outputs were written; "
                   "they hold this run's complete results")
    return (143, TERMINATED) if terminated else (130, INTERRUPTED)


def checked_arguments(func: Callable[..., T]) -> Callable[..., T]:
    """``func``, with arguments that do not fit its signature (a misspelt keyword, one too
    many positional arguments, a required one missing) refused as a one-line
    :class:`UsageError` naming the closest parameter, as ``prune`` refuses an unknown option,
    rather than Python's TypeError."""
    signature = inspect.signature(func)
    named = [p.name for p in signature.parameters.values()
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    listed = ", ".join(named) + (", and options by keyword" if any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()) else "")

    @functools.wraps(func)
    def checked(*args: object, **kwargs: object) -> T:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            unknown = [k for k in kwargs if k not in named]
            if unknown:
                close = difflib.get_close_matches(unknown[0], named, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"{func.__name__}() has no argument {unknown[0]!r}{hint}; its arguments are "
                                 f"{listed}") from None
            raise UsageError(f"{func.__name__}(): {exc}; its arguments are {listed}") from None
        return func(*args, **kwargs)

    return checked
