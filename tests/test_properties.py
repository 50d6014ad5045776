"""Properties that hold for every input, checked on random ones (hypothesis).

- `PipelineQuantizationConfig.from_dict` / `from_json`: whatever they are given, only the documented exceptions
  escape (ValueError, TypeError), and every valid config round-trips through dict and JSON unchanged.
- the `quantkit compare` argument parser: any argument list ends in a clean result or in SystemExit(2) (a usage
  error with its message), and whatever it accepts, CompareSettings accepts too (no value the parser lets through
  fails later, after the work has started).

Each property runs 1000 examples (a few seconds each on a 2-core CPU); no pipeline is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantkit import PipelineQuantizationConfig, QuantSpec
from quantkit.backends import REGISTRY
from quantkit.config import CONFIG_KEYS

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- values of every JSON type, and Python values JSON has not ------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["int8", "nf4", "Q8_0", "int8wo", "bfloat16", "transformer", "", " "]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
python_only = st.one_of(
    st.tuples(scalars),
    st.builds(object),
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
    st.just(float("inf")),
    st.just(math.nan),
    st.builds(lambda: Path("p")),
)
anything = st.one_of(json_values, python_only)

option_names = st.sampled_from(
    sorted({n for a in REGISTRY.values() for n in [*a.options, *a.flags]} | {"weights", "threshold", "bogus", ""})
)
backends = st.sampled_from([*REGISTRY, "quantoo", "", "GGUF"])
component_names = st.sampled_from(["transformer", "text_encoder_2", "vae", "", "x"]) | st.text(max_size=6)


def option_dicts(values=anything):
    return st.dictionaries(option_names, values, max_size=4) | anything


spec_dicts = st.one_of(
    st.fixed_dictionaries({"backend": backends}, optional={}).flatmap(
        lambda d: st.dictionaries(option_names, anything, max_size=3).map(lambda o: {**o, **d})
    ),
    anything,
)
config_dicts = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "quant_backend": backends | anything,
            "quant_kwargs": option_dicts(),
            "components_to_quantize": st.lists(component_names, max_size=3) | anything,
            "quant_mapping": st.dictionaries(component_names, spec_dicts, max_size=3) | anything,
        },
    ),
    st.dictionaries(st.sampled_from([*CONFIG_KEYS, "quant_backends", "extra"]), anything, max_size=4),
    anything,
)


@PROPERTY
@given(config_dicts)
def test_from_dict_raises_only_documented_errors(data):
    try:
        config = PipelineQuantizationConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        assert str(err), "an error without a message"
        return
    assert isinstance(config, PipelineQuantizationConfig)
    again = PipelineQuantizationConfig.from_json(config.to_json())  # whatever it accepts is standard JSON
    assert again == config


@PROPERTY
@given(
    st.one_of(
        config_dicts.map(lambda d: json.dumps(d, default=repr)), st.text(max_size=40), st.binary(max_size=20), anything
    )
)
def test_from_json_raises_only_documented_errors(text):
    try:
        PipelineQuantizationConfig.from_json(text)
    except (ValueError, TypeError) as err:
        assert str(err)


# -- valid configs round-trip -----------------------------------------------------------------------------------


def _valid_kwargs(adapter) -> st.SearchStrategy:
    """Options a backend accepts: a value per option, drawn from its choices or its kind."""
    parts = {}
    for name, opt in adapter.options.items():
        choices = adapter.option_choices(name)
        if choices is not None:
            parts[name] = st.sampled_from(choices)
        elif opt.kind == "bool":
            parts[name] = st.booleans()
        elif opt.kind == "float":
            parts[name] = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
        elif opt.kind == "list":
            parts[name] = st.lists(
                st.sampled_from(["proj_out", "x_embedder", "transformer_blocks.0"]), min_size=1, max_size=3
            )
        elif opt.kind == "torchao":
            parts[name] = st.sampled_from(["int8wo", "int8dq", "float8wo"])
    first = next(iter(adapter.options))
    return st.fixed_dictionaries({first: parts.pop(first)}, optional=parts)


def _valid_spec(name: str) -> st.SearchStrategy:
    adapter = REGISTRY[name]
    kwargs = _valid_kwargs(adapter)
    if name == "gguf":  # K-quants are readable, not writable: without gguf_file a writable type
        kwargs = kwargs.filter(
            lambda k: (
                k.get("quant_type", "Q8_0")
                in __import__("quantkit.backends.gguf_files", fromlist=["WRITABLE"]).WRITABLE
            )
        )
    return kwargs.map(lambda k: QuantSpec(name, **k))


valid_specs = st.sampled_from(sorted(REGISTRY)).flatmap(_valid_spec)
valid_configs = st.one_of(
    st.builds(
        lambda spec, comps: PipelineQuantizationConfig(
            quant_backend=spec.backend, quant_kwargs=spec.kwargs, components_to_quantize=comps
        ),
        valid_specs,
        st.none()
        | st.lists(st.sampled_from(["transformer", "text_encoder_2", "vae"]), min_size=1, max_size=3, unique=True),
    ),
    st.dictionaries(
        st.sampled_from(["transformer", "text_encoder", "text_encoder_2", "vae"]), valid_specs, min_size=1, max_size=3
    ).map(lambda m: PipelineQuantizationConfig(quant_mapping=m)),
)


@PROPERTY
@given(valid_configs)
def test_valid_configs_round_trip(config):
    assert PipelineQuantizationConfig.from_dict(config.to_dict()) == config
    text = config.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} in {text}"))
    assert PipelineQuantizationConfig.from_json(text) == config
    assert PipelineQuantizationConfig.from_json(text).to_dict() == config.to_dict()


# -- the command line -------------------------------------------------------------------------------------------------

_FILES = Path(__import__("tempfile").mkdtemp(prefix="quantkit-cli-props-"))
(_FILES / "prompts.txt").write_text("a red circle\n\na blue square\n")
(_FILES / "empty.txt").write_text("\n \n")
(_FILES / "variants.json").write_text('{"baseline": null}')

OPTIONS = [
    "--out",
    "-o",
    "--variants",
    "--print-variants",
    "--prompts",
    "--prompts-file",
    "--seeds",
    "--steps",
    "--call-kwargs",
    "--device",
    "--dtype",
    "--warmup",
    "--repeats",
    "--sensitivity",
    "--sensitivity-component",
    "--keep-sensitive",
    "--retry-failed",
    "--strict",
    "--timeout",
    "--clip-model",
    "--no-lpips",
    "--no-report",
    "-q",
    "--quiet",
    "--bogus",
    "-x",
]
VALUES = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "0",
            "1",
            "-1",
            "1e400",
            "0x10",
            "",
            " ",
            "cpu",
            "cuda",
            "cuda:1",
            "gpu",
            "mps",
            "CUDA:0",
            "float32",
            "bf16",
            "auto",
            "none",
            "{}",
            "[]",
            '{"a": 1}',
            '{"a": NaN}',
            '{"num_inference_steps": 0}',
            '{"output_type": "pil"}',
            "null",
            str(_FILES / "prompts.txt"),
            str(_FILES / "empty.txt"),
            str(_FILES / "variants.json"),
            str(_FILES),
            "nowhere.txt",
        ]
    ),
    st.text(max_size=10),
)
TOKENS = st.one_of(st.sampled_from(OPTIONS), VALUES)
_PARSER = []  # built once: parse_args does not change it


@PROPERTY
@given(st.lists(TOKENS, max_size=8))
def test_the_parser_accepts_cleanly_or_exits_2_and_settings_take_what_it_accepts(argv):
    import contextlib
    import io

    from quantkit.cli import _parser, compare_options
    from quantkit.comparison import CompareSettings

    parser = _PARSER[0] if _PARSER else _PARSER.append(_parser()) or _PARSER[0]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(["compare", *argv])
    except SystemExit as exit_:
        assert exit_.code == 2, f"exit {exit_.code} for {argv}"
        assert "error: " in err.getvalue()  # argparse names the argument and why
        return
    CompareSettings.from_options(**compare_options(args))  # whatever the parser lets through, settings accept
