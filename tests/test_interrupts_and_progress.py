"""Real signals and progress output, in processes of their own.

Attacks what a user at a terminal (or a scheduler) sees and keeps when a run is stopped:
``onnx-eprune`` is started as a separate process on the shipped LeNet-5 and a real SIGINT
(Ctrl-C) or SIGTERM is sent to it while it is importing, checking its inputs, calibrating,
pruning layer by layer, writing a temporary file, between two renames of its outputs, and
while it is undoing its outputs after a first Ctrl-C (a second Ctrl-C, as impatient users
press). After each: exit status 130 / 143 (README: "130 when interrupted (Ctrl-C), 143 when
terminated (SIGTERM, which cleans up as Ctrl-C does)"), stderr ends with the single
``onnx-eprune: error: ...`` line and holds no traceback (one with ``--debug``), stdout holds
no partial result, the process exits promptly, every file of the working folder (inputs,
an earlier run's outputs) keeps its bytes, no new file or folder appears, and TMPDIR keeps
no scratch files.

To hit a phase deterministically, the command line runs through a small launcher that does
what the ``onnx-eprune`` script does (``from onnx_eprune.cli import main;
sys.exit(main())``) but sleeps in the main thread at one chosen point (after a progress
step, after an fsync or a rename, ...) and writes a marker file first; the test sends the
signal once the marker appears. A few runs use the plain script and time the signal by
what the program prints.

Progress: on a real pseudo-terminal (``pty``) the bars are drawn on stderr only, erased
before the error line of an interrupted run, and ``-q`` draws none but still prints errors
and interrupts; with stderr on a pipe there is no carriage-return drawing at all, and a
stdout on a terminal never receives progress.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli_helpers import screen as _screen
import onnx_eprune

SHIPPED = Path(onnx_eprune.__file__).resolve().parent.parent / "models"
INTERRUPTED = "onnx-eprune: error: interrupted; no partial output was left and the input is untouched"
TERMINATED = "onnx-eprune: error: terminated (SIGTERM); no partial output was left and the input is untouched"
OLD = b"an earlier run's result, which an interrupted run must leave as it is\n"
STOPPED = {signal.SIGINT: (130, INTERRUPTED), signal.SIGTERM: (143, TERMINATED)}
PROMPT_S = 15.0  # a stopped run must end within this many seconds of the signal
# a small session file that some environments' runtime writes into TMPDIR at import, not onnx-eprune's
FOREIGN_TMP = {".ses"}

LAUNCHER = textwrap.dedent('''
    """Runs the onnx-eprune command line as its console script does, pausing (sleeping in
    the main thread) at the points EPRUNE_TEST_PAUSE lists, comma-separated, each once and
    in that order: the n-th pause writes the file EPRUNE_TEST_MARK.n, then sleeps until a
    signal ends it (or EPRUNE_TEST_HOLD seconds pass)."""
    import os, sys, threading, time

    MARK = os.environ["EPRUNE_TEST_MARK"]
    POINTS = os.environ["EPRUNE_TEST_PAUSE"].split(",")
    HOLD = float(os.environ["EPRUNE_TEST_HOLD"])
    done = []


    def pause(point):
        if threading.current_thread() is not threading.main_thread() or len(done) == len(POINTS) \\
                or POINTS[len(done)] != point:
            return
        done.append(point)
        with open(f"{MARK}.{len(done)}", "w") as f:
            f.write(point)
        end = time.monotonic() + HOLD
        while time.monotonic() < end:
            time.sleep(0.01)


    class SlowImport:
        def find_spec(self, name, path=None, target=None):
            if name == "onnx":
                pause("import")
            elif name == "numpy":
                pause("import:numpy")
            return None


    def install():
        """The pause points inside the package (which this loads)."""
        from onnx_eprune import cli, files, progress

        real = (progress._Task.__enter__, progress._Task.advance, os.fsync, os.replace, files._same,
                cli._input_model, threading.Thread.start)

        def enter(self):
            result = real[0](self)
            pause("enter:" + self.label.split()[0])
            return result

        def advance(self, n=1):
            real[1](self, n)
            pause("task:" + self.label.split()[0])

        def fsync(fd):
            real[2](fd)
            parts = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).split(".")
            pause("fsync:" + (parts[1] if len(parts) > 1 else parts[0]))

        def replace(src, dst, **kwargs):
            real[3](src, dst, **kwargs)
            if not os.fspath(src).endswith(".old"):  # a new output renamed into place, not a restore
                pause("replaced:" + os.path.basename(os.fspath(dst)))

        def same(a, b):  # called only while Replacing undoes its outputs after a failure
            pause("restore")
            return real[4](a, b)

        def input_model(*args, **kwargs):  # the checks of the inputs, before any work
            pause("check")
            return real[5](*args, **kwargs)

        def start(self):  # the new thread runs; its starter still waits to hear so
            real[6](self)
            pause("thread:" + self.name.rsplit("_", 1)[0])

        (progress._Task.__enter__, progress._Task.advance, os.fsync, os.replace, files._same,
         cli._input_model, threading.Thread.start) = (enter, advance, fsync, replace, same, input_model, start)


    sys.meta_path.insert(0, SlowImport())
    from onnx_eprune.entry import main  # what the onnx-eprune script does
    if not POINTS[0].startswith("import"):  # a pause while main loads the package needs it not loaded yet
        install()
    sys.exit(main())
''')


# -- helpers ---------------------------------------------------------------------------------

class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.work = root / "work"     # the inputs and outputs: cwd of the runs
        self.ctl = root / "ctl"       # the launcher and its markers
        self.tmp = root / "scratch"   # TMPDIR
        for d in (self.work, self.ctl, self.tmp):
            d.mkdir()
        (self.ctl / "launch.py").write_text(LAUNCHER)
        (self.work / "model.onnx").write_bytes((SHIPPED / "lenet5_fmnist.onnx").read_bytes())
        sample = np.load(SHIPPED / "fashion_mnist_sample.npz")
        calib = (sample["calib"].astype(np.float32) / 255 - sample["mean"]) / sample["std"]
        np.save(self.work / "calib.npy", calib[:64])
        np.save(self.work / "calib_all.npy", calib)

    def env(self, points: str = "", hold: float = 30.0) -> dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.tmp), EPRUNE_TEST_MARK=str(self.ctl / "mark"),
                   EPRUNE_TEST_PAUSE=points, EPRUNE_TEST_HOLD=str(hold), PYTHONUNBUFFERED="1")
        return env

    def snapshot(self) -> dict[str, bytes | None]:
        """Every file (its bytes) and folder (None) under work/, hidden ones included."""
        found: dict[str, bytes | None] = {}
        for path in sorted(self.work.rglob("*")):
            found[str(path.relative_to(self.work))] = None if path.is_dir() else path.read_bytes()
        return found

    def scratch_left(self) -> list[str]:
        return sorted(name for name in os.listdir(self.tmp) if name not in FOREIGN_TMP)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def _prune(*extra: str, out: str = "out.onnx", calib: str = "calib.npy") -> list[str]:
    return ["prune", "model.onnx", "-o", out, "--calib", calib, "--sparsity", "0.5", "--device", "cpu", *extra]


def _script() -> list[str]:
    script = Path(sys.executable).with_name("onnx-eprune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnx_eprune"]


class Run:
    """A finished run: exit status, stdout, stderr (or what its terminal received), and the
    seconds from the last signal to its exit."""

    def __init__(self, status: int, out: str, err: str, after_signal: float, tty: bool):
        self.status, self.out, self.err, self.after_signal, self.tty = status, out, err, after_signal, tty

    def lines(self) -> list[str]:
        """stderr's non-empty lines; on a terminal, what its screen shows."""
        if self.tty:
            return _screen(self.err)
        return [line for line in self.err.split("\n") if line.strip()]


def _drain(stream, chunks: list[bytes]) -> None:
    chunks.extend(iter(lambda: stream.read1(65536), b""))  # item by item: the caller watches it grow


def _drain_fd(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program closed its terminal
            return
        if not chunk:
            return
        chunks.append(chunk)


def _interruptible() -> None:
    """In the child before it runs: Ctrl-C back to its default. A test runner started in the
    background by a shell without job control (``pytest &`` in a script) ignores SIGINT, its
    children inherit that, and Python then installs no KeyboardInterrupt handler: every run
    here would ignore the signal the tests send, as the program rightly does when its user
    started it that way."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _launch(ws: Workspace, argv: list[str], points: str = "", signals: tuple[int, ...] = (),
            stderr_tty: bool = False, stdout_tty: bool = False, wait_for: bytes | None = None,
            signal_on_text: int | None = None, timeout: float = 90, hold: float = 30.0) -> Run:
    """Run ``argv`` (through the launcher when ``points`` is given, else the plain script)
    in work/, send ``signals[i]`` once pause point i+1 is reached (or ``signal_on_text``
    once ``wait_for`` shows up on stderr), and collect everything; a pause that no signal
    ends lasts ``hold`` seconds."""
    cmd = [sys.executable, str(ws.ctl / "launch.py"), *argv] if points else [*_script(), *argv]
    ends: dict[str, tuple[object, int | None]] = {}
    for name, tty in (("out", stdout_tty), ("err", stderr_tty)):
        if tty:
            master, slave = pty.openpty()
            ends[name] = (slave, master)
        else:
            ends[name] = (subprocess.PIPE, None)
    proc = subprocess.Popen(cmd, cwd=ws.work, env=ws.env(points, hold), stdin=subprocess.DEVNULL,
                            stdout=ends["out"][0], stderr=ends["err"][0], preexec_fn=_interruptible)
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}
    readers = []
    for name in ("out", "err"):
        slave, master = ends[name]
        if master is not None:
            os.close(slave)
            readers.append(threading.Thread(target=_drain_fd, args=(master, chunks[name]), daemon=True))
        else:
            readers.append(threading.Thread(target=_drain, args=(getattr(proc, f"std{name}"), chunks[name]),
                                            daemon=True))
    for reader in readers:
        reader.start()
    sent = None
    try:
        deadline = time.monotonic() + timeout
        for i, sig in enumerate(signals, start=1):
            marker = ws.ctl / f"mark.{i}"
            while not marker.exists():
                assert proc.poll() is None, f"the run ended (status {proc.returncode}) before pause {i}: " \
                                            f"{b''.join(chunks['err']).decode(errors='replace')}"
                assert time.monotonic() < deadline, f"pause {i} never reached"
                time.sleep(0.01)
            proc.send_signal(sig)
            sent = time.monotonic()
        if wait_for is not None:
            while wait_for not in b"".join(chunks["err"]):
                assert proc.poll() is None, "the run ended before it printed " + repr(wait_for)
                assert time.monotonic() < deadline, "no " + repr(wait_for)
                time.sleep(0.005)
            proc.send_signal(signal_on_text)
            sent = time.monotonic()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended = time.monotonic()
    for reader in readers:
        reader.join(timeout=10)
    for name in ("out", "err"):
        if ends[name][1] is not None:
            os.close(ends[name][1])
    return Run(proc.returncode, b"".join(chunks["out"]).decode(errors="replace"),
               b"".join(chunks["err"]).decode(errors="replace"), 0.0 if sent is None else ended - sent, stderr_tty)


def _assert_stopped(ws: Workspace, run: Run, before: dict, code: int, message: str) -> None:
    """A stopped run: its status, one error line last and no traceback, nothing on stdout,
    a prompt exit, the working folder as it was and no scratch files."""
    assert run.status == code, (run.status, run.err)
    lines = run.lines()
    assert "Traceback" not in run.err, run.err
    assert lines and lines[-1] == message, run.err
    assert [line for line in lines if "error" in line] == [message], run.err
    assert all(line.startswith("onnx-eprune: ") for line in lines), run.err
    assert run.out == "", run.out
    assert run.after_signal < PROMPT_S, f"{run.after_signal:.1f} s from the signal to the exit"
    after = ws.snapshot()
    assert sorted(after) == sorted(before), sorted(set(after) ^ set(before))
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, changed
    assert ws.scratch_left() == []


# -- signals at chosen phases ---------------------------------------------------------------------

def test_ctrl_c_during_start_up_is_one_line(ws):
    """Ctrl-C pressed right after starting the command (while onnx is imported, about a
    second on a cold or busy machine) ends it with the one interrupt line and status 130,
    as anywhere else: the package loads onnx and onnxruntime inside ``cli.main``'s handling
    (once the console script's import of the package loaded them, and the interrupt was
    Python's traceback and a death by SIGINT), with the signal held back until they are
    loaded (an interrupt inside onnx's C++ initialisation aborted the process, one inside
    another extension left it unimportable: "internal error: ImportError")."""
    before = ws.snapshot()
    run = _launch(ws, _prune(), points="import", signals=(signal.SIGINT,),
                  hold=2.0)  # the import holds the signal back: its pause ends on its own
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


def test_ctrl_c_while_the_command_line_loads_is_one_line(ws):
    """Ctrl-C while the console script loads the command line itself (numpy and scipy,
    half a second idle, seconds on a cold machine): the same one line and status 130, once
    the import is done. Once that import came before any handler, and the interrupt was
    Python's traceback."""
    before = ws.snapshot()
    run = _launch(ws, _prune(), points="import:numpy", signals=(signal.SIGINT,), hold=2.0)
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


def test_sigterm_during_start_up_leaves_nothing(ws):
    """SIGTERM while onnx loads: held back until it is loaded, then the one terminated line
    and status 143, no file."""
    (ws.work / "out.onnx").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune(), points="import", signals=(signal.SIGTERM,), hold=2.0)
    _assert_stopped(ws, run, before, 143, TERMINATED)


@pytest.mark.parametrize("point, sig", [("check", signal.SIGINT), ("task:calibrate", signal.SIGTERM),
                                        ("task:layer", signal.SIGINT)])
def test_signal_during_the_run_leaves_everything_as_it_was(ws, point, sig):
    """While the inputs are checked (before any work), during the calibration pass and in
    a sequential stage (scratch files in TMPDIR in use): an earlier output and report stay
    byte for byte, the input is untouched, no scratch file is left."""
    (ws.work / "out.onnx").write_bytes(OLD)
    (ws.work / "r.json").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune("--report", "r.json"), points=point, signals=(sig,))
    _assert_stopped(ws, run, before, *STOPPED[sig])


@pytest.mark.parametrize("point, sig, extra", [
    ("fsync:out", signal.SIGINT, ()),                                 # the new model in its temporary file
    ("replaced:out.onnx", signal.SIGTERM, ("--report", "r.json")),    # the model renamed over the old one
    ("replaced:report.md", signal.SIGINT, ("--report", "r.json", "--report-dir", "rep")),  # half the folder
])
def test_signal_while_writing_outputs_restores_the_old_ones(ws, point, sig, extra):
    """A signal between the writes: no temporary file, the earlier output and report come
    back (also after the new model was renamed over them), a report folder the run created
    goes away again."""
    (ws.work / "out.onnx").write_bytes(OLD)
    (ws.work / "r.json").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune("--method", "l1", *extra), points=point, signals=(sig,))
    _assert_stopped(ws, run, before, *STOPPED[sig])


@pytest.mark.parametrize("first", ["fsync:out", "replaced:out.onnx"])
def test_second_ctrl_c_during_the_clean_up_loses_nothing(ws, first):
    """An impatient user's second Ctrl-C, arriving while the first one's clean-up puts the
    earlier outputs back, still ends with the earlier ``out.onnx`` in place and no stray
    files: the clean-up (milliseconds) holds SIGINT and SIGTERM back. Once it stopped
    half-way: after a rename the new pruned model stayed as ``out.onnx`` and the old one was
    left as a hidden ``.out.onnx.<hex>.old``."""
    (ws.work / "out.onnx").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune("--method", "l1"), points=f"{first},restore", signals=(signal.SIGINT, signal.SIGINT),
                  hold=2.0)  # the clean-up holds the second signal back: its pause ends on its own
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


@pytest.mark.parametrize("pool", ["onnx-eprune-prefetch", "onnx-eprune", "onnx-eprune-gains"])
def test_ctrl_c_while_a_worker_thread_starts_still_ends_the_run(ws, monkeypatch, pool):
    """Ctrl-C while the main thread waits for a new worker thread to start (calibration's
    prefetch, the shared pool of the solvers and statistics, the gains measured beside the
    ranking): the run ends promptly as any interrupted run. Once the interrupt came out of
    the start itself, before the pool had registered the thread for its shutdown at exit:
    in the shared pool that thread then waited for work forever and the process never
    exited (a CI run timed out on it). A start now holds the signal back until it returns."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # the solvers on two threads on any machine
        monkeypatch.setenv(name, "2")
    (ws.work / "out.onnx").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune(), points="thread:" + pool, signals=(signal.SIGINT,),
                  hold=2.0)  # the start holds the signal back: its pause ends on its own
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


def test_debug_shows_the_interrupt_traceback_with_the_same_status(ws):
    """README: ``--debug`` shows the traceback instead of the line, with the same exit status."""
    before = ws.snapshot()
    run = _launch(ws, _prune("--debug"), points="task:calibrate", signals=(signal.SIGINT,))
    assert run.status == 130, run.err
    assert "Traceback (most recent call last)" in run.err and run.lines()[-1] == "KeyboardInterrupt", run.err
    assert run.out == "" and ws.snapshot() == before and ws.scratch_left() == []


def test_sigterm_while_calibrate_writes_its_statistics_keeps_the_old_file(ws):
    (ws.work / "stats.npz").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, ["calibrate", "model.onnx", "--calib", "calib.npy", "--stats-out", "stats.npz",
                       "--device", "cpu"], points="fsync:stats", signals=(signal.SIGTERM,))
    _assert_stopped(ws, run, before, 143, TERMINATED)


def test_ctrl_c_while_sweep_saves_its_models_removes_the_new_folder(ws):
    """sweep --save-models into a folder it creates: interrupted after the first model was
    renamed into place (sweep.json and sweep.md already written), the folder goes away."""
    before = ws.snapshot()
    run = _launch(ws, ["sweep", "model.onnx", "--calib", "calib.npy", "--sparsity", "0.3", "--report-dir", "sw",
                       "--save-models", "--device", "cpu", "--method", "l1"],
                  points="replaced:pruned_sparsity_0.3.onnx", signals=(signal.SIGINT,))
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


# -- signals on a terminal ------------------------------------------------------------------------

def test_ctrl_c_on_a_terminal_erases_the_bar_before_the_error_line(ws):
    """The plain script on a pseudo-terminal, Ctrl-C while the calibration bar advances (one
    sample per batch): the bar is erased, the screen keeps the provider line and the
    interrupt line, each on its own line; stdout (a pipe) gets nothing."""
    (ws.work / "out.onnx").write_bytes(OLD)
    before = ws.snapshot()
    run = _launch(ws, _prune("--batch-size", "1", calib="calib_all.npy"), stderr_tty=True,
                  wait_for=b"] 3/1024", signal_on_text=signal.SIGINT)
    assert _screen(run.err) == ["onnx-eprune: onnxruntime provider: CPUExecutionProvider", INTERRUPTED], run.err
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


def test_ctrl_c_as_a_bar_appears_leaves_no_bar_on_screen(ws):
    """However the interrupt falls, the error line stands alone on the screen: Ctrl-C as a
    new bar ("calibrate ... 0/N") appears (the launcher pauses right after the first draw)
    once left ``calibrate [   ] 0/1024   onnx-eprune: error: interrupted...`` on one line,
    since the interrupt came before the ``with`` block whose exit erases the bar;
    cli.py:_fail now erases a bar left on the line first."""
    before = ws.snapshot()
    run = _launch(ws, _prune(), points="enter:calibrate", signals=(signal.SIGINT,), stderr_tty=True)
    assert run.status == 130
    assert _screen(run.err)[-1] == INTERRUPTED, _screen(run.err)
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


def test_quiet_still_reports_the_interrupt_on_a_terminal(ws):
    """-q silences progress, not errors: Ctrl-C during calibration on a terminal prints the
    interrupt line and nothing else (no carriage return, no escape sequence)."""
    before = ws.snapshot()
    run = _launch(ws, _prune("-q"), points="task:calibrate", signals=(signal.SIGINT,), stderr_tty=True)
    assert run.err.replace("\r\n", "\n") == INTERRUPTED + "\n", repr(run.err)
    _assert_stopped(ws, run, before, 130, INTERRUPTED)


# -- progress without signals -----------------------------------------------------------------------

def test_progress_on_a_pipe_is_not_drawn(ws):
    """stderr on a pipe (a log file, CI): no carriage returns or escape sequences, only
    whole ``onnx-eprune:`` lines; stdout has the table and ends with what was written."""
    run = _launch(ws, _prune())
    assert run.status == 0, run.err
    for stream in (run.out, run.err):
        assert "\r" not in stream and "\x1b" not in stream, repr(stream)
    assert run.lines() and all(line.startswith("onnx-eprune: ") for line in run.lines()), run.err
    assert run.out.splitlines()[-1] == "wrote out.onnx"
    onnx.checker.check_model(onnx.load(str(ws.work / "out.onnx")), full_check=True)


def test_stdout_on_a_terminal_gets_no_progress(ws):
    """stdout on a terminal, stderr on a pipe (``onnx-eprune prune ... 2>log``): progress
    is for stderr only, so nothing is drawn anywhere; the table reaches the terminal whole."""
    run = _launch(ws, _prune(), stdout_tty=True)
    assert run.status == 0, run.err
    assert "\r\n" in run.out  # it did go through a terminal
    out = run.out.replace("\r\n", "\n")
    assert "\r" not in out and "\x1b" not in out, repr(run.out)
    assert "\r" not in run.err and "\x1b" not in run.err, repr(run.err)
    assert out.splitlines()[0].split()[:2] == ["group", "channels"] and out.splitlines()[-1] == "wrote out.onnx"


def test_progress_on_a_terminal_is_drawn_on_stderr_and_erased(ws):
    """stderr on a terminal: bars redrawn in place (at most 80 columns) and each erased, the
    screen keeps the provider line alone; stdout (a pipe) gets the results, no drawing."""
    run = _launch(ws, _prune(), stderr_tty=True)
    assert run.status == 0, run.err
    draws = re.findall(r"\r([^\r\n\x1b]+)", run.err)
    assert any(re.match(r"calibrate +\[#* *\] \d+/\d+", d) for d in draws), draws
    assert any(d.startswith("layer ") for d in draws), draws
    assert max(len(d) for d in draws) <= 80
    assert _screen(run.err) == ["onnx-eprune: onnxruntime provider: CPUExecutionProvider"], _screen(run.err)
    assert "\r" not in run.out and "\x1b" not in run.out and run.out.splitlines()[-1] == "wrote out.onnx"


def test_quiet_on_a_terminal_prints_nothing_on_success(ws):
    run = _launch(ws, _prune("-q"), stderr_tty=True)
    assert run.status == 0, run.err
    assert run.err == "" and run.out == "", (run.err, run.out)
    onnx.checker.check_model(onnx.load(str(ws.work / "out.onnx")), full_check=True)


@pytest.mark.parametrize("extra, code, words", [
    (("--exclude", "/nosuch/*"), 2, "matches no node"),                  # a usage error, before any work
    (("--min-keep", "0.9", "--sparsity", "0.6"), 1, "reach"),            # a runtime error: target out of reach
])
def test_quiet_on_a_terminal_still_prints_errors(ws, extra, code, words):
    """-q on a terminal: a failure is still its one error line, alone on the screen."""
    before = ws.snapshot()
    argv = _prune("-q")
    if "--sparsity" in extra:
        i = argv.index("--sparsity")
        del argv[i:i + 2]
    run = _launch(ws, [*argv, *extra], stderr_tty=True)
    assert run.status == code, run.err
    screen = _screen(run.err)
    assert len(screen) == 1 and screen[0].startswith("onnx-eprune: error: ") and words in screen[0], screen
    assert "\x1b" not in run.err and run.out == ""
    assert ws.snapshot() == before
