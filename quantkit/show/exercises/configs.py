"""Checkers for 03 (the simple form: a config to debug) and 04 (quant_mapping: each library its own classes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._common import not_yet, ok, pending

# -- 03 simple pipeline quantization --------------------------------------------------------------------------


def _as_quantkit_config(config: Any):
    from ...config import PipelineQuantizationConfig

    if isinstance(config, PipelineQuantizationConfig):
        return config
    if type(config).__name__ == "PipelineQuantizationConfig":  # diffusers' own class
        return PipelineQuantizationConfig.from_diffusers(config)
    raise AssertionError(
        f"config should be a PipelineQuantizationConfig (quantkit's or diffusers'), got {type(config).__name__}."
    )


def check_simple_config(
    config: Any, components: Iterable[str] = ("transformer", "text_encoder_2"), backend: str = "bitsandbytes_8bit"
) -> None:
    """03: a simple-form config that quantizes exactly `components` with `backend` (bitsandbytes 8-bit).

    Args:
        config: the learner's config (quantkit's or diffusers' PipelineQuantizationConfig).
        components: the components it must name in components_to_quantize.
        backend: the quant_backend it must use.
    """
    if pending(config):
        return not_yet("build the PipelineQuantizationConfig and put it where the `...` is.")
    config = _as_quantkit_config(config)
    wanted = sorted(components)
    if config.is_granular:
        raise AssertionError(
            "This exercise asks for the simple form: quant_backend + quant_kwargs + "
            "components_to_quantize, not quant_mapping."
        )
    if config.quant_backend != backend:
        raise AssertionError(
            f"quant_backend is {config.quant_backend!r}; 8-bit bitsandbytes is "
            f"{backend!r} (with quant_kwargs={{'load_in_8bit': True}}): the backend name already says the width."
        )
    if config.components_to_quantize is None:
        raise AssertionError(
            "components_to_quantize is missing: without it every model component is quantized, "
            "the VAE and CLIP included. Name the two big ones."
        )
    given = sorted(config.components_to_quantize)
    if given != wanted:
        missing = sorted(set(wanted) - set(given))
        extra = sorted(set(given) - set(wanted))
        parts = [f"missing {missing}" if missing else "", f"not wanted {extra}" if extra else ""]
        raise AssertionError(
            f"components_to_quantize is {given}: {'; '.join(p for p in parts if p)}. Quantize "
            "the components that hold most of the bytes (look at the plan's bytes column)."
        )
    return ok(f"bitsandbytes 8-bit on {wanted}.")


# -- 04 quant mapping ----------------------------------------------------------------------------------------


def check_mapping(config: Any, compute_dtype: Any = "bfloat16") -> None:
    """04: a diffusers quant_mapping: transformer in quanto int8 (diffusers' QuantoConfig), text_encoder_2 in
    bitsandbytes nf4 computing in `compute_dtype` (transformers' BitsAndBytesConfig).

    Args:
        config: the learner's diffusers PipelineQuantizationConfig.
        compute_dtype: the dtype the T5 encoder should compute in ("bfloat16", or torch.float16 on a T4).
    """
    if pending(config):
        return not_yet("build the diffusers PipelineQuantizationConfig(quant_mapping=...) where the `...` is.")
    if type(config).__module__.split(".")[0] != "diffusers" or type(config).__name__ != "PipelineQuantizationConfig":
        raise AssertionError(
            f"Use diffusers' own class here (from diffusers import PipelineQuantizationConfig), "
            f"got {type(config).__module__}.{type(config).__name__}."
        )
    mapping = getattr(config, "quant_mapping", None) or {}
    if sorted(mapping) != ["text_encoder_2", "transformer"]:
        raise AssertionError(
            f"quant_mapping should map exactly 'transformer' and 'text_encoder_2', got {sorted(mapping)}."
        )
    for name, library in (("transformer", "diffusers"), ("text_encoder_2", "transformers")):
        module = type(mapping[name]).__module__.split(".")[0]
        if module != library:
            raise AssertionError(
                f"{name!r} is a {library} model, so its config must come from {library}; you gave "
                f"{module}.{type(mapping[name]).__name__}. Each library only accepts its own config classes."
            )
    t, e = mapping["transformer"], mapping["text_encoder_2"]
    if type(t).__name__ != "QuantoConfig" or getattr(t, "weights_dtype", None) != "int8":
        raise AssertionError(f"The transformer should get QuantoConfig(weights_dtype='int8'), got {t!r}.")
    if type(e).__name__ != "BitsAndBytesConfig" or not getattr(e, "load_in_4bit", False):
        raise AssertionError("text_encoder_2 should get transformers' BitsAndBytesConfig(load_in_4bit=True, ...).")
    if e.bnb_4bit_quant_type != "nf4":
        raise AssertionError(
            f"text_encoder_2's quant type is {e.bnb_4bit_quant_type!r} (the default); set bnb_4bit_quant_type='nf4'."
        )
    dtype = str(e.bnb_4bit_compute_dtype).removeprefix("torch.")
    wanted = str(compute_dtype).removeprefix("torch.")
    if dtype != wanted:
        raise AssertionError(
            f"text_encoder_2 computes in {dtype}, not {wanted}: did the config ignore your compute dtype? "
            "The keyword is bnb_4bit_compute_dtype (a bare `compute_dtype` is silently dropped)."
        )
    return ok("two libraries, two config classes, one pipeline config.")


__all__ = ["check_mapping", "check_simple_config"]
