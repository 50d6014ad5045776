"""Planning: what a load will do, per component, before any weight is read.

- `sources.py`: the pipeline folder (embedded, local or hub), model_index.json, meta-device models;
- `checks.py`: what is on disk, checked before anything is read (component folders, JSON files, whole safetensors,
  saved folders, classes, skip lists), each broken input explained with its path;
- `layers.py`: which Linear layers a backend quantizes, and why the rest stay in full precision;
- `model.py`: the values a plan is made of (`LoadPlan`, `ComponentPlan`, `Loader`);
- `planner.py`: `plan(source, config, device=, torch_dtype=)`.
"""

from .model import ComponentPlan, Loader, LoadPlan
from .planner import plan
from .sources import EMBEDDED_PIPELINE, resolve_source

__all__ = ["EMBEDDED_PIPELINE", "ComponentPlan", "LoadPlan", "Loader", "plan", "resolve_source"]
