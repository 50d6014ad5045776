"""optimum-quanto adapter: int8, int4, int2 and float8 weights.

diffusers spells the option `weights_dtype`, transformers `weights`; quantkit accepts both.
Weights are quantized per output channel (int8, float8) or in groups of 128 along the input
(int4, int2, with a scale and a shift per group). quanto builds a C++ extension on the first int4/int2
dequantization on a CPU (a compiler and ninja needed, 108 s measured on 2 cores); quantkit's layers unpack in torch
ops instead (`quanto_unpack`: the same bytes, as fast), so nothing is compiled.
"""

from __future__ import annotations

from collections import OrderedDict

from . import register
from .base import Backend, Option
from .quanto_unpack import use_torch_unpack_on_cpu

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

        use_torch_unpack_on_cpu()  # every quantkit QLinear is built through here

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
        """QLinear with the weight quantized as quanto's `freeze()` does it, bit for bit; int8 and int4 run in row
        chunks straight into the final tensors (a chunk's temporaries stay in cache, nothing weight-sized is
        allocated but the result), every other case goes through `freeze()` itself."""
        new = cls._empty(linear, kwargs, linear.bias is not None)
        new.bias = linear.bias
        _materialize_buffers(new, device)
        qweight = _quantize_chunked(new, linear.weight.detach())
        if qweight is None:
            new.weight = linear.weight
            new.freeze()
        else:
            new.weight = _parameter(qweight)
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
        use_torch_unpack_on_cpu()
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


# Chunks of rows as quantkit.backends.chunking sizes them; the divisions in the weight's dtype as quanto does.
_PACK_ROWS = 64  # torch's CPU int4 packing for tinygemm lays out blocks of 64 rows (same bytes when packed apart)


def _parameter(t):
    import torch

    return torch.nn.Parameter(t)  # as QModuleMixin.freeze() wraps the quantized weight


def _quantize_chunked(qlinear, w):
    """quanto's weight quantization for a QLinear (AbsmaxOptimizer int8 per row, MaxOptimizer int4 in groups of
    128), computed in chunks of rows, bit for bit, or None where another path applies (other qtypes or optimizers,
    a single row, a group size other than 128)."""
    import torch
    from optimum.quanto import qint4, qint8
    from optimum.quanto.tensor.optimizers import AbsmaxOptimizer, MaxOptimizer

    qtype = qlinear.weight_qtype
    if w.ndim != 2 or w.shape[0] < 2 or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return None
    if qtype == qint8 and type(qlinear.optimizer) is AbsmaxOptimizer:
        return _int8(w, qtype, qlinear.activation_qtype)
    if qtype == qint4 and type(qlinear.optimizer) is MaxOptimizer and qlinear.weight_group_size == GROUP_SIZE:
        return _int4(w, qtype)
    return None


def _rows(w, k: int, multiple: int = 1) -> int:
    from .chunking import chunk_rows

    rows = chunk_rows(w.shape[0], k, w.device.type)
    return min(max(multiple, rows // multiple * multiple), w.shape[0])


def _int8(w, qtype, activation_qtype):
    """AbsmaxOptimizer + quantize_symmetric: scale = max|w| per row / 127 (in w's dtype), data = clamp(round(w /
    scale), -128, 127) with the quotient rounded to w's dtype, as quanto computes it."""
    import torch
    from optimum.quanto.tensor.weights import WeightQBytesTensor

    from ..checkpoint import scratch

    n, k = w.shape
    rows = _rows(w, k)
    scale = torch.empty(n, 1, dtype=w.dtype, device=w.device)
    data = torch.empty(n, k, dtype=torch.int8, device=w.device)
    f = scratch("quanto.f", (rows, k), torch.float32, w.device)
    g = scratch("quanto.g", (rows, k), torch.float32, w.device)
    q = scratch("quanto.q", (rows, k), w.dtype, w.device)
    top = scratch("quanto.top", (rows, 1), torch.float32, w.device)
    for i in range(0, n, rows):
        chunk = w[i : i + rows]
        r = chunk.shape[0]
        fs, gs, qs, s = f[:r], g[:r], q[:r], scale[i : i + r]
        fs.copy_(chunk)
        torch.amax(torch.abs(fs, out=gs), dim=1, keepdim=True, out=top[:r])  # max|w|, exact in float32
        s.copy_(top[:r]).div_(qtype.qmax)  # rmax / qmax, in w's dtype
        torch.div(chunk, s, out=qs)  # base / scale, rounded to w's dtype
        gs.copy_(qs).round_().clamp_(qtype.qmin, qtype.qmax)
        data[i : i + r].copy_(gs)
    return WeightQBytesTensor.create(qtype, 0, w.size(), w.stride(), data, scale, activation_qtype)


def _int4(w, qtype):
    """MaxOptimizer + quantize_affine in groups of 128 along each row: scale = (max - min) / 15, shift = -min,
    data = clamp(round((w + shift) / scale), 0, 15), all in w's dtype as quanto computes them. On the CPU in bf16
    quanto packs that for its tinygemm kernel (TinyGemmWeightQBitsTensor, via a weight-sized int32 copy); that
    packing works in blocks of 64 rows, so here each chunk of 64-row blocks is packed as soon as it is quantized.
    Elsewhere quanto's own factory packs the codes."""
    import torch
    from optimum.quanto.tensor.weights import WeightQBitsTensor

    from ..checkpoint import scratch

    n, k = w.shape
    per_row = k // GROUP_SIZE  # groups per row: quanto's group(w, axis=0) takes 128 consecutive weights of a row
    groups = w.reshape(-1, GROUP_SIZE)
    tinygemm = w.device.type == "cpu" and w.dtype == torch.bfloat16 and n % _PACK_ROWS == 0
    rows = _rows(w, k, _PACK_ROWS if tinygemm else 1)
    scale = torch.empty(n * per_row, 1, dtype=w.dtype, device=w.device)
    shift = torch.empty_like(scale)
    f = scratch("quanto.f", (rows * per_row, GROUP_SIZE), torch.float32, w.device)
    q = scratch("quanto.q", (rows * per_row, GROUP_SIZE), w.dtype, w.device)
    lo = scratch("quanto.lo", (rows * per_row, 1), torch.float32, w.device)
    hi = scratch("quanto.hi", (rows * per_row, 1), torch.float32, w.device)
    if tinygemm:
        codes = scratch("quanto.codes", (rows * per_row * GROUP_SIZE,), torch.int32)  # the packing op's input
        packed = torch.empty(n, k // 2, dtype=torch.uint8)
    else:
        data = torch.empty(groups.shape, dtype=torch.uint8, device=w.device)
    levels = qtype.qmax - qtype.qmin
    for i in range(0, n, rows):
        g0, g1 = i * per_row, min(n, i + rows) * per_row
        m = g1 - g0
        chunk, sc, sh, fs, qs = groups[g0:g1], scale[g0:g1], shift[g0:g1], f[:m], q[:m]
        fs.copy_(chunk)
        torch.amin(fs, dim=1, keepdim=True, out=lo[:m])  # exact in float32
        torch.amax(fs, dim=1, keepdim=True, out=hi[:m])
        sh.copy_(lo[:m])
        sc.copy_(hi[:m]).sub_(sh).div_(levels)  # (rmax - rmin) / (qmax - qmin)
        sh.neg_()  # shift = -rmin
        torch.add(chunk, sh, out=qs).div_(sc)  # (base + shift) / scale
        fs.copy_(qs).round_().clamp_(0, 2**qtype.bits - 1)
        if tinygemm:
            r = m // per_row
            c = codes[: r * k].view(r, k)
            c.copy_(fs.view(r, k))  # TinyGemmPackedTensor.pack: t.to(torch.int32)
            packed[i : i + r] = torch._convert_weight_to_int4pack_for_cpu(c, 2)
        else:
            data[g0:g1].copy_(fs)
    if not tinygemm:
        return WeightQBitsTensor.create(qtype, 0, GROUP_SIZE, w.size(), w.stride(), data, scale, shift)
    from optimum.quanto.tensor.weights.tinygemm import TinyGemmWeightQBitsTensor
    from optimum.quanto.tensor.weights.tinygemm.packed import TinyGemmPackedTensor

    # TinyGemmWeightQBitsTensor.__init__ on unpacked data: scale and mid-point shift side by side
    scale = scale.reshape(n, per_row, 1)
    shift = -shift.reshape(n, per_row, 1) + 2 ** (qtype.bits - 1) * scale
    scale_shift = torch.cat([scale, shift], 2).transpose(0, 1).contiguous()
    data = TinyGemmPackedTensor(packed, w.size(), (k, 1))
    return TinyGemmWeightQBitsTensor(qtype, 0, GROUP_SIZE, w.size(), w.stride(), data, scale_shift)


def _materialize_buffers(module, device) -> None:
    """QLinear built on the meta device has meta activation-scale buffers; quanto initializes them to ones."""
    import torch

    for name, buf in list(module.named_buffers(recurse=False)):
        if buf.is_meta:
            module._buffers[name] = torch.ones(buf.shape, dtype=buf.dtype, device=device)
