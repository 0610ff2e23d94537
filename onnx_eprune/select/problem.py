"""The per-group regression problem, in the form the selectors and the re-fit use.

A channel group of ``C`` channels feeds one or more consumers. For consumer ``k`` the group
contributes ``C*s`` input features, channel-major (``s`` per channel: the taps of a Conv
kernel, or the positions behind a Flatten); features of other groups that the consumer also
reads are regressed out beforehand (:func:`partial_out`). A term holds

* ``G`` (C*s x C*s): covariance of the group's current input features x',
* ``P`` (C*s x M): cross-covariance of x' with the original output y,
* ``var_y`` (M): variance of each original output; their sum, ``energy``, makes every loss
  below a relative error of the consumer's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..parallel import matmul_rows, parallel_map
from . import lapack

# the floor of a variance or energy that divides: below any variance float32 statistics
# hold (1e-45 and up), so the objective stays scale-free for the smallest activations, yet
# a ridge of 1e-3 of it, squared, is still a normal float64 (the GCV divides by it)
TINY = 1e-150


@dataclass
class ConsumerTerm:
    """One consumer's share of a group's regression (all arrays float64)."""

    G: np.ndarray        # (C*s, C*s)
    P: np.ndarray        # (C*s, M)
    var_y: np.ndarray    # (M,)
    s: int               # features per channel

    @property
    def channels(self) -> int:
        return self.G.shape[0] // self.s

    @property
    def energy(self) -> float:
        return max(float(self.var_y.sum()), TINY)

    def block_columns(self, channels: np.ndarray) -> np.ndarray:
        """Feature columns of ``channels``, in that order."""
        return (np.asarray(channels)[:, None] * self.s + np.arange(self.s)).reshape(-1)

    def restrict(self, channels: np.ndarray) -> "ConsumerTerm":
        """The same regression on ``channels`` only (the others' features left out)."""
        cols = self.block_columns(channels)
        return ConsumerTerm(self.G[np.ix_(cols, cols)], self.P[cols], self.var_y, self.s)


# -- channels that cost nothing to drop ---------------------------------------------------
# Real networks and calibration sets have them: a ReLU channel that never fires (or a zero
# filter) has features that are exactly zero, hence no covariance with anything; two
# filters that are equal (or multiples of each other) give features of which the re-fit
# needs only one. The selectors find them from the statistics (a selector's own path can
# mistake them: the entropic path keeps a pair of twins alive together, since nothing breaks
# their symmetry, and lets a dead channel outlive live channels that a rank-deficient
# covariance makes redundant; LASSO never lets a dead channel enter, and ranks it with
# the live channels that never entered either) and rank them last.

# Two channels are twins where, in every term, the trace correlation of their taps (the
# sum of the covariances of tap i of one with tap i of the other, over the square root of
# the product of their summed variances) is within this of +-1: one's features are a
# multiple of the other's. The statistics of equal features agree to rounding (float32
# products), far inside it; distinct trained channels stay far outside it (LeNet-5's
# closest pair: 0.956).
TWIN_TOL = 1e-6


def inert_channels(terms: list[ConsumerTerm]) -> np.ndarray:
    """(C,) bool: the channels whose features have exactly zero covariance with every other
    feature of the group and with every output, in every term (dead ReLU channels, zero
    filters; regressing out other groups keeps the zeros, a ridge on the diagonal aside)."""
    C = terms[0].channels
    inert = np.ones(C, bool)
    for t in terms:
        s = t.s
        inert &= ~t.P.reshape(C, -1).any(axis=1)
        for c in np.flatnonzero(inert):
            rows = t.G[c * s:(c + 1) * s]
            inert[c] = not (rows[:, :c * s].any() or rows[:, (c + 1) * s:].any())
    return inert


def twin_channels(terms: list[ConsumerTerm], inert: np.ndarray | None = None) -> np.ndarray:
    """(C,) int: for a channel whose features are, in every term, a multiple of those of a
    lower-numbered channel (to :data:`TWIN_TOL`), that channel (the lowest of the set);
    -1 for every other channel. ``inert`` channels (:func:`inert_channels`) are no one's twin.

    Where the statistics are degenerate as a whole (a covariance of rank one, from two
    samples or a single informative one, makes every pair of channels collinear), pairs
    say nothing about the channels and none is a twin: the channels left once the twins are
    set aside must be far from collinear (their correlation matrix's smallest eigenvalue at
    least ``10 * TWIN_TOL``)."""
    C = terms[0].channels
    twin = np.full(C, -1)
    candidate = np.ones((C, C), bool)
    live = np.ones(C, bool) if inert is None else ~inert
    traces = []
    for t in terms:
        s = t.s
        T = t.G[0::s, 0::s].copy()          # T[c, d]: sum over taps i of cov(x_c,i, x_d,i)
        for i in range(1, s):
            T += t.G[i::s, i::s]
        d = np.sqrt(np.clip(np.diag(T), 0.0, None))
        ok = live & (d > 0)
        candidate &= (np.abs(T) >= (1.0 - TWIN_TOL) * np.outer(d, d)) & ok[:, None] & ok[None, :]
        if not np.triu(candidate, 1).any():
            return twin
        traces.append((T, d))
    np.fill_diagonal(candidate, False)
    for c in range(C):
        if twin[c] >= 0:
            continue
        for e in np.flatnonzero(candidate[c, c + 1:]) + c + 1:
            if twin[e] < 0:
                twin[e] = c
    rest = np.flatnonzero((twin < 0) & live)
    for T, d in traces:
        dr = d[rest]
        if not np.all(dr > 0):
            return np.full(C, -1)
        R = T[np.ix_(rest, rest)] / np.outer(dr, dr)
        if len(rest) < 2 or np.linalg.eigvalsh(0.5 * (R + R.T))[0] < 10.0 * TWIN_TOL:
            return np.full(C, -1)
    return twin


def last_the_free(order: np.ndarray, inert: np.ndarray, twin: np.ndarray) -> np.ndarray:
    """``order`` (a ranking of channels, most important first) with the twins moved after
    the other channels, in the order of their partners, and the inert channels after them:
    either goes at no cost to the re-fit while the channel it duplicates stays."""
    order = np.asarray(order)
    is_twin = (twin[order] >= 0) & ~inert[order]
    position = {int(c): i for i, c in enumerate(order)}
    twins = sorted(order[is_twin], key=lambda c: position.get(int(twin[c]), len(order)))
    rest = order[~is_twin & ~inert[order]]
    return np.concatenate([rest, np.asarray(twins, dtype=order.dtype), order[inert[order]]]).astype(order.dtype)


def partial_out(G: np.ndarray, P: np.ndarray, var_y: np.ndarray, blocks: dict[int, np.ndarray],
                eps_ridge: float = 1e-4) -> dict[int, ConsumerTerm]:
    """One term per group of a consumer that reads several groups, each with the other
    features regressed out.

    ``blocks`` maps a group to its feature columns (C x s) in the consumer's input; every
    other column is kept whatever happens to the group (the features of frozen groups, and
    of groups decided later). The term of group ``g`` is the
    regression of what the other features leave unexplained on what ``g`` adds to them:
    the Schur complement ``S = G_gg - G_go G_oo^-1 G_og`` and ``P~ = P_g - G_go G_oo^-1 P_o``.
    All of them come from one inverse of ``G``: ``S = inv(H_gg)`` and ``P~ = S (H P)_g``
    with ``H = G^-1``. Errors stay relative to the consumer's whole output variance, so
    differences along a group's curve are the consumer's true error differences.
    """
    D = G.shape[0]
    rho = ridge(G, eps_ridge)
    if len(blocks) == 1:
        (gid, cols), = blocks.items()
        idx = cols.reshape(-1)
        if cols.size == D:  # the group is the whole input: nothing to regress out
            if np.array_equal(idx, np.arange(D)):
                return {gid: ConsumerTerm(G, P, var_y, cols.shape[1])}
            return {gid: ConsumerTerm(G[np.ix_(idx, idx)], P[idx], var_y, cols.shape[1])}
        # one group: a Cholesky factor with the group last holds its Schur complement
        # (L_gg L_gg^T = S) and L^-1 P its residual cross-covariance (P~ = L_gg Z_g)
        perm = np.concatenate([np.setdiff1d(np.arange(D), idx), idx])
        L = cholesky(G[np.ix_(perm, perm)], rho)
        Z = solve_lower(L, P[perm])
        Lg = L[-idx.size:, -idx.size:]
        return {gid: ConsumerTerm(Lg @ Lg.T, Lg @ Z[-idx.size:], var_y, cols.shape[1])}
    H = cho_inverse_solve(G, rho, np.eye(D))
    B = H @ P
    terms = {}
    for gid, cols in blocks.items():
        idx = cols.reshape(-1)
        Hg = H[np.ix_(idx, idx)]
        S = cho_inverse_solve(Hg, 0.0, np.eye(idx.size))
        S = 0.5 * (S + S.T)
        terms[gid] = ConsumerTerm(S, S @ B[idx], var_y, cols.shape[1])
    return terms


def compress(term: ConsumerTerm, budget: int) -> ConsumerTerm:
    """The same regression with each channel's ``s`` features reduced to its ``r`` principal
    components (``r = budget // C``), so that wide layers (512 channels of 3x3 taps: 4608
    features) cost a ``C*r`` instead of a ``C*s`` factorisation per solver step.

    A channel keeps the directions in which its own features vary most; the selection
    needs which channels matter, and the final re-fit uses the exact statistics again.
    Terms already within the budget are returned unchanged.
    """
    C, s = term.channels, term.s
    r = max(1, budget // C)
    if C * s <= budget or r >= s:
        return term
    G4 = term.G.reshape(C, s, C, s)
    blocks = G4[np.arange(C), :, np.arange(C), :]            # (C, s, s) per-channel covariances
    _, vecs = np.linalg.eigh(blocks)
    U = vecs[:, :, ::-1][:, :, :r]                            # (C, s, r) leading components
    # optimize: one operand at a time (BLAS products), not one loop over all six indices,
    # which costs C*s*C*s*r*r (a Flatten of a 4x16x16 map into a Gemm: 1.7e10, half a minute)
    G = np.einsum("csdt,csa,dtb->cadb", G4, U, U, optimize=True).reshape(C * r, C * r)
    P = np.einsum("csm,csa->cam", term.P.reshape(C, s, -1), U, optimize=True).reshape(C * r, -1)
    return ConsumerTerm(G, P, term.var_y, r)


def reduce_outputs(term: ConsumerTerm, rtol: float = 1e-10) -> ConsumerTerm:
    """The same regression with the ``M`` outputs replaced by the ``r <= min(D', M)``
    principal directions of the cross-covariance (``P -> U_r S_r`` from ``P = U S V^T``).

    Every quantity of the entropic path and of the contribution baselines depends on ``P``
    only through ``P P^T`` (the ridge solution is ``Lambda = P^T D K`` and the loss, ``A``
    and ``b`` are built from ``Lambda^T Lambda`` and ``P Lambda``), which this keeps up to
    the directions whose variance is below ``rtol`` of the largest. Trained layers are far
    from full rank (VGG-16's 512-channel layers: 50 to 460 of 512 directions above 1e-9),
    and every Lambda-step costs in proportion to the number of outputs.
    """
    if term.P.shape[1] <= 1:
        return term
    U, sv, _ = np.linalg.svd(term.P, full_matrices=False)
    r = max(1, int(np.sum(sv * sv > rtol * sv[0] * sv[0]))) if sv[0] > 0 else 1
    if r >= term.P.shape[1]:
        return term
    return ConsumerTerm(term.G, U[:, :r] * sv[:r], term.var_y, term.s)


def cholesky(A: np.ndarray, rho: float, workers: int = 1) -> np.ndarray:
    """Lower Cholesky factor of ``A + rho' I`` (:func:`shifted_cholesky`; ``rho' = rho``
    unless ``A + rho I`` is not numerically positive definite)."""
    return shifted_cholesky(A, rho, workers)[0]


def shifted_cholesky(A: np.ndarray, rho: float, workers: int = 1) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of ``A + rho' I`` for a symmetric positive semi-definite ``A``,
    and the shift ``rho'`` it took: ``rho`` where that factors.

    Covariances from few samples, zero-padded patches or dead channels are singular, and
    their rounding errors scale with the largest variance, not the mean one that ``rho`` is
    relative to. When the factorisation fails the ridge grows tenfold (from at least 1e-10
    of the largest variance); after 12 failures it takes the shift that Gershgorin's circles
    prove enough (the rounding of nearly constant features, far from zero, can exceed their
    variances), so that every caller with a finite ``A`` gets a factor. Large factors are
    computed block by block on up to ``workers`` threads (:func:`_factor`).
    """
    top = max(float(np.max(np.abs(np.diag(A)), initial=0.0)), TINY)
    # a copy (A itself stays as it is), in the order LAPACK reads when it is factored whole
    order = "C" if A.shape[0] >= BLOCKED_FROM else "F"
    for attempt in range(13):
        if attempt == 12:  # every eigenvalue is at least the smallest diagonal minus its row's other entries
            off = np.sum(np.abs(A), axis=1) - np.abs(np.diag(A))
            rho = max(rho, float(np.max(off - np.diag(A), initial=0.0)) + 1e-10 * top)
        shifted = np.array(A, dtype=np.float64, order=order)
        shifted.ravel(order="K")[::A.shape[0] + 1] += rho      # + rho I without a D x D identity
        try:
            return _factor(shifted, workers), rho
        except np.linalg.LinAlgError:
            rho = max(10.0 * rho, 1e-10 * top)
    raise np.linalg.LinAlgError("covariance is not finite")


# Matrices of at least BLOCKED_FROM rows are factored and solved in blocks of BLOCK rows
# whose products run on several threads: LAPACK runs on one BLAS thread (its sums would
# depend on the thread count), so one large call would use one core. The blocks are fixed,
# so the result is the same bytes for any number of threads (VGG-16's 4608-feature layers:
# 1.3 s -> 0.5 s on two cores).
BLOCKED_FROM = 1536
BLOCK = 384


def _factor(A: np.ndarray, workers: int) -> np.ndarray:
    """The lower Cholesky factor of ``A`` (overwritten), right-looking by blocks."""
    n = A.shape[0]
    if n < BLOCKED_FROM:
        return lapack.cholesky(A, overwrite=True)
    starts = list(range(0, n, BLOCK))
    for j, j0 in enumerate(starts):
        j1 = min(j0 + BLOCK, n)
        A[j0:j1, j0:j1] = lapack.cholesky(A[j0:j1, j0:j1])
        A[j0:j1, j1:] = 0.0
        if j1 == n:
            break
        inverse_t = _lower_inverse(A[j0:j1, j0:j1]).T
        A[j1:, j0:j1] = matmul_rows(A[j1:, j0:j1], inverse_t, workers, BLOCK)   # the panel below
        panel = A[:, j0:j1]

        def update(tile: tuple[int, int]) -> None:  # the trailing lower triangle, tile by tile
            i0, k0 = tile
            A[i0:i0 + BLOCK, k0:k0 + BLOCK] -= panel[i0:i0 + BLOCK] @ panel[k0:k0 + BLOCK].T

        parallel_map(update, [(i0, k0) for i0 in starts[j + 1:] for k0 in starts[j + 1:] if k0 <= i0], workers)
    return A


def _lower_inverse(L: np.ndarray) -> np.ndarray:
    return lapack.solve_triangular(L, np.eye(L.shape[0]))


def solve_lower(L: np.ndarray, B: np.ndarray, workers: int = 1, transposed: bool = False) -> np.ndarray:
    """``L^-1 B`` (or ``L^-T B`` when ``transposed``) for a lower triangular ``L``; large
    systems by blocks, as :func:`_factor`."""
    n = L.shape[0]
    if n < BLOCKED_FROM:
        return lapack.solve_triangular(L.T if transposed else L, B, lower=not transposed)
    X = np.array(B, dtype=np.float64)
    starts = list(range(0, n, BLOCK))
    for i0 in (starts[::-1] if transposed else starts):
        i1 = min(i0 + BLOCK, n)
        # what the solved blocks already explain: below (L^T) or above (L) this block
        if transposed and i1 < n:
            X[i0:i1] -= matmul_rows(L[i1:, i0:i1].T, X[i1:], workers, BLOCK // 4)
        elif not transposed and i0:
            X[i0:i1] -= matmul_rows(L[i0:i1, :i0], X[:i0], workers, BLOCK // 4)
        X[i0:i1] = lapack.solve_triangular(L[i0:i1, i0:i1], X[i0:i1], trans=transposed)
    return X


def cho_inverse_solve(A: np.ndarray, rho: float, B: np.ndarray, workers: int = 1) -> np.ndarray:
    """``(A + rho I)^-1 B`` through :func:`cholesky`."""
    return cho_solve(cholesky(A, rho, workers), B, workers)


def cho_solve(L: np.ndarray, B: np.ndarray, workers: int = 1) -> np.ndarray:
    """``(L L^T)^-1 B`` for a lower Cholesky factor ``L``."""
    return solve_lower(L, solve_lower(L, B, workers), workers, transposed=True)


def ridge(G: np.ndarray, eps: float) -> float:
    """Ridge strength ``eps`` times the mean feature variance (scale-free)."""
    d = G.shape[0]
    return eps * max(float(np.trace(G)) / max(d, 1), TINY)


# A light ridge for error curves: enough to factor singular covariances, small enough not
# to change which prefix explains more.
CURVE_RIDGE = 1e-4


def explained_curve(term: ConsumerTerm, order: np.ndarray, eps_ridge: float = CURVE_RIDGE, workers: int = 1
                    ) -> np.ndarray:
    """Relative reconstruction error for keeping the first k channels of ``order``.

    Returns ``err`` of length C+1 with ``err[k]`` the relative error of the least-squares
    re-fit on channels ``order[:k]``. One Cholesky factor of the reordered covariance serves
    every k, because the leading block of a Cholesky factor is the factor of the leading
    block.
    """
    perm = term.block_columns(order)
    G = term.G[np.ix_(perm, perm)]
    L = cholesky(G, ridge(G, eps_ridge), workers)
    Z = solve_lower(L, term.P[perm], workers)
    gain = np.cumsum(np.einsum("ij,ij->i", Z, Z))
    explained = np.concatenate([[0.0], gain[term.s - 1::term.s]])
    return np.clip(1.0 - explained / term.energy, 0.0, 1.0)
