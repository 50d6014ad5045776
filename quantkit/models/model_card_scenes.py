"""The model card (README.md) of the embedded pipeline v2, "tiny-flux-scenes", filled from its measurements.

Inputs, all in the pipeline folder: `training_report.json` (training and held-out evaluation,
`scenes_eval.evaluate_scenes_folder`) and, when present, `quantization_eval.json` (the variants table from
`scripts/evaluate_embedded.py`). Human remarks go in the report's "notes" list.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantkit.models import scene_fill, scenes
from quantkit.models.model_card import markdown_table
from quantkit.models.scene_scorer import ATTRIBUTES, CIRCLE_MAX_FILL

# The card's `widget` examples (Hub metadata), which `quantkit compare` draws when it is given no prompts
# (`quantkit.planning.card_prompts`): one of each form, five, so that the default comparison (eight variants × five
# prompts × two seeds) stays near two minutes on 2 cores (measured with other prompts: 4 images per variant took
# 61 s, 28 images 246 s; the quantized CPU kernels, 0.5-1.4 s per image, set the pace).
WIDGET_PROMPTS = scenes.DEMO_PROMPTS


def front_matter() -> str:
    """The card's YAML front matter: library, task and the `widget` examples."""
    examples = "".join(f'- text: "{prompt}"\n' for prompt in WIDGET_PROMPTS)
    return f"---\nlibrary_name: diffusers\npipeline_tag: text-to-image\nwidget:\n{examples}---\n"


def _vae_weights(c: dict) -> str:
    """How the VAE's MSE was weighted (`training.weighted_mse`), for the card's training section."""
    fg, edge = c.get("vae_fg_weight", 1.0), c.get("vae_edge_weight", 0.0)
    parts = ([f"object pixels × {fg:g}"] if fg != 1.0 else []) + ([f"outlines + {edge:g}"] if edge else [])
    return f" ({', '.join(parts)})" if parts else ""


def _pct(value, ci=None) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.1%} [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else f"{value:.1%}"


def _attribute_rows(parts: dict[str, dict]) -> list[list]:
    """One row per attribute, one column pair (rate, n) per part."""
    rows = []
    for attribute in (*ATTRIBUTES, "all"):
        row = [attribute if attribute != "all" else "**all asked attributes**"]
        for part in parts.values():
            n = part["n"] if attribute == "all" else part.get(f"n_{attribute}", 0)
            row += [_pct(part.get(attribute)) if n else "–", n]
        rows.append(row)
    return rows


def quantization_table(evaluation: dict) -> str:
    """Variants × per-attribute adherence (all prompts), two-object "all", PSNR and SSIM, with intervals."""
    header = ["variant", "MB", *ATTRIBUTES, "all", "two-object all", "PSNR dB", "SSIM"]
    rows = []
    for name, row in evaluation["variants"].items():
        if row["status"] != "ok":
            rows.append([name, "failed", *[""] * (len(header) - 2)])
            continue
        summary, two = row.get("adherence_all", {}), row.get("adherence_two", {})

        def cell(s: dict, key: str) -> str:
            value, ci = s.get(key), s.get(f"{key}_ci")
            return "–" if value is None or value != value else f"{value:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"

        psnr = f"{row['psnr']:.1f} [{row['psnr_ci'][0]:.1f}, {row['psnr_ci'][1]:.1f}]" if row.get("psnr_ci") else "ref"
        ssim = f"{row['ssim']:.3f} [{row['ssim_ci'][0]:.3f}, {row['ssim_ci'][1]:.3f}]" if row.get("ssim_ci") else "ref"
        rows.append(
            [
                name,
                f"{row['bytes'] / 1e6:.1f}",
                *(cell(summary, a) for a in ATTRIBUTES),
                cell(summary, "all"),
                cell(two, "all"),
                psnr,
                ssim,
            ]
        )
    return markdown_table(rows, header)


def shape_fill_section(stages: dict[str, dict]) -> str:
    """The card's "where shape is lost" table (`scene_fill.stage_fills`): per asked shape and size, the fill ratio's
    median [5%, 95%] and the share read as another shape, for the renders, the VAE's reconstructions and the
    generated images; then the sizes at which circles and squares overlap, per stage."""
    names = {"renders": "dataset renders", "vae": "VAE reconstructions", "generated": "generated"}
    rows = []
    for key in stages["renders"]:  # every asked shape and size; a render always shows its objects
        row = [key.replace(" ", ", "), stages["renders"][key]["n"]]
        for stage in names:
            x = stages[stage].get(key)
            row.append(f"{x['median']:.2f} [{x['q05']:.2f}, {x['q95']:.2f}], {x['misread']:.0%}" if x else "–")
        rows.append(row)
    overlaps = "; ".join(
        f"{names[stage]}: {', '.join(scene_fill.overlapping_sizes(stages[stage])) or 'none'}" for stage in names
    )
    return (
        "### Where shape is lost\n\n"
        "The scorer calls a region a circle below a fill ratio (area / bounding box) of "
        f"{CIRCLE_MAX_FILL} and a square at or above it (a drawn circle fills 0.785, a square 1). Below: the fill "
        "ratio of every asked circle and square in the test pairs, median [5%, 95%], and the share read as "
        "another shape — as the dataset draws them, after the VAE (what the latent keeps: the most a transformer "
        "can draw), and as generated (`quantkit.models.scene_fill`). Sizes at which circles' and squares' "
        f"5–95% ranges overlap (no threshold can sort them; only a model that draws them apart): {overlaps}.\n\n"
        + markdown_table(rows, ["asked", "objects", *names.values()])
        + "\n"
    )


def write_scenes_card(out: str | Path, report: dict | None = None) -> Path:
    """Write `out/README.md` from the report (default: `out/training_report.json`) and `quantization_eval.json`."""
    out = Path(out)
    report = report if report is not None else json.loads((out / "training_report.json").read_text())
    c, r, t = report["config"], report, report["timings_s"]
    h = report["heldout"]
    sizes = {p.parent.name: p.stat().st_size for p in out.rglob("*.safetensors")}
    components = markdown_table(
        [
            [name, f"`{x['class']}`", f"{x['parameters']:,}", f"{sizes.get(name, 0):,}"]
            for name, x in report["components"].items()
        ],
        ["component", "class", "parameters", "bytes (fp32 safetensors)"],
    )
    parts = {
        "single object": h["by_form"].get("single", {"n": 0}),
        "two objects": h.get("two_object", {"n": 0}),
        "  of which relations": h["by_form"].get("relation", {"n": 0}),
        "  of which counts": h["by_form"].get("count", {"n": 0}),
    }
    header = ["attribute"] + [x for name in parts for x in (name, "n")]
    heldout = markdown_table(_attribute_rows(parts), header)
    validation = ""
    if report.get("validation"):
        rows = [
            [
                f"`{json.dumps(v['kwargs'])}`",
                *(_pct(v.get(a)) for a in ATTRIBUTES),
                _pct(v["all"]),
                f"{v['seconds_per_image']:.2f}",
            ]
            for v in report["validation"]
        ]
        validation = (
            "Generation defaults were chosen on separate *validation* pairs "
            "(`heldout_prompts(..., seed=1)`), not on the test pairs above: the best overall adherence "
            "within 1 s per image.\n\n"
            + markdown_table(rows, ["kwargs on top of the training defaults", *ATTRIBUTES, "all", "s/image"])
            + "\n"
        )
    quant = ""
    qpath = out / "quantization_eval.json"
    if qpath.is_file():
        evaluation = json.loads(qpath.read_text())
        n = len(evaluation["prompts"]) * len(evaluation["seeds"])
        quant = (
            f"## Quantization variants\n\n`python scripts/evaluate_embedded.py` — `quantkit.compare` on this "
            f"folder ({evaluation['dtype']} baseline, CPU), {len(evaluation['prompts'])} held-out prompts × "
            f"{len(evaluation['seeds'])} seeds = {n} images per variant (30% single, 50% relation, 20% "
            "count prompts). Adherence per attribute over all images (each over the images that ask for it), "
            "PSNR and SSIM against the baseline's same-seed image; [low, high] = 95% bootstrap interval over "
            "prompts (the seeds of one prompt resampled together). Took "
            f"{evaluation['seconds'] / 60:.0f} minutes.\n\n" + quantization_table(evaluation) + "\n"
        )
    linears = report["nonconforming_linears"]
    k_quant = report.get("not_k_quant_ready", [])
    linear_note = (
        "Every `nn.Linear` has `in_features % 64 == 0` and `out_features % 32 == 0` (bitsandbytes' 4-bit "
        "CPU kernel, GGUF, quanto). "
        if not linears
        else "These `nn.Linear` layers break the in % 64 / out % 32 rule: "
        + ", ".join(f"{x['component']}.{x['name']}" for x in linears)
        + ". "
    )
    linear_note += (
        f"{len(k_quant)} Linear layers have `in_features % 256 != 0` (no GGUF K-quants there): "
        + ", ".join(sorted({f"{x['component']}: {x['in_features']}" for x in k_quant}))
        + " input features — the transformer's blocks (inner width 256) are K-quant-ready; its "
        "`x_embedder` (64 latent channels in), `context_embedder` and pooled-text projection (128 in) "
        "and the 128-wide text encoders are not."
        if k_quant
        else ""
    )
    stages = ("data_and_build", "vae", "vae_reused_s", "encode_latents", "text_pretrain", "flow", "decoder")
    total_training = sum(t[k] for k in stages if k in t)  # a reused VAE counts with its own stage's time
    vae_minutes = t.get("vae_reused_s", t["vae"]) / 60
    vae_where = f" (trained by an earlier run, `{r['vae_from']}`, and reused)" if r.get("vae_from") else ""
    probe = ""
    if c.get("probe_weight") or c.get("text_pretrain_steps"):
        accuracy = r.get("probe_heldout_accuracy", {})
        shown = ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items() if k.startswith("t5_") or "left" in k)
        probe = (
            f"- Prompt-structure probes (`quantkit.models.scene_probe`): CLIP + T5 first trained alone for "
            f"{c['text_pretrain_steps']:,} steps to make linear probes read each T5 token's object place and "
            f"attributes and the scene by place from CLIP's pooled vector ({t.get('text_pretrain', 0) / 60:.1f} min), "
            f"then the probes' loss × {c['probe_weight']} added to the flow loss. Probe accuracy on held-out "
            f"prompts after training: {shown}. The probes are not part of the folder.\n"
        )
    order = ""
    if r.get("order_sensitivity"):
        o = r["order_sensitivity"]
        order = (
            "Word order: between prompts that differ only in order the transformer's velocity moves by "
            f"{o['left_right']:.1%} (left of / right of), {o['above_below']:.1%} (above / below), {o['swapped']:.1%} "
            f"(objects swapped), against {o['axis']:.1%} for left of / above (T5's outputs: "
            f"{o['left_right_text']:.0%}, {o['above_below_text']:.0%}, {o['swapped_text']:.0%}, "
            f"{o['axis_text']:.0%}); "
            "`scenes_eval.order_sensitivity`.\n"
        )
    decoder = ""
    if "decoder" in t:
        decoder = (
            f"- VAE decoder alone (encoder frozen, so the transformer's latent space stays put): "
            f"{c['decoder_steps']} steps, AdamW {c['decoder_lr']}; reconstruction PSNR "
            f"{r['vae_psnr_db']:.1f} → {r['decoder_psnr_db']:.1f} dB. {t['decoder'] / 60:.1f} min.\n"
        )
    shape_fill = shape_fill_section(r["shape_fill"]) if r.get("shape_fill") else ""
    notes = "".join(f"{note}\n\n" for note in report.get("notes", []))
    defaults = json.dumps(c["generation_defaults"])
    in_training = report.get("heldout_prompts_in_training", {})
    novelty = ", ".join(f"{form} {share:.0%}" for form, share in sorted(in_training.items()))
    text = (
        front_matter()
        + f"""# tiny-flux-scenes — quantkit's embedded pipeline v2

A {r["size_bytes"] / 1e6:.1f} MB diffusers `FluxPipeline` that draws one or two filled shapes at 64×64 pixels
from a small language of colors, shapes, sizes, relations, counts and backgrounds — "a red circle",
"a small blue square", "a red circle left of a blue square", "two green triangles", "... on a yellow
background". It has FLUX.1's component layout (CLIP + T5 text encoders, a FLUX transformer, a KL VAE, the
flow-matching Euler scheduler), and unlike v1 (`tiny-flux-shapes`) its text encoders are *trained*: they carry
the prompt's meaning, so quantizing them can lose it.

![grid](grid.png)

`grid.png`: the prompt forms above, verbatim (`quantkit.models.scenes.example_prompts()`), top row on the default
background, bottom row "... on a yellow background"; seed 1,000,000, the defaults below, upscaled 2×.

## Components

{components}

{linear_note}

Architecture: 64×64 image → VAE with 4 levels (`vae_scale_factor` 8) → 8×8×16 latent → FLUX's 2×2 packing →
16 image tokens of 64 channels; T5 gives 16 text tokens of 128 channels, CLIP a pooled 128-vector; the
transformer is 4 heads × 64 = 256 wide, 2 double-stream + 4 single-stream blocks. Why 16 image tokens and not 64
(a 3-level VAE): on the 2-core training machine a transformer step at batch 32 took 3.7 s with 64 image tokens
and 1.1 s with 16 (measured); the hour of training buys ~1,500 steps at 16 and ~400 at 64. Weights are stored in
fp32 ({r["weights_bytes"] / 1e6:.1f} MB): the folder fits the 60 MB budget, and quantization variants are compared
against the weights exactly as trained (bf16 storage would put a rounding step into every baseline).

## Use

```python
import torch
from diffusers import DiffusionPipeline
from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

folder = "quantkit/embedded/tiny-flux-scenes"
pipe = DiffusionPipeline.from_pretrained(folder)
apply_generation_defaults(pipe, read_generation_defaults(folder))  # quantkit.load_pipeline does this
image = pipe("a red circle left of a blue square on a yellow background").images[0]  # 64×64 PIL image
```

`generation_defaults.json`: `{defaults}`. FluxPipeline's own defaults draw 1024×1024 (128 × the scale factor 8)
and pad T5 to 512 tokens; this model was trained at 64×64 with 16 tokens and draws noise otherwise.

## The prompt language

`quantkit.models.scenes` (grammar, renderer, `heldout_prompts`): colors red, green, blue, yellow, purple; shapes
circle, square, triangle; sizes small / (medium) / large; forms

- single: `a [small|large] <color> <shape>`
- relation: `a <object> left of|right of|above|below a <object>` (the two differ in color or shape)
- count: `two [small|large] <color> <shape>s`
- each optionally followed by `on a yellow|blue|green|black background`; without it the background is light gray.

An object never has the background's color. Layout rules (jitter, gaps) are in the module docstring.

## Scores

Scorer: `quantkit.models.scene_scorer` — background from the border; objects = connected regions that differ
from the background; color = nearest palette color, shape = triangle when the coverage's row profile is skewed
as an upward triangle's is (blur does not undo that), else circle or square by the fill ratio of the bounding box
(coverage-weighted, so soft edges count partially), size = box side, count = number of regions, relation =
direction between the two matched objects' centers; rules and thresholds in the module docstring. On the
dataset's own renders it scores 100% on every attribute, also after a Gaussian blur (σ 0.8 px) with noise and a
color shift of up to ±15 per channel, and small shapes keep their shape under a σ 1.5 px blur
(`tests/test_scenes.py`).

Held-out test pairs: `quantkit.models.scenes_eval.TEST_PAIRS` ({h["n"]} images) from
`heldout_prompts(n, seed=0, form=...)`, generation seeds ≥ 1,000,000 that training never used. The share of
test prompts whose *text* also occurs in training: {novelty} (single and count prompts are few; most relation
prompts are new combinations). fp32, the defaults above. Each attribute is over the images that ask for it (size
only where a size word is named); an attribute of two objects is right when both are.

{heldout}

{shape_fill}
{validation}
{order}
Speed: {r["seconds_per_image"]:.2f} s per image at the defaults (fp32, 2 torch threads, median of 5 calls;
{r["seconds_per_image_1_thread"]:.2f} s with 1 thread; bf16 {r["seconds_per_image_bf16"]:.2f} s), on a shared
2-core CPU of the kind that trained it (the figure moves with the machine's load).

{quant}
## Training

`python scripts/train_embedded.py --pipeline scenes --preset {r.get("preset", "full")} --out <folder>` (seed
{c["seed"]}), on a 2-core CPU, no GPU. Code: `quantkit/models/scenes_train.py` (stages in `training.py`).

- Data: {c["n_images"]:,} procedurally rendered 64×64 scenes (`scenes.sample_dataset`),
  {r["distinct_training_prompts"]:,} distinct prompts (35% single, 45% relation, 20% count; 40% default background).
- VAE: {c["vae_steps"]} steps, batch {c["vae_batch_size"]}, AdamW {c["vae_lr"]},
  MSE{_vae_weights(c)} + {c["kl_weight"]} × KL; reconstruction PSNR {r["vae_psnr_db"]:.1f} dB on held-back
  images; `shift_factor` {r["shift_factor"]:.4f}, `scaling_factor` {r["scaling_factor"]:.4f} from the latent
  statistics. {vae_minutes:.1f} min{vae_where}, then {t["encode_latents"] / 60:.1f} min to encode the dataset once.
- Transformer + CLIP + T5, jointly: {c["transformer_steps"]:,} steps, batch {c["batch_size"]}, AdamW {c["lr"]}
  (text encoders {c["text_lr"]}; warm-up {c["warmup_steps"]}, cosine to {c["min_lr_ratio"]:.0%}), EMA
  {c["ema_decay"]} of all three; rectified flow on FluxPipeline's own conventions (packed latents, `timestep = σ`,
  target noise − x0, the pipeline's shift `mu`); text through `pipe.encode_prompt` at `max_sequence_length=16`
  with gradients; {c["prompt_dropout"]:.0%} of prompts dropped to "" for classifier-free guidance. Loss
  {r["transformer_loss_first"]:.3f} → {r["transformer_loss_last"]:.3f}. {t["flow"] / 60:.1f} min.
{probe}{decoder}- Total training {total_training / 60:.0f} minutes; load
  average {r["load_average_start"][0]:.1f} at the start and {r["load_average_end"][0]:.1f} at the end (other jobs
  shared the 2 cores).
- Tokenizers are built locally and deterministically (CLIP byte-level BPE with BOS/EOS post-processing, T5
  Unigram, over `scenes.vocabulary()`): one token per word.

{notes}The full record is `training_report.json`; `heldout_scores.csv` has every test image's verdicts;
`training_prompts.txt` lists the training prompts.

## Limits

- 64×64 only; the language above only (other words become letters or `<unk>`).
- Trained for an hour on a shared 2-core CPU: see the held-out table for what it does and does not do reliably.
- The scorer is a few rules: objects that touch merge into one region (count and relation then fail), and it
  cannot tell a wrong image that happens to match the rules from a right one.
"""
    )
    path = out / "README.md"
    path.write_text(text)
    return path
