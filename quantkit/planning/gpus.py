"""Known GPUs and the memory a pipeline may use on each; memory sizes written the way people write them.

`resolve_gpu("T4")` gives the card's total and usable memory (after the CUDA context) and its compute
capability; `parse_memory("15GiB")` turns a size into bytes. The numbers and their sources are beside
each entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import did_you_mean, one_of

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    """A card: its memory as torch sees it, the CUDA context, and where the numbers come from."""

    name: str
    total_gib: float  # torch.cuda.get_device_properties(i).total_memory / 2**30
    context_gib: float  # the CUDA context torch creates
    capability: float | None  # CUDA compute capability (7.5 = Turing ...); None when the entry covers several
    source: str

    @property
    def usable_gib(self) -> float:
        return round(self.total_gib - self.context_gib, 2)

    @property
    def usable_bytes(self) -> int:
        return int(self.usable_gib * GIB)


_SMI = "nvidia-smi total (MiB) as commonly reported, less the driver's reservation"
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("T4", 14.75, 0.3, 7.5, "16 GB card: nvidia-smi 15360 MiB; torch 14.75 GiB (Colab); FACTS.md '~14.7'"),
        GPU("16GB", 15.6, 0.35, None, "a generic 16 GB card (RTX 4060 Ti / 4080, V100 16 GB): ~15.6 GiB in torch"),
        GPU("L4", 22.05, 0.4, 8.9, f"24 GB card: {_SMI} (23034 MiB)"),
        GPU("A10G", 22.05, 0.4, 8.6, f"24 GB card (AWS g5): {_SMI} (23028 MiB)"),
        GPU("RTX 3090", 23.7, 0.4, 8.6, "24 GB consumer card: 24576 MiB, ~0.3 GiB less with a desktop on it"),
        GPU("RTX 4090", 23.6, 0.4, 8.9, "24 GB consumer card: 24564 MiB, ~0.3 GiB less with a desktop on it"),
        GPU("A100 40GB", 39.4, 0.5, 8.0, f"40 GB card: {_SMI} (40960 MiB)"),
        GPU("A100 80GB", 79.15, 0.5, 8.0, f"80 GB card: {_SMI} (81920 MiB)"),
        GPU("H100", 79.1, 0.5, 9.0, f"80 GB card (SXM/PCIe): {_SMI} (81559 MiB); the blog's figures are from one"),
    )
}

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b)\s*$", re.IGNORECASE)


def parse_memory(value: str | int | float) -> int:
    """Bytes from "15GiB", "16GB", "15.5 GiB", "14000MiB" or a number of bytes.

    Raises:
        ValueError: anything else (e.g. "16G", which could be GB or GiB), naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"memory={value!r} is not a size: use a string such as '15GiB' or '16GB', or bytes.")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"memory={value!r} must be positive (bytes), or a string such as '15GiB'.")
        return int(value)
    m = _MEMORY.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"memory={value!r} is not a size quantkit reads. Use a number and a unit: '15GiB' or '14000MiB' "
            "(powers of 1024, as GPU memory is reported) or '16GB' / '500MB' (powers of 1000), or bytes as an int."
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _norm(name: str) -> str:
    text = str(name).lower().replace("nvidia", "").replace("geforce", "").replace("tesla", "")
    return re.sub(r"[\s_\-]+", "", text)


def resolve_gpu(name: str) -> GPU:
    """The GPU entry for a name ("T4", "a100-80gb", "RTX 4090", "4090" ...), matched loosely.

    Raises:
        ValueError: an unknown name, listing the known GPUs and the nearest.
    """
    wanted = _norm(name)
    for key, gpu in GPUS.items():
        if _norm(key) == wanted:
            return gpu
    matches = [key for key in GPUS if wanted and wanted in _norm(key)]
    if len(matches) == 1:
        return GPUS[matches[0]]
    hint = did_you_mean(name, GPUS) or (f" Did you mean one of {one_of(matches)}?" if matches else "")
    raise ValueError(
        f"Unknown gpu {name!r}.{hint} Known GPUs: {one_of(GPUS)}. For another card pass its usable memory "
        "instead, e.g. memory='14GiB'."
    )


__all__ = ["GIB", "GPU", "GPUS", "parse_memory", "resolve_gpu"]
