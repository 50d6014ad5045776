"""Planning a quantized load: what will happen to each component, before any weight is read.

`plan(source, config, device=...)` reads the pipeline's `model_index.json`, each component's
config and its safetensors headers, builds each quantized model on the `meta` device (shapes
only, no memory) to find its Linear layers, and lets the backend decide per layer whether it takes
it. The result, a `LoadPlan`, says per component: library, class, backend and the concrete config
object, the loader used, whether it runs on the target device (if not, a `Problem`: why, and what
instead), and bytes before and (estimated) after. Printing it teaches what `load_pipeline` will do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import numel, read_headers
from ..config import PipelineQuantizationConfig, QuantSpec, as_spec
from ..devices import default_device, parse_device
from ..dtypes import COMPUTE_BYTES, COMPUTE_DTYPES, FLOAT_CODES, SAFETENSORS, dtype_name
from ..errors import did_you_mean, one_of
from .checks import SAVED_CONFIG, check_components, check_saved_component, check_skip_names, check_weight_files
from .layers import decide_layers
from .model import ComponentPlan, Loader, LoadPlan
from .sources import (
    MODEL_LIBRARIES,
    component_headers,
    meta_model,
    read_json,
    read_model_index,
    resolve_source,
    weightless,
)


def plan(
    source: str | Path | None = None,
    config: PipelineQuantizationConfig | None = None,
    *,
    device: str | None = None,
    torch_dtype: Any = None,
    height: int | None = None,
    width: int | None = None,
    num_images: int = 1,
    offload: str | None = None,
) -> LoadPlan:
    """Plan loading `source` with `config` on `device`, reading no weights.

    Args:
        source: pipeline folder, hub id, or None for quantkit.EMBEDDED_PIPELINE.
        config: a PipelineQuantizationConfig, or None to load unquantized.
        device: "cpu", "cuda", "cuda:1" ...; default: CUDA when available.
        torch_dtype: dtype of the unquantized tensors (torch.bfloat16 or "bfloat16"); None = the dtype most of
            the checkpoint is stored in.
        height, width: with either given, the plan also predicts the peak memory of one generation at that
            size (`LoadPlan.peak`, itemized; `quantkit.planning.peak`); the other defaults to the same value.
        num_images: images per generation, for the peak.
        offload: None, "model", "sequential" or "group": the offload mode the peak assumes.

    Works offline for the published pipelines in `quantkit.catalog` (a hub id such as
    "black-forest-labs/FLUX.1-dev": sizes come from their configs on the meta device).

    Returns:
        A LoadPlan. It does not raise for components that cannot run on `device`: it records why
        (`problems()`); `load_pipeline` raises for them before loading anything.

    Raises:
        TypeError: an argument of the wrong type (a config that is not a quantkit config, a device that is not a
            string ...).
        ValueError: a component named in the config that the pipeline does not have, or that is not a model; a
            `modules_to_not_convert` entry that names no module (with the nearest names); a malformed file in the
            pipeline folder (naming it).
        FileNotFoundError / NotADirectoryError: a component folder or weights file missing (naming it).
    """
    if config is not None and not isinstance(config, PipelineQuantizationConfig):
        raise TypeError(
            f"config must be a quantkit.PipelineQuantizationConfig (or None), got {type(config).__name__}."
            " Convert a diffusers one with PipelineQuantizationConfig.from_diffusers(config)."
        )
    device = parse_device(device) if device is not None else default_device()
    dtype_given = dtype_name(torch_dtype) if torch_dtype is not None else None
    peak_args = _peak_args(height, width, num_images, offload)
    folder = resolve_source(source, weights=False)
    pipeline_class, index = read_model_index(folder)
    configs_only = weightless(folder) is not None
    if not configs_only:  # a folder of published configs has no weights to check
        check_components(folder, index)
    models = [
        n
        for n, (lib, _) in index.items()
        if lib in MODEL_LIBRARIES
        and ((folder / n / "config.json").is_file() if configs_only else _has_weights(folder / n))
    ]
    # a component saved as a .gguf file (save_pipeline) has no safetensors: its plan is read from the file's config
    has_safetensors = {n: not configs_only and any((folder / n).glob("*.safetensors")) for n in models}
    for name in models:
        if has_safetensors[name]:
            check_weight_files(folder / name)
    headers_of = {n: component_headers(folder, n) if configs_only or has_safetensors[n] else {} for n in models}
    dtype = dtype_given or checkpoint_dtype(folder, models, headers_of)

    if config is not None:
        for name in config.named_components():
            if name not in index:
                raise ValueError(
                    f"Component {name!r} is not in this {pipeline_class}.{did_you_mean(name, index)} "
                    f"Its components: {one_of(index)}."
                )
            if name not in models:
                raise ValueError(
                    f"Component {name!r} is a {index[name][1]}, not a model with weights: it cannot be "
                    f"quantized. Quantize one of {one_of(models)}."
                )

    components = {}
    module_names: dict[str, list[str]] = {}  # component -> its module names, from the meta model built for the plan
    for name, (library, class_name) in index.items():
        c = ComponentPlan(
            name=name,
            library=library,
            class_name=class_name,
            folder=folder / name,
            is_model=name in models,
        )
        if c.is_model:
            headers = headers_of[name]
            c.params = sum(numel(shape) for _, shape in headers.values())
            c.bytes_before = sum(_tensor_bytes(code, shape, dtype) for code, shape in headers.values())
            c.bytes_after = c.bytes_before
            c.spec = config.spec_for(name, models) if config is not None else None
            saved = saved_spec(c.folder, library)
            if saved is not None:
                if c.spec is not None:
                    raise ValueError(
                        f"Component {name!r} in {folder} is already quantized ({saved.label()}); load the "
                        "folder without a config for it, or quantize the original pipeline instead."
                    )
                c.spec, c.loader = saved, Loader.RESTORE
                c.config = None
            elif c.spec is not None:
                module_names[name] = _plan_quantized(c, headers, dtype, device)
        components[name] = c
    if config is not None:
        _check_skip_lists(config, components, module_names)
    result = LoadPlan(
        source=str(source) if source is not None else "the embedded pipeline",
        folder=folder,
        pipeline_class=pipeline_class,
        device=device,
        torch_dtype=dtype,
        config=config,
        components=components,
    )
    if peak_args is not None:
        result.peak = result.predict_peak(**peak_args, headers=headers_of)
    return result


def _peak_args(height, width, num_images, offload) -> dict | None:
    """The peak prediction's arguments, validated before anything is read (None: no prediction asked for)."""
    from .peak import OFFLOAD_MODES

    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={offload!r} is not an offload mode; use one of {one_of(OFFLOAD_MODES)}.")
    for name, value in (("height", height), ("width", width), ("num_images", num_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a whole number >= 1.")
    if height is None and width is None:
        return None
    return {"height": height or width, "width": width or height, "num_images": num_images, "offload": offload}


def checkpoint_dtype(folder: Path, models: list[str], headers_of: dict | None = None) -> str | None:
    """The float dtype most of the pipeline's weight bytes are stored in (None when there are none).

    Used when no torch_dtype is given, so that every component loads in the dtype it was saved in
    (diffusers' own default would turn a bf16 pipeline into fp32 beside quantized bf16 layers)."""
    weight: dict[str, int] = {}
    for name in models:
        headers = headers_of[name] if headers_of is not None else read_headers(folder / name)
        for code, shape in headers.values():
            if SAFETENSORS[code][0] in COMPUTE_DTYPES:
                weight[code] = weight.get(code, 0) + numel(shape) * SAFETENSORS[code][1]
    return SAFETENSORS[max(weight, key=weight.get)][0] if weight else None


def saved_spec(folder: Path, library: str | None = None) -> QuantSpec | None:
    """The QuantSpec of a saved quantized component folder (None for ordinary folders): one written by
    quantkit.save_pipeline in quantkit's format, or in the library's own (`quantization_config` in config.json)."""
    if not (folder / SAVED_CONFIG).is_file():
        return _native_saved_spec(folder, library)
    return check_saved_component(folder)["spec"]


def _native_saved_spec(folder: Path, library: str | None) -> QuantSpec | None:
    """The QuantSpec of a `quantization_config` in the component's config.json (what a quantized save_pretrained
    writes), via the library's own config class; None without one."""
    config = folder / "config.json"
    data = read_json(config, "a model component").get("quantization_config") if config.is_file() else None
    if not data:
        return None
    if library == "diffusers":
        from diffusers.quantizers.auto import DiffusersAutoQuantizer as Auto  # from_dict gives the config
    else:
        from transformers.quantizers.auto import AutoQuantizationConfig as Auto
    try:
        native = Auto.from_dict(dict(data))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{config} has a quantization_config that {library} cannot read ({type(err).__name__}: {err})."
        ) from None
    return as_spec(native, folder.name)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))


def _tensor_bytes(code: str, shape: tuple[int, ...], dtype: str | None) -> int:
    per = COMPUTE_BYTES[dtype] if dtype and code in FLOAT_CODES else SAFETENSORS[code][1]
    return numel(shape) * per


def _check_skip_lists(config: PipelineQuantizationConfig, components: dict, module_names: dict) -> None:
    """Every `modules_to_not_convert` entry names a module of a component its spec applies to (the simple form's
    one spec applies to all its components together: an entry may name a module of any of them)."""
    groups: dict[int, list[str]] = {}
    for name, c in components.items():
        if c.spec is not None and c.loader is not Loader.RESTORE:
            groups.setdefault(id(c.spec), []).append(name)
    for names in groups.values():
        spec = components[names[0]].spec
        wanted = spec.adapter.skip_modules(spec.kwargs)
        if not wanted:
            continue
        for name in names:
            if name not in module_names:  # its plan stopped early (a missing package): the tree is still known
                c = components[name]
                module_names[name] = [n for n, _ in meta_model(c.library, c.class_name, c.folder).named_modules()]
        option = next(o for o in ("modules_to_not_convert", "llm_int8_skip_modules") if o in spec.adapter.options)
        check_skip_names(option, wanted, {n: module_names[n] for n in names})


def _plan_quantized(c: ComponentPlan, headers: dict, dtype: str | None, device: str) -> list[str] | None:
    """Fill the quantization part of a component plan: config object, loader, layers, bytes, problems.

    Returns the model's module names (None when the plan stopped before building it)."""
    adapter = c.spec.adapter
    c.issue = adapter.package_problem()
    if c.issue is not None:
        return None
    c.issue = adapter.device_problem(c.spec.kwargs, device)
    c.config = adapter.native_config(c.spec.kwargs, c.library)
    model = meta_model(c.library, c.class_name, c.folder)
    c.quantized_layers, c.skipped_layers, c.layers_total = decide_layers(model, c.spec, device)
    c.loader = Loader.STREAM
    adapter.plan_component(c, headers, model, device)
    modules = dict(model.named_modules())
    per = COMPUTE_BYTES.get(dtype or "", None)
    for layer in c.quantized_layers:
        m = modules[layer]
        code, shape = headers.get(f"{layer}.weight", ("F32", (m.out_features, m.in_features)))
        before = _tensor_bytes(code, shape, dtype)
        dtype_bytes = per or SAFETENSORS[code][1]
        c.layer_types[layer] = adapter.layer_quantization(c.spec.kwargs, layer, m.out_features, m.in_features)
        c.bytes_after += (
            adapter.weight_bytes(c.spec.kwargs, m.out_features, m.in_features, dtype_bytes, layer) - before
        )
    names = [n for n, _ in modules.items()]
    del model, modules
    return names


__all__ = ["checkpoint_dtype", "plan", "saved_spec"]
