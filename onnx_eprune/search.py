"""A search: the largest target whose pruned model stays within a tolerance.

A deployment asks the question the other way round from :func:`~onnx_eprune.sweep`: not
"what does 50% cost?" but "how much can go for at most half a point of accuracy?".
:func:`search` bisects the target on a grid of ``resolution`` steps between 0 and the
largest target the prunable groups can reach, pruning and measuring one model per step it
tries (about ``log2(reach / resolution)`` runs), and keeps the largest target that met the
tolerance. Bisection takes the loss to grow with the target; where it does not (a few test
images up or down between neighbouring targets), the target found is one whose next grid
step failed, not always the largest that would pass: every tried point is in the result.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .config import PruneConfig, require_bool
from .errors import EPruneError, UsageError, checked_arguments
from .pipeline import PruneResult, input_files, stats_bundle
from .progress import Progress
from .sweep import CALIBRATION_CHECK, Measurer, SweepPoint, quiet_repeats, untargeted_config

log = logging.getLogger("onnx_eprune")

CRITERIA = ("max_drop", "min_agreement", "max_error")
KINDS = ("sparsity", "flops_reduction")  # bisected from 0 up: what they remove grows with them
DEFAULT_RESOLUTION = 0.01


@dataclass
class SearchResult:
    """What :func:`search` found.

    ``kind``: "sparsity" or "flops_reduction"; ``criterion``: "max_drop" (top-1 accuracy lost,
    in percentage points), "min_agreement" (top-1 agreement with the original, a fraction) or
    "max_error" (relative L2 error of the first compared output, a fraction), with its
    ``tolerance``; ``reach``: the largest target the prunable groups can reach (a fraction);
    ``resolution``: the grid step; ``points``: every target tried, ascending (their ``model``
    None but for ``best``, to spare the memory); ``best``: the largest target among them that
    met the tolerance, or None when none did; ``inputs``: the files the search read, which
    :meth:`save` refuses to overwrite.
    """

    kind: str
    criterion: str
    tolerance: float
    reach: float
    resolution: float
    points: list[SweepPoint]
    best: SweepPoint | None
    inputs: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def model(self) -> onnx.ModelProto | None:
        """The pruned model at :attr:`best` (None when no target met the tolerance)."""
        return self.best.model if self.best is not None else None

    def save(self, path: str | os.PathLike) -> None:
        """Write the model at :attr:`best` as :meth:`PruneResult.save` does (atomically, never
        over an input); :class:`UsageError` when no target met the tolerance."""
        if self.best is None:
            raise UsageError("no target met the tolerance: there is no model to save")
        PruneResult(self.best.model, self.best.report, self.inputs).save(path)

    def within(self, point: SweepPoint) -> bool:
        """Whether ``point`` stayed within the tolerance."""
        return _meets(point, self.criterion, self.tolerance)

    def measured(self, point: SweepPoint) -> str:
        """What ``point`` measured of the tolerance's quantity, in words."""
        return _measured(point, self.criterion)

    def as_dict(self) -> dict:
        """JSON-ready (without the models and the full reports): the search's settings, the
        ``best`` target (or None) and ``points``, each tried target's
        :meth:`SweepPoint.as_dict` with ``within_tolerance``."""
        return {"kind": self.kind, "criterion": self.criterion, "tolerance": self.tolerance, "reach": self.reach,
                "resolution": self.resolution, "best": None if self.best is None else self.best.target,
                "points": [dict(p.as_dict(), within_tolerance=self.within(p)) for p in self.points]}


@checked_arguments
def search(model, calib, *, max_drop: float | None = None, min_agreement: float | None = None,
           max_error: float | None = None, kind: str = "sparsity", data=None, labels=None,
           resolution: float = DEFAULT_RESOLUTION, config: PruneConfig | None = None,
           progress: Progress | None = None, stats: list | None = None, latency: bool = False,
           **options) -> SearchResult:
    """Find the largest target of ``kind`` ("sparsity": a fraction of the parameters;
    "flops_reduction": of the MACs) at which the pruned ``model`` stays within one tolerance:

    - ``max_drop``: top-1 accuracy on ``data`` lost against the original, in percentage
      points (0.5 = half a point); needs ``data`` and ``labels`` (class indices, shape (N,)).
    - ``min_agreement``: top-1 agreement with the original's predictions, a fraction in
      (0, 1]; for a model whose first output holds (samples, classes) scores.
    - ``max_error``: relative L2 error of the first compared output, a fraction > 0.

    Without ``data`` the label-free tolerances are measured on the first 256 calibration
    samples (with ``stats``: on up to 256 of those the files keep), in-sample and so
    optimistic. Targets are multiples of ``resolution`` (in (0, 0.5]) up to the largest the
    prunable groups reach. ``model``, ``calib``, ``stats``, ``config``, ``latency`` and
    keyword options as for :func:`onnx_eprune.sweep`. Returns a :class:`SearchResult`; its
    ``model`` is the pruned model at the target found.
    """
    criterion, tolerance = _criterion(max_drop, min_agreement, max_error)
    require_bool("latency", latency)
    if kind not in KINDS:
        raise UsageError(f"a search runs over one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(resolution, numbers.Real) or isinstance(resolution, bool) or not 0 < resolution <= 0.5:
        raise UsageError(f"resolution (--resolution) must be a number in (0, 0.5], not {resolution!r}")
    base = untargeted_config(model, config, options, data, labels, progress, "a search chooses its own targets")
    if criterion == "max_drop" and labels is None:
        raise UsageError("max_drop compares accuracy, which needs data and their labels")
    sources, bundle = stats_bundle(calib, stats)
    if data is None:
        which = "of those the statistics files keep, up to" if bundle else "the first"
        log.warning("no held-out data: the tolerance is measured on the calibration samples (%s %d), which the "
                    "layers were fitted to, and so the target found is optimistic", which, CALIBRATION_CHECK)
    with quiet_repeats(), Measurer(model, calib, kind, data, labels, base, progress, hardest=0.0,
                                   stats=bundle, latency=latency) as measurer:
        if criterion == "min_agreement" and measurer.classes is None:
            raise UsageError(f"min_agreement compares top-1 predictions, but output {measurer.names[0]!r} holds no "
                             "(samples, classes) scores; use max_error")
        steps = math.floor(measurer.reach / resolution + 1e-9)
        if steps < 1:
            raise EPruneError(f"the prunable groups can remove only {measurer.reach:.4f} of the "
                              f"{'parameters' if kind == 'sparsity' else 'MACs'}, less than one resolution step "
                              f"({resolution:g})")
        points, best = _bisect(measurer, steps, resolution, lambda p: _judged(p, criterion, tolerance))
    return SearchResult(kind, criterion, tolerance, measurer.reach, float(resolution),
                        sorted(points, key=lambda p: p.target), best, input_files(model, calib, [*sources, data, labels]))


def _criterion(max_drop, min_agreement, max_error) -> tuple[str, float]:
    """The one tolerance given, checked: its name and value."""
    given = [(name, value) for name, value in zip(CRITERIA, (max_drop, min_agreement, max_error)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one tolerance: max_drop, min_agreement or max_error")
    name, value = given[0]
    named = f"{name} (--{name.replace('_', '-')})"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{named} must be a finite number, not {value!r}")
    if name == "max_drop" and not 0 <= value < 100:
        raise UsageError(f"{named} is in percentage points of accuracy, from 0 to below 100, not {value!r}")
    if name == "min_agreement" and not 0 < value <= 1:
        raise UsageError(f"{named} is a fraction in (0, 1], not {value!r}")
    if name == "max_error" and not value > 0:
        raise UsageError(f"{named} is a relative error above 0, not {value!r}")
    return name, float(value)


def _drop(point: SweepPoint) -> float:
    """The top-1 accuracy ``point`` lost against the original, in percentage points."""
    return 100 * (point.accuracy["original"] - point.accuracy["pruned"])


def _measured(point: SweepPoint, criterion: str) -> str:
    first = next(iter(point.fidelity.values()))
    if criterion == "max_drop":
        return f"an accuracy drop of {_drop(point):.2f} points"
    if criterion == "min_agreement":
        return f"a top-1 agreement of {first['top1_agreement']:.2%}"
    return f"a relative output error of {first['relative_error']:.4g}"


def _judged(point: SweepPoint, criterion: str, tolerance: float) -> bool:
    """:func:`_meets`, with an info line: a search runs for minutes, one target at a time."""
    meets = _meets(point, criterion, tolerance)
    log.info("%s %g gives %s: %s the tolerance", point.kind.replace("_", " "), point.target,
             _measured(point, criterion), "within" if meets else "beyond")
    return meets


def _meets(point: SweepPoint, criterion: str, tolerance: float) -> bool:
    """Whether ``point`` stays within ``tolerance`` of ``criterion`` (its first compared output)."""
    first = next(iter(point.fidelity.values()))
    if criterion == "max_drop":
        return _drop(point) <= tolerance + 1e-9
    if criterion == "min_agreement":
        return first["top1_agreement"] >= tolerance
    return first["relative_error"] <= tolerance


def _bisect(measurer: Measurer, steps: int, resolution: float, meets) -> tuple[list[SweepPoint], SweepPoint | None]:
    """Bisect over the targets ``i * resolution``, ``i`` in 1..``steps``: the original (step
    0) meets any tolerance, and step ``steps + 1`` stands for out of reach. Returns the
    points tried, in the order tried, and the last that met the tolerance (the largest, as
    the lower bound only rises), or None; only that one keeps its model (a large model's
    every pruned copy would otherwise stay in memory)."""
    low, high, points, best = 0, steps + 1, [], None
    while high - low > 1:
        middle = (low + high) // 2
        point = measurer.point(min(round(middle * resolution, 12), measurer.reach))
        points.append(point)
        if meets(point):
            low = middle
            if best is not None:
                best.model = None
            best = point
        else:
            high = middle
            point.model = None
    return points, best
