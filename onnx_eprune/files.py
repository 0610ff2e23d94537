"""Atomic file writes (a temporary file in the target folder, then a rename), several files
written as one (:class:`Replacing`), and whether two paths name one file."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
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


class Replacing:
    """Files written as one: each is claimed (:meth:`claim`) before it is written, and if
    the block fails or is interrupted, every claimed file goes back to what it was: a file
    that existed is restored from the hard link made when it was claimed (a copy where the
    file system has no links), a new one is removed, and so is ``new_dir``, a folder the
    block created, once empty again. An old file thus survives a failure anywhere in the
    block, also after a new one was renamed over it."""

    def __init__(self, new_dir: Path | None = None):
        self.new_dir = new_dir
        self.claims: dict[Path, str | None] = {}  # path -> where its old version waits, if it had one

    def claim(self, path: str | os.PathLike) -> Path:
        """Note that ``path`` is about to be written; returns it as a Path."""
        path = Path(path)
        if path not in self.claims:
            self.claims[path] = _keep_aside(path) if path.is_file() else None
        return path

    def __enter__(self) -> Replacing:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for path, old in reversed(list(self.claims.items())):
            if kind is None or old is None:
                _remove(old if kind is None else path)
                continue
            if _same(old, path):  # never replaced (a rename between two names of one file does nothing)
                _remove(old)
                continue
            try:
                os.replace(old, path)
            except Exception:  # best effort: the error that ended the block is the one to report
                pass
        if kind is not None and self.new_dir is not None and self.new_dir.is_dir() and \
                not any(self.new_dir.iterdir()):
            self.new_dir.rmdir()


def _remove(path: str | Path | None) -> None:
    try:
        if path is not None:
            os.unlink(path)
    except OSError:
        pass


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _keep_aside(path: Path) -> str:
    """A second name for ``path``'s current content, beside it (a hard link: no copy)."""
    while True:
        aside = str(path.parent / f".{_stem(path)}.{secrets.token_hex(4)}.old")
        try:
            os.link(path, aside)
            return aside
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            shutil.copy2(path, aside)
            return aside


def _stem(path: Path) -> str:
    """``path``'s name, cut to leave room for the dot, the random part and the suffix that
    a temporary name beside it adds within the 255 bytes a file name may hold."""
    name = path.name
    while len(os.fsencode(name)) > 200:
        name = name[:-1]
    return name


def temporary_beside(target: Path) -> str:
    """A new empty temporary file in ``target``'s folder, with the permissions a plain
    ``open()`` would give ``target`` (mkstemp's are owner-only: a model written that way
    could not be read by the server that loads it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{_stem(target)}.", suffix=".tmp", dir=target.parent)
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
