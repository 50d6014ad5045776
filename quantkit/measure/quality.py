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
- Adherence: whether each image shows what its prompt asks for — `quantkit.models.shapes` (v1 pipeline, 32×32:
  color, shape, position, size) or `quantkit.models.scene_scorer` (v2 "scenes", 64×64: background, count,
  color, shape, size, relation); computed when every prompt is in that world's grammar.

Uncertainty. A mean over a handful of prompts says little on its own: two variants 0.5 dB apart may differ
only by which prompts were drawn. So PSNR, SSIM and adherence come with a 95% bootstrap interval
(`psnr_ci`, `ssim_ci`, `adherence_ci`, as [low, high]): the per-image values are resampled with replacement
— whole prompts at a time, so the seeds of one prompt stay together (a cluster bootstrap) — 2,000 times, and
the interval is the 2.5th–97.5th percentile of the resampled means. It is deterministic (seeded) and shrinks
like 1/√(number of prompts).

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
    psnr_ci: list[float] | None = None  # [low, high], 95% bootstrap interval of the mean (dB)
    psnr_min: float | None = None  # dB, the worst pair
    ssim: float | None = None
    ssim_ci: list[float] | None = None
    ssim_min: float | None = None
    lpips: float | None = None
    clip_score: float | None = None
    adherence: float | None = None  # fraction of images right on every attribute their prompt names
    adherence_ci: list[float] | None = None
    adherence_detail: dict | None = None  # the scorer's summary; per attribute also "<attribute>_ci"
    identical: int = 0  # pairs with exactly the same pixels
    per_image: Any = None  # pandas DataFrame, one row per image
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "psnr",
                "psnr_ci",
                "psnr_min",
                "ssim",
                "ssim_ci",
                "ssim_min",
                "lpips",
                "clip_score",
                "adherence",
                "adherence_ci",
                "adherence_detail",
                "identical",
                "notes",
            )
        }


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
    return np.array(
        [
            np.inf if np.array_equal(r, i) else peak_signal_noise_ratio(r, i, data_range=1.0)
            for r, i in zip(ref, img, strict=True)
        ],
        dtype=np.float64,
    )


def ssim(reference, images) -> np.ndarray:
    """SSIM of each image against its reference (color channels averaged, 7×7 windows or smaller)."""
    from skimage.metrics import structural_similarity

    ref, img = _pair(reference, images)
    side = min(ref.shape[1], ref.shape[2])
    win = min(7, side if side % 2 else side - 1)  # odd, and no larger than the image
    return np.array(
        [
            structural_similarity(r, i, channel_axis=-1, data_range=1.0, win_size=win)
            for r, i in zip(ref, img, strict=True)
        ],
        dtype=np.float64,
    )


def _pair(reference, images) -> tuple[np.ndarray, np.ndarray]:
    ref, img = as_image_array(reference), as_image_array(images)
    if ref.shape != img.shape:
        raise ValueError(
            f"Reference images {ref.shape} and images {img.shape} differ in shape; compare images "
            "made with the same prompts, seeds, height and width."
        )
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
        raise MetricUnavailable(
            "LPIPS skipped: it needs torchvision and the 'lpips' package (pip install "
            "'lpips' 'torchvision') or torchmetrics"
        )
    if not weights.is_file():
        raise MetricUnavailable(
            f"LPIPS skipped: torchvision's AlexNet weights are not at {weights} (quantkit "
            "downloads nothing; copy the file there to enable LPIPS)"
        )
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
        raise MetricUnavailable(
            f"CLIP score skipped: no local copy of {name_or_path!r} ({type(err).__name__}); "
            "pass clip_model= a folder holding a CLIP model, or download it once with "
            f"huggingface-cli download {name_or_path}"
        ) from None
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


def bootstrap_ci(values, groups=None, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [low, high] of the mean of `values` (NaN / inf values are left out).

    Args:
        values: one number per image (e.g. its PSNR, or 1.0/0.0 for adherence).
        groups: one label per value (e.g. its prompt): whole groups are resampled together (cluster
            bootstrap), so several seeds of one prompt count as one draw. None = every value is its own group.
        level: coverage of the interval (0.95 → the 2.5th and 97.5th percentiles of the resampled means).
        n_boot: number of resamples.
        seed: seeds the resampling, so the interval is deterministic.

    Returns:
        [low, high]; [nan, nan] without finite values; [m, m] when there is one group.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.arange(len(values)) if groups is None else np.asarray(list(groups))
    if len(labels) != len(values):
        raise ValueError(f"Got {len(values)} values but {len(labels)} group labels; pass one label per value.")
    keep = np.isfinite(values)
    values, labels = values[keep], labels[keep]
    if not len(values):
        return [float("nan"), float("nan")]
    _, codes = np.unique(labels, return_inverse=True)
    sums = np.bincount(codes, weights=values)  # per group: sum and count, so a resample's mean is exact
    counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def _world(images, prompts: list[str]) -> str | None:
    """Which adherence scorer fits: "shapes" (v1, 32×32), "scenes" (v2, 64×64) or None."""
    from ..models import scene_scorer, shapes

    img = as_image_array(images)
    size = img.shape[2] if img.ndim == 4 else 0

    def all_parse(parse) -> bool:
        try:
            for p in prompts:
                parse(p)
        except ValueError:
            return False
        return True

    in_shapes = all_parse(shapes.parse_prompt)
    in_scenes = all(scene_scorer.is_scene_prompt(p) for p in prompts)
    if in_shapes and (size == shapes.IMAGE_SIZE or not in_scenes):  # "a red circle" is in both grammars
        return "shapes"
    return "scenes" if in_scenes else None


def adherence_table(images, prompts: list[str]):
    """Per-image adherence verdicts of the fitting scorer (a DataFrame with an `all_ok` column), or None."""
    world = _world(images, prompts)
    if world == "shapes":
        from ..models.shapes import score_images

        return score_images(list(as_image_array(images)), list(prompts))
    if world == "scenes":
        from ..models.scene_scorer import score_scenes

        return score_scenes(list(as_image_array(images)), list(prompts))
    return None


def adherence(images, prompts: list[str], *, seed: int = 0) -> dict | None:
    """The fitting scorer's summary (`shapes.adherence_summary` or `scene_scorer.scene_adherence`), with a
    bootstrap interval `<attribute>_ci` for every attribute rate; None when the prompts fit neither grammar."""
    table = adherence_table(images, prompts)
    if table is None:
        return None
    if "form" in table:
        from ..models.scene_scorer import scene_adherence

        summary = scene_adherence(table)
    else:
        from ..models.shapes import adherence_summary

        summary = adherence_summary(table)
    for column in [c for c in table.columns if c.endswith("_ok") and not c.startswith("obj")]:
        values = table[column]
        asked = values.notna()
        name = "all" if column == "all_ok" else column[: -len("_ok")]
        summary[f"{name}_ci"] = bootstrap_ci(values[asked].astype(float), table["prompt"][asked], seed=seed)
    return summary


# -- everything at once ----------------------------------------------------------------------------------


def image_quality(
    images,
    reference=None,
    prompts: list[str] | None = None,
    *,
    use_lpips: bool = True,
    clip: str | None = DEFAULT_CLIP_MODEL,
    device: str = "cpu",
    seed: int = 0,
) -> Quality:
    """Every quality metric that can run here, for `images` against `reference` (same prompts and seeds).

    Args:
        images: (N, H, W, 3) in [0, 1] (or a list of PIL images / arrays).
        reference: the baseline's images for the same prompts and seeds; None for the baseline itself.
        prompts: one per image (CLIP score and shapes adherence need them).
        use_lpips: compute LPIPS when its weights are on disk.
        clip: CLIP model folder or cached hub id for the CLIP score; None skips it.
        device: where LPIPS and CLIP run.
        seed: seeds the bootstrap intervals (same inputs and seed → same intervals).

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
        groups = list(prompts) if prompts is not None else None  # cluster by prompt: its seeds resample together
        q.psnr_ci = bootstrap_ci(p, groups, seed=seed) if len(finite) else None
        q.ssim_ci = bootstrap_ci(s, groups, seed=seed)
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
        summary = adherence(img, prompts, seed=seed)
        if summary is not None:
            q.adherence, q.adherence_ci, q.adherence_detail = summary["all"], summary["all_ci"], summary
    q.per_image = pd.DataFrame(table, index=pd.RangeIndex(len(img), name="image"))
    return q


__all__ = [
    "DEFAULT_CLIP_MODEL",
    "MetricUnavailable",
    "Quality",
    "adherence",
    "adherence_table",
    "as_image_array",
    "bootstrap_ci",
    "clip_model",
    "clip_scores",
    "image_quality",
    "lpips_distance",
    "lpips_model",
    "psnr",
    "ssim",
]
