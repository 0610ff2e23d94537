"""Atomic file writes (a temporary file in the target folder, then a rename), and whether
two paths name one file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import EPruneError, UsageError


def write_atomic(target: Path, write: Callable[[BinaryIO], None], label: str | None = None) -> None:
    """Write ``target`` through ``write(file)`` so that it either appears whole or not at all.

    The data go to a temporary file beside ``target`` (same file system, so the final
    ``os.replace`` is atomic), flushed to disk first. A failed write raises EPruneError
    ``cannot write <label>: <reason>`` (``label`` defaults to the path) and leaves nothing
    behind; the OSError stays attached as its context for the caller's hints.
    """
    label = label or str(target)
    tmp = None
    try:
        tmp = temporary_beside(target)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise EPruneError(f"cannot write {label}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def temporary_beside(target: Path) -> str:
    """A new empty temporary file in ``target``'s folder, with the permissions a plain
    ``open()`` would give ``target`` (mkstemp's are owner-only: a model written that way
    could not be read by the server that loads it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return tmp


def require_file(path: Path, what: str, expected: str) -> None:
    """Refuse a ``path`` to read that does not exist or is a folder, with a one-line
    :class:`UsageError` naming ``what`` it should hold and the ``expected`` kind of file."""
    if not path.exists():
        raise UsageError(f"{what} file not found: {path}")
    if path.is_dir():
        raise UsageError(f"{what} path is a directory, expected {expected}: {path}")


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once resolved, or, where both
    exist, the same device and inode (a hard link). An unreadable path counts as another
    file: the read or write that follows reports it."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
