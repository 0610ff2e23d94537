"""``onnx-eprune demo``: prune the shipped LeNet-5 and show accuracy and size before/after."""

from __future__ import annotations

import logging
import time
from importlib import resources

import numpy as np

from .calibrate.session import choose_providers
from .datasets import DatasetError, fashion_mnist_available, load_fashion_mnist, preprocess
from .errors import EPruneError
from .evaluate import accuracy
from .graph.model_io import load_model, save_model
from .pipeline import prune
from .progress import Progress
from .report import summary_table

log = logging.getLogger("onnx_eprune")

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
    """Prune the shipped model to ``sparsity`` and measure what it costs; returns the numbers
    (:func:`format_demo` prints them). ``quiet``: no progress lines."""
    with resources.as_file(shipped(MODEL_FILE)) as model_path:
        model = load_model(model_path)
        size_before = model_path.stat().st_size
    with resources.as_file(shipped(SAMPLE_FILE)) as sample_path:
        sample = _read_sample(sample_path)
    calib = preprocess(sample["calib"])
    test_x, test_y = sample["test_x"], sample["test_y"]
    test_name = f"shipped test slice ({len(test_y):,} images; install dataset-fashion-mnist for all 10,000)"
    if fashion_mnist_available():
        try:
            test_x, test_y = load_fashion_mnist("test")
            test_name = "full Fashion-MNIST test split (10,000 images)"
        except DatasetError as exc:
            log.warning("%s; measuring on the shipped test slice instead", exc)
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
    return {"accuracy_before": acc_before, "accuracy_after": acc_after, "bytes_before": size_before,
            "bytes_after": size_after, "params_before": p["before"], "params_after": p["after"],
            "seconds": seconds, "test_set": test_name, "method": method, "sparsity": sparsity,
            "calibration_images": len(calib), "output": str(output), "report": result.report}


def format_demo(n: dict) -> str:
    """What the demo prints: the pruning's summary table, then accuracy, parameters and file
    size before and after (``n``: what :func:`run_demo` returns)."""
    p = n["report"]["params"]
    return "\n".join([
        summary_table(dict(n["report"])), "",
        f"LeNet-5 on Fashion-MNIST, {n['method']} pruning to sparsity {n['sparsity']:g} with "
        f"{n['calibration_images']:,} calibration images, no fine-tuning ({n['seconds']:.1f} s)",
        f"  accuracy  {100 * n['accuracy_before']:6.2f}% -> {100 * n['accuracy_after']:6.2f}%   "
        f"({100 * (n['accuracy_after'] - n['accuracy_before']):+.2f} points, {n['test_set']})",
        f"  params    {p['before']:>7,} -> {p['after']:>7,}   (-{100 * p['removed_fraction']:.1f}%)",
        f"  file size {n['bytes_before']:>7,} -> {n['bytes_after']:>7,} bytes",
        f"  wrote {n['output']}"])


def _read_sample(path) -> dict[str, np.ndarray]:
    """The shipped sample's arrays; a damaged or incomplete file is a broken installation."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in ("calib", "test_x", "test_y")}
    except Exception as exc:  # zipfile, numpy and KeyError on damaged or foreign files
        raise EPruneError(f"the shipped sample data {path} is damaged ({type(exc).__name__}: {exc}); reinstall "
                          "onnx-eprune") from None
