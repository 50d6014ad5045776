"""Compare quantization variants of one pipeline: memory, speed and quality side by side, saved as it goes.

    results = quantkit.compare(None, {"baseline": None, "quanto-int8": config}, seeds=[0, 1], out="runs/cmp")
    results.frame              # one row per variant: bytes, load time, peak memory, latency, PSNR, SSIM, ...
    results.images["quanto-int8"]   # (N, H, W, 3) floats in [0, 1], same prompts and seeds as the baseline

What is measured per variant (one module of quantkit.measure each):
- true bytes per component and in total (`footprint`), and the load time;
- peak memory during load and during generation (`memory`: CPU peak RSS; CUDA peak allocated and reserved);
- latency per image (`latency`: warm-up, synchronized timers, median of the timed images);
- quality against the baseline's images for the same prompt and seed (`quality`: PSNR, SSIM, and LPIPS /
  CLIP score when their weights are on disk; shapes-prompt adherence on the embedded pipeline);
- the environment (versions, device name).

How it runs, and why:
- Each variant runs in a fresh worker process. CPU memory does not come back to the OS when Python frees it,
  so a peak measured in a process that already loaded another variant says little; in a fresh process every
  variant starts from the same memory image. Workers are forked from a server process that has imported the
  whole stack once (multiprocessing's "forkserver"; "spawn" on CUDA), so a worker starts in milliseconds, and
  the libraries of every backend are resident in every worker, which keeps their starting RSS equal.
- The variant with config None is the baseline and runs first; the others are compared against its images,
  which it stores in the output folder. Without one, a "baseline" variant is added.
- As soon as a variant finishes, its images are moved into `images/<variant>/` and one JSON line is appended to
  `results.jsonl` (written, flushed and fsynced in one go). A crash or `kill -9` loses at most the variant in
  progress; running again on the same folder skips the variants already there, so none is recorded twice.
- A variant that fails (unsupported on this device, out of memory, a crashed worker) is recorded with its error,
  and the others go on. Recorded failures are skipped on a rerun too, unless `retry_failed=True`.
- Optionally, the per-layer sensitivity of one quantized component is measured (`quantkit.measure.sensitivity`),
  and a variant that keeps the most sensitive layers in full precision is added (`keep_sensitive=n`).

The output folder:
    meta.json        settings (source, prompts, seeds, call kwargs, device, dtype) checked on resume
    results.jsonl    one JSON object per finished variant
    images/<v>/      images.npy (N, H, W, 3 float32) and one PNG per (prompt, seed)
    sensitivity/     <variant>__<component>.csv per-layer errors
    results.csv, report.md, report.html, *.png   written by `CompareResults.save()` (and at the end of compare)
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PipelineQuantizationConfig

RESULTS_FILE = "results.jsonl"
META_FILE = "meta.json"
IMAGES_DIR = "images"
SENSITIVITY_DIR = "sensitivity"
WORK_DIR = ".work"
LOCK_FILE = ".lock"
FORMAT = 1

# Prompts of the shapes world the embedded pipeline was trained on (see quantkit.models.shapes).
DEFAULT_PROMPTS = ("a red circle", "a blue square on the left", "a small green triangle", "a large yellow circle")
DEFAULT_SEEDS = (0, 1)
DENOISERS = ("transformer", "unet", "prior")

# Modules every worker has imported before it starts (see _context): the whole stack, every backend included,
# so that no variant's memory includes importing its library and every worker starts equally large.
PRELOAD = ["numpy", "torch", "safetensors", "diffusers", "transformers", "diffusers.pipelines.flux.pipeline_flux",
           "diffusers.models.transformers.transformer_flux", "diffusers.models.autoencoders.autoencoder_kl",
           "transformers.models.t5.modeling_t5", "transformers.models.clip.modeling_clip", "optimum.quanto",
           "torchao.quantization", "bitsandbytes", "gguf", "diffusers.quantizers.gguf.utils", "skimage.metrics",
           "quantkit.load", "quantkit.measure.footprint", "quantkit.measure.quality", "quantkit.measure.memory",
           "quantkit.measure.latency", "quantkit.measure.sensitivity", "quantkit.measure.environment"]

# Record fields that depend on timing or on the machine, not on the numbers a rerun must reproduce.
TIMING_FIELDS = ("load_s", "latency_s", "latency_min_s", "latency_samples_s", "timings", "peak_load_rss",
                 "peak_gen_rss", "rss_start", "rss_after_load", "peak_load_cuda_allocated",
                 "peak_load_cuda_reserved", "peak_gen_cuda_allocated", "peak_gen_cuda_reserved", "finished_at",
                 "pid", "environment", "memory_method")

FRAME_COLUMNS = ["status", "quantization", "bytes", "bits_per_weight", "load_s", "latency_s", "peak_load_rss",
                 "peak_gen_rss", "rss_start", "peak_load_cuda_allocated", "peak_load_cuda_reserved",
                 "peak_gen_cuda_allocated", "peak_gen_cuda_reserved", "psnr", "psnr_min", "ssim", "ssim_min",
                 "lpips", "clip_score", "adherence", "identical", "error"]


# -- variants ---------------------------------------------------------------------------------------------

def default_variants(source=None) -> dict[str, PipelineQuantizationConfig | None]:
    """The standard comparison: the baseline and all five backends, on the denoiser and the T5 encoder.

    As in diffusers' example (`components_to_quantize=["transformer", "text_encoder_2"]` on FLUX): the
    denoiser ("transformer" or "unet") and every T5 encoder are quantized; CLIP and the VAE stay as they are.
    quanto int4 is left out: it compiles a CPU kernel (~30 s) on its first use on a machine.
    """
    from .plan import read_model_index, resolve_source

    _, index = read_model_index(resolve_source(source))
    components = [n for n in DENOISERS if n in index][:1]
    components += [n for n, (_, cls) in index.items() if cls.startswith("T5") and cls.endswith("Model")]
    if not components:
        raise ValueError(f"This pipeline has no transformer, unet or T5 encoder; its components are {sorted(index)}."
                         " Pass variants with components_to_quantize naming the ones to quantize.")

    def cfg(backend: str, **kwargs) -> PipelineQuantizationConfig:
        return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                          components_to_quantize=components)

    return {
        "baseline": None,
        "bnb-nf4": cfg("bitsandbytes_4bit", bnb_4bit_quant_type="nf4"),
        "bnb-int8": cfg("bitsandbytes_8bit", llm_int8_threshold=6.0),
        "quanto-int8": cfg("quanto", weights_dtype="int8"),
        "torchao-int8wo": cfg("torchao", quant_type="int8wo"),
        "gguf-Q8_0": cfg("gguf", quant_type="Q8_0"),
        "gguf-Q4_0": cfg("gguf", quant_type="Q4_0"),
    }


def variants_to_dict(variants: dict[str, PipelineQuantizationConfig | None]) -> dict[str, dict | None]:
    """{name: config.to_dict() or None}: the JSON form `read_variants` reads back."""
    return {name: (None if c is None else c.to_dict()) for name, c in variants.items()}


def read_variants(path: str | Path) -> dict[str, PipelineQuantizationConfig | None]:
    """Variants from a JSON file (or YAML, when PyYAML is installed): {name: PipelineQuantizationConfig dict or null}.

    Raises:
        ValueError: the file is not a mapping of names to config dicts, or a config is invalid (names it).
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"{path} is YAML, which needs PyYAML: pip install 'pyyaml', or write the variants "
                              "as JSON.") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}). Expected {{name: config dict or null}}, e.g. "
                             '{"baseline": null, "quanto-int8": {"quant_backend": "quanto", "quant_kwargs": '
                             '{"weights_dtype": "int8"}, "components_to_quantize": ["transformer"]}}.') from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} must hold a non-empty mapping {{name: config dict or null}}, got "
                         f"{type(data).__name__}.")
    out = {}
    for name, value in data.items():
        if value is None:
            out[str(name)] = None
            continue
        if not isinstance(value, dict):
            raise ValueError(f"Variant {name!r} in {path} must be a config dict or null, got {type(value).__name__}.")
        try:
            out[str(name)] = PipelineQuantizationConfig.from_dict(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Variant {name!r} in {path}: {err}") from None
    return out


def slug(name: str) -> str:
    """A folder name for a variant: letters, digits, '.', '_' and '-' kept, anything else becomes '-'."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    return s or "variant"


def _config_key(config: dict | None) -> str:
    return json.dumps(config, sort_keys=True)


# -- records ----------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN to null, ±inf to the strings "inf"/"-inf" (read back as floats)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


_FLOAT_FIELDS = ("psnr", "psnr_min", "ssim", "ssim_min", "lpips", "clip_score", "adherence")


def _decode(record: dict) -> dict:
    for key in _FLOAT_FIELDS:
        if record.get(key) in ("inf", "-inf"):
            record[key] = float(record[key])
    return record


def read_records(folder: str | Path) -> list[dict]:
    """The records in `folder/results.jsonl`, in the order they were written.

    A last line cut short by a crash is ignored (it was never a finished record); other unreadable lines raise.
    """
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_decode(json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: an append interrupted by a crash
                continue
            raise ValueError(f"Line {i + 1} of {path} is not JSON; the file was edited or damaged. Remove that line "
                             "(the variant then runs again) or start a new output folder.") from None
    return records


def _repair(path: Path) -> None:
    """Drop a last line that a crash cut short, so the next append starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_bytes(keep)
        os.replace(tmp, path)


def append_record(folder: str | Path, record: dict) -> None:
    """Append one record as one line: a single write, flushed and fsynced before returning."""
    line = json.dumps(_jsonable(record), allow_nan=False) + "\n"
    with open(Path(folder) / RESULTS_FILE, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _rewrite_records(folder: Path, records: list[dict]) -> None:
    tmp = folder / (RESULTS_FILE + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(_jsonable(r), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RESULTS_FILE)


# -- the results object -------------------------------------------------------------------------------------

@dataclass
class CompareResults:
    """What `compare` produced; everything also lives in `folder`, from which `CompareResults.load` rebuilds it.

    Attributes:
        folder: the output folder.
        records: one dict per finished variant (the lines of results.jsonl).
        meta: the run's settings (source, prompts, seeds, call kwargs, device, dtype).
        sensitivity: {(variant, component): LayerSensitivity-like dict with a `frame`}.
    """

    folder: Path
    records: list[dict]
    meta: dict = field(default_factory=dict)
    sensitivity: dict = field(default_factory=dict)
    _images: dict = field(default_factory=dict, repr=False)

    @property
    def frame(self):
        """pandas DataFrame indexed by variant: status, quantization, bytes, load_s, latency_s, peak memory
        (bytes), psnr, ssim, lpips, clip_score, adherence, identical, error (CUDA columns only on CUDA)."""
        import pandas as pd

        rows = [{"variant": r["variant"], **{c: r.get(c) for c in FRAME_COLUMNS}} for r in self.records]
        frame = pd.DataFrame(rows, columns=["variant", *FRAME_COLUMNS]).set_index("variant")
        empty = [c for c in frame.columns if c.startswith("peak_") and "cuda" in c and frame[c].isna().all()]
        frame = frame.drop(columns=empty)
        for c in frame.columns:
            if c not in ("status", "quantization", "error"):
                frame[c] = pd.to_numeric(frame[c], errors="coerce")
        return frame

    @property
    def components(self):
        """pandas DataFrame of true bytes, variants × components (NaN where a variant failed)."""
        import pandas as pd

        rows = {r["variant"]: (r.get("component_bytes") or {}) for r in self.records}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")

    @property
    def images(self) -> dict:
        """{variant: array (N, H, W, 3) float32 in [0, 1]} for the variants that made images (loaded lazily)."""
        import numpy as np

        for r in self.records:
            name = r["variant"]
            if name not in self._images and r.get("images_npy"):
                path = self.folder / r["images_npy"]
                if path.is_file():
                    self._images[name] = np.load(path)
        return {r["variant"]: self._images[r["variant"]] for r in self.records if r["variant"] in self._images}

    @property
    def captions(self) -> list[str]:
        """One caption per image column: "prompt / seed"."""
        settings = self.meta.get("settings", {})
        return [f"{p} / {s}" for p in settings.get("prompts", []) for s in settings.get("seeds", [])]

    @property
    def reference(self) -> str | None:
        """The baseline variant the others are compared against."""
        return next((r["variant"] for r in self.records if r.get("config") is None), None)

    @property
    def failed(self) -> dict[str, str]:
        """{variant: error} of the variants that failed."""
        return {r["variant"]: r.get("error") for r in self.records if r.get("status") != "ok"}

    def save(self, folder: str | Path | None = None, *, formats: tuple[str, ...] = ("md", "html"),
             progress: bool = False) -> Path:
        """Write results.csv, the plots (PNG) and report.md / report.html into `folder` (default: self.folder).

        With another folder, results.jsonl, meta.json, the images and sensitivity tables are copied there first.

        Returns:
            The folder.
        """
        from .show.report import write_report

        folder = Path(folder) if folder is not None else self.folder
        if folder.resolve() != self.folder.resolve():
            folder.mkdir(parents=True, exist_ok=True)
            for name in (RESULTS_FILE, META_FILE):
                if (self.folder / name).is_file():
                    shutil.copy(self.folder / name, folder / name)
            for name in (IMAGES_DIR, SENSITIVITY_DIR):
                if (self.folder / name).is_dir():
                    shutil.copytree(self.folder / name, folder / name, dirs_exist_ok=True)
            other = CompareResults.load(folder)
            write_report(other, formats=formats, progress=progress)
            return folder
        write_report(self, formats=formats, progress=progress)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CompareResults:
        """Rebuild the results of a (finished or interrupted) comparison from its folder."""
        folder = Path(folder)
        if not (folder / RESULTS_FILE).is_file() and not (folder / META_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no comparison ({RESULTS_FILE} and {META_FILE} are missing).")
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        return cls(folder=folder, records=read_records(folder), meta=meta, sensitivity=_read_sensitivity(folder))

    def __repr__(self) -> str:
        from .show.report import text_summary

        return text_summary(self)

    def _repr_html_(self) -> str:
        from .show.report import html_table

        return html_table(self)


def _read_sensitivity(folder: Path) -> dict:
    import pandas as pd

    out = {}
    for meta_path in sorted((folder / SENSITIVITY_DIR).glob("*.json")):
        info = json.loads(meta_path.read_text())
        csv = meta_path.with_suffix(".csv")
        if csv.is_file():
            info["frame"] = pd.read_csv(csv, index_col="rank")
            out[(info["variant"], info["component"])] = info
    return out


# -- the engine ------------------------------------------------------------------------------------------

def compare(source=None, variants: dict[str, PipelineQuantizationConfig | None] | None = None, *,
            prompts: list[str] | None = None, seeds: list[int] | tuple[int, ...] = DEFAULT_SEEDS,
            out: str | Path | None = None, device: str | None = None, torch_dtype: Any = None,
            num_inference_steps: int | None = None, call_kwargs: dict | None = None, warmup: int = 1,
            repeats: int = 3, sensitivity: str | None = None, sensitivity_component: str | None = None,
            keep_sensitive: int = 0, retry_failed: bool = False, timeout_s: float | None = None,
            use_lpips: bool = True, clip_model: str | None = None, report: bool = True, progress: bool = True,
            start_method: str | None = None) -> CompareResults:
    """Run every variant of `source` in its own worker process and record memory, speed and quality.

    Args:
        source: pipeline folder (or hub id); None = quantkit.EMBEDDED_PIPELINE.
        variants: {name: PipelineQuantizationConfig or None (the unquantized baseline)}; default
            `default_variants(source)`. The baseline runs first; without one, "baseline" is added.
        prompts: the prompts (default: four shapes prompts); every prompt is drawn with every seed.
        seeds: generator seeds (a CPU torch.Generator per image, so images match across devices).
        out: output folder; resumes when it already holds results of the same settings. Default: a new
            temporary folder.
        device: "cpu" or "cuda[:N]"; default CUDA when available.
        torch_dtype: dtype of the unquantized tensors (None: the checkpoint's).
        num_inference_steps: overrides the pipeline's generation default.
        call_kwargs: more pipeline call arguments (height, width, true_cfg_scale, ...).
        warmup: untimed generations before the timed ones (the first prompt and seed).
        repeats: at least this many timed generations (the images themselves, plus repeats of the first one
            when there are fewer images).
        sensitivity: a variant whose quantization of `sensitivity_component` is studied per layer; "auto" = the
            quantized variant with the lowest PSNR; None = no sensitivity study.
        sensitivity_component: the component to study (default: the denoiser).
        keep_sensitive: with a sensitivity study, also run the studied variant with its `keep_sensitive` most
            sensitive layers kept in full precision (named "<variant>+keep<n>"); 0 = do not.
        retry_failed: run variants recorded as failed again (their old record is replaced).
        timeout_s: give up on a variant after this many seconds (recorded as failed).
        use_lpips: compute LPIPS when its weights are on disk.
        clip_model: a CLIP model folder or cached hub id for the CLIP score (None: skipped).
        report: write results.csv, plots and report.md / report.html at the end.
        progress: show progress bars.
        start_method: multiprocessing start method for the workers (default: "forkserver" on CPU where
            available, "spawn" on CUDA or elsewhere).

    Returns:
        CompareResults (`.frame`, `.images`, `.save()`, `CompareResults.load(folder)`).

    Raises:
        ValueError: bad arguments, or `out` holds results made with other settings or other configs under the
            same variant names (nothing is run).
        RuntimeError: another process is writing to `out`.
    """
    from tqdm.auto import tqdm

    from .backends.base import dtype_name
    from .plan import resolve_source

    folder_src = resolve_source(source)
    if variants is None:
        variants = default_variants(folder_src)
    variants = _check_variants(variants)
    prompts = list(prompts if prompts is not None else DEFAULT_PROMPTS)
    seeds = [int(s) for s in seeds]
    if not prompts or not seeds:
        raise ValueError(f"Give at least one prompt and one seed (got {len(prompts)} prompts, {len(seeds)} seeds).")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}.")
    call_kwargs = dict(call_kwargs or {})
    if num_inference_steps is not None:
        call_kwargs["num_inference_steps"] = int(num_inference_steps)
    device = str(device or _default_device())
    settings = {"format": FORMAT, "source": str(folder_src.resolve()), "prompts": prompts, "seeds": seeds,
                "call_kwargs": _jsonable(call_kwargs), "device": device,
                "torch_dtype": dtype_name(torch_dtype) if torch_dtype is not None else None}
    folder = Path(out) if out is not None else _temp_folder()
    folder.mkdir(parents=True, exist_ok=True)

    with _Lock(folder):
        meta = _start_or_resume(folder, settings)
        _repair(folder / RESULTS_FILE)
        shutil.rmtree(folder / WORK_DIR, ignore_errors=True)  # left by a run that was killed
        records = read_records(folder)
        done = {r["variant"]: r for r in records}
        for name, config in variants.items():
            if name in done and _config_key(done[name].get("config")) != _config_key(_config_dict(config)):
                raise ValueError(f"{folder} already holds a variant {name!r} made with another config "
                                 f"({done[name].get('config')}); give this config another name, or use a new "
                                 "output folder.")
        if retry_failed:
            failed = [n for n, r in done.items() if r.get("status") != "ok" and n in variants]
            if failed:
                records = [r for r in records if r["variant"] not in failed]
                _rewrite_records(folder, records)
                done = {r["variant"]: r for r in records}
        runner = _Runner(folder, settings, start_method, timeout_s, progress, use_lpips, clip_model, warmup,
                         repeats)
        todo = [n for n in variants if n not in done]
        bar = tqdm(total=len(variants), initial=len(variants) - len(todo), desc="compare", unit="variant",
                   disable=not progress)
        try:
            for name in todo:
                record = runner.run_variant(name, variants[name], _reference(folder), bar)
                append_record(folder, record)
                done[name] = record
                bar.update(1)
            extra = _sensitivity_stage(runner, folder, variants, done, sensitivity, sensitivity_component,
                                       keep_sensitive, bar)
            for name, config in extra.items():
                if name in done:
                    continue
                bar.total += 1
                record = runner.run_variant(name, config, _reference(folder), bar)
                append_record(folder, record)
                done[name] = record
                bar.update(1)
        finally:
            bar.close()
            shutil.rmtree(folder / WORK_DIR, ignore_errors=True)
        results = CompareResults.load(folder)
        results.meta = meta
        if report:
            results.save(progress=progress)
    return results


def _default_device() -> str:
    from .plan import default_device

    return default_device()


def _temp_folder() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="quantkit-compare-"))


def _check_variants(variants) -> dict[str, PipelineQuantizationConfig | None]:
    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants must be a non-empty dict {name: PipelineQuantizationConfig or None}, e.g. "
                         "{'baseline': None, 'quanto-int8': PipelineQuantizationConfig(quant_backend='quanto', "
                         "quant_kwargs={'weights_dtype': 'int8'})}.")
    out: dict[str, PipelineQuantizationConfig | None] = {}
    for name, config in variants.items():
        if config is not None and not isinstance(config, PipelineQuantizationConfig):
            if isinstance(config, dict):
                config = PipelineQuantizationConfig.from_dict(config)
            else:
                raise TypeError(f"Variant {name!r} is a {type(config).__name__}; use a quantkit "
                                "PipelineQuantizationConfig (or its dict form), or None for the baseline.")
        out[str(name)] = config
    slugs: dict[str, str] = {}
    for name in out:
        s = slug(name)
        if s in slugs:
            raise ValueError(f"Variant names {slugs[s]!r} and {name!r} map to the same folder name {s!r}; rename one.")
        slugs[s] = name
    baseline = [n for n, c in out.items() if c is None]
    if not baseline:
        if "baseline" in out:
            raise ValueError("No variant is the unquantized baseline (config None), and the name 'baseline' is "
                             "taken; add one, e.g. {'bf16': None, ...}.")
        out = {"baseline": None, **out}
    else:  # the reference runs first
        out = {baseline[0]: None, **{n: c for n, c in out.items() if n != baseline[0]}}
    return out


def _config_dict(config: PipelineQuantizationConfig | None) -> dict | None:
    return None if config is None else json.loads(json.dumps(_jsonable(config.to_dict())))


def _reference(folder: Path) -> tuple[str, str] | None:
    """(name, images.npy path relative to folder) of the baseline, once it has finished well."""
    for r in read_records(folder):
        if r.get("config") is None and r.get("status") == "ok" and r.get("images_npy"):
            return r["variant"], r["images_npy"]
    return None


def _start_or_resume(folder: Path, settings: dict) -> dict:
    path = folder / META_FILE
    if path.is_file():
        meta = json.loads(path.read_text())
        old = meta.get("settings", {})
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            what = "; ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in diff)
            raise ValueError(f"{folder} holds results made with other settings ({what}). Its images cannot be "
                             "compared with new ones: pass a new output folder, or delete this one.")
        return meta
    if (folder / RESULTS_FILE).is_file():
        raise ValueError(f"{folder} has {RESULTS_FILE} but no {META_FILE}; it was not written by quantkit.compare. "
                         "Pass a new output folder.")
    from .measure.environment import host

    meta = {"settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host()}
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return meta


class _Lock:
    """An exclusive lock on the output folder (flock: released by the kernel when the process dies)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise RuntimeError(f"Another process is writing to {self.path.parent} (it holds {self.path}); wait for "
                               "it to finish, or use another output folder.") from None
        return self

    def __exit__(self, *exc):
        self.handle.close()


# -- workers --------------------------------------------------------------------------------------------

_CONTEXT_LOCK = threading.Lock()


def _context(start_method: str | None, device: str):
    """The multiprocessing context for workers; a forkserver gets the whole stack preloaded.

    OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin while waiting make a 2-thread CPU run several times slower
    as soon as another process wants a core; set (unless already set) in the server's environment only.
    """
    import multiprocessing as mp

    method = start_method or ("forkserver" if not device.startswith("cuda") and
                              "forkserver" in mp.get_all_start_methods() else "spawn")
    if method not in mp.get_all_start_methods():
        raise ValueError(f"start_method={method!r} is not available here; use one of {mp.get_all_start_methods()}.")
    ctx = mp.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        with _CONTEXT_LOCK:
            ctx.set_forkserver_preload(PRELOAD)
            added = "OMP_WAIT_POLICY" not in os.environ
            if added:
                os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            try:
                forkserver.ensure_running()
            finally:
                if added:
                    del os.environ["OMP_WAIT_POLICY"]
    return ctx


@contextmanager
def _main_hidden():
    """Keep multiprocessing from re-running the caller's script in the worker.

    With "spawn" and "forkserver", a child process imports the parent's main script (so that functions defined
    there can be unpickled), which runs whatever that script does at top level unless it is guarded by
    `if __name__ == "__main__":`. The worker needs nothing from it (its entry point lives in this module), so
    while the process starts, `__main__` is replaced by an empty module that names no file to import.
    """
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Runner:
    """Starts one worker per job, relays its progress, and turns what it left behind into a record."""

    def __init__(self, folder: Path, settings: dict, start_method, timeout_s, progress, use_lpips, clip_model,
                 warmup, repeats):
        self.folder = folder
        self.settings = settings
        self.start_method = start_method
        self.timeout_s = timeout_s
        self.progress = progress
        self.use_lpips = use_lpips
        self.clip_model = clip_model
        self.warmup = warmup
        self.repeats = repeats
        self._ctx = None

    @property
    def ctx(self):
        if self._ctx is None:
            self._ctx = _context(self.start_method, self.settings["device"])
        return self._ctx

    def _job(self, kind: str, name: str, work: Path, **more) -> dict:
        s = self.settings
        return {"kind": kind, "name": name, "work": str(work), "folder": str(self.folder), "source": s["source"],
                "device": s["device"], "torch_dtype": s["torch_dtype"], "prompts": s["prompts"], "seeds": s["seeds"],
                "call_kwargs": s["call_kwargs"], "env": dict(os.environ), "sys_path": list(sys.path), **more}

    def _launch(self, job: dict, bar, label: str) -> tuple[dict | None, int | None, dict]:
        """Run `job` in a worker; (what it wrote to record.json or None, exit code, parent-side timings)."""
        ctx = self.ctx
        work = Path(job["work"])
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        messages_r, messages_w = ctx.Pipe(duplex=False)
        lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        proc = ctx.Process(target=_worker_main, args=(job, messages_w, lifeline_r), name=f"quantkit-{label}",
                           daemon=True)
        with _main_hidden():
            proc.start()
        messages_w.close()
        lifeline_r.close()
        started = None
        deadline = None if self.timeout_s is None else t0 + self.timeout_s
        timed_out = False
        try:
            while True:
                if messages_r.poll(0.1):
                    try:
                        msg = messages_r.recv()
                    except EOFError:
                        msg = None
                    if msg is not None:
                        if started is None:
                            started = time.perf_counter() - t0
                        if bar is not None:
                            bar.set_postfix_str(f"{label}: {msg}", refresh=True)
                if not proc.is_alive():
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    proc.kill()
                    break
            proc.join()
        except BaseException:
            proc.kill()
            proc.join()
            raise
        finally:
            messages_r.close()
            lifeline_w.close()
        wall = time.perf_counter() - t0
        record_path = work / "record.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() and not timed_out else None
        parent = {"worker_start_s": started, "wall_s": wall, "timed_out": timed_out}
        return record, proc.exitcode, parent

    def run_variant(self, name: str, config: PipelineQuantizationConfig | None, reference: tuple[str, str] | None,
                    bar) -> dict:
        work = self.folder / WORK_DIR / f"{slug(name)}-{os.getpid()}"
        job = self._job("variant", name, work, config=_config_dict(config),
                        reference=None if reference is None else list(reference),
                        warmup=self.warmup, repeats=self.repeats, use_lpips=self.use_lpips, clip=self.clip_model)
        record, code, parent = self._launch(job, bar, name)
        if record is None:
            record = _failed_record(name, job["config"], code, parent, self.timeout_s)
        for key in ("variant", "config", "status", "error", "error_type", *FRAME_COLUMNS, "latency_samples_s",
                    "component_bytes", "notes"):
            record.setdefault(key, None)  # every record has every field, a failed one with None
        record.setdefault("timings", {}).update({k: v for k, v in parent.items() if k != "timed_out"})
        if record.get("status") == "ok" and (work / IMAGES_DIR).is_dir():
            final = self.folder / IMAGES_DIR / slug(name)
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / IMAGES_DIR, final)
            record["images"] = [f"{IMAGES_DIR}/{slug(name)}/{f}" for f in record.get("images", [])]
            record["images_npy"] = f"{IMAGES_DIR}/{slug(name)}/images.npy"
        else:
            record["images"], record["images_npy"] = [], None
        shutil.rmtree(work, ignore_errors=True)
        return record

    def run_sensitivity(self, variant: str, config: dict, component: str | None, bar) -> dict | None:
        work = self.folder / WORK_DIR / f"sensitivity-{slug(variant)}-{os.getpid()}"
        job = self._job("sensitivity", variant, work, config=config, component=component)
        record, code, parent = self._launch(job, bar, f"{variant} per-layer")
        if record is None:
            record = {"variant": variant, "component": component, "status": "error",
                      "error": _exit_message(code, parent, self.timeout_s)}
        out = self.folder / SENSITIVITY_DIR
        out.mkdir(exist_ok=True)
        base = f"{slug(variant)}__{record.get('component') or component or 'denoiser'}"
        if record.get("status") == "ok":
            os.replace(work / "layers.csv", out / f"{base}.csv")
        else:  # kept beside the tables so the failure can be read; no .csv, so a rerun tries again
            base += ".failed"
        record["timings"] = {**record.get("timings", {}), **{k: v for k, v in parent.items() if k != "timed_out"}}
        tmp = out / f"{base}.json.tmp"
        tmp.write_text(json.dumps(_jsonable(record), indent=1))
        os.replace(tmp, out / f"{base}.json")
        shutil.rmtree(work, ignore_errors=True)
        return record


def _exit_message(code: int | None, parent: dict, timeout_s) -> str:
    if parent.get("timed_out"):
        return f"TimeoutError: the variant took longer than timeout_s={timeout_s} s and was stopped"
    if code is not None and code < 0:
        import signal

        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = str(-code)
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if sig == "SIGKILL" else ""
        return f"WorkerDied: the worker process was killed by {sig}{hint} before it finished"
    return f"WorkerDied: the worker process exited with code {code} without a result"


def _failed_record(name: str, config: dict | None, code: int | None, parent: dict, timeout_s) -> dict:
    message = _exit_message(code, parent, timeout_s)
    return {"variant": name, "config": config, "status": "error", "error": message,
            "error_type": message.split(":")[0], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _sensitivity_stage(runner: _Runner, folder: Path, variants: dict, done: dict, which: str | None,
                       component: str | None, keep: int, bar) -> dict:
    """Run the per-layer study (once; its table is reused on resume) and return the extra "+keep" variant."""
    if which is None:
        return {}
    if which == "auto":
        candidates = [r for r in done.values() if r.get("status") == "ok" and r.get("config") is not None
                      and r.get("psnr") is not None]
        candidates.sort(key=lambda r: r["psnr"])
        if not candidates:
            return {}
        which = candidates[0]["variant"]
    if which not in done or done[which].get("config") is None:
        raise ValueError(f"sensitivity={which!r} is not a finished quantized variant; choose one of "
                         f"{[n for n, r in done.items() if r.get('config') is not None]} or 'auto'.")
    record = done[which]
    existing = _read_sensitivity(folder)
    info = next((v for (variant, comp), v in existing.items()
                 if variant == which and (component is None or comp == component)), None)
    if info is None:
        info = runner.run_sensitivity(which, record["config"], component, bar)
        if info is None or info.get("status") != "ok":
            return {}
        info = _read_sensitivity(folder).get((which, info["component"]))
    if not keep or info is None:
        return {}
    from .measure.sensitivity import keep_in_full_precision

    frame = info["frame"]
    worst = list(frame[frame["status"] == "quantized"].dropna(subset=["sqnr_db"])["layer"].head(keep))
    config = PipelineQuantizationConfig.from_dict(record["config"])
    try:
        kept = keep_in_full_precision(config, info["component"], worst)
    except ValueError as err:  # e.g. a config that names no components: say so, the comparison itself is done
        import warnings

        warnings.warn(f"No '+keep{keep}' variant for {which!r}: {err}", stacklevel=3)
        return {}
    return {f"{which}+keep{keep}": kept}


def _worker_main(job: dict, messages, lifeline) -> None:
    """Entry point of a worker process: run one job, leave record.json (and images) in job["work"]."""
    os.environ.clear()
    os.environ.update(job["env"])  # a forkserver's children start with the server's environment, not ours
    for p in job.get("sys_path", []):
        if p not in sys.path:
            sys.path.append(p)

    def watch():  # the parent holds the other end; EOF means it died (kill -9): stop at once
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="quantkit-lifeline").start()

    def send(message: str) -> None:
        try:
            messages.send(message)
        except (BrokenPipeError, OSError):
            os._exit(70)

    send("started")
    work = Path(job["work"])
    try:
        record = _run_variant(job, send) if job["kind"] == "variant" else _run_sensitivity(job, send)
    except BaseException as err:  # anything the job itself did not catch
        record = {"variant": job["name"], "status": "error", "error": f"{type(err).__name__}: {err}",
                  "error_type": type(err).__name__, "traceback": traceback.format_exc(limit=20)}
    tmp = work / "record.json.tmp"
    tmp.write_text(json.dumps(_jsonable(record), allow_nan=False))
    os.replace(tmp, work / "record.json")


def _warm_up_process(device: str) -> None:
    """Import the whole stack and create the CUDA context before anything is measured.

    A forkserver's worker has the imports already (a no-op then); a spawned worker (CUDA) would otherwise count
    seconds of imports and the CUDA context (hundreds of MB of host memory) as part of loading the variant.
    """
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a backend that is not installed: its variants fail with an install hint later
            pass
    if str(device).startswith("cuda"):
        import torch

        torch.empty(1, device=device)
        torch.cuda.synchronize(device)


def _generate(pipe, prompt: str, seed: int, call_kwargs: dict):
    import torch

    out = pipe(prompt, generator=torch.Generator("cpu").manual_seed(int(seed)), output_type="np", **call_kwargs)
    return out.images[0]


def _run_variant(job: dict, send) -> dict:
    """Load, measure and generate one variant (in the worker); returns its record."""
    import gc

    import numpy as np

    from .load import load_pipeline
    from .measure.environment import environment
    from .measure.footprint import footprint
    from .measure.latency import Latency, stopwatch
    from .measure.memory import current_rss, track_peak
    from .measure.quality import image_quality

    t_start = time.perf_counter()
    device = job["device"]
    record: dict[str, Any] = {"variant": job["name"], "config": job["config"], "status": "ok", "error": None,
                              "error_type": None, "pid": os.getpid(), "device": device}
    timings: dict[str, float] = {}
    _warm_up_process(device)
    timings["imports_s"] = time.perf_counter() - t_start
    record["rss_start"] = current_rss()
    pairs = [(p, s) for p in job["prompts"] for s in job["seeds"]]
    meters = {}
    try:
        record["environment"] = environment(device)
        config = PipelineQuantizationConfig.from_dict(job["config"]) if job["config"] is not None else None
        send("loading")
        t = time.perf_counter()
        with track_peak("load", device) as meters["load"]:
            pipe = load_pipeline(job["source"], config, torch_dtype=job["torch_dtype"], device=device,
                                 progress=False)
        timings["load_s"] = record["load_s"] = time.perf_counter() - t
        record["rss_after_load"] = current_rss()
        fp = footprint(pipe)
        record["bytes"] = int(fp.loc["total", "bytes"])
        record["quantized_bytes"] = int(fp.loc["total", "quantized_bytes"])
        bpw = float(fp.loc["total", "bits_per_weight"])
        record["bits_per_weight"] = bpw if bpw == bpw else None
        record["component_bytes"] = {n: int(b) for n, b in fp["bytes"].items() if n != "total"}
        plan = pipe.quantkit_plan
        labels = {n: c.quantization for n, c in plan.components.items() if c.spec is not None}
        record["quantization"] = _describe(labels)
        record["component_quantization"] = labels
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(job["call_kwargs"])
        images, samples = [], []
        with track_peak("generate", device) as meters["generate"]:
            t = time.perf_counter()
            for i in range(job["warmup"]):
                send(f"warm-up {i + 1}/{job['warmup']}")
                _generate(pipe, *pairs[0], kwargs)
            timings["warmup_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for i, (prompt, seed) in enumerate(pairs):
                send(f"image {i + 1}/{len(pairs)}")
                with stopwatch(device) as sw:
                    images.append(_generate(pipe, prompt, seed, kwargs))
                samples.append(sw.seconds)
            for _ in range(max(0, job["repeats"] - len(pairs))):
                with stopwatch(device) as sw:
                    _generate(pipe, *pairs[0], kwargs)
                samples.append(sw.seconds)
            timings["generate_s"] = time.perf_counter() - t
        latency = Latency(samples_s=samples, warmup=job["warmup"], method=sw.method)
        record.update(latency_s=latency.median_s, latency_min_s=latency.min_s, latency_samples_s=samples,
                      latency_method=latency.method)
        del pipe
        gc.collect()
        send("quality")
        t = time.perf_counter()
        images = np.stack(images).astype(np.float32)
        reference = None
        if job["reference"] is not None:
            reference = np.load(Path(job["folder"]) / job["reference"][1])
        q = image_quality(images, reference, [p for p, _ in pairs], use_lpips=job["use_lpips"], clip=job["clip"],
                          device=device)
        record.update(q.to_dict())
        if job["reference"] is None and job["config"] is not None:
            record["notes"] = [*record.get("notes", []), "no reference images: the baseline did not finish"]
        record["reference"] = job["reference"][0] if job["reference"] is not None else None
        timings["quality_s"] = time.perf_counter() - t
        t = time.perf_counter()
        record["images"] = _save_images(images, pairs, Path(job["work"]) / IMAGES_DIR)
        record["n_images"] = len(images)
        timings["save_s"] = time.perf_counter() - t
    except Exception as err:
        record.update(status="error", error=f"{type(err).__name__}: {err}", error_type=type(err).__name__,
                      traceback=traceback.format_exc(limit=20))
    for phase, key in (("load", "load"), ("generate", "gen")):
        m = meters.get(phase)
        r = m.result if m is not None else None
        if r is None or r.rss_peak is None and r.cuda_allocated_peak is None:
            continue
        record[f"peak_{key}_rss"] = r.rss_peak
        record["memory_method"] = r.method
        if r.cuda_allocated_peak is not None:
            record[f"peak_{key}_cuda_allocated"] = r.cuda_allocated_peak
            record[f"peak_{key}_cuda_reserved"] = r.cuda_reserved_peak
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


def _describe(labels: dict[str, str]) -> str:
    """{component: label} as "quanto int8 (transformer, text_encoder_2)"; "-" when nothing is quantized."""
    groups: dict[str, list[str]] = {}
    for name, label in labels.items():
        groups.setdefault(label, []).append(name)
    return "; ".join(f"{label} ({', '.join(names)})" for label, names in groups.items()) or "-"


def _save_images(images, pairs, folder: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    names = []
    prompts = list(dict.fromkeys(p for p, _ in pairs))
    for image, (prompt, seed) in zip(images, pairs, strict=True):
        name = f"p{prompts.index(prompt)}-s{seed}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def _run_sensitivity(job: dict, send) -> dict:
    """The per-layer study of one quantized component (in the worker); writes layers.csv."""
    from .measure.sensitivity import layer_sensitivity

    t = time.perf_counter()
    config = PipelineQuantizationConfig.from_dict(job["config"])
    send("per-layer error")
    try:
        result = layer_sensitivity(job["source"], config, job["component"], prompts=job["prompts"][:1],
                                   seeds=job["seeds"][:1], device=job["device"], torch_dtype=job["torch_dtype"],
                                   call_kwargs=job["call_kwargs"], progress=False)
    except Exception as err:
        return {"variant": job["name"], "component": job["component"], "status": "error",
                "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=20)}
    Path(job["work"]).mkdir(parents=True, exist_ok=True)
    result.frame.to_csv(Path(job["work"]) / "layers.csv")
    return {"variant": job["name"], "component": result.component, "quantization": result.quantization,
            "status": "ok", "prompts": job["prompts"][:1], "seeds": job["seeds"][:1],
            "timings": {"total_s": time.perf_counter() - t}}


__all__ = ["DEFAULT_PROMPTS", "DEFAULT_SEEDS", "CompareResults", "compare", "default_variants", "read_records",
           "read_variants", "variants_to_dict"]
