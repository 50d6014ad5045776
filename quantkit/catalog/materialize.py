"""Catalog pipelines with random weights: shrunk to a scale, built on a device, saved in the pipeline's own layout.

The benchmarks need a full-size FLUX.1-dev without the hub; the CPU tests need the same layout small enough to
run in seconds. `scaled_folder(hub_id, scale, dest)` writes a catalog entry's configs at a scale:

    "full"  as published
    "half"  half the repeated blocks (transformer layers, encoder layers), widths as published
    "tiny"  1-2 blocks, widths of 128-256, 4-level VAE with 32-64 channels: a few tens of MB, runs on a CPU

`materialize(folder, dest, device=..., dtype=...)` builds every model component from those configs with random
weights generated on `device` (a GPU builds FLUX.1-dev in seconds), saves each with `save_pretrained` (the
libraries' own sharding), adds tokenizers built locally (`quantkit.models.tiny`: the shapes vocabulary, ids valid
for any vocab size) and the scheduler config, so `quantkit.load_pipeline(dest)` and diffusers load it offline.
The images are noise: this is for memory and speed, not quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import one_of
from . import catalog_folder, model_components

SCALES = ("full", "half", "tiny")

# class -> {key: value} written over the config at scale "tiny" (values derived from each other where they must
# agree: the transformer's joint/caption width is the T5 width, its pooled width the CLIP width(s))
_TINY_T5 = {"d_model": 256, "d_ff": 640, "d_kv": 64, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}
_TINY_CLIP = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 128,
}
_TINY = {
    "FluxTransformer2DModel": {
        "num_layers": 1,
        "num_single_layers": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 64,
        "axes_dims_rope": [8, 28, 28],
        "joint_attention_dim": 256,
        "pooled_projection_dim": 128,
    },
    "SD3Transformer2DModel": {
        "num_layers": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 64,
        "caption_projection_dim": 256,
        "joint_attention_dim": 256,
        "pooled_projection_dim": 256,
        "pos_embed_max_size": 64,
    },
    "PixArtTransformer2DModel": {
        "num_layers": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 64,
        "cross_attention_dim": 256,
        "caption_channels": 256,
    },
    "WanTransformer3DModel": {
        "num_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 128,
        "ffn_dim": 512,
        "text_dim": 256,
    },
    "T5EncoderModel": _TINY_T5,
    "UMT5EncoderModel": {**_TINY_T5, "vocab_size": 32128},
    "CLIPTextModel": _TINY_CLIP,
    "CLIPTextModelWithProjection": _TINY_CLIP,
    "AutoencoderKL": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1},
    "AutoencoderKLWan": {"base_dim": 32, "num_res_blocks": 1},
}
_LAYER_KEYS = ("num_layers", "num_single_layers", "num_hidden_layers", "num_decoder_layers")


def scaled_config(class_name: str, config: dict, scale: str) -> dict:
    """One component's config at `scale` ("full", "half" or "tiny")."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {one_of(SCALES)}.")
    out = dict(config)
    if scale == "half":
        for key in _LAYER_KEYS:
            if isinstance(out.get(key), int) and out[key] > 1:
                out[key] = out[key] // 2
        if out.get("dual_attention_layers"):
            out["dual_attention_layers"] = [i for i in out["dual_attention_layers"] if i < out["num_layers"]]
    elif scale == "tiny":
        out.update(_TINY.get(class_name, {}))
        if out.get("dual_attention_layers"):
            out["dual_attention_layers"] = [0]
    return out


def scaled_folder(source: str | Path, scale: str, dest: str | Path) -> Path:
    """Write a catalog entry's (or a config folder's) configs at `scale` into `dest`; returns `dest`.

    SD3 concatenates its two CLIP embeddings and pads them to the T5 width, so at "tiny" the pooled width is
    the sum of the CLIP projections (128 + 128) and the T5 width (256) covers their hidden sizes.
    """
    folder = catalog_folder(source) or Path(source)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{source!r} is neither a catalog id nor a folder with model_index.json.")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "model_index.json", dest / "model_index.json")
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        (dest / "scheduler").mkdir(exist_ok=True)
        shutil.copy(folder / "scheduler" / "scheduler_config.json", dest / "scheduler" / "scheduler_config.json")
    for name, (_, class_name) in model_components(folder).items():
        config = json.loads((folder / name / "config.json").read_text())
        (dest / name).mkdir(exist_ok=True)
        (dest / name / "config.json").write_text(json.dumps(scaled_config(class_name, config, scale), indent=2))
    return dest


def materialize(
    folder: str | Path,
    dest: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "bfloat16",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Build every model component of `folder` with random weights on `device` and save the pipeline to `dest`.

    Weights: N(0, 0.02) for matrices, 1 for norm scales, 0 for biases — drawn on `device`, so a GPU builds a
    12-B-parameter transformer in seconds. Saved with each library's `save_pretrained` (safetensors, sharded as the
    library shards), plus locally built tokenizers and the scheduler config.

    Returns:
        `dest`, a folder `quantkit.load_pipeline` loads offline.
    """
    import importlib

    import torch

    folder, dest = Path(folder), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index = json.loads((folder / "model_index.json").read_text())
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, (library, class_name) in model_components(folder).items():
        if progress:
            print(f"materialize: {name} ({class_name}) on {device}", flush=True)
        cls = getattr(importlib.import_module(library), class_name)
        model = _build(cls, library, folder / name, device, torch_dtype)
        _randomize(model, generator)
        model.save_pretrained(dest / name, safe_serialization=True)
        del model
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    if (folder / "scheduler").is_dir():
        shutil.copytree(folder / "scheduler", dest / "scheduler", dirs_exist_ok=True)
    index.update(_save_tokenizers(index, dest))
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    return dest


def _build(cls, library: str, folder: Path, device: str, torch_dtype):
    """The model from its config, parameters created directly on `device` in `torch_dtype` (no CPU copy)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            if library == "diffusers":
                model = cls.from_config(cls.load_config(folder))
            else:
                config = cls.config_class.from_pretrained(folder)
                model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=torch_dtype).eval()


def _randomize(model, generator) -> None:
    import torch

    with torch.no_grad():
        for pname, param in model.named_parameters():
            if not param.is_floating_point():
                continue
            if param.ndim >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif pname.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def _save_tokenizers(index: dict, dest: Path) -> dict:
    """Write a locally built tokenizer for every tokenizer entry of model_index.json; returns the updated entries."""
    from ..models.tiny import build_clip_tokenizer, build_t5_tokenizer

    updates = {}
    for name, value in index.items():
        if not name.startswith("tokenizer") or not isinstance(value, list) or value[0] is None:
            continue
        clip = "clip" in str(value[1]).lower()
        tokenizer = build_clip_tokenizer(max_length=77) if clip else build_t5_tokenizer(max_length=512)
        tokenizer.save_pretrained(dest / name)
        updates[name] = ["transformers", type(tokenizer).__name__]
    return updates


__all__ = ["SCALES", "materialize", "scaled_config", "scaled_folder"]
