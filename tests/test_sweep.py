"""``onnx_eprune.sweep`` and ``onnx-eprune sweep``: one model at several targets."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import CLASSES, conv_bn_relu_pool_flatten_gemm, random_input, run_model
from onnx_eprune.cli import main
from test_cli import run_error


@pytest.mark.parametrize("mode,budget", [("oneshot", None), ("sequential", None), ("oneshot", 400)])
def test_sweep_prunes_at_every_target_and_measures_on_held_out_data(calib, mode, budget, monkeypatch):
    """Also when a batch holds 10 of the 48 held-out samples' outputs only (400 bytes): the
    outputs are compared batch by batch, the original's from the cache."""
    if budget is not None:
        from onnx_eprune.calibrate import session
        monkeypatch.setattr(session, "BATCH_BYTES", budget)
    model = conv_bn_relu_pool_flatten_gemm(True)
    data = random_input(48, seed=9)
    labels = run_model(model, data)["y"].argmax(1)  # the original's own predictions: its accuracy is 1
    points = onnx_eprune.sweep(model, calib, [0.6, 0.3], data=data, labels=labels, mode=mode, method="l1",
                               device="cpu")
    assert [p.target for p in points] == [0.3, 0.6]
    assert all(p.params_removed >= p.target for p in points)
    assert points[0].params_removed < points[1].params_removed
    for p in points:
        got = run_model(p.model, data)["y"]
        ref = run_model(model, data)["y"]
        fid = p.fidelity["y"]
        np.testing.assert_allclose(fid["relative_error"], np.linalg.norm(got - ref) / np.linalg.norm(ref), rtol=1e-4)
        assert fid["top1_agreement"] == pytest.approx(np.mean(got.argmax(1) == ref.argmax(1)))
        assert p.accuracy["original"] == 1.0 and p.accuracy["pruned"] == fid["top1_agreement"]
        assert p.fidelity_on == "48 held-out samples"


@pytest.mark.parametrize("mode, kind, positions, reduced", [
    ("sequential", "sparsity", None, False), ("sequential", "sparsity", None, True),
    ("oneshot", "flops_reduction", None, False), ("oneshot", "sparsity", 3, False)])
def test_sweep_and_search_points_are_the_models_prune_writes(mode, kind, positions, reduced, monkeypatch):
    """The runs of a sweep (and a search) share the groups' rankings, drawn by their first
    run: each point is still the same bytes as ``prune`` at its target, whatever target
    came first (entropic on the shipped LeNet-5, whose groups all rank from statistics).
    In sequential mode they share the first pass over the original network too: only the
    first run makes one; its recorded target rows and, with ``reduced`` (conv2's 150 taps
    above a feature budget of 64), the bases of the reduced taps serve every later run.
    One-shot runs share statistics, computed at ``positions`` (once refused: the shared
    statistics were taken for statistics files, whose positions are the files')."""
    from onnx_eprune.datasets import preprocess
    from onnx_eprune.demo import MODEL_FILE, SAMPLE_FILE, shipped
    from onnx_eprune.pipeline import Pruner
    from onnx_eprune.select.entropic import EntropicConfig

    model = onnx.load(str(shipped(MODEL_FILE)))
    calib = preprocess(np.load(str(shipped(SAMPLE_FILE)))["calib"][:96])
    options = dict(mode=mode, device="cpu", positions=positions)
    if reduced:
        options["entropic"] = EntropicConfig(max_features=64)

    def alone(target: float) -> bytes:
        return onnx_eprune.prune(model, calib, **{kind: target}, **options).model.SerializeToString()

    expected = {t: alone(t) for t in (0.2, 0.5)}
    collect, passes = Pruner.collect, []

    def counted(self, cidxs, orig, pruned, label, **kw):
        passes.append((pruned is None, bool(self.bases)))
        return collect(self, cidxs, orig, pruned, label, **kw)

    monkeypatch.setattr(Pruner, "collect", counted)
    for targets in ([0.5, 0.2], [0.2, 0.5]):  # the smaller target ranks first either way
        passes.clear()
        points = onnx_eprune.sweep(model, calib, targets, kind=kind, **options)
        assert {p.target: p.model.SerializeToString() for p in points} == expected
        if mode == "sequential":
            assert [first for first, _ in passes].count(True) == 1 and passes[0][0]
            assert all(bases == reduced for first, bases in passes if not first)
    found = onnx_eprune.search(model, calib, kind=kind, max_error=0.5, resolution=0.1, **options)
    assert len(found.points) > 1 and found.best is not None
    assert found.best.model.SerializeToString() == alone(found.best.target)


def test_a_sweep_without_room_for_the_first_pass_records_makes_it_in_every_run(monkeypatch):
    """When the records of the first pass do not all fit in the sweep's scratch space (no
    disk at all here), every run makes its own first pass into its own space, as prune
    does: the same bytes as prune, a pass per target, no rows shared."""
    from onnx_eprune.calibrate.engine import CACHE_MEMORY_BYTES, CacheSpace
    from onnx_eprune.datasets import preprocess
    from onnx_eprune.demo import MODEL_FILE, SAMPLE_FILE, shipped
    from onnx_eprune.pipeline import Pruner

    model = onnx.load(str(shipped(MODEL_FILE)))
    calib = preprocess(np.load(str(shipped(SAMPLE_FILE)))["calib"][:96])
    expected = {t: onnx_eprune.prune(model, calib, sparsity=t, device="cpu").model.SerializeToString()
                for t in (0.2, 0.5)}
    sweep_module = importlib.import_module("onnx_eprune.sweep")  # the module (the package exports the function)
    # the sweep's own spaces only: the runs' spaces are made in pipeline.py
    monkeypatch.setattr(sweep_module, "CacheSpace", type("NoDisk", (CacheSpace,), {
        "default": classmethod(lambda cls: CacheSpace(CACHE_MEMORY_BYTES, 0))}))
    collect, firsts = Pruner.collect, []

    def counted(self, cidxs, orig, pruned, label, **kw):
        stats = collect(self, cidxs, orig, pruned, label, **kw)
        if pruned is None:  # a first pass: it recorded the target rows all the same
            firsts.append(sorted(self._targets) == sorted(cidxs))
        return stats

    monkeypatch.setattr(Pruner, "collect", counted)
    points = onnx_eprune.sweep(model, calib, [0.2, 0.5], device="cpu")
    assert {p.target: p.model.SerializeToString() for p in points} == expected
    assert firsts == [True, True]


def test_rankings_of_another_configuration_are_refused(calib):
    from onnx_eprune.pipeline import Pruner

    model = conv_bn_relu_pool_flatten_gemm(True)
    first = Pruner(model, calib, onnx_eprune.PruneConfig(sparsity=0.3, device="cpu"))
    first.run()
    again = Pruner(model, calib, onnx_eprune.PruneConfig(sparsity=0.6, device="cpu"), rankings=first.rankings)
    assert again.run().model is not None
    with pytest.raises(ValueError, match="another configuration"):
        Pruner(model, calib, onnx_eprune.PruneConfig(sparsity=0.6, seed=1, device="cpu"), rankings=first.rankings)


def test_sweep_without_data_measures_on_calibration_samples(calib):
    """... and says so, with a note when the re-fit fitted a layer to fewer than 2 of them
    per kept input (the Gemm: 64 samples for 16 features per kept channel)."""
    points = onnx_eprune.sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.4], mode="oneshot", method="l1")
    assert points[0].fidelity_on.startswith(f"the first {min(256, len(calib))} calibration samples")
    assert "the re-fit was fitted to these samples" in points[0].fidelity_on and points[0].report["thin_refits"]
    assert points[0].accuracy is None


@pytest.mark.parametrize("batch", [None, 4])
def test_sweep_with_latency_times_every_pruned_model_against_the_original(calib, batch, monkeypatch):
    """``latency=True``: per point the median latency of the original and of the pruned
    model, timed one after the other on the held-out data's first samples (batch 1 and 32;
    only its own batch for a model exported with a fixed one). The timing is the one
    ``latency_ms`` measures (counted here: two models per batch size per point)."""
    evaluate = importlib.import_module("onnx_eprune.evaluate")  # the module (the package exports the function)
    model = conv_bn_relu_pool_flatten_gemm(True)
    if batch:
        for vi in [*model.graph.input, *model.graph.output]:
            vi.type.tensor_type.shape.dim[0].dim_value = batch
    data = random_input(8 if batch else 48, seed=9)
    timed, latency_ms = [], evaluate.latency_ms

    def counted(m, feeds, providers, **kw):
        timed.append(next(iter(feeds.values())).shape[0])
        return latency_ms(m, feeds, providers, **kw)

    monkeypatch.setattr(evaluate, "latency_ms", counted)
    points = onnx_eprune.sweep(model, calib, [0.3, 0.6], data=data, mode="oneshot", method="l1", device="cpu",
                               latency=True)
    sizes = [batch] if batch else [1, 32]
    assert timed == sizes * 4
    for p in points:
        assert set(p.latency_ms) == {"original", "pruned"}
        for which in p.latency_ms.values():
            assert list(which) == [f"batch{s}" for s in sizes] and all(ms > 0 for ms in which.values())
        assert p.as_dict()["latency_ms"] == p.latency_ms
    from onnx_eprune.report_files import _ms, markdown_sweep

    table = markdown_sweep({"runs": [p.as_dict() for p in points]})
    header = f"latency, ms at batch {' / '.join(map(str, sizes))}"
    first = points[0].latency_ms
    assert header in table and f"{' / '.join(map(_ms, first['pruned'].values()))} (original " in table
    assert [_ms(v) for v in (6.0, 129.4, 0.02431, 9.996, 1234.5)] == ["6.00", "129", "0.0243", "10.0", "1230"]
    assert "latency" not in markdown_sweep({"runs": [dict(p.as_dict(), latency_ms=None) for p in points]})


def test_sweep_refuses_labels_without_data_and_unknown_kinds(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    with pytest.raises(onnx_eprune.UsageError, match="labels need"):
        onnx_eprune.sweep(model, calib, [0.3], labels=np.zeros(4))
    with pytest.raises(onnx_eprune.UsageError, match="one of sparsity, flops_reduction, keep_ratio, not 'keep'"):
        onnx_eprune.sweep(model, calib, [0.3], kind="keep")
    # a bisection from 0 up needs a target that removes more as it grows
    with pytest.raises(onnx_eprune.UsageError, match="one of sparsity, flops_reduction, not 'keep_ratio'"):
        onnx_eprune.search(model, calib, kind="keep_ratio", max_error=0.1)
    with pytest.raises(onnx_eprune.UsageError, match=r"keep_ratio \(--keep-ratio\) must be in \(0, 1\]"):
        onnx_eprune.sweep(model, calib, [0.5, 0.0], kind="keep_ratio")


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_a_keep_ratio_sweep_runs_from_the_lightest_pruning_and_writes_what_prune_writes(mode):
    """Keep ratios come back in descending order (the lightest pruning first), each point
    the bytes of ``prune --keep-ratio``, every prunable group at round(R*C) channels."""
    from onnx_eprune.datasets import preprocess
    from onnx_eprune.demo import MODEL_FILE, SAMPLE_FILE, shipped

    model = onnx.load(str(shipped(MODEL_FILE)))
    calib = preprocess(np.load(str(shipped(SAMPLE_FILE)))["calib"][:64])
    points = onnx_eprune.sweep(model, calib, [0.5, 1.0, 0.75], kind="keep_ratio", mode=mode, device="cpu")
    assert [p.kind for p in points] == ["keep_ratio"] * 3 and [p.target for p in points] == [1.0, 0.75, 0.5]
    assert points[0].params_removed == 0.0 < points[1].params_removed < points[2].params_removed
    for p in points:
        alone = onnx_eprune.prune(model, calib, keep_ratio=p.target, mode=mode, device="cpu")
        assert p.model.SerializeToString() == alone.model.SerializeToString()
        kept = [(g["channels_before"], g["channels_after"]) for g in p.report["groups"] if not g["frozen"]]
        assert kept and all(k == round(p.target * c) for c, k in kept)


def test_cli_sweep_writes_the_sweep_folder(tmp_path, calib, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "c.npy", calib)
    out = tmp_path / "sweep"
    status = main(["sweep", str(model), "--calib", str(tmp_path / "c.npy"), "--flops-reduction", "0.2", "0.4",
                   "--report-dir", str(out), "--save-models", "--mode", "oneshot", "--method", "l1", "-q"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((out / "sweep.json").read_text())
    assert [r["target"] for r in record["runs"]] == [0.2, 0.4]
    assert all(r["macs_removed"] >= r["target"] for r in record["runs"])
    assert "| flops_reduction 0.4 |" in (out / "sweep.md").read_text()
    for t in ("0.2", "0.4"):
        onnx.checker.check_model(onnx.load(str(out / f"pruned_flops_reduction_{t}.onnx")))


def test_cli_sweep_over_keep_ratios(sweep_files, capsys):
    """--keep-ratio sweeps uniform keep ratios: rows from the lightest pruning on, one model
    per ratio with --save-models; a ratio out of (0, 1] fails before any work."""
    out = sweep_files / "out"
    assert main(_sweep_args(sweep_files, "--keep-ratio", "0.5", "0.8", "--save-models")) == 0, \
        capsys.readouterr().err
    record = json.loads((out / "sweep.json").read_text())
    assert [(r["kind"], r["target"]) for r in record["runs"]] == [("keep_ratio", 0.8), ("keep_ratio", 0.5)]
    assert 0 < record["runs"][0]["params_removed"] < record["runs"][1]["params_removed"]
    assert "| keep_ratio 0.5 |" in (out / "sweep.md").read_text()
    for t in ("0.5", "0.8"):
        onnx.checker.check_model(onnx.load(str(out / f"pruned_keep_ratio_{t}.onnx")))
    assert "keep_ratio (--keep-ratio) must be in (0, 1]" in run_error(capsys, _sweep_args(sweep_files, "--keep-ratio", "0.5",
                                                                             "0", "--report-dir",
                                                                             str(sweep_files / "o2")))
    assert "0.5 more than once" in run_error(capsys, _sweep_args(sweep_files, "--keep-ratio", "0.5", "0.5",
                                                                 "--report-dir", str(sweep_files / "o2")))
    assert not (sweep_files / "o2").exists()


def test_cli_sweep_prints_its_table(tmp_path, calib, capsys):
    """Without -q the command prints the Markdown table's rows, one per target, and the
    files it wrote."""
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "c.npy", calib)
    status = main(["sweep", str(model), "--calib", str(tmp_path / "c.npy"), "--sparsity", "0.2", "0.4",
                   "--report-dir", str(tmp_path / "sweep"), "--method", "l1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| sparsity")]
    assert [row.split("|")[1].strip() for row in rows] == ["sparsity 0.2", "sparsity 0.4"]
    assert "wrote " in out and str(tmp_path / "sweep" / "sweep.json") in out


def test_cli_sweep_errors_are_one_line(tmp_path, calib, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "c.npy", calib)
    (tmp_path / "file").write_text("x")
    base = ["sweep", str(model), "--calib", str(tmp_path / "c.npy")]
    assert "--labels needs --data" in run_error(capsys, base + ["--sparsity", "0.3", "--report-dir",
                                                                str(tmp_path / "o"), "--labels", "l.npy"])
    assert "is a file" in run_error(capsys, base + ["--sparsity", "0.3", "--report-dir", str(tmp_path / "file")])
    run_error(capsys, base + ["--sparsity", "1.5", "--report-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.fixture
def sweep_files(tmp_path, calib):
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    np.save(tmp_path / "data.npy", random_input(20, seed=3))
    return tmp_path


def _sweep_args(folder, *extra):
    return ["sweep", str(folder / "m.onnx"), "--calib", str(folder / "c.npy"), "--report-dir", str(folder / "out"),
            "--mode", "oneshot", "--method", "l1", "--device", "cpu", "-q", *extra]


def test_cli_sweep_refuses_a_target_twice(sweep_files, capsys):
    line = run_error(capsys, _sweep_args(sweep_files, "--sparsity", "0.3", "0.5", "0.3"))
    assert "0.3 more than once" in line
    assert not (sweep_files / "out").exists()


@pytest.mark.parametrize("labels, words", [(np.full(20, 10), "10 classes"), (np.full(20, 2.5), "2.5")])
def test_cli_sweep_refuses_labels_that_are_no_class_indices(sweep_files, capsys, labels, words):
    np.save(sweep_files / "labels.npy", labels)
    line = run_error(capsys, _sweep_args(sweep_files, "--sparsity", "0.3", "--data", str(sweep_files / "data.npy"),
                                         "--labels", str(sweep_files / "labels.npy")))
    assert words in line


def test_cli_sweep_with_labels_plots_the_accuracy(sweep_files, capsys):
    """With --data and --labels every target gets both models' accuracy on the data, and,
    with matplotlib, the plot (which then draws the accuracy too) is written."""
    import importlib.util

    np.save(sweep_files / "labels.npy", np.arange(20) % CLASSES)
    assert main(_sweep_args(sweep_files, "--sparsity", "0.3", "0.5", "--data", str(sweep_files / "data.npy"),
                            "--labels", str(sweep_files / "labels.npy"))) == 0
    runs = json.loads((sweep_files / "out" / "sweep.json").read_text())["runs"]
    assert [set(r["accuracy"]) for r in runs] == [{"original", "pruned"}] * 2
    assert (sweep_files / "out" / "sweep.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


@pytest.mark.parametrize("command", ["sweep", "search"])
def test_cli_latency_adds_the_timings_to_the_record_the_table_and_the_plot(sweep_files, capsys, command):
    """--latency: every run of the record holds both models' latencies, the printed table
    and the Markdown file a latency column, the plot (with matplotlib) a third panel."""
    import importlib.util

    if command == "sweep":
        argv = _sweep_args(sweep_files, "--sparsity", "0.3", "0.5", "--latency")
        record = sweep_files / "out" / "sweep.json"
    else:
        argv = ["search", str(sweep_files / "m.onnx"), "--calib", str(sweep_files / "c.npy"), "-o",
                str(sweep_files / "p.onnx"), "--max-error", "0.5", "--resolution", "0.2", "--report-dir",
                str(sweep_files / "out"), "--method", "l1", "--device", "cpu", "--latency"]
        record = sweep_files / "out" / "search.json"
    argv = [a for a in argv if a != "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    runs = json.loads(record.read_text())["runs"]
    assert runs and all(set(r["latency_ms"]) == {"original", "pruned"} for r in runs)
    assert "latency, ms at batch 1 / 32" in out
    assert "latency, ms at batch 1 / 32" in record.with_suffix(".md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        from PIL import Image

        width, height = Image.open(record.with_suffix(".png")).size
        assert width > 3 * height  # three panels side by side (two: 10 by 4 inches)


def test_cli_sweep_names_the_data_option_in_its_errors(sweep_files, capsys):
    """Held-out data the model cannot take is refused with a message that starts with --data."""
    np.save(sweep_files / "bad.npy", random_input(20, seed=3)[:, :2])
    line = run_error(capsys, _sweep_args(sweep_files, "--sparsity", "0.3", "--data", str(sweep_files / "bad.npy")))
    assert line.startswith("onnx-eprune: error: --data: ")
    assert not (sweep_files / "out").exists()


@pytest.mark.parametrize("during", ["sweep.md", "pruned_"])
def test_interrupted_sweep_leaves_no_files_and_no_folder(sweep_files, capsys, monkeypatch, during):
    """Interrupted while writing the sweep files or, after them, the models: the files
    already written and the folder the sweep created go."""
    from onnx_eprune import files

    real_open = open

    def interrupting(path, mode="r", *args, **kwargs):
        if "w" in mode and during in str(path):
            raise KeyboardInterrupt
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(files, "open", interrupting, raising=False)
    assert main(_sweep_args(sweep_files, "--sparsity", "0.3", "--save-models")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (sweep_files / "out").exists()
