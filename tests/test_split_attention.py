"""Reshape targets computed from a channel count, as PyTorch's tracer writes them: ResNeSt's
split attention reshapes its map to (N, radix, RC // radix, H, W) with RC read by a Shape
op, normalizes its attention by a Softmax over the radix axis and multiplies the map by it.
All of it froze ("its channel count is read by a Shape op"); now the radix blocks of
channels are coupled as a sum's operands are, the computed targets follow the kept channels
by themselves, and a Softmax along an axis other than the channels' passes them through."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import (CLASSES, INPUT, OUTPUT, _Builder, _count_entry, initializer, producer_groups, random_input,
                    run_model, split_attention, tensor_values, zeroed)

CPU = {"device": "cpu"}


@pytest.mark.parametrize("constant", [False, True])
def test_the_radix_blocks_and_the_attention_are_one_group(constant):
    groups = producer_groups(split_attention(constant=constant))
    assert groups["split"] is groups["fc2"] and groups["split"]["producers"] == ["split", "split", "fc2", "fc2"]
    assert all(groups[p]["prunable"] for p in ("conv1", "split", "fc1", "conv3"))
    assert onnx_eprune.inspect(split_attention(constant=constant))["prunable_mac_fraction"] == 1.0


@pytest.mark.parametrize("constant", [False, True])
def test_channels_that_carry_nothing_go_and_the_output_is_the_original(constant):
    """The split conv's channels 1, 4 and 6 (in both radix blocks) write zeros: removing them
    leaves every other value as it was, through the targets (computed, or constants that
    follow the kept channels) and the Softmax."""
    dead = [1, 4, 6, 9, 12, 14]  # channels 1, 4 and 6 of both radix blocks of 8
    model, x = zeroed(split_attention(constant=constant), {"split.weight": dead, "split.bias": dead}), random_input(32)
    result = onnx_eprune.prune(model, x, keep_ratio=5 / 8, method="l1", reconstruct=False,
                               exclude=["conv1", "fc1", "conv3"], **CPU)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    kept = next(g for g in result.report["groups"] if "split" in g["producers"])["kept_channels"]
    assert kept == [0, 2, 3, 5, 7]
    assert initializer(pruned, "split.weight").shape[0] == initializer(pruned, "fc2.weight").shape[0] == 10
    np.testing.assert_allclose(tensor_values(pruned, "attended", x), tensor_values(model, "attended", x)[:, kept],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_model(pruned, x)[OUTPUT], run_model(model, x)[OUTPUT], rtol=1e-5, atol=1e-6)
    if constant:
        assert [initializer(pruned, t).tolist() for t in ("blocks_shape", "card_shape", "attn_shape")] == \
            [[-1, 2, 5, 16, 16], [-1, 1, 2, 5], [-1, 2, 5, 1, 1]]


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_a_run_with_re_fit_prunes_to_the_target(mode):
    model, x = split_attention(), random_input(96)
    result = onnx_eprune.prune(model, x, flops_reduction=0.4, mode=mode, **CPU)
    assert result.report["macs"]["after"] <= 0.62 * result.report["macs"]["before"]
    test = random_input(16, seed=7)
    assert run_model(result.model, test)[OUTPUT].shape == (16, CLASSES)


def _count_read_by(change: str) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> a Reshape of it by a target computed from its channel count,
    written as ``change`` says -> ... -> GAP -> Gemm(8 -> 10)."""
    b = _Builder(seed=5)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    batch = _count_entry(b, h, 0)
    if change == "view_c_rest":  # x.view(B, C, -1), a mean over the positions, back to (B, C, 1, 1)
        v = b.node("Reshape", [h, b.node("Concat", [batch, _count_entry(b, h, 1), b.const("rest", np.array([-1]))],
                                         axis=0)], name="view")
        v = b.node("ReduceMean", [v], axes=[2], keepdims=1)
        h = b.node("Mul", [h, b.node("Sigmoid", [b.node("Unsqueeze", [v, b.const("at3", np.array([3]))])])])
    elif change == "radix_last":  # (B, C/2, 2, H, W): the blocks interleave, which is not followed
        target = [batch, _count_entry(b, h, 1, 2), b.const("two", np.array([2])), b.const("hw", np.array([16, 16]))]
        blocks = b.node("Reshape", [h, b.node("Concat", target, axis=0)])
        h = b.node("ReduceSum", [blocks, b.const("ax", np.array([2]))], keepdims=0)
        h = b.node("Concat", [h, h], axis=1)
    elif change == "count_scaled":  # the count goes through a Mul: anything may come of it
        c = b.node("Mul", [_count_entry(b, h, 1), b.const("one", np.array([1]))])
        h = b.node("Reshape", [h, b.node("Concat", [batch, c, b.const("hw", np.array([16, 16]))], axis=0)])
    elif change == "constant_reshaped":  # a constant reshaped by the count would keep all 8 values
        c = b.node("Reshape", [b.const("table", np.ones(8, np.float32)),
                               b.node("Concat", [b.const("lead", np.array([1])), _count_entry(b, h, 1),
                                                 b.const("ones", np.array([1, 1]))], axis=0)])
        h = b.node("Mul", [h, c])
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13)


def test_a_view_by_its_own_count_keeps_the_channels_on_axis_1():
    model, x = _count_read_by("view_c_rest"), random_input(32)
    assert producer_groups(model)["conv1"]["prunable"]
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    kept = next(g for g in result.report["groups"] if "conv1" in g["producers"])["kept_channels"]
    name = result.model.graph.node[[n.name for n in result.model.graph.node].index("view")].output[0]
    np.testing.assert_allclose(tensor_values(result.model, name, x), tensor_values(model, name, x)[:, kept],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["radix_last", "count_scaled", "constant_reshaped"])
def test_other_uses_of_a_computed_count_freeze(change):
    model = _count_read_by(change)
    group = producer_groups(model)["conv1"]
    assert not group["prunable"] and "its channel count is read by a Shape op" in group["frozen"]
    result = onnx_eprune.prune(model, random_input(16), keep_ratio=0.5, **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    assert run_model(result.model, random_input(4))[OUTPUT].shape == (4, CLASSES)


@pytest.mark.parametrize("opset, axis, follows", [(13, 2, True), (13, 1, False), (11, 3, True), (11, 2, True),
                                                  (11, 1, False)])
def test_softmax_follows_the_channels_unless_it_normalizes_over_them(opset, axis, follows):
    """Before opset 13 a Softmax normalizes over every axis from ``axis`` on."""
    b = _Builder(seed=2)
    h = b.node("Softmax", [b.conv(INPUT, 3, 8, name="conv1")], axis=axis)
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv2")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=opset)
    group = producer_groups(model)["conv1"]
    assert group["prunable"] == follows
    if not follows:
        assert "Softmax over the batch or channel axis" in group["frozen"]
        return
    x = random_input(16)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    kept = next(g for g in result.report["groups"] if "conv1" in g["producers"])["kept_channels"]
    soft = next(n for n in model.graph.node if n.op_type == "Softmax").output[0]
    np.testing.assert_allclose(tensor_values(result.model, soft, x), tensor_values(model, soft, x)[:, kept],
                               rtol=1e-5, atol=1e-6)


def _channel_shuffle() -> onnx.ModelProto:
    """conv1 (3->8) -> conv_a, conv_b (8->8 each) -> Concat -> ShuffleNet's channel shuffle
    with constant targets, (N, 2, 8, H, W) -> Transpose(0, 2, 1, 3, 4) -> (N, 16, H, W)
    -> conv3 (16->8) -> GAP -> Gemm(8 -> 10)."""
    b = _Builder(seed=4)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    both = b.node("Concat", [b.node("Relu", [b.conv(h, 8, 8, name=n)]) for n in ("conv_a", "conv_b")], axis=1)
    blocks = b.node("Reshape", [both, b.const("blocks_shape", np.array([-1, 2, 8, 16, 16], np.int64))])
    shuffled = b.node("Reshape", [b.node("Transpose", [blocks], perm=[0, 2, 1, 3, 4]),
                                  b.const("back_shape", np.array([-1, 16, 16, 16], np.int64))], name="shuffled")
    h = b.node("Relu", [b.conv(shuffled, 16, 8, name="conv3")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13)


def test_a_channel_shuffle_couples_the_halves_it_interleaves():
    """Channel c of each half lands beside the other's: the two are one group, and removing
    channels that write zeros in both leaves conv3's input as it was, less their entries."""
    groups = producer_groups(_channel_shuffle())
    assert groups["conv_a"] is groups["conv_b"] and groups["conv_a"]["prunable"]
    dead = [1, 5]
    rows = {f"{conv}.{param}": dead for conv in ("conv_a", "conv_b") for param in ("weight", "bias")}
    model = zeroed(_channel_shuffle(), rows)
    x = random_input(32)
    result = onnx_eprune.prune(model, x, keep_ratio=6 / 8, method="l1", reconstruct=False,
                               exclude=["conv1", "conv3"], **CPU)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    kept = next(g for g in result.report["groups"] if "conv_a" in g["producers"])["kept_channels"]
    assert kept == [0, 2, 3, 4, 6, 7]
    assert initializer(pruned, "blocks_shape").tolist() == [-1, 2, 6, 16, 16]
    assert initializer(pruned, "back_shape").tolist() == [-1, 12, 16, 16]
    entries = [2 * c + half for c in kept for half in (0, 1)]
    np.testing.assert_allclose(tensor_values(pruned, "shuffled", x), tensor_values(model, "shuffled", x)[:, entries],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_model(pruned, x)[OUTPUT], run_model(model, x)[OUTPUT], rtol=1e-5, atol=1e-6)


def test_a_count_read_from_another_tensor_couples_its_channels():
    """conv1 (3->16) = x; fc (16->16) on x's pooled map, reshaped to (N, 2, RC // 2, 1, 1)
    with RC read from x's Shape, summed over the blocks; nothing else ties fc's channels to
    x's: the count does, or the pruned model would reshape fc's kept channels by x's."""
    b = _Builder(seed=6)
    x = b.node("Relu", [b.conv(INPUT, 3, 16, name="conv1")])
    pooled = b.node("GlobalAveragePool", [x])
    a = b.conv(pooled, 16, 16, k=1, name="fc")
    target = b.node("Concat", [_count_entry(b, a, 0), b.const("two", np.array([2])), _count_entry(b, x, 1, 2),
                               b.const("ones", np.array([1, 1]))], axis=0)
    halves = b.node("ReduceSum", [b.node("Reshape", [a, target]), b.const("ax", np.array([1]))], keepdims=0)
    both = b.node("Concat", [b.node("Flatten", [pooled]), b.node("Flatten", [halves])], axis=1)
    model = b.build(b.gemm(both, 24, CLASSES, name=OUTPUT), opset=13)
    groups = producer_groups(model)
    assert groups["conv1"] is groups["fc"] and groups["conv1"]["prunable"]
    result = onnx_eprune.prune(model, random_input(32), keep_ratio=0.5, **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    assert run_model(result.model, random_input(4))[OUTPUT].shape == (4, CLASSES)
