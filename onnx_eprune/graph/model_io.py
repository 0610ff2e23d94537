"""Load, normalise and save ONNX models: the only place that touches files of models."""

from __future__ import annotations

import heapq
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from ..errors import EPruneError, UsageError
from ..files import Replacing, require_file, same_file, temporary_beside, write_atomic
from .groups import node_label

log = logging.getLogger("onnx_eprune")

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers whose weights are counted and pruned

# Protobuf refuses to serialise a message above 2 GiB; stay well below it. Models whose
# weights (external data included) reach this size are written with external data, and
# their large external tensors are not read into memory (see load_model).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

# External tensors of a large model from this size on stay in their file while the model
# is in memory ("references"); smaller ones are read (shape constants, biases).
REFERENCE_MIN_BYTES = 1 << 20

# onnx.save_model moves a tensor to the data file when sys.getsizeof(raw_data) reaches its
# size_threshold (1024): the bytes object's header counts too. Written files keep that layout.
_EXTERNAL_MIN_RAW = 1024 - sys.getsizeof(b"")

_COPY_CHUNK = 64 << 20  # bytes per read when a referenced tensor is copied to a new data file


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialised size of ``model`` with every weight inside it (references counted at their
    length), summed part by part: protobuf's own ``ByteSize()`` refuses a message above
    2 GiB, which is exactly when the answer matters."""
    graph = model.graph
    parts = [graph.initializer, graph.sparse_initializer, graph.node, model.functions]
    inline = sum(item.ByteSize() for part in parts for item in part) + 4096  # names, I/O, metadata
    return inline + sum(ref[2] for ref in map(reference, graph.initializer) if ref is not None)


def saved_size(model: onnx.ModelProto) -> int:
    """The bytes :func:`save_model` writes for ``model``: exact below the protobuf limit; above
    it (a graph file and a data file) :func:`model_bytes`'s estimate."""
    size = model_bytes(model)
    return _embedded(model).ByteSize() if size < EXTERNAL_DATA_THRESHOLD else size


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes the ONNX file at ``path`` takes with its external data files (each file counted
    once, however many tensors it holds)."""
    return Path(path).stat().st_size + sum(os.path.getsize(f) for f in data_files(path) if os.path.isfile(f))


def data_files(path: str | os.PathLike) -> list[str]:
    """The external data files the ONNX file at ``path`` names (absolute, each once; a
    missing one too); none for a file that is no model."""
    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # not a model: the commands that read it say so
        return []
    return sorted({os.path.realpath(p.parent / ExternalDataInfo(t).location)
                   for t in all_tensors(model.graph) if uses_external_data(t)})


# -- references: large tensors left in the input's data file ---------------------------------

def reference(tensor: onnx.TensorProto) -> tuple[str, int, int] | None:
    """(absolute path, offset, length in bytes) of a tensor whose data stayed in a file, or
    None for a tensor held in memory.

    load_model leaves the large external tensors of a large model in their file and names
    the file by absolute path (which no ONNX file may do, so such an entry is always one of
    ours); every reader here resolves them, nothing else sees them except through
    initializer_map, tensor_array or the light models of light_copy.
    """
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    if not os.path.isabs(location):
        return None
    return location, int(entries["offset"]), int(entries["length"])


def point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` external data: ``length`` bytes at ``offset`` of file ``location``."""
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The value of an initializer as a new array, read from its file for a reference."""
    ref = reference(tensor)
    if ref is None:
        return numpy_helper.to_array(tensor)
    path, offset, length = ref
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if sys.byteorder == "little" and dtype.kind in "biuf" and count * dtype.itemsize == length:
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(materialized(tensor))  # packed 4-bit types and the like


def reference_chunks(tensor: onnx.TensorProto) -> Iterator[bytes]:
    """The bytes of a reference (see :func:`reference`), read from its file in pieces of at
    most ``_COPY_CHUNK``, so that a large tensor is never held whole."""
    path, offset, left = reference(tensor)
    with open(path, "rb") as f:
        f.seek(offset)
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise OSError(f"{path} ends before the data of tensor {tensor.name!r}")
            yield chunk
            left -= len(chunk)


def materialized(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` with its data inside (a new message for a reference, else ``tensor``)."""
    ref = reference(tensor)
    if ref is None:
        return tensor
    path, offset, length = ref
    out = onnx.TensorProto()
    _copy_fields(tensor, out, skip=("external_data", "data_location"))
    with open(path, "rb") as f:
        f.seek(offset)
        out.raw_data = f.read(length)
    out.data_location = onnx.TensorProto.DEFAULT  # as onnx.load leaves tensors it read from a file
    return out


class _Initializers(Mapping):
    """Initializers by name; a reference is read from its file on each access (a copy of
    that tensor only, dropped by the caller), so that the weights of layers that are never
    looked at stay on disk."""

    def __init__(self, model: onnx.ModelProto):
        self._inits = {init.name: init for init in model.graph.initializer}

    def __getitem__(self, name: str) -> onnx.TensorProto:
        return materialized(self._inits[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._inits)

    def __len__(self) -> int:
        return len(self._inits)


def _copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Copy the fields of protobuf message ``src`` into ``dst`` except those in ``skip``
    (which are never read, so that a large field is not copied on the way)."""
    for field in src.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        value = getattr(src, field.name)
        if field.is_repeated:
            if len(value):
                getattr(dst, field.name).extend(value)
        elif src.HasField(field.name):
            if field.type == field.TYPE_MESSAGE:
                getattr(dst, field.name).CopyFrom(value)
            else:
                setattr(dst, field.name, value)


def light_copy(model: onnx.ModelProto, lift: Callable[[onnx.TensorProto], bool]
               ) -> tuple[onnx.ModelProto, dict[int, onnx.TensorProto]]:
    """A copy of ``model`` whose references, and the in-memory main-graph initializers for
    which ``lift`` is true, are placeholders: the same tensor without its data (and no
    location). Returns the copy and, by the placeholder's position among the copy's
    initializers, the source tensor in ``model``.

    Built field by field, so that no large tensor is copied as a protobuf message.
    """
    light = onnx.ModelProto()
    _copy_fields(model, light, skip=("graph",))
    _copy_fields(model.graph, light.graph, skip=("initializer",))
    sources = {}
    for index, init in enumerate(model.graph.initializer):
        if reference(init) is None and (uses_external_data(init) or not lift(init)):
            light.graph.initializer.append(init)
            continue
        _copy_fields(init, light.graph.initializer.add(), skip=("raw_data", "external_data", "data_location"))
        sources[index] = init
    return light, sources


def load_model(path: str | os.PathLike, weights: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (with its external data, if any, unless ``weights`` is False: the
    structure is enough to check inputs) and check that it is a model.

    A model whose weights reach EXTERNAL_DATA_THRESHOLD keeps its external tensors of
    REFERENCE_MIN_BYTES or more in their file (see ``reference``): the weights are then
    held once, by the operating system's file cache, and only the tensors that pruning
    changes come into memory. Write such a model with save_model, which copies them to
    the new data file.

    Raises UsageError for a missing path, a directory or a file that is not ONNX.
    """
    p = Path(path)
    require_file(p, "model", "an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
        if weights:
            _read_external_data(model, p.parent)
    except UsageError:
        raise
    except OSError as exc:  # the file is there, but not for us to read
        raise UsageError(f"cannot read model file {exc.filename or p}: {exc.strerror or exc}; check the permissions "
                         "or choose another path") from None
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise UsageError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc}); give a complete .onnx "
                         "file (export or copy it again)") from None
    return model


def _read_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Read the external data of ``model`` from ``folder`` as onnx.load does, except the
    large main-graph tensors of a large model: those become references (absolute path,
    offset and length checked here)."""
    spans = {}
    for init in model.graph.initializer:
        if uses_external_data(init):
            spans[init.name] = _external_span(init, folder)
    large = model_bytes(model) + sum(length for _, _, length in spans.values()) >= EXTERNAL_DATA_THRESHOLD
    for init in model.graph.initializer:
        span = spans.get(init.name)
        if large and span is not None and span[2] >= REFERENCE_MIN_BYTES:
            point_to(init, *span)
    for tensor in all_tensors(model.graph):
        if uses_external_data(tensor) and reference(tensor) is None:
            load_external_data_for_tensor(tensor, str(folder))
            # onnx sets the location to DEFAULT explicitly: cleared, the tensor is written as
            # an inline one is (the same bytes out of the same model, whichever form it came in)
            tensor.ClearField("data_location")


def _external_span(tensor: onnx.TensorProto, folder: Path) -> tuple[str, int, int]:
    """Absolute path, offset and length of an external tensor of a model in ``folder``;
    ValueError for a location outside the folder or a span past the end of the file."""
    info = ExternalDataInfo(tensor)
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, info.location))
    if os.path.isabs(info.location) or not path.startswith(root + os.sep) or not os.path.isfile(path):
        raise ValueError(f"external data of tensor {tensor.name!r} not found in the model's folder: {info.location}")
    size = os.path.getsize(path)
    offset = info.offset or 0
    length = size - offset if info.length is None else info.length
    if offset + length > size:
        raise ValueError(f"external data of tensor {tensor.name!r} runs past the end of {info.location}")
    return path, offset, length


def _graph_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers of ``graph`` and of its sub-graphs, in the order onnx.save_model
    writes them to a data file."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                yield from _graph_initializers(sub)


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: initializers (sub-graphs' included), then attributes'."""
    yield from _graph_initializers(graph)
    yield from _attribute_tensors(graph)


def _attribute_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in _subgraphs(attr):
                yield from _attribute_tensors(sub)


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    return list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read inside a node's sub-graphs (If/Loop/Scan), at any depth: the
    tensors it reads besides its inputs."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in _subgraphs(attr):
            produced = {o for n in g.node for o in n.output} | {i.name for i in g.input} | \
                {i.name for i in g.initializer}
            for n in g.node:
                names.update(i for i in n.input if i and i not in produced)
                names.update(implicit_inputs(n) - produced)
    return names


def _node_key(node: onnx.NodeProto) -> str:
    """A node's first output name: unique in a graph (node names need not be)."""
    return next((name for name in node.output if name), node.name)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads: its inputs, then those its sub-graphs read (sorted)."""
    return [n for n in node.input if n] + sorted(implicit_inputs(node))


def _relist(graph: onnx.GraphProto, order: list[int]) -> None:
    """List ``graph``'s nodes in ``order`` (indices into the current listing), in place."""
    if order != list(range(len(graph.node))):
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def order_by_wiring(model: onnx.ModelProto) -> list[str]:
    """List the main graph's nodes in an order of their wiring alone, in place: the order a
    depth-first walk from the graph outputs (in turn) finishes them, each node's inputs
    (then the names its sub-graphs read) walked in the order it lists them; nodes no output
    depends on follow in the order they had. Two listings of one graph (an exporter's, and
    onnxruntime's saved graph, which moves a shortcut Conv before the block's first) become
    one, so that what is drawn per layer or per group is drawn alike for both. An exporter
    that lists nodes in execution order (PyTorch's) usually lists them so already. Returns
    the nodes' keys (first output names) in the order they had, for :func:`restore_order`."""
    graph = model.graph
    listing = [_node_key(node) for node in graph.node]
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    order: list[int] = []
    done: set[int] = set()
    for output in graph.output:
        start = producer.get(output.name)
        stack = [(start, False)] if start is not None and start not in done else []
        while stack:
            index, finished = stack.pop()
            if finished:
                order.append(index)
                continue
            if index in done:
                continue
            done.add(index)
            stack.append((index, True))
            for name in reversed(node_reads(graph.node[index])):  # reversed on the stack: the first is walked first
                source = producer.get(name)
                if source is not None and source not in done:
                    stack.append((source, False))
    _relist(graph, order + [i for i in range(len(graph.node)) if i not in done])
    return listing


def restore_order(model: onnx.ModelProto, listing: list[str]) -> None:
    """List the main graph's nodes, in place, as near the order ``listing`` (keys of
    :func:`order_by_wiring`) gave as their wiring allows: a node it does not name (one
    pruning added) goes with the node before it. A topological sort that takes, of the
    nodes whose inputs are computed, the one earliest in that order; so a model pruned from
    a graph listed otherwise lists its nodes as its input did."""
    graph = model.graph
    rank = {key: i for i, key in enumerate(listing)}
    priority: list[tuple[int, int]] = []
    last = -1
    for position, node in enumerate(graph.node):
        last = rank.get(_node_key(node), last)
        priority.append((last, position))
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for source in {producer[n] for n in node_reads(node) if n in producer}:
            waiting[i] += 1
            readers.setdefault(source, []).append(i)
    ready = [(priority[i], i) for i in range(len(graph.node)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for reader in readers.get(i, []):
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(ready, (priority[reader], reader))
    if len(order) == len(graph.node):  # (a cycle, which no valid model has, leaves the listing)
        _relist(graph, order)


def check_model_arg(model: object) -> None:
    """Refuse a ``model`` that is neither an ``onnx.ModelProto`` nor a path. Bytes are refused
    rather than guessed at: they could be a serialised model or a path in bytes."""
    if isinstance(model, (onnx.ModelProto, str)) or isinstance(model, os.PathLike) and \
            isinstance(os.fspath(model), str):
        return
    hint = " (for a serialised model, pass onnx.load_from_string(data))" if isinstance(model, bytes) else \
        " whose path is bytes (pass os.fsdecode(path))" if isinstance(model, os.PathLike) else ""
    raise UsageError(f"model must be an onnx.ModelProto or the path of an .onnx file, not "
                     f"{type(model).__name__}{hint}")


def as_model(model_or_path: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """Accept a ModelProto or a path; always return a private copy that may be modified,
    its structure checked (:func:`check_structure`)."""
    check_model_arg(model_or_path)
    if isinstance(model_or_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
    else:
        model = load_model(model_or_path)
    check_structure(model, model_or_path)
    return model


def check_structure(model: onnx.ModelProto, source: onnx.ModelProto | str | os.PathLike) -> None:
    """Refuse, with a :class:`UsageError`, a model that is empty or fails onnx's checker on
    its structure (no shape inference: undefined inputs, unknown ops, opsets, IR version).
    ``source``, the path ``model`` was read from, is what the checker reads where the
    weights are external data; a model held in memory above the protobuf limit cannot be
    checked whole and is checked once written (:func:`check_model`)."""
    what = f"{source}" if isinstance(source, (str, os.PathLike)) else "the model"
    if not model.graph.node:
        raise UsageError(f"{what} holds no graph nodes: not an ONNX model, or an empty one")
    if model.graph.sparse_initializer:  # onnx's full checker refuses them too, as would the pruned model's check
        names = ", ".join(t.values.name for t in model.graph.sparse_initializer[:3])
        raise UsageError(f"{what} stores weights as sparse initializers ({names}"
                         f"{', ...' if len(model.graph.sparse_initializer) > 3 else ''}), which this tool does not "
                         "read: store them as dense initializers and export it again")
    # the proto read once (a pipe cannot be read twice; onnx takes no path that is not
    # UTF-8); a model with external data from its path, where the checker finds the data
    external = any(uses_external_data(t) for t in all_tensors(model.graph))
    if external and isinstance(source, (str, os.PathLike)):
        target: onnx.ModelProto | str = os.fspath(source)
    elif model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        target = model
    else:
        return
    try:
        onnx.checker.check_model(target)
    except MemoryError:
        raise
    except Exception as exc:
        # the checker names a node on the lines after the first: one line, joined
        reason = (" ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__)[:300]
        raise UsageError(f"{what} is not a valid ONNX model ({reason}); fix the exporter or export it again") from None


def check_model(model: onnx.ModelProto) -> None:
    """Run the full ONNX checker (with shape inference); raise EPruneError if it fails.

    Protobuf cannot hold a model above 2 GiB in one message, so such a model is checked
    from a temporary copy on disk in the form save_model writes, with its weights as
    external data. The checker looks at where the data lives, not at the values, so the
    data file is left sparse (no weight is copied for the check).
    """
    try:
        if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(_embedded(model), full_check=True)
        else:
            with tempfile.TemporaryDirectory(prefix="onnx-eprune-check-") as folder:
                path = os.path.join(folder, "model.onnx")
                light, pieces = _external_form(model, "model.onnx.data")
                with open(path + ".data", "wb") as f:
                    f.truncate(sum(piece.length for piece in pieces))
                with open(path, "wb") as f:
                    f.write(light.SerializeToString(deterministic=True))
                onnx.checker.check_model(path, full_check=True)
    except MemoryError:  # the checker's copies of a large model: no fault of the model
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EPruneError(f"model does not pass onnx.checker: {reason}") from None


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


# Never evaluated ahead of time: random ops differ per run, control flow holds sub-graphs,
# and a quantized weight's DequantizeLinear is what keeps it quantized (folded, the int8
# weight would come out as a float one, and the layer would no longer read as quantized).
_NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                           "Multinomial", "Bernoulli", "If", "Loop", "Scan", "Dropout",
                           "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})


def overridable_initializers(model: onnx.ModelProto) -> set[str]:
    """The initializers that are defaults the caller may override: those listed as graph
    inputs too, from IR 4 on. Below IR 4 every initializer must be listed as an input and
    runtimes hold them constant (onnxruntime refuses to be fed one); an export that lists
    every initializer as an input (PyTorch's ``keep_initializers_as_inputs``, the default of
    its older versions) follows that convention at any IR version, and its weights are
    weights too (onnxruntime would accept a fed one, but nothing feeds it)."""
    inits = {i.name for i in model.graph.initializer}
    listed = {i.name for i in model.graph.input} & inits
    return set() if model.ir_version < 4 or listed == inits else listed


def fold_constants(model: onnx.ModelProto, narrowed: dict[str, tuple[onnx.NodeProto, onnx.TensorProto]] | None = None,
                   aliased: set[tuple[str, int]] | None = None) -> int:
    """Replace main-graph nodes whose inputs are all initializers by initializers.

    Exporters put Identity (de-duplicated weights), Cast (half-precision weights) and whole
    computations (weight standardisation in NFNets) between an initializer and the layer
    that uses it; evaluating them once (with onnx's reference implementation) lets the
    analysis see those weights as the constants they are. An Identity of an initializer
    goes instead, its readers reading that initializer (unless its output is a graph output
    or read inside a sub-graph), and ``aliased``, if given, receives each input that read one
    (its node's first output, the input's position). ``narrowed``, if given, receives each
    Cast to float of a float16 / bfloat16 initializer: its output -> (the node, the
    initializer), for :func:`store_narrowed`. Returns the number of nodes folded.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = overridable_initializers(model)
    opset = [o for o in model.opset_import]
    # names an Identity's output must keep: graph outputs, and names sub-graphs read (not renamed there)
    pinned = {o.name for o in graph.output} | {name for node in graph.node for name in implicit_inputs(node)}
    aliases: dict[str, str] = {}  # an Identity's output -> the initializer it hands on
    kept, folded = [], 0
    for node in graph.node:
        for pos, name in enumerate(node.input):
            if name in aliases:
                node.input[pos] = aliases[name]
                if aliased is not None and node.output:
                    aliased.add((node.output[0], pos))
        names = [n for n in node.input if n]
        if node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx") or not names or \
                any(n not in inits or n in graph_inputs for n in names):
            kept.append(node)
            continue
        if node.op_type == "Identity" and node.output[0] not in pinned:
            # an exporter's de-duplicated constant (equal values of distinct parameters): its
            # readers read the initializer itself, and normalize copies it per layer
            aliases[node.output[0]] = names[0]
            folded += 1
            continue
        try:
            if node.op_type == "BatchNormalization":  # the reference gets opsets 9-13 wrong
                values = _batch_norm(node, [tensor_array(inits[n]) for n in node.input[:5]])
            else:
                sub = onnx.helper.make_graph([node], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output],
                                             [materialized(inits[n]) for n in dict.fromkeys(names)])
                values = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=opset)).run(None, {})
        except Exception:  # leave anything the reference cannot evaluate to the runtime
            kept.append(node)
            continue
        if narrowed is not None and node.op_type == "Cast" and inits[names[0]].data_type in _NARROW and \
                any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute):
            cast, source = onnx.NodeProto(), onnx.TensorProto()
            cast.CopyFrom(node)
            source.CopyFrom(inits[names[0]])
            narrowed[node.output[0]] = (cast, source)
        for name, value in zip(node.output, values):
            if not name:  # an optional output left out
                continue
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            inits[name] = graph.initializer[-1]
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    if aliases:  # the shapes recorded for the names that are gone
        infos = [vi for vi in graph.value_info if vi.name not in aliases]
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return folded


def _batch_norm(node: onnx.NodeProto, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """BatchNormalization's outputs as the spec and onnxruntime compute them, in ``x``'s
    dtype. In inference mode ``x`` (N, C, ...) is normalised by per-channel ``mean`` and
    ``var`` (for ``spatial=0`` before opset 9, per element of a sample), then scaled and
    shifted. With ``training_mode`` (opset 14 on; the weight standardisation of NF-Nets'
    ScaledStdConv, exported as a batch norm of the weight) by ``x``'s own per-channel mean
    and (population) variance, and the running ``mean`` and ``var`` outputs, if any, move
    toward those by ``1 - momentum``."""
    x, scale, bias, mean, var = arrays
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    training = bool(attrs.get("training_mode"))
    if len(node.output) > (3 if training else 1) and any(node.output[1:]):
        raise ValueError("BatchNormalization with the outputs of opsets before 14's training")

    def shaped(p: np.ndarray) -> np.ndarray:  # per channel on axis 1, or per element of a sample
        return p.reshape((1, -1) + (1,) * (x.ndim - 2)) if p.ndim == 1 else p.reshape((1,) + p.shape)

    eps = float(attrs.get("epsilon", 1e-5))
    x64, running = x.astype(np.float64), mean.dtype
    outputs = []
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        current_mean, current_var = x64.mean(axis=axes), x64.var(axis=axes)
        momentum = float(attrs.get("momentum", 0.9))
        outputs = [mean * momentum + current_mean * (1 - momentum), var * momentum + current_var * (1 - momentum)]
        mean, var = current_mean, current_var
    y = (x64 - shaped(mean)) / np.sqrt(shaped(var) + eps) * shaped(scale) + shaped(bias)
    return [y.astype(x.dtype)] + [a.astype(running) for a in outputs[:len(node.output) - 1]]


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


def save_model(model: onnx.ModelProto, path: str | os.PathLike, keep: Collection[str | os.PathLike] = ()) -> None:
    """Write a model atomically: temporary files in the target folder, then renames.

    Models above the protobuf limit are written with their weights as external data in
    ``<name>.data`` beside the file, laid out as onnx.save_model lays them out (every
    initializer of 991 bytes or more, one after the other); references are copied from
    their file piece by piece, never held in memory. Nothing is left behind if writing fails.
    A smaller model written over one that kept its weights in ``<name>.data`` removes that
    file, unless it is one of ``keep`` (the files a run read).

    :class:`UsageError` for a path in a missing folder (a caller's wrong path); a folder
    that refuses the write raises EPruneError with the OS's reason, as a full disk does.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder does not exist: {folder}")
    data = folder / (target.name + ".data")  # where a large model's weights go
    if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        embedded = _embedded(model)
        # the data file of a large model this one replaces would be left behind, unread
        stale = target.is_file() and str(data.resolve()) in data_files(target) and \
            not any(same_file(data, Path(k)) for k in keep)
        write_atomic(target, lambda f: f.write(embedded.SerializeToString(deterministic=True)))
        if stale:
            log.info("removed %s, the data file of the model %s replaced", data, target)
            data.unlink(missing_ok=True)
        return
    if any(os.path.exists(data) and os.path.samefile(ref[0], data)
           for ref in map(reference, model.graph.initializer) if ref is not None):
        raise UsageError(f"cannot write {target}: its data file {data} holds the input model's weights; "
                         "choose another output name")
    light, pieces = _external_form(model, data.name)
    tmp = tmp_data = None
    try:
        tmp = temporary_beside(target)
        tmp_data = temporary_beside(data)
        with open(tmp_data, "wb") as f:
            for piece in pieces:
                piece.write(f)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp, "wb") as f:
            f.write(light.SerializeToString(deterministic=True))
            f.flush()
            os.fsync(f.fileno())
        with Replacing() as replacing:  # a failed second rename puts the old data file back
            os.replace(tmp_data, replacing.claim(data))
            os.replace(tmp, replacing.claim(target))
    except OSError as exc:
        raise EPruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, tmp_data):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)


class _Piece:
    """One tensor's bytes in a data file being written: from a reference's file, or from
    an in-memory tensor."""

    def __init__(self, tensor: onnx.TensorProto, length: int):
        self.tensor = tensor
        self.length = length

    def write(self, out) -> None:
        if reference(self.tensor) is None:
            out.write(self.tensor.raw_data)
            return
        for chunk in reference_chunks(self.tensor):
            out.write(chunk)


def _external_form(model: onnx.ModelProto, location: str) -> tuple[onnx.ModelProto, list[_Piece]]:
    """The model as save_model writes it beside a data file named ``location``, and the
    pieces of that file in order. ``model`` itself is not modified."""
    light, sources = light_copy(model, lift=lambda t: _raw_length(t) >= _EXTERNAL_MIN_RAW)
    pieces, end = [], 0
    # main-graph initializers come first, at the positions light_copy counted
    for index, tensor in enumerate(_graph_initializers(light.graph)):
        source = sources.get(index) if index < len(light.graph.initializer) else None
        if source is None:  # a small tensor, or one of a sub-graph (copied whole)
            if _raw_length(tensor) < _EXTERNAL_MIN_RAW:
                continue
            source = onnx.TensorProto()
            source.CopyFrom(tensor)
            tensor.ClearField("raw_data")
        ref = reference(source)
        length = ref[2] if ref is not None else _raw_length(source)
        point_to(tensor, location, end, length)
        pieces.append(_Piece(source, length))
        end += length
    return light, pieces


def _raw_length(tensor: onnx.TensorProto) -> int:
    """Bytes in ``tensor.raw_data`` (-1 without that field), found without copying them:
    a length-delimited field takes its length, a one-byte tag and the length's varint."""
    if not tensor.HasField("raw_data"):
        return -1
    rest = onnx.TensorProto()
    _copy_fields(tensor, rest, skip=("raw_data",))
    field = tensor.ByteSize() - rest.ByteSize()
    return next(n for n in range(max(field - 2, 0), -1, -1) if 1 + _varint_size(n) + n == field)


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _embedded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every reference's data inside (a copy if it has references)."""
    if not any(reference(init) is not None for init in model.graph.initializer):
        return model
    full = onnx.ModelProto()
    full.CopyFrom(model)
    for init in full.graph.initializer:
        if reference(init) is not None:
            init.CopyFrom(materialized(init))
    return full


class Normalized(NamedTuple):
    """What :func:`normalize` did that later steps need to know."""

    copies: dict[str, str]  # copy name -> original name, for share_equal_copies
    folded: set[str]        # names of the input's nodes folded into constants (Constant, Identity on a weight)
    narrowed: dict[str, tuple[onnx.NodeProto, onnx.TensorProto]]  # weights stored narrower behind a Cast


def normalize(model: onnx.ModelProto) -> Normalized:
    """Put every constant weight of the main graph into an initializer of its own (in
    place): Constant nodes become initializers, constant Identity/Cast/... chains are folded,
    initializers nothing reads any more are dropped, and tensors (not scalars) read by
    several nodes are copied per reader, so that pruning one reader does not break another
    (exporters de-duplicate equal constants, e.g. identical BatchNorm parameters); layers'
    weights stay shared. A model of IR version below 4 lists its new initializers as graph
    inputs, as that version requires. An unnamed node is named as reports label it,
    ``OpType#index`` with its index in the input (which folding changes; ``OpType#index.k``
    where another node has that name), so that the report, ``--exclude`` and the written
    model call it by that name. Returns the copies
    made and the nodes folded away (:class:`Normalized`)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):  # before nodes go: the label of the input's index
        if not node.name:
            # a node named so by hand (or by an earlier run, before one was put in front) keeps it
            label, k = node_label(node, index), 1
            while label in taken:
                label, k = f"{node_label(node, index)}.{k}", k + 1
            node.name = label
            taken.add(label)
    names = {node.name for node in model.graph.node}
    convention = lists_initializers(model)
    constants_to_initializers(model)
    narrowed: dict[str, tuple[onnx.NodeProto, onnx.TensorProto]] = {}
    aliased: set[tuple[str, int]] = set()
    if fold_constants(model, narrowed, aliased):
        # an initializer listed as a graph input stays, without it that input would become
        # one the caller must feed; unless every initializer is listed (the convention of
        # old exporters), where the listed ones are weights and an unused one goes too
        used = _referenced_names(model.graph) | {o.name for o in model.graph.output}
        if not convention:
            used |= {i.name for i in model.graph.input}
        remove_initializers(model.graph, {i.name for i in model.graph.initializer} - used)
    copies = _unshare_initializers(model, aliased)
    for copy, origin in copies.items():  # a copy of a narrow weight is stored as narrow as it
        if origin in narrowed:
            cast, source = narrowed[origin]
            twin = onnx.NodeProto()
            twin.CopyFrom(cast)
            twin.output[0] = copy
            twin.name = f"{cast.name}{copy[len(origin):]}" if cast.name else ""
            narrowed[copy] = (twin, source)
    list_initializers_as_inputs(model, convention)
    return Normalized(copies, names - {node.name for node in model.graph.node}, narrowed)


# storage types narrower than float32 that exporters keep weights in, behind a Cast
_NARROW = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def store_narrowed(model: onnx.ModelProto, narrowed: Mapping[str, tuple[onnx.NodeProto, onnx.TensorProto]]) -> None:
    """Put back the narrow storage :func:`normalize` widened (``narrowed``: weight -> the Cast
    that read it from a float16 / bfloat16 initializer, and that initializer), in place: each
    such weight the model still holds is stored in that type again (as it was, where pruning
    left it as it was), under the name it had where that is free, and read through its Cast,
    so a model stored in half precision stays half its size (re-fitted weights are rounded
    to that type, as the original's were)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    taken = defined_names(graph)
    casts = []
    for name, (cast, source) in narrowed.items():
        if name not in inits:
            continue
        stored = source.name
        while stored in taken:
            stored += "_stored"
        taken.add(stored)
        value = tensor_array(inits[name])
        original = tensor_array(source)
        if original.shape == value.shape and np.array_equal(original.astype(value.dtype), value):
            inits[name].CopyFrom(source)
        else:
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(original.dtype), source.name))
        inits[name].name = stored
        for vi in graph.input:  # listed as an input too (an IR 3 model, an old exporter's convention)
            if vi.name == name:
                vi.name = stored
                vi.type.tensor_type.elem_type = source.data_type
        node = onnx.NodeProto()
        node.CopyFrom(cast)
        node.input[0] = stored
        casts.append(node)
    if casts:  # before every node: their readers come later
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


def lists_initializers(model: onnx.ModelProto) -> bool:
    """Whether ``model`` lists every initializer as a graph input too: IR versions below 4
    require it, and old exporters (PyTorch's ``keep_initializers_as_inputs``) follow it at
    any version (see :func:`overridable_initializers`)."""
    inits = {i.name for i in model.graph.initializer}
    return model.ir_version < 4 or bool(inits) and inits <= {i.name for i in model.graph.input}


def list_initializers_as_inputs(model: onnx.ModelProto, convention: bool) -> None:
    """Where ``model`` followed the convention of listing every initializer as a graph input
    too (``convention``: :func:`lists_initializers` of it before the change), give each
    initializer that lacks one (made here of a Constant node or a folded weight, or by the
    rewrite: a new bias) a graph input of its type and shape, in place. The IR version
    stays: the runtimes such a model was exported for may not read a newer one."""
    if not convention:
        return
    listed = {vi.name for vi in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def _scalar_value(init: onnx.TensorProto) -> bool:
    """A float of one element (an epsilon, a scale), which pruning never edits. A
    one-element integer tensor may be a shape entry that it does (the feature count of a
    Reshape target, a Slice bound), and is copied like a tensor."""
    return int(np.prod(init.dims, dtype=np.int64)) <= 1 and init.data_type not in (
        onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _unshare_initializers(model: onnx.ModelProto, aliased: Collection[tuple[str, int]] = ()) -> dict[str, str]:
    """Copy each initializer (not a float scalar) that several main-graph nodes read, once per
    reader after the first, in place; returns copy name -> original name. A weight that a
    Conv / ConvTranspose / Gemm / MatMul reads directly stays shared: several layers
    applying one weight are one module applied twice (the analysis freezes its channels),
    and copies would make the model bigger. A layer that read it through an Identity
    (``aliased``: (node's first output, input position), from :func:`fold_constants`) gets
    a copy: that is an exporter's de-duplication of distinct parameters with equal values
    (the zero-initialised last convolutions of residual blocks, folded with their
    BatchNormalization, in untrained exports), which prune apart. The first reader keeps
    the original where no layer reads it directly."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    layer_reads = [(node, pos) for node in graph.node if node.op_type in WEIGHTED_OPS
                   for pos, name in enumerate(node.input[:2]) if name in inits]
    direct = {node.input[pos] for node, pos in layer_reads if (node.output[0], pos) not in aliased}
    # a default the caller may override stays one tensor (an export listing every
    # initializer as an input, as old exporters did, overrides none: its weights are copied)
    pinned = overridable_initializers(model) | {o.name for o in graph.output}
    taken = defined_names(graph)
    seen = set(direct)  # a layer reading it directly keeps the original
    copies: dict[str, str] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            init = inits.get(name)
            if init is None or name in pinned or _scalar_value(init) or \
                    name in direct and (node.output[0], pos) not in aliased:
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
            copies[copy.name] = name
            graph.initializer.append(copy)
            node.input[pos] = copy.name
    return copies


def share_equal_copies(model: onnx.ModelProto, copies: Mapping[str, str]) -> None:
    """Undo :func:`normalize`'s copies (``copies``: copy name -> original name) that pruning
    left equal to their original, or to an earlier copy of it, in place: their readers read
    that tensor again and the copy goes, so that a layer left whole costs no more bytes."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    kept: dict[str, list[str]] = {}  # original -> the family's distinct tensors so far
    rename: dict[str, str] = {}
    for copy, origin in copies.items():
        if copy not in inits:
            continue
        family = kept.setdefault(origin, [origin] if origin in inits else [])
        same = next((n for n in family if _same_tensor(inits[n], inits[copy])), None)
        if same is None:
            family.append(copy)
        else:
            rename[copy] = same
    if not rename:
        return
    for node in graph.node:
        for pos, name in enumerate(node.input):
            if name in rename:
                node.input[pos] = rename[name]
    remove_initializers(graph, set(rename))


def remove_initializers(graph: onnx.GraphProto, names: Collection[str]) -> None:
    """Drop the initializers named ``names`` from ``graph``, in place, and their listing as
    graph inputs (below IR 4 every initializer is listed so)."""
    if not names:
        return
    kept = [i for i in graph.initializer if i.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = [vi for vi in graph.input if vi.name not in names]
    del graph.input[:]
    graph.input.extend(listed)


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    ref_a, ref_b = reference(a), reference(b)
    if ref_a is not None and ref_a == ref_b:
        return True
    return tensor_array(a).tobytes() == tensor_array(b).tobytes()


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its sub-graphs define or read (initializers, inputs,
    outputs, node inputs and outputs): the names a new tensor must not take."""
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for g in _subgraphs(attr):
                names |= defined_names(g)
    return names


def _referenced_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _referenced_names(g)
    return names


def onnx_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set ``model`` imports; 13 where it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def initializer_map(model: onnx.ModelProto) -> Mapping[str, onnx.TensorProto]:
    """Initializers by name, each with its data inside (references are read on access)."""
    return _Initializers(model)


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real graph inputs (initializers that old exporters list as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def fixed_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """The dimensions an input declares, None for each one it leaves free (a name, or no
    positive value); None when it declares no shape at all."""
    ttype = vi.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size ``model`` was exported for: the static first dimension its graph inputs
    share (an export without dynamic axes fixes it, usually at 1), or None when it is free.
    Graph outputs that state a first dimension must state the same one: a static first
    input dimension read otherwise is no batch (torchvision's detectors take one image,
    (3, H, W), and return a box per row)."""
    sizes = set()
    for vi in model_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
            return None
        sizes.add(dims[0].dim_value)
    computed = _from_inputs(model)
    for vi in model.graph.output:
        dims = vi.type.tensor_type.shape.dim
        # a constant output (anchors, class names) has no rows per sample to compare, and a
        # first dimension left undeclared says nothing
        known = dims and (dims[0].HasField("dim_value") or dims[0].HasField("dim_param"))
        if known and vi.name in computed and (dims[0].dim_value or None) not in sizes:
            return None
    return sizes.pop() if len(sizes) == 1 else None


def _from_inputs(model: onnx.ModelProto) -> set[str]:
    """The tensors of the main graph that depend on a graph input (the others are constants)."""
    found = {vi.name for vi in model_inputs(model)}
    for node in model.graph.node:
        # a node without inputs that is no constant (RandomNormal) varies too, as does one
        # whose sub-graph may read a graph input by name
        sub = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if sub or any(name in found for name in node.input) or (not node.input and node.op_type != "Constant"):
            found.update(name for name in node.output if name)
    return found


def unbatched_inputs(model: onnx.ModelProto) -> frozenset[str]:
    """The graph inputs of ``model`` without a batch axis: those whose first dimension is
    fixed, unless the model has a :func:`fixed_batch` (torchvision's detectors take one
    (3, H, W) image). Calibration arrays for them hold samples on an extra axis 0."""
    if fixed_batch(model) is not None:
        return frozenset()
    return frozenset(vi.name for vi in model_inputs(model)
                     if vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_value > 0)


def least_batch(model: onnx.ModelProto) -> int:
    """The fewest samples one run of ``model`` may take: 2 for a model with a free batch and a
    Squeeze without axes in its main graph (PyTorch's ``x.squeeze()`` after a global
    pooling), which at one sample drops the batch axis too, so that the one sample's channels
    would read as samples; else 1."""
    squeezes_all = any(node.op_type == "Squeeze" and not (len(node.input) > 1 and node.input[1])
                       and not any(a.name == "axes" for a in node.attribute) for node in model.graph.node)
    # the batch checks walk the graph: only for the rare model that needs them
    return 2 if squeezes_all and fixed_batch(model) is None and not unbatched_inputs(model) else 1


def probe_batch(model: onnx.ModelProto) -> int:
    """The samples the shapes of ``model``'s tensors are probed with: its fixed batch, or
    :func:`least_batch` (1 for a model whose inputs have no batch axis: one image)."""
    return fixed_batch(model) or least_batch(model)


# the metadata_props key of a pruned model: a JSON list with one entry per pruning run
PROVENANCE_KEY = "onnx_eprune"


def record_provenance(model: onnx.ModelProto, entry: dict) -> None:
    """Append ``entry`` (JSON-ready: what a pruning run did) to ``model``'s ``metadata_props``
    under :data:`PROVENANCE_KEY`, in place, so that the file itself says how it was made. A
    model pruned before keeps its earlier entries (a value this tool did not write stays, as
    the first entry); other metadata stays as the exporter wrote it."""
    props = {p.key: p for p in model.metadata_props}
    value = json.dumps(read_provenance(model) + [entry], separators=(",", ":"))
    if PROVENANCE_KEY in props:
        props[PROVENANCE_KEY].value = value
    else:
        model.metadata_props.add(key=PROVENANCE_KEY, value=value)


def read_provenance(model: onnx.ModelProto) -> list:
    """The pruning runs recorded in ``model``'s metadata (:func:`record_provenance`), oldest
    first; a value this tool did not write comes back as one string entry."""
    values = [p.value for p in model.metadata_props if p.key == PROVENANCE_KEY]
    if not values:
        return []
    try:
        runs = json.loads(values[-1])
    except ValueError:
        return [values[-1]]
    return runs if isinstance(runs, list) else [values[-1]]
