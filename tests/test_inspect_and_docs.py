"""``onnx-eprune inspect`` (table and ``--json``) and the truth of the README's command-line
reference and Python API section, attacked as a demanding user would.

inspect: the ``--json`` schema (every group's keys and types, a reason on every frozen group,
strict JSON on stdout with warnings on stderr), the table against the JSON (same groups,
counts, reasons, totals), models with no prunable group, without weights, without inputs,
with an If subgraph, with a batch dimension written as -1, unusual ``--input-shape`` values
(trailing commas, floats, numbers too large for any array), ``--input-shape`` against
``--calib``, MACs per sample at the probed shape, the ``--exclude`` preview against what a
prune then keeps, ``pruned before`` after two runs and with metadata this tool did not
write, and ``-q``.

docs: every option the README's synopsis or option table names exists in that command's
parser (``tests/test_docs.py`` checks the other direction), the defaults the README states
equal the parser's and ``PruneConfig``'s, a CLI-built config equals the API's default one, the
README's documented signatures and field lists equal the code's, the names it references
import, the dicts it describes have the keys it names, and the ``--exclude`` help says what
``?`` does.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import (
    CLASSES,
    INPUT,
    OUTPUT,
    _Builder,
    conv_bn_relu_pool_flatten_gemm,
    random_input,
    residual,
    unknown_op,
)
from onnx_eprune.cli import main
from onnx_eprune.cli_parser import build_parser
from test_docs import _synopsis

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GROUP_KEYS = {"id", "channels", "prunable", "producers", "producer_rows", "consumers", "frozen",
              "data_only"}
TOP_KEYS = {"groups", "prunable_groups", "macs", "params", "prunable_mac_fraction", "pruned_before"}
FAST = {"method": "l1", "mode": "oneshot", "device": "cpu"}


# -- helpers -----------------------------------------------------------------------------------

def _save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _ok(capsys, argv: list[str]) -> tuple[str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err
    return out, err


def _usage_error(capsys, argv: list[str], code: int = 2) -> str:
    """A failing command: the exit status, one error line on stderr, nothing on stdout."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("onnx-eprune: error: "), err
    assert out == ""
    return lines[-1]


def _strict_json(text: str):
    """JSON as any strict parser reads it: NaN / Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _table(out: str) -> tuple[list[str], str]:
    """inspect's table: the group rows and the summary line."""
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["group", "channels", "status", "producers", "consumers"]
    end = next(i for i, line in enumerate(lines) if "prunable groups;" in line)
    return lines[1:end], lines[end]


def _dynamic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


def _finish(b: _Builder, head: str, out_shape=("N", CLASSES), in_shape=("N", 3, 16, 16)) -> onnx.ModelProto:
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, list(in_shape))
    out = helper.make_tensor_value_info(head, TensorProto.FLOAT, list(out_shape))
    graph = helper.make_graph(b.const_nodes + b.nodes, "t", [inp], [out], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _single_conv() -> onnx.ModelProto:
    """One Conv(3->4) whose output is the graph output: nothing can be pruned."""
    b = _Builder()
    return _finish(b, b.conv(INPUT, 3, 4, name=OUTPUT), out_shape=("N", 4, 16, 16))


def _relu_only() -> onnx.ModelProto:
    b = _Builder()
    return _finish(b, b.node("Relu", [INPUT], name=OUTPUT), out_shape=("N", 3, 16, 16))


def _if_model() -> onnx.ModelProto:
    """conv1(3->8) -> Relu "h" -> If(mean(x) > 0: Relu(h) else Neg(h), both reading h from the
    outer scope) -> conv2(8->16) -> Relu -> conv3(16->16) -> Relu -> GAP -> Gemm "y"."""
    b = _Builder()
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")], name="h")
    cond = b.node("Greater", [b.node("ReduceMean", [INPUT], keepdims=0), b.const("zero", np.array(0.0, np.float32))])
    branches = {}
    for key, op in (("then_branch", "Relu"), ("else_branch", "Neg")):
        out = f"{key}_out"
        branches[key] = helper.make_graph([helper.make_node(op, [h], [out])], key, [],
                                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    h = b.node("If", [cond], name="branch", **branches)
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    h = b.node("Relu", [b.conv(h, 16, 16, name="conv3")])
    return _finish(b, b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def _no_inputs() -> onnx.ModelProto:
    """A valid model without graph inputs: Conv(constant image, constant weight)."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    c = numpy_helper.from_array(np.ones((1, 3, 8, 8), np.float32), "c")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    graph = helper.make_graph([helper.make_node("Conv", ["c", "w"], ["y"], name="conv")], "g", [], [out], [w, c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# -- inspect: the JSON and the table -------------------------------------------------------------

def test_json_schema_of_every_group(tmp_path, capsys):
    """--json: exactly the documented top-level keys; every group has id, channels,
    prunable, producers, producer_rows (one per producer), consumers and frozen, with the
    right types; frozen is None exactly when the group is prunable, else a non-empty
    reason; ids are distinct; prunable_groups counts the prunable entries."""
    path = _save(unknown_op("LRN"), tmp_path / "m.onnx")
    out, _ = _ok(capsys, ["inspect", path, "--json", "--exclude", "conv2"])
    summary = _strict_json(out)
    assert set(summary) == TOP_KEYS
    assert summary["groups"], "no groups listed"
    ids = [g["id"] for g in summary["groups"]]
    assert len(ids) == len(set(ids))
    for g in summary["groups"]:
        assert set(g) == GROUP_KEYS, g
        assert isinstance(g["id"], int) and isinstance(g["channels"], int) and g["channels"] > 0
        assert isinstance(g["prunable"], bool)
        assert all(isinstance(n, str) and n for n in g["producers"] + g["consumers"])
        assert len(g["producer_rows"]) == len(g["producers"])
        assert all(isinstance(r, int) and r >= 1 for r in g["producer_rows"])
        assert g["producers"] or g["consumers"]
        if g["prunable"]:
            assert g["frozen"] is None
        else:
            assert isinstance(g["frozen"], str) and g["frozen"].strip(), g
    assert summary["prunable_groups"] == sum(g["prunable"] for g in summary["groups"])
    reasons = {tuple(g["producers"]): g["frozen"] for g in summary["groups"]}
    assert "LRN" in reasons[("conv1",)]
    assert reasons[("conv2",)] == "excluded by 'conv2'"
    assert summary["pruned_before"] == []


def test_table_and_json_list_the_same_groups(tmp_path, capsys):
    """The table shows the groups of --json in the same order: id, channels, status, the
    frozen reason in parentheses, and a summary line with the same totals."""
    path = _save(unknown_op("LRN"), tmp_path / "m.onnx")
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json", "--exclude", "conv2"])[0])
    rows, last = _table(_ok(capsys, ["inspect", path, "--exclude", "conv2"])[0])
    assert len(rows) == len(summary["groups"])
    for row, g in zip(rows, summary["groups"]):
        gid, channels, status = row.split()[:3]
        assert (int(gid), int(channels), status) == (g["id"], g["channels"], "prunable" if g["prunable"] else "frozen")
        if g["frozen"]:
            assert row.endswith(f"({g['frozen']})"), row
        else:
            assert "(" not in row
    assert last == (f"{summary['prunable_groups']} prunable groups; params {summary['params']:,}; "
                    f"MACs {summary['macs']:,}; prunable MAC fraction {summary['prunable_mac_fraction']:.3f}")


def test_json_stdout_holds_only_json_while_warnings_go_to_stderr(tmp_path, capsys):
    """A pattern that matches only the output layer warns; stdout stays one JSON document."""
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    out, err = _ok(capsys, ["inspect", path, "--json", "--exclude", OUTPUT])
    assert _strict_json(out)["prunable_groups"] == 3
    assert "stay whole anyway" in err


def test_a_truncated_table_cell_is_marked_and_shows_no_false_name(tmp_path, capsys):
    """Expected: a group with more producers than the column holds shows only real producer
    names, or says the cell was cut (an ellipsis), so that a name copied from the table for
    --exclude (README: 'Names are those onnx-eprune inspect lists') is one of the model's. Was:
    the cell ended in 'conv_b', a prefix of 'conv_b_second_layer_of_the_block' and no node's
    name."""
    model = residual()
    names = {"stem": "stem_block_first_convolution", "conv_b": "conv_b_second_layer_of_the_block"}
    for node in model.graph.node:
        node.name = names.get(node.name, node.name)
    path = _save(model, tmp_path / "m.onnx")
    groups = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])["groups"]
    rows, _ = _table(_ok(capsys, ["inspect", path])[0])
    for row, g in zip(rows, groups):
        cell = row[25:61].strip()  # the producers column: 36 characters after id, channels, status
        if not cell:
            continue
        shown = [item.strip() for item in cell.split(", ")]
        cut = cell.endswith(("...", "…"))
        for item in shown[:-1] if cut else shown:
            assert item in g["producers"], (item, row)


def test_a_model_without_a_prunable_group_is_inspected_not_refused(tmp_path, capsys):
    """Nothing prunable is a result, not an error: exit 0, 0 prunable groups, fraction 0,
    every group frozen with its reason (README: 'inspect MODEL shows why each group is frozen')."""
    path = _save(_single_conv(), tmp_path / "m.onnx")
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])
    assert summary["prunable_groups"] == 0 and summary["prunable_mac_fraction"] == 0.0
    assert summary["macs"] == 4 * 27 * 16 * 16 and summary["params"] == 4 * 27 + 4
    assert summary["groups"] and all(not g["prunable"] and g["frozen"] for g in summary["groups"])
    rows, last = _table(_ok(capsys, ["inspect", path])[0])
    assert last.startswith("0 prunable groups;") and all(" frozen " in row for row in rows)


def test_a_model_without_weights(tmp_path, capsys):
    """No Conv/Gemm/MatMul: no groups, 0 params and MACs, fraction 0 (no division by zero)."""
    path = _save(_relu_only(), tmp_path / "m.onnx")
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])
    assert summary == {"groups": [], "prunable_groups": 0, "macs": 0, "params": 0, "prunable_mac_fraction": 0.0,
                       "pruned_before": []}


def test_a_model_without_inputs_is_inspected_or_refused_in_one_line(tmp_path, capsys):
    """Expected: a model whose graph has no inputs (it computes from constants) is either
    inspected (exit 0) or refused with a one-line usage error that says it has no inputs; from
    Python an EPruneError, never a raw exception. Was: 'onnx-eprune: internal error:
    StopIteration' (exit 1), and a raw StopIteration from the API."""
    path = _save(_no_inputs(), tmp_path / "m.onnx")
    status = main(["inspect", path])
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err
    assert (status == 0 and "prunable groups" in out) or \
        (status == 2 and err.strip().startswith("onnx-eprune: error: ") and "input" in err and out == "")
    try:
        onnx_eprune.inspect(path)
    except onnx_eprune.EPruneError:
        pass


def test_channels_reaching_an_if_branch_are_frozen_with_the_reason(tmp_path, capsys):
    """README Known limits: channels read inside an If branch are frozen; the groups after
    it stay prunable; the reason names the If."""
    path = _save(_if_model(), tmp_path / "m.onnx")
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])
    by_producer = {tuple(g["producers"]): g for g in summary["groups"]}
    assert not by_producer[("conv1",)]["prunable"] and "If" in by_producer[("conv1",)]["frozen"]
    into_conv2 = next(g for g in summary["groups"] if g["consumers"] == ["conv2"])
    assert not into_conv2["prunable"] and "If" in into_conv2["frozen"]
    assert by_producer[("conv2",)]["prunable"] and by_producer[("conv3",)]["prunable"]
    assert summary["prunable_groups"] == 2
    assert "branch" not in {n for g in summary["groups"] for n in g["producers"] + g["consumers"]}


# -- inspect: --input-shape and --calib ------------------------------------------------------------

def test_macs_are_per_sample_at_the_given_height_and_width(tmp_path, capsys):
    """MACs are counted per sample at --input-shape: the batch does not change them, H x W
    scales the convolutions' and not the classifier's; --calib of that shape agrees."""
    path = _save(_dynamic_hw(residual()), tmp_path / "m.onnx")

    def expected(h, w):  # stem 3->8, conv_a 8->8, conv_b 8->8 (3x3, same padding), Gemm 8->10
        return (8 * 27 + 8 * 72 + 8 * 72) * h * w + 8 * CLASSES

    def macs(*extra):
        return _strict_json(_ok(capsys, ["inspect", path, "--json", *extra])[0])["macs"]

    assert macs("--input-shape", "1,3,8,8") == macs("--input-shape", "5,3,8,8") == expected(8, 8)
    assert macs("--input-shape", "2,3,24,40") == expected(24, 40)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(3, 3, 24, 40)).astype(np.float32))
    assert macs("--calib", str(tmp_path / "c.npy")) == expected(24, 40)


def test_input_shape_and_calib_of_the_same_shape_give_the_same_json(tmp_path, capsys, calib):
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", calib)
    by_shape = _ok(capsys, ["inspect", path, "--json", "--input-shape", "7,3,16,16"])[0]
    by_calib = _ok(capsys, ["inspect", path, "--json", "--calib", str(tmp_path / "c.npy")])[0]
    plain = _ok(capsys, ["inspect", path, "--json"])[0]
    assert _strict_json(by_shape) == _strict_json(by_calib) == _strict_json(plain)


def test_calib_and_input_shape_together_is_a_usage_error(tmp_path, capsys, calib):
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", calib)
    line = _usage_error(capsys, ["inspect", path, "--calib", str(tmp_path / "c.npy"), "--input-shape", "1,3,16,16"])
    assert "--input-shape" in line and "--calib" in line


@pytest.mark.parametrize("shape", ["", "1,3,16,16,", ",1,3,16,16", "1;3;16;16", "1,3,16.5,16", "1x3x16x16",
                                   "1,3,,16"])
def test_unreadable_input_shapes_are_usage_errors(tmp_path, capsys, shape):
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    line = _usage_error(capsys, ["inspect", path, "--input-shape", shape])
    assert "--input-shape" in line and repr(shape) in line


def test_an_input_shape_too_large_for_any_array_is_a_usage_error(tmp_path, capsys):
    """Expected: a dimension that no array can have is a one-line usage error (exit 2) that
    names --input-shape. Was: 'internal error: ValueError: Maximum allowed dimension exceeded',
    exit 1."""
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    line = _usage_error(capsys, ["inspect", path, "--input-shape", "99999999999999999999,3,16,16"])
    assert "--input-shape" in line


def test_a_batch_dimension_written_as_minus_one_counts_as_dynamic(tmp_path, capsys):
    """Expected: an input declared (-1, 3, 16, 16) (onnx.checker accepts it; some converters
    write -1 for 'any') is inspected like (?, 3, 16, 16), as graph/model_io.fixed_dims reads it.
    Was: 'internal error: ValueError: negative dimensions are not allowed' (exit 1), and the raw
    ValueError from onnx_eprune.inspect."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    onnx.checker.check_model(model)
    path = _save(model, tmp_path / "m.onnx")
    status = main(["inspect", path, "--json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert _strict_json(out)["prunable_groups"] == 3
    assert onnx_eprune.inspect(model)["prunable_groups"] == 3


# -- inspect: --exclude, pruned models -------------------------------------------------------------

def test_a_pattern_that_matches_nothing_prints_no_table(tmp_path, capsys):
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    for extra in (["--json"], []):
        line = _usage_error(capsys, ["inspect", path, *extra, "--exclude", "conv_4", "--exclude", "conv*9"])
        assert "'conv*9' matches no node" in line


def test_the_exclude_preview_is_what_prune_keeps(tmp_path, capsys, calib):
    """README: 'inspect --exclude shows what a pattern keeps before any run'. The groups
    inspect marks excluded are exactly the ones the prune keeps whole, with the same reason,
    and every group it calls prunable loses channels at keep-ratio 0.5."""
    model = residual(width=8)
    path = _save(model, tmp_path / "m.onnx")
    preview = _strict_json(_ok(capsys, ["inspect", path, "--json", "--exclude", "conv_b"])[0])["groups"]
    report = onnx_eprune.prune(model, calib, keep_ratio=0.5, exclude=["conv_b"], round_to=1, **FAST).report
    done = {tuple(g["producers"]): g for g in report["groups"]}
    assert {tuple(g["producers"]) for g in preview if g["producers"]} == {k for k in done if k}
    for g in preview:
        if not g["producers"]:
            continue
        after = done[tuple(g["producers"])]
        assert after["frozen"] == g["frozen"]
        if g["prunable"]:
            assert after["channels_after"] < after["channels_before"] == g["channels"]
        else:
            assert after["channels_after"] == after["channels_before"] == g["channels"]
    assert any("excluded by 'conv_b'" == g["frozen"] for g in preview)


def test_pruned_twice_lists_both_runs_and_the_channels_left(tmp_path, capsys, calib):
    """inspect of a model pruned twice: its channels are the second run's channels_after,
    'pruned before:' has one line per run, oldest first, and --json's pruned_before is the
    metadata list itself."""
    first = onnx_eprune.prune(conv_bn_relu_pool_flatten_gemm(True), calib, keep_ratio=0.75, round_to=1, **FAST)
    second = onnx_eprune.prune(first.model, calib, sparsity=0.3, exclude=["conv_1"], min_keep=0.25, round_to=1,
                               method="random", mode="oneshot", device="cpu")
    path = str(tmp_path / "p.onnx")
    second.save(path)
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])
    metadata = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["onnx_eprune"])
    assert summary["pruned_before"] == metadata and len(metadata) == 2
    assert [run["target"]["kind"] for run in metadata] == ["keep_ratio", "sparsity"]
    after = {tuple(g["producers"]): g["channels_after"] for g in second.report["groups"]}
    assert {tuple(g["producers"]): g["channels"] for g in summary["groups"] if g["producers"]} == \
        {k: v for k, v in after.items() if k}
    assert (summary["params"], summary["macs"]) == (second.report["params"]["after"], second.report["macs"]["after"])
    out, _ = _ok(capsys, ["inspect", path])
    runs = [line for line in out.splitlines() if line.startswith("pruned before: ")]
    assert len(runs) == 2
    assert runs[0].startswith("pruned before: keep_ratio 0.75, l1 oneshot")
    assert runs[1].startswith("pruned before: sparsity 0.3, random oneshot")
    assert "excluding conv_1" in runs[1] and "min-keep 0.25" in runs[1] and "excluding" not in runs[0]
    assert f"params {second.report['params']['before']:,} -> {second.report['params']['after']:,}" in runs[1]


@pytest.mark.parametrize("value, shown", [
    ("not json at all", ['"not json at all"']),
    ('{"a": 1}', ['"{\\"a\\": 1}"']),
    ("[1, \"x\", null]", ["1", '"x"', "null"]),
    ("[NaN, 1e999]", None),
])
def test_metadata_this_tool_did_not_write_is_shown_as_it_is(tmp_path, capsys, value, shown):
    """An 'onnx_eprune' metadata entry from elsewhere neither breaks inspect nor its JSON:
    the table shows each entry as it is, --json stays strict JSON."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    prop = model.metadata_props.add()
    prop.key, prop.value = "onnx_eprune", value
    path = _save(model, tmp_path / "m.onnx")
    summary = _strict_json(_ok(capsys, ["inspect", path, "--json"])[0])
    assert len(summary["pruned_before"]) == (2 if value.startswith("[N") else len(shown))
    out, _ = _ok(capsys, ["inspect", path])
    lines = [line[len("pruned before: "):] for line in out.splitlines() if line.startswith("pruned before: ")]
    if shown is not None:
        assert lines == shown


# -- quiet and help ------------------------------------------------------------------------------

def test_quiet_prints_only_errors_as_its_help_says(tmp_path, capsys):
    """Expected: with -q, stderr holds nothing but errors, as '-q, --quiet  print only errors'
    says (or the help says that warnings stay). Was: the warning '--exclude 'y' matches only
    layers that stay whole anyway' was printed with -q."""
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    out, err = _ok(capsys, ["inspect", path, "-q", "--exclude", OUTPUT])
    assert "prunable groups" in out  # the result itself is still printed
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["inspect"]
    quiet_help = next(a.help for a in sub._actions if "-q" in a.option_strings)
    assert err == "" or "warning" in quiet_help.lower()


def test_exclude_help_says_what_a_question_mark_matches(tmp_path, capsys):
    """Expected: --help says ? matches one character (README: '* matches any characters, /
    included, and ? one'), and so does the 'matches no node' error. Was: both said '* and ?
    match any characters', although 'conv?' never matched 'conv_1'."""
    path = _save(conv_bn_relu_pool_flatten_gemm(True), tmp_path / "m.onnx")
    _ok(capsys, ["inspect", path, "--exclude", "conv?1"])  # one character: matches conv_1
    line = _usage_error(capsys, ["inspect", path, "--exclude", "conv?"])  # no character after 'conv?'
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["inspect"]
    exclude_help = next(a.help for a in sub._actions if "--exclude" in a.option_strings)
    assert "? match any characters" not in exclude_help
    assert "? match any characters" not in line


# -- README: command line --------------------------------------------------------------------------

def _subparsers() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _options(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _option_table() -> list[tuple[str, str]]:
    """The README's option table: (first cell, meaning)."""
    section = README.split("## Command line", 1)[1].split("To keep some layers", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = line.split(" | ")
            rows.append((cells[0][2:], " | ".join(cells[1:])))
    return rows


def test_every_option_in_the_readme_synopsis_exists_for_that_command():
    """The reverse of test_docs: no option the synopsis gives a command is unknown to it."""
    subs = _subparsers()
    for name, text in _synopsis(README).items():
        named = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text))
        assert named, name
        assert named <= _options(subs[name]), f"onnx-eprune {name}: {named - _options(subs[name])} not accepted"


def test_every_option_of_the_readme_table_exists():
    """Each option the table explains exists; a row for 'sweep --x' exists for sweep."""
    subs = _subparsers()
    every = set().union(*(_options(p) for p in subs.values()))
    rows = _option_table()
    assert len(rows) > 15
    for first, _ in rows:
        command = re.match(r"`(\w+) --", first)
        for option in re.findall(r"--[a-z][\w-]*", first):
            assert option in (_options(subs[command.group(1)]) if command else every), (first, option)


def test_the_readme_defaults_are_the_parsers_and_the_configs():
    """The defaults the README states: --batch-size 64, --method entropic, --mode sequential,
    --min-keep 0, --refit-ridge auto-thin, demo at 55% sparsity; the parser's defaults and
    PruneConfig's are those."""
    table = dict(_option_table())
    meaning = {first.strip("`").split()[0]: text for first, text in table.items()}
    assert "(default 64)" in meaning["--batch-size"]
    assert "`entropic` (default)" in meaning["--method"]
    assert "`sequential` (default)" in meaning["--mode"]
    assert "Default 0:" in meaning["--min-keep"]
    assert "`auto-thin` (default)" in meaning["--refit-ridge"]
    assert "55% parameter sparsity" in README
    config = onnx_eprune.PruneConfig()
    # mode None: sequential, or one-shot from statistics files (the report says which ran)
    assert (config.batch_size, config.method, config.mode, config.min_keep, config.refit_ridge) == \
        (64, "entropic", None, 0.0, "auto-thin")
    assert onnx_eprune.prune(residual(), random_input(16), keep_ratio=1.0, device="cpu").report["mode"] == \
        "sequential"
    subs = _subparsers()
    for name in ("prune", "sweep", "calibrate"):
        defaults = {a.dest: a.default for a in subs[name]._actions}
        assert defaults["batch_size"] == 64, name
        if name != "calibrate":
            # --mode is None in the parser (so that an explicit sequential with --stats is refused): sequential
            assert (defaults["method"], defaults["mode"], defaults["min_keep"]) == ("entropic", None, 0.0)
            # --seed is None, in the parser as in the API (so that one given with --stats is checked): 0
            assert defaults["seed"] is None and config.seed is None and defaults["device"] == config.device
    assert {a.dest: a.default for a in subs["demo"]._actions}["sparsity"] == 0.55


def test_a_config_built_from_bare_cli_options_equals_the_api_default():
    """prune with no run options gives the PruneConfig the Python API uses by default."""
    from onnx_eprune.cli import _run_config

    args = build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--calib", "c.npy", "--sparsity", "0.5"])
    assert _run_config(args, sparsity=0.5) == onnx_eprune.PruneConfig(sparsity=0.5)


def test_the_readme_image_defaults_are_what_the_command_applies(tmp_path, monkeypatch):
    """README: --scale default 1/255, --mean / --std defaults 0 and 1, --resize crop the
    default; the help of each says so, and a bare --calib-images reads the folder with them."""
    import importlib

    from onnx_eprune.cli import _calib_source

    images = importlib.import_module("onnx_eprune.calibrate.images")  # onnx_eprune.calibrate is the function

    assert "`--scale` (default `1/255`)" in README and "defaults 0 and 1" in README
    assert "(`--resize crop`, the default" in README
    helps = {a.dest: a.help or "" for a in _subparsers()["prune"]._actions}
    assert "default: 1/255" in helps["scale"] and "default: 0" in helps["mean"] and "default: 1" in helps["std"]
    assert "(default)" in helps["resize"] and helps["resize"].index("crop") < helps["resize"].index("(default)")

    seen = {}

    class Stop(Exception):
        pass

    def record(directory, model, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(images, "load_image_folder", record)
    args = build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--calib-images", str(tmp_path),
                                      "--sparsity", "0.5"])
    with pytest.raises(Stop):
        _calib_source(args, conv_bn_relu_pool_flatten_gemm(True))
    assert seen["scale"] == pytest.approx(1 / 255)
    assert tuple(np.ravel(seen["mean"])) == (0.0,) and tuple(np.ravel(seen["std"])) == (1.0,)
    assert seen["resize"] == "crop"


def test_inspect_help_matches_the_readme_synopsis(capsys):
    """inspect --help names the options and the N,C,H,W form the README gives, and marks
    --calib and --input-shape as alternatives, as the synopsis does."""
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "[--calib CALIB | --input-shape N,C,H,W]" in text
    assert "[--calib CALIB | --input-shape N,C,H,W]" in _synopsis(README)["inspect"]
    for option in ("--exclude", "--json", "-q", "-v", "--debug"):
        assert option in text


# -- README: Python API --------------------------------------------------------------------------

def _api_section() -> str:
    return README.split("## Python API", 1)[1].split("\n## ", 1)[0]


def _documented_signature(name: str) -> list[tuple[str, str | None]]:
    """(parameter, default text) of ``name(...)`` as the README writes it."""
    text = re.search(rf"`{name}\(([^`]*)\)`", _api_section()).group(1)
    params = []
    for part in (p.strip() for p in text.split(",")):
        key, _, default = part.partition("=")
        params.append((key.strip(), default.strip() or None))
    return params


@pytest.mark.parametrize("name", ["prune", "sweep", "calibrate"])
def test_documented_signatures_are_the_real_ones(name):
    """The README's ``prune(...)``, ``sweep(...)`` and ``calibrate(...)``: their parameters
    appear in the function's signature in that order, with the defaults given."""
    real = pyinspect.signature(getattr(onnx_eprune, name)).parameters
    names = list(real)
    previous = -1
    for key, default in _documented_signature(name):
        if key.startswith("**"):
            assert any(p.kind is p.VAR_KEYWORD and p.name == key[2:] for p in real.values()), key
            continue
        assert key in real, (name, key)
        assert names.index(key) > previous, (name, key)
        previous = names.index(key)
        if default is None:
            assert real[key].default is pyinspect.Parameter.empty, (name, key)
        else:
            assert real[key].default == eval(default), (name, key)  # the README's literals


def test_the_documented_config_keywords_are_the_config_fields():
    """README: 'either a PruneConfig or its fields as keywords (sparsity, ..., entropic)'."""
    text = _api_section().split("its fields as keywords", 1)[1].split("It returns", 1)[0]
    documented = set(re.findall(r"`(\w+)`", text)) - {"PruneConfig"}
    documented = {n for n in documented if not n[0].isupper()}
    assert documented == {f.name for f in dataclasses.fields(onnx_eprune.PruneConfig)}


def test_the_documented_sweep_point_fields_are_its_fields():
    text = _api_section().split("one `SweepPoint` per target", 1)[1].split("`as_dict()`", 1)[0]
    documented = set(re.findall(r"`(\w+)`", text))
    assert documented == {f.name for f in dataclasses.fields(onnx_eprune.SweepPoint)}
    assert callable(onnx_eprune.SweepPoint.as_dict)


def test_the_names_the_api_section_mentions_exist():
    """Every onnx_eprune.X.Y the section names imports, and the error classes are exported."""
    import importlib

    for dotted in set(re.findall(r"onnx_eprune\.[\w.]+\w", _api_section())):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{dotted} does not import")
    from onnx_eprune.select.entropic import EntropicConfig

    assert onnx_eprune.PruneConfig(entropic=EntropicConfig()).entropic == EntropicConfig()


def test_the_dicts_have_the_keys_the_readme_names(calib):
    """README: inspect returns 'dict: groups, prunable MAC fraction'; evaluate 'dict:
    outputs, latency_ms, size'; result.report has params and macs. inspect's docstring
    names exactly the keys it returns."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    summary = onnx_eprune.inspect(model, exclude=["conv_1"])
    assert set(summary) == TOP_KEYS and all(set(g) == GROUP_KEYS for g in summary["groups"])
    doc = onnx_eprune.inspect.__doc__
    returns = doc.split("Returns", 1)[1]
    named = set(re.findall(r"``(\w+)``", returns))
    assert TOP_KEYS | GROUP_KEYS <= named
    fidelity = onnx_eprune.evaluate(model, model, calib[:8], device="cpu")
    assert {"outputs", "latency_ms", "size"} <= set(fidelity)
    result = onnx_eprune.prune(model, calib, sparsity=0.5, **FAST)
    assert {"params", "macs"} <= set(result.report) and isinstance(result.model, onnx.ModelProto)


@pytest.mark.parametrize("name", ["prune", "calibrate", "sweep", "inspect", "evaluate"])
def test_docstrings_say_where_the_samples_go(name):
    """Each function that takes arrays says on which axis the samples lie, or that it takes
    them as prune does (whose docstring says so)."""
    doc = " ".join(getattr(onnx_eprune, name).__doc__.split())
    assert re.search(r"axis 0|first axis|\(N, \.\.\.\)", doc) or re.search(
        r"``calib`` (as for|take what) :func:`(onnx_eprune\.)?prune`", doc), name
    if name == "sweep":  # its own arrays: the labels
        assert "shape (N,)" in doc


def test_inspect_with_a_sample_of_other_values_gives_the_same_groups(calib):
    """inspect reads only the shape of its sample: zeros, random data and a path agree."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    assert onnx_eprune.inspect(model) == onnx_eprune.inspect(model, calib[:3]) == \
        onnx_eprune.inspect(model, random_input(1, seed=9) * 1000)
