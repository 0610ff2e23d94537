"""Property tests: random CNNs (random_graphs.py) pruned at random targets.

For every random graph and a random target (sparsity, FLOPs reduction or keep ratio),
method (entropic, lasso, thinet, l1) and mode (sequential, oneshot), ``onnx_eprune.prune`` must return a
model that passes the full ONNX checker, runs in onnxruntime on fresh inputs of other batch
sizes, and keeps the input and output names, element types and declared shapes; the input
model must be left untouched; and ``keep_ratio=1.0`` on the same graph must reproduce the
original outputs. A refusal because the target is out of reach, or because the graph has no
prunable channel group, is an acceptable outcome, but at least 70% of the examples must
really prune, so that the property cannot pass vacuously.

The examples are derandomized: CI runs the same 200 graphs (plus 100 generator checks) every
time.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import onnx_eprune
from onnx_eprune.errors import EPruneError
from onnx_eprune.graph.model_io import implicit_inputs
from random_graphs import CLASSES, INPUT, OUTPUT, cnn_strategy, describe, random_input

PRUNE_EXAMPLES = 200
GENERATOR_EXAMPLES = 100
MIN_PRUNED_FRACTION = 0.7
KEEP_ALL_TOLERANCE = 1e-4
CALIB = random_input(64, seed=1)
FRESH = {batch: random_input(batch, seed=100 + batch) for batch in (1, 7)}
ACCEPTABLE_REFUSALS = ("out of reach", "no prunable channel group")

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

targets = st.one_of(
    st.tuples(st.just("sparsity"), st.floats(0.1, 0.7)),
    st.tuples(st.just("flops_reduction"), st.floats(0.1, 0.5)),
    st.tuples(st.just("keep_ratio"), st.floats(0.3, 1.0)),
)
methods = st.sampled_from(["entropic", "l1", "lasso", "thinet"])
modes = st.sampled_from(["sequential", "oneshot"])


def run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {INPUT: x})))


def signature(model: onnx.ModelProto) -> dict:
    """Names, element types and declared dims (values or symbols) of the inputs and outputs."""
    inits = {i.name for i in model.graph.initializer}

    def entry(vi):
        t = vi.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim) if t.HasField("shape") else None
        return vi.name, t.elem_type, dims
    return {"inputs": [entry(vi) for vi in model.graph.input if vi.name not in inits],
            "outputs": [entry(vi) for vi in model.graph.output]}


def max_relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    return float(np.max(np.abs(ref64 - got64)) / max(np.max(np.abs(ref64)), 1e-30))


def assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, context: str) -> None:
    onnx.checker.check_model(pruned, full_check=True)
    assert signature(pruned) == signature(original), context
    for batch, x in FRESH.items():
        ref, got = run(original, x), run(pruned, x)
        assert list(got) == list(ref) == [OUTPUT], context
        for name in ref:
            assert got[name].shape == ref[name].shape == (batch, CLASSES), context
            assert got[name].dtype == ref[name].dtype, context
            assert np.isfinite(got[name]).all(), context


def added_biases(original: onnx.ModelProto, pruned: onnx.ModelProto) -> int:
    """Bias entries of Conv / Gemm nodes of ``pruned`` whose node in ``original`` (same
    position: the rewrite keeps the node list) has no bias: those a re-fit added."""
    sizes = {i.name: int(np.prod(i.dims)) for i in pruned.graph.initializer}

    def bias(node: onnx.NodeProto) -> str:
        return node.input[2] if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 else ""

    return sum(sizes.get(bias(b), 0) for a, b in zip(original.graph.node, pruned.graph.node) if bias(b) and not bias(a))


def prune(model, **kw):
    return onnx_eprune.prune(model, CALIB, device="cpu", samples=len(CALIB), **kw)


# -- the generator itself ------------------------------------------------------------------

@settings(max_examples=GENERATOR_EXAMPLES, **SETTINGS)
@given(model=cnn_strategy())
def test_random_graphs_are_valid_and_runnable(model):
    onnx.checker.check_model(model, full_check=True)
    for batch, x in FRESH.items():
        y = run(model, x)[OUTPUT]
        assert y.shape == (batch, CLASSES) and np.isfinite(y).all(), describe(model)
        assert np.abs(y).max() < 1e3, describe(model)   # He init keeps activations sane


# -- pruning ---------------------------------------------------------------------------------

def test_pruned_random_graphs_are_valid_and_keep_all_is_identity():
    outcomes = {"pruned": 0, "unchanged": 0, "refused": 0}

    @settings(max_examples=PRUNE_EXAMPLES, **SETTINGS)
    @given(model=cnn_strategy(), target=targets, method=methods, mode=modes)
    def prune_one(model, target, method, mode):
        kind, value = target
        context = f"{kind}={value:g} method={method} mode={mode}; {describe(model)}"
        before = model.SerializeToString()

        # keep everything: same function (and nothing pruned)
        try:
            full = prune(model, keep_ratio=1.0, method=method, mode=mode)
        except EPruneError as exc:  # a keep ratio is never out of reach; only this refusal is fine
            assert "no prunable channel group" in str(exc), f"{exc}; {context}"
        else:
            assert_valid(full.model, model, context)
            assert full.report["params"]["after"] == full.report["params"]["before"], context
            for x in FRESH.values():
                ref, got = run(model, x), run(full.model, x)
                for name in ref:
                    err = max_relative_error(ref[name], got[name])
                    assert err <= KEEP_ALL_TOLERANCE, f"keep_ratio=1.0 changed {name} by {err:.2e}; {context}"

        # the random target
        try:
            result = prune(model, method=method, mode=mode, **{kind: value})
        except EPruneError as exc:
            assert any(reason in str(exc) for reason in ACCEPTABLE_REFUSALS), f"{exc}; {context}"
            outcomes["refused"] += 1
        else:
            assert_valid(result.model, model, context)
            params = result.report["params"]
            # only the biases a re-fit gives layers without one can outweigh what was removed
            assert params["after"] <= params["before"] + added_biases(model, result.model), context
            outcomes["pruned" if params["after"] < params["before"] else "unchanged"] += 1
        assert model.SerializeToString() == before, f"prune modified its input; {context}"

    prune_one()
    total = sum(outcomes.values())
    assert total >= PRUNE_EXAMPLES, outcomes
    assert outcomes["pruned"] >= MIN_PRUNED_FRACTION * total, outcomes


# -- the node listing ------------------------------------------------------------------------

LISTING_EXAMPLES = 40


def relisted(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """``model`` with its nodes in another valid order: a topological sort taking a random
    node of those whose inputs are computed (sub-graphs' outer reads count as inputs)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needs = [{producer[x] for x in [*n.input, *implicit_inputs(n)] if x in producer} for n in nodes]
    rng, done, order = np.random.default_rng(seed), set(), []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and needs[i] <= done]
        pick = ready[rng.integers(len(ready))]
        order.append(pick)
        done.add(pick)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes[i] for i in order)
    return copy


def test_another_node_listing_prunes_alike():
    """The same random graph listed in another valid order prunes to the same channels and
    weights (conv positions and gain noise are drawn in an order of the wiring, not of the
    listing), and each pruned model lists its nodes in the order its input did."""
    moved = []

    @settings(max_examples=LISTING_EXAMPLES, **SETTINGS)
    @given(model=cnn_strategy(), target=targets, mode=modes, seed=st.integers(0, 2 ** 16))
    def prune_both(model, target, mode, seed):
        kind, value = target
        other = relisted(model, seed)
        context = f"{kind}={value:g} mode={mode} seed={seed}; {describe(model)}"
        moved.append([n.name for n in other.graph.node] != [n.name for n in model.graph.node])
        try:
            a = prune(model, mode=mode, positions=4, **{kind: value})
        except EPruneError as exc:
            assert any(reason in str(exc) for reason in ACCEPTABLE_REFUSALS), f"{exc}; {context}"
            with pytest.raises(EPruneError, match=re.escape(str(exc)[:40])):
                prune(other, mode=mode, positions=4, **{kind: value})
            return
        b = prune(other, mode=mode, positions=4, **{kind: value})
        assert [g.get("kept_channels") for g in a.report["groups"]] == \
            [g.get("kept_channels") for g in b.report["groups"]], context
        wa = {t.name: numpy_helper.to_array(t) for t in a.model.graph.initializer}
        wb = {t.name: numpy_helper.to_array(t) for t in b.model.graph.initializer}
        assert wa.keys() == wb.keys(), context
        for name, va in wa.items():
            assert va.shape == wb[name].shape and np.array_equal(va, wb[name]), f"{name}; {context}"
        for source, result in ((model, a), (other, b)):  # (Constant nodes became initializers)
            position = {n.name: i for i, n in enumerate(source.graph.node)}
            kept = [position[n.name] for n in result.model.graph.node if n.name in position]
            assert kept == sorted(kept), context

    prune_both()
    assert sum(moved) >= LISTING_EXAMPLES // 2, "the listings hardly moved: the property is not tested"
