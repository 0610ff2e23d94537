"""Compare a pruned model with its original: fidelity, accuracy, latency, size."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from .calibrate.data import load_calibration
from .calibrate.engine import Topology
from .calibrate.sensitivity import comparison_outputs
from .calibrate.session import (choose_providers, fixed_batch, make_session, probe_groups, run, samples_per_batch,
                                unbatched_inputs)
from .errors import UsageError, checked_arguments
from .files import require_file
from .graph.costs import build_cost_model
from .graph.groups import GraphAnalysis
from .graph.model_io import as_model, saved_size, size_on_disk
from .graph.standard import standard_form
from .report import printable


def run_model(model: onnx.ModelProto, data, providers: list[str], batch_size: int = 256,
              outputs: list[str] | None = None) -> list[np.ndarray]:
    """The graph outputs of ``model`` (or the tensors ``outputs``) over ``data`` (a
    CalibrationData), concatenated over batches."""
    sess = make_session(model, providers, outputs=outputs)
    outs: list[list[np.ndarray]] = []
    for batch in data.batches(batch_size):
        for i, value in enumerate(run(sess, None, batch)):
            if len(outs) <= i:
                outs.append([])
            outs[i].append(value)
    return [np.concatenate(o) for o in outs]


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, providers: list[str] | None = None) -> float:
    """Top-1 accuracy (a fraction) of the first output of a single-input classifier on
    inputs ``x`` and class indices ``y`` (one per sample; checked as :func:`load_labels`
    checks them, so a shape or label mismatch is a UsageError, not a wrong figure)."""
    model = as_model(model)
    data = load_calibration(x, model, held_out=True)
    logits = run_model(model, data, providers or choose_providers("auto"))[0]
    labels = load_labels(y, len(logits), _classes(logits.shape), model.graph.output[0].name)
    return float(np.mean(logits.argmax(axis=1) == labels))


def latency_ms(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str], threads: int | None = None,
               repeats: int = 20) -> float:
    """Median wall time of one ``run`` in milliseconds, after a warm-up run (onnxruntime's
    default thread settings, as a deployment would run the model). ``feeds`` are what one
    run takes (inputs without a batch axis without a sample axis)."""
    sess = make_session(model, providers, threads=threads, spinning=True, unbatched=frozenset())
    run(sess, None, feeds)  # warm-up, with onnxruntime errors reported in one line
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def latency_feeds(model: onnx.ModelProto, data) -> dict[int, dict[str, np.ndarray]]:
    """What one run takes at each batch size latency is measured at (from the first samples
    of ``data``, CalibrationData, repeated where it holds fewer): 1 and 32; the batch size of
    a model exported with a fixed one; one image for inputs without a batch axis."""
    squeeze = unbatched_inputs(model)
    fixed = fixed_batch(model)
    sizes = [1] if squeeze else [fixed] if fixed else [1, 32]
    feeds = {size: {k: np.resize(v, (size, *v.shape[1:])) for k, v in data.first().items()}
             if size > data.samples else next(data.batches(size)) for size in sizes}
    return {size: {k: v[0] if k in squeeze else v for k, v in f.items()} for size, f in feeds.items()}


def latencies(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[int, dict[str, np.ndarray]],
              providers: list[str], pruned_feeds: dict[int, dict[str, np.ndarray]] | None = None
              ) -> dict[str, dict[str, float]]:
    """Median latency in ms of both models on ``feeds`` (:func:`latency_feeds`; the pruned
    model on ``pruned_feeds`` where its inputs take another type), measured one after the
    other so that both see the same machine load: {"original": {"batch1": ...}, "pruned":
    {...}}."""
    return {which: {f"batch{size}": latency_ms(m, f[size], providers) for size in f}
            for which, m, f in (("original", original, feeds), ("pruned", pruned, pruned_feeds or feeds))}


def _size(model: onnx.ModelProto, path) -> int:
    """Bytes of the model's file and its external data files, or of what save_model would
    write for a model in memory (above the 2 GB limit, where that is a graph and a data
    file, their sum estimated part by part)."""
    if isinstance(path, (str, os.PathLike)):
        return size_on_disk(path)
    return saved_size(model)


def _counts(model: onnx.ModelProto, copies: dict[str, str], shapes: dict, analysis: GraphAnalysis
            ) -> tuple[int, int]:
    costs = build_cost_model(model, analysis, shapes, copies=copies)
    return costs.params(), costs.macs()


def compared_outputs(model: onnx.ModelProto, data, providers: list[str]) -> tuple[list[str], int, int | None]:
    """The tensors to compare ``model``'s pruned versions on, how many samples of ``data`` a
    batch of them may hold (256 at most), and the number of classes that accuracy can tell
    apart (see :func:`_classes`). The tensors are the graph outputs, or, for a model without
    a batch axis (a detector, whose outputs' length depends on the image), the raw
    predictions of :func:`calibrate.sensitivity.comparison_outputs`."""
    return _compared(model, *probe_groups(model, data.first(), providers))


def _compared(model: onnx.ModelProto, shapes: dict, analysis: GraphAnalysis) -> tuple[list[str], int, int | None]:
    names = comparison_outputs(model, analysis, Topology(model), shapes)
    # batch by batch: a segmentation or detection model's outputs take MBs per image
    return names, samples_per_batch(model, shapes, names, 256), _classes(shapes.get(names[0], ()))


def _classes(shape: tuple[int, ...]) -> int | None:
    """The classes of a (samples, classes) output, whose argmax over axis 1 accuracy takes;
    None for another shape, and for one column (a single score: its argmax is always 0)."""
    return shape[1] if len(shape) == 2 and shape[1] > 1 else None


def measure_against(reference: Iterable[list[np.ndarray]], model: onnx.ModelProto, data, names: list[str],
                    size: int, providers: list[str], labels: np.ndarray | None = None,
                    classes: int | None = None) -> tuple[dict, dict | None]:
    """How close ``model``'s ``names`` stay to ``reference`` (their values in the original,
    one list per batch of ``size`` samples of ``data``): the :class:`OutputComparison`
    result, and with ``labels`` (class indices) the top-1 accuracy of the first output in
    both ({"original": ..., "pruned": ...}, else None). With ``classes`` (the first
    output's class count) the accuracy also holds ``per_class``: the ``samples`` of each
    class and both models' accuracy on them (lists indexed by class; None for a class
    without samples)."""
    session = make_session(model, providers, outputs=names)
    comparison, right = OutputComparison(names), np.zeros((2, classes or 1))
    for start, batch, ref in zip(range(0, data.samples, size), data.batches(size), reference):
        got = run(session, None, batch)
        comparison.add(ref, got)
        if labels is not None:
            truth = labels[start:start + len(got[0])]
            for row, out in zip(right, (ref, got)):
                row += np.bincount(truth if classes else np.zeros_like(truth), _hits(_top1(out[0]), truth), len(row))
    if labels is None:
        return comparison.result(), None
    accuracy = {"original": float(right[0].sum() / len(labels)), "pruned": float(right[1].sum() / len(labels))}
    if classes:
        samples = np.bincount(labels, minlength=classes)
        accuracy["per_class"] = {"samples": samples.tolist(), **{
            which: [float(r / n) if n else None for r, n in zip(row, samples)]
            for which, row in (("original", right[0]), ("pruned", right[1]))}}
    return comparison.result(), accuracy


def _top1(scores: np.ndarray) -> np.ndarray:
    """The top-1 class of each row of ``scores`` (samples, classes), as floats: NaN for a
    row holding NaN, whose top-1 class is undefined (and so is any figure that counts it:
    accuracy and agreement are NaN, null in JSON, and no tolerance holds)."""
    top = scores.argmax(1).astype(np.float64)
    return np.where(np.isnan(scores).any(axis=1), np.nan, top) if scores.dtype.kind == "f" else top


def _hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1.0 where the classes ``a`` and ``b`` (samples,) agree, else 0.0; NaN where either
    is NaN (:func:`_top1`)."""
    return np.where(np.isnan(a) | np.isnan(b), np.nan, (a == b).astype(np.float64))


class OutputComparison:
    """Fidelity of ``out_b`` to ``out_a`` (arrays with samples on axis 0), given batch by
    batch so that neither model's outputs need be held whole: per output the relative L2
    error, the mean cosine similarity of the samples and, for (N, classes) outputs, the
    top-1 agreement."""

    def __init__(self, names: list[str]):
        self.names = names
        # per output: squared error, squared norm, summed cosines, agreements, rows
        self.sums = {name: np.zeros(5) for name in names}
        self.classes: dict[str, bool] = {}

    def add(self, out_a: list[np.ndarray], out_b: list[np.ndarray]) -> None:
        for name, ya, yb in zip(self.names, out_a, out_b):
            if ya.shape != yb.shape:
                raise UsageError(f"output {name!r} has shape {ya.shape} in the original and {yb.shape} "
                                 "in the pruned model")
            fa, fb = ya.reshape(len(ya), -1).astype(np.float64), yb.reshape(len(yb), -1).astype(np.float64)
            norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
            # two zero rows are the same row (cosine 1); a zero row against another, 0
            same_zero = (norms == 0) & ~fa.any(1) & ~fb.any(1)
            cos = np.where(same_zero, 1.0, np.sum(fa * fb, 1) / np.maximum(norms, 1e-30))
            self.classes[name] = ya.ndim == 2 and ya.shape[1] > 1
            agree = np.sum(_hits(_top1(ya), _top1(yb))) if self.classes[name] else 0
            self.sums[name] += [np.sum((fa - fb) ** 2), np.sum(fa ** 2), np.sum(cos), agree, len(ya)]

    def result(self) -> dict:
        result = {}
        for name in self.names:
            diff, norm, cos, agree, rows = self.sums[name]
            entry = {"relative_error": float(np.sqrt(diff) / max(np.sqrt(norm), 1e-30)),
                     "cosine": float(cos / max(rows, 1))}
            if self.classes.get(name):
                entry["top1_agreement"] = float(agree / max(rows, 1))
            result[name] = entry
        return result


def compare_outputs(names: list[str], out_a: list[np.ndarray], out_b: list[np.ndarray]) -> dict:
    """:class:`OutputComparison` of whole outputs."""
    comparison = OutputComparison(names)
    comparison.add(out_a, out_b)
    return comparison.result()


def load_labels(labels, samples: int, classes: int | None, output: str) -> np.ndarray:
    """Class indices (path to .npy or array), one per sample, as int64, for the accuracy of
    the compared tensor ``output`` (the first graph output), which has ``classes`` columns.

    Refused unless they are whole numbers from 0 to ``classes`` - 1: booleans, fractions,
    NaN, negative or too large labels would give a plausible but meaningless accuracy (0% or
    10%) rather than an error. Refused too when ``output`` is no (samples, classes) array
    (``classes`` None: a segmentation map, an int64 label), whose argmax over axis 1 is no
    class per sample."""
    if classes is None:
        raise UsageError(f"labels give the accuracy of the model's first output, {output!r}, which holds no "
                         "(samples, classes) scores; measure without labels, or put the classifier output first")
    path = isinstance(labels, (str, os.PathLike))
    what = f"labels file {labels}" if path else "labels"
    y = read_labels(labels) if path else np.asarray(labels)
    if y.ndim > 1 and y.size != len(y):
        raise UsageError(f"{what} has shape {y.shape}; give one class index per sample (of one-hot rows, their "
                         "argmax(1))")
    y = y.reshape(-1)
    if len(y) != samples:
        holder = f"{what} holds " if path else ""  # the file to fix, where there is one
        raise UsageError(f"{holder}{len(y)} labels for {samples} samples")
    if y.dtype.kind not in "iuf":  # booleans, strings, dates: not class indices
        raise UsageError(f"{what} holds {y.dtype} values; give integer class indices")
    whole = np.isfinite(y) & (y == np.round(y)) if y.dtype.kind == "f" else np.ones(len(y), bool)
    if not whole.all():
        raise UsageError(f"{what} holds {y[~whole][0]:g}, not a class index; give integer class indices")
    if len(y) and y.min() < 0:
        raise UsageError(f"{what} holds the negative label {y.min():g}; class indices start at 0")
    if len(y) and y.max() >= classes:
        raise UsageError(f"{what} holds the label {y.max():g}, but the model's output has {classes} classes "
                         f"(0 to {classes - 1})")
    return y.astype(np.int64)


def read_labels(path) -> np.ndarray:
    """The array in a .npy labels file (a path); any other file is a usage error."""
    path = Path(path)
    require_file(path, "labels", "a .npy file")
    try:
        y = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several unrelated types on text, pickles and damaged files
        raise UsageError(f"cannot read labels file {path} as .npy ({type(exc).__name__}: {exc}); save the class "
                         "indices with numpy.save") from None
    if not isinstance(y, np.ndarray):
        y.close()
        raise UsageError(f"labels file {path} is an .npz archive; save the class indices as one array with "
                         "numpy.save")
    return y


@checked_arguments
def evaluate(original, pruned, data, labels=None, device: str = "auto") -> dict:
    """Fidelity of ``pruned`` to ``original`` on ``data`` (a .npy/.npz path, an array or a
    dict of arrays, samples on axis 0).

    Returns a dict: per output top-1 agreement, relative L2 error and mean cosine
    similarity; the top-1 accuracy of both, a fraction in [0, 1] ({"original": ...,
    "pruned": ..., "per_class": ...}), when ``labels`` (path or array of class indices,
    shape (N,) for the N samples of ``data``) is given, where ``per_class`` holds the
    ``samples`` of each class and both models' accuracy on them ({"samples": [...],
    "original": [...], "pruned": [...]}, lists indexed by class, None for a class without
    samples); median latency (ms) of both at batch 1 and batch 32 (at
    the model's batch size when its export fixed one); file size, parameters and MACs.
    """
    a, b = as_model(original), as_model(pruned)
    # the sizes of the files as read: one replaced during the run must not lend its size
    file_bytes = {"original": _size(a, original), "pruned": _size(b, pruned)}
    # counted as the standard ops they compute
    copies = [standard_form(m).normalized.copies for m in (a, b)]
    _check_same_outputs(a, b, _described(original, "original"), _described(pruned, "pruned"))
    providers = choose_providers(device)
    data_a = _fitted(data, a, _described(original, "original"))
    # the pruned model must take the same inputs, each in the type it declares
    data_b = _fitted(data_a.arrays, b, _described(pruned, "pruned"))
    _check_same_batching(a, b, _described(original, "original"), _described(pruned, "pruned"))
    shapes_a, analysis_a = probe_groups(a, data_a.first(), providers)
    names, size, classes = _compared(a, shapes_a, analysis_a)
    y = load_labels(labels, data_a.samples, classes, names[0]) if labels is not None else None
    original_session = make_session(a, providers, outputs=names)
    reference = (run(original_session, None, batch) for batch in data_a.batches(size))
    fidelity, accuracy = measure_against(reference, b, data_b, names, size, providers, y, classes)
    result: dict = {"samples": data_a.samples, "provider": providers[0], "outputs": fidelity}
    if accuracy is not None:
        result["accuracy"] = accuracy
    result["latency_ms"] = latencies(a, b, latency_feeds(a, data_a), providers, latency_feeds(b, data_b))
    pa, ma = _counts(a, copies[0], shapes_a, analysis_a)
    pb, mb = _counts(b, copies[1], *probe_groups(b, data_b.first(), providers))
    result["size"] = {"original": {"bytes": file_bytes["original"], "params": pa, "macs": ma},
                      "pruned": {"bytes": file_bytes["pruned"], "params": pb, "macs": mb}}
    return result


def _described(source, which: str) -> str:
    """How messages name the ``which`` ("original" or "pruned") model: with its path if it has one."""
    return f"the {which} model {source}" if isinstance(source, (str, os.PathLike)) else f"the {which} model"


def _check_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, name_a: str, name_b: str) -> None:
    """The two models are compared output by output, by name: refuse models whose outputs differ."""
    outs_a, outs_b = [o.name for o in a.graph.output], [o.name for o in b.graph.output]
    if set(outs_a) != set(outs_b):
        raise UsageError(f"the models' outputs differ: {name_a} has {', '.join(outs_a)}, {name_b} has "
                         f"{', '.join(outs_b)}; compare a model with a pruned version of it")


def _check_same_batching(a: onnx.ModelProto, b: onnx.ModelProto, name_a: str, name_b: str) -> None:
    """Both models are fed the same batches: refuse a pair whose batch axes differ (one
    exported for a fixed batch size, or without a batch axis, the other not)."""
    def batching(m: onnx.ModelProto) -> str:
        fixed, squeeze = fixed_batch(m), unbatched_inputs(m)
        return f"batches of {fixed}" if fixed else "one sample at a time" if squeeze else "batches of any size"

    if batching(a) != batching(b):
        raise UsageError(f"{name_a} takes {batching(a)}, {name_b} {batching(b)}; compare a model with a pruned "
                         "version of it, exported the same way")


def _fitted(data, model: onnx.ModelProto, name: str):
    """``data`` checked against ``model``'s inputs, its errors naming the model and --data."""
    try:
        return load_calibration(data, model, held_out=True)
    except UsageError as exc:
        raise UsageError(f"--data for {name}: {exc}") from None


def _worst_class(per_class: dict | None) -> int | None:
    """The class whose accuracy fell most (the first of equals), among those with samples,
    where there are two or more of them."""
    if not per_class:
        return None
    drops = [(o - p, -k) for k, (o, p) in enumerate(zip(per_class["original"], per_class["pruned"]))
             if o is not None and np.isfinite(o - p)]
    return -max(drops)[1] if len(drops) > 1 else None


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%" if np.isfinite(fraction) else "undefined (outputs hold NaN)"


def format_evaluation(r: dict, class_names: list[str] | None = None) -> str:
    """:func:`evaluate`'s result as text lines; ``class_names[k]`` names class k where given."""
    lines = [f"{r['samples']} samples on {r['provider']}"]
    for name, e in r["outputs"].items():
        agree = f", top-1 agreement {_percent(e['top1_agreement'])}" if "top1_agreement" in e else ""
        lines.append(f"output {printable(name)}: relative error {e['relative_error']:.4f}, "
                     f"cosine {e['cosine']:.5f}{agree}")
    if "accuracy" in r:
        acc = r["accuracy"]
        change = acc["pruned"] - acc["original"]
        lines.append(f"accuracy: original {_percent(acc['original'])}, pruned {_percent(acc['pruned'])}"
                     + (f" ({100 * change:+.2f} points)" if np.isfinite(change) else ""))
        worst, per = _worst_class(acc.get("per_class")), acc.get("per_class")
        if worst is not None and per["pruned"][worst] >= per["original"][worst]:
            lines.append("no class lost accuracy")
        elif worst is not None:
            names = class_names or []
            named = f" ({printable(names[worst])})" if worst < len(names) else ""
            before, after = per["original"][worst], per["pruned"][worst]
            lines.append(f"largest drop of one class: class {worst}{named}, {100 * before:.2f}% -> {100 * after:.2f}% "
                         f"({100 * (after - before):+.2f} points on {per['samples'][worst]} samples)")
    for which in ("original", "pruned"):
        lat = ", ".join(f"{k} {v:.2f} ms" for k, v in r["latency_ms"][which].items())
        s = r["size"][which]
        lines.append(f"{which:<8}: {s['bytes']:,} bytes, {s['params']:,} params, {s['macs']:,} MACs; latency {lat}")
    return "\n".join(lines)
