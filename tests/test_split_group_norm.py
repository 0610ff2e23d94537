"""GroupNorm over a split channel axis, as tf2onnx writes Keras' GroupNormalization:
Reshape(x_nhwc, [-1, H, W, G, C/G]) -> mean and variance over axes 1, 2, 4, constants of
shape (1, 1, 1, G, C/G) -> Reshape back to (N, H, W, C). Its channels froze ("Reshape other
than flattening"); now they go a whole group of C/G at a time, which leaves every kept group
normalised exactly as before, with the constants' group entries and both targets following."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import (CLASSES, INPUT, OUTPUT, _Builder, initializer, keras_group_norm, producer_groups, random_input,
                    run_model, split_group_norm_layer, tensor_values)

CPU = {"device": "cpu"}


def test_whole_groups_go_and_the_kept_ones_are_normalised_as_before():
    model, x = keras_group_norm(), random_input(64)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, reconstruct=False, **CPU)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    report = {g["producers"][0]: g for g in result.report["groups"] if g["producers"]}
    for conv, gn, groups, width in (("conv1", "gn1", 4, 4), ("conv2", "gn2", 2, 8)):
        kept = np.array(report[conv]["kept_channels"])
        assert report[conv]["step"] == width and len(kept) == 8
        blocks = kept.reshape(-1, width)
        assert (blocks == blocks[:, :1] + np.arange(width)).all() and (blocks[:, 0] % width == 0).all()
        kept_groups = blocks[:, 0] // width
        assert initializer(pruned, f"{gn}.split_shape").tolist() == [-1, 16, 16, len(kept_groups), width]
        assert initializer(pruned, f"{gn}.c").tolist()[-1] == 8
        for name in (f"{gn}.gamma", f"{gn}.beta"):
            np.testing.assert_array_equal(initializer(pruned, name), initializer(model, name)[:, :, :, kept_groups])
    # conv2's inputs lost channels too: only gn1's output is the original's without a re-fit
    kept = report["conv1"]["kept_channels"]
    np.testing.assert_allclose(tensor_values(pruned, "gn1.back", x), tensor_values(model, "gn1.back", x)[..., kept],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_a_run_with_re_fit_prunes_to_the_target(mode):
    model, x = keras_group_norm(), random_input(96)
    result = onnx_eprune.prune(model, x, flops_reduction=0.4, mode=mode, **CPU)
    macs = result.report["macs"]
    assert macs["after"] <= 0.65 * macs["before"]
    test = random_input(32, seed=7)
    assert run_model(result.model, test)[OUTPUT].shape == (32, CLASSES)


def _variant(change: str) -> onnx.ModelProto:
    """conv1 (3->16) -> NHWC -> split GroupNorm (4 groups) -> Relu -> NCHW -> conv2 -> GAP ->
    Gemm, with one thing changed that mixes groups or hides the channel count."""
    b = _Builder(seed=3)
    h = b.node("Transpose", [b.conv(INPUT, 3, 16, name="conv1")], perm=[0, 2, 3, 1])
    y = split_group_norm_layer(b, h, 16, 4, "gn", back="const")
    node = {n.output[0]: n for n in b.nodes}
    if change == "reduce_groups":  # the variance over every channel: groups mix
        next(n for n in b.nodes if n.name == "gn.var").attribute[0].ints[:] = [1, 2, 3, 4]
    elif change == "transpose_inside":  # the groups' axis moves inside: not followed
        var = node["gn.var"]
        reader = next(n for n in b.nodes if var.output[0] in n.input and n.op_type == "Add")
        swapped = b.node("Transpose", [var.output[0]], perm=[0, 1, 2, 4, 3])
        reader.input[0] = b.node("Transpose", [swapped], perm=[0, 1, 2, 4, 3])
    elif change == "reads_x":  # the groups plus x itself, re-split: not computed from the groups alone
        split = node["gn.split"]
        again = b.node("Reshape", [h, b.const("gn.split_shape2", np.array([-1, 16, 16, 4, 4], np.int64))])
        node["gn.mean"].input[0] = b.node("Add", [split.output[0], again])
    b.nodes.sort(key=_depth(b.nodes))
    h = b.node("Relu", [y])
    h = b.node("Transpose", [h], perm=[0, 3, 1, 2])
    h = b.node("Relu", [b.conv(h, 16, 8, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13)


def _depth(nodes: list[onnx.NodeProto]):
    """Sort key putting ``nodes`` in a topological order: a node's longest path from the input."""
    made = {out: n for n in nodes for out in n.output}
    depth: dict[str, int] = {}

    def of(n: onnx.NodeProto) -> int:
        if n.name not in depth:
            depth[n.name] = 1 + max((of(made[i]) for i in n.input if i in made), default=0)
        return depth[n.name]

    return of


def test_the_plain_variant_prunes_both_layers():
    groups = producer_groups(_variant("none"))
    assert groups["conv1"]["prunable"] and groups["conv2"]["prunable"]


@pytest.mark.parametrize("change", ["reduce_groups", "transpose_inside", "reads_x"])
def test_what_mixes_groups_or_is_not_understood_freezes(change):
    model = _variant(change)
    run_model(model, random_input(2))  # a valid model
    groups = producer_groups(model)
    assert not groups["conv1"]["prunable"]
    assert groups["conv2"]["prunable"]


def test_straddling_groups_freeze():
    """Concat(conv_a: 6 channels, conv_b: 10) -> NHWC -> split GroupNorm (4 groups of 4): a
    group holds channels of both convolutions."""
    b = _Builder(seed=2)
    h = b.node("Concat", [b.conv(INPUT, 3, 6, name="conv_a"), b.conv(INPUT, 3, 10, name="conv_b")], axis=1)
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])
    h = b.node("Transpose", [b.node("Relu", [split_group_norm_layer(b, h, 16, 4, "gn", back="const")])],
               perm=[0, 3, 1, 2])
    h = b.node("Relu", [b.conv(h, 16, 8, name="conv_c")])
    groups = producer_groups(b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13))
    for conv in ("conv_a", "conv_b"):
        assert not groups[conv]["prunable"]
        assert "GroupNorm whose groups of 4 channels straddle channel groups" in groups[conv]["frozen"]
    assert groups["conv_c"]["prunable"]
