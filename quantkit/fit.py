"""Which quantization fits a GPU: candidate configs, their predicted peaks, sorted into a readable table.

`fit(source, gpu="T4")` sizes every candidate (each backend at 8 and 4 bits; transformer, text encoders or both;
with and without model offload) without loading a weight, predicts its peak with `quantkit.peak`, and returns a
DataFrame: fitting candidates first, best quality first among them, then no offload before offload, the least
slowdown, the lowest peak. In a notebook the frame shows as a styled table (GiB, fits in green).

Sizes come from a *sizer*: a function candidate -> list[ComponentSizes]. `MetaSizer` is the default: it builds
each component on the meta device (from `quantkit.catalog` for a published pipeline, or a local folder) and
applies each backend's `weight_bytes` to the Linear layers it takes, with the same skip rules as `quantkit.plan`.

    >>> from quantkit.fit import fit
    >>> fit("black-forest-labs/FLUX.1-dev", gpu="T4")          # doctest: +SKIP

GPU memory (`GPUS`): `total_gib` is what `torch.cuda.get_device_properties(i).total_memory` typically reports
(nvidia-smi's total less what the driver reserves, ECC included); `context_gib` is the CUDA context torch creates
(its kernels, cuBLAS and cuDNN handles; not in `max_memory_reserved`); `usable_gib` = total - context is what the
peak (in `max_memory_reserved` terms) may reach. Figures are typical values as commonly reported for each card
and driver, not measured here; pass `memory="14GiB"` for your own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import did_you_mean, one_of
from .peak import OFFLOAD_MODES, ComponentSizes, predict_peak, sizes_from_headers

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


# -- candidates -------------------------------------------------------------------------------------

# (label, backend, kwargs, bits); bitsandbytes computes in bf16 (its own default, fp32, would double activations)
BACKEND_VARIANTS: tuple[tuple[str, str, dict, int], ...] = (
    ("nf4", "bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}, 4),
    ("int8", "bitsandbytes_8bit", {}, 8),
    ("int8wo", "torchao", {"quant_type": "int8wo"}, 8),
    ("int4wo", "torchao", {"quant_type": "int4wo"}, 4),
    ("int8", "quanto", {"weights_dtype": "int8"}, 8),
    ("int4", "quanto", {"weights_dtype": "int4"}, 4),
    ("Q8_0", "gguf", {"quant_type": "Q8_0"}, 8),
    ("Q4_0", "gguf", {"quant_type": "Q4_0"}, 4),
)

# seconds per image relative to BF16 on one H100 (FLUX.1-dev, 1024^2, eager), from the blog: BF16 12 s; nf4 12 s;
# bnb 8-bit 27 s; torchao int8wo 15 s, int4wo 109 s; quanto int8 15 s, int4 109 s; GGUF Q8_0 15 s, Q4_1 23 s.
SLOWDOWN = {
    ("bitsandbytes_4bit", 4): 1.0,
    ("bitsandbytes_8bit", 8): 2.3,
    ("torchao", 8): 1.25,
    ("torchao", 4): 9.0,
    ("quanto", 8): 1.25,
    ("quanto", 4): 9.0,
    ("gguf", 8): 1.25,
    ("gguf", 4): 1.9,
}
# (backend, bits) -> the compute capability its CUDA kernels need (torchao's int4 weight-only uses tinygemm: sm80+)
REQUIRES_CAPABILITY = {("torchao", 4): 8.0}
PCIE_BYTES_PER_S = 12e9  # host -> device copies of pageable memory on PCIe 4.0 x16 (~12 GB/s in practice)


@dataclass
class Candidate:
    """One configuration to try: a backend at some bits on some components, and an offload mode."""

    name: str
    backend: str | None  # None: unquantized
    bits: int  # 16 for the unquantized baseline
    components: tuple[str, ...] = ()  # quantized components
    kwargs: dict = field(default_factory=dict)
    offload: str | None = None
    label: str = ""  # the backend's short name for these kwargs ("nf4", "int8wo" ...)

    @property
    def config(self):
        """The quantkit PipelineQuantizationConfig of this candidate (None for the unquantized baseline)."""
        if self.backend is None:
            return None
        from .config import PipelineQuantizationConfig, QuantSpec

        return PipelineQuantizationConfig(
            quant_mapping={name: QuantSpec(self.backend, **self.kwargs) for name in self.components}
        )


def default_candidates(
    components: dict[str, str],
    *,
    offload: tuple[str | None, ...] = (None, "model"),
    variants: tuple[tuple[str, str, dict, int], ...] = BACKEND_VARIANTS,
) -> list[Candidate]:
    """Each backend at 8 and 4 bits on the denoiser, on the text encoders, and on both; each offload mode.

    Args:
        components: {model component: role} ("denoiser", "text_encoder", "vae" ...).
        offload: the offload modes to try (None = everything on the GPU).
        variants: (label, backend, kwargs, bits) to try; `BACKEND_VARIANTS` by default.
    """
    denoisers = tuple(n for n, r in components.items() if r == "denoiser")
    encoders = tuple(n for n, r in components.items() if r == "text_encoder")
    groups = [
        (g, what)
        for g, what in ((denoisers, "denoiser"), (encoders, "text encoders"), (denoisers + encoders, "both"))
        if g
    ]
    out = []
    for mode in offload:
        suffix = f" + {mode} offload" if mode else ""
        out.append(Candidate(f"bf16{suffix}", None, 16, (), {}, mode, "bf16"))
        for label, backend, kwargs, bits in variants:
            for group, what in groups:
                out.append(
                    Candidate(f"{backend} {label} ({what}){suffix}", backend, bits, group, dict(kwargs), mode, label)
                )
    return out


# -- sizes from the meta device -----------------------------------------------------------------------


class MetaSizer:
    """candidate -> list[ComponentSizes], from configs alone (no weights read).

    Each model component is built once on the meta device (a catalog id uses `quantkit.catalog`'s configs and
    published dtype; a local folder its own configs and safetensors headers). For a quantized component, every
    Linear layer the backend takes is counted at the backend's `weight_bytes`; the rules are `quantkit.plan`'s:
    the backend's skip list, its `layer_problem` by shape, and `_keep_in_fp32_modules` kept unquantized under
    bitsandbytes and GGUF.

    Args:
        source: a catalog hub id or a local pipeline folder.
        device: the target device ("cuda" or "cpu"; some layers are only quantized on one).
        dtype: the dtype unquantized tensors load in ("bfloat16" ...); None = as published.
        fp32_keep: backends under which `_keep_in_fp32_modules` (T5's `wo`) stay in float32 instead of `dtype` —
            ("bitsandbytes_4bit", "bitsandbytes_8bit") reproduces transformers 4.x, which the blog measured.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        device: str = "cuda",
        dtype: str | None = "bfloat16",
        fp32_keep: tuple[str, ...] = (),
    ):
        from .catalog import catalog_folder, meta_headers, model_components

        folder = catalog_folder(source)
        self.folder = folder if folder is not None else Path(source)
        if not (self.folder / "model_index.json").is_file():
            raise ValueError(
                f"{source!r} is neither a catalog id nor a pipeline folder (no model_index.json). Catalog ids: "
                f"{one_of(_catalog())}."
            )
        import json

        index = json.loads((self.folder / "model_index.json").read_text())
        self.pipeline_class = index.get("_class_name", "DiffusionPipeline")
        self.device = device
        self.dtype = dtype
        self.fp32_keep = tuple(fp32_keep)
        self.models = model_components(self.folder)
        self.headers = {}
        for name in self.models:
            if folder is None and _has_weights(self.folder / name):
                from .checkpoint import read_headers

                self.headers[name] = read_headers(self.folder / name)
            else:
                self.headers[name] = meta_headers(self.folder, name)
        self.configs = {n: json.loads((self.folder / n / "config.json").read_text()) for n in self.models}

    def roles(self) -> dict[str, str]:
        from .peak import role_of

        return {n: role_of(n, cls) for n, (_, cls) in self.models.items()}

    def _layers(self, name: str) -> tuple[list[tuple[str, int, int]], list[str]]:
        """([(Linear name, out_features, in_features)], the model's _keep_in_fp32_modules), cached by the catalog."""
        from .catalog import meta_linears

        return meta_linears(self.folder, name)

    def _float_bytes(self, code: str) -> int:
        from .checkpoint import DTYPE_BYTES, FLOAT_CODES

        if self.dtype and code in FLOAT_CODES:
            return {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        return DTYPE_BYTES[code]

    def component_bytes(self, name: str, spec) -> tuple[int, int]:
        """(bytes as loaded, of which float32 bytes) of one component under `spec` (a QuantSpec or None)."""
        from .checkpoint import FLOAT_CODES, numel

        headers = self.headers[name]
        total = sum(numel(s) * self._float_bytes(c) for c, s in headers.values())
        fp32 = sum(numel(s) * 4 for c, s in headers.values() if c in FLOAT_CODES and self._float_bytes(c) == 4)
        if spec is None:
            return total, fp32
        adapter = spec.adapter
        layers, keep = self._layers(name)
        skip = list(adapter.skip_modules(spec.kwargs))
        bnb_or_gguf = spec.backend.startswith("bitsandbytes") or spec.backend == "gguf"
        keep_fp32 = spec.backend in self.fp32_keep
        if bnb_or_gguf or keep_fp32:
            skip += keep
        for layer, out_f, in_f in layers:
            code, shape = headers.get(f"{layer}.weight", ("F32", (out_f, in_f)))
            before = numel(shape) * self._float_bytes(code)
            hit = _matches(layer, skip)
            if hit:
                if keep_fp32 and _matches(layer, keep) and self._float_bytes(code) < 4:
                    total += numel(shape) * (4 - self._float_bytes(code))  # upcast to float32
                    fp32 += numel(shape) * 4
                continue
            if adapter.layer_problem(spec.kwargs, in_f, out_f, self.device):
                continue
            total += adapter.weight_bytes(spec.kwargs, out_f, in_f, self._float_bytes(code)) - before
        return total, fp32

    def __call__(self, candidate: Candidate) -> list[ComponentSizes]:
        config = candidate.config
        names = list(self.models)
        out = []
        for name, (_, cls) in self.models.items():
            spec = config.spec_for(name, names) if config is not None else None
            loaded, fp32 = self.component_bytes(name, spec)
            out.append(
                sizes_from_headers(
                    name,
                    cls,
                    self.headers[name],
                    loaded_bytes=loaded,
                    fp32_bytes=fp32,
                    backend=spec.backend if spec is not None else None,
                    config=self.configs[name],
                    dtype_bytes={"float32": 4, "float16": 2, "bfloat16": 2}.get(self.dtype or ""),
                )
            )
        return out


def _matches(name: str, patterns: list[str]) -> str | None:
    for p in patterns:
        if f".{p}." in f".{name}.":
            return p
    return None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _catalog() -> tuple[str, ...]:
    from .catalog import CATALOG

    return CATALOG


# -- fit --------------------------------------------------------------------------------------------


def time_factor(candidate: Candidate, sizes: list[ComponentSizes]) -> float:
    """Expected seconds per image relative to BF16 without offload (for sorting; rough)."""
    factor = 1.0
    if candidate.backend and any(s.role == "denoiser" and s.backend for s in sizes):
        factor = SLOWDOWN.get((candidate.backend, candidate.bits), 1.5)
    return factor * {None: 1.0, "model": 1.2, "group": 1.5, "sequential": 10.0}[candidate.offload]


def slowdown_class(candidate: Candidate, sizes: list[ComponentSizes], device: str) -> str:
    """A short expectation of the speed cost: the backend's eager kernels, and offload traffic."""
    parts = []
    denoiser_quantized = any(s.role == "denoiser" and s.backend for s in sizes)
    if candidate.backend and not str(device).startswith("cuda"):
        parts.append(f"{candidate.backend} eager on CPU (slower than bf16)")
    elif candidate.backend and denoiser_quantized:
        factor = SLOWDOWN.get((candidate.backend, candidate.bits))
        if factor and factor > 1.05:
            parts.append(f"~{factor:g}x ({candidate.backend} {candidate.label} eager)")
    if candidate.offload == "model":
        seconds = sum(s.bytes for s in sizes) / PCIE_BYTES_PER_S
        parts.append(f"model offload: +~{seconds:.1f} s/image (weights over PCIe)")
    elif candidate.offload == "group":
        parts.append("group offload: ~1.1-2x (block transfers overlap compute)")
    elif candidate.offload == "sequential":
        parts.append("sequential offload: ~5-20x (every layer moved every step)")
    return "; ".join(parts) or "none"


def quality_rank(candidate: Candidate, sizes: list[ComponentSizes]) -> int:
    """0 = unquantized; larger = more error expected (fewer bits, and quantizing the denoiser costs most)."""
    if candidate.backend is None:
        return 0
    roles = {s.role for s in sizes if s.backend}
    bits_cost = {8: 1, 4: 3}.get(candidate.bits, 2)
    return bits_cost * (2 if "denoiser" in roles else 1) + (1 if "text_encoder" in roles else 0)


def fit(
    source: str | Path | None = None,
    *,
    gpu: str | None = None,
    memory: str | int | None = None,
    height: int = 1024,
    width: int = 1024,
    num_images: int = 1,
    num_frames: int = 1,
    candidates: list[Candidate] | None = None,
    offload: tuple[str | None, ...] = (None, "model"),
    sizer=None,
    device: str = "cuda",
    max_sequence_length: int | None = None,
):
    """Predict, for each candidate configuration, whether it fits the GPU, and sort them.

    Args:
        source: a catalog hub id or a pipeline folder (used by the default sizer); None with `sizer` given.
        gpu: a name from `GPUS` ("T4", "L4", "A100 80GB" ...); or
        memory: the usable memory instead ("15GiB", "16GB", bytes).
        height, width, num_images, num_frames: the generation to size.
        candidates: the configurations to try; None = `default_candidates` with `offload`.
        offload: offload modes for the default candidates.
        sizer: candidate -> list[ComponentSizes]; None = `MetaSizer(source, device=device)`. Wire a plan in
            with e.g. `lambda c: sizes_from_plan(plan(source, c.config, device=device))`.
        device: "cuda" (default) or "cpu".

    Returns:
        A DataFrame (its `_repr_html_` is a styled table) sorted fits first, then quality, slowdown and peak, with
        columns candidate, backend, bits, components, offload, static_bytes, peak_bytes, fits, margin_bytes,
        slowdown, peak_phase, problem (why a backend cannot run on that GPU); `.attrs` holds the GPU and the
        memory budget (bytes).

    Raises:
        ValueError: neither or both of gpu/memory, an unknown gpu name, an unreadable memory string.
    """
    if (gpu is None) == (memory is None):
        raise ValueError(
            f"Pass exactly one of gpu= (one of {one_of(GPUS)}) or memory= (e.g. '15GiB'); got gpu={gpu!r}, "
            f"memory={memory!r}."
        )
    card = resolve_gpu(gpu) if gpu is not None else None
    budget = card.usable_bytes if card is not None else parse_memory(memory)
    for mode in offload:
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"offload mode {mode!r} is not one of {one_of([str(m) for m in OFFLOAD_MODES])}.")
    if sizer is None:
        if source is None:
            raise ValueError("fit needs a source (a catalog id or a pipeline folder) or a sizer function.")
        sizer = MetaSizer(source, device=device)
    pipeline_class = getattr(sizer, "pipeline_class", None) or "FluxPipeline"
    if candidates is None:
        if not hasattr(sizer, "roles"):
            raise ValueError("With a custom sizer, pass candidates= (see default_candidates).")
        candidates = default_candidates(sizer.roles(), offload=offload)

    rows = []
    for cand in candidates:
        problem = _problem(cand, card)
        sizes = sizer(cand)
        est = predict_peak(
            sizes,
            device=device,
            height=height,
            width=width,
            num_images=num_images,
            num_frames=num_frames,
            offload=cand.offload,
            pipeline_class=pipeline_class,
            max_sequence_length=max_sequence_length,
        )
        rows.append(
            {
                "candidate": cand.name,
                "backend": cand.backend or "-",
                "bits": cand.bits,
                "components": ", ".join(s.name for s in sizes if s.backend) or "-",
                "offload": cand.offload or "-",
                "static_bytes": sum(s.bytes for s in sizes),
                "peak_bytes": est.peak,
                "fits": est.peak <= budget and not problem,
                "margin_bytes": budget - est.peak,
                "slowdown": slowdown_class(cand, sizes, device),
                "peak_phase": est.phase,
                "problem": problem,
                "_quality": quality_rank(cand, sizes),
                "_offload": OFFLOAD_MODES.index(cand.offload),
                "_speed": time_factor(cand, sizes),
            }
        )
    return _frame(rows, budget, card)


def _problem(cand: Candidate, card: GPU | None) -> str:
    need = REQUIRES_CAPABILITY.get((cand.backend, cand.bits))
    if need and card is not None and card.capability is not None and card.capability < need:
        return f"{cand.backend} {cand.label} needs compute capability >= {need} ({card.name} has {card.capability})"
    return ""


def _frame(rows: list[dict[str, Any]], budget: int, card: GPU | None):
    import pandas as pd

    frame = pd.DataFrame(rows)
    keys = ["fits", "_quality", "_offload", "_speed", "peak_bytes"]
    frame = frame.sort_values(keys, ascending=[False, True, True, True, True], kind="stable")
    frame = frame.drop(columns=["_quality", "_offload", "_speed"]).reset_index(drop=True)
    out = _fit_frame_class()(frame)
    out.attrs.update(budget_bytes=budget, gpu=card.name if card else None)
    return out


_CLASS = None


def _fit_frame_class():
    """A DataFrame subclass whose notebook view is a styled table (defined lazily: pandas loads on first use)."""
    global _CLASS
    if _CLASS is None:
        import pandas as pd

        class FitFrame(pd.DataFrame):
            """The result of `fit`: a DataFrame; shown in a notebook as a styled table in GiB."""

            _metadata = ["attrs"]

            @property
            def _constructor(self):
                return FitFrame

            def styled(self):
                """A pandas Styler: bytes as GiB, fitting rows green, the others red."""
                gib = {c: (lambda v: f"{v / GIB:.1f} GiB") for c in ("static_bytes", "peak_bytes", "margin_bytes")}
                budget = self.attrs.get("budget_bytes")
                caption = f"usable memory {budget / GIB:.2f} GiB" + (
                    f" ({self.attrs['gpu']})" if self.attrs.get("gpu") else ""
                )

                def colour(row):
                    tone = "#e6f4ea" if row["fits"] else "#fce8e6"
                    return [f"background-color: {tone}"] * len(row)

                return pd.DataFrame(self).style.format(gib).apply(colour, axis=1).set_caption(caption)

            def _repr_html_(self):
                return self.styled().to_html()

        _CLASS = FitFrame
    return _CLASS


__all__ = [
    "BACKEND_VARIANTS",
    "GPUS",
    "GPU",
    "Candidate",
    "MetaSizer",
    "default_candidates",
    "fit",
    "parse_memory",
    "resolve_gpu",
    "slowdown_class",
]
