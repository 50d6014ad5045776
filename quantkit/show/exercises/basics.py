"""Checkers for 01 (what fits where) and 02 (quantization from scratch: per-channel int8, 4-bit packing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import FLUX_DEV_BF16_GB, not_yet, number, ok, pending

# -- 01 start here ------------------------------------------------------------------------------------------


def flux_dev_gb(bits: dict[str, float] | None = None) -> float:
    """GB the FLUX.1-dev weights take when each component is stored with `bits` bits per weight (default 16).

    Args:
        bits: {component: bits per weight}; components left out stay in BF16 (16 bits).
    """
    bits = bits or {}
    return sum(gb * bits.get(name, 16) / 16 for name, gb in FLUX_DEV_BF16_GB.items())


def check_flux_int8_gb(answer: Any, fits_16gb: Any = ...) -> None:
    """01: FLUX.1-dev with the transformer and T5 in int8 (8 bits per weight), CLIP and VAE in BF16.

    Args:
        answer: the learner's total in GB (10**9 bytes); within 0.5 % counts.
        fits_16gb: True/False, whether those weights fit on a 16 GB card.
    """
    if pending(answer) or pending(fits_16gb):
        return not_yet("set `answer` to the total in GB and `fits_16gb` to True or False.")
    value = number(answer, "answer")
    expected = flux_dev_gb({"transformer": 8, "text_encoder_2": 8})
    close = 0.005 * expected
    if abs(value - expected) > close:
        bf16 = flux_dev_gb()
        if abs(value - bf16) <= close:
            hint = "That is the BF16 total: int8 stores each weight in 1 byte instead of 2."
        elif abs(value - bf16 / 2) <= close:
            hint = "You halved every component; CLIP and the VAE stay in BF16 here."
        elif abs(value - bf16 / 4) <= close:
            hint = "8 bits is 1 byte per weight, half of BF16's 2 bytes (not a quarter)."
        else:
            hint = "Halve the transformer and the T5 encoder (2 bytes -> 1 byte per weight), keep the rest, and add."
        raise AssertionError(f"{value:.2f} GB is not right. {hint}")
    if not isinstance(fits_16gb, bool):
        raise AssertionError(f"fits_16gb should be True or False, got {fits_16gb!r}.")
    if fits_16gb != (expected < 16):
        raise AssertionError(
            f"Compare your total ({value:.2f} GB) with 16 GB again — and remember the weights are not all a card "
            "must hold (activations, the CUDA context), so a fit needs some room to spare."
        )
    verdict = "fits" if expected < 16 else "does not fit"
    four_bit = flux_dev_gb({"transformer": 4, "text_encoder_2": 4})
    return ok(f"{expected:.2f} GB of weights: it {verdict} a 16 GB card (4-bit would need {four_bit:.2f} GB).")


# -- 02 quantization from scratch -----------------------------------------------------------------------------


def _test_weight(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 32, generator=g) * torch.linspace(0.05, 2.0, 8).unsqueeze(1)  # rows of different scales
    return w


def reference_per_channel_int8(w):
    """Symmetric absmax int8 with one scale per output row: (int8 codes, float scales of shape (rows, 1))."""
    import torch

    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    q = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    return q, scale


def check_per_channel_int8(fn: Callable) -> None:
    """02: `fn(w) -> (q, scale)`, symmetric absmax int8 with one scale per output row (dim 0)."""
    import torch

    w = _test_weight()
    out = fn(w.clone())
    if pending(out):
        return not_yet("fill in the body of the function so that it returns (q, scale).")
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise AssertionError(f"The function should return a pair (q, scale), got {type(out).__name__}.")
    q, scale = out
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise AssertionError(f"q should be an int8 tensor, got {got}. Use .to(torch.int8) after rounding.")
    if q.shape != w.shape:
        raise AssertionError(f"q should have the weight's shape {tuple(w.shape)}, got {tuple(q.shape)}.")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.numel() == 1:
        raise AssertionError(
            "scale is a single number: that is per-tensor quantization. Per-channel needs one scale per output "
            f"row, shape ({w.shape[0]}, 1): take the absmax over dim=1 with keepdim=True."
        )
    if tuple(scale.shape) != (w.shape[0], 1):
        raise AssertionError(
            f"scale should have shape ({w.shape[0]}, 1) — one per output row, kept 2-D so it broadcasts — got "
            f"{tuple(scale.shape)}."
        )
    ref_q, ref_scale = reference_per_channel_int8(w)
    if torch.allclose(scale, ref_scale * 127 / 128, rtol=1e-4):
        raise AssertionError("The scale divides by 128; symmetric int8 uses ±127 so that +absmax maps to 127.")
    if torch.allclose(scale, ref_scale * 127, rtol=1e-4):
        raise AssertionError("scale is the absmax itself; divide it by 127 so the largest weight maps to ±127.")
    if not torch.allclose(scale, ref_scale, rtol=1e-4):
        raise AssertionError("The scales are off: each row's scale should be (its largest |w|) / 127.")
    if q.int().abs().max() > 127:
        raise AssertionError("Some codes are outside [-127, 127]: clamp after rounding.")
    if not torch.equal(q, ref_q):
        wrong = (q != ref_q).sum().item()
        if torch.equal(q, torch.trunc(w / ref_scale).to(torch.int8)):
            raise AssertionError("The codes are truncated toward zero: use torch.round before casting to int8.")
        raise AssertionError(f"{wrong} of {q.numel()} codes differ from round(w / scale); check the rounding.")
    error = (q.float() * scale - w).abs().max().item()
    return ok(f"round-trip error at most {error:.4f}, i.e. half a step of the row's own scale.")


def reference_pack_int4(codes):
    """Two 4-bit codes (0..15) per byte: even positions in the low nibble, odd positions in the high nibble."""
    import torch

    codes = codes.to(torch.uint8).reshape(-1, 2)
    return codes[:, 0] | (codes[:, 1] << 4)


def check_pack_int4(fn: Callable) -> None:
    """02: `fn(codes) -> packed`, uint8 codes 0..15 (even length) packed two per byte, first code in the low nibble."""
    import torch

    codes = torch.tensor([1, 2, 15, 0, 7, 8, 3, 12], dtype=torch.uint8)
    out = fn(codes.clone())
    if pending(out):
        return not_yet("fill in the body of pack_int4 so that it returns the packed bytes.")
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"pack_int4 should return a tensor, got {type(out).__name__}.")
    if out.numel() != codes.numel() // 2:
        raise AssertionError(
            f"{codes.numel()} codes of 4 bits fill {codes.numel() // 2} bytes, but you returned {out.numel()} values."
        )
    if out.dtype != torch.uint8:
        raise AssertionError(f"The packed bytes should be uint8, got {out.dtype}.")
    expected = reference_pack_int4(codes)
    swapped = codes.reshape(-1, 2)[:, 1] | (codes.reshape(-1, 2)[:, 0] << 4)
    if torch.equal(out.flatten(), swapped):
        raise AssertionError("The nibbles are swapped: the first code of each pair goes in the low 4 bits.")
    if not torch.equal(out.flatten(), expected):
        raise AssertionError(
            "The bytes are wrong. For each pair (a, b): byte = a | (b << 4); pair up with codes.reshape(-1, 2)."
        )
    return ok("8 codes in 4 bytes: half the memory of int8, a quarter of BF16.")


__all__ = [
    "check_flux_int8_gb",
    "check_pack_int4",
    "check_per_channel_int8",
    "flux_dev_gb",
    "reference_pack_int4",
    "reference_per_channel_int8",
]
