"""Train quantkit's embedded pipelines on CPU: v1 "tiny-flux-shapes" (the script's default) or v2 "tiny-flux-scenes"
(quantkit's default pipeline).

    python scripts/train_embedded.py --smoke                  # v1, < 1 minute, end to end, into a temp folder
    python scripts/train_embedded.py --preset pilot --out runs/pilot
    python scripts/train_embedded.py --out quantkit/embedded/tiny-flux-shapes   # v1's shipped run

    python scripts/train_embedded.py --pipeline scenes --smoke                  # v2, seconds
    python scripts/train_embedded.py --pipeline scenes --out quantkit/embedded/tiny-flux-scenes   # v2's shipped run
    python scripts/train_embedded.py --pipeline scenes --evaluate-only --out quantkit/embedded/tiny-flux-scenes
    python scripts/train_embedded.py --pipeline scenes --continue-flow 1500 --out DIR   # v2: more flow steps, same VAE

Each stage prints its wall time; `<out>/training_report.json` records config, timings, losses, held-out
adherence and seconds per image. What is trained and how: quantkit/models/train.py (v1),
quantkit/models/scenes_train.py (v2); the shared stages are in quantkit/models/training.py.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
# OpenMP threads that spin while waiting make a 2-thread run 5-10× slower as soon as another process wants a core
# (measured here: 4.0 s vs 0.3 s per transformer step). Sleeping waits cost little when the machine is idle.
# Must be set before torch is imported. Not for --evaluate-only: sleeping waits make a one-image call on two threads
# slower than on one (measured, issue 16: 1.14 s against 0.64 s), so the s/image budget would be judged on a
# slowdown users never see.
if "--evaluate-only" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from quantkit.models.train import PRESETS, config_from_preset, evaluate_and_document, train_embedded  # noqa: E402


def log(message: str) -> None:
    print(message, flush=True)


def scenes_main(args) -> int:
    """v2: train (unless --evaluate-only), then evaluate and write the model card (unless --no-evaluate)."""
    from quantkit.models.scenes_eval import evaluate_scenes_folder
    from quantkit.models.scenes_train import scenes_config, train_scenes

    if args.evaluate_only or args.continue_decoder or args.continue_flow:
        if args.out is None:
            raise SystemExit(
                "--evaluate-only / --continue-decoder / --continue-flow need --out (a folder written by this script)"
            )
        if args.continue_flow:
            from quantkit.models.scenes_continue import continue_flow

            continue_flow(args.out, args.continue_flow, log=log)
        if args.continue_decoder:
            from quantkit.models.scenes_continue import continue_with_decoder

            continue_with_decoder(args.out, log=log)
        if not args.no_evaluate:
            report = json.loads((args.out / "training_report.json").read_text())
            defaults = report["config"]["generation_defaults"]
            report["config"]["generation_defaults"] = new_defaults(defaults, args)
            evaluate_scenes_folder(args.out, report, choose_defaults=args.compare, log=log)
        return 0
    preset = "smoke" if args.smoke else args.preset
    config = scenes_config(
        preset,
        seed=args.seed,
        n_images=args.n_images,
        vae_steps=args.vae_steps,
        transformer_steps=args.transformer_steps,
        batch_size=args.batch_size,
        flow_ranks=args.flow_ranks,
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="tiny-flux-scenes-smoke-"))
    print(f"preset {preset}: {config}\nwriting to {out}", flush=True)
    start = time.perf_counter()
    try:
        train_scenes(out, config, log=log, vae_from=args.vae_from, stop_after_vae=args.vae_only, preset=preset)
    except ValueError as error:  # bad --vae-from: said before any training
        raise SystemExit(f"error: {error}") from None
    print(f"training {time.perf_counter() - start:.0f} s", flush=True)
    if not (args.no_evaluate or args.smoke or args.vae_only):
        evaluate_scenes_folder(out, log=log)
    return 0


def new_defaults(defaults: dict, args) -> dict:
    """The generation defaults with --num-inference-steps / --true-cfg-scale applied (where given)."""
    defaults = dict(defaults)
    if args.num_inference_steps is not None:
        defaults["num_inference_steps"] = args.num_inference_steps
    if args.true_cfg_scale is not None:
        defaults.pop("true_cfg_scale", None)
        defaults.pop("negative_prompt", None)
        if args.true_cfg_scale > 1:  # FluxPipeline only runs CFG when a negative prompt is given
            defaults.update(true_cfg_scale=args.true_cfg_scale, negative_prompt="")
    return defaults


def evaluate_only(args) -> int:
    """Re-evaluate a trained folder, optionally with new generation defaults."""

    if args.out is None:
        raise SystemExit("--evaluate-only needs --out (a folder written by this script)")
    report = json.loads((args.out / "training_report.json").read_text())
    defaults = new_defaults(report["config"]["generation_defaults"], args)
    evaluate_and_document(args.out, report, defaults, compare=args.compare, log=lambda m: print(m, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default: a temp folder for --smoke, else required)")
    parser.add_argument(
        "--pipeline",
        choices=["shapes", "scenes"],
        default="shapes",
        help="shapes = v1 (tiny-flux-shapes, 32×32); scenes = v2 (tiny-flux-scenes, 64×64)",
    )
    parser.add_argument("--no-evaluate", action="store_true", help="scenes: train and save only")
    parser.add_argument(
        "--continue-decoder",
        action="store_true",
        help="scenes: run the decoder stage on a folder trained before that stage existed",
    )
    parser.add_argument(
        "--continue-flow",
        type=int,
        metavar="STEPS",
        help="scenes: train the transformer and text encoders of --out for STEPS more steps (the VAE is kept)",
    )
    from quantkit.models.scenes_train import SCENES_PRESETS

    parser.add_argument(
        "--preset",
        choices=sorted(set(PRESETS) | set(SCENES_PRESETS)),
        default="full",
        help=f"v1: {', '.join(sorted(PRESETS))}; --pipeline scenes: {', '.join(sorted(SCENES_PRESETS))}",
    )
    parser.add_argument(
        "--vae-only", action="store_true", help="scenes: train and save the VAE stage only (a start for --vae-from)"
    )
    parser.add_argument(
        "--vae-from",
        type=Path,
        metavar="DIR",
        help="scenes: take the trained VAE of DIR (same VAE settings) and skip the VAE stage",
    )
    parser.add_argument("--smoke", action="store_true", help="same as --preset smoke, then reload and generate")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--n-images", type=int)
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--transformer-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--flow-ranks", type=int, help="v2: processes for the flow stage, one thread each (2 on a 2-core machine)"
    )
    parser.add_argument("--eval-pairs", type=int)
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip training: re-evaluate the pipeline in --out, rewrite its report, grid and model card",
    )
    parser.add_argument("--num-inference-steps", type=int, help="with --evaluate-only: new default steps")
    parser.add_argument("--true-cfg-scale", type=float, help="with --evaluate-only: new default CFG scale")
    parser.add_argument("--compare", action="store_true", help="with --evaluate-only: compare settings first")
    args = parser.parse_args(argv)

    if args.pipeline == "scenes":
        return scenes_main(args)
    if args.flow_ranks is not None:
        parser.error("--flow-ranks is for --pipeline scenes (v1 trains in one process)")
    if args.evaluate_only:
        return evaluate_only(args)

    preset = "smoke" if args.smoke else args.preset
    config = config_from_preset(
        preset,
        seed=args.seed,
        n_images=args.n_images,
        vae_steps=args.vae_steps,
        transformer_steps=args.transformer_steps,
        batch_size=args.batch_size,
        eval_pairs=args.eval_pairs,
    )
    if args.out is None and not args.smoke:
        parser.error("--out is required unless --smoke is given")
    out = args.out or Path(tempfile.mkdtemp(prefix="tiny-flux-shapes-smoke-"))
    print(f"preset {preset}: {config}\nwriting to {out}", flush=True)
    start = time.perf_counter()
    train_embedded(out, config, log=lambda message: print(message, flush=True))
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)

    if args.smoke:  # the reload check a user would do
        import torch
        from diffusers import DiffusionPipeline

        from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

        pipe = DiffusionPipeline.from_pretrained(out)
        apply_generation_defaults(pipe, read_generation_defaults(out))
        image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
        print(f"reloaded {type(pipe).__name__} from {out}; generated a {image.size} image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
