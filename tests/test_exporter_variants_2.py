"""Exporter constructs, second round: what tf2onnx, paddle2onnx and PyTorch write that the
other tests' models do not, attacked as a demanding user would.

* tf2onnx / Keras: an NHWC input fixed at batch 1 (or 2) transposed before the first Conv,
  Relu6 as Clip, GlobalAveragePooling as ReduceMean over H and W, Dense layers as MatMul +
  Add, Softmax at the output, Flatten of an NHWC map, explicit (asymmetric, NHWC) Pad before
  a stride-2 depthwise Conv, Resize on an NHWC tensor. Calibration arrays go in with
  samples on axis 0 and are fed a fixed batch at a time; wrong layouts and ranks are usage
  errors that say what the model needs; the report's fidelity, parameters and MACs match an
  independent recomputation; ``evaluate`` handles a sample count that the fixed batch does
  not divide.
* Relu6 as Clip with min/max inputs, only one of them, attributes (opset 10) and as
  Max/Min by scalars; HardSwish, HardSigmoid, SiLU (x * Sigmoid(x) either way round) and
  x * HardSigmoid(x) in a MobileNet block (depthwise + pointwise, unfused BatchNormalization).
* Pad in every mode and form (attribute, input, ``axes`` input of opset 18, on NHWC).
* ReduceMean with ``axes`` as attribute (opset 13) and as input (opset 18): the same model
  must prune to the same result.
* Squeeze-excitation in four spellings (ReduceMean + HardSigmoid, Linear + Unsqueeze, fixed
  batch Reshape to (1, C, 1, 1)); BatchNorm1d after a Gemm; Expand of a gate.
* De-duplicated constants (BatchNorm running statistics, a Mul scale shared by two layers),
  checked with dead channels as an oracle.
* ConvTranspose consumers (unfused BatchNormalization, dilations, ``output_shape``,
  ``auto_pad``, group 2) and Resize with scales, 4-entry constant sizes in a fixed-batch
  export, opset 10, opset 18 ``axes`` and NHWC scales.
* Paddle's Conv + Add(bias) + Mul/Add affine, and ConvNeXt's Linear on an NHWC tensor
  (MatMul of a 4-D activation).

Every model is built here with ``onnx.helper``; every pruned model must pass the full
checker, run in onnxruntime, give the original's outputs at ``keep_ratio=1.0`` and stay
reasonably close at 0.5.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as H
from onnx import numpy_helper as NH

import onnx_eprune
from onnx_eprune.cli import main

NCHW, NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
CALIB = np.random.default_rng(11).normal(size=(48, 3, 16, 16)).astype(np.float32)
FRESH = np.random.default_rng(12).normal(size=(6, 3, 16, 16)).astype(np.float32)
CALIB_NHWC = np.ascontiguousarray(CALIB.transpose(0, 2, 3, 1))
FRESH_NHWC = np.ascontiguousarray(FRESH.transpose(0, 2, 3, 1))


# -- model building ------------------------------------------------------------------------

class Net:
    """Nodes and initializers of a model under construction (seeded weights)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        self.count += 1
        name = name or f"k{self.count}"
        self.inits.append(NH.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, out: str | None = None, **attrs) -> str:
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        self.nodes.append(H.make_node(op, inputs, [out or name], name=name, **attrs))
        return out or name

    def conv(self, x: str, cin: int, cout: int, k: int = 3, name: str | None = None, bias: bool = True,
             group: int = 1, pads=None, dead=None, **attrs) -> str:
        """A Conv; ``dead``: output channels whose weights are zero (and bias 0.3)."""
        name = name or f"conv{self.count + 1}"
        w = self.rng.normal(0, np.sqrt(2 / (cin // group * k * k)), (cout, cin // group, k, k))
        b = self.rng.uniform(-0.1, 0.1, cout)
        if dead is not None:
            w[dead], b[dead] = 0.0, 0.3
        inputs = [x, self.const(w, name=f"{name}.w")] + ([self.const(b, name=f"{name}.b")] if bias else [])
        a = dict(kernel_shape=[k, k], pads=[k // 2] * 4 if pads is None else pads, **attrs)
        if group != 1:
            a["group"] = group
        return self.node("Conv", inputs, name=name, **a)

    def bn(self, x: str, c: int, name: str, mean: str | None = None, var: str | None = None) -> str:
        return self.node("BatchNormalization", [
            x, self.const(self.rng.uniform(0.5, 1.5, c)), self.const(self.rng.uniform(-0.1, 0.1, c)),
            mean or self.const(self.rng.uniform(-0.1, 0.1, c)), var or self.const(self.rng.uniform(0.5, 1.5, c))],
            name=name, epsilon=1e-3)

    def gemm(self, x: str, d: int, m: int, name: str = "fc", out: str | None = None) -> str:
        return self.node("Gemm", [x, self.const(self.rng.normal(0, 1 / np.sqrt(d), (m, d)), name=f"{name}.w"),
                                  self.const(self.rng.uniform(-0.1, 0.1, m), name=f"{name}.b")],
                         name=name, out=out, transB=1)

    def head(self, x: str, c: int) -> str:
        """GAP -> Flatten -> Gemm(c -> 10) = y."""
        return self.gemm(self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1), c, 10, out="y")

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))])

    def entries(self, vector: str, lo: int, hi: int) -> str:
        """Entries lo .. hi - 1 of a shape vector (a Slice along axis 0)."""
        return self.node("Slice", [vector, self.const([lo], np.int64), self.const([hi], np.int64),
                                   self.const([0], np.int64)])

    def build(self, y: str = "y", in_shape=("N", 3, 16, 16), out_shape=("N", 10), opset: int = 17) -> onnx.ModelProto:
        inp = H.make_tensor_value_info("x", TP.FLOAT, list(in_shape))
        graph = H.make_graph(self.nodes, "exporter_variants_2", [inp],
                             [H.make_tensor_value_info(y, TP.FLOAT, list(out_shape))], self.inits)
        model = H.make_model(graph, opset_imports=[H.make_opsetid("", opset)], producer_name="tests")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def fixed_batch_of(model: onnx.ModelProto) -> int | None:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output on ``x``, run a fixed batch at a time where the model fixes one (the
    last batch padded with copies of its last sample, the padding dropped)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = fixed_batch_of(model)
    if batch is None:
        return session.run(None, {"x": x})[0]
    parts = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        parts.append(session.run(None, {"x": padded})[0][:len(chunk)])
    return np.concatenate(parts)


def rel(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def group_of(report: dict, producer: str) -> dict:
    return next(g for g in report["groups"] if producer in g["producers"])


def prune_checked(model: onnx.ModelProto, calib: np.ndarray = CALIB, **options) -> onnx_eprune.PruneResult:
    """Prune on the CPU; the result passes the full checker, keeps the input and output
    signature (fixed batch included), and the input model is left unchanged."""
    before = model.SerializeToString()
    result = onnx_eprune.prune(model, calib, device="cpu", **options)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.graph.input == model.graph.input
    assert result.model.graph.output == model.graph.output
    return result


def assert_identity_and_close(model: onnx.ModelProto, calib: np.ndarray = CALIB, fresh: np.ndarray = FRESH,
                              tol: float = 0.15, **options) -> onnx_eprune.PruneResult:
    """keep_ratio 1.0 gives the original's outputs and parameters; 0.5 runs with outputs
    within ``tol`` (relative) of the original's on fresh inputs. Returns the 0.5 result."""
    ref = outputs(model, fresh)
    same = prune_checked(model, calib, keep_ratio=1.0, **options)
    assert same.report["params"]["after"] == same.report["params"]["before"]
    assert rel(outputs(same.model, fresh), ref) < 1e-5
    half = prune_checked(model, calib, keep_ratio=0.5, **options)
    got = outputs(half.model, fresh)
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert rel(got, ref) < tol
    return half


def independent_costs(model: onnx.ModelProto) -> tuple[int, int]:
    """Parameters (weights and biases, a bias-less layer's bias being the constant that the
    one Add after it adds, one value per output channel: tf2onnx's MatMul + Add,
    paddle2onnx's Conv + Add) and MACs per sample of every Conv, ConvTranspose, Gemm and
    MatMul with a constant weight, from ONNX's own shape inference: a Conv costs its weight
    per output position, a ConvTranspose per input position, a Gemm/MatMul per row of its
    output (divided by the fixed batch)."""
    inits = {t.name: NH.to_array(t) for t in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    batch = fixed_batch_of(model) or 1
    params = macs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        params += w.size + (inits[node.input[2]].size if len(node.input) > 2 and node.input[2] else 0)
        readers = [n for n in model.graph.node if node.output[0] in n.input]
        if len(node.input) < 3 and len(readers) == 1 and readers[0].op_type == "Add":
            bias = [i for i in readers[0].input if i != node.output[0] and i in inits]
            out = shapes[node.output[0]]
            if bias and inits[bias[0]].size == out[1] and ([1] * len(out) + list(inits[bias[0]].shape))[-len(out):][1] \
                    == out[1] and sum(bias[0] in n.input for n in model.graph.node) == 1:
                params += out[1]
        if node.op_type == "Conv":
            macs += w.size * int(np.prod(shapes[node.output[0]][2:]))
        elif node.op_type == "ConvTranspose":
            macs += w.size * int(np.prod(shapes[node.input[0]][2:]))
        else:
            macs += w.size * int(np.prod(shapes[node.output[0]][:-1])) // batch
    return params, macs


def assert_costs_match(model: onnx.ModelProto, result: onnx_eprune.PruneResult) -> None:
    report = result.report
    assert (report["params"]["before"], report["macs"]["before"]) == independent_costs(model)
    assert (report["params"]["after"], report["macs"]["after"]) == independent_costs(result.model)


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def usage_error_line(capsys, argv: list[str]) -> str:
    """The command fails with exit status 2 and one error line, no traceback."""
    status, _, err = cli(capsys, argv)
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: "), err
    return lines[0]


# -- the models ----------------------------------------------------------------------------

def tf_classifier(batch=1, flatten: bool = False) -> onnx.ModelProto:
    """tf2onnx's Keras classifier: x (batch, 16, 16, 3) NHWC -> Transpose -> conv1 (3->8)
    -> Clip(0, 6) -> conv2 (8->16) -> Relu -> Transpose to NHWC -> [ReduceMean over H, W |
    MaxPool-free Flatten of the NHWC map] -> dense1 MatMul + Add (-> 32) -> Relu -> dense2
    MatMul + Add (-> 10) -> Softmax = y (batch, 10)."""
    n = Net(12)
    h = n.relu6(n.conv(n.node("Transpose", ["x"], perm=NCHW), 3, 8, name="conv1"))
    h = n.node("Transpose", [n.node("Relu", [n.conv(h, 8, 16, name="conv2", strides=[2, 2])])], perm=NHWC)
    if flatten:
        h, features = n.node("Reshape", [h, n.const([-1, 16 * 8 * 8], np.int64)]), 16 * 8 * 8
    else:
        h, features = n.node("ReduceMean", [h], axes=[1, 2], keepdims=0), 16
    h = n.node("MatMul", [h, n.const(n.rng.normal(0, 1 / np.sqrt(features), (features, 32)), name="d1.w")],
               name="dense1")
    h = n.node("Relu", [n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 32), name="d1.b")])])
    h = n.node("MatMul", [h, n.const(n.rng.normal(0, 0.2, (32, 10)), name="d2.w")], name="dense2")
    h = n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 10), name="d2.b")])
    return n.build(n.node("Softmax", [h], axis=-1, out="y"), in_shape=(batch, 16, 16, 3), out_shape=(batch, 10),
                   opset=13)


# -- tf2onnx: NHWC input, fixed batch ----------------------------------------------------------

@pytest.mark.parametrize("batch", [1, "N"])
def test_nhwc_input_with_fixed_batch_prunes_and_keeps_its_input(batch):
    """The NHWC classifier prunes conv1, conv2 and dense1 (dense2 reaches the output through
    the Softmax and stays whole); the fixed input (1, 16, 16, 3) stays; the Softmax output
    still sums to 1 per sample; fidelity is measured on all 48 samples, fed one at a time."""
    model = tf_classifier(batch)
    result = assert_identity_and_close(model, CALIB_NHWC, FRESH_NHWC, tol=0.1)
    kept = {p: group_of(result.report, p)["channels_after"] for p in ("conv1", "conv2", "dense1")}
    assert kept == {"conv1": 4, "conv2": 8, "dense1": 16}
    assert group_of(result.report, "dense2")["frozen"]
    assert result.report["fidelity_on_calibration"]["samples"] == 48
    np.testing.assert_allclose(outputs(result.model, FRESH_NHWC).sum(axis=1), 1.0, rtol=1e-5)
    assert_costs_match(model, result)


@pytest.mark.parametrize("batch,samples", [(1, 48), (2, 47), (4, 3)])
def test_fixed_batch_fidelity_is_the_truth(batch, samples):
    """The report's relative error and top-1 agreement are those of the written model on
    the calibration samples it names, also when the fixed batch does not divide the sample
    count (2 into 47) or exceeds it (4 > 3)."""
    model = tf_classifier(batch)
    calib = CALIB_NHWC[:samples]
    result = prune_checked(model, calib, keep_ratio=0.5)
    fidelity = result.report["fidelity_on_calibration"]
    assert fidelity["samples"] == samples
    ref, got = outputs(model, calib), outputs(result.model, calib)
    assert fidelity["outputs"]["y"]["relative_error"] == pytest.approx(rel(got, ref), rel=1e-6, abs=1e-9)
    assert fidelity["outputs"]["y"]["top1_agreement"] == pytest.approx(np.mean(ref.argmax(1) == got.argmax(1)))
    assert_costs_match(model, result)


def test_nhwc_fixed_batch_through_the_command_line(tmp_path, capsys):
    """prune, calibrate + prune --stats and evaluate on a model fixed at batch 2, with 47
    calibration samples and 5 evaluation samples: all succeed, the written models keep the
    fixed input, and evaluate's relative error is the one recomputed here."""
    model = tf_classifier(2)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", CALIB_NHWC[:47])
    np.save(tmp_path / "data.npy", FRESH_NHWC[:5])
    base = ["--keep-ratio", "0.5", "--device", "cpu"]
    status, _, err = cli(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                  "--calib", str(tmp_path / "calib.npy"), *base])
    assert status == 0, err
    status, _, err = cli(capsys, ["calibrate", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                                  "--stats-out", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert status == 0, err
    status, _, err = cli(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out2.onnx"),
                                  "--stats", str(tmp_path / "s.npz"), *base])
    assert status == 0, err
    for name in ("out.onnx", "out2.onnx"):
        pruned = onnx.load(str(tmp_path / name))
        onnx.checker.check_model(pruned, full_check=True)
        assert pruned.graph.input == model.graph.input
    status, out, err = cli(capsys, ["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "out.onnx"),
                                    "--data", str(tmp_path / "data.npy"), "--device", "cpu", "--json"])
    assert status == 0, err
    report = json.loads(out)
    assert report["samples"] == 5
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    expected = rel(outputs(pruned, FRESH_NHWC[:5]), outputs(model, FRESH_NHWC[:5]))
    assert report["outputs"]["y"]["relative_error"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("wrong", ["nchw", "stacked_batches", "one_sample"])
def test_nhwc_model_refuses_calibration_of_the_wrong_layout_or_rank(tmp_path, capsys, wrong):
    """NCHW samples for an NHWC model, samples stacked as (48, 1, 16, 16, 3) batches of one,
    or a single sample without the sample axis: a one-line usage error (exit 2) that states
    the input's shape, and no output file."""
    onnx.save(tf_classifier(1), str(tmp_path / "m.onnx"))
    arrays = {"nchw": CALIB, "stacked_batches": CALIB_NHWC[:, None], "one_sample": CALIB_NHWC[0]}
    np.save(tmp_path / "calib.npy", arrays[wrong])
    line = usage_error_line(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                     "--calib", str(tmp_path / "calib.npy"), "--keep-ratio", "0.5", "--device", "cpu"])
    assert "16, 16, 3" in line
    assert not (tmp_path / "out.onnx").exists()


def test_fixed_input_with_symbolic_output_batch_says_what_it_needs(capsys, tmp_path):
    """An input fixed at (1, 3, 16, 16) whose output declares a named batch ('N', 10) is read
    as an input without a batch axis (README: a fixed first dimension the outputs do not
    share): (48, 3, 16, 16) is refused with a usage error that gives the shape wanted,
    (samples, 1, 3, 16, 16), and that shape prunes."""
    n = Net(3)
    h = n.node("Relu", [n.conv(n.node("Relu", [n.conv("x", 3, 8, name="conv1")]), 8, 16, name="conv2")])
    model = n.build(n.head(h, 16), in_shape=(1, 3, 16, 16), out_shape=("N", 10))
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", CALIB)
    line = usage_error_line(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                     "--calib", str(tmp_path / "calib.npy"), "--keep-ratio", "0.5", "--device", "cpu"])
    assert "(?, 1, 3, 16, 16)" in line
    result = prune_checked(model, CALIB[:, None], keep_ratio=0.5)
    assert result.report["samples"] == 48
    assert group_of(result.report, "conv1")["channels_after"] == 4


def test_calib_images_read_as_nhwc_for_an_nhwc_model(tmp_path, capsys):
    """--calib-images on a model with a fixed NHWC input: the images are read as NHWC RGB at
    the model's size (-v says so) and the pruned model keeps its input."""
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    model = tf_classifier(1)
    onnx.save(model, str(tmp_path / "m.onnx"))
    status, _, err = cli(capsys, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                  "--calib-images", str(folder), "--keep-ratio", "0.5", "--device", "cpu", "-v"])
    assert status == 0, err
    assert "12x16x16x3 NHWC RGB" in err
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    assert pruned.graph.input == model.graph.input


def test_keras_flatten_of_an_nhwc_map_prunes():
    """Keras' Flatten of an NHWC map (Reshape to (-1, H*W*C) after the Transpose) orders the
    features (h, w, c): conv2's group prunes all the same, dense1 reading its features
    position by position (tests/test_channels_last_flatten.py), at a fixed batch too."""
    model = tf_classifier(1, flatten=True)
    result = assert_identity_and_close(model, CALIB_NHWC, FRESH_NHWC, tol=0.5)
    kept = {p: group_of(result.report, p)["channels_after"] for p in ("conv1", "conv2", "dense1")}
    assert kept == {"conv1": 4, "conv2": 8, "dense1": 16}
    assert_costs_match(model, result)


# -- Relu6 and the hard activations ----------------------------------------------------------

def relu6_model(form: str) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu6 in ``form`` -> conv2 (8->16) -> Relu -> GAP -> Gemm."""
    n = Net(1)
    h = n.conv("x", 3, 8, name="conv1")
    opset = 13
    if form == "inputs":
        h = n.relu6(h)
    elif form == "min_only":
        h = n.node("Clip", [h, n.const(np.float32(0))])
    elif form == "max_only":
        h = n.node("Clip", [h, "", n.const(np.float32(6))])
    elif form == "attributes":
        h, opset = n.node("Clip", [h], min=0.0, max=6.0), 10
    elif form == "max_min":
        h = n.node("Min", [n.node("Max", [h, n.const(np.float32(0))]), n.const(np.float32(6))])
    h = n.node("Relu", [n.conv(h, 8, 16, name="conv2")])
    return n.build(n.head(h, 16), opset=opset)


@pytest.mark.parametrize("form", ["inputs", "min_only", "max_only", "attributes", "max_min"])
def test_relu6_in_every_spelling_passes_channels(form):
    """Clip with both bounds as inputs, only one, bounds as attributes (opset 10) and
    Max/Min by scalars all carry conv1's channels: both groups prune."""
    result = assert_identity_and_close(relu6_model(form))
    assert [group_of(result.report, p)["channels_after"] for p in ("conv1", "conv2")] == [4, 8]


def mobile_block(act: str) -> onnx.ModelProto:
    """MobileNet: stem Conv(3->16, stride 2) + BN -> act -> depthwise 3x3 + BN -> act ->
    pointwise (16->24) + BN -> act -> depthwise + BN -> act -> pointwise (24->32) + BN ->
    GAP -> Gemm, every Conv without a bias (unfused BatchNormalization)."""
    n = Net(8)

    def a(h):
        if act == "relu6":
            return n.relu6(h)
        if act == "hardswish":
            return n.node("HardSwish", [h])
        if act == "hardsigmoid":
            return n.node("HardSigmoid", [h], alpha=0.2, beta=0.5)
        if act == "silu":
            return n.node("Mul", [h, n.node("Sigmoid", [h])])
        if act == "silu_swapped":
            return n.node("Mul", [n.node("Sigmoid", [h]), h])
        return n.node("Mul", [h, n.node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])  # tf2onnx's hard-swish

    h = a(n.bn(n.conv("x", 3, 16, name="stem", bias=False, strides=[2, 2]), 16, "stem_bn"))
    h = a(n.bn(n.conv(h, 16, 16, name="dw", bias=False, group=16), 16, "dw_bn"))
    h = a(n.bn(n.conv(h, 16, 24, k=1, name="pw", bias=False), 24, "pw_bn"))
    h = a(n.bn(n.conv(h, 24, 24, name="dw2", bias=False, group=24), 24, "dw2_bn"))
    h = n.bn(n.conv(h, 24, 32, k=1, name="pw2", bias=False), 32, "pw2_bn")
    return n.build(n.head(h, 32), opset=14)


@pytest.mark.parametrize("act", ["relu6", "hardswish", "hardsigmoid", "silu", "silu_swapped", "x_hardsigmoid"])
def test_mobilenet_block_with_hard_activations(act):
    """Each pointwise group carries its depthwise Conv along and prunes to half; the
    parameters and MACs the report gives are those counted on the files."""
    model = mobile_block(act)
    result = assert_identity_and_close(model, tol=0.2)
    assert [group_of(result.report, p)["channels_after"] for p in ("stem", "pw", "pw2")] == [8, 12, 16]
    assert_costs_match(model, result)
    dw = next(nd for nd in result.model.graph.node if nd.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 8


# -- explicit Pad ----------------------------------------------------------------------------

def pad_model(form: str) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> Pad (``form``) -> Conv (no padding) -> ... -> GAP -> Gemm.
    "dw_*": TensorFlow's SAME before a stride-2 depthwise Conv (pad bottom/right only), on
    NCHW or between NHWC Transposes, then a pointwise Conv (8->16)."""
    n = Net(7)
    h = n.node("Relu", [n.conv("x", 3, 8, name="conv1")])
    opset = 13
    nchw_pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if form in ("constant", "reflect", "edge"):
        h = n.node("Pad", [h, n.const(nchw_pads, np.int64)], mode=form)
    elif form == "constant_value":
        h = n.node("Pad", [h, n.const(nchw_pads, np.int64), n.const(np.float32(-1.0))], mode="constant")
    elif form == "attribute_opset10":
        h, opset = n.node("Pad", [h], mode="reflect", pads=nchw_pads), 10
    elif form == "axes_opset18":
        h, opset = n.node("Pad", [h, n.const([1, 1, 1, 1], np.int64), "", n.const([2, 3], np.int64)],
                          mode="edge"), 18
    if not form.startswith("dw_"):
        h = n.node("Relu", [n.conv(h, 8, 16, name="conv2", pads=[0, 0, 0, 0])])
        return n.build(n.head(h, 16), opset=opset)
    if form == "dw_nchw":
        h = n.node("Pad", [h, n.const([0, 0, 0, 0, 0, 0, 1, 1], np.int64)], mode="constant")
    else:
        t = n.node("Pad", [n.node("Transpose", [h], perm=NHWC), n.const([0, 0, 0, 0, 0, 1, 1, 0], np.int64)],
                   mode="reflect")
        h = n.node("Transpose", [t], perm=NCHW)
    h = n.relu6(n.conv(h, 8, 8, name="dw", group=8, pads=[0, 0, 0, 0], strides=[2, 2]))
    h = n.relu6(n.conv(h, 8, 16, k=1, name="pw"))
    return n.build(n.head(h, 16), opset=opset)


@pytest.mark.parametrize("form", ["constant", "reflect", "edge", "constant_value", "attribute_opset10",
                                  "axes_opset18", "dw_nchw", "dw_nhwc"])
def test_explicit_pad_before_a_conv(form):
    """conv1's channels pass every Pad on H and W; both groups prune and the counts are the
    files' (the Pad before a stride-2 depthwise Conv changes its output size)."""
    model = pad_model(form)
    result = assert_identity_and_close(model)
    second = "pw" if form.startswith("dw_") else "conv2"
    assert [group_of(result.report, p)["channels_after"] for p in ("conv1", second)] == [4, 8]
    assert_costs_match(model, result)


# -- ReduceMean with axes as attribute and as input --------------------------------------------

def reducemean_model(opset: int, keepdims: int) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> ReduceMean over H, W (``axes`` an
    attribute below opset 18, an input from 18 on) [-> Flatten] -> Gemm; same weights."""
    n = Net(9)
    h = n.node("Relu", [n.conv(n.node("Relu", [n.conv("x", 3, 8, name="conv1")]), 8, 16, name="conv2")])
    if opset >= 18:
        h = n.node("ReduceMean", [h, n.const([-2, -1], np.int64)], keepdims=keepdims)
    else:
        h = n.node("ReduceMean", [h], axes=[-2, -1], keepdims=keepdims)
    if keepdims:
        h = n.node("Flatten", [h], axis=1)
    return n.build(n.gemm(h, 16, 10, out="y"), opset=opset)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reducemean_axes_attribute_and_input_prune_alike(keepdims):
    """The same network written with ReduceMean-13 (axes attribute) and ReduceMean-18 (axes
    input) keeps the same channels and gives the same outputs."""
    results = [assert_identity_and_close(reducemean_model(opset, keepdims)) for opset in (13, 18)]
    kept = [[group_of(r.report, p)["kept_channels"] for p in ("conv1", "conv2")] for r in results]
    assert kept[0] == kept[1]
    np.testing.assert_allclose(outputs(results[0].model, FRESH), outputs(results[1].model, FRESH), rtol=1e-5,
                               atol=1e-6)


# -- squeeze-excitation, BatchNorm1d, Expand ------------------------------------------------------

def se_model(form: str) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu = x; an SE gate on x in ``form``; x * gate -> conv2 (8->16) ->
    Relu -> GAP -> Gemm. Fixed batch 1 for "reshape_fixed"."""
    n = Net(6)
    x = n.node("Relu", [n.conv("x", 3, 8, name="conv1")])
    batch, opset = "N", 13
    if form in ("reducemean13", "reducemean18", "keras_reshape"):
        if form == "reducemean18":
            s, opset = n.node("ReduceMean", [x, n.const([2, 3], np.int64)], keepdims=1), 18
        else:
            s = n.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
        s = n.node("Relu", [n.conv(s, 8, 4, k=1, name="se_reduce")])
        if form == "keras_reshape":  # tf2onnx: a Reshape to the shape it has, (-1, C, 1, 1), before each Conv
            s = n.node("Reshape", [s, n.const([-1, 4, 1, 1], np.int64)])
        s = n.node("HardSigmoid", [n.conv(s, 4, 8, k=1, name="se_expand")], alpha=1 / 6, beta=0.5)
        gated = n.node("Mul", [s, x])
    else:
        s = n.node("GlobalAveragePool", [x])
        if form == "linear_unsqueeze":
            s = n.node("Flatten", [s], axis=1)
        else:
            s, batch = n.node("Reshape", [s, n.const([1, 8], np.int64)]), 1
        s = n.node("Relu", [n.gemm(s, 8, 4, name="se_reduce")])
        s = n.node("Sigmoid", [n.gemm(s, 4, 8, name="se_expand")])
        if form == "linear_unsqueeze":
            s = n.node("Unsqueeze", [s, n.const([2, 3], np.int64)])
        else:
            s = n.node("Reshape", [s, n.const([1, 8, 1, 1], np.int64)])
        gated = n.node("Mul", [x, s])
    h = n.node("Relu", [n.conv(gated, 8, 16, name="conv2")])
    return n.build(n.head(h, 16), in_shape=(batch, 3, 16, 16), out_shape=(batch, 10), opset=opset)


@pytest.mark.parametrize("form", ["reducemean13", "reducemean18", "linear_unsqueeze", "reshape_fixed", "keras_reshape"])
def test_squeeze_excitation_spellings(form):
    """The gate's expanding layer joins conv1's group (channel c of the gate scales channel
    c of x); the group, the bottleneck and conv2 all prune to half."""
    result = assert_identity_and_close(se_model(form), tol=0.2)
    gate = group_of(result.report, "conv1")
    assert sorted(gate["producers"]) == ["conv1", "se_expand"]
    assert [gate["channels_after"], group_of(result.report, "se_reduce")["channels_after"],
            group_of(result.report, "conv2")["channels_after"]] == [4, 2, 8]


def test_batchnorm1d_after_a_gemm():
    """PyTorch's Linear -> BatchNorm1d -> ReLU exports BatchNormalization on a (N, 32)
    tensor: fc1's features prune through it, and its parameters are sliced along."""
    n = Net(5)
    h = n.node("Flatten", [n.node("GlobalAveragePool", [n.node("Relu", [n.conv("x", 3, 8, name="conv1")])])], axis=1)
    h = n.node("Relu", [n.bn(n.gemm(h, 8, 32, name="fc1"), 32, "bn1d")])
    model = n.build(n.gemm(h, 32, 10, name="fc2", out="y"))
    result = assert_identity_and_close(model)
    assert group_of(result.report, "fc1")["channels_after"] == 16
    bn = next(nd for nd in result.model.graph.node if nd.op_type == "BatchNormalization")
    sizes = {NH.to_array(i).size for i in result.model.graph.initializer if i.name in bn.input[1:]}
    assert sizes == {16}
    assert_costs_match(model, result)


def test_expand_of_a_gate_freezes_with_a_reason():
    """PyTorch's ``gate.expand_as(x)`` in a fixed-batch export (Expand to the constant
    (1, 8, 16, 16)): conv1's group is kept whole with a reason naming Expand; the rest
    prunes and the model stays valid."""
    n = Net(4)
    x = n.node("Relu", [n.conv("x", 3, 8, name="conv1")])
    s = n.node("Relu", [n.conv(n.node("GlobalAveragePool", [x]), 8, 4, k=1, name="se_reduce")])
    s = n.node("Sigmoid", [n.conv(s, 4, 8, k=1, name="se_expand")])
    s = n.node("Expand", [s, n.const([1, 8, 16, 16], np.int64)])
    h = n.node("Relu", [n.conv(n.node("Mul", [x, s]), 8, 16, name="conv2")])
    model = n.build(n.head(h, 16), in_shape=(1, 3, 16, 16), out_shape=(1, 10))
    result = assert_identity_and_close(model)
    conv1 = group_of(result.report, "conv1")
    assert conv1["channels_after"] == 8 and "Expand" in conv1["frozen"]
    assert group_of(result.report, "conv2")["channels_after"] == 8


# -- weights standardised in the graph (NF-Nets' ScaledStdConv) ---------------------------------

def standardised_conv(n: Net, x: str, cin: int, cout: int, name: str) -> str:
    """A 3x3 Conv whose weight timm's ScaledStdConv computes in the graph, as the TorchScript
    exporter writes it: Reshape(w, (1, cout, -1)) -> BatchNormalization(training_mode=1,
    momentum 1, running statistics from ReduceMean, its running outputs unread) -> Reshape
    back."""
    w = n.const(n.rng.normal(0.1, 0.5, (cout, cin, 3, 3)), name=f"{name}.w_raw")
    flat = n.node("Reshape", [w, n.const(np.array([1, cout, -1]), np.int64)])
    mean = n.node("ReduceMean", [w], axes=[1, 2, 3], keepdims=0)
    var = n.node("ReduceMean", [n.node("Mul", [w, w])], axes=[1, 2, 3], keepdims=0)
    n.nodes.append(H.make_node("BatchNormalization", [flat, n.const(np.ones(cout)), n.const(np.zeros(cout)),
                                                      mean, var],
                               [f"{name}.std", f"{name}.running_mean", f"{name}.running_var"], name=f"{name}.bn",
                               epsilon=1e-5, momentum=1.0, training_mode=1))
    weight = n.node("Reshape", [f"{name}.std", n.const(np.array([cout, cin, 3, 3]), np.int64)])
    return n.node("Conv", [x, weight, n.const(n.rng.uniform(-0.1, 0.1, cout))], name=name, kernel_shape=[3, 3],
                  pads=[1] * 4)


def test_weights_standardised_in_the_graph_are_constants():
    """NF-Nets standardise each conv's weight with a training-mode BatchNormalization of the
    reshaped weight: folded by the spec (the weight's own per-channel mean and population
    variance), the layers prune and keep ratio 1.0 gives the original's outputs (a
    training-mode BatchNormalization was left to the runtime: every layer frozen with
    'non-constant weights', NF-ResNet-26 0% prunable)."""
    n = Net(21)
    h = n.node("Relu", [standardised_conv(n, "x", 3, 8, "conv1")])
    h = n.node("Relu", [standardised_conv(n, h, 8, 16, "conv2")])
    model = n.build(n.head(h, 16))
    assert onnx_eprune.inspect(model, CALIB[:1])["prunable_mac_fraction"] == 1.0
    assert_identity_and_close(model, tol=0.3)


@pytest.mark.parametrize("training", [False, True])
def test_folded_batch_normalization_is_onnxruntimes(training: bool):
    """Normalisation folds a BatchNormalization of constants by the spec; all its outputs
    (in training mode the running mean and variance moved by 1 - momentum) equal
    onnxruntime's on the same inputs."""
    from onnx_eprune.graph.model_io import _batch_norm
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    params = [rng.uniform(0.5, 1.5, 4).astype(np.float32) for _ in range(4)]
    names = ["y", "running_mean", "running_var"][:3 if training else 1]
    node = H.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], names, epsilon=1e-3, momentum=0.7,
                       training_mode=int(training))
    graph = H.make_graph([node], "bn", [H.make_tensor_value_info("x", TP.FLOAT, list(x.shape))],
                         [H.make_tensor_value_info(name, TP.FLOAT, None) for name in names],
                         [NH.from_array(p, k) for p, k in zip(params, "sbmv")])
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", 15)])
    model.ir_version = 8
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    folded = _batch_norm(node, [x] + params)
    assert len(folded) == len(expected)
    for got, want in zip(folded, expected):
        assert got.dtype == want.dtype and np.allclose(got, want, rtol=1e-5, atol=1e-6)


# -- de-duplicated constants, checked by dead channels -------------------------------------------

@pytest.mark.parametrize("shared", ["bn_statistics", "mul_scale"])
def test_deduplicated_constants_are_sliced_per_layer(shared):
    """tf2onnx / onnxoptimizer merge equal constants: here bn1 and bn2 read one zeros (mean)
    and one ones (variance) initializer, or conv1 and conv2 are scaled by one Mul constant.
    conv1's channels 4-7, conv2's 0-3 and conv3's 8-15 are dead (zero weights); ``l1`` at
    0.5 must keep exactly the live ones of each (different positions, so the shared constant is
    sliced two ways) and, the consumers being 1x1 Convs that absorb constants, the pruned
    model gives the original's outputs."""
    n = Net(11)
    zeros, ones = n.const(np.zeros(8), name="zeros"), n.const(np.ones(8), name="ones")
    scale = n.const(n.rng.uniform(0.5, 1.5, (1, 8, 1, 1)), name="shared_scale")

    def norm(h, name):
        return n.bn(h, 8, name, zeros, ones) if shared == "bn_statistics" else n.node("Mul", [h, scale], name=name)

    h = n.node("Relu", [norm(n.conv("x", 3, 8, name="conv1", bias=False, dead=[4, 5, 6, 7]), "norm1")])
    h = n.node("Relu", [norm(n.conv(h, 8, 8, k=1, name="conv2", bias=False, dead=[0, 1, 2, 3]), "norm2")])
    h = n.node("Relu", [n.conv(h, 8, 16, k=1, name="conv3", dead=list(range(8, 16)))])
    model = n.build(n.head(h, 16))
    result = prune_checked(model, keep_ratio=0.5, method="l1")
    assert group_of(result.report, "conv1")["kept_channels"] == [0, 1, 2, 3]
    assert group_of(result.report, "conv2")["kept_channels"] == [4, 5, 6, 7]
    assert group_of(result.report, "conv3")["kept_channels"] == list(range(8))
    assert rel(outputs(result.model, FRESH), outputs(model, FRESH)) < 1e-4


# -- ConvTranspose consumers ------------------------------------------------------------------

def conv_transpose_model(kind: str) -> onnx.ModelProto:
    """down Conv (3->8, stride 2) + BN -> Relu -> ConvTranspose (8->12, stride 2, ``kind``)
    [+ BN] -> Relu -> conv2 (12->16) -> Relu -> GAP -> Gemm."""
    n = Net(16)
    h = n.node("Relu", [n.bn(n.conv("x", 3, 8, name="down", strides=[2, 2], bias=False), 8, "bn0")])
    attrs = {"plain": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
             "dilated": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [2, 2, 2, 2], "output_padding": [1, 1],
                         "dilations": [2, 2]},
             "output_shape": {"kernel_shape": [3, 3], "strides": [2, 2], "output_shape": [16, 16]},
             "auto_pad": {"kernel_shape": [4, 4], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
             "group2": {"kernel_shape": [2, 2], "strides": [2, 2], "group": 2}}[kind]
    k = attrs["kernel_shape"][0]
    cout = 8 if kind == "group2" else 12
    w = n.const(n.rng.normal(0, 0.3, (8, cout // attrs.get("group", 1), k, k)), name="up.w")
    h = n.node("ConvTranspose", [h, w], name="up", **attrs)
    if kind != "group2":
        h = n.bn(h, cout, "bn_up")
    h = n.node("Relu", [n.node("Relu", [h])])
    return n.build(n.head(n.node("Relu", [n.conv(h, cout, 16, name="conv2")]), 16))


@pytest.mark.parametrize("kind", ["plain", "dilated", "output_shape", "auto_pad", "group2"])
def test_conv_transpose_consumer(kind):
    """A ConvTranspose reading a pruned group is re-fitted as the Conv it equals, its
    padding explicit or the one ``output_shape`` or ``auto_pad`` stands for (frozen until
    session 59); a grouped one passes its channels a conv group at a time. Counts are the
    files'."""
    model = conv_transpose_model(kind)
    result = assert_identity_and_close(model, tol=0.2)
    down = group_of(result.report, "down")
    assert down["frozen"] is None and down["channels_after"] == 4
    if kind != "group2":
        assert group_of(result.report, "up")["channels_after"] == 6
    assert_costs_match(model, result)


def keras_crop_model() -> onnx.ModelProto:
    """tf2onnx's Conv2DTranspose(padding="same") on an input of unknown H and W: the
    ConvTranspose (8 -> 6, stride 2, no pads: 2H + 1 rows) is cropped to 2H x 2W by a Slice
    along H and W whose ends come from the Shape of its input, then Relu -> conv2 (6 -> 16)
    -> GAP -> Gemm. ``down``'s channels 1 and 5 are zero after its Relu (zero weights, bias
    -0.3: a constant would not do, since a transposed convolution spreads it unevenly over
    the output, nor a padded one at its borders), and so is ``up``'s output 2."""
    n = Net(21)
    h = n.node("Relu", [n.conv("x", 3, 8, name="down", strides=[2, 2], pads=[1, 1, 1, 1], dead=[1, 5])])
    bias = next(t for t in n.inits if t.name == "down.b")
    bias.CopyFrom(NH.from_array(np.where(np.isin(np.arange(8), [1, 5]), -0.3, NH.to_array(bias)).astype(np.float32),
                                "down.b"))
    w = n.rng.normal(0, 0.3, (8, 6, 3, 3))
    w[:, 2] = 0.0
    bias = n.const([.2, .2, -.2, .2, .2, .2], name="up.b")
    up = n.node("ConvTranspose", [h, n.const(w, name="up.w"), bias], name="up", kernel_shape=[3, 3], strides=[2, 2])
    ends = n.node("Mul", [n.node("Slice", [n.node("Shape", [h]), n.const([2], np.int64), n.const([4], np.int64)]),
                          n.const([2, 2], np.int64)])
    crop = n.node("Slice", [up, n.const([0, 0], np.int64), ends, n.const([2, 3], np.int64)], name="crop")
    return n.build(n.head(n.node("Relu", [n.conv(n.node("Relu", [crop]), 6, 16, name="conv2")]), 16),
                   in_shape=("N", 3, "H", "W"))


def test_a_crop_to_a_computed_size_passes_the_channels():
    """The Slice's bounds are computed at run time, its axes are H and W: it passes the
    channels on (it froze both groups before session 59). Pruned to their live channels,
    both groups lose exactly the dead ones and the model gives the original's outputs at
    the calibration size and at others."""
    model = keras_crop_model()
    assert_identity_and_close(model, tol=0.5)
    result = prune_checked(model, keep_ratio=0.8, exclude=["conv2"])   # 8 -> 6, 6 -> 5: the live counts
    down, up = group_of(result.report, "down"), group_of(result.report, "up")
    assert down["kept_channels"] == [0, 2, 3, 4, 6, 7] and up["kept_channels"] == [0, 1, 3, 4, 5]
    for size in (16, 20, 11):
        x = np.random.default_rng(size).normal(size=(4, 3, size, size + 3)).astype(np.float32)
        assert rel(outputs(result.model, x), outputs(model, x)) < 1e-5, size


def keras_upsampling_model(tile_channels: bool = False) -> onnx.ModelProto:
    """tf2onnx's Keras UpSampling2D (nearest, x2) on an input of unknown H and W, between
    ``down`` (3 -> 8, stride 2; its channels 1 and 5 zero after the Relu) and conv2 (8 ->
    16) -> GAP -> Gemm: rows and then columns are each repeated by Unsqueeze, Tile,
    (a Transpose to channels last,) and a Reshape whose target is read from a Shape,
    ``[N, 2H, W, C]`` from ``Slice(Gather(Shape(x), [0, 2, 3, 1]))`` and ``[N, 2H, 2W, C]``
    from the Shape of the map it made. ``tile_channels``: the first Tile also copies the
    channels (its target then doubles C), which must freeze them."""
    n = Net(23)
    h = n.node("Relu", [n.conv("x", 3, 8, name="down", strides=[2, 2], pads=[1, 1, 1, 1], dead=[1, 5])])
    bias = next(t for t in n.inits if t.name == "down.b")
    bias.CopyFrom(NH.from_array(np.where(np.isin(np.arange(8), [1, 5]), -0.3, NH.to_array(bias)).astype(np.float32),
                                "down.b"))

    def twice(entry: str) -> str:
        return n.node("Mul", [entry, n.const([2], np.int64)])

    nhwc = n.node("Gather", [n.node("Shape", [h]), n.const([0, 2, 3, 1], np.int64)], axis=0)
    rows = n.node("Tile", [n.node("Unsqueeze", [h, n.const([3], np.int64)]),
                           n.const([1, 2 if tile_channels else 1, 1, 2, 1], np.int64)])
    rows = n.node("Transpose", [rows], perm=[0, 2, 3, 4, 1])
    channels = n.entries(nhwc, 2, 4) if not tile_channels else n.node("Mul", [n.entries(nhwc, 2, 4),
                                                                            n.const([1, 2], np.int64)])
    target = n.node("Concat", [n.entries(nhwc, 0, 1), twice(n.entries(nhwc, 1, 2)), channels], axis=0)
    up = n.node("Reshape", [rows, target])
    cols = n.node("Tile", [n.node("Unsqueeze", [up, n.const([3], np.int64)]), n.const([1, 1, 1, 2, 1], np.int64)])
    shape = n.node("Shape", [up])
    target = n.node("Concat", [n.entries(shape, 0, 2), twice(n.entries(shape, 2, 3)), n.entries(shape, 3, 4)], axis=0)
    up = n.node("Transpose", [n.node("Reshape", [cols, target])], perm=[0, 3, 1, 2])
    c = 16 if tile_channels else 8
    return n.build(n.head(n.node("Relu", [n.conv(up, c, 16, name="conv2")]), 16), in_shape=("N", 3, "H", "W"))


def test_keras_upsampling_passes_the_channels():
    """The Tiles copy rows and columns, the Reshapes regroup the axes before the channels
    kept last, and the channel count their targets read from a Shape follows by itself
    (before session 59: "op Tile is not understood", "its channel count is read by a Shape
    op"). Pruned to its live channels, ``down`` loses exactly the dead ones and the model
    gives the original's outputs at the calibration size and at others."""
    model = keras_upsampling_model()
    assert_identity_and_close(model, tol=0.5)
    result = prune_checked(model, keep_ratio=0.75, exclude=["conv2"])
    assert group_of(result.report, "down")["kept_channels"] == [0, 2, 3, 4, 6, 7]
    for size in (16, 12, 22):
        x = np.random.default_rng(size).normal(size=(4, 3, size, size + 6)).astype(np.float32)
        assert rel(outputs(result.model, x), outputs(model, x)) < 1e-5, size


def test_keras_upsampling_that_tiles_the_channels_freezes_them():
    result = prune_checked(keras_upsampling_model(tile_channels=True), keep_ratio=0.5)
    assert "Tile along the batch or channel axis" in group_of(result.report, "down")["frozen"]


def keras_dilated_model(swap_back: str = "conv") -> onnx.ModelProto:
    """tf2onnx's Keras ``Conv2D(dilation_rate=2, padding="same")`` on an input of unknown H
    and W, written as a space-to-batch: ``down`` (3 -> 8; its channels 1 and 5 zero after
    the Relu) is padded by pads computed from its Shape (2 on each side, one more at the
    end of an odd H or W), its batch and channel axes are swapped by a Transpose,
    SpaceToDepth(2) moves each 2 x 2 block's pixels into the batch, a second Transpose swaps
    the axes back, and ``mid`` (8 -> 6, 3 x 3, unpadded; its output 2 zero) convolves 4N
    images; then the way back (Transpose, DepthToSpace(2), a crop to H x W from a Shape, the
    bias as an Add of a (6, 1, 1, 1) constant on the swapped tensor, Transpose), Relu,
    conv2 (6 -> 16), GAP, Gemm. ``swap_back``: "conv" as tf2onnx writes it; "reduce": a
    ReduceMean over axis 1 of the swapped map (its batch) before the way back, which must
    freeze; "batch_h": two Transposes of the swapped map that swap its batch with H and
    back, which must freeze; "multiplier": ``mid`` is a depthwise Conv with two outputs per
    channel (Keras' ``depth_multiplier=2``), its outputs 2, 3, 10 and 11 zero after the Relu."""
    n = Net(31)
    h = n.node("Relu", [n.conv("x", 3, 8, name="down", pads=[1, 1, 1, 1], dead=[1, 5])])
    bias = next(t for t in n.inits if t.name == "down.b")
    bias.CopyFrom(NH.from_array(np.where(np.isin(np.arange(8), [1, 5]), -0.3, NH.to_array(bias)).astype(np.float32),
                                "down.b"))
    hw = n.node("Slice", [n.node("Shape", [h]), n.const([2], np.int64), n.const([4], np.int64)])
    odd = n.node("Mod", [hw, n.const([2, 2], np.int64)])
    pads = n.node("Concat", [n.const([0, 0, 2, 2, 0, 0], np.int64), n.node("Add", [odd, n.const([2, 2], np.int64)])],
                  axis=0)
    padded = n.node("Pad", [h, pads])
    swapped = n.node("Transpose", [padded], perm=[1, 0, 2, 3])
    if swap_back == "batch_h":
        swapped = n.node("Transpose", [n.node("Transpose", [swapped], perm=[0, 2, 1, 3])], perm=[0, 2, 1, 3])
    blocks = n.node("Transpose", [n.node("SpaceToDepth", [swapped], blocksize=2)], perm=[1, 0, 2, 3])
    if swap_back == "multiplier":   # a depthwise Conv, two outputs per channel: down's dead ones read zeros
        out, bias = 16, np.where(np.isin(np.arange(16), [2, 3, 10, 11]), -0.2, 0.2)
        mid = n.node("Conv", [blocks, n.const(n.rng.normal(0, 0.3, (16, 1, 3, 3)), name="mid.w")], name="mid",
                     kernel_shape=[3, 3], group=8)
    else:
        w = n.rng.normal(0, 0.3, (6, 8, 3, 3))
        w[2] = 0.0
        out, bias = 6, np.array([.2, .2, -.2, .2, .2, .2])
        mid = n.node("Conv", [blocks, n.const(w, name="mid.w")], name="mid", kernel_shape=[3, 3])
    back = n.node("DepthToSpace", [n.node("Transpose", [mid], perm=[1, 0, 2, 3])], blocksize=2)
    crop = n.node("Slice", [back, n.const([0, 0], np.int64), hw, n.const([2, 3], np.int64)], name="crop")
    if swap_back == "reduce":
        crop = n.node("Mul", [crop, n.node("ReduceMean", [crop], axes=[1], keepdims=1)])
    biased = n.node("Add", [crop, n.const(bias.reshape(out, 1, 1, 1), name="mid.b")])
    h = n.node("Relu", [n.node("Transpose", [biased], perm=[1, 0, 2, 3])])
    return n.build(n.head(n.node("Relu", [n.conv(h, out, 16, name="conv2")]), 16), in_shape=("N", 3, "H", "W"),
                   opset=17)


def test_a_keras_space_to_batch_passes_the_channels():
    """The Transposes that swap the batch and channel axes, the Pad, SpaceToDepth and
    DepthToSpace, the crop and the bias Add between them pass the channels (before session
    60: "Transpose that moves the batch axis" froze both groups), and ``mid`` is calibrated
    on its 4N images, four rows per sample. Pruned to their live channels, both groups lose
    exactly the dead ones and the model gives the original's outputs at the calibration
    size and at others, odd ones included; the report counts ``mid`` at every position of
    every block."""
    model = keras_dilated_model()
    assert_identity_and_close(model, tol=0.5)
    result = prune_checked(model, keep_ratio=0.8, exclude=["conv2"])   # 8 -> 6, 6 -> 5: the live counts
    assert group_of(result.report, "down")["kept_channels"] == [0, 2, 3, 4, 6, 7]
    assert group_of(result.report, "mid")["kept_channels"] == [0, 1, 3, 4, 5]
    for size in (16, 20, 11):
        x = np.random.default_rng(size).normal(size=(4, 3, size, size + 3)).astype(np.float32)
        assert rel(outputs(result.model, x), outputs(model, x)) < 1e-5, size
    # per sample at 16 x 16: down 3*8*9*256, mid as the dilated conv it is 8*6*9*256, conv2
    # 6*16*9*256, the Gemm 16*10
    assert result.report["macs"]["before"] == (3 * 8 + 8 * 6 + 6 * 16) * 9 * 256 + 160


def test_a_channel_multiplier_in_a_space_to_batch_passes_the_channels():
    """The swaps move a depthwise multiplier's two outputs per channel together (before:
    "Transpose that moves the batch axis, or of a flattened tensor" froze every group):
    ``down``'s dead channels go with the two outputs each of ``mid`` that read them."""
    model = keras_dilated_model("multiplier")
    result = prune_checked(model, keep_ratio=0.8, exclude=["conv2"])
    assert group_of(result.report, "down")["kept_channels"] == [0, 2, 3, 4, 6, 7]
    for size in (16, 11):
        x = np.random.default_rng(size).normal(size=(4, 3, size, size + 3)).astype(np.float32)
        assert rel(outputs(result.model, x), outputs(model, x)) < 1e-5, size


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
@pytest.mark.parametrize("kind", ["space_to_depth", "nd"])
def test_a_keras_space_to_batch_prunes_to_a_target(mode, kind):
    """A FLOPs target measures the groups' output gains with noise on ``mid``'s output (4N
    or 2N rows) and ranks ``mid`` on positions drawn per row: both modes reach the target
    with a model that runs at other sizes, and the kept channels do not depend on the
    batch size."""
    model, calib, fresh = (keras_dilated_model(), CALIB, (3, 3, 13, 18)) if kind == "space_to_depth" else \
        (keras_dilated_1d_model(), np.random.default_rng(3).normal(size=(48, 3, 24)).astype(np.float32), (3, 3, 19))
    results = [prune_checked(model, calib, flops_reduction=0.4, mode=mode, batch_size=size) for size in (48, 7)]
    assert results[0].report["macs"]["after"] <= 0.6 * results[0].report["macs"]["before"]
    assert [g.get("kept_channels") for g in results[0].report["groups"]] == \
        [g.get("kept_channels") for g in results[1].report["groups"]]
    x = np.random.default_rng(5).normal(size=fresh).astype(np.float32)
    assert np.isfinite(outputs(results[0].model, x)).all()


@pytest.mark.parametrize("kind, reason", [("reduce", "reads a tensor whose batch and channel axes are swapped"),
                                          ("batch_h", "Transpose that moves the batch axis")])
def test_a_space_to_batch_the_analysis_cannot_follow_freezes(kind, reason):
    """The channels on the swapped map freeze, and only those: ``down``'s where the batch
    moves to H, ``mid``'s where its batch is averaged; conv2's stay prunable."""
    result = prune_checked(keras_dilated_model(kind), keep_ratio=0.5)
    frozen = group_of(result.report, "mid" if kind == "reduce" else "down")["frozen"]
    assert reason in frozen
    assert group_of(result.report, "conv2")["frozen"] is None


def keras_dilated_1d_model() -> onnx.ModelProto:
    """tf2onnx's Keras ``Conv1D(dilation_rate=2, padding="same")`` on an input of unknown
    length (a TCN layer): TensorFlow's general SpaceToBatchND, written with Reshapes and
    Transposes, channels last throughout. ``down`` (Conv1d 3 -> 8; its channels 1 and 5
    zero after the Relu) -> (N, L, C) -> Pad (2 on each side, one more at the end of an odd
    L, computed from the Shape) -> Reshape to (N, L'/2, 2, C) -> Transpose (2, N, L'/2, C)
    -> Reshape to (2N, L'/2, C) -> ``mid`` (Conv1d 8 -> 6, unpadded, between Transposes;
    its output 2 zero) -> Reshape to (2, N, L/2, C) by a target Gathered from a Concat ->
    Transpose (N, L/2, 2, C) -> Reshape to (N, L, C) -> crop to L -> bias Add -> Relu ->
    (N, C, L) -> conv2 (6 -> 16) -> GAP -> Gemm. Every target's channel entry is read from
    a Shape, as tf2onnx writes them."""
    n = Net(37)

    def conv1d(x: str, w: np.ndarray, b: np.ndarray | None, name: str, pads: list[int]) -> str:
        inputs = [x, n.const(w, name=f"{name}.w")] + ([n.const(b, name=f"{name}.b")] if b is not None else [])
        return n.node("Conv", inputs, name=name, kernel_shape=[3], pads=pads)

    w, b = n.rng.normal(0, 0.5, (8, 3, 3)), n.rng.uniform(-0.1, 0.1, 8)
    w[[1, 5]], b[[1, 5]] = 0.0, -0.3
    h = n.node("Transpose", [n.node("Relu", [conv1d("x", w, b, "down", [1, 1])])], perm=[0, 2, 1])
    length = n.entries(n.node("Shape", [h]), 1, 2)
    pads = n.node("Concat", [n.const([0, 2, 0, 0], np.int64),
                             n.node("Add", [n.node("Mod", [length, n.const([2], np.int64)]), n.const([2], np.int64)]),
                             n.const([0], np.int64)], axis=0)
    padded = n.node("Pad", [h, pads])
    shape = n.node("Shape", [padded])
    half = n.node("Div", [n.entries(shape, 1, 2), n.const([2], np.int64)])
    blocks = n.node("Reshape", [padded, n.node("Concat", [n.const([-1], np.int64), half, n.const([2], np.int64),
                                                          n.entries(shape, 2, 3)], axis=0)])
    blocks = n.node("Transpose", [blocks], perm=[2, 0, 1, 3])
    batch = n.node("Reshape", [blocks, n.node("Concat", [n.const([-1], np.int64), half, n.entries(shape, 2, 3)],
                                              axis=0)])
    w = n.rng.normal(0, 0.3, (6, 8, 3))
    w[2] = 0.0
    mid = n.node("Transpose", [conv1d(n.node("Transpose", [batch], perm=[0, 2, 1]), w, None, "mid", [0, 0])],
                 perm=[0, 2, 1])
    target = n.node("Gather", [n.node("Concat", [n.const([2, -1], np.int64), n.entries(n.node("Shape", [mid]), 1, 3)],
                                      axis=0), n.const([0, 1, 2, 3], np.int64)], axis=0)
    back = n.node("Transpose", [n.node("Reshape", [mid, target])], perm=[1, 2, 0, 3])
    shape = n.node("Shape", [back])
    back = n.node("Reshape", [back, n.node("Concat", [n.const([-1], np.int64),
                                                      n.node("Mul", [n.entries(shape, 1, 2), n.const([2], np.int64)]),
                                                      n.entries(shape, 3, 4)], axis=0)])
    crop = n.node("Slice", [back, n.const([0], np.int64), length, n.const([1], np.int64)], name="crop")
    h = n.node("Relu", [n.node("Add", [crop, n.const([.2, .2, -.2, .2, .2, .2], name="mid.b")])])
    w2 = n.rng.normal(0, 0.3, (16, 6, 3))
    h = n.node("Relu", [conv1d(n.node("Transpose", [h], perm=[0, 2, 1]), w2, n.rng.uniform(-.1, .1, 16), "conv2",
                               [1, 1])])
    return n.build(n.gemm(n.node("Flatten", [n.node("GlobalAveragePool", [h])], axis=1), 16, 10, out="y"),
                   in_shape=("N", 3, "L"), opset=17)


def test_a_keras_space_to_batch_nd_passes_the_channels():
    """tf2onnx's general SpaceToBatchND (a dilated Conv1D on an input of unknown length)
    passes the channels (before session 60: "Transpose that moves the batch axis" and "its
    channel count is read by a Shape op" froze both groups): the Reshapes that merge the
    blocks into the batch and split them out again, with their channel entries read from
    Shapes, and the Transposes between. Pruned to their live channels, both groups lose
    exactly the dead ones and the model gives the original's outputs at the calibration
    length and at others, odd ones included."""
    model = keras_dilated_1d_model()
    calib = np.random.default_rng(3).normal(size=(48, 3, 24)).astype(np.float32)
    fresh = np.random.default_rng(4).normal(size=(6, 3, 24)).astype(np.float32)
    assert_identity_and_close(model, calib, fresh, tol=0.5)
    result = prune_checked(model, calib, keep_ratio=0.8, exclude=["conv2"])
    assert group_of(result.report, "down")["kept_channels"] == [0, 2, 3, 4, 6, 7]
    assert group_of(result.report, "mid")["kept_channels"] == [0, 1, 3, 4, 5]
    for length in (24, 30, 17):
        x = np.random.default_rng(length).normal(size=(4, 3, length)).astype(np.float32)
        assert rel(outputs(result.model, x), outputs(model, x)) < 1e-5, length


# -- Resize ------------------------------------------------------------------------------------

def resize_model(form: str) -> onnx.ModelProto:
    """conv1 (3->8, stride 2) -> Relu -> Resize x2 (``form``) -> conv2 (8->16) -> Relu ->
    GAP -> Gemm. "sizes_fixed": the 4-entry constant sizes (1, 8, 16, 16) of a batch-1
    export, which names the channel count."""
    n = Net(3)
    h = n.node("Relu", [n.conv("x", 3, 8, name="conv1", strides=[2, 2])])
    batch, opset = "N", 13
    if form == "opset10":
        h, opset = n.node("Resize", [h, n.const([1, 1, 2, 2])], mode="nearest"), 10
    elif form == "scales":
        h = n.node("Resize", [h, "", n.const([1, 1, 2, 2])], mode="linear")
    elif form == "sizes_fixed":
        h, batch = n.node("Resize", [h, "", "", n.const([1, 8, 16, 16], np.int64)], mode="nearest"), 1
    elif form == "sizes_axes_opset18":
        h, opset = n.node("Resize", [h, "", "", n.const([16, 16], np.int64)], mode="linear", axes=[2, 3]), 18
    elif form == "nhwc_scales":
        t = n.node("Resize", [n.node("Transpose", [h], perm=NHWC), "", n.const([1, 2, 2, 1])], mode="linear")
        h = n.node("Transpose", [t], perm=NCHW)
    h = n.node("Relu", [n.conv(h, 8, 16, name="conv2")])
    return n.build(n.head(h, 16), in_shape=(batch, 3, 16, 16), out_shape=(batch, 10), opset=opset)


@pytest.mark.parametrize("form", ["opset10", "scales", "sizes_fixed", "sizes_axes_opset18", "nhwc_scales"])
def test_resize_forms(form):
    """conv1's channels pass every Resize; where the constant sizes name the channel count
    they are rewritten to the kept count."""
    model = resize_model(form)
    result = assert_identity_and_close(model)
    assert group_of(result.report, "conv1")["channels_after"] == 4
    if form == "sizes_fixed":
        resize = next(nd for nd in result.model.graph.node if nd.op_type == "Resize")
        sizes = next(NH.to_array(i) for i in result.model.graph.initializer if i.name == resize.input[3])
        assert sizes.tolist() == [1, 4, 16, 16]


# -- every weighted layer is accounted for ------------------------------------------------------

def convnext_mlp() -> onnx.ModelProto:
    """ConvNeXt (torchvision, timm with conv_mlp=False): conv1 (3->8) -> Transpose to NHWC
    -> pw1 Linear (MatMul + Add, 8->16) -> Relu -> pw2 Linear (16->8) -> Transpose back ->
    Relu -> conv2 (8->16) -> Relu -> GAP -> Gemm. pw1 and pw2 multiply a 4-D activation."""
    n = Net(17)
    t = n.node("Transpose", [n.conv("x", 3, 8, name="conv1")], perm=NHWC)
    t = n.node("MatMul", [t, n.const(n.rng.normal(0, 0.35, (8, 16)), name="pw1.w")], name="pw1")
    t = n.node("Relu", [n.node("Add", [t, n.const(n.rng.uniform(-0.1, 0.1, 16), name="pw1.b")])])
    t = n.node("MatMul", [t, n.const(n.rng.normal(0, 0.25, (16, 8)), name="pw2.w")], name="pw2")
    t = n.node("Add", [t, n.const(n.rng.uniform(-0.1, 0.1, 8), name="pw2.b")])
    h = n.node("Relu", [n.node("Transpose", [t], perm=NCHW)])
    return n.build(n.head(n.node("Relu", [n.conv(h, 8, 16, name="conv2")]), 16))


WEIGHTED_MODELS = {
    "tf_classifier": (lambda: tf_classifier(1), CALIB_NHWC),
    "mobile_block": (lambda: mobile_block("hardswish"), CALIB),
    "conv_transpose": (lambda: conv_transpose_model("plain"), CALIB),
    "se_linear": (lambda: se_model("linear_unsqueeze"), CALIB),
    "convnext_mlp": (convnext_mlp, CALIB),
}


@pytest.mark.parametrize("name", [
    *[n for n in WEIGHTED_MODELS if n != "convnext_mlp"],
    "convnext_mlp"])
def test_every_weighted_layer_appears_in_the_report(name):
    """Reports tell the truth: every (ungrouped) Conv / ConvTranspose / Gemm / MatMul with a
    constant weight appears in a report group, as the producer of its output channels (pruned, or
    frozen with the reason). For ConvNeXt, pw1's 16 hidden channels (Linear -> Relu ->
    Linear, the block's widest layer, on NHWC pixels) are listed frozen with the MatMul's
    reason (once its outputs were opaque, so no group named pw1 or pw2, and ``inspect`` and
    the report were silent about a third of the model's MACs)."""
    build, calib = WEIGHTED_MODELS[name]
    model = build()
    result = prune_checked(model, calib, keep_ratio=0.5)
    inits = {i.name for i in model.graph.initializer}
    weighted = [nd.name for nd in model.graph.node
                if nd.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and nd.input[1] in inits
                and not any(a.name == "group" and a.i > 1 for a in nd.attribute)]  # depthwise: pass-through
    producers = {p for g in result.report["groups"] for p in g["producers"]}
    assert [w for w in weighted if w not in producers] == []


@pytest.mark.parametrize("case", ["nhwc_graph_input", "matmul_on_nhwc"])
def test_frozen_reasons_name_the_real_cause(case):
    """The group of the NHWC graph input read by conv1 is frozen as a "graph input" (as it
    is for an NCHW input); conv1's group read by ConvNeXt's pw1 is pruned, or frozen with a
    reason about the MatMul. Once they read "conv1 reads them on axis 1, not on axis 2" and
    "pw1 reads them on axis 1, not on axis 3", both false (conv1 reads the transposed
    input's axis 1, where its 3 channels are; a MatMul reads the last axis)."""
    if case == "nhwc_graph_input":
        report = prune_checked(tf_classifier(1), CALIB_NHWC, keep_ratio=0.5).report
        group = next(g for g in report["groups"] if g["consumers"] == ["conv1"])
        assert "graph input" in group["frozen"]
    else:
        report = prune_checked(convnext_mlp(), CALIB, keep_ratio=0.5).report
        group = group_of(report, "conv1")
        assert group["frozen"] is None or ("MatMul" in group["frozen"] and "axis 1" not in group["frozen"])


# -- a bias that the exporter wrote as an Add ------------------------------------------------------

def paddle_block() -> onnx.ModelProto:
    """paddle2onnx: Conv without bias + Add of the bias (1, C, 1, 1) + Mul/Add affine
    (1, C, 1, 1) -> Relu, twice; GAP -> Flatten -> MatMul + Add (the classifier)."""
    n = Net(18)

    def block(x, cin, cout, name):
        h = n.node("Add", [n.conv(x, cin, cout, name=name, bias=False),
                           n.const(n.rng.uniform(-0.1, 0.1, (1, cout, 1, 1)), name=f"{name}.bias")])
        h = n.node("Mul", [h, n.const(n.rng.uniform(0.5, 1.5, (1, cout, 1, 1)), name=f"{name}.scale")])
        h = n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, (1, cout, 1, 1)), name=f"{name}.shift")])
        return n.node("Relu", [h])

    h = block(block("x", 3, 8, "conv1"), 8, 16, "conv2")
    h = n.node("Flatten", [n.node("GlobalAveragePool", [h])], axis=1)
    h = n.node("MatMul", [h, n.const(n.rng.normal(0, 0.25, (16, 10)), name="fc.w")], name="fc")
    return n.build(n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 10), name="fc.b")], out="y"), opset=13)


def test_paddle_affine_blocks_prune():
    """Paddle's Conv + Add(bias) + Mul/Add affine: every per-channel constant is sliced
    with its group, the counts are the files'."""
    model = paddle_block()
    result = assert_identity_and_close(model)
    assert [group_of(result.report, p)["channels_after"] for p in ("conv1", "conv2")] == [4, 8]
    assert_costs_match(model, result)
    sliced = {i.name: tuple(i.dims) for i in result.model.graph.initializer}
    assert sliced["conv1.bias"] == sliced["conv1.scale"] == sliced["conv1.shift"] == (1, 4, 1, 1)


@pytest.mark.parametrize("exporter", ["paddle_conv_add", "tf_dense_matmul_add"])
def test_refit_bias_goes_into_the_exporters_add(exporter):
    """A re-fitted layer that is followed by an Add of a per-output constant (its bias, as
    paddle2onnx writes every Conv's and tf2onnx / PyTorch every Dense / Linear's) gets its
    new bias folded into that Add: the written model has no bias input on such a layer, as
    the original had none, and the report counts no extra vector. Once conv2 (Paddle) and
    dense1 / dense2 / fc (MatMul, rewritten to Gemm) got a new ``<weight>.eprune_bias``
    input, two biases in series."""
    model, calib = (paddle_block(), CALIB) if exporter == "paddle_conv_add" else (tf_classifier(1), CALIB_NHWC)
    result = prune_checked(model, calib, keep_ratio=0.5)
    pruned = result.model
    inits = {i.name for i in pruned.graph.initializer}
    readers = {}
    for nd in pruned.graph.node:
        for name in nd.input:
            readers.setdefault(name, []).append(nd)
    doubled = []
    for nd in pruned.graph.node:
        if nd.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        after = readers.get(nd.output[0], [])
        followed_by_bias = len(after) == 1 and after[0].op_type == "Add" and any(i in inits for i in after[0].input)
        if followed_by_bias and len(nd.input) > 2 and nd.input[2]:
            doubled.append(nd.name)
    assert doubled == []
