"""The Pareto front of a comparison: the variants no other variant beats on both fewer bytes and better quality.

One function for the report, the plots and the exercises. The baseline compares identical with itself (PSNR
infinite, SSIM 1, LPIPS 0): it is the largest, exact point and belongs on the front.
"""

from __future__ import annotations

import math

# what the baseline scores against itself, per metric (its record leaves these empty)
IDENTICAL = {"psnr": math.inf, "psnr_min": math.inf, "ssim": 1.0, "ssim_min": 1.0, "lpips": 0.0}
LOWER_IS_BETTER = ("lpips",)


def pareto_front(bytes_: list[float], quality: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both fewer bytes and better quality (missing values skipped)."""
    points = [(b, q if higher_is_better else -q, i) for i, (b, q) in enumerate(zip(bytes_, quality, strict=True))
              if b is not None and q is not None and not (isinstance(q, float) and math.isnan(q))]
    points.sort(key=lambda p: (p[0], -p[1]))
    front, best = [], -math.inf
    for _, q, i in points:
        if q > best:
            front.append(i)
            best = q
    return front


def quality_values(frame, metric: str, reference: str | None = None) -> list[float | None]:
    """`metric` per row of a CompareResults.frame, the reference's empty value filled with IDENTICAL[metric]."""
    values = []
    for name, v in frame[metric].items() if metric in frame else ((n, None) for n in frame.index):
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        if missing and name == reference and metric in IDENTICAL:
            values.append(IDENTICAL[metric])
        else:
            values.append(None if missing else float(v))
    return values


def front_variants(frame, metric: str = "psnr", reference: str | None = None) -> list[str]:
    """Names of the finished variants of a CompareResults.frame on the bytes-vs-`metric` front, smallest first.

    Args:
        frame: CompareResults.frame (columns status, quantization, bytes and `metric`).
        metric: "psnr", "ssim", "lpips" (lower is better), "clip_score" or "adherence".
        reference: the baseline variant (default: the one whose quantization is "-").
    """
    ok = frame[frame["status"] == "ok"]
    if reference is None:
        reference = next((n for n, q in ok["quantization"].items() if q in ("-", None)), None)
    quality = quality_values(ok, metric, reference)
    sizes = [float(b) if b is not None and b == b else None for b in ok["bytes"]]
    front = pareto_front(sizes, quality, higher_is_better=metric not in LOWER_IS_BETTER)
    return [ok.index[i] for i in front]


__all__ = ["IDENTICAL", "front_variants", "pareto_front", "quality_values"]
