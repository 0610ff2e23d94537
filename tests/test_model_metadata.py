"""What of the input model the pruned model keeps: a demanding user diffs the two graphs.

Attacked here: the model's own fields (IR version, producer, domain, model_version, doc
strings), opset imports of every domain, the graph's name, doc string, metadata and
quantization annotations, node names / domains / attributes / doc strings / metadata of
the nodes pruning did not touch, initializers (order, names, dtypes, storage, doc strings
and metadata) of untouched tensors in float32, float16, float64 and weights stored in
float16 / bfloat16 behind a Cast, graph inputs and outputs (types, symbolic dims,
denotations, doc strings, metadata), value_info of untouched tensors, old IR 3 models that
list initializers as inputs, training_info, and the tool's own provenance entry in
``metadata_props`` (strict JSON, the fields the README lists, the truth of its figures
against an independent count, one entry appended per run through the API, the command line,
statistics files and sweeps).

The rule: only the pruned tensors and the nodes whose weights changed may differ, plus
the one documented addition (the ``onnx_eprune`` metadata entry) and the documented naming
of unnamed nodes. Tests marked ``xfail(strict=True)`` are defects; each says what happens.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

import onnx_eprune
from models import (
    ALL_BUILDERS,
    CLASSES,
    INPUT,
    OUTPUT,
    _Builder,
    conv_bn_relu_pool_flatten_gemm,
    conv_gemm_costs,
    random_input,
    run_model,
)
from onnx_eprune.cli import main

CALIB = random_input(64, seed=1)
KEY = "onnx_eprune"
# README, "The pruned model says how it was made": the fields of one provenance entry
PROVENANCE_FIELDS = {"version", "method", "mode", "target", "exclude", "min_keep", "refit_ridge", "samples", "seed",
                     "params", "macs"}
# in the CNN pruned with conv_1 excluded: the tensors and nodes pruning changes
CHANGED_NODES = {"conv_4", "gemm_8", "y"}
UNTOUCHED_INITS = {"conv_1.weight", "conv_1.bias"}
UNTOUCHED_TENSORS = ("conv_1", "relu_2", "maxpool_3", "y_gelu")  # outputs of nodes left whole


def prune(model: onnx.ModelProto, calib=CALIB, **options) -> onnx_eprune.PruneResult:
    options = {"device": "cpu", "method": "l1", **options}
    return onnx_eprune.prune(model, calib, **options)


def provenance(model: onnx.ModelProto) -> list:
    """The provenance list, parsed as strict JSON (NaN / Infinity refused)."""
    values = [p.value for p in model.metadata_props if p.key == KEY]
    assert len(values) == 1, values

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    runs = json.loads(values[0], parse_constant=refuse)
    assert isinstance(runs, list)
    return runs


def without_provenance(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [p for p in out.metadata_props if p.key != KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    return out


def by_name(items) -> dict:
    return {item.name: item for item in items}


# -- the decorated model ----------------------------------------------------------------------

def decorated() -> onnx.ModelProto:
    """The folded CNN of models.py with every optional field an exporter may fill in, an
    extra opset domain or two, a com.microsoft node on the logits (extra output ``y_gelu``),
    exporter value_info, and conv_1's weight stored in typed ``float_data``."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    g = model.graph
    model.doc_string, model.producer_name, model.producer_version = "model doc", "exporter", "4.2"
    model.domain, model.model_version = "org.example.vision", 7
    for key, value in (("author", "tests"), ("license", "MIT"), ("converted_from", "pytorch 2.3 ✓")):
        model.metadata_props.add(key=key, value=value)
    model.opset_import.extend([helper.make_opsetid("ai.onnx.ml", 3), helper.make_opsetid("com.microsoft", 1)])
    g.name, g.doc_string = "decorated_cnn", "graph doc"
    g.metadata_props.add(key="graph_key", value="graph value")
    g.node.append(helper.make_node("Gelu", [OUTPUT], ["y_gelu"], domain="com.microsoft", name="ms_gelu",
                                   doc_string="contrib op"))
    g.output.append(helper.make_tensor_value_info("y_gelu", TensorProto.FLOAT, ["N", CLASSES]))
    for node in g.node:
        node.doc_string = node.doc_string or f"doc of {node.name}"
        node.metadata_props.add(key="source", value=f"module.{node.name}")
    for init in g.initializer:
        init.doc_string = f"doc of {init.name}"
        init.metadata_props.add(key="origin", value=init.name)
    w = g.initializer[0]
    values = numpy_helper.to_array(w)
    w.ClearField("raw_data")
    w.float_data.extend(values.ravel().tolist())
    annotation = g.quantization_annotation.add(tensor_name="relu_2")
    annotation.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="conv_1.bias")
    for vi, doc in ((g.input[0], "images"), (g.output[0], "scores"), (g.output[1], "gelu scores")):
        vi.doc_string = doc
        vi.metadata_props.add(key="io", value=doc)
    g.input[0].type.denotation = "TENSOR"
    for dim, denotation in zip(g.input[0].type.tensor_type.shape.dim,
                               ("DATA_BATCH", "DATA_CHANNEL", "DATA_FEATURE", "DATA_FEATURE")):
        dim.denotation = denotation
    model = shape_inference.infer_shapes(model)
    for vi in model.graph.value_info:
        vi.doc_string = f"shape of {vi.name}"
    onnx.checker.check_model(model, full_check=True)
    return model


@functools.cache
def decorated_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(input, pruned): half the channels of every group but conv_1's (excluded)."""
    model = decorated()
    return model, prune(model, keep_ratio=0.5, exclude=["conv_1"]).model


def test_the_decorated_model_really_prunes() -> None:
    """The premise of the diff tests: the changed nodes changed, the untouched ones did not need to."""
    model, pruned = decorated_pair()
    before, after = by_name(model.graph.initializer), by_name(pruned.graph.initializer)
    changed = {n for n in before if n in after and list(before[n].dims) != list(after[n].dims)}
    assert changed >= {"conv_4.weight", "gemm_8.weight", "y.weight"}
    assert not changed & UNTOUCHED_INITS
    onnx.checker.check_model(pruned, full_check=True)
    outputs = run_model(pruned, random_input(3, seed=4))
    assert outputs["y"].shape == outputs["y_gelu"].shape == (3, CLASSES)


def test_model_fields_kept() -> None:
    """IR version, producer name and version, domain, model_version and doc string stay."""
    model, pruned = decorated_pair()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(pruned, field) == getattr(model, field), field


def test_opset_imports_of_every_domain_kept() -> None:
    """All opset imports (default, ai.onnx.ml, com.microsoft) stay, in order, with their versions,
    and the com.microsoft node is left exactly as it was."""
    model, pruned = decorated_pair()
    assert [(o.domain, o.version) for o in pruned.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert by_name(pruned.graph.node)["ms_gelu"] == by_name(model.graph.node)["ms_gelu"]


def test_exporter_metadata_kept_in_order_and_one_entry_added() -> None:
    """The exporter's metadata_props stay, in order, unicode intact; the one addition is the provenance key."""
    model, pruned = decorated_pair()
    assert [(p.key, p.value) for p in pruned.metadata_props if p.key != KEY] == \
        [(p.key, p.value) for p in model.metadata_props]
    assert [p.key for p in pruned.metadata_props].count(KEY) == 1
    assert len(provenance(pruned)) == 1


def test_graph_name_doc_metadata_and_annotations_kept() -> None:
    """The graph's name, doc string, metadata_props and quantization annotations stay."""
    model, pruned = decorated_pair()
    assert (pruned.graph.name, pruned.graph.doc_string) == (model.graph.name, model.graph.doc_string)
    assert list(pruned.graph.metadata_props) == list(model.graph.metadata_props)
    assert list(pruned.graph.quantization_annotation) == list(model.graph.quantization_annotation)


def test_untouched_nodes_are_identical_and_in_order() -> None:
    """Every node whose weights did not change is the same NodeProto (name, op, domain,
    inputs, outputs, attributes, doc string, metadata), and the node order is the input's."""
    model, pruned = decorated_pair()
    assert [n.name for n in pruned.graph.node] == [n.name for n in model.graph.node]
    for before, after in zip(model.graph.node, pruned.graph.node):
        if before.name not in CHANGED_NODES:
            assert after == before, before.name


def test_changed_nodes_keep_their_identity() -> None:
    """Nodes whose weights were pruned or re-fitted keep name, op type, domain, attributes, doc
    string, metadata and input / output names (the weights keep their names)."""
    model, pruned = decorated_pair()
    after = by_name(pruned.graph.node)
    for before in model.graph.node:
        if before.name in CHANGED_NODES:
            assert after[before.name] == before, before.name


def test_untouched_initializers_identical_and_order_kept() -> None:
    """Initializers keep their order and names; untouched ones are the same TensorProto, typed
    ``float_data`` storage, doc string and metadata included."""
    model, pruned = decorated_pair()
    assert [i.name for i in pruned.graph.initializer] == [i.name for i in model.graph.initializer]
    before, after = by_name(model.graph.initializer), by_name(pruned.graph.initializer)
    for name in UNTOUCHED_INITS:
        assert after[name] == before[name], name
    assert len(after["conv_1.weight"].float_data) == 8 * 3 * 3 * 3


def test_pruned_initializers_keep_doc_string_and_metadata() -> None:
    """A sliced or re-fitted initializer keeps its doc_string and metadata_props (once it was
    rebuilt from the array alone)."""
    model, pruned = decorated_pair()
    before, after = by_name(model.graph.initializer), by_name(pruned.graph.initializer)
    for name in ("conv_4.weight", "conv_4.bias", "gemm_8.weight", "y.weight"):
        assert after[name].doc_string == before[name].doc_string, name
        assert list(after[name].metadata_props) == list(before[name].metadata_props), name


def test_graph_inputs_and_outputs_identical() -> None:
    """Graph inputs and outputs are the same ValueInfoProtos: names, element types, symbolic
    dims, denotations, doc strings and metadata."""
    model, pruned = decorated_pair()
    assert list(pruned.graph.input) == list(model.graph.input)
    assert list(pruned.graph.output) == list(model.graph.output)


def test_value_info_of_untouched_tensors_kept() -> None:
    """The exporter's value_info of tensors pruning left alone (the excluded conv_1's output,
    its Relu and MaxPool, the contrib op's output) stays as it was, doc strings too, and what
    does stay agrees with the shapes onnxruntime computes (once every entry went whenever
    any tensor changed)."""
    model, pruned = decorated_pair()
    before, after = by_name(model.graph.value_info), by_name(pruned.graph.value_info)
    for name in UNTOUCHED_TENSORS:
        if name in before:
            assert after.get(name) == before[name], name
    assert set(after) & set(UNTOUCHED_TENSORS)
    # whatever stays must still be true of the pruned network
    for name, vi in after.items():
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
        probe = onnx.ModelProto()
        probe.CopyFrom(pruned)
        probe.graph.output.append(helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, None))
        assert list(run_model(probe, random_input(2, seed=3))[name].shape[1:]) == dims, name


# -- nothing pruned: the input back, byte for byte -----------------------------------------------

def _inferred(builder: str) -> onnx.ModelProto:
    model = decorated() if builder == "decorated" else ALL_BUILDERS[builder]()
    return shape_inference.infer_shapes(model)


@pytest.mark.parametrize("builder", [
    "decorated", "residual", "gemm_matmul", "ghost", "conv_transpose",
    "split", "slice", "cnn_reshape_explicit",
])
def test_keep_ratio_one_returns_the_input_plus_provenance(builder: str) -> None:
    """README: ``--keep-ratio 1.0`` gives back the same function. Demanded here: the same model,
    bytes included, but for the provenance entry (once a Split, a channel Slice or an
    explicit Reshape target had its constant rewritten to the same values, and the
    value_info went)."""
    model = _inferred(builder)
    pruned = prune(model, keep_ratio=1.0).model
    assert len(provenance(pruned)) == 1
    assert without_provenance(pruned).SerializeToString(deterministic=True) == \
        model.SerializeToString(deterministic=True)


# -- other float types --------------------------------------------------------------------------

def _fp16_cnn_without_biases() -> onnx.ModelProto:
    """A float16 Conv -> Relu -> Conv -> Relu -> GAP -> Gemm network, no layer with a bias, so
    that the re-fit must add biases (of the model's own type)."""
    b = _Builder(3)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, bias=False, name="c1")])
    h = b.node("Relu", [b.conv(h, 8, 8, bias=False, name="c2")])
    model = b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT, bias=False))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float16_model_stays_float16() -> None:
    """README: half-precision models are pruned as they are: every initializer (the re-fit's new
    biases too) is float16, the graph's inputs and outputs are unchanged, the excluded layer's
    weight is the same tensor, and the result runs on float16 inputs."""
    model = _fp16_cnn_without_biases()
    pruned = prune(model, CALIB.astype(np.float16), keep_ratio=0.5, exclude=["c1"]).model
    assert {i.data_type for i in pruned.graph.initializer} == {TensorProto.FLOAT16}
    assert len(pruned.graph.initializer) > len(model.graph.initializer)  # biases were added
    assert list(pruned.graph.input) == list(model.graph.input)
    assert list(pruned.graph.output) == list(model.graph.output)
    assert by_name(pruned.graph.initializer)["c1.weight"] == by_name(model.graph.initializer)["c1.weight"]
    y = run_model(pruned, random_input(2, seed=6).astype(np.float16))[OUTPUT]
    assert y.dtype == np.float16 and y.shape == (2, CLASSES)


def _float64_mlp() -> onnx.ModelProto:
    """x (N, 16) float64 -> MatMul(w0) -> Relu -> MatMul(w1) = y: no biases; doc strings on
    nodes and weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 24)) / 4, "w0"),
             numpy_helper.from_array(rng.normal(size=(24, CLASSES)) / 5, "w1")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0", doc_string="first layer"),
             helper.make_node("Relu", ["h"], ["r"], name="relu", doc_string="activation"),
             helper.make_node("MatMul", ["r", "w1"], [OUTPUT], name="mm1", doc_string="classifier")]
    graph = helper.make_graph(nodes, "mlp64", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 16])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="f64")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float64_model_stays_float64() -> None:
    """A float64 model keeps float64 weights; the classifier MatMul that the re-fit turns into a
    Gemm with a bias keeps its name and doc string and gets a float64 bias; the Relu is untouched."""
    model = _float64_mlp()
    calib = np.random.default_rng(1).normal(size=(200, 16))
    pruned = prune(model, calib, keep_ratio=0.5).model
    assert {i.data_type for i in pruned.graph.initializer} == {TensorProto.DOUBLE}
    nodes = by_name(pruned.graph.node)
    assert [n.name for n in pruned.graph.node] == ["mm0", "relu", "mm1"]
    assert [n.doc_string for n in pruned.graph.node] == [n.doc_string for n in model.graph.node]
    assert nodes["relu"] == by_name(model.graph.node)["relu"]
    assert list(pruned.graph.input) == list(model.graph.input) and list(pruned.graph.output) == list(model.graph.output)
    y = run_model(pruned, np.random.default_rng(2).normal(size=(3, 16)))[OUTPUT]
    assert y.dtype == np.float64 and y.shape == (3, CLASSES)


def _cast_stored(dtype: int) -> onnx.ModelProto:
    """The folded CNN computing in float32 with every weight stored as ``dtype`` (float16 or
    bfloat16) and Cast to float32 in front of its layer, as mixed-precision exports write it."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    g = model.graph
    stored, casts = [], []
    for init in g.initializer:
        values = numpy_helper.to_array(init)
        if dtype == TensorProto.FLOAT16:
            t = numpy_helper.from_array(values.astype(np.float16), init.name + "_stored")
        else:
            t = helper.make_tensor(init.name + "_stored", TensorProto.BFLOAT16, values.shape, values.ravel().tolist())
        stored.append(t)
        casts.append(helper.make_node("Cast", [t.name], [init.name], to=TensorProto.FLOAT, name=f"cast_{init.name}"))
    del g.initializer[:]
    g.initializer.extend(stored)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["float16", "bfloat16"])
def test_cast_stored_weights_of_untouched_layers_keep_their_storage(dtype: int) -> None:
    """The excluded conv_1's weight and bias stay the float16 / bfloat16 tensors they were,
    read through their Cast nodes (nothing about that layer changed); once they came back
    as float32 initializers read directly by the Conv."""
    model = _cast_stored(dtype)
    pruned = prune(model, keep_ratio=0.5, exclude=["conv_1"]).model
    before, after = by_name(model.graph.initializer), by_name(pruned.graph.initializer)
    for name in ("conv_1.weight_stored", "conv_1.bias_stored"):
        assert after.get(name) == before[name], name
    nodes = by_name(pruned.graph.node)
    assert nodes["cast_conv_1.weight"] == by_name(model.graph.node)["cast_conv_1.weight"]


def test_cast_stored_float16_model_does_not_grow_when_nothing_is_pruned() -> None:
    """keep_ratio=1.0 (nothing removed) gives a model no larger than the input (once every
    float16 weight behind a Cast was written as float32, and the file grew by about the
    size of the weights)."""
    model = _cast_stored(TensorProto.FLOAT16)
    pruned = prune(model, keep_ratio=1.0).model
    assert len(without_provenance(pruned).SerializeToString()) <= len(model.SerializeToString())


# -- old IR, unnamed nodes, training_info -----------------------------------------------------

def test_ir3_initializer_inputs_kept_and_resized() -> None:
    """An IR 3 / opset 8 model lists its initializers as graph inputs: they stay, in order,
    with their doc strings; those of untouched tensors are unchanged and those of pruned ones
    state the pruned dims. IR version and opset stay."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    model.opset_import[0].version, model.ir_version = 8, 3
    for init in model.graph.initializer:
        vi = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        vi.doc_string = f"weight input {init.name}"
        model.graph.input.append(vi)
    onnx.checker.check_model(model, full_check=True)
    pruned = prune(model, keep_ratio=0.5, exclude=["conv_1"]).model
    assert (pruned.ir_version, [(o.domain, o.version) for o in pruned.opset_import]) == (3, [("", 8)])
    assert [vi.name for vi in pruned.graph.input] == [vi.name for vi in model.graph.input]
    before = by_name(model.graph.input)
    inits = by_name(pruned.graph.initializer)
    for vi in pruned.graph.input:
        assert vi.doc_string == before[vi.name].doc_string
        if vi.name in UNTOUCHED_INITS or vi.name == INPUT:
            assert vi == before[vi.name], vi.name
        else:
            assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == list(inits[vi.name].dims), vi.name


def test_unnamed_nodes_get_the_documented_label_and_nothing_else_changes() -> None:
    """README (--exclude): an unnamed node is ``OpType#index`` and the pruned model gives it that
    name; named nodes keep theirs, and an unnamed untouched node differs in nothing else."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    for node in model.graph.node:
        if node.name in ("relu_2", "maxpool_6"):
            node.name = ""
    pruned = prune(model, keep_ratio=0.5, exclude=["conv_1"]).model
    names = [n.name for n in pruned.graph.node]
    assert names == ["conv_1", "Relu#1", "maxpool_3", "conv_4", "relu_5", "MaxPool#5", "flatten_7", "gemm_8",
                     "relu_9", "y"]
    relu = onnx.NodeProto()
    relu.CopyFrom(pruned.graph.node[1])
    relu.name = ""
    assert relu == model.graph.node[1]


def _with_training_info(weight: str) -> onnx.ModelProto:
    """The folded CNN with a training_info whose initialization graph produces a zero tensor of
    ``weight``'s shape and binds it to ``weight`` (what re-initialising that layer would do)."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    value = numpy_helper.to_array(by_name(model.graph.initializer)[weight])
    info = model.training_info.add()
    init_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["fresh"], value=numpy_helper.from_array(np.zeros_like(value), "zeros"))],
        "reinit", [], [helper.make_tensor_value_info("fresh", TensorProto.FLOAT, list(value.shape))])
    info.initialization.CopyFrom(init_graph)
    info.initialization_binding.add(key=weight, value="fresh")
    onnx.checker.check_model(model, full_check=True)
    return model


def _bound_shapes(model: onnx.ModelProto) -> list[tuple[str, list[int], list[int]]]:
    """(initializer, its dims, the dims its training_info initialization binding produces)."""
    inits = by_name(model.graph.initializer)
    found = []
    for info in model.training_info:
        outputs = by_name(info.initialization.output)
        for binding in info.initialization_binding:
            dims = [d.dim_value for d in outputs[binding.value].type.tensor_type.shape.dim]
            found.append((binding.key, list(inits[binding.key].dims), dims))
    return found


def test_training_info_of_untouched_tensors_kept() -> None:
    """A training_info that binds only an untouched weight (the excluded conv_1's) stays as it was."""
    model = _with_training_info("conv_1.weight")
    pruned = prune(model, keep_ratio=0.5, exclude=["conv_1"]).model
    assert list(pruned.training_info) == list(model.training_info)
    onnx.checker.check_model(pruned, full_check=True)


def test_training_info_does_not_contradict_pruned_weights() -> None:
    """The output never carries a training_info binding that contradicts the tensor it binds:
    the entry that binds the pruned conv_4.weight goes, with a warning (once it was kept, and
    its initialization would install a (16, 8, 3, 3) weight the graph cannot use)."""
    model = _with_training_info("conv_4.weight")
    pruned = prune(model, keep_ratio=0.5).model
    assert list(by_name(pruned.graph.initializer)["conv_4.weight"].dims) != [16, 8, 3, 3]
    for name, dims, bound in _bound_shapes(pruned):
        assert bound == dims, (name, dims, bound)


# -- the provenance entry -----------------------------------------------------------------------

def test_provenance_entry_holds_the_readme_fields_from_the_report() -> None:
    """The entry is strict JSON with exactly the README's fields, each equal to the run's report
    (params and MACs as [before, after]) and the version onnx_eprune.__version__."""
    model = decorated()
    result = prune(model, sparsity=0.4, method="thinet", mode="oneshot", samples=48, seed=5, exclude=["conv_1"],
                   min_keep=0.25, refit_ridge=0.5)
    [entry] = provenance(result.model)
    assert set(entry) == PROVENANCE_FIELDS
    report = result.report
    assert entry["version"] == onnx_eprune.__version__ == report["version"]
    assert (entry["method"], entry["mode"], entry["samples"], entry["seed"]) == ("thinet", "oneshot", 48, 5)
    assert entry["target"] == {"kind": "sparsity", "value": 0.4} == report["target"]
    assert (entry["exclude"], entry["min_keep"], entry["refit_ridge"]) == (["conv_1"], 0.25, 0.5)
    for key in ("params", "macs"):
        assert entry[key] == [report[key]["before"], report[key]["after"]]


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "batchnorm"])
def test_provenance_costs_match_an_independent_count(folded: bool) -> None:
    """params and MACs [before, after] equal a count on the input and output files with ONNX's
    shape inference (models.conv_gemm_costs), also where the re-fit adds biases."""
    model = conv_bn_relu_pool_flatten_gemm(folded)
    pruned = prune(model, sparsity=0.4).model
    [entry] = provenance(pruned)
    (p0, m0), (p1, m1) = conv_gemm_costs(model), conv_gemm_costs(pruned)
    assert entry["params"] == [p0, p1]
    assert entry["macs"] == [m0, m1]


def test_provenance_records_the_samples_used() -> None:
    """``samples`` beyond the data: all are used (README) and the entry says how many were."""
    pruned = prune(conv_bn_relu_pool_flatten_gemm(True), CALIB[:40], keep_ratio=0.5, samples=100).model
    assert provenance(pruned)[-1]["samples"] == 40


def test_provenance_from_statistics_files() -> None:
    """Pruning from shards records the shards' total samples, their seed and one-shot mode."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    calib = random_input(160, seed=7)
    shards = [onnx_eprune.calibrate(model, part, seed=3, device="cpu") for part in np.array_split(calib, 2)]
    result = onnx_eprune.prune(model, stats=shards, keep_ratio=0.5, method="l1")
    [entry] = provenance(result.model)
    assert (entry["samples"], entry["seed"], entry["mode"]) == (160, 3, "oneshot")
    assert entry["params"] == [result.report["params"]["before"], result.report["params"]["after"]]


def test_sweep_models_record_their_own_target() -> None:
    """Each model a sweep returns records one run, with its own target and figures, and keeps
    the exporter's metadata."""
    model = decorated()
    points = onnx_eprune.sweep(model, CALIB, [0.3, 0.5], device="cpu", method="l1")
    for point in points:
        [entry] = provenance(point.model)
        assert entry["target"] == {"kind": "sparsity", "value": point.target}
        assert entry["params"] == [point.report["params"]["before"], point.report["params"]["after"]]
        assert [(p.key, p.value) for p in point.model.metadata_props if p.key != KEY] == \
            [(p.key, p.value) for p in model.metadata_props]


def test_earlier_provenance_key_keeps_its_place() -> None:
    """A model pruned before, whose metadata holds other keys after the provenance key: the key
    stays where it was, with the new run appended, and the other keys keep their order."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    once = prune(model, keep_ratio=0.75).model
    once.metadata_props.add(key="later", value="added after the first run")
    twice = prune(once, keep_ratio=0.75).model
    assert [p.key for p in twice.metadata_props] == [KEY, "later"]
    first, second = provenance(twice)
    assert first == provenance(once)[0]
    assert second["params"][0] == first["params"][1]


def test_cli_repeated_runs_append_and_chain(tmp_path, capsys) -> None:
    """Two ``onnx-eprune prune`` runs, the second on the first's output: the file lists both runs
    (each equal to its --report), the second's "before" is the first's "after", the exporter's
    fields and metadata survive both writes, ``inspect --json`` lists the same runs, and the
    input file is left as it was."""
    source = tmp_path / "model.onnx"
    onnx.save(decorated(), str(source))
    original = source.read_bytes()
    np.save(tmp_path / "calib.npy", CALIB)
    common = ["--calib", str(tmp_path / "calib.npy"), "--device", "cpu", "--method", "l1", "-q"]
    assert main(["prune", str(source), "-o", str(tmp_path / "a.onnx"), "--sparsity", "0.3",
                 "--report", str(tmp_path / "a.json"), *common]) == 0
    assert main(["prune", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx"), "--keep-ratio", "0.5",
                 "--mode", "oneshot", "--seed", "2", "--report", str(tmp_path / "b.json"), *common]) == 0
    assert source.read_bytes() == original
    model, pruned = onnx.load(str(source)), onnx.load(str(tmp_path / "b.onnx"))
    runs = provenance(pruned)
    assert len(runs) == 2
    for run, name in zip(runs, ("a.json", "b.json")):
        report = json.loads((tmp_path / name).read_text())
        assert {k: run[k] for k in PROVENANCE_FIELDS - {"params", "macs"}} == \
            {k: report[k] for k in PROVENANCE_FIELDS - {"params", "macs"}}
        assert run["params"] == [report["params"]["before"], report["params"]["after"]]
    assert runs[1]["params"][0] == runs[0]["params"][1] and runs[1]["macs"][0] == runs[0]["macs"][1]
    assert (runs[1]["mode"], runs[1]["seed"], runs[1]["target"]["kind"]) == ("oneshot", 2, "keep_ratio")
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(pruned, field) == getattr(model, field), field
    assert [(p.key, p.value) for p in pruned.metadata_props if p.key != KEY] == \
        [(p.key, p.value) for p in model.metadata_props]
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "b.onnx"), "--json", "--input-shape", "1,3,16,16"]) == 0
    assert json.loads(capsys.readouterr().out)["pruned_before"] == runs
