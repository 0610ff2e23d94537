"""Keep counts per channel group from a global target.

``--keep-ratio`` keeps ``round(R*C)`` channels in every prunable group. ``--sparsity`` and
``--flops-reduction`` are global: channels are removed greedily, each step from the group
whose damage curve rises least per parameter (or MAC) saved, until the target is met; then
channels are given back while the target still holds, and a step of one group is traded for
finer steps of others while that lands closer to the target (a single channel can carry a
large share of the cost, e.g. one feeding a big Gemm).
"""

from __future__ import annotations

import heapq
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


class _Greedy:
    """Keep counts, their cost, and the cost/damage trade-off of one step per group."""

    def __init__(self, channels: dict[int, int], damage: dict[int, np.ndarray], costs: CostModel, metric: str,
                 multiple: int):
        self.channels, self.damage, self.metric = channels, damage, metric
        self.step = max(1, multiple)
        self.floor = {g: min(c, self.step) for g, c in channels.items()}
        self.layers = {g: costs.layers_of(g) for g in channels}
        self.neighbours = {g: sorted({h for layer in self.layers[g] for h in layer.groups()} & set(channels))
                           for g in channels}
        self.keep = dict(channels)
        self.total = costs.total(metric)

    def local(self, g: int) -> int:
        if self.metric == "params":
            return sum(layer.params(self.keep) for layer in self.layers[g])
        return sum(layer.macs(self.keep) for layer in self.layers[g])

    def change(self, g: int, delta: int) -> int:
        """Cost change if group ``g`` moved by ``delta`` channels (the counts stay put)."""
        before = self.local(g)
        self.keep[g] += delta
        after = self.local(g)
        self.keep[g] -= delta
        return after - before

    def apply(self, g: int, delta: int) -> None:
        self.total += self.change(g, delta)
        self.keep[g] += delta

    def removal(self, g: int) -> tuple[float, int] | None:
        """(damage per cost saved, cost saved) of removing one step from ``g``."""
        k = self.keep[g]
        if k - self.step < self.floor[g]:
            return None
        saving = -self.change(g, -self.step)
        if saving <= 0:
            return None
        return (self.damage[g][k - self.step] - self.damage[g][k]) / saving, saving

    def shrink(self, goal: float, frozen: int | None = None) -> None:
        """Remove the cheapest steps until the cost is at most ``goal``."""
        heap, version = [], {g: 0 for g in self.channels}

        def push(g: int) -> None:
            version[g] += 1
            r = self.removal(g) if g != frozen else None
            if r is not None:
                heapq.heappush(heap, (r[0], g, version[g]))

        for g in self.channels:
            push(g)
        while self.total > goal and heap:
            _, g, v = heapq.heappop(heap)
            if v != version[g]:
                continue
            self.apply(g, -self.step)
            for h in self.neighbours[g]:  # their savings depend on g's count
                push(h)

    def give_back(self, goal: float) -> None:
        """Add steps back, most useful per cost first, while the cost stays within ``goal``."""
        while True:
            best, best_gain = None, -np.inf
            for g in self.channels:
                k = self.keep[g]
                if k + self.step > self.channels[g]:
                    continue
                added = self.change(g, self.step)
                if self.total + added > goal:
                    continue
                gain = (self.damage[g][k] - self.damage[g][k + self.step]) / max(added, 1)
                if gain > best_gain:
                    best, best_gain = g, gain
            if best is None:
                return
            self.apply(best, self.step)


def allocate(channels: dict[int, int], curves: dict[int, np.ndarray], costs: CostModel, target: Target,
             multiple: int = 1) -> dict[int, int]:
    """Greedy allocation of keep counts for a global parameter or MAC target.

    Parameters
    ----------
    channels : group id -> channel count C of every prunable group.
    curves : group id -> array (C+1,), the group's damage when keeping k channels
        (weighted relative reconstruction error over its consumers); made non-increasing.
    costs : the model's cost terms. target : the global target (sparsity or flops).
    multiple : keep counts are multiples of this (or the whole group).
    """
    if not channels:
        raise EPruneError("the model has no prunable channel group; nothing to remove")
    metric = target.metric
    full = costs.total(metric)
    goal = (1.0 - target.value) * full
    damage = {g: np.minimum.accumulate(np.asarray(curves[g], np.float64)) for g in channels}
    state = _Greedy(channels, damage, costs, metric, multiple)
    reachable = 1.0 - costs.total(metric, state.floor) / full
    if reachable < target.value:
        raise EPruneError(f"{target.kind} {target.value:g} is out of reach: pruning every prunable group to "
                          f"its minimum removes {reachable:.3f} of the {metric}")
    state.shrink(goal)
    state.give_back(goal)
    tolerance = 0.005 * full
    for _ in range(2 * len(channels)):
        if goal - state.total <= tolerance:
            break
        best = None
        for g in channels:
            if state.keep[g] + state.step > channels[g]:
                continue
            trial = _Greedy.__new__(_Greedy)
            trial.__dict__.update(state.__dict__, keep=dict(state.keep))
            trial.apply(g, trial.step)
            trial.shrink(goal, frozen=g)
            if trial.total <= goal and trial.total > (best.total if best else state.total):
                best = trial
        if best is None:
            break
        state = best
        state.give_back(goal)
    return state.keep
