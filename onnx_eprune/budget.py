"""Keep counts per channel group from a global target.

``--keep-ratio`` keeps ``round(R*C)`` channels in every prunable group. ``--sparsity`` and
``--flops-reduction`` are global: channels are removed greedily, each step from the group
whose error curve rises least per parameter (or MAC) saved, until the target is met; then
channels are given back while the target still holds, so the result lands just past it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EPruneError
from .graph.costs import CostModel


@dataclass(frozen=True)
class Target:
    """What to reach: ``kind`` in {"sparsity", "flops", "keep_ratio"} and its value."""

    kind: str
    value: float

    @property
    def metric(self) -> str:
        return "params" if self.kind == "sparsity" else "macs"


def uniform_counts(channels: dict[int, int], ratio: float, multiple: int = 1) -> dict[int, int]:
    """``round(ratio*C)`` channels per group (at least one, rounded to ``multiple``)."""
    return {g: _round_to(max(1, int(round(ratio * c))), c, multiple) for g, c in channels.items()}


def _round_to(k: int, c: int, multiple: int) -> int:
    if multiple <= 1 or k >= c:
        return min(k, c)
    return min(c, max(multiple, int(round(k / multiple)) * multiple))


def allocate(channels: dict[int, int], curves: dict[int, np.ndarray], costs: CostModel, target: Target,
             multiple: int = 1) -> dict[int, int]:
    """Greedy allocation of keep counts for a global parameter or MAC target.

    Parameters
    ----------
    channels : group id -> channel count C of every prunable group.
    curves : group id -> array (C+1,), the group's damage when keeping k channels
        (relative reconstruction error summed over its consumers); made non-increasing here.
    costs : the model's cost terms. target : the global target (sparsity or flops).
    multiple : keep counts are multiples of this (or the whole group).
    """
    if not channels:
        raise EPruneError("the model has no prunable channel group; nothing to remove")
    metric = target.metric
    full = costs.total(metric)
    goal = (1.0 - target.value) * full
    floor = {g: min(c, max(1, multiple)) for g, c in channels.items()}
    reachable = 1.0 - costs.total(metric, floor) / full
    if reachable < target.value:
        raise EPruneError(f"{target.kind} {target.value:g} is out of reach: pruning every prunable group to "
                          f"its minimum removes {reachable:.3f} of the {metric}")
    damage = {g: np.minimum.accumulate(np.asarray(curves[g], np.float64)) for g in channels}
    layers = {g: costs.layers_of(g) for g in channels}
    keep = dict(channels)
    step = {g: max(1, multiple) for g in channels}

    def local(g: int, k: dict[int, int]) -> int:
        return sum(layer.params(k) if metric == "params" else layer.macs(k) for layer in layers[g])

    total = full
    while total > goal:
        best, best_ratio, best_saving = None, np.inf, 0
        for g in channels:
            k = keep[g]
            if k - step[g] < floor[g]:
                continue
            trial = dict(keep)
            trial[g] = k - step[g]
            saving = local(g, keep) - local(g, trial)
            if saving <= 0:
                continue
            ratio = (damage[g][k - step[g]] - damage[g][k]) / saving
            if ratio < best_ratio:
                best, best_ratio, best_saving = g, ratio, saving
        if best is None:
            break
        keep[best] -= step[best]
        total -= best_saving
    # Give channels back while the target still holds: land as close to it as possible.
    while True:
        best, best_gain = None, -np.inf
        for g in channels:
            k = keep[g]
            if k + step[g] > channels[g]:
                continue
            trial = dict(keep)
            trial[g] = k + step[g]
            added = local(g, trial) - local(g, keep)
            if total + added > goal:
                continue
            gain = (damage[g][k] - damage[g][k + step[g]]) / max(added, 1)
            if gain > best_gain:
                best, best_gain = g, gain
        if best is None:
            break
        trial = dict(keep)
        trial[best] = keep[best] + step[best]
        total += local(best, trial) - local(best, keep)
        keep[best] += step[best]
    return keep
