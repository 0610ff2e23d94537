"""Every keep-set of LeNet-5's conv2: the test accuracies a label-free selection picks from.

Where a target prunes conv2 alone (LeNet-5 at FLOPs 0.3 keeps 9 of its 16 channels with
every method, and the other groups whole), the pruned network is conv2's keep-set plus the
re-fits on the calibration images. This enumerates all C(16, k) keep-sets, re-fits fc1 for
each with the tool's own re-fit (``select/reconstruct.refit``, fixed ridge) and, in
sequential mode, fc2 and fc3 after it as the pipeline does, runs the network (numpy) on
the full test split, and prints

* the spread of test accuracy over the keep-sets, and over the n best by each label-free
  score computed on the calibration images: the re-fit objective (fc1's relative error,
  which entropic, LASSO and ThiNet minimise), the same two-fold cross-validated (each half's
  re-fit scored on the other half), the logits' relative error, the softmax KL to the
  original, top-1 agreement with the original; and by the objective measured on the test
  images themselves (calibration re-fit), an oracle for a calibration set without limit;
* how much of the accuracy differences belong to the keep-set rather than to the test
  images: accuracy on the even-numbered test images against the odd ones;
* where each method's keep-set (the pipeline's, same target) ranks by the objective and by
  test accuracy, also on each half; its accuracy here is checked against the pruned ONNX
  model's.

    python tools/keepset_landscape.py --flops 0.3
    python tools/keepset_landscape.py --flops 0.3 --draw 1

One thread enumerates the 11440 keep-sets of k = 9 in about 16 minutes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from scipy.stats import spearmanr

from onnx_eprune.datasets import load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy
from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import prune
from onnx_eprune.select.reconstruct import refit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import REFERENCE, calibration_set  # noqa: E402
from mixed_selection import softmax_kl  # noqa: E402

FEATURES = "/Flatten_output_0"  # fc1's input: conv2's 16 channels x 5 x 5, channel-major
PER_CHANNEL = 25
CONV2_GROUP = 2  # conv2's group id in the report
METHODS = ("entropic", "lasso", "thinet", "l1", "random")
TOP = (1, 5, 20, 100)


class LeNetTail:
    """LeNet-5 from fc1's input on: the features and logits of a set of images, and the
    logits with fc1 replaced."""

    def __init__(self, model: onnx.ModelProto):
        self.w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
        self.session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        self.channels = len(self.w["c2.weight"])  # conv2's output channels

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, 400), logits (N, 10)) of the original network."""
        logits, features = self.session.run(None, {self.session.get_inputs()[0].name: x.astype(np.float32)})
        return features.astype(np.float64), logits.astype(np.float64)

    def logits(self, fc1_out: np.ndarray, head: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        """(N, 10) logits from fc1's pre-activation output (N, 120), through fc2 and fc3 with
        the weights and biases ``head`` (the original ones if None)."""
        (w2, b2), (w3, b3) = head or self.head()
        return np.maximum(np.maximum(fc1_out, 0) @ w2.T + b2, 0) @ w3.T + b3

    def head(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """fc2's and fc3's original weights and biases."""
        return [(self.w[f"{name}.weight"], self.w[f"{name}.bias"]) for name in ("f2", "f3")]


def moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(G, P, mean_x, mean_y): covariance of the rows of ``x`` and their cross-covariance
    with ``y``, as :func:`refit` takes them."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    centred = x - mean_x
    return centred.T @ centred / len(x), centred.T @ (y - mean_y) / len(x), mean_x, mean_y


def even_odd(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the even- and the odd-numbered of ``n`` rows."""
    even = np.arange(n) % 2 == 0
    return even, ~even


def refit_head(tail: LeNetTail, fc1_out: np.ndarray, fc1_original: np.ndarray,
               ridge: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """fc2 and fc3 re-fitted, one after the other, to the original network's outputs from
    the pruned network's inputs, as a sequential run does once conv2 has lost channels."""
    head = []
    x, x_original = np.maximum(fc1_out, 0), np.maximum(fc1_original, 0)
    for w, b in tail.head():
        G, P, mean_x, mean_y = moments(x, x_original @ w.T)
        omega, bias = refit(G, P, mean_x, mean_y, b, w, ridge)
        head.append((omega, bias))
        x, x_original = np.maximum(x @ omega.T + bias, 0), np.maximum(x_original @ w.T + b, 0)
    return head


def method_sets(path: Path, calib: np.ndarray, target: dict, ridge: float, mode: str, x_test: np.ndarray,
                y_test: np.ndarray) -> dict[str, tuple[tuple[int, ...], float]]:
    """Each method's conv2 keep-set and its pruned model's test accuracy; refuses a target
    that prunes any other group."""
    found = {}
    for method in METHODS:
        result = prune(str(path), calib, PruneConfig(method=method, mode=mode, refit_ridge=ridge, **target))
        for group in result.report["groups"]:
            if group["id"] != CONV2_GROUP and group.get("channels_after", 0) != group.get("channels_before", 0):
                raise SystemExit(f"{method} prunes group {group['id']} too: pick a target that prunes conv2 alone")
        found[method] = (tuple(result.report["groups"][CONV2_GROUP]["kept_channels"]),
                         accuracy(result.model, x_test, y_test, ["CPUExecutionProvider"]))
    return found


def landscape(tail: LeNetTail, calib: np.ndarray, k: int, ridge: float, sequential: bool, f_test: np.ndarray,
              y_test: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of every k-subset of conv2's channels (arrays over the subsets, in
    ``itertools.combinations`` order): ``objective`` (fc1's relative re-fit error on the
    calibration images), ``objective_cv`` (the same, two-fold cross-validated on them),
    ``objective_test`` (the calibration re-fit's relative error on the test images),
    ``logit_error``, ``kl`` (nats per image), ``agreement`` (all three on the calibration
    images against the original), ``accuracy`` on the test split, whose features (fc1's
    input) are ``f_test``, and ``accuracy_even`` / ``accuracy_odd`` on its even- / odd-
    numbered images."""
    f_cal, l_cal = tail.run(calib)
    w1, b1 = tail.w["f1.weight"], tail.w["f1.bias"]
    target = f_cal @ w1.T  # fc1's original output without its bias
    G, P, mean_x, mean_y = moments(f_cal, target)
    spread = ((target - mean_y) ** 2).sum()
    logit_spread = ((l_cal - l_cal.mean(0)) ** 2).sum()
    top1 = l_cal.argmax(1)
    # the two folds: the moments of one half, and the features and biased target of the other
    folds = [(moments(f_cal[fit], target[fit]), f_cal[held_out], target[held_out] + b1)
             for fit, held_out in itertools.permutations(even_odd(len(f_cal)))]
    target_test = f_test @ w1.T
    spread_test = ((target_test - target_test.mean(0)) ** 2).sum()
    even_test, odd_test = even_odd(len(f_test))
    scores = {name: [] for name in ("objective", "objective_cv", "objective_test", "logit_error", "kl",
                                    "agreement", "accuracy", "accuracy_even", "accuracy_odd")}
    for subset in itertools.combinations(range(tail.channels), k):
        idx = np.concatenate([np.arange(c * PER_CHANNEL, (c + 1) * PER_CHANNEL) for c in subset])
        omega, bias = refit(G[np.ix_(idx, idx)], P[idx], mean_x[idx], mean_y, b1, w1[:, idx], ridge)
        out = f_cal[:, idx] @ omega.T + bias
        head = refit_head(tail, out, target + b1, ridge) if sequential else None
        logits = tail.logits(out, head)
        scores["objective"].append(((out - target - b1) ** 2).sum() / spread)
        # Two-fold: each half's re-fit scored on the other half, the error a set makes on images it was not fitted to.
        cv = 0.0
        for (G_h, P_h, mx_h, my_h), f_held, y_held in folds:
            om_h, b_h = refit(G_h[np.ix_(idx, idx)], P_h[idx], mx_h[idx], my_h, b1, w1[:, idx], ridge)
            cv += ((f_held[:, idx] @ om_h.T + b_h - y_held) ** 2).sum()
        scores["objective_cv"].append(cv / spread)
        scores["logit_error"].append(((logits - l_cal) ** 2).sum() / logit_spread)
        scores["kl"].append(softmax_kl(l_cal, logits))
        scores["agreement"].append(float((logits.argmax(1) == top1).mean()))
        out_test = f_test[:, idx] @ omega.T + bias
        scores["objective_test"].append(((out_test - target_test - b1) ** 2).sum() / spread_test)
        hits = tail.logits(out_test, head).argmax(1) == y_test
        scores["accuracy"].append(float(hits.mean()))
        scores["accuracy_even"].append(float(hits[even_test].mean()))
        scores["accuracy_odd"].append(float(hits[odd_test].mean()))
    return {name: np.asarray(values) for name, values in scores.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--flops", type=float)
    target.add_argument("--sparsity", type=float)
    parser.add_argument("--draw", type=int, default=0, help="calibration draw (0: the reference file)")
    parser.add_argument("--ridge", type=float, default=0.01, help="the re-fit's relative ridge")
    parser.add_argument("--mode", choices=("sequential", "oneshot"), default="sequential",
                        help="sequential also re-fits fc2 and fc3 (as the pipeline does); oneshot fc1 alone")
    parser.add_argument("--dump", type=Path, help="also save every keep-set's scores (.npz) for later analysis")
    args = parser.parse_args()
    path = REFERENCE / "lenet5.onnx"
    calib = calibration_set("lenet5", args.draw, REFERENCE)
    calib = np.load(calib) if isinstance(calib, str) else calib
    chosen = {"flops_reduction": args.flops} if args.flops is not None else {"sparsity": args.sparsity}
    x_test, y_test = load_fashion_mnist("test")
    x_test = preprocess(x_test, 28)
    sets = method_sets(path, calib, chosen, args.ridge, args.mode, x_test, y_test)
    k = len(sets["entropic"][0])
    tail = LeNetTail(onnx.load(str(path)))
    f_test, l_test = tail.run(x_test)
    s = landscape(tail, calib, k, args.ridge, args.mode == "sequential", f_test, y_test)
    subsets = list(itertools.combinations(range(tail.channels), k))
    # a data-free score: the summed L1 norm of the kept conv2 filters, what `l1` ranks by
    norms = np.abs(tail.w["c2.weight"]).reshape(tail.channels, -1).sum(1)
    s["filter_norm"] = np.array([norms[list(subset)].sum() for subset in subsets])
    if args.dump:
        np.savez(args.dump, subsets=np.array(subsets), **s,
                 **{f"set_{m}": np.array(kept) for m, (kept, _) in sets.items()})
    acc = s["accuracy"]
    original = float((l_test.argmax(1) == y_test).mean())
    print(f"LeNet-5 {chosen}, {args.mode}, calibration draw {args.draw}, ridge {args.ridge:g}: conv2 keeps {k} of "
          f"{tail.channels}, "
          f"{len(subsets)} keep-sets; original accuracy {100 * original:.2f}%")
    print(f"test accuracy over all keep-sets: min {100 * acc.min():.2f}%, median {100 * np.median(acc):.2f}%, "
          f"max {100 * acc.max():.2f}%")
    print("\nthe n keep-sets a label-free score ranks best, their test accuracy (min / mean / max, %):\n")
    print("| score (calibration images; objective_test: test images) | Spearman with accuracy | "
          + " | ".join(f"n = {n}" for n in TOP) + " |")
    print("|---|---|" + "---|" * len(TOP))
    for name, higher_better in (("objective", False), ("objective_cv", False), ("objective_test", False),
                                ("logit_error", False), ("kl", False), ("agreement", True),
                                ("filter_norm", True)):
        order = np.argsort(-s[name] if higher_better else s[name], kind="stable")
        rho = spearmanr(s[name] if higher_better else -s[name], acc)[0]  # ties (agreement) get mean ranks
        cells = [f"{100 * acc[order[:n]].min():.2f} / {100 * acc[order[:n]].mean():.2f} / "
                 f"{100 * acc[order[:n]].max():.2f}" for n in TOP]
        print(f"| {name} | {rho:+.3f} | " + " | ".join(cells) + " |")
    even, odd = s["accuracy_even"], s["accuracy_odd"]
    best = np.argsort(s["objective"], kind="stable")[:100]
    print(f"\nhow much of the test accuracy is the set, not the test images: Spearman of accuracy on the even "
          f"and the odd test images {spearmanr(even, odd)[0]:+.3f} over all sets, "
          f"{spearmanr(even[best], odd[best])[0]:+.3f} over the objective's 100 best; the 20 best on the even "
          f"images score {100 * odd[np.argsort(-even, kind='stable')[:20]].mean():.2f}% on the odd "
          f"(all sets' mean {100 * odd.mean():.2f}%, the objective's 20 best "
          f"{100 * odd[best[:20]].mean():.2f}%)")
    print("\neach method's keep-set:\n")
    print("| method | conv2 keep-set | objective (rank) | test accuracy here (rank) | even / odd test images (ranks) "
          "| pruned model's |")
    print("|---|---|---|---|---|---|")
    for method, (kept, model_acc) in sets.items():
        i = subsets.index(kept)
        obj_rank = int((s["objective"] < s["objective"][i]).sum()) + 1
        acc_rank, even_rank, odd_rank = (int((a > a[i]).sum()) + 1 for a in (acc, even, odd))
        print(f"| {method} | {list(kept)} | {s['objective'][i]:.5f} ({obj_rank}) | "
              f"{100 * acc[i]:.2f}% ({acc_rank}) | {100 * even[i]:.2f} / {100 * odd[i]:.2f}% "
              f"({even_rank} / {odd_rank}) | {100 * model_acc:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
