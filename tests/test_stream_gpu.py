"""The streaming loader on CUDA: pinned staging, quantizing on the device, the peak device memory of a load.

Skipped without a CUDA GPU (the `gpu` marker, see conftest.py). What it checks:
- each chunked quantizer gives, on the device, exactly what its library gives on the same device;
- a streamed load puts every tensor on the device and matches the CPU load's image closely;
- the peak of allocated device memory during a streamed load stays within the quantized bytes + the largest
  full-precision layer + 5% (the loader never holds more than one layer in full precision on the device).
No timings (benchmarks/bench_load_memory.py --device cuda measures them against diffusers' own path).
"""

from __future__ import annotations

import pytest
import torch

import quantkit as qk
from quantkit.backends import get_backend

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
CASES = {
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}),
    "quanto-int4": ("quanto", {"weights_dtype": "int4"}),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}),
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "bnb-int8": ("bitsandbytes_8bit", {}),
}


def _linear(w):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], device="meta", dtype=w.dtype)
    lin.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    lin.bias = torch.nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)
    return lin


def _inner(t) -> dict:
    if not hasattr(t, "__tensor_flatten__"):
        return {"data": t.data}
    out = {}
    for n in t.__tensor_flatten__()[0]:
        x = getattr(t, n)
        out.update({f"{n}.{k}": v for k, v in _inner(x).items()} if hasattr(x, "__tensor_flatten__") else {n: x})
    return out


@pytest.mark.parametrize("case", ["quanto-int8", "quanto-int4", "torchao-int8wo", "bnb-int8"])
def test_chunked_quantizers_equal_the_library_on_the_device(case):
    backend, kwargs = CASES[case]
    adapter = get_backend(backend)
    kwargs = adapter.normalize_kwargs(kwargs)
    w = (torch.randn(3072, 1024, generator=torch.Generator().manual_seed(0)) * 0.05).to(BF16).cuda()
    ours = adapter.quantize_linear(_linear(w), kwargs, "cuda")
    if backend == "quanto":
        from quantkit.backends.quanto import _materialize_buffers

        lin = _linear(w)
        ref = adapter._empty(lin, kwargs, True)
        ref.weight, ref.bias = lin.weight, lin.bias
        _materialize_buffers(ref, "cuda")
        ref.freeze()
        ref_weight = ref.weight
    elif backend == "torchao":
        from torchao.quantization import quantize_

        ref = _linear(w)
        quantize_(ref, adapter.config_object(kwargs))
        ref_weight = ref.weight
    else:
        import bitsandbytes as bnb

        ref_weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False).to("cuda")
        assert torch.equal(ours.weight.SCB, ref_weight.SCB)
    a, b = _inner(ours.weight), _inner(ref_weight)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].device.type == "cuda" and torch.equal(a[k], b[k]), k


def test_pinned_staging_converts_and_copies_every_tensor_exactly(flux_dir):
    """An fp32 checkpoint streamed onto the GPU in bf16 through the two pinned buffers: every tensor arrives, on the
    device, equal to the CPU conversion (a buffer reused too early would show up as another tensor's bytes)."""
    from quantkit.checkpoint import SafetensorsSource
    from quantkit.load.stream import stream_load

    config = qk.PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    c = qk.plan(flux_dir, config, device="cuda", torch_dtype=BF16).components["transformer"]
    model = stream_load(c, SafetensorsSource(c.folder), BF16, "cuda", lambda lin: lin)
    plain = SafetensorsSource(c.folder, mapped=False)
    state = model.state_dict()
    for key in plain.keys():
        expected = plain.get(key)
        expected = expected.to(BF16) if expected.is_floating_point() else expected
        assert state[key].device.type == "cuda" and torch.equal(state[key].cpu(), expected), key
    plain.close()


@pytest.fixture(scope="module")
def mid_pipeline_dir(tmp_path_factory):
    """A FLUX-layout pipeline whose transformer has ~40M parameters (bf16 on disk): layers large enough that the
    peak device memory is about weights, not about the allocator's rounding of small tensors."""
    from quantkit.models.tiny import build_flux_pipeline, tiny_generation_defaults

    folder = tmp_path_factory.mktemp("mid-flux")
    pipe = build_flux_pipeline(
        seed=0,
        transformer_config={
            "num_layers": 1,
            "num_single_layers": 2,
            "attention_head_dim": 128,
            "num_attention_heads": 8,
            "joint_attention_dim": 512,
            "axes_dims_rope": (16, 56, 56),
        },
        t5_config={"d_model": 512, "d_ff": 2048, "num_layers": 2, "num_heads": 8, "d_kv": 64},
    )
    pipe.to(BF16).save_pretrained(folder)
    from quantkit.models.defaults import write_generation_defaults

    write_generation_defaults(folder, {**tiny_generation_defaults("flux"), "height": 64, "width": 64})
    return folder


PEAK_CASES = [
    pytest.param(
        "quanto-int4",
        marks=pytest.mark.xfail(
            reason="quanto packs int4 for its CUDA kernels from a weight-sized int32 copy (tinygemm/AWQ)", strict=False
        ),
    )
    if case == "quanto-int4"
    else case
    for case in CASES
]


@pytest.mark.parametrize("case", PEAK_CASES)
def test_peak_device_memory_of_a_streamed_load(mid_pipeline_dir, case):
    from quantkit.planning.sources import meta_model

    backend, kwargs = CASES[case]
    config = qk.PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=["transformer"]
    )
    p = qk.plan(mid_pipeline_dir, config, device="cuda", torch_dtype=BF16)
    c = p.components["transformer"]
    modules = dict(meta_model(c.library, c.class_name, c.folder).named_modules())
    largest = max(modules[n].weight.numel() * 2 + (modules[n].out_features * 2) for n in c.quantized_layers)
    from quantkit.load.pipeline import load_component

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = load_component(c, p)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    after = torch.cuda.memory_allocated() - start
    assert after > 0 and all(t.device.type == "cuda" for t in model.parameters())
    assert peak <= after + largest + 0.05 * after, (peak, after, largest)
