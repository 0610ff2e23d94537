"""Which group's keep-set makes a baseline keep more accuracy? Prune with entropic selection
but take the keep-sets of the named groups from another method's ranking (the allocation
stays entropic's), then compare with plain entropic on the full test split: accuracy, top-1
agreement with the original, and the relative error of every Conv/Gemm/MatMul/Relu output
against the original's, on the channels the pruned output keeps (found by the width of its
group: a diagnostic for models whose groups differ in width, as LeNet-5's do).

    python tools/mixed_selection.py lenet5 --sparsity 0.73 --swap 2 --method l1
    python tools/mixed_selection.py lenet5 --flops 0.73 --mode oneshot --swap 1 --method lasso
    python tools/mixed_selection.py lenet5 --sparsity 0.73 --swap all --method l1 --on calibration

Group ids are those of the report (``groups[i]["id"]``); ``all`` swaps every group (the
other method's selection on entropic's allocation). ``lasso`` and ``thinet`` rank the
swapped group on the same statistics as entropic's selection of it (in one-shot mode the
original network's; in sequential mode the stage's), cut at the same count. ``--on
calibration`` measures on the calibration images instead (agreement and errors only: they
carry no labels). Besides the top-1 agreement, the mean KL divergence of the pruned
network's softmax from the original's (nats per image): a label-free score that weighs
logit errors by how much they move the predicted probabilities.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_eprune.datasets import load_fashion_mnist, preprocess
from onnx_eprune.evaluate import compare_outputs
from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import Pruner, _channels_of
from onnx_eprune.select import DATA_METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import MODELS, REFERENCE  # noqa: E402


class MixedPruner(Pruner):
    """Entropic selection, except that the groups in ``swap`` (every group if None) keep
    ``method``'s first k."""

    lean_stages = False  # the swapped-in baselines rank on the stages' full statistics

    def __init__(self, *args, swap: set[int] | None, method: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.swap, self.swap_method = swap, method
        self.kept: dict[int, np.ndarray] = {}

    def choose(self, gid, k, ranking, terms):
        terms = functools.cache(terms)  # a sequential stage builds them on each call
        keep = super().choose(gid, k, ranking, terms)
        if self.swap is None or gid in self.swap:  # None: every group
            unit = self.analysis.groups[gid].unit
            order = self.ranking(gid, terms() if self.swap_method in DATA_METHODS else [], self.swap_method)
            keep = _channels_of(order[:k // unit], unit)
        self.kept[gid] = keep
        return keep


def compare(model: onnx.ModelProto, pruned: list[onnx.ModelProto], x: np.ndarray,
            kept_by_width: list[dict[int, np.ndarray] | None], batch: int = 500
            ) -> tuple[np.ndarray, list[tuple[dict[str, float], np.ndarray]]]:
    """The original's logits on ``x`` (one input) and, per pruned model, the relative error
    of every hidden Conv/Gemm/MatMul/Relu output against the original's, on the channels the
    pruned output keeps (its ``kept_by_width``; None: no layer errors), with its logits.
    One pass in batches, the original run once per batch, so VGG-16 on the test split fits."""
    logits = model.graph.output[0].name
    hidden = [n.output[0] for n in model.graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul", "Relu") and n.output[0] != logits]

    def session(m: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
        return ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])

    def outputs(sess: ort.InferenceSession, xb: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: xb})))

    wanted = [hidden if k is not None else [] for k in kept_by_width]
    ref_sess = session(model, hidden if any(wanted) else [])
    sessions = [session(m, w) for m, w in zip(pruned, wanted)]
    sums = [{n: np.zeros(2) for n in w} for w in wanted]  # squared error, squared reference
    ref_logits, got_logits = [], [[] for _ in pruned]
    for i in range(0, len(x), batch):
        ref = outputs(ref_sess, x[i:i + batch])
        ref_logits.append(ref[logits])
        for sess, kept, acc, out in zip(sessions, kept_by_width, sums, got_logits):
            got = outputs(sess, x[i:i + batch])
            out.append(got[logits])
            for name in list(acc):
                a, b = ref[name].astype(np.float64), got[name].astype(np.float64)
                if a.shape != b.shape:
                    if a.shape[1] not in kept:  # a width no decided group has: not comparable
                        del acc[name]
                        continue
                    a = np.take(a, kept[a.shape[1]], axis=1)
                acc[name] += (np.sum((a - b) ** 2), np.sum(a * a))
    return np.concatenate(ref_logits), [({n: float(np.sqrt(e / r)) for n, (e, r) in acc.items()}, np.concatenate(out))
                                        for acc, out in zip(sums, got_logits)]


def softmax_kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(got)), in nats; both (N, classes)."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(ref), log_softmax(got)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def _usage_error(message: str) -> int:
    """One line on stderr and the usage-error status."""
    print(f"mixed_selection.py: error: {message}", file=sys.stderr)
    return 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=list(MODELS))
    level = ap.add_mutually_exclusive_group(required=True)
    level.add_argument("--sparsity", type=float)
    level.add_argument("--flops", type=float, help="a FLOPs (MACs) reduction instead of a sparsity")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"])
    ap.add_argument("--swap", nargs="+", required=True,
                    help="group ids that take the other method's keep-set, or 'all'")
    ap.add_argument("--method", default="l1", choices=["l1", "random", "lasso", "thinet"])
    ap.add_argument("--on", default="test", choices=["test", "calibration"])
    args = ap.parse_args()
    file, calib, size = MODELS[args.model]
    model = onnx.load(str(REFERENCE / file))
    if args.on == "test":
        images, labels = load_fashion_mnist("test")
        x, y = preprocess(images, size), labels
    else:
        x, y = np.load(REFERENCE / calib), None
    try:
        swapped = None if args.swap == ["all"] else {int(g) for g in args.swap}
    except ValueError:
        return _usage_error(f"--swap {' '.join(args.swap)}: expected group ids (integers) or 'all'")
    config = PruneConfig(sparsity=args.sparsity, flops_reduction=args.flops, mode=args.mode, device="cpu")
    pruners = [(label, MixedPruner(model, str(REFERENCE / calib), config, swap=swap, method=args.method))
               for label, swap in (("entropic", set()), (f"{args.method} on groups {' '.join(args.swap)}", swapped))]
    # checked before any pruning: a mistyped id would pass for a result (plain entropic relabelled)
    prunable = sorted(g.gid for g in pruners[0][1].analysis.prunable_groups())
    unknown = sorted((swapped or set()) - set(prunable))
    if unknown:
        return _usage_error(f"--swap {' '.join(map(str, unknown))}: not a prunable group of {args.model} "
                            f"(its groups: {' '.join(map(str, prunable))})")
    runs = []
    for label, pruner in pruners:
        result = pruner.run()
        # a pruned output is compared on the channels it keeps: those of the group whose
        # producer made it, matched by width (so only where no two groups share a width)
        kept_by_width = {pruner.analysis.groups[g].channels: v for g, v in pruner.kept.items()}
        runs.append((label, pruner.kept, result.model, kept_by_width if len(kept_by_width) == len(pruner.kept) else None))
    ref, compared = compare(model, [r[2] for r in runs], x, [r[3] for r in runs])
    name = model.graph.output[0].name
    for (label, kept, _, kept_by_width), (errors, got) in zip(runs, compared):
        print(f"{label}: kept {[len(v) for _, v in sorted(kept.items())]}")
        if kept_by_width is None:
            print("  (groups share widths: no per-layer errors)")
        for layer, err in errors.items():
            print(f"  {layer:28s} relative error {err:.4f}")
        fit = compare_outputs([name], [ref], [got])[name]
        acc = "" if y is None else f", accuracy {100 * np.mean(got.argmax(1) == y):.2f}% " \
            f"(original {100 * np.mean(ref.argmax(1) == y):.2f}%)"
        print(f"  logits' relative error {fit['relative_error']:.4f}, top-1 agreement {100 * fit['top1_agreement']:.2f}%, "
              f"softmax KL to the original {softmax_kl(ref, got):.4g}{acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
