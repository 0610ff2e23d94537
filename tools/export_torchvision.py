"""Export torchvision CNNs and Ultralytics YOLO detectors (random weights) to ONNX for the
coverage benchmark: graphs that are not classifiers (segmentation heads with dilated
convolutions, pyramid pooling and bilinear upsampling; torchvision's detectors, which take
one (3, H, W) image without a batch axis and return one row per box, with anchors, TopK and
NonMaxSuppression in the graph; YOLO's feature pyramid, C2f / C3k2 blocks, attention
(YOLO11's C2PSA) and box decoding), classifiers exported for a fixed batch of one (no
dynamic axes: the input is (1, 3, H, W) and the exporter may write the batch into reshapes),
torchvision's video classifiers (3-D convolutions on (N, 3, 8, 56, 56) clips) and two 1-D
CNNs written here (M5 on raw audio, a 1-D ResNet-18 on 12-lead ECG).

Runs in a torch venv with torchvision, never in the package's environment::

    python -m venv /work/venv-tv && /work/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx ultralytics
    /work/venv-tv/bin/python tools/export_torchvision.py --cache /work/tv_onnx [--only NAME ...] [--force]
    python tools/bench_coverage.py --cache /work/tv_onnx --out tools/coverage_torchvision.json \\
        --title "Coverage of torchvision and Ultralytics exports" --jobs 2

Every torchvision model is built with ``weights=None`` (and ``weights_backbone=None``;
nothing is downloaded), its BatchNorm statistics set from one training-mode pass over random
inputs (so that activations keep a trained network's scale), and written with the
TorchScript exporter (opset 17); the YOLOs come from their configs through Ultralytics'
exporter. Each is written as ``<name>.onnx`` plus the sidecar ``<name>.json`` of
``tools/export_timm.py``, which ``tools/bench_coverage.py`` reads (``<name>.batch1`` for
the fixed-batch exports; ``"batch_axis": false`` for the detectors). Failures go to
``export_failures.json`` in the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_jobs import ExportJob, export_each, load_failures  # noqa: E402

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# (torchvision builder, input height/width, kind, batch): batch None exports a dynamic
# batch axis, 1 a fixed batch of one (an export without dynamic axes, as many are)
MODELS: list[tuple[str, int, str, int | None]] = [
    ("fcn_resnet50", 128, "segmentation", None),
    ("deeplabv3_resnet50", 128, "segmentation", None),
    ("deeplabv3_mobilenet_v3_large", 128, "segmentation", None),
    ("lraspp_mobilenet_v3_large", 128, "segmentation", None),
    ("lraspp_mobilenet_v3_large", 128, "segmentation", 1),
    ("resnet18", 96, "classification", 1),
    ("mobilenet_v3_small", 96, "classification", 1),
    ("efficientnet_b0", 96, "classification", 1),
    ("regnet_y_400mf", 96, "classification", 1),
    ("squeezenet1_1", 96, "classification", 1),
    ("googlenet", 96, "classification", 1),
    ("densenet121", 96, "classification", 1),
    ("shufflenet_v2_x1_0", 96, "classification", 1),
    ("mnasnet1_0", 96, "classification", 1),
    # torchvision's detectors take one (3, H, W) image without a batch axis and return one
    # row per box found
    ("ssdlite320_mobilenet_v3_large", 320, "detection", None),
    ("ssd300_vgg16", 300, "detection", None),
    ("retinanet_resnet50_fpn", 256, "detection", None),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 320, "detection", None),
    # Ultralytics' YOLO detectors from their model configs (``pip install ultralytics`` in the
    # same venv; skipped without it): raw head outputs (batch, 4 + classes, anchors), no NMS
    ("yolov8n", 160, "ultralytics", None),
    ("yolo11n", 160, "ultralytics", None),
    # torchvision's video classifiers: 3-D convolutions (r3d_18: 3x3x3 throughout; mc3_18:
    # 3-D in the first stage, (1, 3, 3) after it; r2plus1d_18: (1, 3, 3) then (3, 1, 1) with
    # a computed middle width) on clips of 8 frames of 56 x 56 (the size is the frame size)
    ("r3d_18", 56, "video", None),
    ("mc3_18", 56, "video", None),
    ("r2plus1d_18", 56, "video", None),
    # 1-D CNNs written here in plain torch (torchaudio has no build for this torch): M5 on
    # raw audio (Dai et al. 2017; 8000 samples, 0.5 s at 16 kHz) and a 1-D ResNet-18 on
    # 12-lead ECG (1000 samples; the size is the sequence length)
    ("m5_audio", 8000, "sequence", None),
    ("resnet1d18_ecg", 1000, "sequence", None),
]

# frames of the video clips; channels of the 1-D inputs
VIDEO_FRAMES = 8
SEQUENCE_CHANNELS = {"m5_audio": 1, "resnet1d18_ecg": 12}


def stem(name: str, batch: int | None) -> str:
    return name if batch is None else f"{name}.batch{batch}"


def build(name: str, kind: str):
    import torch
    import torchvision

    if kind == "sequence":
        return _sequence_model(name, torch), torch
    if kind == "video":
        return torchvision.models.video.__dict__[name](weights=None), torch
    kwargs = {"weights": None}
    if kind == "segmentation":
        kwargs.update(weights_backbone=None, num_classes=21, aux_loss=False)
    elif name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    if kind == "detection":
        kwargs.update(weights_backbone=None, num_classes=91)
    module = {"segmentation": torchvision.models.segmentation, "detection": torchvision.models.detection,
              "classification": torchvision.models}[kind]
    return getattr(module, name)(**kwargs), torch


def _sequence_model(name: str, torch):
    """M5 (four Conv1d + BatchNorm1d + ReLU + MaxPool1d blocks, the first with an 80-sample
    kernel of stride 4; global average pool; 35 classes as in Speech Commands) or a 1-D
    ResNet-18 (basic blocks of two 3-tap Conv1d with BatchNorm1d, strided 1x1 shortcuts, a
    15-tap stem; 5 classes)."""
    nn = torch.nn

    def conv_bn(cin, cout, k, stride=1):
        return [nn.Conv1d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm1d(cout)]

    if name == "m5_audio":
        layers, cin = [], SEQUENCE_CHANNELS[name]
        for cout, k, stride in ((128, 80, 4), (128, 3, 1), (256, 3, 1), (512, 3, 1)):
            layers += conv_bn(cin, cout, k, stride) + [nn.ReLU(), nn.MaxPool1d(4)]
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(512, 35))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3))
            self.short = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else \
                nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    blocks, cin = [], 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        blocks.append(Block(cin, cout, stride))
        cin = cout
    return nn.Sequential(*conv_bn(SEQUENCE_CHANNELS[name], 64, 15, 2), nn.ReLU(), nn.MaxPool1d(3, 2, 1), *blocks,
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(512, 5))


def _input_shape(name: str, size: int, kind: str, batch: int | None) -> list[int]:
    if kind == "video":
        return [batch or 1, 3, VIDEO_FRAMES, size, size]
    if kind == "sequence":
        return [batch or 1, SEQUENCE_CHANNELS[name], size]
    return [batch or 1, 3, size, size]


def _tensor_output(model, torch):
    """torchvision's segmentation models return {"out": tensor}; the exporter wants a tensor."""

    class TensorOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    return TensorOutput(model)


def _set_batchnorm_statistics(model, shape, torch) -> None:
    """One training-mode pass over random inputs sets every BatchNorm's running statistics
    (momentum 1), so that activations keep the scale a trained network's would have."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    backbone = getattr(model, "backbone", model)
    backbone.train()
    with torch.no_grad():
        backbone(torch.randn(4, *shape[1:]))
    model.eval()


def export_one(name: str, size: int, kind: str, batch: int | None, cache: Path) -> dict:
    if kind == "ultralytics":
        return export_ultralytics(name, size, cache)
    import torch

    torch.manual_seed(0)  # before the weights are drawn: the same export whatever ran before it
    model, torch = build(name, kind)
    shape = _input_shape(name, size, kind, batch)
    _set_batchnorm_statistics(model, shape, torch)
    path = cache / f"{stem(name, batch)}.onnx"
    t0 = time.perf_counter()
    x = torch.rand(*shape)
    dynamic = None if batch else {"input": {0: "batch"}, "output": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "detection":  # a list of CHW images; exported for one
            torch.onnx.export(model, ([x[0]],), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["boxes", "scores", "labels"])
        else:
            net = _tensor_output(model, torch) if kind == "segmentation" else model
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["output"], dynamic_axes=dynamic)
    import onnx
    import torchvision

    proto = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    meta = {"name": stem(name, batch), "arch": name, "kind": kind, "made_by": "tools/export_torchvision.py",
            "exporter": "torchscript" + (f", fixed batch {batch}" if batch else ""), "input_name": "input",
            "input_shape": dims, "opset": 17, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "params": int(sum(p.numel() for p in model.parameters())),
            **({"batch_axis": False} if kind == "detection" else {})}
    (cache / f"{stem(name, batch)}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def export_ultralytics(name: str, size: int, cache: Path) -> dict:
    """A YOLO built from its config (random weights, nothing downloaded), exported by
    Ultralytics' own exporter with a dynamic batch and image size."""
    os.environ["YOLO_OFFLINE"] = "1"
    import shutil

    import torch
    import ultralytics

    t0 = time.perf_counter()
    model = ultralytics.YOLO(f"{name}.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = model.export(format="onnx", imgsz=size, dynamic=True, simplify=False, opset=17)
    shutil.move(written, cache / f"{name}.onnx")
    meta = {"name": name, "arch": name, "kind": "detection", "made_by": "tools/export_torchvision.py",
            "exporter": f"ultralytics {ultralytics.__version__}", "input_name": "images",
            "input_shape": [1, 3, size, size], "opset": 17, "torch": torch.__version__,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "params": int(sum(p.numel() for p in model.model.parameters()))}
    (cache / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/tv_onnx")
    ap.add_argument("--only", nargs="*", help="export only these torchvision names")
    ap.add_argument("--force", action="store_true", help="re-export files that exist")
    args = ap.parse_args(argv)
    try:
        import torch
        import torchvision  # noqa: F401  (every export needs it: refuse here, not once per model)
    except ImportError as exc:  # before the cache is made: nothing to clean up
        sys.exit(f"export_torchvision.py: {exc.name or exc} is not importable: run this in /work/venv-tv "
                 "(pip install torch torchvision onnx)")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(2)
    has_ultralytics = importlib.util.find_spec("ultralytics") is not None
    jobs = [ExportJob(stem(name, batch), name, "torchscript",
                      lambda name=name, size=size, kind=kind, batch=batch: export_one(name, size, kind, batch, cache))
            for name, size, kind, batch in MODELS
            if not (args.only and name not in args.only and stem(name, batch) not in args.only)
            and not (kind == "ultralytics" and not has_ultralytics)]
    export_each(cache, jobs, args.force, load_failures(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
