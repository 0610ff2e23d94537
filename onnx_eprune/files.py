"""Atomic file writes (a temporary file in the target folder, then a rename), several files
written as one (:class:`Replacing`), and whether two paths name one file."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .errors import EPruneError, UsageError
from .signals import signals_held


def output_path(path: str | os.PathLike, what: str = "path", created: Path | None = None) -> Path:
    """``path`` as the Path of a file to write, or a one-line :class:`UsageError`: not a str
    or path, empty, a folder, something other than a regular file (a device or a pipe,
    which the rename would replace by a file: ``/dev/null`` itself, as root), or in a
    folder that does not exist (other than ``created``, one the caller is about to
    create). ``what`` names it in the message."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"{what} must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not text:
        raise UsageError(f"{what} is empty; give a file name")
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise UsageError(f"{what} {text} is a directory; give a file name")
    if target.exists() and not target.is_file():
        raise UsageError(f"{what} {text} exists and is not a regular file (a device, pipe or socket); give the "
                         "path of a file")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir() and (created is None or folder.resolve() != created.resolve()):
        raise UsageError(f"output folder does not exist: {folder}; create it first or choose another path")
    return target


def write_atomic(target: Path, write: Callable[[BinaryIO], None], label: str | None = None) -> None:
    """Write ``target`` through ``write(file)`` so that it either appears whole or not at all.

    The data go to a temporary file beside ``target`` (same file system, so the final
    ``os.replace`` is atomic), flushed to disk first. A failed write raises EPruneError
    ``cannot write <label>: <reason>`` (``label`` defaults to the path) and leaves nothing
    behind; the OSError stays attached as its context for the caller's hints. A ``target``
    that :func:`output_path` refuses is refused the same way, before anything is written.
    """
    label = label or str(target)
    output_path(target, label)
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
    block creates on entry (its files may go in it), once empty again. An old file thus
    survives a failure anywhere in the block, also after a new one was renamed over it."""

    def __init__(self, new_dir: Path | None = None):
        self.new_dir = new_dir
        self.claims: dict[Path, str | None] = {}  # path -> where its old version waits, if it had one
        self.settled = False  # the new files made final, or the old ones back
        self.committed = False  # settled as final

    def claim(self, path: str | os.PathLike) -> Path:
        """Note that ``path`` is about to be written; returns it as a Path. A symbolic link
        there, also one whose target does not exist (yet), is kept as the link it is."""
        path = Path(path)
        if path not in self.claims:
            self.claims[path] = _keep_aside(path) if path.is_file() or path.is_symlink() else None
        return path

    def __enter__(self) -> Replacing:
        if self.new_dir is not None:
            self.new_dir.mkdir(exist_ok=True)
        _OPEN.append(self)
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            with signals_held():  # a second Ctrl-C must not stop the commit or the undo half-way
                self._finish(kind)
        except BaseException:
            if not self.settled:  # a signal came before it was held: the block was interrupted after all
                with signals_held():
                    self._finish(KeyboardInterrupt)
            raise
        finally:
            _OPEN.remove(self)
            # a block inside another (the report files of a command's outputs) is final only with it
            if self.settled and self.committed and not _OPEN:
                _COMMITTED.append(tuple(self.claims))

    def _finish(self, kind: type | None) -> None:
        """Make the claimed files final (``kind`` None: the block succeeded) or put the old
        ones back (the exception type that ended it)."""
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
        self.settled = True
        self.committed = kind is None and bool(self.claims)


# the blocks being written, innermost last, and the files of the outermost blocks made final
# since forget_commits(): an interrupt that comes after them (the command prints its summary)
# has nothing left to stop or undo
_OPEN: list[Replacing] = []
_COMMITTED: list[tuple[Path, ...]] = []


def outputs_committed() -> bool:
    """Whether a :class:`Replacing` block made its files final since :func:`forget_commits`."""
    return bool(_COMMITTED)


def forget_commits() -> None:
    """Start a new run: no outputs committed yet."""
    _COMMITTED.clear()


def _remove(path: str | Path | None) -> None:
    try:
        if path is not None:
            os.unlink(path)
    except OSError:
        pass


def _same(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are names of one file; links are compared as links (a link
    and the file it points to are two files here)."""
    try:
        first, second = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _keep_aside(path: Path) -> str:
    """A second name for ``path``'s current content, beside it (a hard link: no copy; of a
    symbolic link, the link itself). Where no link can be made, a copy; a copy that fails
    (a full disk) is removed and raises EPruneError ``cannot write <path>: ...``."""
    while True:
        aside = str(path.parent / f".{_stem(path)}.{secrets.token_hex(4)}.old")
        try:
            os.link(path, aside)
            return aside
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links, or protected_hardlinks
            pass
        try:
            shutil.copy2(path, aside, follow_symlinks=False)
            return aside
        except OSError as exc:
            _remove(aside)  # a half-written copy
            raise EPruneError(f"cannot write {path}: its old version could not be copied aside: "
                              f"{exc.strerror or exc}") from exc


def _stem(path: Path) -> str:
    """``path``'s name, cut to leave room for the dot, the random part and the suffix that
    a temporary name beside it adds within the 255 bytes a file name may hold."""
    name = path.name
    while len(os.fsencode(name)) > 200:
        name = name[:-1]
    return name


def temporary_beside(target: Path) -> str:
    """A new empty temporary file in ``target``'s folder, with the permissions a plain
    ``open()`` would give ``target``: those of the file it replaces (a private 0600 model
    stays private), else 0666 less the umask (mkstemp's are owner-only: a model written that
    way could not be read by the server that loads it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{_stem(target)}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _open_mode(target))
    except OSError:  # no chmod here (vfat, CIFS, some FUSE): the file stays owner-only, never more open
        pass
    return tmp


def _open_mode(target: Path) -> int:
    """The permission bits ``open(target, 'wb')`` leaves: the existing file's (through a
    link, as open follows it; without set-id or sticky bits, which a write clears), else
    0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode) & 0o777
    except OSError:  # no such file (or an unreadable path: the write that follows says so)
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


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
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, before Python 3.13
        return False
