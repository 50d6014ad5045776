"""The code a config stands for, written out twice: with quantkit, and with diffusers' own classes.

`quantkit_code(config, ...)` and `diffusers_code(config, plan)` return Python source a learner can copy. The
diffusers version is built from the objects quantkit itself would hand to diffusers and transformers
(`PipelineQuantizationConfig.to_diffusers`), printed back as constructor calls with their non-default
arguments, so it stays true to whatever those libraries' classes look like. Where diffusers cannot express the
config through a pipeline config (GGUF), the code says so and shows the per-component `from_single_file` route.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

from ...config import PipelineQuantizationConfig
from ...planning.sources import EMBEDDED_PIPELINE


class _Imports:
    """`from module import Name [as Alias]` lines collected while writing expressions."""

    def __init__(self):
        self.lines: dict[tuple[str, str], str] = {}  # (module, name) -> alias used in the code
        self.plain: set[str] = set()  # `import x`

    def name(self, module: str, name: str, prefix: str = "") -> str:
        """The identifier to use for `module.name`; clashing names from another module get `prefix` in front."""
        if (module, name) in self.lines:
            return self.lines[(module, name)]
        taken = {alias for (m, _), alias in self.lines.items() if m != module}
        alias = name if name not in taken else f"{prefix}{name}"
        self.lines[(module, name)] = alias
        return alias

    def render(self) -> list[str]:
        out = [f"import {m}" for m in sorted(self.plain)]
        by_module: dict[str, list[str]] = {}
        for (module, name), alias in self.lines.items():
            by_module.setdefault(module, []).append(name if alias == name else f"{name} as {alias}")
        for module in sorted(by_module, key=lambda m: (m != "quantkit", m)):
            out.append(f"from {module} import {', '.join(sorted(by_module[module]))}")
        return out


def _top_module(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def _expr(value: Any, imports: _Imports) -> str:
    """Python source for a config value: literals, torch dtypes, enums, torchao config dataclasses."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        items = ", ".join(_expr(v, imports) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_expr(k, imports)}: {_expr(v, imports)}" for k, v in value.items()) + "}"
    if type(value).__name__ == "dtype" and _top_module(value) == "torch":
        imports.plain.add("torch")
        return str(value)  # "torch.bfloat16"
    if isinstance(value, enum.Enum):
        cls = imports.name(_public_module(type(value)), type(value).__name__)
        return f"{cls}.{value.name}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _call(value, _dataclass_args(value), imports)
    return repr(value)


def _public_module(cls: type) -> str:
    """The shortest importable module that exports `cls` (torchao.quantization rather than its quant_api)."""
    parts = cls.__module__.split(".")
    import importlib

    for i in range(1, len(parts) + 1):
        module = ".".join(parts[:i])
        try:
            if getattr(importlib.import_module(module), cls.__name__, None) is cls:
                return module
        except ImportError:
            continue
    return cls.__module__


def _dataclass_args(value: Any) -> dict[str, Any]:
    args = {}
    for f in dataclasses.fields(value):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        current = getattr(value, f.name)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING or current != default:
            args[f.name] = current
    return args


def _native_args(obj: Any, keep: set[str] = frozenset()) -> dict[str, Any]:
    """The constructor arguments of a diffusers/transformers quantization config that differ from the defaults
    (and those named in `keep`, even at their default)."""
    cls = type(obj)
    try:
        with warnings.catch_warnings():  # e.g. diffusers' deprecation notice for QuantoConfig
            warnings.simplefilter("ignore")
            reference = cls()
    except Exception:  # a class with a required argument (TorchAoConfig's quant_type)
        reference = None
    args = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or not hasattr(obj, name):
            continue
        value = getattr(obj, name)
        default = getattr(reference, name, p.default) if reference is not None else p.default
        if name in keep or default is inspect.Parameter.empty or not _same(value, default):
            args[name] = value
    return args


def _spelled(spec) -> set[str]:
    """Every spelling of the options a learner chose (plus the backend's first, main option), so that e.g.
    `QuantoConfig(weights_dtype="int8")` shows the dtype even though int8 is the default."""
    names = {next(iter(spec.adapter.options)), *spec.kwargs}
    return {alias for n in names for alias in (n, *spec.adapter.options[n].aliases)}


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return a is b


def _call(obj: Any, args: dict[str, Any], imports: _Imports, prefix: str = "") -> str:
    name = imports.name(_public_module(type(obj)), type(obj).__name__, prefix)
    inner = ", ".join(f"{k}={_expr(v, imports)}" for k, v in args.items())
    return f"{name}({inner})"


def _native_expr(obj: Any, imports: _Imports, spec=None) -> str:
    """`QuantoConfig(weights_dtype="int8")`; transformers' classes get a `Transformers` prefix when names clash."""
    prefix = "Transformers" if _top_module(obj) == "transformers" else "Diffusers"
    return _call(obj, _native_args(obj, _spelled(spec) if spec is not None else set()), imports, prefix)


def _source_lines(source, imports: _Imports) -> tuple[list[str], str]:
    if source is None:
        imports.plain.add("quantkit")
        return ["source = quantkit.EMBEDDED_PIPELINE  # the tiny pipeline that ships with quantkit"], "source"
    return [f"source = {json.dumps(str(source))}"], "source"


def quantkit_code(
    config: PipelineQuantizationConfig, source=None, *, device: str | None = None, torch_dtype: str | None = None
) -> str:
    """Python source that builds `config` with quantkit, plans the load and loads the pipeline.

    Args:
        config: the config to write out.
        source: the pipeline folder (None: the embedded pipeline).
        device: "cpu" / "cuda"; left out of the code when None.
        torch_dtype: dtype name for the unquantized tensors; left out when None.
    """
    imports = _Imports()
    imports.plain.add("quantkit")
    cls = imports.name("quantkit", "PipelineQuantizationConfig")
    if config.is_granular:
        spec_cls = imports.name("quantkit", "QuantSpec")
        rows = []
        for name, spec in config.specs.items():
            kwargs = "".join(f", {k}={_expr(v, imports)}" for k, v in spec.kwargs.items())
            rows.append(f"        {json.dumps(name)}: {spec_cls}({json.dumps(spec.backend)}{kwargs}),")
        body = [f"config = {cls}(", "    quant_mapping={", *rows, "    }", ")"]
    else:
        body = [
            f"config = {cls}(",
            f"    quant_backend={json.dumps(config.quant_backend)},",
            f"    quant_kwargs={_expr(dict(config.spec.kwargs), imports)},",
            f"    components_to_quantize={_expr(config.components_to_quantize, imports)},",
            ")",
        ]
    src, var = _source_lines(source, imports)
    extra = "".join(
        f", {k}={json.dumps(v)}" for k, v in (("device", device), ("torch_dtype", torch_dtype)) if v is not None
    )
    tail = [
        *src,
        f"print(quantkit.plan({var}, config{extra}))  # what will happen, before any weight is read",
        f"pipe = quantkit.load_pipeline({var}, config{extra})",
    ]
    return "\n".join([*imports.render(), "", *body, *tail]) + "\n"


def diffusers_code(config: PipelineQuantizationConfig, plan) -> str:
    """Python source that loads the same pipeline with diffusers' (and transformers') own classes.

    Args:
        config: the config to write out.
        plan: `quantkit.plan(source, config, ...)` for it (gives the pipeline class, each component's library and
            class, the folder, the device and the dtype).
    """
    imports = _Imports()
    imports.plain.add("torch")
    libraries = plan.libraries()
    names = config.named_components() if config.is_granular else (config.components_to_quantize or list(libraries))
    specs = {name: config.spec_for(name, list(libraries)) for name in names}
    # what diffusers cannot load from a pipeline config (GGUF) is loaded per component with from_single_file
    gguf = {n: s for n, s in specs.items() if s is not None and not s.adapter.in_pipeline_config}
    rest = {n: s for n, s in specs.items() if s is not None and s.adapter.in_pipeline_config}
    lines: list[str] = []
    config_arg = ""
    if rest:
        if config.is_granular or gguf:
            pipe_config = PipelineQuantizationConfig(quant_mapping=rest)
        else:
            pipe_config = config
        native = pipe_config.to_diffusers(libraries)
        pq = imports.name("diffusers", "PipelineQuantizationConfig")
        if getattr(native, "quant_mapping", None):
            rows = [
                f"        {json.dumps(n)}: {_native_expr(obj, imports, rest[n])},"
                for n, obj in native.quant_mapping.items()
            ]
            lines += [f"config = {pq}(", "    quant_mapping={", *rows, "    }", ")"]
        else:
            reference = _native_args(next(iter(rest.values())).native("diffusers"), _spelled(config.spec))
            kwargs = {k: v for k, v in native.quant_kwargs.items() if k in reference}
            lines += [
                f"config = {pq}(",
                f"    quant_backend={json.dumps(native.quant_backend)},",
                f"    quant_kwargs={_expr(kwargs, imports)},",
                f"    components_to_quantize={_expr(native.components_to_quantize, imports)},",
                ")",
            ]
        config_arg = ", quantization_config=config"
        if any(s.adapter.diffusers_needs_cuda for s in rest.values()) and not plan.device.startswith("cuda"):
            lines[:0] = [
                '# diffusers\' bitsandbytes quantizer needs a CUDA GPU ("No GPU found");',
                "# on a CPU, quantkit.load_pipeline quantizes these layers itself.",
            ]
    components = []
    for name, spec in gguf.items():
        c = plan.components[name]
        if c.library != "diffusers":
            lines.append(
                f"# {name} ({c.class_name}): transformers has no GGUF config; only quantkit.load_pipeline "
                f"quantizes it to {spec.label()}."
            )
            continue
        model_cls = imports.name("diffusers", c.class_name)
        q = _native_expr(spec.native("diffusers"), imports, spec)
        lines += [
            "# diffusers loads GGUF per component from a .gguf file, never through a pipeline config:",
            f"{name} = {model_cls}.from_single_file(",
            f'    "path/to/{name}-{spec.resolved()["quant_type"]}.gguf",  # see quantkit.backends.gguf.write_gguf',
            f"    quantization_config={q},",
            f"    config=str(source), subfolder={json.dumps(name)},",
            ")",
        ]
        components.append(f", {name}={name}")
    pipeline = imports.name("diffusers", plan.pipeline_class)
    from ...dtypes import dtype_kwargs

    keyword = next(iter(dtype_kwargs("x")))  # diffusers 0.42+ says `dtype=`, older versions `torch_dtype=`
    dtype = f", {keyword}=torch.{plan.torch_dtype}" if plan.torch_dtype else ""
    embedded = Path(plan.folder).resolve() == Path(EMBEDDED_PIPELINE).resolve()
    head, _ = _source_lines(None if embedded else plan.folder, imports)  # no machine path for the shipped one
    tail = [
        f"pipe = {pipeline}.from_pretrained(source{config_arg}{''.join(components)}{dtype})",
        f"pipe.to({json.dumps(plan.device)})",
    ]
    return "\n".join([*imports.render(), "", *head, *lines, *tail]) + "\n"


__all__ = ["diffusers_code", "quantkit_code"]
