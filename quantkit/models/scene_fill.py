"""Where shape is lost: the fill ratios of objects asked as circles and squares, by size, at each stage.

The scorer tells a circle from a square by how much of its bounding box it fills (`scene_scorer` rule 5: a circle
fills π/4 ≈ 0.785, a square 1, the line is `CIRCLE_MAX_FILL`). So the fill ratio of the objects a prompt asks
for, stage by stage, shows where a square stops reading as one:

- renders: the dataset's own drawing of the test prompts (`scenes.render_scene(prompt, seed=seed)`);
- VAE: those renders encoded and decoded by the pipeline's VAE — what the latent keeps, the most a transformer
  can draw;
- generated: the pipeline's images for the same (prompt, seed) pairs.

`fill_summary(table)` reads a `scene_scorer.score_scenes` table (its `obj<k>_fill_ratio` and `obj<k>_shape_ok`
columns) and gives, per asked shape and size, the 5% / 50% / 95% quantiles of the fill ratio and the share the
scorer reads as another shape. Where the quantiles of circles and squares of one size overlap, their images are
ambiguous to any fill threshold: no rule can sort them, only a model that draws them apart.
"""

from __future__ import annotations

import numpy as np

from quantkit.models import scene_scorer, scenes
from quantkit.models.scenes_train import reconstruct

SHAPES = ("circle", "square")  # the pair the fill ratio separates (triangles are told by skew)
SIZE_ORDER = ("small", "medium", "large")
QUANTILES = (0.05, 0.5, 0.95)


def object_fills(table):
    """One row per asked circle or square in a `score_scenes` table that the scorer matched to a region.

    Returns:
        pandas.DataFrame with shape (asked), size ("small", "medium", "large"), fill_ratio, shape_ok.
    """
    import pandas as pd

    rows = []
    for record in table.to_dict("records"):
        for k, thing in enumerate(scenes.parse_prompt(record["prompt"]).objects, start=1):
            fill = record.get(f"obj{k}_fill_ratio")
            if thing.shape not in SHAPES or fill is None or fill != fill:  # unmatched: no region to measure
                continue
            rows.append(
                {
                    "shape": thing.shape,
                    "size": thing.size or "medium",
                    "fill_ratio": float(fill),
                    "shape_ok": bool(record[f"obj{k}_shape_ok"]),
                }
            )
    return pd.DataFrame(rows, columns=["shape", "size", "fill_ratio", "shape_ok"])


def fill_summary(table) -> dict[str, dict]:
    """Per "<shape> <size>" (e.g. "square small"): n, q05, median, q95 of the fill ratio, misread (share read as
    another shape). Groups without objects are left out."""
    fills = object_fills(table)
    out = {}
    for shape in SHAPES:
        for size in SIZE_ORDER:
            part = fills[(fills["shape"] == shape) & (fills["size"] == size)]
            if not len(part):
                continue
            q05, median, q95 = np.quantile(part["fill_ratio"], QUANTILES)
            out[f"{shape} {size}"] = {
                "n": int(len(part)),
                "q05": round(float(q05), 3),
                "median": round(float(median), 3),
                "q95": round(float(q95), 3),
                "misread": round(float(1.0 - part["shape_ok"].mean()), 3),
            }
    return out


def overlapping_sizes(summary: dict[str, dict]) -> list[str]:
    """The sizes at which circles' and squares' 5–95% fill ranges overlap (ambiguous to any threshold)."""
    return [
        size
        for size in SIZE_ORDER
        if f"circle {size}" in summary
        and f"square {size}" in summary
        and summary[f"circle {size}"]["q95"] >= summary[f"square {size}"]["q05"]
    ]


def render_pairs(pairs: list[tuple[str, int]]) -> np.ndarray:
    """The dataset's drawing of each (prompt, seed): uint8 (n, 64, 64, 3)."""
    return np.stack([np.asarray(scenes.render_scene(prompt, seed=seed)) for prompt, seed in pairs])


def stage_fills(vae, generated_table) -> dict[str, dict]:
    """`fill_summary` of the generated images' score table (`scenes_eval.evaluate_scenes`: prompt and seed
    columns), of the dataset's renders of the same (prompt, seed) pairs and of their VAE reconstructions, keyed
    "renders", "vae", "generated"."""
    pairs = list(zip(generated_table["prompt"], generated_table["seed"], strict=True))
    prompts = [prompt for prompt, _ in pairs]
    renders = render_pairs(pairs)
    return {
        "renders": fill_summary(scene_scorer.score_scenes(list(renders), prompts)),
        "vae": fill_summary(scene_scorer.score_scenes(list(reconstruct(vae, renders)), prompts)),
        "generated": fill_summary(generated_table),
    }
