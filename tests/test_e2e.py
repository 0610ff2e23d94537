"""End to end on the shipped LeNet-5 (Fashion-MNIST): the default job of ``onnx-eprune demo``."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_eprune
from onnx_eprune.cli import main
from onnx_eprune.datasets import fashion_mnist_available, load_fashion_mnist, preprocess
from onnx_eprune.demo import MODEL_FILE, SAMPLE_FILE, shipped
from onnx_eprune.evaluate import accuracy


@pytest.fixture(scope="module")
def lenet():
    model = onnx.load(str(shipped(MODEL_FILE)))
    sample = np.load(str(shipped(SAMPLE_FILE)))
    return model, preprocess(sample["calib"]), preprocess(sample["test_x"]), sample["test_y"]


@pytest.fixture(scope="module")
def pruned55(lenet):
    model, calib, _, _ = lenet
    return onnx_eprune.prune(model, calib, sparsity=0.55, device="cpu")


def test_keep_ratio_one_is_the_same_function(lenet):
    model, calib, test_x, _ = lenet
    result = onnx_eprune.prune(model, calib[:256], keep_ratio=1.0, device="cpu")
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": test_x})[0] for m in (model, result.model))
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-4


def test_sparsity_055_keeps_accuracy(lenet, pruned55):
    model, _, test_x, test_y = lenet
    report = pruned55.report
    assert 0.55 <= report["params"]["removed_fraction"] <= 0.56
    onnx.checker.check_model(pruned55.model, full_check=True)
    before = accuracy(model, test_x, test_y, ["CPUExecutionProvider"])
    after = accuracy(pruned55.model, test_x, test_y, ["CPUExecutionProvider"])
    # measured -0.2 points on this 2000-image slice; the bar leaves room for BLAS differences
    assert before - after <= 0.01


@pytest.mark.parametrize("labels, message", [
    (lambda y: y[:-1], "labels for"),
    (lambda y: y + 10, "classes"),
    (lambda y: np.eye(10)[y][:, :5], "shape"),
])
def test_accuracy_refuses_labels_that_do_not_fit(lenet, labels, message):
    """accuracy() checks its labels as evaluate does: a short, out-of-range or wrongly
    shaped label array is a UsageError, not a wrong figure (argmax == y broadcast or
    compared against impossible classes)."""
    model, _, test_x, test_y = lenet
    with pytest.raises(onnx_eprune.UsageError, match=message):
        accuracy(model, test_x, labels(test_y), ["CPUExecutionProvider"])


def test_entropic_beats_random_at_equal_sparsity(lenet, pruned55):
    model, calib, test_x, test_y = lenet
    rnd = onnx_eprune.prune(model, calib, sparsity=0.55, method="random", device="cpu")
    ent = accuracy(pruned55.model, test_x, test_y, ["CPUExecutionProvider"])
    assert ent > accuracy(rnd.model, test_x, test_y, ["CPUExecutionProvider"])


def test_cross_validated_ridges_keep_more_with_few_samples(lenet):
    """With 100 samples the classifier's Gemm layers (400, 120 and 84 inputs) see fewer
    rows than features. The default (auto-thin) cross-validates their ridges as auto does
    and keeps more accuracy than a fixed 0.01 (measured 1.1 and 1.4 points more on this
    slice); the reports say which ridge each got and which layers were fitted thin."""
    model, calib, test_x, test_y = lenet
    for sparsity in (0.5, 0.7):
        fixed = onnx_eprune.prune(model, calib[:100], sparsity=sparsity, refit_ridge=0.01, device="cpu")
        default = onnx_eprune.prune(model, calib[:100], sparsity=sparsity, device="cpu")
        auto = onnx_eprune.prune(model, calib[:100], sparsity=sparsity, refit_ridge="auto", device="cpu")
        assert default.report["refit_ridge"] == "auto-thin" and "refit_ridges" not in fixed.report
        thin = fixed.report["thin_refits"]
        assert thin and all(v["rows"] == 100 < 2 * v["features"] and not v["cross_validated"] for v in thin.values())
        for report in (default.report, auto.report):
            assert report["thin_refits"].keys() == thin.keys()
            assert all(v["cross_validated"] for v in report["thin_refits"].values())
        assert set(default.report["refit_ridges"]) == set(thin) <= set(auto.report["refit_ridges"])
        assert all(default.report["refit_ridges"][c] == auto.report["refit_ridges"][c] > 0.01 for c in thin)
        gain = accuracy(default.model, test_x, test_y, ["CPUExecutionProvider"]) - \
            accuracy(fixed.model, test_x, test_y, ["CPUExecutionProvider"])
        assert gain >= 0.005


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    assert main(["demo", "-o", str(out), "-q"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("dataset", [True, False])
def test_demo_prints_the_accuracy_it_measured(tmp_path, capsys, monkeypatch, dataset):
    """The demo's accuracy line is the written model's accuracy on the test images it names:
    the full test split when Fashion-MNIST is installed, else the shipped slice."""
    from onnx_eprune import demo

    if not dataset:
        monkeypatch.setattr(demo, "fashion_mnist_available", lambda: False)
    elif not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "demo.onnx"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    line, = (ln for ln in printed.splitlines() if ln.strip().startswith("accuracy"))
    after = float(line.split("->")[1].split("%")[0])
    if dataset:
        test_x, test_y = load_fashion_mnist("test")
        assert "full Fashion-MNIST test split (10,000 images)" in line
    else:
        sample = np.load(str(shipped(SAMPLE_FILE)))
        test_x, test_y = sample["test_x"], sample["test_y"]
        assert f"shipped test slice ({len(test_y):,} images" in line
    measured = accuracy(onnx.load(str(out)), preprocess(test_x), test_y, ["CPUExecutionProvider"])
    assert after == pytest.approx(100 * measured, abs=0.005)
    assert f"wrote {out}" in printed


def test_cli_prune_report_on_lenet(tmp_path, lenet, capsys):
    model, calib, _, _ = lenet
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", calib[:512])
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib",
                 str(tmp_path / "c.npy"), "--flops-reduction", "0.3", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["macs"]["removed_fraction"] >= 0.3
    assert report["provider"] == "CPUExecutionProvider"
    assert set(report["seconds"]) >= {"calibrate", "select", "rewrite", "validate", "total"}
    out = capsys.readouterr().out
    assert "MACs" in out and "wrote" in out


def test_same_model_and_report_whatever_the_thread_count(tmp_path):
    """Two processes with 1 and 2 threads (onnxruntime and BLAS): byte-identical models,
    identical reports apart from timings."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "calib.npy", preprocess(np.load(str(shipped(SAMPLE_FILE)))["calib"][:256]))
    outputs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        out, report = tmp_path / f"m{threads}.onnx", tmp_path / f"r{threads}.json"
        subprocess.run([sys.executable, "-m", "onnx_eprune.cli", "prune", str(shipped(MODEL_FILE)), "-o", str(out),
                        "--calib", str(tmp_path / "calib.npy"), "--sparsity", "0.5", "--device", "cpu", "-q",
                        "--report", str(report)], check=True, env=env)
        rep = json.loads(report.read_text())
        rep.pop("seconds")
        rep.pop("output")
        outputs.append((out.read_bytes(), rep))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]
