"""Scratch files (direct I/O where the file system allows it) and the CLI's malloc settings."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from onnx_eprune.calibrate import scratch
from onnx_eprune.calibrate.scratch import ALIGN, ScratchFile, aligned_empty


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((3, 5, 7)).astype(np.float32),   # not a multiple of the block
            np.arange(ALIGN // 8, dtype=np.float64),               # exactly one block
            np.zeros((0, 4), np.float32),                          # empty
            rng.integers(0, 255, (2, 3000)).astype(np.uint8),
            np.asfortranarray(rng.standard_normal((64, 33))),      # not C-contiguous
            rng.standard_normal((16, 64, 8, 8)).astype(np.float32)[:, ::2]]  # a strided view


@pytest.mark.parametrize("directory", ["tmp", "shm"])
def test_scratch_file_gives_back_what_was_written(tmp_path, directory):
    """Every record reads back bit for bit, in any order and from parallel threads, on a
    disk and on tmpfs (which refused O_DIRECT before Linux 6.6)."""
    if directory == "shm" and not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    folder = tempfile.mkdtemp(dir="/dev/shm") if directory == "shm" else str(tmp_path)
    try:
        f = ScratchFile(os.path.join(folder, "1.bin"))
        arrays = _arrays()
        records = [f.append(a) for a in arrays]
        assert all(offset % ALIGN == 0 for offset, _, _ in records)
        for a, record in reversed(list(zip(arrays, records))):
            back = f.read(record)
            assert back.dtype == a.dtype and back.shape == a.shape
            np.testing.assert_array_equal(back, a)
        with ThreadPoolExecutor(4) as pool:
            backs = list(pool.map(f.read, records * 3))
        for a, back in zip(arrays * 3, backs):
            np.testing.assert_array_equal(back, a)
        f.remove()
        assert not os.path.exists(f.path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_scratch_file_falls_back_when_direct_io_is_refused(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL) gets the same records through the
    page cache."""
    if not scratch._DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    f = ScratchFile(str(tmp_path / "1.bin"))
    real_opener = f._opener
    refused = []

    def opener(path, flags):
        if f.direct:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_opener(path, flags)

    monkeypatch.setattr(f, "_opener", opener)
    a = np.arange(1000, dtype=np.float32)
    record = f.append(a)
    assert refused == [f.path] and not f.direct
    np.testing.assert_array_equal(f.read(record), a)


def test_scratch_file_reads_without_direct_io_when_only_reads_are_refused(tmp_path, monkeypatch):
    """Written with direct I/O, read back through the page cache if a direct read is
    refused (EINVAL)."""
    f = ScratchFile(str(tmp_path / "1.bin"))
    a = np.arange(5000, dtype=np.float64).reshape(50, 100)
    record = f.append(a)
    if not f.direct:
        pytest.skip("this file system refuses O_DIRECT")
    real_opener = f._opener

    def opener(path, flags):
        if f.direct and not flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_opener(path, flags)

    monkeypatch.setattr(f, "_opener", opener)
    np.testing.assert_array_equal(f.read(record), a)
    assert not f.direct


def test_aligned_empty_is_aligned():
    for n in (1, ALIGN - 1, ALIGN, 3 * ALIGN + 5):
        block = aligned_empty(n)
        assert block.ctypes.data % ALIGN == 0 and block.nbytes % ALIGN == 0 and block.nbytes >= n


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_serves_large_arrays_from_the_heap():
    """After keep_freed_memory a 64 MiB array (a worker thread's, too) is not a mapping of
    its own (glibc's mallinfo2 counts mapped bytes), and freeing it leaves the heap's pages
    with the process; without it, the array is mapped and unmapped."""
    probe = """
import ctypes, json, sys, threading
import numpy as np
from onnx_eprune.allocator import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("skip"); sys.exit()
libc.mallinfo2.restype = Info
if sys.argv[1] == "1":
    assert keep_freed_memory()
seen = []
def work():
    a = np.ones(64 << 18, np.float32)
    seen.append((libc.mallinfo2().hblkhd, libc.mallinfo2().arena))
    del a
    seen.append((libc.mallinfo2().hblkhd, libc.mallinfo2().arena))
work()
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps(seen))
"""
    results = {}
    for tuned in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", probe, tuned], capture_output=True, text=True, check=True).stdout
        if out.strip() == "skip":
            pytest.skip("glibc without mallinfo2")
        results[tuned] = json.loads(out)
    mib64 = 64 << 20
    # default: each array is a mapping of its own, gone when freed
    assert all(mapped >= mib64 for mapped, _ in results["0"][0::2])
    assert all(mapped < mib64 for mapped, _ in results["0"][1::2])
    # tuned: no mapping; the main heap holds the array and keeps its pages after the free
    assert all(mapped < mib64 for mapped, _ in results["1"])
    assert all(heap >= mib64 for _, heap in results["1"])
