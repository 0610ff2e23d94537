"""Second fuzz round on "never break a graph": constructs placed on the channel path between
two prunable convolutions that the first round (``test_fuzz_findings.py``, PRelu,
InstanceNormalization, Resize, Pad, Split/Slice, SE, DenseNet, SpaceToDepth, shuffles,
Gemm heads, float16, ...) did not cover.

Every model here is ``x [N, 3, 16, 16] -> conv1 (3x3, 3 -> 8) -> Relu -> CONSTRUCT ->
conv2 (1x1, -> 8) -> Relu -> GAP -> Flatten -> Gemm -> y [N, 10]`` (or a HEAD in place of
GAP -> Flatten -> Gemm), built with ``onnx.helper`` and checker-valid. Channels 4-7 of both
conv1 and conv2 are *dead*: zero weights and a bias of 0.3, so they hold the constant 0.3.
This is an oracle. ``keep_ratio=0.5`` with ``method="l1"`` must remove exactly the dead
channels of every prunable group, and the least-squares re-fit (1x1 consumers, so no
padding) absorbs a constant channel into the next bias. So where the construct
passes channels through unchanged the pruned model must give the original's outputs, and
where the construct mixes channels in a way a re-fit cannot undo (Softmax/LayerNorm/
GroupNorm/reductions over channels, Gather/Tile/DepthToSpace/CumSum, sub-graphs, custom
domains, sequences) conv1's group must be frozen, with a reason in the report, and the
outputs are again the original's.

Constructs: Einsum, Gather / GatherElements on axis 1, ReduceSum/Max/L2/Mean over axis 1
(keepdims 0/1, axes as attribute and as input), Softmax/LogSoftmax (opset 11 and 13),
Hardmax, LpNormalization, LayerNormalization (NCHW axis 1, NHWC last axis),
GroupNormalization (opset 21), DepthToSpace (DCR/CRD), Tile, CumSum, TopK/ArgMax on axis 1
as extra outputs, Where, Dropout (opset 10/12/13, mask read or not), Identity/Cast chains
(float16, double, int), Unsqueeze/Squeeze around the channel axis (including 3-D ops that
then read the channels as a spatial axis), per-channel constants of many shapes in NCHW and
NHWC, If/Loop/Scan reading the channel tensor or a weight from the outer scope,
com.microsoft Pad/FastGelu, SequenceConstruct/SplitToSequence/ConcatFromSequence, and
PyTorch's dynamic flatten (Shape -> Gather/Slice -> Concat -> Reshape), also in the forms
that read the channel count.

The fuzzing that found the bugs below (a random composer over these constructs and
``random_graphs``' blocks, with random targets, methods and modes) ran outside the
repository; only the smallest reproducer of each bug is kept. All bugs found were in the
handling of graph outputs that are not (batch, ...) numeric tensors; they are fixed, and
each test pins the fixed behaviour. The channel analysis froze or followed every construct
correctly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as H
from onnx import numpy_helper as NH

import onnx_eprune
from onnx_eprune.errors import EPruneError, UsageError

C = 8            # conv1 outputs (channels 4..7 dead)
D = 8            # conv2 outputs (channels 4..7 dead)
LIVE = [0, 1, 2, 3]
CALIB = np.random.default_rng(1).normal(size=(48, 3, 16, 16)).astype(np.float32)
FRESH = np.random.default_rng(7).normal(size=(5, 3, 16, 16)).astype(np.float32)


# -- model building --------------------------------------------------------------------------

class Net:
    """Nodes, initializers and extra graph outputs of a model under construction."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        self.count += 1
        name = name or f"k{self.count}"
        self.inits.append(NH.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None, domain: str | None = None,
             **attrs):
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        extra = {"domain": domain} if domain else {}
        self.nodes.append(H.make_node(op, inputs, outs, name=name, **extra, **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, name: str, elem_type: int, shape) -> None:
        self.outputs.append(H.make_tensor_value_info(name, elem_type, shape))

    def conv(self, x: str, cin: int, cout: int, k: int, name: str) -> str:
        w = self.rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k))
        b = self.rng.uniform(-0.1, 0.1, cout)
        w[cout // 2:], b[cout // 2:] = 0.0, 0.3  # dead channels: the constant 0.3
        return self.node("Conv", [x, self.const(w, name=f"{name}.w"), self.const(b, name=f"{name}.b")], name=name,
                         kernel_shape=[k, k], pads=[k // 2] * 4)

    def gemm(self, x: str, features: int) -> None:
        w = self.const(self.rng.normal(0, 0.3, (10, features)), name="fc.w")
        self.nodes.append(H.make_node("Gemm", [x, w, self.const(np.zeros(10), name="fc.b")], ["y"], name="fc",
                                      transB=1))


Construct = Callable[[Net, str], tuple[str, int]]
Head = Callable[[Net, str], None]


def gap_head(n: Net, t: str) -> None:
    n.gemm(n.node("Flatten", [n.node("GlobalAveragePool", [t], name="gap")], name="flat"), D)


def build(construct: Construct, opset: int = 17, head: Head = gap_head,
          domains: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    n = Net()
    a = n.node("Relu", [n.conv("x", 3, C, 3, "conv1")], name="relu1")
    t, cin = construct(n, a)
    head(n, n.node("Relu", [n.conv(t, cin, D, 1, "conv2")], name="relu2"))
    graph = H.make_graph(n.nodes, "fuzz2", [H.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 16, 16])],
                         [H.make_tensor_value_info("y", TP.FLOAT, ["N", 10])] + n.outputs, initializer=n.inits)
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", opset)] + [H.make_opsetid(d, v) for d, v in domains])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto) -> tuple[list, list]:
    """The pruned model passes the full checker and runs on fresh inputs with the original's
    output names, shapes and types, every float output finite. Returns (got, ref)."""
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    ref, got = run(original, FRESH), run(pruned, FRESH)
    for a, b in zip(got, ref):
        for x, y in zip(*((a, b) if isinstance(a, list) else ([a], [b]))):  # a sequence output: its tensors
            assert x.shape == y.shape and x.dtype == y.dtype
            if x.dtype.kind == "f":
                assert np.isfinite(x).all()
        assert not isinstance(a, list) or len(a) == len(b)
    return got, ref


def group_of(report: dict, producer: str) -> dict:
    return next(g for g in report["groups"] if producer in g["producers"])


def conv_rows(model: onnx.ModelProto, name: str) -> int:
    return next(i for i in model.graph.initializer if i.name == name).dims[0]


# -- constructs that pass channels through (conv1 stays prunable) ----------------------------

def _unsq(n: Net, x: str, axes: list[int]) -> str:
    return n.node("Unsqueeze", [x, n.const(axes, np.int64)])


def _sq(n: Net, x: str, axes: list[int]) -> str:
    return n.node("Squeeze", [x, n.const(axes, np.int64)])


def _const_op(op: str, shape: tuple, const_first: bool = False) -> Construct:
    def f(n: Net, a: str):
        k = n.const(n.rng.uniform(0.5, 1.5, shape))
        return n.node(op, [k, a] if const_first else [a, k]), C
    return f


def _nhwc_const(shape: tuple) -> Construct:
    def f(n: Net, a: str):
        t = n.node("Transpose", [a], perm=[0, 2, 3, 1])
        t = n.node("Mul", [t, n.const(n.rng.uniform(0.5, 1.5, shape))])
        t = n.node("Add", [t, n.const(n.rng.uniform(-0.5, 0.5, shape))])
        return n.node("Transpose", [t], perm=[0, 3, 1, 2]), C
    return f


def _dropout(opset: int) -> Construct:
    def f(n: Net, a: str):
        if opset < 12:
            return n.node("Dropout", [a], ratio=0.2), C
        return n.node("Dropout", [a, n.const(np.float32(0.3))]), C
    return f


def _cast_chain(n: Net, a: str):
    t = n.node("Cast", [n.node("Identity", [a])], to=TP.FLOAT16)
    t = n.node("Mul", [n.node("Relu", [t]), n.const(n.rng.uniform(0.5, 1.5, (1, C, 1, 1)), np.float16)])
    t = n.node("Cast", [n.node("Cast", [t], to=TP.FLOAT)], to=TP.DOUBLE)
    return n.node("Identity", [n.node("Cast", [t], to=TP.FLOAT)]), C


def _unsqueeze_squeeze(axis: int) -> Construct:
    def f(n: Net, a: str):
        return _sq(n, n.node("Relu", [_unsq(n, a, [axis])]), [axis]), C
    return f


def _spatial_se(n: Net, a: str):
    r = n.node("ReduceMean", [a, n.const([-1, -2], np.int64)], keepdims=0)   # opset 18: axes as input
    return n.node("Mul", [n.node("Sigmoid", [_unsq(n, r, [2, 3])]), a]), C


def _swap_c_h(n: Net, a: str):  # channels on axis 2 for a while
    t = n.node("LeakyRelu", [n.node("Transpose", [a], perm=[0, 2, 1, 3])], alpha=0.1)
    return n.node("Transpose", [t], perm=[0, 2, 1, 3]), C


def _dyn_flatten(how: str, pool: int) -> Head:
    """PyTorch's ``x.view(x.size(0), -1)``: Reshape(t, Concat(batch, [-1])), the batch read
    from Shape(t) by Gather + Unsqueeze, Gather of [0], or Slice(0, 1)."""
    def head(n: Net, y: str) -> None:
        t = n.node("GlobalAveragePool", [y]) if pool == 1 else \
            n.node("AveragePool", [y], kernel_shape=[pool, pool], strides=[pool, pool])
        shape = n.node("Shape", [t])
        if how == "gather":
            batch = _unsq(n, n.node("Gather", [shape, n.const(np.array(0), np.int64)], axis=0), [0])
        elif how == "gather1":
            batch = n.node("Gather", [shape, n.const([0], np.int64)], axis=0)
        else:
            batch = n.node("Slice", [shape, n.const([0], np.int64), n.const([1], np.int64)])
        target = n.node("Concat", [batch, n.const([-1], np.int64)], axis=0)
        n.gemm(n.node("Reshape", [t, target]), D * (16 // pool) ** 2)
    return head


def _squeeze_head(n: Net, y: str) -> None:
    n.gemm(_sq(n, n.node("GlobalAveragePool", [y]), [2, 3]), D)


def _nhwc_matmul_head(n: Net, y: str) -> None:
    t = n.node("ReduceMean", [n.node("Transpose", [y], perm=[0, 2, 3, 1]), n.const([1, 2], np.int64)], keepdims=0)
    t = n.node("MatMul", [t, n.const(n.rng.normal(0, 0.3, (D, 10)))])
    n.nodes.append(H.make_node("Add", [t, n.const(np.zeros(10))], ["y"], name="bias_add"))


def _identity(n: Net, a: str):
    return a, C


# name -> (construct, opset, head, tolerance of the oracle)
def _groupnorm(n: Net, a: str):
    """Two groups of four: conv1's dead channels 4..7 are the second, which goes whole."""
    return n.node("GroupNormalization", [a, n.const(n.rng.uniform(0.5, 1.5, C)), n.const(np.zeros(C))],
                  num_groups=2), C


def _where(n: Net, a: str):
    """A condition per channel, sliced with the kept channels."""
    cond = np.array([True, False] * (C // 2)).reshape(1, C, 1, 1)
    return n.node("Where", [n.const(cond, bool), a, n.const(np.float32(0))]), C


def _depth_to_space(mode: str) -> Construct:
    """DepthToSpace(2) then SpaceToDepth(2): the same C channels again."""
    def f(n: Net, a: str):
        return n.node("SpaceToDepth", [n.node("DepthToSpace", [a], blocksize=2, mode=mode)], blocksize=2), C
    return f


def _axis_op(op: str, **attrs) -> Construct:
    return lambda n, a: (n.node(op, [a], **attrs), C)


PASSTHROUGH: dict[str, tuple] = {
    "baseline": (_identity, 17, gap_head, 1e-4),
    "mul_C11": (_const_op("Mul", (C, 1, 1)), 17, gap_head, 1e-4),
    "add_1C11": (_const_op("Add", (1, C, 1, 1)), 17, gap_head, 1e-4),
    "const_minus_act_1C11": (_const_op("Sub", (1, C, 1, 1), const_first=True), 17, gap_head, 1e-4),
    "div_1111": (_const_op("Div", (1, 1, 1, 1)), 17, gap_head, 1e-4),
    "mul_scalar": (_const_op("Mul", ()), 17, gap_head, 1e-4),
    "pow_1C11": (_const_op("Pow", (1, C, 1, 1)), 17, gap_head, 1e-4),
    "prelu_C11": (_const_op("PRelu", (C, 1, 1)), 17, gap_head, 1e-4),
    # constants that index W, H or every entry: the dead channels stop being constant, so
    # removing them costs a little (not a semantic error)
    "mul_W_vector_on_nchw": (_const_op("Mul", (16,)), 17, gap_head, 3e-2),
    "mul_CHW": (_const_op("Mul", (C, 16, 16)), 17, gap_head, 3e-2),
    "nhwc_C": (_nhwc_const((C,)), 17, gap_head, 1e-4),
    "nhwc_111C": (_nhwc_const((1, 1, 1, C)), 17, gap_head, 1e-4),
    "nhwc_11C": (_nhwc_const((1, 1, C)), 17, gap_head, 1e-4),
    "dropout_op10": (_dropout(10), 10, gap_head, 1e-4),
    "dropout_op12": (_dropout(12), 12, gap_head, 1e-4),
    "dropout_op13": (_dropout(13), 13, gap_head, 1e-4),
    "identity_cast_fp16_double_chain": (_cast_chain, 17, gap_head, 1e-3),
    "unsqueeze_squeeze_axis1": (_unsqueeze_squeeze(1), 17, gap_head, 1e-4),
    "unsqueeze_squeeze_axis2": (_unsqueeze_squeeze(2), 17, gap_head, 1e-4),
    "unsqueeze_squeeze_axis_last": (_unsqueeze_squeeze(-1), 17, gap_head, 1e-4),
    "spatial_se_reduce_keepdims0": (_spatial_se, 18, gap_head, 1e-4),
    "transpose_channels_to_axis2": (_swap_c_h, 17, gap_head, 1e-4),
    "head_dyn_flatten_gather": (_identity, 17, _dyn_flatten("gather", 16), 1e-4),
    "head_dyn_flatten_gather1_4x4": (_identity, 17, _dyn_flatten("gather1", 4), 1e-4),
    "head_dyn_flatten_slice_4x4": (_identity, 17, _dyn_flatten("slice", 4), 1e-4),
    "head_squeeze": (_identity, 17, _squeeze_head, 1e-4),
    "head_nhwc_reducemean_matmul": (_identity, 18, _nhwc_matmul_head, 1e-4),
    # read as mixing channels before session 56
    "groupnorm_op21": (_groupnorm, 21, gap_head, 1e-4),
    "where_per_channel_condition": (_where, 17, gap_head, 1e-4),
    # read as mixing channels before session 58: before opset 13 a Softmax over the last
    # axis normalizes along W alone (each dead channel turns into 1/16 everywhere)
    "softmax_lastaxis_op11": (_axis_op("Softmax", axis=-1), 11, gap_head, 3e-2),
}


@pytest.mark.parametrize("name", list(PASSTHROUGH))
def test_channel_preserving_construct_prunes_exactly_the_dead_channels(name: str) -> None:
    """conv1 and conv2 stay prunable, l1 at keep 0.5 keeps exactly their live channels (the
    per-channel constants, sizes and targets are sliced along), and the pruned model gives
    the original's outputs on fresh inputs."""
    construct, opset, head, tol = PASSTHROUGH[name]
    model = build(construct, opset, head)
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    for conv in ("conv1", "conv2"):
        group = group_of(result.report, conv)
        assert group["frozen"] is None, (conv, group["frozen"])
        assert group["kept_channels"] == LIVE
        assert conv_rows(result.model, f"{conv}.w") == 4
    got, ref = assert_valid(result.model, model)
    assert rel_err(got[0], ref[0]) < tol


BLOCKS = {f"depth_to_space_{mode.lower()}": _depth_to_space(mode) for mode in ("CRD", "DCR")}


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
def test_depth_to_space_then_space_to_depth_goes_in_blocks(mode: str) -> None:
    """DepthToSpace(2) makes 2 channels of conv1's 8 rows: rows 0..3 and 4..7 in CRD mode,
    so the dead rows go and the outputs are the original's; rows c, c + 2, c + 4, c + 6 in
    DCR mode (coupled blocks), so dead and live rows go together and the model stays valid.
    SpaceToDepth froze both before session 57."""
    model = build(BLOCKS[f"depth_to_space_{mode.lower()}"])
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    group = group_of(result.report, "conv1")
    assert group["frozen"] is None and group["channels_before"] == 2 and len(group["kept_channels"]) == 1
    assert conv_rows(result.model, "conv1.w") == 4
    got, ref = assert_valid(result.model, model)
    if mode == "CRD":
        assert group["kept_channels"] == [0] and rel_err(got[0], ref[0]) < 1e-4


# -- constructs that mix channels: conv1's group must freeze ---------------------------------

def _reduce_attention(op: str, keepdims: int, axes_as_input: bool, opset: int) -> Construct:
    """Spatial attention ``a * sigmoid(REDUCE(a, axis=1))``: every channel changes the gate."""
    def f(n: Net, a: str):
        r = n.node(op, [a, n.const([1], np.int64)], keepdims=keepdims) if axes_as_input else \
            n.node(op, [a], axes=[1], keepdims=keepdims)
        if not keepdims:
            r = _unsq(n, r, [1]) if opset >= 13 else n.node("Unsqueeze", [r], axes=[1])
        return n.node("Mul", [a, n.node("Sigmoid", [r])]), C
    return f


def _einsum(n: Net, a: str):
    return n.node("Einsum", [a, n.const(n.rng.normal(0, 0.3, (C, C)))], equation="nchw,oc->nohw"), C


def _gather_channels(n: Net, a: str):
    return n.node("Gather", [a, n.const([7, 6, 5, 4, 3, 2, 1, 0], np.int64)], axis=1), C


def _gather_elements(n: Net, a: str):
    idx = np.broadcast_to(np.array([1, 0, 3, 2, 5, 4, 7, 6]).reshape(1, C, 1, 1), (1, C, 16, 16))
    full = n.node("Expand", [n.const(idx, np.int64), n.node("Shape", [a])])
    return n.node("GatherElements", [a, full], axis=1), C


def _layernorm_nchw(n: Net, a: str):
    return n.node("LayerNormalization", [a, n.const(n.rng.uniform(0.5, 1.5, (C, 16, 16))),
                                         n.const(np.zeros((C, 16, 16)))], axis=1), C


def _layernorm_nhwc(n: Net, a: str):
    t = n.node("Transpose", [a], perm=[0, 2, 3, 1])
    t = n.node("LayerNormalization", [t, n.const(n.rng.uniform(0.5, 1.5, C)), n.const(np.zeros(C))], axis=-1)
    return n.node("Transpose", [t], perm=[0, 3, 1, 2]), C


def _tile(n: Net, a: str):
    return n.node("Tile", [a, n.const([1, 2, 1, 1], np.int64)]), 2 * C


def _cumsum(n: Net, a: str):
    return n.node("CumSum", [a, n.const(np.array(-3), np.int32)], reverse=1), C


def _topk_output(n: Net, a: str):
    values, indices = n.node("TopK", [a, n.const([3], np.int64)], n_out=2, axis=1)
    n.output(values, TP.FLOAT, ["N", 3, 16, 16])
    n.output(indices, TP.INT64, ["N", 3, 16, 16])
    return a, C


def _argmax_output(n: Net, a: str):
    n.output(n.node("ArgMax", [a], axis=1, keepdims=0), TP.INT64, ["N", 16, 16])
    return a, C


def _dropout_mask_output(n: Net, a: str):
    out, mask = n.node("Dropout", [a, n.const(np.float32(0.3))], n_out=2)
    n.output(mask, TP.BOOL, ["N", C, 16, 16])
    return out, C


def _cast_int(n: Net, a: str):
    return n.node("Cast", [n.node("Cast", [a], to=TP.INT32)], to=TP.FLOAT), C


def _pow_activation_exponent(n: Net, a: str):
    return n.node("Pow", [n.const(n.rng.uniform(1, 2, (1, C, 1, 1))), a]), C


def _unsqueeze_then_3d(op: str) -> Construct:
    """Unsqueeze(axis 1) makes the channels a spatial axis of a 3-D op that mixes them."""
    def f(n: Net, a: str):
        t = _unsq(n, a, [1])
        if op == "Conv":
            t = n.node("Conv", [t, n.const(n.rng.normal(0, 0.3, (1, 1, 3, 1, 1)))], kernel_shape=[3, 1, 1],
                       pads=[1, 0, 0, 1, 0, 0])
        else:
            t = n.node(op, [t], kernel_shape=[3, 1, 1], pads=[1, 0, 0, 1, 0, 0])
        return _sq(n, t, [1]), C
    return f


def _branch(name: str, op: str, src: str) -> onnx.GraphProto:
    return H.make_graph([H.make_node(op, [src], [f"{name}_out"])], name, [],
                        [H.make_tensor_value_info(f"{name}_out", TP.FLOAT, None)])


def _if(n: Net, a: str):
    n.nodes.append(H.make_node("If", [n.const(np.array(True), bool)], ["if_out"], name="if",
                               then_branch=_branch("then", "Relu", a), else_branch=_branch("else", "Neg", a)))
    return "if_out", C


def _if_reads_conv1_bias(n: Net, a: str):
    n.nodes.append(H.make_node("If", [n.const(np.array(True), bool)], ["if_bias"], name="if",
                               then_branch=_branch("then", "Identity", "conv1.b"),
                               else_branch=_branch("else", "Neg", "conv1.b")))
    n.output("if_bias", TP.FLOAT, [C])
    return a, C


def _loop(n: Net, a: str):
    body = H.make_graph(
        [H.make_node("Add", ["v_in", a], ["v_out"]), H.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [H.make_tensor_value_info("i", TP.INT64, []), H.make_tensor_value_info("cond_in", TP.BOOL, []),
         H.make_tensor_value_info("v_in", TP.FLOAT, None)],
        [H.make_tensor_value_info("cond_out", TP.BOOL, []), H.make_tensor_value_info("v_out", TP.FLOAT, None)])
    n.nodes.append(H.make_node("Loop", [n.const(np.array(2), np.int64), "", a], ["loop_out"], name="loop", body=body))
    return "loop_out", C


def _scan(n: Net, a: str):
    body = H.make_graph([H.make_node("Relu", ["s_in"], ["s_out"])], "scan_body",
                        [H.make_tensor_value_info("s_in", TP.FLOAT, None)],
                        [H.make_tensor_value_info("s_out", TP.FLOAT, None)])
    n.nodes.append(H.make_node("Scan", [a], ["scan_out"], name="scan", body=body, num_scan_inputs=1))
    return "scan_out", C


def _ms_pad(n: Net, a: str):
    # onnxruntime's own Pad: a name the analysis follows in the default domain only
    return n.node("Pad", [a, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.int64)], domain="com.microsoft"), C


def _ms_fast_gelu(n: Net, a: str):
    # onnxruntime's FastGelu, which the analysis does not read (its optional bias runs along the last axis)
    return n.node("FastGelu", [a], domain="com.microsoft"), C


def _sequence(n: Net, a: str):
    return n.node("ConcatFromSequence", [n.node("SequenceConstruct", [a, a])], axis=1), 2 * C


def _split_to_sequence(n: Net, a: str):
    seq = n.node("SplitToSequence", [a, n.const([4, 4], np.int64)], axis=1)
    return n.node("ConcatFromSequence", [seq], axis=1), C


MS = (("com.microsoft", 1),)
# name -> (construct, opset, domains, a word the frozen reason must contain)
MIXING: dict[str, tuple] = {
    "einsum_nchw_oc": (_einsum, 17, (), "Einsum"),
    "gather_axis1": (_gather_channels, 17, (), "Gather"),
    "gather_elements_axis1": (_gather_elements, 17, (), "GatherElements"),
    "reducesum_axis1_keep0_attr_op11": (_reduce_attention("ReduceSum", 0, False, 11), 11, (), "ReduceSum"),
    "reducesum_axis1_keep1_input_op13": (_reduce_attention("ReduceSum", 1, True, 13), 13, (), "ReduceSum"),
    "reducemax_axis1_keep0_attr": (_reduce_attention("ReduceMax", 0, False, 17), 17, (), "ReduceMax"),
    "reducel2_axis1_keep1_input_op18": (_reduce_attention("ReduceL2", 1, True, 18), 18, (), "ReduceL2"),
    "reducemean_axis1_keep0_input_op18": (_reduce_attention("ReduceMean", 0, True, 18), 18, (), "ReduceMean"),
    "softmax_axis1_op13": (_axis_op("Softmax", axis=1), 13, (), "Softmax"),
    "logsoftmax_axis1_op11": (_axis_op("LogSoftmax", axis=1), 11, (), "LogSoftmax"),
    "hardmax_axis1": (_axis_op("Hardmax", axis=1), 13, (), "Hardmax"),
    "lpnormalization_axis1": (_axis_op("LpNormalization", axis=1), 17, (), "LpNormalization"),
    "layernorm_axis1_nchw": (_layernorm_nchw, 17, (), "LayerNormalization"),
    "layernorm_lastaxis_nhwc": (_layernorm_nhwc, 17, (), "LayerNormalization"),
    "tile_channels": (_tile, 17, (), "Tile"),
    "cumsum_axis1_reverse": (_cumsum, 17, (), "CumSum"),
    "topk_axis1_outputs": (_topk_output, 17, (), "TopK"),
    "argmax_axis1_output": (_argmax_output, 17, (), "ArgMax"),
    "dropout_mask_output": (_dropout_mask_output, 13, (), "Dropout"),
    "cast_to_int": (_cast_int, 17, (), "Cast"),
    "pow_activation_exponent": (_pow_activation_exponent, 17, (), "Pow"),
    "unsqueeze1_maxpool3d_over_channels": (_unsqueeze_then_3d("MaxPool"), 17, (), "maxpool"),
    "unsqueeze1_averagepool3d_over_channels": (_unsqueeze_then_3d("AveragePool"), 17, (), "averagepool"),
    "unsqueeze1_conv3d_over_channels": (_unsqueeze_then_3d("Conv"), 17, (), "conv"),
    "if_reads_outer_scope": (_if, 17, (), "If"),
    "if_reads_conv1_bias": (_if_reads_conv1_bias, 17, (), "shared"),
    "loop_reads_outer_scope": (_loop, 17, (), "Loop"),
    "scan_over_batch": (_scan, 17, (), "Scan"),
    "ms_pad": (_ms_pad, 17, MS, "Pad"),
    "ms_fast_gelu": (_ms_fast_gelu, 17, MS, "FastGelu"),
    "sequence_construct_concat": (_sequence, 17, (), "SequenceConstruct"),
    "split_to_sequence_concat": (_split_to_sequence, 17, (), "SplitToSequence"),
}


@pytest.mark.parametrize("name", list(MIXING))
def test_channel_mixing_construct_freezes_conv1_with_a_reason(name: str) -> None:
    """conv1's channels are frozen (whole weight kept) with a report reason naming what
    froze them; conv2 still loses its dead channels; every output is the original's."""
    construct, opset, domains, word = MIXING[name]
    model = build(construct, opset, domains=domains)
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    frozen = group_of(result.report, "conv1")["frozen"]
    assert frozen and word.lower() in frozen.lower(), frozen
    assert conv_rows(result.model, "conv1.w") == C
    assert group_of(result.report, "conv2")["kept_channels"] == LIVE
    got, ref = assert_valid(result.model, model)
    for a, b in zip(got, ref):
        if a.dtype.kind == "f":
            assert rel_err(a, b) < 1e-4
        else:
            np.testing.assert_array_equal(a, b)


def _reads_channel_count(form: str) -> Head:
    """A flatten whose feature count is read from the tensor's shape (its channel entry):
    Gather([1]), Gather([-3]), Shape(start=1, end=2), Size / batch. A count Gathered from
    the Shape is the kept one at run time (followed since session 58); the others are not
    followed, so conv2's group must freeze."""
    def head(n: Net, y: str) -> None:
        t = n.node("GlobalAveragePool", [y])
        batch = _unsq(n, n.node("Gather", [n.node("Shape", [t]), n.const(np.array(0), np.int64)], axis=0), [0])
        if form in ("gather1", "gather-3"):
            count = n.node("Gather", [n.node("Shape", [t]), n.const([1 if form == "gather1" else -3], np.int64)],
                           axis=0)
        elif form == "shape_start":
            count = n.node("Shape", [t], start=1, end=2)
        else:
            count = n.node("Div", [n.node("Size", [t]), batch])
        n.gemm(n.node("Reshape", [t, n.node("Concat", [batch, count], axis=0)]), D)
    return head


@pytest.mark.parametrize("form", ["gather1", "gather-3"])
def test_flatten_by_a_gathered_channel_count_loses_the_dead_channels(form: str) -> None:
    model = build(_identity, 17, _reads_channel_count(form))
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    assert group_of(result.report, "conv2")["kept_channels"] == LIVE
    assert conv_rows(result.model, "conv2.w") == len(LIVE)
    got, ref = assert_valid(result.model, model)
    assert rel_err(got[0], ref[0]) < 1e-4


@pytest.mark.parametrize("form", ["shape_start", "size"])
def test_flatten_that_reads_the_channel_count_freezes_that_group(form: str) -> None:
    model = build(_identity, 17, _reads_channel_count(form))
    result = onnx_eprune.prune(model, CALIB, device="cpu", keep_ratio=0.5, method="l1")
    frozen = group_of(result.report, "conv2")["frozen"]
    assert frozen, "conv2's channel count is baked into the Reshape target"
    assert conv_rows(result.model, "conv2.w") == D
    assert group_of(result.report, "conv1")["kept_channels"] == LIVE
    got, ref = assert_valid(result.model, model)
    assert rel_err(got[0], ref[0]) < 1e-4


# -- every target, method and mode ------------------------------------------------------------

OPTIONS = {
    "keep_all": dict(keep_ratio=1.0),
    "sparsity_entropic": dict(sparsity=0.1),
    "flops_lasso_oneshot": dict(flops_reduction=0.1, method="lasso", mode="oneshot"),
    "keep_thinet_oneshot": dict(keep_ratio=0.5, method="thinet", mode="oneshot"),
    "keep_random_no_refit": dict(keep_ratio=0.6, method="random", reconstruct=False),
}
SMOKE = ["baseline", "nhwc_C", "identity_cast_fp16_double_chain", "unsqueeze_squeeze_axis1", "dropout_op12",
         "head_dyn_flatten_gather1_4x4", "reducesum_axis1_keep1_input_op13", "softmax_axis1_op13",
         "layernorm_lastaxis_nhwc", "groupnorm_op21", "depth_to_space_crd", "depth_to_space_dcr", "topk_axis1_outputs",
         "where_per_channel_condition",
         "if_reads_outer_scope", "loop_reads_outer_scope", "ms_pad", "sequence_construct_concat"]


def _smoke_model(name: str) -> onnx.ModelProto:
    if name in BLOCKS:
        return build(BLOCKS[name])
    if name in PASSTHROUGH:
        construct, opset, head, _ = PASSTHROUGH[name]
        return build(construct, opset, head)
    construct, opset, domains, _ = MIXING[name]
    return build(construct, opset, domains=domains)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", SMOKE)
def test_construct_survives_every_target_method_and_mode(name: str, option: str) -> None:
    """A valid model with the original's outputs (the same function at keep_ratio=1.0), or
    a clear EPruneError where a target is out of reach of the prunable groups."""
    model = _smoke_model(name)
    try:
        result = onnx_eprune.prune(model, CALIB, device="cpu", **OPTIONS[option])
    except UsageError:
        raise
    except EPruneError as exc:
        assert "out of reach" in str(exc) and option.startswith(("sparsity", "flops")), exc
        return
    got, ref = assert_valid(result.model, model)
    if option == "keep_all":
        for a, b in zip(got, ref):
            assert rel_err(a.astype(np.float64), b.astype(np.float64)) < 1e-4


# -- fixed bugs: graph outputs that are not (batch, ...) numeric tensors --------------------

def _extra_output(kind: str) -> Construct:
    """conv1's activation goes on, and an extra graph output is computed beside it."""
    def f(n: Net, a: str):
        if kind == "scalar":  # a mean over everything: one float for the batch, rank 0
            n.output(n.node("ReduceMean", [a], keepdims=0), TP.FLOAT, [])
        elif kind == "sequence":
            out = n.node("SequenceConstruct", [a, a])
            n.outputs.append(H.make_tensor_sequence_value_info(out, TP.FLOAT, ["N", C, 16, 16]))
        elif kind == "string":
            peak = n.node("ReduceMax", [a, n.const([1, 2, 3], np.int64)], keepdims=0)
            n.output(n.node("Cast", [peak], to=TP.STRING), TP.STRING, ["N"])
        elif kind == "nms":  # selected_indices (K, 3): K depends on the data, no batch axis
            first4 = n.node("Slice", [a, n.const([0], np.int64), n.const([4], np.int64), n.const([1], np.int64)])
            boxes = n.node("Transpose", [n.node("Reshape", [first4, n.const([0, 4, -1], np.int64)])], perm=[0, 2, 1])
            scores = n.node("Sigmoid", [n.node("ReduceMean", [a, n.const([1], np.int64)], keepdims=1)])
            scores = n.node("Reshape", [scores, n.const([0, 1, -1], np.int64)])
            selected = n.node("NonMaxSuppression", [boxes, scores, n.const([5], np.int64), n.const([0.5]),
                                                    n.const([0.55])])
            n.output(selected, TP.INT64, ["K", 3])
        return a, C
    return f


def _prune_and_check(kind: str, options: dict) -> None:
    model = build(_extra_output(kind), 18)
    run(model, FRESH)  # onnxruntime runs the original as it is
    try:
        result = onnx_eprune.prune(model, CALIB, device="cpu", **options)
    except EPruneError as exc:  # a clear refusal would do; it must not be an "internal error"
        assert "internal error" not in str(exc), exc
        return
    assert_valid(result.model, model)


@pytest.mark.parametrize("options", [dict(sparsity=0.3), dict(keep_ratio=0.5, mode="oneshot")],
                         ids=["sparsity", "oneshot"])
def test_scalar_graph_output_does_not_crash(options: dict) -> None:
    """A model with an extra rank-0 output (a mean over the whole batch, as a score or
    regulariser; checker-valid, onnxruntime runs it) prunes, or is refused with a clear
    EPruneError. (keep_ratio in sequential mode pruned it even before the fix.)

    Was: an internal error, from a TypeError ('len() of unsized object') with ``sparsity`` and a
    ValueError ('zero-dimensional arrays cannot be concatenated') with ``mode="oneshot"``."""
    _prune_and_check("scalar", options)


def test_sequence_graph_output_does_not_crash() -> None:
    """A model with an extra ``seq(tensor(float))`` graph output (SequenceConstruct of an
    activation) prunes, or is refused with a clear EPruneError.

    Was: AttributeError "'list' object has no attribute 'shape'" ('nbytes' with a sparsity
    target)."""
    _prune_and_check("sequence", dict(keep_ratio=0.5))


def test_string_graph_output_does_not_crash() -> None:
    """A model with an extra (N,) string output (Cast of a score to STRING) prunes, or is
    refused with a clear EPruneError.

    Was: with a sparsity target, TypeError "unsupported operand type(s) for -: 'float' and
    'str'" from the output gains (keep_ratio and one-shot runs passed)."""
    _prune_and_check("string", dict(sparsity=0.3))


@pytest.mark.parametrize("options", [dict(sparsity=0.3), dict(keep_ratio=0.5, mode="oneshot")],
                         ids=["sparsity", "oneshot"])
def test_output_without_leading_batch_axis_prunes(options: dict) -> None:
    """A batched model with an extra NonMaxSuppression output ``selected_indices`` (K, 3), K
    data-dependent (SSD-style exports), prunes: the NMS reads only frozen channels, so its
    output does not even change.

    Was: EPruneError "internal error: output 'nonmaxsuppression..' changed shape (48, 3) ->
    (240, 3)": axis 0 of every output was taken as the batch."""
    _prune_and_check("nms", options)


@pytest.mark.parametrize("options", [dict(sparsity=0.3), dict(keep_ratio=0.5), dict(keep_ratio=0.5, mode="oneshot")],
                         ids=["sparsity", "keep", "oneshot"])
def test_a_model_whose_only_output_is_a_scalar_is_measured_on_its_last_layer(options: dict) -> None:
    """conv -> Relu -> conv -> ReduceMean over everything: no graph output has a row per
    sample, so the pruning is measured (and the sensitivities taken) on the last conv's
    output, as for a detector without a batch axis. Was: TypeError from the sensitivities,
    or onnxruntime's 'At least one output should be requested'."""
    rng = np.random.default_rng(0)
    nodes = [H.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="c1"),
             H.make_node("Relu", ["a"], ["b"], name="r1"),
             H.make_node("Conv", ["b", "w2"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="c2"),
             H.make_node("ReduceMean", ["c"], ["y"], keepdims=0, name="mean")]
    graph = H.make_graph(
        nodes, "scalar_only", [H.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 16, 16])],
        [H.make_tensor_value_info("y", TP.FLOAT, [])],
        initializer=[NH.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
                     NH.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "w2")])
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", 13)])
    model.ir_version = 8
    result = onnx_eprune.prune(model, CALIB, device="cpu", **options)
    assert list(result.report["fidelity_on_calibration"]["outputs"]) == ["c"]
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert_valid(result.model, model)
