"""Constructs that some exporters write and the other tests' models do not.

* Convolutions padded by ``auto_pad`` (TensorFlow's "SAME" and "VALID", kept by tf2onnx
  and older converters) are pruned with a close fit (their patches: ``test_groups.py``).
* Splits whose sizes are an attribute (opset < 13), or that split evenly without sizes
  (any opset, and ``num_outputs`` from opset 18): the rewrite must write the kept sizes in
  the form the opset allows.
* Slice and Split of spatial axes, Upsample (opset 9), and a Transpose before a channel
  Slice / Split: channels pass through, and the groups stay prunable.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_eprune
from models import CLASSES, INPUT, IN_CHANNELS, OUTPUT, _Builder, io_signature, random_input, relative_error, run_model
from onnx_eprune.calibrate.session import probe_groups
from onnx_eprune.graph.model_io import constants_to_initializers

CPU = ["CPUExecutionProvider"]
CALIB = random_input(48, seed=4)
FRESH = random_input(5, seed=5)


def check_pruned(model: onnx.ModelProto, **target) -> onnx_eprune.PruneResult:
    """Prune ``model`` to ``target``; the result passes the full checker, keeps the model's
    inputs and outputs and runs on a batch of another size; the input is left unchanged."""
    before = model.SerializeToString()
    result = onnx_eprune.prune(model, CALIB, device="cpu", **target)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert io_signature(result.model) == io_signature(model)
    assert run_model(result.model, FRESH)[OUTPUT].shape == (len(FRESH), CLASSES)
    return result


def assert_keep_all_is_identity(model: onnx.ModelProto) -> None:
    """``keep_ratio=1.0`` prunes nothing and gives the original outputs."""
    result = check_pruned(model, keep_ratio=1.0)
    assert result.report["params"]["after"] == result.report["params"]["before"]
    assert relative_error(run_model(model, FRESH)[OUTPUT], run_model(result.model, FRESH)[OUTPUT]) < 1e-5


def kept_counts(result: onnx_eprune.PruneResult) -> dict[str, int]:
    """Channels kept per prunable group of the report, by the group's first producer."""
    return {g["producers"][0]: g["channels_after"] for g in result.report["groups"] if g["frozen"] is None}


def node_of(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    node, = (n for n in model.graph.node if n.op_type == op)
    return node


# -- auto_pad ---------------------------------------------------------------------------

def auto_pad_cnn(auto_pad: str) -> onnx.ModelProto:
    """Conv(3->16, 3x3, stride 2, ``auto_pad``) -> Relu -> Conv(16->16, 3x3, ``auto_pad``)
    -> Relu -> GAP -> Gemm."""
    b = _Builder(3)
    h = b.node("Conv", [INPUT, b.weight("c1.weight", (16, IN_CHANNELS, 3, 3), 27), b.vector("c1.bias", 16)],
               name="c1", kernel_shape=[3, 3], strides=[2, 2], auto_pad=auto_pad)
    h = b.node("Conv", [b.node("Relu", [h]), b.weight("c2.weight", (16, 16, 3, 3), 144), b.vector("c2.bias", 16)],
               name="c2", kernel_shape=[3, 3], auto_pad=auto_pad)
    return b.build(b.gemm(b.gap_flatten(b.node("Relu", [h])), 16, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_cnn_prunes_with_a_close_fit(auto_pad):
    """Both groups of a CNN padded by ``auto_pad`` are pruned, and at half of c1's channels
    the re-fit keeps the logits close (they would not be if the patches were misaligned)."""
    model = auto_pad_cnn(auto_pad)
    assert_keep_all_is_identity(model)
    result = check_pruned(model, keep_ratio=0.5)
    assert kept_counts(result) == {"c1": 8, "c2": 8}
    kept = check_pruned(model, keep_ratio=0.75)
    err_half, err_most = (relative_error(run_model(model, FRESH)[OUTPUT], run_model(r.model, FRESH)[OUTPUT])
                          for r in (result, kept))
    assert err_most < err_half < 0.5


# -- Split sizes in every form ----------------------------------------------------------

def split_cnn(form: str) -> onnx.ModelProto:
    """Conv(3->16) -> Relu -> Split on channels -> Conv on the first part -> Concat with the
    second -> Conv(16->16) -> Relu -> GAP -> Gemm, the Split written as ``form``:
    "attribute" (opset 11, ``split=[10, 6]``), "even11" / "even13" (8 + 8 without sizes,
    opset 11 / 13) or "num_outputs" (8 + 8, opset 18)."""
    b = _Builder(5)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 16, name="conv_in")])
    first_size = 10 if form == "attribute" else 8
    attrs = {"axis": 1}
    if form == "attribute":
        attrs["split"] = [first_size, 16 - first_size]
    elif form == "num_outputs":
        attrs["num_outputs"] = 2
    first = b.node("Split", [h], name="split", n_out=2, **attrs)
    a = b.node("Relu", [b.conv(first, first_size, first_size, name="conv_half")])
    h = b.node("Relu", [b.conv(b.node("Concat", [a, "split_out1"], name="concat", axis=1), 16, 16, name="conv_out")])
    opset = {"attribute": 11, "even11": 11, "even13": 13, "num_outputs": 18}[form]
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=opset)


def split_sizes(model: onnx.ModelProto) -> list[int]:
    """The sizes the model's Split writes: its sizes input or ``split`` attribute."""
    node = node_of(model, "Split")
    if len(node.input) > 1 and node.input[1]:
        sizes, = (numpy_helper.to_array(i) for i in model.graph.initializer if i.name == node.input[1])
        return sizes.tolist()
    return list(next(a.ints for a in node.attribute if a.name == "split"))


@pytest.mark.parametrize("form", ["attribute", "even11", "even13", "num_outputs"])
def test_split_sizes_follow_the_kept_channels(form):
    """Each part of a Split is its own group; after pruning, the Split's sizes (an attribute
    below opset 13, an input from 13 on, where ``num_outputs`` goes) are the parts' kept
    counts, in order, and ``conv_half`` reads the first of them."""
    model = split_cnn(form)
    _, analysis = probe_groups(model, {INPUT: CALIB[:1]}, CPU)
    parts = [g for g in analysis.prunable_groups() if any(model.graph.node[p.node].name == "conv_in"
                                                          for p in g.producers)]
    before = split_sizes(model) if form == "attribute" else [8, 8]
    assert [g.channels for g in parts] == before
    assert_keep_all_is_identity(model)
    result = check_pruned(model, keep_ratio=0.5)
    pruned = result.model
    sizes = split_sizes(pruned)
    assert sizes == [n // 2 for n in before]
    split = node_of(pruned, "Split")
    assert not any(a.name == "num_outputs" for a in split.attribute)
    conv_half, = (n for n in pruned.graph.node if n.name == "conv_half")
    weight, = (numpy_helper.to_array(i) for i in pruned.graph.initializer if i.name == conv_half.input[1])
    assert weight.shape[1] == sizes[0]


# -- channels pass through spatial Slice / Split, Upsample and Transposes -------------------

def spatial_cnn(op: str) -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> ``op`` on the spatial axes -> Conv(8->8) -> Relu -> GAP -> Gemm:
    "slice" crops H and W to 2:14, "split" halves W and adds the halves, "upsample" is an
    opset-9 Upsample x2 (nearest)."""
    b = _Builder(6)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    if op == "slice":
        h = b.node("Slice", [h, b.const("starts", np.array([2, 2], np.int64)), b.const("ends", np.array([14, 14], np.int64)),
                             b.const("axes", np.array([2, 3], np.int64))], name="crop")
        opset = 17
    elif op == "split":
        left = b.node("Split", [h, b.const("halves", np.array([8, 8], np.int64))], name="split_w", n_out=2, axis=3)
        h = b.node("Add", [left, "split_w_out1"], name="fold")
        opset = 17
    else:
        h = b.node("Upsample", [h, b.const("scales", np.array([1, 1, 2, 2], np.float32))], name="up", mode="nearest")
        opset = 9
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv_b")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=opset)


@pytest.mark.parametrize("op", ["slice", "split", "upsample"])
def test_spatial_ops_pass_channels_through(op):
    """A Slice or Split of the spatial axes and an Upsample keep channel identity: conv_a's
    channels form one prunable group that conv_b reads, and pruning it gives a valid model."""
    model = spatial_cnn(op)
    _, analysis = probe_groups(model, {INPUT: CALIB[:1]}, CPU)
    group, = (g for g in analysis.groups if any(model.graph.node[p.node].name == "conv_a" for p in g.producers))
    assert group.prunable and group.channels == 8
    assert [analysis.consumers[c].name for c in group.consumers] == ["conv_b"]
    assert_keep_all_is_identity(model)
    result = check_pruned(model, keep_ratio=0.5)
    assert kept_counts(result) == {"conv_a": 4, "conv_b": 4}


def transposed_cut(op: str) -> onnx.ModelProto:
    """Conv(3->16) -> Relu -> Transpose to NHWC -> ``op`` ("slice": channels 0:8, "split":
    8 + 8, the first half used) on the last axis -> Transpose back -> Conv(8->8) -> Relu ->
    GAP -> Gemm, as TensorFlow exports cut channels between their layout Transposes."""
    b = _Builder(8)
    h = b.node("Transpose", [b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 16, name="conv_a")])], perm=[0, 2, 3, 1])
    if op == "slice":
        h = b.node("Slice", [h, b.const("s", np.array([0], np.int64)), b.const("e", np.array([8], np.int64)),
                             b.const("ax", np.array([3], np.int64))], name="cut")
    else:
        h = b.node("Split", [h, b.const("sizes", np.array([8, 8], np.int64))], name="cut", n_out=2, axis=-1)
    h = b.node("Transpose", [h], perm=[0, 3, 1, 2])
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv_b")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("op", ["slice", "split"])
def test_channel_cut_behind_a_transpose(op):
    """A channel Slice / Split on the last axis of an NHWC tensor cuts conv_a's channels
    like one on axis 1: the used half is a prunable group read by conv_b, and the pruned
    model's cut still selects that half's kept channels."""
    model = transposed_cut(op)
    _, analysis = probe_groups(model, {INPUT: CALIB[:1]}, CPU)
    used, unused = (g for g in analysis.groups if any(model.graph.node[p.node].name == "conv_a" for p in g.producers))
    assert used.prunable and used.channels == 8
    assert [analysis.consumers[c].name for c in used.consumers] == ["conv_b"]
    assert unused.frozen == ["no consumer reads these channels"]
    assert_keep_all_is_identity(model)
    result = check_pruned(model, keep_ratio=0.5)
    assert kept_counts(result) == {"conv_a": 4, "conv_b": 4}


# -- Constant nodes in every spelling -----------------------------------------------------

def constant_spellings() -> onnx.ModelProto:
    """Constants as exporters spell them, as Constant nodes with ``value_float`` (a scale),
    ``value_int`` (an exponent), ``value_ints`` (Reshape's shape, Unsqueeze's axes) and
    ``value_floats`` (a per-channel shift): Conv(3->8) -> Mul 0.5 -> Relu -> Pow 1 -> GAP ->
    Reshape to (N, 8) -> Add shift -> Unsqueeze to (N, 8, 1, 1) -> Conv 1x1 (8->12) ->
    Relu -> Flatten -> Gemm."""
    b = _Builder(9)

    def constant(name: str, **value) -> str:
        b.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", **value))
        return name

    h = b.node("Mul", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a"), constant("half", value_float=0.5)])
    h = b.node("Pow", [b.node("Relu", [h]), constant("one", value_int=1)])
    h = b.node("Reshape", [b.node("GlobalAveragePool", [h]), constant("shape", value_ints=[0, -1])])
    h = b.node("Add", [h, constant("shift", value_floats=[0.1 * i for i in range(8)])])
    h = b.node("Unsqueeze", [h, constant("axes", value_ints=[2, 3])])
    h = b.node("Relu", [b.conv(h, 8, 12, k=1, name="conv_b")])
    return b.build(b.gemm(b.node("Flatten", [h], axis=1), 12, CLASSES, name=OUTPUT))


def test_constant_nodes_in_every_spelling_are_read():
    """The analysis reads each spelling of a Constant node: conv_a's channels pass the
    scale, the exponent, the Reshape, the per-channel shift and the Unsqueeze to conv_b,
    and pruning them shortens the shift."""
    model = constant_spellings()
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    constants_to_initializers(converted)  # as a run does before the analysis
    assert not any(n.op_type == "Constant" for n in converted.graph.node)
    _, analysis = probe_groups(converted, {INPUT: CALIB[:1]}, CPU)
    group, = (g for g in analysis.groups if any(converted.graph.node[p.node].name == "conv_a" for p in g.producers))
    assert group.prunable and [analysis.consumers[c].name for c in group.consumers] == ["conv_b"]
    assert_keep_all_is_identity(model)
    result = check_pruned(model, keep_ratio=0.5)
    assert kept_counts(result) == {"conv_a": 4, "conv_b": 6}
    add = node_of(result.model, "Add")
    shift, = (numpy_helper.to_array(i) for i in result.model.graph.initializer if i.name == add.input[1])
    assert shift.shape == (4,)


def inception_resnet_chain(blocks: int) -> onnx.ModelProto:
    """Inception-ResNet's stream: stem = Concat(conv_a: 4, conv_b: 4), then ``blocks`` times
    ``h = Relu(h + 0.2 * up_i(Concat(branch convs of h)))``: each sum adds a Conv's whole
    output to channels that two convolutions made, so every ``up_i`` is cut in two."""
    b = _Builder(seed=6)
    h = b.node("Concat", [b.conv(INPUT, IN_CHANNELS, 4, name="conv_a"), b.conv(INPUT, IN_CHANNELS, 4, name="conv_b")],
               axis=1)
    for i in range(blocks):
        mixed = b.node("Concat", [b.node("Relu", [b.conv(h, 8, 4, k=1, name=f"b{i}_1")]),
                                  b.node("Relu", [b.conv(h, 8, 4, name=f"b{i}_2")])], axis=1)
        up = b.node("Mul", [b.conv(mixed, 8, 8, k=1, name=f"up{i}"), b.const(f"scale{i}", np.array(0.2, np.float32))])
        h = b.node("Relu", [b.node("Add", [h, up])])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


def test_a_long_chain_of_sums_with_a_concat_is_cut_in_one_more_walk():
    """Each failed coupling passes the operand cut at more places on (frozen, in that walk),
    so that the next sum asks for its cut in the same walk: the whole stream aligns in two
    walks however long it is. Before, each block took a walk of its own and the blocks
    past the tenth stayed frozen (Inception-ResNet-v2: 195 of 204 groups, 97.6% of the
    MACs)."""
    model = inception_resnet_chain(14)
    _, analysis = probe_groups(model, {INPUT: CALIB[:1]}, CPU)
    names = {model.graph.node[p.node].name for g in analysis.groups if g.prunable for p in g.producers}
    assert {f"up{i}" for i in range(14)} | {"conv_a", "conv_b"} <= names
    result = check_pruned(model, keep_ratio=0.5)
    stream = {g["producers"][0]: g for g in result.report["groups"] if g["producers"][:1] in (["conv_a"], ["conv_b"])}
    for group in stream.values():  # each stem conv with its cut of every up_i
        assert group["frozen"] is None and group["producers"].count("up13") == 1 and len(group["producers"]) == 15
        assert group["channels_after"] < group["channels_before"] == 4


def test_a_target_computed_from_the_batch_size_freezes_without_an_error():
    """``h.view(h.size(0) * k, -1)`` (MobileViT's patches): the target's first entry is
    computed from the scalar batch size, which the analysis read as a vector (an internal
    IndexError). Now the Reshape is not a flatten it follows: conv_a's channels freeze,
    conv_b's stay prunable."""
    b = _Builder(seed=7)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    batch = b.node("Gather", [b.node("Shape", [h]), b.const("zero", np.array(0, np.int64))], axis=0)
    rows = b.node("Unsqueeze", [b.node("Mul", [batch, b.const("one", np.array(1, np.int64))]),
                                b.const("axes0", np.array([0], np.int64))])
    flat = b.node("Reshape", [h, b.node("Concat", [rows, b.const("rest", np.array([-1], np.int64))], axis=0)])
    h = b.node("Relu", [b.gemm(flat, 8 * 16 * 16, 16, name="conv_b")])
    model = b.build(b.gemm(h, 16, CLASSES, name=OUTPUT))
    _, analysis = probe_groups(model, {INPUT: CALIB[:1]}, CPU)
    state = {model.graph.node[p.node].name: g.prunable for g in analysis.groups for p in g.producers}
    assert state["conv_a"] is False and state["conv_b"] is True
    assert_keep_all_is_identity(model)
