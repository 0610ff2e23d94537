"""Models whose weights live in external data files, as inputs and as outputs.

Attacks the rule "the input is never overwritten, outputs are written atomically, no
half-written file is left, an old output survives a failed run" where a model is more than
one file: an input whose data file has the name the output's data file (``<out>.data``)
will take, or whose data file is itself named as the output; a report named as the
output's data file; several data files, a location in a subfolder, one with ``..``, a
symlinked or truncated data file, Constant nodes whose values are external data; an old
large output (model + ``.data``) under a failed or interrupted write and under a new, small
output; read-only inputs; ``evaluate``, ``inspect`` and a second pruning on large outputs;
and the portability of what is written (a relative location, the folder moved).

"Large" models: as in test_large_models.py the protobuf limit is lowered to a few
kilobytes (``large`` fixture), so that the tiny models here take the path of models above
2 GB (references into the input's data file, output written as ``<out>`` + ``<out>.data``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.external_data_helper import set_external_data

import onnx_eprune
from models import INPUT, _Builder, cnn_constant_weights, random_input
from onnx_eprune.calibrate import session
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError, UsageError
from onnx_eprune.graph import model_io

RUN = ["--device", "cpu", "--method", "l1", "-q"]


# -- helpers ---------------------------------------------------------------------------------

def frozen_head_model() -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> Conv(8->16) -> Relu -> GAP -> Flatten -> Gemm(16->64) ->
    Softmax -> Gemm(64->10) = y: three weights of 1 KB or more, five small tensors."""
    b = _Builder(seed=3)
    h = b.node("Relu", [b.conv(INPUT, 3, 8)])
    h = b.node("Relu", [b.conv(h, 8, 16)])
    h = b.node("Softmax", [b.gemm(b.gap_flatten(h), 16, 64)], axis=1)
    return b.build(b.gemm(h, 64, 10, name="y", bias=False))


@pytest.fixture
def large(monkeypatch):
    """Every model counts as above the protobuf limit; tensors of 1 KB or more stay in their
    file (references), and sessions take in-memory tensors of 256 bytes or more by value."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
    monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
    monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)


@pytest.fixture
def calib_file(tmp_path, calib) -> Path:
    path = tmp_path / "calib.npy"
    np.save(path, calib)
    return path


def save_external(path: Path, location: str = "w.bin", one_file: bool = True,
                  model: onnx.ModelProto | None = None, **options) -> Path:
    """``model`` (default frozen_head_model) saved at ``path`` with every tensor external,
    in ``location`` (relative to the model's folder; tensors of ``size_threshold`` bytes or
    more, 0 unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
    options.setdefault("size_threshold", 0)
    onnx.save_model(model or frozen_head_model(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=one_file, location=location, **options)
    return path


def relocate(path: Path, location: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model_io.all_tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: relative path -> (content, permission bits)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model_io.all_tensors(model.graph) for e in t.external_data if e.key == "location"}


def runs(path: Path, x: np.ndarray | None = None) -> np.ndarray:
    """Output ``y`` of the model file at ``path`` in onnxruntime (which reads its data files)."""
    x = random_input(4, seed=7) if x is None else x
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {INPUT: x})[0]


def prune_argv(model: Path, out: Path, calib: Path, *extra: str, ratio: str = "0.5") -> list[str]:
    return ["prune", str(model), "-o", str(out), "--calib", str(calib), "--keep-ratio", ratio, *RUN, *extra]


def ok(capsys, argv: list[str]) -> str:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def one_error(capsys, argv: list[str], code: int | None = 2) -> str:
    """Run ``argv``, which must fail (with ``code`` unless None) with one error line and no traceback."""
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code is not None:
        assert status == code, err
    else:
        assert status != 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: "), err
    return lines[0]


# -- the input's data file and the output's names ---------------------------------------------

def test_output_whose_data_file_would_be_the_inputs_is_refused(large, tmp_path, calib_file, capsys):
    """Input ``a.onnx`` keeps its weights in ``b.onnx.data``; ``-o b.onnx`` would write its own
    weights there. Refused (usage error, one line naming the file); nothing of the input changes
    and no ``b.onnx`` appears."""
    a = save_external(tmp_path / "m" / "a.onnx", "b.onnx.data")
    before, expected = snapshot(a.parent), runs(a)
    line = one_error(capsys, prune_argv(a, a.parent / "b.onnx", calib_file))
    assert "b.onnx.data" in line
    assert snapshot(a.parent) == before
    np.testing.assert_array_equal(runs(a), expected)  # still loads with its weights


def test_data_file_clash_is_found_before_any_work(large, tmp_path, calib_file, capsys, monkeypatch):
    """README: usage errors (an output that is one of the inputs) are found before any work.
    ``-o b.onnx`` beside an input whose weights are in ``b.onnx.data`` is refused before
    pruning starts. Was: the model was pruned first, and only the save refused."""
    from onnx_eprune import pipeline

    a = save_external(tmp_path / "m" / "a.onnx", "b.onnx.data")
    called = []
    real = pipeline.prune
    monkeypatch.setattr(pipeline, "prune", lambda *a, **k: called.append(1) or real(*a, **k))
    one_error(capsys, prune_argv(a, a.parent / "b.onnx", calib_file))
    assert not called


def test_small_output_leaves_an_input_data_file_of_its_data_name_alone(tmp_path, calib_file, capsys):
    """A (small) input keeps its weights in ``b.onnx.data`` and the (small) output is ``b.onnx``
    in the same folder: the output is one self-contained file, and the input's data file, which
    carries the name a large output's data file would take, is neither written nor removed."""
    a = save_external(tmp_path / "m" / "a.onnx", "b.onnx.data")
    before = snapshot(a.parent)
    ok(capsys, prune_argv(a, a.parent / "b.onnx", calib_file))
    after = snapshot(a.parent)
    assert {k: v for k, v in after.items() if k != "b.onnx"} == before
    assert locations(a.parent / "b.onnx") == set()  # no external data: it does not read b.onnx.data
    onnx.checker.check_model(str(a.parent / "b.onnx"), full_check=True)
    runs(a.parent / "b.onnx")


def test_input_data_file_holding_only_small_tensors_is_not_overwritten(large, tmp_path, calib_file, capsys):
    """The input's large weights are in ``big.bin``, its biases (below the reference size, so
    read into memory) in ``b.onnx.data``; ``-o b.onnx`` (a large output) is refused (usage
    error) and ``b.onnx.data`` is not written. Was: the run succeeded and replaced the input's
    ``b.onnx.data`` with the output's weights."""
    model = frozen_head_model()
    for init in model.graph.initializer:
        init.raw_data = onnx.numpy_helper.to_array(init).tobytes()
        del init.float_data[:]
        set_external_data(init, "big.bin" if len(init.raw_data) >= 1024 else "b.onnx.data")
    (tmp_path / "m").mkdir()
    a = tmp_path / "m" / "a.onnx"
    onnx.save_model(model, str(a))
    assert (a.parent / "b.onnx.data").is_file() and (a.parent / "big.bin").is_file()
    before = snapshot(a.parent)
    status = main(prune_argv(a, a.parent / "b.onnx", calib_file))
    capsys.readouterr()
    assert snapshot(a.parent)["b.onnx.data"] == before["b.onnx.data"]
    assert status == 2


@pytest.mark.parametrize("size", ["small", "large"])
def test_output_onto_the_inputs_data_file_is_refused(tmp_path, calib_file, capsys, monkeypatch, size):
    """``-o in/w.bin`` where ``in/m.onnx`` keeps its weights in ``w.bin``: the output is an input
    file of the run (README: an output that is one of the inputs, by any path, is a usage error).
    Refused with a usage error naming ``w.bin``; no input file changes. Was: exit 0, ``w.bin``
    became the pruned model and ``m.onnx`` lost its weights."""
    if size == "large":
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
        monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
        monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)
    m = save_external(tmp_path / "in" / "m.onnx", "w.bin")
    before = snapshot(m.parent)
    status = main(prune_argv(m, m.parent / "w.bin", calib_file))
    err = capsys.readouterr().err
    assert snapshot(m.parent) == before
    assert status == 2 and "w.bin" in err


def test_api_save_onto_the_inputs_data_file_is_refused(tmp_path, calib):
    """README: ``result.save(path)`` refuses to overwrite a file the run read (the model ...).
    The model's data file is read too, so saving onto it raises UsageError and changes
    nothing. Was: it was overwritten."""
    m = save_external(tmp_path / "in" / "m.onnx", "w.bin")
    before = snapshot(m.parent)
    result = onnx_eprune.prune(str(m), calib, keep_ratio=0.5, method="l1", device="cpu")
    with pytest.raises(UsageError):
        result.save(m.parent / "w.bin")
    assert snapshot(m.parent) == before


def test_report_named_as_the_outputs_data_file_is_refused(large, tmp_path, calib_file, capsys):
    """``-o out.onnx --report out.onnx.data`` for a large output: the report and the model's
    data file are one path. Refused (usage error) before any work, as ``--report`` = ``-o``
    is; no ``out.onnx`` is written. Was: the report was written over the model's data, exit 0,
    and ``out.onnx`` no longer loaded."""
    m = save_external(tmp_path / "in" / "m.onnx")
    out = tmp_path / "out.onnx"
    status = main(prune_argv(m, out, calib_file, "--report", str(tmp_path / "out.onnx.data")))
    capsys.readouterr()
    if status == 0:  # whatever else, a successful run must leave a model that loads
        runs(out)
    assert status == 2 and not out.exists()


@pytest.mark.parametrize("case", ["folder", "long name"])
def test_an_unwritable_data_file_path_is_named(large, tmp_path, calib_file, capsys, case):
    """``<out>.data`` exists as a folder, or ``<out>`` takes 252 bytes so that ``<out>.data``
    takes 257 (over NAME_MAX): ``-o`` itself is fine. A usage error (as for ``-o`` itself), in
    one line that names the data file; nothing is written. Was: exit 1 after pruning, with an
    error that named the model's path instead of the data file."""
    m = save_external(tmp_path / "in" / "m.onnx")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / ("p.onnx" if case == "folder" else "n" * 247 + ".onnx")
    if case == "folder":
        (tmp_path / "o" / "p.onnx.data").mkdir()
    line = one_error(capsys, prune_argv(m, out, calib_file), code=None)
    assert not out.exists()
    assert [p.name for p in (tmp_path / "o").iterdir()] == (["p.onnx.data"] if case == "folder" else [])
    assert ".onnx.data" in line
    assert main(prune_argv(m, out, calib_file)) == 2


# -- where the input's data live ----------------------------------------------------------------

@pytest.mark.parametrize("size", ["small", "large"])
def test_several_data_files_and_a_subfolder_are_read_and_left_alone(tmp_path, calib_file, capsys, monkeypatch, size):
    """One data file per tensor, and one data file in ``weights/``: both prune, the output runs
    and matches the same run on the model read whole; no input file changes, even read-only
    ones in a read-only folder."""
    if size == "large":
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
        monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
        monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)
    per_tensor = save_external(tmp_path / "a" / "m.onnx", one_file=False)
    sub = save_external(tmp_path / "b" / "m.onnx", "weights/w.bin")
    assert len(locations(per_tensor)) == 7 and locations(sub) == {"weights/w.bin"}
    outputs = []
    for m in (per_tensor, sub):
        for p in m.parent.rglob("*"):
            p.chmod(0o555 if p.is_dir() else 0o444)
        m.parent.chmod(0o555)
        before = snapshot(m.parent)
        out = tmp_path / f"{m.parent.name}.onnx"
        try:
            ok(capsys, prune_argv(m, out, calib_file))
        finally:
            after = snapshot(m.parent)
            for p in [m.parent, *m.parent.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        assert after == before
        assert (out.parent / f"{out.name}.data").exists() == (size == "large")
        outputs.append(runs(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])  # same weights, same run: same model


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_location_outside_the_models_folder_is_refused(tmp_path, calib_file, capsys, monkeypatch, size, command):
    """A location with ``..`` (data outside the model's folder) is refused: usage error, one line
    that names the location; the file outside is not touched and nothing is written."""
    if size == "large":
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
        monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
    m = save_external(tmp_path / "d" / "in" / "m.onnx")
    (m.parent / "w.bin").rename(tmp_path / "d" / "w.bin")
    relocate(m, "../w.bin")
    before = snapshot(tmp_path / "d")
    argv = prune_argv(m, tmp_path / "d" / "o.onnx", calib_file) if command == "prune" else ["inspect", str(m)]
    line = one_error(capsys, argv)
    assert "../w.bin" in line
    assert snapshot(tmp_path / "d") == before
    with pytest.raises(UsageError, match=r"\.\./w\.bin"):
        model_io.load_model(m)


def test_data_file_symlinked_to_elsewhere_is_refused(tmp_path, calib_file, capsys):
    """A data file that is a symlink to a file outside the model's folder is refused (as onnx
    and onnxruntime refuse it), in one line that says so; its target is not touched."""
    m = save_external(tmp_path / "in" / "m.onnx")
    (m.parent / "w.bin").rename(tmp_path / "real.bin")
    (m.parent / "w.bin").symlink_to(tmp_path / "real.bin")
    before = (tmp_path / "real.bin").read_bytes()
    line = one_error(capsys, prune_argv(m, tmp_path / "o.onnx", calib_file))
    assert "w.bin" in line and "symbolic link" in line
    assert (tmp_path / "real.bin").read_bytes() == before and not (tmp_path / "o.onnx").exists()
    with pytest.raises(UsageError, match="w.bin"):
        model_io.load_model(m)


@pytest.mark.parametrize("size", ["small", "large"])
def test_data_file_shorter_than_its_offsets_is_named(tmp_path, calib_file, capsys, monkeypatch, size):
    """A data file cut short (the last tensor runs past its end): usage error, one line that
    names the file, from prune, inspect and the Python API alike; nothing written."""
    if size == "large":
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
        monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
    m = save_external(tmp_path / "in" / "m.onnx")
    data = (m.parent / "w.bin").read_bytes()
    (m.parent / "w.bin").write_bytes(data[:-100])
    for argv in (prune_argv(m, tmp_path / "o.onnx", calib_file), ["inspect", str(m)]):
        assert "w.bin" in one_error(capsys, argv)
    with pytest.raises(UsageError, match="w.bin"):
        onnx_eprune.prune(str(m), np.load(calib_file), keep_ratio=0.5, device="cpu")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_data_file_is_named(tmp_path, calib_file, capsys):
    """The data file is gone: usage error naming it."""
    m = save_external(tmp_path / "in" / "m.onnx")
    (m.parent / "w.bin").unlink()
    assert "w.bin" in one_error(capsys, prune_argv(m, tmp_path / "o.onnx", calib_file))
    assert not (tmp_path / "o.onnx").exists()


def test_constant_nodes_with_external_data(tmp_path, calib_file, capsys, monkeypatch):
    """onnx.save_model(..., convert_attribute=True) puts Constant nodes' values in the data file
    too; onnx's checker and onnxruntime accept the model from any working directory, and so do
    ``onnx-eprune inspect`` and ``prune /abs/m.onnx`` run from another folder; the output runs.
    Was: prune exited 2 with ``not a valid ONNX model (... should be stored in w.bin ...)``."""
    m = save_external(tmp_path / "in" / "m.onnx", model=cnn_constant_weights(), convert_attribute=True,
                      size_threshold=1024)  # the Reshape's shape stays inline, for shape inference
    onnx.checker.check_model(str(m), full_check=True)
    assert not onnx.load(str(m), load_external_data=False).graph.initializer and locations(m) == {"w.bin"}
    runs(m)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ok(capsys, ["inspect", str(m)])
    ok(capsys, prune_argv(m, tmp_path / "o.onnx", calib_file))
    runs(tmp_path / "o.onnx")


# -- what is written --------------------------------------------------------------------------

def test_output_data_location_is_relative_and_the_folder_moves(large, tmp_path, calib_file, capsys, monkeypatch):
    """The large output records its data file by its bare name (``p.onnx.data``, never an
    absolute path or the input's folder), also with ``-o`` relative to the working directory;
    moved to another folder, and with the input gone, it loads and gives the same outputs."""
    m = save_external(tmp_path / "in" / "m.onnx")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ok(capsys, prune_argv(m, Path("p.onnx"), calib_file))
    assert sorted(p.name for p in work.iterdir()) == ["p.onnx", "p.onnx.data"]
    assert locations(work / "p.onnx") == {"p.onnx.data"}
    assert str(tmp_path).encode() not in (work / "p.onnx").read_bytes()
    expected = runs(work / "p.onnx")
    moved = tmp_path / "moved"
    work.rename(moved)
    monkeypatch.chdir(tmp_path)
    for p in (m.parent / "w.bin", m):
        p.unlink()
    onnx.checker.check_model(str(moved / "p.onnx"), full_check=True)
    np.testing.assert_array_equal(runs(moved / "p.onnx"), expected)


def test_pruning_the_large_output_again(large, tmp_path, calib_file, capsys):
    """The pruned large output is itself an input: pruned again it gives a valid large model,
    records both runs, and the first output (model and data) stays as it was; writing the
    second run over an existing large output leaves exactly its two files."""
    m = save_external(tmp_path / "in" / "m.onnx")
    first = tmp_path / "first" / "p.onnx"
    first.parent.mkdir()
    ok(capsys, prune_argv(m, first, calib_file, ratio="0.75"))
    before = snapshot(first.parent)
    second = tmp_path / "second" / "p.onnx"
    second.parent.mkdir()
    for _ in range(2):  # the second time over its own earlier output
        ok(capsys, prune_argv(first, second, calib_file, ratio="0.5"))
    assert snapshot(first.parent) == before
    assert sorted(p.name for p in second.parent.iterdir()) == ["p.onnx", "p.onnx.data"]
    onnx.checker.check_model(str(second), full_check=True)
    runs(second)
    provenance = {p.key: p.value for p in onnx.load(str(second)).metadata_props}["onnx_eprune"]
    assert len(json.loads(provenance)) == 2
    inspected = json.loads(ok(capsys, ["inspect", str(second), "--json"]))
    assert len(inspected["pruned_before"]) == 2


def test_evaluate_and_inspect_on_large_external_data_models(large, tmp_path, calib_file, capsys):
    """evaluate counts every data file of a model with one file per tensor and the large
    output's ``.data`` in its sizes, and its fidelity is that of the models as onnxruntime
    loads them from disk; inspect reads the large output's parameters."""
    m = save_external(tmp_path / "in" / "m.onnx", one_file=False)
    out = tmp_path / "p.onnx"
    ok(capsys, prune_argv(m, out, calib_file))
    data = tmp_path / "data.npy"
    x = random_input(16, seed=3)
    np.save(data, x)
    report = json.loads(ok(capsys, ["evaluate", str(m), str(out), "--data", str(data), "--json", "--device", "cpu"]))
    assert report["size"]["original"]["bytes"] == sum(p.stat().st_size for p in m.parent.iterdir())
    assert report["size"]["pruned"]["bytes"] == out.stat().st_size + (tmp_path / "p.onnx.data").stat().st_size
    a, b = runs(m, x).astype(np.float64), runs(out, x).astype(np.float64)
    assert report["outputs"]["y"]["relative_error"] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a),
                                                                      rel=1e-4)
    params = sum(int(np.prod(i.dims)) for i in onnx.load(str(out)).graph.initializer
                 if i.name.endswith(("weight", "bias")))
    assert json.loads(ok(capsys, ["inspect", str(out), "--json"]))["params"] == params


# -- failures midway and old outputs ------------------------------------------------------------

@pytest.fixture
def old_output(large, tmp_path, calib) -> tuple[Path, onnx.ModelProto, dict]:
    """An earlier large output ``out/p.onnx`` + ``p.onnx.data``; the model of a new run to
    write over it; the folder's files before."""
    m = save_external(tmp_path / "in" / "m.onnx")
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    model_io.save_model(onnx_eprune.prune(str(m), calib, keep_ratio=0.75, method="l1", device="cpu").model, out)
    new = onnx_eprune.prune(str(m), calib, keep_ratio=0.5, method="l1", device="cpu").model
    return out, new, snapshot(out.parent)


DISK_FULL = OSError(28, "No space left on device")


# (a full disk between the renames is test_large_models' test_a_failed_write_leaves_the_old_model_and_its_data_file)
@pytest.mark.parametrize("stage, error", [("data file", DISK_FULL), ("data file", KeyboardInterrupt()),
                                          ("model file", DISK_FULL), ("model file", KeyboardInterrupt()),
                                          ("rename", KeyboardInterrupt())],
                         ids=["data-disk-full", "data-ctrl-c", "model-disk-full", "model-ctrl-c", "rename-ctrl-c"])
def test_failure_while_writing_keeps_the_old_output(old_output, monkeypatch, stage, error):
    """A disk that fills up or a Ctrl-C while the data file is being written (after part of it),
    while the model file is written, or between the two renames: the old model and its old
    data file are as they were, no temporary file is left, and the old model still runs."""
    out, new, before = old_output
    expected = runs(out)
    if stage == "data file":
        real_write = model_io._Piece.write
        count = []

        def write(self, f):
            if count:
                raise error
            count.append(1)
            real_write(self, f)
        monkeypatch.setattr(model_io._Piece, "write", write)
    elif stage == "model file":
        class Failing:
            def __init__(self, model):
                self.model = model

            def __getattr__(self, name):
                return getattr(self.model, name)

            def SerializeToString(self, **kw):
                raise error
        real_form = model_io._external_form

        def failing_form(model, location):
            light, pieces = real_form(model, location)
            return Failing(light), pieces
        monkeypatch.setattr(model_io, "_external_form", failing_form)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst) == out:
                raise error
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises((EPruneError, KeyboardInterrupt)) as exc:
        model_io.save_model(new, out)
    if isinstance(error, OSError):
        assert exc.type is EPruneError and "No space left" in str(exc.value)
    monkeypatch.undo()
    assert snapshot(out.parent) == before
    np.testing.assert_array_equal(runs(out), expected)


def test_failed_report_after_a_large_output_keeps_the_old_output_and_its_data(large, tmp_path, calib_file, capsys,
                                                                             monkeypatch):
    """README: a failure leaves every output as it was before the run. An earlier large output
    ``p.onnx`` + ``p.onnx.data`` exists; a new run writes the model, then fails writing its
    --report (disk full): both old files are back and the old model runs as before. Was:
    ``p.onnx`` was restored but ``p.onnx.data`` kept the new run's weights."""
    from onnx_eprune import report

    m = save_external(tmp_path / "in" / "m.onnx")
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    ok(capsys, prune_argv(m, out, calib_file, ratio="0.75"))
    before = snapshot(out.parent)
    expected = runs(out)

    def full_disk(*args, **kwargs):
        raise EPruneError("cannot write report: No space left on device")
    monkeypatch.setattr(report, "write_json", full_disk)
    assert "No space left" in one_error(capsys, prune_argv(m, out, calib_file, "--report", str(tmp_path / "r.json")),
                                        code=1)
    assert snapshot(out.parent) == before
    np.testing.assert_array_equal(runs(out), expected)


def test_a_small_output_over_an_old_large_one_removes_its_data_file(large, tmp_path, calib_file, capsys, monkeypatch):
    """``-o p.onnx`` where an earlier run wrote a large ``p.onnx`` + ``p.onnx.data``; the new
    output is small (one file). The old data file, part of the old output that is being
    replaced and read by nothing now, goes with it (as sweep removes an earlier run's plot
    that the new run does not write). (An input's own data file of that name must stay: see
    test_small_output_leaves_an_input_data_file_of_its_data_name_alone.) Was: it stayed."""
    m = save_external(tmp_path / "in" / "m.onnx")
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    ok(capsys, prune_argv(m, out, calib_file, ratio="0.75"))
    assert (out.parent / "p.onnx.data").exists()
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1 << 30)
    ok(capsys, prune_argv(m, out, calib_file, ratio="0.5"))
    assert locations(out) == set()
    runs(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.onnx"]
