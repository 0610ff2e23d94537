"""Entropic sparse regression for channel selection (Barisin & Horenko, arXiv 2404.04734).

For a group of ``C`` channels with channel probabilities ``w`` on the simplex, each
consumer term predicts its original output from ``Lambda @ D(w) @ x'``, where ``D(w)``
scales the features of channel ``c`` by ``C * w_c`` (the uniform ``w`` is the identity;
features of other groups were regressed out beforehand, see ``problem.partial_out``):

    L(w, Lambda) = sum_k [ E_k - 2 tr(Lambda_k D P_k) + tr(Lambda_k D G_k D Lambda_k^T)
                           + rho_k ||Lambda_k||^2 ] / E_k  +  eps * sum_c w_c ln w_c

L is minimised by alternating two exact steps (SPARTAn's scheme): a ridge regression per
consumer for ``Lambda`` (closed form) and a strictly convex problem on the simplex for ``w``
(Newton with the entropy as barrier). The ridge shrinks ``Lambda``, so the w-step wants more
total weight than the simplex allows and must spend it on the channels that explain the
outputs best: the simplex acts as an l1 budget. Large ``eps`` keeps ``w`` uniform; ``eps``
is annealed downwards (warm starts) and channels drop out one after another. The order in
which they drop is the ranking; keeping ``k`` channels follows the path until ``k`` are left.

Measured choices (see BENCHMARKS.md): the w-step with ``Lambda`` fixed (not ``D Lambda``)
as in the paper; a moderate ridge (0.1 of the mean feature variance) and a raised ridge only
once the entropy stops binding; a path, not a bisection on ``eps``, because cold starts at
a given ``eps`` land in worse local minima of this non-convex problem.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UsageError
from ..parallel import parallel_map
from . import lapack
from .problem import (CURVE_RIDGE, ConsumerTerm, cho_inverse_solve, cholesky, compress, inert_channels,
                      last_the_free, reduce_outputs, ridge, solve_lower, twin_channels)

_W_FLOOR = 1e-300


@dataclass
class EntropicConfig:
    """Knobs of the entropic selector (defaults are the tuned ones; see BENCHMARKS.md).

    The ridge must be strong: it shrinks ``Lambda``, so that the w-step cannot undo the
    shrinkage by scaling all channels up (the simplex forbids it) and has to spend the
    probability mass on the channels that explain the output best. ``eps`` is then
    annealed from large (uniform ``w``) to small, warm-starting each step from the last,
    and channels drop out one after another.
    """

    eps_ridge: float = 0.1        # ridge of the Lambda-step, relative to the mean feature variance
    threshold: float = 0.1        # channel c is alive while C * w_c >= threshold
    max_alternations: int = 30     # per path point; fewer (3, 10) lost 0.1-0.5 points on LeNet-5
    tol: float = 3e-5             # relative decrease of L that ends the alternation at one eps
    log_eps_start: float = -1.0   # annealing path: log10(eps) from here (above it w stays uniform) ...
    log_eps_stop: float = -7.0    # ... down to here,
    path_steps: int = 7           # in this many geometric steps (a decade each)
    ridge_growth: float = 10.0    # past the end of the path, multiply the ridge until few channels live
    max_features: int = 512       # wider consumers are compressed per channel for the path (problem.compress)
    wide: int = 256               # while more channels than this are in play, at most 3 alternations per
                                  # point: 4x faster on 512-channel groups for 0.03-0.06 points (BENCHMARKS.md)
    curve_wide: int = 128         # the same past this many channels on the sequential mode's first-pass path,
                                  # which only draws the error curves and where the stages' paths start
                                  # (ResNet-18 0.84: median 66.5 -> 60.6 s; BENCHMARKS.md, session 23)
    exchange_below: int = 32      # groups of at most this many channels polish their keep-set by exchanges
                                  # (:func:`exchange`; 0: never): the path can miss a small layer's optimum

    def check(self) -> None:
        """Raise :class:`UsageError`, naming the field, for a knob of the wrong type or out of
        its range (a NaN or negative tolerance would spin or end the path at once, a
        fractional count fails deep inside the solver)."""
        counts = {"max_alternations": 1, "path_steps": 1, "max_features": 1, "wide": 0, "curve_wide": 0,
                  "exchange_below": 0}
        for name, least in counts.items():
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < least:
                raise UsageError(f"EntropicConfig.{name} must be an integer >= {least}, not {value!r}")
        reals = {"eps_ridge": "> 0", "threshold": "in (0, 1)", "tol": ">= 0", "log_eps_start": "finite",
                 "log_eps_stop": "finite", "ridge_growth": "> 1"}
        for name, rule in reals.items():
            value = getattr(self, name)
            number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and \
                math.isfinite(value)
            if not number or not {"> 0": value > 0, "in (0, 1)": 0 < value < 1, ">= 0": value >= 0,
                                  "finite": True, "> 1": value > 1}[rule]:
                raise UsageError(f"EntropicConfig.{name} must be a finite number {rule}, not {value!r}")
        if self.log_eps_stop > self.log_eps_start:
            raise UsageError(f"EntropicConfig.log_eps_stop ({self.log_eps_stop!r}) must not be above log_eps_start "
                             f"({self.log_eps_start!r}): the path anneals eps downwards")


def solve_w(A: np.ndarray, b: np.ndarray, eps: float, w0: np.ndarray | None = None,
            tol: float = 1e-9, max_iter: int = 200) -> np.ndarray:
    """Minimise ``w^T A w - 2 b^T w + eps * sum w ln w`` over the probability simplex.

    ``A`` (C x C) must be symmetric positive semi-definite and ``eps > 0``; the objective is
    then strictly convex and the minimiser lies strictly inside the simplex. Newton's
    direction (Hessian ``2A + eps diag(1/w)``, projected on ``sum w = 1``) is followed
    straight where it keeps a weight above half its value and geometrically where it would
    cut deeper (``_advance``), with Armijo backtracking: a straight step would have to stop
    at the boundary, while the weights of useless channels must fall by tens of orders of
    magnitude. Usually a handful of iterations. It stops when the Frank-Wolfe gap
    ``g.w - min(g)``, an upper bound of the suboptimality of this convex problem, is below
    ``tol`` (relative), or when no descent is left in floating point.
    """
    C = len(b)
    w = np.full(C, 1.0 / C) if w0 is None else np.maximum(np.asarray(w0, np.float64), _W_FLOOR)
    w = w / w.sum()
    ones = np.ones(C)

    def f(v: np.ndarray) -> float:
        return float(v @ A @ v - 2.0 * b @ v + eps * np.sum(v * np.log(v)))

    fw = f(w)
    for _ in range(max_iter):
        g = 2.0 * (A @ w) - 2.0 * b + eps * (1.0 + np.log(w))
        if float(g @ w - g.min()) <= tol * max(1.0, abs(fw)):
            break
        H = 2.0 * A + np.diag(eps / w)  # positive definite: eps > 0 and w > 0
        try:
            c = lapack.cholesky(H, lower=False, clean=False)
            u, v = lapack.cho_solve(c, False, g), lapack.cho_solve(c, False, ones)
        except np.linalg.LinAlgError:
            u, v = np.linalg.lstsq(H, g, rcond=None)[0], np.linalg.lstsq(H, ones, rcond=None)[0]
        step = -(u - (ones @ u) / (ones @ v) * v)  # Newton step projected on sum(step) = 0
        slope = float(g @ step)
        if slope >= -1e-15 * max(1.0, abs(fw)):  # rounding: no descent left
            break
        rel = step / w
        t = 1.0
        while True:
            trial = np.maximum(w * _advance(t * rel), _W_FLOOR)
            trial /= trial.sum()
            f_trial = f(trial)
            if f_trial <= fw + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if f_trial > fw:
            break
        w, fw = trial, f_trial
    return w


def _advance(x: np.ndarray) -> np.ndarray:
    """Factor by which a weight moves for a relative Newton step ``x``: ``1 + x`` down to a
    half, then ``exp`` continued smoothly (same value and slope at ``x = -1/2``), so a weight
    shrinks geometrically instead of crossing zero."""
    return np.where(x >= -0.5, 1.0 + x, 0.5 * np.exp(np.clip(2.0 * x + 1.0, -1400.0, 0.0)))


def lambda_step(term: ConsumerTerm, d: np.ndarray, eps_ridge: float, rho: float | None = None) -> np.ndarray:
    """Ridge solution ``Lambda`` (M x D') for feature scales ``d`` (D'); the ridge is
    ``rho`` if given, else ``eps_ridge`` times the mean feature variance."""
    rho = ridge(term.G, eps_ridge) if rho is None else rho
    return cho_inverse_solve(term.G * np.outer(d, d), rho, d[:, None] * term.P).T


def quadratic_in_w(term: ConsumerTerm, lam: np.ndarray, scale: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``A`` (C x C) and ``b`` (C,) of this term's loss as ``w^T A w - 2 b^T w + const``.

    ``A`` is the block sum over channel blocks of ``G o (Lambda^T Lambda)``, ``b`` the block
    sum of ``diag(Lambda^T P^T)``, both scaled by ``scale`` (default ``C``: the channel
    count of the whole group) per factor of ``w`` and relative to the output energy.
    """
    C, s = term.channels, term.s
    scale = C if scale is None else scale
    Q = lam.T @ lam
    Q *= term.G
    A = Q.reshape(C, s, C, s).sum(axis=(1, 3)) if s > 1 else Q
    r = np.einsum("mi,im->i", lam, term.P)
    e = term.energy
    return (scale * scale / e) * A, (scale / e) * r.reshape(C, s).sum(axis=1)


@dataclass
class _State:
    w: np.ndarray
    lams: list[np.ndarray] = field(default_factory=list)
    loss: float = np.inf


@dataclass
class _Active:
    """The terms restricted to the channels still in play (``index`` into the group), with
    what must not change when channels leave: the group's channel count ``scale`` (the
    feature scale of channel c stays ``scale * w_c``) and each term's mean feature
    variance, which sets its ridge."""

    terms: list[ConsumerTerm]
    index: np.ndarray
    scale: int
    variances: list[float]

    @classmethod
    def of(cls, terms: list[ConsumerTerm]) -> "_Active":
        C = terms[0].channels
        return cls(terms, np.arange(C), C, [ridge(t.G, 1.0) for t in terms])

    def restrict(self, keep: np.ndarray) -> "_Active":
        """The same problem on the local channels ``keep``."""
        terms = []
        for t in self.terms:
            cols = t.block_columns(keep)
            terms.append(ConsumerTerm(t.G[np.ix_(cols, cols)], t.P[cols], t.var_y, t.s))
        return _Active(terms, self.index[keep], self.scale, self.variances)


def alternate(terms: list[ConsumerTerm] | _Active, eps: float, cfg: EntropicConfig, w0: np.ndarray | None = None,
              workers: int = 1) -> _State:
    """Alternate Lambda- and w-steps at a fixed ``eps`` until L stops falling (at most
    ``cfg.max_alternations`` times: along a warm-started path a few suffice). The terms'
    Lambda-steps run on up to ``workers`` threads; their shares are added in term order,
    so the result does not depend on ``workers``."""
    problem = terms if isinstance(terms, _Active) else _Active.of(terms)
    C = problem.terms[0].channels
    w = np.full(C, 1.0 / C) if w0 is None else w0.copy()
    state = _State(w)

    def share(item: tuple[ConsumerTerm, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """One term's Lambda-step at the current ``w`` and its share of A, b and the fit."""
        term, var = item
        rho = cfg.eps_ridge * var
        lam = lambda_step(term, np.repeat(problem.scale * w, term.s), cfg.eps_ridge, rho)
        At, bt = quadratic_in_w(term, lam, problem.scale)
        return lam, At, bt, rho * float(np.sum(lam * lam)) / term.energy

    for _ in range(cfg.max_alternations):
        lams, A, b, fit = [], np.zeros((C, C)), np.zeros(C), 0.0
        for lam, At, bt, fit_t in parallel_map(share, list(zip(problem.terms, problem.variances)), workers):
            lams.append(lam)
            A += At
            b += bt
            fit += fit_t
        A = 0.5 * (A + A.T)
        w = solve_w(A, b, eps, w)
        loss = float(w @ A @ w - 2 * b @ w + eps * np.sum(w * np.log(w))) + fit
        converged = state.loss - loss <= cfg.tol * max(abs(loss), 1e-12)
        state = _State(w, lams, loss)
        if converged:
            break
    return state


def alive(w: np.ndarray, threshold: float) -> int:
    """Number of channels whose weight is at least ``threshold / C``."""
    return int(np.sum(len(w) * w >= threshold))


@dataclass
class PathPoint:
    """One point of the annealing path: where it is on the schedule, and ``w`` there."""

    step: int
    alive: int
    w: np.ndarray


def schedule(cfg: EntropicConfig) -> list[tuple[float, float]]:
    """The (log10 eps, ridge) points of the path: eps annealed down at the base ridge, then
    the ridge raised at the smallest eps, for when the entropy no longer binds."""
    points = [(float(le), cfg.eps_ridge) for le in np.linspace(cfg.log_eps_start, cfg.log_eps_stop, cfg.path_steps)]
    points += [(cfg.log_eps_stop, cfg.eps_ridge * cfg.ridge_growth ** i) for i in range(1, 13)]
    return points


# A channel whose weight fell below this fraction of the uniform 1/C has left for good: its
# features are scaled to nothing, and dropping it from the problem shrinks every later
# factorisation (the path spends most of its steps with a fraction of the channels alive).
_GONE = 1e-12


class Path:
    """The annealing path of one group: ``w`` along :func:`schedule`, each point
    warm-started from the last. Iterating yields :class:`PathPoint` (``w`` over all ``C``
    channels) until at most one channel is alive. ``start`` resumes from a point of an
    earlier path (on similar statistics), skipping the part where nothing happens."""

    def __init__(self, terms: list[ConsumerTerm], cfg: EntropicConfig, start: PathPoint | None = None,
                 workers: int = 1):
        self.terms = parallel_map(lambda t: reduce_outputs(compress(t, cfg.max_features)), terms, workers)
        self.cfg = cfg
        self.start, self.workers = start, workers

    def __iter__(self):
        cfg = self.cfg
        problem = _Active.of(self.terms)
        C = problem.scale
        first, w = (self.start.step, self.start.w) if self.start is not None else (0, np.full(C, 1.0 / C))
        for step, (log_eps, ridge_) in enumerate(schedule(cfg)[first:], start=first):
            local = w[problem.index]
            keep = np.flatnonzero(C * local >= _GONE)
            if len(keep) < len(local):
                problem = problem.restrict(keep)
                local = local[keep]
            point_cfg = replace(cfg, eps_ridge=ridge_)
            if len(keep) > cfg.wide:
                point_cfg = replace(point_cfg, max_alternations=min(3, cfg.max_alternations))
            local = alternate(problem, 10.0 ** log_eps, point_cfg, local / local.sum(), self.workers).w
            w = np.zeros(C)
            w[problem.index] = local
            n = alive(w, cfg.threshold)
            yield PathPoint(step, n, w)
            if n <= 1:
                return


def ranking(terms: list[ConsumerTerm], cfg: EntropicConfig | None = None, stop_at: int = 1,
            start: PathPoint | None = None, record: list[PathPoint] | None = None, workers: int = 1) -> np.ndarray:
    """Channels from most to least important along the annealing path.

    A channel ranks by the last path point at which it is still alive (later = more
    important), ties by its weight there. The path stops once at most ``stop_at`` channels
    are alive, so the first ``stop_at`` entries are final by then. ``start`` resumes an
    earlier path; ``record`` collects the points visited; ``workers``: threads for the
    terms of a group with several consumers (the result does not depend on it).

    Channels that cost nothing to drop rank last (``problem.last_the_free``): inert ones
    (dead) do not count as alive for ``stop_at``, and twins (a channel whose features are a
    multiple of another's) are left out of the path, whose symmetric steps would keep or
    drop both together; their partner takes their place in it.
    """
    cfg = cfg or EntropicConfig()
    C = terms[0].channels
    if stop_at >= C:
        return np.arange(C)
    inert = inert_channels(terms)
    twin = twin_channels(terms, inert)
    unique = np.flatnonzero(twin < 0)
    if stop_at >= int(np.sum(~inert[unique])):   # nothing to choose among the channels that matter
        return last_the_free(np.arange(C), inert, twin)
    if len(unique) == C:
        return last_the_free(_path_ranking(terms, cfg, stop_at, start, record, workers, inert), inert, twin)
    sub_start = None
    if start is not None and start.w[unique].sum() > 0:
        w = start.w[unique] / start.w[unique].sum()
        sub_start = PathPoint(start.step, alive(w, cfg.threshold), w)
    points: list[PathPoint] = []
    order = unique[_path_ranking([t.restrict(unique) for t in terms], cfg, stop_at, sub_start, points, workers,
                                 inert[unique])]
    if record is not None:
        for p in points:
            w = np.zeros(C)
            w[unique] = p.w
            record.append(PathPoint(p.step, p.alive, w))
    return last_the_free(np.concatenate([order, np.flatnonzero(twin >= 0)]), inert, twin)


def _path_ranking(terms: list[ConsumerTerm], cfg: EntropicConfig, stop_at: int, start: PathPoint | None,
                  record: list[PathPoint] | None, workers: int, inert: np.ndarray) -> np.ndarray:
    """:func:`ranking` by the path alone, stopped once at most ``stop_at`` channels that
    are not ``inert`` are alive."""
    C = terms[0].channels
    last_alive = np.full(C, -1)
    weight_then = np.zeros(C)
    for point in Path(terms, cfg, start, workers):
        if record is not None:
            record.append(point)
        up = C * point.w >= cfg.threshold
        last_alive[up] = point.step
        weight_then[up] = point.w[up]
        if np.sum(up & ~inert) <= stop_at:
            break
    return np.lexsort((-weight_then, -last_alive))


def resume_point(points: list[PathPoint], k: int, margin: float = 2.0) -> PathPoint | None:
    """The last recorded point with at least ``margin * k`` channels alive (None: start over)."""
    ok = [p for p in points if p.alive >= min(margin * k, len(p.w))]
    return ok[-1] if ok else None


def select(terms: list[ConsumerTerm], k: int, cfg: EntropicConfig | None = None,
           start: PathPoint | None = None, workers: int = 1) -> np.ndarray:
    """The ``k`` channels to keep (sorted): the first ``k`` of :func:`ranking`, following
    the path only until ``k`` channels are left alive."""
    return np.sort(ranking(terms, cfg, stop_at=k, start=start, workers=workers)[:k])


def refit_error(terms: list[ConsumerTerm], keep) -> float:
    """The summed relative re-fit error of the consumers on channels ``keep`` alone (the
    objective of the error curves: a least-squares fit with the light ridge ``CURVE_RIDGE``
    of the whole group's mean variance, the same for every ``keep``: a ridge relative to
    the kept channels' own variance would favour keeping a dead channel)."""
    total = 0.0
    for term in terms:
        sub = term.restrict(np.asarray(keep))
        z = solve_lower(cholesky(sub.G, ridge(term.G, CURVE_RIDGE)), sub.P)
        total += 1.0 - float(np.einsum("ij,ij->", z, z)) / term.energy
    return total


def exchange(terms: list[ConsumerTerm], keep: np.ndarray, cfg: EntropicConfig | None = None) -> np.ndarray:
    """``keep`` (k of the group's C channels), polished: while exchanging one kept channel
    for one dropped channel lowers :func:`refit_error`, make the exchange that lowers it
    most. Returned sorted. Only groups of at most ``cfg.exchange_below`` channels: there a
    pass costs k(C - k) small re-fits, and there the path was measured to miss the best
    single channel, the best channel to drop, or a channel that only it can stand for
    (tests/test_selection_methods.py); on wide groups the path's sets re-fit their
    consumers as well as any baseline's (BENCHMARKS.md, session 12)."""
    cfg = cfg or EntropicConfig()
    C, k = terms[0].channels, len(keep)
    keep = sorted(int(c) for c in keep)
    if not 0 < k < C or C > cfg.exchange_below:
        return np.asarray(keep)
    error = refit_error(terms, keep)
    for _ in range(k * (C - k)):  # each exchange lowers the error, so none repeats; a bound all the same
        dropped = [c for c in range(C) if c not in keep]
        swaps = [sorted(keep[:i] + keep[i + 1:] + [j]) for i in range(k) for j in dropped]
        best, n = min((refit_error(terms, s), n) for n, s in enumerate(swaps))   # ties: the first swap
        # a material gain only: rounding must not swap channels that re-fit alike (twins)
        if not best < error * (1.0 - 1e-6) - 1e-12:
            break
        keep, error = swaps[n], best
    return np.asarray(keep)
