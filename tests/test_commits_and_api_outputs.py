"""Where a run's outputs become final, and what the Python API writes over.

* An interrupt that comes once the outputs are committed (the command prints its summary)
  has nothing left to stop: the outputs stay, the run ends with status 0 and one line that
  says so, instead of the "no partial output was left" of an interrupt before the commit
  (which was false there). A signal that comes as :class:`Replacing` starts its commit or
  undo, before it holds signals, undoes the block as any interrupt does, leaving no second
  name of an old file behind.
* ``PruneResult.save`` and ``StatsBundle.save`` refuse what ``-o`` refuses: an empty path,
  a folder, an existing device or pipe (the rename would have replaced it by a file:
  ``/dev/null`` itself, as root).
* The API's entry points refuse arguments that do not fit them with a UsageError naming
  the closest one, and ``SearchResult.as_dict`` holds every target tried.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_eprune
from onnx_eprune import cli, files
from onnx_eprune.errors import Terminated, UsageError

SHIPPED = Path(onnx_eprune.__file__).resolve().parent.parent / "models"
MODEL = SHIPPED / "lenet5_fmnist.onnx"


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    from onnx_eprune.datasets import preprocess

    return preprocess(np.load(SHIPPED / "fashion_mnist_sample.npz")["calib"][:64])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".old", ".tmp")))


# -- Replacing ----------------------------------------------------------------------------------

def _write_interrupted(target: Path) -> None:
    """Write "new" to ``target`` in a :class:`Replacing` block that ends in KeyboardInterrupt
    (a patched part of the block raises it), in a run with nothing committed yet."""
    files.forget_commits()
    with pytest.raises(KeyboardInterrupt):
        with files.Replacing() as outputs:
            files.write_atomic(outputs.claim(target), lambda f: f.write(b"new"))


def test_a_signal_before_the_commit_is_held_undoes_the_block(tmp_path, monkeypatch):
    """Ctrl-C landing in ``__exit__`` before the handlers are swapped: the old file is back
    and its second name gone (before, both the new file and the ``.old`` name stayed)."""
    target = tmp_path / "out.txt"
    target.write_text("old")
    real = files.signals_held
    calls = []

    @contextlib.contextmanager
    def interrupted_first():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        with real():
            yield

    monkeypatch.setattr(files, "signals_held", interrupted_first)
    _write_interrupted(target)
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    assert not files.outputs_committed()


def test_a_signal_during_the_commit_comes_after_it(tmp_path, monkeypatch):
    """Ctrl-C while the commit removes the old versions: held until it is done, then raised;
    the new file stays, whole, and the commit is recorded for the command line's message."""
    target = tmp_path / "out.txt"
    target.write_text("old")
    remove = files._remove

    def remove_then_interrupt(path):
        remove(path)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(files, "_remove", remove_then_interrupt)
    _write_interrupted(target)
    assert target.read_text() == "new" and _leftovers(tmp_path) == []
    assert files.outputs_committed()


def test_a_block_inside_another_is_final_only_with_it(tmp_path):
    """The report files a command writes in a block of their own, inside the block of all
    its outputs: when the outer one fails after the inner one committed, nothing is final
    (an interrupt then reports the outputs undone, which they are)."""
    files.forget_commits()
    with pytest.raises(KeyboardInterrupt):
        with files.Replacing() as outputs:
            outputs.claim(tmp_path / "a.txt")  # as the commands claim their report files first
            with files.Replacing() as inner:
                files.write_atomic(inner.claim(tmp_path / "a.txt"), lambda f: f.write(b"a"))
            raise KeyboardInterrupt
    assert not files.outputs_committed() and not (tmp_path / "a.txt").exists()
    with files.Replacing() as outputs:
        outputs.claim(tmp_path / "a.txt")
        with files.Replacing() as inner:
            files.write_atomic(inner.claim(tmp_path / "a.txt"), lambda f: f.write(b"a"))
    assert files.outputs_committed() and (tmp_path / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("signal_kind, word", [(KeyboardInterrupt, "interrupted"), (Terminated, "terminated")])
def test_an_interrupt_once_the_outputs_are_written_ends_with_status_0(tmp_path, monkeypatch, capsys, calib,
                                                                       signal_kind, word):
    np.save(tmp_path / "calib.npy", calib)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"an earlier result")

    def interrupted(text, written):
        raise signal_kind

    monkeypatch.setattr(cli, "_print_after_writing", interrupted)
    status = cli.main(["prune", str(MODEL), "-o", str(out), "--calib", str(tmp_path / "calib.npy"),
                       "--sparsity", "0.5", "--report-dir", str(tmp_path / "rd")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 0
    assert err[-1] == f"onnx-eprune: {word} after the outputs were written; they hold this run's complete results"
    onnx.checker.check_model(onnx.load(str(out)))
    assert (tmp_path / "rd" / "report.json").is_file() and _leftovers(tmp_path) == []


# -- what save() writes over ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def result(calib):
    return onnx_eprune.prune(str(MODEL), calib, sparsity=0.5, device="cpu")


@pytest.mark.parametrize("path, words", [("", "is empty"), (".", "is a directory"), ("sub/", "is a directory")])
def test_save_refuses_no_file_name(result, tmp_path, monkeypatch, path, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(UsageError, match=words):
        result.save(path)


def test_save_refuses_a_pipe_and_leaves_it(result, calib, tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        result.save(pipe)
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        onnx_eprune.calibrate(str(MODEL), calib, device="cpu").save(pipe)
    assert pipe.is_fifo()


# -- the API's arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    (lambda: onnx_eprune.inspect(str(MODEL), exlude=["conv*"]), r"^inspect\(\) has no argument 'exlude' \(did you "
                                                                 r"mean 'exclude'\?\)"),
    (lambda: onnx_eprune.evaluate(str(MODEL), str(MODEL), lables=None), r"did you mean 'labels'"),
    (lambda: onnx_eprune.evaluate(str(MODEL), str(MODEL)), r"^evaluate\(\): missing a required argument: 'data'"),
    (lambda: onnx_eprune.search(str(MODEL), None, 0.5), r"^search\(\): too many positional arguments"),
    (lambda: onnx_eprune.sweep(str(MODEL)), r"^sweep\(\): missing a required argument"),
])
def test_arguments_that_do_not_fit_are_usage_errors(call, words):
    with pytest.raises(UsageError, match=words):
        call()


def test_search_as_dict_holds_every_target_tried(calib):
    found = onnx_eprune.search(str(MODEL), calib, max_error=0.2, device="cpu", resolution=0.1)
    record = found.as_dict()
    assert [p["target"] for p in record["points"]] == [p.target for p in found.points]
    assert [p["within_tolerance"] for p in record["points"]] == [found.within(p) for p in found.points]
    assert record["best"] == found.best.target


# -- outputs in a --report-dir the run creates -----------------------------------------------------

@pytest.mark.parametrize("command", ["prune", "search"])
def test_outputs_may_go_into_the_report_dir_the_run_creates(tmp_path, capsys, calib, command):
    """``-o new/m.onnx --report new/r.json --report-dir new``: the folder does not exist yet,
    the run creates it for all of them (was: "output folder does not exist: new")."""
    np.save(tmp_path / "calib.npy", calib)
    new = tmp_path / "new"
    argv = [command, str(MODEL), "-o", str(new / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
            "--report-dir", str(new), "-q"]
    argv += ["--sparsity", "0.5", "--report", str(new / "r.json")] if command == "prune" else \
        ["--max-error", "0.3", "--resolution", "0.25"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    onnx.checker.check_model(onnx.load(str(new / "m.onnx")))
    assert (new / "report.json").is_file() and (command == "search" or (new / "r.json").is_file())


def test_a_sweep_names_the_models_an_earlier_sweep_left_in_its_folder(tmp_path, capsys, calib):
    np.save(tmp_path / "calib.npy", calib)
    argv = ["sweep", str(MODEL), "--calib", str(tmp_path / "calib.npy"), "--report-dir", str(tmp_path / "sw")]
    assert cli.main(argv + ["--sparsity", "0.3", "0.5", "--save-models", "-q"]) == 0
    capsys.readouterr()
    assert cli.main(argv + ["--sparsity", "0.3", "-q"]) == 0
    err = capsys.readouterr().err
    assert "also holds 2 model(s) that this sweep did not write (pruned_sparsity_0.3.onnx, " \
           "pruned_sparsity_0.5.onnx)" in err
    assert cli.main(argv + ["--sparsity", "0.3", "0.5", "--save-models", "-q"]) == 0
    assert "did not write" not in capsys.readouterr().err
