"""Benchmark: load time and peak memory of a quantized FLUX-layout pipeline, and of one generation.

Builds (once, cached in --cache) a synthetic FLUX-layout pipeline whose transformer has ~280M parameters
(random weights, bf16 on disk like FLUX.1) and a ~34M T5 encoder, then runs each variant in its own fresh
process. The process imports everything first, records its memory (the baseline: same imports, nothing
loaded), resets the peak, loads the pipeline and makes one 64x64 image. It reports the load's wall time and CPU
time, the peak above the baseline for the load and for load + generation, and the true bytes of the pipeline.

Variants: unquantized (quantkit and diffusers), every quantkit backend through `load_pipeline`, and diffusers'
own `from_pretrained(quantization_config=...)` where diffusers runs the config (on CPU: quanto and torchao in
the mapped form; on CUDA bitsandbytes too). Transformer and T5 encoder are quantized, as in the seed example.
GGUF variants load from the cached file (written, and quanto's int4 kernel built, before any timing).

    python benchmarks/bench_load_memory.py --repeats 3        # every variant, 3 rounds
    python benchmarks/bench_load_memory.py --only quantkit-quanto-int8 diffusers-quanto-int8 --repeats 5
    python benchmarks/bench_load_memory.py --only quantkit-quanto-int8 quantkit-quanto-int8+QUANTKIT_MALLOC_TUNING=1
    python benchmarks/bench_load_memory.py --only quantkit-bnb-nf4 quantkit-bnb-nf4+QUANTKIT_BENCH_ROOT=/tmp/old
    python benchmarks/bench_load_memory.py --device cuda      # GPU mode: peak device memory, 2 rounds, ~4-5 min

A variant name may carry `+KEY=VALUE` suffixes: environment variables for that variant's process, for A/B runs
within one run (QUANTKIT_BENCH_ROOT=DIR imports quantkit from DIR, e.g. a copy of the code before a change).
Rounds alternate the variants (round 1: every variant once, round 2: ...), so a change in the machine's load
hits every variant alike; medians and [min-max] ranges are printed, with the 1-minute load average at each
start. Every worker runs with OMP_WAIT_POLICY=PASSIVE unless the environment sets it: on a shared machine
OpenMP's spinning threads otherwise turn other processes' load into 10-25x slower, erratic timings (measured:
diffusers' quanto int8 load 12-25 s spinning, 1.5 s passive, at load average 4-5 on 2 cores). Not a test:
read the ratios of one run, never a single timing.

Three floors run on CPU beside them (not loaders): "floor-read" reads every weight byte of the two quantized
components once from a memory map, "floor-absmax" also computes each row's float32 absmax (the first pass of
every int8/int4 quantizer), "floor-int8" a whole per-row int8 quantization into one int8 tensor per weight (what
quanto int8 and torchao int8wo compute, and nothing else: no modules, no other components). Their ratios to
quantkit-none say what part of the unquantized (lazily mapped) load's time the quantization alone costs.

CPU targets: load time <= 1.2x diffusers' own path (quanto int8, torchao int8wo) and <= 1.5x quantkit's
unquantized load; peak (load + one image) <= 0.65x the unquantized pipeline's for 8-bit, <= 0.5x for 4-bit.
CUDA targets: load time <= 1.0x diffusers' own; peak allocated during the load <= bytes left after the load
(+ 5%) + the largest full-precision layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# measure the checkout this file is in (or QUANTKIT_BENCH_ROOT, e.g. a copy of the code before a change), not
# whichever quantkit the environment has installed
sys.path.insert(0, os.environ.get("QUANTKIT_BENCH_ROOT") or str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "quantkit-none": None,
    "diffusers-none": None,
    "quantkit-bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "diffusers-bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "quantkit-bnb-int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
    "diffusers-bnb-int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
    "quantkit-quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "diffusers-quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "quantkit-quanto-int4": ("quanto", {"weights_dtype": "int4"}),
    "quantkit-torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "diffusers-torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "quantkit-gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": "bfloat16"}),
    "quantkit-gguf-Q4_0": ("gguf", {"quant_type": "Q4_0", "compute_dtype": "bfloat16"}),
    # floors, not loaders: what any loader that quantizes at load time must spend on the same files, at least
    "floor-read": None,  # every weight byte of the quantized components read once (an integer max per tensor)
    "floor-absmax": None,  # ... and each row's absmax in float32, the first pass of every int8/int4 quantizer
    "floor-int8": None,  # ... and the rest of per-row int8: scale, divide, round, clamp, into one int8 tensor
}
FLOORS = {"floor-read", "floor-absmax", "floor-int8"}
CUDA_ONLY = {"diffusers-bnb-nf4", "diffusers-bnb-int8"}  # diffusers' bitsandbytes quantizer: "No GPU found"
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


def _cpu_s() -> float:
    """CPU seconds this process has used (user + system, all threads): the work a load does, which other
    processes on the machine inflate far less than its wall time."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _config(spec):
    import quantkit as qk

    if spec is None:
        return None
    return qk.PipelineQuantizationConfig(
        quant_backend=spec[0], quant_kwargs=spec[1], components_to_quantize=COMPONENTS
    )


def _imports():
    import warnings

    warnings.filterwarnings("ignore")
    import diffusers  # noqa: F401  (the same imports for every variant, before the baseline)
    import torch
    import transformers  # noqa: F401

    import quantkit  # noqa: F401
    from quantkit.load import load_pipeline  # noqa: F401

    for module in ("bitsandbytes", "optimum.quanto", "torchao", "gguf"):
        __import__(module)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))


def _diffusers_load(spec, folder: str, device: str):
    import torch
    from diffusers import DiffusionPipeline
    from diffusers import PipelineQuantizationConfig as DiffusersConfig

    import quantkit as qk

    kwargs = {}
    if spec is not None:
        native = {
            c: qk.QuantSpec(spec[0], **spec[1]).native(lib)
            for c, lib in (("transformer", "diffusers"), ("text_encoder_2", "transformers"))
        }
        kwargs["quantization_config"] = DiffusersConfig(quant_mapping=native)
    if device != "cpu":
        kwargs["device_map"] = device  # straight to the GPU, as diffusers' docs load quantized pipelines
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, **kwargs)


def _largest_layer_bytes(pipe) -> int:
    """Bytes of the largest planned Linear in full precision (bf16): the most a streamed load adds at a time."""
    p = getattr(pipe, "quantkit_plan", None)
    if p is None:
        return 0
    from quantkit.planning.sources import meta_model

    largest = 0
    for c in p.components.values():
        if not getattr(c, "quantized_layers", None):
            continue
        modules = dict(meta_model(c.library, c.class_name, c.folder).named_modules())
        for name in c.quantized_layers:
            w = modules[name].weight
            largest = max(largest, w.numel() * 2)
    return largest


def _floor(kind: str, folder: str) -> None:
    """Read every tensor of the quantized components' files from a memory map (page cache, as the loads do):
    a max over its bytes ("floor-read"), or the per-row float32 absmax ("floor-absmax"), in row chunks
    of ~4M elements, with torch's threads."""
    import mmap
    import struct

    import torch

    for component in COMPONENTS:
        for path in sorted((Path(folder) / component).glob("*.safetensors")):
            with open(path, "rb") as fh:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            (n,) = struct.unpack("<Q", mapped[:8])
            header = json.loads(mapped[8 : 8 + n])
            data = torch.frombuffer(mapped, dtype=torch.uint8)[8 + n :]
            dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
            for key, info in header.items():
                if key == "__metadata__" or info["dtype"] not in dtypes:
                    continue
                begin, end = info["data_offsets"]
                shape = info["shape"]
                if kind == "floor-read" or len(shape) != 2:
                    data[begin:end].max()
                    continue
                t = data[begin:end].view(dtypes[info["dtype"]]).reshape(shape)
                rows = max(1, (1 << 22) // shape[1])
                out = torch.empty(shape, dtype=torch.int8) if kind == "floor-int8" else None
                for i in range(0, shape[0], rows):
                    chunk = t[i : i + rows].float()
                    scale = chunk.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12) / 127
                    if out is not None:
                        out[i : i + rows] = chunk.div_(scale).round_().clamp_(-127, 127)
            del data
            mapped.close()


def worker(name: str, folder: str, device: str) -> dict:
    """Runs in a fresh process: imports, baseline, load + one image, peaks above the baseline."""
    _imports()
    import torch

    import quantkit as qk
    from quantkit.load import load_pipeline
    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    spec = VARIANTS[name.split("+")[0]]
    cuda = device != "cpu"
    loadavg = os.getloadavg()[0]
    if cuda:
        torch.cuda.init()
        torch.empty(1, device=device)  # the CUDA context before the baseline
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss("VmRSS")
    cuda_base = torch.cuda.memory_allocated() if cuda else 0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    cpu = _cpu_s()
    start = time.perf_counter()
    if name.split("+")[0] in FLOORS:
        _floor(name.split("+")[0], folder)
        load_s, load_cpu_s = time.perf_counter() - start, _cpu_s() - cpu
        peak = _rss("VmHWM") - baseline
        return {
            "variant": name,
            "load_s": load_s,
            "load_cpu_s": load_cpu_s,
            "peak_load": peak,
            "peak": peak,
            "gen_s": 0.0,
            "bytes": 0,
            "loadavg": loadavg,
            "baseline_rss": baseline,
            "threads": torch.get_num_threads(),
        }
    if name.startswith("diffusers"):
        pipe = _diffusers_load(spec, folder, device)
        apply_generation_defaults(pipe, read_generation_defaults(folder))
    else:
        pipe = load_pipeline(folder, _config(spec), torch_dtype=torch.bfloat16, device=device, progress=False)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    load_cpu_s = _cpu_s() - cpu
    peak_load = _rss("VmHWM") - baseline
    row = {
        "variant": name,
        "load_s": load_s,
        "load_cpu_s": load_cpu_s,
        "peak_load": peak_load,
        "loadavg": loadavg,
        "baseline_rss": baseline,
        "threads": torch.get_num_threads(),
    }
    if cuda:
        row["cuda_peak_load"] = torch.cuda.max_memory_allocated() - cuda_base
        row["cuda_after_load"] = torch.cuda.memory_allocated() - cuda_base
        row["largest_layer"] = _largest_layer_bytes(pipe)
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe("a red circle", generator=torch.Generator().manual_seed(0))
    if cuda:
        torch.cuda.synchronize()
        row["cuda_peak"] = torch.cuda.max_memory_allocated() - cuda_base
    row["gen_s"] = time.perf_counter() - start
    row["peak"] = _rss("VmHWM") - baseline
    row["bytes"] = int(qk.footprint(pipe).loc["total", "bytes"])
    return row


def prepare(folder: str, names: list[str], device: str) -> None:
    """Untimed: write the cached GGUF files and build quanto's int4 kernel, so no timed run pays for either."""
    _imports()
    import torch

    from quantkit.load import load_pipeline

    bases = {n.split("+")[0] for n in names}
    for name in sorted(bases):
        spec = VARIANTS[name]
        if spec is not None and name.startswith("quantkit") and (spec[0] == "gguf" or name.endswith("int4")):
            pipe = load_pipeline(folder, _config(spec), torch_dtype=torch.bfloat16, device=device, progress=False)
            if spec[0] == "quanto":
                pipe("a red circle", generator=torch.Generator().manual_seed(0))
            del pipe


def _run(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)


def _variant_env(name: str) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring
    for item in name.split("+")[1:]:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _stat(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def summarize(rows: list[dict], device: str) -> list[dict]:
    """Medians per variant and the ratios (vs quantkit's unquantized load, vs diffusers' own path)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)

    def med(name, key):
        rs = by.get(name)
        return statistics.median(r[key] for r in rs) if rs else None

    out = []
    for name, rs in by.items():
        s = {"variant": name, "n": len(rs)}
        for key in (
            "load_s",
            "load_cpu_s",
            "gen_s",
            "peak_load",
            "peak",
            "bytes",
            "loadavg",
            "cuda_peak_load",
            "cuda_after_load",
            "largest_layer",
            "cuda_peak",
        ):
            if key in rs[0]:
                s[key] = statistics.median(r[key] for r in rs)
        base = name.split("+")[0]
        twin = base.replace("quantkit-", "diffusers-") if base.startswith("quantkit-") else None
        suffix = name[len(base) :]
        twin_name = twin + suffix if twin and twin + suffix in by else twin
        for ref, tag in (("quantkit-none", "none"), (twin_name, "diffusers")):
            if ref and ref in by and ref != name:
                s[f"load_vs_{tag}"] = s["load_s"] / med(ref, "load_s")
                s[f"cpu_vs_{tag}"] = s["load_cpu_s"] / med(ref, "load_cpu_s")
                s[f"peak_vs_{tag}"] = s["peak"] / med(ref, "peak")
                s[f"peak_load_vs_{tag}"] = s["peak_load"] / med(ref, "peak_load")
        if device != "cpu" and "cuda_peak_load" in s:
            s["cuda_target"] = s["cuda_after_load"] * 1.05 + s["largest_layer"]
        out.append(s)
    return out


def print_table(rows: list[dict], summary: list[dict], device: str) -> None:
    gib = 2**30
    w = max([len("variant"), *(len(s["variant"]) for s in summary)])
    print(
        f"\n{'variant':{w}s} {'n':>2s} {'load s: median [range]':>22s} {'load CPU s':>18s} "
        f"{'peak(load) GiB':>18s} {'peak(load+gen) GiB':>18s} {'true GiB':>8s}"
    )
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    for s in summary:
        rs = by[s["variant"]]
        print(
            f"{s['variant']:{w}s} {s['n']:2d} {_stat([r['load_s'] for r in rs], '.2f'):>22s} "
            f"{_stat([r['load_cpu_s'] for r in rs], '.2f'):>18s} "
            f"{_stat([r['peak_load'] / gib for r in rs], '.2f'):>18s} "
            f"{_stat([r['peak'] / gib for r in rs], '.2f'):>18s} "
            f"{s['bytes'] / gib:8.3f}"
        )
    print(
        "\nratios of medians vs quantkit-none (unquantized, /none) and vs diffusers' own path for the same config "
        "(/diff): load wall time, load CPU time, peak of load + one image, peak of the load alone"
    )
    print(
        f"{'variant':{w}s} {'load/none':>9s} {'load/diff':>9s} {'cpu/none':>9s} {'cpu/diff':>9s} "
        f"{'peak/none':>9s} {'peak/diff':>9s} {'pk(load)/none':>13s} {'pk(load)/diff':>13s}"
    )

    def f(v):
        return "" if v is None else f"{v:.2f}"

    for s in summary:
        print(
            f"{s['variant']:{w}s} {f(s.get('load_vs_none')):>9s} {f(s.get('load_vs_diffusers')):>9s} "
            f"{f(s.get('cpu_vs_none')):>9s} {f(s.get('cpu_vs_diffusers')):>9s} "
            f"{f(s.get('peak_vs_none')):>9s} {f(s.get('peak_vs_diffusers')):>9s} "
            f"{f(s.get('peak_load_vs_none')):>13s} {f(s.get('peak_load_vs_diffusers')):>13s}"
        )
    if device != "cpu":
        mib = 2**20
        print("\nCUDA: peak allocated during the load vs allocated after the load x 1.05 + the largest bf16 layer")
        for s in summary:
            if "cuda_peak_load" in s:
                target = s.get("cuda_target")
                ok = "" if not s.get("largest_layer") else ("ok" if s["cuda_peak_load"] <= target else "OVER")
                print(
                    f"  {s['variant']:{w}s} peak {s['cuda_peak_load'] / mib:8.1f} MiB  "
                    f"after {s['cuda_after_load'] / mib:8.1f} MiB  layer {s['largest_layer'] / mib:6.1f} MiB  "
                    f"target {target / mib:8.1f} MiB  {ok}"
                )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "bench-flux-280m",
    )
    parser.add_argument("--only", nargs="*", metavar="NAME", help=f"run these variants only: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, help="rounds over the variants (default 3 on CPU, 2 on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", type=Path, help="also write the rows and the summary to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.cache), args.device)))
        return
    if args.prepare is not None:
        prepare(str(args.cache), args.prepare, args.device)
        return
    skip = FLOORS if args.device != "cpu" else CUDA_ONLY
    names = args.only or [n for n in VARIANTS if n not in skip]
    unknown = [n for n in names if n.split("+")[0] not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)} (optionally +KEY=VALUE)")
    if args.repeats is None:
        args.repeats = 3 if args.device == "cpu" else 2  # CUDA: every variant twice in ~4-5 minutes
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    start = time.perf_counter()
    build(args.cache)
    out = _run(__file__, ["--cache", str(args.cache), "--device", args.device, "--prepare", *names])
    if out.returncode:  # e.g. a kernel that does not build here: those variants will report FAILED
        print(f"preparing failed (continuing): {out.stderr.strip().splitlines()[-1:]}", flush=True)
    print(f"pipeline: {args.cache} (built/checked/prepared in {time.perf_counter() - start:.0f} s)", flush=True)
    from quantkit.planning import plan

    p = plan(args.cache, None, device="cpu")
    print(
        f"transformer: {p.components['transformer'].params / 1e6:.0f}M parameters, "
        f"T5: {p.components['text_encoder_2'].params / 1e6:.0f}M; device {args.device}; "
        f"{os.cpu_count()} CPUs; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rows = []
    width = max(len(n) for n in names)
    for round_ in range(args.repeats):
        for name in names:
            out = _run(
                __file__,
                ["--cache", str(args.cache), "--device", args.device, "--worker", name],
                env=_variant_env(name),
            )
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
                print(f"[{round_ + 1}] {name} FAILED: {last}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["round"] = round_ + 1
            rows.append(row)
            print(
                f"[{round_ + 1}] {name:{width}s} load {row['load_s']:6.2f} s (CPU {row['load_cpu_s']:5.2f} s)  "
                f"gen {row['gen_s']:5.2f} s  peak(load) "
                f"{row['peak_load'] / 2**30:5.2f} GiB  peak(load+gen) {row['peak'] / 2**30:5.2f} GiB  "
                f"load avg {row['loadavg']:.2f}",
                flush=True,
            )
    summary = summarize(rows, args.device)
    print_table(rows, summary, args.device)
    avgs = [r["loadavg"] for r in rows]
    if avgs:
        print(
            f"\nload average (1 min) at the variants' starts: median {statistics.median(avgs):.2f}, "
            f"range {min(avgs):.2f}-{max(avgs):.2f}; at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
