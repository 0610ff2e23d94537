"""PyTorch's PixelShuffle, DepthToSpace in CRD mode: each output channel is a block of r*r
adjacent input channels spread over r x r pixels. The input's producer now loses its rows a
block at a time (they froze: "DepthToSpace is not understood"); TensorFlow's DCR mode, which
interleaves them, still freezes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_eprune
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


def test_dcr_mode_interleaves_and_freezes():
    groups = producer_groups(pixel_shuffle("DCR"))
    assert "DepthToSpace in DCR mode" in groups["conv2"]["frozen"]
    assert groups["conv1"]["prunable"] and groups["conv3"]["prunable"]
