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
    # the files after one --stats, as a shell glob gives them: the same run
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--stats", str(tmp_path / "s0.npz"),
                 str(tmp_path / "s1.npz"), "--keep-ratio", "0.5", "-q"]) == 0
    assert (tmp_path / "q.onnx").read_bytes() == (tmp_path / "p.onnx").read_bytes()
    # an option the command does not have: its own help named
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "r.onnx"), "--stats", str(tmp_path / "s0.npz"),
                 "--keep-ratio", "0.5", "--bogus", "-q"]) == 2
    assert "unrecognized arguments: --bogus (see 'onnx-eprune prune --help')" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()


def test_stats_of_another_model_are_refused(tmp_path, capsys):
    import onnx

    a, b = ALL_BUILDERS["cnn_folded"](), ALL_BUILDERS["cnn_bn"]()
    onnx_eprune.calibrate(a, random_input(32), device="cpu").save(tmp_path / "a.npz")
    onnx.save(b, tmp_path / "b.onnx")
    status = main(["prune", str(tmp_path / "b.onnx"), "-o", str(tmp_path / "p.onnx"), "--stats", str(tmp_path / "a.npz"),
                   "--keep-ratio", "0.5"])
    assert status == 2 and "another model" in capsys.readouterr().err


def _shards(tmp_path, count: int = 4, samples: int = 512):
    model = ALL_BUILDERS["residual"]()
    paths = []
    for i, part in enumerate(np.array_split(random_input(samples, seed=5), count)):
        paths.append(tmp_path / f"shard{i}.npz")
        onnx_eprune.calibrate(model, part, device="cpu", batch_size=32).save(paths[-1])
    return model, paths


def test_the_order_of_the_files_changes_nothing(tmp_path):
    """Files given in another order: the same model bytes and the same fidelity figures,
    measured on the same images (their kept images merge in content order, more than the
    256 a measurement takes)."""
    model, paths = _shards(tmp_path, samples=3000)
    runs = [onnx_eprune.prune(model, stats=order, sparsity=0.4, device="cpu") for order in (paths, paths[::-1])]
    assert runs[0].model.SerializeToString() == runs[1].model.SerializeToString()
    assert runs[0].report["fidelity_on_calibration"] == runs[1].report["fidelity_on_calibration"]
    from onnx_eprune.calibrate.bundle import merge_bundles

    a, b = merge_bundles(paths), merge_bundles([paths[2], paths[0], paths[3], paths[1]])
    assert all(np.array_equal(a.gain_images[k], b.gain_images[k]) for k in a.gain_images)
    assert sum(len(v) for v in a.gain_images.values()) > 256


def test_files_that_cannot_add_up_are_refused_before_any_moments_are_read(tmp_path, monkeypatch):
    """A shard given twice, or one of another model, is found from the files' records and
    images: no file's moments are read (they take most of a file: 0.8 GB for ResNet-18)."""
    from onnx_eprune.calibrate.bundle import StatsBundle
    from onnx_eprune.errors import UsageError

    model, paths = _shards(tmp_path, count=2, samples=64)
    other = tmp_path / "other.npz"
    onnx_eprune.calibrate(ALL_BUILDERS["cnn_bn"](), random_input(16, seed=9), device="cpu").save(other)
    monkeypatch.setattr(StatsBundle, "load", lambda path: pytest.fail(f"moments of {path} read"))
    with pytest.raises(UsageError, match="hold the same shard"):
        onnx_eprune.prune(model, stats=[paths[0], paths[1], paths[0]], sparsity=0.4)
    with pytest.raises(UsageError, match="other.npz does not add up with .*shard0.npz: statistics files come from"):
        onnx_eprune.prune(model, stats=[paths[0], other], sparsity=0.4)


def test_files_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Each file is added up and let go before the next is read: at most two files'
    moments are held at once (the sum and the file being added)."""
    import gc
    import weakref

    from onnx_eprune.calibrate.bundle import StatsBundle, merge_bundles

    model, paths = _shards(tmp_path, count=4, samples=64)
    loaded, held = [], []
    real = StatsBundle.load.__func__

    def load(cls, path):
        gc.collect()
        held.append(sum(ref() is not None for ref in loaded))
        bundle = real(cls, path)
        loaded.append(weakref.ref(bundle))
        return bundle

    monkeypatch.setattr(StatsBundle, "load", classmethod(load))
    merged = merge_bundles(paths)
    assert merged.samples == 64 and len(held) == 4 and max(held) <= 1
