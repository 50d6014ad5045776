"""CUDA paths: every backend loads and runs on the GPU; diffusers' own bitsandbytes path agrees.

Marked `gpu`: skipped without CUDA (conftest). Same metric as the CPU tests: PSNR (dB) of the
same-seed image against the unquantized pipeline on the same device.
"""

from __future__ import annotations

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig, QuantSpec
from tests.helpers import generate, psnr

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
CASES = {
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16}, "Linear4bit", 28),
    "bnb-int8": ("bitsandbytes_8bit", {"load_in_8bit": True}, "Linear8bitLt", 35),
    "gguf-Q4_0": ("gguf", {"quant_type": "Q4_0", "compute_dtype": BF16}, "GGUFLinear", 28),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, "QLinear", 35),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, "Linear", 35),
}


@pytest.fixture(scope="module")
def cuda_baseline(flux_dir):
    pipe = qk.load_pipeline(flux_dir, None, torch_dtype=BF16, device="cuda", progress=False)
    return generate(pipe)


@pytest.mark.parametrize("case_id", list(CASES))
def test_every_backend_on_cuda(flux_dir, cuda_baseline, case_id):
    backend, kwargs, layer, min_psnr = CASES[case_id]
    config = PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=["transformer", "text_encoder_2"]
    )
    pipe = qk.load_pipeline(flux_dir, config, torch_dtype=BF16, device="cuda", progress=False)
    to_q = pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(to_q).__name__ == layer and to_q.weight.device.type == "cuda"
    planned = pipe.quantkit_plan.to_frame()
    # right after loading (before any forward), the weights are already quantized on the GPU
    assert qk.footprint(pipe).loc["transformer", "bytes"] == pytest.approx(
        planned.loc["transformer", "bytes_after"], rel=0.05
    )
    assert psnr(generate(pipe), cuda_baseline) >= min_psnr


def test_torchao_int4_runs_on_cuda(flux_dir, cuda_baseline):
    import importlib.util

    config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("torchao", quant_type="int4wo")})
    p = qk.plan(flux_dir, config, device="cuda", torch_dtype=BF16)
    if importlib.util.find_spec("mslk") is None:  # torchao's int4 kernels live in the mslk package
        with pytest.raises(ImportError, match="pip install 'mslk-cuda>=1.0.0'"):
            qk.load_pipeline(flux_dir, config, torch_dtype=BF16, device="cuda", progress=False)
        return
    assert p.problems() == {}
    pipe = qk.load_pipeline(flux_dir, config, torch_dtype=BF16, device="cuda", progress=False)
    assert psnr(generate(pipe), cuda_baseline) >= 20


def test_matches_diffusers_bitsandbytes_on_cuda(flux_dir):
    """On a GPU diffusers' own bnb path runs: quantkit's layers and image agree with it."""
    from diffusers import DiffusionPipeline
    from diffusers import PipelineQuantizationConfig as DiffusersConfig

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16}
    ours = qk.load_pipeline(
        flux_dir,
        PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit", quant_kwargs=kwargs, components_to_quantize=["transformer"]
        ),
        torch_dtype=BF16,
        device="cuda",
        progress=False,
    )
    theirs = DiffusionPipeline.from_pretrained(
        flux_dir,
        torch_dtype=BF16,
        quantization_config=DiffusersConfig(
            quant_backend="bitsandbytes_4bit", quant_kwargs=kwargs, components_to_quantize=["transformer"]
        ),
    ).to("cuda")
    apply_generation_defaults(theirs, read_generation_defaults(flux_dir))
    kinds = lambda m: {n: type(x).__name__ for n, x in m.named_modules()}  # noqa: E731
    assert kinds(ours.transformer) == kinds(theirs.transformer)
    assert psnr(generate(ours), generate(theirs)) >= 40
