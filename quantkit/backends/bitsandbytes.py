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
            packed, state = _quantize_4bit(linear.weight.data, weight)
            weight.data, weight.quant_state, weight.bnb_quantized = packed, state, True
            new.quant_state = state
            new.weight = weight
        else:
            new.weight = weight.to(device)  # quantizes on the device (one fused kernel on CUDA)
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        _cpu_kernel_fix(new)
        if new.support_avx512bf16_for_cpu and new.out_features % _CPU_BLOCK_N == 0:
            new.register_forward_pre_hook(_pack_for_cpu_kernel)
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
        return new

    @classmethod
    def native_layer_meta(cls, tensors, kwargs):
        return {} if any(k.startswith("weight.quant_state.") for k in tensors) else None

    @classmethod
    def before_move(cls, model, device):
        """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU kernel at the first CPU forward, and only
        `Params4bit.cuda()` undoes it; `model.to("cuda")` would carry the CPU layout over. Undo it before leaving."""
        import bitsandbytes as bnb
        import torch

        if torch.device(device).type == "cpu":
            return
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        for layer in model.modules():
            weight = getattr(layer, "weight", None) if isinstance(layer, bnb.nn.Linear4bit) else None
            if weight is not None and getattr(weight.quant_state, "packing_format_for_cpu", False):
                data, state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
                weight.data, weight.quant_state, layer.quant_state = data, state, state

    @classmethod
    def after_move(cls, model):
        import bitsandbytes as bnb

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


_CHUNK = 1 << 18  # elements per chunk of rows on the CPU: float32 scratch of 1 MiB per buffer, in L2/L3 cache
_DEVICE_CHUNK = 1 << 20  # on a GPU: fewer, larger kernels (a 2 MiB float16 temporary)
_STEP = 2.0**126  # (v - b) * _STEP is 0 or >= 1 in size for the 4-bit bucket bounds: see _quantize_4bit
_TINY = 2.0**-40  # bounds closer to 0 than this are compared directly
_CPU_BLOCK_N = 32  # rows per block of bitsandbytes' CPU 4-bit layout (_convert_weight_packed_for_cpu's block_n)


def _chunk_rows(n_rows: int, n_cols: int, multiple: int = 1) -> int:
    """Rows per chunk: about _CHUNK elements, and a whole number of `multiple`-element blocks."""
    rows = max(1, _CHUNK // n_cols)
    while (rows * n_cols) % multiple:
        rows += 1
    return min(rows, n_rows)


def _quantize_4bit(w, param):
    """bitsandbytes.functional.quantize_4bit(w, ...) for a CPU weight: the packed codes and the QuantState, equal
    bit for bit to bitsandbytes' own CPU kernel (absmax per block of 64, scaled = clamp(w * (1 / absmax), -1, 1),
    code = the bucket among the 16 code values). That kernel converts the whole weight to float32 and buckets it
    with torch.bucketize (about 25 ns a weight here); here each chunk of rows is bucketed by counting the bucket
    bounds below each value in vectorized float32 arithmetic, in cache (about 5 ns a weight)."""
    import bitsandbytes.functional as F
    import torch
    from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds

    from ..checkpoint import scratch

    blocksize, quant_type, storage = param.blocksize, param.quant_type, param.quant_storage
    op = torch.ops.bitsandbytes.quantize_4bit.default
    n = w.numel()
    if w.ndim != 2 or n % (2 * blocksize) or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        packed, absmax = op(w.contiguous(), blocksize, quant_type, storage)
    else:
        n_rows, n_cols = w.shape
        bounds, order = _get_4bit_quantize_bounds(quant_type, w.device)
        bounds = bounds.tolist()
        remap = None if quant_type == "nf4" else order.to(torch.uint8)  # FP4's codes are not sorted
        rows = _chunk_rows(n_rows, n_cols, 2 * blocksize)
        m = rows * n_cols
        x = scratch("bnb.x", (m,), torch.float32)
        t = scratch("bnb.t", (m,), torch.float32)
        u = scratch("bnb.u", (m,), torch.float32)
        codes = scratch("bnb.codes", (m,), torch.uint8)
        big = [b * _STEP for b in bounds if abs(b) >= _TINY]
        near_zero = [b for b in bounds if abs(b) < _TINY]  # FP4 has a bound at 0: compared directly
        packed = torch.empty(n // 2, dtype=torch.uint8)
        absmax = torch.empty(n // blocksize, dtype=torch.float32)
        for i in range(0, n_rows, rows):
            chunk = w[i : i + rows].reshape(-1)
            size, begin = chunk.numel(), i * n_cols
            xs, ts, us, cs = x[:size], t[:size], u[:size], codes[:size]
            am = absmax[begin // blocksize : (begin + size) // blocksize]
            out = packed[begin // 2 : (begin + size) // 2]
            xs.copy_(chunk)  # A.float()
            torch.amax(torch.abs(xs, out=ts).view(-1, blocksize), dim=-1, out=am)
            if not bool(torch.isfinite(am).all()):  # inf / nan: leave the corner cases to bitsandbytes itself
                p, a = op(w[i : i + rows], blocksize, quant_type, torch.uint8)
                out.copy_(p.view(-1))
                am.copy_(a)
                continue
            inverse = am.clamp(min=1e-38).reciprocal_()  # 1.0 / absmax.clamp(min=1e-38)
            torch.mul(xs.view(-1, blocksize), inverse.view(-1, 1), out=ts.view(-1, blocksize)).clamp_(-1, 1)
            # torch.bucketize(scaled, bounds) == how many bounds lie strictly below the value. (v > b) is computed
            # as clamp((v - b) * 2**126, 0, 1) in float32 arithmetic, faster here than comparisons, and exact: v and
            # b lie in [-1, 1], so v - b is 0 or at least ulp(b) / 2 >= 2**-40 in size (b >= 0.002 from 0), and
            # scaling by a power of two is exact. A bound at 0 is compared directly (v may be subnormal).
            torch.mul(ts, _STEP, out=xs)
            for b in near_zero:
                torch.gt(ts, b, out=cs.view(torch.bool))
            torch.sub(xs, big[0], out=ts).clamp_(0, 1)
            for b in big[1:]:
                ts.add_(torch.sub(xs, b, out=us).clamp_(0, 1))
            if near_zero:
                ts.add_(cs)
            cs.copy_(ts)
            if remap is not None:
                index = scratch("bnb.index", (size,), torch.int64)
                torch.index_select(remap, 0, index.copy_(cs), out=cs)  # order[q]
            torch.bitwise_left_shift(cs[::2], 4, out=out).bitwise_or_(cs[1::2])
        packed = packed.unsqueeze(1)
        if storage != torch.uint8:
            packed = packed.squeeze().view(storage).unsqueeze(1)
    # the rest of bitsandbytes.functional.quantize_4bit
    code = F.get_4bit_type(quant_type, device=w.device)
    if param.compress_statistics:
        offset = absmax.mean()
        qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
        return packed, F.QuantState(
            absmax=qabsmax,
            shape=w.shape,
            dtype=w.dtype,
            blocksize=blocksize,
            code=code,
            quant_type=quant_type,
            offset=offset,
            state2=state2,
        )
    return packed, F.QuantState(
        absmax=absmax, shape=w.shape, dtype=w.dtype, blocksize=blocksize, code=code, quant_type=quant_type
    )


def _pack_for_cpu_kernel(module, args) -> None:
    """Forward pre-hook of a CPU Linear4bit: the conversion Linear4bit.forward makes before its first inference
    call on a CPU with AVX512-BF16 (`_convert_weight_packed_for_cpu`), under the same conditions and to the same
    bytes, but in place and in chunks of 32-row blocks. bitsandbytes' own conversion makes temporaries 12x the
    packed weight per layer, which the heap keeps: measured on the 282M-parameter benchmark (nf4), 0.66 GiB
    resident after the first image instead of 0.22 GiB. Afterwards bitsandbytes sees the converted state and
    skips its own; saving undoes it (Linear4bit._save_to_state_dict), and this hook does it again when needed."""
    x = args[0] if args else None
    state = getattr(module.weight, "quant_state", None)
    if (
        not hasattr(x, "device")
        or x.device.type != "cpu"
        or not module.support_avx512bf16_for_cpu
        or module.training
        or x.requires_grad
        or state is None
        or getattr(state, "packing_format_for_cpu", False)
        or module.weight.data.device.type != "cpu"
    ):
        return
    module.weight.data, module.weight.quant_state = _cpu_layout(module.weight.data, state)


def _cpu_layout(qweight, state):
    """bitsandbytes.functional._convert_weight_packed_for_cpu(qweight, state), computed in place: each block of 32
    rows keeps its bytes, reordered (rows in blocks of 32 and column pairs: (32, K/2, 2) -> (K/2, 32, 2), 64 codes
    a line, high half << 4 | low half)."""
    import bitsandbytes.functional as F
    import torch

    from ..checkpoint import scratch

    if qweight.dtype != torch.uint8:
        state.original_storage_type = qweight.dtype
        qweight = qweight.view(torch.uint8)
    state.original_dtype = state.dtype
    state.original_nested = state.nested
    state.original_qshape = qweight.shape
    n_rows, n_cols = state.shape
    flat = qweight.reshape(-1)
    rows = min(n_rows, max(_CPU_BLOCK_N, _CHUNK // n_cols // _CPU_BLOCK_N * _CPU_BLOCK_N))
    codes = scratch("bnb.layout.codes", (rows * n_cols,), torch.uint8)
    lines = scratch("bnb.layout.lines", (rows * n_cols // 64, 64), torch.uint8)
    for i in range(0, n_rows, rows):
        r = min(rows, n_rows - i)
        block = flat[i * n_cols // 2 : (i + r) * n_cols // 2]
        cs, ls = codes[: r * n_cols], lines[: r * n_cols // 64]
        torch.bitwise_right_shift(block, 4, out=cs[0::2])  # unpack: high nibble first
        torch.bitwise_and(block, 0xF, out=cs[1::2])
        ls.view(r // _CPU_BLOCK_N, n_cols // 2, _CPU_BLOCK_N, 2).copy_(
            cs.view(r // _CPU_BLOCK_N, _CPU_BLOCK_N, n_cols // 2, 2).transpose(1, 2)
        )
        torch.bitwise_left_shift(ls[:, 32:], 4, out=block.view(-1, 32)).bitwise_or_(ls[:, :32])
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2)
        absmax += state.offset
        if absmax.dtype != torch.float32:
            absmax = absmax.float()
        state.absmax = absmax
        state.nested = False
        delattr(state, "state2")
    state.absmax = state.absmax.reshape(n_rows, n_cols // state.blocksize).T.to(torch.bfloat16).contiguous()
    state.dtype = torch.bfloat16
    state.packing_format_for_cpu = True
    return flat.view(n_rows, n_cols // 2), state


def _quantize_int8(w):
    """(CB, SCB) as Int8Params._quantize computes them: the weight in float16, then bitsandbytes'
    int8_vectorwise_quant (row absmax SCB, CB = round(w * (127 / SCB)) with a float32 product), in chunks of rows
    (rows are independent). On the CPU the arithmetic of bitsandbytes' default kernel is done here, in float32
    (exact for float16 values; that kernel makes weight-sized float32 temporaries); on a GPU the device's own
    kernel runs per chunk, so that no weight-sized float16 copy is made either."""
    import bitsandbytes.functional as F
    import torch

    from ..checkpoint import scratch

    if w.ndim != 2:
        CB, SCB, _ = F.int8_vectorwise_quant(w.contiguous().to(torch.float16))
        return CB, SCB
    n, k = w.shape
    cpu = w.device.type == "cpu"
    rows = _chunk_rows(n, k) if cpu else min(n, max(1, _DEVICE_CHUNK // k))
    CB = torch.empty(n, k, dtype=torch.int8, device=w.device)
    SCB = torch.empty(n, dtype=torch.float32, device=w.device)
    half = scratch("bnb.half", (rows, k), torch.float16, w.device)
    if cpu:
        f = scratch("bnb.f", (rows, k), torch.float32)
        g = scratch("bnb.g", (rows, k), torch.float32)
    for i in range(0, n, rows):
        chunk = w[i : i + rows]
        r = chunk.shape[0]
        h = half[:r]
        h.copy_(chunk)  # .to(torch.float16)
        if not cpu:
            CB[i : i + r], SCB[i : i + r], _ = F.int8_vectorwise_quant(h)
            continue
        fs, stats = f[:r], SCB[i : i + r]
        fs.copy_(h)
        torch.amax(torch.abs(fs, out=g[:r]), dim=1, out=stats)  # torch.max(A.abs(), dim=1).values.float()
        fs.mul_((127.0 / stats).unsqueeze(-1)).round_()  # round(A * (127.0 / row_stats))
        CB[i : i + r].copy_(fs)
    return CB, SCB


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
            CB, SCB = _quantize_int8(linear.weight.data.to(device))
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
