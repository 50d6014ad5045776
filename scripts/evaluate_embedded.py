"""Quantization variants of the embedded scenes pipeline × per-attribute adherence and PSNR, with intervals.

    python scripts/evaluate_embedded.py                          # the card's table: 11 variants, 40 prompts × 3 seeds
    python scripts/evaluate_embedded.py --prompts 4 --seeds 1 --out /tmp/eval-smoke   # a quick check

Runs `quantkit.compare` on `quantkit/embedded/tiny-flux-scenes` (or --source) with
`qk.PipelineQuantizationConfig` variants — quanto int8 / int4 / int2, bitsandbytes nf4 and GGUF Q4_0, first on
the transformer, then on both text encoders — over held-out prompts (`scenes.heldout_prompts`, a fixed mix of
single, relation and count prompts) × seeds. Every variant's images are scored by
`quantkit.models.scene_scorer`; PSNR/SSIM are against the baseline's same-seed images; every number has a 95%
bootstrap interval over prompts (seeds of one prompt resampled together). Writes `<out>/evaluation.json` and
`<out>/evaluation.md` (the table), besides compare's own report; with --card also
`<source>/quantization_eval.json` and the model card `<source>/README.md` that shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/train_embedded.py

SCENES_DIR = REPO / "quantkit" / "embedded" / "tiny-flux-scenes"
TEXT_ENCODERS = ["text_encoder", "text_encoder_2"]
# (name, backend, kwargs): the same five settings on each group of components
SETTINGS = [
    ("quanto-int8", "quanto", {"weights_dtype": "int8"}),
    ("quanto-int4", "quanto", {"weights_dtype": "int4"}),
    ("quanto-int2", "quanto", {"weights_dtype": "int2"}),
    ("bnb-nf4", "bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4"}),
    ("gguf-Q4_0", "gguf", {"quant_type": "Q4_0"}),
]
# held-out prompt mix: as many single, relation and count prompts as this share of --prompts
MIX = {"single": 0.3, "relation": 0.5, "count": 0.2}


def variants(groups: dict[str, list[str]]):
    """{name: PipelineQuantizationConfig or None}: the baseline, then every setting on every component group."""
    import quantkit as qk

    out = {"baseline": None}
    for group, components in groups.items():
        for name, backend, kwargs in SETTINGS:
            out[f"{name} {group}"] = qk.PipelineQuantizationConfig(
                quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=components
            )
    return out


def evaluation_prompts(n: int, seed: int = 3) -> list[str]:
    """`n` held-out prompts in the MIX proportions (generation seeds come from --seeds; these are prompts only)."""
    from quantkit.models import scenes

    counts = {form: round(n * share) for form, share in MIX.items()}
    counts["relation"] += n - sum(counts.values())
    return [p for form, k in counts.items() for p, _ in scenes.heldout_prompts(k, seed=seed, form=form)]


def summarize(results, prompts: list[str], seeds: list[int]) -> dict:
    """Per variant: bytes, s/image, PSNR/SSIM with intervals, adherence per attribute (overall, single-object,
    two-object) with intervals."""
    from quantkit.measure.quality import adherence

    pairs = [p for p in prompts for _ in seeds]  # compare draws every prompt with every seed, prompt-major
    images = results.images
    rows = {}
    for record in results.records:
        name = record["variant"]
        row = {
            k: record.get(k)
            for k in (
                "status",
                "quantization",
                "bytes",
                "latency_s",
                "psnr",
                "psnr_ci",
                "ssim",
                "ssim_ci",
                "adherence",
                "adherence_ci",
                "error",
            )
        }
        if name in images:
            for part, keep in (("all", None), ("single", {"single"}), ("two", {"relation", "count"})):
                from quantkit.models.scenes import parse_prompt

                idx = [i for i, p in enumerate(pairs) if keep is None or parse_prompt(p).form in keep]
                summary = adherence(images[name][idx], [pairs[i] for i in idx])
                row[f"adherence_{part}"] = {k: v for k, v in summary.items() if k != "by_form"}
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SCENES_DIR)
    parser.add_argument("--out", type=Path, default=None, help="compare's folder (default: <source>/../eval-runs)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only these variant names (the baseline always runs)")
    parser.add_argument("--dtype", default="float32", help="dtype of the unquantized tensors")
    parser.add_argument(
        "--card",
        action="store_true",
        help="also save the table as <source>/quantization_eval.json and rewrite <source>/README.md (the model card)",
    )
    args = parser.parse_args(argv)

    import torch

    import quantkit as qk
    from quantkit.models.model_card_scenes import quantization_table, write_scenes_card

    prompts = evaluation_prompts(args.prompts)
    seeds = [2_000_000 + i for i in range(args.seeds)]  # generation seeds training never used
    chosen = variants({"transformer": ["transformer"], "text encoders": TEXT_ENCODERS})
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k == "baseline" or k in args.only}
    out = args.out or Path("/tmp") / f"quantkit-eval-{os.getpid()}"
    start = time.perf_counter()
    results = qk.compare(
        args.source,
        chosen,
        out=out,
        prompts=prompts,
        seeds=seeds,
        device="cpu",
        torch_dtype=getattr(torch, args.dtype),
        warmup=1,
        repeats=1,
        use_lpips=False,
        clip_model=None,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    rows = summarize(results, prompts, seeds)
    report = {
        "prompts": prompts,
        "seeds": seeds,
        "dtype": args.dtype,
        "seconds": elapsed,
        "variants": rows,
        "load_average": os.getloadavg(),
    }
    text = json.dumps(report, indent=2, default=str) + "\n"
    (out / "evaluation.json").write_text(text)
    footer = f"{len(prompts) * len(seeds)} images per variant; [low, high] = 95% bootstrap interval over prompts.\n"
    table = quantization_table(report) + "\n" + footer
    (out / "evaluation.md").write_text(table)
    print(table)
    print(f"{len(chosen)} variants in {elapsed / 60:.1f} min; wrote {out / 'evaluation.json'}")
    if args.card:
        (args.source / "quantization_eval.json").write_text(text)
        print(f"model card rewritten: {write_scenes_card(args.source)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
