"""GPU benchmark of quantized pipelines under diffusers' offloading and torch.compile.

    python benchmarks/bench_interop_gpu.py                              # ~1 B-parameter FLUX layout, one CUDA GPU
    python benchmarks/bench_interop_gpu.py --device cpu --scale tiny    # the same code end to end on a CPU

Builds a FLUX-layout pipeline with random weights (nothing is downloaded), saves it in bf16, then for each
backend x run mode loads it with `quantkit.load_pipeline` (transformer quantized) and prints:

    backend, mode (none / model offload / group offload / compile), CUDA peak memory while generating (GiB of
    torch.cuda.max_memory_allocated; on CPU the RSS peak), seconds per image (median of the timed calls, after a
    warm-up that also pays for compilation), PSNR (dB) against the bf16 pipeline's image with the same seed.

Scales: "1b" is a FluxTransformer2DModel of 6 double + 12 single blocks at width 1536 (12 heads x 128), 0.945 B
parameters (1.9 GB in bf16), drawn at 256x256 (1024 image tokens) with 8 steps; tiny CLIP/T5 encoders and VAE from
quantkit.models.tiny. Sized for 8 minutes on one H100 for all 24 rows (an estimate: not yet run on a GPU): each
row loads 1.9 GB and draws 3 images of 8 steps (~15 TFLOP each: ~0.15 s in bf16 at 100 TFLOP/s); the first GGUF row
also writes the Q8_0 file with numpy on the CPU (~30 s); each compile row compiles the two block types (~20-40 s).
Use --backends / --modes to run part of it. "tiny" is the test pipeline (32x32, 2 steps). On a machine without
CUDA the offload and compile rows are skipped with the reason quantkit gives (they need a CUDA device).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

BACKENDS = {  # row name -> (quant_backend, quant_kwargs); None = the bf16 reference
    "bf16": None,
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "bnb-int8": ("bitsandbytes_8bit", {"llm_int8_threshold": 6.0}),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": "bfloat16"}),
}
MODES = {
    "none": (None, None),
    "model-offload": ("model", None),
    "group-offload": ("group", None),
    "compile": (None, "regional"),
}
SCALES = {
    "1b": {
        "transformer": dict(
            num_layers=6,
            num_single_layers=12,
            attention_head_dim=128,
            num_attention_heads=12,
            axes_dims_rope=(16, 56, 56),
        ),
        "call": dict(height=256, width=256, num_inference_steps=8, max_sequence_length=16),
    },
    "tiny": {"transformer": {}, "call": dict(height=32, width=32, num_inference_steps=2, max_sequence_length=16)},
}


def build(scale: str, folder: Path) -> Path:
    """Save a random-weight FLUX-layout pipeline of `scale` in bf16 to `folder`."""
    import diffusers
    import torch

    from quantkit.models.tiny import build_flux_pipeline

    diffusers.utils.logging.set_verbosity_error()  # .to(bf16) notes that no module needs float32
    pipe = build_flux_pipeline(seed=0, transformer_config=SCALES[scale]["transformer"]).to(torch.bfloat16)
    pipe.save_pretrained(folder, safe_serialization=True)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    del pipe
    gc.collect()
    print(f"built {scale} pipeline: transformer {params / 1e6:,.1f} M parameters -> {folder}")
    return folder


def run_row(folder: Path, backend, mode: str, device: str, call: dict, repeats: int) -> dict:
    """Load, run and measure one backend x mode; returns the row (with `image`) or {"skipped": reason}."""
    import torch

    import quantkit as qk
    from quantkit.load.offload import apply_compile, check_compile, check_offload
    from quantkit.measure.latency import time_calls
    from quantkit.measure.memory import track_peak

    offload, compile = MODES[mode]
    try:
        check_offload(offload, device)
        check_compile(compile, device)
    except RuntimeError as err:
        return {"skipped": str(err)}
    config = (
        None
        if backend is None
        else qk.PipelineQuantizationConfig(
            quant_backend=backend[0], quant_kwargs=backend[1], components_to_quantize=["transformer"]
        )
    )
    t = time.perf_counter()
    pipe = qk.load_pipeline(folder, config, torch_dtype=torch.bfloat16, device=device, progress=False, offload=offload)
    load_s = time.perf_counter() - t
    if compile:
        apply_compile(pipe, compile)
    pipe.set_progress_bar_config(disable=True)

    def draw(_i, pipe=pipe):
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red circle", generator=generator, output_type="np", **call).images[0]

    with track_peak("generate", device) as peak:
        images, latency = time_calls(draw, repeats, device=device, warmup=1)
    r = peak.result
    memory = r.cuda_allocated_peak if r.cuda_allocated_peak is not None else r.rss_peak
    del pipe, draw
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "load_s": load_s,
        "s_per_image": latency.median_s,
        "peak_bytes": memory,
        "peak_kind": "cuda allocated" if r.cuda_allocated_peak is not None else "rss",
        "image": images[0],
    }


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--scale", choices=list(SCALES), default="1b")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated from {list(BACKENDS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated from {list(MODES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed images per row (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the rows (without images) to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("QUANTKIT_CACHE", tempfile.mkdtemp(prefix="quantkit-bench-cache-"))
    backends = args.backends.split(",")
    modes = args.modes.split(",")
    unknown = [b for b in backends if b not in BACKENDS] + [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown backend or mode {unknown}; backends: {list(BACKENDS)}, modes: {list(MODES)}")
    if "bf16" not in backends:
        backends.insert(0, "bf16")  # the reference image
    from quantkit.devices import check_device

    device = check_device(args.device)
    t0 = time.perf_counter()
    folder = build(args.scale, Path(tempfile.mkdtemp(prefix="quantkit-bench-pipe-")))
    reference, rows = None, []
    print(f"{'backend':<16}{'mode':<15}{'peak GiB':>10}{'s/image':>10}{'PSNR dB':>9}{'load s':>8}")
    for backend in backends:
        for mode in modes:
            row = {
                "backend": backend,
                "mode": mode,
                **run_row(folder, BACKENDS[backend], mode, device, SCALES[args.scale]["call"], args.repeats),
            }
            if "skipped" in row:
                print(f"{backend:<16}{mode:<15}  skipped: {row['skipped']}")
            else:
                image = row.pop("image")
                if reference is None:
                    reference = image  # bf16, mode "none" (or the first mode given): the same seed everywhere
                row["psnr_db"] = psnr(image, reference)
                print(
                    f"{backend:<16}{mode:<15}{row['peak_bytes'] / 2**30:>10.3f}{row['s_per_image']:>10.3f}"
                    f"{row['psnr_db']:>9.1f}{row['load_s']:>8.1f}"
                )
            rows.append(row)
    print(
        f"total {time.perf_counter() - t0:.0f} s on {device} ({args.scale}); peak = "
        f"{'torch.cuda.max_memory_allocated' if device.startswith('cuda') else 'process RSS'} while generating"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
