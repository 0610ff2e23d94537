"""``onnx_eprune.search`` and ``onnx-eprune search``: the largest target within a tolerance."""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import numpy as np
import onnx
import pytest

import onnx_eprune
from cli_helpers import run_error
from models import conv_bn_relu_pool_flatten_gemm, intermediate_output, run_model
from onnx_eprune.cli import main
from onnx_eprune.search import _bisect, search
from onnx_eprune.sweep import SweepPoint


class _Threshold:
    """A stand-in for the measurer: a target passes when it is at most ``limit``."""

    def __init__(self, limit: float) -> None:
        self.limit, self.tried, self.reach = limit, [], 1.0

    def point(self, value: float) -> SweepPoint:
        self.tried.append(value)
        return SweepPoint("sparsity", value, value, value, {"y": {"relative_error": value}}, "", 0.0)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 64, 99])
def test_bisection_finds_the_largest_passing_step_in_log_time(steps):
    """Against brute force on every threshold between the grid steps: the largest step that
    passes is found (none, some, all), with ceil(log2(steps + 1)) runs at most."""
    resolution = 0.01
    for limit_step in range(steps + 1):
        fake = _Threshold((limit_step + 0.5) * resolution)
        points, best = _bisect(fake, steps, resolution, lambda p: p.target <= fake.limit)
        passing = [p.target for p in points if p.target <= fake.limit]
        assert (best.target if best else None) == (max(passing) if passing else None)
        expected = max((i * resolution for i in range(1, steps + 1) if i * resolution <= fake.limit), default=None)
        assert (max(passing) if passing else None) == pytest.approx(expected) if expected else not passing
        assert len(points) <= math.ceil(math.log2(steps + 1))
        assert len(set(fake.tried)) == len(fake.tried)  # no target twice


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_search_keeps_the_largest_target_within_the_agreement(calib, test_x, mode):
    """The model returned is the one measured: its agreement with the original on the held-out
    data, recomputed here, meets the tolerance, and the next grid step, which bisection must
    have tried unless the chosen one is the last, does not."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    result = search(model, calib, min_agreement=0.8, data=test_x, resolution=0.05, mode=mode, method="l1",
                    device="cpu")
    best = result.best
    assert best is not None and result.model is best.model
    onnx.checker.check_model(result.model)
    got, ref = run_model(result.model, test_x)["y"], run_model(model, test_x)["y"]
    assert np.mean(got.argmax(1) == ref.argmax(1)) == pytest.approx(best.fidelity["y"]["top1_agreement"])
    assert best.fidelity["y"]["top1_agreement"] >= 0.8 and best.params_removed >= best.target
    following = [p for p in result.points if p.target == pytest.approx(best.target + 0.05)]
    if best.target + 0.05 <= result.reach:
        assert following and following[0].fidelity["y"]["top1_agreement"] < 0.8
    assert [p.target for p in result.points] == sorted(p.target for p in result.points)
    assert [p.model is not None for p in result.points] == [p is best for p in result.points]
    assert all(result.within(p) == (p.fidelity["y"]["top1_agreement"] >= 0.8) for p in result.points)
    assert 0 < result.reach < 1 and result.as_dict()["best"] == best.target


def test_search_by_accuracy_drop_and_by_flops(calib, test_x):
    """``max_drop`` is in points of accuracy: labels equal to the original's predictions make
    its accuracy 100%, so a drop of 40 points allows an agreement of 60%."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    labels = run_model(model, test_x)["y"].argmax(1)
    result = search(model, calib, max_drop=40.0, kind="flops_reduction", data=test_x, labels=labels,
                    resolution=0.1, mode="oneshot", method="l1")
    assert result.kind == "flops_reduction" and result.best is not None
    for p in result.points:
        drop = 100 * (p.accuracy["original"] - p.accuracy["pruned"])
        assert p.accuracy["original"] == 1.0 and result.within(p) == (drop <= 40.0)
        assert p.macs_removed >= p.target
    assert not any(result.within(p) for p in result.points if p.target > result.best.target)


def test_search_measures_on_calibration_samples_without_data_and_warns(calib, caplog):
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        result = search(conv_bn_relu_pool_flatten_gemm(True), calib, max_error=0.5, resolution=0.1, mode="oneshot")
    assert "calibration samples" in caplog.text and "optimistic" in caplog.text
    assert all(p.fidelity_on.startswith("the first") for p in result.points)


def test_search_refuses_bad_tolerances_and_options(calib, test_x):
    model = conv_bn_relu_pool_flatten_gemm(True)
    bad = [({}, "exactly one tolerance"), ({"max_drop": 1, "max_error": 0.1}, "exactly one tolerance"),
           ({"min_agreement": 1.5}, "fraction in"), ({"min_agreement": 0}, "fraction in"),
           ({"max_error": 0}, "above 0"), ({"max_error": float("nan")}, "finite"), ({"max_drop": True}, "finite"),
           ({"max_drop": 0.5, "data": test_x}, "labels"), ({"max_error": 0.1, "resolution": 0.7}, "resolution"),
           ({"max_error": 0.1, "resolution": 0}, "resolution"), ({"max_error": 0.1, "kind": "keep_ratio"}, "one of"),
           ({"max_error": 0.1, "sparsity": 0.5}, "chooses its own targets"),
           ({"max_error": 0.1, "labels": np.zeros(4)}, "labels need data")]
    for kwargs, match in bad:
        with pytest.raises(onnx_eprune.UsageError, match=match):
            search(model, calib, **kwargs)


def test_search_refuses_agreement_on_an_output_without_classes(calib):
    """A first output that is a feature map, not (samples, classes) scores: top-1 agreement
    has no meaning there, so the search stops before pruning and names max_error."""
    model = intermediate_output()
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(outputs[::-1])  # the features first
    with pytest.raises(onnx_eprune.UsageError, match="max_error"):
        search(model, calib, min_agreement=0.9)


def _files(tmp_path, calib, test_x, model=None):
    model = model or conv_bn_relu_pool_flatten_gemm(True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    np.save(tmp_path / "x.npy", test_x)
    np.save(tmp_path / "y.npy", run_model(model, test_x)["y"].argmax(1))
    return tmp_path / "m.onnx"


def test_cli_search_writes_the_model_and_the_folder(tmp_path, calib, test_x, capsys):
    model = _files(tmp_path, calib, test_x)
    out, folder = tmp_path / "p.onnx", tmp_path / "rep"
    status = main(["search", str(model), "-o", str(out), "--calib", str(tmp_path / "c.npy"), "--data",
                   str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--max-drop", "10",
                   "--resolution", "0.1", "--mode", "oneshot", "--method", "l1", "--report-dir", str(folder)])
    printed = capsys.readouterr().out
    assert status == 0
    record = json.loads((folder / "search.json").read_text())
    best = record["search"]["best"]
    assert record["search"]["criterion"] == "max_drop" and record["search"]["tolerance"] == 10
    chosen = [r for r in record["runs"] if r["target"] == best]
    assert chosen and chosen[0]["within_tolerance"]
    assert all(r["within_tolerance"] == (r["target"] <= best) for r in record["runs"])
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    assert json.loads((folder / "report.json").read_text())["params"]["removed_fraction"] == pytest.approx(
        chosen[0]["params_removed"])
    assert f"**{best:g}**" in (folder / "search.md").read_text() and "| within tolerance |" in printed
    plots = importlib.util.find_spec("matplotlib") is not None
    assert all((folder / name).exists() == plots for name in ("search.png", "channels.png", "allocation.png"))
    assert f"accuracy drop <= 10 points: {best:g} (" in printed and f"wrote {out}" in printed


def test_cli_search_errors_are_one_line_and_write_nothing(tmp_path, calib, test_x, capsys):
    model = _files(tmp_path, calib, test_x)
    out = tmp_path / "p.onnx"
    base = ["search", model, "-o", out, "--calib", tmp_path / "c.npy"]
    assert "--labels" in run_error(capsys, base + ["--max-drop", "0.5"])
    assert "--data" in run_error(capsys, base + ["--max-error", "0.1", "--labels", tmp_path / "y.npy"])
    assert "--resolution" in run_error(capsys, base + ["--max-error", "0.1", "--resolution", "2"])
    assert "--min-agreement" in run_error(capsys, base + ["--min-agreement", "2"])
    assert "is the input model" in run_error(capsys, ["search", model, "-o", model, "--calib", tmp_path / "c.npy",
                                                      "--max-error", "0.1"])
    line = run_error(capsys, base + ["--max-error", "1e-12", "--mode", "oneshot"], code=1)
    assert "no target met the tolerance" in line and "nothing was written" in line
    assert not out.exists()
