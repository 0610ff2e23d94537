"""The numerical core against brute force on small random problems."""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from onnx_eprune.calibrate.stats import (ConvGeometry, MomentAccumulator, MomentStats, PixelPairAccumulator, PooledStats,
                                         conv_patches, row_keys, sample_positions)
from onnx_eprune.select import entropic
from onnx_eprune.select.problem import (CURVE_RIDGE, ConsumerTerm, cho_inverse_solve, cholesky, compress, explained_curve,
                                         partial_out, reduce_outputs, ridge)
from onnx_eprune.select.reconstruct import (AUTO_RIDGES, DEFAULT_RIDGE, THIN_MAX_FEATURES, auto_ridge, fixed_ridge,
                                           gcv_scores, refit)


def random_term(rng, C=8, s=3, M=5, T=400, weak=(0, 1), extra=0):
    """A regression where channels ``weak`` contribute almost nothing to the output;
    ``extra`` channels of another group follow the group's ``C`` in X."""
    D = (C + extra) * s
    X = rng.normal(size=(T, D)) @ (np.eye(D) + 0.2 * rng.normal(size=(D, D)))
    theta = rng.normal(size=(M, D))
    for c in weak:
        theta[:, c * s:(c + 1) * s] *= 1e-3
    Y = X @ theta.T
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    G, P = Xc.T @ Xc / T, Xc.T @ Yc / T
    term = partial_out(G, P, Yc.var(0), {0: np.arange(C * s).reshape(C, s)}, 1e-12)[0]
    return term, X, Y, theta


def psd(rng, C):
    a = rng.normal(size=(C, C))
    return a @ a.T / C


def reference_w(A, b, eps):
    """The simplex minimiser by a generic optimizer on the softmax parametrisation."""
    def f(z):
        w = np.exp(z - z.max())
        w /= w.sum()
        return w @ A @ w - 2 * b @ w + eps * np.sum(w * np.log(np.maximum(w, 1e-300)))

    best = min((minimize(f, z0, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
                for z0 in (np.zeros(len(b)), -np.log(np.arange(1, len(b) + 1)))), key=lambda r: r.fun)
    return best.fun


@pytest.mark.parametrize("eps", [1e-3, 1e-1, 1.0])
def test_w_step_satisfies_kkt(eps):
    rng = np.random.default_rng(1)
    A, b = psd(rng, 7), rng.normal(size=7)
    w = entropic.solve_w(A, b, eps)
    assert w.min() > 0 and abs(w.sum() - 1) < 1e-12
    grad = 2 * A @ w - 2 * b + eps * (1 + np.log(w))
    # KKT on the simplex: the gradient equals the multiplier wherever the weight matters,
    # and no coordinate would lower the objective noticeably by growing
    nu = grad @ w
    assert np.sum(w * np.abs(grad - nu)) < 1e-7 * max(1.0, np.abs(grad).max())
    assert np.all(w * np.maximum(nu - grad, 0) < 1e-9)


@pytest.mark.parametrize("eps", [1e-3, 0.05, 1.0])
def test_w_step_matches_generic_optimizer(eps):
    rng = np.random.default_rng(2)
    A, b = psd(rng, 5), rng.normal(size=5)
    w = entropic.solve_w(A, b, eps)
    f = w @ A @ w - 2 * b @ w + eps * np.sum(w * np.log(w))
    assert f <= reference_w(A, b, eps) + 1e-9


def test_lambda_step_is_ridge_regression():
    rng = np.random.default_rng(3)
    term, X, Y, _ = random_term(rng)
    d = rng.uniform(0.2, 2.0, size=term.G.shape[0])
    lam = entropic.lambda_step(term, d, 0.3)
    # brute force: ridge least squares of centred Y on centred X*d, rows augmented by sqrt(rho*T)*I
    T = len(X)
    Xc, Yc = (X - X.mean(0)) * d, Y - Y.mean(0)
    rho = ridge(term.G, 0.3)
    aug_x = np.vstack([Xc, np.sqrt(rho * T) * np.eye(Xc.shape[1])])
    aug_y = np.vstack([Yc, np.zeros((Xc.shape[1], Y.shape[1]))])
    ref = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0].T
    np.testing.assert_allclose(lam, ref, rtol=1e-8, atol=1e-10)


def test_quadratic_in_w_is_the_fit_term():
    rng = np.random.default_rng(4)
    term, X, Y, _ = random_term(rng)
    C = term.channels
    w0 = rng.dirichlet(np.ones(C))
    lam = entropic.lambda_step(term, np.repeat(C * w0, term.s), 1.0)
    A, b = entropic.quadratic_in_w(term, lam)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)

    def fit(w):
        return np.mean(np.sum((Yc - (Xc * np.repeat(C * w, term.s)) @ lam.T) ** 2, axis=1)) / term.energy

    w1, w2 = rng.dirichlet(np.ones(C)), rng.dirichlet(np.ones(C))
    # equal up to a constant: compare differences
    assert np.isclose(fit(w1) - fit(w2), (w1 @ A @ w1 - 2 * b @ w1) - (w2 @ A @ w2 - 2 * b @ w2), rtol=1e-7)


def test_smaller_entropy_keeps_fewer_channels():
    rng = np.random.default_rng(5)
    term, *_ = random_term(rng, C=10, weak=(0, 3, 7))
    cfg = entropic.EntropicConfig()
    counts = []
    w = None
    for log_eps in (1.0, -1.0, -3.0, -5.0):
        w = entropic.alternate([term], 10 ** log_eps, cfg, w).w
        counts.append(entropic.alive(w, cfg.threshold))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == 10 and counts[-1] < 10


def test_entropic_drops_the_channels_that_do_not_matter():
    rng = np.random.default_rng(6)
    term, *_ = random_term(rng, C=10, weak=(0, 3, 7))
    keep = entropic.select([term], 7)
    assert set(keep) == set(range(10)) - {0, 3, 7}


def test_terms_on_parallel_threads_give_the_same_path():
    rng = np.random.default_rng(9)
    terms = [random_term(rng, C=10, weak=(0, 3, 7))[0] for _ in range(3)]
    paths = {}
    for workers in (1, 3):
        paths[workers] = []
        entropic.ranking(terms, record=paths[workers], workers=workers)
    assert len(paths[1]) > 3 and len(paths[1]) == len(paths[3])
    assert all(np.array_equal(a.w, b.w) for a, b in zip(paths[1], paths[3]))


def _exchange_terms(seed: int, C: int = 7):
    """Two consumers of one group of C channels (s = 2 features each), channels 1 and 4 weak."""
    rng = np.random.default_rng(seed)
    return [random_term(rng, C=C, s=2, M=m, T=300, weak=(1, 4))[0] for m in (3, 4)]


def _brute_refit_error(terms, keep) -> float:
    """refit_error by hand: per term, the ridge solve on the kept features, the explained share."""
    total = 0.0
    for t in terms:
        cols = np.concatenate([np.arange(c * t.s, (c + 1) * t.s) for c in keep])
        G, P = t.G[np.ix_(cols, cols)], t.P[cols]
        rho = CURVE_RIDGE * np.trace(t.G) / t.G.shape[0]
        lam = np.linalg.solve(G + rho * np.eye(len(cols)), P)
        total += 1.0 - np.trace(P.T @ lam) / t.var_y.sum()
    return total


@pytest.mark.parametrize("seed", range(6))
def test_exchange_leaves_no_improving_swap(seed):
    """``entropic.exchange``: its objective is the ridge re-fit error computed by hand; its
    result admits no single swap that lowers it (and at keep 1 and C-1, where every set is
    one swap away, is the brute-force optimum); groups wider than ``exchange_below`` keep
    the given set."""
    terms = _exchange_terms(seed)
    C = terms[0].channels
    for keep in ([0, 1, 2], [1, 4], [2]):
        assert entropic.refit_error(terms, keep) == pytest.approx(_brute_refit_error(terms, keep), rel=1e-9, abs=1e-12)
    for k in (1, 3, C - 1):
        start = list(range(k))   # the weak channel 1 among them: a poor start
        got = [int(c) for c in entropic.exchange(terms, np.array(start))]
        err = entropic.refit_error(terms, got)
        for i in got:
            for j in set(range(C)) - set(got):
                assert entropic.refit_error(terms, sorted(set(got) - {i} | {j})) >= err * (1 - 1e-6) - 1e-12
        if k in (1, C - 1):
            best = min(itertools.combinations(range(C), k), key=lambda S: entropic.refit_error(terms, S))
            assert tuple(got) == best
    narrow = entropic.EntropicConfig(exchange_below=C - 1)
    assert list(entropic.exchange(terms, np.array([3, 0, 1]), narrow)) == [0, 1, 3]


def test_explained_curve_matches_direct_refits():
    rng = np.random.default_rng(7)
    term, *_ = random_term(rng, C=6)
    order = rng.permutation(6)
    curve = explained_curve(term, order, 1e-9)
    for k in range(7):
        cols = term.block_columns(order[:k])
        G, P = term.G[np.ix_(cols, cols)], term.P[cols]
        direct = 1 - np.sum(P * np.linalg.solve(G, P)) / term.energy if len(cols) else 1.0
        assert abs(curve[k] - direct) < 1e-6


def test_partial_out_gives_the_error_with_the_other_group_kept():
    """The curve of a group whose consumer also reads another group differs from the direct
    re-fit on (other group + first k channels) by a constant: the other group's share."""
    rng = np.random.default_rng(13)
    C, s, extra = 5, 2, 3
    _, X, Y, _ = random_term(rng, C=C, s=s, extra=extra)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    G, P, var_y = Xc.T @ Xc / len(X), Xc.T @ Yc / len(X), Yc.var(0)
    blocks = {0: np.arange(C * s).reshape(C, s), 1: np.arange(C * s, (C + extra) * s).reshape(extra, s)}
    terms = partial_out(G, P, var_y, blocks, 1e-12)
    order = rng.permutation(C)
    curve = explained_curve(terms[0], order, 1e-12)
    direct = []
    for k in range(C + 1):
        cols = np.concatenate([blocks[1].reshape(-1), blocks[0][order[:k]].reshape(-1)])
        Gs, Ps = G[np.ix_(cols, cols)], P[cols]
        direct.append(1 - np.sum(Ps * np.linalg.solve(Gs, Ps)) / var_y.sum())
    np.testing.assert_allclose(np.diff(curve), np.diff(direct), atol=1e-8)


def test_refit_matches_augmented_least_squares():
    rng = np.random.default_rng(8)
    T, D, M = 300, 9, 4
    X = rng.normal(size=(T, D)) + 3.0  # non-zero means: the bias must absorb them
    theta, bias = rng.normal(size=(M, D)), rng.normal(size=M)
    Y = X @ theta.T
    keep = np.array([0, 2, 3, 7])
    st = MomentStats.from_rows(X, Y)
    prior = theta[:, keep]
    omega, new_bias = refit(st.covariance(keep), st.cross[keep], st.mean_x[keep], st.mean_y, bias, prior, 0.05)
    # brute force on centred data with rows that pull omega toward the prior
    Xc, Yc = X[:, keep] - X[:, keep].mean(0), Y - Y.mean(0)
    rho = ridge(st.cov[np.ix_(keep, keep)], 0.05)
    aug_x = np.vstack([Xc, np.sqrt(rho * T) * np.eye(len(keep))])
    aug_y = np.vstack([Yc, np.sqrt(rho * T) * prior.T])
    ref = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0].T
    np.testing.assert_allclose(omega, ref, rtol=1e-8, atol=1e-10)
    pred = X[:, keep] @ omega.T + new_bias
    np.testing.assert_allclose(pred.mean(0), (Y + bias).mean(0), atol=1e-9)


def test_refit_handles_dead_and_constant_channels():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(200, 6))
    X[:, 1] = 0.0   # dead ReLU channel
    X[:, 4] = 2.5   # constant channel
    theta = rng.normal(size=(3, 6))
    st = MomentStats.from_rows(X, X @ theta.T)
    keep = np.arange(6)
    omega, new_bias = refit(st.covariance(keep), st.cross[keep], st.mean_x[keep], st.mean_y, np.zeros(3), theta, 1e-6)
    assert np.all(np.isfinite(omega)) and np.all(np.isfinite(new_bias))
    np.testing.assert_allclose(X @ omega.T + new_bias, X @ theta.T, atol=1e-6)


@pytest.mark.parametrize("n, S", [(300, 12), (40, 30)])
def test_gcv_scores_match_the_hat_matrix(n, S):
    """The moments-only GCV score equals RSS / (1 - tr(H) / n)^2 computed from the rows:
    H the hat matrix of the ridge fit toward the prior on centred data, plus one for the
    bias; also with fewer rows than features."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, S)) @ (np.eye(S) + 0.3 * rng.normal(size=(S, S)))
    theta = rng.normal(size=(4, S))
    Y = X @ theta.T + 0.5 * rng.normal(size=(n, 4))
    prior = theta + 0.3 * rng.normal(size=theta.shape)
    st = MomentStats.from_rows(X, Y)
    keep = np.arange(S)
    G, P = st.covariance(keep), st.cross[keep]
    got = gcv_scores(G, P, st.var_y, prior, n)
    Xc = X - X.mean(0)
    for eps, score in zip(AUTO_RIDGES, got):
        omega, bias = refit(G, P, st.mean_x, st.mean_y, np.zeros(4), prior, eps)
        rss = np.sum((Y - X @ omega.T - bias) ** 2) / n
        H = Xc @ np.linalg.solve(Xc.T @ Xc + n * ridge(G, eps) * np.eye(S), Xc.T)
        df = 1 + np.trace(H)
        assert score == (pytest.approx(rss / (1 - df / n) ** 2, rel=1e-6) if df < n else np.inf)
    assert auto_ridge(G, P, st.var_y, prior, n) == AUTO_RIDGES[int(np.argmin(got))]


def test_fixed_ridge_rules():
    """auto-thin cross-validates a consumer with fewer than 2 rows per kept feature and at
    most THIN_MAX_FEATURES of them; a number is fixed everywhere, auto nowhere."""
    assert fixed_ridge("auto-thin", 100, 51) is None and fixed_ridge("auto-thin", 100, 50) == DEFAULT_RIDGE
    assert fixed_ridge("auto-thin", 4000, THIN_MAX_FEATURES) is None
    assert fixed_ridge("auto-thin", 4000, THIN_MAX_FEATURES + 1) == DEFAULT_RIDGE
    assert fixed_ridge(0.3, 10, 1000) == 0.3 and fixed_ridge("auto", 10**6, 3) is None


def test_auto_ridge_shrinks_more_with_fewer_rows():
    """Many rows of a well-determined fit choose a light ridge; the same problem seen through
    fewer rows than features a heavy one."""
    rng = np.random.default_rng(12)
    S = 40
    theta = rng.normal(size=(3, S))
    prior = theta + 0.3 * rng.normal(size=theta.shape)  # optimal rho ~ noise / (rows * 0.3**2)
    chosen = []
    for n in (4000, 30):
        X = rng.normal(size=(n, S))
        st = MomentStats.from_rows(X, X @ theta.T + rng.normal(size=(n, 3)))
        keep = np.arange(S)
        chosen.append(auto_ridge(st.covariance(keep), st.cross[keep], st.var_y, prior, n))
    assert chosen[0] <= 0.003 and chosen[1] >= 0.1


def test_moment_stats_merge_equals_one_pass():
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(500, 7)) + 10.0, rng.normal(size=(500, 3)) - 5.0
    whole = MomentStats.from_rows(X, Y)
    parts = MomentStats.empty(7, 3)
    for chunk in np.array_split(np.arange(500), 7):
        parts.merge(MomentStats.from_rows(X[chunk], Y[chunk]))
    for a, b in [(whole.cov, parts.cov), (whole.cross, parts.cross), (whole.var_y, parts.var_y),
                 (whole.mean_x, parts.mean_x)]:
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(whole.cov, np.cov(X.T, bias=True), rtol=1e-6)


def test_pooled_stats_equal_the_moments_of_all_rows():
    """The applications of one shared weight are re-fitted on their rows together:
    PooledStats of three row sets (different sizes and means, each normalised as the
    solvers leave them) gives the one-pass moments of their union."""
    rng = np.random.default_rng(12)
    parts = [(rng.normal(i, 1 + i, (n, 6)), rng.normal(-3 * i, 1, (n, 2))) for i, n in enumerate((40, 9, 120))]
    members = [MomentStats.from_rows(x, y) for x, y in parts]
    for m in members:
        m.cov  # normalised in place, as after selection
    whole = MomentStats.from_rows(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    pooled = PooledStats(members)
    features = np.array([0, 3, 5])
    assert pooled.n == whole.n
    for a, b in [(pooled.covariance(features), whole.covariance(features)), (pooled.cross, whole.cross),
                 (pooled.var_y, whole.var_y), (pooled.mean_x, whole.mean_x), (pooled.mean_y, whole.mean_y)]:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("buffer_rows", [4096, 100])
def test_streamed_moments_equal_one_pass_in_float64(monkeypatch, buffer_rows):
    """Float32 batches with a large common offset, streamed through the shifted sums (in one
    buffer, or in buffers that batches straddle), give the float64 one-pass moments to
    float32 accuracy."""
    monkeypatch.setattr(MomentAccumulator, "MAX_ROWS", buffer_rows)
    rng = np.random.default_rng(11)
    X = (rng.normal(size=(600, 9)) * rng.uniform(0.1, 10, size=9) + 50.0).astype(np.float32)
    Y = (X @ rng.normal(size=(9, 4)) - 20.0).astype(np.float32)
    acc = MomentAccumulator()
    for chunk in np.array_split(np.arange(600), 5):
        acc.add(X[chunk], Y[chunk])
    got, ref = acc.result(), MomentStats.from_rows(X.astype(np.float64), Y.astype(np.float64))
    assert got.n == 600
    for a, b in [(got.cov, ref.cov), (got.cross, ref.cross), (got.var_y, ref.var_y), (got.mean_x, ref.mean_x),
                 (got.mean_y, ref.mean_y)]:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * np.abs(b).max())


def test_covariance_is_normalised_once_and_then_frozen():
    rng = np.random.default_rng(15)
    X = rng.normal(size=(50, 4))
    st = MomentStats.from_rows(X, X[:, :2])
    first = st.cov.copy()
    np.testing.assert_allclose(first, np.cov(X.T, bias=True), rtol=1e-12)
    assert np.array_equal(st.cov, first) and np.array_equal(st.covariance(np.array([1, 3])), first[np.ix_([1, 3], [1, 3])])
    with pytest.raises(RuntimeError):
        st.merge(MomentStats.from_rows(X, X[:, :2]))
    with pytest.raises(RuntimeError):
        st.to_arrays("c0_")


def test_moments_of_a_linear_map_follow_from_those_of_its_input():
    """With ``theta`` the accumulator takes no y: the moments of y = x theta^T come from
    those of x, as if y had been streamed; a thread count changes no byte."""
    rng = np.random.default_rng(12)
    X = (rng.normal(size=(700, 300)) * rng.uniform(0.1, 10, size=300) + 5.0).astype(np.float32)
    theta = rng.normal(size=(7, 300)).astype(np.float32)
    ref = MomentStats.from_rows(X.astype(np.float64), X.astype(np.float64) @ theta.T.astype(np.float64))
    results = []
    for threads in (1, 2):
        acc = MomentAccumulator(threads, theta)
        for chunk in np.array_split(np.arange(700), 3):
            acc.add(X[chunk])
        results.append(acc.result())
    for a, b in [(results[0].cxx, results[1].cxx), (results[0].cxy, results[1].cxy), (results[0].syy, results[1].syy)]:
        assert np.array_equal(a, b)
    got = results[0]
    for a, b in [(got.cov, ref.cov), (got.cross, ref.cross), (got.var_y, ref.var_y), (got.mean_y, ref.mean_y)]:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("geo,hw", [
    (ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (4, 4)), (4, 4)),
    (ConvGeometry((3, 3), (1, 1), (0, 1, 2, 0), (1, 1), (4, 3)), (4, 4)),
    (ConvGeometry((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), (3, 3)), (3, 3)),
    (ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 2)), (2, 2)),
    (ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 7), (2, 2)), (4, 4)),   # a ConvTranspose
    (ConvGeometry((5,), (1,), (2, 2), (1,), (4,), (1,)), (4,)),                       # 1-D
    (ConvGeometry((3, 2, 3), (1, 1, 1), (1, 0, 1, 1, 1, 1), (1, 1, 1), (2, 4, 3), (1, 1, 1)), (2, 3, 3)),  # 3-D
])
@pytest.mark.parametrize("linear", [False, True])
def test_pixel_pair_moments_equal_the_moments_of_the_rows(geo, hw, linear):
    """The scatter built from pixel pairs, the cross-moments built per tap, buffers that
    batches straddle: the moments of the im2col rows at every position, to float32
    accuracy, for 1-, 2- and 3-D kernels; a thread count changes no byte."""
    rng = np.random.default_rng(13)
    C, M, N = 5, 3, 300
    x = (rng.normal(size=(N, C) + hw) * rng.uniform(0.5, 3, size=(1, C) + (1,) * len(hw)) + 4).astype(np.float32)
    n_pos = math.prod(geo.out_hw)
    rows = conv_patches(x, geo, np.broadcast_to(np.arange(n_pos), (N, n_pos)))
    theta = rng.normal(size=(M, rows.shape[1])).astype(np.float32)
    y = rows @ theta.T
    ref = MomentStats.from_rows(rows.astype(np.float64), y.astype(np.float64))
    results = []
    for threads in (1, 2):
        acc = PixelPairAccumulator.of(geo, (C,) + hw, threads, theta if linear else None)
        assert acc is not None
        acc.BUFFER_BYTES = 64 * 4 * (C * (math.prod(hw) + 1) + n_pos * M)  # 64 images per buffer
        for chunk in np.array_split(np.arange(N), 7):
            acc.add(x[chunk], None if linear else y[chunk[0] * n_pos:(chunk[-1] + 1) * n_pos])
        results.append(acc.result())
    for a, b in [(results[0].cxx, results[1].cxx), (results[0].cxy, results[1].cxy)]:
        assert np.array_equal(a, b)
    got = results[0]
    assert got.n == ref.n
    for a, b in [(got.cov, ref.cov), (got.cross, ref.cross), (got.var_y, ref.var_y), (got.mean_x, ref.mean_x),
                 (got.mean_y, ref.mean_y)]:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * np.abs(b).max())


def test_pixel_pairs_are_used_only_where_they_save_work():
    one_by_one = ConvGeometry((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (4, 4))
    downsampling = ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (2, 2))
    assert PixelPairAccumulator.of(one_by_one, (8, 4, 4)) is None
    assert PixelPairAccumulator.of(downsampling, (8, 4, 4)) is None
    assert PixelPairAccumulator.of(ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (4, 4)), (8, 4, 4)) is not None


def test_blocked_factor_and_solves_match_lapack(monkeypatch):
    """Past BLOCKED_FROM rows the factor and the triangular solves go by blocks (here from
    40 rows, blocks of 16 with a ragged last one): the same numbers as LAPACK to rounding,
    and the same bytes for any number of threads."""
    from onnx_eprune.select import problem
    monkeypatch.setattr(problem, "BLOCKED_FROM", 40)
    monkeypatch.setattr(problem, "BLOCK", 16)
    rng = np.random.default_rng(14)
    n = 90
    X = rng.normal(size=(n + 10, n))
    A, B = X.T @ X / n, rng.normal(size=(n, 7))
    ref_L = np.linalg.cholesky(A + 1e-3 * np.eye(n))
    got = [(cholesky(A, 1e-3, w), cho_inverse_solve(A, 1e-3, B, w)) for w in (1, 2)]
    np.testing.assert_allclose(got[0][0], ref_L, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0][1], np.linalg.solve(A + 1e-3 * np.eye(n), B), rtol=1e-8)
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[1][1])
    with pytest.raises(np.linalg.LinAlgError):
        problem._factor(-np.eye(n), 2)


@pytest.mark.parametrize("stride,pads,dil", [(1, (1, 1, 1, 1), 1), (2, (0, 1, 2, 0), 1), (1, (2, 2, 2, 2), 2)])
def test_conv_patches_reproduce_the_convolution(stride, pads, dil):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dil * 2 - 1) // stride + 1
    ow = (xp.shape[3] - dil * 2 - 1) // stride + 1
    ref = np.zeros((2, 4, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + 2 * dil + 1:dil, j * stride:j * stride + 2 * dil + 1:dil]
            ref[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w)
    geo = ConvGeometry((3, 3), (stride, stride), pads, (dil, dil), (oh, ow))
    # 3 positions x 9 taps read fewer values than the 72 pixels (taps gathered from x);
    # every position reads more (the map transposed first)
    for k in (3, oh * ow):
        pos = sample_positions(np.array([11, 12], dtype=np.uint64), 0, oh * ow, k)
        rows = conv_patches(x, geo, pos) @ w.reshape(4, -1).T
        expect = ref.reshape(2, 4, -1).transpose(0, 2, 1)[np.arange(2)[:, None], pos].reshape(-1, 4)
        np.testing.assert_allclose(rows, expect, rtol=1e-4, atol=1e-4)


def test_row_keys_give_each_block_of_a_space_to_batch_its_own_key():
    """A tensor with one row per sample keeps the samples' keys (the first ``rows`` of them:
    the same positions as before session 60); one with k rows per sample, block-major, gets
    a distinct key per row, and a sample's row keys do not depend on the batch it is in."""
    keys = np.array([5, 9, 5 << 40, 2], dtype=np.uint64)
    assert np.array_equal(row_keys(keys, 4), keys) and np.array_equal(row_keys(keys, 3), keys[:3])
    rows = row_keys(keys, 12)
    assert rows.dtype == np.uint64 and len(set(rows.tolist())) == 12 and not set(rows.tolist()) & set(keys.tolist())
    split = [row_keys(keys[:1], 3), row_keys(keys[1:], 9)]
    for i in range(4):  # block b of sample i is row b * N + i in any batch
        alone = split[0] if i == 0 else split[1].reshape(3, 3)[:, i - 1]
        assert np.array_equal(rows.reshape(3, 4)[:, i], alone.ravel())
    with pytest.raises(ValueError, match="10 rows computed from 4 samples"):
        row_keys(keys, 10)


def test_compress_keeps_the_principal_within_channel_directions():
    rng = np.random.default_rng(12)
    term, *_ = random_term(rng, C=6, s=4, M=3)
    small = compress(term, 12)  # 6 channels x 2 components
    assert (small.channels, small.s) == (6, 2) and small.G.shape == (12, 12) and small.P.shape == (12, 3)
    # the compressed features are orthogonal projections of each channel's features, so the
    # compressed covariance is P.S.D. with each channel's leading eigenvalues on its block
    for c in range(6):
        cols, sub_cols = term.block_columns([c]), small.block_columns([c])
        top = np.sort(np.linalg.eigvalsh(term.G[np.ix_(cols, cols)]))[::-1][:2]
        sub = small.G[np.ix_(sub_cols, sub_cols)]
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(sub))[::-1], top, rtol=1e-8)
    assert np.linalg.eigvalsh(small.G).min() > -1e-10
    assert compress(term, 24) is term  # within budget: unchanged


def test_partial_out_single_group_matches_the_joint_formula():
    rng = np.random.default_rng(14)
    _, X, Y, _ = random_term(rng, C=4, s=3, extra=2)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    G, P, var_y = Xc.T @ Xc / len(X), Xc.T @ Yc / len(X), Yc.var(0)
    a, b = np.arange(12).reshape(4, 3), np.arange(12, 18).reshape(2, 3)
    single = partial_out(G, P, var_y, {0: a}, 1e-9)[0]
    joint = partial_out(G, P, var_y, {0: a, 1: b}, 1e-9)[0]
    np.testing.assert_allclose(single.G, joint.G, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(single.P, joint.P, rtol=1e-6, atol=1e-9)


def test_sampled_positions_depend_on_the_image_only():
    keys = np.array([5, 17, 99, 3], dtype=np.uint64)
    whole = sample_positions(keys, 7, 100, 10)
    assert whole.shape == (4, 10) and all(len(set(r)) == 10 for r in whole)
    np.testing.assert_array_equal(sample_positions(keys[2:], 7, 100, 10), whole[2:])  # another batch
    assert not np.array_equal(sample_positions(keys, 8, 100, 10), whole)               # another salt
    np.testing.assert_array_equal(sample_positions(keys, 7, 6, 10), np.tile(np.arange(6), (4, 1)))


def test_factorisations_survive_singular_covariances_with_huge_scale_gaps():
    """Few samples of features whose variances differ by 1e12: the covariance is singular
    far below the rounding error of its largest entries. Every factorisation still succeeds
    and the error curve stays a valid decreasing relative error."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 24)) * np.repeat(10.0 ** rng.uniform(-3, 3, size=8), 3)).astype(np.float32)
    G = (x.T @ x).astype(np.float64)  # accumulated in float32, as the statistics are
    P = G[:, :4].copy()
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(G + ridge(G, 1e-8) * np.eye(24))
    L = cholesky(G, ridge(G, 1e-8))
    assert np.all(np.isfinite(L))
    curve = explained_curve(ConsumerTerm(G, P, np.diag(G)[:4].copy(), 3), np.arange(8), eps_ridge=1e-8)
    assert np.all(np.diff(curve) <= 1e-9) and 0.0 <= curve.min() <= curve.max() <= 1.0
    terms = partial_out(G, P, np.diag(G)[:4].copy(), {0: np.arange(12).reshape(4, 3), 1: np.arange(12, 24).reshape(4, 3)})
    assert all(np.all(np.isfinite(t.G)) for t in terms.values())


def test_reduced_outputs_give_the_same_w_step():
    """The path depends on P only through P P^T: a term with more outputs than features,
    reduced to its principal output directions, gives the same A, b and ridge fit."""
    rng = np.random.default_rng(21)
    term, *_ = random_term(rng, C=4, s=3, M=30)
    small = reduce_outputs(term)
    assert small.P.shape[1] == term.G.shape[0] < term.P.shape[1]
    assert small.energy == term.energy
    d = rng.uniform(0.1, 2.0, size=term.G.shape[0])
    lam, lam_small = entropic.lambda_step(term, d, 0.1), entropic.lambda_step(small, d, 0.1)
    for a, b in zip(entropic.quadratic_in_w(term, lam), entropic.quadratic_in_w(small, lam_small)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.sum(lam * lam), np.sum(lam_small * lam_small), rtol=1e-9)


def test_channel_bases_are_each_channels_principal_directions():
    from onnx_eprune.calibrate.stats import channel_bases, reduce_rows
    rng = np.random.default_rng(3)
    C, s, r, R = 5, 9, 2, 400
    mix = rng.standard_normal((C, s, s)) * np.linspace(3, 0.1, s)[None, None, :]
    rows = np.einsum("ncs,cts->nct", rng.standard_normal((R, C, s)), mix).reshape(R, C * s).astype(np.float32)
    U = channel_bases(rows, s, r)
    assert U.shape == (C, s, r) and U.dtype == np.float32
    x = rows.reshape(R, C, s).astype(np.float64)
    x -= x.mean(axis=0)
    for c in range(C):
        _, vecs = np.linalg.eigh(x[:, c].T @ x[:, c])
        top = vecs[:, ::-1][:, :r]
        assert np.allclose(np.abs(top.T @ U[c]), np.eye(r), atol=1e-4)   # the same directions
    reduced = reduce_rows(rows, U)
    want = np.einsum("ncs,csk->nck", rows.reshape(R, C, s), U).reshape(R, C * r)
    assert reduced.shape == (R, C * r) and np.allclose(reduced, want, atol=1e-5)
