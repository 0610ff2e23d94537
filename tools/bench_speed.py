"""Speed benchmark: do removed MACs become removed milliseconds, and how pruning scales.

    python tools/bench_speed.py latency --models vgg16 resnet18 --flops 0.5 [--round-to 1 16] \\
        --out bench/speed_latency.json
    python tools/bench_speed.py samples --model vgg16 --samples 256 1024 4096 --out bench/speed_samples.json
    python tools/bench_speed.py width --widths 16 32 64 128 --samples 1024 --out bench/speed_width.json

``latency``: prunes each reference model (``../shared/reference``) to the MAC reduction
with the default channel rounding ("pruned") and with each ``--round-to`` given, then
times the original and the pruned models in onnxruntime on the CPU (1 thread and all
threads, batch 1 and 32; median of ``--repeats`` runs after a warm-up, the two models
interleaved so that machine noise hits both alike) and prints the latency reduction over
the MAC reduction (the issue's bar: >= 0.8 at batch 32, 1 thread).

``samples``: prunes one model with N calibration images from the Fashion-MNIST train split
(the first N of a fixed seeded permutation) in a fresh process per N, and records wall
time and peak resident memory (``VmHWM`` of the child: not ``ru_maxrss``, which Linux
carries across ``exec``, so it would report this process's peak whenever it is higher).
``width``: the same for plain VGG-style chains of growing width (:func:`width_model`,
random weights: time and memory, not accuracy). Both prune with ``flops_reduction=0.5``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MODELS = {"lenet5": ("lenet5.onnx", "calib28.npy", 28), "vgg16": ("vgg16.onnx", "calib32.npy", 32),
          "resnet18": ("resnet18.onnx", "calib32.npy", 32)}


def _timings(models: dict[str, onnx.ModelProto], x: np.ndarray, threads: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per run of each model on ``x``, runs interleaved."""
    import onnxruntime as ort

    sessions = {}
    for name, model in models.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {sess.get_inputs()[0].name: x}
        sess.run(None, feeds)
        sessions[name] = (sess, feeds)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (sess, feeds) in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(1000.0 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def latency(args) -> list[dict]:
    import onnx_eprune

    rows = []
    for name in args.models:
        file, calib, size = MODELS[name]
        original = onnx.load(str(args.reference / file))
        variants = {"original": original}
        reports = {}
        for round_to in [None, *sorted(set(args.round_to))]:
            label = "pruned" if round_to is None else f"pruned, round-to {round_to}"
            result = onnx_eprune.prune(original, str(args.reference / calib), flops_reduction=args.flops,
                                       round_to=round_to, device="cpu", method=args.method)
            variants[label], reports[label] = result.model, result.report
        rng = np.random.default_rng(0)
        for batch in (1, 32):
            x = rng.normal(size=(batch, 1, size, size)).astype(np.float32)
            for threads in (1, os.cpu_count() or 1):
                ms = _timings(variants, x, threads, args.repeats)
                for label in variants:
                    if label == "original":
                        continue
                    macs = reports[label]["macs"]["removed_fraction"]
                    lat = 1.0 - ms[label] / ms["original"]
                    row = {"model": name, "variant": label, "flops_target": args.flops, "batch": batch,
                           "threads": threads, "ms_original": ms["original"], "ms_pruned": ms[label],
                           "macs_removed": macs, "latency_removed": lat, "ratio": lat / macs if macs else None,
                           "channels": [g["channels_after"] for g in reports[label]["groups"] if not g["frozen"]]}
                    print(f"{name} {label} batch {batch} threads {threads}: {ms['original']:.2f} -> "
                          f"{ms[label]:.2f} ms, latency {-lat:+.3f} vs MACs -{macs:.3f} (ratio {row['ratio']:.2f})",
                          flush=True)
                    rows.append(row)
    return rows


def width_model(width: int) -> onnx.ModelProto:
    """A plain VGG-style chain on 1x32x32 inputs with random He-initialised weights: two 3x3
    convs at ``width``, ``2*width`` and ``4*width`` channels (max-pool between), GAP, Gemm(10)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    nodes, inits, x, cin = [], [], "x", 1
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(2):
            name = f"conv{stage}{i}"
            w = rng.normal(0.0, np.sqrt(2.0 / (9 * cin)), size=(cout, cin, 3, 3)).astype(np.float32)
            inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(np.zeros(cout, np.float32),
                                                                                       f"{name}.b")]
            nodes += [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", [name], [f"{name}.r"])]
            x, cin = f"{name}.r", cout
        if stage < 2:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{stage}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{stage}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1)]
    inits += [numpy_helper.from_array(rng.normal(0, np.sqrt(1.0 / cin), size=(10, cin)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    graph = helper.make_graph(nodes, f"width{width}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _child(model: str, samples: int, out: str) -> None:
    """One pruning run in this process (``model``: a reference name or ``width:W``); prints
    its JSON result."""
    import onnx_eprune
    from onnx_eprune.allocator import keep_freed_memory
    from onnx_eprune.datasets import load_fashion_mnist, preprocess

    keep_freed_memory()  # as the command-line program does for sequential runs (these are)

    if model.startswith("width:"):
        source, size = width_model(int(model.split(":")[1])), 32
    else:
        file, _calib, size = MODELS[model]
        source = str(REFERENCE / file)
    images, _ = load_fashion_mnist("train")
    order = np.random.default_rng(0).permutation(len(images))[:samples]
    calib = preprocess(images[order], size)
    t0 = time.perf_counter()
    result = onnx_eprune.prune(source, calib, flops_reduction=0.5, device="cpu")
    seconds = time.perf_counter() - t0
    onnx.save(result.model, out)
    print(json.dumps({"seconds": seconds, "phase_seconds": result.report["seconds"],
                      "params": result.report["params"]["before"], "macs": result.report["macs"]["before"],
                      "peak_rss_mib": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> int:
    """This process's own peak resident set in KiB (``VmHWM``; reset at ``exec``, unlike
    ``ru_maxrss``, which keeps the forking process's peak when that is higher)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def _run_child(model: str, samples: int) -> dict:
    """One pruning run in a fresh process (:func:`_child`): its JSON result; SystemExit with
    the child's own last error line if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "_child", model, str(samples), str(Path(tmp) / "m.onnx")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        # the reason is the child's last stderr line (its exception), not the command line
        reason = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no error output")
        raise SystemExit(f"bench_speed.py: pruning {model} on {samples} samples failed "
                         f"(exit {proc.returncode}): {reason.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def samples(args) -> list[dict]:
    rows = []
    for n in args.samples:
        row = {"model": args.model, "samples": n, **_run_child(args.model, n)}
        print(f"{args.model} {n} samples: {row['seconds']:.1f} s, peak {row['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append(row)
    return rows


def widths(args) -> list[dict]:
    rows = []
    for w in args.widths:
        row = {"model": f"width {w}", "width": w, "samples": args.samples, **_run_child(f"width:{w}", args.samples)}
        print(f"width {w} ({row['params']:,} params, {row['macs'] / 1e6:.0f}M MACs), {args.samples} samples: "
              f"{row['seconds']:.1f} s, peak {row['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append(row)
    return rows


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "_child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--models", nargs="+", default=["vgg16", "resnet18"], choices=list(MODELS))
    lat.add_argument("--flops", type=float, default=0.5)
    lat.add_argument("--round-to", nargs="*", type=int, default=[])
    lat.add_argument("--method", default="entropic")
    lat.add_argument("--repeats", type=int, default=30)
    lat.add_argument("--reference", type=Path, default=REFERENCE)
    smp = sub.add_parser("samples")
    smp.add_argument("--model", default="vgg16", choices=list(MODELS))
    smp.add_argument("--samples", nargs="+", type=int, default=[256, 1024, 4096])
    wid = sub.add_parser("width")
    wid.add_argument("--widths", nargs="+", type=int, default=[16, 32, 64, 128])
    wid.add_argument("--samples", type=int, default=1024)
    for p in (lat, smp, wid):
        p.add_argument("--out", type=Path, help="JSON file to write")
    args = ap.parse_args()
    rows = {"latency": latency, "samples": samples, "width": widths}[args.what](args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
