"""``onnx-eprune demo`` and the end-to-end ``onnx-eprune prune`` as a deployment engineer uses them.

What this file attacks (tests/test_cli.py, test_failures_midrun.py, test_paths_and_env.py,
test_report_consistency.py and test_e2e.py already cover the refusals of bad options, failures
injected inside the pipeline, unusual path characters and the demo's measured accuracy):

- the demo's promises against the README and the model card: 55% sparsity within a point,
  the README's benchmark row for LeNet-5 reproduced by ``demo --method ...``, the shipped
  sample being what the card says, the provenance the demo's model carries, the default
  ``-o`` of ``--help``, byte-identical reruns, a non-ASCII output path;
- the demo when its surroundings are broken: the shipped model or sample missing or damaged,
  an installed Fashion-MNIST that is damaged, ``--device cuda`` without CUDA (with -q, -v and
  --debug), Ctrl-C while it reads the test split, a closed standard output, options it does
  not have;
- ``prune`` end to end on the shipped LeNet-5: summary table, report.json, report.md and the
  model's metadata against weights counted on the written file; a model pruned twice by the
  command line; the same command twice; ``--samples`` beyond the data; ``--device cuda``
  without CUDA; outputs spelled as folders (``out/``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import conv_bn_relu_pool_flatten_gemm, conv_gemm_costs, io_signature, random_input
from onnx_eprune import datasets
from onnx_eprune import demo as demo_module
from onnx_eprune.calibrate.session import choose_providers
from onnx_eprune.cli import main
from onnx_eprune.graph.model_io import PROVENANCE_KEY

README = Path(__file__).resolve().parents[1] / "README.md"
CARD = Path(__file__).resolve().parents[1] / "models" / "lenet5_fmnist.md"
HAS_DATASET = datasets.fashion_mnist_available()
needs_dataset = pytest.mark.skipif(not HAS_DATASET, reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")
HAS_CUDA = choose_providers("auto")[0] == "CUDAExecutionProvider"
no_cuda_only = pytest.mark.skipif(HAS_CUDA, reason="CUDA works here: --device cuda is not refused")
PREFIX = "onnx-eprune: error: "
OLD = b"an earlier result that a failed run must leave alone"


# -- helpers -------------------------------------------------------------------------------------

def one_error(capsys: pytest.CaptureFixture, argv: list[str], code: int | None = None) -> str:
    """Run a failing command: its exit status (``code`` if given, else any failure), one error
    line on stderr and no traceback; returns that line."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0, err
    if code is not None:
        assert status == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(PREFIX), err
    assert [line for line in lines if "error" in line] == lines[-1:], err
    return lines[-1]


def provenance(path: Path) -> list[dict]:
    values = [p.value for p in onnx.load(str(path)).metadata_props if p.key == PROVENANCE_KEY]
    assert len(values) == 1
    return json.loads(values[0])


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def out_width(model: onnx.ModelProto, name: str) -> int:
    """Output channels of the Conv or Gemm called ``name``, from its weight's shape."""
    node = next(n for n in model.graph.node if n.name == name)
    w = weights(model)[node.input[1]]
    if node.op_type == "Conv":
        return w.shape[0]
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return w.shape[0] if trans_b else w.shape[1]


def logits(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def readme_lenet_rows() -> dict[str, dict[str, float]]:
    """The README's benchmark rows for LeNet-5: sparsity -> {method: accuracy drop, 'macs': MACs removed}."""
    lines = README.read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| model (reference accuracy) |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    keys = {"entropic": "entropic", "l1 + re-fit": "l1", "ThiNet": "thinet", "LASSO": "lasso",
            "random + re-fit": "random", "MACs removed (entropic)": "macs"}
    rows = {}
    for line in lines:
        if line.startswith("| LeNet-5"):
            cells = [c.strip().strip("*").rstrip("%") for c in line.strip("|").split("|")]
            row = dict(zip(columns, cells))
            rows[row["parameters removed"]] = {keys[c]: float(row[c]) for c in keys}
    return rows


def seconds_free(markdown: str) -> str:
    """report.md without its "Seconds per phase" section (timings differ from run to run)."""
    return re.sub(r"## Seconds per phase\n.*?(?=\n## )", "", markdown, flags=re.DOTALL)


# -- one demo run shared by several tests ----------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``onnx-eprune demo -o '<folder with spaces and non-ASCII>/lé 🚀 net.onnx' --device cpu``."""
    folder = tmp_path_factory.mktemp("demo") / "déploiement 中 x"
    folder.mkdir()
    out = folder / "lé 🚀 net.onnx"
    log = logging.getLogger("onnx_eprune")
    saved = (list(log.handlers), log.level, log.propagate)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(["demo", "-o", str(out), "--device", "cpu"])
    finally:
        log.handlers[:], log.level, log.propagate = saved
    return {"status": status, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "folder": folder}


def test_demo_writes_a_valid_model_with_the_shipped_signature_at_a_non_ascii_path(demo_run: dict) -> None:
    """The pruned model lands exactly at the path given (spaces, accents, CJK, emoji), alone in its
    folder, passes the full checker, keeps the shipped model's inputs and outputs (dynamic batch
    included), runs in onnxruntime, and the last line printed names it."""
    assert demo_run["status"] == 0, demo_run["stderr"]
    out = demo_run["out"]
    assert sorted(p.name for p in demo_run["folder"].iterdir()) == [out.name]
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    shipped = onnx.load(str(demo_module.shipped(demo_module.MODEL_FILE)))
    assert io_signature(pruned) == io_signature(shipped)
    x = datasets.preprocess(np.load(str(demo_module.shipped(demo_module.SAMPLE_FILE)))["test_x"][:5])
    assert logits(str(out), x).shape == (5, 10)
    assert demo_run["stdout"].rstrip().splitlines()[-1].strip() == f"wrote {out}"
    assert all(line.startswith("onnx-eprune: ") for line in demo_run["stderr"].splitlines() if line.strip())
    assert "Traceback" not in demo_run["stderr"]


def test_demo_reaches_the_readme_sparsity_and_says_so_in_the_model(demo_run: dict) -> None:
    """README: the demo prunes to 55% parameter sparsity, landing within 1 point of it; the model
    records the run (entropic, sparsity 0.55, 1,024 calibration images, params and MACs as
    counted on the files), and the printed params line and table say the same."""
    shipped = onnx.load(str(demo_module.shipped(demo_module.MODEL_FILE)))
    pruned = onnx.load(str(demo_run["out"]))
    (pb, mb), (pa, ma) = conv_gemm_costs(shipped), conv_gemm_costs(pruned)
    assert 0.55 <= 1 - pa / pb <= 0.56
    [run] = provenance(demo_run["out"])
    assert (run["method"], run["mode"]) == ("entropic", "sequential")
    assert run["target"] == {"kind": "sparsity", "value": 0.55}
    assert run["samples"] == 1024 and run["params"] == [pb, pa] and run["macs"] == [mb, ma]
    printed = demo_run["stdout"]
    assert f"params    {pb:>7,} -> {pa:>7,}   (-{100 * (1 - pa / pb):.1f}%)" in printed
    assert re.search(rf"^params\s+{pb:,} ->\s+{pa:,}\s", printed, re.MULTILINE)
    assert re.search(rf"^MACs\s+{mb:,} ->\s+{ma:,}\s", printed, re.MULTILINE)
    assert "[CPUExecutionProvider]" in printed  # README: the provider used is printed


@needs_dataset
def test_demo_accuracy_before_is_the_model_cards(demo_run: dict) -> None:
    """The model card and README give the shipped LeNet-5 90.79% on the full test split; the demo's
    "before" figure is that, and it says it measured all 10,000 images."""
    card = re.search(r"full 10k test split.*?\*\*([\d.]+)%\*\*", CARD.read_text(encoding="utf-8"), re.DOTALL).group(1)
    assert f"LeNet-5 ({card}%)" in README.read_text(encoding="utf-8")
    line = next(ln for ln in demo_run["stdout"].splitlines() if ln.strip().startswith("accuracy"))
    assert re.match(rf"\s*accuracy\s+{re.escape(card)}% ->", line), line
    assert "full Fashion-MNIST test split (10,000 images)" in line


@needs_dataset
@pytest.mark.parametrize("method", ["entropic", "l1", "thinet", "lasso", "random"])
def test_demo_reproduces_the_readme_benchmark_row(demo_run: dict, tmp_path: Path, method: str) -> None:
    """README's benchmark table, LeNet-5 at 55%: the accuracy drop of each method (no fine-tuning,
    1024 calibration images from the train split, the default settings: what the demo runs) and
    the MACs entropic removes. ``demo --method M`` gives those numbers (within 2 test images)."""
    row = readme_lenet_rows()["55"]
    if method == "entropic":
        line = next(ln for ln in demo_run["stdout"].splitlines() if ln.strip().startswith("accuracy"))
        drop = -float(re.search(r"\(([-+][\d.]+) points", line).group(1))
        macs = re.search(r"^MACs .*\(-([\d.]+)%\)", demo_run["stdout"], re.MULTILINE).group(1)
        assert round(float(macs)) == row["macs"]
    else:
        numbers = demo_module.run_demo(str(tmp_path / "m.onnx"), method=method, device="cpu", quiet=True)
        drop = 100 * (numbers["accuracy_before"] - numbers["accuracy_after"])
    assert drop == pytest.approx(row[method], abs=0.021)


def test_demo_run_twice_gives_the_same_bytes_and_defaults_to_the_documented_path(
        demo_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--help``: -o defaults to ./lenet5_fmnist.pruned.onnx. A second run (quiet, default path)
    writes there, prints nothing, and gives the same bytes as the first run."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--device", "cpu", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5_fmnist.pruned.onnx"]
    assert (tmp_path / "lenet5_fmnist.pruned.onnx").read_bytes() == demo_run["out"].read_bytes()


def test_shipped_sample_is_what_the_model_card_says() -> None:
    """The card: ``test_x``/``test_y`` are the first 2000 test images (README: "the 2,000 test images
    that ship in models/"), on which the model scores 91.70%; ``calib`` the 1024 train images drawn
    by ``default_rng(1234).choice(60000, 1024, replace=False)``, sorted; mean/std the preprocessing's."""
    sample = np.load(str(demo_module.shipped(demo_module.SAMPLE_FILE)))
    assert sample["test_x"].shape == (2000, 1, 28, 28) and sample["test_y"].shape == (2000,)
    assert "on the 2,000 test images that ship in `models/`" in " ".join(README.read_text(encoding="utf-8").split())
    assert (float(sample["mean"]), float(sample["std"])) == pytest.approx((datasets.MEAN, datasets.STD), abs=1e-6)
    model = str(demo_module.shipped(demo_module.MODEL_FILE))
    acc = np.mean(logits(model, datasets.preprocess(sample["test_x"])).argmax(1) == sample["test_y"])
    card = re.search(r"first 2000 test images.*?\n\s*([\d.]+)%", CARD.read_text(encoding="utf-8"), re.DOTALL).group(1)
    assert f"{100 * acc:.2f}" == card
    if HAS_DATASET:
        test_x, test_y = datasets.load_fashion_mnist("test")
        assert np.array_equal(sample["test_x"], test_x[:2000]) and np.array_equal(sample["test_y"], test_y[:2000])
        train_x, _ = datasets.load_fashion_mnist("train")
        idx = np.sort(np.random.default_rng(1234).choice(60000, 1024, replace=False))
        assert np.array_equal(sample["calib"], train_x[idx])


# -- the demo when its surroundings are broken ---------------------------------------------------

def _copy_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copies of the shipped files stand in for them (the installed ones are never touched)."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in (demo_module.MODEL_FILE, demo_module.SAMPLE_FILE):
        (folder / name).write_bytes(demo_module.shipped(name).read_bytes())
    monkeypatch.setattr(demo_module, "shipped", lambda name: folder / name)
    return folder


@pytest.mark.parametrize("name, damage", [
    ("lenet5_fmnist.onnx", "missing"),
    ("lenet5_fmnist.onnx", "garbage"),
    ("lenet5_fmnist.onnx", "truncated"),
    ("fashion_mnist_sample.npz", "missing"),
    pytest.param("fashion_mnist_sample.npz", "garbage"),
    pytest.param("fashion_mnist_sample.npz", "truncated"),
])
def test_demo_with_a_missing_or_damaged_shipped_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch, name: str, damage: str) -> None:
    """A broken installation (the shipped model or sample missing, garbage or cut short) is one
    ``onnx-eprune: error:`` line that names the file (never an "internal error"), and no output.

    Was: a damaged sample .npz gave np.load's BadZipFile as an internal error, without the
    file's name."""
    folder = _copy_shipped(tmp_path, monkeypatch)
    path = folder / name
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not what it should be" * 3)
    else:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
    out = tmp_path / "out.onnx"
    line = one_error(capsys, ["demo", "-o", str(out), "--device", "cpu", "-q"])
    assert "internal error" not in line and name in line
    assert not out.exists()


def _fake_fashion_mnist(root: Path, images: int = 120, labels: int = 120) -> None:
    """The four idx files Debian's package installs, with ``images`` / ``labels`` test items."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for prefix, n_img, n_lab in (("train", 60, 60), ("t10k", images, labels)):
        pixels = rng.integers(0, 256, (n_img, 28, 28), dtype=np.uint8)
        head = np.array([2051, n_img, 28, 28], ">u4").tobytes()
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + pixels.tobytes()))
        head = np.array([2049, n_lab], ">u4").tobytes()
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(head + rng.integers(0, 10, n_lab, dtype=np.uint8).tobytes()))


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "empty", "fewer images than labels", "partial image"])
def test_demo_with_a_damaged_fashion_mnist(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """An installed Fashion-MNIST whose test images file is damaged: the demo either falls back
    to the shipped test slice (and says so on stderr, naming the file) or fails with one
    ``onnx-eprune: error:`` line that names the damaged file; never an internal error, no output
    left.

    Was: internal errors (EOFError, ValueError) for a truncated, empty or cut file, a gzip error
    without the file's name, and for fewer images than labels a usage error only after the whole
    pruning."""
    root = tmp_path / "fashion-mnist"
    _fake_fashion_mnist(root, *((100, 120) if damage == "fewer images than labels" else (120, 120)))
    images = root / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    elif damage == "not gzip":
        images.write_bytes(b"hello, not a gzip file")
    elif damage == "empty":
        images.write_bytes(gzip.compress(b""))
    elif damage == "partial image":
        images.write_bytes(gzip.compress(raw[:16 + 784 * 50 + 5]))
    monkeypatch.setattr(demo_module, "fashion_mnist_available", functools.partial(datasets.fashion_mnist_available,
                                                                                  root))
    monkeypatch.setattr(demo_module, "load_fashion_mnist", functools.partial(datasets.load_fashion_mnist, root=root))
    out = tmp_path / "out.onnx"
    status = main(["demo", "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    if status == 0:
        assert "shipped test slice" in captured.out and images.name in captured.err
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    else:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert status == 1 and lines[-1].startswith(PREFIX) and images.name in lines[-1], captured.err
        assert not out.exists()


def test_demo_with_a_sound_fake_dataset_measures_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the damaged cases: well-formed idx files are read and measured (the
    printed "after" accuracy is the written model's on those 120 images)."""
    root = tmp_path / "fashion-mnist"
    _fake_fashion_mnist(root)
    monkeypatch.setattr(demo_module, "fashion_mnist_available", functools.partial(datasets.fashion_mnist_available,
                                                                                  root))
    monkeypatch.setattr(demo_module, "load_fashion_mnist", functools.partial(datasets.load_fashion_mnist, root=root))
    out = tmp_path / "out.onnx"
    assert main(["demo", "-o", str(out), "--device", "cpu", "--method", "l1"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("accuracy"))
    x, y = datasets.load_fashion_mnist("test", root)
    measured = np.mean(logits(str(out), datasets.preprocess(x)).argmax(1) == y)
    assert float(line.split("->")[1].split("%")[0]) == pytest.approx(100 * measured, abs=0.005)


def test_demo_interrupted_while_reading_the_test_split(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the demo reads Fashion-MNIST: exit 130, one line, the earlier output keeps
    its bytes and nothing else appears beside it."""
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(demo_module, "fashion_mnist_available", lambda *a: True)
    monkeypatch.setattr(demo_module, "load_fashion_mnist", interrupted)
    out = tmp_path / "demo.onnx"
    out.write_bytes(OLD)
    line = one_error(capsys, ["demo", "-o", str(out), "--device", "cpu"], 130)
    assert "interrupted" in line
    assert out.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["demo.onnx"]


def test_demo_refuses_a_bad_sparsity_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """README: usage errors are found before any work. ``demo --sparsity 1.5`` is refused (exit
    2, naming the sparsity) before the shipped model or any data is read.

    Was: the model, the calibration sample and the 10,000 test images were loaded before
    pruning's config check refused the target."""
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo started reading before it checked its options")
    monkeypatch.setattr(demo_module, "load_model", work)
    monkeypatch.setattr(demo_module, "load_fashion_mnist", work)
    line = one_error(capsys, ["demo", "-o", str(tmp_path / "o.onnx"), "--sparsity", "1.5", "--device", "cpu"], 2)
    assert "sparsity" in line


def test_demo_has_no_report_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--help and the README list no --report-dir for demo: it is a one-line usage error naming
    the option, and the folder is not created."""
    line = one_error(capsys, ["demo", "-o", str(tmp_path / "o.onnx"), "--report-dir", str(tmp_path / "rep")], 2)
    assert "--report-dir" in line
    assert not (tmp_path / "rep").exists() and not (tmp_path / "o.onnx").exists()


@no_cuda_only
@pytest.mark.parametrize("verbosity", [[], ["-q"], ["-v"], ["--debug"]])
def test_demo_device_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture, verbosity: list[str]) -> None:
    """README: --device auto takes CUDA when it works, else the CPU; cuda asks for CUDA. Without it
    the demo stops (exit 1) with one line that names --device cuda and what it needs (also with
    -q and -v), a traceback only with --debug, and the earlier -o keeps its bytes."""
    out = tmp_path / "demo.onnx"
    out.write_bytes(OLD)
    argv = ["demo", "-o", str(out), "--device", "cuda", *verbosity]
    if verbosity == ["--debug"]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and "--device cuda" in err.splitlines()[-1]
    else:
        line = one_error(capsys, argv, 1)
        assert "--device cuda" in line and "onnxruntime-gpu" in line
    assert out.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["demo.onnx"]


class _ClosedPipe(io.TextIOBase):
    """A standard output whose reader has gone (``| head`` after its lines, unbuffered)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_prune_into_a_closed_pipe_keeps_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   calib: np.ndarray) -> None:
    """The control for the demo case: prune's summary goes out after its files are in place."""
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", calib)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib",
                 str(tmp_path / "c.npy"), "--sparsity", "0.4", "--method", "l1", "--device", "cpu"]) == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "p.onnx")), full_check=True)


def test_demo_into_a_closed_pipe_keeps_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: exit 0 "also when the reader of its standard output leaves early, as | head does:
    the run itself is done". The run's model must then be there.

    Was: exit 0, but the model was gone (also from a shell: ``PYTHONUNBUFFERED=1 onnx-eprune
    demo -o x.onnx | true``)."""
    out = tmp_path / "demo.onnx"
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["demo", "-o", str(out), "--device", "cpu", "--method", "l1"]) == 0
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


# -- prune end to end on the shipped LeNet-5 -------------------------------------------------------

@pytest.fixture
def lenet(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped LeNet-5 and 256 of its preprocessed calibration images, on disk."""
    model = tmp_path / "lenet5.onnx"
    model.write_bytes(demo_module.shipped(demo_module.MODEL_FILE).read_bytes())
    sample = np.load(str(demo_module.shipped(demo_module.SAMPLE_FILE)))
    np.save(tmp_path / "calib.npy", datasets.preprocess(sample["calib"][:256]))
    return model, tmp_path / "calib.npy"


def test_prune_lenet_summary_reports_and_metadata_hold_the_counted_figures(
        lenet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prune --report and --report-dir on the shipped LeNet-5: the printed totals, report.json (twice,
    identical), report.md and the model's provenance give the params and MACs counted on the
    files; every group's channels after are the written layer's width and its kept indices; the
    input file keeps its bytes."""
    model, calib = lenet
    before = model.read_bytes()
    out, rep, rdir = tmp_path / "pruned.onnx", tmp_path / "r.json", tmp_path / "rep"
    assert main(["prune", str(model), "-o", str(out), "--calib", str(calib), "--sparsity", "0.5", "--device", "cpu",
                 "--report", str(rep), "--report-dir", str(rdir)]) == 0
    printed = capsys.readouterr().out
    assert model.read_bytes() == before
    original, pruned = onnx.load(str(model)), onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    (pb, mb), (pa, ma) = conv_gemm_costs(original), conv_gemm_costs(pruned)
    assert (pb, mb) == (61706, 416520)  # the model card's parameter count; MACs by hand for its layers
    report = json.loads(rep.read_text())
    assert json.loads((rdir / "report.json").read_text()) == report
    assert (report["params"]["before"], report["params"]["after"]) == (pb, pa)
    assert (report["macs"]["before"], report["macs"]["after"]) == (mb, ma)
    assert report["params"]["removed_fraction"] == pytest.approx(1 - pa / pb, abs=1e-6) and 1 - pa / pb >= 0.5
    assert re.search(rf"^params\s+{pb:,} ->\s+{pa:,}\s+\(-{100 * (1 - pa / pb):.1f}%\)", printed, re.MULTILINE)
    assert re.search(rf"^MACs\s+{mb:,} ->\s+{ma:,}\s+\(-{100 * (1 - ma / mb):.1f}%\)", printed, re.MULTILINE)
    md = (rdir / "report.md").read_text()
    assert f"| parameters | {pb:,} | {pa:,} |" in md and f"| MACs | {mb:,} | {ma:,} |" in md
    assert "- calibration samples: 256" in md and "- target: sparsity 0.5" in md
    [run] = provenance(out)
    assert run["params"] == [pb, pa] and run["macs"] == [mb, ma] and run["samples"] == report["samples"] == 256
    assert (run["method"], run["mode"], run["target"], run["seed"], run["refit_ridge"]) == \
        (report["method"], report["mode"], report["target"], report["seed"], report["refit_ridge"])
    for group in report["groups"]:
        for producer in group["producers"]:
            assert out_width(pruned, producer) == group["channels_after"], producer
            assert out_width(original, producer) == group["channels_before"], producer
        if "kept_channels" in group:
            kept = group["kept_channels"]
            assert len(kept) == group["channels_after"] and kept == sorted(set(kept))
            assert all(0 <= k < group["channels_before"] for k in kept)
    assert printed.rstrip().splitlines()[-1].startswith(f"wrote {out}, {rep}, {rdir / 'report.json'}")


def test_prune_its_own_output_records_both_runs(lenet: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """prune, then prune the result by the command line: its metadata holds two runs, the second
    starting where the first ended, each as its report.json says; inspect prints both."""
    model, calib = lenet
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    assert main(["prune", str(model), "-o", str(once), "--calib", str(calib), "--sparsity", "0.3", "--device", "cpu",
                 "--method", "l1", "-q", "--report", str(tmp_path / "r1.json")]) == 0
    assert main(["prune", str(once), "-o", str(twice), "--calib", str(calib), "--flops-reduction", "0.2",
                 "--device", "cpu", "--mode", "oneshot", "-q", "--report", str(tmp_path / "r2.json")]) == 0
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in (1, 2)]
    runs = provenance(twice)
    assert len(runs) == 2 and runs[0] == provenance(once)[0]
    for run, rep in zip(runs, reports):
        assert run["params"] == [rep["params"]["before"], rep["params"]["after"]]
        assert run["macs"] == [rep["macs"]["before"], rep["macs"]["after"]]
        assert (run["method"], run["mode"], run["target"]) == (rep["method"], rep["mode"], rep["target"])
    assert runs[1]["params"][0] == runs[0]["params"][1] and runs[1]["macs"][0] == runs[0]["macs"][1]
    assert (runs[0]["method"], runs[1]["mode"]) == ("l1", "oneshot")
    assert runs[1]["params"][1] == conv_gemm_costs(onnx.load(str(twice)))[0]
    capsys.readouterr()
    assert main(["inspect", str(twice)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pruned before: ")]
    assert len(lines) == 2
    for line, run in zip(lines, runs):
        assert f"params {run['params'][0]:,} -> {run['params'][1]:,}" in line


# -- prune on a small model --------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path: Path, calib: np.ndarray) -> tuple[Path, Path]:
    model = tmp_path / "model.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "calib.npy", calib)
    return model, tmp_path / "calib.npy"


def test_same_command_twice_rewrites_the_same_bytes(small: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The same prune command run twice over its own earlier outputs: the model, report.json (but
    for timings), report.md (but for its timing table) and any plots come out byte-identical, and
    the folder holds no extra file afterwards."""
    model, calib = small
    out, rep, rdir = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "rep"
    argv = ["prune", str(model), "-o", str(out), "--calib", str(calib), "--sparsity", "0.4", "--device", "cpu",
            "-q", "--report", str(rep), "--report-dir", str(rdir)]
    snapshots = []
    for _ in range(2):
        assert main(argv) == 0
        report = json.loads(rep.read_text())
        report.pop("seconds")
        plots = {p.name: p.read_bytes() for p in sorted(rdir.glob("*.png"))}
        snapshots.append((out.read_bytes(), report, seconds_free((rdir / "report.md").read_text()), plots))
    assert snapshots[0][0] == snapshots[1][0]
    assert snapshots[0][1] == snapshots[1][1]
    assert snapshots[0][2] == snapshots[1][2] and "Seconds per phase" not in snapshots[0][2]
    assert snapshots[0][3] == snapshots[1][3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy", "model.onnx", "out.onnx", "r.json", "rep"]


def test_samples_beyond_the_data_are_reported_as_used(small: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """--samples 1000 with 64 samples: the run warns once and every record says 64 (report.json,
    report.md, the summary's fidelity line, the model's provenance), never 1000."""
    model, calib = small
    out, rdir = tmp_path / "out.onnx", tmp_path / "rep"
    assert main(["prune", str(model), "-o", str(out), "--calib", str(calib), "--sparsity", "0.4", "--device", "cpu",
                 "--samples", "1000", "--report-dir", str(rdir)]) == 0
    captured = capsys.readouterr()
    assert len([ln for ln in captured.err.splitlines() if "--samples 1000" in ln]) == 1
    assert json.loads((rdir / "report.json").read_text())["samples"] == 64
    assert "- calibration samples: 64" in (rdir / "report.md").read_text()
    assert re.search(r"^output y: .* on 64 calibration samples", captured.out, re.MULTILINE)
    assert provenance(out)[0]["samples"] == 64
    assert "1000" not in (rdir / "report.md").read_text()


@no_cuda_only
@pytest.mark.parametrize("verbosity", [[], ["-q"], ["-v"]])
def test_prune_device_cuda_without_cuda(small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                        verbosity: list[str]) -> None:
    """--device cuda where onnxruntime cannot use CUDA: exit 1 with one line that names the option
    and what it needs (-q does not silence it, -v adds no traceback); existing outputs keep their
    bytes, a new --report-dir is not left behind."""
    model, calib = small
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    out.write_bytes(OLD)
    rep.write_bytes(OLD)
    line = one_error(capsys, ["prune", str(model), "-o", str(out), "--calib", str(calib), "--sparsity", "0.4",
                              "--device", "cuda", "--report", str(rep), "--report-dir", str(tmp_path / "rep"),
                              *verbosity], 1)
    assert "--device cuda" in line and "onnxruntime-gpu" in line
    assert out.read_bytes() == OLD and rep.read_bytes() == OLD and not (tmp_path / "rep").exists()


def test_prune_device_auto_falls_back_and_says_which(small: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """README: auto takes CUDA when it really works, else the CPU; the provider used is printed
    (summary and an info line) and reported."""
    model, calib = small
    assert main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--calib", str(calib), "--keep-ratio", "0.5",
                 "--method", "l1", "--report", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    provider = choose_providers("auto")[0]
    assert json.loads((tmp_path / "r.json").read_text())["provider"] == provider
    assert f"[{provider}]" in captured.out and provider in captured.err


@pytest.mark.parametrize("option", ["-o", "--report"])
def test_output_spelled_as_a_folder_is_refused(small: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture, option: str) -> None:
    """``-o results/`` (or ``--report results/``) with no such folder: the trailing slash says
    the user means a folder, which open() itself refuses (EISDIR). Expected: a usage error (exit
    2) naming the option, and no file called ``results`` appears.

    Was: the run succeeded and wrote a file named ``results``."""
    model, calib = small
    argv = ["prune", str(model), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib), "--keep-ratio", "0.5",
            "--method", "l1", "--device", "cpu", "-q"]
    if option == "-o":
        argv[argv.index("-o") + 1] = str(tmp_path / "results") + "/"
    else:
        argv += ["--report", str(tmp_path / "results") + "/"]
    line = one_error(capsys, argv, 2)
    assert option in line
    assert not (tmp_path / "results").exists() and not (tmp_path / "out.onnx").exists()


def test_prune_summary_on_stdout_and_messages_on_stderr(small: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Without -q the summary table and the "wrote" line go to stdout (a pipeline can keep them),
    every stderr line is one of the tool's own ("onnx-eprune: ..."), none an error; with -v the
    run still ends in the same files."""
    model, calib = small
    argv = ["prune", str(model), "-o", str(tmp_path / "a.onnx"), "--calib", str(calib), "--sparsity", "0.4",
            "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split()[:2] == ["group", "channels"]
    assert captured.out.rstrip().splitlines()[-1] == f"wrote {tmp_path / 'a.onnx'}"
    assert all(ln.startswith("onnx-eprune: ") and "error" not in ln for ln in captured.err.splitlines() if ln)
    argv[argv.index("-o") + 1] = str(tmp_path / "b.onnx")
    assert main([*argv, "-v"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    x = random_input(3, seed=4)
    assert logits(str(tmp_path / "a.onnx"), x).shape == logits(str(model), x).shape
