"""Export PaddlePaddle and TensorFlow/Keras CNNs (random weights) to ONNX for the coverage benchmark.

Issue 3 asks for exports from other frameworks than PyTorch. This runs in a venv of its own,
never in the package's environment (see BENCHMARKS.md for how the venvs are made)::

    /work/venv-paddle/bin/python tools/export_thirdparty.py --cache /work/thirdparty_onnx
    /work/venv-tf/bin/python tools/export_thirdparty.py --cache /work/thirdparty_onnx [--only NAME ...] [--force]

``--framework paddle|tf`` picks the framework (default: whichever of the two is importable).
Every model is built with random weights (nothing is downloaded; the exporters must not touch
the network either), its BatchNorm statistics set from one training-mode pass over random
inputs (so that activations keep a trained network's scale), and written as ``<name>.onnx`` plus a sidecar ``<name>.json`` in the
format of ``tools/export_timm.py`` (name, arch, exporter, input_name, input_shape, opset and
the framework's versions), which ``tools/bench_coverage.py`` reads. ``input_shape`` is the
ONNX input as it really is (NHWC for the TensorFlow exports that keep their layout).
Failures go to ``export_failures.json`` in the cache, merged with the other framework's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_jobs import ExportJob, export_each, load_failures  # noqa: E402

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# paddle2onnx switches polygraphy's pip auto-install on before its constant folding; polygraphy
# reads the switch once, at import, so importing it first (with the switch off) keeps exports offline
os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"

NUM_CLASSES = 5  # segmentation classes of the two hand-written nets


@dataclass(frozen=True)
class Job:
    """One export: ``stem`` names the files, ``arch`` the architecture as its framework calls it."""

    stem: str
    arch: str
    build: Callable[[int], object]  # input size -> model with random weights
    size: int = 96
    opset: int = 13
    nchw: bool = True  # TensorFlow only: ask tf2onnx for an NCHW input (inputs_as_nchw)
    any_size: bool = False  # TensorFlow only: an input of unknown height and width (probed at ``size``)
    spatial: int = 2  # TensorFlow only: spatial axes of the input (1: a sequence of ``size`` steps)


# -- PaddlePaddle ------------------------------------------------------------------------------
def paddle_vision(arch: str) -> Callable[[int], object]:
    """A ``paddle.vision.models`` constructor with random weights."""

    def build(size: int):
        import paddle

        return getattr(paddle.vision.models, arch)(pretrained=False)

    return build


def paddle_segnet(size: int):
    """A small U-Net/FPN: Hardswish, SE, Conv2DTranspose and nearest/bilinear resizing,
    Concat skips and an FPN-style lateral Add, then a 1x1 conv head."""
    import paddle
    from paddle import nn
    import paddle.nn.functional as F

    def cba(cin: int, cout: int, stride: int = 1, act: type = nn.Hardswish) -> nn.Sequential:
        return nn.Sequential(nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False), nn.BatchNorm2D(cout), act())

    class SE(nn.Layer):
        def __init__(self, c: int):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Sequential(nn.Conv2D(c, c // 4, 1), nn.ReLU(), nn.Conv2D(c // 4, c, 1), nn.Hardsigmoid())

        def forward(self, x):
            return x * self.fc(self.pool(x))

    class SegNet(nn.Layer):
        def __init__(self):
            super().__init__()
            self.enc1 = nn.Sequential(cba(3, 16, act=nn.ReLU), cba(16, 16))
            self.enc2 = nn.Sequential(cba(16, 32, 2), SE(32))
            self.enc3 = nn.Sequential(cba(32, 64, 2), cba(64, 64), SE(64))
            self.up2 = nn.Conv2DTranspose(64, 32, 2, stride=2)
            self.dec2 = cba(64, 32)
            self.dec1 = cba(48, 16)
            self.lateral = nn.Conv2D(64, 16, 1)
            self.head = nn.Conv2D(16, NUM_CLASSES, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            e3 = self.enc3(e2)
            d2 = self.dec2(paddle.concat([self.up2(e3), e2], axis=1))
            # sizes, not scale factors: paddle2onnx 2.1 refuses interpolate with a scale_factor
            # ("the 0th elementwise MUST be ir::FloatAttribute"); PaddleSeg resizes to the skip's
            # runtime shape like this (Shape -> Slice -> Resize sizes in ONNX)
            up = F.interpolate(d2, size=paddle.shape(e1)[2:], mode="bilinear", align_corners=False)
            d1 = self.dec1(paddle.concat([up, e1], axis=1))
            top = F.interpolate(self.lateral(e3), size=e1.shape[2:], mode="nearest")  # a static size
            return self.head(d1 + top)

    return SegNet()


def paddle_decoder(size: int):
    """A small encoder-decoder whose two Conv2DTranspose layers pad "SAME" (paddle2onnx
    writes ``auto_pad`` SAME_UPPER), with Concat skips and a 1x1 conv head."""
    import paddle
    from paddle import nn

    def cba(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU())

    class Decoder(nn.Layer):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2, self.enc3 = cba(3, 16), cba(16, 32, 2), cba(32, 64, 2)
            self.up2 = nn.Conv2DTranspose(64, 32, 3, stride=2, padding="SAME")
            self.up1 = nn.Conv2DTranspose(32, 16, 4, stride=2, padding="SAME")
            self.dec2, self.dec1 = cba(64, 32), cba(32, 16)
            self.head = nn.Conv2D(16, NUM_CLASSES, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            d2 = self.dec2(paddle.concat([self.up2(self.enc3(e2)), e2], axis=1))
            return self.head(self.dec1(paddle.concat([self.up1(d2), e1], axis=1)))

    return Decoder()


def paddle_jobs() -> list[Job]:
    """paddle.vision models, the segmentation net and the decoder at opset 13, two of them
    again at opset 11; GoogLeNet's auxiliary heads (5x5/3 pooling into a fixed-size Linear)
    need 224x224."""
    archs = [("mobilenet_v3_small", 96), ("mobilenet_v3_large", 96), ("mobilenet_v2", 96), ("resnet18", 96),
             ("resnet50", 96), ("shufflenet_v2_x1_0", 96), ("densenet121", 96), ("squeezenet1_1", 96),
             ("googlenet", 224), ("inception_v3", 96), ("mobilenet_v1", 96), ("resnext50_32x4d", 96),
             ("wide_resnet50_2", 96), ("shufflenet_v2_swish", 96), ("vgg16", 224), ("alexnet", 224)]
    jobs = [Job(f"paddle_{a}", a, paddle_vision(a), s) for a, s in archs]
    jobs.append(Job("paddle_segnet", "segnet (U-Net/FPN)", paddle_segnet))
    jobs.append(Job("paddle_decoder", "decoder (Paddle)", paddle_decoder))
    jobs += [Job("paddle_mobilenet_v3_large.op11", "mobilenet_v3_large", paddle_vision("mobilenet_v3_large"), opset=11),
             Job("paddle_segnet.op11", "segnet (U-Net/FPN)", paddle_segnet, opset=11)]
    return jobs


def recalibrate_paddle_batchnorm(model, size: int, samples: int = 32) -> None:
    """Set every BatchNorm's moving mean and variance to one training-mode batch of
    standard-normal inputs, as ``recalibrate_keras_batchnorm`` does for Keras: the random MobileNets
    and ShuffleNet otherwise end at logits of 1e-8 to 1e-5 (ResNet-50 at 1e3), where the
    hard-sigmoid gates of SE blocks are constant and the network is nearly linear."""
    import numpy as np
    import paddle

    # BatchNorm2D and the older paddle.nn.BatchNorm (DenseNet) share no public base class
    bns = [layer for layer in model.sublayers() if hasattr(layer, "_momentum") and hasattr(layer, "_variance")]
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((samples, 3, size, size)).astype("float32"))
    momenta = [bn._momentum for bn in bns]
    for bn in bns:
        bn._momentum = 0.0  # the moving statistics become this batch's
    model.train()
    with paddle.no_grad():
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn._momentum = momentum


def export_paddle(job: Job, path: Path) -> dict:
    import paddle
    import paddle2onnx
    import polygraphy.config  # noqa: F401  (see POLYGRAPHY_AUTOINSTALL_DEPS above)

    paddle.seed(0)
    model = job.build(job.size)
    recalibrate_paddle_batchnorm(model, job.size)
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, job.size, job.size], "float32", "input")]  # dynamic batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paddle.onnx.export(model, str(path.with_suffix("")), input_spec=spec, opset_version=job.opset)
    return {"exporter": exporter_label("paddle", job), "framework": "paddlepaddle",
            "framework_version": paddle.__version__, "exporter_version": paddle2onnx.__version__,
            "batchnorm_statistics": "one training-mode pass, 32 N(0,1) inputs", "params": int(sum(int(p.numel()) for p in model.parameters()))}


# -- TensorFlow / Keras -----------------------------------------------------------------------
def keras_app(arch: str) -> Callable[[int], object]:
    """A ``keras.applications`` constructor with random weights (weights=None)."""

    def build(size: int):
        import keras

        return getattr(keras.applications, arch)(input_shape=(size, size, 3), weights=None)

    return build


def keras_app_any_size(arch: str) -> Callable[[int | None], object]:
    """A ``keras.applications`` backbone with random weights for inputs of any size
    (``size`` None: unknown height and width; Keras builds its classifier only at a fixed
    size, so the backbone is global-average-pooled into a Dense(10) head of its own)."""

    def build(size: int | None):
        import keras

        base = getattr(keras.applications, arch)(input_shape=(size, size, 3), weights=None, include_top=False,
                                                  pooling="avg")
        return keras.Model(base.input, keras.layers.Dense(10)(base.output))

    return build


def keras_cba(x, c: int, act: str = "relu"):
    """Keras' 3x3 Conv2D (no bias) -> BatchNormalization -> activation ``act`` on ``x``."""
    from keras import layers

    x = layers.Conv2D(c, 3, padding="same", use_bias=False)(x)
    return layers.Activation(act)(layers.BatchNormalization()(x))


def keras_unet(size: int):
    """A small Keras U-Net: SE and hard-swish, Conv2DTranspose, bilinear and nearest
    UpSampling2D, Concatenate skips, a 1x1 conv head."""
    import keras
    from keras import layers

    def se(x, c: int):
        s = layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = layers.Conv2D(c // 4, 1, activation="relu")(s)
        return layers.Multiply()([x, layers.Conv2D(c, 1, activation="hard_sigmoid")(s)])

    inp = keras.Input((size, size, 3), name="input")
    c1 = keras_cba(keras_cba(inp, 16), 16)
    c2 = se(keras_cba(layers.MaxPooling2D()(c1), 32, "hard_swish"), 32)
    c3 = se(keras_cba(layers.MaxPooling2D()(c2), 64, "hard_swish"), 64)
    u2 = keras_cba(layers.Concatenate()([layers.Conv2DTranspose(32, 2, strides=2)(c3), c2]), 32)
    u1 = keras_cba(layers.Concatenate()([layers.UpSampling2D(2, interpolation="bilinear")(u2), c1]), 16)
    top = layers.UpSampling2D(4, interpolation="nearest")(layers.Conv2D(16, 1)(c3))
    out = layers.Conv2D(NUM_CLASSES, 1)(layers.Concatenate()([u1, top]))
    return keras.Model(inp, out, name="unet")


def keras_decoder(size: int | None):
    """A small Keras encoder-decoder for inputs of any size (``size`` None: unknown height
    and width): two poolings, two Conv2DTranspose(padding="same") with Concatenate skips, a
    1x1 conv head; no UpSampling2D, whose bilinear mode Keras cannot trace at unknown sizes."""
    import keras
    from keras import layers

    inp = keras.Input((size, size, 3), name="input")
    c1 = keras_cba(inp, 16)
    c2 = keras_cba(layers.MaxPooling2D()(c1), 32)
    c3 = keras_cba(layers.MaxPooling2D()(c2), 64)
    u2 = keras_cba(layers.Concatenate()([layers.Conv2DTranspose(32, 3, strides=2, padding="same")(c3), c2]), 32)
    u1 = keras_cba(layers.Concatenate()([layers.Conv2DTranspose(16, 4, strides=2, padding="same")(u2), c1]), 16)
    return keras.Model(inp, layers.Conv2D(NUM_CLASSES, 1)(u1), name="decoder")


def keras_aspp(size: int | None):
    """A small Keras DeepLabV3-style segmenter for inputs of any size (``size`` None:
    unknown height and width): a stride-4 stem, then atrous spatial pyramid pooling (a 1x1
    branch, 3x3 convolutions at dilation rates 2 and 4 and a separable one, depthwise at
    rate 3) concatenated into a 1x1 projection and a 1x1 conv head. At an unknown size
    tf2onnx writes each dilated convolution as a space-to-batch: Transposes that swap the
    batch and channel axes around SpaceToDepth / DepthToSpace, with pads and crops computed
    from a Shape."""
    import keras
    from keras import layers

    def branch(x, c: int, rate: int):
        x = layers.Conv2D(c, 3, padding="same", dilation_rate=rate, use_bias=False)(x)
        return layers.Activation("relu")(layers.BatchNormalization()(x))

    inp = keras.Input((size, size, 3), name="input")
    x = keras_cba(layers.MaxPooling2D()(keras_cba(inp, 16)), 32)
    x = keras_cba(layers.MaxPooling2D()(x), 48)
    separable = layers.DepthwiseConv2D(3, padding="same", dilation_rate=3, use_bias=False)(x)
    separable = layers.Activation("relu")(layers.BatchNormalization()(separable))
    separable = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(32, 1)(separable)))
    pyramid = [layers.Activation("relu")(layers.Conv2D(32, 1)(x)), branch(x, 32, 2), branch(x, 32, 4), separable]
    x = layers.Activation("relu")(layers.Conv2D(48, 1)(layers.Concatenate()(pyramid)))
    return keras.Model(inp, layers.Conv2D(NUM_CLASSES, 1)(x), name="aspp")


def keras_tcn(size: int | None):
    """A small Keras temporal convolutional network on sequences of 3 features of any length
    (``size`` None: unknown): three residual blocks of two Conv1D(padding="same") at
    dilation rates 1, 2 and 4 with BatchNormalization, a causal dilated Conv1D, global
    average pooling and a Dense classifier. At an unknown length tf2onnx writes each dilated
    "same" convolution as TensorFlow's general SpaceToBatchND: Reshapes that merge blocks of
    steps into the batch and split them out again, around Transposes."""
    import keras
    from keras import layers

    def block(x, c: int, rate: int):
        y = x
        for _ in range(2):
            y = layers.Conv1D(c, 3, padding="same", dilation_rate=rate, use_bias=False)(y)
            y = layers.Activation("relu")(layers.BatchNormalization()(y))
        skip = x if x.shape[-1] == c else layers.Conv1D(c, 1)(x)
        return layers.Add()([skip, y])

    inp = keras.Input((size, 3), name="input")
    x = block(block(block(inp, 16, 1), 32, 2), 32, 4)
    x = layers.Conv1D(32, 3, padding="causal", dilation_rate=8, activation="relu")(x)
    return keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling1D()(x)), name="tcn")


def keras_space_to_depth(size: int):
    """A small Keras CNN that downsamples by ``tf.nn.space_to_depth`` and upsamples by
    ``tf.nn.depth_to_space`` (TensorFlow's DCR order) between its convolutions."""
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input((size, size, 3), name="input")
    x = keras_cba(inp, 16)
    x = keras_cba(layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(x), 32)
    x = keras_cba(x, 64)
    x = keras_cba(layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(x), 16)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x), name="space_to_depth_cnn")


def keras_groupnorm(size: int):
    """A small Keras CNN with GroupNormalization after each convolution and a residual block."""
    import keras
    from keras import layers

    def cgr(x, c: int, groups: int, stride: int = 1):
        x = layers.Conv2D(c, 3, strides=stride, padding="same", use_bias=False)(x)
        return layers.Activation("relu")(layers.GroupNormalization(groups)(x))

    inp = keras.Input((size, size, 3), name="input")
    x = cgr(inp, 16, 4)
    x = cgr(x, 32, 8, 2)
    x = layers.Add()([x, cgr(cgr(x, 32, 8), 32, 4)])
    x = cgr(x, 64, 16, 2)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x), name="groupnorm_cnn")


def tf_jobs() -> list[Job]:
    """keras.applications models, the U-Net and the GroupNorm CNN with an NCHW input at opset
    13; three again with the native NHWC input, one at opset 11."""
    archs = ["MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50", "EfficientNetB0", "DenseNet121"]
    jobs = [Job(f"keras_{a}", a, keras_app(a)) for a in archs]
    jobs.append(Job("keras_unet", "unet (Keras)", keras_unet))
    jobs += [Job(f"keras_{a}.nhwc", a, keras_app(a), nchw=False) for a in ("MobileNetV3Small", "ResNet50")]
    jobs += [Job("keras_unet.nhwc", "unet (Keras)", keras_unet, nchw=False),
             Job("keras_MobileNetV3Large.op11", "MobileNetV3Large", keras_app("MobileNetV3Large"), opset=11)]
    # ConvNeXtTiny is left out: tf2onnx 1.17 leaves Keras 3's depthwise Conv2D (groups=C) a
    # StatefulPartitionedCall, which no ONNX runtime runs
    more = ["Xception", "InceptionV3", "InceptionResNetV2", "EfficientNetV2B0", "NASNetMobile", "VGG16", "ResNet50V2"]
    jobs += [Job(f"keras_{a}", a, keras_app(a)) for a in more]
    jobs += [Job("keras_groupnorm", "GroupNorm CNN (Keras)", keras_groupnorm),
             Job("keras_groupnorm.nhwc", "GroupNorm CNN (Keras)", keras_groupnorm, nchw=False),
             Job("keras_space_to_depth", "space_to_depth CNN (Keras)", keras_space_to_depth),
             # tf2onnx crops the Conv2DTranspose of an input of unknown size to a size read from a Shape
             Job("keras_decoder", "decoder (Keras)", keras_decoder),
             Job("keras_decoder.any_size", "decoder (Keras)", keras_decoder, any_size=True),
             # and writes a dilated convolution at an unknown size as a space-to-batch
             Job("keras_aspp", "ASPP segmenter (Keras)", keras_aspp),
             Job("keras_aspp.any_size", "ASPP segmenter (Keras)", keras_aspp, any_size=True),
             # and, in 1-D (or with unequal rates), as the general SpaceToBatchND
             Job("keras_tcn", "TCN (Keras)", keras_tcn, nchw=False, spatial=1),
             Job("keras_tcn.any_size", "TCN (Keras)", keras_tcn, nchw=False, spatial=1, any_size=True)]
    jobs += [Job(f"keras_{a}.any_size", a, keras_app_any_size(a), any_size=True)
             for a in ("MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121")]
    return jobs


def freeze_captured_constants(proto, concrete) -> list[str]:
    """Turn graph inputs that are tensors captured by the traced function into initializers.

    tf2onnx freezes captured variables but leaves captured constant tensors as extra graph
    inputs; Keras 3 keeps an unadapted ``Normalization`` layer's mean and variance that way
    (EfficientNet's input normalisation), and so does Keras' own ``model.export(format="onnx")``.
    Returns the names frozen.
    """
    import onnx.numpy_helper
    import tensorflow as tf

    values = {internal.name: external.numpy() for external, internal in concrete.graph.captures
              if external.dtype != tf.resource}
    frozen = [i for i in proto.graph.input if i.name in values]
    for inp in frozen:
        proto.graph.initializer.append(onnx.numpy_helper.from_array(values[inp.name], inp.name))
        proto.graph.input.remove(inp)
    return [i.name for i in frozen]


def recalibrate_keras_batchnorm(model, size: int, samples: int = 32, spatial: int = 2) -> None:
    """Set every BatchNormalization's moving mean and variance to the statistics of one
    training-mode pass over standard-normal inputs (the benchmark's input distribution).

    With Keras' random initialisation (moving variance 1, Glorot kernels) the activations of
    MobileNet and EfficientNet shrink block by block: their logits have a standard deviation
    of 1e-12 to 1e-8, the softmax output is uniform, and every output-error check would pass
    trivially. Normalised activations, as in a trained network, keep the checks meaningful.
    """
    import keras
    import numpy as np

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    x = np.random.default_rng(2).standard_normal((samples, *(size,) * spatial, 3)).astype("float32")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # the moving statistics become this batch's
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def export_tf(job: Job, path: Path) -> dict:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    size = None if job.any_size else job.size
    model = job.build(size)
    recalibrate_keras_batchnorm(model, job.size, spatial=job.spatial)
    spec = (tf.TensorSpec((None, *(size,) * job.spatial, 3), tf.float32, name="input"),)

    # a tf.function rather than from_keras: tf2onnx's from_keras does not take Keras 3 models
    @tf.function(input_signature=spec)
    def forward(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=job.opset,
                                             inputs_as_nchw=["input"] if job.nchw else None)
    frozen = freeze_captured_constants(proto, forward.get_concrete_function())
    onnx.save(proto, str(path))
    return {"exporter": exporter_label("tf", job), "framework": "tensorflow",
            "framework_version": tf.__version__, "keras_version": keras.__version__,
            "exporter_version": tf2onnx.__version__, "layout": "NCHW" if job.nchw else "NHWC",
            "frozen_captured_inputs": frozen, "batchnorm_statistics": "one training-mode pass, 32 N(0,1) inputs",
            "params": int(model.count_params())}


# -- common -----------------------------------------------------------------------------------
def exporter_label(framework: str, job: Job) -> str:
    """The benchmark table's exporter column (it has no opset or layout column)."""
    if framework == "paddle":
        return f"paddle2onnx, opset {job.opset}"
    size = (", any length" if job.spatial == 1 else ", any H x W") if job.any_size else ""
    layout = "NCHW" if job.nchw else "NLC" if job.spatial == 1 else "NHWC"
    return f"tf2onnx, opset {job.opset}, {layout} input{size}"


FRAMEWORKS: dict[str, tuple[Callable[[], list[Job]], Callable[[Job, Path], dict]]] = {
    "paddle": (paddle_jobs, export_paddle), "tf": (tf_jobs, export_tf)}


def onnx_input(path: Path, size: int | None = None) -> tuple[str, list[int], int]:
    """The model's first graph input (name, shape with a dynamic batch read as 1 and, given
    ``size``, dynamic height and width read as ``size``) and opset, as written, so that the
    sidecar describes the file rather than the request."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    if size is not None:
        dims = [dims[0]] + [d or size for d in dims[1:]]
    if any(d <= 0 for d in dims[1:]):
        raise ValueError(f"input {inp.name} has dynamic non-batch dimensions: {dims}")
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return inp.name, [1] + dims[1:], opset


def export_one(job: Job, export: Callable[[Job, Path], dict], cache: Path) -> dict:
    path = cache / f"{job.stem}.onnx"
    t0 = time.perf_counter()
    extra = export(job, path)
    input_name, shape, opset = onnx_input(path, job.size if job.any_size else None)
    meta = {"name": job.stem, "arch": job.arch, "exporter": extra.pop("exporter"), "input_name": input_name,
            "input_shape": shape, "opset": opset, **extra, "made_by": "tools/export_thirdparty.py",
            "export_seconds": round(time.perf_counter() - t0, 2)}
    (cache / f"{job.stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def detect_framework() -> str:
    for name, module in (("paddle", "paddle"), ("tf", "tensorflow")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise SystemExit("neither paddle nor tensorflow is importable: run this in /work/venv-paddle or /work/venv-tf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/thirdparty_onnx")
    ap.add_argument("--framework", choices=sorted(FRAMEWORKS), help="default: the importable one")
    ap.add_argument("--only", nargs="*", help="export only these file stems (e.g. paddle_resnet18 keras_unet.nhwc)")
    ap.add_argument("--force", action="store_true", help="re-export files that exist")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    framework = args.framework or detect_framework()
    make_jobs, export = FRAMEWORKS[framework]
    jobs = [j for j in make_jobs() if not args.only or j.stem in args.only]

    # paddle2onnx calls sys.exit on a failure
    export_each(cache, [ExportJob(job.stem, job.arch, exporter_label(framework, job),
                                  lambda job=job: export_one(job, export, cache)) for job in jobs],
                args.force, load_failures(cache), catch=(Exception, SystemExit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
