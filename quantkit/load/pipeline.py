"""`load_pipeline`: a diffusers pipeline with each component quantized as it loads.

`load_pipeline` carries out a `LoadPlan`. A quantized component is built on the meta device,
then filled one tensor at a time (`quantkit.load.stream`); each Linear layer the plan names is
quantized the moment its weights arrive, so at most one layer's full-precision weights are in
memory at once (diffusers' own path quantizes after the whole component is loaded, which *raises*
the peak). Where the weights come from is the backend's business (`Backend.weights`). Unquantized
components and the rest of the pipeline (tokenizers, scheduler) come from diffusers'
`from_pretrained`. If anything fails, everything loaded so far is released before the error
propagates.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import PipelineQuantizationConfig
from ..devices import check_device
from ..dtypes import dtype_kwargs, to_torch_dtype
from ..planning import ComponentPlan, Loader, LoadPlan, plan
from ..planning.checks import check_classes
from ..planning.sources import model_class, resolve_source, weightless
from .allocator import allocator_tuning
from .lora import fuse_into, fused_weights, read_deltas
from .native import make_native
from .offload import apply_offload, check_offload
from .placement import align_devices, check_device_map, mark_pipeline, place
from .restore import restore_component
from .stream import stream_load


def load_pipeline(
    source: str | Path | None = None,
    config: PipelineQuantizationConfig | None = None,
    *,
    torch_dtype: Any = None,
    device: str | None = None,
    progress: bool = True,
    malloc_tuning: bool | None = None,
    offload: str | None = None,
    lora=None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
):
    """Load a diffusers pipeline, quantizing the components `config` names while they load.

    The quantized components are first-class quantized models of their library (`quantkit.load.native`): the
    library's `save_pretrained`, `.to()`, offload hooks and LoRA loaders treat them as their own.

    Args:
        source: pipeline folder, hub id, or None for quantkit.EMBEDDED_PIPELINE.
        config: a PipelineQuantizationConfig; None loads unquantized (a folder written by
            `save_pipeline` reloads quantized without one).
        torch_dtype: dtype of the unquantized tensors (e.g. torch.bfloat16); None keeps the checkpoint's.
        device: "cpu" or "cuda[:N]"; default CUDA when available.
        progress: show progress bars.
        malloc_tuning: on CPU, fix glibc's mmap threshold at 1 MiB from this load on, for the process, so that
            freed layer-sized blocks (generation's activations) go back to the OS (`quantkit.load.allocator`).
            None = the environment variable QUANTKIT_MALLOC_TUNING ("1"/"0"), else on; False leaves glibc alone.
        offload: None, "model", "sequential" or "group": diffusers' offloading, enabled after the load (CUDA only;
            see `quantkit.load.offload`).
        lora: "fuse, then quantize": a LoRA file or folder, a (path, weight) pair, a LoRA state dict, or a list of
            those, merged into the full-precision weights as each layer streams in, before it is quantized (see
            `quantkit.load.lora`). To keep a LoRA separate (swap, weight, unfuse it), load the pipeline without it
            and call `pipe.load_lora_weights(...)`.
        device_map: spread the model components over devices, each whole on one (`quantkit.load.placement`):
            "balanced" (diffusers' strategy, on CUDA GPUs, budgeted by each component's true bytes after
            quantization) or a dict naming a device for every model component. Not with `device` or `offload`.
            The pipeline gets `hf_device_map`, as in diffusers (`pipe.to()` then refuses until
            `pipe.reset_device_map()`).
        max_memory: with device_map="balanced", the bytes each GPU may take ({0: "14GiB", 1: "20GiB"}); default:
            what accelerate finds free.

    Returns:
        The pipeline, with `pipe.quantkit_plan` (the LoadPlan it carried out).

    Raises:
        ValueError / TypeError: a bad config or source (before anything loads).
        ImportError: a backend package is missing (with the pip command).
        RuntimeError: a config that needs CUDA on a CPU target (naming CPU alternatives), or a device this
            machine does not have, or an offload mode without CUDA.
    """
    check_device_map(device_map, device=device, offload=offload, max_memory=max_memory)
    if device is not None:
        check_device(device)  # a device this machine lacks is a RuntimeError before anything is read
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {type(progress).__name__} {progress!r}.")
    folder = resolve_source(source, weights=True)  # a hub id is downloaded here, not taken from the catalog
    hub_id = weightless(folder)
    if hub_id is not None:
        raise OSError(
            f"{folder} holds the configs of {hub_id} but no weights, so it can be planned but not loaded. Load the "
            f"hub id itself (downloaded then), or a folder made by `huggingface-cli download {hub_id}`."
        )
    if isinstance(device_map, dict):  # plan for the map's GPU, if it names one (backends check their device)
        gpus = [str(v) for v in device_map.values() if not str(v).startswith("cpu")]
        device = (f"cuda:{gpus[0]}" if gpus[0].isdigit() else gpus[0]) if gpus else "cpu"
    elif device_map is not None:
        device = "cuda"
    p = plan(folder, config, device=device, torch_dtype=torch_dtype)
    p.source = str(source) if source is not None else "the embedded pipeline"
    p.check()
    check_device(p.device)
    placement = None
    if device_map is not None:
        models = {n: c.bytes_after for n, c in p.components.items() if c.is_model}
        placement = place(device_map, models, max_memory)
    where = placement.devices if placement else {}
    check_classes(p.pipeline_class, {n: (c.library, c.class_name) for n, c in p.components.items()})
    check_offload(offload, p.device)
    pipeline_cls = model_class("diffusers", p.pipeline_class)
    deltas = read_deltas(pipeline_cls, lora, p) if lora is not None else {}
    tuning = allocator_tuning(malloc_tuning, p.device)
    dtype = to_torch_dtype(p.torch_dtype)
    loaded: dict[str, Any] = {}
    try:
        with tuning:
            for name in _progress(p.quantized, progress, "quantizing components"):
                c = p.components[name]
                target = where.get(name, p.device)
                if c.loader is Loader.RESTORE:
                    loaded[name] = restore_component(c, target)
                else:
                    loaded[name] = load_component(c, p, progress=progress, lora=deltas.get(name), device=target)
        make_native(loaded, p, dtype)
        with _library_progress(progress):
            pipe = pipeline_cls.from_pretrained(p.folder, **dtype_kwargs(dtype), **loaded)
        for name, c in p.components.items():
            if c.is_model and name not in loaded:
                if name in deltas:
                    fuse_into(getattr(pipe, name), deltas[name])
                if offload is None:
                    getattr(pipe, name).to(where.get(name, p.device))
        if placement is not None:
            for name, target in placement.devices.items():
                align_devices(getattr(pipe, name), target)
            mark_pipeline(pipe, placement)
    except BaseException:
        loaded.clear()
        _release(p.device)
        raise
    pipe.quantkit_plan = p
    defaults = p.folder / "generation_defaults.json"
    if defaults.is_file():
        from ..models.defaults import apply_generation_defaults, read_generation_defaults

        apply_generation_defaults(pipe, read_generation_defaults(p.folder))
    apply_offload(pipe, offload, p.device)
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

    before = [(lib, lib.is_progress_bar_enabled()) for lib in (dl, tl)]
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in before:  # as the caller had them: bars the caller turned off stay off
            if enabled:
                lib.enable_progress_bar()


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled or len(items) < 2, leave=False)


def load_component(
    c: ComponentPlan, p: LoadPlan, *, progress: bool = False, lora: dict | None = None, device: str | None = None
):
    """Load one quantized component as its plan says: the backend says where its weights come from
    (`Backend.weights`); the streaming loader fills the model from there, unless the backend loaded it whole.
    With `lora` ({layer: [(A, B, scale)]}, from `quantkit.load.lora.read_deltas`) the full-precision weights are
    streamed with the LoRA merged, and quantized after. `device`: where it goes (default: the plan's device)."""
    dtype = to_torch_dtype(p.torch_dtype)
    spec = c.spec
    device = device or p.device
    if lora:
        weights = fused_weights(c, lora, device)
    else:
        weights = spec.adapter.weights(c, dtype, device, progress=progress)
    if weights.model is not None:
        model = weights.model
    else:
        model = stream_load(c, weights.source, dtype, device, weights.quantize, progress=progress)
    model.quantkit = {"backend": spec.backend, "kwargs": spec.kwargs, "layers": list(c.quantized_layers)}
    return model


__all__ = ["load_component", "load_pipeline"]
