"""Measurements, one module per kind: `footprint` (true bytes of a loaded model or pipeline)."""
