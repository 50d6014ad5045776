"""Loading a pipeline with each component quantized as it loads, and saving it again.

`load_pipeline` carries out a `LoadPlan`. A quantized component is built on the meta device,
then filled one tensor at a time from its safetensors files; each Linear layer the plan names
is quantized the moment its weights arrive, so at most one layer's full-precision weights are
in memory at once (diffusers' own path quantizes after the whole component is loaded, which
*raises* the peak). Unquantized components and the rest of the pipeline (tokenizers, scheduler)
come from diffusers' `from_pretrained`. If anything fails, everything loaded so far is released
before the error propagates.

`save_pipeline` writes a folder that `load_pipeline` reloads quantized without a config: each
quantized component gets its model config, `quantkit_quantization.json` (backend, options, and
per layer what the backend needs) and `quantkit_weights.safetensors` (plain tensors only).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoint import SafetensorsSource
from .config import PipelineQuantizationConfig, QuantSpec
from .plan import ComponentPlan, LoadPlan, meta_model, model_class, plan

SAVED_CONFIG = "quantkit_quantization.json"
SAVED_WEIGHTS = "quantkit_weights.safetensors"


def load_pipeline(
    source: str | Path | None = None,
    config: PipelineQuantizationConfig | None = None,
    *,
    torch_dtype: Any = None,
    device: str | None = None,
    progress: bool = True,
):
    """Load a diffusers pipeline, quantizing the components `config` names while they load.

    Args:
        source: pipeline folder, hub id, or None for quantkit.EMBEDDED_PIPELINE.
        config: a PipelineQuantizationConfig; None loads unquantized (a folder written by
            `save_pipeline` reloads quantized without one).
        torch_dtype: dtype of the unquantized tensors (e.g. torch.bfloat16); None keeps the checkpoint's.
        device: "cpu" or "cuda[:N]"; default CUDA when available.
        progress: show progress bars.

    Returns:
        The pipeline, with `pipe.quantkit_plan` (the LoadPlan it carried out).

    Raises:
        ValueError / TypeError: a bad config or source (before anything loads).
        ImportError: a backend package is missing (with the pip command).
        RuntimeError: a config that needs CUDA on a CPU target (naming CPU alternatives).
    """
    from .backends.base import to_torch_dtype

    p = plan(source, config, device=device, torch_dtype=torch_dtype)
    p.check()
    if p.device == "cpu":
        return_large_blocks_to_os()
    dtype = to_torch_dtype(p.torch_dtype)
    loaded: dict[str, Any] = {}
    try:
        for name in _progress(p.quantized, progress, "quantizing components"):
            c = p.components[name]
            if c.loader == "quantkit restore":
                loaded[name] = restore_component(c, p.device)
            else:
                loaded[name] = load_component(c, p, progress=progress)
        pipeline_cls = model_class("diffusers", p.pipeline_class)
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        with _library_progress(progress):
            pipe = pipeline_cls.from_pretrained(p.folder, **kwargs, **loaded)
        for name, c in p.components.items():
            if c.is_model and name not in loaded:
                getattr(pipe, name).to(p.device)
    except BaseException:
        loaded.clear()
        _release(p.device)
        raise
    pipe.quantkit_plan = p
    defaults = p.folder / "generation_defaults.json"
    if defaults.is_file():
        from .models.defaults import apply_generation_defaults, read_generation_defaults

        apply_generation_defaults(pipe, read_generation_defaults(p.folder))
    return pipe


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


@contextmanager
def _library_progress(enabled: bool):
    """Silence diffusers' and transformers' own progress bars unless progress was asked for."""
    if enabled:
        yield
        return
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    dl.disable_progress_bar()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        dl.enable_progress_bar()
        tl.enable_progress_bar()


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled or len(items) < 2, leave=False)


# -- one component ----------------------------------------------------------------------------------


def load_component(c: ComponentPlan, p: LoadPlan, *, progress: bool = False):
    """Load one quantized component as its plan says (streaming, or GGUF through diffusers)."""
    from .backends.base import to_torch_dtype

    dtype = to_torch_dtype(p.torch_dtype)
    spec = c.spec
    if spec.backend != "gguf":

        def quantize(linear):
            return spec.adapter.quantize_linear(linear, spec.kwargs, p.device)

        model = stream_load(c, SafetensorsSource(c.folder), dtype, p.device, quantize, progress=progress)
    else:
        model = _load_gguf(c, p, dtype, progress)
    model.quantkit = {"backend": spec.backend, "kwargs": spec.kwargs, "layers": list(c.quantized_layers)}
    return model


def _load_gguf(c: ComponentPlan, p: LoadPlan, dtype, progress: bool):
    """Load a GGUF component: quantkit's cached file (written if absent) or the user's `gguf_file`."""
    import torch

    from .backends import gguf as g
    from .backends.base import dtype_name, to_torch_dtype
    from .checkpoint import read_headers

    path = g.component_file(c.folder, c.spec.kwargs, [f"{n}.weight" for n in c.quantized_layers], progress=progress)
    reader = g.read_gguf(path)
    expected = {k: s for k, (_, s) in read_headers(c.folder).items()}
    own_names = bool(set(g.gguf_shapes(reader)) & set(expected))
    if own_names or not c.spec.resolved()["gguf_file"]:
        g.check_matches(path, reader, expected, c.name)
    del reader
    compute = to_torch_dtype(c.spec.resolved()["compute_dtype"]) or dtype or torch.float32
    if not own_names:  # a published file in the original model's names: diffusers converts them
        if c.library != "diffusers" or not hasattr(model_class(c.library, c.class_name), "from_single_file"):
            raise ValueError(
                f"GGUF file {path} does not use {c.class_name}'s tensor names and diffusers cannot convert it for "
                "this class. Leave gguf_file out to let quantkit write a file from this component's weights."
            )
        return _from_single_file(c, p, path, dtype, compute)
    kwargs = {**c.spec.kwargs, "compute_dtype": dtype_name(compute)}

    def wrap(linear):
        return c.spec.adapter.quantize_linear(linear, kwargs, p.device)

    return stream_load(c, g.GGUFSource(path), dtype, p.device, wrap, progress=progress)


def _from_single_file(c: ComponentPlan, p: LoadPlan, path, dtype, compute):
    """Load a published GGUF file through diffusers' single-file path (it converts original tensor names)."""
    from diffusers import GGUFQuantizationConfig

    cls = model_class(c.library, c.class_name)
    try:
        model = cls.from_single_file(
            str(path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=compute),
            config=str(p.folder),
            subfolder=c.name,
            torch_dtype=dtype,
        )
    except Exception as err:  # diffusers' converters raise KeyError, IndexError, RuntimeError ... on wrong files
        raise ValueError(
            f"GGUF file {path} could not be loaded into {c.class_name} ({type(err).__name__}: {err})."
            " Pass a GGUF file made for this model."
        ) from None
    return model.to(p.device).eval()


def stream_load(c: ComponentPlan, source, dtype, device: str, quantize, *, progress: bool = False):
    """Fill a meta-device model tensor by tensor from `source`, replacing planned Linear layers as they fill.

    Args:
        c: the component's plan (class, folder, layers to quantize).
        source: a SafetensorsSource or GGUFSource (keys(), get(key)).
        dtype: torch dtype for floating tensors (None keeps the file's).
        device: where tensors go.
        quantize: `quantize(linear) -> module` for the planned layers (a backend's quantize_linear, bound).

    Raises:
        ValueError: when the checkpoint does not match the model (unexpected, missing or reshaped tensors).
    """
    import torch
    from tqdm.auto import tqdm

    model = meta_model(c.library, c.class_name, c.folder)
    modules = dict(model.named_modules())
    expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
    keys = source.keys()
    unexpected = [k for k in keys if k not in expected]
    if unexpected:
        raise ValueError(
            f"The weights of {c.name!r} do not match {c.class_name}: {len(unexpected)} unexpected tensors "
            f"(first: {unexpected[0]!r}). Check that the folder and its config.json belong together."
        )
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or []) if dtype == torch.float16 else []
    targets = set(c.quantized_layers)
    by_module: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        owner, _, leaf = key.rpartition(".")
        by_module[owner].append((leaf, key))
    from .plan import matches

    try:
        for owner, items in tqdm(by_module.items(), desc=f"loading {c.name}", disable=not progress, leave=False):
            module = modules[owner]
            for leaf, key in items:
                tensor = source.get(key)
                packed = isinstance(tensor, torch.nn.Parameter)  # GGUF blocks stay as they are
                if not packed and tuple(tensor.shape) != tuple(expected[key]):
                    raise ValueError(
                        f"Tensor {key!r} of {c.name!r} has shape {tuple(tensor.shape)}, but "
                        f"{c.class_name} expects {tuple(expected[key])}. The weights do not belong to "
                        "this config."
                    )
                if not packed and dtype is not None and tensor.is_floating_point() and not matches(owner, keep_fp32):
                    tensor = tensor.to(dtype)
                tensor = tensor.to(device)
                if leaf in module._parameters:
                    module._parameters[leaf] = tensor if packed else torch.nn.Parameter(tensor, requires_grad=False)
                else:
                    module._buffers[leaf] = tensor
                del tensor
            if owner in targets:
                new = quantize(module)
                if new is not module:
                    model.set_submodule(owner, new)
                    modules[owner] = new
                del module, new
        release_freed_memory()  # once per component: with return_large_blocks_to_os, layer-sized blocks are gone
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
        if missing:
            raise ValueError(
                f"The weights of {c.name!r} lack {len(missing)} tensors of {c.class_name} (first: "
                f"{missing[0]!r}). The checkpoint is incomplete or belongs to another model."
            )
    finally:
        source.close()
    return model.eval()


def return_large_blocks_to_os() -> None:
    """Make glibc serve blocks of 1 MiB and more with mmap, so freeing them shrinks the process at once.

    By default glibc raises this threshold (up to 32 MiB) each time a large block is freed; after that,
    layer-sized weights and temporaries live on the heap, and the process keeps their memory after they
    are freed. For a kit that measures peak memory on CPUs that is the difference between a 4-bit load
    staying under the unquantized peak or not. Set QUANTKIT_MALLOC_TUNING=0 to leave glibc alone.
    """
    if os.environ.get("QUANTKIT_MALLOC_TUNING", "1") == "0" or not _libc():
        return
    _libc().mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (this also turns the dynamic threshold off)


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018  (raises AttributeError off glibc)
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def release_freed_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc only; a no-op elsewhere); once per component.

    glibc raises its mmap threshold each time a large block is freed, so after the first few layers the
    full-precision weights of later layers come from the heap, and freeing them does not shrink the process:
    without this, loading a 282M-parameter transformer in 4-bit peaked at about twice its bf16 size.
    """
    if _libc():
        _libc().malloc_trim(0)


_LIBC = None


# -- save and restore ---------------------------------------------------------------------------------


def save_pipeline(pipe, folder: str | Path) -> Path:
    """Save a pipeline loaded by quantkit so that `load_pipeline(folder)` reloads it quantized.

    Unquantized components are saved by their own `save_pretrained`; quantized ones as plain tensors
    plus `quantkit_quantization.json`. The folder is written under a temporary name and renamed at the
    end, so a failure leaves no half-written folder.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; pass a new folder or delete it first.")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pipe.save_config(tmp)
        for name, component in pipe.components.items():
            if component is None:
                continue
            record = getattr(component, "quantkit", None)
            if record is None:
                component.save_pretrained(tmp / name)
                continue
            tensors, info = component_state(component, record)
            (tmp / name).mkdir()
            _save_model_config(component, tmp / name)
            save_file(tensors, str(tmp / name / SAVED_WEIGHTS))
            (tmp / name / SAVED_CONFIG).write_text(json.dumps(info, indent=1))
        if getattr(pipe, "generation_defaults", None):
            from .models.defaults import write_generation_defaults

            write_generation_defaults(tmp, pipe.generation_defaults)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _save_model_config(model, folder: Path) -> None:
    if hasattr(model, "save_config"):  # diffusers
        model.save_config(folder)
    else:  # transformers
        model.config.save_pretrained(folder)


def component_state(model, record: dict) -> tuple[dict, dict]:
    """(plain tensors, JSON info) that restore a quantized model."""
    from .backends import get_backend

    adapter = get_backend(record["backend"])
    layers = set(record["layers"])
    modules = dict(model.named_modules())
    tensors, per_layer, seen = {}, {}, set()
    for layer in record["layers"]:
        state, meta = adapter.linear_state(modules[layer])
        per_layer[layer] = meta
        for k, v in state.items():
            tensors[f"{layer}.{k}"] = v.detach().contiguous()
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owner = name.rpartition(".")[0]
        if owner in layers or name in seen:
            continue
        seen.add(name)
        tensors[name] = t.detach().contiguous()
    tensors = _unshare(tensors)
    spec = QuantSpec(record["backend"], **record["kwargs"])
    return tensors, {"format": 1, "quant": spec.to_dict(), "layers": per_layer}


def _unshare(tensors: dict) -> dict:
    """safetensors refuses tensors that share memory: keep the first name of each, drop the aliases
    (tie_weights restores them on load)."""
    out, ptrs = {}, set()
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.device.type != "meta" else k
        if key in ptrs:
            continue
        ptrs.add(key)
        out[k] = v
    return out


def restore_component(c: ComponentPlan, device: str):
    """Rebuild a quantized component saved by save_pipeline, without quantizing again."""
    import torch
    from safetensors.torch import load_file

    info = json.loads((c.folder / SAVED_CONFIG).read_text())
    spec = QuantSpec.from_dict(info["quant"])
    # clone: tensors from load_file may be views into one mapped buffer at unaligned offsets, which some int8
    # kernels (quanto's _weight_int8pack_mm) crash on
    tensors = {k: v.clone() for k, v in load_file(str(c.folder / SAVED_WEIGHTS)).items()}
    model = meta_model(c.library, c.class_name, c.folder)
    modules = dict(model.named_modules())
    for layer, meta in info["layers"].items():
        prefix = f"{layer}."
        own = {k[len(prefix) :]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        model.set_submodule(layer, spec.adapter.restore_linear(modules[layer], spec.kwargs, own, meta, device))
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(t.to(device), requires_grad=False)
        else:
            module._buffers[leaf] = t.to(device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.quantkit = {"backend": spec.backend, "kwargs": spec.kwargs, "layers": list(info["layers"])}
    return model.eval()
