"""The comparison engine: every variant of one pipeline measured side by side, saved as it goes.

- `variants.py`: the default catalogue, variants from a file, names;
- `settings.py`: `CompareSettings` (validated), `Job`, `VariantRecord`;
- `store.py`: results.jsonl / meta.json / the lock (crash-safe, resumable);
- `results.py`: `CompareResults`, rebuilt from a folder;
- `runner.py`: one fresh worker process per variant (forkserver), progress, timeout, stop;
- `worker.py`: what a worker does (load, measure, draw, score);
- `engine.py`: `compare()`.
"""

from .engine import compare
from .results import FRAME_COLUMNS, CompareResults
from .settings import CompareSettings, Job, VariantRecord
from .store import IMAGES_DIR, META_FILE, RESULTS_FILE, SENSITIVITY_DIR, TIMING_FIELDS, append_record, read_records
from .variants import DEFAULT_PROMPTS, DEFAULT_SEEDS, default_variants, read_variants, slug, variants_to_dict

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_SEEDS",
    "FRAME_COLUMNS",
    "IMAGES_DIR",
    "META_FILE",
    "RESULTS_FILE",
    "SENSITIVITY_DIR",
    "TIMING_FIELDS",
    "CompareResults",
    "CompareSettings",
    "Job",
    "VariantRecord",
    "append_record",
    "compare",
    "default_variants",
    "read_records",
    "read_variants",
    "slug",
    "variants_to_dict",
]
