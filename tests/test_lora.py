"""LoRA on quantkit's quantized transformers with diffusers' own methods, on every backend, and "fuse, then quantize".

The LoRAs are made here, offline: peft's LoraConfig on the tiny FLUX transformer (rank 4, alpha 8, random A and
B, B scaled so the effect is clear), saved with FluxPipeline.save_lora_weights in diffusers' format.

Metric: PSNR (dB) of the same-seed image (2 steps, 32x32) against the bf16 pipeline doing the same LoRA steps.
Measured on the 2-core CPU machine:

    step (vs bf16)            quanto  torchao  bnb-int8  gguf-Q8_0  bnb-nf4
    load_lora_weights "a"      47.9    48.1     47.7      47.8       30.8
    set_adapters a 0.7, b 0.5  47.7    48.1     48.7      48.5       31.3
    fuse_lora                  47.2    47.6     47.2      47.9       28.4
    unload_lora_weights        48.3    48.1     47.9      48.0       34.0
    LoRA effect (a vs none, quantized): 21.5 dB (nf4 22.4); unfuse_lora restores the pre-fuse image exactly (inf)
    where quantkit keeps the weight (all but bnb-int8: 47.2 dB through peft's unmerge).

Tolerances: 8-bit >= 35 dB, 4-bit >= 25 dB against bf16; the LoRA's effect (quantized with vs without it) must be
>= 6 dB below that: the LoRA changes the image at least 4x more (in squared error) than quantizing does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig
from tests.helpers import generate, psnr

BF16 = torch.bfloat16
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "ff.net.2"]
# case id -> (backend, quant_kwargs, minimum PSNR vs bf16 with the same LoRA steps)
CASES = {
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, 35),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, 35),
    "bnb-int8": ("bitsandbytes_8bit", {"llm_int8_threshold": 6.0}, 35),
    "gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": BF16}, 35),
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16}, 25),
}
EXACT_UNFUSE = {"quanto-int8", "torchao-int8wo", "gguf-Q8_0", "bnb-nf4"}  # quantkit keeps the pre-fuse weight


def make_lora(flux_dir, folder: Path, seed: int, strength: float = 8.0) -> Path:
    """A random LoRA for the tiny FLUX transformer in diffusers' format (pytorch_lora_weights.safetensors)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(Path(flux_dir) / "transformer")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(seed)
    transformer.add_adapter(lora)
    state = {k: v * strength if "lora_B" in k else v for k, v in get_peft_model_state_dict(transformer).items()}
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=state, transformer_lora_adapter_metadata=lora.to_dict()
    )
    return Path(folder)


@pytest.fixture(scope="module")
def loras(flux_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("loras")
    return make_lora(flux_dir, base / "a", seed=1), make_lora(flux_dir, base / "b", seed=2)


def config(case):
    backend, kwargs, _ = CASES[case]
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=["transformer"]
    )


def load(folder, cfg=None, **kwargs):
    return qk.load_pipeline(folder, cfg, torch_dtype=BF16, device="cpu", progress=False, **kwargs)


def draw(pipe):
    """One image with explicit call arguments (a pipeline diffusers saved has no generation defaults)."""
    return pipe(
        "a red circle",
        generator=torch.Generator("cpu").manual_seed(0),
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=16,
        output_type="np",
    ).images[0]


def lora_steps(pipe, loras) -> dict:
    """The images after each LoRA step with diffusers' own pipeline methods."""
    out = {"none": draw(pipe)}
    pipe.load_lora_weights(loras[0], adapter_name="a")
    out["a"] = draw(pipe)
    pipe.load_lora_weights(loras[1], adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.5])
    out["ab"] = draw(pipe)
    pipe.fuse_lora()
    out["fused"] = draw(pipe)
    pipe.unfuse_lora()
    out["unfused"] = draw(pipe)
    pipe.unload_lora_weights()
    out["unloaded"] = draw(pipe)
    return out


@pytest.fixture(scope="module")
def bf16_steps(flux_dir, loras):
    return lora_steps(load(flux_dir), loras)


@pytest.mark.parametrize("case", list(CASES))
def test_lora_methods_on_quantized_transformer(flux_dir, loras, bf16_steps, case):
    minimum = CASES[case][2]
    pipe = load(flux_dir, config(case))
    got = lora_steps(pipe, loras)
    vs_bf16 = {k: psnr(got[k], bf16_steps[k]) for k in got}
    effect = psnr(got["a"], got["none"])
    print(
        f"{case}: vs bf16 { ({k: round(v, 1) for k, v in vs_bf16.items()}) }, LoRA effect {effect:.1f} dB, "
        f"unfused vs before fuse {psnr(got['unfused'], got['ab']):.1f} dB"
    )
    for step in ("a", "ab", "fused", "unloaded"):
        assert vs_bf16[step] >= minimum, step
    assert effect <= min(vs_bf16["a"], vs_bf16["ab"]) - 6  # the LoRA changes the image 4x more than quantizing
    assert psnr(got["fused"], got["ab"]) >= minimum  # fusing keeps what the LoRA draws
    if case in EXACT_UNFUSE:
        assert psnr(got["unfused"], got["ab"]) == float("inf")
    assert psnr(got["unloaded"], got["none"]) >= minimum
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q).__name__ != "Linear" or case == "torchao-int8wo"


def test_quanto_state_dict_answers_for_the_weight_key_diffusers_lora_loader_reads(flux_dir):
    """huggingface/diffusers#10512: a QLinear saves `weight._data`/`weight._scale`, and the FLUX LoRA loader reads
    `state_dict()["<layer>.weight"]`. quantkit's quanto models answer that key without listing it."""
    pipe = load(flux_dir, config("quanto-int8"))
    state = pipe.transformer.state_dict()
    key = "single_transformer_blocks.0.attn.to_k.weight"
    assert key not in state and f"{key}._data" in state
    assert tuple(state[key].shape) == (64, 64) and type(state[key]).__name__.endswith("QBytesTensor")
    with pytest.raises(KeyError):
        state["single_transformer_blocks.0.attn.nothing.weight"]
    import copy
    import pickle

    assert (
        type(pickle.loads(pickle.dumps(state))).__name__ == "OrderedDict"
        and copy.deepcopy(state).keys() == state.keys()
    )


@pytest.mark.parametrize("case", ["quanto-int8", "torchao-int8wo", "bnb-int8", "bnb-nf4"])
def test_fuse_then_quantize_equals_quantizing_the_fused_weights(flux_dir, loras, tmp_path, case):
    """load_pipeline(..., lora=) merges while streaming; the reference fuses with diffusers in float32, saves the fused
    pipeline and quantizes that. The quantized layers are bit-identical."""
    from diffusers import FluxPipeline

    reference = FluxPipeline.from_pretrained(flux_dir)
    reference.load_lora_weights(loras[0], adapter_name="a")
    reference.load_lora_weights(loras[1], adapter_name="b")
    reference.set_adapters(["a", "b"], adapter_weights=[0.7, 0.5])
    reference.fuse_lora()
    reference.unload_lora_weights()
    reference.save_pretrained(tmp_path / "fused")
    theirs = load(tmp_path / "fused", config(case))
    ours = load(flux_dir, config(case), lora=[(loras[0], 0.7), (loras[1], 0.5)])
    adapter = qk.QuantSpec(CASES[case][0]).adapter
    a, b = dict(ours.transformer.named_modules()), dict(theirs.transformer.named_modules())
    layers = ours.transformer.quantkit["layers"]
    assert layers == theirs.transformer.quantkit["layers"]
    for layer in layers:
        mine, ref = adapter.linear_state(a[layer])[0], adapter.linear_state(b[layer])[0]
        assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in mine), layer
    assert psnr(draw(ours), draw(theirs)) == float("inf")
    plain = load(flux_dir, config(case))
    assert psnr(draw(ours), draw(plain)) < 30  # the LoRA is in there


def test_fuse_then_quantize_gguf_and_unquantized_components(flux_dir, loras, tmp_path):
    """GGUF quantizes the merged weight after the cast to bf16 (its file path quantizes float32): close, not equal.
    A component that is not quantized gets the LoRA merged after it loads."""
    from diffusers import FluxPipeline

    reference = FluxPipeline.from_pretrained(flux_dir, dtype=BF16)
    reference.load_lora_weights(loras[0], adapter_name="a")
    reference.fuse_lora()
    reference.unload_lora_weights()
    expected = draw(reference)
    gguf = PipelineQuantizationConfig(
        quant_backend="gguf",
        quant_kwargs={"quant_type": "Q8_0", "compute_dtype": BF16},
        components_to_quantize=["transformer"],
    )
    db_gguf = psnr(draw(load(flux_dir, gguf, lora=loras[0])), expected)
    unquantized = PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["text_encoder_2"]
    )
    db_plain = psnr(draw(load(flux_dir, unquantized, lora=loras[0])), expected)
    print(f"fuse-then-quantize vs bf16 fused: gguf Q8_0 {db_gguf:.1f} dB, transformer unquantized {db_plain:.1f} dB")
    assert db_gguf >= 35 and db_plain >= 35


def test_lora_argument_is_checked_before_loading(flux_dir, loras, tmp_path, monkeypatch):
    import quantkit.load.pipeline as loader

    def no_load(*args, **kwargs):
        raise AssertionError("loaded weights before refusing")

    monkeypatch.setattr(loader, "load_component", no_load)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(flux_dir, config("quanto-int8"), lora=tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="weight must be a finite number"):
        load(flux_dir, config("quanto-int8"), lora=(loras[0], "strong"))
    from safetensors.torch import load_file

    state = {
        f"transformer.{k.removeprefix('transformer.')}": v
        for k, v in load_file(str(loras[0] / "pytorch_lora_weights.safetensors")).items()
    }
    bad = {k.replace("to_q", "to_nothing"): v for k, v in state.items()}
    with pytest.raises(ValueError, match="is not a Linear layer of FluxTransformer2DModel"):
        load(flux_dir, config("quanto-int8"), lora=bad)
    monkeypatch.undo()
    saved = qk.save_pipeline(load(flux_dir, config("quanto-int8")), tmp_path / "saved")
    with pytest.raises(ValueError, match="restored from a saved quantized folder"):
        qk.load_pipeline(saved, device="cpu", progress=False, lora=loras[0])


def test_fuse_into_4bit_layers_wider_than_64_after_a_cpu_forward(tmp_path):
    """The embedded pipeline's transformer layers are 256 wide: after a CPU image, bitsandbytes' AVX512-BF16 layout is
    on; peft's 4-bit merge must see the layer without it (Backend.prepare_lora_merge). Fused against the LoRA beside
    the layers: measured 22.1 dB (a merge quantizes the weight again; this LoRA moves the image 9.9 dB); with the
    layout left on, 14.5 dB (v1's 128-wide layers: 31.6 and 21.7 dB)."""
    import quantkit

    nf4 = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"},
        components_to_quantize=["transformer"],
    )
    lora = make_lora(quantkit.EMBEDDED_PIPELINE, tmp_path / "a", seed=1)
    pipe = qk.load_pipeline(None, nf4, device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    plain = generate(pipe, steps=4)
    pipe.load_lora_weights(lora, adapter_name="a")
    beside = generate(pipe, steps=4)
    assert psnr(beside, plain) < 20  # the LoRA's own effect, for scale
    pipe.fuse_lora()
    assert psnr(generate(pipe, steps=4), beside) >= 19
    pipe.unfuse_lora()
    assert psnr(generate(pipe, steps=4), beside) == float("inf")
    pipe.unload_lora_weights()
    assert psnr(generate(pipe, steps=4), plain) == float("inf")
