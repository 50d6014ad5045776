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
from ..dtypes import to_torch_dtype
from ..planning import ComponentPlan, Loader, LoadPlan, plan
from ..planning.checks import check_classes
from ..planning.sources import model_class
from .allocator import allocator_tuning
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
):
    """Load a diffusers pipeline, quantizing the components `config` names while they load.

    Args:
        source: pipeline folder, hub id, or None for quantkit.EMBEDDED_PIPELINE.
        config: a PipelineQuantizationConfig; None loads unquantized (a folder written by
            `save_pipeline` reloads quantized without one).
        torch_dtype: dtype of the unquantized tensors (e.g. torch.bfloat16); None keeps the checkpoint's.
        device: "cpu" or "cuda[:N]"; default CUDA when available.
        progress: show progress bars.
        malloc_tuning: on CPU, let glibc hand layer-sized blocks back to the OS while quantized components
            stream in (a lower peak, a slower load; see `quantkit.load.allocator`). None = the environment
            variable QUANTKIT_MALLOC_TUNING ("1"/"0"), else the default there. The setting applies during this
            load only and is undone afterwards.

    Returns:
        The pipeline, with `pipe.quantkit_plan` (the LoadPlan it carried out).

    Raises:
        ValueError / TypeError: a bad config or source (before anything loads).
        ImportError: a backend package is missing (with the pip command).
        RuntimeError: a config that needs CUDA on a CPU target (naming CPU alternatives), or a device this
            machine does not have.
    """
    if device is not None:
        check_device(device)  # a device this machine lacks is a RuntimeError before anything is read
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {type(progress).__name__} {progress!r}.")
    p = plan(source, config, device=device, torch_dtype=torch_dtype)
    p.check()
    check_device(p.device)
    check_classes(p.pipeline_class, {n: (c.library, c.class_name) for n, c in p.components.items()})
    tuning = allocator_tuning(malloc_tuning, p.device)
    dtype = to_torch_dtype(p.torch_dtype)
    loaded: dict[str, Any] = {}
    try:
        with tuning:
            for name in _progress(p.quantized, progress, "quantizing components"):
                c = p.components[name]
                if c.loader is Loader.RESTORE:
                    loaded[name] = restore_component(c, p.device)
                else:
                    loaded[name] = load_component(c, p, progress=progress)
        pipeline_cls = model_class("diffusers", p.pipeline_class)
        with _library_progress(progress):
            pipe = pipeline_cls.from_pretrained(p.folder, **dtype_kwargs(pipeline_cls, dtype), **loaded)
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
        from ..models.defaults import apply_generation_defaults, read_generation_defaults

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


def dtype_kwargs(cls, dtype) -> dict:
    """`dtype=` for diffusers versions that take it (0.42+: `torch_dtype` is deprecated), else `torch_dtype=`."""
    if dtype is None:
        return {}
    import inspect

    params = inspect.signature(cls.from_pretrained).parameters
    return {"dtype": dtype} if "dtype" in params else {"torch_dtype": dtype}


def load_component(c: ComponentPlan, p: LoadPlan, *, progress: bool = False):
    """Load one quantized component as its plan says: the backend says where its weights come from
    (`Backend.weights`); the streaming loader fills the model from there, unless the backend loaded it whole."""
    dtype = to_torch_dtype(p.torch_dtype)
    spec = c.spec
    weights = spec.adapter.weights(c, dtype, p.device, progress=progress)
    if weights.model is not None:
        model = weights.model
    else:
        model = stream_load(c, weights.source, dtype, p.device, weights.quantize, progress=progress)
    model.quantkit = {"backend": spec.backend, "kwargs": spec.kwargs, "layers": list(c.quantized_layers)}
    return model


__all__ = ["dtype_kwargs", "load_component", "load_pipeline"]
