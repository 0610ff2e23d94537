"""Numerical range and the tuning knobs: how far the pruner's arithmetic can be pushed.

What this file attacks (test_degenerate.py already covers dead, twin and rescaled single
channels, few samples at the default positions and float16 weights; test_lapack.py the
LAPACK wrappers; test_exact_removal.py duplicated channels at ``refit_ridge=0``):

* scale: calibration inputs multiplied by 1e-8 ... 1e6 (and powers of two, which scale
  every float operation exactly) in a bias-free ReLU network, where the chosen channels
  and the relative output error must not move; one layer's weights multiplied by 1e6 /
  1e-6 and the next divided by it (the same function); tiny activations (1e-15, normal
  float32 numbers);
* cancellation: activations with a huge constant offset (mean 1e4-1e5, std 1), checked
  against a float64 recomputation of the layer's moments and a float64 brute force of
  the layer objective; float64 models whose activations need float64 (offset 1e9);
* float types: float64 models (Gemm: supported; Conv: onnxruntime cannot run it),
  bfloat16 models, bfloat16 / float16 weights behind a Cast, float16 networks whose
  activations come close to 65504 or overflow, float32 statistics that overflow;
* rank-deficient re-fits: channels that are exact linear combinations of others at every
  ``refit_ridge`` (0, 1e-12, auto, auto-thin, 0.01), 1-3 samples with one position each,
  and extreme ridges (1e-300 ... 1e308);
* ``EntropicConfig``: invalid knobs must be refused as the README promises for every
  argument, extreme but valid ones must still give a valid model.

Every pruned model must keep finite weights that do not explode (at most 1e3 times the
original's largest magnitude, biases aside where the data's own scale sets them).

The bugs this file found are fixed, and their tests pin the fixed behaviour (tiny
activations and a float16 overflow hidden by a ReLU were known limits once). One test stays a
strict xfail marked "KNOWN LIMIT", the numeric limit the README lists under Known limits:
float64 activations far from zero.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import relative_error, run_model
from onnx_eprune import EPruneError, UsageError
from onnx_eprune.cli import main
from onnx_eprune.select.entropic import EntropicConfig

FAST = {"device": "cpu"}


# -- models -----------------------------------------------------------------------------------

def _model(nodes, weights, in_shape, out_shape, elem=TensorProto.FLOAT, dtype=np.float32, name="numeric"):
    inits = [numpy_helper.from_array(np.asarray(v).astype(dtype), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", elem, in_shape)],
                              [helper.make_tensor_value_info("y", elem, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def bias_free(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->12) Relu MaxPool Conv(12->16) Relu GAP Flatten Gemm(16->10), no biases: a
    positively homogeneous function, f(a x) = a f(x) for a > 0."""
    rng = np.random.default_rng(seed)
    w = {"w1": rng.normal(0, 0.3, (12, 3, 3, 3)), "w2": rng.normal(0, 1 / np.sqrt(108), (16, 12, 3, 3)),
         "g": rng.normal(0, 0.25, (10, 16))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
             helper.make_node("Flatten", ["gp"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    return _model(nodes, w, ["N", 3, 16, 16], ["N", 10])


def probe(fp16: bool = False, scale: dict[str, float] | None = None) -> onnx.ModelProto:
    """Conv(3->8) Relu MaxPool Conv(8->8) Relu MaxPool Flatten Gemm(128->16) Relu Gemm(16->10),
    each named initializer multiplied by ``scale[name]``."""
    rng = np.random.default_rng(0)
    w = {"c1.w": rng.normal(0, 0.2, (8, 3, 3, 3)), "c1.b": rng.uniform(-.1, .1, 8),
         "c2.w": rng.normal(0, 0.12, (8, 8, 3, 3)), "c2.b": rng.uniform(-.1, .1, 8),
         "g1.w": rng.normal(0, 0.09, (16, 128)), "g1.b": rng.uniform(-.1, .1, 16),
         "g2.w": rng.normal(0, 0.25, (10, 16)), "g2.b": rng.uniform(-.1, .1, 10)}
    for name, factor in (scale or {}).items():
        w[name] = w[name] * factor
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "g1.w", "g1.b"], ["g1"], name="gemm1", transB=1),
             helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
             helper.make_node("Gemm", ["r3", "g2.w", "g2.b"], ["y"], name="gemm2", transB=1)]
    if fp16:
        return _model(nodes, w, ["N", 3, 16, 16], ["N", 10], TensorProto.FLOAT16, np.float16)
    return _model(nodes, w, ["N", 3, 16, 16], ["N", 10])


def mlp(dtype=np.float32, elem=TensorProto.FLOAT, offset: float = 0.0) -> onnx.ModelProto:
    """Gemm(12->16) Relu Gemm(16->16) Relu Gemm(16->5). ``offset`` is added to the first
    layer's bias and cancelled in the second one's, so the function does not change but the
    16 hidden activations sit at ``offset`` + O(1)."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(0, .3, (12, 16)), "b1": rng.uniform(-.1, .1, 16), "w2": rng.normal(0, .25, (16, 16)),
         "b2": rng.uniform(-.1, .1, 16), "w3": rng.normal(0, .25, (16, 5)), "b3": rng.uniform(-.1, .1, 5)}
    w["b1"] = w["b1"] + offset
    w["b2"] = w["b2"] - offset * w["w2"].sum(axis=0)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1"),
             helper.make_node("Relu", ["g1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["g2"], name="fc2"),
             helper.make_node("Relu", ["g2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], name="fc3")]
    return _model(nodes, w, ["N", 12], ["N", 5], elem, dtype)


def images(n: int = 64, seed: int = 1, hw: int = 16, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c, hw, hw)).astype(np.float32)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}


def kept(result) -> list:
    return [g.get("kept_channels") for g in result.report["groups"]]


def largest(model: onnx.ModelProto, biases: bool = True) -> float:
    """The largest weight magnitude (of the matrices and kernels only, without ``biases``)."""
    return max(float(np.abs(v).max()) for v in weights(model).values() if biases or v.ndim > 1)


def check_sane(original: onnx.ModelProto, result, biases: bool = True) -> None:
    """The pruned model passes the checker, holds finite weights no larger than 1e3 times
    the original's largest, and runs."""
    onnx.checker.check_model(result.model, full_check=True)
    for name, value in weights(result.model).items():
        assert np.isfinite(value).all(), f"{name} is not finite"
    assert largest(result.model, biases) <= 1e3 * largest(original, biases)


# -- scale --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["entropic", "thinet"])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_input_scale_leaves_choice_and_error_unchanged(method, mode):
    """Bias-free ReLU network: scaling the calibration data scales every activation, and
    every statistic by the square; a scale-free selector and a ridge relative to the mean
    variance see the same problem. Keep-sets and the relative output error must not move
    from 1e-8 to 1e6 (all conv positions: the sampled ones depend on the images' bytes)."""
    model, x = bias_free(), images()
    base = onnx_eprune.prune(model, x, keep_ratio=0.5, positions=256, method=method, mode=mode, **FAST)
    base_err = relative_error(run_model(model, x)["y"], run_model(base.model, x)["y"])
    for scale in (1e-8, 1e-3, 1e3, 1e6):
        xs = (x * scale).astype(np.float32)
        result = onnx_eprune.prune(model, xs, keep_ratio=0.5, positions=256, method=method, mode=mode, **FAST)
        assert kept(result) == kept(base), scale
        err = relative_error(run_model(model, xs)["y"], run_model(result.model, xs)["y"])
        assert err == pytest.approx(base_err, rel=1e-3), scale
        check_sane(model, result, biases=False)


@pytest.mark.parametrize("exponent", [-27, -10, 10, 20, 40])
def test_power_of_two_input_scale_is_exact(exponent):
    """Multiplying by 2**k is exact in floating point: the weights of the pruned network
    must come out the same to rounding and the re-fitted biases scaled by 2**k."""
    model, x = bias_free(), images()
    base = weights(onnx_eprune.prune(model, x, keep_ratio=0.5, positions=256, **FAST).model)
    s = 2.0 ** exponent
    result = onnx_eprune.prune(model, (x * s).astype(np.float32), keep_ratio=0.5, positions=256, **FAST)
    got = weights(result.model)
    assert got.keys() == base.keys()
    for name, value in got.items():
        want = base[name] * (s if value.ndim == 1 else 1.0)
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("exponent", [-50, -56])
def test_tiny_activations_choose_like_unit_ones(exponent):
    """Inputs scaled by 2**-50 (about 9e-16, far above float32's smallest normal; output
    variances about 1e-31) or 2**-56 (variances near 1e-34) give the keep-sets of unscaled
    ones. Once ``select/problem.py`` floored a consumer's output energy and the ridge's mean
    variance at an absolute 1e-30, so the objective stopped being scale-free below it and
    the second group's keep-set changed at 2**-50."""
    model, x = bias_free(), images()
    base = onnx_eprune.prune(model, x, keep_ratio=0.5, positions=256, **FAST)
    tiny = onnx_eprune.prune(model, (x * 2.0 ** exponent).astype(np.float32), keep_ratio=0.5, positions=256, **FAST)
    assert kept(tiny) == kept(base)


@pytest.mark.parametrize("factor", [1e6, 1e-6, 2.0 ** 20])
def test_layer_weight_scale_moved_to_the_next_layer_changes_nothing(factor):
    """conv2's kernel and bias times ``factor`` and gemm1's kernel divided by it is the same
    function (ReLU and MaxPool commute with positive scaling): the same channels go, at the
    same error, for a sparsity target (allocation included), and the re-fitted weights carry
    the factor where the original ones did."""
    x = images(128)
    ref = probe()
    scaled = probe(scale={"c2.w": factor, "c2.b": factor, "g1.w": 1.0 / factor})
    for mode in ("sequential", "oneshot"):
        a = onnx_eprune.prune(ref, x, sparsity=0.5, mode=mode, **FAST)
        b = onnx_eprune.prune(scaled, x, sparsity=0.5, mode=mode, **FAST)
        assert kept(a) == kept(b), mode
        y = run_model(ref, x)["y"]
        assert relative_error(y, run_model(b.model, x)["y"]) == pytest.approx(
            relative_error(y, run_model(a.model, x)["y"]), rel=1e-3)
        wa, wb = weights(a.model), weights(b.model)
        np.testing.assert_allclose(wb["c2.w"] / factor, wa["c2.w"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(wb["g1.w"] * factor, wa["g1.w"], rtol=1e-4, atol=1e-6)


def test_overflowing_statistics_are_a_clear_runtime_error(tmp_path, capsys):
    """Inputs of 2**60 (finite float32, squares past its range in the statistics): exit 1,
    one error line that says the network overflows, no traceback, nothing written."""
    onnx.save(bias_free(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "big.npy", (images() * 2.0 ** 60).astype(np.float32))
    out = tmp_path / "out.onnx"
    for mode in ("sequential", "oneshot"):
        status = main(["prune", str(tmp_path / "m.onnx"), "-o", str(out), "--calib", str(tmp_path / "big.npy"),
                       "--keep-ratio", "0.5", "--device", "cpu", "--mode", mode, "-q"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 1, err
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("onnx-eprune: error: ") and "overflow" in lines[0]
        assert not out.exists()


# -- cancellation ------------------------------------------------------------------------------

def offset_model(offset: float, c: int = 8) -> onnx.ModelProto:
    """Conv(4->c, 3x3, bias ``offset``) -> Conv(c->6, 3x3, no padding) Relu GAP Gemm: the c
    channels the second conv reads sit at ``offset`` + O(1) (no padding there, whose zeros
    would dwarf the O(1) variation)."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(0, 0.2, (c, 4, 3, 3)), "b1": np.full(c, offset) + rng.uniform(-.1, .1, c),
         "w2": rng.normal(0, 1 / np.sqrt(c * 9), (6, c, 3, 3)), "b2": rng.uniform(-.1, .1, 6),
         "g": rng.normal(0, 0.3, (10, 6)), "gb": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
             helper.make_node("Flatten", ["gp"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1)]
    return _model(nodes, w, ["N", 4, 8, 8], ["N", 10])


def _c1_rows(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """conv2's im2col rows (every position) in float64, from onnxruntime's float32 c1."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    a = run_model(m, x)["c1"].astype(np.float64)
    _, c, h, w = a.shape
    cols = np.stack([a[:, :, i:i + h - 2, j:j + w - 2] for i in range(3) for j in range(3)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(-1, c * 9)


@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_moments_of_offset_activations_match_float64(offset):
    """The streamed moments shift by a float32 mean before float32 products: with
    activations at 1e4-1e5 +- 1 their centred covariance and cross-covariance must still
    match a float64 computation on the same activations, and the layer objective (float64
    brute force over all 70 keep-sets of 4 of 8) must rank the chosen set as it does
    without the offset, which must also choose the same channels."""
    x = np.random.default_rng(1).normal(size=(64, 4, 8, 8)).astype(np.float32)
    model = offset_model(offset)
    X = _c1_rows(model, x)
    theta = weights(model)["w2"].reshape(6, -1)
    Xc = X - X.mean(0)
    Yc = Xc @ theta.T
    bundle = onnx_eprune.calibrate(model, x, positions=4096, **FAST)
    st = next(s for s in bundle.consumers.values() if s.cxx.shape == (72, 72))
    assert st.n == len(X)
    G, P = Xc.T @ Xc / len(X), Xc.T @ Yc / len(X)
    assert np.linalg.norm(st.cxx / st.n - G) <= 1e-5 * np.linalg.norm(G)
    assert np.linalg.norm(st.cxy / st.n - P) <= 1e-5 * np.linalg.norm(P)

    def objective(keep):
        cols = np.concatenate([np.arange(k * 9, k * 9 + 9) for k in keep])
        coef = np.linalg.lstsq(Xc[:, cols], Yc, rcond=None)[0]
        return float(np.sum((Yc - Xc[:, cols] @ coef) ** 2) / np.sum(Yc ** 2))

    scores = sorted(objective(k) for k in itertools.combinations(range(8), 4))
    plain = onnx_eprune.prune(offset_model(0.0), x, keep_ratio=0.5, positions=4096, mode="oneshot", **FAST)
    for mode in ("oneshot", "sequential"):
        result = onnx_eprune.prune(model, x, keep_ratio=0.5, positions=4096, mode=mode, **FAST)
        chosen = next(g["kept_channels"] for g in result.report["groups"] if g["producers"] == ["conv1"])
        assert chosen == next(g["kept_channels"] for g in plain.report["groups"] if g["producers"] == ["conv1"])
        assert objective(chosen) <= scores[3] * (1 + 1e-6), mode   # among the best few, as without offset
        check_sane(model, result, biases=False)


def test_float64_model_is_pruned_in_float64():
    """A float64 MLP (onnxruntime runs Gemm in double) is pruned as it is: the written
    tensors and the graph's input and output stay DOUBLE, the channels chosen are those of
    the same model in float32."""
    x = np.random.default_rng(1).normal(size=(256, 12))
    f32 = onnx_eprune.prune(mlp(), x.astype(np.float32), keep_ratio=0.5, **FAST)
    model = mlp(np.float64, TensorProto.DOUBLE)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, **FAST)
    assert {i.data_type for i in result.model.graph.initializer} == {TensorProto.DOUBLE}
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert kept(result) == kept(f32)
    y = run_model(model, x)["y"]
    assert y.dtype == np.float64 and run_model(result.model, x)["y"].dtype == np.float64
    check_sane(model, result)


@pytest.mark.xfail(strict=True, reason="KNOWN LIMIT: a float64 model whose activations sit at 1e9 + O(1) is pruned on "
                                       "float32 statistics: output error 17x the output (0.3 without the offset)")
def test_float64_activations_keep_float64_precision():
    """Known limit (README, Known limits): hidden activations at 1e9 + N(0, 1) are exact in a
    float64 model (the next layer's bias cancels the offset), so pruning it should do about as
    well as without the offset (relative error 0.30-0.31). It does not: every channel looks
    constant and the one-shot model's relative output error is 17.4 (sequential 0.59), because
    ``calibrate/stats.py`` accumulates in float32, whose step at 1e9 is 64."""
    x = np.random.default_rng(1).normal(size=(256, 12))
    held = np.random.default_rng(2).normal(size=(256, 12))
    plain = mlp(np.float64, TensorProto.DOUBLE)
    model = mlp(np.float64, TensorProto.DOUBLE, offset=1e9)
    for mode in ("sequential", "oneshot"):
        ref = onnx_eprune.prune(plain, x, keep_ratio=0.5, mode=mode, refit_ridge=0.01, **FAST)
        result = onnx_eprune.prune(model, x, keep_ratio=0.5, mode=mode, refit_ridge=0.01, **FAST)
        want = relative_error(run_model(plain, held)["y"], run_model(ref.model, held)["y"])
        got = relative_error(run_model(model, held)["y"], run_model(result.model, held)["y"])
        assert got <= 1.25 * want, (mode, got, want)


def test_float64_convolution_model_is_a_clear_runtime_error(tmp_path, capsys):
    """onnxruntime has no double Conv on the CPU: the run fails before any work with exit 1
    and one line saying onnxruntime cannot load the model; nothing is written."""
    model = probe()
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", images().astype(np.float64))
    out = tmp_path / "out.onnx"
    status = main(["prune", str(tmp_path / "m.onnx"), "-o", str(out), "--calib", str(tmp_path / "x.npy"),
                   "--sparsity", "0.5", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("onnx-eprune: error: onnxruntime cannot")
    assert not out.exists()


def test_bfloat16_model_is_refused_as_a_usage_error(tmp_path, capsys):
    """A model with bfloat16 input, output and weights cannot be calibrated: exit 2, one
    line naming the input, no traceback, nothing written; Python gets a UsageError."""
    model = mlp()
    for init in model.graph.initializer:
        v = numpy_helper.to_array(init)
        init.CopyFrom(helper.make_tensor(init.name, TensorProto.BFLOAT16, v.shape, v.ravel().tolist()))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).normal(size=(64, 12)).astype(np.float32)
    with pytest.raises(UsageError, match="'x'"):
        onnx_eprune.prune(model, x, keep_ratio=0.5, **FAST)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", x)
    status = main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--calib",
                   str(tmp_path / "x.npy"), "--keep-ratio", "0.5", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("onnx-eprune: error:")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("weight_type", [TensorProto.BFLOAT16, TensorProto.FLOAT16])
def test_low_precision_weights_behind_a_cast(weight_type):
    """Mixed-precision exports store weights as bfloat16 / float16 and Cast them to float:
    such a model prunes to a valid one that chooses the channels the float32 model does
    (the weights differ by the rounding only) and runs with finite outputs."""
    base = mlp()
    model = onnx.ModelProto()
    model.CopyFrom(base)
    casts = []
    for init in model.graph.initializer:
        if init.name.startswith("w"):
            v = numpy_helper.to_array(init)
            raw = init.name + "_raw"
            if weight_type == TensorProto.BFLOAT16:
                init.CopyFrom(helper.make_tensor(raw, weight_type, v.shape, v.ravel().tolist()))
            else:
                init.CopyFrom(numpy_helper.from_array(v.astype(np.float16), raw))
            casts.append(helper.make_node("Cast", [raw], [raw[:-4]], name=f"cast_{raw}", to=TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).normal(size=(256, 12)).astype(np.float32)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, **FAST)
    assert kept(result) == kept(onnx_eprune.prune(base, x, keep_ratio=0.5, **FAST))
    check_sane(base, result)
    assert np.isfinite(run_model(result.model, x)["y"]).all()


def test_float16_activations_near_the_top_of_the_range():
    """A float16 network fed inputs up to 4.4e4 (its range ends at 65504; the original
    stays finite): the pruned model must stay finite too, and about as faithful as on
    unit-scale inputs, on which the same network is a ReLU network of the same shape."""
    model = probe(fp16=True)
    x0 = np.random.default_rng(1).normal(size=(64, 3, 16, 16))
    errors = {}
    for scale in (1.0, 1e4):
        x = (x0 * scale).astype(np.float16)
        y = run_model(model, x)["y"].astype(np.float64)
        assert np.isfinite(y).all()
        for mode in ("sequential", "oneshot"):
            result = onnx_eprune.prune(model, x, sparsity=0.5, mode=mode, **FAST)
            check_sane(model, result, biases=False)
            got = run_model(result.model, x)["y"].astype(np.float64)
            assert np.isfinite(got).all(), (scale, mode)
            errors[scale, mode] = relative_error(y, got)
    for mode in ("sequential", "oneshot"):
        assert errors[1e4, mode] <= 1.5 * errors[1.0, mode], errors


def test_float16_overflow_inside_the_network_is_reported(caplog):
    """gemm1's output channel 3 (weights x1e5) overflows float16 to -Inf on 38 of 64
    calibration samples (the ReLU after it hides that from the graph output). The run must
    say so, as it does for float32 statistics that overflow (an EPruneError naming the
    overflow, or at least a warning). Once it pruned silently (the sequential model agreed
    with the original on 3% of the top-1 answers): the one-shot moments of a consumer's
    output are computed in float64 from its input and weights, so the Inf never shows there;
    the output-gain runs, which fetch the layer outputs, now warn."""
    model = probe(fp16=True)
    for init in model.graph.initializer:
        if init.name == "g1.w":
            w = numpy_helper.to_array(init).astype(np.float32)
            w[3] *= 1e5
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), init.name))
    x = images().astype(np.float16)
    caplog.set_level(logging.WARNING, logger="onnx_eprune")
    for mode in ("sequential", "oneshot"):
        caplog.clear()
        try:
            onnx_eprune.prune(model, x, sparsity=0.5, mode=mode, **FAST)
        except EPruneError as e:
            assert "overflow" in str(e) or "Inf" in str(e)
            continue
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("overflow" in m or "Inf" in m or "inf" in m for m in warned), (mode, warned)


# -- rank-deficient re-fits ----------------------------------------------------------------------

def linear_combinations() -> onnx.ModelProto:
    """Conv(3->8) -> Conv(8->8) Relu GAP Gemm, no ReLU in between, where conv1's channel 5 is
    2*ch1 - 0.5*ch3, channel 6 equals channel 2 and channel 7 is -3*ch0 (filters and biases):
    the 8 channels span only 5 dimensions."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, .3, (8, 3, 3, 3)), rng.uniform(-.1, .1, 8)
    for c, combo in ((5, {1: 2.0, 3: -0.5}), (6, {2: 1.0}), (7, {0: -3.0})):
        w1[c] = sum(f * w1[k] for k, f in combo.items())
        b1[c] = sum(f * b1[k] for k, f in combo.items())
    w = {"w1": w1, "b1": b1, "w2": rng.normal(0, 1 / np.sqrt(72), (8, 8, 3, 3)), "b2": rng.uniform(-.1, .1, 8),
         "g": rng.normal(0, .3, (10, 8)), "gb": rng.uniform(-.1, .1, 10)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
             helper.make_node("Flatten", ["gp"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1)]
    return _model(nodes, w, ["N", 3, 8, 8], ["N", 10])


RIDGES = [0, 1e-12, "auto", "auto-thin", 0.01]


@pytest.mark.parametrize("ridge", RIDGES, ids=str)
def test_linear_combinations_of_channels_at_every_ridge(ridge):
    """Rank-deficient covariances (5 dimensions in 8 channels) at every ridge, every method:
    finite, bounded weights. Keeping 5 of conv1's 8 channels (conv2's outputs excluded),
    entropic and ThiNet keep a set that spans all 5 dimensions, so the re-fit reproduces
    the output exactly at a vanishing ridge and nearly at the others."""
    model, x = linear_combinations(), images(64, hw=8)
    y = run_model(model, x)["y"]
    for method, mode in (("entropic", "sequential"), ("thinet", "oneshot"), ("lasso", "sequential"),
                         ("l1", "oneshot")):
        result = onnx_eprune.prune(model, x, keep_ratio=0.625, refit_ridge=ridge, method=method, mode=mode,
                                   exclude=["conv2"], **FAST)
        check_sane(model, result)
        err = relative_error(y, run_model(result.model, x)["y"])
        assert err < 0.1, (method, err)
        if method in ("entropic", "thinet"):
            keep = next(g["kept_channels"] for g in result.report["groups"] if g["producers"] == ["conv1"])
            f = weights(model)["w1"].reshape(8, -1)[keep]
            assert np.linalg.matrix_rank(f, tol=1e-6) == 5, keep
            assert err <= (1e-5 if ridge in (0, 1e-12) else 5e-3), (method, err)


@pytest.mark.parametrize("samples", [1, 2, 3])
def test_one_to_three_samples_one_position_each(samples):
    """1-3 samples at one position each: every covariance has rank samples-1 or less (zero
    for one sample). Every ridge and data-driven method must give finite weights that do
    not explode, and a model that runs finitely on new images."""
    model = probe()
    x = images(samples)
    held = images(50, seed=9)
    for ridge, (method, mode) in itertools.product(RIDGES, (("entropic", "sequential"), ("lasso", "oneshot"),
                                                            ("thinet", "sequential"))):
        result = onnx_eprune.prune(model, x, sparsity=0.5, positions=1, refit_ridge=ridge, method=method, mode=mode,
                                   **FAST)
        check_sane(model, result)
        assert np.isfinite(run_model(result.model, held)["y"]).all(), (ridge, method)


def test_zero_ridge_on_a_singular_refit_behaves_like_a_vanishing_one():
    """Expected: ``refit_ridge=0`` is the limit of a vanishing ridge; where the covariance is
    singular (3 samples: rank 2 for gemm2's 10 kept inputs) it gives about what 1e-12 gives, not
    weights that blow up. Was: in sequential mode gemm2's re-fitted weights reached 11.1
    (original 0.67; 0.44 at 1e-12) and the relative error on new images 2.02 (0.52 at 1e-12)."""
    model = probe()
    x = images(3)
    held = images(200, seed=9)
    y = run_model(model, held)["y"]
    results = {r: onnx_eprune.prune(model, x, sparsity=0.5, positions=1, refit_ridge=r, **FAST) for r in (0, 1e-12)}
    errors = {r: relative_error(y, run_model(res.model, held)["y"]) for r, res in results.items()}
    assert errors[0] <= 1.25 * errors[1e-12], errors
    assert largest(results[0].model, biases=False) <= 2 * largest(results[1e-12].model, biases=False)


@pytest.mark.parametrize("ridge", [1e-300, 1e6])
def test_extreme_finite_ridges_give_valid_models(ridge):
    """Tiny (effectively none) and the largest allowed (the original weights) ridges give
    finite, bounded weights; the largest keeps each consumer's kept weights."""
    model, x = probe(), images(64) * 10
    for mode in ("sequential", "oneshot"):
        result = onnx_eprune.prune(model, x, sparsity=0.5, refit_ridge=ridge, mode=mode, **FAST)
        check_sane(model, result)
        assert np.isfinite(run_model(result.model, x)["y"]).all()


def test_largest_finite_ridge_is_refused_or_harmless(tmp_path, capsys):
    """Expected: ``--refit-ridge 1e308`` is "a number >= 0" and so either gives the original
    kept weights (the limit of a huge ridge) or is refused with a one-line usage error (exit 2).
    Was: one-shot mode wrote a model with NaN weights, and sequential mode failed with a false
    "the network overflows" message."""
    onnx.save(probe(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", images(64) * 10)
    out = tmp_path / "out.onnx"
    for mode in ("oneshot", "sequential"):
        status = main(["prune", str(tmp_path / "m.onnx"), "-o", str(out), "--calib", str(tmp_path / "x.npy"),
                       "--sparsity", "0.5", "--device", "cpu", "--mode", mode, "--refit-ridge", "1e308", "-q"])
        err = capsys.readouterr().err
        if status == 0:
            assert all(np.isfinite(v).all() for v in weights(onnx.load(str(out))).values()), mode
        else:
            assert status == 2 and "refit-ridge" in err, (mode, err)


# -- EntropicConfig -------------------------------------------------------------------------------

BAD_KNOBS = [("eps_ridge", -1.0), ("eps_ridge", math.nan), ("eps_ridge", math.inf), ("eps_ridge", "0.1"),
             ("threshold", math.nan), ("tol", -1.0), ("tol", math.nan), ("max_alternations", -3),
             ("max_alternations", 2.5), ("path_steps", 0), ("path_steps", -1), ("path_steps", 1.5),
             ("path_steps", True), ("log_eps_start", math.nan), ("ridge_growth", math.nan), ("max_features", 0)]


@pytest.mark.parametrize("field, value", BAD_KNOBS, ids=[f"{f}={v!r}" for f, v in BAD_KNOBS])
def test_invalid_entropic_knobs_are_refused_by_name(field, value):
    """Expected (README: "Every argument is checked on entry, before any work: a wrong type ...,
    a value out of range ... is a one-line UsageError that names the argument"): a negative, NaN
    or infinite ridge or tolerance, a non-integer or non-positive count of path steps or
    alternations, a bool for an int, a string for a number, zero features are refused with a
    UsageError naming the field. Was: most were accepted and the run ended normally; the rest
    raised numpy's ValueError or a raw TypeError from inside the solver."""
    model, x = probe(), images(16)
    knobs = {"max_alternations": 1, "path_steps": 1, field: value}   # short paths: NaN knobs spin for seconds
    with pytest.raises(UsageError, match=field):
        onnx_eprune.prune(model, x, sparsity=0.5, mode="oneshot", entropic=EntropicConfig(**knobs), **FAST)


EXTREME_KNOBS = [{"max_alternations": 1}, {"path_steps": 1}, {"path_steps": 60}, {"log_eps_start": 5.0},
                 {"log_eps_stop": -15.0}, {"threshold": 1e-9}, {"threshold": 0.999}, {"eps_ridge": 1e6},
                 {"eps_ridge": 1e-12}, {"max_features": 1}, {"wide": 0, "curve_wide": 0}, {"ridge_growth": 1e6},
                 {"tol": 1.0}, {"tol": 0.0}]


@pytest.mark.parametrize("knobs", EXTREME_KNOBS, ids=[",".join(f"{k}={v}" for k, v in d.items()) for d in EXTREME_KNOBS])
def test_extreme_but_valid_entropic_knobs_give_valid_models(knobs):
    """Valid knobs at their extremes still give a valid model at the target, with finite,
    bounded weights, in both modes."""
    model, x = probe(), images(32)
    for mode in ("sequential", "oneshot"):
        result = onnx_eprune.prune(model, x, sparsity=0.5, mode=mode, entropic=EntropicConfig(**knobs), **FAST)
        check_sane(model, result)
        assert result.report["params"]["removed_fraction"] >= 0.5
        assert np.isfinite(run_model(result.model, x)["y"]).all()
