"""The report folder: report.json, report.md and the plots (``--report-dir``)."""

from __future__ import annotations

import errno
import json
import logging
import sys

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm
from onnx_eprune import files as atomic_files
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError
from onnx_eprune.report_files import markdown_report, write_report_dir

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(calib):
    result = onnx_eprune.prune(conv_bn_relu_pool_flatten_gemm(True), calib, sparsity=0.4, device="cpu", method="l1")
    return dict(result.report, input="model.onnx", output="pruned.onnx")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make ``import matplotlib`` (and its submodules) fail as if it were not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + \
            ["matplotlib", "matplotlib.figure"]:
        monkeypatch.setitem(sys.modules, name, None)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_json_markdown_and_plots(report, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "rep"
    paths = write_report_dir(report, folder)
    assert [p.name for p in paths] == ["report.json", "report.md", "channels.png", "allocation.png"]
    assert _files(folder) == ["allocation.png", "channels.png", "report.json", "report.md"]  # no temp files
    assert json.loads((folder / "report.json").read_text()) == report
    for name in ("channels.png", "allocation.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_json_is_the_same_as_report_option(report, tmp_path):
    from onnx_eprune.report import write_json

    write_json(report, tmp_path / "r.json")
    write_report_dir(report, tmp_path / "rep")
    assert (tmp_path / "rep" / "report.json").read_text() == (tmp_path / "r.json").read_text()


def test_markdown_mentions_every_group(report):
    text = markdown_report(report)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for g in report["groups"]:
        row = rows[str(g["id"])]
        for name in g["producers"] + g["consumers"]:
            assert name in row
        if g["frozen"]:
            assert f"frozen: {g['frozen']}" in row
        else:
            assert f"{g['channels_before']} -> {g['channels_after']}" in row
    p, m = report["params"], report["macs"]
    assert f"{p['before']:,} | {p['after']:,}" in text and f"{m['before']:,} | {m['after']:,}" in text
    assert f"{100 * p['removed_fraction']:.1f}%" in text
    assert report["provider"] in text and f"calibration samples: {report['samples']}" in text
    for phase in report["seconds"]:
        assert f"| {phase} |" in text
    for output in report["fidelity_on_calibration"]["outputs"]:
        assert f"| {output} |" in text
    assert "model.onnx" in text and "pruned.onnx" in text


def test_markdown_escapes_pipes_in_names(report):
    odd = json.loads(json.dumps(report))
    odd["groups"][1]["producers"] = ["a|b"]
    assert "a\\|b" in markdown_report(odd)


def test_without_matplotlib_json_and_markdown_only(report, tmp_path, no_matplotlib, caplog):
    with caplog.at_level(logging.INFO, logger="onnx_eprune"):
        paths = write_report_dir(report, tmp_path / "rep")
    assert [p.name for p in paths] == ["report.json", "report.md"]
    assert _files(tmp_path / "rep") == ["report.json", "report.md"]
    notes = [r for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO


def test_existing_folder_is_reused_and_files_replaced(report, tmp_path):
    folder = tmp_path / "rep"
    folder.mkdir()
    (folder / "report.md").write_text("old")
    (folder / "keep.txt").write_text("mine")
    write_report_dir(report, folder)
    assert (folder / "report.md").read_text().startswith("# onnx-eprune")
    assert (folder / "keep.txt").read_text() == "mine"


def test_a_failed_write_leaves_nothing(report, tmp_path, monkeypatch):
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "report.md" in str(path) and "w" in mode:
            f.write(b"# partial")
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return f

    monkeypatch.setattr(atomic_files, "open", full_disk, raising=False)
    folder = tmp_path / "rep"
    with pytest.raises(EPruneError, match="No space left"):
        write_report_dir(report, folder)
    assert _files(folder) == []  # report.json removed again, no temp file


# -- through the command line -----------------------------------------------------------------

@pytest.fixture
def files(tmp_path, calib):
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    return tmp_path


def _prune(files, *extra):
    return main(["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--calib",
                 str(files / "calib.npy"), "--device", "cpu", "--method", "l1", "--sparsity", "0.4", *extra])


def test_cli_report_dir_with_report(files, capsys):
    pytest.importorskip("matplotlib")
    assert _prune(files, "--report-dir", str(files / "rep"), "--report", str(files / "r.json")) == 0
    out = capsys.readouterr().out
    assert str(files / "rep" / "report.md") in out and str(files / "r.json") in out
    assert _files(files / "rep") == ["allocation.png", "channels.png", "report.json", "report.md"]
    assert (files / "rep" / "report.json").read_text() == (files / "r.json").read_text()
    report = json.loads((files / "r.json").read_text())
    assert report["output"] == str(files / "out.onnx")
    text = (files / "rep" / "report.md").read_text()
    assert all(f"| {g['id']} |" in text for g in report["groups"])


def test_cli_report_dir_without_matplotlib(files, capsys, no_matplotlib):
    assert _prune(files, "--report-dir", str(files / "rep")) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "matplotlib" in line] == [
        "onnx-eprune: matplotlib is not installed: wrote no plots (pip install 'onnx-eprune[plots]' for them)"]
    assert _files(files / "rep") == ["report.json", "report.md"]
    assert (files / "out.onnx").exists()


def test_cli_report_dir_quiet_says_nothing(files, capsys, no_matplotlib):
    assert _prune(files, "--report-dir", str(files / "rep"), "-q") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- provenance in the pruned model's metadata ------------------------------------------------

def _provenance(model: onnx.ModelProto) -> list:
    from onnx_eprune.graph.model_io import PROVENANCE_KEY

    values = [p.value for p in model.metadata_props if p.key == PROVENANCE_KEY]
    assert len(values) == 1
    return json.loads(values[0])


def test_pruned_model_says_how_it_was_made_and_keeps_the_exporters_metadata(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    onnx.helper.set_model_props(model, {"author": "exporter"})
    first = onnx_eprune.prune(model, calib, sparsity=0.4, method="l1", device="cpu", exclude=("conv_1",))
    [entry] = _provenance(first.model)
    report = first.report
    assert entry == {"version": onnx_eprune.__version__, "method": "l1", "mode": "sequential",
                     "target": {"kind": "sparsity", "value": 0.4}, "exclude": ["conv_1"], "min_keep": 0.0,
                     "refit_ridge": report["refit_ridge"], "samples": len(calib), "seed": 0,
                     "params": [report["params"]["before"], report["params"]["after"]],
                     "macs": [report["macs"]["before"], report["macs"]["after"]]}
    assert {p.key: p.value for p in first.model.metadata_props}["author"] == "exporter"
    assert not model.metadata_props[1:]  # the input is left alone
    second = onnx_eprune.prune(first.model, calib, keep_ratio=0.5, method="random", device="cpu")
    runs = _provenance(second.model)
    assert runs[0] == entry and runs[1]["method"] == "random" and runs[1]["target"]["kind"] == "keep_ratio"
    assert runs[1]["params"][0] == entry["params"][1]  # the second run starts where the first ended


def test_provenance_keeps_a_foreign_value_as_the_first_entry():
    from onnx_eprune.graph.model_io import PROVENANCE_KEY, record_provenance

    model = conv_bn_relu_pool_flatten_gemm(True)
    onnx.helper.set_model_props(model, {PROVENANCE_KEY: "not json {"})
    record_provenance(model, {"method": "entropic"})
    assert _provenance(model) == ["not json {", {"method": "entropic"}]


def test_inspect_lists_the_runs_a_model_went_through(calib, tmp_path, capsys):
    first = onnx_eprune.prune(conv_bn_relu_pool_flatten_gemm(True), calib, sparsity=0.4, method="l1", device="cpu",
                              exclude=("conv_1",), min_keep=0.25)
    assert onnx_eprune.inspect(conv_bn_relu_pool_flatten_gemm(True))["pruned_before"] == []
    assert onnx_eprune.inspect(first.model)["pruned_before"] == _provenance(first.model)
    first.save(tmp_path / "pruned.onnx")
    assert main(["inspect", str(tmp_path / "pruned.onnx")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    params = first.report["params"]
    assert line == (f"pruned before: sparsity 0.4, l1 sequential, params {params['before']:,} -> "
                    f"{params['after']:,}, excluding conv_1, min-keep 0.25 (onnx-eprune {onnx_eprune.__version__})")


def test_provenance_of_a_run_from_statistics_files_counts_their_images(calib):
    model = conv_bn_relu_pool_flatten_gemm(True)
    halves = [onnx_eprune.calibrate(model, part, device="cpu") for part in (calib[:40], calib[40:])]
    result = onnx_eprune.prune(model, None, onnx_eprune.PruneConfig(sparsity=0.3, method="l1", device="cpu"),
                               stats=halves)
    assert result.report["samples"] == len(calib)
    assert _provenance(result.model)[0]["samples"] == len(calib)


@pytest.mark.parametrize("value", ['[{"params": ["a", "b"], "target": "x"}]', '[{"params": [1.5, null]}]', '[3]',
                                   '{"a": 1}'])
def test_inspect_shows_metadata_it_cannot_read_as_it_is(tmp_path, capsys, value):
    from onnx_eprune.graph.model_io import PROVENANCE_KEY

    model = conv_bn_relu_pool_flatten_gemm(True)
    onnx.helper.set_model_props(model, {PROVENANCE_KEY: value})
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error" not in captured.err
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith("pruned before: ") and len(line) > len("pruned before: ")
