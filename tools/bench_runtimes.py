"""Runtime benchmark: is the pruned model smaller and faster in every runtime, not just onnxruntime?

    python tools/bench_runtimes.py --out bench/runtimes.json --markdown
    python tools/bench_runtimes.py --table bench/runtimes.json      # the table of earlier results
    python tools/bench_runtimes.py --ort-optimized --runtimes onnxruntime \\
        --out bench/runtimes_ort_optimized.json --markdown
    python tools/bench_runtimes.py --models vgg16 --sparsity 0.8 --runtimes onnxruntime openvino \\
        --batches 1 32 --threads 1 2 --repeats 20

Prunes each reference model (``../shared/reference``, never modified) at the issue's bar
target (``--sparsity`` overrides it) with :func:`onnx_eprune.prune`, then runs the original
and the pruned model in each runtime: onnxruntime (CPU), OpenVINO (CPU plugin) and PyTorch
(the ONNX graph converted by onnx2torch). For each it records

* accuracy on the full Fashion-MNIST test split (10,000 images), and the top-1 agreement
  and max abs logit difference with onnxruntime on the same model (so a runtime that reads
  the pruned graph differently shows up even where the accuracy does not move);
* latency: median ms per run at each ``--batches`` x ``--threads``, over ``--repeats`` runs
  (more where they would take under ``--min-seconds``) after a warm-up, the original and
  the pruned model interleaved so that machine noise hits both alike; the speed-up is
  original ms / pruned ms, next to the MACs the report removed.

``--ort-optimized`` first passes each reference model through onnxruntime's graph
optimizer at its extended level (``SessionOptions.optimized_model_filepath``), as a
deployment that saves the optimized model does; that model, with its fused
``com.microsoft`` ops (FusedConv, FusedGemm), is the original then, pruned and compared
(onnxruntime only: the other runtimes do not read those ops). The rows then also count the
fused ops of the original and of the pruned model.

OpenVINO runs on static input shapes (reshaped to the batch, as a deployment would) and by
default in f32 (``--ov-precision``): on CPUs with AVX512_BF16 or AMX its default is bf16,
which would compare a different arithmetic, not the pruning.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_coverage import fused_ops, fused_text, ort_optimized  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MODELS = {"lenet5": ("lenet5.onnx", "calib28.npy", 28), "vgg16": ("vgg16.onnx", "calib32.npy", 32),
          "resnet18": ("resnet18.onnx", "calib32.npy", 32)}
BAR = {"lenet5": 0.55, "vgg16": 0.89, "resnet18": 0.84}   # the sparsity targets
RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "onnx2torch"}  # name -> pip package
EVAL_BATCH = 500   # test images per accuracy run: 20 runs for the split, a few MB of activations

Runner = Callable[[np.ndarray], np.ndarray]   # NCHW float32 batch -> logits


def _need(module: str, package: str):
    """``module`` imported, or SystemExit with one line naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"bench_runtimes.py: {module} is missing ({exc}): pip install {package}, "
                         f"or leave it out with --runtimes") from None


def _onnxruntime(model: onnx.ModelProto, batch: int, threads: int, args) -> Runner:
    """An onnxruntime CPU session; the batch stays dynamic, as onnxruntime plans per shape anyway."""
    ort = _need("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _openvino(model: onnx.ModelProto, batch: int, threads: int, args) -> Runner:
    """An OpenVINO CPU compiled model with the input reshaped to ``batch`` (static shapes are
    what OpenVINO is tuned for; a dynamic batch would handicap it in the timings)."""
    ov = _need("openvino", "openvino")
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:  # read_model takes a path for ONNX; weights are read in
        path = Path(tmp) / "m.onnx"
        onnx.save(model, str(path))
        net = core.read_model(str(path))
    shape = [batch, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]
    net.reshape({net.inputs[0].get_any_name(): shape})
    config = {ov.properties.inference_num_threads(): threads, ov.properties.hint.inference_precision():
              {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[args.ov_precision],
              ov.properties.hint.performance_mode(): ov.properties.hint.PerformanceMode.LATENCY}
    compiled = core.compile_model(net, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()  # the buffer is reused by the next run
    return run


def _torch(model: onnx.ModelProto, batch: int, threads: int, args) -> Runner:
    """The onnx2torch conversion in eval mode under ``inference_mode`` (no autograd records)."""
    torch = _need("torch", "torch")
    onnx2torch = _need("onnx2torch", "onnx2torch")
    torch.set_num_threads(threads)   # process-wide: set again at each load, the runs follow at once
    module = onnx2torch.convert(model).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


LOADERS = {"onnxruntime": _onnxruntime, "openvino": _openvino, "torch": _torch}


def _timings(runners: dict[str, Runner], x: np.ndarray, repeats: int, min_seconds: float) -> tuple[dict, int]:
    """Median milliseconds per run of each runner on ``x``, runs interleaved after a warm-up,
    and the runs each made: ``repeats``, or more where that takes under ``min_seconds`` (a
    LeNet-5 run of 0.1 ms is within a scheduler hiccup of twice that: 20 runs are not enough)."""
    slowest = 0.0
    for run in runners.values():
        for _ in range(3):   # first runs allocate and pick kernels
            t0 = time.perf_counter()
            run(x)
        slowest = max(slowest, time.perf_counter() - t0)
    repeats = max(repeats, min(10_000, int(min_seconds / max(slowest, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[name].append(1000.0 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}, repeats


def _logits(runtime: str, model: onnx.ModelProto, x: np.ndarray, args) -> np.ndarray:
    """Logits of ``model`` on all of ``x`` in ``runtime``, in batches of EVAL_BATCH (all threads)."""
    run = LOADERS[runtime](model, EVAL_BATCH, os.cpu_count() or 1, args)
    if len(x) % EVAL_BATCH:
        raise ValueError(f"{len(x)} images is not a multiple of {EVAL_BATCH} (OpenVINO's static batch)")
    return np.concatenate([run(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def bench_model(name: str, args, test: tuple[np.ndarray, np.ndarray]) -> list[dict]:
    """Prune ``name`` once, then the accuracy and latency rows of every runtime."""
    import onnx_eprune

    file, calib, _size = MODELS[name]
    sparsity = args.sparsity if args.sparsity is not None else BAR[name]
    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as folder:
        source = ort_optimized(args.reference / file, Path(folder)) if args.ort_optimized else args.reference / file
        original = onnx.load(str(source))
    t0 = time.perf_counter()
    result = onnx_eprune.prune(original, str(args.reference / calib), sparsity=sparsity, device="cpu")
    prune_s = time.perf_counter() - t0
    rep = result.report
    print(f"{name}: pruned at sparsity {sparsity} in {prune_s:.0f} s: params -{rep['params']['removed_fraction']:.3f},"
          f" MACs -{rep['macs']['removed_fraction']:.3f}", flush=True)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        result.save(args.save / f"{name}.pruned.onnx")
    models = {"original": original, "pruned": result.model}
    fused = {f"fused_ops_{label}": fused_ops(model) for label, model in models.items()} if args.ort_optimized else {}
    if fused:
        print(f"  fused ops: {fused['fused_ops_original']} -> {fused['fused_ops_pruned']}", flush=True)
    # onnxruntime first: it is the reference the other runtimes are compared with
    runtimes = sorted(args.runtimes, key=lambda r: r != "onnxruntime")
    ref: dict[str, np.ndarray] = {}
    rows = []
    for runtime in runtimes:
        try:
            rows += [{**row, **fused} for row in _bench_runtime(name, runtime, models, rep, sparsity, prune_s, test,
                                                                ref, args)]
        except Exception as exc:   # one runtime refusing a model must not lose the others' rows
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            print(f"  {runtime}: FAILED: {error}", flush=True)
            rows.append({"model": name, "runtime": runtime, "sparsity": sparsity, "error": error})
    return rows


def _bench_runtime(name: str, runtime: str, models: dict[str, onnx.ModelProto], rep: dict, sparsity: float,
                   prune_s: float, test: tuple[np.ndarray, np.ndarray], ref: dict[str, np.ndarray], args) -> list[dict]:
    """The rows of one runtime: accuracy (and agreement with ``ref``, onnxruntime's logits,
    which this fills when ``runtime`` is onnxruntime), then latency at each batch x threads."""
    x, y = test
    rows = []
    quality = {}
    for label, model in models.items():
        logits = _logits(runtime, model, x, args)
        if runtime == "onnxruntime":
            ref[label] = logits
        quality[f"accuracy_{label}"] = float(np.mean(logits.argmax(1) == y))
        if label in ref:   # absent only when onnxruntime is left out
            quality[f"agreement_{label}"] = float(np.mean(logits.argmax(1) == ref[label].argmax(1)))
            quality[f"max_abs_diff_{label}"] = float(np.max(np.abs(logits - ref[label])))
    print(f"  {runtime}: accuracy {quality['accuracy_original']:.4f} -> {quality['accuracy_pruned']:.4f}"
          + (f", vs onnxruntime: agreement {quality['agreement_original']:.4f} / {quality['agreement_pruned']:.4f}"
             f", max |diff| {quality['max_abs_diff_original']:.2e} / {quality['max_abs_diff_pruned']:.2e}"
             if "agreement_original" in quality else ""), flush=True)
    for batch in args.batches:
        xb = np.ascontiguousarray(x[:batch])
        for threads in args.threads:
            runners = {label: LOADERS[runtime](model, batch, threads, args) for label, model in models.items()}
            ms, repeats = _timings(runners, xb, args.repeats, args.min_seconds)
            row = {"model": name, "runtime": runtime, "sparsity": sparsity, "batch": batch, "threads": threads,
                   "repeats": repeats, "ms_original": ms["original"], "ms_pruned": ms["pruned"],
                   "speedup": ms["original"] / ms["pruned"], "macs_removed": rep["macs"]["removed_fraction"],
                   "params_removed": rep["params"]["removed_fraction"], "params": rep["params"],
                   "macs": rep["macs"], "prune_seconds": prune_s, "test_images": len(y), **quality}
            if runtime == "openvino":
                row["ov_precision"] = args.ov_precision
            print(f"  {runtime} batch {batch} threads {threads}: {ms['original']:.3f} -> {ms['pruned']:.3f} ms,"
                  f" x{row['speedup']:.2f} (MACs -{row['macs_removed']:.3f})", flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table for BENCHMARKS.md, one line per model x runtime x batch x threads."""
    threads = len({r["threads"] for r in rows if "threads" in r}) > 1
    fused = any("fused_ops_original" in r for r in rows)   # --ort-optimized
    head = ["model", "runtime", "accuracy original -> pruned", "agreement with onnxruntime (orig / pruned)", "batch",
            *(["threads"] if threads else []), "ms original", "ms pruned", "speed-up", "MACs removed",
            *(["fused ops original -> pruned"] if fused else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:   # a runtime that refused the model: say so in the table, not only in the JSON
            lines.append(f"| {r['model']} | {r['runtime']} | failed: {r['error']} |" + " |" * (len(head) - 3))
            continue
        agree = f"{r['agreement_original']:.2%} / {r['agreement_pruned']:.2%}" if "agreement_original" in r else "-"
        cells = [r["model"], r["runtime"], f"{r['accuracy_original']:.2%} -> {r['accuracy_pruned']:.2%}", agree,
                 str(r["batch"]), *([str(r["threads"])] if threads else []), f"{r['ms_original']:.3f}",
                 f"{r['ms_pruned']:.3f}", f"x{r['speedup']:.2f}", f"{r['macs_removed']:.1%}"]
        if fused:
            cells.append(" -> ".join(fused_text(r.get(f"fused_ops_{label}", {})) or "-"
                                     for label in ("original", "pruned")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions(runtimes: list[str]) -> dict[str, str]:
    """Installed versions of the runtimes used (and onnx), for the JSON: timings depend on them.
    From the distributions, not ``__version__`` (onnx2torch has none; onnxruntime may be onnxruntime-gpu)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ["onnx", *[p for r in runtimes for p in {"torch": ("torch", "onnx2torch")}.get(r, (RUNTIMES[r],))]]:
        for dist in (package, f"{package}-gpu"):
            try:
                versions[package] = version(dist)
                break
            except PackageNotFoundError:
                versions[package] = "?"
    return versions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sparsity", type=float, help="one target for all models (default: the issue's bar per model)")
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", nargs="+", type=int, default=[1], help="e.g. 1 %d for all threads too" % (
        os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of each model, at least (default 20)")
    ap.add_argument("--min-seconds", type=float, default=2.0,
                    help="more runs where --repeats of the slowest model take less (default 2 s)")
    ap.add_argument("--ov-precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--ort-optimized", action="store_true",
                    help="prune the models as onnxruntime's optimizer saves them (extended level: fused ops)")
    ap.add_argument("--save", type=Path, help="folder to write the pruned models to (to inspect them)")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--markdown", action="store_true", help="print the table for BENCHMARKS.md")
    ap.add_argument("--table", type=Path, metavar="JSON", help="print the table of an earlier --out and run nothing")
    args = ap.parse_args()
    if args.table:
        try:
            rows = json.loads(args.table.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"bench_runtimes.py: cannot read {args.table} as results of this tool: {exc}") from None
        print(markdown(rows))
        return 0
    for runtime in args.runtimes:   # fail before pruning, not after minutes of it
        _need(*{"torch": ("onnx2torch", "onnx2torch")}.get(runtime, (runtime, RUNTIMES[runtime])))
    from onnx_eprune.datasets import fashion_mnist_available, load_fashion_mnist, preprocess

    if not fashion_mnist_available():
        raise SystemExit("bench_runtimes.py: needs the Fashion-MNIST test split: apt-get install dataset-fashion-mnist")
    xt, yt = load_fashion_mnist("test")
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        rows += bench_model(name, args, (preprocess(xt, MODELS[name][2]), yt))
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.0f} s", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                                        "cpus": os.cpu_count(), "versions": _versions(args.runtimes),
                                        "wall_seconds": wall, "rows": rows}, indent=1))
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
