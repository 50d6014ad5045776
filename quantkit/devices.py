"""Device names: parsed and checked once, for the plan, the loader and compare.

A plan may be made for a device this machine does not have (planning for a T4 on a laptop is the
point of planning), so `parse_device` checks the spelling only. Loading or running needs the device
itself: `check_device` asks torch whether it is there.
"""

from __future__ import annotations

import re

_PATTERN = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def parse_device(device) -> str:
    """The canonical name of a device given as a string or torch.device ("cuda:0", "cpu", "mps").

    Raises:
        TypeError: not a string or torch.device.
        ValueError: a malformed name, naming the accepted forms.
    """
    if type(device).__name__ == "device":  # torch.device, without importing torch
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__} {device!r}.")
    text = device.strip().lower()
    match = _PATTERN.match(text)
    if not match or (match.group(1) == "cpu" and match.group(2) not in (None, "0")):
        raise ValueError(
            f"device={device!r} is not a device name: use 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'."
        )
    return "cpu" if match.group(1) == "cpu" else text


def default_device() -> str:
    """'cuda' when this torch sees a CUDA GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device) -> str:
    """`parse_device`, then check that this machine has the device.

    Raises:
        RuntimeError: CUDA or MPS absent, or a CUDA index beyond the GPUs present (naming what is there).
    """
    name = parse_device(device)
    if name == "cpu":
        return name
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA GPU"
            raise RuntimeError(
                f"device={device!r} needs a CUDA GPU, but this machine has {build} (torch {torch.__version__}). "
                "Use device='cpu', or install the CUDA build of torch on a GPU machine."
            )
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise RuntimeError(
                f"device={device!r}: this machine has {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1}); "
                "pick one of those."
            )
        return name
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device={device!r} needs Apple's MPS, which this machine does not have; use device='cpu'.")
    return name


__all__ = ["check_device", "default_device", "parse_device"]
