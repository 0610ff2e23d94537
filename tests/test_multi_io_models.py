"""Pruning tiny CNNs with several inputs (images, per-sample vectors) and several outputs
(intermediate feature maps, two heads, an int64 ArgMax), which the random graphs never build."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_eprune
from models import CLASSES, HW, IN_CHANNELS, INPUT, OPSET, OUTPUT, _Builder, relative_error
from onnx_eprune.calibrate.session import probe_groups
from onnx_eprune.graph.model_io import constants_to_initializers

CPU = ["CPUExecutionProvider"]
IMAGE2 = "x2"
VECTOR = "v"
VECTOR_DIM = 4
FEATURES = "features"
SEG = "seg"
LABEL = "label"
SHAPE = "shape"
SEG_CLASSES = 2


def _io(name: str, shape: list, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _finish(b: _Builder, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """The checked model of ``b``'s nodes with these graph inputs and outputs."""
    graph = helper.make_graph(b.const_nodes + b.nodes, "multi_io", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-eprune-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


IMAGE_IN = _io(INPUT, ["N", IN_CHANNELS, HW, HW])
LOGITS_OUT = _io(OUTPUT, ["N", CLASSES])


def two_images(join: str) -> onnx.ModelProto:
    """x -> conv_a (3->8) -> Relu and x2 [N,1,16,16] -> conv_b (1->8) -> Relu, joined by
    Concat (-> 16 channels) or Add (-> 8), -> conv_c (->16) -> Relu -> GAP -> Gemm ``y``."""
    b = _Builder(1)
    a = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    c = b.node("Relu", [b.conv(IMAGE2, 1, 8, name="conv_b")])
    joined = b.node("Concat", [a, c], axis=1) if join == "concat" else b.node("Add", [a, c])
    h = b.node("Relu", [b.conv(joined, 16 if join == "concat" else 8, 16, name="conv_c")])
    b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    return _finish(b, [IMAGE_IN, _io(IMAGE2, ["N", 1, HW, HW])], [LOGITS_OUT])


def vector_input(join: str, vector_output: bool = False) -> onnx.ModelProto:
    """x -> conv_a (3->8) -> Relu; v [N,4] -> Gemm ``gemm_v`` (4->8). "unsqueeze" / "reshape":
    v's 8 features broadcast onto the feature map ([N,8,1,1]) and added, -> conv_c (8->16)
    -> Relu -> GAP -> Gemm ``y``; "concat": conv_c's pooled features [N,16] concatenated
    with Relu(gemm_v) [N,8] -> Gemm ``hidden`` (24->16) -> Relu -> Gemm ``y``.
    ``vector_output``: ``gemm_v`` is also a graph output."""
    b = _Builder(2)
    a = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    g = b.gemm(VECTOR, VECTOR_DIM, 8, name="gemm_v")
    if join == "concat":
        h = b.gap_flatten(b.node("Relu", [b.conv(a, 8, 16, name="conv_c")]))
        h = b.node("Concat", [h, b.node("Relu", [g])], axis=1)
        b.gemm(b.node("Relu", [b.gemm(h, 24, 16, name="hidden")]), 16, CLASSES, name=OUTPUT)
    else:
        if join == "unsqueeze":
            g4 = b.node("Unsqueeze", [g, b.const("axes23", np.array([2, 3], np.int64))])
        else:
            g4 = b.node("Reshape", [g, b.const("shape_n811", np.array([0, 8, 1, 1], np.int64))])
        h = b.node("Relu", [b.conv(b.node("Add", [a, g4]), 8, 16, name="conv_c")])
        b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    extra = [_io(g, ["N", 8])] if vector_output else []
    return _finish(b, [IMAGE_IN, _io(VECTOR, ["N", VECTOR_DIM])], [LOGITS_OUT, *extra])


def feature_output() -> onnx.ModelProto:
    """conv_a (3->8) -> Relu -> conv_b (8->16) -> Relu = graph output ``features`` ->
    conv_c (16->16) -> Relu -> GAP -> Gemm ``y``; outputs (y, features)."""
    b = _Builder(3)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    feat = b.node("Relu", [b.conv(h, 8, 16, name="conv_b")], name=FEATURES)
    h = b.node("Relu", [b.conv(feat, 16, 16, name="conv_c")])
    b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    return _finish(b, [IMAGE_IN], [LOGITS_OUT, _io(FEATURES, ["N", 16, HW, HW])])


def two_heads() -> onnx.ModelProto:
    """Trunk conv_a (3->8) -> Relu -> conv_b (8->16) -> Relu, then a classifier (GAP ->
    Gemm ``y``) and a 1x1 segmentation head ``seg`` (16->2) at 16x16."""
    b = _Builder(4)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv_b")])
    b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    b.conv(h, 16, SEG_CLASSES, k=1, name=SEG)
    return _finish(b, [IMAGE_IN], [LOGITS_OUT, _io(SEG, ["N", SEG_CLASSES, HW, HW])])


def conv_output() -> onnx.ModelProto:
    """conv_a (3->8) -> Relu -> Conv ``features`` (8->16, itself a graph output) -> Relu
    -> GAP -> Gemm ``y``."""
    b = _Builder(5)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    feat = b.conv(h, 8, 16, name=FEATURES)
    b.gemm(b.gap_flatten(b.node("Relu", [feat])), 16, CLASSES, name=OUTPUT)
    return _finish(b, [IMAGE_IN], [LOGITS_OUT, _io(FEATURES, ["N", 16, HW, HW])])


def channel_reader_output(op: str) -> onnx.ModelProto:
    """conv_a (3->8) -> Relu -> conv_b (8->16) -> Relu -> GAP -> Gemm ``y``, plus an output
    reading conv_b's channel axis: ``op`` "ArgMax" (int64 [N,16,16], the best channel per
    pixel) or "Shape" (int64 [4], its shape, channel count included)."""
    b = _Builder(7)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv_b")])
    b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    if op == "ArgMax":
        out = _io(b.node("ArgMax", [h], name=LABEL, axis=1, keepdims=0), ["N", HW, HW], TensorProto.INT64)
    else:
        out = _io(b.node("Shape", [h], name=SHAPE), [4], TensorProto.INT64)
    return _finish(b, [IMAGE_IN], [LOGITS_OUT, out])


def argmax_output() -> onnx.ModelProto:
    """conv_a (3->8) -> Relu -> conv_b (8->16) -> Relu -> GAP -> Gemm ``hidden`` (16->16)
    -> Relu -> Gemm ``y``, plus ``label`` = ArgMax(y) (int64, [N])."""
    b = _Builder(6)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv_a")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv_b")])
    h = b.node("Relu", [b.gemm(b.gap_flatten(h), 16, 16, name="hidden")])
    b.node("ArgMax", [b.gemm(h, 16, CLASSES, name=OUTPUT)], name=LABEL, axis=1, keepdims=0)
    return _finish(b, [IMAGE_IN], [LOGITS_OUT, _io(LABEL, ["N"], TensorProto.INT64)])


@dataclass(frozen=True)
class Case:
    """A model, the producers of its prunable groups, and producers whose groups are frozen
    with (a part of) the reason."""

    build: Callable[[], onnx.ModelProto]
    prunable: list[list[str]]
    frozen: dict[str, str] = field(default_factory=dict)


OUT = "reaches a graph output"


CASES = {
    "two_images_concat": Case(lambda: two_images("concat"), [["conv_a"], ["conv_b"], ["conv_c"]], {OUTPUT: OUT}),
    "two_images_add": Case(lambda: two_images("add"), [["conv_a", "conv_b"], ["conv_c"]], {OUTPUT: OUT}),
    "vector_unsqueeze_add": Case(lambda: vector_input("unsqueeze"), [["conv_a", "gemm_v"], ["conv_c"]], {OUTPUT: OUT}),
    "vector_reshape_add": Case(lambda: vector_input("reshape"), [["conv_a", "gemm_v"], ["conv_c"]], {OUTPUT: OUT}),
    "vector_concat_pooled": Case(lambda: vector_input("concat"), [["conv_a"], ["conv_c"], ["gemm_v"], ["hidden"]],
                                 {OUTPUT: OUT}),
    "logits_and_feature_map": Case(feature_output, [["conv_a"], ["conv_c"]], {OUTPUT: OUT, "conv_b": OUT}),
    "classifier_and_seg_heads": Case(two_heads, [["conv_a"], ["conv_b"]], {OUTPUT: OUT, SEG: OUT}),
    "prunable_conv_is_output": Case(conv_output, [["conv_a"]], {OUTPUT: OUT, FEATURES: OUT}),
    "vector_branch_is_output": Case(lambda: vector_input("concat", vector_output=True),
                                    [["conv_a"], ["conv_c"], ["hidden"]], {OUTPUT: OUT, "gemm_v": OUT}),
    "channel_argmax_output": Case(lambda: channel_reader_output("ArgMax"), [["conv_a"]],
                                  {OUTPUT: OUT, "conv_b": "ArgMax"}),
    "logits_and_argmax": Case(argmax_output, [["conv_a"], ["conv_b"], ["hidden"]], {OUTPUT: OUT}),
}


def feeds_for(model: onnx.ModelProto, n: int, seed: int) -> dict[str, np.ndarray]:
    """Normal float32 samples for every graph input, ``n`` on the batch axis."""
    rng = np.random.default_rng(seed)
    return {vi.name: rng.normal(size=[n] + [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]).astype(np.float32)
            for vi in model.graph.input}


def run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``feeds`` (CPU), by name."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def signature(model: onnx.ModelProto) -> list[tuple]:
    """Names, element types and declared shapes of the graph inputs and outputs."""
    def dims(vi: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return [(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in [*model.graph.input, *model.graph.output]]


class Reader:
    """A CalibrationDataReader-like source: ``get_next()`` gives dict batches, then None."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def split(feeds: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """``feeds`` cut into batches of ``size`` samples."""
    n = next(iter(feeds.values())).shape[0]
    return [{k: v[i:i + size] for k, v in feeds.items()} for i in range(0, n, size)]


CALIB_FORMS: dict[str, Callable[[dict[str, np.ndarray]], object]] = {
    "dict": lambda feeds: feeds,
    "list_of_dicts": lambda feeds: split(feeds, 16),
    "reader": lambda feeds: Reader(split(feeds, 16)),
}


def prune(model: onnx.ModelProto, calib: object, **kw) -> onnx_eprune.pipeline.PruneResult:
    """``onnx_eprune.prune`` on the CPU with method l1 (fast)."""
    kw.setdefault("method", "entropic")
    return onnx_eprune.prune(model, calib, device="cpu", **kw)


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Checker, same signature, runs finite with the original's output shapes at batch 1 and 5."""
    onnx.checker.check_model(pruned, full_check=True)
    assert signature(pruned) == signature(original)
    for n in (1, 5):
        feeds = feeds_for(original, n, seed=7)
        ref, got = run_all(original, feeds), run_all(pruned, feeds)
        assert list(got) == list(ref)
        for name in ref:
            assert got[name].shape == ref[name].shape and got[name].dtype == ref[name].dtype, name
            assert np.isfinite(got[name]).all(), name


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_groups(case: str) -> None:
    """The expected groups are prunable; those reaching a graph output are frozen."""
    spec = CASES[case]
    model = spec.build()
    constants_to_initializers(model)
    analysis = probe_groups(model, feeds_for(model, 1, seed=0), CPU)[1]

    def producers(g) -> list[str]:
        return sorted(model.graph.node[p.node].name for p in g.producers)

    prunable = sorted(producers(g) for g in analysis.groups if g.prunable)
    assert prunable == sorted(spec.prunable), [(producers(g), g.frozen) for g in analysis.groups]
    for g in analysis.groups:
        assert not (g.prunable and g.frozen)
    for name, reason in spec.frozen.items():
        group = next(g for g in analysis.groups if name in producers(g))
        assert not group.prunable and any(reason in r for r in group.frozen), group.frozen


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_sparsity_keeps_graph_valid(case: str) -> None:
    """sparsity=0.3: a valid, smaller model with the same I/O; the input model untouched."""
    model = CASES[case].build()
    before = model.SerializeToString()
    result = prune(model, feeds_for(model, 48, seed=1), sparsity=0.3)
    assert model.SerializeToString() == before
    assert_valid(result.model, model)
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert set(result.report["fidelity_on_calibration"]["outputs"]) == {o.name for o in model.graph.output}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_keep_all_reproduces_every_output(case: str) -> None:
    """keep_ratio=1.0 reproduces every output, and the report's fidelity says so."""
    model = CASES[case].build()
    result = prune(model, feeds_for(model, 32, seed=1), keep_ratio=1.0)
    assert_valid(result.model, model)
    feeds = feeds_for(model, 8, seed=3)
    ref, got = run_all(model, feeds), run_all(result.model, feeds)
    for name in ref:
        if ref[name].dtype.kind == "f":
            assert relative_error(ref[name], got[name]) <= 1e-4, name
        else:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    fidelity = result.report["fidelity_on_calibration"]
    assert list(fidelity["outputs"]) == [o.name for o in model.graph.output]
    assert all(f["relative_error"] <= 1e-4 for f in fidelity["outputs"].values()), fidelity


@pytest.mark.parametrize("form", list(CALIB_FORMS), ids=list(CALIB_FORMS))
@pytest.mark.parametrize("join", ["concat", "add"])
def test_two_image_calibration_forms(join: str, form: str) -> None:
    """A dict, a list of dict batches and a data reader all calibrate a two-image model alike."""
    model = two_images(join)
    feeds = feeds_for(model, 48, seed=1)
    result = prune(model, CALIB_FORMS[form](feeds), sparsity=0.3)
    assert_valid(result.model, model)
    assert result.report["samples"] == 48
    reference = prune(model, feeds, sparsity=0.3)
    kept = {g["id"]: g.get("kept_channels") for g in result.report["groups"]}
    assert kept == {g["id"]: g.get("kept_channels") for g in reference.report["groups"]}


def test_shape_output_keeps_channel_count() -> None:
    """An output holding a prunable tensor's Shape freezes its channels: the value stays the same."""
    model = channel_reader_output("Shape")
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    constants_to_initializers(copy)
    reasons = [r for g in probe_groups(copy, feeds_for(copy, 1, seed=0), CPU)[1].groups for r in g.frozen]
    assert "its channel count is read by a Shape op" in reasons
    result = prune(model, feeds_for(model, 48, seed=1), sparsity=0.3)
    feeds = feeds_for(model, 2, seed=3)
    np.testing.assert_array_equal(run_all(result.model, feeds)[SHAPE], run_all(model, feeds)[SHAPE])
