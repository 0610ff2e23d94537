"""Limits the user sets on pruning: ``--exclude`` (layers kept whole) and ``--min-keep``."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import pytest

from models import (conv_bn_relu_pool_flatten_gemm, depthwise, grouped, initializer, node_by_name, random_input,
                    residual, run_model, split_channels)
from onnx_eprune import budget, calibrate, prune
from onnx_eprune.calibrate.session import probe_shapes
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError, UsageError
from onnx_eprune.graph.analysis import analyze
from onnx_eprune.graph.costs import build_cost_model
from onnx_eprune.graph.exclude import exclude_groups
from onnx_eprune.inspection import inspect
from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import Pruner

X = random_input(4, seed=9)


def _analysis(model: onnx.ModelProto):
    shapes = probe_shapes(model, {"x": X[:1]}, ["CPUExecutionProvider"])
    return analyze(model, shapes), shapes


def _out_channels(model: onnx.ModelProto, node: str) -> int:
    return initializer(model, node_by_name(model, node).input[1]).shape[0]


# -- which groups an exclusion freezes -------------------------------------------------------

def test_exclusion_freezes_the_groups_of_matching_producers_only():
    model = conv_bn_relu_pool_flatten_gemm(True)
    analysis, _ = _analysis(model)
    before = {g.gid for g in analysis.prunable_groups()}
    frozen = exclude_groups(analysis, model.graph.node, ["conv_?"])  # conv_1 and conv_4, not gemm_8
    producers = {g.gid: [model.graph.node[p.node].name for p in g.producers] for g in analysis.groups}
    assert sorted(producers[g] for g in frozen) == [["conv_1"], ["conv_4"]]
    assert {g.gid for g in analysis.prunable_groups()} == before - set(frozen)
    assert [producers[g.gid] for g in analysis.prunable_groups()] == [["gemm_8"]]
    for g in frozen:
        assert analysis.groups[g].frozen == ["excluded by 'conv_?'"]


def test_excluding_one_producer_of_a_residual_sum_keeps_the_whole_sum(caplog):
    model = residual()
    analysis, _ = _analysis(model)
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        frozen = exclude_groups(analysis, model.graph.node, ["conv_b"])
    assert "--exclude 'conv_b' keeps whole the output channels of stem, conv_b" in caplog.text  # coupled: named too
    assert len(frozen) == 1
    names = {model.graph.node[p.node].name for p in analysis.groups[frozen[0]].producers}
    assert names == {"stem", "conv_b"}  # coupled by the Add: they go together or not at all


@pytest.mark.parametrize("build, name, before", [(depthwise, "dw", "conv1"), (grouped, "grouped", "conv1"),
                                                (lambda: conv_bn_relu_pool_flatten_gemm(False), "bn_*", "conv_1")])
def test_excluding_a_layer_that_passes_channels_on_keeps_them(calib, build, name, before, caplog):
    """A depthwise or channel-preserving grouped convolution, or a BatchNormalization, holds its
    group's channels as weights of its own: excluding it keeps them, and so the layer before."""
    model = build()
    if name == "bn_*":
        assert any(n.op_type == "BatchNormalization" and n.name.startswith("bn_") for n in model.graph.node)
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        result = prune(model, calib, keep_ratio=0.5, method="l1", device="cpu", exclude=(name,))
    assert f"keeps whole the output channels of {before}" in caplog.text
    assert _out_channels(result.model, before) == _out_channels(model, before)
    assert any(g["channels_after"] < g["channels_before"] for g in result.report["groups"])  # the rest is pruned


def test_a_producer_cut_into_several_groups_is_named_once(caplog):
    model = split_channels()
    analysis, _ = _analysis(model)
    producer = "conv_in"
    assert sum(model.graph.node[p.node].name == producer for g in analysis.groups for p in g.producers) > 1
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        assert len(exclude_groups(analysis, model.graph.node, [producer])) > 1
    assert f"keeps whole the output channels of {producer}\n" in caplog.text + "\n"


def test_exclusion_of_an_already_frozen_group_adds_its_reason_and_counts_nothing(caplog):
    model = conv_bn_relu_pool_flatten_gemm(True)
    analysis, _ = _analysis(model)
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        assert exclude_groups(analysis, model.graph.node, ["y"]) == []  # the output layer is frozen anyway
    assert "'y' matches only layers that stay whole anyway (reaches a graph output)" in caplog.text
    output_group = next(g for g in analysis.groups if any(model.graph.node[p.node].name == "y" for p in g.producers))
    assert output_group.frozen == ["reaches a graph output", "excluded by 'y'"]


@pytest.mark.parametrize("flops, warns", [(0.05, True), (0.02, False)])
def test_a_target_that_empties_the_few_prunable_layers_warns(calib, caplog, flops, warns):
    """With both convolutions excluded, 94% of the MACs are out of reach: a 5% MAC target
    takes 81% of the rest and says so (README, Known limits), naming the --exclude; 2% takes
    34% and runs without the warning. The frozen share is inspect's (MACs of the layers
    without a prunable side)."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        prune(model, calib, flops_reduction=flops, method="l1", device="cpu", exclude=("conv_?",))
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    if not warns:
        assert not said
        return
    assert round(100 * (1 - inspect(model, calib[:1], exclude=("conv_?",))["prunable_mac_fraction"])) == 94
    assert said == ["94% of the MACs lie in layers that pruning cannot reach (with the --exclude given): removing 5% "
                    "of the MACs takes 81% of the rest; expect a large loss of accuracy (`onnx-eprune inspect` lists "
                    "the frozen groups and why)"]


def test_a_pattern_matching_no_node_is_refused():
    model = conv_bn_relu_pool_flatten_gemm(True)
    analysis, _ = _analysis(model)
    with pytest.raises(UsageError, match="'conv1' matches no node"):
        exclude_groups(analysis, model.graph.node, ["conv1"])
    with pytest.raises(UsageError, match="matches no node"):
        exclude_groups(analysis, model.graph.node, ["CONV_1"])  # case-sensitive, as ONNX names are


def test_a_pattern_matching_only_non_producers_warns(caplog):
    model = conv_bn_relu_pool_flatten_gemm(True)
    analysis, _ = _analysis(model)
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        assert exclude_groups(analysis, model.graph.node, ["relu_*"]) == []
    assert "none of which produces or passes on prunable channels" in caplog.text
    assert len(analysis.prunable_groups()) == 3


def test_unnamed_nodes_match_by_their_report_label():
    model = conv_bn_relu_pool_flatten_gemm(True)
    index = next(i for i, n in enumerate(model.graph.node) if n.name == "conv_4")
    model.graph.node[index].name = ""
    analysis, _ = _analysis(model)
    assert len(exclude_groups(analysis, model.graph.node, [f"Conv#{index}"])) == 1


# -- keep-count floors ----------------------------------------------------------------------

def test_levels_start_at_the_least_count_on_the_step():
    assert list(budget.levels(10, 1, 4)) == [4, 5, 6, 7, 8, 9, 10]
    assert list(budget.levels(100, 8, 30)) == [32, 40, 48, 56, 64, 72, 80, 88, 96, 100]
    assert list(budget.levels(100, 8, 97)) == [100]
    assert list(budget.levels(6, 4, 0)) == [4, 6]


@pytest.mark.parametrize("channels", [1, 3, 10, 64, 120])
@pytest.mark.parametrize("min_keep", [0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
def test_least_counts_is_the_ceiling(channels, min_keep):
    least = budget.least_counts({0: channels}, min_keep)[0]
    exact = [k for k in range(1, channels + 1) if k >= min_keep * channels * (1 - 1e-12)]  # brute force
    assert least == exact[0]


def test_allocation_respects_the_floors_and_still_reaches_the_target():
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(8, 16, 32))
    analysis, shapes = _analysis(model)
    costs = build_cost_model(model, analysis, shapes)
    channels = {g.gid: g.channels for g in analysis.prunable_groups()}
    rng = np.random.default_rng(0)
    curves = {g: np.sort(rng.random(c + 1))[::-1] * np.linspace(1, 0, c + 1) for g, c in channels.items()}
    target = budget.Target("sparsity", 0.4)
    for min_keep in (0.0, 0.25, 0.5):
        least = budget.least_counts(channels, min_keep)
        keep = budget.allocate(channels, curves, costs, target, None, least)
        assert all(keep[g] >= least[g] for g in channels)
        assert 1 - costs.params(keep) / costs.params() >= 0.4
    with pytest.raises(EPruneError, match="out of reach"):
        budget.allocate(channels, curves, costs, target, None, budget.least_counts(channels, 0.9))


def test_uniform_counts_are_raised_to_the_floor():
    counts = budget.uniform_counts({0: 10, 1: 64}, 0.2, {0: 1, 1: 8}, {0: 5, 1: 30})
    assert counts == {0: 5, 1: 32}


# -- whole runs -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_prune_keeps_excluded_layers_whole_and_prunes_the_rest(calib, mode):
    model = conv_bn_relu_pool_flatten_gemm(True)
    result = prune(model, calib, PruneConfig(sparsity=0.3, method="l1", mode=mode, device="cpu",
                                             exclude=("conv_4",)))
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    assert _out_channels(pruned, "conv_4") == 16                     # excluded: whole
    assert _out_channels(pruned, "gemm_8") < 32                      # the rest carries the target
    assert result.report["params"]["removed_fraction"] >= 0.3
    assert result.report["exclude"] == ["conv_4"]
    frozen = {g["producers"][0]: g["frozen"] for g in result.report["groups"] if g["producers"]}
    assert frozen["conv_4"] == "excluded by 'conv_4'" and frozen["gemm_8"] is None
    assert run_model(pruned, X)["y"].shape == (4, 10)


def test_prune_with_min_keep_keeps_every_group_above_its_floor(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    plain = prune(model, calib, sparsity=0.7, method="l1", device="cpu", round_to=1)
    floored = prune(model, calib, sparsity=0.7, method="l1", device="cpu", min_keep=0.4, round_to=1)
    assert floored.report["min_keep"] == 0.4
    groups = [g for g in floored.report["groups"] if "kept_channels" in g]
    assert groups and all(g["channels_after"] >= math.ceil(0.4 * g["channels_before"]) for g in groups)
    # the floor binds: without it some group goes below 40%
    assert any(g["channels_after"] < math.ceil(0.4 * g["channels_before"])
               for g in plain.report["groups"] if "kept_channels" in g)
    assert floored.report["params"]["removed_fraction"] >= 0.7


def test_everything_excluded_says_so(calib):
    with pytest.raises(EPruneError, match="no prunable channel group.*excluded by"):
        prune(conv_bn_relu_pool_flatten_gemm(True), calib, sparsity=0.3, device="cpu", exclude=("*",))


def test_unreachable_target_names_the_limits_before_any_calibration(calib, monkeypatch):
    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated for a target out of reach")

    monkeypatch.setattr(Pruner, "collect", no_calibration)
    for mode in ("sequential", "oneshot"):
        with pytest.raises(EPruneError, match=r"out of reach.*\(with the --min-keep given\)$"):
            prune(conv_bn_relu_pool_flatten_gemm(True), calib, sparsity=0.5, mode=mode, device="cpu", min_keep=0.8)
    with pytest.raises(EPruneError, match=r"out of reach: .* removes 0\.\d+ of the macs$"):
        prune(conv_bn_relu_pool_flatten_gemm(True), calib, flops_reduction=0.99, device="cpu")
    with pytest.raises(EPruneError, match=r"\(with the --exclude given\)$"):
        prune(conv_bn_relu_pool_flatten_gemm(True), calib, sparsity=0.9, device="cpu", exclude=("conv_4", "gemm_8"))


@pytest.mark.parametrize("limits", [{"min_keep": 0.9}, {"exclude": ("conv_9",)}])
@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_sweep_refuses_a_target_out_of_reach_or_a_bad_pattern_before_any_calibration(calib, monkeypatch, limits,
                                                                                     mode):
    from onnx_eprune import sweep

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated before refusing")

    monkeypatch.setattr(Pruner, "collect", no_calibration)
    with pytest.raises(EPruneError, match="out of reach|matches no node"):
        sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.2, 0.5], method="l1", mode=mode, device="cpu",
              **limits)
    with pytest.raises(UsageError, match="in \\[0, 1\\)"):
        sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.2, 1.5], method="l1", mode=mode, device="cpu")


@pytest.mark.parametrize("field, value", [("min_keep", -0.1), ("min_keep", 1.5), ("min_keep", float("nan")),
                                          ("exclude", "conv_1"), ("exclude", ("",)), ("exclude", (3,))])
def test_bad_limits_are_refused(field, value):
    with pytest.raises(UsageError, match="min-keep|exclude"):
        PruneConfig(sparsity=0.5, **{field: value}).check()


def test_statistics_cover_excluded_groups_so_one_file_serves_any_exclusion(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    # a config shared with prune: calibrate ignores its exclusion (as a keyword it is refused)
    bundle = calibrate(model, calib, PruneConfig(exclude=("conv_4",), device="cpu"))
    whole = prune(model, None, PruneConfig(sparsity=0.3, method="l1", device="cpu"), stats=[bundle])
    assert _out_channels(whole.model, "conv_4") < 16
    excluded = prune(model, None, PruneConfig(sparsity=0.3, method="l1", device="cpu", exclude=("conv_4",)),
                     stats=[bundle])
    assert _out_channels(excluded.model, "conv_4") == 16


def test_calibrate_refuses_a_shared_exclusion_that_matches_no_node(calib):
    """calibrate ignores a shared config's exclusion, but not a mistyped one: the prune that
    reads the bundle would refuse it after the calibration's work (it checked the syntax only)."""
    with pytest.raises(UsageError, match="--exclude 'conv_9' matches no node"):
        calibrate(conv_bn_relu_pool_flatten_gemm(True), calib, PruneConfig(exclude=("conv_4", "conv_9"), device="cpu"))


@pytest.mark.parametrize("patterns, shown", [("stem", "'stem'"), (["stem", ""], "['stem', '']"),
                                             (("stem", ""), "['stem', '']"), ([None], "[None]"), (3, "3")])
def test_inspect_refuses_what_is_not_a_sequence_of_patterns(patterns, shown):
    with pytest.raises(UsageError, match="--exclude takes non-empty node-name patterns") as raised:
        inspect(residual(), X, exclude=patterns)
    assert str(raised.value).endswith(f"not {shown}")


def test_inspect_shows_the_exclusion():
    model = residual()
    rows = {tuple(r["producers"]): r for r in inspect(model, X, exclude=["stem"])["groups"] if r["producers"]}
    assert not rows[("stem", "conv_b")]["prunable"]
    assert rows[("stem", "conv_b")]["frozen"] == "excluded by 'stem'"
    assert rows[("conv_a",)]["prunable"]


# -- command line ---------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, calib):
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    return tmp_path


def test_cli_exclude_and_min_keep_reach_the_model_and_the_reports(files, capsys):
    argv = ["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--calib", str(files / "calib.npy"),
            "--device", "cpu", "--method", "l1", "--sparsity", "0.3", "--exclude", "conv_1", "--exclude", "conv_4",
            "--min-keep", "0.25", "--report-dir", str(files / "rep")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "excluded by 'conv_1'" in out and "excluded by 'conv_4'" in out
    pruned = onnx.load(str(files / "out.onnx"))
    assert (_out_channels(pruned, "conv_1"), _out_channels(pruned, "conv_4")) == (8, 16)
    report = json.loads((files / "rep" / "report.json").read_text())
    assert report["exclude"] == ["conv_1", "conv_4"] and report["min_keep"] == 0.25
    markdown = (files / "rep" / "report.md").read_text()
    assert "excluded (kept whole): `conv_1`, `conv_4`" in markdown
    assert "at least 25.0% of its channels" in markdown


def test_cli_sweep_records_the_limits(files, capsys):
    argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--device", "cpu",
            "--method", "l1", "--sparsity", "0.2", "--exclude", "conv_?", "--report-dir", str(files / "sw"), "-q"]
    assert main(argv) == 0
    record = json.loads((files / "sw" / "sweep.json").read_text())
    assert record["exclude"] == ["conv_?"] and record["min_keep"] == 0.0
    assert "excluded (kept whole): `conv_?`" in (files / "sw" / "sweep.md").read_text()


@pytest.mark.parametrize("extra, message", [(["--exclude", "conv1"], "'conv1' matches no node"),
                                            (["--min-keep", "2"], "min_keep (--min-keep) must be in"),
                                            (["--min-keep", "x"], "invalid float value")])
def test_cli_bad_limits_are_one_line_errors(files, capsys, extra, message):
    argv = ["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--calib", str(files / "calib.npy"),
            "--device", "cpu", "--keep-ratio", "0.5", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (files / "out.onnx").exists()


def test_cli_inspect_exclude(files, capsys):
    assert main(["inspect", str(files / "model.onnx"), "--exclude", "gemm_8", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    frozen = {g["producers"][0]: g["frozen"] for g in groups if g["producers"]}
    assert frozen["gemm_8"] == "excluded by 'gemm_8'" and frozen["conv_1"] is None


def test_keep_ratio_one_with_exclusions_gives_back_the_same_function(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    result = prune(model, calib, keep_ratio=1.0, device="cpu", exclude=("conv_1",))
    np.testing.assert_allclose(run_model(result.model, X)["y"], run_model(model, X)["y"], rtol=1e-5, atol=1e-5)


def test_sweep_says_each_exclusion_once(calib, caplog):
    from onnx_eprune import sweep

    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        points = sweep(conv_bn_relu_pool_flatten_gemm(True), calib, [0.2, 0.3, 0.4], method="l1", device="cpu",
                       exclude=("conv_4",))
    assert len(points) == 3
    assert caplog.text.count("--exclude 'conv_4' keeps whole") == 1
    assert caplog.text.count("onnxruntime provider") == 1
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        logging.getLogger("onnx_eprune").info("onnxruntime provider: CPUExecutionProvider")
    assert caplog.text.count("onnxruntime provider") == 2  # the filter went with the sweep
