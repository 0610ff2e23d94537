"""How well each selector solves the layer-wise problem they all share.

Two views. ``--keep``: for the groups of a reference model small enough to enumerate every
keep-set, prints each method's keep-set and its relative reconstruction error (the
least-squares re-fit of the group's consumers on the kept channels, one-shot statistics of
the calibration set) next to the best keep-set of that size found by trying them all:

    python tools/layer_objective.py lenet5 --keep 1:3 2:5     # group:channels kept

``--sparsity`` / ``--flops``: prunes with the default pipeline (entropic) at that level and,
at every group it decides, scores entropic's keep-set and every other method's (each
ranking the same statistics, cut at the same count) on the group's full, uncompressed
statistics: in sequential mode the stage's, in one-shot mode the original network's:

    python tools/layer_objective.py vgg16 --sparsity 0.89 [--mode oneshot]

Group ids are those of the report (``onnx-eprune inspect``). This separates two questions
the accuracy tables mix: does a selector find the channels its objective prefers, and does
that objective predict accuracy.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from math import comb
from pathlib import Path

import numpy as np

from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import Pruner
from onnx_eprune.select import DATA_METHODS
from onnx_eprune.select.problem import ConsumerTerm, explained_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import MODELS, REFERENCE  # noqa: E402

MAX_SETS = 200_000
OTHERS = ("thinet", "lasso", "l1", "random")


def layer_error(terms: list[ConsumerTerm], kept: np.ndarray, blocks: int) -> float:
    """The group's objective for keeping blocks ``kept``: the sum over its consumer terms of
    the relative error of the least-squares re-fit (what the entropic solver minimises)."""
    kept = np.asarray(kept, dtype=int)
    order = np.concatenate([kept, np.setdiff1d(np.arange(blocks), kept)])
    return float(sum(explained_curve(t, order)[len(kept)] for t in terms))


class StageScores(Pruner):
    """The default pipeline, scoring every method's keep-set wherever a group is decided."""

    lean_stages = False  # the scores (and the baselines' rankings) read the stages' full statistics

    def _choose_blocks(self, gid, k, ranking, terms):
        terms = functools.cache(terms)  # a sequential stage builds them on each call
        keep = super()._choose_blocks(gid, k, ranking, terms)
        group_terms = terms()
        blocks = group_terms[0].channels if group_terms else 0
        if 0 < k < blocks:
            scores = {"entropic": layer_error(group_terms, keep, blocks)}
            for method in OTHERS:
                order = self.ranking(gid, group_terms if method in DATA_METHODS else [], method)
                scores[method] = layer_error(group_terms, order[:k], blocks)
            best = min(scores, key=scores.get)
            print(f"group {gid}: keep {k} of {blocks}  " + "  ".join(f"{m} {v:.5f}" for m, v in scores.items())
                  + f"  lowest: {best}", flush=True)
        return keep


def enumerate_groups(model: str, keep: list[tuple[int, int]]) -> None:
    file, calib, _size = MODELS[model]
    pruner = Pruner(str(REFERENCE / file), str(REFERENCE / calib),
                    PruneConfig(keep_ratio=1.0, mode="oneshot", device="cpu"))
    stats = pruner.calibrate().consumers
    terms = pruner.group_terms(sorted({g for g, _k in keep}), stats, {})
    for gid, k in keep:
        group = pruner.analysis.groups[gid]
        if comb(group.channels, k) > MAX_SETS:
            print(f"group {gid}: {comb(group.channels, k)} keep-sets of {k} of {group.channels}: too many to enumerate")
            continue
        sets = {method: pruner.ranking(gid, terms[gid], method)[:k] for method in ("entropic", "lasso", "thinet", "l1")}
        best = min(itertools.combinations(range(group.channels), k),
                   key=lambda kept: layer_error(terms[gid], kept, group.channels))
        print(f"group {gid}: keep {k} of {group.channels}")
        for name, kept in [*sets.items(), ("best of all", best)]:
            print(f"  {name:12s} {sorted(int(c) for c in kept)}  "
                  f"relative error {layer_error(terms[gid], kept, group.channels):.5f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=list(MODELS))
    view = ap.add_mutually_exclusive_group(required=True)
    view.add_argument("--keep", nargs="+", help="group:kept pairs to enumerate, e.g. 1:3 2:5")
    view.add_argument("--sparsity", type=float, help="score every method's keep-set at this sparsity")
    view.add_argument("--flops", type=float, help="likewise at this FLOPs (MACs) reduction")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"])
    args = ap.parse_args()
    if args.keep:
        enumerate_groups(args.model, [(int(g), int(k)) for g, k in (pair.split(":") for pair in args.keep)])
        return 0
    file, calib, _size = MODELS[args.model]
    config = PruneConfig(sparsity=args.sparsity, flops_reduction=args.flops, mode=args.mode, device="cpu")
    StageScores(str(REFERENCE / file), str(REFERENCE / calib), config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
