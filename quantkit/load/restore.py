"""Rebuilding a saved quantized component without quantizing again, from any of the formats quantkit reads.

- the library's own format (what `save_pretrained` of a quantized model writes, and `save_pipeline` by default):
  `config.json` with a `quantization_config`, the library's weight files; the backend finds its quantized layers in
  the state dict (`Backend.restore_native`);
- a backend's own file beside `quantkit_quantization.json` (format 2: a `.gguf` of the component);
- quantkit's own format (format 1, `quantkit_quantization.json` + `quantkit_weights.safetensors`), which older
  quantkit versions wrote for every backend and `save_pipeline` still writes where no other format exists.

Every tensor the model expects must come from the files: a component that would keep a meta (uninitialized)
tensor is an error, never a model with random weights.
"""

from __future__ import annotations

import json

from ..config import QuantSpec
from ..dtypes import to_torch_dtype
from ..planning import ComponentPlan
from ..planning.sources import meta_model
from .save import SAVED_CONFIG, SAVED_WEIGHTS


def restore_component(c: ComponentPlan, device: str):
    """Rebuild a quantized component saved by save_pipeline or by the library's save_pretrained."""
    info_path = c.folder / SAVED_CONFIG
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        spec = QuantSpec.from_dict(info["quant"])
        if info.get("format", 1) == 1:
            return _restore_quantkit(c, spec, info, device)
        return _restore_native(c, spec, device, dtype=info.get("dtype"))
    return _restore_native(c, c.spec, device)


def _restore_native(c: ComponentPlan, spec: QuantSpec, device: str, dtype: str | None = None):
    """A component in the library's (or the backend's) own saved format."""
    adapter = spec.adapter
    state, metadata = adapter.saved_tensors(c.folder)
    model = meta_model(c.library, c.class_name, c.folder)
    layers = adapter.restore_native(model, spec.kwargs, state, metadata, device)
    _assign(model, state, device, to_torch_dtype(dtype) if dtype else None, c)
    return _finish(model, spec, layers, c)


def _restore_quantkit(c: ComponentPlan, spec: QuantSpec, info: dict, device: str):
    """A component in quantkit's own format (format 1)."""
    from safetensors.torch import load_file

    # clone: tensors from load_file may be views into one mapped buffer at unaligned offsets, which some int8
    # kernels (quanto's _weight_int8pack_mm) crash on
    tensors = {k: v.clone() for k, v in load_file(str(c.folder / SAVED_WEIGHTS)).items()}
    model = meta_model(c.library, c.class_name, c.folder)
    modules = dict(model.named_modules())
    for layer, meta in info["layers"].items():
        prefix = f"{layer}."
        own = {k[len(prefix) :]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        model.set_submodule(layer, spec.adapter.restore_linear(modules[layer], spec.kwargs, own, meta, device))
    _assign(model, tensors, device, None, c)
    return _finish(model, spec, list(info["layers"]), c)


def _assign(model, tensors: dict, device: str, dtype, c: ComponentPlan) -> None:
    """Put the plain tensors into their modules (floats cast to `dtype` when given)."""
    import torch

    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            raise ValueError(
                f"The saved weights of {c.name!r} hold {key!r}, which {c.class_name} does not have. The folder and "
                "its config.json do not belong together; save the pipeline again."
            ) from None
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(t.to(device), requires_grad=False)
        else:
            module._buffers[leaf] = t.to(device)


def _finish(model, spec: QuantSpec, layers: list[str], c: ComponentPlan):
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        raise ValueError(
            f"The saved weights of {c.name!r} lack {len(missing)} tensors of {c.class_name} (first: {missing[0]!r}); "
            "quantkit never fills them with random values. The folder is incomplete: save the pipeline again."
        )
    if not layers:
        raise ValueError(
            f"{c.folder} says {c.name!r} is quantized with {spec.label()}, but its weights hold no {spec.backend} "
            "layer. The folder is damaged: save the pipeline again."
        )
    model.quantkit = {"backend": spec.backend, "kwargs": spec.kwargs, "layers": list(layers)}
    return model.eval()


__all__ = ["restore_component"]
