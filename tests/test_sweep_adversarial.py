"""``onnx-eprune sweep`` and ``onnx_eprune.sweep`` used by a demanding, adversarial user.

Attacks what ``tests/test_sweep.py`` leaves alone: targets given unsorted, at 0, spelled
oddly or so close together that they print alike; ``--save-models`` file names (the name of
each model must say which target made it, and an old file must survive a failed run);
``--report-dir`` that is empty, under a file, the model's own folder or holds a folder
where an output goes; held-out ``--data`` of another spatial size and dtype; labels of the
wrong length, sign or type; the figures of ``sweep.json`` against an independent
recomputation from the saved models (parameters and MACs counted from their weights,
fidelity and accuracy from running them in onnxruntime) and ``sweep.md`` against
``sweep.json``; ``sweep.png`` without matplotlib; a failure at the third target or while
saving the third model; ``--method``/``--mode`` combinations against ``prune`` at the same
target; ``--no-reconstruct``; ``--exclude``; ``-q``; exit statuses.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_error

import onnx_eprune
from models import (
    CLASSES,
    conv_bn_relu_pool_flatten_gemm,
    conv_gemm_costs,
    io_signature,
    random_input,
    run_model,
)
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError, UsageError

# the module, not the function that onnx_eprune exports under the same name
sweep_module = importlib.import_module("onnx_eprune.sweep")
model_io = importlib.import_module("onnx_eprune.graph.model_io")
report_files = importlib.import_module("onnx_eprune.report_files")

OLD = b"an earlier result that a failed run must leave as it was"
FAST = ("--mode", "oneshot", "--method", "l1", "--device", "cpu")


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def ws(tmp_path, calib):
    """A model, its calibration data, held-out data (20 samples) and labels on disk."""
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    np.save(tmp_path / "data.npy", random_input(20, seed=3))
    np.save(tmp_path / "labels.npy", np.arange(20) % CLASSES)
    return tmp_path


def _args(ws: Path, *extra: str, out: str | None = None, fast: bool = True) -> list[str]:
    return ["sweep", str(ws / "m.onnx"), "--calib", str(ws / "c.npy"), "--report-dir", str(ws / "out") if out is None else out,
            *(FAST if fast else ()), "-q", *extra]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with its stdout and stderr captured (the package logger put back after)."""
    log = logging.getLogger("onnx_eprune")
    saved = (list(log.handlers), log.level, log.propagate)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        log.handlers[:], log.level, log.propagate = saved
    return status, out.getvalue(), err.getvalue()


def _provenance(model: onnx.ModelProto) -> dict:
    """The last pruning run recorded in the model's metadata."""
    return json.loads({p.key: p.value for p in model.metadata_props}["onnx_eprune"])[-1]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _leftovers(folder: Path) -> list[str]:
    """Temporary or set-aside files a run left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dynamic_model() -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> Conv(8->16) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(16->10),
    input ``x`` of shape [N, 3, H, W] (height and width dynamic)."""
    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), shape).astype(np.float32), name)

    inits = [w("w1", (8, 3, 3, 3)), numpy_helper.from_array(np.full(8, 0.05, np.float32), "b1"),
             w("w2", (16, 8, 3, 3)), numpy_helper.from_array(np.full(16, 0.05, np.float32), "b2"),
             w("wf", (10, 16)), numpy_helper.from_array(np.zeros(10, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# -- one sweep with everything, checked against an independent recomputation ------------------

@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    """A sweep over unsorted targets with --data, --labels and --save-models."""
    d = tmp_path_factory.mktemp("full")
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(d / "m.onnx"))
    np.save(d / "c.npy", random_input(64, seed=1))
    data = random_input(40, seed=5)
    np.save(d / "data.npy", data)
    labels = (np.arange(40) * 7) % CLASSES
    np.save(d / "labels.npy", labels)
    status, out, err = _run(["sweep", str(d / "m.onnx"), "--calib", str(d / "c.npy"), "--sparsity", "0.5", "0.2",
                             "0.35", "--data", str(d / "data.npy"), "--labels", str(d / "labels.npy"), "--report-dir",
                             str(d / "out"), "--save-models", *FAST, "-q"])
    assert status == 0, err
    return {"dir": d, "out": d / "out", "data": data, "labels": labels, "stdout": out, "stderr": err,
            "record": json.loads((d / "out" / "sweep.json").read_text())}


def test_quiet_sweep_prints_nothing_and_lists_runs_in_ascending_order(full_sweep):
    assert full_sweep["stdout"] == "" and full_sweep["stderr"] == ""
    assert [r["target"] for r in full_sweep["record"]["runs"]] == [0.2, 0.35, 0.5]
    assert sorted(p.name for p in full_sweep["out"].glob("pruned_*")) == [
        "pruned_sparsity_0.2.onnx", "pruned_sparsity_0.35.onnx", "pruned_sparsity_0.5.onnx"]
    assert _leftovers(full_sweep["out"]) == []


def test_each_saved_model_is_valid_and_was_made_at_the_target_its_name_gives(full_sweep):
    original = onnx.load(str(full_sweep["dir"] / "m.onnx"))
    for run in full_sweep["record"]["runs"]:
        model = onnx.load(str(full_sweep["out"] / f"pruned_sparsity_{run['target']:g}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert io_signature(model) == io_signature(original)
        made = _provenance(model)
        assert made["target"] == {"kind": "sparsity", "value": run["target"]}
        assert (made["method"], made["mode"]) == ("l1", "oneshot")


def test_sweep_json_costs_match_the_saved_models(full_sweep):
    """params_removed / macs_removed = 1 - after/before, both counted from the weights."""
    params0, macs0 = conv_gemm_costs(onnx.load(str(full_sweep["dir"] / "m.onnx")))
    for run in full_sweep["record"]["runs"]:
        params, macs = conv_gemm_costs(onnx.load(str(full_sweep["out"] / f"pruned_sparsity_{run['target']:g}.onnx")))
        assert run["params_removed"] == pytest.approx(1 - params / params0, abs=2e-6)
        assert run["macs_removed"] == pytest.approx(1 - macs / macs0, abs=2e-6)
        assert run["params_removed"] >= run["target"]


def test_sweep_json_fidelity_and_accuracy_match_running_the_saved_models(full_sweep):
    data, labels = full_sweep["data"], full_sweep["labels"]
    ref = run_model(onnx.load(str(full_sweep["dir"] / "m.onnx")), data)["y"].astype(np.float64)
    for run in full_sweep["record"]["runs"]:
        got = run_model(onnx.load(str(full_sweep["out"] / f"pruned_sparsity_{run['target']:g}.onnx")),
                        data)["y"].astype(np.float64)
        fid = run["fidelity"]["y"]
        assert fid["relative_error"] == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-4)
        assert fid["top1_agreement"] == pytest.approx(np.mean(got.argmax(1) == ref.argmax(1)))
        cosine = np.mean(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))
        assert fid["cosine"] == pytest.approx(cosine, abs=1e-4)
        assert run["accuracy"]["pruned"] == pytest.approx(np.mean(got.argmax(1) == labels))
        assert run["accuracy"]["original"] == pytest.approx(np.mean(ref.argmax(1) == labels))
        assert run["fidelity_on"] == "40 held-out samples"


def test_sweep_md_says_what_sweep_json_says(full_sweep):
    record = full_sweep["record"]
    md = (full_sweep["out"] / "sweep.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| sparsity")]
    assert len(rows) == len(record["runs"])
    for row, run in zip(rows, record["runs"]):
        acc = run["accuracy"]
        assert row == [f"sparsity {run['target']:g}", f"{100 * run['params_removed']:.1f}%",
                       f"{100 * run['macs_removed']:.1f}%", f"{run['fidelity']['y']['relative_error']:.4f}",
                       f"{100 * run['fidelity']['y']['top1_agreement']:.1f}%",
                       f"{100 * acc['pruned']:.2f}% (original {100 * acc['original']:.2f}%)", f"{run['seconds']:.1f}"]
    assert "- method: l1, mode: oneshot" in md
    assert "- fidelity measured on: 40 held-out samples" in md


# -- targets -----------------------------------------------------------------------------------

def test_odd_spellings_of_flops_targets_name_their_models_plainly(ws):
    status, _, err = _run(_args(ws, "--flops-reduction", "0.30", "1e-1", "--save-models"))
    assert status == 0, err
    record = json.loads((ws / "out" / "sweep.json").read_text())
    assert [(r["kind"], r["target"]) for r in record["runs"]] == [("flops_reduction", 0.1), ("flops_reduction", 0.3)]
    assert all(r["macs_removed"] >= r["target"] for r in record["runs"])
    for t in (0.1, 0.3):
        made = _provenance(onnx.load(str(ws / "out" / f"pruned_flops_reduction_{t:g}.onnx")))
        assert made["target"]["value"] == t and made["target"]["kind"] in ("flops", "flops_reduction")


def test_targets_that_print_alike_do_not_share_a_model_file(ws):
    """Expected: two distinct targets give two model files (each holding the model of its own
    target), or the command refuses them up front (exit 2, nothing written). Was: both were
    named ``pruned_sparsity_0.3.onnx`` (``{target:g}``), so the 0.3000001 model overwrote the
    0.3 one."""
    status, _, _ = _run(_args(ws, "--sparsity", "0.3", "0.3000001", "--save-models"))
    if status == 2:
        assert not (ws / "out").exists()
        return
    assert status == 0
    models = sorted((ws / "out").glob("pruned_*.onnx"))
    assert len(models) == 2
    assert sorted(_provenance(onnx.load(str(p)))["target"]["value"] for p in models) == [0.3, 0.3000001]


def test_sweep_md_tells_close_targets_apart(ws):
    """Expected: every row of sweep.md names its own target, so two targets give two different
    first cells. Was: both read ``sparsity 0.3``."""
    status, _, err = _run(_args(ws, "--sparsity", "0.3", "0.3000001"))
    assert status == 0, err
    md = (ws / "out" / "sweep.md").read_text()
    cells = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| sparsity")]
    assert len(cells) == 2 and len(set(cells)) == 2


def test_target_zero_gives_back_the_original_function(ws, test_x):
    """Sparsity 0 in the default sequential mode: nothing removed, the same outputs."""
    status, _, err = _run(_args(ws, "--sparsity", "0", "0.3", "--save-models", fast=False) + ["--method", "l1",
                                                                                                "--device", "cpu"])
    assert status == 0, err
    first = json.loads((ws / "out" / "sweep.json").read_text())["runs"][0]
    assert (first["target"], first["params_removed"], first["macs_removed"]) == (0.0, 0.0, 0.0)
    assert first["fidelity"]["y"]["top1_agreement"] == 1.0 and first["fidelity"]["y"]["relative_error"] < 1e-5
    zero = onnx.load(str(ws / "out" / "pruned_sparsity_0.onnx"))
    np.testing.assert_allclose(run_model(zero, test_x)["y"], run_model(onnx.load(str(ws / "m.onnx")), test_x)["y"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("values", [["1"], ["0.3", "nan"], ["-inf"], ["-0.1", "0.3"], ["0.5", "5e-1"], [".2", "x"]],
                         ids=["one", "nan", "-inf", "negative", "same-value-spelled-twice", "not-a-number"])
def test_bad_target_lists_are_usage_errors_before_any_work(ws, capsys, monkeypatch, values):
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    run_error(capsys, _args(ws, "--sparsity", *values))
    assert not (ws / "out").exists()


def test_a_target_out_of_reach_fails_before_calibrating_or_pruning(ws, capsys, monkeypatch):
    """The largest target, unreachable with --min-keep 0.5: exit 1, how far it can go, nothing written."""
    work = []
    monkeypatch.setattr(sweep_module.Pruner, "run", lambda self: work.append("prune"))
    monkeypatch.setattr(sweep_module, "calibrate", lambda *a, **k: work.append("calibrate"))
    line = run_error(capsys, _args(ws, "--sparsity", "0.2", "0.9", "--min-keep", "0.5"), code=1)
    assert "0.9" in line and "out of reach" in line and re.search(r"removes 0\.\d+", line)
    assert work == [] and not (ws / "out").exists()


@pytest.mark.parametrize("argv", [
    lambda ws: ["sweep", str(ws / "m.onnx"), "--calib", str(ws / "c.npy"), "--sparsity", "0.3"],
    lambda ws: _args(ws, "--keep-ratio", "0.5", "0"),
    lambda ws: _args(ws, "--sparsity"),
    lambda ws: _args(ws, "--sparsity", "0.3", "--flops-reduction", "0.3"),
    lambda ws: _args(ws, "--keep-ratio", "0.5", "--sparsity", "0.3"),
    lambda ws: _args(ws, "--sparsity", "0.3", "--stats", str(ws / "c.npy")),
], ids=["no-report-dir", "keep-ratio-zero", "no-target-values", "two-kinds", "keep-ratio-and-sparsity", "stats"])
def test_malformed_command_lines_exit_2(ws, capsys, argv):
    run_error(capsys, argv(ws))
    assert not (ws / "out").exists()


def test_a_warning_about_the_calibration_data_is_printed_once(ws):
    """Expected: one warning about 10 calibration samples for the whole sweep, as the sweep
    already does for its info lines (and as --samples beyond the data warns once). Was: it came
    3 times in one-shot mode, 5 in sequential."""
    np.save(ws / "c10.npy", np.load(ws / "c.npy")[:10])
    argv = _args(ws, "--sparsity", "0.2", "0.3", "0.4")
    argv[argv.index("--calib") + 1] = str(ws / "c10.npy")
    status, out, err = _run(argv)
    assert status == 0 and out == ""
    assert err.count("only 10 calibration samples") == 1, err


# -- --save-models and --report-dir -------------------------------------------------------

def test_the_models_own_folder_as_report_dir_leaves_the_model_alone(ws):
    before = (ws / "m.onnx").read_bytes()
    status, _, err = _run(_args(ws, "--sparsity", "0.3", "--save-models", out=str(ws)))
    assert status == 0, err
    assert (ws / "m.onnx").read_bytes() == before
    assert {"sweep.json", "sweep.md", "pruned_sparsity_0.3.onnx"} <= {p.name for p in ws.iterdir()}


@pytest.mark.parametrize("name, save", [("pruned_sparsity_0.3.onnx", True), ("sweep.md", False),
                                        ("sweep.png", False)])
def test_a_model_named_like_an_output_in_the_report_dir_is_refused(ws, capsys, monkeypatch, name, save):
    (ws / "m.onnx").rename(ws / name)
    before = (ws / name).read_bytes()
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    argv = _args(ws, "--sparsity", "0.3", *(["--save-models"] if save else []), out=str(ws))
    argv[1] = str(ws / name)
    line = run_error(capsys, argv)
    assert "input model" in line
    assert (ws / name).read_bytes() == before
    assert sorted(p.name for p in ws.iterdir()) == sorted(["c.npy", "data.npy", "labels.npy", name])


def test_a_model_named_like_an_output_is_fine_without_save_models(ws):
    """pruned_sparsity_0.3.onnx is only an output with --save-models: without it the sweep runs."""
    (ws / "m.onnx").rename(ws / "pruned_sparsity_0.3.onnx")
    before = (ws / "pruned_sparsity_0.3.onnx").read_bytes()
    argv = _args(ws, "--sparsity", "0.3", out=str(ws))
    argv[1] = str(ws / "pruned_sparsity_0.3.onnx")
    status, _, err = _run(argv)
    assert status == 0, err
    assert (ws / "pruned_sparsity_0.3.onnx").read_bytes() == before


@pytest.mark.parametrize("name", ["sweep.json", "pruned_sparsity_0.3.onnx"])
def test_a_folder_where_an_output_goes_is_refused_before_any_work(ws, capsys, monkeypatch, name):
    (ws / "out" / name).mkdir(parents=True)
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    assert "directory" in run_error(capsys, _args(ws, "--sparsity", "0.3", "--save-models"))
    assert sorted(p.name for p in (ws / "out").iterdir()) == [name]


def test_a_report_dir_whose_parent_is_missing_is_refused_and_not_created(ws, capsys, monkeypatch):
    """README: DIR is created if missing, but its parent must exist."""
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    line = run_error(capsys, _args(ws, "--sparsity", "0.3", out=str(ws / "a" / "b")))
    assert str(ws / "a") in line
    assert not (ws / "a").exists()


def test_an_empty_report_dir_is_refused(ws, capsys, monkeypatch):
    """Expected: exit 2, ``--report-dir is empty`` as ``prune`` says, nothing written (an empty
    value is what an unset shell variable gives). Was: exit 0, with the sweep files in the
    current folder."""
    cwd = ws / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    status = main(_args(ws, "--sparsity", "0.3", out=""))
    assert status == 2, capsys.readouterr().err
    assert list(cwd.iterdir()) == []


def test_a_report_dir_under_a_file_is_refused_with_a_true_reason(ws, capsys):
    """Expected: exit 2 with a line saying that m.onnx is a file / not a folder. Was: ``m.onnx
    does not exist; create it first``, which was false and whose advice could not be followed."""
    line = run_error(capsys, _args(ws, "--sparsity", "0.3", out=str(ws / "m.onnx" / "sub")))
    assert "does not exist" not in line and ("not a directory" in line or "is a file" in line or
                                             "not a folder" in line)


def test_sweep_without_matplotlib_writes_no_plot_and_says_so(ws, monkeypatch):
    monkeypatch.setattr(report_files, "_figure_class", lambda: None)
    argv = [a for a in _args(ws, "--sparsity", "0.3") if a != "-q"]
    status, out, err = _run(argv)
    assert status == 0, err
    assert sorted(p.name for p in (ws / "out").iterdir()) == ["sweep.json", "sweep.md"]
    assert "matplotlib is not installed" in err
    assert "sweep.png" not in out


def test_a_sweep_without_matplotlib_leaves_no_stale_plot(ws, monkeypatch):
    """Expected: after a successful sweep the folder's sweep files all describe that sweep, so
    an old sweep.png (which matplotlib is not there to redraw) goes. Was: the old plot stayed
    beside the new sweep.json and sweep.md and contradicted them."""
    (ws / "out").mkdir()
    (ws / "out" / "sweep.png").write_bytes(OLD)
    monkeypatch.setattr(report_files, "_figure_class", lambda: None)
    status, _, err = _run(_args(ws, "--sparsity", "0.3"))
    assert status == 0, err
    assert not (ws / "out" / "sweep.png").exists()


# -- failures half-way ---------------------------------------------------------------------

def _old_outputs(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(OLD + name.encode())


def test_a_failure_at_the_third_target_keeps_the_old_outputs(ws, capsys, monkeypatch):
    names = ["sweep.json", "sweep.md", "sweep.png", "pruned_sparsity_0.1.onnx", "pruned_sparsity_0.3.onnx"]
    _old_outputs(ws / "out", names)
    real, calls = sweep_module.Pruner.run, []

    def third_fails(self):
        calls.append(1)
        if len(calls) == 3:
            raise EPruneError("simulated failure while pruning the third target")
        return real(self)
    monkeypatch.setattr(sweep_module.Pruner, "run", third_fails)
    line = run_error(capsys, _args(ws, "--sparsity", "0.3", "0.1", "0.2", "--save-models"), code=1)
    assert "third target" in line and len(calls) == 3
    assert sorted(p.name for p in (ws / "out").iterdir()) == sorted(names)
    assert all((ws / "out" / n).read_bytes() == OLD + n.encode() for n in names)


def test_a_failure_saving_the_third_model_restores_every_file(ws, capsys, monkeypatch):
    """The sweep files and two models were already renamed into place: all go back."""
    names = ["sweep.json", "pruned_sparsity_0.1.onnx"]
    _old_outputs(ws / "out", names)
    real, calls = model_io.save_model, []

    def third_fails(model, path, keep=()):
        calls.append(Path(path).name)
        if len(calls) == 3:
            raise EPruneError(f"cannot write {path}: No space left on device")
        return real(model, path)
    monkeypatch.setattr(model_io, "save_model", third_fails)
    line = run_error(capsys, _args(ws, "--sparsity", "0.1", "0.2", "0.3", "--save-models"), code=1)
    assert "No space left" in line
    assert calls == ["pruned_sparsity_0.1.onnx", "pruned_sparsity_0.2.onnx", "pruned_sparsity_0.3.onnx"]
    assert sorted(p.name for p in (ws / "out").iterdir()) == sorted(names)
    assert all((ws / "out" / n).read_bytes() == OLD + n.encode() for n in names)


# -- --data and --labels -------------------------------------------------------------------

@pytest.mark.parametrize("labels, words", [
    (np.arange(19) % CLASSES, "19 labels for 20 samples"),
    (np.arange(21) % CLASSES, "21 labels for 20 samples"),
    (np.arange(20) % CLASSES - 1, "negative"),
    (np.arange(20) % 2 == 0, "bool"),
    (np.array([str(i % CLASSES) for i in range(20)]), "integer class indices"),
    (np.eye(CLASSES)[np.arange(20) % CLASSES], "one class index per sample"),
    (np.full(20, np.nan), "not a class index"),
], ids=["short", "long", "negative", "bool", "strings", "one-hot", "nan"])
def test_bad_labels_are_usage_errors_before_pruning(ws, capsys, monkeypatch, labels, words):
    work = []
    monkeypatch.setattr(sweep_module.Pruner, "run", lambda self: work.append("prune"))
    monkeypatch.setattr(sweep_module, "calibrate", lambda *a, **k: work.append("calibrate"))
    np.save(ws / "bad.npy", labels)
    line = run_error(capsys, _args(ws, "--sparsity", "0.3", "--data", str(ws / "data.npy"), "--labels",
                                   str(ws / "bad.npy")))
    assert words in line
    assert work == [] and not (ws / "out").exists()


def test_whole_number_float_labels_are_class_indices(ws):
    """README: labels are "a .npy of whole numbers": float32 3.0 is class 3, and the
    accuracy is that of the saved model on --data."""
    labels = ((np.arange(20) * 3) % CLASSES).astype(np.float32)
    np.save(ws / "fl.npy", labels)
    status, _, err = _run(_args(ws, "--sparsity", "0.3", "--data", str(ws / "data.npy"), "--labels",
                                str(ws / "fl.npy"), "--save-models"))
    assert status == 0, err
    accuracy = json.loads((ws / "out" / "sweep.json").read_text())["runs"][0]["accuracy"]
    data = np.load(ws / "data.npy")
    pruned = run_model(onnx.load(str(ws / "out" / "pruned_sparsity_0.3.onnx")), data)["y"]
    original = run_model(onnx.load(str(ws / "m.onnx")), data)["y"]
    assert accuracy == {"pruned": pytest.approx(np.mean(pruned.argmax(1) == labels)),
                        "original": pytest.approx(np.mean(original.argmax(1) == labels))}


def test_held_out_data_of_another_size_and_dtype_is_measured_as_given(tmp_path):
    """A model with dynamic height and width, calibrated at 16x16 and measured on float64
    data at 24x24: the figures are those of the saved models on that data."""
    model = _dynamic_model()
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    np.save(tmp_path / "c.npy", np.random.default_rng(1).normal(size=(64, 3, 16, 16)).astype(np.float32))
    data = np.random.default_rng(2).normal(size=(20, 3, 24, 24))  # float64
    np.save(tmp_path / "d.npy", data)
    status, _, err = _run(["sweep", str(tmp_path / "dyn.onnx"), "--calib", str(tmp_path / "c.npy"), "--data",
                           str(tmp_path / "d.npy"), "--sparsity", "0.3", "0.5", "--report-dir", str(tmp_path / "o"),
                           "--save-models", *FAST, "-q"])
    assert status == 0, err
    x = data.astype(np.float32)
    ref = run_model(model, x)["y"].astype(np.float64)
    for run in json.loads((tmp_path / "o" / "sweep.json").read_text())["runs"]:
        got = run_model(onnx.load(str(tmp_path / "o" / f"pruned_sparsity_{run['target']:g}.onnx")), x)["y"]
        assert run["fidelity_on"] == "20 held-out samples"
        assert run["fidelity"]["y"]["relative_error"] == pytest.approx(
            np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-4)


def test_without_data_fidelity_is_measured_on_the_first_256_calibration_samples(tmp_path):
    """300 calibration samples: the figures are those on calib[:256], and say so."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    calib = random_input(300, seed=4)
    np.save(tmp_path / "c.npy", calib)
    status, _, err = _run(["sweep", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"), "--sparsity", "0.4",
                           "--report-dir", str(tmp_path / "o"), "--save-models", *FAST, "-q"])
    assert status == 0, err
    run = json.loads((tmp_path / "o" / "sweep.json").read_text())["runs"][0]
    assert run["fidelity_on"].startswith("the first 256 calibration samples")
    ref = run_model(model, calib[:256])["y"].astype(np.float64)
    got = run_model(onnx.load(str(tmp_path / "o" / "pruned_sparsity_0.4.onnx")), calib[:256])["y"]
    assert run["fidelity"]["y"]["relative_error"] == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref),
                                                                   rel=1e-4)
    assert run["fidelity"]["y"]["top1_agreement"] == pytest.approx(np.mean(got.argmax(1) == ref.argmax(1)))


# -- run options ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, mode", [("thinet", "oneshot"), ("lasso", "oneshot"), ("random", "oneshot"),
                                          ("entropic", "sequential")])
def test_a_sweep_model_is_the_model_prune_gives_at_that_target(ws, method, mode):
    """The saved model of each target has the bytes of ``prune`` with the same options and
    samples, and its metadata names the method and mode."""
    status, _, err = _run(_args(ws, "--sparsity", "0.5", "0.25", "--samples", "48", "--seed", "3", "--save-models",
                                "--method", method, "--mode", mode, "--device", "cpu", fast=False))
    assert status == 0, err
    record = json.loads((ws / "out" / "sweep.json").read_text())
    assert (record["method"], record["mode"]) == (method, mode)
    saved = onnx.load(str(ws / "out" / "pruned_sparsity_0.5.onnx"))
    made = _provenance(saved)
    assert (made["method"], made["mode"], made["samples"], made["seed"]) == (method, mode, 48, 3)
    alone = onnx_eprune.prune(str(ws / "m.onnx"), str(ws / "c.npy"), sparsity=0.5, samples=48, seed=3,
                              method=method, mode=mode, device="cpu").model
    a, b = _weights(saved), _weights(alone)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_no_reconstruct_saves_plain_slices_of_the_original_weights(ws):
    status, _, err = _run(_args(ws, "--sparsity", "0.3", "0.5", "--save-models", "--no-reconstruct"))
    assert status == 0, err
    original = _weights(onnx.load(str(ws / "m.onnx")))
    for t in ("0.3", "0.5"):
        pruned = _weights(onnx.load(str(ws / "out" / f"pruned_sparsity_{t}.onnx")))
        assert pruned["conv_1.weight"].shape[0] < original["conv_1.weight"].shape[0] or \
            pruned["conv_4.weight"].shape[0] < original["conv_4.weight"].shape[0]
        for name, w in pruned.items():  # every kept filter of a layer is one of the original's, unchanged
            if name.startswith("conv_1"):
                rows = {r.tobytes() for r in original[name]}
                assert all(r.tobytes() in rows for r in w), name


def test_no_reconstruct_sweep_files_do_not_claim_a_refit(ws):
    """Expected: sweep.json and sweep.md say that the weights were sliced without a re-fit
    (report.md of ``prune`` says ``re-fit: no``), with no ridge. Was: both reported
    ``refit_ridge: auto-thin``, the default, as if it had been used."""
    status, _, err = _run(_args(ws, "--sparsity", "0.3", "--no-reconstruct"))
    assert status == 0, err
    record = json.loads((ws / "out" / "sweep.json").read_text())
    assert record.get("reconstruct") is False or record.get("refit_ridge") in (None, "none")
    method_line = next(line for line in (ws / "out" / "sweep.md").read_text().splitlines()
                       if line.startswith("- method:"))
    assert "auto-thin" not in method_line


def test_an_excluded_layer_keeps_its_channels_at_every_target(ws):
    status, _, err = _run(_args(ws, "--sparsity", "0.2", "0.4", "--save-models", "--exclude", "conv_1"))
    assert status == 0, err
    original = _weights(onnx.load(str(ws / "m.onnx")))
    for run in json.loads((ws / "out" / "sweep.json").read_text())["runs"]:
        pruned = _weights(onnx.load(str(ws / "out" / f"pruned_sparsity_{run['target']:g}.onnx")))
        assert pruned["conv_1.weight"].shape == original["conv_1.weight"].shape
        assert pruned["conv_4.weight"].shape[0] < original["conv_4.weight"].shape[0]
        assert run["params_removed"] >= run["target"]


# -- the Python API ------------------------------------------------------------------------

def test_api_sweep_leaves_the_model_alone_and_its_points_tell_the_truth(calib, test_x):
    model = conv_bn_relu_pool_flatten_gemm(True)
    before = model.SerializeToString()
    points = onnx_eprune.sweep(model, calib, np.array([0.45, np.float32(0.15)]), data=test_x, mode="oneshot",
                               method="l1", device="cpu")
    assert model.SerializeToString() == before
    assert [p.target for p in points] == sorted(p.target for p in points) and len(points) == 2
    params0, macs0 = conv_gemm_costs(model)
    ref = run_model(model, test_x)["y"].astype(np.float64)
    for p in points:
        json.dumps(p.as_dict())  # JSON-ready, whatever number types the targets came as
        onnx.checker.check_model(p.model, full_check=True)
        assert _provenance(p.model)["target"]["value"] == p.target
        params, macs = conv_gemm_costs(p.model)
        assert p.params_removed == pytest.approx(1 - params / params0, abs=2e-6)
        assert p.macs_removed == pytest.approx(1 - macs / macs0, abs=2e-6)
        got = run_model(p.model, test_x)["y"]
        assert p.fidelity["y"]["relative_error"] == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref),
                                                                  rel=1e-4)


@pytest.mark.parametrize("targets", [[0.2, float("nan")], [float("inf")], [-0.05, 0.3], np.array([[0.2, 0.3]]),
                                     [0.3, np.float64(0.3)]],
                         ids=["nan", "inf", "negative", "2-d-array", "same-value-two-types"])
def test_api_bad_targets_are_refused_before_reading_the_model(targets, calib):
    with pytest.raises(UsageError):
        onnx_eprune.sweep("/nonexistent/model.onnx", calib, targets)


def test_api_labels_of_the_wrong_length_are_refused_before_pruning(calib, test_x, monkeypatch):
    monkeypatch.setattr(sweep_module.Pruner, "run", lambda self: pytest.fail("pruned"))
    monkeypatch.setattr(sweep_module, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    with pytest.raises(UsageError, match=f"{len(test_x) - 1} labels for {len(test_x)} samples"):
        onnx_eprune.sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.3], data=test_x,
                          labels=np.zeros(len(test_x) - 1, np.int64), mode="oneshot", method="l1", device="cpu")
