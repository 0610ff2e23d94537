"""PyTorch idioms whose channels froze though nothing in them mixes channels: circular
padding (``padding_mode="circular"``: Slices and a Concat along H and W), a scalar
computed from the map's size (``x.std(dim=(2, 3))``: its pixel count, Shape -> Gather ->
ReduceProd -> Cast, a 0-d tensor) and ``torch.where`` with comparisons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnx_eprune
from models import CLASSES, INPUT, OUTPUT, _Builder, random_input, producer_groups, run_model, tensor_values

CPU = {"device": "cpu"}


def _slice(b: _Builder, x: str, lo: int, hi: int, axis: int) -> str:
    return b.node("Slice", [x, b.const(b.name("lo"), np.array([lo], np.int64)),
                            b.const(b.name("hi"), np.array([hi], np.int64)),
                            b.const(b.name("ax"), np.array([axis], np.int64))])


def circular(second: bool = False, constant: bool = False) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> circular padding by one pixel (W, then H) -> conv2 (8->8, no
    padding) -> Relu -> GAP -> Gemm. ``second``: the W wrap-around takes its columns from
    conv1b (3->8) instead, a second tensor with the same channels; ``constant``: a zero
    column of 8 channels is joined instead."""
    b = _Builder(seed=8)
    x = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")], name="h")
    other = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1b")]) if second else x
    right = b.const("zeros", np.zeros((1, 8, 16, 1), np.float32)) if constant else _slice(b, other, -1, 2 ** 62, 3)
    h = b.node("Concat", [right, x, _slice(b, other, 0, 1, 3)], name="wrap_w", axis=3)
    h = b.node("Concat", [_slice(b, h, -1, 2 ** 62, 2), h, _slice(b, h, 0, 1, 2)], name="wrap_h", axis=2)
    w = b.weight("conv2.weight", (8, 8, 3, 3), 72)
    h = b.node("Relu", [b.node("Conv", [h, w, b.vector("conv2.bias", 8)], name="conv2", kernel_shape=[3, 3])])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


def test_circular_padding_carries_the_channels():
    """conv1's channels were frozen ("Concat along an axis other than channels"); pruned
    without re-fit, the padded map holds exactly the original's kept channels."""
    model, x = circular(), random_input(64)
    assert producer_groups(model)["conv1"]["prunable"]
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv2",), **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    kept = next(g for g in result.report["groups"] if g["producers"] == ["conv1"])["kept_channels"]
    assert len(kept) == 4
    np.testing.assert_array_equal(tensor_values(result.model, "wrap_h", x), tensor_values(model, "wrap_h", x)[:, kept])
    full = onnx_eprune.prune(model, x, keep_ratio=0.5, **CPU).model
    assert run_model(full, x)[OUTPUT].shape == (64, CLASSES)


def test_a_spatial_concat_couples_the_channels_of_its_operands():
    groups = producer_groups(circular(second=True))
    assert groups["conv1"] is groups["conv1b"] and groups["conv1"]["prunable"]


def test_a_constant_joined_along_a_spatial_axis_freezes_the_channels():
    groups = producer_groups(circular(constant=True))
    assert not groups["conv1"]["prunable"]
    assert "Concat along a spatial axis of a constant" in groups["conv1"]["frozen"]


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_a_scalar_computed_from_the_map_size_leaves_the_channels_prunable(op):
    """``h * count`` (or ``/``) with ``count = Cast(ReduceProd(Gather(Shape(h), [2, 3])))``, a
    0-d tensor: its shape () read as no shape froze the channels ("operand shapes
    unknown")."""
    b = _Builder(seed=9)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    hw = b.node("Gather", [b.node("Shape", [h]), b.const("hw", np.array([2, 3], np.int64))], axis=0)
    count = b.node("Cast", [b.node("ReduceProd", [hw], keepdims=0)], to=TensorProto.FLOAT)
    h = b.node("Relu", [b.conv(b.node(op, [h, count], name="scaled"), 8, 8, name="conv2")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))
    assert producer_groups(model)["conv1"]["prunable"]
    x = random_input(64)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv2",), **CPU)
    kept = next(g for g in result.report["groups"] if g["producers"] == ["conv1"])["kept_channels"]
    np.testing.assert_allclose(tensor_values(result.model, "scaled", x), tensor_values(model, "scaled", x)[:, kept], rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_where_and_comparisons_are_element_wise(per_channel):
    """``torch.where(h > t, h, 0.1 * h)`` (a hand-written leaky ReLU; Softshrink is written
    so too): Greater and Where froze as not understood. With a threshold per channel, it is
    sliced with the kept channels."""
    b = _Builder(seed=10)
    h = b.conv(INPUT, 3, 8, name="conv1")
    t = b.const("t", (np.linspace(-0.5, 0.5, 8).reshape(8, 1, 1) if per_channel else np.array(0.0)).astype(np.float32))
    h = b.node("Where", [b.node("Greater", [h, t]), h, b.node("Mul", [h, b.const("a", np.array(0.1, np.float32))])],
               name="leaky")
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv2")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))
    assert producer_groups(model)["conv1"]["prunable"]
    x = random_input(64)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, exclude=("conv2",), **CPU)
    kept = next(g for g in result.report["groups"] if g["producers"] == ["conv1"])["kept_channels"]
    np.testing.assert_array_equal(tensor_values(result.model, "leaky", x), tensor_values(model, "leaky", x)[:, kept])


def test_grid_sample_carries_the_channels_it_warps_and_keeps_its_coordinates():
    """A spatial transformer's warp, ``F.grid_sample(h, tanh(loc(h)).permute(0, 2, 3, 1))``:
    h's channels pass through GridSample (they froze as not understood); the two channels
    of the layer that computes the coordinates stay."""
    b = _Builder(seed=11)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    grid = b.node("Transpose", [b.node("Tanh", [b.conv(h, 8, 2, name="loc")])], perm=[0, 2, 3, 1])
    h = b.node("Relu", [b.conv(b.node("GridSample", [h, grid], name="warp"), 8, 8, name="conv2")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=16)
    groups = producer_groups(model)
    assert groups["conv1"]["prunable"] and groups["conv2"]["prunable"]
    assert "warp reads them as sampling coordinates" in groups["loc"]["frozen"]
    x = random_input(64)
    np.testing.assert_array_equal(run_model(onnx_eprune.prune(model, x, keep_ratio=1.0, **CPU).model, x)[OUTPUT],
                                  run_model(model, x)[OUTPUT])
    pruned = onnx_eprune.prune(model, x, keep_ratio=0.5, **CPU).model
    onnx.checker.check_model(pruned, full_check=True)
    assert next(i.dims for i in pruned.graph.initializer if i.name == "loc.weight")[:2] == [2, 4]
