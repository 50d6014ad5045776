"""Helpers the tests share: one generation call and the image metric they compare with."""

from __future__ import annotations

import math


def generate(pipe, prompt: str = "a red circle", seed: int = 0, steps: int = 2):
    """One image as a float array in [0, 1] (H, W, 3), same seed -> same noise."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, generator=generator, num_inference_steps=steps, output_type="np").images[0]


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when identical)."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def assert_flux_layout(folder) -> None:
    """`folder`'s model_index.json names FluxPipeline and FLUX.1's four component classes."""
    import json
    from pathlib import Path

    index = json.loads((Path(folder) / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
