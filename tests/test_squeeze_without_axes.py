"""PyTorch's ``x.squeeze()`` after a global pooling, which its TorchScript exporter writes as
a Squeeze without axes: in a model with a free batch it removes the pooled axes, and at one
sample the batch axis too. Shapes probed on one sample made the analysis see the channel
axis move and freeze the channels behind it; runs of one sample would read one sample's
channels as samples. Such a model is now probed, and run, on at least two samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import CLASSES, INPUT, OUTPUT, _Builder, random_input, producer_groups, run_model
from onnx_eprune.graph.model_io import least_batch, probe_batch

CPU = {"device": "cpu"}


def squeeze_head(opset: int = 13, axes: bool = False, flatten: bool = False) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> conv2 (8->16) -> Relu -> GlobalAveragePool -> Squeeze (no
    axes, unless ``axes``: [2, 3]; a Flatten instead with ``flatten``) -> Gemm(16 -> 10)."""
    b = _Builder(seed=3)
    h = b.node("Relu", [b.conv(INPUT, 3, 8, name="conv1")])
    h = b.node("GlobalAveragePool", [b.node("Relu", [b.conv(h, 8, 16, name="conv2")])])
    if flatten:
        h = b.node("Flatten", [h], axis=1)
    elif axes and opset >= 13:
        h = b.node("Squeeze", [h, b.const("axes", np.array([2, 3], np.int64))])
    else:
        h = b.node("Squeeze", [h], **({"axes": [2, 3]} if axes else {}))
    return b.build(b.gemm(h, 16, CLASSES, name=OUTPUT), opset=opset)


def _out_channels(model: onnx.ModelProto, conv: str) -> int:
    return next(i.dims[0] for i in model.graph.initializer if i.name == f"{conv}.weight")


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_channels_behind_a_squeeze_without_axes_stay_prunable(opset):
    """conv2's channels were frozen ("Squeeze that moves the channel axis"); the MACs per
    sample are those of the same model with a Flatten."""
    model = squeeze_head(opset)
    assert (least_batch(model), probe_batch(model)) == (2, 2)
    groups = producer_groups(model)
    assert groups["conv2"]["prunable"], groups["conv2"]["frozen"]
    assert onnx_eprune.inspect(model)["macs"] == onnx_eprune.inspect(squeeze_head(opset, flatten=True))["macs"]
    pruned = onnx_eprune.prune(model, random_input(64), keep_ratio=0.5, **CPU)
    assert _out_channels(pruned.model, "conv2") == 8
    assert [n.op_type for n in pruned.model.graph.node].count("Squeeze") == 1
    for n in (1, 3):
        assert run_model(pruned.model, random_input(n, seed=5))[OUTPUT].shape == \
            run_model(model, random_input(n, seed=5))[OUTPUT].shape


def test_a_last_batch_of_one_sample_is_run_as_two():
    """65 samples in batches of 64 leave one sample alone, whose Squeeze would drop its batch
    axis: it runs padded to two, and the statistics are those of one batch of 65."""
    model, x = squeeze_head(), random_input(65)
    split = onnx_eprune.prune(model, x, keep_ratio=0.5, batch_size=64, **CPU)
    whole = onnx_eprune.prune(model, x, keep_ratio=0.5, batch_size=65, **CPU)
    assert [g.get("kept_channels") for g in split.report["groups"]] == \
        [g.get("kept_channels") for g in whole.report["groups"]]
    test = random_input(16, seed=9)
    np.testing.assert_allclose(run_model(split.model, test)[OUTPUT], run_model(whole.model, test)[OUTPUT],
                               rtol=1e-4, atol=1e-5)


def test_one_calibration_sample_is_enough_to_run():
    pruned = onnx_eprune.prune(squeeze_head(), random_input(1), keep_ratio=0.5, **CPU)
    assert _out_channels(pruned.model, "conv2") == 8


@pytest.mark.parametrize("opset", [11, 13])
def test_squeezes_with_axes_and_fixed_batches_keep_one_sample_probes(opset):
    assert least_batch(squeeze_head(opset, axes=True)) == 1
    fixed = squeeze_head(opset)
    for vi in (*fixed.graph.input, *fixed.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    assert (least_batch(fixed), probe_batch(fixed)) == (1, 4)
