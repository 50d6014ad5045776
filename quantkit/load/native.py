"""Quantized components as first-class models of their library (diffusers or transformers).

quantkit builds quantized layers itself (streamed, one Linear at a time), so the models it returns do not come out
of the library's own loader. `make_native` gives each quantized component what that loader would have left on it,
so that the library's `save_pretrained`, `from_pretrained`, `.to()`, offload hooks and LoRA loaders treat it as
their own:

- `model.config.quantization_config` (the library's config object: diffusers' `QuantoConfig`, transformers'
  `BitsAndBytesConfig` ...), `model.hf_quantizer` (the library's own quantizer class, `pre_quantized=True`),
  `is_quantized`, `quantization_method`, and the backend's flags (`is_loaded_in_4bit` ...). Which config, and
  which layers it names as kept in full precision, is the backend's business (`Backend.attach_native`);
- where the library cannot express the quantization (it cannot save it, or would convert other layers on reload),
  its `save_pretrained` refuses with the reason and what works instead (`quantkit.save_pipeline`): no folder that
  reloads with random weights is ever written;
- files diffusers writes through that quantizer put 8-bit tensors at 16-byte offsets (`_align_int8`): torch's CPU
  int8 matmul crashes on tensors memory-mapped at 8-byte offsets, which safetensors' layout otherwise gives;
- `fuse_lora` / `unfuse_lora` merge into layers peft cannot merge (quanto, GGUF; `quantkit.load.lora`);
- `.to()` keeps what a backend stores beside its weights on the weights' device (`Backend.before_move` /
  `after_move`), and moving to a device this machine does not have is a RuntimeError that names it.
"""

from __future__ import annotations

import json
import types
from typing import Any

from ..devices import check_device

ALIGN_KEY = "quantkit_alignment"  # safetensors metadata entry whose length pads the header (see _align_int8)
ALIGNMENT = 16  # bytes; torch's _weight_int8pack_mm needs its int8 weight 16-byte aligned on CPU
# safetensors lays tensors out by dtype, largest first (measured with safetensors 0.8), then by name
_SAFETENSORS_ORDER = (
    "U64",
    "I64",
    "F64",
    "F32",
    "U32",
    "I32",
    "BF16",
    "F16",
    "U16",
    "I16",
    "F8_E8M0",
    "F8_E4M3",
    "F8_E5M2",
    "I8",
    "U8",
    "BOOL",
)


def make_native(loaded: dict[str, Any], plan, dtype=None) -> None:
    """`attach` every quantized component in `loaded` ({component: model}) as its plan describes it."""
    for name, model in loaded.items():
        c = plan.components[name]
        attach(model, c.spec, c.library, list(model.quantkit.get("layers", [])), dtype)


def attach(model, spec, library: str, layers: list[str], dtype=None):
    """Make `model` (quantized by quantkit with `spec`, `layers` quantized) a quantized model of `library`.

    Returns:
        The model. `model.quantkit["native"]` is None when the library can save and reload it as it is, else
        the reason it cannot (its `save_pretrained` then raises a ValueError with that reason).
    """
    from .lora import enable_quantized_merge

    adapter = spec.adapter
    reason = adapter.attach_native(model, spec.kwargs, library, layers, dtype)
    record = getattr(model, "quantkit", None) or {}
    record.update(native=reason, library=library)
    model.quantkit = record
    if reason is not None:
        model.save_pretrained = types.MethodType(_refusing_save(reason), model)
    elif library == "diffusers":
        _align_int8(model.hf_quantizer)
    if library == "diffusers":
        enable_quantized_merge(model, adapter)
    _track_moves(model, adapter)
    return model


def _refusing_save(reason: str):
    def save_pretrained(self, save_directory, *args, **kwargs):
        raise ValueError(f"Cannot save {type(self).__name__} with save_pretrained: {reason}.")

    return save_pretrained


# -- 8-bit tensors at 16-byte offsets in the files diffusers writes --------------------------------------------


def _align_int8(quantizer) -> None:
    """Wrap the quantizer's `get_state_dict_and_metadata` (diffusers calls it in save_pretrained, before
    safetensors writes) so that the metadata pads the file header to put the int8 tensors at 16-byte offsets."""
    if getattr(quantizer, "_quantkit_aligned", False):
        return
    original = quantizer.get_state_dict_and_metadata

    def get_state_dict_and_metadata(state_dict, safe_serialization=False):
        state_dict, metadata = original(state_dict, safe_serialization=safe_serialization)
        if safe_serialization:
            metadata = {**(metadata or {}), ALIGN_KEY: header_padding(state_dict, {"format": "pt", **metadata})}
        return state_dict, metadata

    quantizer.get_state_dict_and_metadata = get_state_dict_and_metadata
    quantizer._quantkit_aligned = True


def header_padding(state_dict: dict, metadata: dict) -> str:
    """The value of ALIGN_KEY that puts the most int8 tensors of a one-file save of `state_dict` (with `metadata`
    besides) at ALIGNMENT-byte offsets in the file: the header length decides where the tensor data starts."""
    from safetensors.torch import _TYPES

    names = {v: k for k, v in _TYPES.items()}
    rank = {name: i for i, name in enumerate(_SAFETENSORS_ORDER)}
    entries = sorted(
        ((names[t.dtype], k, list(t.shape), t.numel() * t.element_size()) for k, t in state_dict.items()),
        key=lambda e: (rank.get(e[0], len(rank)), e[1]),
    )
    parts, int8_offsets, offset = [], [], 0
    for code, key, shape, size in entries:
        info = f'{{"dtype":"{code}","shape":{_dump(shape)},"data_offsets":[{offset},{offset + size}]}}'
        parts.append(f"{_dump(key)}:{info}")
        if code == "I8":
            int8_offsets.append(offset)
        offset += size
    best, best_aligned = "", -1
    for pad in range(2 * ALIGNMENT):
        meta = {str(k): str(v) for k, v in {**metadata, ALIGN_KEY: "-" * pad}.items()}
        text = '{"__metadata__":{' + ",".join(f"{_dump(k)}:{_dump(v)}" for k, v in meta.items()) + "}"
        text += "".join("," + p for p in parts) + "}"
        start = 8 + -(-len(text.encode()) // 8) * 8  # 8 bytes of length, then the header padded to 8
        aligned = sum((start + o) % ALIGNMENT == 0 for o in int8_offsets)
        if aligned > best_aligned:
            best, best_aligned = "-" * pad, aligned
    return best


def _dump(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- moving between devices -------------------------------------------------------------------------------------


def _track_moves(model, adapter) -> None:
    """`model.to(...)` (what pipelines, offload hooks and users call) checks the device, then lets the backend keep
    its side tensors with the weights (`before_move` / `after_move`)."""
    if getattr(model, "_quantkit_moves", False):
        return
    move = type(model).to

    def to(self, *args, **kwargs):
        import torch

        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type != "meta":
            check_device(str(device))
            adapter.before_move(self, device)
        result = move(self, *args, **kwargs)
        if device is not None:
            adapter.after_move(self)
        return result

    model.to = types.MethodType(to, model)
    model._quantkit_moves = True


__all__ = ["ALIGNMENT", "ALIGN_KEY", "attach", "header_padding", "make_native"]
