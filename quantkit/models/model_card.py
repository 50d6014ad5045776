"""Model cards (README.md) of the embedded pipelines, filled from what training and evaluation measured.

`write_model_card` writes v1's ("tiny-flux-shapes"); `markdown_table` is shared with v2's card
(`quantkit.models.scenes_eval.write_scenes_card`).
"""

from __future__ import annotations

import json
from pathlib import Path


def markdown_table(rows: list[list], header: list[str]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_model_card(out: str | Path, report: dict) -> Path:
    """README.md for the pipeline folder, filled from `report` (what `train_embedded` measured)."""
    out = Path(out)
    config, timings, summary = report["config"], report["timings_s"], report["heldout_bf16"]
    sizes = {p.parent.name: p.stat().st_size for p in out.rglob("*.safetensors")}
    components = markdown_table(
        [
            [name, f"`{c['class']}`", f"{c['parameters']:,}", f"{sizes.get(name, 0):,}"]
            for name, c in report["components"].items()
        ],
        ["component", "class", "parameters", "bytes (fp32 safetensors)"],
    )
    scores = markdown_table(
        [
            ["color", f"{summary['color']:.1%}", summary["n"]],
            ["shape", f"{summary['shape']:.1%}", summary["n"]],
            ["position", f"{summary['position']:.1%}", summary["n_position"]],
            ["size", f"{summary['size']:.1%}", summary["n_size"]],
            ["all asked attributes", f"{summary['all']:.1%}", summary["n"]],
        ],
        ["attribute", "adherence", "n"],
    )
    defaults = json.dumps(config["generation_defaults"])
    linears = report["nonconforming_linears"]
    linear_note = (
        "Every `nn.Linear` has `in_features % 64 == 0` and `out_features % 32 == 0`, so bitsandbytes' 4-bit CPU "
        "kernel, GGUF and quanto block sizes apply to all of them (`x_embedder` is Linear(64 → 128) because the VAE "
        "has 16 latent channels, packed 2×2)."
        if not linears
        else "These `nn.Linear` layers break the in % 64 / out % 32 rule: "
        + ", ".join(f"{r['component']}.{r['name']} ({r['in_features']}→{r['out_features']})" for r in linears)
    )
    validation = ""
    if report.get("validation"):
        rows = [
            [
                f"`{json.dumps(v['kwargs'])}`",
                f"{v['color']:.1%}",
                f"{v['shape']:.1%}",
                f"{v['position']:.1%}",
                f"{v['size']:.1%}",
                v["n"],
            ]
            for v in report["validation"]
        ]
        validation = (
            "The defaults were chosen on separate *validation* pairs (`heldout_prompts(100, seed=1)`: other "
            "generation seeds), not on the pairs above:\n\n"
            + markdown_table(rows, ["kwargs on top of the defaults", "color", "shape", "position", "size", "n"])
            + "\n"
        )
        if "true_cfg_scale" not in config["generation_defaults"]:
            validation += (
                '\nThe defaults use no classifier-free guidance: `true_cfg_scale` with `negative_prompt=""` '
                "runs the transformer twice per step, doubling the time per image, for the differences above.\n"
            )
    if min(summary["position"], summary["size"]) < min(summary["color"], summary["shape"]):
        ceiling = "Position and size are learned less reliably than color and shape (see the table)."
    else:
        ceiling = (
            "Unquantized adherence is at or near its ceiling, so mild quantization damage shows in PSNR/SSIM\n"
            "  against the bf16 image before it shows in adherence."
        )
    notes = "".join(f"{note}\n\n" for note in report.get("notes", []))  # human-written remarks, if any
    c, r, t, h = config, report, timings, summary  # short names keep the template below readable
    text = f"""# tiny-flux-shapes — quantkit's first embedded pipeline (v1; the default is now `tiny-flux-scenes`)

A {r["size_bytes"] / 1e6:.1f} MB diffusers `FluxPipeline` that draws one filled shape — circle, square or
triangle, in red, green, blue, yellow or purple — on a light background, at 32×32 pixels, from prompts such as
"a red circle" or "a small blue triangle on the left". It has FLUX.1's component layout, so
"quantize the transformer and text_encoder_2" means here what it means on FLUX.1-dev, and it draws what the prompt
says, so quantization damage can be *seen* and *scored* (an automatic adherence scorer comes with it).

![grid](grid.png)

`grid.png`: one row per color; columns "a small ⟨color⟩ circle at the top", "a large ⟨color⟩ circle on the right",
"a ⟨color⟩ square", "a ⟨color⟩ square on the left", "a ⟨color⟩ triangle", "a ⟨color⟩ triangle on the left"
(seed 1,000,000, bf16, the defaults below; upscaled 2×).

## Components

{components}

The two text encoders are random and frozen (see *Limits*); the VAE and transformer are trained.
{linear_note}

## Use

```python
import torch
from diffusers import DiffusionPipeline
from quantkit.models import EMBEDDED_PIPELINE_DIR
from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

pipe = DiffusionPipeline.from_pretrained(EMBEDDED_PIPELINE_DIR, dtype=torch.bfloat16)
apply_generation_defaults(pipe, read_generation_defaults(EMBEDDED_PIPELINE_DIR))  # quantkit.load_pipeline does this
image = pipe("a red circle").images[0]  # a 32×32 PIL image
```

`generation_defaults.json` holds the call kwargs the model was trained for: `{defaults}`.
**With plain `DiffusionPipeline.from_pretrained` you must apply them yourself** (as above, or pass them to each
call): FluxPipeline's own defaults draw 512×512 pixels and pad the T5 prompt to 512 tokens, and this model then
draws noise (and runs many times slower).

## Scores

Held-out: {h["n"]} prompt/seed pairs from `quantkit.models.shapes.heldout_prompts({h["n"]}, seed=0)` —
{h["n"]} distinct prompts, generation seeds ≥ 1,000,000 that training never used. Every prompt *text* also
occurs in training (with other jitter); the pairs are new. bf16, the defaults above, scored by
`quantkit.models.shapes.score_images` (nearest palette color; shape from the fill ratio of the bounding box;
position from the box center; size from the box side — rules and thresholds in that module's docstring; on the
dataset's own rendered images it scores 100% on every attribute).

{scores}

{validation}
Speed: {r["seconds_per_image_bf16_1_thread"]:.3f} s per image with 1 torch thread,
{r["seconds_per_image_bf16"]:.3f} s with {r["torch_threads"]} (one prompt, bf16, the defaults above, median of 5 calls,
on the 2-core CPU that trained it, which other jobs were sharing).

## Training

`python scripts/train_embedded.py --out quantkit/embedded/tiny-flux-shapes` (seed {c["seed"]}), on a 2-core
CPU, no GPU. Code: `quantkit/models/train.py` (with `training.py`, `evaluation.py`).

- Data: {c["n_images"]:,} procedurally rendered images (`quantkit.models.shapes.sample_dataset`), 225 prompts
  (5 colors × 3 shapes × 5 positions × 3 sizes), size and position jittered.
- VAE: {c["vae_steps"]:,} steps, batch {c["vae_batch_size"]}, AdamW {c["vae_lr"]}, MSE + {c["kl_weight"]} × KL;
  reconstruction PSNR {r["vae_psnr_db"]:.1f} dB on 512 held-back images; then `shift_factor` =
  {r["shift_factor"]:.4f}, `scaling_factor` = {r["scaling_factor"]:.4f} from the latent statistics.
  {t["vae"] / 60:.1f} minutes.
- Transformer: {c["transformer_steps"]:,} steps, batch {c["batch_size"]}, AdamW {c["lr"]} (warm-up
  {c["warmup_steps"]}, cosine), EMA {c["ema_decay"]}; rectified flow on FluxPipeline's own conventions (packed
  latents, `timestep = σ`, target noise − x0, the pipeline's resolution shift `mu`), text from
  `pipe.encode_prompt` at `max_sequence_length=16`, {c["prompt_dropout"]:.0%} of prompts dropped to "" for
  classifier-free guidance. Loss {r["transformer_loss_first"]:.3f} → {r["transformer_loss_last"]:.3f}.
  {t["transformer"] / 60:.1f} minutes.
- Evaluation (reload in bf16, {h["n"]} images, timing, grid): {t["evaluate"] / 60:.1f} minutes.

{notes}The full record is `training_report.json`; `heldout_scores.csv` has the score of every held-out image.

## Limits

- It knows 5 colors, 3 shapes, 4 positions and 2 size words, and nothing else: other words fall back to letters
  or `<unk>` in the tokenizers, and what it draws for them is arbitrary. The CLIP and T5 encoders are random
  networks with tokenizers over these 18 words; they are there for the layout (and so quantizing them has an
  effect), not for language understanding.
- 32×32 pixels only; other sizes were never trained.
- {ceiling}
- The scorer is a few rules: it judges the largest blob in the image, and it cannot tell a wrong image that
  happens to match the rules from a right one.
"""
    path = out / "README.md"
    path.write_text(text)
    return path
