"""optimum-quanto adapter: int8, int4, int2 and float8 weights.

diffusers spells the option `weights_dtype`, transformers `weights`; quantkit accepts both.
Weights are quantized per output channel (int8, float8) or in groups of 128 along the input
(int4, int2, with a scale and a shift per group). The first int4/int2 call on a CPU builds a
kernel extension (about 30 s, then cached).
"""

from __future__ import annotations

from . import register
from .base import Backend, Option

GROUP_SIZE = 128  # quanto's group size for int4/int2 weights
_QTYPES = {"int8": "qint8", "int4": "qint4", "int2": "qint2", "float8": "qfloat8"}
_BITS = {"int8": 8, "float8": 8, "int4": 4, "int2": 2}


@register
class Quanto(Backend):
    name = "quanto"
    module = "optimum.quanto"
    pip_spec = "optimum-quanto>=0.2.7"
    bits = "int8 / int4 / int2 / float8 weights"
    options = {
        "weights_dtype": Option("int8", tuple(_QTYPES), aliases=("weights",), doc="weight dtype"),
        "modules_to_not_convert": Option(None, kind="list", doc="module names kept in full precision"),
    }

    @classmethod
    def describe(cls, kwargs):
        return cls.resolved(kwargs)["weights_dtype"]

    @classmethod
    def layer_problem(cls, kwargs, in_features, out_features, device, layer=None):
        if _BITS[cls.resolved(kwargs)["weights_dtype"]] < 8 and in_features % GROUP_SIZE:
            return f"in_features={in_features} is not a multiple of quanto's group size {GROUP_SIZE}"
        return None

    @classmethod
    def native_config(cls, kwargs, library):
        r = cls.resolved(kwargs)
        if library == "diffusers":
            import warnings

            from diffusers import QuantoConfig

            with warnings.catch_warnings():  # diffusers' deprecation notice for QuantoConfig
                warnings.simplefilter("ignore", FutureWarning)
                return QuantoConfig(
                    weights_dtype=r["weights_dtype"], modules_to_not_convert=r["modules_to_not_convert"]
                )
        from transformers import QuantoConfig

        return QuantoConfig(weights=r["weights_dtype"], modules_to_not_convert=r["modules_to_not_convert"])

    @classmethod
    def from_native(cls, config):
        weights = getattr(config, "weights_dtype", None) or getattr(config, "weights", "int8")
        if getattr(config, "activations", None):
            raise ValueError(
                "quantkit supports weight-only quanto configs; remove activations="
                f"{config.activations!r} (activation quantization needs calibration)."
            )
        out = {"weights_dtype": weights}
        if getattr(config, "modules_to_not_convert", None):
            out["modules_to_not_convert"] = list(config.modules_to_not_convert)
        return cls.normalize_kwargs(out)

    @classmethod
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes, layer=None):
        bits = _BITS[cls.resolved(kwargs)["weights_dtype"]]
        n = out_features * in_features
        if bits == 8:
            return n + out_features * dtype_bytes  # one scale per output channel
        groups = n // GROUP_SIZE
        return n * bits // 8 + 2 * groups * dtype_bytes  # packed codes + scale and shift per group

    @classmethod
    def _qtype(cls, kwargs):
        import optimum.quanto as q

        return getattr(q, _QTYPES[cls.resolved(kwargs)["weights_dtype"]])

    @classmethod
    def _empty(cls, linear, kwargs, has_bias):
        from optimum.quanto import QLinear

        return QLinear(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            device="meta",
            dtype=linear.weight.dtype,
            weights=cls._qtype(kwargs),
        )

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        new = cls._empty(linear, kwargs, linear.bias is not None)
        new.weight = linear.weight
        new.bias = linear.bias
        _materialize_buffers(new, device)
        new.freeze()
        return new

    @classmethod
    def linear_state(cls, module):
        return dict(module.state_dict()), {"dtype": str(module.weight.dtype).removeprefix("torch.")}

    @classmethod
    def restore_linear(cls, linear, kwargs, tensors, meta, device):
        import torch

        linear = torch.nn.Linear(
            linear.in_features,
            linear.out_features,
            bias="bias" in tensors,
            device="meta",
            dtype=getattr(torch, meta["dtype"]),
        )
        new = cls._empty(linear, kwargs, "bias" in tensors)
        new.load_state_dict({k: v.to(device) for k, v in tensors.items()}, assign=True)
        return new


def _materialize_buffers(module, device) -> None:
    """QLinear built on the meta device has meta activation-scale buffers; quanto initializes them to ones."""
    import torch

    for name, buf in list(module.named_buffers(recurse=False)):
        if buf.is_meta:
            module._buffers[name] = torch.ones(buf.shape, dtype=buf.dtype, device=device)
