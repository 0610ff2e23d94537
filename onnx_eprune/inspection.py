"""The channel groups of a model, as ``onnx-eprune inspect`` shows them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx

from .calibrate.data import load_calibration, model_inputs
from .calibrate.session import choose_providers, probe_groups
from .errors import UsageError, checked_arguments
from .graph.costs import build_cost_model
from .graph.exclude import check_patterns, exclude_groups
from .graph.groups import QUANTIZED, node_label
from .graph.model_io import as_model, check_model_arg, fixed_dims, read_provenance
from .graph.standard import standard_form


@checked_arguments
def inspect(model: onnx.ModelProto | str | os.PathLike, sample=None, exclude: Sequence[str] = ()) -> dict:
    """Channel groups of ``model`` and how much of it pruning can reach.

    Parameters
    ----------
    model : onnx.ModelProto or path (str or os.PathLike; never modified)
    sample : one input to probe shapes with: an array (first axis = samples), a dict of
        input name -> array, or a .npy/.npz path; only its first sample is used. ``None``
        takes zeros of the model's input shape (which must then be fixed, batch aside).
    exclude : node-name patterns whose channel groups stay whole, as ``PruneConfig.exclude``
        (a list or tuple: a bare string is refused).

    Returns a dict: ``groups`` (one entry per group with producers or consumers: ``id``,
    ``channels``, ``prunable``, ``producers``, ``producer_rows`` (each producer's output
    rows per channel of the group: 1, or m where its outputs are added to a channel
    multiplier's), ``consumers`` (node names), ``frozen`` (the reasons, or None) and
    ``data_only`` (why only a run from calibration data prunes the group, not one from
    statistics files: a consumer too wide for statistics of every feature, or None)),
    ``prunable_groups``, ``params`` and ``macs`` (Conv /
    ConvTranspose / Gemm / MatMul, MACs per sample at the probed shape) and
    ``prunable_mac_fraction`` (MACs of layers with a prunable group on either side) and
    ``pruned_before`` (the pruning runs this tool recorded in the model's metadata, oldest first).
    """
    check_model_arg(model)
    check_patterns(exclude)  # before the model is read and run
    model = as_model(model)
    normalized = standard_form(model).normalized
    data = load_calibration(sample if sample is not None else _zeros(model), model, samples=1, probe=True)
    shapes, analysis = probe_groups(model, data.first(), choose_providers("cpu"))
    exclude_groups(analysis, model.graph.node, exclude, normalized.folded)
    costs = build_cost_model(model, analysis, shapes, copies=normalized.copies)
    nodes = model.graph.node
    rows = []
    for g in analysis.groups:
        # a channel space no layer writes or reads says nothing, unless quantized layers froze it:
        # then it is where a quantized model shows why it cannot be pruned
        if not g.producers and not g.consumers and not any(QUANTIZED in reason for reason in g.frozen):
            continue
        rows.append({
            "id": g.gid, "channels": g.channels, "prunable": g.prunable,
            "producers": [node_label(nodes[p.node], p.node) for p in g.producers],
            "producer_rows": [p.factor for p in g.producers],
            "consumers": [analysis.consumers[c].name for c in g.consumers],
            "frozen": "; ".join(g.frozen) if g.frozen else None,
            "data_only": analysis.wide.get(g.gid) if g.prunable else None})
    prunable = {g.gid for g in analysis.groups if g.prunable}
    total = costs.macs()
    touched = sum(layer.macs({}) for layer in costs.layers if layer.groups() & prunable)
    return {"groups": rows, "prunable_groups": len(prunable), "macs": total, "params": costs.params(),
            "prunable_mac_fraction": touched / total if total else 0.0, "pruned_before": read_provenance(model)}


def _zeros(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = {}
    for vi in model_inputs(model):
        dims = fixed_dims(vi) or []
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise UsageError(f"input {vi.name!r} has dynamic dimensions {dims}; give sample= (one input of the "
                             "shape to inspect)")
        arrays[vi.name] = np.zeros(dims, dtype=np.float32)
    return arrays
