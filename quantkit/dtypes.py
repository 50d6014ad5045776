"""The one table of tensor dtypes: safetensors codes, torch names and bytes per element.

Everything that sizes or reads a tensor (checkpoint headers, the plan, GGUF files) looks its dtype
up here, so a new dtype is added once. `dtype_name` turns what a user writes ("bf16",
torch.bfloat16, "torch.bfloat16") into the canonical name of a compute dtype.
"""

from __future__ import annotations

from typing import Any

from .errors import one_of

# safetensors dtype code -> (torch dtype name, bytes per element)
SAFETENSORS: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})  # the codes a torch_dtype= cast applies to

# dtypes unquantized weights may be loaded in (what torch_dtype= and compute_dtype= accept)
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
COMPUTE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_SPELLINGS = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def code_info(code: str, where: str = "a checkpoint") -> tuple[str, int]:
    """(torch dtype name, bytes per element) of a safetensors code.

    Raises:
        ValueError: an unknown code, naming where it was found and the known ones.
    """
    try:
        return SAFETENSORS[code]
    except KeyError:
        raise ValueError(
            f"Unknown tensor dtype {code!r} in {where}; quantkit reads {one_of(SAFETENSORS)}. "
            "Re-save the weights with safetensors from a current torch."
        ) from None


def code_bytes(code: str, where: str = "a checkpoint") -> int:
    """Bytes per element of a safetensors dtype code."""
    return code_info(code, where)[1]


def dtype_name(value: Any) -> str:
    """Canonical name of a compute dtype given as torch.dtype or string ("bf16", "torch.bfloat16" ...).

    Raises:
        TypeError: neither a string nor a torch.dtype.
        ValueError: a dtype that weights cannot be loaded in, naming the allowed ones.
    """
    if not isinstance(value, str) and type(value).__name__ != "dtype":
        raise TypeError(f"A dtype must be a string such as 'bfloat16' or a torch.dtype, got {type(value).__name__}.")
    text = str(value).strip().removeprefix("torch.")
    text = _SPELLINGS.get(text.lower(), text)
    if text not in COMPUTE_DTYPES:
        raise ValueError(f"Unsupported dtype {value!r}: use one of {one_of(COMPUTE_DTYPES)} (or torch.bfloat16 etc.).")
    return text


def to_torch_dtype(name: str | None):
    """The torch.dtype for a compute dtype name (None stays None)."""
    import torch

    return None if name is None else getattr(torch, dtype_name(name))


def dtype_kwargs(dtype) -> dict:
    """The keyword a diffusers loader takes a dtype by: `dtype=` from diffusers 0.42 on (where `torch_dtype=`
    is deprecated, with a FutureWarning per call), `torch_dtype=` before; {} for None."""
    if dtype is None:
        return {}
    return {"dtype": dtype} if _diffusers_takes_dtype() else {"torch_dtype": dtype}


def _diffusers_takes_dtype() -> bool:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("diffusers").split(".")[:2])
    return (major, minor) >= (0, 42)


__all__ = [
    "COMPUTE_BYTES",
    "COMPUTE_DTYPES",
    "FLOAT_CODES",
    "SAFETENSORS",
    "code_bytes",
    "code_info",
    "dtype_kwargs",
    "dtype_name",
    "to_torch_dtype",
]
