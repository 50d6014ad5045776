"""Checkers for the interop lessons: offload and compile, LoRA on a quantized pipeline, save / reload / share (09).

The contract is the one of `quantkit.show.exercises`, so a notebook cell can call a checker at any time:
- the answer is still the placeholder `...`: it prints what to do (a notebook run top to bottom never fails on an
  unanswered exercise);
- the answer is wrong: AssertionError, whose message says what is wrong and gives a hint (not the answer);
- the answer is right: a short confirmation starting with "Correct!". Checkers return None.

The expected answers are computed from what the learner measured or planned (`check_offload_choice` reads the
plan's predictions, `check_diffusers_shareable` loads the saved folder with diffusers alone and draws an image), so
they stay true when the inputs change. tests/test_exercises_interop.py runs each one with wrong answers and with
the solution.

Also here: `saved_formats(folder)` says, for each model component of a folder written by `qk.save_pipeline` or
`pipe.save_pretrained`, which of the three save formats it is in (the library's, a `.gguf` file, quantkit's own),
and `FORMAT_READERS` who can read each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from ._common import not_yet as _not_yet
from ._common import ok as _ok

GIB = 2**30

# -- offload and compile ------------------------------------------------------------------------------------

# offload modes from the fastest to the slowest: what moves to the GPU while the denoiser runs its steps
OFFLOAD_SPEED_ORDER = (None, "model", "group", "sequential")
_OFFLOAD_WHY_SLOWER = {
    "model": "it moves each whole component to the GPU once per image",
    "group": "it streams the denoiser's weights to the GPU at every step, overlapped with the compute",
    "sequential": "it moves every layer to the GPU at every step and waits for each copy",
}


def _offload_mode(answer: Any):
    """The offload mode an answer names (None, "model", "group", "sequential"); "none" / "None" mean None."""
    if answer is None or (isinstance(answer, str) and answer.strip().lower() == "none"):
        return None
    if isinstance(answer, str) and answer.strip().lower() in OFFLOAD_SPEED_ORDER:
        return answer.strip().lower()
    raise AssertionError(
        f"{answer!r} is not an offload mode. Answer with one of None (no offload), 'model', 'group' or "
        "'sequential' — the values of load_pipeline(..., offload=...)."
    )


def _needed_bytes(prediction: Any) -> int:
    """Bytes a card must have for one prediction: a PeakEstimate's `device_total`, or a number of bytes."""
    total = getattr(prediction, "device_total", prediction)
    if isinstance(total, bool) or not isinstance(total, int | float):
        raise TypeError(f"predictions must map offload modes to PeakEstimates or bytes, got {prediction!r}.")
    return int(total)


def check_offload_choice(answer: Any, predictions: dict, budget_gib: float) -> None:
    """Offload and compile: the fastest offload mode whose predicted peak fits a card of `budget_gib`.

    Unlike the other checkers, None is an answer here (no offload, as in `load_pipeline(offload=None)`): only
    `...` is the placeholder.

    Args:
        answer: the learner's mode: None / "none", "model", "group" or "sequential".
        predictions: {mode: PeakEstimate (from `qk.plan(..., offload=mode).peak`) or bytes the card must hold};
            a PeakEstimate counts with its `device_total` (the peak plus the CUDA context).
        budget_gib: memory of the card in GiB (2**30 bytes), as torch reports it.

    Raises:
        AssertionError: a wrong answer (with a hint).
        ValueError: no predicted mode fits the budget (the exercise has no answer).
    """
    if answer is ...:
        return _not_yet(f"set `answer` to the offload mode you would pick for a {budget_gib:g} GiB card.")
    mode = _offload_mode(answer)
    budget = budget_gib * GIB
    needed = {m: _needed_bytes(p) for m, p in predictions.items()}
    fitting = [m for m in OFFLOAD_SPEED_ORDER if m in needed and needed[m] <= budget]
    if not fitting:
        raise ValueError(
            f"No offload mode in the predictions fits {budget_gib:g} GiB; the exercise needs a larger "
            "budget or fewer bits."
        )
    expected = fitting[0]

    def gib(m) -> str:
        return f"{needed[m] / GIB:.1f} GiB"

    if mode not in needed:
        raise AssertionError(f"There is no prediction for offload={mode!r}; plan it too (offload={mode!r}).")
    if needed[mode] > budget:
        raise AssertionError(
            f"offload={mode!r} needs {gib(mode)} by the plan (the peak plus the CUDA context), more than the "
            f"{budget_gib:g} GiB card. Compare every mode's device_total with the budget, not the weights alone."
        )
    if mode != expected:
        raise AssertionError(
            f"offload={mode!r} fits ({gib(mode)}), but it is not the fastest mode that fits: "
            f"{_OFFLOAD_WHY_SLOWER[mode]}. Is there a mode that moves less per step and still fits?"
        )
    slower = fitting[1:]
    note = f"; {', '.join(repr(m) for m in slower)} would fit too, and move more per step" if slower else ""
    return _ok(f"offload={expected!r}: {gib(expected)} of {budget_gib:g} GiB{note}.")


# -- LoRA on a quantized pipeline ---------------------------------------------------------------------------

FUSE = "fuse"  # fuse, then quantize: qk.load_pipeline(..., lora=...)
RUNTIME = "runtime"  # quantize, then LoRA: pipe.load_lora_weights(...) on the quantized pipeline

# scenario key -> (the situation, the right choice, a hint for the wrong one)
LORA_SCENARIOS: dict[str, tuple[str, str, str]] = {
    "one_style_service": (
        "A service draws every image with the same style LoRA at weight 0.8, on a card where memory is tight, "
        "and must be as fast as it can.",
        FUSE,
        "A LoRA kept beside the layers adds two small matmuls to every adapted layer at every step, and keeps its "
        "A and B matrices in memory. A LoRA that never changes can be merged before quantizing: rounded once, "
        "free at run time.",
    ),
    "users_pick": (
        "Each request names one of 20 LoRAs the user picks.",
        RUNTIME,
        "A LoRA merged before quantizing cannot be taken out of the quantized weights again: one pipeline per LoRA "
        "(20 quantized copies), or reload for every request.",
    ),
    "published_gguf": (
        "All you have of the transformer is a published GGUF file (no full-precision weights).",
        RUNTIME,
        "Fuse, then quantize merges into the full-precision weights as they stream in; a GGUF file has none, and "
        "qk.load_pipeline(..., lora=...) refuses it.",
    ),
    "tune_weight": (
        "You are trying LoRA weights from 0.3 to 1.0 to find the one that looks best.",
        RUNTIME,
        "pipe.set_adapters([...], adapter_weights=[...]) changes a loaded LoRA's weight in place; a fused LoRA's "
        "weight is baked in, so every try would be a new load and quantization.",
    ),
}


def _lora_choice(value: Any) -> str:
    text = str(value).strip().lower().replace("_", " ").replace("-", " ")
    if text in (FUSE, "fuse then quantize", "fuse, then quantize"):
        return FUSE
    if text in (RUNTIME, "run time", "quantize then lora", "quantize, then lora", "load lora weights"):
        return RUNTIME
    raise AssertionError(
        f"{value!r} is not one of the two choices: answer {FUSE!r} (qk.load_pipeline(..., lora=...)"
        f") or {RUNTIME!r} (pipe.load_lora_weights(...) on the quantized pipeline)."
    )


def check_lora_strategy(answers: Any) -> None:
    """LoRA on a quantized pipeline: "fuse" (fuse, then quantize) or "runtime" (quantize, then LoRA) per scenario.

    Args:
        answers: {scenario key of LORA_SCENARIOS: "fuse" or "runtime"}; `...` for a scenario not answered yet.
    """
    if answers is ...:
        return _not_yet("fill in `answers` with 'fuse' or 'runtime' for each scenario.")
    if not isinstance(answers, dict):
        raise AssertionError(
            f"answers should be a dict {{scenario: 'fuse' or 'runtime'}}, got {type(answers).__name__}."
        )
    unknown = sorted(set(answers) - set(LORA_SCENARIOS))
    if unknown:
        raise AssertionError(f"Unknown scenario(s) {unknown}; the scenarios are {list(LORA_SCENARIOS)}.")
    pending = [k for k in LORA_SCENARIOS if answers.get(k, ...) is ...]
    if len(pending) == len(LORA_SCENARIOS):
        return _not_yet("fill in `answers` with 'fuse' or 'runtime' for each scenario.")
    for key, (situation, right, hint) in LORA_SCENARIOS.items():
        if key in pending:
            continue
        if _lora_choice(answers[key]) != right:
            raise AssertionError(f"{key!r} ({situation}) — not {answers[key]!r}. {hint}")
    if pending:
        return _not_yet(f"the answers so far are right; still to answer: {pending}.")
    fused = [k for k, (_, right, _) in LORA_SCENARIOS.items() if right == FUSE]
    return _ok(
        f"fuse, then quantize only where one LoRA never changes ({', '.join(fused)}); everything that swaps, "
        "tunes or starts from quantized weights keeps the LoRA beside the layers."
    )


# -- 09 save, reload, share ----------------------------------------------------------------------------------

LIBRARY, GGUF_FILE, QUANTKIT, UNQUANTIZED = "library", "gguf", "quantkit", "unquantized"
FORMAT_READERS = {
    LIBRARY: "the library alone (DiffusionPipeline / Model.from_pretrained; bitsandbytes in diffusers: GPU only), "
    "or qk.load_pipeline",
    GGUF_FILE: "diffusers' Model.from_single_file(..., quantization_config=GGUFQuantizationConfig(...)), "
    "or qk.load_pipeline",
    QUANTKIT: "qk.load_pipeline only",
    UNQUANTIZED: "anyone: the library's own files",
}


class Saved(NamedTuple):
    """How one model component of a saved pipeline folder is stored."""

    format: str  # LIBRARY, GGUF_FILE, QUANTKIT or UNQUANTIZED
    quantization: str | None  # e.g. "quanto int8"; None when unquantized
    library: str  # "diffusers" or "transformers"


def saved_formats(folder: str | Path) -> dict[str, Saved]:
    """{model component: Saved(format, quantization, library)} of a pipeline folder written by `qk.save_pipeline`
    or `pipe.save_pretrained`, read from its files (nothing is loaded)."""
    from ...planning.planner import saved_spec
    from ...planning.sources import MODEL_LIBRARIES, read_model_index

    folder = Path(folder)
    _, index = read_model_index(folder)
    out = {}
    for name, (library, _) in index.items():
        sub = folder / name
        if library not in MODEL_LIBRARIES or not (sub / "config.json").is_file():
            continue
        spec = saved_spec(sub, library)
        record = sub / "quantkit_quantization.json"
        if record.is_file():
            file = str(json.loads(record.read_text()).get("file") or "")
            fmt = GGUF_FILE if file.endswith(".gguf") else QUANTKIT
        else:
            fmt = LIBRARY if spec is not None else UNQUANTIZED
        out[name] = Saved(fmt, spec.label() if spec is not None else None, library)
    return out


def _diffusers_alone_hint(name: str, saved: Saved, device: str) -> str | None:
    """Why diffusers alone cannot load a component stored as `saved`, or None when it can."""
    if saved.format == UNQUANTIZED:
        return f"{name!r} was saved unquantized: the exercise asks for it quantized. Put it in components_to_quantize."
    if saved.format == QUANTKIT:
        return (
            f"{name!r} is in quantkit's own format (quantkit_weights.safetensors): {saved.library} cannot save "
            f"{saved.quantization} for this component, so save_pipeline fell back to quantkit's files, which "
            f"only qk.load_pipeline reads. Pick a backend that {saved.library} saves in its own format."
        )
    if saved.format == GGUF_FILE:
        return (
            f"{name!r} is a .gguf file: diffusers reads GGUF only through from_single_file, not through "
            "DiffusionPipeline.from_pretrained. Pick a backend with a from_pretrained format."
        )
    bnb = (saved.quantization or "").startswith("bitsandbytes")
    if bnb and saved.library == "diffusers" and not str(device).startswith("cuda"):
        return (
            f"{name!r} is in bitsandbytes' format: diffusers' bitsandbytes loader refuses to run without a GPU "
            "('No GPU found'), and your colleague has only a CPU. Pick another backend for it."
        )
    return None


def _short(err: Exception, folder: Path) -> str:
    """An exception as one line for a hint, without the machine's path to the folder."""
    return f"{type(err).__name__}: {str(err).replace(str(folder), '<folder>')[:300]}"


def check_diffusers_shareable(
    folder: Any,
    components: tuple[str, ...] = ("transformer", "text_encoder_2"),
    *,
    device: str = "cpu",
    prompt: str = "a red circle",
    steps: int = 4,
    min_psnr_db: float = 40.0,
) -> None:
    """09: `folder` holds a pipeline that diffusers alone loads with `components` quantized, and draws what quantkit
    draws from it.

    It really checks: every component's files (`saved_formats`), then `DiffusionPipeline.from_pretrained(folder)`
    (diffusers and transformers only, no quantkit code), that each component came back quantized, and the same-seed
    image against `qk.load_pipeline(folder)`'s.

    Args:
        folder: the folder the learner saved.
        components: the components that must come back quantized.
        device: the recipient's device ("cpu": bitsandbytes folders do not load in diffusers there).
        prompt, steps: the image drawn both ways (seed 0; size and text length from the folder's generation
            defaults, which diffusers alone does not apply).
        min_psnr_db: PSNR of diffusers' image against quantkit's that counts as the same image.
    """
    if folder is ... or folder is None:
        return _not_yet("save the pipeline and set `share_folder` to the folder.")
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise AssertionError(
            f"{folder.name!r} is not a saved pipeline folder (no model_index.json): pass the folder "
            "that save_pipeline or save_pretrained wrote."
        )
    formats = saved_formats(folder)
    for name in components:
        if name not in formats:
            raise AssertionError(f"The folder has no component {name!r}; its models: {sorted(formats)}.")
    # diffusers loads the whole folder: every quantized component must be in a format it reads
    for name in [*components, *(n for n, s in formats.items() if s.format != UNQUANTIZED and n not in components)]:
        hint = _diffusers_alone_hint(name, formats[name], device)
        if hint:
            raise AssertionError(hint)

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    from ...load import load_pipeline
    from ...load.pipeline import _library_progress
    from ...measure.quality import psnr
    from ...models.defaults import read_generation_defaults
    from ...planning import plan

    try:
        dtype = getattr(torch, plan(folder, device=device).torch_dtype or "float32")
    except (OSError, ValueError) as err:
        raise AssertionError(f"The folder's files cannot be read: {_short(err, folder)}") from None
    try:
        with _library_progress(False):
            alone = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    except Exception as err:  # the library's own refusal is the answer: report it
        raise AssertionError(f"diffusers alone could not load the folder: {_short(err, folder)}") from None
    not_quantized = [n for n in components if getattr(getattr(alone, n), "hf_quantizer", None) is None]
    if not_quantized:
        raise AssertionError(
            f"diffusers loaded {not_quantized} unquantized: the files hold no quantization_config it reads."
        )
    try:
        ours = load_pipeline(folder, device=device, progress=False)
    except (OSError, ValueError) as err:
        raise AssertionError(f"quantkit refuses the folder, so it cannot be compared: {_short(err, folder)}") from None
    call = {
        k: v for k, v in read_generation_defaults(folder).items() if k in ("height", "width", "max_sequence_length")
    }
    images = []
    for pipe in (alone, ours):
        if str(device).startswith("cuda"):
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        images.append(
            pipe(
                prompt,
                generator=torch.Generator("cpu").manual_seed(0),
                num_inference_steps=steps,
                output_type="np",
                **call,
            ).images
        )
    db = float(np.min(psnr(images[1], images[0])))
    if db < min_psnr_db:
        raise AssertionError(
            f"diffusers alone draws a different image from the same folder ({db:.1f} dB against "
            f"quantkit's, below {min_psnr_db:g} dB): some weights did not come back as saved."
        )
    labels = ", ".join(f"{n} ({formats[n].quantization})" for n in components)
    same = "identical pixels" if db == float("inf") else f"{db:.1f} dB"
    return _ok(f"diffusers alone loads {labels} and draws what quantkit draws ({same}).")


__all__ = [
    "FORMAT_READERS",
    "FUSE",
    "LORA_SCENARIOS",
    "OFFLOAD_SPEED_ORDER",
    "RUNTIME",
    "Saved",
    "check_diffusers_shareable",
    "check_lora_strategy",
    "check_offload_choice",
    "saved_formats",
]
