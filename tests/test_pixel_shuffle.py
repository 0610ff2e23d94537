"""PyTorch's PixelShuffle, DepthToSpace in CRD mode: each output channel is a block of r*r
adjacent input channels spread over r x r pixels. The input's producer now loses its rows a
block at a time (they froze: "DepthToSpace is not understood"). TensorFlow's DCR mode takes
channel c of each of r*r blocks of input channels, which are coupled as a sum's operands; and
SpaceToDepth's output holds r*r copies of its input's channels, and PyTorch's PixelUnshuffle
(Reshape, Transpose, Reshape) r*r adjacent entries of each."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_eprune
from onnx_eprune.report_files import producer_labels
from models import (CLASSES, INPUT, OUTPUT, _Builder, initializer, producer_groups, random_input, run_model,
                    tensor_values)

CPU = {"device": "cpu"}


def pixel_shuffle(mode: str = "CRD", bn: bool = False) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16) [-> BatchNormalization] -> DepthToSpace(2) = 4
    channels at 32x32 -> Relu -> conv3 (4->8) -> Relu -> GAP -> Flatten -> Gemm(8 -> 10)."""
    b = _Builder(seed=6)
    h = b.conv(b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")]), 8, 16, name="conv2")
    if bn:
        h = b.bn(h, 16, name="bn2")
    h = b.node("Relu", [b.node("DepthToSpace", [h], name="shuffle", blocksize=2, mode=mode)])
    h = b.node("Relu", [b.conv(h, 4, 8, name="conv3")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("bn", [False, True])
def test_a_shuffled_channel_goes_with_its_block_of_producer_rows(bn):
    """conv2's 16 rows are 4 channels of 4 rows; without re-fit (conv1 kept whole) the
    shuffled map holds exactly the original's kept channels."""
    model, x = pixel_shuffle(bn=bn), random_input(64)
    groups = producer_groups(model)
    assert groups["conv2"]["prunable"] and groups["conv2"]["channels"] == 4 and groups["conv2"]["producer_rows"] == [4]
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv1",), **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    kept = next(g for g in result.report["groups"] if g["producers"] == ["conv2"])["kept_channels"]
    rows = (4 * np.array(kept)[:, None] + np.arange(4)).ravel()
    np.testing.assert_array_equal(initializer(result.model, "conv2.weight"), initializer(model, "conv2.weight")[rows])
    if bn:
        np.testing.assert_array_equal(initializer(result.model, "bn2.scale"), initializer(model, "bn2.scale")[rows])
    np.testing.assert_allclose(tensor_values(result.model, "shuffle", x), tensor_values(model, "shuffle", x)[:, kept], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_a_run_with_re_fit_reaches_its_target(mode):
    model, x = pixel_shuffle(), random_input(64)
    result = onnx_eprune.prune(model, x, flops_reduction=0.4, mode=mode, **CPU)
    assert result.report["macs"]["after"] <= 0.62 * result.report["macs"]["before"]
    assert run_model(result.model, random_input(4, seed=3))[OUTPUT].shape == (4, CLASSES)


def test_dcr_mode_couples_the_blocks_and_keeps_the_kept_channels_exactly():
    """In DCR mode conv2's 16 rows are 4 blocks of 4 channels: the next walk cuts conv2's
    output at every 4 rows and couples the blocks, so that output channel c keeps row c of
    every block; without re-fit the shuffled map holds exactly the original's kept channels."""
    model, x = pixel_shuffle("DCR", bn=True), random_input(64)
    groups = producer_groups(model)
    assert groups["conv2"]["prunable"] and groups["conv2"]["channels"] == 4
    assert producer_labels(groups["conv2"]) == ["conv2 (4 blocks)"]  # as inspect's table names it
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv1",), **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    kept = np.array(next(g for g in result.report["groups"] if "conv2" in g["producers"])["kept_channels"])
    rows = (4 * np.arange(4)[:, None] + kept).ravel()
    np.testing.assert_array_equal(initializer(result.model, "conv2.weight"), initializer(model, "conv2.weight")[rows])
    np.testing.assert_array_equal(initializer(result.model, "bn2.scale"), initializer(model, "bn2.scale")[rows])
    np.testing.assert_allclose(tensor_values(result.model, "shuffle", x), tensor_values(model, "shuffle", x)[:, kept],
                               rtol=1e-6, atol=1e-6)
    assert run_model(onnx_eprune.prune(model, x, flops_reduction=0.4, **CPU).model, x)[OUTPUT].shape == (64, CLASSES)


def test_dcr_blocks_of_two_convolutions_are_coupled():
    """DepthToSpace(DCR, 2) of Concat(conv_a: 8, conv_b: 8): blocks 0 and 1 are conv_a's two
    halves, blocks 2 and 3 conv_b's, all four coupled (one group of 4 channels)."""
    b = _Builder(seed=8)
    h = b.node("Concat", [b.conv(INPUT, 3, 8, name="conv_a"), b.conv(INPUT, 3, 8, name="conv_b")], axis=1)
    h = b.node("Relu", [b.node("DepthToSpace", [h], name="shuffle", blocksize=2, mode="DCR")])
    h = b.node("Relu", [b.conv(h, 4, 8, name="conv_c")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))
    groups = producer_groups(model)
    assert groups["conv_a"] is groups["conv_b"] and groups["conv_a"]["prunable"] and groups["conv_a"]["channels"] == 4
    x = random_input(32)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    kept = np.array(next(g for g in result.report["groups"] if "conv_a" in g["producers"])["kept_channels"])
    np.testing.assert_allclose(tensor_values(result.model, "shuffle", x), tensor_values(model, "shuffle", x)[:, kept],
                               rtol=1e-6, atol=1e-6)


def space_to_depth() -> onnx.ModelProto:
    """conv1 (3->4) -> Relu -> SpaceToDepth(2) = 16 channels at 8x8 -> conv2 (16->8) -> Relu ->
    GAP -> Flatten -> Gemm(8 -> 10)."""
    b = _Builder(seed=7)
    h = b.node("SpaceToDepth", [b.node("Relu", [b.conv(INPUT, 3, 4, name="conv1")])], name="s2d", blocksize=2)
    h = b.node("Relu", [b.conv(h, 16, 8, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


def pixel_unshuffle() -> onnx.ModelProto:
    """conv1 (3->4) -> Relu -> PixelUnshuffle(2) as PyTorch's exporters write it: Reshape to
    (N, 4, 8, 2, 8, 2), Transpose (0, 1, 3, 5, 2, 4), Reshape to (N, 16, 8, 8) -> conv2 (16->8)
    -> Relu -> GAP -> Flatten -> Gemm(8 -> 10)."""
    b = _Builder(seed=9)
    h = b.node("Relu", [b.conv(INPUT, 3, 4, name="conv1")])
    h = b.node("Reshape", [h, b.const("split", np.array([-1, 4, 8, 2, 8, 2], np.int64))])
    h = b.node("Transpose", [h], perm=[0, 1, 3, 5, 2, 4])
    h = b.node("Reshape", [h, b.const("merge", np.array([-1, 16, 8, 8], np.int64))], name="unshuffle")
    h = b.node("Relu", [b.conv(h, 16, 8, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


def pixel_unshuffle_dynamic() -> onnx.ModelProto:
    """The same network with PixelUnshuffle(2) as the TorchScript exporter writes it for an
    input of dynamic H and W: Unsqueeze at axis 3, Reshapes by [0, 0, -1, 2, 0] and [0, 0,
    0, 0, -1, 2], Transpose (0, 1, 3, 5, 2, 4), Reshape by [0, -1, 1, 1, 0, 0] to (N, 16, 1,
    1, 8, 8) and Squeeze of axes 2 and 3 (it froze conv1's channels before session 60:
    "Reshape other than flattening")."""
    b = _Builder(seed=9)
    h = b.node("Relu", [b.conv(INPUT, 3, 4, name="conv1")])
    h = b.node("Unsqueeze", [h, b.const("at3", np.array([3], np.int64))])
    h = b.node("Reshape", [h, b.const("rows", np.array([0, 0, -1, 2, 0], np.int64))])
    h = b.node("Reshape", [h, b.const("cols", np.array([0, 0, 0, 0, -1, 2], np.int64))])
    h = b.node("Transpose", [h], perm=[0, 1, 3, 5, 2, 4])
    h = b.node("Reshape", [h, b.const("merge", np.array([0, -1, 1, 1, 0, 0], np.int64))])
    h = b.node("Squeeze", [h, b.const("ones", np.array([2, 3], np.int64))], name="unshuffle")
    h = b.node("Relu", [b.conv(h, 16, 8, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("form", ["space_to_depth", "pixel_unshuffle", "pixel_unshuffle_dynamic"])
def test_a_channel_spread_over_several_inputs_takes_them_all(form):
    """conv1's channel c is conv2's input b * 4 + c for each pixel b of a 2x2 block behind a
    SpaceToDepth, its inputs 4c .. 4c + 3 behind a PixelUnshuffle: pruning it removes those
    columns, the Reshape targets' channel counts follow, and the rearranged map holds the
    original's."""
    model, x = {"space_to_depth": space_to_depth, "pixel_unshuffle": pixel_unshuffle,
                "pixel_unshuffle_dynamic": pixel_unshuffle_dynamic}[form](), random_input(64)
    groups = producer_groups(model)
    assert groups["conv1"]["prunable"] and groups["conv1"]["channels"] == 4
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv2",), **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    kept = np.array(next(g for g in result.report["groups"] if g["producers"] == ["conv1"])["kept_channels"])
    if form == "space_to_depth":
        columns, out = (4 * np.arange(4)[:, None] + kept).ravel(), "s2d"
    else:
        columns, out = (4 * kept[:, None] + np.arange(4)).ravel(), "unshuffle"
    if form == "pixel_unshuffle":
        assert initializer(result.model, "split").tolist() == [-1, 2, 8, 2, 8, 2]
        assert initializer(result.model, "merge").tolist() == [-1, 8, 8, 8]
    np.testing.assert_array_equal(initializer(result.model, "conv2.weight"),
                                  initializer(model, "conv2.weight")[:, columns])
    np.testing.assert_allclose(tensor_values(result.model, out, x), tensor_values(model, out, x)[:, columns],
                               rtol=1e-6, atol=1e-6)
    full = onnx_eprune.prune(model, x, flops_reduction=0.4, **CPU)
    assert run_model(full.model, x)[OUTPUT].shape == (64, CLASSES)
