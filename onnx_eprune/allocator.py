"""Keep the memory a run frees for its next allocations (glibc's malloc, for the CLI process).

A pruning run allocates and frees the same large arrays batch after batch (activations,
convolution patches, products). By default glibc serves each array above 32 MiB, and
every array of a worker thread's arena beyond that arena's 64 MiB heaps, with a fresh
``mmap`` that it unmaps when the array is freed, and it trims freed memory at the top of
its heaps: the kernel must then find, and zero, new pages for every batch. On virtual
machines that report freed pages to their host (virtio free-page reporting, as on this
project's benchmark host) a new page also costs a host fault: the same run spent a third
of its CPU time in the kernel, and touching a GiB of memory freed a few seconds earlier
took 8-16 s against 0.2 s for memory freed just before.

:func:`keep_freed_memory` makes malloc serve every thread from the main heap, never
``mmap`` arrays, and never return the heap's top to the kernel, so that a freed batch's
pages serve the next batch. Peak resident memory is still that of the largest set of
arrays alive at once, plus the heap's fragmentation (ResNet-18 and VGG-16 runs peaked
within -3% to +6% of the default's); the process only stops shrinking after its peak.
The settings apply to the whole process and cannot all be undone (glibc fixes its arena
limit when it first needs it), so only the command-line program, whose process ends with
the run, calls this; a program using the Python API may set the same through glibc's
environment variables (README).

It does so for sequential-mode runs only, whose stages allocate and free the same arrays
over and over (ResNet-18 0.84: 35.1 s against 45.8 s). A one-shot run holds every
consumer's statistics at once, and in one heap without ``mmap`` the gaps between them
raised its peak by 15% (3.11 against 2.70 GB) for no time gained (39.6 against 40.6 s;
one run each, session 37).
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_NEVER = 2 ** 31 - 1  # the largest value mallopt takes (an int): free heap top kept up to 2 GiB


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; returns whether it could (False
    off glibc, where nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        done = all(libc.mallopt(param, value) == 1 for param, value in
                   ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_NEVER)))
    except (OSError, AttributeError):
        return False
    log.debug("malloc: one arena, no mmap for large arrays, no trimming (%s)", "set" if done else "refused")
    return done
