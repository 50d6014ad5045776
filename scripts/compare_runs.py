"""Two trained runs of the embedded scenes pipeline, held-out test pair by pair: did a training change help?

    python scripts/compare_runs.py RUN_A RUN_B            # markdown table: per form and attribute, A, B, B − A
    python scripts/compare_runs.py RUN_A RUN_B --json     # the same rows as JSON

RUN_A and RUN_B are pipeline folders evaluated by `train_embedded.py --pipeline scenes` (or `--evaluate-only`), or
their `heldout_scores.csv` files: the scorer's verdicts on the same held-out (prompt, seed) pairs
(`quantkit.models.scenes_eval.TEST_PAIRS`). Because both runs drew the same pairs, the difference is taken image
by image (paired), and its 95% interval is a bootstrap over prompts (the images of one prompt resampled together,
`quantkit.measure.quality.bootstrap_ci`): an interval that excludes 0 is a change the 300 test images can see;
two unpaired rates with overlapping intervals could not say as much.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

ATTRIBUTES = ("all", "background", "count", "color", "shape", "size", "relation")
FORMS = ("single", "relation", "count", "all")


def read_scores(path: str | Path):
    """A run's `heldout_scores.csv` (a folder holding one, or the file)."""
    import pandas as pd

    path = Path(path)
    csv = path / "heldout_scores.csv" if path.is_dir() else path
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv} does not exist: evaluate the run first "
            f"(python scripts/train_embedded.py --pipeline scenes --evaluate-only --out {path})."
        )
    return pd.read_csv(csv)


def paired_differences(a, b) -> list[dict]:
    """Per prompt form (and all) × attribute: n, rate in A, rate in B, B − A and its 95% interval.

    Raises:
        ValueError: the two tables do not hold the same (prompt, seed) pairs in the same order.
    """
    from quantkit.measure.quality import bootstrap_ci

    keys_a, keys_b = list(zip(a["prompt"], a["seed"], strict=True)), list(zip(b["prompt"], b["seed"], strict=True))
    if keys_a != keys_b:
        differ = sum(x != y for x, y in zip(keys_a, keys_b, strict=False)) + abs(len(keys_a) - len(keys_b))
        raise ValueError(
            f"The runs were scored on different held-out pairs ({len(keys_a)} and {len(keys_b)} rows, {differ} "
            "differ); evaluate both on scenes_eval.TEST_PAIRS (train_embedded.py --pipeline scenes --evaluate-only)."
        )
    rows = []
    for form in FORMS:
        mask = a["form"] == form if form != "all" else a["form"].notna()
        for attribute in ATTRIBUTES:
            column = f"{attribute}_ok"
            x, y = a.loc[mask, column], b.loc[mask, column]
            asked = x.notna() & y.notna()
            if not asked.any():
                continue
            x, y = x[asked].astype(bool).astype(float), y[asked].astype(bool).astype(float)
            diff = (y - x).to_numpy()
            low, high = bootstrap_ci(diff, a.loc[mask, "prompt"][asked])
            rows.append(
                {
                    "form": form,
                    "attribute": attribute,
                    "n": int(asked.sum()),
                    "a": float(x.mean()),
                    "b": float(y.mean()),
                    "difference": float(diff.mean()),
                    "low": low,
                    "high": high,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| form | attribute | n | A | B | B − A [95%] |", "|---|---|---|---|---|---|"]
    for r in rows:
        seen = " *" if r["low"] > 0 or r["high"] < 0 else ""
        lines.append(
            f"| {r['form']} | {r['attribute']} | {r['n']} | {r['a']:.1%} | {r['b']:.1%} | "
            f"{r['difference'] * 100:+.1f} [{r['low'] * 100:+.1f}, {r['high'] * 100:+.1f}]{seen} |"
        )
    return "\n".join(lines) + "\n\nStarred (*): the interval excludes 0.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="the reference run: a folder with heldout_scores.csv, or the file")
    parser.add_argument("run_b", help="the run to compare with it")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    try:
        rows = paired_differences(read_scores(args.run_a), read_scores(args.run_b))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(json.dumps(rows, indent=2) if args.json else markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
