"""Rewrite a model with channels removed: slice producers, per-channel constants and
Reshape targets, and install the re-fitted consumer weights. Pure slicing and copying."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .groups import Consumer, GraphAnalysis, position_columns, position_major, spread
from .model_io import (defined_names, list_initializers_as_inputs, lists_initializers, onnx_opset, reference,
                       tensor_array)
from .weights import BiasAdds, transposed_to_conv

log = logging.getLogger("onnx_eprune")


@dataclass
class Refit:
    """New weights of a consumer: ``weight`` (M x S) over its kept input features, ``bias`` (M)."""

    weight: np.ndarray
    bias: np.ndarray


class _Arrays:
    """Initializers being edited, loaded lazily and written back in their own dtype.

    A tensor left in the input's data file (model_io.reference) stays a reference unless
    it is changed: only changed tensors come into memory in the new model."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {init.name: init for init in model.graph.initializer}
        self.values: dict[str, np.ndarray] = {}
        self.masks: dict[tuple[str, int], np.ndarray] = {}
        self.changed: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self.values:
            self.values[name] = tensor_array(self.inits[name])
        return self.values[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value
        self.changed.add(name)

    def update(self, name: str, value: np.ndarray) -> None:
        """:meth:`set`, where ``value`` differs from the tensor's current value: a constant
        that keeps its value stays as the exporter stored it."""
        if not np.array_equal(self.get(name), value):
            self.set(name, value)

    def mask(self, name: str, axis: int) -> np.ndarray:
        key = (name, axis)
        if key not in self.masks:
            self.masks[key] = np.ones(self.get(name).shape[axis], dtype=bool)
        return self.masks[key]

    def add(self, name: str, value: np.ndarray, like: str | None) -> None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.inits[like].data_type) if like else np.float32
        self.model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
        self.inits[name] = self.model.graph.initializer[-1]  # append() stored a copy

    def commit(self) -> None:
        for (name, axis), mask in self.masks.items():
            if not mask.all():
                self.values[name] = np.compress(mask, self.get(name), axis=axis)
                self.changed.add(name)
        graph_inputs = {vi.name: vi for vi in self.model.graph.input}
        for name, value in self.values.items():
            init = self.inits[name]
            if name not in self.changed and reference(init) is not None:
                continue  # read (for its shape or values) but left as it was
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            new = numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype), name)
            if init.HasField("doc_string"):  # what the exporter wrote about the tensor stays
                new.doc_string = init.doc_string
            if hasattr(new, "metadata_props"):
                new.metadata_props.extend(init.metadata_props)
            init.CopyFrom(new)
            if name in graph_inputs:  # old-style models list initializers as inputs too
                shape = graph_inputs[name].type.tensor_type.shape
                del shape.dim[:]
                for d in value.shape:
                    shape.dim.add().dim_value = int(d)


def _unique(model: onnx.ModelProto, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ...: the first name no tensor of the model (its
    sub-graphs included, which must not shadow it either) has."""
    taken = defined_names(model.graph)
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _install_refit(model: onnx.ModelProto, arrays: _Arrays, cons: Consumer, refit: Refit, bias_adds: BiasAdds,
                   new_biases: dict[str, str]) -> None:
    """Write ``refit`` into consumer ``cons``: its weight, and its bias (the layer's own, the
    exporter's bias Add after it, or a new one, which the applications of one weight share:
    ``new_biases``, weight -> the bias added for it)."""
    node = model.graph.node[cons.node]
    M = refit.weight.shape[0]
    weight = position_major(refit.weight, cons.s) if cons.positions_last else refit.weight
    if cons.kind == "conv":
        arrays.set(cons.weight, refit.weight.reshape(M, -1, *cons.conv["kernel"]))
    elif cons.kind == "convT":
        arrays.set(cons.weight, transposed_to_conv(refit.weight.reshape(M, -1, *cons.conv["kernel"])))
    elif cons.kind == "gemm" and cons.gemm_trans_b:
        arrays.set(cons.weight, weight)
    else:
        arrays.set(cons.weight, weight.T)
    if cons.kind == "gemm":  # alpha and beta are folded into the new weights
        for attr in node.attribute:
            if attr.name in ("alpha", "beta"):
                attr.f = 1.0
    if cons.bias is not None:  # a broadcast bias, (1, M) or (1,), becomes the (M,) vector
        arrays.set(cons.bias, refit.bias)
        return
    rank = 2 + len(cons.conv["kernel"]) if cons.kind in ("conv", "convT") else 2
    after = bias_adds.of(cons.node, M, rank)
    if after is not None:  # the exporter's bias Add takes the re-fit's bias too
        value = arrays.get(after)
        arrays.set(after, value + refit.bias.reshape(value.shape).astype(value.dtype))
        return
    name = new_biases.get(cons.weight)
    if name is None:  # the other applications of the weight share this re-fit, and so its bias
        name = new_biases[cons.weight] = _unique(model, f"{cons.weight}.eprune_bias")
        arrays.add(name, refit.bias, like=cons.weight)
    if cons.kind == "matmul":  # a 2-D MatMul by a constant is a Gemm without transB
        node.op_type = "Gemm"
        del node.attribute[:]
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


def build_pruned(model: onnx.ModelProto, analysis: GraphAnalysis, keeps: dict[int, np.ndarray],
                 refits: dict[int, Refit]) -> onnx.ModelProto:
    """A copy of ``model`` with groups pruned to ``keeps`` and consumers re-fitted.

    Parameters
    ----------
    keeps : group id -> sorted kept channel indices (groups not listed stay whole).
    refits : consumer index -> new weights over the consumer's kept input features, for
        the consumer's original output rows (rows of pruned outputs are sliced here).
        Consumers of pruned groups without a refit have their input columns sliced.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    arrays = _Arrays(out)
    bias_adds = BiasAdds(out.graph)  # before the re-fits add their own biases
    new_biases: dict[str, str] = {}
    for cidx, refit in refits.items():
        _install_refit(out, arrays, analysis.consumers[cidx], refit, bias_adds, new_biases)
    for gid, keep in keeps.items():
        group = analysis.groups[gid]
        drop = np.setdiff1d(np.arange(group.channels), keep)
        if len(drop) == 0:
            continue
        for p in group.producers:
            rows = p.offset + spread(drop, p.factor)
            arrays.mask(p.weight, p.weight_axis)[rows] = False
            bias = _current_bias(out.graph.node[p.node])  # a re-fit may have added one
            if bias is not None and arrays.get(bias).size == arrays.get(p.weight).shape[p.weight_axis]:
                arrays.mask(bias, _vector_axis(arrays.get(bias)))[rows] = False
        for prm in group.params:
            arrays.mask(prm.tensor, prm.axis)[prm.entries(drop)] = False
        for cidx in group.consumers:
            if cidx in refits:
                continue
            cons = analysis.consumers[cidx]
            for g, off, _length in cons.segments:
                if g != gid:
                    continue
                if cons.spatial:  # weight axes (out, in, kh, kw); behind a multiplier ``factor`` inputs a channel
                    axis, width = (1 if cons.kind == "conv" else 0), cons.factor
                else:  # a matrix whose input axis holds ``s`` features per channel
                    axis, width = (1 if cons.kind == "gemm" and cons.gemm_trans_b else 0), cons.s
                columns = position_columns(off + drop, cons.s, cons.in_channels) if cons.positions_last \
                    else spread(off + drop, width)
                arrays.mask(cons.weight, axis)[columns] = False
    _update_shape_params(analysis, keeps, arrays, out)
    rows = {name: arrays.get(name).shape[0] for name, axis in arrays.masks if axis == 0}
    arrays.commit()
    _update_conv_groups(out, arrays, rows)
    if arrays.changed:  # shapes recorded by the exporter may no longer hold downstream
        _keep_true_value_info(out)
        _drop_stale_training_info(out, arrays.changed)
    list_initializers_as_inputs(out, lists_initializers(model))  # a re-fit's new bias
    return out


def _drop_stale_training_info(model: onnx.ModelProto, changed: set[str]) -> None:
    """Drop, in place and with a warning, each training_info entry that binds a tensor the
    pruning changed: its algorithm would install or update weights of the unpruned shapes."""
    stale = [t for t in model.training_info
             if {b.key for b in list(t.initialization_binding) + list(t.update_binding)} & changed]
    if not stale:
        return
    kept = [t for t in model.training_info if t not in stale]
    del model.training_info[:]
    model.training_info.extend(kept)
    log.warning("dropped %d training_info entr%s that bind pruned weights (they would restore the unpruned shapes)",
                len(stale), "y" if len(stale) == 1 else "ies")


def _keep_true_value_info(model: onnx.ModelProto) -> None:
    """Drop the exporter's value_info entries that the pruned graph no longer bears out, in
    place: an entry stays where onnx's shape inference of the graph without them gives its
    tensor the same element type and every dimension it states (the tensors pruning left
    alone); all go where inference fails (a model above 2 GB, an op it does not know)."""
    old = list(model.graph.value_info)
    del model.graph.value_info[:]
    if not old:
        return
    try:
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    except Exception:
        return
    model.graph.value_info.extend(vi for vi in old if vi.name in inferred and _bears_out(vi, inferred[vi.name]))


def _bears_out(stated: onnx.ValueInfoProto, inferred: onnx.ValueInfoProto) -> bool:
    """Whether ``inferred`` confirms every element type and dimension ``stated`` gives."""
    a, b = stated.type.tensor_type, inferred.type.tensor_type
    if not stated.type.HasField("tensor_type") or a.elem_type != b.elem_type:
        return False
    if not a.HasField("shape"):
        return True
    if not b.HasField("shape") or len(a.shape.dim) != len(b.shape.dim):
        return False
    for da, db in zip(a.shape.dim, b.shape.dim):
        if da.HasField("dim_value") and (not db.HasField("dim_value") or db.dim_value != da.dim_value):
            return False
        if da.HasField("dim_param") and db.HasField("dim_value"):
            return False
    return True


def _current_bias(node: onnx.NodeProto) -> str | None:
    return node.input[2] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2] \
        else None


def _update_conv_groups(model: onnx.ModelProto, arrays: _Arrays, rows: dict[str, int]) -> None:
    """A grouped Conv or ConvTranspose that lost whole groups counts its groups again: each
    group kept its rows of the weight's axis 0 (``rows``: their number before)."""
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or (node.input[1], 0) not in arrays.masks:
            continue
        now = arrays.get(node.input[1]).shape[0]
        for attr in node.attribute:
            if attr.name == "group" and attr.i > 1:
                attr.i = int(now // (rows[node.input[1]] // attr.i))


def _vector_axis(value: np.ndarray) -> int:
    """Axis of a bias-like tensor ((M,), (1, M), ...) that indexes channels."""
    return int(np.argmax(value.shape)) if value.ndim else 0


def _update_shape_params(analysis: GraphAnalysis, keeps: dict[int, np.ndarray], arrays: _Arrays,
                         model: onnx.ModelProto) -> None:
    """Constants that spell out channel counts follow the kept channels: Reshape targets,
    Resize sizes, Split sizes, Slice bounds on the channel axis and GroupNormalization's
    group counts."""
    features: dict[str, int] = {}
    segments: dict[str, list[tuple[int, int]]] = {}
    for g in analysis.groups:
        kept = len(keeps[g.gid]) if g.gid in keeps else g.channels
        for name, offset, factor, _axis in g.tensors:
            features[name] = features.get(name, 0) + factor * kept
            segments.setdefault(name, []).append((offset, kept))
    for g in analysis.groups:
        for sp in g.shape_params:
            shape = arrays.get(sp.tensor).copy()
            shape[sp.index] = features[sp.output] // sp.per
            arrays.update(sp.tensor, shape)
    for count in analysis.group_counts:
        for attr in model.graph.node[count.node].attribute:
            if attr.name == "num_groups":
                attr.i = features[count.source] // count.per
    for sb in analysis.slice_bounds:
        bound = arrays.get(sb.tensor).copy()
        bound.reshape(-1)[sb.index] = sum(k for off, k in segments[sb.source] if off < sb.position)
        arrays.update(sb.tensor, bound)
    for split in analysis.split_sizes:
        sizes = np.array([features[o] for o in split.outputs], dtype=np.int64)
        node = model.graph.node[split.node]
        if split.tensor is not None:
            arrays.update(split.tensor, sizes.astype(arrays.get(split.tensor).dtype))
            continue
        attrs = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
        if onnx_opset(model) >= 13:  # sizes as an input; an equal split spelled by num_outputs no longer holds
            name = _unique(model, f"{node.name or 'split'}.eprune_sizes")
            model.graph.initializer.append(numpy_helper.from_array(sizes, name))
            while len(node.input) < 2:
                node.input.append("")
            node.input[1] = name
        else:
            attrs.append(onnx.helper.make_attribute("split", sizes.tolist()))
        del node.attribute[:]
        node.attribute.extend(attrs)
