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
"""

from __future__ import annotations

import numpy as np
import onnx

from .data import CalibrationData
from .engine import Topology, submodel
from .session import make_session, run


def output_gains(model: onnx.ModelProto, topo: Topology, data: CalibrationData, providers: list[str],
                 tensors_by_group: dict[int, list[str]], samples: int = 128, delta: float = 0.05,
                 seed: int = 0, max_measured: int = 24) -> dict[int, float]:
    """``gain`` per group: relative output MSE per unit of relative MSE at its tensors."""
    position = {g: min(topo.producer[t] for t in ts) for g, ts in tensors_by_group.items()}
    ordered = sorted(tensors_by_group, key=lambda g: (position[g], g))
    picks = sorted({ordered[int(i)] for i in np.linspace(0, len(ordered) - 1, min(max_measured, len(ordered)))},
                   key=lambda g: (position[g], g))
    measured = _measure(model, topo, data, providers, {g: tensors_by_group[g] for g in picks}, samples, delta, seed)
    return {g: measured[min(picks, key=lambda p: (abs(position[p] - position[g]), position[p]))]
            for g in tensors_by_group}


def _measure(model, topo, data, providers, tensors_by_group, samples, delta, seed) -> dict[int, float]:
    n = min(samples, data.samples)
    feeds = next(data.batches(n))
    outputs = [o.name for o in model.graph.output]
    all_tensors = sorted({t for ts in tensors_by_group.values() for t in ts})
    sess = make_session(model, providers, outputs=outputs + all_tensors)
    values = dict(zip(outputs + all_tensors, run(sess, None, feeds)))
    ref = [values[o].astype(np.float64) for o in outputs]
    ref_var = sum(float(np.sum(np.var(r, axis=0))) for r in ref)
    gains: dict[int, float] = {}
    for gid, tensors in sorted(tensors_by_group.items()):
        dtypes = {t: values[t].dtype for t in tensors}
        sub, sub_feeds = submodel(model, topo, outputs, dtypes)
        if sub is None or ref_var <= 0:
            gains[gid] = 1.0
            continue
        rng = np.random.default_rng([seed, gid])
        inputs = {}
        for name in sub_feeds:
            if name in dtypes:
                z = values[name]
                axes = tuple(i for i in range(z.ndim) if i != 1)
                std = z.std(axis=axes, keepdims=True) if z.ndim > 1 else z.std()
                inputs[name] = (z + delta * std * rng.standard_normal(z.shape)).astype(z.dtype)
            else:
                inputs[name] = feeds[name]
        got = run(make_session(sub, providers), outputs, inputs)
        mse = sum(float(np.sum(np.mean((g.astype(np.float64) - r) ** 2, axis=0))) for g, r in zip(got, ref))
        gains[gid] = mse / ref_var / delta ** 2
    return gains
