"""bitsandbytes' own computations, done in chunks of rows into the final tensors, bit for bit.

quantize_4bit / quantize_int8: the weight quantization of Params4bit / Int8Params without weight-sized temporaries;
pack_for_cpu_kernel: the AVX512-BF16 CPU layout bitsandbytes converts a 4-bit weight to at its first forward, done in
place. tests/test_stream.py compares each with bitsandbytes' own result (torch.equal).
"""

from __future__ import annotations

from .chunking import CHUNK, chunk_rows

_STEP = 2.0**126  # (v - b) * _STEP is 0 or >= 1 in size for the 4-bit bucket bounds: see quantize_4bit
_TINY = 2.0**-40  # bounds closer to 0 than this are compared directly
CPU_BLOCK_N = 32  # rows per block of bitsandbytes' CPU 4-bit layout (_convert_weight_packed_for_cpu's block_n)


def quantize_4bit(w, param):
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
        rows = chunk_rows(n_rows, n_cols, "cpu", 2 * blocksize)
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


def pack_for_cpu_kernel(module, args) -> None:
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
    rows = min(n_rows, max(CPU_BLOCK_N, CHUNK // n_cols // CPU_BLOCK_N * CPU_BLOCK_N))
    codes = scratch("bnb.layout.codes", (rows * n_cols,), torch.uint8)
    lines = scratch("bnb.layout.lines", (rows * n_cols // 64, 64), torch.uint8)
    for i in range(0, n_rows, rows):
        r = min(rows, n_rows - i)
        block = flat[i * n_cols // 2 : (i + r) * n_cols // 2]
        cs, ls = codes[: r * n_cols], lines[: r * n_cols // 64]
        torch.bitwise_right_shift(block, 4, out=cs[0::2])  # unpack: high nibble first
        torch.bitwise_and(block, 0xF, out=cs[1::2])
        ls.view(r // CPU_BLOCK_N, n_cols // 2, CPU_BLOCK_N, 2).copy_(
            cs.view(r // CPU_BLOCK_N, CPU_BLOCK_N, n_cols // 2, 2).transpose(1, 2)
        )
        torch.bitwise_left_shift(ls[:, 32:], 4, out=block.view(-1, 32)).bitwise_or_(ls[:, :32])
    if state.nested:
        # kept (1 byte per 64 weights and a small state): `undo_cpu_layout` puts them back exactly, where
        # bitsandbytes' inverse quantizes the bfloat16 copy again (a slightly different model after a save)
        state.quantkit_nested = (state.absmax, state.offset, state.state2)
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


def quantize_int8(w):
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
    rows = chunk_rows(n, k, w.device.type)
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


def undo_cpu_layout(layer) -> None:
    """Undo the AVX512-BF16 CPU layout of a Linear4bit in place (after a CPU forward made it), with the
    statistics back in their own order.

    bitsandbytes' inverse (`_convert_weight_packed_for_cpu_inverse`, which its `_save_to_state_dict` and
    `Params4bit.cuda()` call) leaves a non-nested absmax transposed: (in_features / 64, out_features) where the
    kernels read out_features x (in_features / 64) in row order. For layers 64 wide the two orders agree; for wider
    ones every block gets another block's scale. Measured on the embedded pipeline (NF4 transformer, 128-wide
    layers): after one image, `pipe.transformer.state_dict()` left the live model drawing an image 11.9 dB from
    the one before, and the saved folder reloaded to the same wrong image. Here the absmax is put back in row
    order (float32, as quantization made it; its values keep the bfloat16 rounding the layout applied), and nested
    statistics are the ones quantization made, kept aside by `pack_for_cpu_kernel`."""
    import torch
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight = getattr(layer, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return
    nested, kept = state.original_nested, getattr(state, "quantkit_nested", None)
    data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    if kept is not None:  # laid out by `pack_for_cpu_kernel`: the nested statistics exactly as quantized
        state.absmax, state.offset, state.state2 = kept
        del state.quantkit_nested
    elif not nested:  # a nested absmax is re-quantized from absmax.T, in the right order, by bitsandbytes
        state.absmax = state.absmax.T.contiguous().reshape(-1).to(torch.float32)
    weight.data, weight.quant_state, layer.quant_state = data, state, state


def unpack_before_state_dict(module, prefix, keep_vars) -> None:
    """State-dict pre-hook of a Linear4bit: `undo_cpu_layout` before bitsandbytes' own `_save_to_state_dict`
    reads the layer (the next CPU forward lays it out again, through `pack_for_cpu_kernel` or bitsandbytes)."""
    undo_cpu_layout(module)


def guard_state_dicts(model) -> None:
    """`unpack_before_state_dict` on every Linear4bit of `model` that lacks it (layers diffusers built too)."""
    import bitsandbytes as bnb

    for layer in model.modules():
        if isinstance(layer, bnb.nn.Linear4bit) and not getattr(layer, "_quantkit_state_dict_guard", False):
            layer.register_state_dict_pre_hook(unpack_before_state_dict)
            layer._quantkit_state_dict_guard = True
