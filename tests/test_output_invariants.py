"""Invariants of the pruned ``ModelProto`` beyond "onnx.checker passes".

On the small ``onnx.helper`` models of models.py and random_graphs.py, pruning must return a
model that

* passes strict shape inference (``check_type``, ``strict_mode``, ``data_prop``), and every
  shape and element type that inference derives agrees with what onnxruntime computes;
* holds no initializer that nothing reads, no node whose outputs nothing reads (unless the
  input had it), no tensor name defined twice and no node name used twice;
* keeps the input's IR version, opset imports, producer, model and graph doc strings, node
  doc strings and metadata (the one documented addition: the ``onnx_eprune`` provenance
  entry, one per run), and the graph inputs and outputs with their names, element types and
  dims, symbolic ones included;
* keeps ONNX local functions and the opset imports they need, freezing the channels that
  a function call reads or writes;
* works whatever the form of the weights: raw_data, typed fields (float_data, int64_data),
  Constant nodes holding ``value``, ``value_floats``, ``value_ints`` or ``sparse_value``;
* is the same bytes when the same call runs twice, leaves the ``ModelProto`` passed in as
  it was, and computes exactly the input's outputs at targets that remove nothing;
* runs in a second runtime, OpenVINO (CPU, f32), with the outputs onnxruntime gives: a
  rewrite that only onnxruntime tolerates (a stale attribute or shape constant) is a broken
  graph for every user of another runtime (skipped where openvino is not installed; the
  test extra installs it).

The tests marked ``xfail(strict=True)`` are defects found this way; each reason says what
goes wrong.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

import onnx_eprune
import random_graphs
from models import (ALL_BUILDERS, CLASSES, HW, IN_CHANNELS, INPUT, OUTPUT, _Builder, conv_bn_relu_pool_flatten_gemm,
                    count_params, random_input, residual)
from onnx_eprune.errors import EPruneError

CALIB = random_input(64, seed=1)
FRESH = random_input(6, seed=5)
PROVENANCE = "onnx_eprune"
ACCEPTABLE_REFUSALS = ("out of reach", "no prunable channel group")
RANDOM_SEEDS = range(24)
# how every models.py builder is pruned for the structure and shape-inference checks
BUILDER_OPTIONS = {"keep_ratio": 0.5, "method": "l1"}


def prune(model: onnx.ModelProto, **options) -> onnx_eprune.PruneResult:
    """``onnx_eprune.prune`` on the CPU with the shared calibration samples."""
    return onnx_eprune.prune(model, CALIB, device="cpu", **options)


@functools.cache
def pruned_builder(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(original, pruned) for builder ``name`` of models.py, pruned once per session."""
    model = ALL_BUILDERS[name]()
    return model, prune(model, **BUILDER_OPTIONS).model


@functools.cache
def pruned_random(seed: int) -> tuple[onnx.ModelProto, onnx.ModelProto | None]:
    """(original, pruned or None when refused) for random graph ``seed``, with one of three
    targets and methods picked by the seed."""
    model = random_graphs.random_cnn(seed)
    options = [{"keep_ratio": 0.5, "method": "l1"}, {"sparsity": 0.4},
               {"flops_reduction": 0.3, "mode": "oneshot", "method": "thinet"}][seed % 3]
    try:
        return model, prune(model, **options).model
    except EPruneError as exc:
        assert any(r in str(exc) for r in ACCEPTABLE_REFUSALS), f"{exc}; {random_graphs.describe(model)}"
        return model, None


# -- what the checks read ---------------------------------------------------------------------

def signature(model: onnx.ModelProto, with_initializers: bool = False) -> dict:
    """Names, element types and dims (value or symbol) of the graph inputs (the real ones,
    unless ``with_initializers``) and outputs."""
    inits = set() if with_initializers else {i.name for i in model.graph.initializer}

    def entry(vi: onnx.ValueInfoProto) -> tuple:
        t = vi.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim) if t.HasField("shape") else None
        return vi.name, t.elem_type, dims
    return {"inputs": [entry(vi) for vi in model.graph.input if vi.name not in inits],
            "outputs": [entry(vi) for vi in model.graph.output]}


def reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` or of its sub-graphs reads."""
    names: set[str] = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= reads(sub)
    return names


def definitions(graph: onnx.GraphProto) -> list[str]:
    """Every tensor name ``graph`` and its sub-graphs define (inputs, initializers, node
    outputs), once per definition."""
    inits = [i.name for i in graph.initializer] + [i.values.name for i in graph.sparse_initializer]
    names = [i.name for i in graph.input if i.name not in inits] + inits  # an input may name an initializer
    for node in graph.node:
        names += [o for o in node.output if o]
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names += definitions(sub)
    return names


def dead_nodes(model: onnx.ModelProto) -> list[str]:
    """Main-graph nodes none of whose outputs is read or is a graph output."""
    used = reads(model.graph) | {o.name for o in model.graph.output}
    return [n.name or f"{n.op_type}:{n.output[0]}" for n in model.graph.node if not any(o in used for o in n.output)]


def other_metadata(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """The metadata_props other than the provenance entry, in order."""
    return [(p.key, p.value) for p in model.metadata_props if p.key != PROVENANCE]


def provenance(model: onnx.ModelProto) -> list:
    """The pruning runs the model's metadata records (README: one entry per run)."""
    values = [p.value for p in model.metadata_props if p.key == PROVENANCE]
    return json.loads(values[0]) if values else []


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``feeds`` in onnxruntime (CPU), by name."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def feeds_for(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """``x`` for the one real input, one sample without the batch axis where it has none."""
    vi = signature(model)["inputs"][0]
    return {vi[0]: x if len(vi[2]) == x.ndim else x[0]}


# -- the checks --------------------------------------------------------------------------------

def assert_inferred_shapes_match_runtime(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Strict shape inference succeeds on ``model``; every main-graph tensor it types has that
    element type, rank and fixed dims in onnxruntime, and a symbol stands for one size."""
    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    typed = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
             if vi.type.HasField("tensor_type") and vi.name not in constants}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, None)
                              for name, vi in typed.items() if name not in outputs)
    values = run(probe, feeds_for(model, x))
    symbols: dict[str, int] = {}
    for name, vi in typed.items():
        t, value = vi.type.tensor_type, values[name]
        assert t.elem_type == helper.np_dtype_to_tensor_dtype(value.dtype), name
        if not t.HasField("shape"):
            continue
        assert len(t.shape.dim) == value.ndim, (name, t.shape, value.shape)
        for dim, size in zip(t.shape.dim, value.shape):
            if dim.HasField("dim_value"):
                assert dim.dim_value == size, (name, t.shape, value.shape)
            elif dim.dim_param:
                assert symbols.setdefault(dim.dim_param, size) == size, (name, dim.dim_param, value.shape)


def assert_structure(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """No dangling initializer or new dead node, unique names, the model's fields, metadata
    and signature as the input's."""
    used = reads(pruned.graph) | {o.name for o in pruned.graph.output} | {i.name for i in pruned.graph.input}
    assert [i.name for i in pruned.graph.initializer if i.name not in used] == []
    assert set(dead_nodes(pruned)) <= set(dead_nodes(original))
    defined = definitions(pruned.graph)
    assert len(defined) == len(set(defined)), sorted(n for n in defined if defined.count(n) > 1)
    names = [n.name for n in pruned.graph.node if n.name]
    assert len(names) == len(set(names))
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(pruned, field) == getattr(original, field), field
    assert list(pruned.opset_import) == list(original.opset_import)
    assert list(pruned.functions) == list(original.functions)
    assert (pruned.graph.name, pruned.graph.doc_string) == (original.graph.name, original.graph.doc_string)
    assert other_metadata(pruned) == other_metadata(original)
    assert len(provenance(pruned)) == len(provenance(original)) + 1
    assert signature(pruned) == signature(original)


# -- every builder and random graphs -------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL_BUILDERS))
def test_builder_output_structure(name: str) -> None:
    """Each models.py builder, pruned: no dangling or duplicate names, fields and signature kept."""
    original, pruned = pruned_builder(name)
    assert_structure(original, pruned)


@pytest.mark.parametrize("name", list(ALL_BUILDERS))
def test_builder_strict_shape_inference(name: str) -> None:
    """Each models.py builder, pruned: strict shape inference agrees with onnxruntime's shapes."""
    _, pruned = pruned_builder(name)
    assert_inferred_shapes_match_runtime(pruned, FRESH)


@pytest.mark.parametrize("seed", list(RANDOM_SEEDS))
def test_random_graph_output_invariants(seed: int) -> None:
    """Random graphs, pruned: structure invariants and strict shape inference against onnxruntime."""
    original, pruned = pruned_random(seed)
    if pruned is None:
        pytest.skip("refused: nothing prunable or the target is out of reach")
    context = random_graphs.describe(original)
    try:
        assert_structure(original, pruned)
        assert_inferred_shapes_match_runtime(pruned, FRESH)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {context}") from None


def test_random_graphs_prune_often_enough() -> None:
    """Most random graphs really prune, so the random-graph invariants are not checked vacuously."""
    pruned = [pruned_random(seed)[1] is not None for seed in RANDOM_SEEDS]
    assert sum(pruned) >= 0.6 * len(pruned)


# -- a second runtime ----------------------------------------------------------------------------

OPENVINO_TOLERANCE = 1e-5  # largest |difference| over the largest |output| (observed: below 1e-6)


def openvino_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every graph output of ``model`` on ``feeds`` in OpenVINO's CPU plugin, in graph order,
    compiled for the feeds' shapes in f32 (its default on CPUs with bf16 units is bf16,
    whose rounding would hide nothing and flag everything)."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    net = core.read_model(model.SerializeToString(), b"")
    net.reshape({i.get_any_name(): list(feeds[i.get_any_name()].shape) for i in net.inputs})
    compiled = core.compile_model(net, "CPU", {ov.properties.hint.inference_precision(): ov.Type.f32})
    request = compiled.create_infer_request()
    request.infer(feeds)
    return [request.get_tensor(o).data.copy() for o in compiled.outputs]


def assert_openvino_agrees(model: onnx.ModelProto) -> None:
    """``model`` compiles and runs in OpenVINO and gives onnxruntime's outputs."""
    feeds = feeds_for(model, FRESH)
    expected = run(model, feeds)
    got = openvino_outputs(model, feeds)
    assert len(got) == len(expected)
    for (name, want), have in zip(expected.items(), got):
        assert have.shape == want.shape, name
        error = float(np.max(np.abs(have - want)) / (np.max(np.abs(want)) + 1e-12))
        assert error <= OPENVINO_TOLERANCE, f"{name}: relative error {error:.1e} in OpenVINO"


@pytest.mark.parametrize("name", list(ALL_BUILDERS))
def test_builder_pruned_runs_in_openvino_as_in_onnxruntime(name: str) -> None:
    """Each models.py builder, original and pruned, gives onnxruntime's outputs in OpenVINO."""
    original, pruned = pruned_builder(name)
    assert_openvino_agrees(original)
    assert_openvino_agrees(pruned)


def test_random_graphs_pruned_run_in_openvino_as_in_onnxruntime() -> None:
    """The random graphs that prune give, pruned, onnxruntime's outputs in OpenVINO too."""
    for seed in RANDOM_SEEDS:
        original, pruned = pruned_random(seed)
        if pruned is not None:
            try:
                assert_openvino_agrees(pruned)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}: {exc}; {random_graphs.describe(original)}") from None
            except Exception as exc:  # OpenVINO refusing the graph: the finding, not a crash of the test
                raise AssertionError(f"seed {seed}: OpenVINO refuses the pruned graph: {exc}; "
                                     f"{random_graphs.describe(original)}") from None


# -- model fields, metadata and symbolic dims ---------------------------------------------------

def decorated() -> onnx.ModelProto:
    """The residual model with every optional model, graph and node field filled in, and
    exporter shapes recorded as value_info."""
    model = residual()
    model.doc_string, model.producer_version, model.domain, model.model_version = "model doc", "9.9", "org.test", 7
    model.graph.doc_string = "graph doc"
    for key, value in (("author", "tests"), ("license", "none")):
        model.metadata_props.add(key=key, value=value)
    for node in model.graph.node:
        node.doc_string = f"doc of {node.name}"
    model.graph.input[0].doc_string = "images"
    model.graph.output[0].doc_string = "scores"
    return shape_inference.infer_shapes(model)


def test_model_fields_and_metadata_survive_two_runs() -> None:
    """Doc strings and metadata survive two runs; each run appends one provenance entry."""
    model = decorated()
    once = prune(model, keep_ratio=0.5, method="l1").model
    assert_structure(model, once)
    twice = prune(once, keep_ratio=0.75, method="l1").model
    assert_structure(once, twice)
    assert [n.doc_string for n in twice.graph.node] == [n.doc_string for n in model.graph.node]
    assert (twice.graph.input[0].doc_string, twice.graph.output[0].doc_string) == ("images", "scores")
    assert [entry["target"] for entry in provenance(twice)] == [{"kind": "keep_ratio", "value": 0.5},
                                                           {"kind": "keep_ratio", "value": 0.75}]
    assert_inferred_shapes_match_runtime(twice, FRESH)


def test_symbolic_dims_survive_and_other_sizes_run() -> None:
    """Named batch, height and width dims stay as they were, and the pruned model runs at other sizes."""
    model = residual()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, symbol in zip(dims, ("batch", None, "height", "width")):
        if symbol:
            dim.Clear()
            dim.dim_param = symbol
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model, full_check=True)
    pruned = prune(model, keep_ratio=0.5, method="l1").model
    assert signature(pruned) == signature(model)
    assert signature(pruned)["inputs"][0][2] == ("batch", IN_CHANNELS, "height", "width")
    x = np.random.default_rng(3).normal(size=(3, IN_CHANNELS, 20, 24)).astype(np.float32)
    assert run(pruned, {INPUT: x})[OUTPUT].shape == (3, CLASSES)
    assert_inferred_shapes_match_runtime(pruned, x)


# -- ONNX local functions -----------------------------------------------------------------------

def with_function_call() -> onnx.ModelProto:
    """The folded CNN with its second Relu replaced by a call of the local function
    ``custom.MyRelu`` (a Relu inside)."""
    model = conv_bn_relu_pool_flatten_gemm()
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    relus[1].op_type, relus[1].domain = "MyRelu", "custom"
    body = [helper.make_node("Relu", ["X"], ["Y"])]
    model.functions.append(helper.make_function("custom", "MyRelu", ["X"], ["Y"], body,
                                                opset_imports=[helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("custom", 1))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_local_function_is_kept_and_its_channels_frozen() -> None:
    """A model calling a local function keeps the function and its opset; the call's channels stay whole."""
    model = with_function_call()
    result = prune(model, keep_ratio=0.5, method="l1")
    onnx.checker.check_model(result.model, full_check=True)
    assert_structure(model, result.model)
    call = next(n for n in result.model.graph.node if n.op_type == "MyRelu")
    assert call.domain == "custom"
    groups = {p: g for g in result.report["groups"] for p in g["producers"]}
    producer = next(n.name for n in model.graph.node if n.output[0] == call.input[0])
    assert groups[producer]["channels_after"] == groups[producer]["channels_before"]
    assert "MyRelu is not understood" in groups[producer]["frozen"]
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert run(result.model, {INPUT: FRESH})[OUTPUT].shape == (len(FRESH), CLASSES)
    assert_inferred_shapes_match_runtime(result.model, FRESH)


# -- the forms weights are stored in ------------------------------------------------------------

def typed_fields(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer written to its typed field (float_data, int64_data), not raw_data."""
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        init.CopyFrom(helper.make_tensor(init.name, init.data_type, value.shape, value.flatten().tolist(), raw=False))
    return model


def constant_attributes(kind: str) -> onnx.ModelProto:
    """The CNN with weights in Constant nodes, its 1-D float vectors as ``value_floats``, 1-D
    int64 vectors as ``value_ints``, or its 2-D weights as ``sparse_value``."""
    model = conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=True)
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.ndim == 1 and value.dtype == {"value_floats": np.float32, "value_ints": np.int64}.get(kind):
            attr = helper.make_attribute(kind, value.tolist())
        elif kind == "sparse_value" and value.ndim == 2:
            flat = np.where(np.abs(value) < 0.02, 0, value).reshape(-1)
            index = np.flatnonzero(flat)
            attr = helper.make_attribute(kind, helper.make_sparse_tensor(
                numpy_helper.from_array(flat[index], node.output[0]), numpy_helper.from_array(index, "index"),
                value.shape))
        else:
            continue
        del node.attribute[:]
        node.attribute.append(attr)
    onnx.checker.check_model(model, full_check=True)
    return model


STORAGE = {
    "raw_data": lambda: conv_bn_relu_pool_flatten_gemm(flatten="reshape_explicit"),
    "typed_fields": lambda: typed_fields(conv_bn_relu_pool_flatten_gemm(flatten="reshape_explicit")),
    "constant_value": lambda: conv_bn_relu_pool_flatten_gemm(False, flatten="reshape0", constants=True),
    "value_floats": lambda: constant_attributes("value_floats"),
    "value_ints": lambda: constant_attributes("value_ints"),
    "sparse_value": lambda: constant_attributes("sparse_value"),
}


@pytest.mark.parametrize("storage", list(STORAGE))
def test_weight_storage_forms_prune_and_keep_all_is_exact(storage: str) -> None:
    """Each storage form prunes to a valid, runnable model, and keep_ratio=1.0 gives the same outputs."""
    model = STORAGE[storage]()
    result = prune(model, keep_ratio=0.5, method="l1")
    onnx.checker.check_model(result.model, full_check=True)
    assert signature(result.model) == signature(model)
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert_inferred_shapes_match_runtime(result.model, FRESH)
    frozen = [g["frozen"] for g in result.report["groups"] if g["producers"] and g["frozen"]]
    assert (storage == "sparse_value") == any("non-constant weights" in f for f in frozen), frozen
    same = prune(model, keep_ratio=1.0).model
    np.testing.assert_array_equal(run(same, {INPUT: FRESH})[OUTPUT], run(model, {INPUT: FRESH})[OUTPUT])


# -- determinism, the input left alone, targets that remove nothing ------------------------------

@pytest.mark.parametrize("options", [{"sparsity": 0.5}, {"sparsity": 0.5, "mode": "oneshot"},
                                     {"flops_reduction": 0.4, "method": "lasso"},
                                     {"keep_ratio": 0.5, "method": "random", "seed": 3}],
                         ids=["entropic-sequential", "entropic-oneshot", "lasso-flops", "random-seed"])
def test_same_call_same_bytes_and_input_untouched(options: dict) -> None:
    """Two identical calls give byte-identical models, and the ModelProto passed in is unchanged."""
    model = decorated()
    before = model.SerializeToString(deterministic=True)
    first = prune(model, **options).model.SerializeToString(deterministic=True)
    assert model.SerializeToString(deterministic=True) == before
    assert prune(model, **options).model.SerializeToString(deterministic=True) == first
    assert model.SerializeToString(deterministic=True) == before


@pytest.mark.parametrize("name", ["cnn_bn", "cnn_constants", "residual", "se_block", "ghost", "decoder",
                                  "channels_last", "multiplier_sum", "computed_pads"])
@pytest.mark.parametrize("options", [{"sparsity": 0.0}, {"flops_reduction": 0.0, "mode": "oneshot"},
                                     {"keep_ratio": 1.0}], ids=["sparsity0", "flops0-oneshot", "keep1"])
def test_targets_that_remove_nothing_reproduce_the_input(name: str, options: dict) -> None:
    """At sparsity 0, FLOPs reduction 0 or keep ratio 1, the outputs are exactly the input's."""
    model = ALL_BUILDERS[name]()
    result = prune(model, **options)
    assert result.report["params"]["after"] == result.report["params"]["before"]
    assert count_params(result.model) == count_params(model)
    assert signature(result.model) == signature(model)
    feeds = {INPUT: FRESH}
    for key, value in run(model, feeds).items():
        np.testing.assert_array_equal(run(result.model, feeds)[key], value, err_msg=key)


# -- defects ------------------------------------------------------------------------------------

def overridable_weight() -> onnx.ModelProto:
    """The CNN of conv_bn_relu_pool_flatten_gemm (IR 8) with ``conv_4.weight`` also listed as
    a graph input: from IR 4 on that makes the initializer a default that the caller may feed."""
    model = conv_bn_relu_pool_flatten_gemm()
    weight = next(i for i in model.graph.initializer if i.name == "conv_4.weight")
    model.graph.input.append(helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, list(weight.dims)))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_overridable_initializer_keeps_its_input_shape() -> None:
    """A graph input backed by an initializer (IR >= 4) keeps its declared shape and value and
    can still be fed; the channels it touches are frozen with that reason, the rest prune."""
    model = overridable_weight()
    result = prune(model, keep_ratio=0.5, method="l1")
    pruned = result.model
    assert signature(pruned, with_initializers=True) == signature(model, with_initializers=True)
    assert count_params(pruned) < count_params(model)
    weight = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "conv_4.weight")
    assert np.array_equal(next(numpy_helper.to_array(i) for i in pruned.graph.initializer
                               if i.name == "conv_4.weight"), weight)
    default = run(pruned, {INPUT: FRESH})
    fed = run(pruned, {INPUT: FRESH, "conv_4.weight": weight})
    assert all(np.array_equal(default[name], fed[name]) for name in default)
    reasons = [g["frozen"] for g in result.report["groups"] if g.get("frozen")]
    assert any("'conv_4.weight' is also a graph input" in r for r in reasons), reasons


def shared_conv_weight() -> onnx.ModelProto:
    """stem Conv(3->8) -> Relu -> conv_c -> Relu -> conv_d -> Relu -> conv_e(8->16) -> Relu ->
    GAP -> Gemm(16->10), where conv_c and conv_d (8->8, each with its own bias) read one
    weight tensor: a module applied twice, as exporters write it."""
    b = _Builder(0)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="stem")])
    shared = b.weight("shared.weight", (8, 8, 3, 3), 72)
    for name in ("conv_c", "conv_d"):
        h = b.node("Relu", [b.node("Conv", [h, shared, b.vector(f"{name}.bias", 8)], name=name,
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv_e")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def test_shared_weight_is_counted_once() -> None:
    """A weight read by two Convs stays one tensor and counts once: keep-all adds nothing, the
    report counts the input's parameters, and the channels it touches are frozen: conv_d
    applies it to conv_c's outputs (one module applied to its own outputs)."""
    model = shared_conv_weight()
    params = count_params(model)
    assert count_params(prune(model, keep_ratio=1.0).model) == params
    result = prune(model, keep_ratio=0.5)
    assert result.report["params"]["before"] == params
    assert result.report["params"]["after"] == count_params(result.model) < params
    readers = [n.name for n in result.model.graph.node if "shared.weight" in n.input]
    assert readers == ["conv_c", "conv_d"]
    assert [i.name for i in result.model.graph.initializer].count("shared.weight") == 1
    assert any("'shared.weight' is applied to its own outputs" in (g.get("frozen") or "")
               for g in result.report["groups"])


def shared_bn_constants() -> onnx.ModelProto:
    """conv_a -> BN -> Relu -> conv_b -> BN -> Relu -> GAP -> Gemm, both BatchNormalizations
    reading one scale, shift, mean and variance (an exporter's de-duplication of equal
    constants): the pruner copies them per reader, and must not keep copies it left equal."""
    b = _Builder(0)
    params = [b.vector(f"bn.{p}", 8, *bounds) for p, bounds in
              (("scale", (0.5, 1.5)), ("shift", (-0.1, 0.1)), ("mean", (-0.1, 0.1)), ("var", (0.5, 1.5)))]
    h = INPUT
    for name, cin in (("conv_a", IN_CHANNELS), ("conv_b", 8)):
        h = b.node("Relu", [b.node("BatchNormalization", [b.conv(h, cin, 8, name=name), *params],
                                   name=f"{name}_bn", epsilon=1e-5)])
    return b.build(b.gemm(b.gap_flatten(h), 8, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_copies_of_shared_constants_left_equal_are_shared_again(keep_ratio: float) -> None:
    """De-duplicated BatchNorm constants come back shared where pruning left both readers'
    copies equal (keep-all: the input's very initializers), and as one copy per reader where
    it changed them."""
    model = shared_bn_constants()
    result = prune(model, keep_ratio=keep_ratio, method="random")
    pruned = result.model
    names = sorted(i.name for i in pruned.graph.initializer)
    if keep_ratio == 1.0:
        assert names == sorted(i.name for i in model.graph.initializer)
    else:
        kept = [g["kept_channels"] for g in result.report["groups"] if "kept_channels" in g][:2]
        assert kept[0] != kept[1]  # the premise: the two readers' copies were sliced differently
        assert sum(n.startswith("bn.") for n in names) == 8
    assert_structure(model, pruned)


def input_named_like_a_copy() -> onnx.ModelProto:
    """:func:`shared_bn_constants` with its BatchNorm scale named ``input`` and its graph input
    named ``input.1``, as older PyTorch exports name their inputs."""
    model = shared_bn_constants()
    rename = {INPUT: "input.1", "bn.scale": "input"}
    for vi in list(model.graph.input) + list(model.graph.initializer):
        vi.name = rename.get(vi.name, vi.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    onnx.checker.check_model(model, full_check=True)
    return model


def test_copy_of_a_shared_constant_avoids_graph_input_names() -> None:
    """A shared constant's per-reader copy never takes the name of a graph input."""
    model = input_named_like_a_copy()
    result = onnx_eprune.prune(model, {"input.1": CALIB}, device="cpu", keep_ratio=0.5, method="l1")
    assert signature(result.model) == signature(model)
    assert run(result.model, {"input.1": FRESH})[OUTPUT].shape == (len(FRESH), CLASSES)


def name_taken_in_a_branch() -> onnx.ModelProto:
    """The unfolded CNN (conv_5 has no bias, so a re-fit adds ``conv_5.weight.eprune_bias``)
    plus an If on the input's mean whose then-branch defines a tensor of that name; the
    If's output is a second graph output."""
    model = conv_bn_relu_pool_flatten_gemm(folded=False)
    taken = "conv_5.weight.eprune_bias"

    def branch(key: str, value: float, inner: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Constant", [], [inner], value=numpy_helper.from_array(
                                      np.array([value], np.float32))),
                                  helper.make_node("Identity", [inner], [f"{key}_out"])],
                                 key, [], [helper.make_tensor_value_info(f"{key}_out", TensorProto.FLOAT, [1])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    model.graph.node.extend([
        helper.make_node("ReduceMean", [INPUT], ["mean"], name="mean", keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["positive"], name="positive"),
        helper.make_node("If", ["positive"], ["flag"], name="flag", then_branch=branch("then", 1.0, taken),
                         else_branch=branch("else", 0.0, "else_value"))])
    model.graph.output.append(helper.make_tensor_value_info("flag", TensorProto.FLOAT, [1]))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_new_bias_name_avoids_names_of_sub_graphs() -> None:
    """A re-fit's new bias gets a name no sub-graph uses, so the model prunes and names stay unique."""
    model = name_taken_in_a_branch()
    pruned = prune(model, keep_ratio=0.5, method="l1").model
    assert_structure(model, pruned)


def test_helpers_see_the_defects_they_look_for() -> None:
    """The structure check flags a dangling initializer, a duplicate name and a changed signature."""
    original, pruned = pruned_builder("residual")
    for damage in ("dangling", "duplicate", "signature"):
        broken = onnx.ModelProto()
        broken.CopyFrom(pruned)
        if damage == "dangling":
            broken.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
        elif damage == "duplicate":
            taken = broken.graph.node[0].output[0]
            broken.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), taken))
        else:
            broken.graph.input[0].type.tensor_type.shape.dim[2].dim_value = HW + 1
        with pytest.raises(AssertionError):
            assert_structure(original, broken)
