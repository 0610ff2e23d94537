"""Combinations of the run options, through ``onnx_eprune.prune`` and the command line.

What this file attacks: ``--mode`` (sequential / oneshot) x ``--method`` (every method) x
``--no-reconstruct`` x ``--refit-ridge`` (numbers, ``auto``, ``auto-thin``) x ``--min-keep``
x ``--round-to`` x ``--exclude`` x the target kind (``--sparsity``, ``--flops-reduction``,
``--keep-ratio``) x ``--stats``, sampled rather than the full product. For each
combination it checks that the run does not crash, that the written model passes the checker
and runs in onnxruntime, that every option has the documented effect (kept counts on the
``--round-to`` grid and above the ``--min-keep`` floor, excluded groups whole, ``--keep-ratio``
counts by the README's rule, the re-fit ridge actually moving the weights, ``--no-reconstruct``
slicing them), that the report and the model's provenance record what was used and count what
was written (parameters and MACs recounted here from the model itself), and that combinations
that make an option meaningless are refused or at least said, not silently run.

The models are the tiny ones of ``tests/models.py`` (16x16 inputs) with 48 calibration
samples, so every run takes well under a second.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, shape_inference

from cli_helpers import run_error
import onnx_eprune
from models import (
    conv_bn_relu_pool_flatten_gemm,
    depthwise,
    random_input,
    residual,
    run_model,
)
from onnx_eprune.cli import main

METHODS = ("entropic", "lasso", "thinet", "l1", "random")
MODES = ("sequential", "oneshot")
CALIB = random_input(48, seed=1)
FRESH = random_input(6, seed=11)

BUILDERS = {
    "folded": lambda: conv_bn_relu_pool_flatten_gemm(True),
    "bn": lambda: conv_bn_relu_pool_flatten_gemm(False),
    "residual": residual,
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in BUILDERS.items()}


# -- independent recounts ----------------------------------------------------------------------

def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def recount(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, MACs per sample) of the Conv and Gemm layers of ``model``, counted from
    the file itself: weights and biases once each; a Conv's weight times its output pixels,
    a Gemm's weight once."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(fixed)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = _weights(model)
    params, macs, seen = 0, 0, set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        for name in node.input[1:]:
            if name and name not in seen:
                seen.add(name)
                params += weights[name].size
        w = weights[node.input[1]]
        macs += w.size * (int(np.prod(shapes[node.output[0]][2:])) if node.op_type == "Conv" else 1)
    return params, macs


def provenance(model: onnx.ModelProto) -> list:
    return json.loads({p.key: p.value for p in model.metadata_props}["onnx_eprune"])


def uniform_count(channels: int, ratio: float, step: int, least: int) -> int:
    """The README's --keep-ratio rule, written out independently: round(R*C), moved to the
    nearest count that is a multiple of the step (at least the --min-keep floor raised to
    the step) or the whole group; the smaller one on a tie."""
    first = max(step, math.ceil(least / step) * step)
    allowed = sorted(set(range(first, channels, step)) | {channels})
    want = round(ratio * channels)
    return min(allowed, key=lambda k: (abs(k - want), k))


def floor_of(channels: int, min_keep: float, step: int) -> int:
    least = max(1, math.ceil(min_keep * channels - 1e-9))
    return min(channels, math.ceil(least / step) * step)


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto) -> None:
    onnx.checker.check_model(pruned, full_check=True)
    ref, got = run_model(original, FRESH)["y"], run_model(pruned, FRESH)["y"]
    assert got.shape == ref.shape
    assert np.isfinite(got).all()


# -- the matrix --------------------------------------------------------------------------------

COMBOS = [
    ("folded", {"method": "entropic", "mode": "sequential", "sparsity": 0.5}),
    ("folded", {"method": "lasso", "mode": "oneshot", "flops_reduction": 0.4, "round_to": 2, "min_keep": 0.25}),
    ("folded", {"method": "thinet", "mode": "sequential", "keep_ratio": 0.4, "exclude": ["conv_1"],
                "refit_ridge": "auto"}),
    ("folded", {"method": "l1", "mode": "oneshot", "sparsity": 0.3, "reconstruct": False, "exclude": ["gemm_8"]}),
    ("folded", {"method": "random", "mode": "sequential", "flops_reduction": 0.5, "refit_ridge": 0.0, "seed": 5}),
    ("folded", {"method": "entropic", "mode": "oneshot", "keep_ratio": 0.6, "min_keep": 0.5, "round_to": 4,
                "refit_ridge": 1e6}),
    ("bn", {"method": "lasso", "mode": "sequential", "sparsity": 0.6, "reconstruct": False, "min_keep": 0.2}),
    ("bn", {"method": "thinet", "mode": "oneshot", "flops_reduction": 0.3, "refit_ridge": "auto-thin", "round_to": 3,
            "exclude": ["conv_5"]}),
    ("bn", {"method": "l1", "mode": "sequential", "keep_ratio": 0.25, "refit_ridge": "auto", "round_to": 1}),
    ("residual", {"method": "random", "mode": "oneshot", "sparsity": 0.4, "exclude": ["conv_a"], "min_keep": 0.5,
                      "reconstruct": False}),
    ("residual", {"method": "entropic", "mode": "sequential", "flops_reduction": 0.35, "round_to": 2,
                  "refit_ridge": 0.5}),
    ("residual", {"method": "thinet", "mode": "sequential", "keep_ratio": 0.5, "exclude": ["stem"],
                  "refit_ridge": "auto"}),
]


@pytest.mark.parametrize("name, options", COMBOS,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in COMBOS])
def test_option_combination_gives_a_valid_model_and_a_truthful_report(models, name, options):
    """Every sampled combination: a valid model, each option's documented effect on the kept
    counts, the report and the provenance recording the options, and the report's
    parameters and MACs equal to a recount of the written model."""
    original = models[name]
    result = onnx_eprune.prune(original, CALIB, device="cpu", **options)
    assert_valid(result.model, original)
    report = result.report

    # the report records what was asked
    assert report["method"] == options["method"] and report["mode"] == options["mode"]
    assert report["reconstruct"] == options.get("reconstruct", True)
    if options.get("reconstruct", True):
        assert report["refit_ridge"] == options.get("refit_ridge", "auto-thin")
    assert report["round_to"] == options.get("round_to", "auto")
    assert report["exclude"] == list(options.get("exclude", []))
    assert report["min_keep"] == options.get("min_keep", 0.0)
    assert report["seed"] == options.get("seed", 0)
    kind = next(k for k in ("sparsity", "flops_reduction", "keep_ratio") if k in options)
    assert report["target"]["value"] == options[kind]
    assert report["samples"] == len(CALIB)
    if not options.get("reconstruct", True):
        assert "refit_ridges" not in report and "thin_refits" not in report

    # the model's provenance says the same as the report
    entry = provenance(result.model)[-1]
    for key in ("method", "mode", "target", "exclude", "min_keep", "samples", "seed"):
        assert entry[key] == report[key], key
    assert entry["params"] == [report["params"]["before"], report["params"]["after"]]
    assert entry["macs"] == [report["macs"]["before"], report["macs"]["after"]]

    # the figures are those of the files
    assert (report["params"]["before"], report["macs"]["before"]) == recount(original)
    assert (report["params"]["after"], report["macs"]["after"]) == recount(result.model)

    # the target is met
    if kind == "sparsity":
        assert report["params"]["removed_fraction"] >= options["sparsity"] - 1e-9
    elif kind == "flops_reduction":
        assert report["macs"]["removed_fraction"] >= options["flops_reduction"] - 1e-9

    # each group obeys --exclude, --round-to, --min-keep (and --keep-ratio's rule)
    patterns = options.get("exclude", [])
    pruned_groups = 0
    for g in report["groups"]:
        before, after = g["channels_before"], g["channels_after"]
        if g["frozen"]:
            assert after == before, g
            continue
        assert not any(g["producers"] == [p] for p in patterns), f"{g['producers']} was excluded but is prunable"
        step = g["step"]
        if options.get("round_to"):
            assert step % options["round_to"] == 0
        if after < before:
            pruned_groups += 1
            assert after % step == 0, g
            assert after >= floor_of(before, options.get("min_keep", 0.0), step), g
            kept = g["kept_channels"]
            assert len(kept) == after and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < before
        if kind == "keep_ratio":
            least = max(1, math.ceil(options.get("min_keep", 0.0) * before - 1e-9))
            assert after == uniform_count(before, options["keep_ratio"], step, least), g
    for pattern in patterns:
        assert any(f"excluded by '{pattern}'" in (g["frozen"] or "") for g in report["groups"]), pattern
    assert pruned_groups >= 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reconstruct", [True, False], ids=["refit", "no-refit"])
def test_keep_ratio_one_gives_back_the_same_function(models, method, mode, reconstruct):
    """README: `--keep-ratio 1.0` gives back the same function, whatever the method, the mode
    and the re-fit."""
    original = models["folded"]
    result = onnx_eprune.prune(original, CALIB, keep_ratio=1.0, method=method, mode=mode,
                               reconstruct=reconstruct, device="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    ref, got = run_model(original, FRESH)["y"], run_model(result.model, FRESH)["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert result.report["params"]["after"] == result.report["params"]["before"]


@pytest.mark.parametrize("ratio, round_to, expected", [
    (0.3, None, {8: 2, 16: 5, 32: 10}),       # round(R*C), any count
    (0.5, 3, {8: 3, 16: 9, 32: 15}),          # nearest multiple of 3
    (0.3, 4, {8: 4, 16: 4, 32: 8}),           # never below one step; a tie goes down
    (0.5, 32, {8: 8, 16: 16, 32: 32}),        # a step at least as wide as the group keeps it whole
])
def test_keep_ratio_counts_follow_round_to(models, ratio, round_to, expected):
    """`--keep-ratio R --round-to N`: round(R*C) moved to the nearest count N allows, per group."""
    result = onnx_eprune.prune(models["folded"], CALIB, keep_ratio=ratio, round_to=round_to, method="l1",
                               device="cpu")
    got = {g["channels_before"]: g["channels_after"] for g in result.report["groups"] if not g["frozen"]}
    assert got == expected


@pytest.mark.parametrize("ratio, min_keep, round_to, expected", [
    (0.25, 0.5, None, {8: 4, 16: 8, 32: 16}),    # the floor wins over the ratio
    (0.5, 0.75, None, {8: 6, 16: 12, 32: 24}),
    (0.1, 0.3, 4, {8: 4, 16: 8, 32: 12}),        # ceil(0.3*C) raised to the step: 3->4, 5->8, 10->12
])
def test_min_keep_floors_keep_ratio_and_rises_to_the_round_to_step(models, ratio, min_keep, round_to, expected):
    result = onnx_eprune.prune(models["folded"], CALIB, keep_ratio=ratio, min_keep=min_keep, round_to=round_to,
                               method="l1", device="cpu")
    got = {g["channels_before"]: g["channels_after"] for g in result.report["groups"] if not g["frozen"]}
    assert got == expected


def test_automatic_round_to_steps_wide_convolutions_by_8_only(tmp_path):
    """Without --round-to: convolution outputs of 64 channels or more keep multiples of 8,
    narrower groups and Gemm outputs any count; the report says "auto" and each group's step."""
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(8, 64, 72))
    result = onnx_eprune.prune(model, CALIB, sparsity=0.5, method="l1", mode="oneshot", device="cpu")
    assert result.report["round_to"] == "auto"
    groups = {g["producers"][0]: g for g in result.report["groups"] if not g["frozen"]}
    assert groups["conv_4"]["step"] == 8 and groups["conv_4"]["channels_after"] % 8 == 0
    assert groups["conv_1"]["step"] == 1 and groups["gemm_8"]["step"] == 1
    assert result.report["params"]["removed_fraction"] >= 0.5
    assert_valid(result.model, model)


# -- the re-fit options ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_no_reconstruct_slices_the_original_weights(models, mode):
    """`--no-reconstruct`: every kept weight is the original one at the kept channels (l1
    chooses without data, so the same keep-sets in both modes)."""
    original = models["folded"]
    result = onnx_eprune.prune(original, CALIB, keep_ratio=0.5, method="l1", mode=mode, reconstruct=False,
                               device="cpu")
    kept = {g["producers"][0]: np.array(g["kept_channels"]) for g in result.report["groups"]
            if g.get("kept_channels")}
    w0, w1 = _weights(original), _weights(result.model)
    np.testing.assert_array_equal(w1["conv_1.weight"], w0["conv_1.weight"][kept["conv_1"]])
    np.testing.assert_array_equal(w1["conv_4.weight"], w0["conv_4.weight"][kept["conv_4"]][:, kept["conv_1"]])
    np.testing.assert_array_equal(w1["conv_4.bias"], w0["conv_4.bias"][kept["conv_4"]])
    features = (kept["conv_4"][:, None] * 16 + np.arange(16)).ravel()  # Flatten of a 4x4 map
    np.testing.assert_array_equal(w1["gemm_8.weight"], w0["gemm_8.weight"][kept["gemm_8"]][:, features])
    np.testing.assert_array_equal(w1["y.weight"], w0["y.weight"][:, kept["gemm_8"]])
    np.testing.assert_array_equal(w1["y.bias"], w0["y.bias"])


@pytest.mark.parametrize("mode", MODES)
def test_refit_ridge_moves_the_weights_in_both_modes(models, mode):
    """--refit-ridge is no silent option: 0 and 100 give other re-fitted weights, and 1e6
    holds the weights (not the biases, which take the removed channels' means) at the
    original ones, i.e. at what --no-reconstruct keeps."""
    original = models["folded"]
    runs = {ridge: onnx_eprune.prune(original, CALIB, keep_ratio=0.5, method="l1", mode=mode, refit_ridge=ridge,
                                     device="cpu") for ridge in (0.0, 100.0, 1e6)}
    sliced = onnx_eprune.prune(original, CALIB, keep_ratio=0.5, method="l1", mode=mode, reconstruct=False,
                               device="cpu")
    for ridge, r in runs.items():
        assert r.report["refit_ridge"] == ridge
        assert provenance(r.model)[-1]["refit_ridge"] == ridge
    w = {ridge: _weights(r.model) for ridge, r in runs.items()}
    assert not np.allclose(w[0.0]["gemm_8.weight"], w[100.0]["gemm_8.weight"], atol=1e-3)
    s = _weights(sliced.model)
    for name in ("conv_4.weight", "gemm_8.weight", "y.weight"):
        np.testing.assert_allclose(w[1e6][name], s[name], atol=1e-4 * np.abs(s[name]).max())


@pytest.mark.parametrize("mode", MODES)
def test_refit_ridge_auto_lists_every_refitted_layer(models, mode):
    """`--refit-ridge auto` cross-validates every re-fitted layer: the report's refit_ridges
    names exactly the layers whose weights differ from the sliced ones, each with a ridge
    from the documented 0.001-10 range."""
    original = models["folded"]
    auto = onnx_eprune.prune(original, CALIB, keep_ratio=0.5, method="l1", mode=mode, refit_ridge="auto",
                             device="cpu")
    sliced = onnx_eprune.prune(original, CALIB, keep_ratio=0.5, method="l1", mode=mode, reconstruct=False,
                               device="cpu")
    wa, ws = _weights(auto.model), _weights(sliced.model)
    changed = {name.rsplit(".", 1)[0] for name in wa if not np.array_equal(wa[name], ws[name])}
    ridges = auto.report["refit_ridges"]
    assert set(ridges) == changed
    assert all(0.001 <= r <= 10 for r in ridges.values())


def test_auto_thin_cross_validates_exactly_the_thin_layers(models):
    """The default `auto-thin`: refit_ridges names the thin layers (fewer than 2 rows per kept
    input, here the Gemm fed by 48 samples) and only those, marked cross_validated; a fixed
    ridge lists the same thin layers, not cross-validated, and no refit_ridges."""
    original = models["folded"]
    thin = onnx_eprune.prune(original, CALIB, sparsity=0.5, method="l1", device="cpu").report
    assert thin["refit_ridge"] == "auto-thin"
    assert thin["thin_refits"], "48 samples for a Gemm of 100+ inputs is thin"
    for name, entry in thin["thin_refits"].items():
        assert entry["rows"] < 2 * entry["features"]
        assert entry["cross_validated"] == (name in thin["refit_ridges"])
    assert set(thin["refit_ridges"]) == {n for n, e in thin["thin_refits"].items() if e["cross_validated"]}
    fixed = onnx_eprune.prune(original, CALIB, sparsity=0.5, method="l1", refit_ridge=0.01, device="cpu").report
    assert "refit_ridges" not in fixed
    assert set(fixed["thin_refits"]) == set(thin["thin_refits"])
    assert not any(e["cross_validated"] for e in fixed["thin_refits"].values())


def test_api_refuses_a_ridge_without_reconstruction(models):
    """`reconstruct=False` with an explicit numeric or "auto" `refit_ridge` is a UsageError,
    as `--no-reconstruct --refit-ridge` is on the command line (once the run went through
    and its report carried `refit_ridge: 5.0` for a model never re-fitted)."""
    with pytest.raises(onnx_eprune.UsageError, match="reconstruct"):
        onnx_eprune.prune(models["folded"], CALIB, keep_ratio=0.5, reconstruct=False, refit_ridge=5.0,
                          device="cpu")


def test_no_reconstruct_run_records_no_ridge(models):
    """A run without the re-fit says so wherever it records its ridge: the report's
    `refit_ridge` is null (as sweep.json writes it for `--no-reconstruct`), and so is the
    model's provenance entry's (once both held "auto-thin", so a classic sliced model read
    as a re-fitted one)."""
    result = onnx_eprune.prune(models["folded"], CALIB, keep_ratio=0.5, reconstruct=False, device="cpu")
    assert result.report["refit_ridge"] is None
    entry = provenance(result.model)[-1]
    assert entry.get("reconstruct") is False or entry.get("refit_ridge") is None


# -- the target against the options ------------------------------------------------------------

@pytest.mark.parametrize("method, target", [
    ("entropic", 0.3), ("entropic", 0.5), ("l1", 0.5), ("l1", 0.3), ("random", 0.3), ("random", 0.5),
])
def test_flops_target_lands_within_a_point_with_every_method(models, method, target):
    """README, --sparsity / --flops-reduction: the removed fraction lands within 1 point of
    the target where channel granularity allows, whatever the method ("all share the
    statistics, the allocation and the re-fit"). On the folded CNN (8/16/32 channels)
    entropic lands at 0.3008 and 0.5004; l1 and random once kept 7/10/32 at 0.3, removing
    0.3155, and random 7/4/32 at 0.5, removing 0.5137 (budget.py's one-step trades; the
    wider trades now find closer counts)."""
    result = onnx_eprune.prune(models["folded"], CALIB, flops_reduction=target, method=method, mode="oneshot",
                               device="cpu")
    removed = result.report["macs"]["removed_fraction"]
    assert target <= removed <= target + 0.01


def test_out_of_reach_message_shows_a_reachable_figure_below_the_target():
    """The one-line error for a target the floors leave out of reach shows how much can be
    removed as a figure below the target, so the user knows what to ask for (depthwise
    model, --flops-reduction 0.7 --min-keep 0.5: at most 0.69991 of the MACs can go; the
    message once said "removes 0.700", equal to the target it refused)."""
    with pytest.raises(onnx_eprune.EPruneError) as info:
        onnx_eprune.prune(depthwise(), CALIB, flops_reduction=0.7, min_keep=0.5, method="l1", device="cpu")
    figure = float(re.search(r"removes ([0-9.]+)", str(info.value)).group(1))
    assert figure < 0.7, str(info.value)


def test_unreachable_target_names_the_min_keep_and_exclude_that_caused_it(tmp_path, capsys):
    """A target the floors and exclusions leave out of reach: exit 1, one line naming the
    options, nothing written, and an existing output left as it was."""
    files = _files(tmp_path)
    (tmp_path / "out.onnx").write_bytes(b"old output")
    line = run_error(capsys, prune_args(files, "--sparsity", "0.9", "--min-keep", "0.5", "--exclude", "conv_1"),
                     code=1)
    assert "out of reach" in line and "--min-keep" in line and "--exclude" in line
    assert (tmp_path / "out.onnx").read_bytes() == b"old output"


def test_unreachable_target_names_round_to(tmp_path, capsys):
    """`--sparsity 0.3 --round-to 8` on the residual model (groups of 8 channels, which a
    step of 8 keeps whole) fails with one line that names --round-to, as it names --exclude
    and --min-keep when they are given (once it said nothing of the cause; the same run
    without --round-to removes 30%)."""
    files = _files(tmp_path, residual())
    line = run_error(capsys, prune_args(files, "--sparsity", "0.3", "--round-to", "8"), code=1)
    assert "--round-to" in line
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("limit", [["--round-to", "32"], ["--min-keep", "1"]], ids=["round-to", "min-keep"])
def test_keep_ratio_that_the_limits_cancel_is_not_silent(tmp_path, capsys, limit):
    """A run whose other options leave its --keep-ratio nothing to remove (every group
    whole) says so in a warning naming the option, or fails on one line as the same limits
    do for --sparsity (once: exit 0, nothing said, a "pruned" model with every channel)."""
    files = _files(tmp_path)
    status = main(prune_args(files, "--keep-ratio", "0.5", *limit))
    err = capsys.readouterr().err
    if status == 0:
        warnings = [line for line in err.splitlines() if "warning:" in line]
        assert any(limit[0] in line for line in warnings), err
    else:
        assert status in (1, 2) and limit[0] in err.strip().splitlines()[-1]


# -- the command line --------------------------------------------------------------------------

def _files(tmp_path, model: onnx.ModelProto | None = None):
    onnx.save(model if model is not None else conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", CALIB)
    return tmp_path


def prune_args(files, *extra):
    return ["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--calib", str(files / "calib.npy"),
            "--device", "cpu", "--method", "l1", *extra]


@pytest.mark.parametrize("command", ["prune", "sweep"])
@pytest.mark.parametrize("ridge", ["auto-thin", "auto", "0"])
def test_refit_ridge_with_no_reconstruct_is_refused(tmp_path, capsys, command, ridge):
    """`--refit-ridge` (even its default value, given explicitly) with `--no-reconstruct` is a
    usage error on both commands that take them, before any output."""
    files = _files(tmp_path)
    if command == "prune":
        argv = prune_args(files, "--keep-ratio", "0.5")
    else:
        argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--sparsity", "0.3",
                "--report-dir", str(files / "sweep"), "--device", "cpu"]
    line = run_error(capsys, argv + ["--no-reconstruct", "--refit-ridge", ridge])
    assert "--no-reconstruct" in line and "--refit-ridge" in line
    assert not (files / "out.onnx").exists() and not (files / "sweep").exists()


@pytest.mark.parametrize("extra, named", [
    (["--keep-ratio", "0"], "--keep-ratio"), (["--keep-ratio", "1.5"], "--keep-ratio"),
    (["--keep-ratio", "nan"], "keep_ratio"), (["--flops-reduction", "1"], "flops"),
    (["--keep-ratio", "0.5", "--min-keep", "nan"], "--min-keep"),
    (["--keep-ratio", "0.5", "--min-keep", "1.01"], "--min-keep"),
    (["--keep-ratio", "0.5", "--round-to", "-2"], "--round-to"),
    (["--keep-ratio", "0.5", "--refit-ridge", "1e7"], "--refit-ridge"),
    (["--keep-ratio", "0.5", "--refit-ridge", "inf"], "--refit-ridge"),
    (["--keep-ratio", "0.5", "--refit-ridge", "Auto"], "--refit-ridge"),
    (["--keep-ratio", "0.5", "--flops-reduction", "0.3"], "--flops-reduction"),
    (["--sparsity", "0.5", "--exclude", "conv_9"], "conv_9"),
])
def test_bad_option_values_and_pairs_are_one_line_usage_errors(tmp_path, capsys, extra, named):
    files = _files(tmp_path)
    assert named in run_error(capsys, prune_args(files, *extra))
    assert not (files / "out.onnx").exists()


def test_excluding_every_prunable_layer_fails_before_writing(tmp_path, capsys):
    files = _files(tmp_path)
    line = run_error(capsys, prune_args(files, "--keep-ratio", "0.5", "--exclude", "conv_*", "--exclude", "gemm_*"),
                     code=1)
    assert "no prunable channel group" in line and "excluded by" in line
    assert not (files / "out.onnx").exists()


def test_report_files_record_every_option_given(tmp_path, capsys):
    """report.json, the Markdown report and the model's provenance all carry the options of
    the run: method, mode, ridge, target, exclusion, floor and seed."""
    files = _files(tmp_path)
    argv = prune_args(files, "--flops-reduction", "0.4", "--round-to", "4", "--min-keep", "0.25", "--exclude",
                      "conv_1", "--mode", "oneshot", "--refit-ridge", "0.5", "--seed", "3", "--report-dir",
                      str(files / "rd"), "-q")
    argv[argv.index("--method") + 1] = "thinet"
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((files / "rd" / "report.json").read_text())
    expected = {"method": "thinet", "mode": "oneshot", "reconstruct": True, "refit_ridge": 0.5, "round_to": 4,
                "exclude": ["conv_1"], "min_keep": 0.25, "seed": 3}
    assert {k: report[k] for k in expected} == expected
    assert report["target"]["value"] == 0.4
    md = (files / "rd" / "report.md").read_text()
    for words in ("thinet", "oneshot", "ridge 0.5", "seed: 3", "0.4", "`conv_1`", "25.0%"):
        assert words in md, words
    entry = provenance(onnx.load(str(files / "out.onnx")))[-1]
    assert (entry["method"], entry["mode"], entry["refit_ridge"], entry["exclude"], entry["min_keep"], entry["seed"]) \
        == ("thinet", "oneshot", 0.5, ["conv_1"], 0.25, 3)


def test_markdown_report_records_round_to(tmp_path, capsys):
    """report.md, "the same as a readable Markdown summary" of report.json, says which
    --round-to the kept counts were rounded to (it decides them as much as --min-keep, which
    it lists); once a reader could not tell `--round-to 4` from the default."""
    files = _files(tmp_path)
    assert main(prune_args(files, "--keep-ratio", "0.5", "--round-to", "4", "--report-dir", str(files / "rd"),
                           "-q")) == 0
    md = (files / "rd" / "report.md").read_text()
    assert re.search(r"round[- _]?to|multiples? of 4", md, re.IGNORECASE), md


def test_sweep_json_records_round_to_and_seed(tmp_path, capsys):
    """sweep.json records the run's --round-to and --seed beside its method, mode, ridge,
    exclusions and floor (once it left those two out)."""
    files = _files(tmp_path)
    argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--sparsity", "0.3", "0.5",
            "--report-dir", str(files / "sw"), "--device", "cpu", "--method", "random", "--seed", "2",
            "--round-to", "4", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((files / "sw" / "sweep.json").read_text())
    assert record["method"] == "random"
    details = {k: v for k, v in record.items() if k != "runs"}
    assert record.get("round_to") == 4 and record.get("seed") == 2, details


def test_sweep_record_of_a_run_without_refit_has_no_ridge(tmp_path, capsys):
    files = _files(tmp_path)
    argv = ["sweep", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--flops-reduction", "0.3",
            "--report-dir", str(files / "sw"), "--device", "cpu", "--no-reconstruct", "--exclude", "conv_1",
            "--min-keep", "0.25", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((files / "sw" / "sweep.json").read_text())
    assert (record["reconstruct"], record["refit_ridge"], record["exclude"], record["min_keep"]) == \
        (False, None, ["conv_1"], 0.25)
    assert "re-fit: no" in (files / "sw" / "sweep.md").read_text()


# -- --stats against the other options -----------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"flops_reduction": 0.4, "method": "thinet", "round_to": 2, "min_keep": 0.25, "refit_ridge": 0.01},
    {"sparsity": 0.5, "method": "entropic", "exclude": ["conv_1"], "refit_ridge": "auto"},
    {"keep_ratio": 0.5, "method": "lasso", "reconstruct": False},
], ids=["thinet-round-min", "entropic-exclude-auto", "lasso-keep-norefit"])
def test_stats_files_give_the_oneshot_run_under_every_option(models, options):
    """README: pruning from statistics files equals one --mode oneshot run over the same
    images (same channels, weights within rounding); --exclude, --min-keep, --round-to and
    the re-fit options go on prune and act alike; the report says oneshot and the files' seed."""
    original = models["folded"]
    bundle = onnx_eprune.calibrate(original, CALIB, seed=2, device="cpu")
    direct = onnx_eprune.prune(original, CALIB, mode="oneshot", seed=2, device="cpu", **options)
    stats = onnx_eprune.prune(original, stats=[bundle], device="cpu", **options)
    kept = lambda r: [(g["producers"], g["channels_after"], g.get("kept_channels")) for g in r.report["groups"]]
    assert kept(stats) == kept(direct)
    assert (stats.report["mode"], stats.report["seed"], stats.report["samples"]) == ("oneshot", 2, len(CALIB))
    wd, ws = _weights(direct.model), _weights(stats.model)
    for name in wd:
        np.testing.assert_allclose(ws[name], wd[name], rtol=1e-4, atol=1e-5 * max(1.0, np.abs(wd[name]).max()))


def test_stats_with_an_explicit_sequential_mode_is_refused(tmp_path, capsys):
    """`--mode sequential` given with `--stats` is a usage error (exit 2, one line naming
    --mode), like `--samples` and `--positions` with `--stats`: the statistics files can
    only give a one-shot run (once it ran one-shot with exit 0, the report saying "oneshot"
    although sequential was asked for)."""
    files = _files(tmp_path)
    assert main(["calibrate", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--stats-out",
                 str(files / "s.npz"), "--device", "cpu", "-q"]) == 0
    argv = ["prune", str(files / "model.onnx"), "-o", str(files / "out.onnx"), "--stats", str(files / "s.npz"),
            "--keep-ratio", "0.5", "--mode", "sequential", "--device", "cpu", "-q"]
    assert "--mode" in run_error(capsys, argv)
    assert not (files / "out.onnx").exists()


@pytest.mark.parametrize("call", ["prune", "sweep", "search"])
def test_api_with_statistics_refuses_an_explicit_sequential_mode(tmp_path, call):
    """``mode="sequential"`` given to the API with statistics files is refused as on the
    command line (it ran one-shot: PruneConfig's default was "sequential" and could not be
    told from it); left out, the run is one-shot and its report says so."""
    bundle = onnx_eprune.calibrate(conv_bn_relu_pool_flatten_gemm(True), CALIB, device="cpu")
    model = conv_bn_relu_pool_flatten_gemm(True)
    run = {"prune": lambda **kw: onnx_eprune.prune(model, stats=[bundle], keep_ratio=0.5, **kw),
           "sweep": lambda **kw: onnx_eprune.sweep(model, None, [0.5], kind="keep_ratio", stats=[bundle], **kw),
           "search": lambda **kw: onnx_eprune.search(model, None, max_error=0.5, stats=[bundle], **kw)}[call]
    with pytest.raises(onnx_eprune.UsageError, match="mode 'sequential'"):
        run(mode="sequential", device="cpu")
    if call == "prune":
        with pytest.raises(onnx_eprune.UsageError, match="mode 'sequential'"):
            onnx_eprune.prune(model, stats=[bundle],
                              config=onnx_eprune.PruneConfig(keep_ratio=0.5, mode="sequential", device="cpu"))
        assert run(device="cpu").report["mode"] == run(mode="oneshot", device="cpu").report["mode"] == "oneshot"
