"""Checker for 10 (save, reload, share): a folder reloaded so that its quantized components are restored."""

from __future__ import annotations

from typing import Any

from ._common import not_yet, ok, pending

# -- 10 save, reload, share ------------------------------------------------------------------------------------


def check_reloaded(pipe: Any, folder) -> None:
    """10: `pipe` was loaded from `folder` (written by qk.save_pipeline) and its quantized components were restored.

    Args:
        pipe: the learner's reloaded pipeline.
        folder: the folder qk.save_pipeline wrote.
    """
    import json
    from pathlib import Path

    if pending(pipe):
        return not_yet("set `reloaded` to the pipeline loaded back from the saved folder.")
    plan = getattr(pipe, "quantkit_plan", None)
    if plan is None:
        raise AssertionError("This pipeline was not loaded by qk.load_pipeline; reload the folder with it.")
    folder = Path(folder)
    if Path(plan.folder).resolve() != folder.resolve():
        raise AssertionError(
            f"You loaded {plan.folder}, not the saved folder {folder}: pass the folder that qk.save_pipeline wrote."
        )
    saved = {
        p.parent.name: json.loads(p.read_text())["quant"]["backend"]
        for p in sorted(folder.glob("*/quantkit_quantization.json"))
    }
    for name, backend in saved.items():
        record = getattr(getattr(pipe, name, None), "quantkit", None)
        if record is None or record.get("backend") != backend:
            raise AssertionError(f"{name!r} was saved quantized with {backend} but did not come back quantized.")
        if plan.components[name].loader != "quantkit restore":
            raise AssertionError(
                f"{name!r} was quantized again instead of restored: load the saved folder without a "
                "config (its quantization is recorded in quantkit_quantization.json)."
            )
    restored = ", ".join(f"{name} ({backend})" for name, backend in saved.items())
    return ok(f"{restored} restored from {folder.name} without a config.")


__all__ = ["check_reloaded"]
