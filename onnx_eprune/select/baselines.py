"""Baseline channel rankings that share the statistics, allocation and re-fit of the
entropic method: filter L1 norm, random, LASSO (He et al. 2017) and ThiNet (Luo et al. 2017).

LASSO and ThiNet score channels by their *contributions* to the consumers' outputs: with
``Lambda`` the least-squares weights of a term (the original weights when the input is the
original one and nothing was regressed out), channel ``c`` contributes ``z_c = Lambda_c x_c``
to each output, and over the group's consumers (each relative to its output energy)

    E || y - sum_c beta_c z_c ||^2 = beta^T A beta - 2 b^T beta + const,

with ``A`` and ``b`` the block sums of :func:`entropic.quadratic_in_w` at unit scale.
"""

from __future__ import annotations

import numpy as np

from .entropic import lambda_step, quadratic_in_w
from .problem import CURVE_RIDGE, TINY, ConsumerTerm, compress, inert_channels, twin_channels


def l1_ranking(producer_rows: list[np.ndarray]) -> np.ndarray:
    """Channels by decreasing filter L1 norm (most important first).

    ``producer_rows``: for every producer of the group, its weight with output channels on
    axis 0, reshaped to (C, -1). Each producer's norms are divided by their mean so that
    coupled layers of different scale count equally (as in group-norm pruning).
    """
    score = np.zeros(producer_rows[0].shape[0])
    for rows in producer_rows:
        norms = np.abs(rows).sum(axis=1)
        score += norms / max(float(norms.mean()), 1e-30)
    return np.argsort(-score, kind="stable")


def random_ranking(channels: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random order of the channels."""
    return rng.permutation(channels)


def contributions(terms: list[ConsumerTerm], max_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` (C x C) and ``b`` (C,) of the channel contributions, summed over ``terms``.

    Terms wider than ``max_features`` are compressed per channel first (as for the entropic
    path, ``problem.compress``)."""
    C = terms[0].channels
    A, b = np.zeros((C, C)), np.zeros(C)
    # twins (a channel whose features are a multiple of another's, problem.twin_channels)
    # are left out of the least-squares weights, which give their partner the pair's whole
    # contribution (a least-squares solution as good as the ridge's even split): a twin
    # then contributes nothing, and both rankings drop it before its partner
    twin = twin_channels(terms, inert_channels(terms))
    unique = np.flatnonzero(twin < 0)
    for term in terms:
        term = compress(term, max_features)
        if len(unique) < C:
            term = term.restrict(unique)
        lam = lambda_step(term, np.ones(term.G.shape[0]), CURVE_RIDGE)
        At, bt = quadratic_in_w(term, lam, scale=1)
        if len(unique) < C:
            A[np.ix_(unique, unique)] += At
            b[unique] += bt
        else:
            A += At
            b += bt
    if len(unique) < C:
        # a twin's own energy is a token above zero (the smallest normal float), so that a
        # dead channel, whose contribution is zero in every statistic, still goes before it
        twins = np.flatnonzero(twin >= 0)
        A[twins, twins] = np.finfo(np.float64).tiny
    return 0.5 * (A + A.T), b


def thinet_ranking(A: np.ndarray) -> np.ndarray:
    """ThiNet's greedy order: repeatedly remove the channel whose removal, together with the
    channels removed so far, leaves the smallest error ``1^T A_TT 1`` (the energy of the
    removed contributions, before any re-fit). Most important (removed last) first."""
    C = len(A)
    removed = np.zeros(C, bool)
    cross = np.zeros(C)          # sum of A[c, t] over removed t
    order = []
    diag = np.diag(A)
    for _ in range(C):
        cost = np.where(removed, np.inf, 2.0 * cross + diag)
        c = int(np.argmin(cost))
        order.append(c)
        removed[c] = True
        cross += A[:, c]
    return np.asarray(order[::-1])


def lasso_ranking(A: np.ndarray, b: np.ndarray, steps: int = 40, iters: int = 300) -> np.ndarray:
    """He et al.'s LASSO channel selection as a ranking.

    Minimises ``beta^T A beta - 2 b^T beta + lam * |beta|_1`` along a geometric path of
    ``lam`` from where every ``beta`` is zero down to 1e-4 of it (FISTA, warm started). A
    channel ranks by the largest ``lam`` at which its coefficient is non-zero (earlier =
    more important), ties by its coefficient at the end of the path. A channel with a zero
    ``b`` (a twin, see :func:`contributions`) ranks after the live channels that never
    entered, and one that contributes nothing at all (a zero row of ``A`` too: a dead
    channel) last.
    """
    C = len(b)
    lam_max = 2.0 * float(np.max(np.abs(b)))
    if lam_max <= 0.0:
        return np.arange(C)
    nothing = ~A.any(axis=1) & (b == 0.0)
    lipschitz = 2.0 * max(float(np.linalg.eigvalsh(A)[-1]), TINY)
    step = 1.0 / lipschitz
    beta = np.zeros(C)
    entered = np.full(C, steps)
    for i, lam in enumerate(lam_max * np.logspace(0, -4, steps)):
        y, prev, t = beta.copy(), beta.copy(), 1.0
        for _ in range(iters):
            grad = 2.0 * (A @ y - b)
            z = y - step * grad
            beta = np.sign(z) * np.maximum(np.abs(z) - step * lam, 0.0)
            t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            y = beta + ((t - 1.0) / t_next) * (beta - prev)
            if np.max(np.abs(beta - prev)) <= 1e-9 * max(float(np.max(np.abs(beta))), TINY):
                break
            prev, t = beta.copy(), t_next
        entered[(beta != 0.0) & (entered == steps)] = i
    return np.lexsort((-np.abs(beta), entered, b == 0.0, nothing))
