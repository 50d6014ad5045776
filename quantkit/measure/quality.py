"""Image quality of a quantized pipeline: its images against the full-precision pipeline's same-seed images.

Quantization research (e.g. SVDQuant) compares a quantized model's image with the image the unquantized model
draws from the *same seed and prompt*: the two should be nearly the same picture, and how far they differ
separates methods where a distribution metric such as FID barely moves. Metrics, per image pair:

- PSNR (dB, from scikit-image): 10·log10(1 / mean squared pixel error) on [0, 1] images. 40 dB and up: no
  visible difference; 20–30 dB: visibly different details. Identical images have infinite PSNR; they are
  counted (`identical`) and left out of the mean.
- SSIM (scikit-image): structural similarity in [−1, 1], 1 = identical; compares local means, contrasts and
  correlations in 7×7 windows, so it reacts to structure more than to a uniform shift.
- LPIPS (optional): distance between deep features of the two images (lower = closer), with the `lpips` package
  or torchmetrics — only when the backbone weights are already on disk; nothing is downloaded.
- CLIP score (optional): 100 × cosine similarity of CLIP's image and prompt embeddings (higher = more on
  prompt), for every variant including the baseline, with a CLIP model found locally (`clip_model`).
- Adherence (shapes pipelines): `quantkit.models.shapes` checks whether each image shows the color, shape,
  position and size its prompt asks for; computed when every prompt is a shapes prompt.

Images are float arrays in [0, 1] shaped (N, H, W, 3), as `pipe(..., output_type="np").images` returns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"


@dataclass
class Quality:
    """Quality of N images (against N reference images where a reference was given).

    Means are over the image pairs; `None` where a metric was not computed (see `notes`).
    """

    psnr: float | None = None  # dB, mean over pairs that differ; inf when all pairs are identical
    psnr_min: float | None = None  # dB, the worst pair
    ssim: float | None = None
    ssim_min: float | None = None
    lpips: float | None = None
    clip_score: float | None = None
    adherence: float | None = None  # fraction of images right on every attribute their prompt names
    adherence_detail: dict | None = None  # quantkit.models.shapes.adherence_summary
    identical: int = 0  # pairs with exactly the same pixels
    per_image: Any = None  # pandas DataFrame, one row per image
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("psnr", "psnr_min", "ssim", "ssim_min", "lpips", "clip_score",
                                              "adherence", "adherence_detail", "identical", "notes")}


def as_image_array(images) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1] from a list of PIL images, uint8 arrays or float arrays."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    arrays = []
    for image in images:
        a = np.asarray(image)
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        arrays.append(a[..., :3])
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), np.float32)


def psnr(reference, images) -> np.ndarray:
    """PSNR in dB of each image against its reference (data range 1); inf for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    ref, img = _pair(reference, images)
    return np.array([np.inf if np.array_equal(r, i) else peak_signal_noise_ratio(r, i, data_range=1.0)
                     for r, i in zip(ref, img, strict=True)], dtype=np.float64)


def ssim(reference, images) -> np.ndarray:
    """SSIM of each image against its reference (color channels averaged, 7×7 windows or smaller)."""
    from skimage.metrics import structural_similarity

    ref, img = _pair(reference, images)
    side = min(ref.shape[1], ref.shape[2])
    win = min(7, side if side % 2 else side - 1)  # odd, and no larger than the image
    return np.array([structural_similarity(r, i, channel_axis=-1, data_range=1.0, win_size=win)
                     for r, i in zip(ref, img, strict=True)], dtype=np.float64)


def _pair(reference, images) -> tuple[np.ndarray, np.ndarray]:
    ref, img = as_image_array(reference), as_image_array(images)
    if ref.shape != img.shape:
        raise ValueError(f"Reference images {ref.shape} and images {img.shape} differ in shape; compare images "
                         "made with the same prompts, seeds, height and width.")
    return ref, img


# -- optional metrics: only with weights already on disk ----------------------------------------------------

class MetricUnavailable(RuntimeError):
    """An optional metric cannot run here (package or weights missing); the message says what to install."""


def _torchvision_alexnet_file() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"


def lpips_model(device: str = "cpu"):
    """An LPIPS (AlexNet) model when its weights are on disk, else MetricUnavailable (nothing is downloaded).

    Tries the `lpips` package, then torchmetrics; both need torchvision's AlexNet weights in torch's hub cache.
    """
    import importlib.util

    weights = _torchvision_alexnet_file()
    have_lpips = importlib.util.find_spec("lpips") is not None
    have_tm = importlib.util.find_spec("torchmetrics") is not None
    if not (have_lpips or have_tm) or importlib.util.find_spec("torchvision") is None:
        raise MetricUnavailable("LPIPS skipped: it needs torchvision and the 'lpips' package (pip install "
                                "'lpips' 'torchvision') or torchmetrics")
    if not weights.is_file():
        raise MetricUnavailable(f"LPIPS skipped: torchvision's AlexNet weights are not at {weights} (quantkit "
                                "downloads nothing; copy the file there to enable LPIPS)")
    if have_lpips:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()


def lpips_distance(reference, images, model, device: str = "cpu") -> np.ndarray:
    """LPIPS distance of each image to its reference (lower = closer) with a model from `lpips_model`."""
    import torch

    ref, img = _pair(reference, images)
    out = []
    with torch.no_grad():
        for r, i in zip(ref, img, strict=True):
            a = torch.from_numpy(r).permute(2, 0, 1)[None].to(device)
            b = torch.from_numpy(i).permute(2, 0, 1)[None].to(device)
            if type(model).__name__ == "LPIPS":  # the lpips package wants [-1, 1]
                d = model(a * 2 - 1, b * 2 - 1)
            else:  # torchmetrics with normalize=True takes [0, 1]
                model.reset()
                d = model(a, b)
            out.append(float(d.flatten()[0]))
    return np.array(out, dtype=np.float64)


def clip_model(name_or_path: str = DEFAULT_CLIP_MODEL, device: str = "cpu"):
    """(model, processor) of a CLIP model found locally (a folder, or a hub id already in the cache).

    Raises:
        MetricUnavailable: not on disk (nothing is downloaded).
    """
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(name_or_path, local_files_only=True)
    except Exception as err:  # OSError / ValueError, depending on what is missing
        raise MetricUnavailable(f"CLIP score skipped: no local copy of {name_or_path!r} ({type(err).__name__}); "
                                "pass clip_model= a folder holding a CLIP model, or download it once with "
                                f"huggingface-cli download {name_or_path}") from None
    return model, processor


def clip_scores(images, prompts: list[str], model, processor, device: str = "cpu") -> np.ndarray:
    """CLIP score of each image with its prompt: 100 × max(cosine similarity, 0), as torchmetrics defines it."""
    import torch

    img = as_image_array(images)
    pixels = [(a * 255).round().astype(np.uint8) for a in img]
    with torch.no_grad():
        inputs = processor(text=list(prompts), images=pixels, return_tensors="pt", padding=True).to(device)
        image_emb = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_emb = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cos = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
    return (100 * cos.clamp(min=0)).double().cpu().numpy()


def adherence(images, prompts: list[str]) -> dict | None:
    """`adherence_summary` of the shapes scorer, or None when a prompt is not a shapes prompt."""
    from ..models.shapes import adherence_summary, parse_prompt, score_images

    try:
        for p in prompts:
            parse_prompt(p)
    except ValueError:
        return None
    return adherence_summary(score_images(list(as_image_array(images)), list(prompts)))


# -- everything at once ----------------------------------------------------------------------------------

def image_quality(images, reference=None, prompts: list[str] | None = None, *, use_lpips: bool = True,
                  clip: str | None = DEFAULT_CLIP_MODEL, device: str = "cpu") -> Quality:
    """Every quality metric that can run here, for `images` against `reference` (same prompts and seeds).

    Args:
        images: (N, H, W, 3) in [0, 1] (or a list of PIL images / arrays).
        reference: the baseline's images for the same prompts and seeds; None for the baseline itself.
        prompts: one per image (CLIP score and shapes adherence need them).
        use_lpips: compute LPIPS when its weights are on disk.
        clip: CLIP model folder or cached hub id for the CLIP score; None skips it.
        device: where LPIPS and CLIP run.

    Returns:
        A Quality; metrics that could not run are None with a note saying why.
    """
    import pandas as pd

    img = as_image_array(images)
    q = Quality()
    table: dict[str, Any] = {}
    if prompts is not None:
        if len(prompts) != len(img):
            raise ValueError(f"Got {len(img)} images but {len(prompts)} prompts; pass one prompt per image.")
        table["prompt"] = list(prompts)
    if reference is not None:
        p, s = psnr(reference, img), ssim(reference, img)
        table["psnr"], table["ssim"] = p, s
        finite = p[np.isfinite(p)]
        q.identical = int((~np.isfinite(p)).sum())
        q.psnr = float(finite.mean()) if len(finite) else float("inf")
        q.psnr_min = float(p.min())
        q.ssim, q.ssim_min = float(s.mean()), float(s.min())
        if use_lpips:
            try:
                d = lpips_distance(reference, img, lpips_model(device), device)
                table["lpips"], q.lpips = d, float(d.mean())
            except MetricUnavailable as err:
                q.notes.append(str(err))
    else:
        q.notes.append("reference: quality of the other variants is measured against these images")
    if clip and prompts is not None:
        try:
            c = clip_scores(img, prompts, *clip_model(clip, device), device)
            table["clip_score"], q.clip_score = c, float(c.mean())
        except MetricUnavailable as err:
            q.notes.append(str(err))
    if prompts is not None:
        summary = adherence(img, prompts)
        if summary is not None:
            q.adherence, q.adherence_detail = summary["all"], summary
    q.per_image = pd.DataFrame(table, index=pd.RangeIndex(len(img), name="image"))
    return q


__all__ = ["DEFAULT_CLIP_MODEL", "MetricUnavailable", "Quality", "adherence", "as_image_array", "clip_model",
           "clip_scores", "image_quality", "lpips_distance", "lpips_model", "psnr", "ssim"]
