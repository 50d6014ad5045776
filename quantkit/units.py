"""Small formatting helpers for bytes and tables (used by plans, footprints and reports)."""

from __future__ import annotations


def human_bytes(n: float | int | None) -> str:
    """1536 -> '1.5 KB' (powers of 1024, the way GPU memory is quoted)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table (what `repr` of a plan or footprint prints)."""
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)
    ]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(s.rstrip() for s in out)
