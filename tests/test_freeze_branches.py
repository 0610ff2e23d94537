"""Freeze branches of the channel analysis, one tiny model per construct it does not follow.

Each case builds a model with ``onnx.helper`` whose channels meet one construct that
``graph/analysis.py`` freezes (a foreign op domain, shared weights, a Slice with a step, a
Resize that changes the channel count, ...; and, since session 46, follows: a 1-D Conv or
ConvTranspose over squeezed rows). The tests check that the
analysis freezes the groups touching the construct, with the reason it gives for it, and
keeps a group elsewhere prunable (the freeze is local); and that ``onnx_eprune.prune``
still returns a valid model with the original's outputs: the rule is "never break a graph".

Not covered, as no valid model reaches them: a Gemm/MatMul whose input features differ from
its weight, a tensor of rank 2 or more without a followed layout (every such tensor has its
shape probed, so it gets one) in a Concat or Split, a Reshape whose fixed batch differs while
its output keeps the input's batch, a ConvTranspose whose probed output size differs from its
attributes' and a group without producer that nothing froze. The freezes of a rank-1 tensor
(no channel axis: a Mul in ``squeeze_to_scalar`` reaches one, a Split could) have no channel
group to record their reason in, so no test can see them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_eprune
from models import CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, _Builder, random_input, relative_error, run_model
from onnx_eprune.calibrate.session import probe_groups
from onnx_eprune.graph.groups import ChannelGroup, GraphAnalysis
from onnx_eprune.graph.model_io import constants_to_initializers

CPU = ["CPUExecutionProvider"]
WIDTH = 8  # channels of the stem's tensors "a" and "h"


# -- building blocks -------------------------------------------------------------------------

def _stem(b: _Builder, width: int = WIDTH, stride: int = 1) -> str:
    """conv_a(3 -> w) -> Relu "a" -> conv_b(w -> w) -> Relu "h": the group of "a" (read by
    conv_b) is the prunable part before the construct, which reads "h"."""
    a = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv_a")], name="a")
    w = b.weight("conv_b.weight", (width, width, 3, 3), width * 9)
    h = b.node("Conv", [a, w, b.vector("conv_b.bias", width)], name="conv_b", kernel_shape=[3, 3],
               pads=[1, 1, 1, 1], strides=[stride, stride])
    return b.node("Relu", [h], name="h")


def _tail(b: _Builder, x: str, c: int) -> str:
    """conv_t(c -> 16) -> Relu "t" -> GAP -> Flatten -> Gemm(16 -> 10) "y": the group of "t"
    is the prunable part after the construct."""
    t = b.node("Relu", [b.conv(x, c, 16, name="conv_t")], name="t")
    return b.gemm(b.gap_flatten(t), 16, CLASSES, name=OUTPUT)


def _model(b: _Builder, head: str, out_shape: list | None = None, opset: int = 17,
           domains: tuple[str, ...] = (), batch: int | str = "N") -> onnx.ModelProto:
    """The model of ``b``'s nodes with input "x" [batch, 3, 16, 16] and the one output
    ``head`` (default shape [N, 10]); checked by onnx.checker."""
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, IN_CHANNELS, HW, HW])
    out = helper.make_tensor_value_info(head, TensorProto.FLOAT, out_shape or ["N", CLASSES])
    graph = helper.make_graph(b.const_nodes + b.nodes, "freeze", [inp], [out], b.inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-eprune-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _ints(b: _Builder, name: str, values: list[int]) -> str:
    """An int64 constant (shapes, axes, bounds)."""
    return b.const(name, np.array(values, np.int64))


# -- the models ------------------------------------------------------------------------------

def shared_bn_scale() -> onnx.ModelProto:
    """Two BatchNormalizations (after conv_b and after conv_c) read one scale vector."""
    b = _Builder()
    scale = b.vector("bn.scale", WIDTH, 0.5, 1.5)
    h = _stem(b)
    stats = [b.vector(f"bn{i}.{p}", WIDTH, 0.5, 1.5) for i in (1, 2) for p in ("shift", "mean", "var")]
    h = b.node("BatchNormalization", [h, scale, *stats[:3]], name="bn1")
    h = b.node("Relu", [b.node("BatchNormalization", [b.conv(h, WIDTH, WIDTH, name="conv_c"), scale, *stats[3:]],
                               name="bn2")], name="c")
    return _model(b, _tail(b, h, WIDTH))


def foreign_domain() -> onnx.ModelProto:
    """onnxruntime's com.microsoft Pad (a name the analysis knows in the default domain)."""
    b = _Builder()
    h = b.node("Pad", [_stem(b), b.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], name="pad",
               domain="com.microsoft")
    return _model(b, _tail(b, h, WIDTH), domains=("com.microsoft",))


def _if_on_mean(b: _Builder, h: str, constant: bool = False) -> str:
    """If(mean(x) > 0) then Relu(h) else Neg(h), both branches reading ``h`` from outside
    (``constant``: the condition is a constant True instead)."""
    cond = b.const("yes", np.array(True)) if constant else \
        b.node("Greater", [b.node("ReduceMean", [INPUT], keepdims=0), b.const("zero", np.array(0.0, np.float32))])
    branches = {}
    for key, op in (("then_branch", "Relu"), ("else_branch", "Neg")):
        out = f"{key}_out"
        branches[key] = helper.make_graph([helper.make_node(op, [h], [out])], key, [],
                                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    return b.node("If", [cond], name="branch", **branches)


def if_node() -> onnx.ModelProto:
    """An If node whose output carries channels into conv_t."""
    b = _Builder()
    return _model(b, _tail(b, _if_on_mean(b, _stem(b)), WIDTH))


def if_reads_prunable(constant: bool = False) -> onnx.ModelProto:
    """An If whose branches read "h" (16 channels: sparsity 0.3 prunes it) from the outer
    scope while conv_c reads it too: Concat(If(...), conv_c(h)) -> conv_t (``constant``: on a
    constant condition, so that all of the If's own inputs are constants)."""
    b = _Builder()
    width = 16
    h = _stem(b, width)
    cat = b.node("Concat", [_if_on_mean(b, h, constant), b.node("Relu", [b.conv(h, width, width, name="conv_c")],
                                                                 name="c")], name="cat", axis=1)
    return _model(b, _tail(b, cat, 2 * width))


def _squeezed(b: _Builder, h: str) -> str:
    """h [N, 8, 16, 16] -> MaxPool(16 x 1) -> Squeeze(2) [N, 8, 16]: channels still on axis 1."""
    pooled = b.node("MaxPool", [h], kernel_shape=[HW, 1])
    return b.node("Squeeze", [pooled, _ints(b, "axis2", [2])], name="seq")


def conv1d() -> onnx.ModelProto:
    """A 1-D Conv (rank-3 weight) over the squeezed rows of "h", unsqueezed back for conv_t."""
    b = _Builder()
    seq = _squeezed(b, _stem(b))
    w = b.weight("conv1d.weight", (WIDTH, WIDTH, 3), WIDTH * 3)
    c = b.node("Conv", [seq, w, b.vector("conv1d.bias", WIDTH)], name="conv1d", kernel_shape=[3], pads=[1, 1])
    return _model(b, _tail(b, b.node("Unsqueeze", [c, _ints(b, "axis2_back", [2])]), WIDTH))


def conv_transpose1d() -> onnx.ModelProto:
    """A 1-D ConvTranspose over the squeezed rows of "h", unsqueezed back for conv_t."""
    b = _Builder()
    seq = _squeezed(b, _stem(b))
    w = b.weight("up1d.weight", (WIDTH, WIDTH, 2), WIDTH * 2)
    c = b.node("ConvTranspose", [seq, w, b.vector("up1d.bias", WIDTH)], name="up1d", kernel_shape=[2], strides=[2])
    return _model(b, _tail(b, b.node("Unsqueeze", [c, _ints(b, "axis2_back", [2])]), WIDTH))


def shared_depthwise() -> onnx.ModelProto:
    """Two depthwise Convs in a row with one weight."""
    b = _Builder()
    w = b.weight("dw.weight", (WIDTH, 1, 3, 3), 9)
    h = _stem(b)
    for name in ("dw1", "dw2"):
        h = b.node("Relu", [b.node("Conv", [h, w], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=WIDTH)])
    return _model(b, _tail(b, h, WIDTH))


def grouped_after_multiplier() -> onnx.ModelProto:
    """A grouped Conv (2 inputs per group) reads a depthwise channel multiplier's outputs."""
    b = _Builder()
    h = b.conv(_stem(b), WIDTH, 2 * WIDTH, group=WIDTH, name="dw_mult")
    h = b.node("Relu", [b.conv(h, 2 * WIDTH, 2 * WIDTH, group=WIDTH, name="grouped")])
    return _model(b, _tail(b, h, 2 * WIDTH))


def _up(b: _Builder, x: str, w: str, name: str, cout: int = WIDTH, **attrs) -> str:
    """ConvTranspose(x, w) with a bias; attributes default to a 2x2 kernel of stride 2."""
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], **attrs}
    return b.node("Relu", [b.node("ConvTranspose", [x, w, b.vector(f"{name}.bias", cout)], name=name, **attrs)])


def conv_transpose_identity_weight() -> onnx.ModelProto:
    """A ConvTranspose whose weight comes through an Identity node (folded only by ``prune``)."""
    b = _Builder()
    w = b.node("Identity", [b.weight("up.weight", (WIDTH, WIDTH, 2, 2), WIDTH * 4)], name="up_w")
    return _model(b, _tail(b, _up(b, _stem(b), w, "up"), WIDTH))


def conv_transpose_grouped_widening() -> onnx.ModelProto:
    """A grouped ConvTranspose (group 4) with 16 outputs for 8 inputs."""
    b = _Builder()
    w = b.weight("up.weight", (WIDTH, 4, 2, 2), 8)
    return _model(b, _tail(b, _up(b, _stem(b), w, "up", cout=16, group=4), 16))


def conv_transpose_shared() -> onnx.ModelProto:
    """Two ConvTransposes (3x3, stride 1) in a row with one weight."""
    b = _Builder()
    w = b.weight("up.weight", (WIDTH, WIDTH, 3, 3), WIDTH * 9)
    h = _stem(b)
    for name in ("up1", "up2"):
        h = _up(b, h, w, name, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    return _model(b, _tail(b, h, WIDTH))


def conv_transpose_auto_pad() -> onnx.ModelProto:
    """A ConvTranspose with auto_pad SAME_UPPER (stride 2, kernel 3: an odd total padding)."""
    b = _Builder()
    w = b.weight("up.weight", (WIDTH, WIDTH, 3, 3), WIDTH * 9)
    return _model(b, _tail(b, _up(b, _stem(b), w, "up", kernel_shape=[3, 3], auto_pad="SAME_UPPER"), WIDTH))


def conv_transpose_output_shape(**attrs) -> onnx.ModelProto:
    """A ConvTranspose with an output_shape attribute (stride 2, kernel 3: an odd total
    padding), and ``attrs``."""
    b = _Builder()
    w = b.weight("up.weight", (WIDTH, WIDTH, 3, 3), WIDTH * 9)
    attrs = {"kernel_shape": [3, 3], "output_shape": [32, 32], **attrs}
    return _model(b, _tail(b, _up(b, _stem(b), w, "up", **attrs), WIDTH))


def shared_conv_weight() -> onnx.ModelProto:
    """conv_c and conv_d (8 -> 8) in a row with one weight, then conv_t."""
    b = _Builder()
    w = b.weight("shared.weight", (WIDTH, WIDTH, 3, 3), WIDTH * 9)
    h = _stem(b)
    for name in ("conv_c", "conv_d"):
        h = b.node("Relu", [b.node("Conv", [h, w, b.vector(f"{name}.bias", WIDTH)], name=name, kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1])], name=name[-1])
    return _model(b, _tail(b, h, WIDTH))


def gemm_per_sample_bias() -> onnx.ModelProto:
    """A model of fixed batch 2 whose Gemm "y" adds a bias per sample ([2, 10])."""
    b = _Builder()
    flat = b.gap_flatten(_stem(b))
    bias = b.const("fc.bias", b.rng.uniform(-0.1, 0.1, (2, CLASSES)).astype(np.float32))
    y = b.node("Gemm", [flat, b.weight("fc.weight", (CLASSES, WIDTH), WIDTH), bias], name=OUTPUT, transB=1)
    return _model(b, y, out_shape=[2, CLASSES], batch=2)


def matmul_4d() -> onnx.ModelProto:
    """MatMul of "h" [N, 8, 16, 16] by a constant [16, 16] (mixing along W)."""
    b = _Builder()
    h = b.node("MatMul", [_stem(b), b.weight("mix", (HW, HW), HW)], name="mix_w")
    return _model(b, _tail(b, h, WIDTH))


def clip_computed_min() -> onnx.ModelProto:
    """Clip of "h" with a min computed from the input."""
    b = _Builder()
    h = _stem(b)
    return _model(b, _tail(b, b.node("Clip", [h, b.node("ReduceMin", [INPUT], keepdims=0)], name="clip"), WIDTH))


def cast_to_int() -> onnx.ModelProto:
    """Cast of "h" to int32 and back to float."""
    b = _Builder()
    h = b.node("Cast", [b.node("Cast", [_stem(b)], name="to_int", to=TensorProto.INT32)], to=TensorProto.FLOAT)
    return _model(b, _tail(b, h, WIDTH))


def instance_norm_computed_scale() -> onnx.ModelProto:
    """InstanceNormalization of "h" whose scale is the batch mean of another conv's outputs."""
    b = _Builder()
    h = _stem(b)
    style = b.node("ReduceMean", [b.conv(INPUT, IN_CHANNELS, WIDTH, k=1, name="conv_s")], axes=[0, 2, 3], keepdims=0)
    h = b.node("InstanceNormalization", [h, b.node("Sigmoid", [style]), b.vector("in.bias", WIDTH)], name="inorm")
    return _model(b, _tail(b, h, WIDTH))


def pad_computed() -> onnx.ModelProto:
    """Pad of "h" whose pads are computed from the input's values, not its shape."""
    b = _Builder()
    h = _stem(b)
    zero = b.node("Mul", [b.node("ReduceMin", [INPUT], keepdims=0), b.const("zeros", np.zeros(8, np.float32))])
    pads = b.node("Cast", [b.node("Add", [zero, b.const("hw_pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.float32))])],
                  to=TensorProto.INT64)
    return _model(b, _tail(b, b.node("Pad", [h, pads], name="pad"), WIDTH))


def flatten_axis2() -> onnx.ModelProto:
    """GAP -> Flatten(axis 2) [N * 8, 1] -> Reshape [N, 8] -> Gemm."""
    b = _Builder()
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [_stem(b)])], name="flat", axis=2)
    h = b.node("Reshape", [flat, _ints(b, "rows", [-1, WIDTH])])
    return _model(b, b.gemm(h, WIDTH, CLASSES, name=OUTPUT))


def squeeze_to_scalar() -> onnx.ModelProto:
    """A regression head: Gemm(8 -> 1) "score" -> Squeeze [N] -> Mul by 2 "y"."""
    b = _Builder()
    score = b.gemm(b.gap_flatten(_stem(b)), WIDTH, 1, name="score")
    y = b.node("Mul", [b.node("Squeeze", [score, _ints(b, "axis1", [1])]), b.const("two", np.array(2.0, np.float32))],
               name=OUTPUT)
    return _model(b, y, out_shape=["N"])


def squeeze_multiplied() -> onnx.ModelProto:
    """A depthwise channel multiplier (8 -> 16) -> GAP -> Squeeze(2, 3) -> Gemm."""
    b = _Builder()
    h = b.node("Relu", [b.conv(_stem(b), WIDTH, 2 * WIDTH, group=WIDTH, name="dw_mult")])
    h = b.node("Squeeze", [b.node("GlobalAveragePool", [h]), _ints(b, "hw", [2, 3])], name="squeeze")
    return _model(b, b.gemm(h, 2 * WIDTH, CLASSES, name=OUTPUT))


def reduce_channels() -> onnx.ModelProto:
    """ReduceMean of "h" over the channel axis [N, 1, 16, 16] -> conv_t."""
    b = _Builder()
    return _model(b, _tail(b, b.node("ReduceMean", [_stem(b)], name="mean", axes=[1]), 1))


def concat_spatial(axis: int = 2) -> onnx.ModelProto:
    """Concat of "h" with itself along H (or ``axis``: 0, the batch)."""
    b = _Builder()
    h = _stem(b)
    return _model(b, _tail(b, b.node("Concat", [h, h], name="cat", axis=axis), WIDTH))


def concat_coordinates() -> onnx.ModelProto:
    """CoordConv: Concat("h", two coordinate maps expanded to the batch) -> conv_t."""
    b = _Builder()
    h = _stem(b)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, HW), np.linspace(-1, 1, HW)))[None].astype(np.float32)
    batch = b.node("Shape", [h], end=1)
    coords = b.node("Expand", [b.const("grid", grid),
                               b.node("Concat", [batch, _ints(b, "chw", [2, HW, HW])], axis=0)], name="coords")
    return _model(b, _tail(b, b.node("Concat", [h, coords], name="cat", axis=1), WIDTH + 2))


def add_broadcast_by_constant() -> onnx.ModelProto:
    """GAP("h") [N, 8, 1, 1] plus a constant [1, 8, 4, 4] (a learned position map)."""
    b = _Builder()
    pos = b.weight("pos", (1, WIDTH, 4, 4), 1)
    return _model(b, _tail(b, b.node("Add", [b.node("GlobalAveragePool", [_stem(b)], name="pooled"), pos]), WIDTH))


def mul_identity_constant() -> onnx.ModelProto:
    """Mul of "h" by a per-channel scale that comes through an Identity node."""
    b = _Builder()
    h = _stem(b)
    scale = b.node("Identity", [b.const("scale", b.rng.uniform(0.5, 1.5, (WIDTH, 1, 1)).astype(np.float32))])
    return _model(b, _tail(b, b.node("Mul", [h, scale], name="scaled"), WIDTH))


def sum_of_three(broadcast: bool = False) -> onnx.ModelProto:
    """Sum("h", conv_c("h"), conv_d("h")) -> conv_t (``broadcast``: the third operand is
    GlobalAveragePool(conv_d("h")), a [N, 8, 1, 1] tensor broadcast over H and W)."""
    b = _Builder()
    h = _stem(b)
    c, d = (b.conv(h, WIDTH, WIDTH, name=name) for name in ("conv_c", "conv_d"))
    if broadcast:
        d = b.node("GlobalAveragePool", [d], name="gap_d")
    return _model(b, _tail(b, b.node("Sum", [h, c, d], name="sum"), WIDTH))


def sum_of_one() -> onnx.ModelProto:
    """Sum of "h" alone."""
    b = _Builder()
    return _model(b, _tail(b, b.node("Sum", [_stem(b)], name="sum"), WIDTH))


def pow_activation_exponent() -> onnx.ModelProto:
    """Pow(0.5, "h"): the activation is the exponent."""
    b = _Builder()
    h = b.node("Pow", [b.const("base", np.array(0.5, np.float32)), _stem(b)], name="pow")
    return _model(b, _tail(b, h, WIDTH))


def add_channel_axes_differ() -> onnx.ModelProto:
    """Add of "h" [N, 8, 8, 8] (channels on axis 1) and an NHWC copy of conv_c's outputs."""
    b = _Builder()
    h = _stem(b, stride=2)
    nhwc = b.node("Transpose", [b.conv(h, WIDTH, WIDTH, name="conv_c")], name="nhwc", perm=[0, 2, 3, 1])
    return _model(b, _tail(b, b.node("Add", [h, nhwc], name="sum"), WIDTH))


def spatial_attention() -> onnx.ModelProto:
    """CBAM's spatial attention: "h" * Sigmoid(conv_g("h") to one channel)."""
    b = _Builder()
    h = _stem(b)
    gate = b.node("Sigmoid", [b.conv(h, WIDTH, 1, k=7, name="conv_g")], name="gate")
    return _model(b, _tail(b, b.node("Mul", [h, gate], name="attended"), WIDTH))


def add_rank_mismatch() -> onnx.ModelProto:
    """conv_g("h") [N, 1, 16, 16] plus the input's mean map [16, 16]."""
    b = _Builder()
    mean_map = b.node("ReduceMean", [INPUT], axes=[0, 1], keepdims=0)
    g = b.node("Add", [b.conv(_stem(b), WIDTH, 1, name="conv_g"), mean_map], name="shifted")
    return _model(b, _tail(b, g, 1))


def slice_computed_bounds(axes: list[int] | None = None) -> onnx.ModelProto:
    """U-Net crop: Slice of "h" to the H, W of a pooled tensor, read by Shape, along
    ``axes`` (H and W; None: no axes input, so every leading axis)."""
    b = _Builder()
    h = _stem(b)
    size = b.node("Slice", [b.node("Shape", [b.pool(h)]), _ints(b, "two", [2]), _ints(b, "four", [4])])
    bounds = [_ints(b, "origin", [0, 0]), size] + ([] if axes is None else [_ints(b, "axes", axes)])
    if axes == [1, 2]:  # the C and H of the pooled tensor: its channels, which pooling keeps
        size = b.node("Slice", [b.node("Shape", [b.pool(h)]), _ints(b, "one", [1]), _ints(b, "three", [3])])
        bounds[1] = size
    crop = b.node("Slice", [h] + bounds, name="crop")
    return _model(b, _tail(b, crop, WIDTH))


def slice_batch() -> onnx.ModelProto:
    """Slice of "h" to its first two samples (output [min(N, 2), 10])."""
    b = _Builder()
    first = b.node("Slice", [_stem(b), _ints(b, "start", [0]), _ints(b, "stop", [2]), _ints(b, "axis0", [0])],
                   name="first")
    return _model(b, _tail(b, first, WIDTH), out_shape=["M", CLASSES])


def slice_step() -> onnx.ModelProto:
    """Every second channel of "h" (Slice with step 2)."""
    b = _Builder()
    bounds = [_ints(b, name, v) for name, v in (("start", [0]), ("stop", [WIDTH]), ("axis1", [1]), ("step", [2]))]
    return _model(b, _tail(b, b.node("Slice", [_stem(b), *bounds], name="even"), WIDTH // 2))


def slice_shared_bounds() -> onnx.ModelProto:
    """Two Slices of the first half of "h" and of conv_c("h") read one set of bounds."""
    b = _Builder()
    h = _stem(b)
    c = b.node("Relu", [b.conv(h, WIDTH, WIDTH, name="conv_c")], name="c")
    bounds = [_ints(b, name, v) for name, v in (("start", [0]), ("stop", [WIDTH // 2]), ("axis1", [1]))]
    cat = b.node("Concat", [b.node("Slice", [h, *bounds]), b.node("Slice", [c, *bounds])], name="cat", axis=1)
    return _model(b, _tail(b, cat, WIDTH))


def slice_opset9() -> onnx.ModelProto:
    """Opset 9: Slice of the first half of "h"'s channels with attribute bounds."""
    b = _Builder()
    half = b.node("Slice", [_stem(b)], name="half", starts=[0], ends=[WIDTH // 2], axes=[1])
    return _model(b, _tail(b, half, WIDTH // 2), opset=9)


def split_batch() -> onnx.ModelProto:
    """Split of "h" along the batch axis (one part)."""
    b = _Builder()
    return _model(b, _tail(b, b.node("Split", [_stem(b)], name="parts", axis=0), WIDTH))


def split_flattened() -> onnx.ModelProto:
    """Flatten("h" pooled to 4x4) [N, 128] -> Split in two halves -> two Gemms -> Add "y"."""
    b = _Builder()
    flat = b.node("Flatten", [b.node("MaxPool", [_stem(b)], kernel_shape=[4, 4], strides=[4, 4])], axis=1)
    half = WIDTH * 16 // 2
    b.node("Split", [flat, _ints(b, "halves", [half, half])], name="halves", n_out=2, axis=1)
    y = b.node("Add", [b.gemm("halves_out0", half, CLASSES), b.gemm("halves_out1", half, CLASSES)], name=OUTPUT)
    return _model(b, y)


def split_shared_sizes() -> onnx.ModelProto:
    """Two channel Splits of "h" read one sizes tensor; Concat of a half of each -> conv_t."""
    b = _Builder()
    h = _stem(b)
    sizes = _ints(b, "sizes", [WIDTH // 2] * 2)
    for name in ("split1", "split2"):
        b.node("Split", [h, sizes], name=name, n_out=2, axis=1)
    return _model(b, _tail(b, b.node("Concat", ["split1_out0", "split2_out1"], name="cat", axis=1), WIDTH))


def resize_channels() -> onnx.ModelProto:
    """Resize of "h" by 2 along the channel axis (nearest)."""
    b = _Builder()
    scales = b.const("scales", np.array([1, 2, 1, 1], np.float32))
    return _model(b, _tail(b, b.node("Resize", [_stem(b), "", scales], name="resized"), 2 * WIDTH))


def resize_crop_channels() -> onnx.ModelProto:
    """Resize of "h" in tf_crop_and_resize mode whose roi crops the channels to [0.25, 0.75]
    (the spec interpolates between channels; onnxruntime's CPU kernel leaves them)."""
    b = _Builder()
    roi = b.const("roi", np.array([0, 0.25, 0, 0, 1, 0.75, 1, 1], np.float32))
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    cropped = b.node("Resize", [_stem(b), roi, scales], name="cropped", mode="linear",
                     coordinate_transformation_mode="tf_crop_and_resize")
    return _model(b, _tail(b, cropped, WIDTH))


def resize_computed_sizes() -> onnx.ModelProto:
    """Resize of "h" to sizes Concat(N, 8, 2 * (H, W) of the input), computed at run time."""
    b = _Builder()
    h = _stem(b)
    batch = b.node("Slice", [b.node("Shape", [h]), _ints(b, "zero", [0]), _ints(b, "one", [1])])
    hw = b.node("Slice", [b.node("Shape", [INPUT]), _ints(b, "two", [2]), _ints(b, "four", [4])])
    sizes = b.node("Concat", [batch, _ints(b, "c", [WIDTH]), b.node("Mul", [hw, _ints(b, "twice", [2])])], axis=0)
    return _model(b, _tail(b, b.node("Resize", [h, "", "", sizes], name="resized"), WIDTH))


def transpose_batch() -> onnx.ModelProto:
    """Transpose of "h" swapping batch and H, Relu, and back."""
    b = _Builder()
    swapped = b.node("Relu", [b.node("Transpose", [_stem(b)], name="swap", perm=[2, 1, 0, 3])])
    return _model(b, _tail(b, b.node("Transpose", [swapped], perm=[2, 1, 0, 3]), WIDTH))


def batch_behind_rows(merge: bool, read_split: bool = False) -> onnx.ModelProto:
    """"h" to channels last (N, H, W, C), a Transpose that moves the batch behind H (H, N, W,
    C), a Reshape, and back to (N, C, H, W), the targets' channel entries read from Shapes
    (of the map before the move, and of the merged one, as tf2onnx reads them).
    ``merge``: the Reshape merges H into the batch (HN, W, C), as tf2onnx's SpaceToBatchND
    does, then splits it out again; else it merges the batch with W instead (H, NW, C),
    which no space-to-batch does. ``read_split``: a Relu reads the map split out again
    (H, N, W, C) before the Transpose back, which no space-to-batch does either."""
    b = _Builder()
    nhwc = b.node("Transpose", [_stem(b)], perm=[0, 2, 3, 1])
    moved = b.node("Transpose", [nhwc], name="moved", perm=[1, 0, 2, 3])

    def channels(x: str, axis: int) -> str:
        return b.node("Slice", [b.node("Shape", [x]), _ints(b, f"from{axis}", [axis]), _ints(b, f"to{axis}", [axis + 1])])

    lead = _ints(b, "merged_lead", [-1, HW] if merge else [HW, -1])
    merged = b.node("Relu", [b.node("Reshape", [moved, b.node("Concat", [lead, channels(nhwc, 3)], axis=0)])])
    target = b.node("Concat", [_ints(b, "back_lead", [HW, -1, HW]), channels(merged, 2)], axis=0)
    back = b.node("Reshape", [merged, target])
    if read_split:
        back = b.node("Relu", [back])
    return _model(b, _tail(b, b.node("Transpose", [back], perm=[1, 3, 0, 2]), WIDTH))


def swap_batch_channels(reader: str = "Relu") -> onnx.ModelProto:
    """Transpose of "h" swapping batch and channels, ``reader`` (a Relu; a Softmax over the
    swapped map's last axis), and back: tf2onnx's space-to-batch, which a Relu passes; a
    swap read by anything else freezes as before session 60."""
    b = _Builder()
    swapped = b.node(reader, [b.node("Transpose", [_stem(b)], name="swap", perm=[1, 0, 2, 3])])
    return _model(b, _tail(b, b.node("Transpose", [swapped], perm=[1, 0, 2, 3]), WIDTH))


def slice_to_grouped() -> onnx.ModelProto:
    """"h" of 10 channels: its first 8 go through a grouped Conv (4 per group), its last 2
    go round it; Concat -> conv_t. The first walk sees blocks of 4 in 10 channels."""
    b = _Builder()
    h = _stem(b, width=10)
    head = b.node("Slice", [h, _ints(b, "zero", [0]), _ints(b, "eight", [8]), _ints(b, "axis1", [1])])
    rest = b.node("Slice", [h, _ints(b, "from8", [8]), _ints(b, "ten", [10]), _ints(b, "axis1b", [1])])
    grouped = b.node("Relu", [b.conv(head, 8, 8, group=2, name="grouped")])
    return _model(b, _tail(b, b.node("Concat", [grouped, rest], name="cat", axis=1), 10))


def dead_branch() -> onnx.ModelProto:
    """conv_d("h") -> Relu "dead", which nothing reads (left over by an exporter)."""
    b = _Builder()
    h = _stem(b)
    b.node("Relu", [b.conv(h, WIDTH, WIDTH, name="conv_d")], name="dead")
    return _model(b, _tail(b, h, WIDTH))


# -- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A model, the groups it must freeze and the groups it must keep prunable.

    Groups are named by a tensor they hold: ``"name"`` (every group on that tensor) or
    ``"name@offset"`` (the group at that channel offset of the tensor). A reason "" asks
    for the group to be frozen, whatever the reason. ``batch``: samples of the test batch
    (the model's own batch where it is fixed)."""

    build: Callable[[], onnx.ModelProto]
    frozen: dict[str, str] = field(default_factory=dict)   # group -> substring of one of its reasons
    prunable: tuple[str, ...] = ("a", "t")
    batch: int = 5


CASES: dict[str, Case] = {
    # add_param
    "bn_shared_scale": Case(shared_bn_scale, {"h": "per-channel constant 'bn.scale' of bn1 is shared",
                                              "conv_c": "per-channel constant 'bn.scale' of bn2 is shared"}),
    # run(): foreign domain, sub-graph attribute
    "com_microsoft_pad": Case(foreign_domain, {"h": "op Pad is not understood by the channel analysis"}),
    "if_node": Case(if_node, {"branch": "op If is not understood by the channel analysis", "h": ""}),
    # the branches read "h" from the outer scope: it stays whole, or the If's output would change
    "if_reads_prunable": Case(if_reads_prunable, {"cat@0": "op If is not understood by the channel analysis",
                                                  "h": "op If is not understood by the channel analysis"},
                              prunable=("a", "c", "t")),
    "if_on_a_constant_reads_prunable": Case(lambda: if_reads_prunable(constant=True),
                                            {"cat@0": "op If is not understood by the channel analysis",
                                             "h": "op If is not understood by the channel analysis"},
                                            prunable=("a", "c", "t")),
    # op_Conv, pass_groups, add_consumer, collect's shared producer weights
    # 1-D convolutions were frozen before session 46; the Squeeze / Unsqueeze around them are followed
    "conv_1d": Case(conv1d, {}, prunable=("a", "h", "t")),
    "conv_depthwise_shared": Case(shared_depthwise, {"h": "dw1: grouped weights are shared"}),
    "conv_grouped_after_multiplier": Case(grouped_after_multiplier,
                                          {"h": "grouped: its input channels are already multiplied"}),
    "conv_shared_weight": Case(shared_conv_weight, {"h": "weight 'shared.weight' is applied to its own outputs",
                                                   "c": "weight 'shared.weight' is applied to its own outputs",
                                                   "d": "weight 'shared.weight' is applied to its own outputs"}),
    # op_ConvTranspose, transposed_geometry
    "convT_identity_weight": Case(conv_transpose_identity_weight, {"h": "up has non-constant weights"}),
    "convT_1d": Case(conv_transpose1d, {}, prunable=("a", "h", "t")),
    "convT_grouped_widening": Case(conv_transpose_grouped_widening,
                                   {"h": "up: grouped ConvTranspose (group=4) with 16 outputs for 8 inputs"}),
    "convT_shared_weight": Case(conv_transpose_shared, {"h": "up1: its weights are shared by several nodes"}),
    # implicit padding is read since session 59; an output_shape with explicit pads as well,
    # or beyond what the input gives, still freezes the inputs
    "convT_auto_pad": Case(conv_transpose_auto_pad, {}, prunable=("a", "h", "up", "t")),
    "convT_output_shape": Case(conv_transpose_output_shape, {}, prunable=("a", "h", "up", "t")),
    "convT_output_shape_and_pads": Case(lambda: conv_transpose_output_shape(pads=[1, 1, 0, 0]),
                                        {"h": "up: the padding that its output_shape or auto_pad stands for"},
                                        prunable=("a", "up", "t")),
    "convT_output_shape_beyond": Case(lambda: conv_transpose_output_shape(output_shape=[34, 34]),
                                      {"h": "up: the padding that its output_shape or auto_pad stands for"},
                                      prunable=("a", "up", "t")),
    # op_Gemm, op_MatMul
    "gemm_per_sample_bias": Case(gemm_per_sample_bias, {"h": "y: Gemm input or bias layout not understood"},
                                 prunable=("a",), batch=2),
    "matmul_4d": Case(matmul_4d, {"h": "mix_w: only MatMul of a 2-D activation by a constant matrix is handled"}),
    # unary, InstanceNormalization, Pad, Flatten
    "clip_computed_min": Case(clip_computed_min, {"h": "Clip with a non-constant parameter"}),
    "cast_int32": Case(cast_to_int, {"h": "Cast to a non-float type"}),
    "instance_norm_computed_scale": Case(instance_norm_computed_scale,
                                         {"h": "inorm: InstanceNormalization with non-constant parameters"}),
    "pad_computed": Case(pad_computed, {"h": "Pad with non-constant pads"}),
    "flatten_axis2": Case(flatten_axis2, {"h": "Flatten that does not keep the batch axis alone"}, prunable=("a",)),
    # rank_change, reduce
    "squeeze_to_scalar": Case(squeeze_to_scalar, {"score": "Squeeze that moves the channel axis"}, prunable=("a",)),
    "squeeze_multiplied": Case(squeeze_multiplied, {"h": "Squeeze of a flattened tensor"}, prunable=("a",)),
    "reduce_mean_channels": Case(reduce_channels, {"h": "ReduceMean over the batch or channel axis"}),
    # op_Concat
    "concat_along_batch": Case(lambda: concat_spatial(axis=0), {"h": "Concat along an axis other than channels"}),
    "concat_along_h": Case(concat_spatial, {}, prunable=("a", "h", "t")),
    "concat_constant_channels": Case(concat_coordinates, {"cat@8": "constant channels in a Concat"},
                                     prunable=("a", "h", "t")),
    # binary_with_constant, elementwise_binary
    "add_constant_broadcasts": Case(add_broadcast_by_constant,
                                    {"h": "the constant broadcasts the activation to a new shape"}),
    "mul_computed_constant": Case(mul_identity_constant,
                                  {"h": "scaled: constant operand indexes channels in a way not handled"}),
    # variadic Sum: three activations of one shape are coupled, one is copied, a broadcast one freezes
    "sum_of_three": Case(sum_of_three, {}, prunable=("a", "h", "conv_c", "conv_d", "t")),
    "sum_of_one": Case(sum_of_one, {}, prunable=("a", "h", "t")),
    "sum_of_three_broadcast": Case(lambda: sum_of_three(broadcast=True),
                                   {"h": "Sum of 3 inputs whose activations are not all of its output's shape",
                                    "conv_c": "Sum of 3 inputs whose activations are not all of its output's shape"}),
    "pow_activation_exponent": Case(pow_activation_exponent, {"h": "Pow with an activation exponent"}),
    "add_nchw_nhwc": Case(add_channel_axes_differ, {"h": "Add of tensors whose channels cannot be followed",
                                                    "nhwc": "Add of tensors whose channels cannot be followed"}),
    "spatial_attention": Case(spatial_attention, {"gate": "Mul broadcasts it over channels"},
                              prunable=("a", "h", "t")),
    "add_rank_mismatch": Case(add_rank_mismatch, {"conv_g": "Add with a broadcast not handled"},
                              prunable=("a", "h", "t")),
    # op_Slice
    # computed bounds on H and W alone pass the channels on (session 59); on the channels,
    # or on axes not given, they freeze them
    "slice_computed_bounds": Case(lambda: slice_computed_bounds([2, 3]), {}, prunable=("a", "h", "t")),
    "slice_computed_bounds_channels": Case(lambda: slice_computed_bounds([1, 2]),
                                           {"h": "Slice with non-constant bounds"}),
    "slice_computed_bounds_no_axes": Case(slice_computed_bounds, {"h": "Slice with non-constant bounds"}),
    # what is computed after a batch cut has no row per sample to calibrate on: frozen too
    "slice_batch": Case(slice_batch, {"h": "Slice of the batch axis", "t": "no row per sample"}, prunable=("a",)),
    "slice_step2": Case(slice_step, {"h": "Slice of channels with a step"}),
    "slice_shared_bounds": Case(slice_shared_bounds, {"h": "Slice bounds shared with other nodes"}),
    "slice_opset9": Case(slice_opset9, {"h": "Slice of channels with bounds as attributes (opset < 10)"}),
    # op_Split
    "split_batch": Case(split_batch, {"h": "Split of the batch axis"}),
    "split_flattened": Case(split_flattened, {"h": "Split of channels that hold several entries each"}, prunable=("a",)),
    "split_shared_sizes": Case(split_shared_sizes, {"h": "Split with non-constant or shared sizes"}),
    # op_Resize, op_Transpose
    "resize_channels": Case(resize_channels, {"h": "Resize that changes the batch or channel count"}),
    "resize_crop_channels": Case(resize_crop_channels, {"h": "Resize whose crop (roi) reaches into the channel "
                                                             "axis"}),
    "resize_computed_sizes": Case(resize_computed_sizes, {"h": "Resize with non-constant or shared sizes"}),
    "transpose_batch": Case(transpose_batch, {"h": "Transpose that moves the batch axis"}),
    "swap_batch_channels": Case(swap_batch_channels, {}, prunable=("a", "h", "t")),
    "batch_behind_rows": Case(lambda: batch_behind_rows(True), {}, prunable=("a", "h", "t")),
    "batch_behind_rows_flattened": Case(lambda: batch_behind_rows(False),
                                        {"h": "Reshape of a map whose batch a Transpose moved"}),
    "batch_behind_rows_read": Case(lambda: batch_behind_rows(True, read_split=True),
                                   {"h": "batch a Transpose moved behind other axes"}),
    "swap_batch_channels_softmax": Case(lambda: swap_batch_channels("Softmax"),
                                        {"h": "Transpose that moves the batch axis"}),
    # collect(): a block conflict of the first walk that the cut resolves; a group nothing reads
    "slice_to_grouped": Case(slice_to_grouped, {}, prunable=("a", "h@0", "h@8", "t")),
    "dead_branch": Case(dead_branch, {"dead": "no consumer reads these channels"}, prunable=("a", "h", "t")),
}


def _params() -> list:
    """The cases as pytest params with their ids."""
    return [pytest.param(case, id=name) for name, case in CASES.items()]


# -- the tests -------------------------------------------------------------------------------

def _analysis(model: onnx.ModelProto) -> GraphAnalysis:
    """The channel groups of a copy of ``model``, weights as initializers (as test_groups does)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    constants_to_initializers(copy)
    return probe_groups(copy, {INPUT: random_input(1)}, CPU)[1]


def _groups(analysis: GraphAnalysis, spec: str) -> list[ChannelGroup]:
    """The groups holding tensor ``name`` (``spec`` "name"), or its channels from ``offset`` on
    (``spec`` "name@offset")."""
    name, _, offset = spec.partition("@")
    found = [g for g in analysis.groups
             if any(t == name and (not offset or off == int(offset)) for t, off, *_ in g.tensors)]
    assert found, f"no group holds {spec}"
    return found


@pytest.mark.parametrize("case", _params())
def test_construct_freezes_its_groups_only(case: Case) -> None:
    """The groups touching the construct are frozen with its reason; the named others stay prunable."""
    analysis = _analysis(case.build())
    summary = [(g.gid, [t for t, *_ in g.tensors], g.frozen) for g in analysis.groups]
    for spec, reason in case.frozen.items():
        for g in _groups(analysis, spec):
            assert g.frozen and any(reason in r for r in g.frozen), (spec, summary)
    for spec in case.prunable:
        for g in _groups(analysis, spec):
            assert g.prunable, (spec, summary)


@pytest.mark.parametrize("case", _params())
def test_prune_keeps_the_graph_valid(case: Case) -> None:
    """prune at sparsity 0.3 removes weights, leaves its input as it was and returns a checked
    model that runs on a new batch with the original's output shapes."""
    model = case.build()
    before = model.SerializeToString()
    result = onnx_eprune.prune(model, random_input(32, seed=3), device="cpu", sparsity=0.3)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["params"]["removed_fraction"] > 0.0
    x = random_input(case.batch, seed=4)
    ref, got = run_model(model, x), run_model(result.model, x)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    assert all(np.isfinite(v).all() for v in got.values())


@pytest.mark.parametrize("case", _params())
def test_keep_all_reproduces_outputs(case: Case) -> None:
    """prune with keep_ratio 1.0 gives the original outputs (relative error <= 1e-4)."""
    model = case.build()
    result = onnx_eprune.prune(model, random_input(32, seed=3), device="cpu", keep_ratio=1.0)
    x = random_input(case.batch, seed=4)
    ref, got = run_model(model, x), run_model(result.model, x)
    assert list(got) == list(ref)
    for name in ref:
        assert relative_error(ref[name], got[name]) <= 1e-4, name
