"""Parameter and multiply-accumulate counts of the weighted layers, as functions of the
number of channels kept in each group."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from .groups import GraphAnalysis, node_label
from .model_io import WEIGHTED_OPS, initializer_map, probe_batch, tensor_array
from .weights import BiasAdds, all_zero


@dataclass
class LayerCost:
    """One Conv / ConvTranspose / Gemm / MatMul with a constant weight."""

    name: str
    op: str
    out_segments: list[tuple[int | None, int]]  # (group or None for fixed, channels) along its output
    in_segments: list[tuple[int | None, int]]   # the same along its input
    per_pair: int               # weight elements per (output, input) channel pair
    depthwise: bool             # weight is per channel (C x per_pair), not per pair
    bias: bool
    spatial: int                # uses of each weight element per sample: MACs per weight element
    extra_params: int = 0       # e.g. a constant bias that is not per channel
    out_factor: int = 1         # output channels per group channel (a channel multiplier, or outputs added to its)
    refit: bool = False         # re-fitted when an input group shrinks (re-fits on; a consumer): a new bias
    weight_counted: bool = True  # False for a weight an earlier layer applies too (counted there)
    tie: str | None = None      # the weight it applies with other layers (one module applied several times)
    shared_weight: SharedCopies | None = field(default=None, repr=False, compare=False)  # copies of one weight
    shared_bias: SharedCopies | None = field(default=None, repr=False, compare=False)  # a bias other layers read too

    def _counts(self, keep: dict[int, int]) -> tuple[int, int]:
        return self.out_factor * _count(self.out_segments, keep), _count(self.in_segments, keep)

    def groups(self) -> set[int]:
        return {g for g, _ in self.out_segments + self.in_segments if g is not None}

    def shape(self, keep: dict[int, int], weight: bool) -> tuple[tuple[int, ...], int]:
        """The shape (output, input channels) of its weight (``weight``), or (outputs,) of its
        bias, at the kept counts ``keep``, and the elements that tensor holds."""
        out, cin = self._counts(keep)
        if not weight:
            return (out,), out
        return (out, cin), out * self.per_pair if self.depthwise else out * cin * self.per_pair

    def is_refitted(self, keep: dict[int, int], refitted: Collection[str] | None = None) -> bool:
        """Whether the layer is re-fitted at the kept counts ``keep``: it is among the layer
        names ``refitted``, or (None) it will be as an input group shrinks, if ``refit``."""
        if refitted is not None:
            return self.name in refitted
        return self.refit and any(g is not None and keep.get(g, n) < n for g, n in self.in_segments)

    def params(self, keep: dict[int, int], refitted: Collection[str] | None = None) -> int:
        """Parameters at the kept counts ``keep``. ``refitted``: the names of the re-fitted
        layers (None: as :meth:`is_refitted` foresees)."""
        out = self._counts(keep)[0]
        if self.shared_weight is not None:
            weights = self.shared_weight.held_by(self, keep, refitted)
        else:
            weights = self.shape(keep, weight=True)[1] * self.weight_counted
        if not self.bias:  # the re-fit's bias replaces any other (one for all the applications of a weight)
            gains = self.is_refitted(keep, refitted) and self.weight_counted
            return weights + (out if gains else self.extra_params)
        bias = out if self.shared_bias is None else self.shared_bias.held_by(self, keep, refitted)
        return weights + bias + self.extra_params

    def macs(self, keep: dict[int, int]) -> int:
        out, cin = self._counts(keep)
        weights = out * self.per_pair if self.depthwise else out * cin * self.per_pair
        return weights * self.spatial


@dataclass(eq=False)
class SharedCopies:
    """A weight (``weight``) or a bias that several layers read: one tensor in the input,
    which normalize copies per reader (a bias; a weight an exporter de-duplicated) and the
    rewrite shares again where copies stay equal. The readers left as they were share it;
    so do the applications of one weight (``LayerCost.tie``), which are cut and re-fitted
    alike; any other reader whose channels shrink or that is re-fitted holds its own, unless
    (``uniform``: one value throughout, an exporter's de-duplicated zero tensor) an earlier
    reader holds a slice of the same shape."""

    weight: bool
    uniform: bool
    readers: list[LayerCost]

    def held_by(self, layer: LayerCost, keep: dict[int, int], refitted: Collection[str] | None) -> int:
        """The elements ``layer``'s copy adds at ``keep``: none where an earlier reader holds
        an equal tensor (:meth:`LayerCost.params` counts every reader's this way)."""
        def tensor(reader: LayerCost) -> tuple[tuple, int]:  # (what tells equal tensors apart, size)
            shape, size = reader.shape(keep, self.weight)
            if reader.tie is not None:  # the applications of one weight are cut and re-fitted alike
                return ("tied", reader.tie), size
            if reader.is_refitted(keep, refitted) or not (self.uniform or shape == reader.shape({}, self.weight)[0]):
                return ("own", id(reader)), size
            return ("slice", shape), size

        mine, size = tensor(layer)
        earlier = self.readers[:self.readers.index(layer)]
        return 0 if any(tensor(reader)[0] == mine for reader in earlier) else size


@dataclass
class CostModel:
    layers: list[LayerCost]

    def params(self, keep: dict[int, int] | None = None, refitted: Collection[str] | None = None) -> int:
        """Parameters at the kept counts ``keep`` (None: all). ``refitted``: the names of
        the layers a run re-fitted (None: those whose input groups shrink, if re-fits are
        on); a sequential run also re-fits layers whose own inputs stay whole."""
        return sum(layer.params(keep or {}, refitted) for layer in self.layers)

    def macs(self, keep: dict[int, int] | None = None) -> int:
        return sum(layer.macs(keep or {}) for layer in self.layers)

    def total(self, metric: str, keep: dict[int, int] | None = None) -> int:
        return self.params(keep) if metric == "params" else self.macs(keep)

    def layers_of(self, gid: int) -> list[LayerCost]:
        """The layers whose parameters or MACs depend on group ``gid``'s count: those it
        touches, and every reader of a weight or bias that one of them shares (which holds it
        depends)."""
        readers = {id(reader) for layer in self.layers if gid in layer.groups()
                   for shared in (layer.shared_weight, layer.shared_bias) if shared for reader in shared.readers}
        return [layer for layer in self.layers if gid in layer.groups() or id(layer) in readers]


def _count(segments: list[tuple[int | None, int]], keep: dict[int, int]) -> int:
    return sum(keep.get(g, n) if g is not None else n for g, n in segments)


def build_cost_model(model: onnx.ModelProto, analysis: GraphAnalysis, shapes: dict[str, tuple[int, ...]],
                     refits: bool = False, copies: Mapping[str, str] | None = None) -> CostModel:
    """Cost terms of every weighted layer; groups that are frozen count as fixed.
    ``refits``: a consumer whose input channels shrink is re-fitted, which gives it a bias
    per output if it has none (a Conv before an unfolded BatchNormalization, a MatMul).
    ``copies``: :func:`model_io.normalize`'s copies (copy -> original), so that a constant
    the input holds once (a bias several layers read) counts once."""
    copies = copies or {}
    inits = _constant_shapes(model, shapes)
    values = initializer_map(model)
    prunable = {g.gid for g in analysis.groups if g.prunable}
    outputs: dict[int, list[tuple[int, int, int]]] = {}   # node -> (offset, group, channels), in group channels
    rows: dict[int, int] = {}                              # node -> output rows per group channel
    depthwise: dict[int, list[tuple[int, int, int]]] = {}  # node -> (offset, group, channels), in group channels
    multiplier: dict[int, int] = {}                        # node -> output channels per group channel
    for g in analysis.groups:
        for p in g.producers:
            outputs.setdefault(p.node, []).append((p.offset // p.factor, g.gid, g.channels))
            rows[p.node] = p.factor
        for prm in g.params:
            node = model.graph.node[prm.node]
            # a grouped Conv's weight, not its bias (both are sliced alike: counted once)
            if node.op_type in ("Conv", "ConvTranspose") and node.input[1] == prm.tensor:
                depthwise.setdefault(prm.node, []).append((prm.offset // prm.factor, g.gid, g.channels))
                multiplier[prm.node] = prm.factor
    consumer_of = {c.node: c for c in analysis.consumers}
    layers: list[LayerCost] = []
    counted: set[str] = set()  # tensors shared by several layers count once, as the file holds them
    bias_readers: dict[str, list[LayerCost]] = {}  # a per-output bias (its origin) -> the layers reading it
    weight_readers: dict[str, list[LayerCost]] = {}  # a weight (its origin) -> the layers holding a copy
    batch = probe_batch(model)  # the samples the shapes were probed with
    applications = Counter(node.input[1] for node in model.graph.node
                           if node.op_type in WEIGHTED_OPS and len(node.input) > 1)
    bias_adds = BiasAdds(model.graph)
    for index, node in enumerate(model.graph.node):
        kind = _FLOAT_KIND.get(node.op_type, node.op_type)
        at = _WEIGHT_INPUT.get(node.op_type, 1)
        bias_at = _BIAS_INPUT.get(node.op_type)
        bias_name = node.input[bias_at] if bias_at is not None and len(node.input) > bias_at else None
        bias_shape = inits.get(bias_name) if bias_name else None
        bias_origin = copies.get(bias_name, bias_name) if bias_shape is not None else None
        if kind in ("MatMul", "Gemm") and len(node.input) > at and node.input[0] in inits and \
                node.input[at] not in inits:
            # a Gemm's C broadcast over a constant A's rows is no per-channel bias
            extra = int(np.prod(bias_shape, dtype=np.int64)) if bias_origin not in counted | {None} else 0
            layers.append(_left_operand(node, index, inits[node.input[0]], shapes, batch,
                                        node.input[0] not in counted, extra))
            counted.update({node.input[0], bias_origin} - {None})
            continue
        if kind not in WEIGHTED_OPS or len(node.input) <= at or node.input[at] not in inits:
            continue
        first = node.input[at] not in counted
        counted.add(node.input[at])
        wshape = inits[node.input[at]]
        out_shape = shapes.get(node.output[0], ())
        label = node_label(node, index)
        spatial = _uses_per_sample(kind, out_shape, shapes.get(node.input[0], ()), wshape, batch)
        if kind in ("Conv", "ConvTranspose"):
            per_pair = int(np.prod(wshape[2:], dtype=np.int64))
            out_ch = wshape[0] if kind == "Conv" else wshape[1] * _group(node)
        else:
            trans_b = kind == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            out_ch = wshape[0] if trans_b else wshape[-1]
            per_pair = 1
        total_w = int(np.prod(wshape, dtype=np.int64))
        has_bias = bias_shape is not None and int(np.prod(bias_shape, dtype=np.int64)) == out_ch
        extra = int(np.prod(bias_shape, dtype=np.int64)) if bias_shape is not None and not has_bias and \
            bias_origin not in counted else 0
        if extra:
            counted.add(bias_origin)
        # an exporter's bias Add after the layer (tf2onnx's MatMul + Add, paddle2onnx's Conv +
        # Add) holds its bias, and a re-fit's bias goes into it (weights.BiasAdds)
        counts_bias = has_bias or bias_adds.of(index, out_ch, len(out_shape) or 2) is not None

        def segments(entries, total):
            segs, pos = [], 0
            for off, gid, n in sorted(entries):
                if off > pos:
                    segs.append((None, off - pos))
                segs.append((gid if gid in prunable else None, n))
                pos = off + n
            if pos < total:
                segs.append((None, total - pos))
            return segs

        dw = _group(node) > 1 and index in depthwise  # a grouped Conv/ConvTranspose passing channels through
        cons = consumer_of.get(index)
        if dw:  # per output channel: its group's inputs times the kernel
            per_pair = int(np.prod(wshape[1:], dtype=np.int64))
            factor = multiplier[index]
            layers.append(LayerCost(label, node.op_type, segments(depthwise[index], out_ch // factor), [], per_pair,
                                    True, counts_bias, spatial, extra, factor, weight_counted=first))
        else:
            factor = rows.get(index, 1)
            out_segs = segments(outputs.get(index, []), out_ch // factor)
            if cons is not None:
                in_segs = [(gid if gid in prunable else None, n) for gid, _, n in cons.segments]
                per = cons.s
            else:  # not a consumer: its input side is fixed; express its weight as out x in pairs
                in_segs, per = [(None, total_w // max(out_ch * per_pair, 1))], per_pair
            layers.append(LayerCost(label, node.op_type, out_segs, in_segs, per, False, counts_bias, spatial, extra,
                                    factor, refit=refits and cons is not None and not all_zero(values, node.input[at]),
                                    weight_counted=first))
        if applications[node.input[at]] > 1:
            layers[-1].tie = node.input[at]
        if first:
            weight_readers.setdefault(copies.get(node.input[at], node.input[at]), []).append(layers[-1])
        if has_bias:
            bias_readers.setdefault(bias_origin, []).append(layers[-1])
    for weight, readers_of in ((True, weight_readers), (False, bias_readers)):
        for origin, readers in readers_of.items():
            if len(readers) > 1:
                _share_copies(readers, values.get(origin), weight)
    return CostModel(layers)


def _share_copies(readers: list[LayerCost], tensor: onnx.TensorProto | None, weight: bool) -> None:
    """Mark ``readers`` as the layers reading copies of one weight (``weight``) or bias
    (``tensor``, its initializer where it is one: None for a computed bias), which the file
    holds once (:class:`SharedCopies`)."""
    value = tensor_array(tensor) if tensor is not None else None
    uniform = value is not None and value.size > 0 and bool(np.all(value == value.flat[0]))
    shared = SharedCopies(weight, uniform, readers)
    for reader in readers:
        if weight:
            reader.shared_weight = shared
        else:
            reader.shared_bias = shared


def _uses_per_sample(kind: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], wshape: tuple[int, ...],
                     batch: int) -> int:
    """How often a layer multiplies each weight element per sample (shapes probed on
    ``batch`` samples): a Conv at every output position of every image it sees (frames
    folded into the batch axis count each), a ConvTranspose at every input position, a
    Gemm or MatMul on every row it multiplies (pixels reshaped to rows, sequence-first
    tokens; each matrix of a batched (..., K, M) weight on its own rows)."""
    if kind == "Conv":
        uses = int(np.prod(out_shape[:1] + out_shape[2:], dtype=np.int64))
    elif kind == "ConvTranspose":
        uses = int(np.prod(in_shape[:1] + in_shape[2:], dtype=np.int64))
    else:
        uses = int(np.prod(out_shape[:-1], dtype=np.int64)) // max(int(np.prod(wshape[:-2], dtype=np.int64)), 1)
    return max(uses // batch, 1)


# Quantized (QOperator) layers: frozen, but their weights are the model's too; counted as
# the float layer they compute
_FLOAT_KIND = {"QLinearConv": "Conv", "ConvInteger": "Conv", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul"}
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}   # else input 1
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "QLinearConv": 8}


def _constant_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors that hold weights: the initializers and every tensor computed
    from them alone (a fake-quantized or int8 weight behind DequantizeLinear, a weight a
    local function computes), their shapes from ``shapes``. A layer with such a weight is
    frozen if the analysis cannot slice it, but its parameters and MACs are the model's."""
    constant = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if inputs and all(name in constant for name in inputs):
            constant.update({o: shapes[o] for o in node.output if o in shapes})
    return constant


def _left_operand(node: onnx.NodeProto, index: int, wshape: tuple[int, ...], shapes: dict[str, tuple[int, ...]],
                  batch: int, first: bool, extra: int) -> LayerCost:
    """``W @ x`` (MatMul, or Gemm with its A) with a constant W (M, K) on the left (K, M
    for a Gemm's transA; (..., M, K) batched): a layer whose channels the analysis does not
    follow (fixed), counted for its weights, each used once per column of the output per
    sample, and ``extra`` parameters (a Gemm's C)."""
    out_shape = shapes.get(node.output[0], ())
    trans_a = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
    rows = (wshape[-1] if trans_a else wshape[-2]) if len(wshape) >= 2 else 1
    total = int(np.prod(wshape, dtype=np.int64))
    matrices = int(np.prod(wshape[:-2], dtype=np.int64))  # of a batched W, each on its own columns
    per_sample = int(np.prod(out_shape, dtype=np.int64)) // max(rows * matrices * batch, 1) if out_shape else 1
    return LayerCost(node_label(node, index), node.op_type, [(None, rows)], [(None, total // max(rows, 1))], 1,
                     False, False, max(per_sample, 1), extra, weight_counted=first)


def _group(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "group":
            return a.i
    return 1
