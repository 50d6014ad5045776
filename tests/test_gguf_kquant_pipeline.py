"""K-quants and mixes through the whole path: plan, load (quantkit's streaming loader and diffusers'
from_single_file), quality ordering against the unquantized image, and the mixes' per-layer decisions."""

from __future__ import annotations

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig
from tests.helpers import generate, psnr

BF16 = torch.float32  # full precision compute: a bf16 noise floor (~48 dB) would hide the K types' differences
K_TYPES = ["Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]


def gguf(quant_type: str, **more) -> PipelineQuantizationConfig:
    return PipelineQuantizationConfig(
        quant_backend="gguf", quant_kwargs={"quant_type": quant_type, **more}, components_to_quantize=["transformer"]
    )


@pytest.fixture(scope="module")
def reference(flux_dir):
    return generate(qk.load_pipeline(flux_dir, None, torch_dtype=BF16, device="cpu", progress=False))


@pytest.fixture(scope="module")
def images(flux_dir):
    out = {}
    for quant_type in K_TYPES:
        pipe = qk.load_pipeline(
            flux_dir, gguf(quant_type, compute_dtype="float32"), torch_dtype=BF16, device="cpu", progress=False
        )
        kinds = {m.weight.quant_type.name for m in pipe.transformer.modules() if type(m).__name__ == "GGUFLinear"}
        assert kinds == {quant_type}
        out[quant_type] = generate(pipe)
    return out


def test_k_quants_load_in_the_simple_form_and_follow_the_type_order(images, reference):
    scores = {t: psnr(images[t], reference) for t in K_TYPES}
    # the tiny transformer's rows are 64 wide: only its FFN-down layers (256 in) take K blocks, so the image
    # error is small; still, more bits must mean less error, in order (measured ~45 dB for Q6_K down to ~31 for Q2_K)
    assert [scores[t] for t in K_TYPES] == sorted(scores.values(), reverse=True), scores
    assert scores["Q6_K"] > 40 and scores["Q2_K"] < scores["Q4_K"] - 3


def test_on_the_embedded_pipeline_quality_follows_the_type_order(tmp_path, monkeypatch):
    """The embedded pipeline (quantkit.EMBEDDED_PIPELINE): its transformer's blocks (256 wide) take K blocks, the
    64/128-wide embedders stay full precision (the plan says why). PSNR against the unquantized pipeline's image,
    mean over prompts x seeds, falls with the type's bits: measured 51.8 / 43.2 / 39.5 / 30.7 / 25.0 dB for
    Q6_K..Q2_K (these 2 prompts x 2 seeds, 6 steps; with 1 prompt, Q3_K and Q4_K came within 0.3 dB of each
    other, out of order)."""
    import numpy as np

    prompts, seeds = ("a red circle", "two green triangles"), (0, 1)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))  # its GGUF files apart from the tiny pipeline's

    def images(config):
        pipe = qk.load_pipeline(None, config, device="cpu", progress=False)
        pipe.set_progress_bar_config(disable=True)
        return [generate(pipe, prompt, seed, steps=6) for prompt in prompts for seed in seeds]

    reference = images(None)
    scores = {}
    for quant_type in K_TYPES:
        got = images(gguf(quant_type, compute_dtype="float32"))
        scores[quant_type] = float(np.mean([psnr(a, b) for a, b in zip(got, reference, strict=True)]))
    assert [scores[t] for t in K_TYPES] == sorted(scores.values(), reverse=True), scores
    assert scores["Q6_K"] - scores["Q2_K"] > 12, scores


def test_a_k_quant_file_loads_the_same_through_diffusers_single_file(flux_dir, images, tmp_path, monkeypatch):
    from quantkit.backends.gguf import _from_single_file
    from quantkit.backends.gguf_files import cache_dir

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))  # its own cache: the one file this load writes
    pipe = qk.load_pipeline(
        flux_dir, gguf("Q4_K", compute_dtype="float32"), torch_dtype=BF16, device="cpu", progress=False
    )
    (path,) = sorted(cache_dir().glob("transformer-Q4_K-*.gguf"))
    c = pipe.quantkit_plan.components["transformer"]
    theirs = _from_single_file(c, path, BF16, BF16, "cpu")
    assert {n: type(m).__name__ for n, m in theirs.named_modules()} == {
        n: type(m).__name__ for n, m in pipe.transformer.named_modules()
    }
    pipe.transformer = theirs
    assert psnr(generate(pipe), images["Q4_K"]) >= 60


def test_a_mix_on_a_tiny_model_keeps_everything_and_says_why(flux_dir):
    p = qk.plan(flux_dir, gguf("Q4_K_M"), device="cpu")
    t = p.components["transformer"]
    assert t.quantized_layers == [] and "none of this FluxTransformer2DModel" in t.problem
    assert all("small tensor" in why or "model edge" in why for why in t.skipped_layers.values())


def test_a_mix_on_flux_dev_decides_per_layer(tmp_path):
    """Q4_K_M on FLUX.1-dev's transformer, from the catalog's configs (offline): value and FFN-down projections
    get Q6_K, the rest Q4_K, the model's edges stay in full precision; the bytes fall between Q4_K and Q6_K."""
    plans = {
        t: qk.plan("black-forest-labs/FLUX.1-dev", gguf(t), device="cuda", torch_dtype="bfloat16")
        for t in ("Q4_K", "Q4_K_M", "Q6_K")
    }
    layers = plans["Q4_K_M"].layers("transformer").set_index("layer")["quantization"]
    assert layers["transformer_blocks.0.attn.to_v"].startswith("Q6_K (attention value projection")
    assert layers["transformer_blocks.0.ff.net.2"].startswith("Q6_K (FFN down projection")
    assert layers["transformer_blocks.0.attn.to_q"].startswith("Q4_K (base type of Q4_K_M")
    assert layers["x_embedder"].startswith("model edge")
    sizes = {t: p.components["transformer"].bytes_after for t, p in plans.items()}
    assert sizes["Q4_K"] < sizes["Q4_K_M"] < sizes["Q6_K"]
    bpw = 8 * sizes["Q4_K_M"] / plans["Q4_K_M"].components["transformer"].params
    assert 4.5 < bpw < 6.0  # Q4_K's 4.5 bits, raised where the mix raises it


def test_every_k_type_and_mix_is_a_valid_option_and_round_trips():
    from quantkit.backends.gguf_files import MIXES

    for quant_type in [*K_TYPES, *MIXES]:
        config = gguf(quant_type)
        assert PipelineQuantizationConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="quant_type='IQ4_XS' is not supported by backend 'gguf'.*'Q4_K_M'"):
        gguf("IQ4_XS")
