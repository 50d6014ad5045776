"""GGUF K-quant writers: Q2_K, Q3_K, Q4_K, Q5_K and Q6_K in numpy, byte for byte in ggml's block layout.

The `gguf` package can read (dequantize) the K-quants but not write them. This module writes them, so that
`gguf.quants.dequantize(quantize_k(w, "Q4_K"), GGMLQuantizationType.Q4_K)` gives back `w` up to the
quantization error.

K-quants group 256 weights of a row into a *super-block*, split it into *sub-blocks* of 16 or 32 weights, and
give every sub-block its own scale (and min) -- which are themselves quantized to 4, 6 or 8 bits against one or
two float16 numbers per super-block. Two levels of scales cost fewer bits than a float16 scale per 32 weights
(the legacy Q4_0 ... Q8_0 formats) and follow the weights more closely.

A weight is decoded as `d * sc[j] * q - dmin * m[j]` ("affine" types, with a min) or `d * sc[j] * q`
("symmetric" types), `j` its sub-block, `q` its code:

| type | sub-blocks      | code q         | sub-block scale (and min)    | super-block | bytes/256 | bits/weight |
|------|-----------------|----------------|------------------------------|-------------|-----------|-------------|
| Q2_K | 16 x 16 weights | 2 bit, 0..3    | 4-bit scale + 4-bit min      | d, dmin f16 |  84       | 2.625       |
| Q3_K | 16 x 16 weights | 3 bit, -4..3   | 6-bit signed scale -32..31   | d f16       | 110       | 3.4375      |
| Q4_K |  8 x 32 weights | 4 bit, 0..15   | 6-bit scale + 6-bit min      | d, dmin f16 | 144       | 4.5         |
| Q5_K |  8 x 32 weights | 5 bit, 0..31   | 6-bit scale + 6-bit min      | d, dmin f16 | 176       | 5.5         |
| Q6_K | 16 x 16 weights | 6 bit, -32..31 | 8-bit signed scale (int8)    | d f16       | 210       | 6.5625      |

Byte layout of one super-block, in order (weight i = 0..255 of the super-block; "bits 2s" = bits 2s, 2s+1):

- Q2_K: `scales[16]` (low nibble: scale of sub-block j, high nibble: its min) | `qs[64]`: weight
  i = 128h + 32s + l (h 0..1, s 0..3, l 0..31) sits in bits 2s of qs[32h + l] | `d` f16 | `dmin` f16.
  16 + 64 + 2 + 2 = 84 bytes.
- Q3_K: `hmask[32]`: bit s of hmask[l] is the high bit of weight 32s + l | `qs[64]`: the low 2 bits, laid out
  as in Q2_K | `scales[12]`: sixteen 6-bit values (scale + 32), the low nibbles of 0..7 in the low nibbles of
  bytes 0..7, of 8..15 in their high nibbles, the top 2 bits of value 4k + b in bits 2k of byte 8 + b |
  `d` f16. The code is (low 2 bits) + 4 * (high bit) - 4. 32 + 64 + 12 + 2 = 110 bytes.
- Q4_K: `d` f16 | `dmin` f16 | `scales[12]`: eight 6-bit scales and eight 6-bit mins; bytes 0..3 hold scales
  0..3 (+ the top 2 bits of scales 4..7 in bits 6..7), bytes 4..7 the mins 0..3 (+ the top bits of mins 4..7),
  bytes 8..11 the low nibbles of scale 4 + k (low) and min 4 + k (high) | `qs[128]`: weight 64c + l (l 0..31)
  in the low nibble of qs[32c + l], weight 64c + 32 + l in its high nibble. 2 + 2 + 12 + 128 = 144 bytes.
- Q5_K: as Q4_K, with `qh[32]` between the scales and `qs[128]`: bit j of qh[l] is bit 4 of weight 32j + l.
  2 + 2 + 12 + 32 + 128 = 176 bytes.
- Q6_K: `ql[128]`: the low 4 bits; weight 128h + 64n + l (l 0..63) in nibble n of ql[64h + l] | `qh[64]`: the
  high 2 bits; weight 128h + 32s + l (l 0..31) in bits 2s of qh[32h + l] | `scales[16]` int8 | `d` f16. The
  code is the 6-bit value - 32. 128 + 64 + 16 + 2 = 210 bytes.

Bits per weight = bytes per super-block * 8 / 256; e.g. Q4_K: 256 * 4 bits of codes + 8 * (6 + 6) bits of
sub-block scales and mins + 2 * 16 bits of super-block scales = 1152 bits = 4.5 bits/weight.

How the scales are chosen (this is what makes one K-quant writer better than another; the decoder is fixed).
The error minimized is the plain squared error of the weights, sum (w - decoded w)^2:

1. Sub-block fit, a searched least-squares fit ("make_qx"/"make_qkx"-style). For every sub-block a few
   candidate grids are tried (_AFFINE_STEPS, _SYM_TARGETS): affine types stretch the min-to-max grid a little
   (levels - 1 + r steps over the range) and shift it by half a step (a "phase": a sub-block with one outlier
   and a tight cluster wants the cluster on a code, not between two); symmetric types put the largest-magnitude
   weight on a code near either end (e.g. -4.5, -4 or +3 for Q3_K, the negative end having one extra level).
   For each candidate the codes are rounded and the least-squares scale (and min) *for those codes* is solved
   in closed form from the sums of q, q^2 and q*x; the smallest error wins. Q2_K then adds a "Lloyd" round:
   re-round the codes with the fitted scale and min and fit again (it cannot raise the error).
2. Super-block fit. d (and dmin) start at the largest sub-block scale (min) over the top code; d is refined by
   weighted least squares (weights sum q^2: how fast a sub-block's error grows with its scale error). Where d
   would be a float16 subnormal with few bits (weights of ~1e-3 and below; at ~1e-5 it would round to 0), a few
   larger d with smaller codes are tried (_subnormal_scale).
3. Joint rounding of each sub-block's scale and min codes (affine types): for fixed codes the extra error of a
   scale error da and a min error db is da^2 sum q^2 + 2 da db sum q + n db^2, so the scale code is chosen to
   offset the min's rounding error instead of being rounded on its own.
4. Final codes are rounded against the *decoded* (quantized) scales and mins.

Mins are decoded as `- dmin * m` with `m >= 0`, so a sub-block whose best min is positive is fitted with b = 0.
A super-block of zeros is written as zero bytes, as ggml writes it.

This is an independent implementation from the format's definition, not a port of ggml's C code: the bytes
decode the same way, but ggml's reference quantizer searches differently, so the bytes differ for most
sub-blocks. tests/test_gguf_kquants.py compares the decoded errors on fixtures made with ggml: at or below
ggml's for every type (Q2_K 0.79-0.91x, Q3_K ~0.96x, Q4_K ~1.00x, Q5_K ~0.99x, Q6_K ~0.95x).

Speed (numpy, one core; ~1.1-1.5x the time of the gguf package's own Q4_0 writer on a 282M-parameter
transformer, benchmarks/bench_gguf_write.py): the weights go in chunks of CHUNK super-blocks, transposed once to
"sub-block per column" (an (n, M) array for M sub-blocks of n weights) so that every per-sub-block sum or max is
a vertical SIMD operation over n rows; scratch buffers are allocated once per call and reused for every chunk (a
fresh 1 MiB temporary per chunk costs page faults that took more time than the arithmetic); packing shifts
uint64 words, 8 codes at a time; float16 subnormals are rounded by hand (numpy's conversion of an inexact
subnormal is ~100x slower than of any other value).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import did_you_mean, one_of
from .gguf_kpack import (
    _LOW_2_BITS,
    _LOW_BIT,
    _LOW_NIBBLES,
    _bytes,
    _pack_2bit,
    _pack_bitplane,
    _pack_nibbles,
    _pack_scales_min_6bit,
)

QK_K = 256  # weights per super-block, every K-quant

# type -> (bytes per super-block, weights per sub-block)
K_TYPES = {
    "Q2_K": (84, 16),
    "Q3_K": (110, 16),
    "Q4_K": (144, 32),
    "Q5_K": (176, 32),
    "Q6_K": (210, 16),
}
CHUNK = 1024  # super-blocks per chunk: 262144 weights, 1 MiB of float32 (fewer numpy calls per weight than smaller)


def bits_per_weight(quant_type: str) -> float:
    """Bits per weight of a K-quant type, from its super-block size (e.g. Q4_K: 144 bytes * 8 / 256 = 4.5)."""
    return _check_type(quant_type)[0] * 8 / QK_K


def _check_type(quant_type: str) -> tuple[int, int]:
    if quant_type not in K_TYPES:
        from .gguf_mixes import PRESETS

        if quant_type in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F16", "F32"):
            hint = f" The gguf package writes {quant_type} itself: gguf.quants.quantize."
        elif quant_type in PRESETS:
            hint = f" {quant_type!r} is a mix preset: pick each tensor's type with gguf_mixes.tensor_type."
        else:
            hint = did_you_mean(quant_type, K_TYPES)
        raise ValueError(
            f"quant_type={quant_type!r} is not a K-quant this module writes.{hint} Use {one_of(K_TYPES)}."
        )
    return K_TYPES[quant_type]


def quantize_k(weights, quant_type: str) -> np.ndarray:
    """Quantize weights to a GGUF K-quant, packed exactly as ggml lays the blocks out.

    Args:
        weights: array (..., cols) of any float dtype (numpy, or a torch tensor: float32, float16, bfloat16);
            `cols` must be a multiple of 256.
        quant_type: "Q2_K", "Q3_K", "Q4_K", "Q5_K" or "Q6_K".

    Returns:
        uint8 array (..., cols // 256 * bytes_per_block), the same shape convention as `gguf.quants.quantize`,
        ready for `GGUFWriter.add_tensor(name, packed, raw_dtype=GGMLQuantizationType[quant_type])`.

    Raises:
        ValueError: unknown type, a row length not divisible by 256, non-finite weights, or weights too large for
            float16 super-block scales.
    """
    type_size, _ = _check_type(quant_type)
    x = _as_float32(weights)
    if x.ndim == 0 or x.shape[-1] % QK_K:
        raise ValueError(
            f"{quant_type} needs rows whose length is a multiple of {QK_K}; got a tensor of shape {tuple(x.shape)}. "
            f"Pad the rows, or use a 32-weight block type for this tensor (Q4_0, Q5_0, Q5_1 or Q8_0, as "
            f"quantkit.backends.gguf_mixes.tensor_type does)."
        )
    out_shape = (*x.shape[:-1], x.shape[-1] // QK_K * type_size)
    blocks = x.reshape(-1, QK_K)  # (n_super_blocks, 256)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    quantize_chunk = _QUANTIZERS[quant_type]
    work = _Work()
    # NaN, inf or huge weights overflow along the way; they are reported as ValueErrors below, not as warnings
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, blocks.shape[0], CHUNK):
            try:
                out[start : start + CHUNK] = quantize_chunk(blocks[start : start + CHUNK], work)
            except ValueError as err:
                raise ValueError(f"{quant_type}: {err}" if not str(err).startswith(quant_type) else str(err)) from None
    return out.reshape(out_shape)


def _as_float32(weights) -> np.ndarray:
    if type(weights).__module__.startswith("torch"):
        weights = weights.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(weights).astype(np.float32, copy=False))


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


# -- final codes and the five formats -------------------------------------------------------------------------

# per type: candidate steps (affine) or targets (symmetric), Lloyd rounds, least-squares rounds for d
_AFFINE_STEPS = {
    "Q2_K": ((-0.25, 0.0), (0.25, 0.0)),
    "Q4_K": ((-0.25, 0.0), (0.25, 0.0), (-0.25, 0.5), (0.5, -0.5)),
    "Q5_K": ((-0.25, 0.0), (0.25, 0.0), (-0.25, 0.5)),
}
_SYM_TARGETS = {"Q3_K": (-4.5, -4.0, 3.0), "Q6_K": (-32.0, 31.0, 30.0, 29.0)}
_ROUNDS = {"Q2_K": 1, "Q3_K": 0, "Q4_K": 0, "Q5_K": 0, "Q6_K": 0}
_D_ROUNDS = {"Q2_K": 1, "Q3_K": 1, "Q4_K": 1, "Q5_K": 1, "Q6_K": 0}
_CODES_SLICE = 256  # super-blocks per step of _codes: its temporaries stay at 256 KiB


def _codes(blocks: np.ndarray, inv_a: np.ndarray, offset: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Final codes in the weights' natural order: clip(rint(x * inv_a + offset), lo, hi) - lo, (C, 256) uint8.

    inv_a, offset: (M,) per sub-block, expanded to one value per weight with np.repeat (broadcasting a
    per-row scalar over rows of 16 or 32 is ~4x slower than a plain elementwise product).
    """
    n = blocks.size // inv_a.size
    out = np.empty(blocks.shape, dtype=np.uint8)
    per = _CODES_SLICE * QK_K // n  # sub-blocks per slice
    for i, start in enumerate(range(0, blocks.shape[0], _CODES_SLICE)):
        part = slice(i * per, (i + 1) * per)
        q = blocks[start : start + _CODES_SLICE].reshape(-1) * np.repeat(inv_a[part], n)
        if offset is not None:
            q += np.repeat(offset[part], n)
        np.rint(q, out=q)
        np.clip(q, lo, hi, out=q)
        if lo:
            q -= lo
        out[start : start + _CODES_SLICE] = q.reshape(-1, QK_K)
    return out


def _affine_chunk(blocks: np.ndarray, quant_type: str, nmax: int, n: int, code_max: int, work: _Work):
    """Shared part of Q2_K, Q4_K, Q5_K: returns codes (C, 256) uint8, sc, m (C, S) uint8, d, dmin (C,)."""
    c, s = blocks.shape[0], QK_K // n
    x = _to_columns(blocks, n, work)  # (n, M = C * S)
    a, b, sq, sqq, lo, hi = _fit_affine(x, nmax, _AFFINE_STEPS[quant_type], _ROUNDS[quant_type], work)
    _check_finite(lo, hi, quant_type)
    dmin = _super_scale(np.maximum(-b, 0).reshape(c, s), None, 0, code_max, _D_ROUNDS[quant_type])
    d = _super_scale(np.maximum(a, 0).reshape(c, s), sqq.reshape(c, s), 0, code_max, _D_ROUNDS[quant_type])
    d_m, dmin_m = np.repeat(d, s), np.repeat(dmin, s)  # (M,)
    sc, m = _round_scale_and_min(a, b, sq, sqq, n, d_m, dmin_m, code_max)
    inv_a = _safe_inv(d_m * sc)
    codes = _codes(blocks, inv_a, dmin_m * m * inv_a, 0, nmax)
    return codes, sc.reshape(c, s).astype(np.uint8), m.reshape(c, s).astype(np.uint8), d, dmin


def _symmetric_chunk(blocks: np.ndarray, quant_type: str, nneg: int, sc_lo: int, sc_hi: int, work: _Work):
    """Shared part of Q3_K, Q6_K: returns codes + nneg (C, 256) uint8, sc (C, 16) float32, d (C,)."""
    c = blocks.shape[0]
    x = _to_columns(blocks, 16, work)  # (16, M = C * 16)
    a, lo, hi = _fit_symmetric(x, nneg, _SYM_TARGETS[quant_type], _ROUNDS[quant_type], work)
    _check_finite(lo, hi, quant_type)
    d = _super_scale(a.reshape(c, 16), None, sc_lo, sc_hi, _D_ROUNDS[quant_type])
    sc = np.clip(np.rint(a.reshape(c, 16) * _safe_inv(d)[:, None]), sc_lo, sc_hi)  # (C, 16)
    inv_a = _safe_inv((d[:, None] * sc).reshape(-1))
    return _codes(blocks, inv_a, None, -nneg, nneg - 1), sc, d


# Packing works on the codes viewed as uint64 words, 8 codes a word: a shift by up to 7 bits never carries a
# code into its neighbour byte, because every field stays below 256 (e.g. a 2-bit code << 6 <= 192).
def _zero_if_empty(packed: np.ndarray, d: np.ndarray) -> np.ndarray:
    """All-zero bytes for super-blocks with d == 0 (all weights 0), as ggml writes them; they decode the same."""
    packed[d == 0] = 0
    return packed


def _q2_k(blocks: np.ndarray, work: _Work) -> np.ndarray:
    codes, sc, m, d, dmin = _affine_chunk(blocks, "Q2_K", 3, 16, 15, work)
    return np.concatenate([sc | (m << 4), _pack_2bit(codes.view(np.uint64)), _f16_bytes(d), _f16_bytes(dmin)], 1)


def _q4_k(blocks: np.ndarray, work: _Work) -> np.ndarray:
    codes, sc, m, d, dmin = _affine_chunk(blocks, "Q4_K", 15, 32, 63, work)
    scales = _pack_scales_min_6bit(sc, m)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, _pack_nibbles(codes.view(np.uint64))], 1)


def _q5_k(blocks: np.ndarray, work: _Work) -> np.ndarray:
    codes, sc, m, d, dmin = _affine_chunk(blocks, "Q5_K", 31, 32, 63, work)
    w = codes.view(np.uint64)  # (C, 32)
    high, low = (w >> 4) & _LOW_BIT, w & _LOW_NIBBLES
    scales = _pack_scales_min_6bit(sc, m)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, _pack_bitplane(high), _pack_nibbles(low)], axis=1)


def _q3_k(blocks: np.ndarray, work: _Work) -> np.ndarray:
    codes, sc, d = _symmetric_chunk(blocks, "Q3_K", 4, -32, 31, work)
    w = codes.view(np.uint64)
    sc6 = (sc + 32).astype(np.uint8)  # (C, 16), 0..63
    scales = np.empty((blocks.shape[0], 12), dtype=np.uint8)
    scales[:, :8] = (sc6[:, :8] & 0x0F) | ((sc6[:, 8:] & 0x0F) << 4)
    high = (sc6 >> 4).reshape(-1, 4, 4)  # value 4k + b -> [k, b]
    scales[:, 8:] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    hmask = _pack_bitplane((w >> 2) & _LOW_BIT)
    return _zero_if_empty(np.concatenate([hmask, _pack_2bit(w & _LOW_2_BITS), scales, _f16_bytes(d)], axis=1), d)


def _q6_k(blocks: np.ndarray, work: _Work) -> np.ndarray:
    codes, sc, d = _symmetric_chunk(blocks, "Q6_K", 32, -128, 127, work)
    w = codes.view(np.uint64)
    low = (w & _LOW_NIBBLES).reshape(-1, 2, 2, 8)  # (C, h, n, 8 words = 64 weights)
    ql = _bytes(low[:, :, 0] | (low[:, :, 1] << 4))
    high = ((w >> 4) & _LOW_2_BITS).reshape(-1, 2, 4, 4)  # (C, h, s, 4 words)
    qh = _bytes(high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6))
    return _zero_if_empty(np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=1), d)


_QUANTIZERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}

__all__ = ["CHUNK", "K_TYPES", "QK_K", "bits_per_weight", "quantize_k"]
