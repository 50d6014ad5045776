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
from ..files import session_folder
from ..planning.card_prompts import card_prompts
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


def compare(
    source=None,
    variants: dict[str, PipelineQuantizationConfig | None] | None = None,
    settings: CompareSettings | None = None,
    *,
    out: str | Path | None = None,
    on_record: Callable[[VariantRecord], object] | None = None,
    stop: threading.Event | None = None,
    **options,
) -> CompareResults:
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
        TypeError / ValueError: bad arguments; a variant's config that this pipeline cannot take (a component it
            lacks, a module name in modules_to_not_convert that names nothing, ...: each variant is planned first);
            a `sensitivity` or `sensitivity_component` that names nothing; or `out` holds results made with other
            settings or other configs under the same variant names (nothing is run, and no folder is left behind).
        FileNotFoundError / NotADirectoryError / PermissionError: a broken pipeline folder, an `out` that is a file
            or cannot be written.
        RuntimeError: another process is writing to `out`; a device this machine lacks; with strict=True, the
            first failed variant.

    Warns:
        UserWarning: on resume, for each variant recorded as failed whose cause is gone (a package it missed is
            installed now): run again with retry_failed=True to measure it.
    """
    if settings is None and options.get("prompts") is None:
        options["prompts"] = card_prompts(source)  # the model card's examples; None: the default prompts
    settings = CompareSettings.from_options(settings, **options)
    if on_record is not None and not callable(on_record):
        raise TypeError(f"on_record must be a function taking a VariantRecord, got {type(on_record).__name__}.")
    if stop is not None and not (hasattr(stop, "is_set") and callable(stop.is_set)):
        raise TypeError(f"stop must be a threading.Event (or None), got {type(stop).__name__}.")
    folder_src, variants, stored, plans = _prepare(source, variants, settings)
    folder, created = _output_folder(out)
    try:
        with Lock(folder):
            meta, done = _resume(folder, stored, variants, settings.retry_failed)
            created = False  # the folder now holds a comparison: keep it whatever happens next
            if not settings.retry_failed:
                _warn_stale_failures(done, plans)
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


def _prepare(source, variants, settings: CompareSettings) -> tuple[Path, dict, dict, dict]:
    """Validate everything that can be checked before a folder is made or a worker starts; (pipeline folder,
    variants, settings to store, {variant: its LoadPlan on this device})."""
    from ..devices import check_device, default_device
    from ..planning.sources import resolve_source

    folder_src = resolve_source(source)
    variants = check_variants(default_variants(folder_src) if variants is None else variants)
    device = check_device(settings.device or default_device())
    plans = plan_variants(folder_src, variants, device, settings.torch_dtype)
    _check_sensitivity(settings, variants, plans)
    stored = {
        "format": FORMAT,
        "source": str(folder_src.resolve()),
        "prompts": settings.prompts,
        "seeds": settings.seeds,
        "call_kwargs": jsonable(settings.call_arguments()),
        "device": device,
        "torch_dtype": settings.torch_dtype,
    }
    return folder_src, variants, stored, plans


def plan_variants(folder: Path, variants: dict, device: str, torch_dtype) -> dict:
    """{variant: LoadPlan} of every variant on `device`, made in this process before any worker starts.

    What the plan raises for (a component the pipeline lacks, a module name that names nothing, a broken file,
    an unknown class) would fail every worker alike, so it is raised here, naming the variant; what it records as
    a `Problem` (a missing package, a kernel this device lacks) is left to the worker, which records the failure.
    """
    from ..planning import plan
    from ..planning.checks import check_classes

    plans = {}
    for name, config in variants.items():
        try:
            plans[name] = plan(folder, config, device=device, torch_dtype=torch_dtype)
        except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as err:
            raise type(err)(f"Variant {name!r}: {err}") from None
    first = next(iter(plans.values()))
    check_classes(first.pipeline_class, {n: (c.library, c.class_name) for n, c in first.components.items()})
    return plans


def _check_sensitivity(settings: CompareSettings, variants: dict, plans: dict) -> None:
    """`sensitivity` names a quantized variant (or 'auto'), `sensitivity_component` a component it quantizes."""
    from ..errors import did_you_mean

    which, component = settings.sensitivity, settings.sensitivity_component
    quantized = [n for n, c in variants.items() if c is not None]
    if which not in (None, "auto"):
        if which not in variants:
            raise ValueError(
                f"sensitivity={which!r} names no variant.{did_you_mean(which, quantized)} Choose one "
                f"of {quantized} or 'auto' (the quantized variant with the lowest PSNR)."
            )
        if variants[which] is None:
            raise ValueError(
                f"sensitivity={which!r} is the unquantized baseline, which has no quantization error "
                f"to study; choose one of {quantized} or 'auto'."
            )
    if component is not None:
        candidates = [which] if which not in (None, "auto") else quantized
        components = sorted({c for n in candidates for c in plans[n].quantized})
        if component not in components:
            raise ValueError(
                f"sensitivity_component={component!r} is not quantized by "
                f"{'variant ' + repr(which) if len(candidates) == 1 else 'any variant'}."
                f"{did_you_mean(component, components)} Choose one of {components} (or None for the "
                "denoiser)."
            )


def retry_hint(record: dict, plan) -> str | None:
    """Why a variant recorded as failed may pass now, or None: decided from the recorded exception type (the
    `Problem` kind it stands for), never from the message. A MISSING_PACKAGE failure (ImportError) whose plan,
    made now, misses no package any more: the package was installed since."""
    from ..problems import ProblemKind

    if record.get("status") == "ok" or plan is None:
        return None
    if record.get("error_type") == ProblemKind.MISSING_PACKAGE.exception.__name__:
        if not any(p.kind is ProblemKind.MISSING_PACKAGE for p in plan.issues().values()):
            return "the package it missed is installed now"
    return None


def retry_hints(records, plans: dict) -> dict[str, str]:
    """{variant: why it may pass now} for the failed records among `records` (dicts or VariantRecords)."""
    out = {}
    for r in records:
        data = getattr(r, "data", r)
        hint = retry_hint(data, plans.get(data.get("variant")))
        if hint:
            out[data["variant"]] = hint
    return out


def failure_hints(results: CompareResults) -> dict[str, str]:
    """{variant: why it may pass now} for the failed variants of finished results (each planned again now)."""
    from ..planning import plan

    settings = (results.meta or {}).get("settings", {})
    plans = {}
    for r in results.records:
        if r.get("status") == "ok" or not r.get("config"):
            continue
        try:
            plans[r["variant"]] = plan(
                settings.get("source"),
                PipelineQuantizationConfig.from_dict(r["config"]),
                device=settings.get("device"),
                torch_dtype=settings.get("torch_dtype"),
            )
        except (ValueError, TypeError, OSError):  # no hint is better than a wrong one
            continue
    return retry_hints(results.records, plans)


def _warn_stale_failures(done: dict, plans: dict) -> None:
    import warnings

    for name, hint in retry_hints([r for n, r in done.items() if n in plans], plans).items():
        warnings.warn(
            f"Variant {name!r} is recorded as failed ({done[name].get('error')}), but {hint}: run again "
            "with retry_failed=True (quantkit compare --retry-failed) to measure it.",
            stacklevel=3,
        )


def _output_folder(out) -> tuple[Path, bool]:
    """(the output folder, whether this call created it); a file or an unwritable place is refused clearly."""
    import errno

    from ..errors import user_path

    if out is None:
        return session_folder("quantkit-compare-"), True  # removed at exit: pass out= to keep the results
    if not isinstance(out, str | Path) or (isinstance(out, str) and not out.strip()):
        raise TypeError(f"out must be a folder path (str or Path), got {type(out).__name__} {out!r}.")
    folder = user_path(out, "out")
    blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == folder else f"is inside {blocking}, which is a file"
        raise NotADirectoryError(f"out={str(out)!r} {where}, not a folder; pass a folder for the results.")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".quantkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        kind = PermissionError if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else OSError
        raise kind(f"Cannot write results to {folder} ({err.strerror}); pass a folder you can write to.") from None
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
            raise ValueError(
                f"{folder} already holds a variant {name!r} made with another config "
                f"({done[name].get('config')}); give this config another name, or use a new "
                "output folder."
            )
    failed = [n for n, r in done.items() if r.get("status") != "ok" and n in variants]
    if retry_failed and failed:
        records = [r for r in records if r["variant"] not in failed]
        rewrite_records(folder, records)
        done = {r["variant"]: r for r in records}
    return meta, done


def _run_variants(
    runner: Runner, folder: Path, variants: dict, done: dict, settings: CompareSettings, on_record
) -> None:
    """Run the variants not yet in `done`, one worker each; record, report and (strict) stop on failure."""
    from tqdm.auto import tqdm

    todo = [n for n in variants if n not in done]
    if not todo:
        return
    bar = tqdm(
        total=len(variants),
        initial=len(variants) - len(todo),
        desc="compare",
        unit="variant",
        disable=not settings.progress,
    )
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
                raise RuntimeError(
                    f"Variant {name!r} failed: {record.get('error')} (strict=True stops here; the "
                    f"failure is recorded in {folder / RESULTS_FILE})."
                )
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
    if which not in records or records[which].get("status") != "ok" or records[which].get("config") is None:
        import warnings  # its name was checked before anything ran: the variant failed, so there is nothing to study

        warnings.warn(
            f"No per-layer study of {which!r}: the variant did not finish ({records.get(which, {}).get('error')}).",
            stacklevel=4,
        )
        return {}
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
    candidates = [
        r
        for r in records.values()
        if r.get("status") == "ok" and r.get("config") is not None and r.get("psnr") is not None
    ]
    return min(candidates, key=lambda r: r["psnr"])["variant"] if candidates else None


def _find_sensitivity(folder: Path, variant: str, component: str | None):
    existing = read_sensitivity(folder)
    return next(
        (v for (name, comp), v in existing.items() if name == variant and (component is None or comp == component)),
        None,
    )


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


__all__ = ["compare", "failure_hints", "plan_variants", "retry_hint", "retry_hints"]
