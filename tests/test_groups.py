"""Channel-group analysis on the small models of models.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models import ALL_BUILDERS, EXPECTED, FEATURE_OUTPUT, cnn_constant_weights, random_input, run_model
from onnx_eprune.calibrate.session import probe_groups, probe_shapes
from onnx_eprune.graph.analysis import analyze
from onnx_eprune.graph.model_io import constants_to_initializers

CPU = ["CPUExecutionProvider"]


def analysis_of(model: onnx.ModelProto, convert: bool = True):
    if convert:
        constants_to_initializers(model)
    return model, probe_groups(model, {"x": random_input(1)}, CPU)[1]


def producer_names(model, group) -> list[str]:
    return sorted(model.graph.node[p.node].name for p in group.producers)


def group_produced_by(model, analysis, name: str):
    for g in analysis.groups:
        if any(model.graph.node[p.node].name == name for p in g.producers):
            return g
    raise AssertionError(f"no group produced by {name}")


def cnn_groups(model, analysis):
    """The groups of the conv/conv/gemm CNN, in graph order of their producers."""
    groups = analysis.prunable_groups()
    return sorted(groups, key=lambda g: min(p.node for p in g.producers))


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_expected_structure(name):
    model, analysis = analysis_of(ALL_BUILDERS[name]())
    expected = EXPECTED[name]
    prunable = analysis.prunable_groups()
    assert len(prunable) == expected["prunable"], [(g.gid, g.frozen) for g in analysis.groups]
    assert sorted(len(g.producers) for g in prunable) == expected["producers"]
    for g in prunable:
        assert g.prunable and not g.frozen
        assert g.consumers, f"prunable group {g.gid} has no consumer"
        assert g.channels > 0
    if expected["frozen"] is not None:
        reasons = [r for g in analysis.groups if g.producers for r in g.frozen]
        assert any(expected["frozen"] in r for r in reasons), reasons


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_graph_input_and_output_groups_are_frozen(name):
    model, analysis = analysis_of(ALL_BUILDERS[name]())
    out_group = group_produced_by(model, analysis, "y")
    assert not out_group.prunable
    assert any("graph output" in r for r in out_group.frozen)
    for g in analysis.groups:
        if any(t == "x" for t, *_ in g.tensors):
            assert not g.prunable and "graph input" in g.frozen


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("flatten", ["flatten", "reshape0", "reshape_explicit"])
def test_cnn_groups(folded, flatten):
    from models import conv_bn_relu_pool_flatten_gemm

    model, analysis = analysis_of(conv_bn_relu_pool_flatten_gemm(folded, flatten=flatten))
    g1, g2, g3 = cnn_groups(model, analysis)
    nodes = model.graph.node
    assert [nodes[g.producers[0].node].op_type for g in (g1, g2, g3)] == ["Conv", "Conv", "Gemm"]
    assert [g.channels for g in (g1, g2, g3)] == [8, 16, 32]
    # each group is read by exactly the next weighted layer
    readers = [[analysis.consumers[c] for c in g.consumers] for g in (g1, g2, g3)]
    assert [[c.kind for c in r] for r in readers] == [["conv"], ["gemm"], ["gemm"]]
    assert readers[0][0].s == 9            # 3x3 kernel
    assert readers[1][0].s == 16           # 4x4 spatial positions behind the Flatten/Reshape
    assert readers[2][0].s == 1
    assert readers[1][0].in_channels == 16 and readers[1][0].out_channels == 32
    if folded:
        assert all(g.producers[0].bias for g in (g1, g2)) and not g1.params and not g2.params
    else:  # bias-free convs; the four BN vectors are sliced with the group
        assert g1.producers[0].bias is None
        for g in (g1, g2):
            assert len(g.params) == 4
            assert {nodes[p.node].op_type for p in g.params} == {"BatchNormalization"}
            assert all(p.axis == 0 and p.offset == 0 for p in g.params)
    if flatten == "reshape_explicit":
        assert len(g2.shape_params) == 1
        sp = g2.shape_params[0]
        assert nodes[sp.node].op_type == "Reshape" and sp.index == 1
    else:
        assert not any(g.shape_params for g in analysis.groups)


def test_constant_node_weights_need_conversion():
    raw = cnn_constant_weights()
    assert not raw.graph.initializer
    _, analysis = analysis_of(onnx.ModelProto.FromString(raw.SerializeToString()), convert=False)
    assert not analysis.prunable_groups()
    assert any("non-constant weights" in r for g in analysis.groups for r in g.frozen)

    model = onnx.ModelProto.FromString(raw.SerializeToString())
    n_const = sum(1 for n in model.graph.node if n.op_type == "Constant")
    assert constants_to_initializers(model) == n_const
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    _, analysis = analysis_of(model, convert=False)
    assert len(analysis.prunable_groups()) == 3


def test_residual_add_unites_stem_and_second_conv():
    from models import residual

    model, analysis = analysis_of(residual())
    joint = group_produced_by(model, analysis, "stem")
    assert producer_names(model, joint) == ["conv_b", "stem"]
    assert joint.prunable and joint.channels == 8
    readers = sorted(analysis.consumers[c].name for c in joint.consumers)
    assert readers == ["conv_a", "y"]
    assert "add" in {t for t, *_ in joint.tensors}
    inner = group_produced_by(model, analysis, "conv_a")
    assert inner.prunable and inner.gid != joint.gid
    assert [analysis.consumers[c].name for c in inner.consumers] == ["conv_b"]


def test_depthwise_conv_passes_the_group_through():
    from models import depthwise

    model, analysis = analysis_of(depthwise())
    g = group_produced_by(model, analysis, "conv1")
    assert g.prunable and producer_names(model, g) == ["conv1"]
    assert [analysis.consumers[c].name for c in g.consumers] == ["conv2"]
    sliced = sorted((p.tensor, p.axis) for p in g.params)
    assert sliced == [("dw.bias", 0), ("dw.weight", 0)]
    assert all(model.graph.node[p.node].name == "dw" for p in g.params)
    # the depthwise conv is neither a producer nor a consumer of any group
    assert not any(c.name == "dw" for c in analysis.consumers)
    assert not any(model.graph.node[p.node].name == "dw" for h in analysis.groups for p in h.producers)
    assert "dw" in {t for t, *_ in g.tensors}


@pytest.mark.parametrize("op", ["LRN", "Softmax"])
def test_unknown_op_freezes_the_groups_it_touches(op):
    from models import unknown_op

    model, analysis = analysis_of(unknown_op(op))
    g1 = group_produced_by(model, analysis, "conv1")
    assert not g1.prunable
    # a Softmax over the channels is understood, and freezes them
    assert any(op in r and ("not understood" in r or "channel axis" in r) for r in g1.frozen), g1.frozen
    assert group_produced_by(model, analysis, "conv2").prunable


def test_graph_output_freezes_its_group():
    from models import intermediate_output

    model, analysis = analysis_of(intermediate_output())
    g1 = group_produced_by(model, analysis, "conv1")
    assert not g1.prunable
    assert any("graph output" in r for r in g1.frozen)
    assert FEATURE_OUTPUT in {t for t, *_ in g1.tensors}
    assert group_produced_by(model, analysis, "conv2").prunable


def test_gemm_attributes_and_matmul_consumer():
    from models import gemm_matmul

    model, analysis = analysis_of(gemm_matmul())
    by_name = {c.name: c for c in analysis.consumers}
    gemm = by_name["gemm_ab"]
    assert gemm.kind == "gemm" and not gemm.gemm_trans_b
    assert gemm.alpha == pytest.approx(0.5) and gemm.beta == pytest.approx(2.0)
    assert gemm.in_channels == 8 and gemm.out_channels == 16 and gemm.s == 1
    mm = by_name["matmul"]
    assert mm.kind == "matmul" and mm.bias is None and mm.in_channels == 16 and mm.out_channels == 12
    g_gemm = group_produced_by(model, analysis, "gemm_ab")
    assert g_gemm.prunable and g_gemm.channels == 16
    assert g_gemm.producers[0].weight_axis == 1          # (D, M) weight: outputs on axis 1
    assert g_gemm.producers[0].bias == "gemm_ab.bias"
    g_mm = group_produced_by(model, analysis, "matmul")
    assert g_mm.prunable and g_mm.producers[0].weight_axis == 1 and g_mm.producers[0].bias is None
    assert [analysis.consumers[c].name for c in g_mm.consumers] == ["y"]


def test_analysis_is_deterministic():
    from models import residual

    a = analysis_of(residual())[1]
    b = analysis_of(residual())[1]
    assert [(g.gid, g.channels, g.frozen, [p.node for p in g.producers]) for g in a.groups] == \
        [(g.gid, g.channels, g.frozen, [p.node for p in g.producers]) for g in b.groups]


def test_analysis_does_not_depend_on_probe_batch():
    from models import cnn_reshape

    model = cnn_reshape(explicit=True)
    one = analyze(model, probe_shapes(model, {"x": random_input(1)}, CPU))
    four = analyze(model, probe_shapes(model, {"x": random_input(4)}, CPU))
    assert [len(g.producers) for g in one.prunable_groups()] == [len(g.producers) for g in four.prunable_groups()]
    assert np.array_equal([g.channels for g in one.groups], [g.channels for g in four.groups])


def test_consumer_too_wide_for_statistics_leaves_its_group_to_reduced_statistics(monkeypatch):
    """A consumer whose Gram matrix would not fit (here: limit lowered to 100 features) that
    reads one group, in its own weight, leaves that group prunable, listed in ``wide`` with
    the width (only a run on reduced statistics prunes it: tests/test_wide_consumers.py);
    one that reads two groups (behind a Concat) freezes both, with the width in the reason.
    Narrower consumers change nothing."""
    from onnx_eprune.graph import analysis as analysis_module
    from models import concat_branches, conv_bn_relu_pool_flatten_gemm

    monkeypatch.setattr(analysis_module, "MAX_CONSUMER_FEATURES", 100)
    model, analysis = analysis_of(conv_bn_relu_pool_flatten_gemm(True))
    conv1, conv2 = (group_produced_by(model, analysis, n) for n in ("conv_1", "conv_4"))
    assert conv1.prunable and conv1.gid not in analysis.wide  # conv1 feeds conv2: 8 channels x 9 taps = 72 features
    assert conv2.prunable and "reads 256 features" in analysis.wide[conv2.gid]
    model, analysis = analysis_of(concat_branches())
    a, b = (group_produced_by(model, analysis, n) for n in ("branch_a", "branch_b"))
    for g in (a, b):  # conv_cat reads 16 channels x 9 taps = 144 features, of two groups
        assert not g.prunable and any("reads 144 features" in r for r in g.frozen) and g.gid not in analysis.wide


def consumer_rows_reproduce_output(node: onnx.NodeProto, w: np.ndarray, size: int):
    """Run the one-node model of ``node`` (input "x" [n, 3, size, size], weight "w") in
    onnxruntime and check that its consumer's statistics patches at 40 sampled positions,
    times its weight matrix, give the output there; returns the consumer."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_eprune.calibrate.stats import ConvGeometry, conv_patches, sample_positions
    from onnx_eprune.graph.weights import consumer_matrix

    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(3).normal(size=(2, 3, size, size)).astype(np.float32)
    y = run_model(model, x)["y"]
    cons, = analyze(model, probe_shapes(model, {"x": x[:1]}, CPU)).consumers
    theta, _ = consumer_matrix({"w": model.graph.initializer[0]}, cons)
    geo = ConvGeometry.from_dict(cons.conv, y.shape[2:])
    n_pos = y.shape[2] * y.shape[3]
    pos = sample_positions(np.array([5, 6], dtype=np.uint64), 0, n_pos, min(40, n_pos))
    rows = conv_patches(x, geo, pos) @ theta.T.astype(np.float32)
    m = y.shape[1]
    expect = y.reshape(2, m, -1).transpose(0, 2, 1)[np.arange(2)[:, None], pos].reshape(-1, m)
    np.testing.assert_allclose(rows, expect, rtol=1e-4, atol=1e-4)
    return cons


@pytest.mark.parametrize("kernel,stride,pads,extra,dil", [(2, 2, 0, 0, 1), (3, 2, 1, 1, 1), (3, 1, 1, 0, 1),
                                                          (4, 2, 3, 0, 1), (3, 3, 0, 2, 2)])
def test_conv_transpose_consumer_rows_reproduce_its_output(kernel, stride, pads, extra, dil):
    """The patches of the Conv that a ConvTranspose equals, times its flipped weight, give
    onnxruntime's output at every sampled position (pads beyond the kernel crop)."""
    from onnx import helper

    w = np.random.default_rng(3).normal(size=(3, 4, kernel, kernel)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[kernel, kernel], strides=[stride] * 2,
                            pads=[pads] * 4, output_padding=[extra] * 2, dilations=[dil] * 2)
    cons = consumer_rows_reproduce_output(node, w, 16)
    assert cons.kind == "convT" and cons.in_channels == 3 and cons.out_channels == 4


# onnxruntime runs dilated convolutions with VALID padding only
AUTO_PAD_CASES = [(pad, k, s, 1, n) for pad in ("SAME_UPPER", "SAME_LOWER", "VALID")
                  for k, s, n in ((3, 1, 16), (4, 1, 16), (4, 2, 16), (2, 2, 15), (5, 3, 15))] + [("VALID", 3, 2, 2, 15)]


@pytest.mark.parametrize("auto_pad,kernel,stride,dil,size", AUTO_PAD_CASES)
def test_auto_pad_conv_rows_reproduce_its_output(auto_pad, kernel, stride, dil, size):
    """The statistics' patches of a Conv padded by ``auto_pad``, times its weight, give
    onnxruntime's output at every sampled position (even kernels and odd sizes make the
    SAME pads uneven: UPPER puts the extra one at the end, LOWER at the start)."""
    from onnx import helper

    w = np.random.default_rng(7).normal(size=(4, 3, kernel, kernel)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kernel, kernel], strides=[stride] * 2,
                            dilations=[dil] * 2, auto_pad=auto_pad)
    cons = consumer_rows_reproduce_output(node, w, size)
    assert cons.kind == "conv" and cons.in_channels == 3 and cons.out_channels == 4


def test_nhwc_graph_input_leaves_the_stem_prunable():
    """TensorFlow's NHWC input: scaled by per-channel constants on the last axis, then
    transposed to NCHW for the stem Conv. The input's channels stay frozen, the stem's
    output channels do not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "stem.w"),
             numpy_helper.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "head.w")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "stem.w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["stem"], ["r"]),
             helper.make_node("Conv", ["r", "head.w"], ["y"], name="head", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    shapes = probe_shapes(model, {"x": np.zeros((1, 16, 16, 3), np.float32)}, CPU)
    analysis = analyze(model, shapes)
    stem = group_produced_by(model, analysis, "stem")
    assert stem.prunable and stem.channels == 8
    assert [analysis.consumers[c].name for c in stem.consumers] == ["head"]
    assert not any(g.prunable for g in analysis.groups if any(t == "x" for t, *_ in g.tensors))


def test_per_region_rows_freeze_a_model_without_batch_axis():
    """A model taking one image without a batch axis whose later layers work on rows of
    their own (a detector's regions; here one row per pixel): ``per_image`` freezes the
    groups on those rows, whose statistics cannot be told by image, and the comparison
    outputs are the last weighted layer with one row per image."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_eprune.calibrate.engine import Topology
    from onnx_eprune.calibrate.sensitivity import comparison_outputs

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("axis0", np.array([0], np.int64)), ("rows", np.array([-1, 8], np.int64)),
        ("w1", rng.normal(size=(8, 3, 3, 3)).astype(np.float32)),
        ("g1", rng.normal(size=(16, 8)).astype(np.float32)), ("g2", rng.normal(size=(4, 16)).astype(np.float32))]]
    nodes = [helper.make_node("Unsqueeze", ["x", "axis0"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["pixels"]),
             helper.make_node("Gemm", ["pixels", "g1"], ["h"], transB=1, name="gemm1"),
             helper.make_node("Relu", ["h"], ["r2"]),
             helper.make_node("Gemm", ["r2", "g2"], ["y"], transB=1, name="gemm2")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["pixels", 4])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    shapes = probe_shapes(model, {"x": random_input(1)}, CPU)   # one image, its sample axis dropped
    assert shapes["x"] == (3, 16, 16) and shapes["h"] == (256, 16)
    assert group_produced_by(model, analyze(model, shapes, per_image=False), "gemm1").prunable
    analysis = analyze(model, shapes)   # per image: the input has no batch axis
    hidden = group_produced_by(model, analysis, "gemm1")
    assert not hidden.prunable and "256 rows per image" in hidden.frozen[-1]
    assert comparison_outputs(model, analysis, Topology(model), shapes) == ["c1"]
