"""GroupNorm as PyTorch's exporters (TorchScript and torch.export) write it: Reshape(x, [0,
G, -1]) -> InstanceNormalization -> Reshape(Shape(x)) -> Mul, Add. Its channels froze
("Reshape other than flattening"); now they go a whole group of C/G at a time, which leaves
every kept group normalised exactly as before."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_eprune
from models import (CLASSES, INPUT, OUTPUT, _Builder, group_norm, group_norm_layer, initializer, producer_groups,
                    random_input, run_model, tensor_values)

CPU = {"device": "cpu"}


def test_whole_groups_go_and_the_kept_ones_are_normalised_as_before():
    """Without re-fit, the output of each GroupNorm holds exactly the original's values of
    the kept channels; the kept channels are whole groups, and the target's group count,
    the InstanceNormalization's scale and bias and the affine constants follow them."""
    model, x = group_norm(), random_input(64)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    report = {g["producers"][0]: g for g in result.report["groups"] if g["producers"]}
    for conv, gn, width in (("conv1", "gn1", 4), ("conv2", "gn2", 8)):
        kept = np.array(report[conv]["kept_channels"])
        assert report[conv]["step"] == width and len(kept) == 8
        blocks = kept.reshape(-1, width)
        assert (blocks == blocks[:, :1] + np.arange(width)).all() and (blocks[:, 0] % width == 0).all()
        groups = blocks[:, 0] // width
        assert initializer(pruned, f"{gn}.groups").tolist() == [0, len(groups), -1]
        for name in (f"{gn}.in_scale", f"{gn}.in_bias"):
            np.testing.assert_array_equal(initializer(pruned, name), initializer(model, name)[groups])
        np.testing.assert_array_equal(initializer(pruned, f"{gn}.weight"), initializer(model, f"{gn}.weight")[kept])
        out = next(n.output[0] for n in model.graph.node if n.op_type == "Add" and n.input[1] == f"{gn}.bias")
        if conv == "conv1":  # conv2's inputs lost channels too: its outputs differ without a re-fit
            np.testing.assert_array_equal(tensor_values(pruned, out, x), tensor_values(model, out, x)[:, kept])


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_a_run_with_re_fit_prunes_to_the_target(mode):
    model, x = group_norm(width=32), random_input(96)
    result = onnx_eprune.prune(model, x, flops_reduction=0.5, mode=mode, **CPU)
    macs = result.report["macs"]
    assert macs["after"] <= 0.55 * macs["before"]
    test = random_input(32, seed=7)
    got, want = run_model(result.model, test)[OUTPUT], run_model(model, test)[OUTPUT]
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.75


def _straddling() -> onnx.ModelProto:
    """Concat(conv_a: 6 channels, conv_b: 10) -> GroupNorm(4 groups of 4) -> Relu -> conv_c:
    a group of 4 holds channels of both convolutions."""
    b = _Builder(seed=2)
    h = b.node("Concat", [b.conv(INPUT, 3, 6, name="conv_a"), b.conv(INPUT, 3, 10, name="conv_b")], axis=1)
    h = b.node("Relu", [b.conv(b.node("Relu", [group_norm_layer(b, h, 16, 4, "gn")]), 16, 8, name="conv_c")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13)


def test_groups_that_straddle_two_channel_groups_freeze():
    groups = producer_groups(_straddling())
    for conv in ("conv_a", "conv_b"):
        assert not groups[conv]["prunable"]
        assert "GroupNorm whose groups of 4 channels straddle channel groups" in groups[conv]["frozen"]
    assert groups["conv_c"]["prunable"]


def _residual() -> onnx.ModelProto:
    """conv1 (3->16) -> GroupNorm(4) = h; conv2 (16->16) -> GroupNorm(2) -> Add h -> Relu ->
    GAP -> Gemm: the sum couples both GroupNorms, whose groups of 4 and 8 give blocks of 8."""
    b = _Builder(seed=4)
    h = group_norm_layer(b, b.conv(INPUT, 3, 16, name="conv1"), 16, 4, "gn1")
    y = group_norm_layer(b, b.conv(b.node("Relu", [h]), 16, 16, name="conv2"), 16, 2, "gn2")
    h = b.node("Relu", [b.node("Add", [y, h])])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)


def test_coupled_group_norms_take_blocks_of_both_widths():
    model = _residual()
    result = onnx_eprune.prune(model, random_input(64), keep_ratio=0.5, **CPU)
    group = next(g for g in result.report["groups"] if "conv1" in g["producers"])
    assert group["step"] == 8 and len(group["kept_channels"]) == 8
    assert initializer(result.model, "gn1.groups").tolist() == [0, 2, -1]
    assert initializer(result.model, "gn2.groups").tolist() == [0, 1, -1]


def test_a_reshape_back_to_a_constant_shape_still_freezes():
    """Only a Reshape back to Shape(x) is read as a GroupNorm: a constant target spells out
    the channel count, which the analysis does not rewrite there."""
    model = group_norm()
    back = next(n for n in model.graph.node if n.name == "gn1.back")
    back.input[1] = "gn1.const_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 16, 16, 16], np.int64), "gn1.const_shape"))
    assert not producer_groups(model)["conv1"]["prunable"]
    assert producer_groups(model)["conv2"]["prunable"]


def _group_normalization(groups: tuple[int, int] = (4, 2)) -> onnx.ModelProto:
    """The group_norm model with GroupNormalization ops (opset 21: scale and bias per channel)."""
    b = _Builder(seed=5)
    h = INPUT
    for i, (cin, g) in enumerate(zip((3, 16), groups), start=1):
        h = b.node("GroupNormalization", [b.conv(h, cin, 16, name=f"conv{i}"), b.vector(f"gn{i}.scale", 16, 0.5, 1.5),
                                          b.vector(f"gn{i}.bias", 16)], name=f"gn{i}", num_groups=g, epsilon=1e-5)
        h = b.node("Relu", [h])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=21)


def _attribute(model: onnx.ModelProto, node: str, name: str) -> int:
    return next(a.i for n in model.graph.node if n.name == node for a in n.attribute if a.name == name)


def test_group_normalization_ops_keep_whole_groups_and_count_them_again():
    model, x = _group_normalization(), random_input(64)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    report = {g["producers"][0]: g for g in result.report["groups"] if g["producers"]}
    for conv, gn, width in (("conv1", "gn1", 4), ("conv2", "gn2", 8)):
        kept = np.array(report[conv]["kept_channels"])
        assert report[conv]["step"] == width and len(kept) == 8 and (kept.reshape(-1, width)[:, 0] % width == 0).all()
        assert _attribute(result.model, gn, "num_groups") == 8 // width
        np.testing.assert_array_equal(initializer(result.model, f"{gn}.scale"), initializer(model, f"{gn}.scale")[kept])
    # the kept groups are normalised as before
    kept = report["conv1"]["kept_channels"]
    np.testing.assert_allclose(tensor_values(result.model, "gn1", x), tensor_values(model, "gn1", x)[:, kept], rtol=1e-5, atol=1e-5)
    assert run_model(onnx_eprune.prune(model, x, flops_reduction=0.5, **CPU).model, x)[OUTPUT].shape == (64, CLASSES)


@pytest.mark.parametrize("form", ["reshapes", "op21"])
def test_a_group_norm_with_one_group_freezes(form):
    """GroupNorm(1, C) (PoolFormer's; a LayerNorm over C, H and W) normalises every channel
    with all the others: none can go alone, so its channels freeze with that reason (they
    counted as a prunable group whose one block was all of them); conv2's stay prunable."""
    if form == "op21":
        model = _group_normalization(groups=(1, 2))
    else:
        b = _Builder(seed=3)
        h = b.node("Relu", [group_norm_layer(b, b.conv(INPUT, 3, 16, name="conv1"), 16, 1, "gn1")])
        h = b.node("Relu", [group_norm_layer(b, b.conv(h, 16, 16, name="conv2"), 16, 2, "gn2")])
        model = b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)
    groups = producer_groups(model)
    assert not groups["conv1"]["prunable"]
    assert "GroupNorm with one group" in groups["conv1"]["frozen"]
    assert groups["conv2"]["prunable"]
