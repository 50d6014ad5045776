"""`compare()`: run every variant of one pipeline in its own worker process; memory, speed and quality side by side.

    results = quantkit.compare(None, {"baseline": None, "quanto-int8": config}, seeds=[0, 1], out="runs/cmp")
    results.frame              # one row per variant: bytes, load time, peak memory, latency, PSNR, SSIM, ...
    results.images["quanto-int8"]   # (N, H, W, 3) floats in [0, 1], same prompts and seeds as the baseline

How a variant flows: `check_variants` puts the baseline first -> `Runner.run_variant` starts a fresh worker
(`worker.run_variant`: load, footprint, peak memory, latency, quality against the baseline's stored images)
-> the record is appended to results.jsonl (`store.append_record`, fsynced) and handed to `on_record` -> the
next variant. A failure is recorded and the others go on (or, with `strict=True`, the run stops). A rerun on
the same folder skips recorded variants. After the variants, an optional per-layer study adds a "+keep"
variant; at the end results.csv and the report are written.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from ..config import PipelineQuantizationConfig
from .results import CompareResults, read_sensitivity
from .runner import Runner
from .settings import CompareSettings, VariantRecord
from .store import (
    FORMAT,
    RESULTS_FILE,
    WORK_DIR,
    Lock,
    append_record,
    jsonable,
    read_records,
    reference,
    repair,
    rewrite_records,
    start_or_resume,
)
from .variants import check_variants, config_dict, config_key, default_variants


def compare(source=None, variants: dict[str, PipelineQuantizationConfig | None] | None = None,
            settings: CompareSettings | None = None, *, out: str | Path | None = None,
            on_record: Callable[[VariantRecord], object] | None = None, stop: threading.Event | None = None,
            **options) -> CompareResults:
    """Run every variant of `source` in its own worker process and record memory, speed and quality.

    Args:
        source: pipeline folder (or hub id); None = quantkit.EMBEDDED_PIPELINE.
        variants: {name: PipelineQuantizationConfig or None (the unquantized baseline)}; default
            `default_variants(source)`. The baseline runs first; without one, "baseline" is added.
        settings: a CompareSettings; `**options` (its field names: prompts, seeds, device, torch_dtype,
            num_inference_steps, call_kwargs, warmup, repeats, sensitivity, keep_sensitive, retry_failed,
            strict, timeout_s, use_lpips, clip_model, report, progress, start_method ...) override its fields.
        out: output folder; resumes when it already holds results of the same settings. Default: a new
            temporary folder.
        on_record: called with each finished variant's VariantRecord, right after it is saved.
        stop: a threading.Event; once set, the variant in progress is stopped (not recorded) and no other
            starts; the results so far are returned.

    Returns:
        CompareResults (`.frame`, `.images`, `.save()`, `CompareResults.load(folder)`).

    Raises:
        TypeError / ValueError: bad arguments, or `out` holds results made with other settings or other configs
            under the same variant names (nothing is run, and no folder is left behind).
        RuntimeError: another process is writing to `out`; a device this machine lacks; with strict=True, the
            first failed variant.
    """
    settings = CompareSettings.from_options(settings, **options)
    if on_record is not None and not callable(on_record):
        raise TypeError(f"on_record must be a function taking a VariantRecord, got {type(on_record).__name__}.")
    if stop is not None and not (hasattr(stop, "is_set") and callable(stop.is_set)):
        raise TypeError(f"stop must be a threading.Event (or None), got {type(stop).__name__}.")
    folder_src, variants, stored = _prepare(source, variants, settings)
    folder, created = _output_folder(out)
    try:
        with Lock(folder):
            meta, done = _resume(folder, stored, variants, settings.retry_failed)
            created = False  # the folder now holds a comparison: keep it whatever happens next
            runner = Runner(folder, stored, settings, stop)
            _run_variants(runner, folder, variants, done, settings, on_record)
            if not runner.stopped:
                extra = _sensitivity_stage(runner, folder, done, settings)
                _run_variants(runner, folder, extra, done, settings, on_record)
            results = CompareResults.load(folder)
            results.meta = meta
            if settings.report and not runner.stopped:
                results.save(progress=settings.progress)
    finally:
        if created:  # validation of the folder's contents failed before anything was written
            shutil.rmtree(folder, ignore_errors=True)
    return results


def _prepare(source, variants, settings: CompareSettings) -> tuple[Path, dict, dict]:
    """Validate everything that can be checked before a folder is made or a worker starts."""
    from ..devices import check_device, default_device
    from ..planning.sources import resolve_source

    folder_src = resolve_source(source)
    variants = check_variants(default_variants(folder_src) if variants is None else variants)
    device = check_device(settings.device or default_device())
    stored = {"format": FORMAT, "source": str(folder_src.resolve()), "prompts": settings.prompts,
              "seeds": settings.seeds, "call_kwargs": jsonable(settings.call_arguments()), "device": device,
              "torch_dtype": settings.torch_dtype}
    return folder_src, variants, stored


def _output_folder(out) -> tuple[Path, bool]:
    """(the output folder, whether this call created it); a file or an unwritable place is refused clearly."""
    import tempfile

    if out is None:
        return Path(tempfile.mkdtemp(prefix="quantkit-compare-")), True
    if not isinstance(out, str | Path):
        raise TypeError(f"out must be a folder path (str or Path), got {type(out).__name__}.")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file, not a folder; pass a folder for the results.")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".quantkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"Cannot write results to {folder} ({err.strerror}); pass a folder you can write to.") \
            from None
    return folder, created


def _resume(folder: Path, stored: dict, variants: dict, retry_failed: bool) -> tuple[dict, dict]:
    """Start a new comparison in `folder` or resume the one there; ({meta}, {variant: record} already done)."""
    meta = start_or_resume(folder, stored)
    repair(folder / RESULTS_FILE)
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)  # left by a run that was killed
    records = read_records(folder)
    done = {r["variant"]: r for r in records}
    for name, config in variants.items():
        if name in done and config_key(done[name].get("config")) != config_key(config_dict(config)):
            raise ValueError(f"{folder} already holds a variant {name!r} made with another config "
                             f"({done[name].get('config')}); give this config another name, or use a new "
                             "output folder.")
    failed = [n for n, r in done.items() if r.get("status") != "ok" and n in variants]
    if retry_failed and failed:
        records = [r for r in records if r["variant"] not in failed]
        rewrite_records(folder, records)
        done = {r["variant"]: r for r in records}
    return meta, done


def _run_variants(runner: Runner, folder: Path, variants: dict, done: dict, settings: CompareSettings,
                  on_record) -> None:
    """Run the variants not yet in `done`, one worker each; record, report and (strict) stop on failure."""
    from tqdm.auto import tqdm

    todo = [n for n in variants if n not in done]
    if not todo:
        return
    bar = tqdm(total=len(variants), initial=len(variants) - len(todo), desc="compare", unit="variant",
               disable=not settings.progress)
    try:
        for name in todo:
            if runner.stopped:
                return
            record = runner.run_variant(name, variants[name], reference(folder), bar)
            if record is None:  # stopped while it ran: nothing recorded
                return
            append_record(folder, record)
            done[name] = record
            bar.update(1)
            if on_record is not None:
                on_record(VariantRecord.from_dict(record))
            if settings.strict and record.get("status") != "ok":
                raise RuntimeError(f"Variant {name!r} failed: {record.get('error')} (strict=True stops here; the "
                                   f"failure is recorded in {folder / RESULTS_FILE}).")
    finally:
        bar.close()
        shutil.rmtree(folder / WORK_DIR, ignore_errors=True)


def _sensitivity_stage(runner: Runner, folder: Path, done: dict, settings: CompareSettings) -> dict:
    """Run the per-layer study (once; its table is reused on resume) and return the extra "+keep" variant."""
    which, component, keep = settings.sensitivity, settings.sensitivity_component, settings.keep_sensitive
    records = done
    if which is None:
        return {}
    if which == "auto":
        which = _worst_variant(records)
        if which is None:
            return {}
    if which not in records or records[which].get("config") is None:
        raise ValueError(f"sensitivity={which!r} is not a finished quantized variant; choose one of "
                         f"{[n for n, r in records.items() if r.get('config') is not None]} or 'auto'.")
    record = records[which]
    info = _find_sensitivity(folder, which, component)
    if info is None:
        info = runner.run_sensitivity(which, record["config"], component, None)
        if info is None or info.get("status") != "ok":
            return {}
        info = read_sensitivity(folder).get((which, info["component"]))
    if not keep or info is None:
        return {}
    return _keep_variant(which, record, info, keep)


def _worst_variant(records: dict) -> str | None:
    """The finished quantized variant with the lowest PSNR (None when there is none)."""
    candidates = [r for r in records.values() if r.get("status") == "ok" and r.get("config") is not None
                  and r.get("psnr") is not None]
    return min(candidates, key=lambda r: r["psnr"])["variant"] if candidates else None


def _find_sensitivity(folder: Path, variant: str, component: str | None):
    existing = read_sensitivity(folder)
    return next((v for (name, comp), v in existing.items()
                 if name == variant and (component is None or comp == component)), None)


def _keep_variant(which: str, record: dict, info: dict, keep: int) -> dict:
    """{"<which>+keep<n>": the config with its n most sensitive layers kept in full precision}."""
    import warnings

    from ..measure.sensitivity import keep_in_full_precision, measured_layers

    worst = list(measured_layers(info["frame"])["layer"].head(keep))
    config = PipelineQuantizationConfig.from_dict(record["config"])
    try:
        kept = keep_in_full_precision(config, info["component"], worst)
    except ValueError as err:  # e.g. a config that names no components: say so, the comparison itself is done
        warnings.warn(f"No '+keep{keep}' variant for {which!r}: {err}", stacklevel=4)
        return {}
    return {f"{which}+keep{keep}": kept}


__all__ = ["compare"]
