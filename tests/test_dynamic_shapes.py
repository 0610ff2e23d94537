"""Models with symbolic or dynamic dimensions, attacked as a demanding user would.

What this file pins:

* the pruned model keeps the input and output signature, symbolic names included (named,
  unnamed, different symbols on input and output, a fixed batch of one with a dynamic size,
  a channels-last input) and runs at every resolution the original runs at, also where the
  graph computes shapes from the input's size (TensorFlow "same" pads, Resize to the input's
  or a skip's size, ConvTranspose decoders) and where the output's length depends on the
  input size (a fully convolutional net without GlobalAveragePool, a one-image detector);
* calibration at a resolution other than 16x16: MACs counted there (checked against an
  independent count on a copy with that size fixed), the report's fidelity, ``sweep`` and
  ``evaluate`` on held-out data of yet another resolution, all against recomputation;
* resolutions that do not fit: a fixed-size model calibrated at another size, two image
  inputs that share their symbolic height and width given different sizes;
* fixed batches: a batch-of-one model with many samples, a batch of four evaluated on six
  samples, a fixed batch next to a constant graph output;
* models whose first dimension is fixed but not a batch (one (3, H, W) image) with
  ``--calib-random``, ``--calib-images`` and ``inspect --input-shape``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_model_edge_cases import constant_output_model
from test_multi_io_models import IMAGE2, two_images

import onnx_eprune
from models import (
    INPUT,
    OUTPUT,
    _Builder,
    computed_pads,
    conv_gemm_costs,
    conv_transpose,
    decoder,
    one_image_detector,
    relative_error,
    residual,
    resize_to_input,
    resize_to_skip,
    run_model,
)
from onnx_eprune.cli import main

CPU = {"device": "cpu"}


# -- helpers -------------------------------------------------------------------------------------

def _rand(n: int, h: int, w: int, seed: int = 1, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _with_dims(model: onnx.ModelProto, inp=None, out=None) -> onnx.ModelProto:
    """A copy of ``model`` whose first input / first output dimensions are replaced: an int
    fixes one, a str names it, ``"?"`` leaves it unknown, None keeps it."""
    m = _copy(model)
    for vi, dims in ((m.graph.input[0], inp), (m.graph.output[0], out)):
        for dim, value in zip(vi.type.tensor_type.shape.dim, dims or []):
            if value is None:
                continue
            dim.Clear()
            if value == "?":
                continue
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    onnx.checker.check_model(m, full_check=True)
    return m


def _dims(vi: onnx.ValueInfoProto) -> list:
    """A value's dimensions as written: ints, symbol names, or "?" for an unknown one."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else "?"
            for d in vi.type.tensor_type.shape.dim]


def _signature(model: onnx.ModelProto) -> tuple:
    return ([(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input],
            [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output])


def fcn(gap: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A fully convolutional net: conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> 1x1 conv
    ``y`` (16->4) = per-pixel scores ``[batch, 4, height, width]``, or with ``gap`` their
    GlobalAveragePool ``[batch, 4, 1, 1]`` (its output no longer depends on the size)."""
    b = _Builder(seed)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    y = b.conv(h, 16, 4, k=1, name="scores" if gap else OUTPUT)
    if gap:
        y = b.node("GlobalAveragePool", [y], name=OUTPUT)
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT,
                                        ["batch", 4, 1, 1] if gap else ["batch", 4, "height", "width"])
    model = helper.make_model(helper.make_graph(b.nodes, "fcn", [inp], [out], b.inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def nhwc_input(seed: int = 4) -> onnx.ModelProto:
    """A channels-last input ``[N, H, W, 3]`` -> Transpose -> conv1 (3->8) -> Relu -> conv2
    (8->16) -> Relu -> GAP -> Flatten -> Gemm ``y`` (16->10)."""
    b = _Builder(seed)
    h = b.node("Transpose", [INPUT], perm=[0, 3, 1, 2])
    h = b.node("Relu", [b.conv(h, 3, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    b.gemm(b.gap_flatten(h), 16, 10, name=OUTPUT)
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", "H", "W", 3])
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])
    model = helper.make_model(helper.make_graph(b.nodes, "nhwc", [inp], [out], b.inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_detector() -> onnx.ModelProto:
    """one_image_detector (one (3, H, W) image, no batch axis, one value per detection) with
    a dynamic height and width."""
    m = one_image_detector()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "H", "W"
    onnx.checker.check_model(m, full_check=True)
    return m


def _save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _ok(capsys, argv: list[str]) -> str:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def _usage_error(capsys, argv: list[str]) -> str:
    """A failing command: exit status 2, no traceback, its last stderr line the error."""
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("onnx-eprune: error: "), err
    assert status == 2, err
    return lines[-1]


def _macs_at(model: onnx.ModelProto, h: int, w: int) -> int:
    """MACs per sample at h x w, counted by ONNX's own shape inference on a copy with that
    size fixed (independent of the library)."""
    return conv_gemm_costs(_with_dims(model, inp=[1, None, h, w], out=[1]))[1]


# -- the signature and every resolution ------------------------------------------------------------

@pytest.mark.parametrize("gap", [False, True], ids=["per-pixel", "pooled"])
def test_fully_convolutional_model_keeps_its_symbols_and_runs_at_every_size(gap):
    """Pruned on 16x16, the net keeps ``[batch, 3, height, width]`` -> its output's symbols
    and gives outputs of the original's shape at sizes it never saw, down to 1x1."""
    model = fcn(gap)
    result = onnx_eprune.prune(model, _rand(48, 16, 16), keep_ratio=0.5, **CPU)
    onnx.checker.check_model(result.model, full_check=True)
    assert _signature(result.model) == _signature(model)
    for h, w in ((16, 16), (24, 40), (5, 7), (1, 1)):
        x = _rand(2, h, w, seed=h * w)
        before, after = run_model(model, x)[OUTPUT], run_model(result.model, x)[OUTPUT]
        assert after.shape == before.shape == ((2, 4, 1, 1) if gap else (2, 4, h, w))
        assert np.isfinite(after).all()
    assert result.report["params"]["after"] < result.report["params"]["before"]


@pytest.mark.parametrize("dims", [
    {"inp": ["?", None, "?", "?"], "out": ["?"]},
    {"inp": ["batch_size", None, "height", "width"], "out": ["batch_size"]},
    {"inp": ["N", None, "H", "W"], "out": ["M"]},
    {"inp": [1, None, "H", "W"], "out": [1]},
], ids=["unnamed", "long-names", "other-output-symbol", "batch1-dynamic-size"])
def test_every_form_of_dynamic_dimension_is_kept(dims):
    """Unknown dimensions stay unknown (not named, not fixed to the probed 16), a batch
    symbol that differs between input and output stays as written, a fixed batch of one
    with a dynamic size keeps both."""
    model = _with_dims(residual(), **dims)
    calib = _rand(20, 16, 16)
    result = onnx_eprune.prune(model, calib, keep_ratio=0.5, **CPU)
    assert _signature(result.model) == _signature(model)
    batch = 1 if dims["inp"][0] == 1 else 3
    assert run_model(result.model, _rand(batch, 24, 20, seed=2))[OUTPUT].shape == (batch, 10)


BUILDERS = {"computed_pads": computed_pads, "resize_to_input": resize_to_input, "resize_to_skip": resize_to_skip,
            "conv_transpose": conv_transpose, "decoder": decoder}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shape_computing_graphs_give_the_original_at_other_sizes(name):
    """Graphs that compute pads or Resize sizes from the input's size, pruned on 16x16 at
    keep-ratio 1.0, give the original's outputs bit for bit at other sizes (nothing read at
    the probed shape is baked in); at 0.5 they still run there with the same output shapes."""
    model = _with_dims(BUILDERS[name](), inp=["N", None, "H", "W"])
    same = onnx_eprune.prune(model, _rand(24, 16, 16), keep_ratio=1.0, **CPU).model
    half = onnx_eprune.prune(model, _rand(24, 16, 16), keep_ratio=0.5, **CPU).model
    assert _signature(same) == _signature(half) == _signature(model)
    for h, w in ((24, 24), (20, 28), (8, 12)):
        x = _rand(2, h, w, seed=h + w)
        np.testing.assert_array_equal(run_model(same, x)[OUTPUT], run_model(model, x)[OUTPUT])
        assert run_model(half, x)[OUTPUT].shape == run_model(model, x)[OUTPUT].shape


@pytest.mark.parametrize("attrs", [{"start": 0}, {"start": -4}, {"start": 0, "end": 9}, {"end": -2}])
def test_resize_sizes_from_a_shape_with_start_and_end(attrs):
    """onnxruntime's optimizer writes the Shape of ``Resize(h, Concat(Slice(Shape(h), 0, 2),
    hw))`` with ``start=0`` spelled out: any start and end whose range begins at axis 0 and
    holds axes 0 and 1 still give h's own batch and channel count, so h's channels stay
    prunable (they froze as "non-constant or shared sizes")."""
    model = _with_dims(resize_to_input(), inp=["N", None, "H", "W"])
    shape = next(n for n in model.graph.node if n.op_type == "Shape" and n.input[0] != INPUT)
    shape.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    model.opset_import[0].version = 15  # Shape's start and end
    groups = {g["producers"][0]: g for g in onnx_eprune.inspect(model, _rand(2, 16, 16))["groups"] if g["producers"]}
    assert groups["conv2"]["prunable"], groups["conv2"]["frozen"]
    pruned = onnx_eprune.prune(model, _rand(24, 16, 16), keep_ratio=0.5, **CPU).model
    assert {i.name: i for i in pruned.graph.initializer}["conv2.weight"].dims[0] == 4
    assert run_model(pruned, _rand(2, 20, 12))[OUTPUT].shape == (2, 10)


def test_channels_last_dynamic_input_with_calib_random_size(tmp_path, capsys):
    """An ``[N, H, W, 3]`` input: --calib-random 16 --size 20,12 fills H and W (not the
    channel axis), MACs are counted at 20x12 and the pruned input stays ``[N, H, W, 3]``."""
    model = nhwc_input()
    path, out, report = _save(model, tmp_path / "m.onnx"), tmp_path / "p.onnx", tmp_path / "r.json"
    _ok(capsys, ["prune", path, "-o", str(out), "--calib-random", "16", "--size", "20,12", "--keep-ratio", "0.5",
                 "--device", "cpu", "--report", str(report), "-q"])
    rep = json.loads(report.read_text())
    assert rep["samples"] == 16
    # conv1 3->8 and conv2 8->16, 3x3 same padding, on 20x12 pixels, and the Gemm 16->10
    assert rep["macs"]["before"] == (8 * 27 + 16 * 72) * 20 * 12 + 160
    pruned = onnx.load(str(out))
    assert _signature(pruned) == _signature(model)
    assert run_model(pruned, np.ones((2, 9, 31, 3), np.float32))[OUTPUT].shape == (2, 10)


# -- another resolution than 16x16: the figures -------------------------------------------------------

def test_flops_target_and_fidelity_are_measured_at_the_calibration_resolution():
    """Calibrated at 12x20: the report's MACs before and after are the independent count at
    12x20 (not at 16x16 or 1x1), the target is met there, and the reported fidelity of the
    per-pixel output is the recomputed one."""
    model, calib = fcn(), _rand(64, 12, 20)
    result = onnx_eprune.prune(model, calib, flops_reduction=0.5, round_to=1, **CPU)
    macs = result.report["macs"]
    assert macs["before"] == _macs_at(model, 12, 20) == (8 * 27 + 16 * 72 + 4 * 16) * 240
    assert macs["after"] == _macs_at(result.model, 12, 20)
    assert 1 - macs["after"] / macs["before"] >= 0.5 - 1e-9
    fidelity = result.report["fidelity_on_calibration"]
    assert fidelity["samples"] == 64
    expected = relative_error(run_model(model, calib)[OUTPUT], run_model(result.model, calib)[OUTPUT])
    assert fidelity["outputs"][OUTPUT]["relative_error"] == pytest.approx(expected, rel=1e-6)


def test_sweep_measures_on_held_out_data_of_another_resolution():
    """sweep calibrated at 12x20 and measured on 24x24 data: each point's fidelity is the one
    recomputed at 24x24, and says it is on held-out samples."""
    model, data = fcn(), _rand(16, 24, 24, seed=7)
    points = onnx_eprune.sweep(model, _rand(48, 12, 20), [0.3, 0.5], kind="flops_reduction", data=data, **CPU)
    assert [p.target for p in points] == [0.3, 0.5]
    reference = run_model(model, data)[OUTPUT]
    for point in points:
        assert "held-out" in point.fidelity_on
        got = run_model(point.model, data)[OUTPUT]
        assert point.fidelity[OUTPUT]["relative_error"] == pytest.approx(relative_error(reference, got), rel=1e-6)


def test_evaluate_on_data_of_another_resolution(tmp_path, capsys):
    """Pruned on 16x16, evaluated on 24x20: relative error and mean per-sample cosine of the
    per-pixel output as recomputed, no top-1 agreement for a 4-D output, and MACs at 24x20."""
    model = fcn()
    path, pruned = _save(model, tmp_path / "m.onnx"), tmp_path / "p.onnx"
    np.save(tmp_path / "c.npy", _rand(48, 16, 16))
    data = _rand(8, 24, 20, seed=9)
    np.save(tmp_path / "d.npy", data)
    _ok(capsys, ["prune", path, "-o", str(pruned), "--calib", str(tmp_path / "c.npy"), "--keep-ratio", "0.5",
                 "--device", "cpu", "-q"])
    result = json.loads(_ok(capsys, ["evaluate", path, str(pruned), "--data", str(tmp_path / "d.npy"),
                                     "--device", "cpu", "--json"]))
    a = run_model(model, data)[OUTPUT].astype(np.float64)
    b = run_model(onnx.load(str(pruned)), data)[OUTPUT].astype(np.float64)
    fa, fb = a.reshape(8, -1), b.reshape(8, -1)
    cosine = np.mean(np.sum(fa * fb, 1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)))
    figures = result["outputs"][OUTPUT]
    assert result["samples"] == 8 and "top1_agreement" not in figures
    assert figures["relative_error"] == pytest.approx(relative_error(a, b), rel=1e-6)
    assert figures["cosine"] == pytest.approx(cosine, rel=1e-6)
    assert result["size"]["original"]["macs"] == _macs_at(model, 24, 20)
    assert result["size"]["pruned"]["macs"] == _macs_at(onnx.load(str(pruned)), 24, 20)


# -- resolutions that do not fit ------------------------------------------------------------------

def test_fixed_size_model_refuses_calibration_at_another_resolution(tmp_path, capsys):
    """A model exported at 16x16 given 24x24 samples: exit 2, one line naming both shapes,
    and an output already there keeps its bytes."""
    path = _save(residual(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", _rand(32, 24, 24))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"earlier output")
    line = _usage_error(capsys, ["prune", path, "-o", str(out), "--calib", str(tmp_path / "c.npy"),
                                 "--keep-ratio", "0.5", "--device", "cpu"])
    assert "(32, 3, 24, 24)" in line and "16, 16" in line
    assert out.read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx", "out.onnx"]


def _shared_size_two_images() -> onnx.ModelProto:
    """two_images("add") whose inputs ``x`` [N, 3, H, W] and ``x2`` [N, 1, H, W] share the
    symbols H and W (their feature maps are added)."""
    m = two_images("add")
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.checker.check_model(m, full_check=True)
    return m


def test_two_inputs_sharing_their_size_prune_at_another_common_size(tmp_path, capsys):
    """Both inputs at 20x20 (not 16x16): pruned, and the symbols H and W stay on both."""
    model = _shared_size_two_images()
    path, out = _save(model, tmp_path / "m.onnx"), tmp_path / "p.onnx"
    np.savez(tmp_path / "c.npz", x=_rand(32, 20, 20), **{IMAGE2: _rand(32, 20, 20, seed=2, c=1)})
    _ok(capsys, ["prune", path, "-o", str(out), "--calib", str(tmp_path / "c.npz"), "--keep-ratio", "0.5",
                 "--device", "cpu", "-q"])
    assert _signature(onnx.load(str(out))) == _signature(model)


def test_two_inputs_sharing_their_size_given_different_sizes_is_a_usage_error(tmp_path, capsys):
    """``x`` at 16x16 and ``x2`` at 24x24, where the model declares both ``[N, C, H, W]``
    with the same H and W, is calibration data of the wrong shape: a usage error (exit 2)
    found before any work, naming the inputs and the symbol they disagree on, as unequal
    sample counts are (once onnxruntime's broadcast failure came back as exit 1, naming
    neither the inputs nor the file)."""
    path = _save(_shared_size_two_images(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=_rand(32, 16, 16), **{IMAGE2: _rand(32, 24, 24, seed=2, c=1)})
    line = _usage_error(capsys, ["prune", path, "-o", str(tmp_path / "p.onnx"), "--calib", str(tmp_path / "c.npz"),
                                 "--keep-ratio", "0.5", "--device", "cpu"])
    assert IMAGE2 in line and "'H'" in line


# -- fixed batches -----------------------------------------------------------------------------------

def _fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    return _with_dims(model, inp=[batch], out=[batch])


def test_batch_of_one_model_with_many_samples():
    """An export for a fixed batch of one, calibrated on 300 samples: all 300 count, the
    fidelity is on the first 256 (recomputed on the free-batch twin), the input and output
    stay [1, 3, 16, 16] -> [1, 10], and the same weights as from the free-batch model."""
    calib = _rand(300, 16, 16)
    fixed = onnx_eprune.prune(_fixed_batch(residual(), 1), calib, sparsity=0.3, **CPU)
    free = onnx_eprune.prune(residual(), calib, sparsity=0.3, **CPU)
    assert fixed.report["samples"] == 300
    assert _dims(fixed.model.graph.input[0]) == [1, 3, 16, 16] and _dims(fixed.model.graph.output[0]) == [1, 10]
    twin = _with_dims(fixed.model, inp=["N"], out=["N"])
    fidelity = fixed.report["fidelity_on_calibration"]
    assert fidelity["samples"] == 256
    expected = relative_error(run_model(residual(), calib[:256])[OUTPUT], run_model(twin, calib[:256])[OUTPUT])
    assert fidelity["outputs"][OUTPUT]["relative_error"] == pytest.approx(expected, rel=1e-5)
    assert [g["channels_after"] for g in fixed.report["groups"]] == [g["channels_after"] for g in free.report["groups"]]
    for a, b in zip(fixed.model.graph.initializer, free.model.graph.initializer):
        np.testing.assert_allclose(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b), rtol=1e-4, atol=1e-6)


def test_evaluate_fixed_batch_of_four_on_six_samples():
    """Six samples through a batch-of-four model: the padding of the last batch counts in no
    figure (recomputed on the free-batch twins), latency is timed at batch 4 only."""
    model = _fixed_batch(residual(), 4)
    pruned = onnx_eprune.prune(model, _rand(30, 16, 16), keep_ratio=0.5, **CPU).model
    data = _rand(6, 16, 16, seed=8)
    result = onnx_eprune.evaluate(model, pruned, data, **CPU)
    a = run_model(residual(), data)[OUTPUT]
    b = run_model(_with_dims(pruned, inp=["N"], out=["N"]), data)[OUTPUT]
    assert result["samples"] == 6
    assert result["outputs"][OUTPUT]["relative_error"] == pytest.approx(relative_error(a, b), rel=1e-6)
    assert result["outputs"][OUTPUT]["top1_agreement"] == np.mean(a.argmax(1) == b.argmax(1))
    assert {k: sorted(v) for k, v in result["latency_ms"].items()} == {"original": ["batch4"], "pruned": ["batch4"]}


def test_evaluate_refuses_a_fixed_batch_model_against_a_free_one(tmp_path, capsys):
    a = _save(_fixed_batch(residual(), 1), tmp_path / "fixed.onnx")
    b = _save(residual(), tmp_path / "free.onnx")
    np.save(tmp_path / "d.npy", _rand(4, 16, 16))
    line = _usage_error(capsys, ["evaluate", a, b, "--data", str(tmp_path / "d.npy"), "--device", "cpu"])
    assert "batches of 1" in line and "any size" in line


def test_fixed_batch_model_with_a_constant_output_keeps_its_batch_axis():
    """Input [1, 3, 16, 16], outputs y [1, 10] and a constant ``anchors`` [4, 2] (a
    detector's priors: the same for every image) is a model exported for a fixed batch of
    one (README: "input (1, 3, H, W), an export without dynamic axes"); y shares the batch
    dimension, and a constant output has no row per sample anyway. So (N, 3, 16, 16)
    calibration arrays prune it, and the input stays [1, 3, 16, 16]. (Once the constant
    output made it a model without a batch axis, and rank 5 was demanded.)"""
    model = _fixed_batch(constant_output_model("constant"), 1)
    assert _dims(model.graph.output[1]) == [4, 2]
    result = onnx_eprune.prune(model, _rand(64, 16, 16), keep_ratio=0.5, **CPU)
    assert _dims(result.model.graph.input[0]) == [1, 3, 16, 16]
    assert run_model(result.model, _rand(1, 16, 16))[OUTPUT].shape == (1, 10)


# -- inspect --input-shape --------------------------------------------------------------------------

def test_inspect_input_shape_counts_macs_at_that_size(tmp_path, capsys):
    """The per-pixel FCN at --input-shape 2,3,10,14: MACs per sample at 10x14, the batch not
    multiplying them; a batch-of-one model with a dynamic size probed with N=4 counts the
    same as with N=1."""
    path = _save(fcn(), tmp_path / "fcn.onnx")
    summary = json.loads(_ok(capsys, ["inspect", path, "--input-shape", "2,3,10,14", "--json"]))
    assert summary["macs"] == _macs_at(fcn(), 10, 14)
    b1 = _save(_with_dims(residual(), inp=[1, None, "H", "W"], out=[1]), tmp_path / "b1.onnx")
    one = json.loads(_ok(capsys, ["inspect", b1, "--input-shape", "1,3,24,24", "--json"]))["macs"]
    four = json.loads(_ok(capsys, ["inspect", b1, "--input-shape", "4,3,24,24", "--json"]))["macs"]
    assert one == four == (8 * 27 + 8 * 72 * 2) * 24 * 24 + 8 * 10


def test_inspect_model_without_batch_axis(tmp_path, capsys):
    """A (3, H, W) input: inspect without a shape names --input-shape; --input-shape takes
    the input's own three dimensions (MACs at 20x12) and refuses four, showing the input's
    shape."""
    path = _save(dynamic_detector(), tmp_path / "det.onnx")
    assert "--input-shape" in _usage_error(capsys, ["inspect", path])
    summary = json.loads(_ok(capsys, ["inspect", path, "--input-shape", "3,20,12", "--json"]))
    assert summary["macs"] == (8 * 27 + 16 * 72 + 4 * 16) * 20 * 12
    line = _usage_error(capsys, ["inspect", path, "--input-shape", "1,3,20,12"])
    assert "--input-shape 1,3,20,12" in line and "(3,?,?)" in line


# -- a model without a batch axis --------------------------------------------------------------------

def test_dynamic_size_detector_prunes_at_one_size_and_runs_at_others():
    """One (3, H, W) image per run, outputs whose length depends on the image: calibrated at
    20x12, keep-ratio 1.0 gives the original's detections at 16x16 and 9x13, and the input
    stays (3, H, W)."""
    model, calib = dynamic_detector(), _rand(24, 20, 12)
    same = onnx_eprune.prune(model, calib, keep_ratio=1.0, **CPU)
    half = onnx_eprune.prune(model, calib, keep_ratio=0.5, **CPU)
    assert _signature(same.model) == _signature(half.model) == _signature(model)
    assert same.report["macs"]["before"] == (8 * 27 + 16 * 72 + 4 * 16) * 20 * 12
    for h, w in ((16, 16), (9, 13)):
        x = _rand(1, h, w, seed=h)[0]
        np.testing.assert_array_equal(run_model(same.model, x)[OUTPUT], run_model(model, x)[OUTPUT])
        assert run_model(half.model, x)[OUTPUT].ndim == 1


def test_calib_random_on_a_model_without_batch_axis(tmp_path, capsys):
    """--calib-random 16 on a fully fixed (3, 16, 16) input (torchvision's detectors' form,
    which --calib takes as (16, 3, 16, 16)) draws 16 images of (3, 16, 16) and prunes (once
    it drew (16, 16, 16), replacing the channel axis, and refused its own array)."""
    path, out, report = _save(one_image_detector(), tmp_path / "det.onnx"), tmp_path / "p.onnx", tmp_path / "r.json"
    _ok(capsys, ["prune", path, "-o", str(out), "--calib-random", "16", "--keep-ratio", "0.5", "--device", "cpu",
                 "--report", str(report), "-q"])
    assert json.loads(report.read_text())["samples"] == 16
    assert _dims(onnx.load(str(out)).graph.input[0]) == [3, 16, 16]


def test_calib_random_size_on_a_dynamic_model_without_batch_axis(tmp_path, capsys):
    """A (3, H, W) image input is an image input; --calib-random 16 --size 20,12 fills H
    and W and prunes (MACs at 20x12), as it does for (N, 3, H, W). (Once the messages sent
    the user in a circle: give --size; --size has no image input to apply to.)"""
    path, out, report = _save(dynamic_detector(), tmp_path / "det.onnx"), tmp_path / "p.onnx", tmp_path / "r.json"
    _ok(capsys, ["prune", path, "-o", str(out), "--calib-random", "16", "--size", "20,12", "--keep-ratio", "0.5",
                 "--device", "cpu", "--report", str(report), "-q"])
    assert json.loads(report.read_text())["macs"]["before"] == (8 * 27 + 16 * 72 + 4 * 16) * 20 * 12
    assert _signature(onnx.load(str(out))) == _signature(dynamic_detector())


def test_calib_images_on_a_model_without_batch_axis(tmp_path, capsys):
    """A folder of photos calibrates a model that takes one (3, 16, 16) image (torchvision's
    detectors, which the README lists as pruned); the images are read as (N, 3, 16, 16), as
    --calib takes them for this model (once: "images need a rank-4 NCHW or NHWC input")."""
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    path, out = _save(one_image_detector(), tmp_path / "det.onnx"), tmp_path / "p.onnx"
    _ok(capsys, ["prune", path, "-o", str(out), "--calib-images", str(folder), "--keep-ratio", "0.5",
                 "--device", "cpu", "-q"])
    assert _dims(onnx.load(str(out)).graph.input[0]) == [3, 16, 16]
