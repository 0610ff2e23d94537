"""Coverage benchmark (issue 3): prune every exported timm CNN and record what works.

Runs with the Python where onnx_eprune is installed (no torch needed)::

    python tools/bench_coverage.py --cache /work/timm_onnx --out tools/coverage_results.json \
        [--only NAME ...] [--timeout S]

For each ``<name>.onnx`` in the cache (with its sidecar ``<name>.json`` from
``tools/export_timm.py``), a subprocess (killed after ``--timeout`` seconds):

* makes 32 seeded standard-normal calibration samples of the model's input shape (.npy);
* runs ``onnx-eprune inspect MODEL --input-shape ... --json`` (prunable MAC fraction, frozen reasons);
* prunes with ``keep_ratio=1.0`` and measures the largest per-sample relative output error
  against the original on 8 fresh inputs (should be <= 1e-4);
* prunes with ``onnx_eprune.prune(model, calib, flops_reduction=0.3, seed=0)`` and checks the
  result: ``onnx.checker.check_model(full_check=True)``, an onnxruntime CPU run on 8 fresh
  inputs, same input/output names and output shapes as the original.

The timeout covers all three steps; what finished before it is kept.

``--openvino`` (optional: ``pip install openvino``; refused up front without it) adds a
fourth step: the original and the pruned model are compiled in OpenVINO's CPU plugin with
f32 inference forced (the plugin defaults to bf16 on CPUs that have it, off by ~1e-2 on any
model), reshaped to the check inputs' static shape and run on them; the row's ``openvino``
records whether each compiled and ran and the largest relative output error against
onnxruntime's outputs of the same model (the first line of any error, never the row lost),
and the table gains an OpenVINO column: ``yes (ERR)``, ``refuses pruned``, or ``differs``
when the pruned model's error exceeds ``max(10 x the original's, 1e-4)``. It catches a
pruned graph that only onnxruntime accepts.

``--check`` prunes nothing: it inspects every cached export again (a minute or two for a
hundred) and prints each one whose prunable MAC share, prunable groups, MAC total or
inspect error differs from its row in ``--out``, exiting 1 if any does. Run it after a
change to the analysis, normalisation or cost model: rows run on older code are not
re-checked otherwise (session 45 froze layers of 18 timm exports, unnoticed until session 47).

Results go to ``--out`` (JSON, merged with an existing file when ``--only`` is given) and a
Markdown table beside it: ``COVERAGE.md`` for the default ``coverage_results.json``, else the
``--out`` name with ``.md`` (``tools/coverage_thirdparty.md`` for the PaddlePaddle and
TensorFlow exports of ``tools/export_thirdparty.py``, which run the same way with
``--cache /work/thirdparty_onnx --out tools/coverage_thirdparty.json --title ...``). The
calibration and check inputs take the sidecar's ``input_shape`` as it is, so NHWC inputs work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

MAC_GOAL = 0.20        # a model "reaches" the goal with >= 20 % MACs removed, valid and runnable
KEEP1_TOL = 1e-4
FLOPS_TARGET = 0.3
CALIB_SAMPLES = 32
CHECK_SAMPLES = 8


# -- worker: one model, in its own process --------------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:400] if lines else ""


def _error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": _first_line(exc),
            "traceback": traceback.format_exc()[-2500:]}


def _reasons(groups: list[dict]) -> list[str]:
    out: list[str] = []
    for g in groups:
        for r in (g.get("frozen") or "").split("; "):
            if r and r not in out:
                out.append(r)
    return out


def _io(model) -> tuple[list[str], list[str]]:
    inits = {i.name for i in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output])


def _run(model, feeds: dict) -> list:
    """The model's outputs on ``feeds`` in a plain onnxruntime CPU session; a model exported
    for a fixed batch size runs that many samples at a time (``len(feeds)`` is a multiple),
    one without a batch axis one sample at a time (its outputs' rows concatenated)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    pieces = [sess.run(None, piece) for piece in _pieces(model, feeds)]
    return [np.concatenate(parts) for parts in zip(*pieces)]


def _pieces(model, feeds: dict) -> list[dict]:
    """``feeds`` cut into the runs :func:`_run` makes: all at once, a fixed batch's worth at a
    time, or one sample at a time (without its batch axis) for an input that has none."""
    from onnx_eprune.calibrate.session import fixed_batch, unbatched_inputs

    n = len(next(iter(feeds.values())))
    squeeze = unbatched_inputs(model)
    step = 1 if squeeze else fixed_batch(model) or n
    return [{k: v[i] if k in squeeze else v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]


def _check_pruned(orig_outs, model, inputs: dict, out_names: list[str], in_names: list[str], res: dict,
                  prefix: str) -> list | None:
    """check_model, ORT CPU run, same io names and output shapes. Returns the outputs."""
    import numpy as np
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        res[f"{prefix}valid"] = True
    except Exception as exc:  # noqa: BLE001
        res[f"{prefix}valid"] = False
        res[f"{prefix}check_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
    try:
        p_in, p_out = _io(model)
        same_io = p_in == in_names and p_out == out_names
        from onnx_eprune.calibrate.session import unbatched_inputs

        outs = _run(model, inputs)
        # without a batch axis the outputs' rows are per-detection: only their width must stay
        cut = 1 if unbatched_inputs(model) else 0
        same_shapes = [o.shape[cut:] for o in outs] == [o.shape[cut:] for o in orig_outs]
        finite = all(bool(np.all(np.isfinite(o))) for o in outs)
        res[f"{prefix}runs"] = True
        res[f"{prefix}same_io_names"] = same_io
        res[f"{prefix}same_output_shapes"] = same_shapes
        res[f"{prefix}finite"] = finite
        return outs
    except Exception as exc:  # noqa: BLE001
        res[f"{prefix}runs"] = False
        res[f"{prefix}run_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        return None


def _rel_err(a_list, b_list) -> float | None:
    """The largest per-sample relative error over the outputs (None when an output's
    length changed: a detector's rows)."""
    import numpy as np

    if any(a.shape != b.shape for a, b in zip(a_list, b_list)):
        return None
    worst = 0.0
    for a, b in zip(a_list, b_list):
        a64 = a.astype(np.float64).reshape(a.shape[0], -1)
        b64 = b.astype(np.float64).reshape(b.shape[0], -1)
        num = np.linalg.norm(a64 - b64, axis=1)
        den = np.maximum(np.linalg.norm(a64, axis=1), 1e-30)
        worst = max(worst, float(np.max(num / den)))
    return worst


# -- --openvino: the original and the pruned model in OpenVINO's CPU plugin ------------------------
OV_FACTOR, OV_FLOOR = 10.0, 1e-4  # the pruned model "differs" above max(10 x the original's error, 1e-4)


def _load_openvino():
    """The ``openvino`` module (ImportError when it is not installed; a test puts a fake here)."""
    import openvino

    return openvino


def _ov_message(exc: BaseException) -> str:
    """The first line of an OpenVINO error that says something: its messages open with
    ``Exception from src/...cpp:LINE:`` lines."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    told = [x for x in lines if not (x.startswith("Exception from ") and x.endswith(":"))]
    return f"{type(exc).__name__}: {(told or lines or [''])[0][:400]}"


def _openvino_outputs(ov, core, path: Path, model, feeds: dict) -> list:
    """The ONNX file ``path`` (``model``) compiled in OpenVINO's CPU plugin with f32 inference
    (it defaults to bf16 where the CPU has it), reshaped to the static shape of the runs
    :func:`_run` makes and run on them, inputs fed by name; the outputs in ``model``'s order,
    the runs' concatenated as :func:`_run` does."""
    import numpy as np

    pieces = _pieces(model, feeds)
    ov_model = core.read_model(str(path))
    ov_model.reshape({name: list(arr.shape) for name, arr in pieces[0].items()})
    compiled = core.compile_model(ov_model, "CPU", {ov.properties.hint.inference_precision(): ov.Type.f32,
                                                    ov.properties.inference_num_threads(): 2})
    precision = compiled.get_property(ov.properties.hint.inference_precision())
    if precision != ov.Type.f32:
        raise RuntimeError(f"OpenVINO compiled for {precision}, not f32")
    ports = [port.get_names() for port in compiled.outputs]
    order = [next((i for i, names in enumerate(ports) if o.name in names), k) for k, o in enumerate(model.graph.output)]
    runs = [compiled(piece) for piece in pieces]
    return [np.concatenate([np.array(run[i]) for run in runs]) for i in order]


def openvino_compare(orig, orig_path: Path, orig_outs: list, pruned, pruned_outs: list | None, feeds: dict,
                     folder: Path, row: dict | None = None, save=None) -> dict:
    """``--openvino``: the original ``orig`` (the file ``orig_path``) and the ``pruned`` model
    (saved into ``folder``; None when pruning failed) compiled and run in OpenVINO on
    ``feeds``. Fills and returns ``row``: ``version``, ``original_ok`` / ``pruned_ok``
    (compiled and ran; None: not tried), ``original_rel_err`` / ``pruned_rel_err`` (the largest
    per-sample relative error of an output against onnxruntime's ``orig_outs`` /
    ``pruned_outs``, None when a detector's rows differ in number or onnxruntime gave none),
    ``error`` (the first line of each failure, or None) and ``seconds``. Nothing raises; the
    model under way is ``row["running"]`` whenever ``save`` (called before each) writes the
    row, so that the driver can tell a worker that OpenVINO killed."""
    import onnx

    row = {} if row is None else row
    t0 = time.perf_counter()
    row.update(version=None, original_ok=None, pruned_ok=None, original_rel_err=None, pruned_rel_err=None,
               error=None)
    errors = []
    try:
        ov = _load_openvino()
        row["version"] = str(ov.__version__)
        core = ov.Core()
    except Exception as exc:  # noqa: BLE001
        row["error"] = _ov_message(exc)
        return row
    for which, model, path, ref in (("original", orig, orig_path, orig_outs), ("pruned", pruned, None, pruned_outs)):
        if model is None:
            continue
        row["running"] = which
        if save is not None:
            save()
        try:
            if path is None:
                path = folder / "pruned_for_openvino.onnx"
                onnx.save(model, str(path))
            outs = _openvino_outputs(ov, core, path, model, feeds)
            row[f"{which}_ok"] = True
            row[f"{which}_rel_err"] = None if ref is None else _rel_err(ref, outs)
        except Exception as exc:  # noqa: BLE001
            row[f"{which}_ok"] = False
            errors.append(f"{which}: {_ov_message(exc)}")
    row.pop("running", None)
    row["error"] = " / ".join(errors) or None
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def openvino_differs(o: dict) -> bool:
    """The pruned model's OpenVINO error exceeds ``max(OV_FACTOR x the original's, OV_FLOOR)``."""
    p, q = o.get("pruned_rel_err"), o.get("original_rel_err")
    return p is not None and p > max(OV_FACTOR * (q or 0.0), OV_FLOOR)


def _openvino_cell(r: dict) -> str:
    """The OpenVINO column: the pruned model's error against onnxruntime, with the original's
    where that is above the floor (a detector's rows: near-tie detections reorder or change
    label between runtimes, in the original as much)."""
    o = r.get("openvino")
    if not o:
        return "-"
    if o.get("original_ok") is False:
        return "**refuses original**"
    if o.get("pruned_ok") is False:
        return "**refuses pruned**"
    if not o.get("pruned_ok"):
        return "-"
    p, q = o.get("pruned_rel_err"), o.get("original_rel_err")
    if p is None:  # onnxruntime gave no outputs, or (a detector) another number of rows
        return "yes (row counts differ)" if r.get("runs") else "yes (not compared)"
    base = f", original {q:.0e}" if q is not None and q > OV_FLOOR else ""
    return f"**differs** ({p:.0e}, original {q or 0:.0e})" if openvino_differs(o) else f"yes ({p:.0e}{base})"


class _ProgressFile:
    """A stream for onnx_eprune's Progress that keeps its last line in a file, so that a
    killed worker still tells where it was (which phase, how many groups done)."""

    def __init__(self, path: Path, step: str):
        self.path, self.step, self.t0, self.last = path, step, time.perf_counter(), 0.0

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[2K", "").strip()
        now = time.perf_counter()
        if line and now - self.last > 0.5:
            self.last = now
            self.path.write_text(f"{self.step} at {now - self.t0:.0f} s: {' '.join(line.split())}")

    def flush(self) -> None:
        pass


def _progress(result_path: Path, step: str):
    from onnx_eprune.progress import Progress

    return Progress(enabled=True, stream=_ProgressFile(Path(str(result_path) + ".progress"), step))


def package_version() -> str:
    """onnx_eprune's version and, in a git checkout, its commit (+dirty when the package differs)."""
    import onnx_eprune

    root = Path(onnx_eprune.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", ""
    return onnx_eprune.__version__ + (f" ({head}{'+dirty' if dirty else ''})" if head else "")


def inspect_model(model_path: Path, shape: list[int]) -> dict:
    """``onnx-eprune inspect MODEL --input-shape SHAPE --json`` (the CLI, as a user would
    run it): the row's ``prunable_mac_fraction``, ``prunable_groups``, ``groups_total``,
    ``macs_total`` and ``inspect_frozen_reasons``, or its ``inspect_error``; and
    ``inspect_seconds``."""
    t0 = time.perf_counter()
    exe = shutil.which("onnx-eprune")
    cmd = ([exe] if exe else [sys.executable, "-m", "onnx_eprune.cli"]) + ["inspect", str(model_path),
           "--input-shape", ",".join(map(str, shape)), "--json", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    res: dict = {"inspect_seconds": round(time.perf_counter() - t0, 2)}
    if proc.returncode == 0:
        try:
            info = json.loads(proc.stdout)
            res.update(prunable_mac_fraction=info["prunable_mac_fraction"], prunable_groups=info["prunable_groups"],
                       groups_total=len(info["groups"]), macs_total=info["macs"],
                       inspect_frozen_reasons=_reasons(info["groups"]))
        except Exception as exc:  # noqa: BLE001
            res["inspect_error"] = {"type": type(exc).__name__, "message": _first_line(exc)}
    else:
        res["inspect_error"] = {"type": "CLIError", "message": (proc.stderr.strip().splitlines() or [""])[-1][:400]}
    return res


# what --check compares: a change of the analysis or the cost model shows in one of these
CHECKED = ("prunable_mac_fraction", "prunable_groups", "macs_total", "inspect_error")


def _checked(row: dict) -> dict:
    """The :data:`CHECKED` figures of a row as ``--check`` compares them: the prunable share
    to 1e-4, an inspect error by its message."""
    figures = {k: row.get(k) for k in CHECKED}
    if figures["prunable_mac_fraction"] is not None:
        figures["prunable_mac_fraction"] = round(figures["prunable_mac_fraction"], 4)
    figures["inspect_error"] = (figures["inspect_error"] or {}).get("message")
    return figures


def check_rows(cache: Path, stems: list[str], results: dict, optimized: bool = False) -> int:
    """``--check``: inspect each export ``stems`` of ``cache`` again (``optimized``: as
    onnxruntime's optimizer saves it, the model of an ``--ort-optimized`` row) and compare
    the :data:`CHECKED` figures with its row in ``results`` (the prunable share to 1e-4, an
    error by its message); prints every difference. Returns the number of exports that
    differ from their rows or have none."""
    differ = 0
    for stem in stems:
        meta = json.loads((cache / f"{stem}.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            path = ort_optimized(cache / f"{stem}.onnx", Path(tmp)) if optimized else cache / f"{stem}.onnx"
            now = inspect_model(path, [int(d) for d in meta["input_shape"]])
        was, found = _checked(results.get(stem, {})), _checked(now)
        if found != was:
            differ += 1
            print(f"{stem}: " + ", ".join(f"{k} {was[k]} -> {found[k]}" for k in CHECKED if was[k] != found[k]),
                  flush=True)
    print(f"{len(stems) - differ} of {len(stems)} exports inspect as their rows say")
    return differ


def ort_optimized(model_path: Path, folder: Path) -> Path:
    """``model_path`` as onnxruntime's graph optimizer saves it at its extended level (fused
    ``com.microsoft`` ops), written into ``folder``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / model_path.name)
    options.log_severity_level = 3  # its notes on initializers it drops
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return folder / model_path.name


def fused_ops(model) -> dict[str, int]:
    """How many nodes of each onnxruntime fused op (domain com.microsoft) ``model`` holds."""
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items()))


def fused_text(ops: dict[str, int]) -> str:
    """``fused_ops``' counts as the tables write them ("FusedConv 9, FusedGemm 1"; "" for none)."""
    return ", ".join(f"{op} {n}" for op, n in ops.items())


def worker(model_path: Path, meta: dict, result_path: Path, method: str = "entropic",
           openvino: bool = False, optimized: bool = False) -> None:
    import numpy as np
    import onnx

    import onnx_eprune

    res: dict = {"package": package_version()}
    t_start = time.perf_counter()

    def save() -> None:
        res["seconds"] = round(time.perf_counter() - t_start, 2)
        result_path.write_text(json.dumps(res, indent=1))

    shape = [int(d) for d in meta["input_shape"]]
    # one sample's shape; an input without a batch axis (meta "batch_axis": false) is one whole
    sample = shape if meta.get("batch_axis", True) is False else shape[1:]
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((CALIB_SAMPLES, *sample)).astype(np.float32)
    check = np.random.default_rng(1).standard_normal((CHECK_SAMPLES, *sample)).astype(np.float32)
    tmp = result_path.parent  # the driver's temporary folder: removed after the run, even a killed one
    calib_path = tmp / "calib.npy"
    np.save(calib_path, calib)

    try:
        if optimized:  # the export as onnxruntime's optimizer saves it is the model of this row
            model_path = ort_optimized(model_path, tmp)
        orig = onnx.load(str(model_path))
        in_names, out_names = _io(orig)
        feeds = {in_names[0]: check}
        orig_outs = _run(orig, feeds)
    except Exception as exc:  # noqa: BLE001
        res["original_error"] = _error(exc)
        save()
        return
    if optimized:
        res["fused_ops"] = fused_ops(orig)

    res.update(inspect_model(model_path, shape))
    save()

    # keep_ratio = 1.0: must reproduce the original
    t0 = time.perf_counter()
    try:
        result = onnx_eprune.prune(str(model_path), calib, keep_ratio=1.0, seed=0,
                                  progress=_progress(result_path, "keep_ratio=1.0 run"))
        res["keep1_ok"] = True
        if optimized:
            res["keep1_fused_ops"] = fused_ops(result.model)
        outs = _check_pruned(orig_outs, result.model, feeds, out_names, in_names, res, "keep1_")
        if outs is not None:
            res["keep1_max_rel_err"] = _rel_err(orig_outs, outs)
    except Exception as exc:  # noqa: BLE001
        res["keep1_ok"] = False
        res["keep1_error"] = _error(exc)
    res["keep1_seconds"] = round(time.perf_counter() - t0, 2)
    save()

    # the 30 % MAC reduction run
    t0 = time.perf_counter()
    pruned = pruned_outs = None
    try:
        result = onnx_eprune.prune(str(model_path), calib, flops_reduction=FLOPS_TARGET, seed=0,
                                  method=method, progress=_progress(result_path, "flops run"))
        res["pruned_ok"] = True
        if optimized:
            res["pruned_fused_ops"] = fused_ops(result.model)
        rep = result.report
        res["macs_removed"] = rep["macs"]["removed_fraction"]
        res["params_removed"] = rep["params"]["removed_fraction"]
        res["report_prunable_groups"] = rep["prunable_groups"]
        res["frozen_reasons"] = _reasons(rep["groups"])
        res["calib_fidelity"] = {k: v for k, v in rep["fidelity_on_calibration"]["outputs"].items()}
        res["prune_phase_seconds"] = rep["seconds"]
        outs = _check_pruned(orig_outs, result.model, feeds, out_names, in_names, res, "")
        if outs is not None:
            res["pruned_rel_err"] = _rel_err(orig_outs, outs)
        pruned, pruned_outs = result.model, outs
        del result
    except Exception as exc:  # noqa: BLE001
        res["pruned_ok"] = False
        res["prune_error"] = _error(exc)
    res["prune_seconds"] = round(time.perf_counter() - t0, 2)
    save()

    if openvino:  # both models in OpenVINO, last: a crash there leaves the figures above saved
        res["openvino"] = {}
        openvino_compare(orig, model_path, orig_outs, pruned, pruned_outs, feeds, tmp, res["openvino"], save)
        save()


# -- driver -----------------------------------------------------------------------------------
def run_model(model_path: Path, meta: dict, timeout: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="eprune_cov_res_") as d:
        result_path = Path(d) / "result.json"
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(model_path), "--result", str(result_path)] + extra
        env = dict(os.environ, OMP_NUM_THREADS="2")
        t0 = time.perf_counter()
        timed_out = False
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 9)  # the worker and its inspect child only
            _, stderr = proc.communicate()
        res = json.loads(result_path.read_text()) if result_path.exists() else {}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        rc = proc.returncode
        ov = res.get("openvino") or {}
        if "running" in ov and (timed_out or rc not in (0, None)):
            # OpenVINO killed the worker (or took the time left) after the figures were saved: its failure
            which = ov.pop("running")
            ov[f"{which}_ok"] = False
            how = f"timeout after {timeout:.0f} s" if timed_out else f"worker exit {rc}"
            ov["error"] = " / ".join(filter(None, [ov.get("error"), f"{which}: {how} in OpenVINO"]))
            ov["stderr_tail"] = (stderr or "")[-1500:]
            timed_out, rc = False, 0
        res["timed_out"] = timed_out
        if timed_out:
            res["timeout_s"] = timeout
            progress = Path(str(result_path) + ".progress")
            if progress.exists():
                res["timeout_in"] = progress.read_text()
        if rc not in (0, None) and not timed_out:
            res["worker_exit"] = rc
            res["worker_stderr_tail"] = (stderr or "")[-1500:]
        return res


def _fmt_pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _verdict(r: dict) -> dict:
    crash = r.get("timed_out") or r.get("pruned_ok") is False or r.get("keep1_ok") is False \
        or "worker_exit" in r or "original_error" in r
    runnable = bool(r.get("runs") and r.get("same_io_names") and r.get("same_output_shapes") and r.get("finite", True))
    keep1_ok = r.get("keep1_max_rel_err") is not None and r["keep1_max_rel_err"] <= KEEP1_TOL
    reach = bool(r.get("pruned_ok") and r.get("valid") and runnable and (r.get("macs_removed") or 0) >= MAC_GOAL)
    return {"crash": bool(crash), "runnable": runnable, "keep1_within_tol": keep1_ok, "reaches_goal": reach}


def _note(r: dict) -> str:
    if not r.get("exported", True):
        return "export failed: " + r.get("export_error", "")
    if r.get("timed_out"):
        return f"timeout after {r.get('timeout_s'):.0f} s" + (f" ({r['timeout_in']})" if r.get("timeout_in") else "")
    parts = []
    if r.get("entropic_attempt"):
        e = r["entropic_attempt"]
        parts.append(f"entropic: timeout after {e.get('timeout_s') or 600:.0f} s" +
                     (f" ({e['timeout_in']})" if e.get("timeout_in") else ""))
    for key in ("original_error", "prune_error", "keep1_error"):
        if key in r:
            parts.append(f"{key.split('_')[0]}: {r[key]['type']}: {r[key]['message']}")
    if "worker_exit" in r:
        parts.append(f"worker exit {r['worker_exit']}")
    for key in ("check_error", "run_error", "keep1_check_error", "keep1_run_error"):
        if key in r:
            parts.append(f"{key}: {r[key]}")
    if r.get("runs") and not (r.get("same_io_names") and r.get("same_output_shapes")):
        parts.append("io names/shapes differ")
    if not parts and r.get("inspect_frozen_reasons") is not None and (r.get("macs_removed") or 0) < MAC_GOAL:
        reasons = r.get("frozen_reasons") or r["inspect_frozen_reasons"]
        parts.append("frozen: " + "; ".join(reasons[:2]) + (f" (+{len(reasons) - 2})" if len(reasons) > 2 else ""))
    return " / ".join(p.replace("|", "/") for p in parts)


def export_scripts(cache: Path, stems: list[str]) -> str:
    """The scripts that made the cache's models, from the sidecars' ``made_by`` (export_timm's
    sidecars predate that key), for the table's text."""
    scripts = {json.loads((cache / f"{s}.json").read_text()).get("made_by", "tools/export_timm.py") for s in stems}
    return ", ".join(f"`{s}`" for s in sorted(scripts)) or "`tools/export_timm.py`"


def markdown_path(out: Path) -> Path:
    """Where the table of ``out`` goes: the timm run keeps its ``COVERAGE.md``, other runs
    (another ``--out``) get their own file instead of overwriting it."""
    return out.with_name("COVERAGE.md") if out.name == "coverage_results.json" else out.with_suffix(".md")


def heading(path: Path) -> str | None:
    """The title of an existing Markdown table (its first line, ``# title``): a run of a few
    models (``--only``) keeps it unless ``--title`` is given."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[2:].strip() if first.startswith("# ") else None


def write_markdown(results: dict, path: Path, method: str = "entropic",
                   title: str = "Coverage of timm CNNs", source: str = "`tools/export_timm.py`") -> str:
    rows = sorted(results.values(), key=lambda r: (r.get("arch", ""), r.get("exporter", "")))
    exported = [r for r in rows if r.get("exported", True)]
    reach = sum(1 for r in exported if r["verdict"]["reaches_goal"])
    crash = sum(1 for r in exported if r["verdict"]["crash"])
    timeouts = sum(1 for r in exported if r.get("timed_out"))
    keep1 = sum(1 for r in exported if r["verdict"]["keep1_within_tol"])
    refusals = sum(1 for r in exported if not r.get("timed_out") and any(
        r.get(k, {}).get("type") == "EPruneError" for k in ("prune_error", "keep1_error")))
    invalid = sum(1 for r in exported if r.get("pruned_ok") and not (r.get("valid") and r["verdict"]["runnable"]))
    summary = (f"**{reach} of {len(exported)}** exported models reach >= {int(100 * MAC_GOAL)}% MAC reduction "
               f"(target {int(100 * FLOPS_TARGET)}%) with a valid, runnable output; **{crash}** crash "
               f"(exception or timeout: {refusals} with an EPruneError refusal, {timeouts} timeouts, "
               f"{crash - refusals - timeouts} with another exception); {invalid} pruned without exception but invalid or "
               f"not runnable; {keep1} of {len(exported)} reproduce the original at keep_ratio=1.0 "
               f"(max rel err <= {KEEP1_TOL:g}); {len(rows) - len(exported)} failed to export.")
    lines = [f"# {title}", "",
             f"Made by `tools/bench_coverage.py` on models from {source} (random weights, "
             f"32 random calibration samples, `flops_reduction=0.3`, method {method} unless the method column "
             "says otherwise, mode sequential, CPU).", "",
             summary, "",
             "onnx_eprune version(s): " + ", ".join(sorted({str(r.get("package")) for r in rows if r.get("package")}))
             + "; timings on a shared 2-core machine, one or two models at once (BENCHMARKS.md says which).", "",
             "| model | exporter | method | valid | runs | MACs removed | prunable MAC fraction | keep-1.0 max rel err | seconds | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    with_ov = [r for r in rows if "openvino" in r]
    if with_ov:  # the column and a paragraph only where a row was run with --openvino
        o = [r["openvino"] for r in with_ov]
        refused = sum(1 for x in o if x.get("original_ok") is False or x.get("pruned_ok") is False)
        agree = sum(1 for x in o if x.get("original_ok") and x.get("pruned_ok") and not openvino_differs(x))
        versions = ", ".join(sorted({str(x.get("version")).split("-")[0] for x in o}))
        lines[-2] = lines[-2].replace("| seconds |", "| OpenVINO | seconds |")
        lines[-1] += "---|"
        lines[-4:-4] = [f"OpenVINO {versions} (`--openvino`: CPU plugin, f32 inference, the same check inputs): "
                        f"**{agree} of {len(o)}** pruned models compile, run and agree with onnxruntime as closely "
                        f"as their original does (relative error <= max({OV_FACTOR:g} x the original's, "
                        f"{OV_FLOOR:g})); {refused} refused (original or pruned), "
                        f"{sum(1 for x in o if openvino_differs(x))} differ. A detector's outputs compare row by "
                        "row: detections with near-tie scores come in another order or with another label, in the "
                        "original as much.", ""]
    with_fused = [r for r in rows if "fused_ops" in r]
    if with_fused:  # --ort-optimized: the fused ops of each input, and whether both outputs hold the same
        kept = sum(1 for r in with_fused if r.get("pruned_fused_ops") == r["fused_ops"] == r.get("keep1_fused_ops"))
        lines[-2] = lines[-2].replace("| seconds |", "| fused ops | seconds |")
        lines[-1] += "---|"
        lines[-4:-4] = [f"Every export was first saved by onnxruntime's graph optimizer at its extended level "
                        f"(`--ort-optimized`); the fused ops column counts the `com.microsoft` ops it wrote "
                        f"(FusedConv, FusedGemm, QuickGelu, Gelu, ...): **{kept} of {len(with_fused)}** pruned "
                        "models (both runs) hold the fused ops their input held.", ""]
    for r in rows:
        def yn(v):
            return "-" if v is None else ("yes" if v else "**no**")
        k1 = r.get("keep1_max_rel_err")
        k1s = "-" if k1 is None else (f"{k1:.1e}" if k1 <= KEEP1_TOL else f"**{k1:.1e}**")
        runs = r["verdict"]["runnable"] if r.get("pruned_ok") else None
        note = _note(r)
        if (r.get("openvino") or {}).get("error"):
            note = " / ".join(filter(None, [note, "openvino: " + r["openvino"]["error"].replace("|", "/")]))
        lines.append(f"| {r.get('arch')} | {r.get('exporter')} | {r.get('method', 'entropic')} | {yn(r.get('valid'))} | "
                     f"{yn(runs)} | "
                     f"{_fmt_pct(r.get('macs_removed'))} | {_fmt_pct(r.get('prunable_mac_fraction'))} | {k1s} | "
                     f"{_openvino_cell(r) + ' | ' if with_ov else ''}{_fused_cell(r) + ' | ' if with_fused else ''}"
                     f"{r.get('seconds', '-')} | {note} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return summary


def _fused_cell(r: dict) -> str:
    """The fused ops of an --ort-optimized row's input, with the pruned outputs' where they differ."""
    if "fused_ops" not in r:
        return "-"
    cell = fused_text(r["fused_ops"]) or "none"
    for key, run in (("keep1_fused_ops", "keep-1.0"), ("pruned_fused_ops", "pruned")):
        if key in r and r[key] != r["fused_ops"]:
            cell += f"; **{run}: {fused_text(r[key]) or 'none'}**"
    return cell


def _as_done(pool, fn, items):
    futures = [pool.submit(fn, x) for x in items]
    for fut in as_completed(futures):
        yield fut.result()


def _usage_error(message: str) -> int:
    """One line on stderr and the usage-error status."""
    print(f"bench_coverage.py: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="coverage benchmark of onnx-eprune on exported timm CNNs")
    ap.add_argument("--cache", default="/work/timm_onnx")
    ap.add_argument("--out", default=str(Path(__file__).with_name("coverage_results.json")))
    ap.add_argument("--only", nargs="*", help="model file stems (e.g. resnet18 resnet18.dynamo)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once (default 1)")
    ap.add_argument("--method", default="entropic", choices=["entropic", "l1", "random"],
                    help="selection method of the MAC-reduction run (default entropic)")
    ap.add_argument("--check", action="store_true",
                    help="inspect every cached export (no pruning) and compare its prunable MAC share, prunable "
                         "groups and MAC total with its row in --out; exit 1 if any differs")
    ap.add_argument("--title", help="heading of the Markdown table (default: the heading it has, else "
                                    "'Coverage of timm CNNs')")
    ap.add_argument("--openvino", action="store_true",
                    help="also compile and run the original and the pruned model in OpenVINO (CPU, f32) and "
                         "compare with onnxruntime (needs: pip install openvino)")
    ap.add_argument("--ort-optimized", action="store_true",
                    help="run each export as onnxruntime's graph optimizer saves it (extended level: fused "
                         "com.microsoft ops such as FusedConv), and record the fused ops of the input and outputs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        path = Path(args.worker)
        worker(path, json.loads(path.with_suffix(".json").read_text()), Path(args.result), args.method,
               args.openvino, args.ort_optimized)
        return 0

    if args.openvino:  # before anything is written
        try:
            _load_openvino()
        except ImportError:
            return _usage_error("--openvino needs OpenVINO, which is not installed here: pip install openvino")
    extra = ["--method", args.method] + (["--openvino"] if args.openvino else []) \
        + (["--ort-optimized"] if args.ort_optimized else [])
    cache, out = Path(args.cache), Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and args.only else {}
    stems = sorted(p.name[:-5] for p in cache.glob("*.onnx"))
    failures_path = cache / "export_failures.json"
    failures = json.loads(failures_path.read_text()) if failures_path.exists() else {}
    if not stems and not failures:  # a mistyped --cache must not overwrite --out with empty results
        return _usage_error(f"--cache {cache}: no exported model (*.onnx) and no export_failures.json there; "
                            "run tools/export_timm.py (or another export tool) into it first")
    try:  # before the work: hours of results must not be lost to a missing folder
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _usage_error(f"--out {out}: cannot make its folder ({exc.strerror})")
    source = export_scripts(cache, stems)
    title = args.title or heading(markdown_path(out)) or "Coverage of timm CNNs"
    if args.only:  # in the order given
        stems = [s for s in dict.fromkeys(args.only) if s in stems]
    if args.check:
        return 1 if check_rows(cache, stems, json.loads(out.read_text()) if out.exists() else {},
                               args.ort_optimized) else 0
    for stem, f in failures.items():
        if (not args.only or stem in args.only) and stem not in stems:
            results[stem] = {"name": stem, "arch": f["arch"], "exporter": f["exporter"], "exported": False,
                             "export_error": f["error"]}
            results[stem]["verdict"] = {"crash": False, "runnable": False, "keep1_within_tol": False,
                                        "reaches_goal": False}
    def one(stem: str) -> tuple[str, dict]:
        meta = json.loads((cache / f"{stem}.json").read_text())
        r = run_model(cache / f"{stem}.onnx", meta, args.timeout, extra)
        r.update(name=stem, arch=meta["arch"], exporter=meta["exporter"], exported=True,
                 input_shape=meta["input_shape"], opset=meta.get("opset"), method=args.method)
        old = results.get(stem, {})
        for key in ("entropic_attempt",):  # kept from an earlier run with the other method
            if key in old:
                r[key] = old[key]
        if old.get("method", "entropic") == "entropic" and args.method != "entropic" and old.get("timed_out"):
            r["entropic_attempt"] = {k: old.get(k) for k in ("seconds", "timeout_s", "timeout_in", "keep1_max_rel_err")}
        r["verdict"] = _verdict(r)
        return stem, r

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for stem, r in pool.map(one, stems) if args.jobs <= 1 else _as_done(pool, one, stems):
            done += 1
            results[stem] = r
            print(f"[{done}/{len(stems)}] {stem}: {r['seconds']} s, MACs -{_fmt_pct(r.get('macs_removed'))}, "
                  f"valid {r.get('valid')}, keep1 {r.get('keep1_max_rel_err')}, {_note(r)[:160]}", flush=True)
            out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            write_markdown(results, markdown_path(out), args.method, title, source)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(write_markdown(results, markdown_path(out), args.method, title, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
