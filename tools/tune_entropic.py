"""Accuracy drop of the entropic selector (or a baseline) under config variants (tuning record).

    OMP_NUM_THREADS=1 python tools/tune_entropic.py lenet5 0.55,0.7,0.73,0.84 "" \\
        "max_alternations=3" "eps_ridge=0.03" "threshold=0.5"

Each variant is ``field=value[:field=value...]`` of ``onnx_eprune.select.entropic.EntropicConfig``
or of ``onnx_eprune.PruneConfig`` (``mode``, ``method``, ``seed``, ``samples``, ``positions``,
...; "" is the default), or ``select_features=N``: the sequential stages select on up to N
features per consumer while the allocation keeps the default ``max_features``, or
``cold=1``: the sequential stages draw each group's path from its start instead of
resuming the allocation's, or ``planned=1``: each consumer is regressed only on the
outputs that its output group keeps, or ``polish=F``: entropic picks ``k + ceil(F k)``
channels and exact backward elimination on the group's full statistics drops the extra
ones (``SelectionVariant``), or ``images=N[:draw=D]``:
calibrate on N Fashion-MNIST train images drawn with seed D (default 1;
``bench_quality.calibration_set``) instead of the reference file's 1024. At every level
(a sparsity, or ``f`` and a FLOPs reduction: ``f0.73``) the reference model
(../shared/reference) is pruned with that config and its accuracy measured on the full
Fashion-MNIST test split; one line of drops (points) and pruning seconds per variant.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from onnx_eprune.cli_parser import refit_ridge_arg
from onnx_eprune.datasets import load_fashion_mnist, preprocess
from onnx_eprune.evaluate import accuracy
from onnx_eprune.config import PruneConfig
from onnx_eprune.pipeline import Pruner, _channels_of
from onnx_eprune.select.entropic import EntropicConfig
from onnx_eprune.select.problem import CURVE_RIDGE, ConsumerTerm, ridge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DRAW_SIZE, MODELS, REFERENCE, calibration_set  # noqa: E402


class SelectionVariant(Pruner):
    """The default pipeline, except that once the allocation is decided, the selection of
    the sequential stages works on up to ``select_features`` features per consumer (None:
    ``max_features``, as always), if ``cold``, starts every group's path afresh, if
    ``planned``, regresses each consumer only on the outputs its own output group will keep,
    and with ``polish`` F > 0, keeps ``k + ceil(F k)`` channels of the configured selection
    and drops the extra ones by :func:`backward_elimination`.

    ``planned``: the pipeline fits a consumer's every output when it selects the channels
    the consumer reads, although the group of its outputs loses most of them later. Here the
    outputs are those of the output group's keep-set where it is decided, else of the
    allocation's ranking cut at the allocated count (the one-shot keep-set). In one-shot
    mode the groups are then chosen again on these regressions, last group first.
    """

    # the variants compress the stages' full statistics themselves (select_features) and
    # polish on them, as when their figures were measured
    lean_stages = False

    def __init__(self, *args, select_features: int | None = None, cold: bool = False, planned: bool = False,
                 polish: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.select_features = select_features
        self.cold = cold
        self.planned = planned
        self.polish = polish
        self.plan: dict[int, np.ndarray] = {}      # group -> the channels it is expected to keep
        self.chosen: dict[int, np.ndarray] = {}   # one-shot, planned: group -> its blocks
        self.allocated: tuple[dict[int, int], dict] = ({}, {})   # kept counts, first-pass statistics

    def allocate(self, gids, stats):
        counts, rankings = super().allocate(gids, stats)
        if self.select_features is not None:
            self.config = replace(self.config, entropic=replace(self.config.entropic,
                                                                max_features=self.select_features))
        if self.planned:
            for g in gids:
                unit = self.analysis.groups[g].unit
                order = rankings[g] if g in rankings else self.ranking(g, [])
                self.plan[g] = _channels_of(order[:counts[g] // unit], unit)
            self.allocated = (counts, stats)
        if self.cold:
            self.paths = {}  # entropic.resume_point finds nothing: each stage's path starts over
        return counts, rankings

    def _kept_outputs(self, cidx, keeps):
        return super()._kept_outputs(cidx, {**self.plan, **keeps})

    def choose(self, gid, k, ranking, terms):
        keep = super().choose(gid, k, ranking, terms)
        if self.planned:
            self.plan[gid] = keep
        return keep

    def _choose_blocks(self, gid, k, ranking, terms):
        if self.polish:
            blocks = self.analysis.groups[gid].channels // self.analysis.groups[gid].unit
            extra = min(math.ceil(self.polish * k), blocks - k)
            if extra > 0 and k > 0:
                terms = functools.cache(terms)  # a sequential stage builds them on each call
                wider = super()._choose_blocks(gid, k + extra, ranking, terms)
                return np.sort(backward_elimination(terms(), wider, extra))
        if not (self.planned and self.config.mode == "oneshot"):
            return super()._choose_blocks(gid, k, ranking, terms)
        if not self.chosen:
            counts, stats = self.allocated
            groups, consumers = self.analysis.groups, self.analysis.consumers
            for g in sorted(self.plan, key=lambda h: -max(consumers[c].node for c in groups[h].consumers)):
                # without a ranking, the pipeline's own choice on these terms: entropic resumes
                # the allocation's path, the others rank afresh
                chosen = super()._choose_blocks(g, counts[g] // groups[g].unit, None,
                                                lambda g=g: self.group_terms([g], stats, {})[g])
                self.chosen[g] = chosen
                self.plan[g] = _channels_of(chosen, groups[g].unit)
        return self.chosen[gid]


def backward_elimination(terms: list[ConsumerTerm], kept: np.ndarray, drop: int) -> np.ndarray:
    """``kept`` less the ``drop`` blocks whose removal, one at a time, raises the summed
    relative re-fit error of ``terms`` least (exact, on the terms' full statistics)."""
    kept = np.asarray(kept, dtype=int)
    # per term: the inverse of the kept features' covariance (with explained_curve's light
    # ridge, here of the kept features' mean variance), the re-fit coefficients, the output
    # energy and the features per block; both are downdated as blocks leave
    state = []
    for t in terms:
        cols = t.block_columns(kept)
        G = t.G[np.ix_(cols, cols)]
        H = np.linalg.inv(G + ridge(G, CURVE_RIDGE) * np.eye(len(cols)))
        state.append([H, H @ t.P[cols], t.energy, t.s])
    for _ in range(drop):
        n = len(kept)
        cost = np.zeros(n)
        for H, B, e, s in state:
            Hb = H.reshape(n, s, n, s)[np.arange(n), :, np.arange(n), :]     # (n, s, s) diagonal blocks
            Bb = B.reshape(n, s, -1)
            cost += np.einsum("nsm,nsm->n", Bb, np.linalg.solve(Hb, Bb)) / e
        a = int(np.argmin(cost))
        for st in state:
            H, B, _e, s = st
            idx = np.arange(a * s, (a + 1) * s)
            rest = np.setdiff1d(np.arange(n * s), idx)
            K = H[np.ix_(rest, idx)] @ np.linalg.inv(H[np.ix_(idx, idx)])
            st[0] = H[np.ix_(rest, rest)] - K @ H[np.ix_(idx, rest)]
            st[1] = B[rest] - K @ B[idx]
        kept = np.delete(kept, a)
    return kept


def _value(name: str, default: object, text: str) -> object:
    """``text`` as the type of PruneConfig field ``name``'s default (int where the default
    is None, but for ``mode``, a string; ``refit_ridge`` as ``--refit-ridge`` reads it)."""
    if name == "refit_ridge":
        return refit_ridge_arg(text)
    if isinstance(default, str) or name == "mode":
        return text
    return float(text) if isinstance(default, float) else int(text)


def _levels(text: str) -> list[dict]:
    """``0.55,f0.73`` as PruneConfig targets: a sparsity, or ``f`` and a FLOPs reduction."""
    try:
        return [{"flops_reduction": float(v[1:])} if v.startswith("f") else {"sparsity": float(v)}
                for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of levels like 0.55,f0.73: {text!r}") from None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # no choices: an unknown model stays the KeyError of MODELS[name] that
    # tests/test_quoted_commands.py's checker expects of this tool
    ap.add_argument("model", metavar="MODEL", help=f"reference model (../shared/reference): {', '.join(MODELS)}")
    ap.add_argument("levels", metavar="LEVELS", type=_levels,
                    help="comma-separated sparsities, or f and a FLOPs reduction: 0.55,f0.73")
    ap.add_argument("variants", metavar="VARIANT", nargs="*", default=[""],
                    help='field=value[:field=value...] each ("" is the default config)')
    args = ap.parse_args(argv)
    name, targets, variants = args.model, args.levels, args.variants
    onnx_file, _calib, size = MODELS[name]
    images, labels = load_fashion_mnist("test")
    x = preprocess(images, size)
    base = json.loads((REFERENCE / f"{name}.json").read_text())["test_acc"]
    default, run_default = EntropicConfig(), PruneConfig()
    for spec in variants:
        fields = dict(kv.split("=") for kv in spec.split(":") if kv)
        select_features = int(fields.pop("select_features")) if "select_features" in fields else None
        cold = bool(int(fields.pop("cold", "0")))
        planned = bool(int(fields.pop("planned", "0")))
        polish = float(fields.pop("polish", "0"))
        n_images = int(fields.pop("images", DRAW_SIZE))
        draw = int(fields.pop("draw", "1" if n_images != DRAW_SIZE else "0"))
        calib_set = calibration_set(name, draw, REFERENCE, n_images)
        cfg = replace(default, **{k: type(getattr(default, k))(v) for k, v in fields.items() if hasattr(default, k)})
        run = {k: _value(k, getattr(run_default, k), v) for k, v in fields.items() if not hasattr(default, k)}
        drops, seconds = [], []
        for target in targets:
            t0 = time.perf_counter()
            config = PruneConfig(**target, device="cpu", entropic=cfg, **run)
            result = SelectionVariant(str(REFERENCE / onnx_file), calib_set, config,
                                      select_features=select_features, cold=cold,
                                      planned=planned, polish=polish).run()
            seconds.append(round(time.perf_counter() - t0, 1))
            drops.append(round(100 * (base - accuracy(result.model, x, labels, ["CPUExecutionProvider"])), 2))
        print(f"{spec or 'default':60s} drops {drops} seconds {seconds}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
