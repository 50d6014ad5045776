"""The scenes world (v2): grammar, renderer, scorer; and the quality intervals and Pareto overlap built for it."""

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from quantkit.comparison.pareto import overlapping
from quantkit.measure.quality import adherence, bootstrap_ci, image_quality
from quantkit.models import scene_scorer, scenes

# -- grammar ----------------------------------------------------------------------------------------------------

VERBATIM = [
    "a red circle",
    "a small blue square",
    "a red circle left of a blue square",
    "a red circle right of a blue square",
    "a red circle above a blue square",
    "a red circle below a blue square",
    "two green triangles",
]


@pytest.mark.parametrize("prompt", VERBATIM + [p + " on a yellow background" for p in VERBATIM])
def test_grammar_parses_the_issues_forms_verbatim(prompt):
    scene = scenes.parse_prompt(prompt)
    assert scene.prompt() == prompt
    assert scene.background == ("yellow" if "yellow" in prompt else "")
    assert prompt in scenes.example_prompts()


def test_grammar_meaning():
    scene = scenes.parse_prompt("a small blue square left of a large red circle on a black background")
    assert scene.form == "relation" and scene.relation == "left of" and scene.background == "black"
    assert scene.things == (scenes.Thing("blue", "square", "small"), scenes.Thing("red", "circle", "large"))
    count = scenes.parse_prompt("two green triangles")
    assert count.form == "count" and count.n_objects == 2 and count.objects[0] == count.objects[1]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a pink circle", "Cannot parse 'a pink circle'"),
        ("a yellow circle on a yellow background", "would be invisible"),
        ("a red circle left of a red circle", "must differ in color or shape"),
    ],
)
def test_grammar_rejects_with_a_useful_message(prompt, message):
    with pytest.raises(ValueError, match=message):
        scenes.parse_prompt(prompt)


def test_sampled_prompts_parse_and_use_only_the_vocabulary():
    rng = np.random.default_rng(0)
    vocabulary = set(scenes.vocabulary())
    forms = set()
    for _ in range(500):
        scene = scenes.sample_scene(rng)
        prompt = scene.prompt()
        assert scenes.parse_prompt(prompt) == scene
        assert set(prompt.split()) <= vocabulary
        assert len(prompt.split()) <= 14  # + </s> = 15 T5 tokens; + BOS/EOS = 16 CLIP tokens
        forms.add(scene.form)
    assert forms == {"single", "relation", "count"}


def test_heldout_prompts_are_deterministic_and_use_unseen_seeds():
    pairs = scenes.heldout_prompts(20, seed=0, form="relation")
    assert pairs == scenes.heldout_prompts(20, seed=0, form="relation")
    assert all(scenes.parse_prompt(p).form == "relation" for p, _ in pairs)
    assert min(s for _, s in pairs) >= scenes.HELDOUT_SEED_OFFSET
    assert pairs != scenes.heldout_prompts(20, seed=1, form="relation")


# -- renderer and scorer ----------------------------------------------------------------------------------------


def test_render_is_deterministic_and_64_px():
    a = scenes.render_scene("a red circle left of a blue square", seed=3)
    b = scenes.render_scene("a red circle left of a blue square", seed=3)
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a)[0, 0].tolist() == list(scenes.DEFAULT_BACKGROUND)


@pytest.fixture(scope="module")
def renders():
    return scenes.sample_dataset(400, seed=11)


def test_scorer_is_100_percent_on_the_datasets_renders(renders):
    images, prompts = renders
    summary = scene_scorer.scene_adherence(scene_scorer.score_scenes(list(images), prompts))
    for attribute in scene_scorer.ATTRIBUTES:
        assert summary[attribute] == 1.0, (attribute, summary)
    assert summary["all"] == 1.0 and summary["n_relation"] > 100 and summary["n_size"] > 100


def test_scorer_is_robust_to_soft_edges_and_color_drift(renders):
    images, prompts = renders
    rng = np.random.default_rng(0)
    soft = []
    for image in images:
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
        drift = rng.uniform(-15, 15, 3)  # one color shift per image, as a model's tint would be
        soft.append(np.clip(blurred + drift + rng.normal(0, 4, blurred.shape), 0, 255).astype(np.uint8))
    summary = scene_scorer.scene_adherence(scene_scorer.score_scenes(soft, prompts))
    assert summary["all"] == 1.0, summary


def test_scorer_reads_blurred_small_triangles_by_skew_not_fill():
    # A VAE's blur rounds a small triangle's corners until its fill ratio passes a circle's threshold (0.70);
    # the skew of its row profile stays far from a symmetric shape's 0.
    for shape in ("triangle", "circle", "square"):
        for seed in range(10):
            image = scenes.render_scene(f"a small red {shape}", seed=seed).filter(ImageFilter.GaussianBlur(1.5))
            (seen,) = scene_scorer.analyze_scene(image)["objects"]
            assert seen["shape"] == shape, (shape, seed, seen)
            if shape == "triangle":
                assert seen["fill_ratio"] > 0.70 and seen["skewness"] < scene_scorer.TRIANGLE_MAX_SKEW, seen
            else:
                assert abs(seen["skewness"]) < 0.05, seen


def test_scorer_catches_each_kind_of_mistake():
    def verdict(drawn: str, asked: str) -> dict:
        return scene_scorer.score_scene(scenes.render_scene(drawn, seed=1), asked)

    assert not verdict("a blue circle", "a red circle")["color_ok"]
    assert not verdict("a red square", "a red circle")["shape_ok"]
    assert not verdict("a red triangle", "a red circle")["shape_ok"]
    assert not verdict("a red circle", "a red triangle")["shape_ok"]
    assert not verdict("a red square", "a red triangle")["shape_ok"]
    assert not verdict("a large red circle", "a small red circle")["size_ok"]
    assert not verdict("a red circle", "two red circles")["count_ok"]
    assert not verdict("a red circle on a blue background", "a red circle")["background_ok"]
    swapped = verdict("a red circle right of a blue square", "a red circle left of a blue square")
    assert not swapped["relation_ok"] and swapped["color_ok"] and swapped["shape_ok"]
    assert not verdict("a red circle above a blue square", "a red circle left of a blue square")["relation_ok"]
    half = verdict("a red circle left of a green square", "a red circle left of a blue square")
    assert half["obj1_color_ok"] and not half["obj2_color_ok"] and not half["color_ok"]


# -- quality intervals ------------------------------------------------------------------------------------------


def test_bootstrap_interval_of_a_known_distribution():
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, 400)
    low, high = bootstrap_ci(values, seed=0)
    # the mean's standard error is 2 / √400 = 0.1: a 95% interval is about ±0.196 around the sample mean
    assert low < 10.0 < high
    assert high - low == pytest.approx(2 * 1.96 * 0.1, rel=0.15)
    assert bootstrap_ci(values, seed=0) == [low, high]  # deterministic given the seed


def test_bootstrap_interval_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    widths = []
    for n in (25, 100, 400):
        low, high = bootstrap_ci(rng.normal(0.0, 1.0, n), seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.3)  # ∝ 1/√n


def test_bootstrap_clusters_by_group_and_skips_non_finite():
    values = np.array([1.0, 1.0, 5.0, 5.0, np.inf])
    assert bootstrap_ci(values, ["a", "a", "b", "b", "c"])[0] >= 1.0
    assert bootstrap_ci([3.0, 3.0], ["a", "a"]) == [3.0, 3.0]  # one group: no spread to resample
    assert all(math.isnan(v) for v in bootstrap_ci([np.inf]))


def test_image_quality_reports_intervals_and_scene_adherence():
    prompts = ["a red circle left of a blue square", "two green triangles", "a small blue square"] * 2
    reference = np.stack([np.asarray(scenes.render_scene(p, seed=i), np.float32) / 255 for i, p in enumerate(prompts)])
    noisy = np.clip(reference + np.random.default_rng(0).normal(0, 0.02, reference.shape), 0, 1).astype(np.float32)
    q = image_quality(noisy, reference, prompts, use_lpips=False, clip=None)
    assert q.psnr_ci[0] <= q.psnr <= q.psnr_ci[1] and q.ssim_ci[0] <= q.ssim <= q.ssim_ci[1]
    assert q.adherence == 1.0 and q.adherence_ci == [1.0, 1.0]
    assert q.adherence_detail["relation"] == 1.0 and "relation_ci" in q.adherence_detail
    assert q.to_dict()["psnr_ci"] == q.psnr_ci
    again = image_quality(noisy, reference, prompts, use_lpips=False, clip=None)
    assert again.psnr_ci == q.psnr_ci


def test_adherence_picks_the_world_by_image_size():
    from quantkit.models.shapes import render_shape

    small = np.asarray(render_shape("red", "circle", seed=0), np.float32)[None] / 255  # 32×32: v1 shapes
    assert "position" in adherence(small, ["a red circle"])
    big = np.asarray(scenes.render_scene("a red circle", seed=0), np.float32)[None] / 255
    assert "relation" in adherence(big, ["a red circle"])
    assert adherence(big, ["a photo of a cat"]) is None


# -- Pareto overlap ---------------------------------------------------------------------------------------------


def test_overlapping_marks_front_neighbours_that_cannot_be_told_apart():
    frame = pd.DataFrame(
        {
            "status": ["ok"] * 5,
            "quantization": ["-", "int8", "int4", "nf4", "int2"],
            "bytes": [100.0, 50.0, 30.0, 29.0, 20.0],
            "psnr": [None, 40.0, 30.0, 29.5, 20.0],
            "psnr_ci": [None, [39.0, 41.0], [29.0, 31.0], [28.5, 30.5], [19.0, 21.0]],
        },
        index=["baseline", "int8", "int4", "nf4", "int2"],
    )
    # front by bytes: int2 (20) < nf4 (29) < int4 (30) < int8 (50) < baseline — all on it
    assert overlapping(frame, "psnr") == {"nf4", "int4"}
    with pytest.raises(ValueError, match="with_intervals"):
        overlapping(frame.drop(columns="psnr_ci"), "psnr")
