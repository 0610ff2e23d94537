"""The thread helpers of onnx_eprune.parallel: order, errors, nesting, thread reuse."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from onnx_eprune.parallel import matmul_rows, parallel_map, prefetched


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_results_come_in_item_order(workers):
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 2e-3, 40)

    def fn(i):
        time.sleep(delays[i])  # items finish out of order
        return i * i

    assert parallel_map(fn, range(40), workers) == [i * i for i in range(40)]


def test_every_item_runs_and_the_first_failure_in_order_propagates():
    ran = []

    def fn(i):
        time.sleep(1e-3 * (10 - i))  # the later failure happens first in time
        ran.append(i)
        if i in (3, 7):
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 3"):
        parallel_map(fn, range(10), 3)
    assert sorted(ran) == list(range(10))


def test_nested_calls_finish():
    def leaf(i):
        return i + 1

    def middle(i):
        return sum(parallel_map(leaf, range(i, i + 6), 4))

    def top(i):
        return sum(parallel_map(middle, range(i, i + 5), 4))

    expected = [sum(sum(range(k + 1, k + 7)) for k in range(i, i + 5)) for i in range(8)]
    done = {}
    runner = threading.Thread(target=lambda: done.update(result=[parallel_map(top, range(8), 4) for _ in range(20)]))
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "nested parallel_map calls did not finish"
    assert done["result"] == [expected] * 20


def test_helper_threads_are_kept_for_the_next_calls():
    helpers = set()

    def fn(i):
        time.sleep(1e-3)
        if threading.current_thread() is not threading.main_thread():
            helpers.add(threading.current_thread())
        return i

    for _ in range(50):
        assert parallel_map(fn, range(6), 3) == list(range(6))
    # the helpers are threads of one bounded pool that outlive the calls (a pool per call
    # would have started and ended 100 threads)
    assert helpers and all(t.is_alive() for t in helpers)
    assert len(helpers) <= 64


def test_an_interrupt_in_the_caller_stops_the_helpers():
    main = threading.current_thread()
    ran = []

    def fn(i):
        time.sleep(2e-3)
        ran.append(i)
        if threading.current_thread() is main and len(ran) > 4:
            raise KeyboardInterrupt
        return i

    with pytest.raises(KeyboardInterrupt):
        parallel_map(fn, range(200), 3)
    time.sleep(0.05)   # the helpers finish the item they hold, then take no more
    assert len(ran) < 50


def test_matmul_rows_matches_one_product_for_any_worker_count():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((1100, 70)).astype(np.float32), rng.standard_normal((70, 30)).astype(np.float32)
    one = matmul_rows(a, b, 1, rows=256)
    np.testing.assert_allclose(one, a @ b, rtol=1e-5, atol=1e-5)
    for workers in (2, 3):
        assert np.array_equal(matmul_rows(a, b, workers, rows=256), one)


def test_closing_a_prefetched_generator_does_not_wait_for_its_worker():
    """A prefetched generator closed while its worker computes the next item returns at once:
    the garbage collector may close it inside threading's own locks, where a join deadlocks."""
    release = threading.Event()

    def items():
        yield 1
        release.wait(30)  # the next item, still being computed when the consumer stops
        yield 2
    gen = prefetched(items())
    assert next(gen) == 1
    closer = threading.Thread(target=gen.close)
    closer.start()
    closer.join(10)
    waited = closer.is_alive()
    release.set()
    closer.join()
    assert not waited
