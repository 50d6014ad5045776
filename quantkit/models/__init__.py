"""Small pipelines that quantkit builds or ships itself, so nothing is downloaded.

- `tiny`: `build_tiny_pipeline` / `save_tiny_pipeline` — random-weight FLUX, SD3 and PixArt-Sigma layouts
  with every component a few hundred kB, for tests.
- `shapes`: the procedural "colored shapes" dataset (v1, 32×32) and its adherence scorer.
- `scenes`, `scene_scorer`: v2's prompt language (objects, relations, counts, backgrounds), renderer (64×64)
  and per-attribute scorer.
- `defaults`: generation defaults stored beside a pipeline and applied to a plain `pipe(prompt)`.
- `training`: the VAE and flow-matching stages both embedded pipelines are trained with;
  `train` (v1, `quantkit/embedded/tiny-flux-shapes`) and `scenes_train` (v2, `tiny-flux-scenes`, the default)
  configure them;
  `evaluation` / `scenes_eval` evaluate the result, `model_card` / `model_card_scenes` write its README.

This `__init__` stays light on purpose: torch, diffusers and transformers are imported by the submodules
only, so `import quantkit.models` costs nothing.
"""

from pathlib import Path

_EMBEDDED = Path(__file__).resolve().parent.parent / "embedded"
# v2, the 64×64 "scenes" pipeline with trained text encoders: the default (quantkit.EMBEDDED_PIPELINE).
SCENES_PIPELINE_DIR = _EMBEDDED / "tiny-flux-scenes"
# v1, the 32×32 "shapes" pipeline with random frozen text encoders; kept for its tests and as a smaller example.
SHAPES_PIPELINE_DIR = _EMBEDDED / "tiny-flux-shapes"
# The folder of the trained FLUX-layout pipeline quantkit uses when no source is given.
EMBEDDED_PIPELINE_DIR = SCENES_PIPELINE_DIR

__all__ = ["EMBEDDED_PIPELINE_DIR", "SCENES_PIPELINE_DIR", "SHAPES_PIPELINE_DIR"]
