"""Fashion-MNIST as the demo and the benchmarks use it (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import EPruneError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return all((root / f"{p}-{k}.gz").exists() for p in ("train", "t10k")
               for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))


class DatasetError(EPruneError):
    """An installed dataset file that is damaged or not what its name says."""


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, 1, 28, 28) uint8 and labels (N,) uint8 of ``split`` in {"train", "test"};
    :class:`DatasetError` naming the file for a damaged one."""
    prefix = "train" if split == "train" else "t10k"
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    x = _idx(images, 2051, (28, 28)).reshape(-1, 1, 28, 28)
    y = _idx(root / f"{prefix}-labels-idx1-ubyte.gz", 2049, ())
    if len(x) != len(y):
        raise DatasetError(f"{images} holds {len(x)} images for {len(y)} labels: damaged; reinstall "
                           "dataset-fashion-mnist")
    return x, y


def _idx(path: Path, magic: int, item: tuple[int, ...]) -> np.ndarray:
    """The uint8 items of a gzipped idx file (big-endian header: ``magic``, the item count,
    then the dimensions of one item, which must be ``item``)."""
    try:
        with gzip.open(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip's BadGzipFile is an OSError
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); reinstall dataset-fashion-mnist") \
            from None
    head = 4 * (2 + len(item))
    fields = np.frombuffer(raw[:head], ">u4") if len(raw) >= head else np.zeros(0)
    size = int(np.prod(item))
    if len(fields) != 2 + len(item) or fields[0] != magic or tuple(fields[2:]) != item or \
            len(raw) != head + int(fields[1]) * size:
        raise DatasetError(f"{path} is not a complete idx file of {'x'.join(map(str, item)) or 'single'} items: "
                           "damaged; reinstall dataset-fashion-mnist")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(-1, *item)


def preprocess(images: np.ndarray, size: int = 28) -> np.ndarray:
    """``(pixel/255 - 0.2860)/0.3530`` as float32; ``size=32`` pads 2 px of normalised black."""
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)
    if size == 32:
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=(0.0 - MEAN) / STD)
    return x
