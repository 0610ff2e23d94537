"""Fashion-MNIST as the demo and the benchmarks use it (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return all((root / f"{p}-{k}.gz").exists() for p in ("train", "t10k")
               for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, 1, 28, 28) uint8 and labels (N,) uint8 of ``split`` in {"train", "test"}."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def preprocess(images: np.ndarray, size: int = 28) -> np.ndarray:
    """``(pixel/255 - 0.2860)/0.3530`` as float32; ``size=32`` pads 2 px of normalised black."""
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)
    if size == 32:
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=(0.0 - MEAN) / STD)
    return x
