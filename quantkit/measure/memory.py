"""Peak memory of one phase of work (loading, generating): CPU resident set size and CUDA allocator peaks.

CPU. The kernel keeps a high-water mark of each process's resident set size (VmHWM in /proc/self/status);
writing "5" to /proc/self/clear_refs resets it to the current RSS (Linux >= 4.0). A phase's peak is therefore
VmHWM read at its end after a reset at its start — exact, nothing sampled. Where the reset is refused (other
kernels, some sandboxes) a thread samples the RSS every `interval_s` instead (it can miss shorter spikes), and
without /proc (macOS, Windows) the lifetime maximum from `getrusage` is all there is.

RSS does not come down when Python frees memory (allocators keep their pages), and a process that loaded one
pipeline has different pages resident than a fresh one. A peak measured after an earlier variant in the same
process therefore says little about this variant: `quantkit.compare` runs each variant in a fresh worker process
and records the worker's RSS at its start, so the difference `rss_peak - rss_start` is the variant's own.

CUDA. torch's caching allocator keeps its own peaks: `max_memory_allocated` (bytes in live tensors at the worst
moment) and `max_memory_reserved` (bytes the allocator held from the driver — what nvidia-smi shows, less the
CUDA context of a few hundred MB). Both are reset with `reset_peak_memory_stats` at the start of a phase.

    with track_peak("load", device="cpu") as meter:
        pipe = load_pipeline(...)
    meter.result            # MemoryPeak(phase='load', rss_start=..., rss_peak=..., ...)
"""

from __future__ import annotations

import sys
import threading
from dataclasses import asdict, dataclass

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class MemoryPeak:
    """Memory of one phase, in bytes (None where the device or platform has no such number)."""

    phase: str
    method: str  # how rss_peak was measured: "VmHWM" (exact), "sampling", "ru_maxrss" (lifetime maximum)
    rss_start: int | None = None  # resident set size when the phase began
    rss_peak: int | None = None  # highest resident set size during the phase
    rss_end: int | None = None
    cuda_allocated_start: int | None = None  # bytes in live CUDA tensors when the phase began
    cuda_allocated_peak: int | None = None  # torch.cuda.max_memory_allocated during the phase
    cuda_reserved_peak: int | None = None  # torch.cuda.max_memory_reserved during the phase
    cuda_allocated_end: int | None = None

    @property
    def rss_added(self) -> int | None:
        """How far the phase pushed RSS above where it started (bytes)."""
        if self.rss_peak is None or self.rss_start is None:
            return None
        return self.rss_peak - self.rss_start

    def to_dict(self) -> dict:
        return asdict(self)


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except OSError:
        return None
    return None


def current_rss() -> int | None:
    """This process's resident set size in bytes (None where it cannot be read)."""
    rss = _status_kb("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil  # optional: macOS, Windows

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def peak_rss() -> int | None:
    """The highest RSS of this process since it started or since the last `reset_peak_rss()` (bytes)."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024  # macOS: bytes, Linux: KiB
    except Exception:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


class track_peak:  # noqa: N801  (a context manager used like a function: `with track_peak(...)`)
    """Measure the peak memory of the code inside `with`; the numbers are in `.result` afterwards.

    Args:
        phase: a name for the phase ("load", "generate").
        device: "cpu" or "cuda[:N]"; on CUDA the allocator's peaks are measured too (RSS always).
        interval_s: sampling period where the kernel's high-water mark cannot be reset (seconds).
    """

    def __init__(self, phase: str = "", device: str = "cpu", interval_s: float = 0.002):
        self.phase = phase
        self.device = str(device)
        self.interval_s = interval_s
        self.result: MemoryPeak | None = None
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> track_peak:
        rss = current_rss()
        self._sampled = rss or 0
        if reset_peak_rss():
            method = "VmHWM"
        elif _status_kb("VmRSS") is not None or _has_psutil():
            method = "sampling"
            self._thread = threading.Thread(target=self._sample, daemon=True, name="quantkit-rss-sampler")
            self._thread.start()
        else:
            method = "ru_maxrss"
        self.result = MemoryPeak(phase=self.phase, method=method, rss_start=rss)
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.result.cuda_allocated_start = int(torch.cuda.memory_allocated(self.device))
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss()
            if rss is not None and rss > self._sampled:
                self._sampled = rss

    def __exit__(self, *exc) -> None:
        r = self.result
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize(self.device)
            r.cuda_allocated_peak = int(torch.cuda.max_memory_allocated(self.device))
            r.cuda_reserved_peak = int(torch.cuda.max_memory_reserved(self.device))
            r.cuda_allocated_end = int(torch.cuda.memory_allocated(self.device))
        r.rss_end = current_rss()
        if r.method == "sampling":
            self._stop.set()
            self._thread.join()
            r.rss_peak = max(self._sampled, r.rss_end or 0)
        else:
            r.rss_peak = peak_rss()


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401

        return True
    except ImportError:
        return False


__all__ = ["MemoryPeak", "current_rss", "peak_rss", "reset_peak_rss", "track_peak"]
