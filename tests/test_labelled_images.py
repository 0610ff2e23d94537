"""Held-out images from class folders (``--data-images DIR --folder-labels``) for
``evaluate``, ``sweep`` and ``search``, and ``load_labelled_image_folder`` behind them."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import CLASSES, HW, conv_bn_relu_pool_flatten_gemm
from onnx_eprune.calibrate.images import load_image_folder, load_labelled_image_folder
from onnx_eprune.cli import main
from onnx_eprune.errors import UsageError
from test_cli import run_error

Image = pytest.importorskip("PIL.Image")

MODEL = conv_bn_relu_pool_flatten_gemm()  # input (N, 3, 16, 16), first output (N, 10)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(HW, HW, 3), dtype=np.uint8)


def _class_folders(root, counts: dict[str, int]):
    """``counts[name]`` PNGs in ``root/name`` (images seeded by their order of writing);
    returns the folder and each image's class in path order, by sorted folder name."""
    seed = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_image(seed)).save(root / name / f"{i:02d}.png")
            seed += 1
    names = sorted(counts)
    return root, np.array([k for k, name in enumerate(names) for _ in range(counts[name])])


def test_the_class_is_the_folder_position_in_name_order(tmp_path):
    """A folder without images keeps its place; images in nested folders belong to their
    top-level class folder; the images are those ``load_image_folder`` reads, in the same
    order."""
    root, _ = _class_folders(tmp_path / "val", {"dog": 2, "cat": 3, "eel": 1})
    (root / "bird").mkdir()  # class 0, no image: cat is class 1
    (root / "eel" / "deep").mkdir()
    Image.fromarray(_image(99)).save(root / "eel" / "deep" / "x.png")
    images, labels, classes = load_labelled_image_folder(root, MODEL, mean=0.5)
    assert classes == ["bird", "cat", "dog", "eel"]
    assert labels.dtype == np.int64 and labels.tolist() == [1, 1, 1, 2, 2, 3, 3]
    np.testing.assert_array_equal(images, load_image_folder(root, MODEL, mean=0.5))


def test_an_unreadable_image_is_skipped_with_its_label(tmp_path, caplog):
    root, _ = _class_folders(tmp_path / "val", {"a": 2, "b": 2})
    (root / "a" / "01.png").write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        images, labels, _ = load_labelled_image_folder(root, MODEL)
    assert len(images) == 3 and labels.tolist() == [0, 1, 1]
    assert any("01.png" in r.getMessage() for r in caplog.records)


def test_images_outside_the_class_folders_are_refused(tmp_path):
    root, _ = _class_folders(tmp_path / "val", {"a": 1})
    Image.fromarray(_image(5)).save(root / "loose.png")
    with pytest.raises(UsageError, match="loose.png is directly in .* outside every class folder"):
        load_labelled_image_folder(root, MODEL)


def test_the_class_count_is_checked_against_the_model_output(tmp_path, caplog):
    """More folders than the first output scores classes: refused; fewer: a warning, as
    folder k is then class k whether or not the folders are the first classes."""
    root, _ = _class_folders(tmp_path / "many", {f"c{k:02d}": 1 for k in range(CLASSES + 1)})
    with pytest.raises(UsageError, match=f"{CLASSES + 1} class folders, but the model's first output scores "
                                         f"{CLASSES} classes"):
        load_labelled_image_folder(root, MODEL)
    root, _ = _class_folders(tmp_path / "few", {"a": 1, "b": 1})
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        load_labelled_image_folder(root, MODEL)
    assert any(f"2 class folders and the model scores {CLASSES} classes" in r.getMessage() for r in caplog.records)


def test_numbered_folders_are_taken_in_name_order_with_a_warning(tmp_path, caplog):
    folders = {str(k): 1 for k in range(1, 11)}  # 1 .. 10: "10" sorts before "2"
    root, _ = _class_folders(tmp_path / "val", folders)
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        _, labels, classes = load_labelled_image_folder(root, MODEL)
    assert classes[:3] == ["1", "10", "2"] and labels.tolist() == list(range(10))
    assert any("folder 10 is class 1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    root, _ = _class_folders(tmp_path / "digits", {str(k): 1 for k in range(10)})  # name order = value order
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        load_labelled_image_folder(root, MODEL)
    assert not [r for r in caplog.records if "numbers" in r.getMessage()]


@pytest.fixture
def files(tmp_path):
    """The model, calibration arrays, a folder of 24 labelled images, and the same images
    and labels as .npy files."""
    onnx.save(MODEL, str(tmp_path / "m.onnx"))
    root, labels = _class_folders(tmp_path / "val", {"c0": 6, "c1": 5, "c2": 7, "c3": 6})
    images = load_image_folder(root, MODEL, mean=0.5, std=0.25)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "short.npy", labels[:-1])
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((32, 3, HW, HW), dtype=np.float32))
    return tmp_path


IMAGES = ["--data-images", "val", "--folder-labels", "--mean", "0.5", "--std", "0.25"]
ARRAYS = ["--data", "x.npy", "--labels", "y.npy"]


def _in(folder, args: list[str]) -> list[str]:
    return [str(folder / a) if a in ("val", "x.npy", "y.npy", "y1.npy", "short.npy", "m.onnx", "calib.npy", "p.onnx", "out", "s.onnx") else a
            for a in args]


def test_cli_evaluate_on_class_folders_equals_evaluate_on_arrays(files, capsys):
    pruned = onnx_eprune.prune(str(files / "m.onnx"), str(files / "calib.npy"), sparsity=0.4, method="l1",
                               device="cpu")
    pruned.save(str(files / "p.onnx"))
    results = []
    for held_out in (IMAGES, ARRAYS):
        assert main(_in(files, ["evaluate", "m.onnx", "p.onnx", "--json", "--device", "cpu", *held_out])) == 0
        results.append(json.loads(capsys.readouterr().out))
    for r in results:
        del r["latency_ms"]
    # the class folders name the classes that the per-class accuracy is indexed by
    assert results[0]["accuracy"].pop("class_names") == ["c0", "c1", "c2", "c3"]
    assert results[0] == results[1] and results[0]["samples"] == 24
    assert results[0]["accuracy"]["per_class"]["samples"] == [6, 5, 7, 6] + [0] * (CLASSES - 4)
    assert main(_in(files, ["evaluate", "m.onnx", "p.onnx", "--device", "cpu", *IMAGES])) == 0
    worst = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("largest drop of one class")]
    assert not worst or re.match(r"largest drop of one class: class (\d) \(c\1\), ", worst[0])


def test_cli_sweep_and_search_on_class_folders(files, capsys):
    """The sweep's and the search's records are those of the same images and labels given
    as arrays (their timings aside)."""
    records = []
    for held_out in (IMAGES, ARRAYS):
        out = files / f"sweep{len(records)}"
        assert main(_in(files, ["sweep", "m.onnx", "--calib", "calib.npy", "--sparsity", "0.3", "0.6", "--report-dir",
                                str(out), "--method", "l1", "--device", "cpu", "-q", *held_out])) == 0, \
            capsys.readouterr().err
        records.append([{k: v for k, v in r.items() if k != "seconds"}
                        for r in json.loads((out / "sweep.json").read_text())["runs"]])
    assert records[0] == records[1] and all(r["accuracy"] for r in records[0])
    assert records[0][0]["fidelity_on"] == "24 held-out samples"
    assert main(_in(files, ["search", "m.onnx", "--calib", "calib.npy", "--max-drop", "99", "--resolution", "0.25",
                            "-o", str(files / "s.onnx"), "--method", "l1", "--device", "cpu", "-q", *IMAGES])) == 0
    assert (files / "s.onnx").exists()


@pytest.mark.parametrize("args, words", [
    (["evaluate", "m.onnx", "m.onnx", "--data", "x.npy", "--folder-labels"], "--folder-labels needs --data-images"),
    (["evaluate", "m.onnx", "m.onnx", "--data", "x.npy", "--mean", "0.5"], "--mean only applies with --data-images"),
    (["evaluate", "m.onnx", "m.onnx", "--data-images", "x.npy"], "--data-images expects a folder of images"),
    (["evaluate", "m.onnx", "m.onnx", "--data-images", "val", "--labels", "y.npy", "--folder-labels"],
     "not allowed with"),
    (["evaluate", "m.onnx", "m.onnx", "--data", "x.npy", "--data-images", "val"], "not allowed with"),
    (["evaluate", "m.onnx", "m.onnx", "--data-images", "val", "--labels", "short.npy"], "23 labels for 24 samples"),
    (["sweep", "m.onnx", "--calib", "calib.npy", "--sparsity", "0.3", "--report-dir", "out", "--labels", "y.npy"],
     "--labels needs --data"),
    (["sweep", "m.onnx", "--calib", "calib.npy", "--sparsity", "0.3", "--report-dir", "out", "--std", "2"],
     "--std only applies with --calib-images or --data-images"),
    (["search", "m.onnx", "--calib", "calib.npy", "--max-drop", "1", "-o", "s.onnx", "--data-images", "val"],
     "--max-drop compares accuracy: give --data and its --labels (or --data-images with --folder-labels)"),
])
def test_cli_held_out_image_errors_are_one_line(files, capsys, args, words):
    assert words in run_error(capsys, _in(files, args))
    assert not (files / "out").exists() and not (files / "s.onnx").exists()


def test_a_limited_read_spreads_over_the_folder(tmp_path):
    """``limit`` cuts the path-ordered files into runs and reads the first readable image of
    each: every class gets its share (the first paths would all be one class's), and an
    unreadable image gives its place to the next one of its run."""
    root, _ = _class_folders(tmp_path / "val", {"a": 4, "b": 4, "c": 4})
    every = load_image_folder(root, MODEL)
    images, labels, _ = load_labelled_image_folder(root, MODEL, limit=3)
    assert labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(images, every[[0, 4, 8]])
    (root / "b" / "00.png").write_bytes(b"broken")
    images, labels, _ = load_labelled_image_folder(root, MODEL, limit=6)  # runs of two files
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(images, every[[0, 2, 5, 6, 8, 10]])  # b/01.png stands in for b/00.png
    assert len(load_image_folder(root, MODEL, limit=50)) == 11  # more than there are: every readable one


def test_a_folder_larger_than_memory_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    """The decoded images' bytes are checked against the memory available before any is
    read: a one-line error naming the option that reads fewer, not an out-of-memory kill."""
    from onnx_eprune.calibrate import images as images_module
    from onnx_eprune.errors import TooManyImages

    root, _ = _class_folders(tmp_path / "val", {"a": 3, "b": 3})
    one = 3 * HW * HW * 4
    monkeypatch.setattr(images_module, "_available_memory", lambda: 5 * one)
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(TooManyImages, match=r"the 6 images of .* take 0\.0 GiB decoded, more than the 0\.0 GiB of "
                                            "memory available; read fewer with the limit argument"):
        load_labelled_image_folder(root, MODEL)
    assert opened == []
    monkeypatch.undo()
    monkeypatch.setattr(images_module, "_available_memory", lambda: 5 * one)
    assert len(load_image_folder(root, MODEL, limit=5)) == 5
    onnx.save(MODEL, str(tmp_path / "m.onnx"))
    line = run_error(capsys, ["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--data-images",
                              str(root), "--folder-labels"])
    assert line.endswith("read fewer with --data-samples N")
    line = run_error(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib-images",
                              str(root), "--sparsity", "0.3"])
    assert line.endswith("read fewer with --samples N") and not (tmp_path / "p.onnx").exists()


def test_data_samples_measure_on_a_spread_of_the_held_out_samples(files, capsys):
    """--data-samples N: evenly spaced samples of an array file, with their labels, or a
    spread read of an image folder: the figures of those samples given in full."""
    x, y = np.load(files / "x.npy"), np.load(files / "y.npy")
    rows = np.arange(8) * 24 // 8
    np.save(files / "x8.npy", x[rows])
    np.save(files / "y8.npy", y[rows])
    results = []
    for args in (["--data", "x.npy", "--labels", "y.npy", "--data-samples", "8"],
                 ["--data", "x8.npy", "--labels", "y8.npy"], [*IMAGES, "--data-samples", "8"]):
        args = [str(files / a) if a in ("x8.npy", "y8.npy") else a for a in args]
        assert main(_in(files, ["evaluate", "m.onnx", "m.onnx", "--json", "--device", "cpu", *args])) == 0
        result = json.loads(capsys.readouterr().out)
        del result["latency_ms"]
        result["accuracy"].pop("class_names", None)
        results.append(result)
    assert results[0] == results[1] == results[2] and results[0]["samples"] == 8
    assert results[2]["accuracy"]["per_class"]["samples"][:4] == [2, 2, 2, 2]  # every class folder's share
    for held_out in (["--data", "x.npy", "--labels", "y.npy"], IMAGES):  # more than there are: all, with a warning
        assert main(_in(files, ["evaluate", "m.onnx", "m.onnx", "--json", "--device", "cpu", "--data-samples", "30",
                                *held_out])) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["samples"] == 24
        assert "--data-samples 30: the held-out data holds 24 samples; using all 24" in captured.err
    np.save(files / "y1.npy", y[:1])
    line = run_error(capsys, _in(files, ["evaluate", "m.onnx", "m.onnx", "--data", "x.npy", "--labels", "y1.npy",
                                         "--data-samples", "8"]))
    assert "1 labels for 24 samples" in line  # checked against every sample, before the spread is taken
    line = run_error(capsys, _in(files, ["sweep", "m.onnx", "--calib", "calib.npy", "--sparsity", "0.3",
                                         "--report-dir", "out", "--data-samples", "8"]))
    assert "--data-samples needs --data or --data-images" in line and not (files / "out").exists()
