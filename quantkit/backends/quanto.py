"""optimum-quanto adapter: int8, int4, int2 and float8 weights.

diffusers spells the option `weights_dtype`, transformers `weights`; quantkit accepts both.
Weights are quantized per output channel (int8, float8) or in groups of 128 along the input
(int4, int2, with a scale and a shift per group). The first int4/int2 call on a CPU builds a
kernel extension (about 30 s, then cached).
"""

from __future__ import annotations

from collections import OrderedDict

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

    # -- first-class models ------------------------------------------------------------------------
    @classmethod
    def native_skip(cls, model, layers, library):
        """diffusers' quanto quantizer skips a Linear when its *local* name (`to_q`, `linear`) is listed, so the kept
        layers are named by local name, and that works only when no quantized layer shares one of those names."""
        if library != "diffusers":
            return super().native_skip(model, layers, library)
        kept = {n.rpartition(".")[2] for n in cls._linears(model) if n not in set(layers)}
        if kept & {n.rpartition(".")[2] for n in layers}:
            return None
        return sorted(kept)

    @classmethod
    def native_converts(cls, name, skip, library):
        if library != "diffusers":
            return super().native_converts(name, skip, library)
        return name.rpartition(".")[2] not in skip

    @classmethod
    def attach_native(cls, model, kwargs, library, layers, dtype=None):
        """The library's quanto quantizer, plus the key mapping diffusers' LoRA loader needs (see `_LoraKeys`)."""
        reason = super().attach_native(model, kwargs, library, layers, dtype)
        if not getattr(model, "_quantkit_lora_keys", False):
            model._register_state_dict_hook(_lora_keys_hook)
            model._quantkit_lora_keys = True
        return reason

    @classmethod
    def native_layer_meta(cls, tensors, kwargs):
        if "weight._data" not in tensors:
            return None
        return {"dtype": str(tensors["weight._scale"].dtype).removeprefix("torch.")}

    @classmethod
    def lora_weight(cls, layer):
        """peft's LoRA layer merges by `weight.data += delta`, which a quanto weight drops silently (its in-place add
        returns a new float tensor): quantkit merges into the dequantized weight and quantizes it again."""
        from optimum.quanto import QLinear, QTensor

        if isinstance(layer, QLinear) and isinstance(layer.weight, QTensor):
            return layer.weight.dequantize()
        return None

    @classmethod
    def set_lora_weight(cls, layer, weight):
        import torch

        layer.weight = torch.nn.Parameter(weight.to(layer.weight.dtype), requires_grad=False)
        layer.freeze()


class _LoraKeys(OrderedDict):
    """A quanto model's state dict that also answers for `<layer>.weight`.

    A QLinear saves its weight as `weight._data` and `weight._scale`; diffusers' FLUX LoRA loader looks up
    `transformer.state_dict()[f"{layer}.weight"]` for its shape and device (`_maybe_expand_lora_state_dict`) and
    fails with a KeyError (huggingface/diffusers#10512). This dict returns the layer's quantized weight (a QTensor
    with the logical shape) for such a key, without listing it: iterating, saving and `in` see the real keys only.
    """

    def __missing__(self, key):
        owner, _, leaf = key.rpartition(".")
        model = self.__dict__.get("_model")
        if leaf == "weight" and model is not None and model() is not None:
            if f"{key}._data" in self or f"{owner}.base_layer.weight._data" in self:
                layer = model().get_submodule(owner)
                while hasattr(layer, "base_layer"):  # a peft LoRA layer around the QLinear
                    layer = layer.base_layer
                return layer.weight
        raise KeyError(key)

    def __reduce__(self):  # pickles, copies and saves as the plain OrderedDict torch returns
        state = {k: v for k, v in self.__dict__.items() if k != "_model"}
        return OrderedDict, (), state or None, None, iter(self.items())


def _lora_keys_hook(module, state_dict, prefix, local_metadata):
    """state_dict hook on the root model (prefix ""): return the state dict as a `_LoraKeys`."""
    import weakref

    if prefix:
        return None
    out = _LoraKeys(state_dict)
    if hasattr(state_dict, "_metadata"):
        out._metadata = state_dict._metadata
    out._model = weakref.ref(module)
    return out


def _materialize_buffers(module, device) -> None:
    """QLinear built on the meta device has meta activation-scale buffers; quanto initializes them to ones."""
    import torch

    for name, buf in list(module.named_buffers(recurse=False)):
        if buf.is_meta:
            module._buffers[name] = torch.ones(buf.shape, dtype=buf.dtype, device=device)
