"""An adversarial user of ``onnx-eprune evaluate`` and ``onnx_eprune.evaluate`` (evaluate.py).

Attacks: ORIGINAL and PRUNED that do not fit each other (input names, output counts, names,
order and shapes, batch sizes), the same file given twice, multi-output models, integer,
bool, single-logit and segmentation outputs, NaN/Inf outputs, rows of zeros, odd --data
files (NHWC, empty, .npz with extra or misnamed arrays), labels of every wrong kind, models
with external data (present, missing), and the truth of the report: every figure of
--json recomputed independently with onnxruntime + numpy (fidelity, accuracy, file sizes
from the disk, parameters and MACs counted by hand), the table matching --json, the
latency figures, -q, exit statuses and one-line errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, random_input
from onnx_eprune.cli import main

ERROR = "onnx-eprune: error: "
HW = 8


# -- helpers ---------------------------------------------------------------------------------

def tiny(seed: int = 0, classes: int = 10, cout: int = 4, batch="N", extra_nodes=(), outputs=None,
         relu_out: bool = False, bias: bool = True, seg: bool = False) -> onnx.ModelProto:
    """x (batch, 3, 8, 8) -> Conv(3->cout) -> Relu -> GAP -> Flatten -> Gemm(cout->classes) = y
    [-> Relu]; ``seg``: a 1x1 Conv head giving seg (batch, classes, 8, 8) instead."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(cout, 3, 3, 3)).astype(np.float32), "W")]
    if bias:
        inits.append(numpy_helper.from_array((0.1 * rng.normal(size=cout)).astype(np.float32), "B"))
    nodes = [helper.make_node("Conv", ["x", "W", "B"] if bias else ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    if seg:
        inits.append(numpy_helper.from_array(rng.normal(size=(classes, cout, 1, 1)).astype(np.float32), "W3"))
        nodes.append(helper.make_node("Conv", ["r", "W3"], ["seg"], name="head"))
        default_outs = [helper.make_tensor_value_info("seg", TensorProto.FLOAT, [batch, classes, HW, HW])]
    else:
        inits.append(numpy_helper.from_array(rng.normal(size=(classes, cout)).astype(np.float32), "W2"))
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", "W2"], ["z" if relu_out else "y"], name="fc", transB=1)]
        if relu_out:
            nodes.append(helper.make_node("Relu", ["z"], ["y"], name="relu_out"))
        default_outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])]
    nodes += list(extra_nodes)
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [batch, 3, HW, HW])],
                              outputs or default_outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def inputs8(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, HW, HW)).astype(np.float32)


def ort_outputs(path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the model at ``path`` on ``x``, run by onnxruntime directly."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def fidelity(ref: np.ndarray, got: np.ndarray) -> dict:
    """The figures evaluate documents, computed by hand in float64."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = got.reshape(len(got), -1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero rows: undefined cosine
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out = {"relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)), "cosine": float(np.mean(cos))}
    if ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    return out


def weight_params(model: onnx.ModelProto) -> int:
    """Elements of the weights and biases of Conv and Gemm nodes."""
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            total += sum(int(np.prod(inits[n].dims)) for n in node.input[1:] if n in inits)
    return total


def run_ok(capsys, argv) -> tuple[str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def run_error(capsys, argv, code: int = 2) -> str:
    """A failing command: the exit status, one error line, no traceback."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == code, err
    assert out == "", out  # no half report before the error
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR), err
    return lines[0]


def strict_json(text: str):
    """json.loads refusing NaN and Infinity, which are not JSON (RFC 8259)."""
    def refuse(token):
        raise ValueError(f"{token} is not valid JSON")
    return json.loads(text, parse_constant=refuse)


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The test CNN, a pruning of it (keep-ratio 0.5, l1), 40 held-out inputs and labels on disk."""
    d = tmp_path_factory.mktemp("pair")
    model = conv_bn_relu_pool_flatten_gemm(True)
    save(model, d / "a.onnx")
    result = onnx_eprune.prune(model, random_input(64, seed=1), keep_ratio=0.5, method="l1", device="cpu")
    result.save(str(d / "b.onnx"))
    np.save(d / "data.npy", random_input(40, seed=5))
    np.save(d / "labels.npy", np.random.default_rng(3).integers(0, 10, 40))
    return d


def evaluate_json(capsys, d, *extra, original="a.onnx", pruned="b.onnx", data="data.npy") -> dict:
    out, _ = run_ok(capsys, ["evaluate", d / original, d / pruned, "--data", d / data, "--device", "cpu",
                             "--json", *extra])
    return strict_json(out)


# -- the report tells the truth ----------------------------------------------------------------

def test_json_figures_match_an_independent_recomputation(pair, capsys):
    """Every --json figure recomputed: fidelity and accuracy with onnxruntime + numpy, bytes
    with os.path.getsize, parameters from the Conv/Gemm initializers, MACs by hand."""
    r = evaluate_json(capsys, pair, "--labels", pair / "labels.npy")
    x, labels = np.load(pair / "data.npy"), np.load(pair / "labels.npy")
    ref, got = ort_outputs(pair / "a.onnx", x)["y"], ort_outputs(pair / "b.onnx", x)["y"]
    assert r["samples"] == 40 and r["provider"] == "CPUExecutionProvider"
    assert set(r["outputs"]) == {"y"}
    want = fidelity(ref, got)
    assert set(r["outputs"]["y"]) == set(want)
    for key, value in want.items():
        assert r["outputs"]["y"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert r["accuracy"] == {"original": pytest.approx(np.mean(ref.argmax(1) == labels)),
                             "pruned": pytest.approx(np.mean(got.argmax(1) == labels)),
                             "per_class": r["accuracy"]["per_class"]}  # recomputed in test_report_consistency
    for which, name in (("original", "a.onnx"), ("pruned", "b.onnx")):
        model = onnx.load(str(pair / name))
        assert r["size"][which]["bytes"] == os.path.getsize(pair / name)
        assert r["size"][which]["params"] == weight_params(model)
    # conv 3->8 3x3 @16x16, conv 8->16 3x3 @8x8, fc 256->32, fc 32->10
    assert r["size"]["original"]["macs"] == 8 * 27 * 256 + 16 * 72 * 64 + 256 * 32 + 32 * 10
    assert r["size"]["pruned"]["macs"] < r["size"]["original"]["macs"]


def test_table_states_the_json_figures(pair, capsys):
    """The table prints, rounded, exactly what --json reports (latency aside, which is re-measured)."""
    argv = ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", pair / "data.npy", "--labels",
            pair / "labels.npy", "--device", "cpu"]
    r = strict_json(run_ok(capsys, [*argv, "--json"])[0])
    table = run_ok(capsys, argv)[0]
    lines = table.splitlines()
    assert lines[0] == f"40 samples on {r['provider']}"
    y = r["outputs"]["y"]
    assert (f"output y: relative error {y['relative_error']:.4f}, cosine {y['cosine']:.5f}, "
            f"top-1 agreement {100 * y['top1_agreement']:.2f}%") in lines
    acc = r["accuracy"]
    assert any(line.startswith(f"accuracy: original {100 * acc['original']:.2f}%, pruned "
                               f"{100 * acc['pruned']:.2f}%") for line in lines)
    for which in ("original", "pruned"):
        s = r["size"][which]
        line, = (ln for ln in lines if ln.startswith(which))
        assert f"{s['bytes']:,} bytes, {s['params']:,} params, {s['macs']:,} MACs" in line
        assert re.search(r"latency batch1 \d+\.\d\d ms, batch32 \d+\.\d\d ms$", line), line


def test_latency_figures_are_positive_and_plausible(pair, capsys):
    """Batch 1 and batch 32 for both models, finite, positive, well under a second for this tiny CNN."""
    r = evaluate_json(capsys, pair)
    for which in ("original", "pruned"):
        lat = r["latency_ms"][which]
        assert set(lat) == {"batch1", "batch32"}
        for value in lat.values():
            assert math.isfinite(value) and 0.0 < value < 1000.0


def test_latency_is_at_batch_32_even_with_few_samples(pair, capsys, tmp_path):
    """README: evaluate gives the "median latency at batch 1 and 32", also with only 5 samples
    in --data. Was: the keys were batch1 and batch5 (a dynamic batch was cut to the sample
    count)."""
    shutil.copy(pair / "a.onnx", tmp_path / "a.onnx")
    shutil.copy(pair / "b.onnx", tmp_path / "b.onnx")
    np.save(tmp_path / "data.npy", np.load(pair / "data.npy")[:5])
    r = evaluate_json(capsys, tmp_path)
    assert set(r["latency_ms"]["original"]) == {"batch1", "batch32"}


def test_api_with_models_in_memory_gives_the_figures_of_the_files(pair):
    """onnx_eprune.evaluate on ModelProtos and arrays reports what it reports for the paths;
    the size of an in-memory model is what onnx.save writes."""
    x = np.load(pair / "data.npy")
    a, b = onnx.load(str(pair / "a.onnx")), onnx.load(str(pair / "b.onnx"))
    mem = onnx_eprune.evaluate(a, b, x, labels=np.load(pair / "labels.npy"), device="cpu")
    disk = onnx_eprune.evaluate(str(pair / "a.onnx"), str(pair / "b.onnx"), str(pair / "data.npy"),
                                labels=str(pair / "labels.npy"), device="cpu")
    assert mem["outputs"] == disk["outputs"] and mem["accuracy"] == disk["accuracy"]
    assert mem["size"]["original"] == disk["size"]["original"]
    assert mem["size"]["pruned"]["params"] == disk["size"]["pruned"]["params"]
    assert mem["size"]["pruned"]["bytes"] == len(b.SerializeToString())


def test_the_same_file_twice_is_perfect_agreement(pair, capsys):
    """ORIGINAL given twice: zero error, cosine 1, agreement 1, equal accuracy and sizes."""
    r = evaluate_json(capsys, pair, "--labels", pair / "labels.npy", pruned="a.onnx")
    y = r["outputs"]["y"]
    assert y["relative_error"] == 0.0 and y["top1_agreement"] == 1.0
    assert y["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert r["accuracy"]["original"] == r["accuracy"]["pruned"]
    assert r["size"]["original"] == r["size"]["pruned"]


@pytest.mark.parametrize("kind", ["relu_scores", "class_index"])
def test_identical_models_have_cosine_one_also_on_zero_rows(tmp_path, capsys, kind):
    """A model compared with itself gets cosine 1 for every output, also where an output row is
    all zeros in both (a Relu head on a blank image; an ArgMax output that says class 0). Was:
    such a row's cosine was taken as 0/1e-30 = 0, so the mean dropped (0.75 with 5 of 20 zero
    rows)."""
    if kind == "relu_scores":
        model = tiny(relu_out=True, bias=False)
        x = inputs8(20)
        x[:5] = 0.0
        name = "y"
    else:
        model = tiny(1, extra_nodes=[helper.make_node("ArgMax", ["y"], ["cls"], name="am", axis=1, keepdims=0)],
                     outputs=[helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])])
        x = inputs8(40)
        name = "cls"
    save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "data.npy", x)
    assert (ort_outputs(tmp_path / "m.onnx", x)[name].reshape(len(x), -1) == 0).all(1).any()  # the premise
    r = evaluate_json(capsys, tmp_path, original="m.onnx", pruned="m.onnx")
    assert r["outputs"][name]["relative_error"] == 0.0
    assert r["outputs"][name]["cosine"] == pytest.approx(1.0, abs=1e-12)


# -- multi-output, odd output types ------------------------------------------------------------

def two_head_model(seed: int, reverse: bool) -> onnx.ModelProto:
    """Outputs y (scores) and neg = -y (whose argmax differs from y's), in either order."""
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["N", 10])]
    return tiny(seed=seed, extra_nodes=[helper.make_node("Neg", ["y"], ["neg"], name="neg")],
                outputs=outs[::-1] if reverse else outs)


def test_outputs_are_paired_by_name_and_accuracy_is_the_originals_first(tmp_path, capsys):
    """PRUNED listing the same outputs in another order: each output is compared with the
    output of the same name, and accuracy is that of ORIGINAL's first output in both."""
    save(two_head_model(0, reverse=False), tmp_path / "a.onnx")
    save(two_head_model(1, reverse=True), tmp_path / "b.onnx")
    x = inputs8(30)
    labels = np.random.default_rng(0).integers(0, 10, 30)
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    r = evaluate_json(capsys, tmp_path, "--labels", tmp_path / "labels.npy")
    ref, got = ort_outputs(tmp_path / "a.onnx", x), ort_outputs(tmp_path / "b.onnx", x)
    assert list(r["outputs"]) == ["y", "neg"]
    for name in ("y", "neg"):
        for key, value in fidelity(ref[name], got[name]).items():
            assert r["outputs"][name][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    assert r["accuracy"]["original"] == pytest.approx(np.mean(ref["y"].argmax(1) == labels))
    assert r["accuracy"]["pruned"] == pytest.approx(np.mean(got["y"].argmax(1) == labels))


def test_integer_and_bool_outputs_are_compared_without_failing(tmp_path, capsys):
    """An int64 class-index output and a bool map beside the scores: measured, no crash; only
    (samples, classes>1) outputs get a top-1 agreement."""
    extra = [helper.make_node("ArgMax", ["y"], ["cls"], name="am", axis=1, keepdims=0),
             helper.make_node("Constant", [], ["zero"], name="zero",
                              value=numpy_helper.from_array(np.array(0, np.float32))),
             helper.make_node("Greater", ["y", "zero"], ["pos"], name="gt")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("pos", TensorProto.BOOL, ["N", 10])]
    save(tiny(0, extra_nodes=extra, outputs=outs), tmp_path / "a.onnx")
    save(tiny(1, extra_nodes=extra, outputs=outs), tmp_path / "b.onnx")
    x = inputs8(20)
    np.save(tmp_path / "data.npy", x)
    r = evaluate_json(capsys, tmp_path)
    ref, got = ort_outputs(tmp_path / "a.onnx", x), ort_outputs(tmp_path / "b.onnx", x)
    assert set(r["outputs"]) == {"y", "cls", "pos"}
    assert "top1_agreement" not in r["outputs"]["cls"]
    assert r["outputs"]["y"]["top1_agreement"] == pytest.approx(np.mean(ref["y"].argmax(1) == got["y"].argmax(1)))
    assert r["outputs"]["cls"]["relative_error"] == pytest.approx(fidelity(ref["cls"], got["cls"])["relative_error"])


def test_segmentation_output_gets_no_fake_top1_and_refuses_labels(tmp_path, capsys):
    """A (N, C, H, W) map: relative error and cosine over whole maps, no per-sample "top-1";
    labels (one class per sample) are refused as a usage error naming the output."""
    save(tiny(0, seg=True), tmp_path / "a.onnx")
    save(tiny(1, seg=True), tmp_path / "b.onnx")
    x = inputs8(12)
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", np.arange(12) % 10)
    r = evaluate_json(capsys, tmp_path)
    want = fidelity(ort_outputs(tmp_path / "a.onnx", x)["seg"], ort_outputs(tmp_path / "b.onnx", x)["seg"])
    assert r["outputs"]["seg"] == pytest.approx(want, rel=1e-6)
    table = run_ok(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data", tmp_path / "data.npy",
                            "--device", "cpu"])[0]
    assert "top-1" not in table
    line = run_error(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data",
                              tmp_path / "data.npy", "--labels", tmp_path / "labels.npy", "--device", "cpu"])
    assert "'seg'" in line and "(samples, classes)" in line


def test_labels_for_a_single_logit_output_are_refused(tmp_path, capsys):
    """A (samples, 1) output holds one score, no class scores to take the argmax of: labels (all
    0, the only index below its "1 class") are refused as for a segmentation map (README: labels
    "given for a model whose first output holds no class scores" are a usage error). Was: both
    models got accuracy 1.0 whatever they computed."""
    save(tiny(0, classes=1), tmp_path / "a.onnx")
    save(tiny(1, classes=1), tmp_path / "b.onnx")
    np.save(tmp_path / "data.npy", inputs8(20))
    np.save(tmp_path / "labels.npy", np.zeros(20, np.int64))
    line = run_error(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data",
                              tmp_path / "data.npy", "--labels", tmp_path / "labels.npy", "--device", "cpu"])
    assert "'y'" in line


@pytest.mark.parametrize("op", ["Log", "Reciprocal"])
def test_json_stays_valid_when_outputs_hold_nan_or_inf(tmp_path, capsys, op):
    """Outputs with NaN (Log of negative scores) or Inf (1/0): --json is still JSON that a
    strict parser (RFC 8259; jq, JavaScript's JSON.parse) reads, e.g. null for an undefined
    figure, or the run is refused with a one-line error. Was: json.dumps wrote the bare tokens
    NaN / Infinity."""
    # Log(y): NaN where a score is negative; Reciprocal(Relu(y)): Inf where it is not positive
    extra = [helper.make_node("Relu", ["y"], ["ry"], name="ry"),
             helper.make_node(op, ["y" if op == "Log" else "ry"], ["out"], name="op")]
    model = tiny(extra_nodes=extra, outputs=[helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])])
    save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "data.npy", inputs8(20))
    assert not np.isfinite(ort_outputs(tmp_path / "m.onnx", inputs8(20))["out"]).all()  # the premise
    status = main(["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--data",
                   str(tmp_path / "data.npy"), "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    if status == 0:
        strict_json(out)
    else:
        assert status in (1, 2) and err.startswith(ERROR) and "Traceback" not in err


def test_nan_scores_leave_agreement_and_accuracy_undefined(tmp_path, capsys):
    """A pruned model whose scores hold NaN (Log of negative scores) has no top-1 class in
    those rows: its agreement and accuracy are undefined, null in --json and "undefined" in
    the text, not the figures numpy's argmax of a NaN row makes up; the original's accuracy
    stays. Was: "top-1 agreement 11.40%", "pruned 11.00%"."""
    extra = [helper.make_node("Log", ["y"], ["out"], name="op")]
    save(tiny(0), tmp_path / "a.onnx")
    save(tiny(0, extra_nodes=extra, outputs=[helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])]),
         tmp_path / "b.onnx")
    b = onnx.load(str(tmp_path / "b.onnx"))  # the same output name as the original's
    for node in b.graph.node:
        node.output[:] = ["y" if o == "out" else "scores" if o == "y" else o for o in node.output]
        node.input[:] = ["scores" if i == "y" else i for i in node.input]
    b.graph.output[0].name = "y"
    save(b, tmp_path / "b.onnx")
    x = inputs8(40)
    assert np.isnan(ort_outputs(tmp_path / "b.onnx", x)["y"]).any(axis=1).sum() > 10  # the premise
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", np.arange(40) % 10)
    argv = ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data", tmp_path / "data.npy", "--labels",
            tmp_path / "labels.npy", "--device", "cpu"]
    out, _ = run_ok(capsys, argv + ["--json"])
    result = strict_json(out)
    assert result["outputs"]["y"]["top1_agreement"] is None and result["accuracy"]["pruned"] is None
    assert 0 <= result["accuracy"]["original"] <= 1
    out, _ = run_ok(capsys, argv)
    assert "top-1 agreement undefined (outputs hold NaN)" in out and "pruned undefined (outputs hold NaN)" in out


def test_a_float16_copy_is_fed_its_own_type(tmp_path, capsys):
    """The original against a float16 copy of it (weights, input and output in float16):
    each model gets the data in the type its input declares, and the two agree. Was:
    onnxruntime's "Unexpected input data type" (exit 1) after the input check had passed."""
    model = tiny(0)
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for t in half.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for value in (*half.graph.input, *half.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    save(model, tmp_path / "a.onnx")
    save(half, tmp_path / "b.onnx")
    np.save(tmp_path / "data.npy", inputs8(40))
    out, _ = run_ok(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data", tmp_path / "data.npy",
                             "--device", "cpu", "--json"])
    result = strict_json(out)
    assert result["outputs"]["y"]["relative_error"] < 1e-2 and result["outputs"]["y"]["top1_agreement"] >= 0.9
    assert result["size"]["pruned"]["bytes"] < result["size"]["original"]["bytes"]


# -- models that do not fit each other ----------------------------------------------------------

def test_outputs_of_other_shapes_are_refused(tmp_path, capsys):
    """Same output name, 10 classes against 5: a usage error with both shapes, nothing printed."""
    save(tiny(classes=10), tmp_path / "a.onnx")
    save(tiny(classes=5), tmp_path / "b.onnx")
    np.save(tmp_path / "data.npy", inputs8(20))
    line = run_error(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data",
                              tmp_path / "data.npy", "--device", "cpu", "--json"])
    assert "'y'" in line and "10)" in line and "5)" in line


def test_a_different_number_of_outputs_is_refused(tmp_path, capsys):
    """PRUNED with one output more: both output lists named, exit 2."""
    save(tiny(0), tmp_path / "a.onnx")
    save(two_head_model(0, reverse=False), tmp_path / "b.onnx")
    np.save(tmp_path / "data.npy", inputs8(20))
    line = run_error(capsys, ["evaluate", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data",
                              tmp_path / "data.npy", "--device", "cpu"])
    assert "outputs differ" in line and "neg" in line and "b.onnx" in line


def test_a_renamed_input_is_refused_naming_the_pruned_model(pair, capsys, tmp_path):
    """PRUNED whose input is called 'image': --data (one .npy) is refused for it, naming the file."""
    model = onnx.load(str(pair / "b.onnx"))
    model.graph.input[0].name = "image"
    for node in model.graph.node:
        node.input[:] = ["image" if i == "x" else i for i in node.input]
    save(model, tmp_path / "renamed.onnx")
    line = run_error(capsys, ["evaluate", pair / "a.onnx", tmp_path / "renamed.onnx", "--data",
                              pair / "data.npy", "--device", "cpu"])
    assert "renamed.onnx" in line and "image" in line


def test_pruned_model_with_a_fixed_batch_is_measured_or_refused_clearly(pair, capsys, tmp_path):
    """PRUNED exported with a fixed batch of 1 beside a dynamic ORIGINAL: evaluate either
    measures it (one sample at a time, as it does when ORIGINAL has the fixed batch) or refuses
    with a one-line usage error naming the pruned model. Was: PRUNED ran on batches of 40
    samples and onnxruntime's INVALID_ARGUMENT escaped as "internal error"."""
    model = onnx.load(str(pair / "b.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    save(model, tmp_path / "fixed.onnx")
    status = main(["evaluate", str(pair / "a.onnx"), str(tmp_path / "fixed.onnx"), "--data", str(pair / "data.npy"),
                   "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    if status == 0:
        x = np.load(pair / "data.npy")
        want = fidelity(ort_outputs(pair / "a.onnx", x)["y"], ort_outputs(pair / "b.onnx", x)["y"])
        assert strict_json(out)["outputs"]["y"] == pytest.approx(want, rel=1e-6)
    else:
        assert status == 2 and err.startswith(ERROR) and "fixed.onnx" in err, err


def test_original_with_a_fixed_batch_measures_every_sample(tmp_path, capsys):
    """Both models exported for batch 4, 6 samples (not a multiple of 4): all 6 measured,
    figures and accuracy as computed on the dynamic-batch twins; latency at batch 4."""
    save(tiny(0, batch=4), tmp_path / "a.onnx")
    save(tiny(1, batch=4), tmp_path / "b.onnx")
    save(tiny(0), tmp_path / "a_dyn.onnx")
    save(tiny(1), tmp_path / "b_dyn.onnx")
    x = inputs8(6)
    labels = np.array([1, 2, 3, 4, 5, 6])
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    r = evaluate_json(capsys, tmp_path, "--labels", tmp_path / "labels.npy")
    ref, got = ort_outputs(tmp_path / "a_dyn.onnx", x)["y"], ort_outputs(tmp_path / "b_dyn.onnx", x)["y"]
    assert r["samples"] == 6
    assert r["outputs"]["y"] == pytest.approx(fidelity(ref, got), rel=1e-6)
    assert {k: r["accuracy"][k] for k in ("original", "pruned")} == pytest.approx(
        {"original": np.mean(ref.argmax(1) == labels), "pruned": np.mean(got.argmax(1) == labels)})
    assert sum(r["accuracy"]["per_class"]["samples"]) == 6  # every sample, batches of 4
    assert set(r["latency_ms"]["original"]) == {"batch4"}


# -- --data --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, words", [
    ("nhwc", "(?, 3, 16, 16)"), ("empty", "no samples"), ("nan", "NaN"), ("wrong_name", "has: image"),
    ("model_file", "not a .npy or .npz"), ("truncated", "truncated"),
])
def test_bad_data_files_are_usage_errors(pair, capsys, tmp_path, case, words):
    """NHWC for an NCHW model, no samples, NaN, an .npz without the input's name, a model given
    as --data, a cut .npy: exit 2, one line naming the problem, nothing on stdout."""
    x = np.load(pair / "data.npy")
    path = tmp_path / ("data.npz" if case == "wrong_name" else "data.npy")
    if case == "nhwc":
        np.save(path, x.transpose(0, 2, 3, 1).copy())
    elif case == "empty":
        np.save(path, x[:0])
    elif case == "nan":
        x = x.copy()
        x[3, 1, 2, 2] = np.nan
        np.save(path, x)
    elif case == "wrong_name":
        np.savez(path, image=x)
    elif case == "model_file":
        path = pair / "a.onnx"
    else:
        np.save(path, x)
        path.write_bytes(path.read_bytes()[:5000])
    line = run_error(capsys, ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", path, "--device", "cpu"])
    assert words in line


def test_constant_data_is_refused_as_held_out_data(pair, capsys, tmp_path):
    """Constant --data is named held-out data, not calibration data (was: "calibration array ...
    calibrate on real, varying inputs", for a file that calibrates nothing)."""
    np.save(tmp_path / "data.npy", np.ones_like(np.load(pair / "data.npy")))
    line = run_error(capsys, ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", tmp_path / "data.npy",
                              "--device", "cpu"])
    assert "held-out array for 'x' is constant" in line and "measure on real" in line
    assert "calibrat" not in line


def test_npz_uses_the_array_named_by_the_input(pair, capsys, tmp_path):
    """An .npz with the input 'x' and unrelated arrays of other lengths: 'x' is what is measured."""
    x = np.load(pair / "data.npy")
    np.savez(tmp_path / "data.npz", extra=x[:3], x=x[:25], zz=np.zeros(7))
    r = evaluate_json(capsys, pair, data=tmp_path / "data.npz")
    assert r["samples"] == 25
    want = fidelity(ort_outputs(pair / "a.onnx", x[:25])["y"], ort_outputs(pair / "b.onnx", x[:25])["y"])
    assert r["outputs"]["y"] == pytest.approx(want, rel=1e-6)


# -- --labels ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["column", "float_whole", "uint8"])
def test_labels_in_harmless_forms_give_the_same_accuracy(pair, capsys, tmp_path, form):
    """(N, 1) column, float32 whole numbers, uint8: the same accuracy as the int64 vector."""
    labels = np.load(pair / "labels.npy")
    variant = {"column": labels.reshape(-1, 1), "float_whole": labels.astype(np.float32),
               "uint8": labels.astype(np.uint8)}[form]
    np.save(tmp_path / "labels.npy", variant)
    base = evaluate_json(capsys, pair, "--labels", pair / "labels.npy")["accuracy"]
    assert evaluate_json(capsys, pair, "--labels", tmp_path / "labels.npy")["accuracy"] == base


@pytest.mark.parametrize("labels, words", [
    (np.arange(40).reshape(4, 10) % 10, "(4, 10)"), (np.array(3), "1 labels for 40 samples"),
    (np.full(40, 255, np.uint8), "10 classes"), (np.arange(41) % 10, "41 labels"),
    (np.eye(10, dtype=np.float32)[np.arange(40) % 10], "one class index per sample"),
])
def test_labels_of_wrong_shape_or_range_are_refused(pair, capsys, tmp_path, labels, words):
    np.save(tmp_path / "labels.npy", labels)
    line = run_error(capsys, ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", pair / "data.npy",
                              "--labels", tmp_path / "labels.npy", "--device", "cpu", "--json"])
    assert words in line


def test_labels_of_the_wrong_count_name_their_file(pair, capsys, tmp_path):
    """The count mismatch names the labels file, the one to fix; an array passed to the API has no name to give."""
    np.save(tmp_path / "short.npy", np.zeros(7, np.int64))
    line = run_error(capsys, ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", pair / "data.npy",
                              "--labels", tmp_path / "short.npy", "--device", "cpu"])
    assert f"labels file {tmp_path / 'short.npy'} holds 7 labels for 40 samples" in line
    with pytest.raises(onnx_eprune.UsageError, match=r"^7 labels for 40 samples$"):
        onnx_eprune.evaluate(pair / "a.onnx", pair / "b.onnx", pair / "data.npy", labels=np.zeros(7, np.int64),
                             device="cpu")


# -- external data ----------------------------------------------------------------------------------

@pytest.fixture
def external(pair, tmp_path):
    """The pair saved with every weight in an external data file beside it."""
    for name in ("a", "b"):
        onnx.save(onnx.load(str(pair / f"{name}.onnx")), str(tmp_path / f"{name}.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=0)
    shutil.copy(pair / "data.npy", tmp_path / "data.npy")
    return tmp_path


def test_external_data_models_are_measured_like_embedded_ones(pair, external, capsys):
    embedded = evaluate_json(capsys, pair)
    ext = evaluate_json(capsys, external)
    assert ext["outputs"] == embedded["outputs"]
    for which in ("original", "pruned"):
        assert {k: ext["size"][which][k] for k in ("params", "macs")} == \
            {k: embedded["size"][which][k] for k in ("params", "macs")}


def test_external_data_size_counts_the_data_file(external, capsys):
    """A model whose weights live in NAME.data: its size on disk is the .onnx plus the data file
    (what save_model writes, and what evaluate sums for a model in memory above 2 GB). Was: only
    the .onnx (the graph) was counted, so the sizes and their ratio said nothing."""
    r = evaluate_json(capsys, external)
    for name, which in (("a", "original"), ("b", "pruned")):
        on_disk = os.path.getsize(external / f"{name}.onnx") + os.path.getsize(external / f"{name}.data")
        assert r["size"][which]["bytes"] == on_disk


@pytest.mark.parametrize("which", ["a", "b"])
def test_missing_external_data_file_is_a_usage_error(external, capsys, which):
    """The data file of either model missing: exit 2, one line naming the model and the data file."""
    os.remove(external / f"{which}.data")
    line = run_error(capsys, ["evaluate", external / "a.onnx", external / "b.onnx", "--data",
                              external / "data.npy", "--device", "cpu"])
    assert f"{which}.onnx" in line and f"{which}.data" in line


# -- the command line ------------------------------------------------------------------------------

def test_quiet_json_is_json_only_and_inputs_are_untouched(pair, capsys):
    """-q --json: stdout is the JSON alone, stderr silent; no file is written or changed."""
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in pair.iterdir()}
    out, err = run_ok(capsys, ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", pair / "data.npy",
                               "--device", "cpu", "--json", "-q"])
    assert err == ""
    assert strict_json(out)["samples"] == 40
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in pair.iterdir()} == before


def test_debug_shows_the_traceback_with_the_same_exit_status(pair, capsys, tmp_path):
    """A user mistake (labels of the wrong length) with --debug: the traceback, still exit 2."""
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    argv = ["evaluate", str(pair / "a.onnx"), str(pair / "b.onnx"), "--data", str(pair / "data.npy"),
            "--labels", str(tmp_path / "labels.npy"), "--device", "cpu"]
    assert "7 labels for 40 samples" in run_error(capsys, argv)
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv_tail", [["--device", "tpu"], ["--bogus"], []])
def test_usage_mistakes_on_the_command_line(pair, capsys, argv_tail):
    """An unknown device, an unknown option, or a missing PRUNED: exit 2 without a traceback."""
    argv = ["evaluate", pair / "a.onnx", pair / "b.onnx", "--data", pair / "data.npy", *argv_tail]
    if not argv_tail:
        del argv[2]
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and err.strip()
