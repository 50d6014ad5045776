"""The CUDA side of interop: moves between devices, diffusers alone reloading bitsandbytes, offload modes, compile,
and comparison variants that combine a config with them. Every test needs a CUDA GPU (marked `gpu`: skipped
without one). Written for one H100 with the tiny FLUX layout; not run on the CPU machines the kit is built on.

Tolerances: CPU and CUDA kernels differ (bnb's, quanto's int8 matmuls), so a moved pipeline is compared with
>= 30 dB (4-bit >= 25 dB); the same device with and without offloading or compiling with >= 35 dB (offloading
only moves weights: the images should be identical; compiling fuses kernels: close).
"""

from __future__ import annotations

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig
from tests.helpers import psnr

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
CASES = {
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16}, 25),
    "bnb-int8": ("bitsandbytes_8bit", {"llm_int8_threshold": 6.0}, 30),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, 30),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, 30),
    "gguf-Q8_0": ("gguf", {"quant_type": "Q8_0", "compute_dtype": BF16}, 30),
}


def config(case):
    backend, kwargs, _ = CASES[case]
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=["transformer", "text_encoder_2"]
    )


def draw(pipe):
    generator = torch.Generator("cpu").manual_seed(0)  # same noise on every device
    return pipe(
        "a red circle",
        generator=generator,
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=16,
        output_type="np",
    ).images[0]


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_quantized_pipeline_moves_to_cuda_and_back(flux_dir, case):
    """After CPU forwards (bnb has repacked 4-bit weights and moved int8 row scales into its state), pipe.to("cuda")
    must carry everything over, as diffusers' own quantized pipelines do."""
    minimum = CASES[case][2]
    pipe = qk.load_pipeline(flux_dir, config(case), torch_dtype=BF16, device="cpu", progress=False)
    on_cpu = draw(pipe)
    pipe.to("cuda")
    assert all(p.device.type == "cuda" for p in pipe.transformer.parameters())
    assert psnr(draw(pipe), on_cpu) >= minimum
    pipe.to("cpu")
    assert psnr(draw(pipe), on_cpu) >= minimum


@pytest.mark.parametrize("case", ["bnb-nf4", "bnb-int8"])
def test_diffusers_alone_reloads_bitsandbytes_on_cuda(flux_dir, tmp_path, case):
    from diffusers import DiffusionPipeline

    pipe = qk.load_pipeline(flux_dir, config(case), torch_dtype=BF16, device="cuda", progress=False)
    before = draw(pipe)
    pipe.save_pretrained(tmp_path / "saved")
    alone = DiffusionPipeline.from_pretrained(tmp_path / "saved", dtype=BF16)
    alone.to("cuda")
    assert type(alone.transformer.transformer_blocks[0].attn.to_q).__name__ in ("Linear4bit", "Linear8bitLt")
    assert psnr(draw(alone), before) >= 40
    again = qk.load_pipeline(tmp_path / "saved", device="cuda", progress=False)
    assert psnr(draw(again), before) >= 40


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
@pytest.mark.parametrize("case", list(CASES))
def test_offload_modes(flux_dir, case, mode):
    plain = qk.load_pipeline(flux_dir, config(case), torch_dtype=BF16, device="cuda", progress=False)
    expected = draw(plain)
    del plain
    torch.cuda.empty_cache()
    pipe = qk.load_pipeline(flux_dir, config(case), torch_dtype=BF16, device="cuda", progress=False, offload=mode)
    assert pipe.quantkit_offload == mode
    assert psnr(draw(pipe), expected) >= 35


@pytest.mark.parametrize("case", list(CASES))
def test_compile_repeated_blocks(flux_dir, case):
    from quantkit.load.offload import apply_compile

    pipe = qk.load_pipeline(flux_dir, config(case), torch_dtype=BF16, device="cuda", progress=False)
    expected = draw(pipe)
    assert apply_compile(pipe, "regional") == "compile_repeated_blocks"
    draw(pipe)  # compiles
    assert psnr(draw(pipe), expected) >= 35


def test_compare_records_offload_and_compile(flux_dir, tmp_path):
    from quantkit.comparison.variants import QuantVariant

    cfg = config("torchao-int8wo")
    variants = {
        "baseline": None,
        "ao": cfg,
        "ao-model": QuantVariant(cfg, offload="model"),
        "ao-compile": QuantVariant(cfg, compile=True),
    }
    results = qk.compare(
        flux_dir,
        variants,
        out=tmp_path / "cmp",
        device="cuda",
        prompts=["a red circle"],
        seeds=[0],
        warmup=1,
        repeats=1,
        report=False,
        progress=False,
        use_lpips=False,
        strict=True,
    )
    records = {r["variant"]: r for r in results.records}
    assert records["ao-model"]["offload"] == "model" and records["ao-model"]["compile"] is None
    assert records["ao-compile"]["compile"] == "regional" and records["ao-compile"]["offload"] is None
    assert "model offload" in records["ao-model"]["quantization"]
    for name in ("ao-model", "ao-compile"):
        assert records[name]["latency_s"] > 0 and records[name]["peak_gen_cuda_allocated"] > 0
        assert records[name]["psnr"] >= 35
    # model offload keeps the transformer off the GPU between uses: less allocated after the load
    assert records["ao-model"]["peak_load_cuda_allocated"] <= records["ao"]["peak_load_cuda_allocated"]
