"""The public Python API's contract, held to the discipline of a library like scikit-learn.

``tests/test_api.py`` pins the refusals of bad arguments and the accepted calibration
forms; this file attacks what a demanding programmer relies on beyond that:

- nothing the caller passes is changed: the ``ModelProto`` (also when the run fails), the
  arrays (read-only, non-contiguous, Fortran-ordered, float64, memory-mapped), the option
  objects, the process (environment, numpy's global RNG and error state, signal handlers,
  BLAS thread limits, logging and warning configuration, the working and temporary folders);
- equivalent forms of an argument give the same bytes (a model as ``ModelProto``, ``str``,
  ``pathlib.Path`` or any ``os.PathLike``; a ``PruneConfig`` or its keywords), runs are
  deterministic (twice in one process, and in threads at once);
- every error is an ``EPruneError`` (``UsageError`` for bad input) with a one-line message,
  never a raw numpy/pathlib/``StopIteration`` exception, and the API agrees with the CLI on
  what counts as bad input;
- results are what they say: the report and the other returned dicts are JSON-ready
  whatever numeric types the caller used, figures have the documented types and units,
  the public names are documented, reprs stay readable;
- ``PruneResult.save`` / ``StatsBundle.save`` never overwrite an input of the run.
"""

from __future__ import annotations

import copy
import fractions
import importlib.metadata
import json
import logging
import os
import random
import signal
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from threadpoolctl import threadpool_info

import onnx_eprune
from models import ALL_BUILDERS, conv_bn_relu_pool_flatten_gemm, random_input
from onnx_eprune import EPruneError, PruneConfig, PruneResult, SweepPoint, UsageError

FAST = {"method": "l1", "mode": "oneshot", "device": "cpu"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_bn_relu_pool_flatten_gemm(True)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return random_input(32, seed=3)


@pytest.fixture(scope="module")
def reference(model, x) -> bytes:
    """The bytes of the FAST run at sparsity 0.5 on ``x`` as a plain float32 array."""
    return _bytes(onnx_eprune.prune(model, x, sparsity=0.5, **FAST))


def _bytes(result: PruneResult) -> bytes:
    return result.model.SerializeToString(deterministic=True)


class _PathLike:
    """An ``os.PathLike`` that is not a ``pathlib.Path``."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


def _unknown_op_model(model: onnx.ModelProto) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].op_type = "NoSuchOp"
    return bad


# -- the public surface ------------------------------------------------------------------------

def test_every_public_name_exists_and_is_documented(model, x):
    """``__all__`` lists what the package exports; each callable, and the methods a caller
    uses on what they return, has a docstring; ``__version__`` is the installed version."""
    assert onnx_eprune.__all__ and len(set(onnx_eprune.__all__)) == len(onnx_eprune.__all__)
    for name in onnx_eprune.__all__:
        assert hasattr(onnx_eprune, name), name
        obj = getattr(onnx_eprune, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    bundle = onnx_eprune.calibrate(model, x, device="cpu")
    for method in (PruneResult.save, SweepPoint.as_dict, PruneConfig.target, PruneConfig.check, bundle.save):
        assert (method.__doc__ or "").strip(), f"{method.__qualname__} has no docstring"
    assert onnx_eprune.__version__ == importlib.metadata.version("onnx-eprune")


def test_errors_derive_from_one_documented_base():
    """``UsageError`` (bad input, exit 2) is an ``EPruneError`` (runtime, exit 1), itself a
    plain ``Exception``: ``except EPruneError`` catches every refusal. Errors survive pickling
    (a process pool hands them back to its caller)."""
    import pickle

    assert issubclass(UsageError, EPruneError) and issubclass(EPruneError, Exception)
    assert not issubclass(EPruneError, (ValueError, TypeError, KeyboardInterrupt))
    assert (EPruneError.exit_code, UsageError.exit_code) == (1, 2)
    for cls in (EPruneError, UsageError):
        assert (cls.__doc__ or "").strip()
        back = pickle.loads(pickle.dumps(cls("the message")))
        assert type(back) is cls and str(back) == "the message"


@pytest.mark.parametrize("call", [
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=float("nan"), **FAST), id="nan-target"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, keep_ratio=0, **FAST), id="keep-ratio-0"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, samples=0, **FAST), id="samples-0"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, method="l1", mode="oneshot", device="gpu"),
                 id="device-gpu"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x[:, :2], sparsity=0.5, **FAST), id="wrong-channels"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x.astype(np.complex64), sparsity=0.5, **FAST), id="complex"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, min_keep=2, **FAST), id="min-keep-2"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, refit_ridge=float("inf"), **FAST),
                 id="ridge-inf"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.999, **FAST), id="unreachable"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, exclude=("zzz",), **FAST), id="exclude"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, np.zeros_like(x), sparsity=0.5, **FAST), id="constant"),
    pytest.param(lambda m, x: onnx_eprune.inspect(m, sample=x[:1, :, :8]), id="inspect-sample-shape"),
    pytest.param(lambda m, x: onnx_eprune.evaluate(m, m, x, labels=np.full(len(x), 99)), id="labels-range"),
    pytest.param(lambda m, x: onnx_eprune.sweep(m, x, [0.5], data=x[:, :, :8], **FAST), id="sweep-data-shape"),
    pytest.param(lambda m, x: onnx_eprune.sweep(m, x, [0.5], latency="no", **FAST), id="sweep-latency-str"),
    pytest.param(lambda m, x: onnx_eprune.search(m, x, max_error=0.1, latency="no", **FAST), id="search-latency-str"),
    pytest.param(lambda m, x: onnx_eprune.prune(m, x, sparsity=0.5, **FAST).save(tempfile.gettempdir()),
                 id="save-to-a-folder"),
])
def test_every_refusal_is_an_eprune_error_with_one_line(model, x, call):
    with pytest.raises(EPruneError) as info:
        call(model, x)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message


# -- nothing the caller passes is changed ----------------------------------------------------

def _read_only(x):
    a = x.copy()
    a.flags.writeable = False
    return a


def _strided(x):
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
    wide[..., ::2] = x
    return wide[..., ::2]


def _flags(a: np.ndarray) -> dict:
    return {k: a.flags[k] for k in ("C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA", "WRITEABLE", "ALIGNED")}


def _memmap(x, tmp_path, mode):
    np.save(tmp_path / "c.npy", x)
    return np.load(tmp_path / "c.npy", mmap_mode=mode)


@pytest.mark.parametrize("form", ["read-only", "strided", "fortran", "float64", "memmap-r", "memmap-r+"])
def test_calibration_arrays_are_left_as_given_and_give_the_same_bytes(model, x, reference, tmp_path, form):
    """Every layout and dtype of the same values prunes alike, and the caller's array keeps its
    values, dtype and flags (a read-only array is not made writable, a memmap not written)."""
    make = {"read-only": lambda: _read_only(x), "strided": lambda: _strided(x),
            "fortran": lambda: np.asfortranarray(x), "float64": lambda: x.astype(np.float64),
            "memmap-r": lambda: _memmap(x, tmp_path, "r"), "memmap-r+": lambda: _memmap(x, tmp_path, "r+")}
    a = make[form]()
    values, dtype, flags = np.array(a, copy=True), a.dtype, _flags(a)
    assert _bytes(onnx_eprune.prune(model, a, sparsity=0.5, **FAST)) == reference
    assert a.dtype == dtype and _flags(a) == flags and np.array_equal(a, values)
    if form.startswith("memmap"):
        del a
        assert np.array_equal(np.load(tmp_path / "c.npy"), x)


@pytest.mark.parametrize("failure", ["unreachable", "exclude", "constant", "loader", "bad-option"])
def test_a_failed_run_leaves_the_model_and_arrays_untouched(model, x, failure):
    before, calib = model.SerializeToString(), x.copy()
    const = np.zeros_like(x)

    def loader():
        yield x[:16]
        raise RuntimeError("the loader broke")

    run = {"unreachable": lambda: onnx_eprune.prune(model, x, sparsity=0.999, **FAST),
           "exclude": lambda: onnx_eprune.prune(model, x, sparsity=0.5, exclude=["nothing*"], **FAST),
           "constant": lambda: onnx_eprune.prune(model, const, sparsity=0.5, **FAST),
           "loader": lambda: onnx_eprune.prune(model, loader(), sparsity=0.5, **FAST),
           "bad-option": lambda: onnx_eprune.prune(model, x, sparsity=0.5, round_to=0, **FAST)}[failure]
    with pytest.raises((EPruneError, RuntimeError)):
        run()
    assert model.SerializeToString() == before
    assert np.array_equal(x, calib) and not const.any()


def test_inspect_evaluate_and_sweep_leave_their_inputs_untouched(model, x):
    pruned = onnx_eprune.prune(model, x, sparsity=0.5, **FAST).model
    protos = {"model": model, "pruned": pruned}
    before = {k: m.SerializeToString() for k, m in protos.items()}
    data, labels, targets = _read_only(x), _read_only(np.arange(len(x)) % 10), [0.5, 0.3]
    onnx_eprune.inspect(model, sample=data, exclude=["conv_1"])
    onnx_eprune.evaluate(model, pruned, data, labels=labels, device="cpu")
    onnx_eprune.sweep(model, data, targets, data=data, labels=labels, **FAST)
    assert {k: m.SerializeToString() for k, m in protos.items()} == before
    assert np.array_equal(data, x) and np.array_equal(labels, np.arange(len(x)) % 10)
    assert targets == [0.5, 0.3]  # the points come sorted, the caller's list does not


def test_a_config_object_is_not_changed_and_equals_its_keywords(model, x, reference):
    """A ``PruneConfig`` may be reused: the run leaves it as it was (numpy scalars and a list
    of patterns included), and it prunes exactly as the same fields given as keywords."""
    config = PruneConfig(sparsity=np.float32(0.5), exclude=["conv_1"], seed=np.int64(0), **FAST)
    kept = copy.deepcopy(config)
    by_config = _bytes(onnx_eprune.prune(model, x, config=config))
    assert config == kept and type(config.sparsity) is np.float32 and config.exclude == ["conv_1"]
    assert by_config == _bytes(onnx_eprune.prune(model, x, sparsity=0.5, exclude=("conv_1",), **FAST))
    assert _bytes(onnx_eprune.prune(model, x, config=PruneConfig(sparsity=0.5, **FAST))) == reference


def test_a_bad_config_is_refused_at_use_with_the_keywords_message(model, x):
    """A ``PruneConfig`` is a plain dataclass, checked when used: a bad field constructs, then
    ``prune`` refuses it with the very message the same keyword gets."""
    for field, value in (("seed", 1.5), ("method", "L1"), ("min_keep", "0.1"), ("exclude", "conv*")):
        options = {"sparsity": 0.5, field: value}
        config = PruneConfig(**options)   # no check yet
        with pytest.raises(UsageError) as by_keyword:
            onnx_eprune.prune(model, x, **options)
        with pytest.raises(UsageError) as by_config:
            onnx_eprune.prune(model, x, config=config)
        assert str(by_config.value) == str(by_keyword.value)


def test_the_library_leaves_process_wide_state_alone(model, x, tmp_path, monkeypatch):
    """A library call does not touch what belongs to the program: the environment (the
    README: the malloc settings are the program's to make), numpy's and Python's global
    random state, numpy's error handling, signal handlers (the CLI's SIGTERM handling is
    the CLI's), BLAS thread limits, logging and warning configuration, the working folder,
    and it leaves no file in the temporary folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    np.random.seed(1234)
    random.seed(1234)

    def state():
        return {"env": dict(os.environ), "np.random": np.random.get_state()[1].tobytes(),
                "random": random.getstate(), "np.geterr": np.geterr(), "printoptions": np.get_printoptions(),
                "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
                "blas": [(i["user_api"], i["internal_api"], i["num_threads"]) for i in threadpool_info()],
                "cwd": os.getcwd(), "warnings": list(warnings.filters),
                "loggers": [(lg.level, list(lg.handlers), lg.propagate)
                            for lg in (logging.getLogger(), logging.getLogger("onnx_eprune"))]}

    before = state()
    result = onnx_eprune.prune(model, x, sparsity=0.5, device="cpu")   # sequential, entropic
    onnx_eprune.calibrate(model, x, device="cpu")
    onnx_eprune.sweep(model, x, [0.3], **FAST)
    onnx_eprune.inspect(model)
    onnx_eprune.evaluate(model, result.model, x, device="cpu")
    after = state()
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    assert list(scratch.iterdir()) == []


def test_warnings_go_through_the_package_logger_not_print(model, x, caplog, capfd):
    """Warnings are log records of the ``onnx_eprune`` logger: nothing on stdout, and a
    program that raises the logger's level silences them."""
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        onnx_eprune.prune(model, x[:8], sparsity=0.5, **FAST)
    records = [r for r in caplog.records if r.name == "onnx_eprune" and r.levelno == logging.WARNING]
    assert any("only 8 calibration samples" in r.getMessage() for r in records)
    capfd.readouterr()
    logger = logging.getLogger("onnx_eprune")
    logger.setLevel(logging.ERROR)   # conftest restores it
    onnx_eprune.prune(model, x[:8], sparsity=0.5, **FAST)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# -- equivalent forms, determinism ------------------------------------------------------------

def test_a_model_as_proto_str_path_or_pathlike_gives_the_same_bytes(model, x, reference, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    on_disk = path.read_bytes()
    for form in (str(path), path, _PathLike(str(path))):
        assert _bytes(onnx_eprune.prune(form, x, sparsity=0.5, **FAST)) == reference, type(form).__name__
    assert path.read_bytes() == on_disk
    result = onnx_eprune.prune(model, x, sparsity=0.5, **FAST)
    result.save(tmp_path / "p.onnx")   # save writes the very model the result holds
    assert onnx.load(tmp_path / "p.onnx").SerializeToString(deterministic=True) == _bytes(result)


def test_calibrate_and_sweep_are_deterministic_within_a_process(model, x):
    def bundle_arrays():
        b = onnx_eprune.calibrate(model, x, device="cpu")
        out = {"meta": (b.model, b.seed, b.positions, b.samples)}
        for c, st in sorted(b.consumers.items()):
            out.update({f"{c}{k}": v.tobytes() for k, v in st.to_arrays("").items()})
        return out

    assert bundle_arrays() == bundle_arrays()
    runs = [[(p.target, p.params_removed, p.model.SerializeToString(deterministic=True))
             for p in onnx_eprune.sweep(model, x, [0.3, 0.5], device="cpu")] for _ in range(2)]
    assert runs[0] == runs[1]


def test_prunes_in_threads_at_once_give_the_bytes_of_sequential_runs(x):
    """Four different models pruned concurrently, and one ModelProto shared by three
    concurrent runs, give the bytes that one run at a time gives, and the shared proto
    stays as it was."""
    names = ["cnn_folded", "residual", "concat", "se_block"]
    alone = {n: _bytes(onnx_eprune.prune(ALL_BUILDERS[n](), x, sparsity=0.4, device="cpu")) for n in names}
    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(onnx_eprune.prune, ALL_BUILDERS[n](), x, sparsity=0.4, device="cpu")
                   for n in names}
        together = {n: _bytes(f.result()) for n, f in futures.items()}
    assert together == alone
    shared = ALL_BUILDERS["residual"]()
    before = shared.SerializeToString()
    with ThreadPoolExecutor(3) as pool:
        same = list(pool.map(lambda _: _bytes(onnx_eprune.prune(shared, x, sparsity=0.4, device="cpu")), range(3)))
    assert same == [alone["residual"]] * 3 and shared.SerializeToString() == before


def test_a_generator_is_read_once_and_only_as_far_as_needed(model, x, reference):
    """A generator reused for a second run is exhausted: a clear ``UsageError``, not an
    empty run; with ``samples`` only the batches needed are drawn (an endless loader works)."""
    batches = (b for b in np.array_split(x, 4))
    assert _bytes(onnx_eprune.prune(model, batches, sparsity=0.5, **FAST)) == reference
    with pytest.raises(UsageError, match=r"^the calibration data source yielded no batches$"):
        onnx_eprune.prune(model, batches, sparsity=0.5, **FAST)
    drawn = []

    def endless():
        while True:
            drawn.append(1)
            yield x[:8]

    result = onnx_eprune.prune(model, endless(), sparsity=0.5, samples=16, **FAST)
    assert len(drawn) == 2 and result.report["samples"] == 16


# -- what comes back ---------------------------------------------------------------------------

def test_the_report_is_json_ready_with_documented_types_and_units(model, x):
    start = time.perf_counter()
    result = onnx_eprune.prune(model, x, sparsity=0.5, device="cpu")
    wall = time.perf_counter() - start
    report = result.report
    assert isinstance(result.model, onnx.ModelProto) and isinstance(report, dict)
    assert all(isinstance(p, Path) for p in result.inputs)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    for part in ("params", "macs"):
        before, after, removed = (report[part][k] for k in ("before", "after", "removed_fraction"))
        assert type(before) is int and type(after) is int and 0 < after <= before
        assert removed == pytest.approx(1 - after / before, abs=1e-6)
    assert type(report["samples"]) is int and report["samples"] == len(x)
    for group in report["groups"]:
        assert type(group["channels_before"]) is int and type(group["channels_after"]) is int
        if "kept_channels" in group:
            kept = group["kept_channels"]
            assert kept == sorted(set(kept)) and len(kept) == group["channels_after"]
            assert all(type(c) is int and 0 <= c < group["channels_before"] for c in kept)
    seconds = report["seconds"]
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values())
    # seconds, not milliseconds: the total is the run's wall time, and holds its phases
    assert 0.5 * wall <= seconds["total"] <= wall + 0.01
    assert sum(v for k, v in seconds.items() if k != "total") <= seconds["total"] + 0.01


def test_the_other_results_are_json_ready_too(model, x):
    result = onnx_eprune.prune(model, x, sparsity=0.5, **FAST)
    for value in (onnx_eprune.inspect(model), onnx_eprune.evaluate(model, result.model, x, device="cpu"),
                  *(p.as_dict() for p in onnx_eprune.sweep(model, x, [np.float32(0.5)], data=x,
                                                           labels=np.arange(len(x)) % 10, **FAST))):
        assert json.loads(json.dumps(value, allow_nan=False)) == value


def test_config_and_sweep_point_reprs_name_their_fields(model, x):
    text = repr(PruneConfig(sparsity=0.5, method="l1"))
    assert text.startswith("PruneConfig(") and "sparsity=0.5" in text and "method='l1'" in text
    point = onnx_eprune.sweep(model, x, [0.5], **FAST)[0]
    text = repr(point)
    assert text.startswith("SweepPoint(kind='sparsity', target=0.5") and "ModelProto" not in text
    assert len(text) < 1000


@pytest.mark.parametrize("what", ["result", "bundle"])
def test_result_and_bundle_reprs_stay_short(model, x, what):
    """Expected: typing the returned object in a REPL or notebook shows a short summary
    (SweepPoint already hides its report and model from repr). Was: ``StatsBundle``'s dataclass
    repr printed all its numpy moments and ``PruneResult``'s the full report, every kept-channel
    list included."""
    obj = onnx_eprune.prune(model, x, sparsity=0.5, **FAST) if what == "result" else \
        onnx_eprune.calibrate(model, x, device="cpu")
    assert len(repr(obj)) < 1000


# -- fixed bugs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["prune", "sweep"])
def test_a_numpy_bool_option_still_gives_a_json_ready_report(model, x, entry):
    """Expected: ``reconstruct=np.bool_(True)`` is accepted (as numpy numbers are) and the
    report stays JSON-ready, as the README and PruneResult's docstring promise. Was: the report
    held the numpy bool and ``json.dumps`` failed."""
    if entry == "prune":
        report = onnx_eprune.prune(model, x, sparsity=0.5, reconstruct=np.bool_(True), **FAST).report
    else:
        report = onnx_eprune.sweep(model, x, [0.5], reconstruct=np.bool_(True), **FAST)[0].report
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize("options", [{"sparsity": fractions.Fraction(1, 2)},
                                     {"keep_ratio": fractions.Fraction(1, 2)},
                                     {"sparsity": 0.5, "refit_ridge": fractions.Fraction(1, 4)},
                                     {"sparsity": 0.5, "min_keep": fractions.Fraction(1, 4)}],
                         ids=["sparsity", "keep_ratio", "refit_ridge", "min_keep"])
def test_a_fraction_is_taken_as_a_number_or_refused_cleanly(model, x, options):
    """Expected: a ``numbers.Real`` that the type check accepts either works (with a JSON-ready
    report) or is refused with a ``UsageError``. Was: a numpy TypeError from ``np.isfinite`` for
    the target and ridge, and for ``min_keep`` a failure writing the provenance JSON after the
    whole pruning."""
    try:
        result = onnx_eprune.prune(model, x, **options, **FAST)
    except UsageError:
        return
    assert json.loads(json.dumps(result.report)) == result.report


@pytest.mark.parametrize("options", [{"sparsity": "0.5"}, {"sparsity": 0.5, "keep_ratio": 0.5},
                                     {"flops_reduction": 7.0}], ids=["type", "two-targets", "range"])
def test_calibrate_refuses_the_options_it_would_ignore(model, x, options):
    """A target (of the wrong type, out of range, given twice, or valid) does nothing in
    ``calibrate``: a ``UsageError``, as the command line refuses ``calibrate --sparsity``.
    Was: calibrate ran and returned a bundle; then, until session 52, a valid one was
    checked and ignored."""
    with pytest.raises(UsageError):
        onnx_eprune.calibrate(model, x, device="cpu", **options)


@pytest.mark.parametrize("options", [{"sparsity": 0.5}, {"method": "l1"}, {"mode": "oneshot"},
                                     {"exclude": ["conv*"]}, {"min_keep": 0.5}])
def test_calibrate_names_the_option_that_does_nothing(model, x, options):
    with pytest.raises(UsageError, match=f"^{next(iter(options))} does nothing in calibrate"):
        onnx_eprune.calibrate(model, x, device="cpu", **options)


@pytest.mark.parametrize("option", [{"samples": 10}, {"positions": 4}])
def test_options_that_do_nothing_with_stats_are_refused_as_on_the_command_line(model, x, option):
    """Expected: as the README says of ``--samples``/``--positions`` with ``--stats`` (a usage
    error: they go to ``calibrate``), ``prune(model, stats=[...], samples=10)`` is a
    ``UsageError`` naming the option, or the caller would believe the run used 10 samples. Was:
    the option was silently ignored."""
    bundle = onnx_eprune.calibrate(model, x, device="cpu")
    with pytest.raises(UsageError, match=next(iter(option))):
        onnx_eprune.prune(model, stats=[bundle], sparsity=0.5, method="l1", **option)


@pytest.mark.parametrize("entry", ["prune", "calibrate", "inspect"])
def test_a_model_that_fails_the_checker_is_a_usage_error_as_on_the_command_line(model, x, tmp_path, entry):
    """Expected: the README lists "a model that fails onnx.checker (undefined inputs, unknown
    ops...)" among the usage errors and says the API raises UsageError for bad input, so the API
    refuses such a model, given as a proto or a path, as the CLI does. Was: the API skipped the
    checker, and onnxruntime's load failure came back as a runtime EPruneError."""
    bad = _unknown_op_model(model)
    path = tmp_path / "bad.onnx"
    onnx.save(bad, path)
    call = {"prune": lambda m: onnx_eprune.prune(m, x, sparsity=0.5, **FAST),
            "calibrate": lambda m: onnx_eprune.calibrate(m, x, device="cpu"),
            "inspect": lambda m: onnx_eprune.inspect(m)}[entry]
    for form in (bad, path):
        with pytest.raises(UsageError, match="NoSuchOp"):
            call(form)


@pytest.mark.parametrize("entry", ["prune", "calibrate", "inspect"])
def test_an_empty_model_proto_is_refused_like_an_empty_file(x, tmp_path, entry):
    """Expected: ``onnx.ModelProto()`` is refused as its file is ("holds no graph nodes: not an
    ONNX model, or an empty one"), a UsageError. Was: inspect() leaked a bare StopIteration, and
    prune()/calibrate() blamed the calibration data."""
    call = {"prune": lambda m: onnx_eprune.prune(m, x, sparsity=0.5, **FAST),
            "calibrate": lambda m: onnx_eprune.calibrate(m, x, device="cpu"),
            "inspect": lambda m: onnx_eprune.inspect(m)}[entry]
    onnx.save(onnx.ModelProto(), tmp_path / "empty.onnx")
    with pytest.raises(UsageError, match="no graph nodes"):
        call(tmp_path / "empty.onnx")
    with pytest.raises(UsageError, match="no graph nodes"):
        call(onnx.ModelProto())


def test_a_bytes_pathlike_model_is_a_usage_error(model, x, tmp_path):
    """Expected: like a bytes calibration path ("give the calibration file's path as a str or
    pathlib.Path, not bytes") and like plain bytes as the model, a PathLike returning bytes is a
    one-line UsageError. Was: pathlib raised TypeError deep inside loading."""
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UsageError):
        onnx_eprune.prune(_PathLike(os.fsencode(tmp_path / "m.onnx")), x, sparsity=0.5, **FAST)


@pytest.mark.parametrize("what,victim", [("result", "m.onnx"), ("result", "c.npy"), ("bundle", "m.onnx"),
                                         ("bundle", "c.npy")])
def test_save_never_overwrites_an_input_after_a_change_of_folder(model, x, tmp_path, monkeypatch, what, victim):
    """Expected: ``PruneResult.save`` and ``StatsBundle.save`` refuse to overwrite a file the
    run read "by any path" (README), whatever the working folder is when save is called (a
    notebook's %cd between the two cells). Was: the inputs were kept as relative paths, so after
    a change of folder ``save('../m.onnx')`` replaced the original model with the pruned one."""
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", x)
    originals = {name: (tmp_path / name).read_bytes() for name in ("m.onnx", "c.npy")}
    monkeypatch.chdir(tmp_path)
    out = onnx_eprune.prune("m.onnx", "c.npy", sparsity=0.5, **FAST) if what == "result" else \
        onnx_eprune.calibrate("m.onnx", "c.npy", device="cpu")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    try:
        with pytest.raises(UsageError, match="an input of this run"):
            out.save(Path("..") / victim)
    finally:
        assert {name: (tmp_path / name).read_bytes() for name in originals} == originals
