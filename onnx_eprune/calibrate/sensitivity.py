"""How strongly an error at a layer's output reaches the network outputs.

The allocation compares the reconstruction errors of different groups. Errors do not
travel equally: a relative error of 1% at the logits costs more than 1% in an early layer
that later layers average away, or less where a ReLU discards it. For each group we add
Gaussian noise of relative variance ``delta**2`` (per channel) to the outputs of its
consumers, run the rest of the network, and measure the relative mean squared change of
the graph outputs: ``gain = out_rel_mse / delta**2``. To first order the outputs' error is
then ``sum_g gain_g * err_g`` over groups.

Each measured group costs a run of the rest of the network, so on graphs with many groups
(DenseNet: 120) at most ``max_measured`` groups, evenly spread in graph order, are measured
and every other group takes the gain of its nearest measured neighbour in that order.

The gains are measured on a subset of the calibration images chosen by content
(:func:`gain_subset`) with noise seeded by each image's key, so a run over the whole set and
a run over statistics merged from shards (each keeping its part of the subset) agree.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph.groups import GraphAnalysis
from .data import CalibrationData
from .engine import Topology, submodel
from .session import fixed_batch, make_session, run, shared_initializers, unbatched_inputs


SUBSET_MODULUS = 8      # images whose key is 0 modulo this may measure gains ...
SUBSET_SIZE = 128       # ... the ones with the smallest keys, at most this many


def gain_subset(data: CalibrationData) -> CalibrationData:
    """The images that measure the gains: among those whose content key is 0 modulo 8, the
    128 with the smallest keys (all images when fewer than 16 qualify), in key order."""
    keys = data.keys()
    chosen = np.flatnonzero(keys % SUBSET_MODULUS == 0)
    if len(chosen) < 16:
        chosen = np.arange(len(keys))
    chosen = chosen[np.argsort(keys[chosen], kind="stable")][:SUBSET_SIZE]
    return CalibrationData({k: np.ascontiguousarray(v[chosen]) for k, v in data.arrays.items()})


def output_gains(model: onnx.ModelProto, topo: Topology, data: CalibrationData, providers: list[str],
                 tensors_by_group: dict[int, list[str]], delta: float = 0.05, seed: int = 0,
                 max_measured: int = 24, outputs: list[str] | None = None) -> dict[int, float]:
    """``gain`` per group: relative output MSE per unit of relative MSE at its tensors;
    ``outputs``: the tensors measured (default: the graph outputs)."""
    position = {g: min(topo.producer[t] for t in ts) for g, ts in tensors_by_group.items()}
    ordered = sorted(tensors_by_group, key=lambda g: (position[g], g))
    picks = sorted({ordered[int(i)] for i in np.linspace(0, len(ordered) - 1, min(max_measured, len(ordered)))},
                   key=lambda g: (position[g], g))
    measured = _measure(model, topo, data, providers, {g: tensors_by_group[g] for g in picks}, delta, seed,
                        outputs or [o.name for o in model.graph.output])
    return {g: measured[min(picks, key=lambda p: (abs(position[p] - position[g]), position[p]))]
            for g in tensors_by_group}


def _measure(model, topo, data, providers, tensors_by_group, delta, seed, outputs) -> dict[int, float]:
    feeds = next(data.batches(data.samples))
    keys = data.keys()
    # each group's run starts at its tensors and at the nearest tensors the noise does not
    # reach (a residual stream beside a block), not at the graph inputs
    computed = set(topo.producer)
    starts = {}
    for gid, tensors in tensors_by_group.items():
        clean = computed - topo.descendants({topo.producer[t] for t in tensors})
        starts[gid] = topo.cut(outputs, clean | set(tensors))[1] | set(tensors)
    fetched = sorted(set().union(*starts.values()) - set(outputs))
    # every group's session holds most of the weights: serialised once each, they cost
    # more than some of the runs
    shared = shared_initializers(model)
    # the sub-graphs run as the whole model must: at its fixed batch, one image at a time
    batching = {"batch": fixed_batch(model), "unbatched": unbatched_inputs(model)}
    sess = make_session(model, providers, outputs=outputs + fetched, shared=shared)
    values = dict(zip(outputs + fetched, run(sess, None, feeds, data.samples)))
    ref = [values[o].astype(np.float64) for o in outputs]
    ref_var = sum(float(np.sum(np.var(r, axis=0))) for r in ref)
    gains: dict[int, float] = {}
    for gid, tensors in sorted(tensors_by_group.items()):
        sub, sub_feeds = submodel(model, topo, outputs, {t: values[t].dtype for t in starts[gid] if t in values})
        if sub is None or ref_var <= 0:
            gains[gid] = 1.0
            continue
        inputs = {}
        for name in sub_feeds:
            if name in tensors:
                z = values[name]
                axes = tuple(i for i in range(z.ndim) if i != 1)
                std = z.std(axis=axes, keepdims=True) if z.ndim > 1 else z.std()
                noise = np.empty(z.shape)
                for i, k in enumerate(keys):
                    np.random.default_rng([seed, gid, int(k)]).standard_normal(out=noise[i, ...])
                # z + delta * std * noise, in place: no second image-sized float64 array
                noise *= delta * std
                noise += z
                inputs[name] = noise.astype(z.dtype)
            else:
                inputs[name] = values[name] if name in values else feeds[name]
        got = run(make_session(sub, providers, shared=shared, **batching), outputs, inputs, data.samples)
        mse = sum(float(np.sum(np.mean((g.astype(np.float64) - r) ** 2, axis=0))) for g, r in zip(got, ref))
        gains[gid] = mse / ref_var / delta ** 2
    return gains


def comparison_outputs(model: onnx.ModelProto, analysis: GraphAnalysis, topo: Topology,
                       shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The tensors whose fidelity stands for the model's: its graph outputs; for a model
    whose inputs have no batch axis (a detector taking one image, whose outputs hold one row
    per box found; ``shapes`` of one image), the outputs of its last weighted layers with
    one row per image (no such Conv, Gemm or MatMul reads anything computed from them): the
    raw predictions before the post-processing (a two-stage detector's region proposals)."""
    if not unbatched_inputs(model):
        return [o.name for o in model.graph.output]
    per_image = [c for c in analysis.consumers if shapes.get(c.output, (1,))[:1] == (1,)]
    inputs = {c.input for c in per_image}
    last = {c.output for c in per_image if not topo.descendants({topo.producer[c.output]}) & inputs}
    return sorted(last, key=lambda name: topo.producer[name])
