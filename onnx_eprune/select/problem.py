"""The per-group regression problem, in the form the selectors and the re-fit use.

A channel group of ``C`` channels feeds one or more consumers. For consumer ``k`` with
current input features x' (D'_k) and original output y (M_k):

* ``G`` (D' x D'): covariance of x',
* ``P`` (D' x M): cross-covariance of x' with y,
* ``var_y`` (M): variance of each output; their sum, ``energy``, makes every loss below a
  relative error,
* ``cols`` (C x s): the feature columns of each channel of the group; the remaining
  columns (``fixed``) belong to other groups and are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConsumerTerm:
    """One consumer's share of a group's regression (all arrays float64)."""

    G: np.ndarray        # (D', D')
    P: np.ndarray        # (D', M)
    var_y: np.ndarray    # (M,)
    cols: np.ndarray     # (C, s) int: feature columns of the group's channels
    fixed: np.ndarray    # (F,) int: feature columns of other groups (always kept)

    @property
    def channels(self) -> int:
        return self.cols.shape[0]

    @property
    def energy(self) -> float:
        return max(float(self.var_y.sum()), 1e-30)

    def restricted(self, keep_rows: np.ndarray | None) -> "ConsumerTerm":
        """The same term for the output rows ``keep_rows`` only (outputs already pruned)."""
        if keep_rows is None:
            return self
        return ConsumerTerm(self.G, self.P[:, keep_rows], self.var_y[keep_rows], self.cols, self.fixed)


def compress(term: ConsumerTerm, budget: int) -> ConsumerTerm:
    """The same regression with each channel's ``s`` features reduced to its ``r`` principal
    components (``r = budget // C``), so that wide layers (512 channels of 3x3 taps: 4608
    features) cost a ``C*r`` instead of a ``C*s`` factorisation per solver step.

    A channel keeps the directions in which its own features vary most; the selection
    needs which channels matter, and the final re-fit uses the exact statistics again.
    Terms already within the budget (and those with other groups' features) are returned
    unchanged.
    """
    C, s = term.cols.shape
    r = max(1, budget // C)
    if C * s <= budget or r >= s or len(term.fixed):
        return term
    cols = term.cols.reshape(-1)
    G4 = term.G[np.ix_(cols, cols)].reshape(C, s, C, s)
    blocks = G4[np.arange(C), :, np.arange(C), :]            # (C, s, s) per-channel covariances
    _, vecs = np.linalg.eigh(blocks)
    U = vecs[:, :, ::-1][:, :, :r]                            # (C, s, r) leading components
    G = np.einsum("csdt,csa,dtb->cadb", G4, U, U).reshape(C * r, C * r)
    P = np.einsum("csm,csa->cam", term.P[cols].reshape(C, s, -1), U).reshape(C * r, -1)
    return ConsumerTerm(G, P, term.var_y, np.arange(C * r).reshape(C, r), np.zeros(0, dtype=np.int64))


def ridge(G: np.ndarray, eps: float) -> float:
    """Ridge strength ``eps`` times the mean feature variance (scale-free)."""
    d = G.shape[0]
    return eps * max(float(np.trace(G)) / max(d, 1), 1e-30)


# A light ridge for error curves: enough to factor singular covariances, small enough not
# to change which prefix explains more.
CURVE_RIDGE = 1e-4


def explained_curve(term: ConsumerTerm, order: np.ndarray, eps_ridge: float = CURVE_RIDGE) -> np.ndarray:
    """Relative reconstruction error for keeping the first k channels of ``order``.

    Returns ``err`` of length C+1 with ``err[k]`` the relative error of the least-squares
    re-fit on the fixed columns plus channels ``order[:k]``. One Cholesky factor of the
    reordered covariance serves every k, because the leading block of a Cholesky factor
    is the factor of the leading block.
    """
    perm = np.concatenate([term.fixed, term.cols[order].reshape(-1)]).astype(np.int64)
    G = term.G[np.ix_(perm, perm)]
    rho = ridge(G, eps_ridge)
    L = np.linalg.cholesky(G + rho * np.eye(len(perm)))
    Z = _solve_lower(L, term.P[perm])
    gain = np.cumsum(np.einsum("ij,ij->i", Z, Z))
    f, s = len(term.fixed), term.cols.shape[1]
    explained = np.concatenate([[gain[f - 1] if f else 0.0], gain[f + s - 1::s]])
    return np.clip(1.0 - explained / term.energy, 0.0, 1.0)


def _solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(L, B, lower=True, check_finite=False)
