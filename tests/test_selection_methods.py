"""The channel selection methods (entropic, lasso, thinet, l1, random) as a user comparing
them exercises them through the public API and the command line.

What is attacked here:

* every method on the same model and data gives a valid model (onnx.checker, onnxruntime,
  finite outputs, physically smaller weights) at keep counts 1, C-1 and C of every group,
  and keep C gives back the same function;
* the data-driven methods drop a dead (never firing) channel first and then one of a pair
  of *scaled* twins, in the default sequential mode, and keep one member of each family of
  scaled twins, which reproduces the layer exactly;
* ``random`` is reproducible with the seed (API and ``--seed`` alike), differs across seeds
  and ignores the data and the mode;
* ``l1`` ignores the data: its keep-sets are the top filter norms computed independently in
  numpy (Gemm with transB=0, MatMul, ConvTranspose, BatchNormalization scaling, coupled
  producers), the same for two calibration sets, whatever the allocation; exporter variants
  (BN folded or not) give the same keep-sets; ``--no-reconstruct`` with ``l1`` equals plain
  filter-norm slicing done in numpy;
* on a tiny layer whose output is exactly a linear function of k channels, the data methods
  recover them; against a numpy brute force of the layer's re-fit objective over every
  keep-set, entropic reaches the optimum at keep 1 and C-1 on 40 random layers, and an
  exact keep-set of a rank-deficient layer (the exchanges that polish a small group's
  keep-set, ``entropic.exchange``, since session 46).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import (conv_bn_relu_pool_flatten_gemm, conv_transpose, gemm_matmul, node_by_name, random_input,
                    relative_error, residual, run_model)
from onnx_eprune.cli import main

METHODS = ("entropic", "lasso", "thinet", "l1", "random")
DATA_METHODS = ("entropic", "lasso", "thinet")


# -- helpers ------------------------------------------------------------------------------------

def _prune(model, x, **kw):
    kw.setdefault("device", "cpu")
    return onnx_eprune.prune(model, x, **kw)


def _kept(report) -> dict[str, list[int]]:
    """Kept channels of every prunable group, by its first producer."""
    return {g["producers"][0]: list(g["kept_channels"]) for g in report["groups"]
            if not g["frozen"] and g.get("kept_channels") is not None}


def _inits(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(pruned, full_check=True)
    y0, y1 = run_model(original, x)["y"], run_model(pruned, x)["y"]
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    assert np.isfinite(y1).all()
    for init in pruned.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            assert np.isfinite(numpy_helper.to_array(init)).all(), init.name
    return y1


def _finish(nodes, inits, cin, hw, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "selection", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_pair(W1, b1, W2, b2, relu=True, hw=8) -> onnx.ModelProto:
    """x -> Conv1 [-> Relu] -> Conv2 = y (same padding): one prunable group, Conv1's
    outputs, read by Conv2; y keeps its channels (a graph output)."""
    k = W1.shape[-1]
    pads = [k // 2] * 4
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h"], name="conv1", pads=pads, kernel_shape=[k, k])]
    src = "h"
    if relu:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="relu1"))
        src = "r"
    nodes.append(helper.make_node("Conv", [src, "c2.w", "c2.b"], ["y"], name="conv2", pads=pads, kernel_shape=[k, k]))
    return _finish(nodes, {"c1.w": W1, "c1.b": b1, "c2.w": W2, "c2.b": b2}, W1.shape[1], hw,
                   ["N", W2.shape[0], hw, hw])


def consumer_rows(model: onnx.ModelProto, x: np.ndarray, tensor: str, k: int) -> np.ndarray:
    """Conv2's input features at every output position (im2col, same padding), float64:
    (N*H*W, C*k*k), channel-major like Conv2's flattened weight."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    H = run_model(m, x)[tensor].astype(np.float64)
    N, C, h, w = H.shape
    p = k // 2
    Hp = np.pad(H, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.stack([Hp[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(N * h * w, C * k * k)


def layer_objective(X: np.ndarray, theta: np.ndarray, keep, s: int) -> float:
    """The re-fit objective of a keep-set: the relative least-squares error (with a free
    bias) of reproducing ``X @ theta.T`` from the kept channels' features only."""
    Y = X @ theta.T
    cols = np.concatenate([np.arange(c * s, (c + 1) * s) for c in keep])
    Xk = X[:, cols] - X[:, cols].mean(0)
    Yc = Y - Y.mean(0)
    coef = np.linalg.lstsq(Xk, Yc, rcond=None)[0]
    return float(((Yc - Xk @ coef) ** 2).sum() / (Yc ** 2).sum())


def brute_force(X, theta, C, k, s) -> dict[tuple, float]:
    return {S: layer_objective(X, theta, S, s) for S in itertools.combinations(range(C), k)}


def l1_scores(model: onnx.ModelProto, producer: str) -> np.ndarray:
    """Filter L1 norms of ``producer``'s output channels, straight from its weight (output
    channels on axis 0 for Conv and Gemm transB=1, axis 1 for ConvTranspose, MatMul and
    Gemm transB=0), each scaled by |scale / sqrt(var + eps)| of a BatchNormalization that
    reads the output directly (what folding it would give)."""
    inits = _inits(model)
    node = node_by_name(model, producer)
    W = inits[node.input[1]].astype(np.float64)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    if node.op_type in ("ConvTranspose", "MatMul") or (node.op_type == "Gemm" and not trans_b):
        W = np.moveaxis(W, 1, 0)
    norms = np.abs(W.reshape(W.shape[0], -1)).sum(axis=1)
    for bn in model.graph.node:
        if bn.op_type == "BatchNormalization" and bn.input[0] == node.output[0]:
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            norms = norms * np.abs(inits[bn.input[1]] / np.sqrt(inits[bn.input[4]] + eps))
    return norms


def l1_keep(model, producers: list[str], k: int) -> list[int]:
    """The top ``k`` channels of a group by filter norm, every producer's norms divided by
    their mean (coupled layers of different scale count equally)."""
    score = sum(n / n.mean() for n in (l1_scores(model, p) for p in producers))
    return sorted(np.argsort(-score, kind="stable")[:k].tolist())


# -- every method at keep counts 1, C-1, C ------------------------------------------------------

WIDE8 = {"bn_chain": lambda: conv_bn_relu_pool_flatten_gemm(False, widths=(8, 8, 8)), "residual": residual}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(WIDE8))
def test_every_method_is_valid_at_keep_1_c_minus_1_and_c(method, name):
    """Every prunable group has 8 channels: keep ratios 1/8, 7/8 and 1 keep exactly 1, 7
    and 8 of them; the weights shrink physically to those counts, the report lists as many
    distinct in-range channels, the method is recorded in the report and the metadata, and
    keeping all channels gives back the same function."""
    model, x = WIDE8[name](), random_input(48, seed=1)
    for ratio, count in ((1 / 8, 1), (7 / 8, 7), (1.0, 8)):
        result = _prune(model, x, keep_ratio=ratio, method=method, round_to=1)
        y = _assert_valid(result.model, model, x)
        assert result.report["method"] == method
        runs = json.loads({p.key: p.value for p in result.model.metadata_props}["onnx_eprune"])
        assert runs[-1]["method"] == method
        kept = _kept(result.report)
        assert kept, "no prunable group"
        inits = _inits(result.model)
        for group in result.report["groups"]:
            if group["frozen"]:
                continue
            assert group["channels_before"] == 8 and group["channels_after"] == count, (ratio, group)
            channels = group["kept_channels"]
            assert len(channels) == count and len(set(channels)) == count
            assert all(0 <= c < 8 for c in channels)
            for producer in group["producers"]:
                w = inits[node_by_name(result.model, producer).input[1]]
                assert w.shape[0] == count, (producer, w.shape)
        if count == 8:
            assert relative_error(run_model(model, x)["y"], y) <= 1e-5, method


def test_keep_one_never_writes_non_finite_weights():
    """Keeping one channel per group (the smallest keep count) with any seed of ``random``
    gives finite weights, finite outputs and a finite fidelity in the report. With seed 0
    in the sequential mode the single kept unit of gemm_8 is constant in the pruned
    network, so the output layer's re-fit sees a kept-feature covariance of 0 and a
    cross-covariance of rounding residue (~1e-16); once a ridge of eps * TINY divided it
    into weights of ~1e136 (+-inf in float32) and the run succeeded silently. The re-fit's
    ridge is now at least the moments' rounding (reconstruct.ROUNDING)."""
    model, x = conv_bn_relu_pool_flatten_gemm(True), random_input(48, seed=1)
    for seed in range(4):
        result = _prune(model, x, keep_ratio=0.01, method="random", seed=seed, round_to=1)
        assert all(g["channels_after"] == 1 for g in result.report["groups"] if not g["frozen"])
        _assert_valid(result.model, model, x)
        fidelity = result.report["fidelity_on_calibration"]["outputs"]["y"]["relative_error"]
        assert fidelity is not None and np.isfinite(fidelity), seed


def test_unknown_method_on_the_command_line_is_one_line_usage_error(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(residual(), str(path))
    np.save(tmp_path / "c.npy", random_input(16, seed=1))
    status = main(["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "c.npy"),
                   "--keep-ratio", "0.5", "--method", "l2"])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: ") and "Traceback" not in err
    assert all(m in lines[0] for m in METHODS)
    assert not (tmp_path / "o.onnx").exists()


# -- dead channels and twins --------------------------------------------------------------------

def degenerate_chain() -> onnx.ModelProto:
    """Conv1(3->8) Relu MaxPool Conv2(8->8) Relu MaxPool Flatten Gemm1(128->8) Relu
    Gemm2(8->10): Conv1's channel 5 and Gemm1's unit 3 never fire (bias -100), Conv1's
    channel 6 is 3x channel 2 and Gemm1's unit 7 is 2x unit 1 (weights and bias scaled:
    after the ReLU the same multiple, not an exact copy)."""
    rng = np.random.default_rng(11)
    w1, b1 = rng.normal(0, 0.25, (8, 3, 3, 3)), rng.uniform(-0.1, 0.1, 8)
    w1[6], b1[6] = 3.0 * w1[2], 3.0 * b1[2]
    b1[5] = -100.0
    g1, gb1 = rng.normal(0, 0.12, (8, 128)), rng.uniform(-0.1, 0.1, 8)
    g1[7], gb1[7] = 2.0 * g1[1], 2.0 * gb1[1]
    gb1[3] = -100.0
    inits = {"c1.w": w1, "c1.b": b1, "c2.w": rng.normal(0, 0.15, (8, 8, 3, 3)), "c2.b": rng.uniform(-.1, .1, 8),
             "g1.w": g1, "g1.b": gb1, "g2.w": rng.normal(0, 0.3, (10, 8)), "g2.b": rng.uniform(-.1, .1, 10)}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool),
             helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool),
             helper.make_node("Flatten", ["p2"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "g1.w", "g1.b"], ["g1"], name="gemm1", transB=1),
             helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
             helper.make_node("Gemm", ["r3", "g2.w", "g2.b"], ["y"], name="gemm2", transB=1)]
    return _finish(nodes, inits, 3, 16, ["N", 10])


def _dead_channels(model, x) -> dict[str, set[int]]:
    """Channels of Conv1 and units of Gemm1 whose ReLU output is zero on every sample."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in ("r1", "r3"):
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    out = run_model(m, x)
    return {producer: {c for c in range(8) if not np.moveaxis(out[r], 1, 0)[c].any()}
            for producer, r in (("conv1", "r1"), ("gemm1", "r3"))}


@pytest.mark.parametrize("method", DATA_METHODS)
def test_dead_then_scaled_twin_go_first_in_sequential_mode(method):
    """Default (sequential) mode, in the conv and the fully connected group alike: the
    first channels dropped are the dead ones, and the next one is one of the scaled twins
    (never both)."""
    model, x = degenerate_chain(), random_input(64, seed=1)
    dead = _dead_channels(model, x)
    assert dead["conv1"] == {5} and 3 in dead["gemm1"] and not dead["gemm1"] & {1, 7}
    twins = {"conv1": {2, 6}, "gemm1": {1, 7}}
    for keep in (7, 6, 5):
        kept = _kept(_prune(model, x, keep_ratio=keep / 8, method=method, round_to=1).report)
        for producer in ("conv1", "gemm1"):
            dropped = set(range(8)) - set(kept[producer])
            assert len(dropped) == 8 - keep
            if len(dropped) <= len(dead[producer]):
                assert dropped <= dead[producer], (keep, producer, kept[producer])
            elif len(dropped) == len(dead[producer]) + 1:
                assert dropped >= dead[producer], (keep, producer, kept[producer])
                assert len(dropped & twins[producer]) == 1, (keep, producer, kept[producer])


@pytest.mark.parametrize("method", DATA_METHODS)
def test_a_single_live_channel_is_the_one_kept(method):
    """Seven of eight channels of Conv1 never fire: keeping one keeps the live one."""
    rng = np.random.default_rng(3)
    W1, b1 = rng.normal(0, 0.3, (8, 3, 3, 3)), np.full(8, -100.0)
    b1[4] = 0.05
    model = conv_pair(W1, b1, rng.normal(0, 0.2, (4, 8, 3, 3)), rng.uniform(-.1, .1, 4))
    x = random_input(32, seed=2)[:, :, :8, :8].copy()
    for mode in ("sequential", "oneshot"):
        result = _prune(model, x, keep_ratio=1 / 8, method=method, mode=mode)
        assert _kept(result.report)["conv1"] == [4], mode
        assert relative_error(run_model(model, x)["y"], _assert_valid(result.model, model, x)) <= 1e-5


def twin_families():
    """Conv1's 8 channels are positive multiples of 3 base filters (families {0,3,5},
    {1,6}, {2,4,7}, factors 0.25 to 5): after the ReLU, Conv2's output is exactly a linear
    function of any one member of each family; Conv2 reads every channel."""
    rng = np.random.default_rng(0)
    family = {0: (0, 1.0), 3: (0, 3.0), 5: (0, 0.5), 1: (1, 1.0), 6: (1, 2.0), 2: (2, 1.0), 4: (2, 0.25), 7: (2, 5.0)}
    base, base_b = rng.normal(0, 0.3, (3, 3, 3, 3)), rng.uniform(-.1, .1, 3)
    W1 = np.stack([base[family[c][0]] * family[c][1] for c in range(8)])
    b1 = np.array([base_b[family[c][0]] * family[c][1] for c in range(8)])
    model = conv_pair(W1, b1, rng.normal(0, 0.2, (4, 8, 3, 3)), rng.uniform(-.1, .1, 4))
    return model, rng.normal(size=(64, 3, 8, 8)).astype(np.float32), {c: f for c, (f, _) in family.items()}


@pytest.mark.parametrize("method", DATA_METHODS)
def test_one_member_of_each_twin_family_is_kept(method):
    """Keeping 3 of 8 keeps one channel per family, and the re-fit (ridge 0) then
    reproduces the output exactly."""
    model, x, family = twin_families()
    for mode in ("sequential", "oneshot"):
        result = _prune(model, x, keep_ratio=3 / 8, method=method, mode=mode, refit_ridge=0.0)
        kept = _kept(result.report)["conv1"]
        assert sorted(family[c] for c in kept) == [0, 1, 2], (mode, kept)
        assert relative_error(run_model(model, x)["y"], _assert_valid(result.model, model, x)) <= 1e-4


# -- random ---------------------------------------------------------------------------------------

def _graph_bytes(model: onnx.ModelProto) -> bytes:
    return model.graph.SerializeToString()


def test_random_is_reproducible_with_the_seed_in_the_api_and_on_the_command_line(tmp_path, capsys):
    model, x = conv_bn_relu_pool_flatten_gemm(True), random_input(48, seed=1)
    a = _prune(model, x, keep_ratio=0.5, method="random", seed=3)
    b = _prune(model, x, keep_ratio=0.5, method="random", seed=3)
    assert _kept(a.report) == _kept(b.report)
    assert _graph_bytes(a.model) == _graph_bytes(b.model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", x)
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--keep-ratio", "0.5", "--method", "random", "--seed", "3", "--device", "cpu", "-q",
                 "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["seed"] == 3 and _kept(report) == _kept(a.report)
    assert _graph_bytes(onnx.load(str(tmp_path / "o.onnx"))) == _graph_bytes(a.model)


def test_random_differs_across_seeds():
    model, x = conv_bn_relu_pool_flatten_gemm(True), random_input(48, seed=1)
    keeps = [_kept(_prune(model, x, keep_ratio=0.5, method="random", seed=s, reconstruct=False).report)
             for s in range(5)]
    for producer in keeps[0]:
        distinct = {tuple(k[producer]) for k in keeps}
        assert len(distinct) >= 3, (producer, distinct)


def test_random_ignores_the_data_and_the_mode():
    """Without the re-fit a random run depends on the seed alone: other calibration data
    and the other mode give the same keep-sets and the same weights."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    x1, x2 = random_input(48, seed=1), 2.0 * random_input(40, seed=5) + 0.5
    a = _prune(model, x1, keep_ratio=0.5, method="random", seed=2, reconstruct=False, mode="sequential")
    b = _prune(model, x2, keep_ratio=0.5, method="random", seed=2, reconstruct=False, mode="oneshot")
    assert _kept(a.report) == _kept(b.report)
    wa, wb = _inits(a.model), _inits(b.model)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


# -- l1 -------------------------------------------------------------------------------------------

L1_MODELS = {"gemm_transB0_matmul": gemm_matmul, "conv_transpose": conv_transpose,
             "unfolded_bn": lambda: conv_bn_relu_pool_flatten_gemm(False), "residual": residual}


@pytest.mark.parametrize("name", sorted(L1_MODELS))
def test_l1_keeps_the_top_filter_norms_for_any_data_and_allocation(name):
    """``l1`` reads no data: with a keep ratio and with a sparsity target (whose allocation
    does read the data), on two unrelated calibration sets and in both modes, every group
    keeps exactly its top filter norms, computed independently."""
    model = L1_MODELS[name]()
    x1, x2 = random_input(48, seed=1), 3.0 * random_input(48, seed=7) + 1.0
    runs = [dict(keep_ratio=0.5, round_to=1), dict(sparsity=0.4), dict(sparsity=0.6, mode="oneshot")]
    for data in (x1, x2):
        for kw in runs:
            result = _prune(model, data, method="l1", **kw)
            groups = [g for g in result.report["groups"] if not g["frozen"]]
            assert groups
            for g in groups:
                want = l1_keep(model, g["producers"], len(g["kept_channels"]))
                assert g["kept_channels"] == want, (kw, g["producers"])
    same = [_kept(_prune(model, d, method="l1", keep_ratio=0.5, round_to=1).report) for d in (x1, x2)]
    assert same[0] == same[1]


def _fold_bn(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with every Conv + BatchNormalization folded into one biased Conv
    (what another exporter writes)."""
    inits = _inits(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    keep_inits = {k: v for k, v in inits.items()}
    skip = set()
    for i, node in enumerate(nodes):
        if i in skip:
            continue
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        if node.op_type == "Conv" and nxt is not None and nxt.op_type == "BatchNormalization":
            eps = next((a.f for a in nxt.attribute if a.name == "epsilon"), 1e-5)
            s, t, m, v = (inits[n].astype(np.float64) for n in nxt.input[1:])
            f = s / np.sqrt(v + eps)
            w = inits[node.input[1]].astype(np.float64)
            b = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(len(f))
            keep_inits[node.input[1]] = (w * f[:, None, None, None]).astype(np.float32)
            keep_inits[node.name + ".fbias"] = ((b - m) * f + t).astype(np.float32)
            for n in nxt.input[1:]:
                keep_inits.pop(n)
            folded = helper.make_node("Conv", [node.input[0], node.input[1], node.name + ".fbias"], [nxt.output[0]],
                                      name=node.name)
            folded.attribute.extend(node.attribute)
            out.graph.node.append(folded)
            skip.add(i + 1)
        else:
            out.graph.node.append(node)
    del out.graph.initializer[:]
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in keep_inits.items())
    onnx.checker.check_model(out, full_check=True)
    return out


def test_l1_is_the_same_on_a_model_with_batchnorm_folded_or_not():
    """README: for ``l1`` a BatchNormalization right after the layer scales its filters as
    folding it would, so both exports keep the same channels; negative BN scales included."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    for init in model.graph.initializer:
        if init.name == "bn_2.scale":
            s = numpy_helper.to_array(init).copy()
            s[[1, 4]] *= -3.0
            s[6] *= 0.01
            init.CopyFrom(numpy_helper.from_array(s, init.name))
    folded = _fold_bn(model)
    x = random_input(48, seed=1)
    assert relative_error(run_model(model, x)["y"], run_model(folded, x)["y"]) < 1e-5
    a = _kept(_prune(model, x, method="l1", keep_ratio=0.5, round_to=1).report)
    b = _kept(_prune(folded, x, method="l1", keep_ratio=0.5, round_to=1).report)
    assert a == b
    assert 6 not in a["conv_1"]   # the tiny BN scale makes channel 6 the weakest filter


def test_l1_without_reconstruction_equals_numpy_slicing(tmp_path, capsys):
    """``--method l1 --no-reconstruct`` on the command line: the written model computes what
    slicing the original weights at the top filter norms (computed here) computes."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    x = random_input(48, seed=1)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", x)
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--keep-ratio", "0.5", "--round-to", "1", "--method", "l1", "--no-reconstruct", "--device", "cpu",
                 "-q", "--report", str(tmp_path / "r.json")]) == 0
    k1 = l1_keep(model, ["conv_1"], 4)
    k5 = l1_keep(model, ["conv_5"], 8)
    kg = l1_keep(model, ["gemm_10"], 16)
    report = json.loads((tmp_path / "r.json").read_text())
    assert _kept(report) == {"conv_1": k1, "conv_5": k5, "gemm_10": kg}
    w = _inits(model)
    features = (np.array(k5)[:, None] * 16 + np.arange(16)).ravel()   # Flatten of a 4x4 map
    sliced = {"conv_1.weight": w["conv_1.weight"][k1], "conv_5.weight": w["conv_5.weight"][k5][:, k1],
              "gemm_10.weight": w["gemm_10.weight"][kg][:, features], "gemm_10.bias": w["gemm_10.bias"][kg],
              "y.weight": w["y.weight"][:, kg], "y.bias": w["y.bias"]}
    for p in ("scale", "shift", "mean", "var"):
        sliced[f"bn_2.{p}"] = w[f"bn_2.{p}"][k1]
        sliced[f"bn_6.{p}"] = w[f"bn_6.{p}"][k5]
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    del reference.graph.initializer[:]
    reference.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in sliced.items())
    written = onnx.load(str(tmp_path / "o.onnx"))
    onnx.checker.check_model(written, full_check=True)
    test_x = random_input(16, seed=2)
    np.testing.assert_allclose(run_model(written, test_x)["y"], run_model(reference, test_x)["y"],
                               rtol=1e-5, atol=1e-6)


# -- recovering the channels a layer reads --------------------------------------------------------

TRUE = [1, 4, 6]


def reads_three():
    """Conv2 reads only Conv1's channels 1, 4, 6 (its weights on the other five are zero);
    the other five are 4x louder filters, so a filter norm ranks them first."""
    rng = np.random.default_rng(0)
    W1, b1 = rng.normal(0, 0.3, (8, 3, 3, 3)), rng.uniform(-.1, .1, 8)
    W2, b2 = rng.normal(0, 0.2, (4, 8, 3, 3)), rng.uniform(-.1, .1, 4)
    others = [c for c in range(8) if c not in TRUE]
    W2[:, others] = 0.0
    W1[others] *= 4.0
    return conv_pair(W1, b1, W2, b2), rng.normal(size=(32, 3, 8, 8)).astype(np.float32), W2


@pytest.mark.parametrize("method", DATA_METHODS)
def test_data_methods_recover_the_channels_a_layer_reads(method):
    model, x, W2 = reads_three()
    X = consumer_rows(model, x, "r", 3)
    objs = brute_force(X, W2.reshape(4, -1), 8, 3, 9)
    ranked = sorted(objs, key=objs.get)
    assert list(ranked[0]) == TRUE and objs[ranked[0]] < 1e-12 and objs[ranked[1]] > 1e-3
    # the filter norm is fooled: the test can tell a good selector from a bad one
    assert _kept(_prune(model, x, keep_ratio=3 / 8, method="l1").report)["conv1"] != TRUE
    for mode in ("sequential", "oneshot"):
        result = _prune(model, x, keep_ratio=3 / 8, method=method, mode=mode)
        assert _kept(result.report)["conv1"] == TRUE, mode
        assert relative_error(run_model(model, x)["y"], _assert_valid(result.model, model, x)) <= 1e-5


def random_layer(seed: int):
    """Conv1(3->6, 3x3, filters of unequal scale) Relu Conv2(6->4, 3x3) on 32 images of
    8x8 (2048 output positions: all of them are sampled with positions=64)."""
    rng = np.random.default_rng(seed)
    W1, b1 = rng.normal(0, 0.3, (6, 3, 3, 3)), rng.uniform(-.1, .1, 6)
    W1 *= rng.uniform(0.3, 3, 6)[:, None, None, None]
    W2, b2 = rng.normal(0, 0.2, (4, 6, 3, 3)), rng.uniform(-.1, .1, 4)
    x = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    return conv_pair(W1, b1, W2, b2), x, W2


def _entropic_against_brute_force(seed: int, k: int):
    model, x, W2 = random_layer(seed)
    objs = brute_force(consumer_rows(model, x, "r", 3), W2.reshape(4, -1), 6, k, 9)
    best = min(objs.values())
    for mode in ("oneshot", "sequential"):
        result = _prune(model, x, keep_ratio=k / 6, method="entropic", mode=mode, refit_ridge=0.0, positions=64)
        kept = tuple(_kept(result.report)["conv1"])
        assert objs[kept] <= best * (1 + 1e-6) + 1e-12, (mode, kept, objs[kept], min(objs, key=objs.get), best)


@pytest.mark.parametrize("seed", range(40))
def test_entropic_is_optimal_at_keep_1_and_c_minus_1(seed):
    """Keeping 1 of 6 channels, entropic keeps the channel with the smallest re-fit
    objective, and keeping 5 it drops the channel whose removal costs least (6 candidates
    each, brute-forced here), on 40 random layers. The entropic path alone missed the best
    single channel on 4 of them (seed 6: channel 0, objective 0.5806, instead of channel 2,
    0.5661) and the best channel to drop on 1 (seed 37: 0.0086 instead of 0.0081); the
    exchanges that polish a small group's keep-set (``entropic.exchange``) make both exact,
    since at keep 1 and C-1 no single exchange improving is the optimum."""
    _entropic_against_brute_force(seed, 1)
    _entropic_against_brute_force(seed, 5)


def rank_deficient_layer(seed: int = 4):
    """Conv1(3->8, 1x1) -> Conv2(8->4, 1x1), no activation: Conv1's channels live in the
    3-dimensional span of the input; channel 2 is the only one with a component along the
    input's third direction, the other seven lie in a plane. Conv2's output is exactly a
    linear function of channel 2 plus any two independent others (21 of the 56 keep-sets of
    3), and of no keep-set without channel 2."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, 3))
    coef = np.zeros((8, 3))
    coef[:, :2] = rng.normal(size=(8, 2))
    coef[2] = [0.0, 0.0, 1.0]
    W1 = (coef @ basis).reshape(8, 3, 1, 1)
    b1 = coef @ rng.uniform(-.1, .1, 3)
    W2 = rng.normal(0, 1, (4, 8, 1, 1))
    model = conv_pair(W1, b1, W2, rng.uniform(-.1, .1, 4), relu=False)
    return model, rng.normal(size=(64, 3, 8, 8)).astype(np.float32), W2


def test_entropic_finds_an_exact_keep_set_on_a_rank_deficient_layer():
    """The layer's output is exactly a linear function of 3 channels (any set with channel 2
    and two independent others, brute-forced here), so entropic keeps such a set and the
    re-fit (ridge 0) reproduces the output, in both modes. The path alone kept [1, 3, 7]
    (objective 0.007, relative output error about 0.08), as LASSO and ThiNet still do: on a
    covariance of rank 3 of 8 it loses the one channel that carries a small but
    irreplaceable direction; one exchange (1 for 2) puts it back."""
    model, x, W2 = rank_deficient_layer()
    X = consumer_rows(model, x, "h", 1)
    objs = brute_force(X, W2.reshape(4, -1), 8, 3, 1)
    exact = {S for S, v in objs.items() if v < 1e-12}
    assert len(exact) == 21 and all(2 in S for S in exact)
    for mode in ("oneshot", "sequential"):
        result = _prune(model, x, keep_ratio=3 / 8, method="entropic", mode=mode, refit_ridge=0.0)
        kept = tuple(_kept(result.report)["conv1"])
        y = _assert_valid(result.model, model, x)
        assert kept in exact and relative_error(run_model(model, x)["y"], y) <= 1e-4, (mode, kept, objs[kept])
