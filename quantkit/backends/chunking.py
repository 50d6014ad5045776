"""How the chunked quantizers of the backends split a weight: rows per chunk, by elements.

On the CPU a chunk is about CHUNK elements (1 MiB of float32 scratch per buffer, in L2/L3 cache); there the
reductions and round/clamp run in float32 (2-3x faster than bfloat16 kernels on a CPU, and exact, since every
bfloat16/float16 value and every small integer is a float32). On a GPU a chunk is DEVICE_CHUNK elements: fewer,
larger kernels, a few MiB of scratch.
"""

from __future__ import annotations

CHUNK = 1 << 18
DEVICE_CHUNK = 1 << 20


def chunk_rows(n_rows: int, n_cols: int, device_type: str = "cpu", multiple: int = 1) -> int:
    """Rows per chunk of an (n_rows, n_cols) weight: about CHUNK (CPU) or DEVICE_CHUNK elements, at least one row,
    and a whole number of `multiple`-element blocks; at most n_rows."""
    rows = max(1, (CHUNK if device_type == "cpu" else DEVICE_CHUNK) // n_cols)
    while (rows * n_cols) % multiple:
        rows += 1
    return min(rows, n_rows)
