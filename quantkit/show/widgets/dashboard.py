"""CompareDashboard: collect variants, run `quantkit.compare` on them, and watch the results come in.

    d = CompareDashboard(variants=["quanto-int8", "gguf-Q4_0"])   # preset names, builders or configs
    d.add("mine", ConfigBuilder())                                   # a builder's current config
    d.run()          # headless: runs every variant, returns CompareResults (one record per variant)
    d                # in a notebook: Run / Cancel buttons, a progress bar, the table, the plots, the images

The dashboard is a view over `quantkit.compare`: it calls it once per variant on one output folder, which
`compare` resumes (a variant already there is not run again), so the table, the plots and the image grid update
as each variant finishes, and a cancelled run loses at most the variant in progress. The Run button runs in a
background thread so that Cancel stays clickable; `run()` called from code runs in the foreground.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import ipywidgets as W

from ...config import PipelineQuantizationConfig
from ...files import session_folder
from ._base import BAD, GREY, View, error_html, esc, figure_png, set_visible, table_html
from .builder import WIDE, ConfigBuilder

DPI = 72  # resolution of the plots shown (the PNGs travel to the browser: keep them small)
CANCELLED = "cancelled"


def _label(config: PipelineQuantizationConfig | None) -> str:
    if config is None:
        return "unquantized (the reference)"
    if config.is_granular:
        return "; ".join(f"{n}: {s.label()}" for n, s in config.specs.items())
    where = ", ".join(config.components_to_quantize) if config.components_to_quantize else "every model"
    return f"{config.spec.label()} ({where})"


class CompareDashboard(View):
    """Run a comparison of quantization variants and watch its results arrive.

    Args:
        source: pipeline folder; None = quantkit.EMBEDDED_PIPELINE.
        variants: {name: PipelineQuantizationConfig | ConfigBuilder | None}, or a list of preset names (keys of
            `quantkit.comparison.default_variants`), ConfigBuilders and (name, config) pairs; default: every preset.
            An unquantized baseline is added first when there is none.
        out: output folder (resumed when it holds results of the same settings); default: a temporary folder.
        prompts, seeds, num_inference_steps: what every variant draws (defaults: compare's prompts, seed 0, the
            pipeline's own step count).
        **compare_kwargs: passed to `quantkit.compare` (device, torch_dtype, call_kwargs, warmup, repeats,
            use_lpips, timeout_s, ...).

    Attributes:
        variants: {name: config or None}, baseline first.
        results: the CompareResults of the last run (records of this dashboard's variants only), or None.
        builder: a ConfigBuilder whose config `add_from_builder` adds.
        run_button, cancel_button, progress, status: the run controls.
        table, quality_plot, memory_plot, images: the outputs.
    """

    def __init__(
        self,
        source=None,
        variants: Any = None,
        *,
        out: str | Path | None = None,
        prompts: list[str] | None = None,
        seeds: list[int] | tuple[int, ...] = (0,),
        num_inference_steps: int | None = None,
        **compare_kwargs,
    ):
        from ...comparison import DEFAULT_PROMPTS

        self.source = source
        self.compare_kwargs = compare_kwargs
        self._out = Path(out) if out is not None else None
        self._folders: dict[str, Path] = {}  # settings -> temporary folder (when `out` is not given)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: str | None = None
        self.cancelled: set[str] = set()
        self.results = None
        self.errors: dict[str, str] = {}  # variant -> why compare refused it (e.g. a name reused with another config)
        try:
            from ...comparison import default_variants

            self.presets = default_variants(source)
        except Exception as err:
            self.presets, self.errors["presets"] = {}, f"{type(err).__name__}: {err}"
        self.variants: dict[str, PipelineQuantizationConfig | None] = {}

        # -- controls
        self.preset = W.Dropdown(options=[n for n, c in self.presets.items() if c is not None], description="preset")
        self.add_preset_button = W.Button(description="Add preset", icon="plus")
        self.builder = ConfigBuilder(source)
        self.name = W.Text(value="mine", description="name")
        self.add_builder_button = W.Button(description="Add from builder", icon="plus")
        self.variant_list = W.Select(options=[], rows=6, description="variants", layout=W.Layout(width="100%"))
        self.remove_button = W.Button(description="Remove", icon="minus")
        self.prompts = W.Textarea(
            value="\n".join(prompts or DEFAULT_PROMPTS[:2]),
            description="prompts",
            rows=3,
            layout=W.Layout(width="420px"),
        )
        self.seeds = W.Text(value=", ".join(str(s) for s in seeds), description="seeds")
        self.steps = W.IntText(value=num_inference_steps or 0, description="steps (0 = default)", style=WIDE)
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="0 / 0")
        self.status = W.HTML()
        self.table = W.HTML()
        self.quality_plot = W.Image(format="png")
        self.memory_plot = W.Image(format="png")
        self.images = W.Image(format="png")
        for image in (self.quality_plot, self.memory_plot, self.images):
            set_visible(image, False)

        builder_box = W.Accordion(
            children=[W.VBox([self.builder.widget, W.HBox([self.name, self.add_builder_button])])]
        )
        builder_box.set_title(0, "New variant from a ConfigBuilder")
        builder_box.selected_index = None
        self.widget = W.VBox(
            [
                W.HTML(f"<b>CompareDashboard</b> <span style='{GREY}'>{esc(self._source_text())}</span>"),
                W.HBox(
                    [
                        W.VBox(
                            [self.variant_list, W.HBox([self.remove_button, self.preset, self.add_preset_button])],
                            layout=W.Layout(width="60%"),
                        ),
                        W.VBox([self.prompts, self.seeds, self.steps]),
                    ]
                ),
                builder_box,
                W.HBox([self.run_button, self.cancel_button, self.progress]),
                self.status,
                self.table,
                W.HBox([self.quality_plot, self.memory_plot], layout=W.Layout(flex_flow="row wrap")),
                self.images,
            ]
        )
        self.widget.add_class("quantkit-compare-dashboard")
        self.add_preset_button.on_click(self.add_preset)
        self.add_builder_button.on_click(self.add_from_builder)
        self.remove_button.on_click(self.remove_selected)
        self.run_button.on_click(self.start)
        self.cancel_button.on_click(self.cancel)

        variants = self._normalize(variants)
        if all(c is not None for c in variants.values()):
            variants = {"baseline": None, **variants}  # every variant is compared with an unquantized reference
        for name, config in variants.items():
            self.add(name, config)
        self._show_status()

    # -- variants -------------------------------------------------------------------------------------------
    def _normalize(self, variants: Any) -> dict[str, Any]:
        if variants is None:
            return dict(self.presets)
        if isinstance(variants, dict):
            return dict(variants)
        out: dict[str, Any] = {}
        for item in variants:
            if isinstance(item, str):
                out[item] = self._preset(item)
            elif isinstance(item, tuple) and len(item) == 2:
                out[str(item[0])] = item[1]
            elif isinstance(item, ConfigBuilder):
                out[f"builder{len(out) + 1}"] = item
            else:
                raise TypeError(
                    f"A variant must be a preset name, a ConfigBuilder or a (name, config) pair; got "
                    f"{type(item).__name__}."
                )
        return out

    def _preset(self, name: str):
        if name not in self.presets:
            raise ValueError(
                f"Unknown preset {name!r}; presets: {', '.join(self.presets) or 'none'} (see "
                "quantkit.comparison.default_variants)."
            )
        return self.presets[name]

    def add(self, name: str, config: PipelineQuantizationConfig | ConfigBuilder | None) -> None:
        """Add (or replace) a variant: a config, a ConfigBuilder (its current `.value`), or None (unquantized).

        Raises:
            TypeError: a name that is not a string, a config of the wrong type.
            ValueError: an empty name, a ConfigBuilder holding no valid config.
        """
        if not isinstance(name, str):
            raise TypeError(f"A variant name is a string such as 'quanto-int8', got {type(name).__name__} {name!r}.")
        if not name.strip():
            raise ValueError("A variant needs a name (it names its row and its image folder), e.g. 'mine'.")
        if isinstance(config, ConfigBuilder):
            if config.value is None:
                raise ValueError(f"The ConfigBuilder holds no valid config: {config.error}")
            config = config.value
        if config is not None and not isinstance(config, PipelineQuantizationConfig):
            raise TypeError(
                f"Variant {name!r}: expected a PipelineQuantizationConfig, a ConfigBuilder or None, "
                f"got {type(config).__name__}."
            )
        self.variants[str(name)] = config
        self._refresh_list()

    def remove(self, name: str) -> None:
        """Remove a variant (the reference stays while other variants need it).

        Raises:
            TypeError: a name that is not a string.
            ValueError: no variant has that name (listing those that do).
        """
        if not isinstance(name, str):
            raise TypeError(f"A variant name is a string such as 'quanto-int8', got {type(name).__name__} {name!r}.")
        if name not in self.variants:
            from ...errors import did_you_mean

            raise ValueError(
                f"No variant {name!r} to remove.{did_you_mean(str(name), self.variants)} Variants: "
                f"{', '.join(self.variants) or 'none'}."
            )
        self.variants.pop(name)
        self._refresh_list()

    def _refresh_list(self) -> None:
        self.variant_list.options = [(f"{n}: {_label(c)}", n) for n, c in self.variants.items()]
        self._show_status()

    def add_preset(self, change=None) -> None:
        if self.preset.value:
            self.add(self.preset.value, self._preset(self.preset.value))

    def add_from_builder(self, change=None) -> None:
        try:
            self.add(self.name.value.strip() or "mine", self.builder)
        except (ValueError, TypeError) as err:
            self.status.value = error_html(err)

    def remove_selected(self, change=None) -> None:
        if self.variant_list.value:
            self.remove(self.variant_list.value)

    # -- running --------------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        prompts = [p.strip() for p in self.prompts.value.splitlines() if p.strip()]
        try:
            seeds = [int(s) for s in self.seeds.value.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"seeds must be whole numbers separated by commas, got {self.seeds.value!r}.") from None
        settings = {"prompts": prompts, "seeds": seeds, **self.compare_kwargs}
        if self.steps.value > 0:
            settings["num_inference_steps"] = int(self.steps.value)
        return settings

    def _folder(self, settings: dict) -> Path:
        """`out`, or one temporary folder per settings (compare refuses to mix images made with other settings)."""
        if self._out is not None:
            return self._out
        key = repr(sorted((k, repr(v)) for k, v in settings.items()))
        if key not in self._folders:
            self._folders[key] = session_folder("quantkit-dashboard-")  # removed at exit
        return self._folders[key]

    @property
    def folder(self) -> Path | None:
        """The output folder of the last run."""
        return getattr(self, "_last_folder", None)

    def run(self, change=None):
        """Run every variant not run yet (in the foreground), updating the outputs after each one.

        Returns:
            CompareResults with one record per variant of this dashboard (a cancelled run: those finished).
        """
        from ...comparison import CompareResults, compare

        self._stop.clear()
        self.errors.pop("run", None)
        try:
            settings = self._settings()
        except ValueError as err:
            self.errors["run"] = str(err)
            self._show_status()
            return self.results
        folder = self._last_folder = self._folder(settings)
        variants = dict(self.variants) or {"baseline": None}
        reference = next((n for n, c in variants.items() if c is None), None)
        if reference is None:
            variants = {"baseline": None, **variants}
            reference = "baseline"
        variants = {reference: None, **{n: c for n, c in variants.items() if n != reference}}
        self.progress.max = len(variants)
        self.progress.value = 0
        self.run_button.disabled, self.cancel_button.disabled = True, False
        try:
            for name, config in variants.items():
                if self._stop.is_set():
                    break
                self._running = name
                self._show_status()
                batch = {reference: None} if name == reference else {reference: None, name: config}
                retry = name in self.cancelled
                try:
                    results = compare(
                        self.source,
                        batch,
                        out=folder,
                        stop=self._stop,
                        report=False,
                        progress=False,
                        retry_failed=retry,
                        **settings,
                    )
                except (ValueError, TypeError, RuntimeError) as err:
                    self.errors[name] = f"{type(err).__name__}: {err}"
                    results = CompareResults.load(folder) if (folder / "meta.json").is_file() else None
                else:
                    self.errors.pop(name, None)
                record = next((r for r in (results.records if results else []) if r["variant"] == name), None)
                if self._stop.is_set() and record is None:
                    self.cancelled.add(name)  # stopped by Cancel (compare records nothing): run it next time
                elif record is not None:
                    self.cancelled.discard(name)
                if results is not None:
                    self._show_results(results, variants)
                if name not in self.cancelled:
                    self.progress.value += 1
        finally:
            self._running = None
            self.run_button.disabled, self.cancel_button.disabled = False, True
            self._show_status()
        return self.results

    def start(self, change=None) -> None:
        """Run in a background thread (what the Run button does), so that Cancel can be clicked meanwhile."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.run_button.disabled = True  # at once: a second click must not start a second run
        self._thread = threading.Thread(target=self.run, name="quantkit-dashboard", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a run started with `start()` to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def cancel(self, change=None) -> None:
        """Stop the run: no further variant starts, and the worker of the running one is stopped.

        compare() is given this dashboard's stop event: it stops the running variant's worker and records nothing
        for it; the dashboard marks it cancelled and runs it at the next run.
        """
        self._stop.set()
        self._show_status()

    # -- showing ----------------------------------------------------------------------------------------------
    def _source_text(self) -> str:
        return "the embedded pipeline" if self.source is None else str(self.source)

    def _show_status(self) -> None:
        done = self.progress.value
        self.progress.description = f"{done} / {self.progress.max if self.progress.max > 1 else len(self.variants)}"
        parts = []
        if self._running:
            parts.append(f"running <b>{esc(self._running)}</b> …")
        elif self._stop.is_set():
            parts.append(f"<span style='{BAD}'>cancelled</span>")
        elif self.results is not None:
            parts.append("done")
        else:
            parts.append(f"{len(self.variants)} variants; press Run (or call <code>.run()</code>)")
        if self.folder is not None:
            parts.append(f"<span style='{GREY}'>results in {esc(self.folder)}</span>")
        text = " · ".join(parts)
        errors = "".join(error_html(f"{k}: {v}") for k, v in self.errors.items())
        self.status.value = text + errors

    def _show_results(self, results, variants: dict) -> None:
        """Keep this dashboard's variants, in its order, and redraw the table, the plots and the images."""
        from ...comparison import CompareResults

        order = list(variants)
        records = sorted(
            (r for r in results.records if r["variant"] in variants), key=lambda r: order.index(r["variant"])
        )
        self.results = CompareResults(
            folder=results.folder, records=records, meta=results.meta, sensitivity=results.sensitivity
        )
        self.table.value = results_html(self.results, self.cancelled)
        self._draw()

    def _draw(self) -> None:
        from ..plots import plot_image_grid, plot_memory, plot_quality_vs_bytes

        r = self.results
        frame = r.frame
        ok = frame[frame["status"] == "ok"]
        drawn = {self.quality_plot: None, self.memory_plot: None, self.images: None}
        try:
            if len(ok) > 1 and ok["psnr"].notna().any():
                drawn[self.quality_plot] = plot_quality_vs_bytes(frame, "psnr", reference=r.reference)
            components = r.components
            names = [n for n in ok.index if n in components.index]
            if names:
                drawn[self.memory_plot] = plot_memory(components.loc[names])
            if r.images:
                drawn[self.images] = plot_image_grid(r.images, captions=r.captions, max_images=6)
        except Exception as err:  # a plot that cannot be drawn must not stop the run
            self.errors["plots"] = f"{type(err).__name__}: {err}"
        for image, fig in drawn.items():
            if fig is not None:
                image.value = figure_png(fig, dpi=DPI)
                # at its own size: a flex box would otherwise stretch the picture to the full width
                image.layout.width = f"{round(fig.get_size_inches()[0] * DPI)}px"
            set_visible(image, fig is not None)

    def summary(self) -> str:
        head = f"CompareDashboard for {self._source_text()}: {len(self.variants)} variants"
        lines = [f"  {n}: {_label(c)}" for n, c in self.variants.items()]
        if self.results is not None:
            lines += ["", repr(self.results)]
        return "\n".join([head, *lines])


def results_html(results, cancelled: set[str] = frozenset()) -> str:
    """The results table (quantkit.show.report's columns) with failed variants in red and cancelled ones marked."""
    from ..report import table_rows

    headers, rows = table_rows(results)
    status = {r["variant"]: r.get("status") for r in results.records}
    styles, cells = [], []
    for row in rows:
        name = row[0].removesuffix(" (reference)")
        failed = status.get(name) != "ok"
        if name in cancelled and failed:
            row = [esc(row[0]) + f" <span style='{GREY}'>({CANCELLED})</span>", *map(esc, row[1:])]
        else:
            row = [esc(row[0]), *map(esc, row[1:])]
        cells.append(row)
        styles.append(BAD if failed and name not in cancelled else (GREY if failed else ""))
    for name in sorted(set(cancelled) - set(status)):  # stopped before it finished: compare recorded nothing
        cells.append([esc(name) + f" <span style='{GREY}'>({CANCELLED})</span>", *[""] * (len(headers) - 1)])
        styles.append(GREY)
    return table_html([esc(h) for h in headers], cells, styles)


__all__ = ["CompareDashboard", "results_html"]
