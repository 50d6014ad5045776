"""Where a measurement was taken: versions of the stack, the CPU or GPU, thread count.

Timings and memory are only comparable between runs on the same machine and versions, so every record of a
comparison carries this dictionary, and the report says when records disagree.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

DISTRIBUTIONS = (
    "quantkit",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "optimum-quanto",
    "torchao",
    "gguf",
    "scikit-image",
    "numpy",
)


def versions() -> dict[str, str | None]:
    """Installed version of each package of the stack (None = not installed); imports nothing."""
    out = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    """The CPU model, e.g. 'Intel(R) Xeon(R) Platinum 8488C' (platform.processor() where /proc is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict:
    """What can be said without importing torch: python, platform, versions, cpu, cpu_count."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def environment(device: str = "cpu") -> dict:
    """Versions, platform, CPU, torch threads and the name of `device` (imports torch).

    Returns:
        dict with python, platform, versions, cpu, cpu_count, torch_threads, device, device_name.
    """
    import torch

    device = str(device)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else cpu_name()
    return {**host(), "torch_threads": torch.get_num_threads(), "device": device, "device_name": name}


def comparable(a: dict | None, b: dict | None) -> bool:
    """Whether two environments give comparable timings: same device name, versions and thread count."""
    if not a or not b:
        return True
    keys = ("device_name", "versions", "torch_threads", "cpu")
    return all(a.get(k) == b.get(k) for k in keys)


__all__ = ["comparable", "cpu_name", "environment", "host", "versions"]
