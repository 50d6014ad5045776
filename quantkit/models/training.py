"""The two training stages shared by the embedded pipelines (v1 "shapes", v2 "scenes"), on CPU.

1. VAE (`train_vae`): an `AutoencoderKL` learns to squeeze an RGB image into a small latent and back
   (reconstruction MSE + a small KL term). Its `shift_factor` / `scaling_factor` are then set from the latent
   statistics, so the transformer sees latents of mean 0 and std 1, as on FLUX.1.
2. Flow (`train_flow`): a `FluxTransformer2DModel` learns rectified flow on the pipeline's own conventions, so
   `FluxPipeline.__call__` can sample from it unchanged:

       x0    = (vae latent − shift_factor) · scaling_factor, packed 2×2 → (B, tokens, 4 · latent channels)
       x_t   = (1 − σ) · x0 + σ · noise,  σ ∈ (0, 1), time-shifted with the same `mu` the pipeline computes
       model(x_t, timestep=σ, text) ≈ noise − x0          (the velocity the Euler scheduler integrates)

   Text embeddings come from `pipe.encode_prompt` at the `max_sequence_length` saved in the generation
   defaults, and a fraction of prompts is replaced by "" so classifier-free guidance (`true_cfg_scale` with
   `negative_prompt=""`) has an unconditional model to push away from. With `train_text_encoders=True` the
   CLIP and T5 encoders are trained by the same loss (their gradients flow through `encode_prompt`), so they
   come to carry the prompt language; otherwise their embeddings are computed once and they stay frozen.

Both stages take a config object with the fields they read (see `TrainConfig` in `train.py` and
`ScenesConfig` in `scenes_train.py`); every random draw comes from a seeded `torch.Generator`, so on the same
machine and thread count a run is reproducible bit for bit.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio` at `total` (a LambdaLR factor)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(
    vae, images: np.ndarray, config, log=print, held_back: int = 512, stats_images: int = 2048, chunk: int = 128
) -> dict:
    """Train `vae` in place on uint8 images; then set its shift/scaling factors from the latent statistics.

    Reads config.seed, vae_steps, vae_batch_size, vae_lr, kl_weight, grad_clip, and where the config has them
    vae_fg_weight / vae_edge_weight (`weighted_mse`; 1.0 / 0.0 = plain MSE) and vae_bf16 (bf16 autocast). The shift
    and scaling factors come from the posterior means of the first `stats_images` training images; `chunk` images
    are encoded at a time after training.

    Returns:
        dict with final loss, reconstruction PSNR (dB, on `held_back` images never trained on), shift_factor,
        scaling_factor.
    """
    generator = torch.Generator().manual_seed(config.seed)
    fg_weight = float(getattr(config, "vae_fg_weight", 1.0))
    edge_weight = float(getattr(config, "vae_edge_weight", 0.0))
    plain = fg_weight == 1.0 and edge_weight == 0.0
    data = images_to_tensor(images)
    test = data[-held_back:]  # never trained on: an honest reconstruction PSNR
    data = data[:-held_back] if len(data) > 2 * held_back else data
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, min(100, config.vae_steps // 10 + 1), config.vae_steps, 0.05)
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(getattr(config, "vae_bf16", False)))
    weights = None if plain else (fg_weight, edge_weight)
    vae.train()
    losses = []
    progress = tqdm(range(config.vae_steps), desc="vae", mininterval=10)
    for step in progress:
        batch = data[torch.randint(len(data), (config.vae_batch_size,), generator=generator)]
        with autocast:
            mse, kl = _vae_losses(vae, batch, generator, weights)
        loss = mse + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
    vae.eval()

    with torch.no_grad():
        recon = torch.cat([vae(part).sample for part in test.split(chunk)])
        mse = F.mse_loss(recon.clamp(-1, 1), test).item()
        psnr = 10 * math.log10(4.0 / mse)  # peak-to-peak range of [-1, 1] is 2
        means = torch.cat([vae.encode(part).latent_dist.mean for part in data[:stats_images].split(chunk)])
    shift, std = means.mean().item(), means.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    result = {
        "vae_final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
        "vae_psnr_db": psnr,
        "shift_factor": shift,
        "scaling_factor": 1.0 / std,
    }
    log(f"vae: recon PSNR {psnr:.1f} dB on held-back images; shift {shift:.4f}, scaling {1 / std:.4f}")
    return result


def _vae_losses(vae, batch: torch.Tensor, generator: torch.Generator, weights: tuple[float, float] | None):
    """One VAE step's (reconstruction MSE, KL per latent element), in float32: encode, sample the posterior with
    noise from `generator` (its log-variance clamped as diffusers' DiagonalGaussianDistribution does), decode and
    compare; `weights` = (fg_weight, edge_weight) for `weighted_mse`, None for plain MSE."""
    moments = vae.encoder(batch)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    noise = torch.randn(mean.shape, generator=generator)
    recon = vae.decode(mean + torch.exp(0.5 * logvar) * noise).sample.float()
    mse = F.mse_loss(recon, batch) if weights is None else weighted_mse(recon, batch, *weights)
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=[1, 2, 3]).mean() / mean[0].numel()
    return mse, kl


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 1.0 where a pixel of (N, C, H, W) images in [-1, 1] differs from its image's background (the
    top-left pixel) by more than 0.1 in some channel, else 0.0."""
    background = images[:, :, :1, :1]
    return ((images - background).abs().amax(dim=1, keepdim=True) > 0.1).to(images.dtype)


def latent_cell_weights(images: np.ndarray, scale_factor: int, fg_weight: float, chunk: int = 512) -> torch.Tensor:
    """(N, 1, H / scale_factor, W / scale_factor) weights for the flow loss: `fg_weight` on every latent cell that
    covers part of an object (`foreground_mask`, max-pooled over the cell's pixels), 1 elsewhere.

    Why: a small object covers 2-4 of the 64 latent cells of a 64×64 image, so in a plain MSE on the velocity
    the flat background is ~95% of the loss, and the transformer learns where an object goes and its colour long
    before the outline that tells a square from a circle."""
    parts = []
    for start in range(0, len(images), chunk):
        mask = foreground_mask(images_to_tensor(images[start : start + chunk]))
        parts.append(1.0 + (fg_weight - 1.0) * F.max_pool2d(mask, scale_factor))
    return torch.cat(parts)


def weighted_mse(
    recon: torch.Tensor, target: torch.Tensor, fg_weight: float, edge_weight: float = 0.0
) -> torch.Tensor:
    """MSE with the pixels that differ from the image's background weighted `fg_weight` times (the background is
    the top-left pixel; a pixel is foreground where a channel differs by more than 0.1 of the [-1, 1] range), and
    the pixels on an object's outline (within 1 px of where foreground meets background) `edge_weight` more.

    Why: small flat-colored objects on a plain background are a few percent of the pixels, so plain MSE is
    mostly the background and a short run learns blobs without color. Measured on the v2 VAE (1 thread, batch 16,
    lr 2e-3, scored by `scene_scorer` on held-back reconstructions): plain MSE after 300 steps, color 11% / shape
    30%; weight 8 after 1,500 steps, color 98%, shape 79%, count 99%, background 100% (26.6 dB). The outline
    term is for shape: the scorer tells shapes by how much of their box they fill, so a square whose corners the
    decoder rounds off reads as a circle."""
    foreground = foreground_mask(target)
    weight = 1.0 + (fg_weight - 1.0) * foreground
    if edge_weight:
        dilated = F.max_pool2d(foreground, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-foreground, 3, stride=1, padding=1)
        weight = weight + edge_weight * (dilated - eroded)
    return ((recon - target) ** 2 * weight).sum() / (weight.sum() * target.shape[1])


def finetune_decoder(vae, images: np.ndarray, config, log=print, held_back: int = 256) -> dict:
    """Train only the VAE's decoder (and post_quant_conv) further, the encoder frozen, on posterior samples.

    The latent space stays exactly what the transformer was trained on, so this can run after the flow stage:
    a decoder that was under-trained in the VAE stage (blurry, colors off) gets sharper without retraining the
    transformer. Reads config.seed, decoder_steps, vae_batch_size, decoder_lr, grad_clip.

    Returns:
        dict with decoder_psnr_db (on `held_back` images never trained on) and decoder_final_mse.
    """
    generator = torch.Generator().manual_seed(config.seed + 2)
    data = images_to_tensor(images)
    test, data = data[-held_back:], data[:-held_back]
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.decoder_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, min(50, config.decoder_steps // 10 + 1), config.decoder_steps, 0.05)
    )
    vae.decoder.train()
    losses = []
    progress = tqdm(range(config.decoder_steps), desc="decoder", mininterval=10)
    for step in progress:
        batch = data[torch.randint(len(data), (config.vae_batch_size,), generator=generator)]
        with torch.no_grad():
            posterior = vae.encode(batch).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(latents).sample, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(mse=f"{np.mean(losses[-50:]):.4f}")
        if step % 200 == 0:
            log(f"decoder step {step}: mse {np.mean(losses[-200:]):.4f}")
    vae.eval()
    vae.requires_grad_(True)
    with torch.no_grad():
        recon = torch.cat([vae(part).sample for part in test.split(128)])
        psnr = 10 * math.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), test).item())
    log(f"decoder: recon PSNR {psnr:.1f} dB on held-back images")
    return {"decoder_psnr_db": psnr, "decoder_final_mse": float(np.mean(losses[-50:])) if losses else float("nan")}


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, (N, latent channels, H / scale, W / scale) each."""
    data = images_to_tensor(images)
    means, stds = [], []
    for part in data.split(chunk):
        posterior = vae.encode(part).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """All-reduce the gradients of `params` across the torch.distributed group in one flat buffer and divide by
    `world` (a parameter without a gradient this step counts as zeros, so every rank sends the same layout)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = part.view_as(p)


def train_flow(
    pipe,
    latents: tuple[torch.Tensor, torch.Tensor],
    prompts: list[str],
    config,
    text_length: int,
    train_text_encoders: bool = False,
    log=print,
    auxiliary: torch.nn.Module | None = None,
    auxiliary_weight: float = 0.0,
    cell_weights: torch.Tensor | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Train `pipe.transformer` (and optionally both text encoders) by rectified flow; load the EMA weights.

    Args:
        pipe: a FluxPipeline whose VAE is trained (shift/scaling factors set).
        latents: (mean, std) of the VAE posterior of every training image, from `encode_latents`.
        prompts: one prompt per image.
        config: reads seed, transformer_steps, batch_size, lr, warmup_steps, min_lr_ratio, weight_decay,
            ema_decay, prompt_dropout, grad_clip (and text_lr when training the encoders; flow_bf16,
            flow_compile and flow_logit_mean if present).
        text_length: T5 `max_sequence_length`, as in the generation defaults.
        train_text_encoders: train CLIP and T5 jointly through the flow loss (else frozen).
        auxiliary: with train_text_encoders, a module whose `loss(prompts, embeds, pooled)` is added to the flow
            loss × `auxiliary_weight` and whose parameters train with the encoders (e.g. `scene_probe.PromptProbe`).
        cell_weights: (N, 1, h, w) per-latent-cell weights of the velocity MSE, one map per image (e.g.
            `latent_cell_weights`); None = plain MSE. The loss is normalised by the weights' sum.
        rank, world: this process's place among `world` data-parallel ranks (`flow_parallel.train_flow_ranks`
            sets them, inside an initialised torch.distributed group): each rank draws its own
            batch_size / world samples and the gradients are averaged before every optimizer step, so all ranks
            take the same steps. Only rank 0 logs. Defaults: one process, unchanged.

    Returns:
        dict with the mean loss over the first and last 200 steps.
    """
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    generator = torch.Generator().manual_seed(config.seed + 1 + 7919 * rank)  # rank 0: the one-process stream
    batch = config.batch_size // world
    if rank > 0:
        log = lambda message: None  # noqa: E731 - rank 0 speaks for all
    vae, transformer = pipe.vae, pipe.transformer
    latent_mean, latent_std = latents
    channels, height, width = latent_mean.shape[1:]
    shift, scaling = vae.config.shift_factor, vae.config.scaling_factor

    unique = sorted(set(prompts)) + [""]  # "" last: the unconditional prompt
    index = {prompt: i for i, prompt in enumerate(unique)}
    prompt_ids = torch.tensor([index[p] for p in prompts])
    empty_id = len(unique) - 1
    modules = [transformer]
    if train_text_encoders:
        modules += [pipe.text_encoder, pipe.text_encoder_2]
    else:
        with torch.no_grad():
            text_embeds, pooled_embeds, _ = pipe.encode_prompt(unique, prompt_2=None, max_sequence_length=text_length)

    img_ids = FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(text_length, 3)
    # The pipeline shifts its sigmas by mu (it depends on the number of image tokens); train on the same shift.
    sched = pipe.scheduler.config
    mu = calculate_shift(
        (height // 2) * (width // 2),
        sched.base_image_seq_len,
        sched.max_image_seq_len,
        sched.base_shift,
        sched.max_shift,
    )

    groups = [{"params": list(transformer.parameters()), "lr": config.lr}]
    if train_text_encoders:
        text_params = list(pipe.text_encoder.parameters()) + list(pipe.text_encoder_2.parameters())
        if auxiliary is not None:
            text_params += list(auxiliary.parameters())
        groups.append({"params": text_params, "lr": getattr(config, "text_lr", config.lr)})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, config.transformer_steps, config.min_lr_ratio)
    )
    params = [p for group in groups for p in group["params"]]
    emas = [copy.deepcopy(m).requires_grad_(False) for m in modules]
    ema_params = [p for m in emas for p in m.parameters()]
    model_params = [p for m in modules for p in m.parameters()]  # what the EMA follows (not the auxiliary's)
    for module in modules:
        module.train()
    losses, auxiliary_losses = [], []
    # bf16 autocast (config.flow_bf16): the matrices in bfloat16, weights, optimizer and EMA in float32
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(getattr(config, "flow_bf16", False)))
    # config.flow_compile: the transformer's forward (and so its backward) through torch.compile; the compiled
    # callable shares the transformer's parameters, so the optimizer, EMA and saving see no difference
    forward = torch.compile(transformer) if getattr(config, "flow_compile", False) else transformer
    logit_mean = float(getattr(config, "flow_logit_mean", 0.0))
    progress = tqdm(range(config.transformer_steps), desc="flow", mininterval=10, disable=rank > 0)
    for step in progress:
        idx = torch.randint(len(latent_mean), (batch,), generator=generator)
        z = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        x0 = FluxPipeline._pack_latents((z - shift) * scaling, batch, channels, height, width)
        noise = torch.randn(x0.shape, generator=generator)
        # logit-normal σ (SD3's choice: most steps in the middle of the path; config.flow_logit_mean < 0 moves
        # them toward the clean end, where small shapes get their corners), then the pipeline's time shift
        u = torch.sigmoid(logit_mean + torch.randn(batch, generator=generator))
        sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        text_idx = prompt_ids[idx].clone()
        text_idx[torch.rand(batch, generator=generator) < config.prompt_dropout] = empty_id
        with autocast:
            if train_text_encoders:  # the pipeline's own encoding path, with gradients
                batch_prompts = [unique[i] for i in text_idx.tolist()]
                embeds, pooled, _ = pipe.encode_prompt(batch_prompts, prompt_2=None, max_sequence_length=text_length)
            else:
                embeds, pooled = text_embeds[text_idx], pooled_embeds[text_idx]
            prediction = forward(
                hidden_states=x_t,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                timestep=sigma,  # the pipeline passes t / 1000 = σ
                img_ids=img_ids,
                txt_ids=txt_ids,
                return_dict=False,
            )[0].float()
        if cell_weights is None:
            loss = F.mse_loss(prediction, noise - x0)
        else:
            weight = cell_weights[idx].expand(-1, channels, -1, -1)
            weight = FluxPipeline._pack_latents(weight, batch, channels, height, width)
            loss = ((prediction - (noise - x0)) ** 2 * weight).sum() / weight.sum()
        total = loss
        if auxiliary is not None and train_text_encoders:
            extra = auxiliary.loss(batch_prompts, embeds.float(), pooled.float())
            total = loss + auxiliary_weight * extra
            auxiliary_losses.append(extra.item())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if world > 1:
            average_gradients(params, world)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 250 == 0:
            log(f"flow step {step}: loss {np.mean(losses[-250:]):.4f}")
    for module, ema in zip(modules, emas, strict=True):
        module.load_state_dict(ema.state_dict())
        module.eval()
    first, last = float(np.mean(losses[:200])), float(np.mean(losses[-200:]))
    log(f"transformer: loss {first:.4f} (first 200 steps) → {last:.4f} (last 200)")
    result = {"transformer_loss_first": first, "transformer_loss_last": last, "losses_every_50": losses[::50]}
    if auxiliary_losses:
        result["auxiliary_loss_first"] = float(np.mean(auxiliary_losses[:200]))
        result["auxiliary_loss_last"] = float(np.mean(auxiliary_losses[-200:]))
        log(f"auxiliary loss {result['auxiliary_loss_first']:.4f} → {result['auxiliary_loss_last']:.4f}")
    return result
