"""The Pareto front of a comparison: the variants no other variant beats on both fewer bytes and better quality.

One function for the report, the plots and the exercises. The baseline compares identical with itself (PSNR
infinite, SSIM 1, LPIPS 0): it is the largest, exact point and belongs on the front.

A front point is only as good as its measurement: `overlapping(frame, metric)` names the front points whose
95% interval (`<metric>_ci`, from `quantkit.measure.quality`) overlaps that of a neighbour on the front — the
data cannot tell those two apart, so "B beats A" should not be read off the plot. `with_intervals(results)`
adds the interval columns to a CompareResults frame.
"""

from __future__ import annotations

import math

# what the baseline scores against itself, per metric (its record leaves these empty)
IDENTICAL = {"psnr": math.inf, "psnr_min": math.inf, "ssim": 1.0, "ssim_min": 1.0, "lpips": 0.0}
LOWER_IS_BETTER = ("lpips",)


def pareto_front(bytes_: list[float], quality: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both fewer bytes and better quality (missing values skipped)."""
    points = [
        (b, q if higher_is_better else -q, i)
        for i, (b, q) in enumerate(zip(bytes_, quality, strict=True))
        if b is not None and q is not None and not (isinstance(q, float) and math.isnan(q))
    ]
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


def with_intervals(results, metrics: tuple[str, ...] = ("psnr", "ssim", "adherence")):
    """`results.frame` plus a `<metric>_ci` column ([low, high] or None) per metric, read from the records."""
    frame = results.frame.copy()
    by_name = {r["variant"]: r for r in results.records}
    for metric in metrics:
        frame[f"{metric}_ci"] = [by_name.get(name, {}).get(f"{metric}_ci") for name in frame.index]
    return frame


def _interval(value) -> tuple[float, float] | None:
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    low, high = (float(v) for v in value)
    return None if math.isnan(low) or math.isnan(high) else (low, high)


def overlapping(frame, metric: str = "psnr", reference: str | None = None) -> set[str]:
    """Front points whose `metric` interval overlaps the interval of a neighbour on the front.

    Args:
        frame: a CompareResults frame with a `<metric>_ci` column (see `with_intervals`).
        metric: as in `front_variants`.
        reference: the baseline (default: the variant whose quantization is "-"). It has no interval (it is
            exact against itself), so it overlaps nothing; its neighbour is judged by its other neighbour.

    Returns:
        The names of the front variants that cannot be told apart from an adjacent front variant.

    Raises:
        ValueError: the frame has no `<metric>_ci` column.
    """
    column = f"{metric}_ci"
    if column not in frame:
        raise ValueError(
            f"The frame has no {column!r} column (columns: {list(frame.columns)}); build it with "
            "quantkit.comparison.pareto.with_intervals(results)."
        )
    front = front_variants(frame, metric, reference)
    intervals = [_interval(frame.loc[name, column]) for name in front]
    marked: set[str] = set()
    for i in range(len(front) - 1):
        a, b = intervals[i], intervals[i + 1]
        if a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]:
            marked.update((front[i], front[i + 1]))
    return marked


__all__ = ["IDENTICAL", "front_variants", "overlapping", "pareto_front", "quality_values", "with_intervals"]
