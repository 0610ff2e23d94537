"""Parameter and multiply-accumulate counts of the weighted layers, as functions of the
number of channels kept in each group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .groups import GraphAnalysis

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LayerCost:
    """One Conv / ConvTranspose / Gemm / MatMul with a constant weight."""

    name: str
    op: str
    out_group: int | None       # group of its output channels (None: fixed)
    out_fixed: int              # output channels when out_group is None
    in_segments: list[tuple[int | None, int]]  # (group or None, channels) along its input
    per_pair: int               # weight elements per (output, input) channel pair
    depthwise: bool             # weight is per channel (C x per_pair), not per pair
    bias: bool
    spatial: int                # output positions per sample: MACs per weight element
    extra_params: int = 0       # e.g. a constant bias that is not per channel

    def _counts(self, keep: dict[int, int]) -> tuple[int, int]:
        out = keep.get(self.out_group, self.out_fixed) if self.out_group is not None else self.out_fixed
        cin = sum(keep.get(g, n) if g is not None else n for g, n in self.in_segments)
        return out, cin

    def params(self, keep: dict[int, int]) -> int:
        out, cin = self._counts(keep)
        weights = out * self.per_pair if self.depthwise else out * cin * self.per_pair
        return weights + (out if self.bias else 0) + self.extra_params

    def macs(self, keep: dict[int, int]) -> int:
        out, cin = self._counts(keep)
        weights = out * self.per_pair if self.depthwise else out * cin * self.per_pair
        return weights * self.spatial


@dataclass
class CostModel:
    layers: list[LayerCost]

    def params(self, keep: dict[int, int] | None = None) -> int:
        return sum(layer.params(keep or {}) for layer in self.layers)

    def macs(self, keep: dict[int, int] | None = None) -> int:
        return sum(layer.macs(keep or {}) for layer in self.layers)

    def total(self, metric: str, keep: dict[int, int] | None = None) -> int:
        return self.params(keep) if metric == "params" else self.macs(keep)

    def layers_of(self, gid: int) -> list[LayerCost]:
        return [layer for layer in self.layers
                if layer.out_group == gid or any(g == gid for g, _ in layer.in_segments)]


def build_cost_model(model: onnx.ModelProto, analysis: GraphAnalysis, shapes: dict[str, tuple[int, ...]]
                     ) -> CostModel:
    """Cost terms of every weighted layer; groups that are frozen count as fixed."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    prunable = {g.gid for g in analysis.groups if g.prunable}
    out_group: dict[int, int] = {}
    depthwise: dict[int, int] = {}
    for g in analysis.groups:
        for p in g.producers:
            out_group[p.node] = g.gid
        for prm in g.params:
            depthwise.setdefault(prm.node, g.gid)
    consumer_of = {c.node: c for c in analysis.consumers}
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        wshape = inits[node.input[1]]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias_shape = inits.get(bias_name) if bias_name else None
        out_shape = shapes.get(node.output[0], ())
        label = node.name or f"{node.op_type}#{index}"
        spatial = int(np.prod(out_shape[2:], dtype=np.int64)) if len(out_shape) > 2 else 1
        if node.op_type == "MatMul" and len(out_shape) > 2:
            spatial = int(np.prod(out_shape[:-1], dtype=np.int64)) // max(out_shape[0], 1)
        if node.op_type in ("Conv", "ConvTranspose"):
            per_pair = int(np.prod(wshape[2:], dtype=np.int64))
            out_ch = wshape[0] if node.op_type == "Conv" else wshape[1] * _group(node)
        else:
            trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            out_ch = wshape[0] if trans_b else wshape[-1]
            per_pair = 1
        total_w = int(np.prod(wshape, dtype=np.int64))
        cons = consumer_of.get(index)
        dw_group = depthwise.get(index) if node.op_type == "Conv" and node.input[1] in _param_tensors(analysis) else None
        og = out_group.get(index)
        og = og if og in prunable else None
        has_bias = bias_shape is not None and int(np.prod(bias_shape, dtype=np.int64)) == out_ch
        extra = int(np.prod(bias_shape, dtype=np.int64)) if bias_shape is not None and not has_bias else 0
        if dw_group is not None and dw_group in prunable:
            layers.append(LayerCost(label, node.op_type, dw_group, out_ch, [], per_pair, True, has_bias,
                                    spatial, extra))
        elif cons is not None:
            segs = [(gid if gid in prunable else None, n) for gid, _, n in cons.segments]
            layers.append(LayerCost(label, node.op_type, og, out_ch, segs, cons.s if cons.kind != "conv" else per_pair,
                                    False, has_bias, spatial, extra))
        else:
            # not a consumer: its input side is fixed; express its weight as out x in pairs
            cin = total_w // max(out_ch * per_pair, 1)
            layers.append(LayerCost(label, node.op_type, og, out_ch, [(None, cin)], per_pair, False, has_bias,
                                    spatial, extra))
    return CostModel(layers)


def _group(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "group":
            return a.i
    return 1


def _param_tensors(analysis: GraphAnalysis) -> set[str]:
    return {prm.tensor for g in analysis.groups for prm in g.params}
