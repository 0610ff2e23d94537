"""Statistics from disjoint shards add up to one run over all the samples."""

import numpy as np
import pytest

import onnx_eprune
from models import ALL_BUILDERS, random_input
from onnx_eprune.cli import main


@pytest.mark.parametrize("name, samples", [("cnn_bn", 256), ("concat", 256), ("residual", 256), ("residual", 64)])
def test_four_shards_equal_one_run(name, samples, tmp_path):
    model = ALL_BUILDERS[name]()
    # 256: about 32 images qualify to measure gains; 64: fewer than 16, so the 16 smallest keys do
    x = random_input(samples, seed=3)
    paths = []
    for i, part in enumerate(np.array_split(x, 4)):
        path = tmp_path / f"shard{i}.npz"
        onnx_eprune.calibrate(model, part, device="cpu", batch_size=16).save(path)
        paths.append(path)
    one = onnx_eprune.prune(model, x, sparsity=0.4, mode="oneshot", device="cpu", batch_size=32)
    merged = onnx_eprune.prune(model, stats=paths, sparsity=0.4, device="cpu")
    assert [g["channels_after"] for g in one.report["groups"]] == [g["channels_after"] for g in merged.report["groups"]]
    a = {i.name: i for i in one.model.graph.initializer}
    b = {i.name: i for i in merged.model.graph.initializer}
    assert set(a) == set(b)
    from onnx import numpy_helper
    for n in a:
        va, vb = numpy_helper.to_array(a[n]).astype(np.float64), numpy_helper.to_array(b[n]).astype(np.float64)
        assert va.shape == vb.shape
        assert np.abs(va - vb).max() <= 1e-5 * max(1.0, np.abs(va).max()), n


def test_bundles_in_memory_merge_like_files(tmp_path):
    """Bundles passed as objects are added into a copy: the first one is left as it was."""
    model = ALL_BUILDERS["residual"]()
    x = random_input(96, seed=3)
    shards = [onnx_eprune.calibrate(model, part, device="cpu") for part in np.array_split(x, 3)]
    for i, bundle in enumerate(shards):
        bundle.save(tmp_path / f"shard{i}.npz")
    first = {c: st.cxx.copy() for c, st in shards[0].consumers.items()}
    in_memory = onnx_eprune.prune(model, stats=shards, sparsity=0.4, device="cpu")
    from_files = onnx_eprune.prune(model, stats=[tmp_path / f"shard{i}.npz" for i in range(3)], sparsity=0.4,
                                   device="cpu")
    assert in_memory.report["samples"] == from_files.report["samples"] == len(x)
    assert in_memory.model.graph.initializer == from_files.model.graph.initializer
    assert shards[0].samples == 32 and all(np.array_equal(first[c], st.cxx) for c, st in shards[0].consumers.items())
    # validated on the images the shards keep for the gains (16 or more each), not on the 8 probes
    kept = sum(len(next(iter(b.gain_images.values()))) for b in shards)
    assert in_memory.report["fidelity_on_calibration"]["samples"] == kept >= 3 * 16


@pytest.mark.parametrize("samples", [8, 32, 100, 1024])
def test_gain_subset_of_shards_is_that_of_all_images(samples):
    from onnx_eprune.calibrate.data import CalibrationData
    from onnx_eprune.calibrate.sensitivity import gain_candidates, gain_subset

    x = random_input(samples, seed=7)
    whole = gain_subset(CalibrationData({"x": x}))
    keys = whole.keys()
    assert np.all(np.diff(keys.astype(np.float64)) > 0)  # key order
    all_keys = np.sort(CalibrationData({"x": x}).keys())
    qualified = all_keys[all_keys % 8 == 0]
    expected = qualified[:128] if len(qualified) >= 16 else all_keys[:16]
    assert list(keys) == list(expected)
    kept = [part[gain_candidates(CalibrationData({"x": part}).keys())] for part in np.array_split(x, 3)]
    merged = gain_subset(CalibrationData({"x": np.concatenate(kept)}))
    assert np.array_equal(merged.arrays["x"], whole.arrays["x"])


def test_cli_calibrate_then_prune(tmp_path, capsys):
    model = ALL_BUILDERS["cnn_folded"]()
    import onnx

    onnx.save(model, tmp_path / "m.onnx")
    x = random_input(64, seed=5)
    for i, part in enumerate(np.array_split(x, 2)):
        np.save(tmp_path / f"c{i}.npy", part)
        assert main(["calibrate", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / f"c{i}.npy"),
                     "--stats-out", str(tmp_path / f"s{i}.npz"), "-q"]) == 0
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--stats", str(tmp_path / "s0.npz"),
                 "--stats", str(tmp_path / "s1.npz"), "--keep-ratio", "0.5", "-q"]) == 0
    onnx.checker.check_model(onnx.load(tmp_path / "p.onnx"), full_check=True)


def test_stats_of_another_model_are_refused(tmp_path, capsys):
    import onnx

    a, b = ALL_BUILDERS["cnn_folded"](), ALL_BUILDERS["cnn_bn"]()
    onnx_eprune.calibrate(a, random_input(32), device="cpu").save(tmp_path / "a.npz")
    onnx.save(b, tmp_path / "b.onnx")
    status = main(["prune", str(tmp_path / "b.onnx"), "-o", str(tmp_path / "p.onnx"), "--stats", str(tmp_path / "a.npz"),
                   "--keep-ratio", "0.5"])
    assert status == 2 and "another model" in capsys.readouterr().err
