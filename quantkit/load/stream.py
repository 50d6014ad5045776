"""The streaming loader: fill a meta-device model tensor by tensor, quantizing each Linear as it fills.

At most one layer's full-precision weights are in memory at a time: tensors are grouped by the
module that owns them, and as soon as a planned Linear has its weight (and bias) it is handed to
the backend's `quantize` and replaced by the quantized module.
"""

from __future__ import annotations

from collections import defaultdict

from ..planning import ComponentPlan
from ..planning.layers import matches
from ..planning.sources import meta_model
from .allocator import release_freed_memory


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


__all__ = ["stream_load"]
