"""``onnx-eprune demo``: prune the shipped LeNet-5 and show accuracy and size before/after."""

from __future__ import annotations

import time
from importlib import resources

import numpy as np

from .calibrate.session import choose_providers
from .datasets import fashion_mnist_available, load_fashion_mnist, preprocess
from .evaluate import accuracy
from .graph.model_io import load_model, save_model
from .pipeline import prune
from .progress import Progress
from .report import summary_table

MODEL_FILE = "lenet5_fmnist.onnx"
SAMPLE_FILE = "fashion_mnist_sample.npz"


def shipped(name: str):
    """Path of a file shipped in ``onnx_eprune.models``."""
    return resources.files("onnx_eprune.models") / name


def shipped_inputs() -> list[tuple[str, str]]:
    """The shipped files that the demo reads, each with how a message names it (its -o must
    be neither: they are part of the installation)."""
    return [("the shipped model", str(shipped(MODEL_FILE))), ("the shipped sample data", str(shipped(SAMPLE_FILE)))]


def run_demo(output: str, sparsity: float = 0.55, method: str = "entropic", device: str = "auto",
             quiet: bool = False) -> dict:
    """Prune the shipped model to ``sparsity`` and print what it costs; returns the numbers."""
    with resources.as_file(shipped(MODEL_FILE)) as model_path:
        model = load_model(model_path)
        size_before = model_path.stat().st_size
    with resources.as_file(shipped(SAMPLE_FILE)) as sample_path:
        sample = np.load(sample_path)
        calib = preprocess(sample["calib"])
        if fashion_mnist_available():
            test_x, test_y = load_fashion_mnist("test")
            test_name = "full Fashion-MNIST test split (10,000 images)"
        else:
            test_x, test_y = sample["test_x"], sample["test_y"]
            test_name = f"shipped test slice ({len(test_y):,} images; install dataset-fashion-mnist for all 10,000)"
    test_x = preprocess(test_x)
    providers = choose_providers(device)
    t0 = time.perf_counter()
    result = prune(model, calib, sparsity=sparsity, method=method, device=device,
                   progress=Progress(enabled=not quiet))
    seconds = time.perf_counter() - t0
    save_model(result.model, output)
    acc_before = accuracy(model, test_x, test_y, providers)
    acc_after = accuracy(result.model, test_x, test_y, providers)
    from pathlib import Path

    size_after = Path(output).stat().st_size
    p = result.report["params"]
    out = {"accuracy_before": acc_before, "accuracy_after": acc_after, "bytes_before": size_before,
           "bytes_after": size_after, "params_before": p["before"], "params_after": p["after"],
           "seconds": seconds, "test_set": test_name}
    if not quiet:
        print(summary_table(dict(result.report)))
        print()
        print(f"LeNet-5 on Fashion-MNIST, {method} pruning to sparsity {sparsity:g} "
              f"with {len(calib):,} calibration images, no fine-tuning ({seconds:.1f} s)")
        print(f"  accuracy  {100 * acc_before:6.2f}% -> {100 * acc_after:6.2f}%   "
              f"({100 * (acc_after - acc_before):+.2f} points, {test_name})")
        print(f"  params    {p['before']:>7,} -> {p['after']:>7,}   (-{100 * p['removed_fraction']:.1f}%)")
        print(f"  file size {size_before:>7,} -> {size_after:>7,} bytes")
        print(f"  wrote {output}")
    return out
