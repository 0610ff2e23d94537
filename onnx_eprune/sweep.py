"""A sweep: one model pruned at several targets, and how close each result stays.

Choosing a sparsity means weighing size against fidelity. :func:`sweep` prunes at every
target and measures each pruned model against the original on held-out ``data`` (with
``labels``: accuracy too); without ``data`` it measures on the first 256 calibration
samples (in-sample: a weaker check). The targets' runs share what does not depend on the
target (:class:`Measurer`): in one-shot mode the statistics, computed once or read from
statistics files; in sequential mode the first pass over the original network, after which
every target runs its own sequential stages.
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

from .calibrate.bundle import StatsBundle, merge_bundles
from .calibrate.data import CalibrationData, load_calibration
from .calibrate.engine import CacheSpace, CachedNetwork, Topology
from .calibrate.session import choose_providers
from .config import PruneConfig, check_progress, make_config, require_bool
from .errors import UsageError, checked_arguments
from .evaluate import compared_outputs, latencies, latency_feeds, load_labels, measure_against
from .graph.model_io import as_model, check_model_arg, normalize
from .pipeline import Pruner, Rankings, calibrate, config_for_stats, stats_bundle
from .progress import Progress
from .report import optimism_note

TARGET_FIELDS = ("sparsity", "flops_reduction", "keep_ratio")  # the PruneConfig fields a sweep sets itself
CALIBRATION_CHECK = 256  # without held-out data, fidelity is measured on this many calibration samples


@dataclass
class SweepPoint:
    """One target of a sweep: what was removed and how close the pruned model stays.

    ``target``, ``params_removed``, ``macs_removed``: fractions in [0, 1] (``kind`` says
    which one the target is: "sparsity", "flops_reduction" or "keep_ratio").
    ``fidelity``: output name -> relative_error, cosine, top1_agreement (on ``data``, or on
    calibration samples when ``fidelity_on`` says so); ``accuracy``: pruned and original
    top-1 accuracy, fractions in [0, 1] ({"original": ..., "pruned": ...}), when labels were
    given, else None; ``seconds``: wall time of the pruning run; ``latency_ms``: when asked
    for, the median latency in milliseconds of the original and the pruned model, measured
    one after the other ({"original": {"batch1": ..., "batch32": ...}, "pruned": {...}}, as
    :func:`onnx_eprune.evaluate` gives it), else None.
    """

    kind: str
    target: float
    params_removed: float
    macs_removed: float
    fidelity: dict
    fidelity_on: str
    seconds: float
    accuracy: dict | None = None
    latency_ms: dict | None = None
    report: dict = field(default_factory=dict, repr=False)
    model: onnx.ModelProto | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """JSON-ready (without the model and the full report)."""
        return {"kind": self.kind, "target": self.target, "params_removed": self.params_removed,
                "macs_removed": self.macs_removed, "fidelity": self.fidelity, "fidelity_on": self.fidelity_on,
                "accuracy": self.accuracy, "seconds": self.seconds, "latency_ms": self.latency_ms}


@checked_arguments
def sweep(model, calib, targets: list[float], kind: str = "sparsity", data=None, labels=None,
          config: PruneConfig | None = None, progress: Progress | None = None, stats: list | None = None,
          latency: bool = False, **options) -> list[SweepPoint]:
    """Prune ``model`` at each of ``targets`` (a list of fractions, each given once: of
    parameters to remove for ``kind="sparsity"`` and of MACs for ``"flops_reduction"``, in
    [0, 1); of the channels every prunable group keeps for ``"keep_ratio"``, in (0, 1]) and
    measure every result; the points come back from the lightest pruning to the heaviest
    (ascending targets; descending keep ratios).

    ``model`` and ``calib`` as for :func:`onnx_eprune.prune`, or ``stats`` instead of
    ``calib`` as there (one-shot runs from the statistics files, no calibration); ``data``:
    held-out inputs (as for ``calib``) to measure fidelity on; ``labels``: their class
    indices (path or array, shape (N,)) for accuracy, only with ``data``. ``config`` or
    keyword options set the rest of the run as for :func:`onnx_eprune.prune`: a config's
    target fields are ignored, target keywords (``sparsity=``...) refused, as the targets are
    ``targets``. ``latency``: also time every pruned model against the original (each
    point's ``latency_ms``), on the first samples of ``data`` (or of the calibration data).
    """
    if kind not in TARGET_FIELDS:
        raise UsageError(f"a sweep runs over one of {', '.join(TARGET_FIELDS)}, not {kind!r}")
    require_bool("latency", latency)
    targets = _checked_targets(targets)
    base = untargeted_config(model, config, options, data, labels, progress,
                             "a sweep takes its targets in targets=[...]")
    # a target out of range fails now, not after calibrating or pruning the smaller ones
    for value in targets:
        replace(base, **{kind: value}).target()
    bundle = stats_bundle(calib, stats)[1]
    lightest_first = sorted(targets, reverse=kind == "keep_ratio")
    with quiet_repeats(), Measurer(model, calib, kind, data, labels, base, progress, hardest=lightest_first[-1],
                                   stats=bundle, latency=latency) as measurer:
        return [measurer.point(value) for value in lightest_first]


def untargeted_config(model, config: PruneConfig | None, options: dict, data, labels, progress: Progress | None,
                      targets_from: str) -> PruneConfig:
    """The config of a run over several targets, without a target, once the arguments that
    every such run shares are checked: :class:`UsageError` for labels without data, a
    target among the keyword ``options`` (``targets_from`` says where they come from
    instead), a model or progress argument of the wrong kind."""
    if labels is not None and data is None:
        raise UsageError("labels need data: the inputs they label")
    given = [name for name in TARGET_FIELDS if name in options]
    if given:
        raise UsageError(f"{targets_from}, not {given[0]}=")
    base = replace(make_config(config, options), sparsity=None, flops_reduction=None, keep_ratio=None)
    check_model_arg(model)
    check_progress(progress)
    return base


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
def quiet_repeats() -> Iterator[None]:
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


def _first(arrays: dict) -> CalibrationData:
    """The first :data:`CALIBRATION_CHECK` samples of calibration ``arrays`` (already checked
    against the model), to measure fidelity on without held-out data."""
    return CalibrationData({k: v[:CALIBRATION_CHECK] for k, v in arrays.items()})


class Measurer:
    """Prunes one model at targets of one ``kind`` and measures each result against the
    original, sharing between targets what does not depend on them: the calibration arrays,
    the held-out data and labels, the original's outputs on them (cached, in scratch files
    past the memory share), the groups' rankings (:class:`Rankings`) and, in sequential mode,
    what the first pass over the original network recorded for the stages (its target
    rows, in scratch files) or, in one-shot mode, the statistics (but for a model with a
    consumer too wide for statistics of every feature). Each result is the same
    bytes as a run of ``prune`` at its target.

    Arguments as for :func:`sweep` (``base``: the config without a target; ``stats``: the
    merged statistics files, with ``calib`` None; ``latency``: time each pruned model against
    the original, on the feeds of :func:`latency_feeds`); ``hardest``: of the targets that
    will be asked for, the one that removes the most, checked for reach (and a mistyped
    ``--exclude``) before any calibration. A context manager: leaving it removes the scratch
    files.
    """

    def __init__(self, model, calib, kind: str, data, labels, base: PruneConfig, progress: Progress | None,
                 hardest: float, stats: StatsBundle | None = None, latency: bool = False) -> None:
        self.kind, self.progress, self.in_sample = kind, progress, data is None
        self.original = as_model(model)
        normalize(self.original)
        if stats is not None:
            base = config_for_stats(base, stats)
            self.arrays = None
        else:  # loaded once: an iterable or a data reader would be spent after the first target
            self.arrays = load_calibration(calib, self.original, base.samples).arrays
        self.base = replace(base, samples=None)  # the arrays hold the first --samples: no run need cut (and warn) again
        # a target out of reach, a mistyped --exclude or statistics files of another model
        # fail now, not after calibrating or pruning at the lighter targets
        pruner = Pruner(self.original, self.arrays, replace(self.base, **{kind: hardest}), stats=stats)
        self.reach = pruner.reach(pruner.preflight())
        # statistics files would freeze the groups of consumers too wide for statistics of
        # every feature, which a run from the calibration data prunes: such a one-shot sweep
        # computes its statistics at every target, so that each is the bytes of prune's
        self.shared_stats = not pruner.analysis.wide
        self.providers = choose_providers(base.device)
        if data is not None:
            try:
                self.held_out = load_calibration(data, self.original, held_out=True)
            except UsageError as exc:  # its messages speak of calibration data
                raise UsageError(f"--data: {exc}") from None
            self.on = f"{self.held_out.samples} held-out samples"
        elif stats is not None:  # the images the files keep to measure sensitivities (about one in eight)
            self.held_out = _first(pruner.validation_data.arrays)
            self.on = f"{self.held_out.samples} of the calibration samples that the statistics files keep"
        else:
            self.held_out = _first(self.arrays)
            self.on = f"the first {self.held_out.samples} calibration samples"
        self.names, size, self.classes = compared_outputs(self.original, self.held_out, self.providers)
        self.size = size
        self.labels = (load_labels(labels, self.held_out.samples, self.classes, self.names[0])
                       if labels is not None else None)
        self.feeds = latency_feeds(self.original, self.held_out) if latency else None
        self.stats = stats  # one-shot statistics: the files', or computed for the first target
        self.rankings: Rankings | None = None  # drawn by the first target's run
        self.space = CacheSpace.default()
        self.records = CacheSpace.default()  # the sequential first pass's, kept for every target's run
        self.reference = CachedNetwork(self.original, Topology(self.original), self.held_out, self.providers, size,
                                       self.space)

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.space.close()
        self.records.close()

    def point(self, value: float) -> SweepPoint:
        """Prune at ``value`` (a fraction of this measurer's ``kind``) and measure the result."""
        config = replace(self.base, **{self.kind: value})
        if self.base.mode == "oneshot" and self.stats is None and self.shared_stats:
            self.stats = merge_bundles([calibrate(self.original, self.arrays, self.base, self.progress)])
        if self.stats is not None:
            config = replace(config, positions=None)  # the statistics were computed at them
        t0 = time.perf_counter()
        pruner = Pruner(self.original, None if self.stats else self.arrays, config, self.progress, stats=self.stats,
                        rankings=self.rankings, records=self.records)
        result = pruner.run()
        self.rankings = pruner.rankings
        seconds = time.perf_counter() - t0
        names = self.names
        fidelity, accuracy = measure_against(([values[n] for n in names] for values in self.reference.compute(names)),
                                             result.model, self.held_out, names, self.size, self.providers,
                                             self.labels)
        rep = result.report
        # calibration samples that thin layers were fitted to flatter the pruned model
        on = f"{self.on} {optimism_note(rep)}" if self.in_sample and rep.get("thin_refits") else self.on
        latency = latencies(self.original, result.model, self.feeds, self.providers) if self.feeds else None
        return SweepPoint(self.kind, value, rep["params"]["removed_fraction"], rep["macs"]["removed_fraction"],
                          fidelity, on, seconds, accuracy, latency, rep, result.model)
