"""True memory of a loaded model or pipeline, quantized tensors included.

`model.get_memory_footprint()` in diffusers and transformers sums `numel * element_size` over
parameters and buffers. For quanto and torchao weights (tensor subclasses that *report* the
original dtype and shape) that is the unquantized size; for bitsandbytes 4-bit it misses the
quantization statistics. Here every tensor is taken apart into the storage it really holds:
- tensor subclasses are flattened through `__tensor_flatten__` (torchao, quanto), recursively;
- bitsandbytes `Params4bit` adds its `quant_state` tensors (absmax, code, nested statistics);
  `Int8Params` adds its row scales (`SCB`);
- GGUF weights are packed uint8 storage already;
- every storage is counted once, however many names point to it.
"""

from __future__ import annotations

from typing import Any

from ..planning.checks import check_pipeline_object
from ..units import human_bytes, text_table

QUANTIZED_KINDS = ("Params4bit", "Int8Params", "GGUFParameter")


def tensor_storages(t) -> list:
    """The plain tensors that hold `t`'s data (itself, its inner tensors, its quantization statistics)."""
    import torch

    out = []
    kind = type(t).__name__
    if (
        hasattr(t, "__tensor_flatten__")
        and type(t) not in (torch.Tensor, torch.nn.Parameter)
        and kind not in (*QUANTIZED_KINDS,)
    ):
        names, _ = t.__tensor_flatten__()
        for name in names:
            out += tensor_storages(getattr(t, name))
        return out
    out.append(t)
    state = getattr(t, "quant_state", None)
    if state is not None:
        out += _quant_state_tensors(state)
    scb = getattr(t, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def _quant_state_tensors(state) -> list:
    import torch

    out = [v for v in (getattr(state, n, None) for n in ("absmax", "code", "offset")) if isinstance(v, torch.Tensor)]
    if getattr(state, "state2", None) is not None:
        out += _quant_state_tensors(state.state2)
    return out


def logical_numel(t) -> int:
    """Number of weights the tensor stands for (GGUF and bitsandbytes 4-bit store packed bytes)."""
    kind = type(t).__name__
    if kind == "GGUFParameter":
        n = 1
        for s in t.quant_shape:
            n *= int(s)
        return n
    if kind == "Params4bit" and getattr(t, "quant_state", None) is not None:
        return int(t.quant_state.shape.numel())
    return int(t.numel())


def is_quantized(t) -> bool:
    import torch

    kind = type(t).__name__
    if kind == "GGUFParameter":
        return t.quant_type.name not in ("F32", "F16", "BF16")
    return kind in QUANTIZED_KINDS or (
        hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter)
    )


def model_bytes(model) -> dict[str, Any]:
    """{'bytes', 'params', 'quantized_params', 'quantized_bytes', 'bits_per_weight'} of one nn.Module."""
    import torch

    seen: set = set()

    def new_bytes(storages) -> int:
        n = 0
        for s in storages:
            key = (s.untyped_storage().data_ptr(), s.device.type)
            if s.device.type == "meta" or key in seen:
                continue
            seen.add(key)
            n += s.untyped_storage().nbytes()
        return n

    total = params = qparams = qbytes = 0
    done: set = set()
    for _, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(t) in done:
            continue
        done.add(id(t))
        own = new_bytes(tensor_storages(t))
        total += own
        if is_quantized(t):
            qparams += logical_numel(t)
            qbytes += own
        elif isinstance(t, torch.nn.Parameter):
            params += logical_numel(t)
    # bitsandbytes' Linear8bitLt moves its row scales from the weight to `module.state` at the first forward
    for module in model.modules():
        state = getattr(module, "state", None)
        if state is not None and type(module).__name__ == "Linear8bitLt":
            extra = new_bytes([x for x in (state.CB, state.SCB) if x is not None])
            total += extra
            qbytes += extra
    params += qparams
    return {
        "bytes": total,
        "params": params,
        "quantized_params": qparams,
        "quantized_bytes": qbytes,
        "bits_per_weight": (8 * qbytes / qparams) if qparams else float("nan"),
    }


def footprint(obj):
    """True bytes per component of a pipeline (or of one model), as a pandas DataFrame.

    Args:
        obj: a diffusers pipeline or an nn.Module.

    Returns:
        DataFrame indexed by component with columns `bytes` (true bytes: storages counted once),
        `params` (weights the parameters stand for), `quantized_params`, `quantized_bytes`,
        `bits_per_weight` (of the quantized weights; NaN when none) and `reported_bytes` (what
        `get_memory_footprint()` style numel × element_size says). A `total` row sums them.

    Raises:
        TypeError: `obj` is neither a pipeline (an object with a `components` dict) nor an nn.Module.
        ValueError: a pipeline without model components.
    """
    import pandas as pd
    import torch

    if isinstance(obj, torch.nn.Module):
        items = {type(obj).__name__: obj}
    else:
        components = check_pipeline_object(obj, "footprint() (or a torch.nn.Module, e.g. pipe.transformer)")
        items = {str(n): m for n, m in components.items() if isinstance(m, torch.nn.Module)}
        if not items:
            raise ValueError(
                f"This {type(obj).__name__} has no torch.nn.Module components to measure (its components: "
                f"{sorted(map(str, components)) or 'none'}). Pass a loaded pipeline or a model."
            )
    rows = {}
    for name, model in items.items():
        row = model_bytes(model)
        row["reported_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
            b.numel() * b.element_size() for b in model.buffers()
        )
        rows[name] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "component"
    total = frame.sum(numeric_only=True)
    total["bits_per_weight"] = (
        8 * total["quantized_bytes"] / total["quantized_params"] if total["quantized_params"] else float("nan")
    )
    frame.loc["total"] = total
    for col in ("bytes", "params", "quantized_params", "quantized_bytes", "reported_bytes"):
        frame[col] = frame[col].astype("int64")
    return _readable(frame)


def _readable(frame):
    """The same DataFrame, printed as `format_footprint` writes it (every column visible, units named)."""
    import pandas as pd

    class Footprint(pd.DataFrame):
        @property
        def _constructor(self):  # anything derived (a slice, a sum) is a plain DataFrame again
            return pd.DataFrame

        def __repr__(self) -> str:
            return format_footprint(self)

    return Footprint(frame)


def format_footprint(frame) -> str:
    """The footprint as a readable text table."""
    rows = [
        [
            name,
            human_bytes(r.bytes),
            human_bytes(r.reported_bytes),
            f"{int(r.params):,}",
            "-" if r.quantized_params == 0 else f"{r.bits_per_weight:.2f}",
        ]
        for name, r in frame.iterrows()
    ]
    return text_table(["component", "true bytes", "reported", "params", "bits/weight (quantized)"], rows)
