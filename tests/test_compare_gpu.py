"""CUDA measurement paths: allocator peaks per phase, CUDA-event timing, and a comparison on the GPU.

Marked `gpu`: skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from quantkit.measure.latency import stopwatch, time_call
from quantkit.measure.memory import track_peak

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MB = 2**20


def test_cuda_peaks_per_phase():
    torch.cuda.synchronize()
    with track_peak("big", device="cuda") as big:
        x = torch.empty(256 * MB, dtype=torch.uint8, device="cuda")  # 256 MB
        del x
    r = big.result
    assert r.cuda_allocated_peak - r.cuda_allocated_start >= 256 * MB
    assert r.cuda_reserved_peak >= r.cuda_allocated_peak
    assert r.cuda_allocated_end == r.cuda_allocated_start  # freed again
    assert r.rss_peak is not None  # RSS is measured on CUDA too
    with track_peak("small", device="cuda") as small:
        y = torch.empty(1 * MB, dtype=torch.uint8, device="cuda")
        del y
    # the allocator's peak was reset at the start of the phase: the 256 MB above is not counted again
    assert small.result.cuda_allocated_peak - small.result.cuda_allocated_start < 8 * MB


def test_cuda_event_timing_waits_for_the_work():
    import time

    a = torch.randn(4096, 4096, device="cuda")

    def work():
        x = a
        for _ in range(20):
            x = x @ a
            x = x / x.norm()
        return x

    work()  # warm-up: cuBLAS' handle, and every kernel loaded once
    torch.cuda.synchronize()
    t = time.perf_counter()
    work()
    queued = time.perf_counter() - t  # the CPU only queues the kernels: this is far less than the work
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    with stopwatch("cuda") as sw:
        work()
    assert sw.method == "cuda events"
    assert sw.seconds == pytest.approx(wall, rel=0.5)  # the whole queued work, not just the queueing
    assert sw.seconds > 2 * queued
    latency = time_call(lambda: a @ a, device="cuda", warmup=2, repeats=5)
    assert latency.method == "cuda events" and len(latency.samples_s) == 5 and latency.median_s > 0


def test_compare_on_cuda_records_allocator_peaks(flux_dir, tmp_path):
    from quantkit import PipelineQuantizationConfig
    from quantkit.comparison import compare

    int8 = PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    variants = {"baseline": None, "quanto-int8": int8}
    results = compare(
        flux_dir, variants, prompts=["a red circle"], seeds=[0], out=tmp_path, device="cuda", progress=False
    )
    frame = results.frame
    assert (frame["status"] == "ok").all(), results.failed
    for col in (
        "peak_load_cuda_allocated",
        "peak_load_cuda_reserved",
        "peak_gen_cuda_allocated",
        "peak_gen_cuda_reserved",
    ):
        assert (frame[col] > 0).all(), col
    assert (frame["peak_gen_cuda_reserved"] >= frame["peak_gen_cuda_allocated"]).all()
    record = results.records[0]
    assert record["latency_method"] == "cuda events"
    assert record["environment"]["device_name"] == torch.cuda.get_device_name(0)
    assert frame.loc["quanto-int8", "psnr"] > 30
    assert (tmp_path / "peak_memory.png").is_file()
