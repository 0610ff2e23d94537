"""What the command line prints, and where.

Attacks the split between stdout and stderr and the verbosity options: stdout carries only
results (tables, ``--json`` documents, "wrote ..."), every message (info, warning, error,
progress) goes to stderr, so ``inspect --json M | jq`` and ``evaluate --json`` stay pure JSON
with warnings, with ``-v`` and with onnxruntime complaining; progress is drawn in place on a
terminal (a real pseudo-terminal, and a stream that says it is one) and not at all on a file
or pipe; ``-q`` prints nothing but warnings on success; ``-v`` adds detail on stderr only;
``--debug`` changes nothing on success and shows a traceback, with the same exit status, on
failure; onnxruntime's C++ log and Python warnings stay off the console without ``-v``; an
error is exactly one ``onnx-eprune: error:`` line, also for paths and names with newlines;
the Python API prints nothing and draws progress only on a ``Progress`` it is given.

Most tests call ``onnx_eprune.cli.main`` in-process with capsys/capfd (capfd where
onnxruntime writes to file descriptor 2 itself); the terminal and Python-warning checks run
the installed script in a process of its own, where a real pseudo-terminal and the
interpreter's own warning display matter.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli_helpers import screen as _screen
import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, intermediate_output, random_input
from onnx_eprune.cli import main
from onnx_eprune.calibrate import session

PACKAGE = Path(onnx_eprune.__file__).parent
RUN = ["--device", "cpu", "--method", "l1"]
ORT_LINE = re.compile(r"\[[VIWEF]:onnxruntime")  # onnxruntime's own C++ log lines
RAW_WARNING = re.compile(r"\.py:\d+: \w*Warning")  # Python's default warning display


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path, calib: np.ndarray) -> Path:
    """model.onnx (the small CNN), warn.onnx (the same with an unused initializer, which
    onnxruntime warns about), calib.npy (64 samples), few.npy (8: a warning) and data.npy."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    onnx.save(model, str(tmp_path / "model.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((3, 3), np.float32), "unused_w"))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "warn.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    np.save(tmp_path / "few.npy", calib[:8])
    np.save(tmp_path / "data.npy", random_input(24, seed=5))
    return tmp_path


def _prune(files: Path, *extra: str, model: str = "model.onnx", calib: str = "calib.npy",
           out: str = "out.onnx") -> list[str]:
    return ["prune", str(files / model), "-o", str(files / out), "--calib", str(files / calib), "--sparsity", "0.4",
            *RUN, *extra]


def _run(capture, argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capture.readouterr()
    return status, out, err


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal (what progress.Progress checks)."""

    def isatty(self) -> bool:
        return True


def _script() -> list[str]:
    script = Path(sys.executable).with_name("onnx-eprune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnx_eprune"]


def _on_terminal(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal and stdout on a pipe; returns (status,
    stdout, everything the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output from the program on its terminal for {timeout} s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program closed its end
                break
            if not chunk:
                break
            received.append(chunk)
        out = proc.stdout.read()
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        proc.stdout.close()
    return proc.returncode, out, b"".join(received)


# -- stdout carries results, stderr everything else ---------------------------------------------

def test_prune_puts_results_on_stdout_and_messages_on_stderr(files, capsys):
    """A prune on 8 samples (a warning): the table and 'wrote' on stdout, the warning and the
    provider line on stderr, each message one 'onnx-eprune: ' line; no progress on a non-terminal."""
    status, out, err = _run(capsys, _prune(files, calib="few.npy"))
    assert status == 0, err
    assert out.splitlines()[0].split()[:2] == ["group", "channels"]
    assert out.splitlines()[-1] == f"wrote {files / 'out.onnx'}"
    assert not any(line.startswith("onnx-eprune") for line in out.splitlines()), out
    assert "only 8 calibration samples" in err and "onnxruntime provider: CPUExecutionProvider" in err
    assert all(line.startswith("onnx-eprune: ") for line in err.splitlines()), err
    for stream in (out, err):
        assert "\r" not in stream and "\x1b" not in stream  # capsys is no terminal: no progress drawing


def test_sweep_stdout_is_its_table_and_what_it_wrote(files, capsys):
    status, out, err = _run(capsys, ["sweep", str(files / "model.onnx"), "--calib", str(files / "few.npy"),
                                     "--sparsity", "0.3", "0.5", "--report-dir", str(files / "sw"), *RUN])
    assert status == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("wrote ") and all(line.startswith("|") for line in lines[:-1]), out
    assert len([line for line in lines if line.startswith("| sparsity ")]) == 2
    assert err.count("only 8 calibration samples") == 1  # once for the whole sweep, not once per target
    assert all(line.startswith("onnx-eprune: ") for line in err.splitlines()), err


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("command", ["inspect", "evaluate"])
def test_json_output_stays_pure_with_warnings_verbose_and_onnxruntime_messages(files, capfd, command, verbose):
    """--json on stdout parses as one JSON document whatever goes to stderr: a tool warning
    (an --exclude that matches only activations), onnxruntime's own warnings about the
    model's unused initializer (shown with -v, "onnxruntime messages included"), -v's details."""
    if command == "inspect":
        argv = ["inspect", str(files / "warn.onnx"), "--json", "--exclude", "relu*"]
    else:
        argv = ["evaluate", str(files / "model.onnx"), str(files / "warn.onnx"), "--data", str(files / "data.npy"),
                "--device", "cpu", "--json"]
    status, out, err = _run(capfd, argv + (["-v"] if verbose else []))
    assert status == 0, err
    document = json.loads(out)
    assert isinstance(document, dict) and out.lstrip().startswith("{") and out.rstrip().endswith("}")
    if command == "inspect":
        assert "--exclude 'relu*' matches 3 node(s)" in err
    assert bool(ORT_LINE.search(err)) == verbose, err
    if not verbose:
        assert all(line.startswith("onnx-eprune: ") for line in err.splitlines()), err


@pytest.mark.parametrize("command", ["prune", "calibrate"])
def test_onnxruntime_log_stays_off_the_console_without_verbose(files, capfd, command):
    """onnxruntime warns (in C++, on descriptor 2) about an unused initializer at every
    session: without -v none of it reaches the console."""
    if command == "prune":
        argv = _prune(files, model="warn.onnx")
    else:
        argv = ["calibrate", str(files / "warn.onnx"), "--calib", str(files / "calib.npy"), "--stats-out",
                str(files / "s.npz"), "--device", "cpu"]
    status, out, err = _run(capfd, argv)
    assert status == 0, err
    assert not ORT_LINE.search(out + err) and "Removing initializer" not in out + err, err
    assert _lines(err) == ["onnx-eprune: onnxruntime provider: CPUExecutionProvider"]


def test_verbose_adds_detail_on_stderr_only(files, capsys):
    """-v keeps stdout as it is (the seconds line aside) and prints every default stderr line plus more."""
    status, out, err = _run(capsys, _prune(files, calib="few.npy"))
    assert status == 0, err
    status, out_v, err_v = _run(capsys, _prune(files, "-v", calib="few.npy", out="v.onnx"))
    assert status == 0, err_v

    def results(text: str) -> list[str]:
        return [line.replace("v.onnx", "out.onnx") for line in text.splitlines() if not line.startswith("seconds ")]

    assert results(out_v) == results(out)
    assert set(_lines(err)) <= set(_lines(err_v)) and len(_lines(err_v)) > len(_lines(err)), (err, err_v)
    assert all(line.startswith("onnx-eprune: ") for line in err_v.splitlines()), err_v


# -- -q ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["prune", "prune-report-dir", "prune-stats", "calibrate", "sweep"])
def test_quiet_prints_nothing_on_success(files, capsys, command):
    if command == "prune":
        argv = _prune(files, "--report", str(files / "r.json"))
    elif command == "prune-report-dir":
        argv = _prune(files, "--report-dir", str(files / "rep"), "--mode", "oneshot")
    elif command == "prune-stats":
        onnx_eprune.calibrate(str(files / "model.onnx"), np.load(files / "calib.npy"), device="cpu").save(
            str(files / "s.npz"))
        argv = ["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--stats", str(files / "s.npz"),
                "--sparsity", "0.4", "--device", "cpu"]
    elif command == "calibrate":
        argv = ["calibrate", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--stats-out",
                str(files / "s.npz"), "--device", "cpu"]
    else:
        argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--sparsity", "0.3", "0.5",
                "--report-dir", str(files / "sw"), "--save-models", *RUN]
    status, out, err = _run(capsys, [*argv, "-q"])
    assert status == 0, err
    assert (out, err) == ("", "")


def test_quiet_still_prints_warnings_on_stderr(files, capsys):
    """-q: "print only warnings and errors"."""
    status, out, err = _run(capsys, _prune(files, "-q", calib="few.npy"))
    assert status == 0, err
    assert out == ""
    warning = "onnx-eprune: warning: only 8 calibration samples: statistics will be noisy (a few hundred are advised)"
    assert _lines(err) == [warning]


def test_demo_quiet_prints_nothing(tmp_path, capsys):
    status, out, err = _run(capsys, ["demo", "-o", str(tmp_path / "lenet.onnx"), "--device", "cpu", "-q"])
    assert status == 0, err
    assert (out, err) == ("", "")
    onnx.checker.check_model(onnx.load(str(tmp_path / "lenet.onnx")), full_check=True)


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
def test_quiet_does_what_its_help_says(files, capsys, command):
    """Expected: the help of -q tells the truth for every command: either -q leaves stdout
    empty (as prune, sweep and calibrate do) or the command's --help says that -q keeps its
    result. What happens: inspect -q and evaluate -q print their full table while
    ``inspect --help`` / ``evaluate --help`` say "-q, --quiet  print only warnings and
    errors". Cause: cli_parser.py:_add_common gives every command prune's -q help, and
    cli.py:cmd_inspect / cmd_evaluate never read args.quiet."""
    if command == "inspect":
        argv = ["inspect", str(files / "model.onnx")]
    else:
        argv = ["evaluate", str(files / "model.onnx"), str(files / "model.onnx"), "--data", str(files / "data.npy"),
                "--device", "cpu"]
    status, out, err = _run(capsys, [*argv, "-q"])
    assert status == 0, err
    with pytest.raises(SystemExit):
        main([command, "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert not out.strip() or "print only warnings and errors" not in helptext, out


def test_warning_lines_say_they_are_warnings(files, capsys):
    """Expected: a warning line can be told from an info line (grep a CI log for warnings),
    as the --calib-random warning does ('onnx-eprune: WARNING: ...'). What happens: the
    few-samples warning is 'onnx-eprune: only 8 calibration samples: ...', formatted as the
    info line 'onnx-eprune: onnxruntime provider: ...'. Cause: cli.py:_setup_logging's
    Formatter('onnx-eprune: %(message)s') drops the level."""
    status, out, err = _run(capsys, _prune(files, "-q", calib="few.npy"))
    assert status == 0 and out == "", err
    assert _lines(err) and all(re.match(r"onnx-eprune: warning: ", line, re.IGNORECASE) for line in _lines(err)), err


# -- --debug -------------------------------------------------------------------------------------

def test_debug_changes_nothing_on_success(files, capsys):
    status, out, err = _run(capsys, _prune(files))
    status_d, out_d, err_d = _run(capsys, _prune(files, "--debug", out="d.onnx"))
    assert status == status_d == 0, err_d
    assert "Traceback" not in err_d and _lines(err_d) == _lines(err)
    assert len(out_d.splitlines()) == len(out.splitlines())


@pytest.mark.parametrize("case", ["usage", "runtime"])
def test_debug_shows_a_traceback_with_the_same_status(files, capsys, case):
    if case == "usage":
        argv, code = ["inspect", str(files / "missing.onnx")], 2
    else:
        onnx.save(intermediate_output(), str(files / "inter.onnx"))
        argv, code = _prune(files, model="inter.onnx"), 1
        argv[argv.index("--sparsity") + 1] = "0.9"
    status, out, err = _run(capsys, argv)
    assert status == code and out == ""
    lines = _lines(err)
    assert lines[-1].startswith("onnx-eprune: error: ") and "Traceback" not in err
    status, out, err_d = _run(capsys, [*argv, "--debug"])
    assert status == code and out == ""
    assert "Traceback (most recent call last)" in err_d
    assert lines[-1].removeprefix("onnx-eprune: error: ") in err_d  # the same message, at the traceback's end


@pytest.mark.parametrize("argv", [["inspect", "--", "--debug"], ["inspect", "missing.onnx", "--deb"]])
def test_debug_is_the_parsed_option(tmp_path, capsys, monkeypatch, argv):
    """Expected: --debug is the option as parsed: a model file named '--debug' (after '--')
    that is missing gives the one-line error; '--deb', which the parser takes as --debug,
    shows the traceback (or is refused as an unknown option). What happens: the first prints
    a traceback, the second the one line. Cause: cli.py:main sets ``debug = "--debug" in
    argv`` instead of using args.debug once the options are parsed."""
    monkeypatch.chdir(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    if argv[-1] == "--debug":
        assert "Traceback" not in err and _lines(err) == ["onnx-eprune: error: model file not found: --debug"]
    else:
        assert "Traceback" in err or ("--deb" in err and len(_lines(err)) == 1), err


# -- Python warnings ------------------------------------------------------------------------------

def test_python_warnings_stay_off_the_console_unless_verbose(files):
    """Warnings that numpy or a library raises during a run (an overflow RuntimeWarning in the
    main thread, a UserWarning in a worker thread) are not shown as raw 'file.py:123:
    RuntimeWarning' lines on a normal run; -v shows them ("numerical warnings are details")."""
    child = textwrap.dedent("""
        import sys, threading, warnings
        import numpy as np
        import onnx_eprune.pipeline as pipeline
        from onnx_eprune.cli import main

        real = pipeline.prune
        def noisy(*args, **kwargs):
            np.float32(3e38) * np.float32(10)  # RuntimeWarning: overflow
            t = threading.Thread(target=lambda: warnings.warn("from a worker", UserWarning))
            t.start(); t.join()
            return real(*args, **kwargs)
        pipeline.prune = noisy
        before = list(warnings.filters)
        argv = sys.argv[1:]
        status = main(argv)
        sys.stderr.write("=== verbose\\n"); sys.stderr.flush()
        status_v = main([*argv, "-v"])
        print("STATUS", status, status_v, list(warnings.filters) == before)
    """)
    argv = ["prune", "model.onnx", "-o", "out.onnx", "--calib", "calib.npy", "--sparsity", "0.4", *RUN]
    proc = subprocess.run([sys.executable, "-c", child, *argv], cwd=files, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS 0 0 True" in proc.stdout, (proc.stdout, proc.stderr)
    quiet, verbose = proc.stderr.split("=== verbose\n")
    assert not RAW_WARNING.search(quiet) and "Warning" not in quiet, quiet
    assert all(line.startswith("onnx-eprune: ") for line in quiet.splitlines()), quiet
    assert "RuntimeWarning" in verbose and "from a worker" in verbose, verbose


def test_main_leaves_the_warning_filters_as_it_found_them(files, capsys):
    import warnings

    before = list(warnings.filters)
    assert main(_prune(files, "-q")) == 0
    assert main(["inspect", str(files / "missing.onnx")]) == 2
    capsys.readouterr()
    assert list(warnings.filters) == before


# -- error lines -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["model", "calib", "output-folder", "report-dir"])
def test_error_line_stays_one_line_for_paths_with_newlines(files, capsys, case):
    """Expected: exactly one stderr line, starting 'onnx-eprune: error:', naming the path with
    its newline escaped (as the printed tables already escape node names). What happens: the
    path is printed raw, so the message continues on a second line that does not start with
    'onnx-eprune:'. Cause: the messages embed str(path) (files.py:require_file,
    cli.py:_check_output, _check_folder) and cli.py:_fail prints them as they are."""
    if case == "model":
        argv = ["inspect", str(files / "no\nsuch.onnx")]
    elif case == "calib":
        argv = _prune(files, calib="mi\nssing.npy")
    elif case == "output-folder":
        argv = _prune(files, out="no\nfolder/out.onnx")
    else:
        argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--sparsity", "0.5",
                "--report-dir", str(files / "x\ny" / "z"), *RUN]
    status, out, err = _run(capsys, argv)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("onnx-eprune: error: "), err


def test_internal_error_is_one_line(files, capsys, monkeypatch):
    """Expected: an unexpected exception is one 'onnx-eprune: ...' line that points to
    --debug, exit 1. What happens: 'onnx-eprune: internal error: ValueError: first' then
    'second (rerun with --debug for details)'. Cause: cli.py:main formats f"{exc}" raw."""
    from onnx_eprune import cli

    def broken(args):
        raise ValueError("shapes (3,4) and (5,6) not aligned\n\n==> Context: node conv_1")
    monkeypatch.setitem(cli.COMMANDS, "inspect", broken)
    status, out, err = _run(capsys, ["inspect", str(files / "model.onnx")])
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("onnx-eprune: ") and "--debug" in err, err


def test_log_lines_stay_one_line_for_names_with_newlines(files, capsys):
    """Expected: every stderr line starts 'onnx-eprune: ' ('--exclude 'stem*' keeps whole the
    output channels of stem\\nconv', escaped as report.printable does in the tables). What
    happens: the info line breaks at the newline. Cause: graph/exclude.py:exclude_groups
    logs the raw node labels; cli.py:_setup_logging's formatter escapes nothing."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    next(n for n in model.graph.node if n.name == "conv_1").name = "stem\nconv"
    onnx.save(model, str(files / "nl.onnx"))
    status, out, err = _run(capsys, _prune(files, "--exclude", "stem*", model="nl.onnx"))
    assert status == 0 and "wrote " in out, err
    assert "keeps whole the output channels of stem" in err
    assert all(line.startswith("onnx-eprune: ") for line in err.splitlines()), err


def test_usage_error_prints_its_line_alone(files, capsys):
    """Expected: usage errors are "found before any work" and "a failure prints one line"
    (cli.py holds the --calib-random warning back so that "a failed run prints its error line
    alone"). What happens: 'only 8 calibration samples ...' and 'onnxruntime provider:
    CPUExecutionProvider' come first. Cause: the --exclude patterns are checked in
    pipeline.Pruner after the calibration data and providers are chosen and logged
    (graph/exclude.py:exclude_groups), not in cli.py before the run."""
    status, out, err = _run(capsys, _prune(files, "--exclude", "nomatch", calib="few.npy"))
    assert status == 2 and out == ""
    assert _lines(err) == [_lines(err)[-1]] and "matches no node" in err, err


def test_a_bad_omp_num_threads_warns_once(files, capsys, monkeypatch):
    """Expected: "a value that is no count is ignored with a warning" (README): one line.
    What happens: the same line once per session the run creates. Cause:
    calibrate/session.py:_omp_threads logs on every call of _options (every make_session)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    monkeypatch.setattr(session, "_WARNED", set())  # once per process: not yet in this one
    status, out, err = _run(capsys, _prune(files, "-q"))
    assert status == 0 and out == "", err
    assert err.count("OMP_NUM_THREADS='abc' is no thread count") == 1, err


@pytest.mark.parametrize("case", ["inspect-json-error", "calib-random-warning"])
def test_closed_stderr_never_sends_messages_to_stdout(files, capsys, monkeypatch, case):
    """Expected: messages go to stderr or nowhere; stdout keeps only results (nothing for a
    failed ``inspect --json`` or a ``prune -q``). What happens: with file descriptor 2 closed
    Python sets sys.stderr to None, and ``print(..., file=None)`` writes to stdout. Cause:
    cli.py:_fail and _calib_source use print(file=sys.stderr)."""
    monkeypatch.setattr(sys, "stderr", None)  # what Python sets when fd 2 is closed at start-up
    if case == "inspect-json-error":
        status, code = main(["inspect", str(files / "missing.onnx"), "--json"]), 2
    else:
        argv = _prune(files, "-q")
        i = argv.index("--calib")
        argv[i:i + 2] = ["--calib-random", "16"]
        status, code = main(argv), 0
    out = capsys.readouterr().out
    assert status == code
    assert out == "", out


# -- progress ---------------------------------------------------------------------------------------

def test_progress_on_a_terminal_updates_in_place_and_leaves_nothing(files):
    """stderr on a real pseudo-terminal, stdout on a pipe: progress is redrawn in place
    (carriage returns, no newline per update), every bar is erased when its task ends, the
    screen keeps only the log lines, no bar is wider than 80 columns, and stdout gets none
    of it."""
    argv = [*_script(), "prune", "model.onnx", "-o", "out.onnx", "--calib", "calib.npy", "--sparsity", "0.4",
            "--device", "cpu"]
    status, out, raw = _on_terminal(argv, files)
    err = raw.decode("utf-8", "replace").replace("\r\n", "\n")  # the terminal turns \n into \r\n
    assert status == 0, err
    text = out.decode()
    assert "\r" not in text and "\x1b" not in text and text.splitlines()[-1] == "wrote out.onnx"
    draws = re.findall(r"\r([^\r\n\x1b]+)", err)
    assert any(re.match(r"calibrate +\[#+ *\] \d+/\d+", d) for d in draws), draws
    assert len(draws) >= 4 and err.count("\n") == 1  # many redraws, one line feed (after the log line)
    assert max(len(d) for d in draws) <= 80, draws
    assert err.count("\x1b[2K") >= 3  # calibrate, rank, the layers: each bar erased when done
    assert _screen(err) == ["onnx-eprune: onnxruntime provider: CPUExecutionProvider"], _screen(err)


@pytest.mark.parametrize("command", ["sweep", "calibrate"])
def test_progress_on_a_terminal_leaves_a_clean_screen(files, capsys, monkeypatch, command):
    """On a stream that is a terminal, the sweep's and calibrate's bars are erased and no
    log line is glued to a bar: the screen shows the log lines alone."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    if command == "sweep":
        argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "few.npy"), "--sparsity", "0.3", "0.5",
                "--report-dir", str(files / "sw"), *RUN]
    else:
        argv = ["calibrate", str(files / "model.onnx"), "--calib", str(files / "few.npy"), "--stats-out",
                str(files / "s.npz"), "--device", "cpu"]
    assert main(argv) == 0
    raw = terminal.getvalue()
    assert raw.count("\r") > 2 and "\x1b[2K" in raw, raw
    screen = _screen(raw)
    assert screen and all(line.startswith("onnx-eprune: ") for line in screen), screen
    assert "\r" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["prune", "sweep", "calibrate"])
def test_quiet_draws_no_progress_even_on_a_terminal(files, capsys, monkeypatch, command):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    if command == "prune":
        argv = _prune(files)
    elif command == "sweep":
        argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--sparsity", "0.3",
                "--report-dir", str(files / "sw"), *RUN]
    else:
        argv = ["calibrate", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--stats-out",
                str(files / "s.npz"), "--device", "cpu"]
    assert main([*argv, "-q"]) == 0
    assert terminal.getvalue() == ""
    assert capsys.readouterr().out == ""


def test_an_error_during_a_drawn_task_is_its_own_line(files, capsys, monkeypatch):
    """A runtime error raised while a bar is on the terminal: the bar is erased and the error
    line stands alone on the screen."""
    from onnx_eprune import progress
    from onnx_eprune.errors import EPruneError

    real = progress._Task.advance

    def failing(self, n=1):
        real(self, n)
        raise EPruneError("the disk went away")
    monkeypatch.setattr(progress._Task, "advance", failing)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(_prune(files)) == 1
    raw = terminal.getvalue()
    assert "\rcalibrate" in raw
    assert _screen(raw)[-1] == "onnx-eprune: error: the disk went away", _screen(raw)
    assert not (files / "out.onnx").exists()


def test_progress_bar_fits_a_terminal_line(monkeypatch):
    """A bar for a long task (100,000 steps, hours left) stays within 80 columns, or a
    terminal would wrap it and every redraw would leave a line behind."""
    from onnx_eprune import progress

    clock = iter([0.0, 0.0, 5000.0, 5000.0, 9000.0, 9000.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    terminal = _Terminal()
    with progress.Progress(stream=terminal).task("layer 123/456", 100_000) as task:
        task.advance(1)
        task.advance(49_999)
    draws = re.findall(r"\r([^\r\x1b]*)", terminal.getvalue())
    assert len(draws) >= 3 and max(len(d) for d in draws) <= 80, draws
    assert any("50000/100000" in d for d in draws)
    assert terminal.getvalue().endswith("\r\x1b[2K")


# -- the Python API ---------------------------------------------------------------------------------

def test_api_prints_nothing_by_default(files, capfd, monkeypatch):
    """prune, calibrate, inspect and evaluate from Python: nothing on stdout; on stderr no
    info lines, no onnxruntime log (the model makes it warn) and no progress, even when
    stderr is a terminal, unless a Progress is passed."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    calib = np.load(files / "calib.npy")
    result = onnx_eprune.prune(str(files / "warn.onnx"), calib, sparsity=0.4, device="cpu")
    assert result.report["params"]["removed_fraction"] >= 0.4
    onnx_eprune.calibrate(str(files / "warn.onnx"), calib, device="cpu")
    onnx_eprune.inspect(str(files / "warn.onnx"))
    onnx_eprune.evaluate(str(files / "model.onnx"), str(files / "warn.onnx"), str(files / "data.npy"), device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert terminal.getvalue() == ""


def test_api_draws_progress_only_on_the_progress_it_is_given(files, capfd, monkeypatch):
    from onnx_eprune.progress import Progress

    terminal = _Terminal()
    calib = np.load(files / "calib.npy")
    onnx_eprune.prune(str(files / "model.onnx"), calib, sparsity=0.4, device="cpu", progress=Progress(stream=terminal))
    assert "\rcalibrate" in terminal.getvalue() and _screen(terminal.getvalue()) == []
    onnx_eprune.prune(str(files / "model.onnx"), calib, sparsity=0.4, device="cpu", progress=Progress())
    out, err = capfd.readouterr()  # Progress() on the test's stderr, which is no terminal: nothing
    assert out == "" and err == ""


def test_library_code_never_prints():
    """Only the command line prints: the library reports through logging and Progress, so a
    program that imports it keeps its stdout. No print() and no sys.stdout outside cli.py
    (and the console script's entry.py, which prints the interrupt line of an interrupted load)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("cli.py", "__main__.py", "entry.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} print()")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "__stdout__") \
                    and isinstance(node.value, ast.Name) and node.value.id == "sys":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} sys.stdout")
    assert not offenders, offenders
