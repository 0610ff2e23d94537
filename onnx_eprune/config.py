"""What steers a pruning run: :class:`PruneConfig`, and the checks that refuse a bad one
with a :class:`UsageError` before any work."""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import budget
from .errors import UsageError
from .graph.exclude import check_patterns
from .progress import Progress
from .select import METHODS, entropic
from .select.reconstruct import RIDGE_CHOICES, THIN, valid_ridge

MODES = ("sequential", "oneshot")


@dataclass
class PruneConfig:
    """Everything that steers a pruning run (the CLI option of the same name says more).

    Target, exactly one of: ``sparsity`` (fraction in [0, 1) of the Conv/ConvTranspose/
    Gemm/MatMul parameters to remove), ``flops_reduction`` (fraction in [0, 1) of their
    multiply-accumulates at the calibration input shape) and ``keep_ratio`` (fraction in
    (0, 1] of the channels every prunable group keeps).

    ``method``: "entropic", "lasso", "thinet", "l1" or "random"; ``mode``: "sequential"
    or "oneshot" (None: sequential, one-shot from statistics files, which refuse
    "sequential"); ``samples``: use the first N calibration samples (None: all); ``seed``:
    conv position sampling and ``random``'s choice (None: 0, or the seed of the statistics
    files a run is given, which any other seed must equal); ``device``: "auto", "cpu" or "cuda";
    ``batch_size``: calibration samples per onnxruntime run, at most; ``positions``: conv
    output positions sampled per image (None: automatic); ``round_to``: kept counts are
    multiples of this (None: 8 for convolution outputs of 64 channels or more, else 1);
    ``reconstruct``: re-fit the consumers by least squares; ``refit_ridge``: the re-fit's
    ridge relative to the mean kept-feature variance (a number from 0 to 1e6, "auto" or
    "auto-thin"); ``entropic``: the entropic selector's knobs; ``exclude``: node-name
    patterns whose channel groups stay whole; ``min_keep``: fraction in [0, 1] of its
    channels every prunable group keeps at least.
    """

    sparsity: float | None = None
    flops_reduction: float | None = None
    keep_ratio: float | None = None
    method: str = "entropic"
    mode: str | None = None              # None: sequential, or one-shot from statistics files
    samples: int | None = None
    seed: int | None = None              # None: 0, or that of the statistics files
    device: str = "auto"
    batch_size: int = 64
    positions: int | None = None        # conv output positions per image (None: automatic)
    round_to: int | None = None          # keep counts at multiples of this (None: budget.AUTO_ROUND)
    reconstruct: bool = True             # least-squares re-fit of the consumers
    # ridge toward the original weights in the re-fit, relative to the mean kept-feature
    # variance; "auto": chosen per consumer by generalised cross-validation; "auto-thin":
    # 0.01, or auto's choice where a consumer has few rows per kept feature (fixed_ridge)
    refit_ridge: float | str = THIN
    entropic: entropic.EntropicConfig = field(default_factory=entropic.EntropicConfig)
    # node-name patterns (wildcards * and ?) whose channel groups stay whole (graph/exclude.py)
    exclude: tuple[str, ...] = ()
    min_keep: float = 0.0                # every group keeps at least ceil(min_keep * C) channels

    def target(self) -> budget.Target:
        """The one target set, checked; :class:`UsageError` if none, several or out of range."""
        given = [(k, v) for k, v in (("sparsity", self.sparsity), ("flops", self.flops_reduction),
                                     ("keep_ratio", self.keep_ratio)) if v is not None]
        if len(given) != 1:
            # the command line's parser already asks for exactly one: only Python callers get here
            raise UsageError("give exactly one target: sparsity, flops_reduction or keep_ratio")
        kind, value = given[0]
        _require_number({"flops": "flops_reduction"}.get(kind, kind), value)
        value = float(value)
        # the user's spelling, Python's or the command line's, not budget.Target's internal kind 'flops'
        name = {"flops": "flops_reduction (--flops-reduction)"}.get(kind, kind)
        if not np.isfinite(value):
            raise UsageError(f"the {name} target must be a finite number")
        if kind == "keep_ratio" and not 0.0 < value <= 1.0:
            raise UsageError(f"keep_ratio (--keep-ratio) must be in (0, 1], not {value!r}")
        if kind != "keep_ratio" and not 0.0 <= value < 1.0:
            raise UsageError(f"the {name} target must be in [0, 1), not {value!r}")
        return budget.Target(kind, float(value))

    def check(self) -> None:
        """Raise :class:`UsageError` for a field of the wrong type or out of its range (the
        target: :meth:`target`)."""
        # types first: the command line's parser guarantees them, Python callers may pass anything
        _require_int("batch_size", self.batch_size)
        for name in ("samples", "seed", "positions", "round_to"):
            _require_int(name, getattr(self, name), optional=True)
        _require_number("min_keep", self.min_keep)
        require_bool("reconstruct", self.reconstruct)
        if not isinstance(self.entropic, entropic.EntropicConfig):
            raise UsageError("entropic must be an onnx_eprune.select.entropic.EntropicConfig, not "
                             f"{type(self.entropic).__name__}")
        self.entropic.check()
        if self.method not in METHODS:
            raise UsageError(f"method (--method) must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.mode is not None and self.mode not in MODES:
            raise UsageError(f"mode (--mode) must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size (--batch-size) must be positive, not {self.batch_size}")
        if self.round_to is not None and self.round_to < 1:
            raise UsageError(f"round_to (--round-to) must be positive, not {self.round_to}")
        if self.positions is not None and self.positions < 1:
            raise UsageError(f"positions (--positions) must be positive, not {self.positions}")
        if self.seed is not None and self.seed < 0:  # numpy's generators take none below 0
            raise UsageError(f"seed (--seed) must be 0 or more, not {self.seed}")
        if not valid_ridge(self.refit_ridge):
            raise UsageError(f"refit_ridge (--refit-ridge) must be {RIDGE_CHOICES}, not {self.refit_ridge!r}")
        if not self.reconstruct and self.refit_ridge != THIN:  # as the command line refuses the pair
            raise UsageError(f"refit_ridge={self.refit_ridge!r} sets the ridge of the re-fit, which "
                             "reconstruct=False skips; drop one of them")
        if not 0.0 <= self.min_keep <= 1.0:  # also refuses NaN
            raise UsageError(f"min_keep (--min-keep) must be in [0, 1], not {self.min_keep!r}")
        check_patterns(self.exclude)


def _require_int(name: str, value: object, optional: bool = False) -> None:
    """Refuse a ``value`` that is not an integer (``None`` too, where ``optional``): a float
    would fail deep inside numpy, and ``True`` would silently read as 1."""
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be an integer{' or None' if optional else ''}, not {value!r}")


def require_bool(name: str, value: object) -> None:
    """Refuse a ``value`` that is not True or False: "no" or 0 would read as a truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, not {value!r}")


def _require_number(name: str, value: object) -> None:
    """Refuse a ``value`` that is not a real number (a string such as "0.5", or a bool)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be a number, not {value!r}")


_OPTIONS = tuple(f.name for f in fields(PruneConfig))


def make_config(config: PruneConfig | None, options: dict) -> PruneConfig:
    """The checked config of an entry point that takes ``config`` or ``**options`` (its
    fields as keywords): :class:`UsageError` for both, a config of another type, an unknown
    option (a typo would otherwise raise the dataclass's TypeError) or a bad field."""
    if config is not None and not isinstance(config, PruneConfig):
        raise UsageError(f"config must be a PruneConfig, not {type(config).__name__} (or pass its fields as "
                         "keyword options, e.g. sparsity=0.5)")
    if config is not None and options:
        raise UsageError("pass either a PruneConfig or keyword options, not both")
    unknown = [name for name in options if name not in _OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown option {unknown[0]!r}{hint}; the options are {', '.join(_OPTIONS)}")
    config = config if config is not None else PruneConfig(**options)
    config.check()
    return _plain_numbers(config)


def _plain_numbers(config: PruneConfig) -> PruneConfig:
    """``config`` with other numbers (np.float32(0.25), np.int64(0), np.bool_(True),
    Fraction(1, 4)) as Python's bool, int and float: the report and the model's provenance,
    which hold them, are written as JSON, which takes no other type, and a run must not
    fail at its end over the type of a number it was given."""
    plain = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, np.bool_):
            plain[f.name] = bool(value)
        elif isinstance(value, (np.integer, np.floating)):
            plain[f.name] = value.item()
        elif isinstance(value, numbers.Integral) and type(value) not in (int, bool):
            plain[f.name] = int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
            plain[f.name] = float(value)
    return replace(config, **plain) if plain else config


def check_progress(progress: object) -> None:
    """Refuse a ``progress`` that is neither None nor a ``Progress`` (it would fail mid-run)."""
    if progress is not None and not isinstance(progress, Progress):
        raise UsageError(f"progress must be an onnx_eprune.progress.Progress or None, not {type(progress).__name__}")
