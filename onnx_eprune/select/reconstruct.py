"""Least-squares re-fit of a consumer on the channels it keeps."""

from __future__ import annotations

import numbers

import numpy as np

from .problem import cho_solve, ridge, shifted_cholesky

# Ridge toward the original weights, relative to the mean kept-feature variance. Session 1
# chose 0.1 on LeNet-5 at sparsity 0.55 alone; on the wide layers of VGG-16 / ResNet-18 it
# held the kept weights near the original ones where the data asked them to make up for the
# dropped channels: 0.01 cuts their test logit error by a fifth to a third at 30-89%
# sparsity, also with 256 samples, and leaves LeNet-5's within -10% / +5% (BENCHMARKS.md,
# session 27); it is also closer to the nearly free re-fit that the allocation's error
# curves assume (problem.CURVE_RIDGE)
DEFAULT_RIDGE = 0.01

# the relative ridges ``refit_ridge="auto"`` chooses from, per consumer
AUTO_RIDGES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)

# "auto-thin", the default re-fit ridge: DEFAULT_RIDGE, except that a consumer fitted on
# fewer than THIN_ROWS rows per kept feature, and on at most THIN_MAX_FEATURES of them, gets
# the ridge "auto" would choose. LeNet-5 with 100-500 samples (3 draws x 5 sparsities):
# cross-validating just these consumers cut the mean accuracy drop from 2.99 points (0.01
# everywhere) to 2.13, "auto" everywhere to 2.09, and only below one row per feature to 2.59
# (BENCHMARKS.md, session 34). The cap bounds the eigendecomposition "auto" needs: 1.7 s at
# 2304 features but 10.5 s at 4608 on two cores, where VGG-16's 2x2 block-5 convolutions
# (4 rows per image) are thin at low sparsity and chose 0.01 or less anyway. A consumer that
# is thin but not cross-validated is named in the report (``thin_refits``).
THIN = "auto-thin"
THIN_ROWS = 2.0
THIN_MAX_FEATURES = 2048

RIDGE_MODES = ("auto", THIN)  # the refit_ridge values that are not a number
# the largest numeric ridge: the kept weights then stay the original ones to about 1e-6,
# and a larger one overflows times a large feature variance (inf / inf in the re-fit)
MAX_RIDGE = 1e6
# what a re-fit ridge may be, for error messages
RIDGE_CHOICES = f"a number from 0 to {MAX_RIDGE:g}, " + " or ".join(repr(mode) for mode in RIDGE_MODES)


def thin(rows: int, features: int) -> bool:
    """Whether a re-fit on ``features`` kept features from ``rows`` rows has few rows for a
    fixed ridge (fewer than ``THIN_ROWS`` per feature)."""
    return rows < THIN_ROWS * features


def fixed_ridge(refit_ridge: float | str, rows: int, features: int) -> float | None:
    """The relative ridge a consumer re-fitted on ``features`` kept features from ``rows``
    rows gets under ``refit_ridge``, or None where :func:`auto_ridge` chooses it."""
    if refit_ridge == "auto":
        return None
    if refit_ridge == THIN:
        return None if thin(rows, features) and features <= THIN_MAX_FEATURES else DEFAULT_RIDGE
    return float(refit_ridge)


def valid_ridge(value: object) -> bool:
    """Whether ``value`` can be a re-fit ridge (``refit_ridge``): a number from 0 to
    MAX_RIDGE, ``"auto"`` or ``"auto-thin"``."""
    if value in RIDGE_MODES:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) <= MAX_RIDGE


def gcv_scores(G: np.ndarray, P: np.ndarray, var_y: np.ndarray, prior: np.ndarray, rows: int,
               ridges: tuple[float, ...] = AUTO_RIDGES) -> np.ndarray:
    """Generalised cross-validation score of :func:`refit` at each relative ridge (len(ridges),).

    ``G`` (S, S), ``P`` (S, M) and ``prior`` (M, S) as for :func:`refit`; ``var_y`` (M,) the
    variance of each original output; ``rows`` the number of rows behind the statistics
    (samples, times the sampled positions of a convolution). The score is Golub, Heath and
    Wahba's ``RSS / (1 - df / rows)**2``: the mean squared residual of the fit, summed over
    the outputs, inflated by the degrees of freedom ``df`` the fit spends (one for the bias
    plus ``sum(l / (l + rho))`` over the eigenvalues ``l`` of ``G``). It approximates the
    leave-one-out error from the moments alone, so it needs no held-out data. Ridges at
    which ``df >= rows`` score infinity.
    """
    Q = P - G @ prior.T                  # cross-covariance with the residual y - prior x
    residual = float(var_y.sum() - 2.0 * np.sum(prior * P.T) + np.sum((prior @ G) * prior))
    lam, V = np.linalg.eigh(G)
    lam = np.clip(lam, 0.0, None)
    energy = np.sum((V.T @ Q) ** 2, axis=1)
    scores = np.full(len(ridges), np.inf)
    for i, eps in enumerate(ridges):
        rho = ridge(G, eps)
        rss = residual - float(np.sum(energy * (lam + 2.0 * rho) / (lam + rho) ** 2))
        df = 1.0 + float(np.sum(lam / (lam + rho)))
        if df < rows:
            scores[i] = max(rss, 0.0) / (1.0 - df / rows) ** 2
    return scores


def auto_ridge(G: np.ndarray, P: np.ndarray, var_y: np.ndarray, prior: np.ndarray, rows: int) -> float:
    """The relative ridge of ``AUTO_RIDGES`` with the lowest :func:`gcv_scores` (the largest
    when every one spends more degrees of freedom than there are rows)."""
    scores = gcv_scores(G, P, var_y, prior, rows)
    return AUTO_RIDGES[int(np.argmin(scores))] if np.isfinite(scores).any() else AUTO_RIDGES[-1]


# the relative rounding of the statistics: float32 products, summed in float64
ROUNDING = 1e-7


def refit(G: np.ndarray, P: np.ndarray, mean_x: np.ndarray, mean_y: np.ndarray, bias: np.ndarray,
          prior: np.ndarray, eps_ridge: float = DEFAULT_RIDGE, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """New weights and bias of a consumer that reads only the S features it keeps, x'_S.

    Parameters
    ----------
    G : (S, S) covariance of the kept features of the consumer's current input x'.
    P : (S, M) cross-covariance of x'_S with the original output ``theta @ x``.
    mean_x : (S,) mean of x'_S.  mean_y : (M,) mean of ``theta @ x``.
    bias : (M,) the original bias (zeros if none).
    prior : (M, S) the original weights of the kept features.
    workers : threads for the factorisation of large systems.

    Returns ``omega`` (M x S) and the new bias (M,) minimising

        E|| theta x + bias - (omega x'_S + new_bias) ||^2 + rho ||omega - prior||^2,

    with ``rho`` = ``eps_ridge`` times the mean kept-feature variance (at least ``ROUNDING``
    times their mean square: below it a variance is rounding). Shrinking toward the
    original weights rather than toward zero keeps what training learnt where the
    calibration data say little (few samples, dead or constant channels: a singular ``G``).
    The bias absorbs the means of the dropped features.
    """
    # at least the rounding of the moments (float32 products): features that vary less than
    # that are constants, and their cross-covariance with the output is rounding too
    rho = max(ridge(G, eps_ridge), ROUNDING * float(np.mean(mean_x ** 2 + np.diag(G)))) if len(G) else 0.0
    L, shift = shifted_cholesky(G, rho, workers)
    if shift == rho:
        omega = cho_solve(L, P + rho * prior.T, workers).T
    else:
        # G + rho I was singular (a ridge of 0 on few samples): the shift the factor took must
        # also hold the weights near the original ones, not near zero, so solve for the change
        # (G + shift I) (omega - prior)^T = P - G prior^T
        omega = prior + cho_solve(L, P - G @ prior.T, workers).T
    new_bias = bias + mean_y - omega @ mean_x
    return omega, new_bias
