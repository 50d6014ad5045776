"""Fuzzing the public API: wrong-typed and out-of-range arguments meet only the documented exceptions.

Every public entry point (QuantSpec, PipelineQuantizationConfig, plan, load_pipeline, footprint, compare,
CompareSettings, the device and dtype parsers, the widgets' setters) is called with arguments hypothesis draws:
each one either a valid value or a wrong one (None, bools, huge or negative numbers, NaN, text, bytes, lists, dicts,
sets, objects, types, functions, paths that do not exist, device and dtype look-alikes). What may escape:

- the documented exceptions: ValueError / TypeError (arguments), ImportError, RuntimeError (hardware), and the
  OSError family for paths (FileNotFoundError, NotADirectoryError, PermissionError, ...);
- raised by quantkit itself: the last frame of the traceback is a `raise` statement in quantkit/, so a library's
  raw error passing through (pathlib's TypeError, json's JSONDecodeError) or a builtin's (dict("ab"), int(x)) fails
  the test even when its type is on the list;
- never AttributeError, KeyError, IndexError, AssertionError (not on the list).

Where valid arguments would start real work (loading weights, starting workers), that step is replaced by one that
raises `WorkStarted`: validation must be over by then, and nothing heavy runs. Each property stays under ~20 s on
a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import quantkit as qk
from quantkit import PipelineQuantizationConfig, QuantSpec
from quantkit.backends import REGISTRY

PACKAGE = str(Path(qk.__file__).resolve().parent)
DOCUMENTED = (ValueError, TypeError, ImportError, RuntimeError, OSError)
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
SOME = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))  # calls that plan

QUANTO = PipelineQuantizationConfig(
    quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
)


class WorkStarted(BaseException):  # noqa: N818  (not an error: the point past which arguments were all accepted)
    """Raised where real work would begin; a BaseException, so no `except Exception` in quantkit swallows it."""


def _refuse_work(*args, **kwargs):
    raise WorkStarted


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.just(math.nan),
    st.just(math.inf),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.lists(st.integers() | st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=4) | st.none(), max_size=3),
    st.tuples(st.text(max_size=4)),
    st.sets(st.integers(), max_size=2),
    st.just(object()),
    st.just(Path("nowhere/at/all")),
    st.just(lambda: None),
    st.just(int),
    st.just(QUANTO),
    st.sampled_from(
        [
            "cpu",
            "cuda",
            "cuda:7",
            "cuda:-1",
            "gpu",
            "mps",
            "cpu:1",
            "bf16",
            "int8",
            "float64",
            "transformer",
            "",
            " ",
            "auto",
            "none",
            "a/b",
            ".",
            "proj_out",
            "quanto",
            "gguf",
        ]
    ),
)


def documented(fn, *args, **kwargs) -> str:
    """Call fn; return "ok", "work" (WorkStarted) or the documented exception's name; fail on anything else.

    The outcome is an `event` (pytest --hypothesis-show-statistics shows how often each one came up)."""
    try:
        fn(*args, **kwargs)
    except WorkStarted:
        outcome = "work"
    except DOCUMENTED as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        assert str(err).strip(), f"{type(err).__name__} without a message"
        assert str(Path(where.filename).resolve()).startswith(PACKAGE), (
            f"raw {type(err).__name__} from {where.filename}:{where.lineno} (not raised by quantkit): {err}"
        )
        assert (where.line or "").lstrip().startswith("raise"), (  # not a builtin's error (dict("ab"), int(x) ...)
            f"raw {type(err).__name__} at {where.filename}:{where.lineno} ({where.line!r}), not a raise: {err}"
        )
        outcome = type(err).__name__
    else:
        outcome = "ok"
    event(f"{getattr(fn, '__name__', fn)}: {outcome}")
    return outcome


def maybe(valid, wrong=WRONG):
    """A valid value, or a wrong one (about half of the time)."""
    return st.one_of(st.just(valid), wrong)


def one_wrong(data, valid: dict) -> dict:
    """`valid` with at most one argument replaced by a wrong one: each check is reached with the others passing."""
    name = data.draw(st.sampled_from([None, *valid]))
    return valid if name is None else {**valid, name: data.draw(WRONG)}


# option values a backend takes, beside wrong ones: so that validation goes past the first option
CHOICES = sorted({repr(c) for a in REGISTRY.values() for n in a.options for c in (a.option_choices(n) or ())})
VALUES = st.one_of(WRONG, st.sampled_from([eval(c) for c in CHOICES]), st.lists(st.sampled_from(["proj_out", ""])))


# -- configs and settings ---------------------------------------------------------------------------------------


option_names = st.sampled_from(sorted({n for a in REGISTRY.values() for n in [*a.options, *a.flags]}))


@MANY
@given(
    st.sampled_from(list(REGISTRY)) | WRONG, st.dictionaries(option_names | st.text(max_size=6), VALUES, max_size=3)
)
def test_quant_spec(backend, kwargs):
    documented(QuantSpec, backend, **kwargs)


@MANY
@given(
    st.sampled_from(list(REGISTRY)) | WRONG,
    st.dictionaries(option_names, VALUES, max_size=2) | WRONG,
    st.lists(st.sampled_from(["transformer", "vae", ""]), max_size=2) | WRONG,
    st.none() | st.dictionaries(st.sampled_from(["transformer", ""]) | st.text(max_size=3), VALUES, max_size=2),
)
def test_pipeline_quantization_config(backend, kwargs, components, mapping):
    documented(
        PipelineQuantizationConfig,
        quant_backend=backend,
        quant_kwargs=kwargs,
        components_to_quantize=components,
        quant_mapping=mapping,
    )


SETTINGS = [
    "prompts",
    "seeds",
    "device",
    "torch_dtype",
    "num_inference_steps",
    "call_kwargs",
    "warmup",
    "repeats",
    "sensitivity",
    "sensitivity_component",
    "keep_sensitive",
    "retry_failed",
    "strict",
    "timeout_s",
    "use_lpips",
    "clip_model",
    "report",
    "progress",
    "start_method",
]


@MANY
@given(st.dictionaries(st.sampled_from([*SETTINGS, "seed", "steps"]), WRONG, max_size=4))
def test_compare_settings(options):
    from quantkit.comparison import CompareSettings

    documented(CompareSettings.from_options, **options)


@MANY
@given(WRONG)
def test_device_and_dtype_parsers(value):
    from quantkit.devices import check_device, parse_device
    from quantkit.dtypes import dtype_name

    for fn in (parse_device, check_device, dtype_name):
        documented(fn, value)


@MANY
@given(WRONG)
def test_config_round_trip_entry_points(value):
    documented(PipelineQuantizationConfig.from_dict, value)
    documented(PipelineQuantizationConfig.from_json, value)
    documented(QuantSpec.from_dict, value)
    documented(PipelineQuantizationConfig.from_diffusers, value)


# -- plan, load_pipeline, footprint, compare ---------------------------------------------------------------------


@contextlib.contextmanager
def _in(folder: Path):
    """Run in `folder` (relative paths drawn as `source` or `out` land there), with tempfile's folder there too."""
    old, old_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(folder)
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        os.chdir(old)
        tempfile.tempdir = old_tmp


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def no_work():
    """load_pipeline and compare with the step where work begins replaced by WorkStarted."""
    import quantkit.comparison.engine as engine
    import quantkit.load.pipeline as pipeline

    saved = (
        pipeline.load_component,
        pipeline.restore_component,
        pipeline.dtype_kwargs,
        pipeline._release,
        engine.Runner,
    )
    pipeline.load_component = pipeline.restore_component = pipeline.dtype_kwargs = _refuse_work
    pipeline._release = lambda device: None  # its gc.collect() takes ~0.7 s with torch loaded, and nothing was loaded
    engine.Runner = _refuse_work
    yield
    (pipeline.load_component, pipeline.restore_component, pipeline.dtype_kwargs, pipeline._release, engine.Runner) = (
        saved
    )


configs = st.sampled_from([None, QUANTO, PipelineQuantizationConfig(quant_mapping={"vae": QuantSpec("gguf")})])


@MANY
@given(data=st.data())
def test_plan(flux_dir, sandbox, data):
    kwargs = one_wrong(data, {"source": flux_dir, "config": data.draw(configs), "device": "cpu", "torch_dtype": None})
    with _in(sandbox):
        documented(qk.plan, **kwargs)


@SOME
@given(data=st.data())
def test_load_pipeline(flux_dir, sandbox, no_work, data):
    kwargs = one_wrong(
        data,
        {
            "source": flux_dir,
            "config": data.draw(configs),
            "torch_dtype": None,
            "device": "cpu",
            "progress": False,
            "malloc_tuning": None,
        },
    )
    with _in(sandbox):
        documented(qk.load_pipeline, **kwargs)


@MANY
@given(WRONG)
def test_footprint(obj):
    documented(qk.footprint, obj)


@SOME
@given(data=st.data())
def test_compare(flux_dir, sandbox, no_work, data):
    variants = data.draw(
        st.one_of(
            st.just({"baseline": None}),
            st.just({"baseline": None, "q8": QUANTO}),
            st.dictionaries(st.text(max_size=4), WRONG, min_size=1, max_size=2),
        )
    )
    valid = {
        "source": flux_dir,
        "variants": variants,
        "settings": None,
        "out": None,
        "on_record": None,
        "stop": None,
        **{name: None for name in ("sensitivity", "sensitivity_component", "device", "timeout_s")},
        "prompts": ["a red circle"],
        "seeds": [0],
        "num_inference_steps": 2,
        "call_kwargs": {},
        "warmup": 0,
        "repeats": 1,
        "keep_sensitive": 0,
        "start_method": None,
        "report": False,
        "progress": False,
    }
    with _in(sandbox):
        documented(qk.compare, **one_wrong(data, valid))


@SOME
@given(WRONG, WRONG)
def test_save_pipeline(sandbox, pipe, folder):
    with _in(sandbox):
        documented(qk.save_pipeline, pipe, folder)


@MANY
@given(WRONG, WRONG)
def test_the_checks_save_pipeline_should_call(sandbox, pipe, folder):
    from quantkit.planning.checks import check_pipeline_object, check_save_target

    with _in(sandbox):
        documented(check_pipeline_object, pipe, "save_pipeline()")
        documented(check_save_target, folder)


# -- the widgets' setters ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def widgets(flux_dir):
    pytest.importorskip("ipywidgets")
    from quantkit.show.widgets import CompareDashboard, ConfigBuilder, LayerInspector

    return (
        ConfigBuilder(flux_dir, device="cpu"),
        LayerInspector(flux_dir, QUANTO, device="cpu", analyze=False),
        CompareDashboard(flux_dir, {"q8": QUANTO}),
    )


@SOME
@given(WRONG, WRONG, WRONG)
def test_widget_setters(widgets, a, b, c):
    builder, inspector, dashboard = widgets

    def set_value(value):
        builder.value = value

    def set_keep(value):
        inspector.keep = value

    documented(set_value, a)
    documented(builder.simple.set, a, b)
    documented(builder.simple.set_device, a)
    documented(set_keep, a)
    documented(inspector.keep_worst, a)
    documented(dashboard.add, a, b)
    documented(dashboard.remove, c)
    builder.simple.set("quanto", {"weights_dtype": "int8"})  # back to a state the next example starts from
    dashboard.variants = {"baseline": None, "q8": QUANTO}
