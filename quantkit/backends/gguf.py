"""GGUF adapter: llama.cpp's block formats, written by quantkit and loaded through diffusers.

diffusers loads GGUF only through `Model.from_single_file(...)`, never from a pipeline-level
config, and nothing upstream writes GGUF files from a diffusers checkpoint. quantkit does both:
it quantizes a component's Linear weights into a GGUF file with the `gguf` package (numpy, one
tensor at a time), caches the file (so the second load does not quantize again), then loads it.
Files in the component's own tensor names (quantkit's, or a published file in diffusers names) are
read by quantkit's streaming loader, one tensor at a time into the same `GGUFLinear` layers
diffusers builds (a test checks both give the same image); published files in the original
model's names (e.g. city96's FLUX GGUFs) go through diffusers' `from_single_file`, which converts
the names. Weights stay packed in memory
(`GGUFParameter`) and are dequantized block by block at every matmul.

Block formats, 32 weights a block: Q8_0 = 32 int8 + 1 fp16 scale (8.5 bits/weight); Q5_0/Q5_1 =
5-bit codes + scale (+ min) (5.5/6 bits); Q4_0/Q4_1 = 4-bit codes + scale (+ min) (4.5/5 bits).
BF16 keeps 16 bits. K-quants (Q2_K..Q6_K, blocks of 256) can be read from published files but
the `gguf` package cannot write them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import one_of
from . import register
from .base import Backend, Option, to_torch_dtype

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
WRITABLE = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16")
FORMAT_VERSION = 1  # bump when the files quantkit writes change


def cache_dir() -> Path:
    """Where written GGUF files are kept: $QUANTKIT_CACHE/gguf, default ~/.cache/quantkit/gguf."""
    return Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "gguf"


@register
class GGUF(Backend):
    name = "gguf"
    module = "gguf"
    pip_spec = "gguf>=0.10.0"
    bits = "llama.cpp block formats Q8_0 ... Q4_0"
    options = {
        "quant_type": Option("Q8_0", tuple(BLOCKS), doc="block format to write (" + ", ".join(WRITABLE) + ")"),
        "compute_dtype": Option(None, kind="dtype", doc="dtype the dequantized matmul runs in (default: torch_dtype)"),
        "gguf_file": Option(None, kind="path", doc="a published .gguf file to load instead of writing one"),
        "modules_to_not_convert": Option(None, kind="list", doc="module names kept in full precision"),
    }

    @classmethod
    def normalize_kwargs(cls, kwargs):
        out = super().normalize_kwargs(kwargs)
        if out.get("quant_type", "Q8_0") not in WRITABLE and not out.get("gguf_file"):
            raise ValueError(
                f"quant_type={out['quant_type']!r}: the gguf package cannot write K-quants. "
                f"Use one of {one_of(WRITABLE)}, or pass gguf_file= a published {out['quant_type']} file."
            )
        return out

    @classmethod
    def _check_value(cls, name, value):
        if name == "quant_type" and isinstance(value, str) and value.upper() in BLOCKS:
            value = value.upper()
        return super()._check_value(name, value)

    @classmethod
    def describe(cls, kwargs):
        return cls.resolved(kwargs)["quant_type"]

    @classmethod
    def layer_problem(cls, kwargs, in_features, out_features, device):
        block = BLOCKS[cls.resolved(kwargs)["quant_type"]][0]
        if in_features % block:
            return f"in_features={in_features} is not a multiple of the GGUF block size {block}"
        return None

    @classmethod
    def native_config(cls, kwargs, library):
        if library != "diffusers":
            return None  # transformers has no GGUF quantization config: quantkit loads these itself
        from diffusers import GGUFQuantizationConfig

        return GGUFQuantizationConfig(compute_dtype=to_torch_dtype(cls.resolved(kwargs)["compute_dtype"]))

    @classmethod
    def from_native(cls, config):
        out = {}
        if getattr(config, "compute_dtype", None) is not None:
            out["compute_dtype"] = config.compute_dtype
        return cls.normalize_kwargs(out)

    @classmethod
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes):
        block, size = BLOCKS[cls.resolved(kwargs)["quant_type"]]
        return out_features * (in_features // block) * size

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        """Wrap a Linear whose weight came packed from a GGUF file (or quantize it now) as a GGUFLinear."""
        import torch
        from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

        weight = linear.weight
        if not isinstance(weight, GGUFParameter):
            weight = quantize_tensor(weight.detach(), cls.resolved(kwargs)["quant_type"])
        compute = to_torch_dtype(cls.resolved(kwargs)["compute_dtype"]) or (
            linear.weight.dtype if linear.weight.is_floating_point() else torch.float32
        )
        new = GGUFLinear(
            linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute, device="meta"
        )
        new.weight = GGUFParameter(weight.data.to(device), quant_type=weight.quant_type)
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.data.to(device), requires_grad=False)
        return new

    @classmethod
    def linear_state(cls, module):
        tensors = {"weight": module.weight.as_tensor()}
        if module.bias is not None:
            tensors["bias"] = module.bias.data
        return tensors, {"quant_type": int(module.weight.quant_type), "compute_dtype": str(module.compute_dtype)}

    @classmethod
    def restore_linear(cls, linear, kwargs, tensors, meta, device):
        import torch
        from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

        new = GGUFLinear(
            linear.in_features,
            linear.out_features,
            bias="bias" in tensors,
            compute_dtype=getattr(torch, meta["compute_dtype"].removeprefix("torch.")),
            device="meta",
        )
        import gguf

        new.weight = GGUFParameter(
            tensors["weight"].to(device), quant_type=gguf.GGMLQuantizationType(meta["quant_type"])
        )
        if "bias" in tensors:
            new.bias = torch.nn.Parameter(tensors["bias"].to(device), requires_grad=False)
        return new


def quantize_tensor(weight, quant_type: str):
    """Quantize a 2-D weight (out, in) into GGUF blocks; returns a packed `GGUFParameter` (uint8)."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    packed = gguf.quants.quantize(weight.float().cpu().numpy(), qtype)
    return GGUFParameter(torch.from_numpy(packed), quant_type=qtype)


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
    folder: str | Path, path: str | Path, quant_type: str, quantize: list[str], *, progress: bool = False
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

    Returns:
        The path written.
    """
    import gguf
    import numpy as np
    from tqdm.auto import tqdm

    from ..checkpoint import SafetensorsSource

    if quant_type not in WRITABLE:
        raise ValueError(f"quantkit writes GGUF as {one_of(WRITABLE)}, not {quant_type!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    source = SafetensorsSource(folder)
    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
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
                writer.add_tensor(key, gguf.quants.quantize(tensor.numpy(), qtype), raw_dtype=qtype)
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


def component_file(folder: Path, kwargs: dict[str, Any], quantize: list[str], *, progress: bool = False) -> Path:
    """The GGUF file for a component: the user's `gguf_file`, else quantkit's cached one (written if absent)."""
    r = GGUF.resolved(kwargs)
    if r["gguf_file"]:
        return Path(r["gguf_file"])
    path = cache_dir() / f"{folder.name}-{r['quant_type']}-{cache_key(folder, r['quant_type'], quantize)}.gguf"
    if not path.is_file():
        write_gguf(folder, path, r["quant_type"], quantize, progress=progress)
    return path


__all__ = ["BLOCKS", "GGUF", "GGUFSource", "WRITABLE", "cache_dir", "component_file", "write_gguf"]
