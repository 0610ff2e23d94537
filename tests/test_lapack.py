"""The GIL-free LAPACK calls give scipy's results, byte for byte."""

import numpy as np
import pytest
import scipy.linalg

from onnx_eprune.select import lapack


def _spd(rng, n):
    a = rng.standard_normal((n, n))
    a = a @ a.T + n * np.eye(n)
    a[0, -1] += 1e-9    # not exactly symmetric: the triangle read must be scipy's
    return a


@pytest.mark.parametrize("n, k", [(1, 1), (7, 1), (64, 3), (300, 40)])
def test_same_bytes_as_scipy(n, k):
    rng = np.random.default_rng(n)
    a = _spd(rng, n)
    strided = np.zeros((n, 2 * n))
    strided[:, ::2] = a
    for layout in (a, np.asfortranarray(a), strided[:, ::2]):
        for lower in (True, False):
            want = scipy.linalg.cholesky(layout, lower=lower, check_finite=False)
            assert np.array_equal(lapack.cholesky(layout, lower), want)
            inplace = np.array(layout, order="F")
            assert lapack.cholesky(inplace, lower, overwrite=True) is inplace and np.array_equal(inplace, want)
            c = scipy.linalg.cho_factor(layout, lower=lower, check_finite=False)[0]
            assert np.array_equal(lapack.cholesky(layout, lower, clean=False), c)
            for b in (rng.standard_normal(n), rng.standard_normal((n, k))):
                assert np.array_equal(lapack.cho_solve(c, lower, b),
                                      scipy.linalg.cho_solve((c, lower), b, check_finite=False))
    factor = scipy.linalg.cholesky(a, lower=True)
    for L in (factor, np.ascontiguousarray(factor)):
        for tri, lower in ((L, True), (L.T, False), (L[1:, 1:], True)):
            for trans in (False, True):
                for b in (rng.standard_normal(len(tri)), rng.standard_normal((len(tri), k)),
                          np.asfortranarray(rng.standard_normal((len(tri), k)))):
                    got = lapack.solve_triangular(tri, b, lower, trans)
                    want = scipy.linalg.solve_triangular(tri, b, lower=lower, trans=int(trans), check_finite=False)
                    assert got.shape == want.shape and np.array_equal(got, want)


def test_bundled_library_is_found():
    # scipy's wheels bundle OpenBLAS: without it the solvers would take turns on the GIL
    assert lapack._LIB is not None


def test_not_positive_definite_raises_linalg_error():
    with pytest.raises(np.linalg.LinAlgError):
        lapack.cholesky(-np.eye(3))


def test_fallback_without_the_library(monkeypatch):
    monkeypatch.setattr(lapack, "_LIB", None)
    rng = np.random.default_rng(0)
    a = _spd(rng, 20)
    L = lapack.cholesky(a)
    assert np.allclose(L @ L.T, a, atol=1e-8)
    b = rng.standard_normal((20, 3))
    assert np.allclose(L @ lapack.solve_triangular(L, b), b)
    assert np.allclose(a @ lapack.cho_solve(lapack.cholesky(a, False, clean=False), False, b), b)
