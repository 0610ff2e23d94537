"""Models saved by onnxruntime's graph optimizer: fused operators of domain com.microsoft.

``SessionOptions.optimized_model_filepath`` at the extended level writes a Conv and its
activation as one FusedConv (with a sum input Z where an Add joins them), a Gemm and its
activation as FusedGemm, SiLU as QuickGelu and the erf GELU as Gelu. The analysis reads
the fused layers as the standard ops they compute (``graph/contrib.py``), and the
activations as it reads Relu; the pruned model holds them all as the input did. Checked here:

* each fused layer, with every activation FusedConv takes (Clip with bounds as inputs and,
  at opset 10, as attributes), a sum input, no bias, and FusedGemm's ``activation_*``
  attributes: the standard form computes what onnxruntime computes for the fused one, and
  fusing it again gives the input back byte for byte (QuickGelu and Gelu, element-wise,
  stay as they are: the analysis reads them as activations);
* a hand-built model of all of them prunes to a valid model holding the same fused ops,
  with the channels and outputs of the same model pruned in standard form;
* small CNNs passed through onnxruntime's own optimizer keep every channel group they had
  and prune to the same sizes, as close to their original as the standard models do.
"""

from __future__ import annotations

import collections

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_eprune
from models import (CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, _Builder, conv_bn_relu_pool_flatten_gemm,
                    composite_activations, count_params, depthwise, random_input, relative_error, residual, run_model,
                    se_block)
from onnx_eprune.graph.contrib import MS_DOMAIN, fuse_again, unfuse

CALIB = random_input(64, seed=1)
FRESH = random_input(7, seed=2)


def _fused(b: _Builder, op: str, inputs: list[str], name: str, **attrs) -> str:
    b.nodes.append(helper.make_node(op, inputs, [name], name=name, domain=MS_DOMAIN, **attrs))
    return name


def _conv_weights(b: _Builder, name: str, cin: int, cout: int, bias: bool = True) -> list[str]:
    w = b.weight(f"{name}.weight", (cout, cin, 3, 3), cin * 9)
    return [w, b.vector(f"{name}.bias", cout)] if bias else [w]


def fused_model(opset: int = 17) -> onnx.ModelProto:
    """FusedConv(3->8, Clip 0..6) = h; FusedConv(8->8, no bias, Z = h, LeakyRelu 0.1) ->
    QuickGelu(1.702) -> FusedConv(8->16, HardSigmoid) -> Gelu -> FusedConv(16->16, Tanh) ->
    QuickGelu(1) -> GAP -> Flatten -> FusedGemm(16->12, LeakyRelu 0.05) -> FusedGemm(12->12,
    transB, Relu) -> Gemm(12->10). The first two convolutions share their channels (the sum
    input): one group."""
    b = _Builder(3)
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    h = _fused(b, "FusedConv", [INPUT, *_conv_weights(b, "c1", IN_CHANNELS, 8)], "c1", activation="Clip",
               activation_params=[0.0, 6.0], **conv)
    t = _fused(b, "FusedConv", [h, *_conv_weights(b, "c2", 8, 8, bias=False), "", h], "c2", activation="LeakyRelu",
               activation_params=[0.1], **conv)
    t = _fused(b, "QuickGelu", [t], "qg1", alpha=1.702)
    t = _fused(b, "FusedConv", [t, *_conv_weights(b, "c3", 8, 16)], "c3", activation="HardSigmoid",
               activation_params=[0.2, 0.5], **conv)
    t = _fused(b, "Gelu", [t], "gelu")
    t = _fused(b, "FusedConv", [t, *_conv_weights(b, "c4", 16, 16)], "c4", activation="Tanh", **conv)
    t = _fused(b, "QuickGelu", [t], "qg2", alpha=1.0)
    t = b.gap_flatten(t)
    t = _fused(b, "FusedGemm", [t, b.weight("g1.weight", (16, 12), 16), b.vector("g1.bias", 12)], "g1",
               activation="LeakyRelu", activation_alpha=0.05)
    t = _fused(b, "FusedGemm", [t, b.weight("g2.weight", (12, 12), 12), b.vector("g2.bias", 12)], "g2",
               activation="Relu", transB=1)
    y = b.gemm(t, 12, CLASSES, name=OUTPUT)
    graph = helper.make_graph(b.nodes, "fused", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                              ["N", IN_CHANNELS, HW, HW])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", CLASSES])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 8 if opset >= 13 else 5
    onnx.checker.check_model(model, full_check=True)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _ms_ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node if n.domain == MS_DOMAIN)


@pytest.mark.parametrize("opset", [17, 10])
def test_standard_form_computes_the_fused_model(opset):
    model = fused_model(opset)
    standard = _copy(model)
    fusions = unfuse(standard)
    layers = _ms_ops(model) - collections.Counter({"QuickGelu": 2, "Gelu": 1})
    assert collections.Counter(f.node.op_type for f in fusions) == layers == {"FusedConv": 4, "FusedGemm": 2}
    assert _ms_ops(standard) == {"QuickGelu": 2, "Gelu": 1}
    onnx.checker.check_model(standard, full_check=True)
    clips = [n for n in standard.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1 and (len(clips[0].input) == 3) == (opset >= 11)  # bounds as inputs from opset 11 on
    assert relative_error(run_model(model, FRESH)[OUTPUT], run_model(standard, FRESH)[OUTPUT]) < 1e-5
    # the layer keeps the fused node's name: reports and --exclude call it as the input does
    assert {"c1", "c2", "c3", "c4", "g1", "g2"} <= {n.name for n in standard.graph.node if n.domain == ""}
    fuse_again(standard, fusions)
    assert standard.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)


def test_nodes_it_cannot_read_stay_fused():
    b = _Builder(0)
    w = b.weight("w", (4, 3, 1, 1), 3)
    computed = b.node("Identity", [w], name="computed_w")
    _fused(b, "FusedConv", [INPUT, computed], "unknown_weight", activation="Relu", kernel_shape=[1, 1])
    _fused(b, "FusedConv", ["unknown_weight", b.weight("w2", (4, 4, 1, 1), 4)], "unknown_act", activation="Swish",
           kernel_shape=[1, 1])
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("unknown_act", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    before = model.SerializeToString()
    assert unfuse(model) == []
    assert model.SerializeToString() == before


def test_pruned_fused_model_holds_the_fused_ops():
    model = fused_model()
    groups = onnx_eprune.inspect(model, CALIB)
    standard = _copy(model)
    unfuse(standard)
    assert groups == onnx_eprune.inspect(standard, CALIB)
    prunable = [g for g in groups["groups"] if g["prunable"]]
    assert sorted(tuple(g["producers"]) for g in prunable) == [("c1", "c2"), ("c3",), ("c4",), ("g1",), ("g2",)]

    result = onnx_eprune.prune(model, CALIB, keep_ratio=0.5)
    twin = onnx_eprune.prune(standard, CALIB, keep_ratio=0.5)
    assert _ms_ops(result.model) == _ms_ops(model)
    onnx.checker.check_model(result.model, full_check=True)
    # the same layers as large (the standard twin also holds the scalar constants of its activations)
    assert result.report["params"] == twin.report["params"] and result.report["macs"] == twin.report["macs"]
    assert count_params(result.model) < count_params(model)
    assert [g.get("kept_channels") for g in result.report["groups"]] == \
        [g.get("kept_channels") for g in twin.report["groups"]]
    out, out_twin = run_model(result.model, FRESH)[OUTPUT], run_model(twin.model, FRESH)[OUTPUT]
    assert relative_error(out_twin, out) < 1e-5
    # the re-fits gave the bias-free c2 a bias: the fused node takes it before its sum input
    c2 = next(n for n in result.model.graph.node if n.name == "c2")
    assert c2.op_type == "FusedConv" and len(c2.input) == 4 and c2.input[2] and c2.input[3] == "c1"


def _ort_optimized(model: onnx.ModelProto, path, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                   ) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


@pytest.mark.parametrize("build", [conv_bn_relu_pool_flatten_gemm, residual, se_block, depthwise,
                                   composite_activations])
def test_models_onnxruntime_optimized(build, tmp_path):
    model = build()
    optimized = _ort_optimized(model, tmp_path / "optimized.onnx")
    assert _ms_ops(optimized), "onnxruntime fused nothing: the test no longer tests fused ops"
    prunable = [g["channels"] for g in onnx_eprune.inspect(model, CALIB)["groups"] if g["prunable"]]
    assert sorted(prunable) == sorted(g["channels"] for g in onnx_eprune.inspect(optimized, CALIB)["groups"]
                                      if g["prunable"])
    result = onnx_eprune.prune(optimized, CALIB, keep_ratio=0.5)
    twin = onnx_eprune.prune(model, CALIB, keep_ratio=0.5)
    pruned, reference = result.model, twin.model
    assert _ms_ops(pruned) == _ms_ops(optimized)
    onnx.checker.check_model(pruned, full_check=True)
    # layers as large as the standard model's (whose scalar constants onnxruntime may have merged)
    assert result.report["macs"] == twin.report["macs"]
    assert count_params(pruned) < count_params(optimized)
    original = run_model(model, FRESH)[OUTPUT]
    error, error_reference = (relative_error(original, run_model(m, FRESH)[OUTPUT]) for m in (pruned, reference))
    assert error < 1.5 * error_reference + 0.01


def test_layout_of_the_all_level_is_refused_with_the_way_out(tmp_path):
    """A model saved at ORT_ENABLE_ALL holds onnxruntime's NCHWc layout ops (on CPUs with
    AVX2 or wider), tied to the CPU it ran on: the groups of its convolutions freeze, and
    the reason says to prune the original or a model saved at the extended level."""
    optimized = _ort_optimized(conv_bn_relu_pool_flatten_gemm(), tmp_path / "all.onnx",
                               ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if not any(n.domain == "com.microsoft.nchwc" for n in optimized.graph.node):
        pytest.skip("onnxruntime wrote no NCHWc op on this CPU")
    layout = [g for g in onnx_eprune.inspect(optimized, CALIB)["groups"]
              if "onnxruntime's NCHWc layout" in (g["frozen"] or "") and "ORT_ENABLE_EXTENDED" in g["frozen"]]
    assert layout and not any(g["prunable"] for g in layout)
