"""A sweep: one model pruned at several targets, and how close each result stays.

Choosing a sparsity means weighing size against fidelity. :func:`sweep` prunes at every
target and measures each pruned model against the original on held-out ``data`` (with
``labels``: accuracy too); without ``data`` it measures on the first 256 calibration
samples (in-sample: a weaker check). In one-shot mode the statistics are computed once and
shared by all targets; in sequential mode every target is a full run.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import onnx

from .calibrate.data import load_calibration
from .calibrate.engine import CacheSpace, CachedNetwork, Topology
from .calibrate.session import choose_providers
from .config import PruneConfig, check_progress, make_config
from .errors import UsageError
from .evaluate import compared_outputs, load_labels, measure_against
from .graph.model_io import as_model, check_model_arg, normalize
from .pipeline import Pruner, calibrate, prune
from .progress import Progress
from .report import optimism_note

KINDS = ("sparsity", "flops_reduction")
TARGET_FIELDS = ("sparsity", "flops_reduction", "keep_ratio")  # the PruneConfig fields a sweep sets itself
CALIBRATION_CHECK = 256  # without held-out data, fidelity is measured on this many calibration samples


@dataclass
class SweepPoint:
    """One target of a sweep: what was removed and how close the pruned model stays.

    ``target``, ``params_removed``, ``macs_removed``: fractions in [0, 1] (``kind`` says
    which one the target is: "sparsity" or "flops_reduction").
    ``fidelity``: output name -> relative_error, cosine, top1_agreement (on ``data``, or on
    calibration samples when ``fidelity_on`` says so); ``accuracy``: pruned and original
    top-1 accuracy, fractions in [0, 1] ({"original": ..., "pruned": ...}), when labels were
    given, else None; ``seconds``: wall time of the pruning run.
    """

    kind: str
    target: float
    params_removed: float
    macs_removed: float
    fidelity: dict
    fidelity_on: str
    seconds: float
    accuracy: dict | None = None
    report: dict = field(default_factory=dict, repr=False)
    model: onnx.ModelProto | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """JSON-ready (without the model and the full report)."""
        return {"kind": self.kind, "target": self.target, "params_removed": self.params_removed,
                "macs_removed": self.macs_removed, "fidelity": self.fidelity, "fidelity_on": self.fidelity_on,
                "accuracy": self.accuracy, "seconds": self.seconds}


def sweep(model, calib, targets: list[float], kind: str = "sparsity", data=None, labels=None,
          config: PruneConfig | None = None, progress: Progress | None = None, **options) -> list[SweepPoint]:
    """Prune ``model`` at each of ``targets`` (a list of fractions in [0, 1), each given
    once: of parameters for ``kind="sparsity"``, of MACs for ``"flops_reduction"``) and
    measure every result; the points come back in ascending order of target.

    ``model`` and ``calib`` as for :func:`onnx_eprune.prune`; ``data``: held-out inputs (as
    for ``calib``) to measure fidelity on; ``labels``: their class indices (path or array,
    shape (N,)) for accuracy, only with ``data``. ``config`` or keyword options set the rest
    of the run as for :func:`onnx_eprune.prune`: a config's target fields are ignored, target
    keywords (``sparsity=``...) refused, as the targets are ``targets``.
    """
    if kind not in KINDS:
        raise UsageError(f"a sweep runs over one of {', '.join(KINDS)}, not {kind!r}")
    targets = _checked_targets(targets)
    if labels is not None and data is None:
        raise UsageError("labels need data: the inputs they label")
    given = [name for name in TARGET_FIELDS if name in options]
    if given:
        raise UsageError(f"a sweep takes its targets in targets=[...], not {given[0]}=")
    base = replace(make_config(config, options), sparsity=None, flops_reduction=None, keep_ratio=None)
    check_model_arg(model)
    check_progress(progress)
    # a target out of range fails now, not after calibrating or pruning the smaller ones
    for value in targets:
        replace(base, **{kind: value}).target()
    with _once():
        return _sweep(model, calib, targets, kind, data, labels, base, progress)


def _checked_targets(targets: object) -> list[float]:
    """``targets`` as a list of floats: :class:`UsageError` for a bare number or string (a
    string would be read character by character), an empty list, a non-number or a repeat."""
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
        raise UsageError(f"targets must be a list of fractions, e.g. [0.3, 0.5], not {targets!r}")
    values = list(targets)
    if not values:
        raise UsageError("give at least one target to sweep over")
    for value in values:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise UsageError(f"targets must be numbers, not {value!r}")
    values = [float(v) for v in values]
    repeated = repeated_targets(values)
    if repeated:
        raise UsageError(f"targets lists {', '.join(f'{v:g}' for v in repeated)} more than once; give each once")
    return values


def repeated_targets(values: list[float]) -> list[float]:
    """The targets ``values`` lists more than once, ascending (a repeat would run twice)."""
    return sorted({v for v in values if values.count(v) > 1})


@contextmanager
def _once() -> Iterator[None]:
    """Drop the info and warning lines that a sweep already printed: every target's run
    would repeat the provider, the exclusions and the calibration data's warnings."""
    seen: set[str] = set()
    mine = threading.get_ident()  # the sweep's own lines: a run on another thread logs as it would

    def once(record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or record.thread != mine:
            return True
        message = record.getMessage()
        fresh = message not in seen
        seen.add(message)
        return fresh

    logger = logging.getLogger("onnx_eprune")
    logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)


def _sweep(model, calib, targets: list[float], kind: str, data, labels, base: PruneConfig,
           progress: Progress | None) -> list[SweepPoint]:
    """:func:`sweep` once its arguments are checked (``base``: the config without a target)."""
    original = as_model(model)
    normalize(original)
    # loaded once: an iterable or a data reader would be spent after the first target
    arrays = load_calibration(calib, original, base.samples).arrays
    base = replace(base, samples=None)  # the arrays hold the first --samples: no run need cut (and warn) again
    providers = choose_providers(base.device)
    if data is not None:
        try:
            held_out = load_calibration(data, original, held_out=True)
        except UsageError as exc:  # its messages speak of calibration data
            raise UsageError(f"--data: {exc}") from None
        on = f"{held_out.samples} held-out samples"
    else:
        held_out = load_calibration({k: v[:CALIBRATION_CHECK] for k, v in arrays.items()}, original, probe=True)
        on = f"the first {held_out.samples} calibration samples"
    names, size, classes = compared_outputs(original, held_out, providers)
    y = load_labels(labels, held_out.samples, classes, names[0]) if labels is not None else None
    # a target out of reach, or a mistyped --exclude, fails now, not after calibrating or
    # pruning the smaller targets (the largest is the hardest to reach)
    Pruner(original, arrays, replace(base, **{kind: max(targets)})).preflight()
    stats = [calibrate(original, arrays, base, progress)] if base.mode == "oneshot" else None
    # the original's outputs, computed once and kept (in scratch files past the memory share)
    space = CacheSpace.default()
    reference = CachedNetwork(original, Topology(original), held_out, providers, size, space)
    points = []
    try:
        for value in sorted(targets):
            config = replace(base, **{kind: value})
            t0 = time.perf_counter()
            result = prune(original, None if stats else arrays, config, progress, stats=stats)
            seconds = time.perf_counter() - t0
            fidelity, accuracy = measure_against(([values[n] for n in names] for values in reference.compute(names)),
                                                 result.model, held_out, names, size, providers, y)
            rep = result.report
            # calibration samples that thin layers were fitted to flatter the pruned model
            point_on = f"{on} {optimism_note(rep)}" if data is None and rep.get("thin_refits") else on
            points.append(SweepPoint(kind, value, rep["params"]["removed_fraction"],
                                     rep["macs"]["removed_fraction"], fidelity, point_on, seconds, accuracy, rep,
                                     result.model))
    finally:
        space.close()
    return points
