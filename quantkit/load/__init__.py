"""Loading and saving quantized pipelines.

- `pipeline.py`: `load_pipeline` (carries out a plan) and `load_component`;
- `stream.py`: the streaming loader (one tensor at a time, each Linear quantized as it fills);
- `allocator.py`: the scoped glibc tuning that keeps the streamed CPU peak low;
- `placement.py`: `device_map` (components over devices by their true quantized bytes);
- `save.py` / `restore.py`: `save_pipeline` and reading its folders back.
"""

from .pipeline import load_component, load_pipeline
from .save import save_pipeline

__all__ = ["load_component", "load_pipeline", "save_pipeline"]
