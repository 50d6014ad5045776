"""Checkers for 05 (the Pareto front; a public row that fits a card), 06 (GGUF bytes) and 07 (true compression)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._common import FLUX_DEV_PUBLIC, not_yet, number, ok, pending

# -- 05 backend shoot-out --------------------------------------------------------------------------------------


def pareto_variants(frame, metric: str = "psnr") -> list[str]:
    """Variants of a CompareResults.frame on the bytes-vs-`metric` Pareto front (higher metric is better).

    The baseline's PSNR is infinite (identical to itself), so it is on the front as the largest, exact point.
    """
    from ...comparison.pareto import front_variants

    return sorted(front_variants(frame, metric))


def check_pareto(answer: Any, frame, metric: str = "psnr") -> None:
    """05: the names of the variants on the bytes-vs-PSNR Pareto front of `frame`."""
    if pending(answer):
        return not_yet("set `answer` to the list of variant names on the front, e.g. ['baseline', ...].")
    if isinstance(answer, str) or not isinstance(answer, Iterable):
        raise AssertionError(f"answer should be a list of variant names, got {type(answer).__name__}.")
    given = set(map(str, answer))
    unknown = sorted(given - set(frame.index))
    if unknown:
        raise AssertionError(f"{unknown} are not variants of this comparison; they are {sorted(frame.index)}.")
    expected = set(pareto_variants(frame, metric))
    if given != expected:
        extra, missing = sorted(given - expected), sorted(expected - given)
        hints = []
        if extra:
            hints.append(
                f"{extra} {'is' if len(extra) == 1 else 'are'} beaten: another variant has fewer bytes "
                f"and a higher {metric}"
            )
        if missing:
            hints.append(
                f"you left out {len(missing)} variant(s) that nothing beats on both (hint: sort by bytes and "
                f"keep each one whose {metric} beats every smaller one; the baseline counts, its PSNR is "
                "infinite)"
            )
        raise AssertionError("Not quite: " + "; ".join(hints) + ".")
    return ok(f"{len(expected)} variants on the front; every other one is dominated.")


def check_public_fit(answer: Any, card: str = "L4") -> None:
    """05: of the public FLUX.1-dev rows whose *peak* fits `card` (a 24 GB card by default), the fastest one's name.

    The rows' memory is GiB of max_memory_reserved, which leaves out the CUDA context: it is compared with the card's
    usable memory (quantkit.planning.gpus: what torch reports, less the context), in GiB too.
    """
    from ...planning.gpus import resolve_gpu

    if pending(answer):
        return not_yet("set `answer` to one name from the table, e.g. 'quanto int8'.")
    if answer not in FLUX_DEV_PUBLIC:
        raise AssertionError(f"{answer!r} is not a row of the table; use one of {sorted(FLUX_DEV_PUBLIC)}.")
    gpu = resolve_gpu(card)
    usable = gpu.usable_gib
    after, peak, seconds = FLUX_DEV_PUBLIC[answer]
    fits = {k: v for k, v in FLUX_DEV_PUBLIC.items() if v[1] <= usable}
    best = min(fits.values(), key=lambda v: v[2])[2]
    if peak > usable:
        raise AssertionError(
            f"{answer} holds {after} GiB after load, but its peak during generation is {peak} GiB, more than the "
            f"{usable:g} GiB a {gpu.name} can give it ({gpu.total_gib:g} GiB as torch sees the card, less "
            f"{gpu.context_gib:g} GiB of CUDA context): a card must hold the peak, not only the weights after load."
        )
    if seconds > best:
        raise AssertionError(
            f"{answer} fits ({peak} GiB peak), but it takes {seconds} s per image; another row that fits is faster."
        )
    return ok(
        f"{answer}: {peak} GiB peak of {usable:g} GiB usable, {seconds} s per image — as fast as BF16 in less than "
        "half its memory."
    )


# -- 06 GGUF, 07 measuring honestly --------------------------------------------------------------------------


def gguf_bytes(quant_type: str, shape: tuple[int, int]) -> int:
    """Bytes of a (out_features, in_features) weight in a GGUF block format: rows × blocks per row × block bytes."""
    from ...backends.gguf import BLOCKS

    per_block, block_bytes = BLOCKS[quant_type]
    rows, cols = shape
    return rows * (cols // per_block) * block_bytes


def check_gguf_bytes(answer: Any, quant_type: str = "Q5_1", shape: tuple[int, int] = (12288, 3072)) -> None:
    """06: the bytes of one (out_features, in_features) weight in a GGUF format, scales (and minimums) included."""
    from ...backends.gguf import BLOCKS

    if pending(answer):
        return not_yet(f"set `answer` to the number of bytes of a {shape} weight in {quant_type}.")
    value = number(answer, "answer")
    expected = gguf_bytes(quant_type, shape)
    n = shape[0] * shape[1]
    if value == expected:
        return ok(f"{expected:,} bytes, {8 * expected / n:g} bits per weight in {quant_type}.")
    nominal = int("".join(c for c in quant_type.split("_")[0] if c.isdigit()) or 16)
    extra = " and an fp16 minimum" if quant_type.endswith("_1") else ""
    hints = {
        n * nominal / 8: f"That counts only the {nominal}-bit codes. Every block of {BLOCKS[quant_type][0]} weights "
        f"also stores an fp16 scale{extra}: use the block's bytes from the table.",
        n * 2: "That is the size in BF16 (2 bytes per weight), before quantization.",
        n * 4: "That is the size in float32 (4 bytes per weight), before quantization.",
        expected * 8: "That is the size in bits; divide by 8 for bytes.",
        float(n): "That is the number of weights, not of bytes.",
    }
    for other in BLOCKS:
        if other != quant_type:
            hints.setdefault(
                gguf_bytes(other, shape), f"That is the size in {other}; the question asks for {quant_type}."
            )
    hint = hints.get(
        value,
        f"Your answer is {value / expected:.3g}× the right size. Count rows × (columns / weights "
        f"per block) × bytes per block, with the {quant_type} row of the block table.",
    )
    raise AssertionError(f"{value:,.0f} bytes is not right for a {shape} weight in {quant_type}. {hint}")


def check_compression_ratio(
    answer: Any,
    unquantized_bytes: int,
    quantized_bytes: int,
    reported_bytes: int | None = None,
    nominal: float = 4.0,
) -> None:
    """07: how many times smaller the quantized weights really are (true bytes, not what get_memory_footprint says).

    Args:
        answer: the learner's ratio; within 2 % counts.
        unquantized_bytes, quantized_bytes: true bytes of the same component without and with quantization.
        reported_bytes: what get_memory_footprint() says for the quantized one (for a targeted hint).
        nominal: the ratio of the formats alone (float32 -> int8: 4), the prediction that forgets the scales.
    """
    if pending(answer):
        return not_yet("set `answer` to the ratio: true bytes unquantized / true bytes quantized.")
    value = number(answer, "answer")
    expected = unquantized_bytes / quantized_bytes

    def near(x: float) -> bool:
        return abs(value - x) <= 0.02 * abs(x)

    if near(expected):
        return ok(f"the weights really take {expected:.2f}× less memory.")
    if near(nominal) and not near(expected):
        hint = (
            f"{nominal:g}x is the ratio of the codes alone (float32's 4 bytes to int8's 1 byte per weight). The true "
            "ratio is lower: every row keeps a float32 scale, and the biases, norms and embeddings stay in float32 — "
            "look at the true bytes of section 1."
        )
    elif reported_bytes and near(unquantized_bytes / reported_bytes):
        hint = (
            "That is what get_memory_footprint() suggests: it counts quantized tensors at their original dtype. "
            "Use the true `bytes` column of qk.footprint(...), not `reported_bytes`."
        )
    elif near(1 / expected):
        hint = "That is the ratio upside down: divide the unquantized bytes by the quantized bytes."
    else:
        hint = "Divide the component's true bytes unquantized by its true bytes quantized (the `bytes` columns)."
    raise AssertionError(f"{value:.3g} is not the true compression ratio. {hint}")


__all__ = [
    "check_compression_ratio",
    "check_gguf_bytes",
    "check_pareto",
    "check_public_fit",
    "gguf_bytes",
    "pareto_variants",
]
