"""The backend registry: the user's words ("quanto", "bitsandbytes_4bit", ...) to adapters.

Importing this package imports none of the quantization libraries: each adapter imports its
library inside the functions that need it.
"""

from __future__ import annotations

from ..errors import did_you_mean, one_of
from .base import Backend, Option

REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator that adds an adapter under its `name`."""
    REGISTRY[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend]:
    """The adapter for a backend name.

    Raises:
        ValueError: for an unknown name, listing the valid ones and the nearest.
    """
    if not isinstance(name, str):
        raise TypeError(f"quant_backend must be a string such as 'quanto', got {type(name).__name__}.")
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown quant_backend {name!r}.{did_you_mean(name, REGISTRY)} Valid backends: {one_of(REGISTRY)}."
        )
    return REGISTRY[name]


from . import bitsandbytes, gguf, quanto, torchao  # noqa: E402,F401  (fills REGISTRY)

BACKENDS = tuple(REGISTRY)

__all__ = ["BACKENDS", "Backend", "Option", "get_backend", "register"]
