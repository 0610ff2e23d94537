"""Cholesky factors and triangular solves that let other Python threads run.

scipy's LAPACK wrappers hold the GIL for the whole call (``potrf`` for small matrices,
``trtrs`` and ``potrs`` always), so the solvers of two groups on parallel threads
(``parallel.parallel_map``) take turns for much of their time. These functions call the
same LAPACK routines of the same library, the OpenBLAS that scipy's wheels bundle, through
``ctypes``, which releases the GIL during foreign calls, with exactly the arguments scipy's
wrappers pass (the same copies in the same memory order): the results are the same bytes
as scipy's. Where that library cannot be found (scipy built against another LAPACK),
scipy's functions are used.
"""

from __future__ import annotations

import ctypes

import numpy as np
import scipy.linalg
import threadpoolctl

_INT = ctypes.c_int     # scipy's bundled OpenBLAS has 32-bit LAPACK integers


def _scipy_lapack() -> ctypes.CDLL | None:
    """scipy's bundled OpenBLAS (its symbols carry a ``scipy_`` prefix), or None."""
    for info in threadpoolctl.threadpool_info():
        path = str(info.get("filepath", ""))
        if info.get("internal_api") != "openblas" or "scipy_openblas64" in path or "scipy" not in path:
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_dpotrf_, lib.scipy_dpotrs_, lib.scipy_dtrtrs_  # noqa: B018 (all three must exist)
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIB = _scipy_lapack()


def _ints(*values: int):
    return [ctypes.byref(_INT(v)) for v in values]


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def _usable(*arrays: np.ndarray) -> bool:
    return _LIB is not None and all(a.dtype == np.float64 and a.size for a in arrays)


def _check(info: ctypes.c_int, routine: str) -> None:
    if info.value > 0:
        raise np.linalg.LinAlgError(f"{routine}: the matrix is singular or not positive definite "
                                    f"(at {info.value})")
    if info.value < 0:
        raise ValueError(f"{routine}: illegal value in argument {-info.value}")


def cholesky(A: np.ndarray, lower: bool = True, clean: bool = True, overwrite: bool = False) -> np.ndarray:
    """The Cholesky factor of a symmetric positive definite float64 ``A`` (n x n), as
    ``scipy.linalg.cholesky(A, lower=lower, check_finite=False)`` (``clean``: the other
    triangle zeroed) or ``cho_factor(...)[0]`` (not ``clean``). An F-ordered copy of ``A``
    is factored (``A`` itself with ``overwrite`` when it is F-ordered and writeable);
    raises ``np.linalg.LinAlgError`` where ``A`` is not positive definite."""
    A = np.asarray(A)
    if not _usable(A) or A.ndim != 2:
        return scipy.linalg.cholesky(A, lower=lower, check_finite=False) if clean else \
            scipy.linalg.cho_factor(A, lower=lower, check_finite=False)[0]
    c = A if overwrite and A.flags.f_contiguous and A.flags.writeable else np.array(A, order="F")
    info = _INT(0)
    _LIB.scipy_dpotrf_(b"L" if lower else b"U", *_ints(len(c)), _ptr(c), *_ints(len(c)), ctypes.byref(info),
                       ctypes.c_size_t(1))
    _check(info, "potrf")
    if clean:
        # column by column: each is contiguous in F order (an index array of the triangle
        # cost twice the factorisation itself on 512 x 512)
        for j in range(1, len(c)):
            if lower:
                c[:j, j] = 0.0
            else:
                c[j:, j - 1] = 0.0
    return c


def cho_solve(c: np.ndarray, lower: bool, B: np.ndarray) -> np.ndarray:
    """``A^-1 B`` from the factor ``c`` of :func:`cholesky` (``clean=False``), as
    ``scipy.linalg.cho_solve((c, lower), B, check_finite=False)``."""
    if not _usable(c, B) or not c.flags.f_contiguous:
        return scipy.linalg.cho_solve((c, lower), B, check_finite=False)
    X, vector = _columns(B)
    info = _INT(0)
    _LIB.scipy_dpotrs_(b"L" if lower else b"U", *_ints(len(c), X.shape[1]), _ptr(c), *_ints(len(c)), _ptr(X),
                       *_ints(len(c)), ctypes.byref(info), ctypes.c_size_t(1))
    _check(info, "potrs")
    return X[:, 0] if vector else X


def solve_triangular(L: np.ndarray, B: np.ndarray, lower: bool = True, trans: bool = False) -> np.ndarray:
    """``L^-1 B`` (``L^-T B`` with ``trans``) for a triangular float64 ``L`` (n x n) and
    ``B`` (n,) or (n, k), as ``scipy.linalg.solve_triangular(L, B, lower=lower,
    trans=trans, check_finite=False)``."""
    if not _usable(L, B) or L.ndim != 2:
        return scipy.linalg.solve_triangular(L, B, lower=lower, trans=int(trans), check_finite=False)
    if not (L.flags.c_contiguous or L.flags.f_contiguous):
        L = np.ascontiguousarray(L)   # scipy's wrapper copies a strided L the same way
    X, vector = _columns(B)
    # scipy's branches: an F-ordered L goes as it is; a C-ordered L as its transpose (the
    # same buffer read column-major), the system transposed with it
    if L.flags.f_contiguous:
        uplo, op = (b"L" if lower else b"U"), (b"T" if trans else b"N")
    else:
        uplo, op = (b"U" if lower else b"L"), (b"N" if trans else b"T")
    info = _INT(0)
    _LIB.scipy_dtrtrs_(uplo, op, b"N", *_ints(len(L), X.shape[1]), _ptr(L), *_ints(len(L)), _ptr(X),
                       *_ints(len(L)), ctypes.byref(info), ctypes.c_size_t(1), ctypes.c_size_t(1),
                       ctypes.c_size_t(1))
    _check(info, "trtrs")
    return X[:, 0] if vector else X


def _columns(B: np.ndarray) -> tuple[np.ndarray, bool]:
    """An F-ordered float64 copy of ``B`` as columns (the copy scipy's wrappers make) and
    whether ``B`` was a vector."""
    X = np.array(B, dtype=np.float64, order="F")
    if X.ndim == 1:
        return X.reshape(-1, 1, order="F"), True
    return X, False
