"""Channel-analysis defects found by the graph audit, each on a small onnx.helper graph:
Resize (opset 18) ``axes`` with ``sizes``, BatchNormalization over flattened features,
secondary outputs and initializers that are graph outputs, and PyTorch's
``x.view(x.size(0), -1)``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import count_params, initializer, io_signature, relative_error, run_model
from onnx_eprune.calibrate.session import probe_shapes
from onnx_eprune.graph.analysis import analyze
from onnx_eprune.graph.rewrite import build_pruned

CPU = ["CPUExecutionProvider"]
HW = 12


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 3, HW, HW)).astype(np.float32)


@pytest.fixture(scope="module")
def test_x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((8, 3, HW, HW)).astype(np.float32)


def prune(model: onnx.ModelProto, calib: np.ndarray, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("method", "l1")
    return onnx_eprune.prune(model, calib, **kw)


class _Graph:
    """Nodes and seeded He-initialized weights of one test graph."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        scale = np.sqrt(2.0 / np.prod(shape[1:]))
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]

    def conv_relu(self, x: str, cin: int, cout: int, name: str, **attrs) -> str:
        c = self.node("Conv", [x, self.weight(f"{name}.w", (cout, cin, 3, 3))], [name], pads=[1] * 4, **attrs)
        return self.node("Relu", [c], [f"{name}.relu"])

    def head(self, x: str, features: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm to the output ``y``."""
        g = self.node("GlobalAveragePool", [x], ["gap"])
        f = self.node("Flatten", [g], ["flat"])
        return self.node("Gemm", [f, self.weight("fc.w", (10, features))], ["y"], transB=1)

    def model(self, opset: int = 13, extra_outputs=()) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]), *extra_outputs]
        graph = helper.make_graph(self.nodes, "audit", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                      ["N", 3, HW, HW])],
                                  outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  ir_version=8 if opset >= 15 else 7)
        onnx.checker.check_model(model, full_check=True)
        return model


def with_outputs(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    """A copy that also returns the intermediate tensors ``names`` (for inspection only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return out


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> None:
    """Checker, onnxruntime, same signature and output shapes."""
    onnx.checker.check_model(pruned, full_check=True)
    assert io_signature(pruned) == io_signature(original)
    ref, got = run_model(original, x), run_model(pruned, x)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}


def assert_keep_all_reproduces(model: onnx.ModelProto, calib: np.ndarray, x: np.ndarray) -> None:
    result = prune(model, calib, keep_ratio=1.0)
    assert_valid(result.model, model, x)
    ref, got = run_model(model, x), run_model(result.model, x)
    for name in ref:
        assert relative_error(ref[name], got[name]) <= 1e-4, name


def report_group(result, producer: str) -> dict:
    return next(g for g in result.report["groups"] if producer in g["producers"])


# -- Resize with axes: sizes hold only the resized axes --------------------------------------

def resize_axes_model(axes: list[int], sizes: list[int]) -> onnx.ModelProto:
    """Conv -> Conv(16) -> Resize(axes, sizes) -> Conv -> head, opset 18."""
    g = _Graph()
    r1 = g.conv_relu("x", 3, 8, "conv1", strides=[2, 2])
    r2 = g.conv_relu(r1, 8, 16, "conv2")
    up = g.node("Resize", [r2, "", "", g.const("sizes", np.array(sizes, np.int64))], ["up"], mode="linear", axes=axes)
    g.head(g.conv_relu(up, 16, 8, "conv3"), 8)
    return g.model(opset=18)


@pytest.mark.parametrize("axes, sizes, after", [([2, 3], [9, 10], [9, 10]), ([-2, -1], [9, 10], [9, 10]),
                                                ([1, 2, 3], [16, 9, 10], [8, 9, 10])])
def test_resize_sizes_follow_the_channel_axis_through_axes(axes, sizes, after, calib, test_x):
    model = resize_axes_model(axes, sizes)
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    assert report_group(result, "conv2")["channels_after"] == 8
    assert initializer(result.model, "sizes").tolist() == after
    assert run_model(with_outputs(result.model, "up"), test_x)["up"].shape == (len(test_x), 8, 9, 10)


# -- BatchNormalization over flattened features -----------------------------------------------

def bn_after_flatten_model() -> onnx.ModelProto:
    """Conv -> Conv(8) -> Flatten (N, 8*3*3) -> BatchNormalization(72) -> Gemm."""
    g = _Graph()
    r1 = g.conv_relu("x", 3, 8, "conv1", strides=[2, 2])
    r2 = g.conv_relu(r1, 8, 8, "conv2", strides=[2, 2])
    f = g.node("Flatten", [r2], ["flat"])
    n = 8 * 3 * 3
    bn = [g.const(name, g.rng.uniform(lo, hi, n).astype(np.float32))
          for name, lo, hi in (("bn.s", 0.5, 1.5), ("bn.b", -.1, .1), ("bn.m", -.1, .1), ("bn.v", 0.5, 1.5))]
    fb = g.node("BatchNormalization", [f, *bn], ["bn"])
    g.node("Gemm", [fb, g.weight("fc.w", (10, n))], ["y"], transB=1)
    return g.model()


def test_bn_after_flatten_slices_every_feature_of_a_dropped_channel(calib):
    model = bn_after_flatten_model()
    analysis = analyze(model, probe_shapes(model, {"x": calib[:1]}, CPU))
    group = next(g for g in analysis.groups if g.prunable and model.graph.node[g.producers[0].node].name == "conv2")
    keep = np.array([0, 3, 5, 6])
    pruned = build_pruned(model, analysis, {group.gid: keep}, {})
    onnx.checker.check_model(pruned, full_check=True)
    for name in ("bn.s", "bn.b", "bn.m", "bn.v"):
        expected = initializer(model, name).reshape(8, 9)[keep].reshape(-1)
        np.testing.assert_array_equal(initializer(pruned, name), expected)


def test_bn_after_flatten_prunes(calib, test_x):
    model = bn_after_flatten_model()
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    assert report_group(result, "conv2")["channels_after"] == 4
    assert initializer(result.model, "bn.s").shape == (4 * 9,)
    assert count_params(result.model) < count_params(model)


# -- secondary outputs and initializers that are graph outputs ---------------------------------

def two_output_model(op: str) -> onnx.ModelProto:
    """Conv -> Conv(16) -> MaxPool with Indices / Dropout with mask -> Conv -> head; the
    second output ``aux`` is a graph output."""
    g = _Graph()
    r2 = g.conv_relu(g.conv_relu("x", 3, 8, "conv1"), 8, 16, "conv2")
    if op == "MaxPool":
        g.node("MaxPool", [r2], ["pool", "aux"], kernel_shape=[2, 2], strides=[2, 2])
        aux = helper.make_tensor_value_info("aux", TensorProto.INT64, ["N", 16, HW // 2, HW // 2])
    else:
        g.node("Dropout", [r2], ["pool", "aux"])
        aux = helper.make_tensor_value_info("aux", TensorProto.BOOL, ["N", 16, HW, HW])
    g.head(g.conv_relu("pool", 16, 8, "conv3"), 8)
    return g.model(extra_outputs=[aux])


@pytest.mark.parametrize("op, reason", [("MaxPool", "MaxPool indices are read by a node or are a graph output"),
                                        ("Dropout", "Dropout mask is read by a node or is a graph output")])
def test_secondary_graph_output_freezes_its_channels(op, reason, calib, test_x):
    model = two_output_model(op)
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    group = report_group(result, "conv2")
    assert group["channels_after"] == 16 and reason in group["frozen"]
    ref, got = run_model(model, test_x)["aux"], run_model(result.model, test_x)["aux"]
    if op == "MaxPool":  # re-fitted conv2 weights may move a maximum, but not to another (sample, channel)
        ref, got = ref // (HW * HW), got // (HW * HW)
    np.testing.assert_array_equal(got, ref)
    assert count_params(result.model) < count_params(model)  # conv1 and conv3 still prune


def test_initializer_graph_output_is_never_sliced(calib, test_x):
    model = two_output_model("MaxPool")
    del model.graph.output[1:]
    model.graph.output.append(helper.make_tensor_value_info("conv2.w", TensorProto.FLOAT, [16, 8, 3, 3]))
    onnx.checker.check_model(model, full_check=True)
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    np.testing.assert_array_equal(initializer(result.model, "conv2.w"), initializer(model, "conv2.w"))
    reason = "initializer 'conv2.w' is a graph output"
    assert reason in report_group(result, "conv1")["frozen"]   # its columns
    assert reason in report_group(result, "conv2")["frozen"]   # its rows
    assert report_group(result, "conv3")["channels_after"] == 4


# -- x.view(x.size(0), -1) ----------------------------------------------------------------------

def view_flatten_model(feature_entry: str) -> onnx.ModelProto:
    """Conv -> Conv(16) -> GlobalAveragePool -> Reshape(Concat(Unsqueeze(Gather(Shape, 0)), f))
    -> Gemm, with ``f`` the constant [-1] ("constant") or Shape's channel entry ("channels")."""
    g = _Graph()
    pooled = g.node("GlobalAveragePool", [g.conv_relu(g.conv_relu("x", 3, 8, "conv1"), 8, 16, "conv2")], ["gap"])
    shape = g.node("Shape", [pooled], ["shape"])
    axis0 = g.const("axis0", np.array([0], np.int64))

    def entry(i: int) -> str:
        picked = g.node("Gather", [shape, g.const(f"i{i}", np.array(i, np.int64))], [f"dim{i}"], axis=0)
        return g.node("Unsqueeze", [picked, axis0], [f"dim{i}.1d"])

    features = g.const("minus1", np.array([-1], np.int64)) if feature_entry == "constant" else entry(1)
    target = g.node("Concat", [entry(0), features], ["target"], axis=0)
    flat = g.node("Reshape", [pooled, target], ["flat"])
    g.node("Gemm", [flat, g.weight("fc.w", (10, 16))], ["y"], transB=1)
    return g.model()


def test_view_size0_minus1_flatten_is_prunable(calib, test_x):
    model = view_flatten_model("constant")
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    group = report_group(result, "conv2")
    assert group["frozen"] is None and group["channels_after"] == 8
    assert count_params(result.model) < count_params(model)


def test_view_target_that_reads_the_channel_count_follows_it(calib, test_x):
    """The count Gathered from the Shape is the kept one at run time (since session 58)."""
    model = view_flatten_model("channels")
    assert_keep_all_reproduces(model, calib, test_x)
    result = prune(model, calib, keep_ratio=0.5)
    assert_valid(result.model, model, test_x)
    group = report_group(result, "conv2")
    assert group["frozen"] is None and group["channels_after"] == 8
