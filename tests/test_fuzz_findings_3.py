"""Third fuzz round on graph constructs: mixtures the first two rounds did not combine.

Round 1 (``test_fuzz_findings.py``) and ``random_graphs.py`` cover the constructs one block at
a time; round 2 (``test_fuzz_findings_2.py``) puts one construct between two convolutions.
This round chains several constructs on a non-square map (16 x 12) and ends in a variety of
heads, so that what one construct leaves behind is what the next one reads:

* residual sums across Concat / Split (a Sum of three whose operands split their channels at
  different places, halves concatenated back in swapped order, a Concat of one tensor with
  itself added to the stream), channel shuffles (Reshape-Transpose-Reshape between grouped
  convolutions), channel multipliers added to grouped convolutions, dilated strided
  depthwise convolutions, ``auto_pad`` convolutions with non-square kernels;
* PRelu / LeakyRelu / Clip / HardSwish / Mish / Gelu (both forms) / Elu / Selu / Softplus /
  Celu / ThresholdedRelu / Shrink / Sign activations, Where / Mul gates;
* Pad (reflect, constant value, ``axes`` input), Resize (scales; sizes with ``axes``),
  Upsample (opset 7 and 9), ConvTranspose (plain, depthwise followed by a Split) in the middle;
* Slice on the channels with steps, Expand, Tile, Einsum, NHWC LayerNormalization,
  GroupNormalization (opset 21), InstanceNormalization after a Concat, a ConvNeXt block;
* heads: Flatten of a non-square map (NCHW, NHWC and H/W-swapped) into a Gemm, ReduceMean /
  ReduceMax (keepdims 0 and 1, axes as attribute and input) into MatMul / Gemm, GlobalMaxPool.

Every model is pruned at several targets in both modes and checked: onnx.checker
(full_check) passes, onnxruntime runs it at batch 1 and 3, ``keep_ratio=1.0`` reproduces the
original outputs (rtol 1e-4) and gives back the same graph, the report's parameters and MACs
equal an independent count over the written files, and no raw exception escapes.

The fuzzing itself (about 350 random chains of 2-4 of ~60 constructs with random targets,
methods, modes, ``round_to``, ``min_keep`` and re-fit options) ran outside the repository;
every chain it drew passed those checks. The failures it found are all in the channel
analysis' bookkeeping of *frozen* channels: which axis they sit on, and the reason the
report gives. Each is pinned below with the smallest graph that shows it (the two NHWC
Concat findings were strict xfails until session 46 mended them).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as H
from onnx import numpy_helper as NH

import onnx_eprune
from onnx_eprune.errors import EPruneError

HW = (16, 12)  # non-square on purpose: H and W are never confused
CALIB = np.random.default_rng(1).normal(size=(40, 3) + HW).astype(np.float32)
FRESH = {b: np.random.default_rng(100 + b).normal(size=(b, 3) + HW).astype(np.float32) for b in (1, 3)}
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# -- model building ------------------------------------------------------------------------------

class Net:
    """Nodes and initializers of a model under construction (every node named)."""

    def __init__(self, opset: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value, dtype=np.float32) -> str:
        self.count += 1
        name = f"k{self.count}"
        self.inits.append(NH.from_array(np.asarray(value, dtype), name))
        return name

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def node(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None, **attrs):
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(H.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride=1, group: int = 1, bias: bool = True,
             name: str | None = None, pads: list[int] | None = None) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        inputs = [x, self.const(w)] + ([self.const(self.rng.uniform(-0.1, 0.1, cout))] if bias else [])
        attrs = dict(kernel_shape=[k, k], pads=pads if pads is not None else [k // 2] * 4)
        if stride != 1:
            attrs["strides"] = [stride, stride] if isinstance(stride, int) else list(stride)
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", inputs, name=name, **attrs)

    def model(self, out: str, x_shape=("N", 3) + HW) -> onnx.ModelProto:
        graph = H.make_graph(self.nodes, "fuzz3", [H.make_tensor_value_info("x", TP.FLOAT, list(x_shape))],
                             [H.make_tensor_value_info(out, TP.FLOAT, ["N", 10])], initializer=self.inits)
        opsets = [H.make_opsetid("", self.opset)]
        model = H.make_model(graph, opset_imports=opsets)
        model.ir_version = max(4, H.find_min_ir_version_for(opsets))
        onnx.checker.check_model(model, full_check=True)
        return model


# Constructs: f(net, tensor, channels, h, w) -> (tensor, channels, h, w)

def res_concat_split(n, t, c, h, w):
    """Concat(conv 3, conv 5) + conv(t) (8) -> Split [3, 5] -> a conv on each -> Concat (swapped)."""
    a = n.node("Relu", [n.conv(t, c, 3, 3)])
    b = n.node("Relu", [n.conv(t, c, 5, 1)])
    s = n.node("Add", [n.node("Concat", [a, b], axis=1), n.conv(t, c, 8, 1)])
    p, q = n.node("Split", [s, n.i64([3, 5])], n_out=2, axis=1)
    return n.node("Concat", [n.node("Relu", [n.conv(q, 5, 4, 1)]), n.node("Relu", [n.conv(p, 3, 4, 3)])],
                  axis=1), 8, h, w


def res_split_add_concat(n, t, c, h, w):
    """Split t in halves, each half + a conv of the other (chained), Concat."""
    hc = c // 2
    p, q = n.node("Split", [t, n.i64([hc, hc])], n_out=2, axis=1)
    p2 = n.node("Add", [p, n.conv(q, hc, hc, 3)])
    q2 = n.node("Add", [q, n.conv(p2, hc, hc, 1)])
    return n.node("Relu", [n.node("Concat", [p2, q2], axis=1)]), c, h, w


def sum3_with_split(n, t, c, h, w):
    """Sum(t, Concat(conv(first half), conv(second half)), conv 1x1(t))."""
    hc = c // 2
    p, q = n.node("Split", [t, n.i64([hc, hc])], n_out=2, axis=1)
    cat = n.node("Concat", [n.conv(p, hc, hc, 3), n.conv(q, hc, hc, 3)], axis=1)
    return n.node("Relu", [n.node("Sum", [t, cat, n.conv(t, c, c, 1)])]), c, h, w


def swapped_concat_residual(n, t, c, h, w):
    """t + Concat(second half, first half): channel j coupled with j + C/2."""
    hc = c // 2
    p, q = n.node("Split", [t, n.i64([hc, hc])], n_out=2, axis=1)
    return n.node("Add", [t, n.node("Concat", [q, p], axis=1)]), c, h, w


def concat_self_residual(n, t, c, h, w):
    """t + Concat(a, a), a = conv(t) with C/2 outputs: each a-channel added twice."""
    a = n.conv(t, c, c // 2, 1)
    return n.node("Add", [t, n.node("Concat", [a, a], axis=1)]), c, h, w


def shuffle_flatten(n, t, c, h, w):
    """grouped conv (g=2) -> channel shuffle Reshape [-1, 2, 4, H, W] / Transpose / Reshape -> conv."""
    y = n.node("Relu", [n.conv(t, c, 8, 1, group=2)])
    y = n.node("Reshape", [y, n.i64([-1, 2, 4, h, w])])
    y = n.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = n.node("Reshape", [y, n.i64([-1, 8, h, w])])
    return n.node("Relu", [n.conv(y, 8, 8, 1)]), 8, h, w


def grouped_mult(n, t, c, h, w):
    """grouped conv g=2, C -> 2C, then a 1x1 conv."""
    y = n.node("Relu", [n.conv(t, c, 2 * c, 3, group=2)])
    return n.node("Relu", [n.conv(y, 2 * c, 8, 1)]), 8, h, w


def grouped_plus_mult(n, t, c, h, w):
    """depthwise channel multiplier (C -> 2C) + grouped conv (g=2, C -> 2C)."""
    return n.node("Relu", [n.node("Add", [n.conv(t, c, 2 * c, 3, group=c), n.conv(t, c, 2 * c, 1, group=2)])]), \
        2 * c, h, w


def dilated_dw_stride(n, t, c, h, w):
    """depthwise 3x3, dilation 2, strides (2, 1)."""
    y = n.node("Conv", [t, n.const(n.rng.normal(0, 0.3, (c, 1, 3, 3)))], kernel_shape=[3, 3], dilations=[2, 2],
               strides=[2, 1], pads=[2, 2, 2, 2], group=c)
    return n.node("Relu", [y]), c, (h + 1) // 2, w


def autopad_same(n, t, c, h, w):
    """3x2 kernel, auto_pad SAME_UPPER, stride 2."""
    y = n.node("Conv", [t, n.const(n.rng.normal(0, 0.3, (8, c, 3, 2)))], kernel_shape=[3, 2],
               auto_pad="SAME_UPPER", strides=[2, 2])
    return n.node("Relu", [y]), 8, (h + 1) // 2, (w + 1) // 2


def prelu_c11(n, t, c, h, w):
    return n.node("PRelu", [t, n.const(n.rng.uniform(0.05, 0.3, (c, 1, 1)))]), c, h, w


def acts_mix(n, t, c, h, w):
    """LeakyRelu -> conv -> Clip(-1, 4) -> conv -> HardSwish (opset >= 14)."""
    y = n.node("LeakyRelu", [t], alpha=0.05)
    y = n.node("Clip", [n.conv(y, c, c, 3), n.const(np.float32(-1.0)), n.const(np.float32(4.0))])
    return n.node("HardSwish", [n.conv(y, c, c, 1)]), c, h, w


def mish(n, t, c, h, w):  # opset >= 18
    return n.node("Mish", [n.conv(t, c, c, 3)]), c, h, w


def gelu_both(n, t, c, h, w):  # opset >= 20
    y = n.node("Gelu", [n.conv(t, c, c, 3)])
    return n.node("Gelu", [n.conv(y, c, c, 1)], approximate="tanh"), c, h, w


def elu_family(n, t, c, h, w):
    y = n.node("Elu", [n.conv(t, c, c, 1)])
    y = n.node("Selu", [n.conv(y, c, c, 1)])
    y = n.node("Celu", [n.node("Softplus", [n.conv(y, c, c, 1)])])
    return n.node("ThresholdedRelu", [y], alpha=0.1), c, h, w


def misc_unary(n, t, c, h, w):
    y = n.node("Shrink", [n.node("Neg", [n.node("Abs", [t])])], lambd=0.1, bias=0.05)
    y = n.node("Mul", [n.node("Sign", [y]), n.node("Sqrt", [n.node("Abs", [y])])])
    return n.node("Relu", [n.conv(y, c, c, 3)]), c, h, w


def where_gate(n, t, c, h, w):
    """Where(y > 0, y, 0.1 y): a LeakyRelu spelt with a gate (freezes y's producer)."""
    y = n.conv(t, c, c, 3)
    cond = n.node("Greater", [y, n.const(np.float32(0.0))])
    return n.node("Where", [cond, y, n.node("Mul", [y, n.const(np.float32(0.1))])]), c, h, w


def mul_spatial_gate(n, t, c, h, w):
    """t * sigmoid(conv(t) to 1 channel): spatial attention broadcast over the channels."""
    return n.node("Mul", [t, n.node("Sigmoid", [n.conv(t, c, 1, 3)])]), c, h, w


def div_branches(n, t, c, h, w):
    b = n.node("Add", [n.node("Abs", [n.conv(t, c, c, 3)]), n.const(np.float32(1.0))])
    return n.node("Div", [n.conv(t, c, c, 1), b]), c, h, w


def max_of_branches(n, t, c, h, w):
    return n.node("Max", [n.conv(t, c, c, 3), n.conv(t, c, c, 1)]), c, h, w


def pad_mid(n, t, c, h, w):
    """reflect Pad (1 on H, 2 on W) -> conv without padding (W grows by 2)."""
    y = n.node("Pad", [t, n.i64([0, 0, 1, 2, 0, 0, 1, 2])], mode="reflect")
    return n.node("Relu", [n.conv(y, c, c, 3, pads=[0, 0, 0, 0])]), c, h, w + 2


def pad_axes18(n, t, c, h, w):
    """edge Pad with an ``axes`` input (opset 18) -> conv without padding."""
    y = n.node("Pad", [t, n.i64([1, 1, 1, 1]), "", n.i64([2, 3])], mode="edge")
    return n.node("Relu", [n.conv(y, c, 8, 3, pads=[0, 0, 0, 0])]), 8, h, w


def resize_sizes(n, t, c, h, w):
    """Resize to explicit (H+3, W-2) sizes with ``axes`` (opset 18)."""
    y = n.node("Resize", [t, "", "", n.i64([h + 3, w - 2])], mode="nearest", axes=[2, 3])
    return n.node("Relu", [n.conv(y, c, c, 3)]), c, h + 3, w - 2


def convtranspose_mid(n, t, c, h, w):
    """MaxPool 2 -> ConvTranspose (stride 2, output_padding 1) back to H x W."""
    y = n.node("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    y = n.node("ConvTranspose", [y, n.const(n.rng.normal(0, 0.3, (c, 6, 3, 3))), n.const(np.zeros(6))],
               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    return n.node("Relu", [y]), 6, h, w


def dw_convtranspose_split(n, t, c, h, w):
    """depthwise ConvTranspose (stride 2) -> MaxPool -> Split halves -> conv on the first -> Concat."""
    y = n.node("ConvTranspose", [t, n.const(n.rng.normal(0, 0.3, (c, 1, 2, 2)))], kernel_shape=[2, 2],
               strides=[2, 2], group=c)
    y = n.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    p, q = n.node("Split", [y, n.i64([c // 2, c // 2])], n_out=2, axis=1)
    return n.node("Concat", [n.conv(p, c // 2, 4, 1), q], axis=1), 4 + c // 2, h, w


def slice_step(n, t, c, h, w):
    """even channels (step 2) and odd channels into two convs, Concat."""
    e = n.node("Slice", [t, n.i64([0]), n.i64([c]), n.i64([1]), n.i64([2])])
    o = n.node("Slice", [t, n.i64([1]), n.i64([c]), n.i64([1]), n.i64([2])])
    return n.node("Relu", [n.node("Concat", [n.conv(e, c // 2, 4, 3), n.conv(o, c // 2, 4, 1)], axis=1)]), 8, h, w


def expand_const(n, t, c, h, w):
    k = n.node("Expand", [n.const(n.rng.uniform(0.5, 1.5, (1, c, 1, 1))), n.i64([1, c, h, w])])
    return n.node("Mul", [t, k]), c, h, w


def tile_spatial(n, t, c, h, w):
    """Tile H twice -> conv with stride (2, 1)."""
    return n.node("Relu", [n.conv(n.node("Tile", [t, n.i64([1, 1, 2, 1])]), c, c, 3, stride=(2, 1))]), c, h, w


def einsum_scale(n, t, c, h, w):
    return n.node("Einsum", [t, n.const(n.rng.uniform(0.5, 1.5, c))], equation="nchw,c->nchw"), c, h, w


def groupnorm21(n, t, c, h, w):  # opset >= 21
    y = n.node("GroupNormalization", [t, n.const(n.rng.uniform(0.5, 1.5, c)), n.const(n.rng.uniform(-.1, .1, c))],
               num_groups=2)
    return n.node("Relu", [y]), c, h, w


def instnorm_after_concat(n, t, c, h, w):
    y = n.node("Concat", [n.conv(t, c, 4, 3), n.conv(t, c, 4, 1)], axis=1)
    return n.node("Relu", [n.node("InstanceNormalization", [y, n.const(np.ones(8)), n.const(np.zeros(8))])]), 8, h, w


def bn_after_split_concat(n, t, c, h, w):
    hc = c // 2
    p, q = n.node("Split", [t, n.i64([hc, hc])], n_out=2, axis=1)
    y = n.node("Concat", [n.conv(q, hc, 6, 3), p], axis=1)
    r, m = n.rng, hc + 6
    y = n.node("BatchNormalization", [y] + [n.const(v) for v in (r.uniform(.5, 1.5, m), r.uniform(-.1, .1, m),
                                                                    r.uniform(-.1, .1, m), r.uniform(.5, 1.5, m))])
    return n.node("Relu", [y]), m, h, w


def lppool(n, t, c, h, w):
    return n.node("LpPool", [n.node("Relu", [t])], kernel_shape=[2, 2], strides=[2, 2], p=2), c, h // 2, w // 2


def swap_hw(n, t, c, h, w):
    return n.node("Transpose", [t], perm=[0, 1, 3, 2]), c, w, h


def convnext(n, t, c, h, w):  # opset >= 20 (Gelu)
    """ConvNeXt: t + Transpose(MatMul(Gelu(MatMul(LayerNorm(Transpose(dw 7x7 (t)))))))."""
    y = n.node("Transpose", [n.conv(t, c, c, 7, group=c)], perm=[0, 2, 3, 1])
    y = n.node("LayerNormalization", [y, n.const(np.ones(c)), n.const(np.zeros(c))], axis=-1, epsilon=1e-6)
    y = n.node("Add", [n.node("MatMul", [y, n.const(n.rng.normal(0, 0.3, (c, 4 * c)))]), n.const(np.zeros(4 * c))])
    y = n.node("Gelu", [y])
    y = n.node("Add", [n.node("MatMul", [y, n.const(n.rng.normal(0, 0.1, (4 * c, c)))]), n.const(np.zeros(c))])
    return n.node("Add", [t, n.node("Transpose", [y], perm=[0, 3, 1, 2])]), c, h, w


# Heads: f(net, tensor, channels, h, w) -> the output "y" [N, 10]

def head_gap(n, t, c, h, w):
    f = n.node("Flatten", [n.node("GlobalAveragePool", [t])])
    return n.node("Gemm", [f, n.const(n.rng.normal(0, 0.3, (10, c))), n.const(np.zeros(10))], name="y", transB=1)


def head_flatten(n, t, c, h, w):
    """AveragePool 4 -> Flatten of a non-square map (C x H/4 x W/4) -> Gemm without transB."""
    f = n.node("Flatten", [n.node("AveragePool", [t], kernel_shape=[4, 4], strides=[4, 4])])
    return n.node("Gemm", [f, n.const(n.rng.normal(0, 0.1, (c * (h // 4) * (w // 4), 10)))], name="y")


def head_nhwc_flatten(n, t, c, h, w):
    """the same with the map transposed to NHWC first (features ordered h, w, c)."""
    p = n.node("Transpose", [n.node("AveragePool", [t], kernel_shape=[4, 4], strides=[4, 4])], perm=[0, 2, 3, 1])
    return n.node("Gemm", [n.node("Flatten", [p]), n.const(n.rng.normal(0, 0.1, (10, c * (h // 4) * (w // 4)))),
                           n.const(np.zeros(10))], name="y", transB=1)


def head_swap_flatten(n, t, c, h, w):
    """the same with H and W swapped first."""
    p = n.node("Transpose", [n.node("AveragePool", [t], kernel_shape=[4, 4], strides=[4, 4])], perm=[0, 1, 3, 2])
    return n.node("Gemm", [n.node("Flatten", [p]), n.const(n.rng.normal(0, 0.1, (10, c * (h // 4) * (w // 4))))],
                  name="y", transB=1)


def head_reducemean(n, t, c, h, w):
    r = n.node("ReduceMean", [t, n.i64([2, 3])], keepdims=0) if n.opset >= 18 else \
        n.node("ReduceMean", [t], axes=[2, 3], keepdims=0)
    return n.node("MatMul", [r, n.const(n.rng.normal(0, 0.3, (c, 10)))], name="y")


def head_reducemax(n, t, c, h, w):
    r = n.node("ReduceMax", [t, n.i64([-1, -2])], keepdims=1) if n.opset >= 18 else \
        n.node("ReduceMax", [t], axes=[-1, -2], keepdims=1)
    return n.node("Gemm", [n.node("Flatten", [r]), n.const(n.rng.normal(0, 0.3, (10, c))), n.const(np.zeros(10))],
                  name="y", transB=1)


def head_reduce_reshape(n, t, c, h, w):
    r = n.node("ReduceMean", [t, n.i64([2, 3])], keepdims=1) if n.opset >= 18 else \
        n.node("ReduceMean", [t], axes=[2, 3], keepdims=1)
    return n.node("MatMul", [n.node("Reshape", [r, n.i64([0, -1])]), n.const(n.rng.normal(0, 0.3, (c, 10)))],
                  name="y")


def head_globalmax(n, t, c, h, w):
    f = n.node("Flatten", [n.node("GlobalMaxPool", [t])])
    return n.node("Gemm", [f, n.const(n.rng.normal(0, 0.3, (10, c)))], name="y", transB=1)


def chain(constructs, head, opset: int) -> onnx.ModelProto:
    """x [N, 3, 16, 12] -> stem conv (3 -> 8) -> Relu -> constructs... -> head -> y [N, 10]."""
    n = Net(opset)
    t, c, h, w = n.node("Relu", [n.conv("x", 3, 8, 3, name="stem")]), 8, *HW
    for construct in constructs:
        t, c, h, w = construct(n, t, c, h, w)
    return n.model(head(n, t, c, h, w))


def legacy(opset: int) -> onnx.ModelProto:
    """Old-opset forms: Upsample (scales attribute at 7, input at 9) -> conv -> Pad and Clip with
    attributes -> Split with a ``split`` attribute -> two convs -> Concat -> GAP head."""
    n = Net(opset)
    t = n.node("Relu", [n.conv("x", 3, 8, 3, name="stem")])
    if opset < 9:
        t = n.node("Upsample", [t], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest")
    else:
        t = n.node("Upsample", [t, n.const([1, 1, 2, 2])], mode="nearest")
    t = n.node("Relu", [n.conv(t, 8, 8, 3, stride=2)])
    t = n.node("Pad", [t], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")
    t = n.node("Clip", [n.conv(t, 8, 8, 3, pads=[0, 0, 0, 0])], min=0.0, max=6.0)
    a, b = n.node("Split", [t], n_out=2, axis=1, split=[3, 5])
    t = n.node("Concat", [n.conv(a, 3, 4, 1), n.conv(b, 5, 4, 1)], axis=1)
    return n.model(head_gap(n, t, 8, *HW))


# -- independent checks ---------------------------------------------------------------------------

def run(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    if names is not None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        del model.graph.output[:]
        model.graph.output.extend([onnx.ValueInfoProto(name=k) for k in names])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [o.name for o in session.get_outputs()]
    return dict(zip(outs, session.run(outs, {"x": x})))


def count(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, MACs per sample) of the Conv / ConvTranspose / Gemm / MatMul layers with a
    constant weight, from the tensors' shapes in a real run on one sample: a Conv's weight is
    used at every output position, a ConvTranspose's at every input position, a Gemm's / MatMul's
    once per output row."""
    values = {i.name: NH.to_array(i) for i in model.graph.initializer}
    names = list(dict.fromkeys(o for node in model.graph.node for o in node.output if o))
    shapes = {k: v.shape for k, v in run(model, FRESH[1], names).items()}
    params = macs = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED or node.input[1] not in values:
            continue
        params += sum(values[t].size for t in node.input[1:3] if t in values)
        out = shapes[node.output[0]]
        uses = (math.prod(out[2:]) if node.op_type == "Conv" else
                math.prod(shapes[node.input[0]][2:]) if node.op_type == "ConvTranspose" else math.prod(out[:-1]))
        macs += values[node.input[1]].size * uses
    return params, macs


def check_pruned(model: onnx.ModelProto, options: dict) -> onnx_eprune.PruneResult | None:
    """Prune; the result must pass the checker, run at batch 1 and 3, reproduce the original at
    keep_ratio 1.0 and report the counts of the files. None for a target out of reach."""
    try:
        result = onnx_eprune.prune(model, CALIB, device="cpu", **options)
    except EPruneError as exc:  # a clear refusal of an unreachable target is fine; nothing else
        assert "out of reach" in str(exc) and "keep_ratio" not in options, exc
        return None
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    for x in FRESH.values():
        ref, got = run(model, x)["y"], run(pruned, x)["y"]
        assert got.shape == ref.shape == (len(x), 10) and np.isfinite(got).all()
        if options.get("keep_ratio") == 1.0:
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    (pb, mb), (pa, ma) = count(model), count(pruned)
    report = result.report
    assert (report["params"]["before"], report["params"]["after"]) == (pb, pa)
    assert (report["macs"]["before"], report["macs"]["after"]) == (mb, ma)
    assert report["params"]["removed_fraction"] == pytest.approx(1 - pa / pb, abs=1e-6)
    assert report["macs"]["removed_fraction"] == pytest.approx(1 - ma / mb, abs=1e-6)
    return result


def group_of(report: dict, producer: str) -> dict:
    return next(g for g in report["groups"] if producer in g["producers"])


# -- the chains that pass -------------------------------------------------------------------------

CHAINS = {
    "res_concat_split+prelu/flatten_gemm": ((res_concat_split, prelu_c11), head_flatten, 13),
    "res_split_add_concat+mish/reducemean_matmul": ((res_split_add_concat, mish), head_reducemean, 18),
    "shuffle+gelu/reducemax": ((shuffle_flatten, gelu_both), head_reducemax, 20),
    "grouped_mult+where_gate/nhwc_flatten": ((grouped_mult, where_gate), head_nhwc_flatten, 17),
    "sum3_split+leaky_clip_hardswish/gap": ((sum3_with_split, acts_mix), head_gap, 14),
    "pad+convtranspose/flatten_gemm": ((pad_mid, convtranspose_mid), head_flatten, 13),
    "resize_sizes+slice_step/globalmax": ((resize_sizes, slice_step), head_globalmax, 18),
    "expand+einsum+tile/reduce_reshape": ((expand_const, einsum_scale, tile_spatial), head_reduce_reshape, 18),
    "dilated_dw+autopad+swapped_residual/flatten": ((dilated_dw_stride, autopad_same, swapped_concat_residual),
                                                    head_flatten, 17),
    "concat_self+grouped_plus_mult+instnorm/gap": ((concat_self_residual, grouped_plus_mult, instnorm_after_concat),
                                                   head_gap, 13),
    "dw_convtranspose_split+bn_split_concat/nhwc_flatten": ((dw_convtranspose_split, bn_after_split_concat),
                                                            head_nhwc_flatten, 17),
    "groupnorm+pad_axes+max/reducemean": ((groupnorm21, pad_axes18, max_of_branches), head_reducemean, 21),
    "div+lppool+elu_family/gap": ((div_branches, lppool, elu_family), head_gap, 17),
    "spatial_gate+misc_unary+swap_hw/swap_flatten": ((mul_spatial_gate, misc_unary, swap_hw), head_swap_flatten, 13),
    "convnext+res_concat_split/reducemax": ((convnext, res_concat_split), head_reducemax, 20),
}
OPTIONS = {
    "keep_all": dict(keep_ratio=1.0),
    "sparsity_seq": dict(sparsity=0.3),
    "flops_oneshot_lasso": dict(flops_reduction=0.3, mode="oneshot", method="lasso"),
    "keep_oneshot_thinet_round2": dict(keep_ratio=0.5, mode="oneshot", method="thinet", round_to=2),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_chained_constructs_prune_to_valid_models_with_true_counts(name: str) -> None:
    """At every target of OPTIONS: checker-valid, runs at batch 1 and 3, the same function at
    keep_ratio 1.0, the report's parameters and MACs those of the two files; a target below
    1.0 really removes parameters."""
    constructs, head, opset = CHAINS[name]
    model = chain(constructs, head, opset)
    for option, options in OPTIONS.items():
        result = check_pruned(model, options)
        if result is not None and option != "keep_all":
            assert result.report["prunable_groups"] >= 1, option
            assert result.report["params"]["after"] < result.report["params"]["before"], option


@pytest.mark.parametrize("opset", [7, 9])
def test_legacy_upsample_pad_clip_split_attributes(opset: int) -> None:
    """Upsample, Pad / Clip / Split with their pre-opset-11 attributes: every stage prunes."""
    model = legacy(opset)
    for options in (dict(keep_ratio=1.0), dict(sparsity=0.3), dict(keep_ratio=0.5, mode="oneshot", method="l1")):
        check_pruned(model, options)
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    assert result.report["prunable_groups"] >= 4   # stem, the strided conv, the one after Pad, the Concat's


@pytest.mark.parametrize("name", ["res_concat_split+prelu/flatten_gemm", "pad+convtranspose/flatten_gemm",
                                  "dw_convtranspose_split+bn_split_concat/nhwc_flatten"])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_keep_ratio_one_gives_back_the_same_graph(name: str, mode: str) -> None:
    """keep_ratio 1.0 removes nothing and so rewrites nothing: the graph is the input's, bit for
    bit (only the provenance metadata is added)."""
    constructs, head, opset = CHAINS[name]
    model = chain(constructs, head, opset)
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=1.0, mode=mode)
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    assert "onnx_eprune" in {p.key for p in result.model.metadata_props}


def test_swapped_halves_residual_keeps_coupled_channels_together() -> None:
    """t + Concat(t[4:], t[:4]) adds channel j to channel j+4: a kept set must be closed under
    that pairing, or the pruned Add would pair other channels. So the stem keeps both channels
    of every kept pair, and without a re-fit the pruned model computes exactly the original
    with the removed pairs' stem rows (weights and biases) zeroed."""
    model = chain((swapped_concat_residual,), head_gap, 17)
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1", reconstruct=False)
    kept = group_of(result.report, "stem")["kept_channels"]
    stem = next(i for i in result.model.graph.initializer if i.name == model.graph.node[0].input[1])
    assert stem.dims[0] == 2 * len(kept)  # every kept pair: both of its channels
    x = FRESH[3]
    # the pruned model equals the original with the removed pairs' channels zeroed in the stem
    removed = sorted(set(range(4)) - set(kept))
    zeroed = onnx.ModelProto.FromString(model.SerializeToString())
    for init in zeroed.graph.initializer:
        if init.name in model.graph.node[0].input[1:]:
            value = NH.to_array(init).copy()
            value[removed + [r + 4 for r in removed]] = 0.0
            init.CopyFrom(NH.from_array(value, init.name))
    np.testing.assert_allclose(run(result.model, x)["y"], run(zeroed, x)["y"], rtol=1e-4, atol=1e-5)


# -- found bugs -------------------------------------------------------------------------------------

def concat_with_nhwc_layernorm(op: str) -> onnx.ModelProto:
    """stem -> Relu -> t; conv_a (t, 8 -> 4) -> Relu; b = Transpose(OP over the channels in NHWC
    (t)) back to NCHW; Concat(a, b) on axis 1 -> conv_c (12 -> 8) -> GAP head. OP is
    LayerNormalization on the last axis (ViT/ConvNeXt style) or, for comparison, Softmax on
    axis 1 in NCHW (no Transposes)."""
    n = Net(17)
    t = n.node("Relu", [n.conv("x", 3, 8, 3, name="stem")])
    a = n.node("Relu", [n.conv(t, 8, 4, 3, name="conv_a")])
    if op == "LayerNormalization":
        b = n.node("Transpose", [t], perm=[0, 2, 3, 1])
        b = n.node("LayerNormalization", [b, n.const(np.ones(8)), n.const(np.zeros(8))], axis=-1)
        b = n.node("Transpose", [b], perm=[0, 3, 1, 2])
    else:
        b = n.node("Softmax", [t], axis=1)
    y = n.node("Relu", [n.conv(n.node("Concat", [a, b], axis=1), 12, 8, 1, name="conv_c")])
    return n.model(head_gap(n, y, 8, *HW))


def test_concat_with_an_nchw_opaque_branch_keeps_the_other_branch_prunable() -> None:
    """The reference for the xfail below: with Softmax over the channels in NCHW the opaque
    branch's channels are frozen and conv_a, concatenated beside them, stays prunable."""
    result = check_pruned(concat_with_nhwc_layernorm("Softmax"), dict(keep_ratio=0.5, method="l1"))
    assert group_of(result.report, "conv_a")["frozen"] is None
    assert group_of(result.report, "conv_a")["channels_after"] == 2


def test_concat_with_an_nhwc_opaque_branch_keeps_the_other_branch_prunable() -> None:
    """As with the NCHW Softmax above, conv_a stays prunable (the LayerNormalization branch's
    channels are frozen, conv_a's are simply concatenated beside them), and no group gives the
    false reason 'Concat along an axis other than channels' (the Concat is on axis 1, where
    both operands hold their channels).

    Once conv_a was frozen with that reason (graph/analysis.py): ``freeze_all`` gave the output
    of the op it does not understand a fresh frozen space on the default axis 1, although its
    input held the channels on axis 3 (NHWC); the Transpose back moved that 'channel axis' to
    2 and ``op_Concat`` saw operands with channel axes {1, 2}. An opaque output of the same
    shape as its one input now keeps the input's channel axis."""
    model = concat_with_nhwc_layernorm("LayerNormalization")
    result = check_pruned(model, dict(keep_ratio=0.5, method="l1"))
    reasons = [g["frozen"] or "" for g in result.report["groups"]]
    assert not any("axis other than channels" in r for r in reasons), reasons
    assert group_of(result.report, "conv_a")["frozen"] is None
    assert group_of(result.report, "conv_a")["channels_after"] == 2


def test_an_nhwc_opaque_output_keeps_its_channel_axis() -> None:
    """stem -> Relu -> t; b = Transpose(LayerNormalization over NHWC's last axis (t)) back to
    NCHW; b + side (a 1x1 conv of t) -> conv_b. The LayerNormalization's output holds its
    channels on axis 3 as its input does, so after the Transpose back the Add aligns them with
    side's: side is frozen for the true cause (it is added to channels the LayerNormalization
    makes), and the Add's output is the same group. Once the opaque output was given axis 1 (H),
    the Add found operands on axes {2, 1} and froze side with 'Add of tensors whose channels
    cannot be followed'."""
    n = Net(17)
    t = n.node("Relu", [n.conv("x", 3, 8, 3, name="stem")])
    b = n.node("Transpose", [t], perm=[0, 2, 3, 1])
    b = n.node("LayerNormalization", [b, n.const(np.ones(8)), n.const(np.zeros(8))], axis=-1)
    b = n.node("Add", [n.node("Transpose", [b], perm=[0, 3, 1, 2]), n.conv(t, 8, 8, 1, name="side")])
    y = n.node("Relu", [n.conv(b, 8, 6, 3, name="conv_b")])
    result = check_pruned(n.model(head_gap(n, y, 6, *HW)), dict(keep_ratio=0.5, method="l1"))
    reasons = [g["frozen"] for g in result.report["groups"] if g["frozen"]]
    assert not any("cannot be followed" in r for r in reasons), reasons
    assert "LayerNormalization" in group_of(result.report, "side")["frozen"]
    assert group_of(result.report, "conv_b")["channels_after"] == 3


def nhwc_input_concat() -> onnx.ModelProto:
    """A TensorFlow-style model on an NHWC input x [N, 16, 12, 3]: conv_a (3 -> 8) between
    Transposes, Concat with the input image on axis 3 (NHWC, as tf2onnx writes a U-Net's skip
    of the image), Transpose to NCHW, conv_b (11 -> 8), GAP head."""
    n = Net(17)
    xt = n.node("Transpose", ["x"], perm=[0, 3, 1, 2])
    a = n.node("Transpose", [n.node("Relu", [n.conv(xt, 3, 8, 3, name="conv_a")])], perm=[0, 2, 3, 1])
    cat = n.node("Transpose", [n.node("Concat", [a, "x"], axis=3)], perm=[0, 3, 1, 2])
    y = n.node("Relu", [n.conv(cat, 11, 8, 3, name="conv_b")])
    return n.model(head_gap(n, y, 8, *HW), x_shape=("N",) + HW + (3,))


def test_nhwc_concat_with_the_input_image_keeps_the_conv_prunable() -> None:
    """conv_a's channels are followed through the Transposes to the NHWC Concat on axis 3
    (README: TensorFlow exports, 'Concat on axis 3', are followed); the input image's 3
    channels are frozen beside them, and conv_a stays prunable, as with the same Concat of the
    input in NCHW (``Concat([conv_a, Transpose(x)], axis=1)``).

    Once conv_a was frozen with 'Concat along an axis other than channels', a false reason:
    ``run`` creates a graph input's layout on the default channel axis 1 (for an NHWC input
    that is H), so ``op_Concat`` found channel axes {3, 1} among its operands. An operand whose
    channels are all frozen anyway (a graph input, an opaque output) now joins as frozen
    channels along the Concat's axis."""
    model = nhwc_input_concat()
    calib = np.random.default_rng(0).normal(size=(40,) + HW + (3,)).astype(np.float32)
    groups = onnx_eprune.inspect(model, calib[:1])["groups"]
    conv_a = next(g for g in groups if "conv_a" in g["producers"])
    assert conv_a["frozen"] is None, conv_a["frozen"]


def multiplier_split(n: Net, t: str) -> str:
    """depthwise channel multiplier (8 -> 16) -> Split [5, 11] -> conv on each -> Concat."""
    y = n.node("Relu", [n.conv(t, 8, 16, 3, group=8, name="dw")])
    p, q = n.node("Split", [y, n.i64([5, 11])], n_out=2, axis=1)
    return n.node("Concat", [n.conv(p, 5, 4, 1), n.conv(q, 11, 4, 3)], axis=1)


def ghost_multiplier(n: Net, t: str) -> str:
    """GhostNet with a multiplier: p = conv (8 -> 4); Concat(p, depthwise x2 (p)) (12) + conv (8 -> 12)."""
    p = n.node("Relu", [n.conv(t, 8, 4, 1, name="primary")])
    cat = n.node("Concat", [p, n.conv(p, 4, 8, 3, group=4, name="cheap")], axis=1)
    y = n.node("Add", [cat, n.conv(t, 8, 12, 1, name="shortcut")])
    return n.node("Relu", [n.conv(y, 12, 8, 1)])


@pytest.mark.parametrize("construct, false_words", [(multiplier_split, "unknown sizes"),
                                                    (ghost_multiplier, "flattened")],
                         ids=["split_after_multiplier", "ghost_concat_with_multiplier"])
def test_frozen_reason_behind_a_channel_multiplier_is_true(construct, false_words: str) -> None:
    """Where a channel multiplier's outputs (depthwise conv, group = C, 2C outputs) meet a
    Split or a Concat that the analysis does not follow, the channels freeze (a valid model,
    as it is) with a reason that says what happened: ``inspect`` exists to tell the user why
    a group is frozen. Once the Split of constant sizes [5, 11] read 'Split of channels with
    unknown sizes', and the GhostNet Concat of two 16 x 12 maps 'Concat of flattened tensors
    with different spatial sizes' (graph/analysis.py tested ``seg.factor != 1``, which a
    channel multiplier sets as well as a Flatten, and named the Flatten case only)."""
    n = Net(17)
    t = n.node("Relu", [n.conv("x", 3, 8, 3, name="stem")])
    model = n.model(head_gap(n, construct(n, t), 8, *HW))
    result = check_pruned(model, dict(keep_ratio=0.5, method="l1"))   # valid, as it is
    reasons = [g["frozen"] for g in result.report["groups"] if g["frozen"]]
    assert not any(false_words in r for r in reasons), reasons
