"""Train the embedded FLUX-layout pipeline v1 ("tiny-flux-shapes", 32×32) on CPU, in two stages.

1. VAE: an `AutoencoderKL` learns to squeeze a 32×32 RGB shapes image into an 8×8×16 latent and back.
2. Transformer: a `FluxTransformer2DModel` learns rectified flow on the pipeline's own conventions.

The stages themselves are in `quantkit.models.training` (shared with v2, `scenes_train.py`); the evaluation
after training in `quantkit.models.evaluation`, the model card in `quantkit.models.model_card`.

The CLIP and T5 text encoders of v1 stay frozen at their random initialisation: the transformer learns to read
whatever features they produce, so quantizing `text_encoder_2` still perturbs exactly what the transformer
depends on (as on FLUX.1), and training stays within the CPU budget. (v2 trains them.)

Everything is seeded; on the same machine and thread count the run is reproducible. `TrainConfig` holds every
knob with the reason for its value; `PRESETS` names the smoke / pilot / full settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from quantkit.models import shapes
from quantkit.models.defaults import write_generation_defaults
from quantkit.models.evaluation import (  # noqa: F401  (re-exported: the v1 API lives here)
    compare_settings,
    evaluate,
    evaluate_and_document,
    generate,
    save_grid,
    seconds_per_image,
)
from quantkit.models.model_card import write_model_card  # noqa: F401
from quantkit.models.tiny import IMAGE_SIZE, TEXT_LENGTH, build_flux_pipeline
from quantkit.models.training import encode_latents, train_flow
from quantkit.models.training import train_vae as _train_vae

# The embedded pipeline's architecture (the tiny builder's defaults are smaller still).
# VAE: 16 channels at full resolution keeps a training step at ~0.25 s (batch 64, 2 cores); (32, 64, 64) was 2× slower.
EMBEDDED_VAE_CONFIG = dict(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=8)
EMBEDDED_TRANSFORMER_CONFIG = dict(
    num_layers=2,  # double-stream (MMDiT) blocks: text and image tokens with separate weights
    num_single_layers=4,  # single-stream blocks: text and image tokens concatenated
    attention_head_dim=32,
    num_attention_heads=4,  # inner dim 128
)


@dataclass
class TrainConfig:
    """Every knob of a training run (defaults = the run that produced the shipped weights)."""

    seed: int = 0
    n_images: int = 20_000  # rendered once; 225 distinct prompts, so ~90 jittered images per prompt
    # VAE stage
    vae_steps: int = 1200
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4  # per latent element, relative to per-pixel MSE: keeps latents smooth, recon sharp
    # transformer stage
    transformer_steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05  # cosine decay ends at 5% of lr
    weight_decay: float = 0.01
    ema_decay: float = 0.999  # the shipped transformer is the EMA copy: smoother samples than the last step
    prompt_dropout: float = 0.1  # fraction of prompts replaced by "" (unconditional, for true CFG)
    grad_clip: float = 1.0
    # evaluation after training (held-out prompt/seed pairs, bf16, at the generation defaults)
    eval_pairs: int = 150
    generation_defaults: dict = field(
        default_factory=lambda: {
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "num_inference_steps": 20,
            "max_sequence_length": TEXT_LENGTH,
        }
    )


PRESETS = {
    # end to end in well under a minute: proves the code path, learns nothing
    "smoke": TrainConfig(
        n_images=256, vae_steps=4, vae_batch_size=8, transformer_steps=4, batch_size=8, warmup_steps=2, eval_pairs=4
    ),
    # a few minutes: does the loss fall, is adherence above chance?
    "pilot": TrainConfig(n_images=8000, vae_steps=600, transformer_steps=1500, eval_pairs=60),
    "full": TrainConfig(),
}


def train_vae(vae, images: np.ndarray, config: TrainConfig, log=print) -> dict:
    """`training.train_vae` with v1's held-back set (512 images) and latent statistics (4,096 images)."""
    return _train_vae(vae, images, config, log=log, held_back=512, stats_images=4096, chunk=256)


def train_transformer(pipe, images: np.ndarray, prompts: list[str], config: TrainConfig, log=print) -> dict:
    """Train `pipe.transformer` with frozen text encoders (`training.train_flow`); EMA weights loaded at the end."""
    latents = encode_latents(pipe.vae, images, chunk=256)
    result = train_flow(pipe, latents, prompts, config, TEXT_LENGTH, train_text_encoders=False, log=log)
    result.pop("losses_every_50")
    return result


def build_embedded_pipeline(seed: int = 0):
    """The untrained embedded pipeline: tiny CLIP and T5, the embedded VAE and transformer configs."""
    return build_flux_pipeline(seed, transformer_config=EMBEDDED_TRANSFORMER_CONFIG, vae_config=EMBEDDED_VAE_CONFIG)


def train_embedded(out: str | Path, config: TrainConfig, log=print) -> dict:
    """Build, train (VAE, then transformer) and save the embedded pipeline to `out`; evaluate it in bf16.

    Writes `out/` (diffusers folder, fp32 safetensors), `out/generation_defaults.json` and
    `out/training_report.json` (config, timings, losses, held-out adherence, seconds per image).

    Returns:
        The report dict.
    """

    out = Path(out)
    torch.manual_seed(config.seed)
    report: dict = {"config": asdict(config), "torch_threads": torch.get_num_threads(), "timings_s": {}}
    timings = report["timings_s"]

    start = time.perf_counter()
    images, prompts = shapes.sample_dataset(config.n_images, seed=config.seed)
    pipe = build_embedded_pipeline(config.seed)
    timings["data_and_build"] = time.perf_counter() - start
    log(f"dataset: {len(images)} images, {len(set(prompts))} distinct prompts ({timings['data_and_build']:.1f} s)")

    start = time.perf_counter()
    report.update(train_vae(pipe.vae, images, config, log=log))
    timings["vae"] = time.perf_counter() - start
    log(f"vae stage: {timings['vae']:.0f} s")

    start = time.perf_counter()
    report.update(train_transformer(pipe, images, prompts, config, log=log))
    timings["transformer"] = time.perf_counter() - start
    log(f"transformer stage: {timings['transformer']:.0f} s")

    pipe.save_pretrained(out, safe_serialization=True)
    write_generation_defaults(out, config.generation_defaults)
    return evaluate_and_document(out, report, log=log)


def config_from_preset(preset: str, **overrides) -> TrainConfig:
    """`PRESETS[preset]` with the given fields replaced (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
