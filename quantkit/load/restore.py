"""Rebuilding a quantized component that `save_pipeline` wrote, without quantizing again."""

from __future__ import annotations

import json

from ..config import QuantSpec
from ..planning import ComponentPlan
from ..planning.sources import meta_model
from .save import SAVED_CONFIG, SAVED_WEIGHTS


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


__all__ = ["restore_component"]
