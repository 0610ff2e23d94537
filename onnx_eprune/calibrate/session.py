"""onnxruntime sessions: provider choice, sub-graph sessions and shape probing."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from ..errors import EPruneError, UsageError
from ..graph import model_io
from ..graph.analysis import analyze
from ..graph.groups import GraphAnalysis
from ..graph.model_io import fixed_batch, least_batch, probe_batch, unbatched_inputs

log = logging.getLogger("onnx_eprune")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in {"auto", "cpu", "cuda"}.

    "auto" takes CUDA when onnxruntime offers it and a session can really be created on it
    (the provider is listed even when the CUDA libraries are missing), else the CPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device (--device) must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return [_CPU]
    if _CUDA in ort.get_available_providers() and _cuda_works():
        return [_CUDA, _CPU]
    if device == "cuda":
        raise EPruneError("--device cuda: onnxruntime cannot use CUDA here (needs onnxruntime-gpu, CUDA 13 and cuDNN 9)")
    return [_CPU]


_cuda_ok: bool | None = None


def _cuda_works() -> bool:
    """Create a one-node session on CUDA once and see whether CUDA really took it."""
    global _cuda_ok
    if _cuda_ok is None:
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        try:
            sess = ort.InferenceSession(model.SerializeToString(), _options(), providers=[_CUDA, _CPU])
            _cuda_ok = _CUDA in sess.get_providers()
        except Exception:  # missing libcudart/cudnn show up as assorted runtime errors
            _cuda_ok = False
    return _cuda_ok


def _options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # onnxruntime prints nothing of its own (its errors come back as one-line exceptions)
    # unless -v asks for details
    opts.log_severity_level = 2 if log.isEnabledFor(logging.DEBUG) else 4
    ort.set_default_logger_severity(opts.log_severity_level)  # kernel failures log here
    # OMP_NUM_THREADS, the usual way to share a machine between jobs, also caps
    # onnxruntime's own pool (numpy's BLAS already follows it)
    threads = threads or _omp_threads()
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        # the calibration alternates onnxruntime runs with numpy products on the same cores:
        # pool threads that spin after a run would take the cores from numpy's threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _omp_threads() -> int:
    """The thread count OMP_NUM_THREADS sets (its first level, "4,2" giving 4), 0 where it
    is unset or not a positive number (onnxruntime then picks its own, as OpenMP ignores it)."""
    raw = os.environ.get("OMP_NUM_THREADS", "")
    value = raw.split(",")[0].strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        if raw not in _WARNED:  # every session reads it: say so once
            _WARNED.add(raw)
            log.warning("OMP_NUM_THREADS=%r is no thread count: onnxruntime picks its own", raw)
        return 0
    return int(value)


_WARNED: set[str] = set()  # the OMP_NUM_THREADS values already warned about


def make_session(model: onnx.ModelProto, providers: list[str], outputs: list[str] | None = None,
                 threads: int | None = None, spinning: bool = False,
                 shared: dict[str, ort.OrtValue] | None = None, batch: int | None = None,
                 unbatched: frozenset[str] | None = None) -> ort.InferenceSession:
    """A session for ``model``; ``outputs`` (any tensor names) replace the graph outputs.
    ``batch``: the batch size every run must have (default :func:`fixed_batch` of
    ``model``; give the whole model's for a sub-graph of it, whose reshapes may hold it):
    :func:`run` splits its feeds into runs of that many samples. ``unbatched``: inputs
    without a batch axis (default :func:`unbatched_inputs` of ``model``; give the whole
    model's for a sub-graph): :func:`run` then feeds one sample per run, those inputs
    without their sample axis and the others (a sub-graph's cached tensors) with one.
    Its pool threads sleep after a run unless ``spinning`` (onnxruntime's own default,
    for timing the model as a deployment would run it). ``shared`` (from
    :func:`shared_initializers`) holds initializers that many sessions of one model read:
    they reach onnxruntime as those values rather than serialised again for each session.

    Weights left in the input's data file (model_io.reference) reach onnxruntime as
    external data in that file, which it maps into memory instead of copying it. A model
    above the protobuf limit cannot be serialised: its other large initializers go to
    onnxruntime as in-memory external initializers (no file is written)."""
    batch = batch if batch is not None else fixed_batch(model)
    unbatched = unbatched if unbatched is not None else unbatched_inputs(model)
    options = _options(threads, spinning)
    arrays: list[ort.OrtValue] = []
    large = model_io.model_bytes(model) >= model_io.EXTERNAL_DATA_THRESHOLD
    if large:
        # pre-packed Gemm/Conv weights would be one more copy of every weight
        options.add_session_config_entry("session.disable_prepacking", "1")
    if large or any(model_io.reference(init) is not None for init in model.graph.initializer):
        model, values, folder = _without_large_initializers(model)
        if folder:
            options.add_session_config_entry(_DATA_FOLDER_KEY, folder)
        if values:
            options.add_external_initializers(list(values), list(values.values()))
        arrays = list(values.values())
    elif shared:
        model, names = _with_shared(model, shared)
        options.add_external_initializers(names, [shared[n] for n in names])
        arrays = [shared[n] for n in names]
    if outputs is not None:
        model = with_outputs(model, outputs)
    serialized = model.SerializeToString()
    failure = None
    # onnxruntime's own optimisers may break a valid graph that asks for intermediate
    # tensors (1.31's layout pass fuses an Add into a biased Conv of a width that is no
    # multiple of 4 and loses the Conv's requested output): try again with fewer of them
    first = options.graph_optimization_level
    fewer = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    for level in [first, *(level for level in fewer if int(level) < int(first))]:
        options.graph_optimization_level = level
        try:
            session = ort.InferenceSession(serialized, options, providers=providers)
            break
        except Exception as exc:
            failure = failure or exc
    else:
        raise EPruneError(f"onnxruntime cannot load the model: {_reason(failure)}") from None
    session._eprune_initializers = arrays  # onnxruntime asks that they outlive the session
    session._eprune_batch = 1 if unbatched else batch
    session._eprune_unbatched = unbatched
    session._eprune_least = least_batch(model)
    return session


# Initializers above this size travel outside the serialised model of a large model.
_LARGE_INITIALIZER = 1 << 20

# The external-data folder of a model given to onnxruntime as bytes.
_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def _without_large_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, ort.OrtValue], str]:
    """A light copy of ``model`` for a session: references point into their files, relative
    to one folder, and, when the model is above the protobuf limit, its in-memory
    initializers of _LARGE_INITIALIZER bytes or more are left out (marked external).
    Returns the light model, the values of the initializers left out by name, and the
    folder of the references' files ("" without references)."""
    large = model_io.model_bytes(model) >= model_io.EXTERNAL_DATA_THRESHOLD
    light, sources = model_io.light_copy(model, lift=lambda t: large and t.ByteSize() >= _LARGE_INITIALIZER)
    refs = {index: model_io.reference(source) for index, source in sources.items()}
    files = [ref[0] for ref in refs.values() if ref is not None]
    folder = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    values = {}
    for index, source in sources.items():
        placeholder = light.graph.initializer[index]
        ref = refs[index]
        if ref is not None:
            model_io.point_to(placeholder, os.path.relpath(ref[0], folder), ref[1], ref[2])
            continue
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        placeholder.external_data.add(key="location", value="onnx-eprune-in-memory")
        values[source.name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(source)))
    return light, values, folder


def shared_initializers(model: onnx.ModelProto) -> dict[str, ort.OrtValue]:
    """The in-memory initializers of ``model`` of _LARGE_INITIALIZER bytes or more, as
    values that sessions of ``model`` and of its sub-graphs can share (``make_session``'s
    ``shared``); none for a model whose weights stay in files or that is above the protobuf
    limit (its sessions already leave them out)."""
    if model_io.model_bytes(model) >= model_io.EXTERNAL_DATA_THRESHOLD or \
            any(model_io.reference(init) is not None for init in model.graph.initializer):
        return {}
    return {init.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(init)))
            for init in model.graph.initializer
            if not uses_external_data(init) and init.ByteSize() >= _LARGE_INITIALIZER}


def _with_shared(model: onnx.ModelProto, shared: dict[str, ort.OrtValue]) -> tuple[onnx.ModelProto, list[str]]:
    """A light copy of ``model`` whose initializers found in ``shared`` are placeholders
    marked as given in memory, and their names."""
    light, sources = model_io.light_copy(model, lift=lambda t: t.name in shared)
    names = []
    for index, source in sources.items():
        placeholder = light.graph.initializer[index]
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        placeholder.external_data.add(key="location", value="onnx-eprune-in-memory")
        names.append(source.name)
    return light, names


def run(session: ort.InferenceSession, outputs: list[str] | None, feeds: dict[str, np.ndarray],
        samples: int | None = None) -> list:
    """``session.run`` with onnxruntime's failures turned into one-line EPruneErrors.

    A session of a model with a fixed batch size runs the feeds (``samples`` on axis 0;
    default: the longest first axis) in pieces of that size, the last one padded with copies
    of its last sample; feeds without that axis (a scalar, anchors) go whole to every piece.
    Outputs with the batch on axis 0 come back concatenated (padding removed), others
    (shapes) from the first piece. A session of a model that needs :func:`least_batch`
    samples runs fewer as one piece padded so."""
    batch = getattr(session, "_eprune_batch", None)
    squeeze = getattr(session, "_eprune_unbatched", frozenset())
    n = samples if samples is not None else max((len(v) for v in feeds.values() if np.ndim(v)), default=0)
    if batch is None and 0 < n < getattr(session, "_eprune_least", 1):
        batch = session._eprune_least
    if batch is None or (n == batch and not squeeze):
        return _run_once(session, outputs, feeds)
    samples = {k for k, v in feeds.items() if np.ndim(v) and len(v) == n}
    pieces = []
    for start in range(0, n, batch):
        real = min(batch, n - start)
        piece = {}
        for k, v in feeds.items():
            if k in samples:
                v = v[start:start + batch]
                if real < batch:
                    v = np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)])
                v = v[0] if k in squeeze else v
            piece[k] = v
        pieces.append((real, _run_once(session, outputs, piece)))
    return [_joined([values[i] for _, values in pieces], [real for real, _ in pieces], batch, bool(squeeze))
            for i in range(len(pieces[0][1]))]


def _joined(values: list, reals: list[int], batch: int, rows: bool):
    """One output over the pieces of a run: values with the batch on axis 0 concatenated
    (padding removed); without a batch axis (``rows``), arrays of one shape but for axis 0
    (a detector's boxes) concatenated as rows; anything else (shapes) from the first piece."""
    first = values[0]
    if not isinstance(first, np.ndarray) or not first.ndim:
        return first
    if len(first) == batch and all(v.shape == first.shape for v in values):
        return np.concatenate([v[:real] for v, real in zip(values, reals)])
    if rows and all(v.shape[1:] == first.shape[1:] for v in values):
        return np.concatenate(values)
    return first


def _run_once(session: ort.InferenceSession, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list:
    try:
        return session.run(outputs, feeds)
    except MemoryError:  # the out-of-memory message and its hints, not a fault of the model
        raise
    except Exception as exc:
        raise EPruneError(f"onnxruntime failed to run the model: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The first line of an onnxruntime error without its C++ source location prefix
    (``[ONNXRuntimeError] : 1 : FAIL : .../file.cc:123 Function(...) reason``), cut to about
    300 characters in the middle, so that the reason and what to do survive the cut."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    # the location, then the function's signature (with a return type: "void f(...) reason")
    text = re.sub(r"^\S+\.(cc|h|cpp):\d+\s+((\w[\w:<>,* ]*\s)?\S+\([^)]*\)\s*(const\s*)?)?", "", text)
    # cut in the middle: onnxruntime ends its longer messages with what to do
    return text if len(text) <= 300 else f"{text[:150]} ... {text[-145:]}"


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (types left to the runtime)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {vi.name: vi for vi in list(model.graph.output) + list(model.graph.value_info)}
    del copy.graph.output[:]
    for name in names:
        vi = onnx.ValueInfoProto()
        if name in known and known[name].type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = known[name].type.tensor_type.elem_type
        vi.name = name
        copy.graph.output.append(vi)
    return copy


# Integer tensors of at most this many elements whose values the probe keeps: shape
# arithmetic (pads computed from the input's size), not data.
SMALL_INTEGERS = 64


def probe_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str],
                 values: dict[str, np.ndarray] | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every tensor, by running the model once on ``feeds``; ``values``,
    if given, receives the values of its computed int64 tensors of at most
    ``SMALL_INTEGERS`` elements."""
    names = [o for n in model.graph.node for o in n.output if o]
    names = list(dict.fromkeys(names))
    batch, squeeze = probe_batch(model), unbatched_inputs(model)
    if squeeze:  # the shapes of one real run, of one sample
        feeds = {k: v[:1] for k, v in feeds.items()}
    elif batch > 1:  # the shapes of one real run: reshapes may hold the batch size
        feeds = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in feeds.items()}
    sess = make_session(model, providers, outputs=names)
    shapes = {k: tuple(v.shape[1:] if k in squeeze else v.shape) for k, v in feeds.items()}
    one_run = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v[0] if k in squeeze else v))
               for k, v in feeds.items()}
    try:
        # onnxruntime's own values: their shapes without a copy of every tensor into numpy
        # (on a detector at 800x800 that copy took 2 GB more and 45 s instead of 8.5 s)
        outputs = sess.run_with_ort_values(names, one_run)
    except Exception as exc:
        raise EPruneError(f"onnxruntime failed to run the model: {_reason(exc)}") from None
    for name, value in zip(names, outputs):
        if value.is_tensor():
            shapes[name] = tuple(int(d) for d in value.shape())
            # shape arithmetic runs on the CPU under any provider; a value left on a GPU is
            # not copied back for this
            if values is not None and value.data_type() == "tensor(int64)" and value.device_name() == "cpu" \
                    and np.prod(shapes[name], dtype=np.int64) <= SMALL_INTEGERS:
                values[name] = value.numpy()
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def probe_groups(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str]
                 ) -> tuple[dict[str, tuple[int, ...]], GraphAnalysis]:
    """The shapes of every tensor on ``feeds`` (:func:`probe_shapes`) and the model's
    channel groups at those shapes."""
    values: dict[str, np.ndarray] = {}
    shapes = probe_shapes(model, feeds, providers, values)
    return shapes, analyze(model, shapes, probed=values)


# The tensors that one calibration batch fetches (every consumer's input, the compared
# outputs) may take this many bytes. 64 samples of a classifier take tens of MB; 64 images
# of a detector that works at 800x800 would take 83 GB (torchvision's RetinaNet: 1.3 GB each).
BATCH_BYTES = 1 << 30


def samples_per_batch(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], names: Iterable[str],
                      most: int, budget: int | None = None) -> int:
    """The samples a batch may hold, 1 to ``most``, so that the values of ``names`` (their
    :func:`probe_shapes` ``shapes``, 4 bytes an element) take at most ``budget`` bytes
    (default :data:`BATCH_BYTES`)."""
    budget = BATCH_BYTES if budget is None else budget
    # probe_shapes ran one sample, the whole fixed batch, or least_batch's two
    per_sample = sum(4 * int(np.prod(shapes[n])) for n in set(names) if n in shapes) / probe_batch(model)
    return max(1, min(most, int(budget // per_sample) if per_sample else most))
