"""What runs inside a worker process: load one variant, measure it, draw its images; or one per-layer study.

The worker leaves `record.json` (and `images/`) in its scratch folder; the parent (`runner.py`) moves them
into the output folder. Measurements come from `quantkit.measure`, one module each: footprint (true bytes),
memory (peak during load and generation), latency (the one timing loop), quality (against the baseline).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..config import PipelineQuantizationConfig
from ..files import atomic_write_text
from .settings import Job
from .store import IMAGES_DIR, jsonable
from .variants import split_config


def worker_main(job: Job, messages, lifeline) -> None:
    """Entry point of a worker process: run one job, leave record.json (and images) in job.work."""
    os.environ.clear()
    os.environ.update(job.env)  # a forkserver's children start with the server's environment, not ours
    for p in job.sys_path:
        if p not in sys.path:
            sys.path.append(p)

    def watch():  # the parent holds the other end; EOF means it died (kill -9): stop at once
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="quantkit-lifeline").start()

    def send(message: str) -> None:
        try:
            messages.send(message)
        except (BrokenPipeError, OSError):
            os._exit(70)

    send("started")
    work = Path(job.work)
    try:
        record = run_variant(job, send) if job.kind == "variant" else run_sensitivity(job, send)
    except BaseException as err:  # anything the job itself did not catch
        record = {
            "variant": job.name,
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "error_type": type(err).__name__,
            "traceback": traceback.format_exc(limit=20),
        }
    atomic_write_text(work / "record.json", json.dumps(jsonable(record), allow_nan=False))


def warm_up_process(device: str) -> None:
    """Import the whole stack and create the CUDA context before anything is measured.

    A forkserver's worker has the imports already (a no-op then); a spawned worker (CUDA) would otherwise count
    seconds of imports and the CUDA context (hundreds of MB of host memory) as part of loading the variant.
    """
    import importlib

    from .runner import PRELOAD

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a backend that is not installed: its variants fail with an install hint later
            pass
    if str(device).startswith("cuda"):
        import torch

        torch.empty(1, device=device)
        torch.cuda.synchronize(device)


def generate(pipe, prompt: str, seed: int, call_kwargs: dict):
    import torch

    out = pipe(prompt, generator=torch.Generator("cpu").manual_seed(int(seed)), output_type="np", **call_kwargs)
    return out.images[0]


def run_variant(job: Job, send) -> dict:
    """Load, measure and generate one variant (in the worker); returns its record."""
    import gc

    import numpy as np

    from ..load import load_pipeline
    from ..load.offload import apply_compile, check_compile
    from ..measure.environment import environment
    from ..measure.footprint import footprint
    from ..measure.latency import time_calls
    from ..measure.memory import current_rss, track_peak
    from ..measure.quality import image_quality

    t_start = time.perf_counter()
    device = job.device
    record: dict[str, Any] = {
        "variant": job.name,
        "config": job.config,
        "status": "ok",
        "error": None,
        "error_type": None,
        "pid": os.getpid(),
        "device": device,
    }
    timings: dict[str, float] = {}
    warm_up_process(device)
    timings["imports_s"] = time.perf_counter() - t_start
    record["rss_start"] = current_rss()
    pairs = [(p, s) for p in job.prompts for s in job.seeds]
    meters = {}
    try:
        record["environment"] = environment(device)
        quant, offload, compile = split_config(job.config)
        record.update(offload=offload, compile=compile)
        config = PipelineQuantizationConfig.from_dict(quant) if quant is not None else None
        send("loading")
        t = time.perf_counter()
        with track_peak("load", device) as meters["load"]:
            pipe = load_pipeline(
                job.source, config, torch_dtype=job.torch_dtype, device=device, progress=False, offload=offload
            )
            if compile is not None:  # compiled lazily: the warm-up calls pay for it, the timed ones do not
                record["compiled_with"] = apply_compile(pipe, check_compile(compile, device))
        timings["load_s"] = record["load_s"] = time.perf_counter() - t
        record["rss_after_load"] = current_rss()
        fp = footprint(pipe)
        record["bytes"] = int(fp.loc["total", "bytes"])
        record["quantized_bytes"] = int(fp.loc["total", "quantized_bytes"])
        bpw = float(fp.loc["total", "bits_per_weight"])
        record["bits_per_weight"] = bpw if bpw == bpw else None
        record["component_bytes"] = {n: int(b) for n, b in fp["bytes"].items() if n != "total"}
        plan = pipe.quantkit_plan
        labels = {n: c.quantization for n, c in plan.components.items() if c.spec is not None}
        record["quantization"] = describe(labels) + "".join(
            f" + {what}" for what in (offload and f"{offload} offload", compile and f"compile ({compile})") if what
        )
        record["component_quantization"] = labels
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(job.call_kwargs)
        n_timed = max(len(pairs), job.repeats)  # the images, then repeats of the first one when there are fewer

        draw = functools.partial(_draw, pipe, pairs, kwargs)

        def step(message: str) -> None:  # "warm-up i/k", then "call i/n" from the timing loop
            send(message.replace("call", "image", 1))

        with track_peak("generate", device) as meters["generate"]:
            t = time.perf_counter()
            outputs, latency = time_calls(draw, n_timed, device=device, warmup=job.warmup, on_step=step)
            timings["generate_s"] = time.perf_counter() - t
        images = outputs[: len(pairs)]
        record.update(
            latency_s=latency.median_s,
            latency_min_s=latency.min_s,
            latency_samples_s=latency.samples_s,
            latency_method=latency.method,
        )
        del draw, pipe
        gc.collect()
        send("quality")
        t = time.perf_counter()
        images = np.stack(images).astype(np.float32)
        reference = None
        if job.reference is not None:
            reference = np.load(Path(job.folder) / job.reference[1])
        q = image_quality(
            images, reference, [p for p, _ in pairs], use_lpips=job.use_lpips, clip=job.clip, device=device
        )
        record.update(q.to_dict())
        if job.reference is None and job.config is not None:
            record["notes"] = [*record.get("notes", []), "no reference images: the baseline did not finish"]
        record["reference"] = job.reference[0] if job.reference is not None else None
        timings["quality_s"] = time.perf_counter() - t
        t = time.perf_counter()
        record["images"] = save_images(images, pairs, Path(job.work) / IMAGES_DIR)
        record["n_images"] = len(images)
        timings["save_s"] = time.perf_counter() - t
    except Exception as err:
        record.update(
            status="error",
            error=f"{type(err).__name__}: {err}",
            error_type=type(err).__name__,
            traceback=traceback.format_exc(limit=20),
        )
    for phase, key in (("load", "load"), ("generate", "gen")):
        m = meters.get(phase)
        r = m.result if m is not None else None
        if r is None or r.rss_peak is None and r.cuda_allocated_peak is None:
            continue
        record[f"peak_{key}_rss"] = r.rss_peak
        record["memory_method"] = r.method
        if r.cuda_allocated_peak is not None:
            record[f"peak_{key}_cuda_allocated"] = r.cuda_allocated_peak
            record[f"peak_{key}_cuda_reserved"] = r.cuda_reserved_peak
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


def _draw(pipe, pairs: list, kwargs: dict, i: int):
    """Image i of the timed loop: the (prompt, seed) pairs in order, then repeats of the first one."""
    return generate(pipe, *pairs[i if i < len(pairs) else 0], kwargs)


def describe(labels: dict[str, str]) -> str:
    """{component: label} as "quanto int8 (transformer, text_encoder_2)"; "-" when nothing is quantized."""
    groups: dict[str, list[str]] = {}
    for name, label in labels.items():
        groups.setdefault(label, []).append(name)
    return "; ".join(f"{label} ({', '.join(names)})" for label, names in groups.items()) or "-"


def save_images(images, pairs, folder: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    names = []
    prompts = list(dict.fromkeys(p for p, _ in pairs))
    for image, (prompt, seed) in zip(images, pairs, strict=True):
        name = f"p{prompts.index(prompt)}-s{seed}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def run_sensitivity(job: Job, send) -> dict:
    """The per-layer study of one quantized component (in the worker); writes layers.csv."""
    from ..measure.sensitivity import layer_sensitivity

    t = time.perf_counter()
    config = PipelineQuantizationConfig.from_dict(split_config(job.config)[0])
    send("per-layer error")
    try:
        result = layer_sensitivity(
            job.source,
            config,
            job.component,
            prompts=job.prompts[:1],
            seeds=job.seeds[:1],
            device=job.device,
            torch_dtype=job.torch_dtype,
            call_kwargs=job.call_kwargs,
            progress=False,
        )
    except Exception as err:
        return {
            "variant": job.name,
            "component": job.component,
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=20),
        }
    Path(job.work).mkdir(parents=True, exist_ok=True)
    result.frame.to_csv(Path(job.work) / "layers.csv")
    return {
        "variant": job.name,
        "component": result.component,
        "quantization": result.quantization,
        "status": "ok",
        "prompts": job.prompts[:1],
        "seeds": job.seeds[:1],
        "timings": {"total_s": time.perf_counter() - t},
    }


__all__ = ["generate", "run_sensitivity", "run_variant", "worker_main"]
