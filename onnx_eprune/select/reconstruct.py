"""Least-squares re-fit of a consumer on the channels it keeps."""

from __future__ import annotations

import numpy as np

from .problem import cho_inverse_solve, ridge

# Ridge toward the original weights, relative to the mean kept-feature variance. Session 1
# chose 0.1 on LeNet-5 at sparsity 0.55 alone; on the wide layers of VGG-16 / ResNet-18 it
# held the kept weights near the original ones where the data asked them to make up for the
# dropped channels: 0.01 cuts their test logit error by a fifth to a third at 30-89%
# sparsity, also with 256 samples, and leaves LeNet-5's within -10% / +5% (BENCHMARKS.md,
# session 27); it is also closer to the nearly free re-fit that the allocation's error
# curves assume (problem.CURVE_RIDGE)
DEFAULT_RIDGE = 0.01


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

    with ``rho`` = ``eps_ridge`` times the mean kept-feature variance. Shrinking toward the
    original weights rather than toward zero keeps what training learnt where the
    calibration data say little (few samples, dead or constant channels: a singular ``G``).
    The bias absorbs the means of the dropped features.
    """
    rho = ridge(G, eps_ridge)
    omega = cho_inverse_solve(G, rho, P + rho * prior.T, workers).T
    new_bias = bias + mean_y - omega @ mean_x
    return omega, new_bias
