"""Concurrent use: the Python API on several threads, several command-line processes on
one output or one statistics file, and input files that another writer replaces mid-run.

What a user running jobs side by side may expect (README: "Outputs are byte-identical
whatever the thread count", "Every file is written to a temporary file and renamed into
place", the output "always" a valid model, reports that tell the truth):

- ``prune`` / ``calibrate`` / ``inspect`` / ``evaluate`` / ``sweep`` called from several
  threads at once, on one shared ``ModelProto`` or on different ones, give what each gives
  alone (byte-identical models, equal statistics and figures) and leave the shared objects
  (the model, a statistics bundle) as they were;
- process-wide state is not corrupted by overlapping runs: the BLAS thread count that a run
  pins to 1 (``Pruner.run``'s threadpoolctl limit) is back to the caller's when all runs
  are over and stays pinned while any run is working; one thread's ``sweep`` does not
  swallow the log records of another thread's ``prune``;
- two ``onnx-eprune`` processes writing the same ``-o`` (or ``--stats-out``) leave one
  complete, valid file equal to one of the runs' results and no temporary file; two
  processes reading one statistics file both succeed, with the same model, and leave it as
  it was;
- an input replaced while a run is working (by a rename, or rewritten in place as
  ``numpy.save`` / ``onnx.save`` do) gives a result consistent with one version of it: a
  model equal to what that version gives, a report measured on it, and never a crash.

"Another process" replacing a file mid-run is simulated in-process by a ``Progress`` whose
``task`` (called at the start of each phase of a run: calibrate, rank, layer k/n) rewrites
the file, which makes the timing deterministic; overlapping runs are ordered the same way
(a run waits inside its first phase until the test lets it go on).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import threadpoolctl

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, depthwise, random_input, residual
from onnx_eprune import parallel
from onnx_eprune.calibrate.bundle import StatsBundle
from onnx_eprune.cli import main
from onnx_eprune.progress import Progress

evaluate_module = importlib.import_module("onnx_eprune.evaluate")  # the module, not the function

TESTS = Path(__file__).resolve().parent
TIMEOUT = 60  # seconds any thread or process may take before the test calls it hung

# -- helpers -------------------------------------------------------------------------------------


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def _set_blas(threads: int) -> None:
    """Set BLAS's thread count from a thread of its own: with the OpenBLAS that numpy and
    scipy bundle, after a count is set from the main thread, threadpoolctl no longer sees
    the limits that other threads set (these tests could not see a worker's run pin BLAS)."""
    t = threading.Thread(target=threadpoolctl.threadpool_limits, kwargs={"limits": threads, "user_api": "blas"})
    t.start()
    t.join()


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _concurrently(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call on its own thread, all released at once; their results in order (an
    exception one of them raised is raised here)."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 (re-raised by the test)
            errors[i] = exc

    threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}") for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), f"{t.name} hung"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


class Hook(Progress):
    """A silent progress whose ``task`` calls ``action(n, label)`` at the start of the n-th
    phase of a run (1-based), before the phase begins."""

    def __init__(self, action: Callable[[int, str], None]):
        super().__init__(enabled=False)
        self.action, self.calls, self.labels = action, 0, []

    def task(self, label: str, total: int):
        self.calls += 1
        self.labels.append(label)
        self.action(self.calls, label)
        return super().task(label, total)


def _gate(entered: threading.Event, release: threading.Event, at: int = 1) -> Hook:
    """A progress that, at phase ``at``, says so and waits until ``release`` is set."""
    def action(n: int, label: str) -> None:
        if n == at:
            entered.set()
            assert release.wait(TIMEOUT), "never released"
    return Hook(action)


def _started(target: Callable[[], object], name: str) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def body() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 (re-raised by _finished)
            box["error"] = exc

    t = threading.Thread(target=body, name=name)
    t.start()
    return t, box


def _finished(t: threading.Thread, box: dict):
    t.join(TIMEOUT)
    assert not t.is_alive(), f"{t.name} hung"
    if "error" in box:
        raise box["error"]
    return box["result"]


# -- shared fixtures -----------------------------------------------------------------------------

KW = {"method": "l1", "device": "cpu"}  # quick and exact: the tests are about concurrency, not selection


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    return conv_bn_relu_pool_flatten_gemm(True)


@pytest.fixture(scope="module")
def data64() -> np.ndarray:
    return random_input(64, seed=1)


@pytest.fixture(scope="module")
def reference(cnn, data64) -> bytes:
    """The single-threaded result every concurrent run of the same call must equal (run on a
    thread of its own: a BLAS count set from the main thread hides, from threadpoolctl, the
    counts that other threads set; see _set_blas)."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(model=onnx_eprune.prune(cnn, data64, sparsity=0.5,
                                                                                 **KW).model))
    worker.start()
    worker.join()
    return _bytes(box["model"])


@pytest.fixture
def blas_restored():
    """Puts the BLAS thread count back after a test that may leave it changed."""
    if not _blas_threads():
        pytest.skip("no BLAS whose threads threadpoolctl controls")
    before = max(_blas_threads())
    yield
    _set_blas(before)


# -- the Python API on several threads --------------------------------------------------------------


def test_one_model_object_pruned_on_four_threads_gives_the_single_threaded_bytes(cnn, data64, reference):
    before = _bytes(cnn)
    results = _concurrently([lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, **KW) for _ in range(4)])
    for r in results:
        assert _bytes(r.model) == reference
        onnx.checker.check_model(r.model, full_check=True)
    assert _bytes(cnn) == before  # the shared input is never modified


def test_entropic_sequential_runs_on_threads_equal_their_single_threaded_results(data64):
    """The default method and mode (threads of the solver pool shared by both runs)."""
    models = [residual(), depthwise()]
    alone = [_bytes(onnx_eprune.prune(m, data64, sparsity=0.4, device="cpu").model) for m in models]
    together = _concurrently([lambda m=m: onnx_eprune.prune(m, data64, sparsity=0.4, device="cpu") for m in models])
    assert [_bytes(r.model) for r in together] == alone


def test_different_models_methods_and_targets_on_threads(data64):
    jobs = [(residual(), {"method": "thinet", "flops_reduction": 0.3, "mode": "oneshot"}),
            (depthwise(), {"method": "lasso", "keep_ratio": 0.5}),
            (conv_bn_relu_pool_flatten_gemm(False), {"method": "random", "sparsity": 0.6, "seed": 3}),
            (conv_bn_relu_pool_flatten_gemm(True, widths=(8, 8, 16)), {"method": "entropic", "sparsity": 0.3})]
    alone = [onnx_eprune.prune(m, data64, device="cpu", **kw) for m, kw in jobs]
    together = _concurrently([lambda m=m, kw=kw: onnx_eprune.prune(m, data64, device="cpu", **kw) for m, kw in jobs])
    for a, b in zip(alone, together):
        assert _bytes(b.model) == _bytes(a.model)
        assert b.report["params"] == a.report["params"] and b.report["macs"] == a.report["macs"]
        assert b.report["fidelity_on_calibration"] == a.report["fidelity_on_calibration"]


def test_calibrate_on_threads_gives_equal_statistics(cnn, data64):
    alone = onnx_eprune.calibrate(cnn, data64, device="cpu")
    together = _concurrently([lambda: onnx_eprune.calibrate(cnn, data64, device="cpu") for _ in range(3)])
    for bundle in together:
        assert (bundle.model, bundle.samples, sorted(bundle.consumers)) == \
            (alone.model, alone.samples, sorted(alone.consumers))
        for c, st in alone.consumers.items():
            for key, value in st.to_arrays("").items():
                np.testing.assert_array_equal(bundle.consumers[c].to_arrays("")[key], value, err_msg=f"{c} {key}")


def test_one_stats_bundle_shared_by_threads_stays_as_it_was(cnn, data64, tmp_path):
    bundle = onnx_eprune.calibrate(cnn, data64, device="cpu")
    before = {c: {k: v.copy() for k, v in st.to_arrays("").items()} for c, st in bundle.consumers.items()}
    alone = _bytes(onnx_eprune.prune(cnn, stats=[bundle], sparsity=0.5, **KW).model)
    together = _concurrently([lambda: onnx_eprune.prune(cnn, stats=[bundle], sparsity=0.5, **KW) for _ in range(3)])
    assert all(_bytes(r.model) == alone for r in together)
    for c, arrays in before.items():  # not normalised, not merged into: it can still be saved
        for k, v in arrays.items():
            np.testing.assert_array_equal(bundle.consumers[c].to_arrays("")[k], v)
    bundle.save(tmp_path / "still.npz")
    assert StatsBundle.load(tmp_path / "still.npz").samples == 64


def test_inspect_on_threads_gives_equal_answers(cnn, data64):
    model = residual()
    alone = [onnx_eprune.inspect(model, data64), onnx_eprune.inspect(cnn, data64, exclude=["conv_*"])]
    calls = [lambda: onnx_eprune.inspect(model, data64), lambda: onnx_eprune.inspect(cnn, data64, exclude=["conv_*"])]
    together = _concurrently(calls * 3)
    for i, got in enumerate(together):
        assert got == alone[i % 2]


def test_evaluate_on_threads_gives_the_single_threaded_figures(cnn, data64, tmp_path):
    original, pruned = tmp_path / "original.onnx", tmp_path / "pruned.onnx"
    onnx.save(cnn, str(original))
    onnx_eprune.prune(cnn, data64, sparsity=0.5, **KW).save(pruned)
    x = random_input(32, seed=5)
    alone = onnx_eprune.evaluate(str(original), str(pruned), x, device="cpu")
    together = _concurrently([lambda: onnx_eprune.evaluate(str(original), str(pruned), x, device="cpu")
                              for _ in range(3)])
    for got in together:
        assert got["outputs"] == alone["outputs"]
        assert got["size"] == alone["size"]
        assert got["samples"] == alone["samples"] == 32


def test_all_four_functions_at_once_on_one_model(cnn, data64, reference, tmp_path):
    original, pruned = tmp_path / "original.onnx", tmp_path / "pruned.onnx"
    onnx.save(cnn, str(original))
    pruned.write_bytes(reference)
    alone_inspect = onnx_eprune.inspect(cnn, data64)
    alone_eval = onnx_eprune.evaluate(str(original), str(pruned), data64, device="cpu")
    alone_stats = onnx_eprune.calibrate(cnn, data64, device="cpu")
    got = _concurrently([lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, **KW),
                         lambda: onnx_eprune.calibrate(cnn, data64, device="cpu"),
                         lambda: onnx_eprune.inspect(cnn, data64),
                         lambda: onnx_eprune.evaluate(str(original), str(pruned), data64, device="cpu")])
    assert _bytes(got[0].model) == reference
    assert got[1].model == alone_stats.model and got[1].samples == alone_stats.samples
    assert got[2] == alone_inspect
    assert got[3]["outputs"] == alone_eval["outputs"]


def test_results_saved_from_threads_to_one_path_leave_one_whole_model(cnn, data64, tmp_path):
    results = [onnx_eprune.prune(cnn, data64, sparsity=s, **KW) for s in (0.3, 0.5, 0.7)]
    target = tmp_path / "out.onnx"
    target.write_bytes(b"an earlier result")
    _concurrently([lambda r=r: r.save(target) for r in results for _ in range(2)])
    written = target.read_bytes()
    assert written in {_bytes(r.model) for r in results}
    onnx.checker.check_model(onnx.load_from_string(written), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temporary file left


def test_runs_on_threads_spilling_to_scratch_files_share_nothing(cnn, data64, reference, tmp_path, monkeypatch):
    """Cached activations in scratch files (no memory budget), three runs at once in one
    process: each gets the reference bytes and no scratch folder is left behind."""
    from onnx_eprune.calibrate import engine

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", 0)
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    folders: set[str] = set()
    new_file = engine.CacheSpace.new_file

    def counted(space):
        path = new_file(space)
        folders.add(os.path.dirname(path))
        return path

    monkeypatch.setattr(engine.CacheSpace, "new_file", counted)
    results = _concurrently([lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, **KW) for _ in range(3)])
    assert len(folders) == 3  # one scratch folder per run
    assert all(_bytes(r.model) == reference for r in results)
    assert list(scratch.iterdir()) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_of_runs_on_threads_stay_on_their_own_streams(cnn, data64):
    streams = [_Terminal(), _Terminal()]
    models = [cnn, residual()]
    _concurrently([lambda i=i: onnx_eprune.prune(models[i], data64, sparsity=0.5, progress=Progress(stream=streams[i]),
                                                 **KW) for i in range(2)])
    for stream, layers in zip(streams, (3, 2)):  # cnn: three groups, residual: two
        text = stream.getvalue()
        assert set(re.findall(r"layer \d+/(\d+)", text)) == {str(layers)}  # no line of the other run
        assert f"layer {layers}/{layers}" in text
        assert text.endswith("\r\x1b[2K")  # every bar erased when its run ended


def test_each_threads_warnings_reach_the_log(caplog):
    """Three runs on 12 samples each warn that they are few, each on its own thread."""
    few = random_input(12, seed=4)
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        _concurrently([lambda m=m: onnx_eprune.prune(m, few, keep_ratio=0.5, **KW)
                       for m in (residual(), depthwise(), conv_bn_relu_pool_flatten_gemm(True))])
    warned = {r.threadName for r in caplog.records if "only 12 calibration samples" in r.getMessage()}
    assert warned == {"worker-0", "worker-1", "worker-2"}


def test_a_sweep_on_one_thread_does_not_swallow_another_threads_warnings(caplog, cnn):
    """A ``prune`` run on 12 samples warns that they are few, whatever another thread is
    doing: a ``sweep`` running meanwhile de-duplicates its own thread's lines only (once its
    filter on the process-wide logger dropped the prune's warning and info lines)."""
    few = random_input(12, seed=4)
    entered, release = threading.Event(), threading.Event()
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        sweeping = _started(lambda: onnx_eprune.sweep(cnn, few, [0.3, 0.5], progress=_gate(entered, release), **KW),
                            "sweeper")
        try:
            assert entered.wait(TIMEOUT)
            pruning = _started(lambda: onnx_eprune.prune(residual(), few, keep_ratio=0.5, **KW), "pruner")
            _finished(*pruning)
        finally:
            release.set()
        _finished(*sweeping)
    mine = [r.getMessage() for r in caplog.records if r.threadName == "pruner"]
    assert any("only 12 calibration samples" in m for m in mine), mine
    assert any("onnxruntime provider" in m for m in mine), mine


def test_blas_is_pinned_during_a_run_and_restored_after_one(cnn, data64, blas_restored):
    _set_blas(2)
    seen: list[list[int]] = []
    onnx_eprune.prune(cnn, data64, sparsity=0.5, progress=Hook(lambda n, label: seen.append(_blas_threads())), **KW)
    assert seen and all(set(s) == {1} for s in seen)
    assert set(_blas_threads()) == {2}


def test_overlapping_runs_leave_the_blas_thread_count_as_it_was(cnn, data64, blas_restored):
    """Once every run is over, BLAS has the thread count the program had set (2): the pin
    is lifted by the last run that leaves (once run B recorded A's 1 as "the original" and
    restored it, slowing every numpy product of the program for the rest of its life)."""
    _set_blas(2)
    entered_a, release_a, entered_b, release_b = (threading.Event() for _ in range(4))
    a = _started(lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, progress=_gate(entered_a, release_a), **KW),
                 "A")
    try:
        assert entered_a.wait(TIMEOUT)
        b = _started(lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, progress=_gate(entered_b, release_b),
                                               **KW), "B")
        assert entered_b.wait(TIMEOUT)
    finally:
        release_a.set()
    _finished(*a)
    release_b.set()
    _finished(*b)
    assert set(_blas_threads()) == {2}


def test_a_run_keeps_blas_pinned_while_an_overlapping_run_ends(cnn, data64, reference, blas_restored):
    """Every phase of a run works with BLAS on one thread (pipeline.py: "BLAS runs on one
    thread so that the output is the same bytes for any core count"), also when another
    run of the program ends meanwhile: the pin is held until the last run leaves (once
    run A's exit restored the caller's 2 threads under run B). What threadpoolctl reports
    to a thread is unreliable once the main thread has set a count (see _set_blas), so
    run B's phases check the pin's holder as well: parallel.blas_on_one_thread."""
    _set_blas(2)
    entered_a, release_a = threading.Event(), threading.Event()
    held_b: list[bool] = []
    a = _started(lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, progress=_gate(entered_a, release_a), **KW),
                 "A")
    entered_b, release_b = threading.Event(), threading.Event()

    def b_phase(n: int, label: str) -> None:
        if n == 1:
            entered_b.set()
            assert release_b.wait(TIMEOUT)
        held_b.append(parallel._blas_runs >= 1 and parallel._blas_limiter is not None)

    try:
        assert entered_a.wait(TIMEOUT)
        b = _started(lambda: onnx_eprune.prune(cnn, data64, sparsity=0.5, progress=Hook(b_phase), **KW), "B")
        assert entered_b.wait(TIMEOUT)
    finally:
        release_a.set()
    _finished(*a)
    release_b.set()
    result_b = _finished(*b)
    assert _bytes(result_b.model) == reference
    assert held_b and all(held_b), held_b
    assert not parallel._blas_runs  # and lifted once both ended


# -- inputs replaced while a run works -------------------------------------------------------------


def _replace_by_rename(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name("incoming-" + path.name)  # the same suffix: numpy.save would add one
    write(str(tmp))
    os.replace(tmp, path)


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_model_file_replaced_mid_run_gives_the_first_versions_result(cnn, data64, reference, tmp_path, how):
    path = tmp_path / "model.onnx"
    onnx.save(cnn, str(path))
    other = conv_bn_relu_pool_flatten_gemm(True, seed=9)

    def swap(n: int, label: str) -> None:
        if n == 2:
            if how == "rename":
                _replace_by_rename(path, lambda p: onnx.save(other, p))
            else:
                onnx.save(other, str(path))

    result = onnx_eprune.prune(str(path), data64, sparsity=0.5, progress=Hook(swap), **KW)
    assert _bytes(result.model) == reference
    assert onnx.load(str(path)) == other  # the run wrote nothing there


def test_calibration_file_renamed_over_mid_run_gives_the_first_versions_result(cnn, data64, reference, tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, data64)
    hook = Hook(lambda n, label: n == 2 and _replace_by_rename(path, lambda p: np.save(p, random_input(64, seed=7))))
    result = onnx_eprune.prune(cnn, str(path), sparsity=0.5, progress=hook, **KW)
    assert hook.calls >= 3
    assert _bytes(result.model) == reference


@pytest.fixture(scope="module")
def entropic_versions(cnn):
    """Two calibration sets and what the default entropic sequential run makes of each."""
    v1, v2 = random_input(64, seed=1), random_input(64, seed=7)
    return v1, v2, [onnx_eprune.prune(cnn, v, sparsity=0.5, device="cpu") for v in (v1, v2)]


def test_calibration_file_rewritten_in_place_mid_run_gives_one_versions_model(cnn, entropic_versions, tmp_path):
    """The model equals what one version of the calibration data gives (the one that was
    read): a calibration file up to data.IN_MEMORY_BYTES is read once. Once ``numpy.save``
    over the memory-mapped file while the run ranked its groups yielded a model equal to
    neither version."""
    v1, v2, (r1, r2) = entropic_versions
    path = tmp_path / "calib.npy"
    np.save(path, v1)
    result = onnx_eprune.prune(cnn, str(path), sparsity=0.5, device="cpu",
                               progress=Hook(lambda n, label: n == 2 and np.save(path, v2)))
    assert _bytes(result.model) in (_bytes(r1.model), _bytes(r2.model))


def test_calibration_file_rewritten_late_keeps_the_report_true_to_the_model(cnn, entropic_versions, tmp_path):
    """A report whose fidelity figures are those of the samples the model was pruned on
    (once the validation read the memory-mapped file again and reported the fidelity on
    the second version's samples)."""
    v1, v2, (r1, _) = entropic_versions
    path = tmp_path / "calib.npy"
    np.save(path, v1)
    result = onnx_eprune.prune(cnn, str(path), sparsity=0.5, device="cpu",
                               progress=Hook(lambda n, label: label == "layer 2/3" and np.save(path, v2)))
    assert _bytes(result.model) == _bytes(r1.model)
    assert result.report["fidelity_on_calibration"] == r1.report["fidelity_on_calibration"]


def test_evaluate_reports_the_size_of_the_model_it_measured(cnn, data64, tmp_path):
    """``size.pruned.bytes`` is the size of the model whose outputs, parameters and MACs the
    same report gives, read when the model is loaded (once a prune writing a new model to
    the same path while ``evaluate`` timed its runs lent its file's bytes to the report)."""
    original, pruned = tmp_path / "original.onnx", tmp_path / "pruned.onnx"
    onnx.save(cnn, str(original))
    half = onnx_eprune.prune(cnn, data64, keep_ratio=0.5, **KW).model
    quarter = onnx_eprune.prune(cnn, data64, keep_ratio=0.25, **KW).model
    onnx.save(half, str(pruned))
    measured = pruned.stat().st_size
    alone = onnx_eprune.evaluate(str(original), str(pruned), data64, device="cpu")
    real = evaluate_module.latency_ms
    calls = []

    def timed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            _replace_by_rename(pruned, lambda p: onnx.save(quarter, p))
        return real(*args, **kwargs)

    evaluate_module.latency_ms = timed
    try:
        got = onnx_eprune.evaluate(str(original), str(pruned), data64, device="cpu")
    finally:
        evaluate_module.latency_ms = real
    assert calls and pruned.stat().st_size != measured  # the file did change mid-run
    assert got["outputs"] == alone["outputs"] and got["size"]["pruned"]["params"] == alone["size"]["pruned"]["params"]
    assert got["size"]["pruned"]["bytes"] == measured


# -- several command-line processes ------------------------------------------------------------------

def _cli(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "onnx_eprune", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _all_done(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        out.append((p.returncode, err))
    return out


@pytest.fixture
def cli_files(tmp_path, cnn, data64):
    onnx.save(cnn, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", data64)
    return tmp_path


def _leftovers(folder: Path, expected: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in expected)


def test_three_processes_writing_one_output_leave_one_whole_model(cli_files, capsys):
    folder = cli_files
    out = folder / "out" / "pruned.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an earlier result that one of the runs replaces")
    targets = ("0.3", "0.5", "0.7")
    expected = set()
    for s in targets:  # each run's own result, in-process
        ref = folder / f"ref_{s}.onnx"
        assert main(["prune", str(folder / "model.onnx"), "-o", str(ref), "--calib", str(folder / "calib.npy"),
                     "--sparsity", s, "--method", "l1", "--device", "cpu", "-q"]) == 0
        expected.add(ref.read_bytes())
    capsys.readouterr()
    procs = [_cli("prune", str(folder / "model.onnx"), "-o", str(out), "--calib", str(folder / "calib.npy"),
                  "--sparsity", s, "--method", "l1", "--device", "cpu", "-q") for s in targets]
    for status, err in _all_done(procs):
        assert status == 0 and err == "", err
    assert out.read_bytes() in expected
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert _leftovers(out.parent, {"pruned.onnx"}) == []
    assert _leftovers(folder, {"model.onnx", "calib.npy", "out", *(f"ref_{s}.onnx" for s in targets)}) == []


def test_processes_sharing_one_statistics_file(cli_files, cnn):
    """Two ``calibrate`` processes write one ``--stats-out`` at once, then two ``prune``
    processes read it at once: a loadable file, two equal models, the file untouched."""
    folder = cli_files
    stats = folder / "stats.npz"
    procs = [_cli("calibrate", str(folder / "model.onnx"), "--calib", str(folder / "calib.npy"),
                  "--stats-out", str(stats), "--device", "cpu", "-q") for _ in range(2)]
    for status, err in _all_done(procs):
        assert status == 0 and err == "", err
    assert _leftovers(folder, {"model.onnx", "calib.npy", "stats.npz"}) == []
    bundle = StatsBundle.load(stats)
    assert bundle.samples == 64
    before, mtime = stats.read_bytes(), stats.stat().st_mtime_ns
    alone = _bytes(onnx_eprune.prune(cnn, stats=[bundle], sparsity=0.5, **KW).model)
    procs = [_cli("prune", str(folder / "model.onnx"), "-o", str(folder / f"p{i}.onnx"), "--stats", str(stats),
                  "--sparsity", "0.5", "--method", "l1", "--device", "cpu", "-q") for i in range(2)]
    for status, err in _all_done(procs):
        assert status == 0 and err == "", err
    assert (folder / "p0.onnx").read_bytes() == (folder / "p1.onnx").read_bytes() == alone
    assert stats.read_bytes() == before and stats.stat().st_mtime_ns == mtime


def test_a_process_reads_a_model_that_another_process_is_writing(cli_files, cnn, data64, capsys):
    """Process A writes ``stage.onnx`` (a second pruning step's input) while process B prunes
    ``stage.onnx`` further: B sees the old or the new file whole, never a torn one, and
    its result is what that version gives."""
    folder = cli_files
    stage = folder / "stage.onnx"
    old = onnx_eprune.prune(cnn, data64, keep_ratio=0.75, **KW)
    old.save(stage)
    new = onnx_eprune.prune(cnn, data64, keep_ratio=0.5, **KW)
    expected = {_bytes(onnx_eprune.prune(m.model, data64, keep_ratio=0.5, **KW).model) for m in (old, new)}
    assert len(expected) == 2
    a = _cli("prune", str(folder / "model.onnx"), "-o", str(stage), "--calib", str(folder / "calib.npy"),
             "--keep-ratio", "0.5", "--method", "l1", "--device", "cpu", "-q")
    b = _cli("prune", str(stage), "-o", str(folder / "final.onnx"), "--calib", str(folder / "calib.npy"),
             "--keep-ratio", "0.5", "--method", "l1", "--device", "cpu", "-q")
    for status, err in _all_done([a, b]):
        assert status == 0 and err == "", err
    assert stage.read_bytes() == _bytes(new.model)
    assert (folder / "final.onnx").read_bytes() in expected
    assert _leftovers(folder, {"model.onnx", "calib.npy", "stage.onnx", "final.onnx"}) == []


def test_calibration_file_truncated_mid_run_is_an_error_not_a_crash(cli_files):
    """A run whose calibration file is rewritten shorter while it works either finishes on
    the samples it read or fails with exit status 1 and one ``onnx-eprune: error:`` line,
    leaving no output (once the process died of SIGBUS, reading pages of the memory-mapped
    file past its new end)."""
    folder = cli_files
    script = (
        "import sys, numpy as np\n"
        "from onnx_eprune.progress import Progress\n"
        "from onnx_eprune.cli import main\n"
        "task, calls = Progress.task, []\n"
        "def hooked(self, label, total):\n"
        "    calls.append(label)\n"
        "    if len(calls) == 2:\n"
        f"        np.save({str(folder / 'calib.npy')!r}, np.load({str(folder / 'calib.npy')!r})[:8])\n"
        "    return task(self, label, total)\n"
        "Progress.task = hooked\n"
        f"sys.exit(main(['prune', {str(folder / 'model.onnx')!r}, '-o', {str(folder / 'out.onnx')!r}, '--calib', "
        f"{str(folder / 'calib.npy')!r}, '--sparsity', '0.5', '--device', 'cpu', '-q']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr)
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("onnx-eprune: error: ") and "Traceback" not in proc.stderr
        assert not (folder / "out.onnx").exists()
    else:
        onnx.checker.check_model(onnx.load(str(folder / "out.onnx")), full_check=True)
