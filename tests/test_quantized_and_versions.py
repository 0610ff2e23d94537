"""Quantized layers and ONNX versions, as a user with models from many toolchains meets them.

* Quantized weights. A float model with one quantized layer (QDQ with a per-tensor or a
  per-channel ``axis=0`` weight scale, a weight-only QDQ Conv, int4 block-quantized weights
  at opset 21, a fake-quantized float weight behind QuantizeLinear -> DequantizeLinear, or a
  QOperator QLinearConv) must prune its float parts and leave every quantized tensor and
  node byte for byte as it was, at opset 13 and at opset 19+ too, where onnx's reference
  evaluator could fold a DequantizeLinear of a stored int8 weight into a float one. The
  layer that feeds the quantized one stays whole, with a reason; the result passes the
  checker, runs in onnxruntime, and computes what the original computed up to the quantized
  layer. The report's parameter and MAC counts include the quantized layer, as an
  independent count over every Conv / Gemm / MatMul weight finds.
* Fully quantized models (hand-made QDQ CNNs at opsets 13-21, onnxruntime's
  ``quantize_static`` QDQ output for an MLP of MatMuls and for a CNN) are refused on one line
  that says the weights are quantized and to prune the float model, then quantize it;
  ``inspect --json`` lists the frozen groups and counts the quantized weights, QOperator
  models (QLinearConv, ConvInteger) included.
* Versions. Every opset from 7 to 21 (at the lowest IR version it allows) spells one network
  of BatchNormalization (``spatial`` below 9), Pad and Clip (attributes below 11), Upsample
  (7-9) or Resize (10, 11, 13, 18, 19), Squeeze / Unsqueeze (``axes`` attribute below 13) and
  ReduceMean (``axes`` attribute below 18): each prunes at sparsity 0.3 to a valid model with
  the input's opset and IR version, and all find the same groups and keep the same channels.
  An opset or IR version newer than onnxruntime supports is a one-line error naming it.
* Local functions (FunctionProto) holding a weighted layer, nested, with attribute
  references, or computing a weight: pruned or frozen with a reason, never a crash or an
  invalid model. (A simple activation function is covered by test_output_invariants.py.)
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, _Builder, conv_bn_relu_pool_flatten_gemm, random_input
from onnx_eprune.cli import main
from onnx_eprune.errors import EPruneError

CALIB = random_input(64, seed=1)
FRESH = random_input(5, seed=2)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "QGemm", "ConvInteger", "MatMulInteger"}


# -- helpers ----------------------------------------------------------------------------------------

def run(model: onnx.ModelProto, x: np.ndarray, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``x`` (CPU), plus the intermediate tensors ``extra``."""
    import onnxruntime as ort

    if extra:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
        model = copy
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def prune(model: onnx.ModelProto, calib: np.ndarray = CALIB, **options) -> onnx_eprune.PruneResult:
    """``model`` pruned on the CPU (l1 unless told), checked: input untouched, full checker,
    same opset imports, IR version and local functions, runs on 1 and 5 fresh samples."""
    before = model.SerializeToString()
    options = {"method": "l1", "device": "cpu", **options}
    result = onnx_eprune.prune(model, calib, **options)
    assert model.SerializeToString() == before, "the input model was modified"
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in out.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert [f.SerializeToString() for f in out.functions] == [f.SerializeToString() for f in model.functions]
    fresh = FRESH if calib.ndim == 4 else np.random.default_rng(2).normal(size=(5, *calib.shape[1:])).astype(np.float32)
    for x in (fresh[:1], fresh):
        y = run(out, x)[model.graph.output[0].name]
        assert y.shape[0] == len(x) and np.isfinite(y).all()
    return result


def groups_by_producer(report: dict) -> dict[str, dict]:
    return {p: g for g in report["groups"] for p in g["producers"]}


def cli_fail(capsys, tmp_path, argv: list[str], code: int) -> str:
    """Run ``argv`` that must fail with ``code``: one stderr line, no traceback, no file
    written or changed in ``tmp_path``. Returns the line."""
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status = main(argv)
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: "), err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    return lines[0]


def weight_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    """The shape of the constant weight ``name``: an initializer, or a DequantizeLinear /
    QuantizeLinear chain that starts at one."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            return None
        name = node.input[0]
    return inits[name]


def independent_costs(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, MACs per sample) of every Conv / Gemm / MatMul with a constant weight,
    quantized or not, shared weights counted once, from onnx's shape inference at batch 1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(copy)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    params = macs = 0
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = weight_shape(model, node.input[1])
        if w is None:
            continue
        size = int(np.prod(w))
        spatial = int(np.prod(shapes[node.output[0]][2:])) if node.op_type == "Conv" else 1
        macs += size * spatial
        if node.input[1] not in seen:
            seen.add(node.input[1])
            params += size
            if len(node.input) > 2 and node.input[2]:
                params += int(np.prod(weight_shape(model, node.input[2])))
    return params, macs


# -- models with one quantized layer -----------------------------------------------------------------

def _quantize(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    if per_channel:
        scale = (np.abs(w).reshape(len(w), -1).max(1) / 127).astype(np.float32)
        q = np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1)))
    else:
        scale = np.array(np.abs(w).max() / 127, np.float32)
        q = np.round(w / scale)
    return np.clip(q, -127, 127).astype(np.int8), scale


def one_quantized(kind: str, opset: int = 21) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16, quantized as ``kind``) -> Relu -> conv3 (16->16)
    -> Relu -> GAP -> Flatten -> fc1 Gemm(16->24) -> Relu -> Gemm(24->10) = y.

    ``kind``: "qdq_tensor" / "qdq_channel" (activation QuantizeLinear -> DequantizeLinear
    before conv2, its int8 weight behind DequantizeLinear with a per-tensor / per-channel
    axis-0 scale), "weight_only" (per-channel weight DequantizeLinear, float activations),
    "fakequant" (a float weight initializer -> QuantizeLinear -> DequantizeLinear, per
    channel, as TensorRT-oriented exporters write it), "int4_block" (int4 weights
    dequantized with block_size 4 on axis 1: opset 21), "qlinear" (QuantizeLinear ->
    QLinearConv with an int32 bias -> DequantizeLinear). conv2's output after Relu is ``q_out``."""
    b = _Builder(7)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")], name="relu1")
    w = b.rng.normal(0, 1 / np.sqrt(72), (16, 8, 3, 3)).astype(np.float32)
    bias = b.rng.uniform(-0.1, 0.1, 16).astype(np.float32)
    conv_attrs = {"kernel_shape": [3, 3], "pads": [1] * 4}
    if kind == "qlinear":
        q, s = _quantize(w, per_channel=False)
        xs, xz = b.const("act.s", np.array(0.02, np.float32)), b.const("act.zp", np.array(0, np.uint8))
        os_, oz = b.const("out.s", np.array(0.05, np.float32)), b.const("out.zp", np.array(128, np.uint8))
        ins = [b.node("QuantizeLinear", [h, xs, xz], name="act_q"), xs, xz, b.const("conv2.wq", q),
               b.const("conv2.ws", s), b.const("conv2.wzp", np.array(0, np.int8)), os_, oz,
               b.const("conv2.bq", np.round(bias / (0.02 * s)).astype(np.int32))]
        h = b.node("DequantizeLinear", [b.node("QLinearConv", ins, name="conv2", **conv_attrs), os_, oz],
                   name="out_dq")
    else:
        if kind == "fakequant":
            s = (np.abs(w).reshape(16, -1).max(1) / 127).astype(np.float32)
            ws, wz = b.const("conv2.ws", s), b.const("conv2.wzp", np.zeros(16, np.int8))
            wq = b.node("QuantizeLinear", [b.const("conv2.wf", w), ws, wz], name="conv2.w_q", axis=0)
            wd = b.node("DequantizeLinear", [wq, ws, wz], name="conv2.w_dq", axis=0)
        elif kind == "int4_block":
            s = (np.abs(w).reshape(16, 2, 4, 3, 3).max(2) / 7 + 1e-6).astype(np.float32)
            q = np.clip(np.round(w / np.repeat(s, 4, axis=1)), -8, 7).astype(np.int8)
            b.inits.append(helper.make_tensor("conv2.wq", TensorProto.INT4, q.shape, q.flatten().tolist()))
            wd = b.node("DequantizeLinear", ["conv2.wq", b.const("conv2.ws", s)], name="conv2.w_dq", axis=1,
                        block_size=4)
        else:
            q, s = _quantize(w, per_channel=kind != "qdq_tensor")
            axis = {} if kind == "qdq_tensor" else {"axis": 0}
            zero = b.const("conv2.wzp", np.zeros(s.shape, np.int8))
            wd = b.node("DequantizeLinear", [b.const("conv2.wq", q), b.const("conv2.ws", s), zero],
                        name="conv2.w_dq", **axis)
        if kind in ("qdq_tensor", "qdq_channel"):
            xs, xz = b.const("act.s", np.array(0.02, np.float32)), b.const("act.zp", np.array(0, np.uint8))
            h = b.node("DequantizeLinear", [b.node("QuantizeLinear", [h, xs, xz], name="act_q"), xs, xz],
                       name="act_dq")
        h = b.node("Conv", [h, wd, b.const("conv2.bias", bias)], name="conv2", **conv_attrs)
    h = b.node("Relu", [h], name="q_out")
    h = b.node("Relu", [b.conv(h, 16, 16, name="conv3")])
    h = b.node("Relu", [b.gemm(b.gap_flatten(h), 16, 24, name="fc1")])
    model = b.build(b.gemm(h, 24, CLASSES, name=OUTPUT), opset=opset)
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def quantized_parts(model: onnx.ModelProto) -> tuple[dict[str, bytes], list[bytes]]:
    """The serialized initializers and nodes of conv2 and its quantization: every input
    (recursively through Q/DQ nodes) of the conv2 node and of every Q/DQ/QLinear* node."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANT_OPS or n.name == "conv2"]
    names = {i for n in nodes for i in n.input if i}
    stack = list(names)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.op_type in QUANT_OPS:
            for i in node.input:
                if i and i not in names:
                    names.add(i)
                    stack.append(i)
    return ({n: inits[n].SerializeToString() for n in sorted(names) if n in inits},
            [n.SerializeToString() for n in nodes])


ONE_QUANTIZED = [("qdq_tensor", 13), ("qdq_tensor", 21), ("qdq_channel", 19), ("qdq_channel", 21),
                 ("qdq_channel", 25), ("weight_only", 21), ("int4_block", 21), ("qlinear", 13), ("qlinear", 21)]
ONE_QUANTIZED_IDS = [f"{k}-opset{o}" for k, o in ONE_QUANTIZED]


@pytest.mark.parametrize("kind,opset", ONE_QUANTIZED, ids=ONE_QUANTIZED_IDS)
def test_one_quantized_layer_keeps_every_quantized_tensor_and_node(kind, opset):
    """Pruning the float parts leaves the quantized layer's int8/int4 weights, scales, zero
    points, int32 bias and its Q/DQ/QLinearConv nodes byte for byte (none folded into a float
    weight, also at opset 19+, where onnx's reference evaluator could fold DequantizeLinear)."""
    model = one_quantized(kind, opset)
    result = prune(model, sparsity=0.3)
    inits, nodes = quantized_parts(model)
    assert inits and any(numpy_helper.to_array(onnx.TensorProto.FromString(v)).dtype.kind in "iu"
                         or onnx.TensorProto.FromString(v).data_type == TensorProto.INT4 for v in inits.values())
    assert quantized_parts(result.model) == (inits, nodes)
    # nothing float stands in for the quantized weight
    assert not [i.name for i in result.model.graph.initializer
                if tuple(i.dims) == (16, 8, 3, 3) and i.data_type == TensorProto.FLOAT and i.name != "conv2.wf"]


@pytest.mark.parametrize("kind,opset", ONE_QUANTIZED, ids=ONE_QUANTIZED_IDS)
def test_one_quantized_layer_float_parts_prune_and_its_input_layer_stays_whole(kind, opset):
    """conv3 and fc1 (float, after the quantized layer) are pruned; conv1, which the
    quantized layer reads, keeps its 8 channels with a reason, and conv2 keeps its 16."""
    result = prune(one_quantized(kind, opset), sparsity=0.3)
    groups = groups_by_producer(result.report)
    assert groups["conv1"]["channels_after"] == groups["conv1"]["channels_before"] == 8
    assert groups["conv1"]["frozen"], groups["conv1"]
    conv2 = [i for i in result.model.graph.initializer if i.name in ("conv2.wq", "conv2.wf")]
    assert [tuple(i.dims) for i in conv2] == [(16, 8, 3, 3)]
    assert groups["conv3"]["channels_after"] < 16 or groups["fc1"]["channels_after"] < 24
    assert result.report["params"]["after"] < result.report["params"]["before"]


@pytest.mark.parametrize("kind,opset", ONE_QUANTIZED, ids=ONE_QUANTIZED_IDS)
def test_one_quantized_layer_computes_the_same_up_to_it(kind, opset):
    """Nothing up to the quantized layer changes, so its output is the original's exactly;
    with keep_ratio 1.0 the whole model gives the original outputs."""
    model = one_quantized(kind, opset)
    pruned = prune(model, sparsity=0.3).model
    before, after = run(model, FRESH, ("q_out",)), run(pruned, FRESH, ("q_out",))
    np.testing.assert_array_equal(after["q_out"], before["q_out"])
    same = prune(model, keep_ratio=1.0).model
    np.testing.assert_allclose(run(same, FRESH)[OUTPUT], before[OUTPUT], rtol=1e-4, atol=1e-5)


def test_weight_only_per_channel_qdq_conv_at_opset21_is_frozen_for_quantized_weights():
    """A Conv whose weight is a per-channel DequantizeLinear (axis 0) of int8 at opset 21 is
    not pruned: its group and its input's are frozen for 'quantized weights'."""
    model = one_quantized("weight_only", 21)
    groups = onnx_eprune.inspect(model)["groups"]
    conv2_out = [g for g in groups if not g["producers"] and g["channels"] == 16 and g["frozen"]]
    assert conv2_out and "quantized weights" in conv2_out[0]["frozen"], groups
    conv1 = next(g for g in groups if g["producers"] == ["conv1"])
    assert not conv1["prunable"] and "quantized weights" in conv1["frozen"], conv1
    result = prune(model, keep_ratio=0.5)
    assert groups_by_producer(result.report)["conv1"]["channels_after"] == 8


@pytest.mark.parametrize("kind,opset", [("qdq_tensor", 21), ("qdq_channel", 21), ("weight_only", 21),
                                        ("int4_block", 21)])
def test_report_counts_the_qdq_layer(kind, opset):
    """params and MACs 'before' include the QDQ-quantized conv2 (an independent count of
    every Conv/Gemm weight and bias and their MACs), and 'after' matches the pruned model."""
    model = one_quantized(kind, opset)
    result = prune(model, sparsity=0.3)
    params, macs = independent_costs(model)
    assert (result.report["params"]["before"], result.report["macs"]["before"]) == (params, macs)
    assert (result.report["params"]["after"], result.report["macs"]["after"]) == independent_costs(result.model)
    assert result.report["params"]["removed_fraction"] >= 0.29


def test_ort_partially_quantized_cnn_prunes_its_float_layers(tmp_path):
    """quantize_static (QDQ, per channel) of the small CNN's second conv only: conv_1, which
    it reads, stays whole with a reason; gemm_8 prunes; every quantized tensor and node stays
    as it was; params 'before' count the quantized conv (an independent count)."""
    model = ort_quantized(tmp_path, conv_bn_relu_pool_flatten_gemm(), CALIB, "QDQ", per_channel=True,
                          nodes=["conv_4"])
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    result = prune(model, sparsity=0.25)
    groups = groups_by_producer(result.report)
    assert groups["conv_1"]["channels_after"] == 8 and groups["conv_1"]["frozen"]
    assert groups["gemm_8"]["channels_after"] < groups["gemm_8"]["channels_before"]
    assert result.report["params"]["before"] == independent_costs(model)[0] == \
        independent_costs(conv_bn_relu_pool_flatten_gemm())[0]
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == "conv_4")
    quantized = [n.SerializeToString() for n in model.graph.node if n.op_type in QUANT_OPS]
    assert [n.SerializeToString() for n in result.model.graph.node if n.op_type in QUANT_OPS] == quantized
    inits = {i.name: i.SerializeToString() for i in model.graph.initializer}
    kept = {i.name: i.SerializeToString() for i in result.model.graph.initializer}
    names = {i for n in model.graph.node if n.op_type in QUANT_OPS for i in n.input if i in inits}
    names |= {i for i in conv.input if i in inits}
    assert producer[conv.input[1]].op_type == "DequantizeLinear" and names
    assert {n: kept.get(n) for n in names} == {n: inits[n] for n in names}


def test_report_counts_a_fake_quantized_layer():
    """conv2's weight, a float initializer behind QuantizeLinear -> DequantizeLinear (per
    channel), counts as a weight as an int8 one behind DequantizeLinear does, so the
    report's 'before' equals the independent count and the 0.3 target is met on the real
    total (once, the layer was skipped: 'before' lacked its 1168 parameters and the run
    stopped at 22% of the real parameters)."""
    model = one_quantized("fakequant", 21)
    result = prune(model, sparsity=0.3)
    params, macs = independent_costs(model)
    assert (result.report["params"]["before"], result.report["macs"]["before"]) == (params, macs)
    after, _ = independent_costs(result.model)
    assert 1 - after / params >= 0.29


# -- fully quantized models --------------------------------------------------------------------------

def fully_qdq(opset: int, per_channel: bool) -> onnx.ModelProto:
    """The small CNN (conv 3->8, conv 8->16, Gemm 256->32, Gemm 32->10) with every weight
    int8 behind DequantizeLinear (Conv weights per channel on axis 0 with ``per_channel``)."""
    model = conv_bn_relu_pool_flatten_gemm()
    weights = {n.input[1]: n.op_type for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for init in [i for i in model.graph.initializer if i.name in weights]:
        channel = per_channel and weights[init.name] == "Conv"
        q, scale = _quantize(numpy_helper.to_array(init), channel)
        model.graph.initializer.remove(init)
        model.graph.initializer.extend([numpy_helper.from_array(q, init.name + "_q"),
                                        numpy_helper.from_array(scale, init.name + "_s")])
        model.graph.node.insert(0, helper.make_node("DequantizeLinear", [init.name + "_q", init.name + "_s"],
                                                    [init.name], name=init.name + "_dq",
                                                    **({"axis": 0} if channel else {})))
    model.opset_import[0].version = opset
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _reader(name: str, x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[i:i + 4]} for i in range(0, len(x), 4)])

        def get_next(self):
            return next(self.batches, None)
    return Reader()


def mlp() -> onnx.ModelProto:
    """x (N, 64) -> MatMul(64x32) + b -> Relu -> MatMul(32x24) + b -> Relu -> MatMul(24x10) = y."""
    rng = np.random.default_rng(0)
    arrays = {"W1": rng.normal(0, 1 / 8, (64, 32)), "b1": rng.uniform(-.1, .1, 32),
              "W2": rng.normal(0, 1 / 6, (32, 24)), "b2": rng.uniform(-.1, .1, 24), "W3": rng.normal(0, 0.2, (24, 10))}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"), helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["a2"], name="add2"), helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "W3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


MLP_CALIB = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)


def ort_quantized(tmp_path, float_model: onnx.ModelProto, calib: np.ndarray, fmt: str,
                  per_channel: bool = False, nodes: list[str] | None = None) -> onnx.ModelProto:
    """``float_model`` quantized by onnxruntime's quantize_static (``fmt`` "QDQ" or
    "QOperator"; only the nodes ``nodes`` when given)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    src, dst = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(float_model, str(src))
    quantization.quantize_static(str(src), str(dst), _reader("x", calib[:16]),
                                 quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
                                 nodes_to_quantize=nodes)
    src.unlink()
    return onnx.load(str(dst))


@pytest.mark.parametrize("opset", [13, 19, 21])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_fully_quantized_qdq_model_is_refused_with_the_remedy(tmp_path, capsys, opset, per_channel):
    """Every weight int8 behind DequantizeLinear: exit 1, one line that says the weights are
    quantized and to prune the float model, nothing written."""
    path, calib = tmp_path / "q.onnx", tmp_path / "calib.npy"
    onnx.save(fully_qdq(opset, per_channel), str(path))
    np.save(calib, CALIB)
    line = cli_fail(capsys, tmp_path, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                       "--sparsity", "0.3", "--device", "cpu", "-q"], 1)
    assert "quantized weights" in line and "prune the float model" in line, line


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_ort_qdq_matmul_mlp_is_refused_with_the_remedy(tmp_path, per_channel):
    """quantize_static's QDQ MLP (MatMul weights DequantizeLinear of int8) is refused with
    the quantization hint, while its float original prunes."""
    prune(mlp(), MLP_CALIB, sparsity=0.3)
    model = ort_quantized(tmp_path, mlp(), MLP_CALIB, "QDQ", per_channel)
    weights = [n for n in model.graph.node if n.op_type == "MatMul"]
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert weights and all(producer[n.input[1]] == "DequantizeLinear" for n in weights)
    with pytest.raises(EPruneError) as info:
        onnx_eprune.prune(model, MLP_CALIB, sparsity=0.3, device="cpu")
    assert "quantized weights" in str(info.value) and "prune the float model" in str(info.value)


def test_hand_made_qdq_matmul_is_refused_with_the_remedy():
    """The same MLP with only its MatMul weights as DequantizeLinear of int8 (no activation
    QDQ) is refused with the quantization hint."""
    model = mlp()
    for init in list(model.graph.initializer):
        if init.name.startswith("W"):
            q, s = _quantize(numpy_helper.to_array(init), per_channel=False)
            model.graph.initializer.remove(init)
            model.graph.initializer.extend([numpy_helper.from_array(q, init.name + "_q"),
                                            numpy_helper.from_array(s, init.name + "_s")])
            model.graph.node.insert(0, helper.make_node("DequantizeLinear", [init.name + "_q", init.name + "_s"],
                                                        [init.name]))
    model.opset_import[0].version = 21
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(EPruneError, match="quantized weights.*prune the float model"):
        onnx_eprune.prune(model, MLP_CALIB, sparsity=0.3, device="cpu")


def inspect_json(capsys, tmp_path, model: onnx.ModelProto) -> dict:
    path = tmp_path / "inspected.onnx"
    onnx.save(model, str(path))
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("opset", [13, 21])
def test_inspect_json_of_a_qdq_model_shows_why_and_counts_its_weights(capsys, tmp_path, opset):
    """inspect --json of a fully QDQ model: no prunable group, a group frozen for
    'quantized weights', and params / MACs equal to an independent count (> 0)."""
    model = fully_qdq(opset, per_channel=True)
    info = inspect_json(capsys, tmp_path, model)
    assert info["prunable_groups"] == 0
    assert any(g["frozen"] and "quantized weights" in g["frozen"] for g in info["groups"]), info["groups"]
    assert (info["params"], info["macs"]) == independent_costs(model)
    assert info["params"] > 0 and info["macs"] > 0


def test_inspect_json_of_ort_qdq_cnn(capsys, tmp_path):
    """quantize_static's QDQ CNN: inspect counts its weights and shows 'quantized weights'; prune refuses it."""
    model = ort_quantized(tmp_path, conv_bn_relu_pool_flatten_gemm(), CALIB, "QDQ", per_channel=True)
    info = inspect_json(capsys, tmp_path, model)
    assert info["prunable_groups"] == 0
    assert any(g["frozen"] and "quantized weights" in g["frozen"] for g in info["groups"])
    assert (info["params"], info["macs"]) == independent_costs(model) == \
        independent_costs(conv_bn_relu_pool_flatten_gemm())
    assert info["params"] > 0 and info["macs"] > 0
    with pytest.raises(EPruneError, match="prune the float model"):
        onnx_eprune.prune(model, CALIB, sparsity=0.3, device="cpu")


def qoperator_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> QLinearConv (3->8) -> ConvInteger (8->16) -> Cast -> Mul
    scale -> GlobalAveragePool -> Flatten = y (N, 16): QOperator all the way."""
    rng = np.random.default_rng(0)
    arrays = {"s": np.array(0.05, np.float32), "zp": np.array(0, np.uint8), "ws": np.array(0.01, np.float32),
              "wzp": np.array(0, np.int8), "w1q": rng.integers(-60, 60, (8, 3, 3, 3)).astype(np.int8),
              "w2q": rng.integers(-60, 60, (16, 8, 3, 3)).astype(np.int8), "ys": np.array(5e-4, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="in_q"),
             helper.make_node("QLinearConv", ["xq", "s", "zp", "w1q", "ws", "wzp", "s", "zp"], ["h1"], name="qconv1",
                              pads=[1] * 4),
             helper.make_node("ConvInteger", ["h1", "w2q", "zp", "wzp"], ["h2"], name="iconv2", pads=[1] * 4),
             helper.make_node("Cast", ["h2"], ["h2f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h2f", "ys"], ["h3"]),
             helper.make_node("GlobalAveragePool", ["h3"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def test_qoperator_model_is_refused_with_the_remedy(tmp_path, capsys):
    """QLinearConv / ConvInteger only: prune fails on one line with the quantization hint."""
    path, calib = tmp_path / "q.onnx", tmp_path / "calib.npy"
    onnx.save(qoperator_model(), str(path))
    np.save(calib, CALIB)
    line = cli_fail(capsys, tmp_path, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                       "--keep-ratio", "0.5", "--device", "cpu", "-q"], 1)
    assert "quantized weights" in line and "prune the float model" in line, line


def test_inspect_json_of_a_qoperator_model_counts_its_weights(capsys, tmp_path):
    """inspect --json of a QLinearConv / ConvInteger model lists its groups frozen for
    'quantized weights' and counts the 8*27 + 16*72 weights and their MACs (once it counted
    no parameters or MACs: graph/costs.py knew only the float ops)."""
    info = inspect_json(capsys, tmp_path, qoperator_model())
    assert any(g["frozen"] and "quantized weights" in g["frozen"] for g in info["groups"])
    assert info["params"] == 8 * 27 + 16 * 72
    assert info["macs"] == (8 * 27 + 16 * 72) * HW * HW


# -- opsets 7-21 ----------------------------------------------------------------------------------------

OPSETS = list(range(7, 22))


def versioned_cnn(opset: int) -> onnx.ModelProto:
    """stem Conv(3->8, no bias) -> BN -> Relu -> Pad 1 -> conv_a (8->8, no padding) -> Clip(0, 6)
    = a; SE: ReduceMean(a, H and W, keepdims 0) -> Unsqueeze(2, 3) -> se1 (8->4, 1x1) -> Relu
    -> se2 (4->8, 1x1) -> Sigmoid, times a; x2 nearest upsampling -> MaxPool 2 -> conv_b
    (8->16) -> Relu -> ReduceMean(H and W, keepdims 1) -> Squeeze(2, 3) -> fc1 Gemm(16->12) ->
    Relu -> Gemm(12->10) = y, spelled as ``opset`` wants, at the lowest IR version it allows
    (below IR 4 every initializer is listed as a graph input)."""
    b = _Builder(11)
    bn_attrs = {"spatial": 1} if opset < 9 else {}
    h = b.bn(b.conv(INPUT, IN_CHANNELS, 8, bias=False, name="stem"), 8, name="stem_bn")
    b.nodes[-1].attribute.extend(helper.make_attribute(k, v) for k, v in bn_attrs.items())
    h = b.node("Relu", [h])
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        h = b.node("Pad", [h], name="pad", pads=pads, mode="constant", value=0.0)
    else:
        h = b.node("Pad", [h, b.const("pads", np.array(pads, np.int64))], name="pad", mode="constant")
    h = b.node("Conv", [h, b.weight("conv_a.weight", (8, 8, 3, 3), 72), b.vector("conv_a.bias", 8)], name="conv_a",
               kernel_shape=[3, 3])
    if opset < 11:
        a = b.node("Clip", [h], name="clip", min=0.0, max=6.0)
    else:
        a = b.node("Clip", [h, b.const("lo", np.array(0.0, np.float32)), b.const("hi", np.array(6.0, np.float32))],
                   name="clip")
    hw = np.array([2, 3], np.int64)

    def reduce_mean(x: str, keepdims: int, name: str) -> str:
        if opset < 18:
            return b.node("ReduceMean", [x], name=name, axes=hw.tolist(), keepdims=keepdims)
        return b.node("ReduceMean", [x, b.const(f"{name}.axes", hw)], name=name, keepdims=keepdims)

    def squeeze(op: str, x: str, name: str) -> str:
        if opset < 13:
            return b.node(op, [x], name=name, axes=hw.tolist())
        return b.node(op, [x, b.const(f"{name}.axes", hw)], name=name)

    s = squeeze("Unsqueeze", reduce_mean(a, 0, "se_mean"), "se_unsqueeze")
    s = b.node("Relu", [b.conv(s, 8, 4, k=1, name="se1")])
    s = b.node("Sigmoid", [b.conv(s, 4, 8, k=1, name="se2")])
    h = b.node("Mul", [a, s], name="se_scale")
    scales = np.array([1, 1, 2, 2], np.float32)
    if opset < 9:
        h = b.node("Upsample", [h], name="up", mode="nearest", scales=scales.tolist())
    elif opset == 9:
        h = b.node("Upsample", [h, b.const("up_scales", scales)], name="up", mode="nearest")
    elif opset == 10:
        h = b.node("Resize", [h, b.const("up_scales", scales)], name="up", mode="nearest")
    else:
        roi = b.const("roi", np.array([], np.float32)) if opset < 13 else ""
        h = b.node("Resize", [h, roi, b.const("up_scales", scales)], name="up", mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    h = b.node("MaxPool", [h], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv_b")])
    h = squeeze("Squeeze", reduce_mean(h, 1, "head_mean"), "head_squeeze")
    h = b.node("Relu", [b.gemm(h, 16, 12, name="fc1")])
    y = b.gemm(h, 12, CLASSES, name=OUTPUT)
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", IN_CHANNELS, HW, HW])]
    if ir_version < 4:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in b.inits]
    graph = helper.make_graph(b.nodes, f"opset{opset}", inputs,
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", CLASSES])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="versions")
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


VERSIONED_GROUPS = [("conv_a", "se2"), ("conv_b",), ("fc1",), ("se1",), ("stem",)]


@pytest.fixture(scope="module")
def versioned_results() -> dict[int, tuple[onnx.ModelProto, onnx_eprune.PruneResult, onnx_eprune.PruneResult]]:
    """Per opset: the model, its run at sparsity 0.3 and its run at keep ratio 0.5 (checked by ``prune``)."""
    return {o: (m, prune(m, sparsity=0.3), prune(m, keep_ratio=0.5)) for o in OPSETS for m in [versioned_cnn(o)]}


@pytest.mark.parametrize("opset", OPSETS, ids=lambda o: f"opset{o}")
def test_old_opset_prunes_at_sparsity_03_keeping_opset_and_ir(versioned_results, opset):
    """Sparsity 0.3 gives a valid model (checked by ``prune``: checker, same opset and IR,
    runs) that reaches the target, its operators still spelled as the opset wants."""
    model, result, _ = versioned_results[opset]
    assert result.model.ir_version == helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    assert result.report["params"]["removed_fraction"] >= 0.29
    assert sorted(n.op_type for n in result.model.graph.node) == sorted(n.op_type for n in model.graph.node)
    if model.ir_version < 4:
        listed = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in result.model.graph.input}
        assert all(listed.get(i.name) == list(i.dims) for i in result.model.graph.initializer)


def test_every_opset_finds_the_same_groups_and_keeps_the_same_channels(versioned_results):
    """At keep ratio 0.5 every spelling prunes exactly the expected groups, keeps the same
    channels, and gives the same outputs as the opset-21 spelling."""
    reference = versioned_results[21][2]
    y21 = run(reference.model, FRESH)[OUTPUT]
    for opset, (_, _, result) in versioned_results.items():
        narrowed = sorted(tuple(sorted(g["producers"])) for g in result.report["groups"]
                          if g["channels_after"] < g["channels_before"])
        assert narrowed == VERSIONED_GROUPS, (opset, narrowed)
        assert [g.get("kept_channels") for g in result.report["groups"]] == \
            [g.get("kept_channels") for g in reference.report["groups"]], opset
        np.testing.assert_allclose(run(result.model, FRESH)[OUTPUT], y21, rtol=1e-4, atol=1e-5, err_msg=str(opset))


# -- versions onnxruntime does not support -------------------------------------------------------------

def _save_cli_case(tmp_path, model: onnx.ModelProto):
    path, calib = tmp_path / "model.onnx", tmp_path / "calib.npy"
    onnx.save(model, str(path))
    np.save(calib, CALIB[:32])
    return path, calib


def future(opset: int, ir_version: int) -> onnx.ModelProto:
    model = conv_bn_relu_pool_flatten_gemm()
    model.opset_import[0].version = opset
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)  # onnx accepts it
    return model


@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_opset_newer_than_onnxruntime_names_the_opset(tmp_path, capsys, command):
    """Opset 28 (onnx accepts it, onnxruntime 1.31 does not): exit 1, one line that names
    opset 28, without onnxruntime's C++ location and function signature."""
    path, calib = _save_cli_case(tmp_path, future(28, 13))
    argv = (["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib), "--sparsity", "0.3",
             "--device", "cpu", "-q"] if command == "prune" else ["inspect", str(path), "-q"])
    line = cli_fail(capsys, tmp_path, argv, 1)
    assert "Opset 28" in line or "opset 28" in line, line
    assert "onnxruntime::" not in line and "ONNXRuntimeError" not in line and ".h:" not in line, line
    assert len(line) <= len("onnx-eprune: error: onnxruntime cannot load the model: ") + 300


def test_opset_newer_than_onnxruntime_says_which_opset_to_use(tmp_path, capsys):
    """Expected (README: the error line 'names the problem and what to do'): the line for an
    opset-28 model says which opset onnxruntime supports (26), i.e. what to re-export at.
    Happens: onnxruntime's message is ~460 characters after its signature is stripped, and
    the cut at 300 keeps its disclaimer and drops the supported opset. Likely cause:
    calibrate/session.py:_reason cuts the message at 300 characters from the start."""
    path, calib = _save_cli_case(tmp_path, future(28, 13))
    line = cli_fail(capsys, tmp_path, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                       "--sparsity", "0.3", "--device", "cpu", "-q"], 1)
    assert "opset 26" in line, line


def test_ir_version_newer_than_onnxruntime_is_a_clear_error(tmp_path, capsys):
    """IR version 14 (onnx accepts it, onnxruntime 1.31 reads up to 13): exit 1, one line
    that names the IR version; the Python API raises EPruneError with the same reason."""
    model = future(21, 14)
    path, calib = _save_cli_case(tmp_path, model)
    line = cli_fail(capsys, tmp_path, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib),
                                       "--sparsity", "0.3", "--device", "cpu", "-q"], 1)
    assert "IR version" in line and "14" in line, line
    with pytest.raises(EPruneError, match="IR version: 14"):
        onnx_eprune.prune(model, CALIB, sparsity=0.3, device="cpu")


# -- local functions ------------------------------------------------------------------------------------

def _function_model(kind: str) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> [the local function] -> conv3 (->16) -> Relu -> GAP -> Flatten
    -> Gemm(16->10), with the function:

    "conv_inside": ``local.ConvRelu(h, W, B)`` = Relu(Conv(h, W, B)), 8->12, its weight an
    initializer passed as an argument; "nested": ``local.Outer(h)`` calls ``local.Inner``
    (LeakyRelu) then Relu; "attr_ref": ``local.Leaky(h)`` with alpha=0.2 as a reference
    attribute; "weight_fn": conv2's weight is ``local.Double(W)`` of an initializer (a
    computed weight no one folds), 8->12."""
    b = _Builder(13)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    functions = []
    local = [helper.make_opsetid("", 17)]
    width = 8
    if kind == "conv_inside":
        w, bias = b.weight("conv2.weight", (12, 8, 3, 3), 72), b.vector("conv2.bias", 12)
        b.nodes.append(helper.make_node("ConvRelu", [h, w, bias], ["call"], name="call", domain="local"))
        h = "call"
        body = [helper.make_node("Conv", ["X", "W", "B"], ["C"], pads=[1] * 4),
                helper.make_node("Relu", ["C"], ["Y"])]
        functions.append(helper.make_function("local", "ConvRelu", ["X", "W", "B"], ["Y"], body, local))
        width = 12
    elif kind == "nested":
        b.nodes.append(helper.make_node("Outer", [h], ["call"], name="call", domain="local"))
        h = "call"
        functions.append(helper.make_function("local", "Inner", ["X"], ["Y"],
                                              [helper.make_node("LeakyRelu", ["X"], ["Y"], alpha=0.1)], local))
        functions.append(helper.make_function("local", "Outer", ["X"], ["Y"],
                                              [helper.make_node("Inner", ["X"], ["T"], domain="local"),
                                               helper.make_node("Relu", ["T"], ["Y"])],
                                              local + [helper.make_opsetid("local", 1)]))
    elif kind == "attr_ref":
        b.nodes.append(helper.make_node("Leaky", [h], ["call"], name="call", domain="local", alpha=0.2))
        h = "call"
        leaky = helper.make_node("LeakyRelu", ["X"], ["Y"])
        leaky.attribute.append(onnx.AttributeProto(name="alpha", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT))
        functions.append(helper.make_function("local", "Leaky", ["X"], ["Y"], [leaky], local, attributes=["alpha"]))
    else:
        w = b.weight("conv2.raw", (12, 8, 3, 3), 72)
        b.nodes.append(helper.make_node("Double", [w], ["conv2.weight"], name="double", domain="local"))
        h = b.node("Relu", [b.node("Conv", [h, "conv2.weight", b.vector("conv2.bias", 12)], name="conv2",
                                   kernel_shape=[3, 3], pads=[1] * 4)])
        functions.append(helper.make_function("local", "Double", ["W"], ["Y"],
                                              [helper.make_node("Add", ["W", "W"], ["Y"])], local))
        width = 12
    h = b.node("Relu", [b.conv(h, width, 16, name="conv3")])
    y = b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT)
    graph = helper.make_graph(b.nodes, "functions",
                              [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", IN_CHANNELS, HW, HW])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", CLASSES])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=functions)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_report_counts_a_conv_whose_weight_a_function_computes():
    """conv2 (8->12, 3x3 on 16x16), whose weight ``local.Double(W)`` computes from an
    initializer, counts its 864 weights and 12 biases and its 221184 MACs in the report's
    'before', as any Conv does (README: --sparsity is a fraction of all Conv weights and
    biases); once it was skipped, and the target was met against a smaller total."""
    result = prune(_function_model("weight_fn"), sparsity=0.3)
    assert result.report["params"]["before"] == 2138 + 12 * 72 + 12
    assert result.report["macs"]["before"] == 497824 + 12 * 72 * HW * HW


@pytest.mark.parametrize("kind", ["conv_inside", "nested", "attr_ref", "weight_fn"])
def test_local_function_prunes_around_it_or_freezes_with_a_reason(kind):
    """The run never crashes: the function's neighbours keep their channels with a reason
    naming the call, the function and any weight it reads stay as they were, the rest
    prunes, and the result is valid and computes the original at keep ratio 1.0."""
    model = _function_model(kind)
    result = prune(model, sparsity=0.3)
    groups = groups_by_producer(result.report)
    frozen = groups["conv1"]
    assert frozen["channels_after"] == 8 and frozen["frozen"], frozen
    name = {"conv_inside": "ConvRelu", "nested": "Outer", "attr_ref": "Leaky", "weight_fn": "conv2"}[kind]
    assert name in frozen["frozen"], frozen
    before = {i.name: i.SerializeToString() for i in model.graph.initializer}
    after = {i.name: i.SerializeToString() for i in result.model.graph.initializer}
    for weight in ("conv2.weight", "conv2.raw"):
        if weight in before:
            assert after[weight] == before[weight]
    assert result.report["params"]["after"] < result.report["params"]["before"]
    same = prune(model, keep_ratio=1.0).model
    np.testing.assert_allclose(run(same, FRESH)[OUTPUT], run(model, FRESH)[OUTPUT], rtol=1e-4, atol=1e-5)
