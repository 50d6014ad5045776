"""Reading checkpoints without loading them: safetensors headers, and tensors one at a time.

The plan sizes components from the JSON header at the start of each `.safetensors` file (8 bytes
of length, then names, dtypes, shapes and offsets), so nothing is read beyond a few KB. The loader
streams tensors one by one from the same files (plain reads at the header's offsets), so a
component's full-precision weights are never all in memory together.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .dtypes import SAFETENSORS, code_info

WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "quantkit_weights")


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a component folder (one file, or the shards its index names).

    Raises:
        FileNotFoundError: when the folder has no safetensors weights (e.g. only `.bin` files).
    """
    folder = Path(folder)
    for stem in WEIGHT_NAMES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(
                    f"{index} is not a valid shard index ({type(err).__name__}: {err}); it needs a 'weight_map' "
                    "of tensor names to shard files. Save the component again."
                ) from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{index} names shards that are missing: {missing}. Copy them, or save again.")
            return [folder / s for s in shards]
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise FileNotFoundError(
        f"No safetensors weights in {folder} (found: {', '.join(found) or 'nothing'}). "
        "quantkit reads safetensors only: re-save the component with "
        "save_pretrained(..., safe_serialization=True)."
    )


def parse_header(path: str | Path) -> tuple[dict, int]:
    """(the raw JSON header of a safetensors file, byte offset where its tensor data starts).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable safetensors file (too short, implausible or non-JSON header), naming the file.
    """
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes). Save the component again.")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header length {length} is implausible).")
        text = f.read(length)
        if len(text) != length:
            raise ValueError(f"{path} is truncated inside its header. Save the component again.")
        try:
            header = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({err}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object.")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ValueError(f"{path} has a malformed header entry for tensor {name!r}. Save the component again.")
        code_info(info["dtype"], f"{path} (tensor {name!r})")
    return header, 8 + length


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype code, shape), from the file's header alone.

    Raises:
        ValueError: when the file is not a readable safetensors file.
    """
    header, _ = parse_header(path)
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items() if name != "__metadata__"}


def read_headers(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of a component folder: name -> (dtype code, shape)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in weight_files(folder):
        out.update(read_header(file))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class SafetensorsSource:
    """Tensors of a component folder, read one at a time with plain file reads.

    Not memory-mapped on purpose: pages of a mapped file count towards the process's resident memory
    while mapped, so mapping a 24 GB checkpoint would show a 24 GB peak even when every tensor is
    quantized and dropped the moment it arrives. A read copies just the one tensor.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._where: dict[str, tuple[Path, int, int, str, tuple[int, ...]]] = {}
        for file in weight_files(folder):
            header, start = parse_header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                self._where[name] = (file, start + begin, end - begin, info["dtype"], tuple(info["shape"]))

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str):
        import torch

        file, offset, size, code, shape = self._where[key]
        dtype = getattr(torch, SAFETENSORS[code][0])
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = torch.empty(size, dtype=torch.uint8)  # torch's allocator: aligned, for vectorized kernels
        with file.open("rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(buffer.numpy())) != size:
                raise ValueError(
                    f"{file} is truncated: tensor {key!r} ends past the end of the file. Save the component again."
                )
        return buffer.view(dtype).reshape(shape)

    def close(self) -> None:
        self._where.clear()
