"""The notebooks' exercise checkers (quantkit/show/exercises.py): each one fails a wrong answer with a helpful
message, passes the solution, and only prints a reminder for the unanswered placeholder.

One test per notebook exercise, named after the notebook; the wrong answers are the mistakes a learner makes.
"""

from __future__ import annotations

import pytest

from quantkit.show import exercises as ex

# -- 01 start here -----------------------------------------------------------------------------------------------


def test_01_flux_int8_gb(capsys):
    ex.check_flux_int8_gb(...)  # placeholder: no failure, a reminder
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="BF16 total: int8 stores each weight in 1 byte"):
        ex.check_flux_int8_gb(33.73, False)
    with pytest.raises(AssertionError, match="CLIP and the VAE stay in BF16"):
        ex.check_flux_int8_gb(16.87, True)
    with pytest.raises(AssertionError, match="Compare your total"):
        ex.check_flux_int8_gb(17.07, True)
    with pytest.raises(AssertionError, match="should be a number"):
        ex.check_flux_int8_gb("17", False)
    ex.check_flux_int8_gb(23.8 / 2 + 9.52 / 2 + 0.246 + 0.168, False)
    assert "Correct!" in capsys.readouterr().out


# -- 02 quantization from scratch --------------------------------------------------------------------------------


def test_02_pack_int4(capsys):
    import torch

    def unanswered(codes):
        ...

    ex.check_pack_int4(unanswered)
    assert "Not answered yet" in capsys.readouterr().out

    def swapped(codes):
        pairs = codes.reshape(-1, 2)
        return pairs[:, 1] | (pairs[:, 0] << 4)

    with pytest.raises(AssertionError, match="nibbles are swapped"):
        ex.check_pack_int4(swapped)
    with pytest.raises(AssertionError, match="fill 4 bytes"):
        ex.check_pack_int4(lambda codes: codes)
    with pytest.raises(AssertionError, match="should be uint8"):
        ex.check_pack_int4(lambda codes: ex.reference_pack_int4(codes).to(torch.int32))
    ex.check_pack_int4(lambda codes: codes.reshape(-1, 2)[:, 0] | (codes.reshape(-1, 2)[:, 1] << 4))
    assert "Correct!" in capsys.readouterr().out


def _absmax(w, dim=None, qmax=127, rounding=None):
    import torch

    absmax = w.abs().amax() if dim is None else w.abs().amax(dim=dim, keepdim=True)
    scale = absmax / qmax
    q = torch.clamp((rounding or torch.round)(w / scale), -127, 127).to(torch.int8)
    return q, scale


def test_02_per_channel_int8(capsys):
    import torch

    ex.check_per_channel_int8(lambda w: None)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="per-tensor quantization"):
        ex.check_per_channel_int8(lambda w: _absmax(w))
    with pytest.raises(AssertionError, match=r"shape \(8, 1\)"):
        ex.check_per_channel_int8(lambda w: _absmax(w, dim=0))  # one scale per input column
    with pytest.raises(AssertionError, match="divides by 128"):
        ex.check_per_channel_int8(lambda w: _absmax(w, dim=1, qmax=128))
    with pytest.raises(AssertionError, match="truncated toward zero"):
        ex.check_per_channel_int8(lambda w: _absmax(w, dim=1, rounding=torch.trunc))
    with pytest.raises(AssertionError, match="int8 tensor"):
        ex.check_per_channel_int8(lambda w: (torch.round(w * 100), w.abs().amax(1, keepdim=True)))
    ex.check_per_channel_int8(lambda w: _absmax(w, dim=1))
    assert "Correct!" in capsys.readouterr().out


# -- 03 simple pipeline quantization -----------------------------------------------------------------------------


def test_03_simple_config(capsys):
    import quantkit as qk

    ex.check_simple_config(...)
    assert "Not answered yet" in capsys.readouterr().out
    both = ["transformer", "text_encoder_2"]
    with pytest.raises(AssertionError, match="'bitsandbytes_8bit'"):
        ex.check_simple_config(qk.PipelineQuantizationConfig("bitsandbytes_4bit", {"load_in_4bit": True}, both))
    with pytest.raises(AssertionError, match="every model component is quantized"):
        ex.check_simple_config(qk.PipelineQuantizationConfig("bitsandbytes_8bit", {"load_in_8bit": True}))
    with pytest.raises(AssertionError, match=r"missing \['text_encoder_2'\]; not wanted \['vae'\]"):
        ex.check_simple_config(
            qk.PipelineQuantizationConfig("bitsandbytes_8bit", {"load_in_8bit": True}, ["transformer", "vae"])
        )
    with pytest.raises(AssertionError, match="simple form"):
        ex.check_simple_config(
            qk.PipelineQuantizationConfig(quant_mapping={"transformer": qk.QuantSpec("bitsandbytes_8bit")})
        )
    with pytest.raises(AssertionError, match="should be a PipelineQuantizationConfig"):
        ex.check_simple_config({"quant_backend": "bitsandbytes_8bit"})
    ex.check_simple_config(qk.PipelineQuantizationConfig("bitsandbytes_8bit", {"load_in_8bit": True}, both))
    assert "Correct!" in capsys.readouterr().out


def test_03_simple_config_accepts_diffusers_class(capsys):
    from diffusers import PipelineQuantizationConfig

    config = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_8bit",
        quant_kwargs={"load_in_8bit": True},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    ex.check_simple_config(config)
    assert "Correct!" in capsys.readouterr().out


# -- 04 quant mapping --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_04_mapping(capsys):
    import torch
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import PipelineQuantizationConfig, QuantoConfig
    from transformers import BitsAndBytesConfig as TransformersBnb
    from transformers import QuantoConfig as TransformersQuanto

    import quantkit as qk

    def mapping(transformer, text_encoder_2):
        return PipelineQuantizationConfig(quant_mapping={"transformer": transformer, "text_encoder_2": text_encoder_2})

    nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    ex.check_mapping(...)
    assert "Not answered yet" in capsys.readouterr().out
    # the documentation's spelling: `compute_dtype` is silently dropped (and the quant type stays fp4)
    with pytest.raises(AssertionError, match="quant type is 'fp4'"):
        ex.check_mapping(mapping(QuantoConfig(weights_dtype="int8"), TransformersBnb(load_in_4bit=True)))
    with pytest.raises(AssertionError, match="bare `compute_dtype` is silently dropped"):
        ex.check_mapping(
            mapping(
                QuantoConfig(weights_dtype="int8"),
                TransformersBnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", compute_dtype=torch.bfloat16),
            )
        )
    with pytest.raises(AssertionError, match="'text_encoder_2' is a transformers model"):
        ex.check_mapping(mapping(QuantoConfig(weights_dtype="int8"), DiffusersBnb(**nf4)))
    with pytest.raises(AssertionError, match="'transformer' is a diffusers model"):
        ex.check_mapping(mapping(TransformersQuanto(weights="int8"), TransformersBnb(**nf4)))
    with pytest.raises(AssertionError, match="diffusers' own class"):
        ex.check_mapping(qk.PipelineQuantizationConfig(quant_mapping={"transformer": qk.QuantSpec("quanto")}))
    with pytest.raises(AssertionError, match="map exactly"):
        ex.check_mapping(PipelineQuantizationConfig(quant_mapping={"transformer": QuantoConfig(weights_dtype="int8")}))
    ex.check_mapping(mapping(QuantoConfig(weights_dtype="int8"), TransformersBnb(**nf4)))
    assert "Correct!" in capsys.readouterr().out


# -- 05 backend shoot-out ----------------------------------------------------------------------------------------


@pytest.fixture
def compare_frame():
    """A CompareResults.frame-shaped table: baseline (PSNR NaN = identical to itself) and five variants."""
    import pandas as pd

    rows = {
        "baseline": ("ok", "-", 2_900_000, float("nan")),
        "int8-a": ("ok", "quanto int8", 1_920_000, 62.5),
        "int8-b": ("ok", "torchao int8wo", 1_930_000, 62.0),  # bigger and worse than int8-a: dominated
        "q8": ("ok", "gguf Q8_0", 1_970_000, 63.4),
        "nf4": ("ok", "bitsandbytes_4bit nf4", 1_810_000, 36.4),
        "broken": ("failed", "gguf Q4_0", None, None),
    }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["status", "quantization", "bytes", "psnr"])
    frame.index.name = "variant"
    return frame


def test_05_pareto(capsys, compare_frame):
    ex.check_pareto(..., compare_frame)
    assert "Not answered yet" in capsys.readouterr().out
    assert ex.pareto_variants(compare_frame) == ["baseline", "int8-a", "nf4", "q8"]
    with pytest.raises(AssertionError, match=r"\['int8-b'\] is beaten"):
        ex.check_pareto(["baseline", "int8-a", "int8-b", "nf4", "q8"], compare_frame)
    with pytest.raises(AssertionError, match="left out 1 variant"):
        ex.check_pareto(["int8-a", "nf4", "q8"], compare_frame)
    with pytest.raises(AssertionError, match="not variants of this comparison"):
        ex.check_pareto(["baseline", "bnb-nf4"], compare_frame)
    with pytest.raises(AssertionError, match="list of variant names"):
        ex.check_pareto("nf4", compare_frame)
    ex.check_pareto(("q8", "nf4", "baseline", "int8-a"), compare_frame)
    assert "Correct!" in capsys.readouterr().out


def test_05_public_fit(capsys):
    ex.check_public_fit(...)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="its peak during generation is 24.4 GB"):
        ex.check_public_fit("bnb 8-bit")
    with pytest.raises(AssertionError, match="another config that fits is faster"):
        ex.check_public_fit("quanto int8")
    with pytest.raises(AssertionError, match="not a row of the table"):
        ex.check_public_fit("nf4")
    ex.check_public_fit("bnb nf4")
    assert "Correct!" in capsys.readouterr().out


def test_flux_dev_sizes_match_the_public_figures():
    """The BF16 total the exercises use is the sum of the public component sizes."""
    assert ex.flux_dev_gb() == pytest.approx(23.8 + 9.52 + 0.246 + 0.168)
    assert ex.flux_dev_gb({"transformer": 4, "text_encoder_2": 4}) == pytest.approx(8.744)
