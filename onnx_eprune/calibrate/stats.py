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

from dataclasses import dataclass

import numpy as np


@dataclass
class MomentStats:
    """Centred moments of paired feature rows (x' of D' features, y of M outputs)."""

    n: int
    mean_x: np.ndarray   # (D',) float64
    mean_y: np.ndarray   # (M,)  float64
    cxx: np.ndarray      # (D', D') float64, sum of centred outer products
    cxy: np.ndarray      # (D', M) float64
    syy: np.ndarray      # (M,) float64, sum of centred squares of each output

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
        """Covariance of x' (D' x D')."""
        return self.cxx / max(self.n, 1)

    @property
    def cross(self) -> np.ndarray:
        """Cross-covariance of x' and y (D' x M)."""
        return self.cxy / max(self.n, 1)

    @property
    def var_y(self) -> np.ndarray:
        """Variance of each original output (M,)."""
        return self.syy / max(self.n, 1)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}n": np.array(self.n), f"{prefix}mean_x": self.mean_x, f"{prefix}mean_y": self.mean_y,
                f"{prefix}cxx": self.cxx, f"{prefix}cxy": self.cxy, f"{prefix}syy": self.syy}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "MomentStats":
        return cls(int(arrays[f"{prefix}n"]), np.array(arrays[f"{prefix}mean_x"], np.float64),
                   np.array(arrays[f"{prefix}mean_y"], np.float64), np.array(arrays[f"{prefix}cxx"], np.float64),
                   np.array(arrays[f"{prefix}cxy"], np.float64), np.array(arrays[f"{prefix}syy"], np.float64))


class MomentAccumulator:
    """Streams rows into :class:`MomentStats` without allocating a D' x D' array per batch.

    Rows are centred on the first batch's means (a fixed shift keeps float32 products
    accurate) and gathered in a preallocated float32 row buffer; each full buffer costs one
    GEMM into preallocated float32 products and an in-place float64 addition, and
    :meth:`result` turns the shifted sums into centred moments. Buffering matters on wide
    consumers with few output positions (VGG-16's last stage: 4 positions x 64 images = 256
    rows for 4608 features), where a GEMM per batch would cost as much in the D' x D'
    addition as in the product.
    """

    # Rows per GEMM: a full buffer of at most this many bytes, and at most MAX_ROWS rows
    # (past a few thousand rows the GEMM runs at full speed).
    BUFFER_BYTES = 64 << 20
    MAX_ROWS = 4096

    def __init__(self) -> None:
        self.n = 0
        self._fill = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows ``x`` (R x D', float32) and ``y`` (R x M, float32)."""
        if x.shape[0] == 0:
            return
        if self.n == 0 and self._fill == 0:
            self._start(x, y)
        while x.shape[0]:
            take = min(x.shape[0], len(self._rx) - self._fill)
            np.subtract(x[:take], self.kx, out=self._rx[self._fill:self._fill + take])
            np.subtract(y[:take], self.ky, out=self._ry[self._fill:self._fill + take])
            self._fill += take
            x, y = x[take:], y[take:]
            if self._fill == len(self._rx):
                self._flush()

    def _start(self, x: np.ndarray, y: np.ndarray) -> None:
        self.kx, self.ky = x.mean(axis=0).astype(np.float32), y.mean(axis=0).astype(np.float32)
        d, m = x.shape[1], y.shape[1]
        rows = int(min(self.MAX_ROWS, max(256, self.BUFFER_BYTES // (4 * (d + m)))))
        self._rx, self._ry = np.empty((rows, d), np.float32), np.empty((rows, m), np.float32)
        self.sxx, self.sxy = np.zeros((d, d)), np.zeros((d, m))
        self.sx, self.sy, self.syy = np.zeros(d), np.zeros(m), np.zeros(m)
        self._bxx, self._bxy = np.empty((d, d), np.float32), np.empty((d, m), np.float32)

    def _flush(self) -> None:
        if self._fill == 0:
            return
        xc, yc = self._rx[:self._fill], self._ry[:self._fill]
        self.sxx += np.matmul(xc.T, xc, out=self._bxx)
        self.sxy += np.matmul(xc.T, yc, out=self._bxy)
        self.sx += xc.sum(axis=0, dtype=np.float64)
        self.sy += yc.sum(axis=0, dtype=np.float64)
        self.syy += np.einsum("ij,ij->j", yc, yc, dtype=np.float64)
        self.n += self._fill
        self._fill = 0

    def result(self) -> MomentStats:
        """The centred moments; the accumulator's buffers are consumed (reused in place, so
        that wide consumers never hold two D' x D' float64 arrays)."""
        self._flush()
        n = self.n
        dx, dy = self.sx / n, self.sy / n  # means relative to the shift
        cxx, block = self.sxx, 1024
        for i in range(0, len(dx), block):
            cxx[i:i + block] -= n * np.outer(dx[i:i + block], dx)
        for i in range(0, len(dx), block):  # symmetrise: GEMM products are symmetric only to rounding
            for j in range(0, i + 1, block):
                avg = 0.5 * (cxx[i:i + block, j:j + block] + cxx[j:j + block, i:i + block].T)
                cxx[i:i + block, j:j + block] = avg
                cxx[j:j + block, i:i + block] = avg.T
        self._bxx = self._bxy = self._rx = self._ry = None
        self.sxy -= n * np.outer(dx, dy)
        return MomentStats(n, self.kx + dx, self.ky + dy, cxx, self.sxy, self.syy - n * dy * dy)


@dataclass(frozen=True)
class ConvGeometry:
    """Where a Conv reads its input. A ConvTranspose is the Conv (stride 1, flipped kernel)
    of its input with ``upsample - 1`` zeros inserted between neighbouring pixels; its pads
    (``dilation * (k - 1) - pad``, plus ``output_padding`` at the end) may be negative,
    which crops."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]   # top, left, bottom, right (ONNX order)
    dilations: tuple[int, int]
    out_hw: tuple[int, int]
    upsample: tuple[int, int] = (1, 1)

    @classmethod
    def from_dict(cls, d: dict, out_hw: tuple[int, int]) -> "ConvGeometry":
        return cls(tuple(d["kernel"]), tuple(d["strides"]), tuple(d["pads"]), tuple(d["dilations"]), tuple(out_hw),
                   tuple(d.get("upsample", (1, 1))))


def _spread(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """``x`` (N, C, H, W) with the zeros of ``geo.upsample`` inserted and ``geo.pads`` applied
    (negative pads crop)."""
    sh, sw = geo.upsample
    if (sh, sw) != (1, 1):
        n, c, h, w = x.shape
        up = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
        up[:, :, ::sh, ::sw] = x
        x = up
    top, left, bottom, right = geo.pads
    if any(geo.pads):
        x = np.pad(x, ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
        h, w = x.shape[2:]
        x = x[:, :, max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]
    return x


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash, vectorised (wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


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


def conv_patches(x: np.ndarray, geo: ConvGeometry, positions: np.ndarray) -> np.ndarray:
    """im2col rows of ``x`` (N, C, H, W) at output positions ``positions`` (N, k).

    Returns (N*k, C*kh*kw) float32, columns ordered like a Conv weight (C, kh, kw) flattened.
    """
    n, c = x.shape[:2]
    kh, kw = geo.kernel
    xt = np.ascontiguousarray(_spread(x, geo).transpose(0, 2, 3, 1))  # N, Hp, Wp, C: gather whole channel vectors
    ow = geo.out_hw[1]
    oy, ox = np.divmod(positions, ow)                    # (N, k)
    ky, kx = np.meshgrid(np.arange(kh) * geo.dilations[0], np.arange(kw) * geo.dilations[1], indexing="ij")
    rows = oy[..., None] * geo.strides[0] + ky.reshape(-1)   # (N, k, kh*kw)
    cols = ox[..., None] * geo.strides[1] + kx.reshape(-1)
    nidx = np.arange(n)[:, None, None]
    patches = xt[nidx, rows, cols]                            # (N, k, kh*kw, C)
    k = positions.shape[1]
    return np.ascontiguousarray(patches.transpose(0, 1, 3, 2)).reshape(n * k, c * kh * kw)


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
