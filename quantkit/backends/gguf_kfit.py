"""The scale search of the K-quant writers (`gguf_kquants`): per sub-block scales (and mins) fitted to the weights,
then the super-block scales, in float32 numpy over chunks of super-blocks.

Affine types (Q2_K, Q4_K, Q5_K) fit `scale * q - min` per sub-block (`_fit_affine`), symmetric types (Q3_K, Q6_K)
`scale * q` (`_fit_symmetric`); `_super_scale` then quantizes the sub-block scales against one float16 number per
super-block, and `_round_scale_and_min` rounds them to their 4/6/8-bit codes. How and why: `gguf_kquants`' docstring.
"""

from __future__ import annotations

import math

import numpy as np

# -- helpers --------------------------------------------------------------------------------------------------

_F16_FEW_BITS = 2.0**-18  # a float16 below this is a subnormal with fewer than 6 significant bits
_SUBNORMAL_K = (1, 1.5, 2, 3, 4, 8, 16, 64)  # multipliers of such a d that are tried (measured: as good as 14)
_ONES = {n: np.ones((1, n), dtype=np.float32) for n in (16, 32)}  # row vectors for column sums by matmul


class _Work:
    """Scratch float32 buffers, allocated on first use and reused for every chunk of one quantize_k call."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=np.float32)
        return buffer[:size].reshape(shape)


def _to_columns(blocks: np.ndarray, n: int, work: _Work) -> np.ndarray:
    """(C, 256) super-blocks -> (n, M = C * 256 // n): column k is sub-block k, rows are its n weights.

    In this layout a per-sub-block sum or max is a vertical operation over n rows (SIMD, cache friendly);
    along a short last axis numpy is 10-30x slower.
    """
    x = work.get("x", (n, blocks.size // n))
    np.copyto(x, blocks.reshape(-1, n).T)
    return x


def _f16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 and back: the super-block scales are stored as float16.

    Values below 2^-14 (float16 subnormals, the multiples of 2^-24) are rounded onto that grid first: numpy
    converts an inexact subnormal ~100x slower than any other value, and K-quant scales of ordinary weights
    (std 0.02) are often there (Q6_K: d ~ 1e-5).
    """
    values = np.asarray(values, dtype=np.float32)
    values = np.where(np.abs(values) < 2.0**-14, np.rint(values * 2.0**24) * 2.0**-24, values)
    return values.astype(np.float16).astype(np.float32)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """(C,) float -> (C, 2) uint8, little-endian float16 (ggml_fp16_t)."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _safe_inv(v: np.ndarray) -> np.ndarray:
    """1 / v, and 1 where v == 0 (then whatever it multiplies is 0 or gets clipped)."""
    return 1 / (v + (v == 0))


def _check_finite(lo: np.ndarray, hi: np.ndarray, quant_type: str) -> None:
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError(f"{quant_type}: the weights contain NaN or inf; a GGUF block cannot store them.")
    if not (np.maximum(-lo, hi) < 1e9).all():  # before d overflows float16 (or float32 products overflow)
        raise ValueError(
            f"{quant_type}: weights up to {np.maximum(-lo, hi).max():.3g} in magnitude are too large for "
            "float16 super-block scales. Keep this tensor in BF16/F32, or scale it down."
        )


def _keep_better(err: np.ndarray, best_err: np.ndarray, pairs) -> None:
    """In place: where err < best_err take the new values (a float blend: np.where is ~10x slower here)."""
    better = (err < best_err).astype(np.float32)
    np.minimum(best_err, err, out=best_err)
    for new, old in pairs:
        old += better * (new - old)


# -- sub-block fits ---------------------------------------------------------------------------------------------


def _affine_ls(q: np.ndarray, x: np.ndarray, sx: np.ndarray, n: int):
    """Least-squares (a, b) of x ~ a * q + b per column, and the error minus sum x^2.

    q, x: (n, M); sx: (M,) column sums of x. Returns a, b <= 0, err, sum q, sum q^2, each (M,).
    """
    sq = np.matmul(_ONES[n], q)[0]  # column sums as a matrix product (BLAS): ~2x faster than q.sum(axis=0)
    sqq = np.einsum("nm,nm->m", q, q)
    sqx = np.einsum("nm,nm->m", q, x)
    det = n * sqq - sq * sq
    det += det <= 0  # det is 0 only when all codes of a column are equal; then a = 0, b = mean
    a = (n * sqx - sq * sx) / det
    b = (sx - a * sq) / n
    # a min must be <= 0 (decoded as -dmin * m, m >= 0): where b > 0, refit the scale alone with b = 0; at the
    # optimum sum qx = a sum q^2 + b sum q, so that scale is a + b sum q / sum q^2
    pos = np.maximum(b, 0)
    a += pos * sq * _safe_inv(sqq)
    b -= pos
    # at either optimum the error is sum x^2 - a sum qx - b sum x
    return a, b, -(a * sqx + b * sx), sq, sqq


def _fit_affine(x: np.ndarray, nmax: int, candidates: tuple[tuple[float, float], ...], rounds: int, work: _Work):
    """Best x ~ a * q + b per column, q = clip(rint((x - b) / a), 0, nmax).

    Args:
        x: (n, M) float32, one sub-block per column.
        nmax: highest code (3, 15 or 31).
        candidates: (r, phase) pairs, tried in turn: first codes rint((x - min) * (nmax + r) / (max - min) + phase).
            r stretches the grid; a phase of 0.5 moves every grid line half a step, which is what a sub-block with
            one outlier and a tight cluster needs (the cluster then sits on a code instead of between two).
        rounds: Lloyd rounds after the search (re-round with the fitted a, b; fit again). A round cannot raise
            the error: the nearest code is the best code for a given (a, b), and the fit is optimal for the codes.
        work: scratch buffers.

    Returns:
        a, b, sum q, sum q^2 (of the chosen codes), the column minima and maxima, each (M,) float32.
    """
    n = x.shape[0]
    lo_x = x.min(axis=0)
    hi = x.max(axis=0)
    lo = np.minimum(lo_x, 0)
    sx = x.sum(axis=0)
    y = np.subtract(x, lo, out=work.get("y", x.shape))  # (n, M), >= 0
    inv_span = _safe_inv(hi - lo)
    q = work.get("q", x.shape)  # (n, M), one candidate at a time: the working set stays near the L2 cache size
    best = None
    for r, phase in candidates:
        np.multiply(y, (nmax + r) * inv_span, out=q)
        if phase:
            q += phase
        np.rint(q, out=q)
        if r + phase >= 0.5:  # else the largest weight lands on a code <= nmax: nothing to clip
            np.clip(q, 0, nmax, out=q)
        fit = _affine_ls(q, x, sx, n)  # a, b, err, sum q, sum q^2
        if best is None:
            best = fit
        else:
            _keep_better(fit[2], best[2], ((fit[0], best[0]), (fit[1], best[1]), (fit[3], best[3]), (fit[4], best[4])))
    a, b, _, sq, sqq = best
    for _ in range(rounds):
        np.subtract(x, b, out=q)
        q *= _safe_inv(a)
        np.rint(q, out=q)
        np.clip(q, 0, nmax, out=q)
        a, b, _, sq, sqq = _affine_ls(q, x, sx, n)
    return a, b, sq, sqq, lo_x, hi


def _fit_symmetric(x: np.ndarray, nneg: int, targets: tuple[float, ...], rounds: int, work: _Work):
    """Best x ~ a * q per column, q = clip(rint(x / a), -nneg, nneg - 1); a may be negative.

    Args:
        x: (n, M) float32.
        nneg: 4 (Q3_K) or 32 (Q6_K): codes run -nneg .. nneg - 1.
        targets: the codes the largest-magnitude weight of a column is first rounded to (e.g. -4.5, -4 or 3 for
            Q3_K: a negative target uses the extra negative level), tried in turn.
        rounds: Lloyd rounds after the search.
        work: scratch buffers.

    Returns:
        a (M,), the column minima and maxima (M,), float32.
    """
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    v = hi + (-lo > hi) * (lo - hi)  # signed value of largest magnitude
    inv_v = _safe_inv(v)
    q = work.get("q", x.shape)  # (n, M), one candidate at a time

    def fit(q):
        sqq = np.einsum("nm,nm->m", q, q)
        sqq += sqq == 0
        sqx = np.einsum("nm,nm->m", q, x)
        a = sqx / sqq
        return a, -a * sqx  # a, error minus sum x^2

    best = None
    for target in targets:
        np.multiply(x, target * inv_v, out=q)
        np.rint(q, out=q)
        np.clip(q, -nneg, nneg - 1, out=q)
        a, err = fit(q)
        if best is None:
            best_a, best = a, err
        else:
            _keep_better(err, best, ((a, best_a),))
    a = best_a
    for _ in range(rounds):
        np.multiply(x, _safe_inv(a), out=q)
        np.rint(q, out=q)
        np.clip(q, -nneg, nneg - 1, out=q)
        a, _ = fit(q)
    return a, lo, hi


# -- super-block fits -------------------------------------------------------------------------------------------


def _super_scale(s: np.ndarray, w: np.ndarray | None, lo_code: int, hi_code: int, rounds: int) -> np.ndarray:
    """The float16 d of each super-block for its sub-block values s (C, S), to be coded as rint(s / d).

    Minimizes sum_j w_j (s_j - d * code_j)^2 with codes in [lo_code, hi_code] (w: (C, S) weights >= 0, or None
    for equal weights). Unsigned (lo_code = 0, s >= 0): d starts at max(s) / hi_code. Signed: the value of
    largest magnitude starts on code lo_code (-32 or -128, the extra negative level). Each round refits d by
    least squares for the current codes.

    Returns:
        d (C,) float32, already rounded to float16.

    Raises:
        ValueError: d overflows float16 (weights beyond ~1e6 in magnitude).
    """
    s_t = np.ascontiguousarray(s.T)  # (S, C): a max over S is then a vertical (fast) reduction
    hi = s_t.max(axis=0)
    if lo_code == 0:
        d_raw = hi / hi_code
    else:
        lo = s_t.min(axis=0)
        d_raw = (hi + (-lo > hi) * (lo - hi)) / lo_code
    d = _f16(d_raw)
    for _ in range(rounds):
        codes = np.rint(s * _safe_inv(d)[:, None])
        np.clip(codes, lo_code, hi_code, out=codes)
        wc = codes if w is None else w * codes
        den = np.einsum("cs,cs->c", wc, codes)
        d = _f16(np.einsum("cs,cs->c", wc, s) / (den + (den == 0)))
    if not (np.abs(d_raw) <= 65504).all():
        raise ValueError(
            f"weights too large: a super-block scale of {np.abs(d_raw).max():.3g} does not fit in float16 (max "
            "65504). Keep this tensor in BF16/F32, use a type with wider scale codes (Q4_K ... Q6_K), or scale it "
            "down."
        )
    tiny = np.flatnonzero((d_raw != 0) & (np.abs(d) < _F16_FEW_BITS))
    if tiny.size:  # rare: weights of magnitude ~1e-3 and below
        d[tiny] = _subnormal_scale(s[tiny], None if w is None else w[tiny], d_raw[tiny], lo_code, hi_code)
    return d


def _subnormal_scale(s: np.ndarray, w: np.ndarray | None, d: np.ndarray, lo_code: int, hi_code: int) -> np.ndarray:
    """A better d for super-blocks whose d is a float16 subnormal with few bits (< 2^-18, normal range >= 2^-14).

    A subnormal float16 is a multiple of 2^-24, so d = 3e-7 carries barely 2 significant bits (and below 3e-8 it
    rounds to 0, decoding the whole super-block as 0); every decoded weight inherits that error. A k times larger
    d with k times smaller codes trades code resolution for scale resolution: try a few k and keep, per
    super-block, the d with the smallest weighted squared error (d: (C,) the unrounded starting scale).
    """
    dk = _f16(np.asarray(_SUBNORMAL_K, dtype=np.float32)[:, None] * d)  # (K, C) candidates
    codes = np.clip(np.rint(s * _safe_inv(dk)[:, :, None]), lo_code, hi_code)  # (K, C, S)
    r = s - dk[:, :, None] * codes
    err = np.einsum("kcs,kcs->kc", r if w is None else w * r, r)
    return dk[err.argmin(axis=0), np.arange(d.size)]


def _round_scale_and_min(a, b, sq, sqq, n, d, dmin, code_max):
    """Integer scale and min codes (M,) for sub-block fits (a, b), given the super-block d and dmin (M,).

    Rounding the scale and the min separately ignores that their errors interact: for fixed codes q the extra
    squared error of decoding with (a + da, b + db) instead of the least-squares (a, b) is exactly
    da^2 sum q^2 + 2 da db sum q + n db^2. So: round the min, then pick the scale code that best offsets the
    min's rounding error (minimizing that quadratic in da), then re-pick the min for that scale. The final
    codes are re-rounded afterwards, which can only lower the error further.
    """
    inv_dmin = _safe_inv(dmin)
    m = np.clip(np.rint(-b * inv_dmin), 0, code_max)
    db = -dmin * m - b
    sc = np.clip(np.rint((a - db * sq * _safe_inv(sqq)) * _safe_inv(d)), 0, code_max)
    da = d * sc - a
    m = np.clip(np.rint((da * sq / n - b) * inv_dmin), 0, code_max)
    return sc, m
