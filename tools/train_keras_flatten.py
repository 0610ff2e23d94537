#!/usr/bin/env python3
"""Train the classic Keras tutorial CNN on Fashion-MNIST and export it to ONNX with tf2onnx.

Makes ``bench/models/keras_flatten_fmnist.onnx``: a trained Keras (TensorFlow) CNN that ends
in a Flatten of an NHWC feature map into a Dense layer, the way tf2onnx writes it. Layers:
Conv2D(32, 3, relu, same) -> MaxPool2D(2) -> Conv2D(64, 3, relu, same) -> MaxPool2D(2) ->
Flatten (7 x 7 x 64 = 3,136 features, channels last) -> Dense(128, relu) -> Dropout(0.3) ->
Dense(10) (logits, no softmax); Adam (Keras defaults, lr 1e-3), batch 128, seed 0, on the
60k train split. Input pixels are ``x / 255`` and nothing else.

The ONNX file is opset 13, input ``input`` (N, 28, 28, 1) float32 NHWC (dynamic batch; no
``inputs_as_nchw``), output ``logits`` (N, 10). It is exported as
``tools/export_thirdparty.py`` exports its Keras models (``tf2onnx.convert.from_function`` on
a ``tf.function`` calling the model with ``training=False``, since tf2onnx's ``from_keras``
does not take Keras 3 models); the net has no BatchNormalization, so that script's
training-mode statistics pass has nothing to do here. The output tensor is renamed to
``logits`` after conversion (tf2onnx calls it after the traced function's output).

The script prints the Keras test accuracy and onnxruntime's on the full 10k test split, the
exported graph's nodes from input to output (with the Transpose perms and the Reshape target,
and whether that target is a constant initializer) and the file size.

It runs in a venv of its own, never in the package's environment::

    python3.11 -m venv /tmp/keras_flatten/venv
    /tmp/keras_flatten/venv/bin/pip install tensorflow-cpu tf2onnx onnx numpy onnxruntime
    /tmp/keras_flatten/venv/bin/python tools/train_keras_flatten.py --epochs 4 --out bench/models

Made with tensorflow-cpu 2.21.0, Keras 3.15.1, tf2onnx 1.17.0, onnx 1.23.2, onnxruntime
1.32.0, numpy 2.4.6, protobuf 7.36.2, Python 3.11.7, on 2 CPU cores: 114 s wall in all
(111 s reported by the script, 98 s of it the 4 epochs of training); test accuracy 90.10%
with Keras and with onnxruntime (identical argmax on all 10k, max |logit difference| 6.7e-6);
1,691,022 bytes. ``--head batchnorm`` (``bench/models/keras_flatten_bn_fmnist.onnx``, same
versions): 142 s wall, 133 s of training; 91.47% with Keras and with onnxruntime (identical
argmax, max |logit difference| 1.1e-5); 434,186 Keras parameters (12,544 of them the
BatchNormalization's); 1,717,014 bytes.
Fashion-MNIST is read from ``/usr/share/datasets/fashion-mnist/*.gz`` (nothing is downloaded).
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

NAMES = {"plain": "keras_flatten_fmnist", "batchnorm": "keras_flatten_bn_fmnist"}
DATA = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions,
    then big-endian int32 dimensions and the data."""
    raw = gzip.open(path, "rb").read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", ndim, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int64) for "train" or "t10k"."""
    x = read_idx(DATA / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(DATA / f"{split}-labels-idx1-ubyte.gz")
    return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int64)


def build(head: str):
    """The CNN; ``head`` "batchnorm" puts a BatchNormalization on the 3,136 flattened
    features (before the first Dense), which tf2onnx folds into a Mul and an Add by a
    constant per feature, in the Flatten's channels-last order."""
    import keras
    from keras import layers

    inp = keras.Input((28, 28, 1), name="input")
    x = layers.Conv2D(32, 3, activation="relu", padding="same")(inp)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    if head == "batchnorm":
        x = layers.BatchNormalization()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name=NAMES[head])


def export(model, path: Path, opset: int):
    """tf2onnx from a tf.function (as tools/export_thirdparty.py); returns the ONNX proto."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def forward(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset)
    inits = {i.name for i in proto.graph.initializer}
    extra = [i.name for i in proto.graph.input if i.name not in inits and i.name != "input"]
    if extra:  # captured constants left as inputs (see export_thirdparty.freeze_captured_constants)
        raise RuntimeError(f"unexpected extra graph inputs: {extra}")
    rename_output(proto, "logits")
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return proto


def rename_output(proto, new: str) -> None:
    (out,) = proto.graph.output
    old = out.name
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    out.name = new


def describe(proto) -> list[str]:
    """One line per node, in graph order, with the attributes and constant inputs that matter."""
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    lines = []
    for n in proto.graph.node:
        info = [f"{a.name}={helper.get_attribute_value(a)}" for a in n.attribute
                if a.name in ("perm", "axis", "kernel_shape", "strides", "pads", "auto_pad", "dilations")]
        for i in n.input:
            if i in inits:
                arr = inits[i]
                info.append(f"{i}: initializer {arr.dtype}{list(arr.shape)}"
                            + (f" = {arr.tolist()}" if arr.size <= 8 else ""))
            elif i in consts:
                info.append(f"{i}: Constant node = {consts[i].tolist()}")
            else:
                info.append(f"{i}: runtime")
        lines.append(f"{n.op_type:10s} {n.name}  [{'; '.join(info)}] -> {list(n.output)}")
    return lines


def io_desc(values) -> list[str]:
    def dim(d):
        return d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")

    return [f"{v.name} {[dim(d) for d in v.type.tensor_type.shape.dim]}" for v in values]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--head", choices=sorted(NAMES), default="plain",
                    help="plain: Flatten -> Dense; batchnorm: Flatten -> BatchNormalization -> Dense")
    ap.add_argument("--out", default="bench/models", help="folder for keras_flatten_fmnist.onnx "
                    "(keras_flatten_bn_fmnist.onnx with --head batchnorm)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    import keras
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    print(f"Python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}, "
          f"tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}", flush=True)
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train = load("train")
    x_test, y_test = load("t10k")

    model = build(args.head)
    model.summary()
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t_train = time.perf_counter()
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, shuffle=True, verbose=2)
    print(f"training: {time.perf_counter() - t_train:.1f} s", flush=True)

    keras_logits = model.predict(x_test, batch_size=1000, verbose=0)
    keras_acc = float((keras_logits.argmax(1) == y_test).mean())
    print(f"Keras test accuracy (10k): {keras_acc:.4%}")

    path = Path(args.out) / f"{NAMES[args.head]}.onnx"
    proto = export(model, path, args.opset)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(None, {"input": x_test[i:i + 1000]})[0]
                                 for i in range(0, len(x_test), 1000)])
    ort_acc = float((ort_logits.argmax(1) == y_test).mean())
    agree = float((ort_logits.argmax(1) == keras_logits.argmax(1)).mean())
    print(f"onnxruntime test accuracy (10k): {ort_acc:.4%}; argmax agreement with Keras {agree:.4%}, "
          f"max |logit difference| {np.abs(ort_logits - keras_logits).max():.3g}")
    if ort_acc != keras_acc:
        print("WARNING: onnxruntime and Keras accuracies differ")

    print(f"\n{path}: {path.stat().st_size:,} bytes, opset "
          f"{next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))}, "
          f"producer {proto.producer_name} {proto.producer_version}")
    print("inputs: ", io_desc(proto.graph.input))
    print("outputs:", io_desc(proto.graph.output))
    print("op types:", " -> ".join(n.op_type for n in proto.graph.node))
    print("nodes (graph order):")
    for line in describe(proto):
        print("  " + line)
    print(f"\ntotal: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
