"""Export timm CNNs (random weights) to ONNX for the coverage benchmark (issue 3).

Runs in the torch venv, not in the package's environment::

    /work/venv-timm/bin/python tools/export_timm.py --cache /work/timm_onnx [--only NAME ...] [--force]

For every architecture in ``MODELS`` it writes ``<name>.onnx`` (TorchScript exporter,
opset 17, dynamic batch) and ``<name>.json`` (the input shape and how it was made); for the
names in ``DYNAMO`` also ``<name>.dynamo.onnx`` / ``<name>.dynamo.json`` from the
torch.export-based exporter. Failures are written to ``export_failures.json`` in the cache
(with the error), which the benchmark reads. The ONNX files stay outside git.
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

# (timm name, input height/width): 96 unless the architecture needs more (vgg's ConvMlp head
# needs 7x7 features: the TorchScript exporter refuses adaptive_avg_pool2d 3x3 -> 7x7)
MODELS: list[tuple[str, int]] = [
    ("resnet18", 96), ("resnet50", 96), ("resnext26ts", 96), ("resnext50_32x4d", 96),
    ("seresnet18", 96), ("legacy_seresnet18", 96), ("regnetx_002", 96), ("regnety_002", 96),
    ("regnetx_004", 96), ("densenet121", 96), ("mobilenetv2_100", 96), ("mobilenetv3_small_100", 96),
    ("mobilenetv3_large_100", 96), ("efficientnet_b0", 96), ("tf_efficientnet_b0", 96),
    ("efficientnet_lite0", 96), ("ghostnet_100", 96), ("mixnet_s", 96), ("convnext_atto", 96),
    ("vgg11_bn", 224), ("inception_v3", 96), ("dpn68", 96), ("cspdarknet53", 96), ("cspresnet50", 96),
    ("repvgg_a0", 96), ("dla34", 96), ("hrnet_w18_small", 96), ("res2net50_14w_8s", 96),
    ("mnasnet_100", 96), ("spnasnet_100", 96), ("rexnet_100", 96), ("lcnet_050", 96),
    ("resnet26d", 96), ("skresnet18", 96), ("selecsls42b", 96), ("hardcorenas_a", 96),
    ("fbnetc_100", 96), ("tinynet_a", 96), ("semnasnet_100", 96), ("dm_nfnet_f0", 96),
    ("nf_resnet26", 96), ("resnetv2_50", 96), ("gernet_s", 96), ("legacy_xception", 96),
    ("xception41", 96), ("darknet53", 96), ("ese_vovnet19b_dw", 96), ("ecaresnet26t", 96),
    ("seresnext26d_32x4d", 96), ("mobileone_s0", 96), ("fastvit_t8", 96),
    ("resnet50_gn", 96), ("resnetv2_50x1_bit", 96),  # GroupNorm (with weight standardisation in BiT)
    ("inception_resnet_v2", 96),  # residual sums of a Conv and a Concat, block after block
    ("inception_v4", 96), ("tresnet_m", 96), ("hgnet_tiny", 96), ("hgnetv2_b0", 96), ("ghostnetv2_100", 96),
    ("repghostnet_100", 96), ("mobilenetv4_conv_small", 96), ("efficientnetv2_rw_t", 96), ("regnetz_b16", 96),
    ("mixnet_m", 96), ("vovnet39a", 96), ("dla60x", 96), ("cs3darknet_s", 96), ("res2next50", 96),
    ("poolformer_s12", 96), ("eca_nfnet_l0", 96), ("resnest14d", 96), ("mobilevit_xxs", 96),
]
# exported a second time with torch.export (dynamo=True)
DYNAMO = ["resnet18", "mobilenetv2_100", "efficientnet_b0", "densenet121", "regnety_002", "mobilenetv3_small_100",
          "convnext_atto", "resnet50_gn", "skresnet18"]


def export_one(name: str, size: int, dynamo: bool, cache: Path) -> dict:
    import timm
    import torch

    torch.manual_seed(0)  # before the weights are drawn: the same export whatever ran before it
    model = timm.create_model(name, pretrained=False)
    model.eval()
    shape = [1, 3, size, size]
    x = torch.randn(*shape)
    stem = f"{name}.dynamo" if dynamo else name
    path = cache / f"{stem}.onnx"
    t0 = time.perf_counter()
    opset = 17
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        else:
            # an example batch of 1 lets torch.export specialise the batch dimension ("Invalid ranges [2:1]")
            x = torch.randn(2, *shape[1:])
            batch = torch.export.Dim("batch", min=1, max=1024)
            kwargs = dict(dynamo=True, input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: batch},), external_data=False)
            try:
                torch.onnx.export(model, (x,), str(path), opset_version=opset, **kwargs)
            except Exception:  # the version converter may refuse 18 -> 17: keep the native opset
                opset = 18
                torch.onnx.export(model, (x,), str(path), opset_version=opset, **kwargs)
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)  # what was written
    meta = {"name": stem, "arch": name, "exporter": "dynamo" if dynamo else "torchscript",
            "input_name": "input", "input_shape": shape, "opset": opset, "torch": torch.__version__,
            "timm": timm.__version__, "export_seconds": round(time.perf_counter() - t0, 2),
            "params": int(sum(p.numel() for p in model.parameters()))}
    (cache / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/timm_onnx")
    ap.add_argument("--only", nargs="*", help="export only these timm names")
    ap.add_argument("--force", action="store_true", help="re-export files that exist")
    ap.add_argument("--no-dynamo", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    try:
        import timm
        import torch
    except ImportError as exc:  # before the cache is made: nothing to clean up
        sys.exit(f"export_timm.py: {exc.name or exc} is not importable: run this in /work/venv-timm "
                 "(pip install torch timm onnx)")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(2)
    known = set(timm.list_models())
    failures = load_failures(cache)
    jobs = [(n, s, False) for n, s in MODELS] + ([] if args.no_dynamo else
                                                 [(n, s, True) for n, s in MODELS if n in DYNAMO])
    if args.only:
        jobs = [j for j in jobs if j[0] in args.only]
    for name, _, dynamo in jobs:
        if name not in known:
            stem = f"{name}.dynamo" if dynamo else name
            failures[stem] = {"arch": name, "exporter": "dynamo" if dynamo else "torchscript",
                              "error": "not in timm.list_models()"}
            print(f"{stem}: not in timm", flush=True)
    export_each(cache, [ExportJob(f"{name}.dynamo" if dynamo else name, name, "dynamo" if dynamo else "torchscript",
                                  lambda name=name, size=size, dynamo=dynamo: export_one(name, size, dynamo, cache))
                        for name, size, dynamo in jobs if name in known], args.force, failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
