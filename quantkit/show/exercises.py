"""Checkers for the notebooks' exercises: each takes the learner's answer and says whether it is right.

Every checker follows the same contract, so a notebook cell can call it at any time:
- the answer is still the placeholder (`...` or None, or a function that returns None): it prints what to do —
  a notebook run top to bottom (nbval, CI) never fails on an unanswered exercise;
- the answer is wrong: it raises AssertionError whose message says what is wrong and gives a hint (never the
  answer itself);
- the answer is right: it prints a short confirmation starting with "Correct!".

They return None, so a notebook cell that ends with a check shows only the printed text.

The expected answers are computed here from first principles (or from the results passed in), never stored as
bare numbers, so the checkers stay true when the inputs change. tests/test_notebook_exercises.py runs each one
with a wrong answer and with the solution.

Sizes: GB here means 10**9 bytes, the unit of the public FLUX.1-dev figures (quantkit's own tables print
binary units, 1 KB = 1024 B).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

GB = 1e9

# Public FLUX.1-dev component sizes in BF16 (2 bytes per parameter), in GB (see docs and FACTS).
FLUX_DEV_BF16_GB = {"transformer": 23.8, "text_encoder_2": 9.52, "text_encoder": 0.246, "vae": 0.168}

# Public FLUX.1-dev figures (one H100, 1024², 50 steps, transformer and T5 quantized):
# {config: (GB after load, peak GB, seconds per image)}.
FLUX_DEV_PUBLIC = {
    "BF16": (31.4, 36.2, 12),
    "bnb nf4": (12.6, 17.3, 12),
    "bnb 8-bit": (19.3, 24.4, 27),
    "torchao int4wo": (10.6, 14.7, 109),
    "torchao int8wo": (17.0, 21.5, 15),
    "quanto int4": (12.3, 16.1, 109),
    "quanto int8": (17.3, 21.8, 15),
    "GGUF Q4_1": (16.8, 21.3, 23),
    "GGUF Q8_0": (21.5, 26.0, 15),
}


def _pending(value: Any) -> None:
    return value is ... or value is None


def _not_yet(what: str) -> None:
    print(f"Not answered yet: {what} Then run this cell again.")


def _ok(message: str) -> None:
    print(f"Correct! {message}")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionError(f"{name} should be a number (e.g. 12.5), got {type(value).__name__}: {value!r}.")
    return float(value)


# -- 01 start here ------------------------------------------------------------------------------------------


def flux_dev_gb(bits: dict[str, float] | None = None) -> float:
    """GB the FLUX.1-dev weights take when each component is stored with `bits` bits per weight (default 16).

    Args:
        bits: {component: bits per weight}; components left out stay in BF16 (16 bits).
    """
    bits = bits or {}
    return sum(gb * bits.get(name, 16) / 16 for name, gb in FLUX_DEV_BF16_GB.items())


def check_flux_int8_gb(answer: Any, fits_16gb: Any = ...) -> None:
    """01: FLUX.1-dev with the transformer and T5 in int8 (8 bits per weight), CLIP and VAE in BF16.

    Args:
        answer: the learner's total in GB (10**9 bytes); within 0.5 % counts.
        fits_16gb: True/False, whether those weights fit on a 16 GB card.
    """
    if _pending(answer) or _pending(fits_16gb):
        return _not_yet("set `answer` to the total in GB and `fits_16gb` to True or False.")
    value = _number(answer, "answer")
    expected = flux_dev_gb({"transformer": 8, "text_encoder_2": 8})
    close = 0.005 * expected
    if abs(value - expected) > close:
        bf16 = flux_dev_gb()
        if abs(value - bf16) <= close:
            hint = "That is the BF16 total: int8 stores each weight in 1 byte instead of 2."
        elif abs(value - bf16 / 2) <= close:
            hint = "You halved every component; CLIP and the VAE stay in BF16 here."
        elif abs(value - bf16 / 4) <= close:
            hint = "8 bits is 1 byte per weight, half of BF16's 2 bytes (not a quarter)."
        else:
            hint = "Halve the transformer and the T5 encoder (2 bytes -> 1 byte per weight), keep the rest, and add."
        raise AssertionError(f"{value:.2f} GB is not right. {hint}")
    if not isinstance(fits_16gb, bool):
        raise AssertionError(f"fits_16gb should be True or False, got {fits_16gb!r}.")
    if fits_16gb != (expected < 16):
        raise AssertionError(
            f"Compare your total ({value:.2f} GB) with 16 GB again — and remember the weights are not all a card "
            "must hold (activations, the CUDA context), so a fit needs some room to spare."
        )
    verdict = "fits" if expected < 16 else "does not fit"
    four_bit = flux_dev_gb({"transformer": 4, "text_encoder_2": 4})
    return _ok(f"{expected:.2f} GB of weights: it {verdict} a 16 GB card (4-bit would need {four_bit:.2f} GB).")


# -- 02 quantization from scratch -----------------------------------------------------------------------------


def _test_weight(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 32, generator=g) * torch.linspace(0.05, 2.0, 8).unsqueeze(1)  # rows of different scales
    return w


def reference_per_channel_int8(w):
    """Symmetric absmax int8 with one scale per output row: (int8 codes, float scales of shape (rows, 1))."""
    import torch

    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    q = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    return q, scale


def check_per_channel_int8(fn: Callable) -> None:
    """02: `fn(w) -> (q, scale)`, symmetric absmax int8 with one scale per output row (dim 0)."""
    import torch

    w = _test_weight()
    out = fn(w.clone())
    if _pending(out):
        return _not_yet("fill in the body of the function so that it returns (q, scale).")
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise AssertionError(f"The function should return a pair (q, scale), got {type(out).__name__}.")
    q, scale = out
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise AssertionError(f"q should be an int8 tensor, got {got}. Use .to(torch.int8) after rounding.")
    if q.shape != w.shape:
        raise AssertionError(f"q should have the weight's shape {tuple(w.shape)}, got {tuple(q.shape)}.")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.numel() == 1:
        raise AssertionError(
            "scale is a single number: that is per-tensor quantization. Per-channel needs one scale per output "
            f"row, shape ({w.shape[0]}, 1): take the absmax over dim=1 with keepdim=True."
        )
    if tuple(scale.shape) != (w.shape[0], 1):
        raise AssertionError(
            f"scale should have shape ({w.shape[0]}, 1) — one per output row, kept 2-D so it broadcasts — got "
            f"{tuple(scale.shape)}."
        )
    ref_q, ref_scale = reference_per_channel_int8(w)
    if torch.allclose(scale, ref_scale * 127 / 128, rtol=1e-4):
        raise AssertionError("The scale divides by 128; symmetric int8 uses ±127 so that +absmax maps to 127.")
    if torch.allclose(scale, ref_scale * 127, rtol=1e-4):
        raise AssertionError("scale is the absmax itself; divide it by 127 so the largest weight maps to ±127.")
    if not torch.allclose(scale, ref_scale, rtol=1e-4):
        raise AssertionError("The scales are off: each row's scale should be (its largest |w|) / 127.")
    if q.int().abs().max() > 127:
        raise AssertionError("Some codes are outside [-127, 127]: clamp after rounding.")
    if not torch.equal(q, ref_q):
        wrong = (q != ref_q).sum().item()
        if torch.equal(q, torch.trunc(w / ref_scale).to(torch.int8)):
            raise AssertionError("The codes are truncated toward zero: use torch.round before casting to int8.")
        raise AssertionError(f"{wrong} of {q.numel()} codes differ from round(w / scale); check the rounding.")
    error = (q.float() * scale - w).abs().max().item()
    return _ok(f"round-trip error at most {error:.4f}, i.e. half a step of the row's own scale.")


def reference_pack_int4(codes):
    """Two 4-bit codes (0..15) per byte: even positions in the low nibble, odd positions in the high nibble."""
    import torch

    codes = codes.to(torch.uint8).reshape(-1, 2)
    return codes[:, 0] | (codes[:, 1] << 4)


def check_pack_int4(fn: Callable) -> None:
    """02: `fn(codes) -> packed`, uint8 codes 0..15 (even length) packed two per byte, first code in the low nibble."""
    import torch

    codes = torch.tensor([1, 2, 15, 0, 7, 8, 3, 12], dtype=torch.uint8)
    out = fn(codes.clone())
    if _pending(out):
        return _not_yet("fill in the body of pack_int4 so that it returns the packed bytes.")
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"pack_int4 should return a tensor, got {type(out).__name__}.")
    if out.numel() != codes.numel() // 2:
        raise AssertionError(
            f"{codes.numel()} codes of 4 bits fill {codes.numel() // 2} bytes, but you returned {out.numel()} values."
        )
    if out.dtype != torch.uint8:
        raise AssertionError(f"The packed bytes should be uint8, got {out.dtype}.")
    expected = reference_pack_int4(codes)
    swapped = codes.reshape(-1, 2)[:, 1] | (codes.reshape(-1, 2)[:, 0] << 4)
    if torch.equal(out.flatten(), swapped):
        raise AssertionError("The nibbles are swapped: the first code of each pair goes in the low 4 bits.")
    if not torch.equal(out.flatten(), expected):
        raise AssertionError(
            "The bytes are wrong. For each pair (a, b): byte = a | (b << 4); pair up with codes.reshape(-1, 2)."
        )
    return _ok("8 codes in 4 bytes: half the memory of int8, a quarter of BF16.")


# -- 03 simple pipeline quantization --------------------------------------------------------------------------


def _as_quantkit_config(config: Any):
    from ..config import PipelineQuantizationConfig

    if isinstance(config, PipelineQuantizationConfig):
        return config
    if type(config).__name__ == "PipelineQuantizationConfig":  # diffusers' own class
        return PipelineQuantizationConfig.from_diffusers(config)
    raise AssertionError(
        f"config should be a PipelineQuantizationConfig (quantkit's or diffusers'), got {type(config).__name__}."
    )


def check_simple_config(config: Any, components: Iterable[str] = ("transformer", "text_encoder_2")) -> None:
    """03: a simple-form config that quantizes exactly `components` with bitsandbytes 8-bit."""
    if _pending(config):
        return _not_yet("build the PipelineQuantizationConfig and put it where the `...` is.")
    config = _as_quantkit_config(config)
    wanted = sorted(components)
    if config.is_granular:
        raise AssertionError(
            "This exercise asks for the simple form: quant_backend + quant_kwargs + "
            "components_to_quantize, not quant_mapping."
        )
    if config.quant_backend != "bitsandbytes_8bit":
        raise AssertionError(
            f"quant_backend is {config.quant_backend!r}; 8-bit bitsandbytes is "
            "'bitsandbytes_8bit' (with quant_kwargs={'load_in_8bit': True})."
        )
    if config.components_to_quantize is None:
        raise AssertionError(
            "components_to_quantize is missing: without it every model component is quantized, "
            "the VAE and CLIP included. Name the two big ones."
        )
    given = sorted(config.components_to_quantize)
    if given != wanted:
        missing = sorted(set(wanted) - set(given))
        extra = sorted(set(given) - set(wanted))
        parts = [f"missing {missing}" if missing else "", f"not wanted {extra}" if extra else ""]
        raise AssertionError(
            f"components_to_quantize is {given}: {'; '.join(p for p in parts if p)}. Quantize "
            "the components that hold most of the bytes (look at the plan's bytes column)."
        )
    return _ok(f"bitsandbytes 8-bit on {wanted}.")


# -- 04 quant mapping ----------------------------------------------------------------------------------------


def check_mapping(config: Any) -> None:
    """04: a diffusers quant_mapping: transformer in quanto int8 (diffusers' QuantoConfig), text_encoder_2 in
    bitsandbytes nf4 with BF16 compute (transformers' BitsAndBytesConfig)."""
    if _pending(config):
        return _not_yet("build the diffusers PipelineQuantizationConfig(quant_mapping=...) where the `...` is.")
    if type(config).__module__.split(".")[0] != "diffusers" or type(config).__name__ != "PipelineQuantizationConfig":
        raise AssertionError(
            f"Use diffusers' own class here (from diffusers import PipelineQuantizationConfig), "
            f"got {type(config).__module__}.{type(config).__name__}."
        )
    mapping = getattr(config, "quant_mapping", None) or {}
    if sorted(mapping) != ["text_encoder_2", "transformer"]:
        raise AssertionError(
            f"quant_mapping should map exactly 'transformer' and 'text_encoder_2', got {sorted(mapping)}."
        )
    for name, library in (("transformer", "diffusers"), ("text_encoder_2", "transformers")):
        module = type(mapping[name]).__module__.split(".")[0]
        if module != library:
            raise AssertionError(
                f"{name!r} is a {library} model, so its config must come from {library}; you gave "
                f"{module}.{type(mapping[name]).__name__}. Each library only accepts its own config classes."
            )
    t, e = mapping["transformer"], mapping["text_encoder_2"]
    if type(t).__name__ != "QuantoConfig" or getattr(t, "weights_dtype", None) != "int8":
        raise AssertionError(f"The transformer should get QuantoConfig(weights_dtype='int8'), got {t!r}.")
    if type(e).__name__ != "BitsAndBytesConfig" or not getattr(e, "load_in_4bit", False):
        raise AssertionError("text_encoder_2 should get transformers' BitsAndBytesConfig(load_in_4bit=True, ...).")
    if e.bnb_4bit_quant_type != "nf4":
        raise AssertionError(
            f"text_encoder_2's quant type is {e.bnb_4bit_quant_type!r} (the default); set bnb_4bit_quant_type='nf4'."
        )
    dtype = str(e.bnb_4bit_compute_dtype).removeprefix("torch.")
    if dtype != "bfloat16":
        raise AssertionError(
            f"text_encoder_2 computes in {dtype}: the config ignored your compute dtype. "
            "The keyword is bnb_4bit_compute_dtype (a bare `compute_dtype` is silently dropped)."
        )
    return _ok("two libraries, two config classes, one pipeline config.")


# -- 05 backend shootout --------------------------------------------------------------------------------------


def pareto_variants(frame, metric: str = "psnr") -> list[str]:
    """Variants of a CompareResults.frame on the bytes-vs-`metric` Pareto front (higher metric is better).

    The baseline's PSNR is infinite (identical to itself), so it is on the front as the largest, exact point.
    """
    from ..comparison.pareto import front_variants

    return sorted(front_variants(frame, metric))


def check_pareto(answer: Any, frame, metric: str = "psnr") -> None:
    """05: the names of the variants on the bytes-vs-PSNR Pareto front of `frame`."""
    if _pending(answer):
        return _not_yet("set `answer` to the list of variant names on the front, e.g. ['baseline', ...].")
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
    return _ok(f"{len(expected)} variants on the front; every other one is dominated.")


def check_public_fit(answer: Any, card_gb: float = 24.0) -> None:
    """05: of the public FLUX.1-dev configs whose *peak* fits a `card_gb` card, the fastest one's name."""
    if _pending(answer):
        return _not_yet("set `answer` to one name from the table, e.g. 'quanto int8'.")
    if answer not in FLUX_DEV_PUBLIC:
        raise AssertionError(f"{answer!r} is not a row of the table; use one of {sorted(FLUX_DEV_PUBLIC)}.")
    after, peak, seconds = FLUX_DEV_PUBLIC[answer]
    fits = {k: v for k, v in FLUX_DEV_PUBLIC.items() if v[1] <= card_gb}
    best = min(fits.values(), key=lambda v: v[2])[2]
    if peak > card_gb:
        raise AssertionError(
            f"{answer} loads in {after} GB, but its peak during generation is {peak} GB, more than {card_gb:g} GB: "
            "a card must hold the peak, not only the weights after load."
        )
    if seconds > best:
        raise AssertionError(
            f"{answer} fits ({peak} GB peak), but it takes {seconds} s per image; another config that fits is faster."
        )
    return _ok(f"{answer}: {peak} GB peak, {seconds} s per image — as fast as BF16 in about half the memory.")


# -- 06-10 (GGUF, measuring, sensitivity, save/reload, real models) ----------------------------------------------


def gguf_bytes(quant_type: str, shape: tuple[int, int]) -> int:
    """Bytes of a (out_features, in_features) weight in a GGUF block format: rows × blocks per row × block bytes."""
    from ..backends.gguf import BLOCKS

    per_block, block_bytes = BLOCKS[quant_type]
    rows, cols = shape
    return rows * (cols // per_block) * block_bytes


def check_gguf_bytes(answer: Any, quant_type: str = "Q5_1", shape: tuple[int, int] = (12288, 3072)) -> None:
    """06: the bytes of one (out_features, in_features) weight in a GGUF format, scales (and minimums) included."""
    from ..backends.gguf import BLOCKS

    if _pending(answer):
        return _not_yet(f"set `answer` to the number of bytes of a {shape} weight in {quant_type}.")
    value = _number(answer, "answer")
    expected = gguf_bytes(quant_type, shape)
    n = shape[0] * shape[1]
    if value == expected:
        return _ok(f"{expected:,} bytes, {8 * expected / n:g} bits per weight in {quant_type}.")
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
    answer: Any, unquantized_bytes: int, quantized_bytes: int, reported_bytes: int | None = None
) -> None:
    """07: how many times smaller the quantized weights really are (true bytes, not what get_memory_footprint says).

    Args:
        answer: the learner's ratio; within 2 % counts.
        unquantized_bytes, quantized_bytes: true bytes of the same component without and with quantization.
        reported_bytes: what get_memory_footprint() says for the quantized one (for a targeted hint).
    """
    if _pending(answer):
        return _not_yet("set `answer` to the ratio: true bytes unquantized / true bytes quantized.")
    value = _number(answer, "answer")
    expected = unquantized_bytes / quantized_bytes

    def near(x: float) -> bool:
        return abs(value - x) <= 0.02 * abs(x)

    if near(expected):
        return _ok(f"the weights really take {expected:.2f}× less memory.")
    if reported_bytes and near(unquantized_bytes / reported_bytes):
        hint = (
            "That is what get_memory_footprint() suggests: it counts quantized tensors at their original dtype. "
            "Use the true `bytes` column of qk.footprint(...), not `reported_bytes`."
        )
    elif near(1 / expected):
        hint = "That is the ratio upside down: divide the unquantized bytes by the quantized bytes."
    else:
        hint = "Divide the component's true bytes unquantized by its true bytes quantized (the `bytes` columns)."
    raise AssertionError(f"{value:.3g} is not the true compression ratio. {hint}")


def check_kept_layers(config: Any, sensitivity, n: int = 2) -> None:
    """08: `config` quantizes the studied component as measured, keeping exactly its `n` most sensitive layers.

    Args:
        config: the learner's PipelineQuantizationConfig.
        sensitivity: the LayerSensitivity the learner measured (component, spec, ranked frame).
        n: how many layers to keep in full precision.
    """
    from ..config import PipelineQuantizationConfig

    if _pending(config):
        return _not_yet("build the PipelineQuantizationConfig and assign it to `config`.")
    if not isinstance(config, PipelineQuantizationConfig):
        raise AssertionError(f"config should be a qk.PipelineQuantizationConfig, got {type(config).__name__}.")
    component = sensitivity.component
    spec = config.spec_for(component, [component])
    if spec is None:
        raise AssertionError(
            f"Your config does not quantize {component!r}; quantize it and keep only its {n} most "
            "sensitive layers in full precision."
        )
    if spec.backend != sensitivity.spec.backend:
        raise AssertionError(
            f"Your config quantizes {component!r} with {spec.label()}, but the sensitivity was "
            f"measured for {sensitivity.quantization}: keep the same backend and options."
        )
    kept = spec.adapter.skip_modules(spec.kwargs)
    worst = sensitivity.most_sensitive(n)
    from ..measure.sensitivity import measured_layers

    measured = measured_layers(sensitivity.frame)
    best = list(measured["layer"].tail(n))
    if not kept:
        raise AssertionError("No layer is kept in full precision: pass their names as modules_to_not_convert.")
    if set(kept) == set(best) and set(best) != set(worst):
        raise AssertionError(
            "You kept the *least* sensitive layers: the table is sorted worst first (lowest SQNR at "
            "the top), so take the first rows, not the last."
        )
    missing = [name for name in worst if name not in kept]
    if missing:
        raise AssertionError(f"{missing} should be kept too: take the {n} quantized layers with the lowest SQNR.")
    if len(kept) > n:
        raise AssertionError(
            f"You keep {len(kept)} layers; keep exactly the {n} worst, so that every other layer is still quantized."
        )
    return _ok(f"{spec.label()} on {component!r}, with {worst} kept in full precision.")


def check_reloaded(pipe: Any, folder) -> None:
    """09: `pipe` was loaded from `folder` (written by qk.save_pipeline) and its quantized components were restored.

    Args:
        pipe: the learner's reloaded pipeline.
        folder: the folder qk.save_pipeline wrote.
    """
    import json
    from pathlib import Path

    if _pending(pipe):
        return _not_yet("set `reloaded` to the pipeline loaded back from the saved folder.")
    plan = getattr(pipe, "quantkit_plan", None)
    if plan is None:
        raise AssertionError("This pipeline was not loaded by qk.load_pipeline; reload the folder with it.")
    folder = Path(folder)
    if Path(plan.folder).resolve() != folder.resolve():
        raise AssertionError(
            f"You loaded {plan.folder}, not the saved folder {folder}: pass the folder that qk.save_pipeline wrote."
        )
    saved = {
        p.parent.name: json.loads(p.read_text())["quant"]["backend"]
        for p in sorted(folder.glob("*/quantkit_quantization.json"))
    }
    for name, backend in saved.items():
        record = getattr(getattr(pipe, name, None), "quantkit", None)
        if record is None or record.get("backend") != backend:
            raise AssertionError(f"{name!r} was saved quantized with {backend} but did not come back quantized.")
        if plan.components[name].loader != "quantkit restore":
            raise AssertionError(
                f"{name!r} was quantized again instead of restored: load the saved folder without a "
                "config (its quantization is recorded in quantkit_quantization.json)."
            )
    restored = ", ".join(f"{name} ({backend})" for name, backend in saved.items())
    return _ok(f"{restored} restored from {folder.name} without a config.")


def check_fits_budget(config: Any, estimate: Callable, budget_bytes: float) -> None:
    """10: the weights of a real pipeline under `config`, as `estimate(config)` computes them, fit `budget_bytes`.

    Args:
        config: the learner's PipelineQuantizationConfig.
        estimate: `estimate(config)` -> DataFrame indexed by component with a `bytes after` column and a `total` row.
        budget_bytes: the memory the weights may take.
    """
    from ..config import PipelineQuantizationConfig

    if _pending(config):
        return _not_yet("build the PipelineQuantizationConfig and assign it to `config`.")
    if not isinstance(config, PipelineQuantizationConfig):
        raise AssertionError(f"config should be a qk.PipelineQuantizationConfig, got {type(config).__name__}.")
    frame = estimate(config)
    total = float(frame.loc["total", "bytes after"])
    if total <= budget_bytes:
        return _ok(f"{total / GB:.2f} GB of weights, within the {budget_bytes / GB:.1f} GB budget.")
    parts = frame.drop(index="total")["bytes after"].sort_values(ascending=False)
    biggest = parts.index[0]
    spec = config.spec_for(biggest, list(parts.index))
    advice = f"it is already in {spec.label()}: give it fewer bits" if spec else "quantize it"
    raise AssertionError(
        f"The weights take {total / GB:.2f} GB, {(total - budget_bytes) / GB:.2f} GB over the {budget_bytes / GB:.1f} "
        f"GB budget. The largest component is {biggest!r} at {parts.iloc[0] / GB:.2f} GB: {advice}."
    )
