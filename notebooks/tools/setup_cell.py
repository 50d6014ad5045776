"""The setup cell every notebook starts with (cell id "setup"), and a command that writes it into the notebooks.

    python notebooks/tools/setup_cell.py notebooks/*.ipynb      # replace each notebook's "setup" cell with SETUP

tests/test_notebook_exercises.py checks that every notebook's setup cell is exactly SETUP. Edit it here, run the
command, re-execute the notebooks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETUP = """\
# Setup, the same in every notebook. On Colab it installs quantkit[colab] (the backends Colab lacks, at the versions
# CI tests) without touching Colab's own torch, and says when the session must restart. Everywhere it hides the
# libraries' harmless notices, picks the device and the half-precision dtype, and prints the versions.
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle CPU threads sleep, not spin: a busy CPU stays usable
QUANTKIT = os.environ.get("QUANTKIT_INSTALL", "quantkit[colab] @ git+https://github.com/quantkit-dev/quantkit")
if "google.colab" in sys.modules:  # instructors: set QUANTKIT to your wheel or git URL (notebooks/README.md)
    import importlib.metadata as md
    import subprocess
    import tempfile

    before = {d.name: d.version for d in md.distributions()}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as keep:  # pip may not replace Colab's torch
        keep.write(f"torch=={md.version('torch')}\\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", keep.name, QUANTKIT], check=True)
    changed = sorted(d.name for d in md.distributions() if before.get(d.name) != d.version)
    loaded = {d for m, ds in md.packages_distributions().items() if m in sys.modules for d in ds} & set(changed)
    print("installed or upgraded:", ", ".join(changed) or "nothing")
    if loaded:
        print("RESTART NEEDED (Runtime > Restart session, then run this cell again):", ", ".join(sorted(loaded)),
              "had been imported before the upgrade.")

import logging
import warnings

logging.disable(logging.WARNING)  # import-time notices about optional kernels this machine lacks: harmless here
# the libraries' deprecation notices (FutureWarning): harmless here
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|torchao|transformers)\\b")
import torch

import quantkit as qk
from quantkit.measure.environment import versions

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# half precision: bfloat16 on CPUs and on GPUs that have it (Ampere and later); float16 on a T4, which has no bf16
BF16 = DEVICE == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
DTYPE = torch.bfloat16 if BF16 else torch.float16
print(" | ".join(f"{name} {version or '-'}" for name, version in versions().items()))
print(f"DEVICE = {DEVICE!r} ({torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'}), DTYPE = {DTYPE}")"""


def apply(path: Path) -> bool:
    """Replace the source of `path`'s cell with id "setup" by SETUP; True when the notebook changed."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c.get("id") == "setup"]
    if len(cells) != 1:
        raise SystemExit(f"{path}: expected one cell with id 'setup', found {len(cells)}")
    source = SETUP.splitlines(keepends=True)
    if cells[0]["source"] == source:
        return False
    cells[0]["source"] = source
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(("updated " if apply(Path(arg)) else "unchanged ") + arg)
