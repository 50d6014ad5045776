"""Benchmark of the main job: `quantkit compare` with its defaults, timed stage by stage.

    python benchmarks/bench_compare.py                      # the embedded pipeline, into a temp folder
    python benchmarks/bench_compare.py --source DIR --out runs/bench

Prints, per variant, where its time went (starting the worker, imports, load, warm-up, generation, quality,
saving), then the per-layer study, the report, and the total. Budget: the default run on the embedded pipeline
finishes in under 2 minutes on 2 CPU cores. The first run on a machine also pays for writing the GGUF files
(cached afterwards in $QUANTKIT_CACHE); this script uses a fresh cache unless --keep-cache is given, so it
measures that first run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="pipeline folder (default: the embedded pipeline)")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temp folder; an existing one resumes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-cache", action="store_true", help="reuse $QUANTKIT_CACHE (GGUF files) if set")
    args = parser.parse_args(argv)
    if not args.keep_cache:
        os.environ["QUANTKIT_CACHE"] = tempfile.mkdtemp(prefix="quantkit-bench-cache-")
    out = args.out or Path(tempfile.mkdtemp(prefix="quantkit-bench-"))

    t0 = time.perf_counter()
    from quantkit.comparison import compare

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    results = compare(
        args.source,
        None,
        out=out,
        device=args.device,
        sensitivity="auto",
        keep_sensitive=3,
        report=False,
        progress=False,
    )
    t_compare = time.perf_counter() - t
    t = time.perf_counter()
    results.save()
    t_report = time.perf_counter() - t
    total = time.perf_counter() - t0

    stages = ("worker_start_s", "imports_s", "load_s", "warmup_s", "generate_s", "quality_s", "save_s", "wall_s")
    print(f"quantkit compare, defaults, {results.meta['settings']['source']} on {args.device}: {out}")
    print(f"{'variant':<22}" + "".join(f"{s.removesuffix('_s'):>13}" for s in stages) + f"{'status':>8}")
    for r in results.records:
        timings = r.get("timings") or {}
        cells = "".join(f"{timings[s]:>13.2f}" if timings.get(s) is not None else f"{'-':>13}" for s in stages)
        print(f"{r['variant']:<22}{cells}{r['status']:>8}")
    for info in results.sensitivity.values():
        meta = json.loads((out / "sensitivity" / f"{info['variant']}__{info['component']}.json").read_text())
        print(f"per-layer study of {info['variant']} / {info['component']}: {meta['timings']['wall_s']:.2f} s")
    print(
        f"import quantkit.comparison: {t_import:.2f} s; compare(): {t_compare:.2f} s; report and plots: "
        f"{t_report:.2f} s; total {total:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
