"""The values a comparison is made of: `CompareSettings` (what to run and measure), `Job` (what one worker
does) and `VariantRecord` (what one variant produced; one line of results.jsonl).

Every setting is validated in `CompareSettings.__post_init__`, before any folder is made or worker starts:
a string where a list belongs is an error (not an iterable of characters), counts and steps have ranges,
numbers must be finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import did_you_mean
from .variants import DEFAULT_PROMPTS, DEFAULT_SEEDS

_SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
_SET_BY_COMPARE = ("prompt", "generator", "output_type")  # the worker passes these for every image itself


def _int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name}={value!r} is out of range: it must be {allowed}.")
    return int(value)


@dataclass
class CompareSettings:
    """What `compare` runs and measures (everything but the source, the variants and the output folder).

    Attributes:
        prompts: the prompts; every prompt is drawn with every seed (default in `compare`: the examples of the
            source's model card, `planning.card_prompts`, else four shapes prompts).
        seeds: generator seeds (a CPU torch.Generator per image, so images match across devices).
        device: "cpu" or "cuda[:N]"; None = CUDA when available.
        torch_dtype: dtype of the unquantized tensors (None: the checkpoint's).
        num_inference_steps: overrides the pipeline's generation default (>= 1).
        call_kwargs: more pipeline call arguments (height, width, true_cfg_scale, ...), JSON-able.
        warmup: untimed generations before the timed ones (>= 0).
        repeats: at least this many timed generations (>= 1).
        sensitivity: a variant to study per layer; "auto" = the quantized variant with the lowest PSNR.
        sensitivity_component: the component to study (default: the denoiser).
        keep_sensitive: also run the studied variant with its n most sensitive layers kept (0 = do not).
        retry_failed: run variants recorded as failed again.
        strict: stop at the first failed variant (raise RuntimeError) instead of recording it and going on.
        timeout_s: give up on a variant after this many seconds (> 0; None = no limit).
        use_lpips: compute LPIPS when its weights are on disk.
        clip_model: a CLIP model folder or cached hub id for the CLIP score (None: skipped).
        report: write results.csv, plots and report.md / report.html at the end.
        progress: show progress bars.
        start_method: multiprocessing start method ("forkserver", "spawn", "fork"; None = the default).
    """

    prompts: list[str] | tuple[str, ...] | None = None
    seeds: list[int] | tuple[int, ...] = DEFAULT_SEEDS
    device: str | None = None
    torch_dtype: Any = None
    num_inference_steps: int | None = None
    call_kwargs: dict | None = None
    warmup: int = 1
    repeats: int = 3
    sensitivity: str | None = None
    sensitivity_component: str | None = None
    keep_sensitive: int = 0
    retry_failed: bool = False
    strict: bool = False
    timeout_s: float | None = None
    use_lpips: bool = True
    clip_model: str | None = None
    report: bool = True
    progress: bool = True
    start_method: str | None = None

    def __post_init__(self):
        import json

        from ..devices import parse_device
        from ..dtypes import dtype_name

        prompts = list(DEFAULT_PROMPTS) if self.prompts is None else self.prompts
        if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
            raise TypeError(
                f"prompts must be a list of strings, got {type(prompts).__name__} {prompts!r}; for one prompt "
                f"write prompts=[{prompts!r}]."
                if isinstance(prompts, str)
                else f"prompts must be a list of strings, got {type(prompts).__name__}."
            )
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}.")
        self.prompts = list(prompts)
        if isinstance(self.seeds, int | str) or not isinstance(self.seeds, list | tuple):
            raise TypeError(f"seeds must be a list of whole numbers, e.g. seeds=[0, 1]; got {self.seeds!r}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed, e.g. seeds=[0].")
        self.seeds = [_int("each seed", s, 0, _SEED_MAX) for s in self.seeds]
        if self.device is not None:
            self.device = parse_device(self.device)
        if self.torch_dtype is not None:
            self.torch_dtype = dtype_name(self.torch_dtype)
        if self.num_inference_steps is not None:
            self.num_inference_steps = _int("num_inference_steps", self.num_inference_steps, 1, 10_000)
        if self.call_kwargs is not None and not isinstance(self.call_kwargs, dict):
            raise TypeError(
                f"call_kwargs must be a dict of pipeline call arguments such as {{'height': 64}}, got "
                f"{type(self.call_kwargs).__name__}."
            )
        call_kwargs = dict(self.call_kwargs or {})
        try:
            json.dumps(call_kwargs, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"call_kwargs must be JSON-able (numbers, strings, lists), because they are stored with the results "
                f"and checked on resume: {err}."
            ) from None
        bad = [k for k in call_kwargs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"call_kwargs keys are the pipeline's argument names (strings), got {bad[0]!r}.")
        taken = sorted(set(call_kwargs) & set(_SET_BY_COMPARE))
        if taken:
            raise ValueError(
                f"call_kwargs={ {k: call_kwargs[k] for k in taken} } sets what compare sets itself for "
                f"every image ({', '.join(_SET_BY_COMPARE)}); use prompts= and seeds= instead."
            )
        for key, minimum in (("num_inference_steps", 1), ("height", 1), ("width", 1)):
            if key in call_kwargs:
                call_kwargs[key] = _int(f"call_kwargs[{key!r}]", call_kwargs[key], minimum, 100_000)
        self.call_kwargs = call_kwargs
        self.warmup = _int("warmup", self.warmup, 0, 1000)
        self.repeats = _int("repeats", self.repeats, 1, 10_000)
        self.keep_sensitive = _int("keep_sensitive", self.keep_sensitive, 0)
        if self.keep_sensitive and self.sensitivity is None:
            raise ValueError(
                f"keep_sensitive={self.keep_sensitive} keeps the most sensitive layers that a per-layer "
                "study finds, but sensitivity=None runs none: set sensitivity='auto' (or a variant's "
                "name), or keep_sensitive=0."
            )
        for name in ("retry_failed", "strict", "use_lpips", "report", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.timeout_s is not None:
            if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float):
                raise TypeError(f"timeout_s must be a number of seconds or None, got {self.timeout_s!r}.")
            if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
                raise ValueError(f"timeout_s={self.timeout_s!r} must be a finite number of seconds > 0, or None.")
        if self.start_method is not None:
            import multiprocessing as mp

            methods = mp.get_all_start_methods()
            if self.start_method not in methods:
                raise ValueError(
                    f"start_method={self.start_method!r} is not available here; use one of {methods} (or None)."
                )
        for name in ("sensitivity", "sensitivity_component", "clip_model"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__} {value!r}.")

    @classmethod
    def from_options(cls, base: CompareSettings | None = None, **options) -> CompareSettings:
        """`base` (or the defaults) with `options` replaced; an unknown option is a TypeError with the nearest."""
        if base is not None and not isinstance(base, CompareSettings):
            raise TypeError(
                f"settings must be a CompareSettings (or None), got {type(base).__name__} {base!r:.60}; "
                "pass single settings as keyword arguments, e.g. compare(..., seeds=[0])."
            )
        names = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise TypeError(
                f"compare() got an unknown option {unknown[0]!r}.{did_you_mean(unknown[0], names)} "
                f"Options: {', '.join(names)}."
            )
        values = asdict(base) if base is not None else {}
        return cls(**{**values, **options})

    def call_arguments(self) -> dict:
        """The pipeline call arguments every image is drawn with."""
        out = dict(self.call_kwargs or {})
        if self.num_inference_steps is not None:
            out["num_inference_steps"] = self.num_inference_steps
        return out


@dataclass
class Job:
    """What one worker process does: one variant (`kind="variant"`) or one per-layer study."""

    kind: str
    name: str
    work: str  # the worker's scratch folder (record.json, images)
    folder: str  # the comparison's output folder
    source: str
    device: str
    torch_dtype: str | None
    prompts: list[str]
    seeds: list[int]
    call_kwargs: dict
    env: dict = field(default_factory=dict)  # a forkserver's children start with the server's environment
    sys_path: list = field(default_factory=list)
    config: dict | None = None
    reference: list | None = None  # [baseline name, images.npy path relative to folder]
    warmup: int = 1
    repeats: int = 3
    use_lpips: bool = True
    clip: str | None = None
    component: str | None = None


# every record has these fields; a failed one has None for what it did not measure
RECORD_FIELDS = (
    "variant",
    "config",
    "status",
    "error",
    "error_type",
    "quantization",
    "bytes",
    "bits_per_weight",
    "load_s",
    "latency_s",
    "peak_load_rss",
    "peak_gen_rss",
    "rss_start",
    "peak_load_cuda_allocated",
    "peak_load_cuda_reserved",
    "peak_gen_cuda_allocated",
    "peak_gen_cuda_reserved",
    "psnr",
    "psnr_min",
    "ssim",
    "ssim_min",
    "lpips",
    "clip_score",
    "adherence",
    "identical",
    "latency_samples_s",
    "component_bytes",
    "notes",
    "offload",
    "compile",
)


@dataclass
class VariantRecord:
    """What one variant produced: the typed face of one line of results.jsonl (`data` holds all of it)."""

    variant: str
    status: str
    error: str | None
    data: dict

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict) -> VariantRecord:
        return cls(variant=data["variant"], status=data.get("status") or "error", error=data.get("error"), data=data)

    def __getitem__(self, key: str):
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)


__all__ = ["RECORD_FIELDS", "CompareSettings", "Job", "VariantRecord"]
