"""Checkers for the notebooks' exercises: each takes the learner's answer and says whether it is right.

Every checker follows the same contract, so a notebook cell can call it at any time:
- the answer is still the placeholder (`...` or None, or a function that returns None): it prints what to do —
  a notebook run top to bottom (nbval, CI) never fails on an unanswered exercise;
- the answer is wrong: it raises AssertionError whose message says what is wrong and gives a hint (never the
  answer itself);
- the answer is right: it prints a short confirmation starting with "Correct!".

They return None, so a notebook cell that ends with a check shows only the printed text.

The expected answers are computed from first principles (or from the results and tables passed in), never stored
as bare numbers, so the checkers stay true when the inputs change. tests/test_notebook_exercises.py runs each one
with the placeholder, with the mistakes a learner makes, and with the solution.

One module per group of lessons; everything is re-exported here (`from quantkit.show.exercises import check_x`):

| module | notebooks | checkers |
|---|---|---|
| `basics` | 01, 02 | `check_flux_int8_gb`, `check_per_channel_int8`, `check_pack_int4` |
| `configs` | 03, 04 | `check_simple_config` (debug a config), `check_mapping` |
| `measuring` | 05, 06, 07 | `check_pareto`, `check_public_fit`, `check_gguf_bytes`, `check_compression_ratio` |
| `precision` | 08, 09 | `check_kept_layers`, `check_int8_dynamic_linear` |
| `sharing` | 10 | `check_reloaded` |
| `fitting` | 13, 14 | `check_fits_gpu` (the predicted peak on a T4), `check_capstone_choice` (from qk.fit's table) |

Units: GB = 10**9 bytes (published weight files), GiB = 2**30 bytes (GPU memory, the public figures, quantkit's
tables). The public FLUX.1-dev figures are GiB of `torch.cuda.max_memory_reserved` (`public_flux_table()`).
"""

from __future__ import annotations

from ._common import (
    FLUX_DEV_BF16_GB,
    FLUX_DEV_PUBLIC,
    FLUX_DEV_PUBLIC_QUANTIZED,
    GB,
    GIB,
    PUBLIC_NOTE,
    public_flux_table,
)
from .basics import (
    check_flux_int8_gb,
    check_pack_int4,
    check_per_channel_int8,
    flux_dev_gb,
    reference_pack_int4,
    reference_per_channel_int8,
)
from .configs import check_mapping, check_simple_config
from .fitting import capstone_expected, check_capstone_choice, check_fits_gpu, predict_flux_peak
from .measuring import (
    check_compression_ratio,
    check_gguf_bytes,
    check_pareto,
    check_public_fit,
    gguf_bytes,
    pareto_variants,
)
from .precision import check_int8_dynamic_linear, check_kept_layers, reference_int8_dynamic_linear
from .sharing import check_reloaded

__all__ = [
    "FLUX_DEV_BF16_GB",
    "FLUX_DEV_PUBLIC",
    "FLUX_DEV_PUBLIC_QUANTIZED",
    "GB",
    "GIB",
    "PUBLIC_NOTE",
    "capstone_expected",
    "check_capstone_choice",
    "check_compression_ratio",
    "check_fits_gpu",
    "check_flux_int8_gb",
    "check_gguf_bytes",
    "check_int8_dynamic_linear",
    "check_kept_layers",
    "check_mapping",
    "check_pack_int4",
    "check_pareto",
    "check_per_channel_int8",
    "check_public_fit",
    "check_reloaded",
    "check_simple_config",
    "flux_dev_gb",
    "gguf_bytes",
    "pareto_variants",
    "predict_flux_peak",
    "public_flux_table",
    "reference_int8_dynamic_linear",
    "reference_pack_int4",
    "reference_per_channel_int8",
]

# the checkers of notebooks 10-12 (sharing, offload, LoRA) live in quantkit.show.exercises.interop
from .interop import (  # noqa: E402,F401
    FORMAT_READERS,
    LORA_SCENARIOS,
    Saved,
    check_diffusers_shareable,
    check_lora_strategy,
    check_offload_choice,
    saved_formats,
)
