"""`save_pipeline`: write a quantized pipeline to a folder that reloads quantized.

Unquantized components are saved by their own `save_pretrained`; quantized ones as their model
config, `quantkit_quantization.json` (backend, options, and per layer what the backend needs) and
`quantkit_weights.safetensors` (plain tensors only); `quantkit.load.restore` reads them back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..config import QuantSpec

SAVED_CONFIG = "quantkit_quantization.json"
SAVED_WEIGHTS = "quantkit_weights.safetensors"


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
            from ..models.defaults import write_generation_defaults

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
    from ..backends import get_backend

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


__all__ = ["SAVED_CONFIG", "SAVED_WEIGHTS", "component_state", "save_pipeline"]
