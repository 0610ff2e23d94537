"""The ``calibrate`` command end to end, as a user chains it with the files it writes.

What is attacked (``test_stats_merge.py``, ``test_stats_bundles_adversarial.py``,
``test_calibration_inputs.py``, ``test_errors.py`` and ``test_failures_midrun.py`` already
cover equal shards, damaged files, the plain refusals and interrupted writes):

* ``calibrate --calib-images`` in shards (folders of PNGs, with ``--mean``/``--std``) against
  one folder and against a one-shot ``prune --calib-images`` run; the moments of an image
  folder against the same preprocessing done by hand into an ``.npy``;
* preprocessing flags that disagree with the model input (channels, size, layout, per-channel
  values, image options without images): refused by ``calibrate`` before any file is
  written, an earlier statistics file left whole;
* shards that cannot be one run: a dynamic-size model calibrated at two resolutions, shards
  that overlap (one a subset of the other), a file whose numbers were edited;
* what ``prune --stats`` reports: fidelity against an independent recomputation on the images
  the files keep, parameters and MACs against a count on the written model (at the shards'
  resolution for a dynamic model), targets other than the one ``calibrate()`` was given,
  ``--keep-ratio 1.0`` as the identity, fixed-batch and batch-less models;
* ``sweep --stats`` and ``search --stats``: each model the bytes of ``prune --stats`` at its
  target, fidelity on the images the files keep, the options the files cannot serve refused;
* files mixed up between options (a statistics file to ``--calib``, calibration data to
  ``--stats``), ``--seed`` against the files' seed, a model re-saved or
  edited after calibration, a model with nothing to prune, an output over one of the
  ``--calib-images`` inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_helpers import run_error, run_ok
import onnx_eprune
from models import (
    ALL_BUILDERS,
    conv_gemm_costs,
    one_image_detector,
    random_input,
    residual,
    run_model,
)
from onnx_eprune import UsageError
from onnx_eprune.calibrate.bundle import StatsBundle
from onnx_eprune.cli import main

MOMENTS = ("mean_x", "mean_y", "cxx", "cxy", "syy")


# -- helpers -----------------------------------------------------------------------------------

def calibrate_argv(model, out, *source, extra=()):
    return ["calibrate", model, *source, "--stats-out", out, "--device", "cpu", "-q", *extra]


def prune_stats_argv(model, out, *stats, target=("--sparsity", "0.4"), extra=()):
    argv = ["prune", model, "-o", out]
    for s in stats:
        argv += ["--stats", s]
    return argv + [*target, "--device", "cpu", "-q", *extra]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for name, value in wa.items():
        assert wb[name].shape == value.shape, name
        assert np.abs(wb[name] - value).max() <= rtol * max(1.0, np.abs(value).max()), name


def kept(report: dict) -> list:
    return [g["channels_after"] for g in report["groups"]]


def edited(src: Path, dst: Path, edit) -> Path:
    """Copy statistics file ``src`` to ``dst`` with ``edit(arrays, meta)`` applied."""
    with np.load(src) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def dynamic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


def fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return model


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The folded CNN on disk, 96 samples in two .npy shards (40 / 56) and their statistics."""
    d = tmp_path_factory.mktemp("calibrate_cmd")
    model = d / "model.onnx"
    onnx.save(ALL_BUILDERS["cnn_folded"](), str(model))
    x = random_input(96, seed=31)
    np.save(d / "all.npy", x)
    np.save(d / "c0.npy", x[:40])
    np.save(d / "c1.npy", x[40:])
    for i in range(2):
        assert main(calibrate_argv(str(model), str(d / f"s{i}.npz"), "--calib", str(d / f"c{i}.npy"))) == 0
    return {"dir": d, "model": model, "x": x, "s0": d / "s0.npz", "s1": d / "s1.npz"}


@pytest.fixture(scope="module")
def Image():
    return pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, Image):
    """42 RGB photos of 20x24 pixels: all in ``all/``, and split round-robin over ``shard0..2/``."""
    d = tmp_path_factory.mktemp("photos")
    for i in range(42):
        pixels = np.random.default_rng(100 + i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        for folder in ("all", f"shard{i % 3}"):
            (d / folder).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(d / folder / f"{i:03d}.png")
    return d


# -- image folders in shards ---------------------------------------------------------------------

IMAGE_FLAGS = ("--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3")


@pytest.fixture(scope="module")
def photo_stats(ws, photos, tmp_path_factory):
    """Statistics of the whole photo folder and of its three shards (per-channel --mean/--std)."""
    d = tmp_path_factory.mktemp("photo_stats")
    assert main(calibrate_argv(str(ws["model"]), str(d / "all.npz"), "--calib-images", str(photos / "all"),
                               extra=IMAGE_FLAGS)) == 0
    for k in range(3):
        assert main(calibrate_argv(str(ws["model"]), str(d / f"s{k}.npz"), "--calib-images",
                                   str(photos / f"shard{k}"), extra=IMAGE_FLAGS)) == 0
    return d


def _prune_three_ways(ws, photos, photo_stats, capsys, tmp_path, extra=()):
    d = photo_stats
    runs = {"whole": ["--stats", d / "all.npz"],
            "shards": ["--stats", d / "s2.npz", "--stats", d / "s0.npz", "--stats", d / "s1.npz"],
            "oneshot": ["--calib-images", photos / "all", *IMAGE_FLAGS, "--mode", "oneshot"]}
    models, reports = {}, {}
    for name, source in runs.items():
        out, rep = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        run_ok(capsys, ["prune", ws["model"], "-o", out, *source, "--sparsity", "0.4", "--device", "cpu", "-q",
                        "--report", rep, *extra])
        models[name], reports[name] = onnx.load(str(out)), json.loads(rep.read_text())
    return models, reports


def test_image_folder_shards_prune_like_one_folder_and_like_one_oneshot_run(ws, photos, photo_stats, capsys,
                                                                            tmp_path):
    """Three folders of photos calibrated separately (per-channel --mean/--std), pruned from
    their files in another order: the channels and weights of the whole folder's file, and
    of one ``prune --calib-images --mode oneshot`` over it; every report counts all 42 and
    says one-shot. (A fixed re-fit ridge: see the next test for the default.)"""
    models, reports = _prune_three_ways(ws, photos, photo_stats, capsys, tmp_path, ("--refit-ridge", "0.01"))
    for name in ("shards", "oneshot"):
        assert kept(reports[name]) == kept(reports["whole"]), name
        assert_same_model(models["whole"], models[name])
    assert {r["samples"] for r in reports.values()} == {42}
    assert {r["mode"] for r in reports.values()} == {"oneshot"}


@pytest.mark.xfail(strict=True, reason="KNOWN LIMIT: with the default --refit-ridge auto-thin, the shards' files "
                                       "re-fit gemm_8 with ridge 10 where one run over the same 42 photos picks "
                                       "0.003: weights differ by 2% (README: give a fixed --refit-ridge)")
def test_image_folder_shards_match_one_run_with_the_default_ridge(ws, photos, photo_stats, capsys, tmp_path):
    """README: shards give one one-shot run over all the images 'up to float rounding (the
    same channels; re-fitted weights within about 1e-5, relative)'. With the default
    auto-thin ridge and 42 photos (a thin Gemm: 42 rows for 224 kept inputs), the whole
    folder's file and a one-shot --calib-images run choose the ridge 0.003 for gemm_8, the
    three shards' files (in any split: 2, 3, 4, 6, 7 shards) choose 10: the re-fitted
    weights differ by 0.004 on a scale of 0.2, and report.refit_ridges disagrees. Cause:
    select/reconstruct.py gcv_scores scores ridges whose degrees of freedom come near the
    row count: RSS, a difference of float32-accumulated moments (residual - explained
    energy), is multiplied by 1/(1 - df/rows)**2, so rounding differences of the merged
    moments decide auto_ridge's argmin."""
    models, reports = _prune_three_ways(ws, photos, photo_stats, capsys, tmp_path)
    assert reports["shards"]["refit_ridges"] == reports["whole"]["refit_ridges"]
    assert_same_model(models["whole"], models["shards"])


def test_image_folder_moments_equal_the_preprocessing_done_by_hand(ws, photos, Image, tmp_path, capsys):
    """README: each image is resized (short side to the target, centre crop) and normalised
    as (pixel * scale - mean) / std. The statistics of ``--calib-images`` with --scale 1/255
    and per-channel mean/std are those of an .npy holding that computation done by hand."""
    hand = []
    for path in sorted((photos / "all").iterdir()):
        with Image.open(path) as img:  # 20x24: the centred 20x20 square, scaled to 16x16
            px = np.asarray(img.convert("RGB").resize((16, 16), Image.BILINEAR, box=(2, 0, 22, 20)), np.float32)
        hand.append(((px * np.float32(1 / 255) - np.array([0.5, 0.4, 0.3], np.float32))
                     / np.array([0.2, 0.25, 0.3], np.float32)).transpose(2, 0, 1))
    np.save(tmp_path / "hand.npy", np.stack(hand))
    run_ok(capsys, calibrate_argv(ws["model"], tmp_path / "img.npz", "--calib-images", photos / "all",
                                  extra=IMAGE_FLAGS))
    run_ok(capsys, calibrate_argv(ws["model"], tmp_path / "hand.npz", "--calib", tmp_path / "hand.npy"))
    a, b = StatsBundle.load(tmp_path / "img.npz"), StatsBundle.load(tmp_path / "hand.npz")
    assert a.samples == b.samples == 42 and set(a.consumers) == set(b.consumers)
    for c, st in a.consumers.items():
        for name in MOMENTS:
            va, vb = getattr(st, name), getattr(b.consumers[c], name)
            assert np.abs(va - vb).max() <= 1e-4 * max(1.0, np.abs(va).max()), (c, name)


# -- preprocessing that disagrees with the model ----------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (("--channels", "GRAY"), ("3 channels", "GRAY")),
    (("--size", "24"), ("--size", "16")),
    (("--layout", "NHWC"), ("--layout",)),
    (("--mean", "0.5,0.5"), ("--mean", "2 values")),
    (("--std", "0.2,0.2,0.2,0.2"), ("--std", "4 values")),
], ids=["gray-for-rgb", "size", "layout", "mean-of-two", "std-of-four"])
def test_calibrate_refuses_preprocessing_the_model_contradicts(ws, photos, capsys, tmp_path, flags, words):
    """An image option that the model's (N, 3, 16, 16) input contradicts: exit 2, one line
    that names it, before any work; an earlier --stats-out keeps its bytes."""
    out = tmp_path / "s.npz"
    shutil.copy(ws["s0"], out)
    before = out.read_bytes()
    line = run_error(capsys, calibrate_argv(ws["model"], out, "--calib-images", photos / "shard0", extra=flags))
    assert all(w in line for w in words), line
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


@pytest.mark.parametrize("flags", [("--mean", "0.5"), ("--resize", "stretch"), ("--size", "16")])
def test_image_options_with_an_array_file_are_refused(ws, capsys, tmp_path, flags):
    """calibrate --calib FILE with an image option: the option would do nothing; exit 2
    naming it and --calib-images, nothing written."""
    line = run_error(capsys, calibrate_argv(ws["model"], tmp_path / "s.npz", "--calib", ws["dir"] / "c0.npy",
                                            extra=flags))
    assert flags[0] in line and "--calib-images" in line
    assert not (tmp_path / "s.npz").exists()


def test_calibration_in_the_wrong_layout_is_refused_without_a_file(ws, capsys, tmp_path):
    """An .npy exported channels-last (N, 16, 16, 3) for the NCHW model: exit 2 naming the
    shapes; no statistics file."""
    np.save(tmp_path / "nhwc.npy", ws["x"][:20].transpose(0, 2, 3, 1))
    line = run_error(capsys, calibrate_argv(ws["model"], tmp_path / "s.npz", "--calib", tmp_path / "nhwc.npy"))
    assert "(20, 16, 16, 3)" in line
    assert not (tmp_path / "s.npz").exists()


# -- shards that cannot be one run -------------------------------------------------------------------

def test_shards_at_two_resolutions_are_refused_by_name(capsys, tmp_path):
    """A model with dynamic height and width, one shard calibrated at 16x16 and one at 24x24:
    their conv rows come from other positions and their images do not stack: exit 2, one
    line naming the shard that does not add up, no output (the API: UsageError). Once it
    was an internal ValueError from concatenating the images."""
    model = tmp_path / "dyn.onnx"
    onnx.save(dynamic_hw(residual()), str(model))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "small.npy", rng.normal(size=(20, 3, 16, 16)).astype(np.float32))
    np.save(tmp_path / "large.npy", rng.normal(size=(20, 3, 24, 24)).astype(np.float32))
    for name in ("small", "large"):
        run_ok(capsys, calibrate_argv(model, tmp_path / f"{name}.npz", "--calib", tmp_path / f"{name}.npy"))
    with pytest.raises(UsageError):
        onnx_eprune.prune(model, stats=[tmp_path / "small.npz", tmp_path / "large.npz"], keep_ratio=0.5,
                          device="cpu")
    line = run_error(capsys, prune_stats_argv(model, tmp_path / "p.onnx", tmp_path / "small.npz",
                                              tmp_path / "large.npz", target=("--keep-ratio", "0.5")))
    assert "large.npz" in line
    assert not (tmp_path / "p.onnx").exists()


def test_one_dynamic_size_shard_prunes_at_its_resolution(capsys, tmp_path):
    """A dynamic-size model calibrated at 24x24 only: prune --stats --flops-reduction counts
    the MACs at 24x24 (as an independent count on the file with that size fixed), keeps the
    dynamic axes, and picks the channels of a one-shot --calib run on the same images."""
    model = tmp_path / "dyn.onnx"
    onnx.save(dynamic_hw(residual()), str(model))
    x = np.random.default_rng(5).normal(size=(24, 3, 24, 24)).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    run_ok(capsys, calibrate_argv(model, tmp_path / "s.npz", "--calib", tmp_path / "c.npy"))
    run_ok(capsys, prune_stats_argv(model, tmp_path / "p.onnx", tmp_path / "s.npz",
                                    target=("--flops-reduction", "0.3"), extra=("--report", tmp_path / "r.json")))
    report = json.loads((tmp_path / "r.json").read_text())
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    assert [d.dim_param for d in pruned.graph.input[0].type.tensor_type.shape.dim[2:]] == ["H", "W"]

    def at_24(m):
        m = onnx.ModelProto.FromString(m.SerializeToString())
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = 24
        return conv_gemm_costs(m)
    params_before, macs_before = at_24(onnx.load(str(model)))
    params_after, macs_after = at_24(pruned)
    assert (report["params"]["before"], report["params"]["after"]) == (params_before, params_after)
    assert (report["macs"]["before"], report["macs"]["after"]) == (macs_before, macs_after)
    assert 1 - macs_after / macs_before >= 0.3
    one = onnx_eprune.prune(str(model), x, flops_reduction=0.3, mode="oneshot", device="cpu")
    assert kept(one.report) == kept(report)


def test_overlapping_shards_are_refused(ws, capsys, tmp_path):
    """README: the same shard twice is refused, 'or its samples count twice'. A shard of all
    64 images and one of its first 48 (``--samples 48`` of the same file) share 48 images,
    among them images both files keep for the sensitivities (chosen by content, so detectable).
    Exit 2 naming both files, nothing written (once the report and metadata said 112
    samples, and the shared images weighed twice in every moment)."""
    np.save(tmp_path / "c.npy", ws["x"][:64])
    run_ok(capsys, calibrate_argv(ws["model"], tmp_path / "whole.npz", "--calib", tmp_path / "c.npy"))
    run_ok(capsys, calibrate_argv(ws["model"], tmp_path / "part.npz", "--calib", tmp_path / "c.npy",
                                  extra=("--samples", "48")))
    line = run_error(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", tmp_path / "whole.npz",
                                              tmp_path / "part.npz"))
    assert "whole.npz" in line and "part.npz" in line
    assert not (tmp_path / "p.onnx").exists()


def _more_samples(arrays, meta):
    meta["samples"] = meta["samples"] * 50


def _scaled_moment(arrays, meta):
    arrays["c1.cxx"] = arrays["c1.cxx"] * 2


def _other_seed(arrays, meta):
    meta["seed"] = 7


@pytest.mark.parametrize("edit", [_more_samples, _scaled_moment, _other_seed], ids=["samples", "moment", "seed"])
def test_an_edited_statistics_file_is_refused(ws, capsys, tmp_path, edit):
    """README: 'a file that is damaged, edited, of another version or for another model is
    refused by name'. A file whose record says 50x the samples it was computed on (its
    Gemm layer's row count still says 40), whose scatter matrix was doubled, or whose seed
    was changed: exit 2 naming the file, nothing written (the file's digest no longer
    matches; once the report and the model's metadata claimed 2000 samples or seed 7)."""
    path = edited(ws["s0"], tmp_path / "edited.npz", edit)
    line = run_error(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", path))
    assert "edited.npz" in line
    assert not (tmp_path / "p.onnx").exists()


# -- what prune --stats reports ------------------------------------------------------------------------

def test_fidelity_of_a_stats_run_matches_a_recomputation(ws, capsys, tmp_path):
    """Three shards given last-first: the report's fidelity is measured on the images the
    files keep for the sensitivities (README), in the order given. Running both models on
    those images gives the same relative error and top-1 agreement, over that many images."""
    x = random_input(300, seed=8)
    files = []
    for i, part in enumerate(np.array_split(x, 3)):
        np.save(tmp_path / f"q{i}.npy", part)
        files.append(tmp_path / f"q{i}.npz")
        run_ok(capsys, calibrate_argv(ws["model"], files[-1], "--calib", tmp_path / f"q{i}.npy"))
    order = files[::-1]
    run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", *order, target=("--sparsity", "0.5"),
                                    extra=("--report", tmp_path / "r.json")))
    report = json.loads((tmp_path / "r.json").read_text())
    fidelity = report["fidelity_on_calibration"]
    images = np.concatenate([np.load(f)["gain0"] for f in order])
    assert 3 * 16 <= fidelity["samples"] == min(len(images), 256)
    images = images[:fidelity["samples"]]
    a = run_model(onnx.load(str(ws["model"])), images)["y"].astype(np.float64)
    b = run_model(onnx.load(str(tmp_path / "p.onnx")), images)["y"].astype(np.float64)
    assert fidelity["outputs"]["y"]["relative_error"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(a),
                                                                       rel=1e-6)
    assert fidelity["outputs"]["y"]["top1_agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))
    assert report["samples"] == 300


@pytest.mark.parametrize("target", [("--sparsity", "0.5"), ("--flops-reduction", "0.2"), ("--keep-ratio", "0.5")],
                         ids=["sparsity", "flops", "keep-ratio"])
def test_one_set_of_files_serves_any_target(ws, capsys, tmp_path, target):
    """The files of a calibrate run (and of its API twin) serve every kind of target: the
    report's parameters and MACs are those counted on the written model, the target is met,
    the model passes the checker and keeps its interface."""
    bundle = onnx_eprune.calibrate(str(ws["model"]), ws["x"][:40], device="cpu")
    bundle.save(tmp_path / "api.npz")
    rep = tmp_path / "r.json"
    run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", tmp_path / "api.npz", ws["s1"], target=target,
                                    extra=("--report", rep)))
    report = json.loads(rep.read_text())
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    params, macs = conv_gemm_costs(pruned)
    assert (report["params"]["after"], report["macs"]["after"]) == (params, macs)
    assert (report["params"]["before"], report["macs"]["before"]) == conv_gemm_costs(onnx.load(str(ws["model"])))
    assert report["samples"] == 96 and report["target"]["value"] == float(target[1])
    if target[0] == "--sparsity":
        assert 1 - params / report["params"]["before"] >= 0.5
    elif target[0] == "--flops-reduction":
        assert 1 - macs / report["macs"]["before"] >= 0.2
    out = run_model(pruned, ws["x"][:4])["y"]
    assert out.shape == (4, 10) and np.isfinite(out).all()


def test_keep_ratio_one_from_statistics_is_the_same_function(ws, capsys, tmp_path):
    """README: --keep-ratio 1.0 gives back the same function, from statistics files too."""
    run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", ws["s0"], ws["s1"],
                                    target=("--keep-ratio", "1.0")))
    x = random_input(16, seed=77)
    a = run_model(onnx.load(str(ws["model"])), x)["y"]
    b = run_model(onnx.load(str(tmp_path / "p.onnx")), x)["y"]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [lambda: fixed_batch(ALL_BUILDERS["cnn_folded"](), 3), one_image_detector],
                         ids=["fixed-batch-3", "no-batch-axis"])
def test_shards_of_fixed_and_batchless_models_add_up(build, tmp_path):
    """A model exported for a fixed batch of 3 (shards of 7 and 23: neither a multiple) and
    one that takes a single image without a batch axis: the shards' files prune like one
    one-shot run over all 30 images, and the input keeps its fixed shape."""
    model = tmp_path / "m.onnx"
    onnx.save(build(), str(model))
    x = random_input(30, seed=3)
    shards = []
    for i, part in enumerate(np.split(x, [7])):
        onnx_eprune.calibrate(str(model), part, device="cpu").save(tmp_path / f"s{i}.npz")
        shards.append(tmp_path / f"s{i}.npz")
    merged = onnx_eprune.prune(str(model), stats=shards, keep_ratio=0.5, device="cpu")
    one = onnx_eprune.prune(str(model), x, keep_ratio=0.5, mode="oneshot", device="cpu")
    assert kept(merged.report) == kept(one.report) and merged.report["samples"] == 30
    assert_same_model(one.model, merged.model)
    assert merged.model.graph.input[0].type == onnx.load(str(model)).graph.input[0].type


# -- files mixed up, seeds, models changed after calibration -----------------------------------------

@pytest.mark.parametrize("wrong", [
    "stats-file-to-calib",
    "npz-calibration-to-stats",
    "npy-calibration-to-stats",
])
def test_a_file_given_to_the_wrong_option_says_which_option_it_belongs_to(ws, capsys, tmp_path, wrong):
    """README: the error line names the problem and what to do. A file that belongs to the
    other option says so, as an .npy given to --stats does ('calibration data goes to
    --calib'). Once a statistics file given to --calib got 'calibration data lacks model
    input(s) x (has: meta, c1.n, ...)' and a calibration .npz given to --stats was called a
    damaged statistics file."""
    if wrong == "stats-file-to-calib":
        argv = ["prune", ws["model"], "-o", tmp_path / "p.onnx", "--calib", ws["s0"], "--sparsity", "0.4",
                "--device", "cpu", "-q"]
        want = "--stats"
    else:
        source = tmp_path / "calib.npz" if wrong.startswith("npz") else ws["dir"] / "c0.npy"
        np.savez(tmp_path / "calib.npz", x=ws["x"][:20])
        argv = prune_stats_argv(ws["model"], tmp_path / "p.onnx", source)
        want = "--calib"
    line = run_error(capsys, argv)
    assert want in line, line
    assert not (tmp_path / "p.onnx").exists()


# -- sweep and search from statistics files -------------------------------------------------------

def test_sweep_and_search_from_statistics_files_write_what_prune_writes(ws, capsys, tmp_path):
    """sweep --stats over two shards, without held-out data: at each target the bytes that
    prune --stats writes, recorded as one-shot, its fidelity measured on the images the
    files keep (an independent recomputation agrees). search --stats with held-out data:
    prune --stats's model at the target it finds."""
    shards = ("--stats", ws["s0"], "--stats", ws["s1"])
    sw = tmp_path / "sw"
    run_ok(capsys, ["sweep", ws["model"], *shards, "--sparsity", "0.5", "0.3", "--report-dir", sw, "--save-models",
                    "--device", "cpu", "-q"])
    record = json.loads((sw / "sweep.json").read_text())
    assert record["mode"] == "oneshot" and [r["target"] for r in record["runs"]] == [0.3, 0.5]
    images = np.concatenate([np.load(f)["gain0"] for f in (ws["s0"], ws["s1"])])[:256]
    original = run_model(onnx.load(str(ws["model"])), images)["y"].astype(np.float64)
    for run in record["runs"]:
        target = f"{run['target']:g}"
        run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", ws["s0"], ws["s1"],
                                        target=("--sparsity", target)))
        swept = sw / f"pruned_sparsity_{target}.onnx"
        assert swept.read_bytes() == (tmp_path / "p.onnx").read_bytes()
        assert run["fidelity_on"].startswith(f"{len(images)} of the calibration samples that the statistics files")
        pruned = run_model(onnx.load(str(swept)), images)["y"].astype(np.float64)
        assert run["fidelity"]["y"]["relative_error"] == pytest.approx(
            np.linalg.norm(pruned - original) / np.linalg.norm(original), rel=1e-6)
    np.save(tmp_path / "held.npy", random_input(32, seed=77))
    run_ok(capsys, ["search", ws["model"], *shards, "-o", tmp_path / "s.onnx", "--max-error", "0.3", "--resolution",
                    "0.1", "--data", tmp_path / "held.npy", "--report-dir", tmp_path / "sr", "--device", "cpu", "-q"])
    found = json.loads((tmp_path / "sr" / "search.json").read_text())
    assert found["mode"] == "oneshot" and found["runs"][0]["fidelity_on"] == "32 held-out samples"
    run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", ws["s0"], ws["s1"],
                                    target=("--sparsity", f"{found['search']['best']:g}")))
    assert (tmp_path / "s.onnx").read_bytes() == (tmp_path / "p.onnx").read_bytes()


def test_sweep_and_search_from_statistics_files_through_the_api(ws):
    """``stats=`` as for prune: the same models as prune(stats=...); calibration data as
    well, or neither, refused by name; the search counts the files among its inputs."""
    model, shards = str(ws["model"]), [ws["s0"], ws["s1"]]
    points = onnx_eprune.sweep(model, None, [0.4], stats=shards, device="cpu")
    alone = onnx_eprune.prune(model, stats=shards, sparsity=0.4, device="cpu")
    assert points[0].model.SerializeToString() == alone.model.SerializeToString()
    found = onnx_eprune.search(model, None, max_error=0.3, resolution=0.2, stats=shards, device="cpu")
    assert {Path(ws["s0"]).resolve(), Path(ws["s1"]).resolve()} <= {p.resolve() for p in found.inputs}
    for call in (lambda: onnx_eprune.sweep(model, ws["x"], [0.4], stats=shards),
                 lambda: onnx_eprune.search(model, None, max_error=0.3),
                 lambda: onnx_eprune.search(model, None, max_error=0.3, stats=ws["s0"])):
        with pytest.raises(UsageError, match="stats"):
            call()


@pytest.mark.parametrize("command", ["sweep", "search"])
@pytest.mark.parametrize("extra, words", [(("--calib", "c0.npy"), "not allowed with"),
                                          (("--mode", "sequential"), "--mode sequential"),
                                          (("--positions", "3"), "--positions"),
                                          (("--samples", "8"), "--samples")],
                         ids=["with-calib", "sequential", "positions", "samples"])
def test_sweep_and_search_refuse_what_statistics_files_cannot_do(ws, capsys, tmp_path, command, extra, words):
    """Exit 2 on one line that names the option, before any work: no folder, no model."""
    extra = [ws["dir"] / v if v.endswith(".npy") else v for v in extra]
    argv = [command, ws["model"], "--stats", ws["s0"], *extra, "--report-dir", tmp_path / "out", "--device", "cpu"]
    argv += ["--sparsity", "0.3"] if command == "sweep" else ["-o", tmp_path / "p.onnx", "--max-error", "0.3"]
    line = run_error(capsys, argv)
    assert words in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.onnx").exists()


def test_an_explicit_other_seed_is_refused_and_the_files_seed_is_used(ws, capsys, tmp_path):
    """Shards calibrated with --seed 3: prune --stats --seed 5 is refused (exit 2, naming both
    seeds, nothing written); --seed 3 runs and records seed 3."""
    for i in range(2):
        run_ok(capsys, calibrate_argv(ws["model"], tmp_path / f"s{i}.npz", "--calib", ws["dir"] / f"c{i}.npy",
                                      extra=("--seed", "3")))
    shards = (tmp_path / "s0.npz", tmp_path / "s1.npz")
    line = run_error(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", *shards, extra=("--seed", "5")))
    assert "3" in line and "5" in line and "seed" in line
    assert not (tmp_path / "p.onnx").exists()
    run_ok(capsys, prune_stats_argv(ws["model"], tmp_path / "p.onnx", *shards,
                                    extra=("--seed", "3", "--report", tmp_path / "r.json")))
    assert json.loads((tmp_path / "r.json").read_text())["seed"] == 3
    # a sweep without --seed records the files' seed too
    run_ok(capsys, ["sweep", ws["model"], "--stats", shards[0], "--stats", shards[1], "--sparsity", "0.4",
                    "--report-dir", tmp_path / "sw", "--device", "cpu", "-q"])
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["seed"] == 3
    # the API tells an explicit seed of 0 from none given, as the command line does
    for seed in (0, 5):
        with pytest.raises(UsageError, match=f"seed 3, not {seed}"):
            onnx_eprune.prune(str(ws["model"]), stats=list(shards), sparsity=0.4, seed=seed, device="cpu")
    assert onnx_eprune.prune(str(ws["model"]), stats=list(shards), sparsity=0.4, device="cpu").report["seed"] == 3


def test_a_resaved_model_keeps_its_files_and_a_pruned_one_does_not(ws, capsys, tmp_path):
    """The model loaded and saved again under another name takes the files (same content);
    the model pruned from them is another model: refused by name, nothing written."""
    onnx.save(onnx.load(str(ws["model"])), str(tmp_path / "again.onnx"))
    run_ok(capsys, prune_stats_argv(tmp_path / "again.onnx", tmp_path / "p.onnx", ws["s0"], ws["s1"]))
    line = run_error(capsys, prune_stats_argv(tmp_path / "p.onnx", tmp_path / "pp.onnx", ws["s0"], ws["s1"]))
    assert "another model" in line and "s0.npz" in line
    assert not (tmp_path / "pp.onnx").exists()


def test_calibrate_says_what_it_wrote_with_samples_and_images(ws, photos, capsys, tmp_path):
    """Without -q, calibrate's line counts the layers and samples that the file holds:
    --samples 10 of 40, and an image folder of 14 photos among junk files."""
    out = tmp_path / "ten.npz"
    captured = run_ok(capsys, [a for a in calibrate_argv(ws["model"], out, "--calib", ws["dir"] / "c0.npy",
                                                         extra=("--samples", "10")) if a != "-q"])
    bundle = StatsBundle.load(out)
    assert bundle.samples == 10
    assert f"wrote statistics of {len(bundle.consumers)} layers over 10 samples to {out}" in captured.out
    folder = tmp_path / "mixed"
    shutil.copytree(photos / "shard1", folder)
    np.save(folder / "extra.npy", ws["x"][:3])  # not an image: not read
    (folder / "notes.txt").write_text("hi")
    captured = run_ok(capsys, [a for a in calibrate_argv(ws["model"], tmp_path / "img.npz", "--calib-images", folder)
                               if a != "-q"])
    n = len(list((photos / "shard1").iterdir()))
    assert StatsBundle.load(tmp_path / "img.npz").samples == n == 14
    assert f"over {n} samples" in captured.out


def _no_prunable_model() -> onnx.ModelProto:
    """Conv(3->10) -> GAP -> Flatten -> output: its only channels are the input's and the output's."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"], name="flatten")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_calibrate_on_a_model_with_nothing_to_prune_fails_and_writes_nothing(ws, capsys, tmp_path):
    """README: a model with no prunable channel group is a runtime error: 'the run fails and
    writes nothing, and onnx-eprune inspect MODEL shows why'. calibrate too exits 1 with
    that line and writes no --stats-out (once it wrote 'statistics of 0 layers', a file
    every later prune --stats rejects)."""
    model = tmp_path / "frozen.onnx"
    onnx.save(_no_prunable_model(), str(model))
    line = run_error(capsys, calibrate_argv(model, tmp_path / "s.npz", "--calib", ws["dir"] / "c0.npy"), code=1)
    assert "no prunable channel group" in line and "inspect" in line
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("command", ["calibrate", "prune"])
def test_an_output_never_replaces_an_input_image(ws, Image, capsys, tmp_path, command):
    """Rule: the input is never overwritten. The photos under --calib-images are inputs: an
    output path that names one of them (a slip of tab completion) is refused with exit 2
    before any work, and the photo keeps its bytes (once the photo was replaced by the
    statistics or the model)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    victim = folder / "0.png"
    before = victim.read_bytes()
    if command == "calibrate":
        argv = calibrate_argv(ws["model"], victim, "--calib-images", folder)
    else:
        argv = ["prune", ws["model"], "-o", victim, "--calib-images", folder, "--keep-ratio", "0.5", "--method", "l1",
                "--device", "cpu", "-q"]
    status = main([str(a) for a in argv])
    capsys.readouterr()
    assert victim.read_bytes() == before
    assert status == 2
