"""What each component of a pipeline is for, and which ones are worth quantizing by default.

One home for the policy that the comparison's default variants and the widgets' default choice share:
the denoiser (the transformer or UNet: most of the bytes and all of the steps) and the T5 encoders (in
FLUX and SD3 the second-largest component) are quantized; CLIP and the VAE stay as they are — as in
diffusers' own example (`components_to_quantize=["transformer", "text_encoder_2"]` on FLUX).
"""

from __future__ import annotations

DENOISERS = ("transformer", "unet", "prior")  # component names of the denoising model, in order of preference


def denoiser(components) -> str | None:
    """The denoiser's name among `components` (names, or a {name: ...} mapping), or None."""
    return next((n for n in DENOISERS if n in components), None)


def is_t5_encoder(class_name: str) -> bool:
    """True for transformers' T5 encoder classes (T5EncoderModel, UMT5EncoderModel ...)."""
    return "T5" in class_name and class_name.endswith("Model")


def default_components(index: dict[str, str | tuple[str, str]]) -> list[str]:
    """The components worth quantizing by default: the denoiser and every T5 encoder.

    Args:
        index: {component: class name} or {component: (library, class name)} of the model components.
    """
    classes = {n: (v[1] if isinstance(v, tuple | list) else v) for n, v in index.items()}
    names = [d] if (d := denoiser(classes)) else []
    names += [n for n, cls in classes.items() if is_t5_encoder(cls) and n not in names]
    return names


def role_of(name: str, class_name: str) -> str:
    """The part a component plays: "denoiser" (transformer/unet), "text_encoder", "vae" or "other"."""
    lowered = class_name.lower()
    if name in ("transformer", "unet", "prior", "decoder") or (
        ("transformer" in lowered or "unet" in lowered) and ("2d" in lowered or "3d" in lowered)
    ):
        return "denoiser"
    if name == "vae" or "autoencoder" in lowered or lowered.startswith("vq"):
        return "vae"
    if name.startswith("text_encoder") or "textmodel" in lowered or "encodermodel" in lowered:
        return "text_encoder"
    return "other"


__all__ = ["DENOISERS", "default_components", "denoiser", "is_t5_encoder", "role_of"]
