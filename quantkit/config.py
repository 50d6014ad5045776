"""The pipeline quantization config: diffusers' `PipelineQuantizationConfig`, for five backends.

Same constructor and semantics as `diffusers.PipelineQuantizationConfig`:
- simple form: `quant_backend` + `quant_kwargs` (+ `components_to_quantize`, a list or one name;
  left out, every model component is quantized);
- mapped form: `quant_mapping` = {component: config}, backends mixed.
Beyond diffusers: the simple form works for every backend (kwargs are written once in either
library's spelling and translated per component), mapping values may be diffusers configs,
transformers configs or a library-neutral `QuantSpec`, and the config is a plain value that
round-trips through dict/JSON. Everything is validated here, before any weight is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .backends import REGISTRY, get_backend
from .errors import one_of

CONFIG_KEYS = ("quant_backend", "quant_kwargs", "components_to_quantize", "quant_mapping")


class QuantSpec:
    """One backend with its options, independent of which library a component comes from.

    `QuantSpec("quanto", weights_dtype="int8")` becomes diffusers' `QuantoConfig(weights_dtype="int8")` for
    a diffusers component and transformers' `QuantoConfig(weights="int8")` for a transformers one.

    Args:
        backend: one of quantkit.BACKENDS.
        **kwargs: the backend's options, in diffusers' or transformers' spelling.
    """

    def __init__(self, backend: str, **kwargs: Any):
        self.backend = get_backend(backend).name
        self.kwargs = get_backend(backend).normalize_kwargs(kwargs)

    @property
    def adapter(self):
        return get_backend(self.backend)

    def resolved(self) -> dict[str, Any]:
        """Every option with defaults filled in."""
        return self.adapter.resolved(self.kwargs)

    def label(self) -> str:
        """Short text such as "quanto int8" or "bitsandbytes_4bit nf4"."""
        return f"{self.backend} {self.adapter.describe(self.kwargs)}"

    def native(self, library: str):
        """The diffusers or transformers config object for this spec (None if that library has none)."""
        self.adapter.require()
        return self.adapter.native_config(self.kwargs, library)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, **_encode_kwargs(self.adapter, self.kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "A QuantSpec dict") -> QuantSpec:
        """The inverse of `to_dict`: {"backend": name, option: value, ...}.

        Raises:
            TypeError: not a dict, a key that is not a string, a value of the wrong type.
            ValueError: no 'backend' key, an unknown backend or option, a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{where} must be a dict such as {{'backend': 'quanto', 'weights_dtype': 'int8'}}, "
                f"got {type(data).__name__} {_short(data)}."
            )
        data = dict(data)
        if "backend" not in data:
            raise ValueError(
                f"{where} needs a 'backend' key (one of {one_of(REGISTRY)}), got keys "
                f"{sorted(map(str, data))}, e.g. {{'backend': 'quanto', 'weights_dtype': 'int8'}}."
            )
        adapter = get_backend(data.pop("backend"))
        return cls(adapter.name, **_decode_kwargs(adapter, _string_keys(data, f"the options in {where}")))

    def __eq__(self, other) -> bool:
        """Same backend and the same options once defaults are filled in (spelling does not matter)."""
        return isinstance(other, QuantSpec) and self._canonical() == other._canonical()

    def _canonical(self) -> tuple:
        return self.backend, _encode_kwargs(self.adapter, self.resolved())

    def __repr__(self) -> str:
        args = "".join(f", {k}={_show(v)}" for k, v in self.kwargs.items())
        return f"QuantSpec({self.backend!r}{args})"


def as_spec(value: Any, component: str = "?") -> QuantSpec:
    """A QuantSpec from a QuantSpec, a dict, or a diffusers/transformers quantization config object."""
    if isinstance(value, QuantSpec):
        return value
    if isinstance(value, Mapping):
        return QuantSpec.from_dict(value, f"quant_mapping[{component!r}]")
    method = getattr(value, "quant_method", None)
    method = getattr(method, "value", method)
    if method is None:
        raise TypeError(
            f"quant_mapping[{component!r}] is a {type(value).__name__}; use a QuantSpec, a dict with a "
            "'backend' key, or a diffusers/transformers quantization config (BitsAndBytesConfig, "
            "QuantoConfig, TorchAoConfig, GGUFQuantizationConfig)."
        )
    adapter = next((a for a in REGISTRY.values() if a.accepts_native(value)), None)
    if adapter is None:
        raise ValueError(
            f"quant_mapping[{component!r}] uses quant_method {method!r}, which quantkit does not "
            f"support. Supported backends: {one_of(REGISTRY)}."
        )
    spec = QuantSpec.__new__(QuantSpec)
    spec.backend = adapter.name
    spec.kwargs = adapter.from_native(value)
    return spec


class PipelineQuantizationConfig:
    """Which components of a pipeline to quantize, and how.

    Args:
        quant_backend: backend for the simple form, one of quantkit.BACKENDS.
        quant_kwargs: options of that backend (either library's spelling).
        components_to_quantize: component names (a list or one string); None = every model component.
        quant_mapping: the mapped form, {component: QuantSpec | diffusers config | transformers config | dict}.

    Raises:
        ValueError: both forms or neither given, unknown backend, unknown option, empty kwargs.
        TypeError: a mapping value that is not a quantization config.
    """

    def __init__(
        self,
        quant_backend: str | None = None,
        quant_kwargs: dict[str, Any] | None = None,
        components_to_quantize: list[str] | str | None = None,
        quant_mapping: dict[str, Any] | None = None,
    ):
        if quant_backend is not None and quant_mapping is not None:
            raise ValueError(
                "Both `quant_backend` and `quant_mapping` were given; use one form: quant_backend + "
                "quant_kwargs (+ components_to_quantize) for one backend, or quant_mapping for a "
                "config per component."
            )
        if quant_backend is None and quant_mapping is None:
            raise ValueError(
                "Give either `quant_backend` (with `quant_kwargs`), e.g. PipelineQuantizationConfig("
                "quant_backend='quanto', quant_kwargs={'weights_dtype': 'int8'}), or `quant_mapping`."
            )
        if quant_kwargs is not None and not isinstance(quant_kwargs, Mapping):
            raise TypeError(
                f"quant_kwargs must be a dict of the backend's options, e.g. {{'weights_dtype': 'int8'}}, got "
                f"{type(quant_kwargs).__name__} {_short(quant_kwargs)}."
            )
        components_to_quantize = _component_names(components_to_quantize)
        if quant_mapping is not None:
            if not isinstance(quant_mapping, Mapping):
                raise TypeError(
                    f"quant_mapping must be a dict {{component: config}}, e.g. {{'transformer': "
                    f"QuantSpec('quanto', weights_dtype='int8')}}, got {type(quant_mapping).__name__} "
                    f"{_short(quant_mapping)}."
                )
            _string_keys(quant_mapping, "quant_mapping", what="component names")
        if quant_mapping is not None and (quant_kwargs or components_to_quantize):
            raise ValueError(
                "`quant_kwargs` and `components_to_quantize` belong to the simple form; with "
                "`quant_mapping`, put each component's options in its config."
            )
        self.quant_backend = quant_backend
        self.quant_kwargs = dict(quant_kwargs or {})
        self.components_to_quantize = components_to_quantize
        self.quant_mapping = dict(quant_mapping) if quant_mapping is not None else None
        self.is_granular = quant_mapping is not None
        if self.is_granular:
            if not self.quant_mapping:
                raise ValueError(
                    "`quant_mapping` is empty: map at least one component, e.g. "
                    "{'transformer': QuantSpec('quanto', weights_dtype='int8')}."
                )
            self.specs = {name: as_spec(value, name) for name, value in self.quant_mapping.items()}
        else:
            backend = get_backend(quant_backend)
            if not self.quant_kwargs:
                example = next(iter(backend.options))
                raise ValueError(
                    f"`quant_kwargs` is empty for quant_backend={quant_backend!r}; pass the backend's "
                    f"options, e.g. quant_kwargs={{{example!r}: {backend.options[example].default!r}}}. "
                    f"Its options: {', '.join(backend.options)}."
                )
            self.spec = QuantSpec(quant_backend, **self.quant_kwargs)

    # -- resolution ----------------------------------------------------------------------------
    def spec_for(self, component: str, model_components: list[str]) -> QuantSpec | None:
        """The spec that applies to `component` (None = load it unquantized)."""
        if self.is_granular:
            return self.specs.get(component)
        wanted = self.components_to_quantize if self.components_to_quantize is not None else model_components
        return self.spec if component in wanted else None

    def named_components(self) -> list[str]:
        """Components the user named explicitly (checked against the pipeline by the plan)."""
        return list(self.specs) if self.is_granular else list(self.components_to_quantize or [])

    # -- round trips ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        if self.is_granular:
            return {"quant_mapping": {name: spec.to_dict() for name, spec in self.specs.items()}}
        return {
            "quant_backend": self.quant_backend,
            "quant_kwargs": _encode_kwargs(self.spec.adapter, self.quant_kwargs),
            "components_to_quantize": self.components_to_quantize,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineQuantizationConfig:
        """The inverse of `to_dict`.

        Raises:
            TypeError: `data` or one of its parts has the wrong type (a list where a dict belongs, ...).
            ValueError: unknown keys, both forms or neither, an unknown backend or option, a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"A PipelineQuantizationConfig dict must be a dict with keys from {list(CONFIG_KEYS)}, e.g. "
                f"{{'quant_backend': 'quanto', 'quant_kwargs': {{'weights_dtype': 'int8'}}}}, got "
                f"{type(data).__name__} {_short(data)}."
            )
        data = dict(data)
        unknown = sorted(map(str, set(data) - set(CONFIG_KEYS)))
        if unknown:
            raise ValueError(
                f"Unknown keys {unknown} in a PipelineQuantizationConfig dict; allowed: {sorted(CONFIG_KEYS)}."
            )
        mapping = data.get("quant_mapping")
        if mapping is not None:
            if not isinstance(mapping, Mapping):
                raise TypeError(
                    f"quant_mapping must be a dict {{component: {{'backend': ..., option: value}}}}, got "
                    f"{type(mapping).__name__} {_short(mapping)}."
                )
            _string_keys(mapping, "quant_mapping", what="component names")
            data["quant_mapping"] = {k: QuantSpec.from_dict(v, f"quant_mapping[{k!r}]") for k, v in mapping.items()}
        kwargs = data.get("quant_kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(
                f"quant_kwargs must be a dict of the backend's options, e.g. {{'weights_dtype': 'int8'}}, got "
                f"{type(kwargs).__name__} {_short(kwargs)}."
            )
        if kwargs and data.get("quant_backend") is not None:
            adapter = get_backend(data["quant_backend"])
            data["quant_kwargs"] = _decode_kwargs(adapter, _string_keys(kwargs, "quant_kwargs"))
        return cls(**data)

    def to_json(self, **kwargs) -> str:
        """The config as JSON text (`to_dict()`); keyword arguments go to json.dumps (e.g. indent=2).

        Numbers are finite (the options are validated), so the text is standard JSON (allow_nan=False).
        """
        kwargs.setdefault("allow_nan", False)
        try:
            return json.dumps(self.to_dict(), **kwargs)
        except (TypeError, ValueError) as err:  # a value the backend could not encode: name it
            raise TypeError(f"This config cannot be written as JSON ({err}): {self!r}.") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> PipelineQuantizationConfig:
        """The inverse of `to_json`.

        Raises:
            TypeError: `text` is not a string, or its parts have the wrong types.
            ValueError: not valid JSON, or not a valid config (see `from_dict`).
        """
        if not isinstance(text, str | bytes | bytearray):
            raise TypeError(
                f"from_json takes JSON text (a str), got {type(text).__name__}; for a dict use from_dict(), for "
                "a file from_json(Path(...).read_text())."
            )
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"Not valid JSON ({err}): {_short(text)}. Expected an object such as "
                '{"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}}.'
            ) from None
        return cls.from_dict(data)

    def to_diffusers(self, model_components: dict[str, str] | None = None):
        """The equivalent `diffusers.PipelineQuantizationConfig`.

        Simple form: diffusers can express it only for bitsandbytes (its simple form raises for the other
        backends), so for those pass `model_components` ({component: "diffusers" | "transformers"}, e.g. from
        `plan(...).libraries()`) and get the mapped form with each library's own config class.

        Raises:
            ValueError: when diffusers cannot express this config (GGUF in a pipeline config, or a simple form
                outside bitsandbytes without `model_components`).
        """
        from diffusers import PipelineQuantizationConfig as DiffusersConfig

        if not self.is_granular and self.spec.adapter.diffusers_simple_form:
            kwargs = {k: v for k, v in self.spec.adapter._native_kwargs(self.spec.kwargs).items() if v is not None}
            return DiffusersConfig(
                quant_backend=self.quant_backend,
                quant_kwargs=kwargs,
                components_to_quantize=self.components_to_quantize,
            )
        if self.is_granular:
            specs = self.specs
            libraries = model_components or {}
        else:
            if model_components is None:
                raise ValueError(
                    f"diffusers' simple form does not support quant_backend={self.quant_backend!r}. Pass "
                    "model_components={name: 'diffusers' | 'transformers'} (e.g. plan(...).libraries()) "
                    "to get the mapped form."
                )
            names = self.components_to_quantize or list(model_components)
            specs = {name: self.spec for name in names}
            libraries = model_components
        mapping = {}
        for name, spec in specs.items():
            if not spec.adapter.in_pipeline_config:
                raise ValueError(
                    f"diffusers cannot load GGUF through a pipeline config (component {name!r}); load the "
                    "component with from_single_file(..., quantization_config=GGUFQuantizationConfig()) "
                    "or use quantkit.load_pipeline."
                )
            library = libraries.get(name, "diffusers" if name in ("transformer", "unet", "vae") else "transformers")
            mapping[name] = spec.native(library)
        return DiffusersConfig(quant_mapping=mapping)

    @classmethod
    def from_diffusers(cls, config) -> PipelineQuantizationConfig:
        """A quantkit config from a `diffusers.PipelineQuantizationConfig`.

        Raises:
            TypeError: `config` is not a diffusers PipelineQuantizationConfig (a quantkit one is returned as is).
        """
        if isinstance(config, PipelineQuantizationConfig):
            return config
        if not all(hasattr(config, a) for a in ("quant_backend", "quant_kwargs", "quant_mapping")) or isinstance(
            config, type
        ):
            raise TypeError(
                f"from_diffusers takes a diffusers.PipelineQuantizationConfig, got {type(config).__name__} "
                f"{_short(config)}; for a dict use from_dict()."
            )
        mapping = config.quant_mapping
        if mapping:
            if not isinstance(mapping, Mapping):
                raise TypeError(f"The diffusers config's quant_mapping is a {type(mapping).__name__}, not a dict.")
            return cls(quant_mapping={name: as_spec(value, name) for name, value in mapping.items()})
        return cls(
            quant_backend=config.quant_backend,
            quant_kwargs=config.quant_kwargs,
            components_to_quantize=config.components_to_quantize,
        )

    def __eq__(self, other) -> bool:
        """Equal when they quantize the same components the same way."""
        if not isinstance(other, PipelineQuantizationConfig) or self.is_granular != other.is_granular:
            return False
        if self.is_granular:
            return self.specs == other.specs
        return (self.spec, self.components_to_quantize) == (other.spec, other.components_to_quantize)

    def __repr__(self) -> str:
        if self.is_granular:
            inner = ",\n".join(f"    {name!r}: {spec!r}" for name, spec in self.specs.items())
            return f"PipelineQuantizationConfig(quant_mapping={{\n{inner},\n}})"
        kwargs = "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in self.spec.kwargs.items()) + "}"
        return (
            f"PipelineQuantizationConfig(quant_backend={self.quant_backend!r}, quant_kwargs={kwargs}, "
            f"components_to_quantize={self.components_to_quantize!r})"
        )


def _encode_kwargs(adapter, kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON-able options: the backend encodes what is not plain JSON (dtypes, torchao config objects)."""
    return {k: adapter.encode_option(k, v) for k, v in kwargs.items()}


def _decode_kwargs(adapter, kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        try:
            out[key] = adapter.decode_option(key, value)
        except (TypeError, ValueError):
            raise
        except Exception as err:  # a library's own decoder (torchao's config_from_dict) raising KeyError ...
            raise ValueError(
                f"Option {key!r} of backend {adapter.name!r}: cannot read {_short(value)} ({type(err).__name__}: "
                f"{err}). Write it as to_dict() does."
            ) from None
    return out


def _string_keys(data: Mapping, where: str, what: str = "option names") -> dict[str, Any]:
    """`data` as a dict, or a TypeError when a key is not a string (JSON objects and **kwargs need string keys)."""
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise TypeError(f"The {what} in {where} must be strings, got {type(bad[0]).__name__} {bad[0]!r}.")
    empty = [k for k in data if not k.strip()]
    if empty:
        raise ValueError(f"The {what} in {where} must not be empty, got {empty[0]!r}.")
    return dict(data)


def _component_names(value: Any) -> list[str] | None:
    """components_to_quantize as a list of names (one string = one name; None = every model component)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(
            "components_to_quantize must be a list of component names such as ['transformer', 'text_encoder_2'] "
            f"(or one name, or None for every model component), got {_short(value)}."
        )
    if not value:
        raise ValueError(
            "components_to_quantize=[] names no component; leave it out (None) to quantize every model component, "
            "or name the ones to quantize, e.g. ['transformer']."
        )
    if not all(v.strip() for v in value):
        raise ValueError(f"components_to_quantize has an empty name: {list(value)!r}; name each component.")
    return list(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    if isinstance(value, str | int | float | bool | list | type(None)):
        return repr(value)
    return f"{type(value).__name__}()"
