"""End-to-end pruning of the small models of models.py through ``onnx_eprune.prune``."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import (ALL_BUILDERS, FEATURE_OUTPUT, OUTPUT, channels_last, conv_bn_relu_pool_flatten_gemm, count_params, depthwise,
                    depthwise_multiplier, depthwise_upsample, flatten_bias, grouped, multiplier_sum, initializer, intermediate_output, io_signature, node_by_name,
                    one_image_detector, random_input, relative_error, residual, run_model, se_unflatten, wide_cnn,
                    zeroed)
from onnx_eprune import budget
from onnx_eprune.calibrate.session import probe_groups, probe_shapes
from onnx_eprune.config import PruneConfig
from onnx_eprune.errors import EPruneError, UsageError
from onnx_eprune.graph.analysis import analyze
from onnx_eprune.graph.costs import build_cost_model
from onnx_eprune.graph.model_io import constants_to_initializers
from onnx_eprune.graph.rewrite import Refit, build_pruned
from onnx_eprune.graph.weights import consumer_matrix
from onnx_eprune.select import METHODS

CPU = ["CPUExecutionProvider"]

# Consumers without a bias (a Conv before BatchNormalization, a MatMul): the re-fit gives
# them a new bias initializer, which the rewrite and the sequential sub-graphs must handle.
BIASLESS_CONSUMER = ("cnn_bn", "cnn_constants", "gemm_matmul")


BUILDERS = sorted(ALL_BUILDERS)


def prune(model, calib, **kw):
    """``onnx_eprune.prune`` on the CPU; method l1 unless given (fast, and independent of
    the entropic solver, which the structural tests do not exercise)."""
    kw.setdefault("device", "cpu")
    kw.setdefault("method", "l1")
    return onnx_eprune.prune(model, calib, **kw)


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> dict:
    """Checker, onnxruntime, same input/output names, dtypes and output shapes."""
    onnx.checker.check_model(pruned, full_check=True)
    assert io_signature(pruned) == io_signature(original)
    ref, got = run_model(original, x), run_model(pruned, x)
    assert list(got) == list(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        assert got[name].dtype == ref[name].dtype, name
        assert np.isfinite(got[name]).all(), name
    return got


# -- keep everything: the model must not change ------------------------------------------

def _keep_all(name, calib, test_x, mode):
    original = ALL_BUILDERS[name]()
    result = prune(original, calib, keep_ratio=1.0, mode=mode)
    onnx.checker.check_model(result.model, full_check=True)
    ref, got = run_model(original, test_x), run_model(result.model, test_x)
    assert list(got) == list(ref)
    for out in ref:
        assert relative_error(ref[out], got[out]) <= 1e-4, out
    assert result.report["params"]["removed_fraction"] == 0.0
    assert result.report["macs"]["removed_fraction"] == 0.0


@pytest.mark.parametrize("name", BUILDERS)
def test_keep_all_reproduces_outputs(name, calib, test_x):
    _keep_all(name, calib, test_x, "sequential")


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_keep_all_leaves_every_weight_as_it_was(mode, calib):
    """Nothing pruned, nothing re-fitted: a re-fit would add rounding that compounds over
    deep networks."""
    model = residual()
    result = prune(model, calib, keep_ratio=1.0, mode=mode, method="entropic")
    before = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("name", BUILDERS)
def test_keep_all_reproduces_outputs_oneshot(name, calib, test_x):
    _keep_all(name, calib, test_x, "oneshot")


# -- keep half the channels ----------------------------------------------------------------



def _half(name, mode, calib, test_x, **kw):
    original = ALL_BUILDERS[name]()
    before = onnx.ModelProto.FromString(original.SerializeToString())
    result = prune(original, calib, keep_ratio=0.5, mode=mode, **kw)
    assert_valid(result.model, before, test_x)
    constants_to_initializers(before)
    assert count_params(result.model) < count_params(before)
    report = result.report
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    for g in report["groups"]:
        if g["frozen"]:
            assert g["channels_after"] == g["channels_before"]
        else:
            assert g["channels_after"] == max(1, round(0.5 * g["channels_before"]))
            kept = g["kept_channels"]
            assert len(kept) == g["channels_after"] and kept == sorted(set(kept))
            assert 0 <= kept[0] and kept[-1] < g["channels_before"]
    return result


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("name", BUILDERS)
def test_keep_half_gives_valid_smaller_model(name, mode, calib, test_x):
    _half(name, mode, calib, test_x)


@pytest.mark.parametrize("name", BUILDERS)
def test_keep_half_without_reconstruction(name, calib, test_x):
    _half(name, "oneshot", calib, test_x, reconstruct=False)


def test_pruned_params_match_report(calib):
    """The report's parameter count equals the cost model of the written model."""
    _, result = _target_run("wide_cnn", "l1", "sparsity", 0.5, calib)
    model = result.model
    shapes = probe_shapes(model, {"x": calib[:1]}, CPU)
    costs = build_cost_model(model, analyze(model, shapes), shapes)
    assert costs.params() == result.report["params"]["after"]
    assert costs.macs() == result.report["macs"]["after"]
    assert count_params(model) == costs.params()  # folded CNN: only Conv/Gemm weights and biases


def test_explicit_reshape_target_is_rewritten(calib, test_x):
    result = prune(conv_bn_relu_pool_flatten_gemm(True, flatten="reshape_explicit"), calib, keep_ratio=0.5)
    assert initializer(result.model, "flat_shape").tolist() == [-1, 8 * 16]
    assert_valid(result.model, conv_bn_relu_pool_flatten_gemm(True, flatten="reshape_explicit"), test_x)


def test_reshape_zero_target_is_kept(calib):
    from models import cnn_reshape

    result = prune(cnn_reshape(explicit=False), calib, keep_ratio=0.5)
    assert initializer(result.model, "flat_shape").tolist() == [0, -1]


def test_frozen_groups_are_left_alone(calib, test_x):
    original = intermediate_output()
    result = prune(original, calib, keep_ratio=0.5)
    assert initializer(result.model, "conv1.weight").shape == (8, 3, 3, 3)
    assert initializer(result.model, "conv2.weight").shape == (8, 8, 3, 3)
    ref, got = run_model(original, test_x), run_model(result.model, test_x)
    np.testing.assert_array_equal(got[FEATURE_OUTPUT], ref[FEATURE_OUTPUT])


def test_residual_prunes_both_producers_alike(calib, test_x):

    result = prune(residual(), calib, keep_ratio=0.5)
    assert initializer(result.model, "stem.weight").shape[0] == 4
    assert initializer(result.model, "conv_b.weight").shape[0] == 4
    assert initializer(result.model, "conv_a.weight").shape[:2] == (4, 4)
    assert initializer(result.model, "y.weight").shape == (10, 4)


def test_gemm_alpha_beta_are_folded(calib, test_x):
    from models import gemm_matmul

    original = gemm_matmul()
    analysis = _analysis(original, calib)
    cidx = next(i for i, c in enumerate(analysis.consumers) if c.name == "gemm_ab")
    theta, bias = consumer_matrix({i.name: i for i in original.graph.initializer}, analysis.consumers[cidx])
    pruned = build_pruned(original, analysis, {}, {cidx: Refit(theta, bias)})  # the same function, re-written
    node = node_by_name(pruned, "gemm_ab")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    assert relative_error(run_model(original, test_x)["y"], run_model(pruned, test_x)["y"]) <= 1e-5


# -- global targets ------------------------------------------------------------------------

def _costs(model, calib):
    constants_to_initializers(model)
    shapes = probe_shapes(model, {"x": calib[:1]}, CPU)
    analysis = analyze(model, shapes)
    return analysis, build_cost_model(model, analysis, shapes)


def _best_window_exists(analysis, costs, metric, target, width=0.01) -> bool:
    """Whether some keep-count assignment removes a fraction in [target, target + width]
    (every combination of the prunable groups' counts, evaluated on a numpy grid)."""
    groups = analysis.prunable_groups()
    grids = np.meshgrid(*[np.arange(1, g.channels + 1, dtype=np.int64) for g in groups], indexing="ij")
    k = {g.gid: grid for g, grid in zip(groups, grids)}
    total = np.zeros_like(grids[0])
    for layer in costs.layers:
        out = layer.out_factor * sum(k.get(g, n) if g is not None else n for g, n in layer.out_segments)
        cin = sum(k.get(g, n) if g is not None else n for g, n in layer.in_segments)
        weights = out * layer.per_pair if layer.depthwise else out * cin * layer.per_pair
        if metric == "params":
            total = total + weights + (out if layer.bias else 0) + layer.extra_params
        else:
            total = total + weights * layer.spatial
    full = costs.total(metric)
    # the grid evaluation agrees with the package's cost model at the full counts
    assert int(total[tuple(-1 for _ in groups)]) == full
    removed = 1.0 - total / full
    return bool(np.any((removed >= target) & (removed <= target + width)))


TARGETS = [("sparsity", 0.5, "params"), ("flops_reduction", 0.3, "macs")]


_RUNS: dict = {}


def _target_run(name: str, method: str, kind: str, target: float, calib):
    """One pruning run per (model, method, target), shared by the target tests; any channel
    count allowed (``round_to=1``), so that the targets can be met to the point."""
    key = (name, method, kind, target)
    if key not in _RUNS:
        build = {"wide_cnn": wide_cnn, "residual": residual}[name]
        _RUNS[key] = (build(), prune(build(), calib, method=method, round_to=1, **{kind: target}))
    return _RUNS[key]


# entropic runs on the residual model: its solver is slow on the 512-feature Gemm of wide_cnn
TARGET_RUNS = [("wide_cnn", "l1"), ("wide_cnn", "random"), ("residual", "entropic")]


@pytest.mark.parametrize("name,method", TARGET_RUNS)
@pytest.mark.parametrize("kind,target,metric", TARGETS)
def test_global_target_is_met_and_lands_just_past_it(kind, target, metric, name, method, calib, test_x):
    """The removed fraction reaches the target, matches the cost model of the kept counts,
    and no single channel could be given back without missing the target (the allocator's
    documented give-back step)."""
    model, result = _target_run(name, method, kind, target, calib)
    assert_valid(result.model, model, test_x)
    removed = result.report[metric]["removed_fraction"]
    assert removed >= target
    analysis, costs = _costs(model, calib)
    keep = {g["id"]: g["channels_after"] for g in result.report["groups"]}
    full = costs.total(metric)
    assert removed == pytest.approx(1 - costs.total(metric, keep) / full, abs=1e-6)
    for g in analysis.prunable_groups():
        if keep[g.gid] < g.channels:
            back = {**keep, g.gid: keep[g.gid] + 1}
            assert 1 - costs.total(metric, back) / full < target, f"group {g.gid} could keep one more channel"


@pytest.mark.parametrize("kind,target,metric", [
    ("sparsity", 0.5, "params"),
    ("flops_reduction", 0.3, "macs"),
])
def test_global_target_within_one_point_when_granularity_allows(kind, target, metric, calib):
    model, result = _target_run("wide_cnn", "l1", kind, target, calib)
    analysis, costs = _costs(wide_cnn(), calib)
    assert _best_window_exists(analysis, costs, metric, target)
    removed = result.report[metric]["removed_fraction"]
    assert target <= removed <= target + 0.01


def test_keep_count_steps():
    assert budget.step(100, 8) == 8 and budget.step(100, 8, unit=4) == 8 and budget.step(100, 6, unit=4) == 12
    assert budget.step(64) == budget.AUTO_ROUND and budget.step(63) == 1 and budget.step(32, unit=4) == 4
    assert budget.step(512, 1) == 1 and budget.step(512, conv=False) == 1 and budget.step(512, 4, conv=False) == 4
    assert list(budget.levels(100, 8)) == [8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]
    assert list(budget.levels(6, 8)) == [6]
    assert budget.uniform_counts({0: 100, 1: 20}, 0.5, {0: 8}) == {0: 48, 1: 10}


def test_wide_conv_groups_keep_multiples_of_eight_by_default(calib):
    """Without --round-to, the 64-channel conv group keeps a multiple of 8, the narrower
    conv group and the 80-wide Gemm group any count; --round-to 1 lifts it."""
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(16, 64, 80))
    steps = {}
    for round_to in (None, 1):
        result = prune(model, calib, flops_reduction=0.5, round_to=round_to)
        groups = {g["channels_before"]: g for g in result.report["groups"] if "step" in g}
        steps[round_to] = {c: g["step"] for c, g in groups.items()}
        assert all(g["channels_after"] % g["step"] == 0 or g["channels_after"] == c for c, g in groups.items())
        assert result.report["round_to"] == ("auto" if round_to is None else 1)
    assert steps[None] == {16: 1, 64: 8, 80: 1} and steps[1] == {16: 1, 64: 1, 80: 1}


def test_unreachable_target_is_an_error(calib):
    # only the conv2 group of this model can shrink: 90% of its parameters cannot go
    with pytest.raises(EPruneError, match="out of reach"):
        prune(intermediate_output(), calib, sparsity=0.9)


@pytest.mark.parametrize("kw", [dict(sparsity=1.2), dict(sparsity=-0.1), dict(flops_reduction=1.0),
                                dict(keep_ratio=0.0), dict(keep_ratio=1.5), dict(sparsity=float("nan")),
                                dict(sparsity=0.5, keep_ratio=0.5), dict(), dict(keep_ratio=0.5, method="magic"),
                                dict(keep_ratio=0.5, mode="both"), dict(keep_ratio=0.5, samples=0)])
def test_bad_options_are_usage_errors(kw, calib):
    with pytest.raises(UsageError):
        prune(conv_bn_relu_pool_flatten_gemm(True), calib, **kw)


# -- methods and modes -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("method", METHODS)
def test_methods_and_modes_give_valid_models(method, mode, calib, test_x):
    original = residual()
    result = prune(original, calib, sparsity=0.4, method=method, mode=mode)
    got = assert_valid(result.model, original, test_x)
    assert count_params(result.model) < count_params(original)
    assert result.report["method"] == method and result.report["mode"] == mode
    assert result.report["params"]["removed_fraction"] >= 0.4
    # a pruned network is still close to the original on held-out inputs
    assert relative_error(run_model(original, test_x)["y"], got["y"]) < 1.0


def test_entropic_beats_random_on_calibration_fidelity(calib):
    original = residual()
    err = {m: prune(original, calib, keep_ratio=0.5, method=m).report["fidelity_on_calibration"]["outputs"]["y"]
           ["relative_error"] for m in ("entropic", "random")}
    assert err["entropic"] <= err["random"]


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_only_the_sequential_first_pass_path_runs_fewer_alternations(mode, calib, monkeypatch):
    """The sequential allocation's path only draws error curves and the stages' starting
    points (``curve_wide``); one-shot keeps that path's ranking, and the stages select."""
    from onnx_eprune import pipeline
    from onnx_eprune.select.entropic import EntropicConfig
    seen = []
    real = pipeline.entropic.ranking

    def ranking(terms, cfg=None, **kw):
        seen.append(cfg.wide)
        return real(terms, cfg, **kw)

    monkeypatch.setattr(pipeline.entropic, "ranking", ranking)   # select() ranks through it too
    prune(residual(), calib, sparsity=0.4, method="entropic", mode=mode,
          entropic=EntropicConfig(wide=6, curve_wide=2))
    # sequential: the allocation's paths narrowed, the stages' not; one-shot: none narrowed
    assert set(seen) == ({2, 6} if mode == "sequential" else {6})


@pytest.mark.parametrize("build,method,mode", [("residual", "entropic", "sequential"),
                                               ("residual", "entropic", "oneshot"),
                                               ("cnn_folded", "random", "oneshot"), ("cnn_folded", "l1", "sequential")])
def test_same_seed_gives_identical_bytes(build, method, mode, calib):
    runs = [prune(ALL_BUILDERS[build](), calib, sparsity=0.4, method=method, mode=mode, seed=3)
            for _ in range(2)]
    a, b = (r.model.SerializeToString(deterministic=True) for r in runs)
    assert a == b


def test_prune_does_not_modify_the_input_model(calib):
    for build in (ALL_BUILDERS["cnn_constants"], ALL_BUILDERS["residual"]):
        model = build()
        before = model.SerializeToString(deterministic=True)
        prune(model, calib, keep_ratio=0.5, reconstruct=False)
        prune(model, calib, keep_ratio=1.0, mode="oneshot")
        assert model.SerializeToString(deterministic=True) == before


def test_prune_does_not_modify_the_input_file(calib, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(path))
    before = path.read_bytes()
    prune(str(path), calib, keep_ratio=0.5)
    assert path.read_bytes() == before


def test_calibration_forms_agree(calib, tmp_path):
    np.save(tmp_path / "c.npy", calib)
    np.savez(tmp_path / "c.npz", x=calib)
    model = conv_bn_relu_pool_flatten_gemm(True)
    outs = [prune(model, src, keep_ratio=0.5, mode="oneshot").model.SerializeToString(deterministic=True)
            for src in (calib, {"x": calib}, str(tmp_path / "c.npy"), tmp_path / "c.npz")]
    assert all(o == outs[0] for o in outs[1:])


def test_samples_limits_calibration(calib):
    result = prune(conv_bn_relu_pool_flatten_gemm(True), calib, keep_ratio=0.5, samples=20, batch_size=8)
    assert result.report["samples"] == 20


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_batches_shrink_to_the_memory_budget(calib, mode, monkeypatch, caplog):
    """A batch whose tensors would exceed the budget (high-resolution inputs) is cut down,
    here to one sample, with a line saying so; the pruning is that of --batch-size 1. The
    validation compares as many samples as its own budget holds."""
    import logging
    from onnx_eprune import pipeline
    from onnx_eprune.calibrate import session

    model = residual()
    one = prune(model, calib, sparsity=0.4, mode=mode, batch_size=1)
    monkeypatch.setattr(session, "BATCH_BYTES", 1)
    monkeypatch.setattr(pipeline, "VALIDATION_BYTES", 1)
    with caplog.at_level(logging.DEBUG, logger="onnx_eprune"):
        auto = prune(model, calib, sparsity=0.4, mode=mode)
    assert "calibration runs 1 sample(s) at a time: 64 would fetch" in caplog.text
    assert auto.model.SerializeToString(deterministic=True) == one.model.SerializeToString(deterministic=True)
    assert auto.report["fidelity_on_calibration"]["samples"] == 1
    assert one.report["fidelity_on_calibration"]["samples"] == min(pipeline.VALIDATION_SAMPLES, len(calib))


def test_report_contents(calib):
    result = prune(ALL_BUILDERS["residual"](), calib, sparsity=0.3, method="l1")
    r = result.report
    for key in ("params", "macs", "groups", "provider", "seconds", "method", "mode", "target", "seed",
                "fidelity_on_calibration"):
        assert key in r
    assert r["provider"] == "CPUExecutionProvider"
    assert r["target"] == {"kind": "sparsity", "value": 0.3}
    assert r["prunable_groups"] == 2
    for part in ("params", "macs"):
        assert set(r[part]) == {"before", "after", "removed_fraction"}
        assert r[part]["removed_fraction"] == pytest.approx(1 - r[part]["after"] / r[part]["before"], abs=1e-6)
    assert r["seconds"]["total"] >= 0
    fid = r["fidelity_on_calibration"]["outputs"]["y"]
    assert 0.0 <= fid["top1_agreement"] <= 1.0 and fid["relative_error"] >= 0.0


@pytest.mark.parametrize("mode,target", [("sequential", {"sparsity": 0.3}), ("oneshot", {"sparsity": 0.3}),
                                         ("sequential", {"keep_ratio": 0.5})])
def test_reported_fidelity_is_that_of_the_saved_model(calib, mode, target):
    # the original's outputs come from the statistics pass (in batches) when there is one,
    # from a run of the original otherwise (keep-ratio sequential has no such pass)
    original = ALL_BUILDERS["residual"]()
    result = prune(original, calib, mode=mode, batch_size=8, **target)
    ref, got = run_model(original, calib)["y"], run_model(result.model, calib)["y"]
    fid = result.report["fidelity_on_calibration"]
    assert fid["samples"] == len(calib)
    want = np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64))
    assert fid["outputs"]["y"]["relative_error"] == pytest.approx(want, rel=1e-4)
    assert fid["outputs"]["y"]["top1_agreement"] == np.mean(got.argmax(1) == ref.argmax(1))


def test_model_without_prunable_group_is_an_error(calib):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(EPruneError, match="no prunable channel group"):
        prune(model, calib, keep_ratio=0.5)


# -- regressions, pinned at the level where they happened -----------------------------------

def _analysis(model, calib):
    constants_to_initializers(model)
    return probe_groups(model, {"x": calib[:1]}, CPU)[1]


def test_rewrite_updates_depthwise_group_attribute(calib, test_x):
    model = depthwise()
    analysis = _analysis(model, calib)
    g = next(g for g in analysis.groups if g.prunable and model.graph.node[g.producers[0].node].name == "conv1")
    pruned = build_pruned(model, analysis, {g.gid: np.arange(4)}, {})
    assert initializer(pruned, "dw.weight").shape == (4, 1, 3, 3)
    group = next(a.i for a in node_by_name(pruned, "dw").attribute if a.name == "group")
    assert group == 4
    run_model(pruned, test_x)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", [dict(keep_ratio=0.4), dict(keep_ratio=0.6, round_to=8), dict(flops_reduction=0.6)])
def test_grouped_conv_loses_whole_groups(method, kw, calib, test_x):
    """ResNeXt's grouped Conv (4 groups of 4 channels) keeps whole groups, at the channels
    that conv1 keeps, and counts them in its ``group`` attribute."""
    model = grouped()
    result = prune(model, calib, method=method, **kw)
    assert_valid(result.model, model, test_x)
    weight = initializer(result.model, "grouped.weight")
    kept = weight.shape[0]
    assert kept % 4 == 0 and 0 < kept <= 16 and weight.shape[1] == 4
    if "keep_ratio" in kw:
        assert kept == (8 if "round_to" in kw else 4)
    group = next(a.i for a in node_by_name(result.model, "grouped").attribute if a.name == "group")
    assert group == kept // 4
    assert initializer(result.model, "conv1.weight").shape[0] == kept
    original = initializer(model, "grouped.weight")
    blocks = [b for b in range(4) if any(np.array_equal(original[4 * b:4 * b + 4], weight[i:i + 4])
                                          for i in range(0, kept, 4))]
    assert len(blocks) == kept // 4  # whole original groups, unchanged


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_reported_params_are_the_written_models(name, calib):
    """The report's parameter counts are those of the weighted layers in the files, before
    and after pruning: a grouped Conv's weight counted once (its bias doubled it before),
    the bias a re-fit gives a Conv without one (BatchNormalization not folded) or a MatMul
    counted."""
    def weighted_params(m: onnx.ModelProto) -> int:  # Conv / ConvTranspose / Gemm / MatMul weights and biases
        m = onnx.ModelProto.FromString(m.SerializeToString())
        constants_to_initializers(m)
        sizes = {i.name: int(np.prod(i.dims)) for i in m.graph.initializer}
        return sum(sizes.get(name, 0) for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                   for name in n.input[1:])

    model = ALL_BUILDERS[name]()
    # a sequential run also re-fits (and biases) consumers whose own inputs stay whole
    for kw in (dict(keep_ratio=0.5), dict(flops_reduction=0.4), dict(keep_ratio=0.5, mode="oneshot")):
        result = prune(model, calib, **kw)
        assert result.report["params"]["before"] == weighted_params(model)
        assert result.report["params"]["after"] == weighted_params(result.model), kw


def test_channel_multiplier_goes_with_its_input_channel(calib, test_x):
    """Pruning input channel c of a depthwise Conv with multiplier m removes its outputs
    m*c .. m*c + m - 1, their BatchNormalization entries and the next Conv's input
    columns; without re-fits the result equals the original whose dropped channels are
    zero (filters, biases and BN shifts zeroed so that nothing reaches the next Conv)."""
    model = depthwise_multiplier(width=6, multiplier=3)
    analysis = _analysis(model, calib)
    g = next(g for g in analysis.groups if g.prunable and model.graph.node[g.producers[0].node].name == "conv1")
    keep = np.array([0, 2, 5])
    drop = np.array([1, 3, 4])
    pruned = build_pruned(model, analysis, {g.gid: keep}, {})
    onnx.checker.check_model(pruned, full_check=True)
    outputs = _blocks(keep, 3)
    original_dw = initializer(model, "dw.weight")
    assert np.array_equal(initializer(pruned, "dw.weight"), original_dw[outputs])
    assert next(a.i for a in node_by_name(pruned, "dw").attribute if a.name == "group") == 3
    assert np.array_equal(initializer(pruned, "conv2.weight"), initializer(model, "conv2.weight")[:, outputs])
    assert initializer(pruned, "dw_bn.scale").shape == (9,)

    dropped_outputs = _blocks(drop, 3)
    silenced = zeroed(model, {"conv1.weight": drop, "conv1.bias": drop, "dw.bias": dropped_outputs,
                             "dw_bn.shift": dropped_outputs, "dw_bn.mean": dropped_outputs})
    np.testing.assert_allclose(run_model(pruned, test_x)[OUTPUT], run_model(silenced, test_x)[OUTPUT],
                               rtol=1e-5, atol=1e-5)


def _blocks(channels: np.ndarray, m: int) -> np.ndarray:
    """Rows m*c .. m*c + m - 1 of every channel c."""
    return (m * channels[:, None] + np.arange(m)).reshape(-1)


def test_per_feature_constant_after_flatten_goes_with_its_channel(calib, test_x):
    """A constant of one entry per flattened feature loses the 64 entries of every dropped
    channel; without re-fits the result equals the original with those channels' filters
    and constant entries zero."""
    model = flatten_bias()
    analysis = _analysis(model, calib)
    g = next(g for g in analysis.groups if g.prunable)
    keep, drop = np.array([0, 2]), np.array([1, 3])
    pruned = build_pruned(model, analysis, {g.gid: keep}, {})
    onnx.checker.check_model(pruned, full_check=True)
    assert np.array_equal(initializer(pruned, "feature_bias"), initializer(model, "feature_bias")[_blocks(keep, 64)])
    silenced = zeroed(model, {"conv1.weight": drop, "conv1.bias": drop, "feature_bias": _blocks(drop, 64)})
    np.testing.assert_allclose(run_model(pruned, test_x)[OUTPUT], run_model(silenced, test_x)[OUTPUT],
                               rtol=1e-5, atol=1e-5)


def test_outputs_added_to_a_multiplier_go_in_blocks(calib, test_x):
    """An ordinary Conv whose outputs are added to a channel multiplier's loses them in
    blocks: dropping channel c of conv1 removes rows 2c, 2c+1 of pw (added to the 2
    outputs per channel of dw7 + dw3) and rows 4c .. 4c+3 of wide (added to dwm's 4 per
    channel); without re-fits the result equals the original whose dropped entries are
    zero wherever an ordinary Conv or the Gemm reads them."""
    model = multiplier_sum(width=4)
    analysis = _analysis(model, calib)
    g = next(g for g in analysis.groups if g.prunable)
    assert {model.graph.node[p.node].name: p.factor for p in g.producers} == {"conv1": 1, "pw": 2, "wide": 4}
    keep, drop = np.array([1, 2]), np.array([0, 3])
    pruned = build_pruned(model, analysis, {g.gid: keep}, {})
    onnx.checker.check_model(pruned, full_check=True)
    two, four = _blocks(keep, 2), _blocks(keep, 4)
    assert np.array_equal(initializer(pruned, "pw.weight"), initializer(model, "pw.weight")[two][:, two])
    assert np.array_equal(initializer(pruned, "wide.weight"), initializer(model, "wide.weight")[four][:, two])
    assert np.array_equal(initializer(pruned, "dwm.weight"), initializer(model, "dwm.weight")[four])
    assert initializer(pruned, "layer_scale").shape == (8, 1, 1)
    assert initializer(pruned, OUTPUT + ".weight").shape == (10, 8)

    two_off, four_off = _blocks(drop, 2), _blocks(drop, 4)
    silenced = zeroed(model, {"conv1.weight": drop, "conv1.bias": drop, "dw7.bias": two_off, "dw3.bias": two_off,
                             "identity_bn.shift": two_off, "identity_bn.mean": two_off, "pw.weight": two_off,
                             "pw.bias": two_off, "dwm.bias": four_off, "wide.weight": four_off, "wide.bias": four_off})
    np.testing.assert_allclose(run_model(pruned, test_x)[OUTPUT], run_model(silenced, test_x)[OUTPUT],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("kw", [dict(keep_ratio=0.5), dict(flops_reduction=0.5), dict(sparsity=0.6)])
def test_multiplier_sums_are_pruned_and_refitted(mode, kw, calib, test_x):
    model = multiplier_sum(width=4)
    result = prune(model, calib, mode=mode, **kw)
    assert_valid(result.model, model, test_x)
    kept = initializer(result.model, "conv1.weight").shape[0]
    assert kept < 4
    assert initializer(result.model, "pw.weight").shape[:2] == (2 * kept, 2 * kept)
    assert initializer(result.model, "wide.weight").shape[:2] == (4 * kept, 2 * kept)
    assert initializer(result.model, "dwm.weight").shape[0] == 4 * kept
    # the re-fit recovers most of what the same channels lose without it
    plain = prune(model, calib, mode=mode, reconstruct=False, **kw).model
    error = relative_error(run_model(result.model, test_x)[OUTPUT], run_model(model, test_x)[OUTPUT])
    assert error < 0.25 * relative_error(run_model(plain, test_x)[OUTPUT], run_model(model, test_x)[OUTPUT])


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("kw", [dict(keep_ratio=0.5), dict(flops_reduction=0.5), dict(sparsity=0.6)])
def test_channel_multiplier_is_pruned_and_refitted(mode, kw, calib, test_x):
    model = depthwise_multiplier(width=6, multiplier=3)
    result = prune(model, calib, mode=mode, **kw)
    assert_valid(result.model, model, test_x)
    kept = initializer(result.model, "conv1.weight").shape[0]
    assert initializer(result.model, "dw.weight").shape == (3 * kept, 1, 3, 3)
    assert next(a.i for a in node_by_name(result.model, "dw").attribute if a.name == "group") == kept
    assert initializer(result.model, "conv2.weight").shape[1] == 3 * kept
    if "keep_ratio" in kw:
        assert kept == 3
    # the re-fit keeps the pruned network close to the original
    assert relative_error(run_model(result.model, test_x)[OUTPUT], run_model(model, test_x)[OUTPUT]) < 0.2


def test_depthwise_conv_transpose_follows_its_input(calib, test_x):
    model = depthwise_upsample()
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    assert initializer(result.model, "up.weight").shape == (4, 1, 4, 4)
    assert next(a.i for a in node_by_name(result.model, "up").attribute if a.name == "group") == 4
    assert initializer(result.model, "conv1.weight").shape[0] == 4


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_channels_last_constants_and_concat_follow_their_channels(mode, calib, test_x):
    """In TensorFlow's NHWC stretches a per-channel constant ([C], broadcast on the last
    axis) and a Concat on axis 3 follow the pruned channels."""
    model = channels_last()
    result = prune(model, calib, keep_ratio=0.5, mode=mode)
    assert_valid(result.model, model, test_x)
    kept = initializer(result.model, "conv1.weight").shape[0]
    assert kept == 4 and initializer(result.model, "conv1.bias_nhwc").shape == (kept,)
    assert initializer(result.model, "conv3.weight").shape[1] == kept + initializer(result.model,
                                                                                    "conv2.weight").shape[0]


def test_se_unflatten_target_follows_the_channels(calib, test_x):
    model = se_unflatten()
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    assert list(initializer(result.model, "se_shape")) == [-1, 4, 1, 1]


def test_rewrite_slices_added_bias_with_the_output(calib, test_x):
    """Re-fit a bias-free Conv (the second conv, before BN) and prune its output group too."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    analysis = _analysis(model, calib)
    g1, g2 = sorted((g for g in analysis.groups if g.prunable and
                     model.graph.node[g.producers[0].node].op_type == "Conv"), key=lambda g: g.producers[0].node)
    cidx = g1.consumers[0]
    cons = analysis.consumers[cidx]
    assert cons.bias is None
    keep1 = np.arange(0, 8, 2)
    inits = {i.name: i for i in model.graph.initializer}
    theta, bias = consumer_matrix(inits, cons)
    cols = (keep1[:, None] * cons.s + np.arange(cons.s)).reshape(-1)
    refit = Refit(theta[:, cols], bias)            # original rows: 16 outputs
    pruned = build_pruned(model, analysis, {g1.gid: keep1, g2.gid: np.arange(8)}, {cidx: refit})
    conv = model.graph.node[cons.node]
    new_bias = initializer(pruned, node_by_name(pruned, conv.name).input[2])
    assert new_bias.shape == (8,)
    run_model(pruned, test_x)


def test_sequential_refit_of_biasless_consumer(calib):
    prune(conv_bn_relu_pool_flatten_gemm(False), calib, keep_ratio=1.0, mode="sequential")


def test_oneshot_matmul_refit_then_output_pruned(calib, test_x):
    from models import gemm_matmul

    result = prune(gemm_matmul(), calib, keep_ratio=0.5, mode="oneshot")
    run_model(result.model, test_x)


def test_biasless_consumers_without_reconstruction(calib, test_x):
    """Without the re-fit no bias is added: bias-free consumers are sliced only."""
    for name in BIASLESS_CONSUMER:
        original = ALL_BUILDERS[name]()
        for mode in ("sequential", "oneshot"):
            result = prune(original, calib, keep_ratio=0.5, mode=mode, reconstruct=False)
            assert_valid(result.model, original, test_x)




@pytest.mark.skipif(os.name != "posix", reason="processes are probed with signal 0")
def test_scratch_folders_of_killed_runs_are_removed(tmp_path, monkeypatch):
    """A run killed for memory cannot remove its scratch folder; the next run on the host
    that writes scratch files removes it, and leaves those of live processes, of other hosts
    and of other names alone."""
    import socket
    import subprocess
    import sys
    import tempfile
    from onnx_eprune.calibrate.engine import CacheSpace

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = socket.gethostname()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    names = [f"onnx-eprune-cache-{gone}@{host}@a1", f"onnx-eprune-cache-{os.getppid()}@{host}@b2",
             f"onnx-eprune-cache-{gone}@{host}x@c3", "onnx-eprune-cache-d4"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.bin").write_bytes(b"cached")
    space = CacheSpace(0, 1 << 20)
    path = space.new_file()
    assert [n for n in names if (tmp_path / n).exists()] == names[1:]
    assert os.path.basename(os.path.dirname(path)).startswith(f"onnx-eprune-cache-{os.getpid()}@{host}@")
    space.close()
    assert not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("memory,disk", [(1 << 30, 0), (0, 1 << 30)])
def test_cached_network_keeps_values_when_read_in_step_with_another(calib, memory, disk):
    """The sequential stages read two networks batch by batch in step (``next()`` on one
    per batch of the other): the values must be cached after the last batch even though
    that generator is never exhausted, so later stages do not recompute them; in memory or,
    past the memory budget, in scratch files that go when the run ends."""
    from onnx_eprune.calibrate.data import CalibrationData
    from onnx_eprune.calibrate.engine import CacheSpace, CachedNetwork, Topology

    model = conv_bn_relu_pool_flatten_gemm(True)
    constants_to_initializers(model)
    data = CalibrationData({"x": calib})
    space = CacheSpace(memory, disk)
    net = CachedNetwork(model, Topology(model), data, ["CPUExecutionProvider"], batch_size=16, space=space)
    target = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    it = net.compute([target])
    values = [next(it)[target] for _ in range(data.batch_count(16))]
    assert target in net.cache and len(net.cache[target]) == len(values)
    assert (net.cache[target].file is None) == (disk == 0)
    np.testing.assert_array_equal(np.concatenate(list(net.cache[target])), np.concatenate(values))
    # channel slicing keeps the values where they are
    net.update(model, set(), {target: lambda v: v[:, :2]})
    np.testing.assert_array_equal(np.concatenate(list(net.cache[target])), np.concatenate(values)[:, :2])
    path = net.cache[target].file and net.cache[target].file.path
    space.close()
    assert path is None or not os.path.exists(path)


def test_cached_network_without_room_computes_again(calib):
    from onnx_eprune.calibrate.data import CalibrationData
    from onnx_eprune.calibrate.engine import CacheSpace, CachedNetwork, Topology

    model = conv_bn_relu_pool_flatten_gemm(True)
    constants_to_initializers(model)
    net = CachedNetwork(model, Topology(model), CalibrationData({"x": calib}), ["CPUExecutionProvider"],
                        batch_size=16, space=CacheSpace(0, 0))
    target = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    first = np.concatenate([v[target] for v in net.compute([target])])
    assert not net.cache
    np.testing.assert_array_equal(np.concatenate([v[target] for v in net.compute([target])]), first)


def test_cached_network_keeps_the_frontier_of_a_stage(calib):
    """A sequential stage that computes the input of conv b also caches the stem's output,
    which the residual Add outside that sub-graph reads: the next stage starts there, not
    at the graph input, and gets the values of a whole run. Tensors outside the allowed
    frontier (those whose layout the caller could not slice) are never kept."""
    from onnx_eprune.calibrate.data import CalibrationData
    from onnx_eprune.calibrate.engine import CacheSpace, CachedNetwork, Topology, submodel

    model = residual()
    constants_to_initializers(model)
    topo = Topology(model)
    stem = node_by_name(model, "stem").output[0]
    r = next(n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] == stem)
    a_in = node_by_name(model, "conv_b").input[0]
    add = node_by_name(model, "add").output[0]
    data = CalibrationData({"x": calib})
    for frontier, cached, nodes in (({r, a_in, add}, {a_in, r}, 2), ({a_in, add}, {a_in}, 4)):
        net = CachedNetwork(model, topo, data, ["CPUExecutionProvider"], batch_size=16,
                            space=CacheSpace(1 << 30, 0), frontier=frontier)
        list(net.compute([a_in]))
        assert set(net.cache) == cached
        sub, feeds = submodel(model, topo, [add], {t: np.float32 for t in net.cache})
        assert len(sub.graph.node) == nodes and [n.name for n in sub.graph.node][-2:] == ["conv_b", "add"]
        assert set(feeds) - {"x"} == cached
    got = np.concatenate([v[add] for v in net.compute([add])])
    np.testing.assert_allclose(got, run_model_outputs(model, calib, add), rtol=1e-5, atol=1e-6)


def test_sessions_sharing_initializers_compute_the_same_bytes(calib, monkeypatch):
    """Sessions that take a model's initializers as shared values (the output gains' runs of
    the rest of the network, one session per group) compute exactly what sessions of the
    serialised model compute, on the whole graph and on a sub-graph, and leave the model
    as it was."""
    from onnx_eprune.calibrate import session
    from onnx_eprune.calibrate.engine import Topology, submodel

    monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)   # the test model's weights are small
    model = conv_bn_relu_pool_flatten_gemm(True)
    before = model.SerializeToString()
    shared = session.shared_initializers(model)
    sizes = {i.name: i.ByteSize() for i in model.graph.initializer}
    assert shared and set(shared) == {name for name, size in sizes.items() if size >= 256}
    cpu = ["CPUExecutionProvider"]
    inner = model.graph.node[3].output[0]
    feeds = {model.graph.input[0].name: calib[:16]}
    plain = session.run(session.make_session(model, cpu, outputs=[OUTPUT, inner]), None, feeds)
    given = session.run(session.make_session(model, cpu, outputs=[OUTPUT, inner], shared=shared), None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(plain, given))
    sub, sub_feeds = submodel(model, Topology(model), [OUTPUT], {inner: np.dtype(np.float32)})
    assert sub_feeds == [inner]
    rest = [session.run(session.make_session(sub, cpu, shared=s), None, {inner: plain[1]}) for s in (None, shared)]
    assert np.array_equal(rest[0][0], rest[1][0]) and np.array_equal(rest[0][0], plain[0])
    assert model.SerializeToString() == before


def test_submodel_recomputes_shape_tensors_instead_of_feeding_them():
    """A Resize whose ``sizes`` concatenates the resized tensor's own shape with a cached
    shape tensor does not load in onnxruntime when that cached tensor is fed (its length
    unknown; torchvision's segmentation heads): sub-models feed only floating-point tensors
    and compute integer ones again from the graph inputs."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx_eprune.calibrate.engine import Topology, submodel
    from onnx_eprune.calibrate.session import make_session, run

    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              [("zero", [0]), ("two", [2]), ("hw", [2, 3])]]
    nodes = [helper.make_node("Shape", ["h"], ["shape"]),
             helper.make_node("Gather", ["shape", "hw"], ["spatial"]),
             helper.make_node("Mul", ["spatial", "two"], ["doubled"]),
             helper.make_node("Slice", ["shape", "zero", "two", "zero"], ["head"]),
             helper.make_node("Concat", ["head", "doubled"], ["sizes"], axis=0),
             helper.make_node("Resize", ["h", "", "", "sizes"], ["y"], mode="linear")]
    model = helper.make_model(helper.make_graph(nodes, "g", [h], [y], consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sub, feeds = submodel(model, Topology(model), ["y"], {"doubled": np.dtype(np.int64)})
    assert feeds == ["h"]
    x = np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)
    (out,) = run(make_session(sub, CPU), None, {"h": x})
    assert out.shape == (2, 4, 16, 16)


@pytest.mark.parametrize("budget", [None, 20_000])
def test_output_gains_match_noise_added_inside_the_whole_network(calib, budget, monkeypatch):
    """Each group's gain, measured from the nearest clean tensors, equals the relative
    output error of the whole network with the same noise added at the group's tensors;
    also when the tensors the runs start from fit a batch of a few images only (the channels'
    spread then comes from every batch, and the start tensors from the cache space)."""
    from onnx import numpy_helper
    from onnx_eprune.calibrate import session
    from onnx_eprune.calibrate.data import CalibrationData
    from onnx_eprune.calibrate.engine import CacheSpace, Topology
    from onnx_eprune.calibrate.sensitivity import output_gains

    model = residual()
    constants_to_initializers(model)
    data = CalibrationData({"x": calib})
    tensors = {0: [node_by_name(model, "conv_a").output[0]], 1: [node_by_name(model, "conv_b").output[0]],
               2: [node_by_name(model, "stem").output[0]]}
    delta = 0.05
    if budget is not None:
        monkeypatch.setattr(session, "BATCH_BYTES", budget)
    shapes = session.probe_shapes(model, {"x": calib[:1]}, CPU)
    space = CacheSpace(budget or 1 << 30, 1 << 30)
    gains = output_gains(model, Topology(model), data, CPU, tensors, shapes, space, delta=delta, seed=3)
    assert space.memory_left == (budget or 1 << 30) and space.disk_left == 1 << 30  # handed back
    space.close()
    keys = data.keys()
    ref = run_model(model, calib)[OUTPUT].astype(np.float64)
    for gid, (t,) in tensors.items():
        z = run_model_outputs(model, calib, t)
        std = z.std(axis=(0, 2, 3), keepdims=True)
        noise = np.stack([np.random.default_rng([3, gid, int(k)]).standard_normal(z.shape[1:]) for k in keys])
        noisy = onnx.ModelProto()
        noisy.CopyFrom(model)
        for node in noisy.graph.node:
            node.input[:] = [f"{t}_noisy" if i == t else i for i in node.input]
        noisy.graph.initializer.append(numpy_helper.from_array((delta * std * noise).astype(np.float32), "noise"))
        at = next(i for i, n in enumerate(noisy.graph.node) if t in n.output) + 1
        noisy.graph.node.insert(at, onnx.helper.make_node("Add", [t, "noise"], [f"{t}_noisy"]))
        out = run_model(noisy, calib)[OUTPUT].astype(np.float64)
        expected = np.sum(np.mean((out - ref) ** 2, axis=0)) / np.sum(np.var(ref, axis=0)) / delta ** 2
        assert gains[gid] == pytest.approx(expected, rel=1e-3)


def run_model_outputs(model: onnx.ModelProto, x: np.ndarray, name: str) -> np.ndarray:
    """The values of tensor ``name`` of ``model`` on ``x``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.ValueInfoProto(name=name))
    return run_model(m, x)[name]


def test_float16_model_is_pruned_in_its_own_dtype(calib):
    """A half-precision model (weights, input and output): statistics and re-fit run in
    float32/float64, the written weights stay float16, and keep-ratio 1.0 gives the same
    outputs to half-precision accuracy."""
    from onnx import TensorProto, numpy_helper

    model = conv_bn_relu_pool_flatten_gemm(True)
    for i, init in enumerate(model.graph.initializer):
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float16), init.name))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    x = calib.astype(np.float16)
    pruned = onnx_eprune.prune(model, x, sparsity=0.4, device="cpu").model
    onnx.checker.check_model(pruned, full_check=True)
    assert {numpy_helper.to_array(i).dtype for i in pruned.graph.initializer
            if numpy_helper.to_array(i).dtype.kind == "f"} == {np.dtype(np.float16)}
    same = onnx_eprune.prune(model, x, keep_ratio=1.0, device="cpu").model
    a = run_model(model, x[:16])["y"].astype(np.float32)
    b = run_model(same, x[:16])["y"].astype(np.float32)
    assert relative_error(a, b) < 5e-3


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_model_exported_for_a_fixed_batch_size(calib, batch, mode):
    """An export without dynamic axes fixes the batch (input (b, 3, 16, 16), and the
    flatten as Reshape to [b, -1]): every run feeds b samples at a time (the last piece
    padded: 50 samples are not a multiple of 3), and the pruning equals that of the same
    network with a free batch: same channels, same weights, the input still fixed at b."""
    from onnx import numpy_helper

    free = conv_bn_relu_pool_flatten_gemm(True, flatten="reshape0")
    fixed = conv_bn_relu_pool_flatten_gemm(True, flatten="reshape0")
    for vi in list(fixed.graph.input) + list(fixed.graph.output):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    shape = next(i for i in fixed.graph.initializer if i.name == "flat_shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([batch, -1], np.int64), "flat_shape"))
    x = calib[:50]
    a = prune(free, x, sparsity=0.4, mode=mode, method="entropic")
    b = prune(fixed, x, sparsity=0.4, mode=mode, method="entropic")
    onnx.checker.check_model(b.model, full_check=True)
    assert b.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    assert [g.get("kept_channels") for g in b.report["groups"]] == [g.get("kept_channels") for g in a.report["groups"]]
    weights = {i.name: numpy_helper.to_array(i) for i in a.model.graph.initializer if i.name != "flat_shape"}
    for init in b.model.graph.initializer:
        if init.name in weights:
            np.testing.assert_allclose(numpy_helper.to_array(init), weights[init.name], rtol=1e-4, atol=1e-6)
    got = run_model(b.model, x[:batch])["y"]
    np.testing.assert_allclose(got, run_model(a.model, x[:batch])["y"], rtol=1e-4, atol=1e-5)
    report = onnx_eprune.evaluate(fixed, b.model, x, device="cpu")   # timed at its own batch size
    assert set(report["latency_ms"]["pruned"]) == {f"batch{batch}"}
    assert report["outputs"]["y"]["relative_error"] == pytest.approx(
        onnx_eprune.evaluate(free, a.model, x, device="cpu")["outputs"]["y"]["relative_error"], rel=1e-3)


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_model_without_batch_axis(calib, mode):
    """A detector taking one (3, H, W) image, whose output has one row per detection: the
    calibration holds samples on an extra axis 0 and runs one image at a time, fidelity and
    output sensitivities are measured on the head's raw output (the graph output's length
    depends on the image), and the pruned model takes one image as before; keep-ratio 1.0
    gives back the same detections."""
    model = one_image_detector()
    x = calib[:40]
    result = prune(model, x, sparsity=0.4, mode=mode, method="entropic")
    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.report["fidelity_on_calibration"]["outputs"]) == [node_by_name(model, "head").output[0]]
    assert any(g["channels_after"] < g["channels_before"] for g in result.report["groups"] if not g["frozen"])
    assert [d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim] == [3, 16, 16]
    same = prune(model, x, keep_ratio=1.0).model
    for image in x[:4]:
        np.testing.assert_array_equal(run_model(same, image)["y"], run_model(model, image)["y"])
        run_model(result.model, image)
    report = onnx_eprune.evaluate(model, result.model, x, device="cpu")
    assert list(report["outputs"]) == list(result.report["fidelity_on_calibration"]["outputs"])
    assert set(report["latency_ms"]["pruned"]) == {"batch1"}
    with pytest.raises(UsageError, match=r"\(\?, 3, 16, 16\)"):
        prune(model, x[0])   # one image without its sample axis
    if mode == "sequential":
        (point,) = onnx_eprune.sweep(model, x, [0.4], data=x[:8], device="cpu", method="l1")
        assert list(point.fidelity) == list(report["outputs"])


def test_inspect_and_evaluate_are_functions(tmp_path, calib):
    """``onnx_eprune.inspect`` lists the groups (as the command does) and
    ``onnx_eprune.evaluate`` compares a model with its pruned version."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    summary = onnx_eprune.inspect(model)
    assert summary["prunable_groups"] == 3 and summary["prunable_mac_fraction"] == 1.0
    assert sum(g["prunable"] for g in summary["groups"]) == 3
    pruned = onnx_eprune.prune(model, calib, keep_ratio=1.0, device="cpu", method="l1").model
    result = onnx_eprune.evaluate(model, pruned, calib[:32], device="cpu")
    assert min(o["top1_agreement"] for o in result["outputs"].values()) == 1.0


def test_calibration_from_batches_and_a_data_reader(calib):
    """A Python iterable of batches (arrays or dicts) and an onnxruntime
    CalibrationDataReader give the same model as the stacked array."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)

    model = conv_bn_relu_pool_flatten_gemm(True)
    ref = onnx_eprune.prune(model, calib, sparsity=0.4, device="cpu", method="l1").model
    from_arrays = onnx_eprune.prune(model, (calib[i:i + 10] for i in range(0, len(calib), 10)), sparsity=0.4,
                                    device="cpu", method="l1").model
    from_reader = onnx_eprune.prune(model, Reader(), sparsity=0.4, device="cpu", method="l1").model
    assert from_arrays.SerializeToString() == ref.SerializeToString()
    assert from_reader.SerializeToString() == ref.SerializeToString()
    with pytest.raises(UsageError, match="no batches"):
        onnx_eprune.prune(model, iter([]), sparsity=0.4, device="cpu")


def test_api_refuses_constant_calibration_data():
    """The Python API applies the same value checks as the command line."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    with pytest.raises(UsageError, match="constant"):
        onnx_eprune.prune(model, np.zeros((32, 3, 16, 16), np.float32), sparsity=0.4, device="cpu")


def test_sequential_stages_read_the_recorded_targets_or_compute_them_again(calib, monkeypatch):
    """The one-shot pass records each consumer's target rows for the sequential stages;
    without room for them the stages compute them again from the original network, at the
    same positions: the same model, byte for byte."""
    from onnx_eprune.calibrate.engine import CacheSpace

    model = conv_bn_relu_pool_flatten_gemm(True)
    with_room = onnx_eprune.prune(model, calib, sparsity=0.5).model.SerializeToString()
    monkeypatch.setattr(CacheSpace, "default", classmethod(lambda cls: cls(0, 0)))
    assert onnx_eprune.prune(model, calib, sparsity=0.5).model.SerializeToString() == with_room


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_pixel_pair_statistics_choose_what_the_rows_choose(calib, monkeypatch, mode):
    """With every output position sampled, the second Conv's statistics come from pixel
    pairs; computed from the im2col rows instead they give the same channels and, to
    float32 rounding, the same weights."""
    from onnx_eprune.calibrate.stats import PixelPairAccumulator

    model = conv_bn_relu_pool_flatten_gemm(True)
    built = []
    real_of = PixelPairAccumulator.of

    def counted(cls, *args, **kwargs):
        accumulator = real_of(*args, **kwargs)
        built.append(accumulator is not None)
        return accumulator

    monkeypatch.setattr(PixelPairAccumulator, "of", classmethod(counted))
    pairs = onnx_eprune.prune(model, calib, sparsity=0.5, positions=64, mode=mode).model
    assert any(built)
    monkeypatch.setattr(PixelPairAccumulator, "of", classmethod(lambda cls, *a, **k: None))
    rows = onnx_eprune.prune(model, calib, sparsity=0.5, positions=64, mode=mode).model
    a, b = ({i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer} for m in (pairs, rows))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4 * np.abs(b[name]).max())


def _stage_collects(pruner):
    """Record every ``collect`` of ``pruner``: (label, reduce, channels, statistics)."""
    seen = []
    real_collect = pruner.collect

    def collect(cidxs, orig, pruned, label, record=False, reduce=(), channels=None, subspace=None):
        stats = real_collect(cidxs, orig, pruned, label, record, reduce, channels, subspace)
        seen.append((label, set(reduce), dict(channels or {}), dict(stats)))  # a stage updates its dict
        return stats

    pruner.collect = collect
    return seen


def test_sequential_first_pass_reduces_wide_convolutions(calib):
    """In sequential mode the first pass (statistics for the allocation only) reduces the
    taps of each convolution wider than the solver's feature budget to a few principal
    directions per channel: its statistics are those of the reduced rows. An entropic stage
    reduces them too, then takes the kept channels' exact statistics (every tap) for the
    re-fit; the pruned model is valid and close to the original."""
    from onnx_eprune import pipeline
    from onnx_eprune.select.entropic import EntropicConfig

    model = conv_bn_relu_pool_flatten_gemm(True)
    # the FLOPs target makes the 8-channel group, read by a 72-feature convolution, lose channels
    config = PruneConfig(flops_reduction=0.5, device="cpu", entropic=EntropicConfig(max_features=48))
    pruner = pipeline.Pruner(model, calib, config)
    seen = _stage_collects(pruner)
    result = pruner.run()
    consumers = pruner.analysis.consumers
    assert pruner.bases    # the 8- and 16-channel 3x3 convolutions: 72 and 144 features > 48
    first = seen[0][3]
    for c, bases in pruner.bases.items():
        cons = consumers[c]
        assert cons.spatial and cons.in_channels * cons.s > 48
        assert bases.shape == (cons.in_channels, cons.s, max(1, 48 // cons.in_channels))
        assert first[c].cov.shape[0] == cons.in_channels * bases.shape[2]
    stages = seen[1:]
    reduced = [(c, stats[c]) for _label, reduce, _ch, stats in stages for c in reduce]
    exact = [(c, len(idx), stats[c]) for _label, _r, channels, stats in stages for c, idx in channels.items()]
    assert reduced and exact
    for c, st in reduced:
        assert st.cov.shape[0] == consumers[c].in_channels * pruner.bases[c].shape[2]
    for c, kept, st in exact:   # the kept channels, every tap
        assert kept < consumers[c].in_channels and st.cov.shape[0] == kept * consumers[c].s
    assert {c for c, _st in reduced} == {c for c, _k, _st in exact}
    onnx.checker.check_model(result.model, full_check=True)
    x = calib[:64]
    assert relative_error(run_model(model, x)[OUTPUT], run_model(result.model, x)[OUTPUT]) < 0.5
    # one-shot mode decides on the first pass's statistics: they stay whole
    oneshot = pipeline.Pruner(model, calib, PruneConfig(sparsity=0.5, device="cpu", mode="oneshot",
                                                                 entropic=EntropicConfig(max_features=48)))
    oneshot.run()
    assert not oneshot.bases


class _FullStages:
    lean_stages = False


@pytest.mark.parametrize("method, lean", [("thinet", True), ("entropic", False)])
def test_stages_keep_exact_statistics_for_baselines_and_when_lean_is_off(method, lean, calib):
    """Only the entropic method's stages reduce statistics: a baseline, or a pruner with
    ``lean_stages`` off (the diagnostics in tools/), gets every tap of every channel."""
    from onnx_eprune import pipeline
    from onnx_eprune.select.entropic import EntropicConfig

    cls = pipeline.Pruner if lean else type("Full", (_FullStages, pipeline.Pruner), {})
    pruner = cls(conv_bn_relu_pool_flatten_gemm(True), calib,
                 PruneConfig(flops_reduction=0.5, device="cpu", method=method,
                                      entropic=EntropicConfig(max_features=48)))
    seen = _stage_collects(pruner)
    pruner.run()
    assert pruner.bases and len(seen) > 1
    for _label, reduce, channels, stats in seen[1:]:
        assert not reduce and not channels
        for c, st in stats.items():
            cons = pruner.analysis.consumers[c]
            assert st.cov.shape[0] == cons.in_channels * cons.s


def test_refit_from_kept_channel_statistics_matches_the_full_statistics(calib):
    """The re-fit of a consumer from the statistics of its kept channels alone
    (``collect(..., channels=...)``) is the re-fit from its full statistics."""
    from onnx_eprune import pipeline

    model = conv_bn_relu_pool_flatten_gemm(True)
    pruner = pipeline.Pruner(model, calib, PruneConfig(sparsity=0.5, device="cpu"))
    space = pipeline.CacheSpace(1 << 30, 0)

    def network():
        return pipeline.CachedNetwork(pruner.model, pruner.topo, pruner.data, pruner.providers, 64, space)

    orig, current = network(), network()
    consumers = pruner.analysis.consumers
    spatial = [c for c in pruner._oneshot_consumers()
               if consumers[c].spatial and len(consumers[c].segments) == 1]
    assert spatial
    rng = np.random.default_rng(0)
    keep = {c: np.sort(rng.choice(consumers[c].in_channels, consumers[c].in_channels // 2, replace=False))
            for c in spatial}
    with pruner._blas.limit(limits=1, user_api="blas"):
        full = pruner.collect(spatial, orig, current, "full")
        kept = pruner.collect(spatial, orig, current, "kept", channels=keep)
    for c in spatial:
        g = consumers[c].segments[0][0]
        assert kept[c].cov.shape[0] == len(keep[c]) * consumers[c].s
        a = pruner._refit(c, full[c], {g: keep[c]}, {g})
        b = pruner._refit(c, kept[c], {g: keep[c]}, {g}, kept_only=True)
        np.testing.assert_allclose(b.weight, a.weight, rtol=1e-4, atol=1e-5 * np.abs(a.weight).max())
        np.testing.assert_allclose(b.bias, a.bias, rtol=1e-4, atol=1e-5 * np.abs(a.bias).max())


def test_ranking_by_another_method_matches_that_methods_run(calib):
    """``Pruner.ranking(gid, terms, method)`` (the diagnostics' way to ask one run for another
    method's order) gives the order that a pruner configured with that method draws."""
    from onnx_eprune import pipeline

    model = conv_bn_relu_pool_flatten_gemm(True)
    pruners = {m: pipeline.Pruner(model, calib, PruneConfig(sparsity=0.5, device="cpu", mode="oneshot",
                                                                     method=m))
               for m in ("entropic", "lasso", "l1")}
    entropic = pruners["entropic"]
    gids = [g.gid for g in entropic.analysis.prunable_groups()]
    network = pipeline.CachedNetwork(entropic.model, entropic.topo, entropic.data, entropic.providers, 64,
                                     pipeline.CacheSpace(0, 0))
    terms = entropic.group_terms(gids, entropic.collect(entropic._oneshot_consumers(), network, None, "stats"), {})
    differs = False
    for g in gids:
        lasso = pruners["lasso"].ranking(g, terms[g])
        assert np.array_equal(entropic.ranking(g, terms[g], "lasso"), lasso)
        assert np.array_equal(entropic.ranking(g, [], "l1"), pruners["l1"].ranking(g, []))
        differs |= not np.array_equal(entropic.ranking(g, terms[g]), lasso)
    assert differs  # the configured method is not what answered


def _stream_through_conv() -> onnx.ModelProto:
    """h = Relu(Conv_A(x)) (16 channels); s = h[:, :8] + Relu(Conv_B(h)); t = Relu(Conv_C(s));
    y = Gemm(GAP(s + t)). Conv_B reads both of h's groups and writes into the first one
    (with Conv_C), so the stage of that group re-fits Conv_B and, downstream of it, Conv_C."""
    from models import INPUT, IN_CHANNELS, _Builder

    b = _Builder(seed=0)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 16, name="conv_a")])
    c = b.node("Relu", [b.conv(h, 16, 8, name="conv_b")])
    head = b.node("Slice", [h, b.const("s0", np.array([0])), b.const("s8", np.array([8])),
                            b.const("ax", np.array([1]))])
    s = b.node("Add", [head, c])
    t = b.node("Relu", [b.conv(s, 8, 8, name="conv_c")])
    return b.build(b.gemm(b.gap_flatten(b.node("Add", [s, t])), 8, 10, name=OUTPUT))


def test_sequential_refits_see_the_same_stages_earlier_refits():
    """A consumer downstream of another one re-fitted in the same stage is fitted on
    statistics taken after that re-fit: fitted on the input it was about to lose, it made
    the sequential result 7 times worse than one-shot and worse than no re-fit at all."""
    model = _stream_through_conv()
    x, held_out = random_input(64, seed=0), random_input(256, seed=7)
    ref = run_model(model, held_out)[OUTPUT]
    err = {}
    for name, options in {"sequential": {}, "oneshot": {"mode": "oneshot"}, "sliced": {"reconstruct": False}}.items():
        pruned = onnx_eprune.prune(model, x, sparsity=0.3, device="cpu", **options).model
        err[name] = relative_error(ref, run_model(pruned, held_out)[OUTPUT])
    assert err["sequential"] < err["sliced"] and err["sequential"] <= err["oneshot"], err


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_overflowing_calibration_is_refused_not_written_as_nan():
    """Inputs at 1e20 are finite float32 but overflow inside the network: refused, rather
    than NaN weights in a model that looks written."""
    with pytest.raises(EPruneError, match="not finite"):
        onnx_eprune.prune(residual(), random_input(32) * 1e20, keep_ratio=0.5, device="cpu")


@pytest.mark.parametrize("option, value", [("seed", -1), ("positions", 0), ("batch_size", 0), ("round_to", 0)])
def test_out_of_range_run_options_name_themselves(option, value):
    with pytest.raises(UsageError, match=fr"{option} \(--{option.replace('_', '-')}\) must"):
        onnx_eprune.prune(residual(), random_input(16), keep_ratio=0.5, device="cpu", **{option: value})
