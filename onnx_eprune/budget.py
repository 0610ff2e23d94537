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

    def cost(k: dict[int, int]) -> int:
        return costs.total(metric, k)

    def ratio(g: int, k: dict[int, int]) -> tuple[float, int]:
        """Damage added per unit of cost saved by removing one step from group ``g``."""
        trial = dict(k)
        trial[g] = k[g] - step[g]
        saving = local(g, k) - local(g, trial)
        if saving <= 0:
            return np.inf, 0
        return (damage[g][trial[g]] - damage[g][k[g]]) / saving, saving

    def shrink(k: dict[int, int], total: int, frozen: int | None = None) -> int:
        """Remove the cheapest steps until the goal holds; ``frozen`` is left alone."""
        while total > goal:
            options = [(ratio(g, k), g) for g in channels if g != frozen and k[g] - step[g] >= floor[g]]
            options = [(r, g) for r, g in options if r[1] > 0]
            if not options:
                return total
            (_, saving), g = min(options, key=lambda o: (o[0][0], o[1]))
            k[g] -= step[g]
            total -= saving
        return total

    total = shrink(keep, full)
    total = _give_back(keep, total, goal, channels, step, damage, local)
    # Channel steps can be coarse (a channel feeding a large Gemm): trade a step of one group
    # for finer steps of others while that lands closer to the target.
    tolerance = 0.005 * full
    for _ in range(4 * len(channels)):
        if goal - total <= tolerance:
            break
        best = None
        for g in channels:
            if keep[g] + step[g] > channels[g]:
                continue
            trial = dict(keep)
            trial[g] += step[g]
            t_total = shrink(trial, cost(trial), frozen=g)
            if t_total <= goal and t_total > (best[0] if best else total):
                best = (t_total, trial)
        if best is None:
            break
        total, keep = best
        total = _give_back(keep, total, goal, channels, step, damage, local)
    return keep


def _give_back(keep, total, goal, channels, step, damage, local) -> int:
    """Give channels back while the target still holds: land as close to it as possible."""
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
            return total
        trial = dict(keep)
        trial[best] = keep[best] + step[best]
        total += local(best, trial) - local(best, keep)
        keep[best] += step[best]
