"""Pruned models must work everywhere the original does ("never break a graph").

This file attacks the portability of what ``onnx_eprune.prune`` and ``onnx-eprune prune``
write, on small ``onnx.helper`` models (residual, concat, depthwise, grouped, Split, SE,
explicit Reshape, Resize decoder, Gemm/MatMul heads, random graphs of opsets 11-21, weights
stored as float16 behind a Cast) and on the reference LeNet-5, pruned at 0.3-0.7 in both
modes. For each pruned model:

* onnxruntime gives the same outputs at every graph optimization level (ORT_DISABLE_ALL,
  BASIC, EXTENDED, ALL), at batch sizes the calibration never used, and from the optimized
  model it saves (``optimized_model_filepath``) when that is loaded again;
* ``onnx.checker`` (full check) and strict shape inference (``strict_mode``, ``check_type``,
  ``data_prop``) pass, and every shape the file records (value_info left by the exporter,
  graph inputs that name initializers, graph outputs) is the one onnxruntime computes;
* no initializer is defined twice or read by nothing, no node output shadows one, and the
  opset imports, IR version and graph signature are the input's (nothing unused added);
* ``onnx.version_converter`` takes it to a neighbouring opset wherever it takes the original,
  and the converted model passes the checker and computes the same outputs;
* it survives an external-data save / load round trip bit for bit, and a model read from
  external data prunes to the same bytes as the inline one, into a self-contained file;
* the onnx reference evaluator (``onnx.reference.ReferenceEvaluator``) computes what
  onnxruntime computes, wherever it does so on the original.

The tests marked ``xfail(strict=True)`` are defects found this way; each docstring says
what should happen, what happens, and the likely cause.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference, version_converter
from onnx.reference import ReferenceEvaluator

import onnx_eprune
import models as M
import random_graphs
from models import CLASSES, IN_CHANNELS, INPUT, OUTPUT, _Builder, random_input, relative_error
from onnx_eprune.cli import main

CALIB = random_input(48, seed=1)
FRESH = random_input(5, seed=9)        # a batch size the calibration never used
LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
LENET = "/work/shared/reference/lenet5.onnx"
LENET_CALIB = "/work/shared/reference/calib28.npy"


# -- models ------------------------------------------------------------------------------------

def fp16_storage_cnn() -> onnx.ModelProto:
    """The folded CNN (Conv -> Relu -> MaxPool twice -> Flatten -> Gemm -> Relu -> Gemm) with
    every weight and bias stored as float16 and Cast to float32 where it is read: how
    exporters halve the file size of a float32 network."""
    model = M.conv_bn_relu_pool_flatten_gemm(True)
    graph = model.graph
    for init in list(graph.initializer):
        value = numpy_helper.to_array(init)
        if value.dtype != np.float32 or value.size <= 10:
            continue
        half = numpy_helper.from_array(value.astype(np.float16), f"{init.name}_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        graph.node.insert(0, helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                              name=f"cast_{init.name}"))
    onnx.checker.check_model(model, full_check=True)
    return model


def constant_prior_cnn(opset: int) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> GAP -> Flatten -> fc (16->10), plus a
    class prior computed from constants alone: BatchNormalization of a (1, 10) initializer,
    added to the logits (y = fc + BN(prior))."""
    b = _Builder(0)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    logits = b.gemm(b.gap_flatten(h), 16, CLASSES, name="fc")
    prior = b.const("prior", b.rng.normal(size=(1, CLASSES)).astype(np.float32))
    return b.build(b.node("Add", [logits, b.bn(prior, CLASSES, name="prior_bn")], name=OUTPUT), opset=opset)


def inits_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer also listed as a graph input, as PyTorch's
    ``keep_initializers_as_inputs=True`` exports (at IR >= 4)."""
    listed = {vi.name for vi in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.checker.check_model(model, full_check=True)
    return model


def _random(seed: int):
    return lambda: random_graphs.random_cnn(seed)


# name -> (builder, prune options): sparsity 0.3-0.7 and keep ratios, both modes
CASES = {
    "residual": (M.residual, {"sparsity": 0.5}),
    "concat": (M.concat_branches, {"sparsity": 0.4, "mode": "oneshot"}),
    "depthwise": (M.depthwise, {"keep_ratio": 0.5}),
    "grouped": (M.grouped, {"sparsity": 0.5, "mode": "oneshot"}),
    "gemm_matmul_head": (M.gemm_matmul, {"sparsity": 0.5}),
    "split": (M.split_channels, {"sparsity": 0.3, "mode": "oneshot"}),
    "explicit_reshape": (lambda: M.cnn_reshape(True), {"sparsity": 0.6}),
    "se_block": (M.se_block, {"keep_ratio": 0.4, "mode": "oneshot"}),
    "decoder_opset11": (M.decoder, {"sparsity": 0.5}),
    "fp16_storage": (fp16_storage_cnn, {"sparsity": 0.3}),
    "random3_opset18": (_random(3), {"sparsity": 0.7}),
    "random7_opset21": (_random(7), {"sparsity": 0.7, "mode": "oneshot"}),
    "random17_opset18_constants": (_random(17), {"sparsity": 0.7, "mode": "oneshot"}),
    "random24_opset14": (_random(24), {"sparsity": 0.5}),
    "random34_opset11": (_random(34), {"sparsity": 0.3}),
}


@functools.cache
def case(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """(original, pruned model, report) of CASES[name], pruned once per session."""
    build, options = CASES[name]
    original = build()
    result = onnx_eprune.prune(original, CALIB, device="cpu", **options)
    return original, result.model, result.report


@functools.cache
def lenet_case(options_key: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    options = json.loads(options_key)
    original = onnx.load(LENET)
    return original, onnx_eprune.prune(original, np.load(LENET_CALIB)[:256], device="cpu", **options).model


LENET_OPTIONS = [json.dumps({"sparsity": 0.5}), json.dumps({"flops_reduction": 0.3, "mode": "oneshot"})]


def lenet_fresh() -> np.ndarray:
    return np.load(LENET_CALIB)[1000:1005]


# -- helpers -------------------------------------------------------------------------------------

def session(model: onnx.ModelProto | str, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            save_to: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if save_to:
        options.optimized_model_filepath = save_to
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_outputs(model: onnx.ModelProto | str, x: np.ndarray, **kwargs) -> list[np.ndarray]:
    sess = session(model, **kwargs)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def assert_close(got: list[np.ndarray], want: list[np.ndarray], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    return tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim) \
        if t.HasField("shape") else None


def runtime_values(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The values of tensors ``names`` of ``model`` on ``x`` in onnxruntime."""
    probe = copy(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    sess = session(probe)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    return dict(zip([o.name for o in sess.get_outputs()], got))


def assert_recorded_shapes_are_true(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Every shape the file states (value_info, graph outputs) is the runtime's: fixed dims
    equal, each symbol one size."""
    infos = [vi for vi in list(model.graph.value_info) + list(model.graph.output) if vi.type.HasField("tensor_type")]
    values = runtime_values(model, x, [vi.name for vi in infos])
    symbols: dict[str, int] = {}
    for vi in infos:
        value, stated = values[vi.name], dims(vi)
        assert vi.type.tensor_type.elem_type == helper.np_dtype_to_tensor_dtype(value.dtype), vi.name
        if stated is None:
            continue
        assert len(stated) == value.ndim, (vi.name, stated, value.shape)
        for d, size in zip(stated, value.shape):
            if isinstance(d, str):
                assert symbols.setdefault(d, size) == size, (vi.name, d, value.shape)
            elif d is not None:
                assert d == size, (vi.name, stated, value.shape)


# -- onnxruntime at every optimization level -------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_every_optimization_level_computes_the_same_outputs(name):
    """ORT_BASIC / EXTENDED / ALL fuse and re-layout the pruned graph (Conv+Add, Gemm
    fusions, NCHWc blocks on odd channel counts); they must agree with the unoptimized run,
    at a batch of 5 and of 1."""
    _, pruned, _ = case(name)
    for x in (FRESH, FRESH[:1]):
        want = ort_outputs(pruned, x)
        assert all(np.isfinite(w).all() for w in want)
        for level in list(LEVELS.values())[1:]:
            assert_close(ort_outputs(pruned, x, level=level), want)


@pytest.mark.parametrize("level", ["extended", "all"])
@pytest.mark.parametrize("name", ["residual", "grouped", "decoder_opset11", "random7_opset21"])
def test_saved_optimized_model_loads_and_matches(name, level, tmp_path):
    """onnxruntime's optimized model (``optimized_model_filepath``), saved from the pruned
    model and loaded in a fresh session, computes the pruned model's outputs."""
    _, pruned, _ = case(name)
    path = str(tmp_path / "optimized.onnx")
    session(pruned, level=LEVELS[level], save_to=path)
    assert os.path.getsize(path) > 0
    assert_close(ort_outputs(path, FRESH), ort_outputs(pruned, FRESH))


# -- checker, strict shape inference and the shapes the file records -------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_checker_and_strict_shape_inference(name):
    """The full checker and strict, type-checking shape inference with data propagation
    pass; every shape inference derives is the runtime's."""
    _, pruned, _ = case(name)
    onnx.checker.check_model(pruned, full_check=True)
    inferred = shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True, data_prop=True)
    constants = {o for n in pruned.graph.node if n.op_type == "Constant" for o in n.output}
    del inferred.graph.value_info[:]
    inferred.graph.value_info.extend(
        vi for vi in shape_inference.infer_shapes(pruned, data_prop=True).graph.value_info if vi.name not in constants)
    assert_recorded_shapes_are_true(inferred, FRESH)


@pytest.mark.parametrize("name", ["residual", "concat", "depthwise", "grouped", "gemm_matmul_head", "split",
                                  "explicit_reshape", "se_block", "decoder_opset11"])
def test_exporter_value_info_is_not_left_stale(name):
    """An exporter's model records every intermediate shape in value_info (here: from
    onnx's shape inference). What the pruned model still records must be true of the
    pruned channels, and strict shape inference must not trip over it."""
    build, options = CASES[name]
    original = shape_inference.infer_shapes(build(), data_prop=True)
    assert len(original.graph.value_info) > 4  # the exporter's shapes are there to go stale
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", **options).model
    shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True, data_prop=True)
    assert_recorded_shapes_are_true(pruned, FRESH)


@pytest.mark.parametrize("name", ["residual", "split", "explicit_reshape", "decoder_opset11"])
def test_initializers_listed_as_inputs_state_their_new_shapes(name):
    """A ``keep_initializers_as_inputs`` export lists each weight as a graph input with its
    shape; after pruning each such input states the shape of the initializer it names (a
    runtime checks a fed override against it), and every initializer stays listed."""
    build, options = CASES[name]
    original = inits_as_inputs(build())
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", **options).model
    onnx.checker.check_model(pruned, full_check=True)
    inits = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    listed = {vi.name: dims(vi) for vi in pruned.graph.input if vi.name in inits}
    assert listed == inits
    assert_close(ort_outputs(pruned, FRESH, level=LEVELS["all"]), ort_outputs(pruned, FRESH))


# -- initializers, names, opsets ------------------------------------------------------------------

def _reads(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _reads(sub)
    return names


@pytest.mark.parametrize("name", list(CASES))
def test_no_duplicate_shadowed_or_dangling_initializers(name):
    """Each initializer name once, none also produced by a node, and each one read by a node
    (or named as a graph input or output)."""
    _, pruned, _ = case(name)
    inits = [t.name for t in pruned.graph.initializer]
    assert len(inits) == len(set(inits)), sorted(n for n in inits if inits.count(n) > 1)
    outputs = [o for n in pruned.graph.node for o in n.output if o]
    assert len(outputs) == len(set(outputs))
    assert not set(inits) & set(outputs)
    used = _reads(pruned.graph) | {o.name for o in pruned.graph.output} | {i.name for i in pruned.graph.input}
    assert [n for n in inits if n not in used] == []


@pytest.mark.parametrize("name", list(CASES))
def test_opset_imports_ir_version_and_signature_are_the_inputs(name):
    """The pruned model needs no newer runtime than the original: same IR version, the same
    opset imports (none added, none dropped, versions unchanged), every node's domain
    imported, the same graph inputs and outputs (names, types, dims with their symbols)."""
    original, pruned, _ = case(name)
    assert pruned.ir_version == original.ir_version
    assert [(o.domain, o.version) for o in pruned.opset_import] == \
        [(o.domain, o.version) for o in original.opset_import]
    imported = {o.domain for o in pruned.opset_import} | {"ai.onnx"}
    assert {n.domain or "" for n in pruned.graph.node} <= imported | {""}
    inits = {t.name for t in original.graph.initializer}

    def signature(m):
        return ([(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in m.graph.input if vi.name not in inits],
                [(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in m.graph.output])
    assert signature(pruned) == signature(original)


def test_unused_opset_import_is_kept_and_nothing_is_added():
    """An exporter's unused import (ai.onnx.ml) is the input's business: it stays, and the
    rewrite adds no import of its own."""
    original = M.residual()
    original.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", sparsity=0.5).model
    assert [(o.domain, o.version) for o in pruned.opset_import] == [("", 17), ("ai.onnx.ml", 3)]
    onnx.checker.check_model(pruned, full_check=True)
    assert ort_outputs(pruned, FRESH)[0].shape == (5, CLASSES)


# -- version converter ----------------------------------------------------------------------------

def _converts(model: onnx.ModelProto, target: int) -> onnx.ModelProto | None:
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted, full_check=True)
        ort_outputs(converted, FRESH)
        return converted
    except Exception:
        return None


@pytest.mark.parametrize("name", ["residual", "concat", "grouped", "split", "explicit_reshape", "decoder_opset11",
                                  "random24_opset14", "random34_opset11", "gemm_matmul_head"])
def test_version_converter_takes_it_where_it_takes_the_original(name):
    """onnx.version_converter to the opsets just below and above: wherever the original
    converts into a valid, running model, so does the pruned one, computing the same."""
    original, pruned, _ = case(name)
    version = original.opset_import[0].version
    tried = 0
    for target in (version - 1, version + 1):
        if _converts(original, target) is None:
            continue
        tried += 1
        converted = version_converter.convert_version(pruned, target)
        onnx.checker.check_model(converted, full_check=True)
        shape_inference.infer_shapes(converted, check_type=True, strict_mode=True, data_prop=True)
        assert_close(ort_outputs(converted, FRESH), ort_outputs(pruned, FRESH))
    assert tried, "the original converts to neither neighbour: the case tests nothing"


# -- external data -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["residual", "split", "decoder_opset11", "random17_opset18_constants"])
def test_external_data_round_trip_is_exact(name, tmp_path):
    """Saved with every weight in one external data file and loaded again, the pruned
    model has the same graph and tensors, passes the checker and computes bit-identical
    outputs."""
    _, pruned, _ = case(name)
    path = tmp_path / "ext.onnx"
    onnx.save_model(copy(pruned), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=64)  # small shape constants stay inline,
    # as onnx.save_model's default keeps them: onnx and onnxruntime read no shape from external data
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert list(loaded.graph.node) == list(pruned.graph.node)
    assert [t.name for t in loaded.graph.initializer] == [t.name for t in pruned.graph.initializer]
    for a, b in zip(loaded.graph.initializer, pruned.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    for got, want in zip(ort_outputs(str(path), FRESH), ort_outputs(pruned, FRESH)):
        np.testing.assert_array_equal(got, want)


def test_external_data_input_prunes_to_the_inline_bytes_into_a_standalone_file(tmp_path, capsys):
    """README: outputs are byte-identical for inline or external weights. The CLI's output
    of an input read from external data needs no data file: moved alone to another folder
    it still loads and runs, and it matches the in-memory result."""
    original = M.residual()
    src = tmp_path / "in"
    src.mkdir()
    onnx.save_model(copy(original), str(src / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    np.save(tmp_path / "calib.npy", CALIB)
    out = tmp_path / "out.onnx"
    status = main(["prune", str(src / "m.onnx"), "-o", str(out), "--calib", str(tmp_path / "calib.npy"),
                   "--sparsity", "0.5", "--device", "cpu", "-q"])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy", "in", "out.onnx"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(out), str(moved / "pruned.onnx"))
    loaded = onnx.load(str(moved / "pruned.onnx"))
    inline = onnx_eprune.prune(original, CALIB, device="cpu", sparsity=0.5).model
    assert loaded.SerializeToString() == inline.SerializeToString()
    for got, want in zip(ort_outputs(str(moved / "pruned.onnx"), FRESH), ort_outputs(inline, FRESH)):
        np.testing.assert_array_equal(got, want)


# -- the onnx reference evaluator ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["residual", "concat", "depthwise", "grouped", "gemm_matmul_head", "split",
                                  "explicit_reshape", "se_block", "fp16_storage", "random3_opset18",
                                  "random7_opset21", "random24_opset14"])
def test_reference_evaluator_agrees_with_onnxruntime(name):
    """onnx's reference implementation runs the pruned graph to onnxruntime's outputs
    (checked first on the original: where onnx's reference itself is off, the case is not
    listed)."""
    original, pruned, _ = case(name)
    for model in (original, pruned):
        want = ort_outputs(model, FRESH)
        got = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: FRESH})
        assert_close([np.asarray(g) for g in got], want, rtol=1e-3, atol=1e-4)


# -- LeNet-5 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options_key", LENET_OPTIONS)
def test_lenet5_everywhere(options_key, tmp_path):
    """The reference LeNet-5 pruned: full checker and strict inference, the same outputs at
    every optimization level and from a saved optimized model, in the reference
    evaluator, after an external-data round trip and after conversion to opsets 16 and 18;
    signature, IR and opsets as the original's."""
    original, pruned = lenet_case(options_key)
    x = lenet_fresh()
    onnx.checker.check_model(pruned, full_check=True)
    shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True, data_prop=True)
    assert (pruned.ir_version, list(pruned.opset_import)) == (original.ir_version, list(original.opset_import))
    assert [dims(vi) for vi in pruned.graph.input] == [dims(vi) for vi in original.graph.input]
    want = ort_outputs(pruned, x)
    for level in list(LEVELS.values())[1:]:
        assert_close(ort_outputs(pruned, x, level=level), want)
    session(pruned, level=LEVELS["all"], save_to=str(tmp_path / "opt.onnx"))
    assert_close(ort_outputs(str(tmp_path / "opt.onnx"), x), want)
    assert_close([np.asarray(v) for v in ReferenceEvaluator(pruned).run(None, {"input": x})], want, 1e-3, 1e-4)
    onnx.save_model(copy(pruned), str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.data", size_threshold=0)
    for got, w in zip(ort_outputs(str(tmp_path / "ext.onnx"), x), want):
        np.testing.assert_array_equal(got, w)
    for target in (16, 18):
        converted = version_converter.convert_version(pruned, target)
        onnx.checker.check_model(converted, full_check=True)
        assert_close(ort_outputs(converted, x), want)


def test_lenet5_from_the_cli_runs_from_its_path(tmp_path, capsys):
    """``onnx-eprune prune`` on LeNet-5: the written file passes the checker by path and
    runs at every optimization level, at batch sizes 1 and 5."""
    np.save(tmp_path / "calib.npy", np.load(LENET_CALIB)[:200])
    out = tmp_path / "lenet.pruned.onnx"
    status = main(["prune", LENET, "-o", str(out), "--calib", str(tmp_path / "calib.npy"),
                   "--sparsity", "0.5", "--mode", "oneshot", "--device", "cpu", "-q"])
    assert status == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)
    x = lenet_fresh()
    for batch in (x, x[:1]):
        want = ort_outputs(str(out), batch)
        assert want[0].shape == (len(batch), 10)
        for level in list(LEVELS.values())[1:]:
            assert_close(ort_outputs(str(out), batch, level=level), want)


# -- defects ------------------------------------------------------------------------------------

def test_float16_stored_weights_stay_float16_and_the_file_shrinks():
    """README: a model that is "smaller ... in any runtime": a network whose weights are
    stored as float16 and Cast to float32 where read keeps them float16, so removing 30% of
    the parameters makes the file smaller, and ``keep_ratio=1.0`` leaves its size alone
    (once every Cast was folded into a float32 initializer for good: 21.3 kB -> 29.0 kB at
    sparsity 0.3, twice the size at keep_ratio 1.0)."""
    original = fp16_storage_cnn()
    size = len(original.SerializeToString())
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", sparsity=0.3).model
    assert len(pruned.SerializeToString()) < size
    same = onnx_eprune.prune(original, CALIB, device="cpu", keep_ratio=1.0).model
    assert len(same.SerializeToString()) <= 1.05 * size
    assert any(t.data_type == TensorProto.FLOAT16 for t in pruned.graph.initializer)


def test_float16_stored_weights_prune_into_a_model_that_computes_like_the_original():
    """The same float16-stored network at keep_ratio 1.0 (one-shot: no re-fit of whole
    layers) computes what the original computes, in onnxruntime at every level."""
    original = fp16_storage_cnn()
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", keep_ratio=1.0, mode="oneshot").model
    want = ort_outputs(original, FRESH)
    for level in LEVELS.values():
        assert_close(ort_outputs(pruned, FRESH, level=level), want)


@pytest.mark.parametrize("opset", [
    13, 17,
])
def test_constant_subgraph_keeps_its_value(opset):
    """README: ``R = 1.0`` gives back the same function: the pruned model at keep_ratio 1.0
    computes the original's outputs in onnxruntime, whatever the constant computations in
    the graph. At opset 13 normalisation once folded ``BatchNormalization(prior, ...)``, whose
    inputs are all initializers, with onnx's reference evaluator, which computes opsets 9-13
    otherwise than onnxruntime and the spec (relative error 0.05); model_io folds it itself."""
    original = constant_prior_cnn(opset)
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", keep_ratio=1.0, mode="oneshot").model
    assert relative_error(ort_outputs(original, FRESH)[0], ort_outputs(pruned, FRESH)[0]) < 1e-5


def test_report_fidelity_is_measured_against_the_input_as_given():
    """Reports tell the truth: ``fidelity_on_calibration`` agrees with onnxruntime's outputs
    of the model the user passed in and of the written one. The run measures against the
    normalised model, so this holds as long as normalisation is exact: on the opset-13
    constant BatchNormalization above the report once said 0.0 while the written model
    differed from the input by 5%."""
    original = constant_prior_cnn(13)
    result = onnx_eprune.prune(original, CALIB, device="cpu", keep_ratio=1.0, mode="oneshot")
    reported = result.report["fidelity_on_calibration"]["outputs"][OUTPUT]["relative_error"]
    n = result.report["fidelity_on_calibration"]["samples"]
    actual = relative_error(ort_outputs(original, CALIB[:n])[0], ort_outputs(result.model, CALIB[:n])[0])
    assert reported == pytest.approx(actual, rel=0.1, abs=1e-6)


def conv_without_bias() -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16, no bias, no BatchNormalization) -> Relu -> GAP ->
    Flatten -> Gemm (16->10): the re-fit of conv2 gives it a new bias initializer."""
    b = _Builder(0)
    h = b.node("Relu", [b.conv(INPUT, IN_CHANNELS, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, bias=False, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


@pytest.mark.parametrize("build", [conv_without_bias, M.gemm_matmul], ids=["conv_without_bias", "matmul_head"])
def test_new_bias_of_an_initializers_as_inputs_model_is_listed_and_it_prunes_again(build):
    """A PyTorch export with ``keep_initializers_as_inputs=True`` (every initializer listed
    as a graph input) keeps the convention: a re-fit's new bias is listed too, so the pruned
    model prunes again (once the unlisted bias made the second run take every listed weight
    for an overridable default: "no prunable channel group")."""
    original = inits_as_inputs(build())
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", sparsity=0.4).model
    listed = {vi.name for vi in pruned.graph.input}
    assert {t.name for t in pruned.graph.initializer} <= listed
    again = onnx_eprune.prune(pruned, CALIB, device="cpu", sparsity=0.3)
    assert again.report["params"]["after"] < again.report["params"]["before"]


def test_initializers_as_inputs_with_a_cast_weight_prune():
    """A ``keep_initializers_as_inputs=True`` export whose two conv weights are stored as
    float16 behind a Cast prunes like the same export with plain weights, into a model whose
    initializers are all still listed as inputs (once the folded weights went unlisted, and
    every listed bias was taken for an overridable input: "no prunable channel group")."""
    original = M.residual()
    graph = original.graph
    for name in ("conv_a.weight", "conv_b.weight"):
        init = next(t for t in graph.initializer if t.name == name)
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        graph.node.insert(0, helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
    original = inits_as_inputs(original)
    pruned = onnx_eprune.prune(original, CALIB, device="cpu", sparsity=0.3).model
    onnx.checker.check_model(pruned, full_check=True)
    listed = {vi.name for vi in pruned.graph.input}
    assert {t.name for t in pruned.graph.initializer} <= listed


def test_helpers_see_the_defects_they_look_for():
    """The checks above can fail: a stale value_info entry, a stale graph output shape and
    a dangling initializer, planted in a pruned model, are each caught."""
    _, pruned, _ = case("residual")
    conv_a = next(n for n in pruned.graph.node if n.name == "conv_a")
    channels = next(t for t in pruned.graph.initializer if t.name == "conv_a.weight").dims[0]
    stale = copy(pruned)
    stale.graph.value_info.append(helper.make_tensor_value_info(conv_a.output[0], TensorProto.FLOAT,
                                                                ["N", channels + 1, 16, 16]))
    with pytest.raises(AssertionError):
        assert_recorded_shapes_are_true(stale, FRESH)
    wrong_output = copy(pruned)
    wrong_output.graph.output[0].type.tensor_type.shape.dim[1].dim_value = CLASSES + 1
    with pytest.raises(AssertionError):
        assert_recorded_shapes_are_true(wrong_output, FRESH)
    dangling = copy(pruned)
    dangling.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "orphan"))
    used = _reads(dangling.graph) | {o.name for o in dangling.graph.output} | {i.name for i in dangling.graph.input}
    assert [t.name for t in dangling.graph.initializer if t.name not in used] == ["orphan"]
    assert_recorded_shapes_are_true(pruned, FRESH)  # and the clean model passes
