"""Packing K-quant codes into ggml's byte layout: 2-bit and 4-bit codes, the 5th/3rd bit planes, 6-bit scales.

The encoder (`gguf_kquants`) decides codes and scales; these functions only lay them out as ggml's
`block_q2_K` ... `block_q6_K` structs store them (little-endian, as `gguf.quants` decodes them).
"""

from __future__ import annotations

import numpy as np

_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_LOW_2_BITS = np.uint64(0x0303030303030303)
_LOW_BIT = np.uint64(0x0101010101010101)


def _bytes(words: np.ndarray) -> np.ndarray:
    """(C, ...) uint64 -> (C, n_bytes) uint8, little-endian, no copy."""
    return np.ascontiguousarray(words).view(np.uint8).reshape(words.shape[0], -1)


def _pack_2bit(w: np.ndarray) -> np.ndarray:
    """(C, 32) words of codes 0..3 -> (C, 64) bytes: weight 128h + 32s + l in bits 2s of byte 32h + l."""
    q = w.reshape(-1, 2, 4, 4)  # (C, h, s, 4 words = 32 weights l)
    return _bytes(q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6))


def _pack_nibbles(w: np.ndarray) -> np.ndarray:
    """(C, 32) words of codes 0..15 -> (C, 128) bytes: weight 64c + l low nibble, 64c + 32 + l high nibble of
    byte 32c + l."""
    q = w.reshape(-1, 4, 2, 4)  # (C, c, half, 4 words)
    return _bytes(q[:, :, 0] | (q[:, :, 1] << 4))


def _pack_bitplane(w: np.ndarray) -> np.ndarray:
    """(C, 32) words of bits 0/1 -> (C, 32) bytes: bit j of byte l is weight 32j + l."""
    q = w.reshape(-1, 8, 4)  # (C, j, 4 words)
    out = q[:, 0].copy()
    for j in range(1, 8):
        out |= q[:, j] << j
    return _bytes(out)


def _pack_scales_min_6bit(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins (C, 8) uint8 -> the 12 bytes of Q4_K/Q5_K, (C, 12)."""
    sc, m = sc.T, m.T  # (8, C) views: every operation below runs along C, not along 4 bytes
    out = np.empty((12, sc.shape[1]), dtype=np.uint8)
    out[0:4] = sc[:4] | ((sc[4:] >> 4) << 6)
    out[4:8] = m[:4] | ((m[4:] >> 4) << 6)
    out[8:12] = (sc[4:] & 0x0F) | ((m[4:] & 0x0F) << 4)
    return out.T
