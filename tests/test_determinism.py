"""Determinism and invariances of ``prune`` / ``calibrate`` / the command line.

The code and the README promise (pipeline.py ``Pruner.run``, parallel.py, calibrate/stats.py,
calibrate/bundle.py, README "How it works" and "Known limits"):

- the same bytes for any thread count (README: "Outputs are byte-identical whatever the
  thread count"): checked in two processes with different ``OMP_NUM_THREADS`` /
  ``OPENBLAS_NUM_THREADS`` (and hash seeds), and in one process with the solver and
  statistics workers forced to 5 on a 2-core machine;
- statistics that do not depend on how the samples are batched or ordered, up to float
  rounding (stats.py: "Batches are merged with Chan's parallel update ... up to rounding";
  conv positions and the images that measure sensitivities are chosen by each sample's
  content): the same kept channels and weights within 1e-5 for ``--batch-size`` 1 / 7 / 64
  and for samples in another order; bytes are not promised there;
- cached activations in memory, in scratch files or not cached at all (engine.py
  ``CacheSpace``) only change where the data lives: the same bytes;
- the same calibration values in any form (``--samples N`` or the data sliced first;
  float64, integer, Fortran-ordered, ``.npz``; lists, generators, data readers) give the
  same bytes, and runs leave no state behind (twice in a process, after other runs, after a
  failed run);
- equivalent spellings of a model (Constant nodes or initializers, shape-inferred
  ``value_info``, another initializer order, another valid node order, external data)
  prune alike.

``tests/test_parallel.py`` (the thread helpers), ``test_scratch.py`` (scratch files),
``test_stats_merge.py`` (shards), ``test_api_contract.py`` (array layouts with the l1 method)
and ``test_e2e.py`` (LeNet-5 at 1 and 2 threads) are not repeated here: this file uses the
default entropic sequential run and models whose wide convolution (64 channels x 3x3 = 576
features, above the solver's 512) takes the reduced first pass and the lean stages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_eprune
from models import (ALL_BUILDERS, CLASSES, IN_CHANNELS, INPUT, OUTPUT, _Builder, conv_bn_relu_pool_flatten_gemm,
                    random_input, run_model)
from onnx_eprune import pipeline
from onnx_eprune.calibrate import engine
from onnx_eprune.graph import model_io
from onnx_eprune.cli import main

# -- models, data and comparisons -------------------------------------------------------------

def _wide() -> onnx.ModelProto:
    """Conv(3->64) -> Relu -> MaxPool -> Conv(64->16) -> Relu -> MaxPool -> Flatten -> Gemm
    -> Relu -> Gemm: conv_4 reads 576 features, so the sequential mode reduces its taps in
    the first pass (bases from the first batch) and in the stage of the 64-channel group."""
    return conv_bn_relu_pool_flatten_gemm(True, widths=(64, 16, 16))


def _two_branch(swap: bool = False, seed: int = 0) -> onnx.ModelProto:
    """stem Conv(3->8) -> Relu, read by two branches conv_a (8->8) and conv_b (8->12), each
    -> Relu -> Concat -> conv_cat (20->12) -> Relu -> GAP -> Gemm. ``swap``: the nodes of
    conv_b's branch come before conv_a's (another valid topological order of the same graph,
    the same node names and weights)."""
    b = _Builder(seed)
    s = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="stem")], name="stem_relu")
    start = len(b.nodes)
    a = b.node("Relu", [b.conv(s, 8, 8, name="conv_a")], name="relu_a")
    mid = len(b.nodes)
    c = b.node("Relu", [b.conv(s, 8, 12, name="conv_b")], name="relu_b")
    if swap:
        b.nodes[start:] = b.nodes[mid:] + b.nodes[start:mid]
    h = b.node("Concat", [a, c], name="concat", axis=1)
    h = b.node("Relu", [b.conv(h, 20, 12, name="conv_cat")], name="relu_cat")
    return b.build(b.gemm(b.gap_flatten(h), 12, CLASSES, name=OUTPUT))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return random_input(48, seed=3)


@pytest.fixture(scope="module")
def wide_reference(x) -> onnx_eprune.PruneResult:
    """The default run (entropic, sequential) of the wide model at sparsity 0.5."""
    return onnx_eprune.prune(_wide(), x, sparsity=0.5, device="cpu")


def _bytes(result: onnx_eprune.PruneResult) -> bytes:
    return result.model.SerializeToString(deterministic=True)


def _kept(result: onnx_eprune.PruneResult) -> dict:
    """Kept channel indices per group, keyed by the group's producer names (group ids and
    node indices may differ between equivalent spellings of a model)."""
    return {tuple(g["producers"]): g.get("kept_channels") for g in result.report["groups"]}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_close(a: onnx_eprune.PruneResult, b: onnx_eprune.PruneResult, rtol: float = 1e-5) -> None:
    """Same initializers (names, shapes), values within ``rtol`` of each tensor's largest."""
    wa, wb = _weights(a.model), _weights(b.model)
    assert wa.keys() == wb.keys()
    for name, va in wa.items():
        vb = wb[name]
        assert va.shape == vb.shape, name
        if va.dtype.kind == "f":
            scale = max(1.0, float(np.abs(va).max(initial=0.0)))
            assert float(np.abs(va.astype(np.float64) - vb).max(initial=0.0)) <= rtol * scale, name
        else:
            assert np.array_equal(va, vb), name


def _fidelity(result: onnx_eprune.PruneResult) -> float:
    return result.report["fidelity_on_calibration"]["outputs"]["y"]["relative_error"]


def _report(result_or_path) -> dict:
    """A report without what legitimately differs between runs (timings, the output path)."""
    report = dict(result_or_path.report) if hasattr(result_or_path, "report") else \
        json.loads(Path(result_or_path).read_text())
    report.pop("seconds", None)
    report.pop("output", None)
    return report


def _moments(bundle) -> dict[str, np.ndarray]:
    return {f"{c}.{k}": np.asarray(v) for c, st in sorted(bundle.consumers.items())
            for k, v in st.to_arrays("").items()}


def _prune_argv(model: Path, out: Path, calib: Path, *extra) -> list[str]:
    return [str(a) for a in ("prune", model, "-o", out, "--calib", calib, "--sparsity", "0.5", "--device", "cpu",
                             "-q", *extra)]


@pytest.fixture
def files(tmp_path, x) -> Path:
    onnx.save(_wide(), tmp_path / "wide.onnx")
    np.save(tmp_path / "calib.npy", x)
    return tmp_path


# -- thread counts ---------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from onnx_eprune.cli import main
    folder = sys.argv[1]
    assert main(["prune", {decoder!r}, "-o", folder + "/decoder.pruned.onnx", "--calib",
                 {calib!r}, "--sparsity", "0.4", "--device", "cpu", "-q", "--report", folder + "/decoder.json"]) == 0
    assert main(["prune", {wide!r}, "-o", folder + "/wide.pruned.onnx", "--calib", {calib!r},
                 "--keep-ratio", "0.5", "--device", "cpu", "-q", "--report", folder + "/wide.json"]) == 0
    assert main(["calibrate", {wide!r}, "--calib", {calib!r}, "--stats-out", folder + "/wide.npz",
                 "--batch-size", "5", "--device", "cpu", "-q"]) == 0
""")


def test_cli_outputs_are_the_same_bytes_for_1_and_3_threads_and_any_hash_seed(files):
    """Two processes, one with OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1 and PYTHONHASHSEED=1,
    one with 3 threads (more than this machine's cores, on onnxruntime's side) and
    PYTHONHASHSEED=2: the pruned models (a decoder with Concat, SE and ConvTranspose,
    sequential; the wide model's lean stages), the calibrate statistics file and the
    reports (timings and paths aside) are the same bytes."""
    onnx.save(ALL_BUILDERS["decoder"](), files / "decoder.onnx")
    script = _CHILD.format(calib=str(files / "calib.npy"), wide=str(files / "wide.onnx"),
                           decoder=str(files / "decoder.onnx"))
    runs = []
    for threads, hash_seed in (("1", "1"), ("3", "2")):
        folder = files / f"t{threads}"
        folder.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(folder)
    one, three = runs
    for name in ("decoder.pruned.onnx", "wide.pruned.onnx", "wide.npz"):
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
    for name in ("decoder.json", "wide.json"):
        assert _report(one / name) == _report(three / name), name


@pytest.mark.parametrize("case", ["decoder-sequential", "wide-sparsity", "wide-keep-ratio-oneshot"])
def test_worker_count_does_not_change_the_bytes(x, monkeypatch, case):
    """The solvers and statistics run on as many Python threads as BLAS allows; forced to 5
    (on any machine) with onnxruntime at 4 intra-op threads, a run gives the bytes of a
    run on 1 worker and 1 onnxruntime thread, and calibrate() the same moments."""
    model = {"decoder-sequential": ALL_BUILDERS["decoder"], "wide-sparsity": _wide,
             "wide-keep-ratio-oneshot": _wide}[case]()
    options = {"decoder-sequential": {"sparsity": 0.4}, "wide-sparsity": {"sparsity": 0.5},
               "wide-keep-ratio-oneshot": {"keep_ratio": 0.5, "mode": "oneshot"}}[case]
    real_init = pipeline.Pruner.__init__
    seen = []

    def run(workers: int, onnxruntime_threads: str):
        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            self._blas_threads = workers
            seen.append(workers)

        monkeypatch.setattr(pipeline.Pruner, "__init__", init)
        monkeypatch.setenv("OMP_NUM_THREADS", onnxruntime_threads)
        result = onnx_eprune.prune(model, x, device="cpu", **options)
        bundle = onnx_eprune.calibrate(model, x, device="cpu", batch_size=7)
        return _bytes(result), _report(result), {k: v.tobytes() for k, v in _moments(bundle).items()}

    single = run(1, "1")
    many = run(5, "4")
    assert seen == [1, 1, 5, 5]
    assert many[0] == single[0]
    assert many[1] == single[1]
    assert many[2] == single[2]


def test_an_openmp_thread_list_in_omp_num_threads_is_understood(files, capsys, monkeypatch):
    """OpenMP accepts a comma-separated list of thread counts per nesting level
    (OMP_NUM_THREADS=2,1); the README tells users to set the variable to share a machine.
    Expected: the run works and gives the bytes of OMP_NUM_THREADS=2. Was: exit 1, 'onnx-eprune:
    internal error: ValueError: invalid literal for int() with base 10: '2,1''."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(_prune_argv(files / "wide.onnx", files / "two.onnx", files / "calib.npy")) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    code = main(_prune_argv(files / "wide.onnx", files / "list.onnx", files / "calib.npy"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert (files / "list.onnx").read_bytes() == (files / "two.onnx").read_bytes()


def test_a_malformed_omp_num_threads_is_not_an_internal_error(files, capsys, monkeypatch):
    """Expected: a value that is no thread count is ignored (as OpenBLAS and OpenMP runtimes do)
    or refused as a usage error naming OMP_NUM_THREADS (exit 2), never an internal error. Was:
    exit 1, 'internal error: ValueError: invalid literal for int()'."""
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    code = main(_prune_argv(files / "wide.onnx", files / "out.onnx", files / "calib.npy"))
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert code == 0 or (code == 2 and "OMP_NUM_THREADS" in err and len(err.strip().splitlines()) == 1)


# -- batching and sample order -----------------------------------------------------------------

@pytest.mark.parametrize("batch_size", ["1", "7"])
def test_cli_batch_size_keeps_the_channels_and_the_weights_within_rounding(files, capsys, batch_size):
    """--batch-size is how many samples onnxruntime runs at once: with 1 or 7 (which does
    not divide 48) the run keeps the very channels of --batch-size 64 (the wide layer's
    bases then come from a first batch of one or seven images), weights and reported
    fidelity within float rounding, the same sample count."""
    reports = {}
    for size in ("64", batch_size):
        out = files / f"bs{size}.onnx"
        assert main(_prune_argv(files / "wide.onnx", out, files / "calib.npy", "--batch-size", size,
                                "--report", files / f"bs{size}.json")) == 0
        reports[size] = json.loads((files / f"bs{size}.json").read_text())
    ref, got = reports["64"], reports[batch_size]
    assert [g.get("kept_channels") for g in got["groups"]] == [g.get("kept_channels") for g in ref["groups"]]
    assert got["samples"] == ref["samples"] == 48
    assert got["params"] == ref["params"] and got["macs"] == ref["macs"]
    err_ref = ref["fidelity_on_calibration"]["outputs"]["y"]["relative_error"]
    err_got = got["fidelity_on_calibration"]["outputs"]["y"]["relative_error"]
    assert err_got == pytest.approx(err_ref, rel=1e-4)

    class _R:
        def __init__(self, path):
            self.model = onnx.load(str(path))
    _assert_close(_R(files / "bs64.onnx"), _R(files / f"bs{batch_size}.onnx"))


@pytest.mark.parametrize("batch_size", [1, 7])
def test_calibrate_moments_do_not_depend_on_the_batching(x, batch_size):
    """calibrate() with 1 or 7 samples per run: the same sample count, the same images kept
    (probes and sensitivity images, bit for bit), the moments within float rounding."""
    model = _wide()
    ref = onnx_eprune.calibrate(model, x, device="cpu")
    got = onnx_eprune.calibrate(model, x, device="cpu", batch_size=batch_size)
    assert (got.samples, got.seed, got.positions, got.model) == (ref.samples, ref.seed, ref.positions, ref.model)
    for name in ref.probe:
        assert np.array_equal(got.probe[name], ref.probe[name])
        assert np.array_equal(got.gain_images[name], ref.gain_images[name])
    a, b = _moments(ref), _moments(got)
    assert a.keys() == b.keys()
    for key, value in a.items():
        scale = max(1.0, float(np.abs(value).max()))
        assert np.abs(value - b[key]).max() <= 1e-5 * scale, key


@pytest.mark.parametrize("options", [{"sparsity": 0.5}, {"sparsity": 0.5, "mode": "oneshot"}, {"keep_ratio": 0.5}],
                         ids=["sequential", "oneshot", "keep-ratio"])
def test_samples_in_another_order_keep_the_same_channels(x, options):
    """The statistics are sums over samples, conv positions are drawn from each sample's
    content and the sensitivity images are taken in key order: the same samples shuffled
    keep the very channels, with weights and fidelity within float rounding."""
    perm = np.random.default_rng(5).permutation(len(x))
    ref = onnx_eprune.prune(_wide(), x, device="cpu", **options)
    got = onnx_eprune.prune(_wide(), x[perm], device="cpu", **options)
    assert _kept(got) == _kept(ref)
    _assert_close(ref, got)
    assert _fidelity(got) == pytest.approx(_fidelity(ref), rel=1e-4)


def test_calibrate_on_shuffled_samples_keeps_the_same_sensitivity_images(x):
    """calibrate() on the samples in another order: the images kept for the sensitivities
    are the same, in the same (key) order, and the moments agree within rounding."""
    perm = np.random.default_rng(6).permutation(len(x))
    ref = onnx_eprune.calibrate(_wide(), x, device="cpu")
    got = onnx_eprune.calibrate(_wide(), x[perm], device="cpu")
    assert np.array_equal(got.gain_images["x"], ref.gain_images["x"])
    a, b = _moments(ref), _moments(got)
    for key, value in a.items():
        assert np.abs(value - b[key]).max() <= 1e-5 * max(1.0, float(np.abs(value).max())), key


def test_the_same_shard_shuffled_is_refused_as_the_same_shard(x):
    """README: 'the same shard twice, as one file or a copy, is refused' because its samples
    would count twice. A shard calibrated again from the same samples in another order (a loader
    that shuffles) is the same shard: its sensitivity images are even the same bytes. Expected:
    UsageError 'hold the same shard'. Was: the merge went through and the report counted 96
    samples for 48."""
    model = ALL_BUILDERS["residual"]()
    perm = np.random.default_rng(7).permutation(len(x))
    a = onnx_eprune.calibrate(model, x, device="cpu")
    b = onnx_eprune.calibrate(model, x[perm], device="cpu")
    with pytest.raises(onnx_eprune.UsageError, match="same shard"):
        onnx_eprune.prune(model, stats=[a, b], sparsity=0.4)


# -- where cached activations live ---------------------------------------------------------------

@pytest.mark.parametrize("memory, disk", [(0, 0), (0, 1 << 30), (100_000, 0), (100_000, 1 << 30)],
                         ids=["nothing-cached", "all-on-disk", "some-in-memory-rest-recomputed",
                              "some-in-memory-rest-on-disk"])
def test_where_cached_activations_live_does_not_change_the_bytes(x, wide_reference, monkeypatch, memory, disk):
    """The cache space (engine.CACHE_MEMORY_BYTES / CACHE_DISK_BYTES) forced to nothing, to
    scratch files only, or to a memory share that holds some tensors with the rest on disk
    or computed again (the recorded targets too): the bytes of the default run."""
    places = []
    real = engine.StoredBatches.reserve.__func__

    def reserve(cls, space, estimate, memory=True):
        stored = real(cls, space, estimate, memory)
        places.append(None if stored is None else ("memory" if stored.file is None else "disk"))
        return stored

    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", memory)
    monkeypatch.setattr(engine, "CACHE_DISK_BYTES", disk)
    monkeypatch.setattr(engine.StoredBatches, "reserve", classmethod(reserve))
    result = onnx_eprune.prune(_wide(), x, sparsity=0.5, device="cpu")
    assert _bytes(result) == _bytes(wide_reference)
    assert _report(result) == _report(wide_reference)
    expected = {(0, 0): {None}, (0, 1 << 30): {"disk"}, (100_000, 0): {"memory", None},
                (100_000, 1 << 30): {"memory", "disk"}}[(memory, disk)]
    assert set(places) == expected


# -- the same values in other forms ------------------------------------------------------------

def test_cli_samples_option_equals_slicing_the_file_first(files, capsys, x):
    """--samples 40 of a 48-sample file is the run on a file of its first 40 samples: the
    same model bytes and the same report (timings and output path aside)."""
    np.save(files / "first40.npy", x[:40])
    assert main(_prune_argv(files / "wide.onnx", files / "a.onnx", files / "calib.npy", "--samples", "40",
                            "--report", files / "a.json")) == 0
    assert main(_prune_argv(files / "wide.onnx", files / "b.onnx", files / "first40.npy",
                            "--report", files / "b.json")) == 0
    assert (files / "a.onnx").read_bytes() == (files / "b.onnx").read_bytes()
    assert _report(files / "a.json") == _report(files / "b.json")
    assert json.loads((files / "a.json").read_text())["samples"] == 40


@pytest.mark.parametrize("form", ["float64", "fortran-float64", "int8", "int16-fortran", "npz"])
def test_cli_the_same_values_in_another_dtype_or_layout_give_the_same_bytes(tmp_path, capsys, form):
    """Calibration values that float32 holds exactly, saved as float64 (C or Fortran order),
    int8, Fortran-ordered int16 or an .npz keyed by the input name: the bytes of the
    float32 C-ordered .npy (the README: other numeric arrays are cast to the model's type)."""
    onnx.save(_wide(), tmp_path / "wide.onnx")
    values = np.random.default_rng(9).integers(-8, 8, size=(40, 3, 16, 16))
    np.save(tmp_path / "ref.npy", values.astype(np.float32))
    variant = tmp_path / ("v.npz" if form == "npz" else "v.npy")
    if form == "npz":
        np.savez(variant, x=values.astype(np.float32))
    else:
        array = values.astype({"float64": np.float64, "fortran-float64": np.float64, "int8": np.int8,
                               "int16-fortran": np.int16}[form])
        np.save(variant, np.asfortranarray(array) if "fortran" in form else array)
    assert main(_prune_argv(tmp_path / "wide.onnx", tmp_path / "ref.onnx", tmp_path / "ref.npy")) == 0
    assert main(_prune_argv(tmp_path / "wide.onnx", tmp_path / "v.onnx", variant)) == 0
    assert (tmp_path / "v.onnx").read_bytes() == (tmp_path / "ref.onnx").read_bytes()


class _Reader:
    """An onnxruntime CalibrationDataReader: dicts of 9 samples, then None."""

    def __init__(self, x: np.ndarray) -> None:
        self.batches = iter([{"x": x[i:i + 9]} for i in range(0, len(x), 9)])

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize("form", ["list-of-uneven-batches", "generator", "data-reader", "dict", "fortran-float64",
                                  "samples-of-more"])
def test_python_forms_of_the_same_samples_give_the_same_bytes(x, wide_reference, form):
    """A list of uneven batches, a generator of dicts, a CalibrationDataReader, a dict, a
    Fortran-ordered float64 copy, and samples=48 of a longer array: the bytes and report
    of the plain float32 array (default entropic sequential run)."""
    calib, options = {
        "list-of-uneven-batches": lambda: ([x[:5], x[5:30], x[30:]], {}),
        "generator": lambda: (({"x": b} for b in np.array_split(x, 4)), {}),
        "data-reader": lambda: (_Reader(x), {}),
        "dict": lambda: ({"x": x}, {}),
        "fortran-float64": lambda: (np.asfortranarray(x.astype(np.float64)), {}),
        "samples-of-more": lambda: (np.concatenate([x, random_input(20, seed=99)]), {"samples": len(x)}),
    }[form]()
    result = onnx_eprune.prune(_wide(), calib, sparsity=0.5, device="cpu", **options)
    assert _bytes(result) == _bytes(wide_reference)
    assert _report(result) == _report(wide_reference)


# -- no state left behind ------------------------------------------------------------------------

def test_the_same_run_after_other_runs_in_the_process_gives_the_same_bytes(x, wide_reference):
    """The reference run again after unrelated work in the same process (another model with
    the random method and another seed, a calibrate, a sweep, an evaluate): the same bytes
    and report. No cache, pool or random state carries over."""
    other = ALL_BUILDERS["concat"]()
    onnx_eprune.prune(other, random_input(40, seed=8), sparsity=0.4, method="random", seed=7, mode="oneshot",
                      device="cpu", batch_size=3)
    onnx_eprune.calibrate(ALL_BUILDERS["decoder"](), random_input(24, seed=9), device="cpu", seed=2)
    onnx_eprune.sweep(ALL_BUILDERS["residual"](), random_input(32, seed=10), [0.3], device="cpu")
    onnx_eprune.evaluate(other, other, random_input(8, seed=11), device="cpu")
    again = onnx_eprune.prune(_wide(), x, sparsity=0.5, device="cpu")
    assert _bytes(again) == _bytes(wide_reference)
    assert _report(again) == _report(wide_reference)


def test_a_run_that_failed_mid_way_leaves_nothing_that_changes_the_next(x, wide_reference, monkeypatch, tmp_path):
    """A run that fails inside its first sequential stage (while prefetching threads and
    cached tensors are alive) leaves no state: the next run in the process gives the
    reference bytes, and no scratch folder stays behind."""
    import tempfile

    from onnx_eprune.select import entropic

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", 0)  # the failed run holds scratch files
    calls = []
    real_select = entropic.select

    def failing_select(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("solver failed")

    monkeypatch.setattr(entropic, "select", failing_select)
    with pytest.raises(RuntimeError, match="solver failed"):
        onnx_eprune.prune(_wide(), x, sparsity=0.5, device="cpu")
    assert calls
    monkeypatch.setattr(entropic, "select", real_select)
    assert [p.name for p in tmp_path.iterdir()] == []
    again = onnx_eprune.prune(_wide(), x, sparsity=0.5, device="cpu")
    assert _bytes(again) == _bytes(wide_reference)


# -- equivalent spellings of the model ----------------------------------------------------------------

def test_constant_nodes_prune_like_initializers(x):
    """The same CNN with every weight in a Constant node, or as initializers: the same
    pruned bytes (the Constant nodes become the initializers they stand for)."""
    as_constants = conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=True)
    as_initializers = conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=False)
    for options in ({"sparsity": 0.5}, {"keep_ratio": 0.5, "mode": "oneshot"}):
        a = onnx_eprune.prune(as_constants, x, device="cpu", **options)
        b = onnx_eprune.prune(as_initializers, x, device="cpu", **options)
        assert _bytes(a) == _bytes(b), options


def test_constant_nodes_moved_elsewhere_prune_alike(x):
    """The Constant nodes of the CNN interleaved with the layers (each right before its first
    reader, another valid order): the same kept channels and weights as with them first."""
    model = conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=True)
    nodes = list(model.graph.node)
    constants = {n.output[0]: n for n in nodes if n.op_type == "Constant"}
    order, placed = [], set()
    for node in nodes:
        if node.op_type == "Constant":
            continue
        for name in node.input:
            if name in constants and name not in placed:
                order.append(constants[name])
                placed.add(name)
        order.append(node)
    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    del moved.graph.node[:]
    moved.graph.node.extend(order)
    onnx.checker.check_model(moved, full_check=True)
    assert [n.name for n in moved.graph.node] != [n.name for n in nodes]
    ref = onnx_eprune.prune(model, x, sparsity=0.5, device="cpu")
    got = onnx_eprune.prune(moved, x, sparsity=0.5, device="cpu")
    assert _kept(got) == _kept(ref)
    wa, wb = _weights(ref.model), _weights(got.model)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_shape_inferred_value_info_and_initializer_order_change_nothing(x, wide_reference):
    """The model with the value_info of onnx's shape inference: the same bytes but for the
    value_info entries the pruned graph still bears out (kept, and true of it); with its
    initializers listed in reverse: the same kept channels and the same weights."""
    inferred = onnx.shape_inference.infer_shapes(_wide(), strict_mode=True)
    assert len(inferred.graph.value_info) > 0
    got = onnx_eprune.prune(inferred, x, sparsity=0.5, device="cpu")
    kept = list(got.model.graph.value_info)
    truth = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(wide_reference.model).graph.value_info}
    assert kept and all(truth.get(vi.name) == vi for vi in kept)
    del got.model.graph.value_info[:]
    assert _bytes(got) == _bytes(wide_reference)
    reordered = _wide()
    inits = list(reordered.graph.initializer)[::-1]
    del reordered.graph.initializer[:]
    reordered.graph.initializer.extend(inits)
    got = onnx_eprune.prune(reordered, x, sparsity=0.5, device="cpu")
    assert _kept(got) == _kept(wide_reference)
    wa, wb = _weights(wide_reference.model), _weights(got.model)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_the_two_branch_model_is_a_valid_reordering():
    """The premise of the node-order tests: both orders are valid ONNX graphs with the same
    nodes, weights and function."""
    a, b = _two_branch(False), _two_branch(True)
    assert [n.name for n in a.graph.node] != [n.name for n in b.graph.node]
    assert sorted(n.SerializeToString() for n in a.graph.node) == sorted(n.SerializeToString() for n in b.graph.node)
    assert a.graph.initializer == b.graph.initializer
    probe = random_input(4, seed=4)
    assert np.array_equal(run_model(a, probe)["y"], run_model(b, probe)["y"])


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("target", [{"keep_ratio": 0.5}, {"sparsity": 0.5}])
def test_node_order_gives_the_same_result(x, mode, target):
    """Equivalent node orders prune alike: the same channels and weights, with conv positions
    sampled and, for a sparsity target, output gains measured per group (both drawn per
    layer or group, which the analysis now numbers in an order of the wiring:
    ``order_by_wiring``). Each output lists its nodes as its input did. Was: the draws
    followed the listing, so at keep ratio 0.5 the swapped listing re-fitted conv_a and
    conv_b on other positions (other weights; in sequential mode other channels after them),
    and onnxruntime's saved ResNet-18 kept other channels (91.58% against 91.50%)."""
    a, b = (onnx_eprune.prune(_two_branch(swap), x, mode=mode, positions=9, device="cpu", **target)
            for swap in (False, True))
    assert _kept(a) == _kept(b)
    _assert_close(a, b, rtol=0)
    for swap, result in ((False, a), (True, b)):
        assert [n.name for n in result.model.graph.node] == [n.name for n in _two_branch(swap).graph.node]


def test_order_by_wiring_and_back():
    """``order_by_wiring`` lists both orders of a graph alike (a node no output reads last,
    a node whose sub-graph reads a tensor after that tensor's producer) and returns the listing that
    ``restore_order`` puts back, a node pruning added going with the node before it."""
    def graph(swap: bool) -> onnx.ModelProto:
        model = _two_branch(swap)
        nodes = model.graph.node
        # an If whose branch reads conv_a's output: its producer is walked before it
        branch = helper.make_graph([helper.make_node("Identity", ["conv_a"], ["inner"])], "branch", [],
                                   [helper.make_tensor_value_info("inner", onnx.TensorProto.FLOAT, None)])
        flag = helper.make_tensor("flag", onnx.TensorProto.BOOL, [], [True])
        model.graph.initializer.append(flag)
        nodes.append(helper.make_node("If", ["flag"], ["unused"], name="if", then_branch=branch, else_branch=branch))
        # the first output: the walk starts at the If, whose explicit inputs are all constants
        model.graph.output.insert(0, helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, None))
        nodes.append(helper.make_node("Relu", ["stem"], ["dead"], name="dead"))  # read by no output
        return model

    listings = []
    for swap in (False, True):
        model = graph(swap)
        before = [n.name for n in model.graph.node]
        listing = model_io.order_by_wiring(model)
        listings.append([n.name for n in model.graph.node])
        assert listings[-1].index("conv_a") < listings[-1].index("if") and listings[-1][-1] == "dead"
        assert model_io.order_by_wiring(model) == [n.output[0] for n in model.graph.node]  # a fixed point
        model.graph.node.insert(listings[-1].index("relu_a") + 1,
                                helper.make_node("Identity", ["relu_a"], ["added"], name="added"))
        model_io.restore_order(model, listing)
        after = [n.name for n in model.graph.node]
        assert after == before[:before.index("relu_a") + 1] + ["added"] + before[before.index("relu_a") + 1:]
    assert listings[0] == listings[1]


@pytest.fixture
def external(tmp_path, x) -> Path:
    """The wide model saved inline and with every tensor in an external data file."""
    model = _wide()
    onnx.save(model, tmp_path / "inline.onnx")
    (tmp_path / "ext").mkdir()
    onnx.save_model(model, str(tmp_path / "ext" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    np.save(tmp_path / "calib.npy", x)
    return tmp_path


def test_external_data_prunes_to_the_same_model(external):
    """A model saved with external data prunes to the same graph and the same weight values
    as the same model saved inline, from Python and from the command line."""
    inline = onnx_eprune.prune(str(external / "inline.onnx"), str(external / "calib.npy"), sparsity=0.5,
                               device="cpu")
    ext = onnx_eprune.prune(str(external / "ext" / "model.onnx"), str(external / "calib.npy"), sparsity=0.5,
                            device="cpu")
    assert _kept(ext) == _kept(inline)
    assert ext.model.graph.node == inline.model.graph.node
    wa, wb = _weights(inline.model), _weights(ext.model)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert _report(ext) == _report(inline)


def test_external_data_and_inline_inputs_give_the_same_output_bytes(external, capsys):
    """Expected: the same output file whether the input kept its weights inline or in an
    external data file (below 2 GB both outputs are written inline). Was: the weights that
    pruning left unchanged kept the explicit data_location=DEFAULT set on loading, so the files
    differed in bytes though every value was equal."""
    for name, model in (("inline", external / "inline.onnx"), ("ext", external / "ext" / "model.onnx")):
        assert main(_prune_argv(model, external / f"{name}.pruned.onnx", external / "calib.npy")) == 0
    assert (external / "ext.pruned.onnx").read_bytes() == (external / "inline.pruned.onnx").read_bytes()
