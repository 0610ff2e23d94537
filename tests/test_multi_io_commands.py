"""calibrate / prune --stats, sweep, evaluate and inspect, through the API and the CLI, on the
multi-input and multi-output CNNs of test_multi_io_models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_multi_io_models import (IMAGE2, SEG, VECTOR, argmax_output, feeds_for, prune, two_heads, two_images,
                                  vector_input)

import onnx_eprune
from models import CLASSES, INPUT, OUTPUT
from onnx_eprune.cli import main
from onnx_eprune.errors import UsageError

ERROR = "onnx-eprune: error: "

MULTI_INPUT: dict[str, Callable[[], onnx.ModelProto]] = {
    "two_images_concat": lambda: two_images("concat"),
    "two_images_add": lambda: two_images("add"),
    "vector_concat_pooled": lambda: vector_input("concat"),
}


def save(model: onnx.ModelProto, path: Path) -> str:
    """``model`` written to ``path``, as a string for the CLI."""
    onnx.save(model, path)
    return str(path)


def save_npz(feeds: dict[str, np.ndarray], path: Path) -> str:
    """``feeds`` written to ``path`` as an .npz with one array per input name."""
    np.savez(path, **feeds)
    return str(path)


def halves(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``feeds`` cut into two disjoint shards along the samples."""
    n = next(iter(feeds.values())).shape[0] // 2
    return [{k: v[:n] for k, v in feeds.items()}, {k: v[n:] for k, v in feeds.items()}]


def labels_for(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random class indices."""
    return np.random.default_rng(seed).integers(0, CLASSES, n)


def assert_same_pruning(a: onnx_eprune.pipeline.PruneResult, b: onnx_eprune.pipeline.PruneResult) -> None:
    """Same channel counts and kept channels per group, the same initializers within 1e-5 (relative to their scale)."""
    def kept(r: onnx_eprune.pipeline.PruneResult) -> list[tuple]:
        return [(g["channels_after"], g.get("kept_channels")) for g in r.report["groups"]]
    assert kept(a) == kept(b)
    assert any(g["channels_after"] < g["channels_before"] for g in a.report["groups"])
    wa = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in a.model.graph.initializer}
    wb = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in b.model.graph.initializer}
    assert set(wa) == set(wb)
    for name, va in wa.items():
        assert va.shape == wb[name].shape, name
        assert np.abs(va - wb[name]).max() <= 1e-5 * max(1.0, np.abs(va).max()), name


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, code: int = 2) -> str:
    """Run the CLI expecting exit ``code`` and one stderr line starting "onnx-eprune: error: "; that line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR), err
    return err[0]


@pytest.mark.parametrize("case", list(MULTI_INPUT), ids=list(MULTI_INPUT))
def test_shards_equal_one_run(case: str, tmp_path: Path) -> None:
    """Two dict-calibrated shards (one saved, one in memory) prune like one one-shot run over all samples."""
    model = MULTI_INPUT[case]()
    feeds = feeds_for(model, 96, seed=1)
    first, second = (onnx_eprune.calibrate(model, part, device="cpu") for part in halves(feeds))
    first.save(tmp_path / "s0.npz")
    merged = prune(model, None, stats=[tmp_path / "s0.npz", second], sparsity=0.3)
    one = prune(model, feeds, sparsity=0.3, mode="oneshot")
    assert merged.report["samples"] == 96
    assert_same_pruning(merged, one)


def test_cli_calibrate_shards_then_prune(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI calibrate on two .npz shards of a two-image model, prune --stats both: as one one-shot run."""
    model = two_images("add")
    path = save(model, tmp_path / "m.onnx")
    feeds = feeds_for(model, 64, seed=2)
    stats = []
    for i, part in enumerate(halves(feeds)):
        stats.append(str(tmp_path / f"s{i}.npz"))
        assert main(["calibrate", path, "--calib", save_npz(part, tmp_path / f"c{i}.npz"), "--stats-out", stats[-1],
                     "--device", "cpu", "-q"]) == 0
    out = tmp_path / "p.onnx"
    assert main(["prune", path, "-o", str(out), "--stats", stats[0], "--stats", stats[1], "--keep-ratio", "0.5",
                 "--device", "cpu", "-q"]) == 0
    assert capsys.readouterr().err == ""
    one = prune(model, feeds, keep_ratio=0.5, mode="oneshot")
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    for init in one.model.graph.initializer:
        want = numpy_helper.to_array(init)
        assert got[init.name].shape == want.shape, init.name
        np.testing.assert_allclose(got[init.name], want, atol=1e-5 * max(1.0, np.abs(want).max()), err_msg=init.name)


def test_cli_calibrate_npz_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An .npz lacking one of the two inputs is a one-line usage error naming that input."""
    model = two_images("concat")
    calib = save_npz({INPUT: feeds_for(model, 8, seed=0)[INPUT]}, tmp_path / "c.npz")
    line = cli_error(["calibrate", save(model, tmp_path / "m.onnx"), "--calib", calib, "--stats-out",
                      str(tmp_path / "s.npz"), "--device", "cpu", "-q"], capsys)
    assert IMAGE2 in line
    assert not (tmp_path / "s.npz").exists()


def test_sweep_two_heads_reports_every_output() -> None:
    """sweep on a classifier + segmentation model: fidelity for both outputs, top-1 agreement and
    accuracy only from the (first) classifier output."""
    model = two_heads()
    data = feeds_for(model, 40, seed=5)
    points = onnx_eprune.sweep(model, feeds_for(model, 64, seed=1), [0.5, 0.3], data=data, labels=labels_for(40),
                               device="cpu")
    assert [p.target for p in points] == [0.3, 0.5]
    for p in points:
        assert list(p.fidelity) == [OUTPUT, SEG]
        assert "top1_agreement" in p.fidelity[OUTPUT] and "top1_agreement" not in p.fidelity[SEG]
        assert p.fidelity_on == "40 held-out samples"
        assert set(p.accuracy) == {"original", "pruned"} and all(0 <= v <= 1 for v in p.accuracy.values())
    assert points[0].params_removed < points[1].params_removed


def test_sweep_two_inputs_without_data_measures_on_calibration() -> None:
    """Without data, a two-input sweep measures on the calibration samples (one dict, both inputs)."""
    model = vector_input("unsqueeze")
    points = onnx_eprune.sweep(model, feeds_for(model, 48, seed=1), [0.3], device="cpu")
    assert points[0].fidelity_on.startswith("the first 48 calibration samples")
    assert list(points[0].fidelity) == [OUTPUT]


def test_cli_sweep_two_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI sweep of a two-image model with --data .npz and --labels writes a sweep.json with both targets."""
    model = two_images("concat")
    path = save(model, tmp_path / "m.onnx")
    calib = save_npz(feeds_for(model, 48, seed=1), tmp_path / "c.npz")
    data = save_npz(feeds_for(model, 24, seed=2), tmp_path / "d.npz")
    np.save(tmp_path / "y.npy", labels_for(24))
    assert main(["sweep", path, "--calib", calib, "--sparsity", "0.3", "0.5", "--data", data, "--labels",
                 str(tmp_path / "y.npy"), "--report-dir", str(tmp_path / "r"), "--device", "cpu", "-q"]) == 0
    runs = json.loads((tmp_path / "r" / "sweep.json").read_text())["runs"]
    assert [r["target"] for r in runs] == [0.3, 0.5]
    assert all(list(r["fidelity"]) == [OUTPUT] and r["accuracy"] is not None for r in runs)


def test_cli_sweep_data_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--data lacking the vector input is a one-line usage error that names --data."""
    model = vector_input("concat")
    path = save(model, tmp_path / "m.onnx")
    calib = save_npz(feeds_for(model, 32, seed=1), tmp_path / "c.npz")
    data = save_npz({INPUT: feeds_for(model, 8, seed=2)[INPUT]}, tmp_path / "d.npz")
    line = cli_error(["sweep", path, "--calib", calib, "--sparsity", "0.3", "--data", data, "--report-dir",
                      str(tmp_path / "r"), "--device", "cpu", "-q"], capsys)
    assert "--data" in line and VECTOR in line
    assert not (tmp_path / "r").exists()


def test_evaluate_vector_output_model() -> None:
    """evaluate on a two-input, two-output model: fidelity per output (top-1 agreement on every
    2-D output, the [N,8] features too), accuracy from the logits."""
    model = vector_input("concat", vector_output=True)
    pruned = prune(model, feeds_for(model, 64, seed=1), sparsity=0.3).model
    data = feeds_for(model, 20, seed=4)
    result = onnx_eprune.evaluate(model, pruned, data, labels=labels_for(20), device="cpu")
    assert result["samples"] == 20
    assert list(result["outputs"]) == [OUTPUT, "gemm_v"]
    assert result["outputs"]["gemm_v"]["relative_error"] <= 1e-6  # gemm_v is frozen: the output is untouched
    assert all("top1_agreement" in result["outputs"][name] for name in (OUTPUT, "gemm_v"))
    assert set(result["accuracy"]) == {"original", "pruned", "per_class"}
    assert result["size"]["pruned"]["params"] < result["size"]["original"]["params"]


def test_cli_evaluate_json_two_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI evaluate --data .npz --json on a two-image model: fidelity of y; no accuracy without labels."""
    model = two_images("add")
    pruned = prune(model, feeds_for(model, 48, seed=1), sparsity=0.3).model
    data = save_npz(feeds_for(model, 16, seed=3), tmp_path / "d.npz")
    assert main(["evaluate", save(model, tmp_path / "a.onnx"), save(pruned, tmp_path / "b.onnx"), "--data", data,
                 "--device", "cpu", "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["outputs"]) == [OUTPUT] and "accuracy" not in result
    assert 0 <= result["outputs"][OUTPUT]["top1_agreement"] <= 1


def test_cli_evaluate_table_two_heads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI evaluate (table) with labels on a two-head model prints a line per output and the accuracy."""
    model = two_heads()
    pruned = prune(model, feeds_for(model, 48, seed=1), sparsity=0.3).model
    data = save_npz(feeds_for(model, 16, seed=3), tmp_path / "d.npz")
    np.save(tmp_path / "y.npy", labels_for(16))
    assert main(["evaluate", save(model, tmp_path / "a.onnx"), save(pruned, tmp_path / "b.onnx"), "--data", data,
                 "--labels", str(tmp_path / "y.npy"), "--device", "cpu", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"output {OUTPUT}:" in out and f"output {SEG}:" in out and "accuracy: original" in out


def _first_output_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its graph outputs in reverse order (the logits ``y`` last)."""
    outputs = list(model.graph.output)[::-1]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model


@pytest.mark.parametrize("build", [two_heads, argmax_output], ids=["seg_first", "argmax_label_first"])
def test_labels_when_first_output_is_no_classifier(build: Callable[[], onnx.ModelProto]) -> None:
    """Labels with a first output that is not (samples, classes): a UsageError, not a crash."""
    model = _first_output_last(build())
    data = feeds_for(model, 12, seed=4)
    with pytest.raises(UsageError, match="first output"):
        onnx_eprune.evaluate(model, model, data, labels=labels_for(12), device="cpu")


def test_labels_seg_first_broadcast_accuracy() -> None:
    """Labels with a seg map first and 16 samples: refused, never an accuracy above 1."""
    model = _first_output_last(two_heads())
    data = feeds_for(model, 16, seed=4)
    with pytest.raises(UsageError):
        onnx_eprune.evaluate(model, model, data, labels=np.zeros(16, np.int64), device="cpu")


def test_cli_sweep_labels_seg_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI sweep --labels on a model whose first output is a seg map: a one-line error, no traceback."""
    model = _first_output_last(two_heads())
    path = save(model, tmp_path / "m.onnx")
    calib = save_npz(feeds_for(model, 48, seed=1), tmp_path / "c.npz")
    data = save_npz(feeds_for(model, 12, seed=2), tmp_path / "d.npz")
    np.save(tmp_path / "y.npy", labels_for(12))
    cli_error(["sweep", path, "--calib", calib, "--sparsity", "0.3", "--data", data, "--labels",
               str(tmp_path / "y.npy"), "--report-dir", str(tmp_path / "r"), "--device", "cpu", "-q"], capsys)


def test_inspect_two_inputs_api() -> None:
    """inspect on a two-image model: zeros for both fixed inputs and a dict sample agree."""
    model = two_images("concat")
    zeros = onnx_eprune.inspect(model)
    sampled = onnx_eprune.inspect(model, feeds_for(model, 2, seed=0))
    assert zeros == sampled
    assert zeros["prunable_groups"] == 3 and 0 < zeros["prunable_mac_fraction"] <= 1


def test_cli_inspect_two_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CLI inspect --json of a two-input model: alone, with --calib .npz, the same groups."""
    model = vector_input("unsqueeze")
    path = save(model, tmp_path / "m.onnx")
    assert main(["inspect", path, "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main(["inspect", path, "--calib", save_npz(feeds_for(model, 4, seed=0), tmp_path / "c.npz"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == alone
    assert sorted(sorted(g["producers"]) for g in alone["groups"] if g["prunable"]) == \
        [["conv_a", "gemm_v"], ["conv_c"]]


def test_cli_inspect_input_shape_with_two_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--input-shape is one shape for every input: with a second input of another shape, a usage error naming it."""
    path = save(vector_input("unsqueeze"), tmp_path / "m.onnx")
    line = cli_error(["inspect", path, "--input-shape", "1,3,16,16"], capsys)
    assert repr(VECTOR) in line
