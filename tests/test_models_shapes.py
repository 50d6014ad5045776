"""The shapes dataset and its rule-based adherence scorer."""

import numpy as np
import pytest
from PIL import Image

from quantkit.models import shapes
from quantkit.models.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    adherence_summary,
    analyze_image,
    heldout_prompts,
    make_prompt,
    parse_prompt,
    render_shape,
    sample_dataset,
    score_image,
    score_images,
)


def test_make_and_parse_prompt_round_trip():
    assert make_prompt("red", "circle") == "a red circle"
    assert make_prompt("blue", "triangle", "on the left", "small") == "a small blue triangle on the left"
    for prompt in shapes.all_prompts():
        parts = parse_prompt(prompt)
        assert make_prompt(parts["color"], parts["shape"], parts["position"], parts["size"]) == prompt
    assert len(shapes.all_prompts()) == len(COLORS) * len(SHAPES) * len(POSITIONS) * len(SIZES) == 225


def test_bad_inputs_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"Unknown color 'orange'; choose one of \('red'"):
        make_prompt("orange", "circle")
    with pytest.raises(ValueError, match=r"Cannot score 'a photo of a cat': prompts must read"):
        parse_prompt("a photo of a cat")
    with pytest.raises(ValueError, match="Pass either rng or seed, not both"):
        render_shape("red", "circle", rng=np.random.default_rng(0), seed=1)


def test_dataset_is_deterministic_and_well_formed():
    images, prompts = sample_dataset(64, seed=3)
    again, prompts_again = sample_dataset(64, seed=3)
    other, _ = sample_dataset(64, seed=4)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and prompts == prompts_again
    assert not np.array_equal(images, other)
    assert all(parse_prompt(p) for p in prompts)
    # plain light background: the corners are the background color
    assert (images[:, 0, 0] == shapes.BACKGROUND).all()


@pytest.mark.parametrize("image_size", [32, 64])
def test_scorer_on_ground_truth_is_perfect(image_size):
    images, prompts = sample_dataset(400, seed=11, image_size=image_size)
    summary = adherence_summary(score_images(images, prompts))
    assert summary["n"] == 400
    assert (summary["color"], summary["shape"], summary["position"], summary["size"]) == (1.0, 1.0, 1.0, 1.0)
    assert summary["n_position"] > 250 and summary["n_size"] > 200  # "" prompts are not counted there


def test_scorer_measures_fill_ratios_close_to_geometry():
    fill = {shape: analyze_image(render_shape("green", shape, seed=0))["fill_ratio"] for shape in SHAPES}
    assert fill["square"] == pytest.approx(1.0, abs=0.02)
    assert fill["circle"] == pytest.approx(np.pi / 4, abs=0.02)
    assert fill["triangle"] == pytest.approx(0.5, abs=0.08)


def test_scorer_rejects_wrong_images():
    red_circle_left = render_shape("red", "circle", "on the left", "large", seed=0)
    assert score_image(red_circle_left, "a large red circle on the left") == {
        "color_ok": True,
        "shape_ok": True,
        "position_ok": True,
        "size_ok": True,
        "predicted": analyze_image(red_circle_left),
    }
    wrong = score_image(red_circle_left, "a small blue square on the right")
    assert (wrong["color_ok"], wrong["shape_ok"], wrong["position_ok"], wrong["size_ok"]) == (False,) * 4
    assert wrong["predicted"]["color"] == "red" and wrong["predicted"]["shape"] == "circle"
    # no size or position word: those checks are not applicable (None), not passed
    plain = score_image(red_circle_left, "a red circle")
    assert plain["position_ok"] is None and plain["size_ok"] is None


def test_scorer_on_blank_and_noise_images():
    blank = Image.new("RGB", (32, 32), shapes.BACKGROUND)
    result = score_image(blank, "a red circle")
    assert result["color_ok"] is False and result["shape_ok"] is False and result["predicted"]["shape"] is None
    noise = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    summary = adherence_summary(score_images(noise, ["a red circle"] * 50))
    assert summary["shape"] < 0.5 and summary["all"] < 0.5


def test_scorer_accepts_float_arrays_like_pipeline_output():
    image = render_shape("purple", "triangle", "at the bottom", seed=5)
    as_float = np.asarray(image).astype(np.float32) / 255.0
    prompt = "a purple triangle at the bottom"
    assert score_image(as_float, prompt) == score_image(image, prompt)


def test_heldout_pairs():
    pairs = heldout_prompts(150, seed=0)
    assert pairs == heldout_prompts(150, seed=0)
    assert len({p for p, _ in pairs}) == 150  # distinct prompts up to 225
    assert min(s for _, s in pairs) >= shapes.HELDOUT_SEED_OFFSET
    assert len({s for _, s in pairs}) == 150
    # balanced enough: every color and shape is asked for
    assert {parse_prompt(p)["color"] for p, _ in pairs} == set(COLORS)
    assert {parse_prompt(p)["shape"] for p, _ in pairs} == set(SHAPES)


def test_adherence_summary_counts_only_applicable_rows():
    images = [render_shape("red", "circle", "on the left", seed=0), render_shape("blue", "square", seed=1)]
    df = score_images(images, ["a red circle on the right", "a blue square"])
    assert list(df.columns[:5]) == ["prompt", "size", "color", "shape", "position"]
    summary = adherence_summary(df)
    assert summary["color"] == 1.0 and summary["shape"] == 1.0
    assert summary["position"] == 0.0 and summary["n_position"] == 1
    assert summary["n_size"] == 0 and np.isnan(summary["size"])
    assert summary["all"] == 0.5
    with pytest.raises(ValueError, match="Got 2 images but 1 prompts"):
        score_images(images, ["a red circle"])
