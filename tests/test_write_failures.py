"""Failures of the file system while the commands write their outputs.

Attacks the rule "nothing is lost" where it meets the operating system rather than the
pipeline (``test_failures_midrun.py`` breaks the runs themselves, ``test_errors.py`` and
``test_external_data_io.py`` a few writes): for ``prune`` (``-o``, ``<out>.data``,
``--report``, ``--report-dir``), ``calibrate`` (``--stats-out``), ``sweep`` (its files,
``--save-models``, a stale plot) and ``demo``, each output's temporary file cannot be
created (full disk), its rename or ``fsync`` fails with every errno the command line has a
hint for (and some it has none for), a real ``ulimit -f`` (``RLIMIT_FSIZE``, in a process
of its own) stops the write half-way, the output's folder turns read-only or disappears
while the run works, a folder cannot be created, a file system cannot ``chmod`` or make
hard links and then runs out of space, outputs that exist before the run as links
(symbolic, dangling, hard) or with private permissions, and standard output on a full
disk (``inspect --json > file``; the summary of ``prune`` and ``demo``).

Every failure must give exit status 1 and one line ``onnx-eprune: error: ...`` naming the
path and the OS's reason (no traceback), leave no temporary or half-written file, and
leave every file that existed before (inputs, old outputs, links) as it was: bytes, mtime,
permission bits, link targets. The one exception is a summary that cannot be printed once
the model is committed: the complete model stays, and the line says it was written.

The tests run as root here, where ``chmod`` does not stop writes: read-only folders are
simulated by ``os.access`` (as the command's own check sees them) and by failing calls.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import resource
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import conv_bn_relu_pool_flatten_gemm
from onnx_eprune import pipeline, report_files
from onnx_eprune.cli import main
from onnx_eprune.graph import model_io

sweep_module = importlib.import_module("onnx_eprune.sweep")  # the package exports a function of this name

demo_module = importlib.import_module("onnx_eprune.demo")
files_module = importlib.import_module("onnx_eprune.files")

PREFIX = "onnx-eprune: error: "
OLD = b"an earlier run's output, which a failed run must leave as it is"
HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None


# -- the workspace ---------------------------------------------------------------------------

def _state(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: links by target, folders by mode, files by bytes, mtime, mode and inode."""
    state: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        st = path.lstat()
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            state[key] = (path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino)
    return state


class Workspace:
    """``work/`` holding model.onnx and calib.npy; ``tmp/`` is TMPDIR."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = root / "work"
        self.tmp = root / "tmp"
        self.capsys = capsys
        self.model = self.dir / "model.onnx"
        self.calib = self.dir / "calib.npy"
        self.out = self.dir / "out.onnx"

    def prune(self, *extra: str, out: Path | None = None) -> list[str]:
        return ["prune", str(self.model), "-o", str(out or self.out), "--calib", str(self.calib), "--sparsity", "0.4",
                "--method", "l1", "--device", "cpu", "-q", *extra]

    def calibrate(self, out: Path | None = None) -> list[str]:
        return ["calibrate", str(self.model), "--calib", str(self.calib), "--stats-out", str(out or self.dir / "s.npz"),
                "--device", "cpu", "-q"]

    def sweep(self, folder: Path | None = None, *extra: str) -> list[str]:
        return ["sweep", str(self.model), "--calib", str(self.calib), "--sparsity", "0.3", "0.5", "--report-dir",
                str(folder or self.dir / "sweep"), "--mode", "oneshot", "--method", "l1", "--device", "cpu", "-q",
                *extra]

    def demo(self, out: Path | None = None) -> list[str]:
        return ["demo", "-o", str(out or self.dir / "demo.onnx"), "--method", "l1", "--sparsity", "0.3", "--device",
                "cpu", "-q"]

    def fail(self, argv: list[str], contains: tuple[str, ...] = (), code: int = 1) -> str:
        """Run ``argv``: exit ``code``, one error line holding ``contains``, no traceback,
        work/ exactly as before and TMPDIR as before. Returns the line."""
        self.capsys.readouterr()
        before, tmp_before = _state(self.dir), _state(self.tmp)
        status = main(argv)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(PREFIX), err
        for word in contains:
            assert word in lines[0], lines[0]
        assert status == code, err
        assert "wrote" not in out, out
        after = _state(self.dir)
        assert set(after) == set(before), f"left behind: {set(after) - set(before)}, lost: {set(before) - set(after)}"
        for key, value in before.items():
            assert after[key] == value, f"{key} changed: {value!r:.200} -> {after[key]!r:.200}"
        assert _state(self.tmp) == tmp_before, "files left in TMPDIR"
        return lines[0]

    def succeed(self, argv: list[str]) -> None:
        self.capsys.readouterr()
        status = main(argv)
        assert status == 0, self.capsys.readouterr().err


@pytest.fixture
def ws(tmp_path: Path, capsys: pytest.CaptureFixture[str], calib: np.ndarray,
       monkeypatch: pytest.MonkeyPatch) -> Workspace:
    w = Workspace(tmp_path, capsys)
    w.dir.mkdir()
    w.tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(w.tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(w.model))
    np.save(w.calib, calib)
    return w


def _fail_os_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, exc: Callable[[], BaseException],
                  when: Callable[..., bool]) -> None:
    """``owner.name`` raises ``exc()`` on the calls that ``when`` accepts, and works otherwise."""
    real = getattr(owner, name)

    def failing(*args: object, **kwargs: object) -> object:
        if when(*args, **kwargs):
            raise exc()
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, failing)


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _mkstemp_fails_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """tempfile.mkstemp raises ENOSPC, as os.open does (naming the file it tried to create),
    for the temporary file of the output called ``name``."""
    real = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        prefix = str(kwargs.get("prefix", ""))
        if prefix.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device",
                          os.path.join(str(kwargs.get("dir")), f"{prefix}a1b2c3d4{kwargs.get('suffix', '')}"))
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _after_the_work(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, then: Callable[[], None]) -> None:
    """``then()`` runs right after ``owner.name`` returns: the run's checks are long passed."""
    real = getattr(owner, name)

    def wrapped(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        then()
        return result
    monkeypatch.setattr(owner, name, wrapped)


def _lock(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """From now on ``folder`` reads as not writable (a read-only remount, or chmod by another user)."""
    real = os.access

    def access(path: str | os.PathLike, mode: int, *args: object, **kwargs: object) -> bool:
        if mode & os.W_OK and Path(path).resolve() == folder.resolve():
            return False
        return real(path, mode, *args, **kwargs)
    monkeypatch.setattr(os, "access", access)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir"))).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real_mkstemp(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# -- the temporary file cannot be created: every output names itself -----------------------

# output -> (how to run it, the file whose temporary file fails, files that exist before)
OUTPUTS = {
    "prune -o": (lambda w: w.prune(), "out.onnx", ["out.onnx"]),
    "prune --report": (lambda w: w.prune("--report", str(w.dir / "r.json")), "r.json", ["out.onnx", "r.json"]),
    "prune --report-dir report.md": (lambda w: w.prune("--report-dir", str(w.dir / "rep")), "report.md",
                                     ["out.onnx", "rep/report.json", "rep/report.md"]),
    "calibrate --stats-out": (lambda w: w.calibrate(), "s.npz", ["s.npz"]),
    "sweep sweep.md": (lambda w: w.sweep(), "sweep.md", ["sweep/sweep.json", "sweep/sweep.md"]),
    "sweep --save-models": (lambda w: w.sweep(None, "--save-models"), "pruned_sparsity_0.5.onnx",
                            ["sweep/sweep.json", "sweep/pruned_sparsity_0.3.onnx", "sweep/pruned_sparsity_0.5.onnx"]),
    "demo -o": (lambda w: w.demo(), "demo.onnx", ["demo.onnx"]),
}


@pytest.mark.parametrize("output", list(OUTPUTS))
def test_full_disk_creating_the_temporary_file_names_the_output(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                                output: str) -> None:
    """ENOSPC from mkstemp for one output (the others are written): exit 1, the line names
    that output's path, says 'No space left on device' and what to do; every earlier version
    of every output keeps its bytes, no temporary file stays."""
    argv, name, existing = OUTPUTS[output]
    for rel in existing:
        (ws.dir / rel).parent.mkdir(exist_ok=True)
        (ws.dir / rel).write_bytes(OLD + rel.encode())
    _mkstemp_fails_for(monkeypatch, name)
    target = ws.dir / next((rel for rel in existing if rel.endswith(name)), name)
    ws.fail(argv(ws), (str(target), "No space left on device", "free some disk space"))


# -- every errno the command line knows, from the rename and from fsync ----------------------

@pytest.mark.parametrize("code, call, words", [
    (errno.EDQUOT, "fsync", ("Disk quota exceeded", "free some space")),
    (errno.EROFS, "replace", ("Read-only file system", "writable file system")),
    (errno.EACCES, "replace", ("Permission denied", "check the permissions")),
    (errno.EPERM, "replace", ("Operation not permitted", "check the permissions")),
    (errno.EFBIG, "fsync", ("File too large", "ulimit -f")),
    (errno.EIO, "fsync", ("Input/output error",)),
    (errno.EBUSY, "replace", ("Device or resource busy",)),  # -o bind-mounted into a container
], ids=["EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO", "EBUSY"])
def test_os_reason_and_hint_for_the_model_write(ws: Workspace, monkeypatch: pytest.MonkeyPatch, code: int,
                                                call: str, words: tuple[str, ...]) -> None:
    """The model write fails with ``code``: one line naming -o, the OS's words and (where
    the command line has one) the hint; the old -o and --report stay."""
    ws.out.write_bytes(OLD)
    (ws.dir / "r.json").write_bytes(OLD)
    exc = lambda: OSError(code, os.strerror(code))
    if call == "fsync":
        _fail_os_call(monkeypatch, os, "fsync", exc, lambda *a, **k: True)
    else:
        _fail_os_call(monkeypatch, os, "replace", exc, lambda src, dst, *a, **k: Path(dst) == ws.out)
    ws.fail(ws.prune("--report", str(ws.dir / "r.json")), (str(ws.out), *words))


# -- a real file size limit (ulimit -f), in a process of its own ---------------------------

def _script() -> list[str]:
    script = Path(sys.executable).with_name("onnx-eprune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnx_eprune"]


@pytest.mark.parametrize("command", ["prune", "calibrate"])
def test_real_file_size_limit_stops_the_write_cleanly(ws: Workspace, command: str) -> None:
    """With ``ulimit -f`` below the output's size the kernel refuses the write half-way
    (EFBIG; Python ignores SIGXFSZ): exit 1, one line naming the output, 'File too large'
    and the ulimit hint, the old output intact and no temporary file (no mocks here).
    prune runs from a statistics file: calibrating would hit the limit in its scratch files first."""
    if command == "prune":
        ws.succeed(ws.calibrate())
        old = ws.out
        argv = ["prune", str(ws.model), "-o", str(ws.out), "--stats", str(ws.dir / "s.npz"), "--sparsity", "0.4",
                "--method", "l1", "--device", "cpu", "-q"]
    else:
        old = ws.dir / "s.npz"
        argv = ws.calibrate()
    old.write_bytes(OLD)
    limit = 8192 if command == "prune" else 65536  # the model writes ~25 KB, the statistics ~750 KB

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = _state(ws.dir)
    env = dict(os.environ, TMPDIR=str(ws.tmp))
    done = subprocess.run([*_script(), *argv], check=False, capture_output=True, text=True, preexec_fn=limited, env=env,
                          timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith(PREFIX), done.stderr
    for word in (str(old), "File too large", "ulimit -f"):
        assert word in lines[0], lines[0]
    assert done.returncode == 1, done.stderr
    assert _state(ws.dir) == before
    # .ses: onnxruntime's native library writes it into TMPDIR when it loads
    assert [p.name for p in ws.tmp.iterdir() if p.name != ".ses"] == []


# -- folders that fail after the checks ----------------------------------------------------

def test_report_folder_that_cannot_be_created(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """--report-dir new/ passes the checks but its mkdir is refused when the run writes it:
    exit 1 naming the folder and the reason; the model written before it goes again and the
    old -o is back."""
    ws.out.write_bytes(OLD)
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "rep":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    ws.fail(ws.prune("--report-dir", str(ws.dir / "rep")), (str(ws.dir / "rep"), "Permission denied"))


def test_report_folder_removed_while_the_run_works(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """--report's folder is deleted while the model is pruned: exit 1 naming that folder; the old -o is back."""
    ws.out.write_bytes(OLD)
    (ws.dir / "reports").mkdir()
    _after_the_work(monkeypatch, pipeline, "prune", lambda: (ws.dir / "reports").rmdir())
    expected = _state(ws.dir)
    del expected["reports"]  # the one change: the folder someone else deleted
    ws.capsys.readouterr()
    status = main(ws.prune("--report", str(ws.dir / "reports" / "r.json")))
    err = ws.capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    assert str(ws.dir / "reports") in lines[0]
    assert status == 1, err
    assert _state(ws.dir) == expected


FOLDER_MID_RUN = {
    "prune -o, folder turned read-only": "prune-locked",
    "prune -o, folder deleted": "prune-deleted",
    "calibrate --stats-out, folder deleted": "calibrate-deleted",
    "demo -o, folder turned read-only": "demo-locked",
    "sweep --report-dir --save-models, folder turned read-only": "sweep-locked",
}


@pytest.mark.parametrize("case", list(FOLDER_MID_RUN.values()), ids=list(FOLDER_MID_RUN))
def test_output_folder_that_changes_during_the_run_is_a_runtime_error(ws: Workspace,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      case: str) -> None:
    """The output folder passes the checks before any work, then turns read-only (a
    remount, another user's chmod) or is deleted while the run works: a runtime error like a
    full disk (exit 1, not the usage error's 2 it once was, after minutes of work), in one
    line naming the folder (with the OS's reason where the write is refused)."""
    folder = ws.dir / "outs"
    folder.mkdir()
    command, change = case.split("-")
    out = folder / {"calibrate": "s.npz", "sweep": "sweep.json"}.get(command, "o.onnx")
    argv = {"prune": ws.prune(out=out), "calibrate": ws.calibrate(out), "demo": ws.demo(out),
            "sweep": ws.sweep(folder, "--save-models")}[command]
    if change == "locked":
        then = lambda: _lock(monkeypatch, folder)
    else:
        then = lambda: folder.rmdir()
    owner, name = {"prune": (pipeline, "prune"), "calibrate": (pipeline, "calibrate"),
                   "demo": (demo_module, "prune"), "sweep": (sweep_module, "sweep")}[command]
    _after_the_work(monkeypatch, owner, name, then)
    ws.capsys.readouterr()
    status = main(argv)
    err = ws.capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    assert str(folder) in lines[0]
    assert not out.exists() and not (folder.is_dir() and any(folder.iterdir()))
    assert status == 1, err


@pytest.mark.parametrize("command", ["sweep", "prune"])
def test_report_folder_deleted_during_the_run_is_made_again(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                            command: str) -> None:
    """A --report-dir is a folder the run makes when it is missing, so one deleted while
    the run works is made again, as if it had not been there: exit 0 and every file in it
    (sweep's models with --save-models too), whole."""
    folder = ws.dir / "rep"
    folder.mkdir()
    argv = ws.sweep(folder, "--save-models") if command == "sweep" else ws.prune("--report-dir", str(folder))
    owner = sweep_module if command == "sweep" else pipeline
    _after_the_work(monkeypatch, owner, command, folder.rmdir)
    assert main(argv) == 0, ws.capsys.readouterr().err
    names = sorted(p.name for p in folder.iterdir())
    expected = (["pruned_sparsity_0.3.onnx", "pruned_sparsity_0.5.onnx", "sweep.json", "sweep.md"] if command == "sweep"
                else ["report.json", "report.md"])
    assert set(expected) <= set(names) and not [n for n in names if n.endswith(".tmp")], names
    for name in expected:
        if name.endswith(".onnx"):
            onnx.checker.check_model(onnx.load(str(folder / name)), full_check=True)


# -- a stale plot that cannot be removed ---------------------------------------------------

@pytest.mark.parametrize("command", ["prune --report-dir", "sweep"])
def test_stale_plot_that_cannot_be_removed(ws: Workspace, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Without matplotlib a run removes an earlier run's plot; when that removal is refused:
    exit 1 naming the plot, and the report files it had already replaced are back."""
    monkeypatch.setattr(report_files, "_figure_class", lambda: None)
    folder = ws.dir / "rep"
    folder.mkdir()
    plot, texts = (("channels.png", ["report.json", "report.md"]) if command.startswith("prune")
                   else ("sweep.png", ["sweep.json", "sweep.md"]))
    for name in [plot, *texts]:
        (folder / name).write_bytes(OLD)
    ws.out.write_bytes(OLD)
    _fail_os_call(monkeypatch, os, "unlink", lambda: PermissionError(errno.EACCES, "Permission denied",
                                                                      str(folder / plot)),
                  lambda path, *a, **k: Path(path).name == plot)
    argv = ws.prune("--report-dir", str(folder)) if command.startswith("prune") else ws.sweep(folder)
    ws.fail(argv, (str(folder / plot), "Permission denied"))


# -- file systems without chmod or hard links ------------------------------------------------

@pytest.mark.parametrize("output", ["-o", "--stats-out"])
def test_chmod_refused_leaves_no_temporary_file(ws: Workspace, monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    """Where chmod of the new temporary file fails with EPERM (vfat, CIFS and some FUSE
    mounts do), the output is written anyway (its permissions are a nicety) or the run fails
    in one line, and either way no temporary file is left beside the output (it once stayed
    as ``.out.onnx.XXXX.tmp``)."""
    _fail_os_call(monkeypatch, os, "chmod", lambda: PermissionError(errno.EPERM, "Operation not permitted"),
                  lambda path, *a, **k: str(path).endswith(".tmp"))
    argv = ws.prune() if output == "-o" else ws.calibrate()
    ws.capsys.readouterr()
    before = set(_state(ws.dir))
    status = main(argv)
    err = ws.capsys.readouterr().err
    assert "Traceback" not in err, err
    left = {p.name for p in ws.dir.iterdir() if p.name.endswith(".tmp")}
    assert left == set(), f"temporary files left: {left}"
    if status != 0:
        assert status == 1 and err.startswith(PREFIX), err
        assert set(_state(ws.dir)) == before


def test_no_hard_links_and_a_full_disk_while_keeping_the_old_output(ws: Workspace,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system without hard links (or where protected_hardlinks refuses a link to
    another user's file) the old -o is copied aside before it is replaced; when that copy
    runs out of space, the run fails in one line naming -o and leaves the folder as it was
    (the half-written copy ``.out.onnx.XXXX.old`` once stayed beside the output)."""
    ws.out.write_bytes(OLD * 100)
    _fail_os_call(monkeypatch, os, "link", lambda: PermissionError(errno.EPERM, "Operation not permitted"),
                  lambda *a, **k: True)

    def copy2(src: str | os.PathLike, dst: str | os.PathLike, *args: object, **kwargs: object) -> None:
        with open(dst, "wb") as f:
            f.write(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
    monkeypatch.setattr(files_module.shutil, "copy2", copy2)
    ws.fail(ws.prune(), (str(ws.out), "No space left on device"))


def test_no_hard_links_old_outputs_are_restored_from_copies(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hard links the old -o and report.json are kept as copies; the report.md rename
    fails: both old files are back with their bytes, mtimes and permissions, no copy stays."""
    ws.out.write_bytes(OLD)
    ws.out.chmod(0o640)
    (ws.dir / "rep").mkdir()
    (ws.dir / "rep" / "report.json").write_bytes(OLD)
    _fail_os_call(monkeypatch, os, "link", lambda: OSError(errno.EMLINK, "Too many links"), lambda *a, **k: True)
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "report.md")
    before = _state(ws.dir)
    ws.capsys.readouterr()
    assert main(ws.prune("--report-dir", str(ws.dir / "rep"))) == 1
    after = _state(ws.dir)
    assert set(after) == set(before)
    for key, value in before.items():
        if isinstance(value[0], bytes):  # a copy is a new inode: bytes, mtime and mode must match
            assert after[key][:3] == value[:3], key
        else:
            assert after[key] == value, key


# -- large models: <out>.data ---------------------------------------------------------------

def test_large_output_full_disk_creating_the_data_files_temporary(ws: Workspace,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A model above the protobuf limit is written as -o plus ``<out>.data``; when the disk
    is full as the data file's temporary file is created: exit 1 naming the file, the old -o
    and its data file intact, and no temporary file left (the model's own, created just
    before, once stayed)."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)  # every model takes the >2 GB path
    ws.out.write_bytes(OLD)
    (ws.dir / "out.onnx.data").write_bytes(OLD)
    _mkstemp_fails_for(monkeypatch, "out.onnx.data")
    ws.fail(ws.prune(), ("out.onnx", "No space left on device"))


def test_large_output_full_disk_in_the_data_file_keeps_old_files(ws: Workspace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The >2 GB path's data file hits ENOSPC at fsync: one line naming -o; old -o and old
    ``<out>.data`` keep their bytes; no temporary file."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
    ws.out.write_bytes(OLD)
    (ws.dir / "out.onnx.data").write_bytes(OLD)
    _fail_os_call(monkeypatch, os, "fsync", _disk_full, lambda *a, **k: True)
    ws.fail(ws.prune(), (str(ws.out), "No space left on device", "free some disk space"))


# -- outputs that exist before the run as links or with their own permissions -----------------

def test_symlinked_old_output_survives_a_failed_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o is a symlink to the user's file elsewhere; the report fails after the model was
    written: the link is a link again, to the same target, whose bytes are unchanged."""
    (ws.dir / "keep").mkdir()
    (ws.dir / "keep" / "model_v1.onnx").write_bytes(OLD)
    ws.out.symlink_to(ws.dir / "keep" / "model_v1.onnx")
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "r.json")
    ws.fail(ws.prune("--report", str(ws.dir / "r.json")), ("r.json", "No space left on device"))


@pytest.mark.parametrize("name", ["out.onnx", "out.onnx.data"])
def test_dangling_symlink_at_an_output_survives_a_failed_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                            name: str) -> None:
    """A symlink whose target does not exist yet (``out.onnx -> ../models/v2.onnx``,
    prepared by a deploy script) stands where the run writes (-o, or ``<out>.data``, which a
    small model never writes); the run fails on its report: every entry of the folder is as
    it was, the link included (it was once deleted as if the run had created it)."""
    (ws.dir / name).symlink_to(ws.dir / "nowhere" / "v2.onnx")
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "r.json")
    ws.fail(ws.prune("--report", str(ws.dir / "r.json")), ("r.json", "No space left on device"))


def test_hard_linked_old_output_and_its_other_name(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o is a hard link of the user's backup.onnx: a failed run leaves both names on the old
    bytes (one inode); a run that succeeds replaces -o only, never writing through the link."""
    backup = ws.dir / "backup.onnx"
    backup.write_bytes(OLD)
    os.link(backup, ws.out)
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "r.json")
    ws.fail(ws.prune("--report", str(ws.dir / "r.json")), ("r.json",))
    assert os.path.samefile(backup, ws.out)
    monkeypatch.undo()
    ws.succeed(ws.prune())
    assert backup.read_bytes() == OLD and not os.path.samefile(backup, ws.out)
    onnx.checker.check_model(onnx.load(str(ws.out)), full_check=True)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_old_output_keeps_its_permissions_after_a_failed_run(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                             mode: int) -> None:
    """An old -o with its own permission bits (private, group-readable, read-only): after the
    report fails, it is back with those bits (and bytes, mtime, inode)."""
    ws.out.write_bytes(OLD)
    ws.out.chmod(mode)
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "r.json")
    ws.fail(ws.prune("--report", str(ws.dir / "r.json")), ("r.json",))


@pytest.mark.parametrize("option", ["-o", "--stats-out"])
def test_replaced_output_keeps_its_permissions(ws: Workspace, option: str) -> None:
    """An existing output the user made private (0600: a proprietary model, or statistics of
    private data) keeps its permission bits when a run writes over it, as a plain
    ``open(path, 'wb')`` would (it once came out 0666 & ~umask, readable by every user)."""
    out = ws.out if option == "-o" else ws.dir / "s.npz"
    out.write_bytes(OLD)
    out.chmod(0o600)
    ws.succeed(ws.prune() if option == "-o" else ws.calibrate())
    assert out.read_bytes() != OLD
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_output_gets_the_permissions_of_a_plain_open(ws: Workspace, umask: int) -> None:
    """A new -o and --report get 0666 & ~umask, as ``open()`` would give them (not the
    owner-only 0600 of the temporary file they were written as)."""
    previous = os.umask(umask)
    try:
        ws.succeed(ws.prune("--report", str(ws.dir / "r.json")))
    finally:
        os.umask(previous)
    for path in (ws.out, ws.dir / "r.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# -- what the user sees when a write fails, without -q -----------------------------------------

def test_failed_write_without_quiet_prints_no_summary(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Without -q, a failed --report write: stdout claims nothing was written (no summary, no
    'wrote'), stderr ends with the one error line and holds no traceback."""
    ws.out.write_bytes(OLD)
    _fail_os_call(monkeypatch, os, "replace", _disk_full, lambda src, dst, *a, **k: Path(dst).name == "r.json")
    argv = [a for a in ws.prune("--report", str(ws.dir / "r.json")) if a != "-q"]
    capsys.readouterr()
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "wrote" not in out and str(ws.out) not in out, out
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(PREFIX) and "r.json" in last and "No space left" in last, err
    assert sum(line.startswith(PREFIX) for line in err.splitlines()) == 1, err
    assert ws.out.read_bytes() == OLD


def test_debug_traceback_with_the_same_status_and_cleanup(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--debug on a full disk at the model's fsync: a traceback instead of the line, the
    same exit status 1, and the same clean-up (old -o intact, no temporary file)."""
    ws.out.write_bytes(OLD)
    _fail_os_call(monkeypatch, os, "fsync", _disk_full, lambda *a, **k: True)
    before = _state(ws.dir)
    capsys.readouterr()
    assert main(ws.prune("--debug")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "No space left" in err, err
    assert _state(ws.dir) == before


# -- standard output on a full disk (``> file`` on a full file system) ---------------------------

class _FullStream:
    """A text stream whose every write fails as a file on a full disk does."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "no descriptor")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("buffered", [False, True], ids=["PYTHONUNBUFFERED", "buffered"])
def test_json_to_a_full_standard_output_names_it(ws: Workspace, buffered: bool) -> None:
    """``inspect --json > report.json`` on a full file system (here /dev/full, a real ENOSPC
    from the kernel) fails with exit 1 and one line that says what could not be written:
    standard output (the line once named no file at all). Buffered, the write fails when
    the command ends, not at exit (where Python would print "Exception ignored", exit 120)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        done = subprocess.run([*_script(), "inspect", str(ws.model), "--json"], check=False, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith(PREFIX), done.stderr
    assert "No space left on device" in lines[0]
    assert "standard output" in lines[0] or "stdout" in lines[0], lines[0]


@pytest.mark.parametrize("command", ["prune", "demo", "calibrate", "sweep"])
def test_summary_to_a_full_standard_output(ws: Workspace, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """prune, demo, calibrate or sweep without -q, stdout redirected to a file on a full
    disk, so the summary cannot be printed after the outputs were committed: exit 1 in one
    line that says they were written and only the summary to standard output failed; the
    new model (statistics, sweep files) stays, whole and valid (as with a reader of stdout
    that leaves early, ``| head``, where the run exits 0: a complete output is no
    half-written file, and undoing it would throw away the run's work for the sake of its
    summary); no temporary file is left."""
    out = {"prune": ws.out, "demo": ws.dir / "demo.onnx", "calibrate": ws.dir / "s.npz",
           "sweep": ws.dir / "sweep" / "sweep.json"}[command]
    if command != "sweep":  # the sweep makes its folder
        out.write_bytes(OLD)
    argv = [a for a in getattr(ws, command)() if a != "-q"]
    monkeypatch.setattr(sys, "stdout", _FullStream())
    ws.capsys.readouterr()
    status = main(argv)
    err = ws.capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(PREFIX)]
    assert status == 1 and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for words in (f"wrote {out}", "standard output", "No space left on device"):
        assert words in errors[0], errors[0]
    assert out.read_bytes() != OLD
    if out.suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert not [p.name for p in ws.dir.rglob("*") if p.name.endswith((".tmp", ".old"))]
