"""``--exclude`` and ``--min-keep`` on channel groups with several producers or unusual units.

What test_exclude.py covers on plain chains is checked here where channels are coupled:
a residual sum with one producer excluded, an excluded consumer (its outputs stay, its
inputs may go, as the README promises), a Concat with one branch excluded, Split/Slice
parts, grouped convolutions (channels go a whole conv group at a time: the floor is
raised to whole groups and the rewritten ``group`` attribute always divides), channel
multipliers, GhostNet's duplicated Concat and FastViT's multiplier sums. Every pruned
model is validated the same way (``_validate``): ``onnx.checker`` full check, onnxruntime
runs it with the original's input/output signature and output shapes, the report's kept
counts equal the real tensor shapes, the floor holds in every prunable group, and
excluded layers keep their output channels. Bad ``--min-keep`` values and patterns are
one-line command-line errors.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import (CLASSES, IN_CHANNELS, INPUT, OUTPUT, _Builder, concat_branches, depthwise_multiplier,
                    gemm_matmul, ghost, grouped, initializer, io_signature, multiplier_sum, node_by_name,
                    random_input, residual, run_model, se_block, split_channels)
from onnx_eprune import calibrate, prune
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError
from onnx_eprune.pipeline import PruneResult

X = random_input(4, seed=9)
MODES = ["sequential", "oneshot"]


# -- extra models -------------------------------------------------------------------------

def two_grouped(seed: int = 0) -> onnx.ModelProto:
    """conv1 (3->24) -> Relu read by two grouped Convs (4 groups of 6, 6 groups of 4)
    whose sum -> conv2 (24->16) -> Relu -> GAP -> Gemm: conv1's channels go 12 at a time."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 24, name="conv1")])
    h = b.node("Relu", [b.node("Add", [b.conv(h, 24, 24, group=4, name="ga"), b.conv(h, 24, 24, group=6, name="gb")],
                               name="add")])
    h = b.node("Relu", [b.conv(h, 24, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def concat_grouped(seed: int = 0) -> onnx.ModelProto:
    """Two branches (3->4 each) -> Concat -> grouped Conv (8->8, 4 groups of 2: each branch
    is two conv groups) -> Relu -> conv_out (8->12) -> Relu -> GAP -> Gemm."""
    b = _Builder(seed)
    a = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 4, name="branch_a")])
    c = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 4, name="branch_b")])
    h = b.node("Relu", [b.conv(b.node("Concat", [a, c], name="concat", axis=1), 8, 8, group=4, name="grouped")])
    h = b.node("Relu", [b.conv(h, 8, 12, name="conv_out")])
    return b.build(b.gemm(b.gap_flatten(h), 12, CLASSES, name=OUTPUT))


# -- helpers ------------------------------------------------------------------------------

def _tensor_channels(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, int]:
    """Axis-1 size of each named tensor, as onnxruntime computes it on ``X``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    values = run_model(probe, X)
    return {name: int(values[name].shape[1]) for name in tensors}


def _output_channels(model: onnx.ModelProto, nodes: Sequence[str]) -> dict[str, int]:
    """Output channels of each named node (its first output, axis 1)."""
    outputs = {n: node_by_name(model, n).output[0] for n in nodes}
    found = _tensor_channels(model, list(outputs.values()))
    return {n: found[t] for n, t in outputs.items()}


def _input_channels(model: onnx.ModelProto, node: str) -> int:
    """Channels of a node's first input."""
    tensor = node_by_name(model, node).input[0]
    return _tensor_channels(model, [tensor])[tensor]


def _weight(model: onnx.ModelProto, node: str) -> np.ndarray:
    return initializer(model, node_by_name(model, node).input[1])


def _group_attr(model: onnx.ModelProto, node: str) -> int:
    return next((a.i for a in node_by_name(model, node).attribute if a.name == "group"), 1)


def _group(report: dict, producer: str) -> dict:
    """The report row of the (first) group that ``producer`` writes."""
    return next(g for g in report["groups"] if producer in g["producers"])


def _validate(original: onnx.ModelProto, result: PruneResult, min_keep: float = 0.0,
              exclude: Sequence[str] = (), whole: Sequence[str] = ()) -> dict[str, int]:
    """The checks every prune here must pass; returns the pruned producers' output channels."""
    pruned, report = result.model, result.report
    onnx.checker.check_model(pruned, full_check=True)
    assert io_signature(pruned) == io_signature(original)
    before, after = run_model(original, X), run_model(pruned, X)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert all(np.isfinite(v).all() for v in after.values())
    assert report["exclude"] == list(exclude) and report["min_keep"] == min_keep
    expected: dict[str, int] = {}
    for g in report["groups"]:
        c, k = g["channels_before"], g["channels_after"]
        for name, rows in zip(g["producers"], g["producer_rows"]):
            expected[name] = expected.get(name, 0) + rows * k
        if "kept_channels" in g:
            kept = g["kept_channels"]
            assert len(kept) == k and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < c, g
            floor = max(1, math.ceil(min_keep * c - 1e-9))
            assert k == c or (k % g["step"] == 0 and k >= floor), g
        else:
            assert k == c and g["frozen"], g
    actual = _output_channels(pruned, list(expected))
    assert actual == expected  # the report's counts are the tensors' real widths
    assert _output_channels(pruned, list(whole)) == _output_channels(original, list(whole))
    return actual


def _check_grouped_convs(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """Every grouped Conv lost whole conv groups: same inputs and outputs per group, and
    a group count that its input and output channels divide into."""
    for node in original.graph.node:
        groups = _group_attr(original, node.name) if node.op_type == "Conv" else 1
        if groups == 1:
            continue
        w, w_new, g_new = _weight(original, node.name), _weight(pruned, node.name), _group_attr(pruned, node.name)
        assert g_new >= 1 and w_new.shape[0] % g_new == 0
        assert w_new.shape[1] == w.shape[1] and w_new.shape[0] // g_new == w.shape[0] // groups
        assert _input_channels(pruned, node.name) == g_new * w_new.shape[1]


@pytest.fixture
def files(tmp_path: Path, calib: np.ndarray) -> Path:
    np.save(tmp_path / "calib.npy", calib)
    return tmp_path


def _cli(files: Path, model: onnx.ModelProto, *extra: str) -> int:
    onnx.save(model, str(files / "model.onnx"))
    return main(["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--calib",
                 str(files / "calib.npy"), "--device", "cpu", "--method", "l1", *extra])


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("onnx-eprune: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# -- residual sums ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["stem", "conv_b"])
def test_excluding_either_producer_of_a_residual_sum_keeps_the_whole_sum(calib: np.ndarray, mode: str,
                                                                        name: str) -> None:
    """Excluding one producer of an Add keeps the other producer and the Add whole, and says why."""
    model = residual()
    result = prune(model, calib, sparsity=0.3, mode=mode, device="cpu", exclude=(name,))
    channels = _validate(model, result, exclude=[name], whole=["stem", "conv_b"])
    assert _output_channels(result.model, ["add"]) == {"add": 8}
    row = _group(result.report, "stem")
    assert row["producers"] == ["stem", "conv_b"] and row["frozen"] == f"excluded by '{name}'"
    assert channels["conv_a"] < 8 and _input_channels(result.model, "conv_b") < 8  # the block inside still goes
    assert _weight(result.model, "stem").tobytes() == _weight(model, "stem").tobytes()  # inputs whole: untouched
    assert result.report["params"]["removed_fraction"] >= 0.3


def test_cli_names_the_coupled_producer_in_log_report_and_metadata(files: Path, capsys: pytest.CaptureFixture) -> None:
    """The command line says which coupled layers an exclusion keeps, in its log, report.md and metadata."""
    assert _cli(files, residual(), "--keep-ratio", "0.5", "--exclude", "conv_b", "--min-keep", "0.3",
                "--report-dir", str(files / "rep")) == 0
    err = capsys.readouterr().err
    assert "--exclude 'conv_b' keeps whole the output channels of stem, conv_b" in err
    table = (files / "rep" / "report.md").read_text()
    assert "| stem, conv_b | conv_a, y | 8 (frozen: excluded by 'conv_b') |" in table
    report = json.loads((files / "rep" / "report.json").read_text())
    assert _group(report, "stem")["frozen"] == "excluded by 'conv_b'"
    pruned = onnx.load(str(files / "out.onnx"))
    runs = json.loads({p.key: p.value for p in pruned.metadata_props}["onnx_eprune"])
    assert runs[-1]["exclude"] == ["conv_b"] and runs[-1]["min_keep"] == 0.3
    assert _output_channels(pruned, ["stem", "conv_b", "conv_a"]) == {"stem": 8, "conv_b": 8, "conv_a": 4}


# -- excluded consumers ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build, name, upstream", [
    (concat_branches, "conv_cat", ["branch_a", "branch_b"]),
    (split_channels, "conv_out", ["conv_in", "conv_half"]),
    (se_block, "se_reduce", ["conv1", "se_expand"]),
    (gemm_matmul, "matmul", ["gemm_ab"]),
])
def test_an_excluded_consumer_keeps_its_outputs_but_its_inputs_may_go(calib: np.ndarray, mode: str,
                                                                    build: Callable[[], onnx.ModelProto],
                                                                    name: str, upstream: list[str]) -> None:
    """README: an excluded layer's output channels stay; its input channels may go to the layer before."""
    model = build()
    result = prune(model, calib, keep_ratio=0.5, mode=mode, method="l1", device="cpu", exclude=(name,))
    channels = _validate(model, result, exclude=[name], whole=[name])
    assert _input_channels(result.model, name) < _input_channels(model, name)
    original = _output_channels(model, upstream)
    assert all(channels[n] < original[n] for n in upstream)


# -- Concat, Split and Slice -------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_concat_with_one_branch_excluded_prunes_the_other(calib: np.ndarray, mode: str) -> None:
    """One excluded Concat branch stays whole; the other still loses channels, down to its floor."""
    model = concat_branches()
    result = prune(model, calib, sparsity=0.3, mode=mode, device="cpu", exclude=("branch_a",), min_keep=0.5)
    channels = _validate(model, result, min_keep=0.5, exclude=["branch_a"], whole=["branch_a"])
    assert 5 <= channels["branch_b"] < 10
    assert _output_channels(result.model, ["concat"]) == {"concat": 6 + channels["branch_b"]}
    assert _group(result.report, "branch_b")["frozen"] is None
    assert _weight(result.model, "branch_a").tobytes() == _weight(model, "branch_a").tobytes()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_slice", [False, True], ids=["split", "slice"])
def test_an_excluded_split_part_consumer_keeps_only_its_outputs(calib: np.ndarray, mode: str,
                                                               use_slice: bool) -> None:
    """Excluding the conv on one Split/Slice part keeps its outputs; both parts of the input still prune."""
    model = split_channels(use_slice)
    result = prune(model, calib, keep_ratio=0.5, mode=mode, method="l1", device="cpu", exclude=("conv_half",))
    channels = _validate(model, result, exclude=["conv_half"], whole=["conv_half"])
    assert channels["conv_in"] == 8 and _input_channels(result.model, "conv_half") == 4
    assert _input_channels(result.model, "conv_out") == 8 + 4  # conv_half whole + the other part's 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_slice", [False, True], ids=["split", "slice"])
def test_excluding_the_split_producer_freezes_both_parts(calib: np.ndarray, mode: str, use_slice: bool) -> None:
    """Excluding the producer that a Split/Slice cuts in two freezes both parts and nothing else."""
    model = split_channels(use_slice)
    result = prune(model, calib, keep_ratio=0.5, mode=mode, method="l1", device="cpu", exclude=("conv_in",))
    channels = _validate(model, result, exclude=["conv_in"], whole=["conv_in"])
    rows = [g for g in result.report["groups"] if "conv_in" in g["producers"]]
    assert len(rows) == 2 and all(g["frozen"] == "excluded by 'conv_in'" for g in rows)
    assert channels["conv_half"] == 4 and channels["conv_out"] == 8


# -- grouped convolutions and channel multipliers ----------------------------------------------

GROUPED = {  # builder, {producer: channels per conv group of the grouped Convs reading it}
    "grouped16x4": (lambda: grouped(16, 4), {"conv1": 4}),
    "grouped24x4": (lambda: grouped(24, 4), {"conv1": 6}),
    "grouped24x8": (lambda: grouped(24, 8), {"conv1": 3}),
    "grouped_wide": (lambda: grouped(out_width=32), {"conv1": 4}),
    "two_grouped": (two_grouped, {"conv1": 12}),  # 4 groups of 6 and 6 groups of 4 read it
    "concat_grouped": (concat_grouped, {"branch_a": 2, "branch_b": 2}),
}


@pytest.mark.parametrize("round_to", [1, 3])
@pytest.mark.parametrize("min_keep", [0.1, 0.3, 0.8])
@pytest.mark.parametrize("case", list(GROUPED))
def test_min_keep_on_grouped_convs_goes_in_whole_conv_groups(calib: np.ndarray, case: str, min_keep: float,
                                                           round_to: int) -> None:
    """The floor ceil(F*C) is raised to whole conv groups (and --round-to); the group count divides."""
    build, units = GROUPED[case]
    model = build()
    result = prune(model, calib, keep_ratio=0.01, method="l1", device="cpu", min_keep=min_keep, round_to=round_to)
    channels = _validate(model, result, min_keep=min_keep)
    _check_grouped_convs(model, result.model)
    for producer, unit in units.items():
        row = _group(result.report, producer)
        c = row["channels_before"]
        step = math.lcm(round_to, unit)
        least = max(1, math.ceil(min_keep * c - 1e-9))
        assert row["step"] == step
        assert channels[producer] == row["channels_after"] == min(c, max(step, -(-least // step) * step))
        kept = set(row.get("kept_channels", range(c)))
        assert all({b * unit + i for i in range(unit)} <= kept for b in {k // unit for k in kept})  # whole blocks


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["grouped24x4", "two_grouped", "concat_grouped"])
def test_grouped_convs_under_a_global_target_with_a_floor(calib: np.ndarray, mode: str, case: str) -> None:
    """Allocation to a sparsity target with --min-keep keeps grouped Convs valid in both modes."""
    build, _ = GROUPED[case]
    model = build()
    result = prune(model, calib, sparsity=0.2, mode=mode, device="cpu", min_keep=0.3)
    _validate(model, result, min_keep=0.3)
    _check_grouped_convs(model, result.model)
    assert result.report["params"]["removed_fraction"] >= 0.2


@pytest.mark.parametrize("mode", MODES)
def test_depthwise_multiplier_floor_counts_input_channels(calib: np.ndarray, mode: str) -> None:
    """A multiplier's outputs follow its input channels: the floor on 6 keeps 3, so 9 outputs in 3 groups."""
    model = depthwise_multiplier()
    result = prune(model, calib, keep_ratio=0.01, mode=mode, method="l1", device="cpu", min_keep=0.5)
    channels = _validate(model, result, min_keep=0.5)
    assert channels["conv1"] == 3
    assert _output_channels(result.model, ["dw", "dw_bn"]) == {"dw": 9, "dw_bn": 9}
    assert _group_attr(result.model, "dw") == 3 and _weight(result.model, "dw").shape == (9, 1, 3, 3)
    _check_grouped_convs(model, result.model)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["dw", "dw_bn"])
def test_excluding_a_multiplier_or_its_norm_keeps_the_layer_before(calib: np.ndarray, mode: str, name: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Excluding a depthwise multiplier or the BatchNormalization after it keeps conv1 and all 18 outputs."""
    model = depthwise_multiplier()
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        result = prune(model, calib, keep_ratio=0.5, mode=mode, method="l1", device="cpu", exclude=(name,))
    assert f"--exclude '{name}' keeps whole the output channels of conv1" in caplog.text
    channels = _validate(model, result, exclude=[name], whole=["conv1", "dw", "dw_bn"])
    assert channels["conv2"] == 8 and _group(result.report, "conv1")["frozen"] == f"excluded by '{name}'"


@pytest.mark.parametrize("mode", MODES)
def test_ghost_duplicated_concat_floor_counts_each_channel_once(calib: np.ndarray, mode: str) -> None:
    """GhostNet's concat(x, dw(x)) + residual: the floor is on the 4 primary channels, both copies follow."""
    model = ghost()
    result = prune(model, calib, keep_ratio=0.25, mode=mode, method="l1", device="cpu", min_keep=0.5)
    channels = _validate(model, result, min_keep=0.5)
    assert channels["primary"] == 2 and channels["stem"] == channels["se_expand"] == 4
    assert _output_channels(result.model, ["cheap", "ghost_concat", "residual"]) == \
        {"cheap": 2, "ghost_concat": 4, "residual": 4}
    assert _group_attr(result.model, "cheap") == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["cheap", "primary", "se_expand"])
def test_excluding_any_layer_of_a_ghost_block_keeps_every_producer(calib: np.ndarray, mode: str, name: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Excluding the cheap depthwise, the primary conv or the SE expand keeps stem, primary and expand whole."""
    model = ghost()
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        result = prune(model, calib, keep_ratio=0.5, mode=mode, method="l1", device="cpu", exclude=(name,))
    assert f"--exclude '{name}' keeps whole the output channels of stem, primary, se_expand" in caplog.text
    channels = _validate(model, result, exclude=[name], whole=["stem", "primary", "cheap", "se_expand"])
    assert channels["conv_out"] == 4 and channels["se_reduce"] == 2  # the other groups still go
    for layer in ("stem", "primary", "cheap"):  # their inputs stay whole too: weights untouched
        assert _weight(result.model, layer).tobytes() == _weight(model, layer).tobytes()


@pytest.mark.parametrize("name", ["dw7", "pw", "wide", "identity_bn"])
def test_excluding_any_member_of_a_multiplier_sum_leaves_nothing_to_prune(files: Path, capsys: pytest.CaptureFixture,
                                                                        name: str) -> None:
    """FastViT's one coupled group goes whole with any of its layers: a one-line runtime error, no output."""
    assert _cli(files, multiplier_sum(), "--keep-ratio", "0.5", "--exclude", name,
                "--report-dir", str(files / "rep")) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "no prunable channel group" in line and f"excluded by '{name}'" in line
    assert not (files / "out.onnx").exists() and not (files / "rep" / "report.json").exists()


# -- --min-keep values --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build", [ghost, residual], ids=["ghost", "residual"])
def test_min_keep_zero_is_the_default(calib: np.ndarray, mode: str, build: Callable[[], onnx.ModelProto]) -> None:
    """min_keep=0 gives the same channels and weights as no floor at all."""
    model = build()
    plain = prune(model, calib, sparsity=0.35, mode=mode, device="cpu")
    zero = prune(model, calib, sparsity=0.35, mode=mode, device="cpu", min_keep=0)
    _validate(model, zero, min_keep=0)
    assert [g.get("kept_channels") for g in zero.report["groups"]] == \
        [g.get("kept_channels") for g in plain.report["groups"]]
    assert [i.raw_data for i in zero.model.graph.initializer] == [i.raw_data for i in plain.model.graph.initializer]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build", [ghost, multiplier_sum, two_grouped], ids=["ghost", "multiplier_sum", "two_grouped"])
def test_min_keep_one_keeps_every_group_whole(calib: np.ndarray, mode: str,
                                              build: Callable[[], onnx.ModelProto]) -> None:
    """A floor of the whole group (the integer 1) overrides --keep-ratio: the same weights and outputs."""
    model = build()
    result = prune(model, calib, keep_ratio=0.5, mode=mode, device="cpu", min_keep=1)
    _validate(model, result, min_keep=1)
    assert all(g["channels_after"] == g["channels_before"] for g in result.report["groups"])
    originals = {i.name: i for i in model.graph.initializer}
    assert all(i.raw_data == originals[i.name].raw_data for i in result.model.graph.initializer)
    np.testing.assert_allclose(run_model(result.model, X)["y"], run_model(model, X)["y"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", ["-0.1", "-1", "-inf", "nan", "inf", "1e400", "25", "1.5", "", "50%", "1/2",
                                   "0,5", "quarter", "0.1 0.2"])
def test_cli_bad_min_keep_is_a_one_line_usage_error(files: Path, capsys: pytest.CaptureFixture, value: str) -> None:
    """Negative, non-finite, above 1, percent, ratio or non-numeric floors exit 2 with one line, no output."""
    assert _cli(files, ghost(), "--keep-ratio", "0.5", f"--min-keep={value}") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--min-keep" in line
    assert not (files / "out.onnx").exists()


def test_cli_min_keep_range_error_shows_the_value_given(files: Path, capsys: pytest.CaptureFixture) -> None:
    """A floor just above 1 is refused with a message that shows that value, not a rounded 1."""
    assert _cli(files, ghost(), "--keep-ratio", "0.5", "--min-keep", "1.0000001") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert not line.endswith("not 1")


@pytest.mark.parametrize("option, value", [("min_keep", np.float32(0.25)), ("min_keep", np.int64(1)),
                                           ("seed", np.int64(3)), ("keep_ratio", np.float64(0.5)),
                                           ("refit_ridge", np.float32(0.1))],
                         ids=["min_keep-float32", "min_keep-int64", "seed-int64", "keep_ratio-float64",
                              "refit_ridge-float32"])
def test_numpy_numbers_prune_like_python_numbers(calib: np.ndarray, option: str, value: float) -> None:
    """A numpy scalar option prunes like the Python number, never a late TypeError writing the JSON provenance."""
    options = {"keep_ratio": 0.5, option: value}
    result = prune(residual(), calib, method="l1", device="cpu", **options)
    runs = json.loads({p.key: p.value for p in result.model.metadata_props}["onnx_eprune"])
    plain = prune(residual(), calib, method="l1", device="cpu", **{**options, option: value.item()})
    assert runs == json.loads({p.key: p.value for p in plain.model.metadata_props}["onnx_eprune"])
    json.dumps(result.report)


# -- patterns -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["Conv", "Add", "Relu*", "BatchNormalization", "conv", "stem/*"])
def test_cli_op_types_and_unknown_names_are_refused(files: Path, capsys: pytest.CaptureFixture,
                                                     pattern: str) -> None:
    """Patterns match node names, not op types: one that matches no node is a one-line usage error."""
    assert _cli(files, ghost(), "--keep-ratio", "0.5", "--exclude", pattern) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"--exclude {pattern!r} matches no node" in line
    assert not (files / "out.onnx").exists()


@pytest.mark.parametrize("pattern", ["*", "?*", "*?"])
def test_cli_patterns_matching_every_layer_write_nothing(files: Path, capsys: pytest.CaptureFixture,
                                                          pattern: str) -> None:
    """Every coupled group excluded: the run fails with one line and writes neither model nor report."""
    assert _cli(files, ghost(), "--keep-ratio", "0.5", "--exclude", pattern, "--report", str(files / "r.json")) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "no prunable channel group" in line and f"excluded by '{pattern}'" in line
    assert not (files / "out.onnx").exists() and not (files / "r.json").exists()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pattern", ["ghost_concat", "residual", "se_gate"])
def test_patterns_matching_only_weightless_nodes_change_nothing(calib: np.ndarray, mode: str, pattern: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A Concat, Add or gating Mul carries no channel weights: a warning, and the same result as without it."""
    model = ghost()
    plain = prune(model, calib, sparsity=0.3, mode=mode, device="cpu")
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        result = prune(model, calib, sparsity=0.3, mode=mode, device="cpu", exclude=(pattern,))
    assert f"--exclude {pattern!r} matches 1 node(s), none of which produces" in caplog.text
    _validate(model, result, exclude=[pattern])
    assert [g.get("kept_channels") for g in result.report["groups"]] == \
        [g.get("kept_channels") for g in plain.report["groups"]]
    assert [i.raw_data for i in result.model.graph.initializer] == [i.raw_data for i in plain.model.graph.initializer]


def test_an_exact_name_with_brackets_excludes_that_layer(calib: np.ndarray) -> None:
    """A node name copied from inspect, brackets and all, keeps that node whole and no other."""
    model = residual()
    for node in model.graph.node:
        node.name = {"conv_a": "block[1]", "conv_b": "block1"}.get(node.name, node.name)
    result = prune(model, calib, keep_ratio=0.5, method="l1", device="cpu", exclude=("block[1]",))
    channels = _validate(model, result, exclude=["block[1]"])
    assert channels["block[1]"] == 8            # the layer named: whole
    assert channels["block1"] < 8               # the residual sum was not named: pruned


# -- shared statistics and mixed limits ----------------------------------------------------------

def test_coupled_exclusions_from_one_statistics_bundle(calib: np.ndarray) -> None:
    """One bundle computed without exclusions serves any exclusion of a coupled group, with a floor."""
    model = ghost()
    bundle = calibrate(model, calib, device="cpu")
    for exclude, whole in ((("cheap",), ["stem", "primary", "se_expand"]), (("se_reduce",), ["se_reduce"])):
        result = prune(model, None, stats=[bundle], keep_ratio=0.25, method="l1", device="cpu", exclude=exclude,
                       min_keep=0.5)
        _validate(model, result, min_keep=0.5, exclude=exclude, whole=whole)
        assert result.report["mode"] == "oneshot"


MIXED = {  # builder, excluded pattern, min_keep, nodes whose outputs must stay whole
    "residual": (residual, "conv_a", 0.3, ["conv_a"]),
    "concat": (concat_branches, "branch_b", 0.4, ["branch_b"]),
    "split": (split_channels, "conv_half", 0.25, ["conv_half"]),
    "slice": (lambda: split_channels(True), "conv_out", 0.5, ["conv_out"]),
    "ghost": (ghost, "se_reduce", 0.5, ["se_reduce"]),
    "se_block": (se_block, "se_expand", 0.3, ["conv1", "se_expand"]),
    "grouped_wide": (lambda: grouped(out_width=32), "conv2", 0.3, ["conv2"]),
    "depthwise_multiplier": (depthwise_multiplier, "conv2", 0.5, ["conv2"]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(MIXED))
def test_exclusion_and_floor_together_on_coupled_models(calib: np.ndarray, mode: str, case: str) -> None:
    """An exclusion, a floor and a global target at once: valid model, target met, excluded layers whole."""
    build, pattern, min_keep, whole = MIXED[case]
    model = build()
    try:
        result = prune(model, calib, sparsity=0.2, mode=mode, device="cpu", exclude=(pattern,), min_keep=min_keep)
    except EPruneError as exc:  # allowed only as the documented refusal, before any calibration
        assert "out of reach" in str(exc) and "(with the --exclude and --min-keep given)" in str(exc)
        return
    _validate(model, result, min_keep=min_keep, exclude=[pattern], whole=whole)
    _check_grouped_convs(model, result.model)
    assert result.report["params"]["removed_fraction"] >= 0.2
