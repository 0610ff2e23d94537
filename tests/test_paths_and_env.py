"""The command line against hostile paths, node names and environments.

Paths: spaces, non-ASCII (é, 中文, emoji), newlines, shell and glob characters, a leading
dash (after ``--``), ``..``, a bare name in the current directory, names near NAME_MAX
(255 bytes; the atomic writes add a prefix and a suffix to the name), names that are not
UTF-8, ``/dev/null`` and FIFOs as outputs, an empty path, a symlinked, unreadable or piped
model. Names: node and tensor names with newlines, carriage returns, pipes, backticks,
Markdown and HTML, very long and non-ASCII ones, in report.md, report.json, the printed
summary and ``inspect``'s table. Environment: TMPDIR missing, a file, gone or unusable;
OMP_NUM_THREADS; the C locale (Python's UTF-8 mode, and pure ASCII); an unwritable or
deleted working directory; closed stdin and stdout, and a closed pipe on stdout.

Most tests call ``onnx_eprune.cli.main`` in-process. The few that need a process of their
own (thread count, locale, file descriptors) run the installed ``onnx-eprune`` script
(``python -m onnx_eprune`` runs the same ``main``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import conv_bn_relu_pool_flatten_gemm, io_signature
from onnx_eprune import __version__
from onnx_eprune.cli import main

RUN = ["--sparsity", "0.4", "--device", "cpu", "--method", "l1"]
LINE_END = re.compile(r"\r\n|\r|\n")  # CommonMark's line endings: a row must hold none of them
GROUP_HEADER = "| group | producers | consumers | channels |"
FIDELITY_HEADER = "| output | relative error | top-1 agreement |"

# node names as an exporter might write them; "y" is the output Gemm (its node and tensor)
HOSTILE = {
    "conv_1": "stem|a\nb `tick` <b>bold</b> &amp; *em* [x](y) # h",
    "conv_4": "中文_é_🚀" * 40,
    "gemm_8": "fc|" + "w" * 300,
    "y": "<script>alert(1)</script>|head",
}
HOSTILE_OUTPUT = "logits|\n`y`"


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def base(tmp_path: Path, calib: np.ndarray) -> Path:
    """tmp_path holding model.onnx (the small CNN) and calib.npy."""
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    return tmp_path


def _prune(model: str | Path, out: str | Path, calib: str | Path, *extra: str) -> list[str]:
    return ["prune", str(model), "-o", str(out), "--calib", str(calib), *RUN, *extra]


def _ok(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[str, str]:
    """Run ``argv``, which must succeed; returns (stdout, stderr)."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err
    return out, err


def _one_error(capsys: pytest.CaptureFixture, argv: list[str], code: int) -> str:
    """Run ``argv``, which must fail with ``code`` and exactly one error line (returned)."""
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert status == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: "), err
    return lines[0]


def _run_with_process_streams(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv`` with stdout and stderr that encode as a real process's do (surrogate
    escapes passed through, backslash-escaped on stderr; capsys's streams are strict UTF-8);
    returns (status, stdout, stderr)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    status = main(argv)
    return status, out.buffer.getvalue().decode("utf-8", "replace"), err.buffer.getvalue().decode("utf-8", "replace")


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row, split at unescaped pipes, escapes undone."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]


def _table(markdown: str, header: str) -> list[list[str]]:
    """The rows of the table under ``header``, each a whole row of the header's width."""
    lines = LINE_END.split(markdown)
    start = lines.index(header)
    assert lines[start + 1].startswith("|-"), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        assert line.startswith("| ") and line.endswith(" |"), f"broken table row: {line!r}"
        assert len(_cells(line)) == len(_cells(header)), f"row of the wrong width: {line!r}"
        rows.append(_cells(line))
    return rows


def _check_group_table(markdown: str, report: dict) -> None:
    """report.md's group table: one whole row per group of report.json, in order, naming its producers."""
    rows = _table(markdown, GROUP_HEADER)
    assert [r[0] for r in rows] == [str(g["id"]) for g in report["groups"]]
    for row, g in zip(rows, report["groups"]):
        assert row[1] == " ".join((", ".join(g["producers"]) or "(graph input)").splitlines())


def _renamed(nodes: dict[str, str], output: str | None = None) -> onnx.ModelProto:
    """The small CNN with its nodes renamed by ``nodes`` and its output tensor ``y`` renamed ``output``."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    for node in model.graph.node:
        node.name = nodes.get(node.name, node.name)
        if output:
            node.output[:] = [output if t == "y" else t for t in node.output]
    if output:
        model.graph.output[0].name = output
    onnx.checker.check_model(model, full_check=True)
    return model


def _script() -> list[str]:
    """The installed console script (what a user runs), else the module it calls."""
    script = Path(sys.executable).with_name("onnx-eprune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnx_eprune.cli"]


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# -- paths: spaces, non-ASCII, newlines, dashes, .., bare names --------------------------------

@pytest.mark.parametrize("folder, name", [
    ("with space", "my model.onnx"),
    ("é 中文 🚀", "mödel 🚀.onnx"),
    ("new\nline", "a\nb.onnx"),
    ("tab\tquote' \"dq\" $HOME; &", "x*?[y]{z}.onnx"),
])
def test_prune_and_inspect_with_unusual_path_characters(base: Path, capsys: pytest.CaptureFixture, folder: str,
                                                       name: str) -> None:
    """Spaces, non-ASCII, newlines, shell and glob characters in paths: it works; reports name them exactly."""
    where = base / folder
    where.mkdir()
    model, calib = where / name, where / f"cälib {name}.npy"
    shutil.copy(base / "model.onnx", model)
    shutil.copy(base / "calib.npy", calib)
    out, rep = where / f"öut {name}", where / f"rép {folder}"
    stdout, _ = _ok(capsys, _prune(model, out, calib, "--report-dir", str(rep)))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    report = json.loads((rep / "report.json").read_text(encoding="utf-8"))
    assert (report["input"], report["output"]) == (str(model), str(out))
    _check_group_table((rep / "report.md").read_text(encoding="utf-8"), report)
    assert str(out) in stdout
    assert model.read_bytes() == (base / "model.onnx").read_bytes()
    _ok(capsys, ["inspect", str(model), "-q"])


def test_leading_dash_names_after_double_dash(base: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A model named -o.onnx after ``--`` and an output given as --output=-out.onnx are files, not options."""
    monkeypatch.chdir(base)
    shutil.copy("model.onnx", "-o.onnx")
    _ok(capsys, ["prune", "--output=-out.onnx", "--calib", "calib.npy", *RUN, "-q", "--", "-o.onnx"])
    onnx.checker.check_model(onnx.load("-out.onnx"), full_check=True)
    assert Path("-o.onnx").read_bytes() == Path("model.onnx").read_bytes()
    assert "prunable groups" in _ok(capsys, ["inspect", "--", "-o.onnx"])[0]


def test_relative_paths_with_dotdot_and_bare_names(base: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``../`` paths land where they point; a model and outputs in the current directory need no folder."""
    (base / "sub").mkdir()
    monkeypatch.chdir(base / "sub")
    _ok(capsys, _prune("../model.onnx", "../sub/../up.onnx", "./../calib.npy", "-q", "--report-dir", "../rep"))
    assert (base / "up.onnx").is_file() and (base / "rep" / "report.md").is_file()
    monkeypatch.chdir(base)
    _ok(capsys, _prune("model.onnx", "bare.onnx", "calib.npy", "-q", "--report", "bare.json", "--report-dir", "r"))
    report = json.loads((base / "bare.json").read_text())
    assert (report["input"], report["output"]) == ("model.onnx", "bare.onnx")
    assert (base / "bare.onnx").is_file() and (base / "r" / "report.json").is_file()


def test_model_symlinked_from_another_folder(base: Path, capsys: pytest.CaptureFixture) -> None:
    """A model symlinked from another folder is read through the link; link and target stay as they were."""
    (base / "links").mkdir()
    link = base / "links" / "m.onnx"
    link.symlink_to(base / "model.onnx")
    before = sorted(p.name for p in base.iterdir())
    _ok(capsys, _prune(link, base / "links" / "out.onnx", base / "calib.npy", "-q"))
    assert link.is_symlink() and os.readlink(link) == str(base / "model.onnx")
    assert sorted(p.name for p in (base / "links").iterdir()) == ["m.onnx", "out.onnx"]
    assert sorted(p.name for p in base.iterdir()) == before


def test_symlinked_model_with_external_data(base: Path, capsys: pytest.CaptureFixture) -> None:
    """A symlink to a model with external weights beside its target works or is one usage line naming the data file."""
    (base / "real").mkdir()
    (base / "links").mkdir()
    onnx.save_model(conv_bn_relu_pool_flatten_gemm(True), str(base / "real" / "model.onnx"),
                    save_as_external_data=True, location="w.bin", size_threshold=0)
    link = base / "links" / "m.onnx"
    link.symlink_to(base / "real" / "model.onnx")
    argv = _prune(link, base / "links" / "out.onnx", base / "calib.npy", "-q")
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and "w.bin" in lines[0], err
        assert not (base / "links" / "out.onnx").exists()


def test_image_folder_with_unusual_characters(base: Path, capsys: pytest.CaptureFixture) -> None:
    """--calib-images walks a folder whose name and files hold spaces, brackets and non-ASCII."""
    pil = pytest.importorskip("PIL.Image")
    folder = base / "imgs [1] é 中"
    (folder / "sub 🚀").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        where = folder / ("sub 🚀" if i % 2 else "")
        pil.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(where / f"ïmg [{i}] *.png")
    _ok(capsys, ["prune", str(base / "model.onnx"), "-o", str(base / "out.onnx"), "--calib-images", str(folder),
                 *RUN, "-q"])


# -- paths: long names, empty names, names that are not UTF-8 ------------------------------

def test_input_name_of_255_bytes(base: Path, capsys: pytest.CaptureFixture) -> None:
    """A model and calibration file whose names take NAME_MAX bytes (2-byte characters) are read."""
    model = base / ("é" * 125 + ".onnx")
    calib = base / ("é" * 125 + ".npy")
    assert len(os.fsencode(model.name)) == 255
    shutil.copy(base / "model.onnx", model)
    shutil.copy(base / "calib.npy", calib)
    _ok(capsys, _prune(model, base / "out.onnx", calib, "-q", "--report-dir", str(base / "rep")))
    assert json.loads((base / "rep" / "report.json").read_text())["input"] == str(model)


@pytest.mark.parametrize("option", ["-o", "--report", "--stats-out"])
def test_output_name_near_name_max_is_written(base: Path, capsys: pytest.CaptureFixture, option: str) -> None:
    """An output name of 250 bytes is a legal name: the file is written."""
    suffix = {"-o": ".onnx", "--report": ".json", "--stats-out": ".npz"}[option]
    long_name = base / ("n" * (250 - len(suffix)) + suffix)
    assert len(os.fsencode(long_name.name)) == 250
    if option == "--stats-out":
        argv = ["calibrate", str(base / "model.onnx"), "--calib", str(base / "calib.npy"), "--stats-out",
                str(long_name), "--device", "cpu", "-q"]
    elif option == "--report":
        argv = _prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q", "--report", str(long_name))
    else:
        argv = _prune(base / "model.onnx", long_name, base / "calib.npy", "-q")
    _ok(capsys, argv)
    assert long_name.is_file()


def test_output_name_over_name_max_is_a_usage_error(base: Path, capsys: pytest.CaptureFixture) -> None:
    """An output name of 256 bytes cannot exist: a one-line usage error (exit 2), nothing written."""
    too_long = base / ("n" * 251 + ".onnx")
    line = _one_error(capsys, _prune(base / "model.onnx", too_long, base / "calib.npy", "-q"), 2)
    assert "-o" in line or "too long" in line
    assert sorted(p.name for p in base.iterdir()) == ["calib.npy", "model.onnx"]


@pytest.mark.parametrize("option", ["--report", "--report-dir"])
def test_empty_report_path_is_refused(base: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                      option: str) -> None:
    """An empty report path asks for a report that cannot be written: a usage error."""
    monkeypatch.chdir(base)
    _one_error(capsys, _prune("model.onnx", "out.onnx", "calib.npy", "-q", option, ""), 2)


@pytest.mark.parametrize("argv", [
    ["prune", "", "-o", "out.onnx", "--calib", "calib.npy", *RUN],
    ["prune", "model.onnx", "-o", "", "--calib", "calib.npy", *RUN],
    ["prune", "model.onnx", "-o", "out.onnx", "--calib", "", *RUN],
    ["calibrate", "model.onnx", "--calib", "calib.npy", "--stats-out", ""],
    ["inspect", ""],
])
def test_empty_paths_are_usage_errors(base: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                      argv: list[str]) -> None:
    """An empty model, output or calibration path is one usage line; nothing is written."""
    monkeypatch.chdir(base)
    _one_error(capsys, [*argv, "-q"], 2)
    assert sorted(p.name for p in base.iterdir()) == ["calib.npy", "model.onnx"]


def test_model_path_that_is_not_utf8(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model file named with bytes that are not UTF-8 is pruned."""
    model = base / os.fsdecode(b"m\xff.onnx")
    shutil.copy(base / "model.onnx", model)
    status, _, err = _run_with_process_streams(monkeypatch, _prune(model, base / "out.onnx", base / "calib.npy", "-q"))
    assert "Traceback" not in err
    assert status == 0, err
    assert (base / "out.onnx").is_file()


def test_report_dir_for_an_output_path_that_is_not_utf8(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o with bytes that are not UTF-8 and --report-dir: the model and the reports are written."""
    out = base / os.fsdecode(b"out\xfe.onnx")
    argv = _prune(base / "model.onnx", out, base / "calib.npy", "--report-dir", str(base / "rep"))
    status, stdout, err = _run_with_process_streams(monkeypatch, argv)
    assert "Traceback" not in err
    assert status == 0, err
    assert "wrote " in stdout
    assert out.is_file() and (base / "rep" / "report.md").is_file()


# -- outputs that are no files; inputs that cannot be read ----------------------------------

@pytest.mark.parametrize("argv", [
    ["prune", "{d}/model.onnx", "-o", "/dev/null", "--calib", "{d}/calib.npy", *RUN],
    ["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--calib", "{d}/calib.npy", "--report", "/dev/null", *RUN],
    ["calibrate", "{d}/model.onnx", "--calib", "{d}/calib.npy", "--stats-out", "/dev/null"],
    ["demo", "-o", "/dev/null"],
    ["calibrate", "{d}/model.onnx", "--calib", "{d}/calib.npy", "--stats-out", "{d}/fifo"],
    ["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--calib", "{d}/calib.npy", "--report-dir", "{d}/rep", *RUN],
    ["sweep", "{d}/model.onnx", "--calib", "{d}/calib.npy", "--sparsity", "0.3", "--report-dir", "{d}/sw"],
], ids=["prune-o-null", "report-null", "stats-null", "demo-null", "stats-fifo", "report-dir-fifo", "sweep-fifo"])
def test_outputs_that_are_devices_or_pipes(base: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    """/dev/null or a FIFO as any output (or report-folder file) is a usage error before any work, as documented."""
    os.mkfifo(base / "fifo")
    (base / "rep").mkdir()
    os.mkfifo(base / "rep" / "report.md")
    (base / "sw").mkdir()
    os.mkfifo(base / "sw" / "sweep.json")
    line = _one_error(capsys, [a.format(d=base) for a in argv] + ["--device", "cpu", "-q"], 2)
    assert "not a regular file" in line
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert all(p.is_fifo() for p in (base / "fifo", base / "rep" / "report.md", base / "sw" / "sweep.json"))
    assert not (base / "out.onnx").exists()


def test_unreadable_calibration_file(base: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration file without read permission (simulated: root reads anything) is one usage line."""
    import builtins

    real_open = builtins.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("calib.npy"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", denied)
    line = _one_error(capsys, _prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q"), 2)
    assert "calib.npy" in line and "Permission denied" in line and "permissions" in line


def test_unreadable_model_says_to_check_permissions(base: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A model without read permission (simulated) is one usage line: check permissions, not re-export."""
    real_load = onnx.load

    def denied(f, *args, **kwargs):
        if str(f).endswith("model.onnx"):
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_load(f, *args, **kwargs)
    monkeypatch.setattr(onnx, "load", denied)
    line = _one_error(capsys, _prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q"), 2)
    assert "Permission denied" in line and "permissions" in line and "export" not in line


def test_model_from_a_pipe(base: Path, capsys: pytest.CaptureFixture) -> None:
    """A model given as /dev/fd/N (bash's process substitution) is inspected, or refused without blaming the model."""
    data = (base / "model.onnx").read_bytes()
    assert len(data) < 65536  # fits the pipe's buffer: written whole before the read
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        status = main(["inspect", f"/dev/fd/{read_end}", "-q"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert status == 0 or ("not a valid ONNX model" not in err and "export" not in err), err
    finally:
        os.close(read_end)


# -- hostile node and tensor names in the reports -------------------------------------------

def test_hostile_names_keep_report_md_tables_and_report_json_valid(tmp_path: Path, calib: np.ndarray,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Hostile node and output names: report.json round-trips them, report.md tables keep one whole row each."""
    # newlines, pipes, backticks, Markdown, HTML, 300 characters, non-ASCII; --exclude matches them and the
    # pruned model keeps them
    model = _renamed(HOSTILE, HOSTILE_OUTPUT)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    _ok(capsys, _prune(tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "c.npy", "-q", "--report-dir",
                       str(tmp_path / "rep"), "--exclude", "fc|*"))
    report = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    producers = {p for g in report["groups"] for p in g["producers"]}
    assert set(HOSTILE.values()) <= producers
    assert list(report["fidelity_on_calibration"]["outputs"]) == [HOSTILE_OUTPUT]
    assert any(g["frozen"] and "excluded by 'fc|*'" in g["frozen"] for g in report["groups"])
    markdown = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    _check_group_table(markdown, report)
    assert [r[0] for r in _table(markdown, FIDELITY_HEADER)] == [HOSTILE_OUTPUT.replace("\n", " ")]
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    assert set(HOSTILE.values()) <= {n.name for n in pruned.graph.node}
    assert io_signature(pruned) == io_signature(model)


def test_carriage_return_in_a_name_keeps_report_md_rows_whole(tmp_path: Path, calib: np.ndarray,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A node named ``mid\\rcr`` (Windows line endings in an exporter's names) stays in one table row."""
    onnx.save(_renamed({"conv_4": "mid\rcr"}), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    _ok(capsys, _prune(tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "c.npy", "-q", "--report-dir",
                       str(tmp_path / "rep")))
    report = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    _check_group_table((tmp_path / "rep" / "report.md").read_text(encoding="utf-8"), report)


def test_summary_prints_one_line_per_group(tmp_path: Path, calib: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    """The summary printed after a run: one line per group shown and one per output, whatever the names."""
    onnx.save(_renamed(HOSTILE, HOSTILE_OUTPUT), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    stdout, _ = _ok(capsys, _prune(tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "c.npy", "--report",
                                   str(tmp_path / "r.json")))
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["group", "channels"])
    end = next(i for i, line in enumerate(lines) if line.startswith("params "))
    shown = [g for g in report["groups"] if g["producers"] or not g["frozen"]]
    assert len(lines[start + 1:end]) == len(shown), lines[start + 1:end]
    assert all(re.match(r"^\s*\d+\s+\d+ -> \d+  ", line) for line in lines[start + 1:end])
    assert next(line for line in lines if "relative error" in line).startswith("output ")


def test_inspect_table_one_line_per_group_with_newlines_in_names(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """inspect prints one table line per group even for names with newlines (--json keeps them exactly)."""
    onnx.save(_renamed(HOSTILE, HOSTILE_OUTPUT), str(tmp_path / "m.onnx"))
    stdout, _ = _ok(capsys, ["inspect", str(tmp_path / "m.onnx"), "--json"])
    groups = json.loads(stdout)["groups"]
    assert set(HOSTILE.values()) <= {p for g in groups for p in g["producers"]}
    stdout, _ = _ok(capsys, ["inspect", str(tmp_path / "m.onnx")])
    lines = stdout.splitlines()
    rows = lines[1:next(i for i, line in enumerate(lines) if "prunable groups;" in line)]
    assert len(rows) == len(groups), rows
    assert all(re.match(r"^\s*\d+\s+\d+\s+(prunable|frozen)\s", row) for row in rows), rows


def test_inspect_table_with_long_markup_and_non_ascii_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Long names with markup keep inspect's columns aligned; non-ASCII names keep one line per group."""
    ascii_names = {"conv_1": "a|`b`" * 30, "conv_4": "<i>x</i>", "gemm_8": "*" * 200, "y": "head|1"}
    for nodes in (ascii_names, {"conv_1": "中文" * 50, "conv_4": "é🚀", "gemm_8": "ü" * 99}):
        onnx.save(_renamed(nodes), str(tmp_path / "m.onnx"))
        groups = json.loads(_ok(capsys, ["inspect", str(tmp_path / "m.onnx"), "--json"])[0])["groups"]
        lines = _ok(capsys, ["inspect", str(tmp_path / "m.onnx")])[0].splitlines()
        rows = lines[1:next(i for i, line in enumerate(lines) if "prunable groups;" in line)]
        assert len(rows) == len(groups)
        if nodes is ascii_names:
            width = len(lines[0])  # the header: id, channels, status, producers, consumers
            assert all(len(row) == width or row[width:width + 3] == "  (" for row in rows), rows


# -- environment: TMPDIR ---------------------------------------------------------------------

def _scratch_run(base: Path, capsys: pytest.CaptureFixture, out: str) -> int:
    """A prune whose cached activations all go to scratch files (none kept in memory)."""
    status = main(_prune(base / "model.onnx", base / out, base / "calib.npy", "-q"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status


@pytest.mark.parametrize("tmpdir", ["missing", "file", "gone"])
def test_unusable_tmpdir_changes_nothing(base: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                         tmpdir: str) -> None:
    """TMPDIR missing, a file, or removed after start: scratch files go elsewhere or are skipped; same bytes out."""
    from onnx_eprune.calibrate import engine

    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", 0)
    assert _scratch_run(base, capsys, "ref.onnx") == 0
    used: list[str] = []
    real_new_file = engine.CacheSpace.new_file
    monkeypatch.setattr(engine.CacheSpace, "new_file", lambda self: used.append(real_new_file(self)) or used[-1])
    if tmpdir == "gone":
        monkeypatch.setattr(tempfile, "tempdir", str(base / "removed"))
    else:
        monkeypatch.setenv("TMPDIR", str(base / ("missing" if tmpdir == "missing" else "calib.npy")))
        monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    assert _scratch_run(base, capsys, "out.onnx") == 0
    assert (base / "out.onnx").read_bytes() == (base / "ref.onnx").read_bytes()
    assert not (base / "missing").exists() and not (base / "removed").exists()
    assert used or tmpdir == "gone"  # the scratch files were exercised (elsewhere than TMPDIR)
    assert all(not os.path.exists(os.path.dirname(p)) for p in used)  # and removed


def test_tmpdir_that_refuses_new_folders(base: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary folder that refuses new folders (simulated read-only): same bytes, or one line naming it."""
    from onnx_eprune.calibrate import engine

    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", 0)
    assert _scratch_run(base, capsys, "ref.onnx") == 0
    locked = base / "ro"
    locked.mkdir()
    real_mkdtemp = tempfile.mkdtemp
    refused: list[str] = []

    def refuse(*args, **kwargs):
        if os.path.realpath(kwargs.get("dir") or tempfile.gettempdir()) == str(locked.resolve()):
            refused.append(str(locked))
            raise PermissionError(errno.EACCES, "Permission denied", str(locked / "x"))
        return real_mkdtemp(*args, **kwargs)
    monkeypatch.setattr(tempfile, "tempdir", str(locked))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    status = main(_prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status == 0:
        assert (base / "out.onnx").read_bytes() == (base / "ref.onnx").read_bytes()
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 1 and len(lines) == 1 and str(locked) in lines[0], err
        assert not (base / "out.onnx").exists()
    assert refused and list(locked.iterdir()) == []


# -- environment: working directory -----------------------------------------------------------

def test_unwritable_working_directory(base: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An unwritable working directory (simulated): outputs elsewhere work; outputs in it are usage errors."""
    cwd = base / "ro"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.realpath(path) == str(cwd.resolve()):
            return False
        return real_access(path, mode, *args, **kwargs)
    monkeypatch.setattr(os, "access", access)
    _ok(capsys, _prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q"))
    assert "not writable" in _one_error(capsys, _prune(base / "model.onnx", "out.onnx", base / "calib.npy", "-q"), 2)
    assert "not writable" in _one_error(capsys, _prune(base / "model.onnx", base / "o2.onnx", base / "calib.npy",
                                                       "-q", "--report-dir", "rep"), 2)
    assert "not writable" in _one_error(capsys, ["demo", "--device", "cpu", "-q"], 2)
    assert list(cwd.iterdir()) == []


def test_deleted_working_directory(base: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """From a deleted working directory: absolute paths work; a bare -o (its folder gone) is a usage error."""
    gone = base / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    _ok(capsys, _prune(base / "model.onnx", base / "out.onnx", base / "calib.npy", "-q"))
    _one_error(capsys, _prune(base / "model.onnx", "out.onnx", base / "calib.npy", "-q"), 2)


# -- environment: a process of its own (threads, locale, file descriptors) -------------------

def test_threads_locale_and_closed_descriptors_give_the_same_bytes(base: Path) -> None:
    """OMP_NUM_THREADS=1, LC_ALL=C, non-ASCII paths, closed stdin/stdout: the same bytes as a plain run."""
    # two processes at once: OMP_NUM_THREADS unset with ASCII paths, and OMP_NUM_THREADS=1 under LC_ALL=C
    # (Python's UTF-8 mode) with spaces and non-ASCII in every path, fds 0 and 1 closed
    where = base / "é 中文 🚀 dir"
    where.mkdir()
    shutil.copy(base / "model.onnx", where / "mödel 🚀.onnx")
    shutil.copy(base / "calib.npy", where / "cälib 中.npy")
    plain = subprocess.Popen([*_script(), *_prune("model.onnx", "a.onnx", "calib.npy", "-q")], cwd=base,
                             env=_env(OMP_NUM_THREADS=None), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    argv = _prune(where / "mödel 🚀.onnx", where / "öut 中.onnx", where / "cälib 中.npy", "--report-dir",
                  str(where / "rép 🚀"))
    closed = subprocess.Popen(["sh", "-c", 'exec "$@" <&- >&-', "sh", *_script(), *argv], cwd=base,
                              env=_env(OMP_NUM_THREADS="1", LC_ALL="C", LANG="C", PYTHONUTF8=None),
                              stderr=subprocess.PIPE, text=True)
    _, err_plain = plain.communicate(timeout=120)
    _, err_closed = closed.communicate(timeout=120)
    assert plain.returncode == 0, err_plain
    assert closed.returncode == 0 and "Traceback" not in err_closed, err_closed
    assert all(line.startswith("onnx-eprune: ") for line in err_closed.splitlines() if line.strip()), err_closed
    assert (where / "öut 中.onnx").read_bytes() == (base / "a.onnx").read_bytes()
    report = json.loads((where / "rép 🚀" / "report.json").read_text(encoding="utf-8"))
    assert report["input"] == str(where / "mödel 🚀.onnx")
    _check_group_table((where / "rép 🚀" / "report.md").read_text(encoding="utf-8"), report)


def test_non_ascii_paths_under_an_ascii_locale(base: Path) -> None:
    """A non-ASCII model path, output and report folder under a locale whose encoding is ASCII: the run works."""
    where = base / "é 中"
    where.mkdir()
    shutil.copy(base / "model.onnx", where / "mödel.onnx")
    argv = _prune(where / "mödel.onnx", where / "öut.onnx", base / "calib.npy", "-q", "--report-dir",
                  str(where / "rép"))
    proc = subprocess.run([*_script(), *argv], cwd=base, capture_output=True, timeout=120, check=False,
                          env=_env(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0"))
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    assert proc.returncode == 0, err
    assert (where / "öut.onnx").is_file() and (where / "rép" / "report.md").is_file()


def test_inspect_into_a_closed_pipe(base: Path) -> None:
    """inspect with stdout on a pipe whose reader is gone (``| head -1``): no traceback, at most one line."""
    proc = subprocess.Popen([*_script(), "inspect", "model.onnx"], cwd=base, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the program has printed anything (its imports take a second)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 1 and all(line.startswith("onnx-eprune: ") for line in lines), err
    assert proc.returncode in (0, 1, 120, 141, -signal.SIGPIPE)


def test_prune_into_a_closed_pipe(base: Path) -> None:
    """prune with stdout on a closed pipe: exit 0 with its outputs, or a failure that leaves none."""
    argv = _prune("model.onnx", "out.onnx", "calib.npy", "--report", "r.json")
    proc = subprocess.Popen([*_script(), *argv], cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err, err
    written = (base / "out.onnx").exists() and (base / "r.json").exists()
    assert (proc.returncode == 0) == written, (proc.returncode, written, err)
    assert proc.returncode == 0 or not (base / "out.onnx").exists()


# -- --version, --help, unknown commands and options -----------------------------------------

@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["prune", "--help"], ["sweep", "--help"],
                                  ["calibrate", "--help"], ["inspect", "--help"], ["evaluate", "--help"],
                                  ["demo", "--help"]])
def test_version_and_help_exit_0(capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    """--version and every command's --help print to stdout and exit 0."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    assert out.strip() and not err
    if argv == ["--version"]:
        assert out.strip() == f"onnx-eprune {__version__}"
    else:
        assert out.startswith("usage: onnx-eprune")


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["-x", "prune"],
    ["inspect", "m.onnx", "--bogus"],
    ["calibrate", "m.onnx", "--calib", "c.npy", "--stats-out", "s.npz", "--bogus"],
    ["evaluate", "a.onnx", "b.onnx", "--data", "d.npy", "--bogus"],
    ["sweep", "m.onnx", "--calib", "c.npy", "--sparsity", "0.5", "--report-dir", "r", "--bogus"],
    ["demo", "--bogus"],
    ["demo", "extra"],
    ["Prune", "m.onnx"],
    ["prune"],
])
def test_unknown_commands_and_options_are_one_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """An unknown command or option, or a missing argument: exit 2, one line that points to --help, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert "--help" in _one_error(capsys, argv, 2)
    assert list(tmp_path.iterdir()) == []
