"""The `quantkit` command. One subcommand so far:

    quantkit compare [SOURCE] --out DIR      memory, speed and quality of quantization variants, side by side

Run `quantkit compare --help` for its options. `python -m quantkit ...` is the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

COMPARE_HELP = """\
Load SOURCE once per variant, each in a fresh worker process, and record true bytes per component, load time,
peak memory during load and generation, latency per image, and quality against the unquantized baseline's
images for the same prompts and seeds (PSNR, SSIM; LPIPS and CLIP score when their weights are on disk;
prompt adherence on shapes pipelines). Results are written as they finish, so an interrupted run resumes
where it stopped when the same command is run again.

Writes into DIR: results.jsonl (one line per variant), results.csv, report.md and report.html with their PNG
plots, images/<variant>/ and sensitivity/.
"""

COMPARE_EPILOG = """\
examples:
  quantkit compare --out runs/compare                       the embedded pipeline, the standard variants
  quantkit compare path/to/pipeline --out runs/p --steps 8 --seeds 0 1 2
  quantkit compare --print-variants > variants.json         write the standard variants, edit, then:
  quantkit compare --variants variants.json --out runs/mine

variants file (JSON, or YAML with PyYAML installed): {name: PipelineQuantizationConfig dict, or null for the
baseline}, e.g.
  {"baseline": null,
   "quanto-int8": {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"},
                   "components_to_quantize": ["transformer", "text_encoder_2"]}}
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="quantkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"quantkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("compare", help="compare quantization variants of a pipeline", description=COMPARE_HELP,
                       epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                   help="pipeline folder or hub id (default: the embedded tiny-flux-shapes pipeline)")
    p.add_argument("-o", "--out", type=Path, default=Path("quantkit-compare"), metavar="DIR",
                   help="output folder; an existing one with the same settings is resumed (default: %(default)s)")
    p.add_argument("--variants", type=Path, metavar="FILE",
                   help="JSON/YAML file {name: config dict or null} (default: baseline + all five backends on "
                        "the transformer and the T5 encoder)")
    p.add_argument("--print-variants", action="store_true",
                   help="print the default variants for SOURCE as JSON and exit")
    p.add_argument("--prompts", nargs="+", metavar="PROMPT", help="prompts (default: four shapes prompts)")
    p.add_argument("--prompts-file", type=Path, metavar="FILE", help="prompts, one per line")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds; every prompt is drawn with each "
                   "(default: 0 1)")
    p.add_argument("--steps", type=int, metavar="N", help="inference steps (default: the pipeline's own default)")
    p.add_argument("--call-kwargs", type=json.loads, default=None, metavar="JSON",
                   help='more pipeline call arguments as JSON, e.g. \'{"true_cfg_scale": 3}\'')
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the unquantized tensors (default: as stored)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed generations first (default: 1)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="at least this many timed generations per variant (default: 3)")
    p.add_argument("--sensitivity", default="auto", metavar="VARIANT",
                   help="per-layer error study of this variant's quantization; 'auto' = the quantized variant "
                        "with the lowest PSNR, 'none' = skip (default: auto)")
    p.add_argument("--sensitivity-component", metavar="NAME",
                   help="component for the per-layer study (default: the transformer or unet)")
    p.add_argument("--keep-sensitive", type=int, default=3, metavar="N",
                   help="also run the studied variant with its N most sensitive layers kept in full precision; "
                        "0 = do not (default: 3)")
    p.add_argument("--retry-failed", action="store_true", help="run variants recorded as failed again")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop a variant after this long (recorded as "
                   "failed)")
    p.add_argument("--clip-model", metavar="PATH_OR_ID",
                   help="CLIP model on disk for the CLIP score (default: skipped; nothing is downloaded)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when its weights are on disk")
    p.add_argument("--no-report", action="store_true", help="write results.jsonl and images only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def _prompts(args) -> list[str] | None:
    prompts = list(args.prompts or [])
    if args.prompts_file is not None:
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    return prompts or None


def compare_command(args) -> int:
    from .comparison import compare, default_variants, read_variants, variants_to_dict

    if args.print_variants:
        print(json.dumps(variants_to_dict(default_variants(args.source)), indent=2))
        return 0
    variants = read_variants(args.variants) if args.variants is not None else None
    sensitivity = None if str(args.sensitivity).lower() == "none" else args.sensitivity
    t0 = time.perf_counter()
    results = compare(args.source, variants, prompts=_prompts(args), seeds=args.seeds or (0, 1), out=args.out,
                      device=args.device, torch_dtype=args.dtype, num_inference_steps=args.steps,
                      call_kwargs=args.call_kwargs, warmup=args.warmup, repeats=args.repeats,
                      sensitivity=sensitivity, sensitivity_component=args.sensitivity_component,
                      keep_sensitive=args.keep_sensitive, retry_failed=args.retry_failed, timeout_s=args.timeout,
                      use_lpips=not args.no_lpips, clip_model=args.clip_model, report=not args.no_report,
                      progress=not args.quiet)
    print(results)
    for name, error in results.failed.items():
        print(f"failed: {name}: {error}")
    written = "results.jsonl" + ("" if args.no_report else ", results.csv, report.md, report.html and plots")
    print(f"wrote {written} to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `quantkit` command with `argv` (default: sys.argv[1:]); returns the exit status.

    0: done (variants that failed are recorded in the results, not an exit status); 1: the job could not run
    (bad source, variants file or settings; the message says why); 2: bad command-line usage; 130: interrupted.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "compare":
            return compare_command(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished variants are in {getattr(args, 'out', '.')}; run the same command again "
              "to resume.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into a command that stopped reading (e.g. `| head`)
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as err:
        print(f"quantkit {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 2


__all__ = ["main"]
