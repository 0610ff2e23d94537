"""Calibration data: read, validate against the model's inputs, and cut into batches."""

from __future__ import annotations

import logging
import numbers
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import UsageError
from ..files import require_file
from ..graph.model_io import model_inputs, unbatched_inputs

log = logging.getLogger("onnx_eprune")

# below this many calibration samples a run warns that its statistics will be noisy
FEW_SAMPLES = 16

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                onnx.TensorProto.DOUBLE: np.float64}


@dataclass
class CalibrationData:
    """Arrays by graph-input name, all with the same number of samples on axis 0."""

    arrays: dict[str, np.ndarray]
    _keys: np.ndarray | None = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.samples, size):
            yield {k: np.ascontiguousarray(v[start:start + size]) for k, v in self.arrays.items()}

    def batch_count(self, size: int) -> int:
        return -(-self.samples // size)

    def first(self) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[:1]) for k, v in self.arrays.items()}

    def keys(self) -> np.ndarray:
        """A 64-bit fingerprint of every sample's content (N,), uint64.

        Random choices made per sample (sampled conv positions, injected noise) are seeded
        by it, so a sample gets the same treatment whether it is calibrated alone, in one
        run or in a shard: statistics of disjoint shards then add up to those of one run.
        """
        if self._keys is None:
            keys = np.zeros(self.samples, dtype=np.uint64)
            for i in range(self.samples):
                lo, hi = 0, 0x9E3779B9  # two CRCs with different seeds make 64 bits
                for name in sorted(self.arrays):
                    raw = np.ascontiguousarray(self.arrays[name][i]).tobytes()
                    lo, hi = zlib.crc32(raw, lo), zlib.crc32(raw, hi)
                keys[i] = (hi << 32) | lo
            self._keys = keys
        return self._keys


def load_calibration(source, model: onnx.ModelProto, samples: int | None = None, probe: bool = False,
                     held_out: bool = False) -> CalibrationData:
    """Calibration data from a path (``.npy`` / ``.npz``), an array, a dict of arrays, an
    iterable of batches, or an ``onnxruntime.quantization.CalibrationDataReader``.

    ``.npy`` and bare arrays feed a single-input model; ``.npz`` and dicts map input names to
    arrays. An iterable yields batches (arrays, or dicts of arrays, first axis = samples); a
    data reader's ``get_next()`` returns such dicts until it returns None. Batches are
    concatenated (the sequential mode reads the data several times). Arrays are checked
    against the model inputs (rank, fixed dimensions, finite values, a float dtype the
    model accepts) and the first ``samples`` rows are kept; data that does not vary at all is
    refused (:func:`check_values`). ``probe``: the data only probes shapes (no value checks,
    no warning about few samples). ``held_out``: the data measures a model rather than
    calibrating it (checked, but no warning about few samples).

    An object with ``__array__`` (a CPU torch tensor, say) counts as an array, not as an
    iterable of batches: iterating one would yield single samples; so do nested lists of
    numbers as deep as the input's rank (``array.tolist()``), while lists nested deeper or
    holding arrays are lists of batches (:func:`_one_nested_array`). Exceptions that the
    user's iterable or reader raises propagate unchanged: they are the caller's own.
    """
    inputs = model_inputs(model)
    if not inputs:
        raise UsageError("the model has no graph inputs: its outputs are constants, there is nothing to calibrate "
                         "or prune")
    if isinstance(source, os.PathLike) and isinstance(os.fspath(source), bytes):
        raise UsageError("give the calibration file's path as a str or pathlib.Path, not bytes")
    if isinstance(source, str):  # before the arrays: numpy's str_ is a str that converts to an array
        source = str(source)
    elif _array_like(source) or _one_nested_array(source, inputs, unbatched_inputs(model)):
        source = _as_array(source, "the calibration data")
    if hasattr(source, "get_next"):  # onnxruntime.quantization.CalibrationDataReader
        source = _batches(iter(source.get_next, None), inputs, samples)
    elif not isinstance(source, (str, os.PathLike, np.ndarray, dict, bytes)) and hasattr(source, "__iter__"):
        source = _batches(iter(source), inputs, samples)
    if isinstance(source, (str, os.PathLike)):
        arrays = _read(Path(source), inputs, "data" if held_out else "calibration")
    elif isinstance(source, np.ndarray):
        arrays = _single(source, inputs, "the array")
    elif isinstance(source, dict):
        arrays = dict(source)
    else:
        raise UsageError("calibration data must be a .npy/.npz path, an array, a dict of arrays, an iterable of "
                         f"batches or a CalibrationDataReader, not {type(source).__name__}")
    arrays = _validate(arrays, inputs, unbatched_inputs(model))
    n = next(iter(arrays.values())).shape[0]
    if samples is not None:
        if samples < 1:
            raise UsageError(f"samples (--samples) must be at least 1, not {samples}")
        if samples > n:  # asked for more than there are: say so rather than run on fewer unnoticed
            log.warning("--samples %d: the calibration data holds %d samples; using all %d", samples, n, n)
        n = min(n, samples)
        arrays = {k: v[:n] for k, v in arrays.items()}
    if sum(v.nbytes for v in arrays.values() if isinstance(v, np.memmap)) <= IN_MEMORY_BYTES:
        # read once: a file rewritten or cut by another program during the run cannot
        # change the samples between passes (or end the process with SIGBUS)
        arrays = {k: np.array(v) if isinstance(v, np.memmap) else v for k, v in arrays.items()}
    if not probe:
        if not held_out:
            warn_if_few(n)
        check_values(arrays, held_out)
    return CalibrationData(arrays)


# the names of the arrays in a statistics file ('onnx-eprune calibrate'), told apart from
# calibration data given to the wrong option (here, and in bundle.StatsBundle.load)
STATS_MEMBER = re.compile(r"meta|c\d+\.\w+|probe\d+|gain\d+")

# Calibration files up to this size are read into memory once; larger ones stay
# memory-mapped, read from the disk at each pass (the sequential mode makes several).
IN_MEMORY_BYTES = 1 << 30


def warn_if_few(samples: int) -> None:
    """Warn that statistics over fewer than FEW_SAMPLES calibration samples are noisy."""
    if samples < FEW_SAMPLES:
        log.warning("only %d calibration samples: statistics will be noisy (a few hundred are advised)", samples)


def check_values(arrays: dict[str, np.ndarray], held_out: bool = False) -> None:
    """Inputs that do not vary carry no information to choose channels from; values that
    overflowed when cast to the model's float type would poison the statistics. ``held_out``:
    the arrays are held-out data (``--data``), which the messages then name as such."""
    what = "held-out" if held_out else "calibration"
    constant = []
    for name, a in arrays.items():
        if a.dtype.kind != "f" or a.size == 0:
            continue
        lo, hi = np.min(a), np.max(a)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UsageError(f"{what} array for {name!r} has values beyond the range of {a.dtype} (the "
                             "model's input type); rescale the data the way the model expects")
        if lo == hi:
            constant.append((name, float(lo)))
    if constant and len(constant) == len(arrays):
        name, value = constant[0]
        advice = "measure on" if held_out else "calibrate on"
        raise UsageError(f"{what} array for {name!r} is constant (every value is {value:g}); {advice} real, varying "
                         "inputs (check how the file was made)")
    for name, value in constant:
        log.warning("%s input %r is constant (every value is %g)", what, name, value)


def _batches(batches, inputs, samples: int | None) -> dict[str, np.ndarray]:
    """Concatenate batches (arrays or dicts of arrays) into one dict, stopping once
    ``samples`` rows are in."""
    parts: dict[str, list[np.ndarray]] = {}
    rows = 0
    for index, batch in enumerate(batches):
        if _array_like(batch):
            batch = _as_array(batch, "a calibration batch")
        elif isinstance(batch, (list, tuple)):  # nested lists are arrays too; a pair of arrays is not
            batch = _as_array(batch, f"calibration batch {index}, a {type(batch).__name__} (of inputs and labels? "
                                     "yield the inputs alone),")
        if isinstance(batch, np.ndarray):
            batch = _single(batch, inputs, "a batch")
        if not isinstance(batch, dict) or not batch:
            raise UsageError(f"calibration batches must be arrays or dicts of arrays, not {type(batch).__name__}")
        if parts and set(batch) != set(parts):
            raise UsageError(f"calibration batches disagree on their inputs: {sorted(batch)} vs {sorted(parts)}")
        arrays = {name: _as_array(value, f"a calibration batch of {name!r}") for name, value in batch.items()}
        for name, value in arrays.items():
            if value.ndim == 0:  # no samples axis to count or concatenate on
                raise UsageError(f"calibration batches need samples on axis 0; one of {name!r} is a scalar")
            parts.setdefault(name, []).append(value)
        counts = {name: len(value) for name, value in arrays.items()}
        if len(set(counts.values())) > 1:  # concatenated, its rows would pair with another batch's
            raise UsageError(f"calibration batch {index} holds different numbers of samples for its inputs: "
                             + ", ".join(f"{name} {n}" for name, n in counts.items()))
        rows += len(next(iter(arrays.values())))
        if samples is not None and rows >= samples:
            break
    if not parts:
        raise UsageError("the calibration data source yielded no batches")
    try:
        return {name: np.concatenate(values) for name, values in parts.items()}
    except ValueError as exc:
        raise UsageError(f"calibration batches do not stack: {exc}") from None


def _array_like(value: object) -> bool:
    """Whether ``value`` converts to one array (a torch tensor, a buffer, an object with
    numpy's array interface) rather than being one."""
    return not isinstance(value, np.ndarray) and (
        isinstance(value, memoryview) or any(hasattr(value, a) for a in ("__array__", "__array_interface__")))


def _one_nested_array(value: object, inputs, unbatched: frozenset[str]) -> bool:
    """Whether ``value`` is one array for the model's single input spelled as nested lists
    (``array.tolist()``), not a list of batches, which would cut it into single samples: lists
    or tuples of numbers nested as deep as the input's rank (to any depth where it declares
    no shape). Nested one level deeper they are a list of nested-list batches, and holding an
    array (or a tensor) anywhere, a list of array batches; both are read as batches."""
    if len(inputs) != 1 or not isinstance(value, (list, tuple)) or not value:
        return False
    depth, item = 0, value
    while isinstance(item, (list, tuple)) and item:
        depth, item = depth + 1, item[0]
    ttype = inputs[0].type.tensor_type
    if ttype.HasField("shape") and depth != len(ttype.shape.dim) + (inputs[0].name in unbatched):
        return False
    pending = [value]
    while pending:
        for item in pending.pop():
            if isinstance(item, (list, tuple)):
                pending.append(item)
            elif not isinstance(item, numbers.Number):
                return False
    return True


def _as_array(value: object, what: str) -> np.ndarray:
    """``numpy.asarray(value)``, with a one-line :class:`UsageError` where it fails (ragged
    nested lists, a tensor on a GPU)."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{what} does not convert to an array ({reason})") from None


def _check_array_file(p: Path, what: str) -> None:
    """Refuse, with a clear message, a ``what`` file (one that exists) that is neither .npy
    nor .npz, or one cut short (numpy would call a text file pickled data, and read a short
    one lazily)."""
    try:
        f = open(p, "rb")
    except OSError as exc:  # permissions: the user's to fix, as for an unreadable model
        raise UsageError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    with f:
        head = f.read(6)
        if head == b"\x93NUMPY":
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read(f)
            except Exception:
                raise UsageError(f"{what} file {p} has a damaged .npy header; write it again with "
                                 "numpy.save") from None
            if dtype.hasobject:
                raise UsageError(f"{what} file {p} holds Python objects; save a numeric array "
                                 "(e.g. float32) with numpy.save") from None
            expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = p.stat().st_size
            if size < expected:
                raise UsageError(f"{what} file {p} is truncated ({size:,} of {expected:,} bytes); write it "
                                 "again with numpy.save")
            return
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p):
                return
        except (zipfile.BadZipFile, OSError):
            raise UsageError(f"{what} file {p} is a damaged .npz (truncated?); write it again with "
                             "numpy.savez") from None
    raise UsageError(f"{what} file {p} is not a .npy or .npz file; save the inputs with numpy.save (one "
                     "input) or numpy.savez (input name -> array)")


def _read(path: Path, inputs, what: str) -> dict[str, np.ndarray]:
    require_file(path, what, "a .npy or .npz file")
    _check_array_file(path, what)
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"cannot read {what} file {path} as .npy/.npz ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.ndarray):
        return _single(loaded, inputs, str(path))
    with loaded:
        stats = "meta" in loaded.files and any(STATS_MEMBER.fullmatch(k) for k in loaded.files if k != "meta")
        if stats and not any(vi.name in loaded.files for vi in inputs):
            raise UsageError(f"{path} holds statistics written by 'onnx-eprune calibrate', not "
                             + ("inputs to measure on: give --data the held-out inputs (.npy/.npz)" if what == "data"
                                else "calibration data: give it to --stats"))
        arrays = {}
        for k in loaded.files:  # read on access: a damaged or pickled member fails here
            try:
                arrays[k] = loaded[k]
            except Exception as exc:  # zipfile, zlib and numpy raise several unrelated types
                raise UsageError(f"cannot read array {k!r} of {what} file {path} ({type(exc).__name__}: "
                                 f"{exc}); save numeric arrays with numpy.savez") from None
        return arrays


def _single(array: np.ndarray, inputs, what: str) -> dict[str, np.ndarray]:
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise UsageError(f"the model has {len(inputs)} inputs ({names}): give an .npz with one array per input name, "
                         f"not {what}")
    return {inputs[0].name: array}


def _validate(arrays: dict[str, np.ndarray], inputs, unbatched: frozenset[str] = frozenset()
              ) -> dict[str, np.ndarray]:
    """The arrays checked against the inputs (samples on axis 0; for the ``unbatched``
    inputs, which have no batch axis, on an extra axis 0) and cast to their float type."""
    wanted = {vi.name: vi for vi in inputs}
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise UsageError(f"calibration data lacks model input(s) {', '.join(missing)} "
                         f"(has: {', '.join(arrays) or 'nothing'})")
    out, counts = {}, set()
    symbols: dict[str, tuple[int, str]] = {}  # a named dimension -> (its size, the input that set it)
    for name, vi in wanted.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):  # a memory-mapped .npy stays one
            a = _as_array(a, f"the calibration data for {name!r}")
        ttype = vi.type.tensor_type
        dtype = _FLOAT_TYPES.get(ttype.elem_type)
        if dtype is None:
            raise UsageError(f"model input {name!r} is not a float tensor; only float inputs can be calibrated")
        if a.dtype.kind not in "fiu" and a.dtype != np.bool_:
            kind = "real numbers" if a.dtype.kind == "c" else "numbers"  # a complex array holds numbers too
            raise UsageError(f"calibration array for {name!r} has dtype {a.dtype}, expected {kind}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if name in unbatched:  # one sample is the whole input: samples on an extra axis
            dims = [None] + dims
        if ttype.HasField("shape") and a.ndim != len(dims):
            raise UsageError(f"calibration array for {name!r} has shape {a.shape}, but the model expects rank "
                             f"{len(dims)} ({_fmt(dims)}) with samples on axis 0")
        for axis, (got, want) in enumerate(zip(a.shape, dims)):
            if axis > 0 and want is not None and got != want:
                raise UsageError(f"calibration array for {name!r} has shape {a.shape}, the model expects {_fmt(dims)}")
        named = [d.dim_param if d.HasField("dim_param") else "" for d in ttype.shape.dim]
        for axis, (symbol, got) in enumerate(zip(named, a.shape[1:] if name in unbatched else a.shape)):
            if not symbol or (axis == 0 and name not in unbatched):
                continue  # the batch axis: the sample counts are compared below
            size, where = symbols.setdefault(symbol, (got, name))
            if size != got:
                raise UsageError(f"calibration arrays for {where!r} and {name!r} disagree on the model's dimension "
                                 f"{symbol!r} ({size} and {got}); give them one size")
        if a.shape[0] == 0:
            raise UsageError(f"calibration array for {name!r} holds no samples")
        if a.size == 0:
            raise UsageError(f"calibration array for {name!r} has shape {a.shape}: its samples hold no values")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise UsageError(f"calibration array for {name!r} contains NaN or Inf values")
        if a.dtype != dtype:
            a = a.astype(dtype)
        counts.add(a.shape[0])
        out[name] = a
    if len(counts) > 1:
        raise UsageError(f"calibration arrays disagree on the number of samples: {sorted(counts)}")
    return out


def _fmt(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
