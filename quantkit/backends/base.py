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
- save and restore: `linear_state`, `empty_linear`, `restore_linear`;
- first-class models of their library (`quantkit.load.native`): `attach_native` (config.quantization_config,
  hf_quantizer, is_quantized, as the library's own loader leaves them), `native_skip` / `native_converts` (which
  layers the library's quantizer converts on reload), `native_layer_meta` / `restore_native` (reading the library's
  own saved format back), `saved_tensors`, `save_native_file` (the backend's own file where the library has no
  saved format), `lora_weight` / `set_lora_weight` / `lora_restorable` (merging a LoRA into layers peft cannot
  merge, and undoing a merge), `before_move` / `after_move` (keeping a layer's side tensors with its weight when
  the model changes device).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from ..dtypes import COMPUTE_DTYPES as DTYPES
from ..dtypes import dtype_name, to_torch_dtype  # noqa: F401  (the adapters import them from here)
from ..errors import BACKENDS_EXTRA, did_you_mean, one_of, require_package
from ..problems import Problem, missing_package


class Transient(Enum):
    """What a quantized matmul holds beside its inputs while it runs (the peak model sizes it)."""

    DEQUANTIZED_WEIGHT = "one weight dequantized to the compute dtype"
    INT32_ACCUMULATORS = "int32 accumulators, tokens x out_features"  # LLM.int8's int8 matmul


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
    # what a quantized matmul holds beside its inputs (for the peak model)
    matmul_transient: ClassVar[Transient] = Transient.DEQUANTIZED_WEIGHT

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
    def layer_problem(
        cls, kwargs: dict[str, Any], in_features: int, out_features: int, device: str, layer: str | None = None
    ) -> str | None:
        """Why this backend keeps a Linear of this shape (named `layer`, when known) in full precision, or None to
        quantize it."""
        return None

    @classmethod
    def layer_quantization(cls, kwargs: dict[str, Any], layer: str, out_features: int, in_features: int) -> str:
        """What one quantized layer becomes, in the backend's words (a backend that mixes types per layer, like
        GGUF's Q4_K_M, says which type and why); by default the same for every layer."""
        return cls.describe(kwargs)

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
    def weight_bytes(
        cls, kwargs: dict[str, Any], out_features: int, in_features: int, dtype_bytes: int, layer: str | None = None
    ) -> int:
        """Bytes one quantized Linear weight (named `layer`, when known) takes, statistics included (bias not
        included)."""
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

    # -- first-class models of their library (quantkit.load.native) -----------------------------------
    @classmethod
    def native_skip(cls, model, layers: list[str], library: str) -> list[str] | None:
        """`modules_to_not_convert` that makes `library`'s quantizer convert exactly `layers` of `model` when it
        reloads a saved copy, or None when that set cannot be expressed. Default: the full dotted names of the other
        Linear layers (checked with `native_converts`)."""
        import torch

        chosen = set(layers)
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in chosen]

    @classmethod
    def native_converts(cls, name: str, skip: list[str], library: str) -> bool:
        """Whether `library`'s quantizer converts the Linear `name` given `skip` (its modules_to_not_convert).
        Default: transformers' rule (a whole-segment prefix or a suffix), diffusers' bitsandbytes/torchao rule
        (the local name, the exact name, or a dotted part of it)."""
        if library == "transformers":
            from transformers.quantizers.quantizers_utils import should_convert_module

            return should_convert_module(name, skip or None)
        return name.rpartition(".")[2] not in skip and not any(f"{k}." in name or k == name for k in skip)

    @classmethod
    def native_quantizer(cls, config, library: str):
        """The library's own quantizer object for a pre-quantized model with `config` (what its loader attaches)."""
        if library == "diffusers":
            from diffusers.quantizers.auto import DiffusersAutoQuantizer

            return DiffusersAutoQuantizer.from_config(config, pre_quantized=True)
        from transformers.quantizers.auto import AutoHfQuantizer

        return AutoHfQuantizer.from_config(config, pre_quantized=True)

    @classmethod
    def attach_native(cls, model, kwargs: dict[str, Any], library: str, layers: list[str], dtype=None) -> str | None:
        """Make `model` (its `layers` quantized by quantkit) a quantized model of `library`, as the library's own
        loader leaves one: `config.quantization_config` (the library's config object), `hf_quantizer` (its own
        quantizer class, pre_quantized=True), `is_quantized`, `quantization_method`; the backend adds its flags.

        Returns:
            None when `library` can save this model and reload it as it is; else why not (quantkit then makes its
            `save_pretrained` refuse with that reason, and `quantkit.save_pipeline` writes quantkit's own format).
        """
        skip = cls.native_skip(model, layers, library)
        reason = None
        if skip is None or {n for n in cls._linears(model) if cls.native_converts(n, skip, library)} != set(layers):
            reason = (
                f"{library}'s {cls.name} quantizer would convert other Linear layers than the {len(layers)} "
                "quantkit quantized (its modules_to_not_convert cannot name the layers kept in full precision)"
            )
            skip = skip or []
        option = next((n for n in ("modules_to_not_convert", "llm_int8_skip_modules") if n in cls.options), None)
        native_kwargs = {**kwargs, option: skip or None} if option else dict(kwargs)
        config = cls.native_config(native_kwargs, library)
        if config is None:
            return reason or f"{library} has no quantization config for {cls.name}"
        quantizer = cls.native_quantizer(config, library)
        quantizer.modules_to_not_convert = list(skip or [])
        if library == "diffusers":
            model.register_to_config(quantization_config=config, _pre_quantization_dtype=dtype)
        else:
            model.config.quantization_config = config
            model.config._is_quantized = True  # what transformers' postprocess_model marks
        model.is_quantized = True
        model.quantization_method = config.quant_method
        model.hf_quantizer = quantizer
        serializable = quantizer.is_serializable
        if callable(serializable):  # a method in transformers, a property in diffusers
            serializable = serializable()
        if not serializable:
            return reason or f"{library}'s {cls.name} quantizer cannot save a quantized model (is_serializable: False)"
        return reason

    @staticmethod
    def _linears(model) -> list[str]:
        import torch

        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    @classmethod
    def saved_tensors(cls, folder) -> tuple[dict[str, Any], dict[str, str]]:
        """(every tensor, the file metadata) of a component folder saved in the library's own format: its
        safetensors files, copied into torch-allocated memory (tensors of a memory-mapped file can sit at 8-byte
        offsets, which torch's CPU int8 matmul `_weight_int8pack_mm` crashes on; it needs 16)."""
        from safetensors import safe_open

        from ..checkpoint import weight_files

        tensors, metadata = {}, {}
        for path in weight_files(folder):
            with safe_open(str(path), framework="pt") as f:
                metadata.update(f.metadata() or {})
                for key in f.keys():
                    tensors[key] = f.get_tensor(key).clone()
        return tensors, metadata

    @classmethod
    def native_layer_meta(cls, tensors: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """For the tensors one Linear left in the library's saved state dict (local names): the `meta` that
        `restore_linear` takes, or None when the layer was not quantized by this backend."""
        return None

    @classmethod
    def restore_native(
        cls, model, kwargs: dict[str, Any], state: dict[str, Any], metadata: dict[str, str], device
    ) -> list[str]:
        """Put the quantized layers of a state dict in the library's own saved format into the meta-device `model`
        (popping the tensors used from `state`); returns the names of the layers restored."""
        import torch

        restored = []
        for name, module in list(model.named_modules()):
            if not isinstance(module, torch.nn.Linear):
                continue
            prefix = f"{name}."  # a Linear has no children: every key under its name is its own
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            meta = cls.native_layer_meta(own, kwargs) if own else None
            if meta is None:
                continue
            for k in own:
                state.pop(prefix + k)
            model.set_submodule(name, cls.restore_linear(module, kwargs, own, meta, device))
            restored.append(name)
        return restored

    @classmethod
    def save_native_file(cls, model, folder, library: str):
        """Write `model` in the backend's own file format into `folder` where the library has no saved format for
        it (GGUF: a .gguf file diffusers' `from_single_file` loads); returns the file, or None (no such format)."""
        return None

    @classmethod
    def lora_weight(cls, layer):
        """The full-precision weight of a quantized `layer`, when quantkit merges a LoRA into it itself because
        peft's layer for it cannot (peft adds to `weight.data`, which these layers do not take); None when peft
        merges it (its bitsandbytes and torchao LoRA layers dequantize and requantize themselves)."""
        return None

    @classmethod
    def lora_restorable(cls, layer) -> bool:
        """Whether putting a quantized `layer`'s previous weight back undoes a LoRA merge exactly (False where the
        layer keeps state beside its weight that a merge resets)."""
        return True

    @classmethod
    def prepare_lora_merge(cls, layer) -> None:
        """Put a quantized `layer` in the form peft's merge reads, before a LoRA is merged into it (e.g. undo a
        CPU-only weight layout); nothing by default."""

    @classmethod
    def set_lora_weight(cls, layer, weight) -> None:
        """Quantize `weight` (full precision, the layer's shape) back into `layer`, in place."""
        raise NotImplementedError

    @classmethod
    def before_move(cls, model, device) -> None:
        """Prepare `model`'s quantized layers for a move to `device` (e.g. undo a CPU-only weight layout)."""

    @classmethod
    def after_move(cls, model) -> None:
        """After `model.to(...)`: move side tensors nn.Module.to does not see, so that they follow their weight."""


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (an error message quotes what was given, not a megabyte of it)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
