"""Benchmark: time to quantize a ~280M-parameter FLUX-layout transformer to GGUF Q4_0 and to each K-quant.

Builds the transformer of benchmarks/bench_load_memory.py on the meta device (no weights), draws random bf16
weights N(0, 0.02^2) with the shape of every Linear weight whose rows split into 256-weight super-blocks (the
tensors every type can take), converts them to float32 once (as quantkit's writer does before quantizing), then
times, in one process and interleaved over --rounds rounds (the minimum is reported), quantizing all of them
with `gguf.quants.quantize(..., Q4_0)` (the gguf package) and with `quantize_k(..., type)` (quantkit) for
Q2_K ... Q6_K. The table gives, per type: seconds (wall, best round), the ratio to Q4_0, CPU seconds and their
ratio, bits per weight from the packed bytes, and the relative RMSE over all tensors (decoded with
`gguf.quants.dequantize`; not timed).

    OMP_NUM_THREADS=1 python benchmarks/bench_gguf_write.py            # ~2 min on 2 CPU cores
    OMP_NUM_THREADS=1 python benchmarks/bench_gguf_write.py --small    # a 4x smaller model, for a smoke run

Not a test: wall times on a shared machine are noisy; read the ratios of one run (target: every K type
<= 2x Q4_0).

Measured 2026-12-01 (`OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_gguf_write.py --rounds 5`; 2-core
AMD EPYC VM shared with other jobs, load average ~7, so wall >> CPU time; 282.2M parameters, 281.9M weights):

| type | seconds | x Q4_0 | CPU s | CPU x Q4_0 | bits/weight | rel. RMSE |
|------|---------|--------|-------|------------|-------------|-----------|
| Q4_0 | 3.59    | 1.00   | 1.78  | 1.00       | 4.5000      | 0.0859    |
| Q2_K | 5.38    | 1.50   | 2.62  | 1.47       | 2.6250      | 0.2690    |
| Q3_K | 5.71    | 1.59   | 2.02  | 1.13       | 3.4375      | 0.1442    |
| Q4_K | 4.43    | 1.23   | 2.54  | 1.42       | 4.5000      | 0.0712    |
| Q5_K | 4.86    | 1.36   | 2.42  | 1.36       | 5.5000      | 0.0358    |
| Q6_K | 5.14    | 1.43   | 2.20  | 1.23       | 6.5625      | 0.0168    |
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
CONFIG = {  # bench_load_memory.py's transformer, with quantkit.models.tiny's FLUX defaults
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 4,
    "num_single_layers": 8,
    "attention_head_dim": 128,
    "num_attention_heads": 8,
    "joint_attention_dim": 512,
    "pooled_projection_dim": 64,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}


def linear_shapes(config: dict) -> tuple[dict[str, tuple[int, int]], int]:
    """Linear weight name -> (out, in) of the transformer, and its total parameter count."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    shapes = {
        f"{name}.weight": tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return shapes, sum(p.numel() for p in model.parameters())


def random_weights(shapes: dict[str, tuple[int, int]], seed: int) -> dict:
    """name -> float32 numpy array, drawn in bf16 (a diffusers checkpoint's dtype) and converted once."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16).float().numpy() for k, s in shapes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="half the width: ~4x fewer parameters")
    parser.add_argument("--chunk", type=int, default=None, help="super-blocks per chunk (gguf_kquants.CHUNK)")
    parser.add_argument("--types", nargs="+", default=list(K_TYPES), choices=K_TYPES, help="K types to time")
    args = parser.parse_args()

    import gguf
    import numpy as np

    from quantkit.backends import gguf_kquants
    from quantkit.backends.gguf_kquants import quantize_k
    from quantkit.backends.gguf_mixes import mix_bits

    if args.chunk:
        gguf_kquants.CHUNK = args.chunk
    config = dict(CONFIG, num_attention_heads=4, axes_dims_rope=(16, 56, 56)) if args.small else CONFIG
    shapes, n_params = linear_shapes(config)
    kept = {k: s for k, s in shapes.items() if s[1] % 256 == 0}
    n_kept = sum(a * b for a, b in kept.values())
    print(f"FluxTransformer2DModel({', '.join(f'{k}={v}' for k, v in config.items())})")
    print(
        f"  {n_params / 1e6:.1f}M parameters; {len(shapes)} Linear weights, {len(kept)} with rows divisible by 256 "
        f"({n_kept / 1e6:.1f}M weights) are quantized"
    )
    print(
        f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, numpy {np.__version__}, gguf "
        f"{importlib.metadata.version('gguf')}, python {platform.python_version()}"
    )
    print(f"  Q4_K_M mix of the whole model (gguf_mixes, edges in BF16): {mix_bits('Q4_K_M', shapes):.3f} bits/weight")

    t0 = time.perf_counter()
    weights = random_weights(kept, args.seed)
    print(f"  random bf16 weights drawn and converted to float32 in {time.perf_counter() - t0:.1f} s\n")

    def quantize(t: str, x):
        if t == "Q4_0":
            return gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0)
        return quantize_k(x, t)

    types = ("Q4_0", *args.types)
    wall = dict.fromkeys(types, float("inf"))
    cpu = dict.fromkeys(types, float("inf"))
    stats = {}
    for r in range(args.rounds):
        for t in types[r % len(types) :] + types[: r % len(types)]:  # rotate: a load spike hits another type
            w0, c0 = time.perf_counter(), time.process_time()
            packed = {k: quantize(t, x) for k, x in weights.items()}
            wall[t] = min(wall[t], time.perf_counter() - w0)
            cpu[t] = min(cpu[t], time.process_time() - c0)
            if r == 0:  # error and size once, outside the timing
                qtype = gguf.GGMLQuantizationType[t]
                err = sum(
                    float(np.sum((gguf.quants.dequantize(p, qtype) - weights[k]) ** 2)) for k, p in packed.items()
                )
                norm = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in weights.values())
                stats[t] = (sum(p.nbytes for p in packed.values()) * 8 / n_kept, (err / norm) ** 0.5)
            del packed
        print(
            f"  best after round {r + 1}/{args.rounds}: " + ", ".join(f"{t} {wall[t]:.2f} s" for t in types),
            flush=True,
        )

    print("\n| type | seconds | x Q4_0 | CPU s | CPU x Q4_0 | bits/weight | rel. RMSE |")
    print("|------|---------|--------|-------|------------|-------------|-----------|")
    for t in types:
        bits, rmse = stats[t]
        print(
            f"| {t} | {wall[t]:.2f} | {wall[t] / wall['Q4_0']:.2f} | {cpu[t]:.2f} | {cpu[t] / cpu['Q4_0']:.2f} "
            f"| {bits:.4f} | {rmse:.4f} |"
        )
    total, total_cpu = sum(wall[t] for t in args.types), sum(cpu[t] for t in args.types)
    print(
        f"\n{len(args.types)} K types together: {total:.2f} s = {total / wall['Q4_0']:.2f} x one Q4_0 pass "
        f"(CPU {total_cpu / cpu['Q4_0']:.2f} x); CHUNK = {gguf_kquants.CHUNK} super-blocks"
    )


if __name__ == "__main__":
    main()
