"""onnxruntime's fused operators (domain ``com.microsoft``) as the standard ops they stand
for, and back.

A model that onnxruntime's graph optimizer saved at its extended level
(``SessionOptions.optimized_model_filepath``) holds a Conv and its activation as one
``FusedConv``, a Gemm and its activation as one ``FusedGemm``, ``x * sigmoid(a x)`` as a
``QuickGelu`` and the erf GELU as a ``Gelu``. The channel analysis reads standard ops only,
so :func:`unfuse` writes each such node as the standard nodes it computes (in place,
keeping the fused node's name on its Conv or Gemm, so reports and ``--exclude`` call the
layer as the input does) and records it; :func:`fuse_again` puts the fused nodes back into
the pruned model, which then holds the ops the input held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .groups import node_label
from .model_io import initializer_map, onnx_opset

MS_DOMAIN = "com.microsoft"

# FusedConv's activations and the standard attributes its activation_params give, in order
_CONV_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}
# FusedGemm's activations: its attributes activation_<name> are the activation's <name>
_GEMM_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Elu", "Selu", "Softplus",
                     "ThresholdedRelu")
_GEMM_ATTRIBUTES = ("alpha", "beta", "transA", "transB")


@dataclass
class Fusion:
    """One fused node :func:`unfuse` wrote as standard nodes."""

    node: onnx.NodeProto  # the fused node as the input held it
    names: list[str]      # the standard nodes standing for it, in graph order
    constants: list[str]  # the initializers made for them


def unfuse(model: onnx.ModelProto) -> list[Fusion]:
    """Write every FusedConv, FusedGemm, QuickGelu and Gelu of ``model``'s main graph as
    standard ops, in place (nodes must be named: :func:`~onnx_eprune.graph.model_io.normalize`
    names them). A node whose activation, attributes or element type this cannot tell is
    left as it is (the analysis then freezes its channels). Returns what was written, for
    :func:`fuse_again`."""
    if not any(node.domain == MS_DOMAIN for node in model.graph.node):
        return []
    taken = _names(model.graph)
    fusions = _rewrite(model, taken, ("FusedConv", "FusedGemm"))
    if any(node.domain == MS_DOMAIN and node.op_type in ("QuickGelu", "Gelu") for node in model.graph.node):
        # their constants take the type of their input, which only inference tells
        fusions += _rewrite(model, taken, ("QuickGelu", "Gelu"), _ElementTypes(model))
    return fusions


def fuse_again(model: onnx.ModelProto, fusions: list[Fusion]) -> None:
    """Put back, in place, the fused nodes :func:`unfuse` wrote as ``fusions``, each
    with the inputs and attributes its Conv or Gemm has now (pruning cuts weights, may add
    a bias and changes a grouped Conv's ``group``). A fusion whose nodes the model no
    longer holds as written stays in standard ops, which compute the same."""
    if not fusions:
        return
    graph = model.graph
    where = {node.name: i for i, node in enumerate(graph.node)}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    unused: set[str] = set()
    for fusion in fusions:
        if not all(name in where for name in fusion.names):
            continue
        nodes = [graph.node[where[name]] for name in fusion.names]
        inner = [node.output[0] for node in nodes[:-1]]
        chained = all(later.input[0] == out for out, later in zip(inner, nodes[1:]))
        if not chained or any(readers.get(name, 0) != 1 or name in outputs for name in inner):
            continue
        fused = onnx.NodeProto()
        fused.CopyFrom(fusion.node)
        head = nodes[0]
        if head.op_type in ("Conv", "Gemm"):
            inputs = list(head.input) + [""] * (3 - len(head.input))
            if len(nodes) > 1 and nodes[1].op_type == "Add" and fusion.node.op_type == "FusedConv":
                inputs.append(nodes[1].input[1])  # the sum input Z
            while inputs and not inputs[-1]:
                inputs.pop()
            del fused.input[:]
            fused.input.extend(inputs)
            now = {a.name: a for a in head.attribute}  # in the fused node's order, with the head's values
            attributes = [now.pop(a.name, a) for a in fused.attribute] + list(now.values())
            del fused.attribute[:]
            fused.attribute.extend(attributes)
        else:  # QuickGelu, Gelu: element-wise on the head's input
            fused.input[0] = head.input[0]
        del fused.output[:]
        fused.output.extend(nodes[-1].output)
        replaced[where[fusion.names[0]]] = fused
        dropped.update(where[name] for name in fusion.names[1:])
        unused.update(fusion.constants)
    if not replaced:
        return
    kept_nodes = [replaced.get(i, node) for i, node in enumerate(graph.node) if i not in dropped]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    still_read = {name for node in graph.node for name in node.input}
    gone = unused - still_read
    if gone:
        inits = [init for init in graph.initializer if init.name not in gone]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        inputs = [vi for vi in graph.input if vi.name not in gone]  # IR < 4 lists initializers as inputs
        del graph.input[:]
        graph.input.extend(inputs)


def _rewrite(model: onnx.ModelProto, taken: set[str], ops: tuple[str, ...],
             types: _ElementTypes | None = None) -> list[Fusion]:
    """Write the nodes of ``ops`` in standard form (the element types ``types`` tell those
    that need typed constants)."""
    graph = model.graph
    inits = initializer_map(model)
    opset = onnx_opset(model)
    fusions: list[Fusion] = []
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    for index, node in enumerate(graph.node):
        parts = None
        if node.domain == MS_DOMAIN and node.op_type in ops:
            parts = _standard(node, index, inits, opset, types, taken)
        if parts is None:
            nodes.append(node)
            continue
        new_nodes, new_constants = parts
        nodes.extend(new_nodes)
        constants.extend(new_constants)
        fusions.append(Fusion(_copy(node), [n.name for n in new_nodes], [c.name for c in new_constants]))
    if fusions:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(constants)
        if model.ir_version < 4:  # initializers must be graph inputs there
            graph.input.extend(helper.make_tensor_value_info(c.name, c.data_type, c.dims) for c in constants)
    return fusions


def _standard(node: onnx.NodeProto, index: int, inits, opset: int, types: _ElementTypes | None,
              taken: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
    """The standard nodes and constants computing ``node``, or None where this cannot tell."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name = node_label(node, index)

    def fresh(base: str) -> str:
        label, k = base, 1
        while label in taken:
            label, k = f"{base}.{k}", k + 1
        taken.add(label)
        return label

    if node.op_type in ("FusedConv", "FusedGemm"):
        if not node.input or len(node.input) < 2 or node.input[1] not in inits:
            return None
        dtype = inits[node.input[1]].data_type
        conv = node.op_type == "FusedConv"
        activation = attrs.get("activation", b"")
        activation = activation.decode() if isinstance(activation, bytes) else str(activation)
        if conv:
            act = _conv_activation(activation, list(attrs.get("activation_params", [])), opset)
            own = [a for a in node.attribute if a.name not in ("activation", "activation_params")]
            inputs = [n for n in node.input[:3]]
            sum_input = node.input[3] if len(node.input) > 3 and node.input[3] else None
        else:
            act = _gemm_activation(activation, attrs)
            own = [a for a in node.attribute if a.name in _GEMM_ATTRIBUTES]
            inputs = list(node.input[:3])
            sum_input = None
        if act is None:
            return None
        while inputs and not inputs[-1]:
            inputs.pop()
        chain: list[tuple[str, list[str], dict, list[tuple[str, float]]]] = []
        if sum_input is not None:
            chain.append(("Add", [sum_input], {}, []))
        if act[0]:
            chain.append(act)
        head = onnx.NodeProto()
        head.op_type = "Conv" if conv else "Gemm"
        head.name = name
        head.input.extend(inputs)
        head.attribute.extend(own)
        return _chain(head, chain, node.output[0], dtype, fresh)
    x = node.input[0] if node.input else ""
    alpha = float(attrs.get("alpha", 1.702))
    dtype = types.get(x) if types is not None and x else None
    if dtype is None and not (node.op_type == "QuickGelu" and alpha == 1.0):  # SiLU needs no constant
        return None
    if node.op_type == "QuickGelu":  # x * sigmoid(alpha x)
        steps = [] if alpha == 1.0 else [("Mul", [], {}, [("alpha", alpha)])]
        steps += [("Sigmoid", [], {}, []), ("Mul", [x], {}, [])]
    elif node.op_type == "Gelu":  # 0.5 x (1 + erf(x / sqrt 2))
        steps = [("Div", [], {}, [("sqrt2", float(np.sqrt(2.0)))]), ("Erf", [], {}, []),
                 ("Add", [], {}, [("one", 1.0)]), ("Mul", [x], {}, []), ("Mul", [], {}, [("half", 0.5)])]
    else:
        return None
    first, *rest = steps
    head = onnx.NodeProto()
    head.op_type = first[0]
    head.name = name
    head.input.append(x)
    nodes, constants = _chain(head, rest, node.output[0], dtype, fresh)
    for key, value in first[3]:  # the head's own constant
        constants.insert(0, _scalar(fresh(f"{name}/{key}"), value, dtype))
        nodes[0].input.append(constants[0].name)
    return nodes, constants


def _chain(head: onnx.NodeProto, steps, output: str, dtype: int | None, fresh) -> tuple[list, list]:
    """``head`` followed by ``steps`` (op, extra inputs, attributes, constants as (key,
    value)), each reading the one before; the last writes ``output``."""
    nodes, constants = [head], []
    for op, extra, attributes, consts in steps:
        prev = nodes[-1]
        prev.output.append(fresh(f"{head.name}/{prev.op_type}_output"))
        step = helper.make_node(op, [prev.output[0], *extra], [], name=fresh(f"{head.name}/{op}"), **attributes)
        for key, value in consts:
            constant = _scalar(fresh(f"{head.name}/{key}"), value, dtype)
            constants.append(constant)
            step.input.append(constant.name)
        nodes.append(step)
    nodes[-1].output.append(output)
    return nodes, constants


def _conv_activation(activation: str, params: list[float], opset: int):
    """FusedConv's ``activation`` and ``activation_params`` as a chain step, ("", ...)
    for none, or None where unknown."""
    if not activation:
        return ("", [], {}, [])
    keys = _CONV_ACTIVATIONS.get(activation)
    if keys is None or len(params) < len(keys):
        return None
    values = dict(zip(keys, params))
    if activation == "Clip":
        if opset < 11:  # bounds were attributes before opset 11
            return ("Clip", [], values, [])
        return ("Clip", [], {}, [("min", values["min"]), ("max", values["max"])])
    return (activation, [], values, [])


def _gemm_activation(activation: str, attrs: dict):
    if not activation:
        return ("", [], {}, [])
    if activation not in _GEMM_ACTIVATIONS:
        return None
    prefix = "activation_"
    return (activation, [], {k[len(prefix):]: v for k, v in attrs.items() if k.startswith(prefix)}, [])


def _scalar(name: str, value: float, dtype: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=helper.tensor_dtype_to_np_dtype(dtype)), name)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every node and value name of ``graph``: new ones must differ from them."""
    names = {node.name for node in graph.node} | {i.name for i in graph.initializer}
    names |= {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


# ops whose first output has the element type of their first input (those that models
# between convolutions hold): element types cross the fused ops inference stops at
_SAME_TYPE = {"Abs", "Add", "AveragePool", "BatchNormalization", "Celu", "Clip", "Concat", "Conv", "ConvTranspose",
              "DepthToSpace", "Div", "Dropout", "Elu", "Erf", "Exp", "Expand", "FastGelu", "Flatten", "FusedConv",
              "FusedGemm", "FusedMatMul", "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
              "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
              "LayerNormalization", "LeakyRelu", "LRN", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mul",
              "Neg", "Pad", "Pow", "PRelu", "QuickGelu", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum",
              "Relu", "Reshape", "Resize", "Selu", "Sigmoid", "Slice", "Softmax", "Softplus", "Softsign",
              "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Unsqueeze",
              "Upsample"}


class _ElementTypes:
    """Element types of a model's values: as ONNX shape inference finds them, and behind a
    fused op (where inference stops) from the value the ops since the last known one
    carried their type from."""

    def __init__(self, model: onnx.ModelProto):
        self.types: dict[str, int] = {}
        try:
            graph = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # a model too large to serialise: inference cannot help
            graph = model.graph
        self.types.update((i.name, i.data_type) for i in graph.initializer)
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
        self.producer = {out: node for node in model.graph.node
                         for out in (node.output if node.op_type == "Split" else node.output[:1]) if out}

    def get(self, name: str) -> int | None:
        seen = set()
        while name not in self.types:
            node = self.producer.get(name)
            if node is None or node.op_type not in _SAME_TYPE or not node.input or name in seen:
                return None
            seen.add(name)
            name = node.input[0]
        return self.types[name]
