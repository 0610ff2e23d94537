"""Load, normalise and save ONNX models: the only place that touches files of models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from ..errors import EPruneError, UsageError
from ..files import temporary_beside, write_atomic

# Protobuf refuses to serialise a message above 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialised size of ``model``, summed part by part: protobuf's own ``ByteSize()``
    refuses a message above 2 GiB, which is exactly when the answer matters."""
    graph = model.graph
    parts = [graph.initializer, graph.sparse_initializer, graph.node, model.functions]
    return sum(item.ByteSize() for part in parts for item in part) + 4096  # names, I/O, metadata


def load_model(path: str | os.PathLike, weights: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (with its external data, if any, unless ``weights`` is False: the
    structure is enough to check inputs) and check that it is a model.

    Raises UsageError for a missing path, a directory or a file that is not ONNX.
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"model file not found: {p}")
    if p.is_dir():
        raise UsageError(f"model path is a directory, expected an .onnx file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=weights)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise UsageError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise UsageError(f"{p} holds no graph nodes: not an ONNX model, or an empty one")
    return model


def as_model(model_or_path: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """Accept a ModelProto or a path; always return a private copy that may be modified."""
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy
    return load_model(model_or_path)


def check_model(model: onnx.ModelProto) -> None:
    """Run the full ONNX checker (with shape inference); raise EPruneError if it fails.

    Protobuf cannot hold a model above 2 GiB in one message, so such a model is checked
    from a temporary copy on disk with its weights as external data (the checker reads
    those files itself).
    """
    try:
        if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=True)
        else:
            with tempfile.TemporaryDirectory(prefix="onnx-eprune-check-") as folder:
                path = os.path.join(folder, "model.onnx")
                onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                                location="model.onnx.data", size_threshold=1024)
                _take_back_weights(model, folder)
                onnx.checker.check_model(path, full_check=True)
    except Exception as exc:
        raise EPruneError(f"model does not pass onnx.checker: {str(exc).splitlines()[0]}") from None


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn main-graph Constant nodes that hold a tensor into initializers.

    Exporters differ in how they store weights; after this every constant weight of the
    main graph is an initializer, so the analysis and the rewrite look in one place.
    Returns the number of nodes converted.
    """
    graph = model.graph
    kept, converted = [], 0
    for node in graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        converted += 1
    if converted:
        del graph.node[:]
        graph.node.extend(kept)
    return converted


# Never evaluated ahead of time: random ops differ per run, control flow holds sub-graphs.
_NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                           "Multinomial", "Bernoulli", "If", "Loop", "Scan", "Dropout"})


def fold_constants(model: onnx.ModelProto) -> int:
    """Replace main-graph nodes whose inputs are all initializers by initializers.

    Exporters put Identity (de-duplicated weights), Cast (half-precision weights) and whole
    computations (weight standardisation in NFNets) between an initializer and the layer
    that uses it; evaluating them once (with onnx's reference implementation) lets the
    analysis see those weights as the constants they are. Returns the number of nodes folded.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    opset = [o for o in model.opset_import]
    kept, folded = [], 0
    for node in graph.node:
        names = [n for n in node.input if n]
        if node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx") or not names or \
                any(n not in inits or n in graph_inputs for n in names):
            kept.append(node)
            continue
        try:
            sub = onnx.helper.make_graph([node], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output],
                                         [inits[n] for n in dict.fromkeys(names)])
            values = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=opset)).run(None, {})
        except Exception:  # leave anything the reference cannot evaluate to the runtime
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            inits[name] = graph.initializer[-1]
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            t = onnx.TensorProto()
            t.CopyFrom(attr.t)
            return t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None  # sparse tensors and strings stay Constant nodes


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically: a temporary file in the target folder, then a rename.

    Models above the protobuf limit are written with their weights as external data in
    ``<name>.data`` beside the file. Nothing is left behind if writing fails.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output folder is not writable: {folder}")
    if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        write_atomic(target, lambda f: f.write(model.SerializeToString(deterministic=True)))
        return
    tmp = temporary_beside(target)
    data_name = target.name + ".data"
    tmp_data = folder / f".{data_name}.tmp"
    try:
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=tmp_data.name, size_threshold=1024)
        _take_back_weights(model, str(folder))  # the caller's model keeps its weights
        os.replace(tmp_data, folder / data_name)
        _relink_external_data(tmp, data_name)
        os.replace(tmp, target)
    except OSError as exc:
        raise EPruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        for leftover in (Path(tmp), tmp_data):
            if leftover.exists():
                leftover.unlink()


def _take_back_weights(model: onnx.ModelProto, folder: str) -> None:
    """Saving with external data moved the weights out of ``model``: read them back (no
    second copy) and leave the tensors as they were (no explicit data_location field)."""
    load_external_data_for_model(model, folder)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")


def _relink_external_data(model_file: str, data_name: str) -> None:
    """Point the external-data entries of a just-written file at its final data file name."""
    model = onnx.load(model_file, load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = data_name
    with open(model_file, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


def normalize(model: onnx.ModelProto) -> None:
    """Put every constant weight of the main graph into an initializer of its own (in
    place): Constant nodes become initializers, constant Identity/Cast/... chains are folded,
    initializers nothing reads any more are dropped, and tensors (not scalars) read by
    several nodes are copied per reader, so that pruning one reader does not break another
    (exporters de-duplicate equal constants, e.g. identical BatchNorm parameters)."""
    constants_to_initializers(model)
    if fold_constants(model):
        used = _referenced_names(model.graph) | {o.name for o in model.graph.output}
        kept = [i for i in model.graph.initializer if i.name in used]
        if len(kept) < len(model.graph.initializer):
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
    _unshare_initializers(model)


def _unshare_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    protected = {i.name for i in graph.input} | {o.name for o in graph.output}
    taken = set(inits) | {o for n in graph.node for o in n.output}
    seen: set[str] = set()
    for node in graph.node:
        for pos, name in enumerate(node.input):
            init = inits.get(name)
            if init is None or name in protected or int(np.prod(init.dims, dtype=np.int64)) <= 1:
                continue
            if name not in seen:
                seen.add(name)
                continue
            i = 1
            while f"{name}.{i}" in taken:
                i += 1
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = f"{name}.{i}"
            taken.add(copy.name)
            graph.initializer.append(copy)
            node.input[pos] = copy.name


def _referenced_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _referenced_names(g)
    return names


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers by name."""
    return {init.name: init for init in model.graph.initializer}
