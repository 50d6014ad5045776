"""Small pipelines that quantkit builds or ships itself, so nothing is downloaded.

- `tiny`: `build_tiny_pipeline` / `save_tiny_pipeline` — random-weight FLUX, SD3 and PixArt-Sigma layouts
  with every component a few hundred kB, for tests.
- `shapes`: the procedural "colored shapes" dataset and the adherence scorer.
- `defaults`: generation defaults stored beside a pipeline and applied to a plain `pipe(prompt)`.
- `train`: trains the embedded FLUX-layout pipeline (`quantkit/embedded/tiny-flux-shapes`).

This `__init__` stays light on purpose: torch, diffusers and transformers are imported by the submodules
only, so `import quantkit.models` costs nothing.
"""

from pathlib import Path

# The folder of the trained FLUX-layout pipeline that ships inside the package.
EMBEDDED_PIPELINE_DIR = Path(__file__).resolve().parent.parent / "embedded" / "tiny-flux-shapes"

__all__ = ["EMBEDDED_PIPELINE_DIR"]
