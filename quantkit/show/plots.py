"""Plots of a comparison, with matplotlib. Every function returns a `matplotlib.figure.Figure`.

Figures are built without pyplot (no global figure registry, no GUI backend needed), so they work the same in
a script, a test and a notebook (Jupyter displays a returned Figure). Save one with `fig.savefig("x.png")`.

- `plot_memory(components)`: true bytes per component, stacked, one bar per variant.
- `plot_quality_vs_bytes(frame)`: a quality metric against total bytes, the Pareto front marked.
- `plot_image_grid(images)`: the same prompts and seeds, one row per variant.
- `plot_layer_error(frame)`: per-layer SQNR of one component, worst layers first.
- `plot_peak_memory(frame)`: peak RSS (or CUDA) per variant in run order, with each worker's starting RSS —
  flat starting points show that no variant inherits memory from the one before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MB = 1024 * 1024
_PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
            "#64B5CD"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_memory(components, *, title: str = "Weights in memory per component (true bytes)"):
    """Stacked bars: one bar per variant, one segment per component, in MB.

    Args:
        components: DataFrame indexed by variant, one column per component, values in bytes (NaN = failed).
    """
    data = components.fillna(0) / MB
    fig = _figure(max(5.0, 0.9 * len(data) + 2.5), 4.0)
    ax = fig.add_subplot()
    bottom = np.zeros(len(data))
    x = np.arange(len(data))
    for i, column in enumerate(data.columns):
        values = data[column].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, label=column, color=_PALETTE[i % len(_PALETTE)], width=0.7)
        bottom += values
    for xi, total in zip(x, bottom, strict=True):
        ax.annotate(f"{total:.2f}" if total < 10 else f"{total:.0f}", (xi, total), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [str(v) for v in data.index], rotation=30, ha="right")
    ax.set_ylabel("MB")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    ax.margins(y=0.12)
    return fig


def pareto_front(bytes_: list[float], quality: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both fewer bytes and better quality."""
    points = [(b, q if higher_is_better else -q, i) for i, (b, q) in enumerate(zip(bytes_, quality, strict=True))
              if b is not None and q is not None and not (isinstance(q, float) and math.isnan(q))]
    points.sort(key=lambda p: (p[0], -p[1]))
    front, best = [], -math.inf
    for _, q, i in points:
        if q > best:
            front.append(i)
            best = q
    return front


def plot_quality_vs_bytes(frame, metric: str = "psnr", *, reference: str | None = None, title: str | None = None):
    """Scatter of `metric` against total bytes per variant; the Pareto front is drawn as a line.

    Args:
        frame: CompareResults.frame (columns bytes, status and `metric`), indexed by variant.
        metric: "psnr", "ssim", "lpips" (lower is better), "clip_score" or "adherence".
        reference: the baseline variant; its PSNR is infinite, so it is drawn at the top edge, labelled.
    """
    higher = metric != "lpips"
    ok = frame[(frame["status"] == "ok")] if "status" in frame else frame
    names = list(ok.index)
    x = [float(v) / MB if v == v and v is not None else None for v in ok["bytes"]]
    raw = [float(v) if v is not None and v == v else None for v in ok[metric]] if metric in ok else [None] * len(ok)
    if reference in names and raw[names.index(reference)] is None and metric in ("psnr", "ssim", "lpips"):
        raw[names.index(reference)] = {"psnr": math.inf, "ssim": 1.0, "lpips": 0.0}[metric]  # itself: identical
    finite = [v for v in raw if v is not None and math.isfinite(v)]
    top = (max(finite) if finite else 1.0) * 1.05 + (1.0 if metric == "psnr" else 0.0)
    y = [top if v is not None and math.isinf(v) else v for v in raw]  # identical images (PSNR inf) at the top
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    front = set(pareto_front(x, y, higher_is_better=higher))
    span_x = (max(v for v in x if v is not None) - min(v for v in x if v is not None)) if any(x) else 1.0
    span_y = (max(v for v in y if v is not None) - min(v for v in y if v is not None)) if any(
        v is not None for v in y) else 1.0
    placed: list[tuple[float, float]] = []
    for i, name in enumerate(names):
        if x[i] is None or y[i] is None:
            continue
        on_front = i in front
        ax.scatter(x[i], y[i], s=60 if on_front else 35, color=_PALETTE[0] if on_front else "#999999",
                   edgecolor="black" if on_front else "none", zorder=3)
        label = name + (" (reference)" if name == reference else " (identical)" if math.isinf(raw[i]) else "")
        # labels of points close together are stacked instead of drawn over each other
        near = sum(1 for px, py in placed if abs(px - x[i]) < 0.08 * (span_x or 1) and abs(py - y[i]) < 0.08 * (
            span_y or 1))
        placed.append((x[i], y[i]))
        ax.annotate(label, (x[i], y[i]), fontsize=8, xytext=(4, 4 - 10 * near), textcoords="offset points")
    pts = sorted((x[i], y[i]) for i in front)
    if len(pts) > 1:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color=_PALETTE[0], alpha=0.6,
                label="Pareto front")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("total bytes (MB)")
    labels = {"psnr": "PSNR vs. baseline (dB)", "ssim": "SSIM vs. baseline",
              "lpips": "LPIPS vs. baseline (lower = closer)", "clip_score": "CLIP score",
              "adherence": "prompt adherence (fraction right)"}
    ax.set_ylabel(labels.get(metric, metric))
    ax.set_title(title or f"{labels.get(metric, metric)} against memory")
    ax.grid(alpha=0.3)
    return fig


def plot_image_grid(images: dict[str, Any], *, captions: list[str] | None = None, max_images: int = 8,
                    cell: float = 1.1, title: str | None = None):
    """One row per variant, one column per (prompt, seed); rows labelled by variant.

    Args:
        images: {variant: array (N, H, W, 3) in [0, 1]}; variants without images are left out.
        captions: one per column (e.g. "a red circle / seed 0").
        max_images: at most this many columns.
    """
    rows = [(name, np.asarray(a)) for name, a in images.items() if a is not None and len(a)]
    n_cols = min(max_images, max((len(a) for _, a in rows), default=1))
    fig = _figure(cell * n_cols + 1.6, cell * max(len(rows), 1) + (0.6 if captions else 0.3))
    if not rows:
        fig.text(0.5, 0.5, "no images", ha="center")
        return fig
    grid = fig.add_gridspec(len(rows), n_cols)
    for r, (name, arr) in enumerate(rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                ax.imshow(np.clip(arr[c], 0, 1), interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and captions and c < len(captions):
                ax.set_title(captions[c], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_layer_error(frame, *, top: int = 30, title: str | None = None):
    """Horizontal bars of SQNR (dB) per Linear layer, lowest first (the layers to keep in full precision).

    Args:
        frame: the ranked table of `quantkit.measure.sensitivity` (columns layer, sqnr_db, status).
        top: show at most this many layers (the worst ones).
    """
    data = frame.dropna(subset=["sqnr_db"]).head(top)
    fig = _figure(7.0, max(2.0, 0.22 * len(data) + 1.2))
    ax = fig.add_subplot()
    if data.empty:
        ax.text(0.5, 0.5, "no quantized layer was measured", ha="center", transform=ax.transAxes)
        return fig
    values = data["sqnr_db"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    cap = (finite.max() if len(finite) else 100.0) + 5
    values = np.where(np.isfinite(values), values, cap)
    y = np.arange(len(data))[::-1]
    ax.barh(y, values, color=[_PALETTE[3] if i < 3 else _PALETTE[0] for i in range(len(data))])
    ax.set_yticks(y, list(data["layer"]), fontsize=7)
    ax.set_xlabel("SQNR, layer quantized alone (dB; lower = more error)")
    ax.set_xlim(min(0.0, values.min() - 2), values.max() * 1.05 + 1)
    ax.set_title(title or "Per-layer quantization error", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_peak_memory(frame, *, device: str = "cpu", title: str | None = None):
    """Memory per variant in run order: what each worker started with, and what loading and generating added.

    On CPU (two panels): above, each worker's RSS when it started — flat, because every variant runs in a fresh
    worker forked from the same server, so none inherits memory from the one before; below, how far the peak RSS
    rose above that start while loading and while generating. On CUDA: torch's peak allocated bytes during load
    and generation, and the reserved peak.
    """
    cuda = str(device).startswith("cuda") and "peak_gen_cuda_allocated" in frame
    x = np.arange(len(frame))
    names = [str(v) for v in frame.index]
    width = max(5.0, 0.9 * len(frame) + 2.5)

    def col(name):
        return frame[name].astype(float).to_numpy() / MB if name in frame else np.full(len(frame), np.nan)

    if cuda:
        fig = _figure(width, 4.0)
        ax = fig.add_subplot()
        ax.bar(x - 0.2, col("peak_load_cuda_allocated"), width=0.4, label="allocated peak, load", color=_PALETTE[0])
        ax.bar(x + 0.2, col("peak_gen_cuda_allocated"), width=0.4, label="allocated peak, generation",
               color=_PALETTE[1])
        ax.plot(x, col("peak_gen_cuda_reserved"), "k.--", label="reserved peak, generation")
        ax.set_ylabel("MB")
        ax.set_title(title or "CUDA memory per variant")
        ax.legend(fontsize=8)
    else:
        fig = _figure(width, 5.0)
        top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
        start = col("rss_start")
        top.plot(x, start, "k.--")
        top.set_ylim(0, np.nanmax(start) * 1.15 if np.isfinite(start).any() else 1)
        top.set_ylabel("MB")
        top.set_title(title or "RSS of each variant's fresh worker: at its start (above), added by load and "
                      "generation (below)", fontsize=9)
        top.grid(axis="y", alpha=0.3)
        ax.bar(x - 0.2, col("peak_load_rss") - start, width=0.4, label="load: peak − start", color=_PALETTE[0])
        ax.bar(x + 0.2, col("peak_gen_rss") - start, width=0.4, label="generation: peak − start",
               color=_PALETTE[1])
        ax.set_ylabel("MB above the start")
        ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = ["pareto_front", "plot_image_grid", "plot_layer_error", "plot_memory", "plot_peak_memory",
           "plot_quality_vs_bytes"]
