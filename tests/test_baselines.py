"""The LASSO and ThiNet baselines against their definitions, on small problems."""

import numpy as np

from onnx_eprune.select import baselines
from test_math import random_term


def contributions_by_brute_force(X, theta, s, C):
    """A and b of the channel contributions z_c = theta_c x_c, straight from the rows."""
    Xc = X - X.mean(0)
    Z = np.stack([Xc[:, c * s:(c + 1) * s] @ theta[:, c * s:(c + 1) * s].T for c in range(C)])  # C, T, M
    Y = Z.sum(0)
    energy = (Y * Y).sum() / len(X)
    A = np.einsum("ctm,dtm->cd", Z, Z) / len(X) / energy
    b = np.einsum("ctm,tm->c", Z, Y) / len(X) / energy
    return A, b


def test_contributions_match_the_rows():
    rng = np.random.default_rng(0)
    term, X, _Y, theta = random_term(rng, C=6, s=3, M=4, weak=())
    A, b = baselines.contributions([term], max_features=10_000)
    A_ref, b_ref = contributions_by_brute_force(X, theta, 3, 6)
    # the light ridge of the least-squares weights (1e-4 of the mean variance, against an
    # ill-conditioned covariance) is the only difference: about 0.5%
    np.testing.assert_allclose(A, A_ref, atol=1e-2 * np.abs(A_ref).max())
    np.testing.assert_allclose(b, b_ref, atol=1e-2 * np.abs(b_ref).max())


def test_thinet_is_greedy_on_the_removed_energy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, 7))
    A = a @ a.T
    order = baselines.thinet_ranking(A)
    removed: list[int] = []
    for c in order[::-1]:  # removal order
        candidates = [d for d in range(7) if d not in removed]
        costs = {d: np.ones(len(removed) + 1) @ A[np.ix_(removed + [d], removed + [d])] @ np.ones(len(removed) + 1)
                 for d in candidates}
        assert costs[c] <= min(costs.values()) + 1e-12
        removed.append(int(c))
    assert sorted(order) == list(range(7))


def test_lasso_on_orthogonal_channels_ranks_by_correlation():
    """With A diagonal the LASSO solution is soft thresholding: channel c enters at
    lam = 2 |b_c|, so the ranking is by |b_c|."""
    b = np.array([0.3, -0.9, 0.05, 0.5, 0.7])
    A = np.diag([1.0, 2.0, 0.5, 1.5, 1.0])
    assert list(baselines.lasso_ranking(A, b)) == list(np.argsort(-np.abs(b)))


def test_lasso_end_of_path_is_least_squares_and_drops_useless_channels():
    rng = np.random.default_rng(2)
    term, *_ = random_term(rng, C=8, weak=(2, 5))
    A, b = baselines.contributions([term], max_features=10_000)
    ranking = baselines.lasso_ranking(A, b)
    assert set(ranking[-2:]) == {2, 5}
    assert set(baselines.thinet_ranking(A)[-2:]) == {2, 5}
