"""Small formatting helpers for bytes and tables (used by plans, footprints, reports and plots).

Sizes are printed in binary units with their IEC names, so that the name says which unit it is:
1 KiB = 1024 bytes, 1 MiB = 2**20 bytes, 1 GiB = 2**30 bytes (nvidia-smi prints MiB too). Where a source
quotes decimal sizes (model cards, "a 16 GB card": 1 GB = 10**9 bytes), `human_bytes(n, decimal=True)` prints
kB / MB / GB with those meanings.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024**2
GiB = 1024**3

UNITS_NOTE = "Sizes are in binary units: 1 KiB = 1024 bytes, 1 MiB = 1024 KiB = 2^20 bytes, 1 GiB = 2^30 bytes."
"""One sentence naming the units `human_bytes` prints (reports say it once, at the top)."""

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB")


def human_bytes(n: float | int | None, *, decimal: bool = False) -> str:
    """A byte count as text: binary units by default, decimal ones when asked.

    Args:
        n: bytes (None prints "-"; negative counts keep their sign).
        decimal: False (default): powers of 1024 labelled KiB / MiB / GiB / TiB, e.g. 1536 -> "1.5 KiB".
            True: powers of 1000 labelled kB / MB / GB / TB, e.g. 1.5e9 -> "1.5 GB" — for comparing with a
            source that quotes decimal sizes.

    Returns:
        "512 B", "1.5 KiB", "12.1 MiB", "23.8 GB" (one decimal above bytes).
    """
    if n is None:
        return "-"
    n = float(n)
    base, units = (1000, _DECIMAL) if decimal else (1024, _BINARY)
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= base
    raise AssertionError("unreachable")  # the last unit always returns


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table (what `repr` of a plan or footprint prints)."""
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)
    ]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(s.rstrip() for s in out)
