"""Latency of a call: warm-up first, the device synchronized around every timing, the median of the repeats.

Three mistakes make timings of GPU code meaningless, and this module avoids each:
1. No warm-up: the first call pays for kernel selection, lazy initialisation and allocator growth (quanto
   even compiles a CPU kernel on its first int4 call). `warmup` calls run first and are not counted.
2. No synchronization: CUDA kernels run asynchronously, so a wall-clock timer stopped right after a call
   measures how fast work was *queued*. On CUDA the stream is synchronized before the start and the time is
   read from CUDA events recorded on the stream (`torch.cuda.Event(enable_timing=True)`).
3. A mean of few samples: one slow outlier (another process, a page fault) moves a mean; the median does not.

    with stopwatch("cuda") as sw:
        pipe(prompt)
    sw.seconds

    latency = time_call(lambda: pipe(prompt), device="cpu", warmup=1, repeats=5)
    latency.median_s
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Latency:
    """Timed repeats of one kind of call (seconds); warm-up calls are not among the samples."""

    samples_s: list[float] = field(default_factory=list)
    warmup: int = 0  # calls run before timing began
    method: str = "perf_counter"  # "perf_counter" (CPU wall clock) or "cuda events"

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s) if self.samples_s else float("nan")

    @property
    def min_s(self) -> float:
        return min(self.samples_s) if self.samples_s else float("nan")

    @property
    def max_s(self) -> float:
        return max(self.samples_s) if self.samples_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s}

    def __repr__(self) -> str:
        return (
            f"Latency(median {self.median_s * 1000:.1f} ms over {len(self.samples_s)} runs, "
            f"min {self.min_s * 1000:.1f} ms, max {self.max_s * 1000:.1f} ms, {self.warmup} warm-up, "
            f"{self.method})"
        )


class stopwatch:  # noqa: N801  (used like a function: `with stopwatch(device) as sw`)
    """Time the code inside `with` on `device`; `.seconds` afterwards.

    On CUDA the device is synchronized first (so earlier queued work is not counted), the time is taken from
    CUDA events around the block, and the end event is waited for (so all the block's work is counted).
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.seconds: float = float("nan")
        self.method = "cuda events" if self.device.startswith("cuda") else "perf_counter"

    def __enter__(self) -> stopwatch:
        if self.method == "cuda events":
            import torch

            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda events":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0  # elapsed_time is in ms
        else:
            self.seconds = time.perf_counter() - self._t0


def time_calls(
    fn: Callable[[int], Any],
    n: int,
    *,
    device: str = "cpu",
    warmup: int = 1,
    on_step: Callable[[str], Any] | None = None,
) -> tuple[list[Any], Latency]:
    """The one latency loop: `warmup` untimed calls `fn(0)`, then `fn(i)` timed for i in range(n).

    Args:
        fn: the call to time; it gets the index of the timed call (e.g. which prompt to draw) and its
            result is kept.
        n: timed calls (>= 1).
        device: where the work runs ("cpu" or "cuda[:N]"), for synchronization.
        warmup: untimed calls first (>= 0).
        on_step: called with "warm-up i/k" or "call i/n" before each call (progress messages).

    Returns:
        (the results of the timed calls, a Latency with one sample per timed call).
    """
    if warmup < 0 or n < 1:
        raise ValueError(f"warmup must be >= 0 and the number of timed calls >= 1, got warmup={warmup}, n={n}.")
    for i in range(warmup):
        if on_step is not None:
            on_step(f"warm-up {i + 1}/{warmup}")
        fn(0)
    results, samples = [], []
    method = "perf_counter"
    for i in range(n):
        if on_step is not None:
            on_step(f"call {i + 1}/{n}")
        with stopwatch(device) as sw:
            results.append(fn(i))
        samples.append(sw.seconds)
        method = sw.method
    return results, Latency(samples_s=samples, warmup=warmup, method=method)


def time_call(fn: Callable[[], Any], *, device: str = "cpu", warmup: int = 1, repeats: int = 3) -> Latency:
    """Run `fn` `warmup` times untimed, then `repeats` times timed (`time_calls` without results).

    Args:
        fn: the call to time (no arguments; wrap with a lambda).
        device: where the work runs ("cpu" or "cuda[:N]"), for synchronization.
        warmup: untimed calls first (>= 0).
        repeats: timed calls (>= 1).

    Returns:
        A Latency with one sample per timed call.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}.")
    _, latency = time_calls(lambda _i: fn(), repeats, device=device, warmup=warmup)
    return latency


__all__ = ["Latency", "stopwatch", "time_call", "time_calls"]
