"""The numbers the tool reports, checked against what this file computes itself.

Every figure that ``prune`` (its ``PruneResult.report``, ``--report`` / ``--report-dir``
files, the printed summary, the pruned model's metadata), ``inspect``, ``evaluate`` and
``sweep`` give is recomputed here from the ONNX files and by running them in onnxruntime,
without the package's own counting or measuring code:

* parameters: the elements of every constant weight and bias of the Conv, ConvTranspose,
  Gemm and MatMul nodes (weights reached through Identity / Cast / Constant nodes too), as
  README and BENCHMARKS.md define them;
* MACs per sample at the calibration input shape, from the tensor shapes of one real run
  (the model run with every tensor as an output): a Conv does ``weight.size`` MACs per
  output position, a ConvTranspose ``weight.size`` per input position (each input pixel
  meets each weight element once), a Gemm / MatMul ``weight.size`` per output row (a 3-D
  MatMul ``[N, T, D] x [D, M]``: ``T * D * M`` per sample); grouped and depthwise
  convolutions carry their grouping in the weight's shape;
* removed fractions as ``round(1 - after / before, 6)`` of those counts, and the
  percentages printed as their rounding;
* per group the channels before / after and the kept channel indices against the weight
  shapes and rows of the written model (frozen and ``--exclude``d groups untouched);
* fidelity (relative L2 error, mean cosine, top-1 agreement) and accuracy by running the
  original and the pruned model on the same samples;
* sweep points against separate prunes at the same targets (same figures, same bytes);
* ``report.md`` against ``report.json`` and both against the ``PruneResult``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from random_graphs import random_cnn
from test_multi_io_models import two_heads, two_images

import onnx_eprune
from models import (ALL_BUILDERS, CLASSES, INPUT, OUTPUT, _Builder, conv_bn_relu_pool_flatten_gemm, gemm_matmul,
                    one_image_detector, random_input, residual)
from onnx_eprune.cli import main

CPU = ["CPUExecutionProvider"]
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FOLDED = ("Identity", "Cast")  # ops that pass a constant weight on unchanged (up to its dtype)
Feeds = dict[str, np.ndarray]


# -- extra models --------------------------------------------------------------------------------

def matmul_tokens() -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> Reshape [N, 16, 256] -> Transpose
    [N, 256, 16] -> MatMul by [16, 12] (a 3-D MatMul: 256 rows per sample) -> Relu ->
    ReduceMean over the rows -> Gemm(12 -> 10)."""
    b = _Builder(3)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    h = b.node("Reshape", [h, b.const("tok_shape", np.array([0, 16, -1], np.int64))], name="tokens")
    h = b.node("Transpose", [h], name="nlc", perm=[0, 2, 1])
    h = b.node("Relu", [b.node("MatMul", [h, b.weight("mix.weight", (16, 12), 16)], name="mix")])
    h = b.node("ReduceMean", [h], name="pool", axes=[1], keepdims=0)
    return b.build(b.gemm(h, 12, CLASSES, name=OUTPUT))


def pixel_matmul() -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> Transpose to NHWC -> Reshape [-1, 8] (one row per pixel:
    256 rows per sample) -> MatMul by [8, 12] (a 1x1 convolution as TensorFlow-style
    exports write it) -> Reshape [-1, 16, 16, 12] -> Transpose to NCHW -> Relu -> conv2
    (12->16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10)."""
    b = _Builder(4)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    h = b.node("Transpose", [h], name="to_nhwc", perm=[0, 2, 3, 1])
    h = b.node("Reshape", [h, b.const("rows", np.array([-1, 8], np.int64))], name="pixels")
    h = b.node("MatMul", [h, b.weight("pix.weight", (8, 12), 8)], name="pix")
    h = b.node("Reshape", [h, b.const("map", np.array([-1, 16, 16, 12], np.int64))], name="unpixels")
    h = b.node("Relu", [b.node("Transpose", [h], name="to_nchw", perm=[0, 3, 1, 2])])
    h = b.node("Relu", [b.conv(h, 12, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def odd_weights() -> onnx.ModelProto:
    """conv1 (3->8) reads its weight through an Identity (as exporters de-duplicate weights)
    -> Relu -> conv2 (8->16) -> Relu -> GAP -> Flatten -> fc1 Gemm(16 -> 24) with a (1, 24)
    bias -> Relu -> Gemm(24 -> 10) with a (1,) bias."""
    b = _Builder(5)
    w = b.node("Identity", [b.weight("conv1.weight", (8, 3, 3, 3), 27)], name="weight_alias")
    h = b.node("Relu", [b.node("Conv", [INPUT, w, b.vector("conv1.bias", 8)], name="conv1", kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1])])
    h = b.gap_flatten(b.node("Relu", [b.conv(h, 8, 16, name="conv2")]))
    row = b.const("fc1.bias", b.rng.uniform(-0.1, 0.1, (1, 24)).astype(np.float32))
    h = b.node("Relu", [b.node("Gemm", [h, b.weight("fc1.weight", (24, 16), 16), row], name="fc1", transB=1)])
    y = b.node("Gemm", [h, b.weight("y.weight", (10, 24), 24), b.const("y.bias", np.array([0.5], np.float32))],
               name=OUTPUT, transB=1)
    return b.build(y)


def shared_weight() -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv_a and then conv_b applying one shared (8, 8, 3, 3) weight
    (a module applied twice), each -> Relu -> conv2 (8->16) -> Relu -> GAP -> Gemm(16 -> 10)."""
    b = _Builder(7)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    w = b.weight("shared.weight", (8, 8, 3, 3), 72)
    for name in ("conv_a", "conv_b"):
        h = b.node("Relu", [b.node("Conv", [h, w], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    h = b.node("Relu", [b.conv(h, 8, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def left_matmul() -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> Reshape [N, 8, 256] -> MatMul of a constant (12, 8) by it
    (a 1x1 channel mix written ``W @ x``: [N, 12, 256]) -> Reshape [N, 12, 16, 16] -> Relu
    -> conv2 (12->16) -> Relu -> GAP -> Flatten -> Gemm(16 -> 10)."""
    b = _Builder(6)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    h = b.node("Reshape", [h, b.const("flat", np.array([0, 8, -1], np.int64))], name="flat_hw")
    h = b.node("MatMul", [b.weight("mix.weight", (12, 8), 8), h], name="mix")
    h = b.node("Reshape", [h, b.const("map", np.array([0, 12, 16, 16], np.int64))], name="unflat")
    h = b.node("Relu", [b.conv(b.node("Relu", [h]), 12, 16, name="conv2")])
    return b.build(b.gemm(b.gap_flatten(h), 16, CLASSES, name=OUTPUT))


def dynamic_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input's height and width made dynamic."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    dims = copy.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return copy


def fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` exported for a fixed batch of ``batch`` (input and output)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in [*copy.graph.input, *copy.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return copy


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    **ALL_BUILDERS, "matmul_tokens": matmul_tokens, "odd_weights": odd_weights, "shared_weight": shared_weight,
    "two_images": lambda: two_images("concat"), "two_heads": two_heads,
}


# -- independent counts ----------------------------------------------------------------------------

def label(node: onnx.NodeProto, index: int) -> str:
    """How the reports name a node (README: its name, an unnamed node ``OpType#index``)."""
    return node.name or f"{node.op_type}#{index}"


def nodes_by_label(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {label(n, i): n for i, n in enumerate(model.graph.node)}


def attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, Constant node values and what Identity / Cast pass on of them."""
    return {name: value for name, (value, _) in _constant_sources(model).items()}


def _constant_sources(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, str]]:
    """Constant tensors by name: (value, the initializer or Constant output it comes from)."""
    values = {i.name: (numpy_helper.to_array(i), i.name) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = (numpy_helper.to_array(a.t), node.output[0])
        elif node.op_type in FOLDED and node.input and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def run_tensors(model: onnx.ModelProto, feeds: Feeds, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The graph outputs of one onnxruntime run on ``feeds``, or the tensors ``names``."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    if names is not None:
        del copy.graph.output[:]
        copy.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    session = ort.InferenceSession(copy.SerializeToString(), providers=CPU)
    wanted = [o.name for o in session.get_outputs()]
    return dict(zip(wanted, session.run(wanted, feeds)))


def tensor_shapes(model: onnx.ModelProto, feeds: Feeds) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in one real run on ``feeds``."""
    names = list(dict.fromkeys(o for n in model.graph.node for o in n.output if o))
    shapes = {k: v.shape for k, v in run_tensors(model, feeds, names).items()}
    return {**{k: v.shape for k, v in feeds.items()}, **shapes}


def layer_weights(node: onnx.NodeProto, values: dict) -> tuple[str, str | None] | None:
    """The constant weight (and bias) a weighted layer applies: input B (Conv, ConvTranspose,
    Gemm, MatMul), or for a MatMul of a constant by an activation its constant A."""
    if node.op_type not in WEIGHTED or len(node.input) < 2:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in values else None
    if node.input[1] in values:
        return node.input[1], bias
    if node.op_type == "MatMul" and node.input[0] in values and values[node.input[0]].ndim == 2:
        return node.input[0], None
    return None


def layer_costs(model: onnx.ModelProto, feeds: Feeds, samples: int = 1) -> dict[str, tuple[int, int]]:
    """Per weighted layer (by report label): (parameters, MACs per sample), from a run on
    ``feeds`` that holds ``samples`` samples. A weight (or bias) that several layers share
    counts once, with the first of them, as the file holds it once."""
    sources, shapes = _constant_sources(model), tensor_shapes(model, feeds)
    values = {name: value for name, (value, _) in sources.items()}
    counted: set[str] = set()
    costs = {}
    for index, node in enumerate(model.graph.node):
        weights = layer_weights(node, values)
        if weights is None:
            continue
        params = 0
        for name in weights:
            if name is not None and sources[name][1] not in counted:
                counted.add(sources[name][1])
                params += values[name].size
        w, out = values[weights[0]], shapes[node.output[0]]
        if node.op_type == "Conv":          # every output position of every sample
            positions = out[0] * math.prod(out[2:])
        elif node.op_type == "ConvTranspose":  # every input position meets every weight element
            positions = math.prod(shapes[node.input[0]][:1] + shapes[node.input[0]][2:])
        elif weights[0] == node.input[1]:    # Gemm / MatMul by a constant B: every output row
            positions = math.prod(out[:-1])
        else:                                # a constant A (M, D) times activations (..., D, T)
            positions = math.prod(out) // out[-2]
        total = w.size * positions
        assert total % samples == 0
        costs[label(node, index)] = (int(params), int(total // samples))
    return costs


def totals(model: onnx.ModelProto, feeds: Feeds, samples: int = 1) -> tuple[int, int]:
    """(parameters, MACs per sample) of the weighted layers."""
    costs = layer_costs(model, feeds, samples).values()
    return sum(p for p, _ in costs), sum(m for _, m in costs)


def removed(before: int, after: int) -> float:
    return round(1.0 - after / before, 6)


def first_sample(feeds: Feeds) -> Feeds:
    return {k: v[:1] for k, v in feeds.items()}


def as_feeds(x: np.ndarray | Feeds) -> Feeds:
    return dict(x) if isinstance(x, dict) else {INPUT: x}


def check_counts(report: dict, original: onnx.ModelProto, pruned: onnx.ModelProto, probe: Feeds,
                 samples: int = 1) -> None:
    """The report's parameters and MACs, before and after, and their removed fractions, are
    those of the two models; so is the provenance the pruned model carries."""
    pb, mb = totals(original, probe, samples)
    pa, ma = totals(pruned, probe, samples)
    assert report["params"] == {"before": pb, "after": pa, "removed_fraction": removed(pb, pa)}
    assert report["macs"] == {"before": mb, "after": ma, "removed_fraction": removed(mb, ma)}
    runs = json.loads({p.key: p.value for p in pruned.metadata_props}["onnx_eprune"])
    assert runs[-1]["params"] == [pb, pa] and runs[-1]["macs"] == [mb, ma]


# -- independent fidelity --------------------------------------------------------------------------

def fidelity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Relative L2 error, mean per-sample cosine and (for (N, classes) outputs) top-1 agreement."""
    fa, fb = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    result = {"relative_error": float(np.linalg.norm(fa - fb) / np.linalg.norm(fa)),
              "cosine": float(np.mean(np.sum(fa * fb, 1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))))}
    if a.ndim == 2 and a.shape[1] > 1:
        result["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
    return result


def outputs_over(model: onnx.ModelProto, feeds: Feeds, names: list[str], batch: int | None = None,
                 unbatched: bool = False) -> dict[str, np.ndarray]:
    """The tensors ``names`` over all samples of ``feeds``: in one run, in runs of a fixed
    ``batch`` (the last one padded with copies of the last sample), or one image at a time
    (``unbatched``: inputs without a sample axis)."""
    n = len(next(iter(feeds.values())))
    if unbatched:
        parts = [run_tensors(model, {k: v[i] for k, v in feeds.items()}, names) for i in range(n)]
        return {name: np.stack([p[name] for p in parts]) for name in names}
    step = batch or n
    padded = {k: np.concatenate([v, np.repeat(v[-1:], -n % step, axis=0)]) for k, v in feeds.items()}
    parts = [run_tensors(model, {k: v[i:i + step] for k, v in padded.items()}, names) for i in range(0, n, step)]
    return {name: np.concatenate([p[name] for p in parts])[:n] for name in names}


def assert_fidelity(reported: dict, computed: dict) -> None:
    """Every figure the tool reported for an output equals the computed one (float tolerance)."""
    for key, value in reported.items():
        assert value == pytest.approx(computed[key], rel=1e-5, abs=1e-7), key
    assert ("top1_agreement" in reported) == ("top1_agreement" in computed)


def prune(model: onnx.ModelProto | str, calib, **kw) -> onnx_eprune.PruneResult:
    kw.setdefault("device", "cpu")
    kw.setdefault("method", "l1")
    return onnx_eprune.prune(model, calib, **kw)


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


def model_calib(name: str, calib: np.ndarray) -> Feeds:
    """Calibration feeds for ``MODELS[name]``."""
    if name == "two_images":
        return {INPUT: calib, "x2": calib[:, :1] * 0.5 + 0.1}
    return {INPUT: calib}


# -- parameters and MACs ---------------------------------------------------------------------------

CONFIGS = {
    "sequential-sparsity": dict(sparsity=0.4),
    "oneshot-flops-entropic": dict(flops_reduction=0.3, mode="oneshot", method="entropic"),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_prune_counts_are_those_of_the_files(name: str, config: str, calib: np.ndarray) -> None:
    """params / MACs before and after (report, metadata) are the counts of the two models."""
    model, feeds = MODELS[name](), model_calib(name, calib)
    options = CONFIGS[config]
    result = prune(model, feeds, **options)
    check_counts(result.report, model, result.model, first_sample(feeds))
    if "flops_reduction" in options:  # "remove at least the fraction F of their MACs"
        assert result.report["macs"]["removed_fraction"] >= options["flops_reduction"]


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a name for every unnamed node (see the test of unnamed labels below)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(copy.graph.node):
        node.name = node.name or f"unnamed_{i}"
    return copy


@pytest.mark.parametrize("seed", range(24))
def test_random_graph_figures_are_those_of_the_files(seed: int, calib: np.ndarray) -> None:
    """Counts, group channels and fidelity of random CNNs are those of their files and runs."""
    model = named(random_cnn(seed))
    target = [dict(sparsity=0.3), dict(flops_reduction=0.25, mode="oneshot"), dict(keep_ratio=0.6, round_to=1),
              dict(sparsity=0.5, mode="oneshot", method="entropic")][seed % 4]
    try:
        result = prune(model, calib, **target)
    except onnx_eprune.EPruneError as exc:
        assert "out of reach" in str(exc) or "no prunable channel group" in str(exc)
        pytest.skip(f"refused: {exc}")
    check_counts(result.report, model, result.model, {INPUT: calib[:1]})
    check_group_shapes(result.report, model, result.model)
    check_report_fidelity(result.report, model, result.model, {INPUT: calib})


def test_macs_are_counted_at_the_calibration_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Dynamic H x W calibrated at 24x20: MACs at 24x20 in prune, inspect and inspect --input-shape."""
    model = dynamic_size(residual())
    calib = np.random.default_rng(5).normal(size=(64, 3, 24, 20)).astype(np.float32)
    result = prune(model, calib, flops_reduction=0.3)
    check_counts(result.report, model, result.model, {INPUT: calib[:1]})
    params, macs = totals(model, {INPUT: calib[:1]})
    assert macs != totals(model, {INPUT: calib[:1, :, :16, :16]})[1]
    summary = onnx_eprune.inspect(model, calib[:1])
    assert (summary["params"], summary["macs"]) == (params, macs)
    assert main(["inspect", save(model, tmp_path / "m.onnx"), "--input-shape", "1,3,24,20"]) == 0
    assert f"params {params:,}; MACs {macs:,}; " in capsys.readouterr().out


def test_fixed_batch_model_counts_per_sample(calib: np.ndarray, test_x: np.ndarray) -> None:
    """A model exported for a fixed batch of 2: MACs per sample in the report, inspect and evaluate."""
    model = fixed_batch(residual(), 2)
    result = prune(model, calib, sparsity=0.4)
    check_counts(result.report, model, result.model, {INPUT: calib[:2]}, samples=2)
    params, macs = totals(model, {INPUT: calib[:2]}, samples=2)
    summary = onnx_eprune.inspect(model, calib[:2])
    assert (summary["params"], summary["macs"]) == (params, macs)
    size = onnx_eprune.evaluate(model, result.model, test_x, device="cpu")["size"]
    assert (size["pruned"]["params"], size["pruned"]["macs"]) == totals(result.model, {INPUT: calib[:2]}, samples=2)


def test_unbatched_detector_counts_per_image(calib: np.ndarray) -> None:
    """A model without a batch axis (one (3, 16, 16) image per run): MACs per image."""
    model = one_image_detector()
    result = prune(model, calib, sparsity=0.3)
    check_counts(result.report, model, result.model, {INPUT: calib[0]})


def test_matmul_over_flattened_pixels_counts_every_row(calib: np.ndarray) -> None:
    """MACs at the calibration input shape count every row a MatMul multiplies."""
    model = pixel_matmul()
    costs = layer_costs(model, {INPUT: calib[:1]})
    assert costs["pix"] == (96, 256 * 8 * 12)
    params, macs = totals(model, {INPUT: calib[:1]})
    summary = onnx_eprune.inspect(model, calib[:1])
    assert (summary["params"], summary["macs"]) == (params, macs)
    result = prune(model, calib, flops_reduction=0.05)
    check_counts(result.report, model, result.model, {INPUT: calib[:1]})


def test_matmul_by_a_constant_from_the_left_is_counted(calib: np.ndarray) -> None:
    """A MatMul's constant weight counts wherever it stands (inspect and the report)."""
    model = left_matmul()
    assert layer_costs(model, {INPUT: calib[:1]})["mix"] == (96, 12 * 8 * 256)
    summary = onnx_eprune.inspect(model, calib[:1])
    assert (summary["params"], summary["macs"]) == totals(model, {INPUT: calib[:1]})
    result = prune(model, calib, sparsity=0.2)
    check_counts(result.report, model, result.model, {INPUT: calib[:1]})


def test_unnamed_nodes_are_labelled_by_their_index_in_the_file(calib: np.ndarray) -> None:
    """README: an unnamed node is ``OpType#index``; the index is the node's in the model."""
    model = conv_bn_relu_pool_flatten_gemm(True, constants=True)  # weights in Constant nodes, listed first
    for node in model.graph.node:
        node.name = ""
    summary = onnx_eprune.inspect(model, calib[:1])
    shown = {name for g in summary["groups"] for name in g["producers"] + g["consumers"]}
    assert shown == {label(n, i) for i, n in enumerate(model.graph.node) if n.op_type in WEIGHTED}


def test_inspect_totals_and_prunable_mac_fraction(calib: np.ndarray, capsys: pytest.CaptureFixture,
                                                  tmp_path: Path) -> None:
    """inspect's params, MACs, group widths and prunable MAC fraction (API, table, --json) are measured."""
    for name in sorted(MODELS):
        model, feeds = MODELS[name](), model_calib(name, calib)
        summary = onnx_eprune.inspect(model, first_sample(feeds))
        before = layer_costs(model, first_sample(feeds))
        assert (summary["params"], summary["macs"]) == totals(model, first_sample(feeds)), name
        halved = prune(model, feeds, keep_ratio=0.5, round_to=1, mode="oneshot").model
        after = layer_costs(halved, first_sample(feeds))
        touched = sum(m for layer, (_, m) in before.items() if after[layer][1] != m)
        assert summary["prunable_mac_fraction"] == pytest.approx(touched / summary["macs"], abs=1e-12), name
        assert summary["prunable_groups"] == sum(g["prunable"] for g in summary["groups"]), name
        nodes = nodes_by_label(model)
        widths = producer_widths({"groups": [dict(g, channels_after=g["channels"]) for g in summary["groups"]]})
        for producer, width in widths.items():
            if nodes[producer].op_type in WEIGHTED:
                assert out_width(model, nodes[producer]) == width, (name, producer)
    model = conv_bn_relu_pool_flatten_gemm(False)
    params, macs = totals(model, {INPUT: calib[:1]})
    assert main(["inspect", save(model, tmp_path / "m.onnx")]) == 0
    assert f"params {params:,}; MACs {macs:,}; prunable MAC fraction 1.000" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "m.onnx"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["params"], printed["macs"], printed["prunable_mac_fraction"]) == (params, macs, 1.0)


# -- channels in the report and in the written model -----------------------------------------------

def oriented(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """A weight as (outputs, inputs, taps): Conv (M, C, k, k), ConvTranspose (C, M, k, k),
    Gemm (M, D) with transB or (D, M), MatMul (D, M)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], w.shape[1], -1)
    if node.op_type == "ConvTranspose":
        return np.swapaxes(w, 0, 1).reshape(w.shape[1], w.shape[0], -1)
    transposed = node.op_type == "Gemm" and attr(node, "transB", 0)
    return (w if transposed else w.T)[:, :, None]


def out_width(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    w = oriented(node, constants(model)[node.input[1]])
    return w.shape[0] * (attr(node, "group", 1) if node.op_type == "ConvTranspose" else 1)


def kept_columns(original: np.ndarray, pruned: np.ndarray) -> list[int] | None:
    """The input columns J, in order, with ``pruned == original[:, J]`` (None if none do)."""
    columns, i = [], 0
    for j in range(pruned.shape[1]):
        while i < original.shape[1] and not np.array_equal(original[:, i], pruned[:, j]):
            i += 1
        if i == original.shape[1]:
            return None
        columns.append(i)
        i += 1
    return columns


def producer_widths(report: dict) -> dict[str, int]:
    """Per producer, the output rows the report gives it: channels after x rows per channel,
    summed over the groups it writes."""
    widths: dict[str, int] = {}
    for g in report["groups"]:
        for producer, rows in zip(g["producers"], g["producer_rows"]):
            widths[producer] = widths.get(producer, 0) + g["channels_after"] * rows
    return widths


def check_group_shapes(report: dict, original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """Channels before / after per group against the weight shapes of both models."""
    before, after = nodes_by_label(original), nodes_by_label(pruned)
    widths_before = producer_widths({"groups": [dict(g, channels_after=g["channels_before"])
                                                for g in report["groups"]]})
    for producer, width in producer_widths(report).items():
        if before[producer].op_type in WEIGHTED:
            assert out_width(original, before[producer]) == widths_before[producer], producer
            assert out_width(pruned, after[producer]) == width, producer
    consumed: dict[str, list[dict]] = {}
    for g in report["groups"]:
        for consumer in g["consumers"]:
            consumed.setdefault(consumer, []).append(g)
        if g["frozen"]:
            assert g["channels_after"] == g["channels_before"] and "kept_channels" not in g
        if "kept_channels" in g:
            kept = g["kept_channels"]
            assert len(kept) == g["channels_after"] and kept == sorted(set(kept))
            assert 0 <= kept[0] and kept[-1] < g["channels_before"]
        if "step" in g and g["channels_after"] < g["channels_before"]:
            assert g["channels_after"] % g["step"] == 0
    for consumer, groups in consumed.items():
        node = before.get(consumer)
        if node is None or node.op_type != "Conv" or attr(node, "group", 1) != 1:
            continue
        width = oriented(node, constants(original)[node.input[1]]).shape[1]
        if width == sum(g["channels_before"] for g in groups):  # one input feature per channel
            new = oriented(after[consumer], constants(pruned)[after[consumer].input[1]]).shape[1]
            assert new == sum(g["channels_after"] for g in groups), consumer
    assert report["prunable_groups"] == sum(not g["frozen"] for g in report["groups"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_group_channels_are_the_written_weight_shapes(name: str, calib: np.ndarray) -> None:
    """channels_before / channels_after / kept_channels per group match the written weight shapes."""
    model, feeds = MODELS[name](), model_calib(name, calib)
    for options in (dict(sparsity=0.4), dict(keep_ratio=0.5, round_to=1, mode="oneshot")):
        result = prune(model, feeds, **options)
        check_group_shapes(result.report, model, result.model)


def test_default_rounding_steps_hold(calib: np.ndarray) -> None:
    """Groups of 64 convolution outputs or more keep a multiple of their reported step (8)."""
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(64, 80, 32))
    result = prune(model, calib, sparsity=0.5)
    check_group_shapes(result.report, model, result.model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    steps = {g["producers"][0]: g.get("step") for g in result.report["groups"] if g["producers"]}
    assert [steps[name] for name in convs] == [8, 8]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kept_channels_are_the_rows_and_columns_kept(name: str, calib: np.ndarray) -> None:
    """Without re-fit, producers keep exactly the rows, and convolutions the columns, of kept_channels."""
    model, feeds = MODELS[name](), model_calib(name, calib)
    result = prune(model, feeds, keep_ratio=0.5, round_to=1, mode="oneshot", reconstruct=False)
    report, before, after = result.report, nodes_by_label(model), nodes_by_label(result.model)
    old, new = constants(model), constants(result.model)
    written: dict[str, list[dict]] = {}
    for g in report["groups"]:
        for producer, rows in zip(g["producers"], g["producer_rows"]):
            written.setdefault(producer, []).append(dict(g, rows=rows))
    checked = 0
    for producer, groups in written.items():
        node = before[producer]
        if node.op_type not in WEIGHTED or len(groups) > 1 or attr(node, "group", 1) != 1:
            continue  # several groups in one producer: their offsets are not in the report
        g = groups[0]
        kept = np.array(g.get("kept_channels", range(g["channels_before"])))
        rows = (kept[:, None] * g["rows"] + np.arange(g["rows"])).reshape(-1)
        w0, w1 = oriented(node, old[node.input[1]]), oriented(after[producer], new[after[producer].input[1]])
        assert kept_columns(w0[rows], w1) is not None, producer
        checked += 1
        for cg in report["groups"]:
            if producer not in cg["consumers"] or "kept_channels" not in cg or node.op_type != "Conv":
                continue
            if w0.shape[1] == cg["channels_before"]:  # it reads this group alone
                assert kept_columns(w0[rows], w1) == cg["kept_channels"], producer
    assert checked


FROZEN_CASES: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[str, ...]]] = {
    "lrn": (ALL_BUILDERS["lrn"], ()),
    "softmax": (ALL_BUILDERS["softmax"], ()),
    "intermediate_output": (ALL_BUILDERS["intermediate_output"], ()),
    "computed_channel_pads": (ALL_BUILDERS["computed_channel_pads"], ()),
    "multiplier_sum_concat": (ALL_BUILDERS["multiplier_sum_concat"], ()),
    "exclude_conv": (lambda: conv_bn_relu_pool_flatten_gemm(True), ("conv_4",)),
    "exclude_residual": (residual, ("conv_b",)),
    "exclude_glob": (lambda: conv_bn_relu_pool_flatten_gemm(False), ("gemm_*",)),
}


@pytest.mark.parametrize("case", sorted(FROZEN_CASES))
def test_frozen_groups_are_untouched(case: str, calib: np.ndarray) -> None:
    """Frozen / excluded groups keep every channel (weights bit for bit where inputs stay whole)."""
    build, exclude = FROZEN_CASES[case]
    model = build()
    result = prune(model, calib, keep_ratio=0.5, round_to=1, mode="oneshot", exclude=exclude)
    report = result.report
    check_group_shapes(report, model, result.model)
    before, after = nodes_by_label(model), nodes_by_label(result.model)
    old, new = constants(model), constants(result.model)
    frozen = [g for g in report["groups"] if g["frozen"] and g["producers"]]
    assert frozen
    for pattern in exclude:
        assert any(f"excluded by {pattern!r}" in g["frozen"] for g in frozen)
    preview = onnx_eprune.inspect(model, calib[:1], exclude=exclude)  # what the exclusion keeps, before a run
    assert [(g["id"], g["channels"], g["frozen"]) for g in preview["groups"]] == \
        [(g["id"], g["channels_before"], g["frozen"]) for g in report["groups"]]
    whole = {c for g in report["groups"] for c in g["consumers"] if g["channels_after"] == g["channels_before"]}
    shrunk = {c for g in report["groups"] for c in g["consumers"] if g["channels_after"] < g["channels_before"]}
    identical = 0
    for g in frozen:
        for producer in g["producers"]:
            node = before[producer]
            if node.op_type not in WEIGHTED:
                continue
            assert out_width(result.model, after[producer]) == out_width(model, node)
            if producer in whole and producer not in shrunk:
                for name_before, name_after in zip(node.input[1:], after[producer].input[1:]):
                    assert np.array_equal(old[name_before], new[name_after]), producer
                identical += 1
    if case in ("lrn", "softmax", "intermediate_output", "computed_channel_pads"):  # conv1 reads the input
        assert identical


def test_min_keep_floor_holds(calib: np.ndarray, tmp_path: Path) -> None:
    """With --min-keep 0.4 every prunable group keeps ceil(0.4 C) channels or more, as report.md says."""
    model = conv_bn_relu_pool_flatten_gemm(True, widths=(16, 32, 64))
    folder = tmp_path / "rep"
    argv = ["prune", save(model, tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib",
            str(_npy(tmp_path / "c.npy", calib)), "--sparsity", "0.6", "--min-keep", "0.4", "--method", "l1",
            "--report-dir", str(folder), "-q"]
    assert main(argv) == 0
    report = json.loads((folder / "report.json").read_text())
    for g in report["groups"]:
        if not g["frozen"]:
            assert g["channels_after"] >= math.ceil(0.4 * g["channels_before"])
    assert "- every group keeps at least 40.0% of its channels" in (folder / "report.md").read_text()
    check_counts(report, model, onnx.load(str(tmp_path / "p.onnx")), {INPUT: calib[:1]})


def test_calib_random_reports_its_samples(tmp_path: Path) -> None:
    """--calib-random 20: the report's samples and fidelity samples are those 20."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    folder = tmp_path / "rep"
    argv = ["prune", save(model, tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib-random", "20",
            "--sparsity", "0.3", "--method", "l1", "--report-dir", str(folder), "-q"]
    assert main(argv) == 0
    report = json.loads((folder / "report.json").read_text())
    assert report["samples"] == report["fidelity_on_calibration"]["samples"] == 20
    assert "- calibration samples: 20" in (folder / "report.md").read_text()
    check_counts(report, model, onnx.load(str(tmp_path / "p.onnx")), {INPUT: random_input(1)})


# -- fidelity in the report ------------------------------------------------------------------------

def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def check_report_fidelity(report: dict, original: onnx.ModelProto, pruned: onnx.ModelProto, samples: Feeds,
                          batch: int | None = None, unbatched: bool = False) -> None:
    """The report's fidelity is that of the two models run on ``samples``."""
    fid = report["fidelity_on_calibration"]
    n = len(next(iter(samples.values())))
    assert fid["samples"] == n
    names = list(fid["outputs"])
    a = outputs_over(original, samples, names, batch, unbatched)
    b = outputs_over(pruned, samples, names, batch, unbatched)
    for name in names:
        assert_fidelity(fid["outputs"][name], fidelity(a[name], b[name]))


@pytest.mark.parametrize("name", ["cnn_bn", "intermediate_output", "decoder", "two_images", "two_heads",
                                  "gemm_matmul", "channels_last"])
def test_report_fidelity_is_measured_on_the_first_calibration_samples(name: str, calib: np.ndarray) -> None:
    """relative error and top-1 agreement of every graph output, on the calibration samples."""
    model, feeds = MODELS[name](), model_calib(name, calib)
    for options in (dict(sparsity=0.5), dict(flops_reduction=0.3, mode="oneshot", method="entropic"),
                    dict(keep_ratio=0.5)):
        result = prune(model, feeds, **options)
        assert list(result.report["fidelity_on_calibration"]["outputs"]) == [o.name for o in model.graph.output]
        check_report_fidelity(result.report, model, result.model, feeds)


def test_report_fidelity_with_many_samples_uses_the_first_256() -> None:
    """The report measures on the first min(256, samples) calibration samples it used, as it says."""
    model, x = conv_bn_relu_pool_flatten_gemm(False), random_input(300, seed=3)
    result = prune(model, x, sparsity=0.5, batch_size=7)
    assert result.report["samples"] == 300
    check_report_fidelity(result.report, model, result.model, {INPUT: x[:256]})
    result = prune(model, x, sparsity=0.5, samples=100, mode="oneshot")
    assert result.report["samples"] == 100
    check_report_fidelity(result.report, model, result.model, {INPUT: x[:100]})
    result = prune(model, x, sparsity=0.5, samples=500)  # more than there are: all of them
    assert result.report["samples"] == 300
    result = prune(model, x[:10], sparsity=0.5)  # fewer than 16: a warning, and the 10
    assert result.report["samples"] == 10
    check_report_fidelity(result.report, model, result.model, {INPUT: x[:10]})


def test_report_fidelity_of_fixed_batch_and_unbatched_models(calib: np.ndarray) -> None:
    """Fidelity of fixed-batch (ragged last run too) and unbatched models, in the report and evaluate."""
    model = fixed_batch(residual(), 2)
    result = prune(model, calib, sparsity=0.4)
    check_report_fidelity(result.report, model, result.model, {INPUT: calib}, batch=2)
    model = fixed_batch(residual(), 4)  # 62 samples: the last run holds 2 of them
    result = prune(model, calib[:62], sparsity=0.4)
    assert result.report["samples"] == 62
    check_report_fidelity(result.report, model, result.model, {INPUT: calib[:62]}, batch=4)
    model = one_image_detector()
    result = prune(model, calib, sparsity=0.3)
    assert list(result.report["fidelity_on_calibration"]["outputs"]) == ["head"]
    check_report_fidelity(result.report, model, result.model, {INPUT: calib}, unbatched=True)
    data = random_input(12, seed=6)
    measured = onnx_eprune.evaluate(model, result.model, data, device="cpu")["outputs"]
    a, b = (outputs_over(m, {INPUT: data}, ["head"], unbatched=True)["head"] for m in (model, result.model))
    assert list(measured) == ["head"]
    assert_fidelity(measured["head"], fidelity(a, b))


def test_report_from_statistics_files(tmp_path: Path) -> None:
    """From shard statistics: samples are all shard images, fidelity measured on the images the files keep."""
    model, x = conv_bn_relu_pool_flatten_gemm(False), random_input(160, seed=4)
    paths = []
    for k, part in enumerate(np.array_split(x, 2)):
        bundle = onnx_eprune.calibrate(model, part, device="cpu")
        bundle.save(tmp_path / f"s{k}.npz")
        paths.append(tmp_path / f"s{k}.npz")
    result = onnx_eprune.prune(model, stats=paths, sparsity=0.5, method="l1", device="cpu")
    assert result.report["samples"] == 160
    kept = np.concatenate([onnx_eprune.calibrate(model, part, device="cpu").gain_data().arrays[INPUT]
                           for part in np.array_split(x, 2)])
    for image in kept:
        assert (x == image).all(axis=(1, 2, 3)).sum() == 1
    check_report_fidelity(result.report, model, result.model, {INPUT: kept[:256]})
    check_counts(result.report, model, result.model, {INPUT: x[:1]})


def test_thin_refits_describe_the_written_layers(calib: np.ndarray) -> None:
    """thin_refits lists exactly the thin re-fitted Gemm layers, with their rows and written widths."""
    for model in (conv_bn_relu_pool_flatten_gemm(False), gemm_matmul(), conv_bn_relu_pool_flatten_gemm(True)):
        result = prune(model, calib[:40], sparsity=0.5)
        report, after = result.report, nodes_by_label(result.model)
        thin = report.get("thin_refits", {})
        values = constants(result.model)
        for name, entry in thin.items():
            width = oriented(after[name], values[after[name].input[1]]).shape[1]
            assert entry == {"rows": 40, "features": width, "cross_validated": True} and 40 < 2 * width
            assert 0.001 <= report["refit_ridges"][name] <= 10
        shrunk = [c for g in report["groups"] for c in g["consumers"] if g["channels_after"] < g["channels_before"]]
        for name in shrunk:
            node = after[name]
            if node.op_type == "Gemm" and oriented(node, values[node.input[1]]).shape[1] * 2 > 40:
                assert name in thin
        assert set(report.get("refit_ridges", {})) == set(thin)


def test_fixed_ridge_thin_refits_in_the_summary_and_markdown(calib: np.ndarray, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """With --refit-ridge 0.01 report.md and the summary name the thin layers with true rows and widths."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    folder, out = tmp_path / "rep", tmp_path / "p.onnx"
    argv = ["prune", save(model, tmp_path / "m.onnx"), "-o", str(out), "--calib", str(_npy(tmp_path / "c.npy", calib)),
            "--samples", "40", "--sparsity", "0.5", "--method", "l1", "--refit-ridge", "0.01", "--report-dir",
            str(folder)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report, pruned = json.loads((folder / "report.json").read_text()), onnx.load(str(out))
    after, values = nodes_by_label(pruned), constants(pruned)
    thin = report["thin_refits"]
    widths = {name: oriented(after[name], values[after[name].input[1]]).shape[1] for name in thin}
    assert thin == {name: {"rows": 40, "features": widths[name], "cross_validated": False} for name in thin}
    assert all(40 < 2 * w for w in widths.values()) and "refit_ridges" not in report
    named_layers = ", ".join(f"`{name}` (40 rows, {widths[name]} inputs)" for name in list(thin)[:3])
    assert f"- re-fitted on fewer than 2 rows per kept input: {named_layers}" in (folder / "report.md").read_text()
    assert f"{len(thin)} layer(s) on fewer than 2 rows per kept input" in printed


# -- the command line's files and summary ----------------------------------------------------------

SUMMARY_GROUP = re.compile(r"^\s*(\d+)\s+(\d+) -> (\d+)\s+(.*?)\s*$")
SUMMARY_TOTAL = re.compile(r"^(params|MACs)\s+([\d,]+) ->\s+([\d,]+)\s+\(-(-?[\d.]+)%\)$")
SUMMARY_OUTPUT = re.compile(r"^output (\S+): relative error ([\d.]+)(?:, top-1 agreement ([\d.]+)%)? on (\d+) "
                            r"calibration samples$")


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def near(printed: str, value: float, decimals: int) -> bool:
    """``printed`` is ``value`` rounded to ``decimals`` places (allowing a float tie)."""
    return abs(float(printed) - value) <= 0.5 * 10 ** -decimals + 1e-9


@pytest.mark.parametrize("name", ["cnn_bn", "lrn", "decoder", "depthwise_multiplier", "multiplier_sum"])
def test_cli_prune_summary_report_and_markdown_agree(name: str, calib: np.ndarray, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Printed summary, --report, report.json and report.md agree and hold the measured figures."""
    model = MODELS[name]()
    path, out = save(model, tmp_path / "m.onnx"), tmp_path / "p.onnx"
    argv = ["prune", path, "-o", str(out), "--calib", str(_npy(tmp_path / "c.npy", calib[:48])), "--sparsity",
            "0.45", "--method", "l1", "--device", "cpu", "--report", str(tmp_path / "r.json"),
            "--report-dir", str(tmp_path / "rep")]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    pruned = onnx.load(str(out))
    report = json.loads((tmp_path / "r.json").read_text())
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == report
    assert report["input"] == path and report["output"] == str(out)
    assert report["samples"] == 48 and report["target"] == {"kind": "sparsity", "value": 0.45}
    assert report["version"] == importlib.metadata.version("onnx-eprune") == onnx_eprune.__version__
    check_counts(report, model, pruned, {INPUT: calib[:1]})
    check_group_shapes(report, model, pruned)
    check_report_fidelity(report, model, pruned, {INPUT: calib[:48]})
    pb, mb = totals(model, {INPUT: calib[:1]})
    pa, ma = totals(pruned, {INPUT: calib[:1]})
    fid = report["fidelity_on_calibration"]
    own = {k: fidelity(outputs_over(model, {INPUT: calib[:48]}, [k])[k],
                       outputs_over(pruned, {INPUT: calib[:48]}, [k])[k]) for k in fid["outputs"]}

    # the printed summary
    listed = [g for g in report["groups"] if not (g["frozen"] and not g["producers"])]
    group_lines = [m.groups() for m in map(SUMMARY_GROUP.match, printed) if m]
    assert len(group_lines) == len(listed)
    for (gid, before, after, rest), g in zip(group_lines, listed):
        assert (int(gid), int(before), int(after)) == (g["id"], g["channels_before"], g["channels_after"])
        assert rest.startswith(", ".join(g["producers"])[:40].rstrip())
        assert ("frozen: " in rest) == bool(g["frozen"])
    lines = {m.group(1): m.groups()[1:] for m in map(SUMMARY_TOTAL.match, printed) if m}
    for key, (b, a) in (("params", (pb, pa)), ("MACs", (mb, ma))):
        assert (int(lines[key][0].replace(",", "")), int(lines[key][1].replace(",", ""))) == (b, a)
        assert near(lines[key][2], 100 * (1 - a / b), 1)
    shown = [m.groups() for m in map(SUMMARY_OUTPUT.match, printed) if m]
    assert [s[0] for s in shown] == list(fid["outputs"])
    for output, rel, top1, samples in shown:
        assert near(rel, own[output]["relative_error"], 4) and int(samples) == 48
        assert (top1 is None) == ("top1_agreement" not in own[output])
        assert top1 is None or near(top1, 100 * own[output]["top1_agreement"], 1)

    # report.md
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert "- calibration samples: 48" in md and "- target: sparsity 0.45" in md
    ridges = list(report.get("refit_ridges", {}).values())
    refit = f"auto-thin: {min(ridges):g}-{max(ridges):g}" if ridges else "auto-thin"
    assert f"- method: l1, mode: sequential, re-fit: yes (ridge {refit}), seed: 0" in md
    assert f"| parameters | {pb:,} | {pa:,} | {pct(removed(pb, pa))} |" in md
    assert f"| MACs | {mb:,} | {ma:,} | {pct(removed(mb, ma))} |" in md
    prunable = [g for g in report["groups"] if not g["frozen"]]
    cb, ca = sum(g["channels_before"] for g in prunable), sum(g["channels_after"] for g in prunable)
    assert f"| channels of prunable groups | {cb:,} | {ca:,} | {pct(1 - ca / cb)} |" in md
    assert any(line.startswith("Pruned against original model on 48 calibration samples") for line in md)
    for output, f in own.items():
        top1 = pct(f["top1_agreement"]) if "top1_agreement" in f else "-"
        row = next(line for line in md if line.startswith(f"| {output} | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert near(cells[1], f["relative_error"], 4) and cells[2] == top1
    assert f"{len(prunable)} prunable of {len(report['groups'])} groups." in md
    table = md[md.index("| group | producers | consumers | channels |") + 2:]
    assert len(table) == len(report["groups"])
    for row, g in zip(table, report["groups"]):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))]
        assert cells[0] == str(g["id"])
        chans = f"{g['channels_before']} (frozen: " if g["frozen"] else \
            f"{g['channels_before']} -> {g['channels_after']}"
        assert cells[3].startswith(chans)
        assert cells[2] == (", ".join(g["consumers"]) or "(graph output)")
        producers = [p + (f" (x{r})" if r > 1 else "") for p, r in zip(g["producers"], g["producer_rows"])]
        assert cells[1] == (", ".join(producers) or "(graph input)")
    phases = {k: v for k, v in report["seconds"].items() if k != "total"}
    assert sum(phases.values()) <= report["seconds"]["total"] + 0.0005 * len(phases)


# -- evaluate --------------------------------------------------------------------------------------

def test_evaluate_figures_are_measured(calib: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """evaluate (API, --json, table) with labels: fidelity, accuracy, sizes, params and MACs are measured."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    pruned = prune(model, calib, sparsity=0.5).model
    a_path, b_path = save(model, tmp_path / "m.onnx"), tmp_path / "p.onnx"
    onnx_eprune.PruneResult(pruned, {}).save(b_path)
    data = random_input(300, seed=11)
    ya, yb = run_tensors(model, {INPUT: data})[OUTPUT], run_tensors(pruned, {INPUT: data})[OUTPUT]
    labels = (ya.argmax(1) + (np.arange(300) % 4 == 0)) % CLASSES  # the original right on 3 of 4
    accuracy = {"original": float(np.mean(ya.argmax(1) == labels)), "pruned": float(np.mean(yb.argmax(1) == labels)),
                # per class: its samples, and the share of them each model gets right
                "per_class": {"samples": [int(np.sum(labels == k)) for k in range(CLASSES)],
                              **{which: [float(np.mean(y.argmax(1)[labels == k] == k)) if np.any(labels == k) else None
                                         for k in range(CLASSES)] for which, y in (("original", ya), ("pruned", yb))}}}
    own = fidelity(ya, yb)
    size = {which: {"bytes": Path(p).stat().st_size, **dict(zip(("params", "macs"), totals(m, {INPUT: data[:1]})))}
            for which, p, m in (("original", a_path, model), ("pruned", b_path, pruned))}

    result = onnx_eprune.evaluate(a_path, str(b_path), data, labels=labels, device="cpu")
    assert result["samples"] == 300
    assert_fidelity(result["outputs"][OUTPUT], own)
    assert result["accuracy"]["per_class"] == accuracy["per_class"]  # ratios of counts: exact
    assert {k: result["accuracy"][k] for k in ("original", "pruned")} == pytest.approx(
        {k: accuracy[k] for k in ("original", "pruned")}, abs=1e-12)
    assert result["size"] == size

    argv = ["evaluate", a_path, str(b_path), "--data", str(_npy(tmp_path / "d.npy", data)), "--labels",
            str(_npy(tmp_path / "l.npy", labels)), "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if k != "latency_ms"} == \
        {k: v for k, v in result.items() if k != "latency_ms"}
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (f"output y: relative error {own['relative_error']:.4f}, cosine {own['cosine']:.5f}, "
            f"top-1 agreement {100 * own['top1_agreement']:.2f}%") in text
    assert (f"accuracy: original {100 * accuracy['original']:.2f}%, pruned {100 * accuracy['pruned']:.2f}% "
            f"({100 * (accuracy['pruned'] - accuracy['original']):+.2f} points)") in text
    for which, s in size.items():
        assert f"{which:<8}: {s['bytes']:,} bytes, {s['params']:,} params, {s['macs']:,} MACs;" in text


def test_evaluate_measures_every_output_on_the_data(calib: np.ndarray) -> None:
    """evaluate measures every output (a segmentation map too) and fixed-batch models on the data."""
    model = two_heads()
    pruned = prune(model, calib, sparsity=0.4).model
    data = random_input(40, seed=12)
    result = onnx_eprune.evaluate(model, pruned, data, device="cpu")
    a, b = run_tensors(model, {INPUT: data}), run_tensors(pruned, {INPUT: data})
    assert list(result["outputs"]) == [o.name for o in model.graph.output]
    for name, reported in result["outputs"].items():
        assert_fidelity(reported, fidelity(a[name], b[name]))
    model = fixed_batch(residual(), 2)
    pruned = prune(model, calib, sparsity=0.4).model
    result = onnx_eprune.evaluate(model, pruned, data, labels=np.arange(40) % CLASSES, device="cpu")
    ya, yb = (outputs_over(m, {INPUT: data}, [OUTPUT], batch=2)[OUTPUT] for m in (model, pruned))
    assert_fidelity(result["outputs"][OUTPUT], fidelity(ya, yb))
    assert {k: result["accuracy"][k] for k in ("original", "pruned")} == {
        "original": float(np.mean(ya.argmax(1) == np.arange(40) % CLASSES)),
        "pruned": float(np.mean(yb.argmax(1) == np.arange(40) % CLASSES))}
    assert result["accuracy"]["per_class"]["samples"] == [40 // CLASSES] * CLASSES  # every sample, batches of 2
    assert list(result["latency_ms"]["original"]) == ["batch2"]


def test_evaluate_size_of_in_memory_models_is_their_serialised_size(calib: np.ndarray, tmp_path: Path) -> None:
    """Given ModelProtos, evaluate's sizes are the bytes the models serialise (and save) to."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    result = prune(model, calib, sparsity=0.5)
    result.save(tmp_path / "p.onnx")
    size = onnx_eprune.evaluate(model, result.model, calib[:16], device="cpu")["size"]
    assert size["pruned"]["bytes"] == (tmp_path / "p.onnx").stat().st_size == len(result.model.SerializeToString())
    assert size["original"]["bytes"] == len(model.SerializeToString())


# -- sweep -----------------------------------------------------------------------------------------

def same_run(point: onnx_eprune.SweepPoint, alone: onnx_eprune.PruneResult) -> None:
    """A sweep point and a separate prune at its target: the same figures and model bytes."""
    assert point.params_removed == alone.report["params"]["removed_fraction"] == \
        point.report["params"]["removed_fraction"]
    assert point.macs_removed == alone.report["macs"]["removed_fraction"] == point.report["macs"]["removed_fraction"]
    for key in ("params", "macs", "groups", "target", "samples", "method", "mode"):
        assert point.report[key] == alone.report[key], key
    assert point.model.SerializeToString() == alone.model.SerializeToString()


@pytest.mark.parametrize("mode,kind", [("sequential", "sparsity"), ("oneshot", "flops_reduction"),
                                       ("oneshot", "sparsity")])
def test_sweep_points_equal_separate_prunes(mode: str, kind: str, calib: np.ndarray) -> None:
    """Each SweepPoint equals a separate prune at its target; its fidelity and accuracy are measured."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    data = random_input(40, seed=13)
    labels = np.arange(40) % CLASSES
    points = onnx_eprune.sweep(model, calib, [0.5, 0.25], kind, data=data, labels=labels, mode=mode, method="l1",
                               device="cpu")
    assert [p.target for p in points] == [0.25, 0.5]
    ya = run_tensors(model, {INPUT: data})[OUTPUT]
    for p in points:
        assert p.seconds >= p.report["seconds"]["total"] - 0.0005  # the run's wall time holds its phases
        alone = prune(model, calib, mode=mode, **{kind: p.target})
        same_run(p, alone)
        check_counts(p.report, model, p.model, {INPUT: calib[:1]})
        yb = run_tensors(p.model, {INPUT: data})[OUTPUT]
        assert_fidelity(p.fidelity[OUTPUT], fidelity(ya, yb))
        assert p.accuracy == {"original": float(np.mean(ya.argmax(1) == labels)),
                              "pruned": float(np.mean(yb.argmax(1) == labels))}
        assert p.fidelity_on == "40 held-out samples"
        assert (p.macs_removed if kind == "flops_reduction" else p.params_removed) >= p.target
        if mode == "sequential":
            assert p.report["fidelity_on_calibration"] == alone.report["fidelity_on_calibration"]
        else:  # pruned from the sweep's one set of statistics: measured on the images it keeps
            kept = onnx_eprune.calibrate(model, calib, device="cpu").gain_data().arrays
            check_report_fidelity(p.report, model, p.model, kept)


def test_sweep_without_data_measures_the_first_calibration_samples() -> None:
    """Without data a sweep measures on the first 256 of 300 calibration samples, as it says."""
    model, x = conv_bn_relu_pool_flatten_gemm(True), random_input(300, seed=14)
    (point,) = onnx_eprune.sweep(model, x, [0.4], mode="sequential", method="l1", device="cpu")
    assert point.fidelity_on.startswith("the first 256 calibration samples")
    ya, yb = (run_tensors(m, {INPUT: x[:256]})[OUTPUT] for m in (model, point.model))
    assert_fidelity(point.fidelity[OUTPUT], fidelity(ya, yb))
    same_run(point, prune(model, x, sparsity=0.4))


def test_cli_sweep_files_hold_measured_figures(calib: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """sweep.json / sweep.md / printed table hold the saved models' figures; models are prune -o's bytes."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    path, calib_path = save(model, tmp_path / "m.onnx"), str(_npy(tmp_path / "c.npy", calib))
    data = random_input(40, seed=15)
    labels = (np.arange(40) * 7) % CLASSES
    folder = tmp_path / "sweep"
    argv = ["sweep", path, "--calib", calib_path, "--flops-reduction", "0.35", "0.15", "--report-dir", str(folder),
            "--data", str(_npy(tmp_path / "d.npy", data)), "--labels", str(_npy(tmp_path / "l.npy", labels)),
            "--save-models", "--method", "l1", "--device", "cpu"]
    assert main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| flops_reduction")]
    record = json.loads((folder / "sweep.json").read_text())
    md = (folder / "sweep.md").read_text().splitlines()
    assert [r["target"] for r in record["runs"]] == [0.15, 0.35]
    assert "- fidelity measured on: 40 held-out samples" in md
    ya = run_tensors(model, {INPUT: data})[OUTPUT]
    pb, mb = totals(model, {INPUT: calib[:1]})
    for run in record["runs"]:
        saved = folder / f"pruned_flops_reduction_{run['target']:g}.onnx"
        pruned = onnx.load(str(saved))
        pa, ma = totals(pruned, {INPUT: calib[:1]})
        assert (run["params_removed"], run["macs_removed"]) == (removed(pb, pa), removed(mb, ma))
        yb = run_tensors(pruned, {INPUT: data})[OUTPUT]
        own = fidelity(ya, yb)
        assert_fidelity(run["fidelity"][OUTPUT], own)
        accuracy = {"original": float(np.mean(ya.argmax(1) == labels)),
                    "pruned": float(np.mean(yb.argmax(1) == labels))}
        assert run["accuracy"] == accuracy and run["fidelity_on"] == "40 held-out samples"
        row = (f"| flops_reduction {run['target']:g} | {pct(removed(pb, pa))} | {pct(removed(mb, ma))} | "
               f"{own['relative_error']:.4f} | {pct(own['top1_agreement'])} | {100 * accuracy['pruned']:.2f}% "
               f"(original {100 * accuracy['original']:.2f}%) |")
        assert any(line.startswith(row) for line in md) and any(line.startswith(row) for line in printed)
        out = tmp_path / f"alone_{run['target']:g}.onnx"
        assert main(["prune", path, "-o", str(out), "--calib", calib_path, "--flops-reduction", f"{run['target']:g}",
                     "--method", "l1", "--device", "cpu", "-q"]) == 0
        assert out.read_bytes() == saved.read_bytes()
    assert len(printed) == 2


# -- provenance ------------------------------------------------------------------------------------

def test_model_pruned_twice_lists_both_runs(calib: np.ndarray, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """A model pruned twice lists both runs' params / MACs as counted (metadata, inspect, its table)."""
    model = conv_bn_relu_pool_flatten_gemm(False)
    once = prune(model, calib, sparsity=0.3)
    twice = prune(once.model, calib, flops_reduction=0.2, mode="oneshot")
    counts = [totals(m, {INPUT: calib[:1]}) for m in (model, once.model, twice.model)]
    runs = onnx_eprune.inspect(twice.model)["pruned_before"]
    assert [r["params"] for r in runs] == [[counts[0][0], counts[1][0]], [counts[1][0], counts[2][0]]]
    assert [r["macs"] for r in runs] == [[counts[0][1], counts[1][1]], [counts[1][1], counts[2][1]]]
    assert main(["inspect", save(twice.model, tmp_path / "p.onnx")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pruned before:")]
    assert [re.search(r"params ([\d,]+) -> ([\d,]+)", line).groups() for line in lines] == \
        [(f"{counts[0][0]:,}", f"{counts[1][0]:,}"), (f"{counts[1][0]:,}", f"{counts[2][0]:,}")]


# -- demo ------------------------------------------------------------------------------------------

def test_demo_prints_measured_accuracy_and_counted_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The demo's accuracy, params and file sizes are those measured and counted on its files."""
    from onnx_eprune.datasets import (
        fashion_mnist_available,
        load_fashion_mnist,
        preprocess,
    )
    from onnx_eprune.demo import MODEL_FILE, SAMPLE_FILE, format_demo, run_demo, shipped

    out = tmp_path / "demo.onnx"
    numbers = run_demo(str(out), sparsity=0.55, method="l1", device="cpu")
    printed = format_demo(numbers)
    original = onnx.load(str(shipped(MODEL_FILE)))
    sample = np.load(str(shipped(SAMPLE_FILE)))
    x, y = load_fashion_mnist("test") if fashion_mnist_available() else (sample["test_x"], sample["test_y"])
    x = preprocess(x)
    name = original.graph.input[0].name
    acc = [float(np.mean(run_tensors(m, {name: x})[m.graph.output[0].name].argmax(1) == y))
           for m in (original, onnx.load(str(out)))]
    assert (numbers["accuracy_before"], numbers["accuracy_after"]) == pytest.approx(acc, abs=1e-12)
    counts = [totals(m, {name: preprocess(sample["calib"][:1])})[0] for m in (original, onnx.load(str(out)))]
    assert (numbers["params_before"], numbers["params_after"]) == tuple(counts)
    sizes = (Path(str(shipped(MODEL_FILE))).stat().st_size, out.stat().st_size)
    assert (numbers["bytes_before"], numbers["bytes_after"]) == sizes
    assert f"accuracy  {100 * acc[0]:6.2f}% -> {100 * acc[1]:6.2f}%   ({100 * (acc[1] - acc[0]):+.2f} points, " \
        f"{'full Fashion-MNIST test split (10,000 images)' if len(y) == 10000 else 'shipped test slice'}" in printed
    assert f"params    {counts[0]:>7,} -> {counts[1]:>7,}   (-{100 * removed(*counts):.1f}%)" in printed
    assert f"file size {sizes[0]:>7,} -> {sizes[1]:>7,} bytes" in printed
    assert f"with {len(sample['calib']):,} calibration images" in printed
