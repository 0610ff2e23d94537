"""Models as old exporters and half-precision pipelines write them, which the random-graph
property tests (opsets 11-21, float32) do not reach.

* Opsets 7, 8, 9 and 10 at the IR version each needs (3 for opsets 7 and 8, whose models
  list every initializer as a graph input too), with the operators of those years:
  BatchNormalization with ``spatial`` (opset < 9), Upsample with ``scales`` as an
  attribute (opset < 9) or an input (opset 9), Resize-10, Dropout with ``ratio`` (and,
  at opset 7, its mask output), Pad and Clip with attribute parameters, Slice with attribute
  bounds (opset < 10), MaxPool with ``storage_order``, Sum, Add residuals, Concat, Reshape
  to a constant shape or Flatten, and Gemm, whose bias input these opsets require. The
  same network spelled at opset 13 must prune to the same channels and outputs. Gemm
  biases of shape (1, M) or (1,), weights behind Identity / Cast at IR 3, a Sum of three
  inputs (coupled) and a channel Slice with attribute bounds (not followed: frozen) have
  tests of their own.
* float16 models (weights and activations) at opsets 13 and 17, calibrated with float32
  and with float16 data: the README prunes them "as they are".
* Mixed precision: a float16 network whose classifier runs in float32 after a Cast, and a
  float32 network with a float16 island between two Casts.

Each model must be analysed into the channel groups its structure implies, pruned into a
valid model (full checker, same inputs and outputs, runs at other batch sizes, input left
untouched), reproduced exactly at ``keep_ratio=1.0`` and made smaller at sparsity 0.3; the
float16 twins of a float32 model must stay about as close to their original as it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_eprune
from models import CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, _Builder, random_input, relative_error, run_model
from onnx_eprune.calibrate.session import probe_groups
from onnx_eprune.graph.model_io import constants_to_initializers

CPU = ["CPUExecutionProvider"]
CALIB = random_input(64, seed=1)
FRESH = random_input(5, seed=2)   # a batch size the calibration never used
SPARSITY = 0.3
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


class _TypedBuilder(_Builder):
    """A ``_Builder`` whose float constants take ``dtype``, which may change mid-graph."""

    def __init__(self, seed: int, dtype: type = np.float32):
        super().__init__(seed)
        self.dtype = dtype

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        return super().const(name, value.astype(self.dtype) if value.dtype == np.float32 else value)


def _finish(b: _Builder, head: str, opset: int, in_type: int = TensorProto.FLOAT,
            out_type: int | None = None) -> onnx.ModelProto:
    """The checked model of ``b``'s nodes: input ``x`` (N, 3, 16, 16), output ``head`` as
    ``y`` (N, 10), at ``opset`` and the lowest IR version it allows; below IR 4 every
    initializer is listed as a graph input as well, as that version requires."""
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    inputs = [helper.make_tensor_value_info(INPUT, in_type, ["N", IN_CHANNELS, HW, HW])]
    if ir_version < 4:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in b.inits]
    output = helper.make_tensor_value_info(head, in_type if out_type is None else out_type, ["N", CLASSES])
    graph = helper.make_graph(b.nodes, f"opset{opset}", inputs, [output], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="old-exporter")
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


# -- the models -------------------------------------------------------------------------

def old_exporter_cnn(opset: int, flatten: str) -> onnx.ModelProto:
    """stem Conv(3->8, no bias) -> BN -> Relu = r; Pad 1 -> conv_a (8->8, no bias, no
    padding) -> BN -> Clip(0, 6); Add(., r) -> MaxPool 2 -> Dropout(0.1) -> x2 nearest
    upsampling -> spatial Slice 2:14 = h; Sum(Relu(conv_b(h)), Relu(conv_c(h))) (8->6 each)
    -> Concat with h -> conv_d (14->16) -> Relu -> MaxPool 3 -> ``flatten`` ("reshape":
    Reshape to the constant [-1, 256]; "flatten": Flatten) -> fc1 Gemm(256 -> 24) -> Relu
    -> Gemm(24 -> 10).

    Spelled as ``opset`` allows: below 9, BatchNormalization with ``spatial`` and Upsample
    with ``scales`` as an attribute; at 9 Upsample with a ``scales`` input, at 10 Resize;
    below 10, Slice bounds as attributes; below 11, Pad's ``pads`` and Clip's bounds as
    attributes; from 8 MaxPool with ``storage_order``; at 7 Dropout with its mask output.
    At opset 13 everything takes today's form (Resize with asymmetric floor rounding, as
    Upsample rounds), the same function with the same weights for every opset.

    Groups: {stem, conv_a} (the residual), {conv_b, conv_c} (the Sum), conv_d, fc1."""
    b = _TypedBuilder(0)
    bn_attrs = {"spatial": 1} if opset < 9 else {}
    pool_attrs = {"storage_order": 0} if opset >= 8 else {}

    def bn(x: str, c: int, name: str) -> str:
        out = b.bn(x, c, name=name)
        b.nodes[-1].attribute.extend(helper.make_attribute(k, v) for k, v in bn_attrs.items())
        return out

    r = b.node("Relu", [bn(b.conv(INPUT, IN_CHANNELS, 8, bias=False, name="stem"), 8, "stem_bn")])
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        h = b.node("Pad", [r], name="pad", pads=pads, mode="constant", value=0.0)
    else:
        h = b.node("Pad", [r, b.const("pads", np.array(pads, np.int64))], name="pad", mode="constant")
    w = b.weight("conv_a.weight", (8, 8, 3, 3), 72)
    h = bn(b.node("Conv", [h, w], name="conv_a", kernel_shape=[3, 3]), 8, "conv_a_bn")
    if opset < 11:
        h = b.node("Clip", [h], name="clip", min=0.0, max=6.0)
    else:
        h = b.node("Clip", [h, b.const("clip_min", np.array(0.0, np.float32)),
                            b.const("clip_max", np.array(6.0, np.float32))], name="clip")
    h = b.node("MaxPool", [b.node("Add", [h, r], name="residual")], name="pool1", kernel_shape=[2, 2],
               strides=[2, 2], **pool_attrs)
    if opset < 12:
        h = b.node("Dropout", [h], name="dropout", n_out=2 if opset == 7 else 1, ratio=0.1)
    else:
        h = b.node("Dropout", [h, b.const("dropout_ratio", np.array(0.1, np.float32))], name="dropout")
    scales = np.array([1, 1, 2, 2], np.float32)
    if opset < 9:
        h = b.node("Upsample", [h], name="up", mode="nearest", scales=scales.tolist())
    elif opset < 11:
        h = b.node("Upsample" if opset == 9 else "Resize", [h, b.const("up_scales", scales)], name="up",
                   mode="nearest")
    else:
        h = b.node("Resize", [h, "", b.const("up_scales", scales)], name="up", mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if opset < 10:
        h = b.node("Slice", [h], name="crop", starts=[2, 2], ends=[14, 14], axes=[2, 3])
    else:
        h = b.node("Slice", [h, b.const("crop_starts", np.array([2, 2], np.int64)),
                             b.const("crop_ends", np.array([14, 14], np.int64)),
                             b.const("crop_axes", np.array([2, 3], np.int64))], name="crop")
    s = b.node("Sum", [b.node("Relu", [b.conv(h, 8, 6, name="conv_b")]),
                       b.node("Relu", [b.conv(h, 8, 6, name="conv_c")])], name="sum")
    h = b.node("Relu", [b.conv(b.node("Concat", [s, h], name="concat", axis=1), 14, 16, name="conv_d")])
    h = b.node("MaxPool", [h], name="pool2", kernel_shape=[3, 3], strides=[3, 3], **pool_attrs)
    if flatten == "reshape":
        h = b.node("Reshape", [h, b.const("flat_shape", np.array([-1, 256], np.int64))], name="flat")
    else:
        h = b.node("Flatten", [h], name="flat", axis=1)
    h = b.node("Relu", [b.gemm(h, 256, 24, name="fc1")])
    return _finish(b, b.gemm(h, 24, CLASSES, name=OUTPUT), opset)


OLD_CNN_GROUPS = [("conv_a", "stem"), ("conv_b", "conv_c"), ("conv_d",), ("fc1",)]


def half_cnn(opset: int, dtype: type = np.float16) -> onnx.ModelProto:
    """stem Conv(3->8) -> BN -> Relu = r; conv_a (8->8) -> Relu -> conv_b (8->8); Relu(Add(.,
    r)) = h; Concat(Relu(depthwise Conv(h)), Relu(conv_c(h)) (8->6)) -> conv_d (14->16) ->
    Relu -> GAP -> Flatten -> fc1 Gemm(16 -> 24) -> Relu -> Gemm(24 -> 10), weights and
    activations in ``dtype`` (float32 gives the float16 model's twin, same seed).

    Groups: {stem, conv_b} (the residual, which the depthwise Conv passes), conv_a, conv_c,
    conv_d, fc1."""
    b = _TypedBuilder(1, dtype)
    r = b.node("Relu", [b.bn(b.conv(INPUT, IN_CHANNELS, 8, bias=False, name="stem"), 8, name="stem_bn")])
    h = b.conv(b.node("Relu", [b.conv(r, 8, 8, name="conv_a")]), 8, 8, name="conv_b")
    h = b.node("Relu", [b.node("Add", [h, r], name="residual")])
    d = b.node("Relu", [b.conv(h, 8, 8, group=8, name="dw")])
    c = b.node("Relu", [b.conv(h, 8, 6, name="conv_c")])
    h = b.node("Relu", [b.conv(b.node("Concat", [d, c], name="concat", axis=1), 14, 16, name="conv_d")])
    h = b.node("Relu", [b.gemm(b.gap_flatten(h), 16, 24, name="fc1")])
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _finish(b, b.gemm(h, 24, CLASSES, name=OUTPUT), opset, in_type=elem)


HALF_CNN_GROUPS = [("conv_a",), ("conv_b", "stem"), ("conv_c",), ("conv_d",), ("fc1",)]


def half_with_float_head() -> onnx.ModelProto:
    """A float16 network with a float32 classifier: conv1 (3->8) -> Relu -> conv2 (8->16) ->
    Relu -> GAP -> Flatten -> Cast to float32 -> fc1 Gemm(16 -> 24, float32) -> Relu ->
    Gemm(24 -> 10); input float16, output float32. Groups: conv1, conv2 (read by fc1 through
    the Cast), fc1."""
    b = _TypedBuilder(2, np.float16)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    h = b.gap_flatten(b.node("Relu", [b.conv(h, 8, 16, name="conv2")]))
    h = b.node("Cast", [h], name="to_float", to=TensorProto.FLOAT)
    b.dtype = np.float32
    h = b.node("Relu", [b.gemm(h, 16, 24, name="fc1")])
    return _finish(b, b.gemm(h, 24, CLASSES, name=OUTPUT), 17, in_type=TensorProto.FLOAT16,
                   out_type=TensorProto.FLOAT)


def float_with_half_island() -> onnx.ModelProto:
    """A float32 network with a float16 layer: conv1 (3->8) -> Relu -> Cast to float16 ->
    conv2 (8->12, float16 weights) -> Relu -> Cast to float32 -> conv3 (12->16) -> Relu ->
    GAP -> Flatten -> Gemm(16 -> 10). Groups: conv1 (read by conv2 through a Cast), conv2
    (read by conv3 through a Cast), conv3."""
    b = _TypedBuilder(3)
    h = b.node("Cast", [b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])], name="to_half",
               to=TensorProto.FLOAT16)
    b.dtype = np.float16
    h = b.node("Relu", [b.conv(h, 8, 12, name="conv2")])
    b.dtype = np.float32
    h = b.node("Cast", [h], name="to_float", to=TensorProto.FLOAT)
    h = b.node("Relu", [b.conv(h, 12, 16, name="conv3")])
    return _finish(b, b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), 17)


def gemm_row_bias(opset: int) -> onnx.ModelProto:
    """Gemm biases as opset-6 exporters wrote them for ``broadcast=1``, still valid: conv1
    (3->8) -> Relu -> GAP -> Flatten -> fc1 Gemm(8 -> 24, C of shape (1, 24)) -> Relu ->
    Gemm(24 -> 10, C of shape (1,)). Groups: conv1, fc1."""
    b = _TypedBuilder(4)
    h = b.gap_flatten(b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")]))
    row = b.const("fc1.bias", b.rng.uniform(-0.1, 0.1, (1, 24)).astype(np.float32))
    h = b.node("Relu", [b.node("Gemm", [h, b.weight("fc1.weight", (24, 8), 8), row], name="fc1", transB=1)])
    y = b.node("Gemm", [h, b.weight("y.weight", (10, 24), 24), b.const("y.bias", np.array([0.5], np.float32))],
               name=OUTPUT, transB=1)
    return _finish(b, y, opset)


def weight_behind(op: str, opset: int) -> onnx.ModelProto:
    """conv1 (3->8) reads its weight through ``op`` on an initializer ("Identity", as
    exporters de-duplicate weights; "Cast", float16 storage to float32) -> Relu -> conv2
    (8->16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10). Groups: conv1, conv2."""
    b = _TypedBuilder(5, np.float16 if op == "Cast" else np.float32)
    w = b.weight("conv1.weight", (8, IN_CHANNELS, 3, 3), 27)
    w = b.node(op, [w], name="weight_op", **({"to": TensorProto.FLOAT} if op == "Cast" else {}))
    b.dtype = np.float32
    h = b.node("Relu", [b.node("Conv", [INPUT, w, b.vector("conv1.bias", 8)], name="conv1", kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1])])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    return _finish(b, b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset)


def old_construct(construct: str) -> onnx.ModelProto:
    """An old exporter's construct between conv1 (3->8) and conv2 (8->16): "sum3" (opset 8),
    Sum of conv1's, conv1b's and conv1c's Relu outputs, which couples them; "channel_slice"
    (opset 7), Slice of conv1's first 4 channels with attribute bounds, which the analysis
    does not follow. Then Relu -> GAP -> Flatten -> Gemm(16 -> 10)."""
    b = _TypedBuilder(6)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    if construct == "sum3":
        h = b.node("Sum", [h] + [b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name=n)]) for n in ("conv1b", "conv1c")],
                   name="sum3")
        width, opset = 8, 8
    else:
        h = b.node("Slice", [h], name="channel_slice", starts=[0], ends=[4], axes=[1])
        width, opset = 4, 7
    h = b.node("Relu", [b.conv(h, width, 16, name="conv2")])
    return _finish(b, b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT), opset)


@dataclass(frozen=True)
class Case:
    """A model, the producers of each prunable group it must have, and the float type its
    calibration data comes in."""

    build: Callable[[], onnx.ModelProto]
    groups: list[tuple[str, ...]]
    calib_dtype: type = np.float32


CASES = {
    **{f"opset{o}-{f}": Case(lambda o=o, f=f: old_exporter_cnn(o, f), OLD_CNN_GROUPS)
       for o in (7, 8, 9, 10, 13) for f in ("reshape", "flatten")},
    **{f"fp16-opset{o}-calib{np.dtype(d).itemsize * 8}": Case(lambda o=o: half_cnn(o), HALF_CNN_GROUPS, d)
       for o in (13, 17) for d in (np.float32, np.float16)},
    "fp16-float-head": Case(half_with_float_head, [("conv1",), ("conv2",), ("fc1",)], np.float16),
    "fp32-half-island": Case(float_with_half_island, [("conv1",), ("conv2",), ("conv3",)]),
}


# -- helpers ----------------------------------------------------------------------------

def input_dtype(model: onnx.ModelProto) -> np.dtype:
    """The numpy type of the model's input ``x``."""
    return helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's ``y`` on ``x`` (cast to its input type), as float64."""
    return run_model(model, x.astype(input_dtype(model)))[OUTPUT].astype(np.float64)


def signature(model: onnx.ModelProto) -> tuple[list, list]:
    """(name, element type, declared dims) of the real inputs and of the outputs."""
    inits = {i.name for i in model.graph.initializer}

    def entry(vi: onnx.ValueInfoProto) -> tuple:
        t = vi.type.tensor_type
        return vi.name, t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim)
    return ([entry(vi) for vi in model.graph.input if vi.name not in inits],
            [entry(vi) for vi in model.graph.output])


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each float initializer (Constant nodes included), by name."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants_to_initializers(copy)
    return {i.name: i.data_type for i in copy.graph.initializer if i.data_type in FLOAT_TYPES}


def pruned(case: Case, **target) -> onnx_eprune.PruneResult:
    """``case``'s model pruned to ``target``, checked: the full checker passes, inputs and
    outputs keep names, types and declared shapes, it runs on 1 and 5 samples (the
    calibration fed 64), the input model is unchanged, every float initializer it kept
    has its old type and a new one (a re-fit's bias) a type the model had, and below IR 4
    every initializer is listed as a graph input of its new shape."""
    model = case.build()
    before = model.SerializeToString()
    result = onnx_eprune.prune(model, CALIB.astype(case.calib_dtype), device="cpu", **target)
    assert model.SerializeToString() == before
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version == model.ir_version
    assert signature(out) == signature(model)
    for x in (FRESH[:1], FRESH):
        y = outputs(out, x)
        assert y.shape == (len(x), CLASSES) and np.isfinite(y).all()
    old, new = float_types(model), float_types(out)
    assert {n: t for n, t in new.items() if n in old} == {n: old[n] for n in new if n in old}
    assert set(new.values()) <= set(old.values())
    if out.ir_version < 4:
        listed = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in out.graph.input}
        assert all(listed.get(i.name) == list(i.dims) for i in out.graph.initializer)
    return result


def analysis_groups(model: onnx.ModelProto) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], list[str]]]:
    """The producers (names, sorted) of each prunable group the analysis finds, sorted, and
    the reasons of each frozen group with producers."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants_to_initializers(copy)
    analysis = probe_groups(copy, {INPUT: FRESH[:1].astype(input_dtype(copy))}, CPU)[1]
    names = {g.gid: tuple(sorted(copy.graph.node[p.node].name for p in g.producers)) for g in analysis.groups}
    prunable = sorted(names[g.gid] for g in analysis.groups if g.prunable and not g.frozen)
    return prunable, {names[g.gid]: g.frozen for g in analysis.groups if g.frozen and g.producers}


def pruned_groups(result: onnx_eprune.PruneResult) -> list[tuple[str, ...]]:
    """The producers of each group the run made narrower, sorted."""
    return sorted(tuple(sorted(g["producers"])) for g in result.report["groups"]
                  if g["channels_after"] < g["channels_before"])


# -- every case -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_expected_groups_are_prunable(name):
    """The analysis follows every construct of the model: exactly the expected groups are prunable."""
    case = CASES[name]
    assert analysis_groups(case.build())[0] == sorted(case.groups)


@pytest.mark.parametrize("name", list(CASES))
def test_keep_all_reproduces_the_model(name):
    """``keep_ratio=1.0`` gives a valid model that removes nothing and computes the same outputs."""
    case = CASES[name]
    result = pruned(case, keep_ratio=1.0)
    assert result.report["params"]["removed_fraction"] == 0.0
    # nothing is re-fitted, so even float16 outputs must match to float32 precision
    assert relative_error(outputs(case.build(), FRESH), outputs(result.model, FRESH)) <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_sparsity_removes_parameters(name):
    """Sparsity 0.3 gives a valid model with fewer parameters."""
    result = pruned(CASES[name], sparsity=SPARSITY)
    assert result.report["params"]["removed_fraction"] > 0
    assert result.report["params"]["after"] < result.report["params"]["before"]


@pytest.mark.parametrize("name", list(CASES))
def test_keep_half_narrows_every_group(name):
    """``keep_ratio=0.5`` rewrites every expected group (all old-opset constructs on the way) into a valid model."""
    case = CASES[name]
    assert pruned_groups(pruned(case, keep_ratio=0.5)) == sorted(case.groups)


# -- old opsets -------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [7, 8, 9, 10], ids=lambda o: f"opset{o}")
def test_old_spelling_prunes_like_the_modern_one(opset):
    """The opset-N spelling of the network keeps the same channels and gives the same pruned outputs as opset 13's."""
    old, new = (pruned(Case(lambda o=o: old_exporter_cnn(o, "reshape"), OLD_CNN_GROUPS), keep_ratio=0.5)
                for o in (opset, 13))
    kept = [[g.get("kept_channels") for g in r.report["groups"]] for r in (old, new)]
    assert kept[0] == kept[1]
    assert relative_error(outputs(new.model, FRESH), outputs(old.model, FRESH)) <= 1e-4


@pytest.mark.parametrize("opset", [7, 8, 9, 10], ids=lambda o: f"opset{o}")
def test_gemm_with_a_broadcast_bias_is_pruned(opset):
    """Gemm biases of shape (1, M) and (1,) are re-fitted in place as (M,) vectors (none left
    behind unused) and sliced: keep 0.5 prunes conv1 and fc1 validly."""
    result = pruned(Case(lambda: gemm_row_bias(opset), [("conv1",), ("fc1",)]), keep_ratio=0.5)
    assert pruned_groups(result) == [("conv1",), ("fc1",)]
    read = {name for node in result.model.graph.node for name in node.input}
    assert [i.name for i in result.model.graph.initializer if i.name not in read] == []
    biases = {i.name: tuple(i.dims) for i in result.model.graph.initializer if i.name.endswith("bias")}
    assert all(len(dims) == 1 for dims in biases.values()), biases


@pytest.mark.parametrize("op", ["Identity", "Cast"])
@pytest.mark.parametrize("opset", [8, 9], ids=["opset8-ir3", "opset9-ir4"])
def test_weight_behind_constant_op_is_pruned(op, opset):
    """A Conv weight computed from an initializer by Identity or Cast is folded, so the run prunes its layer."""
    result = pruned(Case(lambda: weight_behind(op, opset), [("conv1",), ("conv2",)]), keep_ratio=0.5)
    assert pruned_groups(result) == [("conv1",), ("conv2",)]


def listing_initializers(model: onnx.ModelProto, names: Callable[[set[str]], set[str]]) -> onnx.ModelProto:
    """``model`` (IR >= 4) with the initializers ``names(all of them)`` listed as graph inputs too."""
    inits = {i.name: i for i in model.graph.initializer}
    for name in sorted(names(set(inits))):
        init = inits[name]
        model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_every_initializer_listed_as_an_input_prunes_at_ir4():
    """An IR >= 4 export listing every initializer as an input (older PyTorch's
    ``keep_initializers_as_inputs``) prunes as the same model without the listing, its
    listed weights' declared shapes following the pruned ones."""
    plain, listed = (pruned(Case(lambda f=f: f(old_exporter_cnn(13, "reshape")), OLD_CNN_GROUPS), keep_ratio=0.5)
                     for f in (lambda m: m, lambda m: listing_initializers(m, lambda names: names)))
    assert pruned_groups(listed) == sorted(OLD_CNN_GROUPS)
    assert relative_error(outputs(plain.model, FRESH), outputs(listed.model, FRESH)) <= 1e-6
    declared = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in listed.model.graph.input}
    assert all(declared[i.name] == list(i.dims) for i in listed.model.graph.initializer if i.name in declared)


def test_an_initializer_listed_as_an_input_alone_is_a_default_that_stays():
    """At IR >= 4 an initializer that only some are, listed as a graph input, is a default the
    caller may feed: the layer reading it is frozen with that reason, its declared shape and
    value stay, and the rest of the model prunes."""
    model = listing_initializers(old_exporter_cnn(13, "reshape"), lambda names: {"conv_d.weight"})
    prunable, reasons = analysis_groups(model)
    assert ("conv_d",) not in prunable and prunable
    assert any("'conv_d.weight' is also a graph input" in r for rs in reasons.values() for r in rs), reasons
    result = pruned(Case(lambda: model, prunable), keep_ratio=0.5)
    assert pruned_groups(result) == prunable
    weight = {i.name: i for i in result.model.graph.initializer}["conv_d.weight"]
    assert weight == {i.name: i for i in model.graph.initializer}["conv_d.weight"]


def test_unfollowed_old_construct_is_frozen_with_its_reason():
    """A channel Slice with attribute bounds freezes conv1's group, with its reason, and conv2 still prunes."""
    model = old_construct("channel_slice")
    prunable, reasons = analysis_groups(model)
    assert prunable == [("conv2",)]
    assert "Slice of channels with bounds as attributes (opset < 10)" in reasons[("conv1",)], reasons
    assert pruned_groups(pruned(Case(lambda: model, prunable), keep_ratio=0.5)) == [("conv2",)]


def test_sum_of_three_couples_its_inputs():
    """A Sum of three activations puts their producers in one group, pruned together."""
    model = old_construct("sum3")
    prunable, _ = analysis_groups(model)
    assert prunable == [("conv1", "conv1b", "conv1c"), ("conv2",)]
    assert pruned_groups(pruned(Case(lambda: model, prunable), keep_ratio=0.5)) == prunable


# -- float16 ----------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17], ids=lambda o: f"opset{o}")
@pytest.mark.parametrize("calib_dtype", [np.float32, np.float16], ids=["calib32", "calib16"])
def test_half_model_prunes_as_well_as_its_float_twin(opset, calib_dtype):
    """At sparsity 0.3 the float16 model's outputs stay as close to its original as the float32 twin's do."""
    errors = {}
    for dtype in (np.float32, np.float16):
        case = Case(lambda d=dtype: half_cnn(opset, d), HALF_CNN_GROUPS, calib_dtype if dtype == np.float16 else dtype)
        result = pruned(case, sparsity=SPARSITY)
        errors[dtype] = relative_error(outputs(case.build(), FRESH), outputs(result.model, FRESH))
    assert errors[np.float16] <= 2 * errors[np.float32] + 1e-2, errors
