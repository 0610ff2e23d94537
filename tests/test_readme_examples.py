"""The README's examples, run as written.

Every fenced Python block of README.md is executed, in order and in one namespace (as a reader
pastes them one after the other), in a temporary folder that holds small stand-ins for the
files the blocks name: ``model.onnx`` (a small CNN from ``tests/models.py`` whose nodes carry
PyTorch-style names, so that the README's ``/stem/*`` and ``/head/*`` patterns match),
``calib.npy`` ("N a few hundred": 256 random samples), ``val.npy`` and ``val_labels.npy``.
Only file contents are stood in for; the API calls are the README's text, unchanged. What the
blocks' comments claim is checked (``# atomic; external data above 2 GB``, ``# the
onnx.ModelProto``, ``# one-shot mode``, ``# dict: ...``, the SweepPoint's fields), and what
they print is recomputed independently where it is a figure.

Every ``onnx-eprune`` command line of the README's examples (fenced ``bash`` blocks and
indented code blocks) runs in-process through ``onnx_eprune.cli.main`` with the same
stand-ins (``shard_k`` becomes ``shard_0`` and ``shard_1``; the ``...`` of "more shards" is
dropped; ``photos/`` is a folder of small PNG/JPEG images): exit status 0 and the files the
README says are written. ``onnx-eprune demo`` is left to ``tests/test_demo_and_prune_cli.py``.
The metadata one-liner and the malloc environment line of the README are checked too.

``tests/test_docs.py`` and ``tests/test_inspect_and_docs.py`` check the README's synopsis,
option table, signatures and field lists; this file does not repeat them.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_eprune
from models import (
    CLASSES,
    conv_bn_relu_pool_flatten_gemm,
    count_params,
    io_signature,
    random_input,
    relative_error,
    run_model,
)
from onnx_eprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)

# the stand-in model's node names: a PyTorch-style export with a stem and a head
NAMES = {"conv_1": "/stem/conv/Conv", "relu_2": "/stem/relu/Relu", "maxpool_3": "/stem/pool/MaxPool",
         "conv_4": "/features/conv/Conv", "relu_5": "/features/relu/Relu", "maxpool_6": "/features/pool/MaxPool",
         "flatten_7": "/flatten/Flatten", "gemm_8": "/classifier/fc/Gemm", "relu_9": "/classifier/relu/Relu",
         "y": "/head/fc/Gemm"}
WEIGHTED = ["/stem/conv/Conv", "/features/conv/Conv", "/classifier/fc/Gemm", "/head/fc/Gemm"]
SAMPLES = 256  # "N a few hundred"
IMAGES = 24


# -- stand-ins ---------------------------------------------------------------------------------

def _stand_in_model() -> onnx.ModelProto:
    """Conv(3->4) -> Relu -> MaxPool -> Conv(4->32) -> Relu -> MaxPool -> Flatten ->
    Gemm(512->32) -> Relu -> Gemm(32->10), nodes named /stem/..., /features/..., /classifier/...,
    /head/... . The stem is narrow so that a 50% MAC reduction stays reachable with it excluded."""
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(4, 32, 32))
    for node in model.graph.node:
        node.name = NAMES[node.name]
    return model


def _write_stand_ins(folder: Path) -> None:
    onnx.save(_stand_in_model(), str(folder / "model.onnx"))
    calib = random_input(SAMPLES, seed=1)
    np.save(folder / "calib.npy", calib)
    np.save(folder / "val.npy", random_input(64, seed=3))
    np.save(folder / "val_labels.npy", np.random.default_rng(0).integers(0, CLASSES, 64))
    for k, part in enumerate(np.array_split(calib, 2)):  # shard_k.npy: disjoint shards
        np.save(folder / f"shard_{k}.npy", part)


def _write_photos(folder: Path) -> None:
    """photos/: PNG and JPEG files of odd sizes, some in a subfolder (read recursively)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "photos" / "sub").mkdir(parents=True)
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, (20 + i % 3, 24, 3), dtype=np.uint8)
        name = f"{'sub/' if i % 2 else ''}p{i:02d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(folder / "photos" / name)


@contextlib.contextmanager
def _inside(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


# -- the README's shell examples ---------------------------------------------------------------

def _example_commands(text: str) -> list[str]:
    """Every ``onnx-eprune ...`` command of a ```bash block or an indented code block, with
    its backslash continuations joined (the synopsis fence has no language and is left out)."""
    found, fence, lines = [], None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            i += 1
            continue
        if fence == "bash" or (fence is None and line.startswith("    ")):
            full = line.strip()
            while full.endswith("\\") and i + 1 < len(lines):
                i += 1
                full = full[:-1].rstrip() + " " + lines[i].strip()
            found += [part.strip() for part in full.split("&&") if part.strip().startswith("onnx-eprune ")]
        i += 1
    return found


COMMANDS = _example_commands(README)


def _command(prefix: str) -> str:
    matches = [c for c in COMMANDS if c.startswith(prefix)]
    assert len(matches) == 1, (prefix, matches)
    return matches[0]


def _argv(command: str, **placeholders: str) -> list[str]:
    """The command's arguments after ``onnx-eprune``, placeholders in file names filled in,
    the "..." of "and more files" dropped and file patterns expanded, as a shell does, in
    the working folder."""
    args = shlex.split(command)
    assert args[0] == "onnx-eprune"
    out = []
    for arg in args[1:]:
        if arg == "...":
            continue
        for key, value in placeholders.items():
            arg = arg.replace(key, value)
        out.extend(sorted(glob.glob(arg)) or [arg] if "*" in arg else [arg])
    return out


def _run(capsys, argv: list[str]) -> tuple[str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    return out, err


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weight of each weighted node, by node name."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.name in WEIGHTED}


def _macs(model: onnx.ModelProto) -> int:
    """The stand-in's MACs per sample from its weights' shapes: the stem conv at 16x16, the
    features conv at 8x8, each Gemm once."""
    w = _weights(model)
    return (w["/stem/conv/Conv"].size * 256 + w["/features/conv/Conv"].size * 64
            + w["/classifier/fc/Gemm"].size + w["/head/fc/Gemm"].size)


def _provenance(folder: Path, name: str) -> list[dict]:
    return json.loads({p.key: p.value for p in onnx.load(str(folder / name)).metadata_props}["onnx_eprune"])


def _check_output_model(path: Path) -> onnx.ModelProto:
    """The rules' promise for every output: full onnx.checker, runs, same I/O signature."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert io_signature(model) == io_signature(_stand_in_model())
    assert run_model(model, random_input(4, seed=9))["y"].shape == (4, CLASSES)
    return model


# -- the Python blocks, run once in one namespace -------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Runs the README's Python blocks in order in one namespace; per block the exception (or
    None), what it printed and a snapshot of the namespace afterwards."""
    folder = tmp_path_factory.mktemp("readme_api")
    _write_stand_ins(folder)
    ns: dict = {"__name__": "__readme__"}
    runs = []
    with _inside(folder):
        for index, block in enumerate(PY_BLOCKS):
            printed = io.StringIO()
            error = None
            try:
                with contextlib.redirect_stdout(printed):
                    exec(compile(block, f"README python block {index}", "exec"), ns)  # noqa: S102
            except Exception as exc:  # noqa: BLE001 - reported by the test of that block
                error = exc
            runs.append({"error": error, "printed": printed.getvalue(), "ns": dict(ns)})
    return {"folder": folder, "runs": runs}


def _block(api, index: int) -> dict:
    run = api["runs"][index]
    assert run["error"] is None, f"README python block {index} raised {type(run['error']).__name__}: {run['error']}"
    return run


def test_the_readme_examples_are_the_ones_this_file_runs():
    """Four Python blocks (prune / save; calibrate shards; inspect, evaluate, sweep; search)
    and nine command lines: if the README gains an example, this file must run it too."""
    assert len(PY_BLOCKS) == 4
    assert 'onnx_eprune.prune("model.onnx", calib, sparsity=0.5)' in PY_BLOCKS[0]
    assert "onnx_eprune.calibrate(" in PY_BLOCKS[1]
    assert "onnx_eprune.sweep(" in PY_BLOCKS[2]
    assert "onnx_eprune.search(" in PY_BLOCKS[3]
    assert [c.split()[1] for c in COMMANDS] == ["demo", "inspect", "prune", "search", "prune", "evaluate",
                                                  "calibrate", "prune", "search"]
    # the demo is run by the demo's own tests (about 10 s)
    assert 'main(["demo"' in (ROOT / "tests" / "test_demo_and_prune_cli.py").read_text()


# -- block 0: prune and save -------------------------------------------------------------------

def test_prune_block_runs_and_its_comments_hold(api):
    """calib is (N, C, H, W) float32 (of the model's input), ``result.save`` writes a valid
    model, the print shows the report's params and macs, ``result.model`` is the
    onnx.ModelProto that was saved, and the sparsity asked for was reached."""
    run = _block(api, 0)
    ns, folder = run["ns"], api["folder"]
    calib = ns["calib"]
    assert calib.ndim == 4 and calib.dtype == np.float32 and calib.shape[0] == SAMPLES
    assert isinstance(ns["pruned"], onnx.ModelProto) and ns["pruned"] is ns["result"].model
    saved = _check_output_model(folder / "model.pruned.onnx")
    assert saved.graph == ns["pruned"].graph
    assert not (folder / "model.pruned.onnx.data").exists()  # small: no external data
    report = ns["result"].report
    assert run["printed"] == f"{report['params']} {report['macs']}\n"
    original = count_params(_stand_in_model())
    assert report["params"]["before"] == original
    assert report["params"]["after"] == count_params(saved)
    assert report["params"]["removed_fraction"] >= 0.5
    assert (report["macs"]["before"], report["macs"]["after"]) == (_macs(_stand_in_model()), _macs(saved))
    # the input is never overwritten, and result.save refuses to (README: 'refuses to overwrite
    # a file the run read')
    with _inside(folder), pytest.raises(onnx_eprune.UsageError, match="model.onnx"):
        ns["result"].save("model.onnx")
    assert onnx.load(str(folder / "model.onnx")).graph == _stand_in_model().graph


def test_save_is_atomic_when_the_rename_fails(api, tmp_path, monkeypatch):
    """``# atomic``: a save that fails at its last step leaves the old file as it was, and no
    temporary file beside it, and says so in an EPruneError."""
    result = _block(api, 0)["ns"]["result"]
    target = tmp_path / "model.pruned.onnx"
    target.write_bytes(b"old content")

    def refuse(src, dst, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(onnx_eprune.EPruneError, match="cannot write"):
        result.save("model.pruned.onnx")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pruned.onnx"]


def test_save_is_atomic_when_the_disk_fills_mid_write(api, tmp_path, monkeypatch):
    """``# atomic``: a disk that fills half-way through the model leaves the old file whole and
    no half-written file anywhere."""
    from onnx_eprune import files

    result = _block(api, 0)["ns"]["result"]
    target = tmp_path / "model.pruned.onnx"
    target.write_bytes(b"old content")

    class _Full(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", lambda path, mode="r", *a, **k: _Full(path, mode.replace("b", "")),
                        raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(onnx_eprune.EPruneError, match="No space left"):
        result.save("model.pruned.onnx")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pruned.onnx"]


def test_save_writes_external_data_above_the_limit(api, tmp_path, monkeypatch):
    """``# external data above 2 GB``: a model over the limit (here a limit lowered to a few
    bytes, as a 2 GB model costs too much) goes to ``model.pruned.onnx`` plus
    ``model.pruned.onnx.data``, and the pair loads and computes what ``result.model`` does."""
    from onnx_eprune.graph import model_io

    result = _block(api, 0)["ns"]["result"]
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.chdir(tmp_path)
    result.save("model.pruned.onnx")
    assert (tmp_path / "model.pruned.onnx.data").is_file()
    assert os.path.getsize(tmp_path / "model.pruned.onnx") < os.path.getsize(tmp_path / "model.pruned.onnx.data")
    loaded = onnx.load(str(tmp_path / "model.pruned.onnx"))  # loads the data file beside it
    onnx.checker.check_model(loaded, full_check=True)
    x = random_input(8, seed=4)
    np.testing.assert_array_equal(run_model(loaded, x)["y"], run_model(result.model, x)["y"])


# -- block 1: calibrate shards, prune from them ----------------------------------------------------

def test_shards_block_prunes_in_one_shot_mode_as_one_run_would(api, tmp_path):
    """``# one-shot mode``: the report says oneshot, over all the samples, with the shards'
    seed; the channels kept are those of one one-shot run over all of calib (README: 'The
    result equals one --mode oneshot run over all the images up to float rounding'); each shard
    is a bundle with ``save(path)`` whose file prunes like the bundle."""
    ns = _block(api, 1)["ns"]
    result, shards = ns["result"], ns["shards"]
    assert (result.report["mode"], result.report["samples"], result.report["seed"]) == ("oneshot", SAMPLES, 0)
    assert result.report["params"]["removed_fraction"] >= 0.5
    onnx.checker.check_model(result.model, full_check=True)
    with _inside(api["folder"]):
        one = onnx_eprune.prune("model.onnx", ns["calib"], sparsity=0.5, mode="oneshot", seed=0)
    kept = [(g.get("kept_channels"), g["channels_after"]) for g in result.report["groups"]]
    assert kept == [(g.get("kept_channels"), g["channels_after"]) for g in one.report["groups"]]
    assert len(shards) == 4
    shards[0].save(tmp_path / "stats_0.npz")
    with _inside(api["folder"]):
        mixed = onnx_eprune.prune("model.onnx", stats=[tmp_path / "stats_0.npz", *shards[1:]], sparsity=0.5)
    assert mixed.model.graph.initializer == result.model.graph.initializer


# -- block 2: inspect, evaluate, sweep --------------------------------------------------------------

def test_inspect_and_evaluate_block_dicts(api):
    """``# dict: groups, prunable MAC fraction`` with /stem/* shown excluded; ``# dict:
    outputs, latency_ms, size`` with the sizes of the two files on disk; the print shows
    those two values."""
    run = _block(api, 2)
    ns, folder = run["ns"], api["folder"]
    groups, fidelity = ns["groups"], ns["fidelity"]
    assert {"groups", "prunable_mac_fraction"} <= set(groups)
    stem = [g for g in groups["groups"] if g["producers"] == ["/stem/conv/Conv"]]
    assert len(stem) == 1 and stem[0]["frozen"] == "excluded by '/stem/*'"
    assert 0 < groups["prunable_mac_fraction"] < 1
    assert {"outputs", "latency_ms", "size"} <= set(fidelity)
    assert set(fidelity["outputs"]) == {"y"}
    assert fidelity["size"]["original"]["bytes"] == os.path.getsize(folder / "model.onnx")
    assert fidelity["size"]["pruned"]["bytes"] == os.path.getsize(folder / "model.pruned.onnx")
    # the figures against a recomputation on calib.npy
    x = np.load(folder / "calib.npy")
    original, pruned = onnx.load(str(folder / "model.onnx")), onnx.load(str(folder / "model.pruned.onnx"))
    a, b = run_model(original, x)["y"], run_model(pruned, x)["y"]
    assert fidelity["outputs"]["y"]["relative_error"] == pytest.approx(relative_error(a, b), rel=1e-4)
    assert fidelity["outputs"]["y"]["top1_agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))
    assert fidelity["size"]["pruned"]["params"] == count_params(pruned)
    assert fidelity["size"]["pruned"]["macs"] == _macs(pruned)
    # what pruning can touch with the stem excluded: every MAC but the stem conv's
    assert groups["prunable_mac_fraction"] == pytest.approx(1 - 4 * 27 * 256 / _macs(original))
    first = run["printed"].splitlines()[0]
    assert first == f"{groups['prunable_mac_fraction']} {fidelity['latency_ms']}"


def test_sweep_block_points_hold_what_the_comment_lists(api):
    """``# SweepPoint: target, params/MACs removed, fidelity, accuracy, seconds, and the pruned
    model``: one point per target, ascending; each field there (accuracy too, as labels were
    given); each removes at least its target and within a point of it; one printed line each."""
    run = _block(api, 2)
    points = run["ns"]["points"]
    assert [p.target for p in points] == [0.3, 0.5, 0.7]
    for p in points:
        assert p.target <= p.params_removed <= p.target + 0.01, (p.target, p.params_removed)
        assert 0 < p.macs_removed < 1
        assert p.fidelity and p.accuracy is not None and p.seconds > 0
        assert isinstance(p.model, onnx.ModelProto)
        assert p.fidelity_on == "64 held-out samples"  # data="val.npy", not the calibration samples
        onnx.checker.check_model(p.model, full_check=True)
    assert run["printed"].splitlines()[1:] == [f"{p.target} {p.params_removed} {p.accuracy}" for p in points]


def test_sweep_block_figures_match_a_recomputation(api):
    """The printed params removed and accuracy are the pruned models': parameters counted
    from their initializers, accuracy of their argmax on val.npy against val_labels.npy, and
    the fidelity is measured on val.npy (data=), not on the calibration samples."""
    points = _block(api, 2)["ns"]["points"]
    folder = api["folder"]
    x, labels = np.load(folder / "val.npy"), np.load(folder / "val_labels.npy")
    original = _stand_in_model()
    before = count_params(original)
    reference = run_model(original, x)["y"]
    acc = float(np.mean(reference.argmax(axis=1) == labels))
    for p in points:
        assert p.params_removed == pytest.approx(1 - count_params(p.model) / before, abs=1e-6)
        assert p.macs_removed == pytest.approx(1 - _macs(p.model) / _macs(original), abs=1e-6)
        out = run_model(p.model, x)["y"]
        pruned_acc = float(np.mean(out.argmax(axis=1) == labels))
        assert p.fidelity["y"]["relative_error"] == pytest.approx(relative_error(reference, out), rel=1e-4)
        assert p.fidelity["y"]["top1_agreement"] == pytest.approx(np.mean(reference.argmax(1) == out.argmax(1)))
        assert p.accuracy["original"] == pytest.approx(acc)
        assert p.accuracy["pruned"] == pytest.approx(pruned_acc)


# -- block 3: search ----------------------------------------------------------------------------------

def test_search_block_finds_saves_and_prints_the_largest_target_within_half_a_point(api):
    """``# the largest sparsity within half a point``: the target found loses at most 0.5
    points on val.npy against val_labels.npy (recomputed from the saved file), the next grid
    step, where tried, loses more, and the printed line is the target and the fraction removed."""
    run = _block(api, 3)
    found, folder = run["ns"]["found"], api["folder"]
    assert found.best is not None and run["printed"].splitlines() == [
        f"{found.best.target} {found.best.params_removed}"]
    saved = onnx.load(str(folder / "model.searched.onnx"))
    assert saved.graph == found.model.graph
    x, labels = np.load(folder / "val.npy"), np.load(folder / "val_labels.npy")
    correct = [np.sum(run_model(m, x)["y"].argmax(1) == labels) for m in (_stand_in_model(), saved)]
    assert 100 * (correct[0] - correct[1]) / len(labels) <= 0.5
    assert found.best.params_removed == pytest.approx(1 - count_params(saved) / count_params(_stand_in_model()),
                                                      abs=1e-6)
    following = [p for p in found.points if p.target == pytest.approx(found.best.target + 0.01)]
    assert all(not found.within(p) for p in following)


# -- the command lines -----------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path, monkeypatch):
    _write_stand_ins(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _table_example() -> str:
    """The option table's ``e.g. `--exclude '/stem/*' --exclude '*/head/*'```."""
    return re.search(r"e\.g\. `(--exclude [^`]*)`", README).group(1)


@pytest.mark.parametrize("which", ["readme", "table"])
def test_inspect_example_previews_the_exclusion(folder, capsys, which):
    """``onnx-eprune inspect model.onnx --exclude '/stem/*' --exclude '/head/*'`` (and the
    option table's ``'*/head/*'`` form): exit 0, the stem's group shown frozen 'excluded by',
    a warning that the head pattern only matches a layer that stays whole, nothing written."""
    command = _command("onnx-eprune inspect")
    if which == "table":
        command = "onnx-eprune inspect model.onnx " + _table_example()
    before = sorted(p.name for p in folder.iterdir())
    out, err = _run(capsys, _argv(command))
    head = "'*/head/*'" if which == "table" else "'/head/*'"
    stem_rows = [line for line in out.splitlines() if line[25:61].strip() == "/stem/conv/Conv"]  # producers column
    assert len(stem_rows) == 1 and "(excluded by '/stem/*')" in stem_rows[0], out
    assert f"excluded by {head}" in out
    assert "warning" in err and head in err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_prune_example_with_exclude_and_min_keep(folder, capsys):
    """``onnx-eprune prune model.onnx -o pruned.onnx --calib calib.npy --flops-reduction 0.5
    --exclude '/stem/*' --exclude '/head/*' --min-keep 0.25``: pruned.onnx is written and valid;
    the stem and head keep every channel, every other layer a quarter or more of its own
    ('keep some layers whole and every other layer at a quarter of its channels or more'); the
    MACs, recounted from the weights, fall by at least half; the input is unchanged."""
    out, _ = _run(capsys, _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --calib calib.npy")))
    assert "wrote pruned.onnx" in out
    pruned = _check_output_model(folder / "pruned.onnx")
    before, after = _weights(_stand_in_model()), _weights(pruned)
    assert after["/stem/conv/Conv"].shape == before["/stem/conv/Conv"].shape
    assert after["/head/fc/Gemm"].shape[0] == CLASSES
    for name in ("/features/conv/Conv", "/classifier/fc/Gemm"):  # output channels: Conv axis 0, Gemm (transB) axis 0
        assert after[name].shape[0] >= math.ceil(0.25 * before[name].shape[0]), name
    assert _macs(pruned) <= 0.5 * _macs(_stand_in_model())
    assert onnx.load(str(folder / "model.onnx")).graph == _stand_in_model().graph


def test_search_example_writes_the_model_and_the_search_folder(folder, capsys):
    """``onnx-eprune search model.onnx -o pruned.onnx --calib calib.npy --data val.npy --labels
    val_labels.npy --max-drop 0.5 --report-dir search/``: pruned.onnx, valid, at the target
    that search.json names, which lost at most half a point on val.npy; the folder holds the
    search files and the chosen run's report."""
    out, _ = _run(capsys, _argv(_command("onnx-eprune search model.onnx -o pruned.onnx --calib")))
    pruned = _check_output_model(folder / "pruned.onnx")
    record = json.loads((folder / "search" / "search.json").read_text())
    chosen = next(r for r in record["runs"] if r["target"] == record["search"]["best"])
    assert chosen["within_tolerance"] and 100 * (chosen["accuracy"]["original"] - chosen["accuracy"]["pruned"]) <= 0.5
    assert chosen["params_removed"] == pytest.approx(1 - count_params(pruned) / count_params(_stand_in_model()),
                                                     abs=1e-6)
    assert {"search.json", "search.md", "report.json", "report.md"} <= {p.name for p in (folder / "search").iterdir()}
    assert "wrote pruned.onnx" in out


def test_the_metadata_one_liner_reads_what_the_readme_lists(folder, capsys):
    """The README's ``{p.key: p.value for p in onnx.load("pruned.onnx").metadata_props}
    ["onnx_eprune"]``, evaluated as written after the example's prune: a JSON list with one
    entry for the run, holding the version, method, mode, target, exclude, min_keep, re-fit
    ridge, samples, seed, and params and MACs as [before, after] (recounted here)."""
    _run(capsys, _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --calib calib.npy")))
    expression = re.search(r"Read it with\s*`([^`]+)`", README).group(1)
    assert 'onnx.load("pruned.onnx")' in expression
    runs = json.loads(eval(expression, {"onnx": onnx}))
    assert isinstance(runs, list) and len(runs) == 1
    entry = runs[0]
    assert {"version", "method", "mode", "target", "exclude", "min_keep", "refit_ridge", "samples", "seed",
            "params", "macs"} <= set(entry)
    assert entry["version"] == onnx_eprune.__version__
    assert (entry["method"], entry["mode"], entry["samples"], entry["seed"]) == ("entropic", "sequential", SAMPLES, 0)
    assert entry["exclude"] == ["/stem/*", "/head/*"] and entry["min_keep"] == 0.25
    assert entry["target"] == {"kind": "flops", "value": 0.5}
    pruned = onnx.load(str(folder / "pruned.onnx"))
    assert entry["params"] == [count_params(_stand_in_model()), count_params(pruned)]
    assert entry["macs"] == [_macs(_stand_in_model()), _macs(pruned)]


def test_calib_images_example(folder, capsys):
    """``onnx-eprune prune model.onnx -o pruned.onnx --calib-images photos/ --mean ... --std ...
    --flops-reduction 0.5 --report report.json``: both files written, the model valid, every
    image of the folder (subfolders too) used, the MAC target met as recounted."""
    pytest.importorskip("PIL")
    _write_photos(folder)
    out, _ = _run(capsys, _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --calib-images photos/")))
    assert "wrote pruned.onnx, report.json" in out
    pruned = _check_output_model(folder / "pruned.onnx")
    report = json.loads((folder / "report.json").read_text())
    assert report["samples"] == IMAGES
    assert report["macs"]["after"] == _macs(pruned) <= 0.5 * report["macs"]["before"]
    assert report["output"] == "pruned.onnx"


def test_data_images_example(folder, capsys):
    """``onnx-eprune evaluate model.onnx pruned.onnx --data-images val/ --folder-labels --mean
    ... --std ...`` after the --calib-images example: every image of the class folders
    compared, and the accuracy that of the folders' classes (k-th folder in name order:
    class k), recomputed here from the images as ``--calib-images`` reads them."""
    pytest.importorskip("PIL")
    from PIL import Image

    from onnx_eprune.calibrate.images import load_image_folder

    _write_photos(folder)
    _run(capsys, _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --calib-images photos/")))
    rng = np.random.default_rng(1)
    for k in range(CLASSES):
        (folder / "val" / f"class_{k}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                folder / "val" / f"class_{k}" / f"{i}.png")
    out, _ = _run(capsys, _argv(_command("onnx-eprune evaluate")) + ["--json"])
    result = json.loads(out)
    assert result["samples"] == 2 * CLASSES
    x = load_image_folder(folder / "val", _stand_in_model(), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    labels = np.repeat(np.arange(CLASSES), 2)
    for name, path in (("original", "model.onnx"), ("pruned", "pruned.onnx")):
        predicted = run_model(onnx.load(str(folder / path)), x)["y"].argmax(1)
        assert result["accuracy"][name] == pytest.approx(np.mean(predicted == labels))


def test_calibrate_on_shards_then_prune_from_the_statistics(folder, capsys):
    """``onnx-eprune calibrate model.onnx --calib shard_k.npy --stats-out stats_k.npz --seed 0``
    for k = 0, 1, then ``onnx-eprune prune model.onnx -o pruned.onnx --stats stats_*.npz
    --sparsity 0.5``: the statistics files and the model are written; the run is
    one-shot over both shards' samples with their seed; and the same files serve a prune with
    ``--exclude`` and ``--min-keep`` ('one set of files serves any of them')."""
    calibrate = _command("onnx-eprune calibrate")
    for k in ("0", "1"):
        _run(capsys, _argv(calibrate, shard_k=f"shard_{k}", stats_k=f"stats_{k}"))
        assert (folder / f"stats_{k}.npz").is_file()
    out, err = _run(capsys, _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --stats")))
    assert "wrote pruned.onnx" in out and "one-shot" in err
    _check_output_model(folder / "pruned.onnx")
    entry = _provenance(folder, "pruned.onnx")[-1]
    assert (entry["mode"], entry["samples"], entry["seed"]) == ("oneshot", SAMPLES, 0)
    assert entry["params"][1] <= 0.5 * entry["params"][0]
    argv = _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --stats"))
    argv[argv.index("pruned.onnx")] = "protected.onnx"
    _run(capsys, argv + ["--exclude", "/stem/*", "--min-keep", "0.25"])
    protected = _weights(onnx.load(str(folder / "protected.onnx")))
    assert protected["/stem/conv/Conv"].shape[0] == 4
    assert protected["/features/conv/Conv"].shape[0] >= 8
    # 'sweep and search take the same files': the search example, on them, writes the bytes
    # that prune --stats writes at the target it found, which lost at most half a point
    out, _ = _run(capsys, _argv(_command("onnx-eprune search model.onnx -o pruned.onnx --stats"))
                  + ["--report-dir", "found"])
    record = json.loads((folder / "found" / "search.json").read_text())
    chosen = next(r for r in record["runs"] if r["target"] == record["search"]["best"])
    assert record["mode"] == "oneshot" and chosen["within_tolerance"]
    assert 100 * (chosen["accuracy"]["original"] - chosen["accuracy"]["pruned"]) <= 0.5
    argv = _argv(_command("onnx-eprune prune model.onnx -o pruned.onnx --stats"))
    argv[argv.index("pruned.onnx")], argv[argv.index("0.5")] = "again.onnx", f"{chosen['target']:g}"
    _run(capsys, argv)
    assert (folder / "again.onnx").read_bytes() == (folder / "pruned.onnx").read_bytes()


def test_the_calibrate_function_writes_what_the_command_writes(folder, capsys):
    """README: '`calibrate(model, calib, **options)` computes the statistics of one shard (what
    `onnx-eprune calibrate` writes, above)': the Python block's call, saved, holds the same
    arrays as the example command's file for the same shard and seed."""
    _run(capsys, _argv(_command("onnx-eprune calibrate"), shard_k="shard_0", stats_k="stats_0"))
    onnx_eprune.calibrate("model.onnx", np.load("shard_0.npy"), seed=0).save("api_0.npz")
    with np.load("stats_0.npz", allow_pickle=False) as cli, np.load("api_0.npz", allow_pickle=False) as api_file:
        assert sorted(cli.files) == sorted(api_file.files)
        for key in cli.files:
            np.testing.assert_array_equal(cli[key], api_file[key], err_msg=key)


def test_the_malloc_line_sets_what_the_program_sets(monkeypatch):
    """README: 'a Python program gets the same by starting with MALLOC_ARENA_MAX=1
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python script.py': the values the
    command line passes to glibc's mallopt are those."""
    import ctypes
    import platform

    from onnx_eprune import allocator

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    line = re.search(r"`(MALLOC_ARENA_MAX=\S+ MALLOC_MMAP_MAX_=\S+ MALLOC_TRIM_THRESHOLD_=\S+) python", README)
    env = dict(item.split("=") for item in line.group(1).split())
    calls = {}

    class _Libc:
        def mallopt(self, param, value):
            calls[param] = value
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: _Libc())
    assert allocator.keep_freed_memory()
    # mallopt parameters of malloc.h: M_ARENA_MAX -8, M_MMAP_MAX -4, M_TRIM_THRESHOLD -1
    assert calls == {-8: int(env["MALLOC_ARENA_MAX"]), -4: int(env["MALLOC_MMAP_MAX_"]),
                     -1: int(env["MALLOC_TRIM_THRESHOLD_"])}
