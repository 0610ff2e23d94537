"""Independent solver work spread over threads.

The solvers call LAPACK on one BLAS thread each (so that their results do not depend on the
thread count, see ``Pruner.run``); LAPACK releases the GIL, so independent groups solved on
parallel Python threads use the cores that a single solver leaves idle, and each group's
result is the same bytes as when solved alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def parallel_map(fn: Callable[[T], object], items: Iterable[T], workers: int) -> list:
    """``[fn(i) for i in items]`` on up to ``workers`` threads, results in ``items`` order.

    The first exception raised by ``fn`` propagates (after the running calls finish)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
