"""The `quantkit` command:

    quantkit compare [SOURCE] --out DIR      memory, speed and quality of quantization variants, side by side
    quantkit plan [SOURCE] --backend B       what a quantized load will do, per component, before any weight is read
    quantkit fit [SOURCE] --gpu T4           which configs fit a GPU, by their predicted peak
    quantkit footprint FOLDER                true bytes per component of a (saved) pipeline
    quantkit backends                        each backend, its package and version, what runs on this machine

Run `quantkit VERB --help` for a verb's options; `--json` prints the table as JSON. `python -m quantkit ...` is the
same command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# exit statuses (main's docstring and docs/errors.md say what each means)
OK, CANNOT_RUN, USAGE, VARIANTS_FAILED, INTERRUPTED = 0, 1, 2, 3, 130
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed

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

exit status: 0 every variant finished; 1 the comparison could not run (the message says why; nothing was run);
2 bad command-line usage; 3 it ran and wrote its report, but some variants failed (listed, with why and whether
--retry-failed may help now); 130 interrupted (run the same command again to resume).
"""


def whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum], else a usage error that says the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            allowed = f"{minimum} or more" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {allowed}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return value


def prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty prompt draws nothing; write the prompt, e.g. 'a red circle'")
    return text


def prompts_file(text: str) -> list[str]:
    """An argparse type: the prompts in a text file, one per line (blank lines skipped); at least one."""
    path = Path(text)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {state}; pass a text file with one prompt per line")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as UTF-8 text ({err})") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise argparse.ArgumentTypeError(f"{text!r} has no prompts (it is empty or blank); write one prompt per line")
    return prompts


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {state}; pass a JSON or YAML file (see --print-variants)")
    return path


def json_object(text: str) -> dict:
    """An argparse type: a JSON object of pipeline call arguments (standard JSON: no NaN or Infinity)."""
    try:
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid JSON ({err}); e.g. '{{\"true_cfg_scale\": 3}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a JSON {type(value).__name__}; pass an object such as '{{\"true_cfg_scale\": 3}}'"
        )
    return value


def device_name(text: str) -> str:
    from .devices import parse_device

    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="quantkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"quantkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "compare",
        help="compare quantization variants of a pipeline",
        description=COMPARE_HELP,
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        metavar="SOURCE",
        help="pipeline folder or hub id (default: the embedded tiny-flux-scenes pipeline)",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("quantkit-compare"),
        metavar="DIR",
        help="output folder; an existing one with the same settings is resumed (default: %(default)s)",
    )
    p.add_argument(
        "--variants",
        type=existing_file,
        metavar="FILE",
        help="JSON/YAML file {name: config dict or null} (default: baseline + all five backends on "
        "the transformer and the T5 encoder)",
    )
    p.add_argument(
        "--print-variants", action="store_true", help="print the default variants for SOURCE as JSON and exit"
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        type=prompt,
        metavar="PROMPT",
        help="prompts (default: the examples in the source's model card, else four shapes prompts)",
    )
    p.add_argument("--prompts-file", type=prompts_file, metavar="FILE", help="prompts, one per line")
    p.add_argument(
        "--seeds",
        nargs="+",
        type=whole_number(0, SEED_MAX),
        metavar="SEED",
        help="seeds; every prompt is drawn with each (default: 0 1)",
    )
    p.add_argument(
        "--steps",
        type=whole_number(1, 10_000),
        metavar="N",
        help="inference steps, 1 or more (default: the pipeline's own default)",
    )
    p.add_argument(
        "--call-kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help="more pipeline call arguments as JSON, e.g. '{\"true_cfg_scale\": 3}'",
    )
    p.add_argument("--device", type=device_name, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the unquantized tensors (default: as stored)",
    )
    p.add_argument(
        "--warmup", type=whole_number(0, 1000), default=1, metavar="N", help="untimed generations first (default: 1)"
    )
    p.add_argument(
        "--repeats",
        type=whole_number(1, 10_000),
        default=3,
        metavar="N",
        help="at least this many timed generations per variant (default: 3)",
    )
    p.add_argument(
        "--sensitivity",
        default="auto",
        metavar="VARIANT",
        help="per-layer error study of this variant's quantization; 'auto' = the quantized variant "
        "with the lowest PSNR, 'none' = skip (default: auto)",
    )
    p.add_argument(
        "--sensitivity-component",
        metavar="NAME",
        help="component for the per-layer study (default: the transformer or unet)",
    )
    p.add_argument(
        "--keep-sensitive",
        type=whole_number(0),
        default=3,
        metavar="N",
        help="also run the studied variant with its N most sensitive layers kept in full precision; "
        "0 = do not (default: 3)",
    )
    p.add_argument("--retry-failed", action="store_true", help="run variants recorded as failed again")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first variant that fails (exit status 1) instead of recording it and going on",
    )
    p.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="stop a variant after this long (recorded as failed)"
    )
    p.add_argument(
        "--clip-model",
        metavar="PATH_OR_ID",
        help="CLIP model on disk for the CLIP score (default: skipped; nothing is downloaded)",
    )
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when its weights are on disk")
    p.add_argument("--no-report", action="store_true", help="write results.jsonl and images only")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these variants (and the baseline), by name; see --print-variants",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _verbs(sub)
    return parser


def _prompts(args) -> list[str] | None:
    prompts = list(args.prompts or []) + list(args.prompts_file or [])
    return prompts or None


def compare_options(args) -> dict:
    """The CompareSettings options the parsed command line stands for (everything but source, variants, out)."""
    sensitivity = None if str(args.sensitivity).lower() == "none" else args.sensitivity
    return dict(
        prompts=_prompts(args),
        seeds=args.seeds or (0, 1),
        device=args.device,
        torch_dtype=args.dtype,
        num_inference_steps=args.steps,
        call_kwargs=args.call_kwargs,
        warmup=args.warmup,
        repeats=args.repeats,
        sensitivity=sensitivity,
        sensitivity_component=args.sensitivity_component,
        keep_sensitive=args.keep_sensitive if sensitivity is not None else 0,
        retry_failed=args.retry_failed,
        strict=args.strict,
        timeout_s=args.timeout,
        use_lpips=not args.no_lpips,
        clip_model=args.clip_model,
        report=not args.no_report,
        progress=not args.quiet,
    )


def _read_variants(path: Path):
    """`read_variants`, with a YAML parser's own errors and undecodable bytes as ValueErrors naming the file."""
    from .comparison import read_variants

    try:
        return read_variants(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8.") from None
    except (ValueError, TypeError, ImportError, OSError):
        raise
    except Exception as err:
        if type(err).__module__.split(".")[0] != "yaml":
            raise
        raise ValueError(
            f"{path} is not valid YAML ({err}). Expected {{name: config dict or null}} (see --print-variants)."
        ) from None


def compare_command(args) -> int:
    from .comparison import compare, default_variants, variants_to_dict
    from .comparison.engine import failure_hints

    if args.print_variants:
        print(json.dumps(variants_to_dict(default_variants(args.source)), indent=2))
        return OK
    variants = _read_variants(args.variants) if args.variants is not None else None
    if args.only:
        variants = _only(variants if variants is not None else default_variants(args.source), args.only)
    t0 = time.perf_counter()
    options = compare_options(args)
    with _warnings_to_stderr():
        results = compare(args.source, variants, out=args.out, **options)
    print(results)
    written = "results.jsonl" + ("" if args.no_report else ", results.csv, report.md, report.html and plots")
    print(f"wrote {written} to {args.out} in {time.perf_counter() - t0:.1f} s")
    failed = results.failed
    if not failed:
        return OK
    hints = failure_hints(results)
    print(f"{len(failed)} of {len(results.records)} variants failed:", file=sys.stderr)
    for name, error in failed.items():
        print(f"  {name}: {_one_line(error)}", file=sys.stderr)
        if name in hints:
            print(f"    {hints[name]}: run the same command with --retry-failed to measure it", file=sys.stderr)
    return VARIANTS_FAILED


class _warnings_to_stderr:
    """Show warnings as one line each ("warning: ..."), not with a source line."""

    def __enter__(self):
        import warnings

        self._show = warnings.showwarning
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {_one_line(message)}", file=sys.stderr)

    def __exit__(self, *exc):
        import warnings

        warnings.showwarning = self._show


def _only(variants: dict, names: list[str]) -> dict:
    """The variants named by --only (the baseline always stays); an unknown name is a ValueError with the nearest."""
    from .errors import did_you_mean

    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(
            f"--only names {unknown[0]!r}, which is not a variant.{did_you_mean(unknown[0], variants)} "
            f"Variants: {', '.join(variants)}."
        )
    return {n: c for n, c in variants.items() if c is None or n in names}


# the third-party loggers `_quiet_third_party` sets to ERROR in the command's own process
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops", "torchao.kernel.intmm")


def _quiet_third_party() -> None:
    """In the command's own process only: drop import-time notes of third-party libraries that say nothing about
    the run (torchao's missing optional CUDA kernels on a CPU build, torch's pytree notes, bitsandbytes' optional
    kernel package, transformers' image-processor fallback, diffusers' torch_dtype deprecation from inside
    transformers). A user's own Python process is never changed."""
    import logging
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*`torch_dtype` is deprecated.*", category=FutureWarning)
    try:
        import transformers.utils.logging as tl

        tl.set_verbosity_error()
    except ImportError:
        pass


def _verbs(sub) -> None:
    """The plan, fit, footprint and backends verbs (their work is in quantkit.cli_verbs)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "plan",
        help="what a quantized load will do, per component, before any weight is read",
        formatter_class=fmt,
        epilog=PLAN_EPILOG,
    )
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        metavar="SOURCE",
        help="pipeline folder or hub id; published pipelines of quantkit's catalog plan offline",
    )
    _config_arguments(p)
    p.add_argument("--device", type=device_name, help="the device to plan for (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the unquantized tensors")
    p.add_argument("--height", type=whole_number(1, 65536), metavar="PX", help="also predict the peak at this size")
    p.add_argument("--width", type=whole_number(1, 65536), metavar="PX", help="(default: the height)")
    p.add_argument("--offload", choices=["model", "group", "sequential"], help="the offload mode the peak assumes")
    p.add_argument("--layers", metavar="COMPONENT", help="also list every Linear layer of COMPONENT and its decision")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser(
        "fit", help="which configs fit a GPU, by their predicted peak", formatter_class=fmt, epilog=FIT_EPILOG
    )
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help="pipeline folder or catalog hub id")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--gpu", metavar="NAME", help="a known GPU: T4, L4, A10G, A100-40GB, H100, RTX4090, ...")
    budget.add_argument("--memory", metavar="SIZE", help="usable GPU memory, e.g. 15GiB or 16GB")
    p.add_argument("--height", type=whole_number(1, 65536), default=1024, metavar="PX", help="(default: 1024)")
    p.add_argument("--width", type=whole_number(1, 65536), metavar="PX", help="(default: the height)")
    p.add_argument("--num-images", type=whole_number(1, 64), default=1, metavar="N", help="(default: 1)")
    p.add_argument("--host-memory", metavar="SIZE", help="the machine's RAM, e.g. 12GiB on a free Colab (checked too)")
    p.add_argument("--top", type=whole_number(1), metavar="N", help="print only the first N candidates")
    p.add_argument("--json", action="store_true", help="print the candidates as JSON")

    p = sub.add_parser(
        "footprint", help="true bytes per component of a pipeline folder (it is loaded)", formatter_class=fmt
    )
    p.add_argument("folder", metavar="FOLDER", help="a pipeline folder (e.g. one written by save_pipeline)")
    p.add_argument("--device", type=device_name, default="cpu", help="where to load it (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")

    p = sub.add_parser(
        "backends", help="each backend, its package and version, what runs on this machine", formatter_class=fmt
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _config_arguments(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--backend", metavar="NAME", help="quant_backend of the simple form (see `quantkit backends`)")
    group.add_argument(
        "--config",
        type=existing_file,
        metavar="FILE",
        help="a PipelineQuantizationConfig as JSON (what config.to_json() writes)",
    )
    p.add_argument(
        "--kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help='the backend\'s quant_kwargs as JSON, e.g. \'{"weights_dtype": "int8"}\'',
    )
    p.add_argument(
        "--components",
        nargs="+",
        metavar="NAME",
        help="components_to_quantize (default: the denoiser and the T5 encoders)",
    )


PLAN_EPILOG = """\
examples:
  quantkit plan --backend quanto --kwargs '{"weights_dtype": "int8"}'        the embedded pipeline
  quantkit plan black-forest-labs/FLUX.1-dev --backend bitsandbytes_4bit --device cuda --dtype bfloat16 --height 1024
  quantkit plan path/to/pipeline --config my-config.json --json
"""

FIT_EPILOG = """\
examples:
  quantkit fit black-forest-labs/FLUX.1-dev --gpu T4 --top 5
  quantkit fit stabilityai/stable-diffusion-3.5-large --memory 16GiB --height 1024 --json
"""


def _one_line(text) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run the `quantkit` command with `argv` (default: sys.argv[1:]); returns the exit status.

    0 (OK): every variant finished; 1 (CANNOT_RUN): the job could not run (bad source, variants file or settings,
    a device this machine lacks; with --strict, the first failure; the message says why, in one line); 2 (USAGE):
    bad command-line usage (argparse's message); 3 (VARIANTS_FAILED): the comparison ran and its report is written,
    but some variants failed (listed with why, and whether --retry-failed may help now); 130: interrupted.
    """
    args = _parser().parse_args(argv)
    _quiet_third_party()
    try:
        if args.command == "compare":
            return compare_command(args)
        from .cli_verbs import VERBS

        return VERBS[args.command](args)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the finished variants are in {getattr(args, 'out', '.')}; run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        return INTERRUPTED
    except BrokenPipeError:  # the output was piped into a command that stopped reading (e.g. `| head`)
        sys.stderr.close()
        return OK
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as err:
        print(f"quantkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return CANNOT_RUN
    return USAGE


__all__ = ["CANNOT_RUN", "INTERRUPTED", "OK", "USAGE", "VARIANTS_FAILED", "compare_options", "main"]
