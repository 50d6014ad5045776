"""Showing results: `plots` (matplotlib Figures of a comparison) and `report` (report.md / report.html)."""
