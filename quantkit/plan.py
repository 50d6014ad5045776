"""Planning a quantized load: what will happen to each component, before any weight is read.

`plan(source, config, device=...)` reads the pipeline's `model_index.json`, each component's
config and its safetensors headers, builds each quantized model on the `meta` device (shapes
only, no memory) to find its Linear layers, and decides per layer whether the backend takes it.
The result, a `LoadPlan`, says per component: library, class, backend and the concrete config
object, the loader used, whether it runs on the target device (if not, why and what instead),
and bytes before and (estimated) after. Printing it teaches what `load_pipeline` will do.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import DTYPE_BYTES, FLOAT_CODES, numel, read_headers
from .config import PipelineQuantizationConfig, QuantSpec
from .errors import did_you_mean, one_of
from .units import human_bytes, text_table

MODEL_LIBRARIES = ("diffusers", "transformers")
_TORCH_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class ComponentPlan:
    """What load_pipeline will do with one component."""

    name: str
    library: str | None
    class_name: str
    folder: Path
    is_model: bool = False
    spec: QuantSpec | None = None
    config: Any = None  # the native diffusers/transformers config object (None: unquantized, or none exists)
    loader: str = "from_pretrained"
    supported: bool = True
    problem: str | None = None
    alternative: str | None = None
    params: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    layers_total: int = 0  # nn.Linear layers in the model
    quantized_layers: list[str] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)  # layer -> why it stays in full precision

    @property
    def quantization(self) -> str:
        return self.spec.label() if self.spec else "-"


@dataclass
class LoadPlan:
    """The per-component plan of a quantized load. `to_frame()` gives it as a DataFrame."""

    source: str
    folder: Path
    pipeline_class: str
    device: str
    torch_dtype: str | None
    config: PipelineQuantizationConfig | None
    components: dict[str, ComponentPlan]

    @property
    def quantized(self) -> list[str]:
        return [n for n, c in self.components.items() if c.spec is not None]

    def libraries(self) -> dict[str, str]:
        """{model component: library}, e.g. for PipelineQuantizationConfig.to_diffusers()."""
        return {n: c.library for n, c in self.components.items() if c.is_model}

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.components.values())

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.components.values())

    def problems(self) -> dict[str, str]:
        return {n: c.problem for n, c in self.components.items() if not c.supported}

    def check(self) -> None:
        """Raise when any component cannot be loaded as planned (ImportError for a missing package,
        RuntimeError for hardware, ValueError otherwise), naming what to do instead."""
        for c in self.components.values():
            if c.supported:
                continue
            message = (
                f"Cannot quantize {c.name!r} ({c.class_name}) with {c.quantization} on {self.device}: {c.problem}."
            )
            if c.alternative:
                message += f" Instead: {c.alternative}."
            if c.problem.startswith("package"):
                raise ImportError(message.replace("Instead: pip install", "Instead: install it with: pip install"))
            if "GPU" in c.problem or "CUDA" in c.problem:
                raise RuntimeError(message)
            raise ValueError(message)

    def to_frame(self):
        """pandas DataFrame indexed by component: library, class, quantization, layers, bytes before/after."""
        import pandas as pd

        rows = []
        for c in self.components.values():
            rows.append(
                {
                    "component": c.name,
                    "library": c.library,
                    "class": c.class_name,
                    "quantization": c.quantization,
                    "loader": c.loader,
                    "layers_quantized": len(c.quantized_layers),
                    "layers_total": c.layers_total,
                    "params": c.params,
                    "bytes_before": c.bytes_before,
                    "bytes_after": c.bytes_after,
                    "supported": c.supported,
                    "problem": c.problem or "",
                }
            )
        return pd.DataFrame(rows).set_index("component")

    def _rows(self) -> list[list[str]]:
        rows = []
        for c in self.components.values():
            layers = f"{len(c.quantized_layers)}/{c.layers_total}" if c.spec else "-"
            status = "ok" if c.supported else f"NO: {c.problem}"
            size = f"{human_bytes(c.bytes_before)} -> {human_bytes(c.bytes_after)}" if c.is_model else "-"
            rows.append([c.name, c.class_name, c.quantization, layers, size, c.loader if c.is_model else "-", status])
        return rows

    _HEADERS = ["component", "class", "quantization", "linear layers", "bytes", "loader", "runs here"]

    def __repr__(self) -> str:
        head = (
            f"LoadPlan for {self.pipeline_class} from {self.source} on {self.device}"
            f" ({self.torch_dtype or 'checkpoint dtype'}): {human_bytes(self.bytes_before)} -> "
            f"{human_bytes(self.bytes_after)}"
        )
        return head + "\n" + text_table(self._HEADERS, self._rows())

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(f"<th>{escape(h)}</th>" for h in self._HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in r) + "</tr>" for r in self._rows())
        return (
            f"<p><b>LoadPlan</b> {escape(self.pipeline_class)} on {escape(self.device)}: "
            f"{human_bytes(self.bytes_before)} &rarr; {human_bytes(self.bytes_after)}</p>"
            f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
        )


# -- sources --------------------------------------------------------------------------------------


def resolve_source(source: str | Path | None) -> Path:
    """A local pipeline folder for `source`: None = the embedded pipeline; a hub id is downloaded.

    Raises:
        ValueError: a folder that is not a pipeline (no model_index.json).
        FileNotFoundError: neither a folder nor a hub id.
    """
    if source is None:
        from . import EMBEDDED_PIPELINE

        if not (EMBEDDED_PIPELINE / "model_index.json").is_file():
            raise FileNotFoundError(
                f"The embedded pipeline is missing from {EMBEDDED_PIPELINE} (a broken install?). Reinstall quantkit "
                "(pip install -e . from the repository), or pass a pipeline folder as the source."
            )
        source = EMBEDDED_PIPELINE
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            hint = (
                " It looks like one component of a pipeline: pass its parent folder."
                if (path / "config.json").is_file() and (path.parent / "model_index.json").is_file()
                else ""
            )
            raise ValueError(
                f"{path} is not a diffusers pipeline folder: it has no model_index.json.{hint} Pass a "
                "folder written by pipeline.save_pretrained(), a hub id such as "
                "'black-forest-labs/FLUX.1-dev', or None for the embedded pipeline."
            )
        return path
    if path.exists():
        raise ValueError(f"{path} is a file, not a pipeline folder. Pass the folder that holds model_index.json.")
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _download(text)
    raise FileNotFoundError(
        f"Pipeline source {text!r} is neither a folder nor a hub id ('org/name'). "
        "Check the path, or pass None for the embedded pipeline."
    )


def _download(repo_id: str) -> Path:
    """Download a pipeline from the Hugging Face hub (configs, tokenizers and safetensors weights)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    "*.json",
                    "*.txt",
                    "*.model",
                    "*.safetensors",
                    "*.safetensors.index.json",
                    "*tokenizer*",
                ],
            )
        )
    except Exception as err:
        raise OSError(
            f"Could not get {repo_id!r} from the hub ({type(err).__name__}: {err}). Without network "
            "access, pass a local pipeline folder (or None for the embedded pipeline); gated models need "
            "`huggingface-cli login` first."
        ) from None


def read_model_index(folder: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """(pipeline class name, {component: (library, class name)}) from model_index.json."""
    index = json.loads((folder / "model_index.json").read_text())
    components = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        components[name] = (value[0], value[1])
    return index.get("_class_name", "DiffusionPipeline"), components


def model_class(library: str, class_name: str):
    return getattr(importlib.import_module(library), class_name)


def meta_model(library: str, class_name: str, folder: Path):
    """The component's model built on the meta device: real module tree, no weights in memory."""
    from accelerate import init_empty_weights

    cls = model_class(library, class_name)
    if library == "diffusers":
        config = cls.load_config(folder)
        with init_empty_weights():
            return cls.from_config(config)
    config = cls.config_class.from_pretrained(folder)
    with init_empty_weights():
        return cls(config)


def skip_list(model, spec: QuantSpec) -> list[str]:
    """Module names the backend keeps in full precision: the user's list, plus the model's
    `_keep_in_fp32_modules` for bitsandbytes (as diffusers and transformers both do) and GGUF (T5 casts
    the input of its `wo` layers to their weight dtype, which for packed GGUF weights is uint8)."""
    names = list(spec.adapter.skip_modules(spec.kwargs))
    if spec.backend.startswith("bitsandbytes") or spec.backend == "gguf":
        names += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return names


def matches(name: str, patterns: list[str]) -> str | None:
    """The pattern that names module `name` (whole dotted segments), or None."""
    for p in patterns:
        if f".{p}." in f".{name}.":
            return p
    return None


def decide_layers(model, spec: QuantSpec, device: str) -> tuple[list[str], dict[str, str], int]:
    """(Linear layers to quantize, {layer kept in full precision: why}, number of Linear layers)."""
    import torch

    skip = skip_list(model, spec)
    chosen, kept, total = [], {}, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        total += 1
        hit = matches(name, skip)
        why = (
            f"in the skip list ({hit!r})"
            if hit
            else spec.adapter.layer_problem(spec.kwargs, module.in_features, module.out_features, device)
        )
        if why:
            kept[name] = why
        else:
            chosen.append(name)
    return chosen, kept, total


# -- the plan -------------------------------------------------------------------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan(
    source: str | Path | None = None,
    config: PipelineQuantizationConfig | None = None,
    *,
    device: str | None = None,
    torch_dtype: Any = None,
) -> LoadPlan:
    """Plan loading `source` with `config` on `device`, reading no weights.

    Args:
        source: pipeline folder, hub id, or None for quantkit.EMBEDDED_PIPELINE.
        config: a PipelineQuantizationConfig, or None to load unquantized.
        device: "cpu", "cuda", "cuda:1" ...; default: CUDA when available.
        torch_dtype: dtype of the unquantized tensors (torch.bfloat16 or "bfloat16"); None = the dtype most of
            the checkpoint is stored in.

    Returns:
        A LoadPlan. It does not raise for components that cannot run on `device`: it records why
        (`problems()`); `load_pipeline` raises for them before loading anything.

    Raises:
        ValueError: a component named in the config that the pipeline does not have, or that is not a model.
    """
    from .backends.base import dtype_name

    if config is not None and not isinstance(config, PipelineQuantizationConfig):
        raise TypeError(
            f"config must be a quantkit.PipelineQuantizationConfig (or None), got {type(config).__name__}."
            " Convert a diffusers one with PipelineQuantizationConfig.from_diffusers(config)."
        )
    folder = resolve_source(source)
    device = str(device or default_device())
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device={device!r} is not supported: use 'cpu' or 'cuda' (optionally 'cuda:N').")
    pipeline_class, index = read_model_index(folder)
    models = [n for n, (lib, _) in index.items() if lib in MODEL_LIBRARIES and _has_weights(folder / n)]
    dtype = dtype_name(torch_dtype) if torch_dtype is not None else checkpoint_dtype(folder, models)

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
    for name, (library, class_name) in index.items():
        c = ComponentPlan(
            name=name,
            library=library,
            class_name=class_name,
            folder=folder / name,
            is_model=name in models,
            loader="from_pretrained",
        )
        if c.is_model:
            headers = read_headers(c.folder)
            c.params = sum(numel(shape) for _, shape in headers.values())
            c.bytes_before = sum(_tensor_bytes(code, shape, dtype) for code, shape in headers.values())
            c.bytes_after = c.bytes_before
            c.spec = config.spec_for(name, models) if config is not None else None
            saved = saved_spec(c.folder)
            if saved is not None:
                if c.spec is not None:
                    raise ValueError(
                        f"Component {name!r} in {folder} is already quantized ({saved.label()}); load the "
                        "folder without a config for it, or quantize the original pipeline instead."
                    )
                c.spec, c.loader = saved, "quantkit restore"
                c.config = None
            elif c.spec is not None:
                _plan_quantized(c, headers, dtype, device)
        components[name] = c
    return LoadPlan(
        source=str(source) if source is not None else "the embedded pipeline",
        folder=folder,
        pipeline_class=pipeline_class,
        device=device,
        torch_dtype=dtype,
        config=config,
        components=components,
    )


def checkpoint_dtype(folder: Path, models: list[str]) -> str | None:
    """The float dtype most of the pipeline's weight bytes are stored in (None when there are none).

    Used when no torch_dtype is given, so that every component loads in the dtype it was saved in
    (diffusers' own default would turn a bf16 pipeline into fp32 beside quantized bf16 layers)."""
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    weight: dict[str, int] = {}
    for name in models:
        for code, shape in read_headers(folder / name).values():
            if code in names:
                weight[code] = weight.get(code, 0) + numel(shape) * DTYPE_BYTES[code]
    return names[max(weight, key=weight.get)] if weight else None


def saved_spec(folder: Path) -> QuantSpec | None:
    """The QuantSpec of a component folder written by quantkit.save_pipeline (None for ordinary folders)."""
    path = folder / "quantkit_quantization.json"
    return QuantSpec.from_dict(json.loads(path.read_text())["quant"]) if path.is_file() else None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _tensor_bytes(code: str, shape: tuple[int, ...], dtype: str | None) -> int:
    per = _TORCH_BYTES[dtype] if dtype and code in FLOAT_CODES else DTYPE_BYTES[code]
    return numel(shape) * per


def _plan_quantized(c: ComponentPlan, headers: dict, dtype: str | None, device: str) -> None:
    """Fill the quantization part of a component plan: config object, loader, layers, bytes, problems."""
    from .errors import require_package

    adapter = c.spec.adapter
    try:
        require_package(adapter.module, adapter.pip_spec, f"The {adapter.name!r} backend")
    except ImportError as err:
        c.supported, c.problem = False, f"package {adapter.module!r} is not installed"
        c.alternative = str(err).split("Install it with: ")[-1]
        return
    problem = adapter.device_problem(c.spec.kwargs, device)
    if problem:
        c.supported, (c.problem, c.alternative) = False, problem
    c.config = adapter.native_config(c.spec.kwargs, c.library)
    model = meta_model(c.library, c.class_name, c.folder)
    c.quantized_layers, c.skipped_layers, c.layers_total = decide_layers(model, c.spec, device)
    c.loader = "quantkit streaming loader"
    if c.spec.backend == "gguf":
        c.loader = "GGUF file (quantkit's) -> quantkit streaming loader"
        published = c.spec.resolved()["gguf_file"]
        if published:
            from .backends.gguf import gguf_shapes, read_gguf

            own_names = bool(set(gguf_shapes(read_gguf(published))) & set(headers))
            c.loader = "GGUF file -> " + ("quantkit streaming loader" if own_names else "diffusers from_single_file")
        if published and not own_names and (c.library != "diffusers" or not hasattr(type(model), "from_single_file")):
            c.supported = False
            c.problem = f"the GGUF file does not use {c.class_name}'s tensor names and diffusers cannot convert it"
            c.alternative = (
                "leave gguf_file out and let quantkit write the file from this component's weights "
                "(quant_type='Q8_0' ... 'Q4_0')"
            )
        elif not c.quantized_layers:
            c.supported = False
            c.problem = (
                f"GGUF quantizes Linear weights only and none of this {c.class_name}'s "
                f"{c.layers_total} Linear layers qualifies"
            )
            c.alternative = "leave this component unquantized (e.g. components_to_quantize=['transformer', ...])"
    modules = dict(model.named_modules())
    per = _TORCH_BYTES.get(dtype or "", None)
    for layer in c.quantized_layers:
        m = modules[layer]
        code, shape = headers.get(f"{layer}.weight", ("F32", (m.out_features, m.in_features)))
        before = _tensor_bytes(code, shape, dtype)
        dtype_bytes = per or DTYPE_BYTES[code]
        c.bytes_after += adapter.weight_bytes(c.spec.kwargs, m.out_features, m.in_features, dtype_bytes) - before
    del model
