"""The widgets, driven headless: set control values, call handlers, check `.value`, the plan and the results.

Runs on ipywidgets 8 and 7.7 (scripts/ci_ipywidgets7.sh runs this file in a venv with 7.7, what Colab ships).
Everything uses a tiny random FLUX pipeline; compare runs use one prompt, one seed and two steps.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

ipywidgets = pytest.importorskip("ipywidgets")

from quantkit import BACKENDS, PipelineQuantizationConfig, QuantSpec  # noqa: E402
from quantkit.backends import REGISTRY  # noqa: E402
from quantkit.backends.base import DTYPES  # noqa: E402
from quantkit.show.widgets.builder import MARK  # noqa: E402
from quantkit.widgets import CompareDashboard, ConfigBuilder, LayerInspector  # noqa: E402

FAST = {
    "prompts": ["a red circle"],
    "seeds": [0],
    "num_inference_steps": 2,
    "warmup": 0,
    "repeats": 1,
    "use_lpips": False,
}


def values(dropdown) -> list:
    return [o[1] if isinstance(o, tuple) else o for o in dropdown.options]


def labels(dropdown) -> dict:
    return {o[1]: o[0] for o in dropdown.options if isinstance(o, tuple)}


@pytest.fixture()
def builder(flux_dir):
    return ConfigBuilder(flux_dir, device="cpu")


# -- ConfigBuilder --------------------------------------------------------------------------------------------


def test_builder_starts_with_a_valid_config_and_its_plan(builder):
    assert builder.components.value == ("transformer", "text_encoder_2")
    assert builder.value == PipelineQuantizationConfig(
        quant_backend="quanto",
        quant_kwargs={"weights_dtype": "int8"},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    assert builder.plan.quantized == ["text_encoder_2", "transformer"] or set(builder.plan.quantized) == {
        "transformer",
        "text_encoder_2",
    }
    assert "quanto int8" in builder.plan_html.value and "✓ loads on cpu" in builder.plan_html.value
    assert builder.error is None and builder.message.value == ""


def test_backend_dropdown_offers_every_backend(builder):
    assert values(builder.backend) == list(BACKENDS) and len(BACKENDS) == 5


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_changing_the_backend_rebuilds_its_options_and_replans(builder, backend):
    before = builder.plan.bytes_after
    builder.backend.value = backend
    assert set(builder.options) == set(REGISTRY[backend].options)  # controls come from the registry
    assert builder.value.quant_backend == backend
    assert builder.plan.components["transformer"].quantization.startswith(backend)
    assert backend in builder.plan_html.value
    assert f'quant_backend="{backend}"' in builder.code_quantkit.value
    if backend != "quanto":
        assert builder.plan.bytes_after != before or backend == "bitsandbytes_8bit"


def test_option_controls_fit_each_option_kind(builder):
    W = ipywidgets
    builder.backend.value = "bitsandbytes_4bit"
    o = builder.options
    assert isinstance(o["bnb_4bit_quant_type"], W.Dropdown) and values(o["bnb_4bit_quant_type"]) == ["nf4", "fp4"]
    assert isinstance(o["bnb_4bit_compute_dtype"], W.Dropdown) and values(o["bnb_4bit_compute_dtype"]) == list(DTYPES)
    assert isinstance(o["bnb_4bit_use_double_quant"], W.Checkbox)
    assert isinstance(o["llm_int8_skip_modules"], W.Text)
    plain = builder.plan.bytes_after
    o["bnb_4bit_quant_type"].value = "nf4"
    o["bnb_4bit_compute_dtype"].value = "bfloat16"
    o["bnb_4bit_use_double_quant"].value = True
    o["llm_int8_skip_modules"].value = "proj_out, x_embedder"
    assert builder.value.quant_kwargs == {
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
        "llm_int8_skip_modules": ["proj_out", "x_embedder"],
    }
    skipped = builder.plan.components["transformer"].skipped_layers
    assert {"proj_out", "x_embedder"} <= set(skipped)
    assert builder.plan.bytes_after > plain  # two layers left in full precision outweigh double quantization
    builder.backend.value = "bitsandbytes_8bit"
    assert isinstance(builder.options["llm_int8_threshold"], W.FloatText)
    builder.backend.value = "gguf"
    assert values(builder.options["compute_dtype"])[0] == ""  # "(default)": the option's default is None
    assert isinstance(builder.options["gguf_file"], W.Text)


def test_choices_this_device_cannot_run_are_marked_with_the_reason(builder):
    builder.backend.value = "torchao"
    marks = labels(builder.options["quant_type"])
    assert marks["int4wo"].endswith(MARK) and marks["float8dq"].endswith(MARK)
    assert not marks["int8wo"].endswith(MARK)
    assert "float8dq" in builder.simple.notes.value
    builder.options["quant_type"].value = "int4wo"
    assert "needs a CUDA GPU" in builder.simple.notes.value  # the chosen one, in full
    assert set(builder.plan.problems()) == {"transformer", "text_encoder_2"}
    assert "✗" in builder.plan_html.value and "instead:" in builder.plan_html.value
    builder.device.value = "cuda"  # planning for a GPU: the CUDA-only choice is no longer marked for CUDA
    assert not labels(builder.options["quant_type"])["float8dq"].endswith(MARK)
    assert builder.plan.device == "cuda"


def test_a_backend_whose_package_is_missing_is_marked_with_the_install_command(flux_dir, monkeypatch):
    # Colab ships no gguf, bitsandbytes or optimum-quanto: the builder must say so instead of failing
    monkeypatch.setattr(REGISTRY["gguf"], "module", "quantkit_no_such_package")
    b = ConfigBuilder(flux_dir, device="cpu")
    assert labels(b.backend)["gguf"].endswith(MARK) and not labels(b.backend)["quanto"].endswith(MARK)
    b.backend.value = "gguf"
    assert "not installed" in b.simple.notes.value
    assert b.plan.problems()["transformer"] == "package 'quantkit_no_such_package' is not installed"
    assert "pip install" in b.plan_html.value


def test_invalid_choices_say_why(builder):
    builder.backend.value = "gguf"
    builder.options["quant_type"].value = "Q4_K"  # K-quants are written by quantkit now: a valid choice
    assert builder.value.quant_kwargs == {"quant_type": "Q4_K"} and builder.error is None
    builder.backend.value = "quanto"
    builder.options["modules_to_not_convert"].value = "no_such_layerx"  # names no module: the plan refuses it
    assert "modules_to_not_convert entry 'no_such_layerx' names no module" in builder.error
    assert "names no module" in builder.message.value
    builder.options["modules_to_not_convert"].value = ""
    assert builder.error is None


def test_components_control_is_a_tuple_and_empty_means_every_model(builder):
    builder.components.value = ("transformer",)
    assert builder.value.components_to_quantize == ["transformer"]
    assert builder.plan.quantized == ["transformer"]
    builder.components.value = ()
    assert builder.value.components_to_quantize is None
    assert set(builder.plan.quantized) == {"transformer", "text_encoder", "text_encoder_2", "vae"}


def test_mapping_mode_gives_a_row_per_component(builder):
    builder.backend.value = "torchao"
    builder.mode.value = "mapping"
    assert list(builder.rows) == ["transformer", "text_encoder_2"]
    assert builder.rows["transformer"].backend.value == "torchao"  # rows start from the simple form's choice
    builder.rows["transformer"].backend.value = "gguf"
    builder.rows["transformer"].options["quant_type"].value = "Q4_0"
    expected = {
        "transformer": QuantSpec("gguf", quant_type="Q4_0"),
        "text_encoder_2": QuantSpec("torchao", quant_type="int8wo"),
    }
    assert builder.value.is_granular and builder.value.specs == expected
    assert builder.plan.components["transformer"].quantization == "gguf Q4_0"
    assert "from_single_file" in builder.code_diffusers.value  # diffusers loads GGUF per component
    assert 'QuantSpec("gguf", quant_type="Q4_0")' in builder.code_quantkit.value
    builder.components.value = ("text_encoder_2",)
    assert list(builder.value.specs) == ["text_encoder_2"]
    builder.components.value = ()
    assert builder.value is None and "at least one component" in builder.error
    builder.components.value = ("transformer", "text_encoder_2")
    assert builder.value.specs == expected  # a component dropped and chosen again keeps its choices


def test_value_setter_shows_a_config_in_the_controls(builder):
    config = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": QuantSpec("bitsandbytes_4bit", bnb_4bit_quant_type="nf4"),
            "text_encoder": QuantSpec("quanto", weights="int4"),
        }
    )
    builder.value = config
    assert builder.mode.value == "mapping" and builder.components.value == ("text_encoder", "transformer")
    assert builder.rows["transformer"].options["bnb_4bit_quant_type"].value == "nf4"
    assert builder.value == config
    simple = PipelineQuantizationConfig(
        quant_backend="gguf", quant_kwargs={"quant_type": "Q5_0"}, components_to_quantize=["transformer"]
    )
    builder.value = simple
    assert builder.mode.value == "simple" and builder.backend.value == "gguf" and builder.value == simple


def test_quantkit_code_rebuilds_the_same_config(builder, flux_dir):
    for setup in ("simple", "mapping"):
        builder.mode.value = setup
        if setup == "mapping":
            builder.rows["transformer"].backend.value = "gguf"
        namespace = {}
        exec(
            builder.code_quantkit.value.split("pipe = ")[0].replace("print(quantkit.plan", "plan = (quantkit.plan"),
            namespace,
        )
        assert namespace["config"] == builder.value
        assert namespace["plan"].quantized == builder.plan.quantized


def test_diffusers_code_builds_diffusers_own_config(builder):
    import diffusers

    builder.mode.value = "mapping"
    namespace = {}
    exec(builder.code_diffusers.value.split("pipe = ")[0], namespace)
    config = namespace["config"]
    assert isinstance(config, diffusers.PipelineQuantizationConfig)
    expected = builder.value.to_diffusers(builder.plan.libraries())
    assert {n: type(c).__module__ + type(c).__name__ for n, c in config.quant_mapping.items()} == {
        n: type(c).__module__ + type(c).__name__ for n, c in expected.quant_mapping.items()
    }
    assert config.quant_mapping["text_encoder_2"].weights == "int8"  # transformers' spelling
    assert config.quant_mapping["transformer"].weights_dtype == "int8"  # diffusers' spelling
    builder.mode.value = "simple"
    builder.backend.value = "bitsandbytes_4bit"
    builder.options["bnb_4bit_quant_type"].value = "nf4"
    namespace = {}
    exec(builder.code_diffusers.value.split("pipe = ")[0], namespace)
    assert namespace["config"].quant_backend == "bitsandbytes_4bit"
    assert namespace["config"].quant_kwargs["bnb_4bit_quant_type"] == "nf4"
    assert "needs a CUDA GPU" in builder.code_diffusers.value  # diffusers' bitsandbytes path on a CPU


def test_a_missing_source_shows_the_error_instead_of_failing(tmp_path):
    b = ConfigBuilder(tmp_path / "nowhere")
    assert b.plan is None and "neither a folder nor a hub id" in b.error
    assert "nowhere" in b.message.value


def test_handlers_take_no_argument(builder):
    builder.update()
    builder.on_device()
    builder.simple.on_backend()
    builder.simple.on_option()
    assert builder.value is not None


def test_widgets_display_themselves_with_a_text_fallback(builder, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False: shown.append((data, raw)))
    builder._ipython_display_()
    data, raw = shown[0]
    assert raw and data["application/vnd.jupyter.widget-view+json"]["model_id"] == builder.widget.model_id
    assert "PipelineQuantizationConfig(quant_backend='quanto'" in data["text/plain"]
    assert "LoadPlan for FluxPipeline" in data["text/plain"]  # what a headless notebook shows


def test_importing_quantkit_widgets_exposes_the_classes():
    import quantkit.widgets as w

    assert {"ConfigBuilder", "CompareDashboard", "LayerInspector"} <= set(w.__all__)


# -- CompareDashboard -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(flux_dir, tmp_path_factory):
    mine = ConfigBuilder(flux_dir, device="cpu")
    mine.backend.value = "gguf"
    mine.components.value = ("transformer",)
    d = CompareDashboard(
        flux_dir, ["quanto-int8", ("mine", mine)], out=tmp_path_factory.mktemp("dash"), device="cpu", **FAST
    )
    results = d.run()
    return d, results


def test_dashboard_runs_every_variant_headless(dashboard):
    d, results = dashboard
    assert list(d.variants) == ["baseline", "quanto-int8", "mine"]
    assert [r["variant"] for r in results.records] == ["baseline", "quanto-int8", "mine"]  # one record each
    assert all(r["status"] == "ok" for r in results.records)
    frame = results.frame
    assert frame.loc["mine", "quantization"] == "gguf Q8_0 (transformer)"
    assert frame.loc["quanto-int8", "psnr"] > 30 and frame.loc["mine", "bytes"] < frame.loc["baseline", "bytes"]
    assert d.progress.value == d.progress.max == 3
    assert "done" in d.status.value


def test_dashboard_shows_table_plots_and_images(dashboard):
    d, _ = dashboard
    for name in d.variants:
        assert name in d.table.value
    for image in (d.quality_plot, d.memory_plot, d.images):
        assert bytes(image.value[:4]) == b"\x89PNG" and image.layout.display != "none"
    assert "CompareResults" in d.summary()


def test_dashboard_run_again_resumes_instead_of_recomputing(dashboard):
    d, first = dashboard
    from quantkit.comparison.runner import Runner

    def refuse(*args, **kwargs):
        raise AssertionError("a finished variant was run again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Runner, "run_variant", refuse)
        again = d.run()
    assert [r["finished_at"] for r in again.records] == [r["finished_at"] for r in first.records]


def test_dashboard_variant_handlers(flux_dir, tmp_path):
    d = CompareDashboard(flux_dir, {"baseline": None}, out=tmp_path, **FAST)
    d.preset.value = "gguf-Q4_0"
    d.add_preset()
    assert d.variants["gguf-Q4_0"] == d.presets["gguf-Q4_0"]
    d.name.value = "from-builder"
    d.builder.backend.value = "torchao"
    d.add_from_builder()
    assert d.variants["from-builder"].quant_backend == "torchao"
    d.variant_list.value = "gguf-Q4_0"
    d.remove_selected()
    assert list(d.variants) == ["baseline", "from-builder"]
    assert [o[1] for o in d.variant_list.options] == ["baseline", "from-builder"]
    with pytest.raises(ValueError, match="Unknown preset"):
        CompareDashboard(flux_dir, ["no-such-preset"])


def test_cancel_between_variants_stops_the_run(flux_dir, tmp_path):
    d = CompareDashboard(flux_dir, ["quanto-int8", "gguf-Q8_0"], out=tmp_path, **FAST)

    def cancel_after_baseline(change):
        if change["new"] == 1:
            d.cancel()

    d.progress.observe(cancel_after_baseline, names="value")
    results = d.run()
    assert [r["variant"] for r in results.records] == ["baseline"]
    assert "cancelled" in d.status.value and not d.run_button.disabled


def test_cancel_stops_the_running_worker(flux_dir, tmp_path):
    # slow enough variants (10 steps, 20 timed images: over a second each) that Cancel lands while one runs
    slow = {**FAST, "num_inference_steps": 10, "repeats": 20}
    d = CompareDashboard(flux_dir, ["quanto-int8"], out=tmp_path, **slow)
    d.start()  # what the Run button does: a background thread
    deadline = time.monotonic() + 60
    while not (d._running == "quanto-int8" and _workers()):
        assert time.monotonic() < deadline, "the variant never started"
        time.sleep(0.02)
    d.cancel()
    d.wait(60)
    assert not d._thread.is_alive()
    assert "quanto-int8" in d.cancelled
    assert "(cancelled)" in d.table.value
    assert "quanto-int8" not in {r["variant"] for r in d.results.records}  # stopped: nothing recorded
    assert not _workers()  # and its worker is gone


def _workers():
    return [p for p in multiprocessing.active_children() if p.name.startswith("quantkit-")]


def test_a_run_in_the_background_updates_the_widgets(dashboard):
    d, _ = dashboard
    d.add("gguf-Q4_0", d.presets["gguf-Q4_0"])
    d.start()  # the Run button's handler: returns at once, the run goes on in a thread
    d.wait(60)
    assert not d._thread.is_alive()
    assert [r["variant"] for r in d.results.records] == ["baseline", "quanto-int8", "mine", "gguf-Q4_0"]
    assert "gguf-Q4_0" in d.table.value and d.progress.value == 4 and not d.run_button.disabled


# -- LayerInspector -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inspector(flux_dir, tmp_path_factory):
    config = PipelineQuantizationConfig(
        quant_backend="quanto",
        quant_kwargs={"weights_dtype": "int8"},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    return LayerInspector(
        flux_dir,
        config,
        prompts=["a red circle"],
        seeds=[0],
        device="cpu",
        call_kwargs={"num_inference_steps": 2},
        top=10,
        out=tmp_path_factory.mktemp("inspect"),
        warmup=0,
        repeats=1,
        use_lpips=False,
    )


def test_inspector_ranks_the_layers_worst_first(inspector):
    li = inspector
    assert (
        li.component.value == "transformer"
        and values(li.component) == ["text_encoder_2", "transformer"]
        or set(values(li.component)) == {"transformer", "text_encoder_2"}
    )
    sqnr = list(li.table[li.table["status"] == "quantized"]["sqnr_db"])
    assert sqnr == sorted(sqnr) and len(sqnr) == 28
    assert list(li.checks) == list(li.table["layer"][:10])
    assert "28 layers measured" in li.heading.value


def test_ticking_layers_keeps_them_and_shows_the_size_effect(inspector):
    li = inspector
    li.clear()
    before = li.plan.components["transformer"].bytes_after
    worst = li.keep_worst(2)
    assert worst == tuple(li.table["layer"][:2])
    spec = li.value.specs["transformer"]
    assert spec.kwargs["modules_to_not_convert"] == list(worst)
    assert li.value.specs["text_encoder_2"] == QuantSpec("quanto", weights_dtype="int8")
    assert li.plan.components["transformer"].bytes_after > before
    assert set(li.plan.components["transformer"].skipped_layers) == set(worst)
    assert "keeping 2 layer(s)" in li.effect.value and "worst remaining layer" in li.effect.value
    third = list(li.checks)[2]
    li.checks[third].value = True  # a click on a checkbox
    assert li.keep == (*worst, third)
    assert "keeping 3 layer(s)" in li.effect.value


def test_inspector_measures_the_quality_effect(inspector):
    li = inspector
    li.keep = list(li.checks)[:2]
    results = li.measure()
    names = [r["variant"] for r in results.records]
    assert names[:2] == ["baseline", "as configured"] and names[2].startswith("keep2-")
    assert all(r["status"] == "ok" for r in results.records)
    assert [m["variant"] for m in li.measurements] == names[1:]
    assert li.measurements[1]["kept"] == list(li.keep)
    assert "PSNR" in li.quality.value and "measured keep2-" in li.summary()


def test_inspector_switches_component(inspector):
    li = inspector
    li.component.value = "text_encoder_2"
    assert "text_encoder_2" in li.heading.value and len(li.table) == 14
    li.keep_worst(1)
    assert list(li.value.specs["text_encoder_2"].kwargs["modules_to_not_convert"]) == list(li.keep)
    li.component.value = "transformer"


def test_inspector_reads_a_ranking_from_compare_results(inspector, flux_dir, tmp_path):
    from quantkit.comparison import CompareResults

    config = inspector.config
    results = CompareResults(
        folder=tmp_path,
        records=[{"variant": "q8", "config": config.to_dict()}],
        sensitivity={("q8", "transformer"): {"frame": inspector.tables["transformer"]}},
    )
    li = LayerInspector(flux_dir, results=results, variant="q8", device="cpu")
    assert li.config == config and li._pipe is None  # nothing was loaded or measured
    assert list(li.checks) == list(inspector.tables["transformer"]["layer"][:20])


def test_diffusers_code_names_the_embedded_pipeline_without_a_machine_path():
    """Both code tabs spell the shipped pipeline `quantkit.EMBEDDED_PIPELINE`: a stored notebook output must not
    say where the notebook ran (notebooks/tools/tidy.py refuses absolute paths)."""
    import quantkit

    b = ConfigBuilder(None, device="cpu")
    for code in (b.code_diffusers.value, b.code_quantkit.value):
        assert "source = quantkit.EMBEDDED_PIPELINE" in code
        assert str(quantkit.EMBEDDED_PIPELINE) not in code
    namespace = {}
    exec(b.code_diffusers.value.split("pipe = ")[0], namespace)
    assert namespace["source"] == quantkit.EMBEDDED_PIPELINE
