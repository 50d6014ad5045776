"""quantkit: learn and explore how diffusers pipelines are quantized.

The workflow, one module each: config (`PipelineQuantizationConfig`, `QuantSpec`) -> plan
(`plan`) -> load (`load_pipeline`, `save_pipeline`) -> measure (`footprint`, `compare`) -> show
(`quantkit.widgets`, plots and reports).

`import quantkit` stays light: torch, diffusers, transformers, the backends and ipywidgets are
imported only when a function that needs them runs (the names below load on first use).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

__version__ = "0.1.0"

EMBEDDED_PIPELINE = Path(__file__).parent / "embedded" / "tiny-flux-shapes"
"""Folder of the tiny FLUX-layout pipeline quantkit ships and uses when no source is given."""

# config and plan are light (no torch at import): imported eagerly, which also keeps the function `plan`
# from being shadowed by its submodule `quantkit.plan` when another module imports that submodule.
from .backends import BACKENDS  # noqa: E402
from .config import PipelineQuantizationConfig, QuantSpec  # noqa: E402
from .plan import LoadPlan, plan  # noqa: E402
from .compare import compare  # noqa: E402  (light too: workers import the heavy stack)

_LAZY = {
    "load_pipeline": "quantkit.load",
    "save_pipeline": "quantkit.load",
    "footprint": "quantkit.measure.footprint",
}

__all__ = ["BACKENDS", "EMBEDDED_PIPELINE", "LoadPlan", "PipelineQuantizationConfig", "QuantSpec", "compare", "plan",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
