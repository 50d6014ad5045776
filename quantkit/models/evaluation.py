"""Evaluate a trained embedded pipeline: generate for (prompt, seed) pairs, time it, draw a grid, score it.

`generate` and `seconds_per_image` serve both pipelines (v1 shapes and v2 scenes); `evaluate`, `save_grid`,
`compare_settings` and `evaluate_and_document` are the v1 ("tiny-flux-shapes") evaluation that
`scripts/train_embedded.py` runs after training (v2's is `quantkit.models.scenes_eval`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from quantkit.models import shapes
from quantkit.models.defaults import apply_generation_defaults, write_generation_defaults
from quantkit.models.tiny import nonconforming_linears


@contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to `count` inside the block (None or 0: unchanged), restored after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def generate(pipe, pairs: list[tuple[str, int]], batch_size: int = 50, **call_kwargs) -> np.ndarray:
    """Images for (prompt, seed) pairs as float (N, H, W, 3) in [0, 1]; each image depends only on its own pair.

    Uses `pipe`'s generation defaults (if applied) plus `call_kwargs`.
    """
    images = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        kwargs = {"output_type": "np", **call_kwargs}
        # A string negative prompt encodes to a batch of 1, which FluxPipeline cannot pair with a batch of prompts.
        negative = kwargs.get("negative_prompt", getattr(pipe, "generation_defaults", {}).get("negative_prompt"))
        if isinstance(negative, str):
            kwargs["negative_prompt"] = [negative] * len(chunk)
        images.append(pipe([p for p, _ in chunk], generator=generators, **kwargs).images)
    return np.concatenate(images)


def evaluate(pipe, n_pairs: int, seed: int = 0, **call_kwargs):
    """Generate and score `n_pairs` held-out prompt/seed pairs.

    Returns:
        (DataFrame from `shapes.score_images`, summary dict from `shapes.adherence_summary`).
    """
    pairs = shapes.heldout_prompts(n_pairs, seed=seed)
    images = generate(pipe, pairs, **call_kwargs)
    table = shapes.score_images(images, [p for p, _ in pairs])
    table["seed"] = [s for _, s in pairs]
    return table, shapes.adherence_summary(table)


def seconds_per_image(pipe, repeats: int = 5, prompt: str = "a red circle") -> float:
    """Median wall time (s) of a plain one-image call at the pipeline's defaults, after one warm-up call."""
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pipe(prompt, generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def save_grid(pipe, path: str | Path, seed: int = 0, upscale: int = 2) -> Path:
    """A grid of one image per color (rows) × shape and position (columns), upscaled with nearest neighbour."""
    from PIL import Image

    cells = [("", ""), ("on the left", ""), ("at the top", "small"), ("on the right", "large")]
    pairs = []
    for color in shapes.COLORS:
        for shape in shapes.SHAPES:
            for position, size in cells[:2] if shape != "circle" else cells[2:]:
                pairs.append((shapes.make_prompt(color, shape, position, size), shapes.HELDOUT_SEED_OFFSET + seed))
    images = (generate(pipe, pairs) * 255).round().astype(np.uint8)
    columns = 6
    rows = [
        np.concatenate(list(images[r * columns : (r + 1) * columns]), axis=1) for r in range(len(images) // columns)
    ]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.Resampling.NEAREST)
    path = Path(path)
    grid.save(path, optimize=True)
    return path


SETTINGS_TO_COMPARE = [
    {},
    {"num_inference_steps": 28},
    {"true_cfg_scale": 2.0, "negative_prompt": ""},
    {"true_cfg_scale": 3.0, "negative_prompt": ""},
]


def compare_settings(pipe, variants: list[dict], n_pairs: int = 100, seed: int = 1, log=print) -> list[dict]:
    """Adherence of each variant of call kwargs on *validation* pairs (`heldout_prompts(n_pairs, seed=1)`).

    The defaults are chosen on these pairs; the model card reports the separate test pairs (seed 0), so the
    choice does not flatter the reported numbers.
    """
    defaults = dict(getattr(pipe, "generation_defaults", {}))
    rows = []
    for variant in variants:
        apply_generation_defaults(pipe, {**defaults, **variant})
        start = time.perf_counter()
        _, summary = evaluate(pipe, n_pairs, seed=seed)
        rows.append({"kwargs": variant, **summary, "seconds": time.perf_counter() - start})
        log(
            f"validation {variant}: color {summary['color']:.1%}, shape {summary['shape']:.1%}, "
            f"position {summary['position']:.1%}, size {summary['size']:.1%}"
        )
    apply_generation_defaults(pipe, defaults)
    return rows


def evaluate_and_document(
    out: str | Path, report: dict, generation_defaults: dict | None = None, compare: bool = False, log=print
) -> dict:
    """Evaluate the saved pipeline in `out` as users load it (bf16, saved defaults), then write the report,
    `grid.png` and the model card `README.md`.

    Args:
        out: the pipeline folder.
        report: the training report (from `train_embedded`, or read back from `out/training_report.json`).
        generation_defaults: replace the saved defaults first (written to `generation_defaults.json`).
        compare: also run `compare_settings` on validation pairs and record it under "validation".

    Returns:
        The updated report.
    """
    from diffusers import DiffusionPipeline

    out = Path(out)
    config = report["config"]
    if generation_defaults is not None:
        config["generation_defaults"] = generation_defaults
        write_generation_defaults(out, generation_defaults)
    timings = report["timings_s"]
    start = time.perf_counter()
    loaded = DiffusionPipeline.from_pretrained(out, dtype=torch.bfloat16)
    apply_generation_defaults(loaded, config["generation_defaults"])
    loaded.set_progress_bar_config(disable=True)
    if compare:
        report["validation"] = compare_settings(loaded, SETTINGS_TO_COMPARE, log=log)
    table, summary = evaluate(loaded, config["eval_pairs"], seed=0)
    report["heldout_bf16"] = summary
    report["seconds_per_image_bf16"] = seconds_per_image(loaded)
    report["torch_threads"] = torch.get_num_threads()
    # One thread as well: on a shared 2-core machine it is the number least disturbed by other processes.
    with torch_threads(1):
        report["seconds_per_image_bf16_1_thread"] = seconds_per_image(loaded)
    timings["evaluate"] = time.perf_counter() - start
    report["size_bytes"] = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log(
        f"held-out adherence (bf16, n={summary['n']}): color {summary['color']:.1%}, shape {summary['shape']:.1%}, "
        f"position {summary['position']:.1%}, size {summary['size']:.1%}; "
        f"{report['seconds_per_image_bf16']:.3f} s/image; weights {report['size_bytes']:,} B"
    )
    report["components"] = {
        name: {"class": type(module).__name__, "parameters": sum(p.numel() for p in module.parameters())}
        for name, module in loaded.components.items()
        if isinstance(module, torch.nn.Module)
    }
    report["nonconforming_linears"] = nonconforming_linears(loaded)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    table.to_csv(out / "heldout_scores.csv", index=False)
    save_grid(loaded, out / "grid.png")
    from quantkit.models.model_card import write_model_card

    write_model_card(out, report)
    return report
