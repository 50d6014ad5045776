"""GGUF K-quant writers (quantkit.backends.gguf_kquants) and mix presets (quantkit.backends.gguf_mixes).

The writer is checked through the `gguf` package's own dequantizers (the reference decoder): round-trip errors
on Gaussian and heavy-tailed weights with named bounds, the ordering of the types and against the legacy
32-weight types, the exact bits per weight, edge cases, and fixtures quantized by ggml's reference quantizer
(tests/fixtures/kquants/README.md says how they were made). ~10-25 s on one busy core, most of it importing
diffusers for its GGUF dequantizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from quantkit.backends.gguf_kquants import K_TYPES, QK_K, bits_per_weight, quantize_k
from quantkit.backends.gguf_mixes import BITS_PER_WEIGHT, FALLBACK, PRESETS, mix_bits, nominal_bits, tensor_type

K = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
FIXTURES = Path(__file__).parent / "fixtures" / "kquants"


def decode(packed: np.ndarray, quant_type: str) -> np.ndarray:
    return gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[quant_type])


def legacy(x: np.ndarray, quant_type: str) -> np.ndarray:
    """Round trip through the gguf package's own writer (Q4_0, Q5_0, ...)."""
    qtype = gguf.GGMLQuantizationType[quant_type]
    return gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    """RMS of the error relative to the RMS of the weights."""
    return float(np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2)))


def gaussian() -> np.ndarray:
    """(256, 1024) N(0, 0.02^2), the scale of a trained transformer's weights."""
    return (np.random.default_rng(0).standard_normal((256, 1024)) * 0.02).astype(np.float32)


def heavy() -> np.ndarray:
    """(256, 1024) Student-t (3 degrees of freedom: kurtosis like LLM/DiT weights) with 3 outlier columns x20."""
    x = np.random.default_rng(1).standard_t(3, (256, 1024)) * 0.02
    x[:, [3, 500, 777]] *= 20
    return x.astype(np.float32)


# Error bounds: relative RMSE after quantize_k -> gguf.quants.dequantize, measured here (numpy 2.4, float32)
# plus ~3% headroom. For reference, the naive estimate step / sqrt(12) of min-max rounding on Gaussian weights
# (expected sub-block range over the codes) is Q2_K 0.34, Q3_K 0.15, Q4_K 0.080, Q5_K 0.039, Q6_K 0.019: the
# searched fits stay below it. ggml's reference quantizer on the same kind of data: see test_against_ggml.
GAUSSIAN_BOUND = {  # measured: 0.2693, 0.1443, 0.0713, 0.0359, 0.0168
    "Q2_K": 0.277,
    "Q3_K": 0.149,
    "Q4_K": 0.0735,
    "Q5_K": 0.0370,
    "Q6_K": 0.0173,
}
HEAVY_BOUND = {  # measured: 0.2397, 0.1513, 0.0877, 0.0475, 0.0289
    "Q2_K": 0.247,
    "Q3_K": 0.156,
    "Q4_K": 0.0905,
    "Q5_K": 0.0490,
    "Q6_K": 0.0298,
}
EXACT_BITS = {"Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}


@pytest.fixture(scope="module")
def errors():
    """(data, type) -> relative RMSE, for the K types (this writer) and the legacy types (gguf's writer)."""
    out = {}
    for name, x in (("gaussian", gaussian()), ("heavy", heavy())):
        for t in K:
            out[name, t] = rel_rmse(x, decode(quantize_k(x, t), t))
        for t in ("Q4_0", "Q5_0"):
            out[name, t] = rel_rmse(x, legacy(x, t))
    return out


# -- round trips and ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", K)
def test_round_trip_gaussian(errors, quant_type):
    assert errors["gaussian", quant_type] <= GAUSSIAN_BOUND[quant_type]


@pytest.mark.parametrize("quant_type", K)
def test_round_trip_heavy_tailed(errors, quant_type):
    assert errors["heavy", quant_type] <= HEAVY_BOUND[quant_type]


@pytest.mark.parametrize("data", ["gaussian", "heavy"])
def test_more_bits_less_error(errors, data):
    e = [errors[data, t] for t in ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")]
    assert e == sorted(e) and len(set(e)) == len(e), e


@pytest.mark.parametrize("data", ["gaussian", "heavy"])
def test_k_quants_beat_legacy_types_of_the_same_width(errors, data):
    # same bits per weight (4.5 and 5.5): measured Q4_K/Q4_0 0.83 (gaussian), 0.72 (heavy); Q5_K/Q5_0 0.84, 0.66
    assert errors[data, "Q4_K"] < 0.9 * errors[data, "Q4_0"]
    assert errors[data, "Q5_K"] < 0.9 * errors[data, "Q5_0"]


@pytest.mark.parametrize("quant_type", K)
def test_bits_per_weight_exact(quant_type):
    x = gaussian()
    packed = quantize_k(x, quant_type)
    assert packed.dtype == np.uint8
    assert packed.shape == gguf.quants.quant_shape_to_byte_shape(x.shape, gguf.GGMLQuantizationType[quant_type])
    assert packed.nbytes * 8 / x.size == EXACT_BITS[quant_type] == bits_per_weight(quant_type)
    assert (QK_K, K_TYPES[quant_type][0]) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[quant_type]]


# -- edge cases -------------------------------------------------------------------------------------------------


def one_block(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, QK_K)


@pytest.mark.parametrize("quant_type", K)
def test_all_zero_block_decodes_to_exact_zeros(quant_type):
    packed = quantize_k(np.zeros((2, 512), np.float32), quant_type)
    assert not packed.any()  # all-zero bytes, as ggml writes such a block
    assert not decode(packed, quant_type).any()


@pytest.mark.parametrize("value", [0.25, -0.5, 1e-3])
@pytest.mark.parametrize("quant_type", K)
def test_constant_block(quant_type, value):
    y = decode(quantize_k(one_block(np.full(QK_K, value)), quant_type), quant_type)
    # exact up to the float16 rounding of the super-block scale(s): <= 2^-11 relative for 0.25 and -0.5; for 1e-3
    # d is a float16 subnormal (a multiple of 2^-24) and the best d * code is 0.22% off (Q4_K, Q5_K; measured)
    assert np.allclose(y, value, rtol=3e-3, atol=0)


@pytest.mark.parametrize("quant_type", K)
def test_tiny_weights_keep_their_precision(quant_type):
    # std 1e-5: d falls below float16's normal range (and rounds to 0 for Q5_K and Q6_K if taken as max / 63);
    # _subnormal_scale trades code range for scale bits. Measured: Q6_K 0.0209, Q5_K 0.0374 (vs 0.0168, 0.0359)
    x = gaussian()[:64]
    assert rel_rmse(x * 5e-4, decode(quantize_k(x * 5e-4, quant_type), quant_type)) <= 1.3 * GAUSSIAN_BOUND[quant_type]


@pytest.mark.parametrize("quant_type", K)
def test_one_huge_outlier(quant_type):
    x = one_block(np.random.default_rng(2).standard_normal(QK_K) * 0.02)
    x[0, 100] = 5.0  # 250 standard deviations
    y = decode(quantize_k(x, quant_type), quant_type)
    assert abs(y[0, 100] - 5.0) < 0.01 * 5.0  # the outlier itself survives (it sets the super-block scale)
    assert np.abs(y - x).max() <= 0.05 * 5.0  # and nothing else is thrown off by more than its scale allows


@pytest.mark.parametrize("quant_type", K)
def test_negative_only_block(quant_type):
    x = -np.abs(gaussian()[:8])
    y = decode(quantize_k(x, quant_type), quant_type)
    assert (y <= 0).mean() > 0.99
    assert rel_rmse(x, y) <= GAUSSIAN_BOUND[quant_type]


@pytest.mark.parametrize("quant_type", K)
def test_float16_and_bfloat16_inputs(quant_type):
    x16 = gaussian()[:16].astype(np.float16)
    assert np.array_equal(quantize_k(x16, quant_type), quantize_k(x16.astype(np.float32), quant_type))
    xb = torch.from_numpy(gaussian()[:16]).to(torch.bfloat16)
    assert np.array_equal(quantize_k(xb, quant_type), quantize_k(xb.float().numpy(), quant_type))


def test_any_leading_shape_like_gguf():
    x = gaussian()[:12].reshape(3, 4, 1024)
    packed = quantize_k(x, "Q4_K")
    assert packed.shape == (3, 4, 1024 // 256 * 144)
    assert np.array_equal(packed.reshape(12, -1), quantize_k(x.reshape(12, 1024), "Q4_K"))


def test_row_not_divisible_by_256_says_shape_and_fix():
    with pytest.raises(ValueError) as info:
        quantize_k(np.zeros((4, 320), np.float32), "Q4_K")
    message = str(info.value)
    assert "shape (4, 320)" in message and "multiple of 256" in message
    assert "Q4_0, Q5_0, Q5_1 or Q8_0" in message and "gguf_mixes.tensor_type" in message


def test_unknown_type_and_non_finite_weights():
    with pytest.raises(ValueError, match="'Q4_K_M' is a mix preset: pick each tensor's type with gguf_mixes"):
        quantize_k(np.zeros((1, 256), np.float32), "Q4_K_M")
    with pytest.raises(ValueError, match="quant_type='Q4K' is not a K-quant this module writes. Did you mean 'Q4_K'"):
        quantize_k(np.zeros((1, 256), np.float32), "Q4K")
    x = gaussian()[:2]
    x[1, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_k(x, "Q5_K")


@pytest.mark.parametrize("quant_type", K)
def test_too_large_weights_say_so(quant_type):
    x = gaussian()[:4] * 1e12  # far beyond what float16 super-block scales (max 65504) can reach
    with pytest.raises(ValueError, match=f"^{quant_type}: weights .*too large.*Keep this tensor in BF16/F32"):
        quantize_k(x, quant_type)


def test_chunks_do_not_change_the_result(monkeypatch):
    import quantkit.backends.gguf_kquants as kq

    x = heavy()[:64]
    whole = {t: quantize_k(x, t) for t in K}
    monkeypatch.setattr(kq, "CHUNK", 7)  # 7 super-blocks per chunk: every chunk but the last, then a short one
    for t in K:
        assert np.array_equal(quantize_k(x, t), whole[t])


# -- the bytes in a GGUF file, and in diffusers' GGUF layers ---------------------------------------------------


def test_gguf_file_round_trip_and_diffusers_dequantizer(tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    x = heavy()[:8]
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), arch="quantkit")
    packed = {t: quantize_k(x, t) for t in K}
    for t, p in packed.items():
        writer.add_tensor(f"w.{t}", p, raw_dtype=gguf.GGMLQuantizationType[t])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for tensor in gguf.GGUFReader(str(path)).tensors:
        t = tensor.name.removeprefix("w.")
        assert tensor.tensor_type.name == t and tuple(reversed(tensor.shape.tolist())) == x.shape
        assert np.array_equal(np.asarray(tensor.data).reshape(packed[t].shape), packed[t])
        # diffusers' torch dequantizer (what GGUFLinear runs at every matmul) decodes them like gguf's numpy one,
        # up to its float16 arithmetic (measured: relative RMS difference 2e-4 .. 1.3e-3)
        ours = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(packed[t]), quant_type=tensor.tensor_type))
        assert rel_rmse(decode(packed[t], t), ours.float().numpy()) < 3e-3


# -- against ggml's reference quantizer -----------------------------------------------------------------------


def fixture_input(kind: str) -> np.ndarray:
    """The (32, 512) float32 inputs of tests/fixtures/kquants (same code as in its README)."""
    rng = np.random.default_rng({"gaussian": 1, "heavy": 2, "edge": 3}[kind])
    if kind == "gaussian":
        return (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    if kind == "heavy":
        x = rng.standard_t(3, (32, 512)) * 0.02
        x[:, [7, 300]] *= 20
        return x.astype(np.float32)
    x = rng.standard_normal((32, 512)) * np.logspace(-4, 1, 32)[:, None]
    x[0] = 0.0
    x[1] = 0.25
    x[2] = -np.abs(x[2])
    x[3] = rng.standard_normal(512) * 0.02
    x[3, 100] = 50.0
    x[4, :256] = 0.0
    x[5] = -0.5
    return x.astype(np.float32)


# This writer's RMSE / ggml's (ggml-python 0.0.45, no importance matrix), measured on the fixtures:
#   gaussian: Q2_K 0.909  Q3_K 0.955  Q4_K 0.996  Q5_K 0.991  Q6_K 0.948
#   heavy:    Q2_K 0.794  Q3_K 0.980  Q4_K 0.995  Q5_K 0.998  Q6_K 0.980
#   edge:     Q2_K 0.906  Q3_K 0.959  Q4_K 1.001  Q5_K 1.005  Q6_K 0.953
# and the fraction of identical bytes is 0.13-0.72 (Q6_K lowest: its search often flips the sign of a scale): the
# block layout is the same (ggml's bytes decode, and all-zero or constant super-blocks come out byte for byte
# identical), the searched scales are not.
VS_GGML = {"Q2_K": 0.95, "Q3_K": 0.99, "Q4_K": 1.01, "Q5_K": 1.01, "Q6_K": 0.99}


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "edge"])
def test_against_ggml(kind):
    ref = np.load(FIXTURES / f"ggml_{kind}.npz")
    x = fixture_input(kind)
    assert str(ref["input_sha256"]) == hashlib.sha256(x.tobytes()).hexdigest(), "fixture input not reproduced"
    for t in K:
        mine = quantize_k(x, t)
        assert mine.shape == ref[t].shape and mine.dtype == ref[t].dtype
        ratio = rel_rmse(x, decode(mine, t)) / rel_rmse(x, decode(ref[t], t))
        assert ratio <= VS_GGML[t], (t, ratio)


@pytest.mark.parametrize("quant_type", K)
def test_zero_and_constant_super_blocks_match_ggml_byte_for_byte(quant_type):
    ref = np.load(FIXTURES / "ggml_edge.npz")[quant_type]
    mine = quantize_k(fixture_input("edge"), quant_type)
    half = mine.shape[1] // 2  # one super-block of the 512-weight rows
    for row in (0, 1, 5):  # zeros, 0.25, -0.5
        assert np.array_equal(mine[row], ref[row])
    assert np.array_equal(mine[4, :half], ref[4, :half])  # a zero super-block next to a non-zero one


# -- mix presets --------------------------------------------------------------------------------------------------

# FLUX.1 names (diffusers) with FLUX.1-dev shapes (hidden 3072, T5 4096, 12288 MLP)
FLUX = {
    "x_embedder.weight": (3072, 64),
    "context_embedder.weight": (3072, 4096),
    "time_text_embed.timestep_embedder.linear_1.weight": (3072, 256),
    "time_text_embed.text_embedder.linear_2.weight": (3072, 3072),
    "transformer_blocks.0.norm1.linear.weight": (18432, 3072),
    "transformer_blocks.0.attn.to_q.weight": (3072, 3072),
    "transformer_blocks.0.attn.to_q.bias": (3072,),
    "transformer_blocks.0.attn.norm_q.weight": (128,),
    "transformer_blocks.0.attn.to_v.weight": (3072, 3072),
    "transformer_blocks.0.attn.add_v_proj.weight": (3072, 3072),
    "transformer_blocks.0.attn.to_out.0.weight": (3072, 3072),
    "transformer_blocks.0.ff.net.0.proj.weight": (12288, 3072),
    "transformer_blocks.0.ff.net.2.weight": (3072, 12288),
    "transformer_blocks.0.ff_context.net.2.weight": (3072, 12288),
    "single_transformer_blocks.0.attn.to_v.weight": (3072, 3072),
    "single_transformer_blocks.0.proj_mlp.weight": (12288, 3072),
    "single_transformer_blocks.0.proj_out.weight": (3072, 15360),
    "norm_out.linear.weight": (6144, 3072),
    "proj_out.weight": (64, 3072),
}
FLUX_Q4_K_M = {  # name -> (type, words the reason must contain)
    "x_embedder.weight": ("BF16", "model edge"),
    "context_embedder.weight": ("BF16", "model edge"),
    "time_text_embed.timestep_embedder.linear_1.weight": ("BF16", "model edge"),
    "time_text_embed.text_embedder.linear_2.weight": ("BF16", "model edge"),
    "transformer_blocks.0.norm1.linear.weight": ("Q4_K", "base type of Q4_K_M"),
    "transformer_blocks.0.attn.to_q.weight": ("Q4_K", "base type"),
    "transformer_blocks.0.attn.to_q.bias": ("F32", "1-D"),
    "transformer_blocks.0.attn.norm_q.weight": ("F32", "1-D"),
    "transformer_blocks.0.attn.to_v.weight": ("Q6_K", "attention value projection"),
    "transformer_blocks.0.attn.add_v_proj.weight": ("Q6_K", "attention value projection"),
    "transformer_blocks.0.attn.to_out.0.weight": ("Q4_K", "base type"),
    "transformer_blocks.0.ff.net.0.proj.weight": ("Q4_K", "base type"),
    "transformer_blocks.0.ff.net.2.weight": ("Q6_K", "FFN down projection"),
    "transformer_blocks.0.ff_context.net.2.weight": ("Q6_K", "FFN down projection"),
    "single_transformer_blocks.0.attn.to_v.weight": ("Q6_K", "attention value projection"),
    "single_transformer_blocks.0.proj_mlp.weight": ("Q4_K", "base type"),
    "single_transformer_blocks.0.proj_out.weight": ("Q6_K", "FFN down projection"),
    "norm_out.linear.weight": ("BF16", "model edge"),
    "proj_out.weight": ("BF16", "model edge"),
}


def test_flux_q4_k_m():
    for name, (expected, why) in FLUX_Q4_K_M.items():
        got, reason = tensor_type("Q4_K_M", name, FLUX[name])
        assert (got, why in reason) == (expected, True), (name, got, reason)
    assert tensor_type("Q4_K_M", "transformer_blocks.0.ff.net.2.weight", (3072, 12288))[1] == (
        "FFN down projection: Q4_K_M raises it from Q4_K to Q6_K"
    )


@pytest.mark.parametrize(
    "preset, base, value_and_down",
    [
        ("Q2_K", "Q2_K", "Q3_K"),
        ("Q3_K_S", "Q3_K", "Q3_K"),
        ("Q3_K_M", "Q3_K", "Q4_K"),
        ("Q4_K_S", "Q4_K", "Q4_K"),
        ("Q5_K_S", "Q5_K", "Q5_K"),
        ("Q5_K_M", "Q5_K", "Q6_K"),
        ("Q6_K", "Q6_K", "Q6_K"),
        ("Q8_0", "Q8_0", "Q8_0"),
        ("Q4_0", "Q4_0", "Q4_0"),
    ],
)
def test_flux_presets(preset, base, value_and_down):
    assert tensor_type(preset, "transformer_blocks.0.attn.to_q.weight", (3072, 3072))[0] == base
    assert tensor_type(preset, "transformer_blocks.0.attn.to_v.weight", (3072, 3072))[0] == value_and_down
    assert tensor_type(preset, "single_transformer_blocks.0.proj_out.weight", (3072, 15360))[0] == value_and_down
    assert tensor_type(preset, "context_embedder.weight", (3072, 4096))[0] == "BF16"
    assert tensor_type(preset, "proj_out.weight", (64, 3072), float_type="F32")[0] == "F32"


T5_Q5_K_M = {  # T5-XXL encoder (transformers names): d_model 4096, d_ff 10240, 64 heads of 64
    "shared.weight": ((32128, 4096), "BF16", "model edge"),
    "encoder.embed_tokens.weight": ((32128, 4096), "BF16", "model edge"),
    "encoder.block.0.layer.0.SelfAttention.q.weight": ((4096, 4096), "Q5_K", "base type"),
    "encoder.block.0.layer.0.SelfAttention.v.weight": ((4096, 4096), "Q6_K", "attention value projection"),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": ((32, 64), "F32", "small tensor"),
    "encoder.block.0.layer.0.layer_norm.weight": ((4096,), "F32", "1-D"),
    "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": ((10240, 4096), "Q5_K", "base type"),
    "encoder.block.0.layer.1.DenseReluDense.wo.weight": ((4096, 10240), "Q6_K", "FFN down projection"),
    "encoder.final_layer_norm.weight": ((4096,), "F32", "1-D"),
}


def test_t5_q5_k_m():
    for name, (shape, expected, why) in T5_Q5_K_M.items():
        got, reason = tensor_type("Q5_K_M", name, shape)
        assert (got, why in reason) == (expected, True), (name, got, reason)


@pytest.mark.parametrize(
    "preset, base, raised",
    [
        ("Q2_K", "Q4_0", "Q4_0"),
        ("Q3_K_M", "Q4_0", "Q5_0"),
        ("Q4_K_S", "Q5_0", "Q5_0"),
        ("Q4_K_M", "Q5_0", "Q8_0"),
        ("Q5_K_S", "Q5_1", "Q5_1"),
        ("Q5_K_M", "Q5_1", "Q8_0"),
        ("Q6_K", "Q8_0", "Q8_0"),
    ],
)
def test_rows_not_divisible_by_256_fall_back_to_a_32_block_type(preset, base, raised):
    # in_features 1600 = 6.25 super-blocks = 50 blocks of 32
    got, reason = tensor_type(preset, "transformer_blocks.0.attn.to_q.weight", (1536, 1600))
    assert got == base and "row length 1600 is not a multiple of 256" in reason, reason
    assert tensor_type(preset, "transformer_blocks.0.attn.to_v.weight", (1536, 1600))[0] == raised
    # a row that does not split into 32-weight blocks either stays in float
    got, reason = tensor_type(preset, "transformer_blocks.0.attn.to_q.weight", (1536, 1000))
    assert got == "F32" and "not a multiple of 32 either" in reason


def test_fallback_table():
    assert FALLBACK == {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def test_presets_and_bits():
    assert PRESETS[:8] == ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
    assert {"Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F32"} <= set(PRESETS)
    assert [nominal_bits(p) for p in ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "Q8_0")] == [
        2.625,
        3.4375,
        4.5,
        5.5,
        6.5625,
        8.5,
    ]
    for name, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if name.name in BITS_PER_WEIGHT:
            assert BITS_PER_WEIGHT[name.name] == size * 8 / block
    # the _M mixes spend more bits than their _S siblings on the same model, and stay below the next type
    assert nominal_bits("Q4_K_M") < mix_bits("Q4_K_S", FLUX) < mix_bits("Q4_K_M", FLUX) < mix_bits("Q6_K", FLUX)


def test_unknown_preset_says_what_is_allowed():
    with pytest.raises(ValueError) as info:
        tensor_type("Q4_KM", "transformer_blocks.0.attn.to_q.weight", (3072, 3072))
    assert "Unknown GGUF preset 'Q4_KM'. Did you mean 'Q4_K_M'?" in str(info.value)
    assert "'Q2_K', 'Q3_K_S'" in str(info.value)
    with pytest.raises(ValueError, match="float_type='F8'"):
        tensor_type("Q4_K_M", "proj_out.weight", (64, 3072), float_type="F8")
