"""Placement of a pipeline's components over several devices: `load_pipeline(..., device_map=...)`.

A diffusers pipeline loaded with `device_map="balanced"` puts each model component whole on one GPU,
largest first, in the order GPU 0, 1, ..., N, N, ..., 0 (diffusers' `_assign_components_to_devices`), a
component too big for the GPU whose turn it is going to the CPU. diffusers budgets each component at its
*unquantized* size (its meta model at the pipeline's dtype), so a quantized FLUX transformer (6.7 GB in NF4)
is budgeted as 23.8 GB and spills to the CPU when it would fit. Here the same assignment runs on the plan's
true bytes after quantization (`ComponentPlan.bytes_after`), with the budgets accelerate reads for each GPU
(`accelerate.utils.get_max_memory`, or `max_memory=` as in diffusers: `{0: "14GiB", 1: "20GiB"}`).

Two things differ from diffusers, both documented in docs/upstream.md: diffusers' assignment keeps only the
*last* component that spills to the CPU in its map (each spill replaces the list), so the others would be left
nowhere; here every component it leaves out goes to the CPU, with a warning naming it. And a component whose
inputs arrive on another device gets accelerate's `AlignDevicesHook` (inputs moved to the component's device,
outputs back to the caller's), so a pipeline spread over devices runs as it is; diffusers leaves that to
the pipeline's code, which moves inputs to one execution device.

An explicit map (`device_map={"transformer": "cuda:0", "text_encoder_2": "cuda:1", ...}`) names every model
component; the values are devices as `device=` takes them (or a CUDA index).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..devices import check_device, parse_device
from ..units import human_bytes

BALANCED = "balanced"
_NO_GPU = (
    "device_map='balanced' spreads components over CUDA GPUs, and none is available here (no CUDA device, or "
    "max_memory names none). Load on one device (device='cpu'), or pass an explicit device_map dict."
)


@dataclass(frozen=True)
class Placement:
    """Where each model component goes: its device, and the bytes and budgets that decided it."""

    devices: dict[str, str]  # component -> "cuda:N" or "cpu"
    sizes: dict[str, int] = field(default_factory=dict)  # component -> true bytes after quantization
    budgets: dict[str, int] = field(default_factory=dict)  # device -> bytes available ("balanced" only)

    @property
    def main_device(self) -> str:
        """The device of the largest component placed on a GPU (the denoiser, usually), else "cpu"."""
        on_gpu = [n for n in self.devices if self.devices[n] != "cpu"]
        if not on_gpu:
            return "cpu"
        return self.devices[max(on_gpu, key=lambda n: self.sizes.get(n, 0))]

    def hf_device_map(self) -> dict[str, int | str]:
        """The map in diffusers' form (`pipe.hf_device_map`): a CUDA index per component, or "cpu"."""
        out: dict[str, int | str] = {}
        for name, device in self.devices.items():
            out[name] = int(device.partition(":")[2] or 0) if device.startswith("cuda") else device
        return out


def check_device_map(device_map, *, device=None, offload=None, max_memory=None) -> None:
    """The checks on `device_map` and `max_memory` that need no plan: types, spelling, conflicts.

    Raises:
        TypeError: device_map is neither a string nor a dict; max_memory is not a dict.
        ValueError: a string other than "balanced"; device_map with device= or offload=; max_memory without it.
    """
    if device_map is None:
        if max_memory is not None:
            raise ValueError(
                "max_memory budgets device_map='balanced'; pass device_map='balanced' with it, or drop it."
            )
        return
    if isinstance(device_map, str):
        if device_map != BALANCED:
            raise ValueError(
                f"device_map={device_map!r}: the strategy diffusers pipelines support is 'balanced'; or pass a dict "
                "{component: device} naming every model component."
            )
    elif not isinstance(device_map, dict):
        raise TypeError(
            f"device_map must be 'balanced' or a dict {{component: device}}, got {type(device_map).__name__}."
        )
    if device is not None:
        raise ValueError(
            f"device={device!r} and device_map both say where components go: drop device= (the map places each "
            "component), or drop device_map to load everything on one device."
        )
    if offload is not None:
        raise ValueError(
            f"offload={offload!r} and device_map both move components: offload keeps them on the CPU until used, "
            "device_map puts each on its own device. Pick one (diffusers refuses offload on a device-mapped "
            "pipeline too; `pipe.reset_device_map()` undoes a map)."
        )
    if max_memory is not None:
        if not isinstance(max_memory, dict):
            raise TypeError(f"max_memory must be a dict such as {{0: '14GiB', 1: '20GiB'}}, got {max_memory!r}.")
        if isinstance(device_map, dict):
            raise ValueError("max_memory budgets device_map='balanced'; an explicit device_map dict needs none.")
    if device_map == BALANCED:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(_NO_GPU)


def explicit_placement(device_map: dict, models: dict[str, int]) -> Placement:
    """The placement an explicit `{component: device}` map gives, checked against the pipeline's model
    components (`models`: name -> true bytes). Devices must exist on this machine.

    Raises:
        ValueError: a name that is not a model component, or a model component the map leaves out (both named).
        TypeError / ValueError / RuntimeError: a device as `device=` would raise for it.
    """
    unknown = sorted(set(device_map) - set(models))
    if unknown:
        raise ValueError(
            f"device_map names {unknown}, which are not model components of this pipeline; its model components "
            f"are {sorted(models)}."
        )
    missing = [n for n in models if n not in device_map]
    if missing:
        raise ValueError(
            f"device_map leaves out {missing}: name a device for every model component ({sorted(models)}), "
            "or use device_map='balanced'."
        )
    devices = {}
    for name in models:
        value = device_map[name]
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"cuda:{value}"
        devices[name] = check_device(value)
    return Placement(devices=devices, sizes=dict(models))


def gpu_budgets(max_memory: dict | None) -> dict[str, int]:
    """Bytes available on each CUDA device, as accelerate reads them (`get_max_memory`), or as `max_memory`
    gives them (accelerate's forms: {0: "14GiB", "cuda:1": 20e9}); the CPU's entry is left out."""
    from accelerate.utils import get_max_memory

    if max_memory is not None:
        from accelerate.utils import convert_file_size_to_int

        out = {}
        for key, value in max_memory.items():
            if str(key) in ("cpu", "disk", "mps"):
                continue
            name = f"cuda:{key}" if isinstance(key, int) else parse_device(key)
            if name == "cuda":
                name = "cuda:0"
            out[name] = convert_file_size_to_int(value) if isinstance(value, str) else int(value)
        return out
    return {f"cuda:{k}": int(v) for k, v in get_max_memory().items() if isinstance(k, int)}


def balanced_placement(models: dict[str, int], budgets: dict[str, int]) -> Placement:
    """diffusers' balanced assignment on true bytes: largest component first, GPUs in the order 0..N, N..0, a
    component that does not fit the GPU whose turn it is goes to the CPU (warned about by name).

    Raises:
        RuntimeError: no GPU budget at all (this machine has no CUDA device and max_memory named none).
    """
    if not budgets:
        raise RuntimeError(_NO_GPU)
    from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices

    sizes = dict(sorted(models.items(), key=lambda kv: kv[1], reverse=True))
    order = dict(sorted(budgets.items(), key=lambda kv: kv[1], reverse=True))  # as diffusers orders the GPUs
    mapping = _assign_components_to_devices(sizes, order, device_mapping_strategy=BALANCED)
    devices = {name: device for device, names in mapping.items() for name in names}
    spilled = [n for n in sizes if devices.get(n, "cpu") == "cpu"]
    for name in spilled:
        devices[name] = "cpu"  # diffusers' map keeps only the last spill (see the module docstring)
    if spilled:
        warnings.warn(
            f"device_map='balanced': {spilled} fit no GPU's remaining budget and run on the CPU (slow). Budgets: "
            + ", ".join(f"{d} {human_bytes(b)}" for d, b in order.items())
            + "; quantize them further or pass max_memory.",
            UserWarning,
            stacklevel=3,
        )
    return Placement(devices={n: devices[n] for n in sizes}, sizes=sizes, budgets=order)


def place(device_map, models: dict[str, int], max_memory: dict | None = None) -> Placement:
    """The placement `device_map` asks for, over the model components `models` (name -> true bytes)."""
    if isinstance(device_map, dict):
        return explicit_placement(device_map, models)
    return balanced_placement(models, gpu_budgets(max_memory))


def align_devices(model, device: str) -> None:
    """accelerate's AlignDevicesHook on the component: its inputs moved to `device`, its outputs back to the
    device the inputs came from (so the next component receives them where the pipeline put them)."""
    import torch
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    add_hook_to_module(model, AlignDevicesHook(execution_device=torch.device(device), io_same_device=True))


def mark_pipeline(pipe: Any, placement: Placement) -> None:
    """`pipe.hf_device_map` as diffusers sets it for a device-mapped pipeline: `pipe.to()` and the offload
    methods then refuse, as they do in diffusers, until `pipe.reset_device_map()`."""
    pipe.hf_device_map = placement.hf_device_map()
    pipe.quantkit_placement = placement


__all__ = [
    "BALANCED",
    "Placement",
    "align_devices",
    "balanced_placement",
    "check_device_map",
    "explicit_placement",
    "gpu_budgets",
    "mark_pipeline",
    "place",
]
