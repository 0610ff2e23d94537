"""Random small CNNs, built with ``onnx.helper``, for the property tests.

:func:`random_cnn` composes a model on the float32 input ``x`` of shape ``[N, 3, 16, 16]``
(``N`` dynamic) that ends in GlobalAveragePool -> Flatten -> Gemm and the output ``y`` of
shape ``[N, 10]``. Its body is 2 to 6 random blocks:

* ``conv``: Conv 3x3 or 1x1 (width 4-16, stride 1 or 2, with or without bias), an optional
  unfolded BatchNormalization, then an activation;
* ``residual``: Conv - act - Conv (same width) + the block input, by Add, by Sum, or by a
  Sum with a third branch (a 1x1 Conv of the block input);
* ``concat``: two parallel Convs joined by Concat on the channel axis;
* ``depthwise``: Conv with ``group = C``, in 30% of the cases with a channel multiplier of 2
  (2C outputs), half of those added to an ordinary Conv of the block input (FastViT);
* ``grouped``: Conv with ``group`` 2 or 4, half the time as many outputs as inputs (even
  input and output widths; a multiple of the inputs is a channel multiplier);
* ``se``: squeeze-and-excitation, GAP -> 1x1 Conv -> Relu -> 1x1 Conv -> Sigmoid -> Mul;
* ``pool``: MaxPool or AveragePool 2x2, stride 2;
* ``ghost``: GhostNet's module on an even width C: a 1x1 Conv to C/2 channels, an
  activation, their depthwise 3x3 copy, Concat of both (every channel twice), and mostly an
  Add of the block input;
* ``upsample`` (at 8x8 or less): ConvTranspose with stride 2 (kernel 2, kernel 3 with
  padding 1 and output padding 1, or kernel 4 with padding 1; in 30% of the cases
  depthwise, kernel 4), then an activation; the same padding is written explicitly or
  (not depthwise) as ``output_shape`` or ``auto_pad`` SAME_UPPER / SAME_LOWER;
* ``nhwc``: TensorFlow's layout: Transpose to NHWC, Add or Mul of a per-channel constant
  ``[C]``, an activation, half the time an SE-style gate ``y * sigmoid(ReduceMean(y))``
  over H and W, Transpose back;
* ``split`` (on an even width C): CSP's channel split, by Split (sizes as an input, as an
  attribute below opset 13, or ``num_outputs`` from opset 18) or by two Slices: a Conv
  on the first half, Concat with the second, and half the time an Add of the block input;
* ``opaque``: something the channel analysis does not follow, so that frozen channels meet
  prunable ones: LRN, Softmax over the channels, or an If whose branches read the block
  input from the outer scope (Relu or Identity of it, on the sign of its mean).

Activations are Relu, LeakyRelu, Clip(0, 6) (bounds as inputs, opset >= 11), SiLU as
``Mul(x, Sigmoid(x))``, HardSwish (opset >= 14 only) and ``Mul(x, HardSigmoid(x))``. The
opset is one of :data:`OPSETS`, the IR version the lowest that the opset needs (ReduceMean
takes its ``axes`` as an input from opset 18).

The structure comes from ``source``: an int seed or a ``numpy.random.Generator`` (plain
random draws), or a hypothesis ``draw`` function (inside ``@st.composite``), so that
hypothesis can shrink a failing graph block by block. Weights always come from a numpy
Generator (seeded by a drawn integer under hypothesis), He-initialised so that activations
stay of order one. About 20% of the graphs store their weights as Constant nodes instead of
initializers, and about 30% leave some node names empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "x"
OUTPUT = "y"
IN_CHANNELS = 3
HW = 16
CLASSES = 10
OPSETS = (11, 13, 14, 17, 18, 21)
BLOCKS = ("conv", "residual", "concat", "depthwise", "grouped", "se", "pool", "ghost", "upsample", "nhwc", "split",
          "opaque")
ACTIVATIONS = ("relu", "leaky_relu", "clip", "silu", "hard_swish", "hard_sigmoid_mul")


# -- where the random choices come from ------------------------------------------------------

class _Chooser:
    """Random decisions from a numpy Generator or from a hypothesis ``draw``."""

    def __init__(self, source):
        self.draw = None
        if isinstance(source, np.random.Generator):
            self.rng = source
        elif isinstance(source, (int, np.integer)):
            self.rng = np.random.default_rng(int(source))
        elif callable(source):
            self.draw = source
            self.rng = None
        else:
            raise TypeError(f"random_cnn needs a seed, a numpy Generator or a hypothesis draw, not {source!r}")

    def integer(self, low: int, high: int) -> int:
        """An int in [low, high], both included."""
        if self.draw is not None:
            from hypothesis import strategies as st
            return self.draw(st.integers(low, high))
        return int(self.rng.integers(low, high + 1))

    def choice(self, options: Sequence):
        options = list(options)
        if self.draw is not None:
            from hypothesis import strategies as st
            return self.draw(st.sampled_from(options))
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        """True with probability about ``p`` (hypothesis shrinks toward False)."""
        if self.draw is not None:
            from hypothesis import strategies as st
            return self.draw(st.integers(0, 99)) >= 100 - round(100 * p)
        return bool(self.rng.random() < p)

    def weights_rng(self) -> np.random.Generator:
        if self.draw is not None:
            return np.random.default_rng(self.integer(0, 2**32 - 1))
        return np.random.default_rng(int(self.rng.integers(2**32)))


# -- the graph under construction ------------------------------------------------------------

class _Graph:
    def __init__(self, choose: _Chooser, opset: int, constants: bool, blank_names: float):
        self.choose = choose
        self.opset = opset
        self.constants = constants
        self.blank_names = blank_names
        self.rng = choose.weights_rng()
        self.nodes: list[onnx.NodeProto] = []
        self.const_nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def _node_name(self, name: str) -> str:
        return "" if self.blank_names and self.choose.chance(self.blank_names) else name

    def const(self, base: str, value: np.ndarray, dtype: type = np.float32) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(value, dtype), name)
        if self.constants:
            self.const_nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                                     name=self._node_name(f"const_{name}")))
        else:
            self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._node_name(out), **attrs))
        return out

    # -- layers ------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, bias: bool = True,
             gain: float = 2.0) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0.0, np.sqrt(gain / fan_in), size=(cout, cin // group, k, k))
        inputs = [x, self.const("w", w)]
        if bias:
            inputs.append(self.const("b", self.rng.uniform(-0.1, 0.1, size=cout)))
        attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
        if stride != 1:
            attrs["strides"] = [stride, stride]
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", inputs, **attrs)

    def bn(self, x: str, c: int) -> str:
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.uniform(-0.1, 0.1, c),
                  self.rng.uniform(-0.1, 0.1, c), self.rng.uniform(0.5, 1.5, c)]
        names = [self.const(n, p) for n, p in zip(("scale", "shift", "mean", "var"), params)]
        return self.node("BatchNormalization", [x] + names, epsilon=1e-5)

    def activation(self, x: str) -> str:
        kinds = [a for a in ACTIVATIONS if a != "hard_swish" or self.opset >= 14]
        kind = self.choose.choice(kinds)
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "leaky_relu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        if kind == "clip":
            return self.node("Clip", [x, self.const("lo", np.float32(0.0)), self.const("hi", np.float32(6.0))])
        if kind == "hard_swish":
            return self.node("HardSwish", [x])
        gate = self.node("Sigmoid", [x]) if kind == "silu" else self.node("HardSigmoid", [x])
        return self.node("Mul", [x, gate] if self.choose.chance(0.5) else [gate, x])

    def width(self, even: bool = False) -> int:
        w = self.choose.integer(2 if even else 4, 8 if even else 16)
        return 2 * w if even else w


def _block(g: _Graph, kind: str, x: str, c: int, hw: int) -> tuple[str, int, int]:
    """Append one block; returns the new tensor, its channels and its spatial size."""
    ch = g.choose
    if kind == "conv":
        cout, k = g.width(), ch.choice([3, 1])
        stride = 2 if hw >= 4 and ch.chance(0.3) else 1
        use_bn = ch.chance(0.5)
        y = g.conv(x, c, cout, k, stride, bias=not use_bn or ch.chance(0.3))
        if use_bn:
            y = g.bn(y, cout)
        return g.activation(y), cout, (hw + stride - 1) // stride
    if kind == "residual":
        y = g.activation(g.conv(x, c, c, ch.choice([3, 1])))
        y = g.conv(y, c, c, ch.choice([3, 1]), bias=True, gain=0.5)
        join = ch.choice(["Add", "Add", "Sum", "Sum3"])
        if join == "Sum3":  # a third branch into one Sum, as Caffe2 and MXNet exports write it
            y = g.node("Sum", [x, y, g.conv(x, c, c, 1, gain=0.5)])
        else:
            y = g.node(join, [x, y] if ch.chance(0.5) else [y, x])
        return (g.activation(y) if ch.chance(0.5) else y), c, hw
    if kind == "concat":
        a, b = ch.integer(2, 8), ch.integer(2, 8)
        ya = g.conv(x, c, a, ch.choice([3, 1]))
        yb = g.conv(x, c, b, ch.choice([3, 1]))
        if ch.chance(0.5):
            ya, yb = g.activation(ya), g.activation(yb)
        y = g.node("Concat", [ya, yb], axis=1)
        return (g.activation(y) if ch.chance(0.5) else y), a + b, hw
    if kind == "depthwise":
        stride = 2 if hw >= 4 and ch.chance(0.2) else 1
        use_bn = ch.chance(0.5)
        cout = 2 * c if ch.chance(0.3) else c
        y = g.conv(x, c, cout, 3, stride, group=c, bias=not use_bn)
        if cout > c and ch.chance(0.5):  # FastViT: an ordinary Conv's outputs added to the multiplier's
            y = g.node("Add", [y, g.conv(x, c, cout, ch.choice([3, 1]), stride)])
        if use_bn:
            y = g.bn(y, cout)
        return g.activation(y), cout, (hw + stride - 1) // stride
    if kind == "grouped":
        if c % 2:
            return _block(g, "conv", x, c, hw)
        groups = 4 if c % 4 == 0 and ch.chance(0.5) else 2
        cout = c if ch.chance(0.5) else g.width(even=True)   # ResNeXt keeps the width
        if cout % groups:
            groups = 2
        y = g.conv(x, c, cout, ch.choice([3, 1]), group=groups, bias=ch.chance(0.5))
        return g.activation(y), cout, hw
    if kind == "se":
        r = max(2, c // 4)
        s = g.node("GlobalAveragePool", [x])
        s = g.node("Relu", [g.conv(s, c, r, 1)])
        s = g.node("Sigmoid", [g.conv(s, r, c, 1)])
        return g.node("Mul", [x, s] if ch.chance(0.5) else [s, x]), c, hw
    if kind == "ghost":
        if c % 2:
            return _block(g, "conv", x, c, hw)
        p = g.activation(g.conv(x, c, c // 2, 1))
        y = g.node("Concat", [p, g.conv(p, c // 2, c // 2, 3, group=c // 2)], axis=1)
        if ch.chance(0.7):
            y = g.node("Add", [y, x] if ch.chance(0.5) else [x, y])
        return y, c, hw
    if kind == "upsample":  # a decoder's ConvTranspose (stride 2), as PyTorch exports it
        if hw > 8:
            return _block(g, "conv", x, c, hw)
        depthwise = ch.chance(0.3)  # a learned bilinear upsampling, one channel per group
        cout = c if depthwise else g.width()
        k, pad, extra = (4, 1, 0) if depthwise else ch.choice([(2, 0, 0), (3, 1, 1), (4, 1, 0)])
        fan_in = (1 if depthwise else c) * k * k / 4
        w = g.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(c, 1 if depthwise else cout, k, k))
        inputs = [x, g.const("w", w)] + ([g.const("b", g.rng.uniform(-0.1, 0.1, cout))] if ch.chance(0.5) else [])
        attrs = {"output_padding": [extra, extra]} if extra else {}
        if depthwise:
            attrs["group"] = c
        # the same padding, explicit or as the output size (older tf2onnx) or auto_pad stands
        # for it; picked by the drawn width, not by a draw of its own, so that the
        # derandomized examples of the property tests stay the ones they were before
        padding = "pads" if depthwise else ["pads", "pads", "output_shape", "SAME_UPPER", "SAME_LOWER"][cout % 5]
        if padding == "pads":
            attrs["pads"] = [pad] * 4
        elif padding == "output_shape":
            attrs["output_shape"] = [2 * hw, 2 * hw]
        else:
            attrs["auto_pad"] = padding
        y = g.node("ConvTranspose", inputs, kernel_shape=[k, k], strides=[2, 2], **attrs)
        return g.activation(y), cout, 2 * hw
    if kind == "nhwc":  # TensorFlow's export: element-wise work between Transposes, channels last
        y = g.node("Transpose", [x], perm=[0, 2, 3, 1])
        y = g.node(ch.choice(["Add", "Mul"]), [y, g.const("k", g.rng.uniform(0.5, 1.5, c))])
        y = g.activation(y)
        if ch.chance(0.5):  # an SE gate computed channels last
            if g.opset >= 18:  # axes became an input
                s = g.node("ReduceMean", [y, g.const("axes", [1, 2], np.int64)], keepdims=1)
            else:
                s = g.node("ReduceMean", [y], axes=[1, 2], keepdims=1)
            y = g.node("Mul", [y, g.node("Sigmoid", [s])])
        return g.node("Transpose", [y], perm=[0, 3, 1, 2]), c, hw
    if kind == "split":
        if c % 2:
            return _block(g, "conv", x, c, hw)
        half = c // 2
        form = ch.choice(["input", "slices", "attribute" if g.opset < 13 else "num_outputs" if g.opset >= 18 else "input"])
        if form == "slices":
            bounds = [[0, half], [half, c]]
            a, b = (g.node("Slice", [x, g.const("starts", [lo], np.int64), g.const("ends", [hi], np.int64),
                                     g.const("axes", [1], np.int64)]) for lo, hi in bounds)
        else:
            if form == "input" and g.opset >= 13:
                inputs, attrs = [x, g.const("sizes", [half, half], np.int64)], {}
            elif form == "num_outputs":
                inputs, attrs = [x], {"num_outputs": 2}
            else:  # sizes as an attribute (opset < 13)
                inputs, attrs = [x], {"split": [half, half]}
            a = g.fresh("split")
            b = f"{a}_second"
            g.nodes.append(helper.make_node("Split", inputs, [a, b], name=g._node_name(a), axis=1, **attrs))
        y = g.node("Concat", [g.activation(g.conv(a, half, half, ch.choice([3, 1]))), b], axis=1)
        if ch.chance(0.5):
            y = g.node("Add", [y, x])
        return y, c, hw
    if kind == "opaque":
        op = ch.choice(["LRN", "Softmax", "If"])
        if op == "LRN":
            return g.node("LRN", [x], size=3), c, hw
        if op == "Softmax":
            return g.node("Softmax", [x], axis=1), c, hw
        cond = g.node("Greater", [g.node("ReduceMean", [x], keepdims=0), g.const("zero", np.float32(0.0))])
        out = g.fresh("if")
        branches = {key: helper.make_graph([helper.make_node(branch_op, [x], [f"{out}_{key}"])], f"{out}_{key}", [],
                                           [helper.make_tensor_value_info(f"{out}_{key}", TensorProto.FLOAT, None)])
                    for key, branch_op in (("then_branch", "Relu"), ("else_branch", "Identity"))}
        g.nodes.append(helper.make_node("If", [cond], [out], name=g._node_name(out), **branches))
        return out, c, hw
    if kind == "pool":
        if hw < 4:
            return _block(g, "conv", x, c, hw)
        op = ch.choice(["MaxPool", "AveragePool"])
        return g.node(op, [x], kernel_shape=[2, 2], strides=[2, 2]), c, hw // 2
    raise ValueError(kind)


def random_cnn(source, *, opset: int | None = None, blocks: Sequence[str] | None = None,
               min_blocks: int = 2, max_blocks: int = 6, constants: bool | None = None,
               exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """A random CNN ``x [N, 3, 16, 16] -> y [N, 10]`` (see the module docstring).

    Parameters
    ----------
    source : int seed, ``numpy.random.Generator`` or a hypothesis ``draw``.
    opset : fix the opset (default: random among :data:`OPSETS`).
    blocks : fix the sequence of block kinds (default: 2-6 random ones from :data:`BLOCKS`).
    constants : store weights as Constant nodes (default: in about 20% of the graphs).
    exclude : block kinds never to draw.
    """
    ch = _Chooser(source)
    opset = opset if opset is not None else ch.choice(OPSETS)
    if constants is None:
        constants = ch.chance(0.2)
    blank_names = 0.5 if ch.chance(0.3) else 0.0
    if blocks is None:
        kinds = [k for k in BLOCKS if k not in exclude]
        blocks = [ch.choice(kinds) for _ in range(ch.integer(min_blocks, max_blocks))]
    g = _Graph(ch, opset, constants, blank_names)

    x, c, hw = INPUT, IN_CHANNELS, HW
    for kind in blocks:
        x, c, hw = _block(g, kind, x, c, hw)
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    trans_b = ch.chance(0.5)
    w = g.rng.normal(0.0, np.sqrt(1.0 / c), size=(CLASSES, c) if trans_b else (c, CLASSES))
    inputs = [x, g.const("fc_w", w)]
    if ch.chance(0.8):
        inputs.append(g.const("fc_b", g.rng.uniform(-0.1, 0.1, CLASSES)))
    gemm = helper.make_node("Gemm", inputs, [OUTPUT], name=g._node_name("fc"), transB=int(trans_b))

    graph = helper.make_graph(
        g.const_nodes + g.nodes + [gemm], "random_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", IN_CHANNELS, HW, HW])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    graph.doc_string = "blocks: " + " ".join(blocks)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="random_graphs")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def describe(model: onnx.ModelProto) -> str:
    """One line for failure messages: opset, IR, storage, blocks and the op sequence."""
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    consts = sum(n.op_type == "Constant" for n in model.graph.node)
    blanks = sum(not n.name for n in model.graph.node)
    return (f"opset {model.opset_import[0].version}, ir {model.ir_version}, "
            f"{'constants' if consts else 'initializers'}, {blanks} unnamed nodes, "
            f"{model.graph.doc_string}, ops: {' '.join(ops)}")


def random_input(n: int, seed: int) -> np.ndarray:
    """``n`` samples of standard normal noise, (n, 3, 16, 16) float32."""
    return np.random.default_rng(seed).normal(size=(n, IN_CHANNELS, HW, HW)).astype(np.float32)


def cnn_strategy(**kwargs) -> Callable:
    """A hypothesis strategy of :func:`random_cnn` models (``kwargs`` go to it)."""
    from hypothesis import strategies as st

    @st.composite
    def models(draw):
        return random_cnn(draw, **kwargs)
    return models()
