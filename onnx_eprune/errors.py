"""Exceptions that the command line turns into one-line messages and exit codes."""


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
