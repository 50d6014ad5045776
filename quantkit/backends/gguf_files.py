"""GGUF files: writing a component's weights as llama.cpp blocks, reading them back, and the cache.

quantkit writes a component's Linear weights into a GGUF file with the `gguf` package (numpy, one
tensor at a time, atomic rename), keeps it in a cache keyed by the source files, the format and the
layer set, and streams tensors back out of it with plain reads (`GGUFSource`). The adapter that plans
and loads with these files is `quantkit.backends.gguf`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import one_of

# quant type -> (weights per block, bytes per block), as gguf.GGML_QUANT_SIZES has them
BLOCKS = {
    "Q8_0": (32, 34),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "BF16": (1, 2),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
# what quantkit writes: the gguf package's own legacy types, and the K-quants (quantkit.backends.gguf_kquants)
WRITABLE = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "BF16")
# mixes in the community's style: a base K type, some layers raised or kept in float (quantkit.backends.gguf_mixes)
MIXES = ("Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_M", "Q3_K_S")
FORMAT_VERSION = 2  # bump when the files quantkit writes change (2: K-quants and mixes)


def cache_dir() -> Path:
    """Where written GGUF files are kept: $QUANTKIT_CACHE/gguf, default ~/.cache/quantkit/gguf."""
    return Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "gguf"


def pack(weight, quant_type: str):
    """A 2-D weight (out, in) packed into GGUF blocks of `quant_type`, as a numpy uint8 array: K-quants by
    quantkit's own writer (the gguf package cannot write them), the other types by the gguf package."""
    import gguf

    from .gguf_kquants import K_TYPES, quantize_k

    if quant_type in K_TYPES:
        return quantize_k(weight.float().cpu().numpy() if hasattr(weight, "cpu") else weight, quant_type)
    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    array = weight.float().cpu().numpy() if hasattr(weight, "cpu") else weight
    return gguf.quants.quantize(array, qtype)


def quantize_tensor(weight, quant_type: str):
    """Quantize a 2-D weight (out, in) into GGUF blocks; returns a packed `GGUFParameter` (uint8)."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    return GGUFParameter(torch.from_numpy(pack(weight, quant_type)), quant_type=qtype)


# -- files --------------------------------------------------------------------------------------


def cache_key(folder: Path, quant_type: str, quantize: list[str]) -> str:
    """A key that changes when the source weights, the format or the set of quantized layers change."""
    from ..checkpoint import weight_files

    h = hashlib.sha256(f"v{FORMAT_VERSION}|{quant_type}|{','.join(sorted(quantize))}".encode())
    for file in weight_files(folder):
        st = file.stat()
        h.update(f"|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def write_gguf(
    folder: str | Path,
    path: str | Path,
    quant_type: str,
    quantize: list[str],
    *,
    progress: bool = False,
    types: dict[str, str] | None = None,
) -> Path:
    """Write a component's weights to a GGUF file, quantizing the named Linear weights.

    Tensors are read one at a time from the component's safetensors. Weights named in `quantize`
    become `quant_type` blocks; every other tensor is stored as float32 (F32). The file is written
    to a temporary name and renamed at the end, so a crash never leaves a half-written file behind.

    Args:
        folder: the component folder (config.json + safetensors).
        path: where to write the `.gguf` file.
        quant_type: one of WRITABLE.
        quantize: tensor names (e.g. "transformer_blocks.0.attn.to_q.weight") to quantize.
        progress: show a tqdm bar.
        types: {tensor name: type} where a mix gives tensors their own types (default: `quant_type` for all).

    Returns:
        The path written.
    """
    import gguf
    import numpy as np
    from tqdm.auto import tqdm

    from ..checkpoint import SafetensorsSource

    if quant_type not in WRITABLE and quant_type not in MIXES:
        raise ValueError(f"quantkit writes GGUF as {one_of(WRITABLE + MIXES)}, not {quant_type!r}.")
    types = dict(types or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    source = SafetensorsSource(folder)
    wanted = set(quantize)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch="quantkit")
        writer.add_string("quantkit.source", str(Path(folder).resolve()))
        writer.add_string("quantkit.quant_type", quant_type)
        writer.add_uint32("quantkit.format_version", FORMAT_VERSION)
        for key in tqdm(
            source.keys(), desc=f"GGUF {quant_type} {Path(folder).name}", disable=not progress, leave=False
        ):
            tensor = source.get(key).float()
            if key in wanted:
                kind = types.get(key, quant_type)
                qtype = getattr(gguf.GGMLQuantizationType, kind)
                writer.add_tensor(key, pack(tensor, kind), raw_dtype=qtype)
            else:
                writer.add_tensor(key, np.ascontiguousarray(tensor.numpy()))
            del tensor
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        source.close()
        if tmp.exists():
            tmp.unlink()
    return path


def read_gguf(path: str | Path):
    """Open a GGUF file, turning any parse failure into a ValueError that says what to do."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} does not exist. Check the path, or leave gguf_file out to let quantkit write one."
        )
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises ValueError, struct.error, IndexError ... on bad files
        raise ValueError(
            f"{path} is not a valid GGUF file ({type(err).__name__}: {err}). It is corrupt or "
            "truncated: delete it and load again (quantkit rewrites its own files), or download it "
            "again."
        ) from None


def gguf_shapes(reader) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (logical shape in torch order, quant type name)."""
    return {t.name: (tuple(int(s) for s in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors}


def check_matches(path: Path, reader, expected: dict[str, tuple[int, ...]], component: str) -> None:
    """Raise ValueError when the file's tensors do not match the component's (names and shapes)."""
    found = gguf_shapes(reader)
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k][0])
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} tensors missing (first: {missing[0]!r})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} with other shapes (first: {k!r} is {found[k][0]}, expected {expected[k]})")
        raise ValueError(
            f"GGUF file {path} does not match component {component!r}: {'; '.join(detail)}. "
            "Pass the file made for this model, or leave gguf_file out to let quantkit write one."
        )


class GGUFSource:
    """Tensors of a GGUF file in the SafetensorsSource protocol: packed weights as GGUFParameter.

    The header is parsed by the `gguf` package; tensor data is read with plain file reads at the offsets it
    gives (not through its memory map, whose touched pages would count as resident memory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        reader = read_gguf(self.path)
        self._tensors = {
            t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type, tuple(t.data.shape)) for t in reader.tensors
        }
        del reader

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get(self, key: str):
        import torch
        from diffusers.quantizers.gguf.utils import GGUFParameter

        offset, size, kind, shape = self._tensors[key]
        if kind.name not in ("F32", "F16") and kind.name not in BLOCKS:
            raise ValueError(
                f"{self.path}: tensor {key!r} has type {kind.name}, which quantkit cannot load. "
                f"Supported: F32, F16, {', '.join(BLOCKS)}."
            )
        buffer = bytearray(size)
        with self.path.open("rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != size:
                raise ValueError(f"{self.path} is truncated: delete it and load again, or download it again.")
        dtype = {"F32": torch.float32, "F16": torch.float16}.get(kind.name, torch.uint8)
        data = torch.frombuffer(buffer, dtype=dtype).reshape(shape)
        return data if kind.name in ("F32", "F16") else GGUFParameter(data, quant_type=kind)

    def close(self) -> None:
        self._tensors.clear()


def component_file(folder: Path, kwargs: dict[str, Any], quantize: list[str], *, progress: bool = False,
                   types: dict[str, str] | None = None) -> Path:
    """The GGUF file for a component: the user's `gguf_file`, else quantkit's cached one (written if absent)."""
    from .gguf import GGUF

    r = GGUF.resolved(kwargs)
    if r["gguf_file"]:
        return Path(r["gguf_file"])
    path = cache_dir() / f"{folder.name}-{r['quant_type']}-{cache_key(folder, r['quant_type'], quantize)}.gguf"
    if not path.is_file():
        write_gguf(folder, path, r["quant_type"], quantize, progress=progress, types=types)
    return path


__all__ = ["MIXES", "GGUFSource", "pack", "cache_dir", "check_matches", "component_file", "gguf_shapes", "quantize_tensor", "read_gguf",
           "write_gguf"]
