"""glibc's allocator on CPU: an explicit, scoped option (on by default for CPU loads).

Why: glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; after that, layer-sized
blocks live on the heap, and the process keeps their memory after they are freed. With the threshold fixed at
1 MiB, freed blocks go back to the OS at once.

What it buys now: the streaming loader reads mapped tensors and quantizes them in chunks into reused scratch
(`quantkit.load.stream`, `quantkit.backends.chunking`), so the *load* no longer needs it. Measured in one run of
`benchmarks/bench_load_memory.py` (282 M layout, 2 cores, medians of 2): peak of load + one image 0.35 GiB for
quanto int8 with and without it, bnb nf4 0.24 vs 0.25 GiB, load 1.31 vs 1.24 s (the first loader took 2-3x
longer with it). *Generation* on CPU still does: its activations are freed the same way. A tiny FLUX.1-dev
layout at 512², fp32, peaks 349-369 MiB above the start without it and ~294 MiB with it (`tests/test_peak.py`,
whose peak model assumes it).

The tuning is chosen per call (`load_pipeline(..., malloc_tuning=)`), else by the environment variable
QUANTKIT_MALLOC_TUNING ("1" or "0"), else `DEFAULT`. It is applied by CPU loads only, and it holds for the process
once applied (glibc cannot be told to return to its dynamic mode). `malloc_tuning=False` (or
QUANTKIT_MALLOC_TUNING=0) leaves glibc alone. Off glibc (macOS, musl, Windows) it does nothing. Independently, the
loader hands freed heap memory back once per component (`release_freed_memory`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

ENV = "QUANTKIT_MALLOC_TUNING"
DEFAULT = True  # on CPU: the generation peak is what the kit measures and teaches (see above)
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_TUNED = 1 << 20  # 1 MiB: every layer-sized block is its own mmap, returned to the OS when freed
_LIBC = None


def tuning_wanted(enabled: bool | None, device: str) -> bool:
    """Whether a load on `device` tunes the allocator: the argument, else QUANTKIT_MALLOC_TUNING, else DEFAULT.

    Raises:
        TypeError: `enabled` is not a bool or None.
        ValueError: the environment variable is neither "0" nor "1".
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"malloc_tuning must be True, False or None, got {enabled!r}.")
    if not str(device).startswith("cpu"):
        return False
    if enabled is not None:
        return enabled
    value = os.environ.get(ENV)
    if value is None or value == "":
        return DEFAULT
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: set it to '1' (tune glibc during CPU loads) or '0' (leave it alone).")
    return value == "1"


@contextmanager
def allocator_tuning(enabled: bool | None, device: str):
    """Tune glibc for the duration of a load (see the module docstring); a no-op when not wanted or off glibc."""
    libc = _libc() if tuning_wanted(enabled, device) else None
    if not libc:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _TUNED)  # stays for the process: see the module docstring
    try:
        yield True
    finally:
        libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc only; a no-op elsewhere); once per component."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018  (raises AttributeError off glibc)
            _LIBC.mallopt  # noqa: B018
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


__all__ = ["DEFAULT", "ENV", "allocator_tuning", "release_freed_memory", "tuning_wanted"]
