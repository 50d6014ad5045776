"""Benchmark: peak memory and time of loading a quantized FLUX-layout pipeline, and one generation.

Builds (once, cached in --cache) a synthetic FLUX-layout pipeline whose transformer has ~280M
parameters (random weights, bf16 on disk like FLUX.1), then runs each variant in its own fresh
process: the process imports everything first, records its resident memory (the baseline: same
imports, nothing loaded), resets the peak (/proc/self/clear_refs), loads the pipeline and makes one
64x64 image, and reports the peak resident memory above the baseline and the wall time.

Variants: unquantized, every quantkit backend through `load_pipeline`, and diffusers' own
`from_pretrained(quantization_config=...)` where diffusers runs the config on a CPU (quanto and
torchao mapped form). Transformer and T5 encoder are quantized, as in the seed example.

    python benchmarks/bench_load_memory.py            # ~10 min on 2 CPU cores, prints a table
    python benchmarks/bench_load_memory.py --only quantkit-quanto-int8 diffusers-quanto-int8

Not a test: figures are noisy; the ratios in one run are what to read (targets: 8-bit peak <= 0.7x
and 4-bit <= 0.5x the unquantized peak; load time <= 1.2x diffusers' own path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "quantkit-none": None,
    "diffusers-none": None,
    "quantkit-bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "quantkit-bnb-int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
    "quantkit-quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "diffusers-quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "quantkit-quanto-int4": ("quanto", {"weights_dtype": "int4"}),
    "quantkit-torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "diffusers-torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "quantkit-gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": "bfloat16"}),
    "quantkit-gguf-Q4_0": ("gguf", {"quant_type": "Q4_0", "compute_dtype": "bfloat16"}),
}
BITS = {"none": 16, "nf4": 4, "int4": 4, "Q4_0": 4}
COMPONENTS = ["transformer", "text_encoder_2"]


def build(folder: Path) -> Path:
    """A FLUX-layout pipeline with a ~280M-parameter transformer and a ~40M T5 encoder (bf16)."""
    import torch

    from quantkit.models.tiny import build_flux_pipeline

    if (folder / "model_index.json").is_file():
        return folder
    pipe = build_flux_pipeline(
        seed=0,
        transformer_config={
            "num_layers": 4,
            "num_single_layers": 8,
            "attention_head_dim": 128,
            "num_attention_heads": 8,
            "joint_attention_dim": 512,
            "axes_dims_rope": (16, 56, 56),
        },
        t5_config={"d_model": 512, "d_ff": 2048, "num_layers": 8, "num_heads": 8, "d_kv": 64},
    )
    pipe.to(torch.bfloat16).save_pretrained(folder)
    from quantkit.models.tiny import tiny_generation_defaults

    (folder / "generation_defaults.json").write_text(
        json.dumps({**tiny_generation_defaults("flux"), "height": 64, "width": 64, "num_inference_steps": 1})
    )
    return folder


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(name: str, folder: str) -> dict:
    """Runs in a fresh process: imports, baseline, load + one image, peak above baseline."""
    import warnings

    warnings.filterwarnings("ignore")
    import diffusers  # noqa: F401  (the same imports for every variant, before the baseline)
    import torch
    import transformers  # noqa: F401

    import quantkit as qk
    from quantkit.load import load_pipeline
    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    for module in ("bitsandbytes", "optimum.quanto", "torchao", "gguf"):
        __import__(module)
    torch.set_num_threads(os.cpu_count() or 1)
    baseline = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    spec = VARIANTS[name]
    start = time.perf_counter()
    if name.startswith("diffusers"):
        from diffusers import DiffusionPipeline
        from diffusers import PipelineQuantizationConfig as DiffusersConfig

        kwargs = {}
        if spec is not None:
            native = {
                c: qk.QuantSpec(spec[0], **spec[1]).native(lib)
                for c, lib in (("transformer", "diffusers"), ("text_encoder_2", "transformers"))
            }
            kwargs["quantization_config"] = DiffusersConfig(quant_mapping=native)
        pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, **kwargs)
        apply_generation_defaults(pipe, read_generation_defaults(folder))
    else:
        config = (
            None
            if spec is None
            else qk.PipelineQuantizationConfig(
                quant_backend=spec[0], quant_kwargs=spec[1], components_to_quantize=COMPONENTS
            )
        )
        pipe = load_pipeline(folder, config, torch_dtype=torch.bfloat16, device="cpu", progress=False)
    load_s = time.perf_counter() - start
    peak_load = _rss("VmHWM") - baseline
    start = time.perf_counter()
    pipe("a red circle", generator=torch.Generator().manual_seed(0))
    gen_s = time.perf_counter() - start
    peak = _rss("VmHWM") - baseline
    true_bytes = int(qk.footprint(pipe).loc["total", "bytes"])
    return {
        "variant": name,
        "load_s": load_s,
        "gen_s": gen_s,
        "peak_load": peak_load,
        "peak": peak,
        "bytes": true_bytes,
        "baseline_rss": baseline,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "bench-flux-280m",
    )
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.cache))))
        return
    start = time.perf_counter()
    build(args.cache)
    print(f"pipeline: {args.cache} (built/checked in {time.perf_counter() - start:.0f} s)", flush=True)
    from quantkit.planning import plan

    p = plan(args.cache, None, device="cpu")
    print(
        f"transformer: {p.components['transformer'].params / 1e6:.0f}M parameters, "
        f"T5: {p.components['text_encoder_2'].params / 1e6:.0f}M",
        flush=True,
    )
    rows = []
    for name in args.only or list(VARIANTS):
        out = subprocess.run(
            [sys.executable, __file__, "--cache", str(args.cache), "--worker", name], capture_output=True, text=True
        )
        if out.returncode != 0:
            print(f"{name:28s} FAILED: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{name:28s} load {row['load_s']:6.1f} s  gen {row['gen_s']:5.2f} s  peak(load) "
            f"{row['peak_load'] / 2**30:5.2f} GiB  peak(load+gen) {row['peak'] / 2**30:5.2f} GiB  "
            f"true bytes {row['bytes'] / 2**30:5.2f} GiB",
            flush=True,
        )
    by = {r["variant"]: r for r in rows}
    if "quantkit-none" in by:
        ref = by["quantkit-none"]["peak"]
        print(
            "\npeak / unquantized peak (targets: 8-bit <= 0.70, 4-bit <= 0.50); load time / diffusers' own path "
            "(target <= 1.2)"
        )
        for r in rows:
            line = f"  {r['variant']:28s} peak ratio {r['peak'] / ref:5.2f}"
            twin = by.get(r["variant"].replace("quantkit-", "diffusers-"))
            if twin is not None and twin is not r:
                line += f"   load ratio vs diffusers {r['load_s'] / twin['load_s']:5.2f}"
            print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
