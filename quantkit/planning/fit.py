"""Which quantization fits a GPU: candidate configs, their predicted peaks, sorted into a readable table.

`fit(source, gpu="T4")` sizes every candidate (each backend at 8 and 4 bits; transformer, text encoders or both;
with and without model offload) without loading a weight, predicts its peak with `quantkit.planning.peak`, and
returns a
DataFrame: fitting candidates first, best quality first among them, then no offload before offload, the least
slowdown, the lowest peak. In a notebook the frame shows as a styled table (GiB, fits in green).

Sizes come from a *sizer*: a function candidate -> list[ComponentSizes]. `MetaSizer` is the default: it builds
each component on the meta device (from `quantkit.catalog` for a published pipeline, or a local folder) and
applies each backend's `weight_bytes` to the Linear layers it takes, with the same skip rules as `quantkit.plan`.

    >>> from quantkit import fit
    >>> fit("black-forest-labs/FLUX.1-dev", gpu="T4")          # doctest: +SKIP

GPU memory (`GPUS`): `total_gib` is what `torch.cuda.get_device_properties(i).total_memory` typically reports
(nvidia-smi's total less what the driver reserves, ECC included); `context_gib` is the CUDA context torch creates
(its kernels, cuBLAS and cuDNN handles; not in `max_memory_reserved`); `usable_gib` = total - context is what the
peak (in `max_memory_reserved` terms) may reach. Figures are typical values as commonly reported for each card
and driver, not measured here; pass `memory="14GiB"` for your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import one_of
from .gpus import GIB, GPU, GPUS, parse_memory, resolve_gpu
from .peak import OFFLOAD_MODES, ComponentSizes, predict_peak
from .sizing import MetaSizer

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
        from ..config import PipelineQuantizationConfig, QuantSpec

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
    host_memory: str | int | None = None,
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
        host_memory: the machine's RAM ("12GiB" on a free Colab): a candidate fits only if the host memory its
            load and run need (`host_bytes`: weights read while loading, offloaded weights while generating) fits
            too. None: not checked (the column is there either way).

    Returns:
        A DataFrame (its `_repr_html_` is a styled table) sorted fits first, then quality, slowdown and peak, with
        columns candidate, backend, bits, components, offload, static_bytes, peak_bytes, fits, margin_bytes,
        host_bytes, slowdown, peak_phase, problem (why a backend cannot run on that GPU, or the host RAM it lacks);
        `.attrs` holds the GPU and the memory budgets (bytes).

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
    host_budget = parse_memory(host_memory) if host_memory is not None else None
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
        host = max(est.host_load, est.host_run)
        if not problem and host_budget is not None and host > host_budget:
            problem = f"needs {host / GIB:.1f} GiB of host RAM ({host_budget / GIB:.1f} GiB given)"
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
                "host_bytes": host,
                "slowdown": slowdown_class(cand, sizes, device),
                "peak_phase": est.phase,
                "problem": problem,
                "_quality": quality_rank(cand, sizes),
                "_offload": OFFLOAD_MODES.index(cand.offload),
                "_speed": time_factor(cand, sizes),
            }
        )
    frame = _frame(rows, budget, card)
    frame.attrs["host_budget_bytes"] = host_budget
    return frame


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
                gib = {
                    c: (lambda v: f"{v / GIB:.1f} GiB")
                    for c in ("static_bytes", "peak_bytes", "margin_bytes", "host_bytes")
                }
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

            def __repr__(self) -> str:
                """Every row, the columns that decide: candidate, static and predicted peak (GiB), fits, slowdown."""
                from ..units import text_table

                budget = self.attrs.get("budget_bytes")
                head = (
                    f"fit: usable memory {budget / GIB:.2f} GiB"
                    + (f" ({self.attrs['gpu']})" if self.attrs.get("gpu") else "")
                    if budget
                    else "fit"
                )
                rows = [
                    [
                        r.candidate,
                        f"{r.static_bytes / GIB:.1f}",
                        f"{r.peak_bytes / GIB:.1f}",
                        f"{r.host_bytes / GIB:.1f}",
                        "yes" if r.fits else "no",
                        r.problem or r.slowdown,
                    ]
                    for r in self.itertuples()
                ]
                headers = ["candidate", "static GiB", "predicted peak GiB", "host RAM GiB", "fits"]
                headers.append("slowdown / problem")
                return head + "\n" + text_table(headers, rows)

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
