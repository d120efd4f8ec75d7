"""Attention time per layer (A100, ms) for ANY prefill chunk or decode batch, interpolated from Vidur's 118-row
attention sample (`attention_sampled_tp1.csv`). Every sampled row is reproduced exactly; between them:

Prefill, one chunk of `c` new tokens after a prefix of `kv` cached tokens (`PrefillAttention`). The sample has the
whole line kv = 0 (c = 32..16384) but only one chunk size with a prefix (c = 64, kv = 512..4672), so the (c, kv)
surface needs an assumption; ours is *equal causal work* (FlashAttention-style kernels are bound by the number of
query-key pairs once the chunk fills the GPU):
  - a0(c): the kv = 0 line, piecewise linear in log c / log time (clamped below c = 32, the kernel's floor; past
    c = 16384 continued with the last segment's slope, about 2: quadratic);
  - c_eq(c, kv) = sqrt(c^2 + 2 c kv): the chunk that does, without a prefix, the same causal work c*kv + c^2/2;
  - m(kv): the c = 64 line (kv 0 -> a0(64)), linear in kv, held past kv = 4672;
  - c <= 64: t = m(kv) (short chunks are latency-bound: the measured 64-token cost, a0 is flat below 64 too);
    c > 64: t = m(kv) + a0(c_eq(c, kv)) - a0(c_eq(64, kv)) (the measured short-chunk cost with a prefix, plus the
    extra work of the longer chunk priced on the kv = 0 line). It equals a0(c) at kv = 0 and m(kv) at c = 64.
Decode, `b` rows of mean context `k` (`DecodeAttention`; the mean, as Vidur's predictor uses it): the sample is
ragged (batch ranges differ per context), so a physical form carries it and the sample corrects it:
  - g(b, k) = a + r b + d b k (launch, per row, per KV token read: memory-bound), fitted to the decode rows by
    non-negative least squares on relative error;
  - t = g(b, k) * q(b, k), with q = measured / g interpolated linearly on the Delaunay triangulation of the sampled
    points in (log b, log k), and the nearest sample's q outside their hull (b 1..512, k 32..8192).
Both surfaces are then made non-decreasing in each coordinate (more tokens never cost less) on an evaluation grid
that contains every sampled point (`MonotoneGrid`: clipped between the samples, then a running maximum), and read
bilinearly between its nodes; past the grid
(chunks > 32768, prefixes or contexts > 262144, batches > 512) the edge value is scaled by the formula's growth.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.optimize import nnls

GRID_MAX_TOKENS = 262144
"""Largest prefix / decode context on the evaluation grids."""
GRID_MAX_CHUNK = 32768
GRID_MAX_BATCH = 512


class MonotoneGrid:
    """values[i, j] at (xs[i], ys[j]) made non-decreasing along both axes, read bilinearly (clamped at the edges).

    `anchors` [(x, y, value)] are the measured samples (grid nodes): every other node is first clipped between the
    largest anchor it dominates and the smallest anchor that dominates it, then a running maximum along both axes
    makes the grid monotone. For anchors that are themselves monotone this keeps every anchor's value exactly
    (a running maximum alone would lift an anchor wherever the interpolant overshoots below it)."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, values: np.ndarray, anchors=()) -> None:
        self.xs, self.ys = np.asarray(xs, float), np.asarray(ys, float)
        v = np.array(values, dtype=float)
        if len(anchors):
            ax, ay, av = (np.asarray(c, float) for c in zip(*anchors))
            gx, gy = self.xs[:, None, None], self.ys[None, :, None]
            below = (ax <= gx) & (ay <= gy)
            above = (ax >= gx) & (ay >= gy)
            lo = np.where(below, av, -np.inf).max(axis=2)
            hi = np.where(above, av, np.inf).min(axis=2)
            v = np.minimum(np.maximum(v, lo), np.maximum(hi, lo))
        v = np.maximum.accumulate(v, axis=0)
        self.v = np.maximum.accumulate(v, axis=1)

    @staticmethod
    def _cell(nodes: np.ndarray, x: float) -> tuple[int, float]:
        x = min(max(x, nodes[0]), nodes[-1])
        i = int(np.searchsorted(nodes, x, side="right")) - 1
        i = min(max(i, 0), len(nodes) - 2)
        return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])

    def __call__(self, x: float, y: float) -> float:
        i, fx = self._cell(self.xs, x)
        j, fy = self._cell(self.ys, y)
        v = self.v
        return float((1 - fx) * ((1 - fy) * v[i, j] + fy * v[i, j + 1])
                     + fx * ((1 - fy) * v[i + 1, j] + fy * v[i + 1, j + 1]))


def _nodes(samples, *ranges) -> np.ndarray:
    return np.unique(np.concatenate([np.asarray(samples, float), *[np.asarray(r, float) for r in ranges]]))


class PrefillAttention:
    """A100 attention ms per layer of one prefill chunk (see the module docstring)."""

    def __init__(self, attn_rows: list[dict]) -> None:
        kv0 = sorted((r["prefill_chunk_size"], r["attn_ms"]) for r in attn_rows if r["kind"] == "prefill")
        c64 = sorted((r["kv_cache_size"], r["attn_ms"]) for r in attn_rows if r["kind"] == "chunked_prefill")
        if len(kv0) < 2 or not c64 or any(r["kind"] == "chunked_prefill" and r["prefill_chunk_size"] != 64
                                          for r in attn_rows):
            raise ValueError("attention sample: need >= 2 prefill rows (kv 0) and chunked rows of chunk 64")
        self.lc = np.log([c for c, _ in kv0])
        self.la = np.log([a for _, a in kv0])
        self.slope = (self.la[-1] - self.la[-2]) / (self.lc[-1] - self.lc[-2])
        self.m_kv = np.array([0.0] + [k for k, _ in c64])
        self.m_ms = np.array([self.a0(64.0)] + [a for _, a in c64])
        chunks = _nodes([c for c, _ in kv0], np.arange(16, 1024, 16), np.arange(1024, GRID_MAX_CHUNK + 1, 128), [1])
        prefixes = _nodes(self.m_kv, np.arange(256, 16384, 256), np.geomspace(16384, GRID_MAX_TOKENS, 25).round())
        vals = np.array([[self.formula(c, k) for k in prefixes] for c in chunks])
        anchors = [(c, 0.0, a) for c, a in kv0] + [(64.0, k, a) for k, a in c64]
        self.grid = MonotoneGrid(chunks, prefixes, vals, anchors)

    def a0(self, c: float) -> float:
        x = np.log(max(c, 1.0))
        if x > self.lc[-1]:
            return float(np.exp(self.la[-1] + self.slope * (x - self.lc[-1])))
        return float(np.exp(np.interp(x, self.lc, self.la)))

    def formula(self, chunk: float, prefix: float) -> float:
        m = float(np.interp(prefix, self.m_kv, self.m_ms))
        if chunk <= 64:
            return m
        c_eq = np.sqrt(chunk * chunk + 2.0 * chunk * prefix)
        c64 = np.sqrt(64.0 * 64.0 + 2.0 * 64.0 * prefix)
        return m + self.a0(c_eq) - self.a0(c64)

    def __call__(self, chunk: float, prefix: float) -> float:
        xs, ys = self.grid.xs, self.grid.ys
        cc, kc = min(chunk, xs[-1]), min(prefix, ys[-1])
        t = self.grid(cc, kc)
        if (cc, kc) != (chunk, prefix):
            t *= self.formula(chunk, prefix) / self.formula(cc, kc)
        return t


class DecodeAttention:
    """A100 attention ms per layer of a decode batch of `rows` rows with mean context `context`."""

    def __init__(self, attn_rows: list[dict]) -> None:
        dec = [r for r in attn_rows if r["kind"] == "decode"]
        if len(dec) < 4:
            raise ValueError("attention sample: need >= 4 decode rows")
        b = np.array([r["batch_size"] for r in dec], float)
        k = np.array([r["kv_cache_size"] for r in dec], float)
        y = np.array([r["attn_ms"] for r in dec])
        x = np.column_stack([np.ones_like(b), b, b * k]) / y[:, None]
        self.coef, _ = nnls(x, np.ones_like(y))
        pts = np.column_stack([np.log(b), np.log(k)])
        q = y / self.g(b, k)
        self._lin, self._near = LinearNDInterpolator(pts, q), NearestNDInterpolator(pts, q)
        self.k_min = float(k.min())
        rows = np.arange(1, GRID_MAX_BATCH + 1, dtype=float)
        ctx = _nodes(k, np.arange(64, 8192, 64), np.geomspace(8192, GRID_MAX_TOKENS, 21).round())
        bb, kk = np.meshgrid(rows, ctx, indexing="ij")
        self.grid = MonotoneGrid(rows, ctx, self.formula(bb.ravel(), kk.ravel()).reshape(bb.shape), list(zip(b, k, y)))

    def g(self, b, k):
        a, r, d = self.coef
        return a + r * b + d * b * k

    def formula(self, b: np.ndarray, k: np.ndarray) -> np.ndarray:
        p = np.column_stack([np.log(b), np.log(np.maximum(k, self.k_min))])
        q = self._lin(p)
        out = np.isnan(q)
        if out.any():
            q[out] = self._near(p[out])
        return self.g(b, np.maximum(k, self.k_min)) * q

    def __call__(self, rows: int, context: float) -> float:
        if rows <= 0:
            return 0.0
        xs, ys = self.grid.xs, self.grid.ys
        bc, kc = min(float(rows), xs[-1]), min(float(context), ys[-1])
        t = self.grid(bc, kc)
        if (bc, kc) != (rows, context) and (rows > xs[-1] or context > ys[-1]):
            t *= float(self.g(rows, max(context, self.k_min)) / self.g(bc, max(kc, self.k_min)))
        return t
