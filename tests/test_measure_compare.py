"""The measurements a comparison is made of: peak memory, latency, image quality, and the plots of them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantkit.measure.latency import Latency, stopwatch, time_call
from quantkit.measure.memory import current_rss, reset_peak_rss, track_peak
from quantkit.measure.quality import as_image_array, image_quality, psnr, ssim
from quantkit.show.plots import (
    pareto_front,
    plot_image_grid,
    plot_layer_error,
    plot_memory,
    plot_quality_vs_bytes,
)

MB = 2**20


def test_track_peak_sees_a_short_lived_allocation():
    import mmap

    with track_peak("alloc") as meter:
        # 40 MB mapped and touched, then unmapped: goes back to the kernel at once (a freed numpy array may stay in
        # the allocator's heap, and then RSS does not drop: a CI run saw rss_end == rss_peak)
        block = mmap.mmap(-1, 40 * MB)
        block.write(b"\x01" * (40 * MB))
        block.close()
    r = meter.result
    assert r.phase == "alloc" and r.method in ("VmHWM", "sampling", "ru_maxrss")
    assert r.rss_added >= 30 * MB
    assert r.rss_end < r.rss_peak


@pytest.mark.skipif(not reset_peak_rss(), reason="the kernel does not let this process reset its RSS peak")
def test_a_later_phase_does_not_inherit_an_earlier_peak():
    with track_peak("big"):
        block = np.ones(60 * MB // 8)
        del block
    with track_peak("small") as meter:
        small = np.ones(MB // 8)
        del small
    assert meter.result.method == "VmHWM"
    assert meter.result.rss_added < 20 * MB  # the 60 MB of the first phase is not counted again


def test_current_rss_is_plausible():
    assert 10 * MB < current_rss() < 64 * 1024 * MB


def test_time_call_warms_up_and_takes_the_median(monkeypatch):
    """On a fake clock (no sleeping, nothing machine-dependent): the warm-up call is not a sample, the
    median is the middle timed call."""
    import quantkit.measure.latency as lat

    now = [0.0]
    monkeypatch.setattr(lat.time, "perf_counter", lambda: now[0])
    durations = iter([5.0, 0.3, 0.1, 0.2, 0.5, 0.4])  # the first (warm-up) call is slow
    calls = []

    def fn():
        calls.append(now[0])
        now[0] += next(durations)

    latency = time_call(fn, warmup=1, repeats=5)
    assert len(calls) == 6 and latency.warmup == 1 and latency.method == "perf_counter"
    assert latency.samples_s == pytest.approx([0.3, 0.1, 0.2, 0.5, 0.4])
    assert latency.median_s == pytest.approx(0.3) and latency.min_s == pytest.approx(0.1)
    assert latency.max_s == pytest.approx(0.5)
    assert "median 300.0 ms over 5 runs" in repr(latency) and latency.to_dict()["median_s"] == latency.median_s
    with pytest.raises(ValueError, match="warmup must be >= 0 and repeats >= 1, got warmup=0, repeats=0"):
        time_call(fn, warmup=0, repeats=0)
    assert math.isnan(Latency().median_s)
    with stopwatch("cpu") as sw:
        now[0] += 0.25
    assert sw.seconds == pytest.approx(0.25)


def test_time_calls_keeps_results_and_reports_progress():
    from quantkit.measure.latency import time_calls

    steps = []
    results, latency = time_calls(lambda i: i * i, 3, warmup=2, on_step=steps.append)
    assert results == [0, 1, 4] and len(latency.samples_s) == 3
    assert steps == ["warm-up 1/2", "warm-up 2/2", "call 1/3", "call 2/3", "call 3/3"]


def test_psnr_and_ssim_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.01, a.shape).astype(np.float32), 0, 1)
    mse = ((a.astype(np.float64) - b) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(1 / mse), rtol=1e-5)
    assert list(psnr(a, a)) == [math.inf, math.inf]
    np.testing.assert_allclose(ssim(a, a), [1.0, 1.0])
    assert (ssim(a, b) < 1).all() and (ssim(a, b) > 0.9).all()
    with pytest.raises(ValueError, match=r"Reference images \(2, 16, 16, 3\) and images \(1, 16, 16, 3\) differ"):
        psnr(a, b[:1])


def test_image_quality_counts_identical_images_and_says_what_it_skipped():
    from quantkit.models.shapes import render_shape

    images = as_image_array(
        [render_shape("red", "circle", seed=0), render_shape("blue", "square", "on the left", seed=1)]
    )
    noisy = np.clip(images + 0.02, 0, 1)
    q = image_quality(np.stack([images[0], noisy[1]]), images, ["a red circle", "a blue square on the left"])
    assert q.identical == 1 and math.isfinite(q.psnr) and q.psnr_min == q.psnr  # the mean leaves inf out
    assert q.adherence == 1.0 and q.adherence_detail["n"] == 2
    assert q.clip_score is None and any(n.startswith("CLIP score skipped") for n in q.notes)
    assert (q.lpips is None) == any(n.startswith("LPIPS skipped") for n in q.notes)
    assert list(q.per_image.columns[:3]) == ["prompt", "psnr", "ssim"]
    base = image_quality(images, None, ["a red circle", "a blue square on the left"], clip=None)
    assert base.psnr is None and base.notes[0].startswith("reference")
    other = image_quality(images, images, ["a photo of a cat", "a dog"], clip=None)
    assert other.adherence is None and other.psnr == math.inf  # not shapes prompts: no adherence


def test_pareto_front():
    #          small+bad  mid+good  big+best  mid+worse  big+good
    sizes = [1.0, 2.0, 4.0, 2.5, 4.5]
    quality = [20.0, 40.0, 50.0, 30.0, 45.0]
    assert pareto_front(sizes, quality) == [0, 1, 2]
    assert pareto_front(sizes, [0.01, 0.1, 0.05, 0.2, 0.08], higher_is_better=False) == [0]  # e.g. LPIPS
    assert pareto_front([1.0, None], [float("nan"), 3.0]) == []


def test_plots_return_figures():
    from matplotlib.figure import Figure

    frame = pd.DataFrame(
        {
            "status": ["ok", "ok", "error"],
            "bytes": [4e6, 2e6, None],
            "psnr": [None, 35.0, None],
            "adherence": [1.0, 0.5, None],
        },
        index=pd.Index(["baseline", "q", "broken"], name="variant"),
    )
    components = pd.DataFrame({"transformer": [3e6, 1e6], "vae": [1e6, 1e6]}, index=["baseline", "q"])
    layers = pd.DataFrame({"layer": ["a", "b", "c"], "sqnr_db": [12.0, 20.0, math.inf], "status": ["quantized"] * 3})
    figs = [
        plot_memory(components),
        plot_quality_vs_bytes(frame, "psnr", reference="baseline"),
        plot_quality_vs_bytes(frame, "adherence"),
        plot_image_grid({"baseline": np.zeros((2, 8, 8, 3))}, captions=["x", "y"]),
        plot_layer_error(layers),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    labels = [t.get_text() for t in figs[1].axes[0].texts]
    assert "1 reference (∞ dB)" in labels and "2" in labels
    key = [t.get_text() for t in figs[1].axes[0].get_legend().get_texts()][:2]
    assert key == ["baseline: 3.8 MiB, the reference", "q: 1.9 MiB, 35.0 dB"]
