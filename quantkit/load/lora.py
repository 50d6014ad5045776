"""LoRA and quantized components: diffusers' LoRA methods on every backend, and "fuse, then quantize".

Two ways to use a LoRA with a quantized pipeline:

1. At run time, with diffusers' own methods on the pipeline quantkit returns: `pipe.load_lora_weights(...)`,
   `pipe.set_adapters([...], adapter_weights=[...])`, `pipe.fuse_lora()`, `pipe.unfuse_lora()`,
   `pipe.unload_lora_weights()`. The LoRA stays in full precision beside the quantized layers. peft wraps the
   quantized layers: its bitsandbytes and torchao layers merge themselves (dequantize, add, quantize again), because
   `quantkit.load.native` gives the models the flags and quantizer peft reads. For the layers peft cannot merge
   (quanto: its `weight.data += delta` is silently dropped; GGUF: packed blocks) `enable_quantized_merge` makes
   `fuse_lora` dequantize, add and quantize again through the backend (`Backend.lora_weight` / `set_lora_weight`).
   Either way `fuse_lora` keeps each layer's quantized weight from before the merge, so that `unfuse_lora`
   restores it exactly (peft's unmerge subtracts and quantizes a third time) — except where the backend keeps
   state beside the weight that a merge resets (`Backend.lora_restorable`: bitsandbytes 8-bit), which peft unmerges.
2. "Fuse, then quantize": `load_pipeline(..., lora=path | (path, weight) | [several])` merges the LoRA into the
   full-precision weights as each layer streams in, before it is quantized (`fused_weights`), so the quantized
   pipeline carries the LoRA at no run-time cost and with one rounding instead of two. The LoRA cannot be
   unfused or swapped afterwards. Components that are not quantized get the LoRA merged after they load.

The merged weight is `W + sum_i weight_i * scale_i * (B_i @ A_i)`, computed in float32 in the order the LoRAs are
given, with peft's scale (`lora_alpha / r`, `lora_alpha / sqrt(r)` with rsLoRA; the alpha from the LoRA's metadata,
else its network alphas, else `r`), as diffusers' `fuse_lora` computes it.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

# -- 1. merging into quantized layers at run time ------------------------------------------------------------


def enable_quantized_merge(model, adapter) -> None:
    """Give `model` (a diffusers model quantized with `adapter`) a `fuse_lora` / `unfuse_lora` that merge into layers
    peft cannot merge (see the module docstring); layers peft can merge go through peft as in diffusers."""
    if getattr(model, "_quantkit_lora_merge", False) or not hasattr(model, "fuse_lora"):
        return

    def fuse_lora(self, lora_scale=1.0, safe_fusing=False, adapter_names=None):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.lora_scale, self._safe_fusing = lora_scale, safe_fusing  # what diffusers' fuse_lora records
        for module in self.modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            if lora_scale != 1.0:
                module.scale_layer(lora_scale)
            names = [
                n
                for n in (adapter_names or module.active_adapters)
                if n in module.lora_A and n not in module.merged_adapters
            ]
            base = module.get_base_layer()
            if not names:
                continue
            adapter.prepare_lora_merge(base)
            if "_quantkit_unmerged" not in module.__dict__ and adapter.lora_restorable(base):
                module.__dict__["_quantkit_unmerged"] = base.weight  # in __dict__: no parameter, no state_dict entry
                module.unmerge = types.MethodType(_unmerge, module)  # diffusers' unfuse_lora calls it per layer
            weight = adapter.lora_weight(base)
            if weight is None:
                for name in names:  # one at a time: peft's torchao layer fails on a second adapter in one call
                    module.merge(safe_merge=safe_fusing, adapter_names=[name])
                continue
            merged = weight.float()
            for name in names:
                merged = merged + module.get_delta_weight(name).float().to(merged.device)
            if safe_fusing and not merged.isfinite().all():
                raise ValueError(f"NaNs or infinities in the merged weight of adapter(s) {names}; the LoRA is broken.")
            adapter.set_lora_weight(base, merged.to(weight.dtype))
            module.merged_adapters.extend(names)

    def unfuse_lora(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.modules():
            if isinstance(module, BaseTunerLayer):
                module.unmerge()

    model.fuse_lora = types.MethodType(fuse_lora, model)
    model.unfuse_lora = types.MethodType(unfuse_lora, model)
    model._quantkit_lora_merge = True


def _unmerge(self) -> None:
    """`unmerge` of a merged peft layer: the quantized weight from before the merge, exactly."""
    self.get_base_layer().weight = self.__dict__.pop("_quantkit_unmerged")
    self.merged_adapters.clear()
    del self.unmerge  # back to peft's own method for the next merge


# -- 2. fuse, then quantize -------------------------------------------------------------------------------------

# {component: {layer: [(A, B, scale), ...]}}: what each LoRA adds to a Linear weight, in order
Deltas = dict[str, dict[str, list[tuple[Any, Any, float]]]]


def lora_sources(lora) -> list[tuple[str | Path | dict, float]]:
    """`lora=` as [(path or state dict, weight)]: a path, a (path, weight) pair, a state dict, or a list of those.

    Raises:
        TypeError: anything else.
        FileNotFoundError: a path that does not exist.
    """
    items = lora if isinstance(lora, list) else [lora]
    out = []
    for item in items:
        source, weight = item if isinstance(item, tuple) and len(item) == 2 else (item, 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise TypeError(f"A LoRA's weight must be a finite number, got {weight!r}.")
        if isinstance(source, str | Path):
            if not Path(source).exists():
                raise FileNotFoundError(
                    f"LoRA {source} does not exist. Pass a .safetensors file or a folder holding "
                    "pytorch_lora_weights.safetensors (what save_lora_weights writes)."
                )
        elif not isinstance(source, dict):
            raise TypeError(
                f"lora= takes a path, a (path, weight) pair, a LoRA state dict or a list of those; got "
                f"{type(source).__name__}."
            )
        out.append((source, float(weight)))
    if not out:
        raise ValueError("lora= is an empty list; pass at least one LoRA, or leave lora out.")
    return out


def read_deltas(pipeline_cls, lora, plan) -> Deltas:
    """Read the LoRAs of `lora=` with the pipeline's own LoRA reader and check them against the plan's components
    (before any weight is loaded).

    Raises:
        ValueError: the pipeline takes no LoRA, a key names no Linear of the component (or has the wrong shape), the
            LoRA uses what a plain merge cannot express (DoRA, LoRA biases, norm layers), or a component is restored
            from a saved quantized folder (its full-precision weights are gone).
    """
    from ..checkpoint import read_headers
    from ..planning import Loader

    if not hasattr(pipeline_cls, "lora_state_dict"):
        raise ValueError(
            f"{pipeline_cls.__name__} does not load LoRAs (it has no lora_state_dict); lora= needs a "
            "pipeline with diffusers' LoRA loader, such as FluxPipeline."
        )
    deltas: Deltas = {}
    for source, weight in lora_sources(lora):
        state, alphas, metadata = _read(pipeline_cls, source)
        for component, layers in _by_layer(state, source).items():
            c = plan.components.get(component)
            if c is None or not c.is_model:
                raise ValueError(
                    f"LoRA {_name(source)} has weights for {component!r}, which this "
                    f"{plan.pipeline_class} does not have as a model; its models: "
                    f"{[n for n, x in plan.components.items() if x.is_model]}."
                )
            if c.spec is not None and c.loader is Loader.RESTORE:
                raise ValueError(
                    f"{component!r} is restored from a saved quantized folder: its full-precision "
                    "weights are gone, so lora= cannot merge before quantizing. Load the LoRA at run "
                    "time with pipe.load_lora_weights(...) instead."
                )
            for option, value in (c.spec.resolved() if c.spec else {}).items():
                if value and c.spec.adapter.options[option].kind == "path":
                    raise ValueError(
                        f"{component!r} loads prequantized weights from {value} ({option}); lora= merges "
                        "into full-precision weights before quantizing. Leave the file out, or load the "
                        "LoRA at run time with pipe.load_lora_weights(...)."
                    )
            shapes = {k: s for k, (_, s) in read_headers(c.folder).items()}
            meta = {k[len(component) + 1 :]: v for k, v in (metadata or {}).items() if k.startswith(f"{component}.")}
            for layer, (a, b) in layers.items():
                expected = shapes.get(f"{layer}.weight")
                if expected is None or len(expected) != 2 or (b.shape[0], a.shape[1]) != tuple(expected):
                    raise ValueError(
                        f"LoRA {_name(source)}: {component}.{layer} is "
                        + (
                            f"not a Linear layer of {c.class_name}"
                            if expected is None
                            else f"{tuple(expected)}, the LoRA makes {(b.shape[0], a.shape[1])}"
                        )
                        + ". The LoRA belongs to another model."
                    )
                scale = _scale(layer, b.shape[1], meta, alphas, component)
                deltas.setdefault(component, {}).setdefault(layer, []).append((a, b, scale * weight))
    return deltas


def _read(pipeline_cls, source):
    import inspect

    params = inspect.signature(pipeline_cls.lora_state_dict).parameters
    kwargs = {"return_alphas": True} if "return_alphas" in params else {}
    out = pipeline_cls.lora_state_dict(
        source if isinstance(source, dict) else str(source), return_lora_metadata=True, **kwargs
    )
    out = out if isinstance(out, tuple) else (out,)
    state = out[0]
    alphas = out[1] if kwargs and len(out) > 2 else None
    metadata = out[-1] if len(out) > 1 and (not kwargs or len(out) > 2) else None
    return state, alphas or {}, metadata or {}


def _by_layer(state: dict, source) -> dict[str, dict[str, tuple]]:
    out: dict[str, dict[str, list]] = {}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        for part, index in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if rest.endswith(part):
                out.setdefault(component, {}).setdefault(rest[: -len(part)], [None, None])[index] = tensor
                break
        else:
            raise ValueError(
                f"LoRA {_name(source)} holds {key!r}, which a plain LoRA merge cannot express (only "
                "lora_A/lora_B weights: no DoRA magnitudes, LoRA biases or norm layers). Load it at run "
                "time with pipe.load_lora_weights(...) instead."
            )
    for component, layers in out.items():
        for layer, (a, b) in layers.items():
            if a is None or b is None:
                raise ValueError(f"LoRA {_name(source)}: {component}.{layer} has only one of lora_A / lora_B.")
    return {c: {k: (a, b) for k, (a, b) in layers.items()} for c, layers in out.items()}


def _scale(layer: str, rank: int, meta: dict, alphas: dict, component: str) -> float:
    """peft's scaling of one LoRA module: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    if meta.get("use_dora"):
        raise ValueError("The LoRA is a DoRA (use_dora); lora= merges plain LoRAs only. Load it at run time.")
    if meta:
        from peft.utils.other import get_pattern_key

        alpha_pattern, rank_pattern = meta.get("alpha_pattern") or {}, meta.get("rank_pattern") or {}
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), layer), meta.get("lora_alpha", rank))
        r = rank_pattern.get(get_pattern_key(list(rank_pattern), layer), meta.get("r", rank))
        return alpha / math.sqrt(r) if meta.get("use_rslora") else alpha / r
    alpha = alphas.get(f"{component}.{layer}.alpha", alphas.get(f"{layer}.alpha"))
    return 1.0 if alpha is None else float(alpha) / rank


def _name(source) -> str:
    return "(state dict)" if isinstance(source, dict) else str(source)


def merged(weight, items):
    """`weight` with the LoRAs in `items` added, computed in float32, returned in the weight's dtype."""
    out = weight.float()
    for a, b, scale in items:
        out = out + (b.float().to(out.device) @ a.float().to(out.device)) * scale
    return out.to(weight.dtype)


class FusedSource:
    """A tensor source (keys/get/close) that returns each LoRA-targeted weight with the LoRA merged in."""

    def __init__(self, source, deltas: dict[str, list]):
        self.source, self.deltas = source, deltas

    def keys(self):
        return self.source.keys()

    def get(self, key):
        tensor = self.source.get(key)
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        return merged(tensor, self.deltas[layer]) if layer in self.deltas else tensor

    def close(self):
        self.source.close()


def fused_weights(c, deltas: dict[str, list], device: str):
    """The `Weights` of a quantized component under "fuse, then quantize": its full-precision safetensors with the
    LoRA merged as each weight is read, every planned Linear quantized by the backend right after."""
    from ..backends.base import Weights
    from ..checkpoint import SafetensorsSource

    adapter, kwargs = c.spec.adapter, c.spec.kwargs
    return Weights(
        FusedSource(SafetensorsSource(c.folder), deltas),
        lambda linear: adapter.quantize_linear(linear, kwargs, device),
    )


def fuse_into(model, deltas: dict[str, list]) -> None:
    """Merge LoRAs into an unquantized, loaded component in place."""
    import torch

    with torch.no_grad():
        for layer, items in deltas.items():
            module = model.get_submodule(layer)
            module.weight.data = merged(module.weight.data, items)


__all__ = [
    "FusedSource",
    "enable_quantized_merge",
    "fuse_into",
    "fused_weights",
    "lora_sources",
    "merged",
    "read_deltas",
]
