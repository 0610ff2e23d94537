"""Independent work spread over threads.

The solvers call LAPACK on one BLAS thread each (so that their results do not depend on the
thread count, see ``Pruner.run``); LAPACK releases the GIL, so independent groups solved on
parallel Python threads use the cores that a single solver leaves idle, and each group's
result is the same bytes as when solved alone.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

from .signals import signals_held

T = TypeVar("T")


_BLAS_LOCK = threading.Lock()
_blas_runs = 0          # runs in this process that need BLAS on one thread
_blas_limiter = None    # threadpoolctl's limiter, set by the first of them


@contextmanager
def blas_on_one_thread(controller) -> Iterator[None]:
    """BLAS on one thread while the block runs (``controller``: a threadpoolctl
    ThreadpoolController). The limit is the process's: runs on several threads share one,
    set by the first that enters and lifted by the last that leaves, so that no run is left
    unpinned by another's end and the caller's thread count comes back afterwards."""
    global _blas_runs, _blas_limiter
    with _BLAS_LOCK:
        # every run sets it (the OpenBLAS that numpy bundles can keep a count per thread);
        # the first one's limiter holds the caller's counts to put back
        limiter = controller.limit(limits=1, user_api="blas")
        if _blas_runs == 0:
            _blas_limiter = limiter
        _blas_runs += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_runs -= 1
            if _blas_runs == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def parallel_map(fn: Callable[[T], object], items: Iterable[T], workers: int) -> list:
    """``[fn(i) for i in items]`` on up to ``workers`` threads, results in ``items`` order.

    The caller works through the items itself, helped by up to ``workers - 1`` threads of a
    pool kept for the life of the process: the solvers and the statistics call this hundreds
    of times per run (a new thread per call and item cost seconds of thread starts on a
    busy machine), and calls nest (a group ranked on a thread spreads its terms). A helper
    still queued when the caller runs out of items is cancelled, so a nested call never
    waits for a pool thread, and the pool cannot deadlock. Every item runs; the exception of
    the first failing item (in ``items`` order) propagates. An interrupt of the caller stops
    the helpers after their current item."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    results: list = [None] * len(items)
    errors: dict[int, Exception] = {}
    claimed = itertools.count()   # next() on it is atomic under the GIL: each item runs once
    stopped = threading.Event()

    def drain() -> None:
        while not stopped.is_set() and (i := next(claimed)) < len(items):
            try:
                results[i] = fn(items[i])
            except Exception as exc:  # re-raised by the caller, in items order
                errors[i] = exc

    helpers: list[Future] = []
    try:
        helpers.extend(submit(_pool(), drain) for _ in range(min(workers, len(items)) - 1))
        drain()
    except BaseException:  # an interrupt in the caller: the helpers stop after their item
        stopped.set()
        raise
    for helper in helpers:
        if not helper.cancel():
            helper.result()
    if errors:
        raise errors[min(errors)]
    return results


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The helper threads of :func:`parallel_map` (started as needed, kept for reuse)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            # enough for the nesting the pipeline does (groups x terms x blocks) on many cores
            _POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="onnx-eprune")
        return _POOL


def matmul_rows(a: np.ndarray, b: np.ndarray, workers: int, rows: int = 512) -> np.ndarray:
    """``a @ b`` for ``a`` (R x K) and ``b`` (K x M), ``rows`` rows of ``a`` per product on
    up to ``workers`` threads. Each product is a single-threaded BLAS call (the caller keeps
    BLAS at one thread) of a shape that does not depend on ``workers``, so the result is the
    same bytes for any number of workers, which a multithreaded BLAS call does not promise."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))

    def product(start: int) -> None:
        np.matmul(a[start:start + rows], b, out=out[start:start + rows])

    parallel_map(product, range(0, a.shape[0], rows), workers)
    return out


def submit(pool: ThreadPoolExecutor, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future:
    """``pool.submit(fn, *args, **kwargs)`` with Ctrl-C and SIGTERM held back until it returns.

    Submitting may start a thread, and the pool registers a thread for its shutdown at exit
    only once the start returns: an interrupt while the start waits would leave a thread
    that no shutdown wakes, waiting for work, and the process could never exit."""
    with signals_held():
        return pool.submit(fn, *args, **kwargs)


_END = object()


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """The items of ``items``, each next one computed on a worker thread while the caller
    works on the current one (onnxruntime runs and numpy products release the GIL, and
    each leaves a core idle part of the time that the other can fill).

    Closing it early (a failed run) does not wait for the item being computed: a generator
    left open is closed by the garbage collector, which may run inside threading's own
    locks (a thread starting), where joining a thread deadlocks. Callers close it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-eprune-prefetch")
    try:
        ahead = submit(pool, next, items, _END)
        while True:
            item = ahead.result()
            if item is _END:
                return
            ahead = submit(pool, next, items, _END)
            yield item
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def closing_all(*iterators: object) -> Iterator[None]:
    """Close every generator among ``iterators`` when the block ends, also on an error: a
    :func:`prefetched` one then stops now, not when the garbage collector gets to it."""
    try:
        yield
    finally:
        for it in iterators:
            close = getattr(it, "close", None)
            if close is not None:
                close()
