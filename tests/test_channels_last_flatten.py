"""A classifier behind the Flatten of an NHWC map (Keras' ``Flatten`` -> ``Dense``, which
tf2onnx writes as Transpose to NHWC -> Reshape (N, H*W*C) -> MatMul + Add) reads its
features position by position: feature ``p * C + c`` is position p of channel c. The
channels of the map stay prunable: each such model must prune exactly as its channel-major
twin (the Transpose dropped, the Dense weight's rows reordered to ``c * P + p``), which the
analysis has always handled: the same channels, the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_eprune
from onnx_eprune.graph import analysis
from onnx_eprune.graph.groups import channel_major, position_major
from onnx_eprune.select.entropic import EntropicConfig
from test_exporter_variants_2 import CALIB_NHWC, FRESH_NHWC, NCHW, NHWC, Net, group_of, outputs, rel

POSITIONS = 8 * 8  # conv2's map, stride 2 on 16 x 16


def keras_flatten(form: str, seed: int = 3) -> onnx.ModelProto:
    """x (N, 16, 16, 3) NHWC -> Transpose -> conv1 (3->8) -> Relu -> conv2 (8->16, stride 2)
    -> Relu [-> Concat with conv3 (8->8, stride 2): ``concat``] -> Transpose to NHWC ->
    Reshape to (-1, features) by a constant [or Flatten: ``flatten``; to (N, -1), N read from
    the input's Shape: ``input_batch``] [-> Dropout: ``dropout``; -> Mul and Add by
    constants per feature (Keras' BatchNormalization as tf2onnx folds it): ``affine``; ->
    BatchNormalization: ``batchnorm``; -> x * Sigmoid(x): ``swish``; -> Reshape to (N, P, C)
    and back: ``unflatten``; -> Softmax over the features: ``softmax``] -> dense1
    MatMul + Add (-> 32) -> Relu -> dense2 MatMul + Add (-> 10) = y (logits)."""
    n = Net(seed)
    h1 = n.node("Relu", [n.conv(n.node("Transpose", ["x"], perm=NCHW), 3, 8, name="conv1")])
    h = n.node("Relu", [n.conv(h1, 8, 16, name="conv2", strides=[2, 2])])
    channels = 16
    if form == "concat":
        h = n.node("Concat", [h, n.node("Relu", [n.conv(h1, 8, 8, name="conv3", strides=[2, 2])])], axis=1)
        channels = 24
    features = channels * POSITIONS
    h = n.node("Transpose", [h], perm=NHWC, name="to_nhwc")
    if form == "flatten":
        h = n.node("Flatten", [h], axis=1, name="flat")
    elif form == "input_batch":  # PyTorch's h.view(x.size(0), -1), x the model's input
        batch = n.node("Gather", [n.node("Shape", ["x"]), n.const(0, np.int64)], axis=0)
        target = n.node("Concat", [n.node("Unsqueeze", [batch, n.const([0], np.int64)]), n.const([-1], np.int64)],
                        axis=0)
        h = n.node("Reshape", [h, target], name="flat")
    else:
        h = n.node("Reshape", [h, n.const([-1, features], np.int64)], name="flat")
    if form == "dropout":
        h = n.node("Dropout", [h])
    if form == "affine":  # Keras' BatchNormalization of the features, as tf2onnx folds it
        h = n.node("Mul", [h, n.const(n.rng.uniform(0.5, 1.5, features), name="f.scale")])
        h = n.node("Add", [n.const(n.rng.uniform(-0.2, 0.2, (1, features)), name="f.shift"), h])
    if form == "batchnorm":
        h = n.node("BatchNormalization", [h] + [n.const(v, name=f"f.{k}") for k, v in (
            ("gamma", n.rng.uniform(0.5, 1.5, features)), ("beta", n.rng.uniform(-0.2, 0.2, features)),
            ("mean", n.rng.uniform(-0.2, 0.2, features)), ("var", n.rng.uniform(0.5, 1.5, features)))])
    if form == "swish":  # two operands flattened alike
        h = n.node("Mul", [h, n.node("Sigmoid", [h])])
    if form == "unflatten":
        h = n.node("Reshape", [n.node("Reshape", [h, n.const([-1, POSITIONS, channels], np.int64)]),
                               n.const([-1, features], np.int64)])
    if form == "softmax":
        h = n.node("Softmax", [h], axis=1)
    h = n.node("MatMul", [h, n.const(n.rng.normal(0, 1 / np.sqrt(features), (features, 32)), name="d1.w")],
               name="dense1")
    h = n.node("Relu", [n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 32), name="d1.b")])])
    h = n.node("MatMul", [h, n.const(n.rng.normal(0, 0.2, (32, 10)), name="d2.w")], name="dense2")
    h = n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 10), name="d2.b")], out="y")
    return n.build(h, in_shape=("N", 16, 16, 3), opset=13)


def channel_major_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the Transpose to NHWC before its flatten, dense1's weight rows and
    the per-feature constants in channel-major order: the same function."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    transpose = next(n for n in graph.node if n.name == "to_nhwc")
    next(n for n in graph.node if n.name == "flat").input[0] = transpose.input[0]
    graph.node.remove(transpose)
    weight = next(t for t in graph.initializer if t.name == "d1.w")
    value = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(channel_major(value.T, POSITIONS).T), "d1.w"))
    for tensor in graph.initializer:
        if tensor.name.startswith("f."):
            value = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(channel_major(value, POSITIONS), tensor.name))
    return twin


def kept(report: dict) -> dict[str, list[int]]:
    return {",".join(g["producers"]): g["kept_channels"] for g in report["groups"] if not g["frozen"]}


def test_the_twin_is_the_same_function():
    model = keras_flatten("concat")
    assert rel(outputs(channel_major_twin(model), FRESH_NHWC), outputs(model, FRESH_NHWC)) < 1e-6


def test_the_orders_invert_each_other():
    a = np.arange(2 * 3 * 12).reshape(2, 3, 12)
    np.testing.assert_array_equal(position_major(channel_major(a, 4), 4), a)
    # 3 channels x 4 positions: position p of channel c moves from p * 3 + c to c * 4 + p
    row = np.array([10 * p + c for p in range(4) for c in range(3)])
    np.testing.assert_array_equal(channel_major(row, 4), [10 * p + c for c in range(3) for p in range(4)])


@pytest.mark.parametrize("form", ["reshape", "flatten", "concat", "dropout", "input_batch", "affine", "batchnorm",
                                  "swish"])
@pytest.mark.parametrize("options", [
    dict(keep_ratio=0.5), dict(sparsity=0.6), dict(keep_ratio=0.5, mode="oneshot"),
    dict(sparsity=0.5, method="l1"), dict(keep_ratio=0.5, reconstruct=False)], ids=str)
def test_it_prunes_as_its_channel_major_twin(form, options):
    """The map's channels go (conv2's group keeps half), with the twin's channels in every
    group, and the pruned model computes what the pruned twin computes; the Reshape's
    feature count follows."""
    model = keras_flatten(form)
    result = onnx_eprune.prune(model, CALIB_NHWC, device="cpu", **options)
    twin = onnx_eprune.prune(channel_major_twin(model), CALIB_NHWC, device="cpu", **options)
    onnx.checker.check_model(result.model, full_check=True)
    conv2 = group_of(result.report, "conv2")
    assert not conv2["frozen"] and conv2["channels_after"] < conv2["channels_before"]
    assert kept(result.report) == kept(twin.report)
    assert rel(outputs(result.model, FRESH_NHWC), outputs(twin.model, FRESH_NHWC)) < 1e-5
    assert result.report["params"] == twin.report["params"]


def test_keep_ratio_one_gives_back_the_original():
    model = keras_flatten("concat")
    result = onnx_eprune.prune(model, CALIB_NHWC, device="cpu", keep_ratio=1.0)
    assert rel(outputs(result.model, FRESH_NHWC), outputs(model, FRESH_NHWC)) < 1e-6


def test_a_reshape_to_positions_and_channels_and_back_prunes_as_the_plain_flatten():
    """The flattened features reshaped to (N, positions, channels) and back (since session
    58: the positions' copies of the channels, one block each): the same channels go as
    from the plain flatten, both targets follow, and the outputs are the same."""
    model, plain = keras_flatten("unflatten"), keras_flatten("reshape")
    result = onnx_eprune.prune(model, CALIB_NHWC, device="cpu", keep_ratio=0.5)
    twin = onnx_eprune.prune(plain, CALIB_NHWC, device="cpu", keep_ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    assert kept(result.report) == kept(twin.report) and group_of(result.report, "conv2")["channels_after"] == 8
    shapes = [numpy_helper.to_array(i).tolist() for i in result.model.graph.initializer if i.data_type == 7]
    assert [-1, POSITIONS, 8] in shapes
    assert rel(outputs(result.model, FRESH_NHWC), outputs(twin.model, FRESH_NHWC)) < 1e-6


def test_an_op_that_mixes_the_features_freezes_the_map_with_a_reason():
    """A Softmax over the flattened features mixes every channel: conv2's channels stay,
    named by the reason; conv1 still prunes."""
    model = keras_flatten("softmax")
    result = onnx_eprune.prune(model, CALIB_NHWC, device="cpu", keep_ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    conv2 = group_of(result.report, "conv2")
    assert conv2["channels_after"] == 16 and "flattened channels last" in conv2["frozen"]
    assert group_of(result.report, "conv1")["channels_after"] == 4


def test_statistics_files_prune_as_the_one_shot_run(tmp_path):
    model = keras_flatten("reshape")
    bundle = onnx_eprune.calibrate(model, CALIB_NHWC, device="cpu")
    from_files = onnx_eprune.prune(model, stats=[bundle], sparsity=0.6)
    direct = onnx_eprune.prune(model, CALIB_NHWC, device="cpu", sparsity=0.6, mode="oneshot")
    assert kept(from_files.report) == kept(direct.report)
    assert rel(outputs(from_files.model, FRESH_NHWC), outputs(direct.model, FRESH_NHWC)) < 1e-4


@pytest.mark.parametrize("keep_ratio", [0.5, 0.9])
def test_a_consumer_too_wide_for_its_statistics_prunes_as_its_twin(monkeypatch, keep_ratio):
    """With the statistics limit below dense1's 1024 features, its channels are selected on
    reduced statistics and dense1 re-fitted on its kept features (0.5: 512 of them, at the
    limit) or along their leading directions (0.9: 896), as in the twin."""
    monkeypatch.setattr(analysis, "MAX_CONSUMER_FEATURES", 512)
    model = keras_flatten("reshape")
    options = dict(device="cpu", keep_ratio=keep_ratio, entropic=EntropicConfig(max_features=256))
    result = onnx_eprune.prune(model, CALIB_NHWC, **options)
    twin = onnx_eprune.prune(channel_major_twin(model), CALIB_NHWC, **options)
    assert ("subspace_refits" in result.report) == (keep_ratio == 0.9) and "unfitted" not in result.report
    assert kept(result.report) == kept(twin.report)
    assert rel(outputs(result.model, FRESH_NHWC), outputs(twin.model, FRESH_NHWC)) < 1e-5


def two_flattens(shared: bool, nhwc: bool = True) -> onnx.ModelProto:
    """Keras' ``Add()([Flatten()(a), Flatten()(b)])`` as tf2onnx writes it: conv2 and conv3
    (8 -> 16, stride 2) each flattened by a Reshape to ``Concat(batch, [F])``, the two
    targets sharing the one ``[F]`` constant (``shared``), added, then dense1."""
    n = Net(5)
    h1 = n.node("Relu", [n.conv(n.node("Transpose", ["x"], perm=NCHW), 3, 8, name="conv1")])
    features = 16 * POSITIONS
    count = n.const([features], np.int64, name="count")
    flats = []
    for name in ("conv2", "conv3"):
        h = n.node("Relu", [n.conv(h1, 8, 16, name=name, strides=[2, 2])])
        h = n.node("Transpose", [h], perm=NHWC) if nhwc else h
        batch = n.node("Slice", [n.node("Shape", [h]), n.const([0], np.int64), n.const([1], np.int64)])
        target = n.node("Concat", [batch, count if shared else n.const([features], np.int64)], axis=0)
        flats.append(n.node("Reshape", [h, target]))
    h = n.node("MatMul", [n.node("Add", flats), n.const(n.rng.normal(0, 1 / np.sqrt(features), (features, 10)))],
               name="dense1")
    h = n.node("Add", [h, n.const(n.rng.uniform(-0.1, 0.1, 10))], out="y")
    return n.build(h, in_shape=("N", 16, 16, 3), opset=13)


@pytest.mark.parametrize("nhwc", [True, False], ids=["channels-last", "channel-major"])
def test_flattens_sharing_their_feature_count_constant_prune(nhwc):
    """The shared ``[F]`` of two Reshape targets is copied per Reshape, as other shared
    constants are: the added maps' channels (one group) prune exactly as in the model
    whose targets have a constant each. Was: both frozen, "Reshape other than flattening"."""
    results = [onnx_eprune.prune(two_flattens(shared, nhwc), CALIB_NHWC, device="cpu", keep_ratio=0.5)
               for shared in (True, False)]
    onnx.checker.check_model(results[0].model, full_check=True)
    conv2 = group_of(results[0].report, "conv2")
    assert not conv2["frozen"] and conv2["channels_after"] == 8
    assert kept(results[0].report) == kept(results[1].report)
    assert rel(outputs(results[0].model, FRESH_NHWC), outputs(results[1].model, FRESH_NHWC)) < 1e-6
    whole = onnx_eprune.prune(two_flattens(True, nhwc), CALIB_NHWC, device="cpu", keep_ratio=1.0)
    assert rel(outputs(whole.model, FRESH_NHWC), outputs(two_flattens(True, nhwc), FRESH_NHWC)) < 1e-6
