#!/usr/bin/env python3
"""Train the shipped "wide classifier" CNN: a Flatten of a large map into a Gemm.

Many hand-made CNNs (and VGG at 224x224: 512 x 7 x 7 = 25,088 inputs) end in a Flatten of
their last feature map into a fully connected layer that reads more than the 16,384
features whose statistics onnx-eprune gathers in full. This model is the smallest such
network worth measuring: on Fashion-MNIST, Conv(1->32, 3x3) + BN + ReLU + MaxPool, then
Conv(32->96, 3x3) + BN + ReLU at 14x14, Flatten (96 x 14 x 14 = 18,816 features), Gemm
(-> 32) + ReLU, Gemm (-> 10). Its last convolution's channels are the ones only the
reduced statistics can prune (``tools/bench_wide.py``).

Writes ``wide_fmnist.onnx`` (opset 17, dynamic batch, input "input" (N, 1, 28, 28)
normalised as the LeNet-5's, output "logits") and ``wide_fmnist.md`` (a model card with
the test accuracy, measured with onnxruntime on the full 10k test split).

Usage::

    python tools/train_wide.py --epochs 3 --out bench/models

Requires ``torch`` (a CPU build), ``numpy``, ``onnx`` and ``onnxruntime``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from onnx_eprune.datasets import load_fashion_mnist, preprocess

NAME = "wide_fmnist"


def build():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.Flatten(), nn.Linear(96 * 14 * 14, 32), nn.ReLU(), nn.Linear(32, 10))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/models")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    torch.manual_seed(args.seed)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    xt, yt = torch.from_numpy(preprocess(x_train)), torch.from_numpy(y_train.astype(np.int64))
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{NAME}.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {"input": preprocess(x_test[i:i + 1000])})[0]
                             for i in range(0, len(x_test), 1000)])
    accuracy = float(np.mean(logits.argmax(1) == y_test))
    params = sum(p.numel() for p in model.parameters())
    (out / f"{NAME}.md").write_text(
        f"# {NAME}\n\n"
        "Fashion-MNIST classifier whose last convolution's 96 channels x 14 x 14 positions (18,816 features) are "
        "flattened into a fully connected layer: wider than the 16,384 features whose statistics onnx-eprune "
        "gathers in full (`tools/bench_wide.py`).\n\n"
        "- layers: Conv(1->32, 3x3) + BN + ReLU + MaxPool 2, Conv(32->96, 3x3) + BN + ReLU, Flatten, "
        "Gemm(18816->32) + ReLU, Gemm(32->10)\n"
        f"- parameters: {params:,}\n"
        "- input: `input` (N, 1, 28, 28), `(pixel / 255 - 0.2860) / 0.3530`; output: `logits` (N, 10)\n"
        f"- training: {args.epochs} epochs of Adam (lr 1e-3, batch 128, seed {args.seed}) on the 60k train "
        "split, CPU\n"
        f"- test accuracy (full 10k test split, onnxruntime): **{100 * accuracy:.2f}%**\n"
        f"- made by `python tools/train_wide.py --epochs {args.epochs} --out {args.out}` with torch "
        f"{torch.__version__}, Python {platform.python_version()}\n")
    print(f"wrote {path}: {params:,} parameters, test accuracy {100 * accuracy:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
