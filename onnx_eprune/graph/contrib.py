"""onnxruntime's fused layers (domain ``com.microsoft``) as the standard ops they stand
for, and back.

A model that onnxruntime's graph optimizer saved at its extended level
(``SessionOptions.optimized_model_filepath``) holds a Conv, the Add of a residual and the
activation after them as one ``FusedConv``, and a Gemm and its activation as one
``FusedGemm``. The channel analysis and the rewrite read a layer's weights from standard
Conv and Gemm nodes, so :func:`unfuse` writes each such node as the standard nodes it
computes (in place, the Conv or Gemm keeping the fused node's name, so reports and
``--exclude`` call the layer as the input does) and records it; :func:`fuse_again` puts
the fused nodes back into the pruned model, which then holds the ops the input held. The
element-wise activations onnxruntime writes (QuickGelu, Gelu) need no rewriting: the
analysis reads them as it reads Relu (``CONTRIB_UNARY``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .groups import node_label
from .model_io import defined_names, initializer_map, onnx_opset, remove_initializers

MS_DOMAIN = "com.microsoft"
# the domain of the blocked-layout ops onnxruntime's ORT_ENABLE_ALL level writes for x86 CPUs
NCHWC_DOMAIN = "com.microsoft.nchwc"
# onnxruntime's element-wise activations of one input: channel c in is channel c out
CONTRIB_UNARY = frozenset({"QuickGelu", "Gelu"})

# FusedConv's activations and the standard attributes its activation_params give, in order
_CONV_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}
# FusedGemm's activations: its attributes activation_<name> are the activation's <name>
_GEMM_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Elu", "Selu", "Softplus",
                     "ThresholdedRelu")
_GEMM_ATTRIBUTES = ("alpha", "beta", "transA", "transB")
_ACTIVATION_PREFIX = "activation_"


@dataclass
class Fusion:
    """One fused node :func:`unfuse` wrote as standard nodes."""

    node: onnx.NodeProto  # the fused node as the input held it
    names: list[str]      # the standard nodes standing for it, in graph order: Conv or Gemm first
    constants: list[str]  # the initializers made for them (Clip's bounds)


def unfuse(model: onnx.ModelProto) -> list[Fusion]:
    """Write every FusedConv and FusedGemm of ``model``'s main graph as its Conv or Gemm, the
    Add of its sum input and its activation, in place. A node whose weight is no
    initializer or whose activation this does not know is left as it is (the analysis then
    freezes its channels). Returns what was written, for :func:`fuse_again`."""
    graph = model.graph
    if not any(node.domain == MS_DOMAIN and node.op_type in ("FusedConv", "FusedGemm") for node in graph.node):
        return []
    taken = _names(graph)
    inits = initializer_map(model)
    opset = onnx_opset(model)
    fusions: list[Fusion] = []
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    for index, node in enumerate(graph.node):
        parts = _standard(node, index, inits, opset, taken) if node.domain == MS_DOMAIN else None
        if parts is None:
            nodes.append(node)
            continue
        new_nodes, new_constants = parts
        nodes.extend(new_nodes)
        constants.extend(new_constants)
        original = onnx.NodeProto()
        original.CopyFrom(node)
        fusions.append(Fusion(original, [n.name for n in new_nodes], [c.name for c in new_constants]))
    if fusions:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(constants)
        if model.ir_version < 4:  # initializers must be graph inputs there
            graph.input.extend(helper.make_tensor_value_info(c.name, c.data_type, c.dims) for c in constants)
    return fusions


def fuse_again(model: onnx.ModelProto, fusions: list[Fusion]) -> None:
    """Put back, in place, the fused nodes :func:`unfuse` wrote as ``fusions``, each with the
    inputs and attributes its Conv or Gemm has now (pruning cuts weights, may add a bias
    and changes a grouped Conv's ``group``). A fusion whose nodes the model no longer holds
    as written stays in standard ops, which compute the same."""
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
        head = nodes[0]
        inputs = list(head.input) + [""] * (3 - len(head.input))
        if len(nodes) > 1 and nodes[1].op_type == "Add":
            inputs.append(nodes[1].input[1])  # FusedConv's sum input Z
        while inputs and not inputs[-1]:
            inputs.pop()
        fused = onnx.NodeProto()
        fused.CopyFrom(fusion.node)
        del fused.input[:]
        fused.input.extend(inputs)
        now = {a.name: a for a in head.attribute}  # in the fused node's order, with the head's values
        attributes = [now.pop(a.name, a) for a in fused.attribute] + list(now.values())
        del fused.attribute[:]
        fused.attribute.extend(attributes)
        del fused.output[:]
        fused.output.extend(nodes[-1].output)
        replaced[where[fusion.names[0]]] = fused
        dropped.update(where[name] for name in fusion.names[1:])
        unused.update(fusion.constants)
    if not replaced:
        return
    kept = [replaced.get(i, node) for i, node in enumerate(graph.node) if i not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    remove_initializers(graph, unused - {name for node in graph.node for name in node.input})


def _standard(node: onnx.NodeProto, index: int, inits, opset: int,
              taken: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
    """The standard nodes and constants computing the FusedConv or FusedGemm ``node``, or
    None where this cannot tell."""
    conv = node.op_type == "FusedConv"
    if node.op_type not in ("FusedConv", "FusedGemm") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activation = attrs.get("activation", b"")
    activation = activation.decode() if isinstance(activation, bytes) else str(activation)
    if conv:
        act = _conv_activation(activation, list(attrs.get("activation_params", [])), opset)
        own = [a for a in node.attribute if a.name not in ("activation", "activation_params")]
    else:
        act = _gemm_activation(activation, attrs)
        own = [a for a in node.attribute if a.name in _GEMM_ATTRIBUTES]
    if act is None:
        return None
    name = node_label(node, index)

    def fresh(base: str) -> str:
        label, k = base, 1
        while label in taken:
            label, k = f"{base}.{k}", k + 1
        taken.add(label)
        return label

    head = onnx.NodeProto()
    head.op_type = "Conv" if conv else "Gemm"
    head.name = name
    head.input.extend(node.input[:3])
    while head.input and not head.input[-1]:
        head.input.pop()
    head.attribute.extend(own)
    steps = []
    if conv and len(node.input) > 3 and node.input[3]:
        steps.append(("Add", node.input[3], {}, {}))
    if act[0]:
        steps.append(act)
    nodes, constants = [head], []
    dtype = inits[node.input[1]].data_type
    for op, extra, attributes, bounds in steps:
        previous = nodes[-1]
        previous.output.append(fresh(f"{name}/{previous.op_type}_output"))
        step = helper.make_node(op, [previous.output[0]] + ([extra] if extra else []), [], name=fresh(f"{name}/{op}"),
                                **attributes)
        for key, value in bounds.items():
            constants.append(numpy_helper.from_array(np.array(value, helper.tensor_dtype_to_np_dtype(dtype)),
                                                     fresh(f"{name}/{key}")))
            step.input.append(constants[-1].name)
        nodes.append(step)
    nodes[-1].output.append(node.output[0])
    return nodes, constants


def _conv_activation(activation: str, params: list[float], opset: int) -> tuple | None:
    """FusedConv's ``activation`` and ``activation_params`` as a step (op, extra input,
    attributes, constant inputs), ("", ...) for none, or None where unknown."""
    if not activation:
        return ("", "", {}, {})
    keys = _CONV_ACTIVATIONS.get(activation)
    if keys is None or len(params) < len(keys):
        return None
    values = dict(zip(keys, params))
    if activation == "Clip" and opset >= 11:  # its bounds are inputs from opset 11 on
        return ("Clip", "", {}, values)
    return (activation, "", values, {})


def _gemm_activation(activation: str, attrs: dict) -> tuple | None:
    if not activation:
        return ("", "", {}, {})
    if activation not in _GEMM_ACTIVATIONS:
        return None
    return (activation, "", {k[len(_ACTIVATION_PREFIX):]: v for k, v in attrs.items()
                             if k.startswith(_ACTIVATION_PREFIX)}, {})


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its sub-graphs use, its value_info's and its node
    names: new ones must differ from them."""
    return defined_names(graph) | {vi.name for vi in graph.value_info} | {node.name for node in graph.node}
