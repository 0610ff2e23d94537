"""Adversarial checks of statistics bundles: ``onnx-eprune calibrate --stats-out`` and
``onnx-eprune prune --stats A --stats B ...`` (``onnx_eprune/calibrate/bundle.py`` and how
``pipeline.py`` prunes from them), and their Python API twins ``calibrate()`` /
``prune(stats=[...])`` / ``StatsBundle.save``.

What is attacked (``test_stats_merge.py`` already checks equal shards against one run, and
``test_errors.py`` / ``test_failures_midrun.py`` the plain refusals and interrupted writes):

* shards of very uneven sizes (one of a single image), with and without ``--positions``,
  merged in another order: their moments against one run over all the images;
* bundles applied to a model that differs by one weight ulp, a node name, or only by how it
  is stored (another folder, weights in an external data file);
* files that load but cannot be a run's: a layer dropped or swapped, no images, images of
  the wrong shape, non-finite moments; empty, text, CRC-damaged and older-format files; a
  malicious pickle (must never run);
* the same shard in another dtype or batching (double counting), ``--mode sequential``,
  ``--seed`` and other calibration sources with ``--stats``;
* what a file holds (no paths, size, the images kept), ``--stats-out`` names;
* the API: a bundle used by ``prune`` is left as it was, ``save`` refuses bad targets,
  calibration-only options are not silently ignored.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli_helpers import run_error, run_ok
import onnx_eprune
from models import ALL_BUILDERS, random_input
from onnx_eprune import UsageError
from onnx_eprune.calibrate.bundle import StatsBundle, merge_bundles
from onnx_eprune.cli import main

MOMENTS = ("mean_x", "mean_y", "cxx", "cxy", "syy")


# -- helpers -----------------------------------------------------------------------------------

def prune_argv(ws, *stats, out="p.onnx", model=None, extra=()):
    argv = ["prune", model or ws["model"], "-o", ws["dir"] / out]
    for s in stats:
        argv += ["--stats", s]
    return argv + ["--sparsity", "0.4", "--device", "cpu", "-q", *extra]


def edited(src, dst, edit):
    """Copy statistics file ``src`` to ``dst`` with ``edit(arrays, meta)`` applied."""
    with np.load(src) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def metadata_record(path):
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["onnx_eprune"])[-1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A model on disk, 64 samples split 20 / 44 into two .npy shards and their statistics files."""
    d = tmp_path_factory.mktemp("bundles")
    model = d / "model.onnx"
    onnx.save(ALL_BUILDERS["cnn_folded"](), str(model))
    x = random_input(64, seed=21)
    np.save(d / "all.npy", x)
    np.save(d / "c0.npy", x[:20])
    np.save(d / "c1.npy", x[20:])
    for i in range(2):
        assert main(["calibrate", str(model), "--calib", str(d / f"c{i}.npy"), "--stats-out", str(d / f"s{i}.npz"),
                     "--device", "cpu", "-q"]) == 0
    return {"dir": d, "model": model, "x": x, "s0": d / "s0.npz", "s1": d / "s1.npz"}


# -- shards add up -------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", [None, 3])
def test_uneven_shards_add_up_to_the_moments_of_one_run(positions):
    """Shards of 1, 59 and 40 images, merged last-first, hold the moments of one run over
    all 100 (Chan's update; rows chosen per image's content, not per shard)."""
    model = ALL_BUILDERS["residual"]()
    x = random_input(100, seed=11)
    whole = onnx_eprune.calibrate(model, x, device="cpu", seed=2, positions=positions)
    cuts = [0, 1, 60, 100]
    shards = [onnx_eprune.calibrate(model, x[a:b], device="cpu", seed=2, positions=positions, batch_size=7)
              for a, b in zip(cuts, cuts[1:])]
    merged = merge_bundles(shards[::-1])
    assert merged.samples == whole.samples == 100
    assert set(merged.consumers) == set(whole.consumers)
    for c, a in whole.consumers.items():
        b = merged.consumers[c]
        assert a.n == b.n > 0
        for name in MOMENTS:
            va, vb = getattr(a, name), getattr(b, name)
            assert va.shape == vb.shape
            assert np.abs(va - vb).max() <= 1e-5 * max(1.0, np.abs(va).max()), (c, name)


def test_cli_uneven_shards_prune_like_one_oneshot_run(ws, capsys):
    """prune --stats of the 20 / 44 shards (given in either order): the channels of one
    one-shot run over all 64 images, weights within 1e-5; the report and the model's
    metadata say one-shot and count all 64 samples."""
    one = onnx_eprune.prune(ws["model"], ws["x"], sparsity=0.4, mode="oneshot", device="cpu")
    ref = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in one.model.graph.initializer}
    for order, out in (((ws["s0"], ws["s1"]), "ab.onnx"), ((ws["s1"], ws["s0"]), "ba.onnx")):
        report = ws["dir"] / f"{out}.json"
        run_ok(capsys, prune_argv(ws, *order, out=out, extra=("--report", report)))
        rep = json.loads(report.read_text())
        assert [g["channels_after"] for g in rep["groups"]] == [g["channels_after"] for g in one.report["groups"]]
        assert rep["mode"] == "oneshot" and rep["samples"] == 64
        record = metadata_record(ws["dir"] / out)
        assert record["mode"] == "oneshot" and record["samples"] == 64
        got = {i.name: numpy_helper.to_array(i).astype(np.float64)
               for i in onnx.load(str(ws["dir"] / out)).graph.initializer}
        assert set(got) == set(ref)
        for name, value in ref.items():
            assert got[name].shape == value.shape
            assert np.abs(got[name] - value).max() <= 1e-5 * max(1.0, np.abs(value).max()), name


def test_stats_without_mode_runs_oneshot_and_says_so(ws, capsys):
    """README: --stats implies --mode oneshot (an explicit --mode sequential is refused:
    tests/test_option_matrix.py). The run says so in an info line, and the report and
    metadata record what really ran."""
    report = ws["dir"] / "seq.json"
    argv = prune_argv(ws, ws["s0"], ws["s1"], out="seq.onnx", extra=("--report", report))
    argv.remove("-q")
    captured = run_ok(capsys, argv)
    assert "one-shot mode" in captured.err
    assert json.loads(report.read_text())["mode"] == "oneshot"
    assert metadata_record(ws["dir"] / "seq.onnx")["mode"] == "oneshot"


def test_reported_seed_is_that_of_the_statistics(ws, capsys):
    """Shards calibrated with --seed 3 give the model of a one-shot --calib run with --seed 3
    (their conv positions were drawn with it), so the provenance says seed 3 when prune gets no
    --seed, and a rerun with the recorded seed gives the same model. Was: ``seed: 0`` (prune's
    default) in the report and metadata."""
    d = ws["dir"]
    for i in range(2):
        run_ok(capsys, ["calibrate", ws["model"], "--calib", d / f"c{i}.npy", "--stats-out", d / f"seed3_{i}.npz",
                        "--seed", "3", "--device", "cpu", "-q"])
    report = d / "seed3.json"
    run_ok(capsys, prune_argv(ws, d / "seed3_0.npz", d / "seed3_1.npz", out="seed3.onnx",
                              extra=("--report", report)))
    assert json.loads(report.read_text())["seed"] == 3
    assert metadata_record(d / "seed3.onnx")["seed"] == 3
    # a --seed given is checked against the files', 0 as any other (the API cannot tell a
    # seed of 0 from its default, and passes it over)
    for seed in ("0", "4"):
        err = run_error(capsys, prune_argv(ws, d / "seed3_0.npz", d / "seed3_1.npz", out="s.onnx",
                                           extra=("--seed", seed)), 2)
        assert f"computed with seed 3, not {seed}" in err
    assert not (d / "s.onnx").exists()
    run_ok(capsys, prune_argv(ws, d / "seed3_0.npz", d / "seed3_1.npz", out="s.onnx", extra=("--seed", "3")))
    assert (d / "s.onnx").read_bytes() == (d / "seed3.onnx").read_bytes()


# -- the bundle belongs to one model ---------------------------------------------------------------

def _one_ulp(model):
    init = model.graph.initializer[0]
    a = numpy_helper.to_array(init).copy()
    a.flat[0] = np.nextafter(a.flat[0], np.float32(np.inf))
    init.CopyFrom(numpy_helper.from_array(a, init.name))


def _rename(model):
    model.graph.node[0].name = "renamed_conv"


@pytest.mark.parametrize("change", [_one_ulp, _rename], ids=["one-weight-ulp", "renamed-node"])
def test_statistics_of_a_slightly_different_model_are_refused(ws, capsys, change):
    """One weight one ulp off or a node renamed: another model, refused before any output."""
    model = onnx.load(str(ws["model"]))
    change(model)
    path = ws["dir"] / f"changed_{change.__name__}.onnx"
    onnx.save(model, str(path))
    out = f"changed_{change.__name__}_p.onnx"
    line = run_error(capsys, prune_argv(ws, ws["s0"], model=path, out=out))
    assert "another model" in line
    assert not (ws["dir"] / out).exists()


def test_a_moved_model_keeps_its_statistics(ws, capsys, tmp_path):
    """The fingerprint is the content: the model copied under another name and folder, or
    passed as a ModelProto, still takes the files."""
    moved = tmp_path / "elsewhere" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.copy(ws["model"], moved)
    run_ok(capsys, prune_argv(ws, ws["s0"], ws["s1"], model=moved, out="moved.onnx"))
    result = onnx_eprune.prune(onnx.load(str(moved)), stats=[ws["s0"], ws["s1"]], sparsity=0.4, device="cpu")
    assert result.report["samples"] == 64


def test_the_same_model_with_external_data_takes_the_statistics(ws, capsys, tmp_path):
    """Saving the same model with ``save_as_external_data`` changes nothing it computes, and
    fingerprint()'s docstring promises that weights in a data file count by their bytes: the
    statistics files fit it. Was: 'the statistics files were computed for another model'."""
    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(ws["model"])), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    run_ok(capsys, prune_argv(ws, ws["s0"], ws["s1"], model=ext, out="ext_p.onnx"))


def test_the_shard_of_another_model_is_named(ws, capsys, tmp_path):
    """With many shards, the one computed on another model is named so the user knows which to
    recompute. Was: 'statistics files come from different models (or a different model than
    given)', no file named."""
    other = tmp_path / "other.onnx"
    onnx.save(ALL_BUILDERS["cnn_bn"](), str(other))
    run_ok(capsys, ["calibrate", other, "--calib", ws["dir"] / "c1.npy", "--stats-out", tmp_path / "foreign.npz",
                    "--device", "cpu", "-q"])
    line = run_error(capsys, prune_argv(ws, ws["s0"], tmp_path / "foreign.npz", out="foreign_p.onnx"))
    assert "foreign.npz" in line


# -- double counting ------------------------------------------------------------------------------

def test_the_same_shard_in_another_dtype_or_batching_is_refused(ws):
    """The same images calibrated again from a float64 file or with another batch size are
    the same shard: refused, not counted twice."""
    x = ws["x"][:20]
    a = onnx_eprune.calibrate(ws["model"], x, device="cpu")
    for again in (onnx_eprune.calibrate(ws["model"], x.astype(np.float64), device="cpu"),
                  onnx_eprune.calibrate(ws["model"], x, device="cpu", batch_size=3)):
        with pytest.raises(UsageError, match="same shard"):
            onnx_eprune.prune(ws["model"], stats=[a, again], sparsity=0.4, device="cpu")
    with pytest.raises(UsageError, match="same shard"):  # a bundle and the file it was saved to
        onnx_eprune.prune(ws["model"], stats=[ws["s0"], onnx_eprune.calibrate(ws["model"], ws["dir"] / "c0.npy",
                                                                             device="cpu")], sparsity=0.4)


# -- files that are not (or no longer) a run's ------------------------------------------------------

def _evil(marker):
    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    return Evil()


@pytest.mark.parametrize("where", ["meta", "moment", "pickle-file"])
def test_a_malicious_pickle_is_never_run(ws, capsys, tmp_path, where):
    """Object arrays are never unpickled (np.load(allow_pickle=False)): refused, no code runs."""
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil_{where}.npz"
    if where == "pickle-file":
        path.write_bytes(pickle.dumps(_evil(marker)))
    else:
        with np.load(ws["s0"]) as f:
            arrays = dict(f)
        arrays["meta" if where == "meta" else "c1.cxx"] = np.array([_evil(marker)], dtype=object)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    line = run_error(capsys, prune_argv(ws, path, out=f"evil_{where}.onnx"))
    assert path.name in line
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, not statistics\n", b"PK\x03\x04" + b"\x00" * 40],
                         ids=["empty", "text", "zip-header-only"])
def test_files_that_are_no_statistics_are_refused(ws, capsys, tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    line = run_error(capsys, prune_argv(ws, path, out="bad.onnx"))
    assert "bad.npz" in line and "statistics file" in line
    assert not (ws["dir"] / "bad.onnx").exists()


def _crc(ws, path):
    raw = bytearray(ws["s0"].read_bytes())
    at = raw.index(b"c2.cxx.npy") + 4000  # inside the member's data, past its header
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _old_format(ws, path):
    edited(ws["s0"], path, lambda arrays, meta: meta.update(format="onnx-eprune-stats/0"))


def _bad_json(ws, path):
    edited(ws["s0"], path, lambda arrays, meta: None)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["meta"] = np.array("{not json")
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage", [_crc, _old_format, _bad_json], ids=["crc", "older-format", "bad-meta-json"])
def test_a_damaged_or_older_file_error_says_what_to_do(ws, capsys, tmp_path, damage):
    """README: the error line names the problem and what to do. A file damaged inside (a
    member's CRC), of an older format version or with an unreadable record is refused with exit
    2, the file's name and the remedy (``onnx-eprune calibrate``); an older file's error names
    its format. Was: the file was named but no remedy given."""
    path = tmp_path / "damaged.npz"
    damage(ws, path)
    line = run_error(capsys, prune_argv(ws, path, out="damaged.onnx"))
    assert "damaged.npz" in line
    assert "onnx-eprune calibrate" in line
    if damage is _old_format:
        assert "onnx-eprune-stats/0" in line


def _drop_layer(arrays, meta):
    last = meta["consumers"].pop()
    for key in [k for k in arrays if k.startswith(f"c{last}.")]:
        del arrays[key]


def _swap_layers(arrays, meta):
    first, last = meta["consumers"][0], meta["consumers"][-1]
    for key in [k for k in arrays if k.startswith(f"c{first}.")]:
        arrays[key] = arrays[f"c{last}." + key.split(".", 1)[1]]


def _no_gain_images(arrays, meta):
    arrays["gain0"] = arrays["gain0"][:0]


def _probe_of_another_shape(arrays, meta):
    arrays["probe0"] = np.ascontiguousarray(arrays["probe0"][:, :1])


@pytest.mark.parametrize("edit", [_drop_layer, _swap_layers, _no_gain_images, _probe_of_another_shape],
                         ids=["layer-dropped", "layers-swapped", "no-gain-images", "probe-shape"])
def test_a_file_that_does_not_fit_the_model_is_a_usage_error(ws, capsys, tmp_path, edit):
    """README: a damaged statistics file is a usage error (exit 2) found before any work, on one
    line that names the file: a layer dropped or swapped, no gain images, probe images of
    another shape. Was: internal errors (KeyError, IndexError, ZeroDivisionError), or for the
    probe images exit 1 'onnxruntime failed to run the model'."""
    path = edited(ws["s0"], tmp_path / "unfit.npz", edit)
    line = run_error(capsys, prune_argv(ws, path, out="unfit.onnx"))
    assert "unfit.npz" in line
    assert not (ws["dir"] / "unfit.onnx").exists()


def test_a_file_with_non_finite_moments_is_named(ws, capsys, tmp_path):
    """calibrate never writes non-finite moments (it refuses an overflowing network), so a NaN
    in a file means it was damaged: a usage error (exit 2) naming the file among the shards.
    Was: exit 1, "the statistics of layer 'gemm_8' are not finite ...", no file named."""
    def poison(arrays, meta):
        cxx = arrays["c2.cxx"].copy()
        cxx[0, 0] = np.nan
        arrays["c2.cxx"] = cxx
    path = edited(ws["s1"], tmp_path / "nan.npz", poison)
    line = run_error(capsys, prune_argv(ws, ws["s0"], path, out="nan.onnx"))
    assert "nan.npz" in line


def test_stats_that_is_a_directory_is_called_one(ws, capsys, tmp_path):
    """As for the model and --calib ('... path is a directory'), a folder given to --stats is
    called a directory, not missing. Was: it was reported as not found."""
    (tmp_path / "shards").mkdir()
    line = run_error(capsys, prune_argv(ws, tmp_path / "shards", out="dir.onnx"))
    assert "is a directory" in line and "not found" not in line


# -- other sources and options with --stats -----------------------------------------------------------

@pytest.mark.parametrize("source", [("--calib", "{d}/all.npy"), ("--calib-random", "16"),
                                    ("--calib-images", "{d}")])
def test_stats_with_another_calibration_source_is_refused(ws, capsys, source):
    argv = prune_argv(ws, ws["s0"], out="both.onnx") + [source[0], source[1].format(d=ws["dir"])]
    line = run_error(capsys, argv)
    assert "--stats" in line
    assert not (ws["dir"] / "both.onnx").exists()


@pytest.mark.parametrize("option", [{"samples": 10}, {"positions": 3}])
def test_api_refuses_calibration_options_with_stats(ws, option):
    """The command line refuses --samples and --positions with --stats (they belong to calibrate
    and would do nothing), and so does ``prune(stats=[...], samples=10)``, naming the option.
    Was: it ran on all 20 samples of the file and said nothing."""
    with pytest.raises(UsageError, match=next(iter(option))):
        onnx_eprune.prune(ws["model"], stats=[ws["s0"]], sparsity=0.4, device="cpu", **option)


def test_few_samples_in_all_the_files_warn(ws, capsys, tmp_path):
    """README: fewer than 16 samples work, with a warning, and shards must hold together at
    least ~128 images. prune --stats over files of 4 samples in all warns. Was: only the
    calibrate run warned, for its shard."""
    np.save(tmp_path / "c4.npy", ws["x"][:4])
    run_ok(capsys, ["calibrate", ws["model"], "--calib", tmp_path / "c4.npy", "--stats-out", tmp_path / "s4.npz",
                    "--device", "cpu", "-q"])
    argv = prune_argv(ws, tmp_path / "s4.npz", out="few.onnx")
    argv.remove("-q")
    captured = run_ok(capsys, argv)
    assert "4 calibration samples" in captured.err


# -- what a file holds, where it goes ---------------------------------------------------------------

def test_a_file_holds_no_paths_and_no_more_than_its_arrays(ws):
    """Portable: no file or folder name inside; its size is that of its arrays plus the zip
    headers (no copy of the model, no pickles); 8 probe images."""
    raw = ws["s0"].read_bytes()
    for name in (str(ws["dir"]), ws["dir"].name, "c0.npy", "model.onnx"):
        assert name.encode() not in raw, name
    with np.load(ws["s0"]) as f:
        payload = sum(f[k].nbytes for k in f.files)
        assert f["probe0"].shape[0] == 8
        assert all(f[k].dtype != object for k in f.files)
    assert payload <= len(raw) <= payload + 16 * 1024


def test_images_kept_for_sensitivities_are_at_most_144():
    """README (Calibrating on many machines): a file holds 'about one in eight, at most 144'
    images that may measure sensitivities: the 128 smallest keys that are 0 mod 8 and the 16
    smallest keys (calibrate/sensitivity.py gain_candidates). With 2048 images it keeps 142.
    (The README said 128 before.)"""
    bundle = onnx_eprune.calibrate(ALL_BUILDERS["cnn_folded"](), random_input(2048, seed=1), device="cpu")
    assert 128 <= len(bundle.gain_images["x"]) <= 144


def test_stats_out_is_written_at_exactly_the_name_given(ws, capsys, tmp_path):
    """np.savez appends '.npz' to a bare name; --stats-out must not: the file is where the
    user said, alone, and prune reads it."""
    out = tmp_path / "shard.stats"
    run_ok(capsys, ["calibrate", ws["model"], "--calib", ws["dir"] / "c0.npy", "--stats-out", out, "--device", "cpu",
                    "-q"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.stats"]
    run_ok(capsys, prune_argv(ws, out, ws["s1"], out="suffix.onnx"))


def test_stats_out_replaces_an_old_file_whole(ws, capsys, tmp_path):
    """An existing --stats-out (another shard's file) is replaced by the new shard: it then
    merges with that other shard instead of being refused as the same one."""
    out = tmp_path / "s.npz"
    shutil.copy(ws["s1"], out)
    run_ok(capsys, ["calibrate", ws["model"], "--calib", ws["dir"] / "c0.npy", "--stats-out", out, "--device", "cpu",
                    "-q"])
    with np.load(out) as new, np.load(ws["s0"]) as s0:
        assert new.files == s0.files
        assert all(np.array_equal(new[k], s0[k]) for k in s0.files)
    run_ok(capsys, prune_argv(ws, out, ws["s1"], out="replaced.onnx"))


# -- Python API -------------------------------------------------------------------------------------

def test_a_single_bundle_is_left_as_it_was(ws, tmp_path):
    """prune's docstring: the bundles are 'left as they were'. A single bundle keeps its moments
    and can still be saved and merged after the run. Was: its scatter matrices were divided by n
    in place and marked normalised, so ``bundle.save`` and later merges raised RuntimeError."""
    bundle = onnx_eprune.calibrate(ws["model"], ws["x"][:20], device="cpu")
    before = {c: {n: getattr(st, n).copy() for n in MOMENTS} for c, st in bundle.consumers.items()}
    first = onnx_eprune.prune(ws["model"], stats=[bundle], sparsity=0.4, device="cpu")
    for c, st in bundle.consumers.items():
        assert not st.normalised
        for n in MOMENTS:
            assert np.array_equal(getattr(st, n), before[c][n]), (c, n)
    bundle.save(tmp_path / "after.npz")
    again = onnx_eprune.prune(ws["model"], stats=[tmp_path / "after.npz", ws["s1"]], sparsity=0.4, device="cpu")
    assert again.report["samples"] == 64
    assert first.report["samples"] == 20


def test_bundle_save_refuses_its_inputs_and_missing_folders(ws, tmp_path):
    """StatsBundle.save never overwrites the model or calibration file it was computed from
    (by any spelling, or through a hard link) and refuses a missing folder."""
    model = tmp_path / "m.onnx"
    calib = tmp_path / "c.npy"
    shutil.copy(ws["model"], model)
    np.save(calib, ws["x"][:20])
    os.link(calib, tmp_path / "calib_link.npy")
    bundle = onnx_eprune.calibrate(model, calib, device="cpu")
    kept = {p: p.read_bytes() for p in (model, calib)}
    for target in (model, tmp_path / "." / "c.npy", tmp_path / "calib_link.npy"):
        with pytest.raises(UsageError, match="an input of this run"):
            bundle.save(target)
    with pytest.raises(UsageError, match="does not exist"):
        bundle.save(tmp_path / "missing" / "s.npz")
    assert all(p.read_bytes() == b for p, b in kept.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "calib_link.npy", "m.onnx"]
    bundle.save(tmp_path / "s.npz")
    assert StatsBundle.load(tmp_path / "s.npz").samples == 20


def test_bundle_save_checks_its_argument(ws):
    """README: a wrong argument type is a one-line UsageError that names the argument, as
    ``PruneResult.save`` does ('path must be a str or os.PathLike, not int'). Was: pathlib's
    TypeError('expected str, bytes or os.PathLike object, not int')."""
    bundle = onnx_eprune.calibrate(ws["model"], ws["x"][:20], device="cpu")
    with pytest.raises(UsageError, match=r"path must be a str or os\.PathLike, not int"):
        bundle.save(3)
