"""Round trips and repeated pruning, through the Python API and the command line.

Attacks what a user does with a model this tool already pruned:

- prune it again: each run's sparsity / MAC target is relative to the model it is given, so
  0.5 then 0.5 lands near 0.75 of the original (each run within a point of its own target);
  the second report starts where the first ended, its figures match parameters and MACs
  counted independently on the files, its fidelity is the second model's against the first,
  and the kept-channel indices of both reports compose into the channels the file holds;
- targets that remove nothing (``sparsity`` / ``flops_reduction`` 0.0, ``keep_ratio`` 1.0)
  on an original and on a pruned model give the same graph back and one more metadata entry;
- save -> load -> prune again (API and CLI give the same bytes), ``PruneResult.save`` to
  several paths, a second run that must not overwrite the first one's output it reads,
  statistics of the original given for the pruned model, a failed re-prune that leaves the
  existing output alone, determinism of a whole chain;
- prune -> inspect -> evaluate chains agreeing on parameters, MACs and file sizes, and
  ``evaluate`` of a pruned model against itself (an identical copy with its nodes in another
  order);
- a pruned model edited by hand and pruned again: nodes renamed, tensors renamed, nodes put
  in another topological order, nodes put out of order, unnamed nodes (named ``OpType#index``
  by the tool) next to nodes it named in an earlier run, provenance metadata overwritten.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_eprune
from models import (concat_branches, conv_bn_relu_pool_flatten_gemm, conv_gemm_costs, depthwise, random_input,
                    relative_error, run_model, wide_cnn)
from onnx_eprune import EPruneError, UsageError
from onnx_eprune.cli import main

FAST = {"method": "l1", "mode": "oneshot", "device": "cpu"}
KEY = "onnx_eprune"
LENET = Path(onnx_eprune.__file__).resolve().parents[1] / "models" / "lenet5_fmnist.onnx"
LENET_DATA = LENET.parent / "fashion_mnist_sample.npz"


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return random_input(64, seed=1)


@pytest.fixture(scope="module")
def chain(x):
    """wide_cnn (16/32/64 channels) pruned at sparsity 0.5 twice (l1, one-shot)."""
    model = wide_cnn()
    once = onnx_eprune.prune(model, x, sparsity=0.5, **FAST)
    twice = onnx_eprune.prune(once.model, x, sparsity=0.5, **FAST)
    return model, once, twice


def _runs(model: onnx.ModelProto) -> list:
    values = [p.value for p in model.metadata_props if p.key == KEY]
    assert len(values) == 1, values
    return json.loads(values[0])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _reorder(model: onnx.ModelProto, order: list[int]) -> onnx.ModelProto:
    out = _copy(model)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in order)
    return out


def _kept(report: dict) -> dict[str, list[int]]:
    """producer names -> kept channel indices, for every pruned group of a report."""
    return {",".join(g["producers"]): g["kept_channels"] for g in report["groups"] if "kept_channels" in g}


def _weight(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[index]))


def _error_line(capsys, argv: list[str], code: int) -> str:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("onnx-eprune: error: "), err
    return lines[-1]


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- pruning a pruned model again: the figures ---------------------------------------------------

def test_half_then_half_reaches_three_quarters_of_the_original(chain):
    """Sparsity 0.5 twice: each run removes at least half of what it was given (within a point:
    wide_cnn's granularity allows it), the second starts where the first ended, and together
    they remove 1 - 0.5 * 0.5 = 0.75 of the original's parameters (up to the two overshoots),
    all counted independently on the files."""
    model, once, twice = chain
    counted = [conv_gemm_costs(m) for m in (model, once.model, twice.model)]
    for run, (before, after) in zip((once, twice), zip(counted, counted[1:])):
        assert (run.report["params"]["before"], run.report["params"]["after"]) == (before[0], after[0])
        assert (run.report["macs"]["before"], run.report["macs"]["after"]) == (before[1], after[1])
        removed = run.report["params"]["removed_fraction"]
        assert 0.5 <= removed <= 0.51
        assert removed == pytest.approx(1 - after[0] / before[0], abs=1e-6)
    compound = 1 - counted[2][0] / counted[0][0]
    assert 0.75 <= compound <= 0.76
    assert compound == pytest.approx(1 - (1 - once.report["params"]["removed_fraction"])
                                     * (1 - twice.report["params"]["removed_fraction"]), abs=1e-5)


def test_half_then_half_on_lenet5_with_the_default_method():
    """The shipped LeNet-5, entropic and sequential (the defaults), 256 samples: 0.5 twice gives
    a valid model near 0.75 of the original's parameters, the metadata lists both runs, chained,
    and the twice-pruned model agrees with the original on most test images."""
    data = np.load(LENET_DATA)
    calib, test_x = data["calib"][:256].astype(np.float32), data["test_x"][:500].astype(np.float32)
    model = onnx.load(str(LENET))
    once = onnx_eprune.prune(model, calib, sparsity=0.5, device="cpu")
    twice = onnx_eprune.prune(once.model, calib, sparsity=0.5, device="cpu")
    onnx.checker.check_model(twice.model, full_check=True)
    for run in (once, twice):
        assert 0.5 <= run.report["params"]["removed_fraction"] <= 0.51
    p0, p2 = conv_gemm_costs(model)[0], conv_gemm_costs(twice.model)[0]
    assert 0.75 <= 1 - p2 / p0 <= 0.76
    runs = _runs(twice.model)
    assert len(runs) == 2 and runs[0] == _runs(once.model)[0]
    assert runs[0]["params"] == [p0, runs[1]["params"][0]] and runs[1]["params"][1] == p2
    assert runs[1]["macs"][0] == runs[0]["macs"][1] == once.report["macs"]["after"]
    ref, got = run_model(model, test_x), run_model(twice.model, test_x)
    name = model.graph.output[0].name
    assert np.mean(ref[name].argmax(1) == got[name].argmax(1)) >= 0.8


def test_flops_half_then_half_compounds_on_the_macs(x):
    """--flops-reduction 0.5 twice removes at least 0.75 of the original MACs, counted on the
    file, and the second report's figures are relative to the model it was given."""
    model = wide_cnn()
    once = onnx_eprune.prune(model, x, flops_reduction=0.5, **FAST)
    twice = onnx_eprune.prune(once.model, x, flops_reduction=0.5, **FAST)
    macs = [conv_gemm_costs(m)[1] for m in (model, once.model, twice.model)]
    assert twice.report["macs"]["before"] == once.report["macs"]["after"] == macs[1]
    assert twice.report["macs"]["removed_fraction"] == pytest.approx(1 - macs[2] / macs[1], abs=1e-6)
    assert twice.report["macs"]["removed_fraction"] >= 0.5
    assert 0.75 <= 1 - macs[2] / macs[0] <= 0.78


def test_keep_ratio_twice_keeps_the_rounded_count_of_the_rounded_count(x):
    """--keep-ratio 0.75 twice (any count allowed): every group keeps round(0.75 *
    round(0.75 * C)) channels, as the weights in the file show."""
    model = wide_cnn()
    once = onnx_eprune.prune(model, x, keep_ratio=0.75, round_to=1, **FAST)
    twice = onnx_eprune.prune(once.model, x, keep_ratio=0.75, round_to=1, **FAST)
    for producer, width in (("conv_1", 16), ("conv_4", 32), ("gemm_8", 64)):
        rows = _weight(twice.model, producer).shape[0]
        assert rows == round(0.75 * round(0.75 * width)), producer
    assert {",".join(g["producers"]): g["channels_before"] for g in twice.report["groups"] if not g["frozen"]} == \
        {",".join(g["producers"]): g["channels_after"] for g in once.report["groups"] if not g["frozen"]}


def test_second_report_starts_where_the_first_ended_and_measures_against_its_own_input(chain, x):
    """Per group, the second run's channels_before are the first run's channels_after, its kept
    indices index the pruned model's channels, and its fidelity on the calibration samples is
    the second model's against the first (recomputed here), not against the original."""
    model, once, twice = chain
    first = {",".join(g["producers"]): g for g in once.report["groups"]}
    for g in twice.report["groups"]:
        key = ",".join(g["producers"])
        assert g["channels_before"] == first[key]["channels_after"], key
        if "kept_channels" in g:
            assert max(g["kept_channels"]) < first[key]["channels_after"]
    name = model.graph.output[0].name
    fidelity = twice.report["fidelity_on_calibration"]["outputs"][name]
    a, b = run_model(once.model, x)[name], run_model(twice.model, x)[name]
    assert fidelity["relative_error"] == pytest.approx(relative_error(a, b), rel=1e-4)
    assert fidelity["top1_agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))


def test_kept_channels_of_two_runs_compose_into_the_weights_in_the_file(x):
    """Without the re-fit the weights are only sliced, so the twice-pruned conv weights are the
    original ones at the composed indices: first run's kept[second run's kept]."""
    model = wide_cnn()
    once = onnx_eprune.prune(model, x, keep_ratio=0.75, round_to=1, reconstruct=False, **FAST)
    twice = onnx_eprune.prune(once.model, x, keep_ratio=0.5, round_to=1, reconstruct=False, **FAST)
    k1, k2 = _kept(once.report), _kept(twice.report)
    c1 = np.asarray(k1["conv_1"])[k2["conv_1"]]
    c4 = np.asarray(k1["conv_4"])[k2["conv_4"]]
    assert np.array_equal(_weight(twice.model, "conv_1"), _weight(model, "conv_1")[c1])
    assert np.array_equal(_weight(twice.model, "conv_1", 2), _weight(model, "conv_1", 2)[c1])
    assert np.array_equal(_weight(twice.model, "conv_4"), _weight(model, "conv_4")[np.ix_(c4, c1)])


def test_an_unreachable_second_target_names_what_the_pruned_model_can_still_lose(x):
    """A model pruned to 85% cannot lose 99.9% more: a runtime error before calibration whose
    figure is what every group at one channel would remove from *this* model (wide_cnn at one
    channel per group: 28 + 10 + 17 + 20 = 75 parameters)."""
    once = onnx_eprune.prune(wide_cnn(), x, sparsity=0.85, **FAST)
    before = conv_gemm_costs(once.model)[0]
    with pytest.raises(EPruneError) as info:
        onnx_eprune.prune(once.model, x, sparsity=0.999, **FAST)
    assert not isinstance(info.value, UsageError)
    assert f"removes {math.floor((1 - 75 / before) * 1000) / 1000:.3f} of the params" in str(info.value)  # rounded down


def test_second_run_lands_within_a_point_where_granularity_allows(x):
    """README, --sparsity: "lands within 1 point of S where channel granularity allows". The
    depthwise model pruned once (l1, 0.3) has groups of 8 and 10 channels; keeping (7, 7)
    removes 0.306 of its parameters. l1 at 0.3 once kept (8, 5) and removed 0.363: the
    allocator's one-step trades never reach counts that need one group two steps up and
    another one down (budget.py, _wider_trades, now does)."""
    once = onnx_eprune.prune(depthwise(), x, sparsity=0.3, **FAST)
    widths = {",".join(g["producers"]): g["channels_after"] for g in once.report["groups"]}
    c1, c2 = widths["conv1"], widths["conv2"]

    def params(k1: int, k2: int) -> int:   # conv1 (3->k1), dw (k1), conv2 (k1->k2), Gemm (k2->10)
        return k1 * 28 + k1 * 10 + k2 * k1 * 9 + k2 + 10 * k2 + 10

    total = params(c1, c2)
    assert total == conv_gemm_costs(once.model)[0]
    best = min(1 - params(a, b) / total for a in range(1, c1 + 1) for b in range(1, c2 + 1)
               if 1 - params(a, b) / total >= 0.3)
    assert best <= 0.31   # granularity allows it
    twice = onnx_eprune.prune(once.model, x, sparsity=0.3, **FAST)
    assert twice.report["params"]["removed_fraction"] <= 0.31


# -- targets that remove nothing ------------------------------------------------------------------

@pytest.mark.parametrize("options", [FAST, {"device": "cpu"}], ids=["l1-oneshot", "entropic-sequential"])
@pytest.mark.parametrize("target", [{"sparsity": 0.0}, {"flops_reduction": 0.0}, {"keep_ratio": 1.0}],
                         ids=["sparsity0", "flops0", "keep1"])
def test_a_target_that_removes_nothing_gives_the_pruned_graph_back(chain, x, target, options):
    """On a pruned model, a target of nothing is the identity: the same graph bytes, params and
    MACs before == after, and one more metadata entry saying so."""
    _, once, _ = chain
    again = onnx_eprune.prune(once.model, x, **target, **options)
    assert again.model.graph.SerializeToString() == once.model.graph.SerializeToString()
    for part in ("params", "macs"):
        assert again.report[part]["before"] == again.report[part]["after"] == once.report[part]["after"]
        assert again.report[part]["removed_fraction"] == 0.0
    runs = _runs(again.model)
    assert len(runs) == 2 and runs[0] == _runs(once.model)[0]
    assert runs[1]["params"] == [once.report["params"]["after"]] * 2


def test_cli_keep_ratio_one_on_a_pruned_model_evaluates_as_identical(chain, x, tmp_path, capsys):
    """prune --keep-ratio 1.0 of a pruned file, then evaluate the two: zero error, cosine 1,
    full agreement, and the same parameters and MACs."""
    _, once, _ = chain
    once.save(tmp_path / "p1.onnx")
    np.save(tmp_path / "c.npy", x)
    assert main(["prune", str(tmp_path / "p1.onnx"), "-o", str(tmp_path / "p2.onnx"), "--calib",
                 str(tmp_path / "c.npy"), "--keep-ratio", "1.0", "--device", "cpu", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "p1.onnx"), str(tmp_path / "p2.onnx"), "--data", str(tmp_path / "c.npy"),
                 "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    [figures] = result["outputs"].values()
    assert figures["relative_error"] == 0.0 and figures["cosine"] == pytest.approx(1.0)
    assert figures["top1_agreement"] == 1.0
    sizes = result["size"]
    assert (sizes["original"]["params"], sizes["original"]["macs"]) == \
        (sizes["pruned"]["params"], sizes["pruned"]["macs"]) == conv_gemm_costs(once.model)


# -- save, load, prune again --------------------------------------------------------------------

def test_save_to_several_paths_writes_the_same_bytes_and_leaves_nothing_else(chain, tmp_path, monkeypatch):
    """PruneResult.save to two folders, by absolute and relative path, and over its own earlier
    file: the same bytes everywhere, the folders hold only those files, and the result's model
    is unchanged by saving."""
    _, once, _ = chain
    snapshot = once.model.SerializeToString()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    once.save(tmp_path / "a" / "p.onnx")
    monkeypatch.chdir(tmp_path / "b")
    once.save("p.onnx")
    once.save(str(tmp_path / "a" / "p.onnx"))   # over its own earlier output
    once.save(tmp_path / "a" / "q.onnx")
    blobs = {(tmp_path / "a" / "p.onnx").read_bytes(), (tmp_path / "b" / "p.onnx").read_bytes(),
             (tmp_path / "a" / "q.onnx").read_bytes()}
    assert len(blobs) == 1
    assert onnx.load(str(tmp_path / "a" / "q.onnx")).SerializeToString() == snapshot
    assert once.model.SerializeToString() == snapshot
    assert _files_in(tmp_path / "a") == ["p.onnx", "q.onnx"] and _files_in(tmp_path / "b") == ["p.onnx"]


def test_second_result_refuses_to_overwrite_the_file_it_read_but_the_first_may(chain, x, tmp_path):
    """After prune(saved first result), the second result may not be saved over that file (an
    input of its run), while the first result, which never read it, may rewrite it."""
    _, once, _ = chain
    path = tmp_path / "p1.onnx"
    once.save(path)
    before = path.read_bytes()
    second = onnx_eprune.prune(str(path), x, sparsity=0.5, **FAST)
    with pytest.raises(UsageError, match="an input of this run"):
        second.save(path)
    assert path.read_bytes() == before
    once.save(path)
    assert path.read_bytes() == before
    second.save(tmp_path / "p2.onnx")
    assert _files_in(tmp_path) == ["p1.onnx", "p2.onnx"]


def test_saved_loaded_and_cli_chains_give_the_bytes_of_the_in_memory_chain(chain, x, tmp_path, capsys):
    """prune(result.model), prune(saved path) and two CLI runs over files give the same bytes:
    nothing that saving and loading changes steers the second run."""
    model, once, twice = chain
    once.save(tmp_path / "once.onnx")
    from_file = onnx_eprune.prune(tmp_path / "once.onnx", x, sparsity=0.5, **FAST)
    from_loaded = onnx_eprune.prune(onnx.load(str(tmp_path / "once.onnx")), x, sparsity=0.5, **FAST)
    expected = twice.model.SerializeToString(deterministic=True)
    assert from_file.model.SerializeToString(deterministic=True) == expected
    assert from_loaded.model.SerializeToString(deterministic=True) == expected
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", x)
    common = ["--calib", str(tmp_path / "c.npy"), "--sparsity", "0.5", "--method", "l1", "--mode", "oneshot",
              "--device", "cpu", "-q"]
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c1.onnx"), *common]) == 0
    assert main(["prune", str(tmp_path / "c1.onnx"), "-o", str(tmp_path / "c2.onnx"), *common]) == 0
    assert (tmp_path / "c1.onnx").read_bytes() == (tmp_path / "once.onnx").read_bytes()
    twice.save(tmp_path / "twice.onnx")
    assert (tmp_path / "c2.onnx").read_bytes() == (tmp_path / "twice.onnx").read_bytes()


def test_a_chain_of_default_runs_is_deterministic(x):
    """Entropic, sequential, twice in a row, run twice in one process: the same bytes."""
    def chain_bytes() -> bytes:
        once = onnx_eprune.prune(conv_bn_relu_pool_flatten_gemm(False), x, sparsity=0.4, device="cpu")
        return onnx_eprune.prune(once.model, x, sparsity=0.4, device="cpu").model.SerializeToString(
            deterministic=True)

    assert chain_bytes() == chain_bytes()


def test_cli_reprune_onto_its_own_input_is_refused_and_a_failed_reprune_keeps_the_old_output(
        chain, x, tmp_path, capsys):
    """prune p1 -o p1: a usage error, p1 untouched. prune p1 -o p2 at an out-of-reach target,
    with p2 there from an earlier run: exit 1, p2 keeps its bytes, no stray file."""
    _, once, twice = chain
    once.save(tmp_path / "p1.onnx")
    twice.save(tmp_path / "p2.onnx")
    np.save(tmp_path / "c.npy", x)
    p1, p2 = (tmp_path / "p1.onnx").read_bytes(), (tmp_path / "p2.onnx").read_bytes()
    common = ["--calib", str(tmp_path / "c.npy"), "--method", "l1", "--device", "cpu"]
    _error_line(capsys, ["prune", str(tmp_path / "p1.onnx"), "-o", str(tmp_path / "p1.onnx"), "--sparsity", "0.5",
                         *common], 2)
    line = _error_line(capsys, ["prune", str(tmp_path / "p1.onnx"), "-o", str(tmp_path / "p2.onnx"), "--sparsity",
                                "0.999", "--report", str(tmp_path / "r.json"), *common], 1)
    assert "out of reach" in line
    assert (tmp_path / "p1.onnx").read_bytes() == p1 and (tmp_path / "p2.onnx").read_bytes() == p2
    assert _files_in(tmp_path) == ["c.npy", "p1.onnx", "p2.onnx"]


def test_statistics_of_the_original_are_refused_for_the_pruned_model(chain, x, tmp_path, capsys):
    """Reusing the first round's statistics file for the second round: a usage error naming the
    file; statistics calibrated on the pruned model prune it as a one-shot run on the samples."""
    model, once, _ = chain
    onnx_eprune.calibrate(model, x, device="cpu").save(tmp_path / "orig.npz")
    once.save(tmp_path / "p1.onnx")
    line = _error_line(capsys, ["prune", str(tmp_path / "p1.onnx"), "-o", str(tmp_path / "p2.onnx"), "--stats",
                                str(tmp_path / "orig.npz"), "--sparsity", "0.5", "--method", "l1"], 2)
    assert "orig.npz" in line and "another model" in line
    assert not (tmp_path / "p2.onnx").exists()
    bundle = onnx_eprune.calibrate(once.model, x, device="cpu")
    from_stats = onnx_eprune.prune(once.model, stats=[bundle], sparsity=0.5, method="l1")
    direct = onnx_eprune.prune(once.model, x, sparsity=0.5, **FAST)
    assert _kept(from_stats.report) == _kept(direct.report)
    assert from_stats.report["params"] == direct.report["params"]


# -- prune -> inspect -> evaluate ----------------------------------------------------------------

def test_inspect_and_evaluate_agree_with_the_reports_along_the_chain(chain, x, tmp_path):
    """Original, once and twice pruned, as files: inspect's params / MACs are each report's
    before and after; evaluate(original, twice) gives the two ends, the file sizes on disk and
    the fidelity that the two runs' models have end to end; evaluate(once, twice) gives the
    second report's fidelity."""
    model, once, twice = chain
    paths = [tmp_path / f"{n}.onnx" for n in ("m", "once", "twice")]
    onnx.save(model, str(paths[0]))
    once.save(paths[1])
    twice.save(paths[2])
    np.save(tmp_path / "c.npy", x)
    figures = [(once.report["params"]["before"], once.report["macs"]["before"]),
               (once.report["params"]["after"], once.report["macs"]["after"]),
               (twice.report["params"]["after"], twice.report["macs"]["after"])]
    for path, expected in zip(paths, figures):
        summary = onnx_eprune.inspect(path)
        assert (summary["params"], summary["macs"]) == expected == conv_gemm_costs(onnx.load(str(path)))
    assert [len(onnx_eprune.inspect(p)["pruned_before"]) for p in paths] == [0, 1, 2]
    ends = onnx_eprune.evaluate(paths[0], paths[2], tmp_path / "c.npy", device="cpu")
    for side, path, expected in (("original", paths[0], figures[0]), ("pruned", paths[2], figures[2])):
        size = ends["size"][side]
        assert (size["params"], size["macs"]) == expected
        assert size["bytes"] == os.path.getsize(path)
    name = model.graph.output[0].name
    a, b = run_model(model, x)[name], run_model(twice.model, x)[name]
    assert ends["outputs"][name]["relative_error"] == pytest.approx(relative_error(a, b), rel=1e-4)
    step = onnx_eprune.evaluate(paths[1], paths[2], tmp_path / "c.npy", device="cpu")
    report = twice.report["fidelity_on_calibration"]["outputs"][name]
    assert step["outputs"][name]["relative_error"] == pytest.approx(report["relative_error"], rel=1e-4)
    assert step["outputs"][name]["top1_agreement"] == pytest.approx(report["top1_agreement"])


# -- edited models pruned again --------------------------------------------------------------------

@pytest.mark.parametrize("edit", ["nodes", "tensors"])
def test_renaming_nodes_or_tensors_of_a_pruned_model_changes_nothing_but_the_names(x, edit):
    """Renaming every node (or every intermediate tensor) of a pruned model, then pruning it
    with the defaults, gives the same weights as pruning it unedited; the report uses the new
    node names."""
    once = onnx_eprune.prune(concat_branches(), x, sparsity=0.3, device="cpu")
    edited = _copy(once.model)
    if edit == "nodes":
        for node in edited.graph.node:
            node.name = f"/net/{node.name}/op"
    else:
        keep = {v.name for v in [*edited.graph.input, *edited.graph.output, *edited.graph.initializer]}
        renamed = {}
        for node in edited.graph.node:
            for i, name in enumerate(node.output):
                if name not in keep:
                    renamed[name] = node.output[i] = f"t/{name[::-1]}"
        for node in edited.graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
    onnx.checker.check_model(edited, full_check=True)
    plain = onnx_eprune.prune(once.model, x, sparsity=0.3, device="cpu")
    again = onnx_eprune.prune(edited, x, sparsity=0.3, device="cpu")
    assert [(t.name, t.SerializeToString()) for t in again.model.graph.initializer] == \
        [(t.name, t.SerializeToString()) for t in plain.model.graph.initializer]
    producers = {p for g in again.report["groups"] for p in g["producers"]}
    assert ("/net/branch_a/op" in producers) == (edit == "nodes")


def test_another_topological_order_keeps_the_same_channels_by_weight_norm(x):
    """The two conv branches of a pruned model listed the other way round: with l1 and no re-fit
    (no sampled statistics involved), the same channels go; the result evaluates as identical."""
    once = onnx_eprune.prune(concat_branches(), x, sparsity=0.3, **FAST)
    assert [n.op_type for n in once.model.graph.node[:4]] == ["Conv", "Relu", "Conv", "Relu"]
    swapped = _reorder(once.model, [2, 3, 0, 1, *range(4, len(once.model.graph.node))])
    onnx.checker.check_model(swapped, full_check=True)
    a = onnx_eprune.prune(once.model, x, keep_ratio=0.5, round_to=1, reconstruct=False, **FAST)
    b = onnx_eprune.prune(swapped, x, keep_ratio=0.5, round_to=1, reconstruct=False, **FAST)
    assert _kept(a.report) == _kept(b.report)
    same = onnx_eprune.evaluate(a.model, b.model, x, device="cpu")
    [figures] = same["outputs"].values()
    assert figures["relative_error"] == 0.0 and figures["top1_agreement"] == 1.0
    assert same["size"]["original"]["params"] == same["size"]["pruned"]["params"]


def test_another_topological_order_still_prunes_to_a_valid_model_at_the_target(x):
    """With the defaults the order may change which channels stay (README), but the result is
    valid, runs, and meets the target."""
    once = onnx_eprune.prune(concat_branches(), x, sparsity=0.3, device="cpu")
    swapped = _reorder(once.model, [2, 3, 0, 1, *range(4, len(once.model.graph.node))])
    again = onnx_eprune.prune(swapped, x, sparsity=0.3, device="cpu")
    onnx.checker.check_model(again.model, full_check=True)
    assert run_model(again.model, x)["y"].shape == (len(x), 10)
    assert again.report["params"]["removed_fraction"] >= 0.3
    assert again.report["params"]["after"] == conv_gemm_costs(again.model)[0]


def _out_of_order(tmp_path: Path, x: np.ndarray) -> tuple[Path, Path]:
    once = onnx_eprune.prune(wide_cnn(), x, sparsity=0.5, **FAST)
    reversed_model = _reorder(once.model, list(range(len(once.model.graph.node)))[::-1])
    path = tmp_path / "edited.onnx"
    onnx.save(reversed_model, str(path))
    np.save(tmp_path / "c.npy", x)
    return path, tmp_path / "c.npy"


def test_nodes_out_of_order_are_a_usage_error(x, tmp_path, capsys):
    """A pruned model whose nodes were put out of topological order fails onnx.checker: exit 2,
    one line that says so, the input untouched and no output."""
    path, calib = _out_of_order(tmp_path, x)
    before = path.read_bytes()
    line = _error_line(capsys, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                "--sparsity", "0.3", "--device", "cpu"], 2)
    assert "topologically sorted" in line
    assert path.read_bytes() == before and not (tmp_path / "out.onnx").exists()


def test_nodes_out_of_order_error_names_the_node(x, tmp_path, capsys):
    """The one-line error names the node that reads a tensor before it is made (the output
    Gemm 'y' reads 'relu_9'), so the user knows what to move: onnx's checker names it on the
    lines after its first, which the line joins (once it kept the first line only, which
    ended 'of node: ')."""
    path, calib = _out_of_order(tmp_path, x)
    line = _error_line(capsys, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                "--sparsity", "0.3", "--device", "cpu"], 2)
    assert "Gemm" in line or "'y'" in line or "name: y" in line


def test_unnamed_nodes_keep_their_generated_names_through_two_runs(x):
    """An unnamed node is OpType#index; the pruned model gives it that name (README), so inspect
    lists the same producers before and after, and a second run can exclude a layer by the name
    the first one gave it."""
    model = wide_cnn()
    for node in model.graph.node:
        node.name = ""
    once = onnx_eprune.prune(model, x, sparsity=0.5, **FAST)
    assert [n.name for n in once.model.graph.node] == [f"{n.op_type}#{i}" for i, n in enumerate(model.graph.node)]
    assert [g["producers"] for g in onnx_eprune.inspect(model)["groups"]] == \
        [g["producers"] for g in onnx_eprune.inspect(once.model)["groups"]]
    twice = onnx_eprune.prune(once.model, x, sparsity=0.3, exclude=["Conv#3"], **FAST)
    group = next(g for g in twice.report["groups"] if g["producers"] == ["Conv#3"])
    assert group["frozen"] == "excluded by 'Conv#3'" and group["channels_after"] == group["channels_before"]
    assert [n.name for n in twice.model.graph.node] == [n.name for n in once.model.graph.node]


@pytest.mark.parametrize("entry", ["prune", "inspect"])
def test_an_unnamed_node_added_to_a_pruned_model_does_not_clash_with_the_names_given_before(x, tmp_path, capsys,
                                                                                            entry):
    """A model that onnx.checker and onnxruntime accept is pruned (and inspected): here a
    model the tool pruned from an unnamed export (its nodes now named Conv#0, Relu#1, ...)
    with an unnamed 1x1 colour Conv put in front by hand, which is named 'Conv#0.1' (once it
    was 'Conv#0' too, and onnxruntime refused the copy the tool runs: exit 1)."""
    model = wide_cnn()
    for node in model.graph.node:
        node.name = ""
    edited = _copy(onnx_eprune.prune(model, x, sparsity=0.5, **FAST).model)
    edited.graph.initializer.append(numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "rgb.w"))
    edited.graph.node[0].input[0] = "rgb"
    nodes = [helper.make_node("Conv", ["x", "rgb.w"], ["rgb"], kernel_shape=[1, 1]), *edited.graph.node]
    del edited.graph.node[:]
    edited.graph.node.extend(nodes)
    onnx.checker.check_model(edited, full_check=True)
    assert run_model(edited, x[:2])["y"].shape == (2, 10)   # onnxruntime runs it as it is
    path = tmp_path / "edited.onnx"
    onnx.save(edited, str(path))
    np.save(tmp_path / "c.npy", x)
    argv = ["inspect", str(path)] if entry == "inspect" else \
        ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(tmp_path / "c.npy"), "--sparsity", "0.3",
         "--method", "l1", "--device", "cpu", "-q"]
    status = main(argv)
    assert status == 0, capsys.readouterr().err
    if entry == "prune":
        out = onnx.load(str(tmp_path / "out.onnx"))
        onnx.checker.check_model(out, full_check=True)
        assert run_model(out, x[:2])["y"].shape == (2, 10)
        assert len({n.name for n in out.graph.node}) == len(out.graph.node)


def test_overwritten_provenance_does_not_stop_a_second_run(chain, x):
    """A user who overwrote the 'onnx_eprune' metadata with something else can still prune the
    model: the new run is the last entry, the value found stays before it, nothing else changes."""
    _, once, _ = chain
    edited = _copy(once.model)
    next(p for p in edited.metadata_props if p.key == KEY).value = '{"note": "hand-tuned"}'
    again = onnx_eprune.prune(edited, x, sparsity=0.3, **FAST)
    runs = _runs(again.model)
    assert runs[0] == '{"note": "hand-tuned"}' and len(runs) == 2
    assert runs[-1]["params"] == [again.report["params"]["before"], again.report["params"]["after"]]
    assert onnx_eprune.inspect(again.model)["pruned_before"] == runs


def test_inspect_keeps_each_recorded_run_on_one_line(x, tmp_path, capsys):
    """Every 'pruned before:' line of inspect stays one line, a line break in a recorded
    --exclude pattern (an exact node name holding one) escaped as the group table escapes node
    names (once the line was cut in two at the pattern's line break)."""
    model = wide_cnn()
    next(n for n in model.graph.node if n.name == "conv_1").name = "stem\nconv"
    onnx_eprune.prune(model, x, sparsity=0.3, exclude=["stem\nconv"], **FAST).save(tmp_path / "p.onnx")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "p.onnx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = [i for i, line in enumerate(lines) if line.startswith("pruned before: ")]
    assert len(run) == 1 and lines[run[0]].endswith(")") and "(onnx-eprune " in lines[run[0]]
    assert run[0] == len(lines) - 1
