"""Which group's keep-set makes a baseline keep more accuracy? Prune with entropic selection
but take the keep-sets of the named groups from another method's ranking (the allocation
stays entropic's), then compare with plain entropic on the full test split: accuracy, top-1
agreement with the original, and the relative error of every Conv/Gemm/MatMul/Relu output
against the original's, on the channels the pruned output keeps (found by the width of its
group: a diagnostic for models whose groups differ in width, as LeNet-5's do).

    python tools/mixed_selection.py lenet5 --sparsity 0.73 --swap 2 --method l1
    python tools/mixed_selection.py lenet5 --flops 0.73 --mode oneshot --swap 1 --method lasso

Group ids are those of the report (``groups[i]["id"]``). ``lasso`` and ``thinet`` rank the
swapped group on the same statistics as entropic's selection of it (in one-shot mode the
original network's; in sequential mode the stage's), cut at the same count. ``--on
calibration`` measures on the calibration images instead (agreement and errors only: they
carry no labels).
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
from onnx_eprune.pipeline import Pruner, PruneConfig, _channels_of
from onnx_eprune.select import DATA_METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import MODELS, REFERENCE  # noqa: E402


class MixedPruner(Pruner):
    """Entropic selection, except that the groups in ``swap`` keep ``method``'s first k."""

    lean_stages = False  # the swapped-in baselines rank on the stages' full statistics

    def __init__(self, *args, swap: set[int], method: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.swap, self.swap_method = swap, method
        self.kept: dict[int, np.ndarray] = {}

    def choose(self, gid, k, ranking, terms):
        terms = functools.cache(terms)  # a sequential stage builds them on each call
        keep = super().choose(gid, k, ranking, terms)
        if gid in self.swap:
            unit = self.analysis.groups[gid].unit
            order = self.ranking(gid, terms() if self.swap_method in DATA_METHODS else [], self.swap_method)
            keep = _channels_of(order[:k // unit], unit)
        self.kept[gid] = keep
        return keep


def layer_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every Conv/Gemm/MatMul/Relu output of ``model`` on ``x`` (one input)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [n.output[0] for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "Relu")]
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=list(MODELS))
    level = ap.add_mutually_exclusive_group(required=True)
    level.add_argument("--sparsity", type=float)
    level.add_argument("--flops", type=float, help="a FLOPs (MACs) reduction instead of a sparsity")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"])
    ap.add_argument("--swap", nargs="+", type=int, required=True, help="group ids that take the other method's keep-set")
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
    ref = layer_outputs(model, x)
    logits = model.graph.output[0].name
    for label, swap in (("entropic", set()), (f"{args.method} on groups {sorted(args.swap)}", set(args.swap))):
        config = PruneConfig(sparsity=args.sparsity, flops_reduction=args.flops, mode=args.mode, device="cpu")
        pruner = MixedPruner(model, str(REFERENCE / calib), config, swap=swap, method=args.method)
        result = pruner.run()
        got = layer_outputs(result.model, x)
        # a pruned output is compared on the channels it keeps: those of the group whose
        # producer made it (matched by width)
        kept_by_width = {pruner.analysis.groups[g].channels: v for g, v in pruner.kept.items()}
        print(f"{label}: kept {[len(v) for _, v in sorted(pruner.kept.items())]}")
        for name, a in ref.items():
            b = got[name]
            if a.shape != b.shape:
                if a.shape[1] not in kept_by_width:
                    continue
                a = np.take(a, kept_by_width[a.shape[1]], axis=1)
            err = np.linalg.norm((a - b).astype(np.float64)) / np.linalg.norm(a.astype(np.float64))
            print(f"  {name:28s} relative error {err:.4f}")
        agree = np.mean(ref[logits].argmax(1) == got[logits].argmax(1))
        acc = "" if y is None else f", accuracy {100 * np.mean(got[logits].argmax(1) == y):.2f}% " \
            f"(original {100 * np.mean(ref[logits].argmax(1) == y):.2f}%)"
        print(f"  top-1 agreement {100 * agree:.2f}%{acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
