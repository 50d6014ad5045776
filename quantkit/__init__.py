"""quantkit: learn and explore how diffusers pipelines are quantized.

The workflow, one module each: config (`PipelineQuantizationConfig`, `QuantSpec`) -> plan
(`plan`) -> load (`load_pipeline`, `save_pipeline`) -> measure (`footprint`) -> show (widgets).

`import quantkit` stays light: torch, diffusers, transformers, the backends and ipywidgets are
imported only when a function that needs them runs (the names below load on first use).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

__version__ = "0.1.0"

EMBEDDED_PIPELINE = Path(__file__).parent / "embedded" / "tiny-flux-shapes"
"""Folder of the tiny FLUX-layout pipeline quantkit ships and uses when no source is given."""

_LAZY = {
    "PipelineQuantizationConfig": "quantkit.config",
    "QuantSpec": "quantkit.config",
    "BACKENDS": "quantkit.backends",
    "plan": "quantkit.plan",
    "LoadPlan": "quantkit.plan",
    "load_pipeline": "quantkit.load",
    "save_pipeline": "quantkit.load",
    "footprint": "quantkit.measure.footprint",
}

__all__ = ["EMBEDDED_PIPELINE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
