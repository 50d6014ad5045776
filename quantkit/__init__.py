"""quantkit: learn and explore how diffusers pipelines are quantized.

The workflow, one folder or module each: config (`PipelineQuantizationConfig`, `QuantSpec`) -> planning
(`plan`) -> load (`load_pipeline`, `save_pipeline`) -> measure (`footprint`) -> comparison (`compare`) ->
show (`quantkit.widgets`, plots and reports). Backends live in `quantkit.backends`, one adapter per library.

`import quantkit` stays light: torch, diffusers, transformers, the backends and ipywidgets are
imported only when a function that needs them runs (the names below load on first use).
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# config and planning are light (no torch at import): imported eagerly.
from .backends import BACKENDS  # noqa: E402
from .config import PipelineQuantizationConfig, QuantSpec  # noqa: E402
from .planning import EMBEDDED_PIPELINE, LoadPlan, plan  # noqa: E402

_LAZY = {
    "load_pipeline": "quantkit.load",
    "save_pipeline": "quantkit.load",
    "footprint": "quantkit.measure.footprint",
    "compare": "quantkit.comparison",
    "CompareResults": "quantkit.comparison",
    "CompareSettings": "quantkit.comparison",
    "fit": "quantkit.planning.fit",
    "GPUS": "quantkit.planning.gpus",
    "QuantVariant": "quantkit.comparison.variants",
}

__all__ = ["BACKENDS", "EMBEDDED_PIPELINE", "LoadPlan", "PipelineQuantizationConfig", "QuantSpec", "plan", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
