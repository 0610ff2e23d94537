"""Keep counts per channel group from a global target.

``--keep-ratio`` keeps ``round(R*C)`` channels in every prunable group (the nearest count
that ``--round-to``, or its automatic default, and the group's conv groups allow). ``--sparsity`` and
``--flops-reduction`` are global: channels are removed greedily, each step from the group
whose damage curve rises least per parameter (or MAC) saved, until the target is met; then
channels are given back while the target still holds, and a step of one group is traded for
finer steps of others while that lands closer to the target (a single channel can carry a
large share of the cost, e.g. one feeding a big Gemm). Where that still ends more than a
point past the target, trades of up to three steps of one group, with the others shrunk and
given back, are searched for counts closer to it.
"""

from __future__ import annotations

import heapq
import math
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


# Without --round-to, convolution outputs of at least AUTO_ROUND_MIN channels keep
# multiples of AUTO_ROUND: onnxruntime's CPU convolutions run in blocks of 8 (AVX2) or 16
# (AVX-512) channels, and counts off those blocks fall back to slower kernels (VGG-16 at
# half the MACs: 0.77 of the MAC reduction shows in the latency with any count, 0.98 with
# multiples of 8). Narrower groups keep any count (a step of 8 would be too coarse for
# them), and so do Gemm/MatMul outputs, whose matrix kernels take any width.
AUTO_ROUND = 8
AUTO_ROUND_MIN = 64


def step(channels: int, round_to: int | None = None, unit: int = 1, conv: bool = True) -> int:
    """The keep-count step of a group: a multiple of ``round_to`` (``None``: automatic, see
    ``AUTO_ROUND``; ``conv``: the group is produced by convolutions) and of ``unit`` (its
    conv groups)."""
    if round_to is None:
        round_to = AUTO_ROUND if conv and channels >= AUTO_ROUND_MIN else 1
    return math.lcm(max(1, round_to), max(1, unit))


def levels(channels: int, step: int = 1, least: int = 1) -> np.ndarray:
    """The keep counts allowed for a group of ``channels``, ascending: the multiples of
    ``step`` (see :func:`step`) from ``least`` on, and the whole group."""
    first = max(step, -(-least // step) * step)
    return np.unique(np.append(np.arange(first, channels, step), channels))


def least_counts(channels: dict[int, int], min_keep: float) -> dict[int, int]:
    """The fewest channels each group may keep under ``--min-keep``: ``ceil(min_keep*C)``
    (at least one)."""
    # the small tolerance keeps a product like 0.3 * 10 from rounding up to 4
    return {g: max(1, math.ceil(min_keep * c - 1e-9)) for g, c in channels.items()}


def uniform_counts(channels: dict[int, int], ratio: float, steps: dict[int, int] | None = None,
                   least: dict[int, int] | None = None) -> dict[int, int]:
    """The allowed count nearest to ``round(ratio*C)`` in every group (see :func:`levels`)."""
    out = {}
    for g, c in channels.items():
        allowed = levels(c, (steps or {}).get(g, 1), (least or {}).get(g, 1))
        out[g] = int(allowed[np.argmin(np.abs(allowed - round(ratio * c)))])
    return out


class _Greedy:
    """Keep counts, their cost, and the cost/damage trade-off of one step per group."""

    def __init__(self, channels: dict[int, int], damage: dict[int, np.ndarray], costs: CostModel, metric: str,
                 steps: dict[int, int], least: dict[int, int]):
        self.channels, self.damage, self.metric = channels, damage, metric
        self.levels = {g: levels(c, steps.get(g, 1), least.get(g, 1)) for g, c in channels.items()}
        self.layers = {g: costs.layers_of(g) for g in channels}
        self.neighbours = {g: sorted({h for layer in self.layers[g] for h in layer.groups()} & set(channels))
                           for g in channels}
        self.keep = dict(channels)
        self.total = costs.total(metric)

    def below(self, g: int) -> int | None:
        """Channels removed by the next step down from the current count (None at the floor)."""
        lv = self.levels[g]
        i = int(np.searchsorted(lv, self.keep[g]))
        return int(self.keep[g] - lv[i - 1]) if i > 0 else None

    def above(self, g: int) -> int | None:
        """Channels added by the next step up (None when the group is whole)."""
        lv = self.levels[g]
        i = int(np.searchsorted(lv, self.keep[g], side="right"))
        return int(lv[i] - self.keep[g]) if i < len(lv) else None

    def harm(self) -> float:
        """The summed damage of the current counts."""
        return float(sum(self.damage[g][k] for g, k in self.keep.items()))

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
        k, step = self.keep[g], self.below(g)
        if step is None:
            return None
        saving = -self.change(g, -step)
        if saving <= 0:
            return None
        return (self.damage[g][k - step] - self.damage[g][k]) / saving, saving

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
            self.apply(g, -self.below(g))
            for h in self.neighbours[g]:  # their savings depend on g's count
                push(h)

    def give_back(self, goal: float) -> None:
        """Add steps back, most useful per cost first, while the cost stays within ``goal``."""
        while True:
            best, best_step, best_gain = None, 0, -np.inf
            for g in self.channels:
                k, step = self.keep[g], self.above(g)
                if step is None:
                    continue
                added = self.change(g, step)
                if self.total + added > goal:
                    continue
                gain = (self.damage[g][k] - self.damage[g][k + step]) / max(added, 1)
                if gain > best_gain:
                    best, best_step, best_gain = g, step, gain
            if best is None:
                return
            self.apply(best, best_step)


def reach(channels: dict[int, int], costs: CostModel, metric: str, steps: dict[int, int] | None = None,
          least: dict[int, int] | None = None) -> float:
    """The fraction of ``metric`` ("params" or "macs") removed with every group of
    ``channels`` at its smallest allowed count (see :func:`levels`): the largest target
    within reach."""
    floor = {g: int(levels(c, (steps or {}).get(g, 1), (least or {}).get(g, 1))[0]) for g, c in channels.items()}
    return 1.0 - costs.total(metric, floor) / costs.total(metric)


def check_reachable(channels: dict[int, int], costs: CostModel, target: Target, steps: dict[int, int] | None = None,
                    least: dict[int, int] | None = None) -> None:
    """Raise :class:`EPruneError` when ``target`` is out of reach even with every group at its
    smallest allowed count (see :func:`levels`)."""
    if not channels:
        raise EPruneError("the model has no prunable channel group; nothing to remove")
    reachable = reach(channels, costs, target.metric, steps, least)
    if reachable < target.value:
        shown = math.floor(reachable * 1000) / 1000  # rounded down: never shown as the target itself
        raise EPruneError(f"{target.kind} {target.value!r} is out of reach: pruning every prunable group to "
                          f"its minimum removes {shown:.3f} of the {target.metric}")


def allocate(channels: dict[int, int], curves: dict[int, np.ndarray], costs: CostModel, target: Target,
             steps: dict[int, int] | None = None, least: dict[int, int] | None = None) -> dict[int, int]:
    """Greedy allocation of keep counts for a global parameter or MAC target.

    Parameters
    ----------
    channels : group id -> channel count C of every prunable group.
    curves : group id -> array (C+1,), the group's damage when keeping k channels
        (weighted relative reconstruction error over its consumers); made non-increasing.
    costs : the model's cost terms. target : the global target (sparsity or flops).
    steps : group id -> keep counts are multiples of this (or the whole group); see :func:`step`.
    least : group id -> the group keeps at least this many channels (see :func:`least_counts`).
    """
    check_reachable(channels, costs, target, steps, least)
    metric = target.metric
    full = costs.total(metric)
    goal = (1.0 - target.value) * full
    damage = {g: np.minimum.accumulate(np.asarray(curves[g], np.float64)) for g in channels}
    state = _Greedy(channels, damage, costs, metric, steps or {}, least or {})
    state.shrink(goal)
    state.give_back(goal)
    tolerance = 0.005 * full
    for _ in range(2 * len(channels)):
        if goal - state.total <= tolerance:
            break
        best = None
        for g in channels:
            step = state.above(g)
            if step is None:
                continue
            trial = _copy(state)
            trial.apply(g, step)
            trial.shrink(goal, frozen=g)
            # closer to the goal; within a point of it, only with no more damage: a trade that
            # lands closer by removing channels that matter more (a live one for a dead one)
            # is no improvement once the target is met as closely as the README promises
            if trial.total <= goal and trial.total > (best.total if best else state.total) and \
                    (goal - state.total > 0.01 * full or trial.harm() <= state.harm()):
                best = trial
        if best is None:
            break
        state = best
        state.give_back(goal)
    if goal - state.total > 0.01 * full:
        state = _wider_trades(state, goal, 0.01 * full)
    return state.keep


def _wider_trades(state: _Greedy, goal: float, within: float) -> _Greedy:
    """Counts closer to ``goal`` than the one-step trades found, for a state still more than
    ``within`` below it: one group up by one to three steps, the others shrunk to the goal
    (greedily, or one of them alone) and then given back what still fits (a group two steps
    up and another one down, or one channel of a wide convolution for many of a
    classifier's). Of the counts that land within ``within`` (the README promises a target
    met within a point where the channels allow it), the least damaging; else the closest."""
    def rank(trial: _Greedy) -> tuple:
        if goal - trial.total <= within:
            return 0, trial.harm(), -trial.total
        return 1, -trial.total

    for _ in range(2 * len(state.channels)):
        if goal - state.total <= within:
            break
        best = state
        for g in state.channels:
            grown = _copy(state)
            for _ in range(3):
                up = grown.above(g)
                if up is None:
                    break
                grown.apply(g, up)
                for trial in _shrunk_to(grown, goal, g):
                    trial.give_back(goal)
                    if trial.total <= goal and rank(trial) < rank(best):
                        best = trial
        if best is state:
            break
        state = best
    return state


def _shrunk_to(state: _Greedy, goal: float, frozen: int) -> list[_Greedy]:
    """Copies of ``state`` brought down to ``goal`` without touching group ``frozen``: by the
    greedy order, and by each other group alone (where that one can get there)."""
    greedy = _copy(state)
    greedy.shrink(goal, frozen=frozen)
    found = [greedy]
    for h in state.channels:
        if h == frozen:
            continue
        alone = _copy(state)
        while alone.total > goal and alone.below(h) is not None:
            alone.apply(h, -alone.below(h))
        if alone.total <= goal:
            found.append(alone)
    return found


def _copy(state: _Greedy) -> _Greedy:
    """A state whose counts change apart from ``state``'s (the rest is shared, read-only)."""
    trial = _Greedy.__new__(_Greedy)
    trial.__dict__.update(state.__dict__, keep=dict(state.keep))
    return trial
