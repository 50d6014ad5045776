"""Tiny random-weight pipelines in the real component layouts of FLUX.1, SD3 and PixArt-Sigma.

Everything is built from diffusers and transformers classes with configs small enough that a whole pipeline is
a few MB, and with tokenizers built here from the words of the shapes dataset — nothing is downloaded.
The weights are random: use these pipelines to exercise loading, quantizing and measuring code paths, not to
judge image quality (the trained `quantkit/embedded/tiny-flux-shapes` pipeline is for that).

Layouts (the component names are the real pipelines' names, so `components_to_quantize=["transformer",
"text_encoder_2"]` means the same thing here as on FLUX.1-dev):

    layout    pipeline                  transformer               text encoders
    "flux"    FluxPipeline              FluxTransformer2DModel    text_encoder=CLIP, text_encoder_2=T5
    "sd3"     StableDiffusion3Pipeline  SD3Transformer2DModel     text_encoder(_2)=CLIP+projection, text_encoder_3=T5
    "pixart"  PixArtSigmaPipeline       PixArtTransformer2DModel  text_encoder=T5

(CLIP = `CLIPTextModel`, T5 = `T5EncoderModel`.)

All three share one VAE design: `AutoencoderKL` with three resolution levels (a 32×32 image becomes an 8×8
latent, `vae_scale_factor=4`) and 16 latent channels, so FLUX's 2×2 packing gives 16 tokens of 64 channels.

Linear shapes. bitsandbytes' 4-bit CPU kernel needs `in_features % 64 == 0` and `out_features % 32 == 0`
(GGUF and quanto block sizes like the same). With the default configs here, every `nn.Linear` in all three
layouts satisfies it — no exception is needed:

- `FluxTransformer2DModel.x_embedder` is Linear(64 → 64), not the usual tiny-model Linear(16 → …), because the
  VAE has 16 latent channels (2×2 packing: 4 × 16 = 64), and `proj_out` writes 64 channels for the same reason;
- SD3's and PixArt's patch embeddings are `Conv2d`, and their `proj_out` writes 2·2·16 = 64 channels;
- token and position embeddings are `nn.Embedding`, the VAE has no attention (convolutions only).

`nonconforming_linears(pipe)` lists the layers that break the rule, so a test (and a learner) can check it.

Sizes on disk with the default configs (fp32 safetensors): flux ≈ 3.0 MB, sd3 ≈ 3.3 MB, pixart ≈ 2.1 MB; the VAE
(0.3 M parameters) is the largest component.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantkit.models.shapes import vocabulary

if TYPE_CHECKING:  # imported lazily at call time; only for annotations here
    import torch
    from diffusers import DiffusionPipeline

LAYOUTS = ("flux", "sd3", "pixart")

# Text lengths: the longest shapes prompt ("a small purple triangle at the bottom") is 7 words, 9 tokens with
# BOS/EOS; 16 leaves room and keeps attention cheap. FluxPipeline pads T5 to `max_sequence_length` (default
# 512!), so the pipelines' generation defaults pass `max_sequence_length=16`.
TEXT_LENGTH = 16
IMAGE_SIZE = 32  # pixels; the VAE turns it into an 8×8 latent

# Linear-shape rule of bitsandbytes' 4-bit CPU kernel (and the block sizes of GGUF / quanto).
IN_MULTIPLE = 64
OUT_MULTIPLE = 32

# Tiny architectures, one dict per component, so a reader sees every size in one place.
CLIP_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
T5_CONFIG = dict(d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2, relative_attention_num_buckets=8)
VAE_CONFIG = dict(
    block_out_channels=(32, 32, 32),  # 3 levels → vae_scale_factor 4 (32×32 image → 8×8 latent)
    layers_per_block=1,
    latent_channels=16,  # 16 channels × 2×2 packing = 64 = x_embedder in_features
    norm_num_groups=8,
    mid_block_add_attention=False,  # keeps the VAE convolution-only: no Linear layers to worry about
    shift_factor=0.0,  # FluxPipeline needs both; the trained pipeline sets them from latent statistics
    scaling_factor=1.0,
)
FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels × 2×2 packed patch
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=64,  # = T5 d_model
    pooled_projection_dim=64,  # = CLIP hidden_size (CLIPTextModel's pooler_output)
    guidance_embeds=False,  # like FLUX.1-schnell; classifier-free guidance goes through `true_cfg_scale`
    axes_dims_rope=(8, 12, 12),  # sums to attention_head_dim
)


def _bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair-encoding merges that make every word a single token (CLIP's style: "</w>" marks a word's end).

    Plain BPE training, written out because `tokenizers`' BpeTrainer breaks ties between equally frequent pairs
    in hash order, which changes from one process to the next (and with it every token id). Here ties go to the
    alphabetically first pair, so the tokenizer — and everything trained on its ids — is reproducible.
    """
    splits = [list(word[:-1]) + [word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in splits for pair in zip(symbols, symbols[1:], strict=False))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for index, symbols in enumerate(splits):
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[index] = merged


def build_clip_tokenizer(max_length: int = TEXT_LENGTH, words: list[str] | None = None):
    """A byte-level BPE CLIP tokenizer over `words` (default: the shapes vocabulary); each word is one token.

    It adds `<|startoftext|>` and `<|endoftext|>` around every prompt (CLIPTokenizer's post-processor): CLIP's
    pooled output is read at the first end token, so without them it would be the same for every prompt.
    Words outside the vocabulary fall back to byte-level pieces, so any prompt still tokenizes. Built the same
    way in every process (see `_bpe_merges`).
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the 256 bytes
    merges = _bpe_merges(words or vocabulary())  # the words are ASCII, which ByteLevel maps to themselves
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    tokens += [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}  # ids 0 and 1 are BOS and EOS
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_t5_tokenizer(max_length: int = TEXT_LENGTH, words: list[str] | None = None):
    """A Unigram T5 tokenizer: one piece per word of `words` (default: the shapes vocabulary), e.g. `▁red`;
    single letters as fallback, `</s>` appended.

    Ids follow T5's convention: `<pad>`=0, `</s>`=1, `<unk>`=2.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -1.0) for word in words or vocabulary()]  # whole words win over letter sequences
    pieces += [(letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def build_clip_text_model(tokenizer, *, with_projection: bool = False, projection_dim: int = 64, **sizes: Any):
    """A random CLIP text encoder matched to `tokenizer` (vocab, special ids, positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # != 2, so pooling looks for the first EOS token
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim,
        **{**CLIP_CONFIG, **sizes},
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def build_t5_encoder(tokenizer, **sizes: Any):
    """A random T5 encoder matched to `tokenizer`."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        feed_forward_proj="gated-gelu",  # like T5 v1.1 / FLUX's T5-XXL
        **{**T5_CONFIG, **sizes},
    )
    return T5EncoderModel(config).eval()


def build_vae(**sizes: Any):
    """A convolution-only `AutoencoderKL` (see `VAE_CONFIG`)."""
    from diffusers import AutoencoderKL

    config = {**VAE_CONFIG, **sizes}
    levels = len(config["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        **config,
    ).eval()


def build_flux_pipeline(
    seed: int = 0,
    *,
    transformer_config: dict | None = None,
    vae_config: dict | None = None,
    clip_config: dict | None = None,
    t5_config: dict | None = None,
):
    """A random-weight `FluxPipeline`; the `*_config` dicts override the tiny defaults (used by `train.py`)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):  # deterministic for `seed`, caller's RNG state untouched
        torch.manual_seed(seed)
        tokenizer = build_clip_tokenizer()
        tokenizer_2 = build_t5_tokenizer()
        text_encoder = build_clip_text_model(tokenizer, **(clip_config or {}))
        text_encoder_2 = build_t5_encoder(tokenizer_2, **(t5_config or {}))
        vae = build_vae(**(vae_config or {}))
        transformer = FluxTransformer2DModel(**{**FLUX_TRANSFORMER_CONFIG, **(transformer_config or {})}).eval()
    # FLUX.1's scheduler settings: resolution-dependent shift (mu from the number of image tokens).
    scheduler = FlowMatchEulerDiscreteScheduler(
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


def _build_sd3_pipeline(seed: int):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, tokenizer_2, tokenizer_3 = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
        text_encoder = build_clip_text_model(tokenizer, with_projection=True)
        text_encoder_2 = build_clip_text_model(tokenizer_2, with_projection=True)
        # SD3 zero-pads the two CLIP hidden states (64 + 64) to T5's width and concatenates along the sequence,
        # so T5's d_model must be at least their sum.
        text_encoder_3 = build_t5_encoder(tokenizer_3, d_model=128)
        vae = build_vae()
        transformer = SD3Transformer2DModel(
            sample_size=IMAGE_SIZE // 4,  # latent size; the pipeline's default image size is 4× this
            patch_size=2,
            in_channels=16,
            out_channels=16,  # proj_out: 64 → 2·2·16 = 64
            num_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=128,  # = T5 d_model
            caption_projection_dim=64,  # = inner dim (2 heads × 32)
            pooled_projection_dim=128,  # = 64 + 64, the two CLIP projections concatenated
            pos_embed_max_size=16,  # allows latents up to 32×32 (images up to 128×128)
        ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's setting
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_pixart_pipeline(seed: int):
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_t5_tokenizer()
        text_encoder = build_t5_encoder(tokenizer)
        vae = build_vae()
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=32,
            in_channels=16,
            out_channels=16,  # no learned variance; proj_out: 64 → 2·2·16 = 64
            num_layers=1,
            cross_attention_dim=64,  # = inner dim
            caption_channels=64,  # = T5 d_model
            sample_size=IMAGE_SIZE // 4,
            patch_size=2,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            use_additional_conditions=False,
        ).eval()
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def build_tiny_pipeline(
    layout: str = "flux", seed: int = 0, torch_dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """Build a tiny pipeline with random weights (deterministic for `seed`), in memory.

    Args:
        layout: "flux", "sd3" or "pixart" (see the module docstring for the components).
        seed: seeds every component's initialisation; the global RNG is left as it was.
        torch_dtype: dtype of every module (default float32).

    Returns:
        The pipeline, on CPU. Call it with `tiny_generation_defaults(layout)` (32×32, short text) or apply
        them with `quantkit.models.defaults.apply_generation_defaults`.
    """
    import torch

    builders = {"flux": build_flux_pipeline, "sd3": _build_sd3_pipeline, "pixart": _build_pixart_pipeline}
    if layout not in builders:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(map(repr, LAYOUTS))}.")
    pipe = builders[layout](seed)
    if torch_dtype is not None and torch_dtype != torch.float32:
        pipe = pipe.to(torch_dtype)
    return pipe


def tiny_generation_defaults(layout: str = "flux") -> dict:
    """The call kwargs that suit a tiny pipeline: 32×32 pixels, 16 text tokens, 2 steps."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(map(repr, LAYOUTS))}.")
    defaults = {
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "num_inference_steps": 2,
        "max_sequence_length": TEXT_LENGTH,
    }
    if layout == "pixart":
        defaults["use_resolution_binning"] = False  # binning only knows PixArt's real sample sizes
        defaults["clean_caption"] = False  # caption cleaning needs ftfy and bs4, and our prompts are clean
    return defaults


def save_tiny_pipeline(path: str | Path, layout: str = "flux", seed: int = 0) -> Path:
    """Build a tiny pipeline and save it (safetensors) so `DiffusionPipeline.from_pretrained(path)` loads it offline.

    The folder also gets `generation_defaults.json` (see `tiny_generation_defaults`), which
    `quantkit.models.defaults.read_generation_defaults` reads. Deterministic: the same seed writes the same bytes.

    Returns:
        The folder as a `Path`.
    """
    path = Path(path)
    pipe = build_tiny_pipeline(layout, seed=seed)
    pipe.save_pretrained(path, safe_serialization=True)
    defaults = tiny_generation_defaults(layout)
    (path / "generation_defaults.json").write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n")
    return path


def nonconforming_linears(pipe, in_multiple: int = IN_MULTIPLE, out_multiple: int = OUT_MULTIPLE) -> list[dict]:
    """The `nn.Linear` layers whose shapes break the bitsandbytes-4-bit-on-CPU rule (in % 64, out % 32).

    Returns:
        One dict per offending layer: component, name, in_features, out_features.
    """
    import torch

    rows = []
    for component_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for name, module in component.named_modules():
            if isinstance(module, torch.nn.Linear) and (
                module.in_features % in_multiple or module.out_features % out_multiple
            ):
                rows.append(
                    {
                        "component": component_name,
                        "name": name,
                        "in_features": module.in_features,
                        "out_features": module.out_features,
                    }
                )
    return rows
