"""A pipeline folder's model card offers example prompts (the Hub's `widget` metadata); compare draws them when
given none."""

from __future__ import annotations

import shutil

import pytest

from quantkit.comparison import compare
from quantkit.models import SCENES_PIPELINE_DIR, scene_scorer
from quantkit.planning.card_prompts import card_prompts

CARD = """---
library_name: diffusers
widget:
- text: "a blue circle"
- text: two red squares
- output: {url: grid.png}
---
# a pipeline
"""


def test_card_prompts_reads_the_widget_texts(tmp_path):
    (tmp_path / "README.md").write_text(CARD)
    assert card_prompts(tmp_path) == ["a blue circle", "two red squares"]  # an entry without text is skipped
    assert card_prompts(str(tmp_path)) == ["a blue circle", "two red squares"]


@pytest.mark.parametrize(
    "card",
    [None, "# no front matter\n", "---\nlibrary_name: diffusers\n---\n# no widget\n", "---\nwidget: []\n---\n"],
)
def test_a_card_without_examples_gives_none(tmp_path, card):
    if card is not None:
        (tmp_path / "README.md").write_text(card)
    assert card_prompts(tmp_path) is None


def test_sources_that_are_not_local_folders_give_none_and_download_nothing(tmp_path):
    assert card_prompts("black-forest-labs/FLUX.1-dev") is None  # offline in CI: a download would raise
    assert card_prompts("") is None and card_prompts(42) is None and card_prompts(tmp_path / "missing") is None
    from quantkit.models import SHAPES_PIPELINE_DIR

    assert card_prompts(SHAPES_PIPELINE_DIR) is None  # v1's card lists no examples: the default prompts stay


def test_a_card_whose_front_matter_does_not_parse_warns_and_gives_none(tmp_path):
    (tmp_path / "README.md").write_text("---\nwidget: [unclosed\n---\n")
    with pytest.warns(UserWarning, match=r"README.md: its YAML front matter does not parse .*default prompts"):
        assert card_prompts(tmp_path) is None


def test_the_scenes_cards_examples_are_scene_prompts():
    prompts = card_prompts(SCENES_PIPELINE_DIR)
    assert prompts is not None and len(prompts) == 5
    assert all(scene_scorer.is_scene_prompt(p) for p in prompts)
    forms = {scene_scorer.scenes.parse_prompt(p).form for p in prompts}
    assert forms == {"single", "relation", "count"}
    # v2 is the default pipeline: None reads its card, and its examples are quantkit's default prompts
    from quantkit.comparison import DEFAULT_PROMPTS

    assert card_prompts(None) == prompts == list(DEFAULT_PROMPTS)


def test_compare_draws_the_cards_examples_unless_given_prompts(flux_dir, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(flux_dir, folder)
    (folder / "README.md").write_text(CARD)
    fast = {"seeds": [0], "warmup": 0, "repeats": 1, "num_inference_steps": 1, "report": False, "progress": False}
    results = compare(folder, {"baseline": None}, out=tmp_path / "a", use_lpips=False, **fast)
    assert results.meta["settings"]["prompts"] == ["a blue circle", "two red squares"]
    results = compare(folder, {"baseline": None}, out=tmp_path / "b", use_lpips=False, prompts=["a cat"], **fast)
    assert results.meta["settings"]["prompts"] == ["a cat"]
