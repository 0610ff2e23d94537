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

import logging

import numpy as np
import onnx

from ..graph.groups import GraphAnalysis
from .data import CalibrationData
from .engine import CacheSpace, CachedNetwork, Topology, submodel
from .session import (fixed_batch, make_session, probe_batch, run, samples_per_batch, shared_initializers,
                      unbatched_inputs)
from .stats import row_keys


# graph output element types that are no numbers to compare
NOT_NUMBERS = (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING)

log = logging.getLogger("onnx_eprune")

SUBSET_MODULUS = 8      # images whose key is 0 modulo this may measure gains ...
SUBSET_SIZE = 128       # ... the ones with the smallest keys, at most this many ...
SUBSET_FLOOR = 16       # ... or, where fewer qualify, this many with the smallest keys


def _key_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``keys`` (N,) in key order, and the first 128 of them whose key is 0
    modulo 8."""
    order = np.argsort(keys, kind="stable")
    return order, order[keys[order] % SUBSET_MODULUS == 0][:SUBSET_SIZE]


def gain_candidates(keys: np.ndarray) -> np.ndarray:
    """Indices, in key order, of every image :func:`gain_subset` may pick from ``keys``
    (N,) or from any larger set that holds them: the 128 smallest keys that are 0 modulo
    8 and the 16 smallest keys. A statistics file keeps these of its shard, so the subset
    of merged shards is that of one run over all their images."""
    order, qualified = _key_order(keys)
    chosen = np.union1d(qualified, order[:SUBSET_FLOOR])
    return chosen[np.argsort(keys[chosen], kind="stable")]


def gain_subset(data: CalibrationData) -> CalibrationData:
    """The images that measure the gains: among those whose content key is 0 modulo 8, the
    128 with the smallest keys; where fewer than 16 qualify, the 16 smallest keys (all
    images when there are fewer); in key order. (A set of 32 images measures on 16, not
    32: each image costs up to 24 runs of the rest of the network, which on a large
    detector take most of the pruning time.)"""
    order, chosen = _key_order(data.keys())
    if len(chosen) < SUBSET_FLOOR:
        chosen = order[:SUBSET_FLOOR]
    return CalibrationData({k: np.ascontiguousarray(v[chosen]) for k, v in data.arrays.items()})


def output_gains(model: onnx.ModelProto, topo: Topology, data: CalibrationData, providers: list[str],
                 tensors_by_group: dict[int, list[str]], shapes: dict[str, tuple[int, ...]], space: CacheSpace,
                 delta: float = 0.05, seed: int = 0, max_measured: int = 24, outputs: list[str] | None = None
                 ) -> dict[int, float]:
    """``gain`` per group: relative output MSE per unit of relative MSE at its tensors;
    ``outputs``: the tensors measured (default: the graph outputs). ``shapes`` (of
    :func:`probe_shapes`) size the batches; the tensors every group's run starts from are
    kept in ``space`` between the runs (computed again where it has no room)."""
    position = {g: min(topo.producer[t] for t in ts) for g, ts in tensors_by_group.items()}
    ordered = sorted(tensors_by_group, key=lambda g: (position[g], g))
    picks = sorted({ordered[int(i)] for i in np.linspace(0, len(ordered) - 1, min(max_measured, len(ordered)))},
                   key=lambda g: (position[g], g))
    measured = _measure(model, topo, data, providers, {g: tensors_by_group[g] for g in picks}, shapes, space,
                        delta, seed, outputs or [o.name for o in model.graph.output])
    return {g: measured[min(picks, key=lambda p: (abs(position[p] - position[g]), position[p]))]
            for g in tensors_by_group}


class _Spread:
    """Mean and variance over axis 0 of arrays given in batches (float64; Chan et al.'s
    pairwise update, so that a batch of a million values adds no cancellation)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0

    def add(self, x: np.ndarray) -> None:
        n = len(x)
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        delta = mean - self.mean
        total = self.n + n
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def variance(self) -> np.ndarray:
        return self.m2 / self.n


def _channels_last(z: np.ndarray) -> np.ndarray:
    """(N, C, ...) as rows of C (N * positions, C), float64: one row per value of a channel."""
    return np.moveaxis(z, 1, -1).reshape(-1, z.shape[1]).astype(np.float64) if z.ndim > 1 else \
        z.reshape(-1, 1).astype(np.float64)


def _measure(model, topo, data, providers, tensors_by_group, shapes, space, delta, seed, outputs
             ) -> dict[int, float]:
    keys = data.keys()
    # each group's run starts at its tensors and at the nearest tensors the noise does not
    # reach (a residual stream beside a block), not at the graph inputs
    computed = set(topo.producer)
    starts = {}
    for gid, tensors in tensors_by_group.items():
        clean = computed - topo.descendants({topo.producer[t] for t in tensors})
        starts[gid] = topo.cut(outputs, clean | set(tensors))[1] | set(tensors)
    fetched = sorted(set().union(*starts.values()) - set(outputs))
    size = samples_per_batch(model, shapes, outputs + fetched, data.samples)
    network = CachedNetwork(model, topo, data, providers, size, space)
    # the spread of the outputs over the images, and of every noised channel
    noised = sorted({t for ts in tensors_by_group.values() for t in ts})
    ref, spread = [_Spread() for _ in outputs], {t: _Spread() for t in noised}
    dtypes: dict[str, np.dtype] = {}
    overflowed: set[str] = set()
    for values in network.compute(outputs + fetched):
        for acc, name in zip(ref, outputs):
            acc.add(values[name].astype(np.float64))
        for name in noised:
            rows = _channels_last(values[name])
            if not np.isfinite(rows).all():
                overflowed.add(name)
                rows = np.where(np.isfinite(rows), rows, 0.0)  # noise scaled to the finite values
            spread[name].add(rows)
        dtypes = {name: value.dtype for name, value in values.items()}
    if overflowed:
        # the original hides it (a ReLU after a float16 overflow to -Inf); the statistics
        # cannot: the pruned model may compute something else there
        log.warning("tensor %r holds Inf or NaN on the calibration data (the network overflows inside, e.g. in "
                    "float16): the channels there are chosen on statistics that cannot show it; check the "
                    "pruned model's fidelity", min(overflowed))
    ref_var = sum(float(np.sum(acc.variance())) for acc in ref)
    std = {t: np.sqrt(acc.variance()) for t, acc in spread.items()}
    # every group's session holds most of the weights: serialised once each, they cost
    # more than some of the runs
    shared = shared_initializers(model)
    # the sub-graphs run as the whole model must: at its fixed batch, one image at a time
    batching = {"batch": fixed_batch(model), "unbatched": unbatched_inputs(model)}
    gains: dict[int, float] = {}
    try:
        for gid, tensors in sorted(tensors_by_group.items()):
            sub, sub_feeds = submodel(model, topo, outputs, {t: dtypes[t] for t in starts[gid] if t in dtypes})
            if sub is None or ref_var <= 0:
                gains[gid] = 1.0
                continue
            session = make_session(sub, providers, shared=shared, **batching)
            cached = [name for name in sub_feeds if name in dtypes]
            squared = 0.0
            batches = zip(data.batches(size), network.compute(outputs + cached, keep=False))
            for b, (batch, values) in enumerate(batches):
                inputs = {}
                for name in sub_feeds:
                    if name not in tensors:
                        inputs[name] = values[name] if name in values else batch[name]
                        continue
                    z = values[name]
                    scale = (delta * std[name]).reshape((1, -1) + (1,) * (z.ndim - 2)) if z.ndim > 1 else \
                        delta * std[name]
                    noise = np.empty(z.shape)
                    for i, k in enumerate(row_keys(keys[b * size:(b + 1) * size], len(z))):
                        np.random.default_rng([seed, gid, int(k)]).standard_normal(out=noise[i, ...])
                    # z + delta * std * noise, in place: no second image-sized float64 array
                    noise *= scale
                    noise += z
                    inputs[name] = noise.astype(z.dtype)
                got = run(session, outputs, inputs, len(next(iter(batch.values()))))
                squared += sum(float(np.sum((g.astype(np.float64) - values[o]) ** 2)) for g, o in zip(got, outputs))
            gains[gid] = squared / data.samples / ref_var / delta ** 2
    finally:
        network.retain([])  # hand the room of the cached tensors back to the space
    return gains


def _per_sample(output: onnx.ValueInfoProto, shapes: dict[str, tuple[int, ...]], batch: int) -> bool:
    """Whether a graph output holds numbers with the samples on axis 0, as far as the probe
    (``shapes`` of ``batch`` samples) tells: a scalar (a mean over the batch), a sequence,
    strings or a list of (box, class, index) rows have no row per sample to compare."""
    kind = output.type
    if not kind.HasField("tensor_type") or kind.tensor_type.elem_type in NOT_NUMBERS:
        return False
    shape = shapes.get(output.name, ())
    return len(shape) >= 1 and shape[0] == batch


def comparison_outputs(model: onnx.ModelProto, analysis: GraphAnalysis, topo: Topology,
                       shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The tensors whose fidelity stands for the model's: its graph outputs with a row per
    sample (:func:`_per_sample`; a constant graph output, such as a detector's anchors,
    never changes and has no batch axis to join batches on). For a model whose inputs have
    no batch axis (a detector taking one image, whose outputs hold one row per box found;
    ``shapes`` of one image), or none of whose outputs has a row per sample (a mean over the
    batch), the outputs of its last weighted layers with one row per image (no such Conv,
    Gemm or MatMul reads anything computed from them): the raw predictions before the
    post-processing (a two-stage detector's region proposals)."""
    batch = 1
    if not unbatched_inputs(model):
        constants = {i.name for i in model.graph.initializer}
        batch = probe_batch(model)
        outputs = [o.name for o in model.graph.output if o.name not in constants and _per_sample(o, shapes, batch)]
        if outputs:
            return outputs
    per_image = [c for c in analysis.consumers if shapes.get(c.output, (batch,))[:1] == (batch,)]
    inputs = {c.input for c in per_image}
    last = {c.output for c in per_image if not topo.descendants({topo.producer[c.output]}) & inputs}
    return sorted(last, key=lambda name: topo.producer[name])
