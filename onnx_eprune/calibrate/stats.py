"""Streaming second-order statistics of consumer inputs, and the patch sampling behind them.

For a consumer with weights ``theta`` (M x D) the selection and the re-fit need only

* ``mean_x`` (D'), ``cxx`` (D' x D'): mean and centred scatter of the *current* input
  features x' (the input in the network pruned so far; x' = x in one-shot mode),
* ``mean_y`` (M), ``cxy`` (D' x M), ``syy`` (M): mean, centred cross-scatter with x' and
  centred scatter per output of the *original* output ``y = theta @ x`` (bias excluded).

Batches are merged with Chan's parallel update, so the statistics of disjoint shards add
up exactly (up to rounding) and memory does not grow with the number of samples.
"""

from __future__ import annotations

import math

import threading
from dataclasses import dataclass, field

import numpy as np

from ..parallel import matmul_rows, parallel_map


@dataclass
class MomentStats:
    """Centred moments of paired feature rows (x' of D' features, y of M outputs)."""

    n: int
    mean_x: np.ndarray   # (D',) float64
    mean_y: np.ndarray   # (M,)  float64
    cxx: np.ndarray      # (D', D') float64, sum of centred outer products (divided by n: see cov)
    cxy: np.ndarray      # (D', M) float64
    syy: np.ndarray      # (M,) float64, sum of centred squares of each output
    normalised: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # a lock cannot be copied: a deep copy (merge_bundles of bundles in memory) gets its own
        state = dict(vars(self))
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    def finite(self) -> bool:
        """Whether every moment is finite (Inf or NaN: the network overflowed on the data)."""
        return all(bool(np.isfinite(a).all()) for a in (self.mean_x, self.mean_y, self.cxx, self.cxy, self.syy))

    @classmethod
    def empty(cls, d: int, m: int) -> "MomentStats":
        return cls(0, np.zeros(d), np.zeros(m), np.zeros((d, d)), np.zeros((d, m)), np.zeros(m))

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows ``x`` (R x D') and ``y`` (R x M)."""
        self.merge(MomentStats.from_rows(x, y))

    @classmethod
    def from_rows(cls, x: np.ndarray, y: np.ndarray) -> "MomentStats":
        n = x.shape[0]
        mx = x.mean(axis=0, dtype=np.float64)
        my = y.mean(axis=0, dtype=np.float64)
        xc = x - mx.astype(x.dtype)  # centred in float32: products stay accurate
        yc = y - my.astype(y.dtype)
        return cls(n, mx, my, (xc.T @ xc).astype(np.float64), (xc.T @ yc).astype(np.float64),
                   np.einsum("ij,ij->j", yc, yc, dtype=np.float64))

    def merge(self, other: "MomentStats") -> None:
        """In place: the statistics of the union of both row sets."""
        if self.normalised or other.normalised:
            raise RuntimeError("statistics whose covariance was used cannot be merged")
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean_x, self.mean_y = other.n, other.mean_x.copy(), other.mean_y.copy()
            self.cxx, self.cxy, self.syy = other.cxx.copy(), other.cxy.copy(), other.syy.copy()
            return
        n = self.n + other.n
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        f = self.n * other.n / n
        self.cxx += other.cxx + f * np.outer(dx, dx)
        self.cxy += other.cxy + f * np.outer(dx, dy)
        self.syy += other.syy + f * dy * dy
        self.mean_x += dx * (other.n / n)
        self.mean_y += dy * (other.n / n)
        self.n = n

    # Normalised views used by the solvers --------------------------------------------
    @property
    def cov(self) -> np.ndarray:
        """Covariance of x' (D' x D').

        The scatter is divided by n in place the first time (a D' x D' copy per use would
        cost as much as the use on wide layers); the statistics can no longer be merged or
        saved after that, which the pipeline does before it solves anything."""
        with self._lock:
            if not self.normalised:
                self.cxx /= max(self.n, 1)
                self.normalised = True
        return self.cxx

    def covariance(self, features: np.ndarray) -> np.ndarray:
        """The covariance of the features ``features`` of x' only (len x len)."""
        return self.cov[np.ix_(features, features)]

    @property
    def cross(self) -> np.ndarray:
        """Cross-covariance of x' and y (D' x M)."""
        return self.cxy / max(self.n, 1)

    @property
    def var_y(self) -> np.ndarray:
        """Variance of each original output (M,)."""
        return self.syy / max(self.n, 1)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        if self.normalised:
            raise RuntimeError("statistics whose covariance was used cannot be saved")
        return {f"{prefix}n": np.array(self.n), f"{prefix}mean_x": self.mean_x, f"{prefix}mean_y": self.mean_y,
                f"{prefix}cxx": self.cxx, f"{prefix}cxy": self.cxy, f"{prefix}syy": self.syy}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "MomentStats":
        return cls(int(arrays[f"{prefix}n"]), np.array(arrays[f"{prefix}mean_x"], np.float64),
                   np.array(arrays[f"{prefix}mean_y"], np.float64), np.array(arrays[f"{prefix}cxx"], np.float64),
                   np.array(arrays[f"{prefix}cxy"], np.float64), np.array(arrays[f"{prefix}syy"], np.float64))


class PooledStats:
    """The moments of the rows of several :class:`MomentStats` taken together (the
    applications of one shared weight, re-fitted once), from each one's normalised views,
    with the interface the re-fit reads: ``n``, ``mean_x``, ``mean_y``, ``covariance``,
    ``cross`` and ``var_y``, equal to those of the merged rows."""

    def __init__(self, members: list[MomentStats]):
        self.members = members
        self.n = sum(m.n for m in members)
        self.weights = [m.n / max(self.n, 1) for m in members]
        self.mean_x = sum(w * m.mean_x for w, m in zip(self.weights, members))
        self.mean_y = sum(w * m.mean_y for w, m in zip(self.weights, members))

    def covariance(self, features: np.ndarray) -> np.ndarray:
        return sum(w * (m.covariance(features) + np.outer(m.mean_x[features] - self.mean_x[features],
                                                          m.mean_x[features] - self.mean_x[features]))
                   for w, m in zip(self.weights, self.members))

    @property
    def cross(self) -> np.ndarray:
        return sum(w * (m.cross + np.outer(m.mean_x - self.mean_x, m.mean_y - self.mean_y))
                   for w, m in zip(self.weights, self.members))

    @property
    def var_y(self) -> np.ndarray:
        return sum(w * (m.var_y + (m.mean_y - self.mean_y) ** 2) for w, m in zip(self.weights, self.members))


class MomentAccumulator:
    """Streams rows into :class:`MomentStats` without allocating a D' x D' array per batch.

    Rows are centred on the first batch's means (a fixed shift keeps float32 products
    accurate) and gathered in a preallocated float32 row buffer; each full buffer costs
    float32 products and an in-place float64 addition, and :meth:`result` turns the shifted
    sums into centred moments. Buffering matters on wide consumers with few output positions
    (VGG-16's last stage: 4 positions x 64 images = 256 rows for 4608 features), where a
    product per batch would cost as much in the D' x D' addition as in the product. The
    scatter of x' is computed one block of ``BLOCK`` x ``BLOCK`` features at a time, only
    on and above the diagonal (it is symmetric).

    With ``theta`` (M x D'), y is the linear map ``x' @ theta.T`` (one-shot statistics): its
    moments follow from those of x' (:func:`_mapped`) and :meth:`add` takes no y.

    The products run on up to ``threads`` Python threads, each a single-threaded BLAS call
    of a fixed shape: a multithreaded BLAS product sums in an order that depends on the
    thread count, a fixed set of single-threaded products gives the same bytes for any
    thread count (on one kind of CPU: AVX2 and AVX-512 kernels round differently). The
    caller keeps BLAS at one thread.
    """

    # Rows per buffer: at most this many bytes, and at most MAX_ROWS rows (past a few
    # thousand rows the products run at full speed).
    BUFFER_BYTES = 64 << 20
    MAX_ROWS = 4096
    BLOCK = 256     # features per side of a block product (large enough to run at full speed)

    def __init__(self, threads: int = 1, theta: np.ndarray | None = None) -> None:
        self.n = 0
        self._fill = 0
        self.threads = threads
        self.theta = theta

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Add rows ``x`` (R x D', float32) and ``y`` (R x M, float32; None with ``theta``)."""
        if x.shape[0] == 0:
            return
        if self.n == 0 and self._fill == 0:
            self._start(x, y)
        while x.shape[0]:
            take = min(x.shape[0], len(self._rx) - self._fill)
            np.subtract(x[:take], self.kx, out=self._rx[self._fill:self._fill + take])
            if y is not None:
                np.subtract(y[:take], self.ky, out=self._ry[self._fill:self._fill + take])
                y = y[take:]
            self._fill += take
            x = x[take:]
            if self._fill == len(self._rx):
                self._flush()

    def _start(self, x: np.ndarray, y: np.ndarray | None) -> None:
        d, m = x.shape[1], (0 if y is None else y.shape[1])
        rows = int(min(self.MAX_ROWS, max(256, self.BUFFER_BYTES // (4 * (d + m)))))
        self.kx = x.mean(axis=0).astype(np.float32)
        self.ky = np.zeros(m, np.float32) if y is None else y.mean(axis=0).astype(np.float32)
        self._rx, self._ry = np.empty((rows, d), np.float32), np.empty((rows, m), np.float32)
        self.sxx, self.sxy = np.zeros((d, d)), np.zeros((d, m))  # sxx: blocks on and above the diagonal
        self.sx, self.sy, self.syy = np.zeros(d), np.zeros(m), np.zeros(m)
        edges = list(range(0, d, self.BLOCK)) + [d]
        self._spans = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
        # (rows, columns) of sxx, or (rows, None) for the rows of sxy
        self._tasks = [(r, c) for i, r in enumerate(self._spans) for c in self._spans[i:]] + \
                      ([(r, None) for r in self._spans] if m else [])

    def _flush(self) -> None:
        if self._fill == 0:
            return
        xc, yc = self._rx[:self._fill], self._ry[:self._fill]

        def product(task: tuple[slice, slice | None]) -> None:
            rows, cols = task
            if cols is None:
                self.sxy[rows] += xc[:, rows].T @ yc
            else:
                self.sxx[rows, cols] += xc[:, rows].T @ xc[:, cols]

        parallel_map(product, self._tasks, self.threads)
        self.sx += xc.sum(axis=0, dtype=np.float64)
        self.sy += yc.sum(axis=0, dtype=np.float64)
        self.syy += np.einsum("ij,ij->j", yc, yc, dtype=np.float64)
        self.n += self._fill
        self._fill = 0

    def result(self) -> MomentStats:
        """The centred moments; the accumulator's buffers are consumed (reused in place, so
        that wide consumers never hold two D' x D' float64 arrays)."""
        self._flush()
        for i, rows in enumerate(self._spans):
            # the lower blocks mirror the upper ones; a diagonal block is symmetric only to rounding
            self.sxx[rows, rows] = 0.5 * (self.sxx[rows, rows] + self.sxx[rows, rows].T)
            for cols in self._spans[i + 1:]:
                self.sxx[cols, rows] = self.sxx[rows, cols].T
        self._rx = self._ry = None
        return _centred(self.n, self.kx, self.sx, self.sxx, self.ky, self.sy, self.sxy, self.syy, self.theta,
                        self.threads)


def _centred(n: int, kx: np.ndarray, sx: np.ndarray, sxx: np.ndarray, ky: np.ndarray, sy: np.ndarray,
             sxy: np.ndarray, syy: np.ndarray, theta: np.ndarray | None, threads: int) -> MomentStats:
    """The centred moments from sums of rows shifted by ``kx`` / ``ky`` (``sxx`` full and
    symmetric, turned into the centred scatter in place); with ``theta``, those of
    ``y = theta x`` follow from the moments of x (y's sums are not used)."""
    dx = sx / n  # the mean relative to the shift
    for start in range(0, len(dx), 1024):  # in row blocks: no second D x D array
        sxx[start:start + 1024] -= n * np.outer(dx[start:start + 1024], dx)
    mean_x = kx + dx
    if theta is not None:
        t = np.asarray(theta, np.float64)
        cxy = matmul_rows(sxx, t.T, threads)
        return MomentStats(n, mean_x, t @ mean_x, sxx, cxy, np.einsum("dm,md->m", cxy, t))
    dy = sy / n
    sxy -= n * np.outer(dx, dy)
    return MomentStats(n, mean_x, ky + dy, sxx, sxy, syy - n * dy * dy)


class PixelPairAccumulator:
    """:class:`MomentAccumulator` for a Conv's im2col rows at every output position, fed the
    input images (N, C, H, W) instead of the rows: the scatter comes from pixel pairs.

    Row ``(image, p)`` holds, for each tap ``a``, the input pixel ``pix[p, a]`` (a padding
    tap, or one on a zero a ConvTranspose inserts, reads a zero pixel). The block of taps
    ``(a, b)`` of the scatter is the sum over positions ``p`` of ``S[pix[p, a], pix[p, b]]``
    with ``S[q, r] = X_q^T X_r`` (C x C) over the images, so each pair of pixels is
    multiplied once however many (p, a, b) read it: with a 3x3 kernel on a 4x4 map, 123
    products instead of the 16 x 45 of the row product (5x fewer multiply-adds), the block
    sums being cheap additions. The cross-moments with y take one product per tap. Pixels
    are shifted by one value per channel (the zero pixel holds ``-shift``), as rows would
    be; buffering, threads and ``theta`` as in :class:`MomentAccumulator`.
    """

    # images (and their y rows) per buffer: 1024 images of a 4x4 map of 512 channels fit, so
    # a run's block sums are added up once (they cost as much as the products of a buffer)
    BUFFER_BYTES = 128 << 20
    MAX_PRODUCT_BYTES = 256 << 20    # float32 pair products held at once
    MAX_PAIRS = 4096                 # past this, the per-pair Python work outweighs the saving

    def __init__(self, pix: np.ndarray, pairs: np.ndarray, threads: int = 1, theta: np.ndarray | None = None):
        self.pix, self.pairs, self.threads, self.theta = pix, pairs, threads, theta
        self.positions, self.taps = pix.shape
        self.n = 0
        self._fill = 0
        index = {(int(q), int(r)): i for i, (q, r) in enumerate(pairs)}
        # the (pair, transposed) terms of each block (a, b), a <= b, in a fixed order
        self._terms = {(a, b): [(index[(min(q, r), max(q, r))], bool(q > r)) for q, r in zip(pix[:, a], pix[:, b])]
                       for a in range(self.taps) for b in range(a, self.taps)}

    @classmethod
    def of(cls, geo: "ConvGeometry", chw: tuple[int, ...], threads: int = 1, theta: np.ndarray | None = None
           ) -> "PixelPairAccumulator | None":
        """The accumulator for input images of shape ``chw`` (C, *spatial), or None where pairs
        save too little (1x1 kernels, strides, large maps) or their products would take too much memory."""
        c, spatial = chw[0], tuple(chw[1:])
        n_pos = math.prod(geo.out_hw)
        pix = tap_pixels(geo, spatial, np.arange(n_pos)[None, :])[0]         # (positions, taps)
        taps = pix.shape[1]
        a, b = np.triu_indices(taps)
        lo, hi = np.minimum(pix[:, a], pix[:, b]), np.maximum(pix[:, a], pix[:, b])
        pairs = np.unique(np.stack([lo.reshape(-1), hi.reshape(-1)], axis=1), axis=0)
        if (4 * len(pairs) > n_pos * taps * taps or len(pairs) > cls.MAX_PAIRS
                or 4 * len(pairs) * c * c > cls.MAX_PRODUCT_BYTES):
            return None
        return cls(pix, pairs, threads, theta)

    def add(self, image: np.ndarray, y: np.ndarray | None = None) -> None:
        """Add images ``image`` (N, C, *spatial) and the y rows of their positions ``y``
        (N * positions x M, image by image; None with ``theta``)."""
        n = image.shape[0]
        if n == 0:
            return
        if self.n == 0 and self._fill == 0:
            self._start(image, y)
        image = image.reshape(n, image.shape[1], -1)
        y = None if y is None else y.reshape(n, self.positions, -1)
        done = 0
        while done < n:
            take = min(n - done, self._x.shape[1] - self._fill)
            at = slice(self._fill, self._fill + take)
            np.subtract(image[done:done + take].transpose(2, 0, 1), self.shift, out=self._x[:-1, at])
            self._x[-1, at] = -self.shift
            if y is not None:
                np.subtract(y[done:done + take].transpose(1, 0, 2), self.ky, out=self._y[:, at])
            self._fill += take
            done += take
            if self._fill == self._x.shape[1]:
                self._flush()

    def _start(self, image: np.ndarray, y: np.ndarray | None) -> None:
        c, pixels = image.shape[1], math.prod(image.shape[2:])
        m = 0 if y is None else y.shape[1]
        d = c * self.taps
        images = max(1, self.BUFFER_BYTES // (4 * (c * (pixels + 1) + self.positions * m)))
        self.channels = c
        self.shift = image.mean(axis=(0, *range(2, image.ndim)), dtype=np.float64).astype(np.float32)
        self.ky = np.zeros(m, np.float32) if y is None else y.mean(axis=0).astype(np.float32)
        self._x = np.empty((pixels + 1, images, c), np.float32)     # pixel-major, + the zero pixel
        self._y = np.empty((self.positions, images, m), np.float32)  # position-major
        self.sxx, self.sxy = np.zeros((d, d)), np.zeros((d, m))
        self.sx, self.sy, self.syy = np.zeros(d), np.zeros(m), np.zeros(m)

    def _flush(self) -> None:
        if self._fill == 0:
            return
        x, y = self._x[:, :self._fill], self._y[:, :self._fill]
        c, taps = self.channels, self.taps
        products = parallel_map(lambda qr: x[qr[0]].T @ x[qr[1]], self.pairs, self.threads)
        xx = self.sxx.reshape(c, taps, c, taps)
        xy = self.sxy.reshape(c, taps, -1)

        def block(ab: tuple[int, int]) -> None:
            total = np.zeros((c, c), np.float32)
            for i, transposed in self._terms[ab]:
                total += products[i].T if transposed else products[i]
            xx[:, ab[0], :, ab[1]] += total

        def cross(a: int) -> None:  # every position's pixel under tap a against its y
            xy[:, a] += x[self.pix[:, a]].reshape(-1, c).T @ y.reshape(-1, y.shape[2])

        parallel_map(block, list(self._terms), self.threads)
        if y.shape[2]:
            parallel_map(cross, range(taps), self.threads)
        pixel_sums = x.sum(axis=1, dtype=np.float64)                         # (pixels + 1, C)
        self.sx += pixel_sums[self.pix].sum(axis=0).T.reshape(-1)             # (C, taps) flattened
        self.sy += y.sum(axis=(0, 1), dtype=np.float64)
        self.syy += np.einsum("pij,pij->j", y, y, dtype=np.float64)
        self.n += self._fill * self.positions
        self._fill = 0

    def result(self) -> MomentStats:
        """The centred moments (as :meth:`MomentAccumulator.result`)."""
        self._flush()
        xx = self.sxx.reshape(self.channels, self.taps, self.channels, self.taps)
        for a in range(self.taps):  # the blocks a > b mirror a < b; a = b is symmetric only to rounding
            xx[:, a, :, a] = 0.5 * (xx[:, a, :, a] + xx[:, a, :, a].T)
            for b in range(a + 1, self.taps):
                xx[:, b, :, a] = xx[:, a, :, b].T
        self._x = self._y = None
        return _centred(self.n, np.repeat(self.shift, self.taps), self.sx, self.sxx, self.ky, self.sy, self.sxy,
                        self.syy, self.theta, self.threads)


def channel_bases(rows: np.ndarray, s: int, r: int) -> np.ndarray:
    """The ``r`` leading principal directions of each channel's ``s`` features in ``rows``
    (R x C*s, channel-major): (C, s, r) float32, the largest variance first."""
    x = rows.reshape(rows.shape[0], -1, s).astype(np.float64)
    x = x - x.mean(axis=0)
    cov = np.einsum("ncs,nct->cst", x, x)                       # (C, s, s) per-channel scatter
    _, vecs = np.linalg.eigh(cov)
    return np.ascontiguousarray(vecs[:, :, ::-1][:, :, :r], dtype=np.float32)


def reduce_rows(rows: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """``rows`` (R x C*s, channel-major) in the channels' ``bases`` (C, s, r): (R, C*r)."""
    c, s, r = bases.shape
    per_channel = rows.reshape(rows.shape[0], c, s).transpose(1, 0, 2)     # (C, R, s)
    return np.ascontiguousarray(np.matmul(per_channel, bases).transpose(1, 0, 2)).reshape(rows.shape[0], c * r)


@dataclass(frozen=True)
class ConvGeometry:
    """Where a Conv reads its input. A ConvTranspose is the Conv (stride 1, flipped kernel)
    of its input with ``upsample - 1`` zeros inserted between neighbouring pixels; its pads
    (``dilation * (k - 1) - pad``, plus ``output_padding`` at the end) may be negative,
    which crops."""

    # one entry per spatial axis (L; H, W; or D, H, W), pads two (every start, then every end: ONNX order)
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    out_hw: tuple[int, ...]
    upsample: tuple[int, ...] = (1, 1)

    @classmethod
    def from_dict(cls, d: dict, out_hw: tuple[int, ...]) -> "ConvGeometry":
        return cls(tuple(d["kernel"]), tuple(d["strides"]), tuple(d["pads"]), tuple(d["dilations"]), tuple(out_hw),
                   tuple(d.get("upsample", (1,) * len(d["kernel"]))))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash, vectorised (wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_keys(keys: np.ndarray, rows: int) -> np.ndarray:
    """Content keys of the ``rows`` rows of a tensor computed from a batch of samples with
    content keys ``keys`` (N,): the first ``rows`` keys where it has at most one row per
    sample; where it has k rows per sample (a space-to-batch's blocks, block-major: row
    b * N + i is block b of sample i), a key per row, mixed from its sample's and its block.
    The same sample gets the same row keys in any batch."""
    n = len(keys)
    if rows <= n:
        return keys[:rows]
    if rows % n:
        raise ValueError(f"a tensor of {rows} rows computed from {n} samples")
    blocks = np.repeat(np.arange(1, rows // n + 1, dtype=np.uint64), n)
    return _mix(np.tile(keys.astype(np.uint64), rows // n) ^ _mix(blocks))


def sample_positions(keys: np.ndarray, salt: int, n_positions: int, per_sample: int) -> np.ndarray:
    """Output positions to sample for each image, ``(N, k)`` flat indices (all when k covers all).

    The choice is a hash of the image's content key, ``salt`` and the position, so the same
    image gets the same positions in any batch, run or shard.
    """
    if per_sample >= n_positions:
        return np.broadcast_to(np.arange(n_positions), (len(keys), n_positions))
    with np.errstate(over="ignore"):
        seed = _mix(keys.astype(np.uint64) ^ _mix(np.uint64(salt & 0xFFFFFFFFFFFFFFFF)))
        scores = _mix(seed[:, None] + np.arange(n_positions, dtype=np.uint64)[None, :])
    return np.sort(np.argpartition(scores, per_sample - 1, axis=1)[:, :per_sample], axis=1)


def tap_pixels(geo: ConvGeometry, hw: tuple[int, ...], positions: np.ndarray) -> np.ndarray:
    """The input pixel (flat index into the spatial size ``hw``: L; H, W; or D, H, W) that
    each tap reads at output positions ``positions`` (N, k): (N, k, taps) ints, taps in the
    kernel's C order; ``prod(hw)`` where the tap reads a zero (a padding pixel, or one of
    the zeros a ConvTranspose inserts)."""
    nd = len(hw)
    out = np.unravel_index(positions, geo.out_hw)                              # nd x (N, k)
    grids = np.meshgrid(*(np.arange(k) * d for k, d in zip(geo.kernel, geo.dilations)), indexing="ij")
    flat, valid = 0, True
    for i in range(nd):
        at = out[i][..., None] * geo.strides[i] + grids[i].reshape(-1) - geo.pads[i]   # (N, k, taps), spread axis i
        up = geo.upsample[i]
        valid = valid & (at >= 0) & (at % up == 0) & (at // up < hw[i])
        flat = flat * hw[i] + at // up
    return np.where(valid, flat, math.prod(hw))


def conv_patches(x: np.ndarray, geo: ConvGeometry, positions: np.ndarray) -> np.ndarray:
    """im2col rows of ``x`` (N, C, *spatial) at output positions ``positions`` (N, k).

    Returns (N*k, C*taps) float32, columns ordered like a Conv weight (C, *kernel) flattened.
    Each tap is read straight from ``x``: a tap on a padding pixel, or on one of the zeros a
    ConvTranspose inserts, reads an extra zero pixel, so the padded (or spread) input is
    never built (it would be a copy of the whole tensor for the few positions sampled).
    """
    n, c = x.shape[:2]
    pixels, taps = math.prod(x.shape[2:]), math.prod(geo.kernel)
    pixel = tap_pixels(geo, x.shape[2:], positions)                          # (N, k, taps)
    k = positions.shape[1]
    if k * taps < pixels:
        # fewer taps read than pixels (a large map, few positions): gather the taps straight
        # from x rather than transposing the whole map first
        zero = pixel == pixels
        patches = x.reshape(n, c, pixels)[np.arange(n)[:, None, None], :, np.where(zero, 0, pixel)]
        patches[zero] = 0                                                   # (N, k, taps, C)
    else:
        xt = np.empty((n, pixels + 1, c), x.dtype)                          # N, pixels, C: whole channel vectors
        xt[:, :pixels] = x.reshape(n, c, pixels).transpose(0, 2, 1)
        xt[:, pixels] = 0
        patches = xt[np.arange(n)[:, None, None], pixel]                    # (N, k, taps, C)
    return np.ascontiguousarray(patches.transpose(0, 1, 3, 2)).reshape(n * k, c * taps)


def positions_per_sample(n_positions: int, features: int, setting: int | None) -> int:
    """How many output positions of each image feed a Conv's statistics.

    ``setting`` fixes it; by default at least 16, and one per 256 features so that 1024
    images give at least 4 rows per feature (neighbouring positions of one image are
    strongly correlated: more of them add little but cost a larger Gram product). It does
    not depend on the number of images, so shards of a calibration set sample like one run.
    """
    if setting is not None:
        return max(1, min(n_positions, setting))
    return min(n_positions, max(16, -(-features // 256)))
