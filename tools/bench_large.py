"""A model above the 2 GB protobuf limit, pruned end to end through the command line.

    python tools/bench_large.py --workdir /tmp/large      # about 2.2 GB written there

Builds ``big.onnx`` + ``big.onnx.data``: Conv(3->64) -> Relu -> Conv(64->64) -> Relu ->
GlobalAveragePool -> Flatten -> Gemm(64 -> 8192) -> Softmax over the features -> two
Gemm(8192 -> 32768) -> Concat = ``y``, whose two wide weights hold 537M float32 values
(2.15 GB; each below the 2 GiB a single tensor can take). The convolutions
are prunable; the Softmax freezes the wide Gemm's input, so the pruned model stays above the
limit and must be written with external data. Prunes it with ``onnx-eprune prune
--keep-ratio 0.5`` and ``--keep-ratio 1.0``, then checks each output from its path (full
checker, onnxruntime run) and compares it with the original on fresh inputs. Prints wall
time and peak memory of each run: the child's own ``VmHWM`` (peak resident set, file pages
that onnxruntime maps included). Not ``ru_maxrss``: Linux carries it across ``exec``, so
it would report this script's own peak whenever the child's is lower.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

WIDE_IN, WIDE_OUT = 8192, 65536


def build(path: Path) -> None:
    """Write the model: the two wide weights go straight to the external data file (a
    ModelProto holding them could not be serialised)."""
    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".data")

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32) * scale), name)

    inits = [init("c1.w", (64, 3, 3, 3), 0.3), init("c1.b", (64,), 0.1), init("c2.w", (64, 64, 3, 3), 0.06),
             init("c2.b", (64,), 0.1), init("g1.w", (WIDE_IN, 64), 0.1), init("g1.b", (WIDE_IN,), 0.1)]
    half = WIDE_OUT // 2
    with open(data, "wb") as f:
        for name in ("g2a.w", "g2b.w"):
            offset = f.tell()
            for rows in range(0, half, 4096):  # 128 MiB at a time
                (rng.standard_normal((4096, WIDE_IN), dtype=np.float32) * 0.01).tofile(f)
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[half, WIDE_IN],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", offset), ("length", f.tell() - offset)):
                tensor.external_data.add(key=key, value=str(value))
            inits.append(tensor)
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "g1.w", "g1.b"], ["g1"], transB=1, name="gemm1"),
             helper.make_node("Softmax", ["g1"], ["sm"], axis=1, name="softmax"),
             helper.make_node("Gemm", ["sm", "g2a.w"], ["ya"], transB=1, name="gemm2a"),
             helper.make_node("Gemm", ["sm", "g2b.w"], ["yb"], transB=1, name="gemm2b"),
             helper.make_node("Concat", ["ya", "yb"], ["y"], axis=1, name="concat")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDE_OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def prune(src: Path, out: Path, calib: Path, keep: float) -> dict:
    cmd = [sys.executable, "-c", "import re, sys; from onnx_eprune.cli import main; code = main(sys.argv[1:]); "
           "print('PEAK', re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)",
           "prune", str(src), "-o", str(out), "--calib", str(calib), "--keep-ratio", str(keep), "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prune failed ({proc.returncode}): {proc.stderr.strip()}")
    peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK")))
    return {"seconds": seconds, "peak_rss_gib": peak / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/onnx-eprune-large"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / "big.onnx"
    if not src.exists():
        build(src)
    data_bytes = (args.workdir / "big.onnx.data").stat().st_size
    rng = np.random.default_rng(1)
    calib, fresh = args.workdir / "calib.npy", rng.standard_normal((8, 3, 16, 16), dtype=np.float32)
    np.save(calib, rng.standard_normal((64, 3, 16, 16), dtype=np.float32))
    ref = run(src, fresh)
    rows = {"input_bytes": src.stat().st_size + data_bytes}
    for keep in (1.0, 0.5):
        out = args.workdir / f"pruned_{keep:g}" / "big.pruned.onnx"
        out.parent.mkdir(exist_ok=True)
        row = prune(src, out, calib, keep)
        onnx.checker.check_model(str(out), full_check=True)
        got = run(out, fresh)
        row["output_files"] = sorted(p.name for p in out.parent.iterdir())
        row["output_bytes"] = sum(p.stat().st_size for p in out.parent.iterdir())
        row["max_rel_err"] = float(np.abs(got - ref).max() / np.abs(ref).max())
        rows[f"keep_{keep:g}"] = row
        print(f"keep-ratio {keep:g}: {row['seconds']:.1f} s, peak {row['peak_rss_gib']:.2f} GiB, output "
              f"{row['output_bytes'] / 1e9:.2f} GB in {row['output_files']}, max rel err vs original "
              f"{row['max_rel_err']:.2e}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
