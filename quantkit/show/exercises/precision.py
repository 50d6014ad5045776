"""Checkers for 08 (keep the most sensitive layers) and 09 (weight-only vs dynamic activation quantization)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import not_yet, ok, pending

# -- 08 sensitivity and mixed precision ------------------------------------------------------------------------


def check_kept_layers(config: Any, sensitivity, n: int = 2) -> None:
    """08: `config` quantizes the studied component as measured, keeping exactly its `n` most sensitive layers.

    Args:
        config: the learner's PipelineQuantizationConfig.
        sensitivity: the LayerSensitivity the learner measured (component, spec, ranked frame).
        n: how many layers to keep in full precision.
    """
    from ...config import PipelineQuantizationConfig

    if pending(config):
        return not_yet("build the PipelineQuantizationConfig and assign it to `config`.")
    if not isinstance(config, PipelineQuantizationConfig):
        raise AssertionError(f"config should be a qk.PipelineQuantizationConfig, got {type(config).__name__}.")
    component = sensitivity.component
    spec = config.spec_for(component, [component])
    if spec is None:
        raise AssertionError(
            f"Your config does not quantize {component!r}; quantize it and keep only its {n} most "
            "sensitive layers in full precision."
        )
    if spec.backend != sensitivity.spec.backend:
        raise AssertionError(
            f"Your config quantizes {component!r} with {spec.label()}, but the sensitivity was "
            f"measured for {sensitivity.quantization}: keep the same backend and options."
        )
    kept = spec.adapter.skip_modules(spec.kwargs)
    worst = sensitivity.most_sensitive(n)
    from ...measure.sensitivity import measured_layers

    measured = measured_layers(sensitivity.frame)
    best = list(measured["layer"].tail(n))
    if not kept:
        raise AssertionError("No layer is kept in full precision: pass their names as modules_to_not_convert.")
    if set(kept) == set(best) and set(best) != set(worst):
        raise AssertionError(
            "You kept the *least* sensitive layers: the table is sorted worst first (lowest SQNR at "
            "the top), so take the first rows, not the last."
        )
    missing = [name for name in worst if name not in kept]
    if missing:
        raise AssertionError(f"{missing} should be kept too: take the {n} quantized layers with the lowest SQNR.")
    if len(kept) > n:
        raise AssertionError(
            f"You keep {len(kept)} layers; keep exactly the {n} worst, so that every other layer is still quantized."
        )
    return ok(f"{spec.label()} on {component!r}, with {worst} kept in full precision.")


# -- 09 weight-only vs dynamic activation quantization -----------------------------------------------------------


def _int8_rows(t):
    """Symmetric absmax int8 with one scale per row: (codes as int32, scales of shape (rows, 1))."""
    import torch

    scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return torch.clamp(torch.round(t / scale), -127, 127).to(torch.int32), scale


def reference_int8_dynamic_linear(x, w):
    """W8A8 dynamic: `w` (out, in) per output row and `x` (tokens, in) per token to int8, int32 product, rescaled.

    The weight's scales are computed once (when the model is quantized); the activation's scales at every call
    ("dynamic"), from the activation itself. y = (q_x @ q_w.T) * s_x * s_w.T, shape (tokens, out).
    """
    qw, sw = _int8_rows(w)
    qx, sx = _int8_rows(x)
    return (qx @ qw.T).float() * sx * sw.T


def _dynamic_inputs():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g)
    x[3] *= 40  # one token with a much larger activation (e.g. a special token)
    w = torch.randn(32, 64, generator=g) * torch.linspace(0.1, 1.0, 32).unsqueeze(1)
    return x, w


def check_int8_dynamic_linear(fn: Callable) -> None:
    """09: `fn(x, w) -> y`, a Linear layer (no bias) computed in int8 with dynamic per-token activation scales.

    Args:
        fn: the learner's function; x has shape (tokens, in_features), w (out_features, in_features); it returns
            float32 y of shape (tokens, out_features), computed from int8 codes of both.
    """
    import torch

    x, w = _dynamic_inputs()
    out = fn(x.clone(), w.clone())
    if pending(out):
        return not_yet("fill in the body of int8_dynamic_linear so that it returns y.")
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"int8_dynamic_linear should return a tensor, got {type(out).__name__}.")
    if tuple(out.shape) != (x.shape[0], w.shape[0]):
        raise AssertionError(
            f"y should have shape (tokens, out_features) = {(x.shape[0], w.shape[0])}, got {tuple(out.shape)}: "
            "a Linear layer computes x @ w.T."
        )
    y = out.float()
    expected = reference_int8_dynamic_linear(x, w)

    def near(other) -> bool:
        return torch.allclose(y, other.float(), rtol=1e-4, atol=1e-4 * other.abs().max().item())

    if near(expected):
        exact = x @ w.T
        err = (expected - exact).pow(2).sum() / exact.pow(2).sum()
        sqnr = -10 * torch.log10(err).item()
        return ok(f"int8 x int8 -> int32, rescaled by s_x * s_w: {sqnr:.1f} dB SQNR against the float product.")
    qw, sw = _int8_rows(w)
    qx, sx = _int8_rows(x)
    sx_tensor = x.abs().amax().clamp(min=1e-12) / 127
    qx_tensor = torch.clamp(torch.round(x / sx_tensor), -127, 127).to(torch.int32)
    sw_tensor = w.abs().amax().clamp(min=1e-12) / 127
    qw_tensor = torch.clamp(torch.round(w / sw_tensor), -127, 127).to(torch.int32)
    hints = [
        (x @ w.T, "That is the float product itself: quantize x and w to int8 codes first, then multiply the codes."),
        ((qx @ qw.T).float(), "Those are the raw int32 accumulators: multiply them by s_x (per token) and s_w.T."),
        (
            (qx_tensor @ qw.T).float() * sx_tensor * sw.T,
            "x has one scale for the whole tensor: the large token sets the step for every token, and the small ones "
            "lose their precision. Give each token (row of x) its own scale: amax over dim=1.",
        ),
        (
            (qx @ qw_tensor.T).float() * sx * sw_tensor,
            "w has one scale for the whole tensor: give each output channel (row of w) its own, as in notebook 02.",
        ),
    ]
    for candidate, hint in hints:
        if candidate.shape == y.shape and near(candidate):
            raise AssertionError(hint)
    if not torch.allclose(y, expected, rtol=0.02, atol=0.02 * expected.abs().max().item()):
        raise AssertionError(
            "The result is off. Steps: s_w = |w|.amax(dim=1, keepdim=True) / 127, q_w = round(w / s_w) clamped to "
            "±127 (the same for x, per token); y = (q_x.int() @ q_w.int().T) * s_x * s_w.T."
        )
    raise AssertionError(
        "Close, but not the same numbers: round to the nearest code (torch.round) and clamp to [-127, 127] before "
        "multiplying, and multiply the integer codes (int32), not the rounded floats divided again."
    )


__all__ = ["check_int8_dynamic_linear", "check_kept_layers", "reference_int8_dynamic_linear"]
