"""bitsandbytes 4-bit (NF4/FP4) and 8-bit (LLM.int8) adapters.

diffusers refuses bitsandbytes without a GPU ("No GPU found"), but bitsandbytes >= 0.45 runs
Linear4bit and Linear8bitLt on the CPU. quantkit builds the layers itself, so both run on CPU
and CUDA. One CPU pitfall is fixed here: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a
4-bit weight for a fast kernel at the first forward, and that repacking crashes unless
in_features % 64 == 0 and out_features % 32 == 0; such layers get the portable kernel instead.
"""

from __future__ import annotations

from typing import Any

from . import register
from .base import Backend, Option, Transient, dtype_name, to_torch_dtype
from .bitsandbytes_chunks import (
    CPU_BLOCK_N,
    guard_state_dicts,
    pack_for_cpu_kernel,
    quantize_4bit,
    quantize_int8,
    undo_cpu_layout,
)

_SKIP = Option(None, kind="list", aliases=("modules_to_not_convert",), doc="module names kept in full precision")
BLOCKSIZE = 64  # bitsandbytes' default 4-bit block: one absmax per 64 weights


class _BnB(Backend):
    module = "bitsandbytes"
    pip_spec = "bitsandbytes>=0.45"
    diffusers_simple_form = True  # the one backend diffusers' own simple form takes
    diffusers_needs_cuda = True  # diffusers' quantizer: "No GPU found. A GPU is needed for quantization."
    keeps_fp32_modules = True  # as diffusers and transformers do (T5's `wo`)

    @classmethod
    def accepts_native(cls, config) -> bool:
        method = getattr(config, "quant_method", None)
        if getattr(method, "value", method) != "bitsandbytes":
            return False
        return bool(getattr(config, "load_in_8bit", False)) == (cls.flags.get("load_in_8bit") is True)

    @classmethod
    def native_config(cls, kwargs: dict[str, Any], library: str):
        if library == "diffusers":
            from diffusers import BitsAndBytesConfig
        else:
            from transformers import BitsAndBytesConfig
        return BitsAndBytesConfig(**cls._native_kwargs(kwargs))

    @classmethod
    def attach_native(cls, model, kwargs, library, layers, dtype=None):
        """The library's quantizer, plus the flags its bitsandbytes loader sets (`is_loaded_in_4bit` / `_8bit`, which
        peft reads to wrap Linear4bit / Linear8bitLt in its bitsandbytes LoRA layers, and pipelines read in `.to()`).
        diffusers' quantizer refuses to *load* without a GPU; attaching it to a model quantkit built does not load."""
        reason = super().attach_native(model, kwargs, library, layers, dtype)
        bits = "8bit" if cls.flags.get("load_in_8bit") else "4bit"
        setattr(model, f"is_loaded_in_{bits}", True)
        setattr(model, f"is_{bits}_serializable", reason is None)
        return reason

    @classmethod
    def from_native(cls, config) -> dict[str, Any]:
        out = {}
        for name, opt in cls.options.items():
            value = getattr(config, name, None)
            if value is not None:
                value = cls._check_value(name, value)
                if value != opt.default:
                    out[name] = value
        return out


@register
class BitsAndBytes4Bit(_BnB):
    name = "bitsandbytes_4bit"
    bits = "4-bit NF4/FP4 blocks of 64"
    flags = {"load_in_4bit": True, "load_in_8bit": False}
    options = {
        "bnb_4bit_quant_type": Option(
            "fp4",
            ("nf4", "fp4"),
            aliases=("quant_type",),
            doc="4-bit code: nf4 (normal float, for normally distributed weights) or fp4",
        ),
        "bnb_4bit_compute_dtype": Option(
            "float32", kind="dtype", aliases=("compute_dtype",), doc="dtype the matmul runs in"
        ),
        "bnb_4bit_use_double_quant": Option(
            False,
            kind="bool",
            aliases=("use_double_quant",),
            doc="quantize the absmax statistics too (saves ~0.4 bit/weight)",
        ),
        "bnb_4bit_quant_storage": Option(
            "uint8",
            ("uint8", "float16", "bfloat16", "float32"),
            aliases=("quant_storage",),
            doc="dtype the packed weights are stored in",
        ),
        "llm_int8_skip_modules": _SKIP,
    }

    @classmethod
    def describe(cls, kwargs):
        return cls.resolved(kwargs)["bnb_4bit_quant_type"]

    @classmethod
    def _native_kwargs(cls, kwargs):
        r = cls.resolved(kwargs)
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": r["bnb_4bit_quant_type"],
            "bnb_4bit_compute_dtype": to_torch_dtype(r["bnb_4bit_compute_dtype"]),
            "bnb_4bit_use_double_quant": r["bnb_4bit_use_double_quant"],
            "bnb_4bit_quant_storage": r["bnb_4bit_quant_storage"],
            "llm_int8_skip_modules": r["llm_int8_skip_modules"],
        }

    @classmethod
    def from_native(cls, config):
        if getattr(config, "load_in_8bit", False):
            raise ValueError("This BitsAndBytesConfig has load_in_8bit=True: it belongs to 'bitsandbytes_8bit'.")
        return super().from_native(config)

    @classmethod
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes, layer=None):
        r = cls.resolved(kwargs)
        n = out_features * in_features
        blocks = -(-n // BLOCKSIZE)
        packed = -(-n // 2)
        if r["bnb_4bit_use_double_quant"]:
            # absmax as uint8 codes + one fp32 absmax per 256 blocks + 256-entry fp32 code + fp32 offset
            stats = blocks + 4 * -(-blocks // 256) + 256 * 4 + 4
        else:
            stats = 4 * blocks
        return packed + stats + 16 * 4  # + the 16-entry fp32 quantization map

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        import bitsandbytes as bnb
        import torch

        r = cls.resolved(kwargs)
        new = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=to_torch_dtype(r["bnb_4bit_compute_dtype"]),
            compress_statistics=r["bnb_4bit_use_double_quant"],
            quant_type=r["bnb_4bit_quant_type"],
            quant_storage=getattr(torch, r["bnb_4bit_quant_storage"]),
            device="meta",
        )
        weight = bnb.nn.Params4bit(
            linear.weight.data,
            requires_grad=False,
            quant_type=r["bnb_4bit_quant_type"],
            compress_statistics=r["bnb_4bit_use_double_quant"],
            quant_storage=getattr(torch, r["bnb_4bit_quant_storage"]),
            module=new,
        )
        if linear.weight.device.type == "cpu" and str(device).startswith("cpu"):
            # Params4bit._quantize, with bitsandbytes' CPU kernel replaced by the same computation in row chunks
            packed, state = quantize_4bit(linear.weight.data, weight)
            weight.data, weight.quant_state, weight.bnb_quantized = packed, state, True
            new.quant_state = state
            new.weight = weight
        else:
            new.weight = weight.to(device)  # quantizes on the device (one fused kernel on CUDA)
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        _cpu_kernel_fix(new)
        if new.support_avx512bf16_for_cpu and new.out_features % CPU_BLOCK_N == 0:
            new.register_forward_pre_hook(pack_for_cpu_kernel)
        guard_state_dicts(new)
        return new

    @classmethod
    def linear_state(cls, module):
        # Linear4bit's own state dict undoes the CPU kernel's weight repacking, if a forward pass did it
        return {k: v for k, v in module.state_dict().items()}, {}

    @classmethod
    def restore_linear(cls, linear, kwargs, tensors, meta, device):
        import bitsandbytes as bnb
        import torch

        r = cls.resolved(kwargs)
        new = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias="bias" in tensors,
            compute_dtype=to_torch_dtype(r["bnb_4bit_compute_dtype"]),
            quant_type=r["bnb_4bit_quant_type"],
            device="meta",
        )
        stats = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
        new.weight = bnb.nn.Params4bit.from_prequantized(tensors["weight"], stats, device=device, module=new)
        if "bias" in tensors:
            new.bias = torch.nn.Parameter(tensors["bias"].to(device), requires_grad=False)
        _cpu_kernel_fix(new)
        guard_state_dicts(new)
        return new

    @classmethod
    def native_layer_meta(cls, tensors, kwargs):
        return {} if any(k.startswith("weight.quant_state.") for k in tensors) else None

    @classmethod
    def prepare_lora_merge(cls, layer):
        """peft's 4-bit merge dequantizes `weight.data` with its quant state: undo the CPU kernel's layout first."""
        undo_cpu_layout(layer)

    @classmethod
    def before_move(cls, model, device):
        """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU kernel at the first CPU forward, and only
        `Params4bit.cuda()` undoes it (with its statistics in the wrong order for layers wider than 64:
        `undo_cpu_layout`); `model.to("cuda")` would carry the CPU layout over. Undo it before leaving."""
        import bitsandbytes as bnb
        import torch

        if torch.device(device).type == "cpu":
            return
        for layer in model.modules():
            if isinstance(layer, bnb.nn.Linear4bit):
                undo_cpu_layout(layer)

    @classmethod
    def after_move(cls, model):
        import bitsandbytes as bnb

        guard_state_dicts(model)
        for layer in model.modules():
            if isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state is not None:
                layer.weight.quant_state.to(layer.weight.device)  # in place: the statistics follow the weight


def _quiet_cast_notice() -> None:
    """bitsandbytes logs "inputs will be cast ... to float16" at *every* 8-bit matmul of a bf16 input
    (thousands of lines per image); the cast is expected and documented, so that one notice is dropped."""
    import logging

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(getattr(f, "quantkit", False) for f in logger.filters):
        notice = logging.Filter()
        notice.filter = lambda record: "inputs will be cast" not in record.getMessage()
        notice.quantkit = True
        logger.addFilter(notice)


def _cpu_kernel_fix(layer) -> None:
    """Route CPU layers whose shape the AVX512-BF16 repacking cannot take to the portable kernel."""
    if layer.in_features % BLOCKSIZE or layer.out_features % 32:
        layer.support_avx512bf16_for_cpu = False


@register
class BitsAndBytes8Bit(_BnB):
    name = "bitsandbytes_8bit"
    bits = "8-bit LLM.int8 (row-wise absmax)"
    flags = {"load_in_8bit": True, "load_in_4bit": False}
    matmul_transient = Transient.INT32_ACCUMULATORS
    options = {
        "llm_int8_threshold": Option(
            6.0,
            kind="float",
            aliases=("threshold",),
            doc="activations above this magnitude take a 16-bit path (outliers)",
        ),
        "llm_int8_has_fp16_weight": Option(False, kind="bool", doc="keep 16-bit weights too (training only)"),
        "llm_int8_skip_modules": _SKIP,
    }

    @classmethod
    def describe(cls, kwargs):
        return "int8"

    @classmethod
    def _native_kwargs(cls, kwargs):
        return {"load_in_8bit": True, **cls.resolved(kwargs)}

    @classmethod
    def from_native(cls, config):
        if getattr(config, "load_in_4bit", False):
            raise ValueError("This BitsAndBytesConfig has load_in_4bit=True: it belongs to 'bitsandbytes_4bit'.")
        return super().from_native(config)

    @classmethod
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes, layer=None):
        return out_features * in_features + 4 * out_features  # int8 weights + one fp32 scale (SCB) per row

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        import bitsandbytes as bnb
        import torch

        _quiet_cast_notice()
        r = cls.resolved(kwargs)
        new = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            has_fp16_weights=r["llm_int8_has_fp16_weight"],
            threshold=r["llm_int8_threshold"],
            device="meta",
        )
        if r["llm_int8_has_fp16_weight"]:
            weight = linear.weight.data.to("cpu", copy=True)  # kept in 16 bits: not a view of the checkpoint
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=True).to(device)
        else:
            # what Int8Params._quantize does (it only runs when the weight moves *from the CPU*, so a weight streamed
            # onto the GPU would stay in 16 bits until the first forward): quantize where the weight is now
            CB, SCB = quantize_int8(linear.weight.data.to(device))
            new.weight = bnb.nn.Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB)
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        return new

    @classmethod
    def linear_state(cls, module):
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB  # moved to state at 1st call
        tensors = {"weight": module.weight.data, "SCB": scb}
        if module.bias is not None:
            tensors["bias"] = module.bias.data
        return tensors, {}

    @classmethod
    def restore_linear(cls, linear, kwargs, tensors, meta, device):
        import bitsandbytes as bnb
        import torch

        r = cls.resolved(kwargs)
        _quiet_cast_notice()
        new = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias="bias" in tensors,
            has_fp16_weights=False,
            threshold=r["llm_int8_threshold"],
            device="meta",
        )
        weight = bnb.nn.Int8Params(tensors["weight"].to(device), requires_grad=False, has_fp16_weights=False)
        weight.CB, weight.SCB = weight.data, tensors["SCB"].to(device)  # what Int8Params.to() leaves after quantizing
        new.weight = weight
        if "bias" in tensors:
            new.bias = torch.nn.Parameter(tensors["bias"].to(device), requires_grad=False)
        return new

    @classmethod
    def native_layer_meta(cls, tensors, kwargs):
        return {} if "SCB" in tensors else None

    @classmethod
    def lora_restorable(cls, layer):
        """peft's 8-bit merge resets the layer's LLM.int8 state (`state.reset_grads()` drops its row scales), so the
        previous weight alone does not undo it: peft's own unmerge does."""
        import bitsandbytes as bnb

        return not isinstance(layer, bnb.nn.Linear8bitLt)

    @classmethod
    def after_move(cls, model):
        """nn.Module.to() moves `weight.data` but not what Linear8bitLt keeps beside it (`weight.CB`/`SCB` before the
        first forward, `state.CB`/`SCB` after it; only Linear8bitLt's own `.to()` moves those, and a parent's `.to()`
        never calls it): make them follow the weight, or the next matmul mixes devices."""
        import bitsandbytes as bnb

        for layer in model.modules():
            if not isinstance(layer, bnb.nn.Linear8bitLt):
                continue
            weight, device = layer.weight, layer.weight.device
            if getattr(weight, "CB", None) is not None:
                weight.CB = weight.data
            if getattr(weight, "SCB", None) is not None:
                weight.SCB = weight.SCB.to(device)
            if layer.state.CB is not None:
                layer.state.CB = weight.data
            if layer.state.SCB is not None:
                layer.state.SCB = layer.state.SCB.to(device)


__all__ = ["BitsAndBytes4Bit", "BitsAndBytes8Bit", "dtype_name"]
