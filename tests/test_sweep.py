"""``onnx_eprune.sweep`` and ``onnx-eprune sweep``: one model at several targets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, random_input, run_model
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


def test_sweep_without_data_measures_on_calibration_samples(calib):
    """... and says so, with a note when the re-fit fitted a layer to fewer than 2 of them
    per kept input (the Gemm: 64 samples for 16 features per kept channel)."""
    points = onnx_eprune.sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.4], mode="oneshot", method="l1")
    assert points[0].fidelity_on.startswith(f"the first {min(256, len(calib))} calibration samples")
    assert "the re-fit was fitted to these samples" in points[0].fidelity_on and points[0].report["thin_refits"]
    assert points[0].accuracy is None


def test_sweep_refuses_labels_without_data_and_unknown_kinds(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    with pytest.raises(onnx_eprune.UsageError, match="labels need"):
        onnx_eprune.sweep(model, calib, [0.3], labels=np.zeros(4))
    with pytest.raises(onnx_eprune.UsageError, match="one of"):
        onnx_eprune.sweep(model, calib, [0.3], kind="keep_ratio")


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
