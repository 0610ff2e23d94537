"""Tiny ONNX CNNs built with ``onnx.helper`` for the graph and pruning tests.

Every builder returns an ``onnx.ModelProto`` with one float32 input ``x`` of shape
``[N, 3, 16, 16]`` (``N`` dynamic) and the output ``y`` of shape ``[N, 10]`` (plus extra
outputs where the builder says so). Weights are drawn from a seeded numpy Generator, so the
same arguments always give the same bytes.

``EXPECTED`` describes, per builder, the channel groups the analysis should find; the
tests in ``test_groups.py`` check it and ``test_prune_small.py`` uses ``ALL_BUILDERS``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT = "x"
OUTPUT = "y"
IN_CHANNELS = 3
HW = 16
CLASSES = 10


class _Builder:
    """Collects nodes and weights; weights become initializers or Constant nodes."""

    def __init__(self, seed: int = 0, constants: bool = False):
        self.rng = np.random.default_rng(seed)
        self.constants = constants
        self.nodes: list[onnx.NodeProto] = []
        self.const_nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.asarray(value), name)
        if self.constants:
            self.const_nodes.append(helper.make_node("Constant", [], [name], value=tensor, name=f"const_{name}"))
        else:
            self.inits.append(tensor)
        return name

    def weight(self, name: str, shape, fan_in: int) -> str:
        w = self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape).astype(np.float32)
        return self.const(name, w)

    def vector(self, name: str, n: int, low: float = -0.1, high: float = 0.1) -> str:
        return self.const(name, self.rng.uniform(low, high, size=n).astype(np.float32))

    def node(self, op: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs) -> str:
        name = name or self.name(op.lower())
        outs = [name] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    # -- layers ------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, group: int = 1,
             name: str | None = None) -> str:
        name = name or self.name("conv")
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k), cin // group * k * k)
        inputs = [x, w] + ([self.vector(f"{name}.bias", cout)] if bias else [])
        attrs = {"pads": [k // 2] * 4, "kernel_shape": [k, k]}
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", inputs, name=name, **attrs)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self.name("bn")
        scale = self.vector(f"{name}.scale", c, 0.5, 1.5)
        shift = self.vector(f"{name}.shift", c)
        mean = self.vector(f"{name}.mean", c)
        var = self.vector(f"{name}.var", c, 0.5, 1.5)
        return self.node("BatchNormalization", [x, scale, shift, mean, var], name=name, epsilon=1e-5)

    def conv_block(self, x: str, cin: int, cout: int, folded: bool) -> str:
        """Conv (+ bias when folded, + BatchNormalization when not) -> Relu."""
        y = self.conv(x, cin, cout, bias=folded)
        if not folded:
            y = self.bn(y, cout)
        return self.node("Relu", [y])

    def gemm(self, x: str, d: int, m: int, trans_b: bool = True, alpha: float = 1.0, beta: float = 1.0,
             bias: bool = True, name: str | None = None) -> str:
        name = name or self.name("gemm")
        shape = (m, d) if trans_b else (d, m)
        w = self.weight(f"{name}.weight", shape, d)
        inputs = [x, w] + ([self.vector(f"{name}.bias", m)] if bias else [])
        attrs = {}
        if trans_b:
            attrs["transB"] = 1
        if alpha != 1.0:
            attrs["alpha"] = alpha
        if beta != 1.0:
            attrs["beta"] = beta
        return self.node("Gemm", inputs, name=name, **attrs)

    def hard_swish(self, x: str) -> str:
        """``x * clip(x + 3, 0, 6) / 6`` from primitives, as older exporters write it."""
        t = self.node("Clip", [self.node("Add", [x, self.const("three", np.array(3.0, np.float32))]),
                               self.const("lo", np.array(0.0, np.float32)), self.const("hi", np.array(6.0, np.float32))])
        return self.node("Div", [self.node("Mul", [x, t]), self.const("six", np.array(6.0, np.float32))])

    def pool(self, x: str) -> str:
        return self.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def gap_flatten(self, x: str) -> str:
        return self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)

    # -- the model ---------------------------------------------------------------------
    def build(self, head: str, extra_outputs: list[tuple[str, list]] | None = None,
              opset: int = OPSET, graph_name: str = "tiny") -> onnx.ModelProto:
        inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", IN_CHANNELS, HW, HW])
        outs = [helper.make_tensor_value_info(head, TensorProto.FLOAT, ["N", CLASSES])]
        for name, shape in extra_outputs or []:
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        graph = helper.make_graph(self.const_nodes + self.nodes, graph_name, [inp], outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="onnx-eprune-tests")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def _classifier_head(b: _Builder, x: str, d: int, hidden: int) -> str:
    """Gemm(d -> hidden) -> Relu -> Gemm(hidden -> 10) named ``y``."""
    h = b.node("Relu", [b.gemm(x, d, hidden)])
    return b.gemm(h, hidden, CLASSES, name=OUTPUT)


def conv_bn_relu_pool_flatten_gemm(folded: bool = True, widths=(8, 16, 32), flatten: str = "flatten",
                                   constants: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv(3->w0) [+BN] -> Relu -> MaxPool -> Conv(w0->w1) [+BN] -> Relu -> MaxPool
    -> Flatten -> Gemm(w1*4*4 -> w2) -> Relu -> Gemm(w2 -> 10).

    ``flatten``: "flatten" (a Flatten op), "reshape0" (Reshape by the constant [0, -1]) or
    "reshape_explicit" (Reshape by [-1, w1*16], whose feature count must shrink on pruning).
    ``constants``: store every weight (and the Reshape target) as a Constant node.
    """
    w0, w1, w2 = widths
    b = _Builder(seed, constants)
    h = b.pool(b.conv_block(INPUT, IN_CHANNELS, w0, folded))
    h = b.pool(b.conv_block(h, w0, w1, folded))
    features = w1 * (HW // 4) ** 2
    if flatten == "flatten":
        h = b.node("Flatten", [h], axis=1)
    elif flatten == "reshape0":
        h = b.node("Reshape", [h, b.const("flat_shape", np.array([0, -1], np.int64))])
    elif flatten == "reshape_explicit":
        h = b.node("Reshape", [h, b.const("flat_shape", np.array([-1, features], np.int64))])
    else:
        raise ValueError(flatten)
    return b.build(_classifier_head(b, h, features, w2))


def cnn_reshape(explicit: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The CNN with a Reshape instead of Flatten: [0, -1] or the explicit [-1, 256]."""
    return conv_bn_relu_pool_flatten_gemm(True, flatten="reshape_explicit" if explicit else "reshape0", seed=seed)


def cnn_constant_weights(seed: int = 0) -> onnx.ModelProto:
    """The (BN, Reshape [0, -1]) CNN with every weight in a Constant node."""
    return conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=True, seed=seed)


def residual(width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """stem Conv -> Relu (r) -> Conv a -> Relu -> Conv b -> Add(b, r) -> Relu -> GAP
    -> Flatten -> Gemm(width -> 10). The stem and conv b outputs form one group."""
    b = _Builder(seed)
    r = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="stem")])
    h = b.node("Relu", [b.conv(r, width, width, name="conv_a")])
    h = b.conv(h, width, width, name="conv_b")
    h = b.node("Relu", [b.node("Add", [h, r], name="add")])
    h = b.gap_flatten(h)
    return b.build(b.gemm(h, width, CLASSES, name=OUTPUT))


def depthwise(width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Conv(3->w) -> Relu -> depthwise Conv(w, group=w, with bias) -> Relu -> Conv(w->2w)
    -> Relu -> GAP -> Flatten -> Gemm(2w -> 10)."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv1")])
    h = b.node("Relu", [b.conv(h, width, width, group=width, name="dw")])
    h = b.node("Relu", [b.conv(h, width, 2 * width, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 2 * width, CLASSES, name=OUTPUT))


def grouped(width: int = 16, groups: int = 4, out_width: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """ResNeXt's pattern: Conv(3->w) -> Relu -> grouped Conv(w -> out_width, ``groups``
    groups) -> Relu -> Conv(-> 2w) -> Relu -> GAP -> Flatten -> Gemm(2w -> 10). With as
    many outputs as inputs (the default) the grouped Conv passes its input's channels through,
    a whole conv group at a time."""
    out_width = out_width or width
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv1")])
    h = b.node("Relu", [b.conv(h, width, out_width, group=groups, name="grouped")])
    h = b.node("Relu", [b.conv(h, out_width, 2 * width, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 2 * width, CLASSES, name=OUTPUT))


def depthwise_multiplier(width: int = 6, multiplier: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A depthwise Conv with a channel multiplier (Keras' ``depth_multiplier``, FastViT's
    expansions): Conv(3->w) -> Relu -> depthwise Conv(w -> m*w, group=w, with bias) -> BN
    -> Relu -> Conv(m*w -> 16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10). Input channel c
    of the depthwise Conv writes its outputs m*c .. m*c + m - 1."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv1")])
    h = b.node("Relu", [b.bn(b.conv(h, width, multiplier * width, group=width, name="dw"), multiplier * width,
                             name="dw_bn")])
    h = b.node("Relu", [b.conv(h, multiplier * width, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def multiplier_sum(width: int = 4, seed: int = 0) -> onnx.ModelProto:
    """FastViT's downsampling: outputs of channel multipliers added to ordinary Convs'.

    conv1(3->w) -> Relu (x); d = dw7(x) + dw3(x), depthwise Convs writing 2 outputs per
    input (w -> 2w, group w); e = Relu(BN(d) + Conv1x1(d, 2w -> 2w)): the 1x1 Conv's
    outputs go two rows per channel of x; f = Relu(dwm(e) + Conv(e, 2w -> 4w)), a depthwise
    multiplier of 2 on e (four outputs per channel of x) added to a Conv whose outputs go
    four rows per channel; a layer scale (a per-channel constant Mul) -> GAP -> Flatten ->
    Gemm(4w -> 10). Every tensor after conv1 holds its channels 2 or 4 entries each.
    """
    b = _Builder(seed)
    x = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv1")])
    d = b.node("Add", [b.conv(x, width, 2 * width, k=7, group=width, name="dw7"),
                       b.conv(x, width, 2 * width, k=3, group=width, name="dw3")], name="reparam")
    e = b.node("Relu", [b.node("Add", [b.bn(d, 2 * width, name="identity_bn"),
                                       b.conv(d, 2 * width, 2 * width, k=1, name="pw")], name="block")])
    f = b.node("Add", [b.conv(e, 2 * width, 4 * width, group=2 * width, name="dwm"),
                       b.conv(e, 2 * width, 4 * width, name="wide")], name="expand")
    scale = b.const("layer_scale", b.rng.uniform(0.5, 1.5, (4 * width, 1, 1)).astype(np.float32))
    f = b.node("Mul", [b.node("Relu", [f]), scale], name="scale")
    return b.build(b.gemm(b.gap_flatten(f), 4 * width, CLASSES, name=OUTPUT))


def multiplier_sum_concat(seed: int = 0) -> onnx.ModelProto:
    """Where a multiplier's blocks would freeze more than they free: conv1(3->4) -> Relu
    (x); d = depthwise multiplier Conv(x, 4 -> 8, group 4); p = Conv1x1(d, 8 -> 8);
    e = Relu(d + p); u = Conv(e, 8 -> 24); Concat(p, u) -> Conv(32 -> 16) -> Relu -> GAP ->
    Flatten -> Gemm(16 -> 10). Blocking p's rows two per channel of conv1 (to couple it
    with d) would put a tensor of 2 entries per channel beside u's single ones in the
    Concat, which freezes both, u's 24 channels included; without the blocks, conv1, d
    and p stay frozen (the sum) and u's channels prune."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 4, name="conv1")])
    d = b.conv(x, 4, 8, group=4, name="dw")
    p = b.conv(d, 8, 8, k=1, name="pw")
    e = b.node("Relu", [b.node("Add", [d, p], name="sum")])
    u = b.conv(e, 8, 24, name="conv_u")
    h = b.node("Relu", [b.conv(b.node("Concat", [p, u], name="join", axis=1), 32, 16, name="conv_out")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def flatten_bias(seed: int = 0) -> onnx.ModelProto:
    """A per-feature constant after a Flatten: Conv(3->4) -> Relu -> MaxPool -> Flatten
    (4 x 8 x 8 = 256 features, 64 per channel) -> Add([256] constant) -> Gemm(256 -> 10)."""
    b = _Builder(seed)
    h = b.node("Flatten", [b.pool(b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 4, name="conv1")]))], axis=1)
    h = b.node("Add", [h, b.vector("feature_bias", 4 * (HW // 2) ** 2)], name="feature_add")
    return b.build(b.gemm(h, 4 * (HW // 2) ** 2, CLASSES, name=OUTPUT))


def computed_pads(channels: bool = False, seed: int = 0) -> onnx.ModelProto:
    """TensorFlow-style "same" padding, its pads computed from the input's size (timm's
    ``tf_`` models, NFNets): Conv(3->8) -> Relu (h); one = H / H from ``Shape(h)[2:4]``;
    Pad(h, Concat([0, 0], one, [0, 0], one)) pads H and W at their end (with ``channels``,
    ``Concat([0], one[:1], [0, 0], [0], one[:1], [0, 0])`` pads the channel axis instead,
    to 10 channels) -> Conv(-> 16, 3x3 without padding) -> Relu -> GAP -> Flatten ->
    Gemm(16 -> 10)."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    hw = b.node("Slice", [b.node("Shape", [h]), b.const("two", np.array([2])), b.const("four", np.array([4]))])
    one = b.node("Div", [hw, hw])
    zeros = b.const("zeros", np.array([0, 0]))
    if channels:
        zero, first = b.const("zero", np.array([0])), b.node("Slice", [one, b.const("start", np.array([0])),
                                                                        b.const("stop", np.array([1]))])
        pads = b.node("Concat", [zero, first, zeros, zero, first, zeros], axis=0)
    else:
        pads = b.node("Concat", [zeros, one, zeros, one], axis=0)
    h = b.node("Pad", [h, pads], name="same_pad")
    width = 10 if channels else 8
    w = b.weight("conv2.weight", (16, width, 3, 3), width * 9)
    h = b.node("Relu", [b.node("Conv", [h, w, b.vector("conv2.bias", 16)], name="conv2", kernel_shape=[3, 3])])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def depthwise_upsample(width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Conv(3->w) -> Relu -> depthwise ConvTranspose(w, 4x4, stride 2, pads 1: a learned
    bilinear upsampling) -> Conv(w->2w) -> Relu -> GAP -> Flatten -> Gemm(2w -> 10)."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, width, name="conv1")])
    h = b.node("ConvTranspose", [h, b.weight("up.weight", (width, 1, 4, 4), 4), b.vector("up.bias", width)],
               name="up", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1], group=width)
    h = b.node("Relu", [b.conv(h, width, 2 * width, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 2 * width, CLASSES, name=OUTPUT))


def unknown_op(op: str = "LRN", seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> ``op`` (LRN, or Softmax over channels) -> Conv(8->16) -> Relu -> GAP
    -> Flatten -> Gemm(16 -> 10): the first conv's group touches an op that mixes its
    channels (one the analysis does not understand, or a Softmax over them) and must stay
    whole."""
    b = _Builder(seed)
    h = b.conv(INPUT, IN_CHANNELS, 8, name="conv1")
    if op == "LRN":
        h = b.node("LRN", [h], name="lrn", size=3)
    elif op == "Softmax":
        h = b.node("Softmax", [h], name="softmax", axis=1)
    else:
        raise ValueError(op)
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


FEATURE_OUTPUT = "features"


def intermediate_output(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> Relu (also the graph output ``features``) -> Conv(8->16) -> Relu
    -> GAP -> Flatten -> Gemm(16 -> 10)."""
    b = _Builder(seed)
    feat = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")], name=FEATURE_OUTPUT)
    h = b.node("Relu", [b.conv(feat, 8, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT),
                   extra_outputs=[(FEATURE_OUTPUT, ["N", 8, HW, HW])])


def gemm_matmul(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> GAP -> Flatten -> Gemm(8->16, alpha=0.5, beta=2, transB=0)
    -> Relu -> MatMul(16->12, constant weight) -> Relu -> Gemm(12 -> 10)."""
    b = _Builder(seed)
    h = b.gap_flatten(b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")]))
    h = b.node("Relu", [b.gemm(h, 8, 16, trans_b=False, alpha=0.5, beta=2.0, name="gemm_ab")])
    h = b.node("MatMul", [h, b.weight("matmul.weight", (16, 12), 16)], name="matmul")
    h = b.node("Relu", [h])
    return b.build(b.gemm(h, 12, CLASSES, name=OUTPUT))


def wide_cnn(seed: int = 0) -> onnx.ModelProto:
    """The folded CNN at widths 16/32/64: fine enough channel granularity for budget tests."""
    return conv_bn_relu_pool_flatten_gemm(True, widths=(16, 32, 64), seed=seed)


def concat_branches(seed: int = 0) -> onnx.ModelProto:
    """Two conv branches (3->6, 3->10) -> Concat -> Conv(16->12) -> Relu -> GAP -> Gemm:
    the concatenated consumer reads two groups at channel offsets 0 and 6."""
    b = _Builder(seed)
    a = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 6, name="branch_a")])
    c = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 10, name="branch_b")])
    h = b.node("Concat", [a, c], name="concat", axis=1)
    h = b.node("Relu", [b.conv(h, 16, 12, name="conv_cat")])
    return b.build(b.gemm(b.gap_flatten(h), 12, CLASSES, name=OUTPUT))


def split_channels(use_slice: bool = False, seed: int = 0) -> onnx.ModelProto:
    """CSP-style: Conv(3->16) -> Relu -> split into two halves (Split, or two Slices) ->
    Conv(8->8) on the first half -> Concat(with the second half) -> Conv(16->16) -> Relu
    -> GAP -> Gemm. The first conv's channels become two groups."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 16, name="conv_in")])
    if use_slice:
        first = b.node("Slice", [h, b.const("s0", np.array([0], np.int64)), b.const("e0", np.array([8], np.int64)),
                                 b.const("ax0", np.array([1], np.int64))], name="slice_a")
        second = b.node("Slice", [h, b.const("s1", np.array([8], np.int64)),
                                  b.const("e1", np.array([2 ** 62], np.int64)), b.const("ax1", np.array([1], np.int64))],
                        name="slice_b")
    else:
        first = b.node("Split", [h, b.const("split_sizes", np.array([8, 8], np.int64))], name="split", n_out=2,
                       axis=1)
        second = "split_out1"
    a = b.node("Relu", [b.conv(first, 8, 8, name="conv_half")])
    h = b.node("Concat", [a, second], name="concat", axis=1)
    h = b.node("Relu", [b.conv(h, 16, 16, name="conv_out")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def se_block(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> Relu = x; squeeze-excitation x * Sigmoid(Conv(4->8, Relu(Conv(8->4,
    GAP(x))))) -> Conv(8->16) -> Relu -> GAP -> Gemm. The excitation conv and the first
    conv form one group (channel c of the gate multiplies channel c of x)."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    s = b.node("GlobalAveragePool", [x])
    s = b.node("Relu", [b.conv(s, 8, 4, k=1, name="se_reduce")])
    s = b.node("Sigmoid", [b.conv(s, 4, 8, k=1, name="se_expand")])
    h = b.node("Mul", [x, s], name="gate")
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def composite_activations(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> x*clip(x+3, 0, 6)/6 (hard-swish from primitives) -> Resize x2 ->
    InstanceNormalization -> PRelu (per-channel slope) -> Pad 1 -> Conv(8->16, no pad)
    -> HardSwish -> MaxPool -> SiLU as x*Sigmoid(x) -> GAP -> Gemm."""
    b = _Builder(seed)
    h = b.hard_swish(b.conv(INPUT, IN_CHANNELS, 8, name="conv1"))
    h = b.node("Resize", [h, "", b.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    h = b.node("InstanceNormalization", [h, b.vector("in.scale", 8, 0.5, 1.5), b.vector("in.bias", 8)])
    h = b.node("PRelu", [h, b.const("slope", b.rng.uniform(0.05, 0.3, (8, 1, 1)).astype(np.float32))])
    h = b.node("Pad", [h, b.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    w = b.weight("conv2.weight", (16, 8, 3, 3), 72)
    h = b.node("Conv", [h, w, b.vector("conv2.bias", 16)], name="conv2", kernel_shape=[3, 3])
    h = b.pool(b.node("HardSwish", [h]))
    h = b.node("Mul", [h, b.node("Sigmoid", [h])])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def conv_transpose(width: int = 8, seed: int = 0, kernel: int = 2, pads: int = 0, output_padding: int = 0
                   ) -> onnx.ModelProto:
    """Conv(3->w, stride 2) -> Relu -> ConvTranspose(w->w, stride 2, with bias) -> Relu
    -> Conv(w->2w) -> Relu -> GAP -> Flatten -> Gemm(2w -> 10): the ConvTranspose produces
    one prunable group and consumes another."""
    b = _Builder(seed)
    w = b.weight("up.weight", (width, width, kernel, kernel), width * kernel * kernel)
    h = b.node("Relu", [b.node("Conv", [INPUT, b.weight("down.weight", (width, IN_CHANNELS, 3, 3), 27),
                                        b.vector("down.bias", width)], name="down", kernel_shape=[3, 3],
                                        pads=[1, 1, 1, 1], strides=[2, 2])])
    extra = {"output_padding": [output_padding] * 2} if output_padding else {}
    h = b.node("Relu", [b.node("ConvTranspose", [h, w, b.vector("up.bias", width)], name="up",
                               kernel_shape=[kernel, kernel], strides=[2, 2], pads=[pads] * 4, **extra)])
    h = b.node("Relu", [b.conv(h, width, 2 * width, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 2 * width, CLASSES, name=OUTPUT))


def decoder(seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    """An encoder-decoder as older exporters write it (opset 11, Resize with an empty roi,
    hard-swish from primitives): conv1 (3->8) -> Relu = e1; conv2 (8->16, stride 2) ->
    x*clip(x+3)/6 -> SE gate with HardSigmoid = e2; ConvTranspose (16->8, 3x3, stride 2,
    pads 1, output_padding 1) -> Relu = up; Concat(up, e1) -> conv3 (16->12, stride 2) ->
    Relu -> Resize x2 -> Concat with up -> conv4 (20->16) -> Relu -> GAP -> Gemm(16 -> 10)."""
    b = _Builder(seed)
    e1 = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    x = b.node("Conv", [e1, b.weight("conv2.weight", (16, 8, 3, 3), 72), b.vector("conv2.bias", 16)],
               name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    x = b.hard_swish(x)
    s = b.node("Relu", [b.conv(b.node("GlobalAveragePool", [x]), 16, 4, k=1, name="se_reduce")])
    s = b.node("HardSigmoid", [b.conv(s, 4, 16, k=1, name="se_expand")], alpha=1 / 6, beta=0.5)
    e2 = b.node("Mul", [x, s], name="gate")
    up = b.node("Relu", [b.node("ConvTranspose", [e2, b.weight("up.weight", (16, 8, 3, 3), 144),
                                                  b.vector("up.bias", 8)], name="up", kernel_shape=[3, 3],
                                strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])])
    h = b.node("Conv", [b.node("Concat", [up, e1], axis=1), b.weight("conv3.weight", (12, 16, 3, 3), 144),
                        b.vector("conv3.bias", 12)], name="conv3", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               strides=[2, 2])
    h = b.node("Resize", [b.node("Relu", [h]), b.const("roi", np.zeros(0, np.float32)),
                          b.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    h = b.node("Relu", [b.conv(b.node("Concat", [h, up], axis=1), 20, 16, name="conv4")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=opset)


def channels_last(seed: int = 0) -> onnx.ModelProto:
    """TensorFlow's export pattern (tf2onnx): NCHW Convs wrapped in Transposes, everything
    between them in NHWC. conv1 (3->8) -> NHWC: + bias [8] -> hard-swish (Add, Clip, Mul,
    Mul) -> SE gate: ReduceMean over H, W -> NCHW -> se_reduce (8->4) -> Relu -> se_expand
    (4->8) -> NHWC -> Sigmoid -> Mul; Concat (axis 3) with conv2's (3->6) NHWC output ->
    NCHW -> conv3 (14->16) -> NHWC -> Relu -> ReduceMean (keepdims 0) -> Gemm(16 -> 10)."""
    b = _Builder(seed)
    nhwc, nchw = [0, 2, 3, 1], [0, 3, 1, 2]
    x = b.node("Transpose", [b.conv(INPUT, IN_CHANNELS, 8, bias=False, name="conv1")], perm=nhwc)
    x = b.node("Add", [x, b.vector("conv1.bias_nhwc", 8)])
    t = b.node("Clip", [b.node("Add", [x, b.const("three", np.array(3.0, np.float32))]),
                        b.const("lo", np.array(0.0, np.float32)), b.const("hi", np.array(6.0, np.float32))])
    x = b.node("Mul", [x, b.node("Mul", [t, b.const("sixth", np.array(1 / 6, np.float32))])])
    s = b.node("ReduceMean", [x], axes=[1, 2], keepdims=1)
    s = b.node("Relu", [b.conv(b.node("Transpose", [s], perm=nchw), 8, 4, k=1, name="se_reduce")])
    s = b.node("Sigmoid", [b.node("Transpose", [b.conv(s, 4, 8, k=1, name="se_expand")], perm=nhwc)])
    x = b.node("Mul", [x, s], name="gate")
    y = b.node("Transpose", [b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 6, name="conv2")])], perm=nhwc)
    x = b.node("Concat", [x, y], axis=3)
    x = b.node("Transpose", [b.conv(b.node("Transpose", [x], perm=nchw), 14, 16, name="conv3")], perm=nhwc)
    x = b.node("ReduceMean", [b.node("Relu", [x])], axes=[1, 2], keepdims=0)
    return b.build(b.gemm(x, 16, CLASSES, name=OUTPUT), opset=13)


def se_unflatten(seed: int = 0) -> onnx.ModelProto:
    """Keras' SE block as tf2onnx writes it: conv1 (3->8) -> Relu = x; GAP -> Squeeze ->
    Reshape to (-1, 8, 1, 1) -> se_reduce (8->4) -> Relu -> se_expand (4->8) -> Sigmoid ->
    Mul with x -> conv2 (8->16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10)."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    s = b.node("Squeeze", [b.node("GlobalAveragePool", [x]), b.const("sq_axes", np.array([2, 3], np.int64))])
    s = b.node("Reshape", [s, b.const("se_shape", np.array([-1, 8, 1, 1], np.int64))])
    s = b.node("Relu", [b.conv(s, 8, 4, k=1, name="se_reduce")])
    s = b.node("Sigmoid", [b.conv(s, 4, 8, k=1, name="se_expand")])
    h = b.node("Relu", [b.conv(b.node("Mul", [x, s]), 8, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)


def resize_to_skip(seed: int = 0) -> onnx.ModelProto:
    """paddle2onnx's ``F.interpolate(x, size=paddle.shape(skip)[2:])``: conv1 (3->8) ->
    Relu = e1; conv2 (8->16, stride 2) -> Relu = e2; Resize(e2, sizes=Concat(Slice(Shape(e2),
    0, 2), Slice(Shape(e1), 2, 4))) -> Concat with e1 -> conv3 (24->16) -> Relu -> GAP ->
    Flatten -> Gemm(16 -> 10). Both Shapes leave the channels prunable."""
    b = _Builder(seed)
    e1 = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    e2 = b.node("Relu", [b.node("Conv", [e1, b.weight("conv2.weight", (16, 8, 3, 3), 72), b.vector("conv2.bias", 16)],
                                name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])])

    def entries(tensor, lo, hi):
        return b.node("Slice", [b.node("Shape", [tensor]), b.const(f"lo{lo}", np.array([lo], np.int64)),
                                b.const(f"hi{hi}", np.array([hi], np.int64))])
    sizes = b.node("Concat", [entries(e2, 0, 2), entries(e1, 2, 4)], axis=0)
    up = b.node("Resize", [e2, "", "", sizes], mode="nearest")
    h = b.node("Relu", [b.conv(b.node("Concat", [up, e1], axis=1), 24, 16, name="conv3")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)


def resize_to_input(seed: int = 0) -> onnx.ModelProto:
    """torchvision's segmentation heads, ``F.interpolate(x, size=input.shape[-2:])``: conv1
    (3->8, stride 2) -> Relu -> conv2 (8->8) -> Relu = h; Resize(h, sizes=Concat(Slice(Shape(h),
    0, 2), Cast(Concat(Unsqueeze(Gather(Shape(x), 2)), Unsqueeze(Gather(Shape(x), 3)))))) ->
    conv3 (8->16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10). The half of ``sizes`` taken
    from the graph input is computed apart from every channel group."""
    b = _Builder(seed)
    h = b.node("Relu", [b.node("Conv", [INPUT, b.weight("conv1.weight", (8, 3, 3, 3), 27), b.vector("conv1.bias", 8)],
                               name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])])
    h = b.node("Relu", [b.conv(h, 8, 8, name="conv2")])
    shape_x = b.node("Shape", [INPUT])
    hw = [b.node("Unsqueeze", [b.node("Gather", [shape_x, b.const(f"axis{a}", np.array(a, np.int64))], axis=0),
                               b.const(f"dim{a}", np.array([0], np.int64))]) for a in (2, 3)]
    spatial = b.node("Cast", [b.node("Concat", hw, axis=0)], to=TensorProto.INT64)
    head = b.node("Slice", [b.node("Shape", [h]), b.const("lo", np.array([0], np.int64)),
                            b.const("hi", np.array([2], np.int64))])
    up = b.node("Resize", [h, "", "", b.node("Concat", [head, spatial], axis=0)], mode="linear")
    h = b.node("Relu", [b.conv(up, 8, 16, name="conv3")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)


def one_image_detector(seed: int = 0) -> onnx.ModelProto:
    """torchvision's detectors in small: one (3, 16, 16) image without a batch axis ->
    Unsqueeze -> conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> head (16->4, 1x1) ->
    Reshape(-1) = scores -> Gather(scores, NonZero(scores > 0)) = ``y``, one value per
    "detection": its length depends on the image."""
    b = _Builder(seed)
    x = b.node("Unsqueeze", [INPUT, b.const("axis0", np.array([0], np.int64))])
    h = b.node("Relu", [b.conv(x, IN_CHANNELS, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    scores = b.node("Reshape", [b.conv(h, 16, 4, k=1, name="head"), b.const("flat", np.array([-1], np.int64))])
    found = b.node("Reshape", [b.node("NonZero", [b.node("Greater", [scores, b.const("zero", np.array(0.0, np.float32))])]),
                               b.const("flat_idx", np.array([-1], np.int64))])
    b.node("Gather", [scores, found], name=OUTPUT)
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [IN_CHANNELS, HW, HW])
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["detections"])
    graph = helper.make_graph(b.nodes, "one_image", [inp], [out], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# name -> (builder, expected structure). ``prunable``: number of prunable groups;
# ``producers``: sorted producer counts of the prunable groups; ``frozen``: a substring that
# some frozen group's reasons must contain (or None).
def ghost(width: int = 4, seed: int = 0) -> onnx.ModelProto:
    """GhostNet's pattern: a tensor concatenated with its own depthwise copy, added to a
    residual stream, read by an SE gate and the next layer.

    stem Conv(3->2w) -> Relu (r); primary Conv(2w->w) -> Relu (p); cheap depthwise
    Conv(w) (q); g = Concat(p, q) holds every primary channel twice; h = g + r couples the
    stem's 2w channels to the primary's w channels, each stem half to one copy; SE:
    h * Sigmoid(Conv(Relu(Conv(GAP(h))))); Conv(2w->2w) -> Relu -> GAP -> Flatten -> Gemm.
    """
    b = _Builder(seed)
    r = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 2 * width, name="stem")])
    p = b.node("Relu", [b.conv(r, 2 * width, width, k=1, name="primary")])
    q = b.conv(p, width, width, group=width, name="cheap")
    h = b.node("Add", [b.node("Concat", [p, q], name="ghost_concat", axis=1), r], name="residual")
    s = b.node("GlobalAveragePool", [h])
    s = b.node("Relu", [b.conv(s, 2 * width, 3, k=1, name="se_reduce")])
    s = b.node("Sigmoid", [b.conv(s, 3, 2 * width, k=1, name="se_expand")])
    h = b.node("Mul", [h, s], name="se_gate")
    h = b.node("Relu", [b.conv(h, 2 * width, 2 * width, name="conv_out")])
    return b.build(b.gemm(b.gap_flatten(h), 2 * width, CLASSES, name=OUTPUT))


def group_norm_layer(b: _Builder, x: str, channels: int, groups: int, name: str) -> str:
    """PyTorch's ``nn.GroupNorm(groups, channels)`` as its exporters write it: Reshape(x,
    [0, G, -1]) -> InstanceNormalization(scale, bias of G) -> Reshape(Shape(x)) -> Mul by the
    per-channel weight -> Add the per-channel bias (random, so that slicing them shows)."""
    r = b.node("Reshape", [x, b.const(f"{name}.groups", np.array([0, groups, -1], np.int64))], name=f"{name}.split")
    n = b.node("InstanceNormalization", [r, b.vector(f"{name}.in_scale", groups, 0.5, 1.5),
                                         b.vector(f"{name}.in_bias", groups)], name=f"{name}.norm", epsilon=1e-5)
    y = b.node("Reshape", [n, b.node("Shape", [x], name=f"{name}.shape")], name=f"{name}.back")
    gamma = b.const(f"{name}.weight", b.rng.uniform(0.5, 1.5, size=(channels, 1, 1)).astype(np.float32))
    beta = b.const(f"{name}.bias", b.rng.uniform(-0.1, 0.1, size=(channels, 1, 1)).astype(np.float32))
    return b.node("Add", [b.node("Mul", [y, gamma]), beta])


def group_norm(width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """conv1 (3->width) -> GroupNorm(4 groups) -> Relu -> conv2 (width->width) ->
    GroupNorm(2 groups) -> Relu -> GAP -> Flatten -> Gemm(width -> 10)."""
    b = _Builder(seed)
    h = b.node("Relu", [group_norm_layer(b, b.conv(INPUT, IN_CHANNELS, width, name="conv1"), width, 4, "gn1")])
    h = b.node("Relu", [group_norm_layer(b, b.conv(h, width, width, name="conv2"), width, 2, "gn2")])
    return b.build(b.gemm(b.gap_flatten(h), width, CLASSES, name=OUTPUT), opset=13)


def split_group_norm_layer(b: _Builder, x: str, channels: int, groups: int, name: str, back: str = "concat") -> str:
    """Keras' ``GroupNormalization(groups)`` over the NHWC map ``x`` (16x16) as tf2onnx writes
    it: Reshape(x, [-1, 16, 16, G, C/G]) -> mean and variance over axes 1, 2, 4 -> scale
    ``gamma * rsqrt(var + eps)`` and shift ``beta - mean * scale`` with gamma and beta of
    shape (1, 1, 1, G, C/G) -> Reshape back to (N, 16, 16, C), whose target is
    ``Concat(batch, [16], [16], [C])`` with the batch sliced from the Shape of the map before
    its Transpose to NHWC (``back="concat"``), or the constant [-1, 16, 16, C]."""
    width = channels // groups
    r = b.node("Reshape", [x, b.const(f"{name}.split_shape", np.array([-1, HW, HW, groups, width], np.int64))],
               name=f"{name}.split")
    mean = b.node("ReduceMean", [r], axes=[1, 2, 4], keepdims=1, name=f"{name}.mean")
    d = b.node("Sub", [r, mean])
    var = b.node("ReduceMean", [b.node("Mul", [d, d])], axes=[1, 2, 4], keepdims=1, name=f"{name}.var")
    eps = b.const(f"{name}.eps", np.array(1e-3, np.float32))
    inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [var, eps])])])
    shape5 = (1, 1, 1, groups, width)
    scale = b.node("Mul", [inv, b.const(f"{name}.gamma", b.rng.uniform(0.5, 1.5, size=shape5).astype(np.float32))])
    beta = b.const(f"{name}.beta", b.rng.uniform(-0.1, 0.1, size=shape5).astype(np.float32))
    y = b.node("Add", [b.node("Mul", [r, scale]), b.node("Sub", [beta, b.node("Mul", [mean, scale])])])
    if back == "concat":
        conv_out = b.nodes[[n.output[0] for n in b.nodes].index(x)].input[0]  # the map before its Transpose
        shape = b.node("Gather", [b.node("Shape", [conv_out]), b.const(f"{name}.perm", np.array([0, 2, 3, 1]))])
        batch = b.node("Slice", [shape, b.const(f"{name}.lo", np.array([0])), b.const(f"{name}.hi", np.array([1]))])
        target = b.node("Concat", [batch, b.const(f"{name}.h", np.array([HW])), b.const(f"{name}.w", np.array([HW])),
                                   b.const(f"{name}.c", np.array([channels]))], axis=0)
    else:
        target = b.const(f"{name}.c", np.array([-1, HW, HW, channels], np.int64))
    return b.node("Reshape", [y, target], name=f"{name}.back")


def keras_group_norm(seed: int = 0) -> onnx.ModelProto:
    """conv1 (3->16) -> NHWC -> Keras GroupNorm (4 groups, Concat target) -> Relu -> NCHW ->
    conv2 (16->16) -> NHWC -> GroupNorm (2 groups, constant target) -> Relu -> NCHW -> GAP ->
    Flatten -> Gemm(16 -> 10)."""
    b = _Builder(seed)
    h = INPUT
    for i, (cin, groups, back) in enumerate(((IN_CHANNELS, 4, "concat"), (16, 2, "const")), start=1):
        h = b.node("Transpose", [b.conv(h, cin, 16, name=f"conv{i}")], perm=[0, 2, 3, 1])
        h = b.node("Relu", [split_group_norm_layer(b, h, 16, groups, f"gn{i}", back)])
        h = b.node("Transpose", [h], perm=[0, 3, 1, 2])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset=13)


def _count_entry(b: _Builder, x: str, axis: int, divisor: int = 1) -> str:
    """Entry ``axis`` of ``Shape(x)`` (divided by ``divisor``) as a 1-element vector, as
    PyTorch's tracer writes ``x.shape[axis] // divisor`` into a Reshape target."""
    v = b.node("Gather", [b.node("Shape", [x]), b.const(b.name("axis"), np.array(axis, np.int64))], axis=0)
    if divisor != 1:
        v = b.node("Cast", [b.node("Div", [v, b.const(b.name("divisor"), np.array(divisor, np.int64))])], to=7)
    return b.node("Unsqueeze", [v, b.const(b.name("at"), np.array([0], np.int64))])


def split_attention(width: int = 8, radix: int = 2, constant: bool = False, seed: int = 0) -> onnx.ModelProto:
    """conv1 (3->8) -> split conv (8 -> radix*width) -> ResNeSt's split attention as timm's
    SplitAttn exports it: the map reshaped to (N, radix, width, H, W) by a target computed
    from its Shape (``RC // radix``), summed over the radix axis, pooled -> fc1 (width->4)
    -> fc2 (4 -> radix*width) -> (N, 1, radix, -1) -> Transpose -> Softmax over the radix
    axis -> (N, -1) -> (N, -1, 1, 1) -> (N, radix, RC // radix, 1, 1) -> times the map,
    summed over the radix axis -> conv3 (width->8) -> GAP -> Gemm(8 -> 10). ``constant``:
    every target a constant of its own that spells out the channel counts, with -1 for the
    batch (as a static export writes them)."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    x = b.node("Relu", [b.conv(h, 8, radix * width, name="split")])

    def target(name: str, computed, spelled: list[int]) -> str:
        if constant:
            return b.const(name, np.array([-1, *spelled], np.int64))
        return b.node("Concat", computed(), axis=0, name=name)

    def entries(values: list[int]) -> str:
        return b.const(b.name("entries"), np.array(values, np.int64))

    batch, count = (None, None) if constant else (_count_entry(b, x, 0), _count_entry(b, x, 1, radix))
    x5 = b.node("Reshape", [x, target("blocks_shape", lambda: [batch, entries([radix]), count, _count_entry(b, x, 2),
                                                              _count_entry(b, x, 3)], [radix, width, HW, HW])],
                name="split_blocks")
    gap = b.node("ReduceMean", [b.node("ReduceSum", [x5, entries([1])], keepdims=0)], axes=[2, 3], keepdims=1)
    a = b.conv(b.node("Relu", [b.conv(gap, width, 4, k=1, name="fc1")]), 4, radix * width, k=1, name="fc2")
    rbatch = None if constant else _count_entry(b, a, 0)  # RadixSoftmax reads the batch size once, from its input
    a = b.node("Reshape", [a, target("card_shape", lambda: [rbatch, entries([1, radix, -1])], [1, radix, width])])
    a = b.node("Softmax", [b.node("Transpose", [a], perm=[0, 2, 1, 3])], axis=1, name="rsoftmax")
    a = b.node("Reshape", [a, target("flat_shape", lambda: [rbatch, entries([-1])], [radix * width])])
    a = b.node("Reshape", [a, target("map_shape", lambda: [batch, entries([-1, 1, 1])], [radix * width, 1, 1])])
    a = b.node("Reshape", [a, target("attn_shape", lambda: [batch, entries([radix]), count, entries([1, 1])],
                                     [radix, width, 1, 1])], name="attn_blocks")
    y = b.node("ReduceSum", [b.node("Mul", [x5, a]), entries([1])], keepdims=0, name="attended")
    h = b.node("Relu", [b.conv(y, width, 8, name="conv3")])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT), opset=13)


ALL_BUILDERS = {
    "cnn_folded": lambda: conv_bn_relu_pool_flatten_gemm(True),
    "cnn_bn": lambda: conv_bn_relu_pool_flatten_gemm(False),
    "cnn_reshape0": lambda: cnn_reshape(False),
    "cnn_reshape_explicit": lambda: cnn_reshape(True),
    "cnn_constants": cnn_constant_weights,
    "residual": residual,
    "depthwise": depthwise,
    "lrn": lambda: unknown_op("LRN"),
    "softmax": lambda: unknown_op("Softmax"),
    "intermediate_output": intermediate_output,
    "gemm_matmul": gemm_matmul,
    "concat": concat_branches,
    "split": split_channels,
    "slice": lambda: split_channels(use_slice=True),
    "se_block": se_block,
    "composite": composite_activations,
    "conv_transpose": conv_transpose,
    "conv_transpose_padded": lambda: conv_transpose(kernel=3, pads=1, output_padding=1),
    "ghost": ghost,
    "grouped": grouped,
    "decoder": decoder,
    "depthwise_upsample": depthwise_upsample,
    "channels_last": channels_last,
    "keras_group_norm": keras_group_norm,
    "se_unflatten": se_unflatten,
    "resize_to_skip": resize_to_skip,
    "resize_to_input": resize_to_input,
    "grouped_wide": lambda: grouped(out_width=32),
    "depthwise_multiplier": depthwise_multiplier,
    "multiplier_sum": multiplier_sum,
    "multiplier_sum_concat": multiplier_sum_concat,
    "flatten_bias": flatten_bias,
    "computed_pads": computed_pads,
    "computed_channel_pads": lambda: computed_pads(channels=True),
    "group_norm": group_norm,
    "split_attention": split_attention,
    "split_attention_constant": lambda: split_attention(constant=True),
}

EXPECTED = {
    "cnn_folded": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "cnn_bn": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "cnn_reshape0": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "cnn_reshape_explicit": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "cnn_constants": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "residual": {"prunable": 2, "producers": [1, 2], "frozen": None},
    "depthwise": {"prunable": 2, "producers": [1, 1], "frozen": None},
    "lrn": {"prunable": 1, "producers": [1], "frozen": "LRN"},
    "softmax": {"prunable": 1, "producers": [1], "frozen": "Softmax"},
    "intermediate_output": {"prunable": 1, "producers": [1], "frozen": "graph output"},
    "gemm_matmul": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "concat": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "split": {"prunable": 4, "producers": [1, 1, 1, 1], "frozen": None},
    "slice": {"prunable": 4, "producers": [1, 1, 1, 1], "frozen": None},
    "se_block": {"prunable": 3, "producers": [1, 1, 2], "frozen": None},
    "composite": {"prunable": 2, "producers": [1, 1], "frozen": None},
    "conv_transpose": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "conv_transpose_padded": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    # stem, primary and SE-expand channels in one group (stem and expand at two offsets each),
    # the SE bottleneck, conv_out
    "ghost": {"prunable": 3, "producers": [1, 1, 5], "frozen": None},
    "grouped": {"prunable": 2, "producers": [1, 1], "frozen": None},
    # conv1, conv2 + se_expand (the gate), se_reduce, up, conv3, conv4
    "decoder": {"prunable": 6, "producers": [1, 1, 1, 1, 1, 2], "frozen": None},
    "depthwise_upsample": {"prunable": 2, "producers": [1, 1], "frozen": None},
    # conv1 + se_expand (the gate), se_reduce, conv2, conv3
    "channels_last": {"prunable": 4, "producers": [1, 1, 1, 2], "frozen": None},
    "se_unflatten": {"prunable": 3, "producers": [1, 1, 2], "frozen": None},
    "resize_to_skip": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    "resize_to_input": {"prunable": 3, "producers": [1, 1, 1], "frozen": None},
    # each conv group of 4 inputs writes 8 outputs: a channel multiplier of 2
    "grouped_wide": {"prunable": 2, "producers": [1, 1], "frozen": None},
    "depthwise_multiplier": {"prunable": 2, "producers": [1, 1], "frozen": None},
    # conv1, pw and wide (2 and 4 rows per channel of conv1) in one group
    "multiplier_sum": {"prunable": 1, "producers": [3], "frozen": None},
    # conv_u and conv_out: blocking pw would freeze conv_u in the Concat (see the builder)
    "multiplier_sum_concat": {"prunable": 2, "producers": [1, 1], "frozen": "different structure"},
    "flatten_bias": {"prunable": 1, "producers": [1], "frozen": None},
    "computed_pads": {"prunable": 2, "producers": [1, 1], "frozen": None},
    "computed_channel_pads": {"prunable": 1, "producers": [1], "frozen": "Pad on the batch or channel axis"},
    # conv1 in blocks of 4 channels, conv2 of 8
    "group_norm": {"prunable": 2, "producers": [1, 1], "frozen": None},
    "keras_group_norm": {"prunable": 2, "producers": [1, 1], "frozen": None},
    # conv1, split + fc2 (each in its two radix blocks), fc1, conv3
    "split_attention": {"prunable": 4, "producers": [1, 1, 1, 4], "frozen": None},
    "split_attention_constant": {"prunable": 4, "producers": [1, 1, 1, 4], "frozen": None},
}


def random_input(n: int = 64, seed: int = 1) -> np.ndarray:
    """Calibration / test inputs for every builder: (n, 3, 16, 16) float32."""
    return np.random.default_rng(seed).normal(size=(n, IN_CHANNELS, HW, HW)).astype(np.float32)


# -- helpers shared by the tests ---------------------------------------------------------

def run_model(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """All graph outputs of ``model`` on ``x`` (CPU), by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def tensor_values(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """Tensor ``name`` of ``model`` on ``x``, read as a graph output of a copy."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return run_model(m, x)[name]


def zeroed(model: onnx.ModelProto, rows: dict[str, np.ndarray | list[int]]) -> onnx.ModelProto:
    """A copy of ``model`` with the given rows (axis 0) of the named initializers zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in rows:
            value = numpy_helper.to_array(init).copy()
            value[rows[init.name]] = 0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return out


def producer_groups(model: onnx.ModelProto) -> dict[str, dict]:
    """``onnx_eprune.inspect``'s groups of ``model``, by each of their producers' names."""
    import onnx_eprune

    return {p: g for g in onnx_eprune.inspect(model)["groups"] for p in g["producers"]}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every float initializer and float Constant node."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors if t.data_type in floats)


def io_signature(model: onnx.ModelProto) -> dict:
    """Names and element types of the real inputs and of the outputs."""
    inits = {i.name for i in model.graph.initializer}
    return {"inputs": [(vi.name, vi.type.tensor_type.elem_type) for vi in model.graph.input if vi.name not in inits],
            "outputs": [(vi.name, vi.type.tensor_type.elem_type) for vi in model.graph.output]}


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


def node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.name == name:
            return node
    raise KeyError(name)


def conv_gemm_costs(model: onnx.ModelProto) -> tuple[int, int]:
    """Parameters (weights and biases of every Conv and Gemm) and MACs per sample, counted on
    the file with ONNX's own shape inference, independently of the library: a Conv costs
    its weight's size per output position, a Gemm its weight's size."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    params = macs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = inits[node.input[1]]
        params += w.size + (inits[node.input[2]].size if len(node.input) > 2 and node.input[2] else 0)
        macs += w.size * (int(np.prod(shapes[node.output[0]][2:])) if node.op_type == "Conv" else 1)
    return params, macs
