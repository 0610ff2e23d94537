"""How far `onnx-eprune search` goes within an accuracy tolerance on the reference models.

For each reference model (sequential entropic pruning, the reference calibration file), the
search bisects the sparsity in steps of ``--resolution`` for the largest one that loses at
most ``--max-drop`` points of top-1 accuracy, measured on:

- ``test``: the full 10,000-image test split itself: the largest sparsity within the
  tolerance that the quality tables ask for, found to the step instead of on their grid.
- ``train``: ``--validation`` Fashion-MNIST train images that are not in the calibration
  file (a user's held-out labelled set; the reference models were trained on these images,
  so their accuracy there is 1.5-2.5 points above the test split's and a drop reads
  differently); the model found is then measured on the full test split, which the search
  never saw.

    python tools/bench_search.py --models lenet5 vgg16 resnet18 --out bench/search.json
    python tools/bench_search.py --out bench/search.json --markdown   # the table of an earlier run

Writes one JSON row per (model, split) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import onnx_eprune
from onnx_eprune.datasets import fashion_mnist_available, load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MODELS = {"lenet5": ("lenet5.onnx", "calib28.npy", 28), "vgg16": ("vgg16.onnx", "calib32.npy", 32),
          "resnet18": ("resnet18.onnx", "calib32.npy", 32)}


def validation_set(calib: np.ndarray, size: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` preprocessed train images (and labels) drawn with ``seed`` from those not in
    ``calib`` (matched by their bytes)."""
    x, y = load_fashion_mnist("train")
    images = preprocess(x, size)
    calibrated = {row.tobytes() for row in calib.astype(images.dtype)}
    outside = np.array([i for i in range(len(images)) if images[i].tobytes() not in calibrated])
    if len(images) - len(outside) != len(calib):
        raise SystemExit(f"found {len(images) - len(outside)} of the {len(calib)} calibration images in the "
                         "train split")
    chosen = np.sort(np.random.default_rng(seed).choice(outside, count, replace=False))
    return images[chosen], y[chosen]


def run(name: str, split: str, args: argparse.Namespace, test: tuple[np.ndarray, np.ndarray]) -> dict:
    file, calib_file, size = MODELS[name]
    model, calib = args.reference / file, np.load(args.reference / calib_file)
    data, labels = test if split == "test" else validation_set(calib, size, args.validation)
    t0 = time.perf_counter()
    result = onnx_eprune.search(str(model), calib, max_drop=args.max_drop, data=data, labels=labels,
                                resolution=args.resolution, device="cpu")
    seconds = time.perf_counter() - t0
    best = result.best
    row = {"model": name, "split": split, "max_drop": args.max_drop, "resolution": args.resolution,
           "held_out": len(labels), "seconds": seconds, "reach": result.reach,
           "tried": [{"target": p.target, "params_removed": p.params_removed, "accuracy": p.accuracy,
                      "within": result.within(p)} for p in result.points],
           "best": None if best is None else best.target, "host": platform.node()}
    if best is not None:
        cpu = ["CPUExecutionProvider"]
        row.update(params_removed=best.params_removed, macs_removed=best.macs_removed,
                   test_original=accuracy(str(model), *test, cpu), test_pruned=accuracy(best.model, *test, cpu))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | searched on | sparsity found | params removed | MACs removed | drop where searched | "
             "test accuracy: original -> pruned (drop) | runs | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = "test split" if r["split"] == "test" else f"{r['held_out']} train images outside the calibration"
        if r["best"] is None:
            lines.append(f"| {r['model']} | {where} | none | - | - | - | - | {len(r['tried'])} | {r['seconds']:.0f} |")
            continue
        chosen = next(t for t in r["tried"] if t["target"] == r["best"])["accuracy"]
        drop = 100 * (chosen["original"] - chosen["pruned"])
        test_drop = 100 * (r["test_original"] - r["test_pruned"])
        lines.append(f"| {r['model']} | {where} | {r['best']:g} | {100 * r['params_removed']:.1f}% | "
                     f"{100 * r['macs_removed']:.1f}% | {drop:.2f} | {100 * r['test_original']:.2f}% -> "
                     f"{100 * r['test_pruned']:.2f}% ({test_drop:.2f}) | {len(r['tried'])} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=[])
    parser.add_argument("--splits", nargs="+", choices=["test", "train"], default=["test", "train"])
    parser.add_argument("--max-drop", type=float, default=0.5, help="points of accuracy (default 0.5)")
    parser.add_argument("--resolution", type=float, default=0.01)
    parser.add_argument("--validation", type=int, default=5000, help="train images searched on (default 5000)")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--out", type=Path, required=True, help="JSON rows, appended to")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out and run nothing")
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    if args.markdown or not args.models:
        print(markdown(rows))
        return 0
    if not fashion_mnist_available():
        print("needs Fashion-MNIST: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    xt, yt = load_fashion_mnist("test")
    for name in args.models:
        test = (preprocess(xt, MODELS[name][2]), yt)
        for split in args.splits:
            rows.append(run(name, split, args, test))
            args.out.write_text(json.dumps(rows, indent=1) + "\n")
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
