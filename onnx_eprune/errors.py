"""Exceptions that the command line turns into one-line messages and exit codes."""


class EPruneError(Exception):
    """A runtime failure the user can act on (exit status 1)."""

    exit_code = 1


class UsageError(EPruneError):
    """The command or its arguments are wrong (exit status 2)."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt so that both unwind through the
    same clean-up (exit status 143 rather than 130)."""


INTERRUPTED = "onnx-eprune: error: interrupted; no partial output was left and the input is untouched"
"""The one line a run stopped by Ctrl-C ends with (exit status 130)."""

TERMINATED = "onnx-eprune: error: terminated (SIGTERM); no partial output was left and the input is untouched"
"""The one line a run stopped by SIGTERM ends with (exit status 143)."""
