"""Degenerate statistics: dead channels, duplicated channels, wild scales, few or
uninformative calibration samples, zero weights, BatchNormalization with zero variance,
float16 weights, a one-output classifier. The selectors must drop what costs nothing
first, and every method must give finite weights that onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import relative_error, run_model
from onnx_eprune.select import baselines, entropic
from onnx_eprune.select.problem import ConsumerTerm, inert_channels, twin_channels
from onnx_eprune.select.reconstruct import refit

DATA_METHODS = ("entropic", "lasso", "thinet")


# -- the selectors on statistics computed from rows ---------------------------------------

def term_of(X: np.ndarray, theta: np.ndarray, s: int = 1) -> ConsumerTerm:
    """The exact one-group term of rows ``X`` (T, C*s) read by weights ``theta`` (M, C*s)."""
    Y = X @ theta.T
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return ConsumerTerm(Xc.T @ Xc / len(X), Xc.T @ Yc / len(X), Yc.var(0), s)


def rows(rng, T=300, C=10, s=1, dead=(), twins=(), factor=3.0):
    """ReLU-like rows of ``C`` channels; channels ``dead`` are zero, each ``(a, b)`` of
    ``twins`` makes channel b equal to ``factor`` times channel a."""
    X = np.maximum(rng.normal(size=(T, C * s)) @ (np.eye(C * s) + 0.3 * rng.normal(size=(C * s, C * s))), 0.0)
    for c in dead:
        X[:, c * s:(c + 1) * s] = 0.0
    for a, b in twins:
        X[:, b * s:(b + 1) * s] = factor * X[:, a * s:(a + 1) * s]
    return X


@pytest.mark.parametrize("s", [1, 4])
def test_dead_and_twin_channels_are_found(s):
    rng = np.random.default_rng(0)
    X = rows(rng, C=8, s=s, dead=(2, 6), twins=((1, 5),))
    term = term_of(X, rng.normal(size=(5, 8 * s)), s)
    inert = inert_channels([term])
    assert list(np.flatnonzero(inert)) == [2, 6]
    twin = twin_channels([term], inert)
    assert list(twin) == [-1, -1, -1, -1, -1, 1, -1, -1]
    # ordinary channels: nothing found
    plain = term_of(rows(rng, C=8, s=s), rng.normal(size=(5, 8 * s)), s)
    assert not inert_channels([plain]).any() and (twin_channels([plain]) < 0).all()


def test_rank_one_statistics_have_no_twins():
    """One informative sample makes every pair collinear: that says nothing about them."""
    rng = np.random.default_rng(1)
    X = np.zeros((64, 6))
    X[0] = rng.uniform(0.5, 2.0, size=6)
    term = term_of(X, rng.normal(size=(3, 6)))
    assert (twin_channels([term], inert_channels([term])) < 0).all()


def _rankings(terms):
    A, b = baselines.contributions(terms, max_features=10_000)
    return {"entropic": entropic.ranking(terms), "lasso": baselines.lasso_ranking(A, b),
            "thinet": baselines.thinet_ranking(A)}


@pytest.mark.parametrize("T", [300, 6])   # plenty of rows; fewer rows than channels
def test_dead_channels_rank_last(T):
    rng = np.random.default_rng(2)
    dead = (1, 4, 9)
    term = term_of(rows(rng, T=T, C=12, dead=dead), rng.normal(size=(4, 12)))
    for method, order in _rankings([term]).items():
        assert set(order[-3:]) == set(dead), method
    for k in (3, 6, 9):
        assert not set(entropic.select([term], k)) & set(dead)


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_a_twin_goes_before_any_other_live_channel(factor):
    rng = np.random.default_rng(3)
    X = rows(rng, C=10, dead=(7,), twins=((2, 5),), factor=factor)
    term = term_of(X, rng.normal(size=(4, 10)))
    for method, order in _rankings([term]).items():
        assert order[-1] == 7, method                  # dead: last
        assert set(order[-2:-1]) <= {2, 5}, method      # then one of the twins
    keep = entropic.select([term], 6)
    assert 7 not in keep and not {2, 5} <= set(keep)


def test_twins_in_a_recorded_path_and_its_resumption():
    """The path runs without the twin; its recorded points still cover every channel, and
    a stage resuming from one gets the same kind of answer."""
    rng = np.random.default_rng(4)
    term = term_of(rows(rng, C=8, twins=((0, 3),)), rng.normal(size=(4, 8)))
    record: list[entropic.PathPoint] = []
    entropic.ranking([term], record=record)
    assert record and all(len(p.w) == 8 and p.w[3] == 0.0 for p in record)
    start = entropic.resume_point(record, 4)
    keep = entropic.select([term], 4, start=start)
    assert len(keep) == 4 and not {0, 3} <= set(keep)


def test_refit_of_a_duplicated_channel_reproduces_the_output():
    """Dropping a twin costs nothing: the re-fit moves its weight to the partner."""
    rng = np.random.default_rng(5)
    X = rows(rng, C=6, twins=((1, 4),))
    theta = rng.normal(size=(3, 6))
    Y = X @ theta.T
    kept = np.array([0, 1, 2, 3, 5])
    Xk = X[:, kept]
    Xc, Yc = Xk - Xk.mean(0), Y - Y.mean(0)
    omega, bias = refit(Xc.T @ Xc / len(X), Xc.T @ Yc / len(X), Xk.mean(0), Y.mean(0), np.zeros(3),
                        theta[:, kept], eps_ridge=1e-9)
    assert relative_error(Y, Xk @ omega.T + bias) < 1e-6


# -- whole models -------------------------------------------------------------------------

def probe(kind: str = "plain", fp16: bool = False, outputs: int = 10) -> onnx.ModelProto:
    """Conv(3->8) [BN] Relu MaxPool Conv(8->8) Relu MaxPool Flatten Gemm(128->16) Relu
    Gemm(16->outputs), with degenerate weights by ``kind``."""
    rng = np.random.default_rng(0)
    W = {"c1.w": rng.normal(0, 0.2, (8, 3, 3, 3)), "c1.b": rng.uniform(-.1, .1, 8),
         "c2.w": rng.normal(0, 0.12, (8, 8, 3, 3)), "c2.b": rng.uniform(-.1, .1, 8),
         "g1.w": rng.normal(0, 0.09, (16, 128)), "g1.b": rng.uniform(-.1, .1, 16),
         "g2.w": rng.normal(0, 0.25, (outputs, 16)), "g2.b": rng.uniform(-.1, .1, outputs)}
    if kind == "bn":
        W.update({"bn.s": rng.uniform(.5, 1.5, 8), "bn.t": rng.uniform(-.1, .1, 8),
                  "bn.m": rng.uniform(-.1, .1, 8), "bn.v": rng.uniform(.5, 1.5, 8)})
        W["bn.v"][[1, 4]] = 0.0       # zero running variance (only epsilon left) ...
        W["bn.v"][6] = 1e-30          # ... a denormal one
        W["bn.s"][[1, 2]] = 0.0       # and zero scale: a constant channel
    elif kind == "dead":
        W["c1.w"][0], W["c1.b"][0] = 0.0, 0.0      # a zero filter
        W["c1.b"][3] = -100.0                        # a channel that never fires
        W["c2.b"][5] = -100.0
        W["g1.b"][[2, 7]] = -100.0
    elif kind == "dup":
        W["c1.w"][2], W["c1.b"][2] = W["c1.w"][1], W["c1.b"][1]
        W["c2.w"][4], W["c2.b"][4] = W["c2.w"][6], W["c2.b"][6]
        W["g1.w"][3], W["g1.b"][3] = W["g1.w"][9], W["g1.b"][9]
    elif kind == "scales":
        for name, c, f in (("c1", 0, 1e6), ("c1", 1, 1e-6), ("g1", 0, 1e6), ("g1", 1, 1e-6)):
            W[f"{name}.w"][c] *= f
            W[f"{name}.b"][c] *= f
    elif kind == "zero_weights":
        W["c2.w"][:, [2, 5]] = 0.0    # the consumer ignores two of its input channels
        W["g2.w"][:, [4, 11]] = 0.0
    dtype = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.asarray(v).astype(dtype), k) for k, v in W.items()]
    h = "c1"
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3])]
    if kind == "bn":
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn.s", "bn.t", "bn.m", "bn.v"], ["bn"], name="bn"))
        h = "bn"
    nodes += [helper.make_node("Relu", [h], ["r1"], name="relu1"),
              helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Flatten", ["p2"], ["f"], name="flat", axis=1),
              helper.make_node("Gemm", ["f", "g1.w", "g1.b"], ["g1"], name="gemm1", transB=1),
              helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
              helper.make_node("Gemm", ["r3", "g2.w", "g2.b"], ["y"], name="gemm2", transB=1)]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", elem, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", elem, ["N", outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def images(n=64, kind="plain", fp16=False):
    x = np.random.default_rng(1).normal(size=(n, 3, 16, 16)).astype(np.float32)
    if kind == "constant_channel":
        x[:, 1] = 0.7
    elif kind == "zeros_but_one":
        x[1:] = 0.0
    return x.astype(np.float16) if fp16 else x


def relu_outputs(model, x) -> dict[str, np.ndarray]:
    """The three ReLU outputs of ``probe`` by the producer they follow, channels first."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in ("r1", "r2", "r3"):
        m.graph.output.append(helper.make_tensor_value_info(name, m.graph.input[0].type.tensor_type.elem_type, None))
    out = run_model(m, x)
    return {p: np.moveaxis(out[r], 1, 0).reshape(out[r].shape[1], -1)
            for p, r in (("conv1", "r1"), ("conv2", "r2"), ("gemm1", "r3"))}


def prune(model, x, **kw):
    kw.setdefault("device", "cpu")
    result = onnx_eprune.prune(model, x, **kw)
    for init in result.model.graph.initializer:
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            assert np.isfinite(numpy_helper.to_array(init).astype(np.float64)).all(), init.name
    y = run_model(result.model, x)["y"]
    assert np.isfinite(y.astype(np.float64)).all()
    return result


def kept(result) -> dict[str, set[int]]:
    return {g["producers"][0]: set(g["kept_channels"]) for g in result.report["groups"] if "kept_channels" in g}


@pytest.mark.parametrize("method", DATA_METHODS)
@pytest.mark.parametrize("fp16", [False, True])
def test_dead_channels_go_first(method, fp16):
    model, x = probe("dead", fp16), images(fp16=fp16)
    dead = {p: {c for c in range(len(a)) if not a[c].any()} for p, a in relu_outputs(model, x).items()}
    assert dead["conv1"] >= {0, 3} and dead["gemm1"] >= {2, 7}
    # one-shot: every choice is made on the statistics of the original network
    result = prune(model, x, method=method, mode="oneshot", keep_ratio=0.5)
    for producer, keep in kept(result).items():
        assert not keep & dead[producer], producer


@pytest.mark.parametrize("method", DATA_METHODS)
def test_one_of_a_duplicated_pair_goes_first(method):
    model, x = probe("dup"), images()
    result = prune(model, x, method=method, mode="oneshot", sparsity=0.3)
    keeps = kept(result)
    for producer, pair in (("conv1", {1, 2}), ("conv2", {4, 6}), ("gemm1", {3, 9})):
        if len(keeps[producer]) < (8 if producer != "gemm1" else 16):
            assert not pair <= keeps[producer], producer


CASES = {  # model kind, data kind, samples, fp16, classifier outputs
    "dead": ("dead", "plain", 64, False, 10),
    "dup": ("dup", "plain", 64, False, 10),
    "scales": ("scales", "plain", 64, False, 10),
    "constant_channel": ("plain", "constant_channel", 64, False, 10),
    "few_samples": ("plain", "plain", 4, False, 10),
    "one_sample": ("plain", "plain", 1, False, 10),
    "zeros_but_one": ("plain", "zeros_but_one", 64, False, 10),
    "zero_weights": ("zero_weights", "plain", 64, False, 10),
    "bn_zero_variance": ("bn", "plain", 64, False, 10),
    "fp16": ("plain", "plain", 64, True, 10),
    "one_output": ("plain", "plain", 64, False, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_degenerate_inputs_give_valid_models(case):
    """Every method once, the modes, targets and re-fit ridges spread over them."""
    kind, data, n, fp16, outputs = CASES[case]
    model, x = probe(kind, fp16, outputs), images(n, data, fp16)
    runs = [("entropic", "sequential", {"sparsity": 0.3}, "auto-thin"),
            ("lasso", "oneshot", {"sparsity": 0.7}, 0.01),
            ("thinet", "sequential", {"keep_ratio": 0.5}, "auto"),
            ("l1", "oneshot", {"keep_ratio": 0.5}, "auto-thin"),
            ("random", "sequential", {"sparsity": 0.7}, "auto")]
    for method, mode, target, ridge in runs:
        prune(model, x, method=method, mode=mode, refit_ridge=ridge, **target)
    whole = prune(model, x, method="entropic", mode="sequential", keep_ratio=1.0)
    ref, got = run_model(model, x)["y"], run_model(whole.model, x)["y"]
    assert relative_error(ref, got) <= (1e-3 if fp16 else 1e-5)
