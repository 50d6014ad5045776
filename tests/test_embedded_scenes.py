"""The shipped embedded pipeline v2 (quantkit/embedded/tiny-flux-scenes): its layout and budgets, that its card's
figures are its own files' figures, what it draws, and that quantization visibly costs it quality — the reason
it exists (issue 16). Its training code is tested in test_embedded_v2.py."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from quantkit.models import SCENES_PIPELINE_DIR, scene_scorer
from quantkit.models.scenes_eval import scene_pairs
from tests.helpers import assert_flux_layout

# A fixed CI sample of held-out pairs (seed 7; the card's test pairs use seed 0, its validation pairs seed 1).
CI_COUNTS = {"single": 8, "relation": 12, "count": 4}
CI_SEED = 7
# Measured on that sample (fp32, the defaults, the 2-core CPU; counts of 24 images, 13 that name a size, 12
# relation prompts): background 24, colour 22, count 20, shape 13, size 10/13, relation 10/12. With the prompts
# replaced by "" (a pipeline that ignores its text) the same seeds score background 7, colour 2, count 10, shape 4,
# relation 4/12. The thresholds allow two misses more than measured, for kernels that round differently on other
# CPUs, and stay far above the blind pipeline.
MIN_CI = {"background": 22 / 24, "color": 20 / 24, "count": 18 / 24, "shape": 11 / 24, "relation": 8 / 12}
# Mean PSNR (dB) of the first six images against fp32, quanto on the transformer: int8 62.2, int4 38.4, int2 25.9.


@pytest.fixture(scope="module")
def scenes_pipe():
    import quantkit

    pipe = quantkit.load_pipeline(SCENES_PIPELINE_DIR, device="cpu", progress=False)  # fp32, as the card measures
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ci_images(scenes_pipe):
    from quantkit.models.evaluation import generate

    pairs = scene_pairs(CI_COUNTS, CI_SEED)
    return pairs, generate(scenes_pipe, pairs)


def test_folder_is_a_flux_pipeline_within_the_issues_budgets():
    assert_flux_layout(SCENES_PIPELINE_DIR)
    folder_bytes = sum(f.stat().st_size for f in SCENES_PIPELINE_DIR.rglob("*") if f.is_file())
    assert folder_bytes <= 60e6, folder_bytes  # the issue's budget for the whole folder

    from safetensors import safe_open

    with safe_open(SCENES_PIPELINE_DIR / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        parameters = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    # the issue asks for "roughly 10-40 M parameters" (a visible part of the process): it has 9.1 M (36 MB in fp32)
    assert 8e6 <= parameters <= 40e6, parameters

    defaults = json.loads((SCENES_PIPELINE_DIR / "generation_defaults.json").read_text())
    assert defaults["height"] == defaults["width"] == 64 and defaults["max_sequence_length"] == 16
    # true CFG needs a negative prompt in FluxPipeline; without one it silently runs unguided
    assert defaults.get("true_cfg_scale", 1.0) <= 1.0 or defaults.get("negative_prompt") == ""

    report = json.loads((SCENES_PIPELINE_DIR / "training_report.json").read_text())
    training_s = sum(v for k, v in report["timings_s"].items() if k != "evaluate")
    assert training_s <= 3600, report["timings_s"]  # trained within the hour on the 2-core machine
    assert report["seconds_per_image"] <= 1.0  # the issue's budget at the defaults, measured there


def test_the_cards_heldout_figures_are_its_csv_recomputed():
    """The held-out figures in the report (and so the card) come from heldout_scores.csv, image by image."""
    report = json.loads((SCENES_PIPELINE_DIR / "training_report.json").read_text())
    table = pd.read_csv(SCENES_PIPELINE_DIR / "heldout_scores.csv")
    # the CSV stores verdicts as True/False/empty; scene_adherence counts the non-empty ones
    for column in [c for c in table.columns if c.endswith("_ok")]:
        table[column] = table[column].map({True: True, False: False, "True": True, "False": False})
    summary = scene_scorer.scene_adherence(table)
    assert summary["n"] == report["heldout"]["n"] == 300
    for attribute in ("all", *scene_scorer.ATTRIBUTES):
        assert summary[attribute] == pytest.approx(report["heldout"][attribute]), attribute
    card = (SCENES_PIPELINE_DIR / "README.md").read_text()
    single = summary["by_form"]["single"]
    for attribute in ("color", "shape", "size"):  # the card's held-out table, single-object column
        row = f"| {attribute} | {single[attribute]:.1%} | {single['n_' + attribute]} |"
        assert row in card, row
    assert "quanto-int2" in card and "bnb-nf4" in card  # the quantization table is in the card


def test_draws_the_prompt_language_on_a_fixed_heldout_sample(ci_images):
    pairs, images = ci_images
    assert images.shape == (len(pairs), 64, 64, 3)
    table = scene_scorer.score_scenes(list(images), [p for p, _ in pairs])
    summary = scene_scorer.scene_adherence(table)
    for attribute, least in MIN_CI.items():
        assert summary[attribute] >= least, (attribute, summary)


def test_quantization_costs_measurable_quality(scenes_pipe, ci_images):
    """8-bit stays close to the fp32 images, 4-bit measurably further, 2-bit far: PSNR against the same seeds'
    fp32 images (the card's table measures the same on 120 images)."""
    import quantkit
    from quantkit.measure.quality import psnr
    from quantkit.models.evaluation import generate

    pairs, reference = ci_images
    pairs, reference = pairs[:6], reference[:6]
    mean_psnr = {}
    for dtype in ("int8", "int4", "int2"):
        config = quantkit.PipelineQuantizationConfig(
            quant_backend="quanto", quant_kwargs={"weights_dtype": dtype}, components_to_quantize=["transformer"]
        )
        pipe = quantkit.load_pipeline(SCENES_PIPELINE_DIR, config, device="cpu", progress=False)
        pipe.set_progress_bar_config(disable=True)
        mean_psnr[dtype] = float(np.mean(psnr(reference, generate(pipe, pairs))))
        del pipe
    # measured: int8 62.2, int4 38.4, int2 25.9 dB (see the top of this file)
    assert mean_psnr["int8"] >= 50.0, mean_psnr
    assert mean_psnr["int4"] <= mean_psnr["int8"] - 10.0, mean_psnr
    assert mean_psnr["int2"] <= mean_psnr["int4"] - 5.0, mean_psnr


def test_bf16_load_draws_the_same_scene():
    """A bf16 load (what README's examples use) draws the scene its prompt asks for: background, colours and the
    relation (measured; the blue square comes out rounded, as the card's shape figures say it often does)."""
    import quantkit

    assert quantkit.EMBEDDED_PIPELINE.resolve() == SCENES_PIPELINE_DIR.resolve()  # the default source
    pipe = quantkit.load_pipeline(torch_dtype=torch.bfloat16, device="cpu", progress=False)  # None = the embedded one
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle left of a blue square on a yellow background"
    image = pipe(prompt, generator=torch.Generator().manual_seed(1_000_000)).images[0]
    assert image.size == (64, 64)
    result = scene_scorer.score_scene(image, prompt)
    assert result["background_ok"] and result["color_ok"] and result["relation_ok"], result
