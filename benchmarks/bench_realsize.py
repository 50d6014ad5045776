"""Benchmark: a published pipeline at full size (random weights), each quantization in a fresh process, GPU peaks
measured beside `quantkit.planning.peak`'s prediction and the Hugging Face blog's figures.

What it does:
1. builds the catalog entry (`quantkit.catalog`) at --scale with random weights generated on --device and saves
   it once under --work in the pipeline's own layout (save_pretrained shards; tokenizers built locally);
2. for each variant not yet in the results file (JSONL; a rerun skips what is done), starts a fresh Python
   process that imports everything, creates the CUDA context, loads through `quantkit.load_pipeline`, makes one
   image (--height x --width, --steps steps) and reports peak allocated and reserved CUDA memory for the load
   and for load + generation, and seconds per image;
3. prints measured beside predicted (`quantkit.planning.peak.predict_peak` fed by
   `quantkit.planning.sizing.MetaSizer`) and the blog's
   figures (FLUX.1-dev, H100, 1024^2, 50 steps; GiB of max_memory_reserved; the step count does not change the
   peak).

Variants: bf16; bnb nf4, bnb 8-bit, torchao int8wo, quanto int8 on transformer + T5; GGUF Q8_0 on the transformer
(as the blog's GGUF rows; quantkit writes the GGUF file first, minutes at full size, so it runs last); nf4 with
model offload.

    python benchmarks/bench_realsize.py                                 # FLUX.1-dev, full size, CUDA
    python benchmarks/bench_realsize.py --device cpu --scale tiny       # the same path proven on a CPU (~3 min)

Time: --time-budget (seconds, default 450) stops starting variants that would not finish in it; the rerun picks
up the rest. Full-size FLUX.1-dev on an H100/H200 (estimated, not yet measured): building + saving ~1-2 min, each
variant ~30-60 s, GGUF Q8_0 ~2-4 min more (its file is written on the CPU), so one 8-minute command measures
most variants and a second finishes them.
Disk: ~34 GB for the pipeline, ~13 GB for the GGUF file ($QUANTKIT_CACHE, default under --work).
Not a test: it prints a table and writes JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's quantkit, also in the workers

GIB = 2**30
NF4 = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
BOTH = ("transformer", "text_encoder_2")
# name -> (backend, kwargs, components, offload, the blog row it corresponds to)
VARIANTS: dict[str, tuple[str | None, dict, tuple[str, ...], str | None, str | None]] = {
    "bf16": (None, {}, (), None, "BF16"),
    "bnb-nf4": ("bitsandbytes_4bit", NF4, BOTH, None, "bnb nf4"),
    "bnb-int8": ("bitsandbytes_8bit", {"llm_int8_threshold": 6.0}, BOTH, None, "bnb 8-bit"),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, BOTH, None, "torchao int8wo"),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, BOTH, None, "quanto int8"),
    "bnb-nf4-model-offload": ("bitsandbytes_4bit", NF4, BOTH, "model", None),
    "gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": "bfloat16"}, ("transformer",), None, "GGUF Q8_0"),
}
# the blog's figures: (GiB after load, GiB peak), max_memory_reserved, FLUX.1-dev on one H100 at 1024^2
BLOG = {
    "BF16": (31.4, 36.2),
    "bnb nf4": (12.6, 17.3),
    "bnb 8-bit": (19.3, 24.4),
    "torchao int8wo": (17.0, 21.5),
    "quanto int8": (17.3, 21.8),
    "GGUF Q8_0": (21.5, 26.0),
}
# how much longer than the slowest variant so far a variant is expected to take (GGUF writes its file first:
# ~11.9 B parameters through numpy at ~50-150 M/s, 1.5-4 min for FLUX.1-dev's transformer)
EXPECTED_FACTOR = {"gguf-Q8_0": 4.0}
PRELOAD = (
    "torch",
    "diffusers",
    "transformers",
    "quantkit.load",
    "quantkit.measure.memory",
    "bitsandbytes",
    "optimum.quanto",
    "torchao",
    "gguf",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="a catalog id")
    p.add_argument("--scale", default="full", choices=("full", "half", "tiny"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--height", type=int, default=None, help="default 1024 on CUDA, 512 on CPU")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--work", default=None, help="folder for the pipeline, GGUF cache and results")
    p.add_argument("--results", default=None, help="JSONL file (default: <work>/results.jsonl)")
    p.add_argument("--time-budget", type=float, default=450.0, help="seconds; variants that would overrun wait")
    p.add_argument("--variant-timeout", type=float, default=420.0, help="seconds one variant may take")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--materialize-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.height = args.height or (1024 if cuda else 512)
    args.width = args.width or args.height
    slug = f"{args.model.replace('/', '--')}-{args.scale}-{args.dtype}"
    args.work = Path(args.work or Path.home() / ".cache" / "quantkit-bench" / slug)
    args.results = Path(args.results or args.work / "results.jsonl")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return args


# -- the pipeline on disk ---------------------------------------------------------------------------------


def pipeline_folder(args) -> Path:
    """The materialized pipeline (built in a child process once; a marker file says it is complete)."""
    folder = args.work / "pipeline"
    if (folder / "COMPLETE").is_file():
        return folder
    t = time.perf_counter()
    cmd = [
        sys.executable,
        __file__,
        "--materialize-only",
        "--model",
        args.model,
        "--scale",
        args.scale,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--work",
        str(args.work),
    ]
    subprocess.run(cmd, check=True)
    print(f"built and saved {args.model} ({args.scale}) in {time.perf_counter() - t:.0f} s -> {folder}", flush=True)
    return folder


def materialize_main(args) -> None:
    from quantkit.catalog.materialize import materialize, scaled_folder

    configs = scaled_folder(args.model, args.scale, args.work / "configs")
    folder = args.work / "pipeline"
    materialize(configs, folder, device=args.device, dtype=args.dtype)
    (folder / "COMPLETE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))


# -- one variant, in a fresh process ----------------------------------------------------------------------


def config_of(name: str):
    from quantkit import PipelineQuantizationConfig, QuantSpec

    backend, kwargs, components, _, _ = VARIANTS[name]
    if backend is None:
        return None
    return PipelineQuantizationConfig(quant_mapping={c: QuantSpec(backend, **kwargs) for c in components})


def worker_main(args) -> None:
    """Load and generate one variant; print one RESULT line of JSON."""
    import importlib

    t0 = time.perf_counter()
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:
            pass
    import torch

    from quantkit import load_pipeline
    from quantkit.measure.latency import stopwatch
    from quantkit.measure.memory import current_rss, track_peak

    device, name = args.device, args.worker
    cuda = device.startswith("cuda")
    if cuda:
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
    record = {"variant": name, "status": "ok", "imports_s": time.perf_counter() - t0, "rss_start": current_rss()}
    offload = VARIANTS[name][3]
    try:
        if offload and not cuda:
            raise RuntimeError("model offload needs a CUDA device")
        t = time.perf_counter()
        with track_peak("load", device) as load:
            # offload: load on the CPU, then let diffusers move each component to the GPU when it runs
            pipe = load_pipeline(
                args.folder,
                config_of(name),
                device="cpu" if offload else device,
                torch_dtype=args.dtype,
                progress=False,
            )
            if offload:
                pipe.enable_model_cpu_offload(device=device)
        record["load_s"] = time.perf_counter() - t
        if cuda:
            record["allocated_after_load"] = int(torch.cuda.memory_allocated(device))
            record["reserved_after_load"] = int(torch.cuda.memory_reserved(device))
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(0),
        )
        with track_peak("generate", device) as gen, stopwatch(device) as sw:
            pipe("a photo of a cat holding a sign that says hello", **kwargs)
        record["s_per_image"] = sw.seconds
        for phase, meter in (("load", load.result), ("generate", gen.result)):
            record[f"{phase}_rss_peak"] = meter.rss_peak
            record[f"{phase}_allocated_peak"] = meter.cuda_allocated_peak
            record[f"{phase}_reserved_peak"] = meter.cuda_reserved_peak
    except Exception as err:  # recorded, so the table shows what failed and the run goes on
        record.update(status="error", error=f"{type(err).__name__}: {err}"[:800])
    record["total_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(record), flush=True)


def run_variant(args, folder: Path, name: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--folder",
        str(folder),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--steps",
        str(args.steps),
        "--model",
        args.model,
        "--scale",
        args.scale,
        "--work",
        str(args.work),
    ]
    env = {
        **os.environ,
        "QUANTKIT_CACHE": os.environ.get("QUANTKIT_CACHE", str(args.work / "cache")),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        return {"variant": name, "status": "error", "error": f"timed out after {args.variant_timeout:.0f} s"}
    for line in done.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout)[-800:]
    return {"variant": name, "status": "error", "error": f"worker exited {done.returncode}: {tail}"}


# -- predictions and the table -----------------------------------------------------------------------------


def predictions(args, folder: Path) -> dict[str, tuple[int, int]]:
    """{variant: (predicted bytes after load, predicted peak bytes)} from configs and headers alone."""
    from quantkit.planning.fit import Candidate
    from quantkit.planning.peak import predict_peak
    from quantkit.planning.sizing import MetaSizer

    sizer = MetaSizer(folder, device=args.device, dtype=args.dtype)
    out = {}
    for name, (backend, kwargs, components, offload, _) in VARIANTS.items():
        sizes = sizer(Candidate(name, backend, 16, components, dict(kwargs), offload))
        est = predict_peak(
            sizes,
            device=args.device,
            height=args.height,
            width=args.width,
            offload=offload,
            pipeline_class=sizer.pipeline_class,
            dtype=args.dtype,
        )
        out[name] = (sum(s.bytes for s in sizes) if offload is None else None, est.peak)
    return out


def read_results(path: Path, key: dict) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if all(record.get(k) == v for k, v in key.items()) and record.get("status") == "ok":
                done[record["variant"]] = record
    return done


def table(args, records: dict[str, dict], predicted: dict[str, tuple[int, int]]) -> str:
    cuda = args.device.startswith("cuda")
    unit = "GiB" if cuda else "MiB"
    div = GIB if cuda else 2**20

    def f(v):
        return "-" if v is None else f"{v / div:.2f}" if cuda else f"{v / div:.0f}"

    head = [
        "variant",
        f"pred load {unit}",
        f"alloc load {unit}",
        f"reserved load {unit}",
        f"pred peak {unit}",
        f"alloc peak {unit}",
        f"reserved peak {unit}",
        "peak vs pred",
        "s/image",
        "blog load/peak GiB",
    ]
    rows = []
    for name in args.variants.split(","):
        r = records.get(name)
        pred_load, pred_peak = predicted.get(name, (None, None))
        blog = BLOG.get(VARIANTS[name][4] or "")
        blog_text = f"{blog[0]}/{blog[1]}" if blog else "-"
        if r is None or r.get("status") != "ok":
            why = (r or {}).get("error", "not run (time budget)")
            rows.append([name, f(pred_load), "-", "-", f(pred_peak), "-", "-", why[:60], "-", blog_text])
            continue
        if cuda:
            alloc_load, res_load = r.get("load_allocated_peak"), r.get("load_reserved_peak")
            alloc_peak = max(alloc_load or 0, r.get("generate_allocated_peak") or 0)
            res_peak = max(res_load or 0, r.get("generate_reserved_peak") or 0)
            measured = r.get("generate_reserved_peak")
        else:  # CPU: RSS above the warmed-up worker's start
            start = r.get("rss_start") or 0
            alloc_load, res_load = r["load_rss_peak"] - start, None
            alloc_peak = max(r["load_rss_peak"], r["generate_rss_peak"]) - start
            res_peak, measured = None, alloc_peak
        ratio = f"{measured / pred_peak:.2f}x" if measured and pred_peak else "-"
        rows.append(
            [
                name,
                f(pred_load),
                f(alloc_load),
                f(res_load),
                f(pred_peak),
                f(alloc_peak),
                f(res_peak),
                ratio,
                f"{r['s_per_image']:.2f}",
                blog_text,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.materialize_only:
        materialize_main(args)
        return
    if args.worker:
        worker_main(args)
        return
    t_start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = pipeline_folder(args)
    key = {
        "model": args.model,
        "scale": args.scale,
        "device": args.device,
        "dtype": args.dtype,
        "height": args.height,
        "width": args.width,
        "steps": args.steps,
    }
    done = read_results(args.results, key)
    longest = max((r.get("total_s", 0) for r in done.values()), default=60.0)
    for name in args.variants.split(","):
        if name in done:
            print(f"{name}: already measured (skipped)", flush=True)
            continue
        if VARIANTS[name][3] and not args.device.startswith("cuda"):
            done[name] = {"variant": name, "status": "skipped", "error": "offload needs a CUDA device"}
            print(f"{name}: skipped (offload needs a CUDA device)", flush=True)
            continue
        left = args.time_budget - (time.perf_counter() - t_start)
        if left < min(longest * EXPECTED_FACTOR.get(name, 1.0), args.variant_timeout) * 1.2:
            print(f"{name}: not started, {left:.0f} s of the time budget left; rerun to continue", flush=True)
            continue
        args.variant_timeout = min(args.variant_timeout, left)
        t = time.perf_counter()
        record = {**key, **run_variant(args, folder, name)}
        longest = max(longest, time.perf_counter() - t)
        print(
            f"{name}: {record['status']} in {time.perf_counter() - t:.0f} s"
            + (f" ({record.get('error')})" if record["status"] != "ok" else ""),
            flush=True,
        )
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if record["status"] == "ok":
            done[name] = record
        else:
            done.setdefault(name, record)
    print()
    print(table(args, done, predictions(args, folder)))
    print(f"\nresults: {args.results}  ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
