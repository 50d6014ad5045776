"""The interface every backend adapter implements, and the option machinery they share.

A backend is a small adapter (one file per library, STYLE.md principle 4). Adding a backend is adding
one file in this folder (decorated with `@register`) and its tests; nothing outside `backends/` names a
backend. What an adapter provides:

- options: `options` ({canonical name: Option}, diffusers' spelling, other libraries' as aliases) and
  `flags`; validated by `normalize_kwargs` without importing the library; `encode_option` /
  `decode_option` when a value is not plain JSON (torchao's config objects);
- its package: `module`, `pip_spec` (what `require()` and the install hints name);
- native configs: `native_config(kwargs, library)` and `from_native(config)`, `accepts_native(config)`
  (which diffusers/transformers config objects are this backend's); `diffusers_simple_form` (diffusers'
  own simple form takes it) and `in_pipeline_config` (diffusers can load it from a pipeline config at all);
- where it runs: `device_problem(kwargs, device)` -> a `Problem` or None; `layer_problem(...)` -> why a
  Linear of that shape stays in full precision; `keep_modules(model, kwargs)`: the modules kept in full
  precision (the user's list, plus the model's `_keep_in_fp32_modules` where `keeps_fp32_modules`);
- sizes: `weight_bytes(...)`, used by the plan;
- loading: `plan_component(c, headers, model, device)` refines a component's plan (loader, problems),
  `weights(c, dtype, device, progress)` says where the streaming loader reads the tensors and how a
  filled Linear becomes the quantized one (`quantize_linear`), or hands back a whole model;
- save and restore: `linear_state`, `empty_linear`, `restore_linear`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..dtypes import COMPUTE_DTYPES as DTYPES
from ..dtypes import dtype_name, to_torch_dtype  # noqa: F401  (the adapters import them from here)
from ..errors import BACKENDS_EXTRA, did_you_mean, one_of, require_package
from ..problems import Problem, missing_package


@dataclass
class Weights:
    """How the loader gets one quantized component: tensors to stream, or a whole model.

    Attributes:
        source: an object with `keys()`, `get(key)` and `close()` (a SafetensorsSource, a GGUFSource), or None.
        quantize: turns a Linear filled with its weights into the quantized module.
        model: a finished model, when the backend loads the component itself (e.g. diffusers' single-file path).
    """

    source: Any = None
    quantize: Callable | None = None
    model: Any = None


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
    # diffusers' own PipelineQuantizationConfig(quant_backend=...) takes this backend (only bitsandbytes today)
    diffusers_simple_form: ClassVar[bool] = False
    # diffusers can load this backend through a pipeline-level config at all (GGUF: from_single_file only)
    in_pipeline_config: ClassVar[bool] = True
    # diffusers' own quantizer for it refuses to run without a GPU ("No GPU found"), although quantkit's does
    diffusers_needs_cuda: ClassVar[bool] = False
    # the model's `_keep_in_fp32_modules` stay in full precision (as diffusers and transformers do for bnb)
    keeps_fp32_modules: ClassVar[bool] = False

    # -- options -----------------------------------------------------------------------------
    @classmethod
    def normalize_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate user kwargs and return them in canonical spelling, defaults left out.

        Raises:
            ValueError: unknown option (with the valid ones and the nearest), bad choice, a number that is not finite.
            TypeError: kwargs that are not a dict with string keys, a value of the wrong type.
        """
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"The options of backend {cls.name!r} must be a dict such as {{{next(iter(cls.options))!r}: ...}}, "
                f"got {type(kwargs).__name__} {_short(kwargs)}."
            )
        alias_to_name = {alias: name for name, opt in cls.options.items() for alias in opt.aliases}
        out: dict[str, Any] = {}
        for key, value in dict(kwargs).items():
            if not isinstance(key, str):
                raise TypeError(
                    f"Option names of backend {cls.name!r} are strings, got {type(key).__name__} {key!r}. "
                    f"Valid options: {', '.join(sorted([*cls.options, *cls.flags]))}."
                )
            if key in cls.flags:
                if not isinstance(value, bool) or value != cls.flags[key]:
                    raise ValueError(
                        f"{key}={_short(value)} contradicts quant_backend={cls.name!r}; "
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
                raise TypeError(f"Option {name!r} of backend {cls.name!r} takes True or False, got {_short(value)}.")
            return value
        if opt.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Option {name!r} of backend {cls.name!r} takes a number, got {_short(value)}.")
            if not math.isfinite(value):
                raise ValueError(
                    f"{name}={value!r} is not a finite number; backend {cls.name!r} needs one such as "
                    f"{name}={opt.default!r} (the default)."
                )
            return float(value)
        if opt.kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError(
                    f"Option {name!r} of backend {cls.name!r} takes a list of module names such as "
                    f"['proj_out'], got {_short(value)}."
                )
            if not all(v.strip() for v in value):
                raise ValueError(
                    f"Option {name!r} of backend {cls.name!r} got an empty module name in {value!r}; "
                    "name each module, e.g. ['proj_out']."
                )
            return list(value)
        if opt.kind == "path":
            if not isinstance(value, str | os.PathLike):
                raise TypeError(
                    f"Option {name!r} of backend {cls.name!r} takes a file path (str or Path), got {_short(value)}."
                )
            path = os.fspath(value)
            if not isinstance(path, str) or not path.strip():
                raise ValueError(f"Option {name!r} of backend {cls.name!r} got an empty path; name the file.")
            return path
        if opt.choices is not None:
            if all(isinstance(c, str) for c in opt.choices) and not isinstance(value, str):
                raise TypeError(
                    f"Option {name!r} of backend {cls.name!r} takes one of {one_of(opt.choices)}, "
                    f"got {type(value).__name__} {_short(value)}."
                )
            if value not in opt.choices:
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
        """The modules the user asked to keep in full precision."""
        for name in ("modules_to_not_convert", "llm_int8_skip_modules"):
            if name in cls.options:
                return list(kwargs.get(name) or [])
        return []

    @classmethod
    def keep_modules(cls, model, kwargs: dict[str, Any]) -> list[str]:
        """Module names kept in full precision in `model`: the user's list, plus the model's
        `_keep_in_fp32_modules` where this backend keeps them (`keeps_fp32_modules`)."""
        names = list(cls.skip_modules(kwargs))
        if cls.keeps_fp32_modules:
            names += list(getattr(model, "_keep_in_fp32_modules", None) or [])
        return names

    @classmethod
    def encode_option(cls, name: str, value: Any) -> Any:
        """The JSON-able form of an option value (dtypes are names already)."""
        if type(value).__name__ == "dtype":
            return str(value).removeprefix("torch.")
        return value

    @classmethod
    def decode_option(cls, name: str, value: Any) -> Any:
        """The inverse of `encode_option`."""
        return value

    @classmethod
    def option_choices(cls, name: str) -> tuple | None:
        """The values a dropdown offers for an option (its choices, or the dtypes), None for free input."""
        opt = cls.options[name]
        if opt.choices is not None:
            return tuple(opt.choices)
        if opt.kind == "dtype":
            return DTYPES
        return None

    # -- availability ------------------------------------------------------------------------
    @classmethod
    def require(cls) -> None:
        require_package(cls.module, cls.pip_spec, f"The {cls.name!r} backend", BACKENDS_EXTRA)

    @classmethod
    def package_problem(cls) -> Problem | None:
        """A MISSING_PACKAGE problem when the library is not importable here, else None."""
        try:
            cls.require()
        except ImportError:
            return missing_package(cls.module, cls.pip_spec, f"the {cls.name!r} backend", extra=BACKENDS_EXTRA)
        return None

    @classmethod
    def device_problem(cls, kwargs: dict[str, Any], device: str) -> Problem | None:
        """Why these options cannot run on `device` (a Problem with the fix), or None when they can."""
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

    @classmethod
    def accepts_native(cls, config) -> bool:
        """Whether a diffusers/transformers quantization config object belongs to this backend."""
        method = getattr(config, "quant_method", None)
        return getattr(method, "value", method) == cls.name

    # -- sizes and quantization --------------------------------------------------------------
    @classmethod
    def weight_bytes(cls, kwargs: dict[str, Any], out_features: int, in_features: int, dtype_bytes: int) -> int:
        """Bytes one quantized Linear weight takes, statistics included (bias not included)."""
        raise NotImplementedError

    @classmethod
    def quantize_linear(cls, linear, kwargs: dict[str, Any], device):
        """Return a module that replaces `linear` (which holds real weights on `device`)."""
        raise NotImplementedError

    # -- planning and loading a component ------------------------------------------------------
    @classmethod
    def plan_component(cls, c, headers: dict, model, device: str) -> None:
        """Refine the plan of component `c` (a ComponentPlan) after its layers were decided: the loader label
        and, when this backend cannot take the component, `c.issue`. Default: nothing to add."""

    @classmethod
    def weights(cls, c, dtype, device: str, *, progress: bool = False) -> Weights:
        """Where the loader gets component `c`'s weights: by default its safetensors, streamed, each planned
        Linear quantized by `quantize_linear` as soon as it is filled."""
        from ..checkpoint import SafetensorsSource

        kwargs = c.spec.kwargs
        return Weights(SafetensorsSource(c.folder), lambda linear: cls.quantize_linear(linear, kwargs, device))

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


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (an error message quotes what was given, not a megabyte of it)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
