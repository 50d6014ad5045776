"""The notebooks' exercise checkers (quantkit/show/exercises.py): each one fails a wrong answer with a helpful
message, passes the solution, and only prints a reminder for the unanswered placeholder.

One test per notebook exercise, named after the notebook; the wrong answers are the mistakes a learner makes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

try:  # Python 3.11+; on 3.10 the same parser is the tomli package
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on 3.10 only
    tomllib = pytest.importorskip("tomli")

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

    def unanswered(codes): ...

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
    # the notebook's buggy config, with its first bug fixed: CLIP ('text_encoder') instead of T5
    with pytest.raises(AssertionError, match=r"missing \['text_encoder_2'\]; not wanted \['text_encoder'\]"):
        ex.check_simple_config(
            qk.PipelineQuantizationConfig("bitsandbytes_8bit", {"load_in_8bit": True}, ["transformer", "text_encoder"])
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
    # on a T4 the notebook asks for float16 (no bfloat16 there): the same config is then off by its dtype
    with pytest.raises(AssertionError, match="computes in bfloat16, not float16"):
        ex.check_mapping(
            mapping(QuantoConfig(weights_dtype="int8"), TransformersBnb(**nf4)), compute_dtype=torch.float16
        )
    fp16 = {**nf4, "bnb_4bit_compute_dtype": torch.float16}
    ex.check_mapping(mapping(QuantoConfig(weights_dtype="int8"), TransformersBnb(**fp16)), compute_dtype=torch.float16)
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
    with pytest.raises(AssertionError, match="its peak during generation is 24.4 GiB, more than the 21.65 GiB a L4"):
        ex.check_public_fit("bnb 8-bit")
    with pytest.raises(AssertionError, match="21.8 GiB"):  # fits a 24 GB card on paper, not after the CUDA context
        ex.check_public_fit("quanto int8")
    with pytest.raises(AssertionError, match="another row that fits is faster"):
        ex.check_public_fit("torchao int8wo")
    with pytest.raises(AssertionError, match="not a row of the table"):
        ex.check_public_fit("nf4")
    ex.check_public_fit("bnb nf4")
    assert "Correct!" in capsys.readouterr().out


def test_flux_dev_sizes_match_the_public_figures():
    """The BF16 total the exercises use is the sum of the public component sizes."""
    assert ex.flux_dev_gb() == pytest.approx(23.8 + 9.52 + 0.246 + 0.168)
    assert ex.flux_dev_gb({"transformer": 4, "text_encoder_2": 4}) == pytest.approx(8.744)


# -- 06 GGUF -----------------------------------------------------------------------------------------------------


def test_06_gguf_bytes(capsys):
    ex.check_gguf_bytes(..., "Q5_1", (12288, 3072))
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="only the 5-bit codes.*fp16 scale and an fp16 minimum"):
        ex.check_gguf_bytes(12288 * 3072 * 5 // 8, "Q5_1", (12288, 3072))
    with pytest.raises(AssertionError, match="size in BF16"):
        ex.check_gguf_bytes(12288 * 3072 * 2, "Q5_1", (12288, 3072))
    with pytest.raises(AssertionError, match="size in Q4_0"):
        ex.check_gguf_bytes(12288 * 96 * 18, "Q5_1", (12288, 3072))
    ex.check_gguf_bytes(12288 * (3072 // 32) * 24, "Q5_1", (12288, 3072))
    assert "Correct!" in capsys.readouterr().out


# -- 07 measuring honestly ---------------------------------------------------------------------------------------


def test_07_compression_ratio(capsys):
    true_fp, true_q, reported = 1_045_760, 284_640, 1_045_984  # tiny FLUX transformer, float32 vs quanto int8
    ex.check_compression_ratio(..., true_fp, true_q, reported_bytes=reported)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="get_memory_footprint"):
        ex.check_compression_ratio(true_fp / reported, true_fp, true_q, reported_bytes=reported)
    with pytest.raises(AssertionError, match="ratio of the codes alone"):
        ex.check_compression_ratio(4.0, true_fp, true_q, reported_bytes=reported)
    with pytest.raises(AssertionError, match="upside down"):
        ex.check_compression_ratio(true_q / true_fp, true_fp, true_q, reported_bytes=reported)
    ex.check_compression_ratio(true_fp / true_q, true_fp, true_q, reported_bytes=reported)
    assert "Correct!" in capsys.readouterr().out


# -- 08 sensitivity and mixed precision --------------------------------------------------------------------------


def _ranking():
    """A LayerSensitivity with a hand-made ranking, worst first (no pipeline run)."""
    import pandas as pd

    import quantkit as qk
    from quantkit.measure.sensitivity import LayerSensitivity

    frame = pd.DataFrame(
        {
            "layer": ["proj_out", "x_embedder", "a.to_q", "a.to_k"],
            "in_features": 64,
            "out_features": 64,
            "sqnr_db": [18.0, 19.0, 24.0, 25.0],
            "rel_error": [0.12, 0.11, 0.06, 0.05],
            "status": ["quantized"] * 4,
        }
    )
    spec = qk.QuantSpec("bitsandbytes_4bit", bnb_4bit_quant_type="nf4")
    return LayerSensitivity(component="transformer", quantization=spec.label(), spec=spec, frame=frame)


def test_08_kept_layers(capsys):
    import quantkit as qk

    sens = _ranking()

    def keeping(layers, backend="bitsandbytes_4bit"):
        kwargs = {"bnb_4bit_quant_type": "nf4"} if backend == "bitsandbytes_4bit" else {"quant_type": "Q4_0"}
        spec = qk.QuantSpec(backend, modules_to_not_convert=layers, **kwargs)
        return qk.PipelineQuantizationConfig(quant_mapping={"transformer": spec})

    ex.check_kept_layers(..., sens, n=2)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="least\\* sensitive"):
        ex.check_kept_layers(keeping(["a.to_q", "a.to_k"]), sens, n=2)
    with pytest.raises(AssertionError, match="No layer is kept"):
        ex.check_kept_layers(keeping([]), sens, n=2)
    with pytest.raises(AssertionError, match="keep exactly the 2 worst"):
        ex.check_kept_layers(keeping(["proj_out", "x_embedder", "a.to_q"]), sens, n=2)
    with pytest.raises(AssertionError, match="same backend"):
        ex.check_kept_layers(keeping(["proj_out", "x_embedder"], backend="gguf"), sens, n=2)
    ex.check_kept_layers(keeping(["proj_out", "x_embedder"]), sens, n=2)
    assert "Correct!" in capsys.readouterr().out


# -- 10 save, reload, share --------------------------------------------------------------------------------------


def test_10_reloaded(capsys, tmp_path):
    import json
    from types import SimpleNamespace

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "quantkit_quantization.json").write_text(json.dumps({"quant": {"backend": "gguf"}}))
    quantized_again = SimpleNamespace(loader="GGUF file (quantkit's) -> quantkit streaming loader")
    plan = SimpleNamespace(folder=tmp_path, components={"transformer": quantized_again})
    pipe = SimpleNamespace(quantkit_plan=plan, transformer=SimpleNamespace(quantkit={"backend": "gguf"}))

    ex.check_reloaded(..., tmp_path)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="quantized again instead of restored"):
        ex.check_reloaded(pipe, tmp_path)
    with pytest.raises(AssertionError, match="not the saved folder"):
        ex.check_reloaded(pipe, tmp_path / "elsewhere")
    plan.components["transformer"] = SimpleNamespace(loader="quantkit restore")
    ex.check_reloaded(pipe, tmp_path)
    assert "Correct!" in capsys.readouterr().out


# -- the public FLUX.1-dev figures (05, 07, 13) --------------------------------------------------------------------


def test_public_table_says_what_its_numbers_are():
    table = ex.public_flux_table()
    assert list(table.columns[:3]) == ["GiB after load", "GiB peak", "s / image"]
    assert "max_memory_reserved" in table.attrs["note"] and "GiB" in table.attrs["note"]
    gguf = [row for row in table.index if row.startswith("GGUF")]
    assert gguf and all(table.loc[row, "quantized"] == ex.FLUX_DEV_PUBLIC_QUANTIZED[row] for row in table.index)
    assert set(table.loc[gguf, "quantized"]) == {"transformer only (T5 in BF16)"}
    assert set(table.drop(index=[*gguf, "BF16"])["quantized"]) == {"transformer + T5"}


# -- 09 weight-only vs dynamic activation quantization ----------------------------------------------------------


def _int8_rows(t):
    import torch

    scale = t.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(t / scale), -127, 127).to(torch.int32), scale


def test_09_int8_dynamic_linear(capsys):
    import torch

    def unanswered(x, w): ...

    ex.check_int8_dynamic_linear(unanswered)
    assert "Not answered yet" in capsys.readouterr().out

    def per_tensor_activation(x, w):
        qw, sw = _int8_rows(w)
        sx = x.abs().amax() / 127
        qx = torch.clamp(torch.round(x / sx), -127, 127).to(torch.int32)
        return (qx @ qw.T).float() * sx * sw.T

    def not_rescaled(x, w):
        (qx, _), (qw, _) = _int8_rows(x), _int8_rows(w)
        return (qx @ qw.T).float()

    with pytest.raises(AssertionError, match="the float product itself"):
        ex.check_int8_dynamic_linear(lambda x, w: x @ w.T)
    with pytest.raises(AssertionError, match="raw int32 accumulators"):
        ex.check_int8_dynamic_linear(not_rescaled)
    with pytest.raises(AssertionError, match="large token sets the step for every token"):
        ex.check_int8_dynamic_linear(per_tensor_activation)
    with pytest.raises(AssertionError, match=r"shape \(tokens, out_features\)"):
        ex.check_int8_dynamic_linear(lambda x, w: w @ x.T)  # (out, tokens): transposed

    def solution(x, w):
        (qx, sx), (qw, sw) = _int8_rows(x), _int8_rows(w)
        return (qx @ qw.T).float() * sx * sw.T

    ex.check_int8_dynamic_linear(solution)
    assert "Correct!" in capsys.readouterr().out
    assert torch.allclose(
        solution(*ex.precision._dynamic_inputs()), ex.reference_int8_dynamic_linear(*ex.precision._dynamic_inputs())
    )


# -- 13 real models: fit a T4 by the predicted peak -------------------------------------------------------------


def _estimate(resident, extra, phase="denoise", host_run=0):
    """A PeakEstimate-shaped value: `resident` {component: GiB} on the GPU at the peak, `extra` GiB on top."""
    from types import SimpleNamespace

    gib = 2**30
    res = {k: int(v * gib) for k, v in resident.items()}
    weights = sum(res.values())
    return SimpleNamespace(
        resident=res, weights=weights, peak=weights + int(extra * gib), phase=phase, host_run=int(host_run * gib)
    )


def _nf4(*components):
    import quantkit as qk

    return qk.PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"bnb_4bit_quant_type": "nf4"},
        components_to_quantize=list(components),
    )


def test_13_fits_gpu_judges_the_peak_not_the_weights(capsys):
    both = _nf4("transformer", "text_encoder_2")

    def predict(config, offload):
        if config is None:
            return _estimate({"transformer": 22.2, "text_encoder_2": 8.9}, 5.1, "decode")
        if offload == "model":
            return _estimate({"transformer": 6.2}, 0.7, "denoise", host_run=12.6)
        return _estimate({"transformer": 6.2, "text_encoder_2": 4.0, "vae": 0.2}, 5.1, "decode")

    ex.check_fits_gpu(..., ..., predict=predict)
    assert "Not answered yet" in capsys.readouterr().out
    ex.check_fits_gpu(both, ..., predict=predict)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="weights alone do not fit"):
        ex.check_fits_gpu(None, None, predict=predict)
    with pytest.raises(AssertionError, match=r"The weights fit \(10\.40 GiB\), the decode phase"):
        ex.check_fits_gpu(both, None, predict=predict)  # 10.4 GiB of weights fit a T4, the peak does not
    with pytest.raises(AssertionError, match="Sequential offload fits almost anything"):
        ex.check_fits_gpu(None, "sequential", predict=predict)
    with pytest.raises(AssertionError, match="offload should be one of"):
        ex.check_fits_gpu(both, "cpu", predict=predict)
    with pytest.raises(AssertionError, match="should be a qk.PipelineQuantizationConfig"):
        ex.check_fits_gpu({"quant_backend": "bitsandbytes_4bit"}, None, predict=predict)
    ex.check_fits_gpu(both, "model", predict=predict)
    out = capsys.readouterr().out
    assert "Correct!" in out and "host RAM while generating 13.5 GB" in out


def test_13_fits_gpu_with_the_planner():
    """The real prediction (FLUX.1-dev from the catalog, offline): NF4 on both fits a T4 only with model offload."""
    with pytest.raises(AssertionError, match="during decode"):
        ex.check_fits_gpu(_nf4("transformer", "text_encoder_2"), None)
    with pytest.raises(AssertionError, match="With model offload the GPU holds transformer"):
        ex.check_fits_gpu(None, "model")
    ex.check_fits_gpu(_nf4("transformer", "text_encoder_2"), "model")


# -- 14 capstone: choose from qk.fit's table --------------------------------------------------------------------


@pytest.fixture
def fit_table():
    """A qk.fit-shaped table for a 14.45 GiB budget, sorted as fit sorts: fits first, then quality."""
    import pandas as pd

    gib = 2**30
    budget = int(14.45 * gib)
    rows = [  # candidate, offload, peak GiB, problem
        ("int8 (denoiser) + model offload", "model", 11.7, ""),
        ("int4 (both)", "-", 13.6, ""),
        ("nf4 (both) + model offload", "model", 6.9, ""),
        ("bf16 + sequential offload", "sequential", 4.9, ""),
        ("int4wo (both)", "-", 12.0, "torchao int4wo needs compute capability >= 8.0 (T4 has 7.5)"),
        ("bf16", "-", 36.2, ""),
    ]
    frame = pd.DataFrame(
        [
            {
                "candidate": c,
                "offload": o,
                "peak_bytes": int(p * gib),
                "fits": p * gib <= budget and not prob,
                "margin_bytes": budget - int(p * gib),
                "slowdown": "none",
                "problem": prob,
            }
            for c, o, p, prob in rows
        ]
    )
    frame = frame.sort_values("fits", ascending=False, kind="stable").reset_index(drop=True)
    frame.attrs.update(budget_bytes=budget, gpu="T4")
    return frame


def test_14_capstone_choice(capsys, fit_table):
    ex.check_capstone_choice(..., fit_table)
    assert "Not answered yet" in capsys.readouterr().out
    assert ex.capstone_expected(fit_table)["candidate"] == "int8 (denoiser) + model offload"
    with pytest.raises(AssertionError, match="does not fit the T4: its predicted peak 36.20 GiB"):
        ex.check_capstone_choice("bf16", fit_table)
    with pytest.raises(AssertionError, match="compute capability"):
        ex.check_capstone_choice("int4wo (both)", fit_table)
    with pytest.raises(AssertionError, match="only 0.85 GiB to spare"):
        ex.check_capstone_choice("int4 (both)", fit_table)
    with pytest.raises(AssertionError, match="Rule 2"):
        ex.check_capstone_choice("bf16 + sequential offload", fit_table)
    with pytest.raises(AssertionError, match="rule 4"):
        ex.check_capstone_choice("nf4 (both) + model offload", fit_table)
    with pytest.raises(AssertionError, match="not a candidate"):
        ex.check_capstone_choice("nf4", fit_table)
    ex.check_capstone_choice("int8 (denoiser) + model offload", fit_table)
    assert "Correct!" in capsys.readouterr().out
    # with room for a candidate without offload, offloading one is refused (rule 3)
    roomy = fit_table.copy()
    roomy.attrs.update(fit_table.attrs)
    roomy.loc[roomy["candidate"] == "int4 (both)", "margin_bytes"] = 2 * 2**30
    with pytest.raises(AssertionError, match="rule 3"):
        ex.check_capstone_choice("int8 (denoiser) + model offload", roomy)
    ex.check_capstone_choice("int4 (both)", roomy)
    assert "Correct!" in capsys.readouterr().out


# -- the notebooks themselves: one setup cell, the skeleton, tidy outputs, the index, the Colab extra -----------

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]-*.ipynb"))


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"notebook_{name}", NOTEBOOKS_DIR / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _text(cell):
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_starts_with_the_one_setup_cell(path):
    setup = _tool("setup_cell").SETUP
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert code[0].get("id") == "setup" and _text(code[0]) == setup, (
        f"{path.name}: the first code cell must be notebooks/tools/setup_cell.py's SETUP (run that script)"
    )
    assert "quantkit[colab]" in setup and "RESTART NEEDED" in setup and "torch==" in setup


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_follows_the_skeleton(path):
    cells = _cells(path)
    head = _text(cells[0])
    assert head.startswith(f"# {path.name[:2]} ·"), f"{path.name}: the title carries the notebook's number"
    assert "What you will" in head and "budget" in head.lower()
    markdown = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    kinds = ("predict", "debug", "implement", "decide")
    assert re.search(r"#+ Exercise[^\n]*\((?:[^)]*)(" + "|".join(kinds) + r")", markdown), (
        f"{path.name}: an exercise heading names its kind ({', '.join(kinds)})"
    )
    assert "## Recap" in markdown
    assert any("from quantkit.show.exercises import check_" in _text(c) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_outputs_are_tidy(path):
    assert _tool("tidy").problems(path) == []


def test_index_lists_every_notebook_its_budget_and_the_two_slots():
    readme = (NOTEBOOKS_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        row = next((line for line in readme.splitlines() if f"]({path.name})" in line), None)
        assert row is not None, f"notebooks/README.md has no row for {path.name}"
        assert f"github/quantkit-dev/quantkit/blob/main/notebooks/{path.name}" in row, f"{path.name}: badge link"
        header = _text(_cells(path)[0])
        budget = re.search(r"CPU(?: only)?:?,? ~(\d+) s", header) or re.search(r"offline / CPU: ~(\d+) s", header)
        assert budget, f"{path.name}: the header states a CPU budget"
        assert f"~{budget.group(1)} s" in row, f"{path.name}: header says ~{budget.group(1)} s, the index row differs"
    assert "Offload + compile with quantized pipelines" in readme and "LoRA on a quantized pipeline" in readme
    numbers = {int(p.name[:2]) for p in NOTEBOOKS}
    slots = {11, 12}  # offload + compile, LoRA: written next; once they exist, the loop above checks their rows
    assert numbers - slots == set(range(1, 15)) - slots, "01-14 in sequence, with only the two slots allowed missing"


def test_colab_extra_pins_what_ci_tests_and_nothing_else():
    from test_environment import _pins

    project = tomllib.loads((NOTEBOOKS_DIR.parent / "pyproject.toml").read_text())["project"]
    colab = project["optional-dependencies"]["colab"]
    ci = _pins((NOTEBOOKS_DIR.parent / "requirements-ci.txt").read_text().splitlines())
    pinned = _pins(colab)
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in colab}
    assert not names & {"torch", "jupyterlab", "nbval", "pytest", "notebook"}, "Colab keeps its torch; no dev tools"
    assert {"bitsandbytes", "optimum-quanto", "gguf", "torchao"} <= set(pinned)
    assert all(ci[name] == version for name, version in pinned.items()), f"colab pins {pinned} differ from CI {ci}"
    assert any(d.startswith("ipywidgets>=7.7") for d in colab), "Colab's ipywidgets 7.7 must satisfy the extra"
