"""The benchmark and helper scripts under ``tools/``, used the way a reader of BENCHMARKS.md would.

What this file attacks (the tables that ``bench_quality.py`` prints from the committed
``bench/*.json`` and the command lines the docs quote are checked by
``test_benchmark_tables.py`` and ``test_quoted_commands.py``, not here):

* ``--help`` of every tool, with torch (and torchvision, timm, torch-pruning) made
  unimportable: the tools that need them must say what to install in one line instead of
  dying with an ImportError traceback; those that do not must not need them;
* tiny real runs (LeNet-5 from ``../shared/reference``, one target, one or two methods) of
  ``bench_quality.py``, ``bench_speed.py``, ``bench_runtimes.py`` (onnxruntime only),
  ``tune_entropic.py``, ``layer_objective.py``,
  ``same_as_fixed_ridge.py``, ``bench_coverage.py`` (a tiny model of ``tests/models.py``)
  and ``plot_quality.py`` (the docs' command, into ``tmp_path``): the JSON
  they write carries the documented fields and its figures match an independent
  recomputation (per-image correctness, accuracy on the test split, McNemar p, parameter and
  MAC counts of the files, latency arithmetic);
* bad input to the tools: refused targets and modes, missing or damaged result files, a
  mistyped cache folder, a group id that does not exist, an output folder that is missing,
  a child run that fails; and "nothing is lost": a failed run leaves existing results as
  they were.

Every tool runs in this process (``runpy``, as ``python tools/X.py ARGS`` would, with
``sys.argv`` set); an exception other than ``SystemExit`` that escapes is what a user would
see as a traceback. torch is never imported: a finder at the head of ``sys.meta_path``
makes it (and the other blocked packages) unimportable for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import io
import json
import os
import re
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_eprune
from onnx_eprune.datasets import fashion_mnist_available, load_fashion_mnist, preprocess

from models import conv_bn_relu_pool_flatten_gemm, conv_gemm_costs
import tool_modules

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
BENCH = ROOT / "bench"
REFERENCE = ROOT.parent / "shared" / "reference"
LENET = REFERENCE / "lenet5.onnx"
CALIB28 = REFERENCE / "calib28.npy"

TORCH_STACK = ("torch", "torchvision", "timm", "torch_pruning")

needs_reference = pytest.mark.skipif(not (LENET.exists() and CALIB28.exists()),
                                     reason="../shared/reference (LeNet-5 and calib28.npy) is not there")
needs_dataset = pytest.mark.skipif(not fashion_mnist_available(),
                                   reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")


@dataclass
class Ran:
    code: int | str | None      # the exit status (0 when the script returned normally)
    out: str
    err: str
    exc: BaseException | None   # an exception other than SystemExit: a traceback for the user

    @property
    def message(self) -> str:
        """What the user sees on stderr (a SystemExit("text") prints its text)."""
        return self.err + (self.code if isinstance(self.code, str) else "")


class _Unimportable(importlib.abc.MetaPathFinder):
    """Makes ``import NAME`` (and its submodules) fail as for a package that is not installed."""

    def __init__(self, names: tuple[str, ...]):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def run_tool(name: str, *argv, block: tuple[str, ...] = ()) -> Ran:
    """``python tools/NAME.py ARGV`` in this process: stdout and stderr captured, the packages
    in ``block`` made unimportable (as if not installed), ``sys.argv``, ``sys.path`` and the
    blocked packages' modules restored afterwards."""
    path = TOOLS / f"{name}.py"
    saved_argv, saved_path = sys.argv, list(sys.path)
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in block}
    finder = _Unimportable(block)
    out, err = io.StringIO(), io.StringIO()
    code, exc = 0, None
    try:
        if block:
            sys.meta_path.insert(0, finder)
        sys.argv = [str(path), *map(str, argv)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as e:
                code = 0 if e.code is None else e.code
            except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
                exc, code = e, 1
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] in block]:
            del sys.modules[k]
        sys.modules.update(hidden)
    return Ran(code, out.getvalue(), err.getvalue(), exc)


def load_tool(name: str):
    """tools/NAME.py as a module of its own (for patching one of its functions)."""
    return tool_modules.load_tool(name, f"_tools_smoke_{name}")


def correct_bits(row: dict) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(row["correct"]), np.uint8))
    return bits[:row["test_images"]].astype(bool)


def card_accuracy(name: str) -> float:
    return json.loads((REFERENCE / f"{name}.json").read_text())["test_acc"]


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def lenet_logits(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def fmnist_test():
    x, y = load_fashion_mnist("test")
    return preprocess(x, 28), y


# -- 1. --help without torch ------------------------------------------------------------------

HELP_WITHOUT_TORCH = ["bench_quality", "bench_search", "bench_speed", "bench_large", "bench_coverage", "bench_runtimes",
                      "plot_quality",
                      "keepset_landscape", "layer_objective", "mixed_selection", "allocation_swap",
                      "same_as_fixed_ridge", "export_timm", "export_torchvision", "export_thirdparty",
                      "export_idioms", "train_reference"]


@pytest.mark.parametrize("tool", HELP_WITHOUT_TORCH)
def test_help_works_without_torch(tool):
    """``python tools/X.py --help`` prints the usage and exits 0 with no torch installed (the
    export and training tools import torch only once they run)."""
    ran = run_tool(tool, "--help", block=TORCH_STACK)
    assert ran.exc is None, f"{tool} --help: {ran.exc!r}"
    assert ran.code == 0, ran.message
    assert ran.out.startswith("usage:") and f"{tool}.py" in ran.out.splitlines()[0]


def test_tune_entropic_help_prints_usage():
    """``tools/tune_entropic.py --help`` prints how to call it (``MODEL LEVELS [VARIANT ...]``)
    and exits 0; a call without arguments prints the usage and exits 2 (it used to read
    ``argv[1]`` blindly, an IndexError traceback)."""
    ran = run_tool("tune_entropic", "--help")
    assert ran.exc is None, repr(ran.exc)
    assert ran.code == 0 and "usage" in (ran.out + ran.message).lower()
    bare = run_tool("tune_entropic")
    assert bare.exc is None, repr(bare.exc)
    assert bare.code == 2 and "usage" in bare.message.lower()


def test_bench_torch_pruning_says_what_to_install():
    """Without torch / torch-pruning, ``tools/bench_torch_pruning.py --help`` exits non-zero
    with one line that says ``pip install torch==2.13.0 torch-pruning`` (its modules subclass
    ``nn.Module``, so torch is needed before argparse runs), not a ModuleNotFoundError traceback."""
    ran = run_tool("bench_torch_pruning", "--help", block=TORCH_STACK)
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None)
    assert "pip install" in ran.message and "torch-pruning" in ran.message
    assert len(ran.message.strip().splitlines()) == 1


def test_train_reference_without_torch_says_what_to_install(tmp_path):
    """``tools/train_reference.py --out DIR`` without torch exits non-zero with one line naming
    what to install (``pip install torch``), before making DIR; no ImportError traceback."""
    ran = run_tool("train_reference", "--epochs", "1", "--out", tmp_path / "models", block=TORCH_STACK)
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None)
    assert "torch" in ran.message and "install" in ran.message
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("tool, needs", [("export_timm", "timm"), ("export_torchvision", "torch"),
                                         ("export_idioms", "torch")])
def test_export_tools_without_their_framework_say_what_to_install(tmp_path, tool, needs):
    """Run outside their torch venv, the export tools exit non-zero with one line naming what
    is missing, the venv to use and what to install, as ``export_thirdparty.py`` does; the
    framework is imported before the cache folder is made (it used to be a traceback after it)."""
    ran = run_tool(tool, "--cache", tmp_path / "cache", block=TORCH_STACK)
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None)
    assert needs in ran.message and ("install" in ran.message or "venv" in ran.message)
    assert len(ran.message.strip().splitlines()) == 1


def test_export_thirdparty_without_a_framework_names_the_venvs(tmp_path):
    """Without PaddlePaddle or TensorFlow, ``export_thirdparty.py`` exits 1 with one line that
    names both frameworks and the venvs to run it in; nothing is exported or recorded."""
    if importlib.util.find_spec("paddle") or importlib.util.find_spec("tensorflow"):
        pytest.skip("PaddlePaddle or TensorFlow is installed here")
    ran = run_tool("export_thirdparty", "--cache", tmp_path / "cache")
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None)
    msg = ran.message.strip()
    assert len(msg.splitlines()) == 1 and "paddle" in msg and "tensorflow" in msg and "venv" in msg
    assert not (tmp_path / "cache" / "export_failures.json").exists()


def test_export_each_leaves_no_partial_file_and_records_the_failure(tmp_path):
    """``export_jobs.export_each`` (the loop of all three export tools): an export that
    raises leaves none of its files behind and is recorded with its error line; a stem
    whose two files exist is skipped; a later success clears the record."""
    sys.path.insert(0, str(TOOLS))
    try:
        from export_jobs import ExportJob, export_each, load_failures
    finally:
        sys.path.remove(str(TOOLS))

    def failing():
        (tmp_path / "bad.onnx").write_bytes(b"half")
        (tmp_path / "bad.onnx.data").write_bytes(b"half")
        raise RuntimeError("exporter refused op Foo\nsecond line")

    def ok(stem):
        def export():
            (tmp_path / f"{stem}.onnx").write_bytes(b"model")
            (tmp_path / f"{stem}.json").write_text("{}")
            return {"export_seconds": 0.1, "opset": 17, "input_shape": [1, 3, 8, 8]}
        return export

    (tmp_path / "done.onnx").write_bytes(b"old")
    (tmp_path / "done.json").write_text("{}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        export_each(tmp_path, [ExportJob("bad", "bad_arch", "torchscript", failing),
                               ExportJob("done", "done_arch", "torchscript", ok("done"))], False, {})
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnx.data").exists()
    assert (tmp_path / "done.onnx").read_bytes() == b"old"  # skipped, not re-exported
    failures = load_failures(tmp_path)
    assert failures["bad"]["error"] == "RuntimeError: exporter refused op Foo"
    assert failures["bad"]["arch"] == "bad_arch" and "Traceback" in failures["bad"]["traceback"]
    assert "bad: FAILED RuntimeError: exporter refused op Foo" in out.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        export_each(tmp_path, [ExportJob("bad", "bad_arch", "torchscript", ok("bad"))], False, failures)
    assert load_failures(tmp_path) == {}


# -- 2. bench_quality.py: a tiny real run -------------------------------------------------------

@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    """``bench_quality.py --models lenet5 --sparsity 0.55 --methods entropic l1 --samples 256
    --out OUT``: (the run, the JSON file)."""
    if not (LENET.exists() and fashion_mnist_available()):
        pytest.skip("needs ../shared/reference and Fashion-MNIST")
    out = tmp_path_factory.mktemp("quality") / "quality_tiny.json"
    ran = run_tool("bench_quality", "--models", "lenet5", "--sparsity", "0.55", "--methods", "entropic", "l1",
                   "--samples", "256", "--out", out)
    assert ran.exc is None and ran.code == 0, (ran.exc, ran.message)
    return ran, out


def test_bench_quality_tiny_run_writes_the_documented_fields(quality_run, fmnist_test):
    """Each run is one JSON row with the fields the report modes and plot_quality read; its
    figures agree with themselves and with an independent recomputation: accuracy is the mean
    of the per-image record, the drop is against the model card, the original's accuracy on
    the test split (onnxruntime here) is the card's, the sparsity lands within a point."""
    _ran, out = quality_run
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "runs"}
    rows = doc["runs"]
    assert [(r["method"], r["mode"], r["target_kind"], r["target"]) for r in rows] == \
        [("entropic", "sequential", "sparsity", 0.55), ("l1", "sequential", "sparsity", 0.55)]
    x, y = fmnist_test
    original = float(np.mean(lenet_logits(LENET, x).argmax(1) == y))
    for r in rows:
        for key in ("model", "reconstruct", "calib_draw", "seed", "round_to", "samples", "accuracy",
                    "accuracy_original", "drop_points", "params_removed", "macs_removed", "channels", "seconds",
                    "phase_seconds", "test_agreement", "test_relative_error", "test_images", "correct",
                    "refit_ridge"):
            assert key in r, key
        assert r["model"] == "lenet5" and r["reconstruct"] is True and r["samples"] == 256
        assert (r["calib_draw"], r["seed"]) == (0, 0)
        assert r["test_images"] == len(y) == 10000
        assert r["accuracy"] == pytest.approx(correct_bits(r).mean(), abs=1e-12)
        assert r["accuracy_original"] == card_accuracy("lenet5") == pytest.approx(original, abs=1e-12)
        assert r["drop_points"] == pytest.approx(100 * (r["accuracy_original"] - r["accuracy"]), abs=1e-9)
        assert abs(r["params_removed"] - 0.55) <= 0.01
        assert 0 < r["test_agreement"] <= 1 and r["test_relative_error"] > 0


def test_bench_quality_row_matches_an_independent_prune(quality_run, fmnist_test):
    """The l1 row's per-image correctness, channels, parameters and MACs removed are those of
    the same prune made through the API and measured here (onnxruntime on the test split,
    costs counted on the file with ONNX shape inference)."""
    _ran, out = quality_run
    row = next(r for r in json.loads(out.read_text())["runs"] if r["method"] == "l1")
    result = onnx_eprune.prune(str(LENET), str(CALIB28), method="l1", sparsity=0.55, samples=256, seed=0,
                               device="cpu")
    x, y = fmnist_test
    correct = lenet_logits(result.model, x).argmax(1) == y
    assert np.array_equal(correct, correct_bits(row))
    assert row["channels"] == [g["channels_after"] for g in result.report["groups"] if not g["frozen"]]
    (p0, m0), (p1, m1) = conv_gemm_costs(onnx.load(str(LENET))), conv_gemm_costs(result.model)
    assert row["params_removed"] == pytest.approx(1 - p1 / p0, abs=1e-6)
    assert row["macs_removed"] == pytest.approx(1 - m1 / m0, abs=1e-6)


def test_bench_quality_prints_one_line_per_run_matching_the_json(quality_run):
    """"Prints one line per run": the accuracy, drop, parameters and MACs removed and the
    channels of each printed line are those of its JSON row."""
    ran, out = quality_run
    rows = json.loads(out.read_text())["runs"]
    lines = [line for line in ran.out.splitlines() if line.startswith("lenet5 draw 0 seed 0 sparsity=0.55")]
    assert len(lines) == len(rows) == 2
    for line, r in zip(lines, rows):
        m = re.search(r" (\w+) sequential: acc ([\d.]+)% drop ([+-][\d.]+) params -([\d.]+) MACs -([\d.]+) "
                      r"[\d.]+s (\[.*\])$", line)
        assert m, line
        assert m.group(1) == r["method"]
        assert float(m.group(2)) == pytest.approx(100 * r["accuracy"], abs=0.005)
        assert float(m.group(3)) == pytest.approx(r["drop_points"], abs=0.005)
        assert float(m.group(4)) == pytest.approx(r["params_removed"], abs=0.0005)
        assert float(m.group(5)) == pytest.approx(r["macs_removed"], abs=0.0005)
        assert json.loads(m.group(6)) == r["channels"]


def test_bench_quality_pivot_and_head_to_head_recomputed(quality_run):
    """``--pivot`` and ``--head-to-head`` on the tiny run's file: the drops (best in bold),
    entropic's MACs removed and the exact McNemar p against the best other method, and the
    ahead / behind counts and test images kept more, all recomputed here from the rows'
    per-image records."""
    _ran, out = quality_run
    rows = {r["method"]: r for r in json.loads(out.read_text())["runs"]}
    ent, l1 = rows["entropic"], rows["l1"]
    piv = run_tool("bench_quality", "--out", out, "--pivot")
    assert piv.exc is None and piv.code == 0
    line = next(li for li in piv.out.splitlines() if li.startswith("| lenet5 | sparsity 0.55 | sequential |"))
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    drops = {"entropic": round(ent["drop_points"], 2), "l1": round(l1["drop_points"], 2)}
    best = min(drops.values())
    expect = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in drops.values()]
    assert cells[3:5] == expect
    assert cells[5] == f"{ent['macs_removed']:.3f}"
    assert cells[6] == f"{mcnemar(correct_bits(ent), correct_bits(l1)):.2f} (l1)"
    h2h = run_tool("bench_quality", "--out", out, "--head-to-head")
    assert h2h.exc is None and h2h.code == 0
    line = next(li for li in h2h.out.splitlines() if li.startswith("| l1 |"))
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    diff = int(correct_bits(ent).sum()) - int(correct_bits(l1).sum())
    significant = mcnemar(correct_bits(ent), correct_bits(l1)) < 0.05
    assert cells[1:5] == ["1", str(int(diff > 0)), str(int(diff == 0)), str(int(diff < 0))]
    assert cells[5:7] == [str(int(significant and diff > 0)), str(int(significant and diff < 0))]
    assert cells[7] == f"{diff:+d}"


def test_bench_quality_appends_and_a_refused_run_leaves_the_file(quality_run, tmp_path):
    """Runs are appended to an existing ``--out`` (earlier rows kept as they were); an
    invocation whose every run is refused leaves the file byte for byte."""
    _ran, out = quality_run
    mine = tmp_path / "q.json"
    mine.write_bytes(out.read_bytes())
    before = json.loads(mine.read_text())["runs"]
    ran = run_tool("bench_quality", "--models", "lenet5", "--sparsity", "0.3", "--methods", "random",
                   "--samples", "128", "--out", mine)
    assert ran.exc is None and ran.code == 0, ran.message
    after = json.loads(mine.read_text())["runs"]
    assert after[:2] == before and len(after) == 3
    assert (after[2]["method"], after[2]["target"], after[2]["samples"]) == ("random", 0.3, 128)
    saved = mine.read_bytes()
    run_tool("bench_quality", "--models", "lenet5", "--sparsity", "1.5", "--methods", "l1", "--out", mine)
    assert mine.read_bytes() == saved
    assert not list(tmp_path.glob("*.tmp"))


@needs_reference
@needs_dataset
@pytest.mark.parametrize("args", [["--sparsity", "0.5", "--modes", "sequentail"], ["--sparsity", "1.5"]],
                         ids=["misspelt-mode", "sparsity-1.5"])
def test_bench_quality_refuses_bad_runs_as_usage_errors(tmp_path, args):
    """A mode that does not exist (``--modes`` has the choices of ``onnx_eprune.config.MODES``)
    or a target out of range is a usage error: exit 2 with one line naming it, before any
    work, nothing written (every run used to fail inside the loop, printed, with exit 0)."""
    out = tmp_path / "q.json"
    ran = run_tool("bench_quality", "--models", "lenet5", "--methods", "l1", "--samples", "64", "--out", out, *args)
    assert ran.exc is None, repr(ran.exc)
    assert ran.code == 2, f"exit {ran.code}: {ran.out.strip()}"
    assert not out.exists()


def _bad_results(tmp_path: Path, which: str) -> list:
    good = BENCH / "quality_lenet5.json"
    if which == "missing --out":
        return ["--out", tmp_path / "quality_lenet55.json", "--pivot"]
    if which == "missing --with":
        return ["--out", good, "--with", tmp_path / "quality_seq_vgg61.json", "--pivot"]
    damaged = tmp_path / "cut.json"
    damaged.write_text(good.read_text()[:5000])
    return ["--out", damaged, "--pivot"]


@pytest.mark.parametrize("which", ["missing --out", "missing --with", "damaged --out"])
def test_bench_quality_report_modes_refuse_missing_or_damaged_files(tmp_path, which):
    """A results file named with ``--out`` / ``--with`` that does not exist (a typo) or is not
    whole JSON is refused with exit 2 and one line naming it (a missing file used to be
    skipped silently, a damaged one a JSONDecodeError traceback)."""
    ran = run_tool("bench_quality", *_bad_results(tmp_path, which))
    assert ran.exc is None, repr(ran.exc)
    assert ran.code == 2, ran.out[:300]
    assert len(ran.message.strip().splitlines()) == 1


def test_bench_quality_prints_every_table_asked_for(tmp_path):
    """``--pivot --head-to-head`` (and ``--bar``, ``--markdown``) without targets print each
    table asked for, in the order they are printed after a run (an ``if / elif`` used to
    print only the first)."""
    ran = run_tool("bench_quality", "--out", BENCH / "quality_lenet5.json", "--pivot", "--head-to-head")
    assert ran.exc is None and ran.code == 0
    assert "| entropic against |" in ran.out
    assert "| model | target | mode |" in ran.out


@needs_reference
@needs_dataset
def test_bench_search_tiny_run(tmp_path):
    """``tools/bench_search.py --models lenet5 --splits train --validation 500 --resolution
    0.25``: one row, searched on 500 train images that are not calibration images, the model
    found measured on the full test split, and the table row printed; ``--markdown`` prints
    the row again without running."""
    out = tmp_path / "search.json"
    ran = run_tool("bench_search", "--models", "lenet5", "--splits", "train", "--validation", "500",
                   "--resolution", "0.25", "--out", out)
    assert ran.code == 0 and ran.exc is None, ran.message
    (row,) = json.loads(out.read_text())
    assert (row["model"], row["split"], row["held_out"]) == ("lenet5", "train", 500)
    assert row["best"] is not None and row["test_original"] == pytest.approx(card_accuracy("lenet5"), abs=1e-4)
    chosen = next(t for t in row["tried"] if t["target"] == row["best"])
    assert chosen["within"] and 100 * (chosen["accuracy"]["original"] - chosen["accuracy"]["pruned"]) <= 0.5
    assert {t["target"] for t in row["tried"]} <= {0.25, 0.5, 0.75}
    tool = load_tool("bench_search")
    calib = np.load(CALIB28)
    x, _ = tool.validation_set(calib, 28, 500)
    calibrated = {c.tobytes() for c in calib}
    assert not any(image.tobytes() in calibrated for image in x)
    again = run_tool("bench_search", "--out", out, "--markdown")
    assert again.code == 0 and ran.out.splitlines()[-1] == again.out.splitlines()[-1]


# -- 3. bench_speed.py ---------------------------------------------------------------------------

@needs_reference
def test_bench_speed_latency_tiny_run(tmp_path):
    """``bench_speed.py latency --models lenet5 --repeats 3 --out OUT``: one row per batch (1,
    32) and thread count (1, all), the documented fields, the arithmetic of the latency
    removed and of the ratio, the MAC reduction within a point of the target."""
    out = tmp_path / "sub" / "speed.json"
    ran = run_tool("bench_speed", "latency", "--models", "lenet5", "--flops", "0.5", "--repeats", "3", "--out", out)
    assert ran.exc is None and ran.code == 0, ran.message
    doc = json.loads(out.read_text())
    assert doc["cpus"] == os.cpu_count() and doc["machine"]
    rows = doc["rows"]
    assert sorted((r["batch"], r["threads"]) for r in rows) == sorted(
        (b, t) for b in (1, 32) for t in (1, os.cpu_count() or 1))
    for r in rows:
        assert (r["model"], r["variant"], r["flops_target"]) == ("lenet5", "pruned", 0.5)
        assert abs(r["macs_removed"] - 0.5) <= 0.01
        assert r["latency_removed"] == pytest.approx(1 - r["ms_pruned"] / r["ms_original"])
        assert r["ratio"] == pytest.approx(r["latency_removed"] / r["macs_removed"])
        assert r["ms_original"] > 0 and r["ms_pruned"] > 0 and r["channels"]
    assert len([li for li in ran.out.splitlines() if li.startswith("lenet5 pruned batch")]) == len(rows)


@needs_reference
def test_bench_speed_latency_line_when_the_pruned_model_is_slower(tmp_path, monkeypatch):
    """When the pruned model runs slower than the original (machine noise on a small model
    does it), the printed line gives the latency change with one sign, ``latency +0.200``
    and ``ratio -0.40``, not ``latency --0.200``."""
    tool = load_tool("bench_speed")
    monkeypatch.setattr(tool, "_timings", lambda models, x, threads, repeats: {
        name: (1.0 if name == "original" else 1.2) for name in models})
    monkeypatch.setattr(sys, "argv", ["bench_speed.py", "latency", "--models", "lenet5", "--repeats", "1"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert tool.main() == 0
    lines = [li for li in buf.getvalue().splitlines() if li.startswith("lenet5 pruned")]
    assert lines and all("--" not in li and "latency +0.200" in li for li in lines), lines[0]


@pytest.fixture(scope="module")
def speed_samples_run(tmp_path_factory):
    """``bench_speed.py samples --model lenet5 --samples 64 --out OUT`` from a process that
    has held 800 MiB (as a notebook or a driver script may): the JSON row."""
    if not (LENET.exists() and fashion_mnist_available()):
        pytest.skip("needs ../shared/reference and Fashion-MNIST")
    out = tmp_path_factory.mktemp("speed") / "samples.json"
    ballast = np.ones(100 * 2**20, dtype=np.float64)  # 800 MiB, every page touched
    try:
        ran = run_tool("bench_speed", "samples", "--model", "lenet5", "--samples", "64", "--out", out)
    finally:
        del ballast
    assert ran.exc is None and ran.code == 0, (ran.exc, ran.message)
    return ran, json.loads(out.read_text())


def test_bench_speed_samples_tiny_run(speed_samples_run):
    """The ``samples`` row: model, samples, seconds (the phases' total within it), the
    parameters and MACs of the unpruned model (counted here on the file), a peak memory."""
    ran, doc = speed_samples_run
    assert doc["cpus"] == os.cpu_count()
    (row,) = doc["rows"]
    assert (row["model"], row["samples"]) == ("lenet5", 64)
    assert (row["params"], row["macs"]) == conv_gemm_costs(onnx.load(str(LENET)))
    assert 0 < row["phase_seconds"]["total"] <= row["seconds"]
    assert row["peak_rss_mib"] > 0
    assert f"lenet5 64 samples: {row['seconds']:.1f} s, peak {row['peak_rss_mib']:.0f} MiB" in ran.out


def test_bench_speed_peak_memory_is_the_child_s_own(speed_samples_run):
    """``peak_rss_mib`` is the pruning child's own peak resident memory (its ``VmHWM``; LeNet-5
    on 64 images: about 200 MiB), not the 800 MiB its parent had reached (``ru_maxrss``,
    which Linux carries across ``exec``, used to report that)."""
    _ran, doc = speed_samples_run
    assert doc["rows"][0]["peak_rss_mib"] < 600


@needs_reference
@needs_dataset
def test_bench_speed_child_failure_is_reported(tmp_path):
    """When the pruning child fails (here ``--samples 0``: no calibration image), the tool exits
    non-zero with one line that carries the child's own error (not a CalledProcessError
    traceback without it) and writes no ``--out``."""
    out = tmp_path / "samples.json"
    ran = run_tool("bench_speed", "samples", "--model", "lenet5", "--samples", "0", "--out", out)
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None) and "sample" in ran.message
    assert not out.exists()


# -- 4. the other experiment tools, tiny runs -------------------------------------------------------

def _table_row(model: str, kind: str, target: float, mode: str, method: str) -> dict:
    rows = [r for r in json.loads((BENCH / "quality_lenet5.json").read_text())["runs"]
            if (r["model"], r["target_kind"], r["target"], r["mode"], r["method"], r["reconstruct"])
            == (model, kind, target, mode, method, True) and r.get("calib_draw", 0) == 0 and r.get("seed", 0) == 0]
    return rows[-1]


@needs_reference
@needs_dataset
def test_tune_entropic_default_variant_matches_the_table():
    """``tune_entropic.py lenet5 0.55 ""`` prints the default's drop, which is the LeNet-5
    table's entropic sequential 0.55 row (reference calibration file, seed 0; BENCHMARKS.md:
    the default re-fit ridge gives the table's bytes there)."""
    ran = run_tool("tune_entropic", "lenet5", "0.55", "")
    assert ran.exc is None and ran.code == 0, ran.message
    m = re.search(r"^default\s+drops \[([-\d.]+)\] seconds \[[\d.]+\]$", ran.out, re.M)
    assert m, ran.out
    assert float(m.group(1)) == round(_table_row("lenet5", "sparsity", 0.55, "sequential", "entropic")
                                      ["drop_points"], 2)


@needs_reference
def test_layer_objective_best_of_all_is_no_worse_than_any_method():
    """``layer_objective.py lenet5 --keep 1:3``: every method's keep-set of conv1 and the
    best of all C(6, 3) sets, each with its relative error; the best of all is the lowest."""
    ran = run_tool("layer_objective", "lenet5", "--keep", "1:3")
    assert ran.exc is None and ran.code == 0, ran.message
    assert "group 1: keep 3 of 6" in ran.out
    found = {m.group(1).strip(): (json.loads(m.group(2)), float(m.group(3))) for m in re.finditer(
        r"^  (.+?)\s+(\[[\d, ]+\])\s+relative error ([\d.]+)$", ran.out, re.M)}
    assert set(found) == {"entropic", "lasso", "thinet", "l1", "best of all"}
    assert all(len(kept) == 3 and len(set(kept)) == 3 for kept, _ in found.values())
    assert found["best of all"][1] <= min(err for _, err in found.values())


@needs_reference
def test_mixed_selection_refuses_a_group_that_does_not_exist():
    """``--swap 99`` on LeNet-5 (prunable groups 1-4) is refused before any pruning with exit 2
    and one line naming the id (it used to run plain entropic labelled "l1 on groups 99")."""
    ran = run_tool("mixed_selection", "lenet5", "--sparsity", "0.73", "--swap", "99", "--method", "l1",
                   "--on", "calibration")
    assert ran.exc is None, repr(ran.exc)
    assert ran.code == 2 and "99" in ran.message, ran.out[:200]


@needs_reference
def test_same_as_fixed_ridge_finds_lenet5_the_same():
    """On LeNet-5 with the reference calibration file, ``auto-thin`` and ``--refit-ridge 0.01``
    give the same network (BENCHMARKS.md: every LeNet-5 row gives the same bytes), so the
    tool prints ``same`` and exits 0: the models are compared without the ``onnx_eprune``
    provenance entry, which records the ridge asked for (comparing it said DIFFERENT)."""
    ran = run_tool("same_as_fixed_ridge", LENET, CALIB28, "--sparsity", "0.5")
    assert ran.exc is None, repr(ran.exc)
    assert "sequential sparsity 0.5: same" in ran.out, ran.out
    assert ran.code == 0


def test_same_as_fixed_ridge_without_levels_is_a_usage_error():
    """Without ``--sparsity`` or ``--flops`` the tool exits 2 with its one-line reason."""
    ran = run_tool("same_as_fixed_ridge", LENET, CALIB28)
    assert ran.exc is None and ran.code == 2
    assert "give --sparsity and/or --flops levels" in ran.message


# -- 5. plot_quality.py -------------------------------------------------------------------------------

def test_plot_quality_docs_command_into_tmp_path(tmp_path):
    """The docs' command (``plot_quality.py bench/quality_lenet5.json bench/quality_seq_*.json
    bench/quality_oneshot_*.json bench/quality_flops_levels.json --out-dir DIR``) writes one
    PNG per model, the three BENCHMARKS.md shows, and says so; an out-dir that does not exist
    yet is made."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    inputs = [BENCH / "quality_lenet5.json", *sorted(BENCH.glob("quality_seq_*.json")),
              *sorted(BENCH.glob("quality_oneshot_*.json")), BENCH / "quality_flops_levels.json"]
    out = tmp_path / "plots"
    ran = run_tool("plot_quality", *inputs, "--out-dir", out)
    assert ran.exc is None and ran.code == 0, ran.message
    names = ["quality_lenet5.png", "quality_resnet18.png", "quality_vgg16.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert ran.out.splitlines() == [f"wrote {out / n}" for n in names]
    for n in names:
        with Image.open(out / n) as im:
            assert im.format == "PNG" and im.size[0] > 600


def test_plot_quality_without_matplotlib_says_what_to_install(tmp_path):
    """Without matplotlib the tool exits non-zero with one line naming what to install
    (``pip install 'onnx-eprune[plots]'``), not an ImportError traceback."""
    ran = run_tool("plot_quality", BENCH / "quality_lenet5.json", "--out-dir", tmp_path,
                   block=("matplotlib",))
    assert ran.exc is None, repr(ran.exc)
    assert ran.code not in (0, None)
    assert "pip install" in ran.message and "plots" in ran.message


# -- 6. bench_coverage.py -------------------------------------------------------------------------------

def _coverage_cache(folder: Path, model: bool = True, failure: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model:
        m = conv_bn_relu_pool_flatten_gemm()
        onnx.save(m, str(folder / "tiny.onnx"))
        (folder / "tiny.json").write_text(json.dumps({"name": "tiny", "arch": "tiny_cnn", "exporter": "onnx.helper",
                                                      "input_name": "x", "input_shape": [1, 3, 16, 16],
                                                      "opset": 17}))
    if failure:
        (folder / "export_failures.json").write_text(json.dumps(
            {"broken": {"arch": "broken_net", "exporter": "torchscript", "error": "RuntimeError: no"}}))
    return folder


def test_bench_coverage_tiny_run(tmp_path):
    """A cache with one tiny exported CNN: the result JSON records it as exported, valid and
    runnable, reproducing the original at keep_ratio 1.0, with its MACs removed and verdict;
    the Markdown beside it (``--out`` with ``.md``) counts it and lists it."""
    cache = _coverage_cache(tmp_path / "cache")
    out = tmp_path / "cov.json"
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--timeout", "300")
    assert ran.exc is None and ran.code == 0, ran.message
    r = json.loads(out.read_text())["tiny"]
    assert (r["name"], r["arch"], r["exporter"], r["exported"]) == ("tiny", "tiny_cnn", "onnx.helper", True)
    assert r["valid"] and r["runs"] and r["same_io_names"] and r["same_output_shapes"] and r["finite"]
    assert r["keep1_max_rel_err"] <= 1e-4
    assert 0.2 <= r["macs_removed"] <= 0.35
    assert r["macs_total"] == conv_gemm_costs(conv_bn_relu_pool_flatten_gemm())[1]
    assert r["verdict"] == {"crash": False, "runnable": True, "keep1_within_tol": True, "reaches_goal": True}
    md = out.with_suffix(".md").read_text()
    assert "**1 of 1** exported models reach" in md
    assert f"| tiny_cnn | onnx.helper | entropic | yes | yes | {100 * r['macs_removed']:.1f}% |" in md


def test_bench_coverage_check_of_an_ort_optimized_table_inspects_the_saved_model(tmp_path, monkeypatch):
    """``--check --ort-optimized`` compares a row with the export as onnxruntime's optimizer
    saves it, the model that row was made from (session 59: it inspected the plain export,
    whose groups can differ from the saved one's)."""
    sys.path.insert(0, str(TOOLS))
    try:
        import bench_coverage
    finally:
        sys.path.remove(str(TOOLS))
    cache = _coverage_cache(tmp_path / "cache")
    seen: list[tuple[Path, set[str]]] = []

    def inspect(path: Path, shape: list[int]) -> dict:
        seen.append((path, {node.domain for node in onnx.load(str(path)).graph.node}))
        return {}

    monkeypatch.setattr(bench_coverage, "inspect_model", inspect)
    bench_coverage.check_rows(cache, ["tiny"], {"tiny": {}})
    bench_coverage.check_rows(cache, ["tiny"], {"tiny": {}}, optimized=True)
    (plain, plain_domains), (saved, saved_domains) = seen
    assert plain == cache / "tiny.onnx" and "com.microsoft" not in plain_domains
    assert saved != plain and "com.microsoft" in saved_domains


def test_bench_coverage_check_finds_rows_the_code_no_longer_gives(tmp_path):
    """``--check`` prunes nothing and leaves ``--out`` alone: the tiny export inspects as its
    fresh row says (exit 0); with the row's prunable groups and MAC total changed, as a
    change of the analysis or cost model would make them, it names both figures and exits 1.
    A row run again (``--only``) without ``--title`` keeps the table's heading (it was
    replaced by the timm default)."""
    cache = _coverage_cache(tmp_path / "cache")
    out = tmp_path / "cov.json"
    assert run_tool("bench_coverage", "--cache", cache, "--out", out, "--title", "Tiny exports").code == 0
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--check")
    assert ran.exc is None and ran.code == 0, ran.message
    assert "1 of 1 exports inspect as their rows say" in ran.out
    rows = json.loads(out.read_text())
    rows["tiny"]["prunable_groups"] += 1
    rows["tiny"]["macs_total"] *= 2
    out.write_text(json.dumps(rows))
    saved = out.read_bytes()
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--check")
    assert ran.exc is None and ran.code == 1
    line = next(x for x in ran.out.splitlines() if x.startswith("tiny:"))
    assert "prunable_groups" in line and "macs_total" in line and "prunable_mac_fraction" not in line
    assert "0 of 1 exports inspect as their rows say" in ran.out
    assert out.read_bytes() == saved
    assert run_tool("bench_coverage", "--cache", cache, "--out", out, "--only", "tiny").code == 0
    assert out.with_suffix(".md").read_text().startswith("# Tiny exports\n")


def test_bench_coverage_empty_cache_keeps_earlier_results(tmp_path):
    """A ``--cache`` without any exported model (a typo, or the venv's cache not made yet) is
    refused with a one-line error, and the existing ``--out`` and its Markdown keep their
    content (they used to be overwritten with empty results, exit 0)."""
    out = tmp_path / "coverage_results.json"
    out.write_text(json.dumps({"resnet18": {"name": "resnet18", "verdict": {"reaches_goal": True}}}))
    md = tmp_path / "coverage_results.md"
    md.write_text("# earlier table\n")
    saved = out.read_bytes()
    ran = run_tool("bench_coverage", "--cache", tmp_path / "timm_onxn", "--out", out)
    assert ran.exc is None, repr(ran.exc)
    assert out.read_bytes() == saved
    assert md.read_text() == "# earlier table\n"
    assert ran.code not in (0, None)


def test_bench_coverage_out_in_a_missing_folder(tmp_path):
    """An ``--out`` whose folder does not exist is made before any model is pruned (as
    ``bench_quality.py`` and ``bench_speed.py`` do), so the results are written (the first
    write used to raise FileNotFoundError after the work)."""
    cache = _coverage_cache(tmp_path / "cache", model=False, failure=True)
    out = tmp_path / "results" / "cov.json"
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out)
    assert ran.exc is None and ran.code == 0, ran.message
    assert json.loads(out.read_text())["broken"]["exported"] is False


def test_bench_coverage_openvino_not_installed(tmp_path):
    """``--openvino`` where OpenVINO is not installed (CI) is refused before any work, with
    one line naming the install command; nothing is written, not even ``--out``'s folder."""
    cache = _coverage_cache(tmp_path / "cache")
    out = tmp_path / "results" / "cov.json"
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--openvino", block=("openvino",))
    assert ran.exc is None, repr(ran.exc)
    assert ran.code == 2, ran.message
    lines = ran.message.strip().splitlines()
    assert len(lines) == 1 and "pip install openvino" in lines[0], ran.message
    assert not (tmp_path / "results").exists()


F32 = "Type.f32 (fake)"
OV_REFUSAL = "Check 'input_shape' failed at src/core/src/op/convolution.cpp:88: Conv got 5 channels, expected 8"


def _fake_openvino(refuse_below: int, compiled: list):
    """A stand-in for the ``openvino`` module, as much of it as the tool uses: ``Core`` reads
    an ONNX file, ``compile_model`` refuses a model with fewer than ``refuse_below`` weights
    (a pruned one) with OpenVINO's kind of message (the location line first) and otherwise
    runs it in onnxruntime, its outputs listed in reverse (they must be found by name); each
    compile's device, configuration and the shapes it was reshaped to go to ``compiled``."""
    import types

    import onnxruntime as ort

    class Port:
        def __init__(self, name):
            self.name = name

        def get_names(self):
            return {self.name}

    class Model:
        def __init__(self, path):
            self.proto, self.shapes = onnx.load(str(path)), None

        def reshape(self, shapes):
            self.shapes = {k: list(v) for k, v in shapes.items()}

    class Compiled:
        def __init__(self, model, config):
            self.sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
            self.config, self.shapes = config, model.shapes
            self.outputs = [Port(o.name) for o in self.sess.get_outputs()][::-1]

        def get_property(self, key):
            return self.config.get(key, "Type.bf16 (fake)")

        def __call__(self, feeds):
            assert {k: list(v.shape) for k, v in feeds.items()} == self.shapes
            return dict(enumerate(self.sess.run([p.name for p in self.outputs], feeds)))

    class Core:
        def read_model(self, path):
            return Model(path)

        def compile_model(self, model, device, config):
            compiled.append((device, dict(config), model.shapes))
            if sum(int(np.prod(t.dims)) for t in model.proto.graph.initializer) < refuse_below:
                raise RuntimeError(f"Exception from src/inference/src/cpp/core.cpp:112:\n{OV_REFUSAL}\n"
                                   "Exception from src/plugins/intel_cpu/src/plugin.cpp:40:\n")
            return Compiled(model, config)

    hint = types.SimpleNamespace(inference_precision=lambda: "INFERENCE_PRECISION_HINT")
    return types.SimpleNamespace(__version__="2099.1.0-1-fake", Core=Core, Type=types.SimpleNamespace(f32=F32),
                                 properties=types.SimpleNamespace(hint=hint,
                                                                  inference_num_threads=lambda: "NUM_THREADS"))


def _coverage_row(tool, **extra) -> dict:
    row = {"name": "tiny", "arch": "tiny_cnn", "exporter": "onnx.helper", "exported": True, "method": "entropic",
           "package": "0.1.0", "keep1_ok": True, "keep1_max_rel_err": 0.0, "pruned_ok": True, "valid": True,
           "runs": True, "same_io_names": True, "same_output_shapes": True, "finite": True, "macs_removed": 0.3,
           "prunable_mac_fraction": 1.0, "inspect_frozen_reasons": [], "seconds": 1.5, "timed_out": False, **extra}
    row["verdict"] = tool._verdict(row)
    return row


def test_bench_coverage_openvino_records_a_refused_pruned_model(tmp_path, monkeypatch):
    """With a fake OpenVINO that compiles the original and refuses the pruned model: the row
    records the original as run (its error against onnxruntime's outputs: 0, the fake runs
    onnxruntime) and the pruned model's refusal by the first line of the message that says
    something, both compiled for f32 (OpenVINO's CPU default is bf16) at the check inputs'
    static shape; the table gains an OpenVINO column that shows the refusal (and the error in
    the note), "-" for a row run without ``--openvino``; without any such row the table is
    the one it always was."""
    tool = load_tool("bench_coverage")
    orig = conv_bn_relu_pool_flatten_gemm()
    path = tmp_path / "tiny.onnx"
    onnx.save(orig, str(path))
    calib = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    pruned = onnx_eprune.prune(orig, calib, flops_reduction=0.3, seed=0).model
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    orig_outs, pruned_outs = tool._run(orig, feeds), tool._run(pruned, feeds)
    compiled: list = []
    weights = sum(int(np.prod(t.dims)) for t in orig.graph.initializer)
    monkeypatch.setattr(tool, "_load_openvino", lambda: _fake_openvino(weights, compiled))
    saved: list = []
    row: dict = {}
    got = tool.openvino_compare(orig, path, orig_outs, pruned, pruned_outs, feeds, tmp_path, row,
                                lambda: saved.append(dict(row)))
    assert got is row
    assert row["version"] == "2099.1.0-1-fake"
    assert row["original_ok"] is True and row["original_rel_err"] == 0.0
    assert row["pruned_ok"] is False and row["pruned_rel_err"] is None
    assert row["error"] == f"pruned: RuntimeError: {OV_REFUSAL}"
    assert "running" not in row and [r["running"] for r in saved] == ["original", "pruned"]
    assert compiled == [("CPU", {"INFERENCE_PRECISION_HINT": F32, "NUM_THREADS": 2}, {"x": [8, 3, 16, 16]})] * 2

    plain = {"tiny": _coverage_row(tool), "other": _coverage_row(tool, name="other", arch="other_cnn")}
    md = tmp_path / "cov.md"
    tool.write_markdown(plain, md, title="Tiny exports")
    before = md.read_text()
    assert "OpenVINO" not in before
    assert ("| model | exporter | method | valid | runs | MACs removed | prunable MAC fraction | "
            "keep-1.0 max rel err | seconds | note |\n|---|---|---|---|---|---|---|---|---|---|\n") in before
    assert "| tiny_cnn | onnx.helper | entropic | yes | yes | 30.0% | 100.0% | 0.0e+00 | 1.5 |  |\n" in before

    tool.write_markdown(dict(plain, tiny=_coverage_row(tool, openvino=row)), md, title="Tiny exports")
    after = md.read_text()
    assert ("| keep-1.0 max rel err | OpenVINO | seconds | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            in after)
    assert (f"| tiny_cnn | onnx.helper | entropic | yes | yes | 30.0% | 100.0% | 0.0e+00 | **refuses pruned** | "
            f"1.5 | openvino: pruned: RuntimeError: {OV_REFUSAL} |\n") in after
    assert "| other_cnn | onnx.helper | entropic | yes | yes | 30.0% | 100.0% | 0.0e+00 | - | 1.5 |  |\n" in after
    assert "OpenVINO 2099.1.0 (`--openvino`" in after and "**0 of 1** pruned models" in after
    assert "1 refused (original or pruned), 0 differ." in after
    # the rest of the page is as it was
    lines = after.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("OpenVINO "))
    assert lines[at - 1] == lines[at + 1] == "" and lines[at - 2].startswith("**2 of 2** exported models reach")
    del lines[at:at + 2]

    def rest(page_lines):
        return [x for x in page_lines if not x.startswith(("| tiny_cnn", "| other_cnn", "| model", "|---"))]
    assert rest(lines) == rest(before.splitlines())


def test_bench_coverage_openvino_cells():
    """The OpenVINO column: "yes (ERR)" while the pruned model's error stays within
    max(10 x the original's, 1e-4) (the original's shown where it is above 1e-4), else
    "differs"; a refused original or pruned model; no error where a detector's row counts
    differ between the runtimes."""
    tool = load_tool("bench_coverage")

    def cell(**o):
        base = {"version": "1", "original_ok": True, "pruned_ok": True, "original_rel_err": 1e-6,
                "pruned_rel_err": 3e-6, "error": None}
        return tool._openvino_cell({"openvino": dict(base, **o)})

    assert cell() == "yes (3e-06)"
    assert cell(pruned_rel_err=9e-5) == "yes (9e-05)"               # under the 1e-4 floor
    assert cell(pruned_rel_err=2e-4).startswith("**differs** (2e-04")
    assert cell(original_rel_err=1e-3, pruned_rel_err=9e-3) == "yes (9e-03, original 1e-03)"  # within 10 x
    assert cell(original_rel_err=1e-3, pruned_rel_err=2e-2).startswith("**differs**")
    assert cell(pruned_ok=False, pruned_rel_err=None) == "**refuses pruned**"
    assert cell(original_ok=False, original_rel_err=None) == "**refuses original**"
    assert cell(pruned_rel_err=None) == "yes (not compared)"
    assert tool._openvino_cell({"runs": True, "openvino": {"original_ok": True, "pruned_ok": True}}) \
        == "yes (row counts differ)"
    assert tool._openvino_cell({}) == "-"


def test_bench_coverage_openvino_tiny_run(tmp_path):
    """With OpenVINO installed (not in CI): the tiny export's row records both models compiled
    and run in OpenVINO, agreeing with onnxruntime to float rounding (f32, not bf16's ~1e-2),
    and the table shows it; the other figures are those of a run without ``--openvino``."""
    ov = pytest.importorskip("openvino")
    cache = _coverage_cache(tmp_path / "cache")
    out = tmp_path / "cov.json"
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--openvino", "--timeout", "300")
    assert ran.exc is None and ran.code == 0, ran.message
    r = json.loads(out.read_text())["tiny"]
    o = r["openvino"]
    assert o["version"] == ov.__version__ and o["error"] is None
    assert o["original_ok"] is True and o["pruned_ok"] is True
    assert o["original_rel_err"] <= 1e-5 and o["pruned_rel_err"] <= 1e-5
    assert r["valid"] and r["runs"] and r["keep1_max_rel_err"] <= 1e-4 and 0.2 <= r["macs_removed"] <= 0.35
    md = out.with_suffix(".md").read_text()
    assert f"| 0.0e+00 | yes ({o['pruned_rel_err']:.0e}) | {r['seconds']} |" in md
    assert "**1 of 1** pruned models compile, run and agree with onnxruntime" in md


def test_bench_coverage_ort_optimized_tiny_run(tmp_path):
    """``--ort-optimized``: the row is that of the tiny export as onnxruntime's optimizer saves
    it (its Conv + Relu pairs fused): the fused ops are recorded for the input and both
    pruned outputs, which hold the same, and the run is as good as the plain one."""
    cache = _coverage_cache(tmp_path / "cache")
    out = tmp_path / "cov.json"
    ran = run_tool("bench_coverage", "--cache", cache, "--out", out, "--ort-optimized", "--timeout", "300")
    assert ran.exc is None and ran.code == 0, ran.message
    r = json.loads(out.read_text())["tiny"]
    assert r["fused_ops"].get("FusedConv", 0) >= 1
    assert r["keep1_fused_ops"] == r["pruned_fused_ops"] == r["fused_ops"]
    assert r["valid"] and r["runs"] and r["keep1_max_rel_err"] <= 1e-4 and 0.2 <= r["macs_removed"] <= 0.35
    md = out.with_suffix(".md").read_text()
    assert "**1 of 1** pruned models (both runs) hold the fused ops their input held" in md
    cell = ", ".join(f"{op} {n}" for op, n in r["fused_ops"].items())
    assert f"| {cell} | {r['seconds']} |" in md


# -- 7. bench_runtimes.py ----------------------------------------------------------------------------

@needs_reference
@needs_dataset
def test_bench_runtimes_onnxruntime_tiny_run(tmp_path, fmnist_test):
    """``bench_runtimes.py --models lenet5 --runtimes onnxruntime --batches 1 4``: a row per
    batch with the accuracies of the original (the model card's) and of the model that
    ``prune`` writes at the bar's 0.55, recomputed here on the full test split; onnxruntime
    agrees with itself exactly; the speed-up is the ratio of the medians; the MACs and
    parameters removed are the report's; ``--markdown`` prints one line per row."""
    out = tmp_path / "runtimes.json"
    ran = run_tool("bench_runtimes", "--models", "lenet5", "--runtimes", "onnxruntime", "--batches", "1", "4",
                   "--repeats", "2", "--min-seconds", "0.05", "--out", out, "--markdown")
    assert ran.exc is None and ran.code == 0, ran.message
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["runtime"], r["batch"], r["threads"]) for r in rows] == \
        [("lenet5", "onnxruntime", 1, 1), ("lenet5", "onnxruntime", 4, 1)]
    x, y = fmnist_test
    pruned = onnx_eprune.prune(str(LENET), str(CALIB28), sparsity=0.55, device="cpu")
    accuracy = float(np.mean(lenet_logits(pruned.model, x).argmax(1) == y))
    for r in rows:
        assert r["accuracy_original"] == pytest.approx(card_accuracy("lenet5"), abs=1e-4)
        assert r["accuracy_pruned"] == accuracy and r["test_images"] == 10_000
        assert (r["agreement_original"], r["agreement_pruned"], r["max_abs_diff_pruned"]) == (1.0, 1.0, 0.0)
        assert r["speedup"] == pytest.approx(r["ms_original"] / r["ms_pruned"])
        # a LeNet-5 run takes well under a millisecond: more than 2 runs fill the 0.05 s asked for
        assert 2 < r["repeats"] <= 10_000
        assert r["macs_removed"] == pruned.report["macs"]["removed_fraction"]
        assert r["params_removed"] == pruned.report["params"]["removed_fraction"]
    table = [line for line in ran.out.splitlines() if line.startswith("| lenet5 | onnxruntime |")]
    assert len(table) == 2 and f"{accuracy:.2%}" in table[0]
    again = run_tool("bench_runtimes", "--table", out)
    assert again.code == 0 and again.out.strip().splitlines()[-2:] == table
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{")
    bad = run_tool("bench_runtimes", "--table", damaged)
    assert bad.exc is None and bad.code not in (0, None) and str(damaged) in bad.message


@needs_reference
@needs_dataset
def test_bench_runtimes_ort_optimized_tiny_run(tmp_path, fmnist_test):
    """``--ort-optimized``: LeNet-5 as onnxruntime's optimizer saves it (FusedConv, FusedGemm)
    is the original; its accuracy is the model card's, the pruned model holds the same fused
    ops and keeps the accuracy of the same model pruned in standard form."""
    out = tmp_path / "runtimes.json"
    ran = run_tool("bench_runtimes", "--models", "lenet5", "--runtimes", "onnxruntime", "--batches", "4",
                   "--repeats", "2", "--min-seconds", "0.05", "--ort-optimized", "--out", out, "--markdown")
    assert ran.exc is None and ran.code == 0, ran.message
    [row] = json.loads(out.read_text())["rows"]
    assert set(row["fused_ops_original"]) == {"FusedConv", "FusedGemm"}
    assert row["fused_ops_pruned"] == row["fused_ops_original"]
    assert row["accuracy_original"] == pytest.approx(card_accuracy("lenet5"), abs=1e-4)
    x, y = fmnist_test
    standard = onnx_eprune.prune(str(LENET), str(CALIB28), sparsity=0.55, device="cpu")
    assert row["accuracy_pruned"] == pytest.approx(float(np.mean(lenet_logits(standard.model, x).argmax(1) == y)),
                                                   abs=5e-4)
    cell = " -> ".join(", ".join(f"{op} {n}" for op, n in row[f"fused_ops_{k}"].items())
                       for k in ("original", "pruned"))
    assert any(line.startswith("| lenet5 | onnxruntime |") and line.endswith(f"| {cell} |")
               for line in ran.out.splitlines())


def test_bench_runtimes_without_a_runtime_says_what_to_install(tmp_path):
    """With OpenVINO or onnx2torch not installed, asking for that runtime exits non-zero with
    one line naming the package, before any pruning: no --out is written."""
    for runtime, package in (("openvino", "openvino"), ("torch", "onnx2torch")):
        out = tmp_path / f"{runtime}.json"
        ran = run_tool("bench_runtimes", "--models", "lenet5", "--runtimes", runtime, "--out", out,
                       block=("openvino", "onnx2torch", *TORCH_STACK))
        assert ran.exc is None, repr(ran.exc)
        assert ran.code not in (0, None)
        msg = ran.message.strip()
        assert len(msg.splitlines()) == 1 and f"pip install {package}" in msg, msg
        assert not out.exists()


@needs_reference
@needs_dataset
def test_bench_runtimes_keeps_the_rows_of_runtimes_that_work(tmp_path, fmnist_test):
    """A runtime that refuses a model is a row with its error (and a table line that says
    so), and the runtimes after it still run: one failure must not lose the benchmark."""
    tool = load_tool("bench_runtimes")

    def refuses(model, batch, threads, args):
        raise RuntimeError("Cannot create Conv layer\nsecond line")

    tool.LOADERS["openvino"] = refuses
    args = argparse.Namespace(sparsity=0.3, reference=REFERENCE, save=None, runtimes=["openvino", "onnxruntime"],
                              batches=[2], threads=[1], repeats=1, min_seconds=0.0, ov_precision="f32",
                              ort_optimized=False)
    with contextlib.redirect_stdout(io.StringIO()):
        rows = tool.bench_model("lenet5", args, fmnist_test)
    assert [r["runtime"] for r in rows] == ["onnxruntime", "openvino"]
    assert rows[1] == {"model": "lenet5", "runtime": "openvino", "sparsity": 0.3,
                       "error": "RuntimeError: Cannot create Conv layer"}
    assert rows[0]["batch"] == 2 and "error" not in rows[0]
    assert "| lenet5 | openvino | failed: RuntimeError: Cannot create Conv layer |" in tool.markdown(rows)
