"""Independent work spread over threads.

The solvers call LAPACK on one BLAS thread each (so that their results do not depend on the
thread count, see ``Pruner.run``); LAPACK releases the GIL, so independent groups solved on
parallel Python threads use the cores that a single solver leaves idle, and each group's
result is the same bytes as when solved alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def parallel_map(fn: Callable[[T], object], items: Iterable[T], workers: int) -> list:
    """``[fn(i) for i in items]`` on up to ``workers`` threads, results in ``items`` order.

    The first exception raised by ``fn`` propagates (after the running calls finish)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


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


_END = object()


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """The items of ``items``, each next one computed on a worker thread while the caller
    works on the current one (onnxruntime runs and numpy products release the GIL, and
    each leaves a core idle part of the time that the other can fill)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(next, items, _END)
        while True:
            item = ahead.result()
            if item is _END:
                return
            ahead = pool.submit(next, items, _END)
            yield item
