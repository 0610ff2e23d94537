"""Op forms of opsets before 10 and 13 that the channel analysis must read as their newer
spellings: a Slice with its bounds as attributes reading a Shape (PyTorch's opset-9
``F.interpolate`` by size, a Keras Flatten's batch entry), and a Squeeze without axes; and
weights stored as sparse initializers, which are refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune

N = helper.make_node


def _model(nodes, inits: dict, batch, opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(np.asarray(v if v is not None else rng.normal(0, 0.3, shape),
                                                  np.int64 if k.startswith("i.") else np.float32), k)
               for k, (shape, v) in inits.items()]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _conv(name: str, x: str, cin: int, cout: int) -> tuple[list, dict]:
    return [N("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, pads=[1] * 4, kernel_shape=[3, 3]),
            N("Relu", [name], [f"{name}.r"])], {f"{name}.w": ((cout, cin, 3, 3), None), f"{name}.b": ((cout,), None)}


def flatten_by_shape_slice(opset: int) -> onnx.ModelProto:
    """conv1 (3 -> 8) -> Reshape to Concat(Slice(Shape(h), 0, 1), [-1]), the Slice's bounds
    attributes before opset 10 -> Gemm (-> 10)."""
    nodes, inits = _conv("conv1", "x", 3, 8)
    shape = N("Shape", ["conv1.r"], ["s"])
    if opset < 10:
        batch = N("Slice", ["s"], ["b"], starts=[0], ends=[1])
    else:
        batch = N("Slice", ["s", "i.lo", "i.hi"], ["b"])
        inits.update({"i.lo": ((1,), [0]), "i.hi": ((1,), [1])})
    nodes += [shape, batch, N("Concat", ["b", "i.rest"], ["t"], axis=0), N("Reshape", ["conv1.r", "t"], ["f"]),
              N("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits.update({"i.rest": ((1,), [-1]), "fc.w": ((10, 8 * 64), None), "fc.b": ((10,), None)})
    return _model(nodes, inits, "N", opset)


def squeeze_without_axes(batch: int) -> onnx.ModelProto:
    """conv1 (3 -> 8) -> conv2 (8 -> 16) -> GlobalAveragePool -> Squeeze() (opset 9, no axes)
    -> Gemm (-> 10), exported for a fixed batch."""
    nodes, inits = _conv("conv1", "x", 3, 8)
    more, more_inits = _conv("conv2", "conv1.r", 8, 16)
    nodes += more + [N("GlobalAveragePool", ["conv2.r"], ["g"]), N("Squeeze", ["g"], ["q"]),
                     N("Gemm", ["q", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits.update(more_inits, **{"fc.w": ((10, 16), None), "fc.b": ((10,), None)})
    return _model(nodes, inits, batch, 9)


def _group(report: dict, producer: str) -> dict:
    return next(g for g in report["groups"] if producer in g["producers"])


@pytest.mark.parametrize("opset", [9, 10])
def test_a_slice_of_a_shape_by_attributes_reads_the_batch_entry_only(opset):
    """Before opset 10 the Slice that takes the batch entry of the map's Shape holds its
    bounds as attributes: the map's channels prune as with the opset-10 form. Was: frozen,
    "its channel count is read by a Shape op"."""
    model = flatten_by_shape_slice(opset)
    x = np.random.default_rng(1).normal(size=(32, 3, 8, 8)).astype(np.float32)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, device="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert _group(result.report, "conv1")["channels_after"] == 4
    assert _run(result.model, x[:4]).shape == (4, 10)
    whole = onnx_eprune.prune(model, x, keep_ratio=1.0, device="cpu")
    np.testing.assert_allclose(_run(whole.model, x[:4]), _run(model, x[:4]), rtol=1e-5, atol=1e-5)


def test_a_squeeze_without_axes_drops_the_axes_of_size_one():
    """Squeeze() of GlobalAveragePool's (2, 16, 1, 1) drops axes 2 and 3 (the batch of 2
    stays): conv2's channels prune. Was: frozen, "Squeeze that moves the channel axis"."""
    x = np.random.default_rng(2).normal(size=(32, 3, 8, 8)).astype(np.float32)
    result = onnx_eprune.prune(squeeze_without_axes(2), x, keep_ratio=0.5, device="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert _group(result.report, "conv2")["channels_after"] == 8
    assert _run(result.model, x[:2]).shape == (2, 10)
    whole = onnx_eprune.prune(squeeze_without_axes(2), x, keep_ratio=1.0, device="cpu")
    np.testing.assert_allclose(_run(whole.model, x[:2]), _run(squeeze_without_axes(2), x[:2]), rtol=1e-5, atol=1e-5)


def test_sparse_initializers_are_refused_in_one_line():
    """A weight stored as a sparse initializer (IR 6 on): a usage error that says so, for
    prune and inspect alike. Was: "onnxruntime cannot load the model" from a sub-model that
    had lost the weight."""
    model = flatten_by_shape_slice(10)
    model.ir_version = 6
    weight = next(t for t in model.graph.initializer if t.name == "fc.w")
    dense = numpy_helper.to_array(weight)
    values = numpy_helper.from_array(dense.ravel(), "fc.w")
    indices = numpy_helper.from_array(np.arange(dense.size, dtype=np.int64), "fc.w.indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, dense.shape))
    model.graph.initializer.remove(weight)
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    assert _run(model, x).shape == (16, 10)  # onnxruntime takes it
    for call in (lambda: onnx_eprune.prune(model, x, keep_ratio=0.5, device="cpu"),
                 lambda: onnx_eprune.inspect(model, x[:1])):
        with pytest.raises(onnx_eprune.UsageError, match=r"sparse initializers \(fc\.w\).*dense initializers"):
            call()


def test_an_attribute_slice_that_keeps_every_channel_is_followed():
    """A crop written before opset 10 with bounds for every axis (``axes`` left out), whole
    on the batch and channel axes: conv1's channels prune through it. Was: frozen, "Slice of
    channels with bounds as attributes"."""
    nodes, inits = _conv("conv1", "x", 3, 8)
    big = 2 ** 62
    nodes += [N("Slice", ["conv1.r"], ["c"], starts=[0, 0, 1, 1], ends=[big, big, -1, -1]),
              N("GlobalAveragePool", ["c"], ["g"]), N("Flatten", ["g"], ["f"]),
              N("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits.update({"fc.w": ((10, 8), None), "fc.b": ((10,), None)})
    model = _model(nodes, inits, "N", 9)
    x = np.random.default_rng(3).normal(size=(32, 3, 8, 8)).astype(np.float32)
    result = onnx_eprune.prune(model, x, keep_ratio=0.5, device="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert _group(result.report, "conv1")["channels_after"] == 4
    assert _run(result.model, x[:4]).shape == (4, 10)
