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

from pathlib import Path

from ..errors import one_of
from ..problems import Problem, ProblemKind
from . import register
from .base import Backend, Option, Weights, dtype_name, to_torch_dtype
from .gguf_files import (  # noqa: F401  (the file functions are part of this backend's public face)
    BLOCKS,
    MIXES,
    WRITABLE,
    GGUFSource,
    cache_dir,
    check_matches,
    component_file,
    gguf_shapes,
    quantize_tensor,
    read_gguf,
    write_gguf,
)


@register
class GGUF(Backend):
    name = "gguf"
    module = "gguf"
    pip_spec = "gguf>=0.10.0"
    in_pipeline_config = False  # diffusers loads GGUF per component with from_single_file, not from a pipeline config
    keeps_fp32_modules = True  # T5 casts its `wo` input to the weight dtype, which for packed blocks is uint8
    bits = "llama.cpp block formats: Q8_0 ... Q4_0, K-quants Q6_K ... Q2_K and mixes (Q4_K_M ...)"
    options = {
        "quant_type": Option(
            "Q8_0", (*BLOCKS, *MIXES), doc="block format or mix to write (" + ", ".join(WRITABLE + MIXES) + ")"
        ),
        "compute_dtype": Option(None, kind="dtype", doc="dtype the dequantized matmul runs in (default: torch_dtype)"),
        "gguf_file": Option(None, kind="path", doc="a published .gguf file to load instead of writing one"),
        "modules_to_not_convert": Option(None, kind="list", doc="module names kept in full precision"),
    }

    @classmethod
    def normalize_kwargs(cls, kwargs):
        out = super().normalize_kwargs(kwargs)
        quant_type = out.get("quant_type", "Q8_0")
        if quant_type not in WRITABLE and quant_type not in MIXES and not out.get("gguf_file"):
            raise ValueError(
                f"quant_type={quant_type!r}: quantkit cannot write this GGUF type. Use one of "
                f"{one_of(WRITABLE + MIXES)}, or pass gguf_file= a published {quant_type} file."
            )
        return out

    @classmethod
    def _check_value(cls, name, value):
        if name == "quant_type" and isinstance(value, str) and value.upper() in (*BLOCKS, *MIXES):
            value = value.upper()
        return super()._check_value(name, value)

    @classmethod
    def describe(cls, kwargs):
        return cls.resolved(kwargs)["quant_type"]

    @classmethod
    def layer_type(cls, kwargs, layer: str | None, out_features: int, in_features: int) -> tuple[str | None, str]:
        """(the GGUF type this Linear's weight is written in, or None when it stays in full precision; why).

        A single type (Q8_0, Q4_K, ...) applies to every layer whose rows divide into its blocks. A mix (Q4_K_M ...)
        decides per tensor by name and shape (`gguf_mixes.tensor_type`: model edges and small tensors stay in
        float, value and FFN-down projections get a higher type, rows that do not divide into 256 fall back).
        """
        quant_type = cls.resolved(kwargs)["quant_type"]
        if quant_type in MIXES:
            from .gguf_mixes import tensor_type

            kind, reason = tensor_type(
                quant_type, f"{layer or ''}.weight", (out_features, in_features), float_type="F32"
            )
            return (None if kind in ("F32", "F16", "BF16") else kind), reason
        block = BLOCKS[quant_type][0]
        if in_features % block:
            return None, f"in_features={in_features} is not a multiple of the GGUF block size {block}"
        return quant_type, f"{quant_type} for every layer"

    @classmethod
    def layer_problem(cls, kwargs, in_features, out_features, device, layer=None):
        kind, reason = cls.layer_type(kwargs, layer, out_features, in_features)
        return reason if kind is None else None

    @classmethod
    def layer_quantization(cls, kwargs, layer, out_features, in_features):
        kind, reason = cls.layer_type(kwargs, layer, out_features, in_features)
        return f"{kind} ({reason})" if cls.resolved(kwargs)["quant_type"] in MIXES else str(kind)

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
    def weight_bytes(cls, kwargs, out_features, in_features, dtype_bytes, layer=None):
        kind, _ = cls.layer_type(kwargs, layer, out_features, in_features)
        if kind is None:  # the layer stays in full precision
            return out_features * in_features * dtype_bytes
        block, size = BLOCKS[kind]
        return out_features * (in_features // block) * size

    @classmethod
    def quantize_linear(cls, linear, kwargs, device):
        """Wrap a Linear whose weight came packed from a GGUF file (or quantize it now) as a GGUFLinear."""
        import torch
        from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

        weight = linear.weight
        if not isinstance(weight, GGUFParameter):  # quantized here (not read from a file): no name, so by shape
            kind, reason = cls.layer_type(kwargs, None, linear.out_features, linear.in_features)
            if kind is None:
                raise ValueError(
                    f"This Linear ({linear.in_features}->{linear.out_features}) stays in full precision "
                    f"under GGUF {cls.resolved(kwargs)['quant_type']}: {reason}."
                )
            weight = quantize_tensor(weight.detach(), kind)
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

    # -- planning and loading ------------------------------------------------------------------
    @classmethod
    def plan_component(cls, c, headers, model, device):
        """Say which file the component loads from, and refuse files and models GGUF cannot take."""
        from ..planning.model import Loader

        c.loader = Loader.GGUF_WRITTEN
        published = cls.resolved(c.spec.kwargs)["gguf_file"]
        own_names = False
        if published:
            own_names = bool(set(gguf_shapes(read_gguf(published))) & set(headers))
            c.loader = Loader.GGUF_STREAM if own_names else Loader.GGUF_SINGLE_FILE
        if published and not own_names and (c.library != "diffusers" or not hasattr(type(model), "from_single_file")):
            c.issue = Problem(
                ProblemKind.UNSUPPORTED,
                f"the GGUF file does not use {c.class_name}'s tensor names and diffusers cannot convert it",
                "leave gguf_file out and let quantkit write the file from this component's weights "
                "(quant_type='Q8_0' ... 'Q4_0')",
            )
        elif not c.quantized_layers:
            c.issue = Problem(
                ProblemKind.UNSUPPORTED,
                f"GGUF quantizes Linear weights only and none of this {c.class_name}'s "
                f"{c.layers_total} Linear layers qualifies",
                "leave this component unquantized (e.g. components_to_quantize=['transformer', ...])",
            )

    @classmethod
    def weights(cls, c, dtype, device, *, progress=False):
        """quantkit's cached file (written if absent) or the user's `gguf_file`: streamed when it uses the
        component's own tensor names, else loaded whole by diffusers' single-file path (it converts the names)."""
        import torch

        from ..checkpoint import read_headers
        from ..dtypes import dtype_name

        r = cls.resolved(c.spec.kwargs)
        types = _layer_types(c)
        path = component_file(
            c.folder, c.spec.kwargs, [f"{n}.weight" for n in c.quantized_layers], progress=progress, types=types
        )
        reader = read_gguf(path)
        expected = {k: s for k, (_, s) in read_headers(c.folder).items()}
        own_names = bool(set(gguf_shapes(reader)) & set(expected))
        if own_names or not r["gguf_file"]:
            check_matches(path, reader, expected, c.name)
        del reader
        compute = to_torch_dtype(r["compute_dtype"]) or dtype or torch.float32
        if not own_names:
            return Weights(model=_from_single_file(c, path, dtype, compute, device))
        kwargs = {**c.spec.kwargs, "compute_dtype": dtype_name(compute)}
        return Weights(GGUFSource(path), lambda linear: cls.quantize_linear(linear, kwargs, device))

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

    # -- first-class models ------------------------------------------------------------------------
    SAVED_FILE = "diffusion_pytorch_model.gguf"  # what save_native_file writes into a diffusers component folder

    @classmethod
    def attach_native(cls, model, kwargs, library, layers, dtype=None):
        """diffusers' own GGUF view (GGUFQuantizationConfig, GGUFQuantizer), which cannot save; transformers keeps
        no GGUF-quantized models (its GGUF loader unpacks the blocks). Either way the library's save refuses, saying
        what works: quantkit.save_pipeline writes a .gguf file for diffusers components (from_single_file loads it)
        and quantkit's own format for transformers ones."""
        compute = next((m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")), None)
        kwargs = {**kwargs, "compute_dtype": dtype_name(compute)} if compute is not None else kwargs
        super().attach_native(model, kwargs, library, layers, dtype)
        if library == "diffusers":
            return (
                "diffusers cannot save GGUF models (it loads them with from_single_file only); "
                f"quantkit.save_pipeline(pipe, folder) writes this component as <component>/{cls.SAVED_FILE}, "
                "which quantkit.load_pipeline(folder) and Model.from_single_file(path, quantization_config="
                "GGUFQuantizationConfig(compute_dtype=...), config=folder, subfolder=<component>) load"
            )
        return (
            "transformers keeps no GGUF-quantized models (its GGUF loader unpacks the blocks); "
            "quantkit.save_pipeline(pipe, folder) saves this component in quantkit's own format, which "
            "quantkit.load_pipeline(folder) loads"
        )

    @classmethod
    def save_native_file(cls, model, folder, library):
        """A .gguf file of the whole component in its own tensor names: quantized Linear weights as their blocks,
        every other tensor as F32 (the format quantkit writes from safetensors too)."""
        if library != "diffusers":
            return None
        import os

        import gguf

        path = Path(folder) / cls.SAVED_FILE
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        writer = gguf.GGUFWriter(str(tmp), arch="quantkit")
        writer.add_uint32("quantkit.format_version", 1)
        try:
            for key, tensor in model.state_dict(keep_vars=True).items():
                if hasattr(tensor, "quant_type"):  # GGUFParameter: its bytes are the blocks
                    writer.add_tensor(key, tensor.as_tensor().detach().cpu().numpy(), raw_dtype=tensor.quant_type)
                else:
                    writer.add_tensor(key, tensor.detach().float().cpu().contiguous().numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def saved_tensors(cls, folder):
        """The tensors of the .gguf file `save_native_file` wrote (packed blocks as GGUFParameter, F32 as float32)."""
        files = sorted(Path(folder).glob("*.gguf"))
        if not files:
            return super().saved_tensors(folder)
        source = GGUFSource(files[0])
        try:
            return {k: source.get(k) for k in source.keys()}, {}
        finally:
            source.close()

    @classmethod
    def native_layer_meta(cls, tensors, kwargs):
        weight = tensors.get("weight")
        if not hasattr(weight, "quant_type"):
            return None
        compute = cls.resolved(kwargs)["compute_dtype"] or "float32"
        return {"quant_type": int(weight.quant_type), "compute_dtype": compute}

    @classmethod
    def lora_weight(cls, layer):
        """peft merges by `weight.data += delta`, which fails on packed blocks: quantkit dequantizes, adds and
        writes the blocks again (same format)."""
        from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

        weight = getattr(layer, "weight", None)
        if not isinstance(weight, GGUFParameter):
            return None
        return dequantize_gguf_tensor(weight).reshape(layer.out_features, layer.in_features)

    @classmethod
    def set_lora_weight(cls, layer, weight):
        from diffusers.quantizers.gguf.utils import GGUFParameter

        packed = quantize_tensor(weight.detach(), layer.weight.quant_type.name)
        layer.weight = GGUFParameter(packed.data.to(layer.weight.device), quant_type=packed.quant_type)


def _layer_types(c) -> dict[str, str]:
    """{weight tensor name: GGUF type} of a component's quantized layers (where a mix varies them)."""
    from ..checkpoint import read_headers

    if GGUF.resolved(c.spec.kwargs)["quant_type"] not in MIXES:
        return {}
    headers = read_headers(c.folder)
    out = {}
    for layer in c.quantized_layers:
        _, (rows, cols) = headers[f"{layer}.weight"]
        kind, _ = GGUF.layer_type(c.spec.kwargs, layer, rows, cols)
        out[f"{layer}.weight"] = kind
    return out


def _from_single_file(c, path: Path, dtype, compute, device: str):
    """Load a published GGUF file through diffusers' single-file path (it converts original tensor names)."""
    from diffusers import GGUFQuantizationConfig

    from ..dtypes import dtype_kwargs
    from ..planning.sources import model_class

    cls = model_class(c.library, c.class_name)
    if c.library != "diffusers" or not hasattr(cls, "from_single_file"):
        raise ValueError(
            f"GGUF file {path} does not use {c.class_name}'s tensor names and diffusers cannot convert it for "
            "this class. Leave gguf_file out to let quantkit write a file from this component's weights."
        )
    try:
        model = cls.from_single_file(
            str(path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=compute),
            config=str(c.folder.parent),
            subfolder=c.name,
            **dtype_kwargs(dtype),
        )
    except Exception as err:  # diffusers' converters raise KeyError, IndexError, RuntimeError ... on wrong files
        raise ValueError(
            f"GGUF file {path} could not be loaded into {c.class_name} ({type(err).__name__}: {err})."
            " Pass a GGUF file made for this model."
        ) from None
    return model.to(device).eval()


__all__ = [
    "BLOCKS",
    "GGUF",
    "WRITABLE",
    "GGUFSource",
    "cache_dir",
    "component_file",
    "gguf_shapes",
    "read_gguf",
    "write_gguf",
]
