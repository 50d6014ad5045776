"""Tidy executed notebooks before they are committed, and the checks CI makes on them.

    jupyter nbconvert --to notebook --execute --inplace notebooks/05-backend-shootout.ipynb
    python notebooks/tools/tidy.py notebooks/05-backend-shootout.ipynb     # prune widget state, then check

Pruning keeps, of the widget state Jupyter stores, only the models the stored outputs display (and the models
those refer to): a progress bar that ran and closed, or a widget built and never shown, leaves nothing behind.

Harmless notices: the setup cell hides the libraries' import-time notices in the notebook's own process, but
`qk.compare` runs its variants in worker processes, which print them again to the cell (torchao's optional
kernels that do not load on this machine, with their absolute paths; torch's pytree notes; bitsandbytes' optional
`kernels` package; transformers' torchvision fallback). Stored stderr lines matching `HARMLESS` are dropped; every
other line stays.

`problems(path)` lists what CI refuses (tests/test_notebook_exercises.py): a notebook over 1 MB; an absolute
machine path in an output or in the stored widget state (`ABS_PATH`: it says where the notebook ran, and differs
on every machine); a code cell without an execution count, or counts out of order (nbval needs both); an image
stored at fewer than 90 dpi worth of pixels is not checked here — the figures set their own dpi.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_BYTES = 1_000_000
ABS_PATH = re.compile(r"(?<![\w.~])/(?:root|home|tmp|work|usr|opt|var|private|Users|content|mnt)/[^\s'\"<>]*")
HARMLESS = [
    re.compile(p)
    for p in (
        r"^Failed to load .*torchao/_C.*: Could not load this library",
        r"^W\d{4} [\d:.]+ \d+ .*torch/utils/_pytree\.py:\d+\] .* is an Enum subclass",
        r"^Failed to load CPU gemm_4bit_forward from kernels-community",
        r"^Unable to import `torchao` Tensor objects",
        r"^\[transformers\] `\w+ImageProcessor` requires torchvision",
    )
]
VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"


def _refs(value, out: set[str]) -> None:
    if isinstance(value, str) and value.startswith("IPY_MODEL_"):
        out.add(value.removeprefix("IPY_MODEL_"))
    elif isinstance(value, list | tuple):
        for v in value:
            _refs(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _refs(v, out)


def shown_models(nb: dict) -> set[str]:
    """Model ids the outputs display, and every model they refer to (layouts, styles, children)."""
    todo = {
        o["data"][VIEW]["model_id"] for c in nb["cells"] for o in c.get("outputs", []) if VIEW in o.get("data", {})
    }
    state = nb.get("metadata", {}).get("widgets", {}).get(STATE, {}).get("state", {})
    keep: set[str] = set()
    while todo:
        model = todo.pop()
        if model in keep:
            continue
        keep.add(model)
        found: set[str] = set()
        _refs(state.get(model, {}).get("state", {}), found)
        todo |= found - keep
    return keep


def drop_harmless(nb: dict) -> int:
    """Remove stderr lines matching HARMLESS (and stderr outputs left empty); returns how many lines went."""
    dropped = 0
    for cell in nb["cells"]:
        kept = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                lines = "".join(o["text"]).splitlines(keepends=True)
                rest = [line for line in lines if not any(h.search(line) for h in HARMLESS)]
                dropped += len(lines) - len(rest)
                if not "".join(rest).strip():
                    continue
                o["text"] = rest
            kept.append(o)
        if "outputs" in cell:
            cell["outputs"] = kept
    return dropped


def prune(nb: dict) -> int:
    """Drop the widget models no output shows; returns how many were dropped."""
    widgets = nb.get("metadata", {}).get("widgets", {})
    state = widgets.get(STATE, {}).get("state")
    if state is None:
        return 0
    keep = shown_models(nb)
    dropped = [m for m in state if m not in keep]
    for m in dropped:
        del state[m]
    if not state:
        del nb["metadata"]["widgets"]
    return len(dropped)


def _output_text(cell: dict) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append("".join(o.get("text", "")))
        elif o.get("output_type") == "error":
            parts.append(o.get("evalue", "") + "\n".join(o.get("traceback", [])))
        else:
            for kind, data in o.get("data", {}).items():
                if kind.startswith("text/"):
                    parts.append("".join(data) if isinstance(data, list) else str(data))
    return "\n".join(parts)


def problems(path: Path) -> list[str]:
    """What CI refuses in a stored notebook (empty when it is fine)."""
    text = path.read_text()
    nb = json.loads(text)
    out = []
    if len(text.encode()) > MAX_BYTES:
        out.append(f"{path.name}: {len(text.encode()):,} bytes, over {MAX_BYTES:,}")
    counts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        counts.append(cell.get("execution_count"))
        for hit in sorted(set(ABS_PATH.findall(_output_text(cell)))):
            out.append(f"{path.name} cell {cell.get('id')}: absolute path in an output: {hit}")
    widget_state = json.dumps(nb.get("metadata", {}).get("widgets", {}), ensure_ascii=False)
    for hit in sorted(set(ABS_PATH.findall(widget_state))):  # a widget's stored value shows as its output does
        out.append(f"{path.name}: absolute path in the stored widget state: {hit}")
    if None in counts:
        out.append(f"{path.name}: {counts.count(None)} code cell(s) not executed (nbval needs execution counts)")
    elif counts != sorted(counts):
        out.append(f"{path.name}: execution counts out of order: run the notebook top to bottom")
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            text = o.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if VIEW in o.get("data", {}) and re.search(r"it/s\]|s/it\]", text):
                out.append(f"{path.name} cell {cell.get('id')}: a progress-bar widget in the outputs")
    unshown = len(nb.get("metadata", {}).get("widgets", {}).get(STATE, {}).get("state", {})) - len(
        shown_models(nb) & set(nb.get("metadata", {}).get("widgets", {}).get(STATE, {}).get("state", {}))
    )
    if unshown:
        out.append(f"{path.name}: {unshown} stored widget model(s) no output shows (run tidy.py)")
    return out


def main(paths: list[str]) -> int:
    bad = 0
    for arg in paths:
        path = Path(arg)
        nb = json.loads(path.read_text())
        dropped, lines = prune(nb), drop_harmless(nb)
        if dropped or lines:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        found = problems(path)
        size = path.stat().st_size
        print(
            f"{path.name}: {size / 1024:.0f} KiB, {dropped} widget model(s) pruned, {lines} harmless stderr line(s)"
            " dropped" + ("" if found else ", ok")
        )
        for p in found:
            print("  " + p)
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
