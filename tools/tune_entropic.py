"""Accuracy drop of the entropic selector (or a baseline) under config variants (tuning record).

    OMP_NUM_THREADS=1 python tools/tune_entropic.py lenet5 0.55,0.7,0.73,0.84 "" \\
        "max_alternations=3" "eps_ridge=0.03" "threshold=0.5"

Each variant is ``field=value[:field=value...]`` of ``onnx_eprune.select.entropic.EntropicConfig``
or of ``onnx_eprune.PruneConfig`` (``mode``, ``method``, ``seed``, ``samples``, ``positions``,
...; "" is the default), or ``select_features=N``: the sequential stages select on up to N
features per consumer while the allocation keeps the default ``max_features``, or
``cold=1``: the sequential stages draw each group's path from its start instead of
resuming the allocation's. At every level (a sparsity, or ``f`` and a FLOPs reduction:
``f0.73``) the reference model (../shared/reference) is pruned with that config and its
accuracy measured on the full Fashion-MNIST test split; one line of drops (points) and
pruning seconds per variant.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from onnx_eprune.datasets import load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy
from onnx_eprune.pipeline import Pruner, PruneConfig
from onnx_eprune.select.entropic import EntropicConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import MODELS, REFERENCE  # noqa: E402


class SelectionVariant(Pruner):
    """The default pipeline, except that once the allocation is decided, the selection of
    the sequential stages works on up to ``select_features`` features per consumer (None:
    ``max_features``, as always) and, if ``cold``, starts every group's path afresh."""

    def __init__(self, *args, select_features: int | None = None, cold: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.select_features = select_features
        self.cold = cold

    def allocate(self, gids, stats):
        decided = super().allocate(gids, stats)
        if self.select_features is not None:
            self.config = replace(self.config, entropic=replace(self.config.entropic,
                                                                max_features=self.select_features))
        if self.cold:
            self.paths = {}  # entropic.resume_point finds nothing: each stage's path starts over
        return decided


def main(argv: list[str]) -> int:
    name, levels, variants = argv[0], argv[1].split(","), argv[2:] or [""]
    targets = [{"flops_reduction": float(v[1:])} if v.startswith("f") else {"sparsity": float(v)} for v in levels]
    onnx_file, calib, size = MODELS[name]
    images, labels = load_fashion_mnist("test")
    x = preprocess(images, size)
    base = json.loads((REFERENCE / f"{name}.json").read_text())["test_acc"]
    default, run_default = EntropicConfig(), PruneConfig()
    for spec in variants:
        fields = dict(kv.split("=") for kv in spec.split(":") if kv)
        select_features = int(fields.pop("select_features")) if "select_features" in fields else None
        cold = bool(int(fields.pop("cold", "0")))
        cfg = replace(default, **{k: type(getattr(default, k))(v) for k, v in fields.items() if hasattr(default, k)})
        run = {k: (v if isinstance(getattr(run_default, k), str) else int(v)) for k, v in fields.items()
               if not hasattr(default, k)}
        drops, seconds = [], []
        for target in targets:
            t0 = time.perf_counter()
            config = PruneConfig(**target, device="cpu", entropic=cfg, **run)
            result = SelectionVariant(str(REFERENCE / onnx_file), str(REFERENCE / calib), config,
                                      select_features=select_features, cold=cold).run()
            seconds.append(round(time.perf_counter() - t0, 1))
            drops.append(round(100 * (base - accuracy(result.model, x, labels, ["CPUExecutionProvider"])), 2))
        print(f"{spec or 'default':60s} drops {drops} seconds {seconds}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
