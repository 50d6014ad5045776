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

import numpy as np

from ..errors import did_you_mean, one_of
from .gguf_kfit import (
    _check_finite,
    _f16_bytes,
    _fit_affine,
    _fit_symmetric,
    _round_scale_and_min,
    _safe_inv,
    _super_scale,
    _to_columns,
    _Work,
)
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
