"""What every checker shares: the answer contract's three outcomes, and the public FLUX.1-dev figures.

Sizes: GB means 10**9 bytes (the unit of the published weight files), GiB 2**30 bytes (the unit of the public
memory figures and of quantkit's tables).
"""

from __future__ import annotations

from typing import Any

GB = 1e9
GIB = 2**30

# Public FLUX.1-dev component sizes in BF16 (2 bytes per parameter), in GB = 10**9 bytes, from the weight files.
FLUX_DEV_BF16_GB = {"transformer": 23.8, "text_encoder_2": 9.52, "text_encoder": 0.246, "vae": 0.168}

# The Hugging Face blog "Exploring Quantization Backends in Diffusers": FLUX.1-dev on one H100, 1024x1024, 50 steps.
# {row: (GiB after load, GiB peak, seconds per image)}; memory is GiB of torch.cuda.max_memory_reserved (not GB, not
# allocated). The bitsandbytes, torchao and quanto rows quantize the transformer *and* T5; the GGUF rows quantize the
# transformer only (loaded with from_single_file), T5 stays in BF16 (9.52 GB) — see FLUX_DEV_PUBLIC_QUANTIZED.
FLUX_DEV_PUBLIC = {
    "BF16": (31.4, 36.2, 12),
    "bnb nf4": (12.6, 17.3, 12),
    "bnb 8-bit": (19.3, 24.4, 27),
    "torchao int4wo": (10.6, 14.7, 109),
    "torchao int8wo": (17.0, 21.5, 15),
    "quanto int4": (12.3, 16.1, 109),
    "quanto int8": (17.3, 21.8, 15),
    "GGUF Q4_1": (16.8, 21.3, 23),
    "GGUF Q8_0": (21.5, 26.0, 15),
}
BOTH = "transformer + T5"
TRANSFORMER_ONLY = "transformer only (T5 in BF16)"
FLUX_DEV_PUBLIC_QUANTIZED = {
    row: "-" if row == "BF16" else TRANSFORMER_ONLY if row.startswith("GGUF") else BOTH for row in FLUX_DEV_PUBLIC
}
PUBLIC_COLUMNS = ("GiB after load", "GiB peak", "s / image")
PUBLIC_NOTE = (
    "FLUX.1-dev, one H100, 1024x1024, 50 steps; memory in GiB of torch.cuda.max_memory_reserved; "
    "GGUF rows quantize the transformer only (T5 stays BF16, 9.52 GB)"
)


def public_flux_table():
    """The public FLUX.1-dev figures as a DataFrame: GiB after load, GiB peak, s / image, and what was quantized.

    `.attrs["note"]` says what the numbers are (H100, 1024², 50 steps, GiB of max_memory_reserved).
    """
    import pandas as pd

    frame = pd.DataFrame.from_dict(FLUX_DEV_PUBLIC, orient="index", columns=list(PUBLIC_COLUMNS))
    frame["quantized"] = pd.Series(FLUX_DEV_PUBLIC_QUANTIZED)
    frame.index.name = "config"
    frame.attrs["note"] = PUBLIC_NOTE
    return frame


def pending(value: Any) -> bool:
    """The placeholder: `...` or None (a function body of `...` returns None)."""
    return value is ... or value is None


def not_yet(what: str) -> None:
    print(f"Not answered yet: {what} Then run this cell again.")


def ok(message: str) -> None:
    print(f"Correct! {message}")


def number(value: Any, name: str) -> float:
    """`value` as a float, or an AssertionError that says a number was expected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:  # numpy scalars, 0-d tensors
            import numbers

            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return float(value)
        except ImportError:  # pragma: no cover
            pass
        raise AssertionError(f"{name} should be a number (e.g. 12.5), got {type(value).__name__}: {value!r}.")
    return float(value)


__all__ = [
    "BOTH",
    "FLUX_DEV_BF16_GB",
    "FLUX_DEV_PUBLIC",
    "FLUX_DEV_PUBLIC_QUANTIZED",
    "GB",
    "GIB",
    "PUBLIC_NOTE",
    "TRANSFORMER_ONLY",
    "public_flux_table",
]
