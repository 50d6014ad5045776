"""torchao adapter: weight-only and dynamic int8, float8, int4 (CUDA) as tensor subclasses.

torchao configs are `AOBaseConfig` objects; diffusers' old string form (`TorchAoConfig("int8wo")`)
now raises a TypeError upstream. quantkit accepts either a config object or one of the
shortcuts below, which it turns into the object.
"""

from __future__ import annotations

import importlib.util

from ..errors import did_you_mean, one_of
from ..problems import Problem, ProblemKind
from . import register
from .base import Backend, Option

# shortcut -> (torchao config class, kwargs, needs CUDA, bits of a weight)
SHORTCUTS: dict[str, tuple[str, dict, bool, int]] = {
    "int8wo": ("Int8WeightOnlyConfig", {}, False, 8),
    "int8dq": ("Int8DynamicActivationInt8WeightConfig", {}, False, 8),
    "float8wo": ("Float8WeightOnlyConfig", {}, False, 8),
    "float8dq": ("Float8DynamicActivationFloat8WeightConfig", {}, True, 8),
    "int4wo": ("Int4WeightOnlyConfig", {"group_size": 128}, True, 4),
}
ALIASES = {
    "int8_weight_only": "int8wo",
    "int8_dynamic_activation_int8_weight": "int8dq",
    "float8_weight_only": "float8wo",
    "float8_dynamic_activation_float8_weight": "float8dq",
    "int4_weight_only": "int4wo",
}
_CLASS_TO_SHORTCUT = {cls: key for key, (cls, _, _, _) in SHORTCUTS.items()}


def _is_aoconfig(value) -> bool:
    return any(base.__name__ == "AOBaseConfig" for base in type(value).__mro__)


@register
class TorchAO(Backend):
    name = "torchao"
    module = "torchao"
    pip_spec = "torchao>=0.15"
    bits = "int8 / float8 / int4 tensor subclasses"
    options = {
        "quant_type": Option(
            "int8wo", kind="torchao", doc="a shortcut (" + ", ".join(SHORTCUTS) + ") or a torchao AOBaseConfig object"
        ),
        "modules_to_not_convert": Option(None, kind="list", doc="module names kept in full precision"),
    }

    @classmethod
    def _check_value(cls, name, value):
        if name != "quant_type":
            return super()._check_value(name, value)
        if isinstance(value, str):
            key = ALIASES.get(value, value)
            if key not in SHORTCUTS:
                raise ValueError(
                    f"Unknown torchao quant_type {value!r}.{did_you_mean(value, [*SHORTCUTS, *ALIASES])}"
                    f" Use a shortcut ({one_of(SHORTCUTS)}) or a torchao config object such as "
                    "torchao.quantization.Int8WeightOnlyConfig()."
                )
            return key
        if _is_aoconfig(value):
            return value
        raise TypeError(
            f"torchao quant_type must be a shortcut string ({one_of(SHORTCUTS)}) or a torchao "
            f"AOBaseConfig object, got {type(value).__name__}."
        )

    @classmethod
    def config_object(cls, kwargs):
        """The torchao AOBaseConfig object these kwargs stand for."""
        quant_type = cls.resolved(kwargs)["quant_type"]
        if not isinstance(quant_type, str):
            return quant_type
        import torchao.quantization as tq

        class_name, ctor_kwargs, _, _ = SHORTCUTS[quant_type]
        return getattr(tq, class_name)(**ctor_kwargs)

    @classmethod
    def shortcut(cls, kwargs) -> str | None:
        quant_type = cls.resolved(kwargs)["quant_type"]
        return quant_type if isinstance(quant_type, str) else _CLASS_TO_SHORTCUT.get(type(quant_type).__name__)

    @classmethod
    def describe(cls, kwargs):
        return cls.shortcut(kwargs) or type(cls.resolved(kwargs)["quant_type"]).__name__

    @classmethod
    def device_problem(cls, kwargs, device):
        key = cls.shortcut(kwargs)
        if key and SHORTCUTS[key][2] and not device.startswith("cuda"):
            return Problem(
                ProblemKind.NEEDS_HARDWARE,
                f"torchao {key!r} ({SHORTCUTS[key][0]}) needs a CUDA GPU (its CPU kernels are missing)",
                "on CPU use torchao 'int8wo', 'int8dq' or 'float8wo', quanto 'int4', bitsandbytes_4bit or gguf 'Q4_0'",
            )
        if key == "int4wo" and importlib.util.find_spec("mslk") is None:
            # torchao >= 0.16 runs int4 weight-only through the mslk kernels (measured: "Requires mslk >= 1.0.0")
            return Problem(
                ProblemKind.MISSING_PACKAGE,
                "package 'mslk' is not installed (torchao 'int4wo' runs on its kernels)",
                "use quanto 'int4', bitsandbytes_4bit nf4 or gguf 'Q4_0'",
                install="mslk-cuda>=1.0.0",
            )
        return None

    @classmethod
    def encode_option(cls, name, value):
        """A torchao config object becomes {"_torchao": its dict form with a type tag} (torchao's own format)."""
        if name == "quant_type" and _is_aoconfig(value):
            from torchao.core.config import config_to_dict

            return {"_torchao": config_to_dict(value)}
        return super().encode_option(name, value)

    @classmethod
    def decode_option(cls, name, value):
        if name == "quant_type" and isinstance(value, dict):
            if set(value) != {"_torchao"}:
                raise ValueError(
                    f"torchao quant_type {value!r} is neither a shortcut ({one_of(SHORTCUTS)}) nor a config object "
                    "in its JSON form {'_torchao': {...}} (what to_dict() writes)."
                )
            from torchao.core.config import config_from_dict

            return config_from_dict(value["_torchao"])
        return value

    @classmethod
    def option_choices(cls, name):
        if name == "quant_type":  # a shortcut string or a config object: a dropdown offers the shortcuts
            return tuple(SHORTCUTS)
        return super().option_choices(name)

    @classmethod
    def native_config(cls, kwargs, library):
        r = cls.resolved(kwargs)
        if library == "diffusers":
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        return TorchAoConfig(quant_type=cls.config_object(kwargs), modules_to_not_convert=r["modules_to_not_convert"])

    @classmethod
    def from_native(cls, config):
        out = {"quant_type": config.quant_type}
        if getattr(config, "modules_to_not_convert", None):
            out["modules_to_not_convert"] = list(config.modules_to_not_convert)
        return cls.normalize_kwargs(out)

    @classmethod
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes, layer=None):
        key = cls.shortcut(kwargs)
        n = out_features * in_features
        if key == "int4wo":
            return n // 2 + 2 * (n // 128) * dtype_bytes
        if key in ("int8wo", "int8dq"):
            return n + out_features * (4 + 1)  # int8 codes + fp32 scale + int8 zero point per row
        return n + out_features * 4  # float8 codes + fp32 scale per row

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        """`quantize_(linear, config)`; for the int8 weight-only config (per row, the default) the same result,
        bit for bit, computed in row chunks straight into the int8 tensor (torchao itself multiplies the whole
        bf16 weight by an fp32 scale, so it makes several weight-sized fp32 temporaries per layer)."""
        config = cls.config_object(kwargs)
        qweight = _int8_weight_only(linear.weight.detach(), config)
        if qweight is None:
            from torchao.quantization import quantize_

            quantize_(linear, config)
            return linear
        # the rest of torchao's handler for Int8WeightOnlyConfig (_int8_weight_only_transform)
        import types
        from functools import partial

        import torch
        from torchao.quantization.quant_api import _module_extra_repr
        from torchao.quantization.utils import recommended_inductor_config_setter

        if config.set_inductor_config:
            recommended_inductor_config_setter()
        linear.weight = torch.nn.Parameter(qweight, requires_grad=False)
        linear.extra_repr = types.MethodType(
            partial(_module_extra_repr, original_extra_repr=linear.extra_repr, parameter_name="weight"), linear
        )
        return linear

    @classmethod
    def linear_state(cls, module):
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        state = {f"layer.{k}": v for k, v in module.state_dict().items()}
        tensors, metadata = flatten_tensor_state_dict(state)
        return tensors, {"torchao": metadata}

    @classmethod
    def restore_linear(cls, linear, kwargs, tensors, meta, device):
        import torch
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        state, _ = unflatten_tensor_state_dict(tensors, meta["torchao"])
        state = {k.removeprefix("layer."): v.to(device) for k, v in state.items()}
        new = torch.nn.Linear(linear.in_features, linear.out_features, bias="bias" in state, device="meta")
        new.load_state_dict(state, assign=True)
        new.weight.requires_grad_(False)
        return new

    # -- first-class models ------------------------------------------------------------------------
    @classmethod
    def native_converts(cls, name, skip, library):
        """Pre-quantized torchao weights are assigned as they were saved (a subclass stays one, a plain weight stays
        plain), whatever modules_to_not_convert says: the full names of the kept layers describe the set exactly."""
        return name not in skip

    @classmethod
    def native_quantizer(cls, config, library):
        """diffusers' torchao quantizer reads `offload` in `is_serializable`; its `validate_environment` sets it
        (False without a cpu/disk device map, which a model quantkit loaded does not have)."""
        quantizer = super().native_quantizer(config, library)
        if library == "diffusers":
            quantizer.offload = False
        return quantizer

    @classmethod
    def restore_native(cls, model, kwargs, state, metadata, device):
        """diffusers and transformers save torchao weights flattened (`flatten_tensor_state_dict`: plain tensors plus
        a JSON description in the file's metadata); torchao's `unflatten_tensor_state_dict` rebuilds the subclasses."""
        import torch
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
        from torchao.prototype.safetensors.safetensors_utils import is_metadata_torchao

        if not metadata or not is_metadata_torchao(metadata):
            return []
        import json

        names = json.loads(metadata["tensor_names"])
        # tensors at the model root have no module prefix; torchao's parser needs one (as diffusers notes too)
        nested = {k: v for k, v in state.items() if "." in k}
        meta = {**metadata, "tensor_names": json.dumps([n for n in names if "." in n])}
        rebuilt, leftover = unflatten_tensor_state_dict(nested, meta)
        for k in nested:
            state.pop(k)
        state.update(leftover)
        restored = []
        for key, tensor in rebuilt.items():
            owner, _, leaf = key.rpartition(".")
            module = model.get_submodule(owner)
            if leaf == "weight" and isinstance(module, torch.nn.Linear) and type(tensor) is not torch.Tensor:
                module._parameters[leaf] = torch.nn.Parameter(tensor.to(device), requires_grad=False)
                restored.append(owner)
            else:
                state[key] = tensor
        return restored


def _int8_weight_only(w, config):
    """Int8Tensor.from_hp(w, PerRow()) as torchao computes it, chunk by chunk of rows; None for any other config
    (then quantize_ runs as usual). torchao: scale = max(-min(w), max(w), 0) per row / 127.5 in w's dtype, clamped
    to float32's eps, stored as float32; q = clamp(round(w * (1 / scale)), -128, 127) where the product is float32
    (type promotion), so one float32 copy of a chunk serves the min/max and the product exactly."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig
    from torchao.quantization.granularity import PerRow

    if (
        type(config) is not Int8WeightOnlyConfig
        or getattr(config, "version", None) != 2
        or config.group_size is not None
        or type(config.granularity) is not PerRow
        or config.granularity.dim not in (-1, 1)
        or w.ndim != 2
        or w.dtype not in (torch.bfloat16, torch.float16, torch.float32)
    ):
        return None
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    from ..checkpoint import scratch
    from .chunking import chunk_rows

    n, k = w.shape
    rows = chunk_rows(n, k, w.device.type)  # float32 products are what torchao's own arithmetic comes to
    qdata = torch.empty(n, k, dtype=torch.int8, device=w.device)
    scale = torch.empty(n, 1, dtype=torch.float32, device=w.device)
    f = scratch("torchao.f", (rows, k), torch.float32, w.device)
    lo = scratch("torchao.lo", (rows, 1), torch.float32, w.device)
    hi = scratch("torchao.hi", (rows, 1), torch.float32, w.device)
    eps = torch.finfo(torch.float32).eps
    for i in range(0, n, rows):
        chunk = w[i : i + rows]
        r = chunk.shape[0]
        fs = f[:r]
        fs.copy_(chunk)
        torch.amin(fs, dim=1, keepdim=True, out=lo[:r])  # exact: the row's own values
        torch.amax(fs, dim=1, keepdim=True, out=hi[:r])
        # choose_qparams_affine (MappingType.SYMMETRIC), in w's dtype as torchao does it
        low, high = lo[:r].to(w.dtype), hi[:r].to(w.dtype)
        zeros = torch.zeros_like(low)
        top = torch.max(-torch.min(low, zeros), torch.max(high, zeros))
        s = scale[i : i + r]
        s.copy_(torch.clamp(top / (float(127 - (-128)) / 2), min=eps))
        fs.mul_(1.0 / s).round_().clamp_(-128, 127)  # + zero_point (0) changes nothing
        qdata[i : i + r].copy_(fs)
    zero_point = torch.zeros_like(scale, dtype=torch.int8)
    return Int8Tensor(qdata, scale, [1, k], w.dtype, zero_point=zero_point)


__all__ = ["SHORTCUTS", "TorchAO"]
