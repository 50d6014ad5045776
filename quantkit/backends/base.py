"""The interface every backend adapter implements, and the option machinery they share.

A backend is a small adapter (one file per library, STYLE.md principle 4) that knows:
- its options, spelled once in quantkit's canonical words (diffusers' names) with the other
  library's spellings as aliases, validated without importing the library;
- how to build the native config object each library expects (`native_config`) and read one
  back (`from_native`);
- whether it runs on a device (`device_problem`) and which layers it can take (`layer_problem`);
- how many bytes a quantized weight takes (`weight_bytes`), used by the plan;
- how to quantize one `nn.Linear` that already holds its weights (`quantize_linear`), used by
  the streaming loader, and how to save and restore a quantized layer's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import did_you_mean, one_of, require_package

DTYPES = ("float32", "float16", "bfloat16")


def dtype_name(value: Any) -> str:
    """Canonical string for a dtype given as torch.dtype or string ("bf16", "torch.bfloat16" ...)."""
    text = str(value).removeprefix("torch.")
    text = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(
        text, text
    )
    if text not in DTYPES:
        raise ValueError(f"Unsupported dtype {value!r}: use one of {one_of(DTYPES)} (or torch.bfloat16 etc.).")
    return text


def to_torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, dtype_name(name))


@dataclass(frozen=True)
class Option:
    """One backend option: its canonical name, default, allowed values and the other spellings."""

    default: Any = None
    choices: tuple | None = None  # allowed values, None = free
    kind: str = "value"  # "value", "dtype", "bool", "list", "float", "path"
    aliases: tuple[str, ...] = ()  # other libraries' spellings of the same option
    doc: str = ""


class Backend:
    """Base class of the adapters: class variables plus class-method hooks; never instantiated."""

    name: ClassVar[str]
    module: ClassVar[str]  # import name of the library
    pip_spec: ClassVar[str]  # what to pip install
    options: ClassVar[dict[str, Option]]
    bits: ClassVar[str] = ""  # short human description, e.g. "4-bit NF4/FP4"
    # Options that only exist to say "yes, this backend" (load_in_4bit=True): accepted, not stored.
    flags: ClassVar[dict[str, Any]] = {}

    # -- options -----------------------------------------------------------------------------
    @classmethod
    def normalize_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate user kwargs and return them in canonical spelling, defaults left out.

        Raises:
            ValueError: unknown option (with the valid ones and the nearest), bad choice.
            TypeError: a value of the wrong type.
        """
        alias_to_name = {alias: name for name, opt in cls.options.items() for alias in opt.aliases}
        out: dict[str, Any] = {}
        for key, value in dict(kwargs).items():
            if key in cls.flags:
                if value != cls.flags[key]:
                    raise ValueError(
                        f"{key}={value!r} contradicts quant_backend={cls.name!r}; "
                        f"drop it or set {key}={cls.flags[key]!r}."
                    )
                continue
            name = key if key in cls.options else alias_to_name.get(key)
            if name is None:
                valid = sorted([*cls.options, *cls.flags])
                raise ValueError(
                    f"Unknown option {key!r} for backend {cls.name!r}.{did_you_mean(key, valid)} "
                    f"Valid options: {', '.join(valid)}."
                )
            if name in out:
                raise ValueError(
                    f"Option {name!r} for backend {cls.name!r} was given twice (as {key!r} too); keep one spelling."
                )
            out[name] = cls._check_value(name, value)
        return out

    @classmethod
    def _check_value(cls, name: str, value: Any) -> Any:
        opt = cls.options[name]
        if value is None:
            return None
        if type(value).__name__ == "dtype" and opt.kind != "dtype":  # e.g. bnb_4bit_quant_storage=torch.uint8
            value = str(value).removeprefix("torch.")
        if opt.kind == "dtype":
            return dtype_name(value)
        if opt.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"Option {name!r} of backend {cls.name!r} takes True or False, got {value!r}.")
            return value
        if opt.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Option {name!r} of backend {cls.name!r} takes a number, got {value!r}.")
            return float(value)
        if opt.kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError(
                    f"Option {name!r} of backend {cls.name!r} takes a list of module names, got {value!r}."
                )
            return list(value)
        if opt.kind == "path":
            return str(value)
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(
                f"{name}={value!r} is not supported by backend {cls.name!r}."
                f"{did_you_mean(value, opt.choices)} Use one of {one_of(opt.choices)}."
            )
        return value

    @classmethod
    def resolved(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Canonical kwargs with every default filled in."""
        return {name: kwargs.get(name, opt.default) for name, opt in cls.options.items()}

    @classmethod
    def describe(cls, kwargs: dict[str, Any]) -> str:
        """A short label of the quantization, e.g. "nf4" or "int8"."""
        return cls.name

    @classmethod
    def skip_modules(cls, kwargs: dict[str, Any]) -> list[str]:
        for name in ("modules_to_not_convert", "llm_int8_skip_modules"):
            if name in cls.options:
                return list(kwargs.get(name) or [])
        return []

    # -- availability ------------------------------------------------------------------------
    @classmethod
    def require(cls) -> None:
        require_package(cls.module, cls.pip_spec, f"The {cls.name!r} backend")

    @classmethod
    def device_problem(cls, kwargs: dict[str, Any], device: str) -> tuple[str, str] | None:
        """(why it cannot run on `device`, what to use instead), or None when it can."""
        return None

    @classmethod
    def layer_problem(cls, kwargs: dict[str, Any], in_features: int, out_features: int, device: str) -> str | None:
        """Why this backend keeps a Linear of this shape in full precision, or None to quantize it."""
        return None

    # -- native configs ----------------------------------------------------------------------
    @classmethod
    def native_config(cls, kwargs: dict[str, Any], library: str):
        """The config object `library` ("diffusers" or "transformers") takes for these kwargs, or None."""
        raise NotImplementedError

    @classmethod
    def from_native(cls, config) -> dict[str, Any]:
        """Canonical kwargs from a native config object of this backend."""
        raise NotImplementedError

    # -- sizes and quantization --------------------------------------------------------------
    @classmethod
    def weight_bytes(cls, kwargs: dict[str, Any], out_features: int, in_features: int, dtype_bytes: int) -> int:
        """Bytes one quantized Linear weight takes, statistics included (bias not included)."""
        raise NotImplementedError

    @classmethod
    def quantize_linear(cls, linear, kwargs: dict[str, Any], device):
        """Return a module that replaces `linear` (which holds real weights on `device`)."""
        raise NotImplementedError

    # -- save and restore --------------------------------------------------------------------
    @classmethod
    def empty_linear(cls, linear, kwargs: dict[str, Any], meta: dict[str, Any]):
        """A module of the quantized kind with the same shape as `linear`, ready for `restore_linear`."""
        raise NotImplementedError

    @classmethod
    def linear_state(cls, module) -> tuple[dict[str, Any], dict[str, Any]]:
        """(plain tensors keyed by local name, JSON-able metadata) that restore this quantized layer."""
        raise NotImplementedError

    @classmethod
    def restore_linear(cls, linear, kwargs: dict[str, Any], tensors: dict[str, Any], meta: dict[str, Any], device):
        """Rebuild the quantized layer from what `linear_state` returned."""
        raise NotImplementedError
