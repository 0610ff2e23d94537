"""The Python API's entry points: misuse is a one-line ``UsageError`` naming the argument,
raised before any work; the accepted forms of each argument give the same result."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, random_input
from onnx_eprune import PruneConfig, UsageError

MISSING = "no-such-model.onnx"  # an argument refused before the model is read never reaches it
FAST = {"method": "l1", "mode": "oneshot", "device": "cpu"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_bn_relu_pool_flatten_gemm(True)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return random_input(32, seed=3)


class _ArrayLike:
    """Stands for a CPU torch tensor: ``__array__`` and ``__iter__`` (over its samples)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __array__(self, dtype=None, copy=None):
        return self.array

    def __iter__(self):
        return iter(self.array)


def _weights(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: t.SerializeToString() for t in model.graph.initializer}


@pytest.mark.parametrize("options,match", [
    ({"sparsity": "0.5"}, r"^sparsity must be a number, not '0.5'$"),
    ({"sparsity": True}, r"^sparsity must be a number, not True$"),
    ({"keep_ratio": "1"}, r"^keep_ratio must be a number"),
    ({"flops_reduction": 0.5j}, r"^flops_reduction must be a number"),
    ({}, r"^give exactly one target: sparsity, flops_reduction or keep_ratio$"),
    ({"sparsity": 0.5, "keep_ratio": 0.5}, r"^give exactly one target"),
])
def test_prune_refuses_a_bad_target_before_calibrating(model, x, options, match):
    with pytest.raises(UsageError, match=match):
        onnx_eprune.prune(model, x, **options, **FAST)


@pytest.mark.parametrize("options,match", [
    ({"sparsity": 0.5, "samples": 2.5}, r"^samples must be an integer or None, not 2.5$"),
    ({"sparsity": 0.5, "samples": "10"}, r"^samples must be an integer"),
    ({"sparsity": 0.5, "samples": True}, r"^samples must be an integer"),
    ({"sparsity": 0.5, "seed": 1.5}, r"^seed must be an integer or None, not 1.5$"),
    ({"sparsity": 0.5, "seed": "0"}, r"^seed must be an integer"),
    ({"sparsity": 0.5, "batch_size": 2.5}, r"^batch_size must be an integer"),
    ({"sparsity": 0.5, "positions": "8"}, r"^positions must be an integer"),
    ({"sparsity": 0.5, "round_to": True}, r"^round_to must be an integer"),
    ({"sparsity": 0.5, "round_to": 2.0}, r"^round_to must be an integer"),
    ({"sparsity": 0.5, "min_keep": "0.1"}, r"^min_keep must be a number"),
    ({"sparsity": 0.5, "reconstruct": "no"}, r"^reconstruct must be True or False"),
    ({"sparsity": 0.5, "entropic": {}}, r"^entropic must be an onnx_eprune\.select\.entropic\.EntropicConfig"),
    ({"sparsity": 0.5, "method": "L1"}, r"method \(--method\) must be one of entropic, lasso, thinet, l1, random, not 'L1'"),
    ({"sparsity": 0.5, "mode": "Sequential"}, r"mode \(--mode\) must be one of sequential, oneshot, not 'Sequential'"),
    ({"sparsity": 0.5, "exclude": "conv*"}, r"--exclude takes non-empty node-name patterns.* not 'conv\*'"),
    ({"sparsity": 0.5, "exclude": ["a", 3]}, r"--exclude takes"),
    ({"sparsity": 0.5, "refit_ridge": -1}, r"refit_ridge \(--refit-ridge\) must be"),
    ({"sparsity": 0.5, "seed": -1}, r"seed \(--seed\) must be 0 or more"),
    ({"sparsty": 0.5}, r"^unknown option 'sparsty' \(did you mean 'sparsity'\?\); the options are sparsity, "),
    ({"config": {"sparsity": 0.5}}, r"^config must be a PruneConfig, not dict"),
    ({"config": PruneConfig(sparsity=0.5), "seed": 1}, r"^pass either a PruneConfig or keyword options"),
    ({"sparsity": 0.5, "progress": 3}, r"^progress must be an onnx_eprune\.progress\.Progress or None, not int$"),
    ({"sparsity": 0.5, "stats": "shard.npz"}, r"^stats must be a list .* not str$"),
    ({"sparsity": 0.5, "stats": [3]}, r"^stats\[0\] must be the path of a statistics file"),
])
def test_prune_refuses_bad_options_before_reading_the_model(options, match, x):
    with pytest.raises(UsageError, match=match):
        onnx_eprune.prune(MISSING, None if "stats" in options else x, **options)


@pytest.mark.parametrize("bad", [123, b"\x08\x07", [MISSING]])
def test_entry_points_refuse_a_model_that_is_no_model_or_path(bad, x):
    match = r"^model must be an onnx\.ModelProto or the path of an \.onnx file, not "
    for call in (lambda: onnx_eprune.prune(bad, x, sparsity=0.5), lambda: onnx_eprune.calibrate(bad, x),
                 lambda: onnx_eprune.sweep(bad, x, [0.5]), lambda: onnx_eprune.inspect(bad)):
        with pytest.raises(UsageError, match=match):
            call()
    with pytest.raises(UsageError, match=r"onnx\.load_from_string"):
        onnx_eprune.prune(b"\x08\x07", x, sparsity=0.5)


@pytest.mark.parametrize("calib,match", [
    ([], r"yielded no batches"),
    ([np.zeros((2, 3, 16, 16), np.float32), np.zeros((2, 3, 8, 8), np.float32)], r"do not stack"),
    ({"foo": np.zeros((4, 3, 16, 16))}, r"lacks model input\(s\) x \(has: foo\)"),
    ({"x": [[1, 2], [3]]}, r"the calibration data for 'x' does not convert to an array"),
    (np.zeros((4, 3, 16, 16)).astype(object), r"has dtype object, expected numbers"),
    (np.full((4, 3, 16, 16), "a"), r"expected numbers"),
    (np.array(1.0), r"has shape \(\), but the model expects rank 4"),
    ([np.array(1.0)], r"samples on axis 0"),
    (5, r"must be a \.npy/\.npz path, an array, a dict of arrays, an iterable of batches or a CalibrationDataReader"),
    ([1.0, 2.0], r"calibration batches must be arrays or dicts of arrays, not float"),
])
def test_prune_refuses_bad_calibration_data(model, calib, match):
    with pytest.raises(UsageError, match=match):
        onnx_eprune.prune(model, calib, sparsity=0.5, **FAST)


def test_calibration_data_forms_give_the_same_model(model, x):
    """An array, a list of batches, a generator, an ``__array__`` object (a torch tensor,
    which is iterable too: it must not be read as one batch per sample), a dict of lists;
    numpy scalars as options."""
    reference = onnx_eprune.prune(model, x, sparsity=0.5, **FAST)
    forms = [[x[:10], x[10:]], (b for b in np.array_split(x, 3)), _ArrayLike(x), [_ArrayLike(x)],
             {"x": x.tolist()}]
    for calib in forms:
        got = onnx_eprune.prune(model, calib, sparsity=np.float32(0.5), samples=np.int64(32), **FAST)
        assert _weights(got.model) == _weights(reference.model)


def test_an_exception_of_the_callers_own_iterable_reaches_the_caller(model, x):
    def batches():
        yield x[:8]
        raise RuntimeError("the loader broke")

    with pytest.raises(RuntimeError, match="the loader broke"):
        onnx_eprune.prune(model, batches(), sparsity=0.5, **FAST)


def test_save_refuses_the_run_inputs_a_missing_folder_and_a_non_path(tmp_path, model, x):
    model_path, calib_path = tmp_path / "m.onnx", tmp_path / "calib.npy"
    onnx.save(model, model_path)
    np.save(calib_path, x)
    before = model_path.read_bytes()
    result = onnx_eprune.prune(str(model_path), calib_path, sparsity=0.5, **FAST)
    os.link(model_path, tmp_path / "hard.onnx")
    for target in (model_path, tmp_path / "sub" / ".." / "m.onnx", tmp_path / "hard.onnx", str(calib_path)):
        with pytest.raises(UsageError, match=r"^refusing to overwrite .*, an input of this run"):
            result.save(target)
    with pytest.raises(UsageError, match=r"^output folder does not exist"):
        result.save(tmp_path / "missing" / "p.onnx")
    with pytest.raises(UsageError, match=r"^path must be a str or os\.PathLike, not int$"):
        result.save(3)
    assert model_path.read_bytes() == before
    result.save(tmp_path / "p.onnx")
    assert onnx.load(tmp_path / "p.onnx").graph.node


def test_prune_from_stats_takes_a_list_and_refuses_a_bare_bundle(tmp_path, model, x):
    bundle = onnx_eprune.calibrate(model, x, device="cpu")
    with pytest.raises(UsageError, match=r"^stats must be a list .* not StatsBundle$"):
        onnx_eprune.prune(model, stats=bundle, sparsity=0.5)
    with pytest.raises(UsageError, match=r"^give calib \(calibration data\) or stats"):
        onnx_eprune.prune(model, stats=[], sparsity=0.5)
    with pytest.raises(UsageError, match=r"^give calib \(calibration data\) or stats"):
        onnx_eprune.prune(model, x, stats=[bundle], sparsity=0.5)
    bundle.save(tmp_path / "s.npz")
    result = onnx_eprune.prune(model, stats=[str(tmp_path / "s.npz")], sparsity=0.5, method="l1")
    with pytest.raises(UsageError, match="an input of this run"):
        result.save(tmp_path / "s.npz")


@pytest.mark.parametrize("call,match", [
    (lambda x: onnx_eprune.calibrate(MISSING, x, sed=1), r"^unknown option 'sed' \(did you mean 'seed'\?\)"),
    (lambda x: onnx_eprune.calibrate(MISSING, x, PruneConfig(), seed=1), r"^pass either a PruneConfig"),
    (lambda x: onnx_eprune.calibrate(MISSING, x, config={"seed": 1}), r"^config must be a PruneConfig"),
    (lambda x: onnx_eprune.calibrate(MISSING, x, seed=-1), r"seed \(--seed\) must be 0 or more"),
])
def test_calibrate_refuses_bad_options(call, match, x):
    with pytest.raises(UsageError, match=match):
        call(x)


@pytest.mark.parametrize("targets,options,match", [
    (0.5, {}, r"^targets must be a list of fractions, e\.g\. \[0\.3, 0\.5\], not 0\.5$"),
    ("0.5", {}, r"^targets must be a list of fractions"),
    ([], {}, r"^give at least one target"),
    (["0.5"], {}, r"^targets must be numbers, not '0\.5'$"),
    ([0.5, True], {}, r"^targets must be numbers, not True$"),
    ([0.3, 0.5, 0.3], {}, r"^targets lists 0\.3 more than once"),
    ([0.3, 1.5], {}, r"the sparsity target must be in \[0, 1\), not 1\.5"),
    ([0.5], {"kind": "flops"}, r"^a sweep runs over one of sparsity, flops_reduction, keep_ratio, not 'flops'$"),
    ([0.5], {"labels": np.zeros(4)}, r"^labels need data"),
    ([0.5], {"sparsity": 0.3}, r"^a sweep takes its targets in targets=\[\.\.\.\], not sparsity=$"),
    ([0.5], {"sed": 1}, r"^unknown option 'sed'"),
    ([0.5], {"config": {}}, r"^config must be a PruneConfig"),
    ([0.5], {"config": PruneConfig(), "seed": 1}, r"^pass either a PruneConfig"),
    ([0.5], {"progress": "yes"}, r"^progress must be"),
])
def test_sweep_refuses_bad_arguments_before_reading_the_model(targets, options, match, x):
    with pytest.raises(UsageError, match=match):
        onnx_eprune.sweep(MISSING, x, targets, **options)


def test_sweep_points_come_in_ascending_order_of_the_targets_given(model, x):
    points = onnx_eprune.sweep(model, x, (t for t in [np.float64(0.5), 0.3]), **FAST)
    assert [(p.kind, p.target) for p in points] == [("sparsity", 0.3), ("sparsity", 0.5)]
    for p in points:
        assert set(p.as_dict()) == {"kind", "target", "params_removed", "macs_removed", "fidelity", "fidelity_on",
                                    "accuracy", "seconds", "latency_ms"}
        assert p.params_removed >= p.target and p.accuracy is None and p.latency_ms is None and p.model is not None


def test_inspect_takes_paths_of_any_kind_and_refuses_a_bare_exclude_string(tmp_path, model):
    from pathlib import Path

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    by_proto = onnx_eprune.inspect(model)
    assert onnx_eprune.inspect(path) == by_proto == onnx_eprune.inspect(str(path))
    with pytest.raises(UsageError, match=r"--exclude takes .* not 'conv1'"):
        onnx_eprune.inspect(Path(MISSING), exclude="conv1")


def test_inspect_asks_for_a_sample_when_the_model_has_dynamic_dimensions(model, x):
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    for dim in list(dynamic.graph.input[0].type.tensor_type.shape.dim)[2:]:
        dim.dim_param = "side"
    with pytest.raises(UsageError, match=r"^input 'x' has dynamic dimensions .*; give sample="):
        onnx_eprune.inspect(dynamic)
    assert onnx_eprune.inspect(dynamic, sample=x[:1])["prunable_groups"] == onnx_eprune.inspect(model)[
        "prunable_groups"]


def test_evaluate_refuses_a_model_of_the_wrong_type():
    with pytest.raises(UsageError, match="model must be an onnx.ModelProto"):
        onnx_eprune.evaluate(123, 123, np.zeros((4, 3, 16, 16), np.float32))
