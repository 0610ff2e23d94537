"""Failures injected in the middle of runs: nothing may be lost or left half-written.

``tests/test_errors.py`` covers the user mistakes found before any work and a few failures
while writing; this file breaks the runs of every command that writes files (``prune``
with ``-o``, ``--report``, ``--report-dir`` and ``--stats``, ``calibrate``, ``sweep``,
``demo``) and the Python API at many points in between: inside the calibration batches,
the statistics, the scratch files, the allocation, the selection, the re-fit, the
rewrite, the validation, the serialisation, ``fsync`` and ``os.replace``, and while the
report, its plots or the statistics file are written. The failures are Ctrl-C
(``KeyboardInterrupt``, exit 130), a full disk (``OSError(ENOSPC)``, exit 1) and
``MemoryError`` (exit 1).

After every failure: the inputs keep their bytes and mtime, no output appears (an output
file that existed before stays byte-identical: the README promises that every file is
written to a temporary file and renamed into place, and that a failed run "leaves no
output, partial or whole"), no temporary file is left in the output folders or in
``TMPDIR`` (pointed at a folder of the test, where the scratch files of cached activations
go), and stderr holds one ``onnx-eprune: error: ...`` line (a traceback only with
``--debug``).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import itertools
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm
from onnx_eprune import pipeline, report, report_files
from onnx_eprune.calibrate import bundle as bundle_module
from onnx_eprune.calibrate import engine, stats
from onnx_eprune.calibrate.scratch import ScratchFile
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError, UsageError
from onnx_eprune.graph import model_io

# the module, not the function that onnx_eprune exports under the same name
sweep_module = importlib.import_module("onnx_eprune.sweep")

HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None  # --report-dir and sweep draw plots then
needs_plots = pytest.mark.skipif(not HAS_PLOTS, reason="matplotlib is not installed: no plots are drawn")

PREFIX = "onnx-eprune: error: "
OLD = b"the previous result, which a failed run must leave as it is"

# -- the failures ------------------------------------------------------------------------------

ExcFactory = Callable[[], BaseException]


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# name -> (exception factory, exit status, words the error line holds)
FAILURES: dict[str, tuple[ExcFactory, int, tuple[str, ...]]] = {
    "interrupt": (KeyboardInterrupt, 130, ("interrupted", "no partial output")),
    "memory": (MemoryError, 1, ("out of memory",)),
    "disk-full": (_disk_full, 1, ("No space left on device", "free some disk space")),
}


def _inject(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, exc: ExcFactory, call: int = 1,
            only: Callable[..., bool] | None = None, after: bool = False) -> None:
    """Make ``owner.name`` raise ``exc()`` from its ``call``-th call on (counting only the
    calls that ``only`` accepts); ``after``: once the real call has run (a failure that
    arrives just after it returned)."""
    real = getattr(owner, name)
    counter = itertools.count(1)
    lock = threading.Lock()  # several threads may call it (statistics, gains, prefetching)

    def failing(*args: object, **kwargs: object) -> object:
        if only is not None and not only(*args, **kwargs):
            return real(*args, **kwargs)
        with lock:
            n = next(counter)
        if n < call:
            return real(*args, **kwargs)
        if after:
            real(*args, **kwargs)
        raise exc()

    monkeypatch.setattr(owner, name, failing)


def _named(name: str) -> Callable[..., bool]:
    """Accepts an ``os.replace(src, dst)`` call whose ``dst`` is called ``name``."""
    return lambda src, dst, *args, **kwargs: Path(dst).name == name


def _serialize_fails(monkeypatch: pytest.MonkeyPatch, module: object, exc: ExcFactory) -> None:
    """``module``'s ``write_atomic`` gets a writer that writes a few bytes into the
    temporary file and then fails, as a serialisation (protobuf, ``np.savez``) that runs
    out of memory or disk would."""
    real = module.write_atomic

    def write_atomic(target: Path, write: Callable[..., None], label: str | None = None) -> None:
        def partial(f: BinaryIO) -> None:
            f.write(b"half a file")
            raise exc()
        real(target, partial, label)

    monkeypatch.setattr(module, "write_atomic", write_atomic)


# -- the workspace -----------------------------------------------------------------------------

def _state(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: links by target, folders by None, files by bytes and mtime."""
    state: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = None
        else:
            state[key] = (path.read_bytes(), path.stat().st_mtime_ns)
    return state


def _tmp_entries(folder: Path) -> set[str]:
    """What ``TMPDIR`` holds (but ``.ses``, which onnxruntime's native library writes there
    when it loads, before any test sets TMPDIR)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} - {".ses"}


class Workspace:
    """``work/`` with model.onnx and calib.npy, ``tmp/`` as TMPDIR; ``fail`` runs a command
    that must fail cleanly."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = root / "work"
        self.tmp = root / "tmp"
        self.capsys = capsys
        self.model = self.dir / "model.onnx"
        self.calib = self.dir / "calib.npy"
        self.out = self.dir / "out.onnx"
        self.scratch: list[str] = []  # scratch files the runs asked for

    def prune(self, *extra: str, method: str = "l1") -> list[str]:
        return ["prune", str(self.model), "-o", str(self.out), "--calib", str(self.calib), "--sparsity", "0.4",
                "--method", method, "--device", "cpu", "--batch-size", "16", "-q", *extra]

    def calibrate(self, out: Path | None = None, *extra: str) -> list[str]:
        return ["calibrate", str(self.model), "--calib", str(self.calib), "--stats-out",
                str(out or self.dir / "s.npz"), "--device", "cpu", "--batch-size", "16", "-q", *extra]

    def sweep(self, folder: Path | None = None, *extra: str) -> list[str]:
        return ["sweep", str(self.model), "--calib", str(self.calib), "--sparsity", "0.3", "0.5", "--report-dir",
                str(folder or self.dir / "sweep"), "--mode", "oneshot", "--method", "l1", "--device", "cpu", "-q",
                *extra]

    def fail(self, argv: list[str], code: int, contains: tuple[str, ...] = (), debug: bool = False) -> str:
        """Run ``argv``: exit ``code`` with one error line (a traceback with ``debug``),
        ``work/`` exactly as before (no output, no temporary file, inputs and old outputs
        untouched) and nothing new in TMPDIR."""
        self.capsys.readouterr()
        before, tmp_before = _state(self.dir), _tmp_entries(self.tmp)
        status = main(argv + (["--debug"] if debug else []))
        err = self.capsys.readouterr().err
        assert status == code, err
        if debug:
            assert err.startswith("Traceback"), err
        else:
            assert "Traceback" not in err, err
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(PREFIX), err
            for word in contains:
                assert word in lines[0], lines[0]
        after = _state(self.dir)
        assert set(after) == set(before), f"left behind: {set(after) - set(before)}, lost: {set(before) - set(after)}"
        for key, value in before.items():
            assert after[key] == value, f"{key} changed"
        assert _tmp_entries(self.tmp) == tmp_before, "scratch or temporary files left in TMPDIR"
        return err

    def succeed(self, argv: list[str]) -> None:
        self.capsys.readouterr()
        assert main(argv) == 0, self.capsys.readouterr().err


@pytest.fixture
def ws(tmp_path: Path, capsys: pytest.CaptureFixture[str], calib: np.ndarray,
       monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A Workspace with TMPDIR pointed at its tmp/ and the scratch files of each run recorded."""
    w = Workspace(tmp_path, capsys)
    w.dir.mkdir()
    w.tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(w.tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(w.model))
    np.save(w.calib, calib)
    real_new_file = engine.CacheSpace.new_file

    def new_file(space: engine.CacheSpace) -> str:
        path = real_new_file(space)
        w.scratch.append(path)
        return path

    monkeypatch.setattr(engine.CacheSpace, "new_file", new_file)
    return w


# -- prune: failures before anything is written --------------------------------------------------

def _is_model(model: object, *args: object, **kwargs: object) -> bool:
    """The full check of the pruned model (the command line's structural check of its input
    runs the checker too, without ``full_check``)."""
    return isinstance(model, onnx.ModelProto) and bool(kwargs.get("full_check"))


# point -> (owner, attribute, failing call, filter of the calls that count); all run after the
# one-shot pass has reserved its scratch files, except "scratch folder", which fails to create them
MID_RUN: dict[str, tuple[object, str, int, Callable[..., bool] | None]] = {
    "onnxruntime batch": (ort.InferenceSession, "run", 3, None),
    "statistics": (stats.MomentAccumulator, "add", 2, None),
    "scratch folder": (tempfile, "mkdtemp", 1, None),
    "scratch write": (ScratchFile, "_write", 2, None),
    "sequential stage": (pipeline.Pruner, "collect", 2, None),
    "output gains": (pipeline, "output_gains", 1, None),
    "allocation": (pipeline.budget, "allocate", 1, None),
    "selection": (pipeline.baselines, "l1_ranking", 1, None),
    "re-fit": (pipeline, "refit", 1, None),
    "rewrite": (pipeline, "build_pruned", 1, None),
    "onnx checker": (onnx.checker, "check_model", 1, _is_model),
    "report": (report, "build_report", 1, None),
}


def _mid_run_cases() -> list:
    cases = []
    for point in MID_RUN:
        for failure in FAILURES:
            cases.append(pytest.param(point, failure, id=f"{point}-{failure}"))
    return cases


@pytest.mark.parametrize("point, failure", _mid_run_cases())
def test_prune_failing_mid_run_writes_nothing(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str,
                                              failure: str) -> None:
    """A sequential prune broken at any point before writing: old -o intact, no report, no scratch files."""
    ws.out.write_bytes(OLD)
    owner, name, call, only = MID_RUN[point]
    exc, code, words = FAILURES[failure]
    _inject(monkeypatch, owner, name, exc, call, only)
    ws.fail(ws.prune("--report", str(ws.dir / "r.json"), "--report-dir", str(ws.dir / "rep")), code, words)
    if point != "scratch folder":
        assert ws.scratch and all(p.startswith(str(ws.tmp)) for p in ws.scratch), "the run used no scratch file"


@pytest.mark.parametrize("failure", list(FAILURES))
def test_prune_failing_inside_entropic_selection(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                 failure: str) -> None:
    """The default method, broken inside the solver of a sequential stage."""
    exc, code, words = FAILURES[failure]
    _inject(monkeypatch, pipeline.entropic, "select", exc)
    ws.fail(ws.prune("--report", str(ws.dir / "r.json"), method="entropic"), code, words)


def test_a_full_scratch_disk_names_the_scratch_file(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from a real scratch write (no file name on the OSError) names the file in TMPDIR."""
    def full(self: ScratchFile, block: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ScratchFile, "_write", full)
    line = ws.fail(ws.prune(), 1, ("No space left on device", "free some disk space"))
    assert str(ws.tmp) in line and ".bin" in line


@pytest.mark.parametrize("point", ["onnxruntime batch", "rewrite"])
def test_prune_from_statistics_files_failing_mid_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                     point: str) -> None:
    """--stats runs: the statistics files are inputs and stay untouched, nothing is written."""
    stats_file = ws.dir / "s.npz"
    ws.succeed(ws.calibrate(stats_file))
    owner, name, call, only = MID_RUN[point]
    _inject(monkeypatch, owner, name, KeyboardInterrupt, 1 if point == "onnxruntime batch" else call, only)
    argv = ["prune", str(ws.model), "-o", str(ws.out), "--stats", str(stats_file), "--sparsity", "0.4",
            "--method", "l1", "--device", "cpu", "-q", "--report", str(ws.dir / "r.json")]
    ws.fail(argv, 130, ("interrupted",))


@pytest.mark.parametrize("failure, code", [("interrupt", 130), ("memory", 1)])
def test_debug_shows_the_traceback_and_still_cleans_up(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                       failure: str, code: int) -> None:
    """--debug: the traceback instead of the line, the same exit status, the same clean-up."""
    exc = FAILURES[failure][0]
    _inject(monkeypatch, ScratchFile, "_write", exc, 2)
    err = ws.fail(ws.prune("--report-dir", str(ws.dir / "rep")), code, debug=True)
    assert ("KeyboardInterrupt" if failure == "interrupt" else "MemoryError") in err.splitlines()[-1]


# -- prune: failures while writing -----------------------------------------------------------------

WRITE_POINTS = ["serialize", "fsync", "rename"]


def _break_write(monkeypatch: pytest.MonkeyPatch, point: str, exc: ExcFactory, name: str = "out.onnx") -> None:
    """The model write (the file ``name``) fails while serialising, in fsync or in the rename."""
    if point == "serialize":
        _serialize_fails(monkeypatch, model_io, exc)
    elif point == "fsync":
        _inject(monkeypatch, os, "fsync", exc)
    else:
        _inject(monkeypatch, os, "replace", exc, only=_named(name))


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("point", WRITE_POINTS)
def test_failed_model_write_keeps_the_old_output(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str,
                                                 failure: str) -> None:
    """The model write fails: the existing -o keeps its bytes, no temp file, no report written after it."""
    ws.out.write_bytes(OLD)
    exc, code, words = FAILURES[failure]
    _break_write(monkeypatch, point, exc)
    if failure == "disk-full" and point != "serialize":
        words = (*words, "out.onnx")
    ws.fail(ws.prune("--report", str(ws.dir / "r.json"), "--report-dir", str(ws.dir / "rep")), code, words)


REPORT_POINTS = ["report rename", "markdown", pytest.param("plot", marks=needs_plots)]


def _break_report(monkeypatch: pytest.MonkeyPatch, point: str, exc: ExcFactory) -> None:
    if point == "report rename":
        _inject(monkeypatch, os, "replace", exc, only=_named("r.json"))
    elif point == "markdown":
        _inject(monkeypatch, report_files, "markdown_report", exc)
    else:
        _inject(monkeypatch, report_files, "_png", exc)


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("point", REPORT_POINTS)
def test_failed_report_removes_the_model_already_written(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                         point: str, failure: str) -> None:
    """The model is in place when the report, its Markdown or a plot fails: it goes again, and the new folder."""
    exc, code, words = FAILURES[failure]
    _break_report(monkeypatch, point, exc)
    ws.fail(ws.prune("--report", str(ws.dir / "r.json"), "--report-dir", str(ws.dir / "rep")), code, words)


def test_failed_report_leaves_an_existing_report_folder_and_its_other_files(ws: Workspace,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A --report-dir that existed stays, with the user's own files in it, when its Markdown fails."""
    folder = ws.dir / "rep"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(OLD)
    _inject(monkeypatch, report_files, "markdown_report", KeyboardInterrupt)
    ws.fail(ws.prune("--report-dir", str(folder)), 130, ("interrupted",))




@pytest.mark.parametrize("case", ["-o, then --report fails",
                                  "--report-dir's report.json, then report.md's rename fails",
                                  "sweep.json, then a --save-models rename fails"])
def test_existing_outputs_survive_a_later_failure(ws: Workspace, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """An old output is byte-identical after the run fails on a later output (nothing lost)."""
    if case.startswith("-o"):
        ws.out.write_bytes(OLD)
        _inject(monkeypatch, os, "replace", KeyboardInterrupt, only=_named("r.json"))
        argv = ws.prune("--report", str(ws.dir / "r.json"))
    elif case.startswith("--report-dir"):
        (ws.dir / "rep").mkdir()
        (ws.dir / "rep" / "report.json").write_bytes(OLD)
        _inject(monkeypatch, os, "replace", KeyboardInterrupt, only=_named("report.md"))
        argv = ws.prune("--report-dir", str(ws.dir / "rep"))
    else:
        (ws.dir / "sweep").mkdir()
        (ws.dir / "sweep" / "sweep.json").write_bytes(OLD)
        _inject(monkeypatch, os, "replace", KeyboardInterrupt, only=_named("pruned_sparsity_0.5.onnx"))
        argv = ws.sweep(None, "--save-models")
    ws.fail(argv, 130, ("interrupted",))


@pytest.mark.parametrize("name, extra", [("out.onnx", ()), ("report.md", ("--report-dir", "rep"))])
def test_interrupt_right_after_a_rename(ws: Workspace, monkeypatch: pytest.MonkeyPatch, name: str,
                                        extra: tuple[str, ...]) -> None:
    """An interrupt between an output's rename and the next statement still removes that output."""
    _inject(monkeypatch, os, "replace", KeyboardInterrupt, only=_named(name), after=True)
    ws.fail(ws.prune(*[str(ws.dir / e) if e == "rep" else e for e in extra]), 130, ("interrupted",))


# -- calibrate -------------------------------------------------------------------------------------

def _break_at(monkeypatch: pytest.MonkeyPatch, point: str, exc: ExcFactory, serializer: object, name: str) -> None:
    """A run that writes the file ``name`` (through ``serializer``'s module) breaks at
    ``point``: one of MID_RUN, "serialize", "fsync" or "rename"."""
    if point in MID_RUN:
        owner, attr, call, only = MID_RUN[point]
        _inject(monkeypatch, owner, attr, exc, call, only)
    elif point == "serialize":
        _serialize_fails(monkeypatch, serializer, exc)
    elif point == "fsync":
        _inject(monkeypatch, os, "fsync", exc)
    else:
        _inject(monkeypatch, os, "replace", exc, only=_named(name))


@pytest.mark.parametrize("point, failure", [
    ("onnxruntime batch", "interrupt"), ("onnxruntime batch", "disk-full"),
    ("onnxruntime batch", "memory"),
    ("statistics", "memory"), ("serialize", "memory"), ("serialize", "disk-full"), ("fsync", "disk-full"),
    ("rename", "interrupt"), ("rename", "disk-full"),
])
def test_calibrate_failing_keeps_the_old_statistics_file(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                         point: str, failure: str) -> None:
    """calibrate broken in its batches or while saving the .npz: an old --stats-out keeps its bytes."""
    stats_file = ws.dir / "s.npz"
    stats_file.write_bytes(OLD)
    exc, code, words = FAILURES[failure]
    _break_at(monkeypatch, point, exc, bundle_module, "s.npz")
    ws.fail(ws.calibrate(stats_file), code, words)


# -- sweep -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("point, failure", [
    ("second target", "interrupt"), ("measuring", "memory"), pytest.param("plot", "disk-full", marks=needs_plots),
    ("sweep.md rename", "memory"),
    ("second model rename", "interrupt"), ("second model fsync", "disk-full"),
])
@pytest.mark.parametrize("folder_exists", [False, True], ids=["new-folder", "old-folder"])
def test_sweep_failing_leaves_no_files(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str, failure: str,
                                       folder_exists: bool) -> None:
    """A sweep broken while pruning, measuring or writing: no sweep file, no model; a folder it made goes."""
    folder = ws.dir / "sweep"
    if folder_exists:
        folder.mkdir()
        (folder / "notes.txt").write_bytes(OLD)
    exc, code, words = FAILURES[failure]
    if point == "second target":
        _inject(monkeypatch, pipeline.Pruner, "run", exc, 2)
    elif point == "measuring":
        _inject(monkeypatch, sweep_module, "measure_against", exc)
    elif point == "plot":
        _inject(monkeypatch, report_files, "_png", exc)
    elif point == "sweep.md rename":
        _inject(monkeypatch, os, "replace", exc, only=_named("sweep.md"))
    elif point == "second model rename":
        _inject(monkeypatch, os, "replace", exc, only=_named("pruned_sparsity_0.5.onnx"))
    else:
        # sweep.json, sweep.md, (sweep.png,) the first model, the second
        _inject(monkeypatch, os, "fsync", exc, 4 + HAS_PLOTS)
    ws.fail(ws.sweep(folder, "--save-models"), code, words)


# -- demo ------------------------------------------------------------------------------------------

def _demo(out: Path) -> list[str]:
    return ["demo", "-o", str(out), "--method", "l1", "--sparsity", "0.3", "--device", "cpu", "-q"]


@pytest.fixture
def shipped() -> dict[str, tuple[bytes, int]]:
    """The shipped model and sample that the demo reads, with their bytes and mtimes."""
    from onnx_eprune.demo import shipped_inputs

    return {path: (Path(path).read_bytes(), Path(path).stat().st_mtime_ns) for _, path in shipped_inputs()}


def _unchanged(files: dict[str, tuple[bytes, int]]) -> None:
    for path, (data, mtime) in files.items():
        assert Path(path).read_bytes() == data and Path(path).stat().st_mtime_ns == mtime, path


@pytest.mark.parametrize("point, failure", [("rewrite", "interrupt"), ("scratch write", "disk-full"),
                                            ("fsync", "disk-full"), ("serialize", "memory")])
def test_demo_failing_before_or_while_writing(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                              shipped: dict[str, tuple[bytes, int]], point: str,
                                              failure: str) -> None:
    """demo broken while pruning or writing: the old -o keeps its bytes, the shipped files theirs."""
    out = ws.dir / "demo.onnx"
    out.write_bytes(OLD)
    exc, code, words = FAILURES[failure]
    _break_at(monkeypatch, point, exc, model_io, "demo.onnx")
    ws.fail(_demo(out), code, words)
    _unchanged(shipped)


@pytest.mark.parametrize("failure", ["interrupt", "memory"])
def test_demo_failing_after_writing(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                    shipped: dict[str, tuple[bytes, int]], failure: str) -> None:
    """demo broken while it measures accuracy after the save: the output it wrote must go."""
    import onnx_eprune.demo as demo

    exc, code, words = FAILURES[failure]
    _inject(monkeypatch, demo, "accuracy", exc, 2)  # the pruned model's accuracy, after the save
    ws.fail(_demo(ws.dir / "demo.onnx"), code, words)
    _unchanged(shipped)


# -- outputs in places they cannot or must not go (refused before any work) ----------------------

def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pruning, calibration, sweep or demo run fails the test: the checks come first."""
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the outputs were checked")
    monkeypatch.setattr(pipeline, "prune", work)
    monkeypatch.setattr(pipeline, "calibrate", work)
    monkeypatch.setattr(sweep_module, "sweep", work)
    import onnx_eprune.demo as demo
    monkeypatch.setattr(demo, "run_demo", work)


def _layout(ws: Workspace) -> None:
    """sub/ (for ./sub/../ spellings), a folder, links to the model and the calibration file."""
    (ws.dir / "sub").mkdir()
    (ws.dir / "folder").mkdir()
    os.symlink(ws.model, ws.dir / "model_link.onnx")
    os.symlink(ws.calib, ws.dir / "calib_link.npy")
    (ws.dir / "rep").mkdir()
    os.symlink(ws.model, ws.dir / "rep" / "report.md")
    (ws.dir / "sw").mkdir()
    os.symlink(ws.model, ws.dir / "sw" / "pruned_sparsity_0.5.onnx")




@pytest.mark.parametrize("argv, words", [
    (lambda w: w.prune("--report", f"{w.dir}/sub/../model.onnx"), ("--report", "input model")),
    (lambda w: w.prune("--report", f"{w.dir}/./model_link.onnx"), ("--report", "input model")),
    (lambda w: w.prune("--report", f"{w.dir}/calib_link.npy"), ("--report", "--calib")),
    (lambda w: w.prune("--report", f"{w.dir}/folder"), ("--report", "directory")),
    (lambda w: w.prune("--report-dir", f"{w.dir}/rep"), ("--report-dir", "input model")),
    (lambda w: w.prune("--report", f"{w.dir}/sub/../out.onnx"), ("same file",)),
    (lambda w: w.prune("--report-dir", f"{w.dir}/sub/..", "--report", f"{w.dir}/report.json"), ("--report",)),
    (lambda w: w.calibrate(w.dir / "folder"), ("--stats-out", "directory")),
    (lambda w: w.calibrate(w.dir / "model_link.onnx"), ("--stats-out", "input model")),
    (lambda w: w.calibrate(Path(f"{w.dir}/sub/../calib.npy")), ("--stats-out", "--calib")),
    (lambda w: w.sweep(w.dir / "sw", "--save-models"), ("input model",)),
    (lambda w: w.sweep(w.dir / "model.onnx"), ("--report-dir", "is a file")),
    (lambda w: _demo(w.dir / "folder"), ("-o", "directory")),
    (lambda w: w.prune("--report-dir", str(w.out)), ("-o",)),
    (lambda w: w.prune("--report", f"{w.dir}/r", "--report-dir", f"{w.dir}/sub/../r"), ("--report",)),
], ids=["report-is-model-by-spelling", "report-is-model-by-link", "report-is-calib-by-link", "report-is-a-folder",
        "report-dir-file-is-model-by-link", "report-is-output-by-spelling", "report-is-report-dir-json",
        "stats-out-is-a-folder", "stats-out-is-model-by-link", "stats-out-is-calib-by-spelling",
        "sweep-model-is-model-by-link", "sweep-dir-is-model", "demo-out-is-a-folder",
        "output-and-report-dir-same-path", "report-and-report-dir-same-path"])
def test_misplaced_outputs_are_refused_before_any_work(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                       argv: Callable[[Workspace], list[str]],
                                                       words: tuple[str, ...]) -> None:
    """An output on an input (any spelling, a link), on a folder, or two outputs on one path: exit 2 first."""
    _layout(ws)
    _no_work(monkeypatch)
    ws.fail(argv(ws), 2, words)


def _lock(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` reads as not writable to the access check (as a read-only folder would for a
    user other than root)."""
    real = os.access

    def access(path: str | os.PathLike, mode: int, *args: object, **kwargs: object) -> bool:
        if mode & os.W_OK and Path(path).resolve() == folder.resolve():
            return False
        return real(path, mode, *args, **kwargs)
    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("argv", [
    lambda w, ro: w.prune("--report", str(ro / "r.json")),
    lambda w, ro: w.prune("--report-dir", str(ro)),
    lambda w, ro: w.prune("--report-dir", str(ro / "new")),
    lambda w, ro: w.calibrate(ro / "s.npz"),
    lambda w, ro: w.sweep(ro),
    lambda w, ro: w.sweep(ro / "new"),
    lambda w, ro: _demo(ro / "demo.onnx"),
], ids=["report", "report-dir", "new-report-dir", "stats-out", "sweep-dir", "new-sweep-dir", "demo"])
def test_outputs_in_a_read_only_folder_are_refused_before_any_work(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                                   argv: Callable[[Workspace, Path], list[str]]
                                                                   ) -> None:
    """Every kind of output into a folder the access check calls read-only: exit 2, 'not writable'."""
    locked = ws.dir / "locked"
    locked.mkdir()
    _lock(monkeypatch, locked)
    _no_work(monkeypatch)
    ws.fail(argv(ws, locked), 2, ("not writable",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
@pytest.mark.parametrize("command", ["calibrate", "report-dir"])
def test_outputs_in_a_really_read_only_folder(ws: Workspace, command: str) -> None:
    """The same with real permissions (0o555)."""
    locked = ws.dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = ws.calibrate(locked / "s.npz") if command == "calibrate" else ws.prune("--report-dir", str(locked))
        ws.fail(argv, 2, ("not writable",))
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["prune --report-dir", "calibrate", "sweep"])
def test_file_system_refusing_the_write_after_the_checks(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                         command: str) -> None:
    """The access check passes but the folder refuses new files (a read-only mount): exit 1, all undone."""
    folder = ws.dir / "out"
    folder.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        where = Path(str(kwargs.get("dir") or ".")).resolve()
        if where == folder.resolve() or folder.resolve() in where.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(where))
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    if command == "calibrate":
        argv = ws.calibrate(folder / "s.npz")
    elif command == "sweep":
        argv = ws.sweep(folder / "new")  # the folder that the sweep creates refuses its files
    else:
        argv = ws.prune("--report-dir", str(folder))  # the model goes to work/, the report files fail
    ws.fail(argv, 1, ("Read-only file system", "writable file system"))


# -- the Python API --------------------------------------------------------------------------------

def _api_clean(ws: Workspace, before: dict[str, object]) -> None:
    assert _state(ws.dir) == before, "the work folder changed"
    assert _tmp_entries(ws.tmp) == set(), "scratch or temporary files left in TMPDIR"


@pytest.mark.parametrize("failure", ["interrupt", "memory"])
@pytest.mark.parametrize("point", ["onnxruntime batch", "scratch write", "sequential stage", "output gains",
                                   "selection", "rewrite", "report"])
def test_api_prune_failing_mid_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str,
                                   failure: str) -> None:
    """prune(): Ctrl-C comes through as KeyboardInterrupt, memory as MemoryError or EPruneError; no files left."""
    owner, name, call, only = MID_RUN[point]
    _inject(monkeypatch, owner, name, FAILURES[failure][0], call, only)
    before = _state(ws.dir)
    expected = KeyboardInterrupt if failure == "interrupt" else (MemoryError, EPruneError)
    with pytest.raises(expected):
        onnx_eprune.prune(str(ws.model), str(ws.calib), sparsity=0.4, method="l1", device="cpu", batch_size=16)
    _api_clean(ws, before)
    assert ws.scratch, "the run used no scratch file"


def test_api_prune_with_a_full_scratch_disk_cleans_up(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """prune() with TMPDIR full: it fails and leaves no scratch file (the error type: next test)."""
    _inject(monkeypatch, ScratchFile, "_write", _disk_full, 2)
    before = _state(ws.dir)
    with pytest.raises((OSError, EPruneError), match="No space left"):
        onnx_eprune.prune(str(ws.model), str(ws.calib), sparsity=0.4, method="l1", device="cpu", batch_size=16)
    _api_clean(ws, before)


@pytest.mark.parametrize("function", ["prune", "sweep"])
def test_api_full_scratch_disk_is_an_eprune_error(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                  function: str) -> None:
    """A full TMPDIR during prune()/sweep() is a runtime error of the library: EPruneError."""
    _inject(monkeypatch, ScratchFile, "_write", _disk_full, 2)
    with pytest.raises(EPruneError):
        if function == "prune":
            onnx_eprune.prune(str(ws.model), str(ws.calib), sparsity=0.4, method="l1", device="cpu")
        else:
            onnx_eprune.sweep(str(ws.model), str(ws.calib), [0.3], method="l1", device="cpu")


@pytest.fixture
def result(ws: Workspace) -> pipeline.PruneResult:
    """A pruned model of the workspace's model, from paths (so save() knows the inputs)."""
    return onnx_eprune.prune(str(ws.model), str(ws.calib), sparsity=0.4, method="l1", device="cpu")


@pytest.mark.parametrize("point, failure, expected", [
    ("serialize", "memory", MemoryError), ("serialize", "disk-full", EPruneError), ("fsync", "disk-full", EPruneError),
    ("rename", "interrupt", KeyboardInterrupt), ("rename", "disk-full", EPruneError),
])
def test_api_save_failing_keeps_the_old_file(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                             result: pipeline.PruneResult, point: str, failure: str,
                                             expected: type[BaseException]) -> None:
    """result.save() broken while writing: the old file keeps its bytes, no temporary file is left."""
    ws.out.write_bytes(OLD)
    _break_write(monkeypatch, point, FAILURES[failure][0])
    before = _state(ws.dir)
    with pytest.raises(expected):
        result.save(ws.out)
    _api_clean(ws, before)


def test_api_save_refuses_inputs_by_any_path_and_a_folder(ws: Workspace, result: pipeline.PruneResult) -> None:
    """result.save() onto the model or calib by a link or another spelling is a UsageError; a folder an EPruneError."""
    _layout(ws)
    before = _state(ws.dir)
    for path in (ws.dir / "model_link.onnx", Path(f"{ws.dir}/sub/../model.onnx"), ws.dir / "calib_link.npy",
                 Path(f"{ws.dir}/./calib.npy")):
        with pytest.raises(UsageError, match="refusing to overwrite"):
            result.save(path)
    with pytest.raises(EPruneError, match="directory"):
        result.save(ws.dir / "folder")
    _api_clean(ws, before)


@pytest.mark.parametrize("failure", ["interrupt", "memory"])
def test_api_calibrate_failing_mid_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """calibrate() broken in its statistics: the exception comes through, nothing is left."""
    _inject(monkeypatch, stats.MomentAccumulator, "add", FAILURES[failure][0], 2)
    before = _state(ws.dir)
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else (MemoryError, EPruneError)):
        onnx_eprune.calibrate(str(ws.model), str(ws.calib), device="cpu", batch_size=16)
    _api_clean(ws, before)


@pytest.mark.parametrize("point, failure, expected", [
    ("serialize", "memory", MemoryError), ("serialize", "disk-full", EPruneError), ("fsync", "disk-full", EPruneError),
    ("rename", "interrupt", KeyboardInterrupt),
])
def test_api_bundle_save_failing_keeps_the_old_file(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str,
                                                    failure: str, expected: type[BaseException]) -> None:
    """bundle.save() broken while writing the .npz: the old file keeps its bytes, no temporary file."""
    shard = onnx_eprune.calibrate(str(ws.model), str(ws.calib), device="cpu")
    stats_file = ws.dir / "s.npz"
    stats_file.write_bytes(OLD)
    exc = FAILURES[failure][0]
    if point == "serialize":
        _serialize_fails(monkeypatch, bundle_module, exc)
    elif point == "fsync":
        _inject(monkeypatch, os, "fsync", exc)
    else:
        _inject(monkeypatch, os, "replace", exc, only=_named("s.npz"))
    before = _state(ws.dir)
    with pytest.raises(expected):
        shard.save(stats_file)
    _api_clean(ws, before)


@pytest.mark.parametrize("target", ["model.onnx", "calib.npy"])
def test_api_bundle_save_refuses_its_inputs(ws: Workspace, target: str) -> None:
    """bundle.save() onto the model or calibration file it was computed from is refused; the input stays."""
    shard = onnx_eprune.calibrate(str(ws.model), str(ws.calib), device="cpu")
    before = _state(ws.dir)
    try:
        with pytest.raises(UsageError):
            shard.save(ws.dir / target)
    finally:
        assert _state(ws.dir) == before, f"{target} was overwritten"


@pytest.mark.parametrize("point, failure", [("second target", "interrupt"), ("measuring", "memory")])
def test_api_sweep_failing_mid_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch, point: str, failure: str) -> None:
    """sweep() broken at its second target or while measuring: the exception comes through, nothing is left."""
    exc = FAILURES[failure][0]
    if point == "second target":
        _inject(monkeypatch, pipeline.Pruner, "run", exc, 2)
    else:
        _inject(monkeypatch, sweep_module, "measure_against", exc)
    before = _state(ws.dir)
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else (MemoryError, EPruneError)):
        onnx_eprune.sweep(str(ws.model), str(ws.calib), [0.3, 0.5], method="l1", device="cpu", batch_size=16)
    _api_clean(ws, before)


# -- files.Replacing on its own ----------------------------------------------------------------------

@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_replacing_puts_old_files_back_and_removes_new_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            links: bool) -> None:
    """A failed block restores the old file (from a hard link, or a copy where the file system
    has none), removes the new one and the folder it created on entry; a good block leaves no
    second name."""
    from onnx_eprune.files import Replacing, write_atomic

    if not links:
        def no_links(src: object, dst: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_links)
    old, new_dir = tmp_path / "old.onnx", tmp_path / "new"
    old.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with Replacing(new_dir) as replacing:
            write_atomic(replacing.claim(old), lambda f: f.write(b"replaced"))
            assert new_dir.is_dir()  # made on entry
            write_atomic(replacing.claim(new_dir / "report.json"), lambda f: f.write(b"{}"))
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"] and old.read_bytes() == b"old"
    with Replacing() as replacing:
        write_atomic(replacing.claim(old), lambda f: f.write(b"replaced"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"] and old.read_bytes() == b"replaced"
