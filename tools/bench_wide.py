"""What pruning the channels of a too-wide consumer gives, on bench/models/wide_fmnist.onnx.

That model (``tools/train_wide.py``) flattens its last convolution's 96 channels x 14 x 14
positions into a Gemm that reads 18,816 features, more than the 16,384 whose statistics
onnx-eprune gathers in full. The default sequential mode prunes those 96 channels on
reduced statistics, with every method, and re-fits the Gemm on what it keeps; before, and
still in one-shot mode, they were frozen. Each target runs four ways, on the 1024
calibration images of ``../shared/reference/calib28.npy``: ``entropic`` (the default) and
the ``l1`` baseline, each as it runs now and ``frozen``, with the last convolution
excluded (``--exclude``), which keeps its channels as the freeze did; each run is measured
on the full Fashion-MNIST test split (accuracy), with the parameters and
MACs removed from the output files, the channels the wide group keeps, how the Gemm was
re-fitted (``exact``: on every kept feature; ``subspace``: along each kept channel's
leading directions, where its kept features are more than 16,384; ``no``), and the pruning
seconds.

    python tools/bench_wide.py --out bench/wide.json
    python tools/bench_wide.py --out bench/wide.json --markdown   # the table of an earlier run

``--model keras_flatten`` runs the same four ways on bench/models/keras_flatten_fmnist.onnx
(``tools/train_keras_flatten.py``: Keras' tutorial CNN exported by tf2onnx, NHWC input
``x / 255``), whose Dense layer reads the last convolution's 64 channels x 7 x 7 through
the Flatten of an NHWC map, position by position: those channels froze until session 52.
"frozen" excludes that convolution, as the freeze kept it::

    python tools/bench_wide.py --model keras_flatten --out bench/keras_flatten.json

``--model keras_flatten_bn`` is the same CNN with a BatchNormalization of the flattened
features before the Dense layer (``train_keras_flatten.py --head batchnorm``; tf2onnx folds
it into a Mul and an Add by a constant per feature, in the same channels-last order), whose
channels froze until session 53::

    python tools/bench_wide.py --model keras_flatten_bn --out bench/keras_flatten_bn.json

``--mode oneshot`` prunes in one-shot mode, which froze the wide model's group until
session 52 (as its "frozen" rows still do)::

    python tools/bench_wide.py --mode oneshot --sparsity 0.5 0.7 0.8 0.9 --out bench/wide_oneshot.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import onnx_eprune
from onnx_eprune.datasets import MEAN, STD, fashion_mnist_available, load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT.parent / "shared" / "reference" / "calib28.npy"


@dataclass(frozen=True)
class Model:
    """A benchmark model: its file, the convolution whose channels the Gemm or MatMul reads
    (and its channel count), and whether it takes NHWC images scaled to [0, 1] (Keras) rather
    than the reference models' normalised NCHW ones."""

    path: Path
    conv: str
    channels: int
    keras: bool = False

    def images(self, x: np.ndarray) -> np.ndarray:
        """``x``, preprocessed as ``datasets.preprocess`` does, in this model's form."""
        return np.ascontiguousarray((x * STD + MEAN).transpose(0, 2, 3, 1)) if self.keras else x


MODELS = {
    # the convolution torch.nn.Sequential calls /4/Conv (its index 4)
    "wide": Model(ROOT / "bench" / "models" / "wide_fmnist.onnx", "/4/Conv", 96),
    "keras_flatten": Model(ROOT / "bench" / "models" / "keras_flatten_fmnist.onnx",
                           "keras_flatten_fmnist_1/conv2d_1_2/BiasAdd", 64, keras=True),
    "keras_flatten_bn": Model(ROOT / "bench" / "models" / "keras_flatten_bn_fmnist.onnx",
                              "keras_flatten_bn_fmnist_1/conv2d_1_2/BiasAdd", 64, keras=True),
}
RUNS = {"entropic": {}, "entropic, frozen": {"exclude": ["CONV"]}, "l1": {"method": "l1"},
        "l1, frozen": {"method": "l1", "exclude": ["CONV"]}}


def measure(model: Model, target: float, run: str, x: np.ndarray, y: np.ndarray, calib: np.ndarray,
            mode: str = "sequential") -> dict:
    options = {k: [model.conv] if k == "exclude" else v for k, v in RUNS[run].items()}
    options["mode"] = mode
    t0 = time.perf_counter()
    result = onnx_eprune.prune(str(model.path), calib, sparsity=target, **options)
    seconds = time.perf_counter() - t0
    report = result.report
    wide = next(g for g in report["groups"] if g["producers"] and g["producers"][0] == model.conv)
    return {"target": target, "run": run, "accuracy": accuracy(result.model, x, y),
            "params_removed": report["params"]["removed_fraction"], "macs_removed": report["macs"]["removed_fraction"],
            "wide_channels": wide["channels_after"], "wide_frozen": wide["frozen"],
            "gemm_refit": "no" if "unfitted" in report else "subspace" if "subspace_refits" in report else "exact",
            "seconds": seconds}


def markdown(record: dict) -> str:
    lines = [f"Original: {100 * record['original']:.2f}% on the {record['test_images']} test images.", "",
             "| sparsity | run | accuracy (drop, points) | params removed | MACs removed | last conv keeps | "
             "Gemm re-fit | seconds |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in record["rows"]:
        drop = 100 * (record["original"] - r["accuracy"])
        lines.append(f"| {r['target']:g} | {r['run']} | {100 * r['accuracy']:.2f}% ({drop:.2f}) | "
                     f"{100 * r['params_removed']:.1f}% | {100 * r['macs_removed']:.1f}% | {r['wide_channels']} / "
                     f"{record.get('channels', 96)} | "
                     f"{r['gemm_refit']} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=sorted(MODELS), default="wide")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--mode", choices=["sequential", "oneshot"], default="sequential")
    ap.add_argument("--markdown", action="store_true", help="print the table of an earlier run")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    if not fashion_mnist_available():
        print("needs dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)", file=sys.stderr)
        return 2
    model = MODELS[args.model]
    images, labels = load_fashion_mnist("test")
    x, y = model.images(preprocess(images)), labels.astype(np.int64)
    calib = model.images(np.load(CALIB))
    import onnx

    record = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
              "onnx_eprune": onnx_eprune.__version__, "model": args.model, "channels": model.channels,
              "mode": args.mode, "test_images": len(y), "original": accuracy(onnx.load(str(model.path)), x, y),
              "rows": []}
    for target in args.sparsity:
        for run in RUNS:
            record["rows"].append(measure(model, target, run, x, y, calib, args.mode))
            print(json.dumps(record["rows"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
