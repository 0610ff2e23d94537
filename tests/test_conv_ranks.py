"""1-D and 3-D convolutions (audio and time-series CNNs, video and volume CNNs) are pruned
as 2-D ones are.

* The statistics' im2col rows (``calibrate.stats.conv_patches`` over the geometry of
  ``graph.geometry``) times the flattened weight give onnxruntime's own Conv and
  ConvTranspose outputs at the sampled positions, for 1-, 2- and 3-D kernels with strides,
  dilations, asymmetric pads, ``auto_pad`` and ``output_padding``: the brute force here is
  the runtime itself.
* Small 1-D and 3-D networks (BatchNorm, pools, a depthwise and a transposed convolution, a
  Flatten into a Gemm; a 3-D U-Net with its skip Concat, reflect Pad, residual Add and
  Resize; a 1-D temporal net with a channel Split, causal Pads and a linear Resize) are
  pruned in both modes by every method: the output passes the full
  checker and runs, ``keep_ratio=1.0`` gives back the same function, the report's parameter
  count is the written file's, and a layer that reads only three of its input channels gets
  exactly those back from every data-driven method, with the output reproduced.

Before session 46 every convolution whose weight was not 4-D was frozen ('only 2-D
convolutions on NCHW tensors are handled'), so a Conv1d network had no prunable group.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as H
from onnx import numpy_helper as NH

import onnx_eprune
from onnx_eprune.calibrate.stats import ConvGeometry, conv_patches
from onnx_eprune.graph.geometry import conv_geometry, transposed_geometry
from onnx_eprune.graph.weights import transposed_to_conv


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _model(nodes, inits, x_shape, y_shape, opset: int = 17) -> onnx.ModelProto:
    graph = H.make_graph(nodes, "m", [H.make_tensor_value_info("x", TP.FLOAT, list(x_shape))],
                         [H.make_tensor_value_info("y", TP.FLOAT, list(y_shape))],
                         [NH.from_array(np.asarray(v) if np.asarray(v).dtype.kind in "iu" else
                                        np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# -- the rows against the runtime --------------------------------------------------------------

GEOMETRIES = {
    "1d": dict(spatial=(13,), kernel=(3,), attrs=dict(pads=[2, 1], strides=[2], dilations=[2])),
    "1d-same": dict(spatial=(10,), kernel=(4,), attrs=dict(auto_pad="SAME_LOWER", strides=[3])),
    "2d": dict(spatial=(7, 9), kernel=(3, 2), attrs=dict(pads=[1, 0, 2, 1], strides=[2, 1])),
    "3d": dict(spatial=(5, 6, 4), kernel=(2, 3, 3), attrs=dict(pads=[1, 1, 0, 0, 1, 2], strides=[1, 2, 1],
                                                                 dilations=[2, 1, 1])),
    "3d-same": dict(spatial=(4, 5, 5), kernel=(3, 3, 2), attrs=dict(auto_pad="SAME_UPPER")),
    "2d-valid": dict(spatial=(5, 4), kernel=(3, 2), attrs=dict(auto_pad="VALID", strides=[2, 1])),
    "2d-same-lower": dict(spatial=(5, 4), kernel=(3, 3), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 3])),
}

# a ConvTranspose's output_shape (odd and even total paddings), and the auto_pad that goes
# with it: the odd pad at the start (NOTSET) or at the end (SAME_UPPER)
OUTPUT_SHAPES = {
    "1d": ([26], "NOTSET"),
    "1d-same": ([28], "NOTSET"),
    "2d": ([14, 10], "NOTSET"),
    "3d": ([6, 11, 5], "NOTSET"),
    "3d-same": ([5, 6, 6], "NOTSET"),
    "2d-valid": ([10, 5], "NOTSET"),
    "2d-same-lower": ([9, 12], "SAME_UPPER"),
}


@pytest.mark.parametrize("transposed", [False, True, "output_shape"], ids=["Conv", "ConvTranspose", "output_shape"])
@pytest.mark.parametrize("case", list(GEOMETRIES))
def test_rows_times_weights_are_the_runtime_outputs(case: str, transposed: bool | str) -> None:
    spec = GEOMETRIES[case]
    spatial, kernel, attrs = spec["spatial"], spec["kernel"], dict(spec["attrs"])
    if transposed == "output_shape":
        attrs.pop("pads", None)
        attrs["output_shape"], attrs["auto_pad"] = OUTPUT_SHAPES[case]
    elif transposed:
        attrs["output_padding"] = [1 if s > 1 else 0 for s in attrs.get("strides", [1] * len(kernel))]
    rng = np.random.default_rng(len(case))
    c, m = 3, 4
    wshape = (c, m) + kernel if transposed else (m, c) + kernel
    w, b = rng.normal(size=wshape), rng.normal(size=m)
    x = rng.normal(size=(2, c) + spatial).astype(np.float32)
    op = "ConvTranspose" if transposed else "Conv"
    model = _model([H.make_node(op, ["x", "w", "b"], ["y"], **attrs)], {"w": w, "b": b},
                   x.shape, ["N", m] + ["?"] * len(spatial))
    y = _run(model, x)
    if transposed:
        geometry = transposed_geometry(attrs, wshape, spatial, y.shape)
        flat = transposed_to_conv(w).reshape(m, -1)
    else:
        geometry = conv_geometry(attrs, wshape, spatial, y.shape)
        flat = w.reshape(m, -1)
    assert geometry is not None and geometry["out_hw"] == y.shape[2:]
    n_pos = math.prod(y.shape[2:])
    positions = np.stack([np.arange(n_pos), rng.permutation(n_pos)])   # every position, in two orders
    rows = conv_patches(x, ConvGeometry.from_dict(geometry, y.shape[2:]), positions)
    expected = y.reshape(2, m, n_pos)[np.arange(2)[:, None], :, positions].reshape(-1, m)
    np.testing.assert_allclose(rows @ flat.T + b, expected, rtol=1e-4, atol=1e-4)


def test_transposed_to_conv_flips_every_kernel_axis() -> None:
    w = np.arange(2 * 3 * 2 * 3 * 4, dtype=np.float64).reshape(2, 3, 2, 3, 4)
    v = transposed_to_conv(w)
    assert v.shape == (3, 2, 2, 3, 4) and v[1, 0, 0, 2, 1] == w[0, 1, 1, 0, 2]
    np.testing.assert_array_equal(transposed_to_conv(v), w)


# -- networks ----------------------------------------------------------------------------------

TRUE = [1, 4, 6]


class Net:
    """A 1-D (``nd=1``) or 3-D network under construction, seeded weights."""

    def __init__(self, nd: int, seed: int = 0):
        self.nd, self.rng = nd, np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(H.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, reads=None,
             transposed: bool = False, **attrs) -> str:
        """``reads``: the only input channels the layer's weights are not zero on."""
        kernel = (k,) * self.nd
        shape = ((cin, cout // group) if transposed else (cout, cin // group)) + kernel
        w = self.rng.normal(0, 1 / math.sqrt(cin // group * k ** self.nd), shape)
        if reads is not None:
            w[:, [c for c in range(cin) if c not in reads]] = 0.0
        inputs = [x, self.const(f"{name}.w", w), self.const(f"{name}.b", self.rng.uniform(-.1, .1, cout))]
        attrs.setdefault("pads", [k // 2] * 2 * self.nd)
        if group != 1:
            attrs["group"] = group
        return self.node("ConvTranspose" if transposed else "Conv", inputs, name, **attrs)

    def bn(self, x: str, c: int, name: str) -> str:
        p = [self.const(f"{name}.{k}", self.rng.uniform(lo, hi, c))
             for k, lo, hi in (("s", .5, 1.5), ("b", -.1, .1), ("m", -.1, .1), ("v", .5, 1.5))]
        return self.node("BatchNormalization", [x] + p, name)

    def gemm(self, x: str, d: int, name: str = "fc", out: str = "y") -> str:
        self.nodes.append(H.make_node("Gemm", [x, self.const(f"{name}.w", self.rng.normal(0, 1 / math.sqrt(d), (10, d))),
                                               self.const(f"{name}.b", np.zeros(10))], [out], name=name, transB=1))
        return out


def net_1d() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Conv1d 3->8, BN, ReLU, MaxPool1d /2; depthwise Conv1d; Conv1d 8->12 (stride 2,
    dilation 2); ConvTranspose1d 12->8 (x2); Conv1d 8->6; Flatten (6 x 32) into a Gemm."""
    n = Net(1)
    t = n.node("Relu", [n.bn(n.conv("x", 3, 8, "c1", k=5, pads=[2, 2]), 8, "bn1")], "r1")
    t = n.node("MaxPool", [t], "pool", kernel_shape=[2], strides=[2])
    t = n.node("Relu", [n.conv(t, 8, 8, "dw", group=8)], "r2")
    t = n.node("Relu", [n.conv(t, 8, 12, "c2", strides=[2], dilations=[2], pads=[2, 2])], "r3")
    t = n.node("Relu", [n.conv(t, 12, 8, "up", k=2, transposed=True, strides=[2], pads=[0, 0])], "r4")
    t = n.node("Relu", [n.conv(t, 8, 6, "c3")], "r5")
    n.gemm(n.node("Flatten", [t], "flat"), 6 * 32)
    return _model(n.nodes, n.inits, ["N", 3, 64], ["N", 10]), (3, 64)


def net_3d() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Conv3d 2->8, ReLU, MaxPool3d /2; Conv3d 8->8 (its input channels 1, 4, 6 alone
    matter); ReLU; Conv3d 8->6; GlobalAveragePool; Flatten; Gemm."""
    n = Net(3)
    t = n.node("Relu", [n.conv("x", 2, 8, "c1")], "r1")
    t = n.node("MaxPool", [t], "pool", kernel_shape=[2, 2, 2], strides=[2, 2, 2])
    t = n.node("Relu", [n.conv(t, 8, 8, "c2", reads=TRUE)], "r2")
    t = n.node("Relu", [n.conv(t, 8, 6, "c3", k=1, pads=[0] * 6)], "r3")
    n.gemm(n.node("Flatten", [n.node("GlobalAveragePool", [t], "gap")], "flat"), 6)
    return _model(n.nodes, n.inits, ["N", 2, 4, 8, 8], ["N", 10]), (2, 4, 8, 8)


def reads_three_1d() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Conv1d 6->8 whose channels 1, 4, 6 alone feed Conv1d 8->4 (the others 4x louder, so
    that a filter norm is fooled); no activation between them. Six input channels, so that
    c1's 24 features that c2 reads span 24 of the 30 dimensions of the input window they
    come from: with three (15 dimensions) the covariance would be rank-deficient, where the
    entropic path can lose a channel it needs (tests/test_selection_methods.py)."""
    n = Net(1)
    t = n.conv("x", 6, 8, "c1")
    n.inits["c1.w"][[c for c in range(8) if c not in TRUE]] *= 4.0
    t = n.conv(t, 8, 4, "c2", reads=TRUE)
    n.nodes[-1].output[0] = "y"
    return _model(n.nodes, n.inits, ["N", 6, 24], ["N", 4, 24]), (6, 24)


def reads_three_transposed() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``reads_three_1d`` with a ConvTranspose1d 8->4 (stride 2) in place of c2, its padding
    given by ``output_shape`` (48 of the 49 outputs: one pad, at the start): only its input
    channels 1, 4, 6 are not zero."""
    n = Net(1)
    t = n.conv("x", 6, 8, "c1")
    n.inits["c1.w"][[c for c in range(8) if c not in TRUE]] *= 4.0
    n.conv(t, 8, 4, "c2", transposed=True, strides=[2], output_shape=[48])
    del n.nodes[-1].attribute[[a.name for a in n.nodes[-1].attribute].index("pads")]   # output_shape stands for them
    n.inits["c2.w"][[c for c in range(8) if c not in TRUE]] = 0.0
    n.nodes[-1].output[0] = "y"
    return _model(n.nodes, n.inits, ["N", 6, 24], ["N", 4, 48]), (6, 24)


def unet_3d() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """A 3-D U-Net (volumes): Conv3d 2->8 (skip), MaxPool3d /2, Conv3d 8->12, a depthwise
    Conv3d, ConvTranspose3d 12->8 (x2, output_padding 0), Concat with the skip (16
    channels), Pad (1 voxel, reflect) and Conv3d 16->8 without padding, a residual Add with a
    1x1x1 Conv3d of the skip, Resize (nearest, x1 on D, x2 on H and W) and a 1x1x1 Conv3d to
    3 classes per voxel: the segmentation output y (N, 3, 4, 16, 16)."""
    n = Net(3)
    skip = n.node("Relu", [n.conv("x", 2, 8, "c1")], "r1")
    t = n.node("MaxPool", [skip], "pool", kernel_shape=[2, 2, 2], strides=[2, 2, 2])
    t = n.node("Relu", [n.conv(t, 8, 12, "c2")], "r2")
    t = n.node("Relu", [n.conv(t, 12, 12, "dw", group=12)], "r3")
    t = n.node("Relu", [n.conv(t, 12, 8, "up", k=2, transposed=True, strides=[2, 2, 2], pads=[0] * 6)], "r4")
    t = n.node("Concat", [t, skip], "cat", axis=1)
    t = n.node("Pad", [t, n.const("pads", np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1], np.int64))], "pad",
               mode="reflect")
    t = n.conv(t, 16, 8, "c3", pads=[0] * 6)
    t = n.node("Relu", [n.node("Add", [t, n.conv(skip, 8, 8, "side", k=1, pads=[0] * 6)], "add")], "r5")
    t = n.node("Resize", [t, "", n.const("scales", np.array([1, 1, 1, 2, 2], np.float32))], "resize", mode="nearest")
    t = n.conv(t, 8, 3, "head", k=1, pads=[0] * 6)
    n.nodes[-1].output[0] = "y"
    return _model(n.nodes, n.inits, ["N", 2, 4, 8, 8], ["N", 3, 4, 16, 16]), (2, 4, 8, 8)


def test_a_3d_unet_is_pruned_through_its_skips_pads_and_resizes() -> None:
    """Every group of the 3-D U-Net but the input and the output is pruned; the output's
    shape holds and it stays close to the original (the re-fit on the calibration volumes)."""
    model, shape = unet_3d()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(48,) + shape).astype(np.float32)
    for mode in ("sequential", "oneshot"):
        result = onnx_eprune.prune(model, x, keep_ratio=0.75, mode=mode)
        onnx.checker.check_model(result.model, full_check=True)
        groups = {tuple(g["producers"]): g for g in result.report["groups"]}
        frozen = {k: g["frozen"] for k, g in groups.items() if g["frozen"]}
        assert set(frozen) == {(), ("head",)}, frozen       # the input and the output
        assert all(g["channels_after"] < g["channels_before"] for g in groups.values() if not g["frozen"])
        y, y0 = _run(result.model, x[:8]), _run(model, x[:8])
        assert y.shape == y0.shape and np.linalg.norm(y - y0) < 0.5 * np.linalg.norm(y0), mode
    same = onnx_eprune.prune(model, x, keep_ratio=1.0)
    np.testing.assert_allclose(_run(same.model, x[:8]), _run(model, x[:8]), rtol=1e-4, atol=1e-5)


def tcn_1d() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """A 1-D temporal net: Conv1d 4->12, Split of its channels [4, 8], a dilated Conv1d on
    each part (causal: Pad 2 / 4 on the left only), Concat (12), residual Add with the
    Conv1d's output, Resize (linear, x2 in time), a strided Conv1d 12->6, Flatten into a Gemm."""
    n = Net(1)
    t = n.node("Relu", [n.conv("x", 4, 12, "c1")], "r1")
    n.nodes.append(H.make_node("Split", [t, n.const("sizes", np.array([4, 8], np.int64))], ["p", "q"], name="split",
                               axis=1))
    parts = []
    for name, src, cin, dil in (("ca", "p", 4, 2), ("cb", "q", 8, 4)):
        padded = n.node("Pad", [src, n.const(f"{name}.pads", np.array([0, 0, 2 * dil, 0, 0, 0], np.int64))],
                        f"{name}.pad")
        parts.append(n.node("Relu", [n.conv(padded, cin, cin, name, pads=[0, 0], dilations=[dil])], f"{name}.r"))
    t = n.node("Add", [n.node("Concat", parts, "cat", axis=1), t], "add")
    t = n.node("Resize", [t, "", n.const("scales", np.array([1, 1, 2], np.float32))], "resize", mode="linear")
    t = n.node("Relu", [n.conv(t, 12, 6, "c2", strides=[2])], "r2")
    n.gemm(n.node("Flatten", [t], "flat"), 6 * 32)
    return _model(n.nodes, n.inits, ["N", 4, 32], ["N", 10]), (4, 32)


def test_a_1d_temporal_net_is_pruned_through_its_split_pads_and_resize() -> None:
    """The Split parts are pruned separately and the Concat and the residual Add couple them
    back with c1's channels; the causal Pads and the linear Resize pass the channels on."""
    model, shape = tcn_1d()
    x = np.random.default_rng(6).normal(size=(64,) + shape).astype(np.float32)
    for mode in ("sequential", "oneshot"):
        result = onnx_eprune.prune(model, x, keep_ratio=0.5, mode=mode)
        onnx.checker.check_model(result.model, full_check=True)
        pruned = [g for g in result.report["groups"] if not g["frozen"]]
        assert sorted(g["channels_before"] for g in pruned) == [4, 6, 8], result.report["groups"]
        assert all(g["channels_after"] == g["channels_before"] // 2 for g in pruned)
        y, y0 = _run(result.model, x[:8]), _run(model, x[:8])
        assert y.shape == y0.shape and np.all(np.isfinite(y))
    same = onnx_eprune.prune(model, x, keep_ratio=1.0)
    np.testing.assert_allclose(_run(same.model, x[:8]), _run(model, x[:8]), rtol=1e-4, atol=1e-5)


def _params(model: onnx.ModelProto) -> int:
    """Weights and biases of the Conv, ConvTranspose and Gemm nodes, as the report counts them."""
    dims = {t.name: t.dims for t in model.graph.initializer}
    return sum(math.prod(dims[name]) for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm")
               for name in node.input[1:] if name in dims)


@pytest.mark.parametrize("build", [net_1d, net_3d], ids=["1d", "3d"])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("method", ["entropic", "lasso", "thinet", "l1", "random"])
def test_networks_are_pruned_and_stay_valid(build, mode: str, method: str) -> None:
    model, shape = build()
    rng = np.random.default_rng(1)
    x, fresh = (rng.normal(size=(n,) + shape).astype(np.float32) for n in (96, 8))
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, method=method, mode=mode)
    onnx.checker.check_model(result.model, full_check=True)
    groups = result.report["groups"]
    pruned = [g for g in groups if not g["frozen"]]
    assert len(pruned) == (4 if build is net_1d else 3), groups   # 1-D: c1 and the depthwise dw are one group
    assert all(g["channels_after"] < g["channels_before"] for g in pruned), groups
    assert result.report["params"]["after"] == _params(result.model)
    y, y0 = _run(result.model, fresh), _run(model, fresh)
    assert y.shape == y0.shape and np.all(np.isfinite(y))


@pytest.mark.parametrize("build", [net_1d, net_3d], ids=["1d", "3d"])
def test_keep_ratio_one_gives_back_the_same_function(build) -> None:
    model, shape = build()
    x = np.random.default_rng(2).normal(size=(32,) + shape).astype(np.float32)
    result = onnx_eprune.prune(model, x, keep_ratio=1.0)
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [reads_three_1d, reads_three_transposed, net_3d], ids=["1d", "1d-transposed", "3d"])
@pytest.mark.parametrize("method", ["entropic", "lasso", "thinet"])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_data_methods_find_the_channels_a_layer_reads(build, mode: str, method: str) -> None:
    """Entropic's path alone kept [0, 4, 6] on the 1-D layer (re-fit error 0.024 where [1, 4, 6]
    reproduces the output exactly); the exchange that polishes a small group's keep-set
    (``entropic.exchange``) puts channel 1 back."""
    model, shape = build()
    x = np.random.default_rng(3).normal(size=(64,) + shape).astype(np.float32)
    options = dict(method=method, mode=mode)
    if build is not net_3d:
        options["keep_ratio"] = 3 / 8
    else:  # c1 alone is cut to its three channels; c2 and c3 stay whole
        options.update(keep_ratio=3 / 8, exclude=["c2", "c3"])
    result = onnx_eprune.prune(model, x, **options)
    c1 = next(g for g in result.report["groups"] if g["producers"] == ["c1"])
    assert c1["kept_channels"] == TRUE, c1
    if build is not net_3d:   # linear: the re-fit reproduces the output exactly
        y0 = _run(model, x)
        assert np.linalg.norm(_run(result.model, x) - y0) <= 1e-4 * np.linalg.norm(y0)
