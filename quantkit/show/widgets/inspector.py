"""LayerInspector: which Linear layers of a quantized component carry the error, and what keeping them costs.

    li = LayerInspector(config=ConfigBuilder().value)     # ranks the denoiser's layers (a few seconds, tiny pipeline)
    li.keep_worst(3)                                      # tick the three layers with the lowest SQNR
    li.value                                              # the config with them in modules_to_not_convert
    li.measure()                                          # compare the images: as configured vs. keeping them

The ranking comes from `quantkit.measure.sensitivity.layer_sensitivity` (each layer quantized alone, on the
activations of the real pipeline) or from a comparison that already measured it (`results=`). Ticking a layer
re-plans the load with that layer kept in full precision (`keep_in_full_precision`): the size effect is exact and
immediate; the quality effect is estimated from the per-layer errors and measured with `quantkit.compare` on
request (Measure button, or `measure()`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import ipywidgets as W

from ...config import PipelineQuantizationConfig
from ...files import session_folder
from ...units import human_bytes
from ._base import BAD, GREY, MONO, View, error_html, esc, table_html
from .builder import ConfigBuilder

BAR_PX = 140  # width of the longest error bar


class LayerInspector(View):
    """Rank a quantized component's Linear layers by error; tick layers to keep in full precision.

    Args:
        source: pipeline folder; None = quantkit.EMBEDDED_PIPELINE.
        config: the quantization to inspect: a PipelineQuantizationConfig or a ConfigBuilder (its value); default:
            the first quantized preset of `quantkit.comparison.default_variants`.
        component: the component to rank first (default: the denoiser, else the first quantized one).
        results, variant: a CompareResults (and its variant) whose per-layer study to show instead of measuring.
        prompts, seeds, call_kwargs: what the pipeline draws while the errors are measured (and in `measure`).
        device, torch_dtype: as for `quantkit.load_pipeline`.
        top: how many of the worst layers get a checkbox.
        analyze: rank the layers at once (False: wait for the button or `analyze()`).
        out: the folder `measure()` writes its comparison to (default: a temporary folder).
        **compare_kwargs: passed to `quantkit.compare` by `measure()` (warmup, repeats, use_lpips, timeout_s, ...).

    Attributes:
        component: Dropdown of the quantized components.
        checks: {layer: Checkbox} of the ranked layers shown.
        table: the ranking as a DataFrame (worst first), for the current component.
        keep: the ticked layers (tuple); value: the config that keeps them in full precision.
        effect, quality: HTML panes; measured: the CompareResults of the last `measure()`; measurements: one dict
            per variant measured so far (variant, kept, bytes, psnr, ssim, status).
    """

    def __init__(
        self,
        source=None,
        config: Any = None,
        *,
        component: str | None = None,
        results=None,
        variant: str | None = None,
        prompts: list[str] | None = None,
        seeds=(0,),
        call_kwargs: dict | None = None,
        device: str | None = None,
        torch_dtype: Any = None,
        top: int = 20,
        analyze: bool = True,
        out: str | Path | None = None,
        **compare_kwargs,
    ):
        from ...devices import default_device
        from ...planning import plan

        self.source = source
        self.results = results
        self.variant = variant
        self.prompts = list(prompts) if prompts else None
        self.seeds = list(seeds)
        self.call_kwargs = dict(call_kwargs or {})
        self.device = device or default_device()
        self.torch_dtype = torch_dtype
        self.top = top
        self.out = Path(out) if out is not None else None
        self.compare_kwargs = compare_kwargs
        self.config = self._resolve_config(config)
        self.base_plan = plan(source, self.config, device=self.device, torch_dtype=torch_dtype)
        self.plan = self.base_plan
        self.tables: dict[str, Any] = {}  # component -> ranked DataFrame
        self.checks: dict[str, W.Checkbox] = {}
        self.measured = None
        self.measurements: list[dict] = []  # one per variant measured: variant, kept, bytes, psnr, ssim, status
        self._pipe = None
        self._quiet = False
        self.error: str | None = None

        quantized = self.base_plan.quantized
        if not quantized:
            raise ValueError("This config quantizes no component of the pipeline; nothing to inspect.")
        from ...planning.roles import DENOISERS

        first = component or next((n for n in DENOISERS if n in quantized), quantized[0])
        if first not in quantized:
            raise ValueError(f"Component {first!r} is not quantized by this config; choose one of {quantized}.")
        self.component = W.Dropdown(options=quantized, value=first, description="component")
        self.analyze_button = W.Button(description="Rank layers")
        self.measure_button = W.Button(
            description="Measure image quality", icon="image", button_style="info", layout=W.Layout(width="auto")
        )
        self.clear_button = W.Button(description="Untick all")
        self.heading = W.HTML()
        self.rows = W.VBox()
        self.effect = W.HTML()
        self.quality = W.HTML()
        self.message = W.HTML()
        self.widget = W.VBox(
            [
                W.HTML(
                    f"<b>LayerInspector</b> <span style='{GREY}'>"
                    f"{esc('the embedded pipeline' if source is None else source)}</span>"
                ),
                W.HBox([self.component, self.analyze_button, self.clear_button]),
                self.heading,
                self.rows,
                self.effect,
                W.HBox([self.measure_button]),
                self.quality,
                self.message,
            ]
        )
        self.widget.add_class("quantkit-layer-inspector")
        self.component.observe(self.on_component, names="value")
        self.analyze_button.on_click(self.analyze)
        self.clear_button.on_click(self.clear)
        self.measure_button.on_click(self.measure)
        if analyze:
            self.analyze()
        else:
            self.heading.value = f"<span style='{GREY}'>Press “Rank layers” to measure each layer's error.</span>"

    # -- inputs ---------------------------------------------------------------------------------------------
    def _resolve_config(self, config) -> PipelineQuantizationConfig:
        if isinstance(config, ConfigBuilder):
            if config.value is None:
                raise ValueError(f"The ConfigBuilder holds no valid config: {config.error}")
            return config.value
        if config is None and self.results is not None and self.variant is not None:
            record = next((r for r in self.results.records if r["variant"] == self.variant), None)
            if record is None or record.get("config") is None:
                raise ValueError(f"{self.variant!r} is not a quantized variant of these results.")
            return PipelineQuantizationConfig.from_dict(record["config"])
        if config is None:
            from ...comparison import default_variants

            return next(c for c in default_variants(self.source).values() if c is not None)
        if not isinstance(config, PipelineQuantizationConfig):
            raise TypeError(
                f"config must be a PipelineQuantizationConfig or a ConfigBuilder, got {type(config).__name__}."
            )
        return config

    @property
    def table(self):
        """The ranked per-layer errors of the current component (worst first), or None before `analyze`."""
        return self.tables.get(self.component.value)

    @property
    def keep(self) -> tuple[str, ...]:
        """The layers ticked to stay in full precision, worst first."""
        return tuple(name for name, box in self.checks.items() if box.value)

    @keep.setter
    def keep(self, layers) -> None:
        self.set_keep(layers)

    def set_keep(self, layers) -> None:
        """Tick exactly `layers` (names from the ranking), then update the effect once.

        Raises:
            TypeError: not a list of layer names (one name is a string: write [name]).
            ValueError: a name that is not among the ranked layers shown, with the nearest.
        """
        from collections.abc import Iterable

        if isinstance(layers, str):  # list("proj_out") would be eight one-letter names
            raise TypeError(f"keep takes a list of layer names; for one layer write [{layers!r}].")
        if not isinstance(layers, Iterable):
            raise TypeError(f"keep takes a list of layer names, got {type(layers).__name__} {layers!r}.")
        layers = list(layers)
        wrong = [n for n in layers if not isinstance(n, str)]
        if wrong:
            raise TypeError(f"Layer names are strings, got {type(wrong[0]).__name__} {wrong[0]!r}.")
        unknown = [n for n in layers if n not in self.checks]
        if unknown:
            from ...errors import did_you_mean

            raise ValueError(
                f"Not among the ranked layers shown: {unknown}.{did_you_mean(unknown[0], self.checks)} "
                f"Shown (worst first): {list(self.checks)[:8]}{'...' if len(self.checks) > 8 else ''}."
            )
        self._quiet = True
        try:
            for name, box in self.checks.items():
                box.value = name in layers
        finally:
            self._quiet = False
        self.update()

    def keep_worst(self, n: int = 3) -> tuple[str, ...]:
        """Tick the `n` layers with the lowest SQNR (n >= 0; 0 unticks all); returns them."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"keep_worst takes a whole number of layers, got {type(n).__name__} {n!r}.")
        if n < 0:  # list[:-1] would tick every layer but the last: silently the opposite of what was asked
            raise ValueError(f"keep_worst(n={n}): n is how many of the worst layers to keep, 0 or more.")
        self.set_keep(list(self.checks)[:n])
        return self.keep

    def clear(self, change=None) -> None:
        self.set_keep([])

    @property
    def value(self) -> PipelineQuantizationConfig:
        """The inspected config with the ticked layers of the current component kept in full precision."""
        from ...measure.sensitivity import keep_in_full_precision

        if not self.keep:
            return self.config
        return keep_in_full_precision(self._explicit(self.config), self.component.value, list(self.keep))

    def _explicit(self, config: PipelineQuantizationConfig) -> PipelineQuantizationConfig:
        """The same config with its components named (keep_in_full_precision needs to know which they are)."""
        if config.is_granular or config.components_to_quantize is not None:
            return config
        return PipelineQuantizationConfig(
            quant_mapping={n: self.base_plan.components[n].spec for n in self.base_plan.quantized}
        )

    # -- handlers ---------------------------------------------------------------------------------------------
    def on_component(self, change=None) -> None:
        if self.component.value in self.tables:
            self._show_rows()
            self.update()
        else:
            self.analyze()

    def analyze(self, change=None) -> None:
        """Rank the current component's layers: from `results` when it measured them, else measured now."""
        name = self.component.value
        self.message.value = ""
        try:
            self.tables[name] = self._ranking(name)
        except Exception as err:
            self.message.value = error_html(err)
            self.error = f"{type(err).__name__}: {err}"
            return
        self._show_rows()
        self.update()

    def _ranking(self, component: str):
        if self.results is not None:
            for (variant, comp), info in self.results.sensitivity.items():
                if comp == component and (self.variant is None or variant == self.variant):
                    return info["frame"]
        from ...measure.sensitivity import layer_sensitivity

        if self._pipe is None:
            from ...load import load_pipeline

            self._pipe = load_pipeline(
                self.source, None, device=self.device, torch_dtype=self.torch_dtype, progress=False
            )
        kwargs = {"prompts": self.prompts} if self.prompts else {}
        result = layer_sensitivity(
            self._pipe,
            self.config,
            component,
            seeds=self.seeds,
            call_kwargs=self.call_kwargs,
            progress=False,
            **kwargs,
        )
        return result.frame

    def _show_rows(self) -> None:
        frame = self.table
        for box in self.checks.values():
            box.close()
        from ...measure.sensitivity import measured_layers

        measured = measured_layers(frame)
        shown = measured.head(self.top)
        worst_error = max((r for r in shown["rel_error"] if r == r), default=1.0) or 1.0
        self.checks, rows = {}, []
        for i, r in enumerate(shown.itertuples()):
            box = W.Checkbox(value=False, indent=False, layout=W.Layout(width="24px"))
            box.observe(self.update, names="value")
            self.checks[r.layer] = box
            width = int(BAR_PX * min(1.0, (r.rel_error if r.rel_error == r.rel_error else 0) / worst_error))
            color = "#C44E52" if i < 3 else "#4C72B0"
            sqnr = "∞" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
            text = (
                f"<div style='display:flex;align-items:center;gap:8px;font-size:12px'>"
                f"<span style='{MONO};width:330px;overflow:hidden;text-overflow:ellipsis'>{esc(r.layer)}</span>"
                f"<span style='width:90px;{GREY}'>{r.in_features}→{r.out_features}</span>"
                f"<span style='width:70px'>{sqnr} dB</span>"
                f"<span style='display:inline-block;height:9px;width:{width}px;background:{color}'></span>"
                f"<span style='{GREY}'>{r.rel_error:.2%}</span></div>"
            )
            rows.append(W.HBox([box, W.HTML(text)], layout=W.Layout(height="24px", align_items="center")))
        self.rows.children = rows
        rest = len(measured) - len(shown)
        kept = frame[frame["status"] != "quantized"]
        label = self.base_plan.components[self.component.value].quantization
        self.heading.value = (
            f"<div style='font-size:12px'><b>{esc(self.component.value)}</b> under {esc(label)}: {len(measured)} "
            f"layers measured, worst first (SQNR of the layer's output when it alone is quantized; relative error "
            f"on the right). Tick a layer to keep it in full precision."
            + (f" <span style='{GREY}'>{rest} more layers not shown.</span>" if rest > 0 else "")
            + (f" <span style='{GREY}'>{len(kept)} layers the backend keeps anyway.</span>" if len(kept) else "")
            + "</div>"
        )

    def update(self, change=None) -> None:
        """Re-plan with the ticked layers kept, and show the size and the estimated quality effect."""
        if self._quiet or self.table is None:
            return
        from ...planning import plan

        name = self.component.value
        try:
            self.plan = plan(self.source, self.value, device=self.device, torch_dtype=self.torch_dtype)
        except Exception as err:
            self.effect.value = error_html(err)
            return
        self.effect.value = effect_html(self.base_plan, self.plan, name, self.table, self.keep)

    def measure(self, change=None):
        """Compare the images of the config as it is and with the ticked layers kept (quantkit.compare).

        Returns:
            The CompareResults (baseline, as configured, and with the kept layers when any are ticked).
        """
        from ...comparison import DEFAULT_PROMPTS, compare

        keep = self.keep
        tag = hashlib.sha1(json.dumps([self.component.value, list(keep)]).encode()).hexdigest()[:6]
        keep_name = f"keep{len(keep)}-{tag}"
        variants = {"baseline": None, "as configured": self.config}
        if keep:
            variants[keep_name] = self.value
        if self.out is None:
            self.out = session_folder("quantkit-inspector-")  # removed at exit
        self.quality.value = f"<span style='{GREY}'>measuring {len(variants)} variants …</span>"
        try:
            results = compare(
                self.source,
                variants,
                out=self.out,
                prompts=self.prompts or list(DEFAULT_PROMPTS[:2]),
                seeds=self.seeds,
                call_kwargs=self.call_kwargs,
                device=self.device,
                torch_dtype=self.torch_dtype,
                report=False,
                progress=False,
                **self.compare_kwargs,
            )
        except Exception as err:
            self.quality.value = error_html(err)
            return None
        self.measured = results
        records = {r["variant"]: r for r in results.records}
        for variant in variants:
            r = records.get(variant, {})
            if variant == "baseline" or any(m["variant"] == variant for m in self.measurements):
                continue
            self.measurements.append(
                {
                    "variant": variant,
                    "kept": list(keep) if variant == keep_name else [],
                    "bytes": r.get("bytes"),
                    "psnr": r.get("psnr"),
                    "ssim": r.get("ssim"),
                    "status": r.get("error") or "ok",
                }
            )
        rows = [
            [
                esc(m["variant"]),
                f"<span style='{MONO};font-size:11px'>{esc(', '.join(m['kept']) or '-')}</span>",
                esc(human_bytes(m["bytes"])),
                _db(m["psnr"]),
                "-" if m["ssim"] is None else f"{m['ssim']:.4f}",
                esc(m["status"]),
            ]
            for m in self.measurements
        ]
        self.quality.value = (
            "<div style='font-size:12px'><b>Measured</b> against the unquantized pipeline's images (same prompts and "
            "seeds; PSNR higher = closer):</div>"
            + table_html(["variant", "kept in full precision", "bytes", "PSNR", "SSIM", "status"], rows)
        )
        return results

    def summary(self) -> str:
        label = self.base_plan.components[self.component.value].quantization
        head = f"LayerInspector: {self.component.value} under {label}"
        if self.table is None:
            return head + (f" ({self.error})" if self.error else " (not ranked yet)")
        frame = self.table
        from ...measure.sensitivity import measured_layers

        measured = measured_layers(frame).head(8)
        lines = [
            f"  {r.layer:<40} {r.sqnr_db:6.1f} dB  {r.rel_error:.2%}" + ("  [keep]" if r.layer in self.keep else "")
            for r in measured.itertuples()
        ]
        c0, c1 = self.base_plan.components[self.component.value], self.plan.components[self.component.value]
        size = (
            f"size: {human_bytes(c0.bytes_after)} quantized -> {human_bytes(c1.bytes_after)} keeping {len(self.keep)}"
        )
        measured = [
            f"measured {m['variant']}: {human_bytes(m['bytes'])}, PSNR {_db(m['psnr'])} ({m['status']})"
            for m in self.measurements
        ]
        return "\n".join([head, "worst layers (SQNR, relative error):", *lines, size, *measured])


def _db(psnr) -> str:
    if psnr is None:
        return "-"
    return "identical" if math.isinf(psnr) else f"{psnr:.1f} dB"


def effect_html(before_plan, after_plan, component: str, frame, keep: tuple[str, ...]) -> str:
    """Size (exact, from the plans) and an error estimate (from the per-layer errors) of keeping `keep`."""
    c0, c1 = before_plan.components[component], after_plan.components[component]
    delta = c1.bytes_after - c0.bytes_after
    size = (
        f"<b>{esc(component)}</b>: full precision {esc(human_bytes(c0.bytes_before))} · quantized "
        f"{esc(human_bytes(c0.bytes_after))} · keeping {len(keep)} layer(s): <b>{esc(human_bytes(c1.bytes_after))}"
        f"</b> ({'+' if delta >= 0 else ''}{esc(human_bytes(delta))}); whole pipeline "
        f"{esc(human_bytes(after_plan.bytes_after))}"
    )
    from ...measure.sensitivity import estimate_keep

    e = estimate_keep(frame, keep)
    quality = (
        f"worst remaining layer: {e.worst_now_db:.1f} dB SQNR (all quantized: {e.worst_all_db:.1f} dB); "
        f"the kept layers carry {e.noise_share:.0%} of the summed per-layer relative noise power "
        f"<span style='{GREY}'>(a rough guide: errors of different layers do not simply add; measure to be "
        "sure)</span>"
    )
    style = BAD if not after_plan.components[component].supported else ""
    return f"<div style='font-size:12px;{style}'>{size}<br>{quality}</div>"


__all__ = ["LayerInspector", "effect_html"]
