"""The peak-memory model: how much memory a pipeline needs while it generates, before anything is loaded.

`predict_peak(components, ...)` takes per-component sizes (what a plan knows: true bytes after quantization,
class, role) and the generation settings, and returns a `PeakEstimate` that is itemized: the weights resident on
the device at the peak (per component), the activations of the phase where the peak happens (text encoding,
denoising, VAE decode), the allocator's cached pools, a CUDA-only decode term, the CUDA context (not part of
the peak, needed on the card), and the host memory that loading and offloading need.

The formulas (bytes; b = bytes per activation element: 2 for bf16/fp16, 4 for fp32)

    peak = max over phases p in (text, denoise, decode) of
               resident_weights(p) + activations(p) + cached(p) + cuda_decode(p) + transient(p)

    resident_weights(p)  no offload: every component's bytes. model offload (`enable_model_cpu_offload`): the
                         component running in p (its largest, for the text phase). group offload
                         (`enable_group_offload`, block level): the running component's bytes outside its
                         repeated blocks + 2 blocks (one computing, one prefetched). sequential
                         (`enable_sequential_cpu_offload`): the running component's largest leaf module.
    activations(text)    T5-style encoders: 9.8 * L * d_ff * b; CLIP: 3.0 * 77 * intermediate_size * b
                         (L: the pipeline's max_sequence_length; the encoders run one after another).
    activations(denoise) k * B * N * D * b, N tokens, D hidden width, B the batch the pipeline builds
                         (2 x images where classifier-free guidance is batched: SD3, PixArt). k per class:
                         Flux 17.2 (N = image + 512 text tokens), SD3 12.3 / 13.2 with dual attention
                         (N = image + 77 + 256 tokens), PixArt 12.1 (N = image tokens), Wan 15.9 (N = video
                         tokens), other classes 17 (a rough default).
    activations(decode)  AutoencoderKL: 3.0 * images * F * b, F the decoder's largest feature map (channels x
                         pixels, e.g. 256 x 1024 x 1024 for FLUX's VAE at 1024^2); 4.0 on a CPU in 16 bits
                         (oneDNN's convolution buffers, measured on the tiny CPU pipeline). AutoencoderKLWan: 13.3 *
                         base_dim * 4 * H * W * b (it decodes 4 frames at a time with a feature cache).
    cached(p)            the caching allocator keeps freed blocks: the largest earlier phase's activations stay
                         reserved on CUDA (a later phase's larger blocks rarely fit in them). CPU: 0 (quantkit
                         returns blocks >= 1 MiB to the OS).
    cuda_decode          CUDA only: 5.6 * images * F * b during an AutoencoderKL decode (convolution workspaces
                         and allocator rounding at full resolution), fitted to the blog's BF16 row below.
    transient(denoise)   a quantized Linear's forward: the largest weight dequantized to b bytes (bnb 4-bit,
                         quanto, torchao, GGUF), or int32 accumulators B * N * out * 4 (bnb 8-bit).

Where the constants come from. The activation factors k were read off a live-tensor trace of each catalog
component's forward on the meta device (every op's new storages counted while alive; attention counted as its
output only, as flash / memory-efficient SDPA allocates); they hold across resolutions to a few percent and
the CPU test (tests/test_peak.py) checks them against measured RSS of a pipeline that really runs. The CUDA
decode factor is the one number fitted to GPU data: the Hugging Face blog "Exploring Quantization Backends in
Diffusers" (FLUX.1-dev, H100, 1024^2, GiB of `torch.cuda.max_memory_reserved`): BF16 31.4 GiB after load,
36.2 GiB peak. The other blog rows (nf4, int8, int4, GGUF) are predicted, not fitted.

Units: a CUDA peak is comparable with `max_memory_reserved` (it excludes the CUDA context, given apart in
`cuda_context`); a CPU peak with the RSS a fresh process adds above its warmed-up start.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import one_of
from ..units import human_bytes, text_table

GIB = 2**30
OFFLOAD_MODES = (None, "model", "group", "sequential")
ROLES = ("denoiser", "text_encoder", "vae", "other")

# activation factors (see the module docstring; traced on the meta device)
DENOISER_K = {
    "FluxTransformer2DModel": 17.2,
    "SD3Transformer2DModel": 12.3,
    "PixArtTransformer2DModel": 12.1,
    "WanTransformer3DModel": 15.9,
}
DENOISER_K_DEFAULT = 17.0
SD3_DUAL_K = 13.2  # SD3.5-medium's MMDiT-X blocks (dual attention)
T5_K = 9.8  # T5 / UMT5 encoder at 512 tokens (8.2 at 256): x L x d_ff
CLIP_K = 3.0  # CLIP text tower: x 77 x intermediate_size
VAE_K = 3.0  # AutoencoderKL decode: x the largest decoder feature map
VAE_K_CPU_HALF = 4.0  # the same on a CPU in bf16/fp16: oneDNN's convolution buffers (measured 3.6-4.2 here)
WAN_VAE_K = 13.3  # AutoencoderKLWan decode: x base_dim x 4 frames x H x W
CUDA_DECODE_K = 5.6  # CUDA-only decode term, fitted to the blog's FLUX.1-dev BF16 peak (36.2 GiB)

# runtime constants (bytes)
CUDA_CONTEXT = int(0.5 * GIB)  # torch's CUDA context + cuBLAS/cuDNN handles on an H100 (~0.3 GiB on a T4)
HOST_RUNTIME_CUDA = int(2.0 * GIB)  # RSS of python + torch + the CUDA libraries, before any weights
HOST_RUNTIME_CPU = int(0.5 * GIB)  # RSS of python + torch + diffusers on CPU, before any weights
CPU_RUNTIME = 16 * 2**20  # what the first CPU generation adds beyond tensors (oneDNN / thread scratch)

# pipelines whose denoiser runs on a doubled batch (classifier-free guidance concatenated)
BATCHED_CFG = (
    "StableDiffusion3Pipeline",
    "PixArtSigmaPipeline",
    "PixArtAlphaPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
)
TEXT_LENGTHS = {  # the pipelines' default max_sequence_length (T5 tokens)
    "FluxPipeline": 512,
    "StableDiffusion3Pipeline": 256,
    "PixArtSigmaPipeline": 300,
    "WanPipeline": 512,
}
_BLOCK = re.compile(r"^(.*?\.?(?:blocks|layers|block|layer|transformer_blocks|single_transformer_blocks))\.(\d+)\.")


@dataclass
class ComponentSizes:
    """What the peak model needs to know about one pipeline component.

    Build it from a plan (`sizes_from_plan`), from a folder's headers (`sizes_from_headers`), or by hand.
    """

    name: str
    class_name: str
    role: str  # "denoiser", "text_encoder", "vae" or "other" (see `role_of`)
    bytes: int  # true bytes of the component as loaded (quantized layers at their packed size)
    fp32_bytes: int = 0  # of which: layers kept in float32
    backend: str | None = None  # the quantization backend, None when unquantized
    config: dict = field(default_factory=dict, repr=False)  # the component's config.json
    block_bytes: int = 0  # the largest repeated block (transformer_blocks.N ...), as loaded
    outside_blocks_bytes: int = 0  # bytes outside the repeated blocks (embeddings, norms, output layers)
    leaf_bytes: int = 0  # the largest leaf module (one Linear, one Embedding), as loaded
    largest_weight_elements: int = 0  # numel of the largest 2-D weight (dequantized transiently by some backends)
    largest_out_features: int = 0  # rows of the widest Linear weight

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role={self.role!r} is not one of {one_of(ROLES)}.")


@dataclass
class PeakEstimate:
    """An itemized prediction of one generation's peak memory (bytes)."""

    device: str
    offload: str | None
    phase: str  # where the peak happens: "text", "denoise" or "decode"
    resident: dict[str, int]  # component -> bytes on the device at the peak
    activations: int  # of the peak phase
    cached: int  # earlier phases' blocks the caching allocator still holds
    cuda_decode: int  # the CUDA-only VAE decode term
    transient: int  # dequantized weights / int8 accumulators of quantized layers
    runtime: int  # what the first CPU generation adds beyond tensors (0 on CUDA: not in max_memory_reserved)
    cuda_context: int  # needed on the card, not part of `peak`
    host_load: int  # host RAM (RSS) needed while loading
    host_run: int  # host RAM while generating (offloaded weights live there)
    phases: dict[str, int] = field(default_factory=dict)  # the peak of every phase
    items: dict[str, int] = field(default_factory=dict)  # activations of every phase, by part
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> int:
        return sum(self.resident.values())

    @property
    def peak(self) -> int:
        """Bytes comparable with `max_memory_reserved` (CUDA) or with the RSS added by the run (CPU)."""
        return self.weights + self.activations + self.cached + self.cuda_decode + self.transient + self.runtime

    @property
    def device_total(self) -> int:
        """What the card must have: the peak plus the CUDA context (= the peak on CPU)."""
        return self.peak + self.cuda_context

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(weights=self.weights, peak=self.peak, device_total=self.device_total)
        return out

    def rows(self) -> list[list[str]]:
        rows = [[f"weights: {n}", human_bytes(b)] for n, b in self.resident.items()]
        rows += [
            [f"activations ({self.phase})", human_bytes(self.activations)],
            ["cached by the allocator", human_bytes(self.cached)],
            ["CUDA decode workspace", human_bytes(self.cuda_decode)],
            ["quantized-layer transients", human_bytes(self.transient)],
            ["runtime", human_bytes(self.runtime)],
            ["= peak", human_bytes(self.peak)],
            ["+ CUDA context", human_bytes(self.cuda_context)],
            ["host RAM while loading", human_bytes(self.host_load)],
            ["host RAM while generating", human_bytes(self.host_run)],
        ]
        return rows

    def __repr__(self) -> str:
        head = (
            f"PeakEstimate on {self.device} (offload={self.offload}): peak {human_bytes(self.peak)} during "
            f"{self.phase}"
        )
        body = text_table(["item", "bytes"], self.rows())
        return head + "\n" + body + "".join(f"\nnote: {n}" for n in self.notes)

    def _repr_html_(self) -> str:
        from html import escape

        body = "".join(f"<tr><td>{escape(a)}</td><td>{escape(b)}</td></tr>" for a, b in self.rows())
        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>PeakEstimate</b> on {escape(self.device)} (offload={escape(str(self.offload))}): "
            f"peak <b>{human_bytes(self.peak)}</b> during {escape(self.phase)}</p>"
            f"<table><tbody>{body}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else "")
        )


# -- the model ----------------------------------------------------------------------------------------


def _act_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def denoiser_tokens(
    c: ComponentSizes, pipeline_class: str, height: int, width: int, num_frames: int, text_length: int
) -> tuple[int, int, float]:
    """(tokens N, hidden width D, factor k) of the denoiser's activations for one image."""
    cfg = c.config
    heads, head_dim = cfg.get("num_attention_heads"), cfg.get("attention_head_dim")
    width_d = heads * head_dim if heads and head_dim else cfg.get("hidden_size") or cfg.get("inner_dim") or 3072
    patch = cfg.get("patch_size", 2)
    patch = patch[-1] if isinstance(patch, list | tuple) else patch or 1
    cls = c.class_name
    if cls == "FluxTransformer2DModel":  # 8x VAE, then 2x2 packing into 64-channel tokens (patch_size 1)
        return (height // 16) * (width // 16) + text_length, width_d, DENOISER_K[cls]
    if cls == "SD3Transformer2DModel":
        k = SD3_DUAL_K if cfg.get("dual_attention_layers") else DENOISER_K[cls]
        return (height // (8 * patch)) * (width // (8 * patch)) + 77 + text_length, width_d, k
    if cls == "WanTransformer3DModel":
        frames = (max(num_frames, 1) - 1) // 4 + 1
        return frames * (height // (8 * patch)) * (width // (8 * patch)), width_d, DENOISER_K[cls]
    k = DENOISER_K.get(cls, DENOISER_K_DEFAULT)
    return (height // (8 * patch)) * (width // (8 * patch)), width_d, k


def decoder_feature_map(config: dict, height: int, width: int) -> int:
    """Elements of the AutoencoderKL decoder's largest feature map (channels x pixels) at this output size."""
    channels = list(config.get("block_out_channels") or [128, 256, 512, 512])
    levels = len(channels)
    reversed_ch = channels[::-1]
    largest = 0
    for i in range(levels):  # up-block i works at 1 / 2**(levels-1-i) of the output size
        scale = 2 ** (levels - 1 - i)
        pixels = (height // scale) * (width // scale)
        incoming = reversed_ch[i - 1] if i else reversed_ch[0]
        largest = max(largest, max(incoming, reversed_ch[i]) * pixels)
    return largest


def text_activations(c: ComponentSizes, text_length: int, b: int) -> int:
    """Activations of one text encoder call: T5-style (d_ff) at `text_length` tokens, CLIP-style at <= 77."""
    cfg = c.config
    if "d_ff" in cfg:  # T5 / UMT5
        return int(T5_K * text_length * cfg["d_ff"] * b)
    inner = cfg.get("intermediate_size") or 4 * (cfg.get("hidden_size") or 768)
    length = min(cfg.get("max_position_embeddings") or 77, 77)
    return int(CLIP_K * length * inner * b)


def vae_decode(c: ComponentSizes, height: int, width: int, images: int, b: int, cuda: bool) -> tuple[int, int]:
    """(activations, feature-map bytes) of one decode; the second sizes the CUDA term."""
    if c.class_name == "AutoencoderKLWan":
        base = c.config.get("base_dim", 96)
        return int(WAN_VAE_K * base * 4 * height * width * b * images), 0
    fmap = decoder_feature_map(c.config, height, width) * b * images
    return int((VAE_K if cuda or b == 4 else VAE_K_CPU_HALF) * fmap), fmap


def _resident(c: ComponentSizes, offload: str | None) -> int:
    if offload in (None, "model"):
        return c.bytes
    if offload == "group":
        if c.block_bytes:
            return c.outside_blocks_bytes + 2 * c.block_bytes  # one group computing, the next prefetched
        return c.bytes
    return c.leaf_bytes or c.bytes  # sequential: one leaf module at a time


def _transient(c: ComponentSizes, tokens: int, batch: int, b: int) -> int:
    if c.backend is None:
        return 0
    from ..backends import get_backend
    from ..backends.base import Transient

    if get_backend(c.backend).matmul_transient is Transient.INT32_ACCUMULATORS:
        return batch * tokens * (c.largest_out_features or 0) * 4  # int32 accumulators of the widest Linear
    return (c.largest_weight_elements or 0) * b  # one weight dequantized for its matmul


def predict_peak(
    components: list[ComponentSizes],
    *,
    device: str = "cuda",
    height: int = 1024,
    width: int = 1024,
    num_images: int = 1,
    num_frames: int = 1,
    offload: str | None = None,
    pipeline_class: str = "FluxPipeline",
    max_sequence_length: int | None = None,
    dtype: str = "bfloat16",
    guidance: bool | None = None,
) -> PeakEstimate:
    """Predict the peak memory of one pipeline call (see the module docstring for the formulas).

    Args:
        components: one ComponentSizes per model component (`sizes_from_plan(plan)`).
        device: "cuda[:N]" or "cpu".
        height, width: output size in pixels; num_frames for video pipelines (Wan).
        num_images: images per prompt (the batch).
        offload: None, "model" (enable_model_cpu_offload), "group" (enable_group_offload, block level, with
            a prefetch stream) or "sequential" (enable_sequential_cpu_offload).
        pipeline_class: e.g. "FluxPipeline"; decides the text length and whether guidance doubles the batch.
        max_sequence_length: T5 tokens; None = the pipeline's default.
        dtype: compute dtype of the activations ("bfloat16", "float16", "float32").
        guidance: classifier-free guidance batched (None = the pipeline's default).

    Returns:
        A PeakEstimate; `.peak` is comparable with `max_memory_reserved` on CUDA, RSS added on CPU.

    Raises:
        ValueError: an unknown offload mode or a pipeline without a denoiser.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(
            f"offload={offload!r} is not supported: use one of {one_of([str(m) for m in OFFLOAD_MODES])}."
        )
    cuda = str(device).startswith("cuda")
    b = _act_bytes(dtype)
    by_role: dict[str, list[ComponentSizes]] = {r: [] for r in ROLES}
    for c in components:
        by_role[c.role].append(c)
    if not by_role["denoiser"]:
        raise ValueError(
            f"No denoiser among the components ({one_of([c.name for c in components])}): the peak model needs the "
            "transformer or unet (role='denoiser')."
        )
    denoiser = max(by_role["denoiser"], key=lambda c: c.bytes)
    text_length = max_sequence_length or TEXT_LENGTHS.get(pipeline_class, 512)
    batched = guidance if guidance is not None else pipeline_class in BATCHED_CFG
    batch = num_images * (2 if batched else 1)
    notes = []

    # activations per phase (bytes)
    text_items = {c.name: text_activations(c, text_length, b) * num_images for c in by_role["text_encoder"]}
    tokens, hidden, k = denoiser_tokens(denoiser, pipeline_class, height, width, num_frames, text_length)
    if denoiser.class_name not in DENOISER_K:
        notes.append(
            f"{denoiser.class_name}: no traced activation factor, the default k={DENOISER_K_DEFAULT} is rough"
        )
    act_denoise = int(k * batch * tokens * hidden * b)
    transient = _transient(denoiser, tokens, batch, b)
    vae = max(by_role["vae"], key=lambda c: c.bytes) if by_role["vae"] else None
    act_decode, fmap = vae_decode(vae, height, width, num_images, b, cuda) if vae else (0, 0)
    cuda_decode = int(CUDA_DECODE_K * fmap) if cuda else 0

    # which weights are on the device in each phase
    everything = {c.name: c.bytes for c in components}

    def resident(active: list[ComponentSizes]) -> dict[str, int]:
        if offload is None:
            return dict(everything)
        if not active:
            return {}
        biggest = max(active, key=lambda c: _resident(c, offload))  # text encoders run one after another
        return {biggest.name: _resident(biggest, offload)}

    text_active = max(text_items.values(), default=0)
    phases = {
        "text": (resident(by_role["text_encoder"]), text_active, 0, 0, 0),
        "denoise": (resident([denoiser]), act_denoise, text_active if cuda else 0, 0, transient),
        "decode": (
            resident([vae] if vae else []),
            act_decode,
            max(act_denoise + transient, text_active) if cuda else 0,
            cuda_decode,
            0,
        ),
    }
    runtime = 0 if cuda else CPU_RUNTIME
    totals = {p: sum(r.values()) + a + c + w + t + runtime for p, (r, a, c, w, t) in phases.items()}
    phase = max(totals, key=totals.get)
    res, act, cached, cdec, trans = phases[phase]

    # host memory
    host_base = HOST_RUNTIME_CUDA if cuda else HOST_RUNTIME_CPU
    largest_plain = max((c.bytes for c in components if c.backend is None), default=0)
    largest_tensor = max((c.largest_weight_elements * b for c in components), default=0)
    if not cuda:  # one RAM: loading holds the weights plus the largest plain component's file pages or tensor
        host_load = sum(everything.values()) + max(largest_plain, largest_tensor)
        host_run = max(totals.values())
        notes.append("CPU: device and host memory are the same RAM; the peak is the RSS a run adds")
    else:
        offloaded = sum(everything.values()) if offload else 0
        # loading passes one component's file pages (from_pretrained) or one tensor (the streaming loader) through
        # the host; offloaded, those pages are the weights that stay there, already counted in `offloaded`
        passing = largest_tensor if offload else max(largest_plain, largest_tensor)
        host_load = host_base + passing + offloaded
        host_run = host_base + offloaded
        if offload == "group":
            notes.append("group offload pins host memory: CUDA's pinned-memory allocator may round blocks up")
    return PeakEstimate(
        device=str(device),
        offload=offload,
        phase=phase,
        resident=res,
        activations=act,
        cached=cached,
        cuda_decode=cdec,
        transient=trans,
        runtime=runtime,
        cuda_context=CUDA_CONTEXT if cuda else 0,
        host_load=int(host_load),
        host_run=int(host_run),
        phases=totals,
        items={
            "text": text_active,
            "denoise": act_denoise,
            "decode": act_decode,
            **{f"text:{n}": v for n, v in text_items.items()},
        },
        notes=notes,
    )


__all__ = [
    "ComponentSizes",
    "OFFLOAD_MODES",
    "PeakEstimate",
    "decoder_feature_map",
    "predict_peak",
]
