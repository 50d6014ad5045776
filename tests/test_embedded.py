"""The embedded pipeline v1 (quantkit/embedded/tiny-flux-shapes, no longer the default) and the training script
that makes it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quantkit.models import SHAPES_PIPELINE_DIR
from quantkit.models.shapes import adherence_summary, heldout_prompts, score_image, score_images
from tests.helpers import assert_flux_layout

REPO = Path(__file__).resolve().parent.parent

# Fixed CI sample: 30 held-out prompt/seed pairs (seed 7 of `heldout_prompts`; the model card's 150 use seed 0).
CI_PAIRS = 30
# The shipped weights score 30/30 color and 30/30 shape on this sample (bf16, this 2-core CPU). The threshold,
# 27/30, allows three misses, for bf16 kernels that round differently on other CPUs; a broken pipeline
# falls far below it (called with FluxPipeline's own T5 length of 512 tokens, color drops to 0%).
MIN_COLOR = MIN_SHAPE = 27 / 30


@pytest.fixture(scope="module")
def embedded():
    from diffusers import DiffusionPipeline

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    pipe = DiffusionPipeline.from_pretrained(SHAPES_PIPELINE_DIR, dtype=torch.bfloat16)
    apply_generation_defaults(pipe, read_generation_defaults(SHAPES_PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_layout_and_size():
    assert_flux_layout(SHAPES_PIPELINE_DIR)
    weights = sum(f.stat().st_size for f in SHAPES_PIPELINE_DIR.rglob("*.safetensors"))
    assert 2e6 < weights <= 20e6, weights
    assert (SHAPES_PIPELINE_DIR / "README.md").stat().st_size > 1000
    assert (SHAPES_PIPELINE_DIR / "grid.png").stat().st_size < 100_000
    defaults = json.loads((SHAPES_PIPELINE_DIR / "generation_defaults.json").read_text())
    # FluxPipeline's own defaults (512 px, T5 padded to 512 tokens) must be overridden
    assert defaults["height"] == defaults["width"] == 32 and defaults["max_sequence_length"] == 16


def test_plain_call_draws_the_prompt(embedded):
    image = embedded("a red circle", generator=torch.Generator().manual_seed(1_234_567)).images[0]
    assert image.size == (32, 32)
    result = score_image(image, "a red circle")
    assert result["color_ok"] and result["shape_ok"], result["predicted"]


def test_adherence_on_fixed_heldout_sample(embedded):
    from quantkit.models.train import generate

    pairs = heldout_prompts(CI_PAIRS, seed=7)
    start = time.perf_counter()
    images = generate(embedded, pairs)
    elapsed = time.perf_counter() - start
    summary = adherence_summary(score_images(images, [p for p, _ in pairs]))
    assert summary["color"] >= MIN_COLOR and summary["shape"] >= MIN_SHAPE, summary
    # the sample is sized to take well under 60 s on 2 CPU cores; the time is reported, not asserted (noisy machines)
    print(f"{CI_PAIRS} images generated and scored in {elapsed:.1f} s")


def test_training_smoke_end_to_end(tmp_path):
    """The script's --smoke preset: a few steps of each stage, save, reload with from_pretrained, generate."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "smoke"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_embedded.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "vae stage:" in run.stdout and "transformer stage:" in run.stdout
    assert "reloaded FluxPipeline" in run.stdout
    report = json.loads((out / "training_report.json").read_text())
    assert report["heldout_bf16"]["n"] == 4
    assert set(report["timings_s"]) == {"data_and_build", "vae", "transformer", "evaluate"}
    assert (out / "generation_defaults.json").is_file()

    # Seeded and reproducible: the same preset run in this process writes the same trained weights.
    from quantkit.models.train import PRESETS, train_embedded

    again = tmp_path / "again"
    train_embedded(again, PRESETS["smoke"], log=lambda message: None)
    for name in ("vae", "transformer"):
        first = (out / name / "diffusion_pytorch_model.safetensors").read_bytes()
        assert first == (again / name / "diffusion_pytorch_model.safetensors").read_bytes(), name


def test_loads_with_quantkit_load_pipeline_and_defaults_apply():
    import quantkit

    pipe = quantkit.load_pipeline(SHAPES_PIPELINE_DIR, torch_dtype=torch.bfloat16, device="cpu", progress=False)
    assert type(pipe).__name__ == "FluxPipeline"
    assert pipe.generation_defaults["max_sequence_length"] == 16
    image = pipe("a green square", generator=torch.Generator().manual_seed(1_000_001)).images[0]
    assert image.size == (32, 32)
    result = score_image(image, "a green square")
    assert result["color_ok"] and result["shape_ok"], result["predicted"]
