"""Per-layer sensitivity: SQNR per Linear layer on real activations, ranked; keeping the worst layers unquantized."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from quantkit import PipelineQuantizationConfig, QuantSpec, plan
from quantkit.measure.sensitivity import keep_in_full_precision, layer_errors, layer_sensitivity

INT8 = QuantSpec("quanto", weights_dtype="int8")
Q4 = QuantSpec("gguf", quant_type="Q4_0")


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 64),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 64),
    ).eval()


def test_layer_errors_matches_a_direct_computation():
    model = tiny_model()
    x = torch.randn(8, 64)
    frame = layer_errors(model, INT8, lambda: model(x))
    row = frame.set_index("layer").loc["0"]
    # oracle: quantize the first layer alone and compare its outputs on the same input
    quantized = INT8.adapter.quantize_linear(copy.deepcopy(model[0]), INT8.kwargs, "cpu")
    with torch.no_grad():
        y, yq = model[0](x).double(), quantized(x).double()
    expected = 10 * math.log10(float(y.square().sum()) / float((y - yq).square().sum()))
    assert row["sqnr_db"] == pytest.approx(expected, rel=1e-9)
    assert row["rel_error"] == pytest.approx(float((y - yq).norm() / y.norm()), rel=1e-9)
    assert row["calls"] == 1 and row["status"] == "quantized"


def test_layers_are_ranked_worst_first_and_unquantizable_ones_say_why():
    model = tiny_model()
    x = torch.randn(8, 64)
    frame = layer_errors(model, Q4, lambda: model(x))
    measured = frame.dropna(subset=["sqnr_db"])
    assert list(measured["sqnr_db"]) == sorted(measured["sqnr_db"])
    kept = frame.set_index("layer").loc["4"]  # Linear(16 -> 64): 16 is not a multiple of GGUF's 32-weight block
    assert kept["status"] == "kept: in_features=16 is not a multiple of the GGUF block size 32"
    assert math.isnan(kept["sqnr_db"])
    int8 = layer_errors(model, INT8, lambda: model(x)).set_index("layer")
    q4 = frame.set_index("layer")
    for layer in ("0", "2", "3"):
        assert 30 < int8.loc[layer, "sqnr_db"] and q4.loc[layer, "sqnr_db"] < int8.loc[layer, "sqnr_db"] - 10
    # the model itself is untouched and no hook is left behind
    assert all(not m._forward_hooks for m in model.modules())
    assert type(model[0]) is torch.nn.Linear


@pytest.fixture(scope="module")
def transformer_sensitivity(flux_dir):
    spec = QuantSpec("bitsandbytes_4bit", bnb_4bit_quant_type="nf4")
    return layer_sensitivity(flux_dir, spec, prompts=["a red circle"], device="cpu", progress=False)


def test_sensitivity_on_the_pipelines_own_activations(transformer_sensitivity):
    s = transformer_sensitivity
    assert s.component == "transformer" and s.quantization == "bitsandbytes_4bit nf4"
    quantized = s.frame[s.frame["status"] == "quantized"]
    assert len(quantized) > 10
    assert (quantized["calls"] >= 2).all()  # called at every denoising step (2 steps in the tiny pipeline)
    assert quantized["sqnr_db"].between(5, 40).all()  # 4-bit: clearly visible error, never infinite
    worst = s.most_sensitive(3)
    assert worst == list(quantized["layer"].head(3))
    assert "LayerSensitivity of 'transformer' under bitsandbytes_4bit nf4" in repr(s)
    from quantkit.show.plots import plot_layer_error

    fig = plot_layer_error(s.frame, top=10, title=f"{s.component}: {s.quantization}")
    assert fig.axes[0].get_title() == "transformer: bitsandbytes_4bit nf4"


def test_keeping_the_worst_layers_is_a_config_you_can_load(flux_dir, transformer_sensitivity):
    s = transformer_sensitivity
    config = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"bnb_4bit_quant_type": "nf4"},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    kept = s.config_keeping(2, config)
    assert kept.specs["transformer"].kwargs["llm_int8_skip_modules"] == s.most_sensitive(2)
    assert kept.specs["text_encoder_2"] == config.spec  # the other component as it was
    assert PipelineQuantizationConfig.from_json(kept.to_json()) == kept
    p = plan(flux_dir, kept, device="cpu")
    skipped = p.components["transformer"].skipped_layers
    assert {name: skipped[name] for name in s.most_sensitive(2)} == {
        name: f"in the skip list ({name!r})" for name in s.most_sensitive(2)
    }


def test_keep_in_full_precision_explains_what_it_needs():
    everything = PipelineQuantizationConfig(quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"})
    with pytest.raises(ValueError, match="quantizes every model component"):
        keep_in_full_precision(everything, "transformer", ["proj_out"])
    only_t5 = PipelineQuantizationConfig(quant_mapping={"text_encoder_2": INT8})
    with pytest.raises(ValueError, match=r"does not quantize 'transformer'; it quantizes \['text_encoder_2'\]"):
        keep_in_full_precision(only_t5, "transformer", ["proj_out"])
    both = keep_in_full_precision(
        PipelineQuantizationConfig(quant_mapping={"transformer": INT8}), "transformer", ["proj_out"]
    )
    again = keep_in_full_precision(both, "transformer", ["proj_out", "x_embedder"])
    assert again.specs["transformer"].kwargs["modules_to_not_convert"] == ["proj_out", "x_embedder"]


def test_layer_sensitivity_validates_its_arguments(flux_dir):
    with pytest.raises(ValueError, match="Pass the quantization to study"):
        layer_sensitivity(flux_dir, None)
    with pytest.raises(ValueError, match="Component 'unet' is not a model of this pipeline"):
        layer_sensitivity(flux_dir, INT8, "unet", progress=False)
