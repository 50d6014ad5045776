"""ConfigBuilder: build a `PipelineQuantizationConfig` with controls, see its plan and its code as you go.

    b = ConfigBuilder()            # the embedded pipeline; ConfigBuilder("path/to/pipeline") for another
    b                              # in a notebook: the controls, the live plan, the code twice
    b.backend.value = "gguf"       # what a click does; the plan and the code follow at once
    b.value                        # the PipelineQuantizationConfig the controls describe
    b.plan                         # its LoadPlan (no weight is read)

Every control comes from the backend registry (`quantkit.backends.REGISTRY`): one dropdown per option that has
a set of choices, a checkbox per True/False option, a text field for module lists and paths. Choices this
device cannot run are marked ✗ with the reason, from the adapters' own `device_problem` and validation. The
builder holds no quantization logic: it turns controls into a config, and asks `plan` and the code writers.
"""

from __future__ import annotations

import ipywidgets as W

from ...backends import REGISTRY, get_backend  # noqa: F401  (re-exported for callers of this module)
from ...config import PipelineQuantizationConfig
from ...dtypes import COMPUTE_DTYPES as DTYPES
from ...units import human_bytes
from ._base import BAD, GREY, MONO, View, error_html, esc, set_visible, tab, table_html
from .code import diffusers_code, quantkit_code
from .spec_editor import (  # noqa: F401  (the SpecEditor and its helpers live in spec_editor.py)
    DEFAULT,
    MARK,
    WIDE,
    SpecEditor,
    _tooltip,
    backend_problem,
    choice_problem,
    option_choices,
)

CODE_CSS = (
    "<style>.quantkit-code textarea{font-family:monospace;font-size:12px;white-space:pre}"
    ".quantkit-plan td,.quantkit-plan th{font-size:12px}</style>"
)


class ConfigBuilder(View):
    """Build a quantization config with controls; see the plan it leads to and the code it stands for.

    Args:
        source: pipeline folder; None = quantkit.EMBEDDED_PIPELINE.
        value: a PipelineQuantizationConfig to start from (default: quanto int8 on the denoiser and T5).
        device: the device to plan for (default: CUDA when available, else CPU).
        torch_dtype: dtype of the unquantized tensors (default: the checkpoint's).

    Attributes:
        mode: ToggleButtons 'simple' (one backend for the chosen components) / 'mapping' (one per component).
        backend: the simple form's backend Dropdown (all five backends); `options` its option controls.
        components: SelectMultiple; `.value` is a tuple of component names.
        rows: {component: SpecEditor} of the mapping form.
        device, torch_dtype: Dropdowns for the plan.
        plan_html, code_quantkit, code_diffusers: the outputs.
        value: the PipelineQuantizationConfig (None while the choices are invalid; `error` says why).
        plan: the LoadPlan of `value` (None when it could not be made).
    """

    def __init__(
        self,
        source=None,
        *,
        value: PipelineQuantizationConfig | None = None,
        device: str | None = None,
        torch_dtype: str | None = None,
    ):
        from ...devices import default_device
        from ...planning import plan

        self.source = source
        self._quiet = False
        self._value: PipelineQuantizationConfig | None = None
        self.plan = None
        self.error: str | None = None
        try:
            base = plan(source, None, device="cpu")
            self._models = {n: c.class_name for n, c in base.components.items() if c.is_model}
            self._others = [n for n, c in base.components.items() if not c.is_model]
            self.source_error = None
        except Exception as err:  # no such pipeline: the builder still shows, with the reason
            self._models, self._others, self.source_error = {}, [], f"{type(err).__name__}: {err}"
        device = device or default_device()

        self.mode = W.ToggleButtons(
            options=["simple", "mapping"], value="simple", description="mode", style={"button_width": "80px"}
        )
        _tooltip(
            self.mode,
            "simple: quant_backend + quant_kwargs for the chosen components; mapping: "
            "quant_mapping, a backend per component",
        )
        self.device = W.Dropdown(
            options=sorted({"cpu", "cuda", device}), value=device, description="device", layout=W.Layout(width="160px")
        )
        self.torch_dtype = W.Dropdown(
            options=[("checkpoint's", DEFAULT), *[(d, d) for d in DTYPES]],
            value=torch_dtype or DEFAULT,
            description="torch_dtype",
            style=WIDE,
            layout=W.Layout(width="220px"),
        )
        self.components = W.SelectMultiple(
            options=[(f"{n} ({cls})", n) for n, cls in self._models.items()],
            value=self._default_components(),
            rows=max(2, min(6, len(self._models))),
            description="components",
            style=WIDE,
            layout=W.Layout(width="380px"),
        )
        self.components_hint = W.HTML()
        self.simple = SpecEditor("quanto", {"weights_dtype": "int8"}, device=device, on_change=self.update)
        self.backend = self.simple.backend
        self.backend.add_class("quantkit-backend")
        self.rows: dict[str, SpecEditor] = {}
        self._row_boxes: dict[str, W.HBox] = {}
        self.mapping_box = W.VBox()
        self.title = W.HTML()
        self.message = W.HTML()
        self.plan_html = W.HTML()
        self.code_quantkit = W.Textarea(layout=W.Layout(width="100%"))
        self.code_diffusers = W.Textarea(layout=W.Layout(width="100%"))
        for area in (self.code_quantkit, self.code_diffusers):
            area.add_class("quantkit-code")
        self.code = tab([self.code_quantkit, self.code_diffusers], ["quantkit code", "diffusers code"])
        self.widget = W.VBox(
            [
                W.HTML(CODE_CSS),
                self.title,
                W.HBox([self.mode, self.device, self.torch_dtype], layout=W.Layout(flex_flow="row wrap")),
                W.HBox([self.components, self.components_hint]),
                self.simple.widget,
                self.mapping_box,
                self.message,
                self.plan_html,
                self.code,
            ]
        )
        self.widget.add_class("quantkit-config-builder")
        for control in (self.mode, self.components, self.torch_dtype):
            control.observe(self.update, names="value")
        self.device.observe(self.on_device, names="value")
        if value is not None:
            self.set_value(value)
        self.update()

    # -- the config -----------------------------------------------------------------------------------------
    @property
    def options(self) -> dict[str, W.Widget]:
        """The simple form's option controls, {option name: control} (rebuilt when the backend changes)."""
        return self.simple.options

    @property
    def value(self) -> PipelineQuantizationConfig | None:
        return self._value

    @value.setter
    def value(self, config: PipelineQuantizationConfig) -> None:
        self.set_value(config)

    def _default_components(self) -> tuple[str, ...]:
        """The denoiser and the T5 encoders, as in diffusers' FLUX example (CLIP and the VAE stay as they are)."""
        from ...planning.roles import default_components

        return tuple(default_components(self._models)) or tuple(self._models)[:1]

    def set_value(self, config: PipelineQuantizationConfig) -> None:
        """Show `config` in the controls (mode, backend, options, components), then update plan and code."""
        if not isinstance(config, PipelineQuantizationConfig):
            raise TypeError(f"ConfigBuilder shows a quantkit PipelineQuantizationConfig, got {type(config).__name__}.")
        unknown = [n for n in config.named_components() if n not in self._models]
        if unknown and self._models:  # it would be dropped from the controls without a word
            from ...errors import did_you_mean

            raise ValueError(
                f"The config names {unknown[0]!r}, which is not a model component of this pipeline."
                f"{did_you_mean(unknown[0], self._models)} Its model components: {', '.join(self._models)}."
            )
        self._quiet = True
        try:
            if config.is_granular:
                self.mode.value = "mapping"
                self.components.value = tuple(n for n in self._models if n in config.specs)
                for name, spec in config.specs.items():
                    self._row(name).set(spec.backend, spec.kwargs)
            else:
                self.mode.value = "simple"
                self.simple.set(config.quant_backend, config.spec.kwargs)
                wanted = config.components_to_quantize or ()
                self.components.value = tuple(n for n in self._models if n in wanted)
        finally:
            self._quiet = False
        self.update()

    def _row(self, name: str) -> SpecEditor:
        if name not in self.rows:
            try:
                start = self.simple.value
                backend, kwargs = start.backend, start.kwargs
            except (ValueError, TypeError):
                backend, kwargs = "quanto", {}
            self.rows[name] = SpecEditor(backend, kwargs, device=self.device.value, on_change=self.update)
        return self.rows[name]

    def _sync_rows(self) -> None:
        """In mapping mode, one row per chosen component (a component dropped and chosen again keeps its row)."""
        for name in self.components.value:
            if name not in self._row_boxes:
                label = W.HTML(
                    f"<b>{esc(name)}</b><br><span style='{GREY};font-size:11px'>"
                    f"{esc(self._models.get(name, ''))}</span>",
                    layout=W.Layout(width="170px"),
                )
                self._row_boxes[name] = W.HBox([label, self._row(name).widget])
        self.mapping_box.children = [self._row_boxes[n] for n in self.components.value]

    def _config(self) -> PipelineQuantizationConfig:
        chosen = list(self.components.value)
        if self.mode.value == "mapping":
            if not chosen:
                raise ValueError(
                    "Choose at least one component: the mapping form maps each chosen component to its own backend."
                )
            return PipelineQuantizationConfig(quant_mapping={n: self.rows[n].value for n in chosen})
        spec = self.simple.value
        return PipelineQuantizationConfig(
            quant_backend=spec.backend, quant_kwargs=spec.kwargs, components_to_quantize=chosen or None
        )

    # -- handlers ---------------------------------------------------------------------------------------------
    def on_device(self, change=None) -> None:
        for editor in [self.simple, *self.rows.values()]:
            editor.set_device(self.device.value)
        self.update()

    def update(self, change=None) -> None:
        """Read the controls into `value`, re-plan (no weights are read) and rewrite the code."""
        if self._quiet:
            return
        from ...planning import plan

        mapping = self.mode.value == "mapping"
        set_visible(self.simple.widget, not mapping)
        set_visible(self.mapping_box, mapping)
        if mapping:
            self._sync_rows()
        self.components_hint.value = (
            f"<div style='{GREY};font-size:11px;padding:4px 8px'>"
            + (
                "each chosen component gets a row below"
                if mapping
                else "none chosen = every model component<br>(components_to_quantize=None, diffusers' default)"
            )
            + "</div>"
        )
        self.title.value = f"<b>ConfigBuilder</b> <span style='{GREY}'>{esc(self._source_text())}</span>"
        self.error, self.plan = None, None
        try:
            self._value = self._config()
        except (ValueError, TypeError) as err:
            self._value, self.error = None, str(err)
        if self._value is not None:
            try:
                self.plan = plan(
                    self.source, self._value, device=self.device.value, torch_dtype=self.torch_dtype.value or None
                )
            except Exception as err:
                self.error = f"{type(err).__name__}: {err}"
        if self.source_error and self.plan is None:
            self.error = self.source_error
        self.message.value = error_html(self.error) if self.error else ""
        self.plan_html.value = plan_html(self.plan) if self.plan is not None else ""
        self._write_code()

    def _source_text(self) -> str:
        return "the embedded pipeline" if self.source is None else str(self.source)

    def _write_code(self) -> None:
        if self._value is None:
            self.code_quantkit.value = self.code_diffusers.value = "# " + (self.error or "no config").replace(
                "\n", "\n# "
            )
        else:
            self.code_quantkit.value = quantkit_code(
                self._value, self.source, device=self.device.value, torch_dtype=self.torch_dtype.value or None
            )
            if self.plan is None:
                self.code_diffusers.value = "# needs a plan: " + (self.error or "")
            else:
                try:
                    self.code_diffusers.value = diffusers_code(self._value, self.plan)
                except Exception as err:  # a config diffusers cannot express at all
                    self.code_diffusers.value = f"# diffusers cannot express this config: {err}\n"
        for area in (self.code_quantkit, self.code_diffusers):
            area.rows = min(24, area.value.count("\n") + 1)

    def summary(self) -> str:
        head = f"ConfigBuilder for {self._source_text()} on {self.device.value}"
        if self._value is None:
            return f"{head}: {self.error}"
        return f"{head}\n{self._value!r}\n\n{self.plan!r}" if self.plan is not None else f"{head}\n{self._value!r}"


def plan_html(plan) -> str:
    """The plan as an HTML table: one row per model component; rows that cannot run here greyed, with why."""
    rows, styles = [], []
    for c in plan.components.values():
        if not c.is_model:
            continue
        kept = (
            f" title='{esc(chr(10).join(f'{k}: {v}' for k, v in c.skipped_layers.items()))}'"
            if c.skipped_layers
            else ""
        )
        layers = f"<span{kept}>{len(c.quantized_layers)}/{c.layers_total}</span>" if c.spec else "-"
        size = esc(human_bytes(c.bytes_before))
        if c.spec is not None:
            size += f" → <b>{esc(human_bytes(c.bytes_after))}</b>"
        if c.supported:
            status = "✓"
        else:
            status = f"<span style='{BAD}'>✗ {esc(c.problem)}</span>"
            if c.alternative:
                status += f"<br><span style='{GREY}'>instead: {esc(c.alternative)}</span>"
        rows.append(
            [
                f"<span style='{MONO};white-space:nowrap'>{esc(c.name)}</span>",
                esc(c.class_name),
                esc(c.quantization),
                layers,
                size,
                esc(c.loader),
                status,
            ]
        )
        styles.append("" if c.supported else GREY)
    before, after = plan.bytes_before, plan.bytes_after
    ratio = f" ({after / before:.0%})" if before else ""
    problems = plan.problems()
    verdict = (
        (f"<span style='{BAD}'>✗ {len(problems)} component(s) cannot be loaded this way on {esc(plan.device)}</span>")
        if problems
        else f"✓ loads on {esc(plan.device)}"
    )
    others = [n for n, c in plan.components.items() if not c.is_model]
    head = (
        f"<div class='quantkit-plan-head'><b>Plan</b>: {esc(plan.pipeline_class)}, "
        f"{esc(plan.torch_dtype or 'checkpoint dtype')}, weights {esc(human_bytes(before))} → "
        f"<b>{esc(human_bytes(after))}</b>{ratio} · {verdict}</div>"
    )
    foot = (
        f"<div style='{GREY};font-size:11px'>no weights to quantize: {esc(', '.join(others))}</div>" if others else ""
    )
    headers = ["component", "class", "quantization", "linear layers", "bytes", "loader", "runs here"]
    return f"<div class='quantkit-plan'>{head}{table_html(headers, rows, styles)}{foot}</div>"


__all__ = ["ConfigBuilder", "SpecEditor", "plan_html"]
