"""Ops that cut the batch (a Slice to the first sample, a Resize or Reshape to a batch of
one) in a model whose batch is free. The shapes are probed at one sample, where such an op
looks like a no-op; at the calibration batch the layers after it see one row where the
statistics expect one per sample. Their channels freeze, naming the op, and so do the
channels of everything computed from its output; the layers before it still prune. In a
model exported for a batch of one the same op is a no-op and prunes through."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune

CALIB = np.random.default_rng(5).normal(size=(64, 3, 8, 8)).astype(np.float32)


def _cut_model(cut: str, batch: int | str = "N") -> onnx.ModelProto:
    """conv0 (3->8) -> Relu -> conv1 (8->8) -> Relu -> ``cut`` [-> LRN, an op the analysis
    does not follow: ``cut`` "slice_lrn"] -> conv2 (8->8) -> Relu -> conv3 (8->8) -> Relu ->
    GlobalAveragePool -> Flatten -> fc (8->10) = y."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def conv(x, cin, name):
        w = const(f"{name}.w", rng.normal(0, np.sqrt(2 / (9 * cin)), (8, cin, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w, const(f"{name}.b", rng.uniform(-0.1, 0.1, 8))], [name],
                                      name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [name], [f"{name}.r"]))
        return f"{name}.r"

    h = conv(conv("x", 3, "conv0"), 8, "conv1")
    if cut.startswith("slice"):
        nodes.append(helper.make_node("Slice", [h, const("lo", [0], np.int64), const("hi", [1], np.int64),
                                                const("ax", [0], np.int64)], ["cut"], name="cut"))
    else:
        nodes.append(helper.make_node("Resize", [h, "", "", const("sizes", [1, 8, 8, 8], np.int64)], ["cut"],
                                      name="cut", mode="nearest"))
    h = "cut"
    if cut == "slice_lrn":
        nodes.append(helper.make_node("LRN", ["cut"], ["lrn"], size=3))
        h = "lrn"
    h = conv(conv(h, 8, "conv2"), 8, "conv3")
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", rng.normal(0, 0.3, (10, 8))),
                                           const("fc.b", np.zeros(10))], ["y"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "batch_cut", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _group(report: dict, producer: str) -> dict:
    return next(g for g in report["groups"] if producer in g["producers"])


@pytest.mark.parametrize("cut", ["slice", "resize", "slice_lrn"])
def test_a_batch_cut_freezes_what_it_reads_and_everything_after_it(cut):
    """conv3 reads conv2's channels one row per batch: its statistics would meet 1 image
    where 64 positions' keys were drawn (a raw ValueError before session 52)."""
    result = onnx_eprune.prune(_cut_model(cut), CALIB, keep_ratio=0.5, device="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert _group(result.report, "conv0")["channels_after"] == 4  # before the cut: pruned
    assert "the batch" in _group(result.report, "conv1")["frozen"]
    for later in ("conv2", "conv3"):
        frozen = _group(result.report, later)["frozen"]
        assert "computed after cut" in frozen and "no row per sample" in frozen


@pytest.mark.parametrize("cut", ["slice", "resize"])
def test_in_a_model_of_batch_one_the_same_op_prunes_through(cut):
    result = onnx_eprune.prune(_cut_model(cut, batch=1), CALIB, keep_ratio=0.5, device="cpu")
    assert all(_group(result.report, c)["channels_after"] == 4 for c in ("conv0", "conv1", "conv2", "conv3"))
