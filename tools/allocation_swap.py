"""Is a baseline's lead the allocation or the selection? Prune with entropic and with a
baseline, then with each one's selection on the other's allocation (kept channels per
group), and measure all four on the full Fashion-MNIST test split.

    python tools/allocation_swap.py vgg16 --sparsity 0.5 --mode oneshot --method random
    python tools/allocation_swap.py lenet5 --flops 0.73 --mode oneshot --method lasso
    python tools/allocation_swap.py resnet18 --flops 0.5 --method random --refit-ridge 0.01

Prints, per run, the accuracy drop in points against the original, the parameters removed
and the kept channels of every prunable group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from onnx_eprune.cli_parser import refit_ridge_arg
from onnx_eprune.datasets import load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy
from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import Pruner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import MODELS, REFERENCE  # noqa: E402


class AllocatedPruner(Pruner):
    """A pruner whose kept channels per group are ``counts`` (None: its own allocation)."""

    def __init__(self, *args, counts: dict[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = counts

    def allocate(self, gids, stats):
        counts, rankings = super().allocate(gids, stats)
        return (counts if self.counts is None else {g: self.counts[g] for g in counts}), rankings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=list(MODELS))
    level = ap.add_mutually_exclusive_group(required=True)
    level.add_argument("--sparsity", type=float)
    level.add_argument("--flops", type=float, help="a FLOPs (MACs) reduction instead of a sparsity")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"])
    ap.add_argument("--method", default="random", choices=["l1", "random", "lasso", "thinet"])
    ap.add_argument("--refit-ridge", type=refit_ridge_arg, metavar="R|auto|auto-thin",
                    help="the re-fit's ridge (default: the tool's; the benchmark tables use 0.01)")
    args = ap.parse_args()
    ridge = {} if args.refit_ridge is None else {"refit_ridge": args.refit_ridge}
    onnx_file, calib_file, size = MODELS[args.model]
    path, calib = REFERENCE / onnx_file, REFERENCE / calib_file
    images, labels = load_fashion_mnist("test")
    x = preprocess(images, size)
    base = accuracy(onnx.load(path), x, labels)
    counts: dict[str, dict[int, int]] = {}
    for method, allocation in [(args.method, None), ("entropic", None), ("entropic", args.method),
                               (args.method, "entropic")]:
        pruner = AllocatedPruner(str(path), str(calib),
                                 PruneConfig(sparsity=args.sparsity, flops_reduction=args.flops, mode=args.mode,
                                             method=method, **ridge),
                                 counts=None if allocation is None else counts[allocation])
        result = pruner.run()
        kept = {g["id"]: g["channels_after"] for g in result.report["groups"] if not g.get("frozen")}
        counts.setdefault(method, kept)
        drop = 100 * (base - accuracy(result.model, x, labels))
        label = method + ("" if allocation is None else f" on {allocation}'s allocation")
        params, macs = (100 * result.report[k]["removed_fraction"] for k in ("params", "macs"))
        print(f"{label:36s} drop {drop:6.2f} points, {params:.1f}% of the parameters and {macs:.1f}% of the MACs "
              f"removed, kept {list(kept.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
