"""Plots of a comparison, with matplotlib. Every function returns a `matplotlib.figure.Figure`.

Figures are built without pyplot (no global figure registry, no GUI backend needed), so they work the same in
a script, a test and a notebook (Jupyter displays a returned Figure). Save one with `fig.savefig("x.png")`.

- `plot_memory(components)`: true bytes per component, stacked, one bar per variant.
- `plot_quality_vs_bytes(frame)`: a quality metric against total bytes, the Pareto front marked; numbered points
  (labels placed so that none overlap) and a key; the reference's infinite PSNR on the top edge, not at a number.
- `plot_image_grid(images)`: the same prompts and seeds, one row per variant.
- `plot_layer_error(frame)`: per-layer SQNR of one component, worst layers first.
- `plot_peak_memory(frame)`: peak RSS (or CUDA) per variant in run order, with each worker's starting RSS —
  flat starting points show that no variant inherits memory from the one before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..comparison.pareto import pareto_front  # noqa: F401  (re-exported: the plots draw this front)
from ..units import MiB, human_bytes

_PALETTE = [
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_memory(components, *, title: str = "Weights in memory per component (true bytes)"):
    """Stacked bars: one bar per variant, one segment per component, in MiB (2**20 bytes).

    Args:
        components: DataFrame indexed by variant, one column per component, values in bytes (NaN = failed).
    """
    data = components.fillna(0) / MiB
    fig = _figure(max(5.0, 0.9 * len(data) + 2.5), 4.0)
    ax = fig.add_subplot()
    bottom = np.zeros(len(data))
    x = np.arange(len(data))
    for i, column in enumerate(data.columns):
        values = data[column].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, label=column, color=_PALETTE[i % len(_PALETTE)], width=0.7)
        bottom += values
    for xi, total in zip(x, bottom, strict=True):
        ax.annotate(
            f"{total:.2f}" if total < 10 else f"{total:.0f}",
            (xi, total),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_xticks(x, [str(v) for v in data.index], rotation=30, ha="right")
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    ax.margins(y=0.12)
    return fig


_QUALITY_LABELS = {
    "psnr": "PSNR vs. baseline (dB)",
    "ssim": "SSIM vs. baseline",
    "lpips": "LPIPS vs. baseline (lower = closer)",
    "clip_score": "CLIP score",
    "adherence": "prompt adherence (fraction right)",
}
# what the reference scores against itself (identical images)
_IDENTICAL = {"psnr": math.inf, "ssim": 1.0, "lpips": 0.0}


def _number(v) -> float | None:
    """float(v), or None for None / NaN / non-numbers."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _format_quality(metric: str, v: float) -> str:
    if math.isinf(v):
        return "identical (∞ dB)" if metric == "psnr" else "identical"
    if metric == "psnr":
        return f"{v:.1f} dB"
    return f"{v:.0%}" if metric == "adherence" else f"{v:.3f}"


def plot_quality_vs_bytes(frame, metric: str = "psnr", *, reference: str | None = None, title: str | None = None):
    """Scatter of `metric` against total bytes per variant, the Pareto front drawn as a step line.

    Every point carries a number, placed beside its own point where it overlaps no other number and no marker
    (with a thin leader line when it had to move away); the key to the right gives each number's variant, size and
    value. The reference's PSNR is infinite: it is not given a made-up number of dB but drawn as a triangle on the
    top edge of the plot ("reference (∞ dB)") and a dashed vertical line at its size. Variants with images identical
    to the reference (PSNR ∞) sit on the top edge the same way.

    Args:
        frame: CompareResults.frame (columns bytes, status and `metric`), indexed by variant.
        metric: "psnr", "ssim", "lpips" (lower is better), "clip_score" or "adherence".
        reference: the baseline variant (its own PSNR / SSIM / LPIPS are those of identical images).
        title: the axes title (default: "<metric> against memory").

    Returns:
        A Figure; its label texts have gid "label:<variant>" and its markers gid "point:<variant>" (for tests).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D

    higher = metric != "lpips"
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    values = ok[metric] if metric in ok else [None] * len(ok)
    points: list[tuple[str, float, float]] = []  # (variant, MiB, value); value may be inf (identical images)
    for name, b, v in zip(ok.index, ok["bytes"], values, strict=True):
        b, v = _number(b), _number(v)
        if name == reference and v is None:
            v = _IDENTICAL.get(metric)
        if b is not None and v is not None:
            points.append((str(name), b / MiB, v))

    label = _QUALITY_LABELS.get(metric, metric)
    fig = _figure(7.6, max(4.2, 0.21 * len(points) + 2.2))
    FigureCanvasAgg(fig)  # a renderer, to measure the labels while placing them
    ax = fig.add_subplot()
    ax.set_xlabel("total bytes of the weights (MiB)")
    ax.set_ylabel(label)
    ax.set_title(title or f"{label} against memory", fontsize=10)
    ax.grid(alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no variant has both bytes and a value", ha="center", transform=ax.transAxes)
        return fig

    # fixed limits: the top edge is where infinite values are drawn, and labels are placed in a frozen layout
    xs = [p[1] for p in points]
    finite = [p[2] for p in points if math.isfinite(p[2])]
    x_span = (max(xs) - min(xs)) or max(abs(max(xs)) * 0.2, 1.0)
    ax.set_xlim(min(xs) - 0.1 * x_span, max(xs) + 0.1 * x_span)
    if metric == "adherence":  # a fraction: the whole range, comparable from run to run
        ax.set_ylim(-0.05, 1.12)
    elif finite:
        lo, hi = min(finite), max(finite)
        y_span = (hi - lo) or max(abs(hi) * 0.2, 1.0)
        ax.set_ylim(lo - 0.12 * y_span, hi + 0.22 * y_span)
    else:
        ax.set_ylim(0.0, 1.0)
        ax.set_yticks([])
    top = ax.get_ylim()[1]
    ys = [p[2] if math.isfinite(p[2]) else top for p in points]

    front = set(pareto_front(xs, [p[2] for p in points], higher_is_better=higher))
    step = sorted((xs[i], ys[i]) for i in front)
    handles, texts = [], []
    for i, (name, mib, v) in enumerate(points):
        infinite = not math.isfinite(v)
        on_front = i in front
        color = _PALETTE[0] if on_front else "#999999"
        ax.scatter(
            mib,
            ys[i],
            s=70 if infinite else 60 if on_front else 35,
            marker="^" if infinite else "o",
            color=color,
            edgecolor="black" if on_front else "none",
            zorder=4,
            clip_on=not infinite,
            gid=f"point:{name}",
        )
        value = "the reference" if name == reference else _format_quality(metric, v)
        key = f"{name}: {human_bytes(mib * MiB)}, {value}"
        handles.append(
            Line2D([], [], linestyle="none", marker=f"${i + 1}$", color=color, markersize=7 if i < 9 else 10)
        )
        texts.append(key)
    ref_x = None
    if reference is not None and reference in [p[0] for p in points]:
        ref_x = xs[[p[0] for p in points].index(reference)]
        ax.axvline(ref_x, color="#555555", linestyle="--", linewidth=1, zorder=1, gid="reference-line")
        handles.append(Line2D([], [], color="#555555", linestyle="--", linewidth=1))
        texts.append(f"reference: {reference}" + (" (∞ dB against itself)" if metric == "psnr" else ""))
    if len(step) > 1:
        ax.step([p[0] for p in step], [p[1] for p in step], where="post", color=_PALETTE[0], alpha=0.6, zorder=2)
        handles.append(Line2D([], [], color=_PALETTE[0], alpha=0.6))
        texts.append("Pareto front")
    ax.legend(
        handles,
        texts,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        handlelength=1.6,
        borderaxespad=0.0,
    )

    fig.draw_without_rendering()  # run the constrained layout once, then freeze it: the labels are placed in it
    fig.set_layout_engine("none")
    numbers = []
    for i, (name, _, v) in enumerate(points):
        text = str(i + 1)
        if not math.isfinite(v):
            text += " reference (∞ dB)" if name == reference else " (∞ dB)"
        numbers.append(text)
    _place_labels(ax, list(zip(xs, ys, strict=True)), numbers, [f"label:{p[0]}" for p in points], vline=ref_x)
    return fig


_LEADER_PT = 16  # a label further than this (points) from its point is joined to it by a leader line


def _place_labels(
    ax, anchors: list[tuple[float, float]], texts: list[str], gids: list[str], vline: float | None = None
) -> None:
    """Put each text beside its anchor (data coordinates): no two texts overlap, no text covers a marker (or the
    vertical line at x = `vline`), and a text is either nearer its own anchor than any other anchor, or (where the
    points are too crowded for that) joined to its anchor by a leader line that crosses no other text.

    Greedy: the most crowded anchors choose first, among offsets on rings of growing radius around the anchor.
    Positions are offsets in points from the anchor and leader lines are in axes coordinates, so both survive a
    savefig at another dpi. Leader lines get gid "leader:" + the text's gid without its "label:" prefix.
    """
    import matplotlib.patheffects as pe
    from matplotlib.lines import Line2D
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    display = ax.transData.transform(np.asarray(anchors, dtype=float))
    frame = ax.get_window_extent(renderer)
    marker = 6.0 * px_per_pt  # half the side of the square a marker occupies, with a margin
    obstacles = [Bbox.from_extents(x - marker, y - marker, x + marker, y + marker) for x, y in display]
    if vline is not None:
        x = ax.transData.transform((vline, 0.0))[0]
        obstacles.append(Bbox.from_extents(x - px_per_pt, frame.y0, x + px_per_pt, frame.y1))
    crowd = [sum(np.hypot(*(d - e)) < 40 * px_per_pt for e in display) for d in display]
    order = sorted(range(len(display)), key=lambda i: (-crowd[i], i))
    angles = [45, 0, 90, 135, 180, 315, 270, 225, 22.5, 67.5, 112.5, 157.5, 202.5, 247.5, 292.5, 337.5]
    radii = [8, 11, 15, 20, 27, 36, 48, 64, 85, 110]
    placed: list = []  # padded boxes of the texts placed so far
    leaders: list[tuple[np.ndarray, np.ndarray]] = []  # (start, end) in display coordinates

    def crosses(a: np.ndarray, b: np.ndarray, box) -> bool:
        return any(box.contains(*(a + t * (b - a))) for t in np.linspace(0.0, 1.0, 24))

    for i in order:
        ann = ax.annotate(
            texts[i],
            anchors[i],
            xytext=(0, 0),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=8,
            zorder=5,
            annotation_clip=False,
            gid=gids[i],
            path_effects=[pe.withStroke(linewidth=2.5, foreground="white")],
        )
        best, best_cost = (radii[0], 0.0), math.inf
        for r in radii:
            for a in angles:
                offset = (r * math.cos(math.radians(a)), r * math.sin(math.radians(a)))
                ann.xyann = offset
                box = ann.get_window_extent(renderer).padded(1.5 * px_per_pt)
                centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
                cost = 100 * sum(box.overlaps(b) for b in placed) + 30 * sum(box.overlaps(o) for o in obstacles)
                cost += 10 * (not frame.contains(box.x0, box.y0) or not frame.contains(box.x1, box.y1))
                cost += 10 * sum(crosses(a_, b_, box) for a_, b_ in leaders)
                if r > _LEADER_PT:
                    edge = np.clip(display[i], [box.x0, box.y0], [box.x1, box.y1])
                    cost += 20 * sum(crosses(display[i], edge, b) for b in placed)
                else:  # no leader line: the text must be read as belonging to the nearest point
                    own = np.hypot(*(centre - display[i]))
                    cost += 10 * sum(own >= 0.9 * np.hypot(*(centre - d)) for j, d in enumerate(display) if j != i)
                if cost < best_cost:
                    best, best_cost = offset, cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        ann.xyann = best
        box = ann.get_window_extent(renderer)
        placed.append(box.padded(1.5 * px_per_pt))
        if math.hypot(*best) > _LEADER_PT:
            edge = np.clip(display[i], [box.x0, box.y0], [box.x1, box.y1])
            leaders.append((display[i], edge))
            start, end = ax.transAxes.inverted().transform(np.array([display[i], edge]))
            line = Line2D(
                [start[0], end[0]],
                [start[1], end[1]],
                transform=ax.transAxes,
                color="#777777",
                linewidth=0.6,
                zorder=3,
                clip_on=False,
                gid="leader:" + gids[i].removeprefix("label:"),
            )
            ax.add_line(line)


def plot_image_grid(
    images: dict[str, Any],
    *,
    captions: list[str] | None = None,
    max_images: int = 8,
    cell: float = 1.1,
    title: str | None = None,
):
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
        return frame[name].astype(float).to_numpy() / MiB if name in frame else np.full(len(frame), np.nan)

    if cuda:
        fig = _figure(width, 4.0)
        ax = fig.add_subplot()
        ax.bar(x - 0.2, col("peak_load_cuda_allocated"), width=0.4, label="allocated peak, load", color=_PALETTE[0])
        ax.bar(
            x + 0.2, col("peak_gen_cuda_allocated"), width=0.4, label="allocated peak, generation", color=_PALETTE[1]
        )
        ax.plot(x, col("peak_gen_cuda_reserved"), "k.--", label="reserved peak, generation")
        ax.set_ylabel("MiB")
        ax.set_title(title or "CUDA memory per variant")
        ax.legend(fontsize=8)
    else:
        fig = _figure(width, 5.0)
        top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
        start = col("rss_start")
        top.plot(x, start, "k.--")
        top.set_ylim(0, np.nanmax(start) * 1.15 if np.isfinite(start).any() else 1)
        top.set_ylabel("MiB")
        top.set_title(
            title or "RSS of each variant's fresh worker: at its start (above), added by load and generation (below)",
            fontsize=9,
        )
        top.grid(axis="y", alpha=0.3)
        ax.bar(x - 0.2, col("peak_load_rss") - start, width=0.4, label="load: peak − start", color=_PALETTE[0])
        ax.bar(x + 0.2, col("peak_gen_rss") - start, width=0.4, label="generation: peak − start", color=_PALETTE[1])
        ax.set_ylabel("MiB above the start")
        ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = [
    "pareto_front",
    "plot_image_grid",
    "plot_layer_error",
    "plot_memory",
    "plot_peak_memory",
    "plot_quality_vs_bytes",
]
