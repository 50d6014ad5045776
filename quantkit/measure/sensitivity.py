"""Per-layer sensitivity: how much error quantizing each Linear layer adds, on the pipeline's real activations.

Quantizing a whole model hides where its error comes from. Here every Linear layer the backend would take is
quantized *alone*, and both versions see the same inputs — the activations that really reach that layer while
the full-precision pipeline draws images from your prompts. A forward hook on the original layer feeds its
input x through the quantized copy too and accumulates, per layer, over every call (every denoising step):

    signal = Σ ||y||²          y  = layer(x)           (the full-precision output)
    noise  = Σ ||y − y_q||²    y_q = quantized(x)
    SQNR   = 10 · log10(signal / noise)  dB            (signal-to-quantization-noise ratio; higher = safer)
    relative error = sqrt(noise / signal)              (e.g. 0.01 = 1 % of the output's size)

Each 6 dB of SQNR is about one bit of precision: int8 weights typically give 35–45 dB, 4-bit formats 15–25 dB.
The layers at the top of the ranked table (lowest SQNR) are the candidates to keep in full precision: pass
their names as `modules_to_not_convert`, e.g. with `result.config_keeping(3)`, and compare again.

    s = layer_sensitivity(source, QuantSpec("bitsandbytes_4bit", bnb_4bit_quant_type="nf4"), "transformer")
    s.frame.head()                # worst layers first
    plot_layer_error(s.frame)     # a matplotlib Figure (quantkit.show.plots)
    s.config_keeping(3, config)   # the same config with the 3 worst layers left unquantized
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import PipelineQuantizationConfig, QuantSpec, as_spec


@dataclass(frozen=True)
class KeepEstimate:
    """What keeping some layers in full precision is expected to buy, estimated from the per-layer errors.

    Attributes:
        noise_share: the kept layers' share of the summed per-layer relative noise power (0..1). A rough
            guide: errors of different layers do not simply add; measure to be sure.
        worst_now_db: SQNR of the worst layer still quantized (inf when none is left).
        worst_all_db: SQNR of the worst layer with every layer quantized.
    """

    noise_share: float
    worst_now_db: float
    worst_all_db: float


def estimate_keep(frame, keep) -> KeepEstimate:
    """The effect of keeping the layers `keep` in full precision, from a per-layer frame (`layer_sensitivity`)."""
    measured = measured_layers(frame)
    power = {r.layer: r.rel_error**2 for r in measured.itertuples() if r.rel_error == r.rel_error}
    total = sum(power.values()) or 1.0
    share = sum(power.get(n, 0.0) for n in keep) / total
    remaining = measured[~measured["layer"].isin(list(keep))]
    worst_now = float(remaining["sqnr_db"].min()) if len(remaining) else math.inf
    worst_all = float(measured["sqnr_db"].min()) if len(measured) else math.inf
    return KeepEstimate(noise_share=share, worst_now_db=worst_now, worst_all_db=worst_all)


def measured_layers(frame):
    """The rows of a per-layer frame that were quantized and measured (worst first): the one filter that the
    report, the widgets, the exercises and compare's "+keep" variant all use."""
    return frame[frame["status"] == "quantized"].dropna(subset=["sqnr_db"])


@dataclass
class LayerSensitivity:
    """The ranked per-layer errors of one component under one quantization.

    `frame` has one row per Linear layer, worst (lowest SQNR) first: layer, in_features, out_features, params,
    calls, sqnr_db, rel_error, status ("quantized", or why the backend keeps the layer in full precision).
    """

    component: str
    quantization: str  # e.g. "bitsandbytes_4bit nf4"
    spec: QuantSpec
    frame: Any  # pandas DataFrame
    notes: list[str] = field(default_factory=list)

    def most_sensitive(self, n: int = 3) -> list[str]:
        """Names of the `n` quantized layers with the lowest SQNR."""
        return list(measured_layers(self.frame)["layer"].head(n))

    def config_keeping(
        self, n: int = 3, config: PipelineQuantizationConfig | None = None
    ) -> PipelineQuantizationConfig:
        """`config` (default: only this component with this spec) with the `n` worst layers kept in full precision."""
        if config is None:
            config = PipelineQuantizationConfig(quant_mapping={self.component: self.spec})
        return keep_in_full_precision(config, self.component, self.most_sensitive(n))

    def __repr__(self) -> str:
        from ..units import text_table

        rows = [
            [
                r.layer,
                f"{r.in_features}->{r.out_features}",
                f"{r.sqnr_db:.1f}" if r.sqnr_db == r.sqnr_db else "-",
                f"{r.rel_error:.4f}" if r.rel_error == r.rel_error else "-",
                r.status,
            ]
            for r in self.frame.head(15).itertuples()
        ]
        more = f"\n... {len(self.frame) - 15} more layers" if len(self.frame) > 15 else ""
        return (
            f"LayerSensitivity of {self.component!r} under {self.quantization} (worst first)\n"
            + text_table(["layer", "shape", "SQNR dB", "rel. error", "status"], rows)
            + more
        )


def keep_in_full_precision(
    config: PipelineQuantizationConfig, component: str, layers: list[str]
) -> PipelineQuantizationConfig:
    """A copy of `config` whose spec for `component` also keeps `layers` unquantized (`modules_to_not_convert`).

    The result is always in the mapped form, since only one component's options change.

    Raises:
        ValueError: `config` does not quantize `component`.
    """
    if config.is_granular:
        specs = dict(config.specs)
    else:
        names = config.components_to_quantize
        if names is None:
            raise ValueError(
                "This config quantizes every model component (components_to_quantize=None); name them "
                "first, e.g. components_to_quantize=['transformer', 'text_encoder_2']."
            )
        specs = {name: config.spec for name in names}
    if component not in specs:
        raise ValueError(f"The config does not quantize {component!r}; it quantizes {sorted(specs)}.")
    spec = specs[component]
    option = next(name for name in ("modules_to_not_convert", "llm_int8_skip_modules") if name in spec.adapter.options)
    kept = list(spec.adapter.skip_modules(spec.kwargs))
    kept += [name for name in layers if name not in kept]
    specs[component] = QuantSpec(spec.backend, **{**spec.kwargs, option: kept})
    return PipelineQuantizationConfig(quant_mapping=specs)


def layer_errors(model, spec: QuantSpec, run: Callable[[], Any], *, device: str = "cpu", progress: bool = False):
    """Per-layer error of quantizing each Linear of `model` alone with `spec`, on the activations `run()` causes.

    Args:
        model: the full-precision module (it is not changed; hooks are removed afterwards).
        spec: the quantization to try per layer.
        run: a function that makes the model see real inputs (e.g. runs the pipeline on a few prompts).
        device: where the quantized copies live.
        progress: show a progress bar while the layers are quantized.

    Returns:
        pandas DataFrame, one row per Linear layer, worst (lowest SQNR) first.
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from ..planning.layers import decide_layers

    chosen, kept, _ = decide_layers(model, spec, device)
    modules = dict(model.named_modules())
    quantized, stats, problems = {}, {}, {}
    for name in tqdm(chosen, desc="quantizing layers", disable=not progress, leave=False):
        try:
            quantized[name] = spec.adapter.quantize_linear(copy.deepcopy(modules[name]), spec.kwargs, device)
        except Exception as err:  # a layer the backend cannot take after all: report it, go on
            problems[name] = f"quantizing failed: {type(err).__name__}: {err}"
        stats[name] = [0.0, 0.0, 0]  # signal, noise, calls

    def hook(name):
        def fn(module, args, output):
            if name not in quantized:
                return
            x = args[0]
            try:
                yq = quantized[name](x)
            except Exception as err:
                problems[name] = f"forward failed: {type(err).__name__}: {err}"
                quantized.pop(name)
                return
            y = output.detach().double()
            s = stats[name]
            s[0] += float(y.square().sum())
            s[1] += float((y - yq.detach().double()).square().sum())
            s[2] += 1

        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in chosen]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, module in modules.items():
        if not isinstance(module, torch.nn.Linear):
            continue
        row = {
            "layer": name,
            "in_features": module.in_features,
            "out_features": module.out_features,
            "params": module.weight.numel(),
            "calls": 0,
            "sqnr_db": math.nan,
            "rel_error": math.nan,
        }
        if name in problems:
            row["status"] = problems[name]
        elif name in kept:
            row["status"] = f"kept: {kept[name]}"
        else:
            signal, noise, calls = stats.get(name, (0.0, 0.0, 0))
            row["calls"] = calls
            row["status"] = "quantized" if calls else "quantized (never called)"
            if calls and signal > 0:
                row["sqnr_db"] = math.inf if noise == 0 else 10 * math.log10(signal / noise)
                row["rel_error"] = math.sqrt(noise / signal)
        rows.append(row)
    frame = pd.DataFrame(
        rows, columns=["layer", "in_features", "out_features", "params", "calls", "sqnr_db", "rel_error", "status"]
    )
    frame = frame.sort_values("sqnr_db", na_position="last", kind="stable").reset_index(drop=True)
    frame.index.name = "rank"
    return frame


def layer_sensitivity(
    source=None,
    quantization: Any = None,
    component: str | None = None,
    *,
    prompts: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    device: str | None = None,
    torch_dtype: Any = None,
    call_kwargs: dict | None = None,
    progress: bool = True,
) -> LayerSensitivity:
    """Rank the Linear layers of one component by the error quantizing each adds, on real pipeline activations.

    Args:
        source: a pipeline folder, None for quantkit.EMBEDDED_PIPELINE, or an already loaded unquantized pipeline.
        quantization: a QuantSpec (or dict / diffusers or transformers config), or a PipelineQuantizationConfig
            (its spec for `component` is used).
        component: the component to study; default: the denoiser ("transformer" or "unet").
        prompts: prompts whose activations are used (default: two shapes prompts).
        seeds: one image per prompt and seed.
        device, torch_dtype: as for load_pipeline.
        call_kwargs: extra pipeline call arguments (e.g. num_inference_steps).
        progress: show progress bars.

    Returns:
        A LayerSensitivity (ranked `frame`, `plot()`, `config_keeping(n)`).
    """
    if quantization is None:
        raise ValueError(
            "Pass the quantization to study, e.g. QuantSpec('bitsandbytes_4bit', "
            "bnb_4bit_quant_type='nf4') or a PipelineQuantizationConfig."
        )
    if hasattr(source, "components"):
        pipe = source
    else:
        from ..load import load_pipeline

        pipe = load_pipeline(source, None, torch_dtype=torch_dtype, device=device, progress=progress)
    models = [n for n, m in pipe.components.items() if hasattr(m, "named_modules")]
    if component is None:
        from ..planning.roles import denoiser

        component = denoiser(models)
        if component is None:
            raise ValueError(
                f"This pipeline has no transformer or unet; name the component to study, one of {models}."
            )
    if component not in models:
        raise ValueError(f"Component {component!r} is not a model of this pipeline; choose one of {models}.")
    if isinstance(quantization, PipelineQuantizationConfig):
        spec = quantization.spec_for(component, models)
        if spec is None:
            raise ValueError(f"The config does not quantize {component!r}; pass a config that does, or a QuantSpec.")
    else:
        spec = as_spec(quantization, component)
    model = getattr(pipe, component)
    model_device = str(next(model.parameters()).device)
    prompts = list(prompts or ["a red circle", "a blue square on the left"])

    def run():
        import torch

        try:
            pipe.set_progress_bar_config(disable=True)
        except AttributeError:
            pass
        for prompt in prompts:
            for seed in seeds:
                pipe(
                    prompt,
                    generator=torch.Generator("cpu").manual_seed(int(seed)),
                    output_type="np",
                    **(call_kwargs or {}),
                )

    frame = layer_errors(model, spec, run, device=model_device, progress=progress)
    return LayerSensitivity(component=component, quantization=spec.label(), spec=spec, frame=frame)


__all__ = ["LayerSensitivity", "keep_in_full_precision", "layer_errors", "layer_sensitivity"]
