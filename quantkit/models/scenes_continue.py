"""More training on a folder `scenes_train.train_scenes` saved: the decoder stage it predates, or more flow steps.

Both rebuild the run's data from its report (same config, same seeds), so the VAE stage is not repeated.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from quantkit.models import scenes
from quantkit.models.evaluation import torch_threads
from quantkit.models.flow_parallel import train_flow_ranks
from quantkit.models.scenes_train import (
    SCENES_TEXT_LENGTH,
    ScenesConfig,
    check_flow_stage,
    decoder_stage,
    flow_cell_weights,
)
from quantkit.models.training import encode_latents


def continue_with_decoder(out: str | Path, log=print) -> dict:
    """Run the decoder stage on a folder saved by a `train_scenes` run that predates it (same config, same data,
    same seeds as inside `train_scenes`), and save the VAE and report back."""
    import os

    from diffusers import AutoencoderKL

    out = Path(out)
    report = json.loads((out / "training_report.json").read_text())
    config = ScenesConfig(**{**asdict(ScenesConfig()), **report["config"]})
    report["config"] = asdict(config)
    images, _ = scenes.sample_dataset(config.n_images, seed=config.seed)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    report.update(decoder_stage(vae, images, config, report, log=log))
    report["load_average_end"] = os.getloadavg()
    vae.save_pretrained(out / "vae", safe_serialization=True)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def continue_flow(out: str | Path, steps: int, lr: float | None = None, log=print) -> dict:
    """Train the transformer and text encoders of a folder saved by `train_scenes` for `steps` more flow steps
    (same data and config; a fresh optimizer with a short warm-up, seeds moved on so the draws differ; `lr`
    default: half the config's), keeping its VAE, and save the pipeline and report back. The VAE stage (the
    longer one) is not repeated.

    Raises:
        ValueError: steps < 1.
        RuntimeError: the folder's config has flow_compile and no C++ compiler is found (`check_flow_stage`).
    """
    import os

    from diffusers import DiffusionPipeline

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}.")
    out = Path(out)
    report = json.loads((out / "training_report.json").read_text())
    config = ScenesConfig(**{**asdict(ScenesConfig()), **report["config"]})
    check_flow_stage(config)
    rounds = report.setdefault("flow_continuations", [])
    rate = lr if lr is not None else config.lr / 2
    more = replace(
        config,
        transformer_steps=steps,
        warmup_steps=min(50, max(1, steps // 10)),
        lr=rate,
        text_lr=rate,
        seed=config.seed + 1000 * (len(rounds) + 1),
    )
    images, prompts = scenes.sample_dataset(config.n_images, seed=config.seed)
    pipe = DiffusionPipeline.from_pretrained(out)
    start = time.perf_counter()
    latents = encode_latents(pipe.vae, images)
    with torch_threads(config.flow_threads):
        result = train_flow_ranks(
            pipe,
            latents,
            prompts,
            more,
            SCENES_TEXT_LENGTH,
            ranks=config.flow_ranks,
            train_text_encoders=True,
            log=log,
            cell_weights=flow_cell_weights(pipe, images, config),
        )
    seconds = time.perf_counter() - start
    log(f"flow continuation: {steps} steps, {seconds:.0f} s")
    rounds.append({"steps": steps, "lr": rate, "seconds": seconds, "load_average_end": os.getloadavg(), **result})
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
