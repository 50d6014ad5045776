"""Checkers for 13 (make FLUX.1-dev fit a T4 by its predicted peak) and 14 (choose from qk.fit's table).

Both judge the *peak* the planner predicts for one generation (`quantkit.planning.peak`: weights resident at the
worst moment + activations + the allocator's cache + the VAE decode workspace), in bytes comparable with
`torch.cuda.max_memory_reserved`, against the card's usable memory (what torch reports, less the CUDA context;
`quantkit.planning.gpus`). Static bytes alone are not the question: a card must hold the peak.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import GIB, not_yet, ok

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
OFFLOADS = (None, "model", "group", "sequential")
COLAB_HOST_RAM_GB = 12.7  # a free Colab session's system RAM (decimal GB, as Colab shows it)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def predict_flux_peak(config, offload, *, source: str = FLUX_DEV, height: int = 1024, width: int = 1024):
    """The planner's PeakEstimate for one generation of `source` under `config` and `offload`, on a CUDA device."""
    from ...planning import plan

    return plan(source, config, device="cuda", height=height, width=width, offload=offload).peak


def _as_config(config: Any):
    from ...config import PipelineQuantizationConfig

    if config is None or isinstance(config, PipelineQuantizationConfig):
        return config
    if type(config).__name__ == "PipelineQuantizationConfig":  # diffusers' own class
        return PipelineQuantizationConfig.from_diffusers(config)
    raise AssertionError(
        f"config should be a qk.PipelineQuantizationConfig (or None for unquantized), got {type(config).__name__}."
    )


def check_fits_gpu(
    config: Any,
    offload: Any = ...,
    *,
    gpu: str = "T4",
    source: str = FLUX_DEV,
    height: int = 1024,
    width: int = 1024,
    predict: Callable | None = None,
) -> None:
    """13: `config` with `offload` fits `gpu` by the predicted peak of one `height` x `width` generation.

    Args:
        config: a PipelineQuantizationConfig (quantkit's or diffusers'), or None for unquantized; `...` = unanswered.
        offload: None, "model" or "group" (`...` = unanswered); "sequential" fits anything and is refused: every
            layer crosses PCIe at every step.
        gpu: a name from quantkit.planning.gpus.GPUS.
        source, height, width: what is generated (a catalog id: sized offline).
        predict: `predict(config, offload) -> PeakEstimate`; None = the planner (`predict_flux_peak`).
    """
    from ...planning.gpus import resolve_gpu

    if config is ... or offload is ...:
        return not_yet("set `config` (a qk.PipelineQuantizationConfig, or None) and `offload` (None or 'model').")
    config = _as_config(config)
    if offload not in OFFLOADS:
        raise AssertionError(f"offload should be one of {OFFLOADS}, got {offload!r}.")
    if offload == "sequential":
        raise AssertionError(
            "Sequential offload fits almost anything — one layer on the GPU at a time — but every layer crosses "
            "PCIe at every step (~5-20x slower). Find a config that fits with offload=None, 'model' or 'group'."
        )
    card = resolve_gpu(gpu)
    budget = card.usable_bytes
    if predict is None:

        def predict(c, o):
            return predict_flux_peak(c, o, source=source, height=height, width=width)

    est = predict(config, offload)
    over = est.peak - budget
    if over > 0:
        resident = sorted(est.resident.items(), key=lambda kv: -kv[1])
        on_gpu = ", ".join(f"{n} {_gib(b)}" for n, b in resident) or "nothing"
        extra = est.peak - est.weights
        head = (
            f"Predicted peak {_gib(est.peak)} during {est.phase}, {_gib(over)} over the {card.name}'s "
            f"{_gib(budget)} usable. On the GPU at that moment: {on_gpu}; activations, cache and workspaces "
            f"{_gib(extra)} more."
        )
        if offload is None and est.weights > budget:
            hint = (
                "The weights alone do not fit: quantize more of them (the T5 encoder is 8.9 GiB in BF16), use "
                "fewer bits, or offload='model' so that only the component that runs sits on the GPU."
            )
        elif offload is None:
            hint = (
                f"The weights fit ({_gib(est.weights)}), the {est.phase} phase on top of them does not: leave fewer "
                "weights resident (offload='model') or give the big components fewer bits."
            )
        else:
            name, size = resident[0] if resident else ("?", 0)
            hint = (
                f"With {offload} offload the GPU holds {name} ({_gib(size)}) when the peak happens: it must fit "
                "with its activations, so quantize it (4-bit leaves the most room)."
            )
        raise AssertionError(f"{head} {hint}")
    host = est.host_run / 1e9
    host_note = (
        f"host RAM while generating {host:.1f} GB (a free Colab session has ~{COLAB_HOST_RAM_GB} GB)"
        if offload
        else "nothing offloaded to host RAM"
    )
    components = ["transformer", "text_encoder_2", "text_encoder", "vae"]
    specs = {n: config.spec_for(n, components) for n in components} if config is not None else {}
    label = ", ".join(f"{n} {s.label()}" for n, s in specs.items() if s is not None) or "unquantized"
    return ok(
        f"predicted peak {_gib(est.peak)} during {est.phase}, {_gib(-over)} to spare on the {card.name} "
        f"({label}; offload={offload!r}); {host_note}."
    )


def capstone_expected(table, margin_gib: float = 1.0):
    """The row of a qk.fit table the capstone's rules pick (see check_capstone_choice), or None."""
    allowed = table[table["fits"] & (table["offload"] != "sequential")]
    roomy = allowed[allowed["margin_bytes"] >= margin_gib * GIB]
    if len(roomy):
        allowed = roomy
    on_gpu = allowed[allowed["offload"] == "-"]
    if len(on_gpu):
        allowed = on_gpu
    return allowed.iloc[0] if len(allowed) else None


def check_capstone_choice(answer: Any, table, *, margin_gib: float = 1.0) -> None:
    """14: the candidate of a `qk.fit` table to run, by the capstone's rules, in order:

    1. it fits (predicted peak <= usable memory, and the backend runs on that GPU) with `margin_gib` to spare;
    2. no sequential offload (~5-20x slower);
    3. no offload at all when some candidate meets 1 without it;
    4. the best expected quality among the rest: the first such row (the table is sorted best quality first).

    Args:
        answer: a value of the table's `candidate` column.
        table: the DataFrame qk.fit returned.
        margin_gib: room to keep (GiB) for a longer prompt, a LoRA, another image size.
    """
    if answer is ... or answer is None:
        return not_yet("set `answer` to one value of the table's `candidate` column.")
    names = list(table["candidate"])
    if answer not in names:
        raise AssertionError(f"{answer!r} is not a candidate of this table; copy a value of table['candidate'].")
    row = table[table["candidate"] == answer].iloc[0]
    expected = capstone_expected(table, margin_gib)
    budget = table.attrs.get("budget_bytes")
    where = f"the {table.attrs['gpu']}" if table.attrs.get("gpu") else "this budget"
    if not row["fits"]:
        why = row["problem"] or f"its predicted peak {_gib(row['peak_bytes'])} exceeds {_gib(budget)}"
        raise AssertionError(f"{answer} does not fit {where}: {why}. Rule 1: start from the rows where fits is True.")
    roomy = expected is not None and expected["margin_bytes"] >= margin_gib * GIB
    if row["margin_bytes"] < margin_gib * GIB and roomy:
        raise AssertionError(
            f"{answer} fits with only {_gib(row['margin_bytes'])} to spare; rule 1 asks for {margin_gib:g} GiB "
            "(a longer prompt or a LoRA would push it over)."
        )
    if row["offload"] == "sequential":
        raise AssertionError("Rule 2: no sequential offload — every layer crosses PCIe at every step.")
    if row["offload"] != "-" and expected is not None and expected["offload"] == "-":
        raise AssertionError(
            f"{answer} offloads, but {where} can hold a candidate without offload (rule 3): filter offload == '-'."
        )
    if expected is not None and answer != expected["candidate"]:
        raise AssertionError(
            f"{answer} meets rules 1-3, but another candidate that meets them is expected to keep more quality "
            "(rule 4): the table lists the best quality first among those that fit — take the first row left "
            "after filtering."
        )
    return ok(
        f"{answer}: predicted peak {_gib(row['peak_bytes'])}, {_gib(row['margin_bytes'])} to spare; expected cost: "
        f"{row['slowdown']}."
    )


__all__ = ["capstone_expected", "check_capstone_choice", "check_fits_gpu", "predict_flux_peak"]
