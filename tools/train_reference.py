#!/usr/bin/env python3
"""Train the default LeNet-5 model and sample data shipped with ``onnx-eprune demo``.

The script trains LeNet-5 on Fashion-MNIST on the CPU, exports it to ONNX, measures
its accuracy on the full 10k test split with onnxruntime, and writes three files
into the output directory:

* ``lenet5_fmnist.onnx``        - the model (opset 17, dynamic batch, input "input",
                                   output "logits", plain Conv/Relu/MaxPool/Flatten/Gemm graph)
* ``lenet5_fmnist.md``          - a short model card
* ``fashion_mnist_sample.npz``  - calibration and test images for the demo

Data comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``).  Preprocessing, used both here and by the
demo, is ``x = (pixel / 255 - 0.2860) / 0.3530`` as float32.

Usage::

    python tools/train_reference.py --epochs 8 --out models

Requires ``torch`` (CPU build is fine), ``numpy``, ``onnx`` and ``onnxruntime``.
"""
from __future__ import annotations

import argparse
import gzip
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MODEL_NAME = "lenet5_fmnist"
SAMPLE_NAME = "fashion_mnist_sample.npz"
N_CALIB, CALIB_SEED = 1024, 1234
N_TEST_SAMPLE = 2000


# --------------------------------------------------------------------------- data
def load_split(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N,1,28,28), labels uint8 (N,)) for split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    with gzip.open(data_dir / f"{prefix}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    # IDX header: magic, count, rows, cols (big-endian int32 each).
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, rows, cols)
    with gzip.open(data_dir / f"{prefix}-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    y = np.frombuffer(raw, np.uint8, offset=8)
    assert len(x) == len(y), (x.shape, y.shape)
    return x, y


def preprocess(x: np.ndarray) -> np.ndarray:
    """uint8 images -> normalised float32, exactly as the demo does it."""
    return ((x.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


# -------------------------------------------------------------------------- model
def build_lenet5():
    import torch.nn as nn

    # nn.Sequential with plain modules keeps the exported graph to
    # Conv/Relu/MaxPool/Flatten/Gemm, which is what the pruner expects.
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),   # 6 x 28 x 28
        nn.ReLU(),
        nn.MaxPool2d(2),                             # 6 x 14 x 14
        nn.Conv2d(6, 16, kernel_size=5),             # 16 x 10 x 10
        nn.ReLU(),
        nn.MaxPool2d(2),                             # 16 x 5 x 5
        nn.Flatten(),                                # 400
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


# ----------------------------------------------------------------------- training
def train(net, x_train, y_train, x_test, y_test, *, epochs, batch_size, max_lr):
    """SGD (Nesterov momentum 0.9, wd 5e-4) with a OneCycle schedule. Returns seconds."""
    import torch
    import torch.nn.functional as F

    X = torch.from_numpy(preprocess(x_train))
    Y = torch.from_numpy(y_train.astype(np.int64))
    steps_per_epoch = len(X) // batch_size
    opt = torch.optim.SGD(net.parameters(), lr=max_lr, momentum=0.9,
                          weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=0.25)

    t0 = time.perf_counter()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(X))
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(net(X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        acc = torch_accuracy(net, x_test, y_test)
        print(f"epoch {ep + 1}/{epochs}  loss {running / steps_per_epoch:.4f}  "
              f"test acc {acc:.4f}  lr {sched.get_last_lr()[0]:.4f}  "
              f"t {time.perf_counter() - t0:.1f}s", flush=True)
    net.eval()
    return time.perf_counter() - t0


def torch_accuracy(net, x, y, batch=1000):
    import torch

    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = net(torch.from_numpy(preprocess(x[i:i + batch])))
            correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(x)


# ------------------------------------------------------------------ export / eval
def export_onnx(net, path: Path):
    import torch

    net.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is chosen on purpose (plain op graph).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            net, (dummy,), str(path),
            opset_version=17, dynamo=False, do_constant_folding=True,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnx_accuracy(path: Path, x, y, batch=1000) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(["logits"], {"input": preprocess(x[i:i + batch])})
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def onnx_op_types(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


# ------------------------------------------------------------------------ outputs
def write_sample(path: Path, x_train, x_test, y_test):
    """Calibration + test images for the demo (uint8; demo applies (x/255-mean)/std)."""
    rng = np.random.default_rng(CALIB_SEED)
    calib_idx = np.sort(rng.choice(len(x_train), size=N_CALIB, replace=False))
    np.savez_compressed(
        path,
        calib=np.ascontiguousarray(x_train[calib_idx], dtype=np.uint8),
        test_x=np.ascontiguousarray(x_test[:N_TEST_SAMPLE], dtype=np.uint8),
        test_y=np.ascontiguousarray(y_test[:N_TEST_SAMPLE], dtype=np.uint8),
        mean=np.float32(MEAN),
        std=np.float32(STD),
        classes=np.array(CLASSES, dtype=np.str_),
    )


def write_card(path: Path, *, args, n_params, train_seconds, torch_acc, onnx_acc,
               sample_acc, ops, onnx_bytes):
    import onnx
    import onnxruntime
    import torch

    op_summary = ", ".join(f"{op} x{ops.count(op)}" for op in dict.fromkeys(ops))
    text = f"""# LeNet-5 on Fashion-MNIST (`{MODEL_NAME}.onnx`)

Default model of `onnx-eprune demo`. Produced by `tools/train_reference.py`.

## Architecture

| layer | op | output |
|---|---|---|
| input | - | 1 x 28 x 28 |
| conv1 | Conv 6 @ 5x5, pad 2, + ReLU | 6 x 28 x 28 |
| pool1 | MaxPool 2x2 | 6 x 14 x 14 |
| conv2 | Conv 16 @ 5x5, no pad, + ReLU | 16 x 10 x 10 |
| pool2 | MaxPool 2x2 | 16 x 5 x 5 |
| flatten | Flatten | 400 |
| fc1 | Gemm 400 -> 120, + ReLU | 120 |
| fc2 | Gemm 120 -> 84, + ReLU | 84 |
| fc3 | Gemm 84 -> 10 | 10 (logits) |

Parameters: **{n_params:,}**. ONNX file: {onnx_bytes:,} bytes, opset 17, exported with
the TorchScript exporter (`dynamo=False`, `do_constant_folding=True`).
Input `input` float32 `[batch, 1, 28, 28]`, output `logits` float32 `[batch, 10]`
(dynamic batch). Graph nodes: {op_summary}.

## Data

Fashion-MNIST (Debian package `dataset-fashion-mnist`, files in
`{DATA_DIR}`): 60,000 training and 10,000 test grayscale 28x28 images, 10 classes:
{", ".join(CLASSES)}.

## Preprocessing

`x = (pixel / 255 - {MEAN:.4f}) / {STD:.4f}` as float32, NCHW. No augmentation.

## Training recipe

- seeds: `torch.manual_seed(0)`, `np.random.seed(0)`; CPU, {args.threads} threads
- {args.epochs} epochs, batch {args.batch_size}, reshuffled every epoch, cross-entropy loss
- SGD, Nesterov momentum 0.9, weight decay 5e-4
- OneCycleLR, max_lr {args.max_lr}, pct_start 0.25
- training time: **{train_seconds:.1f} s** (torch {torch.__version__}, Python
  {platform.python_version()}, {platform.machine()})

## Accuracy

- full 10k test split, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider) on the
  exported ONNX file: **{onnx_acc * 100:.2f}%**
- same split, PyTorch model before export: {torch_acc * 100:.2f}%
- first {N_TEST_SAMPLE} test images (the `test_x`/`test_y` in `{SAMPLE_NAME}`):
  {sample_acc * 100:.2f}%

## Sample data (`{SAMPLE_NAME}`)

| key | content |
|---|---|
| `calib` | uint8 ({N_CALIB}, 1, 28, 28): train-split images, indices `np.random.default_rng({CALIB_SEED}).choice(60000, {N_CALIB}, replace=False)`, sorted |
| `test_x` | uint8 ({N_TEST_SAMPLE}, 1, 28, 28): first {N_TEST_SAMPLE} test-split images |
| `test_y` | uint8 ({N_TEST_SAMPLE},): their labels |
| `mean`, `std` | float32 scalars {MEAN}, {STD} |
| `classes` | the 10 class names (unicode array) |

Preprocess with `(x / 255 - mean) / std` as float32.

## Reproduce

```
python tools/train_reference.py --epochs {args.epochs} --out {args.out}
```

(torch CPU build, onnx {onnx.__version__}; results are deterministic for a given
torch version and thread count, small differences across versions are possible.)
"""
    path.write_text(text)


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    ap.add_argument("--out", default="models", help="output directory (default models)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        sys.exit("train_reference.py: torch is not importable: pip install torch (the CPU build is fine)")

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{MODEL_NAME}.onnx"

    print(f"loading Fashion-MNIST from {args.data_dir}", flush=True)
    x_train, y_train = load_split("train", args.data_dir)
    x_test, y_test = load_split("test", args.data_dir)
    print(f"train {x_train.shape}, test {x_test.shape}", flush=True)

    net = build_lenet5()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"LeNet-5, {n_params:,} parameters; training {args.epochs} epochs "
          f"on {args.threads} CPU threads", flush=True)
    train_seconds = train(net, x_train, y_train, x_test, y_test, epochs=args.epochs,
                          batch_size=args.batch_size, max_lr=args.max_lr)
    torch_acc = torch_accuracy(net, x_test, y_test)
    print(f"trained in {train_seconds:.1f}s, torch test acc {torch_acc:.4f}", flush=True)

    export_onnx(net, onnx_path)
    onnx_acc = onnx_accuracy(onnx_path, x_test, y_test)
    sample_acc = onnx_accuracy(onnx_path, x_test[:N_TEST_SAMPLE], y_test[:N_TEST_SAMPLE])
    ops = onnx_op_types(onnx_path)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size:,} bytes), ops {ops}", flush=True)
    print(f"onnxruntime test acc (10k): {onnx_acc:.4f}; first {N_TEST_SAMPLE}: {sample_acc:.4f}",
          flush=True)

    sample_path = out / SAMPLE_NAME
    write_sample(sample_path, x_train, x_test, y_test)
    print(f"wrote {sample_path} ({sample_path.stat().st_size:,} bytes)", flush=True)

    card_path = out / f"{MODEL_NAME}.md"
    write_card(card_path, args=args, n_params=n_params, train_seconds=train_seconds,
               torch_acc=torch_acc, onnx_acc=onnx_acc, sample_acc=sample_acc, ops=ops,
               onnx_bytes=onnx_path.stat().st_size)
    print(f"wrote {card_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
