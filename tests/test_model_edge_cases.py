"""Models whose form, valid for onnx.checker, the pruner must keep valid: an IR version below 4
(every initializer is also a graph input) and graph outputs that are constants (a detector's
anchors: a Constant node, or a node computed from initializers only)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, run_model
from onnx_eprune.cli import main

ANCHORS = np.arange(8, dtype=np.float32).reshape(4, 2)


def _weights(seed: int, bias: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"w1": (8, IN_CHANNELS, 3, 3), "w2": (16, 8, 3, 3), "wf": (CLASSES, 16)}
    arrays = {n: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32) for n, s in shapes.items()}
    if bias:
        arrays.update({n: rng.uniform(-0.1, 0.1, c).astype(np.float32) for n, c in (("b1", 8), ("b2", 16))})
    arrays["bf"] = rng.uniform(-0.1, 0.1, CLASSES).astype(np.float32)
    return arrays


def _cnn(bias: bool, scale: bool) -> list[onnx.NodeProto]:
    """Conv, ReLU, [x a Constant scale], Conv, ReLU, global pool and a Gemm head."""
    b1, b2 = (["b1"], ["b2"]) if bias else ([], [])
    nodes = [helper.make_node("Conv", [INPUT, "w1", *b1], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"])]
    if scale:
        nodes += [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
                  helper.make_node("Mul", ["r1", "k"], ["m1"])]
    nodes += [helper.make_node("Conv", ["m1" if scale else "r1", "w2", *b2], ["c2"], pads=[1] * 4),
              helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wf", "bf"], [OUTPUT], transB=1)]
    return nodes


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def ir3_model(bias: bool) -> onnx.ModelProto:
    """An IR version 3 model (opset 8) that lists its initializers as graph inputs, with a
    Constant node; without ``bias`` its Convs have none, which a re-fit gives them."""
    weights = _weights(0, bias)
    inputs = [_value(INPUT, ["N", IN_CHANNELS, HW, HW])] + [_value(n, a.shape) for n, a in weights.items()]
    graph = helper.make_graph(_cnn(bias, scale=True), "ir3", inputs, [_value(OUTPUT, ["N", CLASSES])],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    return model


def constant_output_model(kind: str) -> onnx.ModelProto:
    """A model with a second graph output ``anchors`` that no input reaches: a Constant node
    (``kind`` "constant") or a Mul of two initializers ("initializers")."""
    weights = _weights(1, bias=True)
    nodes = _cnn(bias=True, scale=False)
    if kind == "constant":
        nodes.append(helper.make_node("Constant", [], ["anchors"], value=numpy_helper.from_array(ANCHORS)))
    else:
        weights.update({"base": ANCHORS / 2, "two": np.array(2.0, np.float32)})
        nodes.append(helper.make_node("Mul", ["base", "two"], ["anchors"]))
    graph = helper.make_graph(nodes, "anchored", [_value(INPUT, ["N", IN_CHANNELS, HW, HW])],
                              [_value(OUTPUT, ["N", CLASSES]), _value("anchors", ANCHORS.shape)],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def _check_pruned(model: onnx.ModelProto, calib: np.ndarray, test_x: np.ndarray, **options) -> None:
    """Pruned at ``options`` the model is valid, runs and keeps its output shapes; at
    keep-ratio 1.0 it gives the original outputs."""
    result = onnx_eprune.prune(model, calib, **options)
    onnx.checker.check_model(result.model, full_check=True)
    before, after = run_model(model, test_x), run_model(result.model, test_x)
    assert {n: v.shape for n, v in after.items()} == {n: v.shape for n, v in before.items()}
    if options.get("keep_ratio") == 1.0:
        for name, value in before.items():
            np.testing.assert_allclose(after[name], value, rtol=1e-4, atol=1e-5)
    else:
        assert result.report["params"]["after"] < result.report["params"]["before"]


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_ir3_model_with_constant_node(calib, test_x, keep):
    """The initializer made of the Constant node is listed as a graph input too."""
    _check_pruned(ir3_model(bias=True), calib, test_x, keep_ratio=keep)


def test_ir3_model_refit_gives_bias_less_convs_a_listed_bias(calib, test_x):
    _check_pruned(ir3_model(bias=False), calib, test_x, keep_ratio=0.5)


def test_ir3_model_keeps_its_ir_version(calib):
    model = onnx_eprune.prune(ir3_model(bias=True), calib, keep_ratio=1.0).model
    assert model.ir_version == 3
    assert {i.name for i in model.graph.initializer} <= {i.name for i in model.graph.input}


@pytest.mark.parametrize("kind", ["constant", "initializers"])
@pytest.mark.parametrize("options", [{"keep_ratio": 1.0}, {"keep_ratio": 0.5}, {"sparsity": 0.3},
                                     {"flops_reduction": 0.3}, {"keep_ratio": 0.5, "mode": "oneshot"}],
                         ids=["keep1", "keep0.5", "sparsity", "flops", "oneshot"])
def test_constant_graph_output(calib, test_x, kind, options):
    _check_pruned(constant_output_model(kind), calib, test_x, **options)


def test_constant_graph_output_validated_over_several_batches(calib, test_x):
    _check_pruned(constant_output_model("constant"), calib, test_x, sparsity=0.3, batch_size=16)


def test_evaluate_model_with_constant_graph_output(tmp_path, calib, capsys):
    model = constant_output_model("initializers")
    original, pruned, data = tmp_path / "model.onnx", tmp_path / "pruned.onnx", tmp_path / "data.npy"
    onnx.save(model, str(original))
    np.save(data, calib)
    assert main(["prune", str(original), "-o", str(pruned), "--calib", str(data), "--sparsity", "0.3", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(original), str(pruned), "--data", str(data), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # a constant output never changes: only the others are compared
    assert set(result["outputs"]) == {o.name for o in model.graph.output} - {"anchors"}
    assert result["size"]["pruned"]["params"] < result["size"]["original"]["params"]
