"""Scratch files for cached activations, written and read around the page cache.

A spilled tensor is written once and read back a few times within the same run, so the
kernel's page cache only doubles its memory: every written byte first takes a fresh page
of the cache, and on virtual machines that hand freed memory back to their host
(free-page reporting) a fresh page costs a host fault, which measured 8-16 s per GiB on
this project's benchmark host against 0.8 s per GiB for direct I/O to its disk. Where the
platform and file system allow it, the files are opened with ``O_DIRECT``; elsewhere
(tmpfs before Linux 6.6, macOS, Windows) the same calls go through the page cache.

Direct I/O moves whole blocks from block-aligned memory to block-aligned file offsets, so
each record starts at a multiple of :data:`ALIGN` bytes and is padded to one, and goes
through a copy in aligned memory.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import numpy as np

from ..errors import EPruneError

ALIGN = 4096  # a multiple of every common logical block size (512 B and 4 KiB sectors)
_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` (rounded up to ALIGN) whose data starts
    at a multiple of ALIGN in memory."""
    size = _padded(nbytes)
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + size]


def _padded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class ScratchFile:
    """An append-only file of numpy arrays, each read back by the record that
    :meth:`append` returned. Appends come from one thread at a time; reads may come from
    several at once (each opens its own descriptor)."""

    def __init__(self, path: str):
        self.path = path
        self.direct = bool(_DIRECT)
        self._end = 0

    def _opener(self, path: str, flags: int) -> int:
        return os.open(path, flags | (_DIRECT if self.direct else 0), 0o600)

    def append(self, value: np.ndarray) -> tuple[int, tuple[int, ...], np.dtype]:
        """Write ``value``; returns its record (file offset, shape, dtype)."""
        value = np.ascontiguousarray(value)
        size = _padded(value.nbytes)
        # a copy in aligned memory, freed after the write: a buffer kept per file would hold
        # a batch's bytes for every tensor in scratch files
        block = memoryview(aligned_empty(size))
        block[:value.nbytes] = memoryview(value.reshape(-1).view(np.uint8))
        self._io(self._write, block)
        record = (self._end, value.shape, value.dtype)
        self._end += size
        return record

    def _io(self, operation: Callable[..., None], *args) -> None:
        """``operation(*args)``, again through the page cache if direct I/O is refused: older
        tmpfs refuses O_DIRECT files when opening them, some file systems their reads or writes."""
        try:
            try:
                operation(*args)
            except OSError as e:
                if not self.direct or e.errno != errno.EINVAL:
                    raise
                self.direct = False
                operation(*args)
        except OSError as e:  # the CLI adds the hint of the errno (e.g. free some disk space)
            verb = "write" if operation == self._write else "read"
            raise EPruneError(f"cannot {verb} scratch file {self.path}: {e.strerror or e} (it caches activations "
                              "in the folder TMPDIR names)") from e

    def _write(self, block: memoryview) -> None:
        with open(self.path, "r+b" if self._end else "wb", buffering=0, opener=self._opener) as f:
            f.seek(self._end)
            while len(block):
                block = block[f.write(block):]

    def read(self, record: tuple[int, tuple[int, ...], np.dtype]) -> np.ndarray:
        """The array written as ``record`` (a view into a fresh aligned buffer)."""
        offset, shape, dtype = record
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        block = aligned_empty(nbytes)
        self._io(self._read, offset, memoryview(block))
        return block[:nbytes].view(dtype).reshape(shape)

    def _read(self, offset: int, view: memoryview) -> None:
        with open(self.path, "rb", buffering=0, opener=self._opener) as f:
            f.seek(offset)
            while len(view):
                n = f.readinto(view)
                if not n:
                    raise OSError(errno.EIO, f"scratch file {self.path} ends early")
                view = view[n:]

    def remove(self) -> None:
        """Delete the file."""
        if os.path.exists(self.path):
            os.remove(self.path)
