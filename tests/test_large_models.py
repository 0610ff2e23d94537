"""Models above the protobuf limit (the limit lowered here to a few kilobytes): their large
external tensors stay in the input's data file while pruning ("references"), and the
result is the same, and is written byte for byte the same, as from the model in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from models import INPUT, _Builder, random_input, run_model

from onnx_eprune.calibrate import session
from onnx_eprune.cli import main
from onnx_eprune.errors import UsageError
from onnx_eprune.graph import model_io
from onnx_eprune.pipeline import prune


def frozen_head_model() -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> Conv(8->16) -> Relu -> GAP -> Flatten -> Gemm(16->64) ->
    Softmax -> Gemm(64->10) = y: the Softmax freezes the last Gemm, whose weight (2.5 KB)
    is never changed by pruning, like the wide layers of tools/bench_large.py."""
    b = _Builder(seed=3)
    h = b.node("Relu", [b.conv(INPUT, 3, 8)])
    h = b.node("Relu", [b.conv(h, 8, 16)])
    h = b.node("Softmax", [b.gemm(b.gap_flatten(h), 16, 64)], axis=1)
    return b.build(b.gemm(h, 64, 10, name="y", bias=False))


@pytest.fixture
def large(monkeypatch):
    """Every model counts as above the protobuf limit; tensors of 1 KB or more stay in
    their file, and sessions take in-memory tensors of 256 bytes or more by value."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
    monkeypatch.setattr(model_io, "REFERENCE_MIN_BYTES", 1024)
    monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)


@pytest.fixture
def external(tmp_path) -> Path:
    """frozen_head_model saved with every weight in ``weights.bin``."""
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(frozen_head_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


def test_large_external_tensors_stay_in_their_file(large, external):
    model = model_io.load_model(external)
    refs = {i.name: model_io.reference(i) for i in model.graph.initializer}
    assert refs["y.weight"] is not None and refs["y.weight"][0] == str((external.parent / "weights.bin").resolve())
    assert all(ref is None or ref[2] >= 1024 for ref in refs.values()) and None in refs.values()
    held = {i.name: i for i in model.graph.initializer}
    read = model_io.initializer_map(model)
    for init in onnx.load(str(external)).graph.initializer:
        expected = onnx.numpy_helper.to_array(init)
        np.testing.assert_array_equal(model_io.tensor_array(held[init.name]), expected)
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(read[init.name]), expected)


def test_pruning_from_references_gives_the_in_memory_result_and_its_files(large, external, tmp_path, calib):
    """The command line prunes the model from its file (references); the same run on the
    model read whole gives the same tensors, and save_model writes them exactly as
    onnx.save_model (external data, 1 KB threshold) did before references existed."""
    np.save(tmp_path / "calib.npy", calib)
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    args = ["--calib", str(tmp_path / "calib.npy"), "--keep-ratio", "0.5", "--device", "cpu", "-q"]
    assert main(["prune", str(external), "-o", str(out), *args]) == 0

    from_refs = prune(str(external), calib, keep_ratio=0.5, device="cpu").model
    frozen = next(i for i in from_refs.graph.initializer if i.name == "y.weight")
    assert model_io.reference(frozen) is not None  # never changed, so never read into the model
    in_memory = prune(onnx.load(str(external)), calib, keep_ratio=0.5, device="cpu").model
    assert not any(model_io.reference(i) for i in in_memory.graph.initializer)
    assert model_io._embedded(from_refs).SerializeToString(deterministic=True) == \
        in_memory.SerializeToString(deterministic=True)

    expected = tmp_path / "expected" / "pruned.onnx"
    expected.parent.mkdir()
    onnx.save_model(in_memory, str(expected), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="pruned.onnx.data", size_threshold=1024)
    graph = onnx.load(str(expected), load_external_data=False).SerializeToString(deterministic=True)
    assert out.read_bytes() == graph
    assert (out.parent / "pruned.onnx.data").read_bytes() == (expected.parent / "pruned.onnx.data").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]

    onnx.checker.check_model(str(out), full_check=True)
    x = random_input(8, seed=9)
    np.testing.assert_array_equal(run_model(onnx.load(str(out)), x)["y"], run_model(onnx.load(str(expected)), x)["y"])


def test_a_pruned_model_below_the_limit_is_written_whole(large, external, tmp_path, monkeypatch, calib):
    """References are read back into a model small enough for one file."""
    result = prune(str(external), calib, keep_ratio=0.5, device="cpu").model
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1 << 30)
    out = tmp_path / "whole.onnx"
    model_io.save_model(result, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("whole")) == ["whole.onnx"]
    assert onnx.load(str(out)).SerializeToString() == model_io._embedded(result).SerializeToString()


def test_the_input_data_file_is_never_overwritten(large, external):
    """An output whose data file would be the input's weights is refused before writing."""
    (external.parent / "weights.bin").rename(external.parent / "other.onnx.data")
    model = onnx.load(str(external), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "other.onnx.data"
    onnx.save(model, str(external))
    before = (external.parent / "other.onnx.data").read_bytes()
    with pytest.raises(UsageError, match="holds the input model's weights"):
        model_io.save_model(model_io.load_model(external), external.parent / "other.onnx")
    assert (external.parent / "other.onnx.data").read_bytes() == before


def test_prune_result_save_writes_references_out(large, external, tmp_path, calib):
    """PruneResult.save copies the weights still in the input's file into the output's."""
    result = prune(str(external), calib, keep_ratio=0.5, device="cpu")
    out = tmp_path / "saved" / "pruned.onnx"
    out.parent.mkdir()
    result.save(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    x = random_input(4, seed=2)
    np.testing.assert_array_equal(run_model(onnx.load(str(out)), x)["y"],
                                  run_model(model_io._embedded(result.model), x)["y"])


def test_fingerprint_counts_referenced_weights_by_content(large, external, tmp_path):
    """A model read with references keeps its fingerprint when its folder moves, and a
    changed weight byte changes it."""
    from onnx_eprune.calibrate.bundle import fingerprint

    before = fingerprint(model_io.load_model(external))
    moved = tmp_path / "moved"
    external.parent.rename(moved)
    assert fingerprint(model_io.load_model(moved / "model.onnx")) == before
    data = bytearray((moved / "weights.bin").read_bytes())
    data[-1] ^= 0xFF
    (moved / "weights.bin").write_bytes(bytes(data))
    assert fingerprint(model_io.load_model(moved / "model.onnx")) != before


def test_a_failed_write_leaves_the_old_model_and_its_data_file(large, external, tmp_path, monkeypatch, calib):
    """A write that fails after the data file was renamed into place, before the model file
    was, puts the old data file back: the old model still reads its own weights."""
    import os

    from onnx_eprune.errors import EPruneError

    result = prune(str(external), calib, keep_ratio=0.5, device="cpu").model
    out = tmp_path / "old.onnx"
    model_io.save_model(prune(str(external), calib, keep_ratio=0.75, device="cpu").model, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real = os.replace

    def model_rename_fails(src, dst):
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", model_rename_fails)
    with pytest.raises(EPruneError, match="No space left"):
        model_io.save_model(result, out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    onnx.checker.check_model(str(out), full_check=True)
