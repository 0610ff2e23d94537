"""Export small PyTorch CNNs (random weights) built around idioms of hand-written models to
ONNX for the coverage benchmark: ``x.squeeze()`` after pooling, GroupNorm, PixelShuffle
(super-resolution), circular padding, mean/std pooling, ``torch.where`` activations and a
spatial transformer's ``grid_sample`` froze channels before session 56; PixelUnshuffle
(downsampling in restoration networks) before session 57.

Runs in a torch venv (the timm one has onnxscript, for the torch.export exporter), never in
the package's environment::

    /work/venv_timm/bin/python tools/export_idioms.py --cache /work/idioms_onnx [--only NAME ...] [--force]
    python tools/bench_coverage.py --cache /work/idioms_onnx --out tools/coverage_idioms.json \\
        --title "Coverage of PyTorch idioms" --openvino

Each network is written by the TorchScript exporter (opset 17, dynamic batch) as
``<name>.onnx`` with the sidecar ``<name>.json`` of ``tools/export_timm.py``; the ones in
``DYNAMO`` also by the torch.export-based exporter (``<name>.dynamo.onnx``). BatchNorm
statistics come from one training-mode pass over random inputs. Failures go to
``export_failures.json`` in the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_jobs import ExportJob, export_each, load_failures  # noqa: E402

SIZE = 32  # input height and width
NAMES = ["squeeze_head", "groupnorm_resnet", "edsr_x2", "circular_cnn", "std_pool_cnn", "where_cnn", "stn_cnn",
         "unshuffle_cnn"]
DYNAMO = ["groupnorm_resnet", "edsr_x2", "unshuffle_cnn"]


def build(name: str):
    """The network ``name`` (see the module docstring), in eval mode."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(cin: int, cout: int, stride: int = 1, **conv) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False, **conv), nn.BatchNorm2d(cout), nn.ReLU())

    class Classifier(nn.Module):
        """Three stages of ``block`` s and a linear head; ``mid`` runs after the second."""

        def __init__(self, mid: nn.Module | None = None, stages=None, squeeze: bool = False):
            super().__init__()
            self.stages = stages or nn.ModuleList([nn.Sequential(block(3, 32), block(32, 32)),
                                                   nn.Sequential(block(32, 64, 2), block(64, 64)),
                                                   nn.Sequential(block(64, 128, 2), block(128, 128))])
            self.mid, self.squeeze, self.fc = mid or nn.Identity(), squeeze, nn.Linear(128, 10)

        def forward(self, x):
            x = self.stages[1](self.stages[0](x))
            x = self.stages[2](self.mid(x))
            pooled = F.adaptive_avg_pool2d(x, 1)
            return self.fc(pooled.squeeze() if self.squeeze else pooled.flatten(1))

    class GNBlock(nn.Module):
        def __init__(self, c: int, groups: int):
            super().__init__()
            self.a, self.na = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(groups, c)
            self.b, self.nb = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(groups, c)

        def forward(self, x):
            return F.relu(x + self.nb(self.b(F.relu(self.na(self.a(x))))))

    class EDSR(nn.Module):
        """EDSR-baseline in small: 4 residual blocks of 32 channels, x2 by PixelShuffle."""

        def __init__(self, c: int = 32):
            super().__init__()
            self.head = nn.Conv2d(3, c, 3, padding=1)
            self.body = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                                     nn.Conv2d(c, c, 3, padding=1)) for _ in range(4)])
            self.up = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
            self.tail = nn.Conv2d(c, 3, 3, padding=1)

        def forward(self, x):
            h = self.head(x)
            y = h
            for b in self.body:
                y = y + b(y)
            return self.tail(self.up(h + y))

    class Lambda(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x)

    class STN(nn.Module):
        """A flow field from the features warps them (grid_sample)."""

        def __init__(self, c: int = 64):
            super().__init__()
            self.loc = nn.Conv2d(c, 2, 3, padding=1)

        def forward(self, x):
            return F.grid_sample(x, torch.tanh(self.loc(x)).permute(0, 2, 3, 1), align_corners=False)

    if name == "squeeze_head":
        return Classifier(squeeze=True)
    if name == "groupnorm_resnet":
        stages = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.GroupNorm(8, 32),
                                              nn.ReLU(), GNBlock(32, 8)),
                                nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.GroupNorm(8, 64), nn.ReLU(),
                                              GNBlock(64, 8)),
                                nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.GroupNorm(16, 128),
                                              nn.ReLU(), GNBlock(128, 16))])
        return Classifier(stages=stages)
    if name == "edsr_x2":
        return EDSR()
    if name == "circular_cnn":
        stages = nn.ModuleList([nn.Sequential(block(3, 32, padding_mode="circular"),
                                              block(32, 32, padding_mode="circular")),
                                nn.Sequential(block(32, 64, 2, padding_mode="circular"),
                                              block(64, 64, padding_mode="circular")),
                                nn.Sequential(block(64, 128, 2), block(128, 128))])
        return Classifier(stages=stages)
    if name == "std_pool_cnn":  # style statistics: each channel scaled by its spatial std
        return Classifier(Lambda(lambda x: x * x.std(dim=(2, 3), keepdim=True)))
    if name == "where_cnn":  # a hand-written leaky ReLU, then Softshrink
        return Classifier(nn.Sequential(Lambda(lambda x: torch.where(x > 0, x, 0.1 * x)), nn.Softshrink(0.05)))
    if name == "stn_cnn":
        return Classifier(STN())
    if name == "unshuffle_cnn":  # the second stage downsamples by PixelUnshuffle: 4x the channels at half size
        stages = nn.ModuleList([nn.Sequential(block(3, 32), block(32, 32)),
                                nn.Sequential(nn.PixelUnshuffle(2), block(128, 64), block(64, 64)),
                                nn.Sequential(block(64, 128, 2), block(128, 128))])
        return Classifier(stages=stages)
    raise ValueError(f"unknown network {name!r}")


def export_one(name: str, dynamo: bool, cache: Path) -> dict:
    import torch

    torch.manual_seed(0)  # before the weights are drawn: the same export whatever ran before it
    model = build(name)
    shape = [2, 3, SIZE, SIZE]
    model.train()
    with torch.no_grad():  # BatchNorm statistics of one pass, so that activations keep their scale
        model(torch.rand(*shape))
    model.eval()
    stem = f"{name}.dynamo" if dynamo else name
    path = cache / f"{stem}.onnx"
    t0 = time.perf_counter()
    x = torch.rand(*shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["output"],
                              dynamic_shapes=({0: batch},), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    meta = {"name": stem, "arch": name, "made_by": "tools/export_idioms.py",
            "exporter": "dynamo" if dynamo else "torchscript", "input_name": "input", "input_shape": [1, 3, SIZE, SIZE],
            "opset": opset, "torch": torch.__version__, "export_seconds": round(time.perf_counter() - t0, 2),
            "params": int(sum(p.numel() for p in model.parameters()))}
    (cache / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/idioms_onnx")
    ap.add_argument("--only", nargs="*", help="export only these networks")
    ap.add_argument("--force", action="store_true", help="re-export files that exist")
    args = ap.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    try:
        import torch
    except ImportError as exc:  # before the cache is made: nothing to clean up
        sys.exit(f"export_idioms.py: {exc.name or exc} is not importable: run this in a torch venv")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    jobs = [(n, False) for n in NAMES] + [(n, True) for n in DYNAMO]
    if args.only:
        jobs = [j for j in jobs if j[0] in args.only]
    export_each(cache, [ExportJob(f"{name}.dynamo" if dynamo else name, name, "dynamo" if dynamo else "torchscript",
                                  lambda name=name, dynamo=dynamo: export_one(name, dynamo, cache))
                        for name, dynamo in jobs], args.force, load_failures(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
