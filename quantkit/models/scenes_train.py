"""Train the embedded pipeline v2 ("tiny-flux-scenes"): FLUX layout, 64×64 scenes, trained text encoders.

Architecture (every size in `SCENES_*_CONFIG` below, with the reason beside it):

    image 64×64×3 ──VAE (4 levels, scale 8)──▶ latent 8×8×16 ──pack 2×2──▶ 16 tokens × 64 channels
    prompt ──CLIP (2 layers, 128 wide)──▶ pooled (128)           ─┐
           ──T5   (2 layers, 128 wide)──▶ 16 tokens × 128         ├─▶ FluxTransformer2DModel (inner 256,
                                                                   ┘   2 double + 4 single blocks, ~9 M params)

Why 16 image tokens and not 64 (a 3-level VAE): on the 2-core training machine a training step of this
transformer at batch 32 took 3.7 s with 64 image tokens and 1.1 s with 16 (measured, with other jobs
running). A 60-minute budget then buys ~2,000 steps at 16 tokens and ~600 at 64 — too few to learn the
language. The VAE's decoder draws the 8×8-pixel detail of each latent cell instead.

Training (`train_scenes`): the VAE first (`training.train_vae`), then the transformer *and both text encoders*
jointly through the flow-matching loss (`training.train_flow(train_text_encoders=True)`), then the VAE decoder
alone (`training.finetune_decoder`, encoder frozen so the latent space stays put). The encoders start
random and learn whatever features of the prompt the transformer needs — so they carry the meaning, and
quantizing them can lose it. Tokenizers are built locally and deterministically (`tiny.build_clip_tokenizer`,
`tiny.build_t5_tokenizer` over `scenes.vocabulary()`).

`ScenesConfig` holds every knob with the reason for its value; `SCENES_PRESETS` names smoke / pilot / full.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from quantkit.models import scenes
from quantkit.models.defaults import write_generation_defaults
from quantkit.models.evaluation import torch_threads
from quantkit.models.flow_parallel import check_ranks, train_flow_ranks
from quantkit.models.tiny import build_clip_text_model, build_clip_tokenizer, build_t5_encoder, build_t5_tokenizer
from quantkit.models.training import (
    encode_latents,
    finetune_decoder,
    images_to_tensor,
    latent_cell_weights,
    train_vae,
)

# The longest prompt ("a small red circle left of a large blue square on a yellow background") is 14 words:
# 15 T5 tokens with </s>, 16 CLIP tokens with BOS and EOS. FluxPipeline pads T5 to max_sequence_length, so the
# generation defaults must say 16 (its default 512 would be 30× the attention and garbage).
SCENES_TEXT_LENGTH = 16
SCENES_IMAGE_SIZE = scenes.IMAGE_SIZE  # 64 px

SCENES_CLIP_CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
SCENES_T5_CONFIG = dict(
    d_model=128,  # = transformer joint_attention_dim
    d_kv=64,
    d_ff=256,
    num_layers=2,
    num_heads=2,
    relative_attention_num_buckets=8,  # 16 tokens: 8 buckets tell every relative offset apart
    dropout_rate=0.0,  # the encoders are trained here; dropout would only slow learning in a short run
)
SCENES_VAE_CONFIG = dict(
    block_out_channels=(16, 32, 64, 64),  # 4 levels → vae_scale_factor 8: 64×64 image → 8×8 latent
    layers_per_block=1,
    latent_channels=16,  # FLUX's own count; 16 × 2×2 packing = 64 = x_embedder in_features
    norm_num_groups=8,
    mid_block_add_attention=False,  # convolution-only: no Linear layers outside the transformer/encoders
)
SCENES_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels × 2×2 packed patch
    num_layers=2,  # double-stream (MMDiT) blocks: text and image tokens with separate weights
    num_single_layers=4,  # single-stream blocks: text and image tokens concatenated
    attention_head_dim=64,
    num_attention_heads=4,  # inner dim 256: every Linear inside the blocks has in_features % 256 == 0 (K-quants)
    joint_attention_dim=128,  # = T5 d_model
    pooled_projection_dim=128,  # = CLIP hidden_size
    guidance_embeds=False,  # like FLUX.1-schnell; classifier-free guidance goes through `true_cfg_scale`
    axes_dims_rope=(16, 24, 24),  # sums to attention_head_dim
)


@dataclass
class ScenesConfig:
    """Every knob of a v2 training run (defaults = the run that produced the shipped weights)."""

    seed: int = 0
    n_images: int = 12_000  # rendered once and VAE-encoded once (~2 min); each seen ~5× by the flow stage
    # VAE stage
    vae_steps: int = 300
    vae_batch_size: int = 16  # 64×64 images: 16 per step is ~1.2 s on 2 shared cores
    vae_lr: float = 2e-3  # flat-colored shapes are easy to reconstruct; a high rate gets there in few steps
    kl_weight: float = 1e-4  # per latent element, relative to per-pixel MSE: keeps latents smooth, recon sharp
    vae_fg_weight: float = 1.0  # object pixels' weight in the VAE loss (`training.weighted_mse`); 1 = plain MSE
    vae_edge_weight: float = 0.0  # extra weight on objects' outlines (`training.weighted_mse`); 0 = none
    # the VAE stage under CPU bf16 autocast (weights and Adam stay float32). Measured on the 2-core machine (2
    # threads, batch 16, 64x64, the v2 VAE, median of steps 5-40, one sitting, OMP_WAIT_POLICY=PASSIVE as
    # train_embedded sets it): float32 0.38 s per step, bf16 0.28 (0.31 / 0.24 with spinning OpenMP waits), the
    # loss after 40 steps 0.27 against 0.30. Tried and dropped (issue 16): channels-last layout (0.23 s) and
    # torch.compile (0.19 s) were faster, but with both the VAE stopped learning (loss flat at ~0.45 over 1,600
    # steps of a full run, KL 0: the posterior collapsed), and each alone had a higher loss after 25-30 steps
    # (0.44-0.46 against 0.33-0.36) - left uninvestigated. Random 32x32 crops (8-px aligned, batch 32, so half the
    # pixels of a step; a scratch pilot of the hour's VAE settings, not in this code): 0.17 s per step alone, but after
    # 2,000 steps 27.0 dB and reconstructions' shape 91.8%, colour 97.7% against 30.5 dB, 94.1%, 99.6% - the time
    # saved is pixels not seen, not a cheaper way to see them
    vae_bf16: bool = False
    # flow stage (transformer + text encoders)
    transformer_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    text_lr: float = 1e-3  # the encoders start random: they need as large a rate as the transformer
    warmup_steps: int = 150
    min_lr_ratio: float = 0.05  # cosine decay ends at 5% of lr
    weight_decay: float = 0.01
    ema_decay: float = 0.995  # a short run: the EMA must forget the early weights within ~200 steps
    prompt_dropout: float = 0.1  # fraction of prompts replaced by "" (unconditional, for true CFG)
    # mean of the logit-normal the flow stage draws its noise levels from (SD3: 0); below 0 trains more on the
    # low-noise end of the path, where a small square's corners are drawn. Measured (issue 16, probe-bf16 + compile,
    # 3,850 steps, 300 held-out pairs, CFG 2): -0.5 all attributes 38%, -1.0 16%, against 51% at 0 - worse in every
    # attribute (relation shape 39 / 21% vs 55%): the noisy end, where layout and colour are set, needs the steps
    # +0.5 on the hour preset's flow stage (the shipped VAE, 300 held-out pairs, CFG 2 / 12 steps, paired by
    # scripts/compare_runs.py): at 2,500 steps all attributes 28 -> 34% (+5 [0, +10]), relation prompts all 16 -> 29%
    # (+13 [+7, +20]); at the full 5,900 steps against the shipped weights all 65 -> 67% (+2 [-3, +7]), single shape
    # 89 -> 90%, relation shape 69 -> 66%: it learns the relations sooner but the hour ends in the same place
    flow_logit_mean: float = 0.0
    flow_fg_weight: float = 1.0  # latent cells that cover an object, in the flow loss (`latent_cell_weights`)
    grad_clip: float = 1.0
    # torch threads in the flow stage (None: as set). Its matrices are small (16 image + 16 text tokens): on the
    # 2-core machine one thread did a step in 0.63 s and two in 0.85 s (OpenMP's barriers cost more than the
    # second core gives); the VAE's convolutions do gain from two (0.67 -> 0.50 s per step), so it keeps them.
    flow_threads: int | None = None
    # the flow stage's forward and backward under CPU bf16 autocast (weights, Adam and EMA stay float32). On the
    # 2-core machine's AMD EPYC (AVX512-BF16), one thread, batch 32, beside another job: 0.49-0.50 s per step
    # against 0.63-0.65 s in float32. Alone, whole steps (text encoders, probes, optimizer and EMA included) took 0.43
    # s averaged over probe-bf16's 3,850-step run and 0.49 s over a 600-step run another day: the machine drifts
    # (torch warns once that rms_norm leaves its fused kernel for mixed dtypes: harmless)
    flow_bf16: bool = False
    # the flow stage's transformer forward (and backward) through torch.compile (inductor: needs a C++ compiler, as
    # the training machine has). Measured there, bf16, one thread, batch 32, two 600-step runs back to back, each
    # alone: 0.41 s per whole step compiled against 0.49 eager (steps 100-600); beside another job 0.46 against
    # 0.49-0.50. The first step compiles: 6 s with inductor's cache warm, 167 s cold beside two other jobs
    flow_compile: bool = False
    # processes the flow stage runs on, one thread each, the batch split between them (`flow_parallel`): 2 puts the
    # training machine's second core to work. Measured there (bf16 + compile, batch 32, alone): 2 ranks x 16 samples
    # 0.38 s per step against 0.41 s in one process, only 1.08x (each rank still runs AdamW, the EMA and a 50 MB
    # all-reduce over all ~12 M parameters every step)
    flow_ranks: int = 1
    # prompt-structure objective (`scene_probe`): probes on T5's tokens and CLIP's pooled vector that must read
    # back each object's place and attributes; 0 / 0 = off (the runs before it: the encoders learned a bag of words)
    probe_weight: float = 0.0  # × the probe's cross-entropy, added to the flow loss
    text_pretrain_steps: int = 0  # encoders + probes alone on the probe loss before the flow stage
    # transformer depth: double-stream (text and image keep their own weights) and single-stream blocks
    double_blocks: int = SCENES_TRANSFORMER_CONFIG["num_layers"]
    single_blocks: int = SCENES_TRANSFORMER_CONFIG["num_single_layers"]
    # optional decoder stage (after the flow stage; encoder frozen, so the transformer's latent space is
    # unchanged). 0 = skipped, as in the shipped run: tried on it for 200 steps, the reconstruction MSE did not
    # move (0.046 → 0.046), so the VAE's encoder, not its decoder, is what 300 VAE steps left short.
    decoder_steps: int = 0
    decoder_lr: float = 2e-3
    generation_defaults: dict = field(
        default_factory=lambda: {
            "height": SCENES_IMAGE_SIZE,
            "width": SCENES_IMAGE_SIZE,
            "num_inference_steps": 20,
            "max_sequence_length": SCENES_TEXT_LENGTH,
        }
    )


SCENES_PRESETS = {
    # seconds, end to end: proves the code path (and is reproducible bit for bit), learns nothing
    "smoke": ScenesConfig(
        n_images=64, vae_steps=2, vae_batch_size=4, transformer_steps=3, batch_size=4, warmup_steps=1, decoder_steps=2
    ),
    # a few minutes: measures the step times the full preset is sized from
    "pilot": ScenesConfig(n_images=1024, vae_steps=30, transformer_steps=40, warmup_steps=10, decoder_steps=20),
    "full": ScenesConfig(),
    # the VAE fix (issue 16): object pixels weighted 8x and 2,000 VAE steps (color 98% on reconstructions after
    # 1,500); 1,000 flow steps keep the whole run within the hour on 2 cores
    "full-fg": ScenesConfig(vae_steps=2000, vae_fg_weight=8.0, transformer_steps=1000, warmup_steps=100),
    # the hour spent where it was short: full-fg's held-out adherence was still rising after 2,500 flow steps
    # (continuation); 1,500 VAE steps left shape at 71% on reconstructions (2,000: 89.5%), so the VAE keeps its
    # 2,000 and the flow stage gets 3,000 steps on one thread (faster there, see flow_threads)
    "ship": ScenesConfig(vae_steps=2000, vae_fg_weight=8.0, transformer_steps=3000, warmup_steps=150, flow_threads=1),
    # ship + the prompt-structure probes (the transformer read a bag of words: left of = right of). Measured (issue
    # 16, CFG 2.0, 300 held-out pairs): relation 41% -> 92%, colour in relation prompts 45% -> 91%, single shape
    # 43% -> 73%, all attributes 13% -> 34%; left/right velocity distance 1.6% -> 24%. The best run so far.
    "probe": ScenesConfig(
        vae_steps=2000,
        vae_fg_weight=8.0,
        transformer_steps=3000,
        warmup_steps=150,
        flow_threads=1,
        probe_weight=0.1,
        text_pretrain_steps=1500,  # ~3 min; after 300 steps T5 told an object's place for 80% of tokens
    ),
}
# probe + objects' outlines weighted in the VAE loss (shape is the VAE's weak attribute: 84% on reconstructions).
# Pilot, 800 VAE steps on 4,000 images, 512 held back: edge weight 0 -> 16 took shape 61% -> 73% and size 87% -> 94%,
# but colour 98% -> 83% and 26.3 -> 23.7 dB; this preset takes the middle, 8. Full run: reconstructions shape 84% ->
# 95%, size 100%, 30.7 dB; held-out (CFG 2.0, 300 pairs) single shape still 73%, relation 88%: the flow stage, not
# the VAE, now limits shape
SCENES_PRESETS["probe-edge"] = replace(SCENES_PRESETS["probe"], vae_edge_weight=8.0)
# probe-edge + object cells weighted 4x in the flow loss (`flow_fg_weight`): the transformer drew 40% of small
# single shapes right (large 91%) while the VAE keeps 95% of shape. Measured against weight 1 on one shared VAE (issue
# 16, 300 held-out pairs, CFG 4): worse, not better — single size 89% -> 72% (weight 8: 70%), single shape 81 -> 76%
# (79%), relation 93 -> 88% (89%), count prompts' count 47 -> 37%. Kept as a recorded negative result
SCENES_PRESETS["probe-edge-fg"] = replace(SCENES_PRESETS["probe-edge"], flow_fg_weight=4.0)
# probe-edge with the flow stage in bf16 autocast (`flow_bf16`) and the steps that buys in the same wall time (3,000 x
# 0.65 s = 3,850 x 0.50 s, both beside another job; bf16 alone ran 0.38 s/step). The best run so far (issue 16, one
# shared VAE, 300 held-out pairs, CFG 2; probe-edge's 3,000 float32 steps in brackets): all attributes 51% (37),
# single shape 81% (79), single size 85% (87), relation 95% (91), relation colour 96% (90), relation shape 55% (31),
# relation size 73% (74), count prompts' count 58% (53). Flow stage 1,661 s; 46 min end to end with the VAE's 926 s
SCENES_PRESETS["probe-bf16"] = replace(SCENES_PRESETS["probe-edge"], flow_bf16=True, transformer_steps=3850)
# probe-bf16 through torch.compile (`flow_compile`), 7,500 flow steps. Measured (issue 16, the shared VAE, 300 held-out
# pairs, CFG 2; probe-bf16 in brackets): all attributes 74% (51); single shape 96% (81), size 100% (85), colour 99%,
# count and background 100% - the single-object target met; relation 99%, relation colour 98%, size 93% (73), shape
# 72% (55) - under 85%; count prompts' count 77% (58). Batch 64 x 3,750 (the same samples): all 66%, single shape 89%.
# Over the hour: flow stage 3,438 s beside another job; alone, 1,080 s of other stages + 7,500 x 0.41 s is ~72 min
# (Figures by the fill-ratio triangle rule; rescored by the skew rule, the same images: all 77%, single shape 97%,
# relation shape 75%, count prompts' shape 75%)
SCENES_PRESETS["probe-long"] = replace(SCENES_PRESETS["probe-bf16"], flow_compile=True, transformer_steps=7500)
# probe-long sized for the hour on the 2-core machine: the VAE stage in bf16 (`vae_bf16`) and 5,900 flow steps.
# Measured end to end, alone (issue 16, `train_embedded.py --pipeline scenes --preset hour`): 3,434 s = 57.2 min
# (data 12 s, VAE 740 s, latents 30 s, text pre-training 105 s, flow 2,547 s = 0.43 s/step with the compile).
# VAE: 30.5 dB, reconstructions' shape 94%, count 99%. 300 held-out pairs, CFG 2, 20 steps (probe-long, rescored
# with the skew rule, in brackets): all attributes 67% (77); single shape 89% (97), size 96% (100); relation shape
# 70% (75), size 79% (93), colour 95% (98), relation 98% (99) - the hour costs ten points
# The shipped v2 weights (quantkit/embedded/tiny-flux-scenes) are this preset, run again a day later: 3,444 s, and
# the same VAE figures, held-out scores and quantization table to the last digit
SCENES_PRESETS["hour"] = replace(SCENES_PRESETS["probe-long"], vae_bf16=True, transformer_steps=5900)
# probe with 4 double + 4 single blocks (~1.3x the step time, so 2,400 steps: the same hour). Measured beside probe:
# worse at the same wall time (relation 87%, all 28%) and a 62 MB folder (over the 60 MB budget)
SCENES_PRESETS["probe-deep"] = replace(
    SCENES_PRESETS["probe"], double_blocks=4, single_blocks=4, transformer_steps=2400
)


def flow_cell_weights(pipe, images: np.ndarray, config: ScenesConfig) -> torch.Tensor | None:
    """The flow loss's per-latent-cell weights for `config.flow_fg_weight` (None at 1: plain MSE)."""
    if config.flow_fg_weight == 1.0:
        return None
    return latent_cell_weights(images, pipe.vae_scale_factor, config.flow_fg_weight)


def check_flow_stage(config: ScenesConfig) -> None:
    """The flow stage's settings, checked before any stage (not after the VAE stage's quarter hour): ValueError
    from `flow_parallel.check_ranks`; RuntimeError if `flow_compile` is set and the C++ compiler inductor calls
    ($CXX, else g++) is not on PATH."""
    import os
    import shutil

    check_ranks(config.flow_ranks, config.batch_size)

    compiler = os.environ.get("CXX") or "g++"
    if config.flow_compile and shutil.which(compiler) is None:
        raise RuntimeError(
            f"flow_compile=True needs a C++ compiler for torch.compile, and {compiler!r} is not on PATH; install one "
            "(e.g. `apt install g++`, or point $CXX at yours) or set flow_compile=False (the flow stage then runs "
            "eager, ~1.2x slower)."
        )


def held_back_count(n_images: int) -> int:
    """How many of the dataset's last images the VAE and decoder stages never train on (their honest test set)."""
    return min(256, n_images // 4)


def scenes_config(preset: str, **overrides) -> ScenesConfig:
    """`SCENES_PRESETS[preset]` with the given fields replaced (None values are ignored)."""
    if preset not in SCENES_PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(SCENES_PRESETS)}.")
    return replace(SCENES_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def build_scenes_pipeline(
    seed: int = 0, double_blocks: int | None = None, single_blocks: int | None = None, text_only: bool = False
):
    """The untrained v2 pipeline (random weights, deterministic for `seed`; the global RNG is left alone);
    `double_blocks` / `single_blocks` override the transformer's depth. `text_only`: without VAE and transformer,
    for `encode_prompt` alone (its text encoders are the whole pipeline's: they are built first)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    words = scenes.vocabulary()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_clip_tokenizer(SCENES_TEXT_LENGTH, words=words)
        tokenizer_2 = build_t5_tokenizer(SCENES_TEXT_LENGTH, words=words)
        text_encoder = build_clip_text_model(tokenizer, **SCENES_CLIP_CONFIG)
        text_encoder_2 = build_t5_encoder(tokenizer_2, **SCENES_T5_CONFIG)
        after_text = torch.get_rng_state()  # the image parts continue this stream
    if text_only:
        parts = dict(text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2)
        parts.update(tokenizer_2=tokenizer_2, vae=None, transformer=None)
        return FluxPipeline(FlowMatchEulerDiscreteScheduler(), **parts)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(after_text)
        levels = len(SCENES_VAE_CONFIG["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            shift_factor=0.0,  # set from the latent statistics after the VAE stage
            scaling_factor=1.0,
            **SCENES_VAE_CONFIG,
        ).eval()
        depth = {"num_layers": double_blocks, "num_single_layers": single_blocks}
        depth = {k: v for k, v in depth.items() if v is not None}
        transformer = FluxTransformer2DModel(**{**SCENES_TRANSFORMER_CONFIG, **depth}).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1's settings: resolution-dependent shift
        shift=3.0,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def reconstruct(vae, images: np.ndarray, chunk: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) images through the VAE (encode, decode the posterior's mean) → uint8 images."""
    with torch.no_grad():
        data = images_to_tensor(np.asarray(images))
        recon = torch.cat([vae(part).sample for part in data.split(chunk)]).clamp(-1, 1)
    return ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def reconstruction_adherence(vae, images, prompts) -> dict:
    """The scorer (`scene_scorer`) on the VAE's reconstructions of dataset images: what the latent keeps of each
    attribute. No transformer can draw what the VAE loses, so this is the gate before the flow stage's hour."""
    from quantkit.models.scene_scorer import scene_adherence, score_scenes

    summary = scene_adherence(score_scenes(list(reconstruct(vae, images)), list(prompts)))
    return {k: round(v, 3) for k, v in summary.items() if isinstance(v, float)}


def decoder_stage(vae, images, config: ScenesConfig, report: dict, log=print) -> dict:
    """The decoder stage (`training.finetune_decoder`), timed into report["timings_s"]["decoder"]."""
    start = time.perf_counter()
    result = finetune_decoder(vae, images, config, log=log, held_back=held_back_count(len(images)))
    report["timings_s"]["decoder"] = time.perf_counter() - start
    log(f"decoder stage: {report['timings_s']['decoder']:.0f} s")
    return result


# The settings the VAE stage reads: two runs that agree on them train the same VAE (the stage is deterministic).
VAE_FIELDS = (
    "seed",
    "n_images",
    "vae_steps",
    "vae_batch_size",
    "vae_lr",
    "kl_weight",
    "vae_fg_weight",
    "vae_edge_weight",
    "grad_clip",
)


def _vae_source_report(source: Path, config: ScenesConfig) -> dict:
    """The training report of `train_scenes(vae_from=source)`, checked against `config` before any work."""
    report_path = source / "training_report.json"
    if not (report_path.is_file() and (source / "vae" / "config.json").is_file()):
        raise ValueError(
            f"vae_from={str(source)!r} holds no trained VAE (vae/ and training_report.json); pass a folder written "
            "by train_scenes (or `train_embedded.py --pipeline scenes --vae-only --out DIR`)."
        )
    earlier = json.loads(report_path.read_text())
    if earlier.get("stage") != "vae" and earlier["config"].get("decoder_steps"):
        raise ValueError(
            f"vae_from={str(source)!r}: its decoder was fine-tuned after the flow stage, so its VAE is not the VAE "
            "stage's; pass a folder written with --vae-only (or by a run with decoder_steps=0)."
        )
    default = ScenesConfig()  # a report older than a field holds none: that run had the field's default
    differ = {k: (earlier["config"].get(k, getattr(default, k)), getattr(config, k)) for k in VAE_FIELDS}
    differ = {k: v for k, v in differ.items() if v[0] != v[1]}
    if differ:
        listed = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
        raise ValueError(
            f"vae_from={str(source)!r} trained its VAE with other settings ({listed}); use the same settings or "
            "drop vae_from to train a VAE."
        )
    return earlier


def _reuse_vae(pipe, source: Path, earlier: dict, timings: dict, log=print) -> dict:
    """Put `source`'s trained VAE into `pipe` (see `train_scenes(vae_from=)`); returns its VAE report entries."""
    from diffusers import AutoencoderKL

    pipe.vae = AutoencoderKL.from_pretrained(source / "vae").eval()
    timings["vae"] = 0.0
    timings["vae_reused_s"] = earlier["timings_s"]["vae"]
    log(f"vae: reused from {source} (its stage took {earlier['timings_s']['vae']:.0f} s)")
    keep = [k for k in earlier if k.startswith("vae_") or k in ("shift_factor", "scaling_factor")]
    return {"vae_from": str(source), **{k: earlier[k] for k in keep}}


def train_scenes(
    out: str | Path,
    config: ScenesConfig,
    log=print,
    vae_from: str | Path | None = None,
    stop_after_vae: bool = False,
    preset: str | None = None,
) -> dict:
    """Build, train (VAE, then transformer + text encoders) and save the v2 pipeline to `out` (fp32 safetensors).

    Writes the diffusers folder, `generation_defaults.json` and `training_report.json` (config, timings,
    losses, load average). Evaluation is a separate step (`scenes_eval.evaluate_scenes_folder`). The VAE is
    saved (`out/vae`) as soon as its stage ends; `stop_after_vae` returns there. `vae_from`: a folder written by
    an earlier run with the same VAE settings (`VAE_FIELDS`) — its VAE is used and the VAE stage skipped.
    `preset`: the name `config` came from, recorded in the report (the model card's command shows it).

    Raises:
        ValueError: `vae_from`'s VAE was trained with other settings, or holds no trained VAE.
        RuntimeError: `config.flow_compile` without a C++ compiler (`check_flow_stage`).

    Returns:
        The report dict.
    """
    import os

    check_flow_stage(config)
    out = Path(out)
    vae_from = Path(vae_from) if vae_from is not None else None
    source_report = _vae_source_report(vae_from, config) if vae_from is not None else None
    torch.manual_seed(config.seed)
    report: dict = {
        "preset": preset,
        "config": asdict(config),
        "torch_threads": torch.get_num_threads(),
        "timings_s": {},
        "load_average_start": os.getloadavg(),
    }
    timings = report["timings_s"]

    start = time.perf_counter()
    images, prompts = scenes.sample_dataset(config.n_images, seed=config.seed)
    pipe = build_scenes_pipeline(config.seed, config.double_blocks, config.single_blocks)
    timings["data_and_build"] = time.perf_counter() - start
    log(f"dataset: {len(images)} images, {len(set(prompts))} distinct prompts ({timings['data_and_build']:.1f} s)")

    if vae_from is not None:
        report.update(_reuse_vae(pipe, vae_from, source_report, timings, log=log))
    else:
        start, held_back = time.perf_counter(), held_back_count(len(images))
        report.update(train_vae(pipe.vae, images, config, log=log, held_back=held_back))
        timings["vae"] = time.perf_counter() - start
        log(f"vae stage: {timings['vae']:.0f} s")
        report["vae_reconstruction_adherence"] = reconstruction_adherence(
            pipe.vae, images[-held_back:], prompts[-held_back:]
        )
        log(f"vae reconstructions scored: {report['vae_reconstruction_adherence']}")
        # saved at once: the VAE is the first third of the run, and a later run can start from it (vae_from)
        out.mkdir(parents=True, exist_ok=True)
        pipe.vae.save_pretrained(out / "vae", safe_serialization=True)
        (out / "training_report.json").write_text(json.dumps({**report, "stage": "vae"}, indent=2) + "\n")
        if stop_after_vae:
            return report

    start = time.perf_counter()
    latents = encode_latents(pipe.vae, images)
    timings["encode_latents"] = time.perf_counter() - start
    log(f"latents {tuple(latents[0].shape)}: {timings['encode_latents']:.0f} s")

    probe = None
    if config.probe_weight or config.text_pretrain_steps:
        from quantkit.models.scene_probe import build_probe, pretrain_text_encoders

        probe = build_probe(pipe, SCENES_TEXT_LENGTH, config.seed)
    if config.text_pretrain_steps:
        start = time.perf_counter()
        with torch_threads(config.flow_threads):
            report.update(pretrain_text_encoders(pipe, probe, prompts, config, SCENES_TEXT_LENGTH, log=log))
        timings["text_pretrain"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch_threads(config.flow_threads):
        flow = train_flow_ranks(
            pipe,
            latents,
            prompts,
            config,
            SCENES_TEXT_LENGTH,
            ranks=config.flow_ranks,
            train_text_encoders=True,
            log=log,
            auxiliary=probe if config.probe_weight else None,
            auxiliary_weight=config.probe_weight,
            cell_weights=flow_cell_weights(pipe, images, config),
        )
    report.update(flow)
    timings["flow"] = time.perf_counter() - start
    log(f"flow stage: {timings['flow']:.0f} s ({timings['flow'] / max(1, config.transformer_steps):.2f} s/step)")
    if probe is not None:  # what the trained encoders carry, on prompts training never drew
        from quantkit.models.scene_probe import probe_accuracy

        held_out = [prompt for prompt, _ in scenes.heldout_prompts(256)]
        report["probe_heldout_accuracy"] = probe_accuracy(pipe, probe, held_out, SCENES_TEXT_LENGTH)
        log(f"probe accuracy on held-out prompts: {report['probe_heldout_accuracy']}")
    report["distinct_training_prompts"] = len(set(prompts))
    if config.decoder_steps:
        report.update(decoder_stage(pipe.vae, images, config, report, log=log))
    report["load_average_end"] = os.getloadavg()

    pipe.save_pretrained(out, safe_serialization=True)
    write_generation_defaults(out, config.generation_defaults)
    (out / "training_prompts.txt").write_text("\n".join(sorted(set(prompts))) + "\n")
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
