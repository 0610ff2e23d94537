"""How well each selector solves the layer-wise problem they all share, against enumeration.

For the groups of a reference model small enough to enumerate every keep-set, prints each
method's keep-set and its relative reconstruction error (the least-squares re-fit of the
group's consumers on the kept channels, one-shot statistics of the calibration set) next
to the best keep-set of that size found by trying them all:

    python tools/layer_objective.py lenet5 --keep 1:3 2:5     # group:channels kept

Group ids are those of the report (``onnx-eprune inspect``). This separates two questions
the accuracy tables mix: does a selector find the channels its objective prefers, and does
that objective predict accuracy.
"""

from __future__ import annotations

import argparse
import itertools
from math import comb
from pathlib import Path

import numpy as np

from onnx_eprune.pipeline import PruneConfig, Pruner
from onnx_eprune.select.problem import explained_curve

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MAX_SETS = 200_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=["lenet5", "vgg16", "resnet18"])
    ap.add_argument("--keep", nargs="+", required=True, help="group:kept pairs, e.g. 1:3 2:5")
    args = ap.parse_args()
    calib = "calib28.npy" if args.model == "lenet5" else "calib32.npy"
    pruner = Pruner(str(REFERENCE / f"{args.model}.onnx"), str(REFERENCE / calib),
                    PruneConfig(keep_ratio=1.0, mode="oneshot", device="cpu"))
    stats = pruner.calibrate().consumers
    keep = [(int(g), int(k)) for g, k in (pair.split(":") for pair in args.keep)]
    terms = pruner.group_terms(sorted({g for g, _k in keep}), stats, {})
    for gid, k in keep:
        group = pruner.analysis.groups[gid]
        if comb(group.channels, k) > MAX_SETS:
            print(f"group {gid}: {comb(group.channels, k)} keep-sets of {k} of {group.channels}: too many to enumerate")
            continue

        def error(kept) -> float:
            kept = list(kept)
            order = np.array(kept + [c for c in range(group.channels) if c not in kept])
            return float(sum(explained_curve(t, order)[k] for t in terms[gid]))

        sets = {}
        for method in ("entropic", "lasso", "thinet", "l1"):
            pruner.config.method = method
            sets[method] = pruner.ranking(gid, terms[gid])[:k]
        best = min(itertools.combinations(range(group.channels), k), key=error)
        print(f"group {gid}: keep {k} of {group.channels}")
        for name, kept in [*sets.items(), ("best of all", best)]:
            print(f"  {name:12s} {sorted(int(c) for c in kept)}  relative error {error(kept):.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
