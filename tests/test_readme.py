"""README.md's workflow block runs as written, and what it prints is what the prose says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _workflow_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The workflow, in code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_workflow_block_runs_and_prints_what_it_says(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "QUANTKIT_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _workflow_block()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # the plan: per component, the backend on the two components named, the rest as they are, bf16 like the load
    assert "LoadPlan for FluxPipeline from the embedded pipeline on cpu (bfloat16)" in out
    plan_text = out.split("true bytes", 1)[0]  # the plan is printed before the footprint
    plan_rows = {line.split()[0]: line for line in plan_text.splitlines() if line.startswith(("transformer ", "vae "))}
    assert "bitsandbytes_4bit nf4" in plan_rows["transformer"] and "from_pretrained" in plan_rows["vae"]
    # the footprint: a readable table with every column, a total row
    assert re.search(r"^component\s+true bytes\s+reported\s+params\s+bits/weight", out, re.M)
    assert re.search(r"^total\s+\d", out, re.M)
    # the saved folder is diffusers' own format and reloads quantized
    assert (tmp_path / "my-nf4-pipeline" / "model_index.json").is_file()
    assert "quantization_config" in (tmp_path / "my-nf4-pipeline" / "transformer" / "config.json").read_text()
    # FLUX.1-dev planned offline, with its predicted peak, and fit's answer for a T4
    assert "PeakEstimate on cuda" in out
    assert "fit: usable memory 14.45 GiB (T4)" in out and re.search(r"\+ model offload .* yes ", out)
