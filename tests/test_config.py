"""PipelineQuantizationConfig and QuantSpec: diffusers' semantics, five backends, round trips, errors."""

from __future__ import annotations

import json

import pytest
import torch

from quantkit import BACKENDS, PipelineQuantizationConfig, QuantSpec

SIMPLE = {
    "bitsandbytes_4bit": {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": torch.bfloat16,
    },
    "bitsandbytes_8bit": {"load_in_8bit": True},
    "gguf": {"quant_type": "Q4_0", "compute_dtype": torch.bfloat16},
    "quanto": {"weights_dtype": "int8"},
    "torchao": {"quant_type": "int8wo"},
}


def test_backends_are_the_five():
    assert set(BACKENDS) == set(SIMPLE)


@pytest.mark.parametrize("backend", sorted(SIMPLE), ids=lambda b: f"simple-{b}")
def test_simple_form_works_for_every_backend(backend):
    config = PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=SIMPLE[backend], components_to_quantize="transformer"
    )
    assert config.components_to_quantize == ["transformer"]
    assert config.spec_for("transformer", ["transformer", "vae"]).backend == backend
    assert config.spec_for("vae", ["transformer", "vae"]) is None
    assert PipelineQuantizationConfig.from_json(config.to_json()) == config


def test_leaving_out_components_quantizes_every_model():
    config = PipelineQuantizationConfig(quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"})
    models = ["transformer", "text_encoder", "vae"]
    assert all(config.spec_for(m, models) is not None for m in models)


@pytest.mark.parametrize(
    ("backend", "given", "canonical"),
    [
        ("quanto", {"weights": "int4"}, {"weights_dtype": "int4"}),
        (
            "bitsandbytes_4bit",
            {"quant_type": "nf4", "compute_dtype": "bf16"},
            {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"},
        ),
        ("gguf", {"quant_type": "q8_0"}, {"quant_type": "Q8_0"}),
        ("torchao", {"quant_type": "int8_weight_only"}, {"quant_type": "int8wo"}),
    ],
    ids=["quanto-weights", "bnb-short", "gguf-lower", "torchao-long"],
)
def test_kwargs_are_written_once_in_either_spelling(backend, given, canonical):
    assert QuantSpec(backend, **given).kwargs == canonical


def test_quanto_translates_per_library():
    spec = QuantSpec("quanto", weights_dtype="int4")
    assert spec.native("diffusers").weights_dtype == "int4"
    assert spec.native("transformers").weights == "int4"


def test_torchao_shortcuts_become_config_objects():
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    assert isinstance(QuantSpec("torchao", quant_type="int8wo").native("diffusers").quant_type, Int8WeightOnlyConfig)
    assert isinstance(
        QuantSpec("torchao", quant_type="float8wo").native("transformers").quant_type, Float8WeightOnlyConfig
    )
    obj = Int8WeightOnlyConfig()
    spec = QuantSpec("torchao", quant_type=obj)
    assert spec.kwargs["quant_type"] is obj  # accepted as it is
    again = QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict())))  # type-tagged round trip
    assert isinstance(again.kwargs["quant_type"], Int8WeightOnlyConfig)


def test_seed_examples_run_unchanged():
    from diffusers import BitsAndBytesConfig as DiffusersBitsAndBytesConfig
    from diffusers import QuantoConfig
    from transformers import BitsAndBytesConfig as TransformersBitsAndBytesConfig

    first = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    second = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": QuantoConfig(weights_dtype="int8"),
            "text_encoder_2": TransformersBitsAndBytesConfig(load_in_4bit=True, compute_dtype=torch.bfloat16),
        }
    )
    third = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": DiffusersBitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
            "text_encoder_2": TransformersBitsAndBytesConfig(load_in_4bit=True, compute_dtype=torch.bfloat16),
        }
    )
    assert first.spec.label() == "bitsandbytes_4bit nf4"
    assert second.specs["transformer"] == QuantSpec("quanto", weights_dtype="int8")
    assert second.specs["text_encoder_2"].backend == "bitsandbytes_4bit"
    assert third.specs["transformer"].kwargs["bnb_4bit_compute_dtype"] == "bfloat16"
    for config in (first, second, third):
        assert PipelineQuantizationConfig.from_dict(config.to_dict()) == config


def test_repr_reads_like_code():
    config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("quanto", weights="int8")})
    assert "'transformer': QuantSpec('quanto', weights_dtype='int8')" in repr(config)


def test_diffusers_round_trip():
    from diffusers import PipelineQuantizationConfig as DiffusersConfig

    simple = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_8bit", quant_kwargs={"load_in_8bit": True}, components_to_quantize=["transformer"]
    )
    native = simple.to_diffusers()
    assert isinstance(native, DiffusersConfig) and native.quant_backend == "bitsandbytes_8bit"
    assert PipelineQuantizationConfig.from_diffusers(native) == simple

    quanto = PipelineQuantizationConfig(
        quant_backend="quanto",
        quant_kwargs={"weights_dtype": "int8"},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    mapped = quanto.to_diffusers({"transformer": "diffusers", "text_encoder_2": "transformers"})
    assert type(mapped.quant_mapping["transformer"]).__module__.startswith("diffusers")
    assert type(mapped.quant_mapping["text_encoder_2"]).__module__.startswith("transformers")
    assert PipelineQuantizationConfig.from_diffusers(mapped).specs["text_encoder_2"] == QuantSpec(
        "quanto", weights_dtype="int8"
    )


# -- errors: type and message -----------------------------------------------------------------------


def _error(**kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        PipelineQuantizationConfig(**kwargs)
    return info


def test_unknown_backend_lists_valid_and_nearest():
    info = _error(quant_backend="bitsandbytes4bit", quant_kwargs={"load_in_4bit": True})
    assert info.type is ValueError
    assert str(info.value) == (
        "Unknown quant_backend 'bitsandbytes4bit'. Did you mean 'bitsandbytes_4bit'? Valid "
        "backends: 'bitsandbytes_4bit', 'bitsandbytes_8bit', 'gguf', 'quanto' or 'torchao'."
    )


def test_misspelled_kwarg_names_the_valid_ones():
    info = _error(quant_backend="quanto", quant_kwargs={"weight_dtype": "int8"})
    assert str(info.value) == (
        "Unknown option 'weight_dtype' for backend 'quanto'. Did you mean 'weights_dtype'? "
        "Valid options: modules_to_not_convert, weights_dtype."
    )


def test_bad_choice_lists_choices():
    info = _error(quant_backend="quanto", quant_kwargs={"weights_dtype": "int3"})
    assert "Use one of 'int8', 'int4', 'int2' or 'float8'." in str(info.value)


def test_both_forms_and_neither():
    both = _error(
        quant_backend="quanto",
        quant_kwargs={"weights_dtype": "int8"},
        quant_mapping={"transformer": QuantSpec("quanto")},
    )
    assert str(both.value).startswith("Both `quant_backend` and `quant_mapping` were given; use one form")
    neither = _error()
    assert "Give either `quant_backend`" in str(neither.value)
    empty = _error(quant_backend="quanto")
    assert "`quant_kwargs` is empty for quant_backend='quanto'" in str(empty.value)


def test_torchao_string_configs():
    info = _error(quant_backend="torchao", quant_kwargs={"quant_type": "int8_wo"})
    assert "Unknown torchao quant_type 'int8_wo'. Did you mean 'int8wo'?" in str(info.value)
    assert "torchao.quantization.Int8WeightOnlyConfig()" in str(info.value)
    wrong_type = _error(quant_backend="torchao", quant_kwargs={"quant_type": 8})
    assert wrong_type.type is TypeError


def test_gguf_types_quantkit_cannot_write_need_a_file():
    # quantkit writes the K-quants itself now (the gguf package cannot); the IQ types it only reads from a file
    assert QuantSpec("gguf", quant_type="Q4_K").kwargs["quant_type"] == "Q4_K"
    assert QuantSpec("gguf", quant_type="q4_k_m").kwargs["quant_type"] == "Q4_K_M"


def test_mapping_value_must_be_a_config():
    info = _error(quant_mapping={"transformer": "int8"})
    assert info.type is TypeError
    assert "quant_mapping['transformer'] is a str; use a QuantSpec" in str(info.value)


def test_contradicting_flag():
    info = _error(quant_backend="bitsandbytes_4bit", quant_kwargs={"load_in_8bit": True})
    assert "load_in_8bit=True contradicts quant_backend='bitsandbytes_4bit'" in str(info.value)


def test_gguf_in_diffusers_config_is_refused_with_a_fix():
    config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("gguf", quant_type="Q8_0")})
    with pytest.raises(ValueError, match="diffusers cannot load GGUF through a pipeline config"):
        config.to_diffusers()
